//! The layer Hessian `H = 2/N · Σ x xᵀ` of a linear layer's inputs, the factorisations GPTQ and
//! SparseGPT need (dampening, the Cholesky factor, the upper Cholesky factor of `H⁻¹`), and the
//! error compensation both apply through it.
//!
//! This is the machinery GPTQ and SparseGPT share (design.md). The heavy products go through
//! the `gemm` crate; the Cholesky and triangular inverse are blocked so that their bulk is
//! gemm too (no well-kept Rust crate in this workspace's stack offers a Cholesky).

use rayon::prelude::*;

use crate::error::MethodError;

/// Accumulates `Σ x xᵀ` over the rows `x` of a linear layer's inputs.
#[derive(Debug, Clone)]
pub struct Hessian {
    /// Input features.
    pub n: usize,
    /// Rows (tokens) accumulated.
    pub tokens: usize,
    acc: Acc,
}

/// The accumulator, in the precision asked for.
#[derive(Debug, Clone)]
enum Acc {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

/// Block size of the blocked Cholesky and triangular inverse.
const NB: usize = 64;

impl Hessian {
    /// An empty accumulator for `n` input features, summing in f64 if `f64` else f32.
    pub fn new(n: usize, f64: bool) -> Self {
        Hessian {
            n,
            tokens: 0,
            acc: if f64 {
                Acc::F64(vec![0.0; n * n])
            } else {
                Acc::F32(vec![0.0; n * n])
            },
        }
    }

    /// Add the rows of `x` (row-major `[t, n]`).
    pub fn add(&mut self, x: &[f32]) {
        let n = self.n;
        assert_eq!(x.len() % n, 0, "Hessian::add: rows of {n}");
        let t = x.len() / n;
        self.tokens += t;
        match &mut self.acc {
            Acc::F32(h) => add_xtx(h, x, n, t, 1.0f32),
            Acc::F64(h) => {
                let x: Vec<f64> = x.iter().map(|&v| v as f64).collect();
                add_xtx(h, &x, n, t, 1.0f64)
            }
        }
    }

    /// `H = 2/N · Σ x xᵀ` as f64, row-major `[n, n]`.
    pub fn matrix(&self) -> Vec<f64> {
        let s = 2.0 / self.tokens.max(1) as f64;
        match &self.acc {
            Acc::F32(h) => h.iter().map(|&v| v as f64 * s).collect(),
            Acc::F64(h) => h.iter().map(|&v| v * s).collect(),
        }
    }

    /// Per-feature mean of x² (the diagonal of `Σ x xᵀ / N`).
    pub fn mean_squares(&self) -> Vec<f32> {
        let s = 1.0 / self.tokens.max(1) as f64;
        let n = self.n;
        (0..n)
            .map(|i| match &self.acc {
                Acc::F32(h) => (h[i * n + i] as f64 * s) as f32,
                Acc::F64(h) => (h[i * n + i] * s) as f32,
            })
            .collect()
    }
}

/// Add `Σ_t x_tj²` over the rows of `x` (row-major `[t, n]`) to `acc`, sized to `n` on first
/// use — the Hessian's diagonal alone (Wanda's input norms, llama.cpp's importance matrix);
/// returns the rows added.
pub fn add_squares(acc: &mut Vec<f64>, x: &[f32], n: usize) -> usize {
    acc.resize(n, 0.0);
    for row in x.chunks_exact(n) {
        for (a, &v) in acc.iter_mut().zip(row) {
            *a += (v as f64) * (v as f64);
        }
    }
    x.len() / n
}

/// `h[n, n] += xᵀ x` for the row-major `[t, n]` matrix `x`, in `T` (`one` is T's 1).
fn add_xtx<T: Copy + 'static>(h: &mut [T], x: &[T], n: usize, t: usize, one: T) {
    assert!(
        h.len() == n * n && x.len() == t * n,
        "add_xtx: [n, n] += [t, n]ᵀ[t, n]"
    );
    // SAFETY: dst is [n, n]; lhs xᵀ is [n, t] read through strides (col n, row 1) of the [t, n]
    // buffer, rhs x is [t, n]; the lengths were checked above.
    unsafe {
        gemm::gemm(
            n,
            n,
            t,
            h.as_mut_ptr(),
            1,
            n as isize,
            true,
            x.as_ptr(),
            n as isize,
            1,
            x.as_ptr(),
            1,
            n as isize,
            one,
            one,
            false,
            false,
            false,
            par(),
        )
    }
}

