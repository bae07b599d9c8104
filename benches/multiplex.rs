//! Multiplexed brokering on and off, side by side: unary round trips and broker
//! offer+dial+call (the plugin serves an Adder, the host dials it and calls once), with our host
//! and with go-plugin's own host (`go-kv-bench mux`), against our Rust plugin and the go-plugin
//! plugin, plain and with auto mTLS.
//!
//! Each row is the median of three alternating runs per host. `cargo bench --bench multiplex`
//! (add `-- quick` for one short run).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{durations, run_json_retried, GO_BENCH, GO_PLUGIN};
use rpcplugin::proto::kv::{AddRequest, GetRequest, PutRequest, ServeAdderRequest};
use rpcplugin::proto::kv_grpc::{AdderClient, KvClient};
use rpcplugin::{ClientConfig, RpcPluginClient};

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// (unary Get samples, broker offer+dial+call samples) with our host.
fn ours(
    command: &str,
    multiplex: bool,
    mtls: bool,
    calls: usize,
    dials: usize,
) -> [Vec<Duration>; 2] {
    let config = ClientConfig::new()
        .magic_cookie("KV_PLUGIN", "rpcplugin-kv")
        .auto_mtls(mtls)
        .grpc_broker_multiplex(multiplex)
        .start_timeout(Duration::from_secs(30));
    let client = RpcPluginClient::new([command], config);
    client.start().expect("start");
    let kv = KvClient::new(client.grpc_channel().unwrap());
    let mut put = PutRequest::new();
    put.key = "k".into();
    put.value = vec![0; 64];
    kv.put(&put).unwrap();
    let mut get = GetRequest::new();
    get.key = "k".into();
    for _ in 0..calls / 10 {
        kv.get(&get).unwrap();
    }
    let gets = (0..calls)
        .map(|_| {
            let t = Instant::now();
            kv.get(&get).unwrap();
            t.elapsed()
        })
        .collect();
    let broker = client.broker().unwrap();
    let brokered = (0..dials)
        .map(|_| {
            let t = Instant::now();
            let id = kv.serve_adder(&ServeAdderRequest::new()).unwrap().adder_id;
            let adder = AdderClient::new(broker.dial(id).unwrap());
            let mut add = AddRequest::new();
            add.a = 1;
            add.b = 2;
            adder.add(&add).unwrap();
            t.elapsed()
        })
        .collect();
    client.close();
    [gets, brokered]
}

fn go(
    command: &str,
    multiplex: bool,
    mtls: bool,
    calls: usize,
    dials: usize,
) -> [Vec<Duration>; 2] {
    let flag = |on: bool| if on { "1" } else { "0" };
    // Retried only against go-plugin's own plugin: a failure against ours is a finding.
    let retries = if command == GO_PLUGIN { 1 } else { 0 };
    let report = run_json_retried(retries, || {
        let mut go = std::process::Command::new(GO_BENCH);
        go.arg("mux")
            .arg(calls.to_string())
            .arg(dials.to_string())
            .arg(flag(multiplex))
            .arg(flag(mtls))
            .arg(command);
        go
    });
    [durations(&report, "get"), durations(&report, "broker")]
}

/// Medians of `rounds` alternating runs (ours, then go-plugin's, then ours...): the median of
/// each host's per-run medians, so a slow spell on this VM hits both hosts alike.
fn alternate(
    rounds: usize,
    mut ours_run: impl FnMut() -> [Vec<Duration>; 2],
    mut go_run: Option<impl FnMut() -> [Vec<Duration>; 2]>,
) -> [(Duration, Option<Duration>); 2] {
    let (mut our_medians, mut go_medians) = ([vec![], vec![]], [vec![], vec![]]);
    for _ in 0..rounds {
        for (i, samples) in ours_run().into_iter().enumerate() {
            our_medians[i].push(median(samples));
        }
        if let Some(go_run) = go_run.as_mut() {
            for (i, samples) in go_run().into_iter().enumerate() {
                go_medians[i].push(median(samples));
            }
        }
    }
    [0, 1].map(|i| {
        let go = (!go_medians[i].is_empty()).then(|| median(go_medians[i].clone()));
        (median(our_medians[i].clone()), go)
    })
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let (calls, dials, rounds) = if quick { (300, 20, 1) } else { (2000, 60, 3) };
    let rust = env!("CARGO_BIN_EXE_rpcplugin-test-plugin");
    let mut plugins = vec![("rust", rust)];
    if Path::new(GO_PLUGIN).exists() && Path::new(GO_BENCH).exists() {
        plugins.push(("go-plugin", GO_PLUGIN));
    } else {
        eprintln!("note: the Go peers are not built (cargo test --test interop_go builds them)");
    }
    let go_host = Path::new(GO_BENCH).exists();
    println!(
        "| plugin    | TLS   | measurement             | mux | ours median | go-plugin host median | ours ÷ go |"
    );
    println!(
        "|-----------|-------|-------------------------|-----|------------:|----------------------:|----------:|"
    );
    for (name, command) in plugins {
        for mtls in [false, true] {
            for multiplex in [false, true] {
                let medians = alternate(
                    rounds,
                    || ours(command, multiplex, mtls, calls, dials),
                    go_host.then_some(|| go(command, multiplex, mtls, calls, dials)),
                );
                let whats = ["unary Get", "broker offer+dial+call"];
                for (what, (ours, go)) in whats.into_iter().zip(medians) {
                    let (go, ratio) = match go {
                        Some(go) => (
                            format!("{go:.1?}"),
                            format!("{:.2}", ours.as_secs_f64() / go.as_secs_f64()),
                        ),
                        None => ("-".to_owned(), "-".to_owned()),
                    };
                    println!(
                        "| {name:<9} | {:<5} | {what:<23} | {:<3} | {:>11} | {go:>21} | {ratio:>9} |",
                        if mtls { "mTLS" } else { "plain" },
                        if multiplex { "on" } else { "off" },
                        format!("{ours:.1?}"),
                    );
                }
            }
        }
    }
}
