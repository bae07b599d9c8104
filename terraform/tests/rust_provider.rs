//! The client over protocol 6 against a provider written in Rust (tests/support/rust_provider.rs,
//! served with `rpcplugin::server` and this crate's values): nested attributes, refinements,
//! requires_replace, a schema upgrade, a data source, a function, and real files as the side
//! effect to check.

use rpcplugin_terraform::cty::{Number, PathStep, Type, Value};
use rpcplugin_terraform::schema::Nesting;
use rpcplugin_terraform::{ErrorKind, Provider};

fn launch() -> Provider {
    Provider::launch([env!("CARGO_BIN_EXE_rpcplugin-terraform-test-provider")])
        .expect("launching the Rust provider")
}

fn file_config(path: &str, content: &str) -> Value {
    Value::object([
        ("path", Value::from(path)),
        ("content", Value::from(content)),
        (
            "tags",
            Value::list([Value::object([
                ("key", Value::from("team")),
                ("value", Value::from("core")),
            ])]),
        ),
    ])
}

#[test]
fn rust_file_lifecycle_over_protocol_6() {
    let p = launch();
    assert_eq!(p.protocol_version(), 6);
    let schema = &p.schema().resources["rust_file"];
    assert_eq!(schema.version, 1);
    let tags = schema.block.attributes["tags"]
        .nested_type
        .as_ref()
        .expect("tags are nested attributes");
    assert_eq!(tags.nesting, Nesting::List);
    assert_eq!(
        schema.block.implied_type(),
        Type::object([
            ("content", Type::String),
            ("id", Type::String),
            ("path", Type::String),
            ("size", Type::Number),
            (
                "tags",
                Type::list(Type::object([
                    ("key", Type::String),
                    ("value", Type::String)
                ]))
            ),
        ])
    );
    p.validate_provider_config(&Value::object::<&str>([]))
        .unwrap();
    p.configure("1.10.7", &Value::object::<&str>([])).unwrap();

    let err = p
        .validate_resource_config("rust_file", &file_config("relative.txt", "x"))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Diagnostics);
    assert_eq!(
        err.diagnostics()[0].attribute.as_ref().unwrap().0,
        vec![PathStep::Attr("path".into())]
    );
    assert!(
        err.to_string()
            .contains("the path must be absolute (at .path)"),
        "{err}"
    );

    let dir = std::env::temp_dir().join(format!("rpcplugin-tf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("hello.txt");
    let path = path.to_str().unwrap();
    let config = file_config(path, "hello");
    p.validate_resource_config("rust_file", &config).unwrap();

    // Create: id and size unknown, refined (not null; size >= 0), the rest from config.
    let plan = p
        .plan_resource_change("rust_file", &Value::Null, &config, &[])
        .unwrap();
    let Some(Value::Unknown(size)) = plan.planned_state.attr("size") else {
        panic!("size is known at plan: {:?}", plan.planned_state)
    };
    assert!(size.not_null);
    assert_eq!(size.number_lower, Some((Number::from(0), true)));
    assert_eq!(plan.planned_private, b"planned");
    assert!(
        !std::path::Path::new(path).exists(),
        "planning wrote the file"
    );
    let applied = p
        .apply_resource_change("rust_file", &Value::Null, &plan, &config)
        .unwrap();
    assert_eq!(std::fs::read_to_string(path).unwrap(), "hello");
    let state = applied.new_state;
    assert_eq!(
        state
            .attr("size")
            .and_then(Value::as_number)
            .and_then(Number::as_i64),
        Some(5)
    );
    assert_eq!(state.attr("tags"), config.attr("tags"));

    // Update in place: only size becomes unknown.
    let changed = file_config(path, "hello, world");
    let plan = p
        .plan_resource_change("rust_file", &state, &changed, &applied.private)
        .unwrap();
    assert!(plan.requires_replace.is_empty());
    assert_eq!(plan.planned_state.attr("id"), state.attr("id"));
    let applied = p
        .apply_resource_change("rust_file", &state, &plan, &changed)
        .unwrap();
    assert_eq!(std::fs::read_to_string(path).unwrap(), "hello, world");
    let state = applied.new_state;

    // Read sees a change made behind the provider's back; a new path forces a replacement.
    std::fs::write(path, "edited").unwrap();
    let read = p
        .read_resource("rust_file", &state, &applied.private)
        .unwrap();
    assert_eq!(
        read.new_state.attr("content").and_then(Value::as_str),
        Some("edited")
    );
    let moved = file_config(&format!("{path}.2"), "edited");
    let plan = p
        .plan_resource_change("rust_file", &read.new_state, &moved, &[])
        .unwrap();
    assert_eq!(plan.requires_replace.len(), 1);
    assert_eq!(
        plan.requires_replace[0].0,
        vec![PathStep::Attr("path".into())]
    );

    // Data source, import, upgrade from schema version 0, function.
    let info = p
        .read_data_source(
            "rust_file_info",
            &Value::object([("path", Value::from(path))]),
        )
        .unwrap()
        .state;
    assert_eq!(info.attr("exists").and_then(Value::as_bool), Some(true));
    assert_eq!(
        info.attr("size")
            .and_then(Value::as_number)
            .and_then(Number::as_i64),
        Some(6)
    );
    let imported = p
        .import_resource_state("rust_file", path)
        .unwrap()
        .resources;
    assert_eq!(
        imported[0].state.attr("content").and_then(Value::as_str),
        Some("edited")
    );
    let err = p
        .import_resource_state("rust_file", "/no/such/file")
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Diagnostics);
    let old =
        format!(r#"{{"id":"{path}","path":"{path}","contents":"v0 text","size":7,"tags":null}}"#);
    let upgraded = p
        .upgrade_resource_state("rust_file", 0, &old)
        .unwrap()
        .state;
    assert_eq!(
        upgraded.attr("content").and_then(Value::as_str),
        Some("v0 text")
    );
    assert_eq!(
        p.call_function("reverse", &["abc".into()]).unwrap(),
        Value::from("cba")
    );
    // Core's argument rules, applied before any call: an unknown argument for a parameter
    // that does not allow unknowns gives an unknown result; a null one is an argument error;
    // too few arguments are refused.
    assert_eq!(
        p.call_function("reverse", &[Value::unknown()]).unwrap(),
        Value::unknown()
    );
    let err = p.call_function("reverse", &[Value::Null]).unwrap_err();
    assert_eq!(
        (err.kind(), err.function_argument()),
        (ErrorKind::Function, Some(0))
    );
    assert!(err.to_string().contains("must not be null"), "{err}");
    let err = p.call_function("reverse", &[]).unwrap_err();
    assert!(
        err.to_string().contains("takes 1 arguments, got 0"),
        "{err}"
    );
    let err = p.call_function("reverse", &["".into()]).unwrap_err();
    assert_eq!(
        (err.kind(), err.function_argument()),
        (ErrorKind::Function, Some(0))
    );

    // Destroy removes the file.
    let destroy = p
        .plan_resource_change("rust_file", &read.new_state, &Value::Null, &[])
        .unwrap();
    assert!(destroy.planned_state.is_null());
    let gone = p
        .apply_resource_change("rust_file", &read.new_state, &destroy, &Value::Null)
        .unwrap();
    assert!(gone.new_state.is_null());
    assert!(
        !std::path::Path::new(path).exists(),
        "destroy left the file"
    );
    p.stop().unwrap();
    p.close();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn ephemeral_list_and_move_over_protocol_6() {
    let p = launch();
    p.configure("1.10.7", &Value::object::<&str>([])).unwrap();

    // Ephemeral: open, renew twice with the bytes each step returns, close.
    let config = Value::object([("name", Value::from("db"))]);
    // The provider does not implement the validation: gRPC UNIMPLEMENTED is its own kind.
    let err = p
        .validate_ephemeral_resource_config("rust_token", &config)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    let opened = p.open_ephemeral_resource("rust_token", &config).unwrap();
    assert_eq!(
        opened.result.attr("token").and_then(Value::as_str),
        Some("token-for-db")
    );
    let epoch = |secs| std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    assert_eq!(opened.renew_at, Some(epoch(4_102_444_800)));
    let renewed = p
        .renew_ephemeral_resource("rust_token", opened.private.as_deref())
        .unwrap();
    assert_eq!(renewed.private.as_deref(), Some(&b"lease:db:1"[..]));
    let renewed = p
        .renew_ephemeral_resource("rust_token", renewed.private.as_deref())
        .unwrap();
    assert_eq!(renewed.private.as_deref(), Some(&b"lease:db:2"[..]));
    assert_eq!(renewed.renew_at, Some(epoch(4_102_448_400)));
    p.close_ephemeral_resource("rust_token", renewed.private.as_deref())
        .unwrap();
    let err = p.close_ephemeral_resource("rust_token", None).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Diagnostics);
    let err = p.open_ephemeral_resource("rust_nope", &config).unwrap_err();
    assert!(
        err.to_string()
            .contains("no ephemeral resource type \"rust_nope\"; it has rust_token"),
        "{err}"
    );

    // List: a directory of three files, identities typed by the identity schema.
    let dir = std::env::temp_dir().join(format!("rpcplugin-tf-list-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["a.txt", "b.txt", "c.txt"] {
        std::fs::write(dir.join(name), name).unwrap();
    }
    assert_eq!(
        p.identity_types().unwrap()["rust_file"],
        Type::object([("path", Type::String)])
    );
    let config = Value::object([("dir", Value::from(dir.to_str().unwrap()))]);
    let listed: Vec<_> = p
        .list_resource("rust_file", &config, true, 2)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(listed.len(), 2, "the limit is 2");
    assert_eq!(listed[0].display_name, "a.txt");
    let path_a = dir.join("a.txt").to_str().unwrap().to_owned();
    assert_eq!(
        listed[0].identity,
        Value::object([("path", Value::from(path_a.as_str()))])
    );
    let object = listed[1]
        .resource_object
        .as_ref()
        .expect("asked for the objects");
    assert_eq!(
        object.attr("content").and_then(Value::as_str),
        Some("b.txt")
    );
    let without: Vec<_> = p
        .list_resource("rust_file", &config, false, 10)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(without.len(), 3);
    assert!(without.iter().all(|l| l.resource_object.is_none()));
    // An event with an error diagnostic is an Err item that names the attribute.
    let missing = Value::object([("dir", Value::from("/no/such/dir"))]);
    let items: Vec<_> = p
        .list_resource("rust_file", &missing, false, 10)
        .unwrap()
        .collect();
    assert_eq!(items.len(), 1);
    let err = items.into_iter().next().unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Diagnostics);
    assert!(err.to_string().contains("(at .dir)"), "{err}");

    // Move a state from another resource type.
    let legacy = format!(r#"{{"filename":"{path_a}","body":"old body"}}"#);
    let moved = p
        .move_resource_state(
            "registry.terraform.io/example/legacy",
            "legacy_file",
            0,
            &legacy,
            b"keep",
            "rust_file",
        )
        .unwrap();
    assert_eq!(
        moved.target_state.attr("content").and_then(Value::as_str),
        Some("old body")
    );
    assert_eq!(
        moved
            .target_state
            .attr("size")
            .and_then(Value::as_number)
            .and_then(Number::as_i64),
        Some(8)
    );
    assert_eq!(moved.target_private, b"keep");
    let err = p
        .move_resource_state("x", "other_file", 0, "{}", &[], "rust_file")
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot move other_file to rust_file"),
        "{err}"
    );
    p.close();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn provider_meta_is_sent_with_plans() {
    let config = file_config("/tmp/never-written", "x");
    let p = launch();
    assert!(p.schema().provider_meta.is_some());
    p.plan_resource_change("rust_file", &Value::Null, &config, &[])
        .unwrap();
    let p = p.with_provider_meta(Value::object([("module_name", Value::from("refuse"))]));
    let err = p
        .plan_resource_change("rust_file", &Value::Null, &config, &[])
        .unwrap_err();
    assert!(
        err.to_string().contains("the module refuses plans"),
        "{err}"
    );
    let err = p
        .with_provider_meta(Value::from("not an object"))
        .plan_resource_change("rust_file", &Value::Null, &config, &[])
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Value, "{err}");
}
