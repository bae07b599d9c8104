//! The cty codecs against go-cty itself (tests/interop/go/ctycheck, go-cty v1.16.3, the version
//! OpenTofu 1.10 ships): proptest-generated types and values, unknowns and refinements included,
//! go both ways through msgpack and JSON, and the bytes must agree.
//!
//! The inputs come from a fixed seed, so a failure reproduces; `CTY_CHECK_CASES=N` and
//! `CTY_CHECK_SEED=S` run more or other cases.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use rpcplugin_cty::{Number, Refinements, Type, Value};

const SKIP_INTEROP: &str = "RPCPLUGIN_SKIP_INTEROP";

/// Builds ctycheck with Go (from the module proxy); None only when the run opted out.
fn ctycheck() -> Option<PathBuf> {
    if std::env::var(SKIP_INTEROP).is_ok_and(|v| v == "1" || v.split(',').any(|p| p.trim() == "go"))
    {
        eprintln!("\n!!! SKIPPING the go-cty cross-check: {SKIP_INTEROP} is set !!!\n");
        return None;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let src = root.join("tests/interop/go/ctycheck");
    let out = root.join("target/interop/ctycheck");
    let go = ["go", "/usr/local/go/bin/go"]
        .into_iter()
        .find(|go| Command::new(go).arg("version").output().is_ok_and(|o| o.status.success()))
        .unwrap_or_else(|| panic!("Go is required for the go-cty cross-check; opt out explicitly with {SKIP_INTEROP}=1"));
    let status = Command::new(go)
        .args(["build", "-o"])
        .arg(&out)
        .arg(".")
        .current_dir(&src)
        .status()
        .expect("running go build");
    assert!(
        status.success(),
        "go build of {} failed: {status}",
        src.display()
    );
    Some(out)
}

#[derive(Debug, Default, serde::Deserialize)]
struct Answer {
    #[serde(default)]
    msgpack: String,
    #[serde(default)]
    json: Option<String>,
    #[serde(default)]
    json_error: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

/// Sends every request to one ctycheck process and returns its answers in order.
fn ask_go(bin: &Path, requests: &[serde_json::Value]) -> Vec<Answer> {
    let mut child = Command::new(bin)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting ctycheck");
    let mut stdin = child.stdin.take().unwrap();
    let lines: String = requests.iter().map(|r| format!("{r}\n")).collect();
    let writer = std::thread::spawn(move || stdin.write_all(lines.as_bytes()));
    let answers: Vec<Answer> = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map(|l| serde_json::from_str(&l.expect("reading ctycheck")).expect("ctycheck's answer"))
        .collect();
    writer.join().unwrap().expect("writing to ctycheck");
    assert!(child.wait().unwrap().success());
    assert_eq!(
        answers.len(),
        requests.len(),
        "ctycheck answered {} of {}",
        answers.len(),
        requests.len()
    );
    answers
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn concrete_type() -> impl Strategy<Value = Type> {
    let leaf = prop_oneof![Just(Type::String), Just(Type::Number), Just(Type::Bool)];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            inner.clone().prop_map(Type::list),
            inner.clone().prop_map(Type::set),
            inner.clone().prop_map(Type::map),
            prop::collection::btree_map(attr_name(), inner.clone(), 0..3).prop_map(Type::object),
            prop::collection::vec(inner, 0..3).prop_map(Type::Tuple),
        ]
    })
}

fn any_type() -> impl Strategy<Value = Type> {
    let leaf = prop_oneof![
        Just(Type::String),
        Just(Type::Number),
        Just(Type::Bool),
        Just(Type::Dynamic)
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            inner.clone().prop_map(Type::list),
            inner.clone().prop_map(Type::set),
            inner.clone().prop_map(Type::map),
            prop::collection::btree_map(attr_name(), inner.clone(), 0..4).prop_map(Type::object),
            prop::collection::vec(inner, 0..4).prop_map(Type::Tuple),
        ]
    })
}

