//! `plugin.GRPCBroker`: extra gRPC connections between host and plugin, announced by id on one
//! long-lived bidirectional stream. The same [`Broker`] serves both sides.
//!
//! * [`Broker::next_id`] picks an id (each side counts from 1 on its own).
//! * [`Broker::accept_and_serve`] listens on a fresh unix socket, serves services there, and
//!   announces `id -> socket` to the peer.
//! * [`Broker::dial`] waits for the peer's announcement of an id and connects to it.
//!
//! Sub-connections use the TLS of the main connection: with auto mTLS each side presents its own
//! certificate and pins the other's.
//!
//! With multiplexed brokering (`PLUGIN_MULTIPLEX_GRPC`) nothing is announced: `dial(id)` knocks
//! (`ConnInfo{service_id: id, knock: {knock: true}}`), waits for the peer's acknowledgement
//! (`knock: {knock: true, ack: true, error}`), then opens a yamux stream, which the peer hands to
//! the server it serves under `id`. A knock for an id this side does not serve yet is held for
//! the broker timeout, as go-plugin holds it until `Accept`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use grpcio::{Channel, RpcStatus, Server};

use crate::error::{Error, ErrorKind, Result};
use crate::proto::plugin::{conn_info, ConnInfo};
use crate::rpc::{self, Canceller, DuplexCall, Replies, ReplySink, RequestSender, Requests};
use crate::runtime::executor::block_until;
use crate::runtime::grpc;
use crate::runtime::mux::{self, Mux};
use crate::runtime::tls::{self, Security, ServerTls};
use crate::runtime::{random_u32, reactor, spawn_thread};
use crate::wire::Address;

/// Connection info for one id, waiting for a dial (or a dial waiting for its info).
struct Slot {
    tx: Sender<ConnInfo>,
    rx: Receiver<ConnInfo>,
    created: Instant,
}

impl Slot {
    fn new() -> Slot {
        let (tx, rx) = bounded(1);
        Slot {
            tx,
            rx,
            created: Instant::now(),
        }
    }
}

const MAX_PENDING_IDS: usize = Broker::MAX_PENDING_IDS;

/// Dropped announcements are logged at most once per this interval (with their count), so a peer
/// that announces a million ids cannot write a million lines into the host's log.
const DROP_REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// Why an announcement was dropped without a dial taking it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DropCause {
    /// More than [`MAX_PENDING_IDS`] waited, and it was the oldest.
    Full,
    /// Nobody dialed it within the broker timeout.
    Expired,
}

/// Counts announcements dropped unused and decides when a log line about them is due: the first
/// drop at once, then one line per [`DROP_REPORT_INTERVAL`] with the count since the last line,
/// and a last line when the broker closes.
#[derive(Default)]
struct Drops {
    total: u64,
    full: u64,
    expired: u64,
    last_report: Option<Instant>,
}

impl Drops {
    /// Counts one drop at `now`; returns the line to log, if one is due.
    fn note(
        &mut self,
        id: u32,
        cause: DropCause,
        now: Instant,
        timeout: Duration,
    ) -> Option<String> {
        self.total += 1;
        let Some(last) = self.last_report else {
            self.last_report = Some(now);
            let why = match cause {
                DropCause::Full => {
                    format!("more than {MAX_PENDING_IDS} ids were pending and it was the oldest")
                }
                DropCause::Expired => {
                    format!("nobody dialed it within the broker timeout ({timeout:?})")
                }
            };
            return Some(format!(
                "broker id {id} announced by the peer was dropped without a dial: {why}; further \
                 drops are counted and logged at most every {DROP_REPORT_INTERVAL:?}"
            ));
        };
        match cause {
            DropCause::Full => self.full += 1,
            DropCause::Expired => self.expired += 1,
        }
        if now.duration_since(last) < DROP_REPORT_INTERVAL {
            return None;
        }
        self.report(now, timeout)
    }

