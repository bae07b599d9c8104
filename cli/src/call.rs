//! `rpcplugin call`: one method, request from JSON, reply as JSON, types from gRPC reflection.

use std::sync::{Arc, Mutex};

use protobuf::reflect::{FileDescriptor, MethodDescriptor};
use rpcplugin::{LogLine, RawClient, RpcPluginClient};

use crate::exit;
use crate::json;
use crate::options::Options;
use crate::reflect::Reflector;

/// `pkg.Service/Method` (a leading `/` is fine, as is `pkg.Service.Method`) split in two.
fn split_method(method: &str) -> Option<(&str, &str)> {
    let method = method.trim_start_matches('/');
    method
        .rsplit_once('/')
        .or_else(|| method.rsplit_once('.'))
        .filter(|(service, name)| !service.is_empty() && !name.is_empty())
}

fn find(files: &[FileDescriptor], service: &str, method: &str) -> Option<MethodDescriptor> {
    files.iter().find_map(|file| {
        let prefix = match file.package() {
            "" => String::new(),
            pkg => format!("{pkg}."),
        };
        file.services()
            .find(|s| format!("{prefix}{}", s.proto().name()) == service)
            .and_then(|s| s.methods().find(|m| m.proto().name() == method))
    })
}

/// Why a call could not be made or failed, with its exit code.
struct Failure(u8, String);

fn call(client: &RpcPluginClient, method: &str, data: &str) -> Result<(), Failure> {
    let request_error = |why: String| Failure(exit::REQUEST, why);
    let (service, name) = split_method(method).ok_or_else(|| {
        Failure(
            exit::USAGE,
            format!(
                "method {method:?}: expected SERVICE/METHOD, e.g. plugin.GRPCController/Shutdown"
            ),
        )
    })?;
    let channel = client
        .grpc_channel()
        .map_err(|e| Failure(exit::PLUGIN, e.to_string()))?;
    let mut reflector = Reflector::open(channel.clone())
        .map_err(|e| request_error(format!("cannot build the request: {e}")))?;
    let described = reflector
        .methods(service)
        .map_err(|e| request_error(format!("cannot build the request for {service}: {e}")))?;
    if !described.iter().any(|m| m.name == name) {
        let known: Vec<&str> = described.iter().map(|m| m.name.as_str()).collect();
        return Err(request_error(format!(
            "{service} has no method {name:?}; it has: {}",
            known.join(", ")
        )));
    }
    let files = reflector
        .descriptors()
        .map_err(|e| request_error(format!("cannot build the request: {e}")))?;
    reflector.close();
    let method = find(&files, service, name)
        .ok_or_else(|| request_error(format!("no descriptor of {service}/{name}")))?;
    if method.proto().client_streaming() {
        return Err(request_error(format!(
            "{service}/{name} is client-streaming (or bidirectional): `call` sends one request, \
             so it calls unary and server-streaming methods only"
        )));
    }
    let bytes = json::request_from_json(&method.input_type(), data).map_err(request_error)?;
    let path = format!("/{service}/{name}");
    let output = method.output_type();
    // A Terraform provider's DynamicValues are shown decoded, typed by its schema.
    let decoder = crate::tf::Decoder::for_call(client, service, name, data);
    let print = |reply: &[u8]| -> Result<(), Failure> {
        let json =
            json::reply_to_json(&output, reply).map_err(|e| Failure(exit::CALL_FAILED, e))?;
        match (&decoder, serde_json::from_str::<serde_json::Value>(&json)) {
            (Some(decoder), Ok(mut value)) => {
                decoder.decode(&mut value);
                println!("{value}");
            }
            _ => println!("{json}"),
        }
        Ok(())
    };
    let failed = |e: rpcplugin::Error| Failure(exit::CALL_FAILED, client.call_error(e).to_string());
    let raw = RawClient::new(channel);
    if method.proto().server_streaming() {
        for reply in raw.server_streaming(&path, &bytes).map_err(failed)? {
            print(&reply.map_err(failed)?)?;
        }
        Ok(())
    } else {
        print(&raw.unary(&path, &bytes).map_err(failed)?)
    }
}

pub fn run(options: &Options, method: &str, data: &str) -> u8 {
    let logs: Arc<Mutex<Vec<LogLine>>> = Arc::default();
    let client = match options.start(&logs) {
        Ok(client) => client,
        Err(code) => return code,
    };
    let result = call(&client, method, data);
    client.close();
    match result {
        Err(Failure(code, why)) => {
            eprintln!("rpcplugin: {why}");
            code
        }
        Ok(()) => exit::OK,
    }
}

#[cfg(test)]
mod tests {
    use super::split_method;

    #[test]
    fn method_names_split_at_the_last_separator() {
        assert_eq!(split_method("kv.KV/Get"), Some(("kv.KV", "Get")));
        assert_eq!(split_method("/kv.KV/Get"), Some(("kv.KV", "Get")));
        assert_eq!(split_method("kv.KV.Get"), Some(("kv.KV", "Get")));
        assert_eq!(split_method("Get"), None);
        assert_eq!(split_method("kv.KV/"), None);
    }
}
