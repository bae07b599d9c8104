//! `TF_REATTACH_PROVIDERS`: what parses renders back to JSON that parses to the same configs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rpcplugin::ReattachConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(json) = std::str::from_utf8(data) else {
        return;
    };
    match ReattachConfig::from_tf_reattach_providers(json) {
        Ok(providers) => {
            for (name, config) in providers {
                let again = config.to_tf_reattach_providers(&name);
                let reparsed = ReattachConfig::from_tf_reattach_providers(&again)
                    .unwrap_or_else(|e| panic!("{json:?} parsed, {again:?} not: {e}"));
                assert_eq!(reparsed, vec![(name, config)], "{json:?} -> {again:?}");
            }
        }
        Err(e) => {
            let text = e.to_string();
            assert!(text.len() <= 4096, "a {} byte error", text.len());
        }
    }
});
