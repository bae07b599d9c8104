//! The plugin side: serve gRPC services as a go-plugin compatible plugin.
//!
//! ```no_run
//! use rpcplugin::proto::kv_grpc::{create_kv, Kv};
//! use rpcplugin::proto::kv::{GetRequest, GetResponse};
//! use rpcplugin::server::CallContext;
//!
//! #[derive(Clone)]
//! struct Store;
//! impl Kv for Store {
//!     fn get(&self, _call: &CallContext, req: GetRequest) -> Result<GetResponse, grpcio::RpcStatus> {
//!         let mut resp = GetResponse::new();
//!         resp.value = format!("value of {}", req.key).into_bytes();
//!         Ok(resp)
//!     }
//! }
//!
//! fn main() {
//!     let result = rpcplugin::server::PluginServer::new("BASIC_PLUGIN", "hello")
//!         .versions([1])
//!         .serve(|_ctx| vec![create_kv(Store)]);
//!     if let Err(e) = result {
//!         eprintln!("plugin failed: {e}");
//!         std::process::exit(1);
//!     }
//! }
//! ```
//!
//! `serve` checks the magic cookie (without it, it explains on stderr that this is a plugin and
//! exits with status 1), picks the highest protocol version both sides speak, listens on a unix
//! socket in `PLUGIN_UNIX_SOCKET_DIR` (or tcp, see [`PluginServer::network`]), switches to mTLS when
//! the host sent `PLUGIN_CLIENT_CERT`, prints the handshake line, and serves until the host calls
//! `GRPCController.Shutdown`. It also serves health (`plugin` is `SERVING`), `GRPCStdio` and
//! `GRPCBroker`.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use crossbeam_channel::{bounded, Sender};
use grpcio::{RpcStatus, RpcStatusCode, Server, ServerCredentials};

use crate::broker::{Broker, BrokerSetup};
use crate::error::{Error, ErrorKind, Result};
use crate::grpc::Security;
use crate::mux::{CloseOnDrop, ListenSource, Mux, Origin, Role};
use crate::proto::health::{
    health_check_response::ServingStatus, HealthCheckRequest, HealthCheckResponse,
};
use crate::proto::health_grpc::{create_health, Health};
use crate::proto::plugin::ConnInfo;
use crate::proto::plugin::Empty;
use crate::proto::plugin_grpc::{
    create_grpc_broker, create_grpc_controller, create_grpc_stdio, GrpcBroker, GrpcController,
};
use crate::stdio::{self, StdioWriter};
use crate::tls::{self, Identity};
use crate::transport::Address;
use crate::{grpc, handlers, handshake, sys};

pub use crate::handlers::{set_max_handler_threads, CallContext, ReplySink, Requests};

/// Which kind of listener the plugin opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// A unix socket in `PLUGIN_UNIX_SOCKET_DIR` (or the temp dir): go-plugin's choice on unix.
    Unix,
    /// `127.0.0.1` on the first free port in `PLUGIN_MIN_PORT..=PLUGIN_MAX_PORT`.
    Tcp,
}

/// What the service factory gets to know about the session, and the plugin's handles on it.
pub struct PluginContext {
    version: u32,
    broker: Broker,
    stdout: StdioWriter,
    stderr: StdioWriter,
}

impl PluginContext {
    /// The negotiated application protocol version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The broker: dial services the host offers under an id, or offer services to the host.
    /// Usable from handlers once the host has connected (go-plugin hosts open the broker stream
    /// right away); announcements made earlier wait for it.
    pub fn broker(&self) -> Broker {
        self.broker.clone()
    }

    /// A writer whose data reaches the host as the plugin's stdout, over `GRPCStdio`.
    pub fn stdout(&self) -> StdioWriter {
        self.stdout.clone()
    }

    /// A writer whose data reaches the host as the plugin's stderr, over `GRPCStdio`.
    pub fn stderr(&self) -> StdioWriter {
        self.stderr.clone()
    }
}

/// Decides whether the plugin reports itself healthy; see [`PluginServer::health`].
pub type HealthProbe = std::sync::Arc<dyn Fn(&CallContext) -> bool + Send + Sync>;