/// gemm's threading: rayon's pool when it has more than one thread.
fn par() -> gemm::Parallelism {
    let t = rayon::current_num_threads();
    if t > 1 {
        gemm::Parallelism::Rayon(t)
    } else {
        gemm::Parallelism::None
    }
}

/// `c[m, n] += alpha · a[m, k] · b[k, n]` in f64 on row-major buffers with row strides
/// `lda`, `ldb`, `ldc`; `b_t` reads `b` transposed (`b` is then `[n, k]` with stride `ldb`).
#[allow(clippy::too_many_arguments)]
fn gemm_acc(
    m: usize,
    n: usize,
    k: usize,
    alpha: f64,
    a: &[f64],
    lda: usize,
    b: &[f64],
    ldb: usize,
    b_t: bool,
    c: &mut [f64],
    ldc: usize,
    overwrite: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(c.len() >= (m - 1) * ldc + n && a.len() >= (m - 1) * lda + k);
    let (b_cs, b_rs) = if b_t {
        assert!(b.len() >= (n - 1) * ldb + k);
        (ldb as isize, 1)
    } else {
        assert!(k == 0 || b.len() >= (k - 1) * ldb + n);
        (1, ldb as isize)
    };
    // SAFETY: the asserts bound every index read or written through these strides.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            ldc as isize,
            !overwrite,
            a.as_ptr(),
            1,
            lda as isize,
            b.as_ptr(),
            b_cs,
            b_rs,
            1.0,
            alpha,
            false,
            false,
            false,
            par(),
        )
    }
}

/// In place, the lower Cholesky factor `L` (`A = L Lᵀ`) of the symmetric `[n, n]` matrix `a`
/// (only its lower triangle is read; the upper is zeroed). Returns the column at which `a`
/// proved not positive definite.
pub fn cholesky_lower(a: &mut [f64], n: usize) -> Result<(), usize> {
    assert_eq!(a.len(), n * n);
    let mut k0 = 0;
    while k0 < n {
        let k1 = (k0 + NB).min(n);
        // Diagonal block (already updated by earlier blocks), unblocked.
        for j in k0..k1 {
            let rj = &mut a[j * n..(j + 1) * n];
            let d = rj[j] - rj[k0..j].iter().map(|v| v * v).sum::<f64>();
            if d.is_nan() || d <= 0.0 {
                return Err(j);
            }
            let d = d.sqrt();
            rj[j] = d;
            for i in j + 1..k1 {
                let (top, bottom) = a.split_at_mut(i * n);
                let rj = &top[j * n..j * n + n];
                let ri = &mut bottom[..n];
                let mut s = ri[j];
                for p in k0..j {
                    s -= ri[p] * rj[p];
                }
                ri[j] = s / d;
            }
        }
        if k1 < n {
            // Panel below the block: each row solves against the block's factor.
            let (top, bottom) = a.split_at_mut(k1 * n);
            let diag = &top[k0 * n..];
            bottom.par_chunks_mut(n).for_each(|ri| {
                for j in k0..k1 {
                    let rj = &diag[(j - k0) * n..(j - k0) * n + n];
                    let mut s = ri[j];
                    for p in k0..j {
                        s -= ri[p] * rj[p];
                    }
                    ri[j] = s / rj[j];
                }
            });
            // Trailing update A22 -= P Pᵀ, P = A[k1.., k0..k1].
            let m = n - k1;
            let p: Vec<f64> = bottom
                .chunks(n)
                .flat_map(|r| r[k0..k1].iter().copied())
                .collect();
            let w = k1 - k0;
            gemm_acc(
                m,
                m,
                w,
                -1.0,
                &p,
                w,
                &p,
                w,
                true,
                &mut bottom[k1..],
                n,
                false,
            );
        }
        k0 = k1;
    }
    for i in 0..n {
        for j in i + 1..n {
            a[i * n + j] = 0.0;
        }
    }
    Ok(())
}

