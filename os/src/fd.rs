//! File descriptors: non-blocking mode, close-on-exec pipes above stdio, `flock`.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};

use rustix::fs::{FlockOperation, OFlags};

/// Borrows a raw fd the caller holds open for the length of a call.
pub(crate) fn borrow(fd: RawFd) -> BorrowedFd<'static> {
    // SAFETY: every caller passes an fd it keeps open for the call it borrows it for; the
    // borrow never outlives that call.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// Puts `fd` in non-blocking mode.
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    let fd = borrow(fd);
    let flags = rustix::fs::fcntl_getfl(fd)?;
    rustix::fs::fcntl_setfl(fd, flags | OFlags::NONBLOCK)?;
    Ok(())
}

/// A pipe, both ends close-on-exec: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    #[cfg(target_os = "linux")]
    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    // macOS has no pipe2: close-on-exec follows at once (see `set_cloexec`).
    #[cfg(target_os = "macos")]
    let (read, write) = {
        let (read, write) = rustix::pipe::pipe()?;
        set_cloexec(&read)?;
        set_cloexec(&write)?;
        (read, write)
    };
    Ok((above_stdio(read)?, above_stdio(write)?))
}

/// Sets close-on-exec on `fd`, for platforms that cannot create fds with it (macOS). Our own
/// spawns there use `POSIX_SPAWN_CLOEXEC_DEFAULT`, so the instant without it only matters to
/// another library forking in it.
#[cfg(target_os = "macos")]
pub(crate) fn set_cloexec(fd: impl std::os::fd::AsFd) -> io::Result<()> {
    rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::CLOEXEC)?;
    Ok(())
}

/// The same file at a descriptor above 2: a host started with stdin, stdout or stderr closed
/// gets pipes at 0-2, and installing one as a child's stdout could then overwrite the other.
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // The original closes when `fd` drops.
    Ok(rustix::io::fcntl_dupfd_cloexec(&fd, 3)?)
}

/// Takes an exclusive `flock` on `file`; `wait`: block until it is free, otherwise fail at once
/// (`WouldBlock`) when another open file holds it. Released when the file is closed.
pub fn flock(file: &std::fs::File, wait: bool) -> io::Result<()> {
    let operation = if wait {
        FlockOperation::LockExclusive
    } else {
        FlockOperation::NonBlockingLockExclusive
    };
    loop {
        match rustix::fs::flock(file, operation) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}
