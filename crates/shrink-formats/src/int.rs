//! Round-to-nearest integers: symmetric (absmax) and asymmetric (zero-point) `bits`-bit codes
//! with float scales, per tensor, per output channel or per group of columns.
//!
//! A weight is a row-major `[rows, cols]` matrix, `rows` = output features. Each *granule*
//! (the whole tensor, one row, or `G` consecutive elements of a row) gets its own scale, and
//! in the asymmetric case its own integer zero point:
//!
//! - symmetric: qmax = 2^(b−1) − 1, scale `s = absmax / qmax`, code of `w`
//!   `c = clamp(rne(w/s), −qmax, qmax) + 2^(b−1)`, value of `c`: `(c − 2^(b−1))·s`;
//! - asymmetric: qmax = 2^b − 1, scale `s = (max − min) / qmax`, code of `w`
//!   `c = clamp(rne(w/s) + z, 0, qmax)`, value of `c`: `(c − z)·s`,
//!
//! where `rne` rounds half to even (as `torch.round`), min ≤ 0 ≤ max is enforced by
//! `min = min(min, 0)`, `max = max(max, 0)` so that 0 is exact (as torch, optimum-quanto and
//! compressed-tensors do), and `z = clamp(rne(−min/s), 0, qmax)` is stored as a `u8`. Symmetric
//! codes are offset binary (the signed value plus 2^(b−1)); code 0 is never produced.
//!
//! **The scale is rounded to its storage type first** ([`IntSpec::scale_type`]: f32, f16 or
//! bf16), and that rounded scale is the one both quantizing and dequantizing use, so the
//! stored bytes reproduce [`quantize`]'s view exactly. A granule whose absmax (range) is 0, or
//! whose scale underflows the storage type to 0, quantizes to all zeros (no NaN). A scale that
//! overflows its type is refused ([`FormatError::ScaleOverflow`]).
//!
//! Re-quantizing a dequantized tensor gives back the same codes for symmetric specs and for
//! asymmetric ones with f32 scales. Asymmetric with f16 / bf16 scales is not idempotent in
//! general: with the rounded scale, `(max − min)/s` is no longer exactly qmax, the largest
//! element may land on qmax − 1, and the re-derived range is one step shorter. Every
//! dequantized value is, however, a fixed point of its own grid ([`IntSpec::quantize_value`]
//! with the stored scale and zero point returns its code) — which is what column-by-column
//! methods such as GPTQ, using [`IntSpec::granule_params`] and [`IntSpec::quantize_value`],
//! rely on.
//!
//! **Groups must divide the row**: `Group(G)` with `cols % G != 0` is refused with
//! [`FormatError::GroupSize`]; shrink never pads a group.
//!
//! **Packing** ([`pack`], [`unpack`]): codes are written as a little-endian, LSB-first bit
//! stream — code `i` occupies bits `[i·b, (i+1)·b)` of the stream, bit `k` of the stream being
//! bit `k % 8` of byte `k / 8` — so 2-, 3-, 5- and 6-bit codes pack densely (a 3-bit code may
//! straddle two bytes) and two 4-bit codes share a byte, the first in the low nibble. In an
//! [`IntTensor`] **every row starts on a byte boundary**: a row takes
//! [`IntSpec::row_bytes`]` = ceil(cols·b / 8)` bytes, the spare high bits of its last byte are 0.
//! Other on-disk layouts (GPTQ / compressed-tensors int32 words, AWQ's order) are built from
//! [`IntTensor::codes`] elsewhere.
//!
//! Scales are stored as little-endian bytes of their type, one per granule in row-major order
//! (row `r`, group `j` at index `r·(cols/G) + j`); zero points likewise, one `u8` each.

use rayon::prelude::*;

use crate::error::FormatError;
use crate::float::{self, FloatType};
use crate::PAR_MIN_ELEMENTS;

/// Format name used in errors.
const FORMAT: &str = "int";

/// The bit widths [`IntSpec`] accepts.
pub const SUPPORTED_BITS: [u8; 6] = [2, 3, 4, 5, 6, 8];

/// [`SUPPORTED_BITS`] as the error message spells it.
const SUPPORTED_BITS_TEXT: &str = "2, 3, 4, 5, 6 or 8";

/// Which elements share one scale (and zero point).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Granularity {
    /// One scale for the whole tensor.
    Tensor,
    /// One scale per row (per output channel).
    Channel,
    /// One scale per `G` consecutive elements of a row; `G` must divide `cols`.
    Group(usize),
}

/// How to quantize: bit width, symmetric or not, granularity and scale storage type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IntSpec {
    /// Bits per code: one of [`SUPPORTED_BITS`].
    pub bits: u8,
    /// Symmetric (absmax, no zero point) if true, asymmetric (u8 zero point) otherwise.
    pub symmetric: bool,
    /// Which elements share a scale.
    pub granularity: Granularity,
    /// Storage type of the scales (the quantizer uses the scale rounded to this type).
    pub scale_type: FloatType,
}

impl IntSpec {
    /// A symmetric (absmax) spec.
    pub fn symmetric(bits: u8, granularity: Granularity, scale_type: FloatType) -> Self {
        IntSpec {
            bits,
            symmetric: true,
            granularity,
            scale_type,
        }
    }

    /// An asymmetric (zero-point) spec.
    pub fn asymmetric(bits: u8, granularity: Granularity, scale_type: FloatType) -> Self {
        IntSpec {
            bits,
            symmetric: false,
            granularity,
            scale_type,
        }
    }

    /// Largest code magnitude: 2^(b−1) − 1 if symmetric, 2^b − 1 otherwise.
    pub fn qmax(&self) -> i32 {
        if self.symmetric {
            (1 << (self.bits - 1)) - 1
        } else {
            (1 << self.bits) - 1
        }
    }

    /// What is subtracted from a stored code before scaling, except the asymmetric zero point:
    /// 2^(b−1) if symmetric (offset binary), 0 otherwise.
    pub fn code_offset(&self) -> i32 {
        if self.symmetric {
            1 << (self.bits - 1)
        } else {
            0
        }
    }

