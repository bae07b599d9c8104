//! msgpack encode and decode, this crate against go-cty v1.16.3, side by side in one run.
//!
//! `cargo bench -p rpcplugin-cty --bench msgpack` (Go needed: it builds tests/interop/go/ctycheck).
//! Each row: the same value and bytes, N operations per round, three rounds alternating Rust and
//! Go; the median round is printed. The provider row's types come from
//! `data/terraform-provider-time-0.14.2.schema.json`, which `rpcplugin tf schema` printed for that
//! provider (regenerate it the same way for another provider).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use rpcplugin_cty::{Number, Type, Value};

fn go() -> &'static str {
    ["go", "/usr/local/go/bin/go"]
        .into_iter()
        .find(|go| {
            Command::new(go)
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("Go is required for this bench")
}

fn interop() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/interop")
}

fn build_ctycheck() -> PathBuf {
    let out = interop().join("ctycheck");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/interop/go/ctycheck");
    let ok = Command::new(go())
        .args(["build", "-o"])
        .arg(&out)
        .arg(".")
        .current_dir(src)
        .status()
        .unwrap();
    assert!(ok.success());
    out
}

/// A value shaped like a big plan: 2 000 objects with strings, numbers, bools, a map, a nested
/// object with a list.
fn large_value() -> (Type, Value) {
    let item = Type::object([
        ("id", Type::String),
        ("name", Type::String),
        ("port", Type::Number),
        ("ratio", Type::Number),
        ("enabled", Type::Bool),
        ("tags", Type::map(Type::String)),
        (
            "nested",
            Type::object([("a", Type::String), ("b", Type::list(Type::Number))]),
        ),
    ]);
    let items = (0..2000i64).map(|i| {
        Value::object([
            ("id", Value::from(format!("i-{i:08x}"))),
            ("name", Value::from(format!("instance number {i}"))),
            ("port", Value::from(8000 + i)),
            (
                "ratio",
                Value::Number(Number::from_f64(i as f64 / 7.0 + 0.5).unwrap()),
            ),
            ("enabled", Value::from(i % 3 == 0)),
            (
                "tags",
                Value::map([
                    ("env", Value::from("prod")),
                    ("team", Value::from(format!("t{}", i % 10))),
                    ("tier", Value::from("web")),
                ]),
            ),
            (
                "nested",
                Value::object([
                    ("a", Value::from("x")),
                    ("b", Value::list((0..5).map(|j| Value::from(i * j)))),
                ]),
            ),
        ])
    });
    let ty = Type::object([("items", Type::list(item)), ("count", Type::Number)]);
    (
        ty,
        Value::object([("items", Value::list(items)), ("count", Value::from(2000))]),
    )
}

/// The implied type of a block in `providers schema -json` form (attributes and block types).
fn block_type(block: &serde_json::Value) -> Type {
    let mut attributes: Vec<(String, Type)> = Vec::new();
    for (name, a) in block["attributes"].as_object().into_iter().flatten() {
        let ty = Type::from_json(&a["type"].to_string()).expect("an attribute type");
        attributes.push((name.clone(), ty.without_optional_attributes()));
    }
    for (name, b) in block["block_types"].as_object().into_iter().flatten() {
        let inner = block_type(&b["block"]);
        let ty = match b["nesting_mode"].as_str() {
            Some("list") => Type::list(inner),
            Some("set") => Type::set(inner),
            Some("map") => Type::map(inner),
            _ => inner,
        };
        attributes.push((name.clone(), ty));
    }
    Type::object(attributes)
}

