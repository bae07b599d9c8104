//! A started plugin, as the client holds it, and its teardown: the one place that knows what
//! `close` does and how long each step may take, so the bound it states is computed here from
//! the same constants the steps use.

use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use grpcio::Channel;

use super::process::{self, PluginProcess};
use super::socket_dir::SocketDir;
use crate::runtime::mux::Mux;
use crate::runtime::total;
use crate::services::broker::Broker;
use crate::services::controller::PendingShutdown;
use crate::services::stdio::StdioPump;
use crate::wire::handshake::Handshake;
use crate::wire::Address;

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

/// How long `close` lets the last stdio data arrive once the plugin is gone.
const STDIO_LINGER: Duration = Duration::from_millis(500);

/// How long `close` waits for a multiplexed session's sockets to close.
pub(super) const MUX_CLOSE: Duration = Duration::from_secs(1);

/// What the steps of `close` not listed in [`CLOSE_OVERHEAD`] may take: removing the socket
/// dir and the announced socket, and the wake-ups between the steps.
const CLOSE_MARGIN: Duration = Duration::from_millis(500);

/// What `close` may spend beyond the configured shutdown deadline and exit grace, in the worst
/// case, step by step: stopping the broker (its servers, then its handler threads: a handler
/// that ignores its cancellation is left running), killing and reaping the plugin (the wait
/// after SIGKILL, then for pipes an escaped process holds), the last stdio data, closing the
/// multiplexed session, and a margin. See
/// [`ClientConfig::max_close_duration`](crate::ClientConfig::max_close_duration).
pub const CLOSE_OVERHEAD: Duration = total(&[
    Broker::CLOSE_BOUND,
    process::STOP_BOUND,
    StdioPump::finish_bound(STDIO_LINGER),
    Mux::close_bound(MUX_CLOSE),
    CLOSE_MARGIN,
]);

/// A plugin that started: everything `close` must release.
pub(super) struct Session {
    pub process: Arc<PluginProcess>,
    /// Whether `close` may stop the process (always for launched plugins).
    pub owned: bool,
    pub socket_dir: SocketDir,
    pub broker: Broker,
    pub stdio: Option<StdioPump>,
    pub handshake: Handshake,
    pub channel: Channel,
    pub tls_mode: TlsMode,
    pub timings: StartTimings,
    /// The yamux session every connection runs in, with multiplexed brokering.
    pub mux: Option<Mux>,
}

impl Session {
    /// Stops everything the session holds: asks the plugin to shut down (waiting at most
    /// `shutdown_timeout`), gives it `exit_grace` to exit, then kills and reaps it. Returns the
    /// plugin's exit status when known.
    pub(super) fn teardown(
        self,
        shutdown_timeout: Duration,
        exit_grace: Duration,
    ) -> Option<ExitStatus> {
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
        } = self;
        process.expect_exit();
        if !owned {
            broker.close();
            drop(channel);
            process.stop_watching();
            if let Some(stdio) = stdio {
                stdio.finish(Duration::ZERO);
            }
            return None;
        }
        let began = Instant::now();
        let mut asked = began;
        // Dropped (removed) after the reap if it could not be removed while the plugin ran.
        let (socket_dir_left, dir_removal);
        if process.has_exited() {
            broker.close();
            (socket_dir_left, dir_removal) = remove_timed(socket_dir);
        } else {
            // Asked first: stopping the broker (its stream cancelled, its threads joined, 65-270
            // µs) then overlaps the plugin's own shutdown instead of preceding it.
            let pending = PendingShutdown::send(&channel, shutdown_timeout);
            broker.close();
            let answered = pending.and_then(|p| {
                p.wait_answer_or_exit(process.exit_signal(), || process.has_exited())
            });
            if let Err(e) = answered {
                log::debug!("graceful shutdown request failed: {e}");
            }
            // On ext4 mounted with `discard`, whoever drops a removed dir's last reference waits
            // for the discard of its block (80-270 µs; README, close). go-plugin plugins have
            // closed their listener when the connection drops (or they exited): the last
            // reference is ours, and removing the dir now overlaps their exit. A plugin that
            // answers first (ours) may still hold its listener: it then pays in its own
            // shutdown, which close waits for anyway. After the exit, it was on close's path.
            (socket_dir_left, dir_removal) = remove_timed(socket_dir);
            drop(channel);
            asked = Instant::now();
            if !process.wait_exit(exit_grace) {
                log::warn!(
                    "plugin {} did not exit within {exit_grace:?} of the shutdown request; \
                     killing it",
                    process.pid(),
                );
            }
        }
        let exited = Instant::now();
        process.stop();
        let reaped = Instant::now();
        if let Some(stdio) = stdio {
            // The connection is gone with the process; the stream has ended or ends now.
            stdio.finish(STDIO_LINGER);
        }
        let streamed = Instant::now();
        if let Some(mux) = mux {
            mux.close(MUX_CLOSE);
        }
        // Plugins that ignore PLUGIN_UNIX_SOCKET_DIR (pyvider) put their socket elsewhere, and a
        // killed plugin cannot remove it.
        if let Address::Unix(path) = &handshake.address {
            remove_socket_file(path);
        }
        drop(socket_dir_left);
        log::debug!(
            "plugin {} closed in {:?}: shutdown request and socket dir {:?}, of it socket dir \
             {dir_removal:?}, exit {:?}, kill and reap {:?}, stdio stream {:?}, multiplexing \
             and socket {:?}",
            process.pid(),
            began.elapsed(),
            asked - began,
            exited - asked,
            reaped - exited,
            streamed - reaped,
            streamed.elapsed()
        );
        process.exit_status()
    }
}

/// [`SocketDir::try_remove`], timed for close's debug line: what is left, and how long it took.
fn remove_timed(socket_dir: SocketDir) -> (Option<SocketDir>, Duration) {
    let removing = Instant::now();
    (socket_dir.try_remove().err(), removing.elapsed())
}

/// Removes `path` if it is a unix socket (and nothing else).
pub(super) fn remove_socket_file(path: &std::path::Path) {
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
