//! Sinks: where encoded windows go. Passive: the agent's pipeline hands them batches.

pub mod backoff;
pub mod emf_writer;
