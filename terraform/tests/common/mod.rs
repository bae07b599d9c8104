//! What the Terraform tests share: the real provider, built once per test binary.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub const SKIP_INTEROP: &str = "RPCPLUGIN_SKIP_INTEROP";

/// terraform-provider-time v0.14.2, built from the Go module proxy by
/// tests/interop/go/terraform-provider-time.sh; None only when the run opted out.
pub fn time_provider() -> Option<PathBuf> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(|| {
        if std::env::var(SKIP_INTEROP).is_ok_and(|v| v == "1" || v.split(',').any(|p| p.trim() == "go")) {
            eprintln!("\n!!! SKIPPING the terraform-provider-time tests: {SKIP_INTEROP} is set !!!\n");
            return None;
        }
        let has_go = Command::new("go").arg("version").output().is_ok_and(|o| o.status.success());
        assert!(has_go, "Go is required to build terraform-provider-time; opt out explicitly with {SKIP_INTEROP}=1");
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let dir = root.join("target/interop");
        let status = Command::new("bash")
            .arg(root.join("tests/interop/go/terraform-provider-time.sh"))
            .arg(&dir)
            .status()
            .expect("running terraform-provider-time.sh");
        assert!(status.success(), "building terraform-provider-time failed: {status}");
        Some(dir.join("terraform-provider-time"))
    })
    .clone()
}
