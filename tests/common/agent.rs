//! The one harness every integration test starts the built agent through: a config text written
//! into a temporary folder, the process started with stdout and stderr captured, stopped with
//! SIGTERM and a bounded wait, and what it left behind read back: its EMF documents (stdout or
//! the EMF file), its logs (text or JSON lines), its exit status and its counters (the "stopped"
//! line's snapshot, or the admin endpoint's /metrics).
//!
//! Where a test looks for a log event it goes through [`Logs`], so a change in how the agent
//! words or shapes its log lines is met here, in one place.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// The binary under test. `EMA_AGENT_BIN` names another one (a test binary copied to a machine
/// other than the one it was built on).
pub fn binary() -> PathBuf {
    std::env::var_os("EMA_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_endpoint-metrics-agent")))
}

/// How long a stopped agent may take to exit before the test fails: a guard against a hang, far
/// above the README's 5 s (the tests that check that promise measure it themselves).
pub const STOP_LIMIT: Duration = Duration::from_secs(30);

/// Safety net for polling waits on the agent's output: several 10 s publish windows on a
/// loaded, shared machine. Not an assertion about speed.
pub const WAIT_LIMIT: Duration = Duration::from_secs(90);

/// A temporary folder for one test's agent runs: the config file, the EMF file, the spool, any
/// fixture tree. Clones share the folder; it is removed when the last one goes.
#[derive(Clone)]
pub struct Workdir(Arc<tempfile::TempDir>);

impl Default for Workdir {
    fn default() -> Self {
        Workdir::new()
    }
}

impl Workdir {
    pub fn new() -> Workdir {
        Workdir(Arc::new(tempfile::tempdir().expect("a temporary folder")))
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path().join(name)
    }

    /// Writes `text` to `name` in the folder; its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    }

    /// Where a config's `emf_destination = "file:..."` should point for [`Agent::documents`].
    pub fn emf_file(&self) -> PathBuf {
        self.join("emf.jsonl")
    }

    /// `emf_destination` for the EMF file: `file:<folder>/emf.jsonl`.
    pub fn emf_destination(&self) -> String {
        format!("file:{}", self.emf_file().display())
    }

    /// The config file every run in this folder uses.
    pub fn config_file(&self) -> PathBuf {
        self.join("agent.toml")
    }
}

/// An agent about to start: its folder, its config text and its environment.
pub struct Launch {
    dir: Workdir,
    config: String,
    args: Vec<OsString>,
    env: Vec<(OsString, Option<OsString>)>,
    /// RLIMIT_NOFILE (soft and hard) of the agent's process, as a unit's `LimitNOFILE=` sets it.
    file_limit: Option<u64>,
}

impl Launch {
    /// Sets a variable in the agent's environment.
    pub fn env(mut self, key: &str, value: impl Into<OsString>) -> Launch {
        self.env.push((key.into(), Some(value.into())));
        self
    }

    /// Runs the agent under this file limit (soft and hard), as `prlimit --nofile=N:N` would.
    pub fn file_limit(mut self, n: u64) -> Launch {
        self.file_limit = Some(n);
        self
    }

    /// Leaves a variable out of the agent's environment.
    pub fn env_remove(mut self, key: &str) -> Launch {
        self.env.push((key.into(), None));
        self
    }

    /// Writes the config and starts `run --config <file>`.
    pub fn start(self) -> Agent {
        let config = self.dir.write("agent.toml", &self.config);
        let mut command = Command::new(binary());
        command
            .arg("run")
            .arg("--config")
            .arg(&config)
            .args(&self.args)
            // The test says what it wants: no level from the caller's shell, no systemd.
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in &self.env {
            match value {
                Some(v) => command.env(key, v),
                None => command.env_remove(key),
            };
        }
        if let Some(n) = self.file_limit {
            use std::os::unix::process::CommandExt as _;
            // SAFETY: setrlimit is async-signal-safe; the closure touches nothing else.
            unsafe {
                command.pre_exec(move || {
                    let limit = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary().display()));
        let stdout = Captured::default();
        let stderr = Captured::default();
        let readers = vec![
            stdout.read_from(child.stdout.take().expect("stdout piped")),
            stderr.read_from(child.stderr.take().expect("stderr piped")),
        ];
        Agent {
            child,
            dir: self.dir,
            config,
            stdout,
            stderr,
            readers,
        }
    }
}

/// Lines a child wrote on one of its pipes, read as they come by a thread of the harness.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<String>>>);

impl Captured {
    fn read_from(&self, pipe: impl Read + Send + 'static) -> JoinHandle<()> {
        let lines = self.0.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                lines.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        })
    }

    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The built agent running as a child process; killed however the test ends.
pub struct Agent {
    child: Child,
    dir: Workdir,
    config: PathBuf,
    stdout: Captured,
    stderr: Captured,
    readers: Vec<JoinHandle<()>>,
}

/// How a stopped agent ended, and what it said.
pub struct Stopped {
    pub status: ExitStatus,
    /// From the signal to the exit.
    pub took: Duration,
    pub logs: Logs,
    /// Its stdout (EMF with `emf_destination = "stdout"`).
    pub stdout: String,
    /// The folder it ran in.
    pub dir: Workdir,
}

impl Stopped {
    /// The exit code (None when a signal ended it).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Asserts a clean exit (status 0) and returns itself.
    pub fn success(self) -> Stopped {
        assert!(
            self.status.success(),
            "agent exited with {}:\n{}",
            self.status,
            self.logs.text()
        );
        self
    }

