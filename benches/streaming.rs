//! Streaming throughput against the go-plugin plugin: a 64 MiB upload in 1 MiB chunks (client
//! streaming) and its download in 1 MiB chunks (server streaming), plain and with auto mTLS; ours
//! and go-plugin's host (`target/interop/go-kv-bench stream`), side by side in one run.
//!
//! `cargo bench --bench streaming` (7 rounds each, the first a warm-up; `-- quick` for 3). The Go peers must be built
//! (`cargo test --test interop_go` builds them).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{durations, run_json, GO_BENCH, GO_PLUGIN};
use rpcplugin::proto::kv::{Chunk, DownloadRequest};
use rpcplugin::proto::kv_grpc::KvClient;
use rpcplugin::{ClientConfig, RpcPluginClient};

const MIB: usize = 64;

/// Upload and download times of `rounds` rounds with our host.
fn ours(rounds: usize, mtls: bool) -> (Vec<Duration>, Vec<Duration>) {
    let client = RpcPluginClient::new(
        [GO_PLUGIN],
        ClientConfig::new()
            .magic_cookie("KV_PLUGIN", "rpcplugin-kv")
            .auto_mtls(mtls),
    );
    client.start().expect("start");
    let kv = KvClient::new(client.grpc_channel().unwrap());
    let data: Vec<u8> = (0..1 << 20).map(|i| i as u8).collect();
    let (mut ups, mut downs) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        let mut upload = kv.upload().unwrap();
        for _ in 0..MIB {
            let mut chunk = Chunk::new();
            chunk.key = "blob".into();
            chunk.data = data.clone();
            upload.send(chunk).unwrap();
        }
        assert_eq!(upload.finish().unwrap().size, (MIB << 20) as u64);
        ups.push(t.elapsed());

        let t = Instant::now();
        let mut req = DownloadRequest::new();
        req.key = "blob".into();
        req.chunk_size = 1 << 20;
        let total: usize = kv
            .download(&req)
            .unwrap()
            .map(|c| c.unwrap().data.len())
            .sum();
        assert_eq!(total, MIB << 20);
        downs.push(t.elapsed());
    }
    client.close();
    (ups, downs)
}

/// The same with go-plugin's host.
fn go(rounds: usize, mtls: bool) -> (Vec<Duration>, Vec<Duration>) {
    let report = run_json(
        std::process::Command::new(GO_BENCH)
            .args(["stream", &rounds.to_string(), &MIB.to_string()])
            .arg(if mtls { "1" } else { "0" })
            .arg(GO_PLUGIN),
    );
    (durations(&report, "upload"), durations(&report, "download"))
}

/// MB/s (10^6 bytes per second) of the median round, the first (warm-up: flow-control windows
/// and the plugin's buffers grow) left out.
fn rate(mut samples: Vec<Duration>) -> f64 {
    samples.remove(0);
    samples.sort();
    (MIB << 20) as f64 / samples[samples.len() / 2].as_secs_f64() / 1e6
}

fn main() {
    assert!(
        Path::new(GO_PLUGIN).exists() && Path::new(GO_BENCH).exists(),
        "{GO_PLUGIN} and {GO_BENCH} are needed: cargo test --test interop_go builds them"
    );
    let rounds = if std::env::args().any(|a| a == "quick") {
        3
    } else {
        7
    };
    println!("| {MIB} MiB, 1 MiB chunks | TLS | rpcplugin | go-plugin host | ours ÷ go |");
    println!("|---|---|---:|---:|---:|");
    for mtls in [false, true] {
        let (our_up, our_down) = ours(rounds, mtls);
        let (go_up, go_down) = go(rounds, mtls);
        let tls = if mtls { "auto mTLS" } else { "plain" };
        for (what, ours, go) in [
            ("upload (client streaming)", our_up, go_up),
            ("download (server streaming)", our_down, go_down),
        ] {
            let (ours, go) = (rate(ours), rate(go));
            println!(
                "| {what} | {tls} | {ours:.0} MB/s | {go:.0} MB/s | {:.2} |",
                ours / go
            );
        }
    }
}