/// The inverse of the lower-triangular `[n, n]` matrix `l` (non-zero diagonal), lower.
pub fn inverse_lower(l: &[f64], n: usize) -> Vec<f64> {
    if n <= NB {
        let mut x = vec![0f64; n * n];
        // Column j of the inverse: forward substitution of L x = e_j.
        for j in 0..n {
            x[j * n + j] = 1.0 / l[j * n + j];
            for i in j + 1..n {
                let mut s = 0.0;
                for p in j..i {
                    s -= l[i * n + p] * x[p * n + j];
                }
                x[i * n + j] = s / l[i * n + i];
            }
        }
        return x;
    }
    // [[A, 0], [B, C]]⁻¹ = [[A⁻¹, 0], [−C⁻¹ B A⁻¹, C⁻¹]].
    let h = n / 2;
    let m = n - h;
    let sub = |r0: usize, c0: usize, rows: usize, cols: usize| -> Vec<f64> {
        (r0..r0 + rows)
            .flat_map(|r| l[r * n + c0..r * n + c0 + cols].iter().copied())
            .collect()
    };
    let a = sub(0, 0, h, h);
    let b = sub(h, 0, m, h);
    let c = sub(h, h, m, m);
    let (ai, ci) = rayon::join(|| inverse_lower(&a, h), || inverse_lower(&c, m));
    let mut ba = vec![0f64; m * h];
    gemm_acc(m, h, h, 1.0, &b, h, &ai, h, false, &mut ba, h, true);
    let mut x = vec![0f64; m * h];
    gemm_acc(m, h, m, -1.0, &ci, m, &ba, h, false, &mut x, h, true);
    let mut out = vec![0f64; n * n];
    for r in 0..h {
        out[r * n..r * n + h].copy_from_slice(&ai[r * h..(r + 1) * h]);
    }
    for r in 0..m {
        out[(h + r) * n..(h + r) * n + h].copy_from_slice(&x[r * h..(r + 1) * h]);
        out[(h + r) * n + h..(h + r + 1) * n].copy_from_slice(&ci[r * m..(r + 1) * m]);
    }
    out
}

/// The upper Cholesky factor `U` of `H⁻¹` (`H⁻¹ = Uᵀ U`), what GPTQ's reference gets from
/// `cholesky(cholesky_inverse(cholesky(H)), upper=True)`, for the symmetric positive definite
/// `[n, n]` matrix `h`. With `J` the reversal permutation: if `J H J = L Lᵀ` then
/// `H = (J L J)(J L J)ᵀ` with `J L J` upper, so `H⁻¹ = Uᵀ U` with `U = J L⁻¹ J` — one Cholesky
/// and one triangular inverse. Returns the column at which `h` is not positive definite.
pub fn inverse_cholesky_upper(h: &[f64], n: usize) -> Result<Vec<f64>, usize> {
    let mut r: Vec<f64> = (0..n * n)
        .map(|k| h[(n - 1 - k / n) * n + (n - 1 - k % n)])
        .collect();
    cholesky_lower(&mut r, n).map_err(|j| n - 1 - j)?;
    let mut li = inverse_lower(&r, n);
    drop(r);
    // Element k of the result is element n² − 1 − k of L⁻¹: reversed in place.
    li.reverse();
    Ok(li)
}

