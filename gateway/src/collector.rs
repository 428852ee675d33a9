//! The collector: the reference upstream for a fleet of gateways (`fieldgate collector`).
//!
//! Each gateway holds one `UpstreamService/Forward` stream. The collector speaks first with a
//! Welcome naming every sequence number it already holds for that gateway's outbox, then
//! stores each batch durably and acknowledges it. A batch it already holds (the gateway did not
//! get the ack before its link or process died) is acknowledged again and not stored twice:
//! deduplication is by (gateway, outbox, sequence number).
//!
//! Where batches land is behind [`BatchSink`]; [`ParquetSink`] writes local Parquet that
//! DuckDB, polars or pandas read with hive partitioning:
//!
//! ```text
//! DIR/rollups/gateway=<id>/window=1m/date=2026-11-24/batch-<outbox>-<seq>.parquet
//! DIR/gaps/gateway=<id>/gap-<outbox>-<seq>.json        what a gateway had to drop, and why
//! DIR/ledger/<id>/<outbox>.seqs                        sequence numbers stored (the truth)
//! ```
//! A batch's files are written (fsync'd, renamed) before its number enters the ledger, and the
//! ledger is fsync'd before the ack. A crash in between leaves files of a batch not in the
//! ledger: the gateway sends it again and the same file names are written again, so nothing is
//! counted twice.

use fieldgate_proto::v1::upstream_message::Kind as UpKind;
use fieldgate_proto::v1::upstream_service_server::{UpstreamService, UpstreamServiceServer};
use fieldgate_proto::v1::{
    Ack, Batch, CollectorMessage, Gap, SeqRange, UpstreamMessage, Welcome, batch, collector_message,
};
use fieldgate_store::{files, layout};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// Metadata key naming the gateway of a Forward stream.
pub const GATEWAY_HEADER: &str = "x-fieldgate-gateway";

/// Which outbox of which gateway a batch comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Origin {
    pub gateway: String,
    pub outbox: String,
}

/// Where the fleet's batches are stored. Implementations make a batch durable before
/// [`BatchSink::write`] returns; the collector acknowledges only then.
pub trait BatchSink: Send + Sync + 'static {
    /// The sequence numbers stored for `origin`, as sorted, disjoint ranges.
    fn stored(&self, origin: &Origin) -> io::Result<Vec<SeqRange>>;
    /// Store `batch` durably. Called one batch at a time per origin; a batch whose earlier
    /// write did not complete may come again and must then replace what that write left.
    fn write(&self, origin: &Origin, batch: &Batch) -> io::Result<()>;
}

/// Sorted sequence numbers as inclusive ranges.
pub fn ranges(seqs: impl IntoIterator<Item = u64>) -> Vec<SeqRange> {
    let mut out: Vec<SeqRange> = Vec::new();
    for s in seqs {
        match out.last_mut() {
            Some(r) if r.last + 1 == s => r.last = s,
            Some(r) if r.last >= s => {}
            _ => out.push(SeqRange { first: s, last: s }),
        }
    }
    out
}

/// The Welcome for what is stored: everything from 1 as `acked_through`, the rest beyond it.
pub fn welcome(stored: &[SeqRange]) -> Welcome {
    match stored.first() {
        Some(r) if r.first <= 1 => Welcome { acked_through: r.last, acked_beyond: stored[1..].to_vec() },
        _ => Welcome { acked_through: 0, acked_beyond: stored.to_vec() },
    }
}

/// Names a gateway or outbox may have in paths: what a device id allows.
fn check_name(what: &str, name: &str) -> Result<(), Status> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !name.starts_with('.');
    if ok { Ok(()) } else { Err(Status::invalid_argument(format!("{what} {name:?} is not a valid name"))) }
}

/// Local Parquet, one file per batch and day, plus a ledger per outbox.
pub struct ParquetSink {
    root: PathBuf,
    row_group_rows: usize,
    ledgers: Mutex<HashMap<Origin, Ledger>>,
    /// Held around writes (writers) and by queries (readers) while compaction swaps a day.
    locks: Arc<fieldgate_store::FileLocks>,
}

impl std::fmt::Debug for ParquetSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParquetSink").field("root", &self.root).finish_non_exhaustive()
    }
}

