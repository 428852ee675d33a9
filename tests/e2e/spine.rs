//! The spine: the command line, config checking, start-up, `/healthz`, `/metrics`, and a clean
//! exit on SIGTERM, all against the real `fieldgate` binary.

use fieldgate_tests::{GatewayProcess, bin, http_get, python, write_config};
use nix::sys::signal::Signal;
use std::process::Command;

fn fieldgate(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin("fieldgate")).args(args).output().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn check_config_accepts_the_example() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/fieldgate.toml");
    let (code, stdout, stderr) = fieldgate(&["check-config", example]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("is valid: gateway `example-farm`"), "{stdout}");
}

#[test]
fn check_config_lists_every_problem_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[gateway]\nid = \"farm\"\ndata_dri = \"/x\"\n\n[http]\nlisten = \"nowhere\"\n")
        .unwrap();
    let (code, stdout, stderr) = fieldgate(&["check-config", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stdout.is_empty(), "{stdout}");
    let file = path.display();
    assert!(stderr.contains(&format!("{file} has 2 problems")), "{stderr}");
    assert!(
        stderr.contains(&format!("{file}:3:1  unknown key `data_dri` in gateway (did you mean `data_dir`?)")),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("{file}:6:10  http.listen: `nowhere` is not an address")), "{stderr}");
}

#[test]
fn check_config_on_a_missing_file_fails_clearly() {
    let (code, _, stderr) = fieldgate(&["check-config", "/nonexistent/fieldgate.toml"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("/nonexistent/fieldgate.toml has 1 problem"), "{stderr}");
    assert!(stderr.contains("cannot read the file"), "{stderr}");
}

#[test]
fn help_explains_each_subcommand_and_version_prints() {
    let (code, stdout, _) = fieldgate(&["--help"]);
    assert_eq!(code, 0);
    for (cmd, words) in [
        ("run", "Run the gateway with a config file"),
        ("check-config", "Check a config file and list every problem"),
        ("version", "Print the version"),
    ] {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(cmd))
            .unwrap_or_else(|| panic!("{cmd} missing:\n{stdout}"));
        assert!(line.contains(words), "{line}");
    }
    let (code, stdout, _) = fieldgate(&["version"]);
    assert_eq!(code, 0);
    assert_eq!(stdout.trim(), format!("fieldgate {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn run_refuses_a_bad_config_before_starting() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "colour = \"green\"\n");
    let (code, _, stderr) = fieldgate(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("unknown key `colour` in http"), "{stderr}");
    assert!(!dir.path().join("data").exists(), "nothing is created for an invalid config");
}

#[test]
fn serves_health_and_metrics_then_exits_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let mut gw = GatewayProcess::spawn(&["run", "--config", config.to_str().unwrap()]);
    let addr = gw.wait_started();
    assert!(dir.path().join("data").is_dir(), "the data dir is created");

    let (status, _, body) = http_get(addr, "/healthz");
    assert_eq!(status, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["healthy"], true);
    assert_eq!(health["components"]["http"]["status"], "up");
    assert_eq!(health["components"]["store"]["status"], "up", "{body}");

    let (status, headers, metrics) = http_get(addr, "/metrics");
    assert_eq!(status, 200);
    let content_type = headers.iter().find(|(k, _)| k == "content-type").map(|(_, v)| v.as_str());
    assert_eq!(content_type, Some("application/openmetrics-text; version=1.0.0; charset=utf-8"));
    assert_metrics_parse(&metrics);

    let (status, _, _) = http_get(addr, "/nope");
    assert_eq!(status, 404);

    gw.signal(Signal::SIGTERM);
    gw.wait_for("gateway stopped cleanly");
    let status = gw.wait_exit();
    assert_eq!(status.code(), Some(0), "log:\n{}", gw.log());
    assert!(dir.path().join("data/wal").is_dir(), "the store's WAL lives in the data dir");
}

#[test]
fn sigint_also_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let mut gw = GatewayProcess::spawn(&["run", "--config", config.to_str().unwrap()]);
    gw.wait_started();
    gw.signal(Signal::SIGINT);
    assert_eq!(gw.wait_exit().code(), Some(0), "log:\n{}", gw.log());
}

/// Parse the exposition with the Prometheus project's own Python client, both as Prometheus
/// text and as strict OpenMetrics, and check the samples the spine promises.
fn assert_metrics_parse(text: &str) {
    let script = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families as prom
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om
text = sys.stdin.read()
strict = {f.name: f for f in om(text)}
for family in prom(text):
    for s in family.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        print(f"{s.name}|{labels}|{s.value}")
print(f"openmetrics_families||{len(strict)}")
"#;
    let out = python(script, text);
    let samples: Vec<(&str, &str, f64)> = out
        .lines()
        .map(|l| {
            let mut p = l.split('|');
            (p.next().unwrap(), p.next().unwrap(), p.next().unwrap().parse().unwrap())
        })
        .collect();
    let value = |name: &str, labels: &str| {
        samples
            .iter()
            .find(|(n, l, _)| *n == name && *l == labels)
            .map(|s| s.2)
            .unwrap_or_else(|| panic!("no sample {name}{{{labels}}} in:\n{out}"))
    };
    for source in ["mqtt", "modbus", "lorawan"] {
        assert_eq!(value("fieldgate_readings_received_total", &format!("source={source}")), 0.0);
    }
    assert_eq!(value("fieldgate_build_info", &format!("version={}", env!("CARGO_PKG_VERSION"))), 1.0);
    assert!(value("process_resident_memory_bytes", "") > 1_000_000.0);
    assert_eq!(value("fieldgate_store_readings_total", "outcome=aggregated"), 0.0);
    assert_eq!(value("fieldgate_store_recovery_corrupt_regions", ""), 0.0);
    assert!(value("process_start_time_seconds", "") > 1.7e9);
    assert!(value("openmetrics_families", "") >= 4.0);
}
