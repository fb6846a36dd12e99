//! Fuzz target: configuration files, parsed and validated.

fn main() {
    afl::fuzz!(|data: &[u8]| vigil_fuzz::config(data));
}
