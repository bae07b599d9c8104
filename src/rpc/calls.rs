//! The client side of calls: blocking streaming calls as generated clients hand them out, the
//! default call timeout, and one turn of an I/O-thread task reading a stream.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::{Sink, Stream};
use grpcio::{ClientDuplexReceiver, ClientSStreamReceiver, StreamingCallSink, WriteFlags};

use crate::error::{Error, ErrorKind, Result};
use crate::runtime::executor::block_until;

/// The call timeout generated clients use unless told otherwise: the deadline of each unary call
/// (a gRPC deadline the plugin sees too), and for streaming calls the longest any single `send`,
/// `recv` or `finish` waits for the plugin. Five minutes: long enough for slow plugin work,
/// short enough that a hung plugin cannot block a caller forever. Change it per stub with
/// `with_call_timeout` (None turns it off), or pass your own call options to a `_opt` method.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(300);

/// Call options for a call made without the caller's own options: the stub's deadline, if any.
#[doc(hidden)]
pub fn default_options(timeout: Option<Duration>) -> grpcio::CallOption {
    match timeout {
        Some(t) => grpcio::CallOption::default().timeout(t),
        None => grpcio::CallOption::default(),
    }
}

/// Turns a failed call into this crate's error (used by generated clients).
#[doc(hidden)]
pub fn call_error(method: &str, err: grpcio::Error, default_timeout: Option<Duration>) -> Error {
    Error::from_call(method, err, default_timeout)
}

fn deadline(timeout: Option<Duration>) -> Option<Instant> {
    timeout.map(|t| Instant::now() + t)
}

fn wait_timeout(method: &str, what: &str, timeout: Duration) -> Error {
    Error::new(
        ErrorKind::Timeout,
        format!(
            "{method}: {what} within {timeout:?}; the call is still open (wait again, or drop \
             it to cancel)"
        ),
    )
}

/// Cancels a streaming call from any thread, waking a thread blocked in `recv`. Get one from
/// [`Replies::canceller`] or [`DuplexCall::canceller`].
#[derive(Clone)]
pub struct Canceller(Arc<CancelState>);

#[derive(Default)]
struct CancelState {
    cancelled: AtomicBool,
    waker: futures_util::task::AtomicWaker,
}

impl Canceller {
    /// Cancels the call: a blocked or later `recv` returns an [`ErrorKind::Cancelled`] error and
    /// the plugin sees the call cancelled.
    pub fn cancel(&self) {
        self.0.cancelled.store(true, Ordering::SeqCst);
        self.0.waker.wake();
    }
}

impl std::fmt::Debug for Canceller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Canceller")
            .field("cancelled", &self.0.cancelled.load(Ordering::SeqCst))
            .finish()
    }
}

enum Source<T> {
    Server(ClientSStreamReceiver<T>),
    Duplex(ClientDuplexReceiver<T>),
}

impl<T> Source<T> {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<grpcio::Result<T>>> {
        match self {
            Source::Server(r) => Pin::new(r).poll_next(cx),
            Source::Duplex(r) => Pin::new(r).poll_next(cx),
        }
    }

    fn cancel(&mut self) {
        match self {
            Source::Server(r) => r.cancel(),
            Source::Duplex(r) => r.cancel(),
        }
    }
}

/// The replies of a server-streaming call (or the receiving half of a bidirectional one), read
/// one at a time. It is an iterator of `Result<T>`; iteration ends when the plugin ends the call
/// with status OK, and yields an error when it ends it with another status. Dropping it before
/// the end cancels the call.
pub struct Replies<T> {
    method: &'static str,
    source: Source<T>,
    timeout: Option<Duration>,
    cancel: Arc<CancelState>,
    done: bool,
    /// Set when this side cancelled: later `recv`s say so again instead of a clean end.
    cancelled: bool,
}

