//! Runs blocking handlers (unary and streaming) off gRPC's completion-queue threads.
//!
//! A completion-queue thread that blocks stalls every call sharing it, so generated services hand
//! each request to this pool, with a [`CallContext`] and, for streaming methods, a blocking
//! [`Requests`] iterator and a blocking [`ReplySink`]. The pool lives while some server holds it ([`acquire`]): its
//! threads are joined when the last server stops. Without a live pool (a service registered on a
//! server this crate did not build), each request gets a short-lived thread of its own.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, Sender};
use futures_util::{Sink, Stream};
use grpcio::{
    DuplexSink, RequestStream, RpcContext, RpcStatus, RpcStatusCode, ServerStreamingSink,
    WriteFlags,
};

/// A request's work. Called with `true` on the worker that runs it; with `false` when no worker
/// can take it (every thread busy at the cap, or the pool stopping): it must then fail its call
/// without blocking, as the caller may be a completion-queue thread.
type Job = Box<dyn FnOnce(bool) + Send>;

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

/// One server's unary calls whose reply has not been sent yet, so that its graceful stop waits
/// for exactly those.
#[derive(Default)]
pub(crate) struct Scope {
    in_flight: Mutex<usize>,
    idle: Condvar,
}

impl Scope {
    /// Waits until no unary call of this server is in flight, or `timeout` passes. True when
    /// none is left.
    pub(crate) fn wait_idle(&self, timeout: Duration) -> bool {
        let n = lock(&self.in_flight);
        let (n, _) = self
            .idle
            .wait_timeout_while(n, timeout, |n| *n > 0)
            .unwrap_or_else(|p| p.into_inner());
        *n == 0
    }
}

/// Which server a service's handlers account their calls to; set when the service is
/// registered on a server this crate builds.
#[doc(hidden)]
#[derive(Default)]
pub struct ScopeSlot(Mutex<Option<Arc<Scope>>>);

impl ScopeSlot {
    pub(crate) fn bind(&self, scope: &Arc<Scope>) {
        *lock(&self.0) = Some(scope.clone());
    }
}

/// A service to serve on a plugin server or a broker listener: what the generated
/// `create_<service>()` functions return. Its calls are accounted to the server it is registered
/// on, so that server's graceful stop waits for its own calls and nobody else's.
pub struct Service {
    grpc: grpcio::Service,
    scope: Arc<ScopeSlot>,
    /// The service's full name and the file that defines it (for gRPC reflection).
    descriptor: Option<(&'static str, &'static protobuf::reflect::FileDescriptor)>,
}

impl Service {
    #[doc(hidden)]
    pub fn new(grpc: grpcio::Service, scope: Arc<ScopeSlot>) -> Service {
        Service {
            grpc,
            scope,
            descriptor: None,
        }
    }

    /// Records the service's full name and the file that defines it, for gRPC reflection
    /// (generated code calls it).
    #[doc(hidden)]
    pub fn described(
        mut self,
        name: &'static str,
        file: &'static protobuf::reflect::FileDescriptor,
    ) -> Service {
        self.descriptor = Some((name, file));
        self
    }

    /// The service's full name and defining file, when its code generator recorded them.
    pub(crate) fn descriptor(
        &self,
    ) -> Option<(&'static str, &'static protobuf::reflect::FileDescriptor)> {
        self.descriptor
    }

    /// The grpcio service, to register on a grpcio server of your own. Its handlers still run
    /// off the completion-queue threads.
    pub fn into_grpcio(self) -> grpcio::Service {
        self.grpc
    }

    /// Binds the service's calls to `scope` and hands out the grpcio service.
    pub(crate) fn register(self, scope: &Arc<Scope>) -> grpcio::Service {
        self.scope.bind(scope);
        self.grpc
    }
}

impl From<grpcio::Service> for Service {
    /// A service built some other way (another code generator): it is served as it is, with
    /// its own threading.
    fn from(grpc: grpcio::Service) -> Service {
        Service {
            grpc,
            scope: Arc::default(),
            descriptor: None,
        }
    }
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").finish_non_exhaustive()
    }
}

/// Counts a unary call as in flight on its server until dropped: when the reply is sent, when
/// the call is refused, or when its job is dropped without running.
struct InFlight(Option<Arc<Scope>>);

