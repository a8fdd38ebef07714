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
