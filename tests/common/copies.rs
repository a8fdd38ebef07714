//! Model copies the front-door tests stand behind it: small HTTP/1 servers on loopback.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// How long [`exchange`] waits for an answer to go on.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// A copy that streams a chunked answer: `chunks` chunks, one every `every`.
pub fn streaming_copy(chunks: usize, every: Duration) -> SocketAddr {
    let (addr, _) = scripted_copy(move |_, _, conn| {
        let _ = conn.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        for i in 0..chunks {
            let data = format!("data: token {i}\n\n");
            if write!(conn, "{:x}\r\n{data}\r\n", data.len()).is_err() {
                return After::Close;
            }
            thread::sleep(every);
        }
        let _ = conn.write_all(b"0\r\n\r\n");
        After::Close
    });
    addr
}

/// A copy that answers every request with the request head it received (request line and
/// headers) as its body, keeping the connection, and remembers every head.
pub fn echo_copy() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let heads = seen.clone();
    let (addr, _) = scripted_copy(move |head, _, conn| {
        heads.lock().unwrap().push(head.to_string());
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{head}",
            head.len()
        );
        match conn.write_all(answer.as_bytes()) {
            Ok(()) => After::Next,
            Err(_) => After::Close,
        }
    });
    (addr, seen)
}

/// What a scripted copy does after answering.
pub enum After {
    /// Reads the next request on the connection.
    Next,
    /// Closes the connection (without saying so in the answer, unless the script did).
    Close,
    /// Holds the connection open without reading it for this long, then closes it.
    Hold(Duration),
}

/// A copy that answers each request with whatever `script` writes, given the request head (the
/// request line and headers, without the blank line); the body, if any, is left unread for the
/// script to read or ignore. Returns its address and the count of connections it accepted.
pub fn scripted_copy<F>(script: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(&str, &mut BufReader<TcpStream>, &mut TcpStream) -> After + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = accepted.clone();
    let script = Arc::new(script);
    thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            counted.fetch_add(1, Ordering::SeqCst);
            let script = script.clone();
            thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut conn = conn;
                loop {
                    let mut head = String::new();
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        head.push_str(&line);
                    }
                    match script(&head, &mut reader, &mut conn) {
                        After::Next => continue,
                        After::Close => return,
                        After::Hold(d) => {
                            thread::sleep(d);
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// Sends `request` on a new connection; the status code and the whole answer (read to its
/// `Content-Length`, the connection's close, or [`ANSWER_WITHIN`]).
pub fn exchange(front_door: SocketAddr, request: &str) -> (u16, String) {
    let mut c = TcpStream::connect(front_door).unwrap();
    c.write_all(request.as_bytes()).unwrap();
    c.set_read_timeout(Some(ANSWER_WITHIN)).unwrap();
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
