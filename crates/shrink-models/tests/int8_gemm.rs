//! The int8 GEMM against a plain i64 triple loop: every kernel this CPU runs, awkward shapes,
//! the extremes of the i8 range, and bit-identical f32 outputs.

use rayon::prelude::*;
use shrink_models::int8_gemm::{
    gemm_i8_reference, gemm_i8_scaled, gemm_i8_scaled_with, Int8Kernel, PackedInt8, MAX_K,
};

/// bitsandbytes' dequantisation constant, 1/127².
const ALPHA: f32 = 6.200124e-05;
const KERNELS: [Int8Kernel; 3] = [Int8Kernel::Vnni, Int8Kernel::Avx2, Int8Kernel::Portable];

/// xorshift64*: deterministic test data without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn i8s(&mut self, len: usize) -> Vec<i8> {
        (0..len).map(|_| (self.next() >> 56) as u8 as i8).collect()
    }
    /// Scales spread over a few orders of magnitude, some negative.
    fn scales(&mut self, len: usize) -> Vec<f32> {
        (0..len)
            .map(|_| {
                let u = (self.next() >> 40) as f32 / (1u64 << 24) as f32;
                let s = (u * 8.0 - 4.0).exp2() * 0.37;
                if self.next() & 7 == 0 {
                    -s
                } else {
                    s
                }
            })
            .collect()
    }
}

/// The definition: exact i64 sums over the unpacked weights, then the epilogue.
fn expected(
    a: &[i8],
    w: &[i8],
    (m, k, n): (usize, usize, usize),
    a_scale: &[f32],
    b_scale: &[f32],
    alpha: f32,
) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    for i in 0..m {
        let ar = &a[i * k..][..k];
        for j in 0..n {
            let wr = &w[j * k..][..k];
            let acc: i64 = ar.iter().zip(wr).map(|(&x, &y)| x as i64 * y as i64).sum();
            let acc = i32::try_from(acc).unwrap();
            out[i * n + j] = acc as f32 * (a_scale[i] * b_scale[j]) * alpha;
        }
    }
    out
}

fn available() -> Vec<Int8Kernel> {
    let ks: Vec<_> = KERNELS.into_iter().filter(|k| k.is_available()).collect();
    eprintln!("kernels on this CPU: {ks:?}");
    ks
}

/// Bitwise equality, reporting the first difference.
fn assert_bits_eq(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(p) = got
        .iter()
        .zip(want)
        .position(|(g, w)| g.to_bits() != w.to_bits())
    {
        panic!("{what}: first difference at {p}: {} vs {}", got[p], want[p]);
    }
}

/// Run every available kernel (and the public entry points) on one problem.
fn check(a: &[i8], w: &[i8], (m, k, n): (usize, usize, usize), seed: u64, with_reference: bool) {
    let mut rng = Rng(seed | 1);
    let (a_scale, b_scale) = (rng.scales(m), rng.scales(n));
    let want = expected(a, w, (m, k, n), &a_scale, &b_scale, ALPHA);
    let b = PackedInt8::pack(w, n, k);
    let what = format!("m={m} k={k} n={n}");
    for kernel in available() {
        let mut out = vec![f32::NAN; m * n];
        gemm_i8_scaled_with(kernel, a, m, &a_scale, &b, &b_scale, ALPHA, &mut out);
        assert_bits_eq(&out, &want, &format!("{what} {kernel:?}"));
    }
    let mut out = vec![f32::NAN; m * n];
    gemm_i8_scaled(a, m, &a_scale, &b, &b_scale, ALPHA, &mut out);
    assert_bits_eq(&out, &want, &format!("{what} detected"));
    if with_reference {
        let mut out = vec![f32::NAN; m * n];
        gemm_i8_reference(a, m, &a_scale, &b, &b_scale, ALPHA, &mut out);
        assert_bits_eq(&out, &want, &format!("{what} reference"));
    }
}

#[test]
fn every_kernel_matches_the_definition_on_awkward_shapes() {
    let ms = [1, 3, 17, 512];
    let ks = [1, 3, 5, 64, 576, 1536];
    let ns = [1, 7, 16, 33, 192, 576];
    let mut rng = Rng(0x5eed);
    for &m in &ms {
        for &k in &ks {
            for &n in &ns {
                let (a, w) = (rng.i8s(m * k), rng.i8s(n * k));
                // The scalar reference via PackedInt8::get is slow; run it on the smaller half.
                check(&a, &w, (m, k, n), rng.next(), m * k * n <= 1 << 20);
            }
        }
    }
}

