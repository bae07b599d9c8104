//! The fault table: every named misbehaviour of a plugin, run against a real plugin process.
//! For each: the error kind the caller gets (asserted), the first line of its message, how long
//! until the caller had it, and whether anything was left (processes, threads, fds, sockets,
//! directories: asserted). The table is printed and written to `target/fault-table.md`; the
//! README's RELIABILITY section is that table.
//!
//! `cargo test --test faults -- --nocapture` prints it (`FAULTS_ONLY=TEXT` runs only the cases
//! whose name contains TEXT). One test, so that the thread and fd counts of this process are not
//! disturbed by parallel tests.

mod common;

#[allow(dead_code)]
#[path = "../examples/soak/cycles.rs"]
mod cycles;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use rpcplugin::proto::kv::*;
use rpcplugin::{ClientConfig, Error, ErrorKind, RpcPluginClient, TlsConfig};

/// What a case did: the error (None: the caller got no error, as expected for some faults) and
/// how long until the caller had its answer.
struct Outcome {
    error: Option<Error>,
    took: Duration,
    /// What else the row says (shown after "no error").
    note: Option<String>,
    /// Processes the case shows escaping on purpose (a documented limit), which the table names
    /// and the test then kills, instead of counting them as left behind.
    escaped: Vec<u32>,
}

impl Outcome {
    fn new(error: Option<Error>, took: Duration) -> Outcome {
        Outcome {
            error,
            took,
            note: None,
            escaped: Vec::new(),
        }
    }
}

struct Case {
    fault: &'static str,
    expect: Option<ErrorKind>,
    run: fn(&Env) -> Outcome,
}

/// What each case gets: its marker and a socket-dir parent of its own.
struct Env {
    marker: String,
    parent: std::path::PathBuf,
}

impl Env {
    fn config(&self, mode: &str) -> ClientConfig {
        config(mode, &self.marker)
            .socket_dir_parent(&self.parent)
            .start_timeout(Duration::from_secs(3))
            .shutdown_timeout(Duration::from_secs(1))
            .exit_grace(Duration::from_secs(1))
    }

    /// Starts the test plugin with `config`, timing the start.
    fn start(&self, config: ClientConfig) -> (RpcPluginClient, Outcome) {
        self.start_program(test_plugin(), config)
    }

    fn start_program(&self, program: &str, config: ClientConfig) -> (RpcPluginClient, Outcome) {
        let client = RpcPluginClient::new([program], config);
        let started = Instant::now();
        let error = client.start().err();
        let took = started.elapsed();
        (client, Outcome::new(error, took))
    }

    fn start_fails(&self, config: ClientConfig) -> Outcome {
        self.start(config).1
    }
}

/// A CA and a leaf certificate for `plugin.test` (PEM).
fn certificates() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(vec![]).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["plugin.test".to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    (ca.pem(), leaf.pem(), key.serialize_pem())
}

/// Runs a call that the fault makes fail, and explains its error through the client.
fn failing_call(
    client: &RpcPluginClient,
    call: impl FnOnce(&rpcplugin::proto::kv_grpc::KvClient) -> rpcplugin::Result<()>,
    started: Instant,
) -> Outcome {
    let error = call(&kv(client)).err().map(|e| client.call_error(e));
    Outcome::new(error, started.elapsed())
}

/// Times `close()`, which must succeed.
/// Starts a plugin with `config`, SIGKILLs it while a server stream is open, and reports what
/// the stream's reader was told.
fn killed_in_a_stream(env: &Env, config: ClientConfig) -> Outcome {
    let (client, started) = env.start(config);
    assert!(started.error.is_none());
    let pid = client.pid().unwrap();
    let outcome = failing_call(
        &client,
        |kv| {
            let mut replies = kv.download(&DownloadRequest {
                key: "stall".into(),
                ..Default::default()
            })?;
            replies.recv()?;
            // SAFETY: signalling our own live plugin child.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            replies.recv().map(drop)
        },
        Instant::now(),
    );
    client.close();
    outcome
}

fn close_ok(client: RpcPluginClient) -> Outcome {
    let started = Instant::now();
    client.close();
    Outcome::new(None, started.elapsed())
}

