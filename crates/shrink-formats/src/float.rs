//! float32 ↔ float16 / bfloat16 conversions of whole slices (little-endian bytes).

use half::{bf16, f16};

/// A floating-point storage type shrink reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FloatType {
    /// IEEE float32.
    F32,
    /// IEEE float16.
    F16,
    /// bfloat16 (the top half of a float32).
    BF16,
}

impl FloatType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            FloatType::F32 => 4,
            FloatType::F16 | FloatType::BF16 => 2,
        }
    }

    /// Lower-case name as the CLI and reports spell it.
    pub fn name(self) -> &'static str {
        match self {
            FloatType::F32 => "f32",
            FloatType::F16 => "f16",
            FloatType::BF16 => "bf16",
        }
    }

    /// The name PyTorch and config.json use (`float32`, `float16`, `bfloat16`).
    pub fn torch_name(self) -> &'static str {
        match self {
            FloatType::F32 => "float32",
            FloatType::F16 => "float16",
            FloatType::BF16 => "bfloat16",
        }
    }

    /// Parse `f32`, `f16`/`fp16`/`float16`, `bf16`/`bfloat16`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Some(FloatType::F32),
            "f16" | "fp16" | "float16" | "half" => Some(FloatType::F16),
            "bf16" | "bfloat16" => Some(FloatType::BF16),
            _ => None,
        }
    }
}

/// Decode little-endian bytes of `ty` into float32 values; `dst.len()` elements are read.
pub fn decode(ty: FloatType, src: &[u8], dst: &mut [f32]) {
    let n = dst.len();
    assert!(src.len() >= n * ty.size(), "decode: source too short");
    match ty {
        FloatType::F32 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        FloatType::F16 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        FloatType::BF16 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
    }
}

/// Encode float32 values as little-endian bytes of `ty` (round to nearest even).
pub fn encode(ty: FloatType, src: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(src.len() * ty.size());
    match ty {
        FloatType::F32 => src
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        FloatType::F16 => src
            .iter()
            .for_each(|v| out.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
        FloatType::BF16 => src
            .iter()
            .for_each(|v| out.extend_from_slice(&bf16::from_f32(*v).to_le_bytes())),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_is_exact_for_representable_values() {
        let vals = [0.0f32, -1.5, 2.0, 65504.0, -0.000061035156];
        for ty in [FloatType::F32, FloatType::F16] {
            let mut back = vec![0f32; vals.len()];
            decode(ty, &encode(ty, &vals), &mut back);
            assert_eq!(back, vals, "{ty:?}");
        }
        let bvals = [0.0f32, -1.5, 2.0, 3.0e38, 1.0e-38];
        let mut back = vec![0f32; bvals.len()];
        decode(FloatType::BF16, &encode(FloatType::BF16, &bvals), &mut back);
        for (a, b) in bvals.iter().zip(&back) {
            assert!((a - b).abs() <= a.abs() / 128.0);
        }
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        // 1 + 2^-8 is halfway between two bf16 values: ties go to the even one (1.0).
        let v = 1.0f32 + 2f32.powi(-8);
        let mut back = [0f32];
        decode(FloatType::BF16, &encode(FloatType::BF16, &[v]), &mut back);
        assert_eq!(back[0], 1.0);
    }
}
