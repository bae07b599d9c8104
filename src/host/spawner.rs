//! Starting plugin processes from process-wide spawner threads (the kernel's parent-death signal
//! follows the spawning thread), with the protocol environment and an argv prepared up front.

use std::ffi::OsString;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use crossbeam_channel::{bounded, Receiver, Sender};

use super::program::resolve_in;
use super::stderr::StderrSinks;
use super::tasks::ExitCallback;
use crate::sys;

/// Everything needed to start a plugin process.
pub(crate) struct SpawnSpec<'a> {
    pub program: &'a OsString,
    pub args: &'a [OsString],
    pub env: Vec<(OsString, OsString)>,
    pub skip_host_env: bool,
    pub working_dir: Option<&'a Path>,
    pub stderr: StderrSinks,
    pub on_exit: Option<ExitCallback>,
    pub kill_with_host: bool,
    /// The start deadline: spawning waits no longer for the spawner thread.
    pub deadline: std::time::Instant,
}

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

/// Most spawner threads. A spawn returns once the child has exec'd, which on a machine busy
/// starting many plugins waits for the scheduler; more threads let those waits overlap (100 Go
/// plugins started at once: 265 ms with 4, 320 ms with 1).
const MAX_SPAWNERS: usize = 4;

/// Spawns on a process-wide spawner thread that never exits (one, more while all are busy, at
/// most [`MAX_SPAWNERS`]). The kernel's parent-death signal follows the spawning *thread*, so
/// spawning from a short-lived caller thread would kill the plugin when that thread ends; from
/// these threads it fires only when the host process dies. Waits no later than `deadline`; a
/// child started after that is killed.
pub(super) fn spawn_on_spawner_thread(
    request: sys::SpawnRequest,
    deadline: std::time::Instant,
) -> std::io::Result<sys::ProcessHandle> {
    type Spawned = std::io::Result<sys::ProcessHandle>;
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
                if let Err(crossbeam_channel::SendError(Ok(child))) = reply.send(spawned) {
                    // The caller gave up waiting: nobody owns this child or its group.
                    abandon(&child);
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

/// Kills a child nobody will watch (its leader unreaped, so its group id is still its own) and
/// reaps it.
fn abandon(child: &sys::ProcessHandle) {
    let _ = sys::signal_group(child.pid(), sys::SIGKILL);
    let _ = child.state(true);
    let _ = child.reap();
}

/// The child's argv, environment and executable path, prepared before the spawn (the child
/// itself can only make system calls).
pub(super) fn spawn_request(
    spec: &SpawnSpec<'_>,
    stdout: std::os::fd::OwnedFd,
    stderr: std::os::fd::OwnedFd,
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

pub(super) fn named(name: &str) -> std::thread::Builder {
    std::thread::Builder::new().name(name.to_owned())
}