fn attr_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("id".to_owned()),
        Just("a".to_owned()),
        Just("b".to_owned()),
        Just("x y".to_owned()),
        Just("<é>".to_owned()),
        "[a-z_]{1,6}"
    ]
}

/// Strings as Terraform holds them: NFC (go-cty normalizes on creation; precomposed é only).
fn string() -> impl Strategy<Value = String> {
    "[a-z0-9 <>&\"\\\\\n\t\u{1}é\u{2028}日]{0,10}"
}

fn number() -> impl Strategy<Value = Number> {
    prop_oneof![
        any::<i64>().prop_map(Number::from),
        (-300i64..300).prop_map(Number::from),
        any::<u64>().prop_map(Number::from),
        // Non-integer float64s: the ones msgpack carries as cb …
        (any::<i32>(), 1u32..60).prop_map(|(m, k)| Number::from_f64(
            f64::from(m) / 2f64.powi(k as i32) + 0.5f64.powi(61)
        )
        .unwrap()),
        any::<f64>().prop_filter_map("finite", |f| f
            .is_finite()
            .then(|| Number::from_f64(f))
            .flatten()),
        // Decimals from text: some exactly float64s (0.5, 1.25), most not (0.1), big integers.
        ("-?[1-9][0-9]{0,29}", -25i64..25)
            .prop_map(|(d, e)| Number::parse(&format!("{d}e{e}")).unwrap()),
        prop_oneof![Just(Number::INFINITY), Just(Number::NEG_INFINITY)],
    ]
}

fn refinements(ty: &Type) -> BoxedStrategy<Refinements> {
    let not_null = any::<bool>();
    match ty {
        Type::Dynamic => Just(Refinements::default()).boxed(),
        Type::String => (not_null, prop::option::of("[a-z<]{1,8}"))
            .prop_map(|(not_null, string_prefix)| Refinements {
                not_null,
                string_prefix,
                ..Default::default()
            })
            .boxed(),
        Type::Number => (
            not_null,
            -1000i64..1000,
            1i64..1000,
            any::<(bool, bool)>(),
            0..3u8,
        )
            .prop_map(
                |(not_null, lo, width, (lo_inc, hi_inc), which)| Refinements {
                    not_null,
                    number_lower: (which != 1).then(|| (Number::from(lo), lo_inc)),
                    number_upper: (which != 0).then(|| (Number::from(lo + width), hi_inc)),
                    ..Default::default()
                },
            )
            .boxed(),
        Type::List(_) | Type::Set(_) | Type::Map(_) => (not_null, 1u64..5, 1u64..5, 0..3u8)
            .prop_map(|(not_null, lo, width, which)| Refinements {
                not_null,
                length_lower: (which != 1).then_some(lo),
                length_upper: (which != 0).then_some(lo + width),
                ..Default::default()
            })
            .boxed(),
        _ => not_null
            .prop_map(|not_null| Refinements {
                not_null,
                ..Default::default()
            })
            .boxed(),
    }
}

/// Replaces each `dynamic` in `ty` with a concrete type: what the values in that slot will be.
fn concretize(ty: &Type) -> BoxedStrategy<Type> {
    match ty {
        Type::Dynamic => concrete_type().boxed(),
        Type::List(e) => concretize(e).prop_map(Type::list).boxed(),
        Type::Set(e) => concretize(e).prop_map(Type::set).boxed(),
        Type::Map(e) => concretize(e).prop_map(Type::map).boxed(),
        Type::Tuple(ts) => ts
            .iter()
            .map(concretize)
            .collect::<Vec<_>>()
            .prop_map(Type::Tuple)
            .boxed(),
        Type::Object { attributes, .. } => {
            let names: Vec<String> = attributes.keys().cloned().collect();
            let types: Vec<_> = attributes.values().map(concretize).collect();
            types
                .prop_map(move |ts| Type::object(names.clone().into_iter().zip(ts)))
                .boxed()
        }
        t => Just(t.clone()).boxed(),
    }
}

