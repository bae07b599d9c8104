//! Pidfds (Linux 5.3+): a handle on one process that a recycled pid cannot fool, and
//! `waitid` on it to look at or reap our child.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

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

/// What `waitid` on a pidfd says about the process behind it.
pub(crate) enum ChildState {
    /// Running, or exited and not reaped yet (the status is known): its pid and process group
    /// id are still reserved for it.
    Unreaped(Option<ExitStatus>),
    /// Reaped by someone else (a `waitpid(-1)` elsewhere in the program, or `SIGCHLD` set to
    /// `SIG_IGN`), or not our child: its ids may already belong to another process.
    Gone,
}

/// `waitid(P_PIDFD, pidfd, flags)`, retried on EINTR. None when there is no such child any
/// more (ECHILD: reaped by someone else, or not ours).
pub(super) fn waitid_pidfd(
    pidfd: &std::os::fd::OwnedFd,
    flags: i32,
) -> io::Result<Option<libc::siginfo_t>> {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: siginfo_t is plain data; waitid only writes into it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: P_PIDFD with a valid pidfd; info is a valid out pointer.
        let rc = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                pidfd.as_raw_fd() as libc::id_t,
                &mut info,
                flags,
            )
        };
        if rc == 0 {
            return Ok(Some(info));
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::ECHILD) => return Ok(None),
            _ => return Err(err),
        }
    }
}

/// Looks at our child behind `pidfd` without reaping it (`waitid(P_PIDFD, WNOWAIT)`, Linux 5.4+).
/// `block`: wait for the exit; otherwise return at once.
pub(crate) fn child_state(pidfd: &std::os::fd::OwnedFd, block: bool) -> io::Result<ChildState> {
    let mut flags = libc::WEXITED | libc::WNOWAIT;
    if !block {
        flags |= libc::WNOHANG;
    }
    let Some(info) = waitid_pidfd(pidfd, flags)? else {
        return Ok(ChildState::Gone);
    };
    // SAFETY: waitid succeeded; si_pid is 0 when WNOHANG found no exited child.
    if unsafe { info.si_pid() } == 0 {
        return Ok(ChildState::Unreaped(None));
    }
    Ok(ChildState::Unreaped(Some(status_of(&info))))
}

/// Reaps our child behind `pidfd`. A child someone else reaped already is not an error.
pub(crate) fn reap(pidfd: &std::os::fd::OwnedFd) -> io::Result<()> {
    waitid_pidfd(pidfd, libc::WEXITED | libc::WNOHANG).map(drop)
}

fn status_of(info: &libc::siginfo_t) -> ExitStatus {
    // SAFETY: called for a siginfo that waitid filled for an exited child.
    let (code, status) = unsafe { (info.si_code, info.si_status()) };
    let raw = match code {
        libc::CLD_EXITED => (status & 0xff) << 8,
        libc::CLD_DUMPED => status | 0x80,
        _ => status,
    };
    ExitStatus::from_raw(raw)
}

/// Whether the process behind `pidfd` is still alive (its pidfd is not readable yet).
pub(crate) fn pidfd_alive(pidfd: &std::os::fd::OwnedFd) -> bool {
    use std::os::fd::AsRawFd;
    let mut fd = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let rc = unsafe { libc::poll(&mut fd, 1, 0) };
    rc == 0
}
