//! The `ferry` binary: see `ferry::cli`.

fn main() -> std::process::ExitCode {
    fixed_mmap_threshold();
    ferry::cli::main()
}

/// Pins glibc's mmap threshold at its initial 128 KiB. By default glibc raises the threshold
/// to the size of each large block freed (up to 32 MiB), after which chunk, blob and pack
/// buffers come from the per-thread heaps and stay resident once freed: a first snapshot then
/// peaked at 116-155 MiB between runs instead of a steady ~100 MiB. Buffers a stage reuses are
/// kept by the stage itself, so returning freed large blocks at once costs little.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn fixed_mmap_threshold() {
    // SAFETY: mallopt only changes allocator settings; it is called before any other thread
    // exists, and with a parameter and value glibc documents (M_MMAP_THRESHOLD takes a size
    // up to HEAP_MAX/2). A refusal (return 0) leaves the default in place, which is harmless.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn fixed_mmap_threshold() {}