impl<T> Replies<T> {
    #[doc(hidden)]
    pub fn server_streaming(
        method: &'static str,
        receiver: ClientSStreamReceiver<T>,
        timeout: Option<Duration>,
    ) -> Self {
        Self::new(method, Source::Server(receiver), timeout)
    }

    fn new(method: &'static str, source: Source<T>, timeout: Option<Duration>) -> Self {
        Replies {
            method,
            source,
            timeout,
            cancel: Arc::default(),
            done: false,
            cancelled: false,
        }
    }

    /// The next reply: `Ok(None)` once the plugin has ended the call with status OK. Waits at most
    /// the stub's call timeout (then [`ErrorKind::Timeout`], and the call stays open).
    pub fn recv(&mut self) -> Result<Option<T>> {
        let timeout = self.timeout;
        self.recv_until(deadline(timeout), timeout)
    }

    /// Like [`Replies::recv`], waiting at most `timeout` (an [`ErrorKind::Timeout`] error when
    /// nothing came; the call stays open).
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<T>> {
        self.recv_until(deadline(Some(timeout)), Some(timeout))
    }

    fn recv_until(
        &mut self,
        deadline: Option<Instant>,
        timeout: Option<Duration>,
    ) -> Result<Option<T>> {
        if self.cancelled {
            return Err(self.cancelled_error());
        }
        if self.done {
            return Ok(None);
        }
        let polled = block_until(deadline, |cx| self.poll_step(cx));
        match polled {
            None => Err(wait_timeout(
                self.method,
                "no message from the plugin",
                timeout.unwrap_or_default(),
            )),
            Some(step) => self.settle(step),
        }
    }

    /// Polls for the next reply without blocking (for the I/O thread, which drives long-lived
    /// streams with its own waker).
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<T>>> {
        if self.cancelled {
            return Poll::Ready(Err(self.cancelled_error()));
        }
        if self.done {
            return Poll::Ready(Ok(None));
        }
        self.poll_step(cx).map(|step| self.settle(step))
    }

    /// One poll: None when this side cancelled, else the stream's next item.
    fn poll_step(&mut self, cx: &mut Context<'_>) -> Poll<Option<Option<grpcio::Result<T>>>> {
        self.cancel.waker.register(cx.waker());
        if self.cancel.cancelled.load(Ordering::SeqCst) {
            return Poll::Ready(None);
        }
        self.source.poll_next(cx).map(Some)
    }

    fn settle(&mut self, step: Option<Option<grpcio::Result<T>>>) -> Result<Option<T>> {
        match step {
            None => {
                self.done = true;
                self.cancelled = true;
                self.source.cancel();
                Err(self.cancelled_error())
            }
            Some(None) => {
                self.done = true;
                Ok(None)
            }
            Some(Some(Ok(msg))) => Ok(Some(msg)),
            Some(Some(Err(e))) => {
                self.done = true;
                Err(Error::from_call(self.method, e, None))
            }
        }
    }

    fn cancelled_error(&self) -> Error {
        Error::new(
            ErrorKind::Cancelled,
            format!("{}: the call was cancelled by this host", self.method),
        )
    }

    /// A handle that cancels this call from another thread: a thread blocked in `recv` (or
    /// the next `recv`) gets an [`ErrorKind::Cancelled`] error and the call is cancelled then.
    pub fn canceller(&self) -> Canceller {
        Canceller(self.cancel.clone())
    }

    /// Cancels the call now (dropping does the same).
    pub fn cancel(mut self) {
        self.source.cancel();
        self.done = true;
    }
}

impl<T> Iterator for Replies<T> {
    type Item = Result<T>;

    fn next(&mut self) -> Option<Result<T>> {
        // After the cancellation has been reported once, iteration is over.
        if self.cancelled {
            return None;
        }
        self.recv().transpose()
    }
}

impl<T> Drop for Replies<T> {
    fn drop(&mut self) {
        if !self.done {
            self.source.cancel();
        }
    }
}

