//! `shrink prune` on every architecture shrink runs (Llama family, GPT-2's Conv1D, GPT-NeoX's
//! fused QKV, BERT / DistilBERT): magnitude, Wanda and SparseGPT, unstructured and 2:4 — each
//! output loads back with exactly the zeros the report counts in the block linears, every other
//! tensor unchanged, and the calibrated methods closer to the dense model than magnitude
//! pruning. Then bad input, joint quantization, and quantizing a pruned checkpoint.

mod common;
use common::*;

use candle_core::Tensor;
use shrink_io::Checkpoint;
use shrink_models::{Architecture, BertClassifier, Model};

const ARCHS: [&str; 7] = [
    "tiny-llama",
    "tiny-mistral",
    "tiny-qwen2",
    "tiny-gpt2",
    "tiny-gpt_neox",
    "tiny-bert_cls",
    "tiny-distilbert_cls",
];

fn run(args: &[&str]) -> serde_json::Value {
    let r = shrink(args);
    assert!(
        r.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    serde_json::from_slice(&r.stdout).unwrap()
}

/// The model's outputs on three 40-byte pieces of `text`: a decoder's logits, an encoder's
/// final hidden states.
fn outputs(dir: &std::path::Path, text: &[u8]) -> Vec<f32> {
    let ckpt = Checkpoint::open(dir).unwrap();
    let flat = |t: Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
    let mut out = Vec::new();
    let arch = Architecture::from_checkpoint(&ckpt).unwrap();
    for s in 0..3 {
        let ids: Vec<u32> = text[s * 997..s * 997 + 40]
            .iter()
            .map(|&b| b as u32)
            .collect();
        match &arch {
            Architecture::Decoder(_) => {
                out.extend(flat(Model::load(&ckpt).unwrap().forward(&ids, None).unwrap()))
            }
            Architecture::Encoder(cfg) => {
                let w = shrink_models::WeightLoader::new(&ckpt, None, &[]);
                let m = BertClassifier::load(cfg.clone(), &w).unwrap();
                out.extend(flat(m.encode(&ids).unwrap()));
            }
        }
    }
    out
}

/// RMSE of `b` against `a`, relative to `a`'s RMS.
fn rel_rmse(a: &[f32], b: &[f32]) -> f64 {
    let (e, r) = a.iter().zip(b).fold((0f64, 0f64), |(e, r), (&x, &y)| {
        (e + ((x - y) as f64).powi(2), r + (x as f64).powi(2))
    });
    (e / r).sqrt()
}

/// The block linears of `dir`: (weight name, [out, in] values, out, in).
fn linears(dir: &std::path::Path) -> Vec<(String, Vec<f32>, usize, usize)> {
    let ckpt = Checkpoint::open(dir).unwrap();
    let arch = Architecture::from_checkpoint(&ckpt).unwrap();
    arch.block_linears()
        .iter()
        .map(|l| {
            let (v, _) = ckpt.read_f32(&l.weight).unwrap();
            let v = if l.conv1d {
                transpose(&v, l.in_features, l.out_features)
            } else {
                v
            };
            (l.weight.clone(), v, l.out_features, l.in_features)
        })
        .collect()
}

fn zeros(v: &[f32]) -> usize {
    v.iter().filter(|&&x| x == 0.0).count()
}

#[test]
fn every_method_prunes_every_architecture() {
    let tmp = tempfile::tempdir().unwrap();
    let calib = calib_text(tmp.path(), 3000);
    let c = calib.to_str().unwrap();
    let text = std::fs::read(&calib).unwrap();
    let cal = [
        "--calib",
        c,
        "--calib-format",
        "raw",
        "--calib-samples",
        "16",
        "--calib-seqlen",
        "48",
        "--json",
    ];
    for arch in ARCHS {
        let model = fixture_with_tokenizer(tmp.path(), arch);
        let m = model.to_str().unwrap();
        let base = outputs(&model, &text);
        let base_linears = linears(&model);
        let input = Checkpoint::open(&model).unwrap();
        for pattern in [None, Some("2:4")] {
            let mut errs = Vec::new();
            for method in ["magnitude", "wanda", "sparsegpt"] {
                let dir = tmp
                    .path()
                    .join(format!("{arch}-{method}-{}", pattern.unwrap_or("50")));
                let o = dir.to_str().unwrap();
                let mut args = vec!["prune", m, "-o", o, "--method", method];
                match pattern {
                    Some(p) => args.extend(["--pattern", p]),
                    None => args.extend(["--sparsity", "0.5"]),
                }
                args.extend(cal);
                let report = run(&args);
                let what = format!("{arch} {method} {pattern:?}");
                assert_eq!(report["quantized_tensors"], base_linears.len(), "{what}");
                // The zeros the report counts are in the file, in the pattern asked for.
                let out = linears(&dir);
                let (mut z, mut n) = (0, 0);
                for ((name, v, rows, cols), (_, w, ..)) in out.iter().zip(&base_linears) {
                    z += zeros(v);
                    n += v.len();
                    match (pattern, method) {
                        (Some(_), _) => {
                            for g in v.chunks(4) {
                                assert!(zeros(g) >= 2, "{what}: {name} not 2:4");
                            }
                        }
                        // Magnitude: half of the tensor; Wanda: half of every row.
                        (None, "magnitude") => assert_eq!(zeros(v), rows * cols / 2, "{name}"),
                        (None, "wanda") => {
                            for r in v.chunks(*cols) {
                                assert_eq!(zeros(r), cols / 2, "{what}: {name}");
                            }
                        }
                        // SparseGPT: half of each block of columns, and one more (its `<=`).
                        _ => assert!(zeros(v) >= rows * cols / 2, "{what}: {name}"),
                    }
                    if method != "sparsegpt" {
                        // No update: the kept weights are the input's.
                        for (a, b) in v.iter().zip(w) {
                            assert!(*a == 0.0 || a == b, "{what}: {name}");
                        }
                    }
                }
                let s = report["sparsity"].as_f64().unwrap();
                assert!((s - z as f64 / n as f64).abs() < 1e-12, "{what}: {s}");
                // Every other tensor is the input's.
                let pruned = Checkpoint::open(&dir).unwrap();
                for t in input.tensors() {
                    if !base_linears.iter().any(|l| l.0 == t.name) {
                        assert_eq!(
                            input.read_f32(&t.name).unwrap(),
                            pruned.read_f32(&t.name).unwrap(),
                            "{what}: {}",
                            t.name
                        );
                    }
                }
                let e = rel_rmse(&base, &outputs(&dir, &text));
                eprintln!("{what:44} relative RMSE of outputs {e:.4}");
                assert!(e.is_finite() && e > 0.0, "{what}");
                errs.push(e);
            }
            // On text like the calibration's, SparseGPT's update beats both masks alone (on these
            // random weights Wanda's mask is not always better than magnitude's).
            assert!(
                errs[2] < errs[0] && errs[2] < errs[1],
                "{arch} {pattern:?}: magnitude, wanda, sparsegpt {errs:?}"
            );
        }
    }
}
