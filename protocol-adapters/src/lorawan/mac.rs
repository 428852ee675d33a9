//! LoRaWAN 1.0.x data uplinks: frame counter reconstruction, MIC verification and FRMPayload
//! decryption, on top of the `lorawan` crate's parser.
//!
//! Order matters, and the crate leaves it to the caller: its `decrypt` does not check the MIC,
//! and it widens the 16 bits of FCnt on air by keeping the upper half of the last counter,
//! which is wrong at every 65,536-frame rollover. So [`verify_uplink`] first reconstructs the
//! full 32-bit counter from the last accepted one ([`full_fcnt`]), verifies the MIC with it
//! (the MIC covers the full counter, so a forged rollover fails here), and only then decrypts.
//! A frame whose counter is not ahead of the last accepted one is a replay and is refused
//! before any crypto; the caller stores the new counter once the readings are durable.

use lorawan::keys::AES128;
use lorawan::parser::{DataHeader, DataPayload, FRMPayload, MType, PhyPayload};

/// How far ahead of the last accepted counter a frame may be (LoRaWAN 1.0 `MAX_FCNT_GAP`):
/// further than that, the 16 bits on air no longer say which rollover the device is in.
pub const MAX_FCNT_GAP: u32 = 16_384;

/// A device's session keys (ABP, or derived by an OTAA join).
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKeys {
    pub nwk_s_key: [u8; 16],
    pub app_s_key: [u8; 16],
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKeys { .. }") // never in logs
    }
}

/// A verified, decrypted data uplink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uplink {
    pub dev_addr: u32,
    /// The full 32-bit frame counter.
    pub fcnt: u32,
    pub confirmed: bool,
    pub adr: bool,
    /// The device acknowledges the last confirmed downlink.
    pub ack: bool,
    /// MAC commands piggybacked in FOpts (cleartext in 1.0.x).
    pub f_opts: Vec<u8>,
    /// `None` when the frame carries no FRMPayload.
    pub f_port: Option<u8>,
    /// The decrypted FRMPayload: application data, or MAC commands on port 0.
    pub payload: Vec<u8>,
}

/// Why a frame was refused. [`FrameError::reason`] labels the metric.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("not a LoRaWAN frame: {0}")]
    Malformed(String),
    #[error("a {0} is not a data uplink")]
    NotDataUplink(&'static str),
    #[error("frame counter {got} replays or repeats the last accepted one, {last}")]
    Replayed { last: u32, got: u32 },
    #[error("frame counter {got} is {gap} ahead of the last accepted one, {last}: more than {MAX_FCNT_GAP}")]
    TooFarAhead { last: u32, got: u32, gap: u32 },
    #[error("the MIC does not match (wrong keys, or a forged or damaged frame)")]
    BadMic,
}

impl FrameError {
    pub fn reason(&self) -> &'static str {
        match self {
            FrameError::Malformed(_) => "malformed",
            FrameError::NotDataUplink(_) => "not_data_uplink",
            FrameError::Replayed { .. } => "replayed",
            FrameError::TooFarAhead { .. } => "fcnt_gap",
            FrameError::BadMic => "bad_mic",
        }
    }
}

/// The full counter of a frame whose lower 16 bits are `low`, given the last accepted counter
/// (`None` for a fresh session). Equal to or behind the last one is a replay.
pub fn full_fcnt(last: Option<u32>, low: u16) -> Result<u32, FrameError> {
    let Some(last) = last else { return Ok(u32::from(low)) };
    let same_epoch = (last & 0xffff_0000) | u32::from(low);
    let got = if same_epoch > last {
        same_epoch
    } else {
        // Behind within this epoch: either the next epoch or an old frame.
        match same_epoch.checked_add(0x1_0000) {
            Some(next) if next - last <= MAX_FCNT_GAP => next,
            _ => return Err(FrameError::Replayed { last, got: same_epoch }),
        }
    };
    let gap = got - last;
    if gap > MAX_FCNT_GAP {
        return Err(FrameError::TooFarAhead { last, got, gap });
    }
    Ok(got)
}

/// The DevAddr and the 16-bit FCnt of a data frame, to find its session before any crypto.
pub fn peek(phy: &[u8]) -> Result<(u32, u16), FrameError> {
    let mut bytes = phy.to_vec();
    match lorawan::parser::parse(bytes.as_mut_slice()) {
        Ok(PhyPayload::Data(DataPayload::Encrypted(data))) if data.is_uplink() => {
            Ok((u32::from_le_bytes([phy[1], phy[2], phy[3], phy[4]]), data.fhdr().fcnt()))
        }
        Ok(PhyPayload::Data(_)) => Err(FrameError::NotDataUplink("data downlink")),
        Ok(PhyPayload::JoinRequest(_)) => Err(FrameError::NotDataUplink("join request")),
        Ok(PhyPayload::JoinAccept(_)) => Err(FrameError::NotDataUplink("join accept")),
        Err(e) => Err(FrameError::Malformed(format!("{e:?}"))),
    }
}

/// Verify and decrypt a data uplink of the session with `keys` whose last accepted counter is
/// `last_fcnt`.
pub fn verify_uplink(phy: &[u8], keys: &SessionKeys, last_fcnt: Option<u32>) -> Result<Uplink, FrameError> {
    let mut bytes = phy.to_vec();
    let data = match lorawan::parser::parse(bytes.as_mut_slice()) {
        Ok(PhyPayload::Data(DataPayload::Encrypted(data))) => data,
        Ok(PhyPayload::Data(DataPayload::Decrypted(_))) => {
            return Err(FrameError::Malformed("unexpectedly decrypted".into()));
        }
        Ok(PhyPayload::JoinRequest(_)) => return Err(FrameError::NotDataUplink("join request")),
        Ok(PhyPayload::JoinAccept(_)) => return Err(FrameError::NotDataUplink("join accept")),
        Err(e) => return Err(FrameError::Malformed(format!("{e:?}"))),
    };
    if !data.is_uplink() {
        return Err(FrameError::NotDataUplink("data downlink"));
    }
    let fhdr = data.fhdr();
    let fcnt = full_fcnt(last_fcnt, fhdr.fcnt())?;
    let nwk = AES128(keys.nwk_s_key);
    if !data.validate_mic(&nwk, fcnt) {
        return Err(FrameError::BadMic);
    }
    let (adr, ack) = (fhdr.fctrl().adr(), fhdr.fctrl().ack());
    let f_opts_len = usize::from(fhdr.fctrl().f_opts_len());
    let f_opts = phy[8..8 + f_opts_len].to_vec();
    let confirmed = data.is_confirmed();
    let f_port = data.f_port();
    let app = AES128(keys.app_s_key);
    let decrypted =
        data.decrypt(Some(&nwk), Some(&app), fcnt).map_err(|e| FrameError::Malformed(format!("{e:?}")))?;
    let payload = match decrypted.frm_payload() {
        FRMPayload::Data(d) => d.to_vec(),
        FRMPayload::MACCommands(cmds) => cmds.data().to_vec(),
        _ => Vec::new(),
    };
    Ok(Uplink {
        dev_addr: u32::from_le_bytes([phy[1], phy[2], phy[3], phy[4]]),
        fcnt,
        confirmed,
        adr,
        ack,
        f_opts,
        f_port,
        payload,
    })
}

/// The message type of a PHYPayload, for logs, if it has one.
pub fn message_type(phy: &[u8]) -> Option<MType> {
    phy.first().map(|b| lorawan::parser::MHDR::new(*b).mtype())
}

#[cfg(test)]
mod tests;
