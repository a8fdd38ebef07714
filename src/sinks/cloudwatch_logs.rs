//! EMF documents to CloudWatch Logs with PutLogEvents, into `[output] log_group` / `log_stream`,
//! both created when missing. CloudWatch Logs turns EMF events into metrics on ingestion.
//!
//! Batches honour every PutLogEvents limit ([`batches`]): event count, bytes with the per-event
//! overhead, the 24 hour span, and chronological order.

use aws_config::SdkConfig;
use aws_sdk_cloudwatchlogs::error::ProvideErrorMetadata;
use aws_sdk_cloudwatchlogs::types::InputLogEvent;

use super::cloudwatch::{classify, SendError};
use super::spool::LogEvent;
use crate::encode::limits::{
    LOGS_EVENT_OVERHEAD_BYTES, LOGS_MAX_BATCH_BYTES, LOGS_MAX_BATCH_SPAN_MS,
    LOGS_MAX_EVENTS_PER_BATCH,
};
use crate::telemetry::{self, Counter};

/// Splits events into PutLogEvents batches: sorted by time, at most
/// [`LOGS_MAX_EVENTS_PER_BATCH`] events, [`LOGS_MAX_BATCH_BYTES`] bytes counting
/// [`LOGS_EVENT_OVERHEAD_BYTES`] per event, spanning at most [`LOGS_MAX_BATCH_SPAN_MS`]. An event
/// too large for any batch is left out; the second value counts those.
pub fn batches(mut events: Vec<LogEvent>) -> (Vec<Vec<LogEvent>>, u64) {
    events.sort_by_key(|e| e.timestamp_ms);
    let mut out: Vec<Vec<LogEvent>> = Vec::new();
    let mut current: Vec<LogEvent> = Vec::new();
    let mut bytes = 0usize;
    let mut skipped = 0u64;
    for event in events {
        let size = event.message.len() + LOGS_EVENT_OVERHEAD_BYTES;
        if size > LOGS_MAX_BATCH_BYTES || event.message.is_empty() {
            skipped += 1;
            continue;
        }
        let span_exceeded = current
            .first()
            .is_some_and(|first| event.timestamp_ms - first.timestamp_ms > LOGS_MAX_BATCH_SPAN_MS);
        if current.len() >= LOGS_MAX_EVENTS_PER_BATCH
            || bytes + size > LOGS_MAX_BATCH_BYTES
            || span_exceeded
        {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(event);
    }
    if !current.is_empty() {
        out.push(current);
    }
    (out, skipped)
}

enum Put {
    /// The group or the stream does not exist.
    Missing,
    Failed(SendError),
}

/// PutLogEvents into one group and stream.
#[derive(Debug, Clone)]
pub struct LogsTarget {
    client: aws_sdk_cloudwatchlogs::Client,
    group: String,
    stream: String,
}

impl LogsTarget {
    pub fn new(sdk: &SdkConfig, group: String, stream: String) -> Self {
        let config = aws_sdk_cloudwatchlogs::config::Builder::from(sdk)
            // Retries belong to `delivery` (backoff, spool), whatever the shared config says.
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .build();
        LogsTarget {
            client: aws_sdk_cloudwatchlogs::Client::from_conf(config),
            group,
            stream,
        }
    }

    pub fn describe(&self) -> String {
        format!("cloudwatch_logs:{}/{}", self.group, self.stream)
    }

    /// Sends one batch; creates the group and stream when CloudWatch Logs says they are missing.
    pub async fn send(&self, events: &[LogEvent]) -> Result<(), SendError> {
        match self.put(events).await {
            Err(Put::Missing) => {
                self.create().await?;
                self.put(events).await.map_err(|e| match e {
                    Put::Missing => SendError::Retryable(
                        "log group or stream still missing right after creating it".into(),
                    ),
                    Put::Failed(e) => e,
                })
            }
            Err(Put::Failed(e)) => Err(e),
            Ok(()) => Ok(()),
        }
    }

    async fn put(&self, events: &[LogEvent]) -> Result<(), Put> {
        let mut input = Vec::with_capacity(events.len());
        for e in events {
            let event = InputLogEvent::builder()
                .timestamp(e.timestamp_ms as i64)
                .message(&e.message)
                .build()
                .map_err(|e| Put::Failed(SendError::Permanent(e.to_string())))?;
            input.push(event);
        }
        let output = self
            .client
            .put_log_events()
            .log_group_name(&self.group)
            .log_stream_name(&self.stream)
            .set_log_events(Some(input))
            .send()
            .await
            .map_err(|e| {
                if e.code() == Some("ResourceNotFoundException") {
                    Put::Missing
                } else {
                    Put::Failed(classify(&e))
                }
            })?;
        if let Some(rejected) = output.rejected_log_events_info() {
            let n = events.len() as i32;
            let too_old = rejected.too_old_log_event_end_index().map_or(0, |i| i + 1);
            let expired = rejected.expired_log_event_end_index().map_or(0, |i| i + 1);
            let too_new = rejected
                .too_new_log_event_start_index()
                .map_or(0, |i| n - i);
            let lost = too_old.max(expired) + too_new;
            telemetry::warn(
                Counter::LogEventsRejected,
                lost.max(0) as u64,
                "CloudWatch Logs rejected events as too old, expired or too new",
            );
        }
        Ok(())
    }

    async fn create(&self) -> Result<(), SendError> {
        tracing::info!(group = %self.group, stream = %self.stream, "creating the log group and stream");
        let exists = |code: Option<&str>| code == Some("ResourceAlreadyExistsException");
        if let Err(e) = self
            .client
            .create_log_group()
            .log_group_name(&self.group)
            .send()
            .await
        {
            if !exists(e.code()) {
                return Err(classify(&e));
            }
        }
        if let Err(e) = self
            .client
            .create_log_stream()
            .log_group_name(&self.group)
            .log_stream_name(&self.stream)
            .send()
            .await
        {
            if !exists(e.code()) {
                return Err(classify(&e));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(t: u64, len: usize) -> LogEvent {
        LogEvent {
            timestamp_ms: t,
            message: "x".repeat(len),
        }
    }

    #[test]
    fn one_past_10000_events_opens_a_second_batch() {
        let (b, _) = batches(
            (0..LOGS_MAX_EVENTS_PER_BATCH)
                .map(|i| event(i as u64, 1))
                .collect(),
        );
        assert_eq!(b.len(), 1);
        let (b, _) = batches(
            (0..=LOGS_MAX_EVENTS_PER_BATCH)
                .map(|i| event(i as u64, 1))
                .collect(),
        );
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].len(), LOGS_MAX_EVENTS_PER_BATCH);
    }

    #[test]
    fn bytes_count_26_per_event_and_one_past_splits() {
        let per = LOGS_MAX_BATCH_BYTES / 4 - LOGS_EVENT_OVERHEAD_BYTES;
        let (b, _) = batches(vec![event(0, per); 4]);
        assert_eq!(b.len(), 1, "exactly at the limit");
        let mut events = vec![event(0, per); 3];
        events.push(event(0, per + 1));
        let (b, _) = batches(events);
        assert_eq!(b.len(), 2, "one byte past the limit");
    }

    #[test]
    fn an_event_larger_than_a_batch_is_skipped_counted() {
        let (b, skipped) = batches(vec![
            event(0, LOGS_MAX_BATCH_BYTES - LOGS_EVENT_OVERHEAD_BYTES + 1),
            event(1, 10),
        ]);
        assert_eq!(skipped, 1);
        assert_eq!(b, vec![vec![event(1, 10)]]);
    }

    #[test]
    fn events_are_sorted_and_one_past_24_hours_splits() {
        let (b, _) = batches(vec![
            event(LOGS_MAX_BATCH_SPAN_MS, 1),
            event(0, 2),
            event(5, 3),
        ]);
        assert_eq!(b.len(), 1, "exactly 24 h fits");
        assert_eq!(
            b[0].iter().map(|e| e.timestamp_ms).collect::<Vec<_>>(),
            [0, 5, LOGS_MAX_BATCH_SPAN_MS]
        );
        let (b, _) = batches(vec![event(LOGS_MAX_BATCH_SPAN_MS + 1, 1), event(0, 2)]);
        assert_eq!(b.len(), 2);
        assert_eq!(b[0][0].timestamp_ms, 0);
    }
}