impl InFlight {
    fn new(slot: &ScopeSlot) -> InFlight {
        let scope = lock(&slot.0).clone();
        if let Some(scope) = &scope {
            *lock(&scope.in_flight) += 1;
        }
        InFlight(scope)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(scope) = &self.0 {
            let mut n = lock(&scope.in_flight);
            *n = n.saturating_sub(1);
            if *n == 0 {
                scope.idle.notify_all();
            }
        }
    }
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
fn submit(job: Job) {
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

/// Fails a call no worker could take, from a short-lived thread: the caller may be a
/// completion-queue thread, which must not block on the reply.
fn refuse<T: Send + 'static>(cell: Arc<SinkCell<T>>) {
    let status = RpcStatus::with_message(
        RpcStatusCode::RESOURCE_EXHAUSTED,
        format!(
            "all {} handler threads of this process are busy (or its server is stopping); \
             try again later",
            MAX_THREADS.load(Ordering::SeqCst)
        ),
    );
    let finisher = std::thread::Builder::new()
        .name("rpcplugin-refuse".into())
        .spawn({
            let cell = cell.clone();
            move || cell.finish(Err(status))
        });
    if finisher.is_err() {
        // Dropping the sink cancels the call: the caller still gets an answer.
        lock(&cell.sink).take();
    }
}

/// What a handler can know about its call: the method, the caller's metadata, the deadline, and
/// whether the host has given up on it.
///
/// A handler doing long work checks [`CallContext::is_cancelled`] now and then and stops early:
///
/// ```no_run
/// use rpcplugin::server::CallContext;
/// use rpcplugin::proto::kv::{GetRequest, GetResponse};
///
/// fn slow_get(call: &CallContext, req: GetRequest) -> Result<GetResponse, grpcio::RpcStatus> {
///     for _step in 0..100 {
///         if call.is_cancelled() {
///             return Err(grpcio::RpcStatus::new(grpcio::RpcStatusCode::CANCELLED));
///         }
///         // ... a slice of the work ...
///     }
///     let trace = call.metadata("x-trace-id").map(|v| String::from_utf8_lossy(v).into_owned());
///     println!("{} for {:?}, {:?} left", call.method(), trace, call.time_remaining());
///     Ok(GetResponse::new())
/// }
/// ```
#[derive(Clone)]
pub struct CallContext {
    method: Arc<str>,
    peer: Arc<str>,
    metadata: Arc<[(String, Vec<u8>)]>,
    deadline: Option<Instant>,
    probe: Arc<dyn Probe>,
}

/// Asks a call's reply sink whether the call has ended on the peer's side.
trait Probe: Send + Sync {
    fn ended(&self) -> bool;
}

impl CallContext {
    fn new(ctx: &RpcContext<'_>, probe: Arc<dyn Probe>) -> CallContext {
        CallContext {
            method: String::from_utf8_lossy(ctx.method()).into(),
            peer: ctx.peer().into(),
            metadata: ctx
                .request_headers()
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_vec()))
                .collect(),
            deadline: crate::sys::deadline_instant(ctx.deadline()),
            probe,
        }
    }

    /// The method's full path, `/package.Service/Method`.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The caller's address as gRPC reports it (`unix:...`, `ipv4:127.0.0.1:port`).
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// The first value of request metadata `key` (lower case; binary keys end in `-bin`).
    pub fn metadata(&self, key: &str) -> Option<&[u8]> {
        self.metadata
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_slice())
    }

    /// Every request metadata entry, in the order received.
    pub fn metadata_entries(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.metadata
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    /// When the caller stops waiting, if it set a deadline.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Time left until the deadline (zero once passed); None without a deadline.
    pub fn time_remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// True once the caller has cancelled the call, gone away, or the deadline has passed, or
    /// the server is stopping. Cheap enough to call in a loop. The reply of a cancelled call is
    /// dropped, so the handler may as well return.
    pub fn is_cancelled(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d) || self.probe.ended()
    }
}

impl std::fmt::Debug for CallContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallContext")
            .field("method", &self.method)
            .field("peer", &self.peer)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

/// The two gRPC server sinks a reply can go through (unary methods are served as server
/// streaming, client streaming as bidirectional: same bytes on the wire, and these sinks can
/// tell when the caller has gone).
enum RawSink<T> {
    Server(ServerStreamingSink<T>),
    Duplex(DuplexSink<T>),
}

