//! What the I/O thread does for each launched plugin: watch its exit (see `sys::ProcessHandle`), read its
//! stdout (the handshake line, then drained), and feed its stderr to the line splitter.

use std::io::Read;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use std::process::ExitStatus;
use std::sync::atomic::AtomicBool;
use std::sync::OnceLock;

use crossbeam_channel::{Receiver, Sender};

use super::stderr::StderrLines;
use crate::runtime::reactor;
use crate::sys;

/// A callback run once when the plugin process exits on its own (not when `close` stops it).
pub type ExitCallback = Arc<dyn Fn(ExitStatus) + Send + Sync>;

/// What the stdout task saw before the handshake.
pub(crate) enum FirstLine {
    Line(String),
    TooLong(String),
    Eof,
}

/// Exit status shared with anyone interested; `signal` disconnects when the process exits, so it
/// works in `select!` next to other channels and deadlines.
pub(super) struct ExitState {
    /// Set once the process has exited; the status is unknown for processes we did not start.
    pub(super) status: OnceLock<Option<ExitStatus>>,
    pub(super) signal: Receiver<()>,
    pub(super) stopping: AtomicBool,
}

/// Bytes read from a pipe in one go.
const PIPE_READ_CHUNK: usize = 64 * 1024;

/// The longest first stdout line accepted as a handshake (go-plugin's scanner limit).
pub(super) const MAX_HANDSHAKE_LINE: u64 = 64 * 1024;

/// Watches a process's exit (its pidfd, or the fallback's watch): records the exit status
/// (without reaping), fires the exit signal, and runs
/// `on_exit` on a thread of its own (it may close the client, which waits for this task's
/// peers).
pub(super) struct ExitTask {
    pub pid: u32,
    pub process: Arc<sys::ProcessHandle>,
    /// A child of ours (its status is readable); false for an attached process.
    pub launched: bool,
    pub exit: Arc<ExitState>,
    pub signal: Option<Sender<()>>,
    pub on_exit: Option<ExitCallback>,
    /// Dropped after `process` (fields drop in order), when the I/O thread drops this task:
    /// `stop` waits for it, so the process's pidfd (or its watch's pipe) is closed, not about
    /// to be, when `close` returns. (This task may hold the last handle: the waiters go on
    /// as soon as `signal` fires, before the task is dropped.)
    pub _dropped: Sender<()>,
}

impl reactor::Task for ExitTask {
    fn run(&mut self, _cx: &mut std::task::Context<'_>) -> bool {
        let pid = self.pid;
        if !self.launched {
            if self.process.alive() {
                return true;
            }
            let _ = self.exit.status.set(None);
            log::info!("attached plugin {pid} exited");
            self.signal.take();
            return false;
        }
        let status = match self.process.state(false) {
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
            let spawned = std::thread::Builder::new()
                .name("rpcplugin-on-exit".to_owned())
                .spawn(move || {
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
pub(super) struct StdoutTask {
    pub pipe: std::fs::File,
    pub first: Option<Sender<FirstLine>>,
    pub line: Vec<u8>,
    /// Held while the task runs: the receiver disconnects once both pipes are done.
    pub _pipes: Sender<()>,
}

impl reactor::Task for StdoutTask {
    fn run(&mut self, _cx: &mut std::task::Context<'_>) -> bool {
        let mut buf = [0u8; PIPE_READ_CHUNK];
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
pub(super) struct StderrTask {
    pub pipe: std::fs::File,
    pub lines: StderrLines,
    /// Held while the task runs: the receiver disconnects once both pipes are done.
    pub _pipes: Sender<()>,
}

impl reactor::Task for StderrTask {
    fn run(&mut self, _cx: &mut std::task::Context<'_>) -> bool {
        let mut buf = [0u8; PIPE_READ_CHUNK];
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
