//! The plugin process: started through a spawner thread (see `spawner`), watched by tasks of the
//! I/O thread (see `tasks`: exit, stdout, stderr), and stopped: process group SIGKILL, reap. Its
//! exit is watched without reaping, so no signal can reach a reused pid. Also attached processes
//! (reattach), watched and stopped through a `sys::ProcessHandle` (a pidfd where there is one).

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, Sender};

use super::program::explain_spawn_failure;
use super::spawner::{spawn_on_spawner_thread, spawn_request, SpawnSpec};
use super::tasks::{ExitState, ExitTask, FirstLine, StderrTask, StdoutTask};
use crate::error::{Error, ErrorKind, Result};
use crate::runtime::reactor::{self, TaskId};
use crate::sys;
use crate::wire::Address;

/// How long `stop` waits after SIGKILL, in all: for the plugin to die (only a process stuck in
/// the kernel, in uninterruptible I/O, outlives it: it is then left unreaped, with a warning) and
/// for its pipes to close (a grandchild that left the process group can hold them open).
const AFTER_KILL_WAIT: Duration = Duration::from_secs(2);
/// How long `stop` waits for the I/O thread to close pipes held open by an escaped process.
const PIPES_CLOSE_WAIT: Duration = Duration::from_millis(500);
/// The longest [`PluginProcess::stop`] takes.
pub(crate) const STOP_BOUND: Duration = crate::runtime::total(&[AFTER_KILL_WAIT, PIPES_CLOSE_WAIT]);

/// A running (or exited, not yet reaped) plugin process.
pub(crate) struct PluginProcess {
    pid: u32,
    /// The launched plugin (None once reaped, and for attached processes), held from right after
    /// the spawn: every wait and signal goes through it (its pidfd, or its pid only while that
    /// cannot name another process), so nothing reaches another process even if some other
    /// part of the program reaps our child.
    child: Mutex<Option<Arc<sys::ProcessHandle>>>,
    /// The exit watch on the I/O thread, removed when we stop watching.
    exit_task: Mutex<Option<TaskId>>,
    /// For "no process" (reattach pid 0): keeps the exit signal from ever firing.
    _never_exits: Option<Sender<()>>,
    /// `stop` has run: a second call (`Drop` after `close`) returns at once instead of waiting
    /// again, which would double close's bound for a plugin stuck in the kernel.
    stopped: AtomicBool,
    attached: Option<Attached>,
    exit: Arc<ExitState>,
    /// Disconnects when the pipe reader tasks and the exit task are gone (their fds closed).
    pipes_done: Receiver<()>,
    /// The stdout and stderr reader tasks, closed by `stop` if something else keeps the pipes
    /// open (a grandchild that left the process group).
    pipe_tasks: Mutex<Vec<TaskId>>,
    tail: Arc<Mutex<VecDeque<String>>>,
    first_line: Receiver<FirstLine>,
}

