//! How to launch and talk to a plugin: a cheap-to-clone builder; every setter states its default.

use std::ffi::OsString;
use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::session::CLOSE_OVERHEAD;
use super::stderr::LogCallback;
use super::tasks::ExitCallback;
use crate::error::Result;
use crate::runtime::reactor::SharedWriter;
use crate::runtime::tls::{self, Identity};
use crate::wire::hclog::LogLine;

/// Longest stderr line delivered whole by default; longer ones arrive in pieces.
const DEFAULT_LOG_BUFFER: usize = 64 * 1024;

/// TLS material supplied by the caller instead of auto mTLS.
#[derive(Clone)]
pub struct TlsConfig {
    pub(crate) server_ca_pem: String,
    pub(crate) client_cert_pem: Option<String>,
    pub(crate) client_key_pem: Option<String>,
    pub(crate) server_name: String,
}

impl TlsConfig {
    /// Trust plugins whose certificate verifies against `server_ca_pem` (PEM, one or more certs).
    /// The name checked is `localhost` unless [`TlsConfig::server_name`] says otherwise.
    pub fn new(server_ca_pem: impl Into<String>) -> Self {
        TlsConfig {
            server_ca_pem: server_ca_pem.into(),
            client_cert_pem: None,
            client_key_pem: None,
            server_name: "localhost".to_owned(),
        }
    }

    /// Present this client certificate chain and key (both PEM). Default: no client certificate.
    pub fn client_identity(
        mut self,
        cert_pem: impl Into<String>,
        key_pem: impl Into<String>,
    ) -> Self {
        self.client_cert_pem = Some(cert_pem.into());
        self.client_key_pem = Some(key_pem.into());
        self
    }

    /// The name the plugin's certificate must carry. Default `localhost`.
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = name.into();
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        tls::check_cert_pem("TLS server CA", &self.server_ca_pem)?;
        if let (Some(cert), Some(key)) = (&self.client_cert_pem, &self.client_key_pem) {
            tls::check_cert_pem("TLS client certificate", cert)?;
            tls::check_key_pem("TLS client key", key)?;
        }
        Ok(())
    }

    pub(crate) fn identity(&self) -> Option<Identity> {
        match (&self.client_cert_pem, &self.client_key_pem) {
            (Some(cert_pem), Some(key_pem)) => Some(Identity {
                cert_pem: cert_pem.clone(),
                key_pem: key_pem.clone(),
            }),
            _ => None,
        }
    }
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("server_name", &self.server_name)
            .field("client_identity", &self.client_cert_pem.is_some())
            .finish_non_exhaustive()
    }
}

/// Configuration of a [`crate::RpcPluginClient`]. Build it with chained setters:
///
/// ```
/// use std::time::Duration;
/// use rpcplugin::ClientConfig;
///
/// let config = ClientConfig::new()
///     .magic_cookie("BASIC_PLUGIN", "hello")
///     .protocol_versions([1, 2])
///     .env("TF_LOG", "DEBUG")
///     .start_timeout(Duration::from_secs(10));
/// # let _ = config;
/// ```
#[derive(Clone)]
pub struct ClientConfig {
    pub(crate) cookie: Option<(String, String)>,
    pub(crate) versions: Vec<u32>,
    pub(crate) env: Vec<(OsString, OsString)>,
    pub(crate) skip_host_env: bool,
    pub(crate) auto_mtls: bool,
    pub(crate) tls: Option<TlsConfig>,
    pub(crate) start_timeout: Duration,
    pub(crate) exit_grace: Duration,
    pub(crate) shutdown_rpc_timeout: Duration,
    pub(crate) health_check: bool,
    pub(crate) min_port: u16,
    pub(crate) max_port: u16,
    pub(crate) working_dir: Option<PathBuf>,
    pub(crate) socket_dir_parent: Option<PathBuf>,
    pub(crate) log_target: Option<String>,
    pub(crate) log_buffer_size: usize,
    pub(crate) stderr_writer: Option<SharedWriter>,
    pub(crate) log_callback: Option<LogCallback>,
    pub(crate) stdio_stdout: Option<SharedWriter>,
    pub(crate) stdio_stderr: Option<SharedWriter>,
    pub(crate) broker_timeout: Duration,
    pub(crate) on_exit: Option<ExitCallback>,
    pub(crate) multiplex: bool,
    pub(crate) kill_with_host: bool,
    pub(crate) sha256: Option<String>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            cookie: None,
            versions: vec![1],
            env: Vec::new(),
            skip_host_env: false,
            auto_mtls: true,
            tls: None,
            start_timeout: Duration::from_secs(60),
            exit_grace: Duration::from_secs(2),
            shutdown_rpc_timeout: Duration::from_secs(2),
            health_check: true,
            min_port: 10000,
            max_port: 25000,
            working_dir: None,
            socket_dir_parent: None,
            log_target: None,
            log_buffer_size: DEFAULT_LOG_BUFFER,
            stderr_writer: None,
            log_callback: None,
            stdio_stdout: None,
            stdio_stderr: None,
            broker_timeout: Duration::from_secs(5),
            on_exit: None,
            multiplex: false,
            kill_with_host: true,
            sha256: None,
        }
    }
}

