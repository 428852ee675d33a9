//! LoRaWAN 1.0.x over-the-air activation: the JoinRequest a device sends, checked with its
//! AppKey, and the JoinAccept the network server answers with, from which both sides derive
//! the session keys.
//!
//! Replay protection is the caller's (the session table's): a DevNonce a device has used
//! before is refused, since a replayed JoinRequest would otherwise make the server issue a
//! new session and drop the device's real one.

use super::gwmp::Eui64;
use super::mac::{FrameError, SessionKeys};
use lorawan::default_crypto::DefaultFactory;
use lorawan::keys::{AES128, AppKey};
use lorawan::parser::{DevNonce, EncryptedJoinAcceptPayload, PhyPayload};

/// A JoinRequest whose MIC has not been checked yet: enough to find the device's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinRequest {
    pub join_eui: Eui64,
    pub dev_eui: Eui64,
    pub dev_nonce: u16,
}

/// The wire order of EUIs is little-endian; people write them big-endian.
fn eui_from_wire(wire: &[u8]) -> Eui64 {
    let mut e = [0u8; 8];
    for (i, b) in wire.iter().rev().enumerate().take(8) {
        e[i] = *b;
    }
    Eui64(e)
}

/// Read a JoinRequest's identifiers, before any crypto.
pub fn peek_join(phy: &[u8]) -> Result<JoinRequest, FrameError> {
    let mut bytes = phy.to_vec();
    match lorawan::parser::parse(bytes.as_mut_slice()) {
        Ok(PhyPayload::JoinRequest(jr)) => Ok(JoinRequest {
            join_eui: eui_from_wire(jr.app_eui().as_ref()),
            dev_eui: eui_from_wire(jr.dev_eui().as_ref()),
            dev_nonce: u16::from_le_bytes([phy[17], phy[18]]),
        }),
        Ok(_) => Err(FrameError::NotDataUplink("frame that is not a join request")),
        Err(e) => Err(FrameError::Malformed(format!("{e:?}"))),
    }
}

/// Check a JoinRequest's MIC with the device's AppKey.
pub fn verify_join(phy: &[u8], app_key: &[u8; 16]) -> Result<JoinRequest, FrameError> {
    let request = peek_join(phy)?;
    let mut bytes = phy.to_vec();
    match lorawan::parser::parse(bytes.as_mut_slice()) {
        Ok(PhyPayload::JoinRequest(jr)) if jr.validate_mic(&AES128(*app_key)) => Ok(request),
        _ => Err(FrameError::BadMic),
    }
}

/// What the network server puts in a JoinAccept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptParams {
    /// JoinNonce (AppNonce in 1.0.2): 24 bits, never repeated for a device.
    pub join_nonce: u32,
    /// The network's 24-bit NetID.
    pub net_id: u32,
    pub dev_addr: u32,
    /// RX1 data rate offset (bits 6..4) and RX2 data rate (bits 3..0).
    pub dl_settings: u8,
    /// Seconds from the end of an uplink to RX1 (0 means 1).
    pub rx_delay: u8,
}

/// Build the encrypted JoinAccept for `request` and derive the session it opens.
pub fn accept(
    request: &JoinRequest,
    app_key: &[u8; 16],
    params: &AcceptParams,
) -> Result<(Vec<u8>, SessionKeys), FrameError> {
    let key = AES128(*app_key);
    let mut creator = lorawan::creator::JoinAcceptCreator::new();
    let nonce = params.join_nonce.to_le_bytes();
    let net_id = params.net_id.to_le_bytes();
    creator
        .set_app_nonce(&[nonce[0], nonce[1], nonce[2]])
        .set_net_id(&[net_id[0], net_id[1], net_id[2]])
        .set_dev_addr(&params.dev_addr.to_le_bytes())
        .set_dl_settings(params.dl_settings)
        .set_rx_delay(params.rx_delay);
    // Without a CFList the frame is the first 17 bytes of the creator's buffer.
    let phy = creator.build(&key).map_err(|e| FrameError::Malformed(format!("{e:?}")))?[..17].to_vec();
    // Derive the keys from the frame as the device will read it.
    let encrypted = EncryptedJoinAcceptPayload::new_with_factory(phy.clone(), DefaultFactory)
        .map_err(|e| FrameError::Malformed(format!("{e:?}")))?;
    let decrypted = encrypted.decrypt(&AppKey::from(*app_key));
    let dev_nonce = DevNonce::new(request.dev_nonce.to_le_bytes()).expect("two bytes");
    let keys = SessionKeys {
        nwk_s_key: decrypted.derive_newskey(&dev_nonce, &AppKey::from(*app_key)).inner().0,
        app_s_key: decrypted.derive_appskey(&dev_nonce, &AppKey::from(*app_key)).inner().0,
    };
    Ok((phy, keys))
}

/// What a device reads from a JoinAccept (field-sim's devices, and tests): its address and
/// session keys, once the MIC checks.
pub fn open_accept(phy: &[u8], app_key: &[u8; 16], dev_nonce: u16) -> Result<(u32, SessionKeys), FrameError> {
    let encrypted = EncryptedJoinAcceptPayload::new_with_factory(phy.to_vec(), DefaultFactory)
        .map_err(|e| FrameError::Malformed(format!("{e:?}")))?;
    let key = AppKey::from(*app_key);
    let decrypted = encrypted.decrypt(&key);
    if !decrypted.validate_mic(&key) {
        return Err(FrameError::BadMic);
    }
    let dev_nonce = DevNonce::new(dev_nonce.to_le_bytes()).expect("two bytes");
    let addr = decrypted.dev_addr();
    let a = addr.as_ref();
    let keys = SessionKeys {
        nwk_s_key: decrypted.derive_newskey(&dev_nonce, &key).inner().0,
        app_s_key: decrypted.derive_appskey(&dev_nonce, &key).inner().0,
    };
    Ok((u32::from_le_bytes([a[0], a[1], a[2], a[3]]), keys))
}

/// A JoinRequest as a device makes it (field-sim, tests).
pub fn request(join_eui: Eui64, dev_eui: Eui64, dev_nonce: u16, app_key: &[u8; 16]) -> Vec<u8> {
    let mut join_wire = join_eui.0;
    join_wire.reverse();
    let mut dev_wire = dev_eui.0;
    dev_wire.reverse();
    let mut creator =
        lorawan::creator::JoinRequestCreator::with_options([0u8; 23], DefaultFactory).expect("23 bytes");
    creator.set_app_eui(&join_wire).set_dev_eui(&dev_wire).set_dev_nonce(&dev_nonce.to_le_bytes());
    creator.build(&AppKey::from(*app_key)).to_vec()
}

#[cfg(test)]
mod tests;
