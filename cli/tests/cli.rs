//! The `rpcplugin` binary against real plugins: this test binary itself (run as a plugin with
//! the library's plugin side), the go-plugin Go plugin and the pyvider plugin from
//! `tests/interop`. Each test runs the CLI as a process and checks its output and exit code.
//!
//! Its own harness (`harness = false`): when `CLI_TEST_PLUGIN` is set, this binary is the
//! plugin instead of the tests.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

use grpcio::{RpcStatus, RpcStatusCode};
use rpcplugin::proto::kv::*;
use rpcplugin::proto::kv_grpc::{create_kv, Kv};
use rpcplugin::server::{CallContext, PluginServer, ReplySink};
use rpcplugin::{ClientConfig, RpcPluginClient};

const CLI: &str = env!("CARGO_BIN_EXE_rpcplugin");
const COOKIE: &str = "KV_PLUGIN=rpcplugin-kv";
const PLUGIN_MODE: &str = "CLI_TEST_PLUGIN";

/// The plugin this binary becomes: a KV store holding `greeting` = `hello`.
struct Store(Mutex<HashMap<String, Vec<u8>>>);

impl Kv for Store {
    fn get(&self, _call: &CallContext, req: GetRequest) -> Result<GetResponse, RpcStatus> {
        let data = self.0.lock().unwrap();
        let value = data.get(&req.key).cloned().ok_or_else(|| {
            RpcStatus::with_message(RpcStatusCode::NOT_FOUND, format!("no key {:?}", req.key))
        })?;
        Ok(GetResponse {
            value,
            ..Default::default()
        })
    }

    fn put(&self, _call: &CallContext, req: PutRequest) -> Result<PutResponse, RpcStatus> {
        self.0.lock().unwrap().insert(req.key, req.value);
        Ok(PutResponse::new())
    }

    fn download(
        &self,
        call: &CallContext,
        req: DownloadRequest,
        mut replies: ReplySink<Chunk>,
    ) -> Result<(), RpcStatus> {
        let value = self.get(
            call,
            GetRequest {
                key: req.key.clone(),
                ..Default::default()
            },
        )?;
        for part in value.value.chunks(req.chunk_size.max(1) as usize) {
            replies.send(Chunk {
                key: req.key.clone(),
                data: part.to_vec(),
                ..Default::default()
            })?;
        }
        Ok(())
    }
}

fn serve_as_plugin() {
    eprintln!("[INFO] kv store ready");
    let store = Store(Mutex::new(HashMap::from([(
        "greeting".to_owned(),
        b"hello".to_vec(),
    )])));
    let store = std::sync::Arc::new(store);
    let result = PluginServer::new("KV_PLUGIN", "rpcplugin-kv")
        .reflection(std::env::var_os("CLI_TEST_NO_REFLECTION").is_none())
        .serve(move |_| vec![create_kv(Shared(store.clone()))]);
    if let Err(e) = result {
        eprintln!("serving: {e}");
        std::process::exit(1);
    }
}

/// `create_kv` wants the implementation by value; the store is shared by reference.
struct Shared(std::sync::Arc<Store>);

impl Kv for Shared {
    fn get(&self, c: &CallContext, r: GetRequest) -> Result<GetResponse, RpcStatus> {
        self.0.get(c, r)
    }
    fn put(&self, c: &CallContext, r: PutRequest) -> Result<PutResponse, RpcStatus> {
        self.0.put(c, r)
    }
    fn download(
        &self,
        c: &CallContext,
        r: DownloadRequest,
        s: ReplySink<Chunk>,
    ) -> Result<(), RpcStatus> {
        self.0.download(c, r, s)
    }
}

/// The workspace root (this crate is `cli/` inside it).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Runs the CLI with this binary as the plugin.
fn cli(args: &[&str]) -> Output {
    Command::new(CLI)
        .args(args)
        .env(PLUGIN_MODE, "1")
        .output()
        .expect("running rpcplugin")
}

