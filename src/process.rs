//! The plugin subprocess: spawn with the protocol environment, drain its pipes, watch for its exit
//! without reaping (so signals cannot hit a reused pid), and stop it: process group SIGKILL, reap.
//! The pipes and the exit watch are tasks on the shared I/O thread ([`crate::reactor`]), not
//! threads of their own.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::error::{Error, ErrorKind, Result};
use crate::logs::{StderrLines, StderrSinks};
use crate::reactor::{self, TaskId};
use crate::sys;

/// go-plugin's protocol variables. Inherited copies are removed so a host that is itself a plugin
/// does not leak its own settings to its children.
const PROTOCOL_VARS: &[&str] = &[
    "PLUGIN_MIN_PORT",
    "PLUGIN_MAX_PORT",
    "PLUGIN_PROTOCOL_VERSIONS",
    "PLUGIN_MULTIPLEX_GRPC",
    "PLUGIN_CLIENT_CERT",
    "PLUGIN_UNIX_SOCKET_DIR",
    "PLUGIN_UNIX_SOCKET_GROUP",
];

/// How long `stop` waits after SIGKILL, in all: for the plugin to die (only a process stuck in
/// the kernel, in uninterruptible I/O, outlives it: it is then left unreaped, with a warning) and
/// for its pipes to close (a grandchild that left the process group can hold them open).
pub(crate) const AFTER_KILL_WAIT: Duration = Duration::from_secs(2);
/// How long `stop` waits for the I/O thread to close pipes held open by an escaped process.
const PIPES_CLOSE_WAIT: Duration = Duration::from_millis(500);

/// The longest first stdout line accepted as a handshake (go-plugin's scanner limit).
const MAX_HANDSHAKE_LINE: u64 = 64 * 1024;

/// What the stdout task saw before the handshake.
pub(crate) enum FirstLine {
    Line(String),
    TooLong(String),
    Eof,
}

/// Everything needed to start a plugin process.
pub(crate) struct SpawnSpec<'a> {
    pub program: &'a OsString,
    pub args: &'a [OsString],
    pub env: Vec<(OsString, OsString)>,
    pub skip_host_env: bool,
    pub working_dir: Option<&'a Path>,
    pub stderr: StderrSinks,
    pub on_exit: Option<crate::config::ExitCallback>,
    pub kill_with_host: bool,
    /// The start deadline: spawning waits no longer for the spawner thread.
    pub deadline: std::time::Instant,
}

/// Exit status shared with anyone interested; `signal` disconnects when the process exits, so it
/// works in `select!` next to other channels and deadlines.
struct ExitState {
    /// Set once the process has exited; the status is unknown for processes we did not start.
    status: OnceLock<Option<ExitStatus>>,
    signal: Receiver<()>,
    stopping: AtomicBool,
}

/// A running (or exited, not yet reaped) plugin process.
pub(crate) struct PluginProcess {
    pid: u32,
    /// The launched plugin (None once reaped, and for attached processes), with the pidfd held
    /// from right after the spawn: every wait and signal goes through it, so nothing reaches
    /// another process even if some other part of the program reaps our child.
    child: Mutex<Option<Arc<OwnedFd>>>,
    /// The exit watch on the I/O thread, removed when we stop watching.
    exit_task: Mutex<Option<TaskId>>,
    /// For "no process" (reattach pid 0): keeps the exit signal from ever firing.
    _never_exits: Option<Sender<()>>,
    attached: Option<Attached>,
    exit: Arc<ExitState>,
    pipes_done: Receiver<()>,
    /// The stdout and stderr reader tasks, closed by `stop` if something else keeps the pipes
    /// open (a grandchild that left the process group).
    pipe_tasks: Mutex<Vec<TaskId>>,
    tail: Arc<Mutex<VecDeque<String>>>,
    first_line: Receiver<FirstLine>,
}

