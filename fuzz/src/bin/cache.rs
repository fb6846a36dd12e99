//! Fuzz target: cache events, through `decode_cache`.

fn main() {
    afl::fuzz!(|data: &[u8]| vigil_fuzz::cache(data));
}
