//! Integer GEMM for int8 activations × int8 weights (LLM.int8() and dynamic int8).
//!
//! [`gemm_i8_scaled`] computes `out = (A·Bᵀ)_i32 as f32 * (a_scale[i] * b_scale[j]) * alpha`
//! for row-major int8 `A` [m, k] and weights `B` [n, k] packed once by [`PackedInt8::pack`].
//! The float epilogue runs in exactly that order because it reproduces bitsandbytes'
//! `int8_mm_dequant`, `A_calc * (row_stats * col_stats) * 6.200124e-05`
//! (`bitsandbytes/backends/default/ops.py`), bit for bit. Pass that literal as `alpha` to match
//! it: it is meant as 1/127² but is not quite (1/127² = 6.2000124e-05).
//!
//! Why hand-written: no maintained Rust crate does an int8 × int8 → int32 GEMM with AVX-512
//! VNNI, let alone one with this per-row × per-column float epilogue fused into the store
//! (`gemm` is float-only; candle has no int8 matmul). The kernels:
//! - [`Int8Kernel::Vnni`] (AVX-512 VNNI): `vpdpbusd` multiplies 64 byte pairs per instruction.
//!   It takes unsigned × signed bytes, so `A` is offset to `a + 128` (u8) and the exact sum is
//!   recovered as `Σ (a+128)·b − 128·Σ b`, with `Σ_t b[j, t]` precomputed at packing time.
//!   The sums wrap in i32 (`vpdpbusd` does not saturate), so the result is exact whenever the
//!   true sum fits i32, which [`MAX_K`] guarantees.
//! - [`Int8Kernel::Avx2`]: both operands sign-extended to i16 and multiplied with
//!   `vpmaddwd` (exact; `vpmaddubsw` would saturate), for CPUs without VNNI.
//! - [`Int8Kernel::Portable`]: plain Rust over the same packed layout, written so that LLVM
//!   vectorises it for any target (SSE2 on baseline x86-64, NEON on aarch64).
//!
//! All kernels compute the same i32 sums and the same float operations, so their outputs are
//! bit-identical to [`gemm_i8_reference`].

use std::cell::Cell;

use rayon::prelude::*;

/// Columns of `B` per packed block: one 512-bit register of i32 accumulators.
const NBLK: usize = 16;
/// Values of `k` per group: the four bytes one `vpdpbusd` lane sums.
const KGRP: usize = 4;
/// Largest `k` accepted: 128·128·k must fit an i32 so that every sum is exact.
pub const MAX_K: usize = (i32::MAX as usize) / (128 * 128);
/// Rows per VNNI tile: with [`VNNI_NB`] that is 24 accumulators, 3 weight registers and one
/// broadcast of the 32 zmm registers.
const VNNI_MR: usize = 8;
/// Column blocks (of 16) per VNNI tile.
const VNNI_NB: usize = 3;

/// Int8 weights [n, k] (one row per output feature) repacked for the integer GEMM.
///
/// Layout: `[n/16 blocks][k/4 groups][16 columns][4 bytes]`, with `k` padded with zeros to a
/// multiple of 4 and `n` to a multiple of 16, so one 64-byte load holds 4 consecutive `k`
/// values of 16 output columns.
#[derive(Clone)]
pub struct PackedInt8 {
    n: usize,
    k: usize,
    /// `k` rounded up to a multiple of [`KGRP`].
    kp: usize,
    /// Packed codes, `n.div_ceil(16) * 16 * kp` bytes.
    data: Vec<i8>,
    /// 128·Σ_t b[j, t] per weight row j (zero for padding rows): the correction for the VNNI
    /// kernel's `a + 128`.
    bias: Vec<i32>,
}

impl std::fmt::Debug for PackedInt8 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedInt8({}x{})", self.n, self.k)
    }
}

