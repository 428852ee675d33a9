use super::*;
use proptest::prelude::*;

fn m(name: &str) -> Metric {
    Metric::new(name).unwrap()
}

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn close(values: &[(Metric, f64)], expected: &[(&str, f64)]) {
    assert_eq!(values.len(), expected.len(), "{values:?}");
    for ((got_m, got_v), (m, v)) in values.iter().zip(expected) {
        assert_eq!(got_m.as_str(), *m);
        assert!((got_v - v).abs() < 1e-9, "{m}: {got_v} != {v}");
    }
}

#[test]
fn cayenne_lpp_examples_from_its_specification_decode() {
    // The examples of the Cayenne LPP documentation.
    let two_temps = Codec::CayenneLpp.decode(1, &hex("03 67 01 10 05 67 00 FF")).unwrap();
    close(&two_temps, &[("temperature_3", 27.2), ("temperature_5", 25.5)]);
    let negative = Codec::CayenneLpp.decode(1, &hex("01 67 FF D7")).unwrap();
    close(&negative, &[("temperature_1", -4.1)]);
    let accel = Codec::CayenneLpp.decode(1, &hex("06 71 04 D2 FB 2E 00 00")).unwrap();
    close(&accel, &[("accelerometer_x_6", 1.234), ("accelerometer_y_6", -1.234), ("accelerometer_z_6", 0.0)]);
    let gps = Codec::CayenneLpp.decode(1, &hex("01 88 06 76 5F F2 96 0A 00 03 E8")).unwrap();
    close(&gps, &[("gps_latitude_1", 42.3519), ("gps_longitude_1", -87.9094), ("gps_altitude_1", 10.0)]);
}

#[test]
fn bad_lpp_payloads_say_where() {
    assert_eq!(Codec::CayenneLpp.decode(1, &[]).unwrap_err(), CodecError::Empty);
    let e = Codec::CayenneLpp.decode(1, &hex("03 67 01")).unwrap_err();
    assert_eq!(e.reason(), "payload_truncated");
    assert_eq!(e.to_string(), "payload of 3 bytes ends inside temperature at byte 0");
    let e = Codec::CayenneLpp.decode(1, &hex("03 67 01 10 05 FE 00")).unwrap_err();
    assert_eq!(e, CodecError::UnknownLppType { kind: 0xfe, at: 5 });
}

fn layout() -> Codec {
    let f = |metric: &str, at, ty, big_endian, scale, offset| Field {
        metric: m(metric),
        at,
        ty,
        big_endian,
        scale,
        offset,
    };
    Codec::Layout(Layout {
        port: Some(2),
        fields: vec![
            f("moisture_pct", 0, FieldType::U16, true, 0.1, 0.0),
            f("soil_temp_c", 2, FieldType::I16, false, 0.01, 0.0),
            f("battery_v", 4, FieldType::U8, true, 0.02, 2.0),
            f("ec_us_cm", 5, FieldType::F32, false, 1.0, 0.0),
            f("depth_mm", 9, FieldType::I24, true, 1.0, 0.0),
        ],
    })
}

#[test]
fn a_layout_reads_its_fields_in_their_orders() {
    let mut payload = vec![0x01, 0x5e, 0x2e, 0xfb, 0x32];
    payload.extend_from_slice(&812.5f32.to_le_bytes());
    payload.extend_from_slice(&[0xff, 0xff, 0x38]);
    let values = layout().decode(2, &payload).unwrap();
    close(
        &values,
        &[
            ("moisture_pct", 35.0),
            ("soil_temp_c", -12.34),
            ("battery_v", 3.0),
            ("ec_us_cm", 812.5),
            ("depth_mm", -200.0),
        ],
    );
    assert_eq!(layout().decode(3, &payload).unwrap_err().reason(), "unexpected_port");
    let e = layout().decode(2, &payload[..7]).unwrap_err();
    assert_eq!(e.to_string(), "payload of 7 bytes ends inside field `ec_us_cm` at byte 5");
}

#[test]
fn setpoints_encode_with_the_definition_readings_decode_with() {
    let codec = layout();
    let bytes = codec.encode_setpoint(&m("moisture_pct"), 35.0).unwrap();
    assert_eq!(bytes, vec![0x01, 0x5e]);
    assert_eq!(codec.encode_setpoint(&m("nope"), 1.0).unwrap_err().reason(), "not_encodable");
    assert_eq!(codec.encode_setpoint(&m("battery_v"), 99.0).unwrap_err().reason(), "not_encodable");
    let lpp = Codec::CayenneLpp.encode_setpoint(&m("digital_output_4"), 1.0).unwrap();
    assert_eq!(lpp, vec![4, 1, 1]);
    assert!(Codec::CayenneLpp.encode_setpoint(&m("accelerometer_x_1"), 1.0).is_err());
}

proptest! {
    #[test]
    fn no_bytes_make_a_codec_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64), port: u8) {
        let _ = Codec::CayenneLpp.decode(port, &bytes);
        let _ = layout().decode(port, &bytes);
    }

    #[test]
    fn layout_values_round_trip(moisture in 0u16..6000, temp in -3000i16..3000, volts in 0u8..=255,
                                ec in 0f32..10000.0, depth in -8_000_000i32..8_000_000) {
        let values = vec![
            (m("moisture_pct"), f64::from(moisture) * 0.1),
            (m("soil_temp_c"), f64::from(temp) * 0.01),
            (m("battery_v"), f64::from(volts) * 0.02 + 2.0),
            (m("ec_us_cm"), f64::from(ec)),
            (m("depth_mm"), f64::from(depth)),
        ];
        let bytes = layout().encode(&values).unwrap();
        let back = layout().decode(2, &bytes).unwrap();
        for ((_, a), (_, b)) in values.iter().zip(&back) {
            prop_assert!((a - b).abs() < 1e-6 * a.abs().max(1.0), "{a} != {b}");
        }
    }

    #[test]
    fn lpp_values_round_trip(channel: u8, temp in -3276i32..3276, hum in 0u8..=200) {
        let values = vec![
            (m(&format!("temperature_{channel}")), f64::from(temp) / 10.0),
            (m(&format!("humidity_{channel}")), f64::from(hum) / 2.0),
        ];
        let bytes = Codec::CayenneLpp.encode(&values).unwrap();
        let back = Codec::CayenneLpp.decode(1, &bytes).unwrap();
        prop_assert_eq!(back.len(), 2);
        for ((am, a), (bm, b)) in values.iter().zip(&back) {
            prop_assert_eq!(am, bm);
            prop_assert!((a - b).abs() < 1e-9);
        }
    }
}

#[test]
fn instructions_round_trip_and_fit_the_slowest_data_rate() {
    use fieldgate_proto::Task;
    let bytes = encode_instruction(Task::Serve, Some("combine-12"), 51);
    assert_eq!(bytes[0], 1);
    assert_eq!(decode_instruction(&bytes).unwrap(), (Task::Serve, Some("combine-12".to_owned())));
    assert_eq!(decode_instruction(&encode_instruction(Task::Haul, None, 51)).unwrap(), (Task::Haul, None));
    // US915 DR0 carries 11 bytes: the name is cut, the task is not.
    assert_eq!(encode_instruction(Task::UnloadInto, Some("truck-with-a-long-name"), 11).len(), 11);
    assert!(decode_instruction(&[]).is_err());
    assert!(decode_instruction(&[9, b'x']).is_err());
}
