//! Upstream forwarding against a real collector process (`fieldgate collector`) on loopback:
//! every closed window the gateway stores reaches the collector exactly once, whether the
//! collector is down for a while or killed mid-stream, or the gateway is killed; a full outbox
//! reports what it dropped; and three gateways' data adds up in the collector's stats.

use fieldgate::config::Config;
use fieldgate_proto::{DeviceId, Metric, Quality, Reading, Source, Timestamp};
use fieldgate_tests::{
    GatewayProcess, fleet_rollup_rows, free_port, metric, query_cli, rollup_rows, wait_metric, write_config,
};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

const S: i64 = 1_000_000_000;
/// 2026-10-01T00:00:00Z: readings are stamped in the past; windows close by their own clock.
const BASE: i64 = 1_790_812_800 * S;
const SERIES: u64 = 12;

/// Reading `j`: series `j % 12`, 1 s apart per series, value `j`.
fn reading(j: u64) -> Reading {
    Reading {
        device: DeviceId::new(&format!("silo-{}", j % SERIES / 3)).unwrap(),
        metric: Metric::new(&format!("m{}", j % 3)).unwrap(),
        ts: Timestamp::from_nanos(BASE + (j / SERIES) as i64 * S),
        value: (j % 97) as f64,
        quality: Quality::Good,
        source: Source::Mqtt,
    }
}

fn config(dir: &Path, collector: SocketAddr, extra: &str) -> Config {
    config_at(dir, &format!("http://{collector}"), extra)
}

/// [`config`] with the collector's URL given whole (`https://...`).
fn config_at(dir: &Path, endpoint: &str, extra: &str) -> Config {
    let path = write_config(
        dir,
        &format!(
            "\n[store]\nwindows = [\"10s\", \"1m\"]\nallowed_lateness = \"0s\"\n\n[upstream]\nendpoint = \"{endpoint}\"\nwindows = [\"10s\", \"1m\"]\nbatch_rows = 40\nreconnect_min = \"20ms\"\nreconnect_max = \"200ms\"\n{extra}"
        ),
    );
    let mut config = Config::load(&path).unwrap();
    // Flushes often (below what the config file allows), so batches flow while the test runs.
    config.store.flush_interval = Duration::from_millis(50);
    config
}

/// A collector process on `addr` with its data in `dir`, and the address of its `/metrics`.
fn collector_with_http(dir: &Path, addr: SocketAddr) -> (GatewayProcess, SocketAddr) {
    let dir = dir.to_str().unwrap();
    let args =
        ["collector", "--listen", &addr.to_string(), "--data-dir", dir, "--http-listen", "127.0.0.1:0"];
    let mut c = GatewayProcess::spawn(&args);
    let http = c.wait_for("collector listening")["http_addr"].as_str().unwrap().parse().unwrap();
    (c, http)
}

fn collector(dir: &Path, addr: SocketAddr) -> GatewayProcess {
    collector_with_http(dir, addr).0
}

/// Submit readings `from..to` in batches of 24, each acknowledged by the store.
async fn submit(running: &fieldgate::Running, from: u64, to: u64) -> u64 {
    let sink = running.sink();
    let mut seq = 0;
    for start in (from..to).step_by(24) {
        let batch: Vec<Reading> = (start..(start + 24).min(to)).map(reading).collect();
        seq = sink.submit(batch, Timestamp::now()).await.unwrap().await.unwrap().seq;
    }
    seq
}

/// Wait until the gauge `name` reads exactly `value` (polling the gateway's own metric with a
/// deadline: the metric is the event).
fn wait_gauge(addr: SocketAddr, name: &str, value: f64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = metric(addr, name);
        if v == Some(value) {
            return;
        }
        assert!(Instant::now() < deadline, "{name} stayed at {v:?}, not {value}");
        std::thread::park_timeout(Duration::from_millis(20));
    }
}

