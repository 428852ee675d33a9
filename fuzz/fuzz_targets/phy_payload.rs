//! Any PHYPayload through everything that reads one: the frame parsers, the MIC and counter
//! checks, the JoinRequest reader, the payload codecs, and the network server's decision with
//! an OTAA and an ABP device configured. Nothing may panic; a refusal is a value.
#![no_main]

use fieldgate_adapters::lorawan::codec::Codec;
use fieldgate_adapters::lorawan::gwmp::{DataRate, Eui64, Rxpk};
use fieldgate_adapters::lorawan::mac::{self, SessionKeys};
use fieldgate_adapters::lorawan::region::Region;
use fieldgate_adapters::lorawan::server::{NetworkServer, NetworkSettings};
use fieldgate_adapters::lorawan::session::{Activation, DeviceConfig};
use fieldgate_adapters::lorawan::{codec, join};
use fieldgate_proto::{DeviceId, Timestamp};
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

fn server() -> NetworkServer {
    let device = |id: &str, eui: u8, activation| DeviceConfig {
        device: DeviceId::new(id).unwrap(),
        dev_eui: Eui64([0, 0, 0, 0, 0, 0, 0, eui]),
        activation,
        codec: Arc::new(Codec::CayenneLpp),
        command_port: 10,
    };
    let keys = SessionKeys { nwk_s_key: [1; 16], app_s_key: [2; 16] };
    NetworkServer::new(
        NetworkSettings { region: Region::Eu868, net_id: 0x13 },
        vec![
            device("otaa", 1, Activation::Otaa { join_eui: None, app_key: [3; 16] }),
            device("abp", 2, Activation::Abp { dev_addr: 0x0403_0201, keys }),
        ],
        Vec::new(),
    )
}

fuzz_target!(|data: &[u8]| {
    let keys = SessionKeys { nwk_s_key: [1; 16], app_s_key: [2; 16] };
    let _ = mac::peek(data);
    let _ = mac::verify_uplink(data, &keys, None);
    let _ = mac::verify_uplink(data, &keys, Some(0xffff));
    let _ = mac::verify_downlink(data, &keys, None);
    let _ = join::peek_join(data);
    let _ = join::verify_join(data, &[3; 16]);
    let _ = join::open_accept(data, &[3; 16], 1);
    let _ = Codec::CayenneLpp.decode(1, data);
    let _ = codec::encode_lpp(
        data.first().copied().unwrap_or(0),
        data.get(1).copied().unwrap_or(0),
        &[1.0],
        &mut Vec::new(),
    );
    let rxpk = Rxpk {
        tmst: 0,
        time: None,
        freq: 868.1,
        chan: None,
        rfch: None,
        stat: 1,
        modu: "LORA".into(),
        datr: DataRate::Lora("SF7BW125".into()),
        codr: None,
        rssi: -80,
        lsnr: Some(5.0),
        data: data.to_vec(),
    };
    let mut s = server();
    let now = Timestamp::from_nanos(1_800_000_000_000_000_000);
    let _ = s.handle(data, &rxpk, 1, now);
    let _ = s.handle(data, &rxpk, 2, now);

    // The same bytes as the content of a genuine frame of the ABP device (valid MIC), so the
    // MAC command reader and the payload codec see them too: [fopts_len, port, rest...].
    if let [f_opts_len, port, rest @ ..] = data {
        let split = usize::from(*f_opts_len % 16).min(rest.len());
        let (f_opts, payload) = rest.split_at(split);
        let frame = mac::Frame {
            dev_addr: 0x0403_0201,
            fcnt: 1,
            uplink: true,
            confirmed: port & 0x80 != 0,
            f_opts,
            f_port: Some(*port),
            payload: &payload[..payload.len().min(mac::MAX_PAYLOAD)],
            ..mac::Frame::default()
        };
        if let Ok(phy) = mac::build(&frame, &keys) {
            let accepted = s.handle(&phy, &rxpk, 1, now);
            assert!(accepted.is_ok(), "a genuine frame was refused: {accepted:?}");
        }
    }
});