    /// Short name such as `int4-asym-g128-f16` or `int8-sym-channel-f32`.
    pub fn name(&self) -> String {
        let g = match self.granularity {
            Granularity::Tensor => "tensor".to_string(),
            Granularity::Channel => "channel".to_string(),
            Granularity::Group(g) => format!("g{g}"),
        };
        let s = if self.symmetric { "sym" } else { "asym" };
        format!("int{}-{s}-{g}-{}", self.bits, self.scale_type.name())
    }

    /// Check the spec against a `[rows, cols]` shape: supported bits, non-empty, and a group
    /// size that divides `cols`.
    pub fn validate(&self, rows: usize, cols: usize) -> Result<(), FormatError> {
        if !SUPPORTED_BITS.contains(&self.bits) {
            return Err(FormatError::UnsupportedBits {
                format: FORMAT,
                bits: self.bits,
                supported: SUPPORTED_BITS_TEXT,
            });
        }
        if rows == 0 || cols == 0 {
            return Err(FormatError::Empty { format: FORMAT });
        }
        if let Granularity::Group(g) = self.granularity {
            if g == 0 || !cols.is_multiple_of(g) {
                return Err(FormatError::GroupSize {
                    format: FORMAT,
                    rows,
                    cols,
                    group: g,
                });
            }
        }
        Ok(())
    }

    /// Elements per granule within a row (`cols` for Tensor and Channel).
    fn granule_len(&self, cols: usize) -> usize {
        match self.granularity {
            Granularity::Tensor | Granularity::Channel => cols,
            Granularity::Group(g) => g,
        }
    }

    /// Scales (and zero points) per row; 0 for `Tensor`, whose single scale no row owns.
    pub fn scales_per_row(&self, cols: usize) -> usize {
        match self.granularity {
            Granularity::Tensor => 0,
            Granularity::Channel => 1,
            Granularity::Group(g) => cols / g,
        }
    }

    /// Number of scales (and zero points) of a `[rows, cols]` tensor.
    pub fn num_scales(&self, rows: usize, cols: usize) -> usize {
        match self.granularity {
            Granularity::Tensor => 1,
            _ => rows * self.scales_per_row(cols),
        }
    }

    /// Bytes of one packed row: `ceil(cols · bits / 8)` (rows start byte-aligned).
    pub fn row_bytes(&self, cols: usize) -> usize {
        packed_len(cols, self.bits)
    }

    /// Bytes a `[rows, cols]` tensor takes: packed codes + scales + zero points.
    pub fn stored_bytes(&self, rows: usize, cols: usize) -> usize {
        let n = self.num_scales(rows, cols);
        let zeros = if self.symmetric { 0 } else { n };
        rows * self.row_bytes(cols) + n * self.scale_type.size() + zeros
    }

    /// Storage cost in bits per weight of a `[rows, cols]` tensor, from [`IntSpec::stored_bytes`].
    pub fn bits_per_weight(&self, rows: usize, cols: usize) -> f64 {
        (self.stored_bytes(rows, cols) * 8) as f64 / (rows * cols) as f64
    }

    /// Index of the granule holding element `(r, c)` (for Tensor always 0).
    fn granule_of(&self, r: usize, c: usize, cols: usize) -> usize {
        match self.granularity {
            Granularity::Tensor => 0,
            Granularity::Channel => r,
            Granularity::Group(g) => r * (cols / g) + c / g,
        }
    }
}

/// A quantized `[rows, cols]` tensor: packed codes, scales and (asymmetric) zero points.
#[derive(Debug, Clone, PartialEq)]
pub struct IntTensor {
    /// How it was quantized.
    pub spec: IntSpec,
    /// Rows (output features).
    pub rows: usize,
    /// Columns (input features).
    pub cols: usize,
    /// Codes, `rows` byte-aligned rows of [`IntSpec::row_bytes`] bytes (see the module doc).
    pub packed: Vec<u8>,
    /// Scales as little-endian bytes of `spec.scale_type`, one per granule, row-major.
    pub scales: Vec<u8>,
    /// Zero points (asymmetric only), one `u8` per granule, row-major.
    pub zeros: Option<Vec<u8>>,
}

/// Scale and zero point of one granule; `scale` is already rounded to the storage type.
#[derive(Debug, Clone, Copy)]
struct Params {
    /// The stored scale, as float32.
    scale: f32,
    /// The zero point (0 when symmetric).
    zero: u8,
}

/// `v` rounded to `ty` and back (round to nearest even), as it will be stored.
fn round_to(ty: FloatType, v: f32) -> f32 {
    match ty {
        FloatType::F32 => v,
        FloatType::F16 => half::f16::from_f32(v).to_f32(),
        FloatType::BF16 => half::bf16::from_f32(v).to_f32(),
    }
}

/// Running statistics of a granule: absmax, min and max.
#[derive(Debug, Clone, Copy)]
struct Stats {
    /// Largest |w|.
    absmax: f32,
    /// Smallest w.
    min: f32,
    /// Largest w.
    max: f32,
}

impl Stats {
    /// Statistics of no values.
    const EMPTY: Stats = Stats {
        absmax: 0.0,
        min: f32::INFINITY,
        max: f32::NEG_INFINITY,
    };

    /// Statistics of `vals` (meant to be finite; a NaN is skipped).
    fn of(vals: &[f32]) -> Stats {
        let (st, _) = Stats::scan(vals);
        if vals.is_empty() {
            return Stats::EMPTY;
        }
        // The absmax from min and max rather than from the bits, which would take a NaN.
        Stats {
            absmax: st.max.abs().max(st.min.abs()),
            ..st
        }
    }