impl PluginProcess {
    /// Starts the process with its I/O threads; `first_line` carries its first stdout line.
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
        // The pidfd comes from the clone itself: the pid is pinned from birth, so nothing (not
        // even another part of this program reaping children) can make us signal another process.
        let (pid, pidfd) = spawn_on_spawner_thread(request, spec.deadline).map_err(spawn_error)?;
        let pidfd = Arc::new(pidfd);
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
            child: Mutex::new(Some(pidfd.clone())),
            exit_task: Mutex::new(None),
            _never_exits: None,
            attached: None,
            exit: exit.clone(),
            pipes_done: pipes_rx,
            pipe_tasks: Mutex::default(),
            tail,
            first_line: first_rx,
        });
        let watched = (|| -> Result<()> {
            let fd = pidfd.as_raw_fd();
            let exit_task = ExitTask {
                pid,
                pidfd,
                launched: true,
                exit,
                signal: Some(exit_tx),
                on_exit: spec.on_exit,
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

    /// The last stderr lines, oldest first. Waits a moment for the stderr thread to reach the end
    /// of the pipe when the process has exited, so the lines that explain an exit are included.
    pub(crate) fn stderr_tail(&self) -> Vec<String> {
        if self.has_exited() {
            let _ = self.pipes_done.recv_timeout(Duration::from_millis(500));
        }
        let tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        tail.iter().cloned().collect()
    }

    /// From now on an exit is expected (the host is stopping the plugin): `on_exit` stays quiet.
    pub(crate) fn expect_exit(&self) {
        self.exit.stopping.store(true, Ordering::SeqCst);
    }

    /// Watches a running process that this host did not start (reattach), through a pidfd.
    /// `owned`: `stop` kills it, but only once the process is proven to be the plugin: it must
    /// hold the socket listening at `address` (a stale `TF_REATTACH_PROVIDERS` can name a pid
    /// that now belongs to an unrelated process). Pid 0 means "no process": nothing is watched
    /// or stopped.
    pub(crate) fn attach(
        pid: u32,
        owned: bool,
        address: &crate::transport::Address,
    ) -> Result<Arc<PluginProcess>> {
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
        let pidfd = Self::attach_pidfd(pid, owned, address)?;
        Self::watch_attached(pid, owned, pidfd)
    }

    /// Opens the pidfd of an attached process and, when we are to own it, proves it is the
    /// plugin before anything can signal it.
    fn attach_pidfd(pid: u32, owned: bool, address: &crate::transport::Address) -> Result<OwnedFd> {
        let pidfd = sys::pidfd_open(pid).map_err(|e| {
            Error::new(
                ErrorKind::Reattach,
                format!("reattachment process not found: pid {pid}: {e}"),
            )
            .with_source(e)
        })?;
        if !owned {
            return Ok(pidfd);
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
        let inodes = sys::listening_socket_inodes(address).map_err(|e| {
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
        // /proc was read by pid; the pidfd pins the process it named when opened. Still alive
        // means the same process, so the proof holds for the pidfd.
        if !sys::pidfd_alive(&pidfd) {
            return Err(refuse("it exited while being checked".to_owned()));
        }
        Ok(pidfd)
    }

    fn watch_attached(pid: u32, owned: bool, pidfd: OwnedFd) -> Result<Arc<PluginProcess>> {
        let pidfd = Arc::new(pidfd);
        let (exit_tx, exit_rx) = bounded::<()>(0);
        let exit = Arc::new(ExitState {
            status: OnceLock::new(),
            signal: exit_rx,
            stopping: AtomicBool::new(false),
        });
        let task = ExitTask {
            pid,
            pidfd: pidfd.clone(),
            launched: false,
            exit: exit.clone(),
            signal: Some(exit_tx),
            on_exit: None,
        };
        let exit_task = reactor::register(Some(pidfd.as_raw_fd()), Box::new(task))?;
        let (_, pipes_done) = bounded::<()>(0);
        let (_, first_line) = bounded(0);
        Ok(Arc::new(PluginProcess {
            pid,
            child: Mutex::new(None),
            exit_task: Mutex::new(Some(exit_task)),
            _never_exits: None,
            attached: Some(Attached { pidfd, owned }),
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
        } else {
            self.stop();
        }
    }

    /// Kills the process group and reaps the process; waits (boundedly) for its pipes to close.
    /// Idempotent.
    /// For an attached process: kills it only if owned, then stops watching.
    pub(crate) fn stop(&self) {
        self.expect_exit();
        if let Some(attached) = &self.attached {
            if attached.owned && !self.has_exited() {
                if let Err(e) = sys::pidfd_signal(&attached.pidfd, sys::SIGKILL) {
                    log::warn!("killing attached plugin {}: {e}", self.pid);
                }
                let _ = self.exit.signal.recv_timeout(AFTER_KILL_WAIT);
            }
            self.stop_watching();
            return;
        }
        let after_kill = std::time::Instant::now() + AFTER_KILL_WAIT;
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pidfd) = child.take() {
            // While the leader is unreaped its pid and process group id cannot be reused, so the
            // group kill (which takes whatever the plugin started along) is safe. Once someone
            // else has reaped it, only the pidfd is safe to signal.
            match sys::child_state(&pidfd, false) {
                Ok(sys::ChildState::Unreaped(_)) => {
                    if let Err(e) = sys::signal_group(self.pid, sys::SIGKILL) {
                        log::warn!("killing plugin process group {}: {e}", self.pid);
                        let _ = sys::pidfd_signal(&pidfd, sys::SIGKILL);
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
                    let _ = sys::pidfd_signal(&pidfd, sys::SIGKILL);
                }
            }
            // Wait for the watcher to see the exit, then reap through the pidfd. The signal also
            // fires when the watch itself is gone (it could not be registered, or it panicked):
            // then the exit is checked here, so a plugin is never reaped before it has exited.
            let watch_ended = matches!(
                self.exit.signal.recv_deadline(after_kill),
                Err(crossbeam_channel::RecvTimeoutError::Disconnected)
            );
            if !(watch_ended && (self.has_exited() || exits_by(&pidfd, after_kill))) {
                log::warn!(
                    "plugin {} is still alive {AFTER_KILL_WAIT:?} after SIGKILL (stuck in the \
                     kernel?); leaving it unreaped",
                    self.pid
                );
                self.unwatch();
                return;
            }
            if let Err(e) = sys::reap(&pidfd) {
                log::warn!("reaping plugin {}: {e}", self.pid);
            }
        }
        drop(child);
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
    pidfd: Arc<std::os::fd::OwnedFd>,
    owned: bool,
}

/// Most spawner threads. A spawn returns once the child has exec'd, which on a machine busy
/// starting many plugins waits for the scheduler; more threads let those waits overlap (100 Go
/// plugins started at once: 265 ms with 4, 320 ms with 1).
const MAX_SPAWNERS: usize = 4;

/// Spawns on a process-wide spawner thread that never exits (one, more while all are busy, at
/// most [`MAX_SPAWNERS`]). The kernel's parent-death signal follows the spawning *thread*, so
/// spawning from a short-lived caller thread would kill the plugin when that thread ends; from
/// these threads it fires only when the host process dies. Waits no later than `deadline`; a
/// child started after that is killed.
fn spawn_on_spawner_thread(
    request: sys::SpawnRequest,
    deadline: std::time::Instant,
) -> std::io::Result<(u32, OwnedFd)> {
    type Spawned = std::io::Result<(u32, OwnedFd)>;
    type Request = (sys::SpawnRequest, Sender<Spawned>, std::time::Instant);
    struct Spawners {
        tx: Sender<Request>,
        rx: Receiver<Request>,
        threads: std::sync::atomic::AtomicUsize,
        busy: Arc<std::sync::atomic::AtomicUsize>,
    }
    static SPAWNERS: OnceLock<Spawners> = OnceLock::new();
    let spawners = SPAWNERS.get_or_init(|| {
        let (tx, rx) = crossbeam_channel::unbounded::<Request>();
        Spawners {
            tx,
            rx,
            threads: Default::default(),
            busy: Default::default(),
        }
    });
    let threads = spawners.threads.load(Ordering::SeqCst);
    if spawners.busy.load(Ordering::SeqCst) >= threads && threads < MAX_SPAWNERS {
        spawners.threads.fetch_add(1, Ordering::SeqCst);
        let (rx, busy) = (spawners.rx.clone(), spawners.busy.clone());
        let started = named("rpcplugin-spawn").spawn(move || {
            for (request, reply, deadline) in rx {
                if std::time::Instant::now() >= deadline {
                    // Its caller has given up: never start a plugin nobody waits for.
                    continue;
                }
                busy.fetch_add(1, Ordering::SeqCst);
                let spawned = sys::spawn(&request);
                // Our copies of the pipes' write ends close here, so the plugin's exit ends them.
                drop(request);
                // Free before the caller hears back: its next start must not count this thread
                // as busy (sequential starts would otherwise grow the pool).
                busy.fetch_sub(1, Ordering::SeqCst);
                if let Err(crossbeam_channel::SendError(Ok((pid, pidfd)))) = reply.send(spawned) {
                    // The caller gave up waiting: nobody owns this child or its group.
                    abandon(pid, &pidfd);
                }
            }
        });
        if let Err(e) = started {
            if spawners.threads.fetch_sub(1, Ordering::SeqCst) == 1 {
                // No spawner at all: the request would wait in the queue for nobody.
                return Err(std::io::Error::other(format!(
                    "cannot start the spawner thread: {e}"
                )));
            }
            log::warn!("starting another spawner thread: {e}");
        }
    }
    let (reply_tx, reply_rx) = bounded(1);
    if let Err(crossbeam_channel::SendError((request, _, _))) =
        spawners.tx.send((request, reply_tx, deadline))
    {
        return sys::spawn(&request);
    }
    match reply_rx.recv_deadline(deadline) {
        Ok(result) => result,
        Err(crossbeam_channel::RecvTimeoutError::Timeout) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the start deadline passed before the process could be spawned",
        )),
        Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
            Err(std::io::Error::other("the spawner thread is gone"))
        }
    }
}

/// Polls our child behind `pidfd` until it has exited (true) or `deadline` passes; for when its
/// exit watch is gone.
fn exits_by(pidfd: &OwnedFd, deadline: std::time::Instant) -> bool {
    loop {
        match sys::child_state(pidfd, false) {
            Ok(sys::ChildState::Unreaped(None)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5))
            }
            Ok(sys::ChildState::Unreaped(None)) => return false,
            Ok(_) | Err(_) => return true,
        }
    }
}

/// Kills a child nobody will watch (its leader unreaped, so its group id is still its own) and
/// reaps it.
fn abandon(pid: u32, pidfd: &OwnedFd) {
    let _ = sys::signal_group(pid, sys::SIGKILL);
    let _ = sys::child_state(pidfd, true);
    let _ = sys::reap(pidfd);
}

/// The child's argv, environment and executable path, prepared before the spawn (the child
/// itself can only make system calls).
fn spawn_request(
    spec: &SpawnSpec<'_>,
    stdout: OwnedFd,
    stderr: OwnedFd,
) -> std::io::Result<sys::SpawnRequest> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let cstring = |bytes: &[u8]| {
        CString::new(bytes).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "an argument or environment entry contains a NUL byte",
            )
        })
    };
    // Protocol variables inherited by the host never reach the plugin; the explicit ones win.
    let mut env: Vec<(OsString, OsString)> = if spec.skip_host_env {
        Vec::new()
    } else {
        std::env::vars_os()
            .filter(|(k, _)| !PROTOCOL_VARS.iter().any(|v| k == v))
            .collect()
    };
    for (key, value) in &spec.env {
        env.retain(|(k, _)| k != key);
        env.push((key.clone(), value.clone()));
    }
    let search_path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .or_else(|| std::env::var_os("PATH"));
    let path = resolve_in(spec.program, search_path.as_deref()).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "No such file or directory (looked in PATH)",
        )
    })?;
    let mut argv = vec![cstring(spec.program.as_bytes())?];
    for arg in spec.args {
        argv.push(cstring(arg.as_bytes())?);
    }
    let envp = env
        .iter()
        .map(|(k, v)| {
            let mut entry = k.as_bytes().to_vec();
            entry.push(b'=');
            entry.extend_from_slice(v.as_bytes());
            cstring(&entry)
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    let cwd = match spec.working_dir {
        Some(dir) => Some(cstring(dir.as_os_str().as_bytes())?),
        None => None,
    };
    Ok(sys::SpawnRequest {
        path: cstring(path.as_os_str().as_bytes())?,
        argv,
        envp,
        cwd,
        stdout,
        stderr,
        kill_with_parent: spec.kill_with_host,
    })
}

fn named(name: &str) -> std::thread::Builder {
    std::thread::Builder::new().name(name.to_owned())
}

/// Watches a pidfd: records the exit status (without reaping), fires the exit signal, and runs
/// `on_exit` on a thread of its own (it may close the client, which waits for this task's
/// peers).
struct ExitTask {
    pid: u32,
    pidfd: Arc<OwnedFd>,
    /// A child of ours (its status is readable); false for an attached process.
    launched: bool,
    exit: Arc<ExitState>,
    signal: Option<Sender<()>>,
    on_exit: Option<crate::config::ExitCallback>,
}

impl reactor::Task for ExitTask {
    fn run(&mut self, _cx: &mut std::task::Context<'_>) -> bool {
        let pid = self.pid;
        if !self.launched {
            if sys::pidfd_alive(&self.pidfd) {
                return true;
            }
            let _ = self.exit.status.set(None);
            log::info!("attached plugin {pid} exited");
            self.signal.take();
            return false;
        }
        let status = match sys::child_state(&self.pidfd, false) {
            Ok(sys::ChildState::Unreaped(None)) => return true,
            Ok(sys::ChildState::Unreaped(status)) => status,
            Ok(sys::ChildState::Gone) => {
                log::warn!(
                    "plugin {pid} exited and was reaped by another part of this program \
                     (SIGCHLD ignored, or a waitpid(-1)); its exit status is unknown"
                );
                None
            }
            Err(e) => {
                log::error!("reading plugin {pid}'s exit status: {e}");
                None
            }
        };
        let _ = self.exit.status.set(status);
        // Waiters (close() among them) go on at once; the callback runs after.
        self.signal.take();
        let stopping = self.exit.stopping.load(Ordering::SeqCst);
        match status {
            Some(status) if stopping => log::debug!("plugin {pid} stopped: {status}"),
            Some(status) => log::info!("plugin {pid} exited: {status}"),
            None => {}
        }
        if let (Some(callback), Some(status), false) = (self.on_exit.take(), status, stopping) {
            let spawned = named("rpcplugin-on-exit").spawn(move || {
                let called =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| callback(status)));
                if called.is_err() {
                    log::error!("the on_exit callback panicked");
                }
            });
            if let Err(e) = spawned {
                log::error!("starting a thread for the on_exit callback: {e}");
            }
        }
        false
    }
}

