//! Little-endian encoding of WAL records and checkpoints: pure functions over bytes.
//!
//! A reading batch record carries its own dictionary of device and metric names, so a batch
//! of many readings from one device (the usual MQTT message or Modbus poll) stores each name
//! once: 22 bytes per reading plus the names.

use fieldgate_proto::{DeviceId, Metric, Quality, Reading, Source, Timestamp};
use std::collections::HashMap;

/// A decoding failure: the bytes are not what the writer wrote.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed record: {0}")]
pub struct Malformed(pub String);

/// Appends values to a byte buffer.
#[derive(Debug, Default)]
pub(crate) struct Enc {
    pub(crate) buf: Vec<u8>,
}

impl Enc {
    pub(crate) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub(crate) fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn i64(&mut self, v: i64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn f64(&mut self, v: f64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// A name of at most 255 bytes (device ids and metrics are at most 128).
    pub(crate) fn name(&mut self, s: &str) {
        self.u8(u8::try_from(s.len()).unwrap_or(u8::MAX));
        self.buf.extend_from_slice(&s.as_bytes()[..s.len().min(255)]);
    }
}

/// Reads values from a byte slice, failing (never panicking) past its end.
#[derive(Debug)]
pub(crate) struct Dec<'a> {
    buf: &'a [u8],
}

impl<'a> Dec<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Dec { buf }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.buf.len() < n {
            return Err(Malformed(format!("needed {n} more bytes, {} left", self.buf.len())));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], Malformed> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn u16(&mut self) -> Result<u16, Malformed> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    pub(crate) fn u32(&mut self) -> Result<u32, Malformed> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, Malformed> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    pub(crate) fn i64(&mut self) -> Result<i64, Malformed> {
        Ok(i64::from_le_bytes(self.array()?))
    }
    pub(crate) fn f64(&mut self) -> Result<f64, Malformed> {
        Ok(f64::from_le_bytes(self.array()?))
    }
    pub(crate) fn str(&mut self) -> Result<&'a str, Malformed> {
        let n = usize::from(self.u8()?);
        std::str::from_utf8(self.take(n)?).map_err(|e| Malformed(format!("name is not UTF-8: {e}")))
    }
    pub(crate) fn device(&mut self) -> Result<DeviceId, Malformed> {
        DeviceId::new(self.str()?).map_err(|e| Malformed(e.to_string()))
    }
    pub(crate) fn metric(&mut self) -> Result<Metric, Malformed> {
        Metric::new(self.str()?).map_err(|e| Malformed(e.to_string()))
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

pub(crate) fn quality_code(q: Quality) -> u8 {
    match q {
        Quality::Good => 0,
        Quality::Uncertain => 1,
        Quality::Bad => 2,
    }
}

pub(crate) fn quality_from(code: u8) -> Result<Quality, Malformed> {
    match code {
        0 => Ok(Quality::Good),
        1 => Ok(Quality::Uncertain),
        2 => Ok(Quality::Bad),
        c => Err(Malformed(format!("unknown quality code {c}"))),
    }
}

pub(crate) fn source_code(s: Source) -> u8 {
    match s {
        Source::Mqtt => 0,
        Source::Modbus => 1,
        Source::Lorawan => 2,
    }
}

pub(crate) fn source_from(code: u8) -> Result<Source, Malformed> {
    match code {
        0 => Ok(Source::Mqtt),
        1 => Ok(Source::Modbus),
        2 => Ok(Source::Lorawan),
        c => Err(Malformed(format!("unknown source code {c}"))),
    }
}

/// What a WAL record says happened. Everything that changes the window state goes through the
/// WAL as one of these, so replaying the WAL reproduces the state exactly.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Event {
    /// A batch of readings and when the gateway received it.
    Batch { received: Timestamp, readings: Vec<Reading> },
    /// The wall clock at a moment the writer checked for idle series.
    Tick { now: Timestamp },
}

const EVENT_BATCH: u8 = 1;
const EVENT_TICK: u8 = 2;

/// Encode an event into `enc`.
pub(crate) fn encode_event(enc: &mut Enc, event: &Event) {
    match event {
        Event::Batch { received, readings } => {
            enc.u8(EVENT_BATCH);
            enc.i64(received.as_nanos());
            encode_readings(enc, readings);
        }
        Event::Tick { now } => {
            enc.u8(EVENT_TICK);
            enc.i64(now.as_nanos());
        }
    }
}

/// Readings per batch event at most, so that a batch's names (two per reading at most) are
/// always indexable by a u16. Larger submissions are split into several events.
pub(crate) const MAX_EVENT_READINGS: usize = 32_000;

fn intern<'a>(s: &'a str, names: &mut Vec<&'a str>, index: &mut HashMap<&'a str, u16>) -> u16 {
    *index.entry(s).or_insert_with(|| {
        names.push(s);
        // Bounded by MAX_EVENT_READINGS: at most 64,000 names.
        (names.len() - 1) as u16
    })
}

