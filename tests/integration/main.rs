//! End-to-end tests of the `vigil` binary: `vigil check` on generated
//! workloads and bad input, `vigil run` through an embedded Kafka broker.

mod broker;
mod check;
mod replay;
mod run;
mod schemas;
mod storms;
mod streams;
mod support;