    /// Every EMF document in the folder's EMF file.
    pub fn documents(&self) -> Vec<Value> {
        documents_in(&self.dir.emf_file())
    }

    /// The EMF documents it wrote on stdout.
    pub fn stdout_documents(&self) -> Vec<Value> {
        parse_documents(&self.stdout)
    }
}

impl Agent {
    /// An agent in `dir` with `config` as its file, to start after setting its environment.
    pub fn launch(dir: &Workdir, config: &str) -> Launch {
        Launch {
            dir: dir.clone(),
            config: config.to_string(),
            args: Vec::new(),
            env: Vec::new(),
            file_limit: None,
        }
    }

    /// Starts the agent in `dir` with `config` as its file.
    pub fn start(dir: &Workdir, config: &str) -> Agent {
        Agent::launch(dir, config).start()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn dir(&self) -> &Workdir {
        &self.dir
    }

    pub fn config_file(&self) -> &Path {
        &self.config
    }

    /// Sends `signal` to the agent.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on the PID of the child this harness started and has not reaped.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill({signal}) failed");
    }

    /// Whether it has exited (without waiting).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait on the agent")
    }

    /// The log lines it wrote so far (stderr).
    pub fn logs(&self) -> Logs {
        Logs(self.stderr.lines())
    }

