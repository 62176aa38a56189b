//! libFuzzer entry for the `blob` target; the body is `ferry_fuzz::blob` (see `src/lib.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = ferry_fuzz::blob(data);
});
