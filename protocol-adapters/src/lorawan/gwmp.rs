//! The Semtech UDP packet forwarder protocol (GWMP), versions 1 and 2, as pure functions over
//! datagrams: what a concentrator sends ([`decode`]) and what the gateway answers
//! ([`push_ack`], [`pull_ack`], [`pull_resp`]).
//!
//! Every datagram starts `version u8 | token u16 | identifier u8`; the upstream ones then carry
//! the concentrator's EUI (8 bytes), and PUSH_DATA and TX_ACK a JSON object. The protocol has no
//! authentication and nothing in it is retried: a lost PUSH_ACK only shows in the forwarder's
//! statistics. A concentrator is known by its EUI, not by the address a datagram came from.
//!
//! Bad input never panics and costs only itself: a datagram that cannot be read is one
//! [`GwmpError`] (with a short [`GwmpError::reason`] for metrics), and within a PUSH_DATA one
//! unreadable `rxpk` entry is an error in its slot while the others are kept.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use std::fmt;

/// `PUSH_DATA`: received packets and statistics, upstream.
pub const PUSH_DATA: u8 = 0x00;
/// `PUSH_ACK`: the server's answer to a PUSH_DATA, same token.
pub const PUSH_ACK: u8 = 0x01;
/// `PULL_DATA`: the concentrator's keep-alive, opening the downlink path through NATs.
pub const PULL_DATA: u8 = 0x02;
/// `PULL_RESP`: a packet to transmit, downstream.
pub const PULL_RESP: u8 = 0x03;
/// `PULL_ACK`: the server's answer to a PULL_DATA, same token.
pub const PULL_ACK: u8 = 0x04;
/// `TX_ACK`: the concentrator's answer to a PULL_RESP (version 2), same token.
pub const TX_ACK: u8 = 0x05;

/// A concentrator's (or a device's) 64-bit EUI, shown as 16 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Eui64(pub [u8; 8]);

impl fmt::Display for Eui64 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Eui64 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Eui64({self})")
    }
}

/// A datagram a concentrator sends.
#[derive(Debug, Clone, PartialEq)]
pub enum Upstream {
    PushData {
        version: u8,
        token: u16,
        gateway: Eui64,
        data: PushData,
    },
    PullData {
        version: u8,
        token: u16,
        gateway: Eui64,
    },
    /// The outcome of a PULL_RESP: `error` is `None` for success (`"NONE"`, or the empty ack
    /// of version 1 forwarders that send one), else the forwarder's reason (`TOO_LATE`, ...).
    TxAck {
        version: u8,
        token: u16,
        gateway: Eui64,
        error: Option<String>,
    },
}

impl Upstream {
    pub fn gateway(&self) -> Eui64 {
        match self {
            Upstream::PushData { gateway, .. }
            | Upstream::PullData { gateway, .. }
            | Upstream::TxAck { gateway, .. } => *gateway,
        }
    }
}

/// The JSON of a PUSH_DATA: each `rxpk` entry decoded on its own.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PushData {
    pub rxpk: Vec<Result<Rxpk, GwmpError>>,
    pub stat: Option<Stat>,
}

/// The data rate of a packet: a LoRa spreading factor and bandwidth (`"SF7BW125"`), or the bit
/// rate of an FSK packet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DataRate {
    Lora(String),
    Fsk(u32),
}

/// One received packet (`rxpk`). Fields the gateway does not use are not kept.
#[derive(Debug, Clone, PartialEq)]
pub struct Rxpk {
    /// The concentrator's microsecond counter at reception: the reference for class A
    /// downlink timing (RX1 is `tmst` + 1 s).
    pub tmst: u32,
    /// UTC time of reception, if the concentrator has GPS time.
    pub time: Option<String>,
    /// Frequency in MHz.
    pub freq: f64,
    pub chan: Option<u8>,
    pub rfch: Option<u8>,
    /// CRC status: 1 good, -1 bad, 0 none.
    pub stat: i8,
    pub modu: String,
    pub datr: DataRate,
    pub codr: Option<String>,
    /// Signal strength in dBm.
    pub rssi: i32,
    /// LoRa signal-to-noise ratio in dB.
    pub lsnr: Option<f64>,
    /// The PHYPayload.
    pub data: Vec<u8>,
}

