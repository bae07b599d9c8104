//! Socket paths and a long temp dir: a unix socket path is at most 107 bytes on Linux, and a
//! `TMPDIR` that leaves no room must not stop a plugin from starting (go-plugin's own host fails
//! there: Terraform issues 22198 and 32787). One test, because it sets `TMPDIR` for the whole
//! process: every step runs with a 200-byte temp dir.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use rpcplugin::{ClientConfig, ErrorKind, RpcPluginClient};

/// A directory whose path is exactly `len` bytes, removed on drop.
struct LongDir(PathBuf);

impl LongDir {
    fn new(len: usize) -> LongDir {
        let base = format!("/tmp/rpcplugin-long-{}-", std::process::id());
        let path = PathBuf::from(format!("{base}{}", "d".repeat(len - base.len())));
        std::fs::create_dir_all(&path).unwrap();
        assert_eq!(path.as_os_str().len(), len);
        LongDir(path)
    }

    fn is_empty(&self) -> bool {
        std::fs::read_dir(&self.0).unwrap().next().is_none()
    }
}

impl Drop for LongDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_200_byte_temp_dir_works_for_host_and_plugin_and_a_long_socket_dir_is_a_clear_error() {
    let tmpdir = LongDir::new(200);
    // Before any other thread of this process exists (the only test in this binary).
    std::env::set_var("TMPDIR", &tmpdir.0);
    assert_eq!(std::env::temp_dir(), tmpdir.0);

    host_picks_a_short_socket_dir(
        &tmpdir,
        RpcPluginClient::new([test_plugin()], config("serve", &marker())),
    );
    if let Some(go) = go_peers() {
        let go_config = ClientConfig::new()
            .magic_cookie(COOKIE_KEY, COOKIE_VALUE)
            .start_timeout(Duration::from_secs(30));
        host_picks_a_short_socket_dir(
            &tmpdir,
            RpcPluginClient::new([go.join("go-kv-plugin")], go_config),
        );
        go_host_drives_our_plugin_with_the_long_temp_dir(&go, &tmpdir);
    }
    a_long_socket_dir_parent_is_a_config_error();
    a_long_plugin_unix_socket_dir_is_a_config_error_from_the_plugin();
}

/// The host's socket dir goes to /tmp when the temp dir leaves no room, and is gone after close.
fn host_picks_a_short_socket_dir(tmpdir: &LongDir, client: RpcPluginClient) {
    client
        .start()
        .unwrap_or_else(|e| panic!("start with a 200-byte TMPDIR: {e}"));
    let dir = socket_dir(&client);
    assert_eq!(dir.parent(), Some(Path::new("/tmp")), "{}", dir.display());
    let kv = kv(&client);
    put(&kv, "long", "path");
    assert_eq!(get(&kv, "long"), "path");
    let broker = client.broker().unwrap();
    assert_eq!(
        add_via_plugin(&broker, &kv, 2, 3),
        5,
        "the plugin's broker socket"
    );
    client.close();
    assert!(!exists(&dir), "{} outlived close", dir.display());
    assert!(tmpdir.is_empty(), "nothing went into the long TMPDIR");
}

/// Our plugin, under go-plugin's host (which sets no `PLUGIN_UNIX_SOCKET_DIR`), binds its
/// sockets in /tmp instead of the long temp dir. Multiplexed, so go-plugin's host itself needs
/// no socket of its own (its broker listener would be made in the temp dir, and fail to bind).
fn go_host_drives_our_plugin_with_the_long_temp_dir(go: &Path, tmpdir: &LongDir) {
    let output = std::process::Command::new(go.join("go-kv-host"))
        .arg(test_plugin())
        .env("GO_HOST_AUTO_MTLS", "1")
        .env("GO_HOST_MULTIPLEX", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "go host: {stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("go host printed no JSON ({e}): {stdout}\n{stderr}"));
    assert_go_host_steps_ok(&report);
    assert!(tmpdir.is_empty(), "nothing went into the long TMPDIR");
}

/// A configured parent is never second-guessed: too long is a Config error that names it and
/// the limit, before any process starts.
fn a_long_socket_dir_parent_is_a_config_error() {
    let parent = LongDir::new(120);
    let m = marker();
    let client = RpcPluginClient::new(
        [test_plugin()],
        config("serve", &m).socket_dir_parent(&parent.0),
    );
    let err = client.start().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    let text = err.to_string();
    for part in [
        "socket_dir_parent",
        &parent.0.display().to_string(),
        "107-byte limit",
        "at most 33 bytes",
    ] {
        assert!(text.contains(part), "{part:?} missing from: {text}");
    }
    assert!(
        processes_with_marker(&m).is_empty(),
        "no plugin was started"
    );
    assert!(parent.is_empty());
}

/// Our plugin run with a `PLUGIN_UNIX_SOCKET_DIR` too long for a socket exits 1 saying so,
/// instead of failing a bind.
fn a_long_plugin_unix_socket_dir_is_a_config_error_from_the_plugin() {
    let dir = LongDir::new(90);
    let output = std::process::Command::new(test_plugin())
        .env(COOKIE_KEY, COOKIE_VALUE)
        .env("PLUGIN_PROTOCOL_VERSIONS", "1")
        .env("PLUGIN_UNIX_SOCKET_DIR", &dir.0)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        output.stdout.is_empty(),
        "no handshake line: {:?}",
        output.stdout
    );
    for part in [
        "PLUGIN_UNIX_SOCKET_DIR",
        "90 bytes long",
        "107-byte limit",
        "at most 74 bytes",
    ] {
        assert!(stderr.contains(part), "{part:?} missing from: {stderr}");
    }
    assert!(dir.is_empty());
}
