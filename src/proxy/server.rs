//! The front door's own HTTP/1.1 server.
//!
//! hyper's server cost about a fifth of the front door's user-space instructions per request
//! (its dispatcher, its head parse into a header map, its answer encoder, the buffering layers
//! between them; `docs/performance.md`). Here one task per connection reads a request head with
//! `httparse`, hands it to [`super::handle`] with the request body read off the same socket as
//! the copy takes it ([`Client::poll_body`]), and writes the answer: its head and the body's
//! first pieces in one write. h2c (HTTP/2 with prior knowledge) is told apart by the first bytes
//! of the connection ([`Client::protocol`]) and still goes to hyper.
//!
//! What a client sends is input like any other (RFC 9112): a head over
//! [`super::MAX_HEADER_BYTES`] or [`MAX_REQUEST_HEADERS`] gets 431, a malformed one 400, and so do
//! the framings a request smuggler uses (`Transfer-Encoding` with `Content-Length`, a
//! `Transfer-Encoding` whose last coding is not chunked or in an HTTP/1.0 request, an invalid or
//! disagreeing `Content-Length`); each such answer closes the connection. A broken chunked body,
//! or one cut off, is the client's fault (`super::upload`). A client that goes away while its
//! request is in flight is seen (its socket is watched once its body is read: [`Client::poll_gone`])
//! and its request is dropped, which closes the copy's connection (a model server then stops
//! generating).
//!
//! Keep-alive follows RFC 9112 section 9.3: an HTTP/1.1 connection stays open unless the client
//! said `Connection: close`; an HTTP/1.0 one only with `Connection: keep-alive`. The connection
//! also closes after an answer whose body ends with the connection (an HTTP/1.0 client, an answer
//! of unknown length), after a request whose body was not read to its end (a copy may answer
//! early), and when the front door drains. Requests sent back to back (pipelined) are answered in
//! order. `Expect: 100-continue` is answered with `100 Continue` when the request body is first
//! needed, as hyper did, and is not passed on.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::header;
use http::{request, response, Method, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::client::{
    ends_chunked, merge_length, step, Chunk, ConnectionTokens, Framing, HeaderSpans, Kind,
    NameCache, Step, READ_CHUNK_BYTES,
};
use super::conn::{Active, Guarded, Tracker};
use super::upload::{Source, UploadError, UploadFault, UploadState};
use super::{Metered, State, MAX_HEADER_BYTES};
use crate::telemetry::{self, Counter};

/// Headers in one request head; more is refused (431), as hyper refused more than 100.
pub const MAX_REQUEST_HEADERS: usize = 100;

/// An answer's bytes go out once this many are buffered, whether or not more of its body is
/// ready: a large body streams through a buffer of about this size.
pub const WRITE_AT_BYTES: usize = 64 * 1024;

/// A connection closed with input unread (a refused head, a request body the copy did not
/// take) is closed gracefully: the front door stops writing, then reads and drops what the
/// client still sends, up to this much or for [`LINGER`], so that closing with unread bytes does
/// not reset the connection before the client has read its answer (nginx's `lingering_close`).
pub const LINGER_BYTES: usize = 256 * 1024;

/// See [`LINGER_BYTES`].
pub const LINGER: Duration = Duration::from_secs(1);

/// Buffer room a connection keeps between requests. A large answer grows the write buffer to
/// about [`WRITE_AT_BYTES`], and a large head the read buffer to up to
/// [`super::MAX_HEADER_BYTES`]; kept, that room would stay with every idle keep-alive connection
/// that ever carried one (4,096 connections at 64 KiB each: 256 MiB, the unit's `MemoryMax`).
/// Past this much it is given back once the answer is sent; below it, it is reused.
pub const IDLE_BUFFER_BYTES: usize = 16 * 1024;

/// The client preface of HTTP/2 with prior knowledge (RFC 9113 section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The interim answer to `Expect: 100-continue`.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// What a connection speaks, from its first bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// h2c with prior knowledge: hyper serves it.
    Http2,
}

