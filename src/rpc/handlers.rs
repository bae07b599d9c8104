//! Blocking handlers for generated services: each request runs on the handler pool with a
//! [`CallContext`] and, for streaming methods, a blocking [`Requests`] iterator and a blocking
//! [`ReplySink`].

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::{Sink, Stream};
use grpcio::{
    DuplexSink, RequestStream, RpcContext, RpcStatus, RpcStatusCode, ServerStreamingSink,
    WriteFlags,
};

use super::pool::{self, submit};
use super::service::{InFlight, ScopeSlot};
use crate::runtime::executor::{block_on, block_until};

/// Fails a call no worker could take, from a short-lived thread: the caller may be a
/// completion-queue thread, which must not block on the reply.
fn refuse<T: Send + 'static>(cell: Arc<SinkCell<T>>) {
    let status = RpcStatus::with_message(
        RpcStatusCode::RESOURCE_EXHAUSTED,
        format!(
            "all {} handler threads of this process are busy (or its server is stopping); \
             try again later",
            pool::max_threads()
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
                    Some(raw) if !self.ended.load(Ordering::SeqCst) => block_on(raw.fail(status)),
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
        let item = block_until(None, |cx| Pin::new(&mut *stream).poll_next(cx))
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
