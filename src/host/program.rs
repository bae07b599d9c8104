//! The plugin's executable: found as `execvp` would find it, explained when it cannot run, and
//! checked against the caller's SHA-256.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, Result};

/// Bytes hashed per read when checking the executable's checksum.
const HASH_CHUNK: usize = 64 * 1024;

/// Why `program` cannot run, when its file says so: a directory, or a file without execute
/// permission. Empty otherwise.
pub(super) fn explain_spawn_failure(program: &Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    if program.components().count() < 2 {
        return String::new();
    }
    match std::fs::metadata(program) {
        Ok(m) if m.is_dir() => " (it is a directory, expected an executable file)".to_owned(),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => format!(
            " (the file is not executable: mode {:o})",
            m.permissions().mode() & 0o7777
        ),
        _ => String::new(),
    }
}

/// Checks the SHA-256 of the executable `program` resolves to (through `PATH` when it has no
/// slash) against `expected_hex`.
pub(crate) fn verify_checksum(program: &OsString, expected_hex: &str) -> Result<()> {
    let path = resolve_program(program).ok_or_else(|| {
        Error::new(
            ErrorKind::Spawn,
            format!(
                "failed to start plugin {:?}: not found (looked in PATH)",
                Path::new(program).display()
            ),
        )
    })?;
    let expected = expected_hex.trim().to_ascii_lowercase();
    if expected.len() != 64 || !expected.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::new(
            ErrorKind::Config,
            format!("sha256_checksum: expected 64 hex digits, got {expected_hex:?}"),
        ));
    }
    let mut file = std::fs::File::open(&path)
        .map_err(|e| Error::io(format!("error verifying checksum of {}", path.display()), e))?;
    let mut hasher = openssl::sha::Sha256::new();
    let mut buf = vec![0u8; HASH_CHUNK];
    loop {
        let n = std::io::Read::read(&mut file, &mut buf)
            .map_err(|e| Error::io(format!("error verifying checksum of {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let actual: String = hasher.finish().iter().map(|b| format!("{b:02x}")).collect();
    if !openssl::memcmp::eq(actual.as_bytes(), expected.as_bytes()) {
        return Err(Error::new(
            ErrorKind::Checksum,
            format!(
                "checksums did not match for plugin {}: expected sha256 {expected}, got {actual}",
                path.display()
            ),
        ));
    }
    Ok(())
}

fn resolve_program(program: &OsString) -> Option<PathBuf> {
    resolve_in(program, std::env::var_os("PATH").as_deref()).filter(|p| p.is_file())
}

/// The executable `program` names: itself when it has a slash, else, as `execvp` searches,
/// the first file in the `PATH` list `search` that someone may execute (an empty entry is the
/// current directory).
pub(super) fn resolve_in(
    program: &std::ffi::OsStr,
    search: Option<&std::ffi::OsStr>,
) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = Path::new(program);
    if path.components().count() > 1 || program.to_string_lossy().contains('/') {
        return Some(path.to_owned());
    }
    let executable = |candidate: &Path| {
        std::fs::metadata(candidate)
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    search
        .map(|paths| std::env::split_paths(paths).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| {
            // Relative entries are taken from the host's directory, resolved now: the plugin
            // may run in another working directory.
            let dir = if dir.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                dir
            };
            std::path::absolute(dir.join(path)).unwrap_or_else(|_| dir.join(path))
        })
        .find(|candidate| executable(candidate))
}
