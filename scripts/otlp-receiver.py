#!/usr/bin/env python3
"""A local OTLP/HTTP metrics receiver for the agent's OTLP tests (issue 16).

It decodes every request with the official protobuf definitions (the `opentelemetry-proto`
package, the reference Python implementation of opentelemetry-proto), optionally verifies its
SigV4 signature by recomputing it independently with botocore's signer, and records each request
as one JSON line, so a test can check every metric, attribute, type, temporality and value the
agent sent, and which requests it accepted. Fault modes stand in for an outage.

Run with the venv of scripts/setup/otlp.sh:

    .otlp/venv/bin/python scripts/otlp-receiver.py --out requests.jsonl [--port 0] [--raw]
        [--verify-sigv4 ACCESS_KEY:SECRET_KEY[:SESSION_TOKEN] --region R [--service monitoring]]

It prints `LISTENING <port>` on stdout once bound, and nothing else there.

Endpoints:
  POST /v1/metrics     OTLP/HTTP, protobuf (application/x-protobuf), gzip or identity.
                       200 with a serialized ExportMetricsServiceResponse when accepted.
  POST /control/mode   body: ok | 503 | 429 | 500 | 400 | close | hang, optionally followed by
                       ` retry-after=N` (sent as Retry-After with 503 and 429). Answers the mode.
  GET  /control/mode   the current mode.
  GET  /control/count  the number of accepted (status 200) metrics requests.
  GET  /control/held   the number of requests `hang` holds now.
Control requests are not recorded; every other request is, once its outcome is known.

One JSON line per request (`seq` is the arrival order; lines are written as requests finish):
  seq, time_unix_nano (arrival), method, path, status (the answer's status; null when none was
  sent: `close`, a `hang` that ended without an answer, a client that left), fault (the mode that
  answered, null for `ok`), headers {lowercased name: value}, content_type, content_encoding,
  body_bytes (as sent), decoded_bytes (after gunzip), sigv4, sigv4_canonical_request (on a
  mismatch), error (null, or why the body was refused), warnings (what decoded but breaks the
  OTLP data model: unknown fields, duplicate attribute keys, a histogram's count not the sum of
  its buckets, ...), point_count, points [...], raw (MessageToDict, with --raw only).
  "accepted" means status 200.

sigv4: "unsigned" (no Authorization header), "present" (one, not verified: no --verify-sigv4),
  "ok", "mismatch: <why>", "expired" or "not yet current" (X-Amz-Date more than 5 minutes from
  the receiver's clock). With --verify-sigv4 anything but "ok" is answered 403 (in mode `ok`).

points: one entry per data point: metric, unit, description, type (gauge | sum | histogram |
  exponential_histogram | summary), temporality (delta | cumulative | unspecified; null for gauge
  and summary), monotonic (sums; null otherwise), resource, resource_typed, scope,
  scope_version, attributes, attributes_typed ({key: {"string_value": "x"}}: the AnyValue case
  as sent, so a test can tell a string "1" from an int 1), start_time_unix_nano,
  time_unix_nano, flags; then value and value_type ("double" | "int") for gauges and sums;
  count, sum, min, max, bucket_counts, explicit_bounds for histograms; count, sum, min, max,
  scale, zero_count, zero_threshold, positive {offset, bucket_counts}, negative {...} for
  exponential histograms; count, sum, quantile_values [{quantile, value}] for summaries. Absent
  optional fields (sum, min, max) are null; non-finite doubles are the strings "NaN",
  "Infinity", "-Infinity" (JSON has no such numbers).
"""
import argparse
import base64
import datetime
import hashlib
import hmac
import json
import math
import select
import socket
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from google.protobuf import unknown_fields
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)

