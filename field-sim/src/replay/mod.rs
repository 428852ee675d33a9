//! `field-sim replay`: recorded readings sent again over the protocol they came by, into a
//! gateway, with their original relative timing scaled by a speed factor or as fast as the
//! gateway acknowledges them.
//!
//! The gateway config says how each device's readings travel: for MQTT, the first mapping
//! that can carry the device (its `{device}` topic, or the device it is fixed to) gives the
//! topic and the payload (the metrics at their fields, the recorded time at its `timestamp`
//! field, so the new gateway stores the readings at their original times). Readings of one
//! device at one instant go in one message, as devices send them. For a Modbus device of
//! the config (over TCP), field-sim serves its registers at the address the gateway polls and
//! sets each recorded value at its time ([`modbus`]). Readings recorded from LoRaWAN devices
//! cannot be replayed yet; they are counted, per device, in the summary, with the reason.

pub mod input;
pub mod modbus;

use fieldgate::Config;
use fieldgate_adapters::mqtt::{Mapping, PayloadFormat, TimestampUnit};
use fieldgate_proto::Timestamp;
use input::Row;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How fast to replay.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// The original gaps divided by this.
    Speed(f64),
    /// Every message as soon as the broker takes it.
    AsFastAsPossible,
}

/// What a replay did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Summary {
    /// Readings sent, per device and protocol.
    pub sent: BTreeMap<String, BTreeMap<String, u64>>,
    /// Readings not sent, per device, with the reason.
    pub unsent: BTreeMap<String, (String, u64)>,
    pub readings: u64,
    pub messages: u64,
    /// Messages the broker acknowledged (QoS 1).
    pub acknowledged: u64,
    pub seconds: f64,
    pub readings_per_s: f64,
    /// Things to know, e.g. a mapping without a timestamp field.
    pub warnings: Vec<String>,
}

/// One MQTT message to send.
#[derive(Debug, Clone)]
struct Message {
    ts: Timestamp,
    topic: String,
    payload: Vec<u8>,
    readings: u64,
    device: String,
}

/// The mapping that carries `device`'s readings, and its topic for them.
fn mapping_for<'m>(mappings: &'m [Mapping], device: &str, metric: &str) -> Option<(&'m Mapping, String)> {
    mappings.iter().find_map(|m| {
        let fixed = m.device.as_ref().map(|d| d.as_str());
        if fixed.is_some_and(|d| d != device) || (fixed.is_none() && !m.topic.has_device()) {
            return None;
        }
        let topic = m.topic.render(device, Some(metric))?;
        // A `json` mapping that only reads some fields must have one for this metric.
        let fits = match m.format {
            PayloadFormat::Json => {
                m.fields.is_empty() || m.fields.iter().any(|f| f.metric.as_str() == metric)
            }
            PayloadFormat::Number | PayloadFormat::Bool => {
                m.topic.has_metric() || m.metric.as_ref().is_some_and(|x| x.as_str() == metric)
            }
        };
        fits.then_some((m, topic))
    })
}

/// Put `value` at JSON pointer `pointer` ("/a/b") of `object`, making objects on the way.
fn put(object: &mut serde_json::Value, pointer: &str, value: serde_json::Value) {
    let mut at = object;
    let keys: Vec<&str> = pointer.trim_start_matches('/').split('/').collect();
    for (i, key) in keys.iter().enumerate() {
        let key = key.replace("~1", "/").replace("~0", "~");
        if !at.is_object() {
            *at = serde_json::Value::Object(Default::default());
        }
        let map = at.as_object_mut().expect("made an object above");
        if i + 1 == keys.len() {
            map.insert(key, value);
            return;
        }
        at = map.entry(key).or_insert_with(|| serde_json::Value::Object(Default::default()));
    }
}

fn ts_value(ts: Timestamp, unit: TimestampUnit) -> serde_json::Value {
    let ns = ts.as_nanos();
    match unit {
        TimestampUnit::Auto | TimestampUnit::Nanos => ns.into(),
        TimestampUnit::Rfc3339 => ts.to_string().into(),
        TimestampUnit::Seconds => (ns as f64 / 1e9).into(),
        TimestampUnit::Millis => (ns as f64 / 1e6).into(),
        TimestampUnit::Micros => (ns as f64 / 1e3).into(),
    }
}

