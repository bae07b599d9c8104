//! Launching a plugin: the protocol environment, the spawn, the handshake line, and (with
//! multiplexed brokering) the one connection, before the shared connect step.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver};

use super::config::ClientConfig;
use super::connect::{cancelled, connect, decide_tls, Connection, Origin, Started, Target};
use super::process::PluginProcess;
use super::program::verify_checksum;
use super::session::{remove_socket_file, Session, StartTimings, MUX_CLOSE};
use super::socket_dir::SocketDir;
use super::spawner::SpawnSpec;
use super::stderr::StderrSinks;
use super::tasks::FirstLine;
use super::tasks::MAX_HANDSHAKE_LINE;
use crate::error::{Error, ErrorKind, Result};
use crate::runtime::mux::{self, Mux};
use crate::runtime::tls::{self, Identity};
use crate::wire::handshake::{self, Handshake};
use crate::wire::Address;

/// The program and arguments that start the plugin.
pub(super) struct Command<'a> {
    pub program: &'a OsString,
    pub args: &'a [OsString],
}

/// Launches the plugin and connects to it, within the start timeout. On failure nothing is
/// left running.
pub(super) fn launch(
    command: Command<'_>,
    config: &ClientConfig,
    cancel: &Receiver<()>,
) -> Result<Session> {
    check(&command, config)?;
    let started = Instant::now();
    let deadline = started + config.start_timeout;
    if let Some(expected) = &config.sha256 {
        verify_checksum(command.program, expected)?;
    }
    let socket_dir = SocketDir::create(config.socket_dir_parent.as_deref())?;
    let identity = if config.tls.is_none() && config.auto_mtls {
        Some(tls::generate_identity()?)
    } else {
        None
    };
    let process = spawn(&command, config, &socket_dir, identity.as_ref(), deadline)?;
    let spawned = Instant::now();

    let mut started_parts = Parts::default();
    let result = handshake_and_connect(
        config,
        &process,
        &socket_dir,
        identity,
        deadline,
        cancel,
        &mut started_parts,
    );
    match result {
        Ok((handshake, handshaken, connection)) => {
            let timings = StartTimings {
                spawn: spawned - started,
                handshake: handshaken - spawned,
                connect: connection.connected - handshaken,
                health: connection.connected.elapsed(),
            };
            Ok(connection.into_session(Started {
                process,
                owned: true,
                socket_dir,
                handshake,
                timings,
                mux: started_parts.mux,
            }))
        }
        Err(e) => {
            process.stop();
            if let Some(mux) = started_parts.mux {
                mux.close(MUX_CLOSE);
            }
            // A socket outside our dir (pyvider puts it in the temp dir) would outlive us.
            if let Some(path) = started_parts.announced {
                remove_socket_file(&path);
            }
            Err(e)
        }
    }
}

/// What a failed launch must clean up beyond the process.
#[derive(Default)]
struct Parts {
    /// The unix socket the handshake line named, even a rejected one.
    announced: Option<PathBuf>,
    /// The multiplexed session, once opened.
    mux: Option<Mux>,
}

/// The configuration a launch needs, checked before anything runs.
fn check(command: &Command<'_>, config: &ClientConfig) -> Result<()> {
    if command.program.is_empty() {
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
    Ok(())
}

/// Waits for the handshake, opens the multiplexed connection if asked, then connects.
fn handshake_and_connect(
    config: &ClientConfig,
    process: &PluginProcess,
    socket_dir: &SocketDir,
    identity: Option<Identity>,
    deadline: Instant,
    cancel: &Receiver<()>,
    parts: &mut Parts,
) -> Result<(Handshake, Instant, Connection)> {
    let handshake = wait_handshake(process, deadline, &config.versions, cancel, parts)?;
    let handshaken = Instant::now();
    let tls = decide_tls(config, &handshake, identity)?;
    if config.multiplex {
        // Kept before anything else can fail, so the error path closes it.
        parts.mux = Some(multiplex(&handshake, deadline)?);
    }
    let connection = connect(
        config,
        Target {
            origin: Origin::Launched,
            process,
            handshake: &handshake,
            socket_dir,
            mux: parts.mux.as_ref(),
            deadline,
            cancel,
        },
        tls,
    )?;
    Ok((handshake, handshaken, connection))
}

/// Spawns the plugin with the protocol environment go-plugin plugins expect.
fn spawn(
    command: &Command<'_>,
    config: &ClientConfig,
    socket_dir: &SocketDir,
    identity: Option<&Identity>,
    deadline: Instant,
) -> Result<Arc<PluginProcess>> {
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
        let name = std::path::Path::new(command.program)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        format!("rpcplugin::plugin::{name}")
    });
    PluginProcess::spawn(SpawnSpec {
        program: command.program,
        args: command.args,
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
    parts: &mut Parts,
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
            parts.announced = handshake::announced_unix_socket(&line);
            handshake::parse(&line, versions).map_err(|e| process.explain(e))
        }
        Some(FirstLine::TooLong(start)) => Err(process.explain(Error::new(
            ErrorKind::Handshake,
            format!(
                "unrecognized remote plugin message: the first stdout line is longer than \
                 {} KiB, starting {start:?}",
                MAX_HANDSHAKE_LINE / 1024
            ),
        ))),
        Some(FirstLine::Eof) | None => {
            // stdout closed: the process is exiting or has exited. Give it a moment to report.
            let _ = process.wait_exit(Duration::from_secs(1));
            Err(process.exited_error(
                "plugin exited before completing the handshake (no handshake line on stdout)",
            ))
        }
    }
}
