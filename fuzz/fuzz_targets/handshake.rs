//! The plugin's handshake line (the first line of its stdout), as the host parses it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the versions the host offers (a subset of 1..=8); the rest is the line,
    // read as the host reads stdout (invalid UTF-8 replaced).
    let [versions, line @ ..] = data else { return };
    let offered: Vec<u32> = (1..=8).filter(|v| versions & (1 << (v - 1)) != 0).collect();
    rpcplugin::fuzzing::handshake_line(&String::from_utf8_lossy(line), &offered);
});
