//! The crate's error type: one type, with kinds, that keeps the provider's diagnostics.

use std::fmt;

use crate::cty::Value;
use crate::diagnostics::Diagnostic;

/// What went wrong, broadly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Launching, talking to or closing the plugin failed (see [`Error::plugin_error`]).
    Plugin,
    /// The provider does not implement the call (gRPC `UNIMPLEMENTED`: an older protocol).
    Unsupported,
    /// The provider answered with error diagnostics ([`Error::diagnostics`]).
    Diagnostics,
    /// A value did not fit its schema type, or the provider sent bytes that do not decode.
    Value,
    /// A type name or function the provider's schema does not have, or an unusable schema.
    Schema,
    /// A provider function refused its arguments (see [`Error::function_argument`]).
    Function,
}

/// An error from a provider or from talking to one.
#[derive(Debug)]
pub struct Error(Box<Inner>);

#[derive(Debug)]
struct Inner {
    kind: ErrorKind,
    message: String,
    diagnostics: Vec<Diagnostic>,
    partial_state: Option<Value>,
    function_argument: Option<i64>,
    plugin: Option<rpcplugin::Error>,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error(Box::new(Inner {
            kind,
            message: message.into(),
            diagnostics: Vec::new(),
            partial_state: None,
            function_argument: None,
            plugin: None,
        }))
    }

    pub(crate) fn from_diagnostics(call: &str, diagnostics: Vec<Diagnostic>) -> Error {
        let errors: Vec<String> = diagnostics
            .iter()
            .filter(|d| d.is_error())
            .map(|d| d.to_string())
            .collect();
        let mut e = Error::new(
            ErrorKind::Diagnostics,
            format!("{call}: {}", errors.join("; ")),
        );
        e.0.diagnostics = diagnostics;
        e
    }

    pub(crate) fn with_partial_state(mut self, state: Value) -> Error {
        self.0.partial_state = Some(state);
        self
    }

    pub(crate) fn function(call: &str, text: &str, argument: Option<i64>) -> Error {
        let at = argument
            .map(|i| format!(" (argument {i})"))
            .unwrap_or_default();
        let mut e = Error::new(ErrorKind::Function, format!("{call}: {text}{at}"));
        e.0.function_argument = argument;
        e
    }

    pub(crate) fn plugin(call: &str, err: rpcplugin::Error) -> Error {
        let unimplemented = err.rpc_code() == Some(grpcio::RpcStatusCode::UNIMPLEMENTED);
        let kind = if unimplemented {
            ErrorKind::Unsupported
        } else {
            ErrorKind::Plugin
        };
        let mut e = Error::new(kind, format!("{call}: {err}"));
        e.0.plugin = Some(err);
        e
    }

    /// The kind of error.
    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    /// Every diagnostic of the failed call, errors and warnings, each with its attribute path.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        &self.0.diagnostics
    }

    /// The state an apply that failed still returned (Terraform keeps it: the object may exist).
    pub fn partial_state(&self) -> Option<&Value> {
        self.0.partial_state.as_ref()
    }

    /// The argument a provider function blamed (0-based).
    pub fn function_argument(&self) -> Option<i64> {
        self.0.function_argument
    }

    /// The underlying rpcplugin error (exit status, stderr, gRPC status), for `Plugin` and
    /// `Unsupported` errors.
    pub fn plugin_error(&self) -> Option<&rpcplugin::Error> {
        self.0.plugin.as_ref()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.plugin.as_ref().map(|e| e as _)
    }
}

impl From<crate::cty::Error> for Error {
    fn from(e: crate::cty::Error) -> Error {
        Error::new(ErrorKind::Value, e.to_string())
    }
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
