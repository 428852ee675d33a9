//! The forwarder: the store's outbox, sent to a collector over one `UpstreamService/Forward`
//! stream, each batch deleted only once the collector has acknowledged it.
//!
//! - **Resume.** The collector speaks first, with every sequence number it already holds for
//!   this gateway's outbox; those are acknowledged locally and the rest is sent.
//! - **Order.** With more than one window size going upstream, the batches of the coarsest go
//!   first, newest first, so after an outage the fleet view is current within seconds; then
//!   the backlog drains oldest first. Gaps (batches dropped at the disk cap) go in order.
//! - **Flow.** At most `max_in_flight` batches wait for their ack; at most `max_rate` bytes a
//!   second (batch bytes before compression, so the wire carries less) leave; gzip on the wire.
//! - **A dead link** is found by HTTP/2 keepalive pings (`keepalive`, answered within
//!   `keepalive_timeout`) and by an ack that does not come within `ack_timeout`; the stream is
//!   then dropped and opened again after a capped exponential backoff with full jitter. Batches
//!   sent but not acknowledged are sent again: the collector deduplicates them.

use crate::collector::GATEWAY_HEADER;
use crate::config::Secret;
use fieldgate_adapters::LinkState;
use fieldgate_proto::v1::collector_message::Kind as CollectorKind;
use fieldgate_proto::v1::upstream_message::Kind as UpKind;
use fieldgate_proto::v1::upstream_service_client::UpstreamServiceClient;
use fieldgate_proto::v1::{Hello, SeqRange, UpstreamMessage};
use fieldgate_store::SharedOutbox;
use fieldgate_store::outbox::Entry;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use prost::Message;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

/// The state file naming this gateway's outbox (see `Hello.outbox_id`).
pub const OUTBOX_ID: &str = "upstream-outbox-id";

/// `[upstream]`, validated.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// `http://host:port` or `https://host:port`.
    pub endpoint: String,
    pub gateway_id: String,
    pub token: Option<Secret>,
    pub tls: Option<UpstreamTls>,
    pub max_in_flight: usize,
    /// Bytes a second at most (0: no cap).
    pub max_rate: u64,
    pub compression: bool,
    pub keepalive: Duration,
    pub keepalive_timeout: Duration,
    pub ack_timeout: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
}

/// The PEM material of `[upstream.tls]`.
#[derive(Clone)]
pub struct UpstreamTls {
    /// CA certificate(s) the collector's certificate must chain to (`None`: the system's roots
    /// are not bundled, so this is required for https).
    pub ca: Vec<u8>,
    /// The gateway's own certificate and key, for a collector that requires client certificates.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name to expect in the collector's certificate, if not the endpoint's host.
    pub domain: Option<String>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("ca", &format!("{} bytes", self.ca.len()))
            .field("identity", &self.identity.as_ref().map(|_| "<certificate and private key>"))
            .field("domain", &self.domain)
            .finish()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// `fieldgate_upstream_*`.
#[derive(Debug, Clone, Default)]
pub struct UpstreamMetrics {
    pub connected: Gauge,
    pub connects: Counter,
    pub disconnects: Family<ReasonLabels, Counter>,
    pub batches_sent: Counter,
    pub bytes_sent: Counter,
    pub batches_acked: Counter,
    pub rows_acked: Counter,
    pub in_flight: Gauge,
    /// The store's, for its outbox gauges, which acks change.
    pub store: Option<fieldgate_store::StoreMetrics>,
}

impl UpstreamMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = UpstreamMetrics::default();
        let r = registry.sub_registry_with_prefix("fieldgate_upstream");
        r.register(
            "connected",
            "1 while a stream to the collector is open and welcomed",
            m.connected.clone(),
        );
        r.register("connects", "Streams to the collector opened and welcomed", m.connects.clone());
        r.register("disconnects", "Streams to the collector lost, by reason", m.disconnects.clone());
        r.register("batches_sent", "Batches sent (again after a reconnect, too)", m.batches_sent.clone());
        r.register("bytes_sent", "Batch bytes sent, before compression", m.bytes_sent.clone());
        r.register("batches_acked", "Batches the collector acknowledged", m.batches_acked.clone());
        r.register("rows_acked", "Rollup rows the collector acknowledged", m.rows_acked.clone());
        r.register("in_flight", "Batches sent and waiting for their ack", m.in_flight.clone());
        m
    }
}

