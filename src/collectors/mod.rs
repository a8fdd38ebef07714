//! Collectors: passive readers of the host, each run on a [`worker::Worker`] thread. They read
//! and parse; what a reading means for a model copy is `attribution`'s, and the tick calls them
//! through `sources`.

pub mod cgroup;
pub mod gpu;
pub mod host;
pub mod worker;
