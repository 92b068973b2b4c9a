//! Process-wide settings that make the forward pass fast; the binary (and benches) opt in.

/// Keep freed memory in the heap rather than returning every large block to the kernel.
///
/// A forward pass allocates and frees buffers of tens of MiB (a window's logits are 100 MiB);
/// glibc's default maps each one afresh and unmaps it on free, and the page faults then cost
/// about 15% of evaluation time (BENCHMARKS.md). Peak memory stays bounded by the largest set
/// of live buffers. Call once at start-up, before other threads exist.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}
