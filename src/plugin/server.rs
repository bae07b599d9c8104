//! The plugin's facade: [`PluginServer`], its settings, and `serve`, step by step: the cookie,
//! the version, TLS, the listeners (see `listen`), the handshake line, then serving until the
//! host asks the plugin to shut down.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, Sender};
use grpcio::{RpcStatus, Server};

use super::listen::{listen, listen_private, listen_public, Listener, Network};
use crate::error::{Error, ErrorKind, Result};
use crate::proto::plugin::ConnInfo;
use crate::proto::plugin_grpc::{create_grpc_broker, create_grpc_stdio, GrpcBroker};
use crate::rpc::{self, CallContext, ReplySink, Requests, Service};
use crate::runtime::executor::block_until;
use crate::runtime::mux::{CloseOnDrop, Mux, Origin, Role};
use crate::runtime::random_u32;
use crate::runtime::tls::{self, Identity, Security, ServerTls};
use crate::services::broker::{Broker, BrokerSetup};
use crate::services::health::HealthProbe;
use crate::services::stdio::{self, StdioWriter};
use crate::services::{controller, health, reflection};
use crate::sys;
use crate::wire::handshake;

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

/// Configuration of the plugin side. See the module docs for an example.
#[derive(Clone)]
pub struct PluginServer {
    cookie_key: String,
    cookie_value: String,
    versions: Vec<u32>,
    network: Network,
    graceful_timeout: Duration,
    tls: Option<ServerTls>,
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
        self.tls = Some(ServerTls {
            identity: Identity {
                cert_pem: cert_pem.into(),
                key_pem: key_pem.into(),
            },
            client_ca_pem,
        });
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
    pub fn serve(self, services: impl FnOnce(&PluginContext) -> Vec<Service>) -> Result<()> {
        self.require_cookie();
        sys::ignore_sigint();
        let version = negotiate(
            &self.versions,
            std::env::var("PLUGIN_PROTOCOL_VERSIONS").ok().as_deref(),
        );
        let tls = self.tls_settings()?;
        let socket_dir = socket_dir()?;
        let muxed = multiplexed(self.network, &socket_dir)?;
        let broker = Broker::new(BrokerSetup {
            dial_security: tls.dial_security(),
            serve_security: tls.server.clone(),
            socket_dir: socket_dir.clone(),
            timeout: PLUGIN_BROKER_TIMEOUT,
            mux: muxed.as_ref().map(|m| m.mux.0.clone()),
        });
        let stdio = stdio::plugin_side();
        let ctx = PluginContext {
            version,
            broker: broker.clone(),
            stdout: stdio.stdout.clone(),
            stderr: stdio.stderr.clone(),
        };
        let (shutdown_tx, shutdown_rx) = bounded::<()>(1);
        let _pool = rpc::acquire_pool();
        let services =
            self.with_protocol_services(services(&ctx), stdio.service, &broker, shutdown_tx);
        let (mut server, scope) = build_server(services)?;
        let mut listening = Listening::open(&mut server, self.network, &socket_dir, &tls, muxed)?;
        server.start();
        print_handshake_line(version, &listening, &tls)?;
        listening.wait_for_shutdown(&shutdown_rx);
        // The socket files go first: go-plugin's host kills a plugin that has not exited 2 s
        // after Shutdown, and a killed plugin must leave no file behind.
        listening.unlink_sockets();
        // End the long-lived streams first, so the graceful stop waits only for real calls.
        broker.close();
        drop(stdio.stop);
        stop_server(server, &scope, self.graceful_timeout);
        // Closing the session (go-away, then its sockets) and removing the announced socket.
        drop(listening);
        Ok(())
    }

    /// Without the magic cookie, explains on stderr that this is a plugin and exits with 1, as
    /// go-plugin plugins do.
    fn require_cookie(&self) {
        if std::env::var(&self.cookie_key).ok().as_deref() == Some(self.cookie_value.as_str()) {
            return;
        }
        eprintln!(
            "This binary is a plugin. These are not meant to be executed directly.\n\
             Please execute the program that consumes these plugins, which will\n\
             load any plugins automatically"
        );
        std::process::exit(1);
    }

