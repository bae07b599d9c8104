//! A host program that reaps children itself (`waitpid(-1)` in a loop, or `SIGCHLD` set to
//! `SIG_IGN`, common in tools that run many children) must not blind the client: exits are
//! still noticed, and no signal goes to a process group whose leader someone else reaped.
//!
//! One test, in its own binary: both behaviours change process-wide state.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

fn kill_plugin(pid: u32) {
    // SAFETY: the plugin is alive (the client watches it), so the pid is its.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
}

/// Starts a plugin, kills it behind the client's back, and checks the client noticed.
fn exit_is_noticed_although_someone_else_reaps(what: &str) {
    let m = marker();
    let client = client("serve", &m);
    client.start().unwrap();
    let pid = client.pid().unwrap();
    put(&kv(&client), "k", "v");
    kill_plugin(pid);
    assert!(
        client.wait_for_exit(Duration::from_secs(30)),
        "{what}: the client never noticed the exit"
    );
    // Whoever looked first: the watcher read the status before the reaper took it, or not.
    let status = client.exit_status();
    assert!(
        status.is_none()
            || std::os::unix::process::ExitStatusExt::signal(&status.unwrap()) == Some(9),
        "{what}: {status:?}"
    );
    let started = Instant::now();
    client.close();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{what}: close hung"
    );
    assert!(is_gone(pid), "{what}: pid {pid} left behind");
}

/// While the plugin runs its leader is ours alone, so the group kill still happens (and takes
/// the plugin's own child along).
fn group_is_killed_while_the_leader_is_alive(what: &str) {
    let m = marker();
    let client = client("spawn-child", &m);
    client.start().unwrap();
    let child: u32 = get(&kv(&client), "child-pid").parse().unwrap();
    client.close();
    assert!(
        dead_or_zombie_soon(child),
        "{what}: the plugin's child survived close"
    );
}

#[test]
fn a_host_that_reaps_children_itself() {
    // 1. A reaper thread calling waitpid(-1) for every child of the process.
    let stop = Arc::new(AtomicBool::new(false));
    let reaper = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let mut status = 0;
                // SAFETY: waitpid with a valid out pointer.
                unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    exit_is_noticed_although_someone_else_reaps("waitpid(-1)");
    group_is_killed_while_the_leader_is_alive("waitpid(-1)");
    stop.store(true, Ordering::SeqCst);
    reaper.join().unwrap();

    // 2. SIGCHLD ignored: the kernel reaps every child as it exits.
    // SAFETY: installing SIG_IGN has no preconditions.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    exit_is_noticed_although_someone_else_reaps("SIGCHLD ignored");
    group_is_killed_while_the_leader_is_alive("SIGCHLD ignored");
    // SAFETY: restoring the default has no preconditions.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) };
}
