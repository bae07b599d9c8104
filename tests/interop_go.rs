//! Interoperability with the real go-plugin (v1.8): our host driving a Go plugin, and go-plugin's
//! host driving our Rust plugin. The Go programs live in `tests/interop/go/` and are built into
//! `target/interop/` on first use.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use rpcplugin::proto::kv::*;
use rpcplugin::{ClientConfig, ErrorKind, LogLine, RpcPluginClient, TlsMode};

fn go_plugin() -> Option<String> {
    go_peers().map(|dir| dir.join("go-kv-plugin").display().to_string())
}

fn go_config(m: &str) -> ClientConfig {
    ClientConfig::new()
        .magic_cookie(COOKIE_KEY, COOKIE_VALUE)
        .env("TEST_MARKER", m)
        .start_timeout(Duration::from_secs(30))
}

/// Everything a session with a Go plugin can do, in one mode (with multiplexing: every
/// connection a yamux stream in one socket).
fn rust_host_go_plugin(auto_mtls: bool, multiplex: bool) {
    let Some(plugin) = go_plugin() else { return };
    let m = marker();
    let (out, err) = (SharedBuf::default(), SharedBuf::default());
    let lines: Arc<Mutex<Vec<LogLine>>> = Arc::default();
    let seen = lines.clone();
    let config = go_config(&m)
        .auto_mtls(auto_mtls)
        .grpc_broker_multiplex(multiplex)
        .stdio_stdout(out.clone())
        .stdio_stderr(err.clone())
        .on_log_line(move |l| seen.lock().unwrap().push(l.clone()));
    let client = RpcPluginClient::new([plugin], config);
    client.start().unwrap_or_else(|e| panic!("start: {e}"));
    let expected_tls = if auto_mtls {
        TlsMode::AutoMtls
    } else {
        TlsMode::Plaintext
    };
    assert_eq!(client.tls_mode(), Some(expected_tls));
    assert_eq!(client.negotiated_version(), Some(1));
    assert_eq!(client.handshake().unwrap().multiplex, multiplex);
    let dir = socket_dir(&client);
    assert!(
        client
            .address()
            .unwrap()
            .address_string()
            .starts_with(&dir.display().to_string()),
        "go-plugin honours PLUGIN_UNIX_SOCKET_DIR"
    );
    client.ping(Duration::from_secs(5)).unwrap();
    if multiplex {
        // One connection to the plugin's socket carries everything.
        assert_eq!(
            sockets_of(client.pid().unwrap()),
            2,
            "its listener and our one connection"
        );
    }

    let kv = kv(&client);
    put(&kv, "greeting", "hello");
    assert_eq!(get(&kv, "greeting"), "hello");
    assert_missing_key_is_not_found(&kv);

    // Broker, host serves: the Go plugin dials back into us during the call.
    let broker = client.broker().unwrap();
    let adder = HostAdder::default();
    assert_eq!(add_via_host(&broker, &kv, &adder, 40, 2), 42);
    assert_eq!(adder.calls(), 1);
    // Broker, plugin serves: we dial the Go plugin's Adder.
    assert_eq!(add_via_plugin(&broker, &kv, 2, 3), 5);
    if multiplex {
        assert_eq!(
            sockets_of(client.pid().unwrap()),
            2,
            "brokered connections ride in the one multiplexed connection"
        );
    }

    // Stdio over GRPCStdio, logs (hclog JSON) over the real stderr.
    kv.speak(&SpeakRequest {
        stdout: "out-marker\n".into(),
        stderr: "err-marker\n".into(),
        log_message: "log-marker".into(),
        ..Default::default()
    })
    .unwrap();
    assert!(
        out.wait_for("out-marker"),
        "GRPCStdio stdout: {:?}",
        out.text()
    );
    assert!(
        err.wait_for("err-marker"),
        "GRPCStdio stderr: {:?}",
        err.text()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = lines
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.message == "log-marker")
            .cloned();
        if let Some(line) = found {
            assert!(line.json, "{line:?}");
            assert_eq!(line.level, log::Level::Info, "{line:?}");
            assert!(line.timestamp.is_some(), "{line:?}");
            break;
        }
        assert!(Instant::now() < deadline, "hclog line never arrived");
        std::thread::sleep(Duration::from_millis(10));
    }

    // Graceful shutdown: GRPCController.Shutdown makes go-plugin exit 0.
    let pid = client.pid().unwrap();
    client.shutdown_plugin().unwrap();
    assert!(client.wait_for_exit(Duration::from_secs(30)));
    assert_eq!(client.exit_status().and_then(|s| s.code()), Some(0));
    client.close();
    assert!(is_gone(pid));
    assert!(!exists(&dir));
}

