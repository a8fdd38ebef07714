//! The `InstanceId` dimension: EC2 instance metadata (IMDSv2) when asked for "auto", else the
//! hostname.
//!
//! IMDS is spoken as two plain HTTP/1.1 requests over a TCP connection with a short deadline, so a
//! host outside EC2 loses at most `IMDS_TIMEOUT` at start. `AWS_EC2_METADATA_DISABLED=true` skips
//! it and `AWS_EC2_METADATA_SERVICE_ENDPOINT` points it elsewhere, as in the AWS SDKs.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::InstanceIdSetting;

/// The whole IMDS exchange (token and instance ID) must finish within this.
pub const IMDS_TIMEOUT: Duration = Duration::from_secs(1);

const IMDS_DEFAULT_ENDPOINT: &str = "http://169.254.169.254";

/// A response larger than this is not IMDS.
const IMDS_MAX_RESPONSE_BYTES: u64 = 16 * 1024;

/// Resolves the configured `instance_id`: a given value is used as it is.
pub async fn resolve_instance_id(configured: &InstanceIdSetting) -> String {
    if let InstanceIdSetting::Given(id) = configured {
        return id.clone();
    }
    let disabled =
        std::env::var("AWS_EC2_METADATA_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    if !disabled {
        let endpoint = std::env::var("AWS_EC2_METADATA_SERVICE_ENDPOINT")
            .unwrap_or_else(|_| IMDS_DEFAULT_ENDPOINT.into());
        match tokio::time::timeout(IMDS_TIMEOUT, imds_instance_id(&endpoint)).await {
            Ok(Ok(id)) => return id,
            Ok(Err(reason)) => {
                tracing::info!(%endpoint, reason, "no instance ID from instance metadata; using the hostname")
            }
            Err(_) => {
                tracing::info!(%endpoint, "instance metadata did not answer in time; using the hostname")
            }
        }
    }
    hostname()
}

/// The host's name, or "unknown-host" if it has none.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let name = if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        String::new()
    };
    if name.is_empty() {
        "unknown-host".into()
    } else {
        name
    }
}

async fn imds_instance_id(endpoint: &str) -> Result<String, &'static str> {
    let authority = endpoint
        .strip_prefix("http://")
        .ok_or("only http:// endpoints are supported")?;
    let authority = authority.trim_end_matches('/');
    let addr = if authority.contains(':') && !authority.ends_with(']') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let token = request(
        &addr,
        &format!(
            "PUT /latest/api/token HTTP/1.1\r\nHost: {authority}\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    )
    .await?;
    let id = request(
        &addr,
        &format!(
            "GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: {authority}\r\nX-aws-ec2-metadata-token: {}\r\nConnection: close\r\n\r\n",
            token.trim()
        ),
    )
    .await?;
    let id = id.trim();
    if id.starts_with("i-") && id.len() <= 32 && id[2..].bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(id.to_string())
    } else {
        Err("instance metadata answered something that is not an instance ID")
    }
}

/// One request on a fresh connection; the body of a 200 answer.
async fn request(addr: &str, text: &str) -> Result<String, &'static str> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|_| "cannot connect")?;
    stream
        .write_all(text.as_bytes())
        .await
        .map_err(|_| "cannot send")?;
    let mut response = Vec::new();
    (&mut stream)
        .take(IMDS_MAX_RESPONSE_BYTES)
        .read_to_end(&mut response)
        .await
        .map_err(|_| "cannot read the answer")?;
    parse_response(&response)
}

fn parse_response(response: &[u8]) -> Result<String, &'static str> {
    let text = std::str::from_utf8(response).map_err(|_| "answer is not text")?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or("answer has no header end")?;
    let status = head.split(' ').nth(1).ok_or("answer has no status")?;
    if status != "200" {
        return Err("answer is not 200");
    }
    if head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    }) {
        return Err("chunked answers are not expected from instance metadata");
    }
    Ok(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse_strictly() {
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\ni-abc").unwrap(),
            "i-abc"
        );
        assert!(parse_response(b"HTTP/1.1 401 Unauthorized\r\n\r\n").is_err());
        assert!(parse_response(b"garbage").is_err());
        assert!(parse_response(&[0xff, 0xfe]).is_err());
    }

    #[tokio::test]
    async fn literal_ids_are_kept_and_auto_falls_back_to_the_hostname() {
        assert_eq!(
            resolve_instance_id(&InstanceIdSetting::Given("i-0123".into())).await,
            "i-0123"
        );
        // Point IMDS at a closed local port: the lookup fails fast and the hostname is used.
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let id = tokio::time::timeout(
            Duration::from_secs(3),
            imds_instance_id(&format!("http://127.0.0.1:{port}")),
        )
        .await
        .unwrap();
        assert!(id.is_err());
        assert!(!hostname().is_empty());
    }
}
