//! An epoll set: what the I/O thread waits on.

use std::io;

/// A level-triggered epoll set whose events carry a `u64` token.
pub struct Poller(std::os::fd::OwnedFd);

impl Poller {
    pub fn new() -> io::Result<Poller> {
        use std::os::fd::FromRawFd;
        // SAFETY: epoll_create1 takes flags and returns a new fd or -1.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just gave us this fd; nobody else owns it.
        Ok(Poller(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }))
    }

    /// Watches `fd` for input (and hang-up), reported with `token`.
    pub fn add(&self, fd: std::os::fd::RawFd, token: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
            u64: token,
        };
        // SAFETY: both fds are open; `event` lives for the call.
        let rc =
            unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Watches `fd` edge-triggered for input and hang-up, and for output too if `output`,
    /// reported with `token`: the owner must read (and write) until `WouldBlock`, or run again by
    /// itself, to see the next event. `modify` changes the interest of a watched fd.
    pub fn add_edge(
        &self,
        fd: std::os::fd::RawFd,
        token: u64,
        output: bool,
        modify: bool,
    ) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let mut events = libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET;
        if output {
            events |= libc::EPOLLOUT;
        }
        let mut event = libc::epoll_event {
            events: events as u32,
            u64: token,
        };
        let op = if modify {
            libc::EPOLL_CTL_MOD
        } else {
            libc::EPOLL_CTL_ADD
        };
        // SAFETY: both fds are open; `event` lives for the call.
        let rc = unsafe { libc::epoll_ctl(self.0.as_raw_fd(), op, fd, &mut event) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Stops watching `fd` (which must still be open).
    pub fn delete(&self, fd: std::os::fd::RawFd) {
        use std::os::fd::AsRawFd;
        let mut event = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: as in `add`; a non-null event keeps old kernels happy.
        unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, &mut event) };
    }

    /// Waits for events (no timeout) and appends their tokens to `tokens`.
    pub fn wait(&self, tokens: &mut Vec<u64>) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        const MAX: usize = 256;
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; MAX];
        loop {
            // SAFETY: `events` has room for MAX entries for the duration of the call.
            let n = unsafe {
                libc::epoll_wait(self.0.as_raw_fd(), events.as_mut_ptr(), MAX as i32, -1)
            };
            if n >= 0 {
                tokens.extend(events[..n as usize].iter().map(|e| e.u64));
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}