/// An append-only file of stored sequence numbers, each with its CRC.
struct Ledger {
    file: std::fs::File,
    seqs: BTreeSet<u64>,
}

const LEDGER_RECORD: usize = 12;

impl ParquetSink {
    pub fn new(root: impl Into<PathBuf>) -> ParquetSink {
        ParquetSink {
            root: root.into(),
            row_group_rows: 64 * 1024,
            ledgers: Mutex::new(HashMap::new()),
            locks: Arc::default(),
        }
    }

    /// The locks queries hold while they read the files (see [`ParquetSink::compact`]).
    pub fn locks(&self) -> Arc<fieldgate_store::FileLocks> {
        Arc::clone(&self.locks)
    }

    /// Compact every finished day: each gateway's batches of a day (those in the ledger)
    /// become one file per window size, as the gateway does with its own parts. Blocking.
    pub fn compact(
        &self,
        now_ns: i64,
        stopping: &std::sync::atomic::AtomicBool,
    ) -> io::Result<fieldgate_store::CompactionReport> {
        let stored = |gateway: &str, outbox: &str| -> io::Result<Vec<(u64, u64)>> {
            let origin = Origin { gateway: gateway.to_owned(), outbox: outbox.to_owned() };
            Ok(self.stored(&origin)?.into_iter().map(|r| (r.first, r.last)).collect())
        };
        fieldgate_store::compact::compact_fleet(
            &self.root,
            &stored,
            now_ns,
            self.row_group_rows,
            &self.locks,
            stopping,
        )
    }

    fn ledger_path(&self, origin: &Origin) -> PathBuf {
        self.root.join("ledger").join(&origin.gateway).join(format!("{}.seqs", origin.outbox))
    }

    /// Open (or create) the ledger of `origin`. A torn last record is cut off.
    fn open_ledger(&self, origin: &Origin) -> io::Result<Ledger> {
        let path = self.ledger_path(origin);
        let dir = path.parent().unwrap_or(&self.root);
        std::fs::create_dir_all(dir)?;
        let mut file = std::fs::OpenOptions::new().read(true).append(true).create(true).open(&path)?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)?;
        let mut seqs = BTreeSet::new();
        let mut good = 0;
        for rec in buf.chunks_exact(LEDGER_RECORD) {
            let seq = u64::from_le_bytes(rec[..8].try_into().unwrap_or_default());
            let crc = u32::from_le_bytes(rec[8..].try_into().unwrap_or_default());
            if crc32fast::hash(&rec[..8]) != crc {
                break;
            }
            seqs.insert(seq);
            good += LEDGER_RECORD;
        }
        if good < buf.len() {
            tracing::warn!(ledger = %path.display(), cut = buf.len() - good, "ledger tail torn; cut (those batches are sent again)");
            file.set_len(good as u64)?;
            file.sync_all()?;
        }
        fieldgate_store::wal::sync_dir(dir)?;
        Ok(Ledger { file, seqs })
    }

    fn with_ledger<T>(&self, origin: &Origin, f: impl FnOnce(&mut Ledger) -> io::Result<T>) -> io::Result<T> {
        let mut ledgers = self.ledgers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !ledgers.contains_key(origin) {
            let l = self.open_ledger(origin)?;
            ledgers.insert(origin.clone(), l);
        }
        f(ledgers.get_mut(origin).expect("inserted above"))
    }

    fn write_rollups(
        &self,
        origin: &Origin,
        seq: u64,
        c: &fieldgate_proto::v1::RollupColumns,
    ) -> io::Result<()> {
        let rows = fieldgate_store::outbox::decode_rollups(c)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        let mut by_date: BTreeMap<String, Vec<fieldgate_store::Rollup>> = BTreeMap::new();
        for r in rows {
            by_date.entry(fieldgate_proto::Timestamp::from_nanos(r.start).date_string()).or_default().push(r);
        }
        for (date, mut rows) in by_date {
            let path = self
                .root
                .join("rollups")
                .join(format!("gateway={}", origin.gateway))
                .join(format!("window={}", layout::window_label(c.window_ns)))
                .join(format!("date={date}"))
                .join(format!("batch-{}-{seq:020}.parquet", origin.outbox));
            let _writing = self.locks.writers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            files::write_fleet_rollups(&path, &origin.gateway, &mut rows, seq, self.row_group_rows)?;
        }
        Ok(())
    }

    fn write_gap(&self, origin: &Origin, seq: u64, gap: &Gap) -> io::Result<()> {
        let dir = self.root.join("gaps").join(format!("gateway={}", origin.gateway));
        let dropped = gap.dropped.unwrap_or_default();
        let record = serde_json::json!({
            "gateway": origin.gateway,
            "outbox": origin.outbox,
            "seq": seq,
            "dropped_first": dropped.first,
            "dropped_last": dropped.last,
            "from": fieldgate_proto::Timestamp::from_nanos(gap.from_ns).to_string(),
            "to": fieldgate_proto::Timestamp::from_nanos(gap.to_ns).to_string(),
            "rows": gap.rows,
            "reason": gap.reason,
        });
        let name = format!("gap-{}-{seq:020}.json", origin.outbox);
        fieldgate_store::state::write_atomic(&dir, &name, &[format!("{record}\n").as_bytes()], false)
    }
}