impl<T> std::fmt::Debug for Replies<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replies")
            .field("method", &self.method)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

/// The sending half of a client-streaming or bidirectional call.
pub struct RequestSender<T> {
    method: &'static str,
    sink: StreamingCallSink<T>,
    timeout: Option<Duration>,
    state: SendState,
}

/// Where a sender is. grpcio's sink must not be polled again once a write or the close failed
/// (it keeps the failed operation), so a failed sender answers from its state alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SendState {
    Open,
    /// `close_send` started (and may have timed out): no more messages.
    Closing,
    Closed,
    Failed,
}

impl<T> RequestSender<T> {
    fn new(method: &'static str, sink: StreamingCallSink<T>, timeout: Option<Duration>) -> Self {
        RequestSender {
            method,
            sink,
            timeout,
            state: SendState::Open,
        }
    }

    /// The same sender with another bound on each wait.
    pub(crate) fn with_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends one message. Blocks while gRPC's flow control holds it back (the plugin is not
    /// reading), at most the stub's call timeout. Fails once the call has ended.
    pub fn send(&mut self, msg: T) -> Result<()> {
        match self.state {
            SendState::Open => {}
            SendState::Failed => return Err(self.gone()),
            SendState::Closing | SendState::Closed => {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!("{}: send after close_send", self.method),
                ))
            }
        }
        let sink = &mut self.sink;
        let ready = block_until(deadline(self.timeout), |cx| {
            Pin::new(&mut *sink).poll_ready(cx)
        });
        let sent = match ready {
            None => {
                return Err(wait_timeout(
                    self.method,
                    "the plugin did not take the message (flow control)",
                    self.timeout.unwrap_or_default(),
                ))
            }
            Some(Err(e)) => Err(e),
            Some(Ok(())) => Pin::new(&mut self.sink).start_send((msg, WriteFlags::default())),
        };
        sent.map_err(|e| {
            self.state = SendState::Failed;
            self.ended(e)
        })
    }

    /// Half-closes the call: tells the plugin no more messages come. Replies can still be read.
    /// Idempotent; after a timeout, calling it again goes on waiting.
    pub fn close_send(&mut self) -> Result<()> {
        match self.state {
            SendState::Closed => return Ok(()),
            SendState::Failed => return Err(self.gone()),
            SendState::Open | SendState::Closing => {}
        }
        self.state = SendState::Closing;
        let sink = &mut self.sink;
        let closed = block_until(deadline(self.timeout), |cx| {
            Pin::new(&mut *sink).poll_close(cx)
        });
        match closed {
            None => Err(wait_timeout(
                self.method,
                "the plugin did not take the end of the stream",
                self.timeout.unwrap_or_default(),
            )),
            Some(Ok(())) => {
                self.state = SendState::Closed;
                Ok(())
            }
            Some(Err(e)) => {
                self.state = SendState::Failed;
                Err(self.ended(e))
            }
        }
    }

    fn gone(&self) -> Error {
        Error::new(
            ErrorKind::Rpc,
            format!(
                "{}: the call has ended; nothing more can be sent (read the replies for its \
                 status)",
                self.method
            ),
        )
    }

    fn ended(&self, err: grpcio::Error) -> Error {
        match err {
            grpcio::Error::RpcFinished(None) | grpcio::Error::RemoteStopped => self.gone(),
            other => Error::from_call(self.method, other, None),
        }
    }
}

impl<T> std::fmt::Debug for RequestSender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestSender")
            .field("method", &self.method)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// The two halves of a call that streams requests.
fn halves<Req, Resp>(
    method: &'static str,
    sink: StreamingCallSink<Req>,
    receiver: ClientDuplexReceiver<Resp>,
    timeout: Option<Duration>,
) -> (RequestSender<Req>, Replies<Resp>) {
    let sender = RequestSender::new(method, sink, timeout);
    (
        sender,
        Replies::new(method, Source::Duplex(receiver), timeout),
    )
}

