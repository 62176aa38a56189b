//! libFuzzer entry for the `config` target; the body is `ferry_fuzz::config` (see `src/lib.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = ferry_fuzz::config(data);
});
