//! The front door through the built binary: real HTTP upstreams (in-process hyper servers on
//! 127.0.0.1, and a busybox `httpd` container on the local Docker engine), real clients, and the
//! invocation metrics in the agent's EMF output, counted exactly.
//!
//! The Docker test needs an engine (see tests/containers.rs); `EMA_SKIP_DOCKER_TESTS=1` skips it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "test code: a failed step stops it with its message (Cargo.toml [lints] is for the agent)"
)]

mod common;

use std::convert::Infallible;
use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::agent::{Agent, Logs, Workdir, WAIT_LIMIT};
use common::docker::{docker, docker_ready, engine_socket, image, RemoveOnDrop};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;

const NS: &str = "/aws/sagemaker/Invocations";
const HEADER: &str = "X-Amzn-SageMaker-Inference-Component";
/// The upstream `/slow` answers after this; the agent's response timeout is far shorter.
const SLOW_ANSWER: Duration = Duration::from_secs(20);
const RESPONSE_TIMEOUT_MS: u64 = 300;

type Body = BoxBody<Bytes, Infallible>;

fn full(text: &'static str) -> Body {
    Full::new(Bytes::from_static(text.as_bytes())).boxed()
}

/// An in-process model server. `/stream` sends "first\n", waits for `release`, sends "last\n".
struct Upstream {
    addr: SocketAddr,
    release: Arc<tokio::sync::Notify>,
    /// Connections it accepted.
    accepted: Arc<std::sync::atomic::AtomicUsize>,
}

async fn model(req: Request<Incoming>, release: Arc<tokio::sync::Notify>) -> Response<Body> {
    let status_body = |status: u16, text: &'static str| {
        let mut r = Response::new(full(text));
        *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
        r
    };
    match req.uri().path() {
        "/ok" => status_body(200, "hello\n"),
        "/missing" => status_body(404, "no such thing\n"),
        "/fail" => status_body(500, "model crashed\n"),
        // The request target and Host as the model got them.
        "/target" => {
            let host = req
                .headers()
                .get("host")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_string();
            Response::new(Full::new(Bytes::from(format!("{} {host}", req.uri()))).boxed())
        }
        // Reads the whole request body before answering (its length).
        "/echo" => match req.into_body().collect().await {
            Ok(body) => {
                Response::new(Full::new(Bytes::from(body.to_bytes().len().to_string())).boxed())
            }
            Err(_) => status_body(400, "body broken\n"),
        },
        // Server-Sent Events with a declared length: streamed by its content type.
        "/sse" => {
            let mut r = Response::new(full("data: one\n\n"));
            r.headers_mut()
                .insert("content-type", "text/event-stream".parse().unwrap());
            r
        }
        "/slow" => {
            tokio::time::sleep(SLOW_ANSWER).await;
            status_body(200, "late\n")
        }
        "/stream" => {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(2);
            tokio::spawn(async move {
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from_static(b"first\n"))))
                    .await;
                release.notified().await;
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from_static(b"last\n"))))
                    .await;
            });
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|frame| (frame, rx))
            });
            Response::new(StreamBody::new(stream).boxed())
        }
        _ => status_body(400, "unknown path\n"),
    }
}

