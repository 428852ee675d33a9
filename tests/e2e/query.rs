//! Stats over gRPC and the CLI against a reference computed here from the readings sent:
//! MQTT devices publish ten minutes of readings (the last windows still open in the gateway's
//! memory), then `fieldgate query stats` and a gRPC client ask for them in several windows.

use fieldgate_proto::v1;
use fieldgate_proto::v1::query_service_client::QueryServiceClient;
use fieldgate_tests::{GatewayProcess, mqtt_publish, query_cli, write_config};
use std::collections::BTreeMap;

/// 2026-01-01T00:00:00Z in milliseconds.
const BASE_MS: i64 = 1_767_225_600_000;
const TOKEN: &str = "t0ken-for-tests";

/// (device, ts in ms, value) of every reading sent: three bins, every 5 s for 10 min 20 s.
fn readings() -> Vec<(String, i64, f64)> {
    (0..124i64)
        .flat_map(|i| {
            (0..3).map(move |d| {
                (format!("bin-{d}"), BASE_MS + i * 5000, ((i * 37 + d * 11) % 41) as f64 * 0.25)
            })
        })
        .collect()
}

/// Per device and bucket of `bucket_ms` from `from_ms`: (count, sum, min, max) of the readings
/// whose `source_ms` window starts in `[from_ms, to_ms)`.
fn reference(
    from_ms: i64,
    to_ms: i64,
    source_ms: i64,
    bucket_ms: i64,
) -> BTreeMap<(String, i64), (u64, f64, f64, f64)> {
    let mut out: BTreeMap<(String, i64), (u64, f64, f64, f64)> = BTreeMap::new();
    for (device, ts, v) in readings() {
        let start = ts - ts.rem_euclid(source_ms);
        if start < from_ms || start >= to_ms {
            continue;
        }
        let b = from_ms + (start - from_ms) / bucket_ms * bucket_ms;
        let e = out.entry((device, b)).or_insert((0, 0.0, f64::INFINITY, f64::NEG_INFINITY));
        *e = (e.0 + 1, e.1 + v, e.2.min(v), e.3.max(v));
    }
    out
}

fn rfc3339(ms: i64) -> String {
    fieldgate_proto::Timestamp::from_nanos(ms * 1_000_000).to_string()
}

/// `fieldgate query --format json stats ...`: (exit ok, stdout, stderr).
fn check(rows: &[serde_json::Value], want: &BTreeMap<(String, i64), (u64, f64, f64, f64)>, what: &str) {
    assert_eq!(rows.len(), want.len(), "{what}: {rows:#?}");
    for row in rows {
        let start = fieldgate_proto::Timestamp::parse_rfc3339(row["window_start"].as_str().unwrap()).unwrap();
        let key = (row["device"].as_str().unwrap().to_owned(), start.as_nanos() / 1_000_000);
        let (count, sum, min, max) = want.get(&key).unwrap_or_else(|| panic!("{what}: unexpected row {row}"));
        let got = (
            row["count"].as_f64().unwrap() as u64,
            row["sum"].as_f64().unwrap(),
            row["min"].as_f64().unwrap(),
            row["max"].as_f64().unwrap(),
        );
        assert_eq!(got.0, *count, "{what}: {row}");
        for (g, w) in [
            (got.1, *sum),
            (got.2, *min),
            (got.3, *max),
            (row["mean"].as_f64().unwrap(), sum / *count as f64),
        ] {
            assert!((g - w).abs() < 1e-9, "{what}: {row}: {g} != {w}");
        }
    }
}