    /// Statistics of `vals` and whether all of them are finite, in one pass (the quantizer's
    /// NaN / infinity check rides on the pass it makes anyway). The statistics are meaningless
    /// when the flag is false.
    #[inline(always)]
    fn scan(vals: &[f32]) -> (Stats, bool) {
        // 16 independent lanes so the loop vectorises (a single running min/max is a serial
        // dependency chain the compiler may not reorder); min/max are exact in any order. The
        // absmax is taken on the bits: for finite floats `bits & 0x7fff_ffff` orders as |v|,
        // and it reaches 0x7f80_0000 exactly for the infinities and NaNs.
        const LANES: usize = 16;
        let mut lo = [f32::INFINITY; LANES];
        let mut hi = [f32::NEG_INFINITY; LANES];
        let mut abs = [0u32; LANES];
        let mut chunks = vals.chunks_exact(LANES);
        for c in &mut chunks {
            for i in 0..LANES {
                lo[i] = if c[i] < lo[i] { c[i] } else { lo[i] };
                hi[i] = if c[i] > hi[i] { c[i] } else { hi[i] };
                abs[i] = abs[i].max(c[i].to_bits() & 0x7fff_ffff);
            }
        }
        let mut min = fold_lanes(lo, |a, b| if b < a { b } else { a });
        let mut max = fold_lanes(hi, |a, b| if b > a { b } else { a });
        let mut abs = fold_lanes(abs, u32::max);
        // (Not into the lanes: indexing them by a variable would keep them out of registers.)
        for &v in chunks.remainder() {
            min = if v < min { v } else { min };
            max = if v > max { v } else { max };
            abs = abs.max(v.to_bits() & 0x7fff_ffff);
        }
        let st = Stats {
            absmax: f32::from_bits(abs),
            min,
            max,
        };
        (st, abs < 0x7f80_0000)
    }

    /// Statistics of the union of two sets.
    fn merge(self, o: Stats) -> Stats {
        Stats {
            absmax: self.absmax.max(o.absmax),
            min: self.min.min(o.min),
            max: self.max.max(o.max),
        }
    }
}

/// `lanes` folded to one value with `f`, pairwise (so that each step vectorises).
#[inline(always)]
fn fold_lanes<T: Copy>(mut lanes: [T; 16], f: impl Fn(T, T) -> T) -> T {
    for n in [8, 4, 2, 1] {
        for i in 0..n {
            lanes[i] = f(lanes[i], lanes[i + n]);
        }
    }
    lanes[0]
}

impl IntSpec {
    /// The scale (rounded to [`IntSpec::scale_type`]) and zero point (0 if symmetric) that
    /// [`quantize`] gives a granule holding `values` (finite); errors if the scale overflows.
    pub fn granule_params(&self, values: &[f32]) -> Result<(f32, u8), FormatError> {
        let p = self.params(Stats::of(values))?;
        Ok((p.scale, p.zero))
    }

    /// The code of `w` in a granule with this `scale` and `zero` (ignored if symmetric), as
    /// [`quantize`] computes it; a zero scale gives the code of 0, a NaN quotient `w / scale`
    /// code 0 (what the formula's float-to-integer cast gives).
    pub fn quantize_value(&self, w: f32, scale: f32, zero: u8) -> u8 {
        if scale != 0.0 && (w / scale).is_nan() {
            // quantize_granule's integer rounding assumes a number.
            return 0;
        }
        let mut c = [0u8];
        let zero = if self.symmetric { 0 } else { zero };
        self.quantize_granule(Params { scale, zero }, &[w], &mut c);
        c[0]
    }

    /// The value of `code` in a granule with this `scale` and `zero` (ignored if symmetric).
    pub fn dequantize_value(&self, code: u8, scale: f32, zero: u8) -> f32 {
        let z = if self.symmetric {
            self.code_offset()
        } else {
            zero as i32
        };
        (code as i32 - z) as f32 * scale
    }

    /// The scale and zero point of a granule with statistics `st` (scale rounded to storage).
    #[inline(always)]
    fn params(&self, st: Stats) -> Result<Params, FormatError> {
        let qmax = self.qmax() as f32;
        // max(max, 0) and min(min, 0), written as selects so that a zero is always +0: which
        // zero `f32::max` returns is unspecified, and −0 − (+0) would store a −0 scale.
        let hi = if st.max > 0.0 { st.max } else { 0.0 };
        let lo = if st.min < 0.0 { st.min } else { 0.0 };
        let raw = if self.symmetric {
            st.absmax / qmax
        } else {
            (hi - lo) / qmax
        };
        let scale = round_to(self.scale_type, raw);
        if !scale.is_finite() {
            return Err(FormatError::ScaleOverflow {
                format: FORMAT,
                scale: raw,
                scale_type: self.scale_type.name(),
            });
        }
        let zero = if self.symmetric || scale == 0.0 {
            0
        } else {
            // rne(−min/s) clamped to [0, qmax]; the quotient is a number (finite min, scale ≠ 0).
            round_even_i32(-lo / scale).clamp(0, self.qmax()) as u8
        };
        Ok(Params { scale, zero })
    }

    /// Quantize one granule's values into codes with `p` (see the module doc for the formulas).
    ///
    /// `w / p.scale` must not be NaN (finite weights and scale).
    #[inline(always)]
    fn quantize_granule(&self, p: Params, w: &[f32], codes: &mut [u8]) {
        if p.scale == 0.0 {
            // absmax (range) 0, or a scale that underflowed its storage type: all zeros.
            codes.fill((self.code_offset() + p.zero as i32) as u8);
            return;
        }
        // Both formulas as c = clamp(rne(w/s) + add, lo, hi), in integers (exact: all small):
        // symmetric clamp(q, −qmax, qmax) + 2^(b−1) is clamp(q + 2^(b−1), 1, 2^b − 1),
        // asymmetric clamp(q + z, 0, qmax) as it stands.
        let qmax = self.qmax();
        let (add, lo, hi) = if self.symmetric {
            let off = self.code_offset();
            (off, off - qmax, off + qmax)
        } else {
            (p.zero as i32, 0, qmax)
        };
        // Division, not multiplication by the reciprocal: that would round differently.
        for (c, &v) in codes.iter_mut().zip(w) {
            *c = (round_even_i32(v / p.scale) + add).max(lo).min(hi) as u8;
        }
    }
}

