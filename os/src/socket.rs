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
    use std::os::fd::AsRawFd;
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
    let owned = stream_socket()?;
    let fd = owned.as_raw_fd();
    let len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + 1;
    #[cfg(target_os = "macos")]
    {
        addr.sun_len = len as u8;
    }
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

/// A non-blocking, close-on-exec unix stream socket, created so in one call.
#[cfg(target_os = "linux")]
fn stream_socket() -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let flags = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: plain socket creation; the fd is owned right below.
    let fd = unsafe { libc::socket(libc::AF_UNIX, flags, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this fd; nobody else owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// A non-blocking, close-on-exec unix stream socket that never raises SIGPIPE. macOS has no
/// `SOCK_CLOEXEC`: the flag follows at once (our own spawns close every fd they do not name, see
/// `POSIX_SPAWN_CLOEXEC_DEFAULT`, so only another library's fork in that instant could inherit
/// it, as with std's own sockets there).
#[cfg(target_os = "macos")]
fn stream_socket() -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: plain socket creation; the fd is owned right below.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this fd; nobody else owns it.
    let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    crate::fd::set_cloexec(owned.as_raw_fd())?;
    crate::fd::set_nonblocking(owned.as_raw_fd())?;
    set_nosigpipe(owned.as_raw_fd())?;
    Ok(owned)
}

/// `SO_NOSIGPIPE`: writes to a closed peer give `EPIPE` instead of SIGPIPE (macOS has no
/// `MSG_NOSIGNAL` that every release honours).
#[cfg(target_os = "macos")]
fn set_nosigpipe(fd: std::os::fd::RawFd) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: `one` lives for the call and its size is given.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_NOSIGPIPE,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The pid of the process that connected the unix socket `fd` (as it was at connect time).
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

/// The pid of the process that connected the unix socket `fd` (as it was at connect time).
#[cfg(target_os = "linux")]
pub fn peer_pid(fd: std::os::fd::RawFd) -> Option<u32> {
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

/// `send(2)` that never raises SIGPIPE: a peer that closed gives `EPIPE` (SIGPIPE would kill a
/// host that does not ignore it, such as a C program embedding this library). `MSG_NOSIGNAL` on
/// Linux; `SO_NOSIGPIPE` on macOS, set on the socket first (the socket may come from std or
/// from an `accept`, so it is set again each time: one more system call per send there).
pub fn send(fd: std::os::fd::RawFd, buf: &[u8]) -> io::Result<usize> {
    #[cfg(target_os = "linux")]
    const FLAGS: libc::c_int = libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT;
    #[cfg(target_os = "macos")]
    const FLAGS: libc::c_int = libc::MSG_DONTWAIT;
    #[cfg(target_os = "macos")]
    set_nosigpipe(fd)?;
    loop {
        // SAFETY: `buf` is valid for `buf.len()` bytes for the call.
        let n = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), FLAGS) };
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
pub fn peek_eof(fd: std::os::fd::RawFd) -> bool {
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
