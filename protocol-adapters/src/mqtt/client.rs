//! The MQTT client of an external broker (mosquitto, EMQX, HiveMQ): subscribes to the
//! mappings' topics and hands what arrives to the store.
//!
//! At-least-once, end to end: subscriptions are QoS 1 on a persistent session
//! (`clean_session = false`) with manual acks, and a message's PUBACK is sent only once the
//! store has made its readings durable, in the order the messages arrived (MQTT requires it).
//! A gateway killed mid-stream therefore gets every unacknowledged message again from the
//! broker, and the store recognises the readings it already had by (device, metric, timestamp)
//! (every timestamp of its open windows is remembered), so none is counted twice however many
//! the broker had in flight.
//! A message that cannot be decoded is counted, logged and acknowledged, so the broker does
//! not redeliver it forever.
//!
//! Connection lifecycle: rumqttc reconnects at once on its own (bytebeamio/rumqtt #703), so the
//! event loop waits between attempts with capped exponential backoff and full jitter. A
//! watchdog drops a connection on which nothing (not even a ping response) arrived for twice
//! the keep-alive. After a reconnect without a session on the broker, the subscriptions are
//! made again.
//!
//! MQTT 3.1.1 and MQTT 5 (rumqttc's `v5` client): with MQTT 5 the session is kept by a
//! session expiry interval (without one, an MQTT 5 broker drops the session at disconnect, and
//! with it every unacknowledged message), and a PUBACK with an error reason fails the command.
//! TLS is rustls, with a CA of the site's own or the system's roots, and an optional client
//! certificate.

use super::command::{CommandRequests, Request, Tracker};
use super::payload::{Mapping, decode};
use crate::backoff::Backoff;
use crate::metrics::{AdapterMetrics, LinkState};
use bytes::Bytes;
use fieldgate_proto::{Ack, CommandError, IngestError, ReadingSink, Timestamp};
use futures_util::stream::{FuturesOrdered, StreamExt};
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::{Event, Outgoing, Packet, QoS, TlsConfiguration, Transport, v5};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Where and how to connect, and what to subscribe to. `Debug` never shows the password.
#[derive(Clone)]
pub struct MqttSettings {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub keep_alive: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// Largest packet accepted; larger ones end the connection (a broker-side limit should
    /// stop them earlier).
    pub max_packet: usize,
    pub mappings: Vec<Mapping>,
    pub protocol: Protocol,
    /// TLS to the broker (see [`super::tls`]); `None` for plain TCP.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// The MQTT version spoken to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    #[default]
    V311,
    V5,
}

impl std::fmt::Debug for MqttSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("keep_alive", &self.keep_alive)
            .field("reconnect_min", &self.reconnect_min)
            .field("reconnect_max", &self.reconnect_max)
            .field("max_packet", &self.max_packet)
            .field("mappings", &self.mappings)
            .field("protocol", &self.protocol)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Why the MQTT source stopped.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("the store stopped accepting readings: {0}")]
    Store(#[from] IngestError),
}

/// The client half of rumqttc, whichever the protocol.
enum Client {
    V4(rumqttc::AsyncClient),
    V5(v5::AsyncClient),
}

/// The event loop half.
enum Loop {
    V4(Box<rumqttc::EventLoop>),
    V5(Box<v5::EventLoop>),
}

/// A message from the broker, kept for its acknowledgement.
enum Received {
    V4(rumqttc::Publish),
    V5(p5::Publish),
}

/// What a poll of the event loop gave, in protocol-neutral terms.
enum Polled {
    Publish(Received),
    ConnAck { session_present: bool },
    SubAck { refused: usize },
    PubAck { pkid: u16, refused: Option<String> },
    SentPublish(u16),
    SentDisconnect,
    Other,
    Failed(String),
}