/// Configuration of the plugin side. See the module docs for an example.
#[derive(Clone)]
pub struct PluginServer {
    cookie_key: String,
    cookie_value: String,
    versions: Vec<u32>,
    network: Network,
    graceful_timeout: Duration,
    tls: Option<(Identity, Option<String>)>,
    health: Option<HealthProbe>,
    reflection: bool,
}

impl std::fmt::Debug for PluginServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginServer")
            .field("cookie_key", &self.cookie_key)
            .field("versions", &self.versions)
            .field("network", &self.network)
            .field("graceful_timeout", &self.graceful_timeout)
            .field("tls", &self.tls.is_some())
            .field("health", &self.health.is_some())
            .field("reflection", &self.reflection)
            .finish_non_exhaustive()
    }
}

impl PluginServer {
    /// A plugin that requires `cookie_key=cookie_value` in its environment.
    pub fn new(cookie_key: impl Into<String>, cookie_value: impl Into<String>) -> Self {
        PluginServer {
            cookie_key: cookie_key.into(),
            cookie_value: cookie_value.into(),
            versions: vec![1],
            network: Network::Unix,
            graceful_timeout: Duration::from_secs(2),
            tls: None,
            health: None,
            reflection: true,
        }
    }

    /// Whether to serve gRPC server reflection (`grpc.reflection.v1alpha` and `v1`), as go-plugin
    /// plugins do: hosts and tools (`rpcplugin inspect`, grpcurl) can then list the plugin's
    /// services and fetch the descriptors that define them. It describes every service whose
    /// code came from `rpcplugin-codegen`, and the protocol's own. Default: on.
    pub fn reflection(mut self, serve: bool) -> Self {
        self.reflection = serve;
        self
    }

    /// Asks `probe` on every health check of the service `plugin` (hosts check it while
    /// starting the plugin, and `RpcPluginClient::ping` does): `true` answers `SERVING`, `false`
    /// `NOT_SERVING`, which fails the host's `start`. It runs on a handler thread; it may block,
    /// and the call's context says when the host has given up. Default: always `SERVING`.
    ///
    /// ```no_run
    /// # use rpcplugin::server::PluginServer;
    /// let ready = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    /// let server = PluginServer::new("BASIC_PLUGIN", "hello")
    ///     .health(move |_call| ready.load(std::sync::atomic::Ordering::SeqCst));
    /// # let _ = server;
    /// ```
    pub fn health(mut self, probe: impl Fn(&CallContext) -> bool + Send + Sync + 'static) -> Self {
        self.health = Some(std::sync::Arc::new(probe));
        self
    }

    /// Serve TLS with this certificate chain and key (PEM) instead of auto mTLS, requiring client
    /// certificates that verify against `client_ca_pem` when given. Like go-plugin's
    /// `TLSProvider`: the handshake then carries no certificate, and the host must be configured
    /// to trust this one. Default: auto mTLS when the host asks for it, plaintext otherwise.
    pub fn tls(
        mut self,
        cert_pem: impl Into<String>,
        key_pem: impl Into<String>,
        client_ca_pem: Option<String>,
    ) -> Self {
        let identity = Identity {
            cert_pem: cert_pem.into(),
            key_pem: key_pem.into(),
        };
        self.tls = Some((identity, client_ca_pem));
        self
    }

    /// The application protocol versions this plugin speaks. Default `[1]`.
    pub fn versions(mut self, versions: impl IntoIterator<Item = u32>) -> Self {
        self.versions = versions.into_iter().collect();
        self.versions.sort_unstable();
        self.versions.dedup();
        self
    }

    /// Listen on a unix socket (default) or on tcp.
    pub fn network(mut self, network: Network) -> Self {
        self.network = network;
        self
    }

    /// How long in-flight unary calls may finish after `Shutdown` before every remaining call is
    /// cancelled. Default 2 s.
    pub fn graceful_timeout(mut self, timeout: Duration) -> Self {
        self.graceful_timeout = timeout;
        self
    }