    /// The plugin's TLS: its own (`tls`), or auto mTLS when the host sent `PLUGIN_CLIENT_CERT`,
    /// or none.
    fn tls_settings(&self) -> Result<PluginTls> {
        if let Some(own) = &self.tls {
            tls::check_cert_pem("plugin TLS certificate", &own.identity.cert_pem)?;
            tls::check_key_pem("plugin TLS key", &own.identity.key_pem)?;
            if let Some(ca) = &own.client_ca_pem {
                tls::check_cert_pem("plugin TLS client CA", ca)?;
            }
            return Ok(PluginTls {
                server: Some(own.clone()),
                announce_cert: false,
            });
        }
        let client_cert = std::env::var("PLUGIN_CLIENT_CERT").unwrap_or_default();
        if client_cert.is_empty() {
            return Ok(PluginTls {
                server: None,
                announce_cert: false,
            });
        }
        tls::check_cert_pem("PLUGIN_CLIENT_CERT", &client_cert)?;
        Ok(PluginTls {
            server: Some(ServerTls {
                identity: tls::generate_identity()?,
                client_ca_pem: Some(client_cert),
            }),
            announce_cert: true,
        })
    }

    /// The application's services and the protocol's: health, controller, stdio, broker, and
    /// reflection describing them all.
    fn with_protocol_services(
        &self,
        mut services: Vec<Service>,
        stdio: stdio::StdioService,
        broker: &Broker,
        shutdown: Sender<()>,
    ) -> Vec<Service> {
        services.extend([
            health::service(self.health.clone()),
            controller::service(shutdown),
            create_grpc_stdio(stdio),
            create_grpc_broker(BrokerService(broker.clone())),
        ]);
        if self.reflection {
            let described: Vec<_> = services.iter().filter_map(|s| s.descriptor()).collect();
            services.extend(reflection::services(&described));
        }
        services
    }
}

/// Where the plugin's sockets go: `PLUGIN_UNIX_SOCKET_DIR` (the host's choice; one too long for
/// a unix socket path is a `Config` error), else the temp dir, or `/tmp` when the temp dir is
/// too long (a long `TMPDIR` would otherwise fail the bind).
fn socket_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PLUGIN_UNIX_SOCKET_DIR").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        return match sys::socket_dir_fits(&dir) {
            Ok(()) => Ok(dir),
            Err(longest) => Err(Error::new(
                ErrorKind::Config,
                format!(
                    "PLUGIN_UNIX_SOCKET_DIR {:?} is {} bytes long; sockets in it would pass the \
                     {}-byte limit of a unix socket path: it may be at most {longest} bytes",
                    dir.display(),
                    dir.as_os_str().len(),
                    sys::MAX_SOCKET_PATH
                ),
            )),
        };
    }
    let temp = std::env::temp_dir();
    if sys::socket_dir_fits(&temp).is_ok() {
        return Ok(temp);
    }
    let short = sys::short_temp_dir();
    log::debug!(
        "the temp dir {:?} is too long for unix socket paths ({} bytes at most); using {:?}",
        temp.display(),
        sys::MAX_SOCKET_PATH,
        short.display()
    );
    Ok(short)
}

/// The broker timeout of the plugin side: go-plugin's 5 s.
const PLUGIN_BROKER_TIMEOUT: Duration = Duration::from_secs(5);

/// The plugin's TLS: how its servers are secured, and whether the handshake line carries its
/// certificate (auto mTLS: the host pins it).
struct PluginTls {
    server: Option<ServerTls>,
    announce_cert: bool,
}

impl PluginTls {
    /// How the plugin dials the host's brokered servers: trusting the CA it requires of the
    /// host, presenting its own certificate.
    fn dial_security(&self) -> Security {
        match &self.server {
            Some(ServerTls {
                identity,
                client_ca_pem: Some(ca),
            }) => Security::pinned(ca.clone(), Some(identity.clone())),
            _ => Security::Plaintext,
        }
    }
}

/// Multiplexed brokering, set up before the gRPC server: this side listens on the announced
/// socket itself and runs a yamux session on the host's one connection; the gRPC server listens
/// on a private socket that the session's streams are bridged to.
struct Multiplexed {
    mux: CloseOnDrop,
    public: Listener,
    private: PathBuf,
}

/// The session and its listeners when the host set `PLUGIN_MULTIPLEX_GRPC`.
fn multiplexed(network: Network, socket_dir: &Path) -> Result<Option<Multiplexed>> {
    let asked = std::env::var("PLUGIN_MULTIPLEX_GRPC")
        .ok()
        .and_then(|v| handshake::parse_go_bool(&v))
        .unwrap_or(false);
    if !asked {
        return Ok(None);
    }
    let (source, public) = listen_public(network, socket_dir)?;
    let private = socket_dir.join(format!("plugin{}-grpc", random_u32()));
    let mux = Mux::start(Origin::Accept(source), Role::Server, Some(private.clone()))?;
    Ok(Some(Multiplexed {
        mux: CloseOnDrop(mux),
        public,
        private,
    }))
}

