//! The OS layer: the system calls std lacks live in the `rpcplugin-os` crate (`os/`: Linux, and
//! macOS compiled in CI), re-exported here; gRPC core's C API, where grpcio has no safe way, is
//! the one part in this crate. The only module of the crate allowed `unsafe` (the crate root
//! denies it everywhere else); nothing above it names `libc`.

#![allow(unsafe_code)]

mod grpc_core;

pub(crate) use grpc_core::{deadline_instant, route_grpc_log};
pub(crate) use rpcplugin_os::{
    connect_unix_nonblocking, effective_uid, flock, ignore_sigint, kill_leaderless_group,
    listening_tcp_inodes, listening_unix_inodes, peek_eof, peer_pid, pipe, process_exists,
    process_holds_socket, send, set_nonblocking, short_temp_dir, signal_group, socket_dir_fits,
    spawn, ChildState, Poller, PrivateListener, ProcessHandle, SpawnRequest, MAX_SOCKET_PATH,
    SIGKILL,
};
