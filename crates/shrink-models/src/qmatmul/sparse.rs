//! Sparse float32 weights at run time: each row's non-zero values in order, and one bit per
//! weight saying where they go — 16-bit masks over runs of 16 columns, the idea of
//! compressed-tensors' `sparse-bitmask` layout. At 50 % sparsity (unstructured or 2:4) a row
//! takes 2 bytes + 1 bit per weight instead of 4, so generation, which streams every weight
//! once per token, reads about half the bytes.
//!
//! Why hand-written: no kernel crate of this workspace multiplies by a bitmask-sparse matrix.
//! On AVX-512 one `vexpandps` load places 16 columns' values (the mask's set bits) in a register
//! with zeros elsewhere, and one FMA accumulates them; elsewhere the portable loop walks the
//! mask bits.

/// A `[n, k]` weight's non-zeros and masks (`k` a multiple of 16).
pub(crate) struct SparseRows {
    /// Input features.
    k: usize,
    /// Non-zero values, row by row, in column order.
    values: Vec<f32>,
    /// One mask per 16 columns of each row (bit `b`: column `16 g + b` is non-zero).
    masks: Vec<u16>,
    /// Where each row's values start (`n + 1` entries).
    offsets: Vec<usize>,
}

impl SparseRows {
    /// The sparse form of the row-major `[n, k]` weight `w` (`None` unless `k` is a multiple of
    /// 16).
    pub(crate) fn new(w: &[f32], n: usize, k: usize) -> Option<Self> {
        if !k.is_multiple_of(16) || w.len() != n * k {
            return None;
        }
        let mut values = Vec::with_capacity(w.len() / 2);
        let mut masks = Vec::with_capacity(w.len() / 16);
        let mut offsets = Vec::with_capacity(n + 1);
        for row in w.chunks(k) {
            offsets.push(values.len());
            for g in row.chunks(16) {
                let mut m = 0u16;
                for (b, &v) in g.iter().enumerate() {
                    if v != 0.0 {
                        m |= 1 << b;
                        values.push(v);
                    }
                }
                masks.push(m);
            }
        }
        offsets.push(values.len());
        Some(SparseRows {
            k,
            values,
            masks,
            offsets,
        })
    }

    /// Bytes held: values, masks and row offsets.
    pub(crate) fn bytes(&self) -> usize {
        self.values.len() * 4 + self.masks.len() * 2 + self.offsets.len() * 8
    }

    /// Row `r`'s values and masks.
    fn row(&self, r: usize) -> (&[f32], &[u16]) {
        let g = self.k / 16;
        (
            &self.values[self.offsets[r]..self.offsets[r + 1]],
            &self.masks[r * g..(r + 1) * g],
        )
    }

    /// Row `r` expanded into `out` (`k` values).
    pub(crate) fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let (mut v, masks) = self.row(r);
        for (o, &m) in out.chunks_exact_mut(16).zip(masks) {
            for (b, o) in o.iter_mut().enumerate() {
                *o = if m & (1 << b) != 0 {
                    let x = v[0];
                    v = &v[1..];
                    x
                } else {
                    0.0
                };
            }
        }
    }

    /// Row `r` of the weight times `x` (`k` values).
    pub(crate) fn dot_row(&self, r: usize, x: &[f32]) -> f32 {
        let (v, masks) = self.row(r);
        assert_eq!(x.len(), self.k, "sparse dot: input length");
        #[cfg(target_arch = "x86_64")]
        if super::avx512::available() {
            // SAFETY: AVX-512 was detected; `v` holds exactly the values the masks' set bits
            // call for (built so by `new`), `x` holds 16 · masks.len() floats (asserted).
            return unsafe { dot_avx512(v, masks, x) };
        }
        dot(v, masks, x)
    }
}

/// `Σ W·x` over one row given as values and masks.
fn dot(mut v: &[f32], masks: &[u16], x: &[f32]) -> f32 {
    let mut acc = 0f32;
    for (xg, &m) in x.chunks_exact(16).zip(masks) {
        let mut bits = m;
        while bits != 0 {
            let b = bits.trailing_zeros() as usize;
            acc += v[0] * xg[b];
            v = &v[1..];
            bits &= bits - 1;
        }
    }
    acc
}

/// [`dot`] with one expand-load and one FMA per 16 columns.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot_avx512(v: &[f32], masks: &[u16], x: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    debug_assert_eq!(x.len(), masks.len() * 16);
    debug_assert_eq!(
        v.len(),
        masks.iter().map(|m| m.count_ones() as usize).sum::<usize>()
    );
    let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let mut p = v.as_ptr();
    let mut g = 0;
    while g + 1 < masks.len() {
        let (m0, m1) = (masks[g], masks[g + 1]);
        let w0 = _mm512_maskz_expandloadu_ps(m0, p);
        p = p.add(m0.count_ones() as usize);
        let w1 = _mm512_maskz_expandloadu_ps(m1, p);
        p = p.add(m1.count_ones() as usize);
        a0 = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x.as_ptr().add(g * 16)), a0);
        a1 = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x.as_ptr().add(g * 16 + 16)), a1);
        g += 2;
    }
    if g < masks.len() {
        let w0 = _mm512_maskz_expandloadu_ps(masks[g], p);
        a0 = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x.as_ptr().add(g * 16)), a0);
    }
    _mm512_reduce_add_ps(_mm512_add_ps(a0, a1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_rows_expand_and_multiply_like_the_dense_weight() {
        let (n, k) = (37, 48);
        let mut s = 3u64;
        let w: Vec<f32> = (0..n * k)
            .map(|i| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
                let v = ((s >> 40) as f32) / 16777216.0 - 0.5;
                // Every pattern: whole zero runs, 2:4, unstructured.
                if (i / k) % 5 == 0 && (i % k) < 16 || (s >> 20).is_multiple_of(2) {
                    0.0
                } else {
                    v
                }
            })
            .collect();
        let sp = SparseRows::new(&w, n, k).unwrap();
        let mut row = vec![0f32; k];
        for r in 0..n {
            sp.dequantize_row(r, &mut row);
            assert_eq!(row, w[r * k..(r + 1) * k]);
        }
        let m = 3;
        let x: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 - 3.0).collect();
        for i in 0..m {
            let xi = &x[i * k..(i + 1) * k];
            for r in 0..n {
                let e: f32 = (0..k).map(|c| w[r * k + c] * xi[c]).sum();
                assert!((sp.dot_row(r, xi) - e).abs() < 1e-4, "{i} {r}");
                let (v, masks) = sp.row(r);
                assert!((dot(v, masks, xi) - e).abs() < 1e-4);
            }
        }
        assert!(SparseRows::new(&w[..n * 40], n, 40).is_none());
    }
}