/// The concentrator's statistics (`stat`), every field optional as forwarders differ.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Stat {
    pub time: Option<String>,
    /// Packets received, with a good CRC, forwarded.
    pub rxnb: Option<u32>,
    pub rxok: Option<u32>,
    pub rxfw: Option<u32>,
    /// Share of upstream datagrams acknowledged, in percent.
    pub ackr: Option<f64>,
    /// Downlinks received, emitted.
    pub dwnb: Option<u32>,
    pub txnb: Option<u32>,
}

/// A packet to transmit (`txpk` of a PULL_RESP).
#[derive(Debug, Clone, PartialEq)]
pub struct Txpk {
    /// Send at once, ignoring `tmst` (class C).
    pub imme: bool,
    /// Send when the concentrator's counter reads this (class A: uplink `tmst` + 1 or 2 s).
    pub tmst: Option<u32>,
    pub freq: f64,
    pub rfch: u8,
    /// Power in dBm.
    pub powe: u8,
    pub datr: DataRate,
    pub codr: String,
    /// Inverted polarity: true for downlinks to devices.
    pub ipol: bool,
    pub data: Vec<u8>,
}

/// Why a datagram (or one `rxpk` of it) could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GwmpError {
    #[error("datagram of {len} bytes is too short for a {what}")]
    TooShort { what: &'static str, len: usize },
    #[error("protocol version {0} is not supported (1 and 2 are)")]
    UnsupportedVersion(u8),
    #[error("identifier {0:#04x} is not one a concentrator sends")]
    UnexpectedIdentifier(u8),
    #[error("the JSON does not read: {0}")]
    Json(String),
    #[error("rxpk `data` is not base64: {0}")]
    Base64(String),
    #[error("rxpk `size` is {size} but `data` holds {actual} bytes")]
    SizeMismatch { size: usize, actual: usize },
}

impl GwmpError {
    /// A short label for metrics (`fieldgate_inputs_rejected_total{reason}`).
    pub fn reason(&self) -> &'static str {
        match self {
            GwmpError::TooShort { .. } => "truncated",
            GwmpError::UnsupportedVersion(_) => "unsupported_version",
            GwmpError::UnexpectedIdentifier(_) => "unexpected_identifier",
            GwmpError::Json(_) => "bad_json",
            GwmpError::Base64(_) => "bad_base64",
            GwmpError::SizeMismatch { .. } => "size_mismatch",
        }
    }
}

/// The JSON shapes as forwarders write them.
#[derive(Deserialize)]
struct RawPush {
    #[serde(default)]
    rxpk: Vec<serde_json::Value>,
    stat: Option<Stat>,
}

#[derive(Deserialize)]
struct RawRxpk {
    tmst: u32,
    time: Option<String>,
    freq: f64,
    chan: Option<u8>,
    rfch: Option<u8>,
    #[serde(default = "crc_ok")]
    stat: i8,
    modu: String,
    datr: DataRate,
    codr: Option<String>,
    rssi: i32,
    lsnr: Option<f64>,
    size: Option<usize>,
    data: String,
}

fn crc_ok() -> i8 {
    1
}

#[derive(Deserialize)]
struct RawTxAck {
    txpk_ack: Option<RawTxAckBody>,
}

#[derive(Deserialize)]
struct RawTxAckBody {
    error: Option<String>,
}

#[derive(Serialize)]
struct RawPullResp<'a> {
    txpk: RawTxpk<'a>,
}

#[derive(Serialize)]
struct RawTxpk<'a> {
    imme: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    tmst: Option<u32>,
    freq: f64,
    rfch: u8,
    powe: u8,
    modu: &'static str,
    datr: &'a DataRate,
    #[serde(skip_serializing_if = "Option::is_none")]
    codr: Option<&'a str>,
    ipol: bool,
    size: usize,
    data: String,
}

fn header(datagram: &[u8], what: &'static str, len: usize) -> Result<(u8, u16, u8), GwmpError> {
    if datagram.len() < len {
        return Err(GwmpError::TooShort { what, len: datagram.len() });
    }
    let version = datagram[0];
    if !(1..=2).contains(&version) {
        return Err(GwmpError::UnsupportedVersion(version));
    }
    Ok((version, u16::from_be_bytes([datagram[1], datagram[2]]), datagram[3]))
}

