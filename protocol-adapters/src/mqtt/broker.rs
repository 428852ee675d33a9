//! The embedded MQTT broker: devices connect to the gateway itself (MQTT 3.1.1 over TCP).
//!
//! Why not rumqttd: a broker PUBACKs a device's message as soon as the message is in its
//! memory, so with any off-the-shelf broker inside the gateway a `kill -9` loses messages the
//! devices were told were delivered. Here the broker and the ingest are one: a PUBLISH whose
//! topic a mapping covers is acknowledged (PUBACK for QoS 1, PUBREC for QoS 2) only once its
//! readings are durable in the store, in the order the client sent them. A device whose
//! gateway died re-sends what was not acknowledged, and the store recognises readings it
//! already had by (device, metric, timestamp).
//!
//! It is also a broker for everything else on the site: messages are routed to subscribers
//! (QoS 0 and 1; QoS 2 subscriptions are granted QoS 1), with retained messages, last wills,
//! persistent sessions (`clean_session = false`: subscriptions and QoS 1 messages queued while
//! the client is away, in memory), session takeover, keep-alive enforcement, and optional
//! username/password. Limits keep one slow or absent subscriber from eating the gateway's
//! memory: at most `max_inflight` unacknowledged QoS 1 messages per client and `max_queued`
//! waiting behind them; beyond that messages for that client are dropped and counted.
//!
//! MQTT 5 and 3.1 clients are refused with CONNACK "unacceptable protocol version".

use super::payload::{Mapping, Rejection, decode};
use crate::metrics::AdapterMetrics;
use bytes::{Bytes, BytesMut};
use fieldgate_proto::{Ack, IngestError, ReadingSink, Timestamp};
use futures_util::stream::{FuturesOrdered, StreamExt};
use rumqttc::mqttbytes::{self, QoS};
use rumqttc::{
    ConnAck, ConnectReturnCode, Packet, PubAck, PubComp, PubRec, Publish, SubAck, SubscribeReasonCode,
    UnsubAck,
};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What the broker accepts and how much it holds per client. `Debug` never shows the password.
#[derive(Clone)]
pub struct BrokerSettings {
    /// Credentials every client must present, if set.
    pub username: Option<String>,
    pub password: Option<String>,
    /// Largest packet accepted; a client sending a larger one is disconnected.
    pub max_packet: usize,
    /// QoS 1 messages sent to one client and not yet acknowledged by it.
    pub max_inflight: u16,
    /// Messages waiting for one client behind the in-flight ones, or while it is away.
    pub max_queued: usize,
    pub mappings: Vec<Mapping>,
}

impl std::fmt::Debug for BrokerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerSettings")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("max_packet", &self.max_packet)
            .field("max_inflight", &self.max_inflight)
            .field("max_queued", &self.max_queued)
            .field("mappings", &self.mappings)
            .finish()
    }
}

/// A client gets this long to send CONNECT after its TCP connection opens.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stopping broker waits for the store to confirm what clients sent, so that they
/// are acknowledged and not re-sent.
const DRAIN: Duration = Duration::from_secs(5);

/// The broker; cheap to clone. [`Broker::serve`] accepts clients, [`Broker::publish`] sends
/// the gateway's own messages (commands) to subscribers.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").field("settings", &self.inner.settings).finish_non_exhaustive()
    }
}

struct Inner {
    settings: BrokerSettings,
    sink: ReadingSink,
    metrics: AdapterMetrics,
    router: Mutex<Router>,
    next_conn: AtomicU64,
}

#[derive(Default)]
struct Router {
    sessions: HashMap<String, Session>,
    retained: BTreeMap<String, Publish>,
}

struct Session {
    /// Filter and granted QoS.
    filters: Vec<(String, QoS)>,
    persistent: bool,
    conn: Option<Attached>,
    /// QoS 1 messages for a persistent session whose client is away, oldest first.
    offline: VecDeque<Outbound>,
}

