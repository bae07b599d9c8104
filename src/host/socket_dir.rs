//! The private directory a launched plugin gets for its sockets (`PLUGIN_UNIX_SOCKET_DIR`), and the
//! sweep of directories left by hosts that died.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind, Result};
use crate::sys;

/// A private (0700) directory for the plugin's sockets, removed on drop. This host keeps the
/// directory itself `flock`ed for its life: the proof, readable by any process sharing the temp
/// dir (even one in another pid namespace, where our pid means nothing), that it is in use. (A
/// lock file inside would cost a second inode per plugin; on ext4 allocating inodes was a third
/// of a busy host's CPU when starting 100 plugins.)
#[derive(Debug)]
pub(crate) struct SocketDir {
    path: PathBuf,
    /// Removed already (by [`SocketDir::try_remove`]): nothing left to do on drop.
    removed: bool,
    _lock: std::fs::File,
}

impl SocketDir {
    /// A new socket dir in `parent` (the configured `socket_dir_parent`), else in the temp dir,
    /// else in `/tmp` when the temp dir is too long for the plugin's socket paths.
    pub(crate) fn create(parent: Option<&Path>) -> Result<SocketDir> {
        let parent = match parent {
            Some(parent) => {
                let canonical = canonical(parent)?;
                fits(&canonical).map_err(|e| {
                    Error::new(
                        ErrorKind::Config,
                        format!("socket_dir_parent {:?} is too long: {e}", parent.display()),
                    )
                })?;
                canonical
            }
            None => {
                let temp = canonical(&std::env::temp_dir())?;
                match fits(&temp) {
                    Ok(()) => temp,
                    Err(why) => {
                        let short = canonical(&sys::short_temp_dir())?;
                        log::debug!(
                            "the temp dir {:?} is too long ({why}); using {:?}",
                            temp.display(),
                            short.display()
                        );
                        fits(&short).map_err(|e| {
                            Error::new(
                                ErrorKind::Config,
                                format!(
                                    "no temp dir is short enough for unix socket paths: {:?} \
                                     and {:?} are too long ({e}); set socket_dir_parent",
                                    temp.display(),
                                    short.display()
                                ),
                            )
                        })?;
                        short
                    }
                }
            }
        };
        Self::create_in(&parent)
    }

    fn create_in(parent: &Path) -> Result<SocketDir> {
        use std::os::unix::fs::DirBuilderExt;
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let parent = parent.to_owned();
        if sweep_due(&parent, Instant::now()) {
            remove_stale_socket_dirs(&parent);
        }
        for _ in 0..16 {
            let unique = format!(
                "{}-{}-{:08x}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed),
                crate::runtime::random_u32()
            );
            // Made under a name the sweep ignores, locked, then renamed into place: a sweeping
            // host never sees one of our dirs without its held lock.
            let staging = parent.join(format!(".rpcplugin-new-{unique}"));
            let path = parent.join(format!("rpcplugin-{unique}"));
            match std::fs::DirBuilder::new().mode(0o700).create(&staging) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io(format!("creating {}", staging.display()), e)),
            }
            let locked = std::fs::File::open(&staging).and_then(|lock| {
                sys::flock(&lock, true)?;
                std::fs::rename(&staging, &path)?;
                Ok(lock)
            });
            return match locked {
                Ok(lock) => Ok(SocketDir {
                    path,
                    removed: false,
                    _lock: lock,
                }),
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&staging);
                    Err(Error::io(
                        format!("setting up socket dir {}", path.display()),
                        e,
                    ))
                }
            };
        }
        Err(Error::new(
            ErrorKind::Io,
            format!(
                "could not create a unique socket dir in {}",
                parent.display()
            ),
        ))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the dir and whatever is in it, and releases its lock, while the plugin may still
    /// run: a dir that cannot be removed yet (a file the plugin made there meanwhile: ENOTEMPTY)
    /// is handed back, still locked, for the caller to drop once the plugin is gone. On ext4
    /// mounted with `discard`, whoever drops the dir's last reference waits for its freed block
    /// to be discarded: 80-270 µs here (README, close).
    pub(crate) fn try_remove(mut self) -> std::result::Result<(), SocketDir> {
        match std::fs::remove_dir_all(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                log::debug!("socket dir {} not removed yet: {e}", self.path.display());
                Err(self)
            }
            _ => {
                self.removed = true;
                Ok(())
            }
        }
    }
}

