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
    try_run_json(command).unwrap_or_else(|failed| panic!("{failed}"))
}

/// A bench host's JSON report, or what it said on stderr when it failed.
fn try_run_json(command: &mut std::process::Command) -> Result<serde_json::Value, String> {
    let output = command.output().expect("running a bench host");
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(format!("{}:\n{stderr}", output.status));
    }
    eprint!("{stderr}");
    Ok(serde_json::from_slice(&output.stdout).expect("the bench host's JSON report"))
}

/// [`run_json`], run up to `retries` more times while it fails (each failure's stderr is
/// shown): go-plugin's own host, multiplexing against its own plugin, was seen failing about
/// one run in ten with "error reading server preface: EOF" on a broker dial, with no code of
/// this crate involved.
pub fn run_json_retried(
    retries: usize,
    mut command: impl FnMut() -> std::process::Command,
) -> serde_json::Value {
    for _ in 0..retries {
        match try_run_json(&mut command()) {
            Ok(report) => return report,
            Err(failed) => eprintln!("note: a bench host failed, run again: {failed}"),
        }
    }
    run_json(&mut command())
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

/// Keeps the library's per-close breakdown lines ("plugin N closed in ...: shutdown request
/// ..., exit ..."), with the whole close's duration, to explain closes.
pub struct CloseLog(std::sync::Mutex<Vec<(Duration, String)>>);

impl CloseLog {
    pub const fn new() -> CloseLog {
        CloseLog(std::sync::Mutex::new(Vec::new()))
    }

    /// Becomes the logger: warnings always, the close breakdowns only with
    /// `RPCPLUGIN_BENCH_EXPLAIN_CLOSE` set (formatting them is work go-plugin's silent host does
    /// not do). Returns whether it is set.
    pub fn install(&'static self) -> bool {
        let explain = std::env::var_os("RPCPLUGIN_BENCH_EXPLAIN_CLOSE").is_some();
        log::set_logger(self).unwrap();
        log::set_max_level(if explain {
            log::LevelFilter::Debug
        } else {
            log::LevelFilter::Warn
        });
        explain
    }

    /// The lines kept so far, with each close's duration.
    pub fn lines(&self) -> std::sync::MutexGuard<'_, Vec<(Duration, String)>> {
        self.0.lock().unwrap()
    }
}

impl log::Log for CloseLog {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.target().starts_with("rpcplugin::host") || m.level() <= log::Level::Warn
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = record.args().to_string();
        if record.level() <= log::Level::Warn {
            eprintln!("{}: {line}", record.level());
        }
        let took = line
            .split_once(" closed in ")
            .and_then(|(_, rest)| rest.split(':').next())
            .and_then(parse_debug_duration);
        if let Some(took) = took {
            self.0.lock().unwrap().push((took, line));
        }
    }

    fn flush(&self) {}
}

/// The named steps of a close breakdown line: `("shutdown request", 1.2ms), ("exit", ...)`.
pub fn close_steps(line: &str) -> Vec<(String, Duration)> {
    let Some((_, steps)) = line.split_once(": ") else {
        return Vec::new();
    };
    steps
        .split(", ")
        .filter_map(|step| {
            let (name, took) = step.rsplit_once(' ')?;
            Some((name.to_owned(), parse_debug_duration(took)?))
        })
        .collect()
}

/// A duration as `{:?}` prints it ("1.2ms", "870.1µs").
pub fn parse_debug_duration(text: &str) -> Option<Duration> {
    let units = [("ns", 1e-9), ("µs", 1e-6), ("ms", 1e-3), ("s", 1.0)];
    let (number, scale) = units
        .iter()
        .find_map(|(unit, scale)| Some((text.strip_suffix(unit)?, *scale)))?;
    Some(Duration::from_secs_f64(number.parse::<f64>().ok()? * scale))
}
