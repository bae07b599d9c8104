//! The broker's `ConnInfo` sequence from a hostile peer: announcements, knocks, acks, dials.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [flags, ops @ ..] = data else { return };
    rpcplugin::fuzzing::broker_sequence(flags & 1 != 0, flags & 2 != 0, ops);
});
