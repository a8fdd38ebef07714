//! What the integration tests share: the agent harness, the `docker` command line and the fake
//! NVML driver library. Each test binary uses part of it.
#![allow(dead_code)]

pub mod agent;
pub mod aws;
pub mod copies;
pub mod docker;
pub mod fake_nvml;
