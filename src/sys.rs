//! The few process syscalls std lacks. All `unsafe` of the crate lives here.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

/// Blocks until process `pid` (a child of ours) has exited, without reaping it: the pid and its
/// process group id stay reserved until someone calls `wait`, so signalling them stays safe
/// against pid reuse.
pub(crate) fn wait_exit_no_reap(pid: u32) -> io::Result<ExitStatus> {
    loop {
        // SAFETY: siginfo_t is plain data; waitid only writes into it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if rc == 0 {
            // SAFETY: waitid succeeded with WEXITED, so the child fields are set.
            let (code, status) = unsafe { (info.si_code, info.si_status()) };
            let raw = match code {
                libc::CLD_EXITED => (status & 0xff) << 8,
                libc::CLD_DUMPED => status | 0x80,
                _ => status,
            };
            return Ok(ExitStatus::from_raw(raw));
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Sends `signal` to every process in the process group `pgid`. A group that no longer exists is
/// not an error.
pub(crate) fn signal_group(pgid: u32, signal: i32) -> io::Result<()> {
    // SAFETY: kill has no memory effects; a negative pid addresses the group.
    if unsafe { libc::kill(-(pgid as libc::pid_t), signal) } == 0 {
        return Ok(());
    }
    match io::Error::last_os_error() {
        e if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
        e => Err(e),
    }
}

/// Whether a process with this pid exists (it may belong to another user).
pub(crate) fn process_exists(pid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

pub(crate) const SIGKILL: i32 = libc::SIGKILL;

/// Makes the process ignore SIGINT, as go-plugin plugins do: a Ctrl-C in the host's terminal is
/// the host's business, which then shuts its plugins down.
pub(crate) fn ignore_sigint() {
    // SAFETY: installing SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
}

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

/// A pidfd for a process that is not necessarily our child (Linux 5.3+). Signals sent through it
/// cannot reach a different process that reused the pid.
pub(crate) fn pidfd_open(pid: u32) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this fd; nobody else owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// Sends `signal` through a pidfd. A process that already exited is not an error.
pub(crate) fn pidfd_signal(pidfd: &std::os::fd::OwnedFd, signal: i32) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid pidfd, a signal number, no siginfo, no flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    match io::Error::last_os_error() {
        e if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
        e => Err(e),
    }
}

/// Blocks until the process behind `pidfd` exits (true) or `cancel` becomes readable (false).
pub(crate) fn wait_pidfd_or_cancel(
    pidfd: &std::os::fd::OwnedFd,
    cancel: &impl std::os::fd::AsRawFd,
) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    let mut fds = [
        libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: cancel.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: fds is a valid array of two pollfd for the duration of the call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if rc >= 0 {
            if fds[0].revents != 0 {
                return Ok(true);
            }
            if fds[1].revents != 0 {
                return Ok(false);
            }
            continue;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Makes the child SIGKILLed by the kernel when the thread that spawned it goes away, which for
/// our dedicated spawner thread means: when the host process dies, however it dies.
pub(crate) fn kill_child_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: getpid is async-signal-safe and called before the fork.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the closure runs between fork and exec and calls only async-signal-safe functions
    // (prctl, getppid); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The host may have died between fork and prctl.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
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
