//! Inputs and outputs of the pipeline: files (one record a line) for
//! `vigil check`, Kafka topics for `vigil run`.

pub mod file;
pub mod kafka;
