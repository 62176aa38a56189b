//! libFuzzer entry for the `tree` target; the body is `ferry_fuzz::tree` (see `src/lib.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = ferry_fuzz::tree(data);
});
