//! The session task: one connection, its streams, each bridged to a local socket, and the
//! private listeners, all run as one task of the I/O thread.

use super::*;

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
pub(super) struct Session {
    role: Role,
    conn: Option<Conn>,
    accept: Option<ListenSource>,
    watching: bool,
    /// The connection is watched for room to write (`out` holds bytes).
    watching_output: bool,
    next_id: u32,
    streams: HashMap<u32, Stream>,
    listeners: Vec<(crate::sys::PrivateListener, String, bool)>,
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
    /// A session over `conn` (or the connection `accept` will take), not running yet.
    pub(super) fn new(
        role: Role,
        conn: Option<Conn>,
        accept: Option<ListenSource>,
        shared: Arc<Mutex<Shared>>,
        gone_tx: Sender<()>,
    ) -> Session {
        Session {
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
            inbuf: Vec::with_capacity(MAX_DATA),
            out: Vec::new(),
            out_pos: 0,
            remote_go_away: false,
            peer_fault: false,
            queued_ping_acks: 0,
            shared,
            _gone: gone_tx,
            failed: None,
            scratch: vec![0; MAX_DATA],
            dirty: Vec::new(),
            by_fd: HashMap::new(),
            blocked: Vec::new(),
            retry_accept: false,
        }
    }

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
            if !self.streams.contains_key(&id) {
                continue;
            }
            self.peer_to_local(id);
            let reset = self.local_to_peer(id, &mut chunk);
            if reset {
                self.drop_stream(id, true);
            } else if self.streams.get(&id).is_some_and(Stream::done) {
                self.drop_stream(id, false);
            }
        }
        self.scratch = chunk;
    }

    /// Writes what the peer sent on stream `id` to its local socket, reopens the peer's window
    /// once half is consumed, and half-closes the socket after the peer's FIN.
    fn peer_to_local(&mut self, id: u32) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
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
        let mut window_update = None;
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
        if let Some(h) = window_update {
            self.queue(h, &[]);
        }
    }

    /// Reads stream `id`'s local socket into data frames while the send window and the
    /// outgoing buffer allow, and sends FIN at its EOF. True when the socket failed and the
    /// stream must be reset.
    fn local_to_peer(&mut self, id: u32, chunk: &mut [u8]) -> bool {
        loop {
            let pending = self.pending_out();
            let Some(s) = self.streams.get_mut(&id) else {
                return false;
            };
            if s.fin_sent {
                return false;
            }
            if s.send_window == 0 {
                // FIN takes no window: a local socket at EOF says so now.
                if crate::sys::peek_eof(s.local.as_raw_fd()) {
                    s.fin_sent = true;
                    self.queue(Header::new(TYPE_WINDOW_UPDATE, FIN, id, 0), &[]);
                }
                return false;
            }
            if pending >= OUT_SOFT_LIMIT {
                if !self.blocked.contains(&id) {
                    self.blocked.push(id);
                }
                return false;
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
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
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
        let (streams, largest) = (self.streams.len(), largest.unwrap_or(0));
        assert!(streams <= MAX_STREAMS, "{streams} streams open");
        assert!(
            largest <= WINDOW as usize,
            "a stream buffers {largest} bytes, more than its window"
        );
        let inbuf = self.inbuf.len();
        assert!(
            inbuf <= HEADER + WINDOW as usize + MAX_DATA,
            "{inbuf} bytes of unparsed frames"
        );
        let pending_out = self.pending_out();
        assert!(
            self.failed.is_some() || pending_out <= OUT_HARD_LIMIT,
            "{pending_out} bytes wait to be sent and the session goes on"
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
