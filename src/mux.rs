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
use crate::reactor::{self, TaskId};

/// Frame header size.
pub(crate) const HEADER: usize = 12;
/// The initial (and, here, the only) window of every stream, both ways.
pub(crate) const WINDOW: u32 = 256 * 1024;
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

pub(crate) const TYPE_DATA: u8 = 0;
pub(crate) const TYPE_WINDOW_UPDATE: u8 = 1;
pub(crate) const TYPE_PING: u8 = 2;
pub(crate) const TYPE_GO_AWAY: u8 = 3;

pub(crate) const SYN: u16 = 1;
pub(crate) const ACK: u16 = 2;
pub(crate) const FIN: u16 = 4;
pub(crate) const RST: u16 = 8;

pub(crate) const GO_AWAY_NORMAL: u32 = 0;
pub(crate) const GO_AWAY_PROTOCOL: u32 = 1;
pub(crate) const GO_AWAY_INTERNAL: u32 = 2;

/// One frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub kind: u8,
    pub flags: u16,
    pub stream: u32,
    pub length: u32,
}

impl Header {
    pub(crate) fn new(kind: u8, flags: u16, stream: u32, length: u32) -> Header {
        Header {
            kind,
            flags,
            stream,
            length,
        }
    }

    pub(crate) fn encode(&self) -> [u8; HEADER] {
        let mut b = [0u8; HEADER];
        b[1] = self.kind;
        b[2..4].copy_from_slice(&self.flags.to_be_bytes());
        b[4..8].copy_from_slice(&self.stream.to_be_bytes());
        b[8..12].copy_from_slice(&self.length.to_be_bytes());
        b
    }

    /// A header, or what is wrong with it (an unknown version or type).
    pub(crate) fn decode(b: &[u8; HEADER]) -> std::result::Result<Header, String> {
        if b[0] != 0 {
            return Err(format!("yamux version {} (expected 0)", b[0]));
        }
        if b[1] > TYPE_GO_AWAY {
            return Err(format!("unknown yamux frame type {}", b[1]));
        }
        Ok(Header {
            kind: b[1],
            flags: u16::from_be_bytes([b[2], b[3]]),
            stream: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            length: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
        })
    }
}

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

/// A private listener of a session (an abstract unix socket).
pub(crate) struct Private {
    name: String,
}

impl Private {
    /// gRPC's target for it.
    pub(crate) fn target(&self) -> String {
        format!("unix-abstract:{}", self.name)
    }

    /// How messages name it.
    pub(crate) fn address(&self) -> crate::transport::Address {
        crate::transport::Address::Unix(PathBuf::from(format!("@{}", self.name)))
    }
}

