//! OTLP/HTTP: POST of `ExportMetricsServiceRequest` (protobuf, gzip) to CloudWatch's OTLP
//! endpoint, signed with SigV4 for the service `monitoring` through the SDK's credential chain,
//! or to any OTLP/HTTP endpoint, unsigned, with optional headers.
//!
//! Answers follow the OTLP/HTTP specification ("Failures"): 429, 502, 503 and 504 may succeed
//! later (retried by `delivery` with backoff and jitter, the request waiting in the spool), as do
//! timeouts and network errors before the status; any other 4xx or 5xx will not, and the request
//! is dropped, logged and counted. A 2xx is a success even when its body is cut or slower than
//! the timeout (sending again would count the points twice). A 2xx with a `partial_success` that
//! rejected points is logged and counted: the backend refused those points for good.

use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Uri};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use prost::Message as _;

use super::cloudwatch::SendError;
use crate::config::{OtlpAuth, OtlpConfig};
use crate::encode::otlp::Request as OtlpRequest;
use crate::telemetry::{self, Counter};

/// The service name CloudWatch's OTLP metrics endpoint is signed for ("Send metrics using
/// OpenTelemetry": "The service name is monitoring").
pub const SIGV4_SERVICE: &str = "monitoring";

/// The largest answer read: an `ExportMetricsServiceResponse` or an error text is small.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// The part of an error answer quoted in the log.
const MAX_QUOTED_ERROR_CHARS: usize = 300;

/// Idle connections kept to the endpoint (one request at a time is sent).
const MAX_IDLE_CONNECTIONS: usize = 1;

/// How requests are authenticated.
#[derive(Clone, Debug)]
enum Auth {
    None,
    Sigv4 {
        region: String,
        credentials: SharedCredentialsProvider,
    },
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Where OTLP requests go and how.
#[derive(Clone, Debug)]
pub struct OtlpTarget {
    client: HttpsClient,
    endpoint: Uri,
    auth: Auth,
    headers: Vec<(HeaderName, HeaderValue)>,
    timeout: Duration,
}

impl OtlpTarget {
    /// Builds the target. With SigV4, credentials and the Region come from the SDK's chain
    /// (`region` overrides it); it fails when no Region is known for signing or for the default
    /// endpoint.
    pub async fn new(config: &OtlpConfig) -> anyhow::Result<OtlpTarget> {
        let (auth, region) = match config.auth {
            OtlpAuth::None => (Auth::None, config.region.clone()),
            OtlpAuth::Sigv4 => {
                let sdk = super::cloudwatch::load_sdk_config_in(config.region.as_deref()).await?;
                let region = sdk
                    .region()
                    .map(|r| r.to_string())
                    .ok_or_else(|| anyhow::anyhow!("no AWS Region for SigV4"))?;
                let credentials = sdk.credentials_provider().ok_or_else(|| {
                    anyhow::anyhow!("no AWS credential chain for SigV4 (output.otlp.auth)")
                })?;
                (
                    Auth::Sigv4 {
                        region: region.clone(),
                        credentials,
                    },
                    Some(region),
                )
            }
        };
        let endpoint = match (&config.endpoint, region) {
            (Some(e), _) => e.clone(),
            (None, Some(region)) => cloudwatch_endpoint(&region),
            (None, None) => anyhow::bail!(
                "output.otlp.endpoint is unset and no Region is known for CloudWatch's OTLP endpoint: set output.otlp.endpoint or output.otlp.region"
            ),
        };
        let endpoint: Uri = endpoint
            .parse()
            .map_err(|e| anyhow::anyhow!("output.otlp.endpoint: {e}"))?;
        let mut headers = Vec::with_capacity(config.headers.len());
        for (name, value) in &config.headers {
            headers.push((
                HeaderName::from_bytes(name.as_bytes())?,
                HeaderValue::from_str(value)?,
            ));
        }
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(config.timeout()));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(MAX_IDLE_CONNECTIONS)
            .build(https);
        Ok(OtlpTarget {
            client,
            endpoint,
            auth,
            headers,
            timeout: config.timeout(),
        })
    }

    pub fn describe(&self) -> String {
        match &self.auth {
            Auth::None => format!("otlp {}", self.endpoint),
            Auth::Sigv4 { region, .. } => format!("otlp {} (SigV4, {region})", self.endpoint),
        }
    }

