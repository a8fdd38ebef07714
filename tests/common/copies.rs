//! Model copies the front-door tests stand behind it: small HTTP/1 servers on loopback.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::thread;
use std::time::Duration;

/// A copy that streams a chunked answer: `chunks` chunks, one every `every`.
pub fn streaming_copy(chunks: usize, every: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut conn = conn;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
                );
                for i in 0..chunks {
                    let data = format!("data: token {i}\n\n");
                    if write!(conn, "{:x}\r\n{data}\r\n", data.len()).is_err() {
                        return;
                    }
                    thread::sleep(every);
                }
                let _ = conn.write_all(b"0\r\n\r\n");
            });
        }
    });
    addr
}
