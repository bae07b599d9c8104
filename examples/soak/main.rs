//! Soak: `cargo run --release --example soak -- 1000` runs 1000 start → put/get → close cycles
//! (add `multiplex` after the count for multiplexed sessions)
//! against a plugin (this binary, re-run as `soak serve`) and 1000 starts of a plugin that exits
//! before its handshake (`soak fail`), in one process, and compares threads, file descriptors,
//! children and socket-dir entries before and after. Exits 1 if anything was left behind.

#[path = "../kv/store.rs"]
mod store;

mod cycles;

use std::ffi::OsString;
use std::time::Duration;

use rpcplugin::proto::kv_grpc::create_kv;
use rpcplugin::server::PluginServer;
use rpcplugin::ClientConfig;

const COOKIE_KEY: &str = "SOAK_PLUGIN";
const COOKIE_VALUE: &str = "rpcplugin-soak";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => {
            PluginServer::new(COOKIE_KEY, COOKIE_VALUE)
                .serve(|ctx| vec![create_kv(store::Store::default().for_session(ctx))])
                .expect("serving");
        }
        Some("fail") => {
            eprintln!("fatal: this plugin always fails");
            std::process::exit(3);
        }
        count => {
            let cycles: usize = count.map_or(1000, |c| c.parse().expect("a cycle count"));
            let multiplex = args.get(1).is_some_and(|a| a == "multiplex");
            let exe = std::env::current_exe().unwrap().into_os_string();
            let parent =
                std::env::temp_dir().join(format!("rpcplugin-soak-{}", std::process::id()));
            std::fs::create_dir_all(&parent).unwrap();
            let config = || {
                ClientConfig::new()
                    .magic_cookie(COOKIE_KEY, COOKIE_VALUE)
                    .socket_dir_parent(&parent)
                    .grpc_broker_multiplex(multiplex)
                    .start_timeout(Duration::from_secs(20))
            };
            let good = || (vec![exe.clone(), OsString::from("serve")], config());
            let failing = || (vec![exe.clone(), OsString::from("fail")], config());
            let report = cycles::soak(&good, &failing, &parent, cycles);
            let _ = std::fs::remove_dir(&parent);
            println!("{}", report.describe());
            if !report.clean() {
                std::process::exit(1);
            }
        }
    }
}
