//! Pidfds: a handle on one process that a recycled pid cannot fool, `waitid` on it to look at or
//! reap our child, and the probe that says which of these calls work here (each arrived in a
//! different kernel, and container profiles allow some and not others).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

use rustix::process::{Pid, PidfdFlags, Signal, WaitId, WaitIdOptions, WaitIdStatus};

use crate::ChildState;

/// Which pidfd calls this process may use, each probed on its own: a kernel older than 5.4 lacks
/// some (`pidfd_send_signal` 5.1, `CLONE_PIDFD` 5.2, `pidfd_open` and polling 5.3,
/// `waitid(P_PIDFD)` 5.4), and a seccomp profile written before them answers EPERM to some while
/// allowing others.
#[derive(Debug)]
pub struct PidfdSupport {
    /// `pidfd_open` works.
    pub open: bool,
    /// `pidfd_send_signal` works.
    pub send_signal: bool,
    /// `waitid(P_PIDFD)` works.
    pub waitid: bool,
    /// `clone(CLONE_PIDFD)`: [`UNKNOWN`] until the first spawn tries it.
    clone: AtomicU8,
    /// For tests: `clone` behaves as before Linux 5.2 (the flag ignored, no pidfd written).
    #[cfg(test)]
    pub simulate_ignored_clone_flag: bool,
}

const UNKNOWN: u8 = 0;
const WORKS: u8 = 1;
const FAILS: u8 = 2;

/// The support of this process, probed on first use.
pub fn support() -> &'static PidfdSupport {
    static SUPPORT: OnceLock<PidfdSupport> = OnceLock::new();
    SUPPORT.get_or_init(|| {
        let support = PidfdSupport::probe();
        log::debug!("pidfd support: {}", support.describe());
        support
    })
}

impl PidfdSupport {
    /// Tries each call in a way that cannot affect any process: `pidfd_open` on ourselves, and
    /// `waitid(P_PIDFD)` and `pidfd_send_signal` on an fd that is not a pidfd, which a kernel that
    /// has the call answers with EBADF (an older one, or a seccomp filter, with ENOSYS, EINVAL
    /// or EPERM).
    pub fn probe() -> PidfdSupport {
        let open = pidfd_open(std::process::id()).is_ok();
        let (waitid, send_signal) = match crate::fd::pipe() {
            Ok((not_a_pidfd, _)) => {
                let ebadf = |r: rustix::io::Result<()>| r == Err(rustix::io::Errno::BADF);
                let flags = WaitIdOptions::EXITED | WaitIdOptions::NOHANG;
                let waited = rustix::process::waitid(WaitId::PidFd(not_a_pidfd.as_fd()), flags);
                // SIGKILL, but to an fd that is not a pidfd: the kernel refuses the fd first.
                let signalled = rustix::process::pidfd_send_signal(&not_a_pidfd, Signal::KILL);
                (ebadf(waited.map(drop)), ebadf(signalled))
            }
            Err(_) => (false, false),
        };
        PidfdSupport {
            open,
            send_signal,
            waitid,
            clone: AtomicU8::new(UNKNOWN),
            #[cfg(test)]
            simulate_ignored_clone_flag: false,
        }
    }

    /// For tests: a kernel with no pidfd call at all (Linux < 5.1), whose `clone` ignores the
    /// flag as kernels before 5.2 do.
    #[cfg(test)]
    pub fn none() -> PidfdSupport {
        PidfdSupport {
            open: false,
            send_signal: false,
            waitid: false,
            clone: AtomicU8::new(UNKNOWN),
            simulate_ignored_clone_flag: true,
        }
    }

    /// Whether a pidfd can be polled for the exit (Linux 5.3, the kernel that brought
    /// `pidfd_open`; `waitid(P_PIDFD)` came one release later). A 5.2 pidfd cannot be.
    pub fn pollable(&self) -> bool {
        self.open || self.waitid
    }

    /// Whether to ask `clone` for a pidfd: until it is known not to work.
    pub fn try_clone_flag(&self) -> bool {
        self.clone.load(Ordering::Relaxed) != FAILS
    }

