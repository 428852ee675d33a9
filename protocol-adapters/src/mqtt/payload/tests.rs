use super::*;

/// A mapping with defaults: no fixed device or metric, no timestamp, 1 KiB payloads.
pub(crate) fn mapping(topic: &str, format: PayloadFormat) -> Mapping {
    Mapping {
        topic: TopicPattern::parse(topic).unwrap(),
        format,
        device: None,
        metric: None,
        fields: Vec::new(),
        timestamp: None,
        timestamp_required: true,
        timestamp_unit: TimestampUnit::Auto,
        max_payload: 1024,
    }
}

const RECEIVED: Timestamp = Timestamp::from_nanos(1_795_509_000_000_000_000);

fn values(readings: &[Reading]) -> Vec<(String, String, f64, i64)> {
    readings.iter().map(|r| (r.device.to_string(), r.metric.to_string(), r.value, r.ts.as_nanos())).collect()
}

#[test]
fn json_objects_give_every_number_nested_fields_joined() {
    let m = vec![mapping("fleet/{device}/telemetry", PayloadFormat::Json)];
    let payload = br#"{"tank_fill_kg": 5200.5, "engine": {"rpm": 1800, "on": true}, "state": "harvesting", "ids": [1, 2], "x": null}"#;
    let got = values(&decode(&m, "fleet/combine-1/telemetry", payload, RECEIVED).unwrap());
    let t = RECEIVED.as_nanos();
    let mut want = vec![
        ("combine-1".into(), "engine/on".into(), 1.0, t),
        ("combine-1".into(), "engine/rpm".into(), 1800.0, t),
        ("combine-1".into(), "tank_fill_kg".into(), 5200.5, t),
    ];
    let mut got_sorted = got.clone();
    got_sorted.sort_by(|a, b| a.1.cmp(&b.1));
    want.sort_by(|a: &(String, String, f64, i64), b| a.1.cmp(&b.1));
    assert_eq!(got_sorted, want);
}

