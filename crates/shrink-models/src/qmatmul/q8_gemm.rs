//! Integer weight codes times int8 activations for many tokens at once: prompt processing
//! while [`crate::runtime::int8_activations`] is on (`bench`'s pp512, `generate`'s prompt,
//! `eval --int8-activations`).
//!
//! [`super::q8`] multiplies a few tokens against the rows as they are stored: every (row,
//! token) pays a horizontal sum and a correction, and every activation is reloaded per row —
//! over 512 tokens that ran at 403 tokens/s against the float GEMM's 750 (SmolLM2 Q4_0). Here,
//! as in ggml's repacked Q4_0 GEMM (`ggml-cpu/arch/x86/repack.cpp`, `block_q4_0x8`), the codes
//! are laid out once more, in panels of 16 rows: per block of 32 values, register `j` holds
//! values `4j..4j+4` of each of the 16 rows, a 32-bit lane per row (4-bit codes: the low
//! nibbles hold values `4j..`, the high ones `16 + 4j..`, for `j` < 4). One `vpdpbusd` with
//! four of a token's int8 activations broadcast adds their four products into every row's
//! lane, so after eight (one block) each lane holds its row's integer block sum, with no
//! horizontal sum or shuffle. With activations `x ≈ d_{t,b}·q` in blocks of 32 (ggml's Q8_0
//! rounding, as [`super::q8`]) and weights `w = s_{r,b}·c + z_{r,b}` (`z` = min − scale·zero;
//! a code table's values as its integers, [`super::Table`]),
//!
//! `y_{t,r} = Σ_b d_{t,b} · (s_{r,b} · Σ_{c∈b} c·q_c + z_{r,b} · Σ_{c∈b} q_c)`:
//!
//! per block, token and 16 rows, eight `vpdpbusd` and a convert, a multiply and two FMAs do
//! 512 multiply-adds that take 32 FMAs in float32. A tile is 16 rows × up to 8 tokens; each
//! thread takes a run of panels and walks every token over each (the panel stays in L1, the
//! tokens' int8 activations in L2).
//!
//! The result equals the float product of the dequantized weights with the int8-rounded
//! activations up to float32 rounding (tested in f64), and the VNNI kernel equals the portable
//! one bit for bit (the same operations in the same order). The panels are a second copy of the
//! codes, built on the first product: 4-bit codes as nibbles (a table's indices too, looked up
//! in registers), others (2-, 3-, 5-, 6-, 8-bit) a byte each; per 32 values (per 16 for
//! granules of 16, GGUF's Q6_K: two integer sums a block) a float16 scale and a zero byte where
//! the scales are float16 and the zeros integers (the zero then subtracted in the integer
//! sums), else a float32 scale and bias — 88–112 MiB more at the peak of a SmolLM2 Q4_1
//! evaluation (its mins keep float32). CPUs without AVX-512 VNNI keep the float GEMM for many
//! tokens (the portable kernel is the tests' reference).
//!
//! Hand-written: no crate multiplies block-scaled integer layouts.

#![allow(unsafe_op_in_unsafe_fn)]

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use rayon::prelude::*;

use super::{IntRows, SendPtr, TABLE_OFFSET};
use crate::int8_gemm::Int8Kernel;

/// Values per block: one activation scale and one weight scale each.
pub const QK: usize = 32;
/// Rows per panel: the 16 32-bit lanes of an AVX-512 register.
pub const PANEL: usize = 16;
/// Tokens per tile: 8 float accumulators, 8 integer ones and 8 code registers in 32.
const TILE: usize = 8;
/// Most blocks a tile sums before its partial results go to the output (see [`gemm`]).
const CHUNK: usize = 16;

/// A weight's codes repacked for [`gemm`]: panels of [`PANEL`] rows, block by block.
pub struct Panels {
    n: usize,
    k: usize,
    /// 4-bit codes two per byte (a block 256 bytes), else one per byte (512).
    nibbles: bool,
    /// Per panel, per block, the codes as the module describes.
    codes: Vec<u8>,
    /// A code table's integer values ([`super::Table::ints`]): the nibbles are indices, looked up
    /// in registers (`vpshufb`) after unpacking.
    lut: Option<[u8; 16]>,
    /// Scales per block: 1, or 2 for granules of 16 values (GGUF's Q6_K), each over half of
    /// the block's codes.
    parts: usize,
    /// Per panel, per block, per part, the 16 rows' scales then their biases (empty when
    /// `compact` holds them).
    affine: Vec<f32>,
    /// For float16 scales with integer zero points in 0..=255 (Q4_0, Q5_0, Q8_0, shrink's
    /// integers, GPTQ, AWQ): per panel, per block, per part, the 16 rows' scales as float16
    /// bits then their zeros as bytes — 48 bytes where `affine` takes 128, fewer bytes a
    /// generated token reads. The zero enters the integer sums (`Σ c·q − z·Σ q`).
    compact: Vec<u8>,
}

