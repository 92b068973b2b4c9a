//! Hadamard matrices and the random orthogonal rotations built from them (QuaRot, Ashkboos et
//! al. 2024, §3: a Hadamard matrix times random signs spreads any outlier over every channel).
//!
//! Hand-written: no maintained crate constructs Hadamard matrices of orders other than powers
//! of two, and models are 576, 768, 896 or 5120 wide. An order `n = m·2ᵏ` is built as the
//! Kronecker product of a Paley matrix of order `m·2ʲ` (Paley I: `q + 1` for a prime `q ≡ 3 mod
//! 4`; Paley II: `2(q + 1)` for a prime `q ≡ 1 mod 4`) and Sylvester's of order `2ᵏ⁻ʲ`; where
//! no such order exists, [`Basis::new`] falls back to a random orthogonal matrix (Gram–Schmidt of
//! Gaussian rows), still with a constant first row.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A Hadamard matrix of order `n` (entries ±1, `H Hᵀ = n I`) with an all-ones first row, row
/// major; `None` where the constructions above do not reach `n`.
pub fn hadamard(n: usize) -> Option<Vec<i8>> {
    if n == 0 {
        return None;
    }
    let k = n.trailing_zeros() as usize;
    let m = n >> k;
    for j in 0..=k {
        let core = m << j;
        let Some(base) = paley(core) else { continue };
        let h = kron(&base, core, &sylvester(k - j), 1 << (k - j));
        return Some(normalize_first_row(h, n));
    }
    None
}

/// Sylvester's Hadamard matrix of order 2ᵏ.
fn sylvester(k: usize) -> Vec<i8> {
    let mut h = vec![1i8];
    let mut n = 1;
    for _ in 0..k {
        let mut next = vec![0i8; 4 * n * n];
        for i in 0..n {
            for j in 0..n {
                let v = h[i * n + j];
                next[i * 2 * n + j] = v;
                next[i * 2 * n + j + n] = v;
                next[(i + n) * 2 * n + j] = v;
                next[(i + n) * 2 * n + j + n] = -v;
            }
        }
        h = next;
        n *= 2;
    }
    h
}

/// A Paley Hadamard matrix of order `n` (1 and 2 by Sylvester), if one of the two constructions
/// gives it.
fn paley(n: usize) -> Option<Vec<i8>> {
    match n {
        1 => return Some(vec![1]),
        2 => return Some(sylvester(1)),
        _ if !n.is_multiple_of(4) => return None,
        _ => {}
    }
    let q1 = n - 1;
    if is_prime(q1) && q1 % 4 == 3 {
        // Paley I: H = I + S, S = [[0, 1ᵀ], [−1, Q]] with Q the Jacobsthal matrix.
        let q = q1;
        let chi = residues(q);
        let mut h = vec![0i8; n * n];
        for i in 0..n {
            for j in 0..n {
                let s = match (i, j) {
                    (0, 0) => 0,
                    (0, _) => 1,
                    (_, 0) => -1,
                    _ => chi[(j + q - i) % q],
                };
                h[i * n + j] = s + i8::from(i == j);
            }
        }
        return Some(h);
    }
    let q2 = n / 2 - 1;
    if is_prime(q2) && q2 % 4 == 1 {
        // Paley II: C = [[0, 1ᵀ], [1, Q]] (a symmetric conference matrix of order q + 1);
        // H = C ⊗ [[1, 1], [1, −1]] + I ⊗ [[1, −1], [−1, −1]].
        let q = q2;
        let chi = residues(q);
        let c = |i: usize, j: usize| -> i8 {
            match (i, j) {
                (0, 0) => 0,
                (0, _) | (_, 0) => 1,
                _ => chi[(j + q - i) % q],
            }
        };
        let m = q + 1;
        let mut h = vec![0i8; n * n];
        for i in 0..m {
            for j in 0..m {
                let (a, b) = if i == j {
                    ([1, -1], [-1, -1])
                } else {
                    let v = c(i, j);
                    ([v, v], [v, -v])
                };
                h[(2 * i) * n + 2 * j] = a[0];
                h[(2 * i) * n + 2 * j + 1] = a[1];
                h[(2 * i + 1) * n + 2 * j] = b[0];
                h[(2 * i + 1) * n + 2 * j + 1] = b[1];
            }
        }
        return Some(h);
    }
    None
}

/// The quadratic character modulo the prime `q`: 0 at 0, 1 on squares, −1 elsewhere.
fn residues(q: usize) -> Vec<i8> {
    let mut chi = vec![-1i8; q];
    chi[0] = 0;
    for x in 1..q {
        chi[x * x % q] = 1;
    }
    chi
}

fn is_prime(n: usize) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

/// `a ⊗ b` for square matrices of orders `na`, `nb`.
fn kron(a: &[i8], na: usize, b: &[i8], nb: usize) -> Vec<i8> {
    let n = na * nb;
    let mut h = vec![0i8; n * n];
    for i in 0..na {
        for j in 0..na {
            let v = a[i * na + j];
            for k in 0..nb {
                for l in 0..nb {
                    h[(i * nb + k) * n + j * nb + l] = v * b[k * nb + l];
                }
            }
        }
    }
    h
}

/// Flip columns so that the first row is all ones (still a Hadamard matrix).
fn normalize_first_row(mut h: Vec<i8>, n: usize) -> Vec<i8> {
    for j in 0..n {
        if h[j] < 0 {
            for i in 0..n {
                h[i * n + j] = -h[i * n + j];
            }
        }
    }
    h
}

