//! Multiplexed brokering (`PLUGIN_MULTIPLEX_GRPC`) between our host and our Rust plugin, both
//! real processes: every connection is a yamux stream in the one socket the plugin announced.
//! (Against go-plugin's host and plugin: `tests/interop_go.rs`.)

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::*;
use rpcplugin::proto::kv::*;
use rpcplugin::{ErrorKind, RpcPluginClient, TlsMode};

fn muxed(mode: &str, m: &str, auto_mtls: bool) -> RpcPluginClient {
    RpcPluginClient::new(
        [test_plugin()],
        config(mode, m)
            .auto_mtls(auto_mtls)
            .grpc_broker_multiplex(true),
    )
}

fn session(auto_mtls: bool) {
    let m = marker();
    let out = SharedBuf::default();
    let client = RpcPluginClient::new(
        [test_plugin()],
        config("serve", &m)
            .auto_mtls(auto_mtls)
            .grpc_broker_multiplex(true)
            .stdio_stdout(out.clone()),
    );
    client.start().unwrap_or_else(|e| panic!("start: {e}"));
    let handshake = client.handshake().unwrap();
    assert!(handshake.multiplex, "the plugin announces field 7");
    let expected = if auto_mtls {
        TlsMode::AutoMtls
    } else {
        TlsMode::Plaintext
    };
    assert_eq!(client.tls_mode(), Some(expected));
    let dir = socket_dir(&client);
    client.ping(Duration::from_secs(5)).unwrap();

    let kv = kv(&client);
    put(&kv, "greeting", "hello");
    assert_eq!(get(&kv, "greeting"), "hello");
    assert_missing_key_is_not_found(&kv);

    // 3 MiB each way: many windows' worth, so flow control has to reopen them.
    round_trip_blob(&kv, "blob", &blob(3 << 20));

    // Calls from several threads at once share the session.
    std::thread::scope(|s| {
        for t in 0..4 {
            let kv = kv.clone();
            s.spawn(move || {
                for i in 0..25 {
                    let key = format!("k{t}-{i}");
                    put(&kv, &key, &key);
                    assert_eq!(get(&kv, &key), key);
                }
            });
        }
    });

    // The broker, both ways, several times: each dial knocks and opens its own stream.
    let broker = client.broker().unwrap();
    let adder = HostAdder::default();
    for round in 0..3 {
        assert_eq!(add_via_host(&broker, &kv, &adder, 40, round), 40 + round);
        assert_eq!(add_via_plugin(&broker, &kv, 2, 3), 5);
    }
    assert_eq!(adder.calls(), 3);

    // An id nobody serves: the peer holds the knock, the dial times out and says so.
    let err = broker.dial(999).err().expect("nothing serves id 999");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(
        err.to_string()
            .contains("the acknowledgement of the knock for broker id 999"),
        "{err}"
    );

    kv.speak(&SpeakRequest {
        stdout: "out-marker\n".into(),
        ..Default::default()
    })
    .unwrap();
    assert!(out.wait_for("out-marker"), "GRPCStdio: {:?}", out.text());

    let pid = client.pid().unwrap();
    client.close();
    assert_eq!(client.exit_status().and_then(|s| s.code()), Some(0));
    assert!(is_gone(pid));
    assert!(
        !exists(&dir),
        "the socket dir (private sockets included) is gone"
    );
    assert!(processes_with_marker(&m).is_empty());
}

#[test]
fn multiplexed_session_plaintext() {
    session(false);
}

#[test]
fn multiplexed_session_with_auto_mtls() {
    session(true);
}

#[test]
fn a_plugin_killed_mid_call_fails_the_call_and_close_is_bounded() {
    let m = marker();
    let client = muxed("serve", &m, false);
    client.start().unwrap();
    let kv = kv(&client);
    let req = DownloadRequest {
        key: "stall".into(),
        ..Default::default()
    };
    let mut replies = kv.download(&req).unwrap();
    assert_eq!(replies.next().unwrap().unwrap().data, b"first");
    let pid = client.pid().unwrap();
    // SAFETY: kill on the plugin's pid, which this test started and has not reaped.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let ended = Instant::now();
    let err = replies
        .next()
        .expect("the stream reports its end")
        .unwrap_err();
    assert!(ended.elapsed() < Duration::from_secs(10));
    assert_eq!(err.kind(), ErrorKind::Rpc, "{err}");
    let began = Instant::now();
    client.close();
    assert!(began.elapsed() < client_max_close(&client));
    assert!(is_gone(pid));
    assert!(processes_with_marker(&m).is_empty());
}

fn client_max_close(_client: &RpcPluginClient) -> Duration {
    rpcplugin::ClientConfig::new().max_close_duration()
}

