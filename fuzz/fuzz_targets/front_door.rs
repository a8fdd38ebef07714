//! The front door's request handling, over loopback as a client meets it: the fuzzer's bytes are
//! written to a fresh connection (then its write side closed) of one front door started in this
//! process, in front of a copy that answers every request. What comes back is an HTTP/1.x
//! response, h2 frames (after an h2 preface) or nothing; a panic anywhere in the front door's
//! tasks aborts the process (tokio would otherwise swallow it), so libFuzzer sees it.
#![no_main]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::OnceLock;
use std::time::Duration;

use endpoint_metrics_agent::config::{ProxyConfig, StaticUpstream, UpstreamUrl};
use endpoint_metrics_agent::proxy::FrontDoor;
use libfuzzer_sys::fuzz_target;

/// A copy: reads a request head, answers 200 and closes.
fn copy() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
            });
        }
    });
    addr
}

fn front_door() -> SocketAddr {
    static FRONT_DOOR: OnceLock<SocketAddr> = OnceLock::new();
    *FRONT_DOOR.get_or_init(|| {
        std::panic::set_hook(Box::new(|info| {
            eprintln!("{info}");
            std::process::abort();
        }));
        let config = ProxyConfig {
            enabled: true,
            listen: "127.0.0.1:0".parse().unwrap(),
            response_timeout_ms: 2_000,
            max_request_body_bytes: 64 * 1024,
            upstream: vec![StaticUpstream {
                component: "model".into(),
                url: UpstreamUrl::parse(&format!("http://{}", copy())).unwrap(),
            }],
            ..ProxyConfig::default()
        };
        let fd = FrontDoor::start(&config, None).unwrap();
        let addr = fd.local_addr;
        // Serves for the life of the process.
        std::mem::forget(fd);
        addr
    })
}

fuzz_target!(|data: &[u8]| {
    let addr = front_door();
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    if c.write_all(data).is_err() {
        return;
    }
    let _ = c.shutdown(std::net::Shutdown::Write);
    let mut got = Vec::new();
    let _ = c.read_to_end(&mut got);
    if !got.is_empty() && !data.starts_with(b"PRI * HTTP/2.0") {
        // Every answer starts with a status line, HTTP/1.1 whatever the request's version (RFC
        // 9110 section 6.2; a 1.0 client gets a 1.0-compatible answer: no chunked framing).
        assert!(
            got.starts_with(b"HTTP/1.1 "),
            "{:?}",
            String::from_utf8_lossy(&got)
        );
    }
});
