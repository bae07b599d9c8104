//! What `/proc` says: listening sockets, the fds of a process, the members of a process group.

use std::io;

/// A process as `/proc/PID/stat` shows it: its state letter and its start time (clock ticks
/// after boot), which tells it from a later process given the same pid.
#[derive(Debug, Clone, Copy)]
pub struct ProcStart {
    pub state: char,
    pub ticks: u64,
}

impl ProcStart {
    /// Not a zombie (or dead): it still runs, so its pid is its own. The state is the main
    /// thread's: a process whose main thread ended while others run on shows `Z` too, and is
    /// then taken for exited (not signalled; its exit reported early). Plugins do not do that.
    pub fn running(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// The state and start time of `pid`; None when there is no such process.
pub fn process_start(pid: u32) -> io::Result<Option<ProcStart>> {
    let stat = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(parse_stat(&stat))
}

/// Fields 3 (state) and 22 (starttime) of a stat line; the name (field 2) may hold anything, so
/// the fields are counted from its closing parenthesis.
fn parse_stat(stat: &str) -> Option<ProcStart> {
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ticks = fields.nth(18)?.parse().ok()?;
    Some(ProcStart { state, ticks })
}

/// Inodes of the unix sockets listening at `path`, from `/proc/net/unix`.
pub fn listening_unix_inodes(path: &std::path::Path) -> io::Result<Vec<u64>> {
    // Num RefCount Protocol Flags Type St Inode Path; flag 0x10000 is __SO_ACCEPTCON.
    let table = std::fs::read_to_string("/proc/net/unix")?;
    let want = path.to_string_lossy();
    let mut inodes = Vec::new();
    for line in table.lines().skip(1) {
        let Some((flags, inode, socket_path)) = unix_socket_line(line) else {
            continue;
        };
        if socket_path == want && flags == "00010000" {
            if let Ok(inode) = inode.parse() {
                inodes.push(inode);
            }
        }
    }
    Ok(inodes)
}

/// Inodes of the tcp sockets listening at `addr`, from `/proc/net/tcp` or `/proc/net/tcp6`.
pub fn listening_tcp_inodes(addr: &std::net::SocketAddr) -> io::Result<Vec<u64>> {
    let (file, local) = match addr {
        std::net::SocketAddr::V4(a) => (
            "/proc/net/tcp",
            format!(
                "{:08X}:{:04X}",
                u32::from_ne_bytes(a.ip().octets()),
                a.port()
            ),
        ),
        std::net::SocketAddr::V6(a) => {
            let words: String = a
                .ip()
                .octets()
                .chunks(4)
                .map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
                .collect();
            ("/proc/net/tcp6", format!("{words}:{:04X}", a.port()))
        }
    };
    // sl local_address rem_address st ... inode (10th column); st 0A is LISTEN.
    let table = std::fs::read_to_string(file)?;
    let mut inodes = Vec::new();
    for line in table.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() >= 10 && cols[1] == local && cols[3] == "0A" {
            if let Ok(inode) = cols[9].parse() {
                inodes.push(inode);
            }
        }
    }
    Ok(inodes)
}

/// The flags, inode and path of a `/proc/net/unix` line (`Num RefCount Protocol Flags Type St
/// Inode Path`); the path is the rest of the line and may hold spaces.
fn unix_socket_line(line: &str) -> Option<(&str, &str, &str)> {
    let mut rest = line;
    let mut fields = [""; 7];
    for field in &mut fields {
        rest = rest.trim_start();
        let end = rest.find(char::is_whitespace)?;
        *field = &rest[..end];
        rest = &rest[end..];
    }
    Some((fields[3], fields[6], rest.trim()))
}

/// Whether process `pid` holds one of the socket `inodes` among its open files.
pub fn process_holds_socket(pid: u32, inodes: &[u64]) -> io::Result<bool> {
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let Ok(target) = std::fs::read_link(entry?.path()) else {
            continue;
        };
        let target = target.to_string_lossy();
        let inode = target
            .strip_prefix("socket:[")
            .and_then(|t| t.strip_suffix(']'))
            .and_then(|n| n.parse::<u64>().ok());
        if inode.is_some_and(|i| inodes.contains(&i)) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The process group of `pid`, from `/proc/PID/stat` (None if it is gone).
pub fn group_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(2)?
        .parse()
        .ok()
}

/// The processes in group `pgid` now (each may leave or exit at any time).
pub fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| group_of(pid) == Some(pgid))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_name() {
        let line = "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                    987654 1000 10 18446744073709551615";
        let start = parse_stat(line).unwrap();
        assert_eq!(start.state, 'S');
        assert_eq!(start.ticks, 987654);
        assert!(start.running());
        let zombie = parse_stat(&line.replace(" S ", " Z ")).unwrap();
        assert!(!zombie.running());
    }

    #[test]
    fn this_process_has_a_start_time_that_stays() {
        let me = std::process::id();
        let first = process_start(me).unwrap().unwrap();
        assert!(first.running());
        assert_eq!(process_start(me).unwrap().unwrap().ticks, first.ticks);
        assert!(process_start(u32::MAX >> 1).unwrap().is_none());
    }
}
