//! Signals by pid and by process group, and the plugin-side SIGINT rule.

use std::io;

use rustix::process::{Pid, Signal};

/// The signal number as rustix's type (a signal this layer sends: SIGKILL, SIGTERM, …).
fn signal_of(signal: i32) -> io::Result<Signal> {
    Signal::from_named_raw(signal).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{signal} is not a signal number"),
        )
    })
}

fn pid_of(pid: u32) -> io::Result<Pid> {
    i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("pid {pid}")))
}

/// A process that no longer exists is not an error for a kill.
fn gone_is_ok(sent: rustix::io::Result<()>) -> io::Result<()> {
    match sent {
        Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Sends `signal` to every process in the process group `pgid`. A group that no longer exists is
/// not an error.
pub fn signal_group(pgid: u32, signal: i32) -> io::Result<()> {
    gone_is_ok(rustix::process::kill_process_group(
        pid_of(pgid)?,
        signal_of(signal)?,
    ))
}

/// Sends `signal` to the process `pid`. Callers make sure the pid names the process they mean
/// (see `ProcessHandle::signal`). A process that no longer exists is not an error.
pub(crate) fn signal_pid(pid: u32, signal: i32) -> io::Result<()> {
    gone_is_ok(rustix::process::kill_process(
        pid_of(pid)?,
        signal_of(signal)?,
    ))
}

/// Whether a process with this pid exists (it may belong to another user).
pub fn process_exists(pid: u32) -> bool {
    let Ok(pid) = pid_of(pid) else { return false };
    matches!(
        rustix::process::test_kill_process(pid),
        Ok(()) | Err(rustix::io::Errno::PERM)
    )
}

pub const SIGKILL: i32 = libc::SIGKILL;

/// Makes the process ignore SIGINT, as go-plugin plugins do: a Ctrl-C in the host's terminal is
/// the host's business, which then shuts its plugins down. (rustix leaves signal dispositions to
/// libc.)
pub fn ignore_sigint() {
    // SAFETY: installing SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
}
