//! A kqueue: what the I/O thread waits on (the macOS counterpart of the Linux epoll set).

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{OwnedFd, RawFd};

use rustix::event::kqueue::{self, Event, EventFilter, EventFlags};

/// A kqueue whose events carry a `u64` token.
pub struct Poller(OwnedFd);

/// A new kqueue, close-on-exec.
pub(super) fn new_kqueue() -> io::Result<OwnedFd> {
    let kq = kqueue::kqueue()?;
    crate::fd::set_cloexec(&kq)?;
    Ok(kq)
}

/// Applies one change to the kqueue `kq`.
pub(super) fn apply(kq: &OwnedFd, change: Event) -> io::Result<()> {
    let mut none: [MaybeUninit<Event>; 0] = [];
    // SAFETY: every fd a change names is open for the call, and is deleted from the kqueue
    // (`Poller::delete`) before its owner closes it.
    unsafe { kqueue::kevent_timespec(kq, &[change], &mut none, None)? };
    Ok(())
}

/// Waits for events on `kq`, at most `timeout` (None: no limit), into `events`: how many came.
pub(super) fn wait_events(
    kq: &OwnedFd,
    events: &mut [MaybeUninit<Event>],
    timeout: Option<&rustix::event::Timespec>,
) -> io::Result<usize> {
    loop {
        // SAFETY: no changes; the events are written into `events`.
        match unsafe { kqueue::kevent_timespec(kq, &[], &mut *events, timeout) } {
            Ok((ready, _)) => return Ok(ready.len()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

fn token_data(token: u64) -> *mut std::ffi::c_void {
    token as usize as *mut std::ffi::c_void
}

impl Poller {
    pub fn new() -> io::Result<Poller> {
        new_kqueue().map(Poller)
    }

    /// Watches `fd` for input (and end of file), reported with `token`.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let read = Event::new(EventFilter::Read(fd), EventFlags::ADD, token_data(token));
        apply(&self.0, read)
    }

    /// Watches `fd` edge-triggered (`EV_CLEAR`) for input and end of file, and for output too if
    /// `output`, reported with `token`: the owner must read (and write) until `WouldBlock`, or
    /// run again by itself, to see the next event. `modify` changes the interest of a watched
    /// fd.
    pub fn add_edge(&self, fd: RawFd, token: u64, output: bool, modify: bool) -> io::Result<()> {
        let flags = EventFlags::ADD | EventFlags::CLEAR;
        apply(
            &self.0,
            Event::new(EventFilter::Read(fd), flags, token_data(token)),
        )?;
        if output {
            apply(
                &self.0,
                Event::new(EventFilter::Write(fd), flags, token_data(token)),
            )?;
        } else if modify {
            // No longer interested in output; it may not have been watched (ENOENT).
            let delete = Event::new(EventFilter::Write(fd), EventFlags::DELETE, token_data(0));
            let _ = apply(&self.0, delete);
        }
        Ok(())
    }

    /// Stops watching `fd` (which must still be open).
    pub fn delete(&self, fd: RawFd) {
        // One change per call: a filter that was never added fails alone (ENOENT).
        for filter in [EventFilter::Read(fd), EventFilter::Write(fd)] {
            let _ = apply(
                &self.0,
                Event::new(filter, EventFlags::DELETE, token_data(0)),
            );
        }
    }

    /// Waits for events (no timeout) and appends their tokens to `tokens`, each once (an fd
    /// ready for input and output gives two events).
    pub fn wait(&self, tokens: &mut Vec<u64>) -> io::Result<()> {
        const MAX: usize = 256;
        let mut events = [const { MaybeUninit::<Event>::uninit() }; MAX];
        let n = wait_events(&self.0, &mut events, None)?;
        let first = tokens.len();
        for event in &events[..n] {
            // SAFETY: the first `n` entries were written by kevent.
            let token = unsafe { event.assume_init_ref() }.udata() as usize as u64;
            if !tokens[first..].contains(&token) {
                tokens.push(token);
            }
        }
        Ok(())
    }
}
