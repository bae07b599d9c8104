//! Streaming and call control against the Rust test plugin, with no `futures` anywhere: blocking
//! client-streaming, server-streaming and bidirectional calls, cancellation seen by handlers,
//! call deadlines, and handlers that block without stalling anyone else.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rpcplugin::proto::kv::*;
use rpcplugin::proto::kv_grpc::{create_kv, Kv, KvClient};
use rpcplugin::server::{CallContext, ReplySink};
use rpcplugin::ErrorKind;

/// Polls `key` until it exists with a value other than `pending` (bounded), and returns it.
fn wait_for_value(kv: &KvClient, key: &str, pending: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let req = GetRequest {
            key: key.into(),
            ..Default::default()
        };
        if let Ok(reply) = kv.get(&req) {
            let value = String::from_utf8(reply.value).unwrap();
            if value != pending {
                return value;
            }
        }
        assert!(Instant::now() < deadline, "{key} stayed {pending:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn rust_plugin_round_trips_a_blob_by_streaming() {
    let m = marker();
    let client = client("serve", &m);
    client.start().unwrap();
    let kv = kv(&client);
    round_trip_blob(&kv, "blob", &blob(12 << 20));
    // The uploaded value is also readable with a unary call.
    assert_eq!(
        kv.get(&GetRequest {
            key: "blob".into(),
            ..Default::default()
        })
        .unwrap()
        .value
        .len(),
        12 << 20
    );
    client.close();
}

#[test]
fn duplex_call_split_across_two_threads() {
    let m = marker();
    let client = client("serve", &m);
    client.start().unwrap();
    let kv = kv(&client);
    let (mut sender, replies) = kv.echo().unwrap().split();
    let writer = std::thread::spawn(move || {
        for i in 0..200 {
            sender
                .send(chunk(&format!("k{i}"), &blob(i * 100)))
                .unwrap();
        }
        sender.close_send().unwrap();
    });
    let got: Vec<Chunk> = replies.map(|r| r.unwrap()).collect();
    writer.join().unwrap();
    assert_eq!(got.len(), 200);
    for (i, c) in got.iter().enumerate() {
        assert_eq!(c.key, format!("k{i}"));
        assert_eq!(c.data, blob(i * 100));
    }
    client.close();
}

#[test]
fn duplex_call_on_one_thread_with_recv() {
    let m = marker();
    let client = client("serve", &m);
    client.start().unwrap();
    let mut echo = kv(&client).echo().unwrap();
    for word in ["one", "two", "three"] {
        echo.send(chunk(word, word.as_bytes())).unwrap();
        let back = echo.recv().unwrap().expect("an echo");
        assert_eq!(back.key, word);
    }
    echo.close_send().unwrap();
    assert!(echo.recv().unwrap().is_none(), "the plugin ends the call");
    client.close();
}

#[test]
fn server_streaming_error_status_reaches_the_iterator() {
    let m = marker();
    let client = client("serve", &m);
    client.start().unwrap();
    let mut req = DownloadRequest::new();
    req.key = "missing".into();
    let mut replies = kv(&client).download(&req).unwrap();
    let err = replies.next().unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Rpc, "{err}");
    assert_eq!(err.rpc_code(), Some(grpcio::RpcStatusCode::NOT_FOUND));
    assert!(
        err.to_string()
            .contains("/rpcplugin.example.KV/Download failed: NOT_FOUND"),
        "{err}"
    );
    assert!(
        replies.next().is_none(),
        "the stream is over after its error"
    );
    client.close();
}

#[test]
fn dropping_a_reply_stream_cancels_the_handler() {
    let m = marker();
    let client = client("serve", &m);
    client.start().unwrap();
    let kv = kv(&client);
    let mut req = DownloadRequest::new();
    req.key = "stall".into();
    let mut replies = kv.download(&req).unwrap();
    assert_eq!(replies.recv().unwrap().unwrap().data, b"first");
    drop(replies);
    // The handler polls CallContext::is_cancelled and records that it saw the cancellation.
    assert_eq!(wait_for_value(&kv, "stall", "running"), "cancelled");
    client.close();
}

#[test]
fn recv_timeout_leaves_the_call_open_and_a_canceller_ends_it() {
    let m = marker();
    let client = client("serve", &m);
    client.start().unwrap();
    let mut req = DownloadRequest::new();
    req.key = "stall".into();
    let mut replies = kv(&client).download(&req).unwrap();
    assert_eq!(replies.recv().unwrap().unwrap().data, b"first");
    let err = replies
        .recv_timeout(Duration::from_millis(200))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(err.to_string().contains("still open"), "{err}");
    // Another thread cancels once this one is blocked in recv.
    let canceller = replies.canceller();
    let me = thread_id();
    let cancelling = std::thread::spawn(move || {
        wait_until_blocked(me);
        canceller.cancel();
    });
    let err = replies.recv().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
    cancelling.join().unwrap();
    client.close();
}

