//! Attaching to a plugin that is already running: in-process, and across a process boundary via
//! the `TF_REATTACH_PROVIDERS` JSON form.

mod common;

use std::time::Duration;

use common::*;
use rpcplugin::{ClientConfig, ErrorKind, ReattachConfig, RpcPluginClient};

fn launched(m: &str) -> RpcPluginClient {
    // Reattach carries no TLS material: the original host's generated key never leaves it.
    let client = RpcPluginClient::new([test_plugin()], config("serve", m).auto_mtls(false));
    client.start().unwrap();
    put(&kv(&client), "greeting", "hello");
    client
}

#[test]
fn borrowed_attachment_leaves_the_plugin_running() {
    let m = marker();
    let first = launched(&m);
    let mut reattach = first.reattach_config().unwrap();
    assert_eq!(reattach.protocol, "grpc");
    assert_eq!(reattach.protocol_version, 1);
    assert_eq!(reattach.pid, first.pid().unwrap());
    assert!(reattach.owned, "the launching host owns its plugin");
    reattach.owned = false;

    let second = RpcPluginClient::attach(reattach.clone(), ClientConfig::new()).unwrap();
    assert_eq!(second.pid(), first.pid());
    assert_eq!(second.negotiated_version(), Some(1));
    assert_eq!(get(&kv(&second), "greeting"), "hello");
    assert_eq!(second.reattach_config().unwrap(), reattach);
    second.close();

    assert!(!first.has_exited());
    first.ping(Duration::from_secs(5)).unwrap();
    assert_eq!(get(&kv(&first), "greeting"), "hello");
    first.close();
}

#[test]
fn owning_attachment_stops_the_plugin_on_close() {
    let m = marker();
    let first = launched(&m);
    let reattach = first.reattach_config().unwrap();
    let second = RpcPluginClient::attach(reattach, ClientConfig::new()).unwrap();
    second.close();
    assert!(
        first.wait_for_exit(Duration::from_secs(30)),
        "the owner's close stopped it"
    );
    assert_eq!(
        first.exit_status().and_then(|s| s.code()),
        Some(0),
        "a graceful exit"
    );
    first.close();
}

#[test]
fn attached_client_notices_the_plugin_exiting() {
    let m = marker();
    let first = launched(&m);
    let mut reattach = first.reattach_config().unwrap();
    reattach.owned = false;
    let second = RpcPluginClient::attach(reattach, ClientConfig::new()).unwrap();
    first.close();
    assert!(
        second.wait_for_exit(Duration::from_secs(30)),
        "pidfd watcher saw the exit"
    );
    assert!(second.has_exited());
    assert_eq!(
        second.exit_status(),
        None,
        "only the parent can read the status"
    );
    second.close();
}

#[test]
fn another_process_attaches_through_tf_reattach_providers() {
    let m = marker();
    let first = launched(&m);
    let mut reattach = first.reattach_config().unwrap();
    reattach.owned = false;
    let json = reattach.to_tf_reattach_providers("registry.terraform.io/example/kv");
    assert!(json.contains("\"Test\":true"), "{json}");
    let output = std::process::Command::new(test_plugin())
        .env("TEST_PLUGIN_MODE", "attach-host")
        .env("TF_REATTACH_PROVIDERS", &json)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "second host failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), "hello\n");
    assert!(
        !first.has_exited(),
        "the borrowing host must not stop the plugin"
    );
    assert_eq!(get(&kv(&first), "greeting"), "hello");
    first.close();
}

#[test]
fn attaching_to_a_missing_process_or_address_fails_clearly() {
    let gone = ReattachConfig {
        protocol: "grpc".into(),
        protocol_version: 1,
        address: rpcplugin::Address::Unix("/nonexistent/plugin.sock".into()),
        pid: 0x3fff_fff0,
        owned: false,
    };
    let err = RpcPluginClient::attach(gone.clone(), ClientConfig::new()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Reattach, "{err}");
    assert!(
        err.to_string().contains("reattachment process not found"),
        "{err}"
    );

    let config = ClientConfig::new().start_timeout(Duration::from_millis(300));
    let nobody_listens = ReattachConfig {
        pid: std::process::id(),
        ..gone.clone()
    };
    let err = RpcPluginClient::attach(nobody_listens, config).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Reattach, "{err}");
    assert!(
        err.to_string()
            .contains("cannot reattach to the plugin at unix:/nonexistent/plugin.sock"),
        "{err}"
    );

    let netrpc = ReattachConfig {
        protocol: "netrpc".into(),
        ..gone
    };
    let err = RpcPluginClient::attach(netrpc, ClientConfig::new()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol);
}

#[test]
fn owning_a_stale_pid_is_refused_and_nothing_is_signalled() {
    let m = marker();
    let first = launched(&m);
    // The reattach config names a pid that now belongs to an unrelated process.
    let mut unrelated = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let stale = ReattachConfig {
        pid: unrelated.id(),
        ..first.reattach_config().unwrap()
    };
    let err = RpcPluginClient::attach(stale.clone(), ClientConfig::new()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Reattach, "{err}");
    let address = first.address().unwrap();
    assert_eq!(
        err.to_string(),
        format!(
            "refusing to own pid {}: it does not hold the socket listening at {address}; the \
             reattach config may be stale (the plugin exited and its pid was reused). Attach \
             with owned = false to only connect",
            unrelated.id()
        )
    );
    assert_eq!(
        unrelated.try_wait().unwrap(),
        None,
        "the unrelated process is untouched"
    );
    // Borrowing (owned = false) signals nothing, so it only connects.
    let borrowed = RpcPluginClient::attach(
        ReattachConfig {
            owned: false,
            ..stale
        },
        ClientConfig::new(),
    )
    .unwrap();
    assert_eq!(get(&kv(&borrowed), "greeting"), "hello");
    borrowed.close();
    assert_eq!(unrelated.try_wait().unwrap(), None);
    unrelated.kill().unwrap();
    unrelated.wait().unwrap();

    // The real pid holds the socket: owning it works, and close stops it.
    let owner =
        RpcPluginClient::attach(first.reattach_config().unwrap(), ClientConfig::new()).unwrap();
    owner.close();
    assert!(first.wait_for_exit(Duration::from_secs(30)));
    first.close();
}

#[test]
fn pid_zero_means_no_process_to_watch() {
    let m = marker();
    let first = launched(&m);
    for owned in [false, true] {
        let none = ReattachConfig {
            pid: 0,
            owned,
            ..first.reattach_config().unwrap()
        };
        let attached = RpcPluginClient::attach(none, ClientConfig::new()).unwrap();
        assert_eq!(get(&kv(&attached), "greeting"), "hello");
        assert!(!attached.has_exited());
        assert!(!attached.wait_for_exit(Duration::from_millis(50)));
        attached.close();
        // Nothing to stop: the plugin is still serving its launcher.
        first.ping(Duration::from_secs(5)).unwrap();
    }
    first.close();
}
