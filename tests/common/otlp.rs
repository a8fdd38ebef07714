//! A local OTLP/HTTP receiver for the OTLP output's tests: `scripts/otlp-receiver.py`, run with
//! the venv of `scripts/setup/otlp.sh`. It decodes every request with the official protobuf
//! definitions (`opentelemetry-proto`), verifies SigV4 with botocore's signer when given
//! credentials, and records each request as a JSON line that [`OtlpReceiver::requests`] reads
//! back; the script's docstring lists every field of a record and of a point. Fault modes
//! ([`OtlpReceiver::set_mode`]) stand in for an outage.
//!
//! ```ignore
//! let rx = OtlpReceiver::start(Options::default());
//! // [output] format = "otlp", endpoint = rx.url()
//! rx.wait_for("an accepted Invocations point", |_| {
//!     rx.accepted_points().into_iter().find(|p| p["metric"] == "Invocations")
//! });
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use super::agent::WAIT_LIMIT;

/// How long the receiver may take to print `LISTENING` (Python starting and importing protobuf
/// on a loaded machine). Not an assertion about speed.
const START_LIMIT: Duration = Duration::from_secs(30);

/// A control request's limit (they answer at once; `hang` holds only metrics requests).
const CONTROL_LIMIT: Duration = Duration::from_secs(10);

/// Credentials the receiver verifies SigV4 signatures with: give the agent the same ones.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl Credentials {
    pub fn new(access_key_id: &str, secret_access_key: &str) -> Credentials {
        Credentials {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            session_token: None,
        }
    }

    pub fn with_session_token(mut self, token: &str) -> Credentials {
        self.session_token = Some(token.into());
        self
    }
}

/// How to start a receiver.
#[derive(Clone, Debug)]
pub struct Options {
    /// Verify every request's SigV4 signature with these (a request that fails is answered 403);
    /// None: no verification, "sigv4" records "unsigned" or "present".
    pub sigv4: Option<Credentials>,
    /// The Region of the signature's scope.
    pub region: String,
    /// The service of the signature's scope: CloudWatch's OTLP endpoint signs for `monitoring`.
    pub service: String,
    /// Also record each whole request as protobuf's JSON mapping ("raw").
    pub raw: bool,
    /// The longest `hang` holds a request (the receiver's default: 60 s).
    pub hang_max: Option<Duration>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            sigv4: None,
            region: "us-east-1".into(),
            service: "monitoring".into(),
            raw: false,
            hang_max: None,
        }
    }
}

