//! libFuzzer entry for the `unpacked` target; the body is `ferry_fuzz::unpacked` (see `src/lib.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = ferry_fuzz::unpacked(data);
});
