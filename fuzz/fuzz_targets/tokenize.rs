//! Fuzz target: arbitrary bytes into `edgeclip_fuzz::tokenize` (see fuzz/src/harness.rs).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| edgeclip_fuzz::tokenize(data));
