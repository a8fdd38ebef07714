//! PutMetricData through `aws-sdk-cloudwatch`, and the AWS set-up both CloudWatch sinks share.
//!
//! Credentials and Region come from the standard chain (environment, profile, instance metadata,
//! ECS, web identity); `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_CLOUDWATCH` override the endpoint.
//! HTTP is `aws-smithy-http-client` over rustls with ring: one TLS stack. The SDK's own retries are
//! off: `delivery` retries with backoff and jitter, and spools, so a retry never blocks the next
//! window.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_cloudwatch::config::http::HttpResponse;
use aws_sdk_cloudwatch::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit, StatisticSet};
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};

use crate::encode::put_metric_data::{DatumValues, Request};

/// A connection to CloudWatch must open within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// One call, from first byte to the last of the answer. A hung endpoint costs at most this per try.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);

/// Error codes CloudWatch and CloudWatch Logs answer when a caller must slow down or try later.
const RETRYABLE_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "InternalFailure",
    "InternalServiceFault",
    "RequestTimeout",
    "RequestTimeoutException",
];

/// Why a send failed: retry later, or never.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Throttling, a 5xx, a timeout or a network error: the same request may succeed later.
    #[error("{0}")]
    Retryable(String),
    /// The request itself is wrong (validation, access denied): retrying cannot help.
    #[error("{0}")]
    Permanent(String),
}

/// Loads the shared AWS configuration. Fails when no Region can be found: every call would fail.
pub async fn load_sdk_config() -> anyhow::Result<SdkConfig> {
    load_sdk_config_in(None).await
}

/// [`load_sdk_config`] with the Region given (`Some`) or from the chain (`None`).
pub async fn load_sdk_config_in(region: Option<&str>) -> anyhow::Result<SdkConfig> {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(region) = region {
        loader = loader.region(aws_config::Region::new(region.to_string()));
    }
    let config = loader
        .http_client(http)
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(OPERATION_TIMEOUT)
                .operation_timeout(OPERATION_TIMEOUT)
                .build(),
        )
        .load()
        .await;
    if config.region().is_none() {
        anyhow::bail!(
            "no AWS Region: set AWS_REGION (or a profile's region, or run where instance metadata answers)"
        );
    }
    Ok(config)
}

/// Sorts an SDK error into retryable and permanent.
pub fn classify<E>(err: &SdkError<E, HttpResponse>) -> SendError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let text = DisplayErrorContext(err).to_string();
    match err {
        SdkError::ConstructionFailure(_) => SendError::Permanent(text),
        SdkError::ServiceError(ctx) => {
            let status = ctx.raw().status().as_u16();
            let code = ctx.err().code().unwrap_or_default();
            if status == 429 || status >= 500 || RETRYABLE_CODES.contains(&code) {
                SendError::Retryable(text)
            } else {
                SendError::Permanent(text)
            }
        }
        // Timeouts, dispatch (network) failures and unreadable answers.
        _ => SendError::Retryable(text),
    }
}

/// PutMetricData with request compression (gzip) on.
#[derive(Debug, Clone)]
pub struct MetricsTarget {
    client: aws_sdk_cloudwatch::Client,
}

/// Bodies from this size up are gzipped. Lower than the SDK's default (10,240) so that a typical
/// window's request (2-4 KB of CBOR on a small host) is compressed too: the CPU cost of a few KB
/// per window is negligible, and the end-to-end tests then exercise gzip on every request.
const COMPRESS_FROM_BYTES: u32 = 1024;

impl MetricsTarget {
    pub fn new(sdk: &SdkConfig) -> Self {
        let config = aws_sdk_cloudwatch::config::Builder::from(sdk)
            // Retries belong to `delivery` (backoff, spool), whatever the shared config says.
            .retry_config(RetryConfig::disabled())
            .disable_request_compression(false)
            .request_min_compression_size_bytes(COMPRESS_FROM_BYTES)
            .build();
        MetricsTarget {
            client: aws_sdk_cloudwatch::Client::from_conf(config),
        }
    }

    pub async fn send(&self, request: &Request) -> Result<(), SendError> {
        self.client
            .put_metric_data()
            .namespace(&request.namespace)
            .set_metric_data(Some(to_sdk(request)))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| classify(&e))
    }
}