/// A persistent MQTT 5 session must outlive the connection: without an expiry interval the
/// broker ends it at disconnect. `u32::MAX` means "never expires", as a 3.1.1 persistent
/// session; brokers may cap it (mosquitto's `persistent_client_expiration`).
const SESSION_EXPIRY: u32 = u32::MAX;

fn connect(s: &MqttSettings) -> (Client, Loop) {
    let transport = s.tls.clone().map(|c| Transport::tls_with_config(TlsConfiguration::Rustls(c)));
    match s.protocol {
        Protocol::V311 => {
            let mut o = rumqttc::MqttOptions::new(&s.client_id, &s.host, s.port);
            o.set_keep_alive(s.keep_alive)
                .set_clean_session(false)
                .set_manual_acks(true)
                .set_max_packet_size(s.max_packet, s.max_packet);
            if let Some(user) = &s.username {
                o.set_credentials(user, s.password.clone().unwrap_or_default());
            }
            if let Some(t) = transport {
                o.set_transport(t);
            }
            let (c, l) = rumqttc::AsyncClient::new(o, 64);
            (Client::V4(c), Loop::V4(Box::new(l)))
        }
        Protocol::V5 => {
            let mut o = v5::MqttOptions::new(&s.client_id, &s.host, s.port);
            let max = u32::try_from(s.max_packet).unwrap_or(u32::MAX);
            o.set_keep_alive(s.keep_alive)
                .set_clean_start(false)
                .set_session_expiry_interval(Some(SESSION_EXPIRY))
                .set_manual_acks(true)
                .set_max_packet_size(Some(max));
            if let Some(user) = &s.username {
                o.set_credentials(user, s.password.clone().unwrap_or_default());
            }
            if let Some(t) = transport {
                o.set_transport(t);
            }
            let (c, l) = v5::AsyncClient::new(o, 64);
            (Client::V5(c), Loop::V5(Box::new(l)))
        }
    }
}

impl Client {
    /// Queue the acknowledgement of `m`; false when the event loop is gone (the poller
    /// reports why). Errors of the other calls below mean the same and are left to the poller.
    async fn ack(&self, m: &Received) -> bool {
        match (self, m) {
            (Client::V4(c), Received::V4(p)) => c.ack(p).await.is_ok(),
            (Client::V5(c), Received::V5(p)) => c.ack(p).await.is_ok(),
            _ => true,
        }
    }

    async fn subscribe(&self, filters: &[String]) {
        let _ = match self {
            Client::V4(c) => c
                .subscribe_many(
                    filters.iter().map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtLeastOnce)),
                )
                .await
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .subscribe_many(
                    filters.iter().map(|f| p5::Filter::new(f.clone(), v5::mqttbytes::QoS::AtLeastOnce)),
                )
                .await
                .map_err(|e| e.to_string()),
        };
    }

    async fn publish(&self, topic: String, payload: Bytes) {
        let _ = match self {
            Client::V4(c) => {
                c.publish_bytes(topic, QoS::AtLeastOnce, false, payload).await.map_err(|e| e.to_string())
            }
            Client::V5(c) => c
                .publish_bytes(topic, v5::mqttbytes::QoS::AtLeastOnce, false, payload)
                .await
                .map_err(|e| e.to_string()),
        };
    }

    async fn disconnect(&self) {
        let _ = match self {
            Client::V4(c) => c.disconnect().await.map_err(|e| e.to_string()),
            Client::V5(c) => c.disconnect().await.map_err(|e| e.to_string()),
        };
    }
}

impl Received {
    fn topic(&self) -> &str {
        match self {
            Received::V4(p) => &p.topic,
            // MQTT requires UTF-8 topics; one that is not matches no mapping.
            Received::V5(p) => std::str::from_utf8(&p.topic).unwrap_or(""),
        }
    }

    fn payload(&self) -> &[u8] {
        match self {
            Received::V4(p) => &p.payload,
            Received::V5(p) => &p.payload,
        }
    }
}

