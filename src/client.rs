//! The host side: launch a plugin, handshake, connect, and stop it without leaving anything behind.

use std::ffi::OsString;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select, Receiver, Sender};
use grpcio::{CallOption, Channel, Client as GrpcClient, RpcStatusCode};

use crate::broker::{Broker, BrokerSetup, ServeSecurity};
use crate::config::ClientConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::grpc::{self, Security};
use crate::handshake::{self, Handshake};
use crate::logs::StderrSinks;
use crate::mux::{self, Mux};
use crate::process::{FirstLine, PluginProcess, SocketDir, SpawnSpec};
use crate::proto::health::{
    health_check_response::ServingStatus, HealthCheckRequest, HealthCheckResponse,
};
use crate::proto::health_grpc::{HealthClient, METHOD_HEALTH_CHECK};
use crate::proto::plugin::Empty;
use crate::proto::plugin_grpc::GrpcBrokerClient;
use crate::proto::plugin_grpc::GrpcControllerClient;
use crate::reattach::ReattachConfig;
use crate::stdio::StdioPump;
use crate::tls;
use crate::transport::Address;

/// How the connection to the plugin is secured.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// No TLS.
    Plaintext,
    /// Auto mTLS: both sides generated certificates and pinned each other's.
    AutoMtls,
    /// TLS with the caller's [`crate::TlsConfig`].
    User,
    /// The plugin sent a certificate nobody asked for; the host verifies it but presents none.
    ServerOnly,
}

/// What `close` may spend beyond the configured shutdown deadline and exit grace, in the worst
/// case: up to 1 s each to stop the broker's servers and to let its handler threads return (a
/// handler that ignores its cancellation is left running), 2 s after SIGKILL for the process to
/// die and its pipes to close, 0.5 s for the last stdio data, and a margin. See
/// [`ClientConfig::max_close_duration`](crate::ClientConfig::max_close_duration).
pub const CLOSE_OVERHEAD: Duration = Duration::from_secs(5);

/// How long each stage of `start` took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StartTimings {
    /// Preparing certificates and the socket dir, and spawning the process.
    pub spawn: Duration,
    /// From spawn to a valid handshake line.
    pub handshake: Duration,
    /// From the handshake to a ready gRPC connection (including TLS).
    pub connect: Duration,
    /// The health check (zero when disabled).
    pub health: Duration,
}

impl StartTimings {
    /// The whole of `start`.
    pub fn total(&self) -> Duration {
        self.spawn + self.handshake + self.connect + self.health
    }
}

/// A client for one plugin process. See the crate docs for a walk-through.
///
/// Methods take `&self`: one thread may call the plugin while another closes it.
pub struct RpcPluginClient {
    program: OsString,
    args: Vec<OsString>,
    config: ClientConfig,
    state: Mutex<State>,
    /// Set for clients made by `attach`: the plugin was running already.
    reattach: Option<ReattachConfig>,
}

enum State {
    Idle,
    /// `start` runs on some thread. Dropping `cancel` asks it to give up; `done` disconnects when
    /// it has returned (and torn down whatever it had started).
    Starting {
        cancel: Sender<()>,
        done: Receiver<()>,
    },
    Running(Box<Session>),
    /// Closed; the plugin's exit status when it was known.
    Closed(Option<ExitStatus>),
}

struct Session {
    process: Arc<PluginProcess>,
    /// Whether `close` may stop the process (always for launched plugins).
    owned: bool,
    socket_dir: SocketDir,
    broker: Broker,
    stdio: Option<StdioPump>,
    handshake: Handshake,
    channel: Channel,
    tls_mode: TlsMode,
    timings: StartTimings,
    /// The yamux session every connection runs in, with multiplexed brokering.
    mux: Option<Mux>,
}

