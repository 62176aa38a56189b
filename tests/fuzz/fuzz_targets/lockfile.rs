//! libFuzzer entry for the `lockfile` target; the body is `ferry_fuzz::lockfile` (see `src/lib.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = ferry_fuzz::lockfile(data);
});