/// The longest name [`SocketDir::create_in`] gives a dir: `rpcplugin-{pid}-{counter}-{8 hex}`.
const LONGEST_DIR_NAME: usize = "rpcplugin---".len() + 10 + 10 + 8;

fn canonical(dir: &Path) -> Result<PathBuf> {
    std::fs::canonicalize(dir)
        .map_err(|e| Error::io(format!("socket dir parent {}", dir.display()), e))
}

/// Whether a socket dir made in `parent` leaves room for the plugin's socket names; else what
/// the limit is.
fn fits(parent: &Path) -> std::result::Result<(), String> {
    let longest_dir = parent.join("x".repeat(LONGEST_DIR_NAME));
    sys::socket_dir_fits(&longest_dir).map_err(|longest| {
        format!(
            "{} bytes, and a plugin socket in a socket dir there would pass the {}-byte limit \
             of a unix socket path; a parent may be at most {} bytes",
            parent.as_os_str().len(),
            sys::MAX_SOCKET_PATH,
            longest.saturating_sub(LONGEST_DIR_NAME + 1)
        )
    })
}

/// How often a host sweeps a parent dir, at most. A sweep reads the whole dir: with 2 900 other
/// entries in `/tmp` (sockets go-plugin's plugins leave there under go-plugin's own host) it
/// cost each start 0.8 ms of CPU, starting 100 plugins 172-191 ms instead of 90-99 (README).
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Whether `parent` is due a sweep at `now`: at the first socket dir this process makes there,
/// then once per [`SWEEP_INTERVAL`]. Dirs go stale only when their host dies, so a host that
/// starts plugins all day still removes them, and one that starts 100 at once sweeps once.
fn sweep_due(parent: &Path, now: Instant) -> bool {
    static SWEPT: Mutex<Vec<(PathBuf, Instant)>> = Mutex::new(Vec::new());
    let mut swept = SWEPT.lock().unwrap_or_else(|p| p.into_inner());
    match swept.iter_mut().find(|(dir, _)| dir == parent) {
        Some((_, last)) if now.saturating_duration_since(*last) < SWEEP_INTERVAL => false,
        Some((_, last)) => {
            *last = now;
            true
        }
        None => {
            swept.push((parent.to_owned(), now));
            true
        }
    }
}

/// Removes socket dirs left by hosts that died without cleaning up (SIGKILL, crash). A dir is
/// stale when nobody holds its lock (the kernel drops a dead host's `flock`) and no process has
/// the host pid in its name. Only dirs owned by this user are touched.
fn remove_stale_socket_dirs(parent: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    let uid = sys::effective_uid();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("rpcplugin-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        // Ours are live (or being removed by us): no lock probe per plugin of a busy host. A
        // namesake from another pid namespace is only left for a later sweep.
        if pid == std::process::id() {
            continue;
        }
        let owned_dir = entry
            .metadata()
            .map(|m| m.is_dir() && m.uid() == uid)
            .unwrap_or(false);
        if !owned_dir {
            continue;
        }
        let lock = std::fs::File::open(entry.path());
        // Getting the lock proves no live host holds it; it is released when `lock` drops.
        let stale =
            lock.is_ok_and(|lock| sys::flock(&lock, false).is_ok()) && !sys::process_exists(pid);
        if stale {
            log::debug!("removing stale socket dir {}", entry.path().display());
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                log::warn!("removing socket dir {}: {e}", self.path.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parent_is_swept_first_then_once_a_minute() {
        let (a, b) = (Path::new("/sweep-test/a"), Path::new("/sweep-test/b"));
        let t = Instant::now();
        assert!(sweep_due(a, t), "the first dir made in a parent sweeps it");
        assert!(!sweep_due(a, t + Duration::from_secs(1)));
        assert!(
            sweep_due(b, t + Duration::from_secs(1)),
            "each parent is swept"
        );
        assert!(!sweep_due(a, t + SWEEP_INTERVAL - Duration::from_millis(1)));
        assert!(sweep_due(a, t + SWEEP_INTERVAL));
        assert!(!sweep_due(a, t + SWEEP_INTERVAL + Duration::from_secs(1)));
    }
}