fn me() -> String {
    std::env::current_exe().unwrap().display().to_string()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts the exit code, printing both streams when it differs.
fn expect_code(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

const SKIP: &str = "RPCPLUGIN_SKIP_INTEROP";

/// Runs a `tests/interop` setup script once; a missing toolchain fails, unless the run opted
/// out with RPCPLUGIN_SKIP_INTEROP (1, or a list naming the peer).
fn peer(name: &str, tool: &str, script: &str, arg: &Path) -> bool {
    if let Ok(v) = std::env::var(SKIP) {
        if v == "1" || v.split(',').any(|p| p.trim() == name) {
            eprintln!("!!! SKIPPING the {name} cases of the CLI tests: {SKIP} is set !!!");
            return false;
        }
    }
    let found = Command::new(tool)
        .arg(if tool == "go" { "version" } else { "--version" })
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "`{tool}` is needed for the CLI's {name} cases; install it or set {SKIP}={name}"
    );
    let status = Command::new("bash")
        .arg(root().join(script))
        .arg(arg)
        .status()
        .unwrap();
    assert!(status.success(), "{script} failed: {status}");
    true
}

fn go_plugin() -> Option<String> {
    let dir = root().join("target/interop");
    peer("go", "go", "tests/interop/go/build.sh", &dir)
        .then(|| dir.join("go-kv-plugin").display().to_string())
}

fn time_provider() -> Option<String> {
    let dir = root().join("target/interop");
    peer(
        "go",
        "go",
        "tests/interop/go/terraform-provider-time.sh",
        &dir,
    )
    .then(|| dir.join("terraform-provider-time").display().to_string())
}

fn python_venv() -> Option<PathBuf> {
    let venv = root().join("target/interop/venv");
    peer("python", "python3", "tests/interop/python/setup.sh", &venv).then_some(venv)
}

// ---- the tests ----

fn call_shows_terraform_dynamic_values_decoded() {
    let Some(provider) = time_provider() else {
        return;
    };
    let call = |method: &str, data: &str| {
        Command::new(CLI)
            .args([
                "call",
                "--preset",
                "terraform",
                &provider,
                method,
                "--data",
                data,
            ])
            .output()
            .unwrap()
    };
    // The imported state is typed by time_static's schema: numbers, strings, an empty map.
    let out = call(
        "tfplugin5.Provider/ImportResourceState",
        r#"{"typeName":"time_static","id":"2024-02-29T12:34:56Z"}"#,
    );
    expect_code(&out, 0);
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let state = &reply["importedResources"][0]["state"];
    assert_eq!(state["year"], 2024, "{reply}");
    assert_eq!(state["rfc3339"], "2024-02-29T12:34:56Z");
    assert_eq!(state["triggers"], serde_json::json!({}));
    // A function's result is typed by its return type; its argument went in as msgpack.
    let out = call(
        "tfplugin5.Provider/CallFunction",
        r#"{"name":"rfc3339_parse","arguments":[{"msgpack":"tDIwMjQtMDItMjlUMTI6MzQ6NTZa"}]}"#,
    );
    expect_code(&out, 0);
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["result"]["weekday_name"], "Thursday", "{reply}");
}

fn tf_schema_prints_what_tofu_prints() {
    let Some(provider) = time_provider() else {
        return;
    };
    let out = Command::new(CLI)
        .args([
            "tf",
            "schema",
            "--address",
            "registry.opentofu.org/hashicorp/time",
            &provider,
        ])
        .output()
        .unwrap();
    expect_code(&out, 0);
    // Captured from OpenTofu v1.10.7 itself (tests/interop/go/tofu-schema.sh).
    let tofu =
        std::fs::read(root().join("terraform/tests/data/tofu-1.10.7.time-0.14.2.schema.json"));
    assert!(out.stdout == tofu.unwrap(), "{}", text(&out.stdout));
    // Without --address: Terraform's registry, the type from the file name.
    let out = Command::new(CLI)
        .args(["tf", "schema", &provider])
        .output()
        .unwrap();
    expect_code(&out, 0);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        doc["provider_schemas"]["registry.terraform.io/hashicorp/time"]["resource_schemas"]
            ["time_static"]
            .is_object()
    );
    // A binary not named terraform-provider-TYPE needs --address.
    let out = Command::new(CLI)
        .args(["tf", "schema", &me()])
        .output()
        .unwrap();
    expect_code(&out, 2);
    assert!(
        text(&out.stderr).contains("give it with --address"),
        "{}",
        text(&out.stderr)
    );
}

