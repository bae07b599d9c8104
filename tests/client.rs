//! The client against real plugin processes (our test plugin): transports, TLS, negotiation,
//! handshake failures, shutdown, and cleanup.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use rpcplugin::proto::health::HealthCheckRequest;
use rpcplugin::proto::health_grpc::HealthClient;
use rpcplugin::proto::kv_grpc::KvClient;
use rpcplugin::{Address, ErrorKind, RpcPluginClient, TlsMode};

fn start_ok(client: &RpcPluginClient) {
    if let Err(e) = client.start() {
        panic!("start failed: {e}");
    }
}

#[test]
fn plain_unix_socket() {
    let m = marker();
    let client = RpcPluginClient::new([test_plugin()], config("serve", &m).auto_mtls(false));
    start_ok(&client);
    assert_eq!(client.tls_mode(), Some(TlsMode::Plaintext));
    let Some(Address::Unix(path)) = client.address() else {
        panic!("expected unix, got {:?}", client.address());
    };
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()));
    let kv = kv(&client);
    put(&kv, "greeting", "hello");
    assert_eq!(get(&kv, "greeting"), "hello");
    client.close();
    assert!(!exists(&path), "socket {} outlived close", path.display());
}

#[test]
fn plain_tcp_in_port_range() {
    let m = marker();
    let port = free_port();
    let config = config("serve", &m)
        .auto_mtls(false)
        .env("TEST_PLUGIN_NETWORK", "tcp")
        .port_range(port, port.saturating_add(20));
    let client = RpcPluginClient::new([test_plugin()], config);
    start_ok(&client);
    let Some(Address::Tcp(addr)) = client.address() else {
        panic!("expected tcp, got {:?}", client.address());
    };
    assert!(addr.ip().is_loopback());
    assert!(
        (port..=port.saturating_add(20)).contains(&addr.port()),
        "{addr}"
    );
    let kv = kv(&client);
    put(&kv, "k", "v");
    assert_eq!(get(&kv, "k"), "v");
    client.close();
}

/// Auto mTLS: the plugin must refuse a plaintext connection on the same address, while ours
/// (presenting our certificate, pinning the plugin's) works.
fn auto_mtls(network: &str) {
    let m = marker();
    let client = RpcPluginClient::new(
        [test_plugin()],
        config("serve", &m).env("TEST_PLUGIN_NETWORK", network),
    );
    start_ok(&client);
    assert_eq!(client.tls_mode(), Some(TlsMode::AutoMtls));
    let address = client.address().unwrap();
    assert_eq!(address.network(), network);
    let kv = kv(&client);
    put(&kv, "secret", "s3cr3t");
    assert_eq!(get(&kv, "secret"), "s3cr3t");

    let target = match &address {
        Address::Unix(p) => format!("unix:{}", p.display()),
        Address::Tcp(a) => format!("ipv4:{a}"),
    };
    let plain = grpcio::ChannelBuilder::new(rpcplugin::environment()).connect(&target);
    let err = HealthClient::new(plain)
        .check_opt(
            &HealthCheckRequest::new(),
            grpcio::CallOption::default().timeout(Duration::from_secs(2)),
        )
        .expect_err("a plaintext client must not reach an mTLS plugin");
    assert!(
        matches!(
            err.rpc_code(),
            Some(grpcio::RpcStatusCode::UNAVAILABLE | grpcio::RpcStatusCode::DEADLINE_EXCEEDED)
        ),
        "{err:?}"
    );
    client.close();
}

#[test]
fn auto_mtls_unix() {
    auto_mtls("unix");
}

#[test]
fn auto_mtls_tcp() {
    auto_mtls("tcp");
}

#[test]
fn version_negotiation_picks_highest_common() {
    for (plugin, host, expected) in [
        ("1,2,3", vec![2, 3], 3),
        ("1,2,3", vec![1, 2], 2),
        ("2", vec![1, 2, 5], 2),
    ] {
        let m = marker();
        let config = config("serve", &m)
            .env("TEST_PLUGIN_VERSIONS", plugin)
            .protocol_versions(host.clone());
        let client = RpcPluginClient::new([test_plugin()], config);
        start_ok(&client);
        assert_eq!(
            client.negotiated_version(),
            Some(expected),
            "plugin {plugin}, host {host:?}"
        );
        assert_eq!(get(&kv(&client), "version"), expected.to_string());
        client.close();
    }
}

