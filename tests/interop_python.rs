//! Interoperability with pyvider-rpcplugin 0.5.5 (Python): our host driving a pyvider plugin,
//! plain and mTLS, unix and tcp. The venv is created in `target/interop/venv` on first use.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use rpcplugin::proto::kv::*;
use rpcplugin::{Address, ClientConfig, ErrorKind, RpcPluginClient, TlsMode};

fn python_plugin(m: &str, transport: &str) -> Option<(Vec<String>, ClientConfig)> {
    let venv = python_venv()?;
    let command = vec![
        venv.join("bin/python").display().to_string(),
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/interop/python/kv_plugin.py"
        )
        .to_owned(),
    ];
    let config = ClientConfig::new()
        .magic_cookie(COOKIE_KEY, COOKIE_VALUE)
        .env("KV_PROTO_DIR", venv.join("kvproto"))
        .env("KV_PLUGIN_TRANSPORT", transport)
        .env("TEST_MARKER", m)
        .start_timeout(Duration::from_secs(60));
    Some((command, config))
}

fn rust_host_python_plugin(transport: &str, auto_mtls: bool) {
    let m = marker();
    let Some((command, config)) = python_plugin(&m, transport) else {
        return;
    };
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = lines.clone();
    let config = config
        .auto_mtls(auto_mtls)
        .on_log_line(move |l| seen.lock().unwrap().push(l.raw.clone()));
    let client = RpcPluginClient::new(command, config);
    client.start().unwrap_or_else(|e| panic!("start: {e}"));
    // pyvider 0.5.5 serves TLS (a CA:FALSE P-384 certificate) only when asked for mTLS.
    let tls = if auto_mtls {
        TlsMode::AutoMtls
    } else {
        TlsMode::Plaintext
    };
    assert_eq!(client.tls_mode(), Some(tls));
    assert_eq!(client.negotiated_version(), Some(1));
    match (transport, client.address().unwrap()) {
        ("unix", Address::Unix(_)) | ("tcp", Address::Tcp(_)) => {}
        (_, other) => panic!("asked for {transport}, got {other}"),
    }
    client.ping(Duration::from_secs(10)).unwrap();

    let kv = kv(&client);
    put(&kv, "greeting", "hello");
    assert_eq!(get(&kv, "greeting"), "hello");
    assert_missing_key_is_not_found(&kv);

    // Its stdout after the handshake is drained; its stderr reaches the log callback.
    kv.speak(&SpeakRequest {
        stdout: "out-marker\n".repeat(10_000),
        stderr: "err-marker\n".into(),
        ..Default::default()
    })
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !lines.lock().unwrap().iter().any(|l| l == "err-marker") {
        assert!(Instant::now() < deadline, "stderr line never arrived");
        std::thread::sleep(Duration::from_millis(10));
    }

    // pyvider's broker is a stub: its plugin side cannot dial the host.
    let err = kv.add_via_host(&AddViaHostRequest::new()).unwrap_err();
    assert!(err.to_string().contains("stub"), "{err}");

    let pid = client.pid().unwrap();
    let socket = match client.address().unwrap() {
        Address::Unix(path) => Some(path),
        Address::Tcp(_) => None,
    };
    client.shutdown_plugin().unwrap();
    assert!(
        client.wait_for_exit(Duration::from_secs(15)),
        "pyvider exits after Shutdown"
    );
    client.close();
    assert!(is_gone(pid));
    assert!(processes_with_marker(&m).is_empty());
    if let Some(socket) = socket {
        assert!(!exists(&socket), "{} outlived close", socket.display());
    }
}

#[test]
fn killed_pyvider_plugin_leaves_no_socket_behind() {
    // pyvider ignores PLUGIN_UNIX_SOCKET_DIR; when it is killed rather than shut down, its socket
    // in the temp dir would stay. close() removes it.
    let m = marker();
    let Some((command, config)) = python_plugin(&m, "unix") else {
        return;
    };
    let client = RpcPluginClient::new(command, config.shutdown_timeout(Duration::ZERO));
    client.start().unwrap();
    let Some(Address::Unix(socket)) = client.address() else {
        panic!("unix expected")
    };
    assert!(exists(&socket));
    client.close();
    assert!(!exists(&socket), "{} outlived close", socket.display());
}

