//! gRPC server reflection on the plugin side, as go-plugin servers offer it: a host or a tool
//! (`rpcplugin inspect`, grpcurl) asks the plugin which services it serves and for the file
//! descriptors that define them. Served under both `grpc.reflection.v1alpha` and
//! `grpc.reflection.v1` (same messages), from the descriptors generated code attaches to each
//! [`Service`].

use std::sync::Arc;

use grpcio::RpcStatus;
use protobuf::descriptor::{DescriptorProto, FileDescriptorProto};
use protobuf::reflect::FileDescriptor;
use protobuf::Message;

use crate::proto::reflection::{
    server_reflection_request::Message_request as Request,
    server_reflection_response::Message_response as Response, ErrorResponse,
    FileDescriptorResponse, ListServiceResponse, ServerReflectionRequest, ServerReflectionResponse,
    ServiceResponse,
};
use crate::proto::reflection_grpc::{
    create_server_reflection, ServerReflection, METHOD_SERVER_REFLECTION_SERVER_REFLECTION_INFO,
};
use crate::rpc::__generated::{handle_duplex, ScopeSlot};
use crate::rpc::{CallContext, ReplySink, Requests, Service};

/// The v1 name of the one reflection method (the v1alpha one is in the generated code).
const V1_METHOD: &str = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";

/// gRPC's NOT_FOUND, as reflection's `ErrorResponse` carries it.
const NOT_FOUND: i32 = 5;

/// What the plugin serves: service names and every file needed to describe them.
struct Catalog {
    services: Vec<String>,
    /// Each file once, dependencies included.
    files: Vec<FileDescriptor>,
}

impl Catalog {
    fn new(described: &[(&'static str, &'static FileDescriptor)]) -> Catalog {
        let mut services: Vec<String> = described.iter().map(|(n, _)| n.to_string()).collect();
        services.push("grpc.reflection.v1alpha.ServerReflection".to_owned());
        services.push("grpc.reflection.v1.ServerReflection".to_owned());
        services.sort();
        services.dedup();
        let mut files: Vec<FileDescriptor> = Vec::new();
        let mut pending: Vec<FileDescriptor> =
            described.iter().map(|(_, f)| (*f).clone()).collect();
        pending.push(crate::proto::reflection::file_descriptor().clone());
        if let Some(v1) = v1_twin() {
            pending.push(v1);
        }
        while let Some(file) = pending.pop() {
            if files.iter().any(|f| f.name() == file.name()) {
                continue;
            }
            pending.extend(file.deps().iter().cloned());
            files.push(file);
        }
        Catalog { services, files }
    }

    fn by_name(&self, name: &str) -> Option<&FileDescriptor> {
        self.files.iter().find(|f| f.name() == name)
    }

    fn defining(&self, symbol: &str) -> Option<&FileDescriptor> {
        self.files.iter().find(|f| defines(f.proto(), symbol))
    }

