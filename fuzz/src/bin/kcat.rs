//! Fuzz target: `kcat -J` lines, through `KcatBuffers::parse` (its buffers
//! kept from one input to the next, as `vigil check` keeps them from line
//! to line).

use vigil::formats::KcatBuffers;

fn main() {
    let mut buffers = KcatBuffers::default();
    afl::fuzz!(|data: &[u8]| vigil_fuzz::kcat(&mut buffers, data));
}
