//! endpoint-metrics-agent: SageMaker-style enhanced metrics for GPU inference hosts.
//!
//! The pipeline, in the order data flows: `discovery` (the model copies) -> `collectors` (passive
//! readers on their own threads) -> `attribution` (GPU processes to copies) and `cost` -> `sources`
//! (one call shape per tick) -> `pipeline` (publish windows: `aggregate` then `encode`) ->
//! `sinks`. `proxy` (the front door) is a source too; `agent` wires the stages and `main` parses
//! the command line. `catalog` holds every published name, `config` every setting. `live` is the
//! last tick as the admin endpoint serves it to `top`; `dashboard` turns `plan`'s series into a
//! CloudWatch dashboard.
#![deny(clippy::print_stdout)]

pub mod admin;
pub mod agent;
pub mod aggregate;
pub mod attribution;
pub mod backoff;
pub mod catalog;
pub mod cgroup_path;
pub mod cli;
pub mod clock;
pub mod collectors;
pub mod config;
pub mod cost;
pub mod dashboard;
pub mod discovery;
pub mod encode;
pub mod instance_id;
pub mod lifecycle;
pub mod live;
pub mod logging;
pub mod pipeline;
pub mod plan;
pub mod proxy;
pub mod reload;
pub mod scrape;
pub mod sd_notify;
pub mod self_metrics;
pub mod shutdown;
pub mod sinks;
pub mod sources;
pub mod supervisor;
pub mod telemetry;
#[cfg(test)]
pub(crate) mod testing;
pub mod top;