/// Reads a plugin's stdout: the first line (the handshake, at most [`MAX_HANDSHAKE_LINE`]
/// bytes), then everything else to the end, discarded, so a chatty plugin never blocks on a full
/// pipe.
struct StdoutTask {
    pipe: std::fs::File,
    first: Option<Sender<FirstLine>>,
    line: Vec<u8>,
    _pipes: Sender<()>,
}

impl reactor::Task for StdoutTask {
    fn run(&mut self, _cx: &mut std::task::Context<'_>) -> bool {
        let mut buf = [0u8; 64 * 1024];
        let n = match read_pipe(&mut self.pipe, &mut buf) {
            Pipe::Empty => return true,
            Pipe::End => {
                if let Some(first) = self.first.take() {
                    let event = if self.line.is_empty() {
                        FirstLine::Eof
                    } else {
                        FirstLine::Line(String::from_utf8_lossy(&self.line).into_owned())
                    };
                    let _ = first.send(event);
                }
                return false;
            }
            Pipe::Data(n) => n,
        };
        let Some(first) = &self.first else {
            return true;
        };
        let data = &buf[..n];
        let room = (MAX_HANDSHAKE_LINE as usize + 1).saturating_sub(self.line.len());
        let window = &data[..data.len().min(room)];
        let event = if let Some(newline) = window.iter().position(|&b| b == b'\n') {
            self.line.extend_from_slice(&window[..=newline]);
            FirstLine::Line(String::from_utf8_lossy(&self.line).into_owned())
        } else {
            self.line.extend_from_slice(window);
            if self.line.len() as u64 <= MAX_HANDSHAKE_LINE {
                return true;
            }
            FirstLine::TooLong(String::from_utf8_lossy(&self.line[..200]).into_owned())
        };
        let _ = first.send(event);
        self.first = None;
        self.line = Vec::new();
        true
    }
}