fn encode_readings(enc: &mut Enc, readings: &[Reading]) {
    debug_assert!(readings.len() <= MAX_EVENT_READINGS);
    let mut names: Vec<&str> = Vec::new();
    let mut index: HashMap<&str, u16> = HashMap::new();
    let pairs: Vec<(u16, u16)> = readings
        .iter()
        .map(|r| {
            (
                intern(r.device.as_str(), &mut names, &mut index),
                intern(r.metric.as_str(), &mut names, &mut index),
            )
        })
        .collect();
    enc.u16(names.len() as u16);
    for n in &names {
        enc.name(n);
    }
    enc.u32(readings.len() as u32);
    for (r, (d, m)) in readings.iter().zip(pairs) {
        enc.u16(d);
        enc.u16(m);
        enc.i64(r.ts.as_nanos());
        enc.f64(r.value);
        enc.u8(quality_code(r.quality));
        enc.u8(source_code(r.source));
    }
}

/// The parsed name at `i`, parsed once per batch and cloned (an `Arc` bump) after that.
fn cached<T: Clone>(
    cache: &mut [Option<T>],
    names: &[&str],
    i: usize,
    parse: fn(&str) -> Result<T, fieldgate_proto::IdError>,
) -> Result<T, Malformed> {
    let slot = cache.get_mut(i).ok_or_else(|| Malformed(format!("name index {i} out of range")))?;
    if let Some(v) = slot {
        return Ok(v.clone());
    }
    let v = parse(names[i]).map_err(|e| Malformed(e.to_string()))?;
    *slot = Some(v.clone());
    Ok(v)
}

/// Decode an event written by [`encode_event`].
pub(crate) fn decode_event(bytes: &[u8]) -> Result<Event, Malformed> {
    let mut d = Dec::new(bytes);
    let event = match d.u8()? {
        EVENT_BATCH => {
            let received = Timestamp::from_nanos(d.i64()?);
            let n_names = usize::from(d.u16()?);
            let names: Vec<&str> = (0..n_names).map(|_| d.str()).collect::<Result<_, _>>()?;
            let n = d.u32()? as usize;
            let mut readings = Vec::with_capacity(n.min(bytes.len() / 22));
            let mut devices: Vec<Option<DeviceId>> = vec![None; names.len()];
            let mut metrics: Vec<Option<Metric>> = vec![None; names.len()];
            for _ in 0..n {
                let device = cached(&mut devices, &names, usize::from(d.u16()?), DeviceId::new)?;
                let metric = cached(&mut metrics, &names, usize::from(d.u16()?), Metric::new)?;
                readings.push(Reading {
                    device,
                    metric,
                    ts: Timestamp::from_nanos(d.i64()?),
                    value: d.f64()?,
                    quality: quality_from(d.u8()?)?,
                    source: source_from(d.u8()?)?,
                });
            }
            Event::Batch { received, readings }
        }
        EVENT_TICK => Event::Tick { now: Timestamp::from_nanos(d.i64()?) },
        k => return Err(Malformed(format!("unknown event kind {k}"))),
    };
    if !d.is_empty() {
        return Err(Malformed("trailing bytes after the event".to_owned()));
    }
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reading() -> impl Strategy<Value = Reading> {
        (
            "[a-c]{1,3}",
            "[x-z]{1,3}",
            any::<i64>(),
            any::<f64>().prop_filter("NaN", |v| !v.is_nan()),
            0u8..3,
            0u8..3,
        )
            .prop_map(|(d, m, ts, value, q, s)| Reading {
                device: DeviceId::new(&d).unwrap(),
                metric: Metric::new(&m).unwrap(),
                ts: Timestamp::from_nanos(ts),
                value,
                quality: quality_from(q).unwrap(),
                source: source_from(s).unwrap(),
            })
    }

    proptest! {
        #[test]
        fn batches_round_trip(readings in proptest::collection::vec(reading(), 0..50), received in any::<i64>()) {
            let event = Event::Batch { received: Timestamp::from_nanos(received), readings };
            let mut enc = Enc::default();
            encode_event(&mut enc, &event);
            prop_assert_eq!(decode_event(&enc.buf).unwrap(), event);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_event(&bytes);
        }

        #[test]
        fn truncation_is_an_error_not_a_panic(readings in proptest::collection::vec(reading(), 1..10), cut in 0usize..1000) {
            let mut enc = Enc::default();
            encode_event(&mut enc, &Event::Batch { received: Timestamp::EPOCH, readings });
            let cut = cut % enc.buf.len();
            prop_assert!(decode_event(&enc.buf[..cut]).is_err());
        }
    }

    #[test]
    fn names_are_stored_once_per_batch() {
        let readings: Vec<Reading> = (0..100)
            .map(|i| Reading {
                device: DeviceId::new("combine-1").unwrap(),
                metric: Metric::new("tank_fill_kg").unwrap(),
                ts: Timestamp::from_nanos(i),
                value: 1.0,
                quality: Quality::Good,
                source: Source::Mqtt,
            })
            .collect();
        let mut enc = Enc::default();
        encode_event(&mut enc, &Event::Batch { received: Timestamp::EPOCH, readings });
        assert_eq!(enc.buf.len(), 1 + 8 + 2 + (1 + 9) + (1 + 12) + 4 + 100 * 22);
    }
}