/// `x` rounded half to even (as `f32::round_ties_even`) as an integer, for the quantizer's hot
/// loop; |x| is first clamped to 4096, far beyond any code (|code| ≤ 255), which leaves every
/// code the same.
///
/// Hand-written because the baseline x86-64 target has no rounding instruction, so
/// `round_ties_even` becomes a library call per element (measured 2× slower for int4 g64 on
/// SmolLM2), and a float-to-integer cast must saturate and map NaN to 0, which costs several
/// instructions a lane. Adding 1.5·2²³ rounds in the FPU's default mode (ties to even) and
/// leaves the rounded value in the low mantissa bits — the sum lies in [2²³, 2²⁴), where the
/// float spacing is 1 — so subtracting the bits of 1.5·2²³ reads it out; all of it vectorises.
/// `x` must not be NaN.
#[inline(always)]
fn round_even_i32(x: f32) -> i32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2^23
    (x.clamp(-4096.0, 4096.0) + MAGIC).to_bits() as i32 - MAGIC.to_bits() as i32
}

/// Quantize the row-major `[rows, cols]` matrix `w` with `spec`.
///
/// Errors: an invalid spec or shape ([`IntSpec::validate`], [`FormatError::ShapeMismatch`]),
/// a NaN or infinity in `w` ([`FormatError::NonFinite`], naming the first one), or a scale that
/// overflows its storage type. Large tensors are quantized row-parallel with rayon; the result
/// does not depend on the thread count, nor on the instruction set the CPU offers.
pub fn quantize(
    w: &[f32],
    rows: usize,
    cols: usize,
    spec: IntSpec,
) -> Result<IntTensor, FormatError> {
    quantize_impl(w, rows, cols, spec, w.len() >= PAR_MIN_ELEMENTS, true)
}

/// Weights per parallel work item, at least (rounded up to whole rows).
const PAR_JOB_ELEMENTS: usize = 1 << 14;

/// A run of whole rows to quantize, starting at row `row0`.
struct Job<'a> {
    /// Index of the first row.
    row0: usize,
    /// The rows' weights.
    w: &'a [f32],
    /// The rows' packed codes.
    packed: &'a mut [u8],
    /// The rows' scales, [`IntSpec::scales_per_row`] (at least one) per row.
    scales: &'a mut [f32],
    /// The rows' zero points, laid out as `scales`.
    zeros: &'a mut [u8],
}

/// [`quantize`] with the choice of parallel or serial execution, and of the AVX2 build of the
/// kernel (where the CPU has it) or the baseline one.
fn quantize_impl(
    w: &[f32],
    rows: usize,
    cols: usize,
    spec: IntSpec,
    parallel: bool,
    simd: bool,
) -> Result<IntTensor, FormatError> {
    spec.validate(rows, cols)?;
    if w.len() != rows * cols {
        return Err(FormatError::ShapeMismatch {
            format: FORMAT,
            rows,
            cols,
            expected: rows * cols,
            actual: w.len(),
        });
    }

    // Tensor granularity: one set of statistics over everything, computed up front.
    let global = if spec.granularity == Granularity::Tensor {
        let (st, finite) = if parallel {
            w.par_chunks(cols)
                .map(Stats::scan)
                .reduce(|| (Stats::EMPTY, true), |a, b| (a.0.merge(b.0), a.1 && b.1))
        } else {
            Stats::scan(w)
        };
        if !finite {
            check_finite(w, cols, FORMAT)?;
        }
        Some(spec.params(st)?)
    } else {
        None
    };

    // Tensor granularity has no per-row scales; give each row a dummy slot so the chunked
    // iteration below stays uniform (replaced by the single global scale at the end).
    let per = spec.scales_per_row(cols).max(1);
    let row_bytes = spec.row_bytes(cols);
    let mut packed = vec![0u8; rows * row_bytes];
    let mut scales = vec![0f32; rows * per];
    let mut zeros = vec![0u8; rows * per];
    let job_rows = PAR_JOB_ELEMENTS.div_ceil(cols);
    let run = |(i, ((w, packed), (scales, zeros))): (usize, _)| {
        let job = Job {
            row0: i * job_rows,
            w,
            packed,
            scales,
            zeros,
        };
        spec.quantize_job(cols, global, job, simd)
    };
    let res = if parallel {
        w.par_chunks(job_rows * cols)
            .zip(packed.par_chunks_mut(job_rows * row_bytes))
            .zip(
                scales
                    .par_chunks_mut(job_rows * per)
                    .zip(zeros.par_chunks_mut(job_rows * per)),
            )
            .enumerate()
            .try_for_each(run)
    } else {
        w.chunks(job_rows * cols)
            .zip(packed.chunks_mut(job_rows * row_bytes))
            .zip(
                scales
                    .chunks_mut(job_rows * per)
                    .zip(zeros.chunks_mut(job_rows * per)),
            )
            .enumerate()
            .try_for_each(run)
    };
    if let Err(e) = res {
        // The first NaN or infinity of the tensor is the error, whichever job stopped first
        // and whatever it found.
        check_finite(w, cols, FORMAT)?;
        return Err(e);
    }
    if let Some(p) = global {
        scales = vec![p.scale];
        zeros = vec![p.zero];
    }
    Ok(IntTensor {
        spec,
        rows,
        cols,
        packed,
        scales: encode_scales(spec.scale_type, &scales),
        zeros: if spec.symmetric { None } else { Some(zeros) },
    })
}

/// `scales` as little-endian bytes of `ty`, as [`float::encode`] writes them, with one bulk
/// conversion (vector instructions where the CPU has them) instead of one call per value: a
/// million scales a model, and per-value calls cost a tenth of the quantizer's time. The
/// values are already representable in `ty`, so any conversion gives the same bits.
fn encode_scales(ty: FloatType, scales: &[f32]) -> Vec<u8> {
    use half::slice::HalfFloatSliceExt;
    let bits: Vec<u16> = match ty {
        FloatType::F32 => return float::encode(ty, scales),
        FloatType::F16 => {
            let mut h = vec![half::f16::ZERO; scales.len()];
            h.convert_from_f32_slice(scales);
            h.reinterpret_cast().to_vec()
        }
        FloatType::BF16 => {
            let mut h = vec![half::bf16::ZERO; scales.len()];
            h.convert_from_f32_slice(scales);
            h.reinterpret_cast().to_vec()
        }
    };
    let mut out = vec![0u8; 2 * bits.len()];
    for (o, b) in out.chunks_exact_mut(2).zip(&bits) {
        o.copy_from_slice(&b.to_le_bytes());
    }
    out
}