#[test]
fn no_common_version_is_a_version_error() {
    let m = marker();
    let config = config("serve", &m)
        .env("TEST_PLUGIN_VERSIONS", "4,5")
        .protocol_versions([1, 2]);
    let err = RpcPluginClient::new([test_plugin()], config)
        .start()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Version, "{err}");
    assert!(
        err.to_string()
            .contains("plugin version 4, client versions [1, 2]"),
        "{err}"
    );
    assert!(processes_with_marker(&m).is_empty());
}

#[test]
fn wrong_cookie_reports_exit_status_and_stderr() {
    let m = marker();
    let config = config("serve", &m).magic_cookie(COOKIE_KEY, "not-the-cookie");
    let err = RpcPluginClient::new([test_plugin()], config)
        .start()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ProcessExited, "{err}");
    assert_eq!(err.exit_status().and_then(|s| s.code()), Some(1), "{err}");
    assert!(
        err.stderr_tail()
            .iter()
            .any(|l| l.contains("This binary is a plugin")),
        "{:?}",
        err.stderr_tail()
    );
    assert!(err.to_string().contains("This binary is a plugin"), "{err}");
}

#[test]
fn plugin_exiting_before_handshake() {
    let m = marker();
    let err = client("exit-early", &m).start().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ProcessExited, "{err}");
    assert_eq!(err.exit_status().and_then(|s| s.code()), Some(3));
    assert_eq!(
        err.stderr_tail(),
        [
            "loading configuration",
            "fatal: config file /nonexistent/kv.hcl not found"
        ]
    );
    let text = err.to_string();
    assert!(
        text.contains("exit status: 3") && text.contains("kv.hcl not found"),
        "{text}"
    );
}

#[test]
fn handshake_rejections_leave_no_process() {
    let cases = [
        (
            "garbage",
            ErrorKind::Handshake,
            "unrecognized remote plugin message: \"Hello! I am a program, not a plugin.\"",
        ),
        (
            "wrong-core",
            ErrorKind::Protocol,
            "plugin version 2, core version 1",
        ),
        (
            "netrpc",
            ErrorKind::Protocol,
            "unsupported plugin protocol \"netrpc\"",
        ),
    ];
    for (mode, kind, text) in cases {
        let m = marker();
        let err = client(mode, &m).start().unwrap_err();
        assert_eq!(err.kind(), kind, "{mode}: {err}");
        assert!(err.to_string().contains(text), "{mode}: {err}");
        assert!(
            processes_with_marker(&m).is_empty(),
            "{mode}: plugin left running"
        );
    }
}

#[test]
fn start_timeout_is_honoured_and_the_plugin_killed() {
    let m = marker();
    let config = config("hang", &m).start_timeout(Duration::from_millis(500));
    let started = Instant::now();
    let err = RpcPluginClient::new([test_plugin()], config)
        .start()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(err.is_timeout());
    assert!(err.to_string().contains("handshake"), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert!(
        processes_with_marker(&m).is_empty(),
        "hung plugin left running"
    );
}

#[test]
fn spawn_failure_is_a_spawn_error() {
    let client = RpcPluginClient::new(["/nonexistent/plugin"], common::config("serve", "x"));
    let err = client.start().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Spawn);
    assert!(err.to_string().contains("/nonexistent/plugin"), "{err}");
}

#[test]
fn plugin_ignoring_shutdown_is_killed_after_the_grace_period() {
    let m = marker();
    let config = config("ignore-shutdown", &m).exit_grace(Duration::from_millis(300));
    let client = RpcPluginClient::new([test_plugin()], config);
    start_ok(&client);
    let pid = client.pid().unwrap();
    client.close();
    assert!(
        is_gone(pid),
        "plugin {pid} survived close (state {:?})",
        process_state(pid)
    );
    assert!(processes_with_marker(&m).is_empty());
}

#[test]
fn graceful_shutdown_exits_zero() {
    let m = marker();
    let client = client("serve", &m);
    start_ok(&client);
    client.shutdown_plugin().unwrap();
    assert!(
        client.wait_for_exit(Duration::from_secs(30)),
        "plugin exited"
    );
    let status = client.exit_status().unwrap();
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(client.has_exited());
    client.close();
}

