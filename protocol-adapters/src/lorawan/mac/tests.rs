use super::*;
use lorawan::creator::DataPayloadCreator;
use lorawan::keys::{AppSKey, NewSKey};
use lorawan::parser::FCtrl;
use proptest::prelude::*;

const NWK: [u8; 16] = [0x11; 16];
const APP: [u8; 16] = [0x22; 16];

fn keys() -> SessionKeys {
    SessionKeys { nwk_s_key: NWK, app_s_key: APP }
}

/// A data uplink as a device makes it.
fn uplink(fcnt: u32, confirmed: bool, payload: &[u8]) -> Vec<u8> {
    let mut phy = DataPayloadCreator::new();
    phy.set_confirmed(confirmed)
        .set_uplink(true)
        .set_f_port(7)
        .set_dev_addr(&[0x04, 0x03, 0x02, 0x01])
        .set_fctrl(&FCtrl::new(0x80, true))
        .set_fcnt(fcnt);
    phy.build(payload, &[], &NewSKey::from(NWK), &AppSKey::from(APP)).unwrap().to_vec()
}

#[test]
fn a_frame_from_another_implementation_verifies_and_decrypts() {
    // From the documentation of the npm package `lora` (an independent implementation): both
    // session keys 2B7E151628AED2A6ABF7158809CF4F3C.
    use base64::Engine;
    let phy = base64::engine::general_purpose::STANDARD
        .decode("QAESAwKBbgACAbB2c5M9hkMWDus2m9lrqJ63NyclM+XZrkifwye9SPgA")
        .unwrap();
    let key =
        [0x2b, 0x7e, 0x15, 0x16, 0x28, 0xae, 0xd2, 0xa6, 0xab, 0xf7, 0x15, 0x88, 0x09, 0xcf, 0x4f, 0x3c];
    let up = verify_uplink(&phy, &SessionKeys { nwk_s_key: key, app_s_key: key }, None).unwrap();
    assert_eq!(up.dev_addr, 0x0203_1201);
    assert_eq!((up.fcnt, up.f_port, up.adr, up.confirmed), (110, Some(1), true, false));
    assert_eq!(up.f_opts, vec![0x02]);
    assert_eq!(up.payload, b"AABBCCDDEEFFGGHHIIJJKKLLMMNN");
}

#[test]
fn an_uplink_verifies_decrypts_and_reports_its_header() {
    let phy = uplink(76_543, true, b"hello lora");
    assert_eq!(peek(&phy).unwrap(), (0x0102_0304, (76_543 % 65_536) as u16));
    let up = verify_uplink(&phy, &keys(), Some(76_000)).unwrap();
    assert_eq!(up.fcnt, 76_543, "the full counter, from the last accepted one");
    assert_eq!((up.dev_addr, up.confirmed, up.adr, up.f_port), (0x0102_0304, true, true, Some(7)));
    assert_eq!(up.payload, b"hello lora");
}

#[test]
fn replays_wrong_keys_and_damage_are_refused() {
    let phy = uplink(10, false, b"x");
    assert_eq!(verify_uplink(&phy, &keys(), Some(10)).unwrap_err().reason(), "replayed");
    assert_eq!(verify_uplink(&phy, &keys(), Some(11)).unwrap_err().reason(), "replayed");
    let other = SessionKeys { nwk_s_key: [0x33; 16], app_s_key: APP };
    assert_eq!(verify_uplink(&phy, &other, Some(9)).unwrap_err(), FrameError::BadMic);
    let mut damaged = phy.clone();
    damaged[9] ^= 0x01; // a payload byte
    assert_eq!(verify_uplink(&damaged, &keys(), Some(9)).unwrap_err(), FrameError::BadMic);
    assert_eq!(verify_uplink(&phy[..6], &keys(), None).unwrap_err().reason(), "malformed");
    assert_eq!(verify_uplink(&[], &keys(), None).unwrap_err().reason(), "malformed");
}

