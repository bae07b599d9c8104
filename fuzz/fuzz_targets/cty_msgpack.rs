//! A provider's DynamicValue bytes, decoded with a schema type as the Terraform client does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rpcplugin_cty::{Type, Value};

/// Types a schema has: primitives, collections, objects, tuples, dynamic, nested.
fn types() -> Vec<Type> {
    let object = Type::object([
        ("id", Type::String),
        ("n", Type::Number),
        ("tags", Type::map(Type::String)),
        ("any", Type::Dynamic),
    ]);
    vec![
        Type::String,
        Type::Number,
        Type::Bool,
        Type::Dynamic,
        Type::list(Type::Number),
        Type::set(Type::String),
        Type::map(Type::Dynamic),
        Type::tuple([Type::String, Type::Number, Type::Bool]),
        object.clone(),
        Type::list(object),
    ]
}

fuzz_target!(|data: &[u8]| {
    let [pick, bytes @ ..] = data else { return };
    let all = types();
    let ty = &all[usize::from(*pick) % all.len()];
    // Untrusted bytes: a value or an error, never a panic.
    let Ok(value) = Value::from_msgpack(bytes, ty) else {
        return;
    };
    // What decodes encodes, and decodes back to the same value (sets keep the wire's order).
    let encoded = value
        .to_msgpack(ty)
        .unwrap_or_else(|e| panic!("{value:?} decoded as {ty} but does not encode: {e}"));
    let again = Value::from_msgpack(&encoded, ty)
        .unwrap_or_else(|e| panic!("our own encoding of {value:?} does not decode: {e}"));
    assert_eq!(again, value, "{ty}");
    // JSON, where it can carry the value, round-trips too (numbers by value).
    if let Ok(json) = value.to_json(ty) {
        let back = Value::from_json(&json, ty)
            .unwrap_or_else(|e| panic!("our JSON {json} of {value:?} does not decode: {e}"));
        assert_eq!(back.to_json(ty).unwrap(), json);
    }
});