/// One client connection: its socket, the bytes read and not yet used, the buffer answers are
/// written from, and the request in progress.
#[derive(Debug)]
pub struct Client {
    stream: TcpStream,
    read: BytesMut,
    write: Vec<u8>,
    /// The last request's header names (see [`NameCache`]).
    names: NameCache,
    /// The request body's framing; Done once read to its end (or without one).
    body: Framing,
    /// The request body failed (broken framing, cut off): the connection cannot go on.
    broken: bool,
    /// What is left to write of `100 Continue` before the body is read (empty: nothing).
    continue_left: &'static [u8],
    /// The client closed or reset the connection while its request was in flight.
    gone: bool,
    /// The client sent bytes after its request (pipelined): no longer watched for leaving.
    more_sent: bool,
}

/// A parsed request head, ready for [`super::handle`].
#[derive(Debug)]
pub struct RequestHead {
    pub parts: request::Parts,
    framing: Framing,
    /// The client keeps the connection open after the answer (RFC 9112 section 9.3).
    keep_alive: bool,
    /// `Expect: 100-continue`.
    expect_continue: bool,
}

/// A request head the front door refuses: the status it answers and what it logs. The
/// connection closes after it.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: &'static str,
}

const fn bad(reason: &'static str) -> Refusal {
    Refusal {
        status: 400,
        reason,
    }
}

const HEAD_TOO_LARGE: Refusal = Refusal {
    status: 431,
    reason: "request head over the limit",
};

impl Client {
    pub fn new(stream: TcpStream) -> Client {
        Client {
            stream,
            read: BytesMut::new(),
            write: Vec::new(),
            names: NameCache::default(),
            body: Framing::Done,
            broken: false,
            continue_left: &[],
            gone: false,
            more_sent: false,
        }
    }

    /// Reads until the first bytes tell HTTP/1 from h2c's preface; None if the client closed
    /// first.
    pub async fn protocol(&mut self) -> io::Result<Option<Protocol>> {
        loop {
            let n = self.read.len().min(H2_PREFACE.len());
            if self.read[..n] != H2_PREFACE[..n] {
                return Ok(Some(Protocol::Http1));
            }
            if n == H2_PREFACE.len() {
                return Ok(Some(Protocol::Http2));
            }
            if poll_fn(|cx| self.poll_fill(cx)).await? == 0 {
                return Ok(None);
            }
        }
    }

    /// The connection for hyper's HTTP/2 server: what was read so far comes first.
    pub fn into_h2(self) -> Prefixed {
        Prefixed {
            prefix: self.read.freeze(),
            stream: self.stream,
        }
    }