impl RpcPluginClient {
    /// A client for the plugin started by `command` (program, then arguments). Nothing runs
    /// until [`RpcPluginClient::start`].
    pub fn new<I, S>(command: I, config: ClientConfig) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let mut command = command.into_iter().map(Into::into);
        RpcPluginClient {
            program: command.next().unwrap_or_default(),
            args: command.collect(),
            config,
            state: Mutex::new(State::Idle),
            reattach: None,
        }
    }

    /// Connects to a plugin that is already running (started by another host, or by Terraform's
    /// debug mode) instead of launching one. `close` stops the process only when
    /// `reattach.owned`; otherwise it just disconnects. TLS comes from `config.tls`; auto mTLS
    /// cannot apply (the plugin's certificate pairing was made with its original host).
    ///
    /// ```no_run
    /// # use rpcplugin::{ClientConfig, ReattachConfig, RpcPluginClient};
    /// let json = std::env::var("TF_REATTACH_PROVIDERS").unwrap();
    /// let (_, reattach) = ReattachConfig::from_tf_reattach_providers(&json)?.remove(0);
    /// let client = RpcPluginClient::attach(reattach, ClientConfig::new())?;
    /// let channel = client.grpc_channel()?;
    /// # let _ = channel;
    /// # Ok::<(), rpcplugin::Error>(())
    /// ```
    pub fn attach(reattach: ReattachConfig, config: ClientConfig) -> Result<RpcPluginClient> {
        let client = RpcPluginClient {
            program: OsString::new(),
            args: Vec::new(),
            config,
            state: Mutex::new(State::Idle),
            reattach: Some(reattach),
        };
        client.start()?;
        Ok(client)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Launches the plugin and blocks until it is ready: handshake, connection (TLS included) and
    /// health check, all within the start timeout. Calling it again once started does nothing; a
    /// closed client cannot start again. On failure nothing is left running.
    pub fn start(&self) -> Result<()> {
        let (cancel_tx, cancel) = bounded::<()>(0);
        let (done_tx, done) = bounded::<()>(0);
        {
            let mut state = self.state();
            match &*state {
                State::Running(_) => return Ok(()),
                State::Closed(_) => {
                    return Err(Error::new(
                        ErrorKind::Config,
                        "this client was closed; a closed client cannot be started again",
                    ))
                }
                State::Starting { .. } => {
                    return Err(Error::new(
                        ErrorKind::Config,
                        "start() is already running on another thread",
                    ))
                }
                State::Idle => {}
            }
            *state = State::Starting {
                cancel: cancel_tx,
                done,
            };
        }
        // The lock is not held while launching, so close() can cancel a slow start.
        let result = match &self.reattach {
            Some(reattach) => self.connect_attached(reattach, &cancel),
            None => self.launch(&cancel),
        };
        let mut state = self.state();
        let outcome = match (&*state, result) {
            (State::Starting { .. }, Ok(session)) => {
                *state = State::Running(Box::new(session));
                Ok(())
            }
            (State::Starting { .. }, Err(e)) => {
                *state = State::Idle;
                Err(e)
            }
            // close() ran while the launch was finishing: undo it before close() returns.
            (_, Ok(session)) => {
                drop(state);
                Self::teardown(&self.config, session);
                Err(cancelled())
            }
            (_, Err(e)) => Err(e),
        };
        drop(done_tx);
        outcome
    }

    fn launch(&self, cancel: &Receiver<()>) -> Result<Session> {
        let config = &self.config;
        if self.program.is_empty() {
            return Err(Error::new(ErrorKind::Config, "the plugin command is empty"));
        }
        if config.versions.is_empty() {
            return Err(Error::new(
                ErrorKind::Config,
                "no protocol versions configured; offer at least one",
            ));
        }
        if let Some(user_tls) = &config.tls {
            user_tls.validate()?;
        }
        let started = Instant::now();
        let deadline = started + config.start_timeout;
        if let Some(expected) = &config.sha256 {
            crate::process::verify_checksum(&self.program, expected)?;
        }

        let socket_dir = SocketDir::create(config.socket_dir_parent.as_deref())?;
        let identity = if config.tls.is_none() && config.auto_mtls {
            Some(tls::generate_identity()?)
        } else {
            None
        };
        let process = self.spawn(&socket_dir, identity.as_ref(), deadline)?;
        let spawned = Instant::now();

        let mut announced = None;
        let mut mux = None;
        let result = (|| {
            let handshake =
                wait_handshake(&process, deadline, &config.versions, cancel, &mut announced)?;
            let handshaken = Instant::now();
            let (security, tls_mode, serve_security) = self.security(&handshake, identity)?;
            // With multiplexing, gRPC connects to a private socket whose connections become
            // yamux streams in the one connection to the plugin.
            let (target, grpc_target) = match config.multiplex {
                true => {
                    // Kept before anything else can fail, so the error path closes it.
                    let session = mux.insert(multiplex(&handshake, deadline)?);
                    let main = session.listen(false)?;
                    (main.address(), main.target())
                }
                false => (handshake.address.clone(), handshake.address.grpc_target()),
            };
            let channel = grpc::channel_to(&grpc_target, &security);
            let health = match config.health_check {
                true => Some(PendingHealth::send(&channel, deadline)?),
                false => None,
            };
            grpc::wait_connected(&channel, &target, &security, deadline, || {
                if is_cancelled(cancel) {
                    return Some(cancelled());
                }
                if let Some(e) = mux.as_ref().and_then(Mux::ended_error) {
                    return Some(with_process_context(&process, e));
                }
                process
                    .has_exited()
                    .then(|| exited_error(&process, "plugin exited while the host was connecting"))
            })
            .map_err(|e| match &mux {
                // Name the plugin's socket, not the private one gRPC dialed.
                Some(session) => {
                    let message = e.message().replace(
                        &target.to_string(),
                        &format!("{} (multiplexed)", handshake.address),
                    );
                    let why = session.diagnose().map(|why| format!(": {why}"));
                    Error::new(e.kind(), message + &why.unwrap_or_default())
                }
                None => e,
            })?;
            // go-plugin plugins block on stdio and broker traffic until the host reads them.
            let streams =
                self.open_streams(&channel, security, serve_security, &socket_dir, mux.clone());
            let (broker, stdio) = streams.map_err(|e| with_process_context(&process, e))?;
            let connected = Instant::now();
            if let Some(health) = health {
                let health = health.wait(|| {
                    if is_cancelled(cancel) {
                        return Some(cancelled());
                    }
                    process
                        .has_exited()
                        .then(|| exited_error(&process, "plugin exited during the health check"))
                });
                if let Err(e) = health {
                    broker.close();
                    if let Some(stdio) = stdio {
                        stdio.finish(Duration::ZERO);
                    }
                    return Err(with_process_context(&process, e));
                }
            }
            let timings = StartTimings {
                spawn: spawned - started,
                handshake: handshaken - spawned,
                connect: connected - handshaken,
                health: connected.elapsed(),
            };
            Ok((handshake, channel, tls_mode, timings, broker, stdio))
        })();
        match result {
            Ok((handshake, channel, tls_mode, timings, broker, stdio)) => Ok(Session {
                process,
                owned: true,
                socket_dir,
                broker,
                stdio,
                handshake,
                channel,
                tls_mode,
                timings,
                mux,
            }),
            Err(e) => {
                process.stop();
                if let Some(mux) = mux {
                    mux.close(MUX_CLOSE);
                }
                // A socket outside our dir (pyvider puts it in the temp dir) would outlive us.
                if let Some(path) = announced {
                    remove_socket_file(&path);
                }
                Err(e)
            }
        }
    }

    fn connect_attached(
        &self,
        reattach: &ReattachConfig,
        cancel: &Receiver<()>,
    ) -> Result<Session> {
        let config = &self.config;
        if config.sha256.is_some() {
            return Err(Error::new(
                ErrorKind::Config,
                "sha256_checksum cannot be used with attach: there is no executable to check",
            ));
        }
        if config.multiplex {
            return Err(Error::new(
                ErrorKind::Config,
                "grpc_broker_multiplex cannot be used with attach (as in go-plugin): the plugin \
                 was started by someone else, who decided how it listens",
            ));
        }
        if reattach.protocol != "grpc" {
            return Err(Error::new(
                ErrorKind::Protocol,
                format!(
                    "cannot reattach to a {:?} plugin: this host supports only \"grpc\"",
                    reattach.protocol
                ),
            ));
        }
        if let Some(user_tls) = &config.tls {
            user_tls.validate()?;
        }
        let started = Instant::now();
        let deadline = started + config.start_timeout;
        let process = PluginProcess::attach(reattach.pid, reattach.owned, &reattach.address)?;
        let socket_dir = SocketDir::create(config.socket_dir_parent.as_deref())?;
        let handshake = Handshake {
            app_version: reattach.protocol_version,
            address: reattach.address.clone(),
            protocol: reattach.protocol.clone(),
            server_cert_der: None,
            multiplex: false,
        };
        let result = (|| {
            let (security, tls_mode, serve_security) = self.security(&handshake, None)?;
            let channel = grpc::channel(&handshake.address, &security);
            grpc::wait_connected(&channel, &handshake.address, &security, deadline, || {
                if is_cancelled(cancel) {
                    return Some(cancelled());
                }
                process.has_exited().then(|| {
                    Error::new(
                        ErrorKind::Reattach,
                        format!("reattachment process {} exited", reattach.pid),
                    )
                })
            })
            .map_err(|e| {
                Error::new(
                    ErrorKind::Reattach,
                    format!(
                        "cannot reattach to the plugin at {}: {}",
                        handshake.address,
                        e.message()
                    ),
                )
            })?;
            let connected = Instant::now();
            let (broker, stdio) =
                self.open_streams(&channel, security, serve_security, &socket_dir, None)?;
            if config.health_check {
                let health = PendingHealth::send(&channel, deadline)?
                    .wait(|| is_cancelled(cancel).then(cancelled));
                if let Err(e) = health {
                    broker.close();
                    if let Some(stdio) = stdio {
                        stdio.finish(Duration::ZERO);
                    }
                    return Err(e);
                }
            }
            let timings = StartTimings {
                connect: connected - started,
                health: connected.elapsed(),
                ..StartTimings::default()
            };
            Ok((channel, tls_mode, timings, broker, stdio))
        })();
        match result {
            Ok((channel, tls_mode, timings, broker, stdio)) => Ok(Session {
                process,
                // Pid 0: no process to stop, so nothing to shut down either.
                owned: reattach.owned && reattach.pid != 0,
                socket_dir,
                broker,
                stdio,
                handshake,
                channel,
                tls_mode,
                timings,
                mux: None,
            }),
            Err(e) => {
                // Never kill a process because attaching to it failed.
                process.stop_watching();
                Err(e)
            }
        }
    }

    fn spawn(
        &self,
        socket_dir: &SocketDir,
        identity: Option<&tls::Identity>,
        deadline: Instant,
    ) -> Result<Arc<PluginProcess>> {
        let config = &self.config;
        let mut env: Vec<(OsString, OsString)> = config.env.clone();
        if let Some((key, value)) = &config.cookie {
            env.push((key.into(), value.into()));
        }
        let versions: Vec<String> = config.versions.iter().map(u32::to_string).collect();
        env.push(("PLUGIN_MIN_PORT".into(), config.min_port.to_string().into()));
        env.push(("PLUGIN_MAX_PORT".into(), config.max_port.to_string().into()));
        env.push(("PLUGIN_PROTOCOL_VERSIONS".into(), versions.join(",").into()));
        if let Some(id) = identity {
            env.push(("PLUGIN_CLIENT_CERT".into(), id.cert_pem.clone().into()));
        }
        env.push(("PLUGIN_UNIX_SOCKET_DIR".into(), socket_dir.path().into()));
        if config.multiplex {
            env.push(("PLUGIN_MULTIPLEX_GRPC".into(), "true".into()));
        }

        let target = config.log_target.clone().unwrap_or_else(|| {
            let name = std::path::Path::new(&self.program)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            format!("rpcplugin::plugin::{name}")
        });
        PluginProcess::spawn(SpawnSpec {
            program: &self.program,
            args: &self.args,
            env,
            skip_host_env: config.skip_host_env,
            working_dir: config.working_dir.as_deref(),
            stderr: StderrSinks {
                target,
                buffer_size: config.log_buffer_size,
                writer: config.stderr_writer.clone(),
                callback: config.log_callback.clone(),
                tail: Arc::default(),
            },
            on_exit: config.on_exit.clone(),
            kill_with_host: config.kill_with_host,
            deadline,
        })
    }

    fn open_streams(
        &self,
        channel: &Channel,
        security: Security,
        serve_security: ServeSecurity,
        socket_dir: &SocketDir,
        mux: Option<Mux>,
    ) -> Result<(Broker, Option<StdioPump>)> {
        let broker = Broker::new(BrokerSetup {
            dial_security: security,
            serve_security,
            socket_dir: socket_dir.path().to_owned(),
            timeout: self.config.broker_timeout,
            mux,
        });
        // The broker stream lives as long as the plugin and may stay quiet: no call timeout.
        let call = GrpcBrokerClient::new(channel.clone())
            .with_call_timeout(None)
            .start_stream()?;
        broker.attach_host(call)?;
        let stdio = StdioPump::start(
            channel,
            self.config.stdio_stdout.clone(),
            self.config.stdio_stderr.clone(),
        );
        match stdio {
            Ok(stdio) => Ok((broker, Some(stdio))),
            Err(e) => {
                broker.close();
                Err(e)
            }
        }
    }

    fn security(
        &self,
        handshake: &Handshake,
        identity: Option<tls::Identity>,
    ) -> Result<(Security, TlsMode, ServeSecurity)> {
        let plugin_cert = handshake
            .server_cert_der
            .as_deref()
            .map(tls::der_to_pem)
            .transpose()?;
        let pinned = |root_pem: String, identity| Security::Tls {
            root_pem,
            identity,
            server_name: "localhost".to_owned(),
        };
        Ok(match (&self.config.tls, identity, plugin_cert) {
            // A certificate from the handshake replaces the caller's roots, as in go-plugin.
            (Some(user), _, Some(cert)) => (
                pinned(cert.clone(), user.identity()),
                TlsMode::User,
                user.identity().map(|id| (id, Some(cert))),
            ),
            (Some(user), _, None) => (
                Security::Tls {
                    root_pem: user.server_ca_pem.clone(),
                    identity: user.identity(),
                    server_name: user.server_name.clone(),
                },
                TlsMode::User,
                user.identity()
                    .map(|id| (id, Some(user.server_ca_pem.clone()))),
            ),
            // Brokered servers of the host present its certificate and require the plugin's.
            (None, Some(id), Some(cert)) => (
                pinned(cert.clone(), Some(id.clone())),
                TlsMode::AutoMtls,
                Some((id, Some(cert))),
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
                (pinned(cert, None), TlsMode::ServerOnly, None)
            }
            (None, None, None) => (Security::Plaintext, TlsMode::Plaintext, None),
        })
    }

    fn with_session<T>(&self, f: impl FnOnce(&Session) -> T) -> Option<T> {
        match &*self.state() {
            State::Running(session) => Some(f(session)),
            _ => None,
        }
    }

    fn require_session<T>(&self, f: impl FnOnce(&Session) -> T) -> Result<T> {
        self.with_session(f).ok_or_else(|| {
            Error::new(
                ErrorKind::Config,
                "the plugin is not running: call start() first (or the client was closed)",
            )
        })
    }

    /// The gRPC channel to the plugin, for the caller's own service stubs.
    pub fn grpc_channel(&self) -> Result<Channel> {
        self.require_session(|s| s.channel.clone())
    }

    /// The application protocol version the plugin chose, once started.
    pub fn negotiated_version(&self) -> Option<u32> {
        self.with_session(|s| s.handshake.app_version)
    }

    /// The plugin's handshake, once started: negotiated version, address, protocol, the
    /// certificate it announced, and whether it offers multiplexed brokering. For an attached
    /// plugin, what the reattach config said.
    pub fn handshake(&self) -> Option<Handshake> {
        self.with_session(|s| s.handshake.clone())
    }

    /// Where the plugin listens, once started.
    pub fn address(&self) -> Option<Address> {
        self.with_session(|s| s.handshake.address.clone())
    }

    /// How the connection is secured, once started.
    pub fn tls_mode(&self) -> Option<TlsMode> {
        self.with_session(|s| s.tls_mode)
    }

    /// What `close` may spend beyond the configured shutdown deadline and exit grace, in the worst
    /// case: up to 1 s each to stop the broker's servers and to let its handler threads return (a
    /// handler that ignores its cancellation is left running), 2 s after SIGKILL for the process to
    /// die and its pipes to close, 0.5 s for the last stdio data, and a margin. See
    /// [`ClientConfig::max_close_duration`](crate::ClientConfig::max_close_duration).
    pub const CLOSE_OVERHEAD: Duration = Duration::from_secs(5);

    /// How long each stage of `start` took.
    pub fn timings(&self) -> Option<StartTimings> {
        self.with_session(|s| s.timings)
    }

    /// What another client needs to attach to this plugin later (see
    /// [`RpcPluginClient::attach`]), while started. `owned` is true: the attaching client would
    /// be the one to stop the plugin; set it to false to only borrow the connection.
    pub fn reattach_config(&self) -> Option<ReattachConfig> {
        self.with_session(|s| ReattachConfig {
            protocol: s.handshake.protocol.clone(),
            protocol_version: s.handshake.app_version,
            address: s.handshake.address.clone(),
            pid: s.process.pid(),
            owned: s.owned,
        })
    }

    /// The plugin's process id, while started.
    pub fn pid(&self) -> Option<u32> {
        self.with_session(|s| s.process.pid())
    }

    /// True once the plugin process has exited (noticed as it happens, not by polling).
    pub fn has_exited(&self) -> bool {
        self.with_session(|s| s.process.has_exited())
            .unwrap_or(false)
    }

    /// The plugin's exit status, once it has exited (only known for plugins this client
    /// launched); after `close`, how it ended.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        if let State::Closed(status) = &*self.state() {
            return *status;
        }
        self.with_session(|s| s.process.exit_status()).flatten()
    }

    /// Waits up to `timeout` for the plugin process to exit; true if it has (false if it is
    /// still running, or was never started).
    pub fn wait_for_exit(&self, timeout: Duration) -> bool {
        match self.with_session(|s| s.process.clone()) {
            Some(process) => process.wait_exit(timeout),
            None => false,
        }
    }

    /// Asks the plugin's health service whether `plugin` is `SERVING`, waiting at most `timeout`.
    pub fn ping(&self, timeout: Duration) -> Result<()> {
        let (channel, process) =
            self.require_session(|s| (s.channel.clone(), s.process.clone()))?;
        check_health(&channel, timeout).map_err(|e| with_process_context(&process, e))
    }

    /// The broker of this connection, for extra connections to and from the plugin.
    pub fn broker(&self) -> Result<Broker> {
        self.require_session(|s| s.broker.clone())
    }

    /// Explains a failed call on the plugin's channel: when the call failed because the plugin
    /// process died, the result is a [`ErrorKind::ProcessExited`] error with the exit status and
    /// the last stderr lines; otherwise the error comes back with the stderr tail attached.
    /// Takes this crate's errors (from generated stubs) and grpcio's.
    pub fn call_error(&self, err: impl Into<Error>) -> Error {
        let err = err.into();
        let Some((process, mux)) = self.with_session(|s| (s.process.clone(), s.mux.clone())) else {
            return err;
        };
        let unavailable = matches!(
            err.rpc_code(),
            Some(RpcStatusCode::UNAVAILABLE | RpcStatusCode::CANCELLED)
        );
        // The multiplexed session ended because the plugin broke yamux: that is the cause, even
        // though the plugin then exits too (it stops when the host's connection ends).
        if let Some(why) = mux
            .as_ref()
            .and_then(Mux::peer_fault)
            .filter(|_| unavailable)
        {
            let message = format!(
                "the multiplexed connection to the plugin failed: {why} ({})",
                err.message()
            );
            return Error::new(ErrorKind::Transport, message)
                .with_exit_status(process.exit_status())
                .with_stderr_tail(process.stderr_tail())
                .with_source(err);
        }
        // The connection drops a moment before the exit is reported; give the watcher that moment.
        if unavailable && !process.has_exited() {
            process.wait_exit(Duration::from_millis(500));
        }
        with_process_context(&process, err)
    }

    /// Asks the plugin to shut down (`GRPCController.Shutdown`), within the shutdown timeout.
    /// The plugin dropping the connection while answering counts as success. `close` does this
    /// itself; call it directly to stop the plugin but keep watching it.
    pub fn shutdown_plugin(&self) -> Result<()> {
        let channel = self.require_session(|s| s.channel.clone())?;
        shutdown_rpc(&channel, self.config.shutdown_rpc_timeout)
    }

    /// Stops the plugin and releases everything: asks it to shut down, waits up to the exit grace
    /// period, then kills its process group, reaps it and removes the socket directory.
    /// Idempotent; `Drop` does the same. Called while another thread is in `start`, it cancels
    /// that start (which then fails with [`ErrorKind::Cancelled`]) and waits until everything it
    /// began is gone.
    ///
    /// Called from an `on_log_line` callback or a stderr/stdio writer (they run on the shared
    /// I/O thread, which the teardown needs), it starts the same teardown on a thread of its own
    /// and returns at once; `exit_status` then stays unknown.
    pub fn close(&self) -> Result<()> {
        let mut state = self.state();
        match std::mem::replace(&mut *state, State::Closed(None)) {
            State::Running(session) if crate::reactor::on_io_thread() => {
                // Called from a log callback or a writer, which run on the I/O thread: the
                // teardown waits for that thread (exits and pipes are noticed there), so it runs
                // on a thread of its own, and this returns at once.
                drop(state);
                let config = self.config.clone();
                let spawned = std::thread::Builder::new()
                    .name("rpcplugin-close".to_owned())
                    .spawn(move || {
                        Self::teardown(&config, *session);
                    });
                if let Err(e) = spawned {
                    log::error!("closing the plugin from the I/O thread: {e}");
                }
            }
            State::Running(session) => {
                drop(state);
                let status = Self::teardown(&self.config, *session);
                *self.state() = State::Closed(status);
            }
            State::Starting { cancel, done } => {
                drop(cancel);
                drop(state);
                // start() sees the cancellation, stops what it began, then returns.
                let _ = done.recv();
            }
            State::Idle | State::Closed(_) => {}
        }
        Ok(())
    }

    /// Stops everything the session holds; returns the plugin's exit status when known.
    fn teardown(config: &ClientConfig, session: Session) -> Option<ExitStatus> {
        let Session {
            process,
            owned,
            socket_dir,
            channel,
            broker,
            stdio,
            handshake,
            mux,
            ..
        } = session;
        process.expect_exit();
        broker.close();
        if !owned {
            drop(channel);
            process.stop_watching();
            if let Some(stdio) = stdio {
                stdio.finish(Duration::ZERO);
            }
            return None;
        }
        let began = Instant::now();
        let mut asked = began;
        if !process.has_exited() {
            if let Err(e) = shutdown_rpc(&channel, config.shutdown_rpc_timeout) {
                log::debug!("graceful shutdown request failed: {e}");
            }
            drop(channel);
            asked = Instant::now();
            if !process.wait_exit(config.exit_grace) {
                log::warn!(
                    "plugin {} did not exit within {:?} of the shutdown request; killing it",
                    process.pid(),
                    config.exit_grace
                );
            }
        }
        let exited = Instant::now();
        process.stop();
        let reaped = Instant::now();
        if let Some(stdio) = stdio {
            // The connection is gone with the process; the stream has ended or ends now.
            stdio.finish(Duration::from_millis(500));
        }
        log::debug!(
            "plugin {} closed in {:?}: shutdown request {:?}, exit {:?}, kill and reap {:?}, \
             stdio stream {:?}",
            process.pid(),
            began.elapsed(),
            asked - began,
            exited - asked,
            reaped - exited,
            reaped.elapsed()
        );
        if let Some(mux) = mux {
            mux.close(MUX_CLOSE);
        }
        // Plugins that ignore PLUGIN_UNIX_SOCKET_DIR (pyvider) put their socket elsewhere, and a
        // killed plugin cannot remove it.
        if let Address::Unix(path) = &handshake.address {
            remove_socket_file(path);
        }
        drop(socket_dir);
        process.exit_status()
    }
}