# Bounds, so a broken or hostile client cannot make the receiver hang or grow without end.
MAX_BODY_BYTES = 16 * 1024 * 1024  # as sent (compressed)
MAX_DECODED_BYTES = 64 * 1024 * 1024  # after gunzip: a gzip bomb stops here
MAX_CONNECTIONS = 64  # more are closed at once
IDLE_TIMEOUT_S = 120  # a connection idle (or a body stalled) this long is closed
DEFAULT_HANG_MAX_S = 60  # `hang` answers nothing past this, even if the mode never changes
MAX_WARNINGS = 100  # per request; the rest are counted
# "In most cases, a request must reach AWS within five minutes of the time stamp in the request.
# Otherwise, AWS denies the request." (IAM user guide, "Elements of an AWS API request signature")
SIGV4_MAX_SKEW_S = 5 * 60

MODES = ("ok", "503", "429", "500", "400", "close", "hang")
PROTOBUF = "application/x-protobuf"

TYPES = ("gauge", "sum", "histogram", "exponential_histogram", "summary")
TEMPORALITY = {0: "unspecified", 1: "delta", 2: "cumulative"}

# google.rpc.Status codes for the error bodies (OTLP/HTTP: "the response body MUST be the
# appropriate serialized Status message").
RPC_CODES = {400: 3, 403: 7, 404: 5, 405: 12, 411: 3, 413: 8, 415: 3, 429: 8, 500: 13, 503: 14}


def _varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def rpc_status(http_status, message):
    """A serialized google.rpc.Status {code = 1, message = 2}, encoded by hand: the message type
    is not in opentelemetry-proto, and two fields do not justify googleapis-common-protos."""
    text = message.encode("utf-8")[:1024]
    code = RPC_CODES.get(http_status, 2)
    return b"\x08" + _varint(code) + b"\x12" + _varint(len(text)) + text


# ---------------------------------------------------------------------------------------------
# Flattening the decoded request


def number(x):
    """A double as JSON can carry it."""
    if isinstance(x, float) and not math.isfinite(x):
        return "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")
    return x


def any_value(v):
    """(plain JSON value, typed form) of an AnyValue."""
    case = v.WhichOneof("value")
    if case is None:
        return None, {}
    raw = getattr(v, case)
    if case == "array_value":
        plain = [any_value(x)[0] for x in raw.values]
        typed = [any_value(x)[1] for x in raw.values]
    elif case == "kvlist_value":
        plain, typed, _ = attributes(raw.values)
    elif case == "bytes_value":
        plain = base64.b64encode(raw).decode("ascii")
        typed = plain
    else:
        plain = number(raw)
        typed = plain
    return plain, {case: typed}


def attributes(kvs):
    """(plain, typed, duplicated keys) of a list of KeyValue."""
    plain, typed, dups = {}, {}, []
    for kv in kvs:
        if kv.key in plain:
            dups.append(kv.key)
        plain[kv.key], typed[kv.key] = any_value(kv.value)
    return plain, typed, dups


class Warnings:
    def __init__(self):
        self.items = []
        self.dropped = 0

    def add(self, text):
        if len(self.items) < MAX_WARNINGS:
            self.items.append(text)
        else:
            self.dropped += 1

    def out(self):
        if self.dropped:
            return self.items + [f"... and {self.dropped} more"]
        return self.items


def unknown(msg, where, warnings):
    """Warns about fields the official definitions do not know, anywhere in the message: a
    wrong field number in the sender's encoder decodes without an error otherwise."""
    if len(unknown_fields.UnknownFieldSet(msg)):
        warnings.add(f"{where}: unknown fields")
    for field, value in msg.ListFields():
        if field.message_type is None:
            continue
        if field.is_repeated:
            if field.message_type.GetOptions().map_entry:
                continue
            for i, item in enumerate(value):
                unknown(item, f"{where}.{field.name}[{i}]", warnings)
        else:
            unknown(value, f"{where}.{field.name}", warnings)


def point_common(dp, warnings, where):
    plain, typed, dups = attributes(dp.attributes)
    for key in dups:
        warnings.add(f"{where}: duplicate attribute key {key!r}")
    return {
        "attributes": plain,
        "attributes_typed": typed,
        "start_time_unix_nano": dp.start_time_unix_nano,
        "time_unix_nano": dp.time_unix_nano,
        "flags": dp.flags,
    }


def optional(dp, name):
    return number(getattr(dp, name)) if dp.HasField(name) else None


