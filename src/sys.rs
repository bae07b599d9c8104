//! The few process syscalls std lacks. All `unsafe` of the crate lives here.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

/// Sends `signal` to every process in the process group `pgid`. A group that no longer exists is
/// not an error.
pub(crate) fn signal_group(pgid: u32, signal: i32) -> io::Result<()> {
    // SAFETY: kill has no memory effects; a negative pid addresses the group.
    if unsafe { libc::kill(-(pgid as libc::pid_t), signal) } == 0 {
        return Ok(());
    }
    match io::Error::last_os_error() {
        e if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
        e => Err(e),
    }
}

/// Whether a process with this pid exists (it may belong to another user).
pub(crate) fn process_exists(pid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

pub(crate) const SIGKILL: i32 = libc::SIGKILL;

/// Makes the process ignore SIGINT, as go-plugin plugins do: a Ctrl-C in the host's terminal is
/// the host's business, which then shuts its plugins down.
pub(crate) fn ignore_sigint() {
    // SAFETY: installing SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
}

/// Sends gRPC core's own log lines (TLS handshake failures and the like) to the `log` crate under
/// the target `rpcplugin::grpc`, instead of the host's stderr. The level check happens per line,
/// so a logger installed later still gets them.
pub(crate) fn route_grpc_log() {
    extern "C" fn forward(args: *mut grpcio_sys::gpr_log_func_args) {
        let _ = std::panic::catch_unwind(|| {
            // SAFETY: gRPC passes valid, NUL-terminated strings for the duration of the call.
            let args = unsafe { &*args };
            let level = match args.severity {
                grpcio_sys::gpr_log_severity::GPR_LOG_SEVERITY_DEBUG => log::Level::Debug,
                grpcio_sys::gpr_log_severity::GPR_LOG_SEVERITY_INFO => log::Level::Info,
                grpcio_sys::gpr_log_severity::GPR_LOG_SEVERITY_ERROR => log::Level::Error,
            };
            if !log::log_enabled!(target: "rpcplugin::grpc", level) {
                return;
            }
            let message = unsafe { std::ffi::CStr::from_ptr(args.message) }.to_string_lossy();
            let file = unsafe { std::ffi::CStr::from_ptr(args.file) }.to_string_lossy();
            log::log!(target: "rpcplugin::grpc", level, "{message} ({file}:{})", args.line);
        });
    }
    // SAFETY: `forward` has the signature gRPC expects and never unwinds.
    unsafe { grpcio_sys::gpr_set_log_function(Some(forward)) }
}

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

/// A level-triggered epoll set whose events carry a `u64` token.
pub(crate) struct Epoll(std::os::fd::OwnedFd);

impl Epoll {
    pub(crate) fn new() -> io::Result<Epoll> {
        use std::os::fd::FromRawFd;
        // SAFETY: epoll_create1 takes flags and returns a new fd or -1.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just gave us this fd; nobody else owns it.
        Ok(Epoll(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }))
    }

    /// Watches `fd` for input (and hang-up), reported with `token`.
    pub(crate) fn add(&self, fd: std::os::fd::RawFd, token: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
            u64: token,
        };
        // SAFETY: both fds are open; `event` lives for the call.
        let rc =
            unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Watches `fd` edge-triggered for input and hang-up, and for output too if `output`,
    /// reported with `token`: the owner must read (and write) until `WouldBlock`, or run again by
    /// itself, to see the next event. `modify` changes the interest of a watched fd.
    pub(crate) fn add_edge(
        &self,
        fd: std::os::fd::RawFd,
        token: u64,
        output: bool,
        modify: bool,
    ) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let mut events = libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET;
        if output {
            events |= libc::EPOLLOUT;
        }
        let mut event = libc::epoll_event {
            events: events as u32,
            u64: token,
        };
        let op = if modify {
            libc::EPOLL_CTL_MOD
        } else {
            libc::EPOLL_CTL_ADD
        };
        // SAFETY: both fds are open; `event` lives for the call.
        let rc = unsafe { libc::epoll_ctl(self.0.as_raw_fd(), op, fd, &mut event) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Stops watching `fd` (which must still be open).
    pub(crate) fn delete(&self, fd: std::os::fd::RawFd) {
        use std::os::fd::AsRawFd;
        let mut event = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: as in `add`; a non-null event keeps old kernels happy.
        unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, &mut event) };
    }

    /// Waits for events (no timeout) and appends their tokens to `tokens`.
    pub(crate) fn wait(&self, tokens: &mut Vec<u64>) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        const MAX: usize = 256;
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; MAX];
        loop {
            // SAFETY: `events` has room for MAX entries for the duration of the call.
            let n = unsafe {
                libc::epoll_wait(self.0.as_raw_fd(), events.as_mut_ptr(), MAX as i32, -1)
            };
            if n >= 0 {
                tokens.extend(events[..n as usize].iter().map(|e| e.u64));
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}

/// Puts `fd` in non-blocking mode.
pub(crate) fn set_nonblocking(fd: std::os::fd::RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd the caller holds open; no pointers involved.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A pipe, both ends close-on-exec: (read end, write end).
pub(crate) fn pipe() -> io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us these fds; nobody else owns them.
    let (read, write) = unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    };
    Ok((above_stdio(read)?, above_stdio(write)?))
}

