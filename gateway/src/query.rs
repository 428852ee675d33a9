//! `fieldgate.v1.QueryService`: stats from the store (through [`fieldgate_analytics`]), the
//! latest values and the device list from the live state.
//!
//! Errors say what was wrong with the question (`INVALID_ARGUMENT`: an unknown device name, a
//! window that is not a multiple of a stored one, `from` after `to`, a bad page token), or
//! that the store is not running (`UNAVAILABLE`). Long answers come in pages.

use crate::live::LiveState;
use fieldgate_analytics::{QueryError, StatsQuery};
use fieldgate_proto::v1::query_service_server::QueryService;
use fieldgate_proto::v1::{
    self, DevicesRequest, DevicesResponse, FleetRequest, FleetResponse, LatestRequest, LatestResponse,
    StatsRequest, StatsResponse,
};
use fieldgate_proto::{DeviceId, Metric, Source, Timestamp, wire};
use fieldgate_store::StoreReader;
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// Rows in one Stats page when the caller does not say; at most [`MAX_PAGE`].
pub const DEFAULT_PAGE: usize = 10_000;
pub const MAX_PAGE: usize = 100_000;
/// A device not heard from for this long is stale.
pub const STALE_AFTER: Duration = Duration::from_secs(600);

/// The query service's view of the gateway.
#[derive(Debug, Clone)]
pub struct Queries {
    pub data_dir: PathBuf,
    pub store: StoreReader,
    pub live: LiveState,
    /// Devices in the config file, with their protocol.
    pub configured: BTreeMap<DeviceId, Source>,
}

