//! The front door against hostile or careless clients, through the built binary: idle
//! connections are closed, a cap refuses what is past it, SIGTERM drains requests in flight (a
//! streamed answer included) before it cuts what is left, and requests whose meaning a copy
//! could misread are answered by the front door itself.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "test code: a failed step stops it with its message (Cargo.toml [lints] is for the agent)"
)]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::agent::{Agent, Workdir};
use common::copies::streaming_copy;

/// Within this a closed connection must read as closed.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);

/// A copy that answers every request with the request head it received, as its body.
fn echo_copy() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut conn = conn;
                let mut buf = [0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&seen).to_string();
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{head}",
                    head.len()
                );
                let _ = conn.write_all(answer.as_bytes());
            });
        }
    });
    addr
}

/// Sends `request` on a new connection; the status code and the whole answer.
fn exchange(front_door: SocketAddr, request: &str) -> (u16, String) {
    let mut c = TcpStream::connect(front_door).unwrap();
    c.write_all(request.as_bytes()).unwrap();
    c.set_read_timeout(Some(CLOSE_WITHIN)).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = c.read(&mut buf) {
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&seen);
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end].lines().find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(|v| v.trim().parse::<usize>().unwrap())
            });
            if length.is_some_and(|n| seen.len() >= end + 4 + n) {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&seen).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

fn start(dir: &Workdir, proxy: &str, copy: SocketAddr) -> (Agent, SocketAddr) {
    let config = format!(
        "[endpoint]\nname = \"limits\"\ninstance_id = \"i-limits\"\n\
         [output]\nemf_destination = \"{}\"\n\
         [gpu]\nenabled = false\n[docker]\nenabled = false\n[admin]\nenabled = false\n\
         [proxy]\nenabled = true\nlisten = \"127.0.0.1:0\"\n{proxy}\
         [[proxy.upstream]]\ncomponent = \"model\"\nurl = \"http://{copy}\"\n",
        dir.emf_destination()
    );
    let mut agent = Agent::start(dir, &config);
    let addr = agent.front_door_address();
    (agent, addr)
}

