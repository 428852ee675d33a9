//! The network server's decisions, without I/O: a received frame (already deduplicated across
//! concentrators) and the current sessions in; readings, session changes and downlinks to send
//! out. The UDP adapter ([`super::adapter`]) does the waiting: it saves the state, stores the
//! readings and times the downlinks.
//!
//! Frame counters are reserved before anything is stored: [`NetworkServer::handle`] advances
//! the session's counter, the caller saves the state, and only then submits the readings. So a
//! frame accepted once is never accepted again, whatever happens to the process; a frame whose
//! readings did not become durable before a crash is lost, and was never acknowledged (no
//! PUSH_ACK, no ACK bit). A confirmed uplink repeated by its device (it missed our ACK) is
//! answered again and stored only if its readings were not stored yet.

use super::codec::{self, CodecError};
use super::gwmp::Rxpk;
use super::join::{self, AcceptParams};
use super::mac::{self, Frame, FrameError};
use super::region::{Region, demodulation_floor, spreading_factor};
use super::session::{Activation, DeviceConfig, DeviceState, Index, Queued, Session};
use fieldgate_proto::{CommandId, DeviceId, Metric, Quality, Reading, Source, Timestamp};
use rand::{Rng, SeedableRng};

/// The network's settings.
#[derive(Debug, Clone)]
pub struct NetworkSettings {
    pub region: Region,
    /// The 24-bit NetID; its lowest 7 bits are the NwkID at the top of every DevAddr given out.
    pub net_id: u32,
}

/// Why a frame was refused; `reason` labels `fieldgate_inputs_rejected_total`.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub reason: &'static str,
    pub detail: String,
    pub device: Option<DeviceId>,
}

impl Rejection {
    fn new(reason: &'static str, detail: impl Into<String>, device: Option<&DeviceId>) -> Self {
        Rejection { reason, detail: detail.into(), device: device.cloned() }
    }

    fn frame(e: &FrameError, device: Option<&DeviceId>) -> Self {
        Rejection::new(e.reason(), e.to_string(), device)
    }
}

/// What to do with an accepted frame.
#[derive(Debug)]
pub enum Handled {
    Uplink(Accepted),
    Join(Joined),
}

/// An accepted data uplink.
#[derive(Debug)]
pub struct Accepted {
    pub device: usize,
    pub id: DeviceId,
    pub fcnt: u32,
    pub confirmed: bool,
    /// The readings to store; empty for a retransmission already stored.
    pub readings: Vec<Reading>,
    /// A retransmission of the last accepted frame.
    pub repeated: bool,
    /// The payload did not decode (the frame itself was genuine; link metrics are kept).
    pub codec_error: Option<CodecError>,
    /// The downlink to send once the readings are durable.
    pub downlink: Option<DownlinkPlan>,
}

/// A downlink with its counter reserved.
#[derive(Debug, Clone)]
pub struct DownlinkPlan {
    pub fcnt_down: u32,
    pub ack: bool,
    /// MAC command answers (LinkCheckAns, DeviceTimeAns).
    pub f_opts: Vec<u8>,
    pub queued: Option<Queued>,
}

/// An accepted join: the JoinAccept to send.
#[derive(Debug)]
pub struct Joined {
    pub device: usize,
    pub id: DeviceId,
    pub dev_addr: u32,
    pub accept: Vec<u8>,
}

/// Why a command could not be queued.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QueueError {
    #[error("`{0}` is not a LoRaWAN device of this gateway")]
    UnknownDevice(String),
    #[error("{0}")]
    Encode(String),
    #[error("the payload of {len} bytes does not fit a downlink at the slowest rate ({max} bytes)")]
    TooLong { len: usize, max: usize },
    #[error("`{device}` already has {QUEUE_LIMIT} downlinks waiting for its next uplink")]
    Full { device: String },
}

/// Downlinks kept per device at most (a class A device takes one per uplink).
pub const QUEUE_LIMIT: usize = 32;

/// The network server's state: configured devices and their sessions.
#[derive(Debug)]
pub struct NetworkServer {
    settings: NetworkSettings,
    devices: Vec<DeviceConfig>,
    states: Vec<DeviceState>,
    index: Index,
    /// Per device: the head of its queue is on its way (not to be planned twice).
    sending: Vec<bool>,
    rng: rand::rngs::SmallRng,
}

/// Seconds between the Unix and GPS epochs, and the leap seconds GPS time is ahead by.
const GPS_EPOCH_UNIX: i64 = 315_964_800;
const GPS_LEAP_SECONDS: i64 = 18;

