//! Nothing outlives `close()` or `Drop`: no thread of ours, no file descriptor, no process, no
//! socket directory; and a host's threads do not grow with its number of plugins. One test in
//! its own binary, so no other test's threads or fds interfere.

mod common;

use std::time::{Duration, Instant};

use common::*;
use rpcplugin::proto::kv::AddRequest;
use rpcplugin::proto::kv_grpc::{create_adder, AdderClient};
use rpcplugin::{ErrorKind, RpcPluginClient};

/// Threads of this crate still alive (gRPC's shared completion-queue thread, the spawner thread
/// and the I/O thread excepted: they are process-wide by design).
fn our_threads() -> Vec<String> {
    let mut names = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let comm = comm.trim().to_owned();
        let process_wide = comm.starts_with("rpcplugin-grpc")
            || comm == "rpcplugin-spawn"
            || comm == "rpcplugin-io";
        if comm.starts_with("rpcplugin-") && !process_wide {
            names.push(comm);
        }
    }
    names
}

fn open_fds() -> Vec<String> {
    let mut fds: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .map(|e| {
            let target = std::fs::read_link(e.path()).unwrap_or_default();
            format!(
                "{} -> {}",
                e.file_name().to_string_lossy(),
                target.display()
            )
        })
        .collect();
    fds.sort();
    fds
}

/// The fds this crate holds for a plugin and closes itself, not through gRPC core: pidfds and
/// pipes (its stdout and stderr, and without pidfds its exit watch's). gRPC core holds neither.
fn own_fds() -> Vec<String> {
    open_fds()
        .into_iter()
        .filter(|f| f.contains("[pidfd]") || f.contains("pipe:"))
        .collect()
}

/// A full session: auto mTLS, calls, broker both ways, stdio, then close or drop; with
/// `multiplex`, every connection a yamux stream (private sockets and bridges included).
fn full_session(close: bool, multiplex: bool) -> (u32, std::path::PathBuf) {
    let m = marker();
    let client = RpcPluginClient::new(
        [test_plugin()],
        config("serve", &m).grpc_broker_multiplex(multiplex),
    );
    client.start().unwrap();
    let kv = kv(&client);
    put(&kv, "k", "v");
    let broker = client.broker().unwrap();
    let id = broker.next_id();
    broker
        .accept_and_serve(id, vec![create_adder(HostAdder::default())])
        .unwrap();
    let mut req = rpcplugin::proto::kv::AddViaHostRequest::new();
    req.adder_id = id;
    req.a = 1;
    assert_eq!(kv.add_via_host(&req).unwrap().sum, 1);
    let offered = kv
        .serve_adder(&rpcplugin::proto::kv::ServeAdderRequest::new())
        .unwrap();
    let adder = AdderClient::new(broker.dial(offered.adder_id).unwrap());
    assert_eq!(adder.add(&AddRequest::new()).unwrap().sum, 0);
    let pid = client.pid().unwrap();
    let dir = socket_dir(&client);
    drop((kv, adder, broker));
    if close {
        client.close();
    }
    drop(client);
    (pid, dir)
}

#[test]
fn no_thread_fd_process_or_directory_outlives_a_client() {
    full_session(true, false); // warm up process-wide state (gRPC environment, handler pool)
                               // The warm-up's handler threads finish their last reply just after its calls return.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut threads_before = our_threads();
    while !threads_before.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        threads_before = our_threads();
    }
    let fds_before = open_fds();
    let own_before = own_fds();
    assert!(threads_before.is_empty(), "{threads_before:?}");

    for (close, multiplex) in [(true, false), (false, false), (true, true), (false, true)] {
        let (pid, dir) = full_session(close, multiplex);
        // Not a moment later: closed when close (or drop) returned.
        assert_eq!(
            own_fds(),
            own_before,
            "a pidfd or pipe was still open when close returned (close: {close}, multiplexed: \
             {multiplex})"
        );
        assert!(
            is_gone(pid),
            "plugin {pid} left as {:?}",
            process_state(pid)
        );
        assert!(!exists(&dir), "{} left behind", dir.display());
    }
    let m = marker();
    let err = client("exit-early", &m).start().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ProcessExited);
    let err = RpcPluginClient::new(
        [test_plugin()],
        config("hang", &m).start_timeout(Duration::from_millis(200)),
    )
    .start()
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert!(processes_with_marker(&m).is_empty());

    // Handler threads finish their last reply just after the call returns.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut threads = our_threads();
    while !threads.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        threads = our_threads();
    }
    assert!(threads.is_empty(), "threads outlived close: {threads:?}");
    // gRPC core closes a dropped connection's socket asynchronously, moments later; a leaked fd
    // never comes back.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut fds = open_fds();
    while fds != fds_before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        fds = open_fds();
    }
    let extra: Vec<_> = fds.iter().filter(|f| !fds_before.contains(f)).collect();
    let missing: Vec<_> = fds_before.iter().filter(|f| !fds.contains(f)).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "file descriptors leaked: extra {extra:?}, missing {missing:?}"
    );
    let leftovers: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("rpcplugin-{}-", std::process::id()))
        })
        .collect();
    assert!(leftovers.is_empty(), "socket dirs left: {leftovers:?}");

    threads_do_not_grow_with_plugins();
}