impl Panels {
    /// `t` (`[n, k]`) repacked, or `None` when its layout does not [`fits`].
    pub(super) fn new(t: &IntRows, n: usize, k: usize) -> Option<Self> {
        if !fits(t, k) {
            return None;
        }
        let (nibbles, parts) = shape_of(t);
        let small = compact(t);
        let nb = k / QK;
        let block_bytes = block_bytes(nibbles);
        let block_affine_len = parts * 2 * PANEL;
        let block_compact_len = parts * COMPACT;
        let panels = n.div_ceil(PANEL);
        let mut codes = vec![0u8; panels * nb * block_bytes];
        let (mut affine, mut packed) = if small {
            (Vec::new(), vec![0u8; panels * nb * block_compact_len])
        } else {
            (vec![0f32; panels * nb * block_affine_len], Vec::new())
        };
        // Per panel: its codes and its scales (float32 affine or compact bytes, one of them).
        let affine_chunks: Vec<&mut [f32]> = if small {
            (0..panels).map(|_| Default::default()).collect()
        } else {
            affine.chunks_mut(nb * block_affine_len).collect()
        };
        let compact_chunks: Vec<&mut [u8]> = if small {
            packed.chunks_mut(nb * block_compact_len).collect()
        } else {
            (0..panels).map(|_| Default::default()).collect()
        };
        codes
            .par_chunks_mut(nb * block_bytes)
            .zip(
                affine_chunks
                    .into_par_iter()
                    .zip(compact_chunks.into_par_iter()),
            )
            .enumerate()
            .for_each(|(p, (codes, (affine, packed)))| {
                let mut row = vec![0u8; k];
                for l in 0..PANEL.min(n - p * PANEL) {
                    let r = p * PANEL + l;
                    t.row_codes(r, k, &mut row);
                    for b in 0..nb {
                        for i in 0..parts {
                            let c = b * QK + i * QK / parts;
                            if small {
                                let g = t.granule_index(r, c);
                                let s = half::f16::from_f32(t.scales.get(g)).to_bits();
                                let z = t.zeros.get(g).copied().unwrap_or(t.offset) as u8;
                                let at = b * block_compact_len + i * COMPACT;
                                packed[at + 2 * l..at + 2 * l + 2]
                                    .copy_from_slice(&s.to_le_bytes());
                                packed[at + 2 * PANEL + l] = z;
                            } else {
                                let (s, z) = block_affine(t, r, c);
                                let at = b * block_affine_len + i * 2 * PANEL;
                                affine[at + l] = s;
                                affine[at + PANEL + l] = z;
                            }
                        }
                        let block = &mut codes[b * block_bytes..(b + 1) * block_bytes];
                        for (v, &code) in row[b * QK..(b + 1) * QK].iter().enumerate() {
                            if nibbles {
                                let (j, high) = ((v % 16) / 4, v >= 16);
                                block[j * 64 + l * 4 + v % 4] |= code << (4 * high as u8);
                            } else {
                                block[(v / 4) * 64 + l * 4 + v % 4] = code;
                            }
                        }
                    }
                }
            });
        Some(Panels {
            n,
            k,
            nibbles,
            lut: t.table.as_ref().map(|tab| tab.ints),
            parts,
            codes,
            affine,
            compact: packed,
        })
    }

    /// Bytes held (codes, scales and biases).
    pub fn bytes(&self) -> usize {
        self.codes.len() + 4 * self.affine.len() + self.compact.len()
    }

    /// [`Self::bytes`] of the panels `t` (`[n, k]`) would make, without making them.
    pub(super) fn bytes_for(t: &IntRows, n: usize, k: usize) -> Option<usize> {
        if !fits(t, k) {
            return None;
        }
        let rows = n.div_ceil(PANEL) * PANEL;
        let (nibbles, parts) = shape_of(t);
        let codes = rows / PANEL * (k / QK) * block_bytes(nibbles);
        let per_part = if compact(t) { COMPACT / PANEL } else { 4 * 2 };
        Some(codes + rows * (k / QK) * parts * per_part)
    }

    fn blocks(&self) -> usize {
        self.k / QK
    }

    /// Where block `b` of panel `panel` starts in `compact`.
    fn compact_at(&self, panel: usize, b: usize) -> usize {
        (panel * self.blocks() + b) * self.parts * COMPACT
    }

    /// Where block `b` of panel `panel` starts in `affine`.
    fn affine_at(&self, panel: usize, b: usize) -> usize {
        (panel * self.blocks() + b) * self.parts * 2 * PANEL
    }

    fn block_bytes(&self) -> usize {
        block_bytes(self.nibbles)
    }