#[test]
fn stats_over_grpc_and_the_cli_match_the_readings_sent() {
    let dir = tempfile::tempdir().unwrap();
    let config =
        write_config(dir.path(), &format!("[grpc]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n"));
    let mut gw = GatewayProcess::spawn(&["run", "--config", config.to_str().unwrap()]);
    let port = gw.wait_broker().port();
    let grpc = gw.grpc_addr();
    let messages: Vec<(String, String)> = readings()
        .into_iter()
        .map(|(d, ts, v)| (format!("fieldgate/{d}"), format!(r#"{{"ts": {ts}, "level_pct": {v}}}"#)))
        .collect();
    // Every PUBACK came back: every reading is durable (most in open windows still).
    mqtt_publish(port, &messages);

    let (from, to) = (BASE_MS, BASE_MS + 10 * 60_000);
    let span = ["--from", &rfc3339(from), "--to", &rfc3339(to)];
    let (ok, _, err) = query_cli(grpc, None, &["stats", span[0], span[1], span[2], span[3]]);
    assert!(!ok && err.contains("Unauthenticated"), "no token, no answer: {err}");

    for (window, source_ms, bucket_ms) in
        [("1m", 60_000, 60_000), ("150s", 10_000, 150_000), ("", 60_000, 600_000)]
    {
        let mut args = vec!["stats", "--metric", "level_pct", span[0], span[1], span[2], span[3]];
        if !window.is_empty() {
            args.extend(["--window", window]);
        }
        let (ok, out, err) = query_cli(grpc, Some(TOKEN), &args);
        assert!(ok, "{err}");
        let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        check(&rows, &reference(from, to, source_ms, bucket_ms), &format!("window {window:?}"));
    }

    // Top N and the per-device summary, against the same readings.
    let (ok, out, err) = query_cli(
        grpc,
        Some(TOKEN),
        &["top", "--metric", "level_pct", "--by", "max", "-n", "2", span[0], span[1], span[2], span[3]],
    );
    assert!(ok, "{err}");
    let top: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let mut want: Vec<(String, f64, u64)> = (0..3)
        .map(|d| {
            let device = format!("bin-{d}");
            let mine = reference(from, to, 60_000, 600_000);
            let (count, _, _, max) = mine.iter().find(|((dev, _), _)| *dev == device).unwrap().1;
            (device, *max, *count)
        })
        .collect();
    want.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let got: Vec<(String, f64, u64)> = top
        .iter()
        .map(|r| {
            (
                r["device"].as_str().unwrap().to_owned(),
                r["max"].as_f64().unwrap(),
                r["count"].as_f64().unwrap() as u64,
            )
        })
        .collect();
    assert_eq!(got, want[..2].to_vec());
    let (ok, out, err) = query_cli(grpc, Some(TOKEN), &["summary", span[0], span[1], span[2], span[3]]);
    assert!(ok, "{err}");
    let summary: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(summary.len(), 3, "{summary:?}");
    for row in &summary {
        let device = row["device"].as_str().unwrap();
        let sent: Vec<i64> = readings()
            .into_iter()
            .filter(|(d, ts, _)| d == device && *ts >= from && *ts < to)
            .map(|(_, ts, _)| ts)
            .collect();
        assert_eq!(row["readings"].as_f64(), Some(sent.len() as f64), "{row}");
        assert_eq!(
            row["per_minute"].as_f64(),
            Some((sent.len() as f64 / 10.0 * 100.0).round() / 100.0),
            "{row}"
        );
        let last = fieldgate_proto::Timestamp::parse_rfc3339(row["last_reading"].as_str().unwrap()).unwrap();
        assert_eq!(last.as_nanos() / 1_000_000, *sent.iter().max().unwrap(), "{row}");
        assert_eq!((row["errors"].as_f64(), row["source"].as_str()), (Some(0.0), Some("mqtt")), "{row}");
    }

    // An independent client (Python grpcio, stubs generated from the proto files) gets the
    // same numbers as the CLI, in pages of seven; without the token it is refused.
    let (ok, out, err) = query_cli(
        grpc,
        Some(TOKEN),
        &["stats", "--metric", "level_pct", span[0], span[1], span[2], span[3], "--window", "1m"],
    );
    assert!(ok, "{err}");
    let from_cli: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let proto_root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/proto");
    let request = serde_json::json!({
        "proto_root": proto_root, "addr": grpc.to_string(), "token": TOKEN,
        "from": rfc3339(from), "to": rfc3339(to), "window_s": 60, "metric": "level_pct",
    });
    let answer: serde_json::Value = serde_json::from_str(&fieldgate_tests::python(
        include_str!("../py/query_client.py"),
        &request.to_string(),
    ))
    .unwrap();
    assert_eq!(answer["unauthenticated"], true, "{answer}");
    let from_python = answer["rows"].as_array().unwrap();
    assert_eq!(from_python.len(), from_cli.len());
    for (p, c) in from_python.iter().zip(&from_cli) {
        let when =
            |v: &serde_json::Value| fieldgate_proto::Timestamp::parse_rfc3339(v.as_str().unwrap()).unwrap();
        assert_eq!((&p["device"], when(&p["window_start"])), (&c["device"], when(&c["window_start"])));
        for k in ["count", "sum", "min", "max", "mean"] {
            assert_eq!(p[k].as_f64(), c[k].as_f64(), "{k}: python {p} cli {c}");
        }
    }

    // A gRPC client gets the same numbers, in pages; bad questions say what is wrong.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let channel = fieldgate_tests::grpc_channel(grpc).await;
        let mut client = QueryServiceClient::with_interceptor(channel, |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
            Ok(r)
        });
        let ts = |ms: i64| Some(fieldgate_proto::Timestamp::from_nanos(ms * 1_000_000).into());
        let mut request = v1::StatsRequest {
            devices: vec!["bin-1".into()],
            metrics: vec![],
            from: ts(from),
            to: ts(to),
            window: Some(prost_types::Duration { seconds: 60, nanos: 0 }),
            page_size: 4,
            page_token: String::new(),
        };
        let mut rows = Vec::new();
        let mut pages = 0;
        loop {
            let page = client.stats(request.clone()).await.unwrap().into_inner();
            assert_eq!(page.source_window, Some(prost_types::Duration { seconds: 60, nanos: 0 }));
            pages += 1;
            rows.extend(page.rows);
            if page.next_page_token.is_empty() {
                break;
            }
            request.page_token = page.next_page_token;
        }
        assert_eq!((pages, rows.len()), (3, 10), "ten minutes in pages of four");
        let want = reference(from, to, 60_000, 60_000);
        for r in &rows {
            let start = fieldgate_proto::wire::timestamp("", r.window_start.as_ref().unwrap()).unwrap();
            let (count, sum, ..) = want[&(r.device.clone(), start.as_nanos() / 1_000_000)];
            assert_eq!((r.count, r.sum), (count, sum));
        }
        let mut bad = request.clone();
        bad.page_token = String::new();
        bad.window = Some(prost_types::Duration { seconds: 7, nanos: 0 });
        let e = client.stats(bad).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert_eq!(e.message(), "a window of 7s is not a multiple of a stored window (10s, 1m, 15m)");
        let mut bad = request.clone();
        bad.devices = vec!["bin 1".into()];
        assert_eq!(client.stats(bad).await.unwrap_err().code(), tonic::Code::InvalidArgument);
        let latest = client
            .latest(v1::LatestRequest { devices: vec!["bin-2".into()], metrics: vec![] })
            .await
            .unwrap();
        let last = readings().into_iter().filter(|r| r.0 == "bin-2").max_by_key(|r| r.1).unwrap();
        assert_eq!(latest.into_inner().values.iter().map(|v| v.value).collect::<Vec<_>>(), vec![last.2]);
        // Health answers without a token; reflection lists the API to a caller with one.
        let channel = fieldgate_tests::grpc_channel(grpc).await;
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        let serving =
            health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap();
        assert_eq!(
            serving.into_inner().status(),
            tonic_health::pb::health_check_response::ServingStatus::Serving
        );
        use tonic_reflection::pb::v1::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let list = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut anonymous = ServerReflectionClient::new(channel.clone());
        let refused = anonymous.server_reflection_info(tokio_stream::iter([list.clone()])).await;
        assert_eq!(refused.unwrap_err().code(), tonic::Code::Unauthenticated);
        let mut reflection = ServerReflectionClient::with_interceptor(channel, |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
            Ok(r)
        });
        let mut answers =
            reflection.server_reflection_info(tokio_stream::iter([list])).await.unwrap().into_inner();
        let Some(MessageResponse::ListServicesResponse(services)) =
            answers.message().await.unwrap().unwrap().message_response
        else {
            panic!("not a list of services")
        };
        let names: Vec<&str> = services.service.iter().map(|s| s.name.as_str()).collect();
        for wanted in ["fieldgate.v1.QueryService", "fieldgate.v1.CommandService", "grpc.health.v1.Health"] {
            assert!(names.contains(&wanted), "{names:?}");
        }
        let devices = client.devices(v1::DevicesRequest {}).await.unwrap().into_inner().devices;
        assert_eq!(
            devices.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
            vec!["bin-0", "bin-1", "bin-2"]
        );
        assert!(devices.iter().all(|d| d.readings == 124 && !d.configured));
    });
    // The client's connection is still open (its runtime is not driven): the gateway stops
    // all the same, after a short grace.
    gw.stop_cleanly();
    drop(rt);
}