async fn start_upstream() -> Upstream {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let release = Arc::new(tokio::sync::Notify::new());
    let r = release.clone();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let r = r.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let r = r.clone();
                    async move { Ok::<_, Infallible>(model(req, r).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Upstream {
        addr,
        release,
        accepted,
    }
}

/// A port nothing listens on (bound, then closed).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The built agent with a front door (its EMF into its folder's file) and its address.
struct FrontDoor {
    agent: Agent,
    addr: SocketAddr,
}

impl FrontDoor {
    fn start(extra: &str, docker: &str) -> FrontDoor {
        let dir = Workdir::new();
        let config = format!(
            "[endpoint]\nname = \"ep\"\ninstance_id = \"test-host\"\n\
             [metrics]\nenhanced = true\npublish_frequency_seconds = 10\nsample_interval_ms = 100\n\
             [output]\nemf_destination = \"{}\"\n\
             [gpu]\nenabled = false\n[admin]\nenabled = false\n{docker}\
             [proxy]\nenabled = true\nlisten = \"127.0.0.1:0\"\nresponse_timeout_ms = {RESPONSE_TIMEOUT_MS}\n\
             instance_count = 2\nmax_request_body_bytes = 1024\n{extra}",
            dir.emf_destination()
        );
        let mut agent = Agent::start(&dir, &config);
        // The address it bound, from its "front door listening" line.
        let addr = agent.front_door_address();
        FrontDoor { agent, addr }
    }

    /// SIGTERM, a clean exit (the partial windows are published); the documents and the logs.
    fn stop(self) -> (Vec<Value>, Logs) {
        let stopped = self.agent.stop().success();
        (stopped.documents(), stopped.logs)
    }
}

fn values(doc: &Value, metric: &str) -> Vec<f64> {
    doc[metric]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_else(|| doc[metric].as_f64().into_iter().collect())
}

/// Every value of `metric` over the invocation documents `which` selects.
fn all(docs: &[Value], which: impl Fn(&Value) -> bool, metric: &str) -> Vec<f64> {
    docs.iter()
        .filter(|d| d["_aws"]["CloudWatchMetrics"][0]["Namespace"] == NS && which(d))
        .flat_map(|d| values(d, metric))
        .collect()
}

fn instance(d: &Value) -> bool {
    d.get("InferenceComponentName").is_none()
}

fn copy_of(component: &'static str) -> impl Fn(&Value) -> bool {
    move |d| d["InferenceComponentName"] == component && d.get("ContainerId").is_some()
}

/// The documents under `{InferenceComponentName}` alone (the component's series).
fn component_only(component: &'static str) -> impl Fn(&Value) -> bool {
    move |d| d["InferenceComponentName"] == component && d.get("ContainerId").is_none()
}

/// The documents under `{EndpointName, VariantName}` alone.
fn endpoint_only(d: &Value) -> bool {
    d.get("InferenceComponentName").is_none() && d.get("InstanceId").is_none()
}

fn sum(v: &[f64]) -> f64 {
    v.iter().sum()
}

/// Every (unit, dimension sets) the invocation documents give `metric`, distinct, in order.
fn declared(docs: &[Value], metric: &str) -> Vec<(String, Value)> {
    let mut found: Vec<(String, Value)> = Vec::new();
    for d in docs {
        let directive = &d["_aws"]["CloudWatchMetrics"][0];
        if directive["Namespace"] != NS {
            continue;
        }
        for m in directive["Metrics"].as_array().unwrap() {
            if m["Name"] == metric {
                let here = (
                    m["Unit"].as_str().unwrap().to_string(),
                    directive["Dimensions"].clone(),
                );
                if !found.contains(&here) {
                    found.push(here);
                }
            }
        }
    }
    assert!(!found.is_empty(), "{metric} never published");
    found.sort_by_key(|(_, sets)| sets.to_string());
    found
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends one request; returns the status and the body.
async fn call(
    client: &Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    path: &str,
    component: Option<&str>,
) -> (u16, String) {
    let mut req = Request::builder().uri(format!("http://{addr}{path}"));
    if let Some(c) = component {
        req = req.header(HEADER, c);
    }
    let response = client
        .request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Raw bytes in, the status line out (for requests no HTTP client would send).
fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT_LIMIT)).unwrap();
    let _ = s.write_all(request);
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(2).any(|w| w == b"\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    text.lines().next().unwrap_or_default().to_string()
}

#[test]
fn answers_faults_and_streams_are_counted_exactly() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let upstream = rt.block_on(start_upstream());
    let gone = closed_port();
    let agent = FrontDoor::start(
        &format!(
            "[[proxy.upstream]]\ncomponent = \"model-a\"\nurl = \"http://{}\"\n\
             [[proxy.upstream]]\ncomponent = \"model-gone\"\nurl = \"http://127.0.0.1:{gone}\"\n",
            upstream.addr
        ),
        "[docker]\nenabled = false\n",
    );
    let addr = agent.addr;
    let a = Some("model-a");
    // Every request below is inside this span, so the front door's totals fit in it.
    let started = Instant::now();
    rt.block_on(async {
        let c = client();
        for _ in 0..5 {
            assert_eq!(call(&c, addr, "/ok", a).await, (200, "hello\n".into()));
        }
        for _ in 0..2 {
            assert_eq!(call(&c, addr, "/missing", a).await.0, 404);
        }
        assert_eq!(call(&c, addr, "/fail", a).await.0, 500);
        assert_eq!(call(&c, addr, "/slow", a).await.0, 504, "timeout");
        assert_eq!(
            call(&c, addr, "/ok", Some("model-gone")).await.0,
            502,
            "refused"
        );
        let (status, message) = call(&c, addr, "/ok", None).await;
        assert_eq!(status, 400, "two components and no header");
        assert!(message.contains(HEADER), "{message}");
        assert_eq!(call(&c, addr, "/ok", Some("nope")).await.0, 404, "unknown");

        // A streamed answer is in flight until its last byte: a request made after its first
        // chunk finds it still there (the copy's concurrency reaches 2).
        let request = Request::builder()
            .uri(format!("http://{addr}/stream"))
            .header(HEADER, "model-a")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = c.request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(
            response.headers().get("transfer-encoding").is_some(),
            "streamed through, not buffered"
        );
        let mut body = response.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(
            &first[..],
            b"first\n",
            "the first chunk arrives before the last is sent"
        );
        assert_eq!(call(&c, addr, "/ok", a).await.0, 200);
        upstream.release.notify_one();
        let rest = body.collect().await.unwrap().to_bytes();
        assert_eq!(&rest[..], b"last\n");
    });
    // Over the body limit (1024 bytes): refused before it reaches the model.
    let big = format!(
        "POST /ok HTTP/1.1\r\nHost: x\r\n{HEADER}: model-a\r\nContent-Length: 2048\r\n\r\n"
    );
    assert!(raw(addr, big.as_bytes()).contains(" 413 "));
    // A chunked body that grows past the limit is cut off on its way to the model.
    let chunk = "a".repeat(800);
    let chunked = format!(
        "POST /ok HTTP/1.1\r\nHost: x\r\n{HEADER}: model-a\r\nTransfer-Encoding: chunked\r\n\r\n\
         320\r\n{chunk}\r\n320\r\n{chunk}\r\n0\r\n\r\n"
    );
    let status = raw(addr, chunked.as_bytes());
    assert!(status.contains(" 413 "), "{status}");
    // Malformed, and a head over the limit: hyper answers, nothing reaches a model.
    assert!(raw(addr, b"NOT HTTP AT ALL\r\n\r\n").contains(" 400 "));
    let huge = format!(
        "GET /ok HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100_000)
    );
    assert!(raw(addr, huge.as_bytes()).contains(" 431 "));
    // The agent still serves after all that.
    rt.block_on(async { assert_eq!(call(&client(), addr, "/ok", a).await.0, 200) });
    let client_total_us = started.elapsed().as_secs_f64() * 1e6;

    let (docs, logs) = agent.stop();
    // Invocations: what a copy was asked to answer. 5 ok, 2 missing, fail, slow, gone,
    // stream, ok during the stream, ok at the end. The front door's own answers (no header,
    // unknown, too large twice, malformed, head too large) are not: counted apart.
    let invocations = all(&docs, instance, "Invocations");
    assert_eq!(invocations.len(), 13, "{docs:?}");
    assert!(invocations.iter().all(|v| *v == 1.0));
    assert_eq!(
        sum(&all(&docs, instance, "Invocation4XXErrors")),
        2.0,
        "the model's 404s"
    );
    assert_eq!(all(&docs, instance, "Invocation4XXErrors").len(), 13);
    assert_eq!(sum(&all(&docs, instance, "Invocation5XXErrors")), 3.0);
    assert_eq!(
        sum(&all(&docs, instance, "InvocationModelErrors")),
        5.0,
        "404 x2, 500, timeout, refused"
    );
    assert_eq!(sum(&all(&docs, instance, "InvocationsPerInstance")), 6.5);
    assert_eq!(
        logs.final_counter("proxy_bad_requests"),
        6,
        "400, 404, 413 x2, 400, 431"
    );
    assert_eq!(logs.final_counter("proxy_upstream_timeouts"), 1);
    assert_eq!(logs.final_counter("proxy_upstream_errors"), 1);

    let copy = copy_of("model-a");
    assert_eq!(all(&docs, &copy, "Invocations").len(), 12);
    assert_eq!(sum(&all(&docs, &copy, "InvocationModelErrors")), 4.0);
    let gone_copy = copy_of("model-gone");
    assert_eq!(all(&docs, &gone_copy, "Invocations").len(), 1);
    assert_eq!(sum(&all(&docs, &gone_copy, "InvocationModelErrors")), 1.0);
    let component = component_only("model-a");
    let per_copy = all(&docs, &component, "InvocationsPerCopy");
    assert_eq!(per_copy.len(), 12);
    assert!(per_copy.iter().all(|v| *v == 1.0), "one copy: 1 each");
    assert!(all(&docs, &copy, "InvocationsPerCopy").is_empty());
    let copy_doc = docs
        .iter()
        .find(|d| copy(d) && d.get("Invocations").is_some())
        .unwrap();
    assert_eq!(copy_doc["ContainerId"], upstream.addr.to_string());
    assert_eq!(copy_doc["EndpointName"], "ep");
    assert_eq!(copy_doc["InstanceId"], "test-host");

    // Concurrency: one point per 10 s period (the run is shorter than a few periods), the
    // most in flight at once: the stream and the request made during it.
    let per_model = all(&docs, endpoint_only, "ConcurrentRequestsPerModel");
    assert!((1..=4).contains(&per_model.len()), "{per_model:?}");
    assert_eq!(per_model.iter().cloned().fold(0.0, f64::max), 2.0);
    let per_copy_concurrency = all(&docs, &component, "ConcurrentRequestsPerCopy");
    assert_eq!(
        per_copy_concurrency.iter().cloned().fold(0.0, f64::max),
        2.0,
        "2 / 1 copy"
    );
    assert!(all(&docs, &copy, "ConcurrentRequestsPerCopy").is_empty());

    // The one streamed answer (chunked): its first chunk came before its end.
    assert_eq!(all(&docs, endpoint_only, "FirstChunkLatency").len(), 1);
    assert_eq!(all(&docs, endpoint_only, "MidStreamErrors"), vec![0.0]);

    // Latencies: every invocation has both; the timeout waited at least its limit; and the
    // front door's total never exceeds what the clients measured (1 % quantisation allowed).
    let model = all(&docs, instance, "ModelLatency");
    let overhead = all(&docs, instance, "OverheadLatency");
    assert_eq!(model.len(), 13);
    assert_eq!(overhead.len(), 13);
    assert!(overhead.iter().all(|v| *v >= 0.0));
    let longest = model.iter().cloned().fold(0.0, f64::max);
    assert!(
        longest >= RESPONSE_TIMEOUT_MS as f64 * 1000.0 * 0.99,
        "{longest}"
    );
    assert!(
        sum(&model) + sum(&overhead) <= client_total_us * 1.01 + 2.0 * 13.0,
        "{} + {} > {client_total_us}",
        sum(&model),
        sum(&overhead)
    );
    // Units and dimension sets: the spec's invocation table.
    let endpoint = serde_json::json!([["EndpointName", "VariantName"]]);
    let instance_sets = serde_json::json!([
        ["EndpointName", "VariantName"],
        ["EndpointName", "VariantName", "InstanceId"]
    ]);
    let component_sets = serde_json::json!([["InferenceComponentName"]]);
    let copy_sets = serde_json::json!([
        ["InferenceComponentName"],
        [
            "EndpointName",
            "VariantName",
            "InstanceId",
            "InferenceComponentName",
            "ContainerId"
        ]
    ]);
    let per_request: Vec<&Value> = vec![&instance_sets, &copy_sets];
    let instance_only: Vec<&Value> = vec![&instance_sets];
    let endpoint_sets: Vec<&Value> = vec![&endpoint];
    let component_set: Vec<&Value> = vec![&component_sets];
    for (metric, unit, sets) in [
        ("Invocations", "None", &per_request),
        ("Invocation4XXErrors", "None", &per_request),
        ("Invocation5XXErrors", "None", &per_request),
        ("InvocationModelErrors", "None", &per_request),
        ("ModelLatency", "Microseconds", &per_request),
        ("OverheadLatency", "Microseconds", &per_request),
        ("InvocationsPerInstance", "None", &instance_only),
        ("ConcurrentRequestsPerModel", "Count", &endpoint_sets),
        ("FirstChunkLatency", "Microseconds", &endpoint_sets),
        ("FirstChunkModelLatency", "Microseconds", &endpoint_sets),
        ("FirstChunkOverheadLatency", "Microseconds", &endpoint_sets),
        ("MidStreamErrors", "Count", &endpoint_sets),
        ("InvocationsPerCopy", "Count", &component_set),
        ("ConcurrentRequestsPerCopy", "Count", &component_set),
    ] {
        let mut want: Vec<(String, Value)> = sets
            .iter()
            .map(|sets| (unit.to_string(), (*sets).clone()))
            .collect();
        want.sort_by_key(|(_, sets)| sets.to_string());
        assert_eq!(declared(&docs, metric), want, "{metric}");
    }
}

#[test]
fn many_concurrent_clients_over_keep_alive_and_h2c_are_all_counted() {
    const CLIENTS: usize = 32;
    const EACH: usize = 25;
    const H2C: usize = 10;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let upstream = rt.block_on(start_upstream());
    let agent = FrontDoor::start(
        &format!(
            "[[proxy.upstream]]\ncomponent = \"only\"\nurl = \"http://{}\"\n",
            upstream.addr
        ),
        "[docker]\nenabled = false\n",
    );
    let addr = agent.addr;
    rt.block_on(async {
        let c = client();
        let mut tasks = Vec::new();
        for _ in 0..CLIENTS {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..EACH {
                    // No header: the endpoint's single component.
                    assert_eq!(call(&c, addr, "/ok", None).await.0, 200);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let h2 = h2c_client();
        // A streamed (chunked upstream) answer over h2c too.
        let response = h2c_get(&h2, addr, "/stream").await;
        assert_eq!(response.status(), 200);
        upstream.release.notify_one();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"first\nlast\n");
        for _ in 0..H2C {
            let response = h2c_get(&h2, addr, "/ok").await;
            assert_eq!(response.version(), hyper::Version::HTTP_2);
            assert_eq!(response.status(), 200);
        }
    });
    let (docs, _) = agent.stop();
    let total = CLIENTS * EACH + H2C + 1;
    assert_eq!(all(&docs, instance, "Invocations").len(), total);
    assert_eq!(all(&docs, copy_of("only"), "Invocations").len(), total);
    assert_eq!(sum(&all(&docs, instance, "InvocationModelErrors")), 0.0);
    assert_eq!(sum(&all(&docs, instance, "Invocation4XXErrors")), 0.0);
    let concurrency = all(&docs, component_only("only"), "ConcurrentRequestsPerCopy");
    let max = concurrency.iter().cloned().fold(0.0, f64::max);
    assert!((1.0..=CLIENTS as f64).contains(&max), "{max}");
    assert_eq!(all(&docs, instance, "ModelLatency").len(), total);
}

#[test]
fn a_container_found_through_its_label_is_reached_and_measured() {
    if !docker_ready() {
        return;
    }
    let image = image();
    let component = format!("proxy-test-{}", std::process::id());
    // busybox httpd serves a file and a CGI script on 8081, which the port label announces.
    let id = docker(&[
        "run",
        "-d",
        "--label",
        "ema-test=1",
        "--label",
        &format!("sagemaker.inference-component={component}"),
        "--label",
        "endpoint-metrics-agent.upstream-port=8081",
        &image,
        "sh",
        "-c",
        "mkdir -p /www/cgi-bin && echo ping > /www/ping && \
         printf '#!/bin/sh\\necho Status: 503\\necho\\necho busy\\n' > /www/cgi-bin/busy && \
         chmod +x /www/cgi-bin/busy && exec httpd -f -p 8081 -h /www",
    ])
    .unwrap();
    let _container = RemoveOnDrop(vec![id.clone()]);
    // Discovery can see the container before httpd listens (a refused connection, 502, would
    // then be a model error): wait for httpd inside the container first.
    let deadline = Instant::now() + WAIT_LIMIT;
    let probe = [
        "exec",
        &id,
        "busybox",
        "wget",
        "-q",
        "-O",
        "-",
        "http://127.0.0.1:8081/ping",
    ];
    while docker(&probe).as_deref() != Ok("ping") {
        assert!(
            Instant::now() < deadline,
            "httpd never answered in the container"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let socket = engine_socket();
    let agent = FrontDoor::start("", &format!("[docker]\nsocket = \"{socket}\"\n"));
    let addr = agent.addr;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (not_yet, ok) = rt.block_on(async {
        let c = client();
        let deadline = Instant::now() + WAIT_LIMIT;
        let mut not_yet = 0usize;
        // Until discovery has seen it, the component is unknown (404) or there is none (503).
        loop {
            let (status, body) = call(&c, addr, "/ping", Some(&component)).await;
            if status == 200 {
                assert_eq!(body, "ping\n");
                break;
            }
            assert!(matches!(status, 404 | 503), "{status} {body}");
            assert!(Instant::now() < deadline, "container never reachable");
            not_yet += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for _ in 0..4 {
            assert_eq!(call(&c, addr, "/ping", Some(&component)).await.0, 200);
        }
        let (status, body) = call(&c, addr, "/cgi-bin/busy", Some(&component)).await;
        assert_eq!((status, body.as_str()), (503, "busy\n"));
        (not_yet, 5usize)
    });
    let (docs, logs) = agent.stop();
    let short = &id[..12];
    let copy = |d: &Value| d["InferenceComponentName"] == *component && d["ContainerId"] == short;
    assert_eq!(
        all(&docs, copy, "Invocations").len(),
        ok + 1,
        "{docs:?}\n{}",
        logs.text()
    );
    assert_eq!(sum(&all(&docs, copy, "InvocationModelErrors")), 1.0);
    assert_eq!(sum(&all(&docs, copy, "Invocation5XXErrors")), 1.0);
    // Before discovery saw it, the front door answered 404 or 503 itself: not invocations.
    assert_eq!(
        logs.final_counter("proxy_bad_requests") + logs.final_counter("proxy_unavailable"),
        not_yet as u64
    );
    assert_eq!(all(&docs, instance, "Invocations").len(), ok + 1);
}

/// A listener whose accept queue is full: the kernel drops further SYNs, so a connect hangs.
/// Returns its port and the sockets holding the queue (close them to free it).
fn never_accepting() -> (u16, Vec<std::net::TcpStream>, std::net::TcpListener) {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on a fresh descriptor we own; checked below.
    let listener = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        assert_eq!(
            libc::bind(fd, &addr as *const _ as *const libc::sockaddr, len),
            0
        );
        // Backlog 0: one connection fills the queue.
        assert_eq!(libc::listen(fd, 0), 0);
        std::net::TcpListener::from_raw_fd(fd)
    };
    let port = listener.local_addr().unwrap().port();
    let mut held = Vec::new();
    for _ in 0..2 {
        if let Ok(s) = std::net::TcpStream::connect_timeout(
            &([127, 0, 0, 1], port).into(),
            Duration::from_millis(200),
        ) {
            held.push(s);
        }
    }
    (port, held, listener)
}

#[test]
fn a_copy_that_never_accepts_gives_504_after_the_connect_timeout() {
    let (port, _held, _listener) = never_accepting();
    let agent = FrontDoor::start(
        &format!(
            "connect_timeout_ms = 200\n\
             [[proxy.upstream]]\ncomponent = \"stuck\"\nurl = \"http://127.0.0.1:{port}\"\n"
        ),
        "[docker]\nenabled = false\n",
    );
    let addr = agent.addr;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (status, body) = rt.block_on(async { call(&client(), addr, "/", None).await });
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("accept"), "{body}");
    let (docs, logs) = agent.stop();
    assert_eq!(sum(&all(&docs, instance, "Invocation5XXErrors")), 1.0);
    assert_eq!(sum(&all(&docs, instance, "InvocationModelErrors")), 1.0);
    assert_eq!(
        logs.counted_warnings("proxy_upstream_timeouts").len(),
        1,
        "{}",
        logs.text()
    );
    assert_eq!(logs.final_counter("proxy_upstream_timeouts"), 1);
}

#[test]
fn one_request_after_another_reuses_one_upstream_connection() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let upstream = rt.block_on(start_upstream());
    let agent = FrontDoor::start(
        &format!(
            "[[proxy.upstream]]\ncomponent = \"model-a\"\nurl = \"http://{}\"\n",
            upstream.addr
        ),
        "[docker]\nenabled = false\n",
    );
    let addr = agent.addr;
    let a = Some("model-a");
    rt.block_on(async {
        let c = client();
        // 200, 404 and 500 answers, and a streamed one read to its end: each hands its
        // connection back for the next.
        for _ in 0..3 {
            assert_eq!(call(&c, addr, "/ok", a).await, (200, "hello\n".into()));
            assert_eq!(call(&c, addr, "/missing", a).await.0, 404);
            assert_eq!(call(&c, addr, "/fail", a).await.0, 500);
            upstream.release.notify_one();
            assert_eq!(
                call(&c, addr, "/stream", a).await,
                (200, "first\nlast\n".into())
            );
        }
        // The model gets origin form; the client's Host passes through, and h2c (no Host)
        // gets the copy's address.
        assert_eq!(
            call(&c, addr, "/target?q=1", a).await,
            (200, format!("/target?q=1 {addr}"))
        );
        let h2 = h2c_client();
        let response = h2c_get(&h2, addr, "/target?q=2").await;
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            String::from_utf8_lossy(&body),
            format!("/target?q=2 {}", upstream.addr)
        );
    });
    assert_eq!(
        upstream.accepted.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "14 requests one after another, one upstream connection"
    );
    let (docs, _) = agent.stop();
    assert_eq!(sum(&all(&docs, instance, "Invocations")), 14.0);
}

/// A client that speaks HTTP/2 without TLS (h2c) from the first byte.
fn h2c_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

async fn h2c_get(
    client: &Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    path: &str,
) -> Response<Incoming> {
    let request = Request::builder()
        .uri(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    client.request(request).await.unwrap()
}

/// A model server that starts a chunked answer, sends one chunk and drops the connection.
async fn start_breaking_upstream() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nfirst\n\r\n",
                    )
                    .await;
                let _ = stream.flush().await;
                // Dropped here: the answer ends without its last chunk.
            });
        }
    });
    addr
}