fn names<T>(
    field: &'static str,
    values: &[String],
    parse: fn(&'static str, &str) -> Result<T, wire::WireError>,
) -> Result<Vec<T>, Status> {
    values.iter().map(|v| parse(field, v).map_err(|e| Status::invalid_argument(e.to_string()))).collect()
}

fn query_status(e: QueryError) -> Status {
    match e {
        QueryError::Invalid(m) => Status::invalid_argument(m),
        QueryError::Unavailable => Status::unavailable(e.to_string()),
        QueryError::Failed(_) => Status::internal(e.to_string()),
    }
}

impl Queries {
    fn stats_query(&self, r: &StatsRequest) -> Result<StatsQuery, Status> {
        let from = r.from.as_ref().ok_or_else(|| Status::invalid_argument("`from` is required"))?;
        let from = wire::timestamp("from", from).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let to = match &r.to {
            Some(t) => wire::timestamp("to", t).map_err(|e| Status::invalid_argument(e.to_string()))?,
            None => Timestamp::now(),
        };
        let window = match &r.window {
            Some(w) => {
                Some(wire::duration("window", w).map_err(|e| Status::invalid_argument(e.to_string()))?)
            }
            None => None,
        };
        Ok(StatsQuery {
            devices: names("devices", &r.devices, wire::device)?,
            metrics: names("metrics", &r.metrics, wire::metric)?,
            from,
            to,
            window,
        })
    }
}

fn health(
    configured: bool,
    last_seen: Option<Timestamp>,
    bad: u64,
    readings: u64,
    now: Timestamp,
) -> v1::DeviceHealth {
    match last_seen {
        None if configured => v1::DeviceHealth::NeverSeen,
        None => v1::DeviceHealth::Unspecified,
        Some(t) if now.duration_since(t) > STALE_AFTER => v1::DeviceHealth::Stale,
        // Mostly bad readings: answering with errors.
        Some(_) if readings > 0 && bad * 2 > readings => v1::DeviceHealth::Failing,
        Some(_) => v1::DeviceHealth::Ok,
    }
}

#[tonic::async_trait]
impl QueryService for Queries {
    async fn stats(&self, request: Request<StatsRequest>) -> Result<Response<StatsResponse>, Status> {
        let r = request.into_inner();
        let q = self.stats_query(&r)?;
        let page = match r.page_size {
            0 => DEFAULT_PAGE,
            n => (n as usize).min(MAX_PAGE),
        };
        let offset: usize = if r.page_token.is_empty() {
            0
        } else {
            r.page_token
                .parse()
                .map_err(|_| Status::invalid_argument("`page_token` is not one this gateway gave"))?
        };
        let answer =
            fieldgate_analytics::stats(&self.data_dir, &self.store, &q).await.map_err(query_status)?;
        let total = answer.rows.len();
        let rows = answer
            .rows
            .into_iter()
            .skip(offset)
            .take(page)
            .map(|s| v1::StatsRow {
                device: s.device,
                metric: s.metric,
                window_start: Some(s.window_start.into()),
                window_end: Some(s.window_end.into()),
                count: s.count,
                min: s.min,
                max: s.max,
                mean: s.mean,
                sum: s.sum,
                first: s.first,
                last: s.last,
                first_ts: Some(s.first_ts.into()),
                last_ts: Some(s.last_ts.into()),
            })
            .collect();
        let next = offset + page;
        Ok(Response::new(StatsResponse {
            rows,
            next_page_token: if next < total { next.to_string() } else { String::new() },
            source_window: Some(wire::to_wire_duration(answer.source_window)),
        }))
    }

    async fn latest(&self, request: Request<LatestRequest>) -> Result<Response<LatestResponse>, Status> {
        let r = request.into_inner();
        let devices: HashSet<DeviceId> = names("devices", &r.devices, wire::device)?.into_iter().collect();
        let metrics: HashSet<Metric> = names("metrics", &r.metrics, wire::metric)?.into_iter().collect();
        let mut values = Vec::new();
        for (id, d) in self.live.devices() {
            if !devices.is_empty() && !devices.contains(&id) {
                continue;
            }
            let mut latest: Vec<_> =
                d.latest.iter().filter(|(m, _)| metrics.is_empty() || metrics.contains(*m)).collect();
            latest.sort_by(|a, b| a.0.cmp(b.0));
            values.extend(latest.into_iter().map(|(m, l)| v1::LatestValue {
                device: id.to_string(),
                metric: m.to_string(),
                ts: Some(l.ts.into()),
                value: l.value,
                quality: v1::Quality::from(l.quality).into(),
                source: v1::Source::from(d.source).into(),
            }));
        }
        Ok(Response::new(LatestResponse { values }))
    }

    async fn devices(&self, _request: Request<DevicesRequest>) -> Result<Response<DevicesResponse>, Status> {
        let now = Timestamp::now();
        let heard: BTreeMap<DeviceId, crate::live::Device> = self.live.devices().into_iter().collect();
        let ids: std::collections::BTreeSet<&DeviceId> = heard.keys().chain(self.configured.keys()).collect();
        let devices = ids
            .into_iter()
            .map(|id| {
                let d = heard.get(id);
                let configured = self.configured.contains_key(id);
                let source = d.map(|d| d.source).or_else(|| self.configured.get(id).copied());
                v1::Device {
                    id: id.to_string(),
                    source: source.map_or(v1::Source::Unspecified, v1::Source::from).into(),
                    configured,
                    first_seen: d.map(|d| d.first_seen.into()),
                    last_seen: d.map(|d| d.last_seen.into()),
                    health: health(
                        configured,
                        d.map(|d| d.last_seen),
                        d.map_or(0, |d| d.bad),
                        d.map_or(0, |d| d.readings),
                        now,
                    )
                    .into(),
                    readings: d.map_or(0, |d| d.readings),
                    errors: d.map_or(0, |d| d.bad),
                }
            })
            .collect();
        Ok(Response::new(DevicesResponse { devices }))
    }

    async fn fleet(&self, _request: Request<FleetRequest>) -> Result<Response<FleetResponse>, Status> {
        // No harvest coordination runs on this gateway yet: an empty fleet, said so.
        Ok(Response::new(FleetResponse {
            as_of: Some(Timestamp::now().into()),
            machines: Vec::new(),
            assignments: Vec::new(),
            warnings: vec!["no harvest coordination is configured on this gateway".to_owned()],
        }))
    }
}
