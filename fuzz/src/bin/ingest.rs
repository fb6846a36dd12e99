//! Fuzz target: one raw record through `Ingest::ingest` (decode and map),
//! laid out as `vigil_fuzz::IngestInput` says.

use std::panic::AssertUnwindSafe;

fn main() {
    // A panic aborts the process (`afl::fuzz!` sets the hook), so nothing is
    // seen after one: the shared state need not be unwind safe.
    let ingest = AssertUnwindSafe(vigil_fuzz::ingest_setup());
    let mut out = Vec::new();
    afl::fuzz!(|data: &[u8]| vigil_fuzz::ingest(&ingest, &mut out, data));
}