/// Reads a plugin's stderr into its line splitter until the end.
struct StderrTask {
    pipe: std::fs::File,
    lines: StderrLines,
    _pipes: Sender<()>,
}

impl reactor::Task for StderrTask {
    fn run(&mut self, _cx: &mut std::task::Context<'_>) -> bool {
        let mut buf = [0u8; 64 * 1024];
        match read_pipe(&mut self.pipe, &mut buf) {
            Pipe::Empty => true,
            Pipe::End => {
                self.lines.finish();
                false
            }
            Pipe::Data(n) => {
                self.lines.feed(&buf[..n]);
                true
            }
        }
    }
}

/// What one non-blocking read of a pipe gave.
enum Pipe {
    Data(usize),
    /// Nothing yet (a spurious wake-up).
    Empty,
    /// The end of the pipe, or an error reading it.
    End,
}

fn read_pipe(pipe: &mut impl Read, buf: &mut [u8]) -> Pipe {
    loop {
        return match pipe.read(buf) {
            Ok(0) => Pipe::End,
            Ok(n) => Pipe::Data(n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Pipe::Empty,
            Err(_) => Pipe::End,
        };
    }
}

/// Why `program` cannot run, when its file says so: a directory, or a file without execute
/// permission. Empty otherwise.
fn explain_spawn_failure(program: &Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    if program.components().count() < 2 {
        return String::new();
    }
    match std::fs::metadata(program) {
        Ok(m) if m.is_dir() => " (it is a directory, expected an executable file)".to_owned(),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => format!(
            " (the file is not executable: mode {:o})",
            m.permissions().mode() & 0o7777
        ),
        _ => String::new(),
    }
}

/// Checks the SHA-256 of the executable `program` resolves to (through `PATH` when it has no
/// slash) against `expected_hex`.
pub(crate) fn verify_checksum(program: &OsString, expected_hex: &str) -> Result<()> {
    let path = resolve_program(program).ok_or_else(|| {
        Error::new(
            ErrorKind::Spawn,
            format!(
                "failed to start plugin {:?}: not found (looked in PATH)",
                Path::new(program).display()
            ),
        )
    })?;
    let expected = expected_hex.trim().to_ascii_lowercase();
    if expected.len() != 64 || !expected.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::new(
            ErrorKind::Config,
            format!("sha256_checksum: expected 64 hex digits, got {expected_hex:?}"),
        ));
    }
    let mut file = std::fs::File::open(&path)
        .map_err(|e| Error::io(format!("error verifying checksum of {}", path.display()), e))?;
    let mut hasher = openssl::sha::Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = std::io::Read::read(&mut file, &mut buf)
            .map_err(|e| Error::io(format!("error verifying checksum of {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let actual: String = hasher.finish().iter().map(|b| format!("{b:02x}")).collect();
    if !openssl::memcmp::eq(actual.as_bytes(), expected.as_bytes()) {
        return Err(Error::new(
            ErrorKind::Checksum,
            format!(
                "checksums did not match for plugin {}: expected sha256 {expected}, got {actual}",
                path.display()
            ),
        ));
    }
    Ok(())
}

fn resolve_program(program: &OsString) -> Option<PathBuf> {
    resolve_in(program, std::env::var_os("PATH").as_deref()).filter(|p| p.is_file())
}

/// The executable `program` names: itself when it has a slash, else, as `execvp` searches,
/// the first file in the `PATH` list `search` that someone may execute (an empty entry is the
/// current directory).
fn resolve_in(program: &std::ffi::OsStr, search: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = Path::new(program);
    if path.components().count() > 1 || program.to_string_lossy().contains('/') {
        return Some(path.to_owned());
    }
    let executable = |candidate: &Path| {
        std::fs::metadata(candidate)
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    search
        .map(|paths| std::env::split_paths(paths).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| {
            // Relative entries are taken from the host's directory, resolved now: the plugin
            // may run in another working directory.
            let dir = if dir.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                dir
            };
            std::path::absolute(dir.join(path)).unwrap_or_else(|_| dir.join(path))
        })
        .find(|candidate| executable(candidate))
}

/// A private (0700) directory for the plugin's sockets, removed on drop. This host keeps the
/// directory itself `flock`ed for its life: the proof, readable by any process sharing the temp
/// dir (even one in another pid namespace, where our pid means nothing), that it is in use. (A
/// lock file inside would cost a second inode per plugin; on ext4 allocating inodes was a third
/// of a busy host's CPU when starting 100 plugins.)
#[derive(Debug)]
pub(crate) struct SocketDir {
    path: PathBuf,
    _lock: std::fs::File,
}

/// The lock file of socket dirs made by earlier versions (they lock it instead of the dir).
const LOCK_FILE: &str = ".lock";

impl SocketDir {
    pub(crate) fn create(parent: Option<&Path>) -> Result<SocketDir> {
        use std::os::unix::fs::DirBuilderExt;
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let parent = parent
            .map(Path::to_owned)
            .unwrap_or_else(std::env::temp_dir);
        let parent = std::fs::canonicalize(&parent)
            .map_err(|e| Error::io(format!("socket dir parent {}", parent.display()), e))?;
        remove_stale_socket_dirs(&parent);
        for _ in 0..16 {
            let unique = format!(
                "{}-{}-{:08x}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed),
                crate::grpc::random_u32()
            );
            // Made under a name the sweep ignores, locked, then renamed into place: a sweeping
            // host never sees one of our dirs without its held lock.
            let staging = parent.join(format!(".rpcplugin-new-{unique}"));
            let path = parent.join(format!("rpcplugin-{unique}"));
            match std::fs::DirBuilder::new().mode(0o700).create(&staging) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io(format!("creating {}", staging.display()), e)),
            }
            let locked = std::fs::File::open(&staging).and_then(|lock| {
                sys::flock(&lock, true)?;
                std::fs::rename(&staging, &path)?;
                Ok(lock)
            });
            return match locked {
                Ok(lock) => Ok(SocketDir { path, _lock: lock }),
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&staging);
                    Err(Error::io(
                        format!("setting up socket dir {}", path.display()),
                        e,
                    ))
                }
            };
        }
        Err(Error::new(
            ErrorKind::Io,
            format!(
                "could not create a unique socket dir in {}",
                parent.display()
            ),
        ))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

