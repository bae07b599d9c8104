//! go-plugin's multiplexed brokering (`PLUGIN_MULTIPLEX_GRPC`): every gRPC connection between
//! host and plugin runs as a yamux stream inside the one socket the plugin announced.
//!
//! yamux (HashiCorp's spec, as `github.com/hashicorp/yamux` speaks it): 12-byte frame headers
//! (version 0, type, flags, stream id, length, big-endian), per-stream windows of 256 KiB that the
//! receiver reopens with window updates once half is consumed, SYN/ACK/FIN/RST on data or window
//! update frames, pings echoed with ACK, and go-away to end a session. Clients open odd stream
//! ids, servers even ones.
//!
//! grpcio speaks gRPC only over sockets it opens or accepts itself, so every yamux stream is
//! bridged to a local unix socket connection:
//!
//! * a stream this side opens starts as a connection grpcio makes to one of the session's private
//!   listeners ([`Mux::listen`]): the host's main channel, and every broker `dial`;
//! * a stream the peer opens is connected to a local gRPC server: the next knocked broker id's
//!   ([`Mux::route_next`]), else the default one (the plugin's main server).
//!
//! TLS, when on, runs inside each stream between grpcio and the peer, as go-plugin's does.
//!
//! The session is one task on the shared I/O thread: the connection, every bridged socket and
//! every listener are watched edge-triggered, and no thread is started. Memory is bounded: a
//! stream buffers at most its window (the peer may send no more), bridged sockets are not read
//! while the outgoing buffer holds [`OUT_SOFT_LIMIT`] bytes, and a peer that stops reading
//! while control frames pile up past [`OUT_HARD_LIMIT`] ends the session.

mod session;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::error::{Error, ErrorKind, Result};
use crate::runtime::reactor::{self, TaskId};
use crate::sys;
use crate::wire::yamux::*;
use crate::wire::Address;

use session::Session;

/// Largest data frame this side sends.
pub(crate) const MAX_DATA: usize = 64 * 1024;
/// Bridged sockets are not read while this many bytes wait to go out on the connection.
pub(crate) const OUT_SOFT_LIMIT: usize = 512 * 1024;
/// A peer that lets this many bytes pile up (control frames keep coming while it does not read)
/// is dropped.
pub(crate) const OUT_HARD_LIMIT: usize = 4 * 1024 * 1024;
/// Streams open at once in one session; more are refused with RST (yamux's accept backlog is
/// 256, go-plugin opens a handful).
pub(crate) const MAX_STREAMS: usize = 1024;
/// How long a knocked route waits for the peer's stream (which follows the acknowledgement at
/// once; a peer that gave up never sends it).
const ROUTE_TTL: Duration = Duration::from_secs(5);

/// Ping acknowledgements queued at once, at most: a peer keeps one ping outstanding (go's yamux
/// keepalive does), so more only come from a flood, whose extra pings go unanswered instead of
/// piling up acknowledgements it may not read.
const MAX_QUEUED_PING_ACKS: usize = 64;

/// Bytes read from the connection in one turn, so one busy session cannot starve other tasks.
const READ_BUDGET: usize = 1024 * 1024;

/// How long `close` waits for the I/O thread to drop a session that did not end within its
/// timeout (it is removed then, closing its sockets).
const REMOVE_WAIT: Duration = Duration::from_secs(1);

/// Knocked routes waiting for their stream, at most: the broker keeps as many pending ids
/// (`Broker::MAX_PENDING_IDS` is this number).
pub(crate) const MAX_ROUTES: usize = 1024;

/// Which end of the session this is: the client (the host) opens odd stream ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Client,
    Server,
}

/// The one connection under a session.
pub(crate) enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Conn {
    fn fd(&self) -> RawFd {
        match self {
            Conn::Unix(s) => s.as_raw_fd(),
            Conn::Tcp(s) => s.as_raw_fd(),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => s.read(buf),
            Conn::Tcp(s) => s.read(buf),
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        crate::sys::send(self.fd(), buf)
    }

    fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            Conn::Unix(s) => s.set_nonblocking(true),
            Conn::Tcp(s) => {
                let _ = s.set_nodelay(true);
                s.set_nonblocking(true)
            }
        }
    }
}

