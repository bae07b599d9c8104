//! Starting a process: `clone` with `CLONE_VM | CLONE_VFORK | CLONE_PIDFD`, then `execve`.

use std::io;

use super::pidfd::waitid_pidfd;

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
