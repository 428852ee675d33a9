//! The LoRaWAN adapter: one UDP socket the site's packet forwarders talk to, and the task that
//! runs the [`NetworkServer`] behind it.
//!
//! For each PUSH_DATA, every packet is held for the deduplication window so that copies heard
//! by other concentrators merge into one frame (best SNR/RSSI kept, receivers counted). Then
//! the frame is decided on, the state file is saved (counters reserved), the readings are
//! submitted to the store, and once they are durable the PUSH_ACK goes back to every
//! concentrator that sent a copy, and a downlink, if one is due, to the concentrator that heard
//! the device best, timed for RX1 or, if that is too close, RX2. Saves are group-committed:
//! frames decided while one save runs share the next.

use super::gwmp::{self, Eui64, Rxpk, Upstream};
use super::region::{JOIN_ACCEPT_DELAY1, RECEIVE_DELAY1};
use super::server::{DownlinkPlan, Handled, NetworkServer, QueueError};
use crate::{AdapterMetrics, LinkState};
use fieldgate_proto::{CommandId, DeviceId, IngestError, Metric, ReadingSink, Timestamp};
use futures_util::stream::{FuturesUnordered, StreamExt};
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Where the sessions file is kept; the gateway implements it with its state directory.
pub trait StateFile: Send + Sync + 'static {
    fn save(&self, bytes: &[u8]) -> std::io::Result<()>;
}

/// The adapter's settings (besides the devices, which the [`NetworkServer`] holds).
#[derive(Debug, Clone)]
pub struct AdapterSettings {
    /// Concentrators allowed to talk to the gateway; `None` lets any in (loopback only).
    pub gateways: Option<HashSet<Eui64>>,
    /// How long copies of a frame from other concentrators are waited for.
    pub dedup_window: Duration,
    /// How far ahead of a receive window a PULL_RESP must leave.
    pub downlink_lead: Duration,
    /// Store readings at the concentrator's GPS time of reception (`rxpk.time`) when it is at
    /// most this old by the gateway clock (and at most [`CONCENTRATOR_AHEAD`] ahead of it);
    /// `None` stores every reading at its arrival time.
    pub concentrator_time_max_age: Option<Duration>,
}

/// How far a concentrator's time of reception may be ahead of the gateway clock and still be
/// believed: GPS time is exact, but the gateway's own clock may be off by this much.
pub const CONCENTRATOR_AHEAD: Duration = Duration::from_secs(60);

/// What a queued downlink carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Downlink {
    /// A setpoint, encoded by the device's profile, on its `command_port`.
    Set { metric: Metric, value: f64 },
    /// An operator instruction (harvest coordination), on [`super::codec::INSTRUCTION_PORT`].
    Instruct { task: fieldgate_proto::Task, target: Option<DeviceId> },
}

/// A downlink to queue for a device's next uplink.
#[derive(Debug)]
pub struct QueueRequest {
    pub device: DeviceId,
    pub command: CommandId,
    pub what: Downlink,
    /// The queue position, once the queue is saved.
    pub done: oneshot::Sender<Result<usize, QueueError>>,
}

/// Largest datagram a forwarder sends (a PUSH_DATA with several packets and statistics).
const MAX_DATAGRAM: usize = 65_535;
/// A TX_ACK later than this is taken as lost (the downlink most likely went out).
const TX_ACK_TIMEOUT: Duration = Duration::from_secs(10);

type Step = Pin<Box<dyn Future<Output = Done> + Send>>;

/// What an in-flight piece of work came back with.
enum Done {
    Saved { generation: u64 },
    Stored { frame: Frame, plan: Option<DownlinkPlan>, device: usize, fcnt: u32 },
    Joined { frame: Frame, device: usize, accept: Vec<u8> },
    NotStored { frame: Frame, error: IngestError },
    Nothing,
}

/// One frame after deduplication: where it was heard and whom to acknowledge.
struct Frame {
    best: (Eui64, Rxpk),
    heard: Instant,
    datagrams: Vec<u64>,
}

