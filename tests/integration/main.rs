//! End-to-end tests of the `vigil` binary: `vigil check` on generated
//! workloads and bad input, `vigil run` through an embedded Kafka broker
//! (with its HTTP server), the alert rules and the dashboard, the command
//! line around the modes.

mod broker;
mod check;
mod cli;
// The unit tests' stand-in Schema Registry, shared: they use what these
// tests do not.
#[allow(dead_code)]
#[path = "../../src/registry/fake.rs"]
mod fake_registry;
mod http;
mod monitoring;
mod recovery;
mod replay;
mod retention;
mod run;
mod schemas;
mod storms;
mod streams;
mod support;
mod tansu;
mod tls;
mod torture;
mod transactions;

mod incidents;