/// An orthogonal `n × n` matrix B whose first row is constant (`1/√n` everywhere), so that
/// `B 1 = √n e₀`: the normalized Hadamard matrix where one exists, else a random orthogonal one.
#[derive(Debug, Clone)]
pub struct Basis {
    /// Order.
    pub n: usize,
    /// Row-major entries.
    pub b: Vec<f64>,
    /// Whether B is a (normalized) Hadamard matrix.
    pub hadamard: bool,
}

impl Basis {
    /// The basis of order `n`; `rng` is used only without a Hadamard matrix.
    pub fn new(n: usize, rng: &mut StdRng) -> Self {
        if let Some(h) = hadamard(n) {
            let s = 1.0 / (n as f64).sqrt();
            return Basis {
                n,
                b: h.iter().map(|&v| v as f64 * s).collect(),
                hadamard: true,
            };
        }
        // Gram–Schmidt (twice, for orthogonality to rounding) of [1/√n; Gaussian rows].
        let mut b = vec![0.0f64; n * n];
        let u = 1.0 / (n as f64).sqrt();
        b[..n].fill(u);
        for i in 1..n {
            let mut r: Vec<f64> = (0..n).map(|_| gaussian(rng)).collect();
            for _ in 0..2 {
                for k in 0..i {
                    let row = &b[k * n..(k + 1) * n];
                    let d: f64 = row.iter().zip(&r).map(|(a, c)| a * c).sum();
                    r.iter_mut().zip(row).for_each(|(x, a)| *x -= d * a);
                }
            }
            let norm = r.iter().map(|x| x * x).sum::<f64>().sqrt();
            b[i * n..(i + 1) * n]
                .iter_mut()
                .zip(&r)
                .for_each(|(o, x)| *o = x / norm);
        }
        Basis {
            n,
            b,
            hadamard: false,
        }
    }

    /// `diag(s) B` with random signs s: QuaRot's randomized Hadamard rotation.
    pub fn signed(&self, rng: &mut StdRng) -> Vec<f64> {
        let n = self.n;
        let mut q = self.b.clone();
        for i in 0..n {
            if rng.random_bool(0.5) {
                q[i * n..(i + 1) * n].iter_mut().for_each(|v| *v = -*v);
            }
        }
        q
    }

    /// `Bᵀ diag(s) B` with random signs s and s₀ = +1: a rotation that maps the all-ones vector
    /// to itself, so a zero-mean vector stays zero-mean (what LayerNorm's centering needs).
    pub fn mean_preserving(&self, rng: &mut StdRng) -> Vec<f64> {
        let n = self.n;
        let s: Vec<f64> = (0..n)
            .map(|i| {
                if i == 0 || rng.random_bool(0.5) {
                    1.0
                } else {
                    -1.0
                }
            })
            .collect();
        let mut q = vec![0.0f64; n * n];
        // Q_ij = Σ_k B_ki s_k B_kj
        for (k, &sk) in s.iter().enumerate() {
            let row = &self.b[k * n..(k + 1) * n];
            for i in 0..n {
                let a = row[i] * sk;
                if a == 0.0 {
                    continue;
                }
                let qi = &mut q[i * n..(i + 1) * n];
                qi.iter_mut().zip(row).for_each(|(o, &bj)| *o += a * bj);
            }
        }
        q
    }
}

/// A standard normal draw (Box–Muller).
fn gaussian(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// A seeded generator for rotations (one stream per purpose, so adding one does not move the
/// others).
pub fn rng(seed: u64, purpose: u64) -> StdRng {
    StdRng::seed_from_u64(seed ^ purpose.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_hadamard(n: usize) {
        let h = hadamard(n).unwrap_or_else(|| panic!("no Hadamard matrix of order {n}"));
        assert!(h[..n].iter().all(|&v| v == 1), "first row of order {n}");
        for i in 0..n {
            for j in 0..n {
                let d: i64 = (0..n)
                    .map(|k| h[i * n + k] as i64 * h[j * n + k] as i64)
                    .sum();
                assert_eq!(
                    d,
                    if i == j { n as i64 } else { 0 },
                    "order {n} rows {i} {j}"
                );
            }
        }
    }

    #[test]
    fn hadamard_orders_models_use() {
        // Powers of two; Paley I (12 = 11 + 1, 20, 60); Paley II (36 = 2·18, 28 = 2·14);
        // products: SmolLM2's 576 = 36·16, 768 = 12·64, 896 = 28·32, 960 = 60·16.
        for n in [1, 2, 4, 16, 64, 12, 20, 60, 36, 28, 576, 768, 896, 960] {
            check_hadamard(n);
        }
        assert!(hadamard(6).is_none() && hadamard(9).is_none());
    }

    fn orthogonal(q: &[f64], n: usize) -> f64 {
        let mut worst = 0.0f64;
        for i in 0..n {
            for j in 0..n {
                let d: f64 = (0..n).map(|k| q[i * n + k] * q[j * n + k]).sum();
                worst = worst.max((d - f64::from(u8::from(i == j))).abs());
            }
        }
        worst
    }

    #[test]
    fn rotations_are_orthogonal_and_the_mean_preserving_one_fixes_ones() {
        for n in [64, 576, 6, 10] {
            let mut r = rng(7, 1);
            let b = Basis::new(n, &mut r);
            assert_eq!(b.hadamard, n % 4 == 0 || n < 4, "order {n}");
            assert!(orthogonal(&b.b, n) < 1e-12, "basis {n}");
            let q = b.signed(&mut r);
            assert!(orthogonal(&q, n) < 1e-12, "signed {n}");
            let m = b.mean_preserving(&mut r);
            assert!(orthogonal(&m, n) < 1e-12, "mean-preserving {n}");
            for i in 0..n {
                let row: f64 = m[i * n..(i + 1) * n].iter().sum();
                assert!((row - 1.0).abs() < 1e-12, "order {n}: Q·1 row {i} = {row}");
            }
        }
    }
}