/// A value for a slot of type `slot` whose dynamic parts hold values of `concrete`'s types.
/// Collection elements share one concrete type, as go-cty requires: inside one (`typed`), a
/// dynamic slot never holds a null or unknown of no type, which go-cty would give the element
/// type; inside a set, nothing is null or unknown. And inside one, a slot whose type has a
/// dynamic part holds a known value, non-empty if a collection: go-cty gives such a null or empty
/// collection a type with `dynamic` in it, which differs from its siblings' types, and panics.
fn value(slot: &Type, concrete: &Type, in_set: bool) -> BoxedStrategy<Value> {
    value_in(slot, concrete, in_set, in_set)
}

fn value_in(slot: &Type, concrete: &Type, in_set: bool, typed: bool) -> BoxedStrategy<Value> {
    let value = |s: &Type, c: &Type, in_set: bool| value_in(s, c, in_set, typed);
    let element = |s: &Type, c: &Type, in_set: bool| value_in(s, c, in_set, true);
    let lone = typed && slot.contains_dynamic();
    let min = usize::from(lone);
    if *slot == Type::Dynamic {
        let c = concrete.clone();
        let inner = value(concrete, concrete, in_set);
        let typed_value = inner.prop_map(move |v| Value::dynamic(c.clone(), v));
        if typed {
            return typed_value.boxed();
        }
        let typed = typed_value;
        return prop_oneof![8 => typed, 1 => Just(Value::Null), 1 => Just(Value::unknown())]
            .boxed();
    }
    let known = match (slot, concrete) {
        (Type::String, _) => string().prop_map(Value::String).boxed(),
        (Type::Number, _) if in_set => number()
            .prop_filter("finite in a set", |n| !n.is_infinite())
            .prop_map(Value::Number)
            .boxed(),
        (Type::Number, _) => number().prop_map(Value::Number).boxed(),
        (Type::Bool, _) => any::<bool>().prop_map(Value::Bool).boxed(),
        (Type::List(e), Type::List(c)) => prop::collection::vec(element(e, c, in_set), min..4)
            .prop_map(Value::List)
            .boxed(),
        (Type::Set(e), Type::Set(c)) => {
            prop::collection::vec(element(e, c, true), min..4)
                .prop_map(move |vs| {
                    // Distinct elements, as a set holds them (sets in sets compare as sets).
                    let mut seen = std::collections::BTreeSet::new();
                    Value::Set(
                        vs.into_iter()
                            .filter(|v| seen.insert(format!("{:?}", canonical(v))))
                            .collect(),
                    )
                })
                .boxed()
        }
        (Type::Map(e), Type::Map(c)) => {
            prop::collection::btree_map(attr_name(), element(e, c, in_set), min..4)
                .prop_map(Value::Map)
                .boxed()
        }
        (Type::Tuple(ts), Type::Tuple(cs)) => ts
            .iter()
            .zip(cs)
            .map(|(t, c)| value(t, c, in_set))
            .collect::<Vec<_>>()
            .prop_map(Value::Tuple)
            .boxed(),
        (Type::Object { attributes, .. }, Type::Object { attributes: cs, .. }) => {
            let names: Vec<String> = attributes.keys().cloned().collect();
            let vs: Vec<_> = attributes
                .iter()
                .map(|(k, t)| value(t, &cs[k], in_set))
                .collect();
            vs.prop_map(move |vs| Value::Object(names.clone().into_iter().zip(vs).collect()))
                .boxed()
        }
        (s, c) => panic!("{c} is not a concrete form of {s}"),
    };
    if in_set || lone {
        return known;
    }
    let unknown = refinements(slot).prop_map(Value::Unknown);
    prop_oneof![8 => known, 1 => Just(Value::Null), 1 => unknown].boxed()
}

fn case() -> impl Strategy<Value = (Type, Value)> {
    any_type().prop_flat_map(|ty| {
        let t = ty.clone();
        concretize(&ty).prop_flat_map(move |c| {
            let t = t.clone();
            value(&t, &c, false).prop_map(move |v| (t.clone(), v))
        })
    })
}