#[test]
fn rust_host_drives_pyvider_plain_unix() {
    rust_host_python_plugin("unix", false);
}

#[test]
fn rust_host_drives_pyvider_mtls_unix() {
    rust_host_python_plugin("unix", true);
}

#[test]
fn rust_host_drives_pyvider_plain_tcp() {
    rust_host_python_plugin("tcp", false);
}

#[test]
fn rust_host_drives_pyvider_mtls_tcp() {
    rust_host_python_plugin("tcp", true);
}

#[test]
fn version_negotiation_with_pyvider() {
    let m = marker();
    let Some((command, config)) = python_plugin(&m, "unix") else {
        return;
    };
    let client = RpcPluginClient::new(
        command.clone(),
        config
            .clone()
            .env("KV_PLUGIN_VERSIONS", "1,2,3")
            .protocol_versions([2, 3]),
    );
    client.start().unwrap();
    assert_eq!(client.negotiated_version(), Some(3));
    client.close();

    let client = RpcPluginClient::new(
        command,
        config
            .env("KV_PLUGIN_VERSIONS", "4,5")
            .protocol_versions([1, 2]),
    );
    let err = client.start().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Version, "{err}");
    assert!(processes_with_marker(&m).is_empty());
}

#[test]
fn asking_pyvider_for_multiplexing_is_a_clear_refusal() {
    // pyvider does not multiplex: its handshake line has no seventh field.
    let m = marker();
    let Some((command, config)) = python_plugin(&m, "unix") else {
        return;
    };
    let client = RpcPluginClient::new(command, config.grpc_broker_multiplex(true));
    let err = client.start().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    assert!(
        err.to_string()
            .contains("asked for multiplexed brokering (PLUGIN_MULTIPLEX_GRPC), and the plugin does not support it"),
        "{err}"
    );
    client.close();
    assert!(
        processes_with_marker(&m).is_empty(),
        "the plugin is stopped"
    );
}

#[test]
fn pyvider_plugin_without_cookie_fails_with_its_reason() {
    let m = marker();
    let Some((command, config)) = python_plugin(&m, "unix") else {
        return;
    };
    let err = RpcPluginClient::new(command, config.magic_cookie(COOKIE_KEY, "wrong"))
        .start()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ProcessExited, "{err}");
    assert!(err.to_string().to_lowercase().contains("cookie"), "{err}");
}

/// pyvider's own client (`kv_host.py`) loads our Rust plugin and reports as JSON.
fn python_host_rust_plugin(auto_mtls: bool) {
    let Some(venv) = python_venv() else { return };
    let m = marker();
    let output = std::process::Command::new(venv.join("bin/python"))
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/interop/python/kv_host.py"
        ))
        .arg(test_plugin())
        .env("KV_PROTO_DIR", venv.join("kvproto"))
        .env("PLUGIN_AUTO_MTLS", if auto_mtls { "true" } else { "false" })
        .env("TEST_PLUGIN_MODE", "print-env")
        .env("TEST_MARKER", &m)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "python host printed no JSON ({e}): {stdout:?}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    assert!(output.status.success(), "{report:#}");
    assert_eq!(report["put_get"], "ok", "{report:#}");
    assert_eq!(report["shutdown"], "ok", "{report:#}");
    let env = report["plugin_env"].to_string();
    assert_eq!(
        env.contains("PLUGIN_CLIENT_CERT=-----BEGIN CERTIFICATE-----"),
        auto_mtls,
        "{env}"
    );
    assert!(
        processes_with_marker(&m).is_empty(),
        "pyvider left our plugin running"
    );
}

#[test]
fn pyvider_host_drives_rust_plugin_with_mtls() {
    python_host_rust_plugin(true);
}

#[test]
fn pyvider_host_drives_rust_plugin_plaintext() {
    python_host_rust_plugin(false);
}
