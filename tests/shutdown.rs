//! One shutdown deadline: SIGTERM to exit within the README's 5 s after the front door's drain,
//! while the front door has requests in flight to a copy that never answers and the sink's
//! CloudWatch endpoint accepts connections but never answers either.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "test code: a failed step stops it with its message (Cargo.toml [lints] is for the agent)"
)]

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use common::agent::{Agent, Workdir};

/// The README's promise, after the drain.
const EXIT_WITHIN: Duration = Duration::from_secs(5);

/// `[proxy] drain_timeout_ms` here: the requests never finish, so the drain runs out.
const DRAIN: Duration = Duration::from_secs(1);

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

#[test]
fn sigterm_exits_within_five_seconds_of_the_drain_with_the_front_door_busy_and_the_sink_stuck() {
    let dir = Workdir::new();
    let (copy, cloudwatch) = (black_hole(), black_hole());
    let config = format!(
        "[endpoint]\nname = \"stop\"\ninstance_id = \"i-stop\"\n\
         [metrics]\npublish_frequency_seconds = 10\n\
         [output]\nformat = \"put_metric_data\"\nspool_dir = \"{}\"\n\
         [gpu]\nenabled = false\n[docker]\nenabled = false\n[admin]\nenabled = false\n\
         [proxy]\nenabled = true\nlisten = \"127.0.0.1:0\"\ndrain_timeout_ms = {}\n\
         [[proxy.upstream]]\ncomponent = \"model\"\nurl = \"http://{copy}\"\n",
        dir.join("spool").display(),
        DRAIN.as_millis()
    );
    let mut agent = Agent::launch(&dir, &config)
        .env("AWS_ENDPOINT_URL", format!("http://{cloudwatch}"))
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .start();
    let front_door = agent.front_door_address();
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
    let stopped = agent.stop().success();
    let text = stopped.logs.text();
    assert!(
        stopped.took < DRAIN + EXIT_WITHIN,
        "SIGTERM to exit took {:?}, over the drain and the README's 5 s\n{text}",
        stopped.took
    );
    assert_eq!(
        stopped.logs.final_counter("proxy_requests_cut"),
        16,
        "{text}"
    );
    let spooled = std::fs::read_dir(dir.join("spool"))
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
