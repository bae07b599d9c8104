//! `rpcplugin tf schema`: a Terraform provider's schema, as `terraform providers schema -json`
//! prints it, through rpcplugin-terraform.

use std::sync::{Arc, Mutex};

use rpcplugin_terraform::cty::{Type, Value};
use rpcplugin_terraform::{Provider, ProviderSchema};

use crate::exit;
use crate::options::Options;

/// `registry.terraform.io/hashicorp/TYPE` from `terraform-provider-TYPE[_vX.Y.Z]`.
fn default_address(program: &str) -> Option<String> {
    let file = std::path::Path::new(program).file_name()?.to_str()?;
    let name = file.strip_prefix("terraform-provider-")?;
    let name = name.split("_v").next().filter(|n| !n.is_empty())?;
    Some(format!("registry.terraform.io/hashicorp/{name}"))
}

pub fn schema(options: &Options, address: Option<&str>) -> u8 {
    let program = options.program.as_deref().unwrap_or_default();
    let Some(address) = address
        .map(str::to_owned)
        .or_else(|| default_address(program))
    else {
        eprintln!(
            "rpcplugin: cannot tell the provider's address from {program:?} (not named \
             terraform-provider-TYPE); give it with --address, e.g. registry.terraform.io/NAMESPACE/TYPE"
        );
        return exit::USAGE;
    };
    let logs = Arc::new(Mutex::new(Vec::new()));
    let client = match options.start(&logs) {
        Ok(client) => client,
        Err(code) => return code,
    };
    let provider = match Provider::from_plugin(client) {
        Ok(provider) => provider,
        Err(e) => {
            eprintln!("rpcplugin: {e}");
            return exit::PLUGIN;
        }
    };
    println!("{}", provider.schema().to_schema_json(&address));
    provider.close();
    exit::OK
}

/// `call` on a Terraform provider: every `DynamicValue` in a reply (msgpack, shown as base64 by
/// protobuf's JSON mapping) decoded with the type the provider's schema gives it, in place.
pub struct Decoder {
    schema: ProviderSchema,
    method: String,
    request: serde_json::Value,
}

impl Decoder {
    /// A decoder for `service/method` replies, if the service is a Terraform provider's; the
    /// schema is fetched once. `None` (with a note on stderr) if it cannot be.
    pub fn for_call(
        client: &rpcplugin::RpcPluginClient,
        service: &str,
        method: &str,
        data: &str,
    ) -> Option<Decoder> {
        let protocol = match service {
            "tfplugin5.Provider" => 5,
            "tfplugin6.Provider" => 6,
            _ => return None,
        };
        let channel = client.grpc_channel().ok()?;
        match ProviderSchema::fetch(channel, protocol) {
            Ok(schema) => Some(Decoder {
                schema,
                method: method.to_owned(),
                request: serde_json::from_str(data).unwrap_or_default(),
            }),
            Err(e) => {
                eprintln!("rpcplugin: DynamicValues stay msgpack: the provider's schema: {e}");
                None
            }
        }
    }

    /// The type of a DynamicValue found under `key`, in an object whose `typeName` is
    /// `sibling_type` (imported resources name their own type).
    fn type_for(&self, key: &str, sibling_type: Option<&str>) -> Option<Type> {
        let s = &self.schema;
        let request = |field: &str| self.request.get(field).and_then(|v| v.as_str());
        let implied =
            |schemas: &std::collections::BTreeMap<String, rpcplugin_terraform::schema::Schema>,
             name: Option<&str>| { schemas.get(name?).map(|s| s.block.implied_type()) };
        if key == "providerMeta" {
            return s.provider_meta.as_ref().map(|m| m.block.implied_type());
        }
        match self.method.as_str() {
            "Configure"
            | "ConfigureProvider"
            | "PrepareProviderConfig"
            | "ValidateProviderConfig" => Some(s.provider.block.implied_type()),
            "ReadDataSource" | "ValidateDataSourceConfig" | "ValidateDataResourceConfig" => {
                implied(&s.data_sources, request("typeName"))
            }
            "OpenEphemeralResource" | "ValidateEphemeralResourceConfig" => {
                implied(&s.ephemeral_resources, request("typeName"))
            }
            "CallFunction" => {
                let f = s.functions.get(request("name")?)?;
                Some(f.return_type.without_optional_attributes())
            }
            "ListResource" if key == "resourceObject" => implied(&s.resources, request("typeName")),
            "MoveResourceState" => implied(&s.resources, request("targetTypeName")),
            "ImportResourceState" => implied(&s.resources, sibling_type.or(request("typeName"))),
            _ if key == "identityData" => None,
            _ => implied(&s.resources, request("typeName")),
        }
    }