impl Loop {
    async fn poll(&mut self) -> Polled {
        match self {
            Loop::V4(l) => match l.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => Polled::Publish(Received::V4(p)),
                Ok(Event::Incoming(Packet::ConnAck(a))) => {
                    Polled::ConnAck { session_present: a.session_present }
                }
                Ok(Event::Incoming(Packet::SubAck(a))) => Polled::SubAck {
                    refused: a
                        .return_codes
                        .iter()
                        .filter(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                        .count(),
                },
                Ok(Event::Incoming(Packet::PubAck(a))) => Polled::PubAck { pkid: a.pkid, refused: None },
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => Polled::SentPublish(pkid),
                Ok(Event::Outgoing(Outgoing::Disconnect)) => Polled::SentDisconnect,
                Ok(_) => Polled::Other,
                Err(e) => Polled::Failed(e.to_string()),
            },
            Loop::V5(l) => match l.poll().await {
                Ok(v5::Event::Incoming(p5::Packet::Publish(p))) => Polled::Publish(Received::V5(p)),
                Ok(v5::Event::Incoming(p5::Packet::ConnAck(a))) => {
                    Polled::ConnAck { session_present: a.session_present }
                }
                Ok(v5::Event::Incoming(p5::Packet::SubAck(a))) => Polled::SubAck {
                    refused: a
                        .return_codes
                        .iter()
                        .filter(|c| !matches!(c, p5::SubscribeReasonCode::Success(_)))
                        .count(),
                },
                Ok(v5::Event::Incoming(p5::Packet::PubAck(a))) => {
                    // "No matching subscribers" is a success: the broker took the message.
                    let ok = matches!(
                        a.reason,
                        p5::PubAckReason::Success | p5::PubAckReason::NoMatchingSubscribers
                    );
                    let refused = (!ok).then(|| {
                        let detail = a.properties.and_then(|p| p.reason_string).unwrap_or_default();
                        format!("the broker refused the command: {:?} {detail}", a.reason)
                            .trim_end()
                            .to_owned()
                    });
                    Polled::PubAck { pkid: a.pkid, refused }
                }
                Ok(v5::Event::Outgoing(Outgoing::Publish(pkid))) => Polled::SentPublish(pkid),
                Ok(v5::Event::Outgoing(Outgoing::Disconnect)) => Polled::SentDisconnect,
                Ok(_) => Polled::Other,
                Err(e) => Polled::Failed(e.to_string()),
            },
        }
    }

    /// Drop the connection; the next poll reconnects (and re-sends what is unacknowledged).
    fn clean(&mut self) {
        match self {
            Loop::V4(l) => l.clean(),
            Loop::V5(l) => l.clean(),
        }
    }
}

/// What the poller saw, for the task that owns the acknowledgements.
enum Seen {
    Publish(Received),
    Connected { session_present: bool },
    Subscribed { refused: usize },
    Lost(String),
}

/// How long a clean shutdown waits for the store to make the last messages durable, so that
/// they are acknowledged and not redelivered to the next session.
const DRAIN: Duration = Duration::from_secs(5);

