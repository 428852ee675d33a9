//! The config file as written: serde structs that mirror the TOML, with defaults next to
//! their fields. `validate` turns them into the runtime types of [`super`].

use super::units::HumanDuration;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub(crate) gateway: RawGateway,
    #[serde(default)]
    pub(crate) http: RawHttp,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGateway {
    /// Names this gateway upstream and in logs.
    pub(crate) id: String,
    /// Where the WAL, Parquet files and state live; relative paths start at the config file.
    #[serde(default = "default_data_dir")]
    pub(crate) data_dir: PathBuf,
    /// How long a shutdown may take to drain and flush before the gateway gives up waiting.
    #[serde(default = "default_shutdown_timeout")]
    pub(crate) shutdown_timeout: HumanDuration,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}

fn default_shutdown_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(15))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHttp {
    /// Address of the HTTP server for `/metrics` and `/healthz`.
    #[serde(default = "default_http_listen")]
    pub(crate) listen: String,
}

impl Default for RawHttp {
    fn default() -> Self {
        RawHttp { listen: default_http_listen() }
    }
}

/// 9464 is the port the OpenTelemetry Prometheus exporter uses; loopback by default, since
/// metrics tell a lot about a farm.
fn default_http_listen() -> String {
    "127.0.0.1:9464".to_owned()
}
