//! What the integration tests share: the agent harness, the `docker` command line, the fake
//! NVML driver library and the OTLP receiver. Each test binary uses part of it.
#![allow(dead_code)]

pub mod agent;
pub mod aws;
pub mod copies;
pub mod docker;
pub mod fake_nvml;
pub mod otlp;
