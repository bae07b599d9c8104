//! The host's yamux session (client role) fed an arbitrary byte stream by the plugin.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rpcplugin::fuzzing::{yamux_session, YamuxSetup};

fuzz_target!(|data: &[u8]| {
    let [flags, a, b, input @ ..] = data else {
        return;
    };
    let setup = YamuxSetup {
        server: false,
        local_streams: flags & 3,
        local_bytes: u16::from_be_bytes([*a, *b]) % 8192,
        close: flags & 4 != 0,
        peer_reads_late: flags & 8 != 0,
    };
    yamux_session(setup, input);
});
