//! The pure parsers (handshake line, hclog line, reattach JSON) against generated garbage: they
//! must return a value or an error, never panic, and keep their invariants.

use rpcplugin::{parse_handshake, parse_log_line, ErrorKind, ReattachConfig};

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }

    /// A string built from protocol-shaped fragments and noise.
    fn line(&mut self, fragments: &[&str]) -> String {
        let n = self.next() % 12;
        (0..n).map(|_| self.pick(fragments)).collect()
    }
}

const HANDSHAKE_BITS: &[&str] = &[
    "1",
    "2",
    "-1",
    "0",
    "99999999999999999999",
    "|",
    "|",
    "unix",
    "tcp",
    "udp",
    "/tmp/p",
    ":1",
    "127.0.0.1:",
    "[::1]:9",
    "grpc",
    "netrpc",
    "",
    " ",
    "\n",
    "\r",
    "MIIB",
    "=",
    "é",
    "\0",
    "true",
    "x",
];
const LOG_BITS: &[&str] = &[
    "{",
    "}",
    "\"@level\":",
    "\"@message\":",
    "\"@timestamp\":",
    "\"2026-01-02T03:04:05.123456Z\"",
    "\"info\"",
    "\"bogus\"",
    "1",
    "null",
    "[",
    "]",
    ",",
    ":",
    "\"k\"",
    "[WARN]",
    "panic: ",
    "fatal error: ",
    "é",
    "\\u0000",
    " ",
];
const JSON_BITS: &[&str] = &[
    "{",
    "}",
    "\"p\":",
    "\"Protocol\":",
    "\"grpc\"",
    "\"Pid\":",
    "-1",
    "4294967296",
    "7",
    "\"Test\":",
    "true",
    "\"Addr\":",
    "\"Network\":",
    "\"unix\"",
    "\"tcp\"",
    "\"String\":",
    "\"/s\"",
    "\"1.2.3.4:5\"",
    ",",
    "null",
    "[",
    "]",
];

#[test]
fn handshake_parser_never_panics_and_accepts_only_what_it_should() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..20_000 {
        let line = rng.line(HANDSHAKE_BITS);
        if let Ok(h) = parse_handshake(&line, &[1, 2]) {
            assert!([1, 2].contains(&h.app_version), "{line:?}");
            assert_eq!(h.protocol, "grpc", "{line:?}");
            assert!(
                line.trim().starts_with('1') || line.trim().starts_with("+1"),
                "{line:?}"
            );
        }
    }
}

#[test]
fn log_parser_never_panics_and_keeps_the_raw_line() {
    let mut rng = Rng(42);
    let mut panic_mode = false;
    for _ in 0..20_000 {
        let line = rng.line(LOG_BITS);
        let parsed = parse_log_line(&line, &mut panic_mode);
        assert_eq!(parsed.raw, line);
        assert!(!parsed.partial);
    }
}

#[test]
fn reattach_parser_never_panics_and_errors_are_reattach_errors() {
    let mut rng = Rng(7);
    for _ in 0..20_000 {
        let json = rng.line(JSON_BITS);
        if let Err(e) = ReattachConfig::from_tf_reattach_providers(&json) {
            assert_eq!(e.kind(), ErrorKind::Reattach, "{json:?}: {e}");
        }
    }
}