/// The sequence numbers a collector stored for `gateway`, in the order it stored them.
fn ledger(collector_dir: &Path, gateway: &str) -> Vec<u64> {
    let dir = collector_dir.join("ledger").join(gateway);
    let file = std::fs::read_dir(&dir).unwrap().next().unwrap().unwrap().path();
    std::fs::read(file)
        .unwrap()
        .chunks_exact(12)
        .map(|r| u64::from_le_bytes(r[..8].try_into().unwrap()))
        .collect()
}

/// The sequence numbers of the batch files under `dir` (`batch-<outbox>-<seq>.parquet`).
fn seqs_in(dir: &Path) -> std::collections::BTreeSet<u64> {
    let mut out = std::collections::BTreeSet::new();
    for day in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(day.path()).unwrap().flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if let Some(seq) = name.strip_suffix(".parquet").and_then(|n| n.rsplit('-').next()) {
                out.insert(seq.parse().unwrap());
            }
        }
    }
    out
}

/// A rollup row as the tests compare it: (device, metric, window_start, count, sum).
type Row = (String, String, i64, u64, f64);

/// Rows only on one side, each side's extras listed (for a readable failure).
fn differences(ours: &[Row], theirs: &[Row]) -> String {
    let count = |rows: &[Row]| {
        let mut m = std::collections::BTreeMap::new();
        for r in rows {
            *m.entry(format!("{r:?}")).or_insert(0i64) += 1;
        }
        m
    };
    let (a, b) = (count(ours), count(theirs));
    let mut out = String::new();
    for (k, n) in &a {
        let m = b.get(k).copied().unwrap_or(0);
        if m != *n {
            out.push_str(&format!("gateway {n} x, collector {m} x: {k}\n"));
        }
    }
    for (k, m) in &b {
        if !a.contains_key(k) {
            out.push_str(&format!("gateway 0 x, collector {m} x: {k}\n"));
        }
    }
    out
}