/// A layer Hessian prepared for the column-by-column solvers (GPTQ, SparseGPT): the processing
/// order and the upper Cholesky factor of the dampened inverse, in that order. One per distinct
/// layer input (q/k/v share one).
#[derive(Debug, Clone)]
pub struct PreparedHessian {
    /// Input features.
    pub n: usize,
    /// Processing order of the columns (identity without act-order).
    pub perm: Vec<usize>,
    /// Columns whose Hessian diagonal is 0 (never seen a non-zero input): set to 0.
    pub dead: Vec<bool>,
    /// Upper Cholesky factor of the dampened `H⁻¹`, permuted, `[n, n]` float32.
    pub u: Vec<f32>,
    /// Dampening used.
    pub damp: f64,
    /// GPTAQ's asymmetric term `P` `[n, n]` (permuted, float32), if set
    /// ([`PreparedHessian::with_asymmetry`]).
    pub p: Option<Vec<f32>>,
}

impl PreparedHessian {
    /// Add GPTAQ's correction for the error the inputs already carry (Li et al. 2025,
    /// "GPTAQ: Efficient Finetuning-Free Quantization for Asymmetric Calibration", eq. 14 and its
    /// reference `fasterquant`): with `D = 2/N · Σ Δx x̃ᵀ` ([`Cross`], Δx = float input −
    /// compressed-model input x̃, the Hessian from x̃) and U this factor,
    /// `P = α · triu₁(D Uᵀ) U` (dead columns of D zeroed, then permuted like H). Each column's
    /// step then moves the rest of its row by `−e·U[j, j+1..] + w_j·P[j, j+1..]`, so the
    /// quantized layer fits the float layer's output, not its own drifted input. `alpha`: the
    /// reference's 0.25.
    pub fn with_asymmetry(mut self, d: &[f64], alpha: f64) -> Self {
        let n = self.n;
        assert_eq!(d.len(), n * n, "with_asymmetry: D is [n, n]");
        let perm = &self.perm;
        let dp: Vec<f64> = (0..n * n)
            .map(|k| {
                let (i, j) = (perm[k / n], perm[k % n]);
                if self.dead[j] {
                    0.0
                } else {
                    d[i * n + j]
                }
            })
            .collect();
        let u: Vec<f64> = self.u.iter().map(|&v| v as f64).collect();
        // A = D Uᵀ, then its strict upper triangle.
        let mut a = vec![0f64; n * n];
        // SAFETY: dst a [n, n]; lhs dp [n, n] row-major; rhs Uᵀ read from u [n, n] through
        // strides (column n, row 1). Lengths are n·n each.
        unsafe {
            gemm::gemm(
                n,
                n,
                n,
                a.as_mut_ptr(),
                1,
                n as isize,
                false,
                dp.as_ptr(),
                1,
                n as isize,
                u.as_ptr(),
                n as isize,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                par(),
            )
        }
        for i in 0..n {
            a[i * n..i * n + i + 1].fill(0.0);
        }
        let mut p = vec![0f64; n * n];
        // SAFETY: dst p [n, n]; lhs a [n, n]; rhs u [n, n], all row-major.
        unsafe {
            gemm::gemm(
                n,
                n,
                n,
                p.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                n as isize,
                u.as_ptr(),
                1,
                n as isize,
                0.0,
                alpha,
                false,
                false,
                false,
                par(),
            )
        }
        self.p = Some(p.iter().map(|&v| v as f32).collect());
        self
    }
}

/// Accumulates GPTAQ's cross term `Σ Δx x̃ᵀ` of a linear's inputs: Δx the float model's input
/// minus the compressed model's x̃ on the same token (float32, as [`Hessian`] by default).
#[derive(Debug, Clone)]
pub struct Cross {
    /// Input features.
    pub n: usize,
    /// Rows (tokens) accumulated.
    pub tokens: usize,
    acc: Vec<f32>,
}

impl Cross {
    /// An empty accumulator for `n` input features.
    pub fn new(n: usize) -> Self {
        Cross {
            n,
            tokens: 0,
            acc: vec![0.0; n * n],
        }
    }

