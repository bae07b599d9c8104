//! The process-wide gRPC environment and the channel options every connection uses.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use grpcio::{Channel, ChannelBuilder, ConnectivityState, EnvBuilder, Environment};

use super::executor::block_on;
use super::tls::{self, Security};
use crate::error::{Error, ErrorKind, Result};
use crate::wire::Address;

/// Completion-queue threads of the shared gRPC environment. Every client and server in the
/// process shares them, so a host running many plugins does not multiply gRPC's thread pools.
///
/// One, because that is fastest: gRPC core hands each call to a completion queue in turn, and
/// with two queues the thread that read a reply often had to wake the other queue's thread to
/// complete the call, a second thread hop per call. Measured against a go-plugin plugin (unary
/// round trips, same run): 1 queue took 42 µs of host CPU and 89 µs per call, 2 queues 64 µs
/// and 98 µs. No handler runs on these threads (they only move bytes and complete calls), so
/// one is enough for many plugins.
pub const GRPC_THREADS: usize = 1;

/// The one gRPC environment of the process (created on first use, with gRPC core's own log routed
/// into the `log` crate).
pub fn environment() -> Arc<Environment> {
    static ENV: OnceLock<(Arc<Environment>, Channel)> = OnceLock::new();
    ENV.get_or_init(|| {
        crate::sys::route_grpc_log();
        let env = Arc::new(
            EnvBuilder::new()
                .cq_count(GRPC_THREADS)
                .name_prefix("rpcplugin-grpc")
                .build(),
        );
        // Every channel holds gRPC core's default event engine (its channel args are given
        // one); when the last holder goes, the engine is destroyed, which waits for its worker
        // threads, and a worker that was just started sleeps a full second before it notices
        // (gRPC 1.56, OriginalThreadPool::Queue::SleepIfRunning). That stalled whichever thread
        // dropped the last connection, typically closing the last plugin, for up to a second.
        // This channel is never connected (no socket, no fd) and keeps the engine for the life
        // of the process.
        let keeper = ChannelBuilder::new(env.clone()).connect("unix:/rpcplugin-engine-keeper");
        (env, keeper)
    })
    .0
    .clone()
}

/// go-plugin's channel options: unlimited message sizes, no keepalive pings (Go servers answer
/// frequent pings with GOAWAY), and the TLS name override for certificates issued to `localhost`.
pub(crate) fn channel(address: &Address, security: &Security) -> Channel {
    channel_to(&address.grpc_target(), security)
}

/// [`channel`] to a gRPC target string (a multiplexing session's private socket).
pub(crate) fn channel_to(target: &str, security: &Security) -> Channel {
    let builder = ChannelBuilder::new(environment())
        .max_receive_message_len(i32::MAX)
        .max_send_message_len(i32::MAX)
        // A plugin connection is point to point; share no subchannels with other clients.
        .use_local_subchannel_pool(true)
        .initial_reconnect_backoff(Duration::from_millis(20))
        .max_reconnect_backoff(Duration::from_millis(500));
    match security {
        Security::Plaintext => builder.connect(target),
        Security::Tls {
            root_pem,
            identity,
            server_name,
        } => builder
            .override_ssl_target(server_name.clone())
            .set_credentials(tls::channel_credentials(root_pem, identity.as_ref()))
            .connect(target),
    }
}

/// Failed connection attempts on a socket that accepts connections before the security is
/// declared mismatched.
const MISMATCH_FAILURES: u32 = 3;

/// A connection attempt of our own to `address`: Ok if it accepts connections, else why not.
fn probe(address: &Address) -> std::io::Result<()> {
    match address {
        // A multiplexing session's private listener (an abstract socket, named `@name`).
        Address::Unix(path) if path.to_string_lossy().starts_with('@') => {
            let name = path.to_string_lossy();
            crate::sys::PrivateListener::connect(&name[1..]).map(drop)
        }
        Address::Unix(path) => std::os::unix::net::UnixStream::connect(path).map(drop),
        Address::Tcp(addr) => {
            std::net::TcpStream::connect_timeout(addr, Duration::from_millis(200)).map(drop)
        }
    }
}

