#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| beacon::tools::fuzzing::documents(data));