/// Where the session's connection comes from.
pub(crate) enum Origin {
    /// Already connected (the host dialed the plugin).
    Connected(Conn),
    /// The plugin's announced listener: the host's one connection is accepted from it, and the
    /// listener is closed then.
    Accept(ListenSource),
}

/// A listening socket for [`Origin::Accept`].
pub(crate) enum ListenSource {
    Unix(UnixListener),
    Tcp(std::net::TcpListener),
}

impl ListenSource {
    fn fd(&self) -> RawFd {
        match self {
            ListenSource::Unix(l) => l.as_raw_fd(),
            ListenSource::Tcp(l) => l.as_raw_fd(),
        }
    }

    fn accept(&self) -> io::Result<Conn> {
        match self {
            ListenSource::Unix(l) => l.accept().map(|(s, _)| Conn::Unix(s)),
            ListenSource::Tcp(l) => l.accept().map(|(s, _)| Conn::Tcp(s)),
        }
    }
}

/// A private listener of a session (an abstract unix socket on Linux; see
/// `sys::PrivateListener`).
pub(crate) struct Private {
    name: String,
}

impl Private {
    /// gRPC's target for it.
    pub(crate) fn target(&self) -> String {
        sys::PrivateListener::grpc_target(&self.name)
    }

    /// Connects to it (tests and fuzzing play the local side).
    #[cfg(any(test, fuzzing))]
    pub(crate) fn connect(&self) -> io::Result<UnixStream> {
        sys::PrivateListener::connect(&self.name)
    }

    /// How messages name it.
    pub(crate) fn address(&self) -> Address {
        Address::Unix(PathBuf::from(format!("@{}", self.name)))
    }
}

/// What other threads ask of the session task.
#[derive(Default)]
struct Shared {
    /// Private listeners to watch: (listener, name, one connection only).
    listeners: Vec<(sys::PrivateListener, String, bool)>,
    /// Listeners to close, by name.
    unlisten: Vec<String>,
    /// Where the next streams the peer opens go (knocked broker ids), in order.
    routes: VecDeque<(PathBuf, Instant)>,
    /// Where any other stream the peer opens goes (the plugin's main server); None: refused.
    default_route: Option<PathBuf>,
    close: bool,
    waker: Option<Waker>,
    /// Why the session ended, once it has.
    ended: Option<String>,
    /// The session ended because the peer broke the protocol (or said it failed).
    peer_fault: bool,
    /// Streams this side opened that the peer has not acknowledged, and when the oldest was opened.
    unacked: usize,
    oldest_unacked: Option<Instant>,
}

/// A handle on one multiplexed session. Cheap to clone; [`Mux::close`] ends it.
#[derive(Clone)]
pub(crate) struct Mux {
    shared: Arc<Mutex<Shared>>,
    /// Disconnects when the session task is gone (its fds closed).
    gone: Receiver<()>,
    task: TaskId,
}

fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Mux {
    /// Runs a session over `origin` on the shared I/O thread.
    pub(crate) fn start(origin: Origin, role: Role, default_route: Option<PathBuf>) -> Result<Mux> {
        let shared = Arc::new(Mutex::new(Shared {
            default_route,
            ..Shared::default()
        }));
        let (gone_tx, gone) = bounded(0);
        let (conn, accept) = match origin {
            Origin::Connected(conn) => (Some(conn), None),
            Origin::Accept(l) => (None, Some(l)),
        };
        if let Some(conn) = &conn {
            conn.set_nonblocking()
                .map_err(|e| Error::io("the multiplexed connection", e))?;
        }
        if let Some(l) = &accept {
            crate::sys::set_nonblocking(l.fd())
                .map_err(|e| Error::io("the multiplexed listener", e))?;
        }
        let task = Session::new(role, conn, accept, shared.clone(), gone_tx);
        let task = reactor::register(None, Box::new(task))?;
        Ok(Mux { shared, gone, task })
    }

    /// Opens a private listener: each connection made to it becomes a new stream to the peer
    /// (after the first, if `once`, the listener is closed). It is an abstract unix socket on
    /// Linux (no file to create: binding a file cost 280 µs per broker dial), and it serves only
    /// this process: a connection from any other is refused (`SO_PEERCRED`).
    pub(crate) fn listen(&self, once: bool) -> Result<Private> {
        let name = format!(
            "rpcplugin-mux-{}-{:08x}{:08x}",
            std::process::id(),
            crate::runtime::random_u32(),
            crate::runtime::random_u32()
        );
        let listener = sys::PrivateListener::bind(&name)
            .map_err(|e| Error::io(format!("binding the multiplexing socket @{name}"), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("the multiplexing socket", e))?;
        let mut shared = lock(&self.shared);
        if let Some(why) = &shared.ended {
            return Err(Error::new(
                ErrorKind::Transport,
                format!("the multiplexed connection is gone: {why}"),
            ));
        }
        shared.listeners.push((listener, name.clone(), once));
        wake(shared);
        Ok(Private { name })
    }

    /// Closes a private listener (if still open).
    pub(crate) fn unlisten(&self, private: &Private) {
        let mut shared = lock(&self.shared);
        shared.unlisten.push(private.name.clone());
        wake(shared);
    }

    /// Sends the next stream the peer opens to the gRPC server listening at `path`. Bounded: a
    /// peer that knocks without ever opening its streams cannot grow this past
    /// [`MAX_ROUTES`].
    pub(crate) fn route_next(&self, path: &Path) {
        let mut shared = lock(&self.shared);
        if shared.routes.len() >= MAX_ROUTES {
            shared.routes.pop_front();
        }
        shared.routes.push_back((path.to_owned(), Instant::now()));
    }

    /// Why the session ended, if it has.
    pub(crate) fn ended(&self) -> Option<String> {
        lock(&self.shared).ended.clone()
    }

    /// Why the session ended, if the peer ended it by breaking the protocol, by a go-away with an
    /// error code, or by not reading: the cause of whatever failed over it since.
    pub(crate) fn peer_fault(&self) -> Option<String> {
        let shared = lock(&self.shared);
        shared.ended.clone().filter(|_| shared.peer_fault)
    }

    /// An error if the session ended, for connection waits.
    pub(crate) fn ended_error(&self) -> Option<Error> {
        self.ended().map(|why| {
            Error::new(
                ErrorKind::Transport,
                format!("the multiplexed connection is gone: {why}"),
            )
        })
    }

    /// What may explain a connection that did not come up over this session.
    pub(crate) fn diagnose(&self) -> Option<String> {
        let shared = lock(&self.shared);
        if let Some(why) = &shared.ended {
            return Some(format!("the multiplexed connection is gone: {why}"));
        }
        let oldest = shared.oldest_unacked?;
        Some(format!(
            "{} yamux stream(s) opened over the multiplexed connection were never acknowledged \
             by the peer (the oldest {:?} ago)",
            shared.unacked,
            oldest.elapsed()
        ))
    }

    /// Disconnects once the session is over (for a plugin that ends with its host's connection).
    pub(crate) fn gone(&self) -> Receiver<()> {
        self.gone.clone()
    }

    /// Ends the session: a go-away and whatever is already queued are sent (without waiting for
    /// the peer), then every socket of the session is closed. Returns once they are closed, or
    /// after `timeout` (then the task is dropped on the I/O thread's next turn).
    pub(crate) fn close(&self, timeout: Duration) {
        {
            let mut shared = lock(&self.shared);
            shared.close = true;
            wake(shared);
        }
        if reactor::on_io_thread() {
            return;
        }
        if !matches!(
            self.gone.recv_timeout(timeout),
            Err(crossbeam_channel::RecvTimeoutError::Timeout)
        ) {
            return;
        }
        reactor::remove(self.task);
        let _ = self.gone.recv_timeout(REMOVE_WAIT);
    }

    /// The longest [`Mux::close`] takes with `timeout`.
    pub(crate) const fn close_bound(timeout: Duration) -> Duration {
        crate::runtime::total(&[timeout, REMOVE_WAIT])
    }
}

/// Closes a session when dropped (on every path out of the plugin's `serve`).
pub(crate) struct CloseOnDrop(pub(crate) Mux);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close(Duration::from_secs(1));
    }
}

fn wake(shared: MutexGuard<'_, Shared>) {
    let waker = shared.waker.clone();
    drop(shared);
    if let Some(w) = waker {
        w.wake();
    }
}