impl PackedInt8 {
    /// Pack row-major int8 weights `w` of shape [n, k].
    ///
    /// # Panics
    /// If `w.len() != n * k` or `k > MAX_K`.
    pub fn pack(w: &[i8], n: usize, k: usize) -> Self {
        assert!(
            n.checked_mul(k) == Some(w.len()),
            "PackedInt8::pack: weights hold {} values, expected n·k = {n}·{k}",
            w.len()
        );
        assert!(
            k <= MAX_K,
            "PackedInt8::pack: k = {k} exceeds {MAX_K}, where i32 sums could overflow"
        );
        let kp = k.next_multiple_of(KGRP);
        let np = n.next_multiple_of(NBLK);
        let mut data = vec![0i8; np * kp];
        let mut bias = vec![0i32; np];
        for (j, row) in w.chunks_exact(k.max(1)).take(n).enumerate() {
            let block = &mut data[(j / NBLK) * NBLK * kp..][..NBLK * kp];
            let lane = (j % NBLK) * KGRP;
            for (g, quad) in row.chunks(KGRP).enumerate() {
                block[g * NBLK * KGRP + lane..][..quad.len()].copy_from_slice(quad);
            }
            bias[j] = 128 * row.iter().map(|&v| v as i32).sum::<i32>();
        }
        PackedInt8 {
            n,
            k,
            kp,
            data,
            bias,
        }
    }

    /// Number of rows (output features).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Number of columns (input features).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Weight at (row, col), for extracting outlier columns.
    ///
    /// # Panics
    /// If `row >= n` or `col >= k`.
    pub fn get(&self, row: usize, col: usize) -> i8 {
        assert!(
            row < self.n && col < self.k,
            "PackedInt8::get: ({row}, {col}) outside {}x{}",
            self.n,
            self.k
        );
        self.data[(row / NBLK) * NBLK * self.kp
            + (col / KGRP) * NBLK * KGRP
            + (row % NBLK) * KGRP
            + col % KGRP]
    }

    /// Bytes held (packed codes plus any per-row sums).
    pub fn resident_bytes(&self) -> usize {
        self.data.len() + self.bias.len() * std::mem::size_of::<i32>()
    }

    /// Start of column block `blk` (16 columns × `kp` bytes).
    fn block_ptr(&self, blk: usize) -> *const i8 {
        self.data[blk * NBLK * self.kp..].as_ptr()
    }
}

/// Which inner loop computes the integer products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int8Kernel {
    /// AVX-512 VNNI `vpdpbusd`, 8 rows × 48 columns per tile.
    Vnni,
    /// AVX2 `vpmaddwd` on sign-extended i16, 2 rows × 16 columns per tile.
    Avx2,
    /// Plain Rust that LLVM vectorises, 4 rows × 16 columns per tile; runs everywhere.
    Portable,
}

impl Int8Kernel {
    /// The fastest kernel this CPU runs.
    pub fn detect() -> Self {
        [Int8Kernel::Vnni, Int8Kernel::Avx2]
            .into_iter()
            .find(|k| k.is_available())
            .unwrap_or(Int8Kernel::Portable)
    }

    /// Whether this CPU runs the kernel.
    pub fn is_available(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Int8Kernel::Vnni => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
                    && std::arch::is_x86_feature_detected!("avx512vl")
            }
            #[cfg(target_arch = "x86_64")]
            Int8Kernel::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            Int8Kernel::Portable => true,
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// Rows per tile.
    fn mr(self) -> usize {
        match self {
            Int8Kernel::Vnni => VNNI_MR,
            Int8Kernel::Avx2 => 2,
            Int8Kernel::Portable => 4,
        }
    }

    /// Column blocks (of 16) per tile.
    fn nb(self) -> usize {
        match self {
            Int8Kernel::Vnni => VNNI_NB,
            Int8Kernel::Avx2 | Int8Kernel::Portable => 1,
        }
    }
}

/// `out[i, j] = ((Σ_t a[i, t]·b[j, t]) as f32 * (a_scale[i] * b_scale[j])) * alpha`, for a
/// row-major int8 `a` [m, k]; `out` row-major [m, n], overwritten.
///
/// Uses the fastest kernel the CPU supports ([`Int8Kernel::detect`]) and rayon's pool.
///
/// # Panics
/// If a slice's length does not match the shapes (`a`: m·k, `a_scale`: m, `b_scale`: n,
/// `out`: m·n).
pub fn gemm_i8_scaled(
    a: &[i8],
    m: usize,
    a_scale: &[f32],
    b: &PackedInt8,
    b_scale: &[f32],
    alpha: f32,
    out: &mut [f32],
) {
    gemm_i8_scaled_with(Int8Kernel::detect(), a, m, a_scale, b, b_scale, alpha, out)
}

