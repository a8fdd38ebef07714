//! Keep-alive HTTP/1.1 connections to one model copy, on `hyper::client::conn::http1`.
//!
//! Replaces hyper-util's legacy client (measured in `docs/performance.md`): that client races a
//! pool checkout against a connect, takes its pool lock several times, and spawns a task per
//! request to put the connection back once its answer's body has been read. Here a request
//! takes the copy's newest idle connection (one short lock), and the response body hands it back
//! when its last frame has been read (`Metered` in `mod.rs`): no task per request.
//!
//! Idle connections are closed after [`POOL_IDLE_TIMEOUT`](super::POOL_IDLE_TIMEOUT) by
//! [`Pool::reap`], which the sampling loop's tick calls (`FrontDoor::drain`): the front door owns
//! no clock of its own. A copy that leaves the table drops its pool, and so its connections,
//! when its last request ends.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use super::{POOL_IDLE_TIMEOUT, POOL_MAX_IDLE_PER_HOST};

/// The request body as sent to a copy: the client's, capped at `proxy.max_request_body_bytes` and
/// watched for the client's faults.
pub type UpstreamBody = super::upload::Upload;

/// One connection's request handle; dropping it (when idle) closes the connection.
pub type Sender = SendRequest<UpstreamBody>;

/// Why a request got no answer head from the copy.
#[derive(Debug)]
pub enum SendError {
    /// The copy did not accept the connection within `proxy.connect_timeout_ms`.
    ConnectTimeout,
    /// The copy refused the connection (or the address did not resolve).
    Connect(std::io::Error),
    /// The request was sent (or being sent) and the connection failed before an answer head:
    /// reset, closed, or the request body failed (over the limit, the client gone).
    Send(hyper::Error),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::ConnectTimeout => f.write_str("connect timed out"),
            SendError::Connect(e) => write!(f, "connect: {e}"),
            SendError::Send(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendError::ConnectTimeout => None,
            SendError::Connect(e) => Some(e),
            SendError::Send(e) => Some(e),
        }
    }
}

struct Idle {
    sender: Sender,
    since: Instant,
}

/// The idle connections to one copy, newest last.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<Vec<Idle>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("idle", &self.idle_count())
            .finish()
    }
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many idle connections the pool holds.
    pub fn idle_count(&self) -> usize {
        self.lock().len()
    }

    /// The newest idle connection that can take a request now. Closed ones are dropped; one
    /// still busy (its request body still streaming after the answer ended) stays.
    fn take(&self) -> Option<Sender> {
        let mut idle = self.lock();
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            if idle[i].sender.is_closed() {
                idle.swap_remove(i);
            } else if idle[i].sender.is_ready() {
                return Some(idle.swap_remove(i).sender);
            }
        }
        None
    }

    /// Hands a connection back after its answer was read to the end (`now`: when; the caller
    /// has just read the clock).
    pub fn put(&self, sender: Sender, now: Instant) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.lock();
        if idle.len() < POOL_MAX_IDLE_PER_HOST {
            idle.push(Idle { sender, since: now });
        }
    }

    /// Closes the connections idle since before `now - POOL_IDLE_TIMEOUT`, and closed ones.
    pub fn reap(&self, now: Instant) {
        self.lock().retain(|i| {
            !i.sender.is_closed() && now.saturating_duration_since(i.since) < POOL_IDLE_TIMEOUT
        });
    }

    /// Sends `req` to the copy at `authority` on an idle connection, or a new one. Returns the
    /// answer head and the connection, which the caller hands back with [`Pool::put`] once the
    /// answer's body has been read to the end.
    ///
    /// A request an idle connection turned down before writing any of it (the copy closed the
    /// connection meanwhile) goes on another, as hyper-util's client did.
    pub async fn send(
        &self,
        authority: &str,
        connect_timeout: Duration,
        mut req: Request<UpstreamBody>,
    ) -> Result<(Response<Incoming>, Sender), SendError> {
        while let Some(mut sender) = self.take() {
            match sender.try_send_request(req).await {
                Ok(response) => return Ok((response, sender)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(SendError::Send(e.into_error())),
                },
            }
        }
        let mut sender = connect(authority, connect_timeout).await?;
        match sender.send_request(req).await {
            Ok(response) => Ok((response, sender)),
            Err(e) => Err(SendError::Send(e)),
        }
    }
}

/// Opens a connection and starts its task on the front door's runtime.
async fn connect(authority: &str, timeout: Duration) -> Result<Sender, SendError> {
    let stream =
        match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(authority)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Err(SendError::ConnectTimeout)
            }
            Ok(Err(e)) => return Err(SendError::Connect(e)),
            Err(_elapsed) => return Err(SendError::ConnectTimeout),
        };
    let _ = stream.set_nodelay(true);
    // Flattened writes, as on the server side (`super::serve`).
    let (sender, connection) = hyper::client::conn::http1::Builder::new()
        .writev(false)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(SendError::Send)?;
    // Ends when the connection closes: the copy closed it, it failed, or its sender was dropped.
    tokio::spawn(connection);
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_connections_are_kept_then_closed_after_the_idle_timeout() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            // The kernel completes the connections (backlog); nothing needs to answer.
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let authority = listener.local_addr().unwrap().to_string();
            let pool = Pool::default();
            for _ in 0..2 {
                let sender = connect(&authority, Duration::from_secs(5)).await.unwrap();
                pool.put(sender, Instant::now());
            }
            assert_eq!(pool.idle_count(), 2);
            pool.reap(Instant::now());
            assert_eq!(pool.idle_count(), 2, "not idle long enough yet");
            pool.reap(Instant::now() + POOL_IDLE_TIMEOUT);
            assert_eq!(pool.idle_count(), 0, "idle past the timeout");
        });
    }

    #[test]
    fn a_refused_connection_is_a_connect_error() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let got = rt.block_on(connect(
            &format!("127.0.0.1:{port}"),
            Duration::from_secs(5),
        ));
        assert!(matches!(got, Err(SendError::Connect(_))), "{got:?}");
    }
}
