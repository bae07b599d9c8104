//! Runs blocking unary handlers off gRPC's completion-queue threads.
//!
//! A completion-queue thread that blocks stalls every call sharing it, so generated services hand
//! each unary request to this pool. The pool lives while some server holds it ([`acquire`]): its
//! threads are joined when the last server stops. Without a live pool (a service registered on a
//! server this crate did not build), each request gets a short-lived thread of its own.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{unbounded, Receiver, Sender};
use grpcio::{RpcStatus, RpcStatusCode, UnarySink};

type Job = Box<dyn FnOnce() + Send>;

/// Upper bound on handler threads. Handlers that call back into the host (which may call the
/// plugin again) need more than one thread; the pool grows on demand up to this.
const MAX_WORKERS: usize = 64;

static CURRENT: Mutex<Weak<Pool>> = Mutex::new(Weak::new());

/// Unary calls whose reply has not been sent yet, to let a stopping server finish them.
static IN_FLIGHT: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());

fn in_flight_add(delta: isize) {
    let mut n = IN_FLIGHT.0.lock().unwrap_or_else(|p| p.into_inner());
    *n = n.saturating_add_signed(delta);
    if *n == 0 {
        IN_FLIGHT.1.notify_all();
    }
}

/// Waits until every unary call handed to [`run_blocking`] has sent its reply, or `timeout`
/// passes. True when none is left.
pub(crate) fn wait_idle(timeout: Duration) -> bool {
    let n = IN_FLIGHT.0.lock().unwrap_or_else(|p| p.into_inner());
    let (n, _) = IN_FLIGHT
        .1
        .wait_timeout_while(n, timeout, |n| *n > 0)
        .unwrap_or_else(|p| p.into_inner());
    *n == 0
}

pub(crate) struct Pool {
    tx: Mutex<Option<Sender<Job>>>,
    rx: Receiver<Job>,
    idle: Arc<AtomicUsize>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

/// The process's handler pool, created if no server holds one.
pub(crate) fn acquire() -> Arc<Pool> {
    let mut current = CURRENT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(pool) = current.upgrade() {
        return pool;
    }
    let (tx, rx) = unbounded();
    let pool = Arc::new(Pool {
        tx: Mutex::new(Some(tx)),
        rx,
        idle: Arc::new(AtomicUsize::new(0)),
        workers: Mutex::new(Vec::new()),
    });
    *current = Arc::downgrade(&pool);
    pool
}

impl Pool {
    fn submit(&self, job: Job) {
        let mut workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        if self.idle.load(Ordering::SeqCst) == 0 && workers.len() < MAX_WORKERS {
            let rx = self.rx.clone();
            let idle = self.idle.clone();
            let spawned = std::thread::Builder::new()
                .name("rpcplugin-handler".into())
                .spawn(move || loop {
                    idle.fetch_add(1, Ordering::SeqCst);
                    let job = rx.recv();
                    idle.fetch_sub(1, Ordering::SeqCst);
                    match job {
                        Ok(job) => job(),
                        Err(_) => break,
                    }
                });
            match spawned {
                Ok(handle) => workers.push(handle),
                Err(e) => log::error!("starting a handler thread: {e}"),
            }
        }
        drop(workers);
        if let Some(tx) = &*self.tx.lock().unwrap_or_else(|p| p.into_inner()) {
            let _ = tx.send(job);
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        let me = std::thread::current().id();
        for worker in self
            .workers
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            if worker.thread().id() != me {
                let _ = worker.join();
            }
        }
    }
}

/// Runs `handler` on a handler thread and sends its result (or its error status) as the reply.
/// A panicking handler answers `INTERNAL`. Generated services call this; you do not need to.
pub fn run_blocking<Resp, F>(sink: UnarySink<Resp>, handler: F)
where
    Resp: Send + 'static,
    F: FnOnce() -> Result<Resp, RpcStatus> + Send + 'static,
{
    let job: Job = Box::new(move || {
        let result = catch_unwind(AssertUnwindSafe(handler)).unwrap_or_else(|_| {
            Err(RpcStatus::with_message(
                RpcStatusCode::INTERNAL,
                "the handler panicked".to_owned(),
            ))
        });
        let reply = match result {
            Ok(resp) => sink.success(resp),
            Err(status) => sink.fail(status),
        };
        if let Err(e) = futures_executor::block_on(reply) {
            log::debug!("sending a reply failed (the caller went away?): {e}");
        }
        in_flight_add(-1);
    });
    in_flight_add(1);
    let pool = CURRENT.lock().unwrap_or_else(|p| p.into_inner()).upgrade();
    match pool {
        Some(pool) => pool.submit(job),
        None => {
            if let Err(e) = std::thread::Builder::new()
                .name("rpcplugin-handler".into())
                .spawn(job)
            {
                log::error!("starting a handler thread: {e}");
            }
        }
    }
}