/// Turn rows (sorted by time) into MQTT messages and Modbus values (of the devices
/// `modbus` serves), and what cannot be sent into the summary.
fn plan<'r>(
    rows: &'r [Row],
    mappings: &[Mapping],
    modbus: &dyn Fn(&str) -> bool,
    summary: &mut Summary,
) -> (Vec<Message>, Vec<&'r Row>) {
    let mut out = Vec::new();
    let mut registers = Vec::new();
    let mut no_time = std::collections::BTreeSet::new();
    let mut i = 0;
    while i < rows.len() {
        // One device's readings of one instant.
        let mut j = i + 1;
        while j < rows.len() && rows[j].ts == rows[i].ts && rows[j].device == rows[i].device {
            j += 1;
        }
        let group = &rows[i..j];
        i = j;
        let device = &group[0].device;
        let mut json: BTreeMap<String, (&Mapping, serde_json::Value, u64)> = BTreeMap::new();
        for row in group {
            if row.source == "modbus" && modbus(device) {
                registers.push(row);
                continue;
            }
            if row.source != "mqtt" {
                let why = match row.source.as_str() {
                    "modbus" => {
                        "recorded from modbus: the gateway config has no Modbus TCP device of this id"
                            .to_owned()
                    }
                    other => format!("recorded from {other}: its replay is not supported yet"),
                };
                let entry = summary.unsent.entry(device.clone()).or_insert_with(|| (why, 0));
                entry.1 += 1;
                continue;
            }
            let Some((mapping, topic)) = mapping_for(mappings, device, &row.metric) else {
                let entry = summary.unsent.entry(device.clone()).or_insert_with(|| {
                    ("no MQTT mapping of the gateway config can carry this device's readings".to_owned(), 0)
                });
                entry.1 += 1;
                continue;
            };
            if mapping.timestamp.is_none() {
                no_time.insert(mapping.topic.filter());
            }
            match mapping.format {
                PayloadFormat::Json => {
                    let (_, object, count) = json
                        .entry(topic)
                        .or_insert_with(|| (mapping, serde_json::Value::Object(Default::default()), 0));
                    *count += 1;
                    let pointer = mapping
                        .fields
                        .iter()
                        .find(|f| f.metric.as_str() == row.metric)
                        .map_or_else(|| format!("/{}", row.metric), |f| f.pointer.clone());
                    put(object, &pointer, row.value.into());
                }
                PayloadFormat::Number | PayloadFormat::Bool => out.push(Message {
                    ts: row.ts,
                    topic,
                    payload: row.value.to_string().into_bytes(),
                    readings: 1,
                    device: device.clone(),
                }),
            }
        }
        for (topic, (mapping, mut object, readings)) in json {
            if let Some(pointer) = &mapping.timestamp {
                put(&mut object, pointer, ts_value(group[0].ts, mapping.timestamp_unit));
            }
            out.push(Message {
                ts: group[0].ts,
                topic,
                payload: object.to_string().into_bytes(),
                readings,
                device: device.clone(),
            });
        }
    }
    if !registers.is_empty() {
        summary.warnings.push(
            "Modbus carries no timestamps: the gateway stores the replayed Modbus values at its own poll times".to_owned(),
        );
    }
    for filter in no_time {
        summary.warnings.push(format!(
            "the mapping of `{filter}` has no timestamp field: its readings are stored at the time they arrive, not when they were recorded"
        ));
    }
    (out, registers)
}

/// The MQTT mappings of a gateway config (the defaults when it gives none).
pub fn mappings(config: &Config) -> Vec<Mapping> {
    match config.mqtt.as_ref().map(|m| &m.broker) {
        Some(fieldgate::config::MqttBroker::Embedded { broker, .. }) => broker.mappings.clone(),
        Some(fieldgate::config::MqttBroker::External(settings)) => settings.mappings.clone(),
        None => Vec::new(),
    }
}

