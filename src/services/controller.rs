//! `plugin.GRPCController`: the host asks the plugin to shut down; the plugin's service hands
//! the request to whoever waits for it.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use grpcio::{CallOption, Channel, ClientUnaryReceiver, RpcStatus, RpcStatusCode};

use crate::error::{Error, ErrorKind, Result};
use crate::proto::plugin::Empty;
use crate::proto::plugin_grpc::{
    create_grpc_controller, GrpcController, GrpcControllerClient, METHOD_GRPC_CONTROLLER_SHUTDOWN,
};
use crate::rpc::{CallContext, Service};

/// The plugin's controller service: the first `Shutdown` sends on `shutdown`.
pub(crate) fn service(shutdown: Sender<()>) -> Service {
    create_grpc_controller(Controller {
        shutdown: Mutex::new(Some(shutdown)),
    })
}

struct Controller {
    shutdown: Mutex<Option<Sender<()>>>,
}

impl GrpcController for Controller {
    fn shutdown(&self, _call: &CallContext, _req: Empty) -> std::result::Result<Empty, RpcStatus> {
        if let Some(tx) = self
            .shutdown
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = tx.send(());
        }
        Ok(Empty::new())
    }
}

/// Host side: asks the plugin to shut down, waiting at most `timeout` for its answer. The plugin
/// dropping the connection while answering counts as success.
pub(crate) fn shutdown_rpc(channel: &Channel, timeout: Duration) -> Result<()> {
    let reply = GrpcControllerClient::new(channel.clone())
        .shutdown_opt(&Empty::new(), CallOption::default().timeout(timeout));
    answered(reply.map(drop), timeout)
}

/// A `Shutdown` request on its way, for `close`: sent first, so what `close` does next (stopping
/// the broker) overlaps the plugin's shutdown.
pub(crate) struct PendingShutdown {
    answer: Receiver<grpcio::Result<Empty>>,
    /// The call, polled on gRPC's completion-queue thread until it ends; taken and cancelled when
    /// the plugin's exit makes the answer moot, so the call (and the connection it holds) ends
    /// with `close` even when the exit does not drop the connection.
    call: Arc<Mutex<Option<ClientUnaryReceiver<Empty>>>>,
    timeout: Duration,
    /// The call's own deadline.
    deadline: Instant,
}

impl PendingShutdown {
    /// Sends `Shutdown`; its answer is awaited on gRPC's completion-queue thread, and the call's
    /// own deadline (`timeout`) ends it.
    pub(crate) fn send(channel: &Channel, timeout: Duration) -> Result<PendingShutdown> {
        let deadline = Instant::now() + timeout;
        let client = grpcio::Client::new(channel.clone());
        let call = client
            .unary_call_async(
                &METHOD_GRPC_CONTROLLER_SHUTDOWN,
                &Empty::new(),
                CallOption::default().timeout(timeout),
            )
            .map_err(shutdown_error)?;
        let call = Arc::new(Mutex::new(Some(call)));
        let polled = call.clone();
        let (tx, answer) = crossbeam_channel::bounded(1);
        client.spawn(std::future::poll_fn(move |cx| {
            let mut call = polled.lock().unwrap_or_else(|p| p.into_inner());
            // Taken: cancelled by `wait_answer_or_exit`, which wants no answer any more.
            let Some(receiver) = call.as_mut() else {
                return std::task::Poll::Ready(());
            };
            match std::pin::Pin::new(receiver).poll(cx) {
                std::task::Poll::Ready(reply) => {
                    call.take();
                    let _ = tx.send(reply);
                    std::task::Poll::Ready(())
                }
                std::task::Poll::Pending => std::task::Poll::Pending,
            }
        }));
        Ok(PendingShutdown {
            answer,
            call,
            timeout,
            deadline,
        })
    }

    /// Waits for the answer or for the plugin's exit, whichever comes first, until the call's
    /// deadline. `exited` disconnects when the exit watch ends; `has_exited` says whether that
    /// was the exit (a watch can also end without one: then the answer is still awaited).
    /// go-plugin servers stop hard while answering, so their answer is a dropped connection,
    /// which gRPC reported up to 0.7 ms after the exit was seen (README, close): the exit is
    /// what the request asks for, so it is as good as an answer, and the call is cancelled.
    pub(crate) fn wait_answer_or_exit(
        self,
        exited: &Receiver<()>,
        has_exited: impl Fn() -> bool,
    ) -> Result<()> {
        let remaining = || self.deadline.saturating_duration_since(Instant::now());
        use crossbeam_channel::RecvTimeoutError;
        let reply = crossbeam_channel::select! {
            recv(self.answer) -> reply => reply.map_err(|_| RecvTimeoutError::Disconnected),
            recv(exited) -> _ => {
                if has_exited() {
                    let call = self.call.lock().unwrap_or_else(|p| p.into_inner()).take();
                    if let Some(mut call) = call {
                        call.cancel();
                    }
                    return Ok(());
                }
                // The watch ended without an exit: the answer is still awaited.
                self.answer.recv_timeout(remaining())
            }
            default(remaining()) => Err(RecvTimeoutError::Timeout),
        };
        match reply {
            Ok(reply) => answered(reply.map(drop).map_err(shutdown_error), self.timeout),
            Err(RecvTimeoutError::Timeout) => Err(timeout_error(self.timeout, None)),
            // Dropped unanswered: the channel is shutting down.
            Err(RecvTimeoutError::Disconnected) => Ok(()),
        }
    }
}

fn shutdown_error(e: grpcio::Error) -> Error {
    crate::rpc::__generated::call_error(METHOD_GRPC_CONTROLLER_SHUTDOWN.name, e, None)
}

/// What a Shutdown reply means: success, or a dropped connection (go-plugin servers stop hard
/// while answering), is success.
fn answered(reply: Result<()>, timeout: Duration) -> Result<()> {
    let Err(e) = reply else { return Ok(()) };
    match e.rpc_code() {
        Some(RpcStatusCode::UNAVAILABLE | RpcStatusCode::CANCELLED) => Ok(()),
        Some(RpcStatusCode::DEADLINE_EXCEEDED) => Err(timeout_error(timeout, Some(e))),
        _ => Err(e),
    }
}

fn timeout_error(timeout: Duration, source: Option<Error>) -> Error {
    let e = Error::new(
        ErrorKind::Timeout,
        format!("the plugin did not answer Shutdown within {timeout:?}"),
    );
    match source {
        Some(source) => e.with_source(source),
        None => e,
    }
}