impl Drop for RpcPluginClient {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

impl std::fmt::Debug for RpcPluginClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcPluginClient")
            .field("program", &self.program)
            .field("pid", &self.pid())
            .field("address", &self.address())
            .finish_non_exhaustive()
    }
}

/// How long `close()` waits for a multiplexed session's sockets to close.
const MUX_CLOSE: Duration = Duration::from_secs(1);

/// Multiplexed brokering: checks that the plugin offered it and opens the one connection.
fn multiplex(handshake: &Handshake, deadline: Instant) -> Result<Mux> {
    if !handshake.multiplex {
        return Err(Error::new(
            ErrorKind::Protocol,
            "the host asked for multiplexed brokering (PLUGIN_MULTIPLEX_GRPC), and the plugin \
             does not support it: its handshake line has no seventh field \"true\" (go-plugin \
             plugins need go-plugin v1.6.0 or later)",
        ));
    }
    let refused = |e: std::io::Error| {
        Error::new(
            ErrorKind::Transport,
            format!(
                "cannot open the multiplexed connection to the plugin at {}: {e}",
                handshake.address
            ),
        )
    };
    let origin = match &handshake.address {
        Address::Unix(path) => std::os::unix::net::UnixStream::connect(path)
            .map(mux::Conn::Unix)
            .map_err(refused)?,
        Address::Tcp(addr) => {
            let left = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
            std::net::TcpStream::connect_timeout(addr, left)
                .map(mux::Conn::Tcp)
                .map_err(refused)?
        }
    };
    Mux::start(mux::Origin::Connected(origin), mux::Role::Client, None)
}

