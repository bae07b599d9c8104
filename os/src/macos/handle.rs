//! A handle on one process on macOS, where there are no pidfds: a kqueue per process watching
//! it for `NOTE_EXIT` (for our children with `NOTE_EXITSTATUS`, which hands over the status
//! without reaping), and its pid, used only while it cannot name anyone else: our child while
//! the kqueue has not seen it exit (unreaped, its pid stays reserved), another process while
//! libproc shows it running with the start time recorded when it was named.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::Mutex;

use rustix::event::kqueue::{Event, EventFilter, EventFlags, ProcessEvents};
use rustix::event::kqueue::{UserDefinedFlags, UserFlags};

use super::kqueue::{apply, new_kqueue, wait_events};
use super::libproc::{group_members, process_info};
use crate::ChildState;

/// The `EVFILT_USER` event a handle's kqueue keeps triggered once the exit has been read, so
/// the kqueue stays readable (as a pidfd does) for every later look.
const EXITED: isize = 1;

/// The `EXITED` user event: added, or triggered.
fn exited_event(flags: EventFlags, user: UserFlags) -> Event {
    let filter = EventFilter::User {
        ident: EXITED,
        flags: user,
        user_flags: UserDefinedFlags::new(0),
    };
    Event::new(filter, flags, std::ptr::null_mut())
}

/// A process: our child (launched) or another (attached).
pub struct ProcessHandle {
    pid: u32,
    child: bool,
    /// Watches the process's exit; readable once it has exited.
    kq: OwnedFd,
    /// The exit once seen: with the status for our child.
    exit: Mutex<Option<Option<ExitStatus>>>,
    /// For a process that is not our child: its start time when it was named.
    started: Option<u64>,
    /// Our child was reaped (by `reap`): its pid and group id may be anyone's now.
    reaped: std::sync::atomic::AtomicBool,
}

impl ProcessHandle {
    /// Our child, just spawned.
    pub(super) fn spawned(pid: u32) -> io::Result<ProcessHandle> {
        Self::watch(pid, true, None)
    }

    /// A running process that is not our child (reattach).
    pub fn open(pid: u32) -> io::Result<ProcessHandle> {
        match process_info(pid) {
            Some(info) if info.running() => Self::watch(pid, false, Some(info.started)),
            _ => Err(io::Error::from_raw_os_error(libc::ESRCH)),
        }
    }

    fn watch(pid: u32, child: bool, started: Option<u64>) -> io::Result<ProcessHandle> {
        let kq = new_kqueue()?;
        apply(&kq, exited_event(EventFlags::ADD, UserFlags::empty()))?;
        let mut flags = ProcessEvents::EXIT;
        if child {
            // Apple's NOTE_EXITSTATUS (the status in the event's data), which rustix does not
            // name.
            flags |= ProcessEvents::from_bits_retain(libc::NOTE_EXITSTATUS);
        }
        let rustix_pid = i32::try_from(pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ESRCH))?;
        let filter = EventFilter::Proc {
            pid: rustix_pid,
            flags,
        };
        let proc_exit = Event::new(filter, EventFlags::ADD, std::ptr::null_mut());
        let handle = ProcessHandle {
            pid,
            child,
            kq,
            exit: Mutex::new(None),
            started,
            reaped: std::sync::atomic::AtomicBool::new(false),
        };
        match apply(&handle.kq, proc_exit) {
            Ok(()) => {}
            // Gone before it could be watched: an exited child (a zombie) cannot be watched. Its
            // status is read without reaping, waiting if it is still on its way out; a child
            // that someone else reaped already is reported as such.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
                if !child {
                    handle.exited(None)?;
                } else {
                    match exited_child_status(pid) {
                        Some(status) => handle.exited(Some(status))?,
                        None => {
                            handle
                                .reaped
                                .store(true, std::sync::atomic::Ordering::SeqCst);
                            handle.exited(None)?;
                        }
                    }
                }
            }
            Err(e) => return Err(e),
        }
        Ok(handle)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// An fd that turns readable when the process exits, and stays so: the kqueue.
    pub fn exit_fd(&self) -> io::Result<RawFd> {
        Ok(self.kq.as_raw_fd())
    }

    /// Whether the process has not exited yet.
    pub fn alive(&self) -> bool {
        matches!(self.look(false), Ok(None))
    }

    /// What the kqueue says about our child (for a process that is not our child: `Gone`).
    pub fn state(&self, block: bool) -> io::Result<ChildState> {
        if !self.child {
            return Ok(ChildState::Gone);
        }
        if self.reaped.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(ChildState::Gone);
        }
        let seen = self.look(block)?;
        // Exited or not, a child that someone else reaped (`SIGCHLD` ignored, a `waitpid(-1)`
        // loop) no longer reserves its pid and group id.
        if reaped_elsewhere(self.pid) {
            return Ok(ChildState::Gone);
        }
        Ok(ChildState::Unreaped(seen.flatten()))
    }

    /// Reaps our child (someone else having reaped it is not an error).
    pub fn reap(&self) -> io::Result<()> {
        if !self.child {
            return Ok(());
        }
        let Some(pid) = i32::try_from(self.pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        else {
            return Ok(());
        };
        match rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::NOHANG) {
            Ok(Some(_)) | Err(rustix::io::Errno::CHILD) => {
                self.reaped.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            Ok(None) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    /// Sends `signal` to this process and no other. A process that has exited is not an error.
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        // By pid only while it cannot name another process: our child not seen exiting (and
        // not reaped elsewhere), or the attached process still running with the start time it
        // had when named.
        let named = if self.child {
            matches!(self.state(false)?, ChildState::Unreaped(None))
        } else {
            self.alive()
                && matches!(
                    process_info(self.pid),
                    Some(info) if info.running() && Some(info.started) == self.started
                )
        };
        if named {
            crate::signal::signal_pid(self.pid, signal)?;
        }
        Ok(())
    }

    /// The exit if seen (with our child's status), reading the kqueue: at once, or waiting for
    /// it when `block`. No lock is held while waiting: whoever reads the exit records it and
    /// triggers the `EXITED` event, which wakes every other waiter to find it recorded.
    fn look(&self, block: bool) -> io::Result<Option<Option<ExitStatus>>> {
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let timeout = if block { None } else { Some(&zero) };
        loop {
            if let Some(seen) = *self.exit.lock().unwrap_or_else(|p| p.into_inner()) {
                return Ok(Some(seen));
            }
            let mut events = [const { std::mem::MaybeUninit::<Event>::uninit() }; 1];
            if wait_events(&self.kq, &mut events, timeout)? == 0 {
                return Ok(None);
            }
            // SAFETY: kevent wrote the one event.
            let event = unsafe { events[0].assume_init_ref() };
            if let EventFilter::Proc { flags, .. } = event.filter() {
                if flags.contains(ProcessEvents::EXIT) {
                    let status = self
                        .child
                        .then(|| ExitStatus::from_raw(event.data() as libc::c_int));
                    self.exited(status)?;
                    return Ok(Some(status));
                }
            }
            // The EXITED event: someone else read the exit; it is recorded now.
        }
    }

    /// Records the exit and keeps the kqueue readable from now on.
    fn exited(&self, status: Option<ExitStatus>) -> io::Result<()> {
        *self.exit.lock().unwrap_or_else(|p| p.into_inner()) = Some(status);
        apply(
            &self.kq,
            exited_event(EventFlags::empty(), UserFlags::TRIGGER),
        )
    }
}

impl std::fmt::Debug for ProcessHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessHandle")
            .field("pid", &self.pid)
            .field("child", &self.child)
            .finish_non_exhaustive()
    }
}

