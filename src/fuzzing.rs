//! Entry points for the fuzz targets in `fuzz/` (built only with `--cfg fuzzing`, as `cargo fuzz`
//! builds): each feeds hostile bytes to the code a plugin or a host reaches over the wire, and
//! panics where an invariant breaks. Not part of the API.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::host::stderr::StderrSinks;
use crate::proto::plugin::{conn_info, ConnInfo};
use crate::runtime::mux::{Conn, Mux, Origin, Role};
use crate::runtime::tls::Security;
use crate::services::broker::{Broker, BrokerSetup};
use crate::wire::handshake;
use crate::wire::hclog::LogLine;

/// An error message a hostile peer can make this long at most (its text is clipped).
const MAX_ERROR_LEN: usize = 4096;

/// The handshake line: a parse never panics, errors stay short, and what parses renders back to
/// a line that parses to the same handshake.
pub fn handshake_line(line: &str, offered: &[u32]) {
    match handshake::parse(line, offered) {
        // Field 6 counts as a certificate only past 50 characters (the parser ignores shorter
        // ones): a field that decoded to few bytes renders to one the parser ignores.
        Ok(h)
            if h.server_cert_der
                .as_ref()
                .is_some_and(|der| der.len() * 4 / 3 <= 51) => {}
        Ok(h) => {
            assert!(offered.contains(&h.app_version), "{h:?} not offered");
            let again = handshake::render(
                h.app_version,
                &h.address,
                h.server_cert_der.as_deref(),
                h.multiplex,
            );
            let reparsed = handshake::parse(&again, offered)
                .unwrap_or_else(|e| panic!("{line:?} parsed, its rendering {again:?} not: {e}"));
            assert_eq!(reparsed, h, "{line:?} -> {again:?}");
        }
        Err(e) => {
            let text = e.to_string();
            assert!(text.len() <= MAX_ERROR_LEN, "a {} byte error", text.len());
        }
    }
}

/// Stderr bytes as a plugin writes them, in pieces cut at `cuts`, through the host's line
/// splitter and hclog parser: no delivered line is longer than the log buffer, and the bytes
/// delivered are the bytes written, less line endings.
pub fn stderr_stream(data: &[u8], buffer_size: usize, cuts: &[usize]) {
    let lines: Arc<Mutex<Vec<LogLine>>> = Arc::default();
    let sink = lines.clone();
    let sinks = StderrSinks {
        target: "fuzz".to_owned(),
        buffer_size,
        writer: None,
        callback: Some(Arc::new(move |line: &LogLine| {
            sink.lock().unwrap().push(line.clone())
        })),
        tail: Arc::new(Mutex::new(VecDeque::new())),
    };
    let mut splitter = sinks.lines();
    let mut rest = data;
    for &cut in cuts {
        let (piece, after) = rest.split_at(cut.min(rest.len()));
        splitter.feed(piece);
        rest = after;
    }
    splitter.feed(rest);
    splitter.finish();
    let limit = buffer_size.max(1);
    let lines = lines.lock().unwrap();
    for line in lines.iter() {
        // Each invalid UTF-8 sequence becomes one U+FFFD: characters never outnumber bytes.
        let chars = line.raw.chars().count();
        assert!(
            chars <= limit,
            "a {chars} character line with a {limit} byte buffer"
        );
    }
    // What was written is what is delivered, less the line endings.
    if data.is_ascii() && !data.contains(&b'\r') {
        let delivered: String = lines.iter().map(|l| l.raw.as_str()).collect();
        let written: Vec<u8> = data.iter().copied().filter(|&b| b != b'\n').collect();
        assert_eq!(delivered.as_bytes(), written.as_slice());
    }
}

/// The broker's `ConnInfo` sequence, as a hostile peer sends it: announcements, knocks and
/// acknowledgements for colliding ids, with dials and counts between them. The mailbox never
/// holds more than its cap, and closing leaves it empty.
pub fn broker_sequence(multiplexed: bool, long_timeout: bool, ops: &[u8]) {
    let dir = std::env::temp_dir();
    let session = multiplexed.then(|| {
        let (ours, theirs) = UnixStream::pair().expect("a socket pair");
        let mux =
            Mux::start(Origin::Connected(Conn::Unix(ours)), Role::Client, None).expect("a session");
        (mux, theirs)
    });
    let broker = Broker::new(BrokerSetup {
        dial_security: Security::Plaintext,
        serve_security: None,
        socket_dir: dir,
        timeout: if long_timeout {
            Duration::from_secs(60)
        } else {
            Duration::ZERO
        },
        mux: session.as_ref().map(|(mux, _)| mux.clone()),
    });
    let mut rest = ops;
    while let [op, tail @ ..] = rest {
        rest = tail;
        match op % 4 {
            0 | 1 => {
                let Some((info, tail)) = conn_info_from(rest) else {
                    break;
                };
                rest = tail;
                broker.deliver_for_fuzzing(info);
            }
            2 => {
                let Some((id, tail)) = take_u16(rest) else {
                    break;
                };
                rest = tail;
                // Without waiting: whatever is in the mailbox for it now.
                let _ = broker.dial_address(u32::from(id), Instant::now());
            }
            _ => {}
        }
        let pending = broker.pending_ids();
        assert!(pending <= Broker::MAX_PENDING_IDS, "{pending} ids pending");
    }
    broker.close();
    assert_eq!(broker.pending_ids(), 0, "ids pending after close");
    if let Some((mux, theirs)) = session {
        mux.close(Duration::from_secs(10));
        drop(theirs);
    }
}