    /// Serves until the host asks the plugin to shut down. `services` builds the application's
    /// services once the protocol version is known. Exits the process with status 1 when the
    /// magic cookie is missing (someone ran the plugin by hand).
    pub fn serve(self, services: impl FnOnce(&PluginContext) -> Vec<crate::Service>) -> Result<()> {
        if std::env::var(&self.cookie_key).ok().as_deref() != Some(self.cookie_value.as_str()) {
            eprintln!(
                "This binary is a plugin. These are not meant to be executed directly.\n\
                 Please execute the program that consumes these plugins, which will\n\
                 load any plugins automatically"
            );
            std::process::exit(1);
        }
        sys::ignore_sigint();
        let version = negotiate(
            &self.versions,
            std::env::var("PLUGIN_PROTOCOL_VERSIONS").ok().as_deref(),
        );

        // (identity, CA for client certs, whether the handshake carries our certificate)
        let client_cert = std::env::var("PLUGIN_CLIENT_CERT").unwrap_or_default();
        let security = match self.tls.clone() {
            Some((identity, client_ca)) => {
                tls::check_cert_pem("plugin TLS certificate", &identity.cert_pem)?;
                tls::check_key_pem("plugin TLS key", &identity.key_pem)?;
                if let Some(ca) = &client_ca {
                    tls::check_cert_pem("plugin TLS client CA", ca)?;
                }
                Some((identity, client_ca, false))
            }
            None if client_cert.is_empty() => None,
            None => {
                tls::check_cert_pem("PLUGIN_CLIENT_CERT", &client_cert)?;
                Some((tls::generate_identity()?, Some(client_cert), true))
            }
        };

        let socket_dir = std::env::var_os("PLUGIN_UNIX_SOCKET_DIR")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        // Multiplexed brokering (the host set PLUGIN_MULTIPLEX_GRPC): this side listens on the
        // announced socket itself and runs a yamux session on the host's one connection; the
        // gRPC server listens on a private socket that the session's streams are bridged to.
        let multiplex = std::env::var("PLUGIN_MULTIPLEX_GRPC")
            .ok()
            .and_then(|v| handshake::parse_go_bool(&v))
            .unwrap_or(false);
        let muxed = match multiplex {
            true => {
                let (source, public) = listen_public(self.network, &socket_dir)?;
                let private = socket_dir.join(format!("plugin{}-grpc", grpc::random_u32()));
                let mux = Mux::start(Origin::Accept(source), Role::Server, Some(private.clone()))?;
                Some((CloseOnDrop(mux), public, private))
            }
            false => None,
        };
        let broker = Broker::new(BrokerSetup {
            dial_security: match &security {
                Some((identity, Some(ca), _)) => Security::Tls {
                    root_pem: ca.clone(),
                    identity: Some(identity.clone()),
                    server_name: "localhost".to_owned(),
                },
                _ => Security::Plaintext,
            },
            serve_security: security
                .as_ref()
                .map(|(identity, ca, _)| (identity.clone(), ca.clone())),
            socket_dir: socket_dir.clone(),
            timeout: Duration::from_secs(5),
            mux: muxed.as_ref().map(|(mux, ..)| mux.0.clone()),
        });
        let stdio = stdio::plugin_side();
        let ctx = PluginContext {
            version,
            broker: broker.clone(),
            stdout: stdio.stdout.clone(),
            stderr: stdio.stderr.clone(),
        };

        let (shutdown_tx, shutdown_rx) = bounded::<()>(1);
        let _pool = handlers::acquire();
        let mut services = services(&ctx);
        services.extend([
            create_health(PluginHealth(self.health.clone())),
            create_grpc_controller(Controller {
                shutdown: Mutex::new(Some(shutdown_tx)),
            }),
            create_grpc_stdio(stdio.service),
            create_grpc_broker(BrokerService(broker.clone())),
        ]);
        if self.reflection {
            let described: Vec<_> = services.iter().filter_map(|s| s.descriptor()).collect();
            services.extend(crate::reflection::services(&described));
        }
        let (builder, scope) = grpc::server_builder(services);
        let mut server = builder.build().map_err(|e| {
            Error::new(
                ErrorKind::Transport,
                format!("building the gRPC server: {e}"),
            )
        })?;
        let creds = || match &security {
            Some((id, client_ca, _)) => tls::server_credentials(id, client_ca.as_deref()),
            None => ServerCredentials::insecure(),
        };
        let (listener, announced) = match muxed {
            Some((mux, public, private)) => {
                let address = public.address.clone();
                let grpc_listener = listen_private(&mut server, &private, creds())?;
                (grpc_listener, Some((mux, public, address)))
            }
            None => (listen(&mut server, self.network, &socket_dir, creds)?, None),
        };
        server.start();

        let cert_der = match &security {
            Some((id, _, true)) => Some(id.cert_der()?),
            _ => None,
        };
        let address = announced
            .as_ref()
            .map_or(&listener.address, |(_, _, address)| address);
        let line = handshake::render(version, address, cert_der.as_deref(), announced.is_some());
        {
            use std::io::Write;
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "{line}")
                .and_then(|_| stdout.flush())
                .map_err(|e| Error::io("writing the handshake line", e))?;
        }