/// How many sockets process `pid` holds open.
fn sockets_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count()
}

#[test]
fn rust_host_drives_go_plugin_plaintext() {
    rust_host_go_plugin(false, false);
}

#[test]
fn rust_host_drives_go_plugin_multiplexed_plaintext() {
    rust_host_go_plugin(false, true);
}

#[test]
fn rust_host_drives_go_plugin_multiplexed_with_auto_mtls() {
    rust_host_go_plugin(true, true);
}

#[test]
fn rust_host_drives_go_plugin_with_auto_mtls() {
    rust_host_go_plugin(true, false);
}

/// Streaming against go-plugin's Go plugin, from a host with no `futures` dependency: a 16 MiB
/// blob up in 1 MiB chunks and back in 100000-byte chunks, an echo on two threads, and a
/// client-streaming call the Go handler ends with status OK and no reply message.
fn streaming_with_go_plugin(auto_mtls: bool, multiplex: bool) {
    let Some(plugin) = go_plugin() else { return };
    let m = marker();
    let config = go_config(&m)
        .auto_mtls(auto_mtls)
        .grpc_broker_multiplex(multiplex);
    let client = RpcPluginClient::new([plugin], config);
    client.start().unwrap();
    let kv = kv(&client);

    let blob: Vec<u8> = (0..16usize << 20).map(|i| (i * 7 % 251) as u8).collect();
    let mut upload = kv.upload().unwrap();
    for part in blob.chunks(1 << 20) {
        upload
            .send(Chunk {
                key: "blob".into(),
                data: part.to_vec(),
                ..Default::default()
            })
            .unwrap();
    }
    let reply = upload.finish().unwrap();
    assert_eq!(
        (reply.key.as_str(), reply.size),
        ("blob", blob.len() as u64)
    );
    let mut back = Vec::new();
    let mut chunks = 0;
    for item in kv
        .download(&DownloadRequest {
            key: "blob".into(),
            chunk_size: 100_000,
            ..Default::default()
        })
        .unwrap()
    {
        back.extend_from_slice(&item.unwrap().data);
        chunks += 1;
    }
    assert_eq!(chunks, blob.len().div_ceil(100_000));
    assert!(back == blob, "downloaded bytes differ");

    let (mut sender, replies) = kv.echo().unwrap().split();
    let writer = std::thread::spawn(move || {
        for i in 0..50 {
            sender
                .send(Chunk {
                    key: format!("k{i}"),
                    ..Default::default()
                })
                .map_err(|e| format!("send k{i}: {e}"))?;
        }
        sender.close_send().map_err(|e| format!("close_send: {e}"))
    });
    // Everything the call said, so a failure shows how it ended on both sides.
    let echoed: Vec<_> = replies.map(|r| r.map(|c| c.key)).collect();
    let sent = writer.join().unwrap();
    let keys: Vec<String> = echoed
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .cloned()
        .collect();
    assert!(
        sent.is_ok() && keys.len() == echoed.len(),
        "echo: sending ended with {sent:?}; the replies were {echoed:?}"
    );
    assert_eq!(keys, (0..50).map(|i| format!("k{i}")).collect::<Vec<_>>());

    // grpc-go lets a client-streaming handler return without a reply: status OK, no message.
    let mut upload = kv.upload().unwrap();
    upload
        .send(Chunk {
            key: "no-reply".into(),
            ..Default::default()
        })
        .unwrap();
    let err = upload.finish().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    assert_eq!(
        err.to_string(),
        "/rpcplugin.example.KV/Upload: the plugin ended the call with status OK but sent no \
         reply message (a client-streaming call must answer exactly one)"
    );
    // A handler that ends the call while the host is still sending: the sends fail with the
    // call's status, never a panic, and finish reports the same status.
    for (key, expect_reply) in [("reject", false), ("early", true)] {
        let mut upload = kv.upload().unwrap();
        let mut send_error = None;
        for _ in 0..200 {
            let chunk = Chunk {
                key: key.into(),
                data: vec![7; 64 << 10],
                ..Default::default()
            };
            if let Err(e) = upload.send(chunk) {
                send_error = Some(e);
                break;
            }
        }
        let send_error = send_error.expect("12 MiB cannot all fit before the plugin answers");
        // A second send after the failure answers from its state (grpcio would panic if polled).
        let again = upload.send(Chunk::new()).unwrap_err();
        let finished = upload.finish();
        if expect_reply {
            assert!(
                send_error.to_string().contains("already answered"),
                "{send_error}"
            );
            assert!(again.to_string().contains("already answered"), "{again}");
            let reply = finished.unwrap();
            assert_eq!(reply.key, "early");
            assert_eq!(reply.size, 64 << 10);
        } else {
            assert_eq!(
                send_error.rpc_code(),
                Some(grpcio::RpcStatusCode::INVALID_ARGUMENT),
                "{send_error}"
            );
            let err = finished.unwrap_err();
            assert_eq!(
                err.rpc_code(),
                Some(grpcio::RpcStatusCode::INVALID_ARGUMENT),
                "{err}"
            );
            assert!(err.to_string().contains("are refused"), "{err}");
        }
    }

    // The connection is fine afterwards.
    put(&kv, "after", "yes");
    assert_eq!(get(&kv, "after"), "yes");
    client.close();
}

