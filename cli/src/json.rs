//! JSON to protobuf bytes and back, by message descriptor: the request `rpcplugin call` sends and
//! the replies it prints. Pure (no I/O), so the fuzz targets reach it too.

use protobuf::reflect::MessageDescriptor;

/// Encodes `json` (protobuf's JSON mapping) as a message of type `input`.
pub fn request_from_json(input: &MessageDescriptor, json: &str) -> Result<Vec<u8>, String> {
    // Strict JSON first: protobuf-json-mapping's lexer also takes protobuf text escapes (an
    // octal `\778` made it overflow: found by the cli_json fuzz target), and serde_json says
    // where the text stops being JSON.
    serde_json::from_str::<serde_json::Value>(json)
        .map_err(|e| format!("--data is not JSON: {e}"))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use protobuf::MessageFull;

    #[test]
    fn data_that_is_not_json_is_refused_by_what_json_allows() {
        let desc = rpcplugin::proto::kv::GetRequest::descriptor();
        // An octal escape (protobuf text format, not JSON) once overflowed the lexer.
        let e = request_from_json(&desc, r#"{"key":"\778"}"#).unwrap_err();
        assert!(e.starts_with("--data is not JSON: invalid escape"), "{e}");
        let e = request_from_json(&desc, r#"{"nokey":"x"}"#).unwrap_err();
        assert!(
            e.starts_with("--data does not fit rpcplugin.example.GetRequest"),
            "{e}"
        );
        let bytes = request_from_json(&desc, r#"{"key":"a\u00e9"}"#).unwrap();
        assert_eq!(bytes, b"\x0a\x03a\xc3\xa9");
    }
}
