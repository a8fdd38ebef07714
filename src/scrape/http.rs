//! One keep-alive HTTP/1.1 connection to one target, on `hyper::client::conn::http1`: a
//! request, a deadline for the whole answer, and a size cap read frame by frame, so a slow or
//! huge answer never holds more than `max_bytes` nor longer than `timeout_ms`.

use std::time::Duration;

use bytes::Bytes;
use http::{header, Request};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use super::{ScrapeError, Target};
use crate::config::ScrapeConfig;

/// What the agent reads best first: the classic text, then OpenMetrics.
const ACCEPT: &str =
    "text/plain;version=0.0.4;q=1,application/openmetrics-text;version=1.0.0;q=0.5,*/*;q=0.1";

pub struct Client {
    authority: String,
    path: String,
    timeout: Duration,
    max_bytes: u64,
    sender: Option<SendRequest<Empty<Bytes>>>,
}

impl Client {
    pub fn new(target: &Target, config: &ScrapeConfig) -> Client {
        Client {
            authority: target.authority.clone(),
            path: target.path.clone(),
            timeout: Duration::from_millis(config.timeout_ms),
            max_bytes: config.max_bytes,
            sender: None,
        }
    }

    /// The body of one answer. Any failure drops the connection; the next call opens another.
    pub async fn get(&mut self) -> Result<String, ScrapeError> {
        let ms = self.timeout.as_millis() as u64;
        let result = match tokio::time::timeout(self.timeout, self.exchange()).await {
            Ok(result) => result,
            Err(_) => Err(ScrapeError::Timeout(ms)),
        };
        if result.is_err() {
            self.sender = None;
        }
        result
    }

    async fn exchange(&mut self) -> Result<String, ScrapeError> {
        let mut sender = match self.sender.take() {
            Some(s) if !s.is_closed() => s,
            _ => self.connect().await?,
        };
        sender.ready().await?;
        let request = Request::get(self.path.as_str())
            .header(header::HOST, self.authority.as_str())
            .header(header::ACCEPT, ACCEPT)
            .body(Empty::new())
            .map_err(|_| ScrapeError::Status(0))?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        if !status.is_success() {
            return Err(ScrapeError::Status(status.as_u16()));
        }
        let declared = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_bytes) {
            return Err(ScrapeError::TooLarge(self.max_bytes));
        }
        let mut body = response.into_body();
        let mut buffer = Vec::with_capacity(declared.unwrap_or(16 * 1024) as usize);
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                if (buffer.len() + data.len()) as u64 > self.max_bytes {
                    return Err(ScrapeError::TooLarge(self.max_bytes));
                }
                buffer.extend_from_slice(&data);
            }
        }
        self.sender = Some(sender);
        String::from_utf8(buffer).map_err(|_| ScrapeError::NotText)
    }

    async fn connect(&self) -> Result<SendRequest<Empty<Bytes>>, ScrapeError> {
        let stream = tokio::net::TcpStream::connect(self.authority.as_str())
            .await
            .map_err(ScrapeError::Connect)?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A loopback server answering every request on a connection with `answer`, counting
    /// accepted connections.
    async fn server(answer: &'static [u8]) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buffer = [0u8; 4096];
                    while let Ok(n) = stream.read(&mut buffer).await {
                        if n == 0 || stream.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (address, accepted)
    }

    fn client(authority: &str, timeout_ms: u64, max_bytes: u64) -> Client {
        let target = Target {
            component: "c".into(),
            copy_id: "x".into(),
            authority: authority.into(),
            path: "/metrics".into(),
        };
        let config = ScrapeConfig {
            timeout_ms,
            max_bytes,
            ..ScrapeConfig::default()
        };
        Client::new(&target, &config)
    }

    #[tokio::test]
    async fn one_connection_serves_every_scrape() {
        let (address, accepted) =
            server(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\na 1.0\n").await;
        let mut c = client(&address, 1000, 1024);
        for _ in 0..3 {
            assert_eq!(c.get().await.unwrap(), "a 1.0\n");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "keep-alive");
    }

    #[tokio::test]
    async fn a_body_over_the_cap_is_refused_declared_or_chunked() {
        let (address, _) = server(b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n").await;
        let e = client(&address, 1000, 1024).get().await.unwrap_err();
        assert!(matches!(e, ScrapeError::TooLarge(1024)), "{e}");
        // Chunked: 600 + 600 bytes, no length up front; refused once past the cap.
        static CHUNKED: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let body = CHUNKED.get_or_init(|| {
            let chunk = "a".repeat(600);
            format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n").into_bytes()
        });
        let (address, _) = server(body.as_slice()).await;
        let e = client(&address, 1000, 1024).get().await.unwrap_err();
        assert!(matches!(e, ScrapeError::TooLarge(1024)), "{e}");
        let ok = client(&address, 1000, 4096).get().await.unwrap();
        assert_eq!(ok.len(), 1200);
    }

    #[tokio::test]
    async fn errors_statuses_slow_answers_and_binary_bodies_are_failures() {
        let (address, _) = server(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n").await;
        let e = client(&address, 1000, 1024).get().await.unwrap_err();
        assert!(matches!(e, ScrapeError::Status(503)), "{e}");
        // Headers, then a body that never comes.
        let (address, _) = server(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc").await;
        let e = client(&address, 200, 1024).get().await.unwrap_err();
        assert!(matches!(e, ScrapeError::Timeout(200)), "{e}");
        let (address, _) = server(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n\xff\xfe").await;
        let e = client(&address, 1000, 1024).get().await.unwrap_err();
        assert!(matches!(e, ScrapeError::NotText), "{e}");
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = closed.local_addr().unwrap().to_string();
        drop(closed);
        let e = client(&address, 1000, 1024).get().await.unwrap_err();
        assert!(matches!(e, ScrapeError::Connect(_)), "{e}");
    }
}