struct Attached {
    id: u64,
    tx: mpsc::Sender<Outbound>,
    kick: CancellationToken,
}

/// A message on its way to one subscriber.
struct Outbound {
    message: Publish,
    /// Told once the subscriber confirmed it (PUBACK; for QoS 0, once written): the
    /// gateway's own messages (commands) wait for this.
    delivered: Option<mpsc::UnboundedSender<()>>,
}

impl Outbound {
    fn confirm(&self) {
        if let Some(tx) = &self.delivered {
            let _ = tx.send(());
        }
    }
}

/// Where [`Broker::send`] put a message.
#[derive(Debug)]
pub struct Sent {
    /// Subscribers connected now; the message is on its way to them.
    pub online: usize,
    /// Persistent sessions whose client is away; the message waits in their queue.
    pub offline: usize,
    /// Receives one `()` per subscriber that confirmed the message.
    pub delivered: mpsc::UnboundedReceiver<()>,
}

/// How many sessions a routed message reached.
#[derive(Debug, Default, Clone, Copy)]
struct Reach {
    online: usize,
    offline: usize,
}

impl Broker {
    pub fn new(settings: BrokerSettings, sink: ReadingSink, metrics: AdapterMetrics) -> Self {
        Broker {
            inner: Arc::new(Inner {
                settings,
                sink,
                metrics,
                router: Mutex::default(),
                next_conn: AtomicU64::new(1),
            }),
        }
    }

    /// Accept clients on `listener` until `shutdown`, then stop reading from them, acknowledge
    /// what the store confirms within the drain time, and close every connection.
    pub async fn serve(&self, listener: TcpListener, shutdown: CancellationToken) -> std::io::Result<()> {
        let mut connections = JoinSet::new();
        let result = loop {
            tokio::select! {
                () = shutdown.cancelled() => break Ok(()),
                Some(_) = connections.join_next() => {}
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        connections.spawn(self.clone().connection(stream, peer, shutdown.clone()));
                    }
                    // Out of file descriptors and the like: the listener itself is fine.
                    Err(e) if is_transient(&e) => {
                        tracing::warn!(error = %e, "mqtt broker: accept failed; retrying");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => break Err(e),
                },
            }
        };
        while connections.join_next().await.is_some() {}
        result
    }

    /// Route a message from the gateway itself (a command) at QoS 1 to the subscribers of
    /// `topic`, not retained. [`Sent::delivered`] tells when each subscriber acknowledged it.
    pub fn send(&self, topic: &str, payload: Bytes) -> Sent {
        let message = Publish::from_bytes(topic, QoS::AtLeastOnce, payload);
        let (tx, delivered) = mpsc::unbounded_channel();
        let reach = self.inner.route(&message, Some(&tx));
        Sent { online: reach.online, offline: reach.offline, delivered }
    }

    async fn connection(self, stream: TcpStream, peer: SocketAddr, shutdown: CancellationToken) {
        let id = self.inner.next_conn.fetch_add(1, Ordering::Relaxed);
        let mut conn = Connection::new(self.inner.clone(), stream, id);
        match conn.run(&shutdown).await {
            Ok(()) => tracing::debug!(%peer, client = %conn.client_id, "mqtt client left"),
            Err(e) => {
                if let ConnError::Malformed(m) = &e {
                    let reason = match m {
                        mqttbytes::Error::PayloadSizeLimitExceeded(_) => "oversized",
                        _ => "malformed_packet",
                    };
                    self.inner.metrics.rejected("mqtt", reason, &peer.to_string(), &e);
                }
                tracing::info!(%peer, client = %conn.client_id, reason = %e, "mqtt client disconnected");
            }
        }
        conn.finish().await;
    }
}

fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionAborted | ConnectionReset | Interrupted | WouldBlock | TimedOut)
        || e.raw_os_error().is_some_and(|c| c == 23 || c == 24) // ENFILE, EMFILE
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Router> {
        self.router.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hand `message` to every session with a matching filter, at the lower of the message's
    /// and the subscription's QoS; keep it if retained. Returns the sessions it reached.
    /// `delivered` is told of each subscriber's acknowledgement.
    fn route(&self, message: &Publish, delivered: Option<&mpsc::UnboundedSender<()>>) -> Reach {
        let mut router = self.lock();
        if message.retain {
            if message.payload.is_empty() {
                router.retained.remove(&message.topic);
            } else {
                let mut kept = message.clone();
                kept.pkid = 0;
                kept.dup = false;
                router.retained.insert(message.topic.clone(), kept);
            }
        }
        let mut reach = Reach::default();
        for session in router.sessions.values_mut() {
            let granted = session
                .filters
                .iter()
                .filter(|(f, _)| filter_matches(f, &message.topic))
                .map(|(_, q)| *q)
                .max_by_key(|q| *q as u8);
            if let Some(granted) = granted {
                let mut copy = message.clone();
                copy.qos = min_qos(message.qos, granted);
                copy.retain = false;
                copy.dup = false;
                copy.pkid = 0;
                let outbound = Outbound { message: copy, delivered: delivered.cloned() };
                if self.deliver(session, outbound) {
                    reach.online += 1;
                } else {
                    reach.offline += 1;
                }
            }
        }
        reach
    }

    /// Queue `message` for one session: to its connection, or while it is away (persistent,
    /// QoS 1) in its offline queue. Counted when dropped for lack of room. Returns whether
    /// the session's client is connected.
    fn deliver(&self, session: &mut Session, message: Outbound) -> bool {
        if let Some(conn) = &session.conn {
            if conn.tx.try_send(message).is_err() {
                self.metrics.mqtt_dropped.inc();
            }
            true
        } else {
            if session.persistent && message.message.qos != QoS::AtMostOnce {
                if session.offline.len() >= self.settings.max_queued {
                    session.offline.pop_front();
                    self.metrics.mqtt_dropped.inc();
                }
                session.offline.push_back(message);
            }
            false
        }
    }
}

fn min_qos(a: QoS, b: QoS) -> QoS {
    if (a as u8) <= (b as u8) { a } else { b }
}

/// MQTT filter matching: `+` one level, `#` the rest (including none); topics starting with
/// `$` are not matched by a filter starting with a wildcard.
fn filter_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut levels = topic.split('/');
    for f in filter.split('/') {
        if f == "#" {
            return true;
        }
        match levels.next() {
            Some(t) if f == "+" || f == t => {}
            _ => return false,
        }
    }
    levels.next().is_none()
}

/// Why a connection ended badly.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("malformed packet: {0}")]
    Malformed(mqttbytes::Error),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("no CONNECT within {0:?}")]
    NoConnect(Duration),
    #[error("refused: {0}")]
    Refused(&'static str),
    #[error("nothing received for 1.5x the keep-alive")]
    KeepAlive,
    #[error("another connection took over the session")]
    TakenOver,
    #[error("the store stopped accepting readings: {0}")]
    Store(IngestError),
}

/// An acknowledgement owed to the client, in the order of its messages.
enum Owed {
    Store(Ack, Reply),
    Ready(Reply),
}

#[derive(Clone, Copy)]
enum Reply {
    PubAck(u16),
    PubRec(u16),
}

impl std::future::Future for Owed {
    type Output = Result<Reply, IngestError>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.get_mut() {
            Owed::Ready(r) => std::task::Poll::Ready(Ok(*r)),
            Owed::Store(ack, r) => std::pin::Pin::new(ack).poll(cx).map(|d| d.map(|_| *r)),
        }
    }
}