/// Sets compare as sets: elements in a fixed order.
fn canonical(v: &Value) -> Value {
    match v {
        Value::Set(vs) => {
            let mut vs: Vec<Value> = vs.iter().map(canonical).collect();
            vs.sort_by_key(|v| format!("{v:?}"));
            Value::Set(vs)
        }
        Value::List(vs) => Value::List(vs.iter().map(canonical).collect()),
        Value::Tuple(vs) => Value::Tuple(vs.iter().map(canonical).collect()),
        Value::Map(m) => Value::Map(m.iter().map(|(k, v)| (k.clone(), canonical(v))).collect()),
        Value::Object(m) => {
            Value::Object(m.iter().map(|(k, v)| (k.clone(), canonical(v))).collect())
        }
        Value::Dynamic(t, v) => Value::dynamic(t.clone(), canonical(v)),
        v => v.clone(),
    }
}

fn has_set(ty: &Type) -> bool {
    match ty {
        Type::Set(_) => true,
        Type::List(e) | Type::Map(e) => has_set(e),
        Type::Tuple(ts) => ts.iter().any(has_set),
        Type::Object { attributes, .. } => attributes.values().any(has_set),
        _ => false,
    }
}

/// Whether go-cty may reorder something in this value: a set in its type or in a dynamic part.
fn may_reorder(ty: &Type, v: &Value) -> bool {
    fn in_value(v: &Value) -> bool {
        match v {
            Value::Dynamic(t, v) => has_set(t) || in_value(v),
            Value::List(vs) | Value::Set(vs) | Value::Tuple(vs) => vs.iter().any(in_value),
            Value::Map(m) | Value::Object(m) => m.values().any(in_value),
            _ => false,
        }
    }
    has_set(ty) || in_value(v)
}