    /// The integer the kernels multiply for row `l` of panel `p`, value `v` of block `b`: the
    /// code, or its table's integer (for tests and the portable kernel).
    #[inline(always)]
    fn code(&self, p: usize, b: usize, l: usize, v: usize) -> u8 {
        let block = &self.codes[(p * self.blocks() + b) * self.block_bytes()..];
        let code = if self.nibbles {
            let byte = block[((v % 16) / 4) * 64 + l * 4 + v % 4];
            if v >= 16 {
                byte >> 4
            } else {
                byte & 15
            }
        } else {
            block[(v / 4) * 64 + l * 4 + v % 4]
        };
        self.lut.map_or(code, |lut| lut[code as usize])
    }
}

/// Whether [`Panels::new`] takes `t` (`[n, k]`): rows a multiple of 32 values, granules of 16
/// (GGUF's Q6_K), a multiple of 32 or one in all, codes of at most a byte.
pub(super) fn fits(t: &IntRows, k: usize) -> bool {
    k.is_multiple_of(QK)
        && k > 0
        && t.bits <= 8
        && (t.per_row == 0 || t.glen.is_multiple_of(QK) || t.glen == QK / 2)
}

/// Bytes of one block of a panel's codes: 4-bit codes two a byte, others one.
fn block_bytes(nibbles: bool) -> usize {
    if nibbles {
        QK * PANEL / 2
    } else {
        QK * PANEL
    }
}

/// Bytes of one part's compact scales and zeros for a panel: 16 float16, 16 bytes.
const COMPACT: usize = 3 * PANEL;

/// Whether `t`'s scales are all float16 and its zero points integers of 0..=255, with no mins
/// or table: [`Panels::compact`].
fn compact(t: &IntRows) -> bool {
    let byte = |z: f32| z.fract() == 0.0 && (0.0..=255.0).contains(&z);
    t.table.is_none()
        && t.mins.is_empty()
        && matches!(t.scales, super::Floats::F16(_))
        && if t.zeros.is_empty() {
            byte(t.offset)
        } else {
            t.zeros.iter().all(|&z| byte(z))
        }
}

/// Whether `t`'s panels hold nibbles, and how many scales a block has (2 for granules of 16).
fn shape_of(t: &IntRows) -> (bool, usize) {
    let parts = if t.per_row != 0 && t.glen == QK / 2 {
        2
    } else {
        1
    };
    (t.bits == 4, parts)
}

/// Scale and bias of the 32 values of row `r` from column `c`: `w = s·code + z`.
fn block_affine(t: &IntRows, r: usize, c: usize) -> (f32, f32) {
    let g = t.granule_index(r, c);
    let scale = t.scales.get(g);
    match &t.table {
        Some(tab) => {
            let s = scale * tab.int_scale;
            (s, -TABLE_OFFSET * s)
        }
        None => {
            let zero = t.zeros.get(g).copied().unwrap_or(t.offset);
            (scale, t.min(g) - scale * zero)
        }
    }
}

/// Tokens' activations rounded to int8 blocks of 32 (natural order, `[m, k]`).
pub struct Acts {
    k: usize,
    q: Vec<i8>,
    /// Per token, per block: the scale `d` (absmax / 127).
    d: Vec<f32>,
    /// Per token, per block: `d · Σ q` over the block, its first 16 values and its last 16.
    a: Vec<f32>,
    /// The same sums of `q` as integers.
    sums: Vec<i32>,
}

impl Acts {
    /// `x` (`[m, k]`, `k` a multiple of 32) rounded.
    pub fn new(x: &[f32], m: usize, k: usize) -> Self {
        assert!(
            k.is_multiple_of(QK) && x.len() == m * k,
            "q8_gemm::Acts: shape"
        );
        let nb = k / QK;
        let mut q = vec![0i8; m * k];
        let mut d = vec![0f32; m * nb];
        let mut a = vec![0f32; m * nb * 3];
        let mut sums = vec![0i32; m * nb * 3];
        if m <= TILE {
            // A few tokens (generation, inside the team's parts): on this thread.
            for ((((q, d), a), s), x) in q
                .chunks_mut(k)
                .zip(d.chunks_mut(nb))
                .zip(a.chunks_mut(nb * 3))
                .zip(sums.chunks_mut(nb * 3))
                .zip(x.chunks(k))
            {
                round_one(x, q, d, a, s);
            }
            return Acts { k, q, d, a, sums };
        }
        q.par_chunks_mut(k)
            .zip(d.par_chunks_mut(nb).zip(a.par_chunks_mut(nb * 3)))
            .zip(sums.par_chunks_mut(nb * 3).zip(x.par_chunks(k)))
            .for_each(|((q, (d, a)), (s, x))| round_one(x, q, d, a, s));
        Acts { k, q, d, a, sums }
    }

    /// Tokens held.
    pub fn tokens(&self) -> usize {
        self.q.len() / self.k
    }