    /// Reads more into the buffer; 0 at the end of the stream. A read that does not fill the
    /// room given clears the socket's readiness (tokio), so watching it after costs no system
    /// call.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.read.reserve(READ_CHUNK_BYTES);
        tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.read)
    }

    /// Reads a complete request head; None if the client closed (or reset) first.
    async fn read_head(&mut self) -> Result<Option<RequestHead>, Refusal> {
        // The head is parsed once its first bytes are here (garbage is refused at once), then
        // only when new bytes may have ended it: a head trickled in byte by byte is not parsed
        // again for each byte (quadratic in its length).
        let mut tried = false;
        let mut from = 0;
        loop {
            if !self.read.is_empty() && (!tried || may_end_head(&self.read, from)) {
                tried = true;
                if let Some(head) = parse_request(&mut self.read, &mut self.names)? {
                    return Ok(Some(head));
                }
            }
            if self.read.len() >= MAX_HEADER_BYTES {
                return Err(HEAD_TOO_LARGE);
            }
            from = self.read.len();
            match poll_fn(|cx| self.poll_fill(cx)).await {
                Ok(0) | Err(_) => return Ok(None),
                Ok(_) => {}
            }
        }
    }

    /// Whether the request body is at its end (or there is none).
    pub fn body_is_end(&self) -> bool {
        matches!(self.body, Framing::Done | Framing::Length(0))
    }

    pub fn body_size_hint(&self) -> SizeHint {
        match self.body {
            Framing::Done => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }

    /// The next piece of the request body, read off the socket as the copy takes it; `100
    /// Continue` goes out first if the client asked for it.
    pub fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, UploadError>>> {
        loop {
            match step(&mut self.body, &mut self.read) {
                Ok(Step::Data(data)) => return Poll::Ready(Some(Ok(data))),
                Ok(Step::End) => return Poll::Ready(None),
                Err(what) => {
                    return Poll::Ready(Some(Err(self.body_failed(
                        UploadFault::BadFraming,
                        io::Error::new(io::ErrorKind::InvalidData, what),
                    ))))
                }
                Ok(Step::NeedMore) => {}
            }
            while !self.continue_left.is_empty() {
                match ready!(Pin::new(&mut self.stream).poll_write(cx, self.continue_left)) {
                    Ok(0) => {
                        let e = io::Error::from(io::ErrorKind::WriteZero);
                        return Poll::Ready(Some(Err(self.body_failed(UploadFault::Left, e))));
                    }
                    Ok(n) => self.continue_left = &self.continue_left[n..],
                    Err(e) => {
                        return Poll::Ready(Some(Err(self.body_failed(UploadFault::Left, e))))
                    }
                }
            }
            match ready!(self.poll_fill(cx)) {
                Ok(0) => {
                    let e = io::Error::from(io::ErrorKind::UnexpectedEof);
                    return Poll::Ready(Some(Err(self.body_failed(UploadFault::Left, e))));
                }
                Err(e) => return Poll::Ready(Some(Err(self.body_failed(UploadFault::Left, e)))),
                Ok(_) => {}
            }
        }
    }

    /// Gives back buffer room past [`IDLE_BUFFER_BYTES`] between requests (bytes a client sent
    /// ahead stay).
    fn shed_buffers(&mut self) {
        if self.write.capacity() > IDLE_BUFFER_BYTES {
            self.write = Vec::new();
        }
        if self.read.is_empty() && self.read.capacity() > IDLE_BUFFER_BYTES {
            self.read = BytesMut::new();
        }
    }

    fn body_failed(&mut self, fault: UploadFault, e: io::Error) -> UploadError {
        self.broken = true;
        self.body = Framing::Done;
        UploadError::client(fault, Some(e))
    }

    /// Ready when the client has closed or reset the connection. Watched only once its request
    /// body is read (before, reading the body sees it), and no longer once the client sent more
    /// (the next request: a close behind it is seen when it is read).
    pub fn poll_gone(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.gone {
            return Poll::Ready(());
        }
        if self.more_sent || !self.body_is_end() || self.broken {
            return Poll::Pending;
        }
        let mut byte = [0u8; 1];
        let mut peeked = ReadBuf::new(&mut byte);
        match self.stream.poll_peek(cx, &mut peeked) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                self.gone = true;
                Poll::Ready(())
            }
            Poll::Ready(Ok(_)) => {
                self.more_sent = true;
                Poll::Pending
            }
        }
    }

    /// Skips what is left of a request body the copy did not take, if all of it is already
    /// here; false if it is not (the connection then closes after the answer).
    fn skip_unread_body(&mut self) -> bool {
        if self.broken {
            return false;
        }
        loop {
            match step(&mut self.body, &mut self.read) {
                Ok(Step::Data(_)) => {}
                Ok(Step::End) => return true,
                Ok(Step::NeedMore) | Err(_) => return false,
            }
        }
    }

    /// Answers a refused head and closes (the caller drops the connection after).
    async fn refuse(&mut self, refusal: Refusal) {
        let counted = if refusal.status == 431 {
            "front door: request head over the limit (431)"
        } else {
            "front door: malformed request (400)"
        };
        telemetry::warn_sampled(Counter::ProxyBadRequests, counted);
        tracing::debug!(reason = refusal.reason, "front door: request refused");
        self.write.clear();
        let status = StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::BAD_REQUEST);
        status_line(&mut self.write, status);
        self.write
            .extend_from_slice(b"content-length: 0\r\nconnection: close\r\n");
        date_header(&mut self.write);
        self.write.extend_from_slice(b"\r\n");
        let _ = tokio::io::AsyncWriteExt::write_all(&mut self.stream, &self.write).await;
    }

    /// Closes gracefully (see [`LINGER_BYTES`]); the caller drops the connection after.
    async fn linger(&mut self) {
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut self.stream).await;
        let mut left = LINGER_BYTES;
        let _ = tokio::time::timeout(LINGER, async {
            while left > 0 {
                self.read.clear();
                match poll_fn(|cx| self.poll_fill(cx)).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
        })
        .await;
    }

    /// Writes the write buffer. While the client takes none of it, the answer counts as waiting
    /// for the client (the connection's send deadline, `conn`).
    async fn flush(&mut self, body: &mut Guarded<Metered>) -> io::Result<()> {
        let mut written = 0;
        let mut blocked = false;
        while written < self.write.len() {
            match self.stream.try_write(&self.write[written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    written += n;
                    if blocked {
                        body.client_took();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    blocked = true;
                    body.waits_for_client();
                    self.stream.writable().await?;
                }
                Err(e) => return Err(e),
            }
        }
        self.write.clear();
        Ok(())
    }

    /// Writes `response` (the answer to a request whose `Active` guard is `active`). Returns
    /// whether the connection can serve another request.
    async fn answer(
        &mut self,
        response: Response<Metered>,
        active: Active,
        how: Asked,
        mut keep_alive: bool,
    ) -> bool {
        let (parts, body) = response.into_parts();
        let mut body = Guarded::new(body, active);
        let out = if how.head_request || !has_body(parts.status) {
            Out::None
        } else if let Some(n) = body.size_hint().exact() {
            Out::Length(n)
        } else if how.http10 {
            Out::UntilClose
        } else {
            Out::Chunked
        };
        keep_alive &= out != Out::UntilClose;
        encode_answer_head(&mut self.write, &parts, out, keep_alive, how.http10);
        drop(parts);
        if out == Out::None {
            return self.flush(&mut body).await.is_ok() && keep_alive;
        }
        let mut sent = 0u64;
        loop {
            let frame = if self.write.is_empty() {
                // Nothing to write: wait for the body, watching for the client leaving.
                let next = poll_fn(|cx| {
                    if let Poll::Ready(frame) = Pin::new(&mut body).poll_frame(cx) {
                        return Poll::Ready(Some(frame));
                    }
                    self.poll_gone(cx).map(|()| None)
                })
                .await;
                match next {
                    Some(frame) => frame,
                    None => return false,
                }
            } else {
                match ready_now(&mut body) {
                    Some(frame) => frame,
                    None => {
                        if self.flush(&mut body).await.is_err() {
                            return false;
                        }
                        continue;
                    }
                }
            };
            match frame {
                None => break,
                Some(Ok(frame)) => {
                    // Trailers are not passed on (hyper's server did not either over HTTP/1.1).
                    if let Ok(data) = frame.into_data() {
                        sent += data.len() as u64;
                        push_data(&mut self.write, &data, out);
                    }
                }
                // Broken off: what the client was given goes out, and the connection closes
                // (a chunked answer without its last chunk, or short of its length).
                Some(Err(_)) => {
                    let _ = self.flush(&mut body).await;
                    return false;
                }
            }
            if self.write.len() >= WRITE_AT_BYTES && self.flush(&mut body).await.is_err() {
                return false;
            }
        }
        if out == Out::Chunked {
            self.write.extend_from_slice(b"0\r\n\r\n");
        }
        let whole = match out {
            Out::Length(n) => sent == n,
            _ => true,
        };
        self.flush(&mut body).await.is_ok() && keep_alive && whole
    }
}

