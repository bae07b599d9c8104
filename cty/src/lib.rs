//! cty: Terraform's types and values, and go-cty's msgpack and JSON encodings of them.
//!
//! The value layer of `rpcplugin-terraform` (re-exported there as `rpcplugin_terraform::cty`),
//! a crate of its own with no C dependency, for tools that read plans and state without
//! talking to a provider.
//!
//! ```
//! use rpcplugin_cty::{Type, Value};
//!
//! let ty = Type::from_json(r#"["object",{"name":"string","port":"number"}]"#)?;
//! let value = Value::object([("name", Value::from("web")), ("port", Value::from(8080))]);
//! let bytes = value.to_msgpack(&ty)?;
//! assert_eq!(bytes, b"\x82\xa4name\xa3web\xa4port\xcd\x1f\x90");
//! assert_eq!(Value::from_msgpack(&bytes, &ty)?, value);
//! assert_eq!(value.to_json(&ty)?, r#"{"name":"web","port":8080}"#);
//! # Ok::<(), rpcplugin_cty::Error>(())
//! ```
//!
//! Encoding is driven by a [`Type`] (a schema's implied type, say), never guessed from the value:
//! the same [`Value`] encodes differently as a `number` and in a `dynamic` slot. What the codecs
//! write follows go-cty v1.16 byte for byte (objects and maps in sorted key order, integers in
//! their smallest msgpack form, unknowns as msgpack extensions with their refinements, dynamic
//! values as a type-value pair), and the tests check that against go-cty itself.
//!
//! Where this crate is more lenient than go-cty, it is only when building values: an object value
//! may leave attributes out (they encode as null). Two things go-cty does that this crate does not:
//! it normalizes strings to Unicode NFC when a value is made, and it keeps a number parsed from
//! text to 512 bits of binary precision (about 154 decimal digits), where this crate keeps every
//! decimal digit.

#![warn(missing_docs)]

mod json;
mod msgpack;
mod number;
mod shortest;
mod types;
mod value;

pub use number::Number;

/// A string as Go's `encoding/json` writes it (`<`, `>`, `&`, U+2028 and U+2029 escaped too),
/// quotes included.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    json::write_string(&mut out, s);
    out
}
pub use types::Type;
pub use value::{Mark, Path, PathStep, Refinements, Value};

use std::fmt;

/// Why a value or type could not be encoded, decoded or parsed, and where in the value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    path: Path,
    message: String,
}

impl Error {
    pub(crate) fn new(path: &Path, message: impl Into<String>) -> Error {
        Error {
            path: path.clone(),
            message: message.into(),
        }
    }

    /// Where in the value the problem is (empty for the value itself).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What went wrong, without the path.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "at {}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for Error {}

/// Results of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;
