//! Terraform and OpenTofu providers from synchronous Rust.
//!
//! This first part is [`cty`]: the type system every Terraform value lives in, and the two
//! encodings providers exchange them in (`DynamicValue.msgpack` and `.json`), written to give
//! the same bytes as go-cty, the Go implementation Terraform core and providers use.
//!
//! ```
//! use rpcplugin_terraform::cty::{Type, Value};
//!
//! let ty = Type::from_json(r#"["object",{"name":"string","port":"number"}]"#)?;
//! let value = Value::object([("name", Value::from("web")), ("port", Value::from(8080))]);
//! let bytes = value.to_msgpack(&ty)?;
//! assert_eq!(bytes, b"\x82\xa4name\xa3web\xa4port\xcd\x1f\x90");
//! assert_eq!(Value::from_msgpack(&bytes, &ty)?, value);
//! assert_eq!(value.to_json(&ty)?, r#"{"name":"web","port":8080}"#);
//! # Ok::<(), rpcplugin_terraform::cty::Error>(())
//! ```
#![warn(missing_docs)]

pub mod cty;