/// A client-streaming call: [`send`](ClientStreamingCall::send) the requests, then
/// [`finish`](ClientStreamingCall::finish) for the one reply. Dropping it unfinished cancels the
/// call.
pub struct ClientStreamingCall<Req, Resp> {
    sender: RequestSender<Req>,
    replies: Replies<Resp>,
    /// A reply that came before the requests were all sent (the plugin answered early).
    early: Option<Resp>,
    /// The status the plugin ended the call with, once a failed send has read it.
    ended_with: Option<grpcio::RpcStatus>,
    /// A failed send found the call ended with status OK and no reply message.
    ended_without_reply: bool,
}

impl<Req, Resp> ClientStreamingCall<Req, Resp> {
    // Runs over a bidirectional call: grpcio's own client-streaming receiver panics when a server
    // ends the call with status OK and no message (grpc-go allows that), while a stream of
    // replies can simply turn out empty.
    #[doc(hidden)]
    pub fn new(
        method: &'static str,
        (sink, receiver): (StreamingCallSink<Req>, ClientDuplexReceiver<Resp>),
        timeout: Option<Duration>,
    ) -> Self {
        let (sender, replies) = halves(method, sink, receiver, timeout);
        ClientStreamingCall {
            sender,
            replies,
            early: None,
            ended_with: None,
            ended_without_reply: false,
        }
    }

    /// Sends one request; see [`RequestSender::send`]. When the plugin has already ended the
    /// call, the error carries its status (or says that it answered early: `finish` returns
    /// that reply).
    pub fn send(&mut self, msg: Req) -> Result<()> {
        if let Some(status) = &self.ended_with {
            return Err(self.status_error(status.clone()));
        }
        if self.early.is_some() {
            return Err(Error::new(
                ErrorKind::Rpc,
                format!(
                    "{}: the plugin already answered; call finish() for its reply",
                    self.sender.method
                ),
            ));
        }
        self.sender.send(msg).map_err(|e| self.final_status_or(e))
    }

    /// Closes the request stream and waits (at most the call timeout) for the plugin's reply.
    /// A plugin that ends the call with status OK but no reply message, or with more than one,
    /// is an [`ErrorKind::Protocol`] error. A reply the plugin sent before reading every request
    /// (allowed) is returned here too.
    pub fn finish(mut self) -> Result<Resp> {
        let method = self.sender.method;
        if let Some(status) = &self.ended_with {
            return Err(self.status_error(status.clone()));
        }
        if self.early.is_none() && !self.ended_without_reply {
            if let Err(e) = self.sender.close_send() {
                // The plugin may have ended the call while the requests were being closed.
                let e = self.final_status_or(e);
                if self.early.is_none() && !self.ended_without_reply {
                    return Err(e);
                }
            }
        }
        let first = match self.early.take() {
            Some(reply) => Some(reply),
            None if self.ended_without_reply => None,
            None => self.replies.recv()?,
        };
        match first {
            Some(reply) => {
                // The status follows the reply; a failure after it still fails the call.
                if self.replies.recv()?.is_some() {
                    return Err(Error::new(
                        ErrorKind::Protocol,
                        format!("{method}: the plugin sent more than one reply message"),
                    ));
                }
                Ok(reply)
            }
            None => Err(Error::new(
                ErrorKind::Protocol,
                format!(
                    "{method}: the plugin ended the call with status OK but sent no reply message \
                     (a client-streaming call must answer exactly one)"
                ),
            )),
        }
    }

    /// Cancels the call.
    pub fn cancel(self) {
        self.replies.cancel();
    }

    fn status_error(&self, status: grpcio::RpcStatus) -> Error {
        Error::from_call(self.sender.method, grpcio::Error::RpcFailure(status), None)
    }

