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
    /// A gRPC call failed: a call through a generated stub (the status is in
    /// [`Error::rpc_status`]) or one this crate makes itself.
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
pub struct Error(Box<Repr>);

/// Boxed, so that `Result<T, Error>` stays one pointer wide on the error side.
struct Repr {
    kind: ErrorKind,
    message: String,
    exit_status: Option<ExitStatus>,
    stderr_tail: Vec<String>,
    rpc_status: Option<grpcio::RpcStatus>,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error(Box::new(Repr {
            kind,
            message: message.into(),
            exit_status: None,
            stderr_tail: Vec::new(),
            rpc_status: None,
            source: None,
        }))
    }

    /// The error of a failed gRPC call to `method` (its full path, `/pkg.Service/Method`).
    /// `DEADLINE_EXCEEDED` becomes [`ErrorKind::Timeout`]; `default_timeout` is the stub's own
    /// default deadline when the caller did not pass call options, named in the message.
    pub(crate) fn from_call(
        method: &str,
        err: grpcio::Error,
        default_timeout: Option<std::time::Duration>,
    ) -> Self {
        let status = match &err {
            grpcio::Error::RpcFailure(status) => Some(status.clone()),
            grpcio::Error::RpcFinished(Some(status))
                if status.code() != grpcio::RpcStatusCode::OK =>
            {
                Some(status.clone())
            }
            _ => None,
        };
        let Some(status) = status else {
            return Error::new(ErrorKind::Rpc, format!("{method} failed: {err}")).with_source(err);
        };
        let detail = match status.message() {
            "" => String::new(),
            m => format!(": {m}"),
        };
        let code = status.code();
        let mut error = if code == grpcio::RpcStatusCode::DEADLINE_EXCEEDED {
            let whose = match default_timeout {
                Some(d) => format!(
                    " (the stub's default call timeout of {d:?}; set another with \
                     with_call_timeout, or pass call options to the _opt method)"
                ),
                None => String::new(),
            };
            Error::new(
                ErrorKind::Timeout,
                format!("{method}: no reply before the call's deadline (DEADLINE_EXCEEDED{detail}){whose}"),
            )
        } else {
            Error::new(
                ErrorKind::Rpc,
                format!("{method} failed: {}{detail}", status_code_name(code)),
            )
        };
        error.0.rpc_status = Some(status);
        error.with_source(err)
    }

    /// The gRPC status of a failed call ([`ErrorKind::Rpc`] or a deadline's
    /// [`ErrorKind::Timeout`]), as the peer sent it.
    pub fn rpc_status(&self) -> Option<&grpcio::RpcStatus> {
        self.0.rpc_status.as_ref()
    }

    /// The gRPC status code of a failed call, if this error comes from one.
    ///
    /// ```no_run
    /// # use rpcplugin::proto::kv::GetRequest;
    /// # fn demo(kv: &rpcplugin::proto::kv_grpc::KvClient) {
    /// match kv.get(&GetRequest::new()) {
    ///     Err(e) if e.rpc_code() == Some(grpcio::RpcStatusCode::NOT_FOUND) => println!("no such key"),
    ///     Err(e) => eprintln!("{e}"),
    ///     Ok(reply) => println!("{:?}", reply.value),
    /// }
    /// # }
    /// ```
    pub fn rpc_code(&self) -> Option<grpcio::RpcStatusCode> {
        self.0.rpc_status.as_ref().map(|s| s.code())
    }

    pub(crate) fn with_source(
        mut self,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        self.0.source = Some(source.into());
        self
    }

    pub(crate) fn with_exit_status(mut self, status: Option<ExitStatus>) -> Self {
        self.0.exit_status = status;
        self
    }

    pub(crate) fn with_stderr_tail(mut self, tail: Vec<String>) -> Self {
        self.0.stderr_tail = tail;
        self
    }

    pub(crate) fn io(context: impl Into<String>, err: std::io::Error) -> Self {
        let context = context.into();
        Error::new(ErrorKind::Io, format!("{context}: {err}")).with_source(err)
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    /// The message without the attached stderr lines.
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// The plugin's exit status, when the plugin had exited.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.0.exit_status
    }

    /// The last lines the plugin wrote to stderr before the failure (oldest first), if any.
    pub fn stderr_tail(&self) -> &[String] {
        &self.0.stderr_tail
    }

    /// True when a deadline ran out.
    pub fn is_timeout(&self) -> bool {
        self.0.kind == ErrorKind::Timeout
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.message)?;
        if let Some(status) = self.0.exit_status {
            write!(f, " (plugin {status})")?;
        }
        if !self.0.stderr_tail.is_empty() {
            write!(f, "; last plugin stderr lines:")?;
            for line in &self.0.stderr_tail {
                write!(f, "\n  | {line}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.0.kind)
            .field("message", &self.0.message)
            .field("exit_status", &self.0.exit_status)
            .field("stderr_tail", &self.0.stderr_tail)
            .field("source", &self.0.source)
            .finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0
            .source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<grpcio::Error> for Error {
    fn from(err: grpcio::Error) -> Self {
        Error::from_call("a gRPC call", err, None)
    }
}

/// The canonical upper-case name of a gRPC status code (`NOT_FOUND`).
fn status_code_name(code: grpcio::RpcStatusCode) -> String {
    use grpcio::RpcStatusCode as C;
    let name = match code {
        C::OK => "OK",
        C::CANCELLED => "CANCELLED",
        C::UNKNOWN => "UNKNOWN",
        C::INVALID_ARGUMENT => "INVALID_ARGUMENT",
        C::DEADLINE_EXCEEDED => "DEADLINE_EXCEEDED",
        C::NOT_FOUND => "NOT_FOUND",
        C::ALREADY_EXISTS => "ALREADY_EXISTS",
        C::PERMISSION_DENIED => "PERMISSION_DENIED",
        C::RESOURCE_EXHAUSTED => "RESOURCE_EXHAUSTED",
        C::FAILED_PRECONDITION => "FAILED_PRECONDITION",
        C::ABORTED => "ABORTED",
        C::OUT_OF_RANGE => "OUT_OF_RANGE",
        C::UNIMPLEMENTED => "UNIMPLEMENTED",
        C::INTERNAL => "INTERNAL",
        C::UNAVAILABLE => "UNAVAILABLE",
        C::DATA_LOSS => "DATA_LOSS",
        C::UNAUTHENTICATED => "UNAUTHENTICATED",
        other => return format!("status {}", i32::from(other)),
    };
    name.to_owned()
}
