//! HTTP/1.1 to the model copies, spoken in the request's own task.
//!
//! hyper's client ran each upstream connection as a task of its own: every request crossed from
//! the front door's connection task to it and back (a channel send, a oneshot, a body channel and
//! two task wake-ups), about a third of the front door's user-space time per request
//! (`docs/performance.md`). Here the request's handler writes the request head and body on the
//! copy's socket itself, parses the answer head with `httparse`, and the answer's body
//! ([`Answer`]) reads the socket as the client's connection (`super::server`, or hyper's h2c
//! server) polls it: one task, no hand-off.
//!
//! What a copy sends is input like any other: an answer head over [`MAX_ANSWER_HEAD_BYTES`] or
//! [`MAX_ANSWER_HEADERS`], malformed framing (RFC 9112 section 6: an invalid `Content-Length`, a
//! broken chunked encoding, a chunk-size line over [`MAX_CHUNK_LINE_BYTES`], trailers over
//! [`MAX_TRAILER_BYTES`]) is an error (502 before the head, a broken-off answer after), never a
//! panic or unbounded memory. A connection goes back to its pool only after an answer whose end
//! its framing states, with nothing after it, on a connection both sides keep alive.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{request, response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::net::TcpStream;

use super::upload::{Upload, UploadError};

/// An answer head (status line and headers) longer than this is refused (502). The same as the
/// request head limit ([`super::MAX_HEADER_BYTES`]); hyper's client allowed about 400 KiB.
pub const MAX_ANSWER_HEAD_BYTES: usize = super::MAX_HEADER_BYTES;

/// Headers in one answer head; more is refused (502). hyper's client allowed 100; model servers
/// send about 5-10.
pub const MAX_ANSWER_HEADERS: usize = 128;

/// Informational (1xx) answers skipped before the final one; a copy that sends more is refused
/// (502) rather than read forever.
pub const MAX_INFORMATIONAL_ANSWERS: usize = 16;

/// The longest chunk-size line (size and extensions) of a chunked answer; longer breaks the
/// answer off. hyper allows extensions of up to 16 KiB in all; no model server sends any.
pub const MAX_CHUNK_LINE_BYTES: usize = 4 * 1024;

/// Trailers of a chunked answer are read and dropped, at most this many bytes of them (as
/// hyper's client did, which did not forward them either).
pub const MAX_TRAILER_BYTES: usize = 16 * 1024;

/// Room made in the read buffer before each read: a small answer arrives in one read.
pub(super) const READ_CHUNK_BYTES: usize = 8 * 1024;

/// Hexadecimal digits in a chunk size: 16 fill a u64.
const MAX_CHUNK_SIZE_DIGITS: usize = 16;

