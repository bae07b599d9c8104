//! Private unix listeners: sockets that only this process connects to (the multiplexer's
//! bridges, which refuse any other peer). On Linux they are abstract sockets: no file, since
//! binding a file cost 280 µs per broker dial. macOS has no abstract sockets, so there they are
//! socket files in `/tmp`, removed when the listener is dropped.

use std::io;
use std::os::unix::net::{UnixListener, UnixStream};

/// A bound private listener, named by the caller's unique `name`.
pub struct PrivateListener {
    listener: UnixListener,
    #[cfg(target_os = "macos")]
    path: std::path::PathBuf,
}

impl PrivateListener {
    /// Binds the private socket `name` (unique to this process: the caller picks it).
    pub fn bind(name: &str) -> io::Result<PrivateListener> {
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            Ok(PrivateListener {
                listener: UnixListener::bind_addr(&addr)?,
            })
        }
        #[cfg(target_os = "macos")]
        {
            let path = file_of(name);
            let _ = std::fs::remove_file(&path);
            Ok(PrivateListener {
                listener: UnixListener::bind(&path)?,
                path,
            })
        }
    }

    /// gRPC core's target for the private socket `name`.
    pub fn grpc_target(name: &str) -> String {
        #[cfg(target_os = "linux")]
        return format!("unix-abstract:{name}");
        #[cfg(target_os = "macos")]
        return format!("unix:{}", file_of(name).display());
    }

    /// Connects to the private socket `name`.
    pub fn connect(name: &str) -> io::Result<UnixStream> {
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            UnixStream::connect_addr(&addr)
        }
        #[cfg(target_os = "macos")]
        UnixStream::connect(file_of(name))
    }
}

/// The socket file of the private socket `name` on macOS.
#[cfg(target_os = "macos")]
fn file_of(name: &str) -> std::path::PathBuf {
    crate::short_temp_dir().join(name)
}

impl std::ops::Deref for PrivateListener {
    type Target = UnixListener;

    fn deref(&self) -> &UnixListener {
        &self.listener
    }
}

#[cfg(target_os = "macos")]
impl Drop for PrivateListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::PrivateListener;

    #[test]
    fn a_private_listener_is_reached_by_its_name_only() {
        let name = format!("rpcplugin-os-test-{}", std::process::id());
        let listener = PrivateListener::bind(&name).unwrap();
        let mut ours = PrivateListener::connect(&name).unwrap();
        let (mut theirs, _) = listener.accept().unwrap();
        ours.write_all(b"hi").unwrap();
        let mut got = [0u8; 2];
        theirs.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi");
        assert!(PrivateListener::grpc_target(&name).ends_with(&name));
        drop(listener);
        assert!(
            PrivateListener::connect(&name).is_err(),
            "gone with its listener"
        );
    }
}