#[test]
fn streamed_answers_give_first_chunk_latencies_and_mid_stream_errors() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let upstream = rt.block_on(start_upstream());
    let breaking = rt.block_on(start_breaking_upstream());
    let agent = FrontDoor::start(
        &format!(
            "[[proxy.upstream]]\ncomponent = \"model-a\"\nurl = \"http://{}\"\n\
             [[proxy.upstream]]\ncomponent = \"model-broken\"\nurl = \"http://{breaking}\"\n",
            upstream.addr
        ),
        "[docker]\nenabled = false\n",
    );
    let addr = agent.addr;
    let a = Some("model-a");
    rt.block_on(async {
        let c = client();
        // Not streamed: a declared length.
        assert_eq!(call(&c, addr, "/ok", a).await, (200, "hello\n".into()));
        // Streamed: chunked (the model holds its last chunk until released).
        let request = Request::builder()
            .uri(format!("http://{addr}/stream"))
            .header(HEADER, "model-a")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let mut body = c.request(request).await.unwrap().into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"first\n");
        tokio::time::sleep(Duration::from_millis(50)).await;
        upstream.release.notify_one();
        assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"last\n");
        // Streamed: Server-Sent Events, even with a declared length.
        assert_eq!(
            call(&c, addr, "/sse", a).await,
            (200, "data: one\n\n".into())
        );
        // Streamed over h2c.
        let h2 = h2c_client();
        upstream.release.notify_one();
        let request = Request::builder()
            .uri(format!("http://{addr}/stream"))
            .header(HEADER, "model-a")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = h2.request(request).await.unwrap();
        assert_eq!(response.version(), hyper::Version::HTTP_2);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"first\nlast\n");
        // Streamed, broken off by the model after its first chunk.
        let request = Request::builder()
            .uri(format!("http://{addr}/"))
            .header(HEADER, "model-broken")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = c.request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(
            response.into_body().collect().await.is_err(),
            "the client sees the cut"
        );
    });
    let (docs, logs) = agent.stop();
    assert_eq!(all(&docs, instance, "Invocations").len(), 5);
    let first = all(&docs, endpoint_only, "FirstChunkLatency");
    let first_model = all(&docs, endpoint_only, "FirstChunkModelLatency");
    let first_overhead = all(&docs, endpoint_only, "FirstChunkOverheadLatency");
    assert_eq!(first.len(), 4, "chunked, SSE, h2c, broken: {docs:?}");
    assert_eq!(first_model.len(), 4);
    assert_eq!(first_overhead.len(), 4);
    assert!(first_overhead.iter().all(|v| *v >= 0.0));
    // The model's part is within the total (1 % quantisation each).
    assert!(
        sum(&first_model) <= sum(&first) * 1.02,
        "{first_model:?} {first:?}"
    );
    // The chunked stream's first chunk came well before its end (held 50 ms by the test).
    let longest_model = all(&docs, instance, "ModelLatency")
        .into_iter()
        .fold(0.0, f64::max);
    assert!(first_model.iter().all(|v| *v < longest_model));
    let mid = all(&docs, endpoint_only, "MidStreamErrors");
    assert_eq!(
        (mid.len(), sum(&mid)),
        (4, 1.0),
        "one of four streams broke"
    );
    assert_eq!(sum(&all(&docs, instance, "InvocationModelErrors")), 1.0);
    assert_eq!(
        sum(&all(
            &docs,
            copy_of("model-broken"),
            "InvocationModelErrors"
        )),
        1.0
    );
    assert_eq!(logs.final_counter("proxy_upstream_errors"), 1);
}