def number_point(dp):
    case = dp.WhichOneof("value")
    kind = {"as_double": "double", "as_int": "int"}.get(case)
    return {"value": number(getattr(dp, case)) if case else None, "value_type": kind}


def histogram_point(dp, warnings, where):
    if len(dp.bucket_counts) not in (0, len(dp.explicit_bounds) + 1):
        warnings.add(
            f"{where}: {len(dp.bucket_counts)} bucket counts for "
            f"{len(dp.explicit_bounds)} explicit bounds (want bounds + 1)"
        )
    if dp.bucket_counts and sum(dp.bucket_counts) != dp.count:
        warnings.add(f"{where}: count {dp.count} is not the sum of its bucket counts")
    if list(dp.explicit_bounds) != sorted(dp.explicit_bounds):
        warnings.add(f"{where}: explicit bounds not in increasing order")
    return {
        "count": dp.count,
        "sum": optional(dp, "sum"),
        "min": optional(dp, "min"),
        "max": optional(dp, "max"),
        "bucket_counts": list(dp.bucket_counts),
        "explicit_bounds": [number(b) for b in dp.explicit_bounds],
    }


def exponential_point(dp, warnings, where):
    buckets = sum(dp.positive.bucket_counts) + sum(dp.negative.bucket_counts)
    if buckets + dp.zero_count != dp.count:
        warnings.add(f"{where}: count {dp.count} is not zero_count plus the bucket counts")
    return {
        "count": dp.count,
        "sum": optional(dp, "sum"),
        "min": optional(dp, "min"),
        "max": optional(dp, "max"),
        "scale": dp.scale,
        "zero_count": dp.zero_count,
        "zero_threshold": number(dp.zero_threshold),
        "positive": {"offset": dp.positive.offset, "bucket_counts": list(dp.positive.bucket_counts)},
        "negative": {"offset": dp.negative.offset, "bucket_counts": list(dp.negative.bucket_counts)},
    }


def summary_point(dp):
    return {
        "count": dp.count,
        "sum": number(dp.sum),
        "quantile_values": [
            {"quantile": number(q.quantile), "value": number(q.value)} for q in dp.quantile_values
        ],
    }


def metric_points(metric, base, warnings, where):
    kind = metric.WhichOneof("data")
    if kind is None:
        warnings.add(f"{where} ({metric.name!r}): no data (none of gauge, sum, histogram, ...)")
        return []
    data = getattr(metric, kind)
    temporality = None
    if kind in ("sum", "histogram", "exponential_histogram"):
        temporality = TEMPORALITY.get(data.aggregation_temporality, str(data.aggregation_temporality))
        if temporality == "unspecified":
            warnings.add(f"{where} ({metric.name!r}): aggregation temporality unspecified")
    head = dict(
        base,
        metric=metric.name,
        unit=metric.unit,
        description=metric.description,
        type=kind,
        temporality=temporality,
        monotonic=data.is_monotonic if kind == "sum" else None,
    )
    if not metric.name:
        warnings.add(f"{where}: a metric without a name")
    out = []
    for i, dp in enumerate(data.data_points):
        at = f"{where}.{kind}.data_points[{i}] ({metric.name!r})"
        point = dict(head, **point_common(dp, warnings, at))
        if kind in ("gauge", "sum"):
            point.update(number_point(dp))
        elif kind == "histogram":
            point.update(histogram_point(dp, warnings, at))
        elif kind == "exponential_histogram":
            point.update(exponential_point(dp, warnings, at))
        else:
            point.update(summary_point(dp))
        out.append(point)
    return out


def flatten(request, warnings):
    points = []
    for r, rm in enumerate(request.resource_metrics):
        resource, resource_typed, dups = attributes(rm.resource.attributes)
        for key in dups:
            warnings.add(f"resource_metrics[{r}].resource: duplicate attribute key {key!r}")
        for s, sm in enumerate(rm.scope_metrics):
            base = {
                "resource": resource,
                "resource_typed": resource_typed,
                "scope": sm.scope.name,
                "scope_version": sm.scope.version,
            }
            for m, metric in enumerate(sm.metrics):
                where = f"resource_metrics[{r}].scope_metrics[{s}].metrics[{m}]"
                points.extend(metric_points(metric, base, warnings, where))
    return points


