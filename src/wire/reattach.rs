//! Reattach: what a host needs to reconnect to a running plugin, and Terraform's
//! `TF_REATTACH_PROVIDERS` JSON form of it.

use serde_json::{json, Map, Value};

use super::address::Address;
use super::clip;
use crate::error::{Error, ErrorKind, Result};

/// How to reach a plugin that is already running.
///
/// ```
/// use rpcplugin::{Address, ReattachConfig};
///
/// let config = ReattachConfig {
///     protocol: "grpc".into(),
///     protocol_version: 6,
///     address: Address::Unix("/tmp/plugin123".into()),
///     pid: 4242,
///     owned: false,
/// };
/// let json = config.to_tf_reattach_providers("registry.terraform.io/hashicorp/foo");
/// let parsed = ReattachConfig::from_tf_reattach_providers(&json).unwrap();
/// assert_eq!(parsed, [("registry.terraform.io/hashicorp/foo".to_owned(), config)]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReattachConfig {
    /// The wire protocol; only `grpc` can be attached to.
    pub protocol: String,
    /// The application protocol version the plugin speaks (0 when unknown).
    pub protocol_version: u32,
    /// Where the plugin listens.
    pub address: Address,
    /// The plugin's process id, watched for exit (0: no process to watch).
    pub pid: u32,
    /// Whether the attaching host owns the process: then `close` asks it to shut down and kills
    /// it after the grace period; otherwise `close` only disconnects. Terraform's `Test: true`
    /// means not owned.
    pub owned: bool,
}

impl ReattachConfig {
    /// Renders `{"<provider>": {"Protocol": ..., "ProtocolVersion": ..., "Pid": ..., "Test": ...,
    /// "Addr": {"Network": ..., "String": ...}}}`, the format Terraform reads from
    /// `TF_REATTACH_PROVIDERS`.
    pub fn to_tf_reattach_providers(&self, provider: &str) -> String {
        let mut map = Map::new();
        map.insert(provider.to_owned(), self.to_json());
        Value::Object(map).to_string()
    }

    fn to_json(&self) -> Value {
        json!({
            "Protocol": self.protocol,
            "ProtocolVersion": self.protocol_version,
            "Pid": self.pid,
            "Test": !self.owned,
            "Addr": {"Network": self.address.network(), "String": self.address.address_string()},
        })
    }

    /// Parses `TF_REATTACH_PROVIDERS` JSON: provider addresses mapped to reattach configs.
    pub fn from_tf_reattach_providers(json: &str) -> Result<Vec<(String, ReattachConfig)>> {
        let bad = |what: String| {
            Error::new(
                ErrorKind::Reattach,
                format!("invalid TF_REATTACH_PROVIDERS: {what}"),
            )
        };
        let value: Value =
            serde_json::from_str(json).map_err(|e| bad(format!("expected a JSON object: {e}")))?;
        let Value::Object(providers) = value else {
            return Err(bad(format!(
                "expected a JSON object, got {}",
                shown(&value)
            )));
        };
        providers
            .into_iter()
            .map(|(name, entry)| {
                Self::from_json(&entry)
                    .map(|config| (name.clone(), config))
                    .map_err(|e| bad(format!("provider {:?}: {e}", clip(&name))))
            })
            .collect()
    }

