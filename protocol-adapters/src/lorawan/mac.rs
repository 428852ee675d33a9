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
    verify_data(phy, keys, last_fcnt, true)
}

/// Verify and decrypt a data downlink as a device does (field-sim's devices, tests).
pub fn verify_downlink(phy: &[u8], keys: &SessionKeys, last_fcnt: Option<u32>) -> Result<Uplink, FrameError> {
    verify_data(phy, keys, last_fcnt, false)
}

fn verify_data(
    phy: &[u8],
    keys: &SessionKeys,
    last_fcnt: Option<u32>,
    uplink: bool,
) -> Result<Uplink, FrameError> {
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
    if data.is_uplink() != uplink {
        return Err(FrameError::NotDataUplink(if uplink { "data downlink" } else { "data uplink" }));
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

/// A data frame to build: the gateway's downlinks, and field-sim's uplinks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frame<'a> {
    pub dev_addr: u32,
    pub fcnt: u32,
    pub uplink: bool,
    pub confirmed: bool,
    /// Uplink: ADR enabled. Downlink: unused.
    pub adr: bool,
    /// Acknowledges the last confirmed frame of the other side.
    pub ack: bool,
    /// MAC commands in FOpts (at most 15 bytes, cleartext in 1.0.x).
    pub f_opts: &'a [u8],
    /// With `None` the frame carries no FRMPayload.
    pub f_port: Option<u8>,
    pub payload: &'a [u8],
}

/// The largest FRMPayload this module builds (the largest any region allows at any rate).
pub const MAX_PAYLOAD: usize = 222;

/// Build and encrypt a data frame, MIC included. The FRMPayload is encrypted with the AppSKey,
/// or with the NwkSKey on port 0.
pub fn build(frame: &Frame<'_>, keys: &SessionKeys) -> Result<Vec<u8>, FrameError> {
    if frame.f_opts.len() > 15 || frame.payload.len() > MAX_PAYLOAD {
        return Err(FrameError::Malformed(format!(
            "{} bytes of FOpts and {} of payload do not fit a frame (15 and {MAX_PAYLOAD} at most)",
            frame.f_opts.len(),
            frame.payload.len()
        )));
    }
    if frame.f_port.is_none() && !frame.payload.is_empty() {
        return Err(FrameError::Malformed("a payload needs a port".into()));
    }
    let mtype: u8 = match (frame.uplink, frame.confirmed) {
        (true, false) => 0x40,
        (false, false) => 0x60,
        (true, true) => 0x80,
        (false, true) => 0xa0,
    };
    let mut fctrl = (frame.f_opts.len() as u8) & 0x0f;
    if frame.adr {
        fctrl |= 0x80;
    }
    if frame.ack {
        fctrl |= 0x20;
    }
    let mut phy = Vec::with_capacity(13 + frame.f_opts.len() + frame.payload.len());
    phy.push(mtype);
    phy.extend_from_slice(&frame.dev_addr.to_le_bytes());
    phy.push(fctrl);
    phy.extend_from_slice(&(frame.fcnt as u16).to_le_bytes());
    phy.extend_from_slice(frame.f_opts);
    if let Some(port) = frame.f_port {
        phy.push(port);
        let key = if port == 0 { keys.nwk_s_key } else { keys.app_s_key };
        phy.extend(crypt(frame.payload, &key, frame.uplink, frame.dev_addr, frame.fcnt));
    }
    let mic = data_mic(&phy, &keys.nwk_s_key, frame.uplink, frame.dev_addr, frame.fcnt);
    phy.extend_from_slice(&mic);
    Ok(phy)
}

/// The FRMPayload cipher of LoRaWAN 1.0 (AES in counter mode over the `A_i` blocks); the same
/// operation encrypts and decrypts.
fn crypt(data: &[u8], key: &[u8; 16], uplink: bool, dev_addr: u32, fcnt: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    for (i, chunk) in data.chunks(16).enumerate() {
        let mut a = block(0x01, uplink, dev_addr, fcnt);
        a[15] = (i + 1) as u8;
        let keystream = aes_block(key, a);
        out.extend(chunk.iter().zip(keystream.iter()).map(|(d, k)| d ^ k));
    }
    out
}

/// The `A_i` / `B_0` block both the cipher and the MIC start from.
fn block(first: u8, uplink: bool, dev_addr: u32, fcnt: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0] = first;
    b[5] = u8::from(!uplink);
    b[6..10].copy_from_slice(&dev_addr.to_le_bytes());
    b[10..14].copy_from_slice(&fcnt.to_le_bytes());
    b
}

/// The MIC of a data frame: the first 4 bytes of AES-CMAC over `B_0 | msg`.
fn data_mic(msg: &[u8], nwk_s_key: &[u8; 16], uplink: bool, dev_addr: u32, fcnt: u32) -> [u8; 4] {
    let mut b0 = block(0x49, uplink, dev_addr, fcnt);
    b0[15] = msg.len() as u8;
    let tag = aes_cmac(nwk_s_key, &[&b0, msg]);
    [tag[0], tag[1], tag[2], tag[3]]
}

/// AES-CMAC (RFC 4493) over the concatenation of `parts`.
fn aes_cmac(key: &[u8; 16], parts: &[&[u8]]) -> [u8; 16] {
    use cmac::Mac;
    let mut mac = <cmac::Cmac<aes::Aes128> as cmac::digest::KeyInit>::new(key.into());
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// One AES-128 block encryption, the keystream step of [`crypt`].
fn aes_block(key: &[u8; 16], input: [u8; 16]) -> [u8; 16] {
    use aes::cipher::{BlockEncrypt, KeyInit};
    let mut block = aes::Block::from(input);
    aes::Aes128::new(key.into()).encrypt_block(&mut block);
    block.into()
}

/// The message type of a PHYPayload, for logs, if it has one.
pub fn message_type(phy: &[u8]) -> Option<MType> {
    phy.first().map(|b| lorawan::parser::MHDR::new(*b).mtype())
}

#[cfg(test)]
mod tests;