/// Waits for the first stdout line, the process exit or the deadline, whichever comes first.
fn wait_handshake(
    process: &PluginProcess,
    deadline: Instant,
    versions: &[u32],
    cancel: &Receiver<()>,
    announced: &mut Option<std::path::PathBuf>,
) -> Result<Handshake> {
    let first = process.first_line();
    let event = select! {
        recv(first) -> ev => ev.ok(),
        recv(cancel) -> _ => return Err(cancelled()),
        recv(process.exit_signal()) -> _ => {
            // The line may have been written just before the exit.
            first.recv_timeout(Duration::from_millis(200)).ok()
        }
        default(deadline.saturating_duration_since(Instant::now())) => {
            return Err(Error::new(
                ErrorKind::Timeout,
                "timed out waiting for the plugin's handshake line on stdout",
            )
            .with_stderr_tail(process.stderr_tail()))
        }
    };
    match event {
        Some(FirstLine::Line(line)) => {
            *announced = handshake::announced_unix_socket(&line);
            handshake::parse(&line, versions).map_err(|e| with_process_context(process, e))
        }
        Some(FirstLine::TooLong(start)) => Err(with_process_context(
            process,
            Error::new(
                ErrorKind::Handshake,
                format!(
                    "unrecognized remote plugin message: the first stdout line is longer than \
                     64 KiB, starting {start:?}"
                ),
            ),
        )),
        Some(FirstLine::Eof) | None => {
            // stdout closed: the process is exiting or has exited. Give it a moment to report.
            let _ = process.wait_exit(Duration::from_secs(1));
            Err(exited_error(
                process,
                "plugin exited before completing the handshake (no handshake line on stdout)",
            ))
        }
    }
}