/// The receiver's Python: `<OTLP_DIR or repo/.otlp>/venv/bin/python`, as the setup script
/// installs it.
pub fn venv_python() -> PathBuf {
    let dir = std::env::var_os("OTLP_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".otlp"));
    let python = dir.join("venv/bin/python");
    assert!(
        python.exists(),
        "no OTLP receiver venv ({} is missing): run scripts/setup/otlp.sh",
        python.display()
    );
    python
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The receiver as a child process; killed however the test ends.
pub struct OtlpReceiver {
    child: Child,
    address: SocketAddr,
    out: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl OtlpReceiver {
    /// Starts a receiver on a free loopback port and waits for it to listen.
    pub fn start(options: Options) -> OtlpReceiver {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let out = dir.path().join("requests.jsonl");
        let log = dir.path().join("receiver.log");
        let mut command = Command::new(venv_python());
        command
            .arg(repo().join("scripts/otlp-receiver.py"))
            .arg("--out")
            .arg(&out)
            .arg("--verbose")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("the receiver's log file"));
        if let Some(c) = &options.sigv4 {
            let mut spec = format!("{}:{}", c.access_key_id, c.secret_access_key);
            if let Some(token) = &c.session_token {
                spec = format!("{spec}:{token}");
            }
            command
                .arg("--verify-sigv4")
                .arg(spec)
                .arg("--region")
                .arg(&options.region)
                .arg("--service")
                .arg(&options.service);
        }
        if options.raw {
            command.arg("--raw");
        }
        if let Some(max) = options.hang_max {
            command.arg("--hang-max").arg(max.as_secs_f64().to_string());
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting scripts/otlp-receiver.py: {e}"));
        let port = listening_port(&mut child, &log);
        OtlpReceiver {
            child,
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            out,
            log,
            _dir: dir,
        }
    }

    /// The OTLP/HTTP metrics endpoint: `http://127.0.0.1:<port>/v1/metrics`.
    pub fn url(&self) -> String {
        format!("http://{}/v1/metrics", self.address)
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Switches how the receiver answers from now on: "ok", "503", "429", "500", "400",
    /// "close", "hang", optionally with " retry-after=N" (503 and 429). Releasing a `hang`
    /// answers the held requests as the new mode says.
    pub fn set_mode(&self, mode: &str) {
        let (status, body) = self.control("POST", "/control/mode", mode);
        assert_eq!(status, 200, "set_mode({mode:?}): {body}");
    }

    /// How many metrics requests it answered 200 (its own count).
    pub fn accepted_count(&self) -> u64 {
        self.control_number("/control/count")
    }

    /// How many requests `hang` holds now.
    pub fn held(&self) -> u64 {
        self.control_number("/control/held")
    }

    /// Every recorded request so far, in the order they finished (`seq` is the order they
    /// arrived). Complete lines only.
    pub fn requests(&self) -> Vec<Value> {
        let text = match std::fs::read_to_string(&self.out) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => panic!("reading {}: {e}", self.out.display()),
        };
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete
            .lines()
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|e| {
                    panic!(
                        "receiver record: {e}: {}",
                        line.chars().take(500).collect::<String>()
                    )
                })
            })
            .collect()
    }

    /// The requests it accepted (status 200).
    pub fn accepted(&self) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| r["status"] == 200)
            .collect()
    }

    /// Every data point of the accepted requests, in the order the requests finished.
    pub fn accepted_points(&self) -> Vec<Value> {
        self.accepted()
            .into_iter()
            .flat_map(|mut r| match r["points"].take() {
                Value::Array(points) => points,
                _ => Vec::new(),
            })
            .collect()
    }

    /// Polls the records until `found` returns something. Fails after [`WAIT_LIMIT`].
    pub fn wait_for<T>(&self, what: &str, found: impl FnMut(&[Value]) -> Option<T>) -> T {
        self.wait_for_within(WAIT_LIMIT, what, found)
    }

    /// [`OtlpReceiver::wait_for`] with a limit of the caller's.
    pub fn wait_for_within<T>(
        &self,
        limit: Duration,
        what: &str,
        mut found: impl FnMut(&[Value]) -> Option<T>,
    ) -> T {
        super::agent::poll_until(
            limit,
            Duration::from_millis(100),
            what,
            || found(&self.requests()),
            || {
                format!(
                    "the receiver recorded {} requests; its log:\n{}",
                    self.requests().len(),
                    self.log()
                )
            },
        )
    }

    /// Its stderr (one line per request with `--verbose`, which the harness passes).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// (status, body) of a control request.
    fn control(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let result = http_exchange(self.address, method, path, body);
        result.unwrap_or_else(|e| {
            panic!(
                "{method} {path} to the receiver: {e}; its log:\n{}",
                self.log()
            )
        })
    }

    fn control_number(&self, path: &str) -> u64 {
        let (status, body) = self.control("GET", path, "");
        assert_eq!(status, 200, "GET {path}: {body}");
        body.trim()
            .parse()
            .unwrap_or_else(|e| panic!("GET {path}: {body:?}: {e}"))
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads the child's stdout until `LISTENING <port>`; drains the rest on the same thread.
fn listening_port(child: &mut Child, log: &Path) -> u16 {
    let stdout = child.stdout.take().expect("stdout piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let _ = tx.send(lines.next());
        for _ in lines {}
    });
    let line = match rx.recv_timeout(START_LIMIT) {
        Ok(Some(Ok(line))) => line,
        Ok(_) | Err(mpsc::RecvTimeoutError::Disconnected) => {
            let _ = child.kill();
            let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("the OTLP receiver exited ({status}) before listening:\n{log}");
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            let _ = child.kill();
            panic!("the OTLP receiver did not print LISTENING within {START_LIMIT:?}");
        }
    };
    line.strip_prefix("LISTENING ")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("the OTLP receiver's first line: {line:?}"))
}

/// One HTTP/1.1 request on its own connection: (status, body).
fn http_exchange(
    address: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let mut conn = TcpStream::connect_timeout(&address, CONTROL_LIMIT)?;
    conn.set_read_timeout(Some(CONTROL_LIMIT))?;
    conn.set_write_timeout(Some(CONTROL_LIMIT))?;
    write!(
        conn,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = String::new();
    conn.take(1 << 20).read_to_string(&mut answer)?;
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line in {answer:?}")))?;
    let body = answer
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((status, body))
}