    /// Activation `c` of token `t` as the kernels see it: `d · q`.
    pub fn value(&self, t: usize, c: usize) -> f32 {
        self.d[t * (self.k / QK) + c / QK] * self.q[t * self.k + c] as f32
    }
}

/// One token rounded: [`round_token_avx512`] where the CPU runs it, else [`round_token`].
fn round_one(x: &[f32], q: &mut [i8], d: &mut [f32], a: &mut [f32], s: &mut [i32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512bw") {
        // SAFETY: the CPU runs AVX-512 BW; the slices hold whole blocks.
        unsafe { round_token_avx512(x, q, d, a, s) };
        return;
    }
    round_token(x, q, d, a, s)
}

crate::kernels::dispatch! {
    /// One token's values rounded to int8 blocks (`d` = absmax / 127, to nearest, ties to
    /// even), with `d · Σ q` over each block and its halves into `a` and `Σ q` into `s` (three
    /// a block).
    fn round_token(x: &[f32], q: &mut [i8], d: &mut [f32], a: &mut [f32], s: &mut [i32]) {
        for (((xb, qb), db), (ab, sb)) in x
            .chunks_exact(QK)
            .zip(q.chunks_exact_mut(QK))
            .zip(d.iter_mut())
            .zip(a.chunks_exact_mut(3).zip(s.chunks_exact_mut(3)))
        {
            // |x| as bits: for finite values the integer max is the float max, and it
            // vectorises (a float `max` fold does not).
            let amax = f32::from_bits(xb.iter().map(|v| v.abs().to_bits()).max().unwrap_or(0));
            let scale = amax / 127.0;
            let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            // Through i32 (exact: |v · inv| ≤ 127): a float-to-i8 `as` saturates per value
            // and did not vectorise (9 % of a pp512 profile).
            let mut r = [0i32; QK];
            for (o, &v) in r.iter_mut().zip(xb) {
                *o = crate::kernels::round_ties_even_small(v * inv) as i32;
            }
            for (o, &v) in qb.iter_mut().zip(&r) {
                *o = v as i8;
            }
            let low: i32 = r[..QK / 2].iter().sum();
            let high: i32 = r[QK / 2..].iter().sum();
            *db = scale;
            ab[0] = scale * (low + high) as f32;
            ab[1] = scale * low as f32;
            ab[2] = scale * high as f32;
            sb.copy_from_slice(&[low + high, low, high]);
        }
    }
}

/// [`round_token`] in AVX-512, the same values (the compiled loops ran at 1 ns a value, a
/// fifth of a 512-token product's time).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn round_token_avx512(x: &[f32], q: &mut [i8], d: &mut [f32], a: &mut [f32], s: &mut [i32]) {
    let blocks = d.len();
    debug_assert!(x.len() == blocks * QK && q.len() == blocks * QK && a.len() == 3 * blocks);
    for b in 0..blocks {
        let v0 = _mm512_loadu_ps(x.as_ptr().add(b * QK));
        let v1 = _mm512_loadu_ps(x.as_ptr().add(b * QK + 16));
        let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        let scale = amax / 127.0;
        let inv = _mm512_set1_ps(if scale > 0.0 { 1.0 / scale } else { 0.0 });
        // Rounded to nearest, ties to even (the default rounding mode), as `round_token`.
        let r0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, inv));
        let r1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, inv));
        _mm_storeu_si128(
            q.as_mut_ptr().add(b * QK) as *mut __m128i,
            _mm512_cvtepi32_epi8(r0),
        );
        _mm_storeu_si128(
            q.as_mut_ptr().add(b * QK + 16) as *mut __m128i,
            _mm512_cvtepi32_epi8(r1),
        );
        let (low, high) = (_mm512_reduce_add_epi32(r0), _mm512_reduce_add_epi32(r1));
        d[b] = scale;
        a[3 * b] = scale * (low + high) as f32;
        a[3 * b + 1] = scale * low as f32;
        a[3 * b + 2] = scale * high as f32;
        s[3 * b..3 * b + 3].copy_from_slice(&[low + high, low, high]);
    }
}

/// The kernels this module has: VNNI, or portable (the reference; any CPU).
pub fn kernel_for(k: Int8Kernel) -> Option<Int8Kernel> {
    match k {
        Int8Kernel::Vnni | Int8Kernel::Portable if k.is_available() => Some(k),
        _ => None,
    }
}

