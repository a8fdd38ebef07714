//! Test support for exact counter assertions. The agent's counters are process-wide and
//! `cargo test` runs a binary's tests as threads of one process, so a test that asserts how much a
//! counter moved holds [`counters`] while it runs, and so does every other test that moves the
//! same counter: no one else's events land between its baseline and its assertion. (nextest runs
//! each test in a process of its own; there the lock costs nothing.)

use tokio::sync::{Mutex, MutexGuard};

static COUNTERS: Mutex<()> = Mutex::const_new(());

/// Waits for the other counting tests of this process to finish; theirs is the counters' turn
/// until the guard drops.
pub(crate) async fn counters() -> MutexGuard<'static, ()> {
    COUNTERS.lock().await
}

/// [`counters`] for a test outside a runtime.
pub(crate) fn counters_blocking() -> MutexGuard<'static, ()> {
    COUNTERS.blocking_lock()
}

/// A test endpoint's address and the count of requests it read.
pub(crate) type Endpoint = (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
);

/// An HTTP/1.1 endpoint on loopback for the sinks' tests: reads each request whole (head and
/// `content-length` body), counts it, and writes `answer` (None: never answers, the connection
/// held). Misbehaving endpoints (silent, oversized) are what it stands for; real services have
/// their own tests (LocalStack, the OTLP receiver).
pub(crate) async fn http_endpoint(answer: Option<Vec<u8>>) -> Endpoint {
    serve_fixed(answer, false).await
}

/// [`http_endpoint`] that holds the connection open after writing `answer` (an answer whose
/// body stops short of its length: the rest never comes).
pub(crate) async fn http_endpoint_holding(answer: Vec<u8>) -> Endpoint {
    serve_fixed(Some(answer), true).await
}

async fn serve_fixed(answer: Option<Vec<u8>>, hold: bool) -> Endpoint {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let counted = counted.clone();
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = conn.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                counted.fetch_add(1, Ordering::SeqCst);
                if let Some(a) = answer {
                    let _ = conn.write_all(&a).await;
                    if !hold {
                        return;
                    }
                }
                tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
            });
        }
    });
    (addr, calls)
}