struct Connection {
    inner: Arc<Inner>,
    stream: TcpStream,
    id: u64,
    client_id: String,
    read: BytesMut,
    write: BytesMut,
    /// Acknowledgements owed to the client, waiting for the store.
    owed: FuturesOrdered<Owed>,
    /// QoS 2 packet ids received (PUBREC sent or owed) and not yet released.
    awaiting_release: HashSet<u16>,
    /// QoS 1 messages sent and not yet acknowledged, in send order.
    inflight: VecDeque<Outbound>,
    /// Messages waiting for room in flight.
    waiting: VecDeque<Outbound>,
    rx: Option<mpsc::Receiver<Outbound>>,
    next_pkid: u16,
    will: Option<Publish>,
    /// Whether the session was attached (so `finish` detaches it).
    attached: bool,
    persistent: bool,
}

impl Connection {
    fn new(inner: Arc<Inner>, stream: TcpStream, id: u64) -> Self {
        Connection {
            inner,
            stream,
            id,
            client_id: String::new(),
            read: BytesMut::with_capacity(4096),
            write: BytesMut::with_capacity(4096),
            owed: FuturesOrdered::new(),
            awaiting_release: HashSet::new(),
            inflight: VecDeque::new(),
            waiting: VecDeque::new(),
            rx: None,
            next_pkid: 0,
            will: None,
            attached: false,
            persistent: false,
        }
    }

    /// Read until one whole packet is buffered and return it.
    async fn next_packet(&mut self) -> Result<Option<Packet>, ConnError> {
        loop {
            if let Some(p) = self.parse()? {
                return Ok(Some(p));
            }
            if self.stream.read_buf(&mut self.read).await? == 0 {
                return Ok(None);
            }
        }
    }

    fn parse(&mut self) -> Result<Option<Packet>, ConnError> {
        match Packet::read(&mut self.read, self.inner.settings.max_packet) {
            Ok(p) => Ok(Some(p)),
            Err(mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
            Err(e) => Err(ConnError::Malformed(e)),
        }
    }

    fn queue(&mut self, packet: Packet) {
        // Only PUBLISH can exceed the limit, and those were accepted under it.
        let _ = packet.write(&mut self.write, usize::MAX);
    }

    async fn flush(&mut self) -> Result<(), ConnError> {
        if !self.write.is_empty() {
            self.stream.write_all(&self.write).await?;
            self.write.clear();
        }
        Ok(())
    }

    /// Read the first packet, refusing at its first byte anything that is not a CONNECT (a
    /// port scanner or an HTTP client would otherwise hold the connection until the timeout).
    async fn first_packet(&mut self) -> Result<Option<Packet>, ConnError> {
        while self.read.is_empty() {
            if self.stream.read_buf(&mut self.read).await? == 0 {
                return Ok(None);
            }
        }
        if self.read[0] != 0x10 {
            return Err(ConnError::Protocol(format!(
                "expected CONNECT, got first byte {:#04x}",
                self.read[0]
            )));
        }
        self.next_packet().await
    }

    async fn run(&mut self, shutdown: &CancellationToken) -> Result<(), ConnError> {
        let connect = match tokio::time::timeout(CONNECT_TIMEOUT, self.first_packet()).await {
            Err(_) => return Err(ConnError::NoConnect(CONNECT_TIMEOUT)),
            Ok(Ok(None)) => return Ok(()),
            Ok(Ok(Some(Packet::Connect(c)))) => c,
            Ok(Ok(Some(other))) => {
                return Err(ConnError::Protocol(format!("expected CONNECT, got {other:?}")));
            }
            Ok(Err(ConnError::Malformed(
                mqttbytes::Error::InvalidProtocol | mqttbytes::Error::InvalidProtocolLevel(_),
            ))) => return self.refuse(ConnectReturnCode::RefusedProtocolVersion, "not MQTT 3.1.1").await,
            Ok(Err(e)) => return Err(e),
        };
        if connect.protocol != mqttbytes::Protocol::V4 {
            return self.refuse(ConnectReturnCode::RefusedProtocolVersion, "not MQTT 3.1.1").await;
        }
        let settings = &self.inner.settings;
        if let Some(user) = &settings.username {
            let ok = connect.login.as_ref().is_some_and(|l| {
                l.username == *user && l.password.as_str() == settings.password.as_deref().unwrap_or("")
            });
            if !ok {
                return self.refuse(ConnectReturnCode::BadUserNamePassword, "bad username or password").await;
            }
        }
        self.client_id = connect.client_id.clone();
        if self.client_id.is_empty() {
            if !connect.clean_session {
                return self
                    .refuse(ConnectReturnCode::BadClientId, "a persistent session needs a client id")
                    .await;
            }
            self.client_id = format!("fieldgate-auto-{}", self.id);
        }
        self.persistent = !connect.clean_session;
        self.will = connect.last_will.map(|w| {
            let mut p = Publish::from_bytes(w.topic, w.qos, w.message);
            p.retain = w.retain;
            p
        });
        let keep_alive =
            (connect.keep_alive > 0).then(|| Duration::from_millis(u64::from(connect.keep_alive) * 1500));
        let kick = CancellationToken::new();
        let session_present = self.attach(kick.clone());
        self.queue(Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, session_present)));
        self.pump();
        self.flush().await?;
        tracing::debug!(client = %self.client_id, session_present, "mqtt client connected");

