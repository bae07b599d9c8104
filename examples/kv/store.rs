//! The example KV service (plugin side), shared by the `kv` example and the test plugin.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use grpcio::{RpcStatus, RpcStatusCode};
use rpcplugin::proto::kv::*;
use rpcplugin::proto::kv_grpc::{create_adder, Adder, AdderClient, Kv};
use rpcplugin::server::{CallContext, PluginContext, ReplySink, Requests};
use rpcplugin::{Broker, StdioWriter};

/// An in-memory key/value store.
#[derive(Clone, Default)]
pub struct Store {
    pub entries: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    session: Option<Session>,
}

/// The plugin's handles on the host connection.
#[derive(Clone)]
struct Session {
    broker: Broker,
    stdout: StdioWriter,
    stderr: StdioWriter,
}

/// Adds two numbers: the service offered over the broker, in both directions.
#[derive(Clone)]
pub struct Sum;

impl Adder for Sum {
    fn add(&self, _call: &CallContext, req: AddRequest) -> Result<AddResponse, RpcStatus> {
        Ok(AddResponse {
            sum: req.a + req.b,
            ..Default::default()
        })
    }
}

fn internal(e: impl std::fmt::Display) -> RpcStatus {
    RpcStatus::with_message(RpcStatusCode::INTERNAL, e.to_string())
}

impl Store {
    /// The store, bound to a plugin session (broker and stdio).
    pub fn for_session(&self, ctx: &PluginContext) -> Store {
        Store {
            entries: self.entries.clone(),
            session: Some(Session {
                broker: ctx.broker(),
                stdout: ctx.stdout(),
                stderr: ctx.stderr(),
            }),
        }
    }

    /// The broker of the plugin session. Panics outside a session. (The test plugin uses it.)
    #[allow(dead_code)]
    pub fn broker(&self) -> Broker {
        self.session
            .as_ref()
            .expect("a plugin session")
            .broker
            .clone()
    }

    fn session(&self) -> Result<&Session, RpcStatus> {
        self.session.as_ref().ok_or_else(|| {
            RpcStatus::with_message(RpcStatusCode::UNAVAILABLE, "no plugin session".to_owned())
        })
    }

    pub fn set(&self, key: &str, value: impl Into<Vec<u8>>) {
        self.entries
            .lock()
            .unwrap()
            .insert(key.to_owned(), value.into());
    }
}

impl Kv for Store {
    fn get(&self, _call: &CallContext, req: GetRequest) -> Result<GetResponse, RpcStatus> {
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

    fn put(&self, _call: &CallContext, req: PutRequest) -> Result<PutResponse, RpcStatus> {
        self.set(&req.key, req.value);
        Ok(PutResponse::new())
    }

    fn add_via_host(
        &self,
        _call: &CallContext,
        req: AddViaHostRequest,
    ) -> Result<AddResponse, RpcStatus> {
        let channel = self
            .session()?
            .broker
            .dial(req.adder_id)
            .map_err(internal)?;
        let mut add = AddRequest::new();
        add.a = req.a;
        add.b = req.b;
        AdderClient::new(channel).add(&add).map_err(internal)
    }

    fn serve_adder(
        &self,
        _call: &CallContext,
        _req: ServeAdderRequest,
    ) -> Result<ServeAdderResponse, RpcStatus> {
        let broker = &self.session()?.broker;
        let id = broker.next_id();
        broker
            .accept_and_serve(id, vec![create_adder(Sum)])
            .map_err(internal)?;
        Ok(ServeAdderResponse {
            adder_id: id,
            ..Default::default()
        })
    }

    fn speak(&self, _call: &CallContext, req: SpeakRequest) -> Result<SpeakResponse, RpcStatus> {
        let session = self.session()?;
        let (mut out, mut err) = (session.stdout.clone(), session.stderr.clone());
        out.write_all(req.stdout.as_bytes()).map_err(internal)?;
        err.write_all(req.stderr.as_bytes()).map_err(internal)?;
        if !req.log_message.is_empty() {
            eprintln!(
                r#"{{"@level":"info","@message":{:?},"@module":"kv","@timestamp":"2026-01-01T00:00:00.000000Z"}}"#,
                req.log_message
            );
        }
        Ok(SpeakResponse::new())
    }

    fn upload(
        &self,
        _call: &CallContext,
        requests: Requests<Chunk>,
    ) -> Result<UploadResponse, RpcStatus> {
        let mut key = None;
        let mut value = Vec::new();
        for chunk in requests {
            let chunk = chunk?;
            key.get_or_insert(chunk.key);
            value.extend_from_slice(&chunk.data);
        }
        let key = key.ok_or_else(|| {
            RpcStatus::with_message(RpcStatusCode::INVALID_ARGUMENT, "no chunks".to_owned())
        })?;
        let size = value.len() as u64;
        self.set(&key, value);
        Ok(UploadResponse {
            key,
            size,
            ..Default::default()
        })
    }

    fn download(
        &self,
        _call: &CallContext,
        req: DownloadRequest,
        mut replies: ReplySink<Chunk>,
    ) -> Result<(), RpcStatus> {
        let value = self.entries.lock().unwrap().get(&req.key).cloned();
        let value = value.ok_or_else(|| {
            RpcStatus::with_message(RpcStatusCode::NOT_FOUND, format!("no key {:?}", req.key))
        })?;
        let size = match req.chunk_size {
            0 => 64 * 1024,
            n => n as usize,
        };
        for part in value.chunks(size) {
            replies.send(Chunk {
                key: req.key.clone(),
                data: part.to_vec(),
                ..Default::default()
            })?;
        }
        Ok(())
    }

    fn echo(
        &self,
        _call: &CallContext,
        requests: Requests<Chunk>,
        mut replies: ReplySink<Chunk>,
    ) -> Result<(), RpcStatus> {
        for chunk in requests {
            replies.send(chunk?)?;
        }
        Ok(())
    }
}
