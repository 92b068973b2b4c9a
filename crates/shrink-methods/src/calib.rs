//! Calibration samples: `n` windows of `len` tokens drawn from a tokenized text, as GPTQ's
//! reference draws them (a uniformly random start per sample, seeded).

use rand::{Rng, SeedableRng};

use crate::error::{MethodError, Result};

/// How many calibration samples, how long, and the seed that picks them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CalibSpec {
    /// Number of samples (default 128).
    pub samples: usize,
    /// Tokens per sample (default 512).
    pub seqlen: usize,
    /// Seed of the random starts.
    pub seed: u64,
}

impl Default for CalibSpec {
    fn default() -> Self {
        CalibSpec {
            samples: 128,
            seqlen: 512,
            seed: 0,
        }
    }
}

/// `spec.samples` windows of `spec.seqlen` consecutive tokens of `ids`, each starting at a
/// uniformly random offset (the same for the same seed). Errors when the text is shorter than
/// one sample or the spec asks for nothing.
pub fn draw_samples(ids: &[u32], spec: CalibSpec) -> Result<Vec<Vec<u32>>> {
    if spec.samples == 0 || spec.seqlen == 0 {
        return Err(MethodError::Options(
            "--calib-samples and --calib-seqlen must be at least 1".into(),
        ));
    }
    if ids.len() < spec.seqlen {
        return Err(MethodError::Options(format!(
            "the calibration text has {} tokens, fewer than one sample of {} (--calib-seqlen)",
            ids.len(),
            spec.seqlen
        )));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(spec.seed);
    let last = ids.len() - spec.seqlen;
    Ok((0..spec.samples)
        .map(|_| {
            let i = rng.random_range(0..=last);
            ids[i..i + spec.seqlen].to_vec()
        })
        .collect())
}

/// Consecutive non-overlapping windows of `spec.seqlen` tokens from the start of `ids`, at
/// most `spec.samples` of them (llama.cpp's imatrix chunks); errors as [`draw_samples`].
pub fn consecutive_chunks(ids: &[u32], spec: CalibSpec) -> Result<Vec<Vec<u32>>> {
    draw_samples(ids, CalibSpec { samples: 1, ..spec })?;
    Ok(ids
        .chunks_exact(spec.seqlen)
        .take(spec.samples)
        .map(<[u32]>::to_vec)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_windows_of_the_text_and_repeatable() {
        let ids: Vec<u32> = (0..1000).collect();
        let spec = CalibSpec {
            samples: 5,
            seqlen: 100,
            seed: 7,
        };
        let a = draw_samples(&ids, spec).unwrap();
        assert_eq!(a, draw_samples(&ids, spec).unwrap());
        assert_eq!(a.len(), 5);
        for s in &a {
            assert_eq!(s.len(), 100);
            assert!(s.windows(2).all(|w| w[1] == w[0] + 1));
        }
        let b = draw_samples(&ids, CalibSpec { seed: 8, ..spec }).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn chunks_are_consecutive() {
        let ids: Vec<u32> = (0..1000).collect();
        let c = consecutive_chunks(
            &ids,
            CalibSpec {
                samples: 50,
                seqlen: 300,
                seed: 0,
            },
        )
        .unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!(c[1][0], 300);
    }

    #[test]
    fn text_shorter_than_one_sample_is_refused() {
        let ids: Vec<u32> = (0..50).collect();
        let e = draw_samples(&ids, CalibSpec::default()).unwrap_err();
        assert!(e.to_string().contains("fewer than one sample"), "{e}");
    }
}