    /// The line for the drops not logged yet, if any (also when the broker closes).
    fn report(&mut self, now: Instant, timeout: Duration) -> Option<String> {
        let count = self.full + self.expired;
        if count == 0 {
            return None;
        }
        let since = self
            .last_report
            .map_or(Duration::ZERO, |last| now.duration_since(last));
        let line = format!(
            "{count} more broker ids announced by the peer were dropped without a dial in the last \
             {since:.1?} ({} because more than {MAX_PENDING_IDS} were pending, {} not dialed \
             within the broker timeout of {timeout:?}); {} in all",
            self.full, self.expired, self.total
        );
        self.full = 0;
        self.expired = 0;
        self.last_report = Some(now);
        Some(line)
    }
}

/// Where this side's announcements go.
enum Outgoing {
    /// Queued: for the plugin side's writer thread, or until the host's stream is open.
    Queue(Sender<ConnInfo>),
    /// Host side: sent on the stream by the announcing thread itself (bounded by the broker
    /// timeout), so a host runs no broker thread of its own.
    Stream(RequestSender<ConnInfo>),
    Closed,
}

/// A handle on the broker of one host-plugin connection. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    next_id: AtomicU32,
    outgoing: Mutex<Outgoing>,
    pending: Mutex<Option<Receiver<ConnInfo>>>,
    /// Connection info per id, parked until someone dials it.
    mailbox: Mutex<HashMap<u32, Slot>>,
    /// Announcements dropped unused (counted under the `mailbox` lock).
    drops: Mutex<Drops>,
    dial_security: Security,
    serve_security: Option<ServerTls>,
    socket_dir: PathBuf,
    timeout: Duration,
    servers: Mutex<Vec<(Server, PathBuf)>>,
    pool: Mutex<Option<Arc<rpc::Pool>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Cancels the host's stream (the plugin's ends when its server cancels its calls).
    stop: Mutex<Option<Canceller>>,
    ended: Mutex<Option<String>>,
    /// The multiplexed session, with multiplexed brokering.
    mux: Option<Mux>,
    /// Multiplexed dials knock and open their stream one at a time (the peer hands streams to
    /// knocked ids in order).
    dial_lock: Mutex<()>,
    mux_ids: Mutex<MuxIds>,
}

/// Multiplexed brokering: ids this side serves, and knocks for ids it does not serve yet.
#[derive(Default)]
struct MuxIds {
    served: HashMap<u32, PathBuf>,
    knocks: HashMap<u32, Instant>,
}

