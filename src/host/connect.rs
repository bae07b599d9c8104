//! The connect step that launching and attaching share: decide the TLS of the connection, open
//! the gRPC channel, wait for it (the health check already on its way), open the streams go-plugin
//! plugins need read (broker, stdio), then wait for the health check.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use grpcio::Channel;

use super::config::ClientConfig;
use super::process::PluginProcess;
use super::session::{Session, StartTimings, TlsMode};
use super::socket_dir::SocketDir;
use crate::error::{Error, ErrorKind, Result};
use crate::proto::plugin_grpc::GrpcBrokerClient;
use crate::runtime::grpc;
use crate::runtime::mux::Mux;
use crate::runtime::tls::{self, Identity, Security, ServerTls};
use crate::services::broker::{Broker, BrokerSetup};
use crate::services::health::PendingHealth;
use crate::services::stdio::StdioPump;
use crate::wire::handshake::Handshake;

/// How the plugin came to be: it shapes the errors of the connect step.
#[derive(Clone, Copy)]
pub(super) enum Origin {
    /// This host launched it: errors carry its exit status and stderr.
    Launched,
    /// It was running already (reattach): errors are [`ErrorKind::Reattach`].
    Attached { pid: u32 },
}

/// What the connect step works with.
pub(super) struct Target<'a> {
    pub origin: Origin,
    pub process: &'a PluginProcess,
    pub handshake: &'a Handshake,
    pub socket_dir: &'a SocketDir,
    /// The yamux session every connection runs in, with multiplexed brokering.
    pub mux: Option<&'a Mux>,
    pub deadline: Instant,
    /// Disconnects when `close` cancels the start.
    pub cancel: &'a Receiver<()>,
}

/// A connected plugin.
pub(super) struct Connection {
    pub channel: Channel,
    pub tls_mode: TlsMode,
    pub broker: Broker,
    pub stdio: Option<StdioPump>,
    /// When the channel was ready.
    pub channel_ready: Instant,
    /// When the connection and its streams were ready (the health check came after).
    pub connected: Instant,
}

/// What a started plugin is made of besides its connection.
pub(super) struct Started {
    pub process: Arc<PluginProcess>,
    pub owned: bool,
    pub socket_dir: SocketDir,
    pub handshake: Handshake,
    pub timings: StartTimings,
    pub mux: Option<Mux>,
}

impl Connection {
    /// The session of a plugin that started with this connection.
    pub(super) fn into_session(self, started: Started) -> Session {
        Session {
            process: started.process,
            owned: started.owned,
            socket_dir: started.socket_dir,
            broker: self.broker,
            stdio: self.stdio,
            handshake: started.handshake,
            channel: self.channel,
            tls_mode: self.tls_mode,
            timings: started.timings,
            mux: started.mux,
        }
    }
}

/// The TLS of a connection to a plugin, decided from the handshake.
pub(super) struct ConnectionTls {
    /// How the host dials the plugin.
    security: Security,
    mode: TlsMode,
    /// How the host's own broker servers are secured.
    serve: Option<ServerTls>,
}

/// Connects to `target`, secured as `tls` says: the channel, the streams and the health check,
/// all within the target's deadline. On failure the streams it opened are closed again; the
/// process and the session are the caller's to clean up.
pub(super) fn connect(
    config: &ClientConfig,
    target: Target<'_>,
    tls: ConnectionTls,
) -> Result<Connection> {
    let ConnectionTls {
        security,
        mode: tls_mode,
        serve: serve_tls,
    } = tls;
    // With multiplexing, gRPC connects to a private socket whose connections become yamux
    // streams in the one connection to the plugin.
    let (address, grpc_target) = match target.mux {
        Some(mux) => {
            let main = mux.listen(false)?;
            (main.address(), main.target())
        }
        None => (
            target.handshake.address.clone(),
            target.handshake.address.grpc_target(),
        ),
    };
    let channel = grpc::channel_to(&grpc_target, &security);
    // Sent now, it goes out the moment the connection is ready (wait-for-ready).
    let health = match config.health_check {
        true => Some(PendingHealth::send(&channel, target.deadline)?),
        false => None,
    };
    grpc::wait_connected(&channel, &address, &security, target.deadline, || {
        if is_cancelled(target.cancel) {
            return Some(cancelled());
        }
        if let Some(e) = target.mux.and_then(Mux::ended_error) {
            return Some(target.process.explain(e));
        }
        target
            .process
            .has_exited()
            .then(|| exited(&target, "plugin exited while the host was connecting"))
    })
    .map_err(|e| connect_error(&target, &address.to_string(), e))?;
    let channel_ready = Instant::now();
    // go-plugin plugins block on stdio and broker traffic until the host reads them.
    let (broker, stdio) = open_streams(config, &channel, security, serve_tls, &target)
        .map_err(|e| explain(&target, e))?;
    let connected = Instant::now();
    if let Some(health) = health {
        let checked = health.wait(|| {
            if is_cancelled(target.cancel) {
                return Some(cancelled());
            }
            target
                .process
                .has_exited()
                .then(|| exited(&target, "plugin exited during the health check"))
        });
        if let Err(e) = checked {
            broker.close();
            if let Some(stdio) = stdio {
                stdio.finish(Duration::ZERO);
            }
            return Err(explain(&target, e));
        }
    }
    Ok(Connection {
        channel,
        tls_mode,
        broker,
        stdio,
        channel_ready,
        connected,
    })
}

