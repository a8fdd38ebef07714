//! The front door against hostile or careless clients, through the built binary: idle
//! connections are closed, a cap refuses what is past it, SIGTERM drains requests in flight (a
//! streamed answer included) before it cuts what is left (requests whose meaning a copy could
//! misread: `tests/hostile.rs`), and a client that stops reading its answer is cut. And against
//! careless or hostile copies:
//! what a copy sends is framed exactly or refused (502), an early answer is relayed without the
//! rest of the upload, and a copy closing idle connections unannounced costs no request.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "test code: a failed step stops it with its message (Cargo.toml [lints] is for the agent)"
)]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::agent::{Agent, Workdir};
use common::copies::{exchange, scripted_copy, streaming_copy, After};

/// Within this a closed connection must read as closed.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);

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

/// The send deadline: a client that takes none of a flood for `send_timeout_ms` is cut, and the
/// copy's connection with it (the copy's blocked write fails), over HTTP/1.1 and h2c; a copy
/// that pauses three times that long mid-stream, to a client that reads, is not (its answer
/// waits for the copy).
#[test]
fn a_client_that_stops_reading_is_cut_and_a_copy_that_pauses_is_not() {
    const SEND_TIMEOUT: Duration = Duration::from_millis(500);
    let (copy_cut, cut) = std::sync::mpsc::channel::<Duration>();
    let copy_cut = std::sync::Mutex::new(copy_cut);
    let (copy, _) = scripted_copy(move |head, _, conn| {
        let _ = conn.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        if head.starts_with("GET /flood ") {
            // 64 KiB chunks until the front door closes the connection.
            let chunk = [b'x'; 64 * 1024];
            let started = Instant::now();
            loop {
                let wrote = write!(conn, "{:x}\r\n", chunk.len())
                    .and_then(|()| conn.write_all(&chunk))
                    .and_then(|()| conn.write_all(b"\r\n"));
                if wrote.is_err() {
                    let _ = copy_cut.lock().unwrap().send(started.elapsed());
                    return After::Close;
                }
            }
        }
        let _ = conn.write_all(b"9\r\ndata: a\n\n\r\n");
        thread::sleep(3 * SEND_TIMEOUT);
        let _ = conn.write_all(b"9\r\ndata: b\n\n\r\n0\r\n\r\n");
        After::Close
    });
    let dir = Workdir::new();
    let (agent, front_door) = start(&dir, "send_timeout_ms = 500\n", copy);
    // The copy's flood is cut off, no sooner than the send timeout.
    let flood_cut = |client: &str| {
        let took = cut
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                panic!("the copy's connection stays open behind {client} that does not read")
            });
        assert!(took >= SEND_TIMEOUT, "{client}: cut after {took:?}");
    };

    // Asks for the flood and never reads.
    let mut stalled = TcpStream::connect(front_door).unwrap();
    stalled
        .write_all(b"GET /flood HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    flood_cut("an HTTP/1.1 client");

    // The same over h2c: the client takes the head and leaves the body unread, its stream's
    // flow-control window fills, and the connection is cut.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let h2c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let unread = runtime
        .block_on(h2c.get(format!("http://{front_door}/flood").parse().unwrap()))
        .unwrap();
    assert_eq!(unread.status(), 200);
    flood_cut("an h2c client");
    drop((unread, h2c, runtime));

    // Reads everything, across the copy's pause.
    let mut reader = TcpStream::connect(front_door).unwrap();
    reader
        .write_all(b"GET /pause HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let answer = rest_of(&mut reader, Duration::from_secs(10));
    assert_eq!(body_of(&answer), "data: a\n\ndata: b\n\n", "{answer:?}");

    let stopped = agent.stop().success();
    assert_eq!(stopped.logs.final_counter("proxy_client_not_reading"), 2);
    assert_eq!(stopped.logs.final_counter("proxy_client_left"), 0);
    drop(stalled);
}

/// The body of an answer as the client got it (after the head; a chunked body decoded).
fn body_of(answer: &str) -> String {
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((answer, ""));
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return body.to_string();
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        out.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
    out
}

#[test]
fn what_a_copy_sends_is_framed_exactly_or_refused() {
    let (copy, accepted) = scripted_copy(|head, _, conn| {
        let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
        let huge = format!(
            "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 2\r\n\r\nok",
            "a".repeat(70 * 1024)
        );
        // The 16 informational answers skipped, and one past them, before a final one.
        let continues = |n| {
            format!(
                "{}HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                "HTTP/1.1 100 Continue\r\n\r\n".repeat(n)
            )
        };
        let (sixteen, seventeen) = (continues(16), continues(17));
        let answer: &[u8] = match path.as_str() {
            "/chunked" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n",
            "/both" => b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            "/until-close" => b"HTTP/1.0 200 OK\r\n\r\nall of it",
            "/continue" => b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            "/malformed" => b"HTTP/1.1 2OO OK\r\n\r\n",
            "/bad-length" => b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello",
            "/huge-head" => huge.as_bytes(),
            "/16-continues" => sixteen.as_bytes(),
            "/many-continues" => seventeen.as_bytes(),
            "/switching" => b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
            "/cut" => b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello",
            _ => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        };
        let _ = conn.write_all(answer);
        if matches!(path.as_str(), "/until-close" | "/cut") {
            After::Close
        } else {
            After::Next
        }
    });
    let dir = Workdir::new();
    let (agent, front_door) = start(&dir, "", copy);
    let get = |path: &str| {
        exchange(
            front_door,
            &format!("GET {path} HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n"),
        )
    };
    for (path, status, body) in [
        ("/chunked", 200, "hello world"),
        ("/both", 200, "hello"),
        ("/until-close", 200, "all of it"),
        ("/continue", 200, "ok"),
        ("/16-continues", 200, "ok"),
        ("/malformed", 502, "the model's answer was malformed\n"),
        ("/bad-length", 502, "the model's answer was malformed\n"),
        ("/huge-head", 502, "the model's answer was malformed\n"),
        ("/many-continues", 502, "the model's answer was malformed\n"),
        ("/switching", 502, "the model's answer was malformed\n"),
    ] {
        let (got, answer) = get(path);
        assert_eq!(got, status, "{path}: {answer}");
        assert_eq!(body_of(&answer), body, "{path}: {answer}");
    }
    // Cut short after its head: the client's answer is cut short too, never padded or ended
    // as if whole.
    let (got, answer) = get("/cut");
    assert_eq!(got, 200, "{answer}");
    assert_eq!(body_of(&answer), "hello", "{answer}");
    // Connections: /chunked and /continue kept theirs alive, the next request reused it; /both
    // (a smuggling shape), the close-delimited one, the refused answers and the cut one did not.
    let before = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(get("/ok").0, 200);
    assert_eq!(get("/ok").0, 200);
    assert!(
        accepted.load(std::sync::atomic::Ordering::SeqCst) <= before + 1,
        "two requests in a row share one connection"
    );
    let stopped = agent.stop().success();
    // The five refused answers and the cut one.
    assert_eq!(stopped.logs.final_counter("proxy_upstream_errors"), 6);
}

#[test]
fn a_copy_closing_idle_connections_unannounced_costs_no_request() {
    // Closes every connection after one answer, without `Connection: close`: the front door
    // keeps it, and finds it closed when it next takes it (or on sending, for a GET it may
    // resend).
    let (copy, accepted) = scripted_copy(|_, _, conn| {
        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        After::Close
    });
    let dir = Workdir::new();
    let (agent, front_door) = start(&dir, "", copy);
    let mut c = TcpStream::connect(front_door).unwrap();
    c.set_read_timeout(Some(CLOSE_WITHIN)).unwrap();
    for i in 0..20 {
        c.write_all(b"GET /ping HTTP/1.1\r\nHost: m\r\n\r\n")
            .unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        while !seen.ends_with(b"\r\n\r\nok") {
            let n = c.read(&mut buf).unwrap();
            assert!(n > 0, "request {i}: closed");
            seen.extend_from_slice(&buf[..n]);
        }
        assert!(seen.starts_with(b"HTTP/1.1 200"), "request {i}");
        if i % 2 == 0 {
            // Half the time the copy's close has arrived before the next request.
            thread::sleep(Duration::from_millis(20));
        }
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 20);
    let stopped = agent.stop().success();
    assert_eq!(stopped.logs.final_counter("proxy_upstream_errors"), 0);
}

#[test]
fn an_early_answer_is_relayed_without_the_rest_of_the_upload() {
    // Refuses an upload after its head, reads none of the body and holds the connection: the
    // front door, blocked writing the body, must still relay the answer.
    let (copy, _) = scripted_copy(|_, _, conn| {
        // By then the front door is blocked writing the body.
        thread::sleep(Duration::from_secs(1));
        let _ = conn.write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\n\r\nbig!");
        After::Hold(Duration::from_secs(30))
    });
    let dir = Workdir::new();
    let (agent, front_door) = start(&dir, "response_timeout_ms = 30000\n", copy);
    // More than the loopback socket buffers on both sides hold, under the body limit.
    let body_bytes = 24 << 20;
    let mut c = TcpStream::connect(front_door).unwrap();
    c.write_all(
        format!("POST /invocations HTTP/1.1\r\nHost: m\r\nContent-Length: {body_bytes}\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let mut writer = c.try_clone().unwrap();
    thread::spawn(move || {
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..body_bytes / chunk.len() {
            if writer.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    let started = Instant::now();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !seen.ends_with(b"big!") {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(
        seen.starts_with(b"HTTP/1.1 413"),
        "{}",
        String::from_utf8_lossy(&seen)
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "relayed at once, not at the response timeout"
    );
    drop(c);
    agent.stop().success();
}

/// Reads one answer off `c`: its head and its body (by `Content-Length`, chunked, or to the
/// connection's close), and whether the connection closed after it.
fn read_answer(c: &mut TcpStream) -> (String, String, bool) {
    c.set_read_timeout(Some(CLOSE_WITHIN)).unwrap();
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !seen.ends_with(b"\r\n\r\n") {
        match c.read(&mut byte) {
            Ok(1) => seen.push(byte[0]),
            _ => {
                return (
                    String::from_utf8_lossy(&seen).into_owned(),
                    String::new(),
                    true,
                )
            }
        }
    }
    let head = String::from_utf8_lossy(&seen).into_owned();
    let lower = head.to_ascii_lowercase();
    let length = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map(|v| v.trim().parse::<usize>().unwrap());
    let mut body = Vec::new();
    if let Some(n) = length {
        body.resize(n, 0);
        c.read_exact(&mut body).unwrap();
    } else if lower.contains("transfer-encoding: chunked") {
        loop {
            let mut line = Vec::new();
            while !line.ends_with(b"\r\n") {
                c.read_exact(&mut byte).unwrap();
                line.push(byte[0]);
            }
            let size = usize::from_str_radix(String::from_utf8_lossy(&line).trim(), 16).unwrap();
            let mut chunk = vec![0u8; size + 2];
            c.read_exact(&mut chunk).unwrap();
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else if !(lower.starts_with("http/1.1 1")
        || lower.starts_with("http/1.1 204")
        || lower.starts_with("http/1.1 304"))
    {
        let _ = c.read_to_end(&mut body);
        return (head, String::from_utf8_lossy(&body).into_owned(), true);
    }
    let closed = lower.contains("connection: close") && closed_by_peer(c);
    (head, String::from_utf8_lossy(&body).into_owned(), closed)
}

/// Reads a request body as the copy gets it: by its `Content-Length`, or chunked.
fn read_request_body(head: &str, reader: &mut impl std::io::BufRead) -> String {
    let lower = head.to_ascii_lowercase();
    if let Some(n) = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map(|v| v.trim().parse::<usize>().unwrap())
    {
        let mut body = vec![0u8; n];
        reader.read_exact(&mut body).unwrap();
        return String::from_utf8(body).unwrap();
    }
    let mut body = String::new();
    if lower.contains("transfer-encoding: chunked") {
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let size = usize::from_str_radix(line.trim(), 16).unwrap();
            let mut chunk = vec![0u8; size + 2];
            reader.read_exact(&mut chunk).unwrap();
            if size == 0 {
                break;
            }
            body.push_str(std::str::from_utf8(&chunk[..size]).unwrap());
        }
    }
    body
}

#[test]
fn http1_requests_are_read_framed_and_kept_alive_as_rfc_9112_says() {
    let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = heads.clone();
    let (copy, _) = scripted_copy(move |head, reader, conn| {
        seen.lock().unwrap().push(head.to_string());
        let body = read_request_body(head, reader);
        let answer = if head.starts_with("GET /stream") {
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nfirst\n\r\n5\r\nlast\n\r\n0\r\n\r\n"
                .to_string()
        } else {
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        };
        match conn.write_all(answer.as_bytes()) {
            Ok(()) => After::Next,
            Err(_) => After::Close,
        }
    });
    let dir = Workdir::new();
    let (agent, front_door) = start(&dir, "max_request_body_bytes = 1024\n", copy);
    let connect = || TcpStream::connect(front_door).unwrap();

    // Two requests in one write (pipelined): two answers, in order, on one connection.
    let mut c = connect();
    c.write_all(
        b"POST /echo HTTP/1.1\r\nHost: m\r\nContent-Length: 5\r\n\r\nhello\
          POST /echo HTTP/1.1\r\nHost: m\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    )
    .unwrap();
    let (head, body, closed) = read_answer(&mut c);
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(head.to_ascii_lowercase().contains("\r\ndate: "), "{head}");
    assert_eq!((body.as_str(), closed), ("hello", false));
    let (head, body, closed) = read_answer(&mut c);
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert_eq!(
        (body.as_str(), closed),
        ("abcde", false),
        "a chunked body, whole"
    );

    // A head sent byte by byte is read whole.
    for &b in b"GET /trickled HTTP/1.1\r\nHost: m\r\n\r\n" {
        c.write_all(&[b]).unwrap();
    }
    let (head, _, closed) = read_answer(&mut c);
    assert!(head.starts_with("HTTP/1.1 200 ") && !closed, "{head}");

    // Expect: 100-continue is answered by the front door once the body is needed, and not
    // passed on.
    c.write_all(
        b"POST /expect HTTP/1.1\r\nHost: m\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n",
    )
    .unwrap();
    let (interim, _, _) = read_answer(&mut c);
    assert!(
        interim.starts_with("HTTP/1.1 100 Continue\r\n"),
        "{interim}"
    );
    c.write_all(b"body").unwrap();
    let (head, body, _) = read_answer(&mut c);
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert_eq!(body, "body");

    // Connection: close is honoured.
    c.write_all(b"GET /last HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (head, _, closed) = read_answer(&mut c);
    assert!(
        head.to_ascii_lowercase().contains("connection: close") && closed,
        "{head}"
    );

    // HTTP/1.0: kept alive only when asked; an answer of unknown length ends with the
    // connection (no chunked encoding for a client that cannot read it).
    let mut c = connect();
    c.write_all(b"GET /one HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .unwrap();
    let (head, _, closed) = read_answer(&mut c);
    assert!(
        head.to_ascii_lowercase().contains("connection: keep-alive") && !closed,
        "{head}"
    );
    c.write_all(b"GET /stream HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .unwrap();
    let (head, body, closed) = read_answer(&mut c);
    assert!(
        !head.to_ascii_lowercase().contains("transfer-encoding"),
        "{head}"
    );
    assert_eq!((body.as_str(), closed), ("first\nlast\n", true));

    // What a request smuggler sends is refused (400) and the connection closed; the copy sees
    // none of it.
    let before = heads.lock().unwrap().len();
    for smuggled in [
        "POST /s HTTP/1.1\r\nHost: m\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST /s HTTP/1.1\r\nHost: m\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
        "POST /s HTTP/1.0\r\nHost: m\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST /s HTTP/1.1\r\nHost: m\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        "POST /s HTTP/1.1\r\nHost: m\r\nContent-Length: +5\r\n\r\nhello",
    ] {
        let mut c = connect();
        c.write_all(smuggled.as_bytes()).unwrap();
        let (head, _, _) = read_answer(&mut c);
        assert!(head.starts_with("HTTP/1.1 400 "), "{smuggled:?}: {head}");
        assert!(closed_by_peer(&mut c), "{smuggled:?}: left open");
    }
    assert_eq!(
        heads.lock().unwrap().len(),
        before,
        "a refused request reached the copy"
    );

    let heads = heads.lock().unwrap().clone();
    let expect = heads
        .iter()
        .find(|h| h.starts_with("POST /expect"))
        .unwrap();
    assert!(!expect.to_ascii_lowercase().contains("expect:"), "{expect}");
    let chunked = heads
        .iter()
        .filter(|h| h.starts_with("POST /echo"))
        .nth(1)
        .unwrap();
    assert!(
        chunked
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{chunked}"
    );
    let stopped = agent.stop().success();
    assert_eq!(stopped.logs.final_counter("proxy_bad_requests"), 5);
}

#[test]
fn a_client_that_leaves_while_its_copy_works_closes_the_copy_s_connection() {
    // The copy tells when the request arrived, then whether its connection closed (a model
    // server stops generating when it does) before a generous limit.
    let (events, heard) = std::sync::mpsc::channel::<&'static str>();
    let events = std::sync::Mutex::new(events);
    let (copy, _) = scripted_copy(move |head, reader, _| {
        let events = events.lock().unwrap().clone();
        assert_eq!(read_request_body(head, reader), "hi");
        events.send("arrived").unwrap();
        reader
            .get_ref()
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut byte = [0u8; 1];
        let closed = match reader.read(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        };
        let _ = events.send(if closed { "closed" } else { "still open" });
        After::Close
    });
    let dir = Workdir::new();
    // A response timeout far past the test, so only the client's leaving can close the copy's
    // connection.
    let (agent, front_door) = start(&dir, "response_timeout_ms = 60000\n", copy);
    let mut c = TcpStream::connect(front_door).unwrap();
    c.write_all(b"POST /generate HTTP/1.1\r\nHost: m\r\nContent-Length: 2\r\n\r\nhi")
        .unwrap();
    assert_eq!(heard.recv_timeout(CLOSE_WITHIN * 2), Ok("arrived"));
    drop(c);
    assert_eq!(heard.recv_timeout(Duration::from_secs(30)), Ok("closed"));
    let stopped = agent.stop().success();
    assert_eq!(stopped.logs.final_counter("proxy_client_left"), 1);
    assert_eq!(stopped.logs.final_counter("proxy_upstream_timeouts"), 0);
    assert_eq!(stopped.logs.final_counter("proxy_upstream_errors"), 0);
}