/// Whether the peer closed the connection within [`CLOSE_WITHIN`] (reading whatever it sends).
fn closed_by_peer(conn: &mut TcpStream) -> bool {
    conn.set_read_timeout(Some(CLOSE_WITHIN)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// Sends a request for the streaming copy and reads the response head and first chunk.
fn stream_request(front_door: SocketAddr) -> TcpStream {
    let mut c = TcpStream::connect(front_door).unwrap();
    c.write_all(b"GET /invocations HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    c.set_read_timeout(Some(CLOSE_WITHIN)).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("data: token 0") {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "closed before the first chunk");
        seen.extend_from_slice(&buf[..n]);
    }
    c
}

/// Everything left of a chunked response until the peer closes or the timeout.
fn rest_of(c: &mut TcpStream, timeout: Duration) -> String {
    c.set_read_timeout(Some(timeout)).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
        if seen.ends_with(b"0\r\n\r\n") {
            break;
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[test]
fn silent_and_idle_h2_connections_are_closed_after_the_idle_timeout() {
    let dir = Workdir::new();
    let (agent, front_door) = start(
        &dir,
        "idle_timeout_ms = 300\n",
        streaming_copy(1, Duration::ZERO),
    );
    // A TCP connection that never sends a byte.
    let mut silent = TcpStream::connect(front_door).unwrap();
    // An h2c connection: the preface and an empty SETTINGS frame, then nothing.
    let mut h2 = TcpStream::connect(front_door).unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    assert!(
        closed_by_peer(&mut silent),
        "a silent connection stays open"
    );
    assert!(closed_by_peer(&mut h2), "an idle h2 connection stays open");
    let stopped = agent.stop().success();
    assert_eq!(
        stopped.logs.final_counter("proxy_connections_idle_closed"),
        2
    );
}

#[test]
fn past_max_connections_a_new_connection_is_closed_at_once_and_counted() {
    let dir = Workdir::new();
    let proxy = "max_connections = 4\nidle_timeout_ms = 60000\n";
    let (agent, front_door) = start(&dir, proxy, streaming_copy(1, Duration::ZERO));
    let mut held: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(front_door).unwrap())
        .collect();
    // Let the front door accept the four before the fifth.
    thread::sleep(Duration::from_millis(300));
    let mut fifth = TcpStream::connect(front_door).unwrap();
    let started = Instant::now();
    assert!(closed_by_peer(&mut fifth), "the fifth connection is served");
    assert!(started.elapsed() < CLOSE_WITHIN);
    // A slot freed is a slot to use: a request on a new connection is answered.
    held.pop();
    thread::sleep(Duration::from_millis(300));
    // (stream_request fails unless the first chunk comes back.)
    let _answered = stream_request(front_door);
    let stopped = agent.stop().success();
    assert_eq!(stopped.logs.final_counter("proxy_connections_refused"), 1);
    drop(held);
}

#[test]
fn sigterm_lets_a_streamed_answer_finish_then_exits() {
    let dir = Workdir::new();
    // Six chunks over three seconds; SIGTERM after the first.
    let copy = streaming_copy(6, Duration::from_millis(500));
    let (agent, front_door) = start(&dir, "drain_timeout_ms = 10000\n", copy);
    let mut c = stream_request(front_door);
    agent.signal(libc::SIGTERM);
    let rest = rest_of(&mut c, Duration::from_secs(10));
    for i in 1..6 {
        assert!(
            rest.contains(&format!("data: token {i}")),
            "chunk {i} missing: {rest:?}"
        );
    }
    assert!(
        rest.ends_with("0\r\n\r\n"),
        "the stream ends properly: {rest:?}"
    );
    // A new client is not taken any more.
    assert!(
        TcpStream::connect(front_door).is_err()
            || closed_by_peer(&mut TcpStream::connect(front_door).unwrap())
    );
    let stopped = agent.wait_exit().success();
    assert!(
        stopped.took < Duration::from_secs(3 + 5),
        "{:?}",
        stopped.took
    );
    assert_eq!(stopped.logs.final_counter("proxy_requests_cut"), 0);
}

#[test]
fn a_stream_longer_than_the_drain_is_cut_counted_and_the_agent_exits() {
    let dir = Workdir::new();
    // A minute of chunks against a one-second drain.
    let copy = streaming_copy(120, Duration::from_millis(500));
    let (agent, front_door) = start(&dir, "drain_timeout_ms = 1000\n", copy);
    let mut c = stream_request(front_door);
    agent.signal(libc::SIGTERM);
    let stopped = agent.wait_exit().success();
    assert!(
        stopped.took < Duration::from_secs(1 + 5),
        "drain 1 s + the 5 s promise: {:?}",
        stopped.took
    );
    assert_eq!(stopped.logs.final_counter("proxy_requests_cut"), 1);
    let rest = rest_of(&mut c, CLOSE_WITHIN);
    assert!(!rest.ends_with("0\r\n\r\n"), "cut, not ended: {rest:?}");
}

#[test]
fn requests_a_copy_could_misread_are_answered_by_the_front_door() {
    let dir = Workdir::new();
    let (agent, front_door) = start(&dir, "", echo_copy());
    // Two Host headers: 400, the copy never asked.
    let (status, text) = exchange(
        front_door,
        "GET /ping HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 400, "{text}");
    assert!(!text.contains("GET /ping"), "not forwarded: {text}");
    // CONNECT: 405, never forwarded as `CONNECT /`.
    let (status, text) = exchange(
        front_door,
        "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    );
    assert_eq!(status, 405, "{text}");
    assert!(!text.contains("CONNECT /"), "{text}");
    // `Connection: host` may not strip the Host header on the way to the copy.
    let (status, text) = exchange(
        front_door,
        "GET /ping HTTP/1.1\r\nHost: model.example\r\nConnection: host, close\r\n\r\n",
    );
    assert_eq!(status, 200, "{text}");
    let forwarded = &text[text.find("\r\n\r\n").unwrap() + 4..];
    assert!(forwarded.starts_with("GET /ping HTTP/1.1"), "{forwarded}");
    assert!(
        forwarded
            .to_ascii_lowercase()
            .contains("host: model.example"),
        "the copy got its Host: {forwarded}"
    );
    let stopped = agent.stop().success();
    assert_eq!(stopped.logs.final_counter("proxy_bad_requests"), 2);
}
