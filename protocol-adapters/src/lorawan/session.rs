//! The site's LoRaWAN devices and what must survive a restart about them: each device's
//! session (address, keys, frame counters), the DevNonces it has joined with, the last
//! JoinNonce given to it, and the downlinks queued for it.
//!
//! Saved as one file, replaced atomically by the caller. The file carries a CRC of its body:
//! a damaged file is refused with [`StateError`], never half-read, because trusting a damaged
//! counter would reopen a replay window (or close a device out).

use super::codec::Codec;
use super::gwmp::Eui64;
use super::mac::SessionKeys;
use fieldgate_proto::{CommandId, DeviceId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

/// How a device gets its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Activation {
    /// Over the air: the device joins with its AppKey; `join_eui`, when given, must match.
    Otaa { join_eui: Option<Eui64>, app_key: [u8; 16] },
    /// By personalisation: address and keys are fixed in the device and the config.
    Abp { dev_addr: u32, keys: SessionKeys },
}

/// One configured device.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    pub device: DeviceId,
    pub dev_eui: Eui64,
    pub activation: Activation,
    pub codec: Arc<Codec>,
    /// The port setpoint commands are sent on.
    pub command_port: u8,
}

/// A device's current session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub dev_addr: u32,
    pub keys: SessionKeys,
    /// The last uplink counter accepted; `None` before the first uplink.
    pub fcnt_up: Option<u32>,
    /// Whether the readings of uplink `fcnt_up` are durable (a retransmission of it is then
    /// answered but not stored again).
    pub stored: bool,
    /// The next downlink counter to use.
    pub fcnt_down: u32,
}

/// A downlink waiting for the device's next uplink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    pub command: CommandId,
    pub port: u8,
    pub payload: Vec<u8>,
}

/// What is kept per device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceState {
    pub session: Option<Session>,
    pub dev_nonces: BTreeSet<u16>,
    /// The last JoinNonce sent (they only go up).
    pub join_nonce: u32,
    pub queue: VecDeque<Queued>,
}

/// Why a saved state file was not used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("the file does not start with a fieldgate LoRaWAN state header")]
    NoHeader,
    #[error("the file's checksum does not match its content (damaged or edited)")]
    Checksum,
    #[error("the content does not read: {0}")]
    Content(String),
}

const HEADER: &str = "fieldgate-lorawan-state v1 crc32=";

/// The on-disk shape, keyed by DevEUI.
#[derive(Serialize, Deserialize)]
struct Saved {
    devices: BTreeMap<String, SavedDevice>,
}

#[derive(Serialize, Deserialize)]
struct SavedDevice {
    #[serde(skip_serializing_if = "Option::is_none")]
    session: Option<SavedSession>,
    #[serde(default)]
    dev_nonces: Vec<u16>,
    #[serde(default)]
    join_nonce: u32,
    #[serde(default)]
    queue: Vec<SavedQueued>,
}

#[derive(Serialize, Deserialize)]
struct SavedSession {
    dev_addr: u32,
    nwk_s_key: String,
    app_s_key: String,
    fcnt_up: Option<u32>,
    stored: bool,
    fcnt_down: u32,
}

#[derive(Serialize, Deserialize)]
struct SavedQueued {
    command: String,
    port: u8,
    payload: String,
}

/// Lowercase hex digits of `bytes` (by table: the sessions file is written often).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// Bytes from hex digits (`:` and `-` separators allowed).
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    let digits: Vec<u8> = s.bytes().filter(|b| *b != b':' && *b != b'-').collect();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    digits.chunks(2).map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok()).collect()
}

fn key(s: &str) -> Result<[u8; 16], StateError> {
    unhex(s).and_then(|b| b.try_into().ok()).ok_or_else(|| StateError::Content(format!("`{s}` is not a key")))
}

