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
    let dir = std::env::temp_dir().join(format!("mux-test-{:08x}", crate::runtime::random_u32()));
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
    private.connect()
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
