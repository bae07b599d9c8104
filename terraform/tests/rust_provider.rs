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
        .unwrap();
    assert_eq!(info.attr("exists").and_then(Value::as_bool), Some(true));
    assert_eq!(
        info.attr("size")
            .and_then(Value::as_number)
            .and_then(Number::as_i64),
        Some(6)
    );
    let imported = p.import_resource_state("rust_file", path).unwrap();
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
    let upgraded = p.upgrade_resource_state("rust_file", 0, &old).unwrap();
    assert_eq!(
        upgraded.attr("content").and_then(Value::as_str),
        Some("v0 text")
    );
    assert_eq!(
        p.call_function("reverse", &["abc".into()]).unwrap(),
        Value::from("cba")
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
