//! LoRaWAN end to end: field-sim's devices and packet forwarders talk to a real gateway
//! process over real UDP on loopback. An OTAA join, uplinks heard by two concentrators and
//! stored once, replays refused (also after a restart), a confirmed uplink acknowledged, and a
//! command queued through the gRPC API delivered as a downlink.

use field_sim::lora::{Device, Forwarder};
use fieldgate_adapters::lorawan::codec::Codec;
use fieldgate_adapters::lorawan::gwmp::{self, Eui64};
use fieldgate_adapters::lorawan::mac::SessionKeys;
use fieldgate_proto::{Metric, v1};
use fieldgate_tests::{
    EVENT_TIMEOUT, GatewayProcess, free_udp_port, http_get, metric, recorded_values, send_command,
    wait_health, wait_metric, write_config,
};
use std::net::SocketAddr;

const GW1: Eui64 = Eui64([0xaa, 0x55, 0x5a, 0, 0, 0, 0, 1]);
const GW2: Eui64 = Eui64([0xaa, 0x55, 0x5a, 0, 0, 0, 0, 2]);
const APP_KEY: [u8; 16] =
    [0x2b, 0x7e, 0x15, 0x16, 0x28, 0xae, 0xd2, 0xa6, 0xab, 0xf7, 0x15, 0x88, 0x09, 0xcf, 0x4f, 0x3c];
const SOIL_EUI: Eui64 = Eui64([0, 0x04, 0xa3, 0x0b, 0, 0x1c, 0x05, 0x30]);
const GAUGE_EUI: Eui64 = Eui64([0, 0x04, 0xa3, 0x0b, 0, 0x1c, 0x05, 0x31]);
const GAUGE_ADDR: u32 = 0x2600_0002;

fn gauge_keys() -> SessionKeys {
    SessionKeys { nwk_s_key: [0x11; 16], app_s_key: [0x22; 16] }
}

fn rejected(addr: SocketAddr, reason: &str) -> f64 {
    metric(addr, &format!("fieldgate_inputs_rejected_total{{source=\"lorawan\",reason=\"{reason}\"}}"))
        .unwrap_or(0.0)
}

fn wait_rejected(addr: SocketAddr, reason: &str, at_least: f64) {
    wait_metric(
        addr,
        &format!("fieldgate_inputs_rejected_total{{source=\"lorawan\",reason=\"{reason}\"}}"),
        at_least,
    );
}

fn temperature(value: f64) -> Vec<(Metric, f64)> {
    vec![(Metric::new("temperature_3").unwrap(), value)]
}

