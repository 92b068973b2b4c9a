//! What compression did to the weights: per-layer error statistics and histograms.

use serde::Serialize;

/// Error of one compressed weight against its original.
#[derive(Debug, Clone, Serialize)]
pub struct WeightError {
    /// HF weight name.
    pub name: String,
    /// Mean squared error.
    pub mse: f64,
    /// Signal-to-quantization-noise ratio, dB (10·log10 Σw² / Σ(w−w')²); infinite when exact.
    pub sqnr_db: f64,
    /// Largest |w − w'|.
    pub max_abs: f64,
}

/// Error statistics of `compressed` against `original` (same length).
pub fn weight_error(name: &str, original: &[f32], compressed: &[f32]) -> WeightError {
    let (mut se, mut s2, mut max) = (0f64, 0f64, 0f64);
    for (a, b) in original.iter().zip(compressed) {
        let d = (*a as f64) - (*b as f64);
        se += d * d;
        s2 += (*a as f64) * (*a as f64);
        max = max.max(d.abs());
    }
    let n = original.len().max(1) as f64;
    let sqnr_db = if se == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (s2 / se).log10()
    };
    WeightError {
        name: name.to_string(),
        mse: se / n,
        sqnr_db,
        max_abs: max,
    }
}

/// Counts of `values` in `bins` equal-width bins over [lo, hi] (values outside are clamped).
pub fn histogram(values: &[f32], lo: f32, hi: f32, bins: usize) -> Vec<u64> {
    let mut h = vec![0u64; bins];
    let w = (hi - lo) / bins as f32;
    for &v in values {
        let i = if w > 0.0 {
            ((v - lo) / w).floor() as isize
        } else {
            0
        };
        h[i.clamp(0, bins as isize - 1) as usize] += 1;
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_statistics() {
        let e = weight_error("w", &[1.0, -2.0, 3.0], &[1.0, -2.5, 3.0]);
        assert!((e.mse - 0.25 / 3.0).abs() < 1e-12);
        assert!((e.max_abs - 0.5).abs() < 1e-12);
        assert!((e.sqnr_db - 10.0 * (14.0f64 / 0.25).log10()).abs() < 1e-9);
        assert!(weight_error("w", &[1.0], &[1.0]).sqnr_db.is_infinite());
    }

    #[test]
    fn histogram_counts_and_clamps() {
        assert_eq!(
            histogram(&[-1.0, 0.1, 0.6, 0.9, 5.0], 0.0, 1.0, 2),
            vec![2, 3]
        );
    }
}
