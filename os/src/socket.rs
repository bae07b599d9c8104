//! Unix sockets: a connect that never waits, the peer's pid, `send` without SIGPIPE, EOF by peeking.

use std::io;
use std::path::{Path, PathBuf};

/// The longest path a unix socket can be bound or connected at, in bytes: `sun_path` (108 bytes
/// on Linux, 104 on macOS) less the NUL that gRPC core and Go both require.
#[cfg(target_os = "linux")]
pub const MAX_SOCKET_PATH: usize = 107;
/// The longest path a unix socket can be bound or connected at, in bytes: `sun_path` (108 bytes
/// on Linux, 104 on macOS) less the NUL that gRPC core and Go both require.
#[cfg(target_os = "macos")]
pub const MAX_SOCKET_PATH: usize = 103;

/// The longest socket file name a plugin or host puts in a socket dir: ours are at most 25 bytes
/// (`broker{id}-{8 hex digits}`, `plugin{u32}-grpc`), go-plugin's 16 (`plugin` and up to 10
/// digits); the rest is margin.
pub const LONGEST_SOCKET_NAME: usize = 32;

/// Checks that sockets named up to [`LONGEST_SOCKET_NAME`] fit under `dir`; else says how long
/// `dir` may be at most.
pub fn socket_dir_fits(dir: &Path) -> Result<(), usize> {
    use std::os::unix::ffi::OsStrExt;
    let longest = MAX_SOCKET_PATH - 1 - LONGEST_SOCKET_NAME;
    if dir.as_os_str().as_bytes().len() <= longest {
        Ok(())
    } else {
        Err(longest)
    }
}

/// The parent a socket dir falls back to when the temp dir is too long for socket paths.
pub fn short_temp_dir() -> PathBuf {
    PathBuf::from("/tmp")
}

/// Connects a non-blocking unix stream socket to `path` without ever waiting: a listener whose
/// backlog is full gives `WouldBlock` instead of a stall.
pub fn connect_unix_nonblocking(path: &Path) -> io::Result<std::os::unix::net::UnixStream> {
    use std::os::unix::ffi::OsStrExt;
    if path.as_os_str().as_bytes().len() > MAX_SOCKET_PATH {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "socket path too long ({} bytes, at most {MAX_SOCKET_PATH}): {}",
                path.as_os_str().len(),
                path.display()
            ),
        ));
    }
    let addr = rustix::net::SocketAddrUnix::new(path)?;
    let socket = stream_socket()?;
    rustix::net::connect(&socket, &addr)?;
    Ok(std::os::unix::net::UnixStream::from(socket))
}

/// A non-blocking, close-on-exec unix stream socket, created so in one call.
#[cfg(target_os = "linux")]
fn stream_socket() -> io::Result<std::os::fd::OwnedFd> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    let flags = SocketFlags::NONBLOCK | SocketFlags::CLOEXEC;
    Ok(rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        flags,
        None,
    )?)
}

/// A non-blocking, close-on-exec unix stream socket that never raises SIGPIPE. macOS has no
/// `SOCK_CLOEXEC`: the flag follows at once (our own spawns close every fd they do not name, see
/// `POSIX_SPAWN_CLOEXEC_DEFAULT`, so only another library's fork in that instant could inherit
/// it, as with std's own sockets there).
#[cfg(target_os = "macos")]
fn stream_socket() -> io::Result<std::os::fd::OwnedFd> {
    use rustix::net::{AddressFamily, SocketType};
    let socket = rustix::net::socket(AddressFamily::UNIX, SocketType::STREAM, None)?;
    crate::fd::set_cloexec(&socket)?;
    let flags = rustix::fs::fcntl_getfl(&socket)?;
    rustix::fs::fcntl_setfl(&socket, flags | rustix::fs::OFlags::NONBLOCK)?;
    rustix::net::sockopt::set_socket_nosigpipe(&socket, true)?;
    Ok(socket)
}

/// The pid of the process that connected the unix socket `fd` (as it was at connect time).
#[cfg(target_os = "linux")]
pub fn peer_pid(fd: std::os::fd::RawFd) -> Option<u32> {
    let cred = rustix::net::sockopt::socket_peercred(crate::fd::borrow(fd)).ok()?;
    u32::try_from(cred.pid.as_raw_nonzero().get()).ok()
}

/// The pid of the process that connected the unix socket `fd` (as it was at connect time):
/// `LOCAL_PEERPID`, which rustix does not offer.
#[cfg(target_os = "macos")]
pub fn peer_pid(fd: std::os::fd::RawFd) -> Option<u32> {
    let mut pid: libc::pid_t = 0;
    let mut len = std::mem::size_of::<libc::pid_t>() as libc::socklen_t;
    // SAFETY: `pid` and `len` live for the call and `len` is `pid`'s size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_LOCAL,
            libc::LOCAL_PEERPID,
            (&mut pid as *mut libc::pid_t).cast(),
            &mut len,
        )
    };
    (rc == 0 && pid > 0).then_some(pid as u32)
}

/// `send(2)` that never raises SIGPIPE: a peer that closed gives `EPIPE` (SIGPIPE would kill a
/// host that does not ignore it, such as a C program embedding this library). `MSG_NOSIGNAL` on
/// Linux; `SO_NOSIGPIPE` on macOS, set on the socket first (the socket may come from std or
/// from an `accept`, so it is set again each time: one more system call per send there).
pub fn send(fd: std::os::fd::RawFd, buf: &[u8]) -> io::Result<usize> {
    use rustix::net::SendFlags;
    let fd = crate::fd::borrow(fd);
    #[cfg(target_os = "linux")]
    let flags = SendFlags::NOSIGNAL | SendFlags::DONTWAIT;
    #[cfg(target_os = "macos")]
    let flags = {
        rustix::net::sockopt::set_socket_nosigpipe(fd, true)?;
        SendFlags::DONTWAIT
    };
    loop {
        match rustix::net::send(fd, buf, flags) {
            Ok(n) => return Ok(n),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether the socket `fd` is at end of file: nothing to read and its peer done writing.
pub fn peek_eof(fd: std::os::fd::RawFd) -> bool {
    use rustix::net::RecvFlags;
    let mut byte = [0u8; 1];
    let flags = RecvFlags::PEEK | RecvFlags::DONTWAIT;
    matches!(
        rustix::net::recv(crate::fd::borrow(fd), &mut byte[..], flags),
        Ok((0, _))
    )
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