#[test]
fn drop_without_close_leaves_no_process_or_socket_dir() {
    let m = marker();
    let client = client("serve", &m);
    start_ok(&client);
    let pid = client.pid().unwrap();
    let dir = socket_dir(&client);
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "socket dir must be private");
    drop(client);
    assert!(is_gone(pid), "pid {pid} left as {:?}", process_state(pid));
    assert!(!exists(&dir), "socket dir {} left behind", dir.display());
}

#[test]
fn close_kills_the_plugins_children_too() {
    let m = marker();
    let client = client("spawn-child", &m);
    start_ok(&client);
    let child: u32 = get(&kv(&client), "child-pid").parse().unwrap();
    assert_eq!(process_state(child), Some('S'));
    client.close();
    assert!(
        dead_or_zombie_soon(child),
        "grandchild {child} outlived close"
    );
}

#[test]
fn close_is_idempotent_and_a_closed_client_cannot_restart() {
    let m = marker();
    let client = client("serve", &m);
    start_ok(&client);
    client.start().unwrap(); // idempotent while running
    client.close();
    client.close();
    assert_eq!(client.start().unwrap_err().kind(), ErrorKind::Config);
    assert_eq!(
        client.grpc_channel().err().map(|e| e.kind()),
        Some(ErrorKind::Config)
    );
}

#[test]
fn flood_on_stdout_and_stderr_does_not_stall_the_plugin() {
    let m = marker();
    let client = client("flood", &m);
    start_ok(&client);
    let kv = kv(&client);
    put(&kv, "start", "flood"); // starts 8 MiB on each of stdout and stderr
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(&kv, "flood") != "done" {
        assert!(
            Instant::now() < deadline,
            "the plugin blocked writing its output"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(get(&kv, "start"), "flood");
    client.close();
}

#[test]
fn protocol_variables_inherited_by_the_host_never_reach_the_plugin() {
    // A host that is itself a plugin has go-plugin's variables in its environment; the host runs
    // as a child here so that no environment of this test binary changes.
    let output = std::process::Command::new(test_plugin())
        .env("TEST_PLUGIN_MODE", "env-host")
        .env("PLUGIN_MULTIPLEX_GRPC", "true")
        .env("PLUGIN_CLIENT_CERT", "inherited-cert")
        .env("PLUGIN_UNIX_SOCKET_GROUP", "wheel")
        .env("PLUGIN_PROTOCOL_VERSIONS", "9")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let env = String::from_utf8(output.stdout).unwrap();
    assert!(env.contains("PLUGIN_PROTOCOL_VERSIONS=1\n"), "{env}");
    for leaked in [
        "PLUGIN_MULTIPLEX_GRPC",
        "PLUGIN_CLIENT_CERT",
        "PLUGIN_UNIX_SOCKET_GROUP",
        "=9",
    ] {
        assert!(!env.contains(leaked), "{leaked} reached the plugin: {env}");
    }
}

#[test]
fn child_environment_is_go_plugins() {
    let m = marker();
    let workdir = std::env::temp_dir();
    let config = config("print-env", &m)
        .protocol_versions([1, 2])
        .port_range(12000, 12100)
        .env("EXTRA", "value")
        .working_dir(&workdir);
    let client = RpcPluginClient::new([test_plugin()], config);
    start_ok(&client);
    let kv = kv(&client);
    let env = get(&kv, "env");
    let lines: Vec<&str> = env.lines().collect();
    assert!(lines.contains(&"PLUGIN_PROTOCOL_VERSIONS=1,2"), "{env}");
    assert!(lines.contains(&"PLUGIN_MIN_PORT=12000"), "{env}");
    assert!(lines.contains(&"PLUGIN_MAX_PORT=12100"), "{env}");
    assert!(lines.contains(&"KV_PLUGIN=rpcplugin-kv"), "{env}");
    assert!(lines.contains(&"EXTRA=value"), "{env}");
    assert!(
        env.contains("PLUGIN_CLIENT_CERT=-----BEGIN CERTIFICATE-----"),
        "{env}"
    );
    assert!(!env.contains("PLUGIN_MULTIPLEX_GRPC"), "{env}");
    let dir = socket_dir(&client);
    assert!(
        lines.contains(&format!("PLUGIN_UNIX_SOCKET_DIR={}", dir.display()).as_str()),
        "{env}"
    );
    assert!(
        env.lines().any(|l| l.starts_with("PATH=")),
        "host env is inherited"
    );
    assert_eq!(
        std::fs::canonicalize(get(&kv, "cwd")).unwrap(),
        std::fs::canonicalize(&workdir).unwrap()
    );
    client.close();
}

#[test]
fn skip_host_env_passes_only_protocol_and_explicit_variables() {
    let m = marker();
    let config = config("print-env", &m).skip_host_env(true);
    let client = RpcPluginClient::new([test_plugin()], config);
    start_ok(&client);
    let env = get(&kv(&client), "env");
    assert!(!env.lines().any(|l| l.starts_with("PATH=")), "{env}");
    assert!(env.contains("PLUGIN_PROTOCOL_VERSIONS=1"), "{env}");
    client.close();
}

#[test]
fn user_supplied_tls() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(vec![]).unwrap();
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf("plugin.test");
    let (client_cert, client_key) = leaf("host.test");

    let m = marker();
    let config = config("user-tls", &m)
        .env("TEST_PLUGIN_CERT", &server_cert)
        .env("TEST_PLUGIN_KEY", &server_key)
        .env("TEST_PLUGIN_CLIENT_CA", ca.pem())
        .tls(
            rpcplugin::TlsConfig::new(ca.pem())
                .client_identity(client_cert, client_key)
                .server_name("plugin.test"),
        );
    let client = RpcPluginClient::new([test_plugin()], config);
    start_ok(&client);
    assert_eq!(client.tls_mode(), Some(TlsMode::User));
    put(&kv(&client), "a", "b");
    client.close();

    // The same plugin refuses a host without a client certificate.
    let m = marker();
    let config = common::config("user-tls", &m)
        .env("TEST_PLUGIN_CERT", &server_cert)
        .env("TEST_PLUGIN_KEY", &server_key)
        .env("TEST_PLUGIN_CLIENT_CA", ca.pem())
        .start_timeout(Duration::from_secs(2))
        .tls(rpcplugin::TlsConfig::new(ca.pem()).server_name("plugin.test"));
    let err = RpcPluginClient::new([test_plugin()], config)
        .start()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Tls, "{err}");
    assert!(
        err.to_string()
            .contains("wants a client certificate this host does not present"),
        "{err}"
    );
    assert!(processes_with_marker(&m).is_empty());

    // Bad PEM is a config error before anything runs.
    let config = common::config("serve", "y").tls(rpcplugin::TlsConfig::new("garbage"));
    let err = RpcPluginClient::new([test_plugin()], config)
        .start()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(
        err.to_string()
            .contains("TLS server CA: expected PEM certificate"),
        "{err}"
    );
}