        match &announced {
            // The host's one connection carries everything: once it is gone, nobody can reach
            // this plugin any more, so it stops as if asked to.
            Some((mux, ..)) => {
                let gone = mux.0.gone();
                crossbeam_channel::select! {
                    recv(shutdown_rx) -> _ => {},
                    recv(gone) -> _ => log::debug!(
                        "the host's multiplexed connection ended ({}); stopping",
                        mux.0.ended().unwrap_or_default()
                    ),
                }
            }
            None => {
                let _ = shutdown_rx.recv();
            }
        }
        // End the long-lived streams first, so the graceful stop waits only for real calls.
        broker.close();
        drop(stdio.stop);
        stop_server(server, &scope, self.graceful_timeout);
        // Closing the session (go-away, then its sockets) and removing the announced socket.
        drop(announced);
        drop(listener);
        Ok(())
    }
}

/// go-plugin's server rule: the highest version both sides list; with none in common (or no list
/// at all), the lowest own version, which the host will then refuse with a clear message.
fn negotiate(own: &[u32], offered: Option<&str>) -> u32 {
    let offered: Vec<u32> = offered
        .unwrap_or("")
        .split(',')
        .filter_map(|v| v.parse().ok())
        .collect();
    own.iter()
        .rev()
        .find(|v| offered.contains(v))
        .or(own.first())
        .copied()
        .unwrap_or(1)
}

struct Listener {
    address: Address,
    socket: Option<PathBuf>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(path) = &self.socket {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn listen(
    server: &mut Server,
    network: Network,
    dir: &std::path::Path,
    creds: impl Fn() -> ServerCredentials,
) -> Result<Listener> {
    match network {
        Network::Unix => {
            let path = dir.join(format!("plugin{}", grpc::random_u32()));
            let _ = std::fs::remove_file(&path);
            server
                .add_listening_port(format!("unix:{}", path.display()), creds())
                .map_err(|e| {
                    Error::new(
                        ErrorKind::Transport,
                        format!("couldn't bind plugin unix socket {}: {e}", path.display()),
                    )
                })?;
            Ok(Listener {
                address: Address::Unix(path.clone()),
                socket: Some(path),
            })
        }
        Network::Tcp => {
            let (min, max) = port_range()?;
            for p in min..=max {
                if server
                    .add_listening_port(format!("127.0.0.1:{p}"), creds())
                    .is_ok()
                {
                    return Ok(Listener {
                        address: Address::Tcp(([127, 0, 0, 1], p).into()),
                        socket: None,
                    });
                }
            }
            Err(no_free_port(min, max))
        }
    }
}

/// The gRPC server's private socket under multiplexing: only the session's bridges connect to it.
fn listen_private(
    server: &mut Server,
    path: &std::path::Path,
    creds: ServerCredentials,
) -> Result<Listener> {
    let _ = std::fs::remove_file(path);
    server
        .add_listening_port(format!("unix:{}", path.display()), creds)
        .map_err(|e| {
            Error::new(
                ErrorKind::Transport,
                format!(
                    "couldn't bind the plugin's gRPC socket {}: {e}",
                    path.display()
                ),
            )
        })?;
    Ok(Listener {
        address: Address::Unix(path.to_owned()),
        socket: Some(path.to_owned()),
    })
}

/// The announced listener under multiplexing, opened by this side (not by gRPC): the host's one
/// connection is accepted from it.
fn listen_public(network: Network, dir: &std::path::Path) -> Result<(ListenSource, Listener)> {
    match network {
        Network::Unix => {
            let path = dir.join(format!("plugin{}", grpc::random_u32()));
            let _ = std::fs::remove_file(&path);
            let listener = std::os::unix::net::UnixListener::bind(&path).map_err(|e| {
                Error::io(
                    format!("couldn't bind plugin unix socket {}", path.display()),
                    e,
                )
            })?;
            Ok((
                ListenSource::Unix(listener),
                Listener {
                    address: Address::Unix(path.clone()),
                    socket: Some(path),
                },
            ))
        }
        Network::Tcp => {
            let (min, max) = port_range()?;
            for p in min..=max {
                if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", p)) {
                    return Ok((
                        ListenSource::Tcp(listener),
                        Listener {
                            address: Address::Tcp(([127, 0, 0, 1], p).into()),
                            socket: None,
                        },
                    ));
                }
            }
            Err(no_free_port(min, max))
        }
    }
}

/// `PLUGIN_MIN_PORT..=PLUGIN_MAX_PORT` (go-plugin's defaults: 10000..=25000).
fn port_range() -> Result<(u16, u16)> {
    let port = |name: &str, default: u16| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse::<u16>().ok())
            .unwrap_or(default)
    };
    let (min, max) = (
        port("PLUGIN_MIN_PORT", 10000),
        port("PLUGIN_MAX_PORT", 25000),
    );
    if min > max {
        return Err(Error::new(
            ErrorKind::Config,
            format!("PLUGIN_MIN_PORT {min} is greater than PLUGIN_MAX_PORT {max}"),
        ));
    }
    Ok((min, max))
}