fn eui(bytes: &[u8]) -> Eui64 {
    let mut e = [0u8; 8];
    e.copy_from_slice(&bytes[..8]);
    Eui64(e)
}

/// Read a datagram a concentrator sent.
pub fn decode(datagram: &[u8]) -> Result<Upstream, GwmpError> {
    let (version, token, ident) = header(datagram, "header", 4)?;
    match ident {
        PUSH_DATA => {
            header(datagram, "PUSH_DATA", 12)?;
            let raw: RawPush =
                serde_json::from_slice(&datagram[12..]).map_err(|e| GwmpError::Json(e.to_string()))?;
            let rxpk = raw.rxpk.into_iter().map(rxpk).collect();
            Ok(Upstream::PushData {
                version,
                token,
                gateway: eui(&datagram[4..]),
                data: PushData { rxpk, stat: raw.stat },
            })
        }
        PULL_DATA => {
            header(datagram, "PULL_DATA", 12)?;
            Ok(Upstream::PullData { version, token, gateway: eui(&datagram[4..]) })
        }
        TX_ACK => {
            header(datagram, "TX_ACK", 12)?;
            let body = &datagram[12..];
            // Version 1 forwarders send no JSON; some pad with a NUL or whitespace.
            let error = if body.iter().all(|b| *b == 0 || b.is_ascii_whitespace()) {
                None
            } else {
                let raw: RawTxAck =
                    serde_json::from_slice(body).map_err(|e| GwmpError::Json(e.to_string()))?;
                raw.txpk_ack.and_then(|a| a.error).filter(|e| e != "NONE")
            };
            Ok(Upstream::TxAck { version, token, gateway: eui(&datagram[4..]), error })
        }
        other => Err(GwmpError::UnexpectedIdentifier(other)),
    }
}

fn rxpk(value: serde_json::Value) -> Result<Rxpk, GwmpError> {
    let raw: RawRxpk = serde_json::from_value(value).map_err(|e| GwmpError::Json(e.to_string()))?;
    let data = BASE64.decode(raw.data.as_bytes()).map_err(|e| GwmpError::Base64(e.to_string()))?;
    if let Some(size) = raw.size
        && size != data.len()
    {
        return Err(GwmpError::SizeMismatch { size, actual: data.len() });
    }
    Ok(Rxpk {
        tmst: raw.tmst,
        time: raw.time,
        freq: raw.freq,
        chan: raw.chan,
        rfch: raw.rfch,
        stat: raw.stat,
        modu: raw.modu,
        datr: raw.datr,
        codr: raw.codr,
        rssi: raw.rssi,
        lsnr: raw.lsnr,
        data,
    })
}

fn ack(version: u8, token: u16, ident: u8) -> [u8; 4] {
    let t = token.to_be_bytes();
    [version, t[0], t[1], ident]
}

/// The answer to a PUSH_DATA.
pub fn push_ack(version: u8, token: u16) -> [u8; 4] {
    ack(version, token, PUSH_ACK)
}

/// The answer to a PULL_DATA.
pub fn pull_ack(version: u8, token: u16) -> [u8; 4] {
    ack(version, token, PULL_ACK)
}

/// A PULL_RESP carrying `txpk`. Version 2 forwarders echo `token` in their TX_ACK; version 1
/// ones ignore it.
pub fn pull_resp(version: u8, token: u16, txpk: &Txpk) -> Vec<u8> {
    let modu = match txpk.datr {
        DataRate::Lora(_) => "LORA",
        DataRate::Fsk(_) => "FSK",
    };
    let raw = RawPullResp {
        txpk: RawTxpk {
            imme: txpk.imme,
            tmst: if txpk.imme { None } else { txpk.tmst },
            freq: txpk.freq,
            rfch: txpk.rfch,
            powe: txpk.powe,
            modu,
            datr: &txpk.datr,
            codr: matches!(txpk.datr, DataRate::Lora(_)).then_some(txpk.codr.as_str()),
            ipol: txpk.ipol,
            size: txpk.data.len(),
            data: BASE64.encode(&txpk.data),
        },
    };
    let mut out = ack(version, token, PULL_RESP).to_vec();
    serde_json::to_writer(&mut out, &raw).expect("a txpk serializes");
    out
}

#[cfg(test)]
mod tests;

// The concentrator's side, for field-sim's packet forwarder and for tests: what a forwarder
// sends, and reading what the server sends it.

