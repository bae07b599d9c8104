//! The one error type of the crate.

use std::fmt;
use std::process::ExitStatus;

/// What went wrong, for callers that want to react differently to each case.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The configuration or an argument is invalid (empty command, bad PEM, wrong state).
    Config,
    /// The plugin process could not be started (not found, not executable, ...).
    Spawn,
    /// The plugin's handshake line is missing, malformed or from something that is not a plugin.
    Handshake,
    /// The plugin speaks something this host cannot: the netrpc protocol, another core protocol
    /// version, an unknown network, or multiplexed brokering.
    Protocol,
    /// The plugin picked an application protocol version the host did not offer, or none was
    /// common.
    Version,
    /// Connecting to the address the plugin announced failed.
    Transport,
    /// Certificates could not be generated or parsed, or the TLS handshake failed.
    Tls,
    /// A deadline ran out; the message names the phase (handshake, connect, health, ...).
    Timeout,
    /// The plugin process exited: before its handshake, or while in use. The exit status and the
    /// last stderr lines are attached.
    ProcessExited,
    /// The plugin's health service did not report `SERVING`.
    Health,
    /// A gRPC call made by this crate failed.
    Rpc,
    /// A broker operation failed (no connection info for an id, stream gone).
    Broker,
    /// Reattach information is invalid or the plugin to attach to is gone.
    Reattach,
    /// An operating system call failed.
    Io,
    /// `start` was cancelled by a `close` from another thread.
    Cancelled,
    /// The plugin executable's checksum did not match the configured one.
    Checksum,
}

/// An error from this crate: a [`ErrorKind`], a message saying what was expected and what was
/// seen, and for process failures the plugin's exit status and last stderr lines.
pub struct Error {
    kind: ErrorKind,
    message: String,
    exit_status: Option<ExitStatus>,
    stderr_tail: Vec<String>,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            exit_status: None,
            stderr_tail: Vec::new(),
            source: None,
        }
    }

    pub(crate) fn with_source(
        mut self,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        self.source = Some(source.into());
        self
    }

    pub(crate) fn with_exit_status(mut self, status: Option<ExitStatus>) -> Self {
        self.exit_status = status;
        self
    }

    pub(crate) fn with_stderr_tail(mut self, tail: Vec<String>) -> Self {
        self.stderr_tail = tail;
        self
    }

    pub(crate) fn io(context: impl Into<String>, err: std::io::Error) -> Self {
        let context = context.into();
        Error::new(ErrorKind::Io, format!("{context}: {err}")).with_source(err)
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message without the attached stderr lines.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The plugin's exit status, when the plugin had exited.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.exit_status
    }

    /// The last lines the plugin wrote to stderr before the failure (oldest first), if any.
    pub fn stderr_tail(&self) -> &[String] {
        &self.stderr_tail
    }

    /// True when a deadline ran out.
    pub fn is_timeout(&self) -> bool {
        self.kind == ErrorKind::Timeout
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(status) = self.exit_status {
            write!(f, " (plugin {status})")?;
        }
        if !self.stderr_tail.is_empty() {
            write!(f, "; last plugin stderr lines:")?;
            for line in &self.stderr_tail {
                write!(f, "\n  | {line}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .field("exit_status", &self.exit_status)
            .field("stderr_tail", &self.stderr_tail)
            .field("source", &self.source)
            .finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<grpcio::Error> for Error {
    fn from(err: grpcio::Error) -> Self {
        Error::new(ErrorKind::Rpc, format!("grpc call failed: {err}")).with_source(err)
    }
}
