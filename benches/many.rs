//! Many plugins in one host: start n at once, call each once, close them all at once; this
//! host's threads and resident memory with all n running. Ours and go-plugin's host
//! (`target/interop/go-kv-bench many`) against the same go-plugin plugin, side by side, each
//! measurement in a fresh host process.
//!
//! `cargo bench --bench many` (20, 100 and 250 plugins); `-- quick` for 20 and 100 only. With
//! `RPCPLUGIN_BENCH_EXPLAIN_CLOSE=1` the slowest close of each row is broken down on stderr,
//! with the host CPU of the start-all and close-all per plugin by thread (and how often each
//! thread ran).
//! With `RPCPLUGIN_BENCH_PERF_CTL=FIFO` a child writes `enable` to that `perf record
//! --control=fifo:FIFO` control pipe just before its close-all and `disable` just after, so a
//! profile (`perf record -D -1 --control fifo:FIFO -- target/release/deps/many-* --child 100 0`)
//! holds the closes alone.
//! The Go peers must be built (`cargo test --test interop_go` builds them). Raises this
//! process's open-file soft limit to its hard limit, as Go does for its own processes at start.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{run_json, CloseLog, GO_BENCH, GO_PLUGIN};
use rpcplugin::proto::kv::PutRequest;
use rpcplugin::proto::kv_grpc::KvClient;
use rpcplugin::{ClientConfig, RpcPluginClient};

/// A numeric field of /proc/self/status ("Threads", or "VmRSS" in kB).
fn status_field(name: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// CPU time this process has used (all threads, user and system).
fn cpu_time() -> Duration {
    // SAFETY: getrusage fills a local struct.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}

fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// `perf record --control=fifo:PATH`'s control pipe, when `RPCPLUGIN_BENCH_PERF_CTL` names one.
struct PerfControl(Option<std::fs::File>);

impl PerfControl {
    fn from_env() -> PerfControl {
        let path = std::env::var_os("RPCPLUGIN_BENCH_PERF_CTL");
        PerfControl(path.map(|p| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&p)
                .unwrap_or_else(|e| panic!("opening perf's control fifo {p:?}: {e}"))
        }))
    }

    fn send(&self, command: &str) {
        use std::io::Write;
        if let Some(mut fifo) = self.0.as_ref() {
            fifo.write_all(format!("{command}\n").as_bytes())
                .expect("writing to perf's control fifo");
        }
    }
}

static CLOSES: CloseLog = CloseLog::new();

/// One measurement in this (fresh) process: prints the same JSON as `go-kv-bench many`.
fn child(n: usize, mtls: bool) {
    raise_fd_limit();
    let explain = CLOSES.install();
    // The shared threads (gRPC, I/O, spawner) start with the first plugin; count them as the
    // host's, as Go's runtime threads are counted in its "before".
    let (threads_before, rss_before) = (status_field("Threads"), status_field("VmRSS"));
    let config = ClientConfig::new()
        .magic_cookie("KV_PLUGIN", "rpcplugin-kv")
        .auto_mtls(mtls)
        .start_timeout(Duration::from_secs(120));
    let threads_cpu = if explain { thread_cpu() } else { Vec::new() };
    let (t, cpu) = (Instant::now(), cpu_time());
    let starters: Vec<_> = (0..n)
        .map(|_| {
            let config = config.clone();
            std::thread::spawn(move || {
                let client = RpcPluginClient::new([GO_PLUGIN], config);
                client.start().map(|_| client)
            })
        })
        .collect();
    let clients: Vec<Arc<RpcPluginClient>> = starters
        .into_iter()
        .map(|s| Arc::new(s.join().unwrap().expect("start")))
        .collect();
    let (start_all, start_cpu) = (t.elapsed(), cpu_time() - cpu);
    if explain {
        explain_cpu(
            "start-all",
            "starters",
            n,
            start_cpu,
            &threads_cpu,
            &thread_cpu(),
        );
    }
    let mut put = PutRequest::new();
    put.key = "k".into();
    put.value = b"v".to_vec();
    for client in &clients {
        KvClient::new(client.grpc_channel().unwrap())
            .put(&put)
            .unwrap();
    }
    let (threads, rss) = (status_field("Threads"), status_field("VmRSS"));
    let perf = PerfControl::from_env();
    let threads_cpu = if explain { thread_cpu() } else { Vec::new() };
    perf.send("enable");
    let (t, cpu) = (Instant::now(), cpu_time());
    let closers: Vec<_> = clients
        .iter()
        .map(|c| {
            let c = c.clone();
            std::thread::spawn(move || c.close())
        })
        .collect();
    for c in closers {
        c.join().unwrap();
    }
    let (close_all, close_cpu) = (t.elapsed(), cpu_time() - cpu);
    perf.send("disable");
    if let Some((_, slowest)) = CLOSES.lines().iter().max() {
        eprintln!("slowest close of {n}: {slowest}");
    }
    if explain {
        explain_cpu(
            "close-all",
            "closers",
            n,
            close_cpu,
            &threads_cpu,
            &thread_cpu(),
        );
    }
    println!(
        "{}",
        serde_json::json!({
            "start_all_ns": start_all.as_nanos() as u64,
            "start_cpu_ns": start_cpu.as_nanos() as u64,
            "close_all_ns": close_all.as_nanos() as u64,
            "close_cpu_ns": close_cpu.as_nanos() as u64,
            "threads_before": threads_before,
            "threads": threads,
            "rss_before_kb": rss_before,
            "rss_kb": rss,
        })
    );
}