impl<T> RawSink<T> {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<grpcio::Result<()>> {
        match self {
            RawSink::Server(s) => Pin::new(s).poll_ready(cx),
            RawSink::Duplex(s) => Pin::new(s).poll_ready(cx),
        }
    }

    fn start_send(&mut self, msg: T) -> grpcio::Result<()> {
        let item = (msg, WriteFlags::default());
        match self {
            RawSink::Server(s) => Pin::new(s).start_send(item),
            RawSink::Duplex(s) => Pin::new(s).start_send(item),
        }
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<grpcio::Result<()>> {
        match self {
            RawSink::Server(s) => Pin::new(s).poll_close(cx),
            RawSink::Duplex(s) => Pin::new(s).poll_close(cx),
        }
    }

    fn fail(
        self,
        status: RpcStatus,
    ) -> Pin<Box<dyn std::future::Future<Output = grpcio::Result<()>> + Send>> {
        match self {
            RawSink::Server(s) => Box::pin(s.fail(status)),
            RawSink::Duplex(s) => Box::pin(s.fail(status)),
        }
    }
}

/// The reply sink shared by the handler (through [`ReplySink`]) and its [`CallContext`].
///
/// grpcio's sink must not be polled again once a write failed (it keeps the failed write), so
/// `ended` (set under the lock when any poll fails) stops all further polling; and once
/// `finish` starts, nothing more is sent.
struct SinkCell<T> {
    sink: Mutex<Option<RawSink<T>>>,
    ended: AtomicBool,
    closing: AtomicBool,
    /// The threads blocked on this sink: every wake reaches all of them, whoever polled last.
    waiters: Arc<Waiters>,
}

#[derive(Default)]
struct Waiters(Mutex<Vec<std::thread::Thread>>);

impl std::task::Wake for Waiters {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        for thread in lock(&self.0).iter() {
            thread.unpark();
        }
    }
}

/// Why a send did not go out.
enum SendFailed {
    /// The call had ended, or the handler's outcome is being sent.
    Over,
    Grpc(grpcio::Error),
}

impl<T: Send> Probe for SinkCell<T> {
    fn ended(&self) -> bool {
        if self.ended.load(Ordering::SeqCst) {
            return true;
        }
        // A send in progress holds the lock; it notices the end itself.
        let Ok(mut sink) = self.sink.try_lock() else {
            return false;
        };
        if self.ended.load(Ordering::SeqCst) || self.closing.load(Ordering::SeqCst) {
            return self.ended.load(Ordering::SeqCst);
        }
        let Some(raw) = sink.as_mut() else {
            return false;
        };
        let waker = std::task::Waker::from(self.waiters.clone());
        if let Poll::Ready(Err(_)) = raw.poll_ready(&mut Context::from_waker(&waker)) {
            self.ended.store(true, Ordering::SeqCst);
            return true;
        }
        false
    }
}

impl<T: Send> SinkCell<T> {
    fn new(sink: RawSink<T>) -> Arc<SinkCell<T>> {
        Arc::new(SinkCell {
            sink: Mutex::new(Some(sink)),
            ended: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            waiters: Arc::default(),
        })
    }

    /// Polls the sink (under its lock) until `f` is ready, parking in between. None once the
    /// sink is gone.
    fn block<R>(
        &self,
        mut f: impl FnMut(&mut RawSink<T>, &mut Context<'_>) -> Poll<R>,
    ) -> Option<R> {
        let me = std::thread::current();
        lock(&self.waiters.0).push(me.clone());
        let waker = std::task::Waker::from(self.waiters.clone());
        let result = loop {
            {
                let mut sink = lock(&self.sink);
                let Some(raw) = sink.as_mut() else {
                    break None;
                };
                if let Poll::Ready(r) = f(raw, &mut Context::from_waker(&waker)) {
                    break Some(r);
                }
            }
            std::thread::park();
        };
        let mut waiters = lock(&self.waiters.0);
        if let Some(at) = waiters.iter().position(|t| t.id() == me.id()) {
            waiters.swap_remove(at);
        }
        result
    }

    fn send(&self, msg: T) -> Result<(), RpcStatus> {
        let gone = || {
            RpcStatus::with_message(
                RpcStatusCode::CANCELLED,
                "the caller cancelled the call or went away".to_owned(),
            )
        };
        let mut msg = Some(msg);
        let sent = self.block(|raw, cx| {
            if self.ended.load(Ordering::SeqCst) || self.closing.load(Ordering::SeqCst) {
                return Poll::Ready(Err(SendFailed::Over));
            }
            let ready = match raw.poll_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(ready) => ready,
            };
            let sent = ready.and_then(|()| raw.start_send(msg.take().expect("sent once")));
            if sent.is_err() {
                self.ended.store(true, Ordering::SeqCst);
            }
            Poll::Ready(sent.map_err(SendFailed::Grpc))
        });
        match sent {
            Some(Ok(())) => Ok(()),
            Some(Err(SendFailed::Grpc(e))) => {
                log::debug!("sending a reply failed: {e}");
                Err(gone())
            }
            Some(Err(SendFailed::Over)) | None => Err(gone()),
        }
    }

