//! EMF documents to stdout, a file (appended, one document per line), or the CloudWatch agent's
//! listener over TCP or UDP (port 25888, newline-terminated JSON).
//!
//! The writer runs in its own task behind a channel, so a slow or absent destination never delays
//! sampling. Network destinations reconnect with backoff; batches wait in a bounded queue
//! meanwhile, oldest dropped (and counted) when it is full.

use std::collections::VecDeque;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::config::EmfDestination;
use crate::encode::limits::{EMF_MAX_DOCUMENT_BYTES, UDP_MAX_DOCUMENT_BYTES};
use crate::encode::Encoded;
use crate::shutdown::DeadlineCell;
use crate::telemetry::{self, Counter, Gauge};

/// Batches kept while the destination is unreachable: about an hour of a large host's windows.
pub const MAX_PENDING_BYTES: usize = 16 * 1024 * 1024;

/// How long a connect to the CloudWatch agent's listener may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

const RECONNECT_BASE: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(30);

/// The documents of one window, in order.
pub type Batch = Vec<String>;

/// An open (or openable) EMF destination.
#[derive(Debug)]
pub enum EmfWriter {
    Stdout(tokio::io::Stdout),
    File {
        path: PathBuf,
        file: tokio::fs::File,
    },
    Tcp {
        addr: String,
        stream: Option<TcpStream>,
    },
    Udp {
        addr: String,
        socket: Option<UdpSocket>,
    },
}

impl EmfWriter {
    /// Opens a destination. A file that cannot be opened is an error now, at start; network
    /// destinations connect lazily and retry.
    pub async fn open(destination: &EmfDestination) -> io::Result<Self> {
        Ok(match destination {
            EmfDestination::Stdout => EmfWriter::Stdout(tokio::io::stdout()),
            EmfDestination::File(path) => {
                let file = tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .await?;
                EmfWriter::File {
                    path: path.clone(),
                    file,
                }
            }
            EmfDestination::Tcp(addr) => EmfWriter::Tcp {
                addr: addr.clone(),
                stream: None,
            },
            EmfDestination::Udp(addr) => EmfWriter::Udp {
                addr: addr.clone(),
                socket: None,
            },
            EmfDestination::CloudWatchLogs => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "cloudwatch_logs is not an EMF writer",
                ))
            }
        })
    }

    /// The largest document this destination accepts.
    pub fn max_document_bytes(&self) -> usize {
        match self {
            EmfWriter::Udp { .. } => UDP_MAX_DOCUMENT_BYTES,
            _ => EMF_MAX_DOCUMENT_BYTES,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            EmfWriter::Stdout(_) => "stdout".into(),
            EmfWriter::File { path, .. } => format!("file:{}", path.display()),
            EmfWriter::Tcp { addr, .. } => format!("tcp://{addr}"),
            EmfWriter::Udp { addr, .. } => format!("udp://{addr}"),
        }
    }

    /// Writes one batch whole. On error the connection (if any) is dropped, to be made again.
    pub async fn write(&mut self, batch: &[String]) -> io::Result<()> {
        let result = self.write_inner(batch).await;
        if result.is_err() {
            match self {
                EmfWriter::Tcp { stream, .. } => *stream = None,
                EmfWriter::Udp { socket, .. } => *socket = None,
                _ => {}
            }
        }
        result
    }

    async fn write_inner(&mut self, batch: &[String]) -> io::Result<()> {
        match self {
            EmfWriter::Stdout(out) => {
                out.write_all(&joined(batch)).await?;
                out.flush().await
            }
            EmfWriter::File { file, .. } => {
                file.write_all(&joined(batch)).await?;
                file.flush().await
            }
            EmfWriter::Tcp { addr, stream } => {
                if stream.is_none() {
                    let s =
                        tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr.as_str()))
                            .await
                            .map_err(|_| {
                                io::Error::new(io::ErrorKind::TimedOut, "connect timed out")
                            })??;
                    s.set_nodelay(true)?;
                    *stream = Some(s);
                }
                let s = stream
                    .as_mut()
                    .ok_or_else(|| io::Error::other("not connected"))?;
                s.write_all(&joined(batch)).await?;
                s.flush().await
            }
            EmfWriter::Udp { addr, socket } => {
                if socket.is_none() {
                    let s = UdpSocket::bind(if addr.starts_with('[') {
                        "[::]:0"
                    } else {
                        "0.0.0.0:0"
                    })
                    .await?;
                    s.connect(addr.as_str()).await?;
                    *socket = Some(s);
                }
                let s = socket
                    .as_ref()
                    .ok_or_else(|| io::Error::other("not connected"))?;
                for doc in batch {
                    let mut datagram = Vec::with_capacity(doc.len() + 1);
                    datagram.extend_from_slice(doc.as_bytes());
                    datagram.push(b'\n');
                    s.send(&datagram).await?;
                }
                Ok(())
            }
        }
    }
}