/// Replay `rows` into the gateway whose MQTT broker is at `broker` and whose Modbus devices
/// are `buses` (field-sim serves those of them the rows have readings of).
pub async fn replay(
    rows: &[Row],
    mappings: &[Mapping],
    buses: &[fieldgate_adapters::modbus::BusSettings],
    broker: SocketAddr,
    pace: Pace,
) -> std::io::Result<Summary> {
    let mut summary = Summary::default();
    let recorded_modbus: std::collections::HashSet<&str> =
        rows.iter().filter(|r| r.source == "modbus").map(|r| r.device.as_str()).collect();
    let served = modbus::serve(buses, &|d| recorded_modbus.contains(d)).await?;
    let (messages, registers) = plan(rows, mappings, &|d| served.contains(d), &mut summary);
    let total: u64 = messages.iter().map(|m| m.readings).sum::<u64>() + registers.len() as u64;
    let mut options = MqttOptions::new(
        format!("field-sim-replay-{}", std::process::id()),
        broker.ip().to_string(),
        broker.port(),
    );
    options.set_keep_alive(Duration::from_secs(30));
    options.set_max_packet_size(1 << 20, 1 << 20);
    // Up to 1,000 messages unacknowledged: the gateway acknowledges after its WAL's group
    // commit, so a deep window keeps it busy.
    options.set_inflight(1000);
    let (client, mut events) = AsyncClient::new(options, 1000);
    let acked = Arc::new(AtomicU64::new(0));
    let (done_tx, mut done) = tokio::sync::watch::channel(0u64);
    let events_task = {
        let acked = acked.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        let n = acked.fetch_add(1, Ordering::Relaxed) + 1;
                        let _ = done_tx.send(n);
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                    Ok(_) => backoff = Duration::from_millis(100),
                    Err(e) => {
                        // rumqttc reconnects at once unless the caller waits (bytebeamio/rumqtt #703).
                        eprintln!("field-sim: MQTT connection to {broker}: {e}; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        })
    };
    let started = Instant::now();
    let first = match (messages.first(), registers.first()) {
        (Some(m), Some(r)) => Some(m.ts.min(r.ts)),
        (m, r) => m.map(|m| m.ts).or(r.map(|r| r.ts)),
    };
    let mut progress = Progress::new(total);
    let mut sent_readings = 0u64;
    let mut pending = registers.iter().peekable();
    let pace_to = |ts: Timestamp| {
        let due = match (pace, first) {
            (Pace::Speed(speed), Some(first)) => fieldgate::coordination::secs_between(first, ts) / speed,
            _ => 0.0,
        };
        due - started.elapsed().as_secs_f64()
    };
    for m in &messages {
        // Modbus values due before this message first.
        while let Some(row) = pending.next_if(|r| r.ts <= m.ts) {
            sent_readings += set_register(&served, row, &mut summary, pace_to(row.ts)).await;
        }
        let wait = pace_to(m.ts);
        if wait > 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
        }
        client
            .publish(m.topic.clone(), QoS::AtLeastOnce, false, m.payload.clone())
            .await
            .map_err(std::io::Error::other)?;
        *summary.sent.entry(m.device.clone()).or_default().entry("mqtt".to_owned()).or_default() +=
            m.readings;
        sent_readings += m.readings;
        summary.messages += 1;
        progress.update(sent_readings, started.elapsed());
    }
    for row in pending {
        sent_readings += set_register(&served, row, &mut summary, pace_to(row.ts)).await;
    }
    if !registers.is_empty() {
        // The gateway reads the last values at its next polls: hold them that long.
        tokio::time::sleep(served.hold).await;
    }
    // Every message acknowledged: the gateway has the readings durably.
    let want = summary.messages;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while *done.borrow() < want {
        if tokio::time::timeout_at(deadline, done.changed()).await.is_err() {
            break;
        }
    }
    summary.acknowledged = acked.load(Ordering::Relaxed);
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), events_task).await;
    progress.finish(sent_readings, started.elapsed());
    summary.readings = sent_readings;
    summary.seconds = started.elapsed().as_secs_f64();
    summary.readings_per_s = sent_readings as f64 / summary.seconds.max(1e-9);
    Ok(summary)
}

/// Wait `wait` seconds (the schedule), then put a recorded Modbus value into its device's
/// registers; the readings it counts.
async fn set_register(served: &modbus::Devices, row: &Row, summary: &mut Summary, wait: f64) -> u64 {
    if wait > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(wait)).await;
    }
    if served.set(&row.device, &row.metric, row.value) {
        *summary.sent.entry(row.device.clone()).or_default().entry("modbus".to_owned()).or_default() += 1;
        1
    } else {
        let entry = summary.unsent.entry(row.device.clone()).or_insert_with(|| {
            (format!("no point for `{}` in the gateway config, or the value does not fit it", row.metric), 0)
        });
        entry.1 += 1;
        0
    }
}

/// A progress bar with an ETA on a terminal, a line per 10 % otherwise.
struct Progress {
    total: u64,
    terminal: bool,
    last: Instant,
    last_tenth: u64,
}

impl Progress {
    fn new(total: u64) -> Self {
        Progress { total, terminal: std::io::stderr().is_terminal(), last: Instant::now(), last_tenth: 0 }
    }

