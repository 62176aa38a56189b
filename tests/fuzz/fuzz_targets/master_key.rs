//! libFuzzer entry for the `master_key` target; the body is `ferry_fuzz::master_key` (see `src/lib.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = ferry_fuzz::master_key(data);
});
