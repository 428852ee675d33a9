//! A device's own clock: a register holding the time the device took its values (a data
//! logger's, a PLC's or an energy meter's real-time clock), as an integer count of seconds,
//! milliseconds, microseconds or nanoseconds since the Unix epoch.
//!
//! With a clock, the readings of a poll carry the device's time rather than the gateway's, and
//! a poll whose clock has not moved since the last one gives no readings: the device has no
//! new sample (a logger that updates every 15 minutes, polled every minute). A time that is
//! unreadable, zero (a clock never set), older than `max_age` or more than [`AHEAD`] ahead of
//! the gateway's clock is not believed: the poll is stored at the gateway's time instead.

use super::point::{CodecError, DataType, Point};
use fieldgate_proto::Timestamp;
use std::time::Duration;

/// How far a device's clock may be ahead of the gateway's and still be believed.
pub const AHEAD: Duration = Duration::from_secs(60);

/// The unit of a clock register's count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockUnit {
    Seconds,
    Millis,
    Micros,
    Nanos,
}

impl ClockUnit {
    pub fn parse(s: &str) -> Option<ClockUnit> {
        match s {
            "s" => Some(ClockUnit::Seconds),
            "ms" => Some(ClockUnit::Millis),
            "us" => Some(ClockUnit::Micros),
            "ns" => Some(ClockUnit::Nanos),
            _ => None,
        }
    }

    const fn nanos(self) -> i128 {
        match self {
            ClockUnit::Seconds => 1_000_000_000,
            ClockUnit::Millis => 1_000_000,
            ClockUnit::Micros => 1_000,
            ClockUnit::Nanos => 1,
        }
    }
}

/// Where a device keeps its clock and how it counts.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceClock {
    /// Its registers, planned and read like a point's (input or holding registers; type
    /// `U32`, `I32`, `U64` or `I64`; scale and offset unused). Its metric is never stored.
    pub point: Point,
    pub unit: ClockUnit,
    /// Older than this by the gateway's clock, the device's time is not believed.
    pub max_age: Duration,
}

impl DeviceClock {
    /// The time in the clock's registers (exactly its width of them); `None` for zero, a
    /// negative count, or one beyond the nanosecond range.
    pub fn decode(&self, words: &[u16]) -> Result<Option<Timestamp>, CodecError> {
        let width = usize::from(self.point.width());
        if words.len() != width {
            return Err(CodecError::Length { expected: width, got: words.len() });
        }
        let b = self.point.order.to_bytes(words);
        let count: i128 = match self.point.data_type {
            DataType::U32 => u32::from_be_bytes([b[0], b[1], b[2], b[3]]).into(),
            DataType::I32 => i32::from_be_bytes([b[0], b[1], b[2], b[3]]).into(),
            DataType::U64 => u64::from_be_bytes(b[..8].try_into().expect("8 bytes")).into(),
            DataType::I64 => i64::from_be_bytes(b[..8].try_into().expect("8 bytes")).into(),
            other => return Err(CodecError::OutOfRange { value: 0.0, ty: other.name() }),
        };
        let nanos = count.checked_mul(self.unit.nanos()).and_then(|n| i64::try_from(n).ok());
        Ok(nanos.filter(|&n| n > 0).map(Timestamp::from_nanos))
    }

    /// The registers that make the clock read `at` (truncated to its unit): for simulators.
    pub fn encode(&self, at: Timestamp) -> Result<Vec<u16>, CodecError> {
        let count = i128::from(at.as_nanos()) / self.unit.nanos();
        let ty = self.point.data_type;
        let out_of_range = || CodecError::OutOfRange { value: count as f64, ty: ty.name() };
        let bytes = match ty {
            DataType::U32 => u32::try_from(count).map_err(|_| out_of_range())?.to_be_bytes().to_vec(),
            DataType::I32 => i32::try_from(count).map_err(|_| out_of_range())?.to_be_bytes().to_vec(),
            DataType::U64 => u64::try_from(count).map_err(|_| out_of_range())?.to_be_bytes().to_vec(),
            DataType::I64 => i64::try_from(count).map_err(|_| out_of_range())?.to_be_bytes().to_vec(),
            _ => return Err(out_of_range()),
        };
        Ok(self.point.order.to_words(&bytes))
    }

    /// Whether the device's time `at` is believable when the gateway's clock says `now`.
    pub fn check(&self, at: Timestamp, now: Timestamp) -> Result<Timestamp, String> {
        if at.duration_since(now) > AHEAD {
            return Err(format!(
                "the device's clock says {at}, more than {}s ahead of the gateway's",
                AHEAD.as_secs()
            ));
        }
        if now.duration_since(at) > self.max_age {
            return Err(format!(
                "the device's clock says {at}, older than max_age ({})",
                humantime::format_duration(self.max_age)
            ));
        }
        Ok(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modbus::point::{Order, Table};

    fn clock(data_type: DataType, order: Order, unit: ClockUnit) -> DeviceClock {
        let point = Point {
            metric: fieldgate_proto::Metric::new("device_time").unwrap(),
            table: Table::InputRegister,
            address: 100,
            data_type,
            order,
            scale: 1.0,
            offset: 0.0,
            unit: None,
        };
        DeviceClock { point, unit, max_age: Duration::from_secs(3600) }
    }

    #[test]
    fn a_clock_round_trips_in_every_type_order_and_unit() {
        let at = Timestamp::from_nanos(1_796_597_317_123_456_789);
        for order in Order::ALL {
            for (ty, unit, kept) in [
                (DataType::U32, ClockUnit::Seconds, 1_796_597_317_000_000_000),
                (DataType::I32, ClockUnit::Seconds, 1_796_597_317_000_000_000),
                (DataType::U64, ClockUnit::Millis, 1_796_597_317_123_000_000),
                (DataType::I64, ClockUnit::Micros, 1_796_597_317_123_456_000),
                (DataType::U64, ClockUnit::Nanos, 1_796_597_317_123_456_789),
            ] {
                let c = clock(ty, order, unit);
                let words = c.encode(at).unwrap();
                assert_eq!(words.len(), usize::from(ty.width()));
                assert_eq!(
                    c.decode(&words).unwrap(),
                    Some(Timestamp::from_nanos(kept)),
                    "{ty:?} {order:?} {unit:?}"
                );
            }
        }
    }

    #[test]
    fn unset_wrong_and_implausible_clocks_are_not_believed() {
        let c = clock(DataType::U32, Order::Abcd, ClockUnit::Seconds);
        assert_eq!(c.decode(&[0, 0]).unwrap(), None, "zero: a clock never set");
        assert!(c.decode(&[0]).is_err(), "a short answer");
        let negative = clock(DataType::I32, Order::Abcd, ClockUnit::Seconds);
        assert_eq!(negative.decode(&[0xffff, 0xffff]).unwrap(), None);
        let now = Timestamp::from_nanos(2_000_000_000_000_000_000);
        let secs = |s: i64| Timestamp::from_nanos(now.as_nanos() + s * 1_000_000_000);
        assert_eq!(c.check(secs(-3599), now), Ok(secs(-3599)));
        assert_eq!(c.check(secs(59), now), Ok(secs(59)));
        assert!(c.check(secs(-3601), now).unwrap_err().contains("older than max_age (1h)"));
        assert!(c.check(secs(61), now).unwrap_err().contains("ahead"));
        assert!(
            clock(DataType::U32, Order::Abcd, ClockUnit::Seconds)
                .encode(Timestamp::from_nanos(-5_000_000_000))
                .is_err()
        );
    }
}
