//! The experiment file loader, `--set` overrides and validation:
//! `peloton_cli::fuzz_entry::config_toml`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| peloton_cli::fuzz_entry::config_toml(data));
