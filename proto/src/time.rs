//! [`Timestamp`]: an instant as i64 nanoseconds since the Unix epoch, UTC.
//!
//! i64 nanoseconds span the years 1677 to 2262, match Parquet's `TIMESTAMP(NANOS, UTC)` and
//! arrow's `Timestamp(Nanosecond, "UTC")` without conversion, and order and subtract cheaply.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const NANOS_PER_SEC: i64 = 1_000_000_000;

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub(crate) fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// An instant in UTC, as nanoseconds since the Unix epoch.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(i64);

/// A time that cannot be represented as a [`Timestamp`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error("time is outside the range of i64 nanoseconds since the epoch (years 1677 to 2262)")]
    OutOfRange,
    #[error("`{input}` is not an RFC 3339 UTC time (like 2026-11-24T08:30:00Z): {reason}")]
    Rfc3339 { input: String, reason: String },
}

impl Timestamp {
    /// The Unix epoch, 1970-01-01T00:00:00Z.
    pub const EPOCH: Timestamp = Timestamp(0);
    /// The latest representable instant.
    pub const MAX: Timestamp = Timestamp(i64::MAX);
    /// The earliest representable instant.
    pub const MIN: Timestamp = Timestamp(i64::MIN);

    /// An instant from nanoseconds since the epoch.
    pub const fn from_nanos(nanos: i64) -> Self {
        Timestamp(nanos)
    }

    /// Nanoseconds since the epoch.
    pub const fn as_nanos(self) -> i64 {
        self.0
    }

    /// An instant from whole seconds since the epoch, if representable.
    pub fn from_secs(secs: i64) -> Result<Self, TimeError> {
        secs.checked_mul(NANOS_PER_SEC).map(Timestamp).ok_or(TimeError::OutOfRange)
    }

    /// The current wall-clock time. Read it at the edges (where data enters) only: pure logic
    /// takes `now` as an argument so it stays testable and replayable.
    pub fn now() -> Self {
        // The system clock of a running machine is always inside the representable range.
        Self::try_from(SystemTime::now()).unwrap_or(Timestamp::MAX)
    }

    /// `self + d`, or `None` on overflow.
    pub fn checked_add(self, d: Duration) -> Option<Self> {
        let d = i64::try_from(d.as_nanos()).ok()?;
        self.0.checked_add(d).map(Timestamp)
    }

    /// `self - d`, or `None` on overflow.
    pub fn checked_sub(self, d: Duration) -> Option<Self> {
        let d = i64::try_from(d.as_nanos()).ok()?;
        self.0.checked_sub(d).map(Timestamp)
    }

    /// `self + d`, clamped to the representable range.
    pub fn saturating_add(self, d: Duration) -> Self {
        self.checked_add(d).unwrap_or(Timestamp::MAX)
    }

    /// `self - d`, clamped to the representable range.
    pub fn saturating_sub(self, d: Duration) -> Self {
        self.checked_sub(d).unwrap_or(Timestamp::MIN)
    }

    /// The time from `earlier` to `self`; zero if `earlier` is later.
    pub fn duration_since(self, earlier: Timestamp) -> Duration {
        let nanos = i128::from(self.0) - i128::from(earlier.0);
        if nanos <= 0 {
            Duration::ZERO
        } else {
            // At most 2^64 ns, which fits in a Duration.
            let nanos = u128::try_from(nanos).unwrap_or(0);
            Duration::new((nanos / 1_000_000_000) as u64, (nanos % 1_000_000_000) as u32)
        }
    }

    /// The start of the tumbling window of size `window` that contains `self`, with windows
    /// aligned to the epoch (so a 1-minute window starts on the minute, for negative times too).
    ///
    /// # Panics
    /// If `window` is zero or longer than i64 nanoseconds; config validation rules both out.
    pub fn floor_to(self, window: Duration) -> Self {
        let w = i64::try_from(window.as_nanos()).expect("window fits in i64 nanoseconds");
        assert!(w > 0, "window must be positive");
        Timestamp(self.0 - self.0.rem_euclid(w))
    }

