//! The OS layer of [rpcplugin](https://crates.io/crates/rpcplugin): the system calls std lacks,
//! one file per facility, for each platform the library runs on. It has no C dependency, so it
//! builds (and is type-checked in CI) for platforms where gRPC core cannot be cross-compiled.
//!
//! An internal crate: its API serves `rpcplugin` and may change with any release.
//!
//! * `linux/`: `clone` (with `CLONE_PIDFD` where it works), pidfds with a fallback by pid,
//!   epoll, `/proc`.
//! * `macos/`: `posix_spawn`, kqueue (`EVFILT_PROC` for exits, `EVFILT_READ`/`EVFILT_WRITE` for
//!   the I/O thread), libproc. Compiled in CI; not run yet (no macOS machine has run the suite).
//! * Shared: pipes and fds, signals, unix sockets, private listeners (abstract sockets on
//!   Linux, socket files on macOS).

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
compile_error!("rpcplugin-os supports Linux and macOS");

mod child;
mod fd;
mod private;
mod signal;
mod socket;

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
use linux as platform;
#[cfg(target_os = "macos")]
mod macos;
#[cfg(target_os = "macos")]
use macos as platform;

pub use child::{ChildState, SpawnRequest};
pub use fd::{flock, pipe, set_nonblocking};
pub use platform::{
    kill_leaderless_group, listening_tcp_inodes, listening_unix_inodes, process_holds_socket,
    spawn, Poller, ProcessHandle,
};
pub use private::PrivateListener;
pub use signal::{ignore_sigint, process_exists, signal_group, SIGKILL};
pub use socket::{
    connect_unix_nonblocking, peek_eof, peer_pid, send, short_temp_dir, socket_dir_fits,
    LONGEST_SOCKET_NAME, MAX_SOCKET_PATH,
};

/// This process's effective uid: the owner a directory must have to be ours.
pub fn effective_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}