/// The multiplexed man-in-the-middle (`mux-fault` mode) with `fault`: starts, then makes the
/// call that cues the fault, and another one; reports the first that failed.
fn mux_fault(env: &Env, fault: &str) -> Outcome {
    let config = env
        .config("mux-fault")
        .auto_mtls(false)
        .grpc_broker_multiplex(true)
        .env("TEST_PLUGIN_MUX_FAULT", fault);
    let (client, started) = env.start(config);
    assert!(started.error.is_none(), "{fault}: {:?}", started.error);
    let outcome = failing_call(
        &client,
        |kv| {
            kv.put(&PutRequest {
                key: "inject-fault".into(),
                value: b"now".to_vec(),
                ..Default::default()
            })?;
            let reply = kv.get(&GetRequest {
                key: "inject-fault".into(),
                ..Default::default()
            })?;
            assert_eq!(reply.value, b"now");
            Ok(())
        },
        Instant::now(),
    );
    client.close();
    outcome
}

/// This process's resident set (`VmRSS`), in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

const MIB: u64 = 1024 * 1024;

fn cases() -> Vec<Case> {
    vec![
        Case {
            fault: "exits before its handshake (status 3, reason on stderr)",
            expect: Some(ErrorKind::ProcessExited),
            run: |env| env.start_fails(env.config("exit-early")),
        },
        Case {
            fault: "never prints a handshake",
            expect: Some(ErrorKind::Timeout),
            run: |env| env.start_fails(env.config("hang")),
        },
        Case {
            fault: "first stdout line is not a handshake",
            expect: Some(ErrorKind::Handshake),
            run: |env| env.start_fails(env.config("garbage")),
        },
        Case {
            fault: "10 MiB on stdout with no newline before its handshake",
            expect: Some(ErrorKind::Handshake),
            run: |env| env.start_fails(env.config("huge-line")),
        },
        Case {
            fault: "speaks core protocol version 2",
            expect: Some(ErrorKind::Protocol),
            run: |env| env.start_fails(env.config("wrong-core")),
        },
        Case {
            fault: "is a netrpc plugin",
            expect: Some(ErrorKind::Protocol),
            run: |env| env.start_fails(env.config("netrpc")),
        },
        Case {
            fault: "picks a version the host did not offer",
            expect: Some(ErrorKind::Version),
            run: |env| {
                let socket = env.parent.join("announced.sock");
                env.start_fails(
                    env.config("wrong-version-socket")
                        .env("TEST_PLUGIN_SOCKET", &socket),
                )
            },
        },
        Case {
            fault: "run without its magic cookie",
            expect: Some(ErrorKind::ProcessExited),
            run: |env| {
                let config = ClientConfig::new()
                    .env("TEST_MARKER", &env.marker)
                    .socket_dir_parent(&env.parent)
                    .start_timeout(Duration::from_secs(3));
                env.start_fails(config)
            },
        },
        Case {
            fault: "announces one certificate and serves another (man-in-the-middle)",
            expect: Some(ErrorKind::Tls),
            run: |env| env.start_fails(env.config("wrong-cert")),
        },
        Case {
            fault: "serves TLS where the host expects plaintext",
            expect: Some(ErrorKind::Transport),
            run: |env| {
                let (_, cert, key) = certificates();
                env.start_fails(
                    env.config("user-tls")
                        .auto_mtls(false)
                        .env("TEST_PLUGIN_CERT", cert)
                        .env("TEST_PLUGIN_KEY", key),
                )
            },
        },
        Case {
            fault: "serves plaintext where the host expects TLS",
            expect: Some(ErrorKind::Tls),
            run: |env| {
                let (ca, _, _) = certificates();
                env.start_fails(
                    env.config("serve")
                        .tls(TlsConfig::new(ca).server_name("plugin.test")),
                )
            },
        },
        Case {
            fault: "health check never answers",
            expect: Some(ErrorKind::Timeout),
            run: |env| env.start_fails(env.config("hang-health")),
        },
        Case {
            fault: "health check answers NOT_SERVING",
            expect: Some(ErrorKind::Health),
            run: |env| env.start_fails(env.config("not-serving")),
        },
        Case {
            fault: "freezes (SIGSTOP) right after its handshake",
            expect: Some(ErrorKind::Timeout),
            run: |env| env.start_fails(env.config("freeze-after-handshake")),
        },
        Case {
            fault: "dies during a call (exit 42)",
            expect: Some(ErrorKind::ProcessExited),
            run: |env| {
                let (client, started) = env.start(env.config("serve"));
                assert!(started.error.is_none());
                let outcome = failing_call(
                    &client,
                    |kv| {
                        kv.put(&PutRequest {
                            key: "crash".into(),
                            ..Default::default()
                        })
                        .map(drop)
                    },
                    Instant::now(),
                );
                client.close();
                outcome
            },
        },
        Case {
            fault: "killed (SIGKILL) in the middle of a stream",
            expect: Some(ErrorKind::ProcessExited),
            run: |env| killed_in_a_stream(env, env.config("serve")),
        },
        Case {
            fault: "multiplexed: killed (SIGKILL) in the middle of a stream",
            expect: Some(ErrorKind::ProcessExited),
            run: |env| killed_in_a_stream(env, env.config("serve").grpc_broker_multiplex(true)),
        },
        Case {
            fault: "multiplexed: offers it, takes the connection, never acknowledges a stream",
            expect: Some(ErrorKind::Timeout),
            run: |env| {
                env.start_fails(
                    env.config("mux-mute")
                        .auto_mtls(false)
                        .grpc_broker_multiplex(true),
                )
            },
        },
        Case {
            fault: "multiplexed: overruns a stream's receive window mid-call",
            expect: Some(ErrorKind::Transport),
            run: |env| mux_fault(env, "window-overrun"),
        },
        Case {
            fault: "multiplexed: opens a stream id the host opened and still uses",
            expect: Some(ErrorKind::Transport),
            run: |env| mux_fault(env, "reused-id"),
        },
        Case {
            fault: "multiplexed: go-away (normal) in the middle of a call",
            expect: None,
            run: |env| mux_fault(env, "go-away"),
        },
        Case {
            fault: "multiplexed: go-away (protocol error) in the middle of a call",
            expect: Some(ErrorKind::Transport),
            run: |env| mux_fault(env, "go-away-error"),
        },
        Case {
            fault: "multiplexed: floods 1,000,000 pings from the middle of a call on",
            expect: None,
            run: |env| mux_fault(env, "ping-flood"),
        },
        Case {
            fault: "multiplexed: a frame header of yamux version 1",
            expect: Some(ErrorKind::Transport),
            run: |env| mux_fault(env, "bad-version"),
        },
        Case {
            fault: "multiplexed: a frame of unknown type 9",
            expect: Some(ErrorKind::Transport),
            run: |env| mux_fault(env, "bad-type"),
        },
        Case {
            fault: "multiplexed: a data frame whose length field says 4 GiB",
            expect: Some(ErrorKind::Transport),
            run: |env| mux_fault(env, "huge-length"),
        },
        Case {
            fault: "multiplexed: answers the health check, then never accepts another stream (broker dial)",
            expect: Some(ErrorKind::Timeout),
            run: |env| {
                let config = env
                    .config("mux-fault")
                    .auto_mtls(false)
                    .grpc_broker_multiplex(true)
                    .broker_timeout(Duration::from_secs(2))
                    .env("TEST_PLUGIN_MUX_FAULT", "no-new-streams");
                let (client, started) = env.start(config);
                assert!(started.error.is_none(), "{:?}", started.error);
                let offered = kv(&client).serve_adder(&ServeAdderRequest::new()).unwrap();
                let began = Instant::now();
                let error = client.broker().unwrap().dial(offered.adder_id).err();
                let outcome = Outcome::new(error, began.elapsed());
                client.close();
                outcome
            },
        },
        Case {
            fault: "writes 1 GiB to stderr with no newline while serving calls",
            expect: None,
            run: |env| {
                let config = env
                    .config("flood")
                    .env("TEST_PLUGIN_FLOOD_MIB", "1024")
                    .env("TEST_PLUGIN_FLOOD_STDOUT", "0");
                let (client, started) = env.start(config);
                assert!(started.error.is_none(), "{:?}", started.error);
                let kv = kv(&client);
                let before = rss();
                let began = Instant::now();
                put(&kv, "start", "flooding");
                let (mut most, mut calls) = (before, 0);
                let deadline = Instant::now() + Duration::from_secs(600);
                while get(&kv, "flood") != "done" {
                    assert!(Instant::now() < deadline, "the flood never ended");
                    calls += 1;
                    most = most.max(rss());
                    std::thread::sleep(Duration::from_millis(20));
                }
                let took = began.elapsed();
                let grew = most.saturating_sub(before);
                assert!(grew < 64 * MIB, "the host grew by {} MiB", grew / MIB);
                let mut outcome = close_ok(client);
                outcome.took = took;
                outcome.note = Some(format!(
                    "host RSS grew {} MiB at most; {calls} calls answered meanwhile",
                    grew.div_ceil(MIB)
                ));
                outcome
            },
        },
        Case {
            fault: "closes its listening socket between its handshake line and the host's connect",
            expect: Some(ErrorKind::Transport),
            run: |env| env.start_fails(env.config("close-listener")),
        },
        Case {
            fault: "forks a grandchild that calls setsid() and keeps the plugin's stdout and stderr open; close",
            expect: None,
            run: |env| {
                let config = env.config("setsid-grandchild");
                let bound = config.max_close_duration();
                let (client, started) = env.start(config);
                assert!(started.error.is_none(), "{:?}", started.error);
                let grandchild: u32 = get(&kv(&client), "grandchild-pid").parse().unwrap();
                let mut outcome = close_ok(client);
                assert!(outcome.took <= bound, "close took {:?}", outcome.took);
                assert!(
                    process_state(grandchild).is_some_and(|s| s != 'Z'),
                    "the grandchild was expected to escape the group kill"
                );
                outcome.escaped.push(grandchild);
                outcome.note = Some(format!(
                    "close returns within its bound ({bound:?}); the grandchild escapes the group kill"
                ));
                outcome
            },
        },
        Case {
            fault: "ignores Shutdown (close waits the grace, then kills)",
            expect: None,
            run: |env| {
                let (client, started) = env.start(env.config("ignore-shutdown"));
                assert!(started.error.is_none());
                close_ok(client)
            },
        },
        Case {
            fault: "stops answering mid-session (SIGSTOP); close",
            expect: None,
            run: |env| {
                let (client, started) = env.start(env.config("serve"));
                assert!(started.error.is_none());
                // SAFETY: signalling our own live plugin child.
                unsafe { libc::kill(client.pid().unwrap() as i32, libc::SIGSTOP) };
                close_ok(client)
            },
        },
        Case {
            fault: "closes its stdin and stdout after its handshake (calls go on)",
            expect: None,
            run: |env| {
                let (client, started) = env.start(env.config("close-stdio"));
                assert!(started.error.is_none());
                put(&kv(&client), "still", "here");
                assert_eq!(get(&kv(&client), "still"), "here");
                close_ok(client)
            },
        },
        Case {
            fault: "plugin path is a directory",
            expect: Some(ErrorKind::Spawn),
            run: |env| {
                let dir = env.parent.display().to_string();
                env.start_program(&dir, env.config("serve")).1
            },
        },
        Case {
            fault: "plugin file is not executable",
            expect: Some(ErrorKind::Spawn),
            run: |env| {
                let file = env.parent.join("not-executable");
                std::fs::write(&file, "#!/bin/sh\n").unwrap();
                let outcome = env
                    .start_program(&file.display().to_string(), env.config("serve"))
                    .1;
                std::fs::remove_file(file).unwrap();
                outcome
            },
        },
        Case {
            fault: "plugin file is missing",
            expect: Some(ErrorKind::Spawn),
            run: |env| {
                let missing = env.parent.join("no-such-plugin").display().to_string();
                env.start_program(&missing, env.config("serve")).1
            },
        },
    ]
}

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// The names of this process's threads, sorted, without gRPC core's self-managed pools (they
/// grow and shrink on their own schedule: an `event_engine` worker lingers for seconds).
fn thread_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|n| n.trim().to_owned())
        .filter(|n| !cycles::GRPC_CORE_THREADS.contains(&n.as_str()))
        .collect();
    names.sort();
    names
}

