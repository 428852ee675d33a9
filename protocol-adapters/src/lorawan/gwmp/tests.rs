use super::*;
use proptest::prelude::*;

const GW: [u8; 8] = [0xaa, 0x55, 0x5a, 0x00, 0x00, 0x00, 0x01, 0x01];

fn datagram(version: u8, token: u16, ident: u8, json: &str) -> Vec<u8> {
    let mut d = vec![version];
    d.extend_from_slice(&token.to_be_bytes());
    d.push(ident);
    d.extend_from_slice(&GW);
    d.extend_from_slice(json.as_bytes());
    d
}

#[test]
fn a_push_data_gives_its_packets_and_statistics() {
    let json = r#"{"rxpk":[{"tmst":3512348611,"chan":2,"rfch":0,"freq":868.500000,"stat":1,"modu":"LORA",
        "datr":"SF9BW125","codr":"4/5","rssi":-87,"lsnr":7.5,"size":5,"data":"QAECAwQ="},
        {"tmst":12,"freq":868.1,"stat":-1,"modu":"FSK","datr":50000,"rssi":-120,"size":1,"data":"AA=="}],
        "stat":{"time":"2026-11-25 06:00:00 GMT","rxnb":2,"rxok":1,"rxfw":1,"ackr":100.0,"dwnb":0,"txnb":0}}"#;
    let up = decode(&datagram(2, 0xbeef, PUSH_DATA, json)).unwrap();
    let Upstream::PushData { version, token, gateway, data } = up else { panic!("not a PUSH_DATA: {up:?}") };
    assert_eq!((version, token, gateway.to_string()), (2, 0xbeef, "aa555a0000000101".to_owned()));
    assert_eq!(data.rxpk.len(), 2);
    let first = data.rxpk[0].as_ref().unwrap();
    assert_eq!(first.tmst, 3_512_348_611);
    assert_eq!(first.data, vec![0x40, 1, 2, 3, 4]);
    assert_eq!(first.datr, DataRate::Lora("SF9BW125".into()));
    assert_eq!((first.rssi, first.lsnr, first.stat, first.chan), (-87, Some(7.5), 1, Some(2)));
    let second = data.rxpk[1].as_ref().unwrap();
    assert_eq!((second.datr.clone(), second.stat, second.codr.clone()), (DataRate::Fsk(50_000), -1, None));
    let stat = data.stat.unwrap();
    assert_eq!((stat.rxnb, stat.rxok, stat.ackr), (Some(2), Some(1), Some(100.0)));
}

#[test]
fn one_bad_packet_costs_only_its_own_slot() {
    let json = r#"{"rxpk":[
        {"tmst":1,"freq":868.1,"modu":"LORA","datr":"SF7BW125","codr":"4/5","rssi":-50,"size":2,"data":"!!"},
        {"tmst":2,"freq":868.1,"modu":"LORA","datr":"SF7BW125","codr":"4/5","rssi":-50,"size":9,"data":"AQI="},
        {"tmst":3,"freq":868.1,"modu":"LORA","datr":"SF7BW125","codr":"4/5","data":"AQI="},
        {"tmst":4,"freq":868.1,"modu":"LORA","datr":"SF7BW125","codr":"4/5","rssi":-50,"size":2,"data":"AQI="}]}"#;
    let Upstream::PushData { data, .. } = decode(&datagram(1, 1, PUSH_DATA, json)).unwrap() else {
        panic!("not a PUSH_DATA")
    };
    let reasons: Vec<&str> =
        data.rxpk.iter().map(|r| r.as_ref().map_or_else(|e| e.reason(), |_| "ok")).collect();
    assert_eq!(reasons, ["bad_base64", "size_mismatch", "bad_json", "ok"]);
    assert_eq!(data.rxpk[3].as_ref().unwrap().stat, 1, "a missing CRC status means a good one");
    assert_eq!(data.stat, None);
}

