#!/usr/bin/env python3
"""Proves scripts/otlp-receiver.py before any test trusts it: starts it, sends it requests
built with the official classes (opentelemetry-proto) and signed with botocore's SigV4 signer,
and checks what it answered and recorded. tests/otlp_receiver.rs runs this in CI.

    .otlp/venv/bin/python scripts/otlp-receiver-selftest.py     # after scripts/setup/otlp.sh

(a) a gzip protobuf request with a gauge, a delta monotonic sum and an explicit-bucket histogram,
    signed: 200, "sigv4": "ok", every recorded field as sent;
(b) the same with a signed header altered after signing, with the body re-compressed, unsigned,
    and signed 10 minutes ago: 403 with "mismatch: ...", "unsigned" or "expired";
(c) a garbage body: 400; a wrong content type: 415; unknown fields: a warning; a body past the
    cap: 413;
(d) each fault mode (503 with Retry-After, 429, 500, 400, close, hang released by a mode change,
    hang left by its client, hang past its maximum), and /control/count.
Every wait is bounded; a failed check exits 1 with the receiver's records.
"""
import datetime
import gzip
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

import botocore.auth
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2 as m
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

HERE = os.path.dirname(os.path.abspath(__file__))
RECEIVER = os.path.join(HERE, "otlp-receiver.py")
KEY, SECRET, TOKEN = "AKIDSELFTEST", "selftest-secret", "selftest-session-token"
REGION, SERVICE = "us-west-2", "monitoring"
START_LIMIT_S = 30
WAIT_LIMIT_S = 10
T0 = 1_700_000_000_000_000_000
T1 = T0 + 60_000_000_000