impl NetworkServer {
    /// `states` as loaded (one per device, in order); ABP devices without one get theirs.
    pub fn new(settings: NetworkSettings, devices: Vec<DeviceConfig>, mut states: Vec<DeviceState>) -> Self {
        states.resize_with(devices.len(), DeviceState::default);
        for (d, s) in devices.iter().zip(states.iter_mut()) {
            if let (Activation::Abp { dev_addr, keys }, None) = (&d.activation, &s.session) {
                s.session = Some(Session {
                    dev_addr: *dev_addr,
                    keys: keys.clone(),
                    fcnt_up: None,
                    stored: true,
                    fcnt_down: 0,
                });
            }
        }
        let index = Index::new(&devices, &states);
        let sending = vec![false; devices.len()];
        NetworkServer { settings, devices, states, index, sending, rng: rand::rngs::SmallRng::from_os_rng() }
    }

    pub fn region(&self) -> Region {
        self.settings.region
    }

    pub fn devices(&self) -> &[DeviceConfig] {
        &self.devices
    }

    pub fn states(&self) -> &[DeviceState] {
        &self.states
    }

    /// The state file's content now.
    pub fn encode(&self) -> Vec<u8> {
        super::session::encode(&self.devices, &self.states)
    }

    /// Decide about one frame, heard by `receivers` concentrators, best at `best`.
    pub fn handle(
        &mut self,
        phy: &[u8],
        best: &Rxpk,
        receivers: usize,
        received: Timestamp,
    ) -> Result<Handled, Rejection> {
        match phy.first().map(|b| b >> 5) {
            Some(0) => self.join(phy).map(Handled::Join),
            Some(2 | 4) => self.uplink(phy, best, receivers, received).map(Handled::Uplink),
            Some(1 | 3 | 5) => {
                Err(Rejection::new("not_uplink", "a downlink or join accept heard on air", None))
            }
            Some(_) => Err(Rejection::new("proprietary", "a proprietary or rejoin frame", None)),
            None => Err(Rejection::new("malformed", "an empty frame", None)),
        }
    }

    fn join(&mut self, phy: &[u8]) -> Result<Joined, Rejection> {
        let request = join::peek_join(phy).map_err(|e| Rejection::frame(&e, None))?;
        let &device = self.index.by_eui.get(&request.dev_eui).ok_or_else(|| {
            Rejection::new(
                "unknown_dev_eui",
                format!("join from DevEUI {} not configured", request.dev_eui),
                None,
            )
        })?;
        let config = &self.devices[device];
        let id = config.device.clone();
        let Activation::Otaa { join_eui, app_key } = &config.activation else {
            return Err(Rejection::new("not_otaa", "an ABP device sent a join request", Some(&id)));
        };
        if let Some(expected) = join_eui
            && *expected != request.join_eui
        {
            return Err(Rejection::new(
                "wrong_join_eui",
                format!("JoinEUI {} is not the configured {expected}", request.join_eui),
                Some(&id),
            ));
        }
        let app_key = *app_key;
        join::verify_join(phy, &app_key).map_err(|e| Rejection::frame(&e, Some(&id)))?;
        let state = &self.states[device];
        if state.dev_nonces.contains(&request.dev_nonce) {
            return Err(Rejection::new(
                "dev_nonce_replayed",
                format!("DevNonce {:#06x} was used before by this device", request.dev_nonce),
                Some(&id),
            ));
        }
        let join_nonce = state.join_nonce + 1;
        if join_nonce > 0xff_ffff {
            return Err(Rejection::new(
                "join_nonce_exhausted",
                "the device has used every JoinNonce",
                Some(&id),
            ));
        }
        let dev_addr = self.free_address();
        let params = AcceptParams {
            join_nonce,
            net_id: self.settings.net_id,
            dev_addr,
            dl_settings: self.settings.region.dl_settings(),
            rx_delay: 1,
        };
        let (accept, keys) =
            join::accept(&request, &app_key, &params).map_err(|e| Rejection::frame(&e, Some(&id)))?;
        let state = &mut self.states[device];
        let old = state.session.as_ref().map(|s| s.dev_addr);
        state.session = Some(Session { dev_addr, keys, fcnt_up: None, stored: true, fcnt_down: 0 });
        state.dev_nonces.insert(request.dev_nonce);
        state.join_nonce = join_nonce;
        self.index.readdress(device, old, dev_addr);
        self.sending[device] = false;
        Ok(Joined { device, id, dev_addr, accept })
    }

    /// A DevAddr in this network's range that no device holds.
    fn free_address(&mut self) -> u32 {
        let nwk_id = self.settings.net_id & 0x7f;
        loop {
            let addr = (nwk_id << 25) | (self.rng.random::<u32>() & 0x01ff_ffff);
            if !self.index.by_addr.contains_key(&addr) {
                return addr;
            }
        }
    }