/// The gRPC server with every service registered, and its calls' scope.
fn build_server(services: Vec<Service>) -> Result<(Server, Arc<rpc::Scope>)> {
    let (builder, scope) = rpc::server_builder(services);
    let server = builder.build().map_err(|e| {
        Error::new(
            ErrorKind::Transport,
            format!("building the gRPC server: {e}"),
        )
    })?;
    Ok((server, scope))
}

/// The listeners of a serving plugin: gRPC's own, and with multiplexing the session and the
/// announced socket it accepted the host from. Dropping it closes them in that order.
struct Listening {
    grpc: Listener,
    multiplexed: Option<(CloseOnDrop, Listener)>,
}

impl Listening {
    fn open(
        server: &mut Server,
        network: Network,
        socket_dir: &Path,
        tls: &PluginTls,
        muxed: Option<Multiplexed>,
    ) -> Result<Listening> {
        let creds = || tls::server_credentials(tls.server.as_ref());
        Ok(match muxed {
            Some(m) => Listening {
                grpc: listen_private(server, &m.private, creds())?,
                multiplexed: Some((m.mux, m.public)),
            },
            None => Listening {
                grpc: listen(server, network, socket_dir, creds)?,
                multiplexed: None,
            },
        })
    }

    /// Removes every socket file of this plugin; the connections made stay open.
    fn unlink_sockets(&mut self) {
        self.grpc.unlink();
        if let Some((_, public)) = &mut self.multiplexed {
            public.unlink();
        }
    }

    /// The address the handshake line announces.
    fn announced(&self) -> &crate::wire::Address {
        match &self.multiplexed {
            Some((_, public)) => &public.address,
            None => &self.grpc.address,
        }
    }

    /// Blocks until the host asks for shutdown or, with multiplexing, its one connection ends:
    /// then nobody can reach this plugin any more, so it stops as if asked to.
    fn wait_for_shutdown(&self, shutdown: &Receiver<()>) {
        match &self.multiplexed {
            Some((mux, _)) => {
                let gone = mux.0.gone();
                crossbeam_channel::select! {
                    recv(shutdown) -> _ => {},
                    recv(gone) -> _ => log::debug!(
                        "the host's multiplexed connection ended ({}); stopping",
                        mux.0.ended().unwrap_or_default()
                    ),
                }
            }
            None => {
                let _ = shutdown.recv();
            }
        }
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        // The session (go-away, then its sockets) and the announced socket go first.
        self.multiplexed.take();
    }
}

/// Prints the handshake line on stdout: what the host waits for.
fn print_handshake_line(version: u32, listening: &Listening, tls: &PluginTls) -> Result<()> {
    let cert_der = match (&tls.server, tls.announce_cert) {
        (Some(server), true) => Some(server.identity.cert_der()?),
        _ => None,
    };
    let line = handshake::render(
        version,
        listening.announced(),
        cert_der.as_deref(),
        listening.multiplexed.is_some(),
    );
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")
        .and_then(|_| stdout.flush())
        .map_err(|e| Error::io("writing the handshake line", e))
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

/// Stops accepting calls, lets in-flight unary calls (the Shutdown call among them) send their
/// replies for up to `grace`, then cancels whatever is left (streams), as go-plugin's hard stop
/// does. gRPC's own graceful shutdown would also wait for the host's connection to wind down.
fn stop_server(mut server: Server, scope: &rpc::Scope, grace: Duration) {
    let shutdown = server.shutdown();
    if !scope.wait_idle(grace) {
        log::warn!("calls still running {grace:?} after the shutdown request are cancelled");
    }
    server.cancel_all_calls();
    // A handler that ignores its cancellation keeps its call alive, and gRPC's shutdown with it;
    // the plugin exits anyway.
    let mut shutdown = shutdown;
    let stopped = block_until(Some(std::time::Instant::now() + rpc::JOIN_GRACE), |cx| {
        std::future::Future::poll(std::pin::Pin::new(&mut shutdown), cx)
    });
    if stopped.is_none() {
        log::warn!(
            "the server did not stop within {:?} of cancelling its calls",
            rpc::JOIN_GRACE
        );
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
