//! Against frames and keys made by an independent implementation (lora-packet, with Node's AES
//! for the JoinAccept): see `testdata/lorawan/make-vectors.js`.

use super::*;
use crate::lorawan::mac::{self, Frame};

pub(crate) struct Vectors(serde_json::Value);

impl Vectors {
    pub(crate) fn load() -> Self {
        Vectors(serde_json::from_str(include_str!("../../../testdata/lorawan/vectors.json")).unwrap())
    }

    pub(crate) fn bytes(&self, path: &str) -> Vec<u8> {
        let s = self.0.pointer(path).and_then(|v| v.as_str()).unwrap_or_else(|| panic!("no {path}"));
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    pub(crate) fn key(&self, path: &str) -> [u8; 16] {
        self.bytes(path).try_into().unwrap()
    }

    pub(crate) fn number(&self, path: &str) -> u64 {
        self.0.pointer(path).and_then(|v| v.as_u64()).unwrap()
    }

    fn be(&self, path: &str) -> u32 {
        self.bytes(path).iter().fold(0u32, |a, b| (a << 8) | u32::from(*b))
    }
}

#[test]
fn a_join_request_from_another_implementation_verifies() {
    let v = Vectors::load();
    let app_key = v.key("/app_key");
    let jr = verify_join(&v.bytes("/join_request"), &app_key).unwrap();
    assert_eq!(jr.dev_eui.to_string(), "0004a30b001c0530");
    assert_eq!(jr.join_eui.to_string(), "70b3d57ed0000001");
    assert_eq!(jr.dev_nonce, 0x1b2f);
    assert_eq!(verify_join(&v.bytes("/join_request"), &[0u8; 16]).unwrap_err(), FrameError::BadMic);
    let mut damaged = v.bytes("/join_request");
    damaged[18] ^= 1;
    assert_eq!(verify_join(&damaged, &app_key).unwrap_err(), FrameError::BadMic);
    assert_eq!(peek_join(&damaged[..10]).unwrap_err().reason(), "malformed");
}

#[test]
fn the_join_accept_and_session_keys_match_the_other_implementation() {
    let v = Vectors::load();
    let app_key = v.key("/app_key");
    let jr = peek_join(&v.bytes("/join_request")).unwrap();
    let params = AcceptParams {
        join_nonce: v.be("/join_nonce"),
        net_id: v.be("/net_id"),
        dev_addr: v.be("/dev_addr"),
        dl_settings: 0,
        rx_delay: 1,
    };
    let (phy, keys) = accept(&jr, &app_key, &params).unwrap();
    assert_eq!(phy, v.bytes("/join_accept"), "byte for byte");
    assert_eq!(keys.nwk_s_key, v.key("/nwk_s_key"));
    assert_eq!(keys.app_s_key, v.key("/app_s_key"));
    // The device's side reads the same session out of it.
    let (addr, device_keys) = open_accept(&phy, &app_key, jr.dev_nonce).unwrap();
    assert_eq!((addr, device_keys), (params.dev_addr, keys));
    assert_eq!(open_accept(&phy, &[1; 16], jr.dev_nonce).unwrap_err(), FrameError::BadMic);
}

#[test]
fn data_frames_match_the_other_implementation_both_ways() {
    let v = Vectors::load();
    let keys = mac::SessionKeys { nwk_s_key: v.key("/nwk_s_key"), app_s_key: v.key("/app_s_key") };
    // Its confirmed uplink past a 16-bit rollover: the full counter enters MIC and cipher.
    let up = mac::verify_uplink(&v.bytes("/uplink/phy"), &keys, Some(69_990)).unwrap();
    assert_eq!(u64::from(up.fcnt), v.number("/uplink/fcnt"));
    assert_eq!((up.confirmed, up.adr, up.f_port), (true, true, Some(2)));
    assert_eq!(up.payload, v.bytes("/uplink/payload"));
    // Our downlink for its fields is its downlink, byte for byte.
    let payload = v.bytes("/downlink/payload");
    let frame = Frame {
        dev_addr: v.be("/dev_addr"),
        fcnt: v.number("/downlink/fcnt") as u32,
        ack: true,
        f_port: Some(10),
        payload: &payload,
        ..Frame::default()
    };
    assert_eq!(mac::build(&frame, &keys).unwrap(), v.bytes("/downlink/phy"));
    // And our uplink builder makes what our verifier (checked above against theirs) reads.
    let payload = v.bytes("/uplink/payload");
    let ours = Frame {
        dev_addr: v.be("/dev_addr"),
        fcnt: 70_000,
        uplink: true,
        confirmed: true,
        adr: true,
        f_port: Some(2),
        payload: &payload,
        ..Frame::default()
    };
    assert_eq!(mac::build(&ours, &keys).unwrap(), v.bytes("/uplink/phy"));
}

#[test]
fn a_request_we_build_is_one_we_verify() {
    let key = [7u8; 16];
    let (join, dev) = (Eui64([1, 2, 3, 4, 5, 6, 7, 8]), Eui64([9, 10, 11, 12, 13, 14, 15, 16]));
    let phy = request(join, dev, 0xbeef, &key);
    assert_eq!(
        verify_join(&phy, &key).unwrap(),
        JoinRequest { join_eui: join, dev_eui: dev, dev_nonce: 0xbeef }
    );
}