impl PluginProcess {
    /// Starts the process and registers its exit watch and pipe readers as tasks of the I/O
    /// thread; `first_line` carries its first stdout line.
    pub(crate) fn spawn(spec: SpawnSpec<'_>) -> Result<Arc<PluginProcess>> {
        let program = Path::new(spec.program);
        let spawn_error = |e: std::io::Error| {
            Error::new(
                ErrorKind::Spawn,
                format!(
                    "failed to start plugin {:?}: {e}{}",
                    program.display(),
                    explain_spawn_failure(program)
                ),
            )
            .with_source(e)
        };
        let (stdout, stdout_w) = sys::pipe().map_err(|e| Error::io("creating a pipe", e))?;
        let (stderr, stderr_w) = sys::pipe().map_err(|e| Error::io("creating a pipe", e))?;
        // The request owns the write ends: a request still queued when the start gives up
        // keeps them open, and never refers to fd numbers reused meanwhile.
        let request = spawn_request(&spec, stdout_w, stderr_w).map_err(spawn_error)?;
        // The pidfd comes from the clone itself where the kernel gives one: the pid is pinned from
        // birth, so nothing (not even another part of this program reaping children) can make us
        // signal another process. Without pidfds the handle keeps to the same rule by pid.
        let child = spawn_on_spawner_thread(request, spec.deadline).map_err(spawn_error)?;
        let pid = child.pid();
        let child = Arc::new(child);
        let (stdout, stderr) = (std::fs::File::from(stdout), std::fs::File::from(stderr));

        let (exit_tx, exit_rx) = bounded::<()>(0);
        let exit = Arc::new(ExitState {
            status: OnceLock::new(),
            signal: exit_rx,
            stopping: AtomicBool::new(false),
        });
        let (first_tx, first_rx) = bounded(1);
        let (pipes_tx, pipes_rx) = bounded::<()>(0);
        let tail = spec.stderr.tail.clone();
        let process = Arc::new(PluginProcess {
            pid,
            child: Mutex::new(Some(child.clone())),
            exit_task: Mutex::new(None),
            _never_exits: None,
            stopped: AtomicBool::new(false),
            attached: None,
            exit: exit.clone(),
            pipes_done: pipes_rx,
            pipe_tasks: Mutex::default(),
            tail,
            first_line: first_rx,
        });
        let watched = (|| -> Result<()> {
            let fd = child
                .exit_fd()
                .map_err(|e| Error::io("watching the plugin's exit", e))?;
            let exit_task = ExitTask {
                pid,
                process: child,
                launched: true,
                exit,
                signal: Some(exit_tx),
                on_exit: spec.on_exit,
                _dropped: pipes_tx.clone(),
            };
            *process.exit_task.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(reactor::register(Some(fd), Box::new(exit_task))?);
            let fd = stdout.as_raw_fd();
            sys::set_nonblocking(fd).map_err(|e| Error::io("setting up the stdout pipe", e))?;
            let task = StdoutTask {
                pipe: stdout,
                first: Some(first_tx),
                line: Vec::new(),
                _pipes: pipes_tx.clone(),
            };
            let stdout_task = reactor::register(Some(fd), Box::new(task))?;
            process
                .pipe_tasks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(stdout_task);
            let fd = stderr.as_raw_fd();
            sys::set_nonblocking(fd).map_err(|e| Error::io("setting up the stderr pipe", e))?;
            let task = StderrTask {
                pipe: stderr,
                lines: spec.stderr.lines(),
                _pipes: pipes_tx,
            };
            let stderr_task = reactor::register(Some(fd), Box::new(task))?;
            process
                .pipe_tasks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(stderr_task);
            Ok(())
        })();
        if let Err(e) = watched {
            process.stop();
            return Err(e);
        }
        Ok(process)
    }

