//! Payloads into readings, per mapping.
//!
//! A [`Mapping`] says which topics it covers, how their payloads are written and where the
//! device, metrics and timestamp come from. [`decode`] finds the first mapping whose pattern
//! matches the topic and turns the payload into readings, or says why it cannot ([`Rejection`],
//! whose [`Rejection::reason`] is the bounded metrics label).
//!
//! Formats:
//! - `json`: an object. With `fields`, each named metric is read at a JSON pointer
//!   (`/engine/rpm`); without, every number or boolean is a metric, nested objects joined with
//!   `/` (`{"engine": {"rpm": 1800}}` gives `engine/rpm`). Strings, arrays and nulls are not
//!   numbers and are skipped in that mode. An optional timestamp is read at its own pointer.
//! - `number`: the payload is a decimal number (`23.5`); the metric comes from the mapping or
//!   a `{metric}` topic level.
//! - `bool`: `true`/`false`, `on`/`off` or `1`/`0`, stored as 1 or 0.

use super::topic::TopicPattern;
use fieldgate_proto::{DeviceId, IdError, Metric, Quality, Reading, Source, Timestamp};
use serde_json::Value;

/// How a mapping's payloads are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadFormat {
    Json,
    Number,
    Bool,
}

/// How a JSON timestamp is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampUnit {
    /// A string is RFC 3339; a number's unit is told by its size (seconds below 1e11,
    /// milliseconds below 1e14, microseconds below 1e17, else nanoseconds).
    Auto,
    Rfc3339,
    Seconds,
    Millis,
    Micros,
    Nanos,
}

/// One metric read from a JSON payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub metric: Metric,
    /// A JSON pointer, e.g. `/tank/fill_kg`.
    pub pointer: String,
}

/// Which topics a mapping covers and how to read them.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapping {
    pub topic: TopicPattern,
    pub format: PayloadFormat,
    /// The device, when the topic has no `{device}` level.
    pub device: Option<DeviceId>,
    /// The metric of `number` and `bool` payloads, when the topic has no `{metric}` level.
    pub metric: Option<Metric>,
    /// JSON fields to read; empty means every number and boolean.
    pub fields: Vec<Field>,
    /// JSON pointer of the timestamp; without it, readings carry the time of receipt.
    pub timestamp: Option<String>,
    /// Whether a payload without the timestamp is refused, or carries the time of receipt.
    pub timestamp_required: bool,
    pub timestamp_unit: TimestampUnit,
    /// Larger payloads are refused unread.
    pub max_payload: usize,
}

/// Why a message gave no readings.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejection {
    #[error("no mapping covers the topic")]
    UnknownTopic,
    #[error("payload of {size} bytes is over the {max} byte limit")]
    Oversized { size: usize, max: usize },
    #[error("payload is not JSON: {0}")]
    NotJson(String),
    #[error("payload is JSON but not an object")]
    NotObject,
    #[error("payload has no numeric fields")]
    NoNumericFields,
    #[error("field `{pointer}` for metric `{metric}` is missing")]
    MissingField { metric: String, pointer: String },
    #[error("field `{pointer}` for metric `{metric}` is not a number or boolean: {found}")]
    NotNumeric { metric: String, pointer: String, found: String },
    #[error("payload `{0}` is not a number")]
    NotANumber(String),
    #[error("payload `{0}` is not a boolean (true/false, on/off, 1/0)")]
    NotABool(String),
    #[error("timestamp: {0}")]
    BadTimestamp(String),
    #[error("device id from the topic: {0}")]
    BadDevice(IdError),
    #[error("metric name: {0}")]
    BadMetric(IdError),
}

impl Rejection {
    /// The bounded label for metrics (`fieldgate_inputs_rejected_total{reason=...}`).
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::UnknownTopic => "unknown_topic",
            Rejection::Oversized { .. } => "oversized",
            Rejection::NotJson(_) | Rejection::NotObject => "not_json_object",
            Rejection::NoNumericFields => "no_numeric_fields",
            Rejection::MissingField { .. } => "missing_field",
            Rejection::NotNumeric { .. } | Rejection::NotANumber(_) | Rejection::NotABool(_) => "not_numeric",
            Rejection::BadTimestamp(_) => "bad_timestamp",
            Rejection::BadDevice(_) => "bad_device",
            Rejection::BadMetric(_) => "bad_metric",
        }
    }
}

