//! One token through a decoder on plain slices: the pieces generation runs per token.
//!
//! Why not candle's ops here: each costs microseconds of allocation, shape checks and dispatch
//! whatever its size, and one token of a 30-layer model runs ~20 of them per layer on vectors
//! of a few hundred values — the serial time between the parallel products, during which the
//! other threads of the [`crate::team`] wait. The arithmetic is the same as the tensor path's
//! (`candle_nn`'s RMSNorm and rotate-half RoPE, [`crate::layers::attention`]'s softmax).

/// RMSNorm of one row: `x / sqrt(mean(x²) + eps) · w`, as `candle_nn::ops::rms_norm`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    debug_assert_eq!(x.len(), w.len());
    let sum2: f32 = crate::kernels::dot(x, x);
    let m = (sum2 / x.len() as f32 + eps).sqrt();
    x.iter().zip(w).map(|(v, w)| v / m * w).collect()
}

/// Rotary embedding (transformers' rotate_half) of the first `2·cos.len()` values of each of
/// the `heads` heads of `x` (`[heads, d]`), in place, at the position of `cos`, `sin`.
pub fn rope(x: &mut [f32], heads: usize, cos: &[f32], sin: &[f32]) {
    let d = x.len() / heads.max(1);
    let half = cos.len();
    for head in x.chunks_exact_mut(d) {
        let (a, b) = head[..2 * half].split_at_mut(half);
        for i in 0..half {
            let (x1, x2) = (a[i], b[i]);
            a[i] = x1 * cos[i] - x2 * sin[i];
            b[i] = x1 * sin[i] + x2 * cos[i];
        }
    }
}

/// The key and value buffers of one layer's cache, as [`crate::layers::KvCache::append_one`]
/// lends them: `[kv_heads, cap, d]`, of which positions `0..len` are filled.
pub struct Kv<'a> {
    /// Keys and values.
    pub rows: KvRows<'a>,
    /// Key/value heads.
    pub heads: usize,
    /// Positions each head's buffer has room for.
    pub cap: usize,
    /// Positions filled.
    pub len: usize,
}

/// Keys and values as the cache holds them.
pub enum KvRows<'a> {
    /// Float32 keys, values.
    F32(&'a [f32], &'a [f32]),
    /// Float16 keys, values.
    F16(&'a [half::f16], &'a [half::f16]),
}

/// One query (`[heads, d]`, heads a multiple of the cache's) attending to the cached positions
/// `lo..len` (all earlier positions, or a sliding window's): softmax(q·kᵀ·scale)·v per head,
/// query head i reading kv head i / (heads / kv heads), the heads shared out over the
/// [`crate::team`] (run on the calling thread alone, attention was 3.7 % of the samples of a
/// 2-thread Q4_0 tg128 profile, `perf`). Returns
/// `[heads·d]`.
pub fn attend(q: &[f32], heads: usize, kv: &Kv, lo: usize, scale: f32) -> Vec<f32> {
    let d = q.len() / heads.max(1);
    let rep = heads / kv.heads.max(1);
    let mut out = vec![0f32; q.len()];
    let base = crate::qmatmul::SendPtr(out.as_mut_ptr());
    crate::team::run(heads, |h| {
        let mut p = vec![0f32; kv.len - lo];
        let at = (h / rep) * kv.cap * d;
        let (from, to) = (at + lo * d, at + kv.len * d);
        // SAFETY: part h alone writes head h's d outputs.
        let oh = unsafe { std::slice::from_raw_parts_mut(base.get().add(h * d), d) };
        let qh = &q[h * d..(h + 1) * d];
        match kv.rows {
            KvRows::F32(k, v) => {
                crate::kernels::attend_head(qh, &k[from..to], &v[from..to], scale, &mut p, oh)
            }
            KvRows::F16(k, v) => {
                crate::kernels::attend_head(qh, &k[from..to], &v[from..to], scale, &mut p, oh)
            }
        }
    });
    out
}

