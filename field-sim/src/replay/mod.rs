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
//! sets each recorded value at its time ([`modbus`]). A LoRaWAN device of the config becomes
//! a simulated end device that sends each recorded set of values as an uplink ([`lorawan`]).
//! Readings that cannot be sent are counted, per device, in the summary, with the reason.

pub mod input;
pub mod lorawan;
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
    /// LoRaWAN uplinks the network server did not acknowledge (PUSH_ACK) in time.
    pub lorawan_unacknowledged: u64,
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

/// One device's recorded values of one instant, as one LoRaWAN uplink.
#[derive(Debug, Clone)]
struct Uplink {
    ts: Timestamp,
    device: String,
    values: Vec<(fieldgate_proto::Metric, f64)>,
}

/// What a replay sends: MQTT messages, Modbus values (of the devices `modbus` serves) and
/// LoRaWAN uplinks (of the devices `lora` has), each in time order.
#[derive(Debug, Default)]
struct Planned<'r> {
    messages: Vec<Message>,
    registers: Vec<&'r Row>,
    uplinks: Vec<Uplink>,
}

/// Turn rows (sorted by time) into what is sent, and what cannot be sent into the summary.
fn plan<'r>(
    rows: &'r [Row],
    mappings: &[Mapping],
    modbus: &dyn Fn(&str) -> bool,
    lora: &dyn Fn(&str) -> bool,
    summary: &mut Summary,
) -> Planned<'r> {
    let mut out = Vec::new();
    let mut registers = Vec::new();
    let mut uplinks = Vec::new();
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
        let mut uplink = Vec::new();
        for row in group {
            if row.source == "lorawan" && lora(device) {
                // The radio's figures are the gateway's, not the device's: not sent.
                if !lorawan::is_link_metric(&row.metric)
                    && let Ok(metric) = fieldgate_proto::Metric::new(&row.metric)
                {
                    uplink.push((metric, row.value));
                }
                continue;
            }
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
                    "lorawan" => "recorded from lorawan: the gateway config has no LoRaWAN device of this id"
                        .to_owned(),
                    other => format!("recorded from {other}: not a protocol field-sim speaks"),
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
        if !uplink.is_empty() {
            uplinks.push(Uplink { ts: group[0].ts, device: device.clone(), values: uplink });
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
    for filter in no_time {
        summary.warnings.push(format!(
            "the mapping of `{filter}` has no timestamp field: its readings are stored at the time they arrive, not when they were recorded"
        ));
    }
    Planned { messages: out, registers, uplinks }
}

/// The MQTT mappings of a gateway config (the defaults when it gives none).
pub fn mappings(config: &Config) -> Vec<Mapping> {
    match config.mqtt.as_ref().map(|m| &m.broker) {
        Some(fieldgate::config::MqttBroker::Embedded { broker, .. }) => broker.mappings.clone(),
        Some(fieldgate::config::MqttBroker::External(settings)) => settings.mappings.clone(),
        None => Vec::new(),
    }
}

/// Where a replay sends to: the gateway's MQTT broker, its Modbus devices (field-sim
/// serves those with recorded readings) and its LoRaWAN network server.
#[derive(Debug)]
pub struct Target<'c> {
    pub broker: SocketAddr,
    pub mappings: Vec<Mapping>,
    pub buses: &'c [fieldgate_adapters::modbus::BusSettings],
    pub lorawan: Option<(&'c fieldgate::config::LorawanConfig, SocketAddr)>,
}

/// One thing to send, in time order.
enum Item<'p> {
    Mqtt(&'p Message),
    Modbus(&'p Row),
    Lora(&'p Uplink),
}

/// Replay `rows` into `target`.
pub async fn replay(rows: &[Row], target: Target<'_>, pace: Pace) -> std::io::Result<Summary> {
    let mut summary = Summary::default();
    let recorded_lora: std::collections::HashSet<&str> =
        rows.iter().filter(|r| r.source == "lorawan").map(|r| r.device.as_str()).collect();
    let modbus_rows: Vec<&Row> = rows.iter().filter(|r| r.source == "modbus").collect();
    let served = modbus::serve(target.buses, &modbus_rows).await?;
    for (device, n) in &served.unfit {
        unsent(&mut summary, device, *n, || {
            "a recorded metric has no point in the gateway config, its value does not fit it, or its time does \
             not fit the device's clock"
                .to_owned()
        });
    }
    let mut lora = match target.lorawan {
        Some((config, server)) => {
            lorawan::Devices::join(config, server, &|d| recorded_lora.contains(d)).await?
        }
        None => None,
    };
    let planned = {
        let has_lora = |d: &str| lora.as_ref().is_some_and(|l| l.contains(d));
        plan(rows, &target.mappings, &|d| served.contains(d), &has_lora, &mut summary)
    };
    // Modbus devices with a clock are served in lockstep with the gateway's polls; the others
    // have their values set on time, as the rest is sent.
    let scheduled: Vec<&Row> =
        planned.registers.iter().copied().filter(|r| !served.clocked(&r.device)).collect();
    let unclocked: std::collections::BTreeSet<&str> = scheduled.iter().map(|r| r.device.as_str()).collect();
    if !unclocked.is_empty() {
        summary.warnings.push(format!(
            "Modbus carries no timestamps: the gateway stores the replayed values of {} at its own poll \
             times (a device with a `[modbus.device.timestamp]` clock is replayed exactly)",
            unclocked.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    if let (Some(first), Some((config, _))) = (planned.uplinks.first(), target.lorawan)
        && let Some(warning) = lorawan::time_warning(first.ts, Timestamp::now(), config)
    {
        summary.warnings.push(warning);
    }
    let mut items: Vec<(Timestamp, Item)> = planned
        .messages
        .iter()
        .map(|m| (m.ts, Item::Mqtt(m)))
        .chain(scheduled.iter().map(|r| (r.ts, Item::Modbus(r))))
        .chain(planned.uplinks.iter().map(|u| (u.ts, Item::Lora(u))))
        .collect();
    items.sort_by_key(|(ts, _)| *ts);
    let total: u64 = planned.messages.iter().map(|m| m.readings).sum::<u64>()
        + scheduled.len() as u64
        + planned.uplinks.iter().map(|u| u.values.len() as u64).sum::<u64>();
    let broker = target.broker;
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
    let first = items.first().map(|(ts, _)| *ts);
    let mut progress = Progress::new(total);
    let mut sent_readings = 0u64;
    for (ts, item) in &items {
        if let (Pace::Speed(speed), Some(first)) = (pace, first) {
            let wait =
                fieldgate::coordination::secs_between(first, *ts) / speed - started.elapsed().as_secs_f64();
            if wait > 0.0 {
                tokio::time::sleep(Duration::from_secs_f64(wait)).await;
            }
        }
        let (device, protocol, readings) = match item {
            Item::Mqtt(m) => {
                client
                    .publish(m.topic.clone(), QoS::AtLeastOnce, false, m.payload.clone())
                    .await
                    .map_err(std::io::Error::other)?;
                summary.messages += 1;
                (&m.device, "mqtt", m.readings)
            }
            Item::Modbus(row) => {
                if !served.set(&row.device, &row.metric, row.value) {
                    unsent(&mut summary, &row.device, 1, || {
                        format!(
                            "no point for `{}` in the gateway config, or the value does not fit it",
                            row.metric
                        )
                    });
                    continue;
                }
                (&row.device, "modbus", 1)
            }
            Item::Lora(u) => {
                let sent = match lora.as_mut() {
                    Some(l) => l.send(&u.device, &u.values, u.ts).await?,
                    None => false,
                };
                if !sent {
                    unsent(&mut summary, &u.device, u.values.len() as u64, || {
                        "the device's profile cannot encode these values".to_owned()
                    });
                    continue;
                }
                (&u.device, "lorawan", u.values.len() as u64)
            }
        };
        *summary.sent.entry(device.clone()).or_default().entry(protocol.to_owned()).or_default() += readings;
        sent_readings += readings;
        progress.update(sent_readings, started.elapsed());
    }
    if !scheduled.is_empty() {
        // The gateway reads the last values at its next polls: hold them that long.
        tokio::time::sleep(served.hold).await;
    }
    // Devices with a clock: the gateway reads their samples at the pace of its polls.
    let (read, never) = served.finish(served.hold).await;
    for (device, n) in read {
        *summary.sent.entry(device).or_default().entry("modbus".to_owned()).or_default() += n;
        sent_readings += n;
    }
    for (device, n) in never {
        let patience = served.hold;
        unsent(&mut summary, &device, n, || {
            format!("the gateway stopped reading the device (nothing read for {patience:?})")
        });
    }
    if let Some(lora) = lora {
        summary.lorawan_unacknowledged = lora.finish().await;
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

fn unsent(summary: &mut Summary, device: &str, readings: u64, why: impl FnOnce() -> String) {
    summary.unsent.entry(device.to_owned()).or_insert_with(|| (why(), 0)).1 += readings;
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
        let messages = plan(&rows, &m, &|_| false, &|_| false, &mut summary).messages;
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
        assert!(summary.unsent["probe-7"].0.contains("no LoRaWAN device of this id"), "{summary:?}");
        assert!(summary.warnings.iter().any(|w| w.contains("sensors/+/+")), "{:?}", summary.warnings);
    }

    #[test]
    fn the_default_mappings_carry_any_device_with_its_time() {
        let m = mappings("");
        let mut summary = Summary::default();
        let messages =
            plan(&[row(7, "bin-1", "level_pct", 40.25, "mqtt")], &m, &|_| false, &|_| false, &mut summary)
                .messages;
        assert_eq!(messages[0].topic, "fieldgate/bin-1");
        let json: serde_json::Value = serde_json::from_slice(&messages[0].payload).expect("json");
        assert_eq!(json, serde_json::json!({"level_pct": 40.25, "ts": 7}));
        assert!(summary.warnings.is_empty() && summary.unsent.is_empty());
    }

    #[test]
    fn uplinks_older_than_the_gateway_believes_a_concentrator_are_warned_about() {
        let lorawan = |extra: &str| {
            let src = format!("[gateway]\nid = \"gw\"\n[lorawan]\n{extra}");
            let config =
                Config::parse(&src, std::path::Path::new("/tmp/fieldgate.toml"), &|_| None).expect("valid");
            config.lorawan.expect("lorawan on")
        };
        let now = Timestamp::from_nanos(1_800_000_000_000_000_000);
        let ago = |s: i64| Timestamp::from_nanos(now.as_nanos() - s * 1_000_000_000);
        let default = lorawan("");
        assert_eq!(lorawan::time_warning(ago(600), now, &default), None);
        let old = lorawan::time_warning(ago(3 * 3600), now, &default).expect("3 h is beyond 1 h");
        assert!(old.contains("up to 3h old") && old.contains("concentrator_time_max_age` (1h)"), "{old}");
        assert_eq!(
            lorawan::time_warning(ago(3 * 3600), now, &lorawan("concentrator_time_max_age = \"400days\"")),
            None
        );
        let off = lorawan::time_warning(ago(1), now, &lorawan("concentrator_time = false")).expect("off");
        assert!(off.contains("concentrator_time = false"), "{off}");
    }
}