fn no_free_port(min: u16, max: u16) -> Error {
    Error::new(
        ErrorKind::Transport,
        format!("couldn't bind plugin tcp listener: no free port in {min}..={max}"),
    )
}

/// Stops accepting calls, lets in-flight unary calls (the Shutdown call among them) send their
/// replies for up to `grace`, then cancels whatever is left (streams), as go-plugin's hard stop
/// does. gRPC's own graceful shutdown would also wait for the host's connection to wind down.
fn stop_server(mut server: Server, scope: &handlers::Scope, grace: Duration) {
    let shutdown = server.shutdown();
    if !scope.wait_idle(grace) {
        log::warn!("calls still running {grace:?} after the shutdown request are cancelled");
    }
    server.cancel_all_calls();
    // A handler that ignores its cancellation keeps its call alive, and gRPC's shutdown with it;
    // the plugin exits anyway.
    let mut shutdown = shutdown;
    let stopped = grpc::block_until(
        Some(std::time::Instant::now() + handlers::JOIN_GRACE),
        |cx| std::future::Future::poll(std::pin::Pin::new(&mut shutdown), cx),
    );
    if stopped.is_none() {
        log::warn!(
            "the server did not stop within {:?} of cancelling its calls",
            handlers::JOIN_GRACE
        );
    }
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

/// The plugin side of `GRPCBroker`: the host's stream becomes the broker's.
struct BrokerService(Broker);

impl GrpcBroker for BrokerService {
    fn start_stream(
        &self,
        _call: &CallContext,
        requests: Requests<ConnInfo>,
        replies: ReplySink<ConnInfo>,
    ) -> std::result::Result<(), RpcStatus> {
        self.0.serve_stream(requests, replies)
    }
}

#[cfg(test)]
mod tests {
    use super::negotiate;

    #[test]
    fn negotiation_follows_go_plugin() {
        assert_eq!(negotiate(&[1, 2, 3], Some("2,3")), 3);
        assert_eq!(negotiate(&[1, 2, 3], Some("5,2")), 2);
        assert_eq!(
            negotiate(&[2, 3], Some("5,6")),
            2,
            "none in common: lowest own"
        );
        assert_eq!(negotiate(&[4], None), 4);
        assert_eq!(
            negotiate(&[1, 2], Some(" 2,1")),
            1,
            "entries are not trimmed"
        );
    }
}