    /// When sending failed because the call is over, the plugin's status says why; or the
    /// plugin answered early, and its reply is kept for `finish`.
    fn final_status_or(&mut self, err: Error) -> Error {
        if err.kind() != ErrorKind::Rpc || err.rpc_status().is_some() {
            return err;
        }
        match self.replies.recv_timeout(Duration::from_secs(1)) {
            Err(status) if status.rpc_status().is_some() => {
                self.ended_with = status.rpc_status().cloned();
                status
            }
            Ok(None) => {
                self.ended_without_reply = true;
                err
            }
            Ok(Some(reply)) => {
                self.early = Some(reply);
                Error::new(
                    ErrorKind::Rpc,
                    format!(
                        "{}: the plugin already answered; call finish() for its reply",
                        self.sender.method
                    ),
                )
            }
            _ => err,
        }
    }
}

impl<Req, Resp> std::fmt::Debug for ClientStreamingCall<Req, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientStreamingCall")
            .field("method", &self.sender.method)
            .finish_non_exhaustive()
    }
}

/// A bidirectional call. Use it from one thread, or [`split`](DuplexCall::split) it to send
/// from one thread and receive on another. Dropping it cancels the call unless the plugin has
/// ended it.
pub struct DuplexCall<Req, Resp> {
    sender: RequestSender<Req>,
    replies: Replies<Resp>,
}

impl<Req, Resp> DuplexCall<Req, Resp> {
    #[doc(hidden)]
    pub fn new(
        method: &'static str,
        (sink, receiver): (StreamingCallSink<Req>, ClientDuplexReceiver<Resp>),
        timeout: Option<Duration>,
    ) -> Self {
        let (sender, replies) = halves(method, sink, receiver, timeout);
        DuplexCall { sender, replies }
    }

    /// Sends one message; see [`RequestSender::send`].
    pub fn send(&mut self, msg: Req) -> Result<()> {
        self.sender.send(msg)
    }

    /// Half-closes: no more messages from this side; replies keep coming.
    pub fn close_send(&mut self) -> Result<()> {
        self.sender.close_send()
    }

    /// The next reply; see [`Replies::recv`].
    pub fn recv(&mut self) -> Result<Option<Resp>> {
        self.replies.recv()
    }

    /// The next reply, waiting at most `timeout`; see [`Replies::recv_timeout`].
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Resp>> {
        self.replies.recv_timeout(timeout)
    }

    /// A handle that cancels the call from another thread.
    pub fn canceller(&self) -> Canceller {
        self.replies.canceller()
    }

    /// The two halves, each usable from its own thread. Dropping the sender before
    /// [`RequestSender::close_send`] cancels the call.
    pub fn split(self) -> (RequestSender<Req>, Replies<Resp>) {
        (self.sender, self.replies)
    }
}

impl<Req, Resp> std::fmt::Debug for DuplexCall<Req, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DuplexCall")
            .field("method", &self.sender.method)
            .finish_non_exhaustive()
    }
}

/// Messages a stream task takes in one turn at most, so one busy stream cannot starve the other
/// plugins' tasks.
const STREAM_BATCH: usize = 64;

/// One turn of a task that reads a gRPC stream: hands up to [`STREAM_BATCH`] ready messages to
/// `each`, then asks for another turn if more may be waiting. `Some(end)` once the stream is
/// over (`Ok` for a clean end); `None` while it is open (the task returns true).
pub(crate) fn stream_turn<T>(
    replies: &mut Replies<T>,
    cx: &mut Context<'_>,
    mut each: impl FnMut(T),
) -> Option<Result<()>> {
    for _ in 0..STREAM_BATCH {
        match replies.poll_recv(cx) {
            std::task::Poll::Pending => return None,
            std::task::Poll::Ready(Ok(Some(message))) => each(message),
            std::task::Poll::Ready(Ok(None)) => return Some(Ok(())),
            std::task::Poll::Ready(Err(e)) => return Some(Err(e)),
        }
    }
    cx.waker().wake_by_ref();
    None
}
