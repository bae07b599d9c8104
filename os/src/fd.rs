//! File descriptors: non-blocking mode, close-on-exec pipes above stdio, `flock`.

use std::io;

/// Puts `fd` in non-blocking mode.
pub fn set_nonblocking(fd: std::os::fd::RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd the caller holds open; no pointers involved.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A pipe, both ends close-on-exec: (read end, write end).
pub fn pipe() -> io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2/pipe write two fds into the array.
    #[cfg(target_os = "linux")]
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    // SAFETY: as above. macOS has no pipe2: close-on-exec follows at once (see `set_cloexec`).
    #[cfg(target_os = "macos")]
    let rc = unsafe { libc::pipe(fds.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us these fds; nobody else owns them.
    let (read, write) = unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    };
    // above_stdio duplicates with F_DUPFD_CLOEXEC when it moves an fd; set it on the rest.
    #[cfg(target_os = "macos")]
    for fd in [&read, &write] {
        use std::os::fd::AsRawFd;
        set_cloexec(fd.as_raw_fd())?;
    }
    Ok((above_stdio(read)?, above_stdio(write)?))
}

/// Sets close-on-exec on `fd`, for platforms that cannot create fds with it (macOS). Our own
/// spawns there use `POSIX_SPAWN_CLOEXEC_DEFAULT`, so the instant without it only matters to
/// another library forking in it.
#[cfg(target_os = "macos")]
pub(crate) fn set_cloexec(fd: std::os::fd::RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd the caller holds open; no pointers involved.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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

/// Takes an exclusive `flock` on `file`; `wait`: block until it is free, otherwise fail at once
/// (`WouldBlock`) when another open file holds it. Released when the file is closed.
pub fn flock(file: &std::fs::File, wait: bool) -> io::Result<()> {
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