/// A self-signed certificate and key, chaining to no CA the gateway trusts.
fn stranger(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert =
        rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap().self_signed(&key).unwrap();
    let (c, k) = (dir.join("stranger.pem"), dir.join("stranger.key"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

#[test]
fn over_mutual_tls_a_client_without_the_right_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = fieldgate_tests::Pki::generate(dir.path());
    let config = write_config(
        dir.path(),
        &format!(
            "[grpc]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n[grpc.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\n",
            pki.server_cert.display(),
            pki.server_key.display(),
            pki.ca.display()
        ),
    );
    let mut gw = GatewayProcess::spawn(&["run", "--config", config.to_str().unwrap()]);
    let port = gw.wait_broker().port();
    let http = gw.wait_started();
    let grpc = gw.grpc_addr();
    mqtt_publish(
        port,
        &[("fieldgate/silo-1".to_owned(), format!(r#"{{"ts": {BASE_MS}, "level_pct": 41.5}}"#))],
    );
    let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    let (stranger_cert, stranger_key) = stranger(dir.path());
    let query = |client: Option<(&str, &str)>, ca: &str| {
        let mut args =
            vec!["--tls-ca-file".to_owned(), ca.to_owned(), "--tls-domain".into(), "localhost".into()];
        if let Some((c, k)) = client {
            args.extend(["--tls-cert-file".into(), c.to_owned(), "--tls-key-file".into(), k.to_owned()]);
        }
        args.extend(["latest".into(), "--device".into(), "silo-1".into()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        query_cli(grpc, Some(TOKEN), &args)
    };
    // The right client certificate: answered, over TLS.
    let (ok, out, err) = query(Some((&path(&pki.client_cert), &path(&pki.client_key))), &path(&pki.ca));
    assert!(ok, "{err}");
    let values: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(values[0]["value"].as_f64(), Some(41.5), "{out}");
    // A certificate from no CA the gateway trusts, none at all, or no TLS: refused.
    let (ok, _, err) = query(Some((&path(&stranger_cert), &path(&stranger_key))), &path(&pki.ca));
    assert!(!ok, "a stranger's certificate is refused: {err}");
    let (ok, _, err) = query(None, &path(&pki.ca));
    assert!(!ok, "no client certificate is refused: {err}");
    let (ok, _, err) = query_cli(grpc, Some(TOKEN), &["latest"]);
    assert!(!ok, "plain text is refused: {err}");
    // The client checks the gateway too: a gateway certificate from another CA is refused.
    let (ok, _, err) = query(Some((&path(&pki.client_cert), &path(&pki.client_key))), &path(&pki.other_ca));
    assert!(!ok && err.contains("cannot reach"), "{err}");
    // A tonic client with a stranger's certificate never reaches a service.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(std::fs::read(&pki.ca).unwrap()))
            .identity(Identity::from_pem(
                std::fs::read(&stranger_cert).unwrap(),
                std::fs::read(&stranger_key).unwrap(),
            ))
            .domain_name("localhost");
        let endpoint = tonic::transport::Endpoint::from_shared(format!("https://{grpc}"))
            .unwrap()
            .tls_config(tls)
            .unwrap();
        let refused = match endpoint.connect().await {
            Err(_) => true,
            Ok(channel) => {
                let mut client = QueryServiceClient::new(channel);
                let mut request = tonic::Request::new(v1::DevicesRequest {});
                request.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
                client.devices(request).await.is_err()
            }
        };
        assert!(refused);
    });
    let health = fieldgate_tests::wait_health(http, "grpc", "up");
    assert!(health.to_string().contains("over TLS, client certificates required"), "{health}");
    gw.stop_cleanly();
}

#[test]
fn a_call_is_answered_by_its_deadline_when_the_device_does_not_answer() {
    let dir = tempfile::tempdir().unwrap();
    // A Modbus "device" that takes connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "[grpc]\nlisten = \"127.0.0.1:0\"\n\n[[modbus.device]]\nid = \"pump-1\"\ntcp = \"{}\"\nunit = 1\npoll = \"1s\"\ntimeout = \"60s\"\n\n[[modbus.device.point]]\nmetric = \"speed\"\ntable = \"holding_register\"\naddress = 0\ntype = \"u16\"\n",
            silent.local_addr().unwrap()
        ),
    );
    let mut gw = GatewayProcess::spawn(&["run", "--config", config.to_str().unwrap()]);
    let grpc = gw.grpc_addr();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let send = |id: &str| {
        rt.block_on(async {
            use fieldgate_proto::v1::command_service_client::CommandServiceClient;
            let channel = fieldgate_tests::grpc_channel(grpc).await;
            let command = v1::Command {
                id: id.into(),
                device: "pump-1".into(),
                created_ns: 0,
                action: Some(v1::command::Action::Set(v1::SetValue { metric: "speed".into(), value: 900.0 })),
            };
            let mut request = tonic::Request::new(v1::SendRequest { command: Some(command) });
            request.set_timeout(std::time::Duration::from_secs(3));
            // Far beyond the caller's deadline, far short of the device's 60 s timeout: only
            // a gateway that keeps the deadline answers within it.
            tokio::time::timeout(
                std::time::Duration::from_secs(30),
                CommandServiceClient::new(channel).send(request),
            )
            .await
            .expect("answered long before the device's timeout")
        })
    };
    let e = send("slow-1").unwrap_err();
    assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{e:?}");
    assert!(
        e.message().starts_with("sending the command did not finish within the caller's deadline of 3s"),
        "{e:?}"
    );
    // The command was not accepted: the same id is tried again, not answered DUPLICATE.
    let again = send("slow-1").unwrap_err();
    assert_eq!(again.code(), tonic::Code::DeadlineExceeded, "{again:?}");
    gw.stop_cleanly();
    drop(silent);
}
