//! libFuzzer entry for the `node` target; the body is `ferry_fuzz::node` (see `src/lib.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = ferry_fuzz::node(data);
});
