//! A gRPC reflection client (`grpc.reflection.v1alpha`, which go-plugin's and our plugin sides
//! both serve): the services a plugin serves, and descriptors to build and read its messages.

use std::collections::BTreeMap;

use grpcio::{Channel, RpcStatusCode};
use protobuf::descriptor::FileDescriptorProto;
use protobuf::reflect::FileDescriptor;
use protobuf::Message;
use rpcplugin::proto::reflection::server_reflection_request::Message_request as Request;
use rpcplugin::proto::reflection::server_reflection_response::Message_response as Response;
use rpcplugin::proto::reflection::{ServerReflectionRequest, ServerReflectionResponse};
use rpcplugin::proto::reflection_grpc::ServerReflectionClient;
use rpcplugin::DuplexCall;

/// Why reflection could not answer.
pub enum ReflectError {
    /// The plugin does not serve reflection (`UNIMPLEMENTED`).
    NotServed,
    /// It answered with an error, or the stream failed.
    Failed(String),
}

impl std::fmt::Display for ReflectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReflectError::NotServed => write!(
                f,
                "the plugin does not serve gRPC reflection (grpc.reflection.v1alpha answered \
                 UNIMPLEMENTED)"
            ),
            ReflectError::Failed(why) => write!(f, "gRPC reflection failed: {why}"),
        }
    }
}

impl From<rpcplugin::Error> for ReflectError {
    fn from(e: rpcplugin::Error) -> Self {
        if e.rpc_code() == Some(RpcStatusCode::UNIMPLEMENTED) {
            ReflectError::NotServed
        } else {
            ReflectError::Failed(e.to_string())
        }
    }
}

/// One method, as reflection describes it.
pub struct MethodInfo {
    pub name: String,
    pub input: String,
    pub output: String,
    pub client_streaming: bool,
    pub server_streaming: bool,
}

/// One reflection stream to a plugin.
pub struct Reflector {
    call: DuplexCall<ServerReflectionRequest, ServerReflectionResponse>,
    /// Every file received so far, by name.
    files: BTreeMap<String, FileDescriptorProto>,
}

impl Reflector {
    pub fn open(channel: Channel) -> Result<Reflector, ReflectError> {
        let call = ServerReflectionClient::new(channel).server_reflection_info()?;
        Ok(Reflector {
            call,
            files: BTreeMap::new(),
        })
    }

    fn ask(&mut self, request: Request) -> Result<Response, ReflectError> {
        let mut req = ServerReflectionRequest::new();
        req.message_request = Some(request);
        self.call.send(req)?;
        let reply = self
            .call
            .recv()?
            .ok_or_else(|| ReflectError::Failed("the plugin ended the stream".to_owned()))?;
        match reply.message_response {
            Some(Response::ErrorResponse(e)) => Err(ReflectError::Failed(format!(
                "code {}: {}",
                e.error_code, e.error_message
            ))),
            Some(response) => Ok(response),
            None => Err(ReflectError::Failed("an empty response".to_owned())),
        }
    }

    /// The services the plugin serves, sorted.
    pub fn services(&mut self) -> Result<Vec<String>, ReflectError> {
        match self.ask(Request::ListServices(String::new()))? {
            Response::ListServicesResponse(list) => {
                let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
                names.sort();
                Ok(names)
            }
            _ => Err(ReflectError::Failed(
                "list_services answered something else".to_owned(),
            )),
        }
    }

    /// Fetches the file defining `symbol` and its dependencies.
    fn fetch(&mut self, symbol: &str) -> Result<(), ReflectError> {
        match self.ask(Request::FileContainingSymbol(symbol.to_owned()))? {
            Response::FileDescriptorResponse(files) => {
                for bytes in files.file_descriptor_proto {
                    let file = FileDescriptorProto::parse_from_bytes(&bytes).map_err(|e| {
                        ReflectError::Failed(format!("an unreadable file descriptor: {e}"))
                    })?;
                    self.files.insert(file.name().to_owned(), file);
                }
                Ok(())
            }
            _ => Err(ReflectError::Failed(format!(
                "file_containing_symbol({symbol}) answered something else"
            ))),
        }
    }

    /// The methods of `service`, in declaration order.
    pub fn methods(&mut self, service: &str) -> Result<Vec<MethodInfo>, ReflectError> {
        self.fetch(service)?;
        let type_name = |t: &str| t.trim_start_matches('.').to_owned();
        for file in self.files.values() {
            let prefix = match file.package() {
                "" => String::new(),
                pkg => format!("{pkg}."),
            };
            if let Some(s) = file
                .service
                .iter()
                .find(|s| format!("{prefix}{}", s.name()) == service)
            {
                return Ok(s
                    .method
                    .iter()
                    .map(|m| MethodInfo {
                        name: m.name().to_owned(),
                        input: type_name(m.input_type()),
                        output: type_name(m.output_type()),
                        client_streaming: m.client_streaming(),
                        server_streaming: m.server_streaming(),
                    })
                    .collect());
            }
        }
        Err(ReflectError::Failed(format!(
            "no descriptor of service {service}"
        )))
    }

    /// Descriptors of everything fetched so far, ready to build and read dynamic messages.
    /// Files the plugin left out that are well-known protobuf types are supplied from
    /// rust-protobuf's own copies.
    pub fn descriptors(&self) -> Result<Vec<FileDescriptor>, ReflectError> {
        let well_known: Vec<FileDescriptor> = well_known_files()
            .into_iter()
            .filter(|f| !self.files.contains_key(f.name()))
            .collect();
        FileDescriptor::new_dynamic_fds(self.files.values().cloned().collect(), &well_known)
            .map_err(|e| ReflectError::Failed(format!("the descriptors do not fit together: {e}")))
    }

    /// Ends the stream.
    pub fn close(mut self) {
        let _ = self.call.close_send();
    }
}

fn well_known_files() -> Vec<FileDescriptor> {
    use protobuf::well_known_types as wkt;
    vec![
        wkt::any::file_descriptor().clone(),
        wkt::duration::file_descriptor().clone(),
        wkt::empty::file_descriptor().clone(),
        wkt::field_mask::file_descriptor().clone(),
        wkt::struct_::file_descriptor().clone(),
        wkt::timestamp::file_descriptor().clone(),
        wkt::wrappers::file_descriptor().clone(),
        protobuf::descriptor::file_descriptor().clone(),
    ]
}
