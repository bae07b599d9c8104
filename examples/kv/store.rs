//! The example KV service (plugin side), shared by the `kv` example and the test plugin.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use grpcio::{RpcStatus, RpcStatusCode};
use rpcplugin::proto::kv::*;
use rpcplugin::proto::kv_grpc::Kv;

/// An in-memory key/value store.
#[derive(Clone, Default)]
pub struct Store {
    pub entries: Arc<Mutex<HashMap<String, Vec<u8>>>>,
}

impl Store {
    pub fn set(&self, key: &str, value: impl Into<Vec<u8>>) {
        self.entries
            .lock()
            .unwrap()
            .insert(key.to_owned(), value.into());
    }
}

impl Kv for Store {
    fn get(&self, req: GetRequest) -> Result<GetResponse, RpcStatus> {
        match self.entries.lock().unwrap().get(&req.key) {
            Some(value) => Ok(GetResponse {
                value: value.clone(),
                ..Default::default()
            }),
            None => Err(RpcStatus::with_message(
                RpcStatusCode::NOT_FOUND,
                format!("no key {:?}", req.key),
            )),
        }
    }

    fn put(&self, req: PutRequest) -> Result<PutResponse, RpcStatus> {
        self.set(&req.key, req.value);
        Ok(PutResponse::new())
    }

    fn speak(&self, req: SpeakRequest) -> Result<SpeakResponse, RpcStatus> {
        let _ = std::io::stdout().write_all(req.stdout.as_bytes());
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().write_all(req.stderr.as_bytes());
        if !req.log_message.is_empty() {
            eprintln!(
                r#"{{"@level":"info","@message":{:?},"@module":"kv","@timestamp":"2026-01-01T00:00:00.000000Z"}}"#,
                req.log_message
            );
        }
        Ok(SpeakResponse::new())
    }
}