# ---------------------------------------------------------------------------------------------
# SigV4


class ListedHeadersSigV4(SigV4Auth):
    """botocore's SigV4 signer over exactly the headers the request lists in SignedHeaders.
    botocore leaves a few headers out when it signs as a client (user-agent, expect, ...); the
    service verifies over what the request lists, and so does this."""

    def headers_to_sign(self, request):
        return request.headers


def parse_authorization(value):
    """{Credential, SignedHeaders, Signature} of an AWS4-HMAC-SHA256 Authorization header."""
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != "AWS4-HMAC-SHA256":
        raise ValueError(f"algorithm {algorithm!r} is not AWS4-HMAC-SHA256")
    parts = {}
    for item in rest.split(","):
        key, sep, val = item.strip().partition("=")
        if not sep:
            raise ValueError(f"malformed Authorization component {item.strip()!r}")
        parts[key] = val
    for key in ("Credential", "SignedHeaders", "Signature"):
        if key not in parts:
            raise ValueError(f"Authorization has no {key}")
    return parts


class SigV4Verifier:
    def __init__(self, spec, region, service):
        fields = spec.split(":")
        if len(fields) not in (2, 3) or not all(fields):
            raise SystemExit("--verify-sigv4 takes ACCESS_KEY:SECRET_KEY[:SESSION_TOKEN]")
        self.access_key, self.secret_key = fields[0], fields[1]
        self.token = fields[2] if len(fields) == 3 else None
        self.region = region
        self.service = service

    def verify(self, method, path, headers, body, now):
        """(verdict, canonical request or None): verdict "unsigned", "ok", "expired",
        "not yet current" or "mismatch: <why>"."""
        value = headers.get("authorization")
        if value is None:
            return "unsigned", None
        try:
            parts = parse_authorization(value)
        except ValueError as e:
            return f"mismatch: {e}", None
        scope = parts["Credential"].split("/")
        if len(scope) != 5:
            return f"mismatch: credential {parts['Credential']!r} is not KEY/DATE/REGION/SERVICE/aws4_request", None
        key, day, region, service, terminator = scope
        want = [
            (key, self.access_key, "access key"),
            (region, self.region, "region"),
            (service, self.service, "service"),
            (terminator, "aws4_request", "scope terminator"),
        ]
        for got, expected, what in want:
            if got != expected:
                return f"mismatch: credential {what} {got!r}, want {expected!r}", None
        amz_date = headers.get("x-amz-date")
        if amz_date is None:
            return "mismatch: no X-Amz-Date header", None
        try:
            signed_at = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(
                tzinfo=datetime.timezone.utc
            )
        except ValueError:
            return f"mismatch: X-Amz-Date {amz_date!r} is not YYYYMMDDTHHMMSSZ", None
        if day != amz_date[:8]:
            return f"mismatch: credential date {day} is not X-Amz-Date's day {amz_date[:8]}", None
        listed = parts["SignedHeaders"].split(";")
        if listed != sorted(listed) or any(h != h.lower() for h in listed):
            return f"mismatch: SignedHeaders {parts['SignedHeaders']!r} not lowercase and sorted", None
        for required in ("host", "x-amz-date"):
            if required not in listed:
                return f"mismatch: {required} is not signed", None
        for name in listed:
            if name not in headers:
                return f"mismatch: signed header {name} is not in the request", None
        if self.token is not None:
            if headers.get("x-amz-security-token") != self.token:
                return "mismatch: X-Amz-Security-Token is not the configured session token", None
            if "x-amz-security-token" not in listed:
                return "mismatch: x-amz-security-token is not signed", None
        body_hash = hashlib.sha256(body).hexdigest()
        content_sha = headers.get("x-amz-content-sha256")
        if content_sha is not None and content_sha != body_hash:
            return f"mismatch: X-Amz-Content-SHA256 {content_sha!r} is not the body's SHA-256", None

        request = AWSRequest(method=method, url=f"http://{headers['host']}{path}", data=body)
        for name in listed:
            for v in headers.get_all(name):
                request.headers[name] = v
        request.context["timestamp"] = amz_date
        signer = ListedHeadersSigV4(
            Credentials(self.access_key, self.secret_key, self.token), self.service, self.region
        )
        canonical = signer.canonical_request(request)
        signature = signer.signature(signer.string_to_sign(request, canonical), request)
        if signer.signed_headers(signer.headers_to_sign(request)) != parts["SignedHeaders"]:
            return "mismatch: SignedHeaders differ from the signer's", canonical
        if not hmac.compare_digest(signature, parts["Signature"]):
            return "mismatch: signature differs (body, a signed header or the path changed)", canonical
        skew = (now - signed_at).total_seconds()
        if skew > SIGV4_MAX_SKEW_S:
            return "expired", None
        if skew < -SIGV4_MAX_SKEW_S:
            return "not yet current", None
        return "ok", None


