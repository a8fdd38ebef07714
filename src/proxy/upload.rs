//! The client's request body on its way to a copy, watched: whether it was sent whole, and if
//! not, whose fault that was. The front door reads this to keep the client's faults out of the
//! model's metrics (`super::handle`).
//!
//! Three client faults are told apart from a copy's failure:
//! - bad framing: the body's framing is broken (a malformed chunked encoding); hyper reports an
//!   `InvalidData`/`InvalidInput` I/O error;
//! - left: the client went away mid-body (EOF or a reset before the body's end);
//! - stalled: the response timeout elapsed while the front door was waiting for the client's
//!   bytes ([`UploadState::waiting_on_client`]), not for the copy (a copy that stops reading
//!   leaves the body unpolled, so that is the copy's timeout).
//!
//! It also enforces `proxy.max_request_body_bytes` on bodies without a declared length (a
//! chunked body growing past it), as `http_body_util::Limited` did.
//!
//! The body comes from hyper (an h2c stream) or from the front door's own HTTP/1.1 server
//! ([`super::server::Client`], which reads it off the client's socket as the copy takes it).

use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::server::Client;

/// Why the client's body did not reach the copy whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UploadFault {
    /// Broken framing (malformed chunked encoding).
    BadFraming,
    /// The client went away mid-body.
    Left,
    /// The body grew past `proxy.max_request_body_bytes`.
    OverLimit,
}

const SENDING: u8 = 0;
const WAITING: u8 = 1;
const DONE: u8 = 2;
const BAD_FRAMING: u8 = 3;
const LEFT: u8 = 4;
const OVER_LIMIT: u8 = 5;

/// Where the upload stands, shared between the body (in the connection's task) and the
/// request's handler.
#[derive(Debug, Default)]
pub struct UploadState(AtomicU8);

impl UploadState {
    fn set(&self, state: u8) {
        self.0.store(state, Ordering::Relaxed);
    }

    /// The client's fault, if the body failed because of it.
    pub fn fault(&self) -> Option<UploadFault> {
        match self.0.load(Ordering::Relaxed) {
            BAD_FRAMING => Some(UploadFault::BadFraming),
            LEFT => Some(UploadFault::Left),
            OVER_LIMIT => Some(UploadFault::OverLimit),
            _ => None,
        }
    }

    /// The body was asked for more and the client has not sent it yet.
    pub fn waiting_on_client(&self) -> bool {
        self.0.load(Ordering::Relaxed) == WAITING
    }
}

/// The error the copy's connection sees when the client's body fails.
#[derive(Debug)]
pub struct UploadError {
    pub fault: UploadFault,
    source: Option<Box<dyn StdError + Send + Sync>>,
}

impl UploadError {
    /// The client's fault `fault`, found by the front door's own HTTP/1.1 server.
    pub fn client(fault: UploadFault, source: Option<std::io::Error>) -> Self {
        UploadError {
            fault,
            source: source.map(|e| Box::new(e) as Box<dyn StdError + Send + Sync>),
        }
    }
}

impl std::fmt::Display for UploadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.fault {
            UploadFault::BadFraming => f.write_str("the client's request body is badly framed"),
            UploadFault::Left => f.write_str("the client went away mid-body"),
            UploadFault::OverLimit => f.write_str("the request body is over the limit"),
        }
    }
}

impl StdError for UploadError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

/// Which client fault a failed incoming body is.
fn classify(e: &hyper::Error) -> UploadFault {
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput => {
                    UploadFault::BadFraming
                }
                _ => UploadFault::Left,
            };
        }
        source = s.source();
    }
    if e.is_parse() {
        UploadFault::BadFraming
    } else {
        UploadFault::Left
    }
}

/// Where the client's body comes from.
pub enum Source<'a> {
    /// An h2c stream's, from hyper.
    Hyper(Incoming),
    /// An HTTP/1.1 request's, read off the client's connection.
    Client(&'a mut Client),
}

/// The client's body, capped and watched.
pub struct Upload<'a> {
    inner: Source<'a>,
    remaining: u64,
    state: Arc<UploadState>,
}

impl<'a> Upload<'a> {
    pub fn new(inner: Source<'a>, limit: u64, state: Arc<UploadState>) -> Self {
        Upload {
            inner,
            remaining: limit,
            state,
        }
    }
}

impl Upload<'_> {
    /// Ready when an HTTP/1.1 client closed its connection after its body (h2c: hyper drops
    /// the request itself).
    pub fn poll_client_gone(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.inner {
            Source::Hyper(_) => Poll::Pending,
            Source::Client(client) => client.poll_gone(cx),
        }
    }
}

impl Body for Upload<'_> {
    type Data = Bytes;
    type Error = UploadError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UploadError>>> {
        let this = &mut *self;
        let polled = match &mut this.inner {
            Source::Hyper(body) => Pin::new(body).poll_frame(cx).map_err(|e| UploadError {
                fault: classify(&e),
                source: Some(Box::new(e)),
            }),
            Source::Client(client) => client
                .poll_body(cx)
                .map(|data| data.map(|d| d.map(Frame::data))),
        };
        match polled {
            Poll::Pending => {
                this.state.set(WAITING);
                Poll::Pending
            }
            Poll::Ready(None) => {
                this.state.set(DONE);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > this.remaining {
                        this.state.set(OVER_LIMIT);
                        return Poll::Ready(Some(Err(UploadError {
                            fault: UploadFault::OverLimit,
                            source: None,
                        })));
                    }
                    this.remaining -= n;
                }
                this.state.set(SENDING);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.state.set(match e.fault {
                    UploadFault::BadFraming => BAD_FRAMING,
                    UploadFault::Left => LEFT,
                    UploadFault::OverLimit => OVER_LIMIT,
                });
                Poll::Ready(Some(Err(e)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Source::Hyper(body) => body.is_end_stream(),
            Source::Client(client) => client.body_is_end(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Source::Hyper(body) => body.size_hint(),
            Source::Client(client) => client.body_size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_upload_is_nobody_s_fault_and_not_waiting() {
        let state = UploadState::default();
        assert_eq!(state.fault(), None);
        assert!(!state.waiting_on_client());
        state.set(WAITING);
        assert!(state.waiting_on_client());
        state.set(LEFT);
        assert_eq!(state.fault(), Some(UploadFault::Left));
        assert!(!state.waiting_on_client());
    }
}
