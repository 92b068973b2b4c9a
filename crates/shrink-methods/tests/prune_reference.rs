//! SparseGPT, Wanda and magnitude pruning against llm-compressor's own code: the masks and the
//! updated kept weights that its `sgpt_sparsify.sparsify_weight`, `wanda_sparsify.sparsify_weight`
//! and the magnitude modifier's unstructured mask creator produced on a fixed layer and
//! calibration batch (`scripts/make-prune-reference.py`), for SparseGPT unstructured (two
//! sparsities and block sizes) and N:M (2:4, 4:8), Wanda unstructured and 2:4, and magnitude.

use safetensors::SafeTensors;
use shrink_methods::hessian::PreparedHessian;
use shrink_methods::sparsegpt::{self, SparseGptSpec};
use shrink_methods::sparsity::{self, Pattern};

/// Written by `scripts/make-prune-reference.py` (llmcompressor 0.14.0.1, torch 2.14.0, numpy
/// 2.4.6, float32 on CPU).
const REFERENCE: &[u8] = include_bytes!("data/prune_reference.safetensors");

const ROWS: usize = 64;
const COLS: usize = 256;

/// name, pattern, block size (as the script's `SGPT`).
const SGPT: [(&str, Pattern, usize); 4] = [
    ("sgpt_u50", Pattern::Unstructured(0.5), 128),
    ("sgpt_u30_b64", Pattern::Unstructured(0.3), 64),
    ("sgpt_2of4", Pattern::NofM { n: 2, m: 4 }, 128),
    ("sgpt_4of8", Pattern::NofM { n: 4, m: 8 }, 128),
];

/// Kept weights: shrink's lazy block update `W[:, b1..] −= Err · U` goes through the `gemm`
/// crate, the reference's through torch's f32 matmul, which may sum the block's terms in
/// another order (within a block both do the same rank-1 f32 updates one column at a time).
/// Measured (x86-64 with AVX-512 and FMA, torch 2.14.0's CPU matmul): every kept weight of
/// every case bit-identical, of largest |w| 0.207 and updated by up to 0.113 (mean 0.009) from
/// W; this allows some 70 f32 steps at that size for another CPU's kernels.
const KEPT_ATOL: f32 = 1e-6;

/// The loss: shrink sums in f64, the reference in f32 (per row, per block, then over rows).
/// Measured relative difference: at most 7.9e-8 (2:4).
const LOSS_RTOL: f64 = 1e-6;

struct Reference {
    bytes: SafeTensors<'static>,
}

impl Reference {
    fn load() -> Self {
        Reference {
            bytes: SafeTensors::deserialize(REFERENCE).unwrap(),
        }
    }

    fn bytes(&self, name: &str) -> Vec<u8> {
        self.bytes
            .tensor(name)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .data()
            .to_vec()
    }