/// Raw bytes in, then the status line the front door answers (waits for it).
fn send_part_then_read(addr: SocketAddr, part: &[u8]) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT_LIMIT)).unwrap();
    s.write_all(part).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(2).any(|w| w == b"\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn client_faults_are_counted_apart_and_are_never_model_errors() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let upstream = rt.block_on(start_upstream());
    let agent = FrontDoor::start(
        &format!(
            "[[proxy.upstream]]\ncomponent = \"model-a\"\nurl = \"http://{}\"\n",
            upstream.addr
        ),
        "[docker]\nenabled = false\n",
    );
    let addr = agent.addr;
    let head = |framing: &str| {
        format!("POST /echo HTTP/1.1\r\nHost: x\r\n{HEADER}: model-a\r\n{framing}\r\n\r\n")
    };
    // 1. Bad framing: a chunk size that is not hex. Whatever the client is told, it is not
    // the model's 502.
    let broken = format!(
        "{}5\r\nhello\r\nZZZ\r\n",
        head("Transfer-Encoding: chunked")
    );
    let status = send_part_then_read(addr, broken.as_bytes());
    assert!(
        !status.contains(" 502 ") && !status.contains(" 504 "),
        "{status}"
    );
    // 2. Leaving mid-body: 10 of 100 declared bytes, then the connection closes.
    {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(format!("{}0123456789", head("Content-Length: 100")).as_bytes())
            .unwrap();
        // Closing both ways: the front door sees the body end early.
    }
    // 3. A stalled upload: 10 of 100 bytes, then nothing; the front door waits on the client
    // past the response timeout (300 ms) and answers 408.
    let stalled = format!("{}0123456789", head("Content-Length: 100"));
    let status = send_part_then_read(addr, stalled.as_bytes());
    assert!(status.contains(" 408 "), "{status}");
    // And a whole upload to the same model, answered.
    let whole = format!("{}0123456789", head("Content-Length: 10"));
    assert!(send_part_then_read(addr, whole.as_bytes()).contains(" 200 "));
    // The left connection is noticed by the time the front door stops; wait for its count
    // in the log rather than a fixed time.
    let deadline = Instant::now() + WAIT_LIMIT;
    while !agent.agent.logs().text().contains("proxy_client_left") {
        assert!(Instant::now() < deadline, "{}", agent.agent.logs().text());
        std::thread::sleep(Duration::from_millis(50));
    }
    let (docs, logs) = agent.stop();
    let log = logs.text();
    assert_eq!(
        all(&docs, instance, "Invocations"),
        vec![1.0],
        "only the whole upload"
    );
    for metric in [
        "InvocationModelErrors",
        "Invocation4XXErrors",
        "Invocation5XXErrors",
    ] {
        assert_eq!(all(&docs, instance, metric), vec![0.0], "{metric}");
    }
    assert_eq!(logs.final_counter("proxy_client_bad_framing"), 1, "{log}");
    assert_eq!(logs.final_counter("proxy_client_left"), 1, "{log}");
    assert_eq!(logs.final_counter("proxy_client_stalled"), 1, "{log}");
    assert_eq!(logs.final_counter("proxy_upstream_errors"), 0, "{log}");
    assert_eq!(logs.final_counter("proxy_upstream_timeouts"), 0, "{log}");
    assert_eq!(
        logs.final_counter("proxy_bad_requests"),
        0,
        "each fault counted once: {log}"
    );
}

