//! Uses the types its build script generated from a plugin's schema, then checks at run time,
//! with the same library, that the plugin still declares the same resource types.
//!
//! `cargo run -p rpcplugin-buildscript-example`

mod schema {
    include!(concat!(env!("OUT_DIR"), "/schema.rs"));
}

use std::time::Duration;

use rpcplugin::proto::kv::GetRequest;
use rpcplugin::proto::kv_grpc::KvClient;
use rpcplugin::{ClientConfig, RpcPluginClient};
use schema::{KvBlob, KvItem};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let item = KvItem {
        key: "greeting".into(),
        value: Some(b"hello".to_vec()),
        ttl_seconds: None,
    };
    let blob = KvBlob {
        key: "archive".into(),
        chunk_size: Some(1 << 20),
        compressed: Some(true),
    };
    println!("generated at build time: {:?}", schema::RESOURCE_TYPES);
    println!("{} {item:?}", KvItem::NAME);
    println!("{} {blob:?}", KvBlob::NAME);

    // At run time, the same library asks the plugin again.
    let plugin = std::env::var("RPCPLUGIN_EXAMPLE_PLUGIN").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../target/interop/go-kv-plugin"
        )
        .to_owned()
    });
    let config = ClientConfig::new()
        .magic_cookie("KV_PLUGIN", "rpcplugin-kv")
        .start_timeout(Duration::from_secs(10));
    let client = RpcPluginClient::new([plugin], config);
    client.start()?;
    let kv = KvClient::new(client.grpc_channel()?);
    let reply = kv.get(&GetRequest {
        key: "schema".into(),
        ..Default::default()
    })?;
    client.close();
    let now = String::from_utf8(reply.value)?;
    let all_present = schema::RESOURCE_TYPES
        .iter()
        .all(|name| now.contains(&format!("\"name\":\"{name}\"")));
    if !all_present {
        return Err("the plugin's schema changed since the build: rebuild".into());
    }
    println!(
        "run time: the plugin still declares {:?}",
        schema::RESOURCE_TYPES
    );
    Ok(())
}
