//! A plugin for the integration tests: the KV example service plus misbehaviours chosen with
//! `TEST_PLUGIN_MODE`. Not meant for anything else.
//!
//! Modes: `serve` (default), `exit-early`, `hang`, `garbage`, `wrong-core`, `wrong-version-socket`, `netrpc`,
//! `ignore-shutdown`, `freeze-after-handshake` (SIGSTOPs itself once its handshake is out), `wrong-cert`
//! (announces a certificate it does not serve), `close-stdio`, `huge-line` (10 MiB before the
//! handshake), `hang-health`,
//! `not-serving`, `flood` (`TEST_PLUGIN_FLOOD_MIB`, `TEST_PLUGIN_FLOOD_STDOUT`), `spawn-child`,
//! `setsid-grandchild`, `close-listener`, `mux-fault` (see `mux_fault`), `print-env`, `attach-host` (a second host, see
//! `attach_host`), `env-host` (a host with protocol variables in its environment), `doomed-host` (a host that dies, see `doomed_host`), `user-tls` (certificates from
//! `TEST_PLUGIN_CERT`, `TEST_PLUGIN_KEY`, `TEST_PLUGIN_CLIENT_CA`).
//! Other knobs: `TEST_PLUGIN_VERSIONS` (default `1`), `TEST_PLUGIN_NETWORK` (`unix`|`tcp`).

#[path = "../../../examples/kv/store.rs"]
mod store;

mod mux_fault;

use std::io::Write;
use std::time::Duration;

use grpcio::{RpcStatus, RpcStatusCode};
use rpcplugin::proto::kv::*;
use rpcplugin::proto::kv_grpc::{create_adder, create_kv};
use rpcplugin::server::{CallContext, Network, PluginServer, ReplySink, Requests};

const COOKIE_KEY: &str = "KV_PLUGIN";
const COOKIE_VALUE: &str = "rpcplugin-kv";

fn sleep_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn main() {
    let mode = std::env::var("TEST_PLUGIN_MODE").unwrap_or_else(|_| "serve".into());
    match mode.as_str() {
        "exit-early" => {
            eprintln!("loading configuration");
            eprintln!("fatal: config file /nonexistent/kv.hcl not found");
            std::process::exit(3);
        }
        "hang" => sleep_forever(),
        "garbage" => {
            println!("Hello! I am a program, not a plugin.");
            sleep_forever()
        }
        "wrong-core" => {
            println!("2|1|unix|/tmp/nowhere|grpc|");
            sleep_forever()
        }
        "attach-host" => attach_host(),
        "env-host" => env_host(),
        "doomed-host" => doomed_host(),
        "wrong-version-socket" => {
            // A socket outside the host's dir (as pyvider makes), announced with a version the
            // host did not offer.
            let path = std::env::var("TEST_PLUGIN_SOCKET").expect("TEST_PLUGIN_SOCKET");
            let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
            println!("1|9|unix|{path}|grpc|");
            sleep_forever()
        }
        "mux-mute" => {
            // Offers multiplexing, takes the host's connection, and never says a word on it: no
            // yamux stream is ever acknowledged.
            let dir = std::env::var("PLUGIN_UNIX_SOCKET_DIR").expect("PLUGIN_UNIX_SOCKET_DIR");
            let path = format!("{dir}/mute");
            let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
            println!("1|1|unix|{path}|grpc||true");
            let (mut conn, _) = listener.accept().unwrap();
            std::io::copy(&mut conn, &mut std::io::sink()).ok();
            sleep_forever()
        }
        "netrpc" => {
            println!("1|1|unix|/tmp/nowhere");
            sleep_forever()
        }
        _ => serve(&mode),
    }
}

