//! Broker sub-connections, GRPCStdio, plugin logs and process death, against real plugin
//! processes.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use rpcplugin::proto::kv::*;
use rpcplugin::proto::kv_grpc::{create_adder, AdderClient};
use rpcplugin::{ErrorKind, LogLine, RpcPluginClient};

fn bidirectional_broker(auto_mtls: bool) {
    let m = marker();
    let client = RpcPluginClient::new([test_plugin()], config("serve", &m).auto_mtls(auto_mtls));
    client.start().unwrap();
    let broker = client.broker().unwrap();
    let kv = kv(&client);

    // Host -> plugin -> host: the plugin dials the host's Adder during the request.
    let adder = HostAdder::default();
    let id = broker.next_id();
    assert_eq!(id, 1, "ids start at 1");
    broker
        .accept_and_serve(id, vec![create_adder(adder.clone())])
        .unwrap();
    let reply = kv
        .add_via_host(&AddViaHostRequest {
            adder_id: id,
            a: 40,
            b: 2,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(reply.sum, 42);
    assert_eq!(adder.calls(), 1, "the host's Adder served the callback");

    // Plugin offers, host dials.
    let offered = kv.serve_adder(&ServeAdderRequest::new()).unwrap();
    let channel = broker.dial(offered.adder_id).unwrap();
    let sum = AdderClient::new(channel)
        .add(&AddRequest {
            a: 2,
            b: 3,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(sum.sum, 5);

    let dir = socket_dir(&client);
    let broker_sockets: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("broker"))
        .collect();
    // The host's listener and the plugin's both live in the private socket dir.
    assert_eq!(broker_sockets.len(), 2, "{broker_sockets:?}");
    client.close();
    assert!(!exists(&dir));
}

#[test]
fn broker_both_directions_with_auto_mtls() {
    bidirectional_broker(true);
}

#[test]
fn broker_both_directions_plaintext() {
    bidirectional_broker(false);
}

#[test]
fn broker_dial_of_an_id_never_announced_times_out() {
    let m = marker();
    let config = config("serve", &m).broker_timeout(Duration::from_millis(300));
    let client = RpcPluginClient::new([test_plugin()], config);
    client.start().unwrap();
    let err = client
        .broker()
        .unwrap()
        .dial(999)
        .err()
        .expect("dial must fail");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(err.to_string().contains("broker id 999"), "{err}");

    // The plugin side has the same rule (go-plugin's 5 s): the call fails with its reason.
    let err = kv(&client)
        .add_via_host(&AddViaHostRequest {
            adder_id: 77,
            ..Default::default()
        })
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("timeout waiting for connection info for broker id 77"),
        "{err}"
    );
    client.close();
}

#[test]
fn stdio_stream_and_logs_reach_the_host() {
    let m = marker();
    let (out, err, raw) = (
        SharedBuf::default(),
        SharedBuf::default(),
        SharedBuf::default(),
    );
    let lines: Arc<Mutex<Vec<LogLine>>> = Arc::default();
    let seen = lines.clone();
    let config = config("serve", &m)
        .stdio_stdout(out.clone())
        .stdio_stderr(err.clone())
        .stderr_writer(raw.clone())
        .on_log_line(move |l| seen.lock().unwrap().push(l.clone()));
    let client = RpcPluginClient::new([test_plugin()], config);
    client.start().unwrap();
    kv(&client)
        .speak(&SpeakRequest {
            stdout: "out-marker\n".into(),
            stderr: "err-marker\n".into(),
            log_message: "log-marker".into(),
            ..Default::default()
        })
        .unwrap();
    assert!(
        out.wait_for("out-marker\n"),
        "stdout over GRPCStdio: {:?}",
        out.text()
    );
    assert!(
        err.wait_for("err-marker\n"),
        "stderr over GRPCStdio: {:?}",
        err.text()
    );
    assert!(raw.wait_for("log-marker"), "raw stderr: {:?}", raw.text());
    assert!(!out.text().contains("err-marker") && !err.text().contains("out-marker"));
    client.close();

    let lines = lines.lock().unwrap();
    let start = lines
        .iter()
        .find(|l| l.message == "starting test plugin")
        .expect("the plugin's startup log line");
    assert!(start.json);
    assert_eq!(start.level, log::Level::Debug);
    assert_eq!(start.module.as_deref(), Some("test-plugin"));
    assert_eq!(start.fields, vec![("mode".to_owned(), "serve".to_owned())]);
    let marker_line = lines.iter().find(|l| l.message == "log-marker").unwrap();
    assert_eq!(marker_line.level, log::Level::Info);
    assert!(raw
        .text()
        .starts_with("{\"@level\":\"debug\",\"@message\":\"starting test plugin\""));
}

#[test]
fn every_line_written_before_exit_is_delivered() {
    let m = marker();
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = lines.clone();
    let config =
        config("exit-early", &m).on_log_line(move |l| seen.lock().unwrap().push(l.raw.clone()));
    let err = RpcPluginClient::new([test_plugin()], config)
        .start()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ProcessExited);
    assert_eq!(
        *lines.lock().unwrap(),
        [
            "loading configuration",
            "fatal: config file /nonexistent/kv.hcl not found"
        ]
    );
}

#[test]
fn plugin_dying_mid_session_is_noticed_and_explained() {
    let m = marker();
    let exits: Arc<Mutex<Vec<Option<i32>>>> = Arc::default();
    let seen = exits.clone();
    let levels: Arc<Mutex<Vec<(log::Level, String)>>> = Arc::default();
    let seen_levels = levels.clone();
    let config = config("serve", &m)
        .on_exit(move |status| seen.lock().unwrap().push(status.code()))
        .on_log_line(move |l| seen_levels.lock().unwrap().push((l.level, l.raw.clone())));
    let client = RpcPluginClient::new([test_plugin()], config);
    client.start().unwrap();
    assert!(!client.has_exited());
    let kv = kv(&client);
    let rpc_err = kv
        .put(&PutRequest {
            key: "crash".into(),
            ..Default::default()
        })
        .unwrap_err();
    let err = client.call_error(rpc_err);
    assert_eq!(err.kind(), ErrorKind::ProcessExited, "{err}");
    assert_eq!(err.exit_status().and_then(|s| s.code()), Some(42));
    assert!(
        err.stderr_tail()
            .iter()
            .any(|l| l == "panic: asked to crash"),
        "{err}"
    );
    assert!(client.has_exited());
    // on_exit runs on a thread of its own, just after the exit is recorded.
    let waited = std::time::Instant::now();
    while exits.lock().unwrap().is_empty() && waited.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        *exits.lock().unwrap(),
        [Some(42)],
        "on_exit ran once with the status"
    );

    // Later calls fail promptly with the same explanation.
    let err = client.ping(Duration::from_secs(5)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ProcessExited, "{err}");
    assert!(levels
        .lock()
        .unwrap()
        .contains(&(log::Level::Error, "panic: asked to crash".to_owned())));
    client.close();
    assert_eq!(
        exits.lock().unwrap().len(),
        1,
        "close of a dead plugin is not another exit"
    );
}

