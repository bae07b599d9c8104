//! Attaching to a plugin that is already running (started by another host, or by Terraform's
//! debug mode), described by a [`ReattachConfig`], before the shared connect step.

use std::time::Instant;

use crossbeam_channel::Receiver;

use super::config::ClientConfig;
use super::connect::{connect, decide_tls, Origin, Started, Target};
use super::process::PluginProcess;
use super::session::{Session, StartTimings};
use super::socket_dir::SocketDir;
use crate::error::{Error, ErrorKind, Result};
use crate::wire::handshake::Handshake;
use crate::wire::reattach::ReattachConfig;

/// Connects to the plugin `reattach` describes, within the start timeout. A failure never
/// stops the process.
pub(super) fn attach(
    reattach: &ReattachConfig,
    config: &ClientConfig,
    cancel: &Receiver<()>,
) -> Result<Session> {
    check(reattach, config)?;
    let started = Instant::now();
    let deadline = started + config.start_timeout;
    // Before the process is taken on: dropping an owned attached process would stop it.
    let socket_dir = SocketDir::create(config.socket_dir_parent.as_deref())?;
    let process = PluginProcess::attach(reattach.pid, reattach.owned, &reattach.address)?;
    let handshake = Handshake {
        app_version: reattach.protocol_version,
        address: reattach.address.clone(),
        protocol: reattach.protocol.clone(),
        server_cert_der: None,
        multiplex: false,
    };
    let connected = decide_tls(config, &handshake, None).and_then(|tls| {
        connect(
            config,
            Target {
                origin: Origin::Attached { pid: reattach.pid },
                process: &process,
                handshake: &handshake,
                socket_dir: &socket_dir,
                mux: None,
                deadline,
                cancel,
            },
            tls,
        )
    });
    match connected {
        Ok(connection) => {
            let timings = StartTimings {
                connect: connection.channel_ready - started,
                health: connection.channel_ready.elapsed(),
                ..StartTimings::default()
            };
            Ok(connection.into_session(Started {
                process,
                // Pid 0: no process to stop, so nothing to shut down either.
                owned: reattach.owned && reattach.pid != 0,
                socket_dir,
                handshake,
                timings,
                mux: None,
            }))
        }
        Err(e) => {
            // Never kill a process because attaching to it failed.
            process.stop_watching();
            Err(e)
        }
    }
}

/// What attaching cannot do, refused before anything is touched.
fn check(reattach: &ReattachConfig, config: &ClientConfig) -> Result<()> {
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
    Ok(())
}