fn warn_drops(report: Option<String>) {
    if let Some(line) = report {
        log::warn!("{line}");
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) struct BrokerSetup {
    pub dial_security: Security,
    /// How the listeners this side serves are secured (None: plaintext).
    pub serve_security: Option<ServerTls>,
    pub socket_dir: PathBuf,
    pub timeout: Duration,
    pub mux: Option<Mux>,
}

impl Broker {
    /// At most this many ids wait in a broker's mailbox (announced and not dialed, or dialed and
    /// not announced); beyond it the oldest is dropped. Each also expires after the broker
    /// timeout, as a dial of it would have given up by then.
    pub const MAX_PENDING_IDS: usize = mux::MAX_ROUTES;

    /// A broker whose stream is not open yet: announcements queue until the stream is open.
    pub(crate) fn new(setup: BrokerSetup) -> Broker {
        let (out_tx, out_rx) = unbounded::<ConnInfo>();
        Broker {
            inner: Arc::new(Inner {
                next_id: AtomicU32::new(0),
                outgoing: Mutex::new(Outgoing::Queue(out_tx)),
                pending: Mutex::new(Some(out_rx)),
                mailbox: Mutex::default(),
                drops: Mutex::default(),
                dial_security: setup.dial_security,
                serve_security: setup.serve_security,
                socket_dir: setup.socket_dir,
                timeout: setup.timeout,
                servers: Mutex::default(),
                pool: Mutex::default(),
                threads: Mutex::default(),
                stop: Mutex::default(),
                ended: Mutex::default(),
                mux: setup.mux,
                dial_lock: Mutex::default(),
                mux_ids: Mutex::default(),
            }),
        }
    }

    /// Host side: runs the broker over the `StartStream` call the host opened. Announcements are
    /// sent by the thread that makes them; the peer's are read by a task on the shared I/O
    /// thread. Only the first stream attaches.
    pub(crate) fn attach_host(&self, call: DuplexCall<ConnInfo, ConnInfo>) -> Result<()> {
        let inner = &self.inner;
        let Some(out_rx) = lock(&inner.pending).take() else {
            return Ok(());
        };
        let (sender, replies) = call.split();
        *lock(&inner.stop) = Some(replies.canceller());
        {
            let mut outgoing = lock(&inner.outgoing);
            if matches!(*outgoing, Outgoing::Closed) {
                return Ok(());
            }
            let mut sender = sender.with_timeout(Some(inner.timeout));
            for info in out_rx.try_iter() {
                sender.send(info)?;
            }
            *outgoing = Outgoing::Stream(sender);
        }
        let task = ReaderTask {
            replies,
            inner: Arc::downgrade(inner),
        };
        reactor::register(None, Box::new(task))?;
        Ok(())
    }

    /// Plugin side: serves the host's `StartStream` call. Announcements go out from a writer
    /// thread; this (handler) thread reads the host's until the stream ends.
    pub(crate) fn serve_stream(
        &self,
        mut requests: Requests<ConnInfo>,
        mut replies: ReplySink<ConnInfo>,
    ) -> std::result::Result<(), RpcStatus> {
        let inner = &self.inner;
        let Some(out_rx) = lock(&inner.pending).take() else {
            return Err(RpcStatus::with_message(
                grpcio::RpcStatusCode::FAILED_PRECONDITION,
                "the broker stream is already open".to_owned(),
            ));
        };
        let writer = spawn_thread("rpcplugin-broker-tx", move || {
            for info in out_rx {
                if replies.send(info).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| RpcStatus::with_message(grpcio::RpcStatusCode::INTERNAL, e.to_string()))?;
        lock(&inner.threads).push(writer);
        let weak = Arc::downgrade(inner);
        let why = loop {
            match requests.recv() {
                Ok(Some(info)) => match weak.upgrade() {
                    Some(inner) => inner.deliver(info),
                    None => return Ok(()),
                },
                Ok(None) => break "the peer closed the broker stream".to_owned(),
                Err(status) => break format!("the broker stream failed: {}", status.message()),
            }
        };
        if let Some(inner) = weak.upgrade() {
            inner.end(why);
        }
        Ok(())
    }

    /// How many ids wait in this broker's mailbox: announced by the peer and not dialed yet, or
    /// dialed and not announced yet. Bounded by [`Broker::MAX_PENDING_IDS`]; each expires after the
    /// broker timeout.
    pub fn pending_ids(&self) -> usize {
        let mut mailbox = lock(&self.inner.mailbox);
        let report = self.inner.prune(&mut mailbox, MAX_PENDING_IDS);
        let pending = mailbox.len();
        drop(mailbox);
        warn_drops(report);
        pending
    }

    /// How many ids the peer announced that this side dropped without a dial taking them: because
    /// more than [`Broker::MAX_PENDING_IDS`] were pending and they were the oldest, or because
    /// nobody dialed them within the broker timeout. A well-behaved peer announces only ids its
    /// host will dial, so anything but 0 points at a bug or a hostile peer; the log says so too,
    /// at most once per 10 s with the count.
    pub fn dropped_ids(&self) -> u64 {
        let _mailbox = lock(&self.inner.mailbox);
        lock(&self.inner.drops).total
    }

    /// A fresh id for a service this side will serve (1, 2, ...).
    pub fn next_id(&self) -> u32 {
        self.inner
            .next_id
            .fetch_add(1, Ordering::SeqCst)
            .wrapping_add(1)
    }

    /// Connects to the service the peer announced under `id`, waiting up to the broker timeout
    /// for the announcement (go-plugin's default is 5 s). With multiplexed brokering it knocks
    /// for `id` instead, waits as long for the acknowledgement, and connects over a new yamux
    /// stream; dials then run one at a time, as the peer pairs knocks with streams in order.
    pub fn dial(&self, id: u32) -> Result<Channel> {
        if let Some(mux) = &self.inner.mux {
            return self.dial_multiplexed(id, mux);
        }
        let deadline = Instant::now() + self.inner.timeout;
        let address = self.dial_address(id, deadline)?;
        let channel = grpc::channel(&address, &self.inner.dial_security);
        grpc::wait_connected(
            &channel,
            &address,
            &self.inner.dial_security,
            deadline,
            || None,
        )?;
        Ok(channel)
    }

    /// Waits until `deadline` for the peer's announcement of `id`, and returns the address it names.
    pub(crate) fn dial_address(&self, id: u32, deadline: Instant) -> Result<Address> {
        let slot = self.inner.slot(id);
        let info = self
            .inner
            .wait_info(id, &slot, deadline, "connection info")?;
        if let Some(knock) = info.knock.as_ref() {
            if !knock.error.is_empty() {
                return Err(Error::new(
                    ErrorKind::Broker,
                    format!("the peer refused broker id {id}: {}", knock.error),
                ));
            }
        }
        Address::parse(&info.network, &info.address).map_err(|e| {
            Error::new(
                ErrorKind::Broker,
                format!("broker id {id}: bad address from the peer: {}", e.message()),
            )
        })
    }

    /// What the stream reader does with each message of the peer (for the fuzz targets).
    #[cfg(fuzzing)]
    pub(crate) fn deliver_for_fuzzing(&self, info: ConnInfo) {
        self.inner.deliver(info);
    }

    /// Multiplexed brokering: knock, then open a stream for a channel.
    fn dial_multiplexed(&self, id: u32, mux: &Mux) -> Result<Channel> {
        let inner = &self.inner;
        let _in_order = inner.dial_lock.lock().unwrap_or_else(|p| p.into_inner());
        let deadline = Instant::now() + inner.timeout;
        let slot = inner.slot(id);
        let mut knock = ConnInfo::new();
        knock.service_id = id;
        knock.knock.mut_or_insert_default().knock = true;
        if let Err(e) = inner.send(knock) {
            inner.forget(id, &slot);
            return Err(e);
        }
        let info = inner.wait_info(id, &slot, deadline, "the acknowledgement of the knock")?;
        match info.knock.as_ref() {
            Some(k) if k.knock && k.ack && k.error.is_empty() => {}
            Some(k) if k.knock && k.ack => {
                return Err(Error::new(
                    ErrorKind::Broker,
                    format!("the peer refused broker id {id}: {}", k.error),
                ))
            }
            _ => {
                return Err(Error::new(
                    ErrorKind::Broker,
                    format!(
                        "broker id {id}: expected the acknowledgement of a knock (multiplexed \
                         brokering), got connection info {:?} {:?}: the peer does not multiplex",
                        info.network, info.address
                    ),
                ))
            }
        }
        // The peer now sends its next stream to `id`'s server: one must follow, whatever comes
        // of the connection (the session opens an empty one if gRPC never connects).
        let deadline = Instant::now() + inner.timeout;
        let private = mux.listen(true)?;
        let address = private.address();
        let channel = grpc::channel_to(&private.target(), &inner.dial_security);
        let connected =
            grpc::wait_connected(&channel, &address, &inner.dial_security, deadline, || {
                mux.ended_error()
            });
        mux.unlisten(&private);
        connected.map_err(|e| match mux.diagnose() {
            Some(why) => Error::new(e.kind(), format!("broker id {id}: {}; {why}", e.message())),
            None => e,
        })?;
        Ok(channel)
    }

    /// Serves `services` on a new listener and announces it to the peer under `id`; the peer
    /// reaches them with its own `dial(id)`. The listener lives until the broker closes. With
    /// multiplexed brokering nothing is announced: the peer's knock for `id` (even one that came
    /// first, within the broker timeout) routes its next stream here.
    pub fn accept_and_serve(&self, id: u32, services: Vec<rpc::Service>) -> Result<()> {
        let inner = &self.inner;
        if let Some(why) = lock(&inner.ended).clone() {
            return Err(Error::new(
                ErrorKind::Broker,
                format!("cannot serve broker id {id}: {why}"),
            ));
        }
        lock(&inner.pool).get_or_insert_with(rpc::acquire_pool);
        let (builder, _scope) = rpc::server_builder(services);
        let mut server = builder.build().map_err(|e| {
            Error::new(
                ErrorKind::Broker,
                format!("building the broker server: {e}"),
            )
        })?;
        let path = inner
            .socket_dir
            .join(format!("broker{id}-{:08x}", random_u32()));
        let creds = tls::server_credentials(inner.serve_security.as_ref());
        server
            .add_listening_port(format!("unix:{}", path.display()), creds)
            .map_err(|e| {
                Error::new(
                    ErrorKind::Broker,
                    format!("couldn't bind broker socket {}: {e}", path.display()),
                )
            })?;
        server.start();
        {
            // close() may have run meanwhile: then this server must not outlive it.
            let mut servers = lock(&inner.servers);
            if let Some(why) = lock(&inner.ended).clone() {
                drop(servers);
                // Nothing was announced, so nobody is connected: no need to wait for the stop.
                drop(server.shutdown());
                server.cancel_all_calls();
                let _ = std::fs::remove_file(&path);
                return Err(Error::new(
                    ErrorKind::Broker,
                    format!("cannot serve broker id {id}: {why}"),
                ));
            }
            servers.push((server, path.clone()));
        }
        if inner.mux.is_some() {
            // Nothing to announce: the peer knocks when it dials.
            let knocked = {
                let mut ids = lock(&inner.mux_ids);
                ids.served.insert(id, path.clone());
                ids.knocks
                    .remove(&id)
                    .is_some_and(|at| at.elapsed() < held_knock_life(inner.timeout))
            };
            if knocked {
                inner.acknowledge_knock(id, &path);
            }
            return Ok(());
        }
        let mut info = ConnInfo::new();
        info.service_id = id;
        info.network = "unix".to_owned();
        info.address = path.display().to_string();
        inner.send(info)
    }

    /// The longest [`Broker::close`] takes: its servers' stop, then its handler threads, each
    /// given [`rpc::JOIN_GRACE`].
    pub(crate) const CLOSE_BOUND: Duration =
        crate::runtime::total(&[rpc::JOIN_GRACE, rpc::JOIN_GRACE]);

    /// Ends the stream and stops every server this broker started. Idempotent.
    pub(crate) fn close(&self) {
        let inner = &self.inner;
        // Cancelling first also fails a send blocked on the stream, which holds `outgoing`.
        if let Some(stop) = lock(&inner.stop).take() {
            stop.cancel();
        }
        *lock(&inner.outgoing) = Outgoing::Closed;
        lock(&inner.pending).take();
        lock(&inner.ended).get_or_insert_with(|| "the broker was closed".to_owned());
        lock(&inner.mailbox).clear();
        warn_drops(lock(&inner.drops).report(Instant::now(), inner.timeout));
        *lock(&inner.mux_ids) = MuxIds::default();
        let servers = std::mem::take(&mut *lock(&inner.servers));
        stop_servers(servers);
        let threads = std::mem::take(&mut *lock(&inner.threads));
        let me = std::thread::current().id();
        for t in threads {
            if t.thread().id() != me {
                let _ = t.join();
            }
        }
        lock(&inner.pool).take();
    }
}

/// Stops broker servers, as go-plugin's broker does: stop each, and cancel whatever still runs.
/// Their socket files go at once (a plugin killed meanwhile leaves none behind). The stops run on
/// a thread of their own, all under one deadline ([`rpc::JOIN_GRACE`]): gRPC core's
/// `grpc_server_shutdown_and_notify` was seen to block for seconds under CPU load (a plugin then
/// overran go-plugin's 2 s exit grace and was killed), and `close` must stay bounded. A stop still
/// blocked at the deadline is left to finish on that thread, with a warning.
fn stop_servers(servers: Vec<(grpcio::Server, std::path::PathBuf)>) {
    if servers.is_empty() {
        return;
    }
    for (_, path) in &servers {
        let _ = std::fs::remove_file(path);
    }
    let deadline = Instant::now() + rpc::JOIN_GRACE;
    let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(0);
    // Handed to the thread, or taken back to stop them here if no thread can be started.
    let servers = Arc::new(Mutex::new(Some(servers)));
    let theirs = servers.clone();
    let stop = move || {
        let _done = done_tx;
        if let Some(servers) = lock(&theirs).take() {
            stop_by(servers, deadline);
        }
    };
    match spawn_thread("rpcplugin-broker-stop", stop) {
        Ok(thread) => match done_rx.recv_deadline(deadline) {
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => log::warn!(
                "broker servers still stopping {:?} after close; left to finish on their thread",
                rpc::JOIN_GRACE
            ),
            _ => {
                let _ = thread.join();
            }
        },
        Err(e) => {
            log::warn!("stopping broker servers on this thread ({e})");
            if let Some(servers) = lock(&servers).take() {
                stop_by(servers, deadline);
            }
        }
    }
}

/// Stops each server and cancels its calls, then waits for them all until `deadline`.
fn stop_by(servers: Vec<(grpcio::Server, std::path::PathBuf)>, deadline: Instant) {
    let mut stopping = Vec::with_capacity(servers.len());
    for (mut server, _) in servers {
        let shutdown = server.shutdown();
        server.cancel_all_calls();
        stopping.push((server, shutdown));
    }
    for (_server, mut shutdown) in stopping {
        let stopped = block_until(Some(deadline), |cx| {
            std::future::Future::poll(std::pin::Pin::new(&mut shutdown), cx)
        });
        if stopped.is_none() {
            log::warn!("a broker server did not stop within {:?}", rpc::JOIN_GRACE);
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(stop) = lock(&self.stop).take() {
            stop.cancel();
        }
    }
}

impl Inner {
    /// The stream is gone: record why, and let waiting dials fail (their slots disconnect).
    fn end(&self, why: String) {
        log::debug!("broker stream ended: {why}");
        *lock(&self.ended) = Some(why);
        lock(&self.mailbox).clear();
    }

    /// Removes the slot of `id` if it is still the one `rx` belongs to.
    fn forget(&self, id: u32, rx: &Receiver<ConnInfo>) {
        let mut mailbox = lock(&self.mailbox);
        if mailbox
            .get(&id)
            .is_some_and(|slot| slot.rx.same_channel(rx))
        {
            mailbox.remove(&id);
        }
    }

    /// Drops expired slots, and the oldest ones beyond `keep`. Returns the log line about dropped
    /// announcements that is due, if any, for the caller to log once the mailbox is unlocked.
    fn prune(&self, mailbox: &mut HashMap<u32, Slot>, keep: usize) -> Option<String> {
        let now = Instant::now();
        let mut drops = lock(&self.drops);
        let mut report = None;
        mailbox.retain(|id, slot| {
            let live = now.duration_since(slot.created) < self.timeout;
            // A slot without info is a dial waiting; its own deadline ends it.
            if !live && !slot.rx.is_empty() {
                let line = drops.note(*id, DropCause::Expired, now, self.timeout);
                report = report.take().or(line);
            }
            live
        });
        while mailbox.len() > keep {
            let oldest = mailbox
                .iter()
                .min_by_key(|(_, slot)| slot.created)
                .map(|(id, _)| *id);
            let Some(oldest) = oldest else { break };
            let Some(slot) = mailbox.remove(&oldest) else {
                break;
            };
            if slot.rx.is_empty() {
                log::debug!(
                    "more than {MAX_PENDING_IDS} broker ids are pending; the dial of id {oldest}, \
                     the oldest, fails"
                );
            } else {
                let line = drops.note(oldest, DropCause::Full, now, self.timeout);
                report = report.take().or(line);
            }
        }
        report
    }

    fn slot(&self, id: u32) -> Receiver<ConnInfo> {
        let mut mailbox = lock(&self.mailbox);
        if lock(&self.ended).is_some() {
            // A receiver whose sender is already gone: dials fail at once.
            return bounded(1).1;
        }
        let mut report = None;
        if !mailbox.contains_key(&id) {
            // Room for the one about to be added.
            report = self.prune(&mut mailbox, MAX_PENDING_IDS - 1);
        }
        let rx = mailbox.entry(id).or_insert_with(Slot::new).rx.clone();
        drop(mailbox);
        warn_drops(report);
        rx
    }

    /// Waits for the peer's message for `id` in its mailbox slot.
    fn wait_info(
        &self,
        id: u32,
        slot: &Receiver<ConnInfo>,
        deadline: Instant,
        what: &str,
    ) -> Result<ConnInfo> {
        let received = slot.recv_deadline(deadline);
        self.forget(id, slot);
        match received {
            Ok(info) => Ok(info),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "timeout waiting for {what} for broker id {id} (waited {:?})",
                    self.timeout
                ),
            )),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                let why = lock(&self.ended).clone().unwrap_or_else(|| {
                    format!("more than {MAX_PENDING_IDS} ids were pending and it was the oldest")
                });
                Err(Error::new(
                    ErrorKind::Broker,
                    format!("broker id {id} cannot be dialed: {why}"),
                ))
            }
        }
    }

    /// Multiplexed brokering: the peer knocked for `id`. Served: its next stream goes to that
    /// server, and the knock is acknowledged. Not served yet: held until `accept_and_serve(id)`
    /// (for the broker timeout).
    fn answer_knock(&self, id: u32) {
        let path = {
            let mut ids = lock(&self.mux_ids);
            match ids.served.get(&id).cloned() {
                Some(path) => path,
                None => {
                    let life = held_knock_life(self.timeout);
                    ids.knocks.retain(|_, at| at.elapsed() < life);
                    if ids.knocks.len() >= MAX_PENDING_IDS {
                        log::warn!("more than {MAX_PENDING_IDS} knocks wait; dropping id {id}'s");
                    } else {
                        ids.knocks.insert(id, Instant::now());
                    }
                    return;
                }
            }
        };
        self.acknowledge_knock(id, &path);
    }

    fn acknowledge_knock(&self, id: u32, path: &std::path::Path) {
        if let Some(mux) = &self.mux {
            mux.route_next(path);
        }
        let mut info = ConnInfo::new();
        info.service_id = id;
        info.knock = protobuf::MessageField::some(conn_info::Knock {
            knock: true,
            ack: true,
            ..Default::default()
        });
        if let Err(e) = self.send(info) {
            log::debug!("acknowledging the knock for broker id {id}: {e}");
        }
    }

    fn deliver(self: &Arc<Self>, info: ConnInfo) {
        if let Some(knock) = info.knock.as_ref() {
            if knock.knock && !knock.ack {
                let id = info.service_id;
                if self.mux.is_none() {
                    log::warn!(
                        "the peer knocked for broker id {id} (multiplexed brokering), which it \
                         did not ask for; ignored"
                    );
                } else if reactor::on_io_thread() {
                    // The host reads on the I/O thread, which also carries the session the
                    // answer travels on: answer from a thread of its own.
                    let inner = self.clone();
                    let answer = spawn_thread("rpcplugin-knock", move || inner.answer_knock(id));
                    match answer {
                        Ok(t) => {
                            let mut threads = lock(&self.threads);
                            threads.retain(|t| !t.is_finished());
                            threads.push(t);
                        }
                        Err(e) => log::warn!("answering the knock for broker id {id}: {e}"),
                    }
                } else {
                    self.answer_knock(id);
                }
                return;
            }
        }
        let mut mailbox = lock(&self.mailbox);
        let mut report = None;
        if !mailbox.contains_key(&info.service_id) {
            // Room for the one about to be added.
            report = self.prune(&mut mailbox, MAX_PENDING_IDS - 1);
        }
        let slot = mailbox.entry(info.service_id).or_insert_with(Slot::new);
        if slot.tx.try_send(info).is_err() {
            log::debug!("dropping a second connection info for a broker id nobody dialed yet");
        }
        drop(mailbox);
        warn_drops(report);
    }

    fn send(&self, info: ConnInfo) -> Result<()> {
        let closed = || {
            Error::new(
                ErrorKind::Broker,
                "the broker is closed; nothing can be announced",
            )
        };
        match &mut *lock(&self.outgoing) {
            Outgoing::Queue(tx) => tx.send(info).map_err(|_| closed()),
            Outgoing::Stream(sender) => sender.send(info),
            Outgoing::Closed => Err(closed()),
        }
    }
}

