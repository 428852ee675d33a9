use super::*;
use crate::lorawan::codec::Codec;
use crate::lorawan::gwmp::{DataRate, Eui64};
use crate::lorawan::mac::SessionKeys;
use crate::lorawan::session::{self, StateError};
use std::sync::Arc;

const APP_KEY: [u8; 16] = [0x42; 16];
const OTAA_EUI: Eui64 = Eui64([0, 0, 0, 0, 0, 0, 0, 1]);
const ABP_EUI: Eui64 = Eui64([0, 0, 0, 0, 0, 0, 0, 2]);
const ABP_ADDR: u32 = 0x2600_0002;

fn abp_keys() -> SessionKeys {
    SessionKeys { nwk_s_key: [1; 16], app_s_key: [2; 16] }
}

fn devices() -> Vec<DeviceConfig> {
    vec![
        DeviceConfig {
            device: DeviceId::new("soil-1").unwrap(),
            dev_eui: OTAA_EUI,
            activation: Activation::Otaa { join_eui: None, app_key: APP_KEY },
            codec: Arc::new(Codec::CayenneLpp),
            command_port: 10,
        },
        DeviceConfig {
            device: DeviceId::new("gauge-2").unwrap(),
            dev_eui: ABP_EUI,
            activation: Activation::Abp { dev_addr: ABP_ADDR, keys: abp_keys() },
            codec: Arc::new(Codec::CayenneLpp),
            command_port: 10,
        },
    ]
}

fn server() -> NetworkServer {
    NetworkServer::new(NetworkSettings { region: Region::Eu868, net_id: 0x13 }, devices(), Vec::new())
}

fn rxpk() -> Rxpk {
    Rxpk {
        tmst: 1_000_000,
        time: None,
        freq: 868.1,
        chan: None,
        rfch: None,
        stat: 1,
        modu: "LORA".into(),
        datr: DataRate::Lora("SF9BW125".into()),
        codr: None,
        rssi: -97,
        lsnr: Some(3.5),
        data: vec![],
    }
}

fn now() -> Timestamp {
    Timestamp::from_secs(1_800_000_000).unwrap()
}

fn up(addr: u32, keys: &SessionKeys, fcnt: u32, confirmed: bool, port: u8, payload: &[u8]) -> Vec<u8> {
    let frame = Frame {
        dev_addr: addr,
        fcnt,
        uplink: true,
        confirmed,
        f_port: Some(port),
        payload,
        ..Frame::default()
    };
    mac::build(&frame, keys).unwrap()
}

fn join(server: &mut NetworkServer, nonce: u16) -> (u32, SessionKeys) {
    let request = join::request(Eui64([0; 8]), OTAA_EUI, nonce, &APP_KEY);
    let Handled::Join(joined) = server.handle(&request, &rxpk(), 1, now()).unwrap() else {
        panic!("not a join")
    };
    join::open_accept(&joined.accept, &APP_KEY, nonce).unwrap()
}

fn accepted(server: &mut NetworkServer, phy: &[u8]) -> Result<Accepted, Rejection> {
    match server.handle(phy, &rxpk(), 2, now())? {
        Handled::Uplink(a) => Ok(a),
        Handled::Join(_) => panic!("not an uplink"),
    }
}

const TEMP: [u8; 4] = [3, 0x67, 0x01, 0x10]; // temperature_3 = 27.2

#[test]
fn a_joined_device_uplinks_readings_with_link_metrics_and_replays_are_refused() {
    let mut s = server();
    let (addr, keys) = join(&mut s, 7);
    assert_eq!(addr >> 25, 0x13, "the NwkID of the network");
    let a = accepted(&mut s, &up(addr, &keys, 0, false, 1, &TEMP)).unwrap();
    let values: Vec<(&str, f64)> = a.readings.iter().map(|r| (r.metric.as_str(), r.value)).collect();
    assert_eq!(
        values,
        vec![
            ("temperature_3", 27.2),
            ("lora_rssi_dbm", -97.0),
            ("lora_snr_db", 3.5),
            ("lora_receivers", 2.0)
        ]
    );
    assert!(a.downlink.is_none(), "nothing to say to an unconfirmed uplink");
    assert_eq!(accepted(&mut s, &up(addr, &keys, 0, false, 1, &TEMP)).unwrap_err().reason, "repeated");
    accepted(&mut s, &up(addr, &keys, 5, false, 1, &TEMP)).unwrap();
    assert_eq!(accepted(&mut s, &up(addr, &keys, 3, false, 1, &TEMP)).unwrap_err().reason, "replayed");
    let stranger = up(0x0102_0304, &keys, 6, false, 1, &TEMP);
    assert_eq!(accepted(&mut s, &stranger).unwrap_err().reason, "unknown_dev_addr");
    let forged = up(addr, &SessionKeys { nwk_s_key: [9; 16], app_s_key: [9; 16] }, 6, false, 1, &TEMP);
    assert_eq!(accepted(&mut s, &forged).unwrap_err().reason, "bad_mic");
}