/// Why a request got no answer head from the copy.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The copy did not accept the connection within `proxy.connect_timeout_ms`.
    #[error("connect timed out")]
    ConnectTimeout,
    /// The copy refused the connection (or the address did not resolve).
    #[error("connect: {0}")]
    Connect(#[source] io::Error),
    /// The connection closed before any of an answer arrived.
    #[error("the connection closed before an answer")]
    Closed,
    /// Reading or writing the connection failed.
    #[error("{0}")]
    Io(#[source] io::Error),
    /// The answer head broke HTTP/1.1 or one of this module's limits.
    #[error("bad answer: {0}")]
    BadAnswer(&'static str),
    /// The client's request body failed (its fault is in the upload's state).
    #[error("{0}")]
    Upload(#[source] UploadError),
    /// No answer head by the request's [`Due`] time (`proxy.response_timeout_ms`).
    #[error("no answer in time")]
    Timeout,
    /// The client closed its connection while the copy had not answered yet.
    #[error("the client went away")]
    ClientGone,
}

/// How late a connection's response timer may be set past a request's due time and still be
/// kept for it, rather than moved (a timer wheel update per request: measured in
/// `docs/performance.md`). A timer is set this much past the due time when it is moved, so the
/// requests of the next slack's time keep it: an answer head is waited for at least
/// `proxy.response_timeout_ms`, and at most this longer.
pub const MAX_RESPONSE_TIMER_SLACK: Duration = Duration::from_secs(1);

/// ... and at most this fraction of the response timeout (1/16: a 500 ms timeout fires within
/// 500-531 ms).
const RESPONSE_TIMER_SLACK_DIVISOR: u32 = 16;

/// When a request's answer head is due: `proxy.response_timeout_ms` after the request was sent
/// on its way, plus the slack a connection's timer may be kept with.
#[derive(Clone, Copy, Debug)]
pub struct Due {
    at: tokio::time::Instant,
    slack: Duration,
}

impl Due {
    pub fn after(start: std::time::Instant, timeout: Duration) -> Due {
        Due {
            at: tokio::time::Instant::from_std(start + timeout),
            slack: (timeout / RESPONSE_TIMER_SLACK_DIVISOR).min(MAX_RESPONSE_TIMER_SLACK),
        }
    }

    /// Sets `timer` for this request, unless it is already set within the slack after its due
    /// time; never before it.
    fn arm(self, timer: Pin<&mut tokio::time::Sleep>) {
        let set = timer.deadline();
        if set < self.at || set > self.at + self.slack {
            timer.reset(self.at + self.slack);
        }
    }
}

/// One keep-alive connection to a copy: its socket, the bytes read and not yet used, a buffer
/// the next request head is written into, and the timer its requests' answers race (all kept,
/// so a request allocates nothing for them).
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    read: BytesMut,
    write: Vec<u8>,
    /// Made at the first request; one timer for the connection's life (see [`Due`]).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The last answer's header names.
    names: NameCache,
}

/// How an answer's body ends (RFC 9112 section 6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Framing {
    /// This many bytes are left.
    Length(u64),
    /// Chunked: where in the encoding the reader is.
    Chunked(Chunk),
    /// The connection's end ends the body.
    UntilClose,
    /// The body has been read to its end.
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Chunk {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// After the last chunk: trailer lines up to an empty one, this many bytes read so far.
    Trailers(usize),
}

/// What [`Connection::send`] gives back: the answer head and its body, which owns the connection
/// until the body's end.
pub struct Answered {
    /// End-to-end headers only, unless a `Connection` header named others: then it is kept,
    /// and `said.names_hop_by_hop` says `strip_hop_by_hop` must run.
    pub head: response::Parts,
    pub body: Answer,
    /// What else the head said.
    pub said: Said,
}

/// Why [`Connection::send`] failed, and whether the request may go on another connection.
pub struct Failed {
    pub error: SendError,
    /// Nothing of the request reached the copy, or the copy closed a reused connection without
    /// answering a request that is safe to send twice (no body, an idempotent method: RFC 9110
    /// section 9.2.2). The pool then tries another connection.
    pub retry: bool,
}

impl Connection {
    /// Opens a connection to `authority` ("ip:port").
    /// Boxed: an answer's body and the request's future carry it, and the server moves both
    /// several times a request (a pointer moves rather than the connection's buffers and
    /// timer).
    pub async fn connect(authority: &str, timeout: Duration) -> Result<Box<Connection>, SendError> {
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(authority)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) if e.kind() == io::ErrorKind::TimedOut => {
                return Err(SendError::ConnectTimeout)
            }
            Ok(Err(e)) => return Err(SendError::Connect(e)),
            Err(_elapsed) => return Err(SendError::ConnectTimeout),
        };
        let _ = stream.set_nodelay(true);
        Ok(Box::new(Connection {
            stream,
            read: BytesMut::new(),
            write: Vec::new(),
            timer: None,
            names: NameCache::default(),
        }))
    }

    /// Whether an idle connection can no longer take a request: the copy closed it, reset it,
    /// or sent bytes nobody asked for. Costs a system call only when the socket reads as ready.
    pub fn is_stale(&self) -> bool {
        if !self.read.is_empty() {
            return true;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => false,
            Poll::Ready(Err(_)) => true,
            // Readiness may be left over from the last answer's read: a read tells.
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                !matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Sends the request (`head` as the front door prepared it, origin-form, hop-by-hop headers
    /// removed; `body` the client's) and reads the answer head, which must come by `due`.
    /// `reused`: the connection served a request before (a failure may then be the copy closing
    /// it while idle).
    pub async fn send(
        mut self: Box<Self>,
        head: &request::Parts,
        body: &mut Upload<'_>,
        reused: bool,
        due: Due,
    ) -> Result<Answered, Failed> {
        let mut timer = self
            .timer
            .take()
            .unwrap_or_else(|| Box::pin(tokio::time::sleep_until(due.at)));
        due.arm(timer.as_mut());
        let exchanged = tokio::select! {
            biased;
            exchanged = self.exchange(head, body, reused) => exchanged,
            () = timer.as_mut() => Err(Failed { error: SendError::Timeout, retry: false }),
        };
        self.timer = Some(timer);
        let (head, framing, reusable, said) = exchanged?;
        Ok(Answered {
            head,
            body: Answer {
                connection: Some(self),
                framing,
                reusable,
                failed: None,
            },
            said,
        })
    }

    /// [`Connection::send`] without the timer: the answer head, its body's framing, whether the
    /// connection may serve another request after it, and what else its head said.
    async fn exchange(
        &mut self,
        head: &request::Parts,
        body: &mut Upload<'_>,
        reused: bool,
    ) -> Result<(response::Parts, Framing, bool, Said), Failed> {
        let head_request = head.method == http::Method::HEAD;
        let no_body = body.is_end_stream();
        let framing = if no_body {
            BodyFraming::None
        } else {
            match body.size_hint().exact() {
                Some(n) => BodyFraming::Length(n),
                None => BodyFraming::Chunked,
            }
        };
        self.write.clear();
        encode_head(&mut self.write, head, framing);
        // A body already here goes out with the head, in one write.
        let mut body_done = no_body;
        let mut body_taken = false;
        if !no_body {
            if let Some(frame) = ready_now(body) {
                body_taken = true;
                body_done = push_frame(&mut self.write, frame, framing).map_err(|e| Failed {
                    error: e,
                    retry: false,
                })?;
            }
        }
        match self.flush_watching().await {
            Ok(true) => body_done = false,
            Ok(false) => {}
            // Nothing reached the copy; the request can go elsewhere if its body is still whole.
            Err(e) => {
                return Err(Failed {
                    error: SendError::Io(e),
                    retry: !body_taken,
                })
            }
        }
        let mut answer_started = !self.read.is_empty();
        if !body_done && !answer_started {
            answer_started = self
                .send_body(body, framing)
                .await
                .map_err(|error| Failed {
                    error,
                    retry: false,
                })?;
            body_done = !answer_started;
        }
        let idempotent = no_body && head.method.is_idempotent();
        // While the copy works, a client that leaves ends the request (its copy's connection
        // closes: a model server stops generating).
        let read = tokio::select! {
            biased;
            read = self.read_head(head_request) => read,
            () = std::future::poll_fn(|cx| body.poll_client_gone(cx)) => Err(SendError::ClientGone),
        };
        let (parts, framing, keep_alive, said) = match read {
            Ok(read) => read,
            Err(SendError::Closed) => {
                return Err(Failed {
                    error: SendError::Closed,
                    retry: reused && idempotent,
                })
            }
            Err(error) => {
                return Err(Failed {
                    error,
                    retry: false,
                })
            }
        };
        Ok((parts, framing, keep_alive && body_done, said))
    }

    /// Writes the write buffer, watching for an answer meanwhile (a copy may answer, 413 say,
    /// before reading the whole request). Returns whether an answer began before all was
    /// written.
    async fn flush_watching(&mut self) -> io::Result<bool> {
        let mut written = 0;
        while written < self.write.len() {
            match self.stream.try_write(&self.write[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    tokio::select! {
                        ready = self.stream.writable() => ready?,
                        ready = self.stream.readable() => {
                            ready?;
                            if self.answer_began()? {
                                return Ok(true);
                            }
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }

    /// After the socket read as ready: whether the copy sent something (or closed). Readiness
    /// left over from an earlier read is cleared instead.
    fn answer_began(&mut self) -> io::Result<bool> {
        self.read.reserve(READ_CHUNK_BYTES);
        match self.stream.try_read_buf(&mut self.read) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Streams the rest of the client's body. Returns whether the copy began to answer first (the
    /// rest of the body is then not sent, and the connection not reused).
    async fn send_body(
        &mut self,
        body: &mut Upload<'_>,
        framing: BodyFraming,
    ) -> Result<bool, SendError> {
        loop {
            let frame = tokio::select! {
                frame = body.frame() => frame,
                ready = self.stream.readable() => {
                    ready.map_err(SendError::Io)?;
                    if self.answer_began().map_err(SendError::Io)? {
                        return Ok(true);
                    }
                    continue;
                }
            };
            self.write.clear();
            let done = push_frame(&mut self.write, frame, framing)?;
            if self.flush_watching().await.map_err(SendError::Io)? {
                return Ok(true);
            }
            if done {
                return Ok(false);
            }
        }
    }

    /// Reads until a final answer head is complete: what [`finish_head`] returns.
    async fn read_head(
        &mut self,
        head_request: bool,
    ) -> Result<(response::Parts, Framing, bool, Said), SendError> {
        let mut informational = 0;
        loop {
            if let Some(head) = parse_head(&mut self.read, &mut self.names)? {
                if head.status.is_informational() {
                    // 101 would switch protocols; the front door never asks for it (Upgrade is
                    // not forwarded).
                    if head.status == StatusCode::SWITCHING_PROTOCOLS {
                        return Err(SendError::BadAnswer("101 Switching Protocols unasked"));
                    }
                    informational += 1;
                    if informational > MAX_INFORMATIONAL_ANSWERS {
                        return Err(SendError::BadAnswer("too many informational answers"));
                    }
                    continue;
                }
                return finish_head(head, head_request);
            }
            if self.read.len() >= MAX_ANSWER_HEAD_BYTES {
                return Err(SendError::BadAnswer("answer head over the limit"));
            }
            let nothing_yet = self.read.is_empty() && informational == 0;
            let n = match std::future::poll_fn(|cx| self.poll_fill(cx)).await {
                Ok(n) => n,
                // A copy that had closed the connection resets it when the request arrives.
                Err(e) if nothing_yet && closed_by_peer(&e) => return Err(SendError::Closed),
                Err(e) => return Err(SendError::Io(e)),
            };
            if n == 0 {
                return Err(if nothing_yet {
                    SendError::Closed
                } else {
                    SendError::BadAnswer("the answer head was cut off")
                });
            }
        }
    }

    /// Reads more into the buffer; 0 at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.read.reserve(READ_CHUNK_BYTES);
        tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.read)
    }
}

/// Whether a read failed because the copy had closed the connection (a reset, as a closed
/// socket answers data it is sent).
fn closed_by_peer(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// How the request body is framed on the way to the copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BodyFraming {
    None,
    Length(u64),
    Chunked,
}

/// The next frame if the body has one without waiting.
fn ready_now(body: &mut Upload<'_>) -> Option<Option<Result<Frame<Bytes>, UploadError>>> {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match Pin::new(body).poll_frame(&mut cx) {
        Poll::Ready(frame) => Some(frame),
        Poll::Pending => None,
    }
}

/// Appends a body frame in the request's framing. Returns whether the body ended.
fn push_frame(
    out: &mut Vec<u8>,
    frame: Option<Result<Frame<Bytes>, UploadError>>,
    framing: BodyFraming,
) -> Result<bool, SendError> {
    match frame {
        None => {
            if framing == BodyFraming::Chunked {
                out.extend_from_slice(b"0\r\n\r\n");
            }
            Ok(true)
        }
        Some(Err(e)) => Err(SendError::Upload(e)),
        Some(Ok(frame)) => {
            // Trailers are not forwarded (a copy has no use for them; hyper's client dropped
            // them too).
            if let Some(data) = frame.data_ref().filter(|d| !d.is_empty()) {
                if framing == BodyFraming::Chunked {
                    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                    out.extend_from_slice(data);
                    out.extend_from_slice(b"\r\n");
                } else {
                    out.extend_from_slice(data);
                }
            }
            Ok(false)
        }
    }
}

/// The request head as the copy gets it. The method, target and header values are `http`'s
/// validated types (no CR or LF can be in them); the body's framing header is the front
/// door's own.
fn encode_head(out: &mut Vec<u8>, head: &request::Parts, framing: BodyFraming) {
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    let target = head.uri.path_and_query().map_or("/", |pq| pq.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut has_length = false;
    for (name, value) in &head.headers {
        if name == header::CONTENT_LENGTH {
            // The body's own length rules; a client's header that disagrees is not passed on.
            if framing != BodyFraming::None || has_length {
                continue;
            }
            has_length = true;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        BodyFraming::None => {}
        BodyFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        BodyFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// A parsed answer head before its framing is worked out.
struct RawHead {
    status: StatusCode,
    version: Version,
    /// End-to-end headers only: hop-by-hop ones are left out as the map is built (a
    /// `Connection` header that names other headers stays, for `strip_hop_by_hop`).
    headers: HeaderMap,
    facts: Facts,
}

/// What an answer's hop-by-hop and framing headers say, read as its header map is built.
#[derive(Debug, Default)]
struct Facts {
    /// `Connection: close`.
    close: bool,
    /// `Connection: keep-alive` (meaningful for an HTTP/1.0 answer).
    keep_alive: bool,
    /// A `Connection` header names other headers, which the front door must remove too.
    names_others: bool,
    /// With a `Transfer-Encoding`: whether chunked is its last coding.
    chunked: Option<bool>,
    /// With a `Content-Length`: the length, or None if a value is invalid or they disagree.
    length: Option<Option<u64>>,
    /// With a `Content-Type`: whether the first one is `text/event-stream` (Server-Sent
    /// Events).
    event_stream: Option<bool>,
}

impl Facts {
    /// Reads a header of the given kind; true for one left out of the map (hop-by-hop).
    fn read(&mut self, kind: Kind, value: &[u8]) -> bool {
        match kind {
            Kind::EndToEnd | Kind::Host | Kind::Expect => false,
            Kind::ContentType => {
                self.event_stream.get_or_insert_with(|| {
                    value
                        .trim_ascii_start()
                        .get(..EVENT_STREAM.len())
                        .is_some_and(|t| t.eq_ignore_ascii_case(EVENT_STREAM))
                });
                false
            }
            Kind::Connection => {
                let said = ConnectionTokens::of(value);
                self.close |= said.close;
                self.keep_alive |= said.keep_alive;
                self.names_others |= said.names_others;
                // Kept when it names other headers: `strip_hop_by_hop` removes them and it.
                !self.names_others
            }
            Kind::TransferEncoding => {
                self.chunked = Some(ends_chunked(value));
                true
            }
            Kind::ContentLength => {
                self.length = Some(merge_length(self.length, value));
                false
            }
            Kind::HopByHop => true,
        }
    }
}

/// What one `Connection` header says (RFC 9110 section 7.6.1), in a request or an answer.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct ConnectionTokens {
    pub close: bool,
    pub keep_alive: bool,
    /// It names other headers (hop-by-hop for this connection).
    pub names_others: bool,
}

impl ConnectionTokens {
    pub(super) fn of(value: &[u8]) -> ConnectionTokens {
        let mut said = ConnectionTokens::default();
        for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if token.eq_ignore_ascii_case(b"close") {
                said.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                said.keep_alive = true;
            } else if !token.is_empty() {
                said.names_others = true;
            }
        }
        said
    }
}

/// Whether a `Transfer-Encoding` value's last coding is chunked: the last header's last coding
/// decides (RFC 9112 section 6.1).
pub(super) fn ends_chunked(value: &[u8]) -> bool {
    value
        .rsplit(|&b| b == b',')
        .next()
        .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// The media type of Server-Sent Events.
const EVENT_STREAM: &[u8] = b"text/event-stream";

/// What part a header plays for the front door, worked out once per name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    EndToEnd,
    /// `Host`: end-to-end, counted in a request.
    Host,
    /// `Expect`: read in a request (`100-continue`).
    Expect,
    ContentType,
    Connection,
    TransferEncoding,
    ContentLength,
    /// Any other hop-by-hop header (`super::HOP_BY_HOP`): left out.
    HopByHop,
}

impl Kind {
    fn of(name: &HeaderName) -> Kind {
        if name == header::CONTENT_TYPE {
            Kind::ContentType
        } else if name == header::HOST {
            Kind::Host
        } else if name == header::EXPECT {
            Kind::Expect
        } else if name == header::CONNECTION {
            Kind::Connection
        } else if name == header::TRANSFER_ENCODING {
            Kind::TransferEncoding
        } else if name == header::CONTENT_LENGTH {
            Kind::ContentLength
        } else if super::HOP_BY_HOP.contains(name) {
            Kind::HopByHop
        } else {
            Kind::EndToEnd
        }
    }
}

/// Header names kept per connection, by position in the answer head.
const CACHED_NAMES: usize = INLINE_HEADER_SPANS;

/// A name longer than this is parsed every time, not kept.
const MAX_CACHED_NAME_BYTES: usize = 64;

/// The header names of the last answer on a connection, as sent and as parsed. A copy answers
/// with the same names in the same order, so the next answer's names are compared byte for byte
/// rather than parsed, looked up among the standard names and classified again (about 200
/// instructions a header; `docs/performance.md`). Bounded: [`CACHED_NAMES`] names of at most
/// [`MAX_CACHED_NAME_BYTES`] bytes.
#[derive(Debug, Default)]
pub struct NameCache {
    entries: Vec<CachedName>,
}

#[derive(Debug)]
struct CachedName {
    raw: Box<[u8]>,
    name: HeaderName,
    kind: Kind,
}

impl NameCache {
    /// The name of header `index`, whose bytes are `raw`, and its kind; None if `raw` is not a
    /// header name.
    pub(super) fn name(&mut self, index: usize, raw: &[u8]) -> Option<(HeaderName, Kind)> {
        if let Some(cached) = self.entries.get(index) {
            if *cached.raw == *raw {
                return Some((cached.name.clone(), cached.kind));
            }
        }
        let name = HeaderName::from_bytes(raw).ok()?;
        let kind = Kind::of(&name);
        if index < CACHED_NAMES && raw.len() <= MAX_CACHED_NAME_BYTES {
            let entry = CachedName {
                raw: raw.into(),
                name: name.clone(),
                kind,
            };
            let kept = self.entries.len();
            if index < kept {
                self.entries[index] = entry;
            } else if index == kept {
                self.entries.push(entry);
            }
            // Past a name that was not kept (too long), positions are not kept either.
        }
        Some((name, kind))
    }
}

/// Headers a head is parsed into before any is placed: most heads have a handful.
pub(super) const INLINE_HEADER_SPANS: usize = 16;

/// Where one header's name and value lie in a head: name start and end, value start and end.
type Span = (u32, u32, u32, u32);

/// Where each header's name and value lie in a head. The parser borrows the read buffer, which
/// is split off and frozen once the parse is done; the map is then built over the frozen bytes,
/// each value sharing them (one allocation for all, as hyper does). Past the inline ones, a
/// vector.
pub(super) struct HeaderSpans {
    inline: [Span; INLINE_HEADER_SPANS],
    count: usize,
    spilled: Vec<Span>,
}

impl HeaderSpans {
    pub(super) fn new() -> HeaderSpans {
        HeaderSpans {
            inline: [(0, 0, 0, 0); INLINE_HEADER_SPANS],
            count: 0,
            spilled: Vec::new(),
        }
    }

    /// Records where `headers`, parsed out of `buf`, lie in it: a head of at most `u32::MAX`
    /// bytes (the caller checks). Filled in place: the spans are a few hundred bytes, not moved.
    pub(super) fn fill(&mut self, buf: &[u8], headers: &[httparse::Header<'_>]) {
        self.count = headers.len();
        let base = buf.as_ptr() as usize;
        let at = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
        for (i, h) in headers.iter().enumerate() {
            let name = at(h.name.as_bytes());
            let value = at(h.value);
            let span = (
                name,
                name + h.name.len() as u32,
                value,
                value + h.value.len() as u32,
            );
            match self.inline.get_mut(i) {
                Some(slot) => *slot = span,
                None => self.spilled.push(span),
            }
        }
    }

    /// The header map over `bytes` (the head, frozen), names through the connection's `names`.
    /// A header `take` returns true for (one the front door reads and acts on) is left out; an
    /// invalid name or value is `fail`'s error.
    pub(super) fn map<E>(
        &self,
        bytes: &Bytes,
        names: &mut NameCache,
        mut take: impl FnMut(Kind, &Bytes) -> bool,
        fail: fn(&'static str) -> E,
    ) -> Result<HeaderMap, E> {
        let mut headers = HeaderMap::with_capacity(self.count);
        let spans = self.inline[..self.count.min(INLINE_HEADER_SPANS)]
            .iter()
            .chain(&self.spilled);
        for (index, &(name_start, name_end, value_start, value_end)) in spans.enumerate() {
            let (name, kind) = names
                .name(index, &bytes[name_start as usize..name_end as usize])
                .ok_or_else(|| fail("bad header name"))?;
            let value = bytes.slice(value_start as usize..value_end as usize);
            if take(kind, &value) {
                continue;
            }
            let value =
                HeaderValue::from_maybe_shared(value).map_err(|_| fail("bad header value"))?;
            headers.append(name, value);
        }
        Ok(headers)
    }
}

/// Takes a complete answer head off the front of `buf`, if it is all there. It is parsed once.
fn parse_head(buf: &mut BytesMut, names: &mut NameCache) -> Result<Option<RawHead>, SendError> {
    if buf.is_empty() {
        return Ok(None);
    }
    let mut spans = HeaderSpans::new();
    let (len, code, version) = {
        let mut parsed = [const { std::mem::MaybeUninit::uninit() }; MAX_ANSWER_HEADERS];
        let mut answer = httparse::Response::new(&mut []);
        let parse = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut answer,
            buf,
            &mut parsed,
        );
        let len = match parse {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(SendError::BadAnswer("too many headers in the answer"))
            }
            Err(_) => return Err(SendError::BadAnswer("malformed answer head")),
        };
        if len > u32::MAX as usize {
            return Err(SendError::BadAnswer("answer head over the limit"));
        }
        spans.fill(buf, answer.headers);
        (len, answer.code, answer.version)
    };
    let bytes = buf.split_to(len).freeze();
    let status = code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(SendError::BadAnswer("bad status code"))?;
    let version = if version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let mut facts = Facts::default();
    let headers = spans.map(
        &bytes,
        names,
        |kind, value| facts.read(kind, value),
        SendError::BadAnswer,
    )?;
    Ok(Some(RawHead {
        status,
        version,
        headers,
        facts,
    }))
}

/// What an answer head said that the front door acts on, besides its framing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Said {
    /// A `Connection` header named other headers (for `strip_hop_by_hop`).
    pub names_hop_by_hop: bool,
    /// The (first) `Content-Type` is `text/event-stream`.
    pub event_stream: bool,
}

/// Works out the body's framing (RFC 9112 section 6.3) and whether the connection stays open.
/// Returns the head the client's server gets (it frames the client's answer itself), the framing,
/// whether the connection may be reused, and what else the head said.
fn finish_head(
    mut head: RawHead,
    head_request: bool,
) -> Result<(response::Parts, Framing, bool, Said), SendError> {
    let facts = &head.facts;
    let mut keep_alive = match head.version {
        Version::HTTP_10 => facts.keep_alive && !facts.close,
        _ => !facts.close,
    };
    let no_body = head_request
        || head.status.is_informational()
        || head.status == StatusCode::NO_CONTENT
        || head.status == StatusCode::NOT_MODIFIED;
    let framing = if no_body {
        Framing::Done
    } else if let Some(chunked) = facts.chunked {
        // Transfer-Encoding overrides Content-Length, and an answer with both may be an attempt
        // to smuggle: its connection is not reused (RFC 9112 section 6.3, point 3).
        if facts.length.is_some() {
            head.headers.remove(header::CONTENT_LENGTH);
            keep_alive = false;
        }
        if chunked {
            Framing::Chunked(Chunk::Size)
        } else {
            Framing::UntilClose
        }
    } else {
        match facts.length {
            None => Framing::UntilClose,
            Some(Some(0)) => Framing::Done,
            Some(Some(n)) => Framing::Length(n),
            Some(None) => return Err(SendError::BadAnswer("invalid Content-Length")),
        }
    };
    if framing == Framing::UntilClose {
        keep_alive = false;
    }
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = head.status;
    parts.version = head.version;
    parts.headers = head.headers;
    let said = Said {
        names_hop_by_hop: head.facts.names_others,
        event_stream: head.facts.event_stream == Some(true),
    };
    Ok((parts, framing, keep_alive, said))
}

/// Folds one `Content-Length` value into what earlier ones said: every value (and every
/// comma-separated item of one) must be the same run of digits, else None (RFC 9110 section
/// 8.6).
pub(super) fn merge_length(so_far: Option<Option<u64>>, value: &[u8]) -> Option<u64> {
    let mut length = match so_far {
        Some(None) => return None,
        Some(Some(n)) => Some(n),
        None => None,
    };
    for item in value.split(|&b| b == b',') {
        let item = item.trim_ascii();
        if item.is_empty() || item.len() > 19 || !item.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = item.iter().try_fold(0u64, |n, &d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })?;
        if length.is_some_and(|l| l != n) {
            return None;
        }
        length = Some(n);
    }
    length
}

/// The copy's answer body, read from its connection as the client's server polls it. At its end the
/// connection can be taken back ([`Answer::take_reusable`]).
#[derive(Debug)]
pub struct Answer {
    connection: Option<Box<Connection>>,
    framing: Framing,
    /// The connection may serve another request once the body is read to its end.
    reusable: bool,
    /// A failure found and not yet reported: it is reported one poll later, so that the
    /// server first writes out what the client was already given (it drops its unwritten
    /// buffer when a body fails), and the client sees the cut where the copy made it.
    failed: Option<io::Error>,
}

impl Answer {
    /// The connection, once the body has been read to its end and both sides keep it alive.
    pub fn take_reusable(&mut self) -> Option<Box<Connection>> {
        if !matches!(self.framing, Framing::Done | Framing::Length(0)) {
            return None;
        }
        self.finish();
        self.connection.take()
    }

    /// The body's end: the connection stays only if it can serve another request.
    fn finish(&mut self) {
        self.framing = Framing::Done;
        // Bytes after the answer's end were never asked for: the connection is not reused.
        let clean = self.connection.as_ref().is_some_and(|c| c.read.is_empty());
        if !(self.reusable && clean) {
            self.connection = None;
        }
    }

    fn broken(&mut self, what: &'static str) -> io::Error {
        self.framing = Framing::Done;
        self.connection = None;
        self.reusable = false;
        io::Error::new(io::ErrorKind::InvalidData, what)
    }
}

/// What the buffered bytes give next.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// A piece of the body.
    Data(Bytes),
    /// The body's end.
    End,
    /// More must be read first.
    NeedMore,
}

/// Decodes the next piece of the body from `buf` in `framing` (advancing both), or says why the
/// framing is broken.
pub(super) fn step(framing: &mut Framing, buf: &mut BytesMut) -> Result<Step, &'static str> {
    loop {
        match *framing {
            Framing::Done => return Ok(Step::End),
            Framing::Length(0) => *framing = Framing::Done,
            Framing::Length(left) => {
                if buf.is_empty() {
                    return Ok(Step::NeedMore);
                }
                let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                *framing = Framing::Length(left - n as u64);
                return Ok(Step::Data(buf.split_to(n).freeze()));
            }
            Framing::UntilClose => {
                if buf.is_empty() {
                    return Ok(Step::NeedMore);
                }
                return Ok(Step::Data(buf.split().freeze()));
            }
            Framing::Chunked(Chunk::Size) => {
                let Some(end) = complete_line(
                    buf,
                    MAX_CHUNK_LINE_BYTES,
                    "chunk-size line not ended by CRLF",
                    "chunk-size line over the limit",
                )?
                else {
                    return Ok(Step::NeedMore);
                };
                let size = chunk_size(&buf[..end]).ok_or("malformed chunk size")?;
                let _ = buf.split_to(end + 2);
                *framing = Framing::Chunked(if size == 0 {
                    Chunk::Trailers(0)
                } else {
                    Chunk::Data(size)
                });
            }
            Framing::Chunked(Chunk::Data(left)) => {
                if buf.is_empty() {
                    return Ok(Step::NeedMore);
                }
                let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let left = left - n as u64;
                *framing = Framing::Chunked(if left == 0 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left)
                });
                return Ok(Step::Data(buf.split_to(n).freeze()));
            }
            Framing::Chunked(Chunk::DataEnd) => {
                if buf.len() < 2 {
                    return Ok(Step::NeedMore);
                }
                if &buf[..2] != b"\r\n" {
                    return Err("chunk data not followed by CRLF");
                }
                let _ = buf.split_to(2);
                *framing = Framing::Chunked(Chunk::Size);
            }
            Framing::Chunked(Chunk::Trailers(seen)) => {
                let room = MAX_TRAILER_BYTES.saturating_sub(seen);
                let Some(end) = complete_line(
                    buf,
                    room,
                    "trailer line not ended by CRLF",
                    "trailers over the limit",
                )?
                else {
                    return Ok(Step::NeedMore);
                };
                let _ = buf.split_to(end + 2);
                *framing = if end == 0 {
                    Framing::Done
                } else {
                    Framing::Chunked(Chunk::Trailers(seen + end + 2))
                };
            }
        }
    }
}

/// Reads one whole answer from `buf` as the front door reads a copy's (its head, then its body to
/// the end its framing states): the head and the body's length. `names` is the connection's
/// [`NameCache`]. For `benches/proxy.rs`, which measures this codec without sockets; the front
/// door itself reads as the bytes arrive.
pub fn read_whole_answer(
    buf: &mut BytesMut,
    names: &mut NameCache,
) -> Result<(response::Parts, usize), SendError> {
    let raw = parse_head(buf, names)?.ok_or(SendError::BadAnswer("the answer head was cut off"))?;
    let (parts, mut framing, ..) = finish_head(raw, false)?;
    let mut body = 0;
    loop {
        match step(&mut framing, buf).map_err(SendError::BadAnswer)? {
            Step::Data(data) => body += data.len(),
            Step::End => return Ok((parts, body)),
            Step::NeedMore if framing == Framing::UntilClose => return Ok((parts, body)),
            Step::NeedMore => return Err(SendError::BadAnswer("the answer was cut off")),
        }
    }
}

/// Where the line at the start of `buf` ends (the index of its CRLF), or None until all of it
/// is here. A line of more than `limit` bytes is the error `over`, one ended by a bare LF the
/// error `bad` (RFC 9112 allows refusing it; hyper refuses it in chunk sizes).
fn complete_line(
    buf: &[u8],
    limit: usize,
    bad: &'static str,
    over: &'static str,
) -> Result<Option<usize>, &'static str> {
    let window = &buf[..buf.len().min(limit.saturating_add(2))];
    match window.iter().position(|&b| b == b'\n') {
        Some(lf) if lf > 0 && window[lf - 1] == b'\r' => Ok(Some(lf - 1)),
        Some(_) => Err(bad),
        None if buf.len() >= limit.saturating_add(2) => Err(over),
        None => Ok(None),
    }
}

/// A chunk-size line's size: 1-16 hex digits, then optional extensions after `;` (ignored),
/// with optional whitespace before them.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > MAX_CHUNK_SIZE_DIGITS {
        return None;
    }
    let rest = line[digits..].trim_ascii_start();
    if !(rest.is_empty() || rest[0] == b';') || rest.iter().any(|&b| b == b'\r' || b == b'\n') {
        return None;
    }
    let text = std::str::from_utf8(&line[..digits]).ok()?;
    u64::from_str_radix(text, 16).ok()
}

impl Body for Answer {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        if let Some(e) = this.failed.take() {
            return Poll::Ready(Some(Err(e)));
        }
        let failure = loop {
            let Some(connection) = this.connection.as_mut() else {
                this.framing = Framing::Done;
                return Poll::Ready(None);
            };
            match step(&mut this.framing, &mut connection.read) {
                Ok(Step::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(Step::End) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Err(what) => break this.broken(what),
                Ok(Step::NeedMore) => {}
            }
            match ready!(connection.poll_fill(cx)) {
                Err(e) => {
                    this.framing = Framing::Done;
                    this.connection = None;
                    break e;
                }
                Ok(0) if this.framing == Framing::UntilClose => {
                    this.framing = Framing::Done;
                    this.connection = None;
                    return Poll::Ready(None);
                }
                Ok(0) => break this.broken("the answer was cut off"),
                Ok(_) => {}
            }
        };
        this.failed = Some(failure);
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.failed.is_none() && matches!(self.framing, Framing::Done | Framing::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Done => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Chunked(_) | Framing::UntilClose => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests;