#[test]
fn auto_mtls_without_a_plugin_certificate_fails_fast() {
    // A plugin configured with its own TLS sends no certificate in the handshake.
    let m = marker();
    let config = config("user-tls", &m)
        .env("TEST_PLUGIN_CERT", "unused")
        .env("TEST_PLUGIN_KEY", "unused");
    let err = RpcPluginClient::new([test_plugin()], config)
        .start()
        .unwrap_err();
    // The plugin rejects the bad PEM and exits: its reason reaches the host.
    assert_eq!(err.kind(), ErrorKind::ProcessExited, "{err}");
    assert!(err.to_string().contains("plugin TLS certificate"), "{err}");
    assert_eq!(err.exit_status().and_then(|s| s.code()), Some(1), "{err}");
}

#[test]
fn two_plugins_never_share_a_tcp_port() {
    // gRPC turns SO_REUSEPORT on by default, which would let the second plugin bind the same port
    // silently. With a one-port range the second must fail to bind instead.
    let (m1, m2) = (marker(), marker());
    let port = free_port();
    let one_port = |m: &str| {
        config("serve", m)
            .auto_mtls(false)
            .env("TEST_PLUGIN_NETWORK", "tcp")
            .port_range(port, port)
    };
    let first = RpcPluginClient::new([test_plugin()], one_port(&m1));
    first.start().unwrap();
    let second = RpcPluginClient::new([test_plugin()], one_port(&m2));
    let err = second.start().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ProcessExited, "{err}");
    assert!(
        err.to_string().contains(&format!(
            "couldn't bind plugin tcp listener: no free port in {port}..={port}"
        )),
        "{err}"
    );
    put(&kv(&first), "still", "alone");
    first.close();
}

