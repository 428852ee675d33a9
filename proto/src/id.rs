//! [`DeviceId`] and [`Metric`]: names checked once where data enters the gateway.
//!
//! Both end up as Parquet dictionary values, MQTT topic levels, file-system-safe labels and
//! CLI arguments, so they are restricted to a conservative character set: ASCII letters and
//! digits and `- _ . : @` (metrics also `/`, for nested JSON fields such as `engine/rpm`).
//! Both are cheap to clone (`Arc<str>`): a reading carries them through every hop.

use std::fmt;
use std::sync::Arc;

/// A hash map keyed by names, for the per-reading lookups of the ingest path. foldhash, seeded
/// per process, is several times faster than the standard SipHash on such short keys; keys
/// chosen to collide would need the seed.
pub type NameMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Longest accepted device id or metric name, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// A name that is not a valid device id or metric.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} is empty")]
    Empty { kind: &'static str },
    #[error("{kind} `{name}` is {len} bytes long; at most {MAX_NAME_LEN} are allowed")]
    TooLong { kind: &'static str, name: String, len: usize },
    #[error("{kind} `{name}` has the character {ch:?} at byte {at}; use letters, digits and {allowed}")]
    BadChar { kind: &'static str, name: String, ch: char, at: usize, allowed: &'static str },
}

fn check(kind: &'static str, s: &str, extra: &'static str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if s.len() > MAX_NAME_LEN {
        return Err(IdError::TooLong {
            kind,
            name: s.chars().take(40).collect::<String>() + "…",
            len: s.len(),
        });
    }
    if let Some((at, ch)) = s.char_indices().find(|&(_, c)| !(c.is_ascii_alphanumeric() || extra.contains(c)))
    {
        return Err(IdError::BadChar { kind, name: s.to_owned(), ch, at, allowed: extra });
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $extra:literal) => {
        $(#[$doc])*
        #[derive(Clone, Eq, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl PartialEq for $name {
            /// Readings of one device share their names with its configuration, so most
            /// comparisons (every map lookup on the ingest path) are settled by the pointer.
            fn eq(&self, other: &Self) -> bool {
                Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
            }
        }

        impl std::hash::Hash for $name {
            /// The name's hash, as `str` has it (consistent with `eq`).
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                self.0.hash(state);
            }
        }

        impl $name {
            /// Characters allowed besides ASCII letters and digits.
            pub const EXTRA_CHARS: &'static str = $extra;

            /// Check `name` and wrap it.
            pub fn new(name: &str) -> Result<Self, IdError> {
                check($kind, name, $extra)?;
                Ok($name(Arc::from(name)))
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::new(&s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
                Self::new(&s).map_err(serde::de::Error::custom)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
    };
}

name_type!(
    /// The name of a field device, unique within a gateway: `combine-1`, `bin_3`,
    /// `a84041000181c5f1` (a LoRaWAN DevEUI).
    DeviceId,
    "device id",
    "-_.:@"
);

name_type!(
    /// The name of a measured quantity of a device: `tank_fill_kg`, `temperature`,
    /// `engine/rpm`. Units belong in the name where the number has one.
    Metric,
    "metric",
    "-_.:@/"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_field_names() {
        for ok in ["combine-1", "bin_3", "a84041000181c5f1", "plc.line2:unit@7"] {
            assert_eq!(DeviceId::new(ok).unwrap().as_str(), ok);
        }
        assert_eq!(Metric::new("engine/rpm").unwrap().as_str(), "engine/rpm");
    }

    #[test]
    fn rejects_with_a_reason() {
        let cases: [(&str, &str); 4] = [
            ("", "device id is empty"),
            ("bad name", "character ' ' at byte 3"),
            ("fleet/c1", "character '/' at byte 5"),
            ("tëst", "character 'ë' at byte 1"),
        ];
        for (input, expected) in cases {
            let err = DeviceId::new(input).unwrap_err().to_string();
            assert!(err.contains(expected), "{input:?}: {err}");
        }
        let long = "x".repeat(MAX_NAME_LEN + 1);
        assert!(matches!(Metric::new(&long), Err(IdError::TooLong { len: 129, .. })));
        assert!(Metric::new(&"x".repeat(MAX_NAME_LEN)).is_ok());
    }
}