#[test]
fn joins_uplinks_replays_acks_and_commands_over_real_udp() {
    let dir = tempfile::tempdir().unwrap();
    // A port that stays free across the restart below (taken below the ephemeral range).
    let port = free_udp_port();
    let lora = format!(
        r#"
[store]
recordings = true

[lorawan]
listen = "127.0.0.1:{port}"
gateways = ["{GW1}", "{GW2}"]
# Wide enough that two copies sent back to back always meet, on a loaded machine too.
dedup_window = "800ms"

[[lorawan.device]]
id = "soil-1"
dev_eui = "{SOIL_EUI}"
app_key = "2b7e151628aed2a6abf7158809cf4f3c"

[[lorawan.device]]
id = "gauge-2"
dev_eui = "{GAUGE_EUI}"
dev_addr = "{GAUGE_ADDR:08x}"
nwk_s_key = "11111111111111111111111111111111"
app_s_key = "22222222222222222222222222222222"
"#
    );
    let config = write_config(dir.path(), &lora);
    let config = config.to_str().unwrap();
    let server: SocketAddr = ([127, 0, 0, 1], port).into();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut soil = Device::otaa("soil-1", SOIL_EUI, APP_KEY, Codec::CayenneLpp, 100);
    let mut gauge = Device::abp("gauge-2", GAUGE_EUI, GAUGE_ADDR, gauge_keys(), Codec::CayenneLpp);

    let mut gw = GatewayProcess::spawn(&["run", "--config", config]);
    let addr = gw.wait_started();
    let grpc = gw.grpc_addr();
    wait_health(addr, "lorawan", "up");
    let (join_request, stored_frame) = rt.block_on(async {
        let mut fw1 = Forwarder::connect(GW1, server).await.unwrap();
        let mut fw2 = Forwarder::connect(GW2, server).await.unwrap();
        fw1.pull(EVENT_TIMEOUT).await.unwrap();
        fw2.pull(EVENT_TIMEOUT).await.unwrap();

        // Garbage and strangers are counted, not answered.
        fw1.send_raw(&[2, 0]).await.unwrap();
        let mut stranger = Forwarder::connect(Eui64([9; 8]), server).await.unwrap();
        stranger.push(&[0x40; 20], -50, 5.0).await.unwrap();
        wait_rejected(addr, "truncated", 1.0);
        wait_rejected(addr, "unknown_gateway", 1.0);

        // OTAA: the JoinAccept goes out in RX1, 5 s after the request on the concentrator's clock.
        let join_request = soil.join_request();
        let (token, rx) = fw1.push(&join_request, -80, 5.0).await.unwrap();
        let accept = fw1.pull_resp(EVENT_TIMEOUT).await.unwrap();
        // (RX2, a second later, if the machine was too slow for RX1.)
        let rx1 = (Some(rx.tmst.wrapping_add(5_000_000)), rx.freq);
        let rx2 = (Some(rx.tmst.wrapping_add(6_000_000)), 869.525);
        assert!([rx1, rx2].contains(&(accept.tmst, accept.freq)) && accept.ipol, "{accept:?}");
        soil.join_accept(&accept.data).expect("the device reads its JoinAccept");
        fw1.push_ack(token, EVENT_TIMEOUT).await.unwrap();
        wait_metric(addr, "fieldgate_lorawan_joins_total", 1.0);

        // One uplink heard by both concentrators: stored once, both acknowledged after it.
        let first = soil.uplink(&temperature(21.5), 1, false);
        let (t1, _) = fw1.push(&first, -100, -2.0).await.unwrap();
        let (t2, _) = fw2.push(&first, -70, 8.0).await.unwrap();
        fw1.push_ack(t1, EVENT_TIMEOUT).await.unwrap();
        fw2.push_ack(t2, EVENT_TIMEOUT).await.unwrap();
        assert!(!fw1.has_pull_resp() && !fw2.has_pull_resp(), "nothing to send an unconfirmed uplink");

        // The same frame again is a repeat; an older one after a newer one is a replay.
        let (t, _) = fw1.push(&first, -100, -2.0).await.unwrap();
        fw1.push_ack(t, EVENT_TIMEOUT).await.unwrap();
        wait_rejected(addr, "repeated", 1.0);
        let second = soil.uplink(&temperature(22.0), 1, false);
        let (t, _) = fw1.push(&second, -90, 3.0).await.unwrap();
        fw1.push_ack(t, EVENT_TIMEOUT).await.unwrap();
        let (t, _) = fw1.push(&first, -100, -2.0).await.unwrap();
        fw1.push_ack(t, EVENT_TIMEOUT).await.unwrap();
        wait_rejected(addr, "replayed", 1.0);

        // A confirmed uplink is acknowledged through the concentrator that heard it best.
        let confirmed = soil.uplink(&temperature(22.5), 1, true);
        let (_, _) = fw1.push(&confirmed, -110, -5.0).await.unwrap();
        let (t, rx) = fw2.push(&confirmed, -60, 9.0).await.unwrap();
        let down = fw2.pull_resp(EVENT_TIMEOUT).await.unwrap();
        let rx1 = (Some(rx.tmst.wrapping_add(1_000_000)), rx.freq);
        let rx2 = (Some(rx.tmst.wrapping_add(2_000_000)), 869.525);
        assert!([rx1, rx2].contains(&(down.tmst, down.freq)), "the better reception's windows: {down:?}");
        assert!(soil.downlink(&down.data).unwrap().ack, "the downlink acknowledges");
        fw2.push_ack(t, EVENT_TIMEOUT).await.unwrap();

        // A command through the gRPC API is queued, then goes down after the next uplink.
        let set = v1::Command {
            id: "open-valve-1".into(),
            device: "soil-1".into(),
            created_ns: 0,
            action: Some(v1::command::Action::Set(v1::SetValue {
                metric: "digital_output_4".into(),
                value: 1.0,
            })),
        };
        // (send_command runs its own runtime: on a thread of its own, outside this one.)
        let command =
            |c: v1::Command| std::thread::spawn(move || send_command(grpc, None, c)).join().unwrap();
        let sent = command(set.clone()).unwrap();
        assert_eq!(sent.status(), v1::DeliveryStatus::Queued, "{sent:?}");
        let mut bad = set.clone();
        bad.id = "bad-1".into();
        bad.action = Some(v1::command::Action::Set(v1::SetValue { metric: "nonsense".into(), value: 1.0 }));
        assert_eq!(command(bad).unwrap_err().code(), tonic::Code::FailedPrecondition);
        let third = soil.uplink(&temperature(23.0), 1, false);
        let (t, _) = fw1.push(&third, -90, 3.0).await.unwrap();
        let down = fw1.pull_resp(EVENT_TIMEOUT).await.unwrap();
        let down = soil.downlink(&down.data).unwrap();
        assert_eq!(
            (down.f_port, down.payload),
            (Some(10), vec![4, 1, 1]),
            "Cayenne LPP digital output 4 = 1"
        );
        fw1.push_ack(t, EVENT_TIMEOUT).await.unwrap();
        wait_metric(addr, "fieldgate_lorawan_downlinks_total{outcome=\"tx_ok\"}", 3.0);

        // An ABP device, and a frame under its address with the wrong keys.
        let (t, _) = fw1.push(&gauge.uplink(&temperature(4.0), 1, false), -95, 1.0).await.unwrap();
        fw1.push_ack(t, EVENT_TIMEOUT).await.unwrap();
        let mut forger = Device::abp(
            "x",
            GAUGE_EUI,
            GAUGE_ADDR,
            SessionKeys { nwk_s_key: [7; 16], app_s_key: [7; 16] },
            Codec::CayenneLpp,
        );
        forger.fcnt_up = 50;
        let (t, _) = fw1.push(&forger.uplink(&temperature(99.0), 1, false), -95, 1.0).await.unwrap();
        fw1.push_ack(t, EVENT_TIMEOUT).await.unwrap();
        wait_rejected(addr, "bad_mic", 1.0);

        // A concentrator's statistics show in the health report.
        let stat = gwmp::Stat {
            rxnb: Some(12),
            rxok: Some(11),
            rxfw: Some(11),
            ackr: Some(100.0),
            ..Default::default()
        };
        fw2.stat(&stat, EVENT_TIMEOUT).await.unwrap();
        let health = wait_health(addr, "lorawan", "up");
        let detail = health["components"]["lorawan"]["detail"].as_str().unwrap();
        assert!(
            detail.contains(&format!("{GW2}: received 12, crc ok 11, forwarded 11, acked 100%")),
            "{detail}"
        );
        (join_request, third)
    });
    assert_eq!(metric(addr, "fieldgate_lorawan_uplinks_total"), Some(5.0));
    assert_eq!(metric(addr, "fieldgate_lorawan_duplicates_total"), Some(2.0));
    let (_, _, devices) = http_get(addr, "/devices");
    assert!(devices.contains("soil-1") && devices.contains("lorawan"), "{devices}");
    gw.stop_cleanly();

    // After a restart the counters and DevNonces are still known: nothing replays.
    let mut gw = GatewayProcess::spawn(&["run", "--config", config]);
    let addr = gw.wait_started();
    wait_health(addr, "lorawan", "up");
    rt.block_on(async {
        let mut fw1 = Forwarder::connect(GW1, server).await.unwrap();
        fw1.pull(EVENT_TIMEOUT).await.unwrap();
        let (t, _) = fw1.push(&stored_frame, -90, 3.0).await.unwrap();
        fw1.push_ack(t, EVENT_TIMEOUT).await.unwrap();
        let (t, _) = fw1.push(&join_request, -90, 3.0).await.unwrap();
        fw1.push_ack(t, EVENT_TIMEOUT).await.unwrap();
        let next = soil.uplink(&temperature(24.0), 1, false);
        let (t, _) = fw1.push(&next, -90, 3.0).await.unwrap();
        fw1.push_ack(t, EVENT_TIMEOUT).await.unwrap();
    });
    assert_eq!(rejected(addr, "repeated"), 1.0);
    assert_eq!(rejected(addr, "dev_nonce_replayed"), 1.0);
    assert_eq!(metric(addr, "fieldgate_lorawan_uplinks_total"), Some(1.0));

    // A GPS concentrator's time of reception is the readings' time, when it is believable: ten
    // minutes old is (a forwarder that buffered through an outage), two days old or five
    // minutes ahead of the gateway's clock is not, and those frames keep their arrival time.
    let now = fieldgate_proto::Timestamp::now();
    let minutes = |m: i64| fieldgate_proto::Timestamp::from_nanos(now.as_nanos() + m * 60_000_000_000);
    let heard = [(5.0, minutes(-10)), (6.0, minutes(-2 * 24 * 60)), (7.0, minutes(5))];
    rt.block_on(async {
        let mut fw1 = Forwarder::connect(GW1, server).await.unwrap();
        for (value, at) in heard {
            let frame = gauge.uplink(&temperature(value), 1, false);
            let (t, _) = fw1.push_heard_at(&frame, -90, 3.0, Some(at)).await.unwrap();
            fw1.push_ack(t, EVENT_TIMEOUT).await.unwrap();
        }
    });
    let after = fieldgate_proto::Timestamp::now();
    assert_eq!(metric(addr, "fieldgate_lorawan_concentrator_time_ignored_total"), Some(2.0));
    gw.stop_cleanly();
    let stored = |value: f64| {
        fieldgate_tests::recording_rows(&dir.path().join("data"))
            .into_iter()
            .find(|r| r.0 == "gauge-2" && r.1 == "temperature_3" && r.3 == value)
            .unwrap()
            .2
    };
    assert_eq!(stored(5.0), minutes(-10).as_nanos());
    for value in [6.0, 7.0] {
        assert!((now.as_nanos()..=after.as_nanos()).contains(&stored(value)), "{value} at its arrival");
    }

    // Every accepted uplink is in the recordings exactly once, with its link metrics.
    let rows = recorded_values(&dir.path().join("data"));
    let of = |device: &str, metric: &str| -> Vec<f64> {
        let mut v: Vec<f64> = rows.iter().filter(|r| r.0 == device && r.1 == metric).map(|r| r.2).collect();
        v.sort_by(f64::total_cmp);
        v
    };
    assert_eq!(of("soil-1", "temperature_3"), vec![21.5, 22.0, 22.5, 23.0, 24.0]);
    assert_eq!(of("gauge-2", "temperature_3"), vec![4.0, 5.0, 6.0, 7.0]);
    assert_eq!(of("soil-1", "lora_receivers"), vec![1.0, 1.0, 1.0, 2.0, 2.0], "two frames heard twice");
    assert!(of("soil-1", "lora_snr_db").contains(&9.0), "the best reception's SNR");
}