#[test]
fn messages_beyond_four_mebibytes_pass_both_ways() {
    let m = marker();
    let client = client("serve", &m);
    client.start().unwrap();
    let kv = kv(&client);
    let big = "x".repeat(12 << 20);
    put(&kv, "big", &big);
    assert_eq!(get(&kv, "big").len(), big.len());
    client.close();
}

#[test]
fn shutdown_lets_calls_in_flight_finish() {
    let m = marker();
    let client = client("serve", &m);
    start_ok(&client);
    let kv = kv(&client);
    let slow = {
        let kv = kv.clone();
        std::thread::spawn(move || get(&kv, "slow"))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while kv
        .get(&rpcplugin::proto::kv::GetRequest {
            key: "slow-started".into(),
            ..Default::default()
        })
        .is_err()
    {
        assert!(Instant::now() < deadline, "the slow call never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    client.shutdown_plugin().unwrap();
    assert_eq!(
        slow.join().unwrap(),
        "finished",
        "the in-flight call got its reply"
    );
    assert!(client.wait_for_exit(Duration::from_secs(30)));
    assert_eq!(client.exit_status().and_then(|s| s.code()), Some(0));
    client.close();
}

#[test]
fn close_from_another_thread_cancels_a_start_in_progress() {
    fn shareable<T: Send + Sync>() {}
    shareable::<RpcPluginClient>();

    let m = marker();
    let config = config("hang", &m).start_timeout(Duration::from_secs(60));
    let client = std::sync::Arc::new(RpcPluginClient::new([test_plugin()], config));
    let starter = {
        let client = client.clone();
        std::thread::spawn(move || client.start())
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while processes_with_marker(&m).is_empty() {
        assert!(Instant::now() < deadline, "the plugin never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(client.pid(), None, "not started yet");
    client.close();
    assert!(
        processes_with_marker(&m).is_empty(),
        "close returned before the plugin was gone"
    );
    let err = starter.join().unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
    assert!(
        Instant::now() < deadline,
        "start ran into its timeout instead of being cancelled"
    );
    assert_eq!(client.start().unwrap_err().kind(), ErrorKind::Config);
}

/// Runs a host that SIGKILLs itself with its plugin running, its socket dir under `parent`;
/// returns the host's and the plugin's pids.
/// Runs a host that starts the test plugin (plain, no TLS) and dies by SIGKILL without closing
/// it. Returns the host's pid, the plugin's pid and its address (as `unix:PATH`).
fn plugin_of_a_dead_host(kill_with_host: bool, m: &str, parent: &Path) -> (u32, u32, String) {
    let host = std::process::Command::new(test_plugin())
        .env("TEST_PLUGIN_MODE", "doomed-host")
        .env(
            "DOOMED_KILL_WITH_HOST",
            if kill_with_host { "1" } else { "0" },
        )
        .env("DOOMED_SOCKET_PARENT", parent)
        .env("TEST_MARKER", m)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let host_pid = host.id();
    let output = host.wait_with_output().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&output.status),
        Some(9),
        "the host was to die by SIGKILL: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let (plugin, address) = stdout.trim().split_once(' ').unwrap();
    (host_pid, plugin.parse().unwrap(), address.to_owned())
}

fn socket_dirs_of(host_pid: u32, parent: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(parent)
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("rpcplugin-{host_pid}-"))
        })
        .map(|e| e.path())
        .collect()
}

#[test]
fn plugin_dies_with_a_host_killed_without_closing() {
    // A parent dir of its own: other tests' clients sweep only the default temp dir.
    let parent = ScratchDir::new();
    let m = marker();
    let (host, plugin, _) = plugin_of_a_dead_host(true, &m, &parent.0);
    assert!(
        dead_or_zombie_soon(plugin),
        "plugin {plugin} outlived its SIGKILLed host"
    );

    // The dead host could not remove its socket dir; the next host to start a plugin does.
    assert_eq!(
        socket_dirs_of(host, &parent.0).len(),
        1,
        "the dead host's dir is there"
    );
    let next = RpcPluginClient::new(
        [test_plugin()],
        config("serve", &marker()).socket_dir_parent(&parent.0),
    );
    start_ok(&next);
    assert!(
        socket_dirs_of(host, &parent.0).is_empty(),
        "stale socket dir not swept"
    );
    next.close();

    // Without the option the orphan keeps running (go-plugin's behaviour): clean it up here.
    let m = marker();
    let (_, plugin, address) = plugin_of_a_dead_host(false, &m, &parent.0);
    // The host is reaped, so any death signal it left for the plugin is already sent: a call the
    // plugin answers now proves it was not killed.
    let channel = grpcio::ChannelBuilder::new(rpcplugin::environment()).connect(&address);
    let orphan = KvClient::new(channel).with_call_timeout(Some(Duration::from_secs(30)));
    assert_eq!(
        get(&orphan, "pid"),
        plugin.to_string(),
        "orphan expected alive"
    );
    kill_9(plugin);
    assert!(dead_or_zombie_soon(plugin));
}

fn kill_9(pid: u32) {
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
}

#[test]
fn checksum_is_verified_before_the_plugin_runs() {
    let bytes = std::fs::read(test_plugin()).unwrap();
    let digest: String = openssl::sha::sha256(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let m = marker();
    let client = RpcPluginClient::new(
        [test_plugin()],
        config("serve", &m).sha256_checksum(digest.to_uppercase()),
    );
    start_ok(&client);
    client.close();

    let m = marker();
    let wrong = "0".repeat(64);
    let err = RpcPluginClient::new([test_plugin()], config("serve", &m).sha256_checksum(&wrong))
        .start()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Checksum, "{err}");
    assert!(
        err.to_string()
            .contains(&format!("expected sha256 {wrong}, got {digest}")),
        "{err}"
    );
    assert!(
        processes_with_marker(&m).is_empty(),
        "nothing may run after a mismatch"
    );

    let err = RpcPluginClient::new([test_plugin()], config("serve", &m).sha256_checksum("abc"))
        .start()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");

    // Programs are found through PATH like the spawn itself would.
    let err = RpcPluginClient::new(["sh"], config("serve", &m).sha256_checksum(&wrong))
        .start()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Checksum, "{err}");
    assert!(err.to_string().contains("/sh"), "{err}");
}

#[test]
fn rejected_plugin_leaves_no_socket_outside_the_socket_dir() {
    let m = marker();
    let socket = std::env::temp_dir().join(format!("rpcplugin-test-{m}.sock"));
    let config = config("wrong-version-socket", &m).env("TEST_PLUGIN_SOCKET", &socket);
    let err = RpcPluginClient::new([test_plugin()], config)
        .start()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Version, "{err}");
    assert!(processes_with_marker(&m).is_empty());
    assert!(
        !exists(&socket),
        "{} outlived the failed start",
        socket.display()
    );
}