#[test]
fn multiplexed_over_tcp() {
    let m = marker();
    let client = RpcPluginClient::new(
        [test_plugin()],
        config("serve", &m)
            .env("TEST_PLUGIN_NETWORK", "tcp")
            .grpc_broker_multiplex(true),
    );
    client.start().unwrap();
    assert_eq!(client.address().unwrap().network(), "tcp");
    let kv = kv(&client);
    put(&kv, "k", "over tcp");
    assert_eq!(get(&kv, "k"), "over tcp");
    let broker = client.broker().unwrap();
    assert_eq!(add_via_plugin(&broker, &kv, 1, 1), 2);
    client.close();
    assert!(processes_with_marker(&m).is_empty());
}

#[test]
fn a_plugin_that_never_acknowledges_a_stream_fails_start_clearly() {
    let m = marker();
    let client = RpcPluginClient::new(
        [test_plugin()],
        config("mux-mute", &m)
            .auto_mtls(false)
            .grpc_broker_multiplex(true)
            .start_timeout(Duration::from_secs(2)),
    );
    let began = Instant::now();
    let err = client.start().unwrap_err();
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "{:?}",
        began.elapsed()
    );
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("/mute (multiplexed)"),
        "names the plugin's socket: {err}"
    );
    assert!(
        text.contains(
            "1 yamux stream(s) opened over the multiplexed connection were never acknowledged"
        ),
        "{err}"
    );
    eprintln!("{err}");
    client.close();
    assert!(processes_with_marker(&m).is_empty());
}

#[test]
fn multiplexing_cannot_be_combined_with_attach() {
    let reattach = rpcplugin::ReattachConfig {
        protocol: "grpc".into(),
        protocol_version: 1,
        address: rpcplugin::Address::Unix("/nonexistent/plugin".into()),
        pid: 0,
        owned: false,
    };
    let err = RpcPluginClient::attach(
        reattach,
        rpcplugin::ClientConfig::new().grpc_broker_multiplex(true),
    )
    .and_then(|c| c.start())
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(
        err.to_string().contains("cannot be used with attach"),
        "{err}"
    );
}

/// The plugin side, run by hand with `PLUGIN_MULTIPLEX_GRPC=true`: the test is its host at the
/// byte level.
struct Raw {
    child: std::process::Child,
    address: String,
    _scratch: ScratchDir,
}

fn raw_plugin(scratch: ScratchDir) -> (Raw, String) {
    let mut child = std::process::Command::new(test_plugin())
        .env(COOKIE_KEY, COOKIE_VALUE)
        .env("PLUGIN_MULTIPLEX_GRPC", "true")
        .env("PLUGIN_PROTOCOL_VERSIONS", "1")
        .env("PLUGIN_UNIX_SOCKET_DIR", &scratch.0)
        .env_remove("PLUGIN_CLIENT_CERT")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let line = line.trim().to_owned();
    let address = line.split('|').nth(3).unwrap().to_owned();
    (
        Raw {
            child,
            address,
            _scratch: scratch,
        },
        line,
    )
}

impl Drop for Raw {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_exit(
    child: &mut std::process::Child,
    within: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn the_plugin_announces_multiplexing_and_speaks_yamux_on_its_socket() {
    let scratch = ScratchDir::new();
    let dir = scratch.0.clone();
    let (mut raw, line) = raw_plugin(scratch);
    assert!(line.starts_with("1|1|unix|"), "{line}");
    assert!(line.ends_with("|grpc||true"), "field 7 is \"true\": {line}");
    let mut conn = UnixStream::connect(&raw.address).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // A yamux ping (type 2, SYN, opaque 0x01020304) comes back as an ACK with the same value.
    conn.write_all(&[0, 2, 0, 1, 0, 0, 0, 0, 1, 2, 3, 4])
        .unwrap();
    let mut reply = [0u8; 12];
    conn.read_exact(&mut reply).unwrap();
    assert_eq!(reply, [0, 2, 0, 2, 0, 0, 0, 0, 1, 2, 3, 4]);
    // A stream (window update, SYN, id 1) is acknowledged (window update, ACK, id 1).
    conn.write_all(&[0, 1, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0])
        .unwrap();
    conn.read_exact(&mut reply).unwrap();
    assert_eq!(reply, [0, 1, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0]);
    // Only one connection is taken: a second one is refused.
    assert!(UnixStream::connect(&raw.address).is_err());

    // The host's connection ends: nobody can reach the plugin now, so it stops, cleanly.
    drop(conn);
    let status = wait_exit(&mut raw.child, Duration::from_secs(30))
        .expect("the plugin exits when its host's connection ends");
    assert_eq!(status.code(), Some(0));
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
    assert!(left.is_empty(), "sockets left behind: {left:?}");
}

#[test]
fn a_protocol_error_from_the_host_ends_the_plugin() {
    let (mut raw, _) = raw_plugin(ScratchDir::new());
    let mut conn = UnixStream::connect(&raw.address).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // Version 7 does not exist: the plugin answers go-away (type 3) with code 1 (protocol
    // error), and closes.
    conn.write_all(&[7, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0])
        .unwrap();
    let mut reply = Vec::new();
    conn.read_to_end(&mut reply).unwrap();
    assert_eq!(reply, [0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    let status = wait_exit(&mut raw.child, Duration::from_secs(30)).expect("the plugin exits");
    assert_eq!(status.code(), Some(0));
}
