//! The whole lifecycle against a real provider: terraform-provider-time v0.14.2, built with Go
//! from the module proxy (a terraform-plugin-framework provider speaking protocol 5). No network
//! is used by the provider itself. What is asserted is what Terraform core would see: computed
//! attributes unknown at plan, known after apply, null after destroy.

use std::path::Path;

use rpcplugin_terraform::cty::{Number, PathStep, Value};
use rpcplugin_terraform::{ErrorKind, Provider};

mod common;

fn launch() -> Option<Provider> {
    let bin = common::time_provider()?;
    Some(
        Provider::launch([bin])
            .unwrap_or_else(|e| panic!("launching terraform-provider-time: {e}")),
    )
}

fn num(v: &Value, name: &str) -> i64 {
    v.attr(name)
        .and_then(Value::as_number)
        .and_then(Number::as_i64)
        .unwrap_or_else(|| panic!("{name} is not a known integer in {v:?}"))
}

fn string<'v>(v: &'v Value, name: &str) -> &'v str {
    v.attr(name)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{name} is not a known string in {v:?}"))
}

#[test]
fn schema_and_capabilities_over_protocol_5() {
    let Some(p) = launch() else { return };
    assert_eq!(
        p.protocol_version(),
        5,
        "terraform-provider-time serves protocol 5 only"
    );
    let schema = p.schema();
    for t in ["time_offset", "time_rotating", "time_sleep", "time_static"] {
        assert!(
            schema.resources.contains_key(t),
            "no {t} in {:?}",
            schema.resources.keys()
        );
    }
    assert!(schema.data_sources.is_empty());
    let caps = schema.server_capabilities;
    assert!(
        caps.plan_destroy && caps.get_provider_schema_optional && caps.move_resource_state,
        "{caps:?}"
    );
    let s = &schema.resources["time_static"];
    assert_eq!(s.version, 0);
    assert_eq!(
        s.block.implied_type().to_json(),
        r#"["object",{"day":"number","hour":"number","id":"string","minute":"number","month":"number","rfc3339":"string","second":"number","triggers":["map","string"],"unix":"number","year":"number"}]"#
    );
    let rfc3339 = &s.block.attributes["rfc3339"];
    assert!(rfc3339.optional && rfc3339.computed && !rfc3339.required);
    assert!(!s.block.description.is_empty());
    for f in ["duration_parse", "rfc3339_parse", "unix_timestamp_parse"] {
        assert!(schema.functions.contains_key(f), "no function {f}");
    }
    // A second process of the same binary takes the schema from the cache (the provider allows
    // it), as Terraform does within one run.
    let Some(again) = launch() else { return };
    assert!(
        std::ptr::eq(p.schema(), again.schema()),
        "the schema was fetched again"
    );
    let pid = p.plugin().pid().unwrap();
    p.close();
    again.close();
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the provider process {pid} outlived close"
    );
}

#[test]
fn time_static_create_read_noop_destroy() {
    let Some(p) = launch() else { return };
    p.configure("1.10.7", &Value::object::<&str>([])).unwrap();
    let t = "time_static";
    let config = Value::object::<&str>([]); // every attribute null, as `resource "time_static" "t" {}`
    p.validate_resource_config(t, &config).unwrap();

    let plan = p
        .plan_resource_change(t, &Value::Null, &config, &[])
        .unwrap();
    for computed in [
        "day", "hour", "id", "minute", "month", "rfc3339", "second", "unix", "year",
    ] {
        assert!(
            !plan.planned_state.attr(computed).unwrap().is_known(),
            "{computed} is known at plan: {:?}",
            plan.planned_state
        );
    }
    assert!(plan.planned_state.attr("triggers").unwrap().is_null());
    assert!(plan.requires_replace.is_empty());

    let applied = p
        .apply_resource_change(t, &Value::Null, &plan, &config)
        .unwrap();
    let state = &applied.new_state;
    assert!(state.is_wholly_known());
    assert_eq!(string(state, "id"), string(state, "rfc3339"));
    assert!(num(state, "year") >= 2026, "{state:?}");
    assert!((1..=12).contains(&num(state, "month")));
    assert!(num(state, "unix") > 1_780_000_000);

    let read = p.read_resource(t, state, &applied.private).unwrap();
    assert_eq!(&read.new_state, state, "Read changed a time_static");
    // A later plan with the same configuration changes nothing.
    let again = p
        .plan_resource_change(t, state, &config, &read.private)
        .unwrap();
    assert_eq!(&again.planned_state, state);

    // Changing `triggers` forces a replacement, and the plan says which paths: `triggers`, and
    // `rfc3339`, which the framework made unknown (computed, null in config, planned != prior).
    let triggered = Value::object([("triggers", Value::map([("k", Value::from("v"))]))]);
    let plan = p.plan_resource_change(t, state, &triggered, &[]).unwrap();
    let paths: Vec<&[PathStep]> = plan.requires_replace.iter().map(|p| &p.0[..]).collect();
    assert_eq!(
        paths,
        [
            &[PathStep::Attr("rfc3339".into())][..],
            &[PathStep::Attr("triggers".into())][..]
        ]
    );
    assert!(!plan.planned_state.attr("rfc3339").unwrap().is_known());

    // Destroy: config null, planned null (the provider has plan_destroy), new state null.
    let destroy = p
        .plan_resource_change(t, state, &Value::Null, &read.private)
        .unwrap();
    assert!(destroy.planned_state.is_null());
    let gone = p
        .apply_resource_change(t, state, &destroy, &Value::Null)
        .unwrap();
    assert!(gone.new_state.is_null());
    p.close();
}

