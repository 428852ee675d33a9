//! The store's durability contract, end to end: the gateway's runtime (router, store, HTTP)
//! in a real process that is killed, on a real disk that fills up, and files read back by an
//! independent reader.
//!
//! - `sigkill_at_random_points_loses_and_duplicates_nothing`: a child process runs the gateway,
//!   feeds it through the same sink the protocol adapters use, and prints each acknowledgement;
//!   it is killed with SIGKILL at random points many times and restarted, re-sending what it had
//!   not seen acknowledged (as an MQTT broker redelivers its in-flight window). After every
//!   restart the files are exact, and at the end every acknowledged reading is counted once.
//! - `a_full_disk_back_pressures_and_resumes`: a size-limited tmpfs fills up; acks stop,
//!   `/healthz` and `/metrics` say so, and once space returns everything resumes, nothing lost.
//! - `duckdb_reads_the_files_with_hive_partitioning`: DuckDB sees exactly the expected aggregates.

use fieldgate::Config;
use fieldgate::health::Status;
use fieldgate_proto::{DeviceId, Metric, Quality, Reading, Source, Timestamp};
use fieldgate_store::layout;
use fieldgate_tests::{http_get, rollup_rows, write_config};
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

const S: i64 = 1_000_000_000;
/// 2026-01-01T00:00:00Z: readings are in the past, so none is "from the future".
const BASE: i64 = 1_767_225_600 * S;
const DEVICES: u64 = 7;
const METRICS: u64 = 3;
const WAIT: Duration = Duration::from_secs(60);

/// A gateway config with its data in `dir/data`, windows of 10 s and 1 min, 2 s lateness.
fn gateway_config(dir: &Path) -> Config {
    let path = write_config(
        dir,
        "\n[store]\nwindows = [\"10s\", \"1m\"]\nallowed_lateness = \"2s\"\nrecordings = true\n",
    );
    Config::load(&path).unwrap()
}

async fn start(config: Config) -> (fieldgate::Running, tokio_util::sync::CancellationToken) {
    let shutdown = tokio_util::sync::CancellationToken::new();
    (fieldgate::start(config, shutdown.clone()).await.unwrap(), shutdown)
}

async fn stop(running: fieldgate::Running, shutdown: tokio_util::sync::CancellationToken) {
    shutdown.cancel();
    running.wait().await.unwrap();
}

/// Reading number `j`: series `j % 21`, 100 ms apart, value `j`.
fn reading(j: u64) -> Reading {
    Reading {
        device: DeviceId::new(&format!("dev-{}", j % DEVICES)).unwrap(),
        metric: Metric::new(&format!("m{}", (j / DEVICES) % METRICS)).unwrap(),
        ts: Timestamp::from_nanos(BASE + j as i64 * S / 10),
        value: j as f64,
        quality: Quality::Good,
        source: Source::Mqtt,
    }
}

/// One reading per series far ahead, closing every window before it.
fn closers(after: u64) -> Vec<Reading> {
    (0..DEVICES * METRICS)
        .map(|j| {
            let mut r = reading(j);
            r.ts = Timestamp::from_nanos(BASE + (after as i64 + 100_000) * S);
            r
        })
        .collect()
}

fn series_of(j: u64) -> (String, String) {
    (format!("dev-{}", j % DEVICES), format!("m{}", (j / DEVICES) % METRICS))
}

/// Check, at any moment, that every window in the files holds exactly the readings that
/// belong to it (each once, none missing) and that no window was written twice. Valid while the
/// writer runs: files appear by atomic rename, and a window is only written once it is closed,
/// which happens after all its readings were written to the WAL.
fn assert_windows_exact(data: &Path, end: u64) -> usize {
    let mut n = 0;
    for (window, w) in [("10s", 10 * S), ("1m", 60 * S)] {
        let mut seen = HashSet::new();
        for (d, m, start, count, sum) in rollup_rows(data, window) {
            assert!(
                seen.insert((d.clone(), m.clone(), start)),
                "window {window} {d}/{m}@{start} written twice"
            );
            // Readings are 100 ms apart from BASE: those of this window are j in [lo, hi).
            let (lo, hi) = (((start - BASE) / (S / 10)) as u64, ((start + w - BASE) / (S / 10)) as u64);
            let js: Vec<u64> =
                (lo..hi.min(end)).filter(|&j| series_of(j) == (d.clone(), m.clone())).collect();
            assert_eq!(
                (count, sum),
                (js.len() as u64, js.iter().sum::<u64>() as f64),
                "window {window} {d}/{m} starting {} s after BASE: (count, sum) differ; files: {:#?}",
                (start - BASE) / S,
                layout::parts(&data.join(layout::ROLLUPS)).into_iter().map(|p| p.0).collect::<Vec<_>>()
            );
            n += 1;
        }
    }
    n
}

