//! `rpcplugin call`'s JSON-to-message path (and the reply's way back), for every message type of
//! the protocol's and the example's services.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protobuf::reflect::MessageDescriptor;
use std::sync::OnceLock;

#[path = "../../cli/src/json.rs"]
mod json;

fn messages() -> &'static [MessageDescriptor] {
    static ALL: OnceLock<Vec<MessageDescriptor>> = OnceLock::new();
    ALL.get_or_init(|| {
        use rpcplugin::proto::{health, kv, plugin, reflection};
        [
            health::file_descriptor(),
            kv::file_descriptor(),
            plugin::file_descriptor(),
            reflection::file_descriptor(),
        ]
        .iter()
        .flat_map(|f| f.messages())
        .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let [pick, rest @ ..] = data else { return };
    let all = messages();
    let desc = &all[usize::from(*pick) % all.len()];
    // Reply bytes from the plugin: decoded and rendered, or refused, never a panic.
    let _ = json::reply_to_json(desc, rest);
    // --data from the user: what encodes renders back to JSON that encodes to the same message.
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let Ok(bytes) = json::request_from_json(desc, text) else {
        return;
    };
    let rendered = json::reply_to_json(desc, &bytes)
        .unwrap_or_else(|e| panic!("{text:?} encoded, its bytes do not decode: {e}"));
    let again = json::request_from_json(desc, &rendered)
        .unwrap_or_else(|e| panic!("{text:?} -> {rendered:?} does not encode: {e}"));
    let first = desc.parse_from_bytes(&bytes).unwrap();
    let second = desc.parse_from_bytes(&again).unwrap();
    assert!(desc.eq(&*first, &*second), "{text:?} -> {rendered:?}");
});