/// What the request asked that shapes its answer.
#[derive(Clone, Copy, Debug)]
struct Asked {
    head_request: bool,
    http10: bool,
}

/// Serves HTTP/1.1 requests on `client` until it closes, breaks the protocol, or the front
/// door drains. `tracker` starts each request's `Active` guard.
pub(super) async fn serve(mut client: Client, state: Arc<State>, tracker: Tracker) {
    loop {
        let head = match client.read_head().await {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err(refusal) => {
                client.refuse(refusal).await;
                client.linger().await;
                return;
            }
        };
        let active = tracker.request(false);
        client.body = head.framing;
        client.broken = false;
        client.more_sent = false;
        client.continue_left = if head.expect_continue && !client.body_is_end() {
            CONTINUE
        } else {
            &[]
        };
        let how = Asked {
            head_request: head.parts.method == Method::HEAD,
            http10: head.parts.version == Version::HTTP_10,
        };
        let upload = Arc::new(UploadState::default());
        let response = {
            let handling = super::handle(
                state.clone(),
                head.parts,
                Source::Client(&mut client),
                upload,
            );
            handling.await
        };
        if client.gone {
            // The request is dropped with the answer (counted as the client's leaving).
            return;
        }
        // A `100 Continue` begun and not finished goes out whole before the answer; one not
        // begun is not sent (the copy answered without the body).
        client.write.clear();
        if client.continue_left.len() != CONTINUE.len() {
            client.write.extend_from_slice(client.continue_left);
        }
        client.continue_left = &[];
        let body_read = client.skip_unread_body();
        let keep_alive = head.keep_alive && body_read && !state.is_draining();
        if !client.answer(response, active, how, keep_alive).await {
            if !body_read {
                client.linger().await;
            }
            return;
        }
        client.shed_buffers();
    }
}

