//! How long a plugin's stderr line takes to reach the `log` facade, with 1, 20 and 100 plugins in
//! one host, each writing a line every millisecond (100 plugins: 100 000 lines a second through
//! the one I/O thread). Each line carries the system-wide monotonic clock at its write; the
//! host's logger reads the clock again when the record arrives.
//!
//! `cargo bench --bench logs` (`-- quick`: 2 s per row instead of 5).

use std::sync::Mutex;
use std::time::Duration;

use rpcplugin::{ClientConfig, RpcPluginClient};

/// The monotonic clock in nanoseconds (the plugin reads the same clock).
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills a local struct.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// Records the delay of every "clock <ns>" line logged by a plugin.
struct Delays(Mutex<Vec<u64>>);

impl log::Log for Delays {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.target().starts_with("rpcplugin::plugin")
    }

    fn log(&self, record: &log::Record) {
        let now = monotonic_ns();
        if !self.enabled(record.metadata()) {
            return;
        }
        let message = record.args().to_string();
        if let Some(ns) = message
            .strip_prefix("clock ")
            .and_then(|n| n.trim().parse::<u64>().ok())
        {
            self.0.lock().unwrap().push(now.saturating_sub(ns));
        }
    }

    fn flush(&self) {}
}

static DELAYS: Delays = Delays(Mutex::new(Vec::new()));

fn main() {
    log::set_logger(&DELAYS).unwrap();
    log::set_max_level(log::LevelFilter::Debug);
    let run_for = if std::env::args().any(|a| a == "quick") {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(5)
    };
    let config = ClientConfig::new()
        .magic_cookie("KV_PLUGIN", "rpcplugin-kv")
        .env("TEST_PLUGIN_MODE", "clock-lines")
        .auto_mtls(false);
    println!("| plugins | lines | median | p99 | p99.9 | max |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for n in [1usize, 20, 100] {
        let clients: Vec<RpcPluginClient> = (0..n)
            .map(|_| {
                let client = RpcPluginClient::new(
                    [env!("CARGO_BIN_EXE_rpcplugin-test-plugin")],
                    config.clone(),
                );
                client.start().expect("start");
                client
            })
            .collect();
        // Lines from the starts (a busy moment) are left out: steady state only.
        DELAYS.0.lock().unwrap().clear();
        std::thread::sleep(run_for);
        let mut delays = std::mem::take(&mut *DELAYS.0.lock().unwrap());
        for client in &clients {
            client.close();
        }
        delays.sort_unstable();
        let q =
            |p: f64| Duration::from_nanos(delays[((delays.len() - 1) as f64 * p).round() as usize]);
        println!(
            "| {n} | {} | {:.0?} | {:.0?} | {:.0?} | {:.0?} |",
            delays.len(),
            q(0.5),
            q(0.99),
            q(0.999),
            q(1.0)
        );
    }
}