/// The status of our child that exited before its kqueue watch could be added: `waitid(WNOWAIT)`
/// reads it without reaping, waiting for the child to finish exiting (it is on its way out, so
/// the wait is short). None when someone else reaped it already (ECHILD). Darwin may leave
/// `siginfo_t` untouched, so it is zeroed first (rustix's `waitid` would read it uninitialised
/// then, so libc is called here).
fn exited_child_status(pid: u32) -> Option<ExitStatus> {
    loop {
        // SAFETY: siginfo_t is plain data; waitid only writes into it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let flags = libc::WEXITED | libc::WNOWAIT;
        // SAFETY: a valid idtype and id; `info` is a valid out pointer.
        let rc = unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, flags) };
        if rc != 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return None;
        }
        // SAFETY: waitid succeeded for an exited child.
        let (code, status) = unsafe { (info.si_code, info.si_status()) };
        return Some(ExitStatus::from_raw(match code {
            libc::CLD_EXITED => (status & 0xff) << 8,
            libc::CLD_DUMPED => status | 0x80,
            _ => status,
        }));
    }
}

/// Whether our child was reaped by someone else (a `waitpid(-1)` elsewhere, or `SIGCHLD`
/// ignored): no child with that pid is left to wait for.
fn reaped_elsewhere(pid: u32) -> bool {
    // SAFETY: siginfo_t is plain data; waitid only writes into it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let flags = libc::WEXITED | libc::WNOWAIT | libc::WNOHANG;
    // SAFETY: a valid idtype and id; `info` is a valid out pointer.
    let rc = unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, flags) };
    rc != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD)
}

/// Kills what is left of process group `pgid` after its leader was reaped by someone else.
/// A live process with pid `pgid` means the id was recycled after the group emptied, and then
/// nothing is signalled; each member is signalled through a [`ProcessHandle`] after checking,
/// once it is pinned, that it is still in the group. Returns how many were signalled.
pub fn kill_leaderless_group(pgid: u32) -> usize {
    if process_info(pgid).is_some() {
        return 0;
    }
    let mut killed = 0;
    for pid in group_members(pgid) {
        let Ok(process) = ProcessHandle::open(pid) else {
            continue;
        };
        let in_group = process_info(pid).is_some_and(|info| info.pgid == pgid);
        if in_group && process.alive() && process.signal(crate::signal::SIGKILL).is_ok() {
            killed += 1;
        }
    }
    killed
}