    /// Sends one request; see the module documentation for what is retried.
    pub async fn send(&self, request: &OtlpRequest) -> Result<(), SendError> {
        let http_request = self.build(request).await?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        let response = tokio::time::timeout_at(deadline, self.client.request(http_request))
            .await
            .map_err(|_| {
                SendError::Retryable(format!(
                    "OTLP request took more than {} s",
                    self.timeout.as_secs()
                ))
            })?
            .map_err(|e| SendError::Retryable(format!("OTLP request failed: {e}")))?;
        let status = response.status();
        // The status decides; the body is read within its cap and what is left of the timeout
        // only for the partial success or the error's text. An answer past the cap, cut, or
        // slower than the timeout leaves the body empty: a 2xx is still a success, never sent
        // again (the backend took the points).
        let body = tokio::time::timeout_at(
            deadline,
            Limited::new(response.into_body(), MAX_RESPONSE_BYTES).collect(),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .map(|b| b.to_bytes())
        .unwrap_or_default();
        if status.is_success() {
            self.partial_success(&body);
            return Ok(());
        }
        let text: String = String::from_utf8_lossy(&body)
            .chars()
            .filter(|c| !c.is_control())
            .take(MAX_QUOTED_ERROR_CHARS)
            .collect();
        let reason = format!("OTLP endpoint answered {status}: {text}");
        match status.as_u16() {
            429 | 502 | 503 | 504 => Err(SendError::Retryable(reason)),
            _ => Err(SendError::Permanent(reason)),
        }
    }

    /// The HTTP request: body as spooled, headers, and the SigV4 signature at this moment.
    async fn build(&self, request: &OtlpRequest) -> Result<Request<Full<Bytes>>, SendError> {
        let body = Bytes::from(request.body.clone());
        let host = self
            .endpoint
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_default();
        let mut builder = Request::post(self.endpoint.clone())
            .header(http::header::HOST, &host)
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .header(http::header::CONTENT_ENCODING, "gzip");
        for (name, value) in &self.headers {
            builder = builder.header(name, value);
        }
        let mut http_request = builder
            .body(Full::new(body.clone()))
            .map_err(|e| SendError::Permanent(format!("OTLP request: {e}")))?;
        if let Auth::Sigv4 {
            region,
            credentials,
        } = &self.auth
        {
            let credentials = credentials
                .provide_credentials()
                .await
                .map_err(|e| SendError::Retryable(format!("no AWS credentials: {e}")))?;
            let identity = credentials.into();
            let params = v4::SigningParams::builder()
                .identity(&identity)
                .region(region)
                .name(SIGV4_SERVICE)
                .time(SystemTime::now())
                .settings(SigningSettings::default())
                .build()
                .map_err(|e| SendError::Permanent(format!("SigV4 parameters: {e}")))?
                .into();
            let uri = self.endpoint.to_string();
            let headers: Vec<(&str, &str)> = http_request
                .headers()
                .iter()
                .filter_map(|(n, v)| Some((n.as_str(), v.to_str().ok()?)))
                .collect();
            let signable = SignableRequest::new(
                "POST",
                uri.as_str(),
                headers.into_iter(),
                SignableBody::Bytes(&body),
            )
            .map_err(|e| SendError::Permanent(format!("SigV4: {e}")))?;
            let (instructions, _signature) = sign(signable, &params)
                .map_err(|e| SendError::Permanent(format!("SigV4: {e}")))?
                .into_parts();
            let (signed_headers, _query) = instructions.into_parts();
            for header in signed_headers {
                let mut value = HeaderValue::from_str(header.value())
                    .map_err(|e| SendError::Permanent(format!("SigV4 header: {e}")))?;
                value.set_sensitive(header.sensitive());
                http_request.headers_mut().insert(header.name(), value);
            }
        }
        Ok(http_request)
    }

    /// Logs and counts the points a 2xx answer says were rejected.
    fn partial_success(&self, body: &[u8]) {
        let Ok(response) = ExportMetricsServiceResponse::decode(body) else {
            return;
        };
        if let Some(partial) = response.partial_success {
            let rejected = u64::try_from(partial.rejected_data_points).unwrap_or(0);
            if rejected > 0 {
                let message: String = partial
                    .error_message
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(MAX_QUOTED_ERROR_CHARS)
                    .collect();
                telemetry::warn(
                    Counter::OtlpPointsRejected,
                    rejected,
                    &format!("the OTLP endpoint rejected data points: {message}"),
                );
            }
        }
    }
}

/// CloudWatch's OTLP metrics endpoint in `region` ("Send metrics using OpenTelemetry").
pub fn cloudwatch_endpoint(region: &str) -> String {
    format!("https://monitoring.{region}.amazonaws.com/v1/metrics")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OtlpConfig;
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsPartialSuccess;

    /// An endpoint that reads each request whole and answers `answer` (None: never answers).
    async fn endpoint(answer: Option<Vec<u8>>) -> std::net::SocketAddr {
        crate::testing::http_endpoint(answer).await.0
    }

    fn answer(status: &str, body: &[u8]) -> Vec<u8> {
        let mut a = format!(
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        a.extend_from_slice(body);
        a
    }

    async fn target(addr: std::net::SocketAddr, timeout_seconds: u64) -> OtlpTarget {
        let config = OtlpConfig {
            endpoint: Some(format!("http://{addr}/v1/metrics")),
            auth: OtlpAuth::None,
            timeout_seconds: Some(timeout_seconds),
            ..OtlpConfig::default()
        };
        OtlpTarget::new(&config).await.unwrap()
    }

    fn request() -> OtlpRequest {
        OtlpRequest {
            body: vec![0x1f, 0x8b],
            points: 1,
        }
    }

    #[tokio::test]
    async fn the_specifications_retryable_statuses_are_retried_and_the_rest_dropped() {
        for (status, retryable) in [
            ("429 Too Many Requests", true),
            ("502 Bad Gateway", true),
            ("503 Service Unavailable", true),
            ("504 Gateway Timeout", true),
            ("400 Bad Request", false),
            ("403 Forbidden", false),
            ("413 Payload Too Large", false),
            ("500 Internal Server Error", false),
            ("301 Moved Permanently", false),
        ] {
            let addr = endpoint(Some(answer(status, b"why\nnot"))).await;
            let got = target(addr, 5).await.send(&request()).await;
            match got {
                Err(SendError::Retryable(reason)) => assert!(retryable, "{status}: {reason}"),
                Err(SendError::Permanent(reason)) => {
                    assert!(!retryable, "{status}: {reason}");
                    assert!(
                        reason.contains("whynot"),
                        "control characters dropped: {reason}"
                    );
                }
                Ok(()) => panic!("{status} taken as success"),
            }
        }
    }

    #[tokio::test]
    async fn an_endpoint_that_never_answers_costs_one_timeout_and_is_retried() {
        let addr = endpoint(None).await;
        let started = tokio::time::Instant::now();
        let got = target(addr, 1).await.send(&request()).await;
        assert!(matches!(got, Err(SendError::Retryable(_))), "{got:?}");
        assert!(started.elapsed() < Duration::from_secs(30));
        // Nobody listening: a network error, retried.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let got = target(closed, 1).await.send(&request()).await;
        assert!(matches!(got, Err(SendError::Retryable(_))), "{got:?}");
    }

    #[tokio::test]
    async fn rejected_points_in_a_partial_success_are_counted_and_a_huge_answer_is_not_read() {
        let _counters = crate::testing::counters().await;
        let body = ExportMetricsServiceResponse {
            partial_success: Some(ExportMetricsPartialSuccess {
                rejected_data_points: 3,
                error_message: "label too long".into(),
            }),
        }
        .encode_to_vec();
        let before = telemetry::get(Counter::OtlpPointsRejected);
        let addr = endpoint(Some(answer("200 OK", &body))).await;
        target(addr, 5).await.send(&request()).await.unwrap();
        assert_eq!(telemetry::get(Counter::OtlpPointsRejected) - before, 3);
        // A 2xx with a garbage body is a success with nothing rejected.
        let addr = endpoint(Some(answer("200 OK", b"\xff\xfe not protobuf"))).await;
        target(addr, 5).await.send(&request()).await.unwrap();
        assert_eq!(telemetry::get(Counter::OtlpPointsRejected) - before, 3);
        // An answer past the cap is not read whole, and a 2xx stays a success (sending it again
        // would duplicate what the backend took).
        let huge = vec![b'x'; MAX_RESPONSE_BYTES * 4];
        let addr = endpoint(Some(answer("200 OK", &huge))).await;
        target(addr, 5).await.send(&request()).await.unwrap();
        let addr = endpoint(Some(answer("400 Bad Request", &huge))).await;
        let got = target(addr, 5).await.send(&request()).await;
        assert!(matches!(got, Err(SendError::Permanent(_))), "{got:?}");
    }

    #[tokio::test]
    async fn a_2xx_whose_body_never_ends_is_a_success_and_an_error_keeps_its_status() {
        // The head and 2 of the 100 body bytes it declares, then nothing: the backend took the
        // points, so sending them again would count them twice.
        let (addr, calls) = crate::testing::http_endpoint_holding(
            b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nab".to_vec(),
        )
        .await;
        let got = target(addr, 1).await.send(&request()).await;
        assert!(got.is_ok(), "{got:?}");
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
        // A retryable status whose body never ends is still retried, one that is not dropped.
        for (status, retryable) in [
            ("503 Service Unavailable", true),
            ("400 Bad Request", false),
        ] {
            let (addr, _) = crate::testing::http_endpoint_holding(
                format!("HTTP/1.1 {status}\r\ncontent-length: 100\r\n\r\nab").into_bytes(),
            )
            .await;
            let got = target(addr, 1).await.send(&request()).await;
            match got {
                Err(SendError::Retryable(reason)) => assert!(retryable, "{status}: {reason}"),
                Err(SendError::Permanent(reason)) => assert!(!retryable, "{status}: {reason}"),
                Ok(()) => panic!("{status} taken as success"),
            }
        }
    }

    #[tokio::test]
    async fn without_an_endpoint_or_a_region_the_target_is_refused() {
        let config = OtlpConfig {
            auth: OtlpAuth::None,
            ..OtlpConfig::default()
        };
        let err = OtlpTarget::new(&config).await.unwrap_err().to_string();
        assert!(err.contains("output.otlp.endpoint"), "{err}");
        let config = OtlpConfig {
            auth: OtlpAuth::None,
            region: Some("eu-central-1".into()),
            ..OtlpConfig::default()
        };
        let t = OtlpTarget::new(&config).await.unwrap();
        assert_eq!(
            t.endpoint.to_string(),
            "https://monitoring.eu-central-1.amazonaws.com/v1/metrics"
        );
    }
}
