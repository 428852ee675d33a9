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
        GatewayProcess { child, events, log }
    }

    /// Everything the process wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Wait for the first log event whose `message` is `message`, and return it.
    pub fn wait_for(&mut self, message: &str) -> serde_json::Value {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(e) if e["message"] == message => return e,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no `{message}` event within {EVENT_TIMEOUT:?}; log:\n{}", self.log())
                }
                Err(RecvTimeoutError::Disconnected) => {
                    // The reader thread may still be flushing the last lines into the log.
                    let status = self.child.wait().unwrap();
                    panic!("fieldgate exited ({status}) before `{message}`; log:\n{}", self.log())
                }
            }
        }
    }

    /// Wait for `gateway started` and return the HTTP address it bound.
    pub fn wait_started(&mut self) -> SocketAddr {
        let e = self.wait_for("gateway started");
        e["http_addr"].as_str().unwrap().parse().unwrap()
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
pub fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("fieldgate.toml");
    let text = format!(
        "[gateway]\nid = \"test-gw\"\ndata_dir = \"data\"\nshutdown_timeout = \"20s\"\n\n[http]\nlisten = \"127.0.0.1:0\"\n{extra}"
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