/// [`gemm_i8_scaled`] with a chosen kernel (tests and benches use it to run every path).
///
/// # Panics
/// As [`gemm_i8_scaled`], and if the CPU lacks the kernel's instructions.
#[allow(clippy::too_many_arguments)]
pub fn gemm_i8_scaled_with(
    kernel: Int8Kernel,
    a: &[i8],
    m: usize,
    a_scale: &[f32],
    b: &PackedInt8,
    b_scale: &[f32],
    alpha: f32,
    out: &mut [f32],
) {
    check_shapes(a, m, a_scale, b, b_scale, out);
    assert!(
        kernel.is_available(),
        "gemm_i8_scaled: this CPU cannot run the {kernel:?} kernel"
    );
    if m == 0 || b.n == 0 {
        return;
    }
    // Taken rather than borrowed: a rayon worker waiting in `run` may steal a task that calls
    // this function again on the same thread; that call then packs into a fresh buffer.
    let mut scratch = SCRATCH.take();
    let p = Problem {
        a: pack_a(kernel, a, m, b.k, b.kp, &mut scratch),
        lda: b.kp * if kernel == Int8Kernel::Vnni { 1 } else { 2 },
        m,
        a_scale,
        b,
        b_scale,
        alpha,
        out: SyncPtr(out.as_mut_ptr()),
    };
    run(kernel, &p);
    SCRATCH.set(scratch);
}

/// The plain triple loop (exact i64 sums) with the same epilogue: the definition the
/// kernels are tested against.
///
/// # Panics
/// As [`gemm_i8_scaled`].
pub fn gemm_i8_reference(
    a: &[i8],
    m: usize,
    a_scale: &[f32],
    b: &PackedInt8,
    b_scale: &[f32],
    alpha: f32,
    out: &mut [f32],
) {
    check_shapes(a, m, a_scale, b, b_scale, out);
    let (n, k) = (b.n, b.k);
    for i in 0..m {
        for j in 0..n {
            let acc: i64 = (0..k)
                .map(|t| a[i * k + t] as i64 * b.get(j, t) as i64)
                .sum();
            let acc = i32::try_from(acc).expect("k <= MAX_K keeps sums within i32");
            out[i * n + j] = acc as f32 * (a_scale[i] * b_scale[j]) * alpha;
        }
    }
}

fn check_shapes(a: &[i8], m: usize, a_scale: &[f32], b: &PackedInt8, b_scale: &[f32], out: &[f32]) {
    let (n, k) = (b.n, b.k);
    assert!(
        m.checked_mul(k) == Some(a.len()),
        "gemm_i8_scaled: a holds {} values, expected m·k = {m}·{k}",
        a.len()
    );
    assert!(
        a_scale.len() == m,
        "gemm_i8_scaled: a_scale holds {} values, expected m = {m}",
        a_scale.len()
    );
    assert!(
        b_scale.len() == n,
        "gemm_i8_scaled: b_scale holds {} values, expected n = {n}",
        b_scale.len()
    );
    assert!(
        m.checked_mul(n) == Some(out.len()),
        "gemm_i8_scaled: out holds {} values, expected m·n = {m}·{n}",
        out.len()
    );
}

thread_local! {
    /// Packed copy of `A`, kept between calls so repeated GEMMs do not fault in fresh pages.
    static SCRATCH: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// Copy `a` [m, k] into `scratch` as rows of `kp` values, zero-padded: u8 `a + 128` for the
/// VNNI kernel, native-endian i16 for the others. Returns the packed bytes.
fn pack_a<'s>(
    kernel: Int8Kernel,
    a: &[i8],
    m: usize,
    k: usize,
    kp: usize,
    scratch: &'s mut Vec<u8>,
) -> &'s [u8] {
    let width = if kernel == Int8Kernel::Vnni { 1 } else { 2 };
    let lda = kp * width;
    scratch.clear();
    scratch.resize(m * lda, 0);
    if k == 0 {
        return scratch;
    }
    let pack_rows = |(dst, src): (&mut [u8], &[i8])| {
        for (d, s) in dst.chunks_exact_mut(lda).zip(src.chunks_exact(k)) {
            if width == 1 {
                for (d, &s) in d.iter_mut().zip(s) {
                    *d = (s as u8) ^ 0x80;
                }
            } else {
                for (d, &s) in d.chunks_exact_mut(2).zip(s) {
                    d.copy_from_slice(&(s as i16).to_ne_bytes());
                }
            }
        }
    };
    // Rows per parallel chunk: about 256 KiB of input each.
    let rows = (256 << 10) / k.max(1) + 1;
    if m * k >= 512 << 10 {
        scratch
            .par_chunks_mut(rows * lda)
            .zip(a.par_chunks(rows * k))
            .for_each(pack_rows);
    } else {
        pack_rows((scratch.as_mut_slice(), a));
    }
    scratch
}