/// Serialize the states of `devices` (in config order) for saving.
pub fn encode(devices: &[DeviceConfig], states: &[DeviceState]) -> Vec<u8> {
    let saved = Saved {
        devices: devices
            .iter()
            .zip(states)
            .map(|(d, s)| {
                let session = s.session.as_ref().map(|s| SavedSession {
                    dev_addr: s.dev_addr,
                    nwk_s_key: hex(&s.keys.nwk_s_key),
                    app_s_key: hex(&s.keys.app_s_key),
                    fcnt_up: s.fcnt_up,
                    stored: s.stored,
                    fcnt_down: s.fcnt_down,
                });
                let queue = s
                    .queue
                    .iter()
                    .map(|q| SavedQueued {
                        command: q.command.to_string(),
                        port: q.port,
                        payload: hex(&q.payload),
                    })
                    .collect();
                let dev = SavedDevice {
                    session,
                    dev_nonces: s.dev_nonces.iter().copied().collect(),
                    join_nonce: s.join_nonce,
                    queue,
                };
                (hex(&d.dev_eui.0), dev)
            })
            .collect(),
    };
    let body = serde_json::to_vec(&saved).expect("state serializes");
    let mut out = format!("{HEADER}{:08x}\n", crc32fast::hash(&body)).into_bytes();
    out.extend_from_slice(&body);
    out
}

/// Read a saved file into states for `devices` (in config order). Devices no longer configured
/// are dropped; new ones start empty. An ABP device keeps its saved counters only while its
/// address is the configured one.
pub fn decode(bytes: &[u8], devices: &[DeviceConfig]) -> Result<Vec<DeviceState>, StateError> {
    let newline = bytes.iter().position(|b| *b == b'\n').ok_or(StateError::NoHeader)?;
    let header = std::str::from_utf8(&bytes[..newline]).map_err(|_| StateError::NoHeader)?;
    let crc = header
        .strip_prefix(HEADER)
        .and_then(|c| u32::from_str_radix(c, 16).ok())
        .ok_or(StateError::NoHeader)?;
    let body = &bytes[newline + 1..];
    if crc32fast::hash(body) != crc {
        return Err(StateError::Checksum);
    }
    let mut saved: Saved = serde_json::from_slice(body).map_err(|e| StateError::Content(e.to_string()))?;
    devices
        .iter()
        .map(|d| {
            let Some(s) = saved.devices.remove(&d.dev_eui.to_string()) else {
                return Ok(DeviceState::default());
            };
            let session = match s.session {
                Some(s) => Some(Session {
                    dev_addr: s.dev_addr,
                    keys: SessionKeys { nwk_s_key: key(&s.nwk_s_key)?, app_s_key: key(&s.app_s_key)? },
                    fcnt_up: s.fcnt_up,
                    stored: s.stored,
                    fcnt_down: s.fcnt_down,
                }),
                None => None,
            };
            let session = match (&d.activation, session) {
                // Reconfigured ABP keys or address: the counters belong to the old ones.
                (Activation::Abp { dev_addr, keys }, Some(s))
                    if s.dev_addr != *dev_addr || s.keys != *keys =>
                {
                    None
                }
                (_, s) => s,
            };
            let queue = s
                .queue
                .into_iter()
                .map(|q| {
                    Ok(Queued {
                        command: CommandId::new(q.command),
                        port: q.port,
                        payload: unhex(&q.payload)
                            .ok_or_else(|| StateError::Content("bad queued payload".into()))?,
                    })
                })
                .collect::<Result<_, StateError>>()?;
            Ok(DeviceState {
                session,
                dev_nonces: s.dev_nonces.into_iter().collect(),
                join_nonce: s.join_nonce,
                queue,
            })
        })
        .collect()
}

/// Lookups into the configured devices.
#[derive(Debug, Default)]
pub struct Index {
    pub by_eui: HashMap<Eui64, usize>,
    pub by_id: HashMap<DeviceId, usize>,
    /// Devices by the address of their current session (ABP devices always have one). Two
    /// devices may share an address; the MIC tells them apart.
    pub by_addr: HashMap<u32, Vec<usize>>,
}

impl Index {
    pub fn new(devices: &[DeviceConfig], states: &[DeviceState]) -> Self {
        let mut index = Index::default();
        for (i, (d, s)) in devices.iter().zip(states).enumerate() {
            index.by_eui.insert(d.dev_eui, i);
            index.by_id.insert(d.device.clone(), i);
            if let Some(s) = &s.session {
                index.by_addr.entry(s.dev_addr).or_default().push(i);
            }
        }
        index
    }

    pub fn readdress(&mut self, device: usize, old: Option<u32>, new: u32) {
        if let Some(old) = old
            && let Some(list) = self.by_addr.get_mut(&old)
        {
            list.retain(|d| *d != device);
            if list.is_empty() {
                self.by_addr.remove(&old);
            }
        }
        self.by_addr.entry(new).or_default().push(device);
    }
}
