//! End-to-end tests of the `vigil` binary: generated workloads, bad input,
//! exit statuses, help text.

mod check;
mod support;
