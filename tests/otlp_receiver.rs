//! The OTLP tests' receiver (`scripts/otlp-receiver.py`, tests/common/otlp.rs) proved before
//! any test trusts it: its self-test (requests built with the official opentelemetry-proto
//! classes and signed with botocore), and the Rust harness reading back what it recorded. Needs
//! the venv of `scripts/setup/otlp.sh`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "test code: a failed step stops it with its message (Cargo.toml [lints] is for the agent)"
)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::otlp::{venv_python, Credentials, Options, OtlpReceiver};

#[test]
fn the_receiver_passes_its_self_test() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/otlp-receiver-selftest.py");
    let out = Command::new(venv_python())
        .arg(&script)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "the receiver's self-test failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("otlp-receiver self-test passed"),
        "{stdout}"
    );
}

#[test]
fn the_harness_reads_back_accepted_and_refused_requests_and_switches_modes() {
    let rx = OtlpReceiver::start(Options::default());
    assert!(rx.url().starts_with("http://127.0.0.1:") && rx.url().ends_with("/v1/metrics"));

    assert_eq!(post(rx.address(), &gauge_request("up", 1.5)), 200);
    rx.set_mode("503 retry-after=3");
    assert_eq!(post(rx.address(), &gauge_request("up", 2.5)), 503);

    // `hang` holds a request until the mode changes, then answers it as the new mode says.
    rx.set_mode("hang");
    let address = rx.address();
    let held = std::thread::spawn(move || post(address, &gauge_request("up", 3.5)));
    let deadline = Instant::now() + Duration::from_secs(10);
    while rx.held() != 1 {
        assert!(Instant::now() < deadline, "the request was never held");
        std::thread::sleep(Duration::from_millis(20));
    }
    rx.set_mode("ok");
    assert_eq!(held.join().unwrap(), 200);

    let requests = rx.wait_for("three records", |r| (r.len() == 3).then(|| r.to_vec()));
    let statuses: Vec<_> = requests.iter().map(|r| r["status"].clone()).collect();
    assert_eq!(statuses, [200, 503, 200], "{requests:?}");
    assert_eq!(requests[1]["fault"], "503");
    assert_eq!(requests[2]["fault"], "hang");
    assert!(requests.iter().all(|r| r["sigv4"] == "unsigned"));
    assert_eq!(rx.accepted_count(), 2);

    let points = rx.accepted_points();
    let values: Vec<_> = points
        .iter()
        .map(|p| p["value"].as_f64().unwrap())
        .collect();
    assert_eq!(values, [1.5, 3.5], "{points:?}");
    let p = &points[0];
    assert_eq!(p["metric"], "up");
    assert_eq!(p["type"], "gauge");
    assert_eq!(p["value_type"], "double");
    assert_eq!(p["time_unix_nano"], 1_700_000_000_000_000_000u64);
    assert_eq!(p["temporality"], serde_json::Value::Null);
}

#[test]
fn a_receiver_with_credentials_refuses_an_unsigned_request() {
    let rx = OtlpReceiver::start(Options {
        sigv4: Some(Credentials::new("AKIDTEST", "secret").with_session_token("token")),
        region: "eu-west-1".into(),
        ..Options::default()
    });
    assert_eq!(post(rx.address(), &gauge_request("up", 1.0)), 403);
    let requests = rx.wait_for("one record", |r| (!r.is_empty()).then(|| r.to_vec()));
    assert_eq!(requests[0]["sigv4"], "unsigned");
    assert_eq!(
        requests[0]["point_count"], 1,
        "a refused request is still decoded"
    );
    assert!(rx.accepted_points().is_empty());
    assert_eq!(rx.accepted_count(), 0);
}