/// Check that readings `0..n` are each counted exactly once, in windows of both sizes, and
/// that no window was written twice.
fn assert_exactly_once(data: &Path, n: u64) {
    let mut expected: BTreeMap<(String, String), (u64, f64)> = BTreeMap::new();
    for j in 0..n {
        let e = expected.entry(series_of(j)).or_default();
        e.0 += 1;
        e.1 += j as f64;
    }
    for window in ["10s", "1m"] {
        let rows = rollup_rows(data, window);
        let mut seen = HashSet::new();
        let mut got: BTreeMap<(String, String), (u64, f64)> = BTreeMap::new();
        for (d, m, start, count, sum) in rows {
            assert!(
                seen.insert((d.clone(), m.clone(), start)),
                "window {window} {d}/{m}@{start} written twice"
            );
            let e = got.entry((d, m)).or_default();
            e.0 += count;
            e.1 += sum;
        }
        assert_eq!(got, expected, "rollups of {window} differ from the {n} acknowledged readings");
    }
}

/// The child side of the SIGKILL test. From FG_CHILD_START it writes FG_CHILD_BATCHES batches
/// (a bounded amount in flight, as an MQTT broker's in-flight window bounds what it redelivers),
/// printing each acknowledgement, then reports when a checkpoint covers them and waits to be
/// killed. With FG_CHILD_END and FG_CHILD_FINAL it writes up to END, closes all windows and
/// shuts down cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child_process() {
    // Only runs as the child of the SIGKILL test (see below); as a plain test it has no work.
    let Ok(dir) = std::env::var("FG_CHILD_DIR") else { return };
    let var = |name: &str| std::env::var(name).ok().map(|v| v.parse::<u64>().unwrap());
    let start_at = var("FG_CHILD_START").unwrap();
    let final_end = var("FG_CHILD_END");
    let batches = var("FG_CHILD_BATCHES").unwrap_or(u64::MAX);
    let mut config = gateway_config(Path::new(&dir));
    // Flushes every 20 ms and 16 KiB WAL segments (below what the config file allows), so
    // kills land in flushes, checkpoints and segment rotations.
    config.store.flush_interval = Duration::from_millis(20);
    config.store.segment_bytes = 16 << 10;
    let (running, shutdown) = start(config).await;
    let sink = running.sink();
    let mut out = std::io::stdout().lock();
    // The recovery report comes from the store's metrics, as an operator would read it.
    let (_, _, metrics) = http_get(running.http_addr, "/metrics");
    let gauge = |name: &str| {
        metrics.lines().find(|l| l.starts_with(name)).and_then(|l| l.split(' ').nth(1)).unwrap().to_owned()
    };
    writeln!(
        out,
        "\nrecovered {} {}",
        gauge("fieldgate_store_recovery_replayed_records "),
        *running.checkpointed().borrow()
    )
    .unwrap();
    out.flush().unwrap();
    let (mut j, mut last_seq) = (start_at, 0);
    for _ in 0..batches {
        if final_end.is_some_and(|end| j >= end) {
            break;
        }
        let n = 1 + (j % 8);
        let batch: Vec<Reading> = (j..(j + n).min(final_end.unwrap_or(u64::MAX))).map(reading).collect();
        let last = j + batch.len() as u64 - 1;
        last_seq = sink.submit(batch, Timestamp::now()).await.unwrap().await.unwrap().seq;
        writeln!(out, "acked {last}").unwrap();
        out.flush().unwrap();
        j = last + 1;
    }
    if let Some(end) = final_end {
        sink.submit(closers(end), Timestamp::now()).await.unwrap().await.unwrap();
        stop(running, shutdown).await;
        writeln!(out, "closed").unwrap();
        return;
    }
    running.checkpointed().wait_for(|&seq| seq >= last_seq).await.unwrap();
    writeln!(out, "checkpointed").unwrap();
    out.flush().unwrap();
    std::future::pending::<()>().await;
}

