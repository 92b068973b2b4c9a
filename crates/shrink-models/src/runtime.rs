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

/// Whether mostly-zero weights are held sparse at load ([`crate::linear::Linear::sparse`]).
static SPARSE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Hold pruned weights sparse (non-zeros + bitmask) or dense from now on. Sparse reads about
/// half the bytes per generated token (1.27× the tokens/s on 50 %-sparse SmolLM2) but expands
/// each weight again for every many-token product (prompt processing 15 % slower, BENCHMARKS.md):
/// the binary holds them sparse for `generate` and dense for `eval` and the calibrated methods.
/// The environment's `SHRINK_SPARSE=0` or `=1` overrides this.
pub fn set_sparse_weights(on: bool) {
    SPARSE.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Whether pruned weights are held sparse: `SHRINK_SPARSE` (0 or 1) if set, else
/// [`set_sparse_weights`]'s choice (sparse by default).
pub fn sparse_weights() -> bool {
    match std::env::var("SHRINK_SPARSE").as_deref() {
        Ok("0") => false,
        Ok("1") => true,
        _ => SPARSE.load(std::sync::atomic::Ordering::Relaxed),
    }
}

/// Whether generation rounds activations to int8 for integer weights ([`set_int8_activations`]).
static INT8_ACTIVATIONS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Round each token's activations to int8 blocks of 32 in products of a few tokens with 4- or
/// 8-bit integer weights, and multiply in integers (`qmatmul::q8`, as llama.cpp does for every
/// quantized type): 2.2× the one-thread generation speed of SmolLM2 int4 g64 (13 → 29 tokens/s,
/// `shrink bench`, BENCHMARKS.md), at the cost of the activations' rounding (up to
/// half a step of each block's absmax / 127 grid). Off by default, so every product equals the
/// float32 product with the dequantized weights; the binary turns it on for `generate` and
/// `bench` only, so `eval`, `compare` and calibration measure the weights alone.
/// `SHRINK_Q8` overrides it (`0`, `1`, or a kernel: `vnni`, `avx2`, `portable`).
pub fn set_int8_activations(on: bool) {
    INT8_ACTIVATIONS.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Whether [`set_int8_activations`] is on.
pub fn int8_activations() -> bool {
    INT8_ACTIVATIONS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Whether a tied head stored as 16-bit floats is also held as such ([`set_half_head`]).
static HALF_HEAD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Hold a tied LM head whose embedding the checkpoint stores as float16 / bfloat16 also as
/// those 16-bit rows, which products of a few tokens read (half the bytes of the float32
/// rows; exact, as every value is the stored one). Costs that copy's memory (57 MB on SmolLM2),
/// so the binary turns it on for `generate` and `bench` only.
pub fn set_half_head(on: bool) {
    HALF_HEAD.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Whether [`set_half_head`] is on.
pub fn half_head() -> bool {
    HALF_HEAD.load(std::sync::atomic::Ordering::Relaxed)
}
