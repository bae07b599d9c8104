//! `ProviderSchema::to_schema_json` against what real OpenTofu v1.10.7 prints for
//! `tofu providers schema -json`, byte for byte, for terraform-provider-time v0.14.2 (protocol 5)
//! and the Rust test provider (protocol 6, nested attributes, functions). The expected files were
//! captured from tofu itself by tests/interop/go/tofu-schema.sh (run it again when a provider or
//! the format changes).

use std::path::Path;

use rpcplugin_terraform::Provider;

mod common;

fn expected(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // tofu ends its output with a newline; the document itself does not have one.
    text.trim_end_matches('\n').to_owned()
}

fn assert_same(ours: &str, tofu: &str) {
    if ours != tofu {
        let at = ours
            .bytes()
            .zip(tofu.bytes())
            .position(|(a, b)| a != b)
            .unwrap_or(ours.len().min(tofu.len()));
        let from = at.saturating_sub(80);
        panic!(
            "differs from tofu's output at byte {at}:\n ours: …{}\n tofu: …{}",
            &ours[from..(at + 80).min(ours.len())],
            &tofu[from..(at + 80).min(tofu.len())]
        );
    }
}

#[test]
fn time_provider_schema_is_what_tofu_prints() {
    let Some(bin) = common::time_provider() else {
        return;
    };
    let p = Provider::launch([bin]).unwrap();
    let ours = p
        .schema()
        .to_schema_json("registry.opentofu.org/hashicorp/time");
    p.close();
    assert_same(&ours, &expected("tofu-1.10.7.time-0.14.2.schema.json"));
}

#[test]
fn rust_provider_schema_is_what_tofu_prints() {
    let p = Provider::launch([env!("CARGO_BIN_EXE_rpcplugin-terraform-test-provider")]).unwrap();
    let ours = p
        .schema()
        .to_schema_json("registry.opentofu.org/example/rustfile");
    p.close();
    assert_same(&ours, &expected("tofu-1.10.7.rustfile.schema.json"));
}
