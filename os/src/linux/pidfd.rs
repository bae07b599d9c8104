//! Pidfds: a handle on one process that a recycled pid cannot fool, `waitid` on it to look at or
//! reap our child, and the probe that says which of these calls work here (each arrived in a
//! different kernel, and container profiles allow some and not others).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

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
        // SAFETY: getpid has no preconditions.
        let me = unsafe { libc::getpid() } as u32;
        let open = pidfd_open(me).is_ok();
        let not_a_pidfd = crate::fd::pipe().ok();
        let ebadf = |rc: libc::c_long| {
            rc < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EBADF)
        };
        let (waitid, send_signal) = match &not_a_pidfd {
            Some((read, _)) => {
                let fd = read.as_raw_fd();
                // SAFETY: siginfo_t is plain data; the fd is ours and not a pidfd, so neither
                // call can wait for or signal anything.
                unsafe {
                    let mut info: libc::siginfo_t = std::mem::zeroed();
                    let w = libc::waitid(
                        libc::P_PIDFD,
                        fd as libc::id_t,
                        &mut info,
                        libc::WEXITED | libc::WNOHANG,
                    );
                    let waitid = ebadf(w as libc::c_long);
                    let s = libc::syscall(
                        libc::SYS_pidfd_send_signal,
                        fd,
                        0,
                        std::ptr::null::<libc::siginfo_t>(),
                        0,
                    );
                    (waitid, ebadf(s))
                }
            }
            None => (false, false),
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
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this fd; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Sends `signal` through a pidfd. A process that already exited is not an error.
pub fn pidfd_signal(pidfd: &OwnedFd, signal: i32) -> io::Result<()> {
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

/// Which child a `waitid` is about.
#[derive(Clone, Copy)]
pub(super) enum Which<'a> {
    Pidfd(&'a OwnedFd),
    Pid(u32),
}

/// `waitid(P_PIDFD or P_PID, …, flags)`, retried on EINTR. None when there is no such child any
/// more (ECHILD: reaped by someone else, or not ours).
pub(super) fn waitid(which: Which<'_>, flags: i32) -> io::Result<Option<libc::siginfo_t>> {
    let (idtype, id) = match which {
        Which::Pidfd(fd) => (libc::P_PIDFD, fd.as_raw_fd() as libc::id_t),
        Which::Pid(pid) => (libc::P_PID, pid as libc::id_t),
    };
    loop {
        // SAFETY: siginfo_t is plain data; waitid only writes into it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: a valid idtype and id; info is a valid out pointer.
        let rc = unsafe { libc::waitid(idtype, id, &mut info, flags) };
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

/// Looks at our child without reaping it (`WNOWAIT`). `block`: wait for the exit; otherwise
/// return at once.
pub(super) fn child_state(which: Which<'_>, block: bool) -> io::Result<ChildState> {
    let mut flags = libc::WEXITED | libc::WNOWAIT;
    if !block {
        flags |= libc::WNOHANG;
    }
    let Some(info) = waitid(which, flags)? else {
        return Ok(ChildState::Gone);
    };
    // SAFETY: waitid succeeded; si_pid is 0 when WNOHANG found no exited child.
    if unsafe { info.si_pid() } == 0 {
        return Ok(ChildState::Unreaped(None));
    }
    Ok(ChildState::Unreaped(Some(status_of(&info))))
}

/// Reaps our child. A child someone else reaped already is not an error.
pub(super) fn reap(which: Which<'_>) -> io::Result<()> {
    waitid(which, libc::WEXITED | libc::WNOHANG).map(drop)
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

/// Whether `fd` (a pidfd, or the read end of an exit-watch pipe) is not readable yet: the
/// process behind it has not exited.
pub(super) fn not_readable(fd: std::os::fd::RawFd) -> bool {
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let rc = unsafe { libc::poll(&mut poll, 1, 0) };
    rc == 0
}
