//! `plugin.GRPCController`: the host asks the plugin to shut down; the plugin's service hands
//! the request to whoever waits for it.

use std::sync::Mutex;
use std::time::Duration;

use crossbeam_channel::Sender;
use grpcio::{CallOption, Channel, RpcStatus, RpcStatusCode};

use crate::error::{Error, ErrorKind, Result};
use crate::proto::plugin::Empty;
use crate::proto::plugin_grpc::{create_grpc_controller, GrpcController, GrpcControllerClient};
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
    let Err(e) = reply else { return Ok(()) };
    match e.rpc_code() {
        // go-plugin servers stop hard while answering: a dropped connection means it worked.
        Some(RpcStatusCode::UNAVAILABLE | RpcStatusCode::CANCELLED) => Ok(()),
        Some(RpcStatusCode::DEADLINE_EXCEEDED) => Err(Error::new(
            ErrorKind::Timeout,
            format!("the plugin did not answer Shutdown within {timeout:?}"),
        )
        .with_source(e)),
        _ => Err(e),
    }
}
