//! Inputs and outputs of the pipeline: files (one record a line) for
//! `vigil check`.

pub mod file;
