//! The host's one I/O thread, shared by every plugin in the process.
//!
//! Everything a plugin needs watched while it runs is a [`Task`] here instead of a thread of its
//! own: its stdout and stderr pipes, its pidfd (the exit watch), and the plugin's long-lived
//! gRPC streams (`GRPCStdio`, the broker's `StartStream`), which are polled with a waker that
//! wakes this thread. A host with 100 plugins thus runs one I/O thread, not 600.
//!
//! Tasks run one at a time on this thread, so none may block: pipe reads are non-blocking and
//! stream polls return at once. What a task hands to user code (log lines, `on_log_line`, the
//! stderr and stdio writers) runs here too, which is why those must be quick; `on_exit` runs on a
//! thread of its own because it may close the client.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Wake, Waker};

use crate::error::{Error, ErrorKind, Result};
use crate::sys;

/// A writer of the caller's that the I/O thread feeds (a plugin's stderr or stdio data), shared
/// with it.
pub type SharedWriter = Arc<Mutex<dyn Write + Send>>;

/// Work for the I/O thread.
pub(crate) trait Task: Send {
    /// Runs when the task's fd is readable or hung up, or (for a task without an fd) when its
    /// waker fired, and once right after registration. Returns false when the task is finished:
    /// it is then dropped on this thread (closing what it owns).
    fn run(&mut self, cx: &mut Context<'_>) -> bool;
}

/// Identifies a registered task, to remove it early.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct TaskId(u64);

/// Token of the reactor's own wake-up socket.
const WAKE_TOKEN: u64 = 0;

/// The low half of an event's data when it is for the task as a whole (its own fd, or its
/// waker); otherwise the low half is the watched fd that fired and the high half the task's
/// token.
const WHOLE: u64 = 0xffff_ffff;

fn event_data(token: u64, fd: Option<RawFd>) -> u64 {
    (token << 32) | fd.map_or(WHOLE, |fd| fd as u32 as u64)
}

struct Entry {
    task: Box<dyn Task>,
    fd: Option<RawFd>,
    waker: Waker,
}

#[derive(Default)]
struct Queue {
    added: Vec<(u64, Entry)>,
    removed: Vec<u64>,
    woken: Vec<u64>,
    next_token: u64,
}

struct Reactor {
    epoll: sys::Poller,
    queue: Mutex<Queue>,
    /// Writing a byte here wakes the thread; it reads from the other end.
    wake_tx: UnixStream,
    /// A wake-up byte is on its way and not yet drained: later wakes need not write another.
    notified: std::sync::atomic::AtomicBool,
}

impl Reactor {
    fn wake(&self) {
        if self
            .notified
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            return;
        }
        // A full socket already holds a pending wake-up.
        let _ = (&self.wake_tx).write(&[1]);
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Wakes one task: it runs on the I/O thread's next turn.
struct TaskWaker {
    token: u64,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Ok(reactor) = reactor() {
            reactor.queue().woken.push(self.token);
            reactor.wake();
        }
    }
}

/// The reactor, started on first use.
fn reactor() -> Result<&'static Reactor> {
    static REACTOR: OnceLock<std::result::Result<&'static Reactor, String>> = OnceLock::new();
    REACTOR
        .get_or_init(|| start().map_err(|e| e.to_string()))
        .as_ref()
        .copied()
        .map_err(|e| Error::new(ErrorKind::Io, format!("the I/O thread: {e}")))
}

fn start() -> std::io::Result<&'static Reactor> {
    let epoll = sys::Poller::new()?;
    let (wake_tx, wake_rx) = UnixStream::pair()?;
    wake_tx.set_nonblocking(true)?;
    wake_rx.set_nonblocking(true)?;
    epoll.add(wake_rx.as_raw_fd(), event_data(WAKE_TOKEN, None))?;
    let reactor: &'static Reactor = Box::leak(Box::new(Reactor {
        epoll,
        queue: Mutex::new(Queue {
            next_token: WAKE_TOKEN + 1,
            ..Queue::default()
        }),
        wake_tx,
        notified: std::sync::atomic::AtomicBool::new(false),
    }));
    let thread = std::thread::Builder::new()
        .name("rpcplugin-io".to_owned())
        .spawn(move || run(reactor, wake_rx))?;
    let _ = IO_THREAD.set(thread.thread().id());
    Ok(reactor)
}

static IO_THREAD: OnceLock<std::thread::ThreadId> = OnceLock::new();

/// Whether the caller runs on the I/O thread (in a log callback or a writer): anything that
/// waits for the I/O thread must not run there.
pub(crate) fn on_io_thread() -> bool {
    IO_THREAD.get() == Some(&std::thread::current().id())
}

/// Registers `task`, watching `fd` (which the task must keep open until it is dropped) or, with
/// no fd, running it whenever its waker fires.
pub(crate) fn register(fd: Option<RawFd>, task: Box<dyn Task>) -> Result<TaskId> {
    let reactor = reactor()?;
    let token = {
        let mut queue = reactor.queue();
        let token = queue.next_token;
        queue.next_token += 1;
        let waker = Waker::from(Arc::new(TaskWaker { token }));
        queue.added.push((token, Entry { task, fd, waker }));
        if fd.is_none() {
            queue.woken.push(token);
        }
        token
    };
    if let Some(fd) = fd {
        if let Err(e) = reactor.epoll.add(fd, event_data(token, None)) {
            reactor.queue().removed.push(token);
            reactor.wake();
            return Err(Error::io("watching a plugin file descriptor", e));
        }
    }
    reactor.wake();
    Ok(TaskId(token))
}