#[test]
fn rust_host_streams_with_go_plugin_plaintext() {
    streaming_with_go_plugin(false, false);
}

#[test]
fn rust_host_streams_with_go_plugin_with_auto_mtls() {
    streaming_with_go_plugin(true, false);
}

/// 16 MiB each way and a bidirectional echo through our yamux and HashiCorp's.
#[test]
fn rust_host_streams_with_go_plugin_multiplexed() {
    streaming_with_go_plugin(true, true);
}

#[test]
fn version_negotiation_with_go_plugin() {
    let Some(plugin) = go_plugin() else { return };
    let m = marker();
    let config = go_config(&m)
        .env("KV_PLUGIN_VERSIONS", "1,2,3")
        .protocol_versions([2, 3]);
    let client = RpcPluginClient::new([plugin.clone()], config);
    client.start().unwrap();
    assert_eq!(client.negotiated_version(), Some(3));
    client.close();

    let config = go_config(&m)
        .env("KV_PLUGIN_VERSIONS", "4,5")
        .protocol_versions([1, 2]);
    let err = RpcPluginClient::new([plugin], config).start().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Version, "{err}");
    assert!(err.to_string().contains("plugin version 4"), "{err}");
    assert!(processes_with_marker(&m).is_empty());
}

#[test]
fn go_plugin_flooding_stdout_and_stderr_does_not_stall() {
    let Some(plugin) = go_plugin() else { return };
    let m = marker();
    let client = RpcPluginClient::new([plugin], go_config(&m).env("KV_PLUGIN_MODE", "flood"));
    client.start().unwrap();
    let kv = kv(&client);
    put(&kv, "start", "flood"); // 4 MiB each to GRPCStdio stdout, stderr and the real stderr
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(&kv, "flood") != "done" {
        assert!(
            Instant::now() < deadline,
            "the Go plugin blocked writing its output"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    client.close();
    assert!(processes_with_marker(&m).is_empty());
}

#[test]
fn go_plugin_run_by_hand_refuses_without_cookie() {
    let Some(plugin) = go_plugin() else { return };
    let m = marker();
    let config = go_config(&m).magic_cookie(COOKIE_KEY, "wrong");
    let err = RpcPluginClient::new([plugin], config).start().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ProcessExited, "{err}");
    assert_eq!(err.exit_status().and_then(|s| s.code()), Some(1));
    assert!(err.to_string().contains("This binary is a plugin"), "{err}");
}

/// go-plugin's own host (`go-kv-host`) loads our Rust plugin and reports each step as JSON.
fn go_host_rust_plugin(auto_mtls: bool, multiplex: bool) -> serde_json::Value {
    let dir = go_peers().expect("go peers");
    let scratch = ScratchDir::new();
    let output = std::process::Command::new(dir.join("go-kv-host"))
        .arg(test_plugin())
        .env("GO_HOST_AUTO_MTLS", if auto_mtls { "1" } else { "0" })
        .env("GO_HOST_MULTIPLEX", if multiplex { "1" } else { "0" })
        .env("TMPDIR", &scratch.0)
        .output()
        .unwrap();
    assert!(
        scratch.is_empty(),
        "our plugin left files behind: {:?}",
        scratch.list()
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "go host printed no JSON ({e}): stdout {stdout:?}, stderr {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    assert!(
        output.status.success(),
        "go host failed: {report:#}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    report
}

fn check_go_host_report(report: &serde_json::Value) {
    assert_go_host_steps_ok(report);
    assert_eq!(report["negotiated_version"], 1, "{report:#}");
    assert_eq!(report["protocol"], "grpc", "{report:#}");
    assert!(
        report["speak_stdout"]
            .as_str()
            .unwrap_or("")
            .contains("out-marker"),
        "{report:#}"
    );
    assert!(
        report["speak_stderr"]
            .as_str()
            .unwrap_or("")
            .contains("err-marker"),
        "{report:#}"
    );
    assert_eq!(report["log_seen"], true, "{report:#}");
    assert_eq!(report["exited"], true, "{report:#}");
}

#[test]
fn go_host_drives_rust_plugin_plaintext() {
    if go_peers().is_none() {
        return;
    }
    check_go_host_report(&go_host_rust_plugin(false, false));
}

#[test]
fn go_host_drives_rust_plugin_with_auto_mtls() {
    if go_peers().is_none() {
        return;
    }
    check_go_host_report(&go_host_rust_plugin(true, false));
}

#[test]
fn go_host_with_multiplexing_drives_rust_plugin_plaintext() {
    if go_peers().is_none() {
        return;
    }
    let report = go_host_rust_plugin(false, true);
    check_go_host_report(&report);
    assert_eq!(report["multiplexed"], true, "{report:#}");
    assert_eq!(
        report["host_sockets"], 1,
        "one connection carries all: {report:#}"
    );
}

#[test]
fn go_host_with_multiplexing_drives_rust_plugin_with_auto_mtls() {
    if go_peers().is_none() {
        return;
    }
    let report = go_host_rust_plugin(true, true);
    check_go_host_report(&report);
    assert_eq!(report["multiplexed"], true, "{report:#}");
    assert_eq!(
        report["host_sockets"], 1,
        "one connection carries all: {report:#}"
    );
}

/// Runs one test of this binary again in a child process, with `PATH` reduced to the system
/// directories (no Go there) and `extra` set.
fn rerun_without_go(test: &str, extra: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env("PATH", "/usr/bin:/bin")
        .env_remove(SKIP_INTEROP);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn a_missing_go_toolchain_fails_unless_the_run_opts_out() {
    assert!(
        !std::path::Path::new("/usr/bin/go").exists() && !std::path::Path::new("/bin/go").exists(),
        "this check needs Go outside the system directories"
    );
    let failed = rerun_without_go("version_negotiation_with_go_plugin", &[]);
    let text = String::from_utf8_lossy(&failed.stdout).into_owned()
        + &String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success(), "passed without Go: {text}");
    assert!(
        text.contains("`go` is required for the interop tests") && text.contains(SKIP_INTEROP),
        "{text}"
    );
    let skipped = rerun_without_go(
        "version_negotiation_with_go_plugin",
        &[(SKIP_INTEROP, "go")],
    );
    let text = String::from_utf8_lossy(&skipped.stderr);
    assert!(skipped.status.success(), "{text}");
    assert!(text.contains("SKIPPING the go interop tests"), "{text}");
}