/// What other threads ask of the session task.
#[derive(Default)]
struct Shared {
    /// Private listeners to watch: (listener, name, one connection only).
    listeners: Vec<(UnixListener, String, bool)>,
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
        let task = Session {
            role,
            conn,
            accept,
            watching: false,
            watching_output: false,
            next_id: match role {
                Role::Client => 1,
                Role::Server => 2,
            },
            streams: HashMap::new(),
            listeners: Vec::new(),
            inbuf: Vec::with_capacity(64 * 1024),
            out: Vec::new(),
            out_pos: 0,
            remote_go_away: false,
            peer_fault: false,
            queued_ping_acks: 0,
            shared: shared.clone(),
            _gone: gone_tx,
            failed: None,
            scratch: vec![0; MAX_DATA],
            dirty: Vec::new(),
            by_fd: HashMap::new(),
            blocked: Vec::new(),
            retry_accept: false,
        };
        let task = reactor::register(None, Box::new(task))?;
        Ok(Mux { shared, gone, task })
    }

    /// Opens a private listener: each connection made to it becomes a new stream to the peer
    /// (after the first, if `once`, the listener is closed). It is an abstract unix socket (no
    /// file to create: binding a file cost 280 µs per broker dial), and it serves only this
    /// process: a connection from any other is refused (`SO_PEERCRED`).
    pub(crate) fn listen(&self, once: bool) -> Result<Private> {
        use std::os::linux::net::SocketAddrExt;
        let name = format!(
            "rpcplugin-mux-{}-{:08x}{:08x}",
            std::process::id(),
            crate::grpc::random_u32(),
            crate::grpc::random_u32()
        );
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(&name)
            .map_err(|e| Error::io("naming a multiplexing socket", e))?;
        let listener = UnixListener::bind_addr(&addr)
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
    /// [`crate::Broker::MAX_PENDING_IDS`].
    pub(crate) fn route_next(&self, path: &Path) {
        let mut shared = lock(&self.shared);
        if shared.routes.len() >= crate::Broker::MAX_PENDING_IDS {
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
        let _ = self.gone.recv_timeout(Duration::from_secs(1));
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

/// One stream, bridged to a local socket.
struct Stream {
    local: UnixStream,
    /// Bytes this side may still send the peer.
    send_window: u32,
    /// Bytes the peer may still send before this side reopens the window.
    recv_window: u32,
    /// Received from the peer, not yet written to the local socket.
    to_local: Vec<u8>,
    /// Written to the local socket since the last window update.
    consumed: u32,
    /// The local side finished writing: FIN sent.
    fin_sent: bool,
    /// The peer sent FIN: the local socket's write side is shut once `to_local` is written.
    fin_received: bool,
    local_shut: bool,
    /// Opened by this side and not acknowledged yet: since when.
    unacked_since: Option<Instant>,
    /// The local socket is watched for room to write (`to_local` waits).
    watching_output: bool,
}

impl Stream {
    fn new(local: UnixStream, unacked_since: Option<Instant>) -> Stream {
        Stream {
            local,
            send_window: WINDOW,
            recv_window: WINDOW,
            to_local: Vec::new(),
            consumed: 0,
            fin_sent: false,
            fin_received: false,
            local_shut: false,
            unacked_since,
            watching_output: false,
        }
    }

    /// Watches the local socket for room exactly while `to_local` holds bytes.
    fn watch_output(&mut self) {
        let want = !self.to_local.is_empty();
        if want != self.watching_output
            && reactor::watch_output(self.local.as_raw_fd(), want).is_ok()
        {
            self.watching_output = want;
        }
    }

    /// The local socket closed for good (a write failed): nothing more can be written to it.
    /// The stream ends once its read side has seen EOF and sent FIN; no RST, because the peer
    /// usually closed its end as well and would only log a reset for a stream it forgot.
    fn local_gone(&mut self) {
        self.consumed += self.to_local.len() as u32;
        self.to_local.clear();
        self.local_shut = true;
    }

    fn done(&self) -> bool {
        self.fin_sent && self.local_shut
    }
}

/// The session task.
struct Session {
    role: Role,
    conn: Option<Conn>,
    accept: Option<ListenSource>,
    watching: bool,
    /// The connection is watched for room to write (`out` holds bytes).
    watching_output: bool,
    next_id: u32,
    streams: HashMap<u32, Stream>,
    listeners: Vec<(UnixListener, String, bool)>,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    out_pos: usize,
    remote_go_away: bool,
    /// The peer broke the protocol, ended the session with an error, or stopped reading.
    peer_fault: bool,
    /// Ping acknowledgements in `out` not yet written (see [`MAX_QUEUED_PING_ACKS`]).
    queued_ping_acks: usize,
    shared: Arc<Mutex<Shared>>,
    _gone: Sender<()>,
    failed: Option<String>,
    /// Read buffer for the connection and the local sockets (allocated once).
    scratch: Vec<u8>,
    /// Streams whose state frames changed this turn: they are pumped even if their local
    /// socket did not fire.
    dirty: Vec<u32>,
    /// Stream id by local socket fd.
    by_fd: HashMap<RawFd, u32>,
    /// Streams that stopped reading their local socket for want of room in `out`.
    blocked: Vec<u32>,
    /// Accepting on a private listener failed for want of fds or memory: try every turn.
    retry_accept: bool,
}

impl Session {
    fn queue(&mut self, h: Header, payload: &[u8]) {
        self.out.extend_from_slice(&h.encode());
        self.out.extend_from_slice(payload);
    }

    fn pending_out(&self) -> usize {
        self.out.len() - self.out_pos
    }

    fn fail(&mut self, why: impl Into<String>) {
        if self.failed.is_none() {
            self.failed = Some(why.into());
        }
    }

    fn protocol_error(&mut self, why: String) {
        self.queue(Header::new(TYPE_GO_AWAY, 0, 0, GO_AWAY_PROTOCOL), &[]);
        self.flush();
        self.peer_failed(format!("yamux protocol error from the peer: {why}"));
    }

    /// Ends the session for something the peer did.
    fn peer_failed(&mut self, why: impl Into<String>) {
        if self.failed.is_none() {
            self.peer_fault = true;
        }
        self.fail(why);
    }

    fn reset(&mut self, id: u32) {
        self.queue(Header::new(TYPE_WINDOW_UPDATE, RST, id, 0), &[]);
    }

    /// Writes queued bytes to the connection until it would block.
    fn flush(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        while self.out_pos < self.out.len() {
            match conn.write(&self.out[self.out_pos..]) {
                Ok(0) => {
                    self.failed
                        .get_or_insert_with(|| "the connection stopped taking bytes".to_owned());
                    return;
                }
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.failed
                        .get_or_insert_with(|| format!("writing to the connection failed: {e}"));
                    return;
                }
            }
        }
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
            self.queued_ping_acks = 0;
        } else if self.out_pos > 256 * 1024 {
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
        let (want, fd) = (self.out_pos < self.out.len(), conn.fd());
        if want != self.watching_output && reactor::watch_output(fd, want).is_ok() {
            self.watching_output = want;
        }
        if self.pending_out() > OUT_HARD_LIMIT {
            self.peer_failed(format!(
                "the peer stopped reading ({} bytes wait to be sent)",
                self.pending_out()
            ));
        }
    }

    /// Reads and handles frames until the connection would block (or the turn's budget is
    /// spent: then true, run again).
    fn read_conn(&mut self) -> bool {
        let mut chunk = std::mem::take(&mut self.scratch);
        let again = self.read_conn_into(&mut chunk);
        self.scratch = chunk;
        again
    }

    fn read_conn_into(&mut self, chunk: &mut [u8]) -> bool {
        let mut budget = READ_BUDGET;
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return false;
            };
            match conn.read(chunk) {
                Ok(0) => {
                    self.fail(if self.remote_go_away {
                        "the peer went away and closed the connection"
                    } else {
                        "the peer closed the connection"
                    });
                    return false;
                }
                Ok(n) => {
                    self.inbuf.extend_from_slice(&chunk[..n]);
                    self.parse();
                    if self.failed.is_some() {
                        return false;
                    }
                    // A short read is no sign of a drained socket: the peer's FIN may already
                    // wait behind the data, and its edge fired together with the data's (one
                    // event), so only a read that says "would block" or EOF ends the loop.
                    budget = budget.saturating_sub(n);
                    if budget == 0 {
                        return true;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.fail(format!("reading the connection failed: {e}"));
                    return false;
                }
            }
        }
    }

    /// Handles every complete frame in `inbuf`.
    fn parse(&mut self) {
        let mut inbuf = std::mem::take(&mut self.inbuf);
        let pos = self.parse_frames(&inbuf);
        inbuf.drain(..pos);
        self.inbuf = inbuf;
    }

    /// Handles the complete frames at the start of `inbuf`; returns how many bytes they took.
    fn parse_frames(&mut self, inbuf: &[u8]) -> usize {
        let mut pos = 0;
        while inbuf.len() - pos >= HEADER && self.failed.is_none() {
            let raw: [u8; HEADER] = inbuf[pos..pos + HEADER].try_into().expect("12 bytes");
            let h = match Header::decode(&raw) {
                Ok(h) => h,
                Err(why) => {
                    self.protocol_error(why);
                    return pos;
                }
            };
            let payload = if h.kind == TYPE_DATA {
                if h.length > WINDOW {
                    self.protocol_error(format!(
                        "a data frame of {} bytes, more than a window ({WINDOW})",
                        h.length
                    ));
                    return pos;
                }
                h.length as usize
            } else {
                0
            };
            if inbuf.len() - pos < HEADER + payload {
                break;
            }
            let body = &inbuf[pos + HEADER..pos + HEADER + payload];
            pos += HEADER + payload;
            self.handle(h, body);
        }
        pos
    }

    fn handle(&mut self, h: Header, body: &[u8]) {
        match h.kind {
            TYPE_PING => {
                if h.flags & SYN != 0 {
                    if self.queued_ping_acks < MAX_QUEUED_PING_ACKS {
                        self.queued_ping_acks += 1;
                        self.queue(Header::new(TYPE_PING, ACK, 0, h.length), &[]);
                    } else if self.queued_ping_acks == MAX_QUEUED_PING_ACKS {
                        self.queued_ping_acks += 1;
                        log::debug!(
                            "the peer floods pings ({MAX_QUEUED_PING_ACKS} acknowledgements wait \
                             to be sent); further pings go unanswered until they are"
                        );
                    }
                }
            }
            TYPE_GO_AWAY => match h.length {
                GO_AWAY_NORMAL => self.remote_go_away = true,
                GO_AWAY_PROTOCOL => self.peer_failed("the peer ended the session: protocol error"),
                GO_AWAY_INTERNAL => self.peer_failed("the peer ended the session: internal error"),
                code => self.peer_failed(format!("the peer ended the session with code {code}")),
            },
            _ => self.stream_frame(h, body),
        }
    }

    fn stream_frame(&mut self, h: Header, body: &[u8]) {
        let id = h.stream;
        if h.flags & SYN != 0 {
            self.incoming(id);
            if self.failed.is_some() {
                return;
            }
        }
        let Some(stream) = self.streams.get_mut(&id) else {
            // Closed or refused here already: data in flight is dropped.
            return;
        };
        self.dirty.push(id);
        if h.flags & ACK != 0 {
            stream.unacked_since = None;
        }
        if h.kind == TYPE_WINDOW_UPDATE {
            match stream.send_window.checked_add(h.length) {
                Some(w) => stream.send_window = w,
                None => {
                    self.protocol_error(format!("stream {id}'s window grew past 4 GiB"));
                    return;
                }
            }
        } else if !body.is_empty() {
            if body.len() as u32 > stream.recv_window {
                let window = stream.recv_window;
                self.protocol_error(format!(
                    "stream {id} got {} bytes with {window} left in its window",
                    body.len()
                ));
                return;
            }
            stream.recv_window -= body.len() as u32;
            if stream.fin_received || stream.local_shut {
                // Data after FIN: nothing can take it. Given back to the window all the same.
                stream.consumed += body.len() as u32;
            } else if stream.to_local.is_empty() {
                // Straight to the local socket; only what it cannot take now is kept.
                match crate::sys::send(stream.local.as_raw_fd(), body) {
                    Ok(n) => {
                        stream.consumed += n as u32;
                        stream.to_local.extend_from_slice(&body[n..]);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        stream.to_local.extend_from_slice(body);
                    }
                    // The local end closed: what the peer still sends is dropped (see
                    // `Stream::local_gone`).
                    Err(_) => stream.local_gone(),
                }
            } else {
                stream.to_local.extend_from_slice(body);
            }
        }
        if h.flags & FIN != 0 {
            stream.fin_received = true;
        }
        if h.flags & RST != 0 {
            self.drop_stream(id, false);
        }
    }

    /// The peer opened stream `id`: connect it to its local server, or refuse it.
    fn incoming(&mut self, id: u32) {
        let theirs = match self.role {
            Role::Client => id.is_multiple_of(2),
            Role::Server => !id.is_multiple_of(2),
        };
        if !theirs || id == 0 || self.streams.contains_key(&id) {
            self.protocol_error(format!("the peer opened stream {id}, which it may not"));
            return;
        }
        let target = {
            let mut shared = lock(&self.shared);
            if shared.close {
                None
            } else {
                // A peer opens its stream right after the knock's acknowledgement; a route
                // older than ROUTE_TTL is one whose peer gave up, and must not take the stream.
                while shared
                    .routes
                    .front()
                    .is_some_and(|(_, at)| at.elapsed() > ROUTE_TTL)
                {
                    shared.routes.pop_front();
                }
                shared
                    .routes
                    .pop_front()
                    .map(|(path, _)| path)
                    .or_else(|| shared.default_route.clone())
            }
        };
        let Some(target) = target else {
            log::debug!("refusing yamux stream {id}: nothing is served for it");
            self.reset(id);
            return;
        };
        if self.streams.len() >= MAX_STREAMS {
            log::warn!("refusing yamux stream {id}: {MAX_STREAMS} streams are open");
            self.reset(id);
            return;
        }
        let local = match crate::sys::connect_unix_nonblocking(&target) {
            Ok(local) => local,
            Err(e) => {
                log::warn!(
                    "refusing yamux stream {id}: its server at {} cannot be reached: {e}",
                    target.display()
                );
                self.reset(id);
                return;
            }
        };
        if let Err(e) = reactor::watch(local.as_raw_fd()) {
            log::warn!("refusing yamux stream {id}: {e}");
            self.reset(id);
            return;
        }
        self.by_fd.insert(local.as_raw_fd(), id);
        self.streams.insert(id, Stream::new(local, None));
        self.dirty.push(id);
        self.queue(Header::new(TYPE_WINDOW_UPDATE, ACK, id, 0), &[]);
    }

    /// Forgets stream `id` (closing its local socket), sending RST first if `reset`.
    fn drop_stream(&mut self, id: u32, reset: bool) {
        if let Some(stream) = self.streams.remove(&id) {
            self.by_fd.remove(&stream.local.as_raw_fd());
            reactor::unwatch(stream.local.as_raw_fd());
            if reset {
                self.reset(id);
            }
        }
    }

    /// Moves bytes between streams and their local sockets: every stream, or (with `ready`)
    /// those whose socket fired, whose state changed, or that wait for room in `out`.
    fn pump_streams(&mut self, ready: Option<&[RawFd]>) {
        let mut ids = std::mem::take(&mut self.dirty);
        if self.pending_out() < OUT_SOFT_LIMIT {
            ids.append(&mut self.blocked);
        }
        match ready {
            None => ids = self.streams.keys().copied().collect(),
            Some(fds) => {
                ids.extend(fds.iter().filter_map(|fd| self.by_fd.get(fd).copied()));
                ids.sort_unstable();
                ids.dedup();
            }
        }
        let mut chunk = std::mem::take(&mut self.scratch);
        for id in ids {
            let mut window_update = None;
            let mut reset = false;
            {
                let Some(s) = self.streams.get_mut(&id) else {
                    continue;
                };
                // Peer to local.
                while !s.to_local.is_empty() {
                    match crate::sys::send(s.local.as_raw_fd(), &s.to_local) {
                        Ok(n) => {
                            s.to_local.drain(..n);
                            s.consumed += n as u32;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => s.local_gone(),
                    }
                }
                if s.consumed >= WINDOW / 2 {
                    window_update = Some(Header::new(TYPE_WINDOW_UPDATE, 0, id, s.consumed));
                    s.recv_window += s.consumed;
                    s.consumed = 0;
                }
                s.watch_output();
                if s.fin_received && s.to_local.is_empty() && !s.local_shut {
                    let _ = s.local.shutdown(std::net::Shutdown::Write);
                    s.local_shut = true;
                }
            }
            if let Some(h) = window_update {
                self.queue(h, &[]);
            }
            // Local to peer.
            loop {
                let pending = self.pending_out();
                let Some(s) = self.streams.get_mut(&id) else {
                    break;
                };
                if s.fin_sent {
                    break;
                }
                if s.send_window == 0 {
                    // FIN takes no window: a local socket at EOF says so now.
                    if crate::sys::peek_eof(s.local.as_raw_fd()) {
                        s.fin_sent = true;
                        self.queue(Header::new(TYPE_WINDOW_UPDATE, FIN, id, 0), &[]);
                    }
                    break;
                }
                if pending >= OUT_SOFT_LIMIT {
                    if !self.blocked.contains(&id) {
                        self.blocked.push(id);
                    }
                    break;
                }
                let room = (s.send_window as usize).min(MAX_DATA);
                match (&s.local).read(&mut chunk[..room]) {
                    Ok(0) => {
                        s.fin_sent = true;
                        self.queue(Header::new(TYPE_WINDOW_UPDATE, FIN, id, 0), &[]);
                    }
                    Ok(n) => {
                        s.send_window -= n as u32;
                        let h = Header::new(TYPE_DATA, 0, id, n as u32);
                        self.out.extend_from_slice(&h.encode());
                        self.out.extend_from_slice(&chunk[..n]);
                        // Read on even after a short read: EOF may wait (see `read_conn_into`).
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        reset = true;
                        break;
                    }
                }
            }
            if reset {
                self.drop_stream(id, true);
            } else if self.streams.get(&id).is_some_and(Stream::done) {
                self.drop_stream(id, false);
            }
        }
        self.scratch = chunk;
    }

    /// Accepts connections on the private listeners: each becomes a stream this side opens.
    fn accept_local(&mut self, ready: Option<&[RawFd]>) {
        let mut i = 0;
        while i < self.listeners.len() {
            let fd = self.listeners[i].0.as_raw_fd();
            let fired = ready.is_none_or(|fds| fds.contains(&fd));
            if (fired || self.retry_accept) && self.accept_from(i) {
                let (listener, ..) = self.listeners.remove(i);
                reactor::unwatch(listener.as_raw_fd());
            } else {
                i += 1;
            }
        }
    }

    /// Accepts what listener `i` holds; true when it is done (its one connection taken, or
    /// broken).
    fn accept_from(&mut self, i: usize) -> bool {
        self.retry_accept = false;
        loop {
            match self.listeners[i].0.accept() {
                Ok((local, _)) => {
                    let pid = crate::sys::peer_pid(local.as_raw_fd());
                    if pid != Some(std::process::id()) {
                        log::warn!(
                            "refused a connection to a private multiplexing socket from \
                             process {pid:?}: only this process may use it"
                        );
                        continue;
                    }
                    self.open(local);
                    if self.listeners[i].2 {
                        return true;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e)
                    if e.kind() == io::ErrorKind::Interrupted
                        || e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                    ) =>
                {
                    // Out of fds or memory for now: the connection waits in the backlog, and
                    // every turn tries again (no new edge would come for it).
                    log::warn!("accepting on a multiplexing socket: {e}; will retry");
                    self.retry_accept = true;
                    return false;
                }
                Err(e) => {
                    log::warn!("a multiplexing socket failed: {e}");
                    return true;
                }
            }
        }
    }

    /// Opens a stream that carries nothing and is closed at once, for an acknowledged knock whose
    /// connection never came.
    fn placeholder(&mut self) {
        let id = self.next_id;
        let Some(next) = self.next_id.checked_add(2) else {
            return;
        };
        self.next_id = next;
        self.queue(Header::new(TYPE_WINDOW_UPDATE, SYN | FIN, id, 0), &[]);
    }

    /// Opens a stream to the peer for the local connection `local`.
    fn open(&mut self, local: UnixStream) {
        if self.remote_go_away || self.streams.len() >= MAX_STREAMS {
            // Dropping `local` fails the connection attempt of grpcio at once.
            log::warn!(
                "cannot open a yamux stream: {}",
                if self.remote_go_away {
                    "the peer went away"
                } else {
                    "too many streams are open"
                }
            );
            return;
        }
        let id = self.next_id;
        let Some(next) = self.next_id.checked_add(2) else {
            log::warn!("cannot open a yamux stream: stream ids are used up");
            return;
        };
        if local.set_nonblocking(true).is_err() || reactor::watch(local.as_raw_fd()).is_err() {
            return;
        }
        self.next_id = next;
        self.by_fd.insert(local.as_raw_fd(), id);
        self.dirty.push(id);
        self.streams
            .insert(id, Stream::new(local, Some(Instant::now())));
        self.queue(Header::new(TYPE_WINDOW_UPDATE, SYN, id, 0), &[]);
    }

    /// Takes what other threads asked for.
    fn commands(&mut self, cx: &Context<'_>) -> bool {
        let (listeners, unlisten, close) = {
            let mut shared = lock(&self.shared);
            if shared.waker.is_none() {
                shared.waker = Some(cx.waker().clone());
            }
            (
                std::mem::take(&mut shared.listeners),
                std::mem::take(&mut shared.unlisten),
                shared.close,
            )
        };
        for (listener, name, once) in listeners {
            if reactor::watch(listener.as_raw_fd()).is_ok() {
                self.listeners.push((listener, name, once));
            }
        }
        for name in unlisten {
            let Some(i) = self.listeners.iter().position(|l| l.1 == name) else {
                continue;
            };
            // A connection gRPC already made still gets its stream.
            let before = self.next_id;
            self.accept_from(i);
            let taken = self.next_id != before;
            let (listener, _, once) = self.listeners.remove(i);
            reactor::unwatch(listener.as_raw_fd());
            if once && !taken {
                // A one-shot listener belongs to a knock the peer acknowledged: the peer sends
                // the next stream it gets to that id's server, so one must come, or every later
                // knocked stream would land one server off. An empty one (SYN with FIN).
                self.placeholder();
            }
        }
        close
    }

    fn publish(&self) {
        let mut shared = lock(&self.shared);
        let unacked = self.streams.values().filter_map(|s| s.unacked_since);
        shared.unacked = unacked.clone().count();
        shared.oldest_unacked = unacked.min();
    }
}

impl Session {
    /// The bounds the module docs state, checked on every turn under the fuzzer.
    #[cfg(fuzzing)]
    fn check_bounds(&self) {
        let largest = self.streams.values().map(|s| s.to_local.len()).max();
        crate::fuzzing::session_bounds_hold(
            self.streams.len(),
            largest.unwrap_or(0),
            self.inbuf.len(),
            self.pending_out(),
            self.failed.is_some(),
        );
    }
}

impl reactor::Task for Session {
    fn run(&mut self, cx: &mut Context<'_>) -> bool {
        let close = self.commands(cx);
        if !self.watching {
            let fd = match (&self.conn, &self.accept) {
                (Some(conn), _) => conn.fd(),
                (None, Some(l)) => l.fd(),
                (None, None) => return false,
            };
            if let Err(e) = reactor::watch(fd) {
                self.fail(e.to_string());
            }
            self.watching = true;
        }
        let mut accepted = false;
        if self.conn.is_none() && self.failed.is_none() {
            let Some(listener) = &self.accept else {
                return false;
            };
            match listener.accept() {
                Ok(conn) => {
                    reactor::unwatch(listener.fd());
                    self.accept = None;
                    if let Err(e) = conn.set_nonblocking() {
                        self.fail(format!("the accepted connection: {e}"));
                    } else if let Err(e) = reactor::watch(conn.fd()) {
                        self.fail(e.to_string());
                    }
                    self.conn = Some(conn);
                    accepted = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => self.fail(format!("accepting the host's connection failed: {e}")),
            }
        }
        let mut again = false;
        // Only what fired, unless the task runs for another reason (then everything).
        let ready = reactor::ready_fds().filter(|_| !accepted);
        let ready = ready.as_deref();
        if self.conn.is_some() && self.failed.is_none() {
            let conn_fired = self.conn.as_ref().map(Conn::fd);
            if ready.is_none_or(|fds| conn_fired.is_some_and(|fd| fds.contains(&fd))) {
                again |= self.read_conn();
            }
            if self.failed.is_none() {
                self.accept_local(ready);
                self.pump_streams(ready);
                self.flush();
                again |= !self.blocked.is_empty() && self.pending_out() < OUT_SOFT_LIMIT;
            }
        }
        if close && self.failed.is_none() {
            // Hand over what the local sockets still hold, then say goodbye.
            self.pump_streams(None);
            self.queue(Header::new(TYPE_GO_AWAY, 0, 0, GO_AWAY_NORMAL), &[]);
            self.flush();
            self.fail("the session was closed");
        }
        self.publish();
        #[cfg(fuzzing)]
        self.check_bounds();
        if let Some(why) = self.failed.clone() {
            if why != "the session was closed" {
                log::debug!("multiplexed session ended: {why}");
            }
            let mut shared = lock(&self.shared);
            shared.ended = Some(why);
            shared.peer_fault = self.peer_fault;
            return false;
        }
        if again {
            cx.waker().wake_by_ref();
        }
        true
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let mut shared = lock(&self.shared);
        shared
            .ended
            .get_or_insert_with(|| "the session was closed".to_owned());
        shared.waker = None;
        shared.listeners.clear();
    }
}

#[cfg(test)]
mod tests {
    //! Frame by frame, over a real socket pair: the test writes and reads raw yamux bytes on
    //! one end, a session runs on the other (as the plugin side, streams going to a local
    //! listener the test accepts from).

    use super::*;
    use std::io::{Read, Write};

    struct Peer {
        raw: UnixStream,
        mux: Mux,
        server: UnixListener,
        _dir: Dir,
    }

    struct Dir(PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn peer() -> Peer {
        let dir = std::env::temp_dir().join(format!("mux-test-{:08x}", crate::grpc::random_u32()));
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("server");
        let server = UnixListener::bind(&path).unwrap();
        let (raw, ours) = UnixStream::pair().unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mux = Mux::start(
            Origin::Connected(Conn::Unix(ours)),
            Role::Server,
            Some(path),
        )
        .unwrap();
        Peer {
            raw,
            mux,
            server,
            _dir: Dir(dir),
        }
    }

    impl Peer {
        fn send(&mut self, h: Header, payload: &[u8]) {
            self.raw.write_all(&h.encode()).unwrap();
            self.raw.write_all(payload).unwrap();
        }

        fn frame(&mut self) -> (Header, Vec<u8>) {
            let mut b = [0u8; HEADER];
            self.raw.read_exact(&mut b).unwrap();
            let h = Header::decode(&b).unwrap();
            let mut payload = vec![
                0u8;
                if h.kind == TYPE_DATA {
                    h.length as usize
                } else {
                    0
                }
            ];
            self.raw.read_exact(&mut payload).unwrap();
            (h, payload)
        }

        /// Opens stream `id` and returns the local connection it was bridged to.
        fn open(&mut self, id: u32) -> UnixStream {
            self.send(Header::new(TYPE_WINDOW_UPDATE, SYN, id, 0), &[]);
            let (local, _) = self.server.accept().unwrap();
            assert_eq!(
                self.frame().0,
                Header::new(TYPE_WINDOW_UPDATE, ACK, id, 0),
                "a stream is acknowledged with an empty window update"
            );
            local
        }
    }

    fn connect(private: &Private) -> io::Result<UnixStream> {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(&private.name)?;
        UnixStream::connect_addr(&addr)
    }

    #[test]
    fn private_listeners_refuse_other_processes() {
        let mut p = peer();
        let private = p.mux.listen(false).unwrap();
        // Another process connects and writes: it is dropped, and no stream is opened.
        let script = "import socket,sys\n\
            s=socket.socket(socket.AF_UNIX)\n\
            s.connect('\\0'+sys.argv[1])\n\
            s.settimeout(5)\n\
            try:\n s.sendall(b'intruder'); r=s.recv(1)\n\
            except socket.timeout:\n r=b'still open'\n\
            except OSError:\n r=b''\n\
            sys.stdout.write(repr(r))";
        let out = std::process::Command::new("python3")
            .args(["-c", script, &private.name])
            .output()
            .expect("python3 runs");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "b''",
            "the connection is closed at once: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // This process still gets its streams.
        let mut ours = connect(&private).unwrap();
        ours.write_all(b"y").unwrap();
        assert_eq!(p.frame().0, Header::new(TYPE_WINDOW_UPDATE, SYN, 2, 0));
        assert_eq!(p.frame(), (Header::new(TYPE_DATA, 0, 2, 1), b"y".to_vec()));
    }

    #[test]
    fn an_acknowledged_knock_always_gets_its_stream() {
        let mut p = peer();
        // The dial gave up before gRPC connected: an empty stream still goes out, so the peer's
        // knocked route is used up by it and not by the next real stream.
        let abandoned = p.mux.listen(true).unwrap();
        p.mux.unlisten(&abandoned);
        assert_eq!(
            p.frame().0,
            Header::new(TYPE_WINDOW_UPDATE, SYN | FIN, 2, 0)
        );
        // A connection made just before the dial gave up gets its real stream.
        let late = p.mux.listen(true).unwrap();
        let mut local = connect(&late).unwrap();
        p.mux.unlisten(&late);
        local.write_all(b"z").unwrap();
        assert_eq!(p.frame().0, Header::new(TYPE_WINDOW_UPDATE, SYN, 4, 0));
        assert_eq!(p.frame(), (Header::new(TYPE_DATA, 0, 4, 1), b"z".to_vec()));
    }

    #[test]
    fn fin_goes_out_while_the_send_window_is_closed() {
        let mut p = peer();
        let local = p.open(1);
        // Exactly one window's worth, then EOF: the window is used up when FIN is due.
        (&local).write_all(&vec![1u8; WINDOW as usize]).unwrap();
        local.shutdown(std::net::Shutdown::Write).unwrap();
        let mut sent = 0;
        while sent < WINDOW as usize {
            let (h, payload) = p.frame();
            assert_eq!((h.kind, h.stream), (TYPE_DATA, 1));
            sent += payload.len();
        }
        assert_eq!(p.frame().0, Header::new(TYPE_WINDOW_UPDATE, FIN, 1, 0));
    }

    #[test]
    fn header_bytes_are_big_endian_with_version_zero() {
        let h = Header::new(TYPE_DATA, SYN | FIN, 0x0102_0304, 0x0a0b_0c0d);
        assert_eq!(h.encode(), [0, 0, 0, 5, 1, 2, 3, 4, 0x0a, 0x0b, 0x0c, 0x0d]);
        assert_eq!(Header::decode(&h.encode()), Ok(h));
        let mut bad = h.encode();
        bad[0] = 1;
        assert_eq!(
            Header::decode(&bad),
            Err("yamux version 1 (expected 0)".to_owned())
        );
        bad[0] = 0;
        bad[1] = 4;
        assert_eq!(
            Header::decode(&bad),
            Err("unknown yamux frame type 4".to_owned())
        );
    }

    #[test]
    fn pings_are_echoed_with_ack() {
        let mut p = peer();
        p.send(Header::new(TYPE_PING, SYN, 0, 0xfeed_beef), &[]);
        assert_eq!(p.frame().0, Header::new(TYPE_PING, ACK, 0, 0xfeed_beef));
    }

    #[test]
    fn a_ping_flood_gets_a_bounded_number_of_answers_and_the_session_goes_on() {
        let mut p = peer();
        // 10,000 pings in one write: one read, one parse; at most 64 answers are queued.
        let mut flood = Vec::new();
        for i in 0..10_000u32 {
            flood.extend_from_slice(&Header::new(TYPE_PING, SYN, 0, i).encode());
        }
        p.raw.write_all(&flood).unwrap();
        let mut answered: Vec<u32> = (0..MAX_QUEUED_PING_ACKS)
            .map(|_| p.frame().0.length)
            .collect();
        assert_eq!(answered, (0..64).collect::<Vec<u32>>());
        // Once the queued answers are written, a ping is answered again (after any answers to
        // flood pings read in later turns).
        p.send(Header::new(TYPE_PING, SYN, 0, 0xabcd), &[]);
        loop {
            let (h, _) = p.frame();
            assert_eq!((h.kind, h.flags), (TYPE_PING, ACK), "{h:?}");
            if h.length == 0xabcd {
                break;
            }
            answered.push(h.length);
        }
        assert!(
            answered.len() < 5_000,
            "{} of 10000 flood pings answered",
            answered.len()
        );
        // The session still carries streams.
        let mut local = p.open(1);
        p.send(Header::new(TYPE_DATA, 0, 1, 2), b"ok");
        let mut got = [0u8; 2];
        local.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ok");
    }

    #[test]
    fn bytes_cross_both_ways_and_fin_half_closes() {
        let mut p = peer();
        let mut local = p.open(1);
        p.send(Header::new(TYPE_DATA, 0, 1, 5), b"hello");
        let mut got = [0u8; 5];
        local.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
        local.write_all(b"world").unwrap();
        assert_eq!(
            p.frame(),
            (Header::new(TYPE_DATA, 0, 1, 5), b"world".to_vec())
        );
        // The peer's FIN shuts the local socket's write side: it reads EOF.
        p.send(Header::new(TYPE_WINDOW_UPDATE, FIN, 1, 0), &[]);
        assert_eq!(local.read(&mut got).unwrap(), 0);
        // Closing the local socket sends FIN.
        drop(local);
        assert_eq!(p.frame().0, Header::new(TYPE_WINDOW_UPDATE, FIN, 1, 0));
    }

    #[test]
    fn the_window_reopens_after_half_is_consumed_and_is_enforced() {
        let mut p = peer();
        let mut local = p.open(1);
        let half = vec![7u8; (WINDOW / 2) as usize];
        p.send(Header::new(TYPE_DATA, 0, 1, half.len() as u32), &half);
        let mut got = vec![0u8; half.len()];
        local.read_exact(&mut got).unwrap();
        assert_eq!(
            p.frame().0,
            Header::new(TYPE_WINDOW_UPDATE, 0, 1, WINDOW / 2),
            "half a window consumed gives it back"
        );
        // A full window is accepted, one byte more is not. Both frames go in one write: the
        // session reopens a window only between reads, and bytes the local socket's kernel
        // buffer takes count as consumed.
        let mut both = Header::new(TYPE_DATA, 0, 1, WINDOW).encode().to_vec();
        both.extend(vec![9u8; WINDOW as usize]);
        both.extend(Header::new(TYPE_DATA, 0, 1, 1).encode());
        both.push(1);
        p.raw.write_all(&both).unwrap();
        assert_eq!(
            p.frame().0,
            Header::new(TYPE_GO_AWAY, 0, 0, GO_AWAY_PROTOCOL),
            "overrunning the window is a protocol error"
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while p.mux.ended().is_none() {
            assert!(Instant::now() < deadline, "the session did not end");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            p.mux.ended().unwrap().contains("with 0 left in its window"),
            "{:?}",
            p.mux.ended()
        );
    }

    #[test]
    fn a_closed_send_window_holds_local_bytes_until_the_peer_opens_it() {
        let mut p = peer();
        let mut local = p.open(1);
        // Larger than the window: the session sends exactly one window, then waits.
        let blob = vec![3u8; WINDOW as usize + 1000];
        let writer = {
            let mut local = local.try_clone().unwrap();
            let blob = blob.clone();
            std::thread::spawn(move || local.write_all(&blob))
        };
        let mut sent = 0usize;
        while sent < WINDOW as usize {
            let (h, payload) = p.frame();
            assert_eq!((h.kind, h.stream), (TYPE_DATA, 1));
            sent += payload.len();
        }
        assert_eq!(sent, WINDOW as usize, "never more than the window");
        p.raw
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut b = [0u8; 1];
        assert!(p.raw.read(&mut b).is_err(), "nothing beyond the window");
        p.raw
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        p.send(Header::new(TYPE_WINDOW_UPDATE, 0, 1, 1000), &[]);
        let (h, payload) = p.frame();
        assert_eq!((h.kind, h.stream, payload.len()), (TYPE_DATA, 1, 1000));
        writer.join().unwrap().unwrap();
        local.flush().unwrap();
    }

    #[test]
    fn streams_the_peer_may_not_open_end_the_session() {
        let mut p = peer();
        // This side is the server: the peer (client) must use odd ids.
        p.send(Header::new(TYPE_WINDOW_UPDATE, SYN, 2, 0), &[]);
        assert_eq!(
            p.frame().0,
            Header::new(TYPE_GO_AWAY, 0, 0, GO_AWAY_PROTOCOL)
        );
    }

    #[test]
    fn a_stream_with_nowhere_to_go_is_reset() {
        let mut p = peer();
        let dir = p._dir.0.clone();
        drop(std::mem::replace(
            &mut p.server,
            UnixListener::bind(dir.join("other")).unwrap(),
        ));
        // The default route's socket is gone (its listener closed).
        let _ = std::fs::remove_file(dir.join("server"));
        p.send(Header::new(TYPE_WINDOW_UPDATE, SYN, 1, 0), &[]);
        assert_eq!(p.frame().0, Header::new(TYPE_WINDOW_UPDATE, RST, 1, 0));
        // The session goes on.
        p.send(Header::new(TYPE_PING, SYN, 0, 1), &[]);
        assert_eq!(p.frame().0, Header::new(TYPE_PING, ACK, 0, 1));
    }

    #[test]
    fn knocked_routes_take_the_next_streams_in_order() {
        let mut p = peer();
        let other = p._dir.0.join("broker");
        let broker = UnixListener::bind(&other).unwrap();
        p.mux.route_next(&other);
        let _first = {
            p.send(Header::new(TYPE_WINDOW_UPDATE, SYN, 1, 0), &[]);
            let (local, _) = broker.accept().unwrap();
            assert_eq!(p.frame().0, Header::new(TYPE_WINDOW_UPDATE, ACK, 1, 0));
            local
        };
        // Then the default route again.
        let _second = p.open(3);
    }

    #[test]
    fn private_listeners_open_streams_and_close_sends_go_away() {
        let mut p = peer();
        let private = p.mux.listen(true).unwrap();
        assert!(private.target().starts_with("unix-abstract:rpcplugin-mux-"));
        let mut local = connect(&private).unwrap();
        local.write_all(b"x").unwrap();
        // A server opens even ids.
        assert_eq!(p.frame().0, Header::new(TYPE_WINDOW_UPDATE, SYN, 2, 0));
        assert_eq!(p.frame(), (Header::new(TYPE_DATA, 0, 2, 1), b"x".to_vec()));
        // One connection only: the listener is gone.
        let deadline = Instant::now() + Duration::from_secs(5);
        while connect(&private).is_ok() {
            assert!(Instant::now() < deadline, "the one-shot listener stayed");
            std::thread::sleep(Duration::from_millis(5));
        }
        p.mux.close(Duration::from_secs(5));
        assert_eq!(p.frame().0, Header::new(TYPE_GO_AWAY, 0, 0, GO_AWAY_NORMAL));
        // Every socket of the session is closed: both connections read EOF.
        let mut b = [0u8; 1];
        assert_eq!(p.raw.read(&mut b).unwrap(), 0);
        assert_eq!(local.read(&mut b).unwrap(), 0);
    }

    #[test]
    fn a_peer_going_away_ends_nothing_open_but_refuses_new_streams() {
        let mut p = peer();
        let mut local = p.open(1);
        p.send(Header::new(TYPE_GO_AWAY, 0, 0, GO_AWAY_NORMAL), &[]);
        p.send(Header::new(TYPE_DATA, 0, 1, 2), b"ok");
        let mut got = [0u8; 2];
        local.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ok");
        // No new stream: a connection to a private listener is closed without a SYN.
        let private = p.mux.listen(false).unwrap();
        let mut late = connect(&private).unwrap();
        late.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(late.read(&mut got).unwrap(), 0);
        p.send(Header::new(TYPE_PING, SYN, 0, 9), &[]);
        assert_eq!(
            p.frame().0,
            Header::new(TYPE_PING, ACK, 0, 9),
            "no SYN went out"
        );
        drop(p.raw);
        let deadline = Instant::now() + Duration::from_secs(5);
        while p.mux.ended().is_none() {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            p.mux.ended().unwrap(),
            "the peer went away and closed the connection"
        );
        // The bridged socket is closed with the session.
        assert_eq!(local.read(&mut got).unwrap(), 0);
    }

    #[test]
    fn a_peer_that_does_not_read_stops_the_local_reads() {
        let mut p = peer();
        let local = p.open(1);
        // Windows are no limit here: the peer grants 1 GiB, then reads nothing.
        p.send(Header::new(TYPE_WINDOW_UPDATE, 0, 1, 1 << 30), &[]);
        local.set_nonblocking(true).unwrap();
        let chunk = vec![5u8; 64 * 1024];
        let mut accepted = 0usize;
        let mut idle_since = Instant::now();
        while idle_since.elapsed() < Duration::from_millis(500) {
            match (&local).write(&chunk) {
                Ok(n) => {
                    accepted += n;
                    idle_since = Instant::now();
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
            assert!(
                accepted < 64 << 20,
                "the session kept reading: {accepted} bytes"
            );
        }
        // The outgoing buffer (512 KiB) plus what the kernel holds in both socket pairs.
        assert!(
            accepted < 4 << 20,
            "{accepted} bytes taken while the peer read nothing"
        );
        assert!(p.mux.ended().is_none(), "a slow peer is not an error");
    }

    /// Holds the I/O thread in a task of its own until released, so that what the test writes
    /// meanwhile reaches a session's socket as one edge-triggered event.
    struct IoThreadHeld(crossbeam_channel::Sender<()>);

    fn hold_io_thread() -> IoThreadHeld {
        struct Hold {
            running: crossbeam_channel::Sender<()>,
            release: crossbeam_channel::Receiver<()>,
        }
        impl reactor::Task for Hold {
            fn run(&mut self, _: &mut Context<'_>) -> bool {
                let _ = self.running.send(());
                let _ = self.release.recv_timeout(Duration::from_secs(30));
                false
            }
        }
        let (running, started) = crossbeam_channel::bounded(1);
        let (release, released) = crossbeam_channel::bounded(1);
        reactor::register(
            None,
            Box::new(Hold {
                running,
                release: released,
            }),
        )
        .unwrap();
        started
            .recv_timeout(Duration::from_secs(30))
            .expect("the I/O thread runs the holding task");
        IoThreadHeld(release)
    }

    impl Drop for IoThreadHeld {
        fn drop(&mut self) {
            let _ = self.0.send(());
        }
    }

    #[test]
    fn a_peer_closing_right_after_its_last_frame_ends_the_session() {
        // Found by the yamux fuzz targets: data and the peer's FIN arriving in one event were
        // read as "data, drained" and the EOF was never seen.
        let mut p = peer();
        p.send(Header::new(TYPE_PING, SYN, 0, 1), &[]);
        assert_eq!(p.frame().0, Header::new(TYPE_PING, ACK, 0, 1));
        let held = hold_io_thread();
        p.send(Header::new(TYPE_PING, SYN, 0, 2), &[]);
        p.raw.shutdown(std::net::Shutdown::Write).unwrap();
        drop(held);
        // The session closes its end (whether the ping's answer got out first or not).
        p.raw
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut rest = Vec::new();
        let read = p.raw.read_to_end(&mut rest);
        assert!(read.is_ok(), "the session kept its end open: {read:?}");
        let ended = p.mux.gone().recv_timeout(Duration::from_secs(30));
        assert!(
            !matches!(ended, Err(crossbeam_channel::RecvTimeoutError::Timeout)),
            "the session did not end after its connection did"
        );
        assert_eq!(
            p.mux.ended().as_deref(),
            Some("the peer closed the connection")
        );
    }

    #[test]
    fn a_local_socket_closing_right_after_its_last_bytes_sends_fin() {
        let mut p = peer();
        let local = p.open(1);
        let held = hold_io_thread();
        (&local).write_all(b"bye").unwrap();
        drop(local);
        drop(held);
        assert_eq!(
            p.frame(),
            (Header::new(TYPE_DATA, 0, 1, 3), b"bye".to_vec())
        );
        assert_eq!(p.frame().0, Header::new(TYPE_WINDOW_UPDATE, FIN, 1, 0));
    }
}
