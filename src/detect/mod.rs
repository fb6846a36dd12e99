//! Detectors: pure functions of records, state and event time, returning
//! events. No I/O: the pipeline loads and stores their state.
//!
//! - [`entity`]: version regressions, gaps and conflicts of one row;
//! - [`key`]: missing and late invalidations, stale fills, fills after a
//!   delete, for one cache key;
//! - [`storm`]: invalidation storms by scope, in fixed memory thanks to
//!   [`sketch`];
//! - [`transaction`]: lost change events and unterminated transactions,
//!   from the transactions' BEGIN and END records;
//! - [`incident`]: consistency incidents, per table, from the key checks'
//!   verdicts;
//! - [`lifecycle`]: how storms and incidents open, are updated and close,
//!   and their reports' ids.

pub mod entity;
pub mod incident;
pub mod key;
pub mod lifecycle;
pub mod sketch;
pub mod storm;
pub mod transaction;