impl BatchSink for ParquetSink {
    fn stored(&self, origin: &Origin) -> io::Result<Vec<SeqRange>> {
        self.with_ledger(origin, |l| Ok(ranges(l.seqs.iter().copied())))
    }

    fn write(&self, origin: &Origin, b: &Batch) -> io::Result<()> {
        match &b.body {
            Some(batch::Body::Rollups(c)) => self.write_rollups(origin, b.seq, c)?,
            Some(batch::Body::Gap(g)) => self.write_gap(origin, b.seq, g)?,
            None => return Err(io::Error::new(io::ErrorKind::InvalidData, "a batch without a body")),
        }
        self.with_ledger(origin, |l| {
            if l.seqs.contains(&b.seq) {
                return Ok(());
            }
            let mut rec = [0u8; LEDGER_RECORD];
            rec[..8].copy_from_slice(&b.seq.to_le_bytes());
            let crc = crc32fast::hash(&rec[..8]);
            rec[8..].copy_from_slice(&crc.to_le_bytes());
            l.file.write_all(&rec)?;
            l.file.sync_data()?;
            l.seqs.insert(b.seq);
            Ok(())
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct RefusedLabels {
    pub reason: &'static str,
}

/// `fieldgate_collector_*`. No label names a gateway: the series stay fixed however large the
/// fleet grows (the ledger and the logs say which gateway).
#[derive(Debug, Clone, Default)]
pub struct CollectorMetrics {
    pub streams_open: prometheus_client::metrics::gauge::Gauge,
    pub streams_refused: prometheus_client::metrics::family::Family<
        RefusedLabels,
        prometheus_client::metrics::counter::Counter,
    >,
    pub batches_stored: prometheus_client::metrics::counter::Counter,
    pub rows_stored: prometheus_client::metrics::counter::Counter,
    pub batches_duplicate: prometheus_client::metrics::counter::Counter,
    pub gaps_stored: prometheus_client::metrics::counter::Counter,
    pub write_errors: prometheus_client::metrics::counter::Counter,
}

impl CollectorMetrics {
    pub fn register(registry: &mut prometheus_client::registry::Registry) -> Self {
        let m = CollectorMetrics::default();
        let r = registry.sub_registry_with_prefix("fieldgate_collector");
        r.register("streams_open", "Gateways with a Forward stream open", m.streams_open.clone());
        r.register("streams_refused", "Forward streams refused, by reason", m.streams_refused.clone());
        r.register("batches_stored", "Rollup batches stored", m.batches_stored.clone());
        r.register("rows_stored", "Rollup rows stored", m.rows_stored.clone());
        r.register(
            "batches_duplicate",
            "Batches received again (the gateway missed the ack) and acknowledged without storing",
            m.batches_duplicate.clone(),
        );
        r.register(
            "gaps_stored",
            "Gap records stored (rows a gateway dropped at its disk cap)",
            m.gaps_stored.clone(),
        );
        r.register(
            "write_errors",
            "Batches that could not be stored (the gateway keeps them)",
            m.write_errors.clone(),
        );
        m
    }

    fn refused(&self, reason: &'static str) {
        self.streams_refused.get_or_create(&RefusedLabels { reason }).inc();
    }
}

/// The UpstreamService of the collector.
pub struct Collector {
    sink: Arc<dyn BatchSink>,
    metrics: CollectorMetrics,
    /// Per gateway, the token it must present (`None`: no tokens required).
    tokens: Option<Arc<HashMap<String, Vec<u8>>>>,
    /// Origins with an open stream: a second stream for the same outbox is refused until the
    /// first ends, so batches of one outbox are stored one at a time.
    open: Arc<Mutex<BTreeSet<Origin>>>,
}

impl Collector {
    pub fn new(
        sink: Arc<dyn BatchSink>,
        tokens: Option<HashMap<String, Vec<u8>>>,
        metrics: CollectorMetrics,
    ) -> Collector {
        Collector { sink, metrics, tokens: tokens.map(Arc::new), open: Arc::default() }
    }

    /// The tonic service, accepting gzip-compressed streams.
    pub fn into_service(self) -> UpstreamServiceServer<Collector> {
        UpstreamServiceServer::new(self)
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
            .send_compressed(tonic::codec::CompressionEncoding::Gzip)
            .max_decoding_message_size(64 << 20)
    }

    fn authorize(&self, gateway: &str, request: &Request<Streaming<UpstreamMessage>>) -> Result<(), Status> {
        let Some(tokens) = &self.tokens else { return Ok(()) };
        let given = crate::grpc::bearer(request.metadata())
            .ok_or_else(|| Status::unauthenticated("the collector needs `authorization: Bearer <token>`"))?;
        match tokens.get(gateway) {
            Some(expected) if crate::grpc::constant_time_eq(given, expected) => Ok(()),
            _ => Err(Status::unauthenticated(format!("the token is not valid for gateway {gateway:?}"))),
        }
    }
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector")
            .field("tokens", &self.tokens.as_ref().map(|t| t.len()))
            .finish_non_exhaustive()
    }
}

/// Removes an origin from the open set when its stream ends.
struct OpenGuard(Arc<Mutex<BTreeSet<Origin>>>, Origin, CollectorMetrics);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&self.1);
        self.2.streams_open.dec();
    }
}

