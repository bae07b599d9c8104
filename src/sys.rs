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

/// Sends `signal` to one process. A process that no longer exists is not an error.
pub(crate) fn signal_process(pid: u32, signal: i32) -> io::Result<()> {
    // SAFETY: as above.
    if unsafe { libc::kill(pid as libc::pid_t, signal) } == 0 {
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
pub(crate) const SIGTERM: i32 = libc::SIGTERM;

/// Makes the process ignore SIGINT, as go-plugin plugins do: a Ctrl-C in the host's terminal is
/// the host's business, which then shuts its plugins down.
pub(crate) fn ignore_sigint() {
    // SAFETY: installing SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
}
