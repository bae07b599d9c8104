//! Benchmarks against real plugin processes: start/close latency and unary round trips per
//! transport and TLS mode, and broker dials. When the Go interop peers are built (any
//! `cargo test` builds them), the same measurements run against the go-plugin plugin and with
//! go-plugin's own host, so every host x plugin pair is measured side by side in one run.
//!
//! `cargo bench --bench plugin` (add `-- quick` for fewer iterations).
//!
//! `cargo bench --bench plugin -- starts N` only starts and closes the go-plugin plugin N times
//! (plain unix), alternating with go-plugin's host in rounds of 10, and prints the medians of
//! both hosts' starts and closes and of each stage of ours: the profiling target for the start
//! and close rows. `RPCPLUGIN_BENCH_EXPLAIN_CLOSE=1` adds the close's steps (from the library's
//! debug log, whose formatting then costs each close a little).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{close_steps, durations, run_json, CloseLog, GO_BENCH, GO_PLUGIN};
use rpcplugin::proto::kv::{AddRequest, GetRequest, PutRequest, ServeAdderRequest};
use rpcplugin::proto::kv_grpc::{AdderClient, KvClient};
use rpcplugin::{ClientConfig, RpcPluginClient};

struct Plugin {
    name: &'static str,
    command: Vec<String>,
}

fn config(auto_mtls: bool, network: &str) -> ClientConfig {
    ClientConfig::new()
        .magic_cookie("KV_PLUGIN", "rpcplugin-kv")
        .auto_mtls(auto_mtls)
        .env("TEST_PLUGIN_NETWORK", network)
        .start_timeout(Duration::from_secs(30))
}

fn stats(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let p = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    (p(0.5), p(0.9))
}

/// A duration in µs with one decimal: `{:?}` rounds 1.04 ms to "1.0ms", too coarse for ratios.
fn micros(d: Duration) -> String {
    format!("{:.1}µs", d.as_secs_f64() * 1e6)
}

