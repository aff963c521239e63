#![no_main]

// Each binary uses one of the shared target functions.
#[allow(dead_code)]
#[path = "../src/targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::decoder_gguf(data));