/// Our request as SDK data.
pub fn to_sdk(request: &Request) -> Vec<MetricDatum> {
    request
        .data
        .iter()
        .map(|d| {
            let dimensions = d
                .dimensions
                .iter()
                .map(|(n, v)| Dimension::builder().name(n).value(v).build())
                .collect();
            let builder = MetricDatum::builder()
                .metric_name(&d.name)
                .unit(StandardUnit::from(d.unit.as_str()))
                .set_dimensions(Some(dimensions))
                .timestamp(DateTime::from_millis(d.timestamp_ms as i64))
                .storage_resolution(d.storage_resolution as i32);
            match &d.values {
                DatumValues::Distribution { values, counts } => builder
                    .set_values(Some(values.clone()))
                    .set_counts(Some(counts.clone())),
                DatumValues::Statistics {
                    sample_count,
                    sum,
                    min,
                    max,
                } => builder.statistic_values(
                    StatisticSet::builder()
                        .sample_count(*sample_count)
                        .sum(*sum)
                        .minimum(*min)
                        .maximum(*max)
                        .build(),
                ),
            }
            .build()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::put_metric_data::Datum;
    use aws_sdk_cloudwatch::error::ErrorMetadata;
    use aws_sdk_cloudwatch::operation::put_metric_data::PutMetricDataError;
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;

    fn service_error(status: u16, code: &str) -> SdkError<PutMetricDataError, HttpResponse> {
        let err = PutMetricDataError::generic(ErrorMetadata::builder().code(code).build());
        let raw = HttpResponse::new(
            StatusCode::try_from(status).unwrap(),
            SdkBody::from("error"),
        );
        SdkError::service_error(err, raw)
    }

    #[test]
    fn throttling_and_5xx_are_retried_validation_is_not() {
        let retry = |s, c| matches!(classify(&service_error(s, c)), SendError::Retryable(_));
        assert!(retry(400, "Throttling"));
        assert!(retry(400, "ThrottlingException"));
        assert!(retry(429, "Anything"));
        assert!(retry(500, "InternalServiceFault"));
        assert!(retry(503, "ServiceUnavailable"));
        assert!(!retry(400, "InvalidParameterValue"));
        assert!(!retry(400, "InvalidParameterCombination"));
        assert!(!retry(403, "AccessDenied"));
        let timeout: SdkError<PutMetricDataError, HttpResponse> = SdkError::timeout_error("slow");
        assert!(matches!(classify(&timeout), SendError::Retryable(_)));
        let construction: SdkError<PutMetricDataError, HttpResponse> =
            SdkError::construction_failure("bad input");
        assert!(matches!(classify(&construction), SendError::Permanent(_)));
    }

    #[test]
    fn requests_map_onto_sdk_data() {
        let request = Request {
            namespace: "ns".into(),
            data: vec![
                Datum {
                    name: "m".into(),
                    unit: "Percent".into(),
                    dimensions: vec![("EndpointName".into(), "e".into())],
                    timestamp_ms: 1_700_000_000_123,
                    storage_resolution: 1,
                    values: DatumValues::Distribution {
                        values: vec![1.0, 2.0],
                        counts: vec![3.0, 4.0],
                    },
                },
                Datum {
                    name: "n".into(),
                    unit: "Count".into(),
                    dimensions: vec![],
                    timestamp_ms: 0,
                    storage_resolution: 60,
                    values: DatumValues::Statistics {
                        sample_count: 2.0,
                        sum: 3.0,
                        min: 1.0,
                        max: 2.0,
                    },
                },
            ],
        };
        let data = to_sdk(&request);
        assert_eq!(data[0].metric_name(), Some("m"));
        assert_eq!(data[0].unit(), Some(&StandardUnit::Percent));
        assert_eq!(data[0].values(), &[1.0, 2.0]);
        assert_eq!(data[0].counts(), &[3.0, 4.0]);
        assert_eq!(data[0].storage_resolution(), Some(1));
        assert_eq!(
            data[0].timestamp().map(|t| t.to_millis().unwrap()),
            Some(1_700_000_000_123)
        );
        assert_eq!(data[0].dimensions()[0].name(), Some("EndpointName"));
        let s = data[1].statistic_values().unwrap();
        assert_eq!((s.sample_count(), s.sum()), (Some(2.0), Some(3.0)));
        assert!(data[1].values().is_empty());
    }
}