#[test]
fn joins_refuse_a_used_dev_nonce_and_a_wrong_key() {
    let mut s = server();
    join(&mut s, 7);
    let again = join::request(Eui64([0; 8]), OTAA_EUI, 7, &APP_KEY);
    assert_eq!(s.handle(&again, &rxpk(), 1, now()).unwrap_err().reason, "dev_nonce_replayed");
    let wrong = join::request(Eui64([0; 8]), OTAA_EUI, 8, &[0; 16]);
    assert_eq!(s.handle(&wrong, &rxpk(), 1, now()).unwrap_err().reason, "bad_mic");
    let unknown = join::request(Eui64([0; 8]), Eui64([9; 8]), 8, &APP_KEY);
    assert_eq!(s.handle(&unknown, &rxpk(), 1, now()).unwrap_err().reason, "unknown_dev_eui");
    let abp = join::request(Eui64([0; 8]), ABP_EUI, 8, &APP_KEY);
    assert_eq!(s.handle(&abp, &rxpk(), 1, now()).unwrap_err().reason, "not_otaa");
    // A new join gives a new session: the old keys no longer work.
    let (first_addr, first_keys) = join(&mut s, 8);
    let (addr, keys) = join(&mut s, 9);
    assert_ne!(first_keys, keys);
    assert!(accepted(&mut s, &up(addr, &keys, 0, false, 1, &TEMP)).is_ok());
    if first_addr != addr {
        assert_eq!(
            accepted(&mut s, &up(first_addr, &first_keys, 1, false, 1, &TEMP)).unwrap_err().reason,
            "unknown_dev_addr"
        );
    }
}

#[test]
fn a_confirmed_uplink_is_acked_and_its_repeat_answered_without_storing_twice() {
    let mut s = server();
    let keys = abp_keys();
    let a = accepted(&mut s, &up(ABP_ADDR, &keys, 41, true, 1, &TEMP)).unwrap();
    let plan = a.downlink.clone().unwrap();
    assert!(plan.ack && plan.queued.is_none());
    let phy = s.build_downlink(a.device, &plan).unwrap();
    let down = mac::verify_downlink(&phy, &keys, None).unwrap();
    assert!(down.ack);
    assert_eq!(down.fcnt, plan.fcnt_down);
    // The device missed the ACK and repeats before the readings were durable: stored then.
    let r = accepted(&mut s, &up(ABP_ADDR, &keys, 41, true, 1, &TEMP)).unwrap();
    assert!(r.repeated && !r.readings.is_empty());
    s.stored(a.device, 41);
    let r = accepted(&mut s, &up(ABP_ADDR, &keys, 41, true, 1, &TEMP)).unwrap();
    assert!(r.repeated && r.readings.is_empty(), "already stored");
    let plan2 = r.downlink.unwrap();
    assert!(plan2.ack && plan2.fcnt_down > plan.fcnt_down, "a fresh downlink counter");
}

#[test]
fn queued_setpoints_go_down_after_the_next_uplink_and_stay_until_sent() {
    let mut s = server();
    let keys = abp_keys();
    let id = DeviceId::new("gauge-2").unwrap();
    let metric = Metric::new("digital_output_4").unwrap();
    assert_eq!(s.enqueue(&id, CommandId::new("c1"), &metric, 1.0), Ok(1));
    assert!(matches!(
        s.enqueue(&id, CommandId::new("c2"), &Metric::new("nope").unwrap(), 1.0),
        Err(QueueError::Encode(_))
    ));
    let a = accepted(&mut s, &up(ABP_ADDR, &keys, 1, false, 1, &TEMP)).unwrap();
    let plan = a.downlink.unwrap();
    let queued = plan.queued.clone().unwrap();
    assert_eq!((queued.port, queued.payload.clone()), (10, vec![4, 1, 1]));
    let down = mac::verify_downlink(&s.build_downlink(a.device, &plan).unwrap(), &keys, None).unwrap();
    assert_eq!((down.f_port, down.payload), (Some(10), vec![4, 1, 1]));
    // In flight: the next uplink does not send it a second time.
    let b = accepted(&mut s, &up(ABP_ADDR, &keys, 2, false, 1, &TEMP)).unwrap();
    assert!(b.downlink.is_none());
    // The concentrator refused it: it goes with the next uplink instead.
    s.sent(a.device, &queued.command, false);
    let c = accepted(&mut s, &up(ABP_ADDR, &keys, 3, false, 1, &TEMP)).unwrap();
    assert_eq!(c.downlink.unwrap().queued.unwrap().command, CommandId::new("c1"));
    s.sent(a.device, &queued.command, true);
    assert!(s.states()[a.device].queue.is_empty());
}