    /// Add the rows of the float input `x` and the compressed model's `x̃` (both `[t, n]`).
    pub fn add(&mut self, x: &[f32], xq: &[f32]) {
        let n = self.n;
        assert!(
            x.len() == xq.len() && x.len().is_multiple_of(n),
            "Cross::add: two [t, {n}] inputs"
        );
        let t = x.len() / n;
        self.tokens += t;
        let dx: Vec<f32> = x.iter().zip(xq).map(|(a, b)| a - b).collect();
        // SAFETY: dst [n, n]; lhs Δxᵀ [n, t] read through strides (column n, row 1) of the
        // [t, n] buffer; rhs x̃ [t, n]. Lengths checked above.
        unsafe {
            gemm::gemm(
                n,
                n,
                t,
                self.acc.as_mut_ptr(),
                1,
                n as isize,
                true,
                dx.as_ptr(),
                n as isize,
                1,
                xq.as_ptr(),
                1,
                n as isize,
                1.0f32,
                1.0f32,
                false,
                false,
                false,
                par(),
            )
        }
    }

    /// `D = 2/N · Σ Δx x̃ᵀ` as f64, row-major `[n, n]` (the scale of [`Hessian::matrix`]).
    pub fn matrix(&self) -> Vec<f64> {
        let s = 2.0 / self.tokens.max(1) as f64;
        self.acc.iter().map(|&v| v as f64 * s).collect()
    }
}

/// Prepare `h` (`[n, n]`, consumed) as GPTQ's and SparseGPT's references do: dead columns
/// (diagonal 0) set to 1, columns in order of decreasing diagonal if `act_order`, dampening by
/// `damp` × the mean diagonal (retried ×10 up to 3 times when the matrix is not positive
/// definite), the inverse's upper Cholesky factor. `layer` names the weight(s) in the error.
pub fn prepare(
    mut h: Vec<f64>,
    n: usize,
    damp: f64,
    act_order: bool,
    layer: &str,
) -> Result<PreparedHessian, MethodError> {
    let dead: Vec<bool> = (0..n).map(|i| h[i * n + i] == 0.0).collect();
    for (i, &d) in dead.iter().enumerate() {
        if d {
            h[i * n + i] = 1.0;
        }
    }
    if let Some(i) = h.iter().position(|v| !v.is_finite()) {
        return Err(MethodError::Numerical {
            layer: layer.to_string(),
            what: format!(
                "the calibration Hessian has a non-finite entry at ({}, {}) — the activations \
                 overflowed or hold NaN",
                i / n,
                i % n
            ),
        });
    }
    let mut perm: Vec<usize> = (0..n).collect();
    // One [n, n] matrix lives here (the permuted one replaces `h`), the dampened diagonal is
    // written into it for each attempt: a down_proj of Llama-2-7B's shape has n = 11008, so
    // each copy is 0.97 GB.
    let mut hp = if act_order {
        // Decreasing diagonal; a stable sort keeps ties in column order.
        perm.sort_by(|&a, &b| h[b * n + b].total_cmp(&h[a * n + a]));
        let hp: Vec<f64> = (0..n * n)
            .map(|k| h[perm[k / n] * n + perm[k % n]])
            .collect();
        drop(h);
        hp
    } else {
        h
    };
    let diag: Vec<f64> = (0..n).map(|i| hp[i * n + i]).collect();
    let mean_diag = diag.iter().sum::<f64>() / n as f64;
    let mut damp = damp;
    for attempt in 0..4 {
        for (i, d) in diag.iter().enumerate() {
            hp[i * n + i] = d + damp * mean_diag;
        }
        match inverse_cholesky_upper(&hp, n) {
            Ok(u) => {
                return Ok(PreparedHessian {
                    n,
                    perm,
                    dead,
                    u: u.iter().map(|&v| v as f32).collect(),
                    damp,
                    p: None,
                })
            }
            Err(col) if attempt == 3 => {
                return Err(MethodError::Numerical {
                    layer: layer.to_string(),
                    what: format!(
                        "the calibration Hessian is not positive definite (failed at column {}) \
                         even with dampening {damp} of its mean diagonal; use more calibration \
                         samples or a larger --damp",
                        perm[col]
                    ),
                })
            }
            Err(_) => damp *= 10.0,
        }
    }
    unreachable!("the loop returns on its last attempt")
}

