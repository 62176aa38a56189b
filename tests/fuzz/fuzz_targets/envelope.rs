//! libFuzzer entry for the `envelope` target; the body is `ferry_fuzz::envelope` (see `src/lib.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = ferry_fuzz::envelope(data);
});