/// A raw output pointer that tasks writing disjoint tiles may share.
#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);
// SAFETY: the pointer is only written through for disjoint (row, column) tiles, one task each.
unsafe impl Send for SyncPtr {}
// SAFETY: as above.
unsafe impl Sync for SyncPtr {}

/// Everything a tile needs; `a` is packed by [`pack_a`] with row stride `lda` bytes.
struct Problem<'a> {
    a: &'a [u8],
    lda: usize,
    m: usize,
    a_scale: &'a [f32],
    b: &'a PackedInt8,
    b_scale: &'a [f32],
    alpha: f32,
    out: SyncPtr,
}

/// Bytes of packed `B` one task streams over repeatedly (kept in the 1–2 MiB L2).
const B_CHUNK_BYTES: usize = 384 << 10;
/// Below this many multiply-adds a single thread is faster than waking the pool.
const PARALLEL_MACS: usize = 1 << 20;

/// Split the output into tiles of whole row panels × whole column panels and run them.
fn run(kernel: Int8Kernel, p: &Problem) {
    let (mr, nb) = (kernel.mr(), kernel.nb());
    let blocks = p.b.n.div_ceil(NBLK);
    let panels = blocks.div_ceil(nb);
    let row_panels = p.m.div_ceil(mr);
    let macs = p.m * blocks * NBLK * p.b.kp;
    let threads = rayon::current_num_threads();
    if macs < PARALLEL_MACS || threads == 1 {
        let chunk = (B_CHUNK_BYTES / (nb * NBLK * p.b.kp.max(1))).max(1);
        for c0 in (0..panels).step_by(chunk) {
            task(kernel, p, 0..row_panels, c0..(c0 + chunk).min(panels));
        }
        return;
    }
    // Enough tasks for work stealing to even out a shared machine, each with a slice of B
    // that stays in L2 while its rows stream past.
    let want = 4 * threads;
    let max_panels = (B_CHUNK_BYTES / (nb * NBLK * p.b.kp.max(1))).max(1);
    let col_tasks = panels.div_ceil(max_panels).max(want.min(panels));
    let col_chunk = panels.div_ceil(col_tasks);
    let col_tasks = panels.div_ceil(col_chunk);
    let row_tasks = want.div_ceil(col_tasks).min(row_panels);
    let row_chunk = row_panels.div_ceil(row_tasks);
    let row_tasks = row_panels.div_ceil(row_chunk);
    (0..row_tasks * col_tasks).into_par_iter().for_each(|t| {
        let (r, c) = (t % row_tasks, t / row_tasks);
        task(
            kernel,
            p,
            r * row_chunk..((r + 1) * row_chunk).min(row_panels),
            c * col_chunk..((c + 1) * col_chunk).min(panels),
        );
    });
}

