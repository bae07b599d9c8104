//! `plugin.GRPCStdio`: the plugin's stdout/stderr data carried over gRPC.
//!
//! go-plugin plugins block writing their output until a host reads this stream, so the client
//! opens it right after connecting and reads it until the plugin is gone, whether or not the
//! caller wants the data.

use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use crossbeam_channel::{bounded, select, Receiver, Sender};
use grpcio::{Channel, RpcStatus, RpcStatusCode};
use protobuf::well_known_types::empty::Empty;

use crate::error::{ErrorKind, Result};
use crate::proto::plugin::{stdio_data::Channel as StdioChannel, StdioData};
use crate::proto::plugin_grpc::{GrpcStdio, GrpcStdioClient};
use crate::rpc::{self, CallContext, Canceller, Replies, ReplySink};
use crate::runtime::reactor::{self, SharedWriter};

/// go-plugin's chunk size for stdio data.
const CHUNK: usize = 1024;

/// The least `finish` waits for the cancelled task to end.
const END_WAIT: Duration = Duration::from_millis(200);

/// The host's reader of the plugin's stdio stream: a task on the shared I/O thread.
pub(crate) struct StdioPump {
    stop: Canceller,
    done: Receiver<()>,
}

impl StdioPump {
    pub(crate) fn start(
        channel: &Channel,
        stdout: Option<SharedWriter>,
        stderr: Option<SharedWriter>,
    ) -> Result<StdioPump> {
        // The stream lives as long as the plugin and may stay quiet: no call timeout.
        let replies = GrpcStdioClient::new(channel.clone())
            .with_call_timeout(None)
            .stream_stdio(&Empty::new())?;
        let stop = replies.canceller();
        let (done_tx, done) = bounded::<()>(0);
        let task = StdioTask {
            replies,
            stdout,
            stderr,
            _done: done_tx,
        };
        reactor::register(None, Box::new(task))?;
        Ok(StdioPump { stop, done })
    }

    /// Lets data still in flight arrive for up to `linger`, then ends the stream; returns once
    /// the task has stopped using the writers (or after `linger`, at least 200 ms, more should a
    /// writer block).
    pub(crate) fn finish(self, linger: Duration) {
        let _ = self.done.recv_timeout(linger);
        self.stop.cancel();
        // The cancelled task ends on the I/O thread's next turn; a writer that blocks is not
        // waited for beyond this.
        let _ = self.done.recv_timeout(linger.max(END_WAIT));
    }

    /// The longest [`StdioPump::finish`] takes with `linger`: the linger, then the wait for the
    /// task to end.
    pub(crate) const fn finish_bound(linger: Duration) -> Duration {
        let end = if linger.as_nanos() > END_WAIT.as_nanos() {
            linger
        } else {
            END_WAIT
        };
        crate::runtime::total(&[linger, end])
    }
}

/// Reads `GRPCStdio` messages into the caller's writers.
struct StdioTask {
    replies: Replies<StdioData>,
    stdout: Option<SharedWriter>,
    stderr: Option<SharedWriter>,
    /// Dropped with the task: `StdioPump::finish` waits for it.
    _done: Sender<()>,
}

impl reactor::Task for StdioTask {
    fn run(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        let (stdout, stderr) = (&self.stdout, &self.stderr);
        let end = rpc::stream_turn(&mut self.replies, cx, |data| {
            let sink = match data.channel.enum_value() {
                Ok(StdioChannel::STDOUT) => stdout,
                Ok(StdioChannel::STDERR) => stderr,
                other => {
                    log::warn!("stdio data on unknown channel {other:?} dropped");
                    return;
                }
            };
            if let Some(writer) = sink {
                // Keep reading even if the caller's writer panics: a go-plugin plugin blocks on
                // its stdout while nobody reads this stream.
                let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
                    let _ = w.write_all(&data.data).and_then(|_| w.flush());
                }));
                if written.is_err() {
                    log::error!("a stdio writer panicked; data dropped");
                }
            }
        });
        match end {
            None => true,
            Some(Ok(())) => false,
            Some(Err(e)) => {
                if e.rpc_code() == Some(RpcStatusCode::UNIMPLEMENTED) {
                    log::debug!("the plugin does not implement GRPCStdio; no stdio forwarding");
                } else if !(e.kind() == ErrorKind::Cancelled
                    || e.rpc_code() == Some(RpcStatusCode::UNAVAILABLE)
                    || e.rpc_code() == Some(RpcStatusCode::CANCELLED))
                {
                    log::error!("reading the plugin's stdio stream: {e}");
                }
                false
            }
        }
    }
}

/// A writer for the plugin's stdout or stderr that sends what is written to the host over
/// `GRPCStdio`. Get one from [`crate::server::PluginContext`]. Writes block while the host is not
/// reading (as go-plugin's do), beyond a small buffer.
#[derive(Clone)]
pub struct StdioWriter {
    channel: StdioChannel,
    tx: Sender<StdioData>,
}

impl Write for StdioWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = buf.len().min(CHUNK);
        let mut data = StdioData::new();
        data.channel = self.channel.into();
        data.data = buf[..n].to_vec();
        self.tx.send(data).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the plugin server has stopped",
            )
        })?;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The plugin side of `GRPCStdio`: one consumer, data not replayed.
pub(crate) struct StdioService {
    rx: Mutex<Option<Receiver<StdioData>>>,
    stop: Receiver<()>,
}

/// The service, the writers feeding it, and what stops it.
pub(crate) struct StdioParts {
    pub service: StdioService,
    pub stdout: StdioWriter,
    pub stderr: StdioWriter,
    pub stop: Sender<()>,
}

pub(crate) fn plugin_side() -> StdioParts {
    let (tx, rx) = bounded(64);
    let (stop_tx, stop_rx) = bounded(0);
    StdioParts {
        service: StdioService {
            rx: Mutex::new(Some(rx)),
            stop: stop_rx,
        },
        stdout: StdioWriter {
            channel: StdioChannel::STDOUT,
            tx: tx.clone(),
        },
        stderr: StdioWriter {
            channel: StdioChannel::STDERR,
            tx,
        },
        stop: stop_tx,
    }
}

impl GrpcStdio for StdioService {
    fn stream_stdio(
        &self,
        _call: &CallContext,
        _req: Empty,
        mut replies: ReplySink<StdioData>,
    ) -> std::result::Result<(), RpcStatus> {
        let Some(rx) = self.rx.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return Err(RpcStatus::with_message(
                RpcStatusCode::FAILED_PRECONDITION,
                "the stdio stream already has a reader".to_owned(),
            ));
        };
        loop {
            let data = select! {
                recv(rx) -> data => match data { Ok(d) => d, Err(_) => return Ok(()) },
                recv(self.stop) -> _ => return Ok(()),
            };
            replies.send(data)?;
        }
    }
}