/// [`compensate_column`] with GPTAQ's term: `row[j+1..b1] −= e · U[j, j+1..b1] − x · P[j,
/// j+1..b1]` (x the column's value before rounding).
#[inline]
pub fn compensate_column_asym(
    row: &mut [f32],
    (u, p): (&[f32], &[f32]),
    cols: usize,
    (j, b1): (usize, usize),
    x: f32,
    q: f32,
) -> (f32, f64) {
    let d = u[j * cols + j];
    let e = (x - q) / d;
    let urow = &u[j * cols + j + 1..j * cols + b1];
    let prow = &p[j * cols + j + 1..j * cols + b1];
    for ((wv, &uv), &pv) in row[j + 1..b1].iter_mut().zip(urow).zip(prow) {
        *wv -= e * uv - x * pv;
    }
    (e, ((x - q) as f64 / d as f64).powi(2) / 2.0)
}

/// One column's step of the error compensation GPTQ and SparseGPT share: weight `x` of column
/// `j` of `row` became `q`; its error scaled by the factor's diagonal, `e = (x − q) / U_jj`, is
/// spread over the rest of the block (`row[j+1..b1] −= e · U[j, j+1..b1]`). Returns `e` and the
/// reference's loss term `e² / 2`.
#[inline]
pub fn compensate_column(
    row: &mut [f32],
    u: &[f32],
    cols: usize,
    (j, b1): (usize, usize),
    x: f32,
    q: f32,
) -> (f32, f64) {
    let d = u[j * cols + j];
    let e = (x - q) / d;
    let urow = &u[j * cols + j + 1..j * cols + b1];
    for (wv, &uv) in row[j + 1..b1].iter_mut().zip(urow) {
        *wv -= e * uv;
    }
    (e, ((x - q) as f64 / d as f64).powi(2) / 2.0)
}

