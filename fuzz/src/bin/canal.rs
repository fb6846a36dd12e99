//! Fuzz target: canal values and keys, through `decode_cdc` and `decode_key`
//! (the format is recognised per record; the seeds are canal records).

fn main() {
    afl::fuzz!(|data: &[u8]| vigil_fuzz::cdc(data));
}
