//! libFuzzer entry for the `index` target; the body is `ferry_fuzz::index` (see `src/lib.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = ferry_fuzz::index(data);
});
