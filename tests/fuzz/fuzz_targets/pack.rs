//! libFuzzer entry for the `pack` target; the body is `ferry_fuzz::pack` (see `src/lib.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = ferry_fuzz::pack(data);
});