    fn from_json(entry: &Value) -> std::result::Result<ReattachConfig, String> {
        let field = |name: &str| entry.get(name).ok_or(format!("missing field {name:?}"));
        let protocol = match entry.get("Protocol") {
            None | Some(Value::Null) => "netrpc".to_owned(),
            Some(Value::String(p)) if p.is_empty() => "netrpc".to_owned(),
            Some(Value::String(p)) => p.clone(),
            Some(other) => {
                return Err(format!("Protocol: expected a string, got {}", shown(other)))
            }
        };
        let number = |name: &str| -> std::result::Result<u32, String> {
            match entry.get(name) {
                None | Some(Value::Null) => Ok(0),
                Some(v) => v
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or(format!(
                        "{name}: expected a non-negative integer, got {}",
                        shown(v)
                    )),
            }
        };
        let test = match entry.get("Test") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => return Err(format!("Test: expected a boolean, got {}", shown(other))),
        };
        let protocol_version = number("ProtocolVersion")?;
        let pid = number("Pid")?;
        let addr = field("Addr")?;
        let text = |name: &str| -> std::result::Result<&str, String> {
            addr.get(name)
                .and_then(Value::as_str)
                .ok_or(match addr.get(name) {
                    Some(v) => format!("Addr.{name}: expected a string, got {}", shown(v)),
                    None => format!("Addr.{name}: missing"),
                })
        };
        let address = Address::parse(text("Network")?, text("String")?)
            .map_err(|e| format!("Addr: {}", e.message()))?;
        Ok(ReattachConfig {
            protocol,
            protocol_version,
            address,
            pid,
            owned: !test,
        })
    }
}

/// A JSON value as an error message quotes it: clipped, so a huge document stays readable.
fn shown(v: &Value) -> String {
    clip(&v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_terraform_debug_output() {
        let json = r#"{"registry.terraform.io/hashicorp/foo":
            {"Protocol":"grpc","ProtocolVersion":6,"Pid":12345,"Test":true,
             "Addr":{"Network":"unix","String":"/tmp/plugin12345"}}}"#;
        let parsed = ReattachConfig::from_tf_reattach_providers(json).unwrap();
        assert_eq!(parsed.len(), 1);
        let (name, config) = &parsed[0];
        assert_eq!(name, "registry.terraform.io/hashicorp/foo");
        assert_eq!(config.protocol, "grpc");
        assert_eq!(config.protocol_version, 6);
        assert_eq!(config.pid, 12345);
        assert!(!config.owned);
        assert_eq!(config.address, Address::Unix("/tmp/plugin12345".into()));
    }

    #[test]
    fn errors_quote_huge_values_clipped() {
        let huge = "9".repeat(5000);
        for json in [
            format!(r#"["{huge}"]"#),
            format!(r#"{{"{huge}":{{"Pid":-1}}}}"#),
            format!(r#"{{"p":{{"Protocol":["{huge}"]}}}}"#),
            format!(r#"{{"p":{{"Pid":"{huge}"}}}}"#),
            format!(r#"{{"p":{{"Test":"{huge}"}}}}"#),
            format!(r#"{{"p":{{"Addr":{{"Network":["{huge}"]}}}}}}"#),
            format!(r#"{{"p":{{"Addr":{{"Network":"tcp","String":"{huge}"}}}}}}"#),
        ] {
            let e = ReattachConfig::from_tf_reattach_providers(&json)
                .unwrap_err()
                .to_string();
            assert!(e.len() < 1024, "a {} byte error: {e}", e.len());
            assert!(e.contains(" bytes)"), "says how long the value was: {e}");
        }
    }

    #[test]
    fn rejects_bad_shapes_with_the_reason() {
        let err = ReattachConfig::from_tf_reattach_providers("[]").unwrap_err();
        assert!(err.to_string().contains("expected a JSON object"), "{err}");
        let err = ReattachConfig::from_tf_reattach_providers(
            r#"{"p":{"Protocol":"grpc","Addr":{"Network":"udp","String":"x"}}}"#,
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Reattach);
        assert!(
            err.to_string().contains("unknown address type \"udp\""),
            "{err}"
        );
        let err = ReattachConfig::from_tf_reattach_providers(r#"{"p":{"Pid":-1,"Addr":{}}}"#)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("Pid: expected a non-negative integer"),
            "{err}"
        );
        let ok = ReattachConfig::from_tf_reattach_providers(
            r#"{"p":{"Addr":{"Network":"tcp","String":"127.0.0.1:9"}}}"#,
        )
        .unwrap();
        assert_eq!(
            ok[0].1.protocol, "netrpc",
            "a missing protocol means netrpc"
        );
        assert!(ok[0].1.owned);
    }
}
