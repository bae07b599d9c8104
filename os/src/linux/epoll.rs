//! An epoll set: what the I/O thread waits on.

use std::io;
use std::os::fd::{OwnedFd, RawFd};

use rustix::event::epoll::{self, EventData, EventFlags};

use crate::fd::borrow;

/// An epoll set whose events carry a `u64` token.
pub struct Poller(OwnedFd);

impl Poller {
    pub fn new() -> io::Result<Poller> {
        Ok(Poller(epoll::create(epoll::CreateFlags::CLOEXEC)?))
    }

    /// Watches `fd` (level-triggered) for input and hang-up, reported with `token`.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let flags = EventFlags::IN | EventFlags::RDHUP;
        epoll::add(&self.0, borrow(fd), EventData::new_u64(token), flags)?;
        Ok(())
    }

    /// Watches `fd` edge-triggered for input and hang-up, and for output too if `output`,
    /// reported with `token`: the owner must read (and write) until `WouldBlock`, or run again by
    /// itself, to see the next event. `modify` changes the interest of a watched fd.
    pub fn add_edge(&self, fd: RawFd, token: u64, output: bool, modify: bool) -> io::Result<()> {
        let mut flags = EventFlags::IN | EventFlags::RDHUP | EventFlags::ET;
        if output {
            flags |= EventFlags::OUT;
        }
        let data = EventData::new_u64(token);
        if modify {
            epoll::modify(&self.0, borrow(fd), data, flags)?;
        } else {
            epoll::add(&self.0, borrow(fd), data, flags)?;
        }
        Ok(())
    }

    /// Stops watching `fd` (which must still be open).
    pub fn delete(&self, fd: RawFd) {
        let _ = epoll::delete(&self.0, borrow(fd));
    }

    /// Waits for events (no timeout) and appends their tokens to `tokens`.
    pub fn wait(&self, tokens: &mut Vec<u64>) -> io::Result<()> {
        const MAX: usize = 256;
        let mut events = [std::mem::MaybeUninit::<epoll::Event>::uninit(); MAX];
        loop {
            match epoll::wait(&self.0, &mut events, None) {
                Ok((ready, _)) => {
                    tokens.extend(ready.iter().map(|e| e.data.u64()));
                    return Ok(());
                }
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}
