//! libFuzzer entry for the `keyfile` target; the body is `ferry_fuzz::keyfile` (see `src/lib.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = ferry_fuzz::keyfile(data);
});