/// The error for a plugin that exited before it was connected (`message` for a launched one).
fn exited(target: &Target<'_>, message: &str) -> Error {
    match target.origin {
        Origin::Launched => target.process.exited_error(message),
        Origin::Attached { pid } => Error::new(
            ErrorKind::Reattach,
            format!("reattachment process {pid} exited"),
        ),
    }
}

/// What the process adds to an error of the connect step (attached processes add nothing).
fn explain(target: &Target<'_>, e: Error) -> Error {
    match target.origin {
        Origin::Launched => target.process.explain(e),
        Origin::Attached { .. } => e,
    }
}

/// A failed wait for the connection, naming the plugin's own address (not the private socket
/// gRPC dialed under multiplexing) and why.
fn connect_error(target: &Target<'_>, dialed: &str, e: Error) -> Error {
    let announced = &target.handshake.address;
    match (target.origin, target.mux) {
        (Origin::Attached { .. }, _) => Error::new(
            ErrorKind::Reattach,
            format!(
                "cannot reattach to the plugin at {announced}: {}",
                e.message()
            ),
        ),
        (Origin::Launched, Some(mux)) => {
            let message = e
                .message()
                .replace(dialed, &format!("{announced} (multiplexed)"));
            let why = mux.diagnose().map(|why| format!(": {why}"));
            Error::new(e.kind(), message + &why.unwrap_or_default())
        }
        (Origin::Launched, None) => e,
    }
}

/// Opens the broker stream and the stdio stream. Either both or neither.
fn open_streams(
    config: &ClientConfig,
    channel: &Channel,
    security: Security,
    serve_tls: Option<ServerTls>,
    target: &Target<'_>,
) -> Result<(Broker, Option<StdioPump>)> {
    let broker = Broker::new(BrokerSetup {
        dial_security: security,
        serve_security: serve_tls,
        socket_dir: target.socket_dir.path().to_owned(),
        timeout: config.broker_timeout,
        mux: target.mux.cloned(),
    });
    // The broker stream lives as long as the plugin and may stay quiet: no call timeout.
    let call = GrpcBrokerClient::new(channel.clone())
        .with_call_timeout(None)
        .start_stream();
    if let Err(e) = call.and_then(|call| broker.attach_host(call)) {
        broker.close();
        return Err(e);
    }
    match StdioPump::start(
        channel,
        config.stdio_stdout.clone(),
        config.stdio_stderr.clone(),
    ) {
        Ok(stdio) => Ok((broker, Some(stdio))),
        Err(e) => {
            broker.close();
            Err(e)
        }
    }
}

/// The TLS of the connection to the plugin, how to name it, and how this host's own broker
/// servers are secured: a certificate from the handshake replaces the caller's roots (as in
/// go-plugin), and the brokered servers present the host's certificate and require the plugin's.
/// `identity` is the auto-mTLS certificate this host sent the plugin, if any.
pub(super) fn decide_tls(
    config: &ClientConfig,
    handshake: &Handshake,
    identity: Option<Identity>,
) -> Result<ConnectionTls> {
    let (security, mode, serve) = tls_table(config, handshake, identity)?;
    Ok(ConnectionTls {
        security,
        mode,
        serve,
    })
}

fn tls_table(
    config: &ClientConfig,
    handshake: &Handshake,
    identity: Option<Identity>,
) -> Result<(Security, TlsMode, Option<ServerTls>)> {
    let plugin_cert = handshake
        .server_cert_der
        .as_deref()
        .map(tls::der_to_pem)
        .transpose()?;
    let serve = |identity: Option<Identity>, client_ca_pem: Option<String>| {
        identity.map(|identity| ServerTls {
            identity,
            client_ca_pem,
        })
    };
    Ok(match (&config.tls, identity, plugin_cert) {
        (Some(user), _, Some(cert)) => (
            Security::pinned(cert.clone(), user.identity()),
            TlsMode::User,
            serve(user.identity(), Some(cert)),
        ),
        (Some(user), _, None) => (
            Security::Tls {
                root_pem: user.server_ca_pem.clone(),
                identity: user.identity(),
                server_name: user.server_name.clone(),
            },
            TlsMode::User,
            serve(user.identity(), Some(user.server_ca_pem.clone())),
        ),
        (None, Some(id), Some(cert)) => (
            Security::pinned(cert.clone(), Some(id.clone())),
            TlsMode::AutoMtls,
            serve(Some(id), Some(cert)),
        ),
        (None, Some(_), None) => {
            return Err(Error::new(
                ErrorKind::Tls,
                "auto mTLS is on but the plugin's handshake carries no certificate: the \
                 plugin ignored PLUGIN_CLIENT_CERT and serves plaintext; turn auto_mtls off \
                 to talk to it",
            ))
        }
        (None, None, Some(cert)) => {
            log::info!("the plugin sent a TLS certificate without being asked; using TLS");
            (Security::pinned(cert, None), TlsMode::ServerOnly, None)
        }
        (None, None, None) => (Security::Plaintext, TlsMode::Plaintext, None),
    })
}

/// The error of a `start` that `close` cancelled.
pub(super) fn cancelled() -> Error {
    Error::new(
        ErrorKind::Cancelled,
        "start was cancelled: the client was closed while the plugin was starting",
    )
}

/// Whether `close` cancelled the start (it drops the sender).
pub(super) fn is_cancelled(cancel: &Receiver<()>) -> bool {
    matches!(
        cancel.try_recv(),
        Err(crossbeam_channel::TryRecvError::Disconnected)
    )
}
