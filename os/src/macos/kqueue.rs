//! A kqueue: what the I/O thread waits on (the macOS counterpart of the Linux epoll set).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A kqueue whose events carry a `u64` token.
pub struct Poller(OwnedFd);

/// One change or event of a kqueue.
pub(super) fn kevent(
    ident: usize,
    filter: i16,
    flags: u16,
    fflags: u32,
    token: u64,
) -> libc::kevent {
    libc::kevent {
        ident,
        filter,
        flags,
        fflags,
        data: 0,
        udata: token as usize as *mut libc::c_void,
    }
}

/// A new kqueue, close-on-exec.
pub(super) fn new_kqueue() -> io::Result<OwnedFd> {
    // SAFETY: kqueue takes no arguments and returns a new fd or -1.
    let fd = unsafe { libc::kqueue() };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this fd; nobody else owns it.
    let kq = unsafe { OwnedFd::from_raw_fd(fd) };
    crate::fd::set_cloexec(kq.as_raw_fd())?;
    Ok(kq)
}

/// Applies `changes` to the kqueue `kq`.
pub(super) fn apply(kq: RawFd, changes: &[libc::kevent]) -> io::Result<()> {
    // SAFETY: `changes` is valid for its length; no event list is asked for.
    let rc = unsafe {
        libc::kevent(
            kq,
            changes.as_ptr(),
            changes.len() as libc::c_int,
            std::ptr::null_mut(),
            0,
            std::ptr::null(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Poller {
    pub fn new() -> io::Result<Poller> {
        new_kqueue().map(Poller)
    }

    /// Watches `fd` for input (and end of file), reported with `token`.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let read = kevent(fd as usize, libc::EVFILT_READ, libc::EV_ADD, 0, token);
        apply(self.0.as_raw_fd(), &[read])
    }

    /// Watches `fd` edge-triggered (`EV_CLEAR`) for input and end of file, and for output too if
    /// `output`, reported with `token`: the owner must read (and write) until `WouldBlock`, or
    /// run again by itself, to see the next event. `modify` changes the interest of a watched
    /// fd.
    pub fn add_edge(&self, fd: RawFd, token: u64, output: bool, modify: bool) -> io::Result<()> {
        let kq = self.0.as_raw_fd();
        let flags = libc::EV_ADD | libc::EV_CLEAR;
        apply(
            kq,
            &[kevent(fd as usize, libc::EVFILT_READ, flags, 0, token)],
        )?;
        if output {
            apply(
                kq,
                &[kevent(fd as usize, libc::EVFILT_WRITE, flags, 0, token)],
            )?;
        } else if modify {
            // No longer interested in output; it may not have been watched (ENOENT).
            let _ = apply(
                kq,
                &[kevent(
                    fd as usize,
                    libc::EVFILT_WRITE,
                    libc::EV_DELETE,
                    0,
                    0,
                )],
            );
        }
        Ok(())
    }

    /// Stops watching `fd` (which must still be open).
    pub fn delete(&self, fd: RawFd) {
        let kq = self.0.as_raw_fd();
        // One change per call: a filter that was never added fails alone (ENOENT).
        for filter in [libc::EVFILT_READ, libc::EVFILT_WRITE] {
            let _ = apply(kq, &[kevent(fd as usize, filter, libc::EV_DELETE, 0, 0)]);
        }
    }

    /// Waits for events (no timeout) and appends their tokens to `tokens`, each once (an fd
    /// ready for input and output gives two events).
    pub fn wait(&self, tokens: &mut Vec<u64>) -> io::Result<()> {
        const MAX: usize = 256;
        let mut events = [kevent(0, 0, 0, 0, 0); MAX];
        loop {
            // SAFETY: `events` has room for MAX entries for the duration of the call.
            let n = unsafe {
                libc::kevent(
                    self.0.as_raw_fd(),
                    std::ptr::null(),
                    0,
                    events.as_mut_ptr(),
                    MAX as libc::c_int,
                    std::ptr::null(),
                )
            };
            if n >= 0 {
                let first = tokens.len();
                for event in &events[..n as usize] {
                    let token = event.udata as usize as u64;
                    if !tokens[first..].contains(&token) {
                        tokens.push(token);
                    }
                }
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}
