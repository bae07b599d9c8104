//! Blocking gRPC calls and handlers: what generated stubs use, and what their users see.
//!
//! **Calls** (the host side, or a plugin calling a service the host offered): unary calls
//! block until the reply; streaming calls are blocking values ([`Replies`], [`RequestSender`],
//! [`ClientStreamingCall`], [`DuplexCall`]), never futures.
//!
//! Every wait here is bounded by the stub's call timeout (see
//! [`DEFAULT_CALL_TIMEOUT`]) unless the stub was told otherwise: a stream stays open as long as
//! messages keep coming, but no single `send`, `recv` or `finish` waits longer than that for the
//! plugin. Such a timeout is [`ErrorKind::Timeout`] and leaves the call open: the caller may wait
//! again or drop the call, which cancels it.
//!
//! ```no_run
//! use rpcplugin::proto::kv::{Chunk, DownloadRequest};
//! use rpcplugin::proto::kv_grpc::KvClient;
//! # fn demo(kv: KvClient) -> rpcplugin::Result<()> {
//! // Client streaming: send chunks, then finish for the one reply.
//! let mut upload = kv.upload()?;
//! for part in [&b"hello "[..], b"world"] {
//!     let mut chunk = Chunk::new();
//!     chunk.key = "greeting".into();
//!     chunk.data = part.to_vec();
//!     upload.send(chunk)?;                 // blocks while the plugin is not reading
//! }
//! let reply = upload.finish()?;
//! println!("stored {} bytes", reply.size);
//!
//! // Server streaming: a blocking iterator; dropping it cancels the call.
//! let mut req = DownloadRequest::new();
//! req.key = "greeting".into();
//! for chunk in kv.download(&req)? {
//!     print!("{}", String::from_utf8_lossy(&chunk?.data));
//! }
//! # Ok(())
//! # }
//! ```
//!
//! **Handlers** (the plugin side, or a host serving a broker id): each request runs on a
//! process-wide pool of handler threads, off gRPC's completion-queue threads, with a
//! [`CallContext`] and, for streaming methods, a blocking [`Requests`] iterator and a blocking
//! [`ReplySink`].
//!
//! [`ErrorKind::Timeout`]: crate::ErrorKind::Timeout

mod calls;
mod handlers;
mod pool;
mod raw;
mod service;

pub use calls::{
    Canceller, ClientStreamingCall, DuplexCall, Replies, RequestSender, DEFAULT_CALL_TIMEOUT,
};
pub use handlers::{CallContext, ReplySink, Requests};
pub use pool::set_max_handler_threads;
pub use raw::RawClient;
pub use service::Service;

pub(crate) use calls::stream_turn;
pub(crate) use pool::{acquire as acquire_pool, Pool, JOIN_GRACE};
pub(crate) use service::{server_builder, Scope};

/// What generated code calls; not part of the API.
#[doc(hidden)]
pub mod __generated {
    pub use crate::rpc::calls::{call_error, default_options};
    pub use crate::rpc::handlers::{
        handle_client_streaming, handle_duplex, handle_server_streaming, handle_unary,
    };
    pub use crate::rpc::service::ScopeSlot;
}
