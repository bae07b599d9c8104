//! Multiplexed brokering on and off, side by side: unary round trips and broker
//! offer+dial+call (the plugin serves an Adder, the host dials it and calls once), with our host
//! and with go-plugin's own host (`go-kv-bench mux`), against our Rust plugin and the go-plugin
//! plugin, plain and with auto mTLS.
//!
//! `cargo bench --bench multiplex` (add `-- quick` for fewer iterations).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{durations, run_json, GO_BENCH, GO_PLUGIN};
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
    client.close().unwrap();
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
    let report = run_json(
        std::process::Command::new(GO_BENCH)
            .arg("mux")
            .arg(calls.to_string())
            .arg(dials.to_string())
            .arg(flag(multiplex))
            .arg(flag(mtls))
            .arg(command),
    );
    [durations(&report, "get"), durations(&report, "broker")]
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let (calls, dials) = if quick { (300, 20) } else { (3000, 100) };
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
                let [our_gets, our_dials] = ours(command, multiplex, mtls, calls, dials);
                let theirs = go_host.then(|| go(command, multiplex, mtls, calls, dials));
                let rows = [
                    ("unary Get", our_gets, 0),
                    ("broker offer+dial+call", our_dials, 1),
                ];
                for (what, samples, i) in rows {
                    let ours = median(samples);
                    let (go, ratio) = match &theirs {
                        Some(t) => {
                            let go = median(t[i].clone());
                            (
                                format!("{go:.1?}"),
                                format!("{:.2}", ours.as_secs_f64() / go.as_secs_f64()),
                            )
                        }
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
