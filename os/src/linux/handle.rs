//! A handle on one process, with or without pidfds: the pidfd where this kernel (and container)
//! gives one, else the pid, used only while it cannot name anyone else.
//!
//! Without pidfds, our child is watched by a thread blocked in `waitid(P_PID, WEXITED|WNOWAIT)`
//! (the exit is seen without reaping, so the pid stays reserved), and signalled by pid only after
//! `waitid(WNOHANG|WNOWAIT)` has just found it running. A process we did not start (reattach) is
//! named by its pid and its start time from `/proc`, watched by polling that every
//! [`FOREIGN_POLL`], and signalled only while both still match.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use super::pidfd::{self, support, PidfdSupport, Which};
use crate::ChildState;

/// How often the exit of a process we did not start is looked for when there is no pidfd.
pub const FOREIGN_POLL: Duration = Duration::from_millis(100);

/// A process: our child (launched) or another (attached).
pub struct ProcessHandle {
    pid: u32,
    /// Which pidfd calls work (the process's probe; tests pass their own).
    support: &'static PidfdSupport,
    /// Our child: `waitid` works on it.
    child: bool,
    /// A pollable pidfd, where this kernel and container give one.
    pidfd: Option<OwnedFd>,
    /// Without a pidfd: the start time `/proc` gave the process when it was named (for
    /// processes that are not our children).
    start_time: Option<u64>,
    /// Without a pidfd: the thread that watches for the exit, started on first use.
    watch: OnceLock<io::Result<ExitWatch>>,
}

