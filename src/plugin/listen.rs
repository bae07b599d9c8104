//! The plugin's listeners: the socket it announces (unix in `PLUGIN_UNIX_SOCKET_DIR`, or tcp in
//! `PLUGIN_MIN_PORT..=PLUGIN_MAX_PORT`), opened by gRPC or, with multiplexing, by this side, and
//! the gRPC server's private socket under multiplexing.

use std::path::PathBuf;

use grpcio::{Server, ServerCredentials};

use crate::error::{Error, ErrorKind, Result};
use crate::runtime::mux::ListenSource;
use crate::runtime::random_u32;
use crate::wire::Address;

/// Which kind of listener the plugin opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// A unix socket in `PLUGIN_UNIX_SOCKET_DIR` (or the temp dir): go-plugin's choice on unix.
    Unix,
    /// `127.0.0.1` on the first free port in `PLUGIN_MIN_PORT..=PLUGIN_MAX_PORT`.
    Tcp,
}

/// A listener of the plugin: its address, and its socket file, removed on drop.
pub(super) struct Listener {
    pub address: Address,
    socket: Option<PathBuf>,
}

impl Listener {
    /// Removes the socket file now (nobody new can connect; connections made stay open), so a
    /// plugin killed while it stops leaves no file behind.
    pub fn unlink(&mut self) {
        if let Some(path) = self.socket.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.unlink();
    }
}

pub(super) fn listen(
    server: &mut Server,
    network: Network,
    dir: &std::path::Path,
    creds: impl Fn() -> ServerCredentials,
) -> Result<Listener> {
    match network {
        Network::Unix => {
            let path = dir.join(format!("plugin{}", random_u32()));
            let _ = std::fs::remove_file(&path);
            server
                .add_listening_port(format!("unix:{}", path.display()), creds())
                .map_err(|e| {
                    Error::new(
                        ErrorKind::Transport,
                        format!("couldn't bind plugin unix socket {}: {e}", path.display()),
                    )
                })?;
            Ok(Listener {
                address: Address::Unix(path.clone()),
                socket: Some(path),
            })
        }
        Network::Tcp => {
            let (min, max) = port_range()?;
            for p in min..=max {
                if server
                    .add_listening_port(format!("127.0.0.1:{p}"), creds())
                    .is_ok()
                {
                    return Ok(Listener {
                        address: Address::Tcp(([127, 0, 0, 1], p).into()),
                        socket: None,
                    });
                }
            }
            Err(no_free_port(min, max))
        }
    }
}

/// The gRPC server's private socket under multiplexing: only the session's bridges connect to it.
pub(super) fn listen_private(
    server: &mut Server,
    path: &std::path::Path,
    creds: ServerCredentials,
) -> Result<Listener> {
    let _ = std::fs::remove_file(path);
    server
        .add_listening_port(format!("unix:{}", path.display()), creds)
        .map_err(|e| {
            Error::new(
                ErrorKind::Transport,
                format!(
                    "couldn't bind the plugin's gRPC socket {}: {e}",
                    path.display()
                ),
            )
        })?;
    Ok(Listener {
        address: Address::Unix(path.to_owned()),
        socket: Some(path.to_owned()),
    })
}

/// The announced listener under multiplexing, opened by this side (not by gRPC): the host's one
/// connection is accepted from it.
pub(super) fn listen_public(
    network: Network,
    dir: &std::path::Path,
) -> Result<(ListenSource, Listener)> {
    match network {
        Network::Unix => {
            let path = dir.join(format!("plugin{}", random_u32()));
            let _ = std::fs::remove_file(&path);
            let listener = std::os::unix::net::UnixListener::bind(&path).map_err(|e| {
                Error::io(
                    format!("couldn't bind plugin unix socket {}", path.display()),
                    e,
                )
            })?;
            Ok((
                ListenSource::Unix(listener),
                Listener {
                    address: Address::Unix(path.clone()),
                    socket: Some(path),
                },
            ))
        }
        Network::Tcp => {
            let (min, max) = port_range()?;
            for p in min..=max {
                if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", p)) {
                    return Ok((
                        ListenSource::Tcp(listener),
                        Listener {
                            address: Address::Tcp(([127, 0, 0, 1], p).into()),
                            socket: None,
                        },
                    ));
                }
            }
            Err(no_free_port(min, max))
        }
    }
}

/// `PLUGIN_MIN_PORT..=PLUGIN_MAX_PORT` (go-plugin's defaults: 10000..=25000).
fn port_range() -> Result<(u16, u16)> {
    let port = |name: &str, default: u16| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse::<u16>().ok())
            .unwrap_or(default)
    };
    let (min, max) = (
        port("PLUGIN_MIN_PORT", 10000),
        port("PLUGIN_MAX_PORT", 25000),
    );
    if min > max {
        return Err(Error::new(
            ErrorKind::Config,
            format!("PLUGIN_MIN_PORT {min} is greater than PLUGIN_MAX_PORT {max}"),
        ));
    }
    Ok((min, max))
}

fn no_free_port(min: u16, max: u16) -> Error {
    Error::new(
        ErrorKind::Transport,
        format!("couldn't bind plugin tcp listener: no free port in {min}..={max}"),
    )
}
