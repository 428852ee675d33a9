//! Modbus polling cost: 1,000 simulated devices (field-sim, one Modbus TCP server each on
//! loopback) of 20 registers, read as 20 points each, every second: points/s reached, and the
//! gateway's CPU (share of one core) and peak memory while it keeps that rate.
//!
//! Run: `cargo build --release --bins && cargo bench -p fieldgate-tests --bench modbus`
//! (`FG_BENCH_DEVICES` and `FG_BENCH_SECONDS` change the fleet size and the measured span).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // a benchmark binary

use fieldgate_tests::{GatewayProcess, bin, metric, wait_metric, write_config};
use std::io::BufRead;
use std::time::{Duration, Instant};

const POINTS: usize = 20;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// CPU seconds (user + system) a process has used, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<f64> = after.split_whitespace().skip(11).take(2).map(|v| v.parse().unwrap()).collect();
    (f[0] + f[1]) / 100.0
}

/// Peak (`VmHWM`) or current (`VmRSS`) resident memory, in MiB.
fn rss_mib(pid: u32, which: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(which))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb / 1024.0
}

fn main() {
    let devices = env("FG_BENCH_DEVICES", 1000);
    let seconds = env("FG_BENCH_SECONDS", 20);
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
    // The measured span (a benchmark's clock, not a test's synchronisation).
    std::thread::sleep(Duration::from_secs(seconds as u64));
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
        "gateway RSS:              {:>9.1} MiB now, {:.1} MiB peak",
        rss_mib(gw.pid(), "VmRSS:"),
        rss_mib(gw.pid(), "VmHWM:")
    );
    println!("field-sim CPU (context):  {:>9.1} % of one core", 100.0 * (s1 - s0) / secs);
    let _ = sim.kill();
    let _ = sim.wait();
}