/// This gateway's outbox id: made once, kept in `state/`.
pub fn outbox_id(data_dir: &Path) -> std::io::Result<String> {
    if let Some(bytes) = fieldgate_store::state::read(data_dir, OUTBOX_ID)? {
        let id = String::from_utf8_lossy(&bytes).trim().to_owned();
        if !id.is_empty() {
            return Ok(id);
        }
    }
    // Unique enough across reinstalls of one gateway: the time and the process.
    let id =
        format!("{:x}{:05x}", fieldgate_proto::Timestamp::now().as_nanos(), std::process::id() & 0xfffff);
    fieldgate_store::state::replace(data_dir, OUTBOX_ID, id.as_bytes())?;
    Ok(id)
}

/// Why a stream ended.
#[derive(Debug, thiserror::Error)]
enum Ended {
    #[error("cannot connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("the collector refused the stream: {0}")]
    Refused(tonic::Status),
    #[error("the stream broke: {0}")]
    Broken(tonic::Status),
    #[error("the collector closed the stream")]
    Closed,
    #[error("no ack within {0:?}")]
    AckTimeout(Duration),
    #[error("the collector did not say what it holds: {0}")]
    Protocol(&'static str),
    #[error("the outbox: {0}")]
    Outbox(std::io::Error),
}

impl Ended {
    fn reason(&self) -> &'static str {
        match self {
            Ended::Connect(_) => "connect",
            Ended::Refused(_) => "refused",
            Ended::Broken(_) => "broken",
            Ended::Closed => "closed",
            Ended::AckTimeout(_) => "ack_timeout",
            Ended::Protocol(_) => "protocol",
            Ended::Outbox(_) => "outbox",
        }
    }
}

fn endpoint(s: &UpstreamSettings) -> Result<Endpoint, tonic::transport::Error> {
    let mut e = Endpoint::from_shared(s.endpoint.clone())?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(s.keepalive)
        .keep_alive_timeout(s.keepalive_timeout)
        .keep_alive_while_idle(true);
    if let Some(tls) = &s.tls {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&tls.ca));
        if let Some((cert, key)) = &tls.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        if let Some(d) = &tls.domain {
            config = config.domain_name(d.clone());
        }
        e = e.tls_config(config)?;
    }
    Ok(e)
}

/// The order batches go in: the coarsest window size newest first (when more than one size
/// goes upstream), then everything else oldest first.
fn send_order(mut entries: Vec<Entry>) -> Vec<Entry> {
    let sizes: BTreeSet<i64> = entries.iter().filter(|e| e.window_ns > 0).map(|e| e.window_ns).collect();
    let coarsest = (sizes.len() > 1).then(|| sizes.last().copied()).flatten();
    entries.sort_by_key(|e| match coarsest {
        Some(w) if e.window_ns == w => (0, u64::MAX - e.seq),
        _ => (1, e.seq),
    });
    entries
}

/// Paces sending to `rate` bytes a second (0: unpaced).
struct Pacer {
    rate: u64,
    next: Instant,
}

impl Pacer {
    async fn take(&mut self, bytes: usize) {
        if self.rate == 0 {
            return;
        }
        let now = Instant::now();
        let start = self.next.max(now);
        self.next = start + Duration::from_secs_f64(bytes as f64 / self.rate as f64);
        tokio::time::sleep_until(start).await;
    }
}

