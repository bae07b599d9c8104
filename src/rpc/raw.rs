//! Calls by method name, with serialized messages: for callers that learn a plugin's methods at
//! run time (from gRPC reflection, say) instead of from generated code, as `rpcplugin call`
//! does.

use std::collections::HashSet;
use std::io::Read;
use std::sync::Mutex;
use std::time::Duration;

use grpcio::{CallOption, Channel, GrpcSlice, Marshaller, Method, MethodType};

use super::calls::{default_options, Replies, DEFAULT_CALL_TIMEOUT};
use crate::error::{Error, ErrorKind, Result};

/// A blocking client that calls any method by its path (`/package.Service/Method`) with a
/// serialized request, and returns serialized replies.
///
/// ```no_run
/// # fn demo(channel: grpcio::Channel) -> rpcplugin::Result<()> {
/// use protobuf::Message;
/// use rpcplugin::proto::kv::{GetRequest, GetResponse};
///
/// let raw = rpcplugin::RawClient::new(channel);
/// let mut req = GetRequest::new();
/// req.key = "greeting".into();
/// let reply = raw.unary("/rpcplugin.example.KV/Get", &req.write_to_bytes().unwrap())?;
/// let value = GetResponse::parse_from_bytes(&reply).unwrap().value;
/// # let _ = value;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RawClient {
    client: grpcio::Client,
    call_timeout: Option<Duration>,
}

impl std::fmt::Debug for RawClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawClient")
            .field("call_timeout", &self.call_timeout)
            .finish_non_exhaustive()
    }
}

// The signature is grpcio's `SerializeFn<Vec<u8>>`.
#[allow(clippy::ptr_arg)]
fn serialize(bytes: &Vec<u8>, slice: &mut GrpcSlice) -> grpcio::Result<()> {
    *slice = GrpcSlice::from(bytes.clone());
    Ok(())
}

fn deserialize(mut reader: grpcio::MessageReader) -> grpcio::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    reader
        .read_to_end(&mut bytes)
        .map_err(|e| grpcio::Error::Codec(Box::new(e)))?;
    Ok(bytes)
}

const BYTES: Marshaller<Vec<u8>> = Marshaller {
    ser: serialize,
    de: deserialize,
};

/// grpcio wants a `'static` method name: each distinct path is kept once for the life of the
/// process.
fn interned(path: &str) -> &'static str {
    static NAMES: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    let mut names = NAMES.lock().unwrap_or_else(|p| p.into_inner());
    let names = names.get_or_insert_with(HashSet::new);
    if let Some(name) = names.get(path) {
        return name;
    }
    let name: &'static str = Box::leak(path.to_owned().into_boxed_str());
    names.insert(name);
    name
}

fn method(path: &str, ty: MethodType) -> Result<Method<Vec<u8>, Vec<u8>>> {
    let well_formed = path
        .strip_prefix('/')
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(service, name)| {
            !service.is_empty() && !name.is_empty() && !name.contains('/')
        });
    if !well_formed {
        return Err(Error::new(
            ErrorKind::Config,
            format!("method path {path:?}: expected /package.Service/Method"),
        ));
    }
    Ok(Method {
        ty,
        name: interned(path),
        req_mar: BYTES,
        resp_mar: BYTES,
    })
}

impl RawClient {
    /// A client on `channel` (from [`crate::RpcPluginClient::grpc_channel`] or a broker dial),
    /// with [`DEFAULT_CALL_TIMEOUT`].
    pub fn new(channel: Channel) -> RawClient {
        RawClient {
            client: grpcio::Client::new(channel),
            call_timeout: Some(DEFAULT_CALL_TIMEOUT),
        }
    }

    /// The deadline of each unary call, and the longest a stream waits for its next reply;
    /// None: no limit.
    pub fn with_call_timeout(mut self, timeout: Option<Duration>) -> RawClient {
        self.call_timeout = timeout;
        self
    }

    /// Calls a unary method with a serialized request; returns the serialized reply.
    pub fn unary(&self, path: &str, request: &[u8]) -> Result<Vec<u8>> {
        let method = method(path, MethodType::Unary)?;
        self.client
            .unary_call(&method, &request.to_vec(), self.options())
            .map_err(|e| Error::from_call(method.name, e, self.call_timeout))
    }

    /// Calls a server-streaming method; the replies arrive serialized, one per message.
    pub fn server_streaming(&self, path: &str, request: &[u8]) -> Result<Replies<Vec<u8>>> {
        let method = method(path, MethodType::ServerStreaming)?;
        // The stream may last: the timeout bounds each wait for a reply, not the whole call.
        let receiver = self
            .client
            .server_streaming(&method, &request.to_vec(), CallOption::default())
            .map_err(|e| Error::from_call(method.name, e, None))?;
        Ok(Replies::server_streaming(
            method.name,
            receiver,
            self.call_timeout,
        ))
    }

    fn options(&self) -> CallOption {
        default_options(self.call_timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_paths_are_checked_and_interned_once() {
        for bad in [
            "",
            "Get",
            "/Get",
            "//Get",
            "/kv.KV/",
            "/kv.KV/Get/x",
            "kv.KV/Get",
        ] {
            let err = method(bad, MethodType::Unary).err().unwrap();
            assert_eq!(err.kind(), ErrorKind::Config, "{bad}");
            assert!(err.message().contains("/package.Service/Method"), "{bad}");
        }
        let a = method("/kv.KV/Get", MethodType::Unary).unwrap().name;
        let b = method("/kv.KV/Get", MethodType::Unary).unwrap().name;
        assert!(std::ptr::eq(a, b));
    }
}