/// A plugin listens before it prints its handshake line, so an address that refuses
/// connections for this long after the first failure is one nobody serves any more.
const REFUSED_FOR: Duration = Duration::from_secs(1);

fn refused(address: &Address, e: &std::io::Error, failures: u32) -> Error {
    Error::new(
        ErrorKind::Transport,
        format!(
            "the plugin's address {address} refuses connections ({e}; {failures} attempts over \
             more than {REFUSED_FOR:?}): nothing listens there although the plugin announced it \
             (did the plugin close its listener, or announce an address it does not serve?)"
        ),
    )
}

fn security_mismatch(address: &Address, security: &Security, failures: u32) -> Error {
    match security {
        Security::Tls { .. } => Error::new(
            ErrorKind::Tls,
            format!(
                "the TLS handshake with the plugin at {address} failed {failures} times while its \
                 socket accepts connections: the plugin presents a certificate other than the \
                 one it announced or the one configured (refused as a possible \
                 man-in-the-middle), wants a client certificate this host does not present, or \
                 serves no TLS"
            ),
        ),
        Security::Plaintext => Error::new(
            ErrorKind::Transport,
            format!(
                "the plugin at {address} accepts connections but does not speak plaintext gRPC \
                 ({failures} attempts): it probably serves TLS, which this host was not \
                 configured for (ClientConfig::tls)"
            ),
        ),
    }
}

/// Waits until `channel` is connected or `deadline` passes; `abort` is checked between state
/// changes (at least every 100 ms) so a dead plugin ends the wait early.
pub(crate) fn wait_connected(
    channel: &Channel,
    address: &Address,
    security: &Security,
    deadline: Instant,
    mut abort: impl FnMut() -> Option<Error>,
) -> Result<()> {
    let mut state = channel.check_connectivity_state(true);
    let mut failures = 0u32;
    let mut first_failure = None;
    loop {
        match state {
            ConnectivityState::GRPC_CHANNEL_READY => return Ok(()),
            ConnectivityState::GRPC_CHANNEL_SHUTDOWN => {
                return Err(Error::new(
                    ErrorKind::Transport,
                    format!("connection to the plugin at {address} was shut down"),
                ))
            }
            ConnectivityState::GRPC_CHANNEL_TRANSIENT_FAILURE => {
                failures += 1;
                let first = *first_failure.get_or_insert_with(Instant::now);
                // A socket that accepts connections while gRPC keeps failing on it is a plugin
                // speaking the other security (or presenting another certificate): permanent,
                // so say so now instead of at the deadline. One that keeps refusing them is
                // served by nobody.
                if failures >= MISMATCH_FAILURES {
                    match probe(address) {
                        Ok(()) => return Err(security_mismatch(address, security, failures)),
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::ConnectionRefused
                                    | std::io::ErrorKind::NotFound
                            ) && first.elapsed() >= REFUSED_FOR =>
                        {
                            return Err(refused(address, &e, failures));
                        }
                        Err(_) => {}
                    }
                }
            }
            _ => {}
        }
        if let Some(err) = abort() {
            return Err(err);
        }
        let now = Instant::now();
        if now >= deadline {
            let what = if failures > 0 {
                "the connection or TLS handshake kept failing (gRPC core logs the reason at \
                 error level)"
            } else {
                "the connection did not become ready"
            };
            return Err(Error::new(
                ErrorKind::Timeout,
                format!("timed out connecting to the plugin at {address}: {what}"),
            ));
        }
        let slice = (deadline - now).min(Duration::from_millis(100));
        if block_on(Box::pin(channel.wait_for_state_change(state, slice))) {
            state = channel.check_connectivity_state(true);
        }
    }
}
