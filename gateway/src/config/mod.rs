//! The gateway's configuration: one TOML file, read only here.
//!
//! Loading happens in two steps. [`diagnostics::deserialize_all`] turns the text into the raw
//! serde structs of [`raw`], collecting every syntax error, unknown key (with a suggestion) and
//! badly typed value; `validate` then checks meaning (ranges, addresses, names) and builds the
//! runtime types below. Every problem names the file, line, column and key, and all of them
//! are reported at once, so a farmer fixes the file in one go.

mod diagnostics;
mod raw;
mod secret;
mod units;

pub use diagnostics::{ConfigErrors, Location, Problem};
pub use secret::{Secret, SecretSpec};
pub use units::{ByteSize, HumanDuration};

use fieldgate_proto::DeviceId;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub gateway: GatewayConfig,
    pub http: HttpConfig,
}

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// This gateway's name (same rules as a device id).
    pub id: String,
    /// Absolute, or relative to the working directory when the config came from a string.
    pub data_dir: PathBuf,
    pub shutdown_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub listen: SocketAddr,
}

impl Config {
    /// Load and validate a config file, reading secrets from the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let src = diagnostics::read(path)?;
        Config::parse(&src, path, &|var| std::env::var(var).ok())
    }

    /// Validate config text. `file` names it in errors and anchors relative paths; `env` looks
    /// up environment variables for secrets.
    pub fn parse(
        src: &str,
        file: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigErrors> {
        let (raw, mut problems, index) = diagnostics::deserialize_all::<raw::RawConfig>(src);
        let base = file.parent().unwrap_or(Path::new(""));
        let mut v = Validator { problems: Vec::new() };
        let config = raw.map(|raw| v.config(raw, base, env));
        problems.extend(
            v.problems
                .into_iter()
                .map(|(path, message)| diagnostics::locate(src, index.as_ref(), path, message)),
        );
        // Top to bottom, the order a person fixes a file in.
        problems.sort_by_key(|p| p.location.map(|l| (l.line, l.column)));
        match config {
            Some(config) if problems.is_empty() => Ok(config),
            _ => Err(ConfigErrors { file: file.to_owned(), problems }),
        }
    }
}

/// Collects semantic problems as (path, message); the caller locates them in the file.
struct Validator {
    problems: Vec<(String, String)>,
}

impl Validator {
    fn problem(&mut self, path: &str, message: impl Into<String>) {
        self.problems.push((path.to_owned(), message.into()));
    }

    fn config(&mut self, raw: raw::RawConfig, base: &Path, _env: &dyn Fn(&str) -> Option<String>) -> Config {
        Config {
            gateway: self.gateway(raw.gateway, base),
            http: HttpConfig { listen: self.address("http.listen", &raw.http.listen) },
        }
    }

    fn gateway(&mut self, raw: raw::RawGateway, base: &Path) -> GatewayConfig {
        if let Err(e) = DeviceId::new(&raw.id) {
            let detail = e.to_string().replacen("device id", "gateway id", 1);
            self.problem("gateway.id", detail);
        }
        if raw.data_dir.as_os_str().is_empty() {
            self.problem("gateway.data_dir", "must not be empty");
        }
        GatewayConfig {
            id: raw.id,
            data_dir: base.join(raw.data_dir),
            shutdown_timeout: self.duration(
                "gateway.shutdown_timeout",
                raw.shutdown_timeout,
                Duration::from_secs(1),
                Duration::from_secs(600),
            ),
        }
    }

    fn address(&mut self, path: &str, s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|_| {
            self.problem(path, format!("`{s}` is not an address like \"127.0.0.1:9464\" or \"[::1]:9464\""));
            SocketAddr::from(([127, 0, 0, 1], 0))
        })
    }

    fn duration(&mut self, path: &str, d: HumanDuration, min: Duration, max: Duration) -> Duration {
        if d.0 < min {
            self.problem(path, format!("must be at least {}, got {d}", HumanDuration(min)));
        } else if d.0 > max {
            self.problem(path, format!("must be at most {}, got {d}", HumanDuration(max)));
        }
        d.0.clamp(min, max)
    }
}

#[cfg(test)]
mod tests;