impl ClientConfig {
    /// The defaults: protocol version 1, auto mTLS on, 60 s start timeout, 2 s exit grace.
    pub fn new() -> Self {
        Self::default()
    }

    /// The magic cookie put in the plugin's environment (`key=value`): plugins refuse to run
    /// without it. Default: none (a plugin that checks a cookie will exit).
    pub fn magic_cookie(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.cookie = Some((key.into(), value.into()));
        self
    }

    /// The application protocol versions this host speaks, sent as `PLUGIN_PROTOCOL_VERSIONS`;
    /// the plugin picks one. Default `[1]`.
    pub fn protocol_versions(mut self, versions: impl IntoIterator<Item = u32>) -> Self {
        self.versions = versions.into_iter().collect();
        self
    }

    /// Adds a variable to the plugin's environment. Default: none beyond the host's own.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Start the plugin without the host's environment (only the protocol variables and those
    /// given with [`ClientConfig::env`]). Default `false`.
    pub fn skip_host_env(mut self, skip: bool) -> Self {
        self.skip_host_env = skip;
        self
    }

    /// Generate a certificate, hand it to the plugin and talk mTLS. Default `true`. Ignored when
    /// [`ClientConfig::tls`] is set.
    pub fn auto_mtls(mut self, on: bool) -> Self {
        self.auto_mtls = on;
        self
    }

    /// Use caller-supplied TLS material instead of auto mTLS. Default: none.
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// How long `start` waits for the handshake and for the connection. Default 60 s.
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// How long `close` waits for the plugin to exit after asking it to shut down, before it kills
    /// the plugin's process group. Default 2 s.
    pub fn exit_grace(mut self, grace: Duration) -> Self {
        self.exit_grace = grace;
        self
    }

