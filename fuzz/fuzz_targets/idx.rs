//! MNIST IDX images and labels readers (raw or gzip): `peloton_data::fuzz_entry::idx`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| peloton_data::fuzz_entry::idx(data));
