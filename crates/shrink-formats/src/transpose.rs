//! Row-major matrix transposition: the one layout change float weights need on their way
//! between stored forms (GPT-2's Conv1D `[in, out]`, a transposed quantized layout, the
//! `[in, out]` weights `shrink-models` multiplies) — one home for it.

/// `src` (`[rows, cols]`, row-major) transposed: `[cols, rows]`, in tiles of 32 × 32 on the
/// rayon pool. candle's strided copy moves one value at a time and measured 21 % of loading a
/// float32 SmolLM2 (`perf`; shrink-models holds every float Linear weight transposed).
pub fn transpose(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    use rayon::prelude::*;
    const T: usize = 32;
    assert_eq!(src.len(), rows * cols, "transpose: {rows} × {cols} values");
    let mut dst = vec![0f32; rows * cols];
    // Each task writes T whole rows of the result (T columns of the source).
    dst.par_chunks_mut(T * rows.max(1))
        .enumerate()
        .for_each(|(cb, out)| {
            let c0 = cb * T;
            let cn = out.len() / rows.max(1);
            for r0 in (0..rows).step_by(T) {
                let rn = T.min(rows - r0);
                for c in 0..cn {
                    let o = &mut out[c * rows + r0..c * rows + r0 + rn];
                    for (i, v) in o.iter_mut().enumerate() {
                        *v = src[(r0 + i) * cols + c0 + c];
                    }
                }
            }
        });
    dst
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_moves_every_value_for_odd_shapes() {
        for (rows, cols) in [(1, 1), (3, 70), (33, 65), (64, 32), (100, 1)] {
            let src: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
            let t = transpose(&src, rows, cols);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(
                        t[c * rows + r],
                        src[r * cols + c],
                        "{rows}x{cols} at {r},{c}"
                    );
                }
            }
        }
    }
}