    fn uplink(
        &mut self,
        phy: &[u8],
        best: &Rxpk,
        receivers: usize,
        received: Timestamp,
    ) -> Result<Accepted, Rejection> {
        let (dev_addr, fcnt16) = mac::peek(phy).map_err(|e| Rejection::frame(&e, None))?;
        let candidates = self.index.by_addr.get(&dev_addr).cloned().unwrap_or_default();
        if candidates.is_empty() {
            return Err(Rejection::new(
                "unknown_dev_addr",
                format!("no session has DevAddr {dev_addr:08x}"),
                None,
            ));
        }
        let mut refusal = None;
        for device in candidates {
            let id = self.devices[device].device.clone();
            let session = self.states[device].session.as_ref().expect("indexed by its session");
            // The device repeating its last frame (a missed ACK, or NbTrans): verify it with
            // the counter it was accepted with.
            let repeat_of = session.fcnt_up.filter(|last| *last as u16 == fcnt16);
            let last = match repeat_of {
                Some(0) => None,
                Some(n) => Some(n - 1),
                None => session.fcnt_up,
            };
            match mac::verify_uplink(phy, &session.keys, last) {
                Ok(up) => return self.accept(device, id, up, repeat_of.is_some(), best, receivers, received),
                Err(e) => {
                    // Prefer the refusal of a device whose keys matched (a replay) to a bad MIC.
                    if refusal.is_none() || e != FrameError::BadMic {
                        refusal = Some(Rejection::frame(&e, Some(&id)));
                    }
                }
            }
        }
        Err(refusal.expect("at least one candidate"))
    }

    #[allow(clippy::too_many_arguments)]
    fn accept(
        &mut self,
        device: usize,
        id: DeviceId,
        up: mac::Uplink,
        repeated: bool,
        best: &Rxpk,
        receivers: usize,
        received: Timestamp,
    ) -> Result<Accepted, Rejection> {
        if repeated && !up.confirmed {
            return Err(Rejection::new(
                "repeated",
                format!("unconfirmed frame {} repeated (NbTrans, or a replay)", up.fcnt),
                Some(&id),
            ));
        }
        let session = self.states[device].session.as_mut().expect("verified against it");
        let store = !repeated || !session.stored;
        if !repeated {
            session.fcnt_up = Some(up.fcnt);
            session.stored = false;
        }
        let mut mac_in = up.f_opts.clone();
        let mut readings = Vec::new();
        let mut codec_error = None;
        match up.f_port {
            Some(0) => mac_in.extend_from_slice(&up.payload),
            Some(port) if store => match self.devices[device].codec.decode(port, &up.payload) {
                Ok(values) => readings.extend(values.into_iter().map(|(m, v)| reading(&id, m, v, received))),
                Err(e) => codec_error = Some(e),
            },
            _ => {}
        }
        if store {
            let metric = |name: &str| Metric::new(name).expect("a valid name");
            readings.push(reading(&id, metric("lora_rssi_dbm"), f64::from(best.rssi), received));
            if let Some(snr) = best.lsnr {
                readings.push(reading(&id, metric("lora_snr_db"), snr, received));
            }
            readings.push(reading(&id, metric("lora_receivers"), receivers as f64, received));
        } else {
            readings.clear();
        }
        let f_opts = mac_answers(&mac_in, best, receivers, received);
        let state = &mut self.states[device];
        let queued = if self.sending[device] { None } else { state.queue.front().cloned() };
        let downlink = if up.confirmed || queued.is_some() || !f_opts.is_empty() {
            let session = state.session.as_mut().expect("verified against it");
            let fcnt_down = session.fcnt_down;
            session.fcnt_down = session.fcnt_down.wrapping_add(1);
            self.sending[device] |= queued.is_some();
            Some(DownlinkPlan { fcnt_down, ack: up.confirmed, f_opts, queued })
        } else {
            None
        };
        Ok(Accepted {
            device,
            id,
            fcnt: up.fcnt,
            confirmed: up.confirmed,
            readings,
            repeated,
            codec_error,
            downlink,
        })
    }

    /// The readings of uplink `fcnt` are durable.
    pub fn stored(&mut self, device: usize, fcnt: u32) {
        if let Some(s) = self.states[device].session.as_mut()
            && s.fcnt_up == Some(fcnt)
        {
            s.stored = true;
        }
    }