fn inspect_shows_the_whole_life_of_a_rust_plugin() {
    let out = cli(&["inspect", "--cookie", COOKIE, &me()]);
    expect_code(&out, 0);
    let stdout = text(&out.stdout);
    for expected in [
        "handshake    core 1 | app version 1 | unix /",
        "| protocol grpc | server certificate sent",
        "version      1 (offered 1)",
        "tls          auto mTLS",
        "certificate  subject CN=localhost, O=rpcplugin",
        "             key EC prime256v1 (256 bits)",
        "health       SERVING",
        "services     7 (from gRPC reflection)",
        "  rpcplugin.example.KV\n    Get(rpcplugin.example.GetRequest) returns (rpcplugin.example.GetResponse)",
        "    Download(rpcplugin.example.DownloadRequest) returns (stream rpcplugin.example.Chunk)",
        "  plugin.GRPCController\n    Shutdown(plugin.Empty) returns (plugin.Empty)",
        "  [INFO] kv store ready",
        "exit status: 0",
        "nothing left: process reaped, socket removed",
    ] {
        assert!(stdout.contains(expected), "missing {expected:?} in:\n{stdout}");
    }
    // The sections come in the documented order.
    let at = |s: &str| stdout.find(s).unwrap();
    assert!(at("handshake") < at("version") && at("version") < at("tls"));
    assert!(at("timings") < at("health") && at("health") < at("services"));
    assert!(at("services") < at("logs") && at("logs") < at("shutdown"));
}

