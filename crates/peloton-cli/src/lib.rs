//! The library half of peloton-cli: the experiment file's loader and validation, shared by the
//! `peloton` binary and the config fuzz target (`fuzz/` at the repository root).

pub mod config;
pub mod fuzz_entry;
pub mod output;
