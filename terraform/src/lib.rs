//! Terraform and OpenTofu providers from synchronous Rust.
//!
//! - [`cty`]: the type system every Terraform value lives in, and the two encodings providers
//!   exchange them in (`DynamicValue.msgpack` and `.json`), byte for byte as go-cty writes them.
//! - [`schema`]: provider, resource, data source and function schemas, the type each value is
//!   encoded with, and the proposed new state Terraform core computes when planning.
//! - [`Provider`]: a running provider, one blocking API whether it speaks protocol 5 or 6.
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

mod convert;
mod diagnostics;
mod error;
mod proposed;
mod provider;
pub mod schema;
mod schema_json;

pub use diagnostics::{Diagnostic, Severity};
pub use error::{Error, ErrorKind, Result};
pub use provider::{
    AppliedChange, ClientCapabilities, DataSourceState, Deferred, Imported, ImportedResource,
    ListedResource, ListedResources, MovedState, OpenedEphemeral, PlannedChange, Provider,
    ProviderSchema, ReadState, RenewedEphemeral, ServerCapabilities, UpgradedState,
    MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE,
};
/// cty types and values, and go-cty's encodings: the `rpcplugin-cty` crate.
pub use rpcplugin_cty as cty;

/// The tfplugin5 and tfplugin6 messages and blocking stubs, generated from this crate's
/// `proto/` by `rpcplugin-codegen`, for calls [`Provider`] does not wrap.
#[allow(missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/rpcplugin_proto/mod.rs"));
}