/// Copies of one frame being gathered.
struct Gathering {
    received: Timestamp,
    heard: Instant,
    receptions: Vec<(Eui64, Rxpk)>,
    datagrams: Vec<u64>,
}

/// A PUSH_DATA waiting for its packets to be settled.
struct PendingAck {
    addr: SocketAddr,
    version: u8,
    token: u16,
    frames: usize,
    /// A packet of it was not stored: no PUSH_ACK for it.
    failed: bool,
}

/// A concentrator's downlink path (from its last PULL_DATA).
struct Path {
    addr: SocketAddr,
    version: u8,
}

/// A PULL_RESP waiting for its TX_ACK.
struct Transmission {
    device: usize,
    command: Option<CommandId>,
    sent: Instant,
}

struct Adapter {
    server: NetworkServer,
    settings: AdapterSettings,
    socket: Arc<UdpSocket>,
    sink: ReadingSink,
    metrics: AdapterMetrics,
    state: Arc<dyn StateFile>,
    link: watch::Sender<LinkState>,
    listen: SocketAddr,
    gathering: HashMap<Vec<u8>, Gathering>,
    deadlines: VecDeque<(Instant, Vec<u8>)>,
    acks: HashMap<u64, PendingAck>,
    next_datagram: u64,
    paths: HashMap<Eui64, Path>,
    /// Each concentrator's last statistics report.
    stats: HashMap<Eui64, gwmp::Stat>,
    transmissions: HashMap<u16, Transmission>,
    next_token: u16,
    work: FuturesUnordered<Step>,
    /// State changes made so far; the one being saved; the last one saved.
    generation: u64,
    saving: Option<u64>,
    saved: watch::Sender<u64>,
    /// Resolves once the last uplink decided has handed its readings to the store (or gave
    /// up): each uplink waits for the one before, so a device's readings reach the store in
    /// the order its frames were decided, even when a burst shares one state save.
    last_handed: Option<oneshot::Receiver<()>>,
}

/// Run the adapter until `shutdown`: serve `socket`, queue `commands`, save state to `state`.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    server: NetworkServer,
    settings: AdapterSettings,
    socket: UdpSocket,
    state: Arc<dyn StateFile>,
    sink: ReadingSink,
    mut commands: mpsc::Receiver<QueueRequest>,
    metrics: AdapterMetrics,
    link: watch::Sender<LinkState>,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let listen = socket.local_addr().map_err(|e| e.to_string())?;
    let mut a = Adapter {
        server,
        settings,
        socket: Arc::new(socket),
        sink,
        metrics,
        state,
        link,
        listen,
        gathering: HashMap::new(),
        deadlines: VecDeque::new(),
        acks: HashMap::new(),
        next_datagram: 0,
        paths: HashMap::new(),
        stats: HashMap::new(),
        transmissions: HashMap::new(),
        next_token: rand::Rng::random(&mut <rand::rngs::SmallRng as rand::SeedableRng>::from_os_rng()),
        work: FuturesUnordered::new(),
        generation: 0,
        saving: None,
        saved: watch::channel(0).0,
        last_handed: None,
    };
    a.report();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let socket = a.socket.clone();
    loop {
        let next_deadline = a.deadlines.front().map(|(d, _)| *d);
        tokio::select! {
            () = shutdown.cancelled() => break,
            received = socket.recv_from(&mut buf) => match received {
                Ok((len, from)) => a.datagram(&buf[..len], from).await,
                // An ICMP "port unreachable" from an earlier send shows up here on Linux.
                Err(e) => tracing::debug!(error = %e, "lorawan socket receive error"),
            },
            () = sleep_until(next_deadline) => a.settle_due(Instant::now()).await,
            Some(done) = a.work.next() => a.done(done).await,
            Some(request) = commands.recv() => a.queue(request),
        }
        a.expire_transmissions();
    }
    // Shutdown: decide on what is gathered now, let stored frames finish, save last.
    a.settle_due(Instant::now() + Duration::from_secs(3600)).await;
    a.generation += 1;
    a.save_if_idle();
    while let Some(done) = a.work.next().await {
        a.done(done).await;
    }
    Ok(())
}