fn row(what: &str, host: &str, plugin: &str, samples: Vec<Duration>, per_second: bool) {
    let n = samples.len();
    let total: Duration = samples.iter().sum();
    let (median, p90) = stats(samples);
    let (median, p90) = (micros(median), micros(p90));
    let rate = if per_second {
        format!("{:>9.0}/s", n as f64 / total.as_secs_f64())
    } else {
        String::new()
    };
    println!(
        "| {what:<34} | {host:<9} | {plugin:<9} | {n:>5} | {median:>10} | {p90:>10} | {rate:>11} |"
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "starts") {
        let n = match args.get(i + 1).map(|n| n.parse::<usize>()) {
            None => 200,
            Some(Ok(n)) if n > 0 => n,
            Some(_) => panic!("starts N: N is a number of starts above 0"),
        };
        starts(n);
        return;
    }
    let quick = args.iter().any(|a| a == "quick");
    let (cycles, calls) = if quick { (5, 300) } else { (30, 3000) };
    let mut plugins = vec![Plugin {
        name: "rust",
        command: vec![env!("CARGO_BIN_EXE_rpcplugin-test-plugin").to_owned()],
    }];
    let go = GO_PLUGIN;
    if Path::new(go).exists() {
        plugins.push(Plugin {
            name: "go-plugin",
            command: vec![go.to_owned()],
        });
    } else {
        eprintln!(
            "note: {go} not built (cargo test --test interop_go builds it); Rust plugin only"
        );
    }

    println!(
        "| measurement                        | host      | plugin    |     n |     median |        p90 |        rate |"
    );
    println!(
        "|------------------------------------|-----------|-----------|------:|-----------:|-----------:|------------:|"
    );
    for plugin in &plugins {
        // go-plugin servers listen on unix sockets only (outside Windows).
        let modes: &[(&str, bool, &str)] = if plugin.name == "rust" {
            &[
                ("plain unix", false, "unix"),
                ("mTLS unix", true, "unix"),
                ("mTLS tcp", true, "tcp"),
            ]
        } else {
            &[("plain unix", false, "unix"), ("mTLS unix", true, "unix")]
        };
        for &(label, mtls, network) in modes {
            let (mut starts, mut closes) = (Vec::new(), Vec::new());
            for _ in 0..cycles {
                let client = RpcPluginClient::new(&plugin.command, config(mtls, network));
                let t = Instant::now();
                client.start().expect("start");
                starts.push(t.elapsed());
                let t = Instant::now();
                client.close();
                closes.push(t.elapsed());
            }
            row(
                &format!("start ({label})"),
                "rpcplugin",
                plugin.name,
                starts,
                false,
            );
            row(
                &format!("close ({label})"),
                "rpcplugin",
                plugin.name,
                closes,
                false,
            );

            let client = RpcPluginClient::new(&plugin.command, config(mtls, network));
            client.start().expect("start");
            let kv = KvClient::new(client.grpc_channel().unwrap());
            let mut put = PutRequest::new();
            put.key = "k".into();
            put.value = vec![7; 64];
            kv.put(&put).unwrap();
            let mut get = GetRequest::new();
            get.key = "k".into();
            for _ in 0..calls / 10 {
                kv.get(&get).unwrap();
            }
            let samples: Vec<Duration> = (0..calls)
                .map(|_| {
                    let t = Instant::now();
                    kv.get(&get).unwrap();
                    t.elapsed()
                })
                .collect();
            row(
                &format!("unary Get ({label})"),
                "rpcplugin",
                plugin.name,
                samples,
                true,
            );

            if !mtls && network == "unix" {
                floor(&client, &kv, &get, plugin.name, calls);
            }

            let broker = client.broker().unwrap();
            let dials: Vec<Duration> = (0..cycles)
                .map(|_| {
                    let t = Instant::now();
                    let id = kv.serve_adder(&ServeAdderRequest::new()).unwrap().adder_id;
                    let adder = AdderClient::new(broker.dial(id).unwrap());
                    adder.add(&AddRequest::new()).unwrap();
                    t.elapsed()
                })
                .collect();
            row(
                &format!("broker offer+dial+call ({label})"),
                "rpcplugin",
                plugin.name,
                dials,
                false,
            );
            client.close();
            if network == "unix" {
                go_host(label, mtls, plugin, cycles, calls);
            }
        }
    }
}

static CLOSES: CloseLog = CloseLog::new();

/// Start and close the Go plugin `n` times, plain unix, in rounds of 10 alternating with
/// go-plugin's host; prints the medians of our start's stages and of both hosts' starts (for
/// go-plugin's, to the same point as ours: started, then Ping answered) and closes.
fn starts(n: usize) {
    assert!(
        Path::new(GO_PLUGIN).exists() && Path::new(GO_BENCH).exists(),
        "{GO_PLUGIN} and {GO_BENCH} are needed: cargo test --test interop_go builds them"
    );
    CLOSES.install();
    let median = |v: Vec<Duration>| stats(v).0;
    let (mut ours, mut go, mut go_lazy) = (Vec::new(), Vec::new(), Vec::new());
    let (mut our_closes, mut go_closes) = (Vec::new(), Vec::new());
    let mut stages: [Vec<Duration>; 4] = Default::default();
    for _ in 0..n.div_ceil(10) {
        for _ in 0..10 {
            let client = RpcPluginClient::new([GO_PLUGIN], config(false, "unix"));
            let t = Instant::now();
            client.start().expect("start");
            ours.push(t.elapsed());
            let timings = client.timings().expect("started");
            stages[0].push(timings.spawn);
            stages[1].push(timings.handshake);
            stages[2].push(timings.connect);
            stages[3].push(timings.health);
            let t = Instant::now();
            client.close();
            our_closes.push(t.elapsed());
        }
        let report =
            run_json(std::process::Command::new(GO_BENCH).args(["10", "1", "0", GO_PLUGIN]));
        go.extend(durations(&report, "ready"));
        go_lazy.extend(durations(&report, "start"));
        go_closes.extend(durations(&report, "close"));
    }
    let [spawn, handshake, connect, health] = stages.map(median);
    let (ours, go, go_lazy) = (median(ours), median(go), median(go_lazy));
    println!(
        "start, plain unix, go-plugin plugin, {n} each: ours {ours:.1?}, go-plugin's host \
         {go:.1?} to Ping answered ({go_lazy:.1?} to Dispense), ours / go {:.2}; our stages: \
         spawn {spawn:.1?}, handshake {handshake:.1?}, connect {connect:.1?}, health {health:.1?}",
        ours.as_secs_f64() / go.as_secs_f64()
    );
    let (ours, go) = (median(our_closes), median(go_closes));
    println!(
        "close, plain unix, go-plugin plugin, {n} each: ours {}, go-plugin's host {}, ours / go \
         {:.2}",
        micros(ours),
        micros(go),
        ours.as_secs_f64() / go.as_secs_f64()
    );
    let mut steps: Vec<(String, Vec<Duration>)> = Vec::new();
    for (_, line) in CLOSES.lines().iter() {
        for (i, (name, took)) in close_steps(line).into_iter().enumerate() {
            if steps.len() <= i {
                steps.push((name, Vec::new()));
            }
            steps[i].1.push(took);
        }
    }
    if !steps.is_empty() {
        let steps: Vec<String> = steps
            .into_iter()
            .map(|(name, took)| format!("{name} {:.1?}", median(took)))
            .collect();
        println!("our close's steps (medians): {}", steps.join(", "));
    }
}

