//! Bounded resources: the broker's mailbox against a peer that announces thousands of ids, the
//! handler thread cap, and graceful stops that wait for their own server's calls only.

mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use rpcplugin::proto::kv::*;
use rpcplugin::proto::kv_grpc::AdderClient;
use rpcplugin::{Broker, ClientConfig, ErrorKind, RpcPluginClient};

fn go_plugin() -> Option<String> {
    go_peers().map(|dir| dir.join("go-kv-plugin").display().to_string())
}

/// Every warning the library logs in this test binary.
struct Warnings(Mutex<Vec<String>>);

impl log::Log for Warnings {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Warn
    }
    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            self.0.lock().unwrap().push(record.args().to_string());
        }
    }
    fn flush(&self) {}
}

static WARNINGS: Warnings = Warnings(Mutex::new(Vec::new()));

/// The broker's lines about dropped announcements, and the count of drops they report.
fn drop_warnings() -> (Vec<String>, u64) {
    let lines: Vec<String> = WARNINGS
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("announced by the peer"))
        .cloned()
        .collect();
    let count = lines
        .iter()
        .map(|l| match l.split_once(" more broker ids") {
            Some((n, _)) => n.parse::<u64>().unwrap_or_else(|_| panic!("{l}")),
            None => 1,
        })
        .sum();
    (lines, count)
}

