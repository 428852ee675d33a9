//! The MQTT client of an external broker (mosquitto, EMQX, HiveMQ): subscribes to the
//! mappings' topics and hands what arrives to the store.
//!
//! At-least-once, end to end: subscriptions are QoS 1 on a persistent session
//! (`clean_session = false`) with manual acks, and a message's PUBACK is sent only once the
//! store has made its readings durable, in the order the messages arrived (MQTT requires it).
//! A gateway killed mid-stream therefore gets every unacknowledged message again from the
//! broker, and the store recognises the readings it already had by (device, metric, timestamp)
//! among the last 32 of each series. Known limit, being worked on: under a fast stream the
//! acknowledged-but-not-yet-PUBACKed backlog can exceed that horizon (the broker may also grant
//! hundreds of messages in flight), so redelivery after a kill can count some readings twice.
//! A message that cannot be decoded is counted, logged and acknowledged, so the broker does
//! not redeliver it forever.
//!
//! Connection lifecycle: rumqttc reconnects at once on its own (bytebeamio/rumqtt #703), so the
//! event loop waits between attempts with capped exponential backoff and full jitter. A
//! watchdog drops a connection on which nothing (not even a ping response) arrived for twice
//! the keep-alive. After a reconnect without a session on the broker, the subscriptions are
//! made again.

use super::payload::{Mapping, decode};
use crate::backoff::Backoff;
use crate::metrics::{AdapterMetrics, LinkState};
use fieldgate_proto::{Ack, IngestError, ReadingSink, Timestamp};
use futures_util::stream::{FuturesOrdered, StreamExt};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS, SubscribeFilter};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::sync::watch;
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

/// Run the MQTT source until `shutdown`. Readings go to `sink`; the link state to `state`.
///
/// One task owns the event loop, the acknowledgements waiting for the store, and the client's
/// request channel. It never awaits a channel that only it drains: acks and subscriptions are
/// queued with `try_*` and retried after the next poll (which empties the request channel).
/// Waiting on the store's queue while it is full is the one deliberate stall: it is the
/// back-pressure, and the broker redelivers if the connection drops meanwhile.
pub async fn run(
    settings: MqttSettings,
    sink: ReadingSink,
    metrics: AdapterMetrics,
    state: watch::Sender<LinkState>,
    shutdown: CancellationToken,
) -> Result<(), MqttError> {
    let (client, mut eventloop) = AsyncClient::new(options(&settings), 256);
    let broker = format!("{}:{}", settings.host, settings.port);
    let filters: Vec<SubscribeFilter> =
        settings.mappings.iter().map(|m| SubscribeFilter::new(m.topic.filter(), QoS::AtLeastOnce)).collect();
    let mut backoff = Backoff::new(settings.reconnect_min, settings.reconnect_max);
    let watchdog = settings.keep_alive * 2;
    // PUBACKs go out in arrival order (MQTT requires it), each once its batch is durable, or at
    // once when the message was rejected.
    let mut pending: FuturesOrdered<Pending> = FuturesOrdered::new();
    let mut to_ack: VecDeque<Publish> = VecDeque::new();
    let mut to_subscribe = false;
    state.send_replace(LinkState::Connecting(format!("connecting to {broker}")));

    let result = loop {
        // Queued requests go out whenever the request channel has room.
        while let Some(p) = to_ack.front() {
            if client.try_ack(p).is_err() {
                break;
            }
            to_ack.pop_front();
        }
        if to_subscribe && client.try_subscribe_many(filters.clone()).is_ok() {
            to_subscribe = false;
        }
        metrics.mqtt_unacked.set((pending.len() + to_ack.len()) as i64);

        let polled = tokio::select! {
            biased;
            () = shutdown.cancelled() => break Ok(()),
            Some(done) = pending.next() => {
                match done {
                    Ok(publish) => to_ack.push_back(publish),
                    Err(e) => break Err(MqttError::Store(e)),
                }
                continue;
            }
            polled = tokio::time::timeout(watchdog, eventloop.poll()) => polled,
        };
        match polled {
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
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
            Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                backoff.reset();
                metrics.mqtt_connected.set(1);
                tracing::info!(%broker, session_present = ack.session_present, "mqtt connected");
                if ack.session_present {
                    // The broker kept our subscriptions and redelivers what we did not ack.
                    state.send_replace(LinkState::Up(format!("connected to {broker}")));
                } else {
                    // A new session: the old one's messages and subscriptions are gone, so
                    // nothing pending can be acknowledged on this connection.
                    pending = FuturesOrdered::new();
                    to_ack.clear();
                    to_subscribe = true;
                    state.send_replace(LinkState::Connecting(format!("connected to {broker}, subscribing")));
                }
            }
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                let names: Vec<&str> = filters.iter().map(|f| f.path.as_str()).collect();
                tracing::info!(filters = ?names, "mqtt subscribed");
                state.send_replace(LinkState::Up(format!("subscribed at {broker}")));
            }
            Ok(Ok(_)) => {}
            outcome => {
                let why = match outcome {
                    Ok(Err(e)) => format!("broker {broker}: {e}"),
                    // Nothing, not even a ping response, for two keep-alives: the link is
                    // dead even if TCP has not noticed. Dropping it makes the next poll reconnect.
                    _ => {
                        eventloop.clean();
                        format!("no traffic from {broker} for {watchdog:?}")
                    }
                };
                metrics.mqtt_connected.set(0);
                metrics.mqtt_reconnects.inc();
                tracing::warn!(reason = %why, "mqtt disconnected; will reconnect with backoff");
                state.send_replace(LinkState::Down(why));
                tokio::select! {
                    () = shutdown.cancelled() => break Ok(()),
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    };
    // Messages not acknowledged now are redelivered by the broker to the next session.
    let _ = client.try_disconnect();
    metrics.mqtt_connected.set(0);
    result
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
