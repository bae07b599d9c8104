//! A service as generated code hands it over, and the servers it is registered on: each server
//! counts its own unary calls in flight, so that its graceful stop waits for those and nobody
//! else's.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use grpcio::ChannelBuilder;

use crate::runtime::grpc::environment;

/// One server's unary calls whose reply has not been sent yet, so that its graceful stop waits
/// for exactly those.
#[derive(Default)]
pub(crate) struct Scope {
    in_flight: Mutex<usize>,
    idle: Condvar,
}

impl Scope {
    /// Waits until no unary call of this server is in flight, or `timeout` passes. True when
    /// none is left.
    pub(crate) fn wait_idle(&self, timeout: Duration) -> bool {
        let n = lock(&self.in_flight);
        let (n, _) = self
            .idle
            .wait_timeout_while(n, timeout, |n| *n > 0)
            .unwrap_or_else(|p| p.into_inner());
        *n == 0
    }
}

/// Which server a service's handlers account their calls to; set when the service is
/// registered on a server this crate builds.
#[doc(hidden)]
#[derive(Default)]
pub struct ScopeSlot(Mutex<Option<Arc<Scope>>>);

impl ScopeSlot {
    pub(crate) fn bind(&self, scope: &Arc<Scope>) {
        *lock(&self.0) = Some(scope.clone());
    }
}

/// A service to serve on a plugin server or a broker listener: what the generated
/// `create_<service>()` functions return. Its calls are accounted to the server it is registered
/// on, so that server's graceful stop waits for its own calls and nobody else's.
pub struct Service {
    grpc: grpcio::Service,
    scope: Arc<ScopeSlot>,
    /// The service's full name and the file that defines it (for gRPC reflection).
    descriptor: Option<(&'static str, &'static protobuf::reflect::FileDescriptor)>,
}

impl Service {
    #[doc(hidden)]
    pub fn new(grpc: grpcio::Service, scope: Arc<ScopeSlot>) -> Service {
        Service {
            grpc,
            scope,
            descriptor: None,
        }
    }

    /// Records the service's full name and the file that defines it, for gRPC reflection
    /// (generated code calls it).
    #[doc(hidden)]
    pub fn described(
        mut self,
        name: &'static str,
        file: &'static protobuf::reflect::FileDescriptor,
    ) -> Service {
        self.descriptor = Some((name, file));
        self
    }

    /// The service's full name and defining file, when its code generator recorded them.
    pub(crate) fn descriptor(
        &self,
    ) -> Option<(&'static str, &'static protobuf::reflect::FileDescriptor)> {
        self.descriptor
    }

    /// The grpcio service, to register on a grpcio server of your own. Its handlers still run
    /// off the completion-queue threads.
    pub fn into_grpcio(self) -> grpcio::Service {
        self.grpc
    }

    /// Binds the service's calls to `scope` and hands out the grpcio service.
    pub(crate) fn register(self, scope: &Arc<Scope>) -> grpcio::Service {
        self.scope.bind(scope);
        self.grpc
    }
}

impl From<grpcio::Service> for Service {
    /// A service built some other way (another code generator): it is served as it is, with
    /// its own threading.
    fn from(grpc: grpcio::Service) -> Service {
        Service {
            grpc,
            scope: Arc::default(),
            descriptor: None,
        }
    }
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").finish_non_exhaustive()
    }
}

/// Counts a unary call as in flight on its server until dropped: when the reply is sent, when
/// the call is refused, or when its job is dropped without running.
pub(super) struct InFlight(Option<Arc<Scope>>);

impl InFlight {
    pub(super) fn new(slot: &ScopeSlot) -> InFlight {
        let scope = lock(&slot.0).clone();
        if let Some(scope) = &scope {
            *lock(&scope.in_flight) += 1;
        }
        InFlight(scope)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(scope) = &self.0 {
            let mut n = lock(&scope.in_flight);
            *n = n.saturating_sub(1);
            if *n == 0 {
                scope.idle.notify_all();
            }
        }
    }
}

/// A gRPC server builder with the options every listener of this crate uses: SO_REUSEPORT off
/// (gRPC turns it on, which would let two plugins silently share a port) and unlimited message
/// sizes.
pub(crate) fn server_builder(services: Vec<Service>) -> (grpcio::ServerBuilder, Arc<Scope>) {
    let scope = Arc::<Scope>::default();
    let env = environment();
    let args = ChannelBuilder::new(env.clone())
        .reuse_port(false)
        .max_receive_message_len(i32::MAX)
        .max_send_message_len(i32::MAX)
        .build_args();
    let builder = services.into_iter().fold(
        grpcio::ServerBuilder::new(env).channel_args(args),
        |b, s| b.register_service(s.register(&scope)),
    );
    (builder, scope)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