/// The same file at a descriptor above 2: a host started with stdin, stdout or stderr closed
/// gets pipes at 0-2, and installing one as a child's stdout could then overwrite the other.
fn above_stdio(fd: std::os::fd::OwnedFd) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd};
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC on an open fd returns a new fd (>= 3) or -1.
    let moved = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if moved < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this fd; the original closes when `fd` drops.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(moved) })
}

/// Everything a new process needs, prepared in the parent: the child may only make system calls
/// between clone and exec.
pub(crate) struct SpawnRequest {
    /// The executable, already looked up.
    pub path: std::ffi::CString,
    pub argv: Vec<std::ffi::CString>,
    /// `KEY=VALUE` entries: the child's whole environment.
    pub envp: Vec<std::ffi::CString>,
    pub cwd: Option<std::ffi::CString>,
    /// Write ends for the child's stdout and stderr (stdin is inherited), owned by the request
    /// so a request that waits in a queue never refers to fd numbers reused meanwhile. Both are
    /// above 2 (see [`pipe`]), so installing one as 1 or 2 cannot overwrite the other.
    pub stdout: std::os::fd::OwnedFd,
    pub stderr: std::os::fd::OwnedFd,
    /// SIGKILL the child when the calling thread dies (`PR_SET_PDEATHSIG`).
    pub kill_with_parent: bool,
}

impl SpawnRequest {
    fn fds(&self) -> [(std::os::fd::RawFd, i32); 2] {
        use std::os::fd::AsRawFd;
        [(self.stdout.as_raw_fd(), 1), (self.stderr.as_raw_fd(), 2)]
    }
}

/// What the child reads, and where it reports a failure before exec.
struct ChildArgs<'a> {
    request: &'a SpawnRequest,
    /// The parent's pid: if the child's parent is another by the time the death signal is set,
    /// the host already died, and the child must not run on unwatched.
    parent: libc::pid_t,
    fds: [(std::os::fd::RawFd, i32); 2],
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    /// 0, or the errno of the step that failed.
    errno: std::sync::atomic::AtomicI32,
}

