//! The machinery under both sides: the shared I/O thread ([`reactor`]), the park-based
//! executor that turns gRPC futures into blocking calls, the process-wide gRPC environment and
//! channels, TLS material, and the yamux session of multiplexed brokering. Knows nothing of
//! plugins, hosts or services.

use crate::error::{Error, Result};

pub(crate) mod executor;
pub(crate) mod grpc;
pub(crate) mod mux;
pub(crate) mod reactor;
pub(crate) mod tls;

/// The sum of `parts`, in a `const` (for bounds stated as the sum of named waits).
pub(crate) const fn total(parts: &[std::time::Duration]) -> std::time::Duration {
    let mut nanos: u128 = 0;
    let mut i = 0;
    while i < parts.len() {
        nanos += parts[i].as_nanos();
        i += 1;
    }
    std::time::Duration::from_nanos(nanos as u64)
}

/// A random number for unique socket names.
pub(crate) fn random_u32() -> u32 {
    let mut bytes = [0u8; 4];
    let _ = openssl::rand::rand_bytes(&mut bytes);
    u32::from_ne_bytes(bytes)
}

/// Spawns a named thread, turning a failure into this crate's error.
pub(crate) fn spawn_thread(
    name: &str,
    f: impl FnOnce() + Send + 'static,
) -> Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(f)
        .map_err(|e| Error::io(format!("starting thread {name}"), e))
}