/// Removes socket dirs left by hosts that died without cleaning up (SIGKILL, crash). A dir is
/// stale when nobody holds its lock (the dir itself, or the `.lock` file of earlier versions;
/// the kernel drops a dead host's `flock`) and no process has the host pid in its name (which
/// also keeps dirs of versions that locked nothing while their host lives). Only dirs owned by
/// this user are touched.
fn remove_stale_socket_dirs(parent: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    let uid = current_uid();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("rpcplugin-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        // Ours are live (or being removed by us): no lock probe per plugin of a busy host. A
        // namesake from another pid namespace is only left for a later sweep.
        if pid == std::process::id() {
            continue;
        }
        let owned_dir = entry
            .metadata()
            .map(|m| m.is_dir() && m.uid() == uid)
            .unwrap_or(false);
        if !owned_dir {
            continue;
        }
        let lock = match std::fs::File::open(entry.path().join(LOCK_FILE)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::File::open(entry.path()),
            other => other,
        };
        // Getting the lock proves no live host holds it; it is released when `lock` drops.
        let stale =
            lock.is_ok_and(|lock| sys::flock(&lock, false).is_ok()) && !sys::process_exists(pid);
        if stale {
            log::debug!("removing stale socket dir {}", entry.path().display());
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Our uid: the owner of `/proc/self`.
fn current_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX)
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                log::warn!("removing socket dir {}: {e}", self.path.display());
            }
        }
    }
}