/// Every thread of this process, by name.
fn all_threads() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .map(|t| {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            comm.trim().to_owned()
        })
        .collect();
    names.sort();
    names
}

/// Plugins that are running and streaming (stdio, broker) add no thread to the host: 1 and 24
/// plugins leave the same threads of this crate (one completion-queue thread, the I/O thread,
/// spawner threads), and gRPC core's own few.
fn threads_do_not_grow_with_plugins() {
    let start = |n: usize| -> Vec<RpcPluginClient> {
        let starters: Vec<_> = (0..n)
            .map(|_| {
                std::thread::spawn(|| {
                    let client = RpcPluginClient::new([test_plugin()], config("serve", &marker()));
                    client.start().unwrap();
                    // The session's streams are open and a call went through.
                    put(&kv(&client), "k", "v");
                    client
                })
            })
            .collect();
        starters.into_iter().map(|s| s.join().unwrap()).collect()
    };
    let ours = |names: &[String]| -> Vec<String> {
        names
            .iter()
            .filter(|n| n.starts_with("rpcplugin-"))
            .cloned()
            .collect()
    };
    let one = start(1);
    let with_one = all_threads();
    let many = start(24);
    let with_many = all_threads();
    for client in one.iter().chain(&many) {
        client.close();
    }
    let (ours_one, ours_many) = (ours(&with_one), ours(&with_many));
    let spawners = |names: &[String]| names.iter().filter(|n| *n == "rpcplugin-spawn").count();
    // Without pidfds (the CI runs under tests/support/nopidfd) each running plugin has one
    // thread watching its exit ("rpcplugin-exit-watch", cut to 15 bytes by the kernel): the
    // fallback's stated cost. With pidfds there is none.
    let watchers = |names: &[String]| names.iter().filter(|n| *n == "rpcplugin-exit-").count();
    let (per_plugin, mode) = match std::env::var("RPCPLUGIN_TEST_NOPIDFD") {
        Ok(mode) => (1, format!("without pidfds ({mode})")),
        Err(_) => (0, "with pidfds".to_owned()),
    };
    assert_eq!(
        (watchers(&ours_one), watchers(&ours_many)),
        (per_plugin, 25 * per_plugin),
        "exit-watch threads {mode}, with 1 and with 25 plugins: {ours_one:?}; {ours_many:?}"
    );
    let shared = |names: &[String]| -> Vec<String> {
        names
            .iter()
            .filter(|n| *n != "rpcplugin-spawn" && *n != "rpcplugin-exit-")
            .cloned()
            .collect()
    };
    assert_eq!(
        shared(&ours_many),
        shared(&ours_one),
        "this crate's threads grew with 25 plugins (1 plugin: {ours_one:?}; 25: {ours_many:?})"
    );
    assert_eq!(
        ours_many
            .iter()
            .filter(|n| n.starts_with("rpcplugin-grpc"))
            .count(),
        rpcplugin::GRPC_THREADS
    );
    assert!(
        (1..=4).contains(&spawners(&ours_many)),
        "spawner threads: {ours_many:?}"
    );
    // Spawner threads are bounded above; gRPC core's internal pool may add a thread or two
    // under load; never one per plugin.
    let others = |names: &[String]| names.len() - spawners(names) - watchers(names);
    assert!(
        others(&with_many) <= others(&with_one) + 4,
        "the host's threads grew from {with_one:?} with 1 plugin to {with_many:?} with 25"
    );
}
