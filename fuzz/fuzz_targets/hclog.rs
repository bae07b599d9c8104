//! A plugin's stderr: split into lines (in whatever pieces it arrives) and parsed as hclog.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Two bytes: the log buffer size (1 to 512); one byte: how many cuts (up to 7), then one byte
    // per cut (the piece's length); the rest is the stderr stream.
    let [a, b, cuts, rest @ ..] = data else {
        return;
    };
    let buffer_size = 1 + usize::from(u16::from_be_bytes([*a, *b]) % 512);
    let n = usize::from(cuts % 8).min(rest.len());
    let (cuts, stream) = rest.split_at(n);
    let cuts: Vec<usize> = cuts.iter().map(|&c| usize::from(c)).collect();
    rpcplugin::fuzzing::stderr_stream(stream, buffer_size, &cuts);
    // And each line on its own, as `parse_log_line` is public.
    let mut panic_mode = false;
    for line in String::from_utf8_lossy(stream).lines() {
        let parsed = rpcplugin::parse_log_line(line, &mut panic_mode);
        assert_eq!(parsed.raw, line);
    }
});
