//! rpcplugin-codegen's `.proto` parsing and generation: any input file gives code or an error.
//! protobuf-parse 3.7 panics on some malformed files; `Codegen::run` turns those panics into
//! errors, so this target lets a panic raised inside the protobuf crates unwind to it (every
//! other panic aborts, as libFuzzer's hook does).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // One fixed place in the fuzz crate's target dir, made anew by each run (libFuzzer ends
        // with exit(), so a per-run temp dir would be left behind every time).
        let dir = PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/target/proto_parser-scratch"
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("out")).unwrap();
        dir
    })
}

/// Wraps libFuzzer's panic hook (installed before the first input): panics in the protobuf
/// crates unwind quietly to `Codegen::run`, which must return them as errors.
fn contain_protobuf_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let fuzzer_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_protobuf = info.location().is_some_and(|l| {
                [
                    "/protobuf-parse-",
                    "/protobuf-codegen-",
                    "/protobuf-support-",
                    "/protobuf-3",
                ]
                .iter()
                .any(|krate| l.file().contains(krate))
            });
            if !in_protobuf {
                fuzzer_hook(info);
            }
        }));
    });
}

fuzz_target!(|data: &[u8]| {
    contain_protobuf_panics();
    let dir = scratch();
    let input = dir.join("fuzzed.proto");
    std::fs::write(&input, data).unwrap();
    let result = rpcplugin_codegen::Codegen::new()
        .include(dir)
        .input(&input)
        .out_dir(dir.join("out"))
        .run();
    if let Err(e) = result {
        assert!(!e.to_string().is_empty());
    }
});