/// Run the MQTT source until `shutdown`. Readings go to `sink`; the link state to `state`;
/// commands come from `commands` and are published at QoS 1.
///
/// Two tasks. The poller owns rumqttc's event loop and never stops polling it (a poll that is
/// cancelled, or not resumed while other work waits, can leave PUBACKs unsent); it waits with
/// backoff between connection attempts and runs the watchdog. This task takes what arrives,
/// hands it to the store and sends each PUBACK once its batch is durable, in arrival order.
/// The poller's channel is unbounded, yet bounded in practice by what the broker may have in
/// flight unacknowledged, which is all that can arrive while this task waits for the store.
pub async fn run(
    settings: MqttSettings,
    sink: ReadingSink,
    commands: CommandRequests,
    metrics: AdapterMetrics,
    state: watch::Sender<LinkState>,
    shutdown: CancellationToken,
) -> Result<(), MqttError> {
    let mut commands = commands.0;
    let tracker = Tracker::default();
    let mut connected = false;
    let (client, eventloop) = connect(&settings);
    let broker = format!("{}:{}", settings.host, settings.port);
    let filters: Vec<String> = settings.mappings.iter().map(|m| m.topic.filter()).collect();
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let stop_polling = CancellationToken::new();
    let poller = tokio::spawn(poll(
        eventloop,
        seen_tx,
        tracker.clone(),
        settings.clone(),
        metrics.clone(),
        stop_polling.clone(),
    ));
    // PUBACKs go out in arrival order (MQTT requires it), each once its batch is durable, or at
    // once when the message was rejected.
    let mut pending: FuturesOrdered<Pending> = FuturesOrdered::new();
    state.send_replace(LinkState::Connecting(format!("connecting to {broker}")));

    let result = loop {
        metrics.mqtt_unacked.set(pending.len() as i64);
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break Ok(()),
            Some(done) = pending.next() => match done {
                // An error means the event loop is gone; the poller reports why.
                Ok(publish) => { client.ack(&publish).await; }
                // The pipeline closes its input once the gateway stops: not a failure then.
                Err(_) if shutdown.is_cancelled() => break Ok(()),
                Err(e) => break Err(MqttError::Store(e)),
            },
            Some(Request { topic, payload, done }) = commands.recv() => {
                if !connected {
                    let why = format!("not connected to the MQTT broker {broker}; try again later");
                    let _ = done.send(Err(CommandError::Unreachable(why)));
                    continue;
                }
                tracker.queued(done);
                client.publish(topic, payload).await;
            }
            event = seen.recv() => match event {
                Some(Seen::Publish(p)) => {
                    metrics.mqtt_messages.inc();
                    let received = Timestamp::now();
                    match decode(&settings.mappings, p.topic(), p.payload(), received) {
                        Ok(readings) => match sink.submit(readings, received).await {
                            Ok(ack) => pending.push_back(Pending::Store(ack, Some(p))),
                            // The pipeline closes its input once the gateway stops: not a failure then.
                Err(_) if shutdown.is_cancelled() => break Ok(()),
                Err(e) => break Err(MqttError::Store(e)),
                        },
                        Err(rejection) => {
                            metrics.rejected("mqtt", rejection.reason(), p.topic(), &rejection);
                            pending.push_back(Pending::Ready(Some(p)));
                        }
                    }
                }
                Some(Seen::Connected { session_present }) => {
                    connected = true;
                    tracing::info!(%broker, session_present, "mqtt connected");
                    if session_present {
                        // The broker kept our subscriptions and redelivers what we did not ack.
                        state.send_replace(LinkState::Up(format!("connected to {broker}")));
                    } else {
                        // A new session: the old one's messages and subscriptions are gone, so
                        // nothing pending can be acknowledged on this connection.
                        pending = FuturesOrdered::new();
                        client.subscribe(&filters).await;
                        state.send_replace(LinkState::Connecting(format!("connected to {broker}, subscribing")));
                    }
                }
                Some(Seen::Subscribed { refused: 0 }) => {
                    tracing::info!(?filters, "mqtt subscribed");
                    state.send_replace(LinkState::Up(format!("subscribed at {broker}")));
                }
                Some(Seen::Subscribed { refused }) => {
                    // An ACL on the broker, usually: readings on those topics will not arrive.
                    let why = format!("{broker} refused {refused} of {} subscriptions: check its ACL", filters.len());
                    tracing::error!(?filters, "mqtt: {why}");
                    state.send_replace(LinkState::Down(why));
                }
                Some(Seen::Lost(why)) => {
                    connected = false;
                    tracing::warn!(reason = %why, "mqtt disconnected; will reconnect with backoff");
                    state.send_replace(LinkState::Down(why));
                }
                None => break Ok(()),
            },
        }
    };

    // Acknowledge what the store makes durable within the drain time, then disconnect: the
    // broker redelivers only what is still unacknowledged to the next session.
    let drained = tokio::time::timeout(DRAIN, async {
        while let Some(Ok(publish)) = pending.next().await {
            if !client.ack(&publish).await {
                break;
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            unacked = pending.len(),
            "mqtt: the store did not confirm every message in time; the broker will redeliver them"
        );
    }
    client.disconnect().await;
    // The poller ends once the DISCONNECT is written (or at once if not connected).
    if tokio::time::timeout(Duration::from_secs(2), async {
        stop_polling.cancel();
        poller.await
    })
    .await
    .is_err()
    {
        tracing::warn!("mqtt: the connection did not close in time");
    }
    metrics.mqtt_unacked.set(0);
    metrics.mqtt_connected.set(0);
    result
}

/// Poll the event loop until told to stop, forwarding what matters; reconnect with backoff.
async fn poll(
    mut eventloop: Loop,
    seen: mpsc::UnboundedSender<Seen>,
    tracker: Tracker,
    settings: MqttSettings,
    metrics: AdapterMetrics,
    stop: CancellationToken,
) {
    let broker = format!("{}:{}", settings.host, settings.port);
    let mut backoff = Backoff::new(settings.reconnect_min, settings.reconnect_max);
    let watchdog = settings.keep_alive * 2;
    loop {
        // While stopping, the loop keeps polling so queued PUBACKs and the DISCONNECT go out.
        let event = match tokio::time::timeout(watchdog, eventloop.poll()).await {
            Ok(Polled::Publish(p)) => Seen::Publish(p),
            Ok(Polled::ConnAck { session_present }) => {
                backoff.reset();
                metrics.mqtt_connected.set(1);
                Seen::Connected { session_present }
            }
            Ok(Polled::SubAck { refused }) => Seen::Subscribed { refused },
            Ok(Polled::SentPublish(pkid)) => {
                tracker.published(pkid);
                continue;
            }
            Ok(Polled::PubAck { pkid, refused: None }) => {
                tracker.acknowledged(pkid);
                continue;
            }
            Ok(Polled::PubAck { pkid, refused: Some(why) }) => {
                tracker.refused(pkid, why);
                continue;
            }
            Ok(Polled::SentDisconnect) => return,
            Ok(Polled::Other) => continue,
            outcome => {
                if stop.is_cancelled() {
                    return;
                }
                let why = match outcome {
                    Ok(Polled::Failed(e)) => format!("broker {broker}: {e}"),
                    // Nothing, not even a ping response, for two keep-alives: the link is dead
                    // even if TCP has not noticed. Dropping it makes the next poll reconnect.
                    _ => {
                        eventloop.clean();
                        format!("no traffic from {broker} for {watchdog:?}")
                    }
                };
                metrics.mqtt_connected.set(0);
                metrics.mqtt_reconnects.inc();
                if seen.send(Seen::Lost(why)).is_err() {
                    return;
                }
                // rumqttc would reconnect at once on the next poll; wait first.
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                }
                continue;
            }
        };
        if seen.send(event).is_err() {
            return;
        }
    }
}

/// A message waiting for its PUBACK.
enum Pending {
    Store(Ack, Option<Received>),
    Ready(Option<Received>),
}

impl std::future::Future for Pending {
    type Output = Result<Received, IngestError>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.get_mut();
        match this {
            Pending::Ready(p) => std::task::Poll::Ready(Ok(p.take().expect("polled after completion"))),
            Pending::Store(ack, p) => match std::pin::Pin::new(ack).poll(cx) {
                std::task::Poll::Ready(Ok(_)) => {
                    std::task::Poll::Ready(Ok(p.take().expect("polled after completion")))
                }
                std::task::Poll::Ready(Err(e)) => std::task::Poll::Ready(Err(e)),
                std::task::Poll::Pending => std::task::Poll::Pending,
            },
        }
    }
}
