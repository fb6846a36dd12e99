//! Detectors: pure functions of records, state and event time, returning
//! events. No I/O: the pipeline loads and stores their state.
//!
//! - [`entity`]: version regressions, gaps and conflicts of one row;
//! - [`key`]: missing and late invalidations, stale fills, fills after a
//!   delete, for one cache key.

pub mod entity;
pub mod key;
