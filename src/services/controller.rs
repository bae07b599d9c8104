//! `plugin.GRPCController`: the host asks the plugin to shut down; the plugin's service hands
//! the request to whoever waits for it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use grpcio::{CallOption, Channel, RpcStatus, RpcStatusCode};

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
    timeout: Duration,
    /// The call's own deadline.
    deadline: Instant,
}

const SHUTDOWN: &str = "/plugin.GRPCController/Shutdown";

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
            .map_err(|e| crate::rpc::__generated::call_error(SHUTDOWN, e, None))?;
        let (tx, answer) = crossbeam_channel::bounded(1);
        client.spawn(async move {
            let _ = tx.send(call.await);
        });
        Ok(PendingShutdown {
            answer,
            timeout,
            deadline,
        })
    }

    /// Waits for the answer or for `exited` to disconnect (the plugin's exit), whichever comes
    /// first. go-plugin servers stop hard while answering, so their answer is a dropped
    /// connection, which gRPC reported up to 0.7 ms after the exit was seen (README, close): the
    /// exit is what the request asks for, so it is as good as an answer.
    pub(crate) fn wait_answer_or_exit(self, exited: &Receiver<()>) -> Result<()> {
        let timeout = self.timeout;
        crossbeam_channel::select! {
            recv(self.answer) -> reply => match reply {
                Ok(reply) => answered(
                    reply
                        .map(drop)
                        .map_err(|e| crate::rpc::__generated::call_error(SHUTDOWN, e, None)),
                    timeout,
                ),
                // The call was dropped unanswered (the channel is shutting down).
                Err(_) => Ok(()),
            },
            recv(exited) -> _ => Ok(()),
            // The call's deadline ends it; this bounds the wait by the same deadline regardless.
            default(self.deadline.saturating_duration_since(Instant::now())) => {
                Err(timeout_error(timeout, None))
            }
        }
    }
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