#[test]
fn call_deadline_is_a_timeout_error_naming_the_method_and_the_handler_sees_it() {
    let m = marker();
    let client = client("serve", &m);
    client.start().unwrap();
    let kv = kv(&client);
    let req = GetRequest {
        key: "until-cancelled".into(),
        ..Default::default()
    };
    let err = kv
        .get_opt(
            &req,
            grpcio::CallOption::default().timeout(Duration::from_millis(300)),
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(
        err.to_string()
            .starts_with("/rpcplugin.example.KV/Get: no reply before the call's deadline"),
        "{err}"
    );
    assert_eq!(
        wait_for_value(&kv, "until-cancelled-state", "running"),
        "cancelled (deadline set: true)"
    );
    client.close();
}

#[test]
fn default_call_timeout_bounds_a_hung_call() {
    let m = marker();
    let client = client("serve", &m);
    client.start().unwrap();
    let kv = kv(&client);
    assert_eq!(kv.call_timeout(), Some(rpcplugin::DEFAULT_CALL_TIMEOUT));
    let short = kv
        .clone()
        .with_call_timeout(Some(Duration::from_millis(400)));
    let err = short
        .get(&GetRequest {
            key: "until-cancelled".into(),
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(
        err.to_string()
            .contains("the stub's default call timeout of 400ms"),
        "{err}"
    );
    // Streams: each wait is bounded the same way, and the call stays usable.
    let mut req = DownloadRequest::new();
    req.key = "stall".into();
    let mut replies = short.download(&req).unwrap();
    assert!(replies.recv().unwrap().is_some());
    let err = replies.recv().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(
        err.to_string().contains("/rpcplugin.example.KV/Download"),
        "{err}"
    );
    client.close();
}

#[test]
fn handler_context_carries_method_metadata_and_deadline() {
    let m = marker();
    let client = client("serve", &m);
    client.start().unwrap();
    let mut headers = grpcio::MetadataBuilder::new();
    headers.add_str("x-trace-id", "trace-42").unwrap();
    let reply = kv(&client)
        .get_opt(
            &GetRequest {
                key: "whoami".into(),
                ..Default::default()
            },
            grpcio::CallOption::default()
                .headers(headers.build())
                .timeout(Duration::from_secs(60)),
        )
        .unwrap();
    let text = String::from_utf8(reply.value).unwrap();
    let (prefix, secs) = text.rsplit_once(" secs-left=").unwrap();
    assert_eq!(prefix, "/rpcplugin.example.KV/Get trace=trace-42");
    let secs: u64 = secs.parse().unwrap();
    assert!((50..=60).contains(&secs), "{text}");
    client.close();
}

/// A KV service whose Download never sends and never returns until its call is cancelled.
#[derive(Clone, Default)]
struct Blocking {
    /// How many calls have reached the handler.
    entered: Arc<AtomicUsize>,
}

impl Kv for Blocking {
    fn download(
        &self,
        call: &CallContext,
        _req: DownloadRequest,
        _replies: ReplySink<Chunk>,
    ) -> Result<(), grpcio::RpcStatus> {
        self.entered.fetch_add(1, Ordering::SeqCst);
        while !call.is_cancelled() {
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }
}

#[test]
fn blocking_streaming_handlers_do_not_stall_another_plugin() {
    let (ma, mb) = (marker(), marker());
    let a = rpcplugin::RpcPluginClient::new([test_plugin()], config("serve", &ma).auto_mtls(false));
    let b = client("serve", &mb);
    a.start().unwrap();
    b.start().unwrap();
    // This host serves the blocking service over plugin A's broker, on a socket in A's dir.
    let id = a.broker().unwrap().next_id();
    let blocked = Blocking::default();
    a.broker()
        .unwrap()
        .accept_and_serve(id, vec![create_kv(blocked.clone())])
        .unwrap();
    let dir = socket_dir(&a);
    let socket = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("broker{id}-"))
        })
        .expect("the broker socket");
    let channel = grpcio::ChannelBuilder::new(rpcplugin::environment())
        .connect(&format!("unix:{}", socket.display()));
    let blocking = KvClient::new(channel).with_call_timeout(None);
    // More blocked handlers than gRPC has completion-queue threads.
    let n = 2 * rpcplugin::GRPC_THREADS + 2;
    let streams: Vec<_> = (0..n)
        .map(|_| blocking.download(&DownloadRequest::new()).unwrap())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while blocked.entered.load(Ordering::SeqCst) < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} handlers started",
            blocked.entered.load(Ordering::SeqCst)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Plugin B's unary calls go through the same completion queues; they must still answer.
    let kv_b = kv(&b).with_call_timeout(Some(Duration::from_secs(10)));
    for i in 0..20 {
        put(&kv_b, &format!("k{i}"), "v");
        assert_eq!(get(&kv_b, &format!("k{i}")), "v");
    }
    let mut streams = streams;
    let mut first = streams.remove(0);
    let err = first.recv_timeout(Duration::from_millis(100)).unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::Timeout,
        "the handlers are still blocked"
    );
    drop(first);
    drop(streams);
    a.close();
    b.close();
}

/// The I/O thread carries every plugin's broker stream: no announcement may be lost while many
/// plugins' streams wake it at once (a lost wake-up shows as a dial timing out after the broker
/// timeout). 8 plugins, 60 offer+dial+call rounds each, all concurrent, with stderr traffic.
#[test]
fn broker_announcements_from_many_plugins_at_once_all_arrive() {
    let workers: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(|| {
                let m = marker();
                let client = rpcplugin::RpcPluginClient::new(
                    [test_plugin()],
                    config("serve", &m)
                        .auto_mtls(false)
                        .broker_timeout(Duration::from_secs(3)),
                );
                client.start().unwrap();
                let kv = kv(&client);
                let broker = client.broker().unwrap();
                for round in 0..60 {
                    let offered = kv.serve_adder(&ServeAdderRequest::new()).unwrap();
                    let adder = rpcplugin::proto::kv_grpc::AdderClient::new(
                        broker
                            .dial(offered.adder_id)
                            .unwrap_or_else(|e| panic!("round {round}: {e}")),
                    );
                    let mut add = AddRequest::new();
                    add.a = round;
                    assert_eq!(adder.add(&add).unwrap().sum, round);
                }
                client.close();
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
}
