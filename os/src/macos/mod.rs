//! macOS: `posix_spawn` for the spawn, kqueue for exits (`EVFILT_PROC`) and for the I/O thread,
//! libproc where Linux reads `/proc`. Compiled in CI for `x86_64-apple-darwin` and
//! `aarch64-apple-darwin`; no macOS machine has run it yet.

mod handle;
mod kqueue;
mod libproc;
mod spawn;

pub use handle::{kill_leaderless_group, ProcessHandle};
pub use kqueue::Poller;
pub use libproc::{listening_tcp_inodes, listening_unix_inodes, process_holds_socket};
pub use spawn::spawn;