/// Output tiles for row panels `rows` × column panels `cols`.
fn task(
    kernel: Int8Kernel,
    p: &Problem,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
) {
    let (mr, nb) = (kernel.mr(), kernel.nb());
    let blocks = p.b.n.div_ceil(NBLK);
    for rp in rows {
        let i0 = rp * mr;
        let mrows = mr.min(p.m - i0);
        for cp in cols.clone() {
            let blk = cp * nb;
            let t = Tile {
                i0,
                mrows,
                blk,
                nblk: nb.min(blocks - blk),
            };
            match kernel {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the caller checked the CPU has the kernel's features; the tile lies
                // within the problem and no other task writes it.
                Int8Kernel::Vnni => unsafe { vnni::tile(p, &t) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: as above.
                Int8Kernel::Avx2 => unsafe { avx2::tile(p, &t) },
                // SAFETY: the tile lies within the problem and no other task writes it.
                Int8Kernel::Portable => unsafe { portable_tile(p, &t) },
                #[allow(unreachable_patterns)]
                _ => unreachable!("{kernel:?} is not available on this architecture"),
            }
        }
    }
}

/// One output tile: rows `i0..i0 + mrows`, column blocks `blk..blk + nblk` (of 16).
struct Tile {
    i0: usize,
    mrows: usize,
    blk: usize,
    nblk: usize,
}

/// The epilogue for one output value, in bitsandbytes' order.
#[inline(always)]
fn epilogue(acc: i32, a_scale: f32, b_scale: f32, alpha: f32) -> f32 {
    acc as f32 * (a_scale * b_scale) * alpha
}

/// Portable tile: up to 4 rows × 16 columns, A packed as i16.
///
/// # Safety
/// The tile must lie within `p` and no other thread may write its output.
unsafe fn portable_tile(p: &Problem, t: &Tile) {
    // SAFETY: forwarded from the caller.
    unsafe {
        match t.mrows {
            4 => portable_kernel::<4>(p, t),
            3 => portable_kernel::<3>(p, t),
            2 => portable_kernel::<2>(p, t),
            1 => portable_kernel::<1>(p, t),
            _ => unreachable!(),
        }
    }
}

/// `R` rows × 16 columns in plain Rust, shaped for LLVM's vectoriser (about 20 GOPS per
/// core with baseline x86-64's SSE2, against 3–7 for the obvious loops): per k group the 64
/// bytes of B are widened to i16 once; each row multiplies them lane by lane with its 4
/// values repeated (i16 products, exact since |a·b| ≤ 128²) and adds into 64 i32 lanes,
/// which are summed by fours at the end.
///
/// # Safety
/// The tile must lie within `p` and no other thread may write its output.
#[inline(always)]
unsafe fn portable_kernel<const R: usize>(p: &Problem, t: &Tile) {
    const LANES: usize = NBLK * KGRP;
    let b = p.b;
    let n = b.n;
    // SAFETY: block `t.blk` exists; it holds NBLK·kp bytes.
    let bb = unsafe { std::slice::from_raw_parts(b.block_ptr(t.blk), NBLK * b.kp) };
    let rows: [&[u8]; R] = std::array::from_fn(|r| &p.a[(t.i0 + r) * p.lda..][..p.lda]);
    let mut acc = [[0i32; LANES]; R];
    for (g, bq) in bb.chunks_exact(LANES).enumerate() {
        let bw: [i16; LANES] = std::array::from_fn(|l| bq[l] as i16);
        for (acc, row) in acc.iter_mut().zip(&rows) {
            let quad = &row[g * 2 * KGRP..][..2 * KGRP];
            let av: [i16; KGRP] =
                std::array::from_fn(|q| i16::from_ne_bytes([quad[2 * q], quad[2 * q + 1]]));
            let rep: [i16; 16] = std::array::from_fn(|l| av[l % KGRP]);
            for (acc, bw) in acc.chunks_exact_mut(16).zip(bw.chunks_exact(16)) {
                for l in 0..16 {
                    acc[l] = acc[l].wrapping_add(rep[l].wrapping_mul(bw[l]) as i32);
                }
            }
        }
    }
    let j0 = t.blk * NBLK;
    for (r, acc) in acc.iter().enumerate() {
        let i = t.i0 + r;
        for (c, lanes) in acc
            .chunks_exact(KGRP)
            .enumerate()
            .take(n.saturating_sub(j0))
        {
            let sum = lanes.iter().fold(0i32, |s, &v| s.wrapping_add(v));
            let j = j0 + c;
            // SAFETY: (i, j) is inside out, written only by this tile's task.
            unsafe {
                *p.out.0.add(i * n + j) = epilogue(sum, p.a_scale[i], p.b_scale[j], p.alpha);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use std::arch::x86_64::*;

    use super::{Problem, Tile, KGRP, NBLK};

    /// One tile of at most 8 rows × 3·16 columns, dispatched to a kernel of its exact size.
    ///
    /// # Safety
    /// The CPU must support AVX-512F/BW/VNNI; the tile must lie within `p` and no other
    /// thread may write its output.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn tile(p: &Problem, t: &Tile) {
        macro_rules! by_rows {
            ($nb:literal) => {
                match t.mrows {
                    8 => kernel::<8, $nb, 1>(p, t),
                    7 => kernel::<7, $nb, 1>(p, t),
                    6 => kernel::<6, $nb, 1>(p, t),
                    5 => kernel::<5, $nb, 1>(p, t),
                    4 => kernel::<4, $nb, 1>(p, t),
                    3 => kernel::<3, $nb, 2>(p, t),
                    2 => kernel::<2, $nb, 2>(p, t),
                    1 => kernel::<1, $nb, 4>(p, t),
                    _ => unreachable!(),
                }
            };
        }
        // SAFETY: forwarded from the caller.
        unsafe {
            match t.nblk {
                3 => by_rows!(3),
                2 => by_rows!(2),
                1 => by_rows!(1),
                _ => unreachable!(),
            }
        }
    }

    /// `R` rows × `C` blocks of 16 columns: accumulate over all of `k` in registers, then
    /// apply the epilogue and store the valid columns.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn kernel<const R: usize, const C: usize, const U: usize>(p: &Problem, t: &Tile) {
        let b = p.b;
        let kp = b.kp;
        let bstride = NBLK * kp;
        let bptr = b.block_ptr(t.blk);
        let aptr = p.a[t.i0 * p.lda..].as_ptr();
        // U independent sets of accumulators for successive k groups, so that small tiles
        // still have enough dependency chains to hide vpdpbusd's latency.
        let mut accs = [[[_mm512_setzero_si512(); C]; R]; U];
        let groups = kp / KGRP;
        let mut g = 0;
        macro_rules! step {
            ($acc:expr, $g:expr) => {
                // SAFETY: C blocks of NBLK·kp bytes follow bptr (the tile is within n's
                // blocks); group $g < kp/4 is inside each, and rows i0..i0+R of packed A hold
                // kp bytes.
                unsafe {
                    let mut bv = [_mm512_setzero_si512(); C];
                    for (c, bv) in bv.iter_mut().enumerate() {
                        *bv = _mm512_loadu_si512(bptr.add(c * bstride + $g * NBLK * KGRP).cast());
                    }
                    for (r, acc) in $acc.iter_mut().enumerate() {
                        let av = _mm512_set1_epi32(
                            aptr.add(r * p.lda + $g * KGRP)
                                .cast::<i32>()
                                .read_unaligned(),
                        );
                        for (acc, &bv) in acc.iter_mut().zip(&bv) {
                            *acc = _mm512_dpbusd_epi32(*acc, av, bv);
                        }
                    }
                }
            };
        }
        while g + U <= groups {
            for (u, acc) in accs.iter_mut().enumerate() {
                step!(acc, g + u);
            }
            g += U;
        }
        while g < groups {
            step!(accs[0], g);
            g += 1;
        }
        let mut acc = accs[0];
        for more in &accs[1..] {
            for (acc, more) in acc.iter_mut().zip(more) {
                for (acc, &more) in acc.iter_mut().zip(more) {
                    *acc = _mm512_add_epi32(*acc, more);
                }
            }
        }
        let n = b.n;
        let alpha = _mm512_set1_ps(p.alpha);
        for c in 0..C {
            let j = (t.blk + c) * NBLK;
            let valid = (n - j).min(NBLK);
            let mask: __mmask16 = if valid == NBLK {
                !0
            } else {
                (1u16 << valid) - 1
            };
            // SAFETY: the masked load reads only columns < n; bias is padded to the block.
            let (bs, bias) = unsafe {
                (
                    _mm512_maskz_loadu_ps(mask, p.b_scale.as_ptr().add(j)),
                    _mm512_loadu_si512(b.bias.as_ptr().add(j).cast()),
                )
            };
            for (r, acc) in acc.iter().enumerate() {
                let i = t.i0 + r;
                let s = _mm512_mul_ps(_mm512_set1_ps(p.a_scale[i]), bs);
                let v = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[c], bias));
                let v = _mm512_mul_ps(_mm512_mul_ps(v, s), alpha);
                // SAFETY: row i < m and the mask keeps columns < n; this task owns the tile.
                unsafe { _mm512_mask_storeu_ps(p.out.0.add(i * n + j), mask, v) };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{Problem, Tile, KGRP, NBLK};

    /// One tile of at most 2 rows × 16 columns.
    ///
    /// # Safety
    /// The CPU must support AVX2; the tile must lie within `p` and no other thread may
    /// write its output.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn tile(p: &Problem, t: &Tile) {
        // SAFETY: forwarded from the caller.
        unsafe {
            match t.mrows {
                2 => kernel::<2>(p, t),
                1 => kernel::<1>(p, t),
                _ => unreachable!(),
            }
        }
    }

    /// `R` rows × 16 columns. Each 16-byte load of B (4 columns × 4 k) is sign-extended to
    /// i16 and multiplied with the row's 4 i16 values by `vpmaddwd`, leaving two partial
    /// sums per column; they are added pairwise at the end.
    #[target_feature(enable = "avx2")]
    unsafe fn kernel<const R: usize>(p: &Problem, t: &Tile) {
        let b = p.b;
        let bptr = b.block_ptr(t.blk);
        let aptr = p.a[t.i0 * p.lda..].as_ptr();
        let mut acc = [[_mm256_setzero_si256(); 4]; R];
        for g in 0..b.kp / KGRP {
            // SAFETY: group g < kp/4 lies inside block t.blk (NBLK·kp bytes), and rows
            // i0..i0+R of packed A hold kp i16 values.
            unsafe {
                let mut bv = [_mm256_setzero_si256(); 4];
                for (c, bv) in bv.iter_mut().enumerate() {
                    let q = _mm_loadu_si128(bptr.add(g * NBLK * KGRP + c * 16).cast());
                    *bv = _mm256_cvtepi8_epi16(q);
                }
                for (r, acc) in acc.iter_mut().enumerate() {
                    let av = _mm256_set1_epi64x(
                        aptr.add(r * p.lda + g * KGRP * 2)
                            .cast::<i64>()
                            .read_unaligned(),
                    );
                    for (acc, &bv) in acc.iter_mut().zip(&bv) {
                        *acc = _mm256_add_epi32(*acc, _mm256_madd_epi16(av, bv));
                    }
                }
            }
        }
        let n = b.n;
        let j0 = t.blk * NBLK;
        let valid = (n - j0).min(NBLK);
        let mut bs = [0f32; NBLK];
        bs[..valid].copy_from_slice(&p.b_scale[j0..j0 + valid]);
        let alpha = _mm256_set1_ps(p.alpha);
        for (r, acc) in acc.iter().enumerate() {
            let i = t.i0 + r;
            let a_s = _mm256_set1_ps(p.a_scale[i]);
            let mut row = [0f32; NBLK];
            for h in 0..2 {
                // acc[2h] holds columns 8h..8h+4 as (pair, pair) per column, acc[2h+1] the
                // next four; hadd gives [c0 c1 c4 c5 | c2 c3 c6 c7], reordered by 64-bit
                // lanes to c0..c7.
                let s = _mm256_hadd_epi32(acc[2 * h], acc[2 * h + 1]);
                let s = _mm256_permute4x64_epi64::<0b11_01_10_00>(s);
                // SAFETY: bs holds 16 floats.
                let sc = _mm256_mul_ps(a_s, unsafe { _mm256_loadu_ps(bs.as_ptr().add(8 * h)) });
                let v = _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(s), sc), alpha);
                // SAFETY: row holds 16 floats.
                unsafe { _mm256_storeu_ps(row.as_mut_ptr().add(8 * h), v) };
            }
            // SAFETY: row i < m, columns j0..j0+valid < n; this task owns the tile.
            unsafe {
                std::ptr::copy_nonoverlapping(row.as_ptr(), p.out.0.add(i * n + j0), valid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_reads_back_packed_weights() {
        let (n, k) = (19, 7);
        let w: Vec<i8> = (0..n * k).map(|v| (v * 37 % 256) as u8 as i8).collect();
        let p = PackedInt8::pack(&w, n, k);
        for j in 0..n {
            for t in 0..k {
                assert_eq!(p.get(j, t), w[j * k + t]);
            }
        }
        assert_eq!(p.resident_bytes(), 32 * 8 + 32 * 4);
    }
}
