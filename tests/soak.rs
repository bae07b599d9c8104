//! A short soak in CI (`RPCPLUGIN_SOAK_CYCLES`, default 25): start → call → close cycles (every
//! other one multiplexed) and failing starts in one process leave its threads, fds, children and
//! temp entries as they were. The long run is `cargo run --release --example soak -- 1000`. One test in its own
//! binary, so that no other test changes the counts.

mod common;

#[path = "../examples/soak/cycles.rs"]
mod cycles;

use std::ffi::OsString;
use std::time::Duration;

use common::*;

#[test]
fn start_call_close_cycles_and_failing_starts_leave_nothing() {
    let cycles: usize = std::env::var("RPCPLUGIN_SOAK_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25);
    let parent = ScratchDir::new();
    let m = marker();
    // Every other session is multiplexed (one yamux connection, private listeners, bridges).
    let launch = |mode: &'static str| {
        let (parent, m) = (parent.0.clone(), m.clone());
        let sessions = std::cell::Cell::new(0u32);
        move || {
            sessions.set(sessions.get() + 1);
            let config = config(mode, &m)
                .socket_dir_parent(&parent)
                .grpc_broker_multiplex(sessions.get().is_multiple_of(2))
                .start_timeout(Duration::from_secs(20));
            (vec![OsString::from(test_plugin())], config)
        }
    };
    let report = cycles::soak(&launch("serve"), &launch("exit-early"), &parent.0, cycles);
    println!("{}", report.describe());
    assert!(report.clean(), "{}", report.describe());
    assert!(processes_with_marker(&m).is_empty());
}
