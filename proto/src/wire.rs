//! Conversions between the domain types and the `fieldgate.v1` wire messages.
//!
//! Into the wire is infallible; out of the wire is checked, because a message comes from
//! another process: every field that must be set, every name and every enum value is validated,
//! and the error says which field was wrong.

use crate::{
    Action, Command, CommandId, DeviceId, IdError, Instruction, Metric, Quality, Reading, Source, Task,
    Timestamp, v1,
};
use std::time::Duration;

/// A wire message that does not make a valid domain value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WireError {
    #[error("field `{field}` is required")]
    Missing { field: &'static str },
    #[error("field `{field}`: {source}")]
    Name {
        field: &'static str,
        #[source]
        source: IdError,
    },
    #[error("field `{field}` has the unknown or unspecified value {value}")]
    Enum { field: &'static str, value: i32 },
    #[error("field `{field}` is out of range: {detail}")]
    Range { field: &'static str, detail: String },
}

fn name<T>(field: &'static str, s: &str, parse: fn(&str) -> Result<T, IdError>) -> Result<T, WireError> {
    parse(s).map_err(|source| WireError::Name { field, source })
}

/// Parse a device id from a wire field.
pub fn device(field: &'static str, s: &str) -> Result<DeviceId, WireError> {
    name(field, s, DeviceId::new)
}

/// Parse a metric from a wire field.
pub fn metric(field: &'static str, s: &str) -> Result<Metric, WireError> {
    name(field, s, Metric::new)
}

impl From<Timestamp> for prost_types::Timestamp {
    fn from(t: Timestamp) -> Self {
        let ns = t.as_nanos();
        prost_types::Timestamp {
            seconds: ns.div_euclid(1_000_000_000),
            nanos: ns.rem_euclid(1_000_000_000) as i32,
        }
    }
}

/// A wire timestamp as a [`Timestamp`], checked for range and normal form.
pub fn timestamp(field: &'static str, t: &prost_types::Timestamp) -> Result<Timestamp, WireError> {
    if !(0..1_000_000_000).contains(&t.nanos) {
        return Err(WireError::Range {
            field,
            detail: format!("nanos must be within 0..1e9, got {}", t.nanos),
        });
    }
    t.seconds
        .checked_mul(1_000_000_000)
        .and_then(|s| s.checked_add(i64::from(t.nanos)))
        .map(Timestamp::from_nanos)
        .ok_or_else(|| WireError::Range {
            field,
            detail: format!("{}s is beyond the years 1677 to 2262", t.seconds),
        })
}

/// A wire duration as a non-negative `Duration`.
pub fn duration(field: &'static str, d: &prost_types::Duration) -> Result<Duration, WireError> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(WireError::Range {
            field,
            detail: format!("must be a positive duration, got {}s {}ns", d.seconds, d.nanos),
        });
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

/// A `Duration` on the wire. Durations beyond i64 seconds (292 billion years) saturate.
pub fn to_wire_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: d.subsec_nanos() as i32,
    }
}

impl From<Quality> for v1::Quality {
    fn from(q: Quality) -> Self {
        match q {
            Quality::Good => v1::Quality::Good,
            Quality::Uncertain => v1::Quality::Uncertain,
            Quality::Bad => v1::Quality::Bad,
        }
    }
}

/// A wire quality; unspecified reads as good, since older senders may leave it unset.
pub fn quality(value: i32) -> Result<Quality, WireError> {
    match v1::Quality::try_from(value) {
        Ok(v1::Quality::Good | v1::Quality::Unspecified) => Ok(Quality::Good),
        Ok(v1::Quality::Uncertain) => Ok(Quality::Uncertain),
        Ok(v1::Quality::Bad) => Ok(Quality::Bad),
        Err(_) => Err(WireError::Enum { field: "quality", value }),
    }
}

impl From<Source> for v1::Source {
    fn from(s: Source) -> Self {
        match s {
            Source::Mqtt => v1::Source::Mqtt,
            Source::Modbus => v1::Source::Modbus,
            Source::Lorawan => v1::Source::Lorawan,
        }
    }
}

/// A wire source; it must be set.
pub fn source(value: i32) -> Result<Source, WireError> {
    match v1::Source::try_from(value) {
        Ok(v1::Source::Mqtt) => Ok(Source::Mqtt),
        Ok(v1::Source::Modbus) => Ok(Source::Modbus),
        Ok(v1::Source::Lorawan) => Ok(Source::Lorawan),
        Ok(v1::Source::Unspecified) | Err(_) => Err(WireError::Enum { field: "source", value }),
    }
}