fn cases() -> Vec<(Type, Value)> {
    let count: usize = std::env::var("CTY_CHECK_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2000);
    let seed: u64 = std::env::var("CTY_CHECK_SEED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2026);
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes);
    let mut runner = TestRunner::new_with_rng(Config::default(), rng);
    let strategy = case();
    (0..count)
        .map(|_| strategy.new_tree(&mut runner).unwrap().current())
        .collect()
}

#[test]
fn msgpack_and_json_agree_with_go_cty_both_ways() {
    let Some(bin) = ctycheck() else { return };
    let cases = cases();
    let encoded: Vec<Vec<u8>> = cases
        .iter()
        .map(|(ty, v)| {
            v.to_msgpack(ty)
                .unwrap_or_else(|e| panic!("encoding {v:?} as {ty}: {e}"))
        })
        .collect();
    let requests: Vec<serde_json::Value> = cases
        .iter()
        .zip(&encoded)
        .map(|((ty, _), bytes)| {
            serde_json::json!({ "type": serde_json::from_str::<serde_json::Value>(&ty.to_json()).unwrap(), "msgpack": hex(bytes) })
        })
        .collect();
    let answers = ask_go(&bin, &requests);
    let mut json_requests = Vec::new();
    let mut json_cases = Vec::new();
    let (mut unknowns, mut sets, mut dynamics) = (0, 0, 0);
    for (((ty, ours), bytes), go) in cases.iter().zip(&encoded).zip(&answers) {
        let what = format!("type {ty}\nvalue {ours:?}\nour msgpack {}", hex(bytes));
        assert_eq!(go.error, None, "go-cty refused our msgpack:\n{what}");
        if !may_reorder(ty, ours) {
            assert_eq!(
                go.msgpack,
                hex(bytes),
                "go-cty re-encodes our msgpack differently:\n{what}"
            );
        }
        let go_bytes = unhex(&go.msgpack);
        let theirs = Value::from_msgpack(&go_bytes, ty)
            .unwrap_or_else(|e| panic!("go-cty's msgpack {}: {e}\n{what}", go.msgpack));
        assert_eq!(
            canonical(&theirs),
            canonical(ours),
            "the value changed on its way through go-cty:\n{what}"
        );
        assert_eq!(
            hex(&theirs.to_msgpack(ty).unwrap()),
            go.msgpack,
            "we re-encode go-cty's msgpack differently:\n{what}"
        );
        match (theirs.to_json(ty), &go.json, &go.json_error) {
            (Ok(json), Some(go_json), None) => {
                assert_eq!(&json, go_json, "JSON differs:\n{what}");
                json_requests.push(serde_json::json!({
                    "type": serde_json::from_str::<serde_json::Value>(&ty.to_json()).unwrap(),
                    "json": json,
                }));
                json_cases.push((ty, json, may_reorder(ty, ours)));
            }
            (Err(_), None, Some(_)) => {}
            (ours, go_json, go_err) => {
                panic!("JSON: ours {ours:?}, go-cty's {go_json:?} / {go_err:?}\n{what}")
            }
        }
        unknowns += usize::from(!ours.is_wholly_known());
        sets += usize::from(may_reorder(ty, ours));
        dynamics += usize::from(ty.contains_dynamic());
    }
    // JSON decoding: the same text, decoded by each side, encodes to the same msgpack.
    let answers = ask_go(&bin, &json_requests);
    for ((ty, json, reorders), go) in json_cases.iter().zip(&answers) {
        assert_eq!(go.error, None, "go-cty refused our JSON {json} as {ty}");
        let ours =
            Value::from_json(json, ty).unwrap_or_else(|e| panic!("decoding {json} as {ty}: {e}"));
        if !reorders {
            assert_eq!(
                hex(&ours.to_msgpack(ty).unwrap()),
                go.msgpack,
                "JSON {json} as {ty} decodes differently"
            );
        }
    }
    eprintln!(
        "{} cases checked against go-cty ({} with unknowns, {} with sets, {} with dynamic; {} through JSON)",
        cases.len(),
        unknowns,
        sets,
        dynamics,
        json_cases.len()
    );
    assert!(
        unknowns > 50 && sets > 50 && dynamics > 50 && json_cases.len() > 100,
        "the generator lost its spread"
    );
}

#[test]
fn numbers_take_the_form_go_cty_gives_them() {
    let Some(bin) = ctycheck() else { return };
    // Hand-picked edges: i64 ends, u64 ends, 2^53±1, exact and inexact fractions, big decimals.
    let texts = [
        "0",
        "-1",
        "127",
        "128",
        "255",
        "256",
        "-32",
        "-33",
        "-128",
        "-129",
        "65535",
        "65536",
        "4294967295",
        "4294967296",
        "9223372036854775807",
        "-9223372036854775808",
        "9223372036854775808",
        "18446744073709551615",
        "18446744073709551616",
        "9007199254740993",
        "0.5",
        "0.1",
        "1.25",
        "-2.75",
        "1e300",
        "1e-7",
        "123456789.123456789",
        "3.0000000000000000001",
    ];
    let ty = Type::Number;
    let mut requests = Vec::new();
    for text in texts {
        let v = Value::Number(Number::parse(text).unwrap());
        requests.push(
            serde_json::json!({ "type": "number", "msgpack": hex(&v.to_msgpack(&ty).unwrap()) }),
        );
        requests.push(serde_json::json!({ "type": "number", "json": text }));
    }
    let answers = ask_go(&bin, &requests);
    for (text, pair) in texts.iter().zip(answers.chunks(2)) {
        let v = Value::Number(Number::parse(text).unwrap());
        let ours = hex(&v.to_msgpack(&ty).unwrap());
        assert_eq!(pair[0].msgpack, ours, "{text} through msgpack");
        assert_eq!(pair[1].msgpack, ours, "{text} from JSON");
        assert_eq!(
            pair[1].json.as_deref(),
            Some(v.to_json(&ty).unwrap().as_str()),
            "{text} as JSON"
        );
    }
}
