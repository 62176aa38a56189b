//! libFuzzer entry for the `snapshot` target; the body is `ferry_fuzz::snapshot` (see `src/lib.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = ferry_fuzz::snapshot(data);
});
