//! What every platform's spawn takes, and what a look at a child says.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::process::ExitStatus;

/// Everything a new process needs, prepared in the parent (on Linux the child may only make
/// system calls between clone and exec).
pub struct SpawnRequest {
    /// The executable, already looked up.
    pub path: std::ffi::CString,
    pub argv: Vec<std::ffi::CString>,
    /// `KEY=VALUE` entries: the child's whole environment.
    pub envp: Vec<std::ffi::CString>,
    pub cwd: Option<std::ffi::CString>,
    /// Write ends for the child's stdout and stderr (stdin is inherited), owned by the request
    /// so a request that waits in a queue never refers to fd numbers reused meanwhile. Both are
    /// above 2 (see [`pipe`](crate::pipe)), so installing one as 1 or 2 cannot overwrite the
    /// other.
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// SIGKILL the child when the calling thread dies (`PR_SET_PDEATHSIG`; Linux only: macOS
    /// has no such signal, see the README's platform notes).
    pub kill_with_parent: bool,
}

impl SpawnRequest {
    /// The child's stdout and stderr: (our fd, the child's fd number).
    pub(crate) fn fds(&self) -> [(RawFd, i32); 2] {
        [(self.stdout.as_raw_fd(), 1), (self.stderr.as_raw_fd(), 2)]
    }
}

/// What a look at our child says.
pub enum ChildState {
    /// Running, or exited and not reaped yet (the status is known): its pid and process group
    /// id are still reserved for it.
    Unreaped(Option<ExitStatus>),
    /// Reaped by someone else (a `waitpid(-1)` elsewhere in the program, or `SIGCHLD` set to
    /// `SIG_IGN`), or not our child: its ids may already belong to another process.
    Gone,
}