#[test]
fn time_static_with_a_fixed_time_is_known_at_plan() {
    let Some(p) = launch() else { return };
    p.configure("1.10.7", &Value::object::<&str>([])).unwrap();
    let config = Value::object([("rfc3339", Value::from("2024-01-01T00:00:00Z"))]);
    let plan = p
        .plan_resource_change("time_static", &Value::Null, &config, &[])
        .unwrap();
    let planned = &plan.planned_state;
    assert_eq!(num(planned, "year"), 2024);
    assert_eq!(num(planned, "unix"), 1_704_067_200);
    assert_eq!(string(planned, "id"), "2024-01-01T00:00:00Z");
    let applied = p
        .apply_resource_change("time_static", &Value::Null, &plan, &config)
        .unwrap();
    assert_eq!(
        &applied.new_state, planned,
        "apply differs from a wholly known plan"
    );
    p.close();
}

#[test]
fn time_offset_and_time_rotating() {
    let Some(p) = launch() else { return };
    p.configure("1.10.7", &Value::object::<&str>([])).unwrap();

    // No offset at all: the provider's validator says so, and names no attribute path it can't.
    let err = p
        .validate_resource_config("time_offset", &Value::object::<&str>([]))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Diagnostics, "{err}");
    assert!(
        err.diagnostics().iter().any(|d| d.is_error()),
        "{:?}",
        err.diagnostics()
    );

    let config = Value::object([
        ("base_rfc3339", Value::from("2026-09-20T17:58:38Z")),
        ("offset_days", Value::from(7)),
    ]);
    p.validate_resource_config("time_offset", &config).unwrap();
    let plan = p
        .plan_resource_change("time_offset", &Value::Null, &config, &[])
        .unwrap();
    assert!(!plan.planned_state.attr("rfc3339").unwrap().is_known());
    let applied = p
        .apply_resource_change("time_offset", &Value::Null, &plan, &config)
        .unwrap();
    let state = &applied.new_state;
    assert_eq!(string(state, "rfc3339"), "2026-09-27T17:58:38Z");
    assert_eq!(
        string(state, "id"),
        "2026-09-20T17:58:38Z",
        "id is the base time"
    );
    assert_eq!(num(state, "unix"), 1_790_531_918);
    assert_eq!(num(state, "day"), 27);
    assert_eq!(num(state, "offset_days"), 7);

    let config = Value::object([
        ("rfc3339", Value::from("2026-01-01T00:00:00Z")),
        ("rotation_days", Value::from(30)),
    ]);
    let plan = p
        .plan_resource_change("time_rotating", &Value::Null, &config, &[])
        .unwrap();
    let applied = p
        .apply_resource_change("time_rotating", &Value::Null, &plan, &config)
        .unwrap();
    assert_eq!(
        string(&applied.new_state, "rotation_rfc3339"),
        "2026-01-31T00:00:00Z"
    );
    // The rotation time has passed (it is December 2026 or later), so Read removes it from state.
    let read = p
        .read_resource("time_rotating", &applied.new_state, &applied.private)
        .unwrap();
    assert!(
        read.new_state.is_null(),
        "a passed rotation is still in state: {:?}",
        read.new_state
    );
    p.close();
}

#[test]
fn import_upgrade_and_functions() {
    let Some(p) = launch() else { return };
    p.configure("1.10.7", &Value::object::<&str>([])).unwrap();

    let imported = p
        .import_resource_state("time_static", "2024-02-29T12:34:56Z")
        .unwrap()
        .resources;
    assert_eq!(imported.len(), 1);
    assert_eq!(imported[0].type_name, "time_static");
    let state = &imported[0].state;
    assert_eq!(num(state, "year"), 2024);
    assert_eq!(num(state, "day"), 29);
    assert_eq!(
        state.attr("triggers"),
        Some(&Value::Map(Default::default())),
        "import sets triggers to {{}}"
    );

    // A stored state (schema version 0, the current one: Terraform upgrades it anyway).
    let raw = r#"{"day":20,"hour":17,"id":"2026-09-20T17:58:38Z","minute":58,"month":9,"rfc3339":"2026-09-20T17:58:38Z","second":38,"triggers":null,"unix":1789927118,"year":2026}"#;
    let upgraded = p
        .upgrade_resource_state("time_static", 0, raw)
        .unwrap()
        .state;
    assert_eq!(num(&upgraded, "unix"), 1_789_927_118);
    assert_eq!(string(&upgraded, "id"), "2026-09-20T17:58:38Z");
    assert!(upgraded.attr("triggers").unwrap().is_null());

    let parsed = p
        .call_function("rfc3339_parse", &["2024-02-29T12:34:56Z".into()])
        .unwrap();
    assert_eq!(num(&parsed, "year"), 2024);
    assert_eq!(num(&parsed, "year_day"), 60);
    assert_eq!(string(&parsed, "weekday_name"), "Thursday");
    assert_eq!(string(&parsed, "month_name"), "February");
    let err = p
        .call_function("rfc3339_parse", &["yesterday".into()])
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Function, "{err}");
    assert_eq!(err.function_argument(), Some(0));
    let d = p
        .call_function("duration_parse", &["1h30m".into()])
        .unwrap();
    assert_eq!(
        d.attr("hours")
            .and_then(Value::as_number)
            .map(Number::as_f64),
        Some(1.5)
    );
    assert_eq!(num(&d, "milliseconds"), 5_400_000);
    let err = p.call_function("no_such_function", &[]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Schema);
    assert!(err.to_string().contains("duration_parse"), "{err}");
    let err = p
        .plan_resource_change("time_nope", &Value::Null, &Value::Null, &[])
        .unwrap_err();
    assert!(
        err.to_string().contains("no resource type \"time_nope\""),
        "{err}"
    );
    p.stop().unwrap();
    p.close();
}