/// Decode one message received at `received` into readings.
pub fn decode(
    mappings: &[Mapping],
    topic: &str,
    payload: &[u8],
    received: Timestamp,
) -> Result<Vec<Reading>, Rejection> {
    let (mapping, caps) = mappings
        .iter()
        .find_map(|m| m.topic.matches(topic).map(|c| (m, c)))
        .ok_or(Rejection::UnknownTopic)?;
    if payload.len() > mapping.max_payload {
        return Err(Rejection::Oversized { size: payload.len(), max: mapping.max_payload });
    }
    let device = match (caps.device, &mapping.device) {
        (Some(d), _) => DeviceId::new(d).map_err(Rejection::BadDevice)?,
        (None, Some(d)) => d.clone(),
        // Config validation requires one of the two.
        (None, None) => return Err(Rejection::UnknownTopic),
    };
    let reading = |metric: Metric, value: f64, ts: Timestamp| Reading {
        device: device.clone(),
        metric,
        ts,
        value,
        quality: Quality::Good,
        source: Source::Mqtt,
    };
    let single_metric = || -> Result<Metric, Rejection> {
        match (caps.metric, &mapping.metric) {
            (Some(m), _) => Metric::new(m).map_err(Rejection::BadMetric),
            (None, Some(m)) => Ok(m.clone()),
            // Without either, the last topic level names the metric.
            (None, None) => {
                Metric::new(topic.rsplit('/').next().unwrap_or(topic)).map_err(Rejection::BadMetric)
            }
        }
    };
    match mapping.format {
        PayloadFormat::Number => {
            let text = text(payload)?;
            let value: f64 = text.parse().map_err(|_| Rejection::NotANumber(shorten(text)))?;
            Ok(vec![reading(single_metric()?, value, received)])
        }
        PayloadFormat::Bool => {
            let text = text(payload)?;
            let value = match text.to_ascii_lowercase().as_str() {
                "true" | "on" | "1" => 1.0,
                "false" | "off" | "0" => 0.0,
                _ => return Err(Rejection::NotABool(shorten(text))),
            };
            Ok(vec![reading(single_metric()?, value, received)])
        }
        PayloadFormat::Json => {
            let json: Value =
                serde_json::from_slice(payload).map_err(|e| Rejection::NotJson(e.to_string()))?;
            let Value::Object(_) = &json else { return Err(Rejection::NotObject) };
            let ts = match &mapping.timestamp {
                Some(pointer) => match json.pointer(pointer) {
                    Some(v) => timestamp(v, mapping.timestamp_unit).map_err(Rejection::BadTimestamp)?,
                    None if mapping.timestamp_required => {
                        return Err(Rejection::BadTimestamp(format!("field `{pointer}` is missing")));
                    }
                    None => received,
                },
                None => received,
            };
            let mut out = Vec::new();
            if mapping.fields.is_empty() {
                flatten(&json, &mut String::new(), mapping.timestamp.as_deref(), &mut |name, v| {
                    out.push(reading(Metric::new(name).map_err(Rejection::BadMetric)?, v, ts));
                    Ok(())
                })?;
                if out.is_empty() {
                    return Err(Rejection::NoNumericFields);
                }
            } else {
                for f in &mapping.fields {
                    let v = json.pointer(&f.pointer).ok_or_else(|| Rejection::MissingField {
                        metric: f.metric.to_string(),
                        pointer: f.pointer.clone(),
                    })?;
                    let value = number(v).ok_or_else(|| Rejection::NotNumeric {
                        metric: f.metric.to_string(),
                        pointer: f.pointer.clone(),
                        found: shorten(&v.to_string()),
                    })?;
                    out.push(reading(f.metric.clone(), value, ts));
                }
            }
            Ok(out)
        }
    }
}

fn text(payload: &[u8]) -> Result<&str, Rejection> {
    std::str::from_utf8(payload).map(str::trim).map_err(|_| Rejection::NotANumber("<not UTF-8>".into()))
}

/// At most 40 characters of untrusted input, for error messages and logs.
fn shorten(s: &str) -> String {
    if s.chars().count() <= 40 { s.to_owned() } else { s.chars().take(40).collect::<String>() + "…" }
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        _ => None,
    }
}

/// Visit every number and boolean under `v`, naming nested ones `outer/inner`, skipping the
/// timestamp's pointer.
fn flatten(
    v: &Value,
    path: &mut String,
    skip: Option<&str>,
    visit: &mut dyn FnMut(&str, f64) -> Result<(), Rejection>,
) -> Result<(), Rejection> {
    let Value::Object(map) = v else { return Ok(()) };
    for (k, child) in map {
        let len = path.len();
        path.push('/');
        path.push_str(k);
        if skip != Some(path.as_str()) {
            match child {
                Value::Object(_) => flatten(child, path, skip, visit)?,
                other => {
                    if let Some(x) = number(other) {
                        visit(&path[1..], x)?;
                    }
                }
            }
        }
        path.truncate(len);
    }
    Ok(())
}

fn timestamp(v: &Value, unit: TimestampUnit) -> Result<Timestamp, String> {
    let from_f64 = |x: f64, per_second: f64| -> Result<Timestamp, String> {
        let ns = x * (1e9 / per_second);
        if !ns.is_finite() || ns.abs() >= 9.2e18 {
            return Err(format!("{x} is out of range"));
        }
        Ok(Timestamp::from_nanos(ns.round() as i64))
    };
    match (v, unit) {
        (Value::String(s), TimestampUnit::Auto | TimestampUnit::Rfc3339) => {
            Timestamp::parse_rfc3339(s).map_err(|e| e.to_string())
        }
        (Value::Number(n), unit) if unit != TimestampUnit::Rfc3339 => {
            let x = n.as_f64().ok_or("not a number")?;
            // Nanoseconds per unit: declared, or told by the size of the number.
            let ns_per_unit: i64 = match unit {
                TimestampUnit::Seconds => 1_000_000_000,
                TimestampUnit::Millis => 1_000_000,
                TimestampUnit::Micros => 1_000,
                TimestampUnit::Nanos => 1,
                _ if x.abs() < 1e11 => 1_000_000_000,
                _ if x.abs() < 1e14 => 1_000_000,
                _ if x.abs() < 1e17 => 1_000,
                _ => 1,
            };
            // Integers exactly (epoch nanoseconds do not fit f64's 53 bits); fractions via f64.
            match n.as_i64() {
                Some(i) => i
                    .checked_mul(ns_per_unit)
                    .map(Timestamp::from_nanos)
                    .ok_or_else(|| format!("{i} is out of range")),
                None => from_f64(x, 1e9 / ns_per_unit as f64),
            }
        }
        (other, unit) => Err(format!("{} is not a timestamp in {unit:?} form", shorten(&other.to_string()))),
    }
}

#[cfg(test)]
pub(crate) mod tests;