fn inspect_json_plain() {
    let out = cli(&["inspect", "--json", "--plain", "--cookie", COOKIE, &me()]);
    expect_code(&out, 0);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(v["tls"]["mode"], "plaintext");
    assert_eq!(v["tls"]["certificate"], serde_json::Value::Null);
    assert_eq!(v["handshake"]["server_certificate_sent"], false);
    assert_eq!(v["negotiated_version"], 1);
    assert_eq!(v["health"], "SERVING");
    assert_eq!(v["reflection"]["served"], true);
    let kv = v["reflection"]["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "rpcplugin.example.KV")
        .expect("KV listed");
    let download = kv["methods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "Download")
        .unwrap();
    assert_eq!(download["server_streaming"], true);
    assert_eq!(download["client_streaming"], false);
    assert_eq!(v["shutdown"]["exit_code"], 0);
    assert_eq!(v["shutdown"]["process_left"], false);
    assert_eq!(v["shutdown"]["socket_left"], false);
    assert!(v["timings_ms"]["total"].as_f64().unwrap() > 0.0);
}

fn reflection_can_be_turned_off() {
    let out = Command::new(CLI)
        .args(["inspect", "--plain", "--cookie", COOKIE, &me()])
        .env(PLUGIN_MODE, "1")
        .env("CLI_TEST_NO_REFLECTION", "1")
        .output()
        .unwrap();
    expect_code(&out, 0);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("services     unknown: the plugin does not serve gRPC reflection"),
        "{stdout}"
    );
}

fn call_prints_the_reply_as_json() {
    let out = cli(&[
        "call",
        "--cookie",
        COOKIE,
        &me(),
        "rpcplugin.example.KV/Get",
        "--data",
        r#"{"key": "greeting"}"#,
    ]);
    expect_code(&out, 0);
    // bytes are base64 in protobuf's JSON mapping: "hello".
    assert_eq!(text(&out.stdout), "{\"value\": \"aGVsbG8=\"}\n");
}

fn call_prints_one_document_per_streamed_message() {
    let out = cli(&[
        "call",
        "--plain",
        "--cookie",
        COOKIE,
        &me(),
        "/rpcplugin.example.KV/Download",
        "--data",
        r#"{"key": "greeting", "chunkSize": 2}"#,
    ]);
    expect_code(&out, 0);
    assert_eq!(
        text(&out.stdout),
        "{\"key\": \"greeting\", \"data\": \"aGU=\"}\n\
         {\"key\": \"greeting\", \"data\": \"bGw=\"}\n\
         {\"key\": \"greeting\", \"data\": \"bw==\"}\n"
    );
}

fn call_failures_have_their_exit_codes() {
    let cases: &[(&[&str], i32, &str)] = &[
        (
            &["rpcplugin.example.KV/Get", "--data", r#"{"key":"nope"}"#],
            3,
            "NOT_FOUND: no key \"nope\"",
        ),
        (
            &["rpcplugin.example.KV/Nope"],
            4,
            "has no method \"Nope\"; it has: Get, Put",
        ),
        (
            &["rpcplugin.example.KV/Get", "--data", r#"{"kye":"x"}"#],
            4,
            "--data does not fit rpcplugin.example.GetRequest",
        ),
        (&["rpcplugin.example.KV/Upload"], 4, "is client-streaming"),
        (
            &["no.Such/Thing"],
            4,
            "cannot build the request for no.Such",
        ),
    ];
    for (args, code, message) in cases {
        let mut all = vec!["call", "--plain", "--cookie", COOKIE];
        let me = me();
        all.push(&me);
        all.extend_from_slice(args);
        let out = cli(&all);
        expect_code(&out, *code);
        assert!(
            text(&out.stderr).contains(message),
            "{args:?}: {message:?} not in {}",
            text(&out.stderr)
        );
    }
}

fn usage_errors_exit_2() {
    for (args, message) in [
        (&["frobnicate"][..], "unknown command \"frobnicate\""),
        (&["inspect"][..], "expected <PLUGIN>, got 0 argument(s)"),
        (
            &["call", "--cookie", COOKIE, "x"][..],
            "expected <PLUGIN> <SERVICE/METHOD>",
        ),
        (
            &["inspect", "--cookie", "nokey", "x"][..],
            "--cookie expects KEY=VALUE",
        ),
        (
            &["inspect", "--preset", "emacs", "x"][..],
            "unknown preset \"emacs\": expected one of terraform, vault, vault-database, nomad",
        ),
        (
            &["inspect", "--versions", "5,x", "x"][..],
            "--versions expects a comma-separated list",
        ),
    ] {
        let out = cli(args);
        expect_code(&out, 2);
        assert!(
            text(&out.stderr).contains(message),
            "{args:?}: {message:?} not in {}",
            text(&out.stderr)
        );
    }
    let out = cli(&["--help"]);
    expect_code(&out, 0);
    assert!(text(&out.stdout).contains("EXIT CODES"));
}

fn a_dead_plugin_is_explained() {
    let out = cli(&["inspect", "--cookie", "KV_PLUGIN=wrong", &me()]);
    expect_code(&out, 1);
    let stderr = text(&out.stderr);
    assert!(stderr.contains("exit status"), "{stderr}");
}

fn attach_inspects_without_stopping_the_plugin() {
    let client = RpcPluginClient::new(
        [me()],
        ClientConfig::new()
            .magic_cookie("KV_PLUGIN", "rpcplugin-kv")
            .auto_mtls(false)
            .env(PLUGIN_MODE, "1"),
    );
    client.start().unwrap();
    let json = client
        .reattach_config()
        .unwrap()
        .to_tf_reattach_providers("example.com/test/kv");
    let out = cli(&["inspect", "--plain", "--attach", &json]);
    expect_code(&out, 0);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("plugin       attached: pid"), "{stdout}");
    assert!(stdout.contains("rpcplugin.example.KV"), "{stdout}");
    assert!(stdout.contains("not ours to stop (attached)"), "{stdout}");
    assert!(
        !client.has_exited(),
        "inspecting an attached plugin stopped it"
    );
    client.close();
}

fn go_plugin_inspect_and_call() {
    let Some(plugin) = go_plugin() else { return };
    // Without the cookie, the plugin's own message is shown.
    let out = cli(&["inspect", &plugin]);
    expect_code(&out, 2);
    let stderr = text(&out.stderr);
    assert!(stderr.contains("This binary is a plugin"), "{stderr}");
    assert!(stderr.contains("exited: exit status: 1"), "{stderr}");

    let out = cli(&["inspect", "--cookie", COOKIE, &plugin]);
    expect_code(&out, 0);
    let stdout = text(&out.stdout);
    for expected in [
        "certificate  subject O=HashiCorp, CN=localhost",
        "key EC secp521r1 (521 bits)",
        "  grpc.reflection.v1.ServerReflection",
        "  rpcplugin.example.KV\n    Get(rpcplugin.example.GetRequest) returns (rpcplugin.example.GetResponse)",
        "go-kv-plugin: plugin address address=/",
        "exit status: 0",
        "nothing left",
    ] {
        assert!(stdout.contains(expected), "missing {expected:?} in:\n{stdout}");
    }
    // A Put, plain and multiplexed (every connection a yamux stream in one socket).
    for extra in [None, Some("--multiplex")] {
        let mut args = vec!["call"];
        args.extend(extra);
        args.extend(["--cookie", COOKIE, &plugin, "rpcplugin.example.KV/Put"]);
        args.extend(["--data", r#"{"key":"k","value":"dg=="}"#]);
        let out = cli(&args);
        expect_code(&out, 0);
        assert_eq!(text(&out.stdout), "{}\n", "{extra:?}");
    }
    let out = cli(&[
        "call",
        "--cookie",
        COOKIE,
        &plugin,
        "rpcplugin.example.KV/Get",
        "--data",
        r#"{"key":"missing"}"#,
    ]);
    expect_code(&out, 3);
    assert!(
        text(&out.stderr).contains("NOT_FOUND"),
        "{}",
        text(&out.stderr)
    );

    // Inspected multiplexed: the same over one yamux connection.
    let out = cli(&["inspect", "--multiplex", "--cookie", COOKIE, &plugin]);
    expect_code(&out, 0);
    let stdout = text(&out.stdout);
    for expected in [
        "multiplexed brokering offered",
        "  rpcplugin.example.KV\n    Get(",
        "exit status: 0",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
}

fn pyvider_plugin_without_reflection() {
    let Some(venv) = python_venv() else { return };
    let python = venv.join("bin/python").display().to_string();
    let script = root().join("tests/interop/python/kv_plugin.py");
    let proto = format!("KV_PROTO_DIR={}", venv.join("kvproto").display());
    let out = cli(&[
        "inspect",
        "--cookie",
        COOKIE,
        "--env",
        &proto,
        "--env",
        "KV_PLUGIN_TRANSPORT=unix",
        "--timeout",
        "60",
        &python,
        "--",
        &script.display().to_string(),
    ]);
    expect_code(&out, 0);
    let stdout = text(&out.stdout);
    for expected in [
        "subject CN=pyvider.rpcplugin.autogen.server",
        "health       SERVING",
        "services     unknown: the plugin does not serve gRPC reflection",
        "exit status: 0",
        "nothing left",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    let out = cli(&[
        "call",
        "--cookie",
        COOKIE,
        "--env",
        &proto,
        "--timeout",
        "60",
        &python,
        "rpcplugin.example.KV/Get",
        "--",
        &script.display().to_string(),
    ]);
    expect_code(&out, 4);
    assert!(text(&out.stderr).contains("does not serve gRPC reflection"));
}

fn main() {
    if std::env::var_os(PLUGIN_MODE).is_some() {
        serve_as_plugin();
        return;
    }
    let tests: &[(&str, fn())] = &[
        (
            "inspect_shows_the_whole_life_of_a_rust_plugin",
            inspect_shows_the_whole_life_of_a_rust_plugin,
        ),
        ("inspect_json_plain", inspect_json_plain),
        ("reflection_can_be_turned_off", reflection_can_be_turned_off),
        (
            "call_prints_the_reply_as_json",
            call_prints_the_reply_as_json,
        ),
        (
            "call_prints_one_document_per_streamed_message",
            call_prints_one_document_per_streamed_message,
        ),
        (
            "call_failures_have_their_exit_codes",
            call_failures_have_their_exit_codes,
        ),
        ("usage_errors_exit_2", usage_errors_exit_2),
        ("a_dead_plugin_is_explained", a_dead_plugin_is_explained),
        (
            "attach_inspects_without_stopping_the_plugin",
            attach_inspects_without_stopping_the_plugin,
        ),
        ("go_plugin_inspect_and_call", go_plugin_inspect_and_call),
        (
            "tf_schema_prints_what_tofu_prints",
            tf_schema_prints_what_tofu_prints,
        ),
        (
            "call_shows_terraform_dynamic_values_decoded",
            call_shows_terraform_dynamic_values_decoded,
        ),
        (
            "pyvider_plugin_without_reflection",
            pyvider_plugin_without_reflection,
        ),
    ];
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let mut failed = Vec::new();
    for (name, test) in tests {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        match std::panic::catch_unwind(test) {
            Ok(()) => println!("test {name} ... ok"),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed.push(*name);
            }
        }
    }
    if !failed.is_empty() {
        println!("\nfailed: {failed:?}");
        std::process::exit(101);
    }
    println!("\ntest result: ok");
}
