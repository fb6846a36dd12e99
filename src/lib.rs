//! # vigil: a consistency watchdog for cached data
//!
//! - [`formats`]: decoders for Debezium, Maxwell, Canal, cache events and
//!   `kcat -J` lines (bytes in, format-neutral views out);
//! - [`model`]: the domain types every stage shares;
//! - [`dead_letter`]: the reasons a record cannot be used.

pub mod dead_letter;
pub mod formats;
pub mod model;