    /// Deadline of the `GRPCController.Shutdown` call made by `close`. Default 2 s.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_rpc_timeout = timeout;
        self
    }

    /// The longest `close` (or `Drop`) can take with this configuration, whatever the plugin
    /// does: [`shutdown_timeout`](Self::shutdown_timeout) + [`exit_grace`](Self::exit_grace) +
    /// [`CLOSE_OVERHEAD`](crate::CLOSE_OVERHEAD). With the defaults, 12 s; a well-behaved plugin
    /// takes milliseconds. A `close` during another thread's `start` is shorter still: the start is
    /// cancelled and the plugin killed without the graceful steps.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let config = rpcplugin::ClientConfig::new()
    ///     .shutdown_timeout(Duration::from_secs(1))
    ///     .exit_grace(Duration::from_millis(500));
    /// assert_eq!(
    ///     config.max_close_duration(),
    ///     Duration::from_millis(1500) + rpcplugin::CLOSE_OVERHEAD
    /// );
    /// ```
    pub fn max_close_duration(&self) -> Duration {
        self.shutdown_rpc_timeout + self.exit_grace + CLOSE_OVERHEAD
    }

    /// Check `grpc.health.v1.Health/Check("plugin")` during `start`. Default `true`.
    pub fn health_check(mut self, on: bool) -> Self {
        self.health_check = on;
        self
    }

    /// The tcp port range the plugin may listen on (`PLUGIN_MIN_PORT`, `PLUGIN_MAX_PORT`).
    /// Default 10000..=25000.
    pub fn port_range(mut self, min: u16, max: u16) -> Self {
        self.min_port = min;
        self.max_port = max;
        self
    }

    /// The plugin's working directory. Default: the host's.
    pub fn working_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.working_dir = Some(dir.into());
        self
    }

    /// Where the private socket directory (`PLUGIN_UNIX_SOCKET_DIR`) is created. Default: the
    /// system temp dir. Keep it short: socket paths are limited to about 100 bytes.
    pub fn socket_dir_parent(mut self, dir: impl Into<PathBuf>) -> Self {
        self.socket_dir_parent = Some(dir.into());
        self
    }

    /// The `log` target for the plugin's stderr lines. Default `rpcplugin::plugin::<file name>`.
    pub fn log_target(mut self, target: impl Into<String>) -> Self {
        self.log_target = Some(target.into());
        self
    }

    /// The longest stderr line delivered in one piece; longer lines arrive in pieces of this size.
    /// Default 64 KiB (go-plugin's).
    pub fn log_buffer_size(mut self, bytes: usize) -> Self {
        self.log_buffer_size = bytes.max(1);
        self
    }

    /// Copy the plugin's raw stderr here, line by line, before any parsing. Default: none. It is
    /// written from the host's shared I/O thread, which serves every plugin: keep it quick.
    pub fn stderr_writer(mut self, writer: impl Write + Send + 'static) -> Self {
        self.stderr_writer = Some(Arc::new(Mutex::new(writer)));
        self
    }

    /// Call `callback` for every stderr line, parsed (hclog JSON aware). Default: none (lines
    /// still go to the `log` crate). It runs on the host's shared I/O thread, which serves every
    /// plugin: keep it quick (a `close()` from here returns at once and finishes on a thread of
    /// its own; with [`ClientConfig::grpc_broker_multiplex`], calls to the plugin from here
    /// cannot complete).
    pub fn on_log_line(mut self, callback: impl Fn(&LogLine) + Send + Sync + 'static) -> Self {
        self.log_callback = Some(Arc::new(callback));
        self
    }

    /// Where STDOUT data from the plugin's `GRPCStdio` stream goes. Default: discarded. Written
    /// from the host's shared I/O thread: keep it quick.
    pub fn stdio_stdout(mut self, writer: impl Write + Send + 'static) -> Self {
        self.stdio_stdout = Some(Arc::new(Mutex::new(writer)));
        self
    }

    /// Where STDERR data from the plugin's `GRPCStdio` stream goes. Default: discarded. Written
    /// from the host's shared I/O thread: keep it quick.
    pub fn stdio_stderr(mut self, writer: impl Write + Send + 'static) -> Self {
        self.stdio_stderr = Some(Arc::new(Mutex::new(writer)));
        self
    }

    /// How long a broker `dial` waits for the plugin's connection info (with multiplexed
    /// brokering: for the acknowledgement of its knock). Default 5 s.
    pub fn broker_timeout(mut self, timeout: Duration) -> Self {
        self.broker_timeout = timeout;
        self
    }

    /// Refuse to run the plugin unless its executable's SHA-256 is `hex` (go-plugin's
    /// `SecureConfig`). The file is hashed right before it is started; keep the binary where
    /// nobody else can replace it in between. Not allowed with `attach`. Default: no check.
    pub fn sha256_checksum(mut self, hex: impl Into<String>) -> Self {
        self.sha256 = Some(hex.into());
        self
    }

    /// Have the kernel SIGKILL the plugin if the host process dies without closing it (a crash,
    /// SIGKILL, `std::process::exit`), so no plugin outlives its host. Linux `PR_SET_PDEATHSIG`,
    /// armed from process-wide spawner threads that never exit. Default `true`.
    pub fn kill_with_host(mut self, on: bool) -> Self {
        self.kill_with_host = on;
        self
    }

    /// Use go-plugin's multiplexed brokering (`PLUGIN_MULTIPLEX_GRPC=true`, go-plugin v1.6.0+):
    /// one connection to the plugin carries the main gRPC connection and every brokered one as
    /// yamux streams, for plugins that can share only one socket with the host (containers).
    /// A plugin that does not offer it fails `start` with an [`crate::ErrorKind::Protocol`]
    /// error; [`crate::RpcPluginClient::attach`] refuses it. Default `false` (a socket per
    /// connection, which every go-plugin version speaks).
    ///
    /// The yamux session runs on the I/O thread, which then carries every byte to and from the
    /// plugin: a call to the plugin made from a log callback or writer (which run on that thread)
    /// cannot complete and fails at its deadline. Make such calls from another thread.
    ///
    /// ```
    /// let config = rpcplugin::ClientConfig::new()
    ///     .magic_cookie("KV_PLUGIN", "rpcplugin-kv")
    ///     .grpc_broker_multiplex(true);
    /// # let _ = config;
    /// ```
    pub fn grpc_broker_multiplex(mut self, on: bool) -> Self {
        self.multiplex = on;
        self
    }

    /// Run `callback` when the plugin process exits while the client is in use (a crash, or the
    /// plugin quitting on its own). It runs on a short-lived thread of its own, after the exit
    /// is recorded, so it may call `close()`.
    pub fn on_exit(
        mut self,
        callback: impl Fn(std::process::ExitStatus) + Send + Sync + 'static,
    ) -> Self {
        self.on_exit = Some(Arc::new(callback));
        self
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("cookie_key", &self.cookie.as_ref().map(|c| &c.0))
            .field("versions", &self.versions)
            .field("auto_mtls", &self.auto_mtls)
            .field("tls", &self.tls)
            .field("start_timeout", &self.start_timeout)
            .field("exit_grace", &self.exit_grace)
            .finish_non_exhaustive()
    }
}