/// `y[t·n + r] = Σ_c x[t, c] · W[r, c]` for every token of `acts` and row of `p`, with
/// `kernel` ([`Int8Kernel::Vnni`] or [`Int8Kernel::Portable`]), on all threads.
pub fn gemm(kernel: Int8Kernel, p: &Panels, acts: &Acts, y: &mut [f32]) {
    let m = acts.tokens();
    assert!(acts.k == p.k && y.len() == m * p.n, "q8_gemm: shapes");
    let panels = p.n.div_ceil(PANEL);
    let threads = rayon::current_num_threads().max(1);
    let per = panels.div_ceil(threads).max(1);
    // Blocks in runs of at most CHUNK, so that a run of the panel (6 KiB of nibbles and
    // scales) and a tile's activations for it (4 KiB) stay in L1 together: whole rows of
    // 1536 values (18 + 12 KiB) ran the down projection at 1.2–1.5× the float GEMM where
    // rows of 576 ran at 2.4×.
    let nb = p.blocks();
    let runs = nb.div_ceil(CHUNK);
    let out = SendPtr(y.as_mut_ptr());
    (0..panels.div_ceil(per)).into_par_iter().for_each(|part| {
        for panel in part * per..((part + 1) * per).min(panels) {
            for run in 0..runs {
                let blocks = run * nb / runs..(run + 1) * nb / runs;
                let mut t0 = 0;
                while t0 < m {
                    let tokens = TILE.min(m - t0);
                    // SAFETY: this part alone writes columns of its panels; the kernel was
                    // checked available (`kernel_for`).
                    unsafe { tile(kernel, p, panel, blocks.clone(), acts, t0, tokens, out) };
                    t0 += tokens;
                }
            }
        }
    });
}

/// [`gemm`] for the rows of panels `panels` only, on this thread (a part of the team's split of
/// a few tokens' product).
///
/// # Safety
/// `y` holds `acts.tokens() · n` floats of which no other thread writes these panels' columns;
/// `kernel` is one [`kernel_for`] gave.
pub(super) unsafe fn gemm_panels(
    kernel: Int8Kernel,
    p: &Panels,
    acts: &Acts,
    y: SendPtr,
    panels: std::ops::Range<usize>,
) {
    let m = acts.tokens();
    let nb = p.blocks();
    for panel in panels {
        let mut t0 = 0;
        while t0 < m {
            let tokens = TILE.min(m - t0);
            tile(kernel, p, panel, 0..nb, acts, t0, tokens, y);
            t0 += tokens;
        }
    }
}

/// One tile: panel `panel` times tokens `t0..t0 + tokens` over `blocks` into `y` (`[m, n]`),
/// added to what earlier blocks left there unless `blocks` starts at 0.
///
/// # Safety
/// `y` holds `m · n` floats of which no other thread writes this panel's columns; `kernel`
/// runs on this CPU.
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    kernel: Int8Kernel,
    p: &Panels,
    panel: usize,
    blocks: std::ops::Range<usize>,
    acts: &Acts,
    t0: usize,
    tokens: usize,
    y: SendPtr,
) {
    #[cfg(target_arch = "x86_64")]
    if kernel == Int8Kernel::Vnni {
        let b = blocks;
        macro_rules! parts {
            ($n:literal) => {
                match (p.parts, p.compact.is_empty()) {
                    (1, true) => vnni::<$n, 1, false>(p, panel, b, acts, t0, y),
                    (1, false) => vnni::<$n, 1, true>(p, panel, b, acts, t0, y),
                    (_, true) => vnni::<$n, 2, false>(p, panel, b, acts, t0, y),
                    (_, false) => vnni::<$n, 2, true>(p, panel, b, acts, t0, y),
                }
            };
        }
        match tokens {
            8 => parts!(8),
            7 => parts!(7),
            6 => parts!(6),
            5 => parts!(5),
            4 => parts!(4),
            3 => parts!(3),
            2 => parts!(2),
            _ => parts!(1),
        }
        return;
    }
    let _ = kernel;
    portable(p, panel, blocks, acts, t0, tokens, y)
}

/// The reference: the VNNI kernel's operations one lane at a time, in its order.
unsafe fn portable(
    p: &Panels,
    panel: usize,
    blocks: std::ops::Range<usize>,
    acts: &Acts,
    t0: usize,
    tokens: usize,
    y: SendPtr,
) {
    let nb = p.blocks();
    let rows = PANEL.min(p.n - panel * PANEL);
    for t in t0..t0 + tokens {
        let out = y.get().add(t * p.n + panel * PANEL);
        let mut acc = [0f32; PANEL];
        if blocks.start > 0 {
            for (l, acc) in acc.iter_mut().enumerate().take(rows) {
                *acc = *out.add(l);
            }
        }
        let len = QK / p.parts;
        for b in blocks.clone() {
            let q = &acts.q[t * p.k + b * QK..][..QK];
            let d = acts.d[t * nb + b];
            for i in 0..p.parts {
                let at = 3 * (t * nb + b) + if p.parts == 1 { 0 } else { 1 + i };
                for (l, acc) in acc.iter_mut().enumerate() {
                    let isum: i32 = (i * len..(i + 1) * len)
                        .map(|v| p.code(panel, b, l, v) as i32 * q[v] as i32)
                        .sum();
                    if p.compact.is_empty() {
                        let aff = &p.affine[p.affine_at(panel, b) + i * 2 * PANEL..][..2 * PANEL];
                        *acc = (isum as f32).mul_add(aff[l] * d, *acc);
                        *acc = aff[PANEL + l].mul_add(acts.a[at], *acc);
                    } else {
                        let c = &p.compact[p.compact_at(panel, b) + i * COMPACT..][..COMPACT];
                        let s = half::f16::from_bits(u16::from_le_bytes([c[2 * l], c[2 * l + 1]]));
                        let isum = isum - c[2 * PANEL + l] as i32 * acts.sums[at];
                        *acc = (isum as f32).mul_add(s.to_f32() * d, *acc);
                    }
                }
            }
        }
        for (l, &v) in acc.iter().enumerate().take(rows) {
            *out.add(l) = v;
        }
    }
}