/// The error compensation GPTQ and SparseGPT share, applied lazily once per block of columns:
/// `W[:, b1..] -= Err · U[b0..b1, b1..]` for the `nr` rows of `wp` (`[nr, cols]`), `err` holding
/// each row's scaled errors of the block's columns (row stride `bs`) and `u` the prepared upper
/// factor (`[cols, cols]`).
pub fn compensate(
    wp: &mut [f32],
    err: &[f32],
    nr: usize,
    cols: usize,
    bs: usize,
    (b0, b1): (usize, usize),
    u: &[f32],
) {
    let rest = cols - b1;
    let bw = b1 - b0;
    // SAFETY: dst is rows [nr] × cols b1.. of wp (row stride cols); lhs is err [nr, bw]
    // (row stride bs); rhs is U[b0..b1, b1..] (row stride cols). All lie inside their
    // slices: wp is nr × cols, err nr × bs with bw ≤ bs, u cols × cols.
    assert!(wp.len() >= nr * cols && err.len() >= nr * bs && bw <= bs);
    unsafe {
        gemm::gemm(
            nr,
            rest,
            bw,
            wp.as_mut_ptr().add(b1),
            1,
            cols as isize,
            true,
            err.as_ptr(),
            1,
            bs as isize,
            u.as_ptr().add(b0 * cols + b1),
            1,
            cols as isize,
            1.0f32,
            -1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// What the GPTAQ tests of GPTQ and SparseGPT share.
#[cfg(test)]
pub(crate) mod asym_testing {
    /// The compressed model's inputs for the float inputs `x` (`[t, cols]`): `x` plus a drift
    /// correlated with it.
    pub(crate) fn drifted(x: &[f32], cols: usize, rnd: &mut impl FnMut() -> f32) -> Vec<f32> {
        x.iter()
            .enumerate()
            .map(|(i, &v)| v * 0.9 + 0.05 * x[i - i % cols + (i % cols + 1) % cols] + 0.05 * rnd())
            .collect()
    }

    /// `‖W Xᵀ − Q X̃ᵀ‖²`: the compressed weight `q` on its own inputs `xq` against the float
    /// weight `w` on the float inputs `x` (weights `[rows, cols]`, inputs `[t, cols]`).
    pub(crate) fn asym_err(w: &[f32], q: &[f32], x: &[f32], xq: &[f32], cols: usize) -> f64 {
        let t = x.len() / cols;
        let mut e = 0f64;
        for (wr, qr) in w.chunks(cols).zip(q.chunks(cols)) {
            for i in 0..t {
                let (mut a, mut b) = (0f64, 0f64);
                for c in 0..cols {
                    a += wr[c] as f64 * x[i * cols + c] as f64;
                    b += qr[c] as f64 * xq[i * cols + c] as f64;
                }
                e += (a - b) * (a - b);
            }
        }
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spd(n: usize, seed: u64) -> Vec<f64> {
        // X Xᵀ + n I from a deterministic pseudo-random X.
        let mut s = seed;
        let mut next = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f64 / (1u64 << 31) as f64) - 0.5
        };
        let x: Vec<f64> = (0..n * n).map(|_| next()).collect();
        let mut a = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] = (0..n).map(|k| x[i * n + k] * x[j * n + k]).sum::<f64>()
                    + if i == j { 0.1 } else { 0.0 };
            }
        }
        a
    }

    fn matmul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
        let mut c = vec![0f64; n * n];
        for i in 0..n {
            for k in 0..n {
                for j in 0..n {
                    c[i * n + j] += a[i * n + k] * b[k * n + j];
                }
            }
        }
        c
    }

    fn transpose(a: &[f64], n: usize) -> Vec<f64> {
        (0..n * n).map(|k| a[(k % n) * n + k / n]).collect()
    }

    #[test]
    fn cholesky_reconstructs_blocked_and_unblocked() {
        for n in [5, 64, 150] {
            let a = spd(n, n as u64);
            let mut l = a.clone();
            cholesky_lower(&mut l, n).unwrap();
            let llt = matmul(&l, &transpose(&l, n), n);
            for (x, y) in llt.iter().zip(&a) {
                assert!((x - y).abs() < 1e-9 * (1.0 + y.abs()), "{x} vs {y}");
            }
        }
    }

    #[test]
    fn inverse_factor_gives_the_inverse() {
        for n in [7, 130] {
            let h = spd(n, 3 + n as u64);
            let u = inverse_cholesky_upper(&h, n).unwrap();
            for i in 0..n {
                for j in 0..i {
                    assert_eq!(u[i * n + j], 0.0, "U is upper");
                }
                assert!(u[i * n + i] > 0.0);
            }
            // H · (Uᵀ U) = I.
            let hinv = matmul(&transpose(&u, n), &u, n);
            let id = matmul(&h, &hinv, n);
            for i in 0..n {
                for j in 0..n {
                    let e = if i == j { 1.0 } else { 0.0 };
                    assert!(
                        (id[i * n + j] - e).abs() < 1e-7,
                        "({i},{j}) {}",
                        id[i * n + j]
                    );
                }
            }
        }
    }

    #[test]
    fn not_positive_definite_is_reported() {
        let mut a = vec![1.0, 2.0, 2.0, 1.0];
        assert_eq!(cholesky_lower(&mut a, 2), Err(1));
    }

    #[test]
    fn hessian_accumulates_in_both_precisions() {
        let x: Vec<f32> = (0..12).map(|v| v as f32 * 0.5 - 2.0).collect(); // [4, 3]
        let mut h32 = Hessian::new(3, false);
        let mut h64 = Hessian::new(3, true);
        h32.add(&x[..6]);
        h32.add(&x[6..]);
        h64.add(&x);
        let (a, b) = (h32.matrix(), h64.matrix());
        for i in 0..3 {
            for j in 0..3 {
                let e: f64 = (0..4)
                    .map(|t| x[t * 3 + i] as f64 * x[t * 3 + j] as f64)
                    .sum::<f64>()
                    * 2.0
                    / 4.0;
                assert!((a[i * 3 + j] - e).abs() < 1e-5);
                assert!((b[i * 3 + j] - e).abs() < 1e-12);
            }
        }
        assert_eq!(h64.tokens, 4);
    }
}