    /// Replaces each `{"msgpack": BASE64}` in `reply` by the value it holds, as JSON.
    pub fn decode(&self, reply: &mut serde_json::Value) {
        self.walk(reply, "", None);
    }

    fn walk(&self, node: &mut serde_json::Value, key: &str, sibling_type: Option<&str>) {
        match node {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::String(b64)) = map.get("msgpack") {
                    if let Some(decoded) = self.type_for(key, sibling_type).and_then(|ty| {
                        let bytes = openssl::base64::decode_block(b64).ok()?;
                        Value::from_msgpack(&bytes, &ty).ok().map(|v| display(&v))
                    }) {
                        *node = decoded;
                        return;
                    }
                }
                let type_name = map
                    .get("typeName")
                    .and_then(|v| v.as_str())
                    .map(str::to_owned);
                for (k, v) in map.iter_mut() {
                    self.walk(v, k, type_name.as_deref());
                }
            }
            serde_json::Value::Array(items) => {
                for item in items {
                    self.walk(item, key, sibling_type);
                }
            }
            _ => {}
        }
    }
}

/// A value for people: JSON, with an unknown as `{"unknown": true}` plus what is known about
/// it, and a number JSON cannot hold exactly as its decimal text.
fn display(v: &Value) -> serde_json::Value {
    use serde_json::{json, Value as J};
    match v.inner() {
        Value::Null => J::Null,
        Value::Unknown(r) => {
            let mut o = json!({ "unknown": true });
            if r.not_null {
                o["not_null"] = J::Bool(true);
            }
            if let Some(p) = &r.string_prefix {
                o["prefix"] = J::String(p.clone());
            }
            if let Some((n, inclusive)) = &r.number_lower {
                o["min"] =
                    json!({ "value": display(&Value::Number(n.clone())), "inclusive": inclusive });
            }
            if let Some((n, inclusive)) = &r.number_upper {
                o["max"] =
                    json!({ "value": display(&Value::Number(n.clone())), "inclusive": inclusive });
            }
            if let Some(n) = r.length_lower {
                o["min_length"] = json!(n);
            }
            if let Some(n) = r.length_upper {
                o["max_length"] = json!(n);
            }
            o
        }
        Value::Bool(b) => J::Bool(*b),
        Value::Number(n) => match (n.as_i64(), serde_json::Number::from_f64(n.as_f64())) {
            (Some(i), _) => json!(i),
            (None, Some(f))
                if rpcplugin_terraform::cty::Number::from_f64(n.as_f64()).as_ref() == Some(n) =>
            {
                J::Number(f)
            }
            _ => J::String(n.to_string()),
        },
        Value::String(s) => J::String(s.clone()),
        Value::List(vs) | Value::Set(vs) | Value::Tuple(vs) => {
            J::Array(vs.iter().map(display).collect())
        }
        Value::Map(m) | Value::Object(m) => {
            J::Object(m.iter().map(|(k, v)| (k.clone(), display(v))).collect())
        }
        Value::Dynamic(..) | Value::Marked(..) => J::Null,
    }
}
