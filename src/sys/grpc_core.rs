//! gRPC core's C API, where grpcio offers no safe way: its log hook and a deadline's time.

/// Sends gRPC core's own log lines (TLS handshake failures and the like) to the `log` crate under
/// the target `rpcplugin::grpc`, instead of the host's stderr. The level check happens per line,
/// so a logger installed later still gets them.
pub(crate) fn route_grpc_log() {
    extern "C" fn forward(args: *mut grpcio_sys::gpr_log_func_args) {
        let _ = std::panic::catch_unwind(|| {
            // SAFETY: gRPC passes valid, NUL-terminated strings for the duration of the call.
            let args = unsafe { &*args };
            let level = match args.severity {
                grpcio_sys::gpr_log_severity::GPR_LOG_SEVERITY_DEBUG => log::Level::Debug,
                grpcio_sys::gpr_log_severity::GPR_LOG_SEVERITY_INFO => log::Level::Info,
                grpcio_sys::gpr_log_severity::GPR_LOG_SEVERITY_ERROR => log::Level::Error,
            };
            if !log::log_enabled!(target: "rpcplugin::grpc", level) {
                return;
            }
            let message = unsafe { std::ffi::CStr::from_ptr(args.message) }.to_string_lossy();
            let file = unsafe { std::ffi::CStr::from_ptr(args.file) }.to_string_lossy();
            log::log!(target: "rpcplugin::grpc", level, "{message} ({file}:{})", args.line);
        });
    }
    // SAFETY: `forward` has the signature gRPC expects and never unwinds.
    unsafe { grpcio_sys::gpr_set_log_function(Some(forward)) }
}

/// The point in time a gRPC deadline stands for, or None for "no deadline". grpcio keeps the
/// deadline's `gpr_timespec` private; it is the struct's only field, converted to the realtime
/// clock, so it is read back here and checked for that clock before use.
pub(crate) fn deadline_instant(deadline: grpcio::Deadline) -> Option<std::time::Instant> {
    use grpcio_sys::{gpr_clock_type, gpr_timespec};
    // SAFETY: `grpcio::Deadline` is `Copy` with a single `gpr_timespec` field; transmute checks
    // the sizes match, and the value is validated below before it is trusted.
    let spec: gpr_timespec =
        unsafe { std::mem::transmute::<grpcio::Deadline, gpr_timespec>(deadline) };
    if spec.clock_type != gpr_clock_type::GPR_CLOCK_REALTIME
        || spec.tv_sec >= i64::MAX / 2
        || spec.tv_sec < 0
        || !(0..1_000_000_000).contains(&spec.tv_nsec)
    {
        return None;
    }
    let at =
        std::time::UNIX_EPOCH + std::time::Duration::new(spec.tv_sec as u64, spec.tv_nsec as u32);
    let now = std::time::Instant::now();
    Some(match at.duration_since(std::time::SystemTime::now()) {
        Ok(remaining) => now + remaining,
        Err(_) => now,
    })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    /// `deadline_instant` reads grpcio's private layout (`Cargo.toml` pins grpcio to the exact
    /// version it was written for). If an update changes that layout, this fails instead of
    /// every handler silently seeing no deadline.
    #[test]
    fn a_grpc_deadline_reads_back_as_the_instant_it_stands_for() {
        let before = Instant::now();
        let deadline = grpcio::Deadline::from(Duration::from_secs(30));
        let after = Instant::now();
        let at = super::deadline_instant(deadline).expect(
            "grpcio::Deadline no longer holds one realtime gpr_timespec: update \
             sys::grpc_core::deadline_instant for this grpcio version",
        );
        // The realtime clock may step meanwhile; a second either way is plenty for that.
        assert!(
            at >= before + Duration::from_secs(29) && at <= after + Duration::from_secs(31),
            "a deadline 30 s ahead read back as {:?} from now",
            at.saturating_duration_since(Instant::now())
        );
    }
}