fn joined(batch: &[String]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(batch.iter().map(|d| d.len() + 1).sum());
    for doc in batch {
        buf.extend_from_slice(doc.as_bytes());
        buf.push(b'\n');
    }
    buf
}

/// Writes batches from `rx` until it closes, then writes what is still pending, until the
/// deadline in `stop` if the destination is failing.
pub async fn run(mut writer: EmfWriter, mut rx: mpsc::Receiver<Encoded>, stop: DeadlineCell) {
    let mut pending: VecDeque<Batch> = VecDeque::new();
    let mut pending_bytes = 0usize;
    let mut backoff = Backoff::new(RECONNECT_BASE, RECONNECT_MAX);
    let mut retry_at: Option<Instant> = None;
    // Set when `rx` closes: keep retrying until then.
    let mut drain_until: Option<Instant> = None;
    loop {
        if drain_until.is_none() {
            let received = match retry_at {
                Some(at) if !pending.is_empty() => tokio::select! {
                    b = rx.recv() => Some(b),
                    _ = tokio::time::sleep_until(at) => None,
                },
                _ => Some(rx.recv().await),
            };
            match received {
                Some(Some(Encoded::PutMetricData { .. } | Encoded::Otlp { .. })) => {
                    telemetry::warn(
                        Counter::WindowsDropped,
                        1,
                        "a PutMetricData or OTLP window reached the EMF writer; dropped",
                    )
                }
                Some(Some(Encoded::Emf {
                    documents: batch, ..
                })) => {
                    pending_bytes += batch.iter().map(String::len).sum::<usize>();
                    pending.push_back(batch);
                    while pending_bytes > MAX_PENDING_BYTES && pending.len() > 1 {
                        if let Some(old) = pending.pop_front() {
                            pending_bytes -= old.iter().map(String::len).sum::<usize>();
                            telemetry::warn(
                                Counter::EmfDocumentsDropped,
                                old.len() as u64,
                                "EMF destination unreachable and the pending queue is full; oldest window dropped",
                            );
                        }
                    }
                }
                Some(None) => drain_until = Some(stop.get().sinks_stop_sending()),
                None => {}
            }
        } else if let Some(at) = retry_at {
            let deadline = drain_until.unwrap_or(at);
            if at > deadline {
                break;
            }
            tokio::time::sleep_until(at).await;
        }
        if retry_at.is_some_and(|at| Instant::now() < at) {
            continue;
        }
        while let Some(batch) = pending.front() {
            let started = Instant::now();
            match writer.write(batch).await {
                Ok(()) => {
                    telemetry::add(Counter::EmfDocumentsWritten, batch.len() as u64);
                    telemetry::set(Gauge::LastPublishMs, crate::clock::system_now_ms());
                    telemetry::set(
                        Gauge::PublishLatencyUs,
                        started.elapsed().as_micros() as u64,
                    );
                    pending_bytes -= batch.iter().map(String::len).sum::<usize>();
                    pending.pop_front();
                    if retry_at.take().is_some() {
                        telemetry::warn(
                            Counter::SinkReconnects,
                            1,
                            "EMF destination reachable again",
                        );
                    }
                    backoff.reset();
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    telemetry::add(Counter::SinkWriteErrors, 1);
                    tracing::warn!(destination = %writer.describe(), error = %e, retry_in_ms = delay.as_millis() as u64, "EMF write failed; will retry");
                    retry_at = Some(Instant::now() + delay);
                    break;
                }
            }
        }
        // Windows held back by a failing destination (the one just written is not counted).
        telemetry::set(Gauge::SpooledWindows, pending.len() as u64);
        if drain_until.is_some() && pending.is_empty() {
            break;
        }
    }
    let lost: usize = pending.iter().map(Vec::len).sum();
    telemetry::warn(
        Counter::EmfDocumentsDropped,
        lost as u64,
        "shutting down with the EMF destination unreachable; pending documents dropped",
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stop deadline that leaves `drain` for the drain after the close.
    fn stop_in(drain: Duration) -> DeadlineCell {
        let cell = DeadlineCell::default();
        let at = Instant::now() + drain + crate::shutdown::DRAIN_MARGIN;
        cell.set(crate::shutdown::Deadline(at));
        cell
    }
    use tokio::io::AsyncBufReadExt;

    fn emf(documents: Batch) -> Encoded {
        Encoded::Emf {
            window_start_ms: 0,
            documents,
        }
    }

    #[tokio::test]
    async fn file_destination_appends_one_document_per_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("emf.log");
        std::fs::write(&path, "existing\n").unwrap();
        let writer = EmfWriter::open(&EmfDestination::File(path.clone()))
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(4);
        let task = tokio::spawn(run(writer, rx, stop_in(Duration::from_secs(1))));
        tx.send(emf(vec!["{\"a\":1}".into(), "{\"b\":2}".into()]))
            .await
            .unwrap();
        tx.send(emf(vec!["{\"c\":3}".into()])).await.unwrap();
        drop(tx);
        task.await.unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "existing\n{\"a\":1}\n{\"b\":2}\n{\"c\":3}\n"
        );
    }

    #[tokio::test]
    async fn tcp_destination_reconnects_and_delivers_in_order() {
        // Reserve a port, then close it so the first attempts are refused.
        let probe = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let writer = EmfWriter::open(&EmfDestination::Tcp(addr.to_string()))
            .await
            .unwrap();
        let _counters = crate::testing::counters().await;
        let (errors, reconnects) = (
            telemetry::get(Counter::SinkWriteErrors),
            telemetry::get(Counter::SinkReconnects),
        );
        let (tx, rx) = mpsc::channel(4);
        let task = tokio::spawn(run(writer, rx, stop_in(Duration::from_secs(10))));
        tx.send(emf(vec!["{\"n\":1}".into()])).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        tx.send(emf(vec!["{\"n\":2}".into()])).await.unwrap();
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let (conn, _) = listener.accept().await.unwrap();
        let mut lines = tokio::io::BufReader::new(conn).lines();
        assert_eq!(lines.next_line().await.unwrap().unwrap(), "{\"n\":1}");
        assert_eq!(lines.next_line().await.unwrap().unwrap(), "{\"n\":2}");
        drop(tx);
        task.await.unwrap();
        // Refused until the listener came: at least one failed write (how many depends on the
        // backoff), and exactly one recovery.
        assert!(telemetry::get(Counter::SinkWriteErrors) > errors);
        assert_eq!(telemetry::get(Counter::SinkReconnects), reconnects + 1);
    }

    #[tokio::test]
    async fn udp_destination_sends_one_datagram_per_document() {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let mut writer = EmfWriter::open(&EmfDestination::Udp(addr.to_string()))
            .await
            .unwrap();
        assert_eq!(writer.max_document_bytes(), UDP_MAX_DOCUMENT_BYTES);
        writer
            .write(&["{\"x\":1}".into(), "{\"y\":2}".into()])
            .await
            .unwrap();
        let mut buf = [0u8; 128];
        let n = socket.recv(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"{\"x\":1}\n");
        let n = socket.recv(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"{\"y\":2}\n");
    }

    #[tokio::test]
    async fn unreachable_destination_at_shutdown_gives_up_after_the_drain_period() {
        let probe = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let writer = EmfWriter::open(&EmfDestination::Tcp(addr.to_string()))
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(4);
        // Its failed writes move the error counter the test above counts.
        let _counters = crate::testing::counters().await;
        let before = telemetry::get(Counter::EmfDocumentsDropped);
        let task = tokio::spawn(run(writer, rx, stop_in(Duration::from_millis(500))));
        tx.send(emf(vec!["{}".into()])).await.unwrap();
        drop(tx);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("drain ends")
            .unwrap();
        assert_eq!(
            telemetry::get(Counter::EmfDocumentsDropped),
            before + 1,
            "the one pending document"
        );
    }
}
