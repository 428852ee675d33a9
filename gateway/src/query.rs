//! `fieldgate.v1.QueryService`: stats from the store (through [`fieldgate_analytics`]), the
//! latest values and the device list from the live state.
//!
//! Errors say what was wrong with the question (`INVALID_ARGUMENT`: an unknown device name, a
//! window that is not a multiple of a stored one, `from` after `to`, a bad page token), or
//! that the store is not running (`UNAVAILABLE`). Long answers come in pages.

use crate::deadline;
use crate::live::LiveState;
use fieldgate_analytics::{Aggregate, QueryError, StatsQuery, TopQuery};
use fieldgate_proto::v1::query_service_server::QueryService;
use fieldgate_proto::v1::{
    self, DevicesRequest, DevicesResponse, FleetRequest, FleetResponse, GapsRequest, GapsResponse,
    LatestRequest, LatestResponse, StatsRequest, StatsResponse, SummaryRequest, SummaryResponse, TopRequest,
    TopResponse,
};
use fieldgate_proto::{DeviceId, Metric, Source, Timestamp, wire};
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// Rows in one Stats page when the caller does not say; at most [`MAX_PAGE`].
pub const DEFAULT_PAGE: usize = 10_000;
pub const MAX_PAGE: usize = 100_000;
/// A device not heard from for this long is stale.
pub const STALE_AFTER: Duration = Duration::from_secs(600);
/// Devices in a Top answer when the caller does not say.
pub const DEFAULT_TOP: usize = 10;

/// The query service's view of a gateway, or of a collector's fleet.
#[derive(Debug, Clone)]
pub struct Queries {
    /// Where stats come from: the gateway's store, or a collector's files.
    pub stats: fieldgate_analytics::Source,
    /// The live state; `None` on a collector, which keeps none (Latest, Devices and Fleet
    /// are then answered UNIMPLEMENTED, saying so).
    pub live: Option<LiveState>,
    /// Devices in the config file, with their protocol.
    pub configured: BTreeMap<DeviceId, Source>,
    pub gaps: GapSource,
    /// The harvest coordinator's latest plan; `None` when `[coordination]` is not configured.
    pub fleet: Option<crate::coordination::FleetView>,
}

/// Where the Gaps RPC looks.
#[derive(Debug, Clone)]
pub enum GapSource {
    /// No upstream is configured: there are none.
    None,
    /// A gateway's outbox: gaps not delivered yet.
    Outbox { gateway: String, outbox: fieldgate_store::SharedOutbox },
    /// A collector's data directory: gaps received (`gaps/gateway=<id>/*.json`).
    Collector(PathBuf),
}

impl GapSource {
    /// The gaps of `gateways` (empty: all), oldest first per gateway.
    fn list(&self, gateways: &[String]) -> std::io::Result<Vec<v1::GapRecord>> {
        let wanted = |g: &str| gateways.is_empty() || gateways.iter().any(|w| w == g);
        let mut out = Vec::new();
        match self {
            GapSource::None => {}
            GapSource::Outbox { gateway, outbox } if wanted(gateway) => {
                let outbox = outbox.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                for e in outbox.sendable(u64::MAX).into_iter().filter(|e| e.window_ns == 0) {
                    if let Some(v1::batch::Body::Gap(g)) = outbox.read(e.seq)?.body {
                        out.push(gap_record(gateway, &g));
                    }
                }
            }
            GapSource::Outbox { .. } => {}
            GapSource::Collector(dir) => {
                let root = dir.join("gaps");
                for g in std::fs::read_dir(&root).into_iter().flatten().flatten() {
                    let name = g.file_name().to_string_lossy().into_owned();
                    let Some(gateway) = name.strip_prefix("gateway=") else { continue };
                    if !wanted(gateway) {
                        continue;
                    }
                    let mut files: Vec<_> =
                        std::fs::read_dir(g.path())?.flatten().map(|e| e.path()).collect();
                    files.sort();
                    for f in files.iter().filter(|f| f.extension().is_some_and(|x| x == "json")) {
                        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(f)?)
                            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
                        let time = |k: &str| {
                            v[k].as_str().and_then(|t| Timestamp::parse_rfc3339(t).ok()).map(Into::into)
                        };
                        out.push(v1::GapRecord {
                            gateway: gateway.to_owned(),
                            first_seq: v["dropped_first"].as_u64().unwrap_or(0),
                            last_seq: v["dropped_last"].as_u64().unwrap_or(0),
                            from: time("from"),
                            to: time("to"),
                            rows: v["rows"].as_u64().unwrap_or(0),
                            reason: v["reason"].as_str().unwrap_or_default().to_owned(),
                        });
                    }
                }
            }
        }
        Ok(out)
    }
}

