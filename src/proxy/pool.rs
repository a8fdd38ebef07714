//! Keep-alive HTTP/1.1 connections to one model copy ([`Connection`]).
//!
//! A request takes the copy's newest idle connection (one short lock), and the front door hands
//! it back when the answer's body has been read to its end (`Metered` in `mod.rs`): no task per
//! request or per connection. An idle connection is watched by no one; one the copy closed
//! meanwhile is found when it is next taken ([`Connection::is_stale`]).
//!
//! Idle connections are closed after [`POOL_IDLE_TIMEOUT`](super::POOL_IDLE_TIMEOUT) by
//! [`Pool::reap`], which the sampling loop's tick calls (`FrontDoor::drain`): the front door owns
//! no clock of its own. A copy that leaves the table drops its pool, and so its connections,
//! when its last request ends.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::request;

use super::client::{Answered, Connection, Due, SendError};
use super::upload::Upload;
use super::{POOL_IDLE_TIMEOUT, POOL_MAX_IDLE_PER_HOST};

struct Idle {
    connection: Box<Connection>,
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

    /// The newest idle connection that can take a request now; stale ones are closed.
    fn take(&self) -> Option<Box<Connection>> {
        let mut idle = self.lock();
        while let Some(Idle { connection, .. }) = idle.pop() {
            if !connection.is_stale() {
                return Some(connection);
            }
        }
        None
    }

    /// Hands a connection back after its answer was read to the end (`now`: when; the caller
    /// has just read the clock).
    pub fn put(&self, connection: Box<Connection>, now: Instant) {
        let mut idle = self.lock();
        if idle.len() < POOL_MAX_IDLE_PER_HOST {
            idle.push(Idle {
                connection,
                since: now,
            });
        }
    }

    /// Closes the connections idle since before `now - POOL_IDLE_TIMEOUT`.
    pub fn reap(&self, now: Instant) {
        self.lock()
            .retain(|i| now.saturating_duration_since(i.since) < POOL_IDLE_TIMEOUT);
    }

    /// Sends the request to the copy at `authority` on an idle connection, or a new one, and
    /// returns the answer head (due by `due`) with its body, which owns the connection until its
    /// end.
    ///
    /// A request that did not reach the copy (an idle connection the copy had closed), or one
    /// safe to send twice that a reused connection closed on without an answer, goes on another
    /// connection, as hyper-util's client did.
    pub async fn send(
        &self,
        authority: &str,
        connect_timeout: Duration,
        due: Due,
        head: &request::Parts,
        body: &mut Upload<'_>,
    ) -> Result<Answered, SendError> {
        while let Some(connection) = self.take() {
            match connection.send(head, body, true, due).await {
                Ok(answered) => return Ok(answered),
                Err(failed) if failed.retry => continue,
                Err(failed) => return Err(failed.error),
            }
        }
        let connection = Connection::connect(authority, connect_timeout).await?;
        connection
            .send(head, body, false, due)
            .await
            .map_err(|failed| failed.error)
    }
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
                let connection = Connection::connect(&authority, Duration::from_secs(5))
                    .await
                    .unwrap();
                pool.put(connection, Instant::now());
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
        let got = rt.block_on(Connection::connect(
            &format!("127.0.0.1:{port}"),
            Duration::from_secs(5),
        ));
        assert!(matches!(got, Err(SendError::Connect(_))), "{got:?}");
    }
}