impl IntSpec {
    /// Quantize the rows of `job` (of `cols` values) with the AVX2 build of the kernel if
    /// `simd` and the CPU has AVX2, else the baseline build; `global` is the parameters of the
    /// single granule of a Tensor-granularity spec.
    fn quantize_job(
        &self,
        cols: usize,
        global: Option<Params>,
        job: Job,
        simd: bool,
    ) -> Result<(), FormatError> {
        #[cfg(target_arch = "x86_64")]
        if simd && std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { self.quantize_job_avx2(cols, global, job) };
        }
        #[cfg(not(target_arch = "x86_64"))]
        #[cfg(not(target_arch = "x86_64"))]
        let _ = simd;
        self.quantize_job_kernel(cols, global, job)
    }

    /// [`IntSpec::quantize_job_kernel`] compiled for AVX2, twice the vector width of the
    /// baseline x86-64 target (SSE2). The operations are the same IEEE ones (no FMA
    /// contraction), so the codes are too.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn quantize_job_avx2(
        &self,
        cols: usize,
        global: Option<Params>,
        job: Job,
    ) -> Result<(), FormatError> {
        self.quantize_job_kernel(cols, global, job)
    }

    /// Quantize the rows of `job`: per granule, statistics (and the finiteness check), scale
    /// and zero point, codes; per row, packing. Inlined into each instruction-set build.
    #[inline(always)]
    fn quantize_job_kernel(
        &self,
        cols: usize,
        global: Option<Params>,
        job: Job,
    ) -> Result<(), FormatError> {
        let per = self.scales_per_row(cols).max(1);
        let rows = job
            .w
            .chunks_exact(cols)
            .zip(job.packed.chunks_exact_mut(self.row_bytes(cols)))
            .zip(job.scales.chunks_exact_mut(per))
            .zip(job.zeros.chunks_exact_mut(per));
        if self.bits == 8 {
            // One code per byte: written in place.
            for (r, (((wr, pr), sr), zr)) in rows.enumerate() {
                self.quantize_row(job.row0 + r, global, wr, pr, sr, zr)?;
            }
        } else {
            let mut codes = vec![0u8; cols];
            for (r, (((wr, pr), sr), zr)) in rows.enumerate() {
                self.quantize_row(job.row0 + r, global, wr, &mut codes, sr, zr)?;
                pack_into(&codes, self.bits, pr);
            }
        }
        Ok(())
    }

    /// Codes of row `row` (`wr`) into `codes`, its granules' scales and zero points into `sr`
    /// and `zr` (untouched when `global` gives the Tensor granularity's).
    #[inline(always)]
    fn quantize_row(
        &self,
        row: usize,
        global: Option<Params>,
        wr: &[f32],
        codes: &mut [u8],
        sr: &mut [f32],
        zr: &mut [u8],
    ) -> Result<(), FormatError> {
        if let Some(p) = global {
            self.quantize_granule(p, wr, codes);
            return Ok(());
        }
        let glen = self.granule_len(wr.len());
        // Two passes over the row's granules, parameters then codes, rather than one granule
        // at a time: a granule's parameters are a chain of dependent scalar operations
        // (divisions, roundings) that the codes wait for; side by side, the chains overlap.
        for ((wg, s), z) in wr.chunks_exact(glen).zip(sr.iter_mut()).zip(zr.iter_mut()) {
            let (st, finite) = Stats::scan(wg);
            if !finite {
                let col = wr.iter().position(|v| !v.is_finite()).unwrap_or(0);
                return Err(FormatError::NonFinite {
                    format: FORMAT,
                    index: row * wr.len() + col,
                    row,
                    col,
                    value: wr[col],
                });
            }
            let p = self.params(st)?;
            (*s, *z) = (p.scale, p.zero);
        }
        let granules = wr.chunks_exact(glen).zip(codes.chunks_exact_mut(glen));
        for ((wg, cg), (&scale, &zero)) in granules.zip(sr.iter().zip(zr.iter())) {
            self.quantize_granule(Params { scale, zero }, wg, cg);
        }
        Ok(())
    }
}

/// Error naming the first NaN or infinity of the row-major `w` with `cols` columns, if any.
pub(crate) fn check_finite(
    w: &[f32],
    cols: usize,
    format: &'static str,
) -> Result<(), FormatError> {
    // Branch-free scan per chunk (vectorises); locate the culprit only when there is one.
    let bad_chunk = w.chunks(256).position(|c| {
        c.iter().fold(false, |acc, v| {
            acc | (v.to_bits() & 0x7f80_0000 == 0x7f80_0000)
        })
    });
    let first = bad_chunk.and_then(|k| {
        w[k * 256..]
            .iter()
            .position(|v| !v.is_finite())
            .map(|i| k * 256 + i)
    });
    match first {
        None => Ok(()),
        Some(index) => Err(FormatError::NonFinite {
            format,
            index,
            row: index / cols,
            col: index % cols,
            value: w[index],
        }),
    }
}

impl IntTensor {
    /// Check that the parts fit together: valid spec, lengths, zero points present iff
    /// asymmetric and ≤ qmax, finite scales. Run it on parts read from a file before
    /// dequantizing (the accessors below panic on inconsistent parts).
    pub fn check(&self) -> Result<(), FormatError> {
        let spec = &self.spec;
        spec.validate(self.rows, self.cols)?;
        let bad = |what: String| FormatError::Inconsistent {
            format: FORMAT,
            what,
        };
        let packed = self.rows * spec.row_bytes(self.cols);
        if self.packed.len() != packed {
            return Err(bad(format!(
                "{} packed bytes, expected {packed}",
                self.packed.len()
            )));
        }
        let n = spec.num_scales(self.rows, self.cols);
        if self.scales.len() != n * spec.scale_type.size() {
            return Err(bad(format!(
                "{} scale bytes, expected {}",
                self.scales.len(),
                n * spec.scale_type.size()
            )));
        }
        match (&self.zeros, spec.symmetric) {
            (None, true) => {}
            (Some(z), false) => {
                if z.len() != n {
                    return Err(bad(format!("{} zero points, expected {n}", z.len())));
                }
                if let Some(&z) = z.iter().find(|&&z| z as i32 > spec.qmax()) {
                    return Err(bad(format!("zero point {z} > qmax {}", spec.qmax())));
                }
            }
            (Some(_), true) => return Err(bad("zero points on a symmetric tensor".into())),
            (None, false) => return Err(bad("no zero points on an asymmetric tensor".into())),
        }
        if let Some(s) = self.scales_f32().iter().find(|s| !s.is_finite()) {
            return Err(bad(format!("non-finite scale {s}")));
        }
        Ok(())
    }