#[test]
fn the_counter_crosses_a_16_bit_rollover_and_a_forged_one_fails_the_mic() {
    // The device went from 65,530 to 65,540: 4 on air.
    let phy = uplink(65_540, false, b"after");
    assert_eq!(verify_uplink(&phy, &keys(), Some(65_530)).unwrap().fcnt, 65_540);
    // The same 16 bits sent by someone replaying frame 4 of the first epoch: the counter it
    // would take is 65,540, but frame 4's MIC was made with 4.
    let old = uplink(4, false, b"before");
    assert_eq!(verify_uplink(&old, &keys(), Some(65_530)).unwrap_err(), FrameError::BadMic);
}

#[test]
fn full_counters_follow_the_rules_of_the_gap() {
    assert_eq!(full_fcnt(None, 7), Ok(7));
    assert_eq!(full_fcnt(Some(7), 8), Ok(8));
    assert_eq!(full_fcnt(Some(7), 7), Err(FrameError::Replayed { last: 7, got: 7 }));
    assert_eq!(full_fcnt(Some(0x1_fff0), 0x0005), Ok(0x2_0005), "rollover");
    assert_eq!(full_fcnt(Some(0x1_8000), 0x0005).unwrap_err().reason(), "replayed", "too far behind");
    assert_eq!(full_fcnt(Some(7), 7 + 16_384), Ok(7 + 16_384));
    assert_eq!(full_fcnt(Some(7), 7 + 16_385).unwrap_err().reason(), "fcnt_gap");
    assert_eq!(full_fcnt(Some(u32::MAX - 1), 0xffff), Ok(u32::MAX));
    assert_eq!(full_fcnt(Some(u32::MAX), 0x0001).unwrap_err().reason(), "replayed", "counter exhausted");
}

proptest! {
    #[test]
    fn no_bytes_make_verification_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80), last: Option<u32>) {
        let _ = verify_uplink(&bytes, &keys(), last);
        let _ = peek(&bytes);
    }

    #[test]
    fn an_accepted_counter_is_always_ahead_and_within_the_gap(last: u32, low: u16) {
        if let Ok(got) = full_fcnt(Some(last), low) {
            prop_assert!(got > last && got - last <= MAX_FCNT_GAP);
            prop_assert_eq!(got & 0xffff, u32::from(low));
        }
    }
}

fn hex16(s: &str) -> [u8; 16] {
    (0..16)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect::<Vec<_>>()
        .try_into()
        .unwrap()
}

/// The LoRaWAN 1.0.x specification defines the MIC as AES-CMAC (RFC 4493) and the FRMPayload
/// cipher on AES-128 (FIPS-197) but publishes no vectors of its own; the primitives' standard
/// vectors are checked here, through the functions the frames use, and whole frames against
/// lora-packet's in `join::tests`.
#[test]
fn the_mic_and_cipher_primitives_pass_their_standards_vectors() {
    let key = hex16("2b7e151628aed2a6abf7158809cf4f3c");
    // RFC 4493, examples 1 to 3.
    assert_eq!(aes_cmac(&key, &[]), hex16("bb1d6929e95937287fa37d129b756746"));
    let m = hex16("6bc1bee22e409f96e93d7e117393172a");
    assert_eq!(aes_cmac(&key, &[&m]), hex16("070a16b46b4d4144f79bdd9dd04a287c"));
    let m40: Vec<u8> = [
        &hex16("6bc1bee22e409f96e93d7e117393172a")[..],
        &hex16("ae2d8a571e03ac9c9eb76fac45af8e51")[..],
        &hex16("30c81c46a35ce41100000000000000000")[..8],
    ]
    .concat();
    assert_eq!(aes_cmac(&key, &[&m40[..20], &m40[20..]]), hex16("dfa66747de9ae63030ca32611497c827"));
    // FIPS-197, appendix C.1.
    assert_eq!(
        aes_block(&hex16("000102030405060708090a0b0c0d0e0f"), hex16("00112233445566778899aabbccddeeff")),
        hex16("69c4e0d86a7b0430d8cdb78070b4c55a")
    );
}

#[test]
fn encryption_is_its_own_inverse_across_blocks() {
    let data: Vec<u8> = (0..40).collect();
    let once = crypt(&data, &APP, true, 0x0102_0304, 70_000);
    assert_ne!(once, data);
    assert_eq!(crypt(&once, &APP, true, 0x0102_0304, 70_000), data);
    assert_ne!(crypt(&data, &APP, false, 0x0102_0304, 70_000), once, "the direction is in the keystream");
}