    /// `file` first, then everything it imports (transitively), serialized.
    fn with_deps(&self, file: &FileDescriptor) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = Vec::new();
        let mut seen: Vec<String> = Vec::new();
        let mut pending = vec![file.clone()];
        while let Some(f) = pending.pop() {
            if seen.iter().any(|n| n == f.name()) {
                continue;
            }
            seen.push(f.name().to_owned());
            if let Ok(bytes) = f.proto().write_to_bytes() {
                out.push(bytes);
            }
            pending.extend(f.deps().iter().cloned());
        }
        out
    }

    fn answer(&self, request: ServerReflectionRequest) -> ServerReflectionResponse {
        let not_found = |what: String| {
            Response::ErrorResponse(ErrorResponse {
                error_code: NOT_FOUND,
                error_message: what,
                ..Default::default()
            })
        };
        let files = |file: Option<&FileDescriptor>, what: String| match file {
            Some(file) => Response::FileDescriptorResponse(FileDescriptorResponse {
                file_descriptor_proto: self.with_deps(file),
                ..Default::default()
            }),
            None => not_found(what),
        };
        let message = match &request.message_request {
            Some(Request::ListServices(_)) => Response::ListServicesResponse(ListServiceResponse {
                service: self
                    .services
                    .iter()
                    .map(|name| ServiceResponse {
                        name: name.clone(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
            Some(Request::FileByFilename(name)) => {
                files(self.by_name(name), format!("file {name:?} not found"))
            }
            Some(Request::FileContainingSymbol(symbol)) => files(
                self.defining(symbol.trim_start_matches('.')),
                format!("symbol {symbol:?} not found"),
            ),
            Some(Request::FileContainingExtension(_))
            | Some(Request::AllExtensionNumbersOfType(_)) => {
                not_found("this plugin declares no extensions".to_owned())
            }
            None => not_found("empty reflection request".to_owned()),
        };
        ServerReflectionResponse {
            valid_host: request.host.clone(),
            original_request: protobuf::MessageField::some(request),
            message_response: Some(message),
            ..Default::default()
        }
    }
}

/// The reflection file under the v1 package (same messages), so v1 symbols resolve too.
fn v1_twin() -> Option<FileDescriptor> {
    const ALPHA: &str = ".grpc.reflection.v1alpha.";
    const V1: &str = ".grpc.reflection.v1.";
    let rename = |t: &str| match t.strip_prefix(ALPHA) {
        Some(rest) => format!("{V1}{rest}"),
        None => t.to_owned(),
    };
    let mut twin = crate::proto::reflection::file_descriptor().proto().clone();
    twin.set_name("reflection_v1.proto".to_owned());
    twin.set_package("grpc.reflection.v1".to_owned());
    for message in &mut twin.message_type {
        for field in &mut message.field {
            if field.has_type_name() {
                let renamed = rename(field.type_name());
                field.set_type_name(renamed);
            }
        }
    }
    for service in &mut twin.service {
        for method in &mut service.method {
            let (input, output) = (rename(method.input_type()), rename(method.output_type()));
            method.set_input_type(input);
            method.set_output_type(output);
        }
    }
    FileDescriptor::new_dynamic(twin, &[]).ok()
}

/// Whether `file` defines `symbol`: a service, one of its methods, a message (nested ones
/// too), an enum, or a message's field.
fn defines(file: &FileDescriptorProto, symbol: &str) -> bool {
    let prefix = match file.package() {
        "" => String::new(),
        pkg => format!("{pkg}."),
    };
    let Some(local) = symbol.strip_prefix(&prefix) else {
        return false;
    };
    file.service.iter().any(|s| {
        local == s.name()
            || local
                .strip_prefix(s.name())
                .and_then(|rest| rest.strip_prefix('.'))
                .is_some_and(|method| s.method.iter().any(|m| m.name() == method))
    }) || file.enum_type.iter().any(|e| e.name() == local)
        || file.message_type.iter().any(|m| message_defines(m, local))
}

fn message_defines(message: &DescriptorProto, local: &str) -> bool {
    if local == message.name() {
        return true;
    }
    let Some(inner) = local
        .strip_prefix(message.name())
        .and_then(|rest| rest.strip_prefix('.'))
    else {
        return false;
    };
    message.field.iter().any(|f| f.name() == inner)
        || message.enum_type.iter().any(|e| e.name() == inner)
        || message
            .nested_type
            .iter()
            .any(|m| message_defines(m, inner))
}

#[derive(Clone)]
struct Reflection(Arc<Catalog>);

impl ServerReflection for Reflection {
    fn server_reflection_info(
        &self,
        _call: &CallContext,
        mut requests: Requests<ServerReflectionRequest>,
        mut replies: ReplySink<ServerReflectionResponse>,
    ) -> Result<(), RpcStatus> {
        while let Some(request) = requests.recv()? {
            replies.send(self.0.answer(request))?;
        }
        Ok(())
    }
}

/// The reflection services (v1alpha and v1) describing `described` and themselves.
pub(crate) fn services(described: &[(&'static str, &'static FileDescriptor)]) -> Vec<Service> {
    let reflection = Reflection(Arc::new(Catalog::new(described)));
    let v1alpha = create_server_reflection(reflection.clone());
    // The same method under the v1 name: the messages are identical on the wire.
    let scope = Arc::new(ScopeSlot::default());
    let sc = scope.clone();
    let method = grpcio::Method {
        name: V1_METHOD,
        ..METHOD_SERVER_REFLECTION_SERVER_REFLECTION_INFO
    };
    let v1 = grpcio::ServiceBuilder::new()
        .add_duplex_streaming_handler(&method, move |ctx, requests, sink| {
            let reflection = reflection.clone();
            handle_duplex(&sc, ctx, requests, sink, move |call, requests, replies| {
                reflection.server_reflection_info(call, requests, replies)
            })
        })
        .build();
    vec![v1alpha, Service::new(v1, scope)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(catalog: &Catalog, request: Request) -> Response {
        let mut req = ServerReflectionRequest::new();
        req.message_request = Some(request);
        catalog.answer(req).message_response.unwrap()
    }

    fn catalog() -> Catalog {
        Catalog::new(&[
            ("rpcplugin.example.KV", crate::proto::kv::file_descriptor()),
            ("plugin.GRPCBroker", crate::proto::plugin::file_descriptor()),
        ])
    }

    #[test]
    fn the_v1_service_resolves_to_a_v1_file() {
        let Response::FileDescriptorResponse(files) = ask(
            &catalog(),
            Request::FileContainingSymbol("grpc.reflection.v1.ServerReflection".into()),
        ) else {
            panic!("v1 not found")
        };
        let file = FileDescriptorProto::parse_from_bytes(&files.file_descriptor_proto[0]).unwrap();
        assert_eq!(file.package(), "grpc.reflection.v1");
        let method = &file.service[0].method[0];
        assert_eq!(
            method.input_type(),
            ".grpc.reflection.v1.ServerReflectionRequest"
        );
    }

    #[test]
    fn lists_every_service_and_itself() {
        let Response::ListServicesResponse(list) =
            ask(&catalog(), Request::ListServices("*".into()))
        else {
            panic!("not a service list")
        };
        let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection",
                "plugin.GRPCBroker",
                "rpcplugin.example.KV"
            ]
        );
    }

    #[test]
    fn symbols_resolve_to_their_file_and_unknown_ones_are_not_found() {
        let catalog = catalog();
        for symbol in [
            "rpcplugin.example.KV",
            "rpcplugin.example.KV.Get",
            ".rpcplugin.example.GetRequest",
            "rpcplugin.example.GetRequest.key",
        ] {
            let Response::FileDescriptorResponse(files) =
                ask(&catalog, Request::FileContainingSymbol(symbol.into()))
            else {
                panic!("{symbol} not found")
            };
            let first =
                FileDescriptorProto::parse_from_bytes(&files.file_descriptor_proto[0]).unwrap();
            assert_eq!(first.name(), "kv.proto", "{symbol}");
        }
        for symbol in ["rpcplugin.example.Nope", "rpcplugin.example.KV.Nope", "KV"] {
            let Response::ErrorResponse(err) =
                ask(&catalog, Request::FileContainingSymbol(symbol.into()))
            else {
                panic!("{symbol} found")
            };
            assert_eq!(err.error_code, NOT_FOUND);
            assert!(err.error_message.contains(symbol), "{}", err.error_message);
        }
    }
}