    /// Bytes of one packed row.
    pub fn row_bytes(&self) -> usize {
        self.spec.row_bytes(self.cols)
    }

    /// The scales decoded to float32, one per granule, row-major.
    pub fn scales_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.scales.len() / self.spec.scale_type.size()];
        float::decode(self.spec.scale_type, &self.scales, &mut out);
        out
    }

    /// All codes, unpacked, row-major (`rows · cols` values below 2^bits).
    pub fn codes(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.rows * self.cols];
        for (o, p) in out
            .chunks_mut(self.cols)
            .zip(self.packed.chunks(self.row_bytes()))
        {
            unpack_into(p, self.spec.bits, o);
        }
        out
    }

    /// Dequantize row `r` into `out` (`out.len() == cols`).
    ///
    /// Panics if `r` is out of range, `out` has the wrong length, or the parts are inconsistent.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        assert!(r < self.rows, "dequantize_row: row {r} of {}", self.rows);
        assert_eq!(out.len(), self.cols, "dequantize_row: output length");
        let spec = &self.spec;
        let rb = self.row_bytes();
        let mut codes = vec![0u8; self.cols];
        unpack_into(&self.packed[r * rb..(r + 1) * rb], spec.bits, &mut codes);
        // This row's granules: [first, first + count).
        let (first, count) = match spec.granularity {
            Granularity::Tensor => (0, 1),
            _ => {
                let k = spec.scales_per_row(self.cols);
                (r * k, k)
            }
        };
        let sz = spec.scale_type.size();
        let mut scales = vec![0f32; count];
        float::decode(
            spec.scale_type,
            &self.scales[first * sz..(first + count) * sz],
            &mut scales,
        );
        let glen = spec.granule_len(self.cols);
        for (j, (o, c)) in out.chunks_mut(glen).zip(codes.chunks(glen)).enumerate() {
            let s = scales[j];
            let z = match &self.zeros {
                Some(z) => z[first + j] as i32,
                None => spec.code_offset(),
            };
            for (o, &c) in o.iter_mut().zip(c) {
                *o = (c as i32 - z) as f32 * s;
            }
        }
    }

    /// Dequantize the whole tensor into `out` (`rows · cols` values, row-major), row-parallel
    /// for large tensors.
    pub fn dequantize_into(&self, out: &mut [f32]) {
        assert_eq!(
            out.len(),
            self.rows * self.cols,
            "dequantize: output length"
        );
        crate::fill_rows(out, self.cols, |r, o| self.dequantize_row(r, o));
    }

    /// Dequantize the whole tensor (row-major float32).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        self.dequantize_into(&mut out);
        out
    }

    /// The scale that element `(r, c)` uses (as float32).
    pub fn scale_at(&self, r: usize, c: usize) -> f32 {
        let i = self.spec.granule_of(r, c, self.cols);
        let sz = self.spec.scale_type.size();
        let mut s = [0f32];
        float::decode(
            self.spec.scale_type,
            &self.scales[i * sz..(i + 1) * sz],
            &mut s,
        );
        s[0]
    }

    /// Bytes stored: packed codes + scales + zero points.
    pub fn stored_bytes(&self) -> usize {
        self.packed.len() + self.scales.len() + self.zeros.as_ref().map_or(0, Vec::len)
    }

    /// Storage cost in bits per weight, from [`IntTensor::stored_bytes`].
    pub fn bits_per_weight(&self) -> f64 {
        (self.stored_bytes() * 8) as f64 / (self.rows * self.cols) as f64
    }
}

/// Bytes that `n` codes of `bits` bits take in a packed stream: `ceil(n · bits / 8)`.
pub fn packed_len(n: usize, bits: u8) -> usize {
    (n * bits as usize).div_ceil(8)
}

/// Pack `codes` of `bits` bits each into a little-endian, LSB-first bit stream.
///
/// Code `i` occupies stream bits `[i·bits, (i+1)·bits)`, stream bit `k` being bit `k % 8` of
/// byte `k / 8`; the spare high bits of the last byte are 0. Returns
/// [`packed_len`]`(codes.len(), bits)` bytes. Panics if `bits` is not in 1..=8 or a code does
/// not fit in `bits` bits.
pub fn pack(codes: &[u8], bits: u8) -> Vec<u8> {
    assert!((1..=8).contains(&bits), "pack: {bits} bits");
    // An OR over all codes first (it vectorises); the culprit is looked for only if there is one.
    if bits < 8 && codes.iter().fold(0, |a, &c| a | c) >> bits != 0 {
        let c = codes.iter().find(|&&c| c >> bits != 0).unwrap_or(&0);
        panic!("pack: code {c} does not fit in {bits} bits");
    }
    let mut out = vec![0u8; packed_len(codes.len(), bits)];
    pack_into(codes, bits, &mut out);
    out
}

/// Unpack `n` codes of `bits` bits from the stream [`pack`] writes (extra bytes are ignored).
///
/// Errors if `bits` is not in 1..=8 or `bytes` is shorter than [`packed_len`]`(n, bits)`.
pub fn unpack(bytes: &[u8], bits: u8, n: usize) -> Result<Vec<u8>, FormatError> {
    if !(1..=8).contains(&bits) {
        return Err(FormatError::UnsupportedBits {
            format: FORMAT,
            bits,
            supported: "1 to 8",
        });
    }
    let need = packed_len(n, bits);
    if bytes.len() < need {
        return Err(FormatError::WrongByteCount {
            format: FORMAT,
            elements: n,
            expected: need,
            actual: bytes.len(),
        });
    }
    let mut out = vec![0u8; n];
    unpack_into(&bytes[..need], bits, &mut out);
    Ok(out)
}

