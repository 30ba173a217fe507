//! Fuzzing harness of edgeclip: the decoders and checks that meet untrusted bytes.
#[path = "harness.rs"]
mod harness;
pub use harness::*;