# ---------------------------------------------------------------------------------------------
# Shared state: the mode, the counters, the output file


class State:
    def __init__(self, out, raw, verifier, hang_max):
        self.out = out
        self.raw = raw
        self.verifier = verifier
        self.hang_max = hang_max
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.mode = "ok"
        self.retry_after = None
        self.seq = 0
        self.accepted = 0
        self.held = 0

    def next_seq(self):
        with self.lock:
            self.seq += 1
            return self.seq

    def set_mode(self, text):
        words = text.split()
        if not words or words[0] not in MODES:
            raise ValueError(f"mode {text.strip()!r}: one of {', '.join(MODES)}")
        retry_after = None
        for extra in words[1:]:
            key, _, value = extra.partition("=")
            if key != "retry-after" or not value.isdigit():
                raise ValueError(f"mode option {extra!r}: only retry-after=<seconds>")
            retry_after = int(value)
        with self.changed:
            self.mode, self.retry_after = words[0], retry_after
            self.changed.notify_all()

    def current(self):
        with self.lock:
            return self.mode, self.retry_after

    def describe(self):
        mode, retry_after = self.current()
        return mode if retry_after is None else f"{mode} retry-after={retry_after}"

    def hold(self):
        """Waits while the mode is `hang`, at most hang_max; whether the mode changed."""
        deadline = time.monotonic() + self.hang_max
        with self.changed:
            self.held += 1
            try:
                while self.mode == "hang":
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self.changed.wait(left)
                return True
            finally:
                self.held -= 1

    def record(self, entry):
        try:
            line = json.dumps(entry, separators=(",", ":"), allow_nan=False)
        except ValueError as e:  # a value JSON cannot carry slipped through: say so, keep the rest
            entry["error"] = f"recording: {e}"
            entry.pop("raw", None)
            entry["points"] = []
            line = json.dumps(entry, separators=(",", ":"), allow_nan=False, default=str)
        with self.lock:
            if entry.get("status") == 200:
                self.accepted += 1
            self.out.write(line + "\n")
            self.out.flush()


# ---------------------------------------------------------------------------------------------
# HTTP


class BodyError(Exception):
    def __init__(self, status, message, read_rest=True):
        super().__init__(message)
        self.status = status
        self.read_rest = read_rest