/// Whether bytes read from `from` on may have ended the head: an empty line (CRLF CRLF, or LF
/// LF, which httparse accepts) ends in them.
fn may_end_head(buf: &[u8], from: usize) -> bool {
    let start = from.saturating_sub(3);
    buf[start..].windows(2).any(|w| w == b"\n\n") || buf[start..].windows(3).any(|w| w == b"\n\r\n")
}

/// Takes a complete request head off the front of `buf`, if it is all there. Header values share
/// the head's bytes; hop-by-hop headers, `Content-Length`, `Transfer-Encoding` and `Expect:
/// 100-continue` are read and left out of the map (the front door frames the copy's request
/// itself), but for a `Connection` header that names other headers (`strip_hop_by_hop`).
pub fn parse_request(
    buf: &mut BytesMut,
    names: &mut NameCache,
) -> Result<Option<RequestHead>, Refusal> {
    let mut spans = HeaderSpans::new();
    let (len, method, target, version) = {
        let mut parsed = [const { std::mem::MaybeUninit::uninit() }; MAX_REQUEST_HEADERS];
        let mut request = httparse::Request::new(&mut []);
        let parse = httparse::ParserConfig::default().parse_request_with_uninit_headers(
            &mut request,
            buf,
            &mut parsed,
        );
        let len = match parse {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(HEAD_TOO_LARGE),
            Err(_) => return Err(bad("malformed request head")),
        };
        if len > MAX_HEADER_BYTES {
            return Err(HEAD_TOO_LARGE);
        }
        spans.fill(buf, request.headers);
        let base = buf.as_ptr() as usize;
        // Offsets within a head of at most MAX_HEADER_BYTES (checked above).
        let at = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
        let method = request.method.unwrap_or_default().as_bytes();
        let target = request.path.unwrap_or_default().as_bytes();
        (
            len,
            (at(method), method.len() as u32),
            (at(target), target.len() as u32),
            request.version,
        )
    };
    let bytes = buf.split_to(len).freeze();
    let span = |(start, n): (u32, u32)| start as usize..(start + n) as usize;
    let method = Method::from_bytes(&bytes[span(method)]).map_err(|_| bad("bad method"))?;
    let uri =
        Uri::from_maybe_shared(bytes.slice(span(target))).map_err(|_| bad("bad request target"))?;
    let version = if version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let mut facts = RequestFacts::default();
    let headers = spans.map(&bytes, names, |kind, value| facts.read(kind, value), bad)?;
    let framing = match (facts.chunked, facts.length) {
        (Some(_), Some(_)) => return Err(bad("both Transfer-Encoding and Content-Length")),
        (Some(_), None) if version == Version::HTTP_10 => {
            return Err(bad("Transfer-Encoding in an HTTP/1.0 request"))
        }
        (Some(false), None) => return Err(bad("Transfer-Encoding not ending in chunked")),
        (Some(true), None) => Framing::Chunked(Chunk::Size),
        (None, None) | (None, Some(Some(0))) => Framing::Done,
        (None, Some(Some(n))) => Framing::Length(n),
        (None, Some(None)) => return Err(bad("invalid Content-Length")),
    };
    let keep_alive = match version {
        Version::HTTP_10 => facts.keep_alive && !facts.close,
        _ => !facts.close,
    };
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    parts.headers = headers;
    Ok(Some(RequestHead {
        parts,
        framing,
        keep_alive,
        expect_continue: facts.expect_continue,
    }))
}

/// What a request's framing and connection headers say, read as its header map is built.
#[derive(Debug, Default)]
struct RequestFacts {
    close: bool,
    keep_alive: bool,
    /// With a `Transfer-Encoding`: whether chunked is its last coding.
    chunked: Option<bool>,
    /// With a `Content-Length`: the length, or None if a value is invalid or they disagree.
    length: Option<Option<u64>>,
    expect_continue: bool,
}

