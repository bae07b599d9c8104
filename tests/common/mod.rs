//! Helpers shared by the integration tests. Every test drives real plugin processes.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rpcplugin::proto::kv::{GetRequest, PutRequest};
use rpcplugin::proto::kv_grpc::KvClient;
use rpcplugin::{ClientConfig, RpcPluginClient};

pub const COOKIE_KEY: &str = "KV_PLUGIN";
pub const COOKIE_VALUE: &str = "rpcplugin-kv";

/// The test plugin built from `tests/support/test-plugin/main.rs`.
pub fn test_plugin() -> &'static str {
    env!("CARGO_BIN_EXE_rpcplugin-test-plugin")
}

/// A unique marker put into the plugin's environment, so a test can find every process it
/// started (and prove none is left).
pub fn marker() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// Config for the test plugin in `mode`, tagged with `marker`.
pub fn config(mode: &str, marker: &str) -> ClientConfig {
    ClientConfig::new()
        .magic_cookie(COOKIE_KEY, COOKIE_VALUE)
        .env("TEST_PLUGIN_MODE", mode)
        .env("TEST_MARKER", marker)
        .start_timeout(Duration::from_secs(20))
}

pub fn client(mode: &str, marker: &str) -> RpcPluginClient {
    RpcPluginClient::new([test_plugin()], config(mode, marker))
}

pub fn kv(client: &RpcPluginClient) -> KvClient {
    KvClient::new(client.grpc_channel().expect("channel"))
}

pub fn put(kv: &KvClient, key: &str, value: &str) {
    kv.put(&PutRequest {
        key: key.into(),
        value: value.as_bytes().to_vec(),
        ..Default::default()
    })
    .expect("put");
}

pub fn get(kv: &KvClient, key: &str) -> String {
    let reply = kv
        .get(&GetRequest {
            key: key.into(),
            ..Default::default()
        })
        .expect("get");
    String::from_utf8(reply.value).unwrap()
}

/// Live (non-zombie) processes whose environment carries `TEST_MARKER=marker`.
pub fn processes_with_marker(marker: &str) -> Vec<u32> {
    let needle = format!("TEST_MARKER={marker}");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()) {
            found.push(pid);
        }
    }
    found
}

/// The state letter from /proc/PID/stat (`Z` for a zombie), or None when the pid is gone.
pub fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = stat.rsplit_once(')')?.1;
    after_name.trim_start().chars().next()
}

/// Whether `pid` is gone entirely: not running and not a zombie of ours.
pub fn is_gone(pid: u32) -> bool {
    process_state(pid).is_none()
}