/// Pack valid `codes` into exactly `packed_len(codes.len(), bits)` bytes of `out`.
#[inline(always)]
fn pack_into(codes: &[u8], bits: u8, out: &mut [u8]) {
    debug_assert_eq!(out.len(), packed_len(codes.len(), bits));
    match bits {
        8 => out.copy_from_slice(codes),
        4 => {
            // Whole pairs first (`chunks_exact` vectorises), then an odd last code.
            let mut pairs = codes.chunks_exact(2);
            for (o, c) in out.iter_mut().zip(&mut pairs) {
                *o = c[0] | c[1] << 4;
            }
            if let [last] = pairs.remainder() {
                out[codes.len() / 2] = *last;
            }
        }
        _ => {
            let (mut acc, mut nbits, mut o) = (0u32, 0u32, 0usize);
            for &c in codes {
                acc |= (c as u32) << nbits;
                nbits += bits as u32;
                while nbits >= 8 {
                    out[o] = acc as u8;
                    o += 1;
                    acc >>= 8;
                    nbits -= 8;
                }
            }
            if nbits > 0 {
                out[o] = acc as u8;
            }
        }
    }
}

/// Unpack `out.len()` codes of `bits` bits from `bytes` (at least `packed_len` bytes).
fn unpack_into(bytes: &[u8], bits: u8, out: &mut [u8]) {
    match bits {
        8 => out.copy_from_slice(&bytes[..out.len()]),
        4 => {
            // Whole pairs first (`chunks_exact` vectorises), then an odd last code.
            let n = out.len();
            let mut pairs = out.chunks_exact_mut(2);
            for (o, &b) in (&mut pairs).zip(bytes) {
                o[0] = b & 0x0F;
                o[1] = b >> 4;
            }
            if let [last] = pairs.into_remainder() {
                *last = bytes[n / 2] & 0x0F;
            }
        }
        _ => {
            let mask = (1u32 << bits) - 1;
            let (mut acc, mut nbits, mut i) = (0u32, 0u32, 0usize);
            for o in out.iter_mut() {
                while nbits < bits as u32 {
                    acc |= (bytes[i] as u32) << nbits;
                    i += 1;
                    nbits += 8;
                }
                *o = (acc & mask) as u8;
                acc >>= bits;
                nbits -= bits as u32;
            }
        }
    }
}

