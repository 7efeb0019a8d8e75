//! cargo-fuzz target `tar_import`: see ../targets.rs.
#![no_main]
#[path = "../targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::tar_import(data));