    /// Parse an RFC 3339 time: `2026-11-24T08:30:00Z`, with an optional fraction of up to
    /// nanoseconds and a `Z` or `+HH:MM`/`-HH:MM` offset (a space may stand for the `T`, as
    /// many loggers write it). The result is UTC.
    pub fn parse_rfc3339(s: &str) -> Result<Self, TimeError> {
        let err = |reason: &str| TimeError::Rfc3339 { input: s.to_owned(), reason: reason.to_owned() };
        let b = s.as_bytes();
        let num = |from: usize, len: usize| -> Result<i64, TimeError> {
            let part = b.get(from..from + len).ok_or_else(|| err("too short"))?;
            if !part.iter().all(u8::is_ascii_digit) {
                return Err(err("expected digits"));
            }
            Ok(part.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0')))
        };
        let sep = |at: usize, c: &[u8]| -> Result<(), TimeError> {
            if b.get(at).is_some_and(|x| c.contains(x)) { Ok(()) } else { Err(err("unexpected separator")) }
        };
        let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
        sep(4, b"-")?;
        sep(7, b"-")?;
        sep(10, b"Tt ")?;
        let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
        sep(13, b":")?;
        sep(16, b":")?;
        if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
            return Err(err("no such date"));
        }
        // 60 is a leap second; it is folded into the next second, as most systems do.
        if hour > 23 || minute > 59 || second > 60 {
            return Err(err("no such time of day"));
        }
        let mut at = 19;
        let mut nanos = 0_i64;
        if b.get(at) == Some(&b'.') {
            at += 1;
            let digits = b[at..].iter().take_while(|c| c.is_ascii_digit()).count();
            if digits == 0 || digits > 9 {
                return Err(err("the fraction needs 1 to 9 digits"));
            }
            nanos = num(at, digits)? * 10_i64.pow(9 - digits as u32);
            at += digits;
        }
        let offset_s = match b.get(at) {
            Some(b'Z' | b'z') if at + 1 == b.len() => 0,
            Some(&sign @ (b'+' | b'-')) if at + 6 == b.len() => {
                sep(at + 3, b":")?;
                let (h, m) = (num(at + 1, 2)?, num(at + 4, 2)?);
                if h > 23 || m > 59 {
                    return Err(err("no such offset"));
                }
                (h * 3600 + m * 60) * if sign == b'-' { -1 } else { 1 }
            }
            _ => return Err(err("expected Z or an offset like +02:00 at the end")),
        };
        let days = days_from_civil(year, month, day);
        let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
        secs.checked_mul(NANOS_PER_SEC)
            .and_then(|n| n.checked_add(nanos))
            .map(Timestamp)
            .ok_or(TimeError::OutOfRange)
    }

    /// The UTC calendar date of this instant, as (year, month 1-12, day 1-31).
    pub fn date(self) -> (i64, u32, u32) {
        // Howard Hinnant's days-to-civil algorithm, valid for the whole i64-ns range.
        let days = self.0.div_euclid(NANOS_PER_SEC * 86_400);
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        (year, month, day)
    }

    /// The UTC date as `YYYY-MM-DD`, as used in `date=` partition paths.
    pub fn date_string(self) -> String {
        let (y, m, d) = self.date();
        format!("{y:04}-{m:02}-{d:02}")
    }

    /// This instant as a `SystemTime`.
    pub fn to_system_time(self) -> SystemTime {
        if self.0 >= 0 {
            UNIX_EPOCH + Duration::from_nanos(self.0 as u64)
        } else {
            UNIX_EPOCH - Duration::from_nanos(self.0.unsigned_abs())
        }
    }
}

impl TryFrom<SystemTime> for Timestamp {
    type Error = TimeError;

    fn try_from(t: SystemTime) -> Result<Self, TimeError> {
        let nanos = match t.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_nanos()).map_err(|_| TimeError::OutOfRange)?,
            Err(before) => {
                let d = i64::try_from(before.duration().as_nanos()).map_err(|_| TimeError::OutOfRange)?;
                -d
            }
        };
        Ok(Timestamp(nanos))
    }
}

