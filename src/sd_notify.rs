//! systemd's notification protocol (`sd_notify(3)`), written out instead of linking libsystemd:
//! one datagram of `KEY=VALUE` lines to the unix socket named by `NOTIFY_SOCKET` (a path, or an
//! abstract socket when it starts with '@'). Without `NOTIFY_SOCKET` (not started by systemd with
//! `Type=notify`, or inside a container) every call does nothing.
//!
//! The watchdog (`WatchdogSec=` in the unit) sets `WATCHDOG_USEC`, and `WATCHDOG_PID` to the
//! process it is meant for; the agent must send `WATCHDOG=1` more often than that, and sends it at
//! half the period from the sampling loop, so a loop that stops turning is killed and restarted.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// The socket path limit: `sizeof(sockaddr_un.sun_path)` on Linux, less the terminating NUL.
const MAX_SOCKET_PATH_BYTES: usize = 107;

/// A connection to the service manager, or none.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` from the environment.
    pub fn from_env() -> Self {
        let socket = std::env::var("NOTIFY_SOCKET").ok();
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let pid = std::env::var("WATCHDOG_PID").ok();
        Self::new(socket.as_deref(), usec.as_deref(), pid.as_deref())
    }

    /// As [`Notifier::from_env`], from given values. A socket that cannot be used is logged once
    /// and notifications are off: systemd then fails the start (no READY=1), which says more than
    /// an agent that refuses to run.
    pub fn new(
        socket: Option<&str>,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
    ) -> Self {
        let target = socket.filter(|s| !s.is_empty()).and_then(|s| match open(s) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(socket = s, error = %e, "NOTIFY_SOCKET cannot be used; no notifications to systemd");
                None
            }
        });
        let for_us = watchdog_pid
            .map(|p| p.trim().parse::<u32>().ok() == Some(std::process::id()))
            .unwrap_or(true);
        let watchdog = watchdog_usec
            .and_then(|u| u.trim().parse::<u64>().ok())
            .filter(|&u| u > 0 && for_us)
            .map(Duration::from_micros);
        Notifier { target, watchdog }
    }

    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// How often to send `WATCHDOG=1`: half the watchdog period, as `sd_watchdog_enabled(3)` advises.
    pub fn watchdog_every(&self) -> Option<Duration> {
        self.watchdog.filter(|_| self.enabled()).map(|w| w / 2)
    }

    /// Sends `state` (newline-separated `KEY=VALUE` lines). Failures are logged, never fatal.
    pub fn notify(&self, state: &str) {
        if let Some((socket, addr)) = &self.target {
            if let Err(e) = socket.send_to_addr(state.as_bytes(), addr) {
                tracing::warn!(error = %e, state, "sd_notify failed");
            }
        }
    }

    pub fn ready(&self) {
        self.notify("READY=1\nSTATUS=sampling");
    }

    pub fn watchdog(&self) {
        self.notify("WATCHDOG=1");
    }

    pub fn stopping(&self) {
        self.notify("STOPPING=1\nSTATUS=publishing the partial window");
    }

    /// `RELOADING=1` with the `MONOTONIC_USEC` systemd 253+ wants next to it.
    pub fn reloading(&self) {
        self.notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
    }

    /// Ends a reload (`READY=1` again) with a one-line status.
    pub fn reloaded(&self, status: &str) {
        let status: String = status.chars().filter(|c| *c != '\n').collect();
        self.notify(&format!("READY=1\nSTATUS={status}"));
    }
}

fn open(socket: &str) -> io::Result<(UnixDatagram, SocketAddr)> {
    let addr = if let Some(name) = socket.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        SocketAddr::from_abstract_name(name.as_bytes())?
    } else if socket.starts_with('/') && socket.len() <= MAX_SOCKET_PATH_BYTES {
        SocketAddr::from_pathname(socket)?
    } else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "neither an absolute path (at most 107 bytes) nor an abstract name ('@...')",
        ));
    };
    Ok((UnixDatagram::unbound()?, addr))
}

fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the pointer given; CLOCK_MONOTONIC exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 256];
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn path_socket_gets_ready_watchdog_and_stopping() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        let pid = std::process::id().to_string();
        let n = Notifier::new(path.to_str(), Some("10000000"), Some(&pid));
        assert_eq!(n.watchdog_every(), Some(Duration::from_secs(5)));
        n.ready();
        assert_eq!(recv(&server), "READY=1\nSTATUS=sampling");
        n.watchdog();
        assert_eq!(recv(&server), "WATCHDOG=1");
        n.reloading();
        assert!(recv(&server).starts_with("RELOADING=1\nMONOTONIC_USEC="));
        n.stopping();
        assert!(recv(&server).starts_with("STOPPING=1"));
    }

    #[test]
    fn abstract_socket_is_reached() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("ema-test-notify-{}", std::process::id());
        let server =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        let n = Notifier::new(Some(&format!("@{name}")), None, None);
        assert!(n.enabled());
        assert_eq!(n.watchdog_every(), None);
        n.ready();
        assert!(recv(&server).starts_with("READY=1"));
    }

    #[test]
    fn no_socket_or_another_pid_means_no_watchdog() {
        let off = Notifier::new(None, Some("10000000"), None);
        assert!(!off.enabled());
        assert_eq!(off.watchdog_every(), None);
        off.ready(); // does nothing, must not fail
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n");
        let _server = UnixDatagram::bind(&path).unwrap();
        let other = Notifier::new(path.to_str(), Some("10000000"), Some("1"));
        assert_eq!(
            other.watchdog_every(),
            None,
            "WATCHDOG_PID names another process"
        );
        let relative = Notifier::new(Some("relative/path"), None, None);
        assert!(!relative.enabled());
    }
}
