//! cargo-fuzz target `pack_index`: see ../targets.rs.
#![no_main]
#[path = "../targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::pack_index(data));
