//! Modbus polling cost, two ways:
//! 1. 1,000 simulated devices (field-sim, one Modbus TCP server each on loopback) of 20
//!    registers, read as 20 points each, every second: points/s reached, and the gateway's
//!    CPU (share of one core) and memory while it keeps that rate;
//! 2. one RTU line at 9,600 baud (a pseudo-terminal pair behind a relay that holds every byte
//!    for its time on the wire, so the line is as slow as a real one) with a pymodbus unit of
//!    125 registers polled back to back: registers/s against what the baud rate allows.
//!
//! Run: `cargo build --release --bins && cargo bench -p fieldgate-tests --bench modbus`
//! (`FG_BENCH_DEVICES`, `FG_BENCH_ROUNDS`, `FG_BENCH_RTU_READS`, `FG_BENCH_BAUD` change the
//! fleet, how many seconds of polling and line reads are measured, and the line speed). The
//! fleet's points/s come from the gateway's counters read at the start and the end of those
//! seconds; the line's from the time a fixed number of reads takes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // a benchmark binary

use fieldgate_tests::{
    GatewayProcess, ModbusServer, SerialPair, bench_result, bin, cpu_seconds, metric, rss_mib, wait_metric,
    write_config,
};
use std::io::{BufRead, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const POINTS: usize = 20;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    tcp_fleet();
    rtu_line();
}

