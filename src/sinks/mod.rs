//! Sinks: where encoded windows go. Passive: the agent's pipeline hands them closed windows.
//!
//! The set is closed, so it is an `enum`: the EMF writer (stdout, file, the CloudWatch agent's
//! listener) or CloudWatch itself (PutMetricData, or EMF through CloudWatch Logs) behind the
//! spool.

pub mod cloudwatch;
pub mod cloudwatch_logs;
pub mod delivery;
pub mod emf_writer;
pub mod otlp;
pub mod spool;

use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::mpsc;

use crate::config::{Config, OutputFormat};
use crate::encode::{Encoded, Encoding};
use crate::shutdown::{Deadline, DeadlineCell};
use delivery::{Settings, Target};
use emf_writer::EmfWriter;
use spool::Spool;

/// Windows waiting for the sink; past this the sink is stuck and new windows are dropped, counted.
pub const PUBLISH_QUEUE_WINDOWS: usize = 64;

#[derive(Debug)]
pub enum Sink {
    Emf(EmfWriter),
    CloudWatch {
        target: Target,
        spool: Spool,
        settings: Settings,
    },
}

impl Sink {
    /// Opens the configured sink. Errors here stop the agent at start: a file or spool folder that
    /// cannot be opened, or no AWS Region.
    pub async fn open(config: &Config, instance_id: &str) -> anyhow::Result<Sink> {
        if !config.publishes_through_spool() {
            let writer = EmfWriter::open(&config.output.emf_destination)
                .await
                .with_context(|| {
                    format!("opening EMF destination {}", config.output.emf_destination)
                })?;
            return Ok(Sink::Emf(writer));
        }
        let o = &config.output;
        let spool = Spool::open(&o.spool_dir, o.spool_max_bytes).with_context(|| {
            format!(
                "opening the spool (output.spool_dir = {})",
                o.spool_dir.display()
            )
        })?;
        let target = if o.format == OutputFormat::Otlp {
            Target::Otlp(Box::new(otlp::OtlpTarget::new(&o.otlp).await?))
        } else if o.format == OutputFormat::PutMetricData {
            let sdk = cloudwatch::load_sdk_config().await?;
            Target::PutMetricData(cloudwatch::MetricsTarget::new(&sdk))
        } else {
            let sdk = cloudwatch::load_sdk_config().await?;
            let stream = o
                .log_stream
                .clone()
                .unwrap_or_else(|| instance_id.to_string());
            Target::CloudWatchLogs(cloudwatch_logs::LogsTarget::new(
                &sdk,
                config.cloudwatch_log_group(),
                stream,
            ))
        };
        Ok(Sink::CloudWatch {
            target,
            spool,
            settings: Settings {
                period: Duration::from_secs(config.metrics.publish_frequency_seconds),
                retry_max: Duration::from_secs(o.retry_max_seconds),
            },
        })
    }

    /// What the pipeline must produce for this sink.
    pub fn encoding(&self) -> Encoding {
        match self {
            Sink::Emf(w) => Encoding::Emf {
                max_document_bytes: w.max_document_bytes(),
            },
            Sink::CloudWatch {
                target: Target::PutMetricData(_),
                ..
            } => Encoding::PutMetricData,
            Sink::CloudWatch {
                target: Target::Otlp(_),
                ..
            } => Encoding::Otlp,
            Sink::CloudWatch {
                target: Target::CloudWatchLogs(_),
                ..
            } => Encoding::Emf {
                max_document_bytes: crate::encode::limits::EMF_MAX_DOCUMENT_BYTES,
            },
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Sink::Emf(w) => w.describe(),
            Sink::CloudWatch { target, .. } => target.describe(),
        }
    }

    /// Publishes windows from `rx` until it closes, then drains by the deadline in `stop`.
    pub async fn run(self, rx: mpsc::Receiver<Encoded>, stop: DeadlineCell) {
        match self {
            Sink::CloudWatch {
                target,
                spool,
                settings,
            } => delivery::run(target, spool, rx, settings, stop).await,
            Sink::Emf(writer) => emf_writer::run(writer, rx, stop).await,
        }
    }
}

/// The running sink behind its channel: what the pipeline publishes into, swapped whole when a
/// reload changes the destination (the old one drains in the background).
pub struct Output {
    pub tx: mpsc::Sender<Encoded>,
    task: tokio::task::JoinHandle<()>,
    stop: DeadlineCell,
}

impl Output {
    /// Starts `sink` behind a channel of [`PUBLISH_QUEUE_WINDOWS`] windows.
    pub fn start(sink: Sink) -> Self {
        let (tx, rx) = mpsc::channel::<Encoded>(PUBLISH_QUEUE_WINDOWS);
        let stop = DeadlineCell::default();
        let task = tokio::spawn(sink.run(rx, stop.clone()));
        Output { tx, task, stop }
    }

    /// Windows waiting in the channel.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Closes the channel and waits, until `deadline` at the latest, for the sink to drain.
    pub async fn finish(self, deadline: Deadline) {
        self.stop.set(deadline);
        drop(self.tx);
        if tokio::time::timeout_at(deadline.0, self.task)
            .await
            .is_err()
        {
            tracing::warn!("the sink did not finish in time");
        }
    }
}