#[test]
fn broker_mailbox_stays_bounded_against_a_peer_announcing_thousands_of_ids() {
    let Some(plugin) = go_plugin() else { return };
    log::set_logger(&WARNINGS).unwrap();
    log::set_max_level(log::LevelFilter::Warn);
    const IDS: u64 = 3000;
    let broker_timeout = Duration::from_secs(2);
    let m = marker();
    let config = ClientConfig::new()
        .magic_cookie(COOKIE_KEY, COOKIE_VALUE)
        .env("TEST_MARKER", &m)
        .auto_mtls(false)
        .broker_timeout(broker_timeout);
    let client = RpcPluginClient::new([plugin], config);
    client.start().unwrap();
    let broker = client.broker().unwrap();
    // go-plugin's own broker announces 3000 ids that this host never dials.
    let kv = kv(&client);
    let announced = Instant::now();
    kv.put(&PutRequest {
        key: "announce".into(),
        value: IDS.to_string().into_bytes(),
        ..Default::default()
    })
    .unwrap();
    // They arrive over the broker stream; at no point may more than the cap be kept. Each one is
    // either pending or counted as dropped, so all have arrived once the two add up to 3000.
    let deadline = Instant::now() + Duration::from_secs(60);
    let pending = loop {
        let pending = broker.pending_ids();
        assert!(pending <= Broker::MAX_PENDING_IDS, "{pending} ids pending");
        if pending as u64 + broker.dropped_ids() == IDS {
            break pending;
        }
        assert!(
            Instant::now() < deadline,
            "the announcements never all arrived: {pending} pending, {} dropped",
            broker.dropped_ids()
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    // None can have expired before the broker timeout, counted from before the first was sent:
    // the mailbox is then exactly full. (A machine slow enough to take longer skips this check.)
    if announced.elapsed() < broker_timeout {
        assert_eq!(pending, Broker::MAX_PENDING_IDS);
        assert_eq!(broker.dropped_ids(), IDS - Broker::MAX_PENDING_IDS as u64);
    }
    // Announcements expire with the broker timeout: the mailbox empties by itself.
    let deadline = Instant::now() + broker_timeout + Duration::from_secs(60);
    while broker.pending_ids() > 0 {
        assert!(Instant::now() < deadline, "announcements never expired");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(broker.dropped_ids(), IDS);
    // A dial that times out leaves nothing behind either.
    let Err(err) = broker.dial(4_000_000) else {
        panic!("a dial of an id never announced succeeded")
    };
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert_eq!(broker.pending_ids(), 0);
    // The broker still works.
    let offered = kv.serve_adder(&ServeAdderRequest::new()).unwrap();
    let sum = AdderClient::new(broker.dial(offered.adder_id).unwrap())
        .add(&AddRequest {
            a: 2,
            b: 3,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(sum.sum, 5);
    client.close();
    // 3000 drops, but only a few lines in the log: the first drop, one per 10 s, one on close,
    // and together they count every drop.
    let (lines, count) = drop_warnings();
    let most = 2 + announced.elapsed().as_secs() / 10;
    assert!(
        (1..=most as usize).contains(&lines.len()),
        "{} lines about dropped ids (at most {most} expected): {lines:#?}",
        lines.len()
    );
    assert_eq!(count, IDS, "{lines:#?}");
}

#[test]
fn handler_cap_refuses_calls_with_resource_exhausted_instead_of_waiting() {
    let m = marker();
    let client = RpcPluginClient::new(
        [test_plugin()],
        config("serve", &m)
            .env("TEST_PLUGIN_MAX_HANDLERS", "4")
            .env("TEST_PLUGIN_GRACE_MS", "8000"),
    );
    client.start().unwrap();
    let kv = kv(&client);
    // The broker and stdio streams hold two handler threads for the whole session; two
    // streaming calls that never end take the rest.
    let req = DownloadRequest {
        key: "stall".into(),
        ..Default::default()
    };
    // A handler thread is freed just after its reply is sent (the health check's, right after
    // start): a stream refused for want of one is tried again until two are running.
    let mut streams = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while streams.len() < 2 {
        let started = kv.download(&req).and_then(|mut replies| {
            let first = replies.recv()?;
            Ok((replies, first))
        });
        match started {
            Ok((replies, first)) => {
                assert!(first.is_some());
                streams.push(replies);
            }
            Err(e) => {
                assert_eq!(
                    e.rpc_code(),
                    Some(grpcio::RpcStatusCode::RESOURCE_EXHAUSTED),
                    "{e}"
                );
                assert!(
                    Instant::now() < deadline,
                    "no handler thread was ever freed"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    let err = kv
        .get(&GetRequest {
            key: "pid".into(),
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(
        err.rpc_code(),
        Some(grpcio::RpcStatusCode::RESOURCE_EXHAUSTED),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("all 4 handler threads of this process are busy"),
        "{err}"
    );
    // Ending the streams frees their threads; calls are served again.
    drop(streams);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = kv.get(&GetRequest {
            key: "pid".into(),
            ..Default::default()
        });
        match got {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(
                    e.rpc_code(),
                    Some(grpcio::RpcStatusCode::RESOURCE_EXHAUSTED),
                    "{e}"
                );
                assert!(Instant::now() < deadline, "threads never freed");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    client.close();
}

#[test]
fn graceful_stop_waits_for_its_own_servers_calls_only() {
    let m = marker();
    // The plugin would give in-flight calls of its main server 8 s after Shutdown.
    let client = RpcPluginClient::new(
        [test_plugin()],
        config("serve", &m)
            .auto_mtls(false)
            .env("TEST_PLUGIN_GRACE_MS", "8000"),
    );
    client.start().unwrap();
    let kv = kv(&client);
    put(&kv, "slow-adder", "yes");
    // A brokered server of the plugin is busy with a 10 s call.
    let offered = kv.serve_adder(&ServeAdderRequest::new()).unwrap();
    let adder = AdderClient::new(client.broker().unwrap().dial(offered.adder_id).unwrap());
    let slow = std::thread::spawn(move || {
        adder.add(&AddRequest {
            a: 1,
            b: 1,
            ..Default::default()
        })
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while get_opt(&kv, "slow-add").as_deref() != Some("started") {
        assert!(Instant::now() < deadline, "the slow call never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The main server has nothing in flight: Shutdown ends the plugin at once, without waiting
    // for the brokered server's call (which the plugin's broker cancels).
    client.shutdown_plugin().unwrap();
    assert!(
        client.wait_for_exit(Duration::from_secs(5)),
        "the plugin waited for another server's call"
    );
    assert_eq!(client.exit_status().and_then(|s| s.code()), Some(0));
    let result = slow.join().unwrap();
    assert!(
        result.is_err(),
        "the brokered call cannot have finished: {result:?}"
    );
    client.close();
}

fn get_opt(kv: &rpcplugin::proto::kv_grpc::KvClient, key: &str) -> Option<String> {
    kv.get(&GetRequest {
        key: key.into(),
        ..Default::default()
    })
    .ok()
    .map(|r| String::from_utf8(r.value).unwrap())
}