fn message(kind: collector_message::Kind) -> CollectorMessage {
    CollectorMessage { kind: Some(kind) }
}

#[tonic::async_trait]
impl UpstreamService for Collector {
    type ForwardStream = ReceiverStream<Result<CollectorMessage, Status>>;

    async fn forward(
        &self,
        request: Request<Streaming<UpstreamMessage>>,
    ) -> Result<Response<Self::ForwardStream>, Status> {
        let gateway = request
            .metadata()
            .get(GATEWAY_HEADER)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Status::invalid_argument(format!("a Forward stream needs `{GATEWAY_HEADER}`")))?
            .to_owned();
        check_name("gateway", &gateway).inspect_err(|_| self.metrics.refused("bad_hello"))?;
        self.authorize(&gateway, &request).inspect_err(|_| self.metrics.refused("unauthenticated"))?;
        let mut inbound = request.into_inner();
        let hello = match inbound.message().await? {
            Some(UpstreamMessage { kind: Some(UpKind::Hello(h)) }) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message of a Forward stream must be a Hello",
                ));
            }
        };
        if hello.gateway_id != gateway {
            self.metrics.refused("bad_hello");
            return Err(Status::invalid_argument(format!(
                "the Hello names gateway {:?} but the stream is for {gateway:?}",
                hello.gateway_id
            )));
        }
        check_name("outbox", &hello.outbox_id).inspect_err(|_| self.metrics.refused("bad_hello"))?;
        let origin = Origin { gateway, outbox: hello.outbox_id };
        if !self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(origin.clone()) {
            self.metrics.refused("busy");
            return Err(Status::unavailable(format!(
                "gateway {:?} already has a stream open; try again when it ends",
                origin.gateway
            )));
        }
        self.metrics.streams_open.inc();
        let guard = OpenGuard(Arc::clone(&self.open), origin.clone(), self.metrics.clone());
        let metrics = self.metrics.clone();
        let sink = Arc::clone(&self.sink);
        let stored = {
            let (sink, origin) = (Arc::clone(&sink), origin.clone());
            tokio::task::spawn_blocking(move || sink.stored(&origin))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(|e| Status::unavailable(format!("the collector cannot read its ledger: {e}")))?
        };
        tracing::info!(gateway = %origin.gateway, outbox = %origin.outbox, version = %hello.software_version, stored = ?stored.last().map(|r| r.last), "gateway connected");
        let (tx, rx) = mpsc::channel(256);
        tx.send(Ok(message(collector_message::Kind::Welcome(welcome(&stored)))))
            .await
            .map_err(|_| Status::cancelled("the gateway went away"))?;
        let mut have: BTreeSet<u64> = stored.iter().flat_map(|r| r.first..=r.last).collect();
        tokio::spawn(async move {
            let _open = guard;
            loop {
                let batch = match inbound.message().await {
                    Ok(Some(UpstreamMessage { kind: Some(UpKind::Batch(b)) })) => b,
                    Ok(Some(_)) => {
                        let _ =
                            tx.send(Err(Status::invalid_argument("only batches may follow the Hello"))).await;
                        break;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::info!(gateway = %origin.gateway, error = %e, "stream from the gateway ended");
                        break;
                    }
                };
                let seq = batch.seq;
                if have.contains(&seq) {
                    metrics.batches_duplicate.inc();
                } else {
                    let rows = match &batch.body {
                        Some(batch::Body::Rollups(c)) => Some(c.count.len() as u64),
                        _ => None,
                    };
                    let (sink, o) = (Arc::clone(&sink), origin.clone());
                    let written = tokio::task::spawn_blocking(move || sink.write(&o, &batch)).await;
                    match written {
                        Ok(Ok(())) => match rows {
                            Some(n) => {
                                metrics.batches_stored.inc();
                                metrics.rows_stored.inc_by(n);
                            }
                            None => {
                                metrics.gaps_stored.inc();
                            }
                        },
                        Ok(Err(e)) => {
                            metrics.write_errors.inc();
                            tracing::error!(gateway = %origin.gateway, seq, error = %e, "cannot store a batch; the gateway keeps it and sends it again");
                            let status = if e.kind() == io::ErrorKind::InvalidData {
                                Status::invalid_argument(format!("batch {seq}: {e}"))
                            } else {
                                Status::unavailable(format!("batch {seq} not stored: {e}"))
                            };
                            let _ = tx.send(Err(status)).await;
                            break;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                            break;
                        }
                    }
                    have.insert(seq);
                }
                let ack = Ack { ranges: vec![SeqRange { first: seq, last: seq }] };
                if tx.send(Ok(message(collector_message::Kind::Ack(ack)))).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Parse a tokens file: `<gateway-id> <token>` per line; blank lines and `#` comments skipped.
pub fn parse_tokens(text: &str) -> Result<HashMap<String, Vec<u8>>, String> {
    let mut out = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (gateway, token) = line
            .split_once(char::is_whitespace)
            .map(|(g, t)| (g.trim(), t.trim()))
            .filter(|(_, t)| !t.is_empty())
            .ok_or_else(|| format!("line {}: expected `<gateway-id> <token>`", i + 1))?;
        check_name("gateway", gateway).map_err(|e| format!("line {}: {}", i + 1, e.message()))?;
        if out.insert(gateway.to_owned(), token.as_bytes().to_vec()).is_some() {
            return Err(format!("line {}: gateway {gateway:?} is listed twice", i + 1));
        }
    }
    Ok(out)
}

/// Serve the collector on `listener` until `shutdown`: UpstreamService, the QueryService over
/// the fleet's files in `data_dir` (Stats, Top, Summary, Gaps; with `query_token` required
/// when given), and gRPC health.
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    listener: tokio::net::TcpListener,
    http: tokio::net::TcpListener,
    sink: Arc<ParquetSink>,
    tokens: Option<HashMap<String, Vec<u8>>>,
    query_token: Option<Vec<u8>>,
    tls: Option<crate::config::GrpcTls>,
    data_dir: &Path,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let http_addr = http.local_addr()?;
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = CollectorMetrics::register(&mut registry);
    let status = crate::health::Health::default();
    status.set(
        "collector",
        crate::health::Status::Up,
        format!("gRPC on {addr}, data in {}", data_dir.display()),
    );
    let http_server = tokio::spawn(crate::http::serve(
        http,
        Arc::new(registry),
        status,
        crate::live::LiveState::default(),
        shutdown.clone(),
    ));
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", tonic_health::ServingStatus::Serving).await;
    health.set_service_status("fieldgate.v1.UpstreamService", tonic_health::ServingStatus::Serving).await;
    let mut builder = tonic::transport::Server::builder()
        // A gateway whose link died silently is noticed, and its outbox's slot freed.
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)));
    let secure = tls.is_some();
    if let Some(tls) = &tls {
        builder = builder.tls_config(crate::grpc::server_tls(tls))?;
    }
    tracing::info!(%addr, %http_addr, data_dir = %data_dir.display(), tls = secure, tokens = tokens.is_some(), "collector listening");
    // Finished days are compacted in the background, as on a gateway.
    let stop_compacting = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (wake, sleep) = std::sync::mpsc::channel::<()>();
    let compactor = {
        let (sink, stop) = (Arc::clone(&sink), Arc::clone(&stop_compacting));
        std::thread::Builder::new().name("fieldgate-compact".into()).spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                sleep.recv_timeout(fieldgate_store::compact::INTERVAL)
            {
                match sink.compact(fieldgate_proto::Timestamp::now().as_nanos(), &stop) {
                    Ok(r) if r.partitions > 0 => {
                        tracing::info!(days = r.partitions, files = r.files_in, rows = r.rows, "compacted finished days")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "compaction failed; the files stay as they were; retrying later"),
                }
            }
        })?
    };
    let queries = crate::query::Queries {
        stats: fieldgate_analytics::Source::Fleet {
            data_dir: data_dir.to_owned(),
            locks: Some(sink.locks()),
        },
        live: None,
        configured: std::collections::BTreeMap::new(),
        gaps: crate::query::GapSource::Collector(data_dir.to_owned()),
        fleet: None,
    };
    let auth = crate::grpc::Auth { expected: query_token.map(Arc::new) };
    let queries =
        fieldgate_proto::v1::query_service_server::QueryServiceServer::with_interceptor(queries, move |r| {
            auth.check(r)
        });
    let server = builder
        .add_service(health_service)
        .add_service(Collector::new(sink.clone(), tokens, metrics).into_service())
        .add_service(queries)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown.clone().cancelled_owned(),
        );
    // Gateways hold their streams open for good: a graceful stop gives them a moment, then
    // drops them. A batch being written finishes; one not yet acknowledged is sent again.
    tokio::select! {
        served = server => served?,
        () = async {
            shutdown.cancelled().await;
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        } => tracing::info!("gateways still connected at shutdown were dropped"),
    }
    let _ = http_server.await;
    stop_compacting.store(true, std::sync::atomic::Ordering::Release);
    drop(wake);
    let _ = tokio::task::spawn_blocking(move || compactor.join()).await;
    tracing::info!("collector stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_files_name_each_gateway_once() {
        let t = parse_tokens("# fleet\ngw-1 s3cret\n\ngw-2   other token\n").unwrap();
        assert_eq!(t["gw-1"], b"s3cret");
        assert_eq!(t["gw-2"], b"other token");
        assert!(parse_tokens("gw-1\n").unwrap_err().starts_with("line 1"));
        assert!(parse_tokens("gw-1 a\ngw-1 b\n").unwrap_err().contains("twice"));
        assert!(parse_tokens("../x a\n").is_err());
    }

    #[test]
    fn stored_numbers_become_a_welcome() {
        let r = ranges([1, 2, 3, 5, 7, 8]);
        assert_eq!(
            r,
            vec![
                SeqRange { first: 1, last: 3 },
                SeqRange { first: 5, last: 5 },
                SeqRange { first: 7, last: 8 }
            ]
        );
        let w = welcome(&r);
        assert_eq!(w.acked_through, 3);
        assert_eq!(w.acked_beyond.len(), 2);
        let w = welcome(&ranges([4, 5]));
        assert_eq!((w.acked_through, w.acked_beyond.len()), (0, 1));
        assert_eq!(welcome(&[]).acked_through, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn finished_days_are_compacted_and_answer_the_same() {
        use fieldgate_analytics::{Source, StatsQuery, stats};
        use fieldgate_proto::{DeviceId, Metric, Timestamp};
        const MIN: i64 = 60_000_000_000;
        // 2026-10-01T00:00:00Z, long over.
        let day = 1_790_812_800_000_000_000_i64;
        let dir = tempfile::tempdir().unwrap();
        let sink = Arc::new(ParquetSink::new(dir.path()));
        let origin = Origin { gateway: "farm-1".into(), outbox: "abc".into() };
        let minute = |m: i64| -> Vec<fieldgate_store::Rollup> {
            (0..4)
                .map(|d| fieldgate_store::Rollup {
                    device: DeviceId::new(&format!("silo-{d}")).unwrap(),
                    metric: Metric::new("level_pct").unwrap(),
                    window_ns: MIN,
                    start: day + m * MIN,
                    count: 2,
                    min: m as f64,
                    max: m as f64 + d as f64,
                    sum: 2.0 * m as f64 + d as f64,
                    first: m as f64,
                    last: m as f64 + d as f64,
                    first_ts: day + m * MIN + 1,
                    last_ts: day + m * MIN + 2,
                })
                .collect()
        };
        let batch = |seq: u64, m: i64| Batch {
            seq,
            body: Some(batch::Body::Rollups(fieldgate_store::outbox::encode_rollups(MIN, &minute(m)))),
        };
        for seq in 1..=30 {
            sink.write(&origin, &batch(seq, seq as i64)).unwrap();
        }
        // Written, but its ledger entry lost in a crash: the gateway will send it again.
        let Some(batch::Body::Rollups(c)) = batch(31, 31).body else { unreachable!() };
        sink.write_rollups(&origin, 31, &c).unwrap();
        let source = Source::Fleet { data_dir: dir.path().to_owned(), locks: Some(sink.locks()) };
        let q = StatsQuery {
            devices: vec![],
            metrics: vec![],
            from: Timestamp::from_nanos(day),
            to: Some(Timestamp::from_nanos(day + 60 * MIN)),
            window: Some(std::time::Duration::from_secs(600)),
        };
        let before = stats(&source, &q).await.unwrap();
        let day_dir = dir.path().join("rollups/gateway=farm-1/window=1m/date=2026-10-01");
        assert_eq!(std::fs::read_dir(&day_dir).unwrap().count(), 31);

        let stop = std::sync::atomic::AtomicBool::new(false);
        let compacting = Arc::clone(&sink);
        let report =
            tokio::task::spawn_blocking(move || compacting.compact(Timestamp::now().as_nanos(), &stop))
                .await
                .unwrap()
                .unwrap();
        assert_eq!((report.partitions, report.files_in, report.rows), (1, 30, 120));
        let mut left: Vec<String> = std::fs::read_dir(&day_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            vec![format!("batch-abc-{:020}.parquet", 30), format!("batch-abc-{:020}.parquet", 31)],
            "the ledger's batches in one file, named for the newest; the unrecorded one left alone"
        );
        assert_eq!(stats(&source, &q).await.unwrap(), before, "the same answers from the compacted day");
    }

    #[test]
    fn the_ledger_survives_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let origin = Origin { gateway: "gw-1".into(), outbox: "abc".into() };
        let sink = ParquetSink::new(dir.path());
        let gap = |seq| Batch {
            seq,
            body: Some(batch::Body::Gap(Gap { rows: 3, reason: "test".into(), ..Gap::default() })),
        };
        for seq in [1, 2, 4] {
            sink.write(&origin, &gap(seq)).unwrap();
        }
        sink.write(&origin, &gap(2)).unwrap();
        assert_eq!(sink.stored(&origin).unwrap(), ranges([1, 2, 4]));
        drop(sink);
        // Half a record at the end, as a power cut mid-append leaves it.
        let path = dir.path().join("ledger/gw-1/abc.seqs");
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[9, 0, 0]).unwrap();
        let sink = ParquetSink::new(dir.path());
        assert_eq!(sink.stored(&origin).unwrap(), ranges([1, 2, 4]));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 3 * LEDGER_RECORD as u64);
        let gaps = std::fs::read_dir(dir.path().join("gaps/gateway=gw-1")).unwrap().count();
        assert_eq!(gaps, 3);
    }
}