/// kill -9 while uplinks flow: every uplink whose PUSH_ACK came back is in the recordings after
/// the restart, and none of the frames accepted before the kill is accepted again.
#[test]
fn a_gateway_killed_mid_stream_keeps_every_acknowledged_uplink_and_reopens_no_replay() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_udp_port();
    let lora = format!(
        "[store]\nrecordings = true\n\n[lorawan]\nlisten = \"127.0.0.1:{port}\"\ndedup_window = \"0s\"\n\n\
         [[lorawan.device]]\nid = \"gauge-2\"\ndev_eui = \"{GAUGE_EUI}\"\ndev_addr = \"{GAUGE_ADDR:08x}\"\n\
         nwk_s_key = \"11111111111111111111111111111111\"\napp_s_key = \"22222222222222222222222222222222\"\n"
    );
    let config = write_config(dir.path(), &lora);
    let config = config.to_str().unwrap();
    let server: SocketAddr = ([127, 0, 0, 1], port).into();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut gauge = Device::abp("gauge-2", GAUGE_EUI, GAUGE_ADDR, gauge_keys(), Codec::CayenneLpp);
    let mut gw = GatewayProcess::spawn(&["run", "--config", config]);
    gw.wait_started();
    // Frames go out back to back; the kill lands while some are unanswered.
    let frames: Vec<Vec<u8>> = (0..400).map(|i| gauge.uplink(&temperature(f64::from(i)), 1, false)).collect();
    let acked: Vec<usize> = rt.block_on(async {
        let mut fw = Forwarder::connect(GW1, server).await.unwrap();
        let mut tokens = Vec::new();
        let mut acks = Vec::new();
        for frame in &frames[..=100] {
            tokens.push(fw.push(frame, -80, 5.0).await.unwrap().0);
        }
        // The first 101 acknowledged (in any order), the rest sent back to back and the
        // gateway killed while they are being stored.
        for token in &tokens {
            fw.push_ack(*token, EVENT_TIMEOUT).await.unwrap();
            acks.push(*token);
        }
        for (i, frame) in frames.iter().enumerate().skip(101) {
            // After the kill the port refuses: the rest are simply lost in flight.
            match fw.push(frame, -80, 5.0).await {
                Ok((token, _)) => tokens.push(token),
                Err(_) => break,
            }
            if i == 300 {
                gw.signal(nix::sys::signal::Signal::SIGKILL);
            }
        }
        acks.extend(fw.take_push_acks());
        tokens.iter().enumerate().filter(|(_, t)| acks.contains(t)).map(|(i, _)| i).collect::<Vec<usize>>()
    });
    gw.wait_exit();
    assert!(acked.len() >= 101 && acked.len() < 400, "{} acknowledged", acked.len());

    let mut gw = GatewayProcess::spawn(&["run", "--config", config]);
    let addr = gw.wait_started();
    wait_health(addr, "lorawan", "up");
    rt.block_on(async {
        let mut fw = Forwarder::connect(GW1, server).await.unwrap();
        // Every frame sent before the kill again: none may be accepted a second time.
        for frame in &frames {
            let (t, _) = fw.push(frame, -80, 5.0).await.unwrap();
            fw.push_ack(t, EVENT_TIMEOUT).await.unwrap();
        }
    });
    let accepted_again = metric(addr, "fieldgate_lorawan_uplinks_total").unwrap_or(0.0);
    gw.stop_cleanly();
    let values: Vec<f64> = recorded_values(&dir.path().join("data"))
        .into_iter()
        .filter(|r| r.1 == "temperature_3")
        .map(|r| r.2)
        .collect();
    for i in &acked {
        assert_eq!(
            values.iter().filter(|v| **v == *i as f64).count(),
            1,
            "acknowledged uplink {i} stored once"
        );
    }
    // After the restart only frames never accepted before the kill can pass (those lost in
    // flight, unacknowledged); each value is stored at most once.
    let mut sorted = values.clone();
    sorted.sort_by(f64::total_cmp);
    sorted.dedup();
    assert_eq!(sorted.len(), values.len(), "no uplink stored twice");
    assert!(accepted_again <= (400 - acked.len()) as f64, "{accepted_again} accepted again");
}