impl From<&Reading> for v1::Reading {
    fn from(r: &Reading) -> Self {
        v1::Reading {
            device: r.device.to_string(),
            metric: r.metric.to_string(),
            ts_ns: r.ts.as_nanos(),
            value: r.value,
            quality: v1::Quality::from(r.quality) as i32,
            source: v1::Source::from(r.source) as i32,
        }
    }
}

impl TryFrom<&v1::Reading> for Reading {
    type Error = WireError;

    fn try_from(r: &v1::Reading) -> Result<Self, WireError> {
        Ok(Reading {
            device: device("device", &r.device)?,
            metric: metric("metric", &r.metric)?,
            ts: Timestamp::from_nanos(r.ts_ns),
            value: r.value,
            quality: quality(r.quality)?,
            source: source(r.source)?,
        })
    }
}

impl From<Task> for v1::Task {
    fn from(t: Task) -> Self {
        match t {
            Task::Serve => v1::Task::Serve,
            Task::UnloadInto => v1::Task::UnloadInto,
            Task::Haul => v1::Task::Haul,
            Task::Hold => v1::Task::Hold,
        }
    }
}

fn task(value: i32) -> Result<Task, WireError> {
    match v1::Task::try_from(value) {
        Ok(v1::Task::Serve) => Ok(Task::Serve),
        Ok(v1::Task::UnloadInto) => Ok(Task::UnloadInto),
        Ok(v1::Task::Haul) => Ok(Task::Haul),
        Ok(v1::Task::Hold) => Ok(Task::Hold),
        Ok(v1::Task::Unspecified) | Err(_) => Err(WireError::Enum { field: "instruct.task", value }),
    }
}

impl From<&Instruction> for v1::Instruction {
    fn from(i: &Instruction) -> Self {
        v1::Instruction {
            task: v1::Task::from(i.task) as i32,
            target: i.target.as_ref().map(ToString::to_string).unwrap_or_default(),
            due_ns: i.due.map_or(0, Timestamp::as_nanos),
            note: i.note.clone(),
        }
    }
}

impl TryFrom<&v1::Instruction> for Instruction {
    type Error = WireError;

    fn try_from(i: &v1::Instruction) -> Result<Self, WireError> {
        Ok(Instruction {
            task: task(i.task)?,
            target: if i.target.is_empty() { None } else { Some(device("instruct.target", &i.target)?) },
            due: (i.due_ns != 0).then(|| Timestamp::from_nanos(i.due_ns)),
            note: i.note.clone(),
        })
    }
}

impl From<&Command> for v1::Command {
    fn from(c: &Command) -> Self {
        let action = match &c.action {
            Action::Set { metric, value } => {
                v1::command::Action::Set(v1::SetValue { metric: metric.to_string(), value: *value })
            }
            Action::Instruct(i) => v1::command::Action::Instruct(i.into()),
        };
        v1::Command {
            id: c.id.to_string(),
            device: c.device.to_string(),
            created_ns: c.created.as_nanos(),
            action: Some(action),
        }
    }
}

impl TryFrom<&v1::Command> for Command {
    type Error = WireError;