/// The floor: the same Get through a grpcio channel built by hand to the plugin's socket, with
/// its own gRPC environment, no rpcplugin in the path. Interleaved call by call with the
/// generated stub, so both see the same machine; the gap is what the library adds per call.
fn floor(client: &RpcPluginClient, kv: &KvClient, get: &GetRequest, plugin: &str, calls: usize) {
    let Some(rpcplugin::Address::Unix(path)) = client.address() else {
        return;
    };
    let env = std::sync::Arc::new(grpcio::EnvBuilder::new().cq_count(1).build());
    let channel = grpcio::ChannelBuilder::new(env).connect(&format!("unix:{}", path.display()));
    let bare = grpcio::Client::new(channel);
    let call = || {
        bare.unary_call(
            &rpcplugin::proto::kv_grpc::METHOD_KV_GET,
            get,
            grpcio::CallOption::default(),
        )
        .unwrap()
    };
    for _ in 0..calls / 10 {
        call();
    }
    let (mut stub, mut raw) = (Vec::with_capacity(calls), Vec::with_capacity(calls));
    for _ in 0..calls {
        let t = Instant::now();
        kv.get(get).unwrap();
        stub.push(t.elapsed());
        let t = Instant::now();
        call();
        raw.push(t.elapsed());
    }
    row(
        "unary Get, interleaved: stub",
        "rpcplugin",
        plugin,
        stub,
        true,
    );
    row(
        "unary Get, interleaved: bare grpcio",
        "(none)",
        plugin,
        raw,
        true,
    );
}

/// The same start/close/unary measurements with go-plugin's own host (`go-kv-bench`), when built.
fn go_host(label: &str, mtls: bool, plugin: &Plugin, cycles: usize, calls: usize) {
    if !Path::new(GO_BENCH).exists() {
        return;
    }
    let report = run_json(
        std::process::Command::new(GO_BENCH)
            .arg(cycles.to_string())
            .arg(calls.to_string())
            .arg(if mtls { "1" } else { "0" })
            .args(&plugin.command),
    );
    let durations = |key: &str| durations(&report, key);
    row(
        &format!("start ({label})"),
        "go-plugin",
        plugin.name,
        durations("start"),
        false,
    );
    // go-plugin's start returns before its connection exists; ours returns connected and
    // health-checked. This row times go-plugin's host to that same point: start, then Ping.
    row(
        &format!("start + Ping ({label})"),
        "go-plugin",
        plugin.name,
        durations("ready"),
        false,
    );
    row(
        &format!("close ({label})"),
        "go-plugin",
        plugin.name,
        durations("close"),
        false,
    );
    row(
        &format!("unary Get ({label})"),
        "go-plugin",
        plugin.name,
        durations("get"),
        true,
    );
}
