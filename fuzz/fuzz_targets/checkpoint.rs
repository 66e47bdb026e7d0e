//! The checkpoint reader (header, CRC-32, postcard payload): `peloton_core::checkpoint::fuzz_decode`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| peloton_core::checkpoint::fuzz_decode(data));