#[test]
fn a_pull_data_and_both_kinds_of_tx_ack() {
    assert_eq!(
        decode(&datagram(2, 7, PULL_DATA, "")).unwrap(),
        Upstream::PullData { version: 2, token: 7, gateway: Eui64(GW) }
    );
    let ok = decode(&datagram(2, 8, TX_ACK, r#"{"txpk_ack":{"error":"NONE"}}"#)).unwrap();
    assert_eq!(ok, Upstream::TxAck { version: 2, token: 8, gateway: Eui64(GW), error: None });
    let late = decode(&datagram(2, 9, TX_ACK, r#"{"txpk_ack":{"error":"TOO_LATE"}}"#)).unwrap();
    assert_eq!(
        late,
        Upstream::TxAck { version: 2, token: 9, gateway: Eui64(GW), error: Some("TOO_LATE".into()) }
    );
    let bare = decode(&datagram(1, 10, TX_ACK, "\0")).unwrap();
    assert_eq!(bare, Upstream::TxAck { version: 1, token: 10, gateway: Eui64(GW), error: None });
}

#[test]
fn bad_datagrams_are_errors_with_a_reason() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![], "truncated"),
        (vec![2, 0, 1], "truncated"),
        (vec![2, 0, 1, PUSH_DATA, 0xaa], "truncated"),
        (vec![3, 0, 1, PULL_DATA, 0, 0, 0, 0, 0, 0, 0, 0], "unsupported_version"),
        (vec![0, 0, 1, PULL_DATA, 0, 0, 0, 0, 0, 0, 0, 0], "unsupported_version"),
        (datagram(2, 1, PUSH_ACK, ""), "unexpected_identifier"),
        (datagram(2, 1, PULL_RESP, "{}"), "unexpected_identifier"),
        (datagram(2, 1, PUSH_DATA, "{\"rxpk\":["), "bad_json"),
        (datagram(2, 1, PUSH_DATA, "not json"), "bad_json"),
        (datagram(2, 1, TX_ACK, "{\"txpk_ack\":"), "bad_json"),
    ];
    for (bytes, reason) in cases {
        let err = decode(&bytes).unwrap_err();
        assert_eq!(err.reason(), reason, "{bytes:?}: {err}");
    }
}

#[test]
fn acks_echo_version_and_token() {
    assert_eq!(push_ack(2, 0xbeef), [2, 0xbe, 0xef, PUSH_ACK]);
    assert_eq!(pull_ack(1, 0x0102), [1, 0x01, 0x02, PULL_ACK]);
}

#[test]
fn a_pull_resp_carries_the_txpk_as_forwarders_expect_it() {
    let txpk = Txpk {
        imme: false,
        tmst: Some(3_513_348_611),
        freq: 869.525,
        rfch: 0,
        powe: 14,
        datr: DataRate::Lora("SF9BW125".into()),
        codr: "4/5".into(),
        ipol: true,
        data: vec![0x60, 1, 2, 3],
    };
    let bytes = pull_resp(2, 0x1234, &txpk);
    assert_eq!(&bytes[..4], &[2, 0x12, 0x34, PULL_RESP]);
    let json: serde_json::Value = serde_json::from_slice(&bytes[4..]).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"txpk": {"imme": false, "tmst": 3_513_348_611u32, "freq": 869.525, "rfch": 0,
            "powe": 14, "modu": "LORA", "datr": "SF9BW125", "codr": "4/5", "ipol": true, "size": 4,
            "data": "YAECAw=="}})
    );

    // Sent at once: no timestamp.
    let now = pull_resp(2, 1, &Txpk { imme: true, ..txpk });
    let json: serde_json::Value = serde_json::from_slice(&now[4..]).unwrap();
    assert_eq!(json["txpk"].get("tmst"), None);
    assert_eq!(json["txpk"]["imme"], true);
}

proptest! {
    #[test]
    fn no_datagram_makes_decode_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = decode(&bytes);
    }

    #[test]
    fn no_push_data_json_makes_decode_panic(version in 1u8..=2, token: u16, json in ".{0,80}") {
        let _ = decode(&datagram(version, token, PUSH_DATA, &format!("{{\"rxpk\":[{json}]}}")));
    }
}

#[test]
fn the_forwarders_side_round_trips_through_the_servers_side() {
    let gw = Eui64(GW);
    let packet = Rxpk {
        tmst: 77,
        time: Some("2026-09-01T06:00:01.528002Z".into()),
        freq: 868.3,
        chan: Some(1),
        rfch: Some(0),
        stat: 1,
        modu: "LORA".into(),
        datr: DataRate::Lora("SF7BW125".into()),
        codr: Some("4/5".into()),
        rssi: -61,
        lsnr: Some(9.25),
        data: vec![0x40, 1, 2, 3],
    };
    let Upstream::PushData { token, gateway, data, .. } =
        decode(&push_data(2, 9, gw, std::slice::from_ref(&packet))).unwrap()
    else {
        panic!("not a PUSH_DATA")
    };
    assert_eq!((token, gateway), (9, gw));
    assert_eq!(data.rxpk, vec![Ok(packet)]);
    assert_eq!(
        decode(&pull_data(2, 10, gw)).unwrap(),
        Upstream::PullData { version: 2, token: 10, gateway: gw }
    );
    let Upstream::TxAck { error, .. } = decode(&tx_ack(2, 11, gw, Some("TOO_LATE"))).unwrap() else {
        panic!()
    };
    assert_eq!(error.as_deref(), Some("TOO_LATE"));
    let txpk = Txpk {
        imme: false,
        tmst: Some(5_000_077),
        freq: 869.525,
        rfch: 0,
        powe: 14,
        datr: DataRate::Lora("SF12BW125".into()),
        codr: "4/5".into(),
        ipol: true,
        data: vec![0x20, 9, 9],
    };
    assert_eq!(
        decode_downstream(&pull_resp(2, 12, &txpk)).unwrap(),
        Downstream::PullResp { version: 2, token: 12, txpk }
    );
    assert_eq!(decode_downstream(&push_ack(2, 13)).unwrap(), Downstream::PushAck { version: 2, token: 13 });
}
