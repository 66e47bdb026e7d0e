//! The command line: argument vectors (NUL-separated) through the binary's clap structs and
//! each command's checks: `peloton_cli::fuzz_entry::command_line`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| peloton_cli::fuzz_entry::command_line(data));
