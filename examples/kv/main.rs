//! The end-to-end demo: a host that launches the KV example plugin (this same binary, run as
//! `kv serve`), calls it over auto mTLS on a unix socket, and shuts it down, printing what each
//! stage did and how long it took.
//!
//! ```text
//! cargo run --example kv -- put greeting hello
//! cargo run --example kv -- get greeting        # a fresh plugin: NOT_FOUND
//! ```

mod store;

use std::time::{Duration, Instant};

use rpcplugin::proto::kv::{GetRequest, PutRequest};
use rpcplugin::proto::kv_grpc::{create_kv, KvClient};
use rpcplugin::server::PluginServer;
use rpcplugin::{ClientConfig, RpcPluginClient};

const COOKIE_KEY: &str = "KV_PLUGIN";
const COOKIE_VALUE: &str = "rpcplugin-kv";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["serve"] => serve(),
        ["put", key, value] => host(key, Some(value)),
        ["get", key] => host(key, None),
        _ => {
            eprintln!("usage: kv put KEY VALUE | kv get KEY | kv serve (plugin mode)");
            std::process::exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// Plugin mode: what a go-plugin host (or ours) runs.
fn serve() -> Result<(), Box<dyn std::error::Error>> {
    PluginServer::new(COOKIE_KEY, COOKIE_VALUE)
        .versions([1])
        .serve(|ctx| vec![create_kv(store::Store::default().for_session(ctx))])?;
    Ok(())
}

fn host(key: &str, value: Option<&str>) -> Result<(), Box<dyn std::error::Error>> {
    let exe = std::env::current_exe()?;
    let config = ClientConfig::new()
        .magic_cookie(COOKIE_KEY, COOKIE_VALUE)
        .protocol_versions([1])
        .auto_mtls(true)
        .start_timeout(Duration::from_secs(10));
    let client = RpcPluginClient::new([exe.as_os_str(), "serve".as_ref()], config);
    client.start()?;

    let pid = client.pid().expect("started");
    let address = client.address().expect("started");
    let timings = client.timings().expect("started");
    println!("plugin pid        {pid}");
    println!(
        "protocol version  {}",
        client.negotiated_version().unwrap_or(0)
    );
    println!(
        "transport         {} {}",
        address.network(),
        address.address_string()
    );
    println!(
        "tls               {:?}",
        client.tls_mode().expect("started")
    );
    println!(
        "start             {:?} (spawn {:?}, handshake {:?}, connect+TLS {:?}, health {:?})",
        timings.total(),
        timings.spawn,
        timings.handshake,
        timings.connect,
        timings.health
    );

    let kv = KvClient::new(client.grpc_channel()?);
    if let Some(value) = value {
        let t = Instant::now();
        kv.put(&PutRequest {
            key: key.to_owned(),
            value: value.as_bytes().to_vec(),
            ..Default::default()
        })?;
        println!("put {key}={value:<10} {:?}", t.elapsed());
    }
    let t = Instant::now();
    let get = kv.get(&GetRequest {
        key: key.to_owned(),
        ..Default::default()
    });
    match get {
        Ok(reply) => println!(
            "get {key} -> {:<9} {:?}",
            String::from_utf8_lossy(&reply.value),
            t.elapsed()
        ),
        Err(e) => println!("get {key} -> {e}"),
    }

    let t = Instant::now();
    client.shutdown_plugin()?;
    let exited = client.wait_for_exit(Duration::from_secs(2));
    let status = client.exit_status();
    client.close();
    match (exited, status) {
        (true, Some(status)) => println!(
            "close             {:?} (Shutdown RPC, plugin {status}, reaped)",
            t.elapsed()
        ),
        _ => println!(
            "close             {:?} (plugin ignored Shutdown: killed, reaped)",
            t.elapsed()
        ),
    }
    let proc_entry = std::path::Path::new("/proc").join(pid.to_string());
    let socket_left = match &address {
        rpcplugin::Address::Unix(path) => path.parent().is_some_and(|d| d.exists()),
        rpcplugin::Address::Tcp(_) => false,
    };
    println!(
        "after close       process {pid} {}; socket dir {}",
        if proc_entry.exists() {
            "STILL PRESENT"
        } else {
            "gone"
        },
        if socket_left {
            "STILL PRESENT"
        } else {
            "removed"
        }
    );
    if proc_entry.exists() || socket_left {
        return Err("something outlived close()".into());
    }
    Ok(())
}