/// A process that is not our child may linger as a zombie until init reaps it; waits (bounded).
pub fn dead_or_zombie_soon(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match process_state(pid) {
            None | Some('Z') => return true,
            _ if Instant::now() > deadline => return false,
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// The socket directory the client made (the parent of the plugin's unix socket).
pub fn socket_dir(client: &RpcPluginClient) -> PathBuf {
    match client.address().expect("started") {
        rpcplugin::Address::Unix(path) => path.parent().unwrap().to_owned(),
        other => panic!("expected a unix socket, got {other}"),
    }
}

pub fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// A `Write` whose contents a test can read while another thread writes.
#[derive(Clone, Default)]
pub struct SharedBuf(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl SharedBuf {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Waits (bounded) until the buffer contains `needle`.
    pub fn wait_for(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.text().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

/// Where interop peers are built: `target/interop`.
pub fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/interop")
}

/// The one way to run without the interop peers: `RPCPLUGIN_SKIP_INTEROP=1` (or a list such as
/// `go,python`). Without it, a missing toolchain fails the tests that need it.
pub const SKIP_INTEROP: &str = "RPCPLUGIN_SKIP_INTEROP";

/// Whether the person running the tests opted out of the peers that need `tool`.
fn opted_out(tool: &str) -> bool {
    let Ok(value) = std::env::var(SKIP_INTEROP) else {
        return false;
    };
    let peer = if tool == "go" { "go" } else { "python" };
    value == "1" || value.split(',').any(|v| v.trim() == peer)
}

/// Runs a peer setup script once per test binary. A missing toolchain fails the test, unless
/// the run opted out with `RPCPLUGIN_SKIP_INTEROP`, in which case the caller skips (visibly).
fn setup_once(
    cell: &'static std::sync::OnceLock<bool>,
    tool: &str,
    script: &str,
    arg: &Path,
) -> bool {
    *cell.get_or_init(|| {
        if opted_out(tool) {
            eprintln!("\n!!! SKIPPING the {tool} interop tests: {SKIP_INTEROP} is set !!!\n");
            return false;
        }
        let has_tool = std::process::Command::new(tool)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
            || std::process::Command::new(tool)
                .arg("version")
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
        assert!(
            has_tool,
            "`{tool}` is required for the interop tests (real go-plugin and pyvider peers) but \
             is not on PATH; install it, or opt out explicitly with {SKIP_INTEROP}=1"
        );
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(script);
        let status = std::process::Command::new("bash")
            .arg(&script)
            .arg(arg)
            .status()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        assert!(status.success(), "{} failed: {status}", script.display());
        true
    })
}

/// Builds the Go peers (go-plugin v1.8) into `target/interop` once; None only when the run
/// opted out with `RPCPLUGIN_SKIP_INTEROP`.
pub fn go_peers() -> Option<PathBuf> {
    static CELL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let dir = interop_dir();
    setup_once(&CELL, "go", "tests/interop/go/build.sh", &dir).then_some(dir)
}

/// Creates the Python venv with pyvider-rpcplugin once; returns its directory, None only when
/// the run opted out with `RPCPLUGIN_SKIP_INTEROP`.
pub fn python_venv() -> Option<PathBuf> {
    static CELL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let venv = interop_dir().join("venv");
    setup_once(&CELL, "python3", "tests/interop/python/setup.sh", &venv).then_some(venv)
}

/// The host's Adder for broker callbacks, counting its calls.
#[derive(Clone, Default)]
pub struct HostAdder(pub std::sync::Arc<std::sync::atomic::AtomicU32>);

impl HostAdder {
    pub fn calls(&self) -> u32 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl rpcplugin::proto::kv_grpc::Adder for HostAdder {
    fn add(
        &self,
        _call: &rpcplugin::server::CallContext,
        req: rpcplugin::proto::kv::AddRequest,
    ) -> Result<rpcplugin::proto::kv::AddResponse, grpcio::RpcStatus> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut resp = rpcplugin::proto::kv::AddResponse::new();
        resp.sum = req.a + req.b;
        Ok(resp)
    }
}

/// A Get of a missing key must fail with NOT_FOUND.
pub fn assert_missing_key_is_not_found(kv: &KvClient) {
    let err = kv
        .get(&GetRequest {
            key: "no-such-key".into(),
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(err.kind(), rpcplugin::ErrorKind::Rpc, "{err:?}");
    assert_eq!(
        err.rpc_code(),
        Some(grpcio::RpcStatusCode::NOT_FOUND),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with("/rpcplugin.example.KV/Get failed: NOT_FOUND"),
        "{err}"
    );
}

/// A temp directory for one test (a plugin's `TMPDIR`), removed on drop.
pub struct ScratchDir(pub PathBuf);

impl ScratchDir {
    pub fn new() -> ScratchDir {
        let dir = std::env::temp_dir().join(format!("rpcplugin-scratch-{}", marker()));
        std::fs::create_dir_all(&dir).unwrap();
        ScratchDir(dir)
    }

    pub fn list(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.0)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.list().is_empty()
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A tcp port that was free a moment ago (the kernel's pick for port 0), so parallel runs on a
/// busy machine do not collide on fixed numbers.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Broker, host serves: `adder` is served under a fresh id, and the plugin dials it during
/// `AddViaHost(a, b)`. Returns the sum.
pub fn add_via_host(
    broker: &rpcplugin::Broker,
    kv: &KvClient,
    adder: &HostAdder,
    a: i64,
    b: i64,
) -> i64 {
    use rpcplugin::proto::kv::AddViaHostRequest;
    let id = broker.next_id();
    broker
        .accept_and_serve(
            id,
            vec![rpcplugin::proto::kv_grpc::create_adder(adder.clone())],
        )
        .unwrap();
    let request = AddViaHostRequest {
        adder_id: id,
        a,
        b,
        ..Default::default()
    };
    kv.add_via_host(&request)
        .unwrap_or_else(|e| panic!("AddViaHost: {e}"))
        .sum
}

/// Broker, plugin serves: `ServeAdder`, then this host dials the id and calls `Add(a, b)`.
pub fn add_via_plugin(broker: &rpcplugin::Broker, kv: &KvClient, a: i64, b: i64) -> i64 {
    use rpcplugin::proto::kv::{AddRequest, ServeAdderRequest};
    let offered = kv.serve_adder(&ServeAdderRequest::new()).unwrap();
    let channel = broker
        .dial(offered.adder_id)
        .unwrap_or_else(|e| panic!("dial {}: {e}", offered.adder_id));
    let request = AddRequest {
        a,
        b,
        ..Default::default()
    };
    rpcplugin::proto::kv_grpc::AdderClient::new(channel)
        .add(&request)
        .unwrap()
        .sum
}

/// A blob whose every byte depends on its position, so a misordered chunk shows.
pub fn blob(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

pub fn chunk(key: &str, data: &[u8]) -> rpcplugin::proto::kv::Chunk {
    rpcplugin::proto::kv::Chunk {
        key: key.into(),
        data: data.to_vec(),
        ..Default::default()
    }
}

/// Uploads `data` in 1 MiB chunks, downloads it back in 100000-byte chunks, checks every byte.
pub fn round_trip_blob(kv: &KvClient, key: &str, data: &[u8]) {
    let mut upload = kv.upload().unwrap();
    for part in data.chunks(1 << 20) {
        upload.send(chunk(key, part)).unwrap();
    }
    let reply = upload.finish().unwrap();
    assert_eq!(reply.key, key);
    assert_eq!(reply.size, data.len() as u64);

    let mut req = rpcplugin::proto::kv::DownloadRequest::new();
    req.key = key.into();
    req.chunk_size = 100_000;
    let mut back = Vec::new();
    let mut chunks = 0;
    for item in kv.download(&req).unwrap() {
        let item = item.unwrap();
        assert_eq!(item.key, key);
        assert!(item.data.len() <= 100_000);
        back.extend_from_slice(&item.data);
        chunks += 1;
    }
    assert_eq!(chunks, data.len().div_ceil(100_000));
    assert!(back == data, "downloaded bytes differ from the upload");
}

/// The calling thread's kernel id.
pub fn thread_id() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// Waits (bounded) until thread `tid` of this process is asleep in the kernel (state `S`), as a
/// thread blocked on a channel or a call is.
pub fn wait_until_blocked(tid: i32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
        let state = stat.rsplit_once(')').unwrap().1.trim_start().chars().next();
        if state == Some('S') {
            return;
        }
        assert!(Instant::now() < deadline, "thread {tid} never blocked");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Every step of go-plugin's host driving our plugin (`go-kv-host`'s JSON report) succeeded.
pub fn assert_go_host_steps_ok(report: &serde_json::Value) {
    for step in [
        "put_get",
        "serve_adder",
        "add_via_host",
        "streaming",
        "ping",
    ] {
        assert_eq!(report[step], "ok", "{step}: {report:#}");
    }
}