    fn line(&self, done: u64, elapsed: Duration) -> String {
        let fraction = done as f64 / self.total.max(1) as f64;
        let width = 30;
        let filled = (fraction * width as f64).round() as usize;
        let eta = if done == 0 { 0.0 } else { elapsed.as_secs_f64() * (1.0 - fraction) / fraction };
        format!(
            "replay [{}{}] {:>3.0} %  {done}/{} readings  ETA {:.0} s",
            "=".repeat(filled),
            " ".repeat(width - filled),
            fraction * 100.0,
            self.total,
            eta
        )
    }

    fn update(&mut self, done: u64, elapsed: Duration) {
        if self.terminal {
            if self.last.elapsed() >= Duration::from_millis(200) {
                eprint!("\r{}", self.line(done, elapsed));
                self.last = Instant::now();
            }
        } else {
            let tenth = done * 10 / self.total.max(1);
            if tenth > self.last_tenth {
                self.last_tenth = tenth;
                eprintln!("{}", self.line(done, elapsed));
            }
        }
    }

    fn finish(&mut self, done: u64, elapsed: Duration) {
        if self.terminal {
            eprintln!("\r{}", self.line(done, elapsed));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mappings(toml: &str) -> Vec<Mapping> {
        let src = format!("[gateway]\nid = \"gw\"\n{toml}");
        let config =
            Config::parse(&src, std::path::Path::new("/tmp/fieldgate.toml"), &|_| None).expect("valid");
        super::mappings(&config)
    }

    fn row(ts: i64, device: &str, metric: &str, value: f64, source: &str) -> Row {
        Row {
            ts: Timestamp::from_nanos(ts),
            device: device.into(),
            metric: metric.into(),
            value,
            source: source.into(),
        }
    }

    #[test]
    fn readings_of_one_instant_go_in_one_message_shaped_by_the_mapping() {
        let m = mappings(
            "[[mqtt.mapping]]\ntopic = \"fleet/{device}/telemetry\"\ntimestamp = \"/meta/time\"\ntimestamp_unit = \"ms\"\nfields = { fill_kg = \"/tank/fill\", speed = \"/speed\" }\n\n[[mqtt.mapping]]\ntopic = \"sensors/{device}/{metric}\"\nformat = \"number\"\n",
        );
        let rows = vec![
            row(5_000_000_000, "combine-1", "fill_kg", 1200.5, "mqtt"),
            row(5_000_000_000, "combine-1", "speed", 5.5, "mqtt"),
            row(5_000_000_000, "combine-1", "rpm", 2100.0, "mqtt"),
            row(6_000_000_000, "probe-7", "moisture", 31.0, "lorawan"),
        ];
        let mut summary = Summary::default();
        let (messages, _) = plan(&rows, &m, &|_| false, &mut summary);
        assert_eq!(messages.len(), 2, "{messages:?}");
        let on = |topic: &str| messages.iter().find(|m| m.topic == topic).expect(topic);
        let json: serde_json::Value =
            serde_json::from_slice(&on("fleet/combine-1/telemetry").payload).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"tank": {"fill": 1200.5}, "speed": 5.5, "meta": {"time": 5000.0}})
        );
        assert_eq!(on("fleet/combine-1/telemetry").readings, 2);
        // `rpm` has no field in the first mapping: the number mapping carries it.
        assert_eq!(on("sensors/combine-1/rpm").payload.as_slice(), &b"2100"[..]);
        assert_eq!(summary.unsent["probe-7"].1, 1);
        assert!(
            summary.unsent["probe-7"].0.contains("recorded from lorawan: its replay is not supported yet"),
            "{summary:?}"
        );
        assert!(summary.warnings.iter().any(|w| w.contains("sensors/+/+")), "{:?}", summary.warnings);
    }

    #[test]
    fn the_default_mappings_carry_any_device_with_its_time() {
        let m = mappings("");
        let mut summary = Summary::default();
        let (messages, _) =
            plan(&[row(7, "bin-1", "level_pct", 40.25, "mqtt")], &m, &|_| false, &mut summary);
        assert_eq!(messages[0].topic, "fieldgate/bin-1");
        let json: serde_json::Value = serde_json::from_slice(&messages[0].payload).expect("json");
        assert_eq!(json, serde_json::json!({"level_pct": 40.25, "ts": 7}));
        assert!(summary.warnings.is_empty() && summary.unsent.is_empty());
    }
}
