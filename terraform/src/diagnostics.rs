//! Diagnostics: what a provider reports about a call, each with an attribute path.

use std::fmt;

use crate::cty::Path;

/// How bad a diagnostic is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// The call failed.
    Error,
    /// The call succeeded; something deserves attention.
    Warning,
}

/// One diagnostic from a provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// One line.
    pub summary: String,
    /// More, possibly several lines.
    pub detail: String,
    /// The attribute it is about, if the provider said (map keys and list indexes included).
    pub attribute: Option<Path>,
}

impl Diagnostic {
    /// Whether this is an error.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// `summary: detail (at .path)`.
impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary)?;
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail.trim_end())?;
        }
        if let Some(path) = &self.attribute {
            write!(f, " (at {path})")?;
        }
        Ok(())
    }
}
