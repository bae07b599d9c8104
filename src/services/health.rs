//! `grpc.health.v1.Health`, service `plugin`: the plugin answers it (by default `SERVING`, or
//! what the plugin's probe says), and the host asks it while starting a plugin and on `ping`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use grpcio::{CallOption, Channel, Client as GrpcClient, RpcStatus, RpcStatusCode};

use crate::error::{Error, ErrorKind, Result};
use crate::proto::health::{
    health_check_response::ServingStatus, HealthCheckRequest, HealthCheckResponse,
};
use crate::proto::health_grpc::{create_health, Health, HealthClient, METHOD_HEALTH_CHECK};
use crate::rpc::{CallContext, Service};
use crate::runtime::executor::block_until;

/// Decides whether the plugin reports itself healthy; see
/// [`PluginServer::health`](crate::server::PluginServer::health).
pub type HealthProbe = Arc<dyn Fn(&CallContext) -> bool + Send + Sync>;

/// The plugin's health service, asking `probe` (if any) on every check of `plugin`.
pub(crate) fn service(probe: Option<HealthProbe>) -> Service {
    create_health(PluginHealth(probe))
}

struct PluginHealth(Option<HealthProbe>);

impl Health for PluginHealth {
    fn check(
        &self,
        call: &CallContext,
        req: HealthCheckRequest,
    ) -> std::result::Result<HealthCheckResponse, RpcStatus> {
        match req.service.as_str() {
            "" | "plugin" => {
                let healthy = self.0.as_ref().is_none_or(|probe| probe(call));
                let mut resp = HealthCheckResponse::new();
                resp.status = if healthy {
                    ServingStatus::SERVING
                } else {
                    ServingStatus::NOT_SERVING
                }
                .into();
                Ok(resp)
            }
            other => Err(RpcStatus::with_message(
                RpcStatusCode::NOT_FOUND,
                format!("unknown service {other:?}"),
            )),
        }
    }
}

/// A health check sent while the connection is still being made: the request goes out the moment
/// the connection is ready (wait-for-ready), overlapping the check with connecting and opening
/// the streams instead of adding its round trip after them.
pub(crate) struct PendingHealth {
    reply: grpcio::ClientUnaryReceiver<HealthCheckResponse>,
    timeout: Duration,
}

impl PendingHealth {
    pub(crate) fn send(channel: &Channel, deadline: Instant) -> Result<PendingHealth> {
        let timeout = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(100));
        let mut req = HealthCheckRequest::new();
        req.service = "plugin".to_owned();
        let reply = GrpcClient::new(channel.clone())
            .unary_call_async(
                &METHOD_HEALTH_CHECK,
                &req,
                CallOption::default().timeout(timeout).wait_for_ready(true),
            )
            .map_err(|e| health_error(Error::from_call(HEALTH_CHECK, e, None), timeout))?;
        Ok(PendingHealth { reply, timeout })
    }

    /// Waits for the answer, checking `abort` every 20 ms. Dropping it instead cancels the call.
    pub(crate) fn wait(mut self, mut abort: impl FnMut() -> Option<Error>) -> Result<()> {
        loop {
            let slice = Instant::now() + Duration::from_millis(20);
            let polled = block_until(Some(slice), |cx| {
                std::future::Future::poll(std::pin::Pin::new(&mut self.reply), cx)
            });
            match polled {
                Some(result) => {
                    let reply = result.map_err(|e| {
                        health_error(Error::from_call(HEALTH_CHECK, e, None), self.timeout)
                    })?;
                    return serving(reply.status.enum_value_or_default());
                }
                None => {
                    if let Some(err) = abort() {
                        return Err(err);
                    }
                }
            }
        }
    }
}

const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

pub(crate) fn check_health(channel: &Channel, timeout: Duration) -> Result<()> {
    let mut req = HealthCheckRequest::new();
    req.service = "plugin".to_owned();
    let reply = HealthClient::new(channel.clone())
        .check_opt(&req, CallOption::default().timeout(timeout))
        .map_err(|e| health_error(e, timeout))?;
    serving(reply.status.enum_value_or_default())
}

fn serving(status: ServingStatus) -> Result<()> {
    if status != ServingStatus::SERVING {
        return Err(Error::new(
            ErrorKind::Health,
            format!(
                "plugin health check for service \"plugin\" answered {status:?}, expected SERVING"
            ),
        ));
    }
    Ok(())
}

fn health_error(e: Error, timeout: Duration) -> Error {
    match e.rpc_code() {
        Some(RpcStatusCode::DEADLINE_EXCEEDED) => Error::new(
            ErrorKind::Timeout,
            format!("timed out after {timeout:?} waiting for the plugin's health check"),
        )
        .with_source(e),
        Some(RpcStatusCode::UNIMPLEMENTED) => Error::new(
            ErrorKind::Health,
            "the plugin serves no grpc.health.v1.Health service (go-plugin plugins do); \
                     for other plugins turn the check off with ClientConfig::health_check(false)",
        )
        .with_source(e),
        _ => Error::new(
            ErrorKind::Health,
            format!("plugin health check for service \"plugin\" failed: {e}"),
        )
        .with_source(e),
    }
}