#[test]
fn a_request_signed_by_the_rust_sdk_signer_verifies_and_an_altered_one_does_not() {
    let credentials = Credentials::new("AKIDRUST", "rust-secret").with_session_token("rust-token");
    let rx = OtlpReceiver::start(Options {
        sigv4: Some(credentials.clone()),
        region: "us-west-2".into(),
        ..Options::default()
    });
    let body = gauge_request("up", 1.0);

    let headers = sign(rx.address(), &body, &credentials, "us-west-2");
    assert_eq!(post_with(rx.address(), &body, &headers), 200);
    let other = gauge_request("up", 2.0);
    assert_eq!(post_with(rx.address(), &other, &headers), 403);
    let wrong = Credentials::new("AKIDRUST", "another-secret").with_session_token("rust-token");
    let headers = sign(rx.address(), &body, &wrong, "us-west-2");
    assert_eq!(post_with(rx.address(), &body, &headers), 403);

    let requests = rx.wait_for("three records", |r| (r.len() == 3).then(|| r.to_vec()));
    let verdicts: Vec<_> = requests
        .iter()
        .map(|r| r["sigv4"].as_str().unwrap())
        .collect();
    assert_eq!(verdicts[0], "ok", "{requests:?}");
    assert!(
        verdicts[1].starts_with("mismatch: signature differs"),
        "{verdicts:?}"
    );
    assert!(
        verdicts[2].starts_with("mismatch: signature differs"),
        "{verdicts:?}"
    );
    let authorization = requests[0]["headers"]["authorization"].as_str().unwrap();
    println!("aws-sigv4 signed: {authorization}");
    assert!(authorization.contains("/us-west-2/monitoring/aws4_request"));
}

/// The headers to send `body` with, signed by aws-sigv4 (the signing crate the SDK uses) with
/// its default settings, for the service `monitoring`.
fn sign(
    address: SocketAddr,
    body: &[u8],
    credentials: &Credentials,
    region: &str,
) -> Vec<(String, String)> {
    use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
    let identity = aws_credential_types::Credentials::new(
        &credentials.access_key_id,
        &credentials.secret_access_key,
        credentials.session_token.clone(),
        None,
        "test",
    )
    .into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("monitoring")
        .time(std::time::SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let mut headers = vec![
        ("host".to_string(), address.to_string()),
        (
            "content-type".to_string(),
            "application/x-protobuf".to_string(),
        ),
    ];
    let signable = SignableRequest::new(
        "POST",
        format!("http://{address}/v1/metrics"),
        headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        SignableBody::Bytes(body),
    )
    .unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    headers.extend(
        instructions
            .headers()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    headers
}

/// An ExportMetricsServiceRequest with one gauge point (`as_double`), encoded by hand: this
/// checks the harness's plumbing; the self-test checks decoding with the official classes.
fn gauge_request(name: &str, value: f64) -> Vec<u8> {
    fn field(tag: u8, bytes: &[u8]) -> Vec<u8> {
        assert!(bytes.len() < 128, "one-byte lengths only");
        [&[tag, bytes.len() as u8][..], bytes].concat()
    }
    let mut point = vec![0x19]; // time_unix_nano, fixed64
    point.extend(1_700_000_000_000_000_000u64.to_le_bytes());
    point.push(0x21); // as_double, fixed64
    point.extend(value.to_le_bytes());
    let gauge = field(0x0a, &point); // Gauge.data_points
    let metric = [field(0x0a, name.as_bytes()), field(0x2a, &gauge)].concat(); // name, gauge
    let scope_metrics = field(0x12, &metric); // ScopeMetrics.metrics
    let resource_metrics = field(0x12, &scope_metrics); // ResourceMetrics.scope_metrics
    field(0x0a, &resource_metrics) // ExportMetricsServiceRequest.resource_metrics
}

/// POSTs an uncompressed protobuf body to /v1/metrics; the answer's status.
fn post(address: SocketAddr, body: &[u8]) -> u16 {
    let headers = [
        ("host".to_string(), address.to_string()),
        (
            "content-type".to_string(),
            "application/x-protobuf".to_string(),
        ),
    ];
    post_with(address, body, &headers)
}

/// POSTs `body` to /v1/metrics with these headers (Host and Content-Type among them) and its
/// length; the answer's status.
fn post_with(address: SocketAddr, body: &[u8], headers: &[(String, String)]) -> u16 {
    let mut conn = TcpStream::connect(address).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut head = String::from("POST /v1/metrics HTTP/1.1\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let length = body.len();
    head.push_str(&format!(
        "Content-Length: {length}\r\nConnection: close\r\n\r\n"
    ));
    conn.write_all(head.as_bytes()).unwrap();
    conn.write_all(body).unwrap();
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).unwrap();
    let text = String::from_utf8_lossy(&answer);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"))
}
