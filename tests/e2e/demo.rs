//! `field-sim demo`, the README's first command: the gateway and the B1 harvest in one process
//! over the real protocols, to a summary whose commands work, and a clean stop on Ctrl-C.

use fieldgate_tests::{bin, query_cli};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// The demo process, killed if the test fails before it stopped.
struct Demo(std::process::Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_demo_runs_to_a_summary_whose_commands_work_and_stops_cleanly_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    // A directory the demo did not make is left alone.
    std::fs::write(dir.path().join("precious.txt"), "keep").unwrap();
    let out = Command::new(bin("field-sim")).args(["demo", "--dir"]).arg(dir.path()).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not an earlier demo's directory"));
    assert!(dir.path().join("precious.txt").exists());

    let demo_dir = dir.path().join("demo");
    let mut demo = Demo(
        Command::new(bin("field-sim"))
            .args(["demo", "--duration", "25s", "--dir"])
            .arg(&demo_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut out = BufReader::new(demo.0.stdout.take().unwrap());
    let mut text = String::new();
    while !text.contains("The gateway keeps running") {
        assert!(out.read_line(&mut text).unwrap() > 0, "the demo ended before its summary:\n{text}");
    }
    // The live view (not a terminal: a line every 10 s) showed the harvest and the protocols.
    assert!(text.contains("harvest   [") && text.contains("lorawan"), "{text}");
    let readings = text.lines().find(|l| l.starts_with("Readings: ")).unwrap();
    for protocol in ["MQTT", "LoRaWAN", "Modbus"] {
        let n: f64 = readings
            .split(&format!("{protocol} "))
            .nth(1)
            .unwrap()
            .split([',', ')'])
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(n > 0.0, "no {protocol} readings: {readings}");
    }

    // The printed query runs against the gateway, which is still up.
    let grpc = text.split("--grpc ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    let (ok, stats, err) =
        query_cli(grpc, None, &["stats", "--last", "1h", "--window", "1m", "--metric", "fill_kg"]);
    assert!(ok && stats.contains("combine-1"), "{err}\n{stats}");
    // The printed DuckDB line reads the Parquet files: machines over MQTT, the carts' load
    // cells over LoRaWAN, the grain bin over Modbus.
    let line = text.lines().find(|l| l.trim_start().starts_with("duckdb -c ")).unwrap();
    let sql = line.trim_start().trim_start_matches("duckdb -c \"").trim_end_matches('"');
    let devices = fieldgate_tests::python(
        "import duckdb, sys\nprint(sorted({r[0] for r in duckdb.sql(sys.stdin.read()).fetchall()}))",
        sql,
    );
    for device in ["combine-1", "cart-1-scale", "bin-0001"] {
        assert!(devices.contains(device), "{device} not in the files: {devices}");
    }

    // Ctrl-C: the gateway drains and flushes, and the demo exits 0.
    let pid = nix::unistd::Pid::from_raw(demo.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert!(demo.0.wait().unwrap().success(), "{rest}");
    assert!(rest.contains("Stopped cleanly"), "{rest}");
    assert!(demo_dir.join("data/recordings").is_dir());
}