class Failed(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failed(what)


def kv(key, **value):
    return KeyValue(key=key, value=AnyValue(**value))


def sample_request():
    """A gauge (double, with a string and an int attribute), a delta monotonic sum (int) and a
    delta explicit-bucket histogram, under one resource and scope."""
    attrs = [kv("EndpointName", string_value="ep-1"), kv("gpu", int_value=3)]
    gauge = m.Metric(
        name="GPUUtilization",
        unit="%",
        description="GPU busy",
        gauge=m.Gauge(
            data_points=[
                m.NumberDataPoint(attributes=attrs, time_unix_nano=T1, as_double=87.5),
            ]
        ),
    )
    total = m.Metric(
        name="Invocations",
        unit="{request}",
        sum=m.Sum(
            aggregation_temporality=m.AGGREGATION_TEMPORALITY_DELTA,
            is_monotonic=True,
            data_points=[
                m.NumberDataPoint(
                    attributes=[kv("EndpointName", string_value="ep-1")],
                    start_time_unix_nano=T0,
                    time_unix_nano=T1,
                    as_int=42,
                )
            ],
        ),
    )
    latency = m.Metric(
        name="ModelLatency",
        unit="ms",
        histogram=m.Histogram(
            aggregation_temporality=m.AGGREGATION_TEMPORALITY_DELTA,
            data_points=[
                m.HistogramDataPoint(
                    attributes=[kv("EndpointName", string_value="ep-1")],
                    start_time_unix_nano=T0,
                    time_unix_nano=T1,
                    count=4,
                    sum=1.9,
                    min=0.05,
                    max=1.2,
                    bucket_counts=[1, 2, 0, 1],
                    explicit_bounds=[0.1, 0.5, 1.0],
                )
            ],
        ),
    )
    return ExportMetricsServiceRequest(
        resource_metrics=[
            m.ResourceMetrics(
                resource=Resource(
                    attributes=[
                        kv("service.name", string_value="endpoint-metrics-agent"),
                        kv("host.cores", int_value=16),
                    ]
                ),
                scope_metrics=[
                    m.ScopeMetrics(
                        scope=InstrumentationScope(name="endpoint-metrics-agent", version="0.1.0"),
                        metrics=[gauge, total, latency],
                    )
                ],
            )
        ]
    )


class Receiver:
    def __init__(self, workdir, name, *args):
        self.out = os.path.join(workdir, f"{name}.jsonl")
        self.log = open(os.path.join(workdir, f"{name}.log"), "w+")
        self.proc = subprocess.Popen(
            [sys.executable, RECEIVER, "--out", self.out, *args],
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        self.port = self._listening()
        self.host = f"127.0.0.1:{self.port}"
        self.seen = 0

    def _listening(self):
        result = {}

        def read():
            result["line"] = self.proc.stdout.readline()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(START_LIMIT_S)
        line = result.get("line", "")
        if not line.startswith("LISTENING "):
            self.stop()
            self.log.seek(0)
            raise Failed(f"receiver did not print LISTENING (got {line!r}): {self.log.read()}")
        return int(line.split()[1])

    def stop(self):
        self.proc.kill()
        self.proc.wait(10)

    def records(self):
        if not os.path.exists(self.out):
            return []
        with open(self.out, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.endswith("\n")]

    def next_record(self):
        """The first record not returned before, waiting for it (a request is recorded once it
        is answered, or once the receiver gives up on it)."""
        deadline = time.monotonic() + WAIT_LIMIT_S
        while True:
            records = self.records()
            if len(records) > self.seen:
                self.seen += 1
                return records[self.seen - 1]
            check(time.monotonic() < deadline, f"no record #{self.seen + 1} within {WAIT_LIMIT_S} s")
            time.sleep(0.02)

    def control(self, method, path, body=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=WAIT_LIMIT_S)
        try:
            conn.request(method, path, body=body)
            resp = conn.getresponse()
            return resp.status, resp.read().decode()
        finally:
            conn.close()

    def set_mode(self, mode):
        status, text = self.control("POST", "/control/mode", mode.encode())
        check(status == 200 and text.strip() == mode, f"set mode {mode}: {status} {text!r}")


def signed(host, body, extra=None, when=None, token=TOKEN):
    """Headers for a POST of `body` to http://host/v1/metrics, signed by botocore at `when`."""
    headers = {"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"}
    headers.update(extra or {})
    request = AWSRequest(method="POST", url=f"http://{host}/v1/metrics", data=body, headers=headers)
    signer = SigV4Auth(Credentials(KEY, SECRET, token), SERVICE, REGION)
    if when is None:
        signer.add_auth(request)
    else:
        # The signer reads the clock through this module function; one thread here.
        saved = botocore.auth.get_current_datetime
        botocore.auth.get_current_datetime = lambda: when
        try:
            signer.add_auth(request)
        finally:
            botocore.auth.get_current_datetime = saved
    out = dict(request.headers.items())
    out["Host"] = host
    return out


def post(port, body, headers, timeout=WAIT_LIMIT_S):
    """(status, headers, body) of a POST to /v1/metrics on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/v1/metrics", body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def points_by_metric(record):
    return {p["metric"]: p for p in record["points"]}


def check_sample(record):
    """Every field of the sample request as recorded."""
    check(record["error"] is None, f"error {record['error']!r}")
    check(record["warnings"] == [], f"warnings {record['warnings']}")
    check(record["content_encoding"] == "gzip", "content_encoding")
    check(record["decoded_bytes"] == len(sample_request().SerializeToString()), "decoded_bytes")
    check(record["point_count"] == 3, f"{record['point_count']} points")
    points = points_by_metric(record)
    for p in points.values():
        check(p["resource"] == {"service.name": "endpoint-metrics-agent", "host.cores": 16}, "resource")
        check(p["resource_typed"]["host.cores"] == {"int_value": 16}, "resource_typed")
        check(p["scope"] == "endpoint-metrics-agent" and p["scope_version"] == "0.1.0", "scope")
        check(p["time_unix_nano"] == T1, "time_unix_nano")
    g = points["GPUUtilization"]
    want = {
        "type": "gauge", "unit": "%", "description": "GPU busy", "temporality": None,
        "monotonic": None, "value": 87.5, "value_type": "double", "start_time_unix_nano": 0,
        "attributes": {"EndpointName": "ep-1", "gpu": 3},
        "attributes_typed": {"EndpointName": {"string_value": "ep-1"}, "gpu": {"int_value": 3}},
    }
    for key, value in want.items():
        check(g[key] == value, f"gauge {key}: {g[key]!r}, want {value!r}")
    s = points["Invocations"]
    want = {
        "type": "sum", "unit": "{request}", "temporality": "delta", "monotonic": True,
        "value": 42, "value_type": "int", "start_time_unix_nano": T0,
        "attributes": {"EndpointName": "ep-1"},
    }
    for key, value in want.items():
        check(s[key] == value, f"sum {key}: {s[key]!r}, want {value!r}")
    h = points["ModelLatency"]
    want = {
        "type": "histogram", "unit": "ms", "temporality": "delta", "monotonic": None,
        "count": 4, "sum": 1.9, "min": 0.05, "max": 1.2, "bucket_counts": [1, 2, 0, 1],
        "explicit_bounds": [0.1, 0.5, 1.0], "start_time_unix_nano": T0,
    }
    for key, value in want.items():
        check(h[key] == value, f"histogram {key}: {h[key]!r}, want {value!r}")


def signed_cases(rx):
    body = gzip.compress(sample_request().SerializeToString())

    # (a) signed, as sent
    status, headers, data = post(rx.port, body, signed(rx.host, body))
    check(status == 200, f"(a) status {status}: {data!r}")
    check(headers.get("Content-Type") == "application/x-protobuf", "(a) content type")
    ExportMetricsServiceResponse.FromString(data)
    record = rx.next_record()
    check(record["status"] == 200 and record["sigv4"] == "ok", f"(a) {record['status']} {record['sigv4']}")
    check(record["body_bytes"] == len(body), "(a) body_bytes")
    check(record["headers"]["x-amz-security-token"] == TOKEN, "(a) headers")
    check_sample(record)
    print("ok (a): signed gzip protobuf accepted; sigv4 ok; gauge, delta sum, histogram as sent")

    # (b) a signed header altered after signing
    headers = signed(rx.host, body, {"X-Tenant": "blue"})
    check("x-tenant" in headers["Authorization"], "(b) X-Tenant was not signed")
    headers["X-Tenant"] = "green"
    status, _, _ = post(rx.port, body, headers)
    record = rx.next_record()
    check(status == 403 and record["status"] == 403, f"(b) altered header: {status}")
    check(record["sigv4"].startswith("mismatch: signature differs"), f"(b) {record['sigv4']}")
    check("x-tenant:green" in record["sigv4_canonical_request"], "(b) canonical request")
    print(f"ok (b): a signed header altered after signing: 403, {record['sigv4']!r}")

    # (b) the same points, re-compressed: another body than the one signed
    headers = signed(rx.host, body)
    other = gzip.compress(sample_request().SerializeToString(), compresslevel=1, mtime=1)
    check(other != body, "(b) re-compressed body is the same bytes")
    status, _, _ = post(rx.port, other, headers)
    record = rx.next_record()
    check(status == 403 and record["sigv4"].startswith("mismatch"), f"(b) body: {status} {record['sigv4']}")
    check(record["point_count"] == 3, "(b) a refused request's points are still recorded")
    print("ok (b): a body other than the signed one: 403 mismatch")

    # (b) unsigned, the wrong session token, signed 10 minutes ago
    status, _, _ = post(rx.port, body, {"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"})
    record = rx.next_record()
    check(status == 403 and record["sigv4"] == "unsigned", f"(b) unsigned: {status} {record['sigv4']}")
    status, _, _ = post(rx.port, body, signed(rx.host, body, token="another-token"))
    record = rx.next_record()
    check(status == 403 and "session token" in record["sigv4"], f"(b) token: {record['sigv4']}")
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=10)
    status, _, _ = post(rx.port, body, signed(rx.host, body, when=past))
    record = rx.next_record()
    check(status == 403 and record["sigv4"] == "expired", f"(b) old: {status} {record['sigv4']}")
    print("ok (b): unsigned, wrong session token, signed 10 minutes ago: 403")
    return body


def body_cases(rx, body):
    # (c) garbage, wrong content type, unknown fields, too big
    garbage = b"this is not a protobuf message"
    status, _, _ = post(rx.port, garbage, signed(rx.host, garbage, {"Content-Encoding": "identity"}))
    record = rx.next_record()
    check(status == 400 and record["status"] == 400, f"(c) garbage: {status}")
    check(record["sigv4"] == "ok" and record["error"].startswith("decode"), f"(c) {record['error']}")
    print(f"ok (c): garbage body: 400, {record['error']!r}")

    status, _, _ = post(rx.port, body, signed(rx.host, body, {"Content-Type": "application/json"}))
    record = rx.next_record()
    check(status == 415 and "Content-Type" in record["error"], f"(c) content type: {status}")

    # Field 99 (varint) on the request: not in the definitions.
    odd = gzip.compress(sample_request().SerializeToString() + b"\x98\x06\x01")
    status, _, _ = post(rx.port, odd, signed(rx.host, odd))
    record = rx.next_record()
    check(status == 200 and record["warnings"] == ["request: unknown fields"], f"(c) {record['warnings']}")

    with socket.create_connection(("127.0.0.1", rx.port), timeout=WAIT_LIMIT_S) as s:
        s.sendall(
            b"POST /v1/metrics HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
            b"Content-Length: 17000000\r\n\r\n"
        )
        answer = s.recv(200)
    record = rx.next_record()
    check(answer.startswith(b"HTTP/1.1 413") and record["status"] == 413, f"(c) big: {answer[:40]!r}")
    print("ok (c): wrong content type 415, unknown fields warned, a body past 16 MiB 413")


def fault_cases(rx, body):
    # (d) answering faults
    for mode, status in (("503 retry-after=7", 503), ("429", 429), ("500", 500), ("400", 400)):
        rx.set_mode(mode)
        got, headers, _ = post(rx.port, body, signed(rx.host, body))
        record = rx.next_record()
        check(got == status and record["status"] == status, f"(d) {mode}: {got}")
        check(record["fault"] == mode.split()[0] and record["point_count"] == 3, f"(d) {mode}: record")
        if mode.startswith("503"):
            check(headers.get("Retry-After") == "7", "(d) Retry-After")
    print("ok (d): 503 (Retry-After 7), 429, 500, 400 answered and recorded as refused")

    rx.set_mode("close")
    try:
        got = post(rx.port, body, signed(rx.host, body))[0]
    except (http.client.RemoteDisconnected, ConnectionError):
        got = None
    record = rx.next_record()
    check(got is None and record["status"] is None and record["fault"] == "close", f"(d) close: {got}")
    print("ok (d): close: connection closed without an answer")

    # hang, released by a mode change: the held request is then answered as the new mode says
    rx.set_mode("hang")
    result = {}
    sender = threading.Thread(
        target=lambda: result.update(status=post(rx.port, body, signed(rx.host, body))[0]),
        daemon=True,
    )
    sender.start()
    wait_held(rx, 1)
    check("status" not in result, "(d) hang answered while held")
    rx.set_mode("ok")
    sender.join(WAIT_LIMIT_S)
    record = rx.next_record()
    check(result.get("status") == 200 and record["status"] == 200, f"(d) hang released: {result}")
    check(record["fault"] == "hang", "(d) hang released: fault")

    # hang, left by its client: recorded without an answer
    rx.set_mode("hang")
    try:
        post(rx.port, body, signed(rx.host, body), timeout=0.5)
        check(False, "(d) hang answered")
    except TimeoutError:
        pass
    wait_held(rx, 1)
    rx.set_mode("ok")
    record = rx.next_record()
    check(record["status"] is None and "left" in record["error"], f"(d) hang left: {record['error']}")
    print("ok (d): hang holds until the mode changes, then answers it; a client that left is not accepted")

    status, text = rx.control("GET", "/control/count")
    accepted = sum(1 for r in rx.records() if r["status"] == 200)
    check(status == 200 and int(text) == accepted == 3, f"/control/count {text!r}, {accepted} in records")
    print(f"ok (d): /control/count {accepted} = the records with status 200")


def wait_held(rx, n):
    deadline = time.monotonic() + WAIT_LIMIT_S
    while int(rx.control("GET", "/control/held")[1]) != n:
        check(time.monotonic() < deadline, f"/control/held never {n}")
        time.sleep(0.02)


def unverified_cases(workdir):
    """Without --verify-sigv4: nothing is verified; and `hang` gives up after --hang-max."""
    rx = Receiver(workdir, "plain", "--hang-max", "0.5", "--raw")
    try:
        body = gzip.compress(sample_request().SerializeToString())
        plain = {"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"}
        check(post(rx.port, body, plain)[0] == 200, "unsigned accepted")
        record = rx.next_record()
        check(record["sigv4"] == "unsigned" and "raw" in record, "unsigned record")
        check(record["raw"]["resource_metrics"][0]["scope_metrics"][0]["metrics"][1]["name"] == "Invocations", "raw")
        check(post(rx.port, body, dict(plain, Authorization="AWS4-HMAC-SHA256 x"))[0] == 200, "present")
        check(rx.next_record()["sigv4"] == "present", "present record")
        rx.set_mode("hang")
        try:
            got = post(rx.port, body, plain)[0]
        except (http.client.RemoteDisconnected, ConnectionError):
            got = None
        record = rx.next_record()
        check(got is None and record["status"] is None and "held" in record["error"], f"hang max: {got}")
        print("ok: without --verify-sigv4: unsigned and present accepted unverified; --raw; hang gives up at --hang-max")
    finally:
        rx.stop()


def main():
    with tempfile.TemporaryDirectory(prefix="otlp-selftest-") as workdir:
        rx = Receiver(workdir, "signed", "--verify-sigv4", f"{KEY}:{SECRET}:{TOKEN}", "--region", REGION)
        try:
            body = signed_cases(rx)
            body_cases(rx, body)
            fault_cases(rx, body)
            seqs = [r["seq"] for r in rx.records()]
            check(sorted(seqs) == list(range(1, len(seqs) + 1)), f"seq {seqs}")
            unverified_cases(workdir)
        except Exception as e:  # a check, or a request that failed in an unplanned way
            print(f"FAILED: {type(e).__name__}: {e}", file=sys.stderr)
            print("records:", file=sys.stderr)
            for r in rx.records():
                r.pop("points", None)
                print(json.dumps(r)[:2000], file=sys.stderr)
            rx.log.seek(0)
            print("receiver stderr:", rx.log.read()[-4000:], file=sys.stderr)
            return 1
        finally:
            rx.stop()
    print("otlp-receiver self-test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
