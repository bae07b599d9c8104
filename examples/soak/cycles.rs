//! The soak: many start → call → close cycles and many failing starts in one process, with the
//! process's threads, file descriptors, children and temp entries compared before and after.
//! Shared by `examples/soak` (1000 cycles, release build) and `tests/soak.rs` (a few, in CI).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rpcplugin::proto::kv::{GetRequest, PutRequest};
use rpcplugin::proto::kv_grpc::KvClient;
use rpcplugin::{ClientConfig, ErrorKind, RpcPluginClient};

/// What the process holds at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resources {
    /// Thread names, sorted (gRPC core's internal ones left out).
    pub threads: Vec<String>,
    pub fds: Vec<String>,
    /// Our children, zombies included.
    pub children: Vec<u32>,
    /// Entries in the socket-dir parent.
    pub temp: Vec<PathBuf>,
}

impl Resources {
    pub fn now(parent: &Path) -> Resources {
        let me = std::process::id();
        // Not the listing's own fd.
        let listing = PathBuf::from(format!("/proc/{me}/fd"));
        // An fd closed while the listing is read is left out, not recorded without a target.
        let mut fds: Vec<String> = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter_map(|e| {
                let target = std::fs::read_link(e.path()).ok()?;
                (target != listing).then(|| {
                    format!(
                        "{} -> {}",
                        e.file_name().to_string_lossy(),
                        target.display()
                    )
                })
            })
            .collect();
        fds.sort();
        let children = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .ok()
                    .and_then(|s| {
                        s.rsplit_once(')')?
                            .1
                            .split_whitespace()
                            .nth(1)?
                            .parse::<u32>()
                            .ok()
                    })
                    == Some(me)
            })
            .collect();
        let mut temp: Vec<PathBuf> = std::fs::read_dir(parent)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        temp.sort();
        Resources {
            threads: {
                let mut names: Vec<String> = std::fs::read_dir("/proc/self/task")
                    .unwrap()
                    .flatten()
                    // A thread that ends while the listing is read is left out.
                    .filter_map(|t| {
                        let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
                        Some(comm.trim().to_owned())
                    })
                    // gRPC core's own pools (timers, executor, event engine) grow and shrink
                    // with load on their own, capped by gRPC: not ours to count.
                    .filter(|name| !GRPC_CORE_THREADS.contains(&name.as_str()))
                    .collect();
                names.sort();
                names
            },
            fds,
            children,
            temp,
        }
    }

    /// Waits up to 5 s for the process to differ from `baseline` in nothing but the fds of
    /// `may_go` (gRPC core closes the last connection's socket asynchronously), then reports
    /// what it holds.
    pub fn settle_to(baseline: &Resources, may_go: &[String], parent: &Path) -> Resources {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let now = Resources::now(parent);
            if now.differences(baseline, may_go).is_empty() || Instant::now() > deadline {
                return now;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// How `self` differs from `baseline`, one line each: everything it holds beyond the
    /// baseline (a leak), and everything of the baseline that is gone, except the fds of
    /// `may_go`. The baseline is taken right after a warm-up session, whose gRPC connection gRPC
    /// core may close a moment later (see [`soak`]); anything else gone was closed by someone who
    /// did not own it.
    pub fn differences(&self, baseline: &Resources, may_go: &[String]) -> Vec<String> {
        /// What `now` holds beyond `then`, and what of `then` is gone (unless `may_go`).
        fn compare<T: PartialEq + std::fmt::Debug>(
            what: &str,
            now: &[T],
            then: &[T],
            may_go: impl Fn(&T) -> bool,
        ) -> Vec<String> {
            let left = now.iter().filter(|x| !then.contains(x));
            let gone = then.iter().filter(|x| !now.contains(x) && !may_go(x));
            (left.map(|x| format!("{what} left behind: {x:?}")))
                .chain(gone.map(|x| format!("{what} gone: {x:?}")))
                .collect()
        }
        let mut out = Vec::new();
        // Several threads share a name: compared as a multiset.
        let mut threads = baseline.threads.clone();
        for name in &self.threads {
            match threads.iter().position(|t| t == name) {
                Some(i) => drop(threads.remove(i)),
                None => out.push(format!("thread left behind: {name:?}")),
            }
        }
        out.extend(threads.iter().map(|name| format!("thread gone: {name:?}")));
        out.extend(compare("fd", &self.fds, &baseline.fds, |fd| {
            may_go.contains(fd)
        }));
        out.extend(compare("child", &self.children, &baseline.children, |_| {
            false
        }));
        out.extend(compare("temp entry", &self.temp, &baseline.temp, |_| false));
        out
    }
}

/// How to launch a plugin: its command line and its config.
pub type Launch<'a> = &'a dyn Fn() -> (Vec<OsString>, ClientConfig);

/// One successful session: start, put, get, close.
fn good_cycle(launch: Launch<'_>, i: usize) {
    let (command, config) = launch();
    let client = RpcPluginClient::new(command, config);
    client
        .start()
        .unwrap_or_else(|e| panic!("cycle {i}: start: {e}"));
    let kv = KvClient::new(client.grpc_channel().unwrap());
    let key = format!("k{i}");
    kv.put(&PutRequest {
        key: key.clone(),
        value: b"v".to_vec(),
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("cycle {i}: put: {e}"));
    let got = kv
        .get(&GetRequest {
            key,
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("cycle {i}: get: {e}"));
    assert_eq!(got.value, b"v");
    client.close();
}

/// One failing start: the plugin exits before its handshake.
fn failing_cycle(launch: Launch<'_>, i: usize) {
    let (command, config) = launch();
    let err = RpcPluginClient::new(command, config)
        .start()
        .expect_err("a failing plugin started");
    assert_eq!(err.kind(), ErrorKind::ProcessExited, "cycle {i}: {err}");
}

/// What a soak found.
pub struct Report {
    pub cycles: usize,
    pub before: Resources,
    /// The sockets of `before` that may be gone after (see [`soak`]).
    pub may_go: Vec<String>,
    pub after: Resources,
    pub took: Duration,
}

/// Names of gRPC core's internal threads (truncated to 15 characters by the kernel).
pub const GRPC_CORE_THREADS: &[&str] = &[
    "grpc_global_tim",
    "timer_manager",
    "event_engine",
    "default-executo",
    "resolver-execut",
];

impl Report {
    pub fn clean(&self) -> bool {
        self.after
            .differences(&self.before, &self.may_go)
            .is_empty()
    }

    pub fn describe(&self) -> String {
        let b = &self.before;
        let a = &self.after;
        format!(
            "{} good cycles and {} failing starts in {:.1?}\n\
             threads   {} -> {}\nfds       {} -> {}\nchildren  {} -> {}\ntemp      {} -> {}\n{}",
            self.cycles,
            self.cycles,
            self.took,
            b.threads.len(),
            a.threads.len(),
            b.fds.len(),
            a.fds.len(),
            b.children.len(),
            a.children.len(),
            b.temp.len(),
            a.temp.len(),
            if self.clean() {
                "nothing left".to_owned()
            } else {
                format!(
                    "LEFT BEHIND:\n{}\nbefore {b:#?}\nafter {a:#?}",
                    a.differences(b, &self.may_go).join("\n")
                )
            }
        )
    }
}

/// Runs the soak: one warm-up session, then `cycles` good sessions and `cycles` failing starts.
/// Both configs must put the socket dirs under `parent`.
pub fn soak(good: Launch<'_>, failing: Launch<'_>, parent: &Path, cycles: usize) -> Report {
    // Two warm-up sessions. What the first leaves is the process's own for good (the I/O
    // thread's wake sockets, gRPC core's); sockets that only the second one left are its
    // connection, which gRPC core may close a moment after `close` returns: those alone may be
    // gone at the end.
    good_cycle(good, usize::MAX);
    let earlier = Resources::now(parent);
    good_cycle(good, usize::MAX - 1);
    let before = Resources::now(parent);
    let may_go: Vec<String> = (before.fds.iter())
        .filter(|fd| fd.contains("socket:[") && !earlier.fds.contains(fd))
        .cloned()
        .collect();
    let started = Instant::now();
    for i in 0..cycles {
        good_cycle(good, i);
        failing_cycle(failing, i);
    }
    let took = started.elapsed();
    let after = Resources::settle_to(&before, &may_go, parent);
    Report {
        cycles,
        before,
        may_go,
        after,
        took,
    }
}
