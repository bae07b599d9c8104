//! Signals by pid and by process group, and the plugin-side SIGINT rule.

use std::io;

/// Sends `signal` to every process in the process group `pgid`. A group that no longer exists is
/// not an error.
pub fn signal_group(pgid: u32, signal: i32) -> io::Result<()> {
    // SAFETY: kill has no memory effects; a negative pid addresses the group.
    if unsafe { libc::kill(-(pgid as libc::pid_t), signal) } == 0 {
        return Ok(());
    }
    match io::Error::last_os_error() {
        e if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
        e => Err(e),
    }
}

/// Sends `signal` to the process `pid`. Callers make sure the pid names the process they mean
/// (see `ProcessHandle::signal`). A process that no longer exists is not an error.
pub(super) fn signal_pid(pid: u32, signal: i32) -> io::Result<()> {
    // SAFETY: kill has no memory effects.
    if unsafe { libc::kill(pid as libc::pid_t, signal) } == 0 {
        return Ok(());
    }
    match io::Error::last_os_error() {
        e if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
        e => Err(e),
    }
}

/// Whether a process with this pid exists (it may belong to another user).
pub fn process_exists(pid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

pub const SIGKILL: i32 = libc::SIGKILL;

/// Makes the process ignore SIGINT, as go-plugin plugins do: a Ctrl-C in the host's terminal is
/// the host's business, which then shuts its plugins down.
pub fn ignore_sigint() {
    // SAFETY: installing SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
}