/// Threads and fds of this process once gRPC core has finished closing sockets in the
/// background (it does so asynchronously): waits (up to 30 s) for the counts to come back down.
fn settled(baseline: (usize, usize)) -> (usize, usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = (thread_names().len(), count("/proc/self/fd"));
        if (now.0 <= baseline.0 && now.1 <= baseline.1) || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The first line of the error, with the case's scratch directory shown as `$DIR` so the table
/// reads the same from run to run.
fn first_line(error: &Option<Error>, scratch: &Path) -> String {
    match error {
        None => "— (no error)".to_owned(),
        Some(e) => {
            let line = e.to_string().lines().next().unwrap_or("").to_owned();
            let line = line
                .replace(&scratch.display().to_string(), "$DIR")
                .replace('|', "\\|");
            match line.char_indices().nth(150) {
                Some((at, _)) => format!("{}…", &line[..at]),
                None => line,
            }
        }
    }
}

#[test]
fn fault_table() {
    // Warm up the process-wide parts once: the gRPC environment, the spawner thread, and gRPC
    // core's global timer thread (started the first time a deadline fires).
    let warm = ScratchDir::new();
    let env = Env {
        marker: marker(),
        parent: warm.0.clone(),
    };
    let (client, outcome) = env.start(env.config("serve"));
    assert!(outcome.error.is_none());
    let timed_out = kv(&client).get_opt(
        &GetRequest {
            key: "until-cancelled".into(),
            ..Default::default()
        },
        grpcio::CallOption::default().timeout(Duration::from_millis(200)),
    );
    assert_eq!(timed_out.unwrap_err().kind(), ErrorKind::Timeout);
    client.close();

    let mut rows = Vec::new();
    let mut problems = Vec::new();
    // FAULTS_ONLY=TEXT runs only the cases whose name contains TEXT (while working on one).
    let only = std::env::var("FAULTS_ONLY").unwrap_or_default();
    for case in cases().into_iter().filter(|c| c.fault.contains(&only)) {
        let scratch = ScratchDir::new();
        let env = Env {
            marker: marker(),
            parent: scratch.0.clone(),
        };
        let baseline = settled((usize::MAX, usize::MAX));
        let threads_before = thread_names();
        let outcome = (case.run)(&env);
        let kind = outcome.error.as_ref().map(Error::kind);
        if kind != case.expect {
            problems.push(format!(
                "{}: expected {:?}, got {:?}: {:?}",
                case.fault, case.expect, kind, outcome.error
            ));
        }
        let after = settled(baseline);
        let processes: Vec<u32> = processes_with_marker(&env.marker)
            .into_iter()
            .filter(|p| !outcome.escaped.contains(p))
            .collect();
        for &pid in &outcome.escaped {
            // SAFETY: killing the escaped test process this case started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            assert!(
                dead_or_zombie_soon(pid),
                "escaped process {pid} survived SIGKILL"
            );
        }
        let files: Vec<_> = scratch
            .list()
            .into_iter()
            .filter(|p| p.file_name() != Some(std::ffi::OsStr::new("not-executable")))
            .collect();
        let mut left = Vec::new();
        if !processes.is_empty() {
            left.push(format!("processes {processes:?}"));
        }
        if after.0 > baseline.0 {
            let mut extra = thread_names();
            for name in &threads_before {
                if let Some(at) = extra.iter().position(|n| n == name) {
                    extra.remove(at);
                }
            }
            left.push(format!("{} threads {extra:?}", after.0 - baseline.0));
        }
        if after.1 > baseline.1 {
            left.push(format!("{} fds", after.1 - baseline.1));
        }
        if !files.is_empty() {
            left.push(format!("files {files:?}"));
        }
        if !left.is_empty() {
            problems.push(format!("{}: left behind {}", case.fault, left.join(", ")));
        }
        let kind_text = kind.map_or("—".to_owned(), |k| format!("`{k:?}`"));
        rows.push(format!(
            "| {} | {} | {} | {:.0?} | {} |",
            case.fault,
            kind_text,
            match (&outcome.error, &outcome.note) {
                (None, Some(note)) => format!("— (no error: {note})"),
                _ => first_line(&outcome.error, &env.parent),
            },
            outcome.took,
            if !left.is_empty() {
                format!("❌ {}", left.join(", "))
            } else if !outcome.escaped.is_empty() {
                "⚠️ the setsid() grandchild (documented escape; the test kills it)".to_owned()
            } else {
                "✅ nothing".to_owned()
            }
        ));
    }
    let table = format!(
        "| fault | `ErrorKind` | first line of the message | time to the caller's answer | left behind |\n\
         |---|---|---|---|---|\n{}\n",
        rows.join("\n")
    );
    println!("\n{table}");
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fault-table.md");
    std::fs::write(&out, &table).unwrap();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