    fn try_from(c: &v1::Command) -> Result<Self, WireError> {
        if c.id.is_empty() {
            return Err(WireError::Missing { field: "id" });
        }
        let action = match c.action.as_ref().ok_or(WireError::Missing { field: "action" })? {
            v1::command::Action::Set(s) => {
                Action::Set { metric: metric("set.metric", &s.metric)?, value: s.value }
            }
            v1::command::Action::Instruct(i) => Action::Instruct(i.try_into()?),
        };
        Ok(Command {
            id: CommandId::new(c.id.clone()),
            device: device("device", &c.device)?,
            created: Timestamp::from_nanos(c.created_ns),
            action,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn name_strategy() -> impl Strategy<Value = String> {
        "[A-Za-z0-9_.:@-]{1,40}"
    }

    fn reading_strategy() -> impl Strategy<Value = Reading> {
        (
            name_strategy(),
            name_strategy(),
            any::<i64>(),
            any::<f64>().prop_filter("NaN never equals itself", |v| !v.is_nan()),
            prop_oneof![Just(Quality::Good), Just(Quality::Uncertain), Just(Quality::Bad)],
            prop_oneof![Just(Source::Mqtt), Just(Source::Modbus), Just(Source::Lorawan)],
        )
            .prop_map(|(d, m, ts, value, quality, source)| Reading {
                device: DeviceId::new(&d).unwrap(),
                metric: Metric::new(&m).unwrap(),
                ts: Timestamp::from_nanos(ts),
                value,
                quality,
                source,
            })
    }

    fn command_strategy() -> impl Strategy<Value = Command> {
        let set = (name_strategy(), any::<f64>().prop_filter("not NaN", |v| !v.is_nan()))
            .prop_map(|(m, value)| Action::Set { metric: Metric::new(&m).unwrap(), value });
        let instruct = (
            prop_oneof![Just(Task::Serve), Just(Task::UnloadInto), Just(Task::Haul), Just(Task::Hold)],
            proptest::option::of(name_strategy()),
            proptest::option::of(1..i64::MAX),
            ".{0,30}",
        )
            .prop_map(|(task, target, due, note)| {
                Action::Instruct(Instruction {
                    task,
                    target: target.map(|t| DeviceId::new(&t).unwrap()),
                    due: due.map(Timestamp::from_nanos),
                    note,
                })
            });
        ("[a-z0-9-]{1,20}", name_strategy(), any::<i64>(), prop_oneof![set, instruct]).prop_map(
            |(id, d, created, action)| Command {
                id: CommandId::new(id),
                device: DeviceId::new(&d).unwrap(),
                created: Timestamp::from_nanos(created),
                action,
            },
        )
    }

    proptest! {
        #[test]
        fn reading_round_trips(r in reading_strategy()) {
            let wire = v1::Reading::from(&r);
            let back = Reading::try_from(&wire).unwrap();
            prop_assert_eq!(back, r);
        }

        #[test]
        fn reading_round_trips_through_bytes(r in reading_strategy()) {
            use prost::Message;
            let bytes = v1::Reading::from(&r).encode_to_vec();
            let back = Reading::try_from(&v1::Reading::decode(bytes.as_slice()).unwrap()).unwrap();
            prop_assert_eq!(back, r);
        }

        #[test]
        fn command_round_trips(c in command_strategy()) {
            let back = Command::try_from(&v1::Command::from(&c)).unwrap();
            prop_assert_eq!(back, c);
        }

        #[test]
        fn timestamp_round_trips(ns in any::<i64>()) {
            let t = Timestamp::from_nanos(ns);
            let wire = prost_types::Timestamp::from(t);
            prop_assert!((0..1_000_000_000).contains(&wire.nanos));
            prop_assert_eq!(timestamp("t", &wire).unwrap(), t);
        }

        #[test]
        fn duration_round_trips(secs in 0..u32::MAX as u64, nanos in 0..1_000_000_000u32) {
            let d = Duration::new(secs, nanos);
            prop_assert_eq!(duration("d", &to_wire_duration(d)).unwrap(), d);
        }
    }

    #[test]
    fn invalid_wire_values_name_their_field() {
        let good = v1::Reading {
            device: "bin-1".into(),
            metric: "level_pct".into(),
            ts_ns: 1,
            value: 2.0,
            quality: v1::Quality::Good as i32,
            source: v1::Source::Modbus as i32,
        };
        let cases: Vec<(v1::Reading, &str)> = vec![
            (v1::Reading { device: "bin 1".into(), ..good.clone() }, "field `device`"),
            (v1::Reading { metric: String::new(), ..good.clone() }, "field `metric`: metric is empty"),
            (
                v1::Reading { source: 0, ..good.clone() },
                "field `source` has the unknown or unspecified value 0",
            ),
            (
                v1::Reading { quality: 42, ..good.clone() },
                "field `quality` has the unknown or unspecified value 42",
            ),
        ];
        for (wire, expected) in cases {
            let err = Reading::try_from(&wire).unwrap_err().to_string();
            assert!(err.contains(expected), "expected {expected:?} in {err:?}");
        }
        assert!(Reading::try_from(&good).is_ok());

        let no_action = v1::Command { id: "c1".into(), device: "cart-1".into(), created_ns: 0, action: None };
        assert_eq!(Command::try_from(&no_action).unwrap_err(), WireError::Missing { field: "action" });
        let no_id = v1::Command { id: String::new(), ..no_action };
        assert_eq!(Command::try_from(&no_id).unwrap_err(), WireError::Missing { field: "id" });

        let bad_nanos = prost_types::Timestamp { seconds: 0, nanos: -1 };
        assert!(matches!(timestamp("from", &bad_nanos), Err(WireError::Range { field: "from", .. })));
        let too_late = prost_types::Timestamp { seconds: i64::MAX / 1000, nanos: 0 };
        assert!(matches!(timestamp("to", &too_late), Err(WireError::Range { field: "to", .. })));
    }
}
