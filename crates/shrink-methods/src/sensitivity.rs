//! What storing one tensor as one candidate would cost (the inputs of [`crate::allocate`],
//! issue 17's `shrink auto`): for the ggml types, each weight quantized as llama-quantize would
//! (with the importance matrix when there is one) and the error weighed by the importance
//! matrix, `Σ_i Σ_j a_j (W_ij − Ŵ_ij)²` with `a_j` the mean of `x_j²` over the calibration text —
//! the diagonal of the layer Hessian, so an estimate of `E‖(W − Ŵ)x‖²`, the error the layer adds
//! to its output (the objective llama.cpp's importance-weighted quantizers minimise, and GPTQ's
//! `H = 2XXᵀ` restricted to its diagonal).

use shrink_formats::ggml::{self, GgmlType};

use crate::allocate::Candidate;
use crate::error::{MethodError, Result};
use crate::ggml_quantize::quantize_tensor;

/// The ggml types a row of `cols` elements can be stored as without a fallback (whole blocks),
/// among `types`.
pub fn fitting(types: &[GgmlType], cols: usize) -> Vec<GgmlType> {
    types
        .iter()
        .copied()
        .filter(|t| cols.is_multiple_of(t.block_size()) && t.can_dequantize())
        .collect()
}

/// The cost of storing `w` (`rows × cols`, row-major) as `ty`: its bytes, and the error
/// weighed by `importance` (`cols` values; all ones without it), the importance also guiding
/// the quantizer as llama-quantize uses it.
pub fn ggml_candidate(
    name: &str,
    ty: GgmlType,
    w: &[f32],
    rows: usize,
    cols: usize,
    importance: Option<&[f32]>,
) -> Result<Candidate> {
    if w.len() != rows * cols || importance.is_some_and(|a| a.len() != cols) {
        return Err(MethodError::Options(format!(
            "{name}: {} values for {rows} × {cols}, or an importance vector of another width",
            w.len()
        )));
    }
    let ne = [cols as u64, rows as u64];
    let bytes = quantize_tensor(name, ty, &ne, w, importance)?;
    let mut back = vec![0f32; w.len()];
    ggml::dequantize(ty, &bytes, &mut back).map_err(|source| MethodError::Format {
        name: name.to_string(),
        source,
    })?;
    let mut loss = 0f64;
    for (row, q) in w.chunks(cols).zip(back.chunks(cols)) {
        for (j, (&a, &b)) in row.iter().zip(q).enumerate() {
            let d = f64::from(a - b);
            loss += importance.map_or(1.0, |imp| f64::from(imp[j])) * d * d;
        }
    }
    Ok(Candidate {
        bytes: bytes.len() as u64,
        loss,
    })
}

/// One tensor of a GGUF and what each candidate would cost it.
#[derive(Debug, Clone)]
pub struct TensorCosts {
    /// The GGUF tensor name.
    pub name: String,
    /// Its ggml dims.
    pub ne: Vec<u64>,
    /// Each candidate type and its cost; a tensor llama.cpp does not quantize (a norm, a 1-D
    /// tensor) has one: its stored type, at no loss.
    pub candidates: Vec<(GgmlType, Candidate)>,
}

/// The costs of every tensor of `g` under each of `types` that fits its rows, one tensor read
/// at a time, weighed by `imatrix` where it has an entry for the tensor (an unweighted error
/// otherwise).
pub fn ggml_costs(
    g: &shrink_io::GgufFile,
    types: &[GgmlType],
    imatrix: Option<&shrink_io::imatrix::Imatrix>,
) -> Result<Vec<TensorCosts>> {
    let mut out = Vec::with_capacity(g.tensors.len());
    for info in &g.tensors {
        let stored = Candidate {
            bytes: info.bytes,
            loss: 0.0,
        };
        let cols = info.ne[0] as usize;
        let rows = (info.elements() as usize) / cols.max(1);
        let fit = fitting(types, cols);
        let quantized = crate::ggml_mix::allows_quantization(&info.name, &info.ne, true);
        if !quantized || fit.is_empty() {
            out.push(TensorCosts {
                name: info.name.clone(),
                ne: info.ne.clone(),
                candidates: vec![(info.ty, stored)],
            });
            continue;
        }
        let w = g.read_f32(info)?;
        let imp = imatrix
            .and_then(|m| m.entries.get(&info.name))
            .filter(|v| v.len() == cols)
            .map(Vec::as_slice);
        let candidates = fit
            .iter()
            .map(|&t| Ok((t, ggml_candidate(&info.name, t, &w, rows, cols, imp)?)))
            .collect::<Result<Vec<_>>>()?;
        g.release(info);
        out.push(TensorCosts {
            name: info.name.clone(),
            ne: info.ne.clone(),
            candidates,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic weights with heavy-tailed rows, as trained weights have.
    fn weights(rows: usize, cols: usize) -> Vec<f32> {
        let mut s = 0x2545_f491_4f6c_dd1du64;
        (0..rows * cols)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let u = (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
                (u * u * u * 8.0) as f32
            })
            .collect()
    }

    #[test]
    fn more_bits_cost_more_bytes_and_lose_less() {
        let (rows, cols) = (16, 512);
        let w = weights(rows, cols);
        let types = [
            GgmlType::Q2_K,
            GgmlType::Q3_K,
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
            GgmlType::Q8_0,
        ];
        let c: Vec<Candidate> = types
            .iter()
            .map(|&t| ggml_candidate("w", t, &w, rows, cols, None).unwrap())
            .collect();
        for (k, pair) in c.windows(2).enumerate() {
            assert!(pair[0].bytes < pair[1].bytes, "{:?}", types[k]);
            assert!(pair[0].loss > pair[1].loss, "{:?}: {pair:?}", types[k]);
        }
        // Bytes are the type's exact storage.
        assert_eq!(c[5].bytes, (rows * cols / 32 * 34) as u64);
    }

    #[test]
    fn the_importance_weighs_the_error_and_guides_the_quantizer() {
        let (rows, cols) = (8, 256);
        let w = weights(rows, cols);
        // The calibration inputs live on the first 16 columns.
        let imp: Vec<f32> = (0..cols)
            .map(|j| if j < 16 { 100.0 } else { 0.01 })
            .collect();
        let guided = ggml_candidate("w", GgmlType::Q3_K, &w, rows, cols, Some(&imp)).unwrap();
        // The same weighted error of the quantizer that ignores the importance.
        let mut q = vec![0u8; GgmlType::Q3_K.row_bytes(w.len()).unwrap()];
        ggml::quantize(GgmlType::Q3_K, &w, &mut q).unwrap();
        let mut back = vec![0f32; w.len()];
        ggml::dequantize(GgmlType::Q3_K, &q, &mut back).unwrap();
        let blind: f64 = w
            .iter()
            .zip(&back)
            .enumerate()
            .map(|(k, (a, b))| f64::from(imp[k % cols]) * f64::from(a - b).powi(2))
            .sum();
        assert!(guided.loss < blind, "{} !< {blind}", guided.loss);
    }

    #[test]
    fn only_whole_blocks_fit() {
        let all = [
            GgmlType::Q4_K,
            GgmlType::Q5_0,
            GgmlType::Q8_0,
            GgmlType::IQ4_NL,
        ];
        // SmolLM2's 576-wide rows: no 256-element K block.
        assert_eq!(
            fitting(&all, 576),
            vec![GgmlType::Q5_0, GgmlType::Q8_0, GgmlType::IQ4_NL]
        );
        assert_eq!(fitting(&all, 1536), all.to_vec());
    }
}
