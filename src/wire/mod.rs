//! The wire: what go-plugin peers write, as pure functions from bytes and text to values and
//! back. No I/O, no threads, no clocks: everything here can be fuzzed and tested on its own.

pub(crate) mod address;
pub(crate) mod handshake;
pub(crate) mod hclog;
pub(crate) mod reattach;
pub(crate) mod yamux;

pub(crate) use address::Address;

/// Keeps an error message readable when a peer sends something huge: at most 200 bytes of `s`,
/// then how long it was.
pub(crate) fn clip(s: &str) -> String {
    const MAX: usize = 200;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &s[..end], s.len())
}
