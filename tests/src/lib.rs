//! Helpers for fieldgate's end-to-end tests: real processes, real sockets, real files.
//!
//! Processes are found next to the test binary in cargo's target directory (the README's test
//! command builds them first) or at `$FIELDGATE_BIN_DIR`. A spawned process is killed when its
//! handle drops, so a failing test leaves nothing running. Tests wait for *events* (a JSON log
//! line, a port, an exit), each bounded by a generous deadline that only matters on failure.
#![allow(clippy::unwrap_used)] // test support: a failed unwrap is a failed test

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a test waits for an event before declaring it will not come. Generous: the
/// machines are shared and a debug build under load is slow; only a failing test waits it out.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(60);

/// The path of one of the workspace's binaries (`fieldgate`, `field-sim`).
pub fn bin(name: &str) -> PathBuf {
    let dir = match std::env::var_os("FIELDGATE_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        // target/<profile>/deps/e2e-<hash> → target/<profile>/
        None => std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().to_owned(),
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --bins`; the README's test command does)",
        path.display()
    );
    path
}

/// A running `fieldgate` process, logging JSON to a pipe the test reads.
#[derive(Debug)]
pub struct GatewayProcess {
    child: Child,
    events: Receiver<serde_json::Value>,
    /// Every event received so far, and how many of each message `wait_for` has returned.
    seen: Vec<serde_json::Value>,
    returned: std::collections::HashMap<String, usize>,
    log: Arc<Mutex<Vec<String>>>,
}

impl GatewayProcess {
    /// Start `fieldgate --log-format json <args>`.
    pub fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new(bin("fieldgate"))
            .arg("--log-format")
            .arg("json")
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, events) = channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) {
                    let _ = tx.send(event);
                }
                log2.lock().unwrap().push(line);
            }
        });
        GatewayProcess { child, events, seen: Vec::new(), returned: std::collections::HashMap::new(), log }
    }

    /// The process id (for reading its resource use under /proc).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Wait for the next log event whose `message` is `message` that no earlier `wait_for`
    /// returned, whenever it was logged (events logged while waiting for another message are
    /// kept, not skipped), and return it.
    pub fn wait_for(&mut self, message: &str) -> serde_json::Value {
        let want = self.returned.get(message).copied().unwrap_or(0);
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            if let Some(e) = self.seen.iter().filter(|e| e["message"] == message).nth(want) {
                let e = e.clone();
                self.returned.insert(message.to_owned(), want + 1);
                return e;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(e) => self.seen.push(e),
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no `{message}` event within {EVENT_TIMEOUT:?}; log:\n{}", self.log())
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().unwrap();
                    panic!("fieldgate exited ({status}) before `{message}`; log:\n{}", self.log())
                }
            }
        }
    }

    /// Wait for `mqtt broker listening` and return the embedded broker's address.
    pub fn wait_broker(&mut self) -> SocketAddr {
        let e = self.wait_for("mqtt broker listening");
        e["addr"].as_str().unwrap().parse().unwrap()
    }

    /// Wait for `gateway started` and return the HTTP address it bound.
    pub fn wait_started(&mut self) -> SocketAddr {
        let e = self.wait_for("gateway started");
        e["http_addr"].as_str().unwrap().parse().unwrap()
    }

    /// The HTTP address from `gateway started` (after [`GatewayProcess::wait_started`]).
    pub fn http_addr(&mut self) -> SocketAddr {
        let e = self.seen.iter().rev().find(|e| e["message"] == "gateway started").cloned();
        let e = e.unwrap_or_else(|| self.wait_for("gateway started"));
        e["http_addr"].as_str().unwrap().parse().unwrap()
    }

    /// The gRPC address from `gateway started` (after [`GatewayProcess::wait_started`]).
    pub fn grpc_addr(&mut self) -> SocketAddr {
        let e = self.seen.iter().rev().find(|e| e["message"] == "gateway started").cloned();
        let e = e.unwrap_or_else(|| self.wait_for("gateway started"));
        e["grpc_addr"].as_str().unwrap().parse().unwrap()
    }

    /// SIGTERM, then the process must exit 0 (a clean drain and flush); panics with the log
    /// otherwise.
    pub fn stop_cleanly(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        assert_eq!(self.wait_exit().code(), Some(0), "{}", self.log());
    }

    /// Send a signal to the process.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        nix::sys::signal::kill(pid, signal).unwrap();
    }

    /// Wait for the process to exit, within [`EVENT_TIMEOUT`].
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "fieldgate did not exit within {EVENT_TIMEOUT:?}; log:\n{}",
                self.log()
            );
            // Polling the exit status with a deadline: no event exists for a child's exit
            // without a signal handler, and a short interval keeps the test quick.
            std::thread::park_timeout(Duration::from_millis(20));
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run `fieldgate query --grpc <grpc> --format json <args>` with `token` (or none) in
/// FIELDGATE_TOKEN; returns whether it succeeded, its stdout and its stderr.
pub fn query_cli(grpc: SocketAddr, token: Option<&str>, args: &[&str]) -> (bool, String, String) {
    let mut command = Command::new(bin("fieldgate"));
    command
        .args(["query", "--grpc", &grpc.to_string(), "--format", "json"])
        .args(args)
        .env_remove("FIELDGATE_TOKEN");
    if let Some(t) = token {
        command.env("FIELDGATE_TOKEN", t);
    }
    let out = command.output().unwrap();
    (out.status.success(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

/// A minimal HTTP/1.1 GET: returns the status code, the headers (lowercased names) and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, Vec<(String, String)>, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(EVENT_TIMEOUT)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

/// Write a gateway config into `dir` with an HTTP port chosen by the OS, plus `extra` TOML.
/// Unless `extra` configures them, the embedded broker and the gRPC API listen on ports
/// chosen by the OS too.
pub fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("fieldgate.toml");
    let mqtt = if extra.contains("[mqtt") { "" } else { "\n[mqtt.embedded]\nlisten = \"127.0.0.1:0\"\n" };
    let grpc = if extra.contains("[grpc]") { "" } else { "\n[grpc]\nlisten = \"127.0.0.1:0\"\n" };
    let text = format!(
        "[gateway]\nid = \"test-gw\"\ndata_dir = \"data\"\nshutdown_timeout = \"20s\"\n\n[http]\nlisten = \"127.0.0.1:0\"\n{extra}{mqtt}{grpc}"
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Run `python3 -c <script>` with `stdin`; returns stdout, panicking with stderr on failure.
pub fn python(script: &str, stdin: &str) -> String {
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 is needed by this test (.ci/test installs its packages)");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python failed ({}); is the package installed? run .ci/test, which installs it\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A loopback port free right now, for a server that must come back on the same port after
/// a restart. It is taken below the kernel's ephemeral range, which `bind(0)` (every other
/// test's servers and every outgoing connection) draws from: otherwise, while the server is
/// down, another test could be handed the same port and its clients' messages would go there.
pub fn free_port() -> u16 {
    use rand::{Rng, SeedableRng};
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let low: u16 = range.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(32768);
    let mut rng = rand::rngs::SmallRng::from_os_rng();
    loop {
        let port = rng.random_range(10_000..low.max(10_001));
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A mosquitto broker on a free loopback port, killed when dropped.
#[derive(Debug)]
pub struct Mosquitto {
    child: Child,
    pub port: u16,
    /// A second listener with TLS that requires a client certificate (see [`Mosquitto::start_tls`]).
    pub tls_port: Option<u16>,
    conf: PathBuf,
}

/// A test PKI: a CA, a certificate for `127.0.0.1`/`localhost` signed by it, a client
/// certificate signed by it, and an unrelated CA. All PEM files in one directory.
#[derive(Debug)]
pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub other_ca: PathBuf,
}

impl Pki {
    pub fn generate(dir: &Path) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "fieldgate test CA");
        let ca = ca_params.clone().self_signed(&ca_key).unwrap();
        let leaf = |name: &str| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
            params.subject_alt_names.push(SanType::IpAddress([127, 0, 0, 1].into()));
            params.distinguished_name.push(DnType::CommonName, name);
            (params.signed_by(&key, &ca, &ca_key).unwrap(), key)
        };
        let (server, server_key) = leaf("mosquitto");
        let (client, client_key) = leaf("fieldgate");
        let other_key = KeyPair::generate().unwrap();
        let other = ca_params.self_signed(&other_key).unwrap();
        let write = |name: &str, pem: String| {
            let p = dir.join(name);
            std::fs::write(&p, pem).unwrap();
            p
        };
        Pki {
            ca: write("ca.pem", ca.pem()),
            server_cert: write("server.pem", server.pem()),
            server_key: write("server.key", server_key.serialize_pem()),
            client_cert: write("client.pem", client.pem()),
            client_key: write("client.key", client_key.serialize_pem()),
            other_ca: write("other-ca.pem", other.pem()),
        }
    }
}

impl Mosquitto {
    /// Start mosquitto with its config in `dir` (in-memory, anonymous, a generous queue for
    /// offline persistent sessions, the default in-flight window of 20).
    pub fn start(dir: &Path) -> Self {
        Self::start_with(dir, None)
    }

    /// Like [`Mosquitto::start`], plus a TLS listener that requires a client certificate
    /// signed by `pki.ca`.
    pub fn start_tls(dir: &Path, pki: &Pki) -> Self {
        Self::start_with(dir, Some(pki))
    }

    fn start_with(dir: &Path, pki: Option<&Pki>) -> Self {
        let port = free_port();
        let conf = dir.join("mosquitto.conf");
        let mut text = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 1000000\nmax_inflight_messages 20\n"
        );
        let tls_port = pki.map(|pki| {
            let tls_port = free_port();
            text.push_str(&format!(
                "listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
                pki.ca.display(),
                pki.server_cert.display(),
                pki.server_key.display()
            ));
            tls_port
        });
        std::fs::write(&conf, text).unwrap();
        let child = Self::spawn(&conf);
        let m = Mosquitto { child, port, tls_port, conf };
        m.wait_listening();
        m
    }

    fn spawn(conf: &Path) -> Child {
        Command::new("mosquitto")
            .arg("-c")
            .arg(conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto is needed by this test (.ci/install-test-deps installs it)")
    }

    /// Wait until the port accepts connections (the broker's readiness event).
    fn wait_listening(&self) {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        for port in std::iter::once(self.port).chain(self.tls_port) {
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(Instant::now() < deadline, "mosquitto did not listen on {port}");
                std::thread::park_timeout(Duration::from_millis(10));
            }
        }
    }

    /// Stop the broker (SIGKILL, as a crash would) and start it again on the same port.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(&self.conf);
        self.wait_listening();
    }

    /// Publish one message per line to `topic` (see [`mqtt_publish`]).
    pub fn publish_lines(&self, topic: &str, lines: &[String]) {
        let messages: Vec<(String, String)> = lines.iter().map(|l| (topic.to_owned(), l.clone())).collect();
        mqtt_publish(self.port, &messages);
    }
}

/// Publish `(topic, payload)` messages in order at QoS 1 with paho-mqtt to a broker on
/// `port`, returning once the broker acknowledged every one (`mosquitto_pub -l` can exit 0
/// having dropped the tail of a large batch, as FIELD-NOTES warns). The client reconnects by
/// itself and re-sends what was not acknowledged, as a device would, so it rides out a broker
/// that restarts (the embedded one, when the gateway is killed).
pub fn mqtt_publish(port: u16, messages: &[(String, String)]) {
    // Acknowledgements are counted in on_publish rather than with wait_for_publish, which
    // reports a message published while the connection was down as failed even though paho
    // keeps it and sends it after reconnecting.
    let script = r#"
import sys, threading
import paho.mqtt.client as mqtt
port = int(sys.argv[1])
done = threading.Condition()
acked = 0
def on_publish(client, userdata, mid, reason_code, properties):
    global acked
    with done:
        acked += 1
        done.notify_all()
connected = threading.Event()
def on_connect(client, userdata, flags, reason_code, properties):
    connected.set()
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
c.on_publish = on_publish
c.on_connect = on_connect
c.max_inflight_messages_set(100)
c.max_queued_messages_set(0)
c.reconnect_delay_set(min_delay=0.05, max_delay=0.5)
# paho can leave a message queued when it is published while the CONNACK is being handled,
# until its next keep-alive round (60 s by default): wait for the CONNACK, and keep the
# keep-alive short so a message queued across a reconnect goes out soon.
c.connect("127.0.0.1", port, keepalive=5)
c.loop_start()
assert connected.wait(60), "no CONNACK from the broker"
n = 0
for line in sys.stdin:
    topic, payload = line.rstrip("\n").split("\t", 1)
    c.publish(topic, payload, qos=1)
    n += 1
with done:
    assert done.wait_for(lambda: acked >= n, timeout=120), f"the broker acknowledged {acked} of {n}"
c.disconnect()
c.loop_stop()
"#;
    let mut input = String::new();
    for (topic, payload) in messages {
        assert!(!topic.contains('\t') && !payload.contains(['\t', '\n']), "one message per line");
        input.push_str(topic);
        input.push('\t');
        input.push_str(payload);
        input.push('\n');
    }
    let mut child = Command::new("python3")
        .args(["-c", script, &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 is needed by this test");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "publishing failed (is paho-mqtt installed? .ci/install-test-deps installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The lines a child writes to its stdout, as they come (read on a thread of their own).
fn lines_of(stdout: std::process::ChildStdout) -> Receiver<String> {
    let (tx, lines) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

/// A device listening for its commands: `mosquitto_sub` subscribed at QoS 1 to a filter,
/// printing `topic payload` lines. [`Subscriber::start`] returns once the broker confirmed the
/// subscription (SUBACK), so nothing published afterwards can be missed.
#[derive(Debug)]
pub struct Subscriber {
    child: Child,
    lines: Receiver<String>,
}

impl Subscriber {
    pub fn start(port: u16, filter: &str) -> Self {
        // Line-buffered: into a pipe, mosquitto_sub would hold its output back.
        let mut child = Command::new("stdbuf")
            .args(["-oL", "mosquitto_sub", "-d", "-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-q", "1", "-v", "-t", filter])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub is needed by this test (.ci/install-test-deps installs it)");
        let lines = lines_of(child.stdout.take().unwrap());
        let mut sub = Subscriber { child, lines };
        sub.next_line(|l| l.contains("received SUBACK"));
        sub
    }

    fn next_line(&mut self, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if want(&l) => return l,
                Ok(_) => {}
                Err(e) => panic!("mosquitto_sub: no expected line within {EVENT_TIMEOUT:?}: {e}"),
            }
        }
    }

    /// The next message: its topic and payload.
    pub fn next_message(&mut self) -> (String, String) {
        // Debug lines start with "Client " or "Subscribed"; messages with their topic.
        let line = self.next_line(|l| !l.starts_with("Client ") && !l.starts_with("Subscribed"));
        let (topic, payload) = line.split_once(' ').unwrap_or((&line, ""));
        (topic.to_owned(), payload.to_owned())
    }

    /// Whatever arrived that is not debug output, without waiting.
    pub fn pending_messages(&mut self) -> Vec<String> {
        self.lines.try_iter().filter(|l| !l.starts_with("Client ") && !l.starts_with("Subscribed")).collect()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A channel to the gateway's plain-text gRPC API at `addr`.
pub async fn grpc_channel(addr: SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap()
}

/// Send `command` to the gateway's gRPC API at `addr`, with a bearer `token` if given.
pub fn send_command(
    addr: SocketAddr,
    token: Option<&str>,
    command: fieldgate_proto::v1::Command,
) -> Result<fieldgate_proto::v1::SendResponse, tonic::Status> {
    use fieldgate_proto::v1::command_service_client::CommandServiceClient;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let channel = grpc_channel(addr).await;
        let mut request = tonic::Request::new(fieldgate_proto::v1::SendRequest { command: Some(command) });
        if let Some(t) = token {
            request.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        CommandServiceClient::new(channel).send(request).await.map(tonic::Response::into_inner)
    })
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of the first `/metrics` sample whose line starts with `prefix` (name and labels).
pub fn metric(addr: SocketAddr, prefix: &str) -> Option<f64> {
    let (_, _, body) = http_get(addr, "/metrics");
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Wait until the `/metrics` sample starting with `prefix` reaches `at_least` (polling the
/// gateway's own counter, with a deadline: the counter is the event).
pub fn wait_metric(addr: SocketAddr, prefix: &str, at_least: f64) -> f64 {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let v = metric(addr, prefix).unwrap_or(0.0);
        if v >= at_least {
            return v;
        }
        assert!(Instant::now() < deadline, "{prefix} stayed at {v}, below {at_least}, for {EVENT_TIMEOUT:?}");
        std::thread::park_timeout(Duration::from_millis(20));
    }
}

/// Wait until `/healthz` reports `component` with `status` (polling the gateway's own view,
/// with a deadline); returns the whole report.
pub fn wait_health(addr: SocketAddr, component: &str, status: &str) -> serde_json::Value {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let (_, _, body) = http_get(addr, "/healthz");
        let health: serde_json::Value = serde_json::from_str(&body).unwrap();
        if health["components"][component]["status"] == status {
            return health;
        }
        assert!(Instant::now() < deadline, "{component} never became {status}: {health}");
        std::thread::park_timeout(Duration::from_millis(20));
    }
}

/// Resident memory of a process in MiB: `VmRSS:` (now) or `VmHWM:` (peak), from /proc.
pub fn rss_mib(pid: u32, which: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(which))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb / 1024.0
}

/// CPU seconds (user + system) a process has used, from /proc.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<f64> = after.split_whitespace().skip(11).take(2).map(|v| v.parse().unwrap()).collect();
    (f[0] + f[1]) / 100.0
}

/// Every record batch of the Parquet files under `dir`.
pub fn parquet_batches(dir: &Path) -> Vec<arrow_array::RecordBatch> {
    let mut batches = Vec::new();
    for path in fieldgate_store::layout::parquet_files(dir) {
        let file = std::fs::File::open(&path).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        batches.extend(reader.map(Result::unwrap));
    }
    batches
}

/// The values of a name column (device, metric): plain strings in rollups, an Arrow
/// dictionary in recordings (and in rollups written before the change).
fn dictionary_strings(b: &arrow_array::RecordBatch, name: &str) -> Vec<String> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::Int32Type;
    let column = b.column_by_name(name).unwrap();
    if let Some(strings) = column.as_string_opt::<i32>() {
        return strings.iter().map(|v| v.unwrap().to_owned()).collect();
    }
    let dict = arrow_array::cast::as_dictionary_array::<Int32Type>(column);
    let values = dict.values().as_string::<i32>();
    dict.keys().iter().map(|k| values.value(k.unwrap() as usize).to_owned()).collect()
}

/// (device, metric, window_start, count, sum) of every rollup row of one window size, read
/// from the Parquet files under `data_dir`.
pub fn rollup_rows(data_dir: &Path, window: &str) -> Vec<(String, String, i64, u64, f64)> {
    rows_in(&data_dir.join(fieldgate_store::layout::ROLLUPS).join(format!("window={window}")))
}

/// The same rows as [`rollup_rows`], of one gateway's files at a collector (`collector_dir`
/// is the collector's `--data-dir`).
pub fn fleet_rollup_rows(
    collector_dir: &Path,
    gateway: &str,
    window: &str,
) -> Vec<(String, String, i64, u64, f64)> {
    rows_in(
        &collector_dir.join("rollups").join(format!("gateway={gateway}")).join(format!("window={window}")),
    )
}

fn rows_in(dir: &Path) -> Vec<(String, String, i64, u64, f64)> {
    use arrow_array::Array;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float64Type, TimestampNanosecondType, UInt64Type};
    let mut rows = Vec::new();
    for b in parquet_batches(dir) {
        let (devices, metrics) = (dictionary_strings(&b, "device"), dictionary_strings(&b, "metric"));
        let starts = b.column_by_name("window_start").unwrap().as_primitive::<TimestampNanosecondType>();
        let counts = b.column_by_name("count").unwrap().as_primitive::<UInt64Type>();
        let sums = b.column_by_name("sum").unwrap().as_primitive::<Float64Type>();
        for i in 0..b.num_rows() {
            assert!(!starts.is_null(i));
            rows.push((
                devices[i].clone(),
                metrics[i].clone(),
                starts.value(i),
                counts.value(i),
                sums.value(i),
            ));
        }
    }
    rows
}

/// (device, metric, ts, value) of every recorded reading under `data_dir`, by time.
pub fn recording_rows(data_dir: &Path) -> Vec<(String, String, i64, f64)> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float64Type, TimestampNanosecondType};
    let mut rows = Vec::new();
    for b in parquet_batches(&data_dir.join(fieldgate_store::layout::RECORDINGS)) {
        let (devices, metrics) = (dictionary_strings(&b, "device"), dictionary_strings(&b, "metric"));
        let ts = b.column_by_name("ts").unwrap().as_primitive::<TimestampNanosecondType>().clone();
        let values = b.column_by_name("value").unwrap().as_primitive::<Float64Type>().clone();
        for i in 0..b.num_rows() {
            rows.push((devices[i].clone(), metrics[i].clone(), ts.value(i), values.value(i)));
        }
    }
    rows.sort_by_key(|r| r.2);
    rows
}

/// A rollup row with every figure, for comparing two stores.
#[derive(Debug, Clone, PartialEq)]
pub struct RollupStat {
    pub device: String,
    pub metric: String,
    pub window_start: i64,
    pub count: u64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    pub first: f64,
    pub last: f64,
}

/// Every rollup row of one window size under `data_dir`, sorted by device, metric, window.
pub fn rollup_stats(data_dir: &Path, window: &str) -> Vec<RollupStat> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float64Type, TimestampNanosecondType, UInt64Type};
    let dir = data_dir.join(fieldgate_store::layout::ROLLUPS).join(format!("window={window}"));
    let mut rows = Vec::new();
    for b in parquet_batches(&dir) {
        let (devices, metrics) = (dictionary_strings(&b, "device"), dictionary_strings(&b, "metric"));
        let f = |name: &str| b.column_by_name(name).unwrap().as_primitive::<Float64Type>().clone();
        let (min, max, mean, first, last) = (f("min"), f("max"), f("mean"), f("first"), f("last"));
        let starts = b.column_by_name("window_start").unwrap().as_primitive::<TimestampNanosecondType>();
        let counts = b.column_by_name("count").unwrap().as_primitive::<UInt64Type>();
        for i in 0..b.num_rows() {
            rows.push(RollupStat {
                device: devices[i].clone(),
                metric: metrics[i].clone(),
                window_start: starts.value(i),
                count: counts.value(i),
                min: min.value(i),
                max: max.value(i),
                mean: mean.value(i),
                first: first.value(i),
                last: last.value(i),
            });
        }
    }
    rows.sort_by(|a, b| (&a.device, &a.metric, a.window_start).cmp(&(&b.device, &b.metric, b.window_start)));
    rows
}

/// A pymodbus server (`tests/py/modbus_server.py`) over TCP or a serial line, with the
/// requests it saw. Killed when dropped.
#[derive(Debug)]
pub struct ModbusServer {
    child: Child,
    args: Vec<String>,
    lines: Receiver<String>,
    /// Every request line seen so far ("req <unit> <fc> <address> <count>" or "write ...").
    pub seen: Vec<String>,
    /// The TCP port, for a TCP server.
    pub port: u16,
}

impl ModbusServer {
    /// Serve `spec` (see the script's documentation) over TCP on a free port.
    pub fn tcp(dir: &Path, spec: &serde_json::Value) -> Self {
        let port = free_port();
        let spec_path = dir.join(format!("modbus-{port}.json"));
        std::fs::write(&spec_path, spec.to_string()).unwrap();
        let args = vec!["--tcp".to_owned(), port.to_string(), spec_path.display().to_string()];
        Self::spawn(args, port)
    }

    /// Serve `spec` as RTU frames over TCP (as a serial server passes them) on a free port.
    pub fn rtu_over_tcp(dir: &Path, spec: &serde_json::Value) -> Self {
        let port = free_port();
        let spec_path = dir.join(format!("modbus-{port}.json"));
        std::fs::write(&spec_path, spec.to_string()).unwrap();
        let args = vec!["--rtu-over-tcp".to_owned(), port.to_string(), spec_path.display().to_string()];
        Self::spawn(args, port)
    }

    /// Serve `spec` as RTU on the serial device `path` at `baud`.
    pub fn serial(dir: &Path, path: &Path, baud: u32, spec: &serde_json::Value) -> Self {
        let spec_path = dir.join("modbus-serial.json");
        std::fs::write(&spec_path, spec.to_string()).unwrap();
        let args = vec![
            "--serial".to_owned(),
            path.display().to_string(),
            "--baud".to_owned(),
            baud.to_string(),
            spec_path.display().to_string(),
        ];
        Self::spawn(args, 0)
    }

    fn spawn(args: Vec<String>, port: u16) -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/py/modbus_server.py");
        let mut child = Command::new("python3")
            .arg("-W")
            .arg("ignore")
            .arg(script)
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 is needed by this test");
        let lines = lines_of(child.stdout.take().unwrap());
        let server = ModbusServer { child, args, lines, seen: Vec::new(), port };
        let ready = server.lines.recv_timeout(EVENT_TIMEOUT);
        assert_eq!(ready.as_deref(), Ok("ready"), "the Modbus server did not start (is pymodbus installed?)");
        server
    }

    /// Kill the server (as a power cut would) and start it again with the same values.
    pub fn restart(&mut self) {
        self.stop();
        let fresh = Self::spawn(self.args.clone(), self.port);
        let old = std::mem::replace(self, fresh);
        self.seen = old.seen.clone();
    }

    /// Kill the server.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Collect the request lines that arrived, without waiting.
    pub fn poll_lines(&mut self) -> &[String] {
        self.seen.extend(self.lines.try_iter());
        &self.seen
    }

    /// Wait for a request line starting with `prefix`; returns it.
    pub fn wait_line(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.starts_with(prefix) {
                        return l;
                    }
                }
                Err(e) => panic!("the Modbus server saw no `{prefix}` within {EVENT_TIMEOUT:?}: {e}"),
            }
        }
    }
}

impl Drop for ModbusServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A pseudo-terminal pair linked by socat: what one end writes the other reads, like a
/// serial cable. The ends are `dir/gateway-tty` and `dir/device-tty`.
#[derive(Debug)]
pub struct SerialPair {
    child: Child,
    pub gateway: PathBuf,
    pub device: PathBuf,
}

impl SerialPair {
    pub fn open(dir: &Path) -> Self {
        let (gateway, device) = (dir.join("gateway-tty"), dir.join("device-tty"));
        let child = Command::new("socat")
            .arg(format!("pty,raw,echo=0,link={}", gateway.display()))
            .arg(format!("pty,raw,echo=0,link={}", device.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat is needed by this test (.ci/install-test-deps installs it)");
        let deadline = Instant::now() + EVENT_TIMEOUT;
        while !(gateway.exists() && device.exists()) {
            assert!(Instant::now() < deadline, "socat did not create the pseudo-terminals");
            std::thread::park_timeout(Duration::from_millis(10));
        }
        SerialPair { child, gateway, device }
    }
}

impl Drop for SerialPair {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (device, metric, value) of every raw reading in the recordings under `data_dir`.
pub fn recorded_values(data_dir: &Path) -> Vec<(String, String, f64)> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::Float64Type;
    let mut rows = Vec::new();
    let Ok(days) = std::fs::read_dir(data_dir.join(fieldgate_store::layout::RECORDINGS)) else { return rows };
    for day in days {
        for b in parquet_batches(&day.unwrap().path()) {
            let (devices, metrics) = (dictionary_strings(&b, "device"), dictionary_strings(&b, "metric"));
            let values = b.column_by_name("value").unwrap().as_primitive::<Float64Type>();
            for i in 0..b.num_rows() {
                rows.push((devices[i].clone(), metrics[i].clone(), values.value(i)));
            }
        }
    }
    rows
}

/// A loopback port free for both UDP and TCP right now, below the ephemeral range (see
/// [`free_port`]), for a UDP server that must come back on the same port after a restart.
pub fn free_udp_port() -> u16 {
    loop {
        let port = free_port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A benchmark's figure for the README's performance table: one tab-separated
/// `bench-result` line (what was measured, the figure), which `tests/run-benchmarks` collects
/// with the command that printed it.
#[allow(clippy::print_stdout)] // a benchmark's figures go to its standard output
pub fn bench_result(what: &str, figure: &str) {
    println!("bench-result\t{what}\t{figure}");
}
