//! The OS layer: the system calls std lacks, one file per kernel facility, and gRPC core's C API
//! where grpcio has no safe way. The only module of the crate allowed `unsafe` (the crate root
//! denies it everywhere else). Everything here is Linux, with or without pidfds (see
//! `handle`); nothing above it names `libc`.

#![allow(unsafe_code)]

mod epoll;
mod fd;
mod grpc_core;
mod handle;
mod pidfd;
mod procfs;
mod signal;
mod socket;
mod spawn;

pub(crate) use epoll::Epoll;
pub(crate) use fd::{flock, pipe, set_nonblocking};
pub(crate) use grpc_core::{deadline_instant, route_grpc_log};
pub(crate) use handle::{kill_leaderless_group, ProcessHandle};
pub(crate) use pidfd::ChildState;
pub(crate) use procfs::{listening_tcp_inodes, listening_unix_inodes, process_holds_socket};
pub(crate) use signal::{ignore_sigint, process_exists, signal_group, SIGKILL};
pub(crate) use socket::{
    connect_unix_nonblocking, peek_eof, peer_pid, send, short_temp_dir, socket_dir_fits,
    MAX_SOCKET_PATH,
};
pub(crate) use spawn::{spawn, SpawnRequest};
