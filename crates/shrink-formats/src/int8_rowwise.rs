//! LLM.int8()'s weight format (bitsandbytes `int8_vectorwise_quant`): one int8 row per output
//! feature with its absmax ("SCB") in float32.
//!
//! The weight is first rounded to float16 (bitsandbytes quantizes the fp16 weight), then
//! `q = round_half_even(w · (127 / SCB))` with `SCB = max |row|`; dequantized as
//! `q · SCB · (1/127)` (bitsandbytes `int8_vectorwise_dequant`, same operation order).

use crate::error::FormatError;

/// 1/127 as bitsandbytes multiplies by it.
pub const INV_127: f32 = 7.874_016e-3;

/// A weight in LLM.int8()'s row-wise int8 format.
#[derive(Debug, Clone, PartialEq)]
pub struct RowwiseInt8 {
    /// Rows (output features).
    pub rows: usize,
    /// Columns (input features).
    pub cols: usize,
    /// Codes, row-major.
    pub q: Vec<i8>,
    /// Absmax of each row of the float16-rounded weight.
    pub scb: Vec<f32>,
}

/// Quantize the row-major `[rows, cols]` weight `w` as bitsandbytes does.
pub fn quantize(w: &[f32], rows: usize, cols: usize) -> Result<RowwiseInt8, FormatError> {
    if w.len() != rows * cols {
        return Err(FormatError::ShapeMismatch {
            format: "int8-rowwise",
            rows,
            cols,
            expected: rows * cols,
            actual: w.len(),
        });
    }
    crate::int::check_finite(w, cols, "int8-rowwise")?;
    use half::slice::HalfFloatSliceExt;
    use rayon::prelude::*;
    let mut q = vec![0i8; w.len()];
    let mut scb = vec![0f32; rows];
    let row = |(h16, h): &mut (Vec<half::f16>, Vec<f32>),
               ((row, qr), s): ((&[f32], &mut [i8]), &mut f32)| {
        // float16 rounding through half's slice conversion (F16C when the CPU has it).
        h16.convert_from_f32_slice(row);
        h16.convert_to_f32_slice(h);
        let absmax = h.iter().fold(0f32, |m, v| m.max(v.abs()));
        *s = absmax;
        if absmax == 0.0 {
            return;
        }
        let k = 127.0 / absmax;
        for (o, &v) in qr.iter_mut().zip(h.iter()) {
            // |v·k| ≤ 127: adding and subtracting 1.5·2²³ rounds half to even and vectorises
            // (f32::round_ties_even is a library call on baseline x86-64).
            *o = (((v * k) + 12_582_912.0) - 12_582_912.0).clamp(-127.0, 127.0) as i8;
        }
    };
    let init = || (vec![half::f16::ZERO; cols], vec![0f32; cols]);
    if w.len() >= 1 << 16 {
        w.par_chunks(cols)
            .zip(q.par_chunks_mut(cols))
            .zip(scb.par_iter_mut())
            .for_each_init(init, row);
    } else {
        let mut buf = init();
        for job in w.chunks(cols).zip(q.chunks_mut(cols)).zip(scb.iter_mut()) {
            row(&mut buf, job);
        }
    }
    Ok(RowwiseInt8 { rows, cols, q, scb })
}

impl RowwiseInt8 {
    /// Float32 values, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.q.len()];
        for ((o, q), &s) in out
            .chunks_mut(self.cols)
            .zip(self.q.chunks(self.cols))
            .zip(&self.scb)
        {
            for (o, &q) in o.iter_mut().zip(q) {
                *o = q as f32 * s * INV_127;
            }
        }
        out
    }

    /// Bytes stored: one per weight plus a float32 per row.
    pub fn stored_bytes(&self) -> usize {
        self.q.len() + 4 * self.scb.len()
    }

    /// Stored bits per weight.
    pub fn bits_per_weight(&self) -> f64 {
        self.stored_bytes() as f64 * 8.0 / self.q.len().max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_use_their_absmax_and_round_half_even() {
        let w = [1.0f32, -0.5, 0.25, 0.0, 0.0, 0.0];
        let t = quantize(&w, 2, 3).unwrap();
        assert_eq!(t.scb, vec![1.0, 0.0]);
        // 0.25 · 127 = 31.75 → 32; -0.5 · 127 = -63.5 → -64 (ties to even).
        assert_eq!(t.q, vec![127, -64, 32, 0, 0, 0]);
        let d = t.dequantize();
        assert_eq!(d[0], 127.0 * 1.0 * INV_127);
        assert_eq!(&d[3..], &[0.0, 0.0, 0.0]);
        assert!((t.bits_per_weight() - (6.0 + 8.0) * 8.0 / 6.0).abs() < 1e-12);
        assert!(quantize(&[f32::NAN, 0.0], 1, 2).is_err());
    }
}