#[test]
fn on_exit_does_not_fire_for_a_normal_close() {
    let m = marker();
    let exits = Arc::new(AtomicU32::new(0));
    let seen = exits.clone();
    let config = config("serve", &m).on_exit(move |_| {
        seen.fetch_add(1, Ordering::SeqCst);
    });
    let client = RpcPluginClient::new([test_plugin()], config);
    client.start().unwrap();
    client.close();
    assert_eq!(exits.load(Ordering::SeqCst), 0);
}

#[test]
fn many_clients_in_parallel_share_the_runtime_safely() {
    let threads: Vec<_> = (0..8)
        .map(|i| {
            std::thread::spawn(move || {
                let m = marker();
                let client = RpcPluginClient::new([test_plugin()], config("serve", &m));
                client.start().unwrap_or_else(|e| panic!("client {i}: {e}"));
                let kv = kv(&client);
                for n in 0..50 {
                    put(&kv, "n", &format!("{i}-{n}"));
                    assert_eq!(get(&kv, "n"), format!("{i}-{n}"));
                }
                let broker = client.broker().unwrap();
                let id = broker.next_id();
                broker
                    .accept_and_serve(id, vec![create_adder(HostAdder::default())])
                    .unwrap();
                let sum = kv
                    .add_via_host(&AddViaHostRequest {
                        adder_id: id,
                        a: i,
                        b: 1,
                        ..Default::default()
                    })
                    .unwrap();
                assert_eq!(sum.sum, i + 1);
                let pid = client.pid().unwrap();
                client.close();
                assert!(is_gone(pid));
                m
            })
        })
        .collect();
    for t in threads {
        let m = t.join().expect("a client thread panicked");
        assert!(processes_with_marker(&m).is_empty());
    }
}

/// `close()` from an `on_log_line` callback (which runs on the shared I/O thread) finishes on a
/// thread of its own: the plugin is reaped, not left a zombie because the thread that notices
/// exits was busy closing, and another plugin's log lines keep flowing.
#[test]
fn close_from_a_log_callback_reaps_the_plugin() {
    let m = marker();
    let slot: Arc<std::sync::OnceLock<Arc<RpcPluginClient>>> = Arc::default();
    let in_callback = slot.clone();
    let closing = config("serve", &m).on_log_line(move |line: &LogLine| {
        if line.message == "close me" {
            if let Some(client) = in_callback.get() {
                client.close();
            }
        }
    });
    let client = Arc::new(RpcPluginClient::new([test_plugin()], closing));
    let _ = slot.set(client.clone());
    client.start().unwrap();
    let pid = client.pid().unwrap();

    let other_lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = other_lines.clone();
    let other = RpcPluginClient::new(
        [test_plugin()],
        config("serve", &m)
            .on_log_line(move |l: &LogLine| seen.lock().unwrap().push(l.message.clone())),
    );
    other.start().unwrap();

    // The reply may or may not arrive before the close cuts the connection.
    let _ = kv(&client).speak(&SpeakRequest {
        log_message: "close me".into(),
        ..Default::default()
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !is_gone(pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        is_gone(pid),
        "plugin {pid} not reaped after a close from its log callback (state {:?})",
        process_state(pid)
    );
    kv(&other)
        .speak(&SpeakRequest {
            log_message: "still here".into(),
            ..Default::default()
        })
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !other_lines
        .lock()
        .unwrap()
        .iter()
        .any(|l| l == "still here")
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(other_lines
        .lock()
        .unwrap()
        .iter()
        .any(|l| l == "still here"));
    other.close();
    assert!(processes_with_marker(&m).is_empty());
}