/// `x += y`.
pub fn add_into(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn rms_norm_and_rope_match_the_tensor_path() {
        let x: Vec<f32> = (0..2 * 8)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0)
            .collect();
        let w: Vec<f32> = (0..16).map(|i| 0.5 + i as f32 / 16.0).collect();
        let xt = Tensor::from_slice(&x, (1, 16), &Device::Cpu).unwrap();
        let wt = Tensor::from_slice(&w, 16, &Device::Cpu).unwrap();
        let want = candle_nn::ops::rms_norm(&xt, &wt, 1e-5)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for (a, b) in rms_norm(&x, &w, 1e-5).iter().zip(&want) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
        // Two heads of 8, rotated fully, at position 5.
        let (cos, sin) = crate::layers::rope_tables(8, 10000.0, 5, 1).unwrap();
        let want = crate::layers::apply_rope(
            &Tensor::from_slice(&x, (2, 1, 8), &Device::Cpu).unwrap(),
            &cos,
            &sin,
            8,
        )
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
        let (c, s) = crate::layers::rope_row(8, 10000.0, 5);
        let mut got = x.clone();
        rope(&mut got, 2, &c, &s);
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn attend_matches_the_tensor_attention_with_grouped_heads_and_a_window() {
        // Head widths of the portable kernel (8, 48) and of each AVX-512 instance (32, 64, 96,
        // 128); odd and even numbers of positions.
        for (d, len) in [
            (8, 6),
            (32, 7),
            (48, 5),
            (64, 6),
            (64, 7),
            (96, 3),
            (128, 9),
        ] {
            attend_case(d, len);
        }
    }

    fn attend_case(d: usize, len: usize) {
        let (h, kvh, cap) = (4, 2, len + 3);
        let val = |i: usize| ((i * 13 % 17) as f32 - 8.0) / 5.0;
        let q: Vec<f32> = (0..h * d).map(val).collect();
        let mut k = vec![0f32; kvh * cap * d];
        let mut v = vec![0f32; kvh * cap * d];
        for g in 0..kvh {
            for j in 0..len {
                for e in 0..d {
                    k[(g * cap + j) * d + e] = val(g * 100 + j * 10 + e + 3);
                    v[(g * cap + j) * d + e] = val(g * 50 + j * 7 + e * 3 + 1);
                }
            }
        }
        let dense = |b: &[f32]| {
            let rows: Vec<f32> = (0..kvh)
                .flat_map(|g| b[g * cap * d..(g * cap + len) * d].to_vec())
                .collect();
            Tensor::from_vec(rows, (kvh, len, d), &Device::Cpu).unwrap()
        };
        for window in [None, Some(3)] {
            let qt = Tensor::from_slice(&q, (h, 1, d), &Device::Cpu).unwrap();
            let mask = crate::layers::CausalMask { window };
            let want = crate::layers::attention(&qt, &dense(&k), &dense(&v), &mask, 0.35)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let lo = window.map_or(0, |w| len.saturating_sub(w));
            let kv = |rows| Kv {
                rows,
                heads: kvh,
                cap,
                len,
            };
            let got = attend(&q, h, &kv(KvRows::F32(&k, &v)), lo, 0.35);
            for (a, b) in got.iter().zip(&want) {
                assert!(
                    (a - b).abs() < 1e-5,
                    "d {d} len {len} window {window:?}: {a} vs {b}"
                );
            }
            // Float16 rows give the float32 kernel's result on the same (rounded) values.
            let half = |b: &[f32]| {
                b.iter()
                    .map(|&x| half::f16::from_f32(x))
                    .collect::<Vec<_>>()
            };
            let wide = |b: &[half::f16]| b.iter().map(|x| x.to_f32()).collect::<Vec<_>>();
            let (kh, vh) = (half(&k), half(&v));
            let (kw, vw) = (wide(&kh), wide(&vh));
            let a = attend(&q, h, &kv(KvRows::F16(&kh, &vh)), lo, 0.35);
            let b = attend(&q, h, &kv(KvRows::F32(&kw, &vw)), lo, 0.35);
            for (a, b) in a.iter().zip(&b) {
                assert!((a - b).abs() < 1e-6, "d {d} len {len} float16: {a} vs {b}");
            }
        }
    }
}