    /// Carries the first stdout line (or its absence) once.
    pub(crate) fn first_line(&self) -> &Receiver<FirstLine> {
        &self.first_line
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// The exit status once the process has exited (None while running, and for attached
    /// processes, whose status only their parent can read).
    pub(crate) fn exit_status(&self) -> Option<ExitStatus> {
        self.exit.status.get().copied().flatten()
    }

    /// Whether the process has exited.
    pub(crate) fn has_exited(&self) -> bool {
        self.exit.status.get().is_some()
    }

    /// Disconnects when the process exits.
    pub(crate) fn exit_signal(&self) -> &Receiver<()> {
        &self.exit.signal
    }

    /// Waits up to `timeout` for the process to exit; true if it has.
    pub(crate) fn wait_exit(&self, timeout: Duration) -> bool {
        let _ = self.exit.signal.recv_timeout(timeout);
        self.has_exited()
    }

    /// The last stderr lines, oldest first. Waits a moment for the stderr task to reach the end
    /// of the pipe when the process has exited, so the lines that explain an exit are included.
    pub(crate) fn stderr_tail(&self) -> Vec<String> {
        if self.has_exited() {
            let _ = self.pipes_done.recv_timeout(Duration::from_millis(500));
        }
        let tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        tail.iter().cloned().collect()
    }

    /// A [`ErrorKind::ProcessExited`] error saying `message`, with the exit status and the last
    /// stderr lines.
    pub(crate) fn exited_error(&self, message: &str) -> Error {
        Error::new(ErrorKind::ProcessExited, message)
            .with_exit_status(self.exit_status())
            .with_stderr_tail(self.stderr_tail())
    }

    /// Adds what the process says about `err`: when the plugin has exited and the error is the
    /// kind an exit causes, a [`ErrorKind::ProcessExited`] error instead; otherwise `err` with the
    /// exit status (if known) and the stderr tail.
    pub(crate) fn explain(&self, err: Error) -> Error {
        let caused_by_exit = matches!(
            err.kind(),
            ErrorKind::Rpc | ErrorKind::Health | ErrorKind::Transport
        );
        if self.has_exited() && caused_by_exit {
            return self.exited_error(&format!("plugin exited: {}", err.message()));
        }
        err.with_exit_status(self.exit_status())
            .with_stderr_tail(self.stderr_tail())
    }

    /// From now on an exit is expected (the host is stopping the plugin): `on_exit` stays quiet.
    pub(crate) fn expect_exit(&self) {
        self.exit.stopping.store(true, Ordering::SeqCst);
    }

    /// Watches a running process that this host did not start (reattach), through a pidfd (or,
    /// without pidfds, its pid and start time).
    /// `owned`: `stop` kills it, but only once the process is proven to be the plugin: it must
    /// hold the socket listening at `address` (a stale `TF_REATTACH_PROVIDERS` can name a pid
    /// that now belongs to an unrelated process). Pid 0 means "no process": nothing is watched
    /// or stopped.
    pub(crate) fn attach(pid: u32, owned: bool, address: &Address) -> Result<Arc<PluginProcess>> {
        if pid == 0 {
            if owned {
                log::warn!(
                    "reattach config has pid 0 with owned set: there is no process to stop; \
                     close() will only disconnect"
                );
            }
            let (_, pipes_done) = bounded::<()>(0);
            let (_, first_line) = bounded(0);
            let (keep, signal) = bounded::<()>(0);
            return Ok(Arc::new(PluginProcess {
                pid,
                child: Mutex::new(None),
                exit_task: Mutex::new(None),
                _never_exits: Some(keep),
                stopped: AtomicBool::new(false),
                attached: None,
                exit: Arc::new(ExitState {
                    status: OnceLock::new(),
                    signal,
                    stopping: AtomicBool::new(false),
                }),
                pipes_done,
                pipe_tasks: Mutex::default(),
                tail: Arc::default(),
                first_line,
            }));
        }
        let process = Self::attach_handle(pid, owned, address)?;
        Self::watch_attached(pid, owned, process)
    }

    /// Opens a handle on an attached process and, when we are to own it, proves it is the
    /// plugin before anything can signal it.
    fn attach_handle(pid: u32, owned: bool, address: &Address) -> Result<sys::ProcessHandle> {
        let process = sys::ProcessHandle::open(pid).map_err(|e| {
            Error::new(
                ErrorKind::Reattach,
                format!("reattachment process not found: pid {pid}: {e}"),
            )
            .with_source(e)
        })?;
        if !owned {
            return Ok(process);
        }
        let refuse = |why: String| {
            Error::new(
                ErrorKind::Reattach,
                format!(
                    "refusing to own pid {pid}: {why}; the reattach config may be stale (the \
                     plugin exited and its pid was reused). Attach with owned = false to only \
                     connect"
                ),
            )
        };
        let inodes = match address {
            Address::Unix(path) => sys::listening_unix_inodes(path),
            Address::Tcp(addr) => sys::listening_tcp_inodes(addr),
        };
        let inodes = inodes.map_err(|e| {
            refuse(format!(
                "cannot list the sockets listening at {address}: {e}"
            ))
        })?;
        if inodes.is_empty() {
            return Err(refuse(format!("nothing listens at {address}")));
        }
        match sys::process_holds_socket(pid, &inodes) {
            Ok(true) => {}
            Ok(false) => {
                return Err(refuse(format!(
                    "it does not hold the socket listening at {address}"
                )))
            }
            Err(e) => return Err(refuse(format!("cannot inspect its open files: {e}"))),
        }
        // /proc was read by pid; the handle pins the process it named when opened (its pidfd, or
        // its start time). Still alive means the same process, so the proof holds for it.
        if !process.alive() {
            return Err(refuse("it exited while being checked".to_owned()));
        }
        Ok(process)
    }

    fn watch_attached(
        pid: u32,
        owned: bool,
        process: sys::ProcessHandle,
    ) -> Result<Arc<PluginProcess>> {
        let process = Arc::new(process);
        let fd = process
            .exit_fd()
            .map_err(|e| Error::io("watching the attached plugin's exit", e))?;
        let (exit_tx, exit_rx) = bounded::<()>(0);
        let exit = Arc::new(ExitState {
            status: OnceLock::new(),
            signal: exit_rx,
            stopping: AtomicBool::new(false),
        });
        // An attached process has no pipes: `pipes_done` only says that its exit task is gone.
        let (dropped_tx, pipes_done) = bounded::<()>(0);
        let task = ExitTask {
            pid,
            process: process.clone(),
            launched: false,
            exit: exit.clone(),
            signal: Some(exit_tx),
            on_exit: None,
            _dropped: dropped_tx,
        };
        let exit_task = reactor::register(Some(fd), Box::new(task))?;
        let (_, first_line) = bounded(0);
        Ok(Arc::new(PluginProcess {
            pid,
            child: Mutex::new(None),
            exit_task: Mutex::new(Some(exit_task)),
            _never_exits: None,
            stopped: AtomicBool::new(false),
            attached: Some(Attached { process, owned }),
            exit,
            pipes_done,
            pipe_tasks: Mutex::default(),
            tail: Arc::default(),
            first_line,
        }))
    }

    /// Ends the exit watch (its signal fires, with no status recorded if the process runs on).
    fn unwatch(&self) {
        let task = self
            .exit_task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(task) = task {
            reactor::remove(task);
        }
    }

    /// Stops watching an attached process without touching it (and stops a launched one).
    pub(crate) fn stop_watching(&self) {
        if self.attached.is_some() {
            self.expect_exit();
            self.unwatch();
            // Removed on the I/O thread's next turn, which drops the task's handle (not while
            // this waits on that very thread: the last reference dropped in a callback there).
            if !reactor::on_io_thread() {
                let _ = self.pipes_done.recv_timeout(PIPES_CLOSE_WAIT);
            }
        } else {
            self.stop();
        }
    }

    /// Kills the process group and reaps the process; waits (boundedly) for its pipes to close.
    /// Idempotent.
    /// For an attached process: kills it only if owned, then stops watching.
    pub(crate) fn stop(&self) {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        self.expect_exit();
        if let Some(attached) = &self.attached {
            if attached.owned && !self.has_exited() {
                if let Err(e) = attached.process.signal(sys::SIGKILL) {
                    log::warn!("killing attached plugin {}: {e}", self.pid);
                }
                let _ = self.exit.signal.recv_timeout(AFTER_KILL_WAIT);
            }
            self.stop_watching();
            return;
        }
        let after_kill = std::time::Instant::now() + AFTER_KILL_WAIT;
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(process) = child.take() {
            // While the leader is unreaped its pid and process group id cannot be reused, so the
            // group kill (which takes whatever the plugin started along) is safe. Once someone
            // else has reaped it, only its handle is safe to signal.
            match process.state(false) {
                Ok(sys::ChildState::Unreaped(_)) => {
                    if let Err(e) = sys::signal_group(self.pid, sys::SIGKILL) {
                        log::warn!("killing plugin process group {}: {e}", self.pid);
                        let _ = process.signal(sys::SIGKILL);
                    }
                }
                Ok(sys::ChildState::Gone) => {
                    // Its group id is only safe to use while the group still has members.
                    let killed = sys::kill_leaderless_group(self.pid);
                    log::debug!(
                        "plugin {} was reaped by another part of this program; {killed} process(es) \
                         left in its group killed one by one",
                        self.pid
                    );
                }
                Err(e) => {
                    log::warn!("checking plugin {}: {e}; signalling it alone", self.pid);
                    let _ = process.signal(sys::SIGKILL);
                }
            }
            // Wait for the watcher to see the exit, then reap through the handle. The signal also
            // fires when the watch itself is gone (it could not be registered, or it panicked):
            // then the exit is checked here, so a plugin is never reaped before it has exited.
            let watch_ended = matches!(
                self.exit.signal.recv_deadline(after_kill),
                Err(crossbeam_channel::RecvTimeoutError::Disconnected)
            );
            if !(watch_ended && (self.has_exited() || exits_by(&process, after_kill))) {
                log::warn!(
                    "plugin {} is still alive {AFTER_KILL_WAIT:?} after SIGKILL (stuck in the \
                     kernel?); leaving it unreaped",
                    self.pid
                );
                self.unwatch();
                return;
            }
            if let Err(e) = process.reap() {
                log::warn!("reaping plugin {}: {e}", self.pid);
            }
        }
        drop(child);
        if reactor::on_io_thread() {
            // The pipe and exit tasks end on this thread's next turn, not while it waits here.
            return;
        }
        // The pipes close once every process holding them is gone. A grandchild that left the
        // process group could keep them open; do not hang on it.
        let pipes = self.pipes_done.recv_deadline(after_kill);
        if let Err(crossbeam_channel::RecvTimeoutError::Timeout) = pipes {
            // This host's ends are closed instead (that process gets EPIPE if it writes on).
            log::warn!(
                "plugin {}: a process outside its process group still holds its stdout/stderr; \
                 closing this host's ends of them",
                self.pid
            );
            for task in
                std::mem::take(&mut *self.pipe_tasks.lock().unwrap_or_else(|p| p.into_inner()))
            {
                reactor::remove(task);
            }
            // Removed on the I/O thread's next turn.
            let _ = self.pipes_done.recv_timeout(PIPES_CLOSE_WAIT);
        }
    }
}

impl Drop for PluginProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The handle on a process this host did not start.
struct Attached {
    process: Arc<sys::ProcessHandle>,
    owned: bool,
}

/// Polls our child until it has exited (true) or `deadline` passes; for when its exit watch is
/// gone.
fn exits_by(process: &sys::ProcessHandle, deadline: std::time::Instant) -> bool {
    loop {
        match process.state(false) {
            Ok(sys::ChildState::Unreaped(None)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5))
            }
            Ok(sys::ChildState::Unreaped(None)) => return false,
            Ok(_) | Err(_) => return true,
        }
    }
}