impl fmt::Display for Timestamp {
    /// RFC 3339 in UTC with nanoseconds, e.g. `2026-11-24T08:30:00.000000000Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 >= 0 {
            write!(f, "{}", humantime::format_rfc3339_nanos(self.to_system_time()))
        } else {
            // humantime formats only times after the epoch; such readings are rare enough
            // (a device with its clock unset) that the raw number is the honest answer.
            write!(f, "{}ns", self.0)
        }
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_to_aligns_windows_to_the_epoch() {
        let minute = Duration::from_secs(60);
        let cases = [
            (0, 0),
            (59_999_999_999, 0),
            (60_000_000_000, 60_000_000_000),
            (-1, -60_000_000_000),
            (-60_000_000_000, -60_000_000_000),
        ];
        for (t, start) in cases {
            assert_eq!(Timestamp(t).floor_to(minute), Timestamp(start), "t = {t}");
        }
    }

    #[test]
    fn rfc3339_round_trips() {
        let t = Timestamp::parse_rfc3339("2026-11-24T08:30:00.123456789Z").unwrap();
        assert_eq!(t.as_nanos(), 1_795_509_000_123_456_789);
        assert_eq!(t.to_string(), "2026-11-24T08:30:00.123456789Z");
        assert_eq!(Timestamp::parse_rfc3339(&t.to_string()).unwrap(), t);
    }

    #[test]
    fn rfc3339_with_offsets_fractions_and_spaces() {
        let utc = Timestamp::parse_rfc3339("2026-11-24T08:30:00Z").unwrap();
        let cases = [
            ("2026-11-24T09:30:00+01:00", 0),
            ("2026-11-24T03:00:00-05:30", 0),
            ("2026-11-24 08:30:00Z", 0),
            ("2026-11-24t08:30:00z", 0),
            ("2026-11-24T08:30:00.5Z", 500_000_000),
            ("2026-11-24T08:30:00.000000001Z", 1),
        ];
        for (s, extra) in cases {
            assert_eq!(Timestamp::parse_rfc3339(s).unwrap().as_nanos(), utc.as_nanos() + extra, "{s}");
        }
        assert_eq!(Timestamp::parse_rfc3339("1969-12-31T23:59:59Z").unwrap().as_nanos(), -1_000_000_000);
        assert_eq!(Timestamp::parse_rfc3339("2024-02-29T00:00:00Z").unwrap().date_string(), "2024-02-29");
        for bad in [
            "2026-02-29T00:00:00Z",
            "2026-11-24T24:00:00Z",
            "2026-11-24T08:30:00",
            "2026-11-24T08:30:00+0100",
            "2026-11-24T08:30:00.Z",
            "2026-11-24T08:30:00.1234567890Z",
            "2026-11-24",
            "99999-01-01T00:00:00Z",
        ] {
            assert!(Timestamp::parse_rfc3339(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn rfc3339_errors_name_the_input() {
        let err = Timestamp::parse_rfc3339("yesterday").unwrap_err();
        assert!(err.to_string().contains("`yesterday`"), "{err}");
    }

    #[test]
    fn arithmetic_saturates_instead_of_wrapping() {
        assert_eq!(Timestamp::MAX.saturating_add(Duration::from_secs(1)), Timestamp::MAX);
        assert_eq!(Timestamp::MIN.saturating_sub(Duration::from_secs(1)), Timestamp::MIN);
        assert_eq!(
            Timestamp(5).duration_since(Timestamp(10)),
            Duration::ZERO,
            "a later `earlier` gives zero"
        );
        assert_eq!(Timestamp::MAX.duration_since(Timestamp::MIN), Duration::from_nanos(u64::MAX));
    }

    #[test]
    fn dates_match_the_calendar() {
        let cases = [
            ("1970-01-01T00:00:00Z", "1970-01-01"),
            ("2026-11-24T23:59:59.999999999Z", "2026-11-24"),
            ("2024-02-29T12:00:00Z", "2024-02-29"),
            ("2000-03-01T00:00:00Z", "2000-03-01"),
            ("2262-04-11T00:00:00Z", "2262-04-11"),
        ];
        for (t, date) in cases {
            assert_eq!(Timestamp::parse_rfc3339(t).unwrap().date_string(), date, "{t}");
        }
        assert_eq!(Timestamp::from_nanos(-1).date_string(), "1969-12-31");
    }

    #[test]
    fn system_time_round_trips_on_both_sides_of_the_epoch() {
        for n in [-1_500_000_000_i64, 0, 1, 1_795_509_000_123_456_789] {
            let t = Timestamp(n);
            assert_eq!(Timestamp::try_from(t.to_system_time()).unwrap(), t);
        }
    }
}
