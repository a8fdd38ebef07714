//! endpoint-metrics-agent: SageMaker-style enhanced metrics for GPU inference hosts.
//!
//! The pipeline: `collectors` -> samples (`catalog`) -> `aggregate` (per window of the `clock`)
//! -> `encode` -> `sinks`, wired in `agent`.

pub mod admin;
pub mod agent;
pub mod aggregate;
pub mod attribution;
pub mod catalog;
pub mod cli;
pub mod clock;
pub mod collectors;
pub mod config;
pub mod cost;
pub mod discovery;
pub mod encode;
pub mod instance_id;
pub mod logging;
pub mod plan;
pub mod proxy;
pub mod reload;
pub mod sd_notify;
pub mod self_metrics;
pub mod service;
pub mod sinks;
pub mod telemetry;