#[test]
fn random_shapes_match_the_definition() {
    let mut rng = Rng(42);
    for _ in 0..60 {
        let m = 1 + (rng.next() % 70) as usize;
        let k = 1 + (rng.next() % 300) as usize;
        let n = 1 + (rng.next() % 100) as usize;
        let (a, w) = (rng.i8s(m * k), rng.i8s(n * k));
        check(&a, &w, (m, k, n), rng.next(), true);
    }
}

#[test]
fn extremes_of_the_i8_range_are_exact() {
    // Largest sums the i32 accumulators must hold: k = MAX_K with ±128·±128 products, which
    // also makes the VNNI kernel's (a + 128)·b sums wrap before the correction.
    for &(m, k, n) in &[(3, 5, 7), (17, 1536, 33), (2, MAX_K, 17)] {
        for &(x, y) in &[
            (-128i8, -128i8),
            (127, 127),
            (127, -128),
            (-128, 127),
            (0, -128),
        ] {
            let (a, w) = (vec![x; m * k], vec![y; n * k]);
            check(&a, &w, (m, k, n), 7, false);
        }
        // Alternating signs per column of A, so sums cancel partially.
        let a: Vec<i8> = (0..m * k)
            .map(|i| if i.is_multiple_of(3) { -128 } else { 127 })
            .collect();
        let w = vec![-128i8; n * k];
        check(&a, &w, (m, k, n), 9, false);
    }
}

#[test]
fn empty_dimensions() {
    // k = 0: every sum is 0.
    check(&[], &[], (3, 0, 5), 1, true);
    // m = 0 and n = 0 leave nothing to write.
    check(&[], &[1, 2, 3], (0, 3, 1), 1, true);
    check(&[1, 2, 3], &[], (1, 3, 0), 1, true);
}

#[test]
fn output_is_overwritten_and_alpha_applies_last() {
    let (m, k, n) = (5, 9, 20);
    let mut rng = Rng(3);
    let (a, w) = (rng.i8s(m * k), rng.i8s(n * k));
    let b = PackedInt8::pack(&w, n, k);
    let (a_scale, b_scale) = (rng.scales(m), rng.scales(n));
    for alpha in [1.0, -3.5, 1e-30, f32::INFINITY] {
        let want = expected(&a, &w, (m, k, n), &a_scale, &b_scale, alpha);
        let mut out = vec![123.0; m * n];
        gemm_i8_scaled(&a, m, &a_scale, &b, &b_scale, alpha, &mut out);
        assert_bits_eq(&out, &want, &format!("alpha={alpha}"));
    }
}

#[test]
fn calls_from_rayon_workers_do_not_interfere() {
    // Each call may run on a worker already inside another call's parallel loop.
    let mut rng = Rng(11);
    let cases: Vec<_> = (0..8)
        .map(|i| {
            let (m, k, n) = (64 + i, 576, 192 + 16 * i);
            let (a, w) = (rng.i8s(m * k), rng.i8s(n * k));
            (m, k, n, a, w)
        })
        .collect();
    cases.par_iter().for_each(|(m, k, n, a, w)| {
        check(a, w, (*m, *k, *n), *m as u64, false);
    });
}

#[test]
fn pack_keeps_every_weight() {
    let (n, k) = (33, 13);
    let w = Rng(5).i8s(n * k);
    let b = PackedInt8::pack(&w, n, k);
    assert_eq!((b.n(), b.k()), (n, k));
    for j in 0..n {
        for t in 0..k {
            assert_eq!(b.get(j, t), w[j * k + t], "({j}, {t})");
        }
    }
    // 48 padded rows of 16 padded columns, plus one i32 sum per padded row.
    assert_eq!(b.resident_bytes(), 48 * 16 + 48 * 4);
}

#[test]
#[should_panic(expected = "expected n·k")]
fn pack_rejects_a_wrong_length() {
    PackedInt8::pack(&[0; 10], 3, 4);
}

#[test]
#[should_panic(expected = "out holds")]
fn gemm_rejects_a_wrong_output_length() {
    let b = PackedInt8::pack(&[1; 12], 3, 4);
    let mut out = vec![0.0; 5];
    gemm_i8_scaled(&[1; 8], 2, &[1.0; 2], &b, &[1.0; 3], 1.0, &mut out);
}