def gunzip(body):
    stream = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = stream.decompress(body, MAX_DECODED_BYTES + 1)
    if len(out) > MAX_DECODED_BYTES or stream.unconsumed_tail:
        raise BodyError(413, f"gzip body inflates past {MAX_DECODED_BYTES} bytes")
    out += stream.flush()
    if not stream.eof:
        raise BodyError(400, "gzip: truncated stream")
    if stream.unused_data:
        raise BodyError(400, "gzip: data after the end of the stream")
    return out


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT_S
    server_version = "otlp-receiver"
    state: State = None  # set by main
    verbose = False

    def log_message(self, fmt, *args):
        if self.verbose:
            sys.stderr.write("otlp-receiver: " + (fmt % args) + "\n")

    # -- control ------------------------------------------------------------------------------

    def do_GET(self):
        if self.path == "/control/count":
            with self.state.lock:
                self.reply_text(200, f"{self.state.accepted}\n")
        elif self.path == "/control/held":
            with self.state.lock:
                self.reply_text(200, f"{self.state.held}\n")
        elif self.path == "/control/mode":
            self.reply_text(200, self.state.describe() + "\n")
        else:
            self.metrics_request()

    def do_POST(self):
        if self.path == "/control/mode":
            try:
                body = self.read_body()
                self.state.set_mode(body.decode("utf-8", "replace"))
            except (BodyError, ValueError) as e:
                self.reply_text(400, f"{e}\n")
                return
            self.reply_text(200, self.state.describe() + "\n")
        else:
            self.metrics_request()

    def do_PUT(self):
        self.metrics_request()

    def do_DELETE(self):
        self.metrics_request()

    def reply_text(self, status, text):
        data = text.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    # -- reading ------------------------------------------------------------------------------

    def read_body(self):
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            return self.read_chunked()
        length = self.headers.get("content-length")
        if length is None:
            if self.command in ("GET", "DELETE"):
                return b""
            raise BodyError(411, "no Content-Length", read_rest=False)
        if not length.strip().isdigit():
            raise BodyError(400, f"Content-Length {length!r}", read_rest=False)
        n = int(length)
        if n > MAX_BODY_BYTES:
            raise BodyError(413, f"Content-Length {n} is past {MAX_BODY_BYTES}", read_rest=False)
        return self.read_exactly(n)

    def read_exactly(self, n):
        data = self.rfile.read(n)
        if len(data) != n:
            raise BodyError(None, f"connection closed after {len(data)} of {n} body bytes", False)
        return data

    def read_chunked(self):
        out = bytearray()
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                raise BodyError(400, f"chunk size line {line[:64]!r}", read_rest=False)
            if len(out) + size > MAX_BODY_BYTES:
                raise BodyError(413, f"chunked body past {MAX_BODY_BYTES}", read_rest=False)
            if size == 0:
                break
            out += self.read_exactly(size)
            self.rfile.readline(1024)
        for _ in range(100):  # trailers
            if self.rfile.readline(8192) in (b"\r\n", b"\n", b""):
                break
        return bytes(out)

    # -- the metrics endpoint -----------------------------------------------------------------

    def headers_map(self):
        out = {}
        for name in sorted(set(k.lower() for k in self.headers.keys())):
            out[name] = ", ".join(self.headers.get_all(name))
        return out

    def metrics_request(self):
        state = self.state
        entry = {
            "seq": state.next_seq(),
            "time_unix_nano": time.time_ns(),
            "method": self.command,
            "path": self.path,
            "status": None,
            "fault": None,
            "headers": self.headers_map(),
            "content_type": self.headers.get("content-type"),
            "content_encoding": self.headers.get("content-encoding"),
            "body_bytes": None,
            "decoded_bytes": None,
            "sigv4": None,
            "error": None,
            "warnings": [],
            "point_count": 0,
            "points": [],
        }
        try:
            body = self.read_body()
        except BodyError as e:
            entry["error"] = str(e)
            self.close_connection = True
            if e.status is not None:
                self.answer(entry, e.status, str(e))
            state.record(entry)
            return
        entry["body_bytes"] = len(body)
        refusal = self.examine(entry, body)
        self.respond(entry, refusal)
        state.record(entry)

    def examine(self, entry, body):
        """Verifies and decodes into `entry`; (status, message) to refuse with, or None."""
        refusal = None
        if self.command != "POST":
            refusal = (405, f"{self.command} is not allowed")
        elif self.path.split("?")[0] != "/v1/metrics":
            refusal = (404, f"no endpoint {self.path}")
        if self.state.verifier is None:
            entry["sigv4"] = "present" if "authorization" in self.headers else "unsigned"
        else:
            verdict, canonical = self.state.verifier.verify(
                self.command,
                self.path,
                self.headers,
                body,
                datetime.datetime.now(datetime.timezone.utc),
            )
            entry["sigv4"] = verdict
            if canonical is not None:
                entry["sigv4_canonical_request"] = canonical
            if verdict != "ok" and refusal is None:
                refusal = (403, f"signature: {verdict}")
        decoded = self.decode(entry, body)
        if decoded is not None and refusal is None:
            refusal = decoded
        return refusal

    def decode(self, entry, body):
        content_type = (entry["content_type"] or "").split(";")[0].strip().lower()
        if content_type != PROTOBUF:
            entry["error"] = f"Content-Type {entry['content_type']!r} is not {PROTOBUF}"
            return (415, entry["error"])
        encoding = (entry["content_encoding"] or "identity").strip().lower()
        try:
            if encoding == "gzip":
                body = gunzip(body)
            elif encoding != "identity":
                raise BodyError(415, f"Content-Encoding {encoding!r} is not gzip")
        except BodyError as e:
            entry["error"] = str(e)
            return (e.status, str(e))
        entry["decoded_bytes"] = len(body)
        request = ExportMetricsServiceRequest()
        try:
            request.ParseFromString(body)
        except DecodeError as e:
            entry["error"] = f"decode: {e}"
            return (400, entry["error"])
        warnings = Warnings()
        unknown(request, "request", warnings)
        entry["points"] = flatten(request, warnings)
        entry["point_count"] = len(entry["points"])
        entry["warnings"] = warnings.out()
        if self.state.raw:
            entry["raw"] = MessageToDict(request, preserving_proto_field_name=True)
        return None

    def respond(self, entry, refusal):
        """Answers as the mode says; `hang` holds the request first."""
        mode, retry_after = self.state.current()
        if mode == "hang":
            entry["fault"] = "hang"
            changed = self.state.hold()
            if self.peer_left():
                entry["error"] = entry["error"] or "the client left while the request was held"
                self.close_connection = True
                return
            if not changed:
                entry["error"] = entry["error"] or f"held {self.state.hang_max} s; closed without an answer"
                self.close_connection = True
                return
            mode, retry_after = self.state.current()
        if mode == "close":
            entry["fault"] = "close"
            self.close_connection = True
            return
        if mode != "ok":
            entry["fault"] = mode if entry["fault"] is None else f"{entry['fault']} then {mode}"
            self.answer(entry, int(mode), f"fault mode {mode}", retry_after)
            return
        if refusal is not None:
            self.answer(entry, refusal[0], refusal[1])
            return
        self.answer(entry, 200, None)

    def peer_left(self):
        """Whether the client closed its end (readable with nothing to read)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def answer(self, entry, status, message, retry_after=None):
        entry["status"] = status
        if status == 200:
            data = ExportMetricsServiceResponse().SerializeToString()
        else:
            data = rpc_status(status, message or "")
        try:
            self.send_response(status)
            self.send_header("Content-Type", PROTOBUF)
            self.send_header("Content-Length", str(len(data)))
            if retry_after is not None and status in (429, 503):
                self.send_header("Retry-After", str(retry_after))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except OSError as e:
            entry["error"] = entry["error"] or f"answering: {e}"


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, handler):
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="on 127.0.0.1; 0 picks a free one")
    parser.add_argument("--out", required=True, help="JSON lines file, appended to")
    parser.add_argument("--raw", action="store_true", help="also record MessageToDict of each request")
    parser.add_argument("--verify-sigv4", metavar="ACCESS_KEY:SECRET_KEY[:SESSION_TOKEN]")
    parser.add_argument("--region")
    parser.add_argument("--service", default="monitoring")
    parser.add_argument("--hang-max", type=float, default=DEFAULT_HANG_MAX_S,
                        help="seconds `hang` holds a request at most")
    parser.add_argument("--verbose", action="store_true", help="log each request on stderr")
    args = parser.parse_args()

    verifier = None
    if args.verify_sigv4:
        if not args.region:
            parser.error("--verify-sigv4 needs --region")
        verifier = SigV4Verifier(args.verify_sigv4, args.region, args.service)

    out = open(args.out, "a", encoding="utf-8")
    Handler.state = State(out, args.raw, verifier, args.hang_max)
    Handler.verbose = args.verbose
    server = Server(("127.0.0.1", args.port), Handler)
    print(f"LISTENING {server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
