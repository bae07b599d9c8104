//! Starting a process on macOS: `posix_spawn` in a new process group, every fd closed but
//! stdin and the two pipes (`POSIX_SPAWN_CLOEXEC_DEFAULT`), signals back to their defaults.
//! There is no `PR_SET_PDEATHSIG` on macOS: `kill_with_parent` cannot be honoured (see the
//! README's platform notes).

use std::ffi::CString;
use std::io;

use super::handle::ProcessHandle;
use crate::SpawnRequest;

extern "C" {
    // <spawn.h>, macOS 10.7+; the libc crate does not declare it.
    fn posix_spawn_file_actions_addinherit_np(
        actions: *mut libc::posix_spawn_file_actions_t,
        fd: libc::c_int,
    ) -> libc::c_int;
}

/// An error number returned by a posix_spawn function (they return it, and set no errno).
fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// The spawn attributes, destroyed on drop.
struct Attributes(libc::posix_spawnattr_t);

impl Attributes {
    fn new() -> io::Result<Attributes> {
        let mut attr: libc::posix_spawnattr_t = std::ptr::null_mut();
        // SAFETY: initialises `attr` in place.
        check(unsafe { libc::posix_spawnattr_init(&mut attr) })?;
        let mut attributes = Attributes(attr);
        attributes.configure()?;
        Ok(attributes)
    }

    /// A new process group; every signal to its default (Rust ignores SIGPIPE) and none blocked.
    fn configure(&mut self) -> io::Result<()> {
        let flags = libc::POSIX_SPAWN_SETPGROUP
            | libc::POSIX_SPAWN_SETSIGDEF
            | libc::POSIX_SPAWN_SETSIGMASK
            | libc::POSIX_SPAWN_CLOEXEC_DEFAULT;
        // SAFETY: sigset_t is plain data, filled by sigfillset/sigemptyset; `self.0` was
        // initialised by posix_spawnattr_init.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::sigdelset(&mut all, libc::SIGKILL);
            libc::sigdelset(&mut all, libc::SIGSTOP);
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            check(libc::posix_spawnattr_setflags(
                &mut self.0,
                flags as libc::c_short,
            ))?;
            check(libc::posix_spawnattr_setpgroup(&mut self.0, 0))?;
            check(libc::posix_spawnattr_setsigdefault(&mut self.0, &all))?;
            check(libc::posix_spawnattr_setsigmask(&mut self.0, &none))
        }
    }
}

impl Drop for Attributes {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, destroyed once.
        unsafe { libc::posix_spawnattr_destroy(&mut self.0) };
    }
}

/// The file actions, destroyed on drop.
struct FileActions(libc::posix_spawn_file_actions_t);

impl FileActions {
    fn new(request: &SpawnRequest) -> io::Result<FileActions> {
        let mut actions: libc::posix_spawn_file_actions_t = std::ptr::null_mut();
        // SAFETY: initialises `actions` in place.
        check(unsafe { libc::posix_spawn_file_actions_init(&mut actions) })?;
        let mut file_actions = FileActions(actions);
        // SAFETY: `file_actions.0` was initialised above; the fds are open and the cwd string
        // outlives the spawn (the actions copy it).
        unsafe {
            check(posix_spawn_file_actions_addinherit_np(
                &mut file_actions.0,
                0,
            ))?;
            for (fd, target) in request.fds() {
                check(libc::posix_spawn_file_actions_adddup2(
                    &mut file_actions.0,
                    fd,
                    target,
                ))?;
            }
            if let Some(cwd) = &request.cwd {
                check(libc::posix_spawn_file_actions_addchdir_np(
                    &mut file_actions.0,
                    cwd.as_ptr(),
                ))?;
            }
        }
        Ok(file_actions)
    }
}

impl Drop for FileActions {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, destroyed once.
        unsafe { libc::posix_spawn_file_actions_destroy(&mut self.0) };
    }
}

/// Starts a process with `posix_spawn`: its own process group, stdin inherited, stdout and
/// stderr the request's pipes, nothing else open. Returns once it is started; a program that
/// cannot be run is the error.
pub fn spawn(request: &SpawnRequest) -> io::Result<ProcessHandle> {
    let terminated = |strings: &[CString]| {
        let mut ptrs: Vec<*mut libc::c_char> = strings
            .iter()
            .map(|s| s.as_ptr() as *mut libc::c_char)
            .collect();
        ptrs.push(std::ptr::null_mut());
        ptrs
    };
    let (argv, envp) = (terminated(&request.argv), terminated(&request.envp));
    let attributes = Attributes::new()?;
    let actions = FileActions::new(request)?;
    let mut pid: libc::pid_t = 0;
    // SAFETY: every pointer is valid for the call: the path and the null-terminated argv and
    // envp arrays point into `request`, and the attributes and actions are initialised.
    check(unsafe {
        libc::posix_spawn(
            &mut pid,
            request.path.as_ptr(),
            &actions.0,
            &attributes.0,
            argv.as_ptr(),
            envp.as_ptr(),
        )
    })?;
    ProcessHandle::spawned(pid as u32).inspect_err(|_| {
        // Nobody could watch it: it must not run on. Unreaped, its group id is still its own.
        // SAFETY: kill and waitpid on our own unreaped child and its group.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
            let mut status = 0;
            libc::waitpid(pid, &mut status, 0);
        }
    })
}