#[test]
fn timestamps_in_every_form() {
    let mut m = mapping("t/{device}", PayloadFormat::Json);
    m.timestamp = Some("/ts".into());
    let base = 1_795_509_000_i64; // 2026-11-24T08:30:00Z
    let cases: Vec<(String, i64)> = vec![
        (r#""2026-11-24T09:30:00.25+01:00""#.into(), base * 1_000_000_000 + 250_000_000),
        (format!("{base}"), base * 1_000_000_000),
        (format!("{base}.5"), base * 1_000_000_000 + 500_000_000),
        (format!("{}", base * 1000 + 7), base * 1_000_000_000 + 7_000_000),
        (format!("{}", base * 1_000_000 + 7), base * 1_000_000_000 + 7_000),
        (format!("{}", base * 1_000_000_000 + 7), base * 1_000_000_000 + 7),
    ];
    for (ts, want) in cases {
        let payload = format!(r#"{{"ts": {ts}, "v": 1}}"#);
        let r = decode(&[m.clone()], "t/d1", payload.as_bytes(), RECEIVED).unwrap();
        assert_eq!(r.len(), 1, "the timestamp is not itself a metric");
        assert_eq!(r[0].ts.as_nanos(), want, "{ts}");
    }
    m.timestamp_unit = TimestampUnit::Millis;
    let r = decode(&[m.clone()], "t/d1", br#"{"ts": 1000, "v": 1}"#, RECEIVED).unwrap();
    assert_eq!(r[0].ts.as_nanos(), 1_000_000_000, "a declared unit wins over the size rule");
}

#[test]
fn explicit_fields_read_json_pointers() {
    let mut m = mapping("bins/{device}", PayloadFormat::Json);
    m.fields = vec![Field { metric: Metric::new("level_pct").unwrap(), pointer: "/status/level".into() }];
    let r =
        decode(&[m.clone()], "bins/bin-1", br#"{"status": {"level": 71.5, "temp": 9}}"#, RECEIVED).unwrap();
    assert_eq!(values(&r), vec![("bin-1".into(), "level_pct".into(), 71.5, RECEIVED.as_nanos())]);
}

#[test]
fn plain_numbers_and_booleans_take_their_metric_from_the_topic() {
    let m = vec![mapping("sensors/{device}/{metric}", PayloadFormat::Number)];
    let r = decode(&m, "sensors/probe-7/soil_moisture", b" 31.25\n", RECEIVED).unwrap();
    assert_eq!(values(&r), vec![("probe-7".into(), "soil_moisture".into(), 31.25, RECEIVED.as_nanos())]);

    let mut m = mapping("pumps/{device}/running", PayloadFormat::Bool);
    m.metric = Some(Metric::new("running").unwrap());
    for (payload, v) in [("ON", 1.0), ("false", 0.0), ("1", 1.0)] {
        let r = decode(&[m.clone()], "pumps/p1/running", payload.as_bytes(), RECEIVED).unwrap();
        assert_eq!(r[0].value, v, "{payload}");
    }
    let mut m = mapping("weather/temperature", PayloadFormat::Number);
    m.device = Some(DeviceId::new("weather-station").unwrap());
    let r = decode(&[m], "weather/temperature", b"-3.5", RECEIVED).unwrap();
    assert_eq!(values(&r), vec![("weather-station".into(), "temperature".into(), -3.5, RECEIVED.as_nanos())]);
}

#[test]
fn every_bad_input_has_a_reason() {
    let mut fields = mapping("f/{device}", PayloadFormat::Json);
    fields.fields = vec![Field { metric: Metric::new("level").unwrap(), pointer: "/level".into() }];
    let mut stamped = mapping("s/{device}", PayloadFormat::Json);
    stamped.timestamp = Some("/ts".into());
    let m = vec![
        mapping("j/{device}", PayloadFormat::Json),
        fields,
        stamped,
        mapping("n/{device}/{metric}", PayloadFormat::Number),
        mapping("b/{device}/x", PayloadFormat::Bool),
    ];
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("other/topic", b"1".to_vec(), "unknown_topic"),
        ("j/d1", vec![b' '; 2000], "oversized"),
        ("j/d1", b"{not json".to_vec(), "not_json_object"),
        ("j/d1", b"[1, 2]".to_vec(), "not_json_object"),
        ("j/d1", br#"{"state": "idle"}"#.to_vec(), "no_numeric_fields"),
        ("j/d1", br#"{"bad name": 1}"#.to_vec(), "bad_metric"),
        ("f/d1", br#"{"other": 1}"#.to_vec(), "missing_field"),
        ("f/d1", br#"{"level": "high"}"#.to_vec(), "not_numeric"),
        ("s/d1", br#"{"v": 1}"#.to_vec(), "bad_timestamp"),
        ("s/d1", br#"{"ts": "yesterday", "v": 1}"#.to_vec(), "bad_timestamp"),
        ("s/d1", br#"{"ts": 1e300, "v": 1}"#.to_vec(), "bad_timestamp"),
        ("n/d1/m", b"twelve".to_vec(), "not_numeric"),
        ("n/d1/m", vec![0xff, 0xfe], "not_numeric"),
        ("b/d1/x", b"maybe".to_vec(), "not_numeric"),
        ("j/bad device", b"{\"v\": 1}".to_vec(), "bad_device"),
    ];
    for (topic, payload, reason) in cases {
        let err = decode(&m, topic, &payload, RECEIVED).unwrap_err();
        assert_eq!(err.reason(), reason, "{topic} {:?}: {err}", String::from_utf8_lossy(&payload));
    }
}

#[test]
fn the_first_matching_mapping_wins() {
    let mut special = mapping("fleet/combine-9/telemetry", PayloadFormat::Json);
    special.device = Some(DeviceId::new("c9-renamed").unwrap());
    let m = vec![special, mapping("fleet/{device}/telemetry", PayloadFormat::Json)];
    let r = decode(&m, "fleet/combine-9/telemetry", br#"{"v": 1}"#, RECEIVED).unwrap();
    assert_eq!(r[0].device.as_str(), "c9-renamed");
    let r = decode(&m, "fleet/combine-1/telemetry", br#"{"v": 1}"#, RECEIVED).unwrap();
    assert_eq!(r[0].device.as_str(), "combine-1");
}

proptest::proptest! {
    /// Untrusted bytes never panic the decoder, whatever the format.
    #[test]
    fn garbage_never_panics(payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), fmt in 0u8..3) {
        let format = [PayloadFormat::Json, PayloadFormat::Number, PayloadFormat::Bool][fmt as usize];
        let mut m = mapping("x/{device}/{metric}", format);
        m.timestamp = Some("/ts".into());
        let _ = decode(&[m], "x/d/m", &payload, RECEIVED);
    }
}

#[test]
fn an_optional_timestamp_falls_back_to_the_time_of_receipt() {
    let mut m = mapping("s/{device}", PayloadFormat::Json);
    m.timestamp = Some("/ts".into());
    m.timestamp_required = false;
    let m = [m];
    let stamped = decode(&m, "s/d1", br#"{"ts": 1767225600, "v": 1}"#, RECEIVED).unwrap();
    assert_eq!(values(&stamped), [("d1".into(), "v".into(), 1.0, 1_767_225_600_000_000_000)]);
    let unstamped = decode(&m, "s/d1", br#"{"v": 2}"#, RECEIVED).unwrap();
    assert_eq!(values(&unstamped), [("d1".into(), "v".into(), 2.0, RECEIVED.as_nanos())]);
    // Present but unreadable is still an error: a wrong time is worse than none.
    assert_eq!(
        decode(&m, "s/d1", br#"{"ts": "soon", "v": 1}"#, RECEIVED).unwrap_err().reason(),
        "bad_timestamp"
    );
}