    /// What the first spawns found out about `clone(CLONE_PIDFD)`.
    pub fn clone_flag_works(&self, works: bool) {
        let now = if works { WORKS } else { FAILS };
        if self.clone.swap(now, Ordering::Relaxed) != now && !works {
            log::debug!("clone(CLONE_PIDFD) gives no pidfd here; children are watched by pid");
        }
    }

    /// One line for logs and errors: each call and whether it works.
    pub fn describe(&self) -> String {
        let yes = |b: bool| if b { "yes" } else { "no" };
        let clone = match self.clone.load(Ordering::Relaxed) {
            WORKS => "yes",
            FAILS => "no",
            _ => "not tried yet",
        };
        format!(
            "pidfd_open {}, pidfd_send_signal {}, waitid(P_PIDFD) {}, clone(CLONE_PIDFD) {clone}",
            yes(self.open),
            yes(self.send_signal),
            yes(self.waitid),
        )
    }
}

/// A pidfd for a process that is not necessarily our child (Linux 5.3+). Signals sent through it
/// cannot reach a different process that reused the pid.
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ESRCH))?;
    Ok(rustix::process::pidfd_open(pid, PidfdFlags::empty())?)
}

/// Sends `signal` through a pidfd. A process that already exited is not an error.
pub fn pidfd_signal(pidfd: &OwnedFd, signal: i32) -> io::Result<()> {
    let signal =
        Signal::from_named_raw(signal).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    match rustix::process::pidfd_send_signal(pidfd, signal) {
        Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Which child a `waitid` is about.
#[derive(Clone, Copy)]
pub(super) enum Which<'a> {
    Pidfd(&'a OwnedFd),
    Pid(u32),
}

/// `waitid(P_PIDFD or P_PID, …, flags)`, retried on EINTR. `Ok(None)` when there is no such
/// child any more (ECHILD: reaped by someone else, or not ours); `Ok(Some(None))` when `NOHANG`
/// found it still running.
fn waitid(which: Which<'_>, flags: WaitIdOptions) -> io::Result<Option<Option<WaitIdStatus>>> {
    let pid = match which {
        Which::Pidfd(_) => None,
        Which::Pid(pid) => match i32::try_from(pid).ok().and_then(Pid::from_raw) {
            Some(pid) => Some(pid),
            None => return Ok(None),
        },
    };
    loop {
        let id = match (which, pid) {
            (Which::Pidfd(fd), _) => WaitId::PidFd(fd.as_fd()),
            (_, Some(pid)) => WaitId::Pid(pid),
            (Which::Pid(_), None) => return Ok(None),
        };
        match rustix::process::waitid(id, flags) {
            Ok(status) => return Ok(Some(status)),
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::CHILD) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Looks at our child without reaping it (`WNOWAIT`). `block`: wait for the exit; otherwise
/// return at once.
pub(super) fn child_state(which: Which<'_>, block: bool) -> io::Result<ChildState> {
    let mut flags = WaitIdOptions::EXITED | WaitIdOptions::NOWAIT;
    if !block {
        flags |= WaitIdOptions::NOHANG;
    }
    Ok(match waitid(which, flags)? {
        None => ChildState::Gone,
        Some(None) => ChildState::Unreaped(None),
        Some(Some(status)) => ChildState::Unreaped(Some(status_of(&status))),
    })
}

/// Reaps our child. A child someone else reaped already is not an error.
pub(super) fn reap(which: Which<'_>) -> io::Result<()> {
    waitid(which, WaitIdOptions::EXITED | WaitIdOptions::NOHANG).map(drop)
}

/// The wait status of an exited child, as `std` reads it: the exit code in the second byte, or
/// the signal (with 0x80 for a core dump).
fn status_of(status: &WaitIdStatus) -> ExitStatus {
    let raw = match (status.exit_status(), status.terminating_signal()) {
        (Some(code), _) => (code & 0xff) << 8,
        (None, Some(signal)) if status.dumped() => signal | 0x80,
        (None, Some(signal)) => signal,
        (None, None) => 0,
    };
    ExitStatus::from_raw(raw)
}

/// Whether `fd` (a pidfd, or the read end of an exit-watch pipe) is not readable yet: the
/// process behind it has not exited.
pub(super) fn not_readable(fd: std::os::fd::RawFd) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let fd = crate::fd::borrow(fd);
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    let now = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    matches!(rustix::event::poll(&mut fds, Some(&now)), Ok(0))
}