fn gap_record(gateway: &str, g: &v1::Gap) -> v1::GapRecord {
    let dropped = g.dropped.unwrap_or_default();
    v1::GapRecord {
        gateway: gateway.to_owned(),
        first_seq: dropped.first,
        last_seq: dropped.last,
        from: Some(Timestamp::from_nanos(g.from_ns).into()),
        to: Some(Timestamp::from_nanos(g.to_ns).into()),
        rows: g.rows,
        reason: g.reason.clone(),
    }
}

/// What Latest, Devices and Fleet answer on a collector.
fn no_live_state() -> Status {
    Status::unimplemented("a collector keeps no live state: ask the gateway, or use Summary over a range")
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

fn invalid(e: impl ToString) -> Status {
    Status::invalid_argument(e.to_string())
}

/// `from` (required) and `to` (unset: now) of a request.
fn range(
    from: Option<&prost_types::Timestamp>,
    to: Option<&prost_types::Timestamp>,
) -> Result<(Timestamp, Option<Timestamp>), Status> {
    let from = from.ok_or_else(|| Status::invalid_argument("`from` is required"))?;
    let from = wire::timestamp("from", from).map_err(invalid)?;
    let to = to.map(|t| wire::timestamp("to", t)).transpose().map_err(invalid)?;
    Ok((from, to))
}

impl Queries {
    fn stats_query(&self, r: &StatsRequest) -> Result<StatsQuery, Status> {
        let (from, to) = range(r.from.as_ref(), r.to.as_ref())?;
        let window = r.window.as_ref().map(|w| wire::duration("window", w)).transpose().map_err(invalid)?;
        Ok(StatsQuery {
            devices: names("devices", &r.devices, wire::device)?,
            metrics: names("metrics", &r.metrics, wire::metric)?,
            from,
            to,
            window,
        })
    }

    fn top_query(r: &TopRequest) -> Result<TopQuery, Status> {
        if r.metric.is_empty() {
            return Err(Status::invalid_argument("`metric` is required"));
        }
        let (from, to) = range(r.from.as_ref(), r.to.as_ref())?;
        let aggregate = match v1::Aggregate::try_from(r.aggregate) {
            Ok(v1::Aggregate::Unspecified | v1::Aggregate::Mean) => Aggregate::Mean,
            Ok(v1::Aggregate::Min) => Aggregate::Min,
            Ok(v1::Aggregate::Max) => Aggregate::Max,
            Ok(v1::Aggregate::Sum) => Aggregate::Sum,
            Ok(v1::Aggregate::Count) => Aggregate::Count,
            Ok(v1::Aggregate::First) => Aggregate::First,
            Ok(v1::Aggregate::Last) => Aggregate::Last,
            Err(_) => {
                return Err(Status::invalid_argument(format!("`aggregate` {} is not one", r.aggregate)));
            }
        };
        Ok(TopQuery {
            metric: wire::metric("metric", &r.metric).map_err(invalid)?,
            devices: names("devices", &r.devices, wire::device)?,
            from,
            to,
            aggregate,
            n: if r.n == 0 { DEFAULT_TOP } else { r.n as usize },
            ascending: r.ascending,
        })
    }

    /// Every device the gateway knows: configured or heard from, with what it knows of it.
    fn known(&self) -> BTreeMap<DeviceId, (Option<crate::live::Device>, bool)> {
        let live = self.live.as_ref().map(LiveState::devices).unwrap_or_default();
        let mut all: BTreeMap<DeviceId, (Option<crate::live::Device>, bool)> =
            live.into_iter().map(|(id, d)| (id, (Some(d), false))).collect();
        for id in self.configured.keys() {
            all.entry(id.clone()).or_insert((None, false)).1 = true;
        }
        all
    }

    fn source_of(&self, id: &DeviceId, d: Option<&crate::live::Device>) -> v1::Source {
        d.map(|d| d.source)
            .or_else(|| self.configured.get(id).copied())
            .map_or(v1::Source::Unspecified, v1::Source::from)
    }
}

fn health(configured: bool, d: Option<&crate::live::Device>, now: Timestamp) -> v1::DeviceHealth {
    match d {
        None if configured => v1::DeviceHealth::NeverSeen,
        None => v1::DeviceHealth::Unspecified,
        Some(d) if now.duration_since(d.last_seen) > STALE_AFTER => v1::DeviceHealth::Stale,
        // Mostly bad readings: answering with errors.
        Some(d) if d.readings > 0 && d.bad * 2 > d.readings => v1::DeviceHealth::Failing,
        Some(_) => v1::DeviceHealth::Ok,
    }
}

#[tonic::async_trait]
impl QueryService for Queries {
    async fn stats(&self, request: Request<StatsRequest>) -> Result<Response<StatsResponse>, Status> {
        let budget = deadline::budget(request.metadata());
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
        let work = async { fieldgate_analytics::stats(&self.stats, &q).await.map_err(query_status) };
        let answer = deadline::within(budget, "the stats query", "", work).await?;
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
        let live = self.live.as_ref().ok_or_else(no_live_state)?;
        let mut values = Vec::new();
        for (id, d) in live.devices() {
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
        if self.live.is_none() {
            return Err(no_live_state());
        }
        let now = Timestamp::now();
        let devices = self
            .known()
            .into_iter()
            .map(|(id, (d, configured))| {
                let d = d.as_ref();
                v1::Device {
                    id: id.to_string(),
                    source: self.source_of(&id, d).into(),
                    configured,
                    first_seen: d.map(|d| d.first_seen.into()),
                    last_seen: d.map(|d| d.last_seen.into()),
                    health: health(configured, d, now).into(),
                    readings: d.map_or(0, |d| d.readings),
                    errors: d.map_or(0, |d| d.bad),
                }
            })
            .collect();
        Ok(Response::new(DevicesResponse { devices }))
    }

    async fn top(&self, request: Request<TopRequest>) -> Result<Response<TopResponse>, Status> {
        let q = Self::top_query(request.get_ref())?;
        let work = async { fieldgate_analytics::top(&self.stats, &q).await.map_err(query_status) };
        let answer =
            deadline::within(deadline::budget(request.metadata()), "the top query", "", work).await?;
        let rows = answer
            .rows
            .into_iter()
            .map(|r| v1::TopRow {
                device: r.device,
                value: r.value,
                count: r.count,
                last_ts: Some(r.last_ts.into()),
            })
            .collect();
        Ok(Response::new(TopResponse {
            rows,
            source_window: Some(wire::to_wire_duration(answer.source_window)),
        }))
    }

    async fn summary(&self, request: Request<SummaryRequest>) -> Result<Response<SummaryResponse>, Status> {
        let budget = deadline::budget(request.metadata());
        let r = request.into_inner();
        let (from, to) = range(r.from.as_ref(), r.to.as_ref())?;
        let wanted: Vec<DeviceId> = names("devices", &r.devices, wire::device)?;
        let work = async {
            fieldgate_analytics::activity(&self.stats, &wanted, from, to).await.map_err(query_status)
        };
        let answer = deadline::within(budget, "the summary query", "", work).await?;
        let mut activity: BTreeMap<String, fieldgate_analytics::DeviceActivity> =
            answer.rows.into_iter().map(|a| (a.device.clone(), a)).collect();
        let now = Timestamp::now();
        let mut known = self.known();
        // Devices with rows in the range but neither configured nor in the registry any more.
        for name in activity.keys() {
            if let Ok(id) = DeviceId::new(name) {
                known.entry(id).or_insert((None, false));
            }
        }
        let devices = known
            .into_iter()
            .filter(|(id, _)| wanted.is_empty() || wanted.contains(id))
            .map(|(id, (d, configured))| {
                let d = d.as_ref();
                let a = activity.remove(id.as_str());
                v1::DeviceSummary {
                    device: id.to_string(),
                    source: self.source_of(&id, d).into(),
                    readings: a.as_ref().map_or(0, |a| a.readings),
                    metrics: a.as_ref().map_or(0, |a| a.metrics),
                    readings_per_minute: a.as_ref().map_or(0.0, |a| a.per_minute),
                    first_ts: a.as_ref().map(|a| a.first_ts.into()),
                    last_ts: a.as_ref().map(|a| a.last_ts.into()),
                    last_seen: d.map(|d| d.last_seen.into()),
                    errors: d.map_or(0, |d| d.bad),
                    health: health(configured, d, now).into(),
                }
            })
            .collect();
        Ok(Response::new(SummaryResponse {
            devices,
            source_window: Some(wire::to_wire_duration(answer.source_window)),
        }))
    }

    async fn gaps(&self, request: Request<GapsRequest>) -> Result<Response<GapsResponse>, Status> {
        let gateways = request.into_inner().gateways;
        let source = self.gaps.clone();
        let gaps = tokio::task::spawn_blocking(move || source.list(&gateways))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(format!("cannot read the gaps: {e}")))?;
        Ok(Response::new(GapsResponse { gaps }))
    }

    async fn fleet(&self, _request: Request<FleetRequest>) -> Result<Response<FleetResponse>, Status> {
        if self.live.is_none() {
            return Err(no_live_state());
        }
        let empty = |warning: &str| FleetResponse {
            as_of: Some(Timestamp::now().into()),
            machines: Vec::new(),
            assignments: Vec::new(),
            warnings: vec![warning.to_owned()],
        };
        Ok(Response::new(match &self.fleet {
            None => {
                empty("no harvest coordination is configured on this gateway: add a [coordination] section")
            }
            Some(view) => {
                view.get().unwrap_or_else(|| empty("harvest coordination has not made its first plan yet"))
            }
        }))
    }
}