#[test]
fn link_check_and_device_time_requests_are_answered_in_fopts() {
    let mut s = server();
    let keys = abp_keys();
    let frame =
        Frame { dev_addr: ABP_ADDR, fcnt: 1, uplink: true, f_opts: &[0x02, 0x0d], ..Frame::default() };
    let a = accepted(&mut s, &mac::build(&frame, &keys).unwrap()).unwrap();
    let plan = a.downlink.unwrap();
    // Margin: SNR 3.5 above SF9's floor of -12.5 is 16 dB; two receivers.
    assert_eq!(&plan.f_opts[..3], &[0x02, 16, 2]);
    assert_eq!(plan.f_opts[3], 0x0d);
    let gps = u32::from_le_bytes(plan.f_opts[4..8].try_into().unwrap());
    assert_eq!(i64::from(gps), 1_800_000_000 - 315_964_800 + 18);
}

#[test]
fn state_survives_a_save_and_a_damaged_file_is_refused() {
    let mut s = server();
    let (addr, keys) = join(&mut s, 7);
    accepted(&mut s, &up(addr, &keys, 3, false, 1, &TEMP)).unwrap();
    s.enqueue(
        &DeviceId::new("soil-1").unwrap(),
        CommandId::new("c1"),
        &Metric::new("digital_output_1").unwrap(),
        0.0,
    )
    .unwrap();
    let bytes = s.encode();
    let states = session::decode(&bytes, &devices()).unwrap();
    assert_eq!(states, s.states().to_vec());
    let mut restarted =
        NetworkServer::new(NetworkSettings { region: Region::Eu868, net_id: 0x13 }, devices(), states);
    assert_eq!(
        accepted(&mut restarted, &up(addr, &keys, 3, false, 1, &TEMP)).unwrap_err().reason,
        "repeated"
    );
    assert_eq!(
        accepted(&mut restarted, &up(addr, &keys, 2, false, 1, &TEMP)).unwrap_err().reason,
        "replayed"
    );
    assert!(accepted(&mut restarted, &up(addr, &keys, 4, false, 1, &TEMP)).is_ok());
    let again = join::request(Eui64([0; 8]), OTAA_EUI, 7, &APP_KEY);
    assert_eq!(restarted.handle(&again, &rxpk(), 1, now()).unwrap_err().reason, "dev_nonce_replayed");

    let mut damaged = bytes.clone();
    let last = damaged.len() - 3;
    damaged[last] ^= 0x01;
    assert!(matches!(session::decode(&damaged, &devices()), Err(StateError::Checksum)));
    assert!(matches!(session::decode(b"{}", &devices()), Err(StateError::NoHeader)));
}

#[test]
fn mac_commands_on_port_0_are_read_with_the_network_key() {
    let mut s = server();
    let keys = abp_keys();
    // Port 0: the FRMPayload holds MAC commands, encrypted with the NwkSKey, not the AppSKey.
    let frame = Frame {
        dev_addr: ABP_ADDR,
        fcnt: 1,
        uplink: true,
        f_port: Some(0),
        payload: &[0x02],
        ..Frame::default()
    };
    let a = accepted(&mut s, &mac::build(&frame, &keys).unwrap()).unwrap();
    assert_eq!(a.downlink.unwrap().f_opts, vec![0x02, 16, 2], "LinkCheckReq answered");
    let metrics: Vec<&str> = a.readings.iter().map(|r| r.metric.as_str()).collect();
    assert_eq!(metrics, vec!["lora_rssi_dbm", "lora_snr_db", "lora_receivers"], "no application values");
}

#[test]
fn queued_instructions_go_down_on_their_own_port() {
    let mut s = server();
    let keys = abp_keys();
    let id = DeviceId::new("gauge-2").unwrap();
    let target = DeviceId::new("combine-1").unwrap();
    assert_eq!(
        s.enqueue_instruction(&id, CommandId::new("i1"), fieldgate_proto::Task::Serve, Some(&target)),
        Ok(1)
    );
    let a = accepted(&mut s, &up(ABP_ADDR, &keys, 1, false, 1, &TEMP)).unwrap();
    let plan = a.downlink.unwrap();
    let down = mac::verify_downlink(&s.build_downlink(a.device, &plan).unwrap(), &keys, None).unwrap();
    assert_eq!(down.f_port, Some(codec::INSTRUCTION_PORT));
    assert_eq!(
        codec::decode_instruction(&down.payload).unwrap(),
        (fieldgate_proto::Task::Serve, Some("combine-1".to_owned()))
    );
}
