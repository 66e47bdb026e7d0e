//! CIFAR-10 binary batch reader (raw or gzip): `peloton_data::fuzz_entry::cifar`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| peloton_data::fuzz_entry::cifar(data));