/// A thread of this process: its id, name (`comm`), the CPU it has used and the times it was
/// switched in (`schedstat`: ns on CPU, and timeslices run).
struct ThreadUse {
    tid: u32,
    name: String,
    cpu: Duration,
    switches: u64,
}

fn thread_cpu() -> Vec<ThreadUse> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let tid = task.file_name().to_string_lossy().parse().unwrap_or(0);
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let schedstat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        let fields: Vec<u64> = schedstat
            .split_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect();
        threads.push(ThreadUse {
            tid,
            name: comm.trim().to_owned(),
            cpu: Duration::from_nanos(fields.first().copied().unwrap_or(0)),
            switches: fields.get(2).copied().unwrap_or(0),
        });
    }
    threads
}

/// Prints where a phase's host CPU went, by thread name: what the threads alive after it used
/// during it, and the rest of `getrusage`'s total (the phase's own threads, `ended`, one per
/// plugin, any other thread that ended meanwhile, and what schedstat and getrusage count
/// differently).
fn explain_cpu(
    phase: &str,
    ended: &str,
    n: usize,
    total: Duration,
    before: &[ThreadUse],
    after: &[ThreadUse],
) {
    let mut by_name: Vec<(String, Duration, u64)> = Vec::new();
    for thread in after {
        let (cpu, switches) = before
            .iter()
            .find(|b| b.tid == thread.tid)
            .map_or((Duration::ZERO, 0), |b| (b.cpu, b.switches));
        let (cpu, switches) = (
            thread.cpu.saturating_sub(cpu),
            thread.switches.saturating_sub(switches),
        );
        let name = thread.name.trim_end_matches(|c: char| c.is_ascii_digit());
        match by_name.iter_mut().find(|(n, ..)| n == name) {
            Some((_, sum, count)) => {
                *sum += cpu;
                *count += switches;
            }
            None => by_name.push((name.to_owned(), cpu, switches)),
        }
    }
    let named: Duration = by_name.iter().map(|(_, d, _)| *d).sum();
    by_name.push((
        format!("{ended} and other ended threads, and unattributed"),
        total.saturating_sub(named),
        0,
    ));
    by_name.sort_by_key(|(_, cpu, _)| std::cmp::Reverse(*cpu));
    let per_plugin: Vec<String> = by_name
        .iter()
        .filter(|(_, d, _)| !d.is_zero())
        .map(|(name, d, switches)| {
            let runs = if *switches > 0 {
                format!(" ({:.1} runs)", *switches as f64 / n as f64)
            } else {
                String::new()
            };
            format!("{name} {:.0?}{runs}", *d / n as u32)
        })
        .collect();
    eprintln!(
        "{phase} of {n}, host CPU per plugin by thread: {}",
        per_plugin.join(", ")
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        child(args[i + 1].parse().unwrap(), args[i + 2] == "1");
        return;
    }
    assert!(
        Path::new(GO_PLUGIN).exists() && Path::new(GO_BENCH).exists(),
        "{GO_PLUGIN} and {GO_BENCH} are needed: cargo test --test interop_go builds them"
    );
    let quick = args.iter().any(|a| a == "quick");
    let counts: &[usize] = if quick { &[20, 100] } else { &[20, 100, 250] };
    println!(
        "| plugins | TLS | host | start all | close all | host threads (+ with all running) | host RSS | start ÷ go | close ÷ go | RSS ÷ go | host CPU, start / close |"
    );
    println!("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let me = std::env::current_exe().unwrap();
    for &n in counts {
        for mtls in [false, true] {
            let flag = if mtls { "1" } else { "0" };
            let ours =
                run_json(std::process::Command::new(&me).args(["--child", &n.to_string(), flag]));
            let go_many = |ready: &str| {
                run_json(
                    std::process::Command::new(GO_BENCH)
                        .args(["many", &n.to_string(), flag, GO_PLUGIN])
                        .env("KV_BENCH_READY", ready),
                )
            };
            // go-plugin's start returns before its connection exists; ours returns connected and
            // health-checked. Its start-all is timed to that same point (each start, then
            // Ping), and also as it returns (the "go-plugin, to Dispense" row).
            let go = go_many("1");
            let go_lazy = go_many("0");
            let f = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap() as f64;
            for (host, v) in [
                ("rpcplugin", &ours),
                ("go-plugin", &go),
                ("go-plugin, to Dispense", &go_lazy),
            ] {
                let ratio = |k: &str| {
                    if host == "rpcplugin" {
                        format!("{:.2}", f(&ours, k) / f(&go, k))
                    } else {
                        String::new()
                    }
                };
                println!(
                    "| {n} | {} | {host} | {:.0} ms | {:.0} ms | {} (+{}) | {:.0} MiB | {} | {} | {} | {:.0} / {:.0} ms |",
                    if mtls { "auto mTLS" } else { "plain" },
                    f(v, "start_all_ns") / 1e6,
                    f(v, "close_all_ns") / 1e6,
                    f(v, "threads"),
                    f(v, "threads") - f(v, "threads_before"),
                    f(v, "rss_kb") / 1024.0,
                    ratio("start_all_ns"),
                    ratio("close_all_ns"),
                    ratio("rss_kb"),
                    f(v, "start_cpu_ns") / 1e6,
                    f(v, "close_cpu_ns") / 1e6,
                );
            }
        }
    }
}
