//! One shutdown deadline: SIGTERM to exit within the README's 5 s while the front door has
//! requests in flight to a copy that never answers and the sink's CloudWatch endpoint accepts
//! connections but never answers either.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The README's promise.
const EXIT_WITHIN: Duration = Duration::from_secs(5);

/// Accepts connections and reads from them, never answering, until the test ends.
fn black_hole() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut conn = conn;
                let mut buf = [0u8; 4096];
                while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

fn front_door_addr(log: &std::path::Path) -> std::net::SocketAddr {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("front door listening")) {
            let at = line.find("address=").expect("address field") + "address=".len();
            let addr = line[at..].split_whitespace().next().unwrap();
            return addr.trim_matches('"').parse().unwrap();
        }
        thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "no front door in the log: {}",
        std::fs::read_to_string(log).unwrap()
    );
}

#[test]
fn sigterm_exits_within_five_seconds_with_the_front_door_busy_and_the_sink_stuck() {
    let dir = tempfile::tempdir().unwrap();
    let (copy, cloudwatch) = (black_hole(), black_hole());
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[endpoint]\nname = \"stop\"\ninstance_id = \"i-stop\"\n\
             [metrics]\npublish_frequency_seconds = 10\n\
             [output]\nformat = \"put_metric_data\"\nspool_dir = \"{}\"\n\
             [gpu]\nenabled = false\n[docker]\nenabled = false\n[admin]\nenabled = false\n\
             [proxy]\nenabled = true\nlisten = \"127.0.0.1:0\"\n\
             [[proxy.upstream]]\ncomponent = \"model\"\nurl = \"http://{copy}\"\n",
            dir.path().join("spool").display()
        ),
    )
    .unwrap();
    let log = dir.path().join("agent.log");
    let mut agent = Command::new(env!("CARGO_BIN_EXE_endpoint-metrics-agent"))
        .args(["run", "--config"])
        .arg(&config)
        .env("AWS_ENDPOINT_URL", format!("http://{cloudwatch}"))
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let front_door = front_door_addr(&log);
    // Requests the copy never answers: in flight when SIGTERM comes.
    let clients: Vec<TcpStream> = (0..16)
        .map(|i| {
            let mut c = TcpStream::connect(front_door).unwrap();
            write!(
                c,
                "POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n{i}"
            )
            .unwrap();
            c
        })
        .collect();
    // A window of samples to publish, and time for every request to reach the copy.
    thread::sleep(Duration::from_secs(3));
    let sent = Instant::now();
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let status = loop {
        if let Some(status) = agent.try_wait().unwrap() {
            break status;
        }
        if sent.elapsed() > 3 * EXIT_WITHIN {
            agent.kill().unwrap();
            panic!("still running 15 s after SIGTERM");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let took = sent.elapsed();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{status}\n{text}");
    assert!(
        took < EXIT_WITHIN,
        "SIGTERM to exit took {took:?}, over the README's 5 s\n{text}"
    );
    let spooled = std::fs::read_dir(dir.path().join("spool"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".json"))
        })
        .count();
    assert!(
        spooled >= 1,
        "the window CloudWatch never took is kept for the next start\n{text}"
    );
    drop(clients);
}