thread_local! {
    /// The token of the task running on this (the I/O) thread, for [`watch`].
    static CURRENT: std::cell::Cell<u64> = const { std::cell::Cell::new(WAKE_TOKEN) };
    /// Why it runs: None for its own fd, its waker or its first turn; else the watched fds
    /// that fired.
    static READY: std::cell::RefCell<Option<Vec<RawFd>>> = const { std::cell::RefCell::new(None) };
}

/// From inside a running task: the fds it [`watch`]es that fired for this turn, or None when it
/// runs for another reason (its own fd, its waker, its first turn), when it should look at
/// everything.
pub(crate) fn ready_fds() -> Option<Vec<RawFd>> {
    READY.with(|r| r.borrow().clone())
}

/// From inside a running task: also runs it whenever `fd` becomes readable or hangs up
/// (edge-triggered, so the task must read `fd` until `WouldBlock`, or wake itself). The task
/// closes or [`unwatch`]es `fd` when done with it.
pub(crate) fn watch(fd: RawFd) -> Result<()> {
    edge(fd, false, false)
}

/// From inside a running task: whether `fd` (watched) should also run it when it becomes
/// writable. Only while there is something to write, or every read of the other end would run
/// the task for nothing.
pub(crate) fn watch_output(fd: RawFd, output: bool) -> Result<()> {
    edge(fd, output, true)
}

fn edge(fd: RawFd, output: bool, modify: bool) -> Result<()> {
    let token = CURRENT.with(|c| c.get());
    debug_assert_ne!(token, WAKE_TOKEN, "watch() outside a running task");
    reactor()?
        .epoll
        .add_edge(fd, event_data(token, Some(fd)), output, modify)
        .map_err(|e| Error::io("watching a socket", e))
}

/// Stops running the current task for `fd` (which must still be open).
pub(crate) fn unwatch(fd: RawFd) {
    if let Ok(reactor) = reactor() {
        reactor.epoll.delete(fd);
    }
}

/// Drops a task on the I/O thread's next turn (if it has not finished already).
pub(crate) fn remove(id: TaskId) {
    if let Ok(reactor) = reactor() {
        reactor.queue().removed.push(id.0);
        reactor.wake();
    }
}

fn run(reactor: &'static Reactor, mut wake_rx: UnixStream) {
    let mut tasks: HashMap<u64, Entry> = HashMap::new();
    let mut ready = Vec::new();
    loop {
        ready.clear();
        if let Err(e) = reactor.epoll.wait(&mut ready) {
            log::error!("the rpcplugin I/O thread cannot wait for events: {e}");
            return;
        }
        // Drained, then cleared, before the queue is read: a wake whose work is not in the queue
        // taken below writes a new byte, which the next wait sees. (Draining after taking the
        // queue would swallow the byte of work queued in between, and lose that wake-up.)
        if ready.iter().any(|&data| data >> 32 == WAKE_TOKEN) {
            let mut sink = [0u8; 256];
            while matches!(wake_rx.read(&mut sink), Ok(n) if n > 0) {}
        }
        reactor
            .notified
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let (added, removed, woken) = {
            let mut queue = reactor.queue();
            (
                std::mem::take(&mut queue.added),
                std::mem::take(&mut queue.removed),
                std::mem::take(&mut queue.woken),
            )
        };
        tasks.extend(added);
        for token in removed {
            if let Some(entry) = tasks.remove(&token) {
                finish(reactor, entry);
            }
        }
        ready.extend(woken.into_iter().map(|token| event_data(token, None)));
        // A task watching several fds is run once per turn, however many of them are ready.
        ready.sort_unstable();
        ready.dedup();
        let mut next = 0;
        while next < ready.len() {
            let token = ready[next] >> 32;
            let (mut whole, mut fds) = (false, Vec::new());
            while next < ready.len() && ready[next] >> 32 == token {
                match ready[next] & WHOLE {
                    WHOLE => whole = true,
                    fd => fds.push(fd as RawFd),
                }
                next += 1;
            }
            if token == WAKE_TOKEN {
                continue;
            }
            let Some(entry) = tasks.get_mut(&token) else {
                continue;
            };
            let waker = entry.waker.clone();
            let mut cx = Context::from_waker(&waker);
            READY.with(|r| *r.borrow_mut() = (!whole).then_some(fds));
            CURRENT.with(|c| c.set(token));
            let more =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| entry.task.run(&mut cx)))
                    .unwrap_or_else(|_| {
                        log::error!("a plugin I/O task panicked; it is dropped");
                        false
                    });
            if !more {
                if let Some(entry) = tasks.remove(&token) {
                    finish(reactor, entry);
                }
            }
        }
    }
}

fn finish(reactor: &Reactor, entry: Entry) {
    if let Some(fd) = entry.fd {
        reactor.epoll.delete(fd);
    }
    drop(entry.task);
}