    /// The frame of a planned downlink.
    pub fn build_downlink(&self, device: usize, plan: &DownlinkPlan) -> Result<Vec<u8>, FrameError> {
        let session = self.states[device].session.as_ref().expect("planned with a session");
        let (f_port, payload) = match &plan.queued {
            Some(q) => (Some(q.port), q.payload.as_slice()),
            None => (None, &[][..]),
        };
        let frame = Frame {
            dev_addr: session.dev_addr,
            fcnt: plan.fcnt_down,
            ack: plan.ack,
            f_opts: &plan.f_opts,
            f_port,
            payload,
            ..Frame::default()
        };
        mac::build(&frame, &session.keys)
    }

    /// A planned queued downlink went out (`true`) or did not (`false`, it stays queued).
    pub fn sent(&mut self, device: usize, command: &CommandId, ok: bool) {
        self.sending[device] = false;
        let queue = &mut self.states[device].queue;
        if ok && queue.front().is_some_and(|q| &q.command == command) {
            queue.pop_front();
        }
    }

    /// Queue a setpoint for a device's next uplink.
    pub fn enqueue(
        &mut self,
        device: &DeviceId,
        command: CommandId,
        metric: &Metric,
        value: f64,
    ) -> Result<usize, QueueError> {
        let &i = self.index.by_id.get(device).ok_or_else(|| QueueError::UnknownDevice(device.to_string()))?;
        let config = &self.devices[i];
        let payload =
            config.codec.encode_setpoint(metric, value).map_err(|e| QueueError::Encode(e.to_string()))?;
        let port = config.command_port;
        self.push_queued(i, command, port, payload)
    }

    /// Queue an operator instruction for a device's next uplink (a machine's LoRaWAN
    /// terminal), encoded by [`codec::encode_instruction`] to fit the slowest data rate.
    pub fn enqueue_instruction(
        &mut self,
        device: &DeviceId,
        command: CommandId,
        task: fieldgate_proto::Task,
        target: Option<&DeviceId>,
    ) -> Result<usize, QueueError> {
        let &i = self.index.by_id.get(device).ok_or_else(|| QueueError::UnknownDevice(device.to_string()))?;
        let region = self.settings.region;
        let max = region.max_payload(region.rx2().1);
        let payload = codec::encode_instruction(task, target.map(DeviceId::as_str), max);
        self.push_queued(i, command, codec::INSTRUCTION_PORT, payload)
    }

    fn push_queued(
        &mut self,
        i: usize,
        command: CommandId,
        port: u8,
        payload: Vec<u8>,
    ) -> Result<usize, QueueError> {
        let device = &self.devices[i].device;
        let region = self.settings.region;
        let max = region.max_payload(region.rx2().1);
        if payload.len() > max {
            return Err(QueueError::TooLong { len: payload.len(), max });
        }
        let queue = &mut self.states[i].queue;
        if queue.len() >= QUEUE_LIMIT {
            return Err(QueueError::Full { device: device.to_string() });
        }
        queue.push_back(Queued { command, port, payload });
        Ok(queue.len())
    }
}

fn reading(device: &DeviceId, metric: Metric, value: f64, ts: Timestamp) -> Reading {
    Reading { device: device.clone(), metric, ts, value, quality: Quality::Good, source: Source::Lorawan }
}

/// Answers to the MAC commands of an uplink (FOpts, or FRMPayload on port 0): LinkCheckReq and
/// DeviceTimeReq are answered; the answers devices send to commands are read past.
fn mac_answers(commands: &[u8], best: &Rxpk, receivers: usize, received: Timestamp) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < commands.len() {
        let cid = commands[at];
        let len = match cid {
            0x02 | 0x04 | 0x08 | 0x09 | 0x0d => 0,
            0x03 | 0x05 | 0x07 | 0x0a => 1,
            0x06 => 2,
            _ => break, // unknown: the rest cannot be delimited
        };
        match cid {
            0x02 => {
                let sf = match &best.datr {
                    super::gwmp::DataRate::Lora(dr) => spreading_factor(dr).unwrap_or(12),
                    super::gwmp::DataRate::Fsk(_) => 12,
                };
                let margin = (best.lsnr.unwrap_or(0.0) - demodulation_floor(sf)).clamp(0.0, 254.0);
                out.extend_from_slice(&[0x02, margin as u8, receivers.min(255) as u8]);
            }
            0x0d => {
                let ns = received.as_nanos();
                let secs = ns.div_euclid(1_000_000_000) - GPS_EPOCH_UNIX + GPS_LEAP_SECONDS;
                let frac = (ns.rem_euclid(1_000_000_000) * 256 / 1_000_000_000) as u8;
                out.push(0x0d);
                out.extend_from_slice(&(secs as u32).to_le_bytes());
                out.push(frac);
            }
            _ => {}
        }
        at += 1 + len;
    }
    out.truncate(15);
    out
}

#[cfg(test)]
mod tests;
