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
    let missing = kv
        .get(&GetRequest {
            key: "nope".into(),
            ..Default::default()
        })
        .unwrap_err();
    assert!(
        matches!(&missing, grpcio::Error::RpcFailure(s) if s.code() == grpcio::RpcStatusCode::NOT_FOUND),
        "{missing:?}"
    );

    // Its stdout after the handshake is drained; its stderr reaches the log callback.
    kv.speak(&SpeakRequest {
        stdout: "out-marker\n".repeat(10_000),
        stderr: "err-marker\n".into(),
        ..Default::default()
    })
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
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
    client.close().unwrap();
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
    assert!(
        !socket.starts_with(socket_dir_of_client_env()),
        "pyvider chose its own dir"
    );
    client.close().unwrap();
    assert!(!exists(&socket), "{} outlived close", socket.display());
}