/// How long a knock for an id not served yet is held. go-plugin's dialer waits 5 s for the
/// acknowledgement whatever this side's broker timeout; an acknowledgement it no longer waits for
/// would pair this side's next stream route with nothing.
fn held_knock_life(timeout: Duration) -> Duration {
    timeout.min(Duration::from_secs(4))
}

/// Host side: reads the peer's announcements into the mailbox, on the shared I/O thread.
struct ReaderTask {
    replies: Replies<ConnInfo>,
    inner: std::sync::Weak<Inner>,
}

impl reactor::Task for ReaderTask {
    fn run(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        let inner = &self.inner;
        // Once the broker is gone (its drop cancels the stream), announcements have nowhere to go.
        let end = rpc::stream_turn(&mut self.replies, cx, |info| {
            if let Some(inner) = inner.upgrade() {
                inner.deliver(info);
            }
        });
        let why = match end {
            None => return true,
            Some(Ok(())) => "the peer closed the broker stream".to_owned(),
            Some(Err(e)) => format!("the broker stream failed: {e}"),
        };
        if let Some(inner) = self.inner.upgrade() {
            inner.end(why);
        }
        false
    }
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("socket_dir", &self.inner.socket_dir)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(5);

    #[test]
    fn a_flood_of_dropped_ids_logs_one_line_per_interval_with_the_count() {
        let start = Instant::now();
        let mut drops = Drops::default();
        // The first drop is logged at once, with its id and cause.
        let first = drops.note(7, DropCause::Full, start, TIMEOUT).unwrap();
        assert!(
            first.starts_with("broker id 7 announced by the peer was dropped"),
            "{first}"
        );
        assert!(first.contains("more than 1024 ids were pending"), "{first}");
        // A million more within the interval: counted, not logged.
        let mut lines = Vec::new();
        for i in 0..1_000_000u32 {
            let at = start + DROP_REPORT_INTERVAL * i / 1_000_000;
            let cause = if i % 4 == 0 {
                DropCause::Expired
            } else {
                DropCause::Full
            };
            lines.extend(drops.note(i, cause, at, TIMEOUT));
        }
        assert!(lines.is_empty(), "{lines:?}");
        // The first drop after the interval logs the count since the first line.
        let due = drops
            .note(9, DropCause::Full, start + DROP_REPORT_INTERVAL, TIMEOUT)
            .unwrap();
        assert!(
            due.starts_with("1000001 more broker ids announced by the peer were dropped"),
            "{due}"
        );
        assert!(due.contains("(750001 because more than 1024 were pending, 250000 not dialed within the broker timeout of 5s); 1000002 in all"), "{due}");
        // Nothing more until another interval has passed; the rest is logged on close.
        let later = start + DROP_REPORT_INTERVAL + Duration::from_secs(1);
        assert_eq!(drops.note(10, DropCause::Expired, later, TIMEOUT), None);
        let last = drops.report(later, TIMEOUT).unwrap();
        assert!(last.starts_with("1 more broker ids"), "{last}");
        assert!(last.contains("1000003 in all"), "{last}");
        assert_eq!(drops.report(later, TIMEOUT), None);
        assert_eq!(drops.total, 1_000_003);
    }
}