    fn f32s(&self, name: &str) -> Vec<f32> {
        self.bytes(name)
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    fn w(&self) -> Vec<f32> {
        self.f32s("W")
    }

    /// Wanda's row scalars `Σ_t x_tj² / samples`, as `wanda` takes them.
    fn s(&self) -> Vec<f64> {
        self.f32s("S").into_iter().map(f64::from).collect()
    }

    /// A case's mask, `true` where pruned (bit-packed along each row, LSB first).
    fn mask(&self, name: &str) -> Vec<bool> {
        let packed = self.bytes(&format!("{name}.mask"));
        assert_eq!(packed.len(), ROWS * COLS / 8, "{name}");
        let bytes_per_row = COLS / 8;
        (0..ROWS * COLS)
            .map(|k| {
                let (r, c) = (k / COLS, k % COLS);
                packed[r * bytes_per_row + c / 8] >> (c % 8) & 1 == 1
            })
            .collect()
    }

    /// sgpt's upper Cholesky factor of the dampened `H⁻¹` (stored as its upper triangle, row
    /// by row) in a [`PreparedHessian`] for the columns in order, the dead columns those whose
    /// inputs were all 0.
    fn prepared(&self) -> PreparedHessian {
        let t = self.f32s("Hinv.upper");
        assert_eq!(t.len(), COLS * (COLS + 1) / 2);
        let mut u = vec![0f32; COLS * COLS];
        let mut k = 0;
        for i in 0..COLS {
            for j in i..COLS {
                u[i * COLS + j] = t[k];
                k += 1;
            }
        }
        let dead: Vec<bool> = self.s().iter().map(|&v| v == 0.0).collect();
        let dead_cols: Vec<usize> = (0..COLS).filter(|&c| dead[c]).collect();
        assert_eq!(dead_cols, [5], "the dead column");
        PreparedHessian {
            n: COLS,
            perm: (0..COLS).collect(),
            dead,
            u,
            damp: 0.01,
            p: None,
        }
    }
}

/// Where two masks differ, as `(row, col)`.
fn mask_diff(ours: &[bool], want: &[bool]) -> Vec<(usize, usize)> {
    (0..ROWS * COLS)
        .filter(|&k| ours[k] != want[k])
        .map(|k| (k / COLS, k % COLS))
        .collect()
}

/// shrink's SparseGPT, fed the reference's own `H⁻¹` factor, prunes exactly the reference's
/// weights in every case, its kept weights agree up to f32 summation order, and so does the loss.
#[test]
fn sparsegpt_equals_the_reference_given_its_inverse_hessian_factor() {
    let r = Reference::load();
    let (w, hp) = (r.w(), r.prepared());
    let mut failures = Vec::new();
    for (name, pattern, block_size) in SGPT {
        let spec = SparseGptSpec {
            block_size,
            ..SparseGptSpec::new(pattern)
        };
        let ours = sparsegpt::prune(&w, ROWS, COLS, &hp, &spec);
        let want = r.mask(name);
        let off = mask_diff(&ours.mask, &want);
        if !off.is_empty() {
            failures.push(format!(
                "{name}: {} mask entries differ (row, col): {:?}",
                off.len(),
                &off[..off.len().min(20)]
            ));
            continue;
        }
        for (k, (&v, &m)) in ours.weight.iter().zip(&ours.mask).enumerate() {
            assert!(!m || v == 0.0, "{name}: pruned weight {k} is {v}");
        }
        // The reference's kept weights of the even rows, row-major.
        let ref_kept = r.f32s(&format!("{name}.kept"));
        let our_kept: Vec<f32> = (0..ROWS)
            .step_by(2)
            .flat_map(|row| row * COLS..(row + 1) * COLS)
            .filter(|&k| !want[k])
            .map(|k| ours.weight[k])
            .collect();
        assert_eq!(our_kept.len(), ref_kept.len(), "{name}: kept weights");
        let (dev, big) = our_kept
            .iter()
            .zip(&ref_kept)
            .fold((0f32, 0f32), |(d, b), (a, e)| {
                (d.max((a - e).abs()), b.max(e.abs()))
            });
        let ref_loss = r.f32s(&format!("{name}.loss"))[0] as f64;
        let loss_dev = (ours.loss - ref_loss).abs() / ref_loss;
        if dev > KEPT_ATOL {
            failures.push(format!(
                "{name}: a kept weight differs by {dev} (largest {big})"
            ));
        }
        if loss_dev > LOSS_RTOL {
            failures.push(format!(
                "{name}: loss {} vs the reference's {ref_loss}",
                ours.loss
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Wanda's masks, from the reference's row scalars (a per-column constant factor away from
/// `Σ_t x_tj²`, which does not change any row's ranking), are the reference's exactly.
#[test]
fn wanda_masks_equal_the_reference() {
    let r = Reference::load();
    let (w, s) = (r.w(), r.s());
    for (name, pattern) in [
        ("wanda_u50", Pattern::Unstructured(0.5)),
        ("wanda_2of4", Pattern::NofM { n: 2, m: 4 }),
    ] {
        let ours = sparsity::wanda(&w, COLS, &s, pattern);
        let off = mask_diff(&ours, &r.mask(name));
        assert!(
            off.is_empty(),
            "{name}: {} entries differ: {off:?}",
            off.len()
        );
    }
}

/// Magnitude pruning's unstructured mask is the magnitude modifier's exactly.
#[test]
fn magnitude_mask_equals_the_reference() {
    let r = Reference::load();
    let w = r.w();
    let ours = sparsity::magnitude(&w, COLS, Pattern::Unstructured(0.5));
    let off = mask_diff(&ours, &r.mask("magnitude_u50"));
    assert!(off.is_empty(), "{} entries differ: {off:?}", off.len());
}
