//! libFuzzer entry for the `pack_header` target; the body is `ferry_fuzz::pack_header` (see `src/lib.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = ferry_fuzz::pack_header(data);
});