/// [`portable`] in AVX-512 VNNI for `N` tokens and `P` scales a block, the scales compact
/// (`C`) or float32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn vnni<const N: usize, const P: usize, const C: bool>(
    p: &Panels,
    panel: usize,
    blocks: std::ops::Range<usize>,
    acts: &Acts,
    t0: usize,
    y: SendPtr,
) {
    let nb = p.blocks();
    let k = p.k;
    let codes = p.codes.as_ptr().add(panel * nb * p.block_bytes());
    debug_assert!(p.parts == P && p.compact.is_empty() != C);
    let affine = p
        .affine
        .as_ptr()
        .add(if C { 0 } else { p.affine_at(panel, 0) });
    let compact = p
        .compact
        .as_ptr()
        .add(if C { p.compact_at(panel, 0) } else { 0 });
    let sums = acts.sums.as_ptr().add(3 * t0 * nb);
    let q = acts.q.as_ptr().add(t0 * k);
    let d = acts.d.as_ptr().add(t0 * nb);
    let a = acts.a.as_ptr().add(3 * t0 * nb);
    let low = _mm512_set1_epi8(15);
    let lut = p
        .lut
        .map(|l| _mm512_broadcast_i32x4(_mm_loadu_si128(l.as_ptr() as *const __m128i)));
    let rows = PANEL.min(p.n - panel * PANEL);
    let mask: __mmask16 = if rows == PANEL {
        0xffff
    } else {
        (1u16 << rows) - 1
    };
    let out = |t: usize| y.get().add((t0 + t) * p.n + panel * PANEL);
    let mut acc: [__m512; N] = std::array::from_fn(|t| {
        if blocks.start > 0 {
            _mm512_maskz_loadu_ps(mask, out(t))
        } else {
            _mm512_setzero_ps()
        }
    });
    for b in blocks {
        let w: [__m512i; 8] = if p.nibbles {
            let c = codes.add(b * QK * PANEL / 2);
            let v: [__m512i; 4] =
                std::array::from_fn(|j| _mm512_loadu_si512(c.add(64 * j) as *const _));
            let w = std::array::from_fn(|j| {
                if j < 4 {
                    _mm512_and_si512(v[j], low)
                } else {
                    _mm512_and_si512(_mm512_srli_epi16(v[j - 4], 4), low)
                }
            });
            match lut {
                Some(lut) => w.map(|w| _mm512_shuffle_epi8(lut, w)),
                None => w,
            }
        } else {
            let c = codes.add(b * QK * PANEL);
            std::array::from_fn(|j| _mm512_loadu_si512(c.add(64 * j) as *const _))
        };
        // Each part: the integer sums of its quads for every token, then its scale and bias.
        for i in 0..P {
            let (s, z) = if C {
                let c = compact.add((b * P + i) * COMPACT);
                let s = _mm512_cvtph_ps(_mm256_loadu_si256(c as *const __m256i));
                let z = _mm512_cvtepu8_epi32(_mm_loadu_si128(c.add(2 * PANEL) as *const __m128i));
                (s, _mm512_castsi512_ps(z))
            } else {
                let aff = affine.add((b * P + i) * 2 * PANEL);
                (_mm512_loadu_ps(aff), _mm512_loadu_ps(aff.add(PANEL)))
            };
            let mut isum = [_mm512_setzero_si512(); N];
            // An index loop over constant bounds, fully unrolled: the iterator form
            // (`take`/`skip`) kept `w` in memory and halved the speed.
            #[allow(clippy::needless_range_loop)]
            for j in i * 8 / P..(i + 1) * 8 / P {
                for (t, isum) in isum.iter_mut().enumerate() {
                    let x = (q.add(t * k + b * QK + 4 * j) as *const i32).read_unaligned();
                    *isum = _mm512_dpbusd_epi32(*isum, w[j], _mm512_set1_epi32(x));
                }
            }
            let at = if P == 1 { 0 } else { 1 + i };
            for (t, acc) in acc.iter_mut().enumerate() {
                let sd = _mm512_mul_ps(s, _mm512_set1_ps(*d.add(t * nb + b)));
                if C {
                    // The zeros in the integer sums: Σ c·q − z·Σ q.
                    let qs = _mm512_set1_epi32(*sums.add(3 * (t * nb + b) + at));
                    let zq = _mm512_mullo_epi32(_mm512_castps_si512(z), qs);
                    let isum = _mm512_sub_epi32(isum[t], zq);
                    *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), sd, *acc);
                } else {
                    *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[t]), sd, *acc);
                    let a = _mm512_set1_ps(*a.add(3 * (t * nb + b) + at));
                    *acc = _mm512_fmadd_ps(z, a, *acc);
                }
            }
        }
    }
    for (t, acc) in acc.iter().enumerate() {
        _mm512_mask_storeu_ps(out(t), mask, *acc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qmatmul::q8::tests::lcg;
    use crate::qmatmul::Table;

    /// Random rows of `bits`-bit codes, granules of `glen` (0: one scale per tensor), with
    /// zero points, mins, a symmetric offset or a table.
    fn rows(bits: u8, n: usize, k: usize, glen: usize, kind: &str, seed: u64) -> IntRows {
        let mut s = seed;
        let codes: Vec<u8> = (0..n * k)
            .map(|_| (lcg(&mut s) % (1u32 << bits)) as u8)
            .collect();
        let (glen, per_row) = if glen == 0 { (k, 0) } else { (glen, k / glen) };
        let granules = if per_row == 0 { 1 } else { n * per_row };
        let mut f = |lo: f32, hi: f32| lo + (hi - lo) * (lcg(&mut s) % 10_000) as f32 / 10_000.0;
        let half = kind.ends_with("16");
        let kind = kind.trim_end_matches("16");
        let scales: Vec<f32> = (0..granules)
            .map(|_| f(0.001, 0.05))
            .map(|v| {
                if half {
                    half::f16::from_f32(v).to_f32()
                } else {
                    v
                }
            })
            .collect();
        let top = (1u32 << bits) as f32 - 1.0;
        let (zeros, mins, offset) = match kind {
            "zeros" => (
                (0..granules).map(|_| f(0.0, top).round()).collect(),
                vec![],
                0.0,
            ),
            "mins" => (vec![], (0..granules).map(|_| f(-0.2, 0.0)).collect(), 0.0),
            _ => (vec![], vec![], (1u32 << (bits - 1)) as f32),
        };
        let mut t = IntRows::from_codes(
            bits, &codes, n, k, glen, per_row, scales, zeros, mins, offset,
        );
        if kind == "table" {
            let values = std::array::from_fn(|i| -1.0 + i as f32 * (2.0 / 15.0));
            t.table = Some(Box::new(Table::new(values)));
            t.offset = TABLE_OFFSET;
        }
        t
    }

    /// The weight as the kernels read it (a table through its integer values), in f64.
    fn weight(t: &IntRows, r: usize, c: usize, k: usize) -> f64 {
        let code = t.code(r, c, k);
        let (s, z) = block_affine(t, r, c);
        let code = t.table.as_ref().map_or(code, |tab| tab.ints[code as usize]);
        s as f64 * code as f64 + z as f64
    }

    fn kernels() -> Vec<Int8Kernel> {
        [Int8Kernel::Vnni, Int8Kernel::Portable]
            .into_iter()
            .filter_map(kernel_for)
            .collect()
    }

    #[test]
    fn every_kernel_equals_the_dequantized_product_with_rounded_activations() {
        // (bits, n, k, glen, kind): nibbles and bytes, groups of 32 / 64 / whole rows / one
        // scale per tensor, rows not a multiple of 16, token counts across the tile.
        let cases = [
            (4, 37, 96, 32, "offset"),
            (4, 16, 128, 64, "zeros"),
            (4, 33, 64, 32, "mins"),
            (4, 20, 96, 0, "offset"),
            (4, 17, 64, 32, "table"),
            (6, 35, 96, 16, "offset"),
            (4, 16, 64, 16, "mins"),
            (4, 37, 96, 32, "offset16"),
            (4, 20, 128, 64, "zeros16"),
            (8, 19, 96, 32, "offset16"),
            (6, 35, 96, 16, "zeros16"),
            (3, 17, 64, 0, "zeros16"),
            (8, 19, 96, 32, "offset"),
            (8, 16, 128, 128, "zeros"),
            (5, 18, 128, 32, "mins"),
            (6, 21, 64, 64, "mins"),
            (3, 9, 96, 32, "zeros"),
        ];
        for (i, &(bits, n, k, glen, kind)) in cases.iter().enumerate() {
            let t = rows(bits, n, k, glen, kind, 7 + i as u64);
            let p = Panels::new(&t, n, k).expect("fits");
            assert_eq!(Panels::bytes_for(&t, n, k), Some(p.bytes()));
            assert_eq!(p.compact.is_empty(), !kind.ends_with("16"), "case {i}");
            for l in 0..n {
                for c in 0..k {
                    let code = t.code(l, c, k);
                    let want = t.table.as_ref().map_or(code, |tab| tab.ints[code as usize]);
                    assert_eq!(p.code(l / PANEL, c / QK, l % PANEL, c % QK), want);
                }
            }
            for m in [1, 3, 8, 9, 19] {
                let mut s = 99 + m as u64;
                let x: Vec<f32> = (0..m * k)
                    .map(|_| (lcg(&mut s) % 2001) as f32 / 1000.0 - 1.0)
                    .collect();
                let acts = Acts::new(&x, m, k);
                let mut first: Option<Vec<f32>> = None;
                for kernel in kernels() {
                    let mut y = vec![f32::NAN; m * n];
                    gemm(kernel, &p, &acts, &mut y);
                    for tk in 0..m {
                        for r in 0..n {
                            let want: f64 = (0..k)
                                .map(|c| weight(&t, r, c, k) * acts.value(tk, c) as f64)
                                .sum();
                            let mag: f64 = (0..k)
                                .map(|c| (weight(&t, r, c, k) * acts.value(tk, c) as f64).abs())
                                .sum();
                            let got = y[tk * n + r] as f64;
                            assert!(
                                (got - want).abs() <= 1e-5 * mag + 1e-6,
                                "{kernel:?} case {i} m {m} token {tk} row {r}: {got} vs {want}"
                            );
                        }
                    }
                    match &first {
                        None => first = Some(y),
                        Some(f) => assert!(
                            f.iter().zip(&y).all(|(a, b)| a.to_bits() == b.to_bits()),
                            "{kernel:?} differs from the first kernel, case {i} m {m}"
                        ),
                    }
                }
            }
        }
    }

    #[test]
    fn rounded_activations_are_within_half_a_step() {
        let x: Vec<f32> = (0..64).map(|i| (i as f32 - 20.0) * 0.37).collect();
        let a = Acts::new(&x, 1, 64);
        for (c, &v) in x.iter().enumerate() {
            let block = &x[c / QK * QK..][..QK];
            let step = block.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
            assert!((a.value(0, c) - v).abs() <= 0.5 * step + 1e-6);
        }
        // An all-zero block rounds to zeros with scale 0.
        let z = Acts::new(&[0.0; 32], 1, 32);
        assert_eq!((z.value(0, 5), z.d[0], z.a[0]), (0.0, 0.0, 0.0));
        // Sums over the block and its halves.
        let h = Acts::new(&(0..32).map(|i| i as f32).collect::<Vec<_>>(), 1, 32);
        let sum = |r: std::ops::Range<usize>| r.map(|c| h.value(0, c)).sum::<f32>();
        assert!((h.a[0] - sum(0..32)).abs() < 1e-3 && (h.a[1] - sum(0..16)).abs() < 1e-3);
        assert!((h.a[2] - sum(16..32)).abs() < 1e-3);
    }

    #[test]
    fn the_avx512_rounding_equals_the_portable_one() {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512bw") {
            let mut s = 5u64;
            // Random values, a zero block, and halves that tie (127 · 0.5 / 127 steps).
            let mut x: Vec<f32> = (0..32 * 40)
                .map(|_| (lcg(&mut s) % 20001) as f32 / 1000.0 - 10.0)
                .collect();
            x[32..64].fill(0.0);
            for (i, v) in x[64..96].iter_mut().enumerate() {
                *v = if i == 0 { 127.0 } else { i as f32 - 0.5 };
            }
            let blocks = x.len() / QK;
            type Rounding<'a> = &'a dyn Fn(&mut [i8], &mut [f32], &mut [f32], &mut [i32]);
            let run = |f: Rounding| {
                let (mut q, mut d, mut a) = (
                    vec![0i8; x.len()],
                    vec![0f32; blocks],
                    vec![0f32; 3 * blocks],
                );
                let mut sums = vec![0i32; 3 * blocks];
                f(&mut q, &mut d, &mut a, &mut sums);
                (
                    q,
                    d.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    sums,
                )
            };
            let fast = run(&|q, d, a, s| unsafe { round_token_avx512(&x, q, d, a, s) });
            let portable = run(&|q, d, a, s| round_token(&x, q, d, a, s));
            assert_eq!(fast, portable);
        }
    }

    #[test]
    fn layouts_that_do_not_fit_are_refused() {
        // Granules of 8 and rows not a multiple of 32.
        assert!(Panels::new(&rows(6, 4, 64, 8, "offset", 1), 4, 64).is_none());
        let odd = rows(4, 4, 48, 16, "offset", 2);
        assert!(Panels::new(&odd, 4, 48).is_none());
    }
}
