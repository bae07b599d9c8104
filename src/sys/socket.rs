//! Unix sockets: a connect that never waits, the peer's pid, `send` without SIGPIPE, EOF by peeking.

use std::io;
use std::path::{Path, PathBuf};

/// The longest path a unix socket can be bound or connected at, in bytes: `sun_path` (108 bytes
/// on Linux) less the NUL that gRPC core and Go both require.
pub(crate) const MAX_SOCKET_PATH: usize = 107;

/// The longest socket file name a plugin or host puts in a socket dir: ours are at most 25 bytes
/// (`broker{id}-{8 hex digits}`, `plugin{u32}-grpc`), go-plugin's 16 (`plugin` and up to 10
/// digits); the rest is margin.
pub(crate) const LONGEST_SOCKET_NAME: usize = 32;

/// Checks that sockets named up to [`LONGEST_SOCKET_NAME`] fit under `dir`; else says how long
/// `dir` may be at most.
pub(crate) fn socket_dir_fits(dir: &Path) -> Result<(), usize> {
    use std::os::unix::ffi::OsStrExt;
    let longest = MAX_SOCKET_PATH - 1 - LONGEST_SOCKET_NAME;
    if dir.as_os_str().as_bytes().len() <= longest {
        Ok(())
    } else {
        Err(longest)
    }
}

/// The parent a socket dir falls back to when the temp dir is too long for socket paths.
pub(crate) fn short_temp_dir() -> PathBuf {
    PathBuf::from("/tmp")
}

/// Connects a non-blocking unix stream socket to `path` without ever waiting: a listener whose
/// backlog is full gives `WouldBlock` instead of a stall.
pub(crate) fn connect_unix_nonblocking(path: &Path) -> io::Result<std::os::unix::net::UnixStream> {
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

#[cfg(test)]
mod tests {
    #[test]
    fn the_socket_path_limit_is_sun_path_less_its_nul() {
        // SAFETY: an all-zero sockaddr_un is a valid (empty) address.
        let addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        assert_eq!(super::MAX_SOCKET_PATH, addr.sun_path.len() - 1);
        let fits = "/".repeat(super::MAX_SOCKET_PATH - 1 - super::LONGEST_SOCKET_NAME);
        assert!(super::socket_dir_fits(fits.as_ref()).is_ok());
        let over = format!("{fits}x");
        assert_eq!(super::socket_dir_fits(over.as_ref()), Err(fits.len()));
    }
}