/// Acts as a second host: attaches to the plugin named in `TF_REATTACH_PROVIDERS`, prints the
/// value of `greeting`, and disconnects.
fn attach_host() {
    let json = std::env::var("TF_REATTACH_PROVIDERS").expect("TF_REATTACH_PROVIDERS");
    let (_, reattach) = rpcplugin::ReattachConfig::from_tf_reattach_providers(&json)
        .expect("parsing TF_REATTACH_PROVIDERS")
        .remove(0);
    let client = rpcplugin::RpcPluginClient::attach(reattach, rpcplugin::ClientConfig::new())
        .unwrap_or_else(|e| {
            eprintln!("attach failed: {e}");
            std::process::exit(1)
        });
    let kv = rpcplugin::proto::kv_grpc::KvClient::new(client.grpc_channel().unwrap());
    let mut req = rpcplugin::proto::kv::GetRequest::new();
    req.key = "greeting".into();
    let reply = kv.get(&req).expect("get over the attached connection");
    println!("{}", String::from_utf8_lossy(&reply.value));
    client.close();
}

/// Acts as a host whose own environment carries go-plugin protocol variables: starts the test
/// plugin (this binary) in `print-env` mode with auto mTLS off and prints the environment the
/// plugin saw.
fn env_host() {
    let config = rpcplugin::ClientConfig::new()
        .magic_cookie(COOKIE_KEY, COOKIE_VALUE)
        .env("TEST_PLUGIN_MODE", "print-env")
        .auto_mtls(false);
    let exe = std::env::current_exe().unwrap();
    let client = rpcplugin::RpcPluginClient::new([exe], config);
    client.start().expect("starting the plugin");
    let kv = rpcplugin::proto::kv_grpc::KvClient::new(client.grpc_channel().unwrap());
    let mut req = rpcplugin::proto::kv::GetRequest::new();
    req.key = "env".into();
    let env = kv
        .get(&req)
        .expect("reading the plugin's environment")
        .value;
    println!("{}", String::from_utf8_lossy(&env));
    client.close();
}