#[test]
fn a_component_without_a_reachable_copy_counts_no_capacity_failures() {
    if docker(&["version", "--format", "{{.Server.Version}}"]).is_err() {
        if std::env::var("EMA_SKIP_DOCKER_TESTS").as_deref() == Ok("1") {
            eprintln!("SKIPPED (EMA_SKIP_DOCKER_TESTS=1): no Docker engine");
            return;
        }
        panic!("no Docker engine; start one, or set EMA_SKIP_DOCKER_TESTS=1 to skip");
    }
    let image =
        std::env::var("EMA_TEST_IMAGE").unwrap_or_else(|_| "ema-test-busybox:latest".into());
    let component = format!("no-capacity-{}", std::process::id());
    // Discovered through its label, but on no network: no copy the front door can reach.
    let id = docker(&[
        "run",
        "-d",
        "--network",
        "none",
        "--label",
        "ema-test=1",
        "--label",
        &format!("sagemaker.inference-component={component}"),
        &image,
        "sleep",
        "600",
    ])
    .unwrap();
    let _container = RemoveOnDrop(vec![id.clone()]);
    let socket = engine_socket();
    let agent = FrontDoor::start("", &format!("[docker]\nsocket = \"{socket}\"\n"));
    let addr = agent.addr;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let failures = rt.block_on(async {
        let c = client();
        let deadline = Instant::now() + WAIT_LIMIT;
        // Until discovery has seen it, nothing at all runs here (503 of another kind).
        loop {
            let (status, body) = call(&c, addr, "/", Some(&component)).await;
            assert_eq!(status, 503, "{body}");
            if body.contains("has no copy") {
                break;
            }
            assert!(Instant::now() < deadline, "never discovered: {body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for _ in 0..3 {
            let (status, body) = call(&c, addr, "/", Some(&component)).await;
            assert_eq!(
                (status, body.contains("has no copy")),
                (503, true),
                "{body}"
            );
        }
        4.0
    });
    let (docs, logs) = agent.stop();
    let which =
        |d: &Value| d["InferenceComponentName"] == *component && d.get("ContainerId").is_none();
    assert_eq!(
        sum(&all(&docs, which, "NoCapacityInvocationFailures")),
        failures,
        "{docs:?}"
    );
    assert_eq!(
        declared(&docs, "NoCapacityInvocationFailures"),
        vec![(
            "Count".into(),
            serde_json::json!([["InferenceComponentName"]])
        )]
    );
    assert!(
        all(&docs, instance, "Invocations").is_empty(),
        "not invocations"
    );
    assert!(logs.final_counter("proxy_unavailable") >= 4);
}