/// The child between clone and exec. It shares the parent's memory (CLONE_VM) while the parent
/// waits (CLONE_VFORK), so it allocates nothing, touches no lock and only makes system calls.
extern "C" fn spawned_child(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the parent's ChildArgs, alive until this child execs or exits.
    let args = unsafe { &*(arg as *const ChildArgs<'_>) };
    let request = args.request;
    let fail = || {
        // SAFETY: errno of this thread (the parent's TLS: the parent is suspended), then the
        // raw exit, which runs no atexit handler in the shared memory.
        unsafe {
            let errno = *libc::__errno_location();
            args.errno
                .store(errno.max(1), std::sync::atomic::Ordering::SeqCst);
            libc::_exit(127)
        }
    };
    // SAFETY: plain system calls on values prepared by the parent; pointers are to its
    // CStrings and null-terminated arrays, alive for the duration.
    unsafe {
        // Handlers of the parent must not run here (they would run in its memory): every
        // caught signal goes back to its default, and SIGPIPE too (Rust ignores it).
        let mut default: libc::sigaction = std::mem::zeroed();
        default.sa_sigaction = libc::SIG_DFL;
        for signal in 1..65 {
            if signal == libc::SIGKILL || signal == libc::SIGSTOP {
                continue;
            }
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, std::ptr::null(), &mut old) == 0
                && (old.sa_sigaction != libc::SIG_IGN || signal == libc::SIGPIPE)
                && old.sa_sigaction != libc::SIG_DFL
            {
                libc::sigaction(signal, &default, std::ptr::null_mut());
            }
        }
        if libc::setpgid(0, 0) != 0 {
            fail();
        }
        if request.kill_with_parent {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                fail();
            }
            if libc::getppid() != args.parent {
                *libc::__errno_location() = libc::ESRCH;
                fail();
            }
        }
        for (fd, target) in args.fds {
            let done = if fd == target {
                libc::fcntl(fd, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, target)
            };
            if done < 0 {
                fail();
            }
        }
        if let Some(cwd) = &request.cwd {
            if libc::chdir(cwd.as_ptr()) != 0 {
                fail();
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        libc::execve(
            request.path.as_ptr(),
            args.argv.as_ptr(),
            args.envp.as_ptr(),
        );
    }
    fail();
    127
}

/// Starts a process the way `posix_spawn` does (the child shares our memory until it execs, so
/// no page tables are copied: a fork of a big multi-threaded host costs milliseconds, this does
/// not), with what `posix_spawn` cannot do: its own process group, `PR_SET_PDEATHSIG`, and a
/// pidfd from the clone itself (CLONE_PIDFD), so the pid is never used unpinned. Returns once
/// the child has exec'd; a failure before that (a missing program, a bad working dir) is the
/// error, with the child reaped.
pub(crate) fn spawn(request: &SpawnRequest) -> io::Result<(u32, std::os::fd::OwnedFd)> {
    use std::os::fd::FromRawFd;
    let terminated = |strings: &[std::ffi::CString]| {
        let mut ptrs: Vec<*const libc::c_char> = strings.iter().map(|s| s.as_ptr()).collect();
        ptrs.push(std::ptr::null());
        ptrs
    };
    let args = ChildArgs {
        request,
        // SAFETY: getpid has no preconditions.
        parent: unsafe { libc::getpid() },
        fds: request.fds(),
        argv: terminated(&request.argv),
        envp: terminated(&request.envp),
        errno: std::sync::atomic::AtomicI32::new(0),
    };
    // The child's stack; it needs little (no allocation, a few system calls).
    let mut stack = vec![0u128; 64 * 1024 / 16];
    let top = stack.as_mut_ptr_range().end as *mut libc::c_void;
    let mut pidfd: libc::c_int = -1;
    // SAFETY: signal masks are per thread; every signal is held off this thread while the
    // child runs on our memory, and the old mask is restored after.
    let pid = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        // SAFETY: `spawned_child` honours the CLONE_VM|CLONE_VFORK contract (see there); the
        // stack and `args` outlive the child's use of them, as clone returns only after the
        // child has exec'd or exited; CLONE_PIDFD stores the pidfd in `pidfd`.
        let pid = libc::clone(
            spawned_child,
            top,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD,
            &args as *const ChildArgs<'_> as *mut libc::c_void,
            &mut pidfd as *mut libc::c_int,
        );
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        pid
    };
    drop(stack);
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: CLONE_PIDFD gave us this fd; nobody else owns it.
    let pidfd = unsafe { std::os::fd::OwnedFd::from_raw_fd(pidfd) };
    let errno = args.errno.load(std::sync::atomic::Ordering::SeqCst);
    if errno != 0 {
        let _ = waitid_pidfd(&pidfd, libc::WEXITED);
        return Err(io::Error::from_raw_os_error(errno));
    }
    Ok((pid as u32, pidfd))
}

/// The point in time a gRPC deadline stands for, or None for "no deadline". grpcio keeps the
/// deadline's `gpr_timespec` private; it is the struct's only field, converted to the realtime
/// clock, so it is read back here and checked for that clock before use.
pub(crate) fn deadline_instant(deadline: grpcio::Deadline) -> Option<std::time::Instant> {
    use grpcio_sys::{gpr_clock_type, gpr_timespec};
    // SAFETY: `grpcio::Deadline` is `Copy` with a single `gpr_timespec` field; transmute checks
    // the sizes match, and the value is validated below before it is trusted.
    let spec: gpr_timespec =
        unsafe { std::mem::transmute::<grpcio::Deadline, gpr_timespec>(deadline) };
    if spec.clock_type != gpr_clock_type::GPR_CLOCK_REALTIME
        || spec.tv_sec >= i64::MAX / 2
        || spec.tv_sec < 0
        || !(0..1_000_000_000).contains(&spec.tv_nsec)
    {
        return None;
    }
    let at =
        std::time::UNIX_EPOCH + std::time::Duration::new(spec.tv_sec as u64, spec.tv_nsec as u32);
    let now = std::time::Instant::now();
    Some(match at.duration_since(std::time::SystemTime::now()) {
        Ok(remaining) => now + remaining,
        Err(_) => now,
    })
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
fn waitid_pidfd(pidfd: &std::os::fd::OwnedFd, flags: i32) -> io::Result<Option<libc::siginfo_t>> {
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

/// Socket inodes listening at `address`, from `/proc/net/{unix,tcp,tcp6}`.
pub(crate) fn listening_socket_inodes(address: &crate::transport::Address) -> io::Result<Vec<u64>> {
    use crate::transport::Address;
    let mut inodes = Vec::new();
    match address {
        Address::Unix(path) => {
            // Num RefCount Protocol Flags Type St Inode Path; flag 0x10000 is __SO_ACCEPTCON.
            let table = std::fs::read_to_string("/proc/net/unix")?;
            let want = path.to_string_lossy();
            for line in table.lines().skip(1) {
                let Some((flags, inode, socket_path)) = unix_socket_line(line) else {
                    continue;
                };
                if socket_path == want && flags == "00010000" {
                    if let Ok(inode) = inode.parse() {
                        inodes.push(inode);
                    }
                }
            }
        }
        Address::Tcp(addr) => {
            let (file, local) = match addr {
                std::net::SocketAddr::V4(a) => (
                    "/proc/net/tcp",
                    format!(
                        "{:08X}:{:04X}",
                        u32::from_ne_bytes(a.ip().octets()),
                        a.port()
                    ),
                ),
                std::net::SocketAddr::V6(a) => {
                    let words: String = a
                        .ip()
                        .octets()
                        .chunks(4)
                        .map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
                        .collect();
                    ("/proc/net/tcp6", format!("{words}:{:04X}", a.port()))
                }
            };
            // sl local_address rem_address st ... inode (10th column); st 0A is LISTEN.
            let table = std::fs::read_to_string(file)?;
            for line in table.lines().skip(1) {
                let cols: Vec<&str> = line.split_whitespace().collect();
                if cols.len() >= 10 && cols[1] == local && cols[3] == "0A" {
                    if let Ok(inode) = cols[9].parse() {
                        inodes.push(inode);
                    }
                }
            }
        }
    }
    Ok(inodes)
}

/// The flags, inode and path of a `/proc/net/unix` line (`Num RefCount Protocol Flags Type St
/// Inode Path`); the path is the rest of the line and may hold spaces.
fn unix_socket_line(line: &str) -> Option<(&str, &str, &str)> {
    let mut rest = line;
    let mut fields = [""; 7];
    for field in &mut fields {
        rest = rest.trim_start();
        let end = rest.find(char::is_whitespace)?;
        *field = &rest[..end];
        rest = &rest[end..];
    }
    Some((fields[3], fields[6], rest.trim()))
}

/// Whether process `pid` holds one of the socket `inodes` among its open files.
pub(crate) fn process_holds_socket(pid: u32, inodes: &[u64]) -> io::Result<bool> {
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let Ok(target) = std::fs::read_link(entry?.path()) else {
            continue;
        };
        let target = target.to_string_lossy();
        let inode = target
            .strip_prefix("socket:[")
            .and_then(|t| t.strip_suffix(']'))
            .and_then(|n| n.parse::<u64>().ok());
        if inode.is_some_and(|i| inodes.contains(&i)) {
            return Ok(true);
        }
    }
    Ok(false)
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

/// Takes an exclusive `flock` on `file`; `wait`: block until it is free, otherwise fail at once
/// (`WouldBlock`) when another open file holds it. Released when the file is closed.
pub(crate) fn flock(file: &std::fs::File, wait: bool) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let op = if wait {
        libc::LOCK_EX
    } else {
        libc::LOCK_EX | libc::LOCK_NB
    };
    loop {
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Kills what is left of process group `pgid` after its leader was reaped by someone else
/// (our plugin's own children, still in its group). Linux never hands out a pid that is still
/// some group's id, so while any member is left the id is still ours; a live process *with* pid
/// `pgid` means the id was recycled after the group emptied, and then nothing is signalled.
/// Each member is signalled through a pidfd after checking, through it, that it is still in the
/// group. Returns how many were signalled.
pub(crate) fn kill_leaderless_group(pgid: u32) -> usize {
    let group_of = |pid: u32| -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(2)?
            .parse()
            .ok()
    };
    if std::path::Path::new(&format!("/proc/{pgid}")).exists() {
        return 0;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut killed = 0;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if group_of(pid) != Some(pgid) {
            continue;
        }
        let Ok(pidfd) = pidfd_open(pid) else { continue };
        // The pidfd pins the process; still in the group once pinned means it is the one seen.
        if group_of(pid) == Some(pgid)
            && pidfd_alive(&pidfd)
            && pidfd_signal(&pidfd, SIGKILL).is_ok()
        {
            killed += 1;
        }
    }
    killed
}

/// Connects a non-blocking unix stream socket to `path` without ever waiting: a listener whose
/// backlog is full gives `WouldBlock` instead of a stall.
pub(crate) fn connect_unix_nonblocking(
    path: &std::path::Path,
) -> io::Result<std::os::unix::net::UnixStream> {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: an all-zero sockaddr_un is a valid (empty) address.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("socket path too long: {}", path.display()),
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: plain socket creation; the fd is owned right below.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this fd; nobody else owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid sockaddr_un of at least `len` bytes for the call.
    let rc = unsafe {
        libc::connect(
            fd,
            (&addr as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(std::os::unix::net::UnixStream::from(owned))
}

/// The pid of the process that connected the unix socket `fd` (as it was at connect time).
pub(crate) fn peer_pid(fd: std::os::fd::RawFd) -> Option<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` live for the call and `len` is `cred`'s size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (rc == 0 && cred.pid > 0).then_some(cred.pid as u32)
}

/// `send(2)` with `MSG_NOSIGNAL`: a peer that closed gives `EPIPE`, never SIGPIPE (which would
/// kill a host that does not ignore it, such as a C program embedding this library).
pub(crate) fn send(fd: std::os::fd::RawFd, buf: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid for `buf.len()` bytes for the call.
        let n = unsafe {
            libc::send(
                fd,
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Whether the socket `fd` is at end of file: nothing to read and its peer done writing.
pub(crate) fn peek_eof(fd: std::os::fd::RawFd) -> bool {
    let mut byte = 0u8;
    // SAFETY: one byte of writable memory for the call.
    let n = unsafe {
        libc::recv(
            fd,
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n == 0
}
