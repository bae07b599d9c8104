//! JSON to protobuf bytes and back, by message descriptor: the request `rpcplugin call` sends and
//! the replies it prints. Pure (no I/O), so the fuzz targets reach it too.

use protobuf::reflect::MessageDescriptor;

/// Encodes `json` (protobuf's JSON mapping) as a message of type `input`.
pub fn request_from_json(input: &MessageDescriptor, json: &str) -> Result<Vec<u8>, String> {
    let request = protobuf_json_mapping::parse_dyn_from_str(input, json)
        .map_err(|e| format!("--data does not fit {}: {e}", input.full_name()))?;
    request
        .write_to_bytes_dyn()
        .map_err(|e| format!("encoding the request: {e}"))
}

/// Decodes `reply` as a message of type `output` and renders it as JSON.
pub fn reply_to_json(output: &MessageDescriptor, reply: &[u8]) -> Result<String, String> {
    let message = output
        .parse_from_bytes(reply)
        .map_err(|e| format!("the reply is not a valid {}: {e}", output.full_name()))?;
    protobuf_json_mapping::print_to_string(&*message)
        .map_err(|e| format!("rendering the reply: {e}"))
}