fn fill(ty: &Type, seed: i64) -> Value {
    match ty {
        Type::String => Value::from(format!("2026-09-20T17:58:{:02}Z", seed % 60)),
        Type::Number => Value::from(seed),
        Type::Bool => Value::from(seed % 2 == 0),
        Type::Map(e) => Value::map((0..3).map(|i| (format!("k{i}"), fill(e, seed + i)))),
        Type::List(e) => Value::list((0..3).map(|i| fill(e, seed + i))),
        Type::Set(e) => Value::set((0..3).map(|i| fill(e, seed * 10 + i))),
        Type::Object { attributes, .. } => Value::Object(
            attributes
                .iter()
                .enumerate()
                .map(|(i, (k, t))| (k.clone(), fill(t, seed + i as i64)))
                .collect(),
        ),
        Type::Tuple(ts) => Value::Tuple(ts.iter().map(|t| fill(t, seed)).collect()),
        Type::Dynamic => Value::Null,
    }
}

/// 100 states of every resource type of terraform-provider-time, as in a state file with 400
/// time resources, typed by the provider's full schema.
fn provider_value() -> (Type, Value) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("benches/data/terraform-provider-time-0.14.2.schema.json");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let provider = doc["provider_schemas"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap();
    let resources: Vec<(String, Type)> = provider["resource_schemas"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, s)| (k.clone(), block_type(&s["block"])))
        .collect();
    let ty = Type::object(
        resources
            .iter()
            .map(|(k, t)| (k.clone(), Type::list(t.clone()))),
    );
    let value = Value::Object(
        resources
            .iter()
            .map(|(k, t)| (k.clone(), Value::list((0..100).map(|i| fill(t, i)))))
            .collect(),
    );
    (ty, value)
}

fn rust_round(ty: &Type, bytes: &[u8], n: u32) -> (f64, f64) {
    let start = Instant::now();
    let mut value = Value::Null;
    for _ in 0..n {
        value = std::hint::black_box(Value::from_msgpack(bytes, ty).unwrap());
    }
    let decode = start.elapsed().as_nanos() as f64 / f64::from(n);
    let start = Instant::now();
    for _ in 0..n {
        std::hint::black_box(value.to_msgpack(ty).unwrap());
    }
    let encode = start.elapsed().as_nanos() as f64 / f64::from(n);
    (decode, encode)
}

fn go_round(bin: &Path, type_file: &Path, data_file: &Path, n: u32) -> (f64, f64) {
    let out = Command::new(bin)
        .arg("bench")
        .arg(type_file)
        .arg(data_file)
        .arg(n.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let field = |name: &str| -> f64 {
        text.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap()
    };
    (field("decode_ns="), field("encode_ns="))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let ctycheck = build_ctycheck();
    let dir = std::env::temp_dir().join(format!("rpcplugin-cty-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    println!("| value | bytes | decode: ours / go-cty | ratio | encode: ours / go-cty | ratio |");
    println!("|---|---|---|---|---|---|");
    for (name, (ty, value), n) in [
        ("2 000 plan objects", large_value(), 50),
        (
            "terraform-provider-time, 100 states per resource",
            provider_value(),
            100,
        ),
    ] {
        let bytes = value.to_msgpack(&ty).unwrap();
        let (type_file, data_file) = (dir.join("type.json"), dir.join("value.msgpack"));
        std::fs::write(&type_file, ty.to_json()).unwrap();
        std::fs::write(&data_file, &bytes).unwrap();
        let (mut ours, mut theirs) = (vec![], vec![]);
        for _ in 0..3 {
            ours.push(rust_round(&ty, &bytes, n));
            theirs.push(go_round(&ctycheck, &type_file, &data_file, n));
        }
        let (od, oe) = (
            median(ours.iter().map(|r| r.0).collect()),
            median(ours.iter().map(|r| r.1).collect()),
        );
        let (gd, ge) = (
            median(theirs.iter().map(|r| r.0).collect()),
            median(theirs.iter().map(|r| r.1).collect()),
        );
        println!(
            "| {name} | {} | {:.2} / {:.2} ms | {:.2} | {:.2} / {:.2} ms | {:.2} |",
            bytes.len(),
            od / 1e6,
            gd / 1e6,
            od / gd,
            oe / 1e6,
            ge / 1e6,
            oe / ge
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
