//! Values written the way people write them: durations (`"250ms"`, `"10s"`, `"1m"`,
//! `"1h 30m"`) and sizes (`"512MiB"`, `"2GB"`, `"4096"`).

use serde::Deserialize;
use std::fmt;
use std::time::Duration;

/// A duration in human units, as written in the config file.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub fn parse(s: &str) -> Result<Self, String> {
        let trimmed = s.trim();
        if trimmed.chars().all(|c| c.is_ascii_digit()) && !trimmed.is_empty() {
            return Err(format!("`{s}` has no unit; write it like \"{trimmed}s\" or \"{trimmed}ms\""));
        }
        humantime::parse_duration(trimmed)
            .map(HumanDuration)
            .map_err(|e| format!("`{s}` is not a duration ({e}); write it like \"500ms\", \"10s\" or \"1m\""))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl fmt::Debug for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HumanDuration::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A size in bytes, as written in the config file: a whole number of bytes or a number with
/// a unit. Binary units (KiB, MiB, GiB, TiB) are powers of 1024, decimal ones (kB, MB, GB, TB)
/// powers of 1000, as disks and `df -H` count them.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

const UNITS: [(&str, u64); 10] = [
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
    ("kB", 1_000),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("TB", 1_000_000_000_000),
    ("B", 1),
];

impl ByteSize {
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
        let (number, unit) = (&t[..split], t[split..].trim());
        let multiplier = if unit.is_empty() {
            1
        } else {
            UNITS.iter().find(|(u, _)| *u == unit).map(|(_, m)| *m).ok_or_else(|| {
                format!("`{s}` has the unknown unit `{unit}`; use B, kB, MB, GB, TB, KiB, MiB, GiB or TiB")
            })?
        };
        let value: f64 = number
            .parse()
            .map_err(|_| format!("`{s}` is not a size; write it like \"512MiB\" or \"2GB\""))?;
        let bytes = value * multiplier as f64;
        if !(0.0..=u64::MAX as f64).contains(&bytes) {
            return Err(format!("`{s}` is too large"));
        }
        Ok(ByteSize(bytes.round() as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (unit, m) in [("TiB", 1u64 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if b >= m && b.is_multiple_of(m) {
                return write!(f, "{}{unit}", b / m);
            }
        }
        write!(f, "{b}B")
    }
}

impl fmt::Debug for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size like \"512MiB\" or a number of bytes")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("a size cannot be negative, got {v}")))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_as_written() {
        let cases = [
            ("250ms", Duration::from_millis(250)),
            ("10s", Duration::from_secs(10)),
            ("1m", Duration::from_secs(60)),
            ("1h 30m", Duration::from_secs(5400)),
            (" 2d ", Duration::from_secs(172_800)),
        ];
        for (s, d) in cases {
            assert_eq!(HumanDuration::parse(s).unwrap().0, d, "{s}");
        }
    }

    #[test]
    fn duration_errors_say_how_to_write_it() {
        let cases = [
            ("10", "has no unit"),
            ("ten seconds", "write it like"),
            ("", "write it like"),
            ("-1s", "write it like"),
        ];
        for (s, expected) in cases {
            let err = HumanDuration::parse(s).unwrap_err();
            assert!(err.contains(expected), "{s:?}: {err}");
        }
    }

    #[test]
    fn sizes_parse_as_written() {
        let cases = [
            ("4096", 4096),
            ("512MiB", 512 << 20),
            ("512 MiB", 512 << 20),
            ("2GB", 2_000_000_000),
            ("1.5KiB", 1536),
            ("10kB", 10_000),
        ];
        for (s, b) in cases {
            assert_eq!(ByteSize::parse(s).unwrap().0, b, "{s}");
        }
        assert!(ByteSize::parse("12 bananas").unwrap_err().contains("unknown unit `bananas`"));
        assert!(ByteSize::parse("MiB").unwrap_err().contains("is not a size"));
        assert_eq!(ByteSize(512 << 20).to_string(), "512MiB");
        assert_eq!(ByteSize(1000).to_string(), "1000B");
    }
}