#[test]
fn socket_dir_of_a_live_host_in_another_pid_namespace_is_kept() {
    // A host in another pid namespace (a container sharing the temp dir) has a pid that means
    // nothing here: its dir looks like a dead host's by name. Its held lock says otherwise.
    let parent = ScratchDir::new();
    let foreign = parent.0.join("rpcplugin-999999999-0-0badf00d");
    std::fs::create_dir(&foreign).unwrap();
    let lock = std::fs::File::open(&foreign).unwrap();
    // SAFETY: flock on a file we own.
    assert_eq!(
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) },
        0
    );
    let sweeping = RpcPluginClient::new(
        [test_plugin()],
        config("serve", &marker()).socket_dir_parent(&parent.0),
    );
    start_ok(&sweeping);
    sweeping.close();
    assert!(exists(&foreign), "a live host's socket dir was swept");

    // Once its host is gone (the lock released), the next host to start a plugin there sweeps
    // it: another process here (a host sweeps a parent at its first start in it, then once a
    // minute). That host dies by SIGKILL, leaving its own dir (and a plugin killed with it).
    drop(lock);
    let m = marker();
    let (host, plugin, _) = plugin_of_a_dead_host(true, &m, &parent.0);
    assert!(
        dead_or_zombie_soon(plugin),
        "plugin {plugin} outlived its SIGKILLed host"
    );
    assert!(!exists(&foreign), "a dead host's socket dir was kept");
    assert_eq!(
        socket_dirs_of(host, &parent.0).len(),
        1,
        "the sweeping host's own dir"
    );
    assert_eq!(
        parent.list(),
        socket_dirs_of(host, &parent.0),
        "the sweeping host's own dir is all that is left"
    );
}