impl RequestFacts {
    /// Reads a header of the given kind; true for one left out of the map.
    fn read(&mut self, kind: Kind, value: &[u8]) -> bool {
        match kind {
            Kind::EndToEnd | Kind::Host | Kind::ContentType => false,
            Kind::Connection => {
                let said = ConnectionTokens::of(value);
                self.close |= said.close;
                self.keep_alive |= said.keep_alive;
                // Kept when it names other headers: `strip_hop_by_hop` removes them and it.
                !said.names_others
            }
            Kind::TransferEncoding => {
                self.chunked = Some(ends_chunked(value));
                true
            }
            Kind::ContentLength => {
                self.length = Some(merge_length(self.length, value));
                true
            }
            Kind::Expect => {
                // Answered here; another expectation passes on.
                let continue_ = value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
                self.expect_continue |= continue_;
                continue_
            }
            Kind::HopByHop => true,
        }
    }
}

/// Whether an answer with this status has a body (RFC 9110 section 6.4.1).
fn has_body(status: StatusCode) -> bool {
    !(status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED)
}

/// How an answer's body goes to the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Out {
    /// No body (HEAD, 204, 304): the head goes as the copy gave it.
    None,
    /// This many bytes, stated in `Content-Length`.
    Length(u64),
    /// Chunked (HTTP/1.1 only).
    Chunked,
    /// Ended by closing the connection (an HTTP/1.0 client, a body of unknown length).
    UntilClose,
}

fn status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The answer head as the client gets it: the copy's end-to-end headers (values are `http`'s
/// validated types: no CR or LF can be in them), the framing header the front door chose, a
/// `Date` if the answer has none (RFC 9110 section 6.6.1, as hyper added), and `Connection` as
/// the connection goes on.
fn encode_answer_head(
    out: &mut Vec<u8>,
    parts: &response::Parts,
    body: Out,
    keep_alive: bool,
    http10: bool,
) {
    status_line(out, parts.status);
    let mut dated = false;
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH && body != Out::None {
            // The body's own length is written below.
            continue;
        }
        dated |= name == header::DATE;
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !dated {
        date_header(out);
    }
    match body {
        Out::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Out::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Out::None | Out::UntilClose => {}
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes the head of an answer of `length` bytes (chunked if unknown) to an HTTP/1.1 client
/// that keeps its connection, as the front door writes one. For `benches/proxy.rs`.
pub fn write_answer_head(out: &mut Vec<u8>, parts: &response::Parts, length: Option<u64>) {
    let body = length.map_or(Out::Chunked, Out::Length);
    encode_answer_head(out, parts, body, true, false);
}

/// Appends a piece of the body in the answer's framing.
fn push_data(out: &mut Vec<u8>, data: &[u8], body: Out) {
    if data.is_empty() {
        return;
    }
    if body == Out::Chunked {
        let mut size = [0u8; 16];
        let digits = hex(data.len() as u64, &mut size);
        out.extend_from_slice(digits);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(data);
    }
}

/// `n` in lowercase hexadecimal, without leading zeros.
fn hex(n: u64, buf: &mut [u8; 16]) -> &[u8] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut at = buf.len();
    let mut n = n;
    loop {
        at -= 1;
        buf[at] = DIGITS[(n & 0xf) as usize];
        n >>= 4;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// `date: <IMF-fixdate>\r\n`, formatted once a second per thread.
fn date_header(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, [u8; 29])> = const { std::cell::RefCell::new((u64::MAX, [0; 29])) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != second {
            let formatted = httpdate::fmt_http_date(now);
            if formatted.len() == text.len() {
                text.copy_from_slice(formatted.as_bytes());
                *at = second;
            }
        }
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(text);
        out.extend_from_slice(b"\r\n");
    });
}

/// The next frame if the body has one without waiting.
fn ready_now(body: &mut Guarded<Metered>) -> Option<Option<Result<Frame<Bytes>, io::Error>>> {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match Pin::new(body).poll_frame(&mut cx) {
        Poll::Ready(frame) => Some(frame),
        Poll::Pending => None,
    }
}

/// A connection whose first bytes were read to tell its protocol: they are read again first.
#[derive(Debug)]
pub struct Prefixed {
    prefix: Bytes,
    stream: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let prefix = self.prefix.split_to(n);
            buf.put_slice(&prefix);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
