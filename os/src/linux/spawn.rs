//! Starting a process: `clone` with `CLONE_VM | CLONE_VFORK` (and `CLONE_PIDFD` where it
//! works), then `execve`.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

use super::handle::ProcessHandle;
use super::pidfd::{support, PidfdSupport};
use crate::SpawnRequest;

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
/// pidfd from the clone itself (CLONE_PIDFD) where the kernel and container allow it, so the pid
/// is never used unpinned; elsewhere the handle falls back to the pid (see [`ProcessHandle`]).
/// Returns once the child has exec'd; a failure before that (a missing program, a bad working
/// dir) is the error, with the child reaped.
pub fn spawn(request: &SpawnRequest) -> io::Result<ProcessHandle> {
    spawn_with(request, support())
}

fn spawn_with(request: &SpawnRequest, support: &'static PidfdSupport) -> io::Result<ProcessHandle> {
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
    let mut cloned = Err(io::Error::from_raw_os_error(libc::EINVAL));
    if support.try_clone_flag() {
        cloned = clone_child(&args, true);
        match &cloned {
            // A kernel before 5.2 ignores the flag it does not know: no pidfd written. Never
            // trust an fd that was not seen written.
            Ok((_, pidfd)) => support.clone_flag_works(pidfd.is_some()),
            // Refused (a seccomp profile: EPERM; a kernel or filter that rejects the flag:
            // EINVAL; ENOSYS): no child was made, so it is tried again without.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINVAL | libc::EPERM | libc::ENOSYS)
                ) =>
            {
                support.clone_flag_works(false)
            }
            Err(_) => {}
        }
        #[cfg(test)]
        if support.simulate_ignored_clone_flag {
            if let Ok((_, pidfd)) = &mut cloned {
                // As a kernel before 5.2 does: the child runs, and no pidfd comes back.
                pidfd.take();
                support.clone_flag_works(false);
            }
        }
    }
    if !support.try_clone_flag() && cloned.is_err() {
        cloned = clone_child(&args, false).map_err(|e| refused(e, support));
    }
    let (pid, pidfd) = cloned?;
    let handle = ProcessHandle::spawned(pid, pidfd, support);
    let errno = args.errno.load(std::sync::atomic::Ordering::SeqCst);
    if errno != 0 {
        let _ = handle.state(true);
        let _ = handle.reap();
        return Err(io::Error::from_raw_os_error(errno));
    }
    Ok(handle)
}

/// `clone` refused even without `CLONE_PIDFD`: says what was tried, so the error is never a bare
/// errno.
fn refused(e: io::Error, support: &PidfdSupport) -> io::Error {
    io::Error::new(
        e.kind(),
        format!(
            "clone(CLONE_VM|CLONE_VFORK) was refused: {e} (a seccomp profile that forbids \
             creating processes, or a process limit?); pidfd support here: {}",
            support.describe()
        ),
    )
}

/// One `clone` of the child, with or without `CLONE_PIDFD`: its pid, and the pidfd if the kernel
/// wrote one.
fn clone_child(args: &ChildArgs<'_>, want_pidfd: bool) -> io::Result<(u32, Option<OwnedFd>)> {
    // The child's stack; it needs little (no allocation, a few system calls).
    let mut stack = vec![0u128; 64 * 1024 / 16];
    let top = stack.as_mut_ptr_range().end as *mut libc::c_void;
    let mut pidfd: libc::c_int = -1;
    let mut flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD;
    if want_pidfd {
        flags |= libc::CLONE_PIDFD;
    }
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
            flags,
            args as *const ChildArgs<'_> as *mut libc::c_void,
            &mut pidfd as *mut libc::c_int,
        );
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        pid
    };
    drop(stack);
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: CLONE_PIDFD wrote this fd (it is -1 when the kernel ignored the flag); nobody else
    // owns it.
    let pidfd = (want_pidfd && pidfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd) });
    Ok((pid as u32, pidfd))
}

#[cfg(test)]
mod tests {
    use std::ffi::CString;

    use super::*;
    use crate::ChildState;

    fn request(script: &str) -> SpawnRequest {
        let (_, stdout) = crate::fd::pipe().unwrap();
        let (_, stderr) = crate::fd::pipe().unwrap();
        SpawnRequest {
            path: CString::new("/bin/sh").unwrap(),
            argv: ["sh", "-c", script]
                .iter()
                .map(|a| CString::new(*a).unwrap())
                .collect(),
            envp: vec![],
            cwd: None,
            stdout,
            stderr,
            kill_with_parent: false,
        }
    }

    /// Waits (boundedly) for the handle's exit fd to turn readable.
    fn wait_exit_fd(child: &ProcessHandle) {
        let fd = child.exit_fd().unwrap();
        let mut poll = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut poll, 1, 30_000) };
        assert_eq!(rc, 1, "the exit fd did not turn readable within 30 s");
    }

    /// A kernel before 5.2 ignores CLONE_PIDFD: the child runs and no pidfd comes back. The
    /// spawn must not trust the unwritten fd, must remember the flag does not work, and the
    /// child must still be watched, signalled and reaped, all by pid.
    #[test]
    fn a_clone_that_ignores_the_pidfd_flag_leaves_a_child_watched_by_pid() {
        let support: &'static PidfdSupport = Box::leak(Box::new(PidfdSupport::none()));
        let child = spawn_with(&request("exec sleep 30"), support).unwrap();
        assert!(!support.try_clone_flag(), "the ignored flag is remembered");
        assert!(!child.has_pidfd());
        assert!(child.alive());
        assert!(matches!(child.state(false), Ok(ChildState::Unreaped(None))));
        child.signal(libc::SIGKILL).unwrap();
        wait_exit_fd(&child);
        assert!(!child.alive());
        match child.state(false).unwrap() {
            ChildState::Unreaped(Some(status)) => {
                use std::os::unix::process::ExitStatusExt;
                assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
            }
            _ => panic!("the killed child must be unreaped with its status"),
        }
        child.reap().unwrap();
        assert!(matches!(child.state(false), Ok(ChildState::Gone)));
        // Reaped: its pid may now be anyone's, so signalling does nothing (and is no error).
        child.signal(libc::SIGKILL).unwrap();

        // The next spawn does not ask for a pidfd at all, and sees the exit code.
        let child = spawn_with(&request("exit 3"), support).unwrap();
        wait_exit_fd(&child);
        match child.state(true).unwrap() {
            ChildState::Unreaped(Some(status)) => assert_eq!(status.code(), Some(3)),
            _ => panic!("the child must be unreaped with its status"),
        }
        child.reap().unwrap();
    }

    /// A failure before exec is the error, with the child reaped, without pidfds too.
    #[test]
    fn a_failed_exec_is_the_error_without_pidfds() {
        let support: &'static PidfdSupport = Box::leak(Box::new(PidfdSupport::none()));
        let mut request = request("exit 0");
        request.path = CString::new("/nonexistent/program").unwrap();
        let err = spawn_with(&request, support).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{err}");
    }

    /// On this machine's kernel every pidfd call works, and the probe says so (the CI run under
    /// the seccomp launcher checks the opposite through the whole suite).
    #[test]
    fn the_probe_sees_each_call() {
        let support = PidfdSupport::probe();
        let under_filter = std::env::var_os("RPCPLUGIN_TEST_NOPIDFD").is_some();
        assert_eq!(
            support.open && support.send_signal && support.waitid,
            !under_filter,
            "{}",
            support.describe()
        );
        let child = spawn(&request("exit 0")).unwrap();
        wait_exit_fd(&child);
        assert!(!child.alive());
        child.reap().unwrap();
    }
}
