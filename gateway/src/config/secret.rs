//! [`Secret`]: a password or token that may live outside the config file.
//!
//! Written as a plain string (kept in the file), `{ env = "VAR" }` (read from the
//! environment at start) or `{ file = "/etc/fieldgate/token" }` (read from a file, trailing
//! newline removed), so config files can be shared and checked in without their secrets.
//! A resolved secret never prints: `Debug` and `Display` show `<redacted>`.

use serde::Deserialize;
use std::fmt;
use std::path::PathBuf;

/// Where a secret is written in the config file, before it is resolved.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSpec {
    Inline(String),
    Env(String),
    File(PathBuf),
}

impl fmt::Debug for SecretSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSpec::Inline(_) => f.write_str("Inline(<redacted>)"),
            SecretSpec::Env(var) => write!(f, "Env({var:?})"),
            SecretSpec::File(path) => write!(f, "File({path:?})"),
        }
    }
}

impl<'de> Deserialize<'de> for SecretSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        const FIELDS: &[&str] = &["env", "file"];
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = SecretSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a string, { env = "VARIABLE" } or { file = "/path/to/secret" }"#)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SecretSpec, E> {
                Ok(SecretSpec::Inline(v.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<SecretSpec, A::Error> {
                use serde::de::Error;
                let spec = match map.next_key::<String>()?.as_deref() {
                    Some("env") => SecretSpec::Env(map.next_value()?),
                    Some("file") => SecretSpec::File(map.next_value()?),
                    Some(other) => return Err(A::Error::unknown_field(other, FIELDS)),
                    None => {
                        return Err(A::Error::custom(
                            r#"give either `env = "VARIABLE"` or `file = "/path"`"#,
                        ));
                    }
                };
                if let Some(extra) = map.next_key::<String>()? {
                    return Err(A::Error::custom(format!("a secret comes from one place; remove `{extra}`")));
                }
                Ok(spec)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// A resolved secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for handing to the library that needs it. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl SecretSpec {
    /// Read the secret. `env` looks up environment variables (injected, so tests need not
    /// touch the process environment). Errors say where the secret was expected.
    pub fn resolve(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<Secret, String> {
        let value = match self {
            SecretSpec::Inline(s) => s.clone(),
            SecretSpec::Env(var) => {
                env(var).ok_or_else(|| format!("the environment variable `{var}` is not set"))?
            }
            SecretSpec::File(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the secret file {}: {e}", path.display()))?
                .trim_end_matches(['\n', '\r'])
                .to_owned(),
        };
        if value.is_empty() {
            return Err("the secret is empty".to_owned());
        }
        Ok(Secret(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Debug)]
    struct Holder {
        token: SecretSpec,
    }

    fn parse(src: &str) -> Result<SecretSpec, String> {
        toml::from_str::<Holder>(src).map(|h| h.token).map_err(|e| e.message().to_owned())
    }

    #[test]
    fn three_ways_to_write_a_secret() {
        assert_eq!(parse(r#"token = "s3cret""#).unwrap(), SecretSpec::Inline("s3cret".into()));
        assert_eq!(parse(r#"token = { env = "FG_TOKEN" }"#).unwrap(), SecretSpec::Env("FG_TOKEN".into()));
        assert_eq!(
            parse(r#"token = { file = "/run/token" }"#).unwrap(),
            SecretSpec::File("/run/token".into())
        );
        assert!(parse(r#"token = { evn = "X" }"#).unwrap_err().contains("unknown field `evn`"));
        assert!(parse(r#"token = { env = "X", file = "y" }"#).unwrap_err().contains("one place"));
    }

    #[test]
    fn resolves_from_env_and_file_and_never_prints() {
        let env = |k: &str| (k == "FG_TOKEN").then(|| "from-env".to_owned());
        let s = SecretSpec::Env("FG_TOKEN".into()).resolve(&env).unwrap();
        assert_eq!(s.expose(), "from-env");
        assert_eq!(format!("{s} {s:?}"), "<redacted> Secret(<redacted>)");
        let missing = SecretSpec::Env("NOPE".into()).resolve(&env).unwrap_err();
        assert!(missing.contains("`NOPE` is not set"), "{missing}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "from-file\n").unwrap();
        let s = SecretSpec::File(path).resolve(&env).unwrap();
        assert_eq!(s.expose(), "from-file");
        assert!(format!("{:?}", SecretSpec::Inline("x".into())).contains("redacted"));
    }
}