/// A datagram the server sends a concentrator.
#[derive(Debug, Clone, PartialEq)]
pub enum Downstream {
    PushAck { version: u8, token: u16 },
    PullAck { version: u8, token: u16 },
    PullResp { version: u8, token: u16, txpk: Txpk },
}

#[derive(Deserialize)]
struct RawPullRespIn {
    txpk: RawTxpkIn,
}

#[derive(Deserialize)]
struct RawTxpkIn {
    #[serde(default)]
    imme: bool,
    tmst: Option<u32>,
    freq: f64,
    #[serde(default)]
    rfch: u8,
    #[serde(default)]
    powe: u8,
    datr: DataRate,
    #[serde(default)]
    codr: String,
    #[serde(default)]
    ipol: bool,
    data: String,
}

/// Read a datagram the server sent.
pub fn decode_downstream(datagram: &[u8]) -> Result<Downstream, GwmpError> {
    let (version, token, ident) = header(datagram, "header", 4)?;
    match ident {
        PUSH_ACK => Ok(Downstream::PushAck { version, token }),
        PULL_ACK => Ok(Downstream::PullAck { version, token }),
        PULL_RESP => {
            let raw: RawPullRespIn =
                serde_json::from_slice(&datagram[4..]).map_err(|e| GwmpError::Json(e.to_string()))?;
            let t = raw.txpk;
            let data = BASE64.decode(t.data.as_bytes()).map_err(|e| GwmpError::Base64(e.to_string()))?;
            let txpk = Txpk {
                imme: t.imme,
                tmst: t.tmst,
                freq: t.freq,
                rfch: t.rfch,
                powe: t.powe,
                datr: t.datr,
                codr: t.codr,
                ipol: t.ipol,
                data,
            };
            Ok(Downstream::PullResp { version, token, txpk })
        }
        other => Err(GwmpError::UnexpectedIdentifier(other)),
    }
}

fn upstream(version: u8, token: u16, ident: u8, gateway: Eui64) -> Vec<u8> {
    let mut out = ack(version, token, ident).to_vec();
    out.extend_from_slice(&gateway.0);
    out
}

/// A PUSH_DATA carrying `packets` (CRC good, LoRa).
pub fn push_data(version: u8, token: u16, gateway: Eui64, packets: &[Rxpk]) -> Vec<u8> {
    let rxpk: Vec<serde_json::Value> = packets
        .iter()
        .map(|p| {
            let mut packet = serde_json::json!({
                "tmst": p.tmst, "freq": p.freq, "chan": p.chan.unwrap_or(0), "rfch": p.rfch.unwrap_or(0),
                "stat": p.stat, "modu": p.modu, "datr": p.datr, "codr": p.codr.as_deref().unwrap_or("4/5"),
                "rssi": p.rssi, "lsnr": p.lsnr.unwrap_or(0.0), "size": p.data.len(), "data": BASE64.encode(&p.data),
            });
            if let Some(time) = &p.time {
                packet["time"] = time.as_str().into();
            }
            packet
        })
        .collect();
    let mut out = upstream(version, token, PUSH_DATA, gateway);
    serde_json::to_writer(&mut out, &serde_json::json!({ "rxpk": rxpk })).expect("JSON serializes");
    out
}

/// A PULL_DATA (the forwarder's keep-alive).
pub fn pull_data(version: u8, token: u16, gateway: Eui64) -> Vec<u8> {
    upstream(version, token, PULL_DATA, gateway)
}

/// A TX_ACK for the PULL_RESP with `token`: `error` `None` for sent.
pub fn tx_ack(version: u8, token: u16, gateway: Eui64, error: Option<&str>) -> Vec<u8> {
    let mut out = upstream(version, token, TX_ACK, gateway);
    let body = serde_json::json!({ "txpk_ack": { "error": error.unwrap_or("NONE") } });
    serde_json::to_writer(&mut out, &body).expect("JSON serializes");
    out
}

/// A PUSH_DATA carrying only the concentrator's statistics.
pub fn push_stat(version: u8, token: u16, gateway: Eui64, stat: &Stat) -> Vec<u8> {
    let mut out = upstream(version, token, PUSH_DATA, gateway);
    serde_json::to_writer(&mut out, &serde_json::json!({ "stat": stat })).expect("JSON serializes");
    out
}