fn take_u16(b: &[u8]) -> Option<(u16, &[u8])> {
    match b {
        [x, y, tail @ ..] => Some((u16::from_be_bytes([*x, *y]), tail)),
        _ => None,
    }
}

/// A `ConnInfo` from the fuzzer's bytes: a flags byte, a small id (so ids collide), then a
/// length-prefixed network and address.
fn conn_info_from(b: &[u8]) -> Option<(ConnInfo, &[u8])> {
    let [flags, tail @ ..] = b else { return None };
    let (id, tail) = take_u16(tail)?;
    let (network, tail) = take_str(tail)?;
    let (address, tail) = take_str(tail)?;
    let mut info = ConnInfo::new();
    info.service_id = u32::from(id % 2048);
    info.network = network;
    info.address = address;
    if flags & 1 != 0 {
        info.knock = protobuf::MessageField::some(conn_info::Knock {
            knock: flags & 2 != 0,
            ack: flags & 4 != 0,
            error: if flags & 8 != 0 {
                "refused".to_owned()
            } else {
                String::new()
            },
            ..Default::default()
        });
    }
    Some((info, tail))
}

fn take_str(b: &[u8]) -> Option<(String, &[u8])> {
    let [len, tail @ ..] = b else { return None };
    let len = usize::from(*len).min(tail.len());
    let (s, tail) = tail.split_at(len);
    Some((String::from_utf8_lossy(s).into_owned(), tail))
}

/// What [`yamux_session`] sets up on this side before the peer's bytes arrive.
#[derive(Debug, Clone, Copy)]
pub struct YamuxSetup {
    /// This side is the server (the plugin): the peer opens odd streams, routed to a local
    /// server that accepts and never reads. Otherwise the client (the host).
    pub server: bool,
    /// Local connections made to a private listener of the session before the peer speaks,
    /// each a stream this side opens (0 to 3).
    pub local_streams: u8,
    /// Bytes each local connection writes (so this side has data to send against its window).
    pub local_bytes: u16,
    /// End with `close()` instead of the peer's EOF.
    pub close: bool,
    /// The peer reads nothing until it has written all its bytes (pings and window updates
    /// pile up on this side meanwhile).
    pub peer_reads_late: bool,
}

static WARM: AtomicBool = AtomicBool::new(false);

/// A yamux session fed an arbitrary byte stream by its peer: it must never panic, never buffer
/// past its bounds (checked on every turn, see `Session::check_bounds`), and always end once the
/// peer's connection ends, with every socket it opened closed.
pub fn yamux_session(setup: YamuxSetup, input: &[u8]) {
    // The first session starts the shared I/O thread (its epoll and wake-up fds stay open).
    let fds_before = WARM.load(Ordering::SeqCst).then(open_fds);
    let (ours, theirs) = UnixStream::pair().expect("a socket pair");
    let server = setup.server.then(LocalServer::start);
    let role = if setup.server {
        Role::Server
    } else {
        Role::Client
    };
    let route = server.as_ref().map(|s| s.path.clone());
    let mux = Mux::start(Origin::Connected(Conn::Unix(ours)), role, route).expect("a session");
    let mut locals = Vec::new();
    if let Ok(private) = mux.listen(false) {
        for _ in 0..setup.local_streams.min(3) {
            if let Ok(mut local) = private.connect() {
                local.set_nonblocking(true).unwrap();
                let _ = local.write(&vec![0x5a; usize::from(setup.local_bytes)]);
                locals.push(local);
            }
        }
    }
    // The peer: writes the input, then ends its side; reads whatever the session sends.
    let writer = theirs.try_clone().expect("a clone");
    let input = input.to_vec();
    let writing = std::thread::spawn(move || {
        // send(MSG_NOSIGNAL): the session may close first, and a fuzzer must not die of SIGPIPE.
        // (It does not block either: a full socket buffer is waited out here.)
        let mut sent = 0;
        while sent < input.len() {
            match crate::sys::send(writer.as_raw_fd(), &input[sent..]) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(_) => break,
            }
        }
        if !setup.close {
            let _ = writer.shutdown(std::net::Shutdown::Write);
        }
    });
    let mut writing = Some(writing);
    if setup.close || setup.peer_reads_late {
        // A peer that reads nothing until it has written everything.
        let _ = writing.take().map(|w| w.join());
    }
    if setup.close {
        mux.close(Duration::from_secs(10));
    }
    let mut reader = theirs;
    reader
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut sink = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                panic!("the session neither ended nor wrote for 20 s after the peer's EOF")
            }
            Err(_) => break,
        }
    }
    let _ = writing.map(|w| w.join());
    let ended = mux.gone().recv_timeout(Duration::from_secs(20));
    assert!(
        !matches!(ended, Err(crossbeam_channel::RecvTimeoutError::Timeout)),
        "the session did not end after its connection did"
    );
    assert!(mux.ended().is_some(), "ended without a reason");
    drop((reader, locals, mux));
    drop(server);
    if let Some(before) = fds_before {
        // Sockets closed on the I/O thread are closed before `gone` disconnects.
        let after = open_fds();
        assert_eq!(before, after, "fds left behind by the session");
    }
    WARM.store(true, Ordering::SeqCst);
}

fn open_fds() -> Vec<String> {
    let mut fds: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    fds.sort();
    fds
}

/// A local gRPC server stand-in for routed streams: accepts connections and never reads them,
/// so streams see backpressure.
struct LocalServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LocalServer {
    fn start() -> LocalServer {
        let path = std::env::temp_dir().join(format!("rpcplugin-fuzz-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).expect("binding the local server");
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(conn) = conn {
                    held.push(conn);
                }
            }
        });
        LocalServer {
            path,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}