    /// Its stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.lines().join("\n")
    }

    /// Every EMF document in the folder's EMF file so far (complete lines only: the agent may
    /// be writing the last one).
    pub fn documents(&self) -> Vec<Value> {
        documents_in(&self.dir.emf_file())
    }

    /// Polls the logs until a line matches `pick`; that line. Fails after [`WAIT_LIMIT`], or at
    /// once if the agent exits.
    pub fn wait_for_log(&mut self, what: &str, pick: impl Fn(&LogLine) -> bool) -> String {
        let deadline = Instant::now() + WAIT_LIMIT;
        loop {
            if let Some(line) = self.logs().lines().find(|l| pick(l)) {
                return line.text().to_string();
            }
            if let Some(status) = self.exited() {
                panic!(
                    "waiting for {what}: the agent exited with {status}:\n{}",
                    self.logs().text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no log line: {what}; stderr:\n{}",
                self.logs().text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls the logs until a line's message contains `needle`.
    pub fn wait_for_message(&mut self, needle: &str) -> String {
        self.wait_for_log(needle, |l| l.message().contains(needle))
    }

    /// The address the front door bound (`listen = "127.0.0.1:0"` picks a free port), from the
    /// `address` field of its "front door listening" line; waits for that line.
    pub fn front_door_address(&mut self) -> std::net::SocketAddr {
        let line = self.wait_for_message("front door listening");
        let address = self
            .logs()
            .lines()
            .find(|l| l.text() == line)
            .and_then(|l| l.field("address"))
            .unwrap_or_else(|| panic!("no address in {line}"));
        address
            .parse()
            .unwrap_or_else(|e| panic!("front door address {address:?}: {e}"))
    }

    /// Polls the EMF file until `found` returns something. Fails after [`WAIT_LIMIT`].
    pub fn wait_for<T>(&self, what: &str, found: impl FnMut(&[Value]) -> Option<T>) -> T {
        self.wait_for_within(WAIT_LIMIT, what, found)
    }

    /// [`Agent::wait_for`] with a limit of the caller's.
    pub fn wait_for_within<T>(
        &self,
        limit: Duration,
        what: &str,
        mut found: impl FnMut(&[Value]) -> Option<T>,
    ) -> T {
        poll_until(
            limit,
            Duration::from_millis(200),
            what,
            || found(&self.documents()),
            || format!("stderr:\n{}", self.logs().text()),
        )
    }

    /// Polls the EMF file until a document matches `pick`; that document.
    pub fn wait_for_document(&self, what: &str, pick: impl Fn(&Value) -> bool) -> Value {
        self.wait_for(what, |docs| docs.iter().find(|d| pick(d)).cloned())
    }

    /// SIGTERM, then [`Agent::wait_exit`].
    pub fn stop(self) -> Stopped {
        self.signal(libc::SIGTERM);
        self.wait_exit()
    }

    /// Waits (at most [`STOP_LIMIT`]) for the exit a signal asked for; its status, how long
    /// it took, and everything it wrote.
    pub fn wait_exit(mut self) -> Stopped {
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.exited() {
                break status;
            }
            assert!(
                start.elapsed() < STOP_LIMIT,
                "the agent did not exit within {STOP_LIMIT:?}:\n{}",
                self.logs().text()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let took = start.elapsed();
        // The pipes close at exit: the readers have everything once they end.
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        Stopped {
            status,
            took,
            logs: self.logs(),
            stdout: self.stdout(),
            dir: self.dir.clone(),
        }
    }

    /// SIGKILL: no flush, no final line (a crash).
    pub fn kill9(mut self) {
        self.child.kill().expect("SIGKILL the agent");
        self.child.wait().expect("reap the agent");
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Calls `attempt` every `every` until it returns something; fails after `limit`, saying `what`
/// it waited for and `context()` (logs, records).
pub fn poll_until<T>(
    limit: Duration,
    every: Duration,
    what: &str,
    mut attempt: impl FnMut() -> Option<T>,
    context: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(t) = attempt() {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "gave up waiting for {what}; {}",
            context()
        );
        std::thread::sleep(every);
    }
}

/// Runs a one-shot subcommand (`check-config`, `plan`, `cost`, `--version`, ...) to its exit:
/// (exit code, stdout, stderr).
pub fn run_to_exit(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(binary())
        .args(args)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("RUST_LOG")
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", binary().display()));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `subcommand --config <file>` with `config` written to a temporary file; its stdout,
/// once it has exited 0.
pub fn one_shot(subcommand: &str, config: &str) -> String {
    let dir = Workdir::new();
    let path = dir.write("agent.toml", config);
    let (code, stdout, stderr) = run_to_exit(&[subcommand, "--config", path.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{subcommand}: {stderr}");
    stdout
}

// ---------------------------------------------------------------------------------------------
// Logs

/// The agent's log lines (stderr), text or JSON (`[log] format = "json"`).
#[derive(Clone, Debug, Default)]
pub struct Logs(Vec<String>);

/// One log line, parsed when it is JSON.
pub struct LogLine<'a> {
    text: &'a str,
    json: Option<Value>,
}

impl<'a> LogLine<'a> {
    fn new(text: &'a str) -> LogLine<'a> {
        let json = text
            .starts_with('{')
            .then(|| serde_json::from_str(text).ok())
            .flatten();
        LogLine { text, json }
    }

    pub fn text(&self) -> &'a str {
        self.text
    }

    /// The line as JSON (panics on a text line).
    pub fn json(&self) -> &Value {
        self.json
            .as_ref()
            .unwrap_or_else(|| panic!("not a JSON log line: {}", self.text))
    }

    /// "ERROR", "WARN", "INFO", "DEBUG" or "TRACE".
    pub fn level(&self) -> &str {
        match &self.json {
            Some(j) => j["level"].as_str().unwrap_or(""),
            None => ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"]
                .into_iter()
                .find(|l| self.text.split_whitespace().nth(1) == Some(*l))
                .unwrap_or(""),
        }
    }

    /// The message (JSON); for a text line, the whole line (the message and its fields).
    pub fn message(&self) -> &str {
        match &self.json {
            Some(j) => j["message"].as_str().unwrap_or(""),
            None => self.text,
        }
    }

    /// A field's value as text: a JSON member, or `key=value` in a text line (quotes removed).
    pub fn field(&self, key: &str) -> Option<String> {
        if let Some(j) = &self.json {
            return j.get(key).map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            });
        }
        let at = self
            .text
            .match_indices(&format!("{key}="))
            .find(|(i, _)| *i == 0 || self.text.as_bytes()[i - 1] == b' ')?
            .0
            + key.len()
            + 1;
        let rest = &self.text[at..];
        Some(match rest.strip_prefix('"') {
            Some(quoted) => quoted.split('"').next().unwrap_or("").to_string(),
            None => rest.split_whitespace().next().unwrap_or("").to_string(),
        })
    }

    /// A warning the agent counted under `counter` (its `counter` field names it).
    pub fn is_counted_warning(&self, counter: &str) -> bool {
        self.level() == "WARN" && self.field("counter").as_deref() == Some(counter)
    }
}

impl Logs {
    pub fn lines(&self) -> impl Iterator<Item = LogLine<'_>> {
        self.0.iter().map(|l| LogLine::new(l))
    }

    /// Every line, as the agent wrote them.
    pub fn text(&self) -> String {
        self.0.join("\n")
    }

    /// How many lines' message contains `needle`.
    pub fn count_messages(&self, needle: &str) -> usize {
        self.lines()
            .filter(|l| l.message().contains(needle))
            .count()
    }

    /// The first line whose message contains `needle`.
    pub fn find_message(&self, needle: &str) -> Option<String> {
        self.lines()
            .find(|l| l.message().contains(needle))
            .map(|l| l.text().to_string())
    }

    /// The warnings counted under `counter`, one per logged event.
    pub fn counted_warnings(&self, counter: &str) -> Vec<String> {
        self.lines()
            .filter(|l| l.is_counted_warning(counter))
            .map(|l| l.text().to_string())
            .collect()
    }

    /// Every counter from the "stopped" line the agent writes last (after its final flush).
    pub fn final_counters(&self) -> BTreeMap<String, u64> {
        self.lines()
            .filter(|l| l.field("counters").is_some() && l.message().contains("stopped"))
            .last()
            .unwrap_or_else(|| panic!("no \"stopped\" line with counters:\n{}", self.text()))
            .field_list("counters")
    }

    /// One counter from the "stopped" line.
    pub fn final_counter(&self, name: &str) -> u64 {
        *self
            .final_counters()
            .get(name)
            .unwrap_or_else(|| panic!("no counter {name} in the stopped line:\n{}", self.text()))
    }
}

impl LogLine<'_> {
    /// A `[("name", n), ...]` field (a Rust debug list, in text or as a JSON string).
    fn field_list(&self, key: &str) -> BTreeMap<String, u64> {
        let text = match &self.json {
            Some(j) => j[key].as_str().unwrap_or("").to_string(),
            None => {
                let at = self.text.find(&format!("{key}=")).unwrap_or(0);
                self.text[at..].to_string()
            }
        };
        text.split("(\"")
            .skip(1)
            .filter_map(|pair| {
                let (name, rest) = pair.split_once("\", ")?;
                let n = rest.split(')').next()?.trim().parse().ok()?;
                Some((name.to_string(), n))
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// EMF documents

/// Parses EMF lines; a line that is not JSON fails the test.
pub fn parse_documents(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// The complete documents of an EMF file so far (a missing file has none; a last line without
/// its newline may still be being written and is left for the next read).
pub fn documents_in(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = match text.rfind('\n') {
        Some(end) => &text[..=end],
        None => "",
    };
    parse_documents(complete)
}

/// A document's namespace (its first directive's).
pub fn namespace(doc: &Value) -> &str {
    doc["_aws"]["CloudWatchMetrics"][0]["Namespace"]
        .as_str()
        .unwrap_or_default()
}

/// A document's window start, in ms.
pub fn timestamp_ms(doc: &Value) -> u64 {
    doc["_aws"]["Timestamp"].as_u64().unwrap_or(0)
}

/// A metric member's values: an array, or a single number.
pub fn values(doc: &Value, metric: &str) -> Vec<f64> {
    match &doc[metric] {
        Value::Array(a) => a.iter().filter_map(Value::as_f64).collect(),
        v => v.as_f64().into_iter().collect(),
    }
}

// ---------------------------------------------------------------------------------------------
// The admin endpoint and other small things

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_millis() as u64
}

/// A loopback port nothing listens on now (bound, then closed).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// One HTTP exchange on loopback: sends `request` as is; (status, head and body text).
pub fn http(port: u16, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(WAIT_LIMIT)).unwrap();
    stream.write_all(request).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    (status, response)
}

/// `GET path` on loopback with `Connection: close`.
pub fn get(port: u16, path: &str) -> (u16, String) {
    http(
        port,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

/// An HTTP response's body.
pub fn body(response: &str) -> &str {
    response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_else(|| panic!("no body in {response:?}"))
}

/// The value of one Prometheus sample line (`name value` or `name{labels} value`).
pub fn prometheus_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

/// One series of the admin endpoint's /metrics on `port`, read now.
pub fn admin_metric(port: u16, series: &str) -> f64 {
    let (status, response) = get(port, "/metrics");
    assert_eq!(status, 200, "{response}");
    prometheus_value(body(&response), series)
}