/// A thread that closes `write` (so `read` turns readable) when the process exits.
struct ExitWatch {
    read: OwnedFd,
    stop: Option<crossbeam_channel::Sender<()>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl ProcessHandle {
    /// Our child just spawned, with the pidfd `clone` gave (if any). Without one, tries
    /// `pidfd_open`: the child is unreaped, so its pid still names it.
    pub(super) fn spawned(
        pid: u32,
        pidfd: Option<OwnedFd>,
        support: &'static PidfdSupport,
    ) -> ProcessHandle {
        let pidfd = match pidfd {
            Some(fd) if support.pollable() => Some(fd),
            Some(_) => None,
            None if support.open => pidfd::pidfd_open(pid).ok(),
            None => None,
        };
        ProcessHandle {
            pid,
            support,
            child: true,
            pidfd,
            start_time: None,
            watch: OnceLock::new(),
        }
    }

    /// A running process that is not our child (reattach).
    pub fn open(pid: u32) -> io::Result<ProcessHandle> {
        let support = support();
        let (pidfd, start_time) = if support.open {
            (Some(pidfd::pidfd_open(pid)?), None)
        } else {
            match super::procfs::process_start(pid)? {
                Some(start) if start.running() => (None, Some(start.ticks)),
                _ => return Err(io::Error::from_raw_os_error(libc::ESRCH)),
            }
        };
        Ok(ProcessHandle {
            pid,
            support,
            child: false,
            pidfd,
            start_time,
            watch: OnceLock::new(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether a pidfd backs this handle (else the pid, with the checks above).
    #[cfg(test)]
    pub fn has_pidfd(&self) -> bool {
        self.pidfd.is_some()
    }

    /// An fd that turns readable when the process exits: the pidfd, or the read end of the
    /// exit watch's pipe (its thread is started by the first call).
    pub fn exit_fd(&self) -> io::Result<RawFd> {
        if let Some(fd) = &self.pidfd {
            return Ok(fd.as_raw_fd());
        }
        match self.watch.get_or_init(|| ExitWatch::start(self)) {
            Ok(watch) => Ok(watch.read.as_raw_fd()),
            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
        }
    }

    /// Whether the process has not exited yet.
    pub fn alive(&self) -> bool {
        if let Some(fd) = &self.pidfd {
            return pidfd::not_readable(fd.as_raw_fd());
        }
        if self.child {
            return matches!(self.state(false), Ok(ChildState::Unreaped(None)));
        }
        self.same_foreign_process_running()
    }

    /// What `waitid` says about our child (for a process that is not our child: `Gone`).
    pub fn state(&self, block: bool) -> io::Result<ChildState> {
        if !self.child {
            return Ok(ChildState::Gone);
        }
        pidfd::child_state(self.which(), block)
    }

    /// Reaps our child (someone else having reaped it is not an error), and ends the exit watch.
    pub fn reap(&self) -> io::Result<()> {
        let reaped = if self.child {
            pidfd::reap(self.which())
        } else {
            Ok(())
        };
        if let Some(Ok(watch)) = self.watch.get() {
            watch.join_if_done();
        }
        reaped
    }

    /// Sends `signal` to this process and no other. A process that has exited is not an error.
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        if let Some(fd) = self.pidfd.as_ref().filter(|_| self.support.send_signal) {
            return pidfd::pidfd_signal(fd, signal);
        }
        // By pid, only when it cannot name another process: our child seen running just now
        // (a running child's pid stays reserved until it exits and is reaped), or the attached
        // process seen running with its start time unchanged. Either would have to exit, be
        // reaped elsewhere, and its pid come round again (pids are handed out cyclically up to
        // pid_max) between two consecutive system calls.
        let named = if self.child {
            matches!(self.state(false)?, ChildState::Unreaped(None))
        } else {
            self.same_foreign_process_running()
        };
        if named {
            crate::signal::signal_pid(self.pid, signal)?;
        }
        Ok(())
    }

    fn which(&self) -> Which<'_> {
        match &self.pidfd {
            Some(fd) if self.support.waitid => Which::Pidfd(fd),
            _ => Which::Pid(self.pid),
        }
    }

    /// For a process that is not our child, without a pidfd: it still runs (not a zombie) and
    /// its start time is the one recorded.
    fn same_foreign_process_running(&self) -> bool {
        if let Some(fd) = &self.pidfd {
            return pidfd::not_readable(fd.as_raw_fd());
        }
        matches!(
            super::procfs::process_start(self.pid),
            Ok(Some(start)) if start.running() && Some(start.ticks) == self.start_time
        )
    }
}

/// Kills what is left of process group `pgid` after its leader was reaped by someone else
/// (our plugin's own children, still in its group). Linux never hands out a pid that is still
/// some group's id, so while any member is left the id is still ours; a live process *with* pid
/// `pgid` means the id was recycled after the group emptied, and then nothing is signalled.
/// Each member is signalled through a [`ProcessHandle`] after checking, once it is pinned, that it
/// is still in the group. Returns how many were signalled.
pub fn kill_leaderless_group(pgid: u32) -> usize {
    if std::path::Path::new(&format!("/proc/{pgid}")).exists() {
        return 0;
    }
    let mut killed = 0;
    for pid in super::procfs::group_members(pgid) {
        let Ok(process) = ProcessHandle::open(pid) else {
            continue;
        };
        // The handle pins the process (a pidfd, or its start time); still in the group once
        // pinned means it is the one seen.
        if super::procfs::group_of(pid) == Some(pgid)
            && process.alive()
            && process.signal(crate::signal::SIGKILL).is_ok()
        {
            killed += 1;
        }
    }
    killed
}

impl std::fmt::Debug for ProcessHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessHandle")
            .field("pid", &self.pid)
            .field("child", &self.child)
            .field("pidfd", &self.pidfd.is_some())
            .finish_non_exhaustive()
    }
}

impl ExitWatch {
    fn start(handle: &ProcessHandle) -> io::Result<ExitWatch> {
        let (read, write) = crate::fd::pipe()?;
        let pid = handle.pid;
        let builder = std::thread::Builder::new().name("rpcplugin-exit-watch".to_owned());
        if handle.child {
            // Blocks until the child exits (or someone else reaps it); WNOWAIT leaves it
            // unreaped, so its pid stays reserved until `reap`.
            let thread = builder.spawn(move || {
                let _ = pidfd::child_state(Which::Pid(pid), true);
                drop(write);
            })?;
            return Ok(ExitWatch {
                read,
                stop: None,
                thread: Mutex::new(Some(thread)),
            });
        }
        let start_time = handle.start_time;
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let thread = builder.spawn(move || {
            loop {
                let same = matches!(
                    super::procfs::process_start(pid),
                    Ok(Some(start)) if start.running() && Some(start.ticks) == start_time
                );
                if !same {
                    break;
                }
                // Dropping the handle disconnects `stop`: the watch ends at once.
                if !matches!(
                    stopped.recv_timeout(FOREIGN_POLL),
                    Err(crossbeam_channel::RecvTimeoutError::Timeout)
                ) {
                    return;
                }
            }
            drop(write);
        })?;
        Ok(ExitWatch {
            read,
            stop: Some(stop),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Joins the thread once it is past its wait: it closed the pipe (so the join takes an
    /// instant), or it has returned.
    fn join_if_done(&self) {
        let mut thread = self.thread.lock().unwrap_or_else(|p| p.into_inner());
        let done = !pidfd::not_readable(self.read.as_raw_fd());
        if thread.as_ref().is_some_and(|t| done || t.is_finished()) {
            if let Some(t) = thread.take() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for ExitWatch {
    fn drop(&mut self) {
        // A foreign process's watch stops now (its thread wakes at once) and is joined; a
        // child's ends with the child, which `stop` has killed by now: only a process stuck in
        // the kernel outlives that, and it is left unreaped with its watch.
        let foreign = self.stop.take().is_some();
        let done = !pidfd::not_readable(self.read.as_raw_fd());
        let thread = self
            .thread
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(thread) = thread {
            if foreign || done || thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}
