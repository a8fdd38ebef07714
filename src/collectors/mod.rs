//! Collectors: passive readers of the host, each run on a [`worker::Worker`] thread.

pub mod cgroup;
pub mod containers;
pub mod gpu;
pub mod host;
pub mod worker;