/// Forward until `shutdown`. `committed` is the store's last committed flush: only batches of
/// committed flushes are sent.
pub async fn run(
    settings: UpstreamSettings,
    outbox_id: String,
    outbox: SharedOutbox,
    mut committed: watch::Receiver<u64>,
    metrics: UpstreamMetrics,
    link: watch::Sender<LinkState>,
    shutdown: CancellationToken,
) {
    // Full jitter: a fleet that lost the collector together does not return together.
    let mut backoff =
        fieldgate_adapters::backoff::Backoff::new(settings.reconnect_min, settings.reconnect_max);
    let mut pacer = Pacer { rate: settings.max_rate, next: Instant::now() };
    loop {
        link.send_replace(LinkState::Connecting(format!("connecting to {}", settings.endpoint)));
        let mut welcomed = false;
        let ended = tokio::select! {
            () = shutdown.cancelled() => return,
            ended = session(&settings, &outbox_id, &outbox, &mut committed, &metrics, &link, &mut pacer, &mut welcomed, &shutdown) => ended,
        };
        metrics.connected.set(0);
        metrics.in_flight.set(0);
        let Err(ended) = ended else { return };
        metrics.disconnects.get_or_create(&ReasonLabels { reason: ended.reason() }).inc();
        if welcomed {
            backoff.reset();
        }
        let wait = backoff.next_delay();
        tracing::warn!(endpoint = %settings.endpoint, error = %ended, retry_in = ?wait, "upstream stream down; the outbox keeps everything");
        link.send_replace(LinkState::Down(format!("{ended}; retrying in {:.1} s", wait.as_secs_f64())));
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

fn lock(outbox: &SharedOutbox) -> std::sync::MutexGuard<'_, fieldgate_store::Outbox> {
    outbox.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[allow(clippy::too_many_arguments)]
async fn session(
    s: &UpstreamSettings,
    outbox_id: &str,
    outbox: &SharedOutbox,
    committed: &mut watch::Receiver<u64>,
    metrics: &UpstreamMetrics,
    link: &watch::Sender<LinkState>,
    pacer: &mut Pacer,
    welcomed: &mut bool,
    shutdown: &CancellationToken,
) -> Result<(), Ended> {
    let channel: Channel = endpoint(s)?.connect().await?;
    let mut client = UpstreamServiceClient::new(channel).max_decoding_message_size(16 << 20);
    if s.compression {
        use tonic::codec::CompressionEncoding::Gzip;
        client = client.send_compressed(Gzip).accept_compressed(Gzip);
    }
    let (tx, rx) = mpsc::channel::<UpstreamMessage>(s.max_in_flight + 1);
    let hello = Hello {
        gateway_id: s.gateway_id.clone(),
        software_version: env!("CARGO_PKG_VERSION").to_owned(),
        outbox_id: outbox_id.to_owned(),
    };
    // The channel has room: this cannot wait.
    let _ = tx.send(UpstreamMessage { kind: Some(UpKind::Hello(hello)) }).await;
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let md = request.metadata_mut();
    md.insert(GATEWAY_HEADER, s.gateway_id.parse().map_err(|_| Ended::Protocol("gateway id not ASCII"))?);
    if let Some(token) = &s.token {
        let value = format!("Bearer {}", token.expose());
        md.insert("authorization", value.parse().map_err(|_| Ended::Protocol("token not ASCII"))?);
    }
    let mut inbound = client.forward(request).await.map_err(Ended::Refused)?.into_inner();
    let welcome = match tokio::time::timeout(s.ack_timeout, inbound.message()).await {
        Err(_) => return Err(Ended::AckTimeout(s.ack_timeout)),
        Ok(Err(status)) => return Err(Ended::Refused(status)),
        Ok(Ok(None)) => return Err(Ended::Closed),
        Ok(Ok(Some(m))) => match m.kind {
            Some(CollectorKind::Welcome(w)) => w,
            _ => return Err(Ended::Protocol("the first message was not a Welcome")),
        },
    };
    let mut held = welcome.acked_beyond.clone();
    if welcome.acked_through > 0 {
        held.push(SeqRange { first: 1, last: welcome.acked_through });
    }
    lock(outbox).ack(&held).map_err(Ended::Outbox)?;
    *welcomed = true;
    metrics.connects.inc();
    metrics.connected.set(1);
    tracing::info!(endpoint = %s.endpoint, collector_holds_through = welcome.acked_through, "upstream stream open");
    link.send_replace(LinkState::Up(format!("forwarding to {}", s.endpoint)));

    // Sent on this stream and not yet acknowledged, with when they were sent.
    let mut in_flight: std::collections::BTreeMap<u64, (Instant, u64)> = std::collections::BTreeMap::new();
    let mut poll = tokio::time::interval(Duration::from_secs(1));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Fill the window.
        while in_flight.len() < s.max_in_flight {
            let through = *committed.borrow_and_update();
            let next = {
                let mut o = lock(outbox);
                let waiting: Vec<Entry> =
                    o.sendable(through).into_iter().filter(|e| !in_flight.contains_key(&e.seq)).collect();
                match send_order(waiting).into_iter().next() {
                    Some(e) => match o.read(e.seq) {
                        Ok(batch) => Some((e.seq, e.rows, batch)),
                        // Damaged on disk: it will never read back. A gap goes in its place.
                        Err(err) if err.kind() == std::io::ErrorKind::InvalidData => {
                            o.set_aside_damaged(e.seq, &err.to_string()).map_err(Ended::Outbox)?;
                            if let Some(m) = &metrics.store {
                                m.outbox_dropped_rows.inc_by(e.rows);
                            }
                            continue;
                        }
                        Err(err) => return Err(Ended::Outbox(err)),
                    },
                    None => None,
                }
            };
            let Some((seq, rows, batch)) = next else { break };
            let bytes = batch.encoded_len();
            pacer.take(bytes).await;
            if tx.send(UpstreamMessage { kind: Some(UpKind::Batch(batch)) }).await.is_err() {
                return Err(Ended::Closed);
            }
            in_flight.insert(seq, (Instant::now(), rows));
            metrics.batches_sent.inc();
            metrics.bytes_sent.inc_by(bytes as u64);
            metrics.in_flight.set(in_flight.len() as i64);
        }
        let deadline = in_flight.values().map(|(t, _)| *t).min().map(|t| t + s.ack_timeout);
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            message = inbound.message() => match message {
                Ok(Some(m)) => match m.kind {
                    Some(CollectorKind::Ack(ack)) => {
                        {
                            let mut o = lock(outbox);
                            o.ack(&ack.ranges).map_err(Ended::Outbox)?;
                            if let Some(m) = &metrics.store {
                                m.set_outbox(&o);
                            }
                        }
                        for r in ack.ranges.iter().filter(|r| r.first <= r.last) {
                            let done: Vec<u64> = in_flight.range(r.first..=r.last).map(|(s, _)| *s).collect();
                            for seq in done {
                                if let Some((_, rows)) = in_flight.remove(&seq) {
                                    metrics.batches_acked.inc();
                                    metrics.rows_acked.inc_by(rows);
                                }
                            }
                        }
                        metrics.in_flight.set(in_flight.len() as i64);
                    }
                    _ => return Err(Ended::Protocol("a second Welcome")),
                },
                Ok(None) => return Err(Ended::Closed),
                Err(status) => return Err(Ended::Broken(status)),
            },
            () = async { tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)).await }, if deadline.is_some() => {
                return Err(Ended::AckTimeout(s.ack_timeout));
            }
            _ = committed.changed() => {}
            _ = poll.tick() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, window_ns: i64) -> Entry {
        Entry { seq, flush: seq, bytes: 100, rows: 10, window_ns, from_ns: 0, to_ns: 0 }
    }

    #[test]
    fn the_newest_coarse_batches_go_first_then_the_backlog_in_order() {
        let m = 60_000_000_000;
        let q = 15 * m;
        let entries = vec![entry(1, m), entry(2, q), entry(3, m), entry(4, 0), entry(5, m), entry(6, q)];
        let order: Vec<u64> = send_order(entries).iter().map(|e| e.seq).collect();
        assert_eq!(order, vec![6, 2, 1, 3, 4, 5]);
        // One window size: plain order.
        let order: Vec<u64> =
            send_order(vec![entry(3, m), entry(1, m), entry(2, 0)]).iter().map(|e| e.seq).collect();
        assert_eq!(order, vec![1, 2, 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_pacer_keeps_to_its_rate() {
        let mut p = Pacer { rate: 1000, next: Instant::now() };
        let t0 = Instant::now();
        for _ in 0..5 {
            p.take(500).await;
        }
        // Five sends of 500 bytes at 1,000 B/s: the fifth starts after 2 s.
        assert_eq!(Instant::now() - t0, Duration::from_secs(2));
    }
}