/// Acts as a host that dies without closing its plugin: starts the test plugin (this binary),
/// prints the plugin's pid and address, then SIGKILLs itself. `kill_with_host` must take the plugin along.
fn doomed_host() {
    let mut config = rpcplugin::ClientConfig::new()
        .magic_cookie(COOKIE_KEY, COOKIE_VALUE)
        .env("TEST_PLUGIN_MODE", "serve")
        .kill_with_host(std::env::var("DOOMED_KILL_WITH_HOST").as_deref() != Ok("0"))
        // Plain, so that the test can call the orphan after this host is gone.
        .auto_mtls(false);
    if let Some(parent) = std::env::var_os("DOOMED_SOCKET_PARENT") {
        config = config.socket_dir_parent(parent);
    }
    // Started from a short-lived thread: the plugin must survive that thread's end.
    let client = std::thread::spawn(move || {
        let exe = std::env::current_exe().unwrap();
        let client = rpcplugin::RpcPluginClient::new([exe], config);
        client.start().expect("starting the plugin");
        client
    })
    .join()
    .unwrap();
    let pid = client.pid().unwrap();
    client
        .ping(Duration::from_secs(5))
        .expect("plugin alive after the starting thread ended");
    let address = client.address().unwrap();
    println!("{pid} {address}");
    std::io::stdout().flush().unwrap();
    // SAFETY: raising SIGKILL on ourselves has no preconditions.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn serve(mode: &str) {
    let versions: Vec<u32> = std::env::var("TEST_PLUGIN_VERSIONS")
        .unwrap_or_else(|_| "1".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let network = match std::env::var("TEST_PLUGIN_NETWORK").as_deref() {
        Ok("tcp") => Network::Tcp,
        _ => Network::Unix,
    };
    let store = store::Store::default();
    store.set("pid", std::process::id().to_string());
    match mode {
        "freeze-after-handshake" => freeze_after_first_line(),
        // The real stdout stays open (as a plugin's does) for the session's life.
        "mux-fault" => intercept_first_line(mux_fault::intercept, std::mem::forget),
        "wrong-cert" => announce_another_certificate(),
        "close-stdio" => close_stdio_after_first_line(),
        "huge-line" => {
            // 10 MiB with no newline, then the handshake on the same "line".
            let chunk = vec![b'x'; 1 << 20];
            let mut out = std::io::stdout().lock();
            for _ in 0..10 {
                out.write_all(&chunk).unwrap();
            }
            out.flush().unwrap();
        }
        "ignore-shutdown" => {
            // SAFETY: installing SIG_IGN has no preconditions.
            unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
        }
        "flood" => {
            // Written from the first Put on, so it starts after the handshake line.
            store.set("flood", "armed");
        }
        "clock-lines" => {
            // A stderr line every TEST_PLUGIN_CLOCK_MS (default 1) ms, each carrying the
            // system-wide monotonic clock at the write, so the host can tell how long its
            // delivery took (benches/logs.rs).
            let every = Duration::from_millis(env_number("TEST_PLUGIN_CLOCK_MS").unwrap_or(1));
            std::thread::spawn(move || loop {
                let mut now = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                // SAFETY: clock_gettime fills a local struct.
                unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
                let ns = now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64;
                eprintln!("clock {ns}");
                std::thread::sleep(every);
            });
        }
        "close-listener" => {
            // Announces a socket whose listener it closed before the line went out (the file
            // stays, nobody accepts: the host's connect is refused).
            intercept_first_line(
                |line| {
                    let mut fields: Vec<String> =
                        line.trim_end().split('|').map(str::to_owned).collect();
                    let closed = format!("{}-closed", fields[3]);
                    drop(std::os::unix::net::UnixListener::bind(&closed).unwrap());
                    fields[3] = closed;
                    fields.join("|") + "\n"
                },
                std::mem::forget,
            );
        }
        "setsid-grandchild" => {
            // A grandchild in a session of its own (out of reach of the group kill) that keeps
            // this plugin's stdout and stderr open.
            use std::os::unix::process::CommandExt;
            let mut grandchild = std::process::Command::new(std::env::current_exe().unwrap());
            grandchild.env("TEST_PLUGIN_MODE", "hang");
            // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
            unsafe {
                grandchild.pre_exec(|| {
                    if libc::setsid() < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let child = grandchild.spawn().expect("spawning the grandchild");
            store.set("grandchild-pid", child.id().to_string());
            std::thread::spawn(move || {
                let mut child = child;
                child.wait()
            });
        }
        "spawn-child" => {
            let mut child = std::process::Command::new("sleep")
                .arg("300")
                .spawn()
                .expect("spawning sleep");
            store.set("child-pid", child.id().to_string());
            // Reaped by this plugin if it ever exits on its own; the host kills it with the group.
            std::thread::spawn(move || child.wait());
        }
        "print-env" => {
            let env: Vec<String> = std::env::vars()
                .filter(|(k, _)| {
                    k.starts_with("PLUGIN_") || k.starts_with("KV_") || k == "EXTRA" || k == "PATH"
                })
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            store.set("env", env.join("\n"));
            store.set(
                "cwd",
                std::env::current_dir().unwrap().display().to_string(),
            );
        }
        _ => {}
    }
    eprintln!(
        r#"{{"@level":"debug","@message":"starting test plugin","@module":"test-plugin","@timestamp":"2026-01-02T03:04:05.123456Z","mode":"{mode}"}}"#
    );
    let service_store = store.clone();
    let mut server = PluginServer::new(COOKIE_KEY, COOKIE_VALUE)
        .versions(versions)
        .network(network);
    if let Some(n) = env_number("TEST_PLUGIN_MAX_HANDLERS") {
        rpcplugin::server::set_max_handler_threads(n as usize);
    }
    if let Some(ms) = env_number("TEST_PLUGIN_GRACE_MS") {
        server = server.graceful_timeout(Duration::from_millis(ms));
    }
    if mode == "hang-health" {
        // A health check that never answers and ignores the host giving up.
        server = server.health(|_call| {
            eprintln!("health check received; never answering");
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        });
    }
    if mode == "not-serving" {
        server = server.health(|_call| false);
    }
    if mode == "user-tls" {
        let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
        server = server.tls(
            var("TEST_PLUGIN_CERT"),
            var("TEST_PLUGIN_KEY"),
            std::env::var("TEST_PLUGIN_CLIENT_CA").ok(),
        );
    }
    let result = server.serve(move |ctx| {
        service_store.set("version", ctx.version().to_string());
        vec![create_kv(Flooding(service_store.for_session(ctx)))]
    });
    if let Err(e) = result {
        eprintln!("test plugin failed: {e}");
        std::process::exit(1);
    }
    if mode == "ignore-shutdown" {
        eprintln!("shutdown requested, but this plugin keeps running");
        sleep_forever();
    }
}

/// Routes stdout through a pipe whose reader thread passes the first line (the handshake)
/// through `edit` to the real stdout, then runs `after` with the real stdout.
fn intercept_first_line(
    edit: impl FnOnce(String) -> String + Send + 'static,
    after: impl FnOnce(std::fs::File) + Send + 'static,
) {
    use std::io::BufRead;
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: pipe and dup/dup2 on descriptors this process owns.
    let real_stdout = unsafe {
        assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
        let real = libc::dup(1);
        assert!(real >= 0);
        assert!(libc::dup2(fds[1], 1) >= 0);
        libc::close(fds[1]);
        std::fs::File::from_raw_fd(real)
    };
    // SAFETY: fds[0] is the pipe's read end, owned from here on by this File.
    let pipe = unsafe { std::fs::File::from_raw_fd(fds[0]) };
    std::thread::spawn(move || {
        let mut line = String::new();
        std::io::BufReader::new(pipe).read_line(&mut line).unwrap();
        let mut out = real_stdout;
        out.write_all(edit(line).as_bytes()).unwrap();
        out.flush().unwrap();
        after(out);
    });
}

/// A plugin that hangs right after its handshake (SIGSTOP), its socket still accepting
/// connections in the kernel.
fn freeze_after_first_line() {
    intercept_first_line(
        |line| line,
        |_| {
            // SAFETY: stopping ourselves has no preconditions.
            unsafe { libc::kill(libc::getpid(), libc::SIGSTOP) };
        },
    );
}

/// A handshake that announces another certificate than the one the plugin serves: what a
/// man-in-the-middle between the plugin's stdout and its socket would produce.
fn announce_another_certificate() {
    intercept_first_line(
        |line| {
            let other = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
                .expect("generating a certificate");
            let b64 = openssl::base64::encode_block(other.cert.der());
            let mut fields: Vec<String> = line.trim_end().split('|').map(str::to_owned).collect();
            fields[5] = b64.trim_end_matches('=').to_owned();
            fields.join("|") + "\n"
        },
        |_| {},
    );
}

/// A plugin that closes its stdout and stdin once its handshake is out and never reads or
/// writes them again.
fn close_stdio_after_first_line() {
    intercept_first_line(
        |line| line,
        |stdout| {
            drop(stdout);
            // SAFETY: closing our own stdin.
            unsafe { libc::close(0) };
        },
    );
}

#[derive(Clone)]
struct SlowSum(store::Store);

impl rpcplugin::proto::kv_grpc::Adder for SlowSum {
    fn add(&self, _call: &CallContext, req: AddRequest) -> Result<AddResponse, RpcStatus> {
        self.0.set("slow-add", "started");
        std::thread::sleep(Duration::from_secs(10));
        Ok(AddResponse {
            sum: req.a + req.b,
            ..Default::default()
        })
    }
}

/// The store, plus the flood: a Put while `flood` is armed starts writing megabytes to stdout and
/// stderr; `flood` reads `done` once all of it was written (the host kept reading).
#[derive(Clone)]
struct Flooding(store::Store);

impl rpcplugin::proto::kv_grpc::Kv for Flooding {
    fn get(&self, call: &CallContext, req: GetRequest) -> Result<GetResponse, RpcStatus> {
        match req.key.as_str() {
            "slow" => {
                // A call still running when Shutdown arrives: marks its start, answers 500 ms later.
                self.0.set("slow-started", "yes");
                std::thread::sleep(Duration::from_millis(500));
                self.0.set("slow", "finished");
            }
            "until-cancelled" => {
                // Works until the host gives up, then records what the handler saw.
                self.0.set("until-cancelled-state", "running");
                let deadline = call.deadline().is_some();
                while !call.is_cancelled() {
                    std::thread::sleep(Duration::from_millis(5));
                }
                self.0.set(
                    "until-cancelled-state",
                    format!("cancelled (deadline set: {deadline})"),
                );
                // Answer as a gRPC server does: the host may see this status before its own
                // deadline fires (both sides time the same deadline).
                let passed = call.time_remaining() == Some(Duration::ZERO);
                return Err(if passed {
                    RpcStatus::with_message(
                        RpcStatusCode::DEADLINE_EXCEEDED,
                        "the deadline passed".to_owned(),
                    )
                } else {
                    RpcStatus::new(RpcStatusCode::CANCELLED)
                });
            }
            "whoami" => {
                // The call's context as the handler sees it.
                let trace = call
                    .metadata("x-trace-id")
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default();
                let left = call.time_remaining().map(|d| d.as_secs()).unwrap_or(0);
                let reply = format!("{} trace={trace} secs-left={left}", call.method());
                return Ok(GetResponse {
                    value: reply.into_bytes(),
                    ..Default::default()
                });
            }
            _ => {}
        }
        self.0.get(call, req)
    }

    fn put(&self, call: &CallContext, req: PutRequest) -> Result<PutResponse, RpcStatus> {
        let armed = self
            .0
            .entries
            .lock()
            .unwrap()
            .get("flood")
            .map(|v| v == b"armed");
        if armed == Some(true) {
            self.0.set("flood", "running");
            let store = self.0.clone();
            std::thread::spawn(move || {
                // TEST_PLUGIN_FLOOD_MIB on stderr (default 8), and as much on stdout unless
                // TEST_PLUGIN_FLOOD_STDOUT is 0; one newline at the very end.
                let mib = env_number("TEST_PLUGIN_FLOOD_MIB").unwrap_or(8);
                let stdout = env_number("TEST_PLUGIN_FLOOD_STDOUT") != Some(0);
                let chunk = vec![b'x'; 64 * 1024];
                for _ in 0..(mib * 16) {
                    if stdout {
                        std::io::stdout().write_all(&chunk).unwrap();
                    }
                    std::io::stderr().write_all(&chunk).unwrap();
                }
                if stdout {
                    std::io::stdout().write_all(b"\n").unwrap();
                }
                std::io::stderr().write_all(b"\n").unwrap();
                store.set("flood", "done");
            });
        }
        if req.key == "crash" {
            eprintln!("panic: asked to crash");
            std::process::exit(42);
        }
        self.0.put(call, req)
    }

    fn speak(&self, call: &CallContext, req: SpeakRequest) -> Result<SpeakResponse, RpcStatus> {
        self.0.speak(call, req)
    }

    fn add_via_host(
        &self,
        call: &CallContext,
        req: AddViaHostRequest,
    ) -> Result<AddResponse, RpcStatus> {
        self.0.add_via_host(call, req)
    }

    fn serve_adder(
        &self,
        call: &CallContext,
        req: ServeAdderRequest,
    ) -> Result<ServeAdderResponse, RpcStatus> {
        let slow = self.0.entries.lock().unwrap().contains_key("slow-adder");
        if !slow {
            return self.0.serve_adder(call, req);
        }
        // An adder whose calls take 10 s and ignore cancellation.
        let broker = self.0.broker();
        let id = broker.next_id();
        let slow = SlowSum(self.0.clone());
        broker
            .accept_and_serve(id, vec![create_adder(slow)])
            .map_err(|e| RpcStatus::with_message(grpcio::RpcStatusCode::INTERNAL, e.to_string()))?;
        Ok(ServeAdderResponse {
            adder_id: id,
            ..Default::default()
        })
    }

    fn upload(
        &self,
        call: &CallContext,
        requests: Requests<Chunk>,
    ) -> Result<UploadResponse, RpcStatus> {
        self.0.upload(call, requests)
    }

    fn download(
        &self,
        call: &CallContext,
        req: DownloadRequest,
        mut replies: ReplySink<Chunk>,
    ) -> Result<(), RpcStatus> {
        if req.key == "stall" {
            // Sends one chunk, then holds the stream open without sending until cancelled.
            self.0.set("stall", "running");
            replies.send(Chunk {
                key: "stall".into(),
                data: b"first".to_vec(),
                ..Default::default()
            })?;
            while !call.is_cancelled() {
                std::thread::sleep(Duration::from_millis(5));
            }
            self.0.set("stall", "cancelled");
            return Ok(());
        }
        self.0.download(call, req, replies)
    }

    fn echo(
        &self,
        call: &CallContext,
        requests: Requests<Chunk>,
        replies: ReplySink<Chunk>,
    ) -> Result<(), RpcStatus> {
        self.0.echo(call, requests, replies)
    }
}
