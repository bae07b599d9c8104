//! The host's facade: [`RpcPluginClient`], which launches (or attaches to) a plugin, hands out
//! the channel and the broker, and stops the plugin without leaving anything behind.

use std::ffi::OsString;
use std::process::ExitStatus;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, Sender};
use grpcio::{Channel, RpcStatusCode};

use super::attach::attach;
use super::config::ClientConfig;
use super::connect::cancelled;
use super::launch::{launch, Command};
use super::session::{self, Session, StartTimings, TlsMode};
use crate::error::{Error, ErrorKind, Result};
use crate::runtime::{mux::Mux, reactor};
use crate::services::broker::Broker;
use crate::services::{controller, health};
use crate::wire::handshake::Handshake;
use crate::wire::reattach::ReattachConfig;
use crate::wire::Address;

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
            Some(reattach) => attach(reattach, &self.config, &cancel),
            None => launch(
                Command {
                    program: &self.program,
                    args: &self.args,
                },
                &self.config,
                &cancel,
            ),
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
                self.teardown(session);
                Err(cancelled())
            }
            (_, Err(e)) => Err(e),
        };
        drop(done_tx);
        outcome
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

    /// The same as [`crate::CLOSE_OVERHEAD`], for code that names it here.
    pub const CLOSE_OVERHEAD: Duration = session::CLOSE_OVERHEAD;

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
        health::check_health(&channel, timeout).map_err(|e| process.explain(e))
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
        process.explain(err)
    }

    /// Asks the plugin to shut down (`GRPCController.Shutdown`), within the shutdown timeout.
    /// The plugin dropping the connection while answering counts as success. `close` does this
    /// itself; call it directly to stop the plugin but keep watching it.
    pub fn shutdown_plugin(&self) -> Result<()> {
        let channel = self.require_session(|s| s.channel.clone())?;
        controller::shutdown_rpc(&channel, self.config.shutdown_rpc_timeout)
    }

    /// Stops the plugin and releases everything: asks it to shut down (then removes the socket
    /// directory, while the plugin exits), waits up to the exit grace period, then kills its
    /// process group and reaps it.
    /// Idempotent; `Drop` does the same. Called while another thread is in `start`, it cancels
    /// that start (which then fails with [`ErrorKind::Cancelled`]) and waits until everything it
    /// began is gone.
    ///
    /// Called from an `on_log_line` callback or a stderr/stdio writer (they run on the shared
    /// I/O thread, which the teardown needs), it starts the same teardown on a thread of its own
    /// and returns at once; `exit_status` then stays unknown.
    pub fn close(&self) {
        let mut state = self.state();
        match std::mem::replace(&mut *state, State::Closed(None)) {
            State::Running(session) if reactor::on_io_thread() => {
                // Called from a log callback or a writer, which run on the I/O thread: the
                // teardown waits for that thread (exits and pipes are noticed there), so it runs
                // on a thread of its own, and this returns at once.
                drop(state);
                let (shutdown, grace) = (self.config.shutdown_rpc_timeout, self.config.exit_grace);
                let spawned = std::thread::Builder::new()
                    .name("rpcplugin-close".to_owned())
                    .spawn(move || {
                        session.teardown(shutdown, grace);
                    });
                if let Err(e) = spawned {
                    log::error!("closing the plugin from the I/O thread: {e}");
                }
            }
            State::Running(session) => {
                drop(state);
                let status = self.teardown(*session);
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
    }

    /// Stops everything the session holds; returns the plugin's exit status when known.
    fn teardown(&self, session: Session) -> Option<ExitStatus> {
        session.teardown(self.config.shutdown_rpc_timeout, self.config.exit_grace)
    }
}

impl Drop for RpcPluginClient {
    fn drop(&mut self) {
        self.close();
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