    /// Ends the call with the handler's outcome, then wakes every thread still blocked on the
    /// sink (they find it gone). A call that already failed is only dropped, which cancels it.
    fn finish(&self, outcome: Result<(), RpcStatus>) {
        self.closing.store(true, Ordering::SeqCst);
        let result = match outcome {
            Ok(()) => self
                .block(|raw, cx| {
                    if self.ended.load(Ordering::SeqCst) {
                        return Poll::Ready(Ok(()));
                    }
                    let closed = raw.poll_close(cx);
                    if let Poll::Ready(Err(_)) = &closed {
                        self.ended.store(true, Ordering::SeqCst);
                    }
                    closed
                })
                .unwrap_or(Ok(())),
            Err(status) => {
                let raw = lock(&self.sink).take();
                match raw {
                    Some(raw) if !self.ended.load(Ordering::SeqCst) => {
                        crate::grpc::block_on(raw.fail(status))
                    }
                    _ => Ok(()),
                }
            }
        };
        if let Err(e) = result {
            log::debug!("ending a call failed (the caller went away?): {e}");
        }
        // Dropping a sink that was closed is a no-op; one that was not cancels the call.
        lock(&self.sink).take();
        std::task::Wake::wake_by_ref(&self.waiters);
    }
}

/// Where a streaming handler sends its replies. [`send`](ReplySink::send) blocks while gRPC's
/// flow control holds replies back (the host is not reading) and fails with `CANCELLED` once the
/// host has gone away, so `replies.send(msg)?` ends the handler when nobody listens. The call
/// ends when the handler returns: with status OK for `Ok(())`, or with the handler's error
/// status.
pub struct ReplySink<T: Send> {
    cell: Arc<SinkCell<T>>,
}

impl<T: Send> ReplySink<T> {
    /// Sends one reply, blocking on flow control; `CANCELLED` once the caller is gone.
    pub fn send(&mut self, msg: T) -> Result<(), RpcStatus> {
        self.cell.send(msg)
    }
}

impl<T: Send> std::fmt::Debug for ReplySink<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplySink").finish_non_exhaustive()
    }
}

/// The requests of a client-streaming or bidirectional call: a blocking iterator that ends when
/// the host half-closes its side, and yields a `CANCELLED` status when the call was cancelled,
/// so a handler never mistakes a cancelled upload for a complete one.
pub struct Requests<T> {
    stream: RequestStream<T>,
    done: bool,
    /// grpcio reports a read on a cancelled call as the end of the stream; the call's sink
    /// tells the two apart.
    call: Arc<dyn Probe>,
}

impl<T> Requests<T> {
    fn new(stream: RequestStream<T>, call: Arc<dyn Probe>) -> Self {
        Requests {
            stream,
            done: false,
            call,
        }
    }

    /// The next request, `Ok(None)` when the host has sent its last one.
    pub fn recv(&mut self) -> Result<Option<T>, RpcStatus> {
        if self.done {
            return Ok(None);
        }
        let stream = &mut self.stream;
        let item = crate::grpc::block_until(None, |cx| Pin::new(&mut *stream).poll_next(cx))
            .expect("no deadline was set");
        match item {
            None => {
                self.done = true;
                if self.call.ended() {
                    return Err(RpcStatus::with_message(
                        RpcStatusCode::CANCELLED,
                        "the caller cancelled the call before its last request".to_owned(),
                    ));
                }
                Ok(None)
            }
            Some(Ok(msg)) => Ok(Some(msg)),
            Some(Err(e)) => {
                self.done = true;
                Err(RpcStatus::with_message(
                    RpcStatusCode::CANCELLED,
                    format!("the request stream ended: {e}"),
                ))
            }
        }
    }
}