/// The gateway's rows and the collector's rows of both window sizes, each sorted.
fn both_sides(data: &Path, collector_dir: &Path, gateway: &str) -> Vec<(Vec<Row>, Vec<Row>)> {
    ["10s", "1m"]
        .into_iter()
        .map(|w| {
            let mut ours = rollup_rows(data, w);
            let mut theirs = fleet_rollup_rows(collector_dir, gateway, w);
            ours.sort_by(|a, b| a.partial_cmp(b).unwrap());
            theirs.sort_by(|a, b| a.partial_cmp(b).unwrap());
            (ours, theirs)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_window_reaches_a_collector_that_was_down_and_then_killed_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let collector_dir = dir.path().join("collector");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = fieldgate::start(config(dir.path(), addr, ""), shutdown.clone()).await.unwrap();
    let http = running.http_addr;

    // The collector is not there yet: batches wait in the outbox, the link is retried.
    let seq = submit(&running, 0, 3000).await;
    running.checkpointed().wait_for(|&s| s >= seq).await.unwrap();
    wait_metric(http, "fieldgate_upstream_disconnects_total{reason=\"connect\"}", 2.0);
    wait_metric(http, "fieldgate_store_outbox_batches", 3.0);
    let health = fieldgate_tests::wait_health(http, "upstream", "degraded");
    assert_eq!(health["healthy"], true, "a missing collector does not make the gateway unhealthy: {health}");

    // It comes up: the backlog drains.
    let mut c = collector(&collector_dir, addr);
    c.wait_for("gateway connected");
    wait_metric(http, "fieldgate_upstream_connected", 1.0);
    let acked = wait_metric(http, "fieldgate_upstream_batches_acked_total", 3.0);

    // Progressive catch-up: the collector got the newest 1-minute batches first, newest first,
    // before any of the 10 s backlog.
    let first = ledger(&collector_dir, "test-gw");
    let minute_seqs = seqs_in(&collector_dir.join("rollups/gateway=test-gw/window=1m"));
    let coarse_first: Vec<u64> = first.iter().copied().take_while(|s| minute_seqs.contains(s)).collect();
    assert!(coarse_first.len() >= 2, "the first batches stored: {first:?}; 1 min ones: {minute_seqs:?}");
    assert!(coarse_first.windows(2).all(|w| w[0] > w[1]), "newest first: {coarse_first:?}");

    // Killed mid-stream, while more arrives; then back.
    submit(&running, 3000, 4500).await;
    c.signal(nix::sys::signal::Signal::SIGKILL);
    c.wait_exit();
    submit(&running, 4500, 6000).await;
    let mut c = collector(&collector_dir, addr);
    c.wait_for("gateway connected");

    // Close every window, and wait for the last flush to be forwarded and acknowledged.
    let mut closer = reading(0);
    closer.ts = Timestamp::from_nanos(BASE + 86_400 * S);
    let last: Vec<Reading> = (0..SERIES).map(|j| Reading { ts: closer.ts, ..reading(j) }).collect();
    let seq = running.sink().submit(last, Timestamp::now()).await.unwrap().await.unwrap().seq;
    running.checkpointed().wait_for(|&s| s >= seq).await.unwrap();
    wait_gauge(http, "fieldgate_store_outbox_batches", 0.0);
    assert!(metric(http, "fieldgate_upstream_batches_acked_total").unwrap() > acked);

    let data = dir.path().join("data");
    for (ours, theirs) in both_sides(&data, &collector_dir, "test-gw") {
        assert!(ours.len() > 100, "enough windows to mean something: {}", ours.len());
        let diff = differences(&ours, &theirs);
        assert!(diff.is_empty(), "the collector must hold exactly the gateway's windows, each once:\n{diff}");
    }
    shutdown.cancel();
    running.wait().await.unwrap();
    c.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbox_drops_the_oldest_and_the_collector_learns_exactly_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let collector_dir = dir.path().join("collector");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running =
        fieldgate::start(config(dir.path(), addr, "max_disk = \"64KiB\"\n"), shutdown.clone()).await.unwrap();
    let http = running.http_addr;

    // No collector: 20,000 readings make about 2,300 windows, more than 64 KiB of batches.
    let seq = submit(&running, 0, 20_000).await;
    let closers: Vec<Reading> =
        (0..SERIES).map(|j| Reading { ts: Timestamp::from_nanos(BASE + 86_400 * S), ..reading(j) }).collect();
    let seq = seq.max(running.sink().submit(closers, Timestamp::now()).await.unwrap().await.unwrap().seq);
    running.checkpointed().wait_for(|&s| s >= seq).await.unwrap();
    let dropped = wait_metric(http, "fieldgate_store_outbox_dropped_rows_total", 1.0);

    let mut c = collector(&collector_dir, addr);
    c.wait_for("gateway connected");
    wait_gauge(http, "fieldgate_store_outbox_batches", 0.0);

    // The gap records say how many rows are missing; with what arrived they make up every row.
    let mut gap_rows = 0;
    for e in std::fs::read_dir(collector_dir.join("gaps/gateway=test-gw")).unwrap() {
        let gap: serde_json::Value =
            serde_json::from_slice(&std::fs::read(e.unwrap().path()).unwrap()).unwrap();
        assert!(gap["reason"].as_str().unwrap().contains("reached its cap"), "{gap}");
        gap_rows += gap["rows"].as_u64().unwrap();
    }
    assert_eq!(gap_rows as f64, dropped, "every dropped row is reported");
    // And a collector query says so: `fieldgate query gaps`.
    let (ok, out, err) = query_cli(addr, None, &["gaps"]);
    assert!(ok, "{err}");
    let listed: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert!(!listed.is_empty() && listed.iter().all(|g| g["gateway"] == "test-gw"), "{out}");
    let listed_rows: f64 = listed.iter().map(|g| g["rows"].as_f64().unwrap()).sum();
    assert_eq!(listed_rows, dropped, "{out}");
    let data = dir.path().join("data");
    let mut received = 0;
    for (ours, theirs) in both_sides(&data, &collector_dir, "test-gw") {
        // What arrived is the newest part of what the gateway stored, each once.
        let mut seen = std::collections::HashSet::new();
        for row in &theirs {
            assert!(seen.insert((row.0.clone(), row.1.clone(), row.2)), "{row:?} twice");
            assert!(ours.contains(row), "{row:?} is not a row the gateway stored");
        }
        received += theirs.len() as u64;
    }
    let stored: u64 = both_sides(&data, &collector_dir, "test-gw").iter().map(|(o, _)| o.len() as u64).sum();
    assert_eq!(received + gap_rows, stored, "received and reported missing make up all {stored} rows");
    shutdown.cancel();
    running.wait().await.unwrap();
    c.stop_cleanly();
}

/// The child side of the gateway SIGKILL test: a gateway on `FG_UP_DIR` forwarding to
/// `FG_UP_COLLECTOR`, fed readings from `FG_UP_START` in batches, each ack printed. With
/// `FG_UP_END` it feeds up to END, closes every window, waits until the outbox is empty,
/// prints `drained` and stops; without, it feeds until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_child_process() {
    let Ok(dir) = std::env::var("FG_UP_DIR") else { return };
    let var = |name: &str| std::env::var(name).ok().map(|v| v.parse::<u64>().unwrap());
    let addr: SocketAddr = std::env::var("FG_UP_COLLECTOR").unwrap().parse().unwrap();
    let (start, end) = (var("FG_UP_START").unwrap(), var("FG_UP_END"));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = fieldgate::start(config(Path::new(&dir), addr, ""), shutdown.clone()).await.unwrap();
    let sink = running.sink();
    let mut j = start;
    let mut out = std::io::stdout().lock();
    use std::io::Write;
    while end.is_none_or(|e| j < e) {
        let to = (j + 24).min(end.unwrap_or(u64::MAX));
        let batch: Vec<Reading> = (j..to).map(reading).collect();
        sink.submit(batch, Timestamp::now()).await.unwrap().await.unwrap();
        writeln!(out, "acked {}", to - 1).unwrap();
        out.flush().unwrap();
        j = to;
        // A feed at a field's pace, so kills land while batches are on the wire.
        tokio::task::yield_now().await;
    }
    let closers: Vec<Reading> =
        (0..SERIES).map(|j| Reading { ts: Timestamp::from_nanos(BASE + 86_400 * S), ..reading(j) }).collect();
    let seq = sink.submit(closers, Timestamp::now()).await.unwrap().await.unwrap().seq;
    running.checkpointed().wait_for(|&s| s >= seq).await.unwrap();
    let http = running.http_addr;
    tokio::task::spawn_blocking(move || wait_gauge(http, "fieldgate_store_outbox_batches", 0.0))
        .await
        .unwrap();
    shutdown.cancel();
    running.wait().await.unwrap();
    writeln!(out, "drained").unwrap();
}

#[test]
fn a_gateway_killed_mid_stream_forwards_every_window_once() {
    use rand::{Rng, SeedableRng};
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let collector_dir = dir.path().join("collector");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut c = collector(&collector_dir, addr);
    let seed: u64 = rand::rngs::StdRng::from_os_rng().random();
    let seed = std::env::var("FG_SEED").map_or(seed, |s| s.parse().unwrap());
    println!("seed {seed} (set FG_SEED to repeat)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let spawn = |start: u64, end: Option<u64>| {
        let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", "upstream::upstream_child_process", "--nocapture", "--test-threads", "1"])
            .env("FG_UP_DIR", dir.path())
            .env("FG_UP_COLLECTOR", addr.to_string())
            .env("FG_UP_START", start.to_string())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        if let Some(e) = end {
            cmd.env("FG_UP_END", e.to_string());
        }
        let mut child = cmd.spawn().unwrap();
        let lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        (child, lines)
    };
    let mut next = 0;
    let mut furthest = 0;
    for _ in 0..6 {
        let (mut child, mut lines) = spawn(next, None);
        let kill_after = rng.random_range(20..200);
        let mut acks = 0;
        for line in lines.by_ref().map_while(Result::ok) {
            if let Some(n) = line.strip_prefix("acked ") {
                next = n.parse::<u64>().unwrap() + 1;
                furthest = furthest.max(next);
                acks += 1;
                if acks == kill_after {
                    break;
                }
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
    // Readings past the last ack read may have reached the WAL: start the clean run past them.
    let end = furthest + 24 * 200 + 1000;
    let (mut child, lines) = spawn(furthest + 24 * 200, Some(end));
    let drained = lines.map_while(Result::ok).any(|l| l == "drained");
    assert!(drained, "the last run did not drain its outbox");
    child.wait().unwrap();
    let connections = c.log().matches("gateway connected").count();
    assert!(connections >= 7, "the gateway connected once per run: {connections}");
    for (ours, theirs) in both_sides(&dir.path().join("data"), &collector_dir, "test-gw") {
        assert!(ours.len() > 100, "enough windows: {}", ours.len());
        let diff = differences(&ours, &theirs);
        assert!(diff.is_empty(), "the collector must hold exactly the gateway's windows, each once:\n{diff}");
    }
    c.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateways_forward_to_one_collector_whose_stats_add_up() {
    let dir = tempfile::tempdir().unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (mut c, collector_http) = collector_with_http(&dir.path().join("collector"), addr);
    let mut gateways = Vec::new();
    for g in 0..3 {
        let gw_dir = dir.path().join(format!("farm-{g}"));
        std::fs::create_dir_all(&gw_dir).unwrap();
        let mut config = config(&gw_dir, addr, "");
        let id = format!("farm-{g}");
        config.gateway.id = id.clone();
        config.upstream.as_mut().unwrap().gateway_id = id;
        let shutdown = tokio_util::sync::CancellationToken::new();
        let running = fieldgate::start(config, shutdown.clone()).await.unwrap();
        // Each farm's own silos, a different number of readings each.
        let sink = running.sink();
        let mut seq = 0;
        let n = 1200 + 600 * g as u64;
        for start in (0..n).step_by(24) {
            let batch: Vec<Reading> = (start..(start + 24).min(n))
                .map(|j| Reading {
                    device: DeviceId::new(&format!("farm{g}-silo-{}", j % SERIES / 3)).unwrap(),
                    ..reading(j)
                })
                .collect();
            seq = sink.submit(batch, Timestamp::now()).await.unwrap().await.unwrap().seq;
        }
        let closers: Vec<Reading> = (0..SERIES)
            .map(|j| Reading {
                device: DeviceId::new(&format!("farm{g}-silo-{}", j % SERIES / 3)).unwrap(),
                ts: Timestamp::from_nanos(BASE + 86_400 * S),
                ..reading(j)
            })
            .collect();
        seq = seq.max(sink.submit(closers, Timestamp::now()).await.unwrap().await.unwrap().seq);
        running.checkpointed().wait_for(|&s| s >= seq).await.unwrap();
        gateways.push((running, shutdown));
    }
    for (running, _) in &gateways {
        wait_gauge(running.http_addr, "fieldgate_store_outbox_batches", 0.0);
    }
    c.wait_for("gateway connected");

    // The same question to each gateway and to the collector: 1-minute stats over the first
    // five minutes (all closed, all forwarded).
    let from = Timestamp::from_nanos(BASE).to_string();
    let to = Timestamp::from_nanos(BASE + 300 * S).to_string();
    let args = ["stats", "--from", &from, "--to", &to, "--window", "1m"];
    let ask = |grpc: SocketAddr| {
        let (ok, out, err) = query_cli(grpc, None, &args);
        assert!(ok, "{err}");
        let mut rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        rows.sort_by_key(|r| {
            (r["device"].to_string(), r["metric"].to_string(), r["window_start"].to_string())
        });
        rows
    };
    let mut each: Vec<serde_json::Value> = Vec::new();
    for (running, _) in &gateways {
        let rows = ask(running.grpc_addr.unwrap());
        assert!(!rows.is_empty());
        each.extend(rows);
    }
    each.sort_by_key(|r| (r["device"].to_string(), r["metric"].to_string(), r["window_start"].to_string()));
    let fleet = ask(addr);
    assert_eq!(fleet.len(), each.len(), "one row per gateway's device, metric and minute");
    assert_eq!(fleet, each, "the collector's stats are the gateways' own, together");
    let counted = |rows: &[serde_json::Value]| rows.iter().map(|r| r["count"].as_f64().unwrap()).sum::<f64>();
    assert_eq!(counted(&fleet), counted(&each));
    // Its metrics: three gateways connected, and what they stored.
    assert_eq!(metric(collector_http, "fieldgate_collector_streams_open"), Some(3.0));
    let stored_rows = metric(collector_http, "fieldgate_collector_rows_stored_total").unwrap();
    let gateway_rows: usize = gateways
        .iter()
        .enumerate()
        .map(|(g, _)| {
            ["10s", "1m"]
                .iter()
                .map(|w| rollup_rows(&dir.path().join(format!("farm-{g}/data")), w).len())
                .sum::<usize>()
        })
        .sum();
    assert_eq!(stored_rows, gateway_rows as f64, "every row of every gateway stored once");
    // The collector keeps no live state, and says so.
    let (ok, _, err) = query_cli(addr, None, &["latest"]);
    assert!(!ok && err.contains("keeps no live state"), "{err}");
    for (running, shutdown) in gateways {
        shutdown.cancel();
        running.wait().await.unwrap();
    }
    c.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_a_gateway_needs_its_own_token_and_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = fieldgate_tests::Pki::generate(dir.path());
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "farm-ok s3cret\nfarm-bad the-right-one\n").unwrap();
    let query_token = dir.path().join("query-token");
    std::fs::write(&query_token, "q-token\n").unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let collector_dir = dir.path().join("collector");
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    let mut c = GatewayProcess::spawn(&[
        "collector",
        "--listen",
        &addr.to_string(),
        "--data-dir",
        &s(&collector_dir),
        "--http-listen",
        "127.0.0.1:0",
        "--tokens-file",
        &s(&tokens),
        "--query-token-file",
        &s(&query_token),
        "--tls-cert-file",
        &s(&pki.server_cert),
        "--tls-key-file",
        &s(&pki.server_key),
        "--tls-client-ca-file",
        &s(&pki.ca),
    ]);
    c.wait_for("collector listening");
    let tls = format!(
        "\n[upstream.tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        s(&pki.ca),
        s(&pki.client_cert),
        s(&pki.client_key)
    );
    let start = |name: &str, token: &str| {
        let gw_dir = dir.path().join(name);
        std::fs::create_dir_all(&gw_dir).unwrap();
        let mut config =
            config_at(&gw_dir, &format!("https://{addr}"), &format!("token = \"{token}\"\n{tls}"));
        config.gateway.id = name.to_owned();
        config.upstream.as_mut().unwrap().gateway_id = name.to_owned();
        config
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let good = fieldgate::start(start("farm-ok", "s3cret"), shutdown.clone()).await.unwrap();
    let bad = fieldgate::start(start("farm-bad", "a-guess"), shutdown.clone()).await.unwrap();
    for running in [&good, &bad] {
        let seq = submit(running, 0, 1200).await;
        let closers: Vec<Reading> = (0..SERIES)
            .map(|j| Reading { ts: Timestamp::from_nanos(BASE + 86_400 * S), ..reading(j) })
            .collect();
        let seq = seq.max(running.sink().submit(closers, Timestamp::now()).await.unwrap().await.unwrap().seq);
        running.checkpointed().wait_for(|&s| s >= seq).await.unwrap();
    }
    // The right token over mutual TLS: everything arrives.
    wait_gauge(good.http_addr, "fieldgate_upstream_connected", 1.0);
    wait_gauge(good.http_addr, "fieldgate_store_outbox_batches", 0.0);
    for (ours, theirs) in both_sides(&dir.path().join("farm-ok/data"), &collector_dir, "farm-ok") {
        assert!(!ours.is_empty());
        assert!(differences(&ours, &theirs).is_empty(), "{}", differences(&ours, &theirs));
    }
    // A wrong token: refused, retried, nothing stored, the outbox kept.
    wait_metric(bad.http_addr, "fieldgate_upstream_disconnects_total{reason=\"refused\"}", 2.0);
    assert_eq!(metric(bad.http_addr, "fieldgate_upstream_connected"), Some(0.0));
    assert!(metric(bad.http_addr, "fieldgate_store_outbox_batches").unwrap() > 0.0);
    assert!(!collector_dir.join("rollups/gateway=farm-bad").exists());
    // Queries need the query token and a client certificate.
    let tls_args = [
        "--tls-ca-file",
        &s(&pki.ca),
        "--tls-cert-file",
        &s(&pki.client_cert),
        "--tls-key-file",
        &s(&pki.client_key),
    ];
    let ask = |token: Option<&str>| {
        let args: Vec<&str> = tls_args.iter().copied().chain(["gaps"]).collect();
        query_cli(addr, token, &args)
    };
    let (ok, _, err) = ask(None);
    assert!(!ok && err.contains("Bearer"), "{err}");
    let (ok, out, err) = ask(Some("q-token"));
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "[]", "no gaps");
    shutdown.cancel();
    good.wait().await.unwrap();
    bad.wait().await.unwrap();
    c.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_stops_answering_is_noticed_and_the_stream_opened_again() {
    let dir = tempfile::tempdir().unwrap();
    let collector_dir = dir.path().join("collector");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut c = collector(&collector_dir, addr);
    let extra = "keepalive = \"1s\"\nkeepalive_timeout = \"1s\"\nack_timeout = \"2s\"\n";
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = fieldgate::start(config(dir.path(), addr, extra), shutdown.clone()).await.unwrap();
    let http = running.http_addr;
    c.wait_for("gateway connected");
    wait_gauge(http, "fieldgate_upstream_connected", 1.0);

    // Frozen, as a collector behind a dead link is: the connection stays open, nothing answers.
    c.signal(nix::sys::signal::Signal::SIGSTOP);
    let seq = submit(&running, 0, 3000).await;
    running.checkpointed().wait_for(|&s| s >= seq).await.unwrap();
    wait_gauge(http, "fieldgate_upstream_connected", 0.0);
    c.signal(nix::sys::signal::Signal::SIGCONT);

    let closers: Vec<Reading> =
        (0..SERIES).map(|j| Reading { ts: Timestamp::from_nanos(BASE + 86_400 * S), ..reading(j) }).collect();
    let seq = running.sink().submit(closers, Timestamp::now()).await.unwrap().await.unwrap().seq;
    running.checkpointed().wait_for(|&s| s >= seq).await.unwrap();
    wait_gauge(http, "fieldgate_store_outbox_batches", 0.0);
    for (ours, theirs) in both_sides(&dir.path().join("data"), &collector_dir, "test-gw") {
        assert!(!ours.is_empty());
        let diff = differences(&ours, &theirs);
        assert!(diff.is_empty(), "{diff}");
    }
    shutdown.cancel();
    running.wait().await.unwrap();
    c.stop_cleanly();
}