        let mut rx = self.rx.take().expect("attached");
        let mut deadline = keep_alive.map(|k| Instant::now() + k);
        let result = loop {
            let room = self.inflight.len() < usize::from(self.inner.settings.max_inflight);
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break Ok(()),
                () = kick.cancelled() => break Err(ConnError::TakenOver),
                Some(done) = self.owed.next() => match done {
                    Ok(reply) => self.queue(reply.packet()),
                    Err(e) => break Err(ConnError::Store(e)),
                },
                Some(message) = rx.recv(), if room && self.waiting.is_empty() => {
                    self.waiting.push_back(message);
                    self.pump();
                }
                () = sleep_until(deadline) => break Err(ConnError::KeepAlive),
                read = self.stream.read_buf(&mut self.read) => match read {
                    Ok(0) => break Err(ConnError::Io(std::io::ErrorKind::UnexpectedEof.into())),
                    Ok(_) => {
                        deadline = keep_alive.map(|k| Instant::now() + k);
                        match self.handle_buffered().await {
                            Ok(true) => {}
                            Ok(false) => {
                                // A clean DISCONNECT: the will is discarded.
                                self.will = None;
                                break Ok(());
                            }
                            Err(e) => break Err(e),
                        }
                    }
                    Err(e) => break Err(e.into()),
                },
            }
            if let Err(e) = self.flush().await {
                break Err(e);
            }
        };
        self.rx = Some(rx);
        if shutdown.is_cancelled() {
            // The broker is stopping, not the client failing: no will, and acknowledge what
            // the store confirms in time so the client need not send it again.
            self.will = None;
            self.drain().await;
        }
        result
    }

    async fn refuse(&mut self, code: ConnectReturnCode, why: &'static str) -> Result<(), ConnError> {
        self.queue(Packet::ConnAck(ConnAck::new(code, false)));
        self.flush().await?;
        Err(ConnError::Refused(why))
    }

    /// Handle every whole packet in the read buffer; false after a DISCONNECT.
    async fn handle_buffered(&mut self) -> Result<bool, ConnError> {
        while let Some(packet) = self.parse()? {
            match packet {
                Packet::Publish(p) => self.received(p).await?,
                Packet::PubAck(a) => {
                    if let Some(at) = self.inflight.iter().position(|m| m.message.pkid == a.pkid) {
                        self.inflight.remove(at).expect("present").confirm();
                    }
                    self.pump();
                }
                Packet::PubRel(r) => {
                    self.awaiting_release.remove(&r.pkid);
                    self.queue(Packet::PubComp(PubComp::new(r.pkid)));
                }
                Packet::Subscribe(s) => {
                    let mut codes = Vec::with_capacity(s.filters.len());
                    let mut added = Vec::new();
                    for f in s.filters {
                        if mqttbytes::valid_filter(&f.path) {
                            let granted = min_qos(f.qos, QoS::AtLeastOnce);
                            codes.push(SubscribeReasonCode::Success(granted));
                            added.push((f.path, granted));
                        } else {
                            codes.push(SubscribeReasonCode::Failure);
                        }
                    }
                    self.queue(Packet::SubAck(SubAck::new(s.pkid, codes)));
                    self.subscribe(added);
                }
                Packet::Unsubscribe(u) => {
                    let mut router = self.inner.lock();
                    if let Some(session) = router.sessions.get_mut(&self.client_id) {
                        session.filters.retain(|(f, _)| !u.topics.contains(f));
                    }
                    drop(router);
                    self.queue(Packet::UnsubAck(UnsubAck::new(u.pkid)));
                }
                Packet::PingReq => self.queue(Packet::PingResp),
                Packet::Disconnect => return Ok(false),
                // We only send QoS 0 and 1, so PUBREC and PUBCOMP never answer us.
                other => return Err(ConnError::Protocol(format!("unexpected {other:?}"))),
            }
        }
        Ok(true)
    }

    /// A PUBLISH from the client: route it, and ingest it if a mapping covers its topic.
    async fn received(&mut self, p: Publish) -> Result<(), ConnError> {
        if p.topic.is_empty() || mqttbytes::has_wildcards(&p.topic) || p.topic.contains('\0') {
            return Err(ConnError::Protocol(format!("invalid topic name `{}`", p.topic)));
        }
        let reply = match p.qos {
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce => Some(Reply::PubAck(p.pkid)),
            QoS::ExactlyOnce => {
                if !self.awaiting_release.insert(p.pkid) {
                    // A re-sent QoS 2 message we already have: acknowledge, do not repeat.
                    self.owed.push_back(Owed::Ready(Reply::PubRec(p.pkid)));
                    return Ok(());
                }
                Some(Reply::PubRec(p.pkid))
            }
        };
        let metrics = &self.inner.metrics;
        metrics.mqtt_messages.inc();
        let reached = self.inner.route(&p, None);
        let received = Timestamp::now();
        let owed = match decode(&self.inner.settings.mappings, &p.topic, &p.payload, received) {
            Ok(readings) => match self.inner.sink.submit(readings, received).await {
                Ok(ack) => reply.map(|r| Owed::Store(ack, r)),
                Err(e) => return Err(ConnError::Store(e)),
            },
            // A topic for other subscribers (a dashboard, a command) is not an error; one that
            // nothing wants is.
            Err(Rejection::UnknownTopic) if reached.online + reached.offline > 0 => reply.map(Owed::Ready),
            Err(rejection) => {
                metrics.rejected("mqtt", rejection.reason(), &p.topic, &rejection);
                reply.map(Owed::Ready)
            }
        };
        if let Some(owed) = owed {
            self.owed.push_back(owed);
        }
        Ok(())
    }

    /// Attach this connection to its session (taking over from another connection) and
    /// collect what the session kept; returns whether a session was present.
    fn attach(&mut self, kick: CancellationToken) -> bool {
        // Room for a burst: the in-flight window plus the queue behind it.
        let settings = &self.inner.settings;
        let (tx, rx) = mpsc::channel(settings.max_queued + usize::from(settings.max_inflight));
        let mut router = self.inner.lock();
        let mut old = router.sessions.remove(&self.client_id);
        if let Some(conn) = old.as_mut().and_then(|s| s.conn.take()) {
            conn.kick.cancel();
        }
        // A persistent session resumes; a clean one (or one after a clean one) starts afresh.
        let resumed = old.filter(|s| self.persistent && s.persistent);
        let present = resumed.is_some();
        let mut session = resumed.unwrap_or_else(|| Session {
            filters: Vec::new(),
            persistent: self.persistent,
            conn: None,
            offline: VecDeque::new(),
        });
        self.waiting.extend(session.offline.drain(..));
        session.persistent = self.persistent;
        session.conn = Some(Attached { id: self.id, tx, kick });
        router.sessions.insert(self.client_id.clone(), session);
        self.inner.metrics.mqtt_clients.inc();
        self.attached = true;
        self.rx = Some(rx);
        present
    }

    fn subscribe(&mut self, added: Vec<(String, QoS)>) {
        let mut router = self.inner.lock();
        let Some(session) = router.sessions.get_mut(&self.client_id) else { return };
        for (filter, qos) in &added {
            session.filters.retain(|(f, _)| f != filter);
            session.filters.push((filter.clone(), *qos));
        }
        // Retained messages matching the new filters go out after the SUBACK.
        for kept in router.retained.values() {
            if let Some((_, q)) = added.iter().find(|(f, _)| filter_matches(f, &kept.topic)) {
                let mut copy = kept.clone();
                copy.qos = min_qos(kept.qos, *q);
                self.waiting.push_back(Outbound { message: copy, delivered: None });
            }
        }
        drop(router);
        self.pump();
    }

    /// Send waiting messages while there is room in flight.
    fn pump(&mut self) {
        while self.inflight.len() < usize::from(self.inner.settings.max_inflight) {
            let Some(mut m) = self.waiting.pop_front() else { break };
            if m.message.qos == QoS::AtMostOnce {
                m.message.pkid = 0;
                self.queue(Packet::Publish(m.message.clone()));
                m.confirm();
                continue;
            }
            m.message.pkid = self.pkid();
            self.queue(Packet::Publish(m.message.clone()));
            self.inflight.push_back(m);
        }
    }

    fn pkid(&mut self) -> u16 {
        loop {
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            if !self.inflight.iter().any(|m| m.message.pkid == self.next_pkid) {
                return self.next_pkid;
            }
        }
    }

    /// Acknowledge what the store confirms within [`DRAIN`].
    async fn drain(&mut self) {
        let deadline = Instant::now() + DRAIN;
        while let Ok(Some(Ok(reply))) = tokio::time::timeout_at(deadline, self.owed.next()).await {
            self.queue(reply.packet());
        }
        let _ = self.flush().await;
    }

    /// Detach from the session: a persistent one keeps what was not acknowledged (re-sent
    /// with DUP on the next connection); a clean one is forgotten. The will goes out if the
    /// client did not say goodbye.
    async fn finish(&mut self) {
        let _ = self.stream.shutdown().await;
        if !self.attached {
            return;
        }
        self.inner.metrics.mqtt_clients.dec();
        let mut unsent: Vec<Outbound> = self
            .inflight
            .drain(..)
            .map(|mut m| {
                m.message.dup = true;
                m
            })
            .chain(self.waiting.drain(..))
            .collect();
        if let Some(rx) = &mut self.rx {
            while let Ok(m) = rx.try_recv() {
                unsent.push(m);
            }
        }
        {
            let mut router = self.inner.lock();
            let mine = router
                .sessions
                .get(&self.client_id)
                .and_then(|s| s.conn.as_ref())
                .is_some_and(|c| c.id == self.id);
            if mine {
                if self.persistent {
                    let session = router.sessions.get_mut(&self.client_id).expect("present");
                    session.conn = None;
                    for m in unsent.into_iter().filter(|m| m.message.qos != QoS::AtMostOnce) {
                        self.inner.deliver(session, m);
                    }
                } else {
                    router.sessions.remove(&self.client_id);
                }
            } else if let Some(session) = router.sessions.get_mut(&self.client_id) {
                // Taken over: the new connection gets what this one did not deliver.
                for m in unsent.into_iter().filter(|m| m.message.qos != QoS::AtMostOnce) {
                    self.inner.deliver(session, m);
                }
            }
        }
        if let Some(will) = self.will.take() {
            self.inner.route(&will, None);
        }
    }
}

impl Reply {
    fn packet(self) -> Packet {
        match self {
            Reply::PubAck(id) => Packet::PubAck(PubAck::new(id)),
            Reply::PubRec(id) => Packet::PubRec(PubRec::new(id)),
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