impl<T> Iterator for Requests<T> {
    type Item = Result<T, RpcStatus>;

    fn next(&mut self) -> Option<Self::Item> {
        self.recv().transpose()
    }
}

impl<T> std::fmt::Debug for Requests<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Requests")
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

fn panicked() -> RpcStatus {
    RpcStatus::with_message(RpcStatusCode::INTERNAL, "the handler panicked".to_owned())
}

fn run_guarded<R>(handler: impl FnOnce() -> Result<R, RpcStatus>) -> Result<R, RpcStatus> {
    catch_unwind(AssertUnwindSafe(handler)).unwrap_or_else(|_| Err(panicked()))
}

/// Runs `body` for one call on the handler pool, with the call's context and reply sink, and
/// ends the call with its outcome; refuses the call when no worker can take it. `in_flight`
/// counts a unary call on its server until the call is over.
fn serve_call<T, B>(ctx: &RpcContext<'_>, sink: RawSink<T>, in_flight: Option<InFlight>, body: B)
where
    T: Send + 'static,
    B: FnOnce(&CallContext, &Arc<SinkCell<T>>) -> Result<(), RpcStatus> + Send + 'static,
{
    let cell = SinkCell::new(sink);
    let call = CallContext::new(ctx, cell.clone());
    submit(Box::new(move |admitted| {
        if admitted {
            let outcome = run_guarded(|| body(&call, &cell));
            cell.finish(outcome);
        } else {
            refuse(cell);
        }
        drop(in_flight);
    }));
}

/// Serves a unary call (registered as server streaming) on the handler pool. Generated code
/// calls this.
#[doc(hidden)]
pub fn handle_unary<Resp, F>(
    scope: &ScopeSlot,
    ctx: RpcContext<'_>,
    sink: ServerStreamingSink<Resp>,
    handler: F,
) where
    Resp: Send + 'static,
    F: FnOnce(&CallContext) -> Result<Resp, RpcStatus> + Send + 'static,
{
    let in_flight = InFlight::new(scope);
    serve_call(
        &ctx,
        RawSink::Server(sink),
        Some(in_flight),
        |call, cell| handler(call).and_then(|reply| cell.send(reply)),
    );
}

/// Serves a server-streaming call on the handler pool. Generated code calls this.
#[doc(hidden)]
pub fn handle_server_streaming<Resp, F>(
    _scope: &ScopeSlot,
    ctx: RpcContext<'_>,
    sink: ServerStreamingSink<Resp>,
    handler: F,
) where
    Resp: Send + 'static,
    F: FnOnce(&CallContext, ReplySink<Resp>) -> Result<(), RpcStatus> + Send + 'static,
{
    serve_call(&ctx, RawSink::Server(sink), None, |call, cell| {
        handler(call, ReplySink { cell: cell.clone() })
    });
}

/// Serves a client-streaming call (registered as bidirectional) on the handler pool. Generated
/// code calls this.
#[doc(hidden)]
pub fn handle_client_streaming<Req, Resp, F>(
    _scope: &ScopeSlot,
    ctx: RpcContext<'_>,
    stream: RequestStream<Req>,
    sink: DuplexSink<Resp>,
    handler: F,
) where
    Req: Send + 'static,
    Resp: Send + 'static,
    F: FnOnce(&CallContext, Requests<Req>) -> Result<Resp, RpcStatus> + Send + 'static,
{
    serve_call(&ctx, RawSink::Duplex(sink), None, |call, cell| {
        let requests = Requests::new(stream, cell.clone());
        handler(call, requests).and_then(|reply| cell.send(reply))
    });
}

/// Serves a bidirectional call on the handler pool. Generated code calls this.
#[doc(hidden)]
pub fn handle_duplex<Req, Resp, F>(
    _scope: &ScopeSlot,
    ctx: RpcContext<'_>,
    stream: RequestStream<Req>,
    sink: DuplexSink<Resp>,
    handler: F,
) where
    Req: Send + 'static,
    Resp: Send + 'static,
    F: FnOnce(&CallContext, Requests<Req>, ReplySink<Resp>) -> Result<(), RpcStatus>
        + Send
        + 'static,
{
    serve_call(&ctx, RawSink::Duplex(sink), None, |call, cell| {
        let requests = Requests::new(stream, cell.clone());
        handler(call, requests, ReplySink { cell: cell.clone() })
    });
}
