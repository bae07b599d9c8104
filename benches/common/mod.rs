//! What the benches share: the Go peers of `tests/interop` (built by any `cargo test`) and how
//! their JSON reports are read.
#![allow(dead_code)]

use std::time::Duration;

/// The go-plugin v1.8 KV plugin.
pub const GO_PLUGIN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target/interop/go-kv-plugin");
/// go-plugin's own host, measuring what our benches measure (`tests/interop/go/bench`).
pub const GO_BENCH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target/interop/go-kv-bench");

/// Runs a bench host, passes on what it says on stderr, and parses the one JSON document it
/// prints; a failed run stops the bench with its stderr.
pub fn run_json(command: &mut std::process::Command) -> serde_json::Value {
    let output = command.output().expect("running a bench host");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("the bench host's JSON report")
}

/// The nanosecond samples a report holds under `key`.
pub fn durations(report: &serde_json::Value, key: &str) -> Vec<Duration> {
    report[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key:?} samples in {report}"))
        .iter()
        .map(|n| Duration::from_nanos(n.as_u64().unwrap()))
        .collect()
}