/// Send a datagram (a free function: the adapter's futures hold it only mutably, so it need
/// not be `Sync`).
async fn send(socket: &UdpSocket, bytes: &[u8], to: SocketAddr) {
    if let Err(e) = socket.send_to(bytes, to).await {
        tracing::warn!(%to, error = %e, "lorawan: cannot send to a concentrator");
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

impl Adapter {
    fn report(&self) {
        let mut detail = format!(
            "network server on udp {} ({}), {} devices, {} concentrators with a downlink path",
            self.listen,
            self.server.region().as_str(),
            self.server.devices().len(),
            self.paths.len()
        );
        // The concentrators' own view, as their last statistics said (the first few).
        let mut stats: Vec<_> = self.stats.iter().collect();
        stats.sort_by_key(|(eui, _)| **eui);
        for (eui, s) in stats.iter().take(3) {
            let n = |v: Option<u32>| v.map_or_else(|| "?".to_owned(), |v| v.to_string());
            let ackr = s.ackr.map_or_else(|| "?".to_owned(), |a| format!("{a:.0}%"));
            detail.push_str(&format!(
                "; {eui}: received {}, crc ok {}, forwarded {}, acked {ackr}",
                n(s.rxnb),
                n(s.rxok),
                n(s.rxfw)
            ));
        }
        self.link.send_replace(LinkState::Up(detail));
        self.metrics.lorawan_gateways.set(self.paths.len() as i64);
    }

    fn reject(&self, reason: &'static str, place: &str, why: &dyn std::fmt::Display) {
        self.metrics.rejected("lorawan", reason, place, why);
    }

    async fn datagram(&mut self, bytes: &[u8], from: SocketAddr) {
        let up = match gwmp::decode(bytes) {
            Ok(up) => up,
            Err(e) => return self.reject(e.reason(), &from.to_string(), &e),
        };
        let gateway = up.gateway();
        if let Some(allowed) = &self.settings.gateways
            && !allowed.contains(&gateway)
        {
            let why = format!("concentrator {gateway} is not in lorawan.gateways");
            return self.reject("unknown_gateway", &from.to_string(), &why);
        }
        match up {
            Upstream::PullData { version, token, gateway } => {
                send(&self.socket, &gwmp::pull_ack(version, token), from).await;
                let new = self.paths.insert(gateway, Path { addr: from, version }).is_none();
                if new {
                    tracing::info!(%gateway, %from, "lorawan: concentrator opened its downlink path");
                    self.report();
                }
            }
            Upstream::TxAck { token, error, .. } => self.tx_ack(token, error),
            Upstream::PushData { version, token, gateway, data } => {
                if let Some(stat) = data.stat {
                    tracing::debug!(%gateway, ?stat, "lorawan: concentrator statistics");
                    self.stats.insert(gateway, stat);
                    self.report();
                }
                let id = self.next_datagram;
                self.next_datagram += 1;
                let mut frames = 0;
                for rxpk in data.rxpk {
                    match rxpk {
                        Ok(rxpk) if rxpk.stat == 1 => {
                            self.gather(gateway, rxpk, id);
                            frames += 1;
                        }
                        // A packet with a bad CRC is noise on the channel, not a device's frame.
                        Ok(_) => {
                            self.reject("bad_crc", &gateway.to_string(), &"a packet with a failed radio CRC")
                        }
                        Err(e) => self.reject(e.reason(), &gateway.to_string(), &e),
                    }
                }
                if frames == 0 {
                    send(&self.socket, &gwmp::push_ack(version, token), from).await;
                } else {
                    self.acks.insert(id, PendingAck { addr: from, version, token, frames, failed: false });
                }
            }
        }
    }

    fn gather(&mut self, gateway: Eui64, rxpk: Rxpk, datagram: u64) {
        match self.gathering.get_mut(&rxpk.data) {
            Some(g) => {
                self.metrics.lorawan_duplicates.inc();
                g.receptions.push((gateway, rxpk));
                g.datagrams.push(datagram);
            }
            None => {
                let heard = Instant::now();
                let key = rxpk.data.clone();
                self.deadlines.push_back((heard + self.settings.dedup_window, key.clone()));
                let g = Gathering {
                    received: Timestamp::now(),
                    heard,
                    receptions: vec![(gateway, rxpk)],
                    datagrams: vec![datagram],
                };
                self.gathering.insert(key, g);
            }
        }
    }

    /// Decide on every frame whose window ended by `now`.
    async fn settle_due(&mut self, now: Instant) {
        while let Some((deadline, _)) = self.deadlines.front() {
            if *deadline > now {
                break;
            }
            let (_, key) = self.deadlines.pop_front().expect("just looked");
            let Some(g) = self.gathering.remove(&key) else { continue };
            self.decide(&key, g).await;
        }
    }

    async fn decide(&mut self, phy: &[u8], g: Gathering) {
        // The best reception: strongest SNR, then RSSI.
        let best = g
            .receptions
            .iter()
            .max_by(|a, b| {
                let key = |r: &Rxpk| (r.lsnr.unwrap_or(f64::MIN), r.rssi);
                key(&a.1).partial_cmp(&key(&b.1)).unwrap_or(std::cmp::Ordering::Equal)
            })
            .cloned()
            .expect("at least one reception");
        let receivers = g.receptions.iter().map(|r| r.0).collect::<HashSet<_>>().len();
        let at = self.reception_time(&best, &g);
        let frame = Frame { best, heard: g.heard, datagrams: g.datagrams };
        match self.server.handle(phy, &frame.best.1, receivers, at) {
            Err(r) => {
                let place = r.device.as_ref().map_or_else(|| frame.best.0.to_string(), |d| d.to_string());
                self.reject(r.reason, &place, &r.detail);
                self.settle(&frame.datagrams).await;
            }
            Ok(Handled::Join(j)) => {
                tracing::info!(device = %j.id, dev_addr = format!("{:08x}", j.dev_addr), "lorawan: device joined");
                self.metrics.lorawan_joins.inc();
                let wait = self.reserve();
                self.work.push(Box::pin(async move {
                    if wait.await {
                        Done::Joined { frame, device: j.device, accept: j.accept }
                    } else {
                        Done::Nothing
                    }
                }));
            }
            Ok(Handled::Uplink(up)) => {
                if let Some(e) = &up.codec_error {
                    self.reject(e.reason(), up.id.as_str(), e);
                }
                if !up.repeated {
                    self.metrics.lorawan_uplinks.inc();
                }
                let wait = self.reserve();
                let sink = self.sink.clone();
                let received = g.received;
                let (handed, next) = oneshot::channel::<()>();
                let before = self.last_handed.replace(next);
                self.work.push(Box::pin(async move {
                    if !wait.await {
                        return Done::Nothing;
                    }
                    if let Some(before) = before {
                        // Sent or dropped: either way the frame before is out of the way.
                        let _ = before.await;
                    }
                    if !up.readings.is_empty() {
                        let submitted = sink.submit(up.readings, received).await;
                        drop(handed);
                        let durable = match submitted {
                            Ok(ack) => ack.await,
                            Err(e) => Err(e),
                        };
                        if let Err(error) = durable {
                            return Done::NotStored { frame, error };
                        }
                    }
                    Done::Stored { frame, plan: up.downlink, device: up.device, fcnt: up.fcnt }
                }));
            }
        }
    }

    /// When a frame was received: the concentrator's GPS time if one sent a believable one (the
    /// best reception's first), else the gateway clock when the first copy arrived. A GPS
    /// concentrator's time is right even when the gateway's clock drifts, and it is the time
    /// the radio heard the frame, not when a forwarder that buffered through a backhaul outage
    /// got round to sending it.
    fn reception_time(&self, best: &(Eui64, Rxpk), g: &Gathering) -> Timestamp {
        let Some(max_age) = self.settings.concentrator_time_max_age else { return g.received };
        let mut offered = false;
        for (_, rxpk) in std::iter::once(best).chain(&g.receptions) {
            let Some(text) = &rxpk.time else { continue };
            offered = true;
            let Ok(at) = Timestamp::parse_rfc3339(text) else { continue };
            let ahead = at.duration_since(g.received);
            let behind = g.received.duration_since(at);
            if ahead <= CONCENTRATOR_AHEAD && behind <= max_age {
                return at;
            }
        }
        if offered {
            self.metrics.lorawan_concentrator_time_ignored.inc();
            if let Some(suppressed) = self.metrics.may_log("lorawan", "concentrator_time") {
                tracing::warn!(
                    gateway = %best.0,
                    suppressed,
                    time = best.1.time.as_deref().unwrap_or(""),
                    "lorawan: the concentrator's time of reception is unreadable, more than {}s ahead of \
                     this gateway's clock or older than concentrator_time_max_age; the frame is stored \
                     at its arrival time",
                    CONCENTRATOR_AHEAD.as_secs()
                );
            }
        }
        g.received
    }

    /// Record a state change that must be saved before what follows it; the future resolves
    /// (`true`) once it is, or `false` if the adapter stopped first.
    fn reserve(&mut self) -> impl Future<Output = bool> + Send + 'static {
        self.generation += 1;
        let target = self.generation;
        let mut saved = self.saved.subscribe();
        self.save_if_idle();
        async move { saved.wait_for(|s| *s >= target).await.is_ok() }
    }

    /// Start saving the current state unless a save runs or nothing changed; the next save
    /// starts when this one ends, with everything changed meanwhile (group commit).
    fn save_if_idle(&mut self) {
        if self.saving.is_some() || *self.saved.borrow() >= self.generation {
            return;
        }
        let generation = self.generation;
        self.saving = Some(generation);
        let bytes = Arc::new(self.server.encode());
        let state = self.state.clone();
        let link = self.link.clone();
        self.work.push(Box::pin(async move {
            // Nothing that waits for this save goes ahead until it succeeds: no acks, no
            // downlinks, no new counters used.
            loop {
                let (state, bytes) = (state.clone(), bytes.clone());
                let result = tokio::task::spawn_blocking(move || state.save(&bytes))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()));
                match result {
                    Ok(()) => return Done::Saved { generation },
                    Err(e) => {
                        tracing::error!(error = %e, "lorawan: cannot save the sessions; retrying");
                        link.send_replace(LinkState::Down(format!("cannot save the LoRaWAN sessions: {e}")));
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }));
    }

    async fn done(&mut self, done: Done) {
        match done {
            Done::Saved { generation } => {
                self.saving = None;
                self.saved.send_replace(generation);
                if matches!(*self.link.borrow(), LinkState::Down(_)) {
                    self.report();
                }
                self.save_if_idle();
            }
            Done::Stored { frame, plan, device, fcnt } => {
                self.server.stored(device, fcnt);
                // Saved lazily: a lost `stored` mark only means a repeat is stored again.
                self.generation += 1;
                self.save_if_idle();
                if let Some(plan) = plan {
                    match self.server.build_downlink(device, &plan) {
                        Ok(phy) => {
                            let command = plan.queued.map(|q| q.command);
                            self.downlink(&frame, RECEIVE_DELAY1, phy, device, command).await;
                        }
                        Err(e) => tracing::error!(error = %e, "lorawan: cannot build a downlink"),
                    }
                }
                self.settle(&frame.datagrams).await;
            }
            Done::Joined { frame, device, accept } => {
                self.downlink(&frame, JOIN_ACCEPT_DELAY1, accept, device, None).await;
                self.settle(&frame.datagrams).await;
            }
            Done::NotStored { frame, error } => {
                // Not acknowledged: the forwarder does not resend, and a confirmed uplink's
                // device will repeat it.
                tracing::warn!(error = %error, gateway = %frame.best.0, "lorawan: uplink not stored");
                self.settle_failed(&frame.datagrams);
            }
            Done::Nothing => {}
        }
    }

    /// Send a downlink through the concentrator that heard the frame best.
    async fn downlink(
        &mut self,
        frame: &Frame,
        delay: Duration,
        phy: Vec<u8>,
        device: usize,
        command: Option<CommandId>,
    ) {
        let (gateway, rxpk) = &frame.best;
        let region = self.server.region();
        let elapsed = frame.heard.elapsed();
        let outcome = match self.paths.get(gateway) {
            None => Err("no_path"),
            Some(path) => match region.schedule(rxpk, delay, elapsed, self.settings.downlink_lead, phy) {
                None => Err("too_late"),
                Some((window, txpk)) => Ok((path.addr, path.version, window, txpk)),
            },
        };
        match outcome {
            Ok((addr, version, window, txpk)) => {
                let token = self.next_token;
                self.next_token = self.next_token.wrapping_add(1);
                send(&self.socket, &gwmp::pull_resp(version, token, &txpk), addr).await;
                self.metrics.lorawan_downlink(window.as_str());
                tracing::debug!(%gateway, window = window.as_str(), "lorawan: downlink sent");
                if version >= 2 {
                    self.transmissions.insert(token, Transmission { device, command, sent: Instant::now() });
                } else if let Some(command) = command {
                    // Version 1 forwarders do not confirm a transmission.
                    self.server.sent(device, &command, true);
                    self.generation += 1;
                    self.save_if_idle();
                }
            }
            Err(outcome) => {
                self.metrics.lorawan_downlink(outcome);
                let device_id = self.server.devices()[device].device.clone();
                tracing::warn!(device = %device_id, %gateway, outcome, "lorawan: downlink not sent");
                if let Some(command) = command {
                    self.server.sent(device, &command, false);
                }
            }
        }
    }

    fn tx_ack(&mut self, token: u16, error: Option<String>) {
        let Some(tx) = self.transmissions.remove(&token) else { return };
        let outcome = match error.as_deref() {
            None => "tx_ok",
            Some("TOO_LATE") => "tx_too_late",
            Some("TOO_EARLY") => "tx_too_early",
            Some("COLLISION_PACKET") => "tx_collision",
            Some("COLLISION_BEACON") => "tx_collision_beacon",
            Some("TX_FREQ") => "tx_freq",
            Some("TX_POWER") => "tx_power",
            Some("GPS_UNLOCKED") => "tx_gps_unlocked",
            Some(_) => "tx_other",
        };
        self.metrics.lorawan_downlink(outcome);
        if let Some(e) = &error {
            let device = self.server.devices()[tx.device].device.clone();
            tracing::warn!(%device, error = %e, "lorawan: the concentrator did not transmit a downlink");
        }
        if let Some(command) = tx.command {
            self.server.sent(tx.device, &command, error.is_none());
            self.generation += 1;
            self.save_if_idle();
        }
    }

    fn expire_transmissions(&mut self) {
        if self.transmissions.is_empty() {
            return;
        }
        let expired: Vec<u16> = self
            .transmissions
            .iter()
            .filter(|(_, t)| t.sent.elapsed() > TX_ACK_TIMEOUT)
            .map(|(k, _)| *k)
            .collect();
        for token in expired {
            if let Some(tx) = self.transmissions.remove(&token) {
                self.metrics.lorawan_downlink("tx_ack_lost");
                if let Some(command) = tx.command {
                    self.server.sent(tx.device, &command, true);
                    self.generation += 1;
                    self.save_if_idle();
                }
            }
        }
    }

    /// One frame of each of these datagrams is settled; acknowledge those with none left.
    async fn settle(&mut self, datagrams: &[u64]) {
        for id in datagrams {
            let done = match self.acks.get_mut(id) {
                Some(p) => {
                    p.frames -= 1;
                    p.frames == 0
                }
                None => false,
            };
            if done
                && let Some(p) = self.acks.remove(id)
                && !p.failed
            {
                send(&self.socket, &gwmp::push_ack(p.version, p.token), p.addr).await;
            }
        }
    }

    /// A frame of each of these datagrams could not be stored: they are not acknowledged.
    fn settle_failed(&mut self, datagrams: &[u64]) {
        for id in datagrams {
            if let Some(p) = self.acks.get_mut(id) {
                p.frames -= 1;
                p.failed = true;
                if p.frames == 0 {
                    self.acks.remove(id);
                }
            }
        }
    }

    fn queue(&mut self, request: QueueRequest) {
        let queued = match &request.what {
            Downlink::Set { metric, value } => {
                self.server.enqueue(&request.device, request.command, metric, *value)
            }
            Downlink::Instruct { task, target } => {
                self.server.enqueue_instruction(&request.device, request.command, *task, target.as_ref())
            }
        };
        match queued {
            Ok(position) => {
                let wait = self.reserve();
                self.work.push(Box::pin(async move {
                    if wait.await {
                        let _ = request.done.send(Ok(position));
                    }
                    Done::Nothing
                }));
            }
            Err(e) => {
                let _ = request.done.send(Err(e));
            }
        }
    }
}

/// The command dispatcher's way to LoRaWAN devices: a setpoint is encoded with the device's
/// profile and queued for its next uplink (class A devices listen only after sending), so
/// the answer is `QUEUED` once the queue is saved.
#[derive(Debug, Clone)]
pub struct LorawanCommands {
    tx: mpsc::Sender<QueueRequest>,
    devices: Arc<HashSet<DeviceId>>,
}

impl LorawanCommands {
    /// A handle for the configured `devices`, and the receiver the adapter serves.
    pub fn new(devices: impl IntoIterator<Item = DeviceId>) -> (Self, mpsc::Receiver<QueueRequest>) {
        // A few callers at once; a full queue makes the caller wait, not fail.
        let (tx, rx) = mpsc::channel(64);
        (LorawanCommands { tx, devices: Arc::new(devices.into_iter().collect()) }, rx)
    }

    /// Whether `device` is a configured LoRaWAN device.
    pub fn knows(&self, device: &DeviceId) -> bool {
        self.devices.contains(device)
    }

    pub async fn send(
        &self,
        command: &fieldgate_proto::Command,
    ) -> Result<fieldgate_proto::Sent, fieldgate_proto::CommandError> {
        use fieldgate_proto::{Action, CommandError, Delivery, Sent};
        let what = match &command.action {
            Action::Set { metric, value } => Downlink::Set { metric: metric.clone(), value: *value },
            Action::Instruct(i) => Downlink::Instruct { task: i.task, target: i.target.clone() },
        };
        let (done, answer) = oneshot::channel();
        let request =
            QueueRequest { device: command.device.clone(), command: command.id.clone(), what, done };
        let stopped = || CommandError::Unreachable("the LoRaWAN network server has stopped".to_owned());
        self.tx.send(request).await.map_err(|_| stopped())?;
        match answer.await.map_err(|_| stopped())? {
            Ok(position) => Ok(Sent {
                delivery: Delivery::Queued,
                detail: format!(
                    "queued for `{}`'s next uplink (class A); {position} downlink(s) waiting",
                    command.device
                ),
            }),
            Err(QueueError::UnknownDevice(d)) => Err(CommandError::UnknownDevice(d)),
            Err(e @ QueueError::Full { .. }) => Err(CommandError::Unreachable(e.to_string())),
            Err(e) => Err(CommandError::Unsupported(e.to_string())),
        }
    }
}