#[cfg(test)]
mod round_tests {
    #[test]
    fn round_even_i32_matches_round_ties_even() {
        let mut x = -300.0f32;
        while x < 300.0 {
            assert_eq!(super::round_even_i32(x) as f32, x.round_ties_even(), "{x}");
            x += 0.125 / 3.0;
        }
        for t in [
            -2.5f32, -1.5, -0.5, -0.0, 0.5, 1.5, 2.5, 254.5, 255.5, 4095.5,
        ] {
            assert_eq!(super::round_even_i32(t) as f32, t.round_ties_even(), "{t}");
        }
        assert_eq!(super::round_even_i32(1e9), 4096);
        assert_eq!(super::round_even_i32(f32::NEG_INFINITY), -4096);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in about [-2, 2] with a few larger ones (xorshift64*).
    fn noise(n: usize, mut s: u64) -> Vec<f32> {
        (0..n)
            .map(|i| {
                s ^= s >> 12;
                s ^= s << 25;
                s ^= s >> 27;
                let u = (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32;
                let v = 4.0 * u - 2.0;
                if i % 101 == 0 {
                    v * 6.0
                } else {
                    v
                }
            })
            .collect()
    }

    #[test]
    fn pack_layout_is_lsb_first() {
        // 3-bit codes 1..=7,0: stream bits ...; byte 0 = 001 | 010<<3 | (011 & 0b11)<<6.
        let codes = [1u8, 2, 3, 4, 5, 6, 7, 0];
        let p = pack(&codes, 3);
        assert_eq!(p.len(), 3);
        let stream: u32 = codes
            .iter()
            .enumerate()
            .map(|(i, &c)| (c as u32) << (3 * i))
            .sum();
        assert_eq!(p, stream.to_le_bytes()[..3]);
        assert_eq!(pack(&[0x1, 0xF, 0x3], 4), vec![0xF1, 0x03]);
        assert_eq!(unpack(&[0xF1, 0x03], 4, 3).unwrap(), [0x1, 0xF, 0x3]);
        assert_eq!(pack(&[1, 2, 3, 0, 3], 2), vec![0b00_11_10_01, 0b11]);
        assert_eq!(unpack(&p, 3, 8).unwrap(), codes);
    }

    #[test]
    #[should_panic(expected = "pack: code 16 does not fit in 4 bits")]
    fn pack_refuses_wide_codes() {
        pack(&[1, 2, 16, 3], 4);
    }

    #[test]
    fn hand_computed_symmetric_and_asymmetric() {
        // Symmetric int8, absmax 1.27 → scale 0.01 (in f32), codes = q + 128.
        let w = [1.27f32, -0.635, 0.0, 0.005];
        let t = quantize(
            &w,
            1,
            4,
            IntSpec::symmetric(8, Granularity::Channel, FloatType::F32),
        )
        .unwrap();
        let s = 1.27f32 / 127.0;
        assert_eq!(t.scales_f32(), vec![s]);
        let q = [127, (-0.635f32 / s).round_ties_even() as i32, 0, 0];
        let codes: Vec<u8> = q.iter().map(|q| (q + 128) as u8).collect();
        assert_eq!(t.codes(), codes);
        // Asymmetric int4 on [-1, 2]: scale 3/15 = 0.2, zero 5, 2.0 → 15, -1.0 → 0.
        let w = [-1.0f32, 2.0, 0.0, 0.3];
        let t = quantize(
            &w,
            1,
            4,
            IntSpec::asymmetric(4, Granularity::Tensor, FloatType::F32),
        )
        .unwrap();
        let s = 3.0f32 / 15.0;
        assert_eq!(t.scales_f32(), vec![s]);
        assert_eq!(t.zeros, Some(vec![5]));
        let c3 = ((0.3f32 / s).round_ties_even() + 5.0) as u8;
        assert_eq!(t.codes(), vec![0, 15, 5, c3]);
        assert_eq!(t.dequantize()[2], 0.0);
        // All-positive granule: min clamps to 0, zero point 0.
        let t = quantize(
            &[0.5, 2.0],
            1,
            2,
            IntSpec::asymmetric(8, Granularity::Tensor, FloatType::F32),
        )
        .unwrap();
        assert_eq!(t.zeros, Some(vec![0]));
        let c0 = (0.5f32 / (2.0f32 / 255.0)).round_ties_even() as u8;
        assert_eq!(t.codes(), vec![c0, 255]);
    }

    #[test]
    fn zero_granules_give_zeros_not_nan() {
        for sym in [true, false] {
            let spec = IntSpec {
                bits: 4,
                symmetric: sym,
                granularity: Granularity::Group(4),
                scale_type: FloatType::F16,
            };
            let w = [0.0f32, 0.0, 0.0, 0.0, 1.0, -1.0, 0.5, 0.25];
            let t = quantize(&w, 1, 8, spec).unwrap();
            let d = t.dequantize();
            assert!(d.iter().all(|v| v.is_finite()));
            assert_eq!(&d[..4], &[0.0; 4]);
            assert_eq!(t.scales_f32()[0], 0.0);
        }
        // A scale below f16's smallest subnormal underflows to 0: zeros, no NaN.
        let t = quantize(
            &[1e-9f32, -1e-9],
            1,
            2,
            IntSpec::symmetric(8, Granularity::Tensor, FloatType::F16),
        )
        .unwrap();
        assert_eq!(t.dequantize(), vec![0.0, 0.0]);
    }

    #[test]
    fn scale_overflow_is_refused() {
        let spec = IntSpec::symmetric(2, Granularity::Tensor, FloatType::F16);
        match quantize(&[1.0e6, 0.0], 1, 2, spec) {
            Err(FormatError::ScaleOverflow { scale_type, .. }) => assert_eq!(scale_type, "f16"),
            other => panic!("{other:?}"),
        }
        let spec = IntSpec::asymmetric(8, Granularity::Tensor, FloatType::F32);
        assert!(matches!(
            quantize(&[f32::MAX, -f32::MAX], 1, 2, spec),
            Err(FormatError::ScaleOverflow { .. })
        ));
    }

    #[test]
    fn parallel_matches_serial() {
        let (rows, cols) = (96, 768);
        let w = noise(rows * cols, 7);
        for g in [
            Granularity::Tensor,
            Granularity::Channel,
            Granularity::Group(128),
        ] {
            for sym in [true, false] {
                let spec = IntSpec {
                    bits: 3,
                    symmetric: sym,
                    granularity: g,
                    scale_type: FloatType::BF16,
                };
                let a = quantize_impl(&w, rows, cols, spec, true, true).unwrap();
                let b = quantize_impl(&w, rows, cols, spec, false, true).unwrap();
                assert_eq!(a, b, "{}", spec.name());
                let mut serial = vec![0f32; rows * cols];
                for (r, o) in serial.chunks_mut(cols).enumerate() {
                    a.dequantize_row(r, o);
                }
                assert_eq!(a.dequantize(), serial);
            }
        }
    }

    #[test]
    fn simd_build_matches_baseline() {
        // Odd column counts and granule lengths exercise the vector loops' tails; zeros of
        // both signs, a subnormal and a constant row the corner cases of the statistics.
        let (rows, cols) = (40, 105);
        let mut w = noise(rows * cols, 11);
        w[..cols].fill(-0.0);
        w[cols..2 * cols]
            .iter_mut()
            .step_by(2)
            .for_each(|v| *v = 0.0);
        w[2 * cols + 3] = 1e-40;
        w[3 * cols..4 * cols].fill(0.75);
        for bits in SUPPORTED_BITS {
            for g in [
                Granularity::Tensor,
                Granularity::Channel,
                Granularity::Group(15),
                Granularity::Group(35),
            ] {
                for sym in [true, false] {
                    for scale_type in [FloatType::F32, FloatType::F16, FloatType::BF16] {
                        let spec = IntSpec {
                            bits,
                            symmetric: sym,
                            granularity: g,
                            scale_type,
                        };
                        let a = quantize_impl(&w, rows, cols, spec, false, true).unwrap();
                        let b = quantize_impl(&w, rows, cols, spec, false, false).unwrap();
                        assert_eq!(a, b, "{}", spec.name());
                        // Rows packed by the generic bit-stream writer give the same bytes.
                        let rb = a.row_bytes();
                        for (c, p) in a.codes().chunks(cols).zip(a.packed.chunks(rb)) {
                            assert_eq!(pack(c, bits), p, "{}", spec.name());
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn non_finite_is_named_first_one() {
        let (rows, cols) = (64, 1024);
        let mut w = noise(rows * cols, 5);
        w[40 * cols + 7] = f32::INFINITY;
        w[3 * cols + 900] = f32::NAN;
        for g in [
            Granularity::Tensor,
            Granularity::Channel,
            Granularity::Group(64),
        ] {
            for parallel in [true, false] {
                let spec = IntSpec::asymmetric(4, g, FloatType::F16);
                match quantize_impl(&w, rows, cols, spec, parallel, true) {
                    Err(FormatError::NonFinite {
                        index, row, col, ..
                    }) => assert_eq!((index, row, col), (3 * cols + 900, 3, 900)),
                    other => panic!("{other:?}"),
                }
            }
        }
    }

    #[test]
    fn check_catches_inconsistent_parts() {
        let spec = IntSpec::asymmetric(4, Granularity::Group(4), FloatType::F16);
        let t = quantize(&noise(16, 3), 2, 8, spec).unwrap();
        assert!(t.check().is_ok());
        let mut u = t.clone();
        u.packed.pop();
        assert!(matches!(u.check(), Err(FormatError::Inconsistent { .. })));
        let mut u = t.clone();
        u.zeros = None;
        assert!(matches!(u.check(), Err(FormatError::Inconsistent { .. })));
        let mut u = t.clone();
        u.zeros.as_mut().unwrap()[0] = 16;
        assert!(matches!(u.check(), Err(FormatError::Inconsistent { .. })));
        let mut u = t;
        u.scales[0..2].copy_from_slice(&half::f16::NAN.to_le_bytes());
        assert!(matches!(u.check(), Err(FormatError::Inconsistent { .. })));
    }
}
