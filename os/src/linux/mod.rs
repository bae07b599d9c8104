//! Linux: `clone` for the spawn, pidfds where the kernel and container allow them (with a
//! fallback by pid where not), epoll, and `/proc`.

mod epoll;
mod handle;
mod pidfd;
mod procfs;
mod spawn;

pub use epoll::Poller;
pub use handle::{kill_leaderless_group, ProcessHandle};
pub use procfs::{listening_tcp_inodes, listening_unix_inodes, process_holds_socket};
pub use spawn::spawn;