struct Child {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Child {
    fn spawn(dir: &Path, start: u64, batches: Option<u64>, end: Option<u64>) -> Child {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", "store::crash_child_process", "--nocapture", "--test-threads", "1"])
            .env("FG_CHILD_DIR", dir)
            .env("FG_CHILD_START", start.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(b) = batches {
            cmd.env("FG_CHILD_BATCHES", b.to_string());
        }
        if let Some(e) = end {
            cmd.env("FG_CHILD_END", e.to_string());
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Child { child, lines }
    }

    /// The child's next own line (`acked N` or `closed`), skipping the test harness's lines.
    fn line(&self) -> Option<String> {
        loop {
            match self.lines.recv_timeout(WAIT) {
                Ok(l)
                    if l.starts_with("acked ")
                        || l.starts_with("recovered ")
                        || l == "checkpointed"
                        || l == "closed" =>
                {
                    return Some(l);
                }
                Ok(_) => {}
                Err(RecvTimeoutError::Disconnected) => return None,
                Err(RecvTimeoutError::Timeout) => panic!("the child printed nothing for {WAIT:?}"),
            }
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn acked(line: &str) -> Option<u64> {
    line.strip_prefix("acked ").map(|n| n.parse().unwrap())
}

#[test]
fn sigkill_at_random_points_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let seed: u64 = rand::rngs::StdRng::from_os_rng().random();
    let seed = std::env::var("FG_SEED").map_or(seed, |s| s.parse().unwrap());
    println!("seed {seed} (set FG_SEED to repeat)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (mut next, mut furthest) = (0, 0);
    let (mut replayed, mut from_checkpoint, mut windows_checked) = (0, 0, 0);
    const ROUNDS: usize = 30;
    for round in 0..ROUNDS {
        // At most 40 batches (~180 readings, ~9 per series) unacknowledged at a kill: within
        // the store's duplicate horizon, as a broker's in-flight window is.
        let batches = rng.random_range(1..=40);
        let child = Child::spawn(dir.path(), next, Some(batches), None);
        let recovered = child.line().unwrap_or_else(|| panic!("round {round}: child exited early"));
        let fields: Vec<&str> = recovered.split(' ').collect();
        assert_eq!(fields[0], "recovered", "{recovered}");
        replayed += fields[1].parse::<u64>().unwrap();
        from_checkpoint += u64::from(fields[2] != "0");
        // After each restart's recovery the files are exact: no window twice, none short.
        windows_checked += assert_windows_exact(&dir.path().join("data"), u64::MAX);
        // Kill after a random number of acks (the flusher runs every 20 ms, so the kill lands
        // anywhere in a flush), or once a checkpoint covers everything sent.
        let kill_after = if rng.random_bool(0.5) { Some(rng.random_range(1..=batches)) } else { None };
        let mut acks = 0;
        loop {
            let line = child.line().unwrap_or_else(|| panic!("round {round}: child exited early"));
            if let Some(n) = acked(&line) {
                next = n + 1;
                furthest = furthest.max(n);
                acks += 1;
                if kill_after == Some(acks) {
                    break;
                }
            } else if line == "checkpointed" {
                break;
            }
        }
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        // Batches past the last ack read may have reached the WAL before the kill.
        furthest += 8 * (batches - acks);
        drop(child);
    }
    assert!(replayed > 0, "no kill left anything to replay: the test did not test recovery");
    assert!(from_checkpoint > 0, "no restart began from a checkpoint");
    assert!(windows_checked > 0, "no window reached the files during the kill rounds");
    // A last, clean run past everything any killed run may have written, which closes every
    // window and flushes.
    let end = furthest + 41;
    let child = Child::spawn(dir.path(), next, None, Some(end));
    while let Some(line) = child.line() {
        if line == "closed" {
            break;
        }
    }
    assert_exactly_once(&dir.path().join("data"), end);
    assert_windows_exact(&dir.path().join("data"), end);
}

fn submit_all(running: &fieldgate::Running, batches: Vec<Vec<Reading>>) -> tokio::task::JoinHandle<usize> {
    let sink = running.sink();
    tokio::spawn(async move {
        let mut acked = 0;
        for b in batches {
            let n = b.len();
            if sink.submit(b, Timestamp::now()).await.unwrap().await.is_ok() {
                acked += n;
            }
        }
        acked
    })
}

/// Unmounts a tmpfs the test mounted, however the test ends.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_back_pressures_and_resumes() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test mounts a size-limited tmpfs and needs root (CI and the project machines run as root)"
    );
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success(), "mount tmpfs failed");
    let _mount = Mount(dir.path().to_owned());
    let data = dir.path().join("data");
    let mut config = gateway_config(dir.path());
    config.store.recordings = fieldgate_store::Recordings::Off;
    config.store.segment_bytes = 256 << 10;
    config.store.flush_interval = Duration::from_secs(3600);
    let (running, shutdown) = start(config).await;

    // Leave about 100 KiB free, then write ~600 KiB of WAL.
    let filler = dir.path().join("filler");
    let free = nix::sys::statvfs::statvfs(dir.path()).unwrap();
    let free_bytes = free.blocks_available() * free.fragment_size();
    std::fs::write(&filler, vec![0u8; (free_bytes - 100 * 1024) as usize]).unwrap();
    const N: u64 = 24_000;
    let batches: Vec<Vec<Reading>> =
        (0..N).collect::<Vec<_>>().chunks(200).map(|c| c.iter().copied().map(reading).collect()).collect();
    let writer = submit_all(&running, batches);

    let report =
        tokio::time::timeout(WAIT, running.health().wait_for("store", |s| s == Status::Down)).await.unwrap();
    assert!(report.detail.contains("no space left"), "{report:?}");
    assert!(!writer.is_finished(), "acks stop while the disk is full");
    let (code, _, body) = http_get(running.http_addr, "/healthz");
    assert_eq!(code, 503, "{body}");
    let (_, _, metrics) = http_get(running.http_addr, "/metrics");
    let no_space = metrics
        .lines()
        .find(|l| l.starts_with("fieldgate_store_write_errors_total{reason=\"no_space\"}"))
        .unwrap();
    assert!(!no_space.ends_with(" 0"), "{no_space}");

    std::fs::remove_file(&filler).unwrap();
    tokio::time::timeout(WAIT, running.health().wait_for("store", |s| s == Status::Up)).await.unwrap();
    let acked = tokio::time::timeout(WAIT, writer).await.unwrap().unwrap();
    assert_eq!(acked as u64, N, "every batch is acknowledged once space returns");

    running.sink().submit(closers(N), Timestamp::now()).await.unwrap().await.unwrap();
    stop(running, shutdown).await;
    assert_exactly_once(&data, N);

    // The WAL holds no torn write from the failed attempts.
    let (running, shutdown) = start(gateway_config(dir.path())).await;
    let (_, _, metrics) = http_get(running.http_addr, "/metrics");
    for gauge in ["fieldgate_store_recovery_torn_tail_bytes 0", "fieldgate_store_recovery_corrupt_regions 0"]
    {
        assert!(metrics.lines().any(|l| l == gauge), "{gauge} missing in\n{metrics}");
    }
    stop(running, shutdown).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duckdb_reads_the_files_with_hive_partitioning() {
    let dir = tempfile::tempdir().unwrap();
    let (running, shutdown) = start(gateway_config(dir.path())).await;
    const N: u64 = 3000;
    let mut batches: Vec<Vec<Reading>> =
        (0..N).collect::<Vec<_>>().chunks(50).map(|c| c.iter().copied().map(reading).collect()).collect();
    batches.push(closers(N));
    assert_eq!(submit_all(&running, batches).await.unwrap() as u64, N + DEVICES * METRICS);
    stop(running, shutdown).await;

    let script = r#"
import sys, duckdb
root, N = sys.argv[1], int(sys.argv[2])
q = f"""
select "window", device, metric, sum(count)::bigint, min("min"), max("max"), sum("sum"),
       count(*)::bigint, count(distinct window_start)::bigint
from read_parquet('{root}/rollups/*/*/*.parquet', hive_partitioning = true)
group by all order by all
"""
for row in duckdb.sql(q).fetchall():
    print("|".join(str(v) for v in row))
rec = duckdb.sql(f"select count(*), min(ts), typeof(min(ts)) from read_parquet('{root}/recordings/*/*.parquet', hive_partitioning = true) where ts < '2026-01-02'").fetchall()[0]
print("recordings|" + "|".join(str(v) for v in rec))
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(dir.path().join("data"))
        .arg(N.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "duckdb failed (is it installed? .ci/install-test-deps installs it)\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();

    let mut expected = Vec::new();
    for window in ["10s", "1m"] {
        let mut per: BTreeMap<(String, String), (u64, f64, f64, f64)> = BTreeMap::new();
        for j in 0..N {
            let e = per.entry(series_of(j)).or_insert((0, f64::MAX, f64::MIN, 0.0));
            e.0 += 1;
            e.1 = e.1.min(j as f64);
            e.2 = e.2.max(j as f64);
            e.3 += j as f64;
        }
        let window_s = if window == "10s" { 10 } else { 60 };
        let span = N as i64 * S / 10;
        let windows = (span + window_s * S - 1) / (window_s * S);
        for ((d, m), (count, min, max, sum)) in per {
            expected.push(format!("{window}|{d}|{m}|{count}|{min:?}|{max:?}|{sum:?}|{windows}|{windows}"));
        }
    }
    expected.sort();
    let mut got: Vec<String> =
        stdout.lines().filter(|l| !l.starts_with("recordings|")).map(str::to_owned).collect();
    got.sort();
    assert_eq!(got, expected);
    let rec = stdout.lines().find(|l| l.starts_with("recordings|")).unwrap();
    // Nanosecond timestamps in UTC, as the schema promises.
    assert_eq!(rec, format!("recordings|{N}|2026-01-01 00:00:00+00:00|TIMESTAMPTZ_NS"));
}