fn tcp_fleet() {
    let devices = env("FG_BENCH_DEVICES", 1000);
    // 150 s span several store flushes, whose memory counts too.
    let rounds = env("FG_BENCH_ROUNDS", 150);
    let dir = tempfile::tempdir().unwrap();
    let mut sim = std::process::Command::new(bin("field-sim"))
        .args(["modbus", "--bins", &devices.to_string(), "--tanks", "0", "--weather", "0"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(sim.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let ready: serde_json::Value = serde_json::from_str(&line).unwrap();

    let mut config = String::new();
    for d in ready["devices"].as_array().unwrap() {
        config.push_str(&format!(
            "\n[[modbus.device]]\nid = \"{}\"\ntcp = \"{}\"\npoll = \"1s\"\n",
            d["id"].as_str().unwrap(),
            d["addr"].as_str().unwrap()
        ));
        for r in 0..POINTS {
            config.push_str(&format!("\n[[modbus.device.point]]\nmetric = \"r{r:02}\"\ntable = \"holding_register\"\naddress = {r}\n"));
        }
    }
    let store = std::env::var("FG_BENCH_STORE").unwrap_or_default();
    let path = write_config(dir.path(), &format!("{store}\n{config}"));
    let mut gw = GatewayProcess::spawn(&["run", "--config", path.to_str().unwrap()]);
    let addr = gw.wait_started();
    let per_round = (devices * POINTS) as f64;
    // Warm up: every device connected and polled a few times.
    wait_metric(addr, "fieldgate_modbus_points_total", 3.0 * per_round);

    let points = || metric(addr, "fieldgate_modbus_points_total").unwrap();
    let requests = || metric(addr, "fieldgate_modbus_requests_total{outcome=\"ok\"}").unwrap();
    let (p0, r0, c0, s0, t0) =
        (points(), requests(), cpu_seconds(gw.pid()), cpu_seconds(sim.id()), Instant::now());
    // Resident memory after each round: its mean is the steady state, its largest value the
    // peak at a flush (the process's own high-water mark also holds the config parse at start).
    let mut rss = Vec::with_capacity(rounds);
    // RSS is anonymous memory (the heap, stacks) plus the pages of the binary and libraries
    // read so far (file-backed, shared, given back under memory pressure): the anonymous part
    // is what the gateway's data costs.
    let mut anon = Vec::with_capacity(rounds);
    // One sample a second, from /proc: the gateway itself is read only at the start and the
    // end. Waiting on its /metrics instead (a scrape every 20 ms) measured 4.2 to 5.3 % of a
    // core, against 3.2 % without: a Prometheus scraping every 15 s costs next to nothing.
    for _ in 0..rounds {
        std::thread::sleep(Duration::from_secs(1));
        rss.push(rss_mib(gw.pid(), "VmRSS:"));
        anon.push(rss_mib(gw.pid(), "RssAnon:"));
    }
    let (p1, r1, c1, s1, took) =
        (points(), requests(), cpu_seconds(gw.pid()), cpu_seconds(sim.id()), t0.elapsed());
    let secs = took.as_secs_f64();
    let failed = metric(addr, "fieldgate_modbus_requests_total{outcome=\"timeout\"}").unwrap_or(0.0)
        + metric(addr, "fieldgate_modbus_requests_total{outcome=\"error\"}").unwrap_or(0.0);
    println!("{devices} Modbus TCP devices x {POINTS} registers at 1 Hz, measured over {secs:.1} s");
    println!("points/s:                 {:>9.0} (target {})", (p1 - p0) / secs, devices * POINTS);
    println!("requests/s:               {:>9.0} (failed during the run: {failed})", (r1 - r0) / secs);
    println!("gateway CPU:              {:>9.1} % of one core", 100.0 * (c1 - c0) / secs);
    println!(
        "gateway RSS:              {:>9.1} MiB mean (a sample a second), {:.1} MiB at most",
        rss.iter().sum::<f64>() / rss.len() as f64,
        rss.iter().copied().fold(0.0, f64::max)
    );
    println!(
        "  of which anonymous:      {:>9.1} MiB mean, {:.1} MiB at most (the rest: the binary's pages)",
        anon.iter().sum::<f64>() / anon.len() as f64,
        anon.iter().copied().fold(0.0, f64::max)
    );
    println!("field-sim CPU (context):  {:>9.1} % of one core", 100.0 * (s1 - s0) / secs);
    let cpu = 100.0 * (c1 - c0) / secs;
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let most = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let met = |ok: bool| if ok { "met" } else { "not met" };
    bench_result(
        &format!(
            "Modbus: {devices} field-sim devices (a Modbus TCP server each, loopback) × {POINTS} registers as {POINTS} points, every second, {}, {rounds} s",
            if store.is_empty() {
                "default store".to_owned()
            } else {
                format!("store `{}`", store.replace('\n', "; "))
            }
        ),
        &format!(
            "{:.0} points/s, {:.0} requests/s, {failed} failed; gateway {cpu:.1} % of one core (target 5 %: {}); RSS {:.1} MiB mean, {:.1} MiB at a flush, of which anonymous {:.1} MiB mean (target 50 MB: {})",
            (p1 - p0) / secs,
            (r1 - r0) / secs,
            met(cpu <= 5.0),
            mean(&rss),
            most(&rss),
            mean(&anon),
            met(mean(&rss) <= 50.0 * 1e6 / f64::from(1 << 20)),
        ),
    );
    let _ = sim.kill();
    let _ = sim.wait();
}

/// Copy bytes from `from` to `to`, each chunk released once the line (shared by both
/// directions, as RS-485 is) has had the time to carry it: 11 bits a byte (start, 8 data,
/// parity or stop, stop).
fn relay(mut from: std::fs::File, mut to: std::fs::File, baud: u32, wire: Arc<Mutex<Instant>>) {
    let mut buf = [0u8; 512];
    loop {
        let Ok(n) = from.read(&mut buf) else { return };
        if n == 0 {
            return;
        }
        let on_wire = Duration::from_secs_f64(n as f64 * 11.0 / f64::from(baud));
        let done = {
            let mut free = wire.lock().unwrap();
            *free = (*free).max(Instant::now()) + on_wire;
            *free
        };
        // The line model itself: a byte arrives when the wire has carried it.
        std::thread::sleep(done.saturating_duration_since(Instant::now()));
        if to.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

fn rtu_line() {
    const REGISTERS: usize = 125;
    let baud = env("FG_BENCH_BAUD", 9600) as u32;
    let reads = env("FG_BENCH_RTU_READS", 60);
    let dir = tempfile::tempdir().unwrap();
    let (gw_side, dev_side) = (dir.path().join("gw"), dir.path().join("dev"));
    std::fs::create_dir_all(&gw_side).unwrap();
    std::fs::create_dir_all(&dev_side).unwrap();
    // gateway <-> relay <-> device: two pty pairs and the relay between them.
    let a = SerialPair::open(&gw_side);
    let b = SerialPair::open(&dev_side);
    let open = |p: &std::path::Path| std::fs::OpenOptions::new().read(true).write(true).open(p).unwrap();
    let wire = Arc::new(Mutex::new(Instant::now()));
    for (from, to) in [(&a.device, &b.gateway), (&b.gateway, &a.device)] {
        let (from, to, wire) = (open(from), open(to), wire.clone());
        std::thread::spawn(move || relay(from, to, baud, wire));
    }
    let points: Vec<serde_json::Value> = (0..REGISTERS)
        .map(|r| serde_json::json!({"table": "holding_register", "address": r, "type": "u16", "raw": r}))
        .collect();
    let server =
        ModbusServer::serial(dir.path(), &b.device, baud, &serde_json::json!({"units": {"1": points}}));
    let mut config = format!(
        "\n[[modbus.device]]\nid = \"line-1\"\nserial = \"{}\"\nbaud = {baud}\nparity = \"none\"\npoll = \"10ms\"\ntimeout = \"2s\"\n",
        a.gateway.display()
    );
    for r in 0..REGISTERS {
        config.push_str(&format!(
            "\n[[modbus.device.point]]\nmetric = \"r{r:03}\"\ntable = \"holding_register\"\naddress = {r}\n"
        ));
    }
    let path = write_config(dir.path(), &config);
    let mut gw = GatewayProcess::spawn(&["run", "--config", path.to_str().unwrap()]);
    let addr = gw.wait_started();
    wait_metric(addr, "fieldgate_modbus_points_total", (3 * REGISTERS) as f64);
    let points = || metric(addr, "fieldgate_modbus_points_total").unwrap();
    // Start the clock as a read completes, so the span holds whole reads.
    let p0 = wait_metric(addr, "fieldgate_modbus_points_total", points() + 1.0);
    let t0 = Instant::now();
    wait_metric(addr, "fieldgate_modbus_points_total", p0 + (reads * REGISTERS) as f64);
    let (p1, secs) = (points(), t0.elapsed().as_secs_f64());
    // A read of N registers: request 8 bytes, answer 5 + 2N, and 3.5 characters of silence
    // after each frame.
    let chars = 8.0 + 5.0 + 2.0 * REGISTERS as f64 + 7.0;
    let allowed = REGISTERS as f64 / (chars * 11.0 / f64::from(baud));
    let got = (p1 - p0) / secs;
    println!();
    println!("RTU line at {baud} baud, one unit, {REGISTERS}-register reads back to back, over {secs:.1} s");
    println!(
        "registers/s:              {got:>9.0} of {allowed:.0} the line allows ({:.0} %)",
        100.0 * got / allowed
    );
    bench_result(
        &format!(
            "Modbus RTU: one {baud} baud line through a relay that holds each byte for its time on the wire, a pymodbus unit, {REGISTERS}-register reads back to back"
        ),
        &format!(
            "{got:.0} registers/s of the {allowed:.0} the line allows ({:.0} %; target 90 %)",
            100.0 * got / allowed
        ),
    );
    drop(gw);
    drop(server);
}
