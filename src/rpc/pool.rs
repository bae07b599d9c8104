//! The handler pool: blocking handlers run here, off gRPC's completion-queue threads (a
//! completion-queue thread that blocks stalls every call sharing it). The pool lives while some
//! server holds it ([`acquire`]); its threads are joined when the last server stops. Without a
//! live pool (a service registered on a server this crate did not build), each request gets a
//! short-lived thread of its own.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, Sender};

/// A request's work. Called with `true` on the worker that runs it; with `false` when no worker
/// can take it (every thread busy at the cap, or the pool stopping): it must then fail its call
/// without blocking, as the caller may be a completion-queue thread.
pub(super) type Job = Box<dyn FnOnce(bool) + Send>;

/// Upper bound on handler threads. Streaming handlers hold a thread for as long as their call
/// lasts, and handlers that call back into the host (which may call the plugin again) need more
/// than one; the pool grows on demand up to this. A request that finds every thread busy at the
/// cap fails with `RESOURCE_EXHAUSTED` instead of waiting (it could wait for ever).
pub(crate) const MAX_WORKERS: usize = 256;

/// How long a stopping server waits for handler threads to return before leaving them behind.
/// Part of the bound on `RpcPluginClient::close` (a host's broker callbacks run here).
pub(crate) const JOIN_GRACE: Duration = Duration::from_secs(1);

static CURRENT: Mutex<Weak<Pool>> = Mutex::new(Weak::new());

/// The cap in force (see [`set_max_handler_threads`]).
static MAX_THREADS: AtomicUsize = AtomicUsize::new(MAX_WORKERS);

/// Sets how many handler threads this process may run at once (default 256, at least 1). A
/// call that arrives when all of them are busy (streaming handlers hold theirs for as long as
/// their call lasts) fails at once with `RESOURCE_EXHAUSTED` instead of waiting, so a chain of
/// nested callbacks deeper than the cap fails rather than deadlocks. Process-wide: the pool is
/// shared by every server of the process.
pub fn set_max_handler_threads(n: usize) {
    MAX_THREADS.store(n.max(1), Ordering::SeqCst);
}

/// The cap on handler threads in force.
pub(super) fn max_threads() -> usize {
    MAX_THREADS.load(Ordering::SeqCst)
}

pub(crate) struct Pool {
    tx: Mutex<Option<Sender<Job>>>,
    rx: Receiver<Job>,
    /// Workers waiting for a job and not yet claimed by a submitter.
    idle: Arc<AtomicUsize>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    /// Each worker holds a sender; all are gone once every worker has returned.
    exited_tx: Mutex<Option<Sender<()>>>,
    exited: Receiver<()>,
}

/// The process's handler pool, created if no server holds one.
pub(crate) fn acquire() -> Arc<Pool> {
    let mut current = lock(&CURRENT);
    if let Some(pool) = current.upgrade() {
        return pool;
    }
    let (tx, rx) = unbounded();
    let (exited_tx, exited) = crossbeam_channel::bounded(0);
    let pool = Arc::new(Pool {
        tx: Mutex::new(Some(tx)),
        rx,
        idle: Arc::new(AtomicUsize::new(0)),
        workers: Mutex::new(Vec::new()),
        exited_tx: Mutex::new(Some(exited_tx)),
        exited,
    });
    *current = Arc::downgrade(&pool);
    pool
}

impl Pool {
    /// Hands `job` to an idle worker, claimed here so that two jobs never count on the same
    /// one, or to a new worker; refuses it at the cap.
    fn submit(&self, job: Job) {
        let mut idle = self.idle.load(Ordering::SeqCst);
        while idle > 0 {
            match self
                .idle
                .compare_exchange(idle, idle - 1, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => {
                    let refused = match &*lock(&self.tx) {
                        Some(tx) => tx.send(job).err().map(|e| e.0),
                        None => Some(job),
                    };
                    if let Some(job) = refused {
                        job(false);
                    }
                    return;
                }
                Err(now) => idle = now,
            }
        }
        let mut workers = lock(&self.workers);
        if workers.len() >= MAX_THREADS.load(Ordering::SeqCst) || lock(&self.tx).is_none() {
            drop(workers);
            job(false);
            return;
        }
        let rx = self.rx.clone();
        let idle = self.idle.clone();
        let exited = lock(&self.exited_tx).clone();
        // The job rides into the thread; if the thread cannot start, it comes back to be refused.
        let slot = Arc::new(Mutex::new(Some(job)));
        let first = slot.clone();
        let spawned = std::thread::Builder::new()
            .name("rpcplugin-handler".into())
            .spawn(move || {
                let _exited = exited;
                if let Some(job) = lock(&first).take() {
                    run_job(job);
                }
                drop(first);
                loop {
                    idle.fetch_add(1, Ordering::SeqCst);
                    match rx.recv() {
                        Ok(job) => run_job(job),
                        Err(_) => break,
                    }
                }
            });
        match spawned {
            Ok(handle) => workers.push(handle),
            Err(e) => {
                drop(workers);
                log::error!("starting a handler thread: {e}");
                if let Some(job) = lock(&slot).take() {
                    job(false);
                }
            }
        }
    }
}

impl Drop for Pool {
    /// Stops the workers: each returns once its current handler does. A handler that never
    /// returns (it ignores its call's cancellation) is left behind after [`JOIN_GRACE`], so a
    /// stopping server cannot hang on it.
    fn drop(&mut self) {
        lock(&self.tx).take();
        lock(&self.exited_tx).take();
        let me = std::thread::current().id();
        let workers = std::mem::take(&mut *lock(&self.workers));
        let on_worker = workers.iter().any(|w| w.thread().id() == me);
        if on_worker {
            // A handler dropped the last reference (it closed a client from a broker callback):
            // it cannot wait for itself, nor block on the others; they end when their jobs do.
            return;
        }
        {
            let deadline = Instant::now() + JOIN_GRACE;
            if let Ok(()) | Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                self.exited.recv_deadline(deadline)
            {
                log::warn!(
                    "handler threads still running {JOIN_GRACE:?} after their server stopped are \
                     left behind (a handler ignores its call's cancellation)"
                );
                return;
            }
        }
        for worker in workers {
            if worker.thread().id() != me {
                let _ = worker.join();
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where a handler job runs: the live pool, or a thread of its own when no server of this crate
/// holds a pool (a service registered on someone else's grpcio server).
pub(super) fn submit(job: Job) {
    let pool = lock(&CURRENT).upgrade();
    match pool {
        Some(pool) => pool.submit(job),
        None => {
            let slot = Arc::new(Mutex::new(Some(job)));
            let first = slot.clone();
            let spawned = std::thread::Builder::new()
                .name("rpcplugin-handler".into())
                .spawn(move || {
                    if let Some(job) = lock(&first).take() {
                        run_job(job);
                    }
                });
            if let Err(e) = spawned {
                log::error!("starting a handler thread: {e}");
                if let Some(job) = lock(&slot).take() {
                    job(false);
                }
            }
        }
    }
}

/// Runs a job on a worker; a panic that escapes it (the handlers' own are caught already) must
/// not take the worker down with it.
fn run_job(job: Job) {
    if catch_unwind(AssertUnwindSafe(|| job(true))).is_err() {
        log::error!("a handler job panicked outside its handler");
    }
}
