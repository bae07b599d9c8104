//! What libproc says (macOS has no `/proc`): a process's state, start time and group, the
//! members of a group.

use std::io;

/// `proc_listpids` type for the members of one process group (`PROC_PGRP_ONLY` in
/// `<sys/proc_info.h>`; the libc crate does not declare it).
const PROC_PGRP_ONLY: u32 = 2;

/// A process as libproc shows it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProcInfo {
    pub zombie: bool,
    /// Its start time (microseconds since the epoch), which tells it from a later process
    /// given the same pid.
    pub started: u64,
    pub pgid: u32,
}

impl ProcInfo {
    /// Not a zombie: it still runs, so its pid is its own.
    pub fn running(&self) -> bool {
        !self.zombie
    }
}

/// The state, start time and group of `pid`; None when there is no such process (or it is not
/// ours to inspect).
pub(crate) fn process_info(pid: u32) -> Option<ProcInfo> {
    // SAFETY: proc_bsdinfo is plain data; proc_pidinfo writes at most its size into it.
    let mut info: libc::proc_bsdinfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::proc_bsdinfo>() as libc::c_int;
    // SAFETY: `info` is valid for `size` bytes for the call.
    let n = unsafe {
        libc::proc_pidinfo(
            pid as libc::c_int,
            libc::PROC_PIDTBSDINFO,
            0,
            (&mut info as *mut libc::proc_bsdinfo).cast(),
            size,
        )
    };
    (n == size).then(|| ProcInfo {
        zombie: info.pbi_status == libc::SZOMB,
        started: info.pbi_start_tvsec * 1_000_000 + info.pbi_start_tvusec,
        pgid: info.pbi_pgid,
    })
}

/// The processes in group `pgid` now (each may leave or exit at any time).
pub(crate) fn group_members(pgid: u32) -> Vec<u32> {
    // The group may grow between the two calls: room for a few more.
    // SAFETY: a null buffer asks for the size needed.
    let needed = unsafe { libc::proc_listpids(PROC_PGRP_ONLY, pgid, std::ptr::null_mut(), 0) };
    if needed <= 0 {
        return Vec::new();
    }
    let mut pids =
        vec![0 as libc::pid_t; needed as usize / std::mem::size_of::<libc::pid_t>() + 16];
    let size = (pids.len() * std::mem::size_of::<libc::pid_t>()) as libc::c_int;
    // SAFETY: `pids` is valid for `size` bytes for the call.
    let n = unsafe { libc::proc_listpids(PROC_PGRP_ONLY, pgid, pids.as_mut_ptr().cast(), size) };
    if n <= 0 {
        return Vec::new();
    }
    pids.truncate(n as usize / std::mem::size_of::<libc::pid_t>());
    pids.into_iter()
        .filter(|&p| p > 0)
        .map(|p| p as u32)
        .collect()
}

fn no_proc(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        format!(
            "{what} is read from /proc on Linux and not implemented on macOS yet, so a \
             reattached process cannot be proven to be the plugin; attach with owned = false"
        ),
    )
}

/// Which sockets listen at a unix path: not available on macOS yet (an `Unsupported` error).
pub fn listening_unix_inodes(_path: &std::path::Path) -> io::Result<Vec<u64>> {
    Err(no_proc("which socket listens at a path"))
}

/// Which sockets listen at a tcp address: not available on macOS yet.
pub fn listening_tcp_inodes(_addr: &std::net::SocketAddr) -> io::Result<Vec<u64>> {
    Err(no_proc("which socket listens at an address"))
}

/// Whether a process holds one of some sockets: not available on macOS yet.
pub fn process_holds_socket(_pid: u32, _inodes: &[u64]) -> io::Result<bool> {
    Err(no_proc("which process holds a socket"))
}
