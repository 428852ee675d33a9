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

use super::command::{CommandRequests, Request, Tracker};
use super::payload::{Mapping, decode};
use crate::backoff::Backoff;
use crate::metrics::{AdapterMetrics, LinkState};
use fieldgate_proto::{Ack, CommandError, IngestError, ReadingSink, Timestamp};
use futures_util::stream::{FuturesOrdered, StreamExt};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, Publish, QoS, SubscribeFilter};
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
            .finish()
    }
}

/// Why the MQTT source stopped.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("the store stopped accepting readings: {0}")]
    Store(#[from] IngestError),
}

fn options(s: &MqttSettings) -> MqttOptions {
    let mut o = MqttOptions::new(&s.client_id, &s.host, s.port);
    o.set_keep_alive(s.keep_alive)
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_max_packet_size(s.max_packet, s.max_packet);
    if let Some(user) = &s.username {
        o.set_credentials(user, s.password.clone().unwrap_or_default());
    }
    o
}

/// What the poller saw, for the task that owns the acknowledgements.
enum Seen {
    Publish(Publish),
    Connected { session_present: bool },
    Subscribed,
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
    let (client, eventloop) = AsyncClient::new(options(&settings), 64);
    let broker = format!("{}:{}", settings.host, settings.port);
    let filters: Vec<SubscribeFilter> =
        settings.mappings.iter().map(|m| SubscribeFilter::new(m.topic.filter(), QoS::AtLeastOnce)).collect();
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
                Ok(publish) => { let _ = client.ack(&publish).await; }
                Err(e) => break Err(MqttError::Store(e)),
            },
            Some(Request { topic, payload, done }) = commands.recv() => {
                if !connected {
                    let why = format!("not connected to the MQTT broker {broker}; try again later");
                    let _ = done.send(Err(CommandError::Unreachable(why)));
                    continue;
                }
                tracker.queued(done);
                // An error means the event loop is gone; the poller reports why.
                let _ = client.publish(topic, QoS::AtLeastOnce, false, payload).await;
            }
            event = seen.recv() => match event {
                Some(Seen::Publish(p)) => {
                    metrics.mqtt_messages.inc();
                    let received = Timestamp::now();
                    match decode(&settings.mappings, &p.topic, &p.payload, received) {
                        Ok(readings) => match sink.submit(readings, received).await {
                            Ok(ack) => pending.push_back(Pending::Store(ack, Some(p))),
                            Err(e) => break Err(MqttError::Store(e)),
                        },
                        Err(rejection) => {
                            metrics.rejected("mqtt", rejection.reason(), &p.topic, &rejection);
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
                        let _ = client.subscribe_many(filters.clone()).await;
                        state.send_replace(LinkState::Connecting(format!("connected to {broker}, subscribing")));
                    }
                }
                Some(Seen::Subscribed) => {
                    let names: Vec<&str> = filters.iter().map(|f| f.path.as_str()).collect();
                    tracing::info!(filters = ?names, "mqtt subscribed");
                    state.send_replace(LinkState::Up(format!("subscribed at {broker}")));
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
            if client.ack(&publish).await.is_err() {
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
    let _ = client.disconnect().await;
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
    mut eventloop: EventLoop,
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
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => Seen::Publish(p),
            Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                backoff.reset();
                metrics.mqtt_connected.set(1);
                Seen::Connected { session_present: ack.session_present }
            }
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => Seen::Subscribed,
            Ok(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                tracker.published(pkid);
                continue;
            }
            Ok(Ok(Event::Incoming(Packet::PubAck(ack)))) => {
                tracker.acknowledged(ack.pkid);
                continue;
            }
            Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) => return,
            Ok(Ok(_)) => continue,
            outcome => {
                if stop.is_cancelled() {
                    return;
                }
                let why = match outcome {
                    Ok(Err(e)) => format!("broker {broker}: {e}"),
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
    Store(Ack, Option<Publish>),
    Ready(Option<Publish>),
}

impl std::future::Future for Pending {
    type Output = Result<Publish, IngestError>;

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