/// The error of a `start` that `close` cancelled.
fn cancelled() -> Error {
    Error::new(
        ErrorKind::Cancelled,
        "start was cancelled: the client was closed while the plugin was starting",
    )
}

fn is_cancelled(cancel: &Receiver<()>) -> bool {
    matches!(
        cancel.try_recv(),
        Err(crossbeam_channel::TryRecvError::Disconnected)
    )
}

/// Removes `path` if it is a unix socket (and nothing else).
fn remove_socket_file(path: &std::path::Path) {
    use std::os::unix::fs::FileTypeExt;
    let is_socket = std::fs::symlink_metadata(path)
        .map(|m| m.file_type().is_socket())
        .unwrap_or(false);
    if is_socket {
        if let Err(e) = std::fs::remove_file(path) {
            log::warn!("removing the plugin's socket {}: {e}", path.display());
        }
    }
}

fn exited_error(process: &PluginProcess, message: &str) -> Error {
    Error::new(ErrorKind::ProcessExited, message)
        .with_exit_status(process.exit_status())
        .with_stderr_tail(process.stderr_tail())
}

/// Adds the exit status (if the plugin has exited) and the stderr tail to an error.
fn with_process_context(process: &PluginProcess, err: Error) -> Error {
    let status = process.exit_status();
    let caused_by_exit = matches!(
        err.kind(),
        ErrorKind::Rpc | ErrorKind::Health | ErrorKind::Transport
    );
    if process.has_exited() && caused_by_exit {
        return exited_error(process, &format!("plugin exited: {}", err.message()));
    }
    err.with_exit_status(status)
        .with_stderr_tail(process.stderr_tail())
}

/// The health check of `start`: bounded by the start deadline, and given up at once when
/// `abort` says so (close() from another thread, or the plugin died), checked every 20 ms.
/// A health check sent while the connection is still being made: the request goes out the moment
/// the connection is ready (wait-for-ready), overlapping the check with connecting and opening
/// the streams instead of adding its round trip after them.
struct PendingHealth {
    reply: grpcio::ClientUnaryReceiver<HealthCheckResponse>,
    timeout: Duration,
}

impl PendingHealth {
    fn send(channel: &Channel, deadline: Instant) -> Result<PendingHealth> {
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
    fn wait(mut self, mut abort: impl FnMut() -> Option<Error>) -> Result<()> {
        loop {
            let slice = Instant::now() + Duration::from_millis(20);
            let polled = grpc::block_until(Some(slice), |cx| {
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

fn check_health(channel: &Channel, timeout: Duration) -> Result<()> {
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

fn shutdown_rpc(channel: &Channel, timeout: Duration) -> Result<()> {
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
