//! Clients of LocalStack's CloudWatch and CloudWatch Logs (`scripts/setup/localstack.sh`), for
//! the tests that read back what the agent published.

use aws_sdk_cloudwatch::config::{BehaviorVersion, Credentials, Region};

/// LocalStack's address: `AWS_ENDPOINT_URL`, else its default.
pub fn endpoint_url() -> String {
    std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| "http://127.0.0.1:4566".into())
}

/// The SDK's HTTP client with rustls on ring, as the agent builds it.
fn http_client() -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https()
}

pub fn cloudwatch() -> aws_sdk_cloudwatch::Client {
    let config = aws_sdk_cloudwatch::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint_url())
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .http_client(http_client())
        .build();
    aws_sdk_cloudwatch::Client::from_conf(config)
}

pub fn logs() -> aws_sdk_cloudwatchlogs::Client {
    let config = aws_sdk_cloudwatchlogs::Config::builder()
        .behavior_version(aws_sdk_cloudwatchlogs::config::BehaviorVersion::latest())
        .region(aws_sdk_cloudwatchlogs::config::Region::new("us-east-1"))
        .endpoint_url(endpoint_url())
        .credentials_provider(aws_sdk_cloudwatchlogs::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .http_client(http_client())
        .build();
    aws_sdk_cloudwatchlogs::Client::from_conf(config)
}
