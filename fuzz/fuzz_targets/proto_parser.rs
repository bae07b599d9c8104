//! rpcplugin-codegen's `.proto` parsing and generation: any input file gives code or an error.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("rpcplugin-fuzz-proto-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("out")).unwrap();
        dir
    })
}

fuzz_target!(|data: &[u8]| {
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
