//! QLoRA on tiny NF4 models (Llama and GPT-2's Conv1D layout): the pairs' gradient against
//! finite differences of the loss, training bringing the quantized model closer to the float
//! one, the runtime running the written PEFT adapter beside the stored NF4 layers exactly as
//! training ran it, and `--merge`'s requantized model.

mod common;
use common::{fixture, ids};

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use shrink_formats::float::FloatType;
use shrink_formats::nf4::{Fp4Kind, Nf4Spec};
use shrink_io::peft::Adapter;
use shrink_io::Checkpoint;
use shrink_methods::per_tensor::{write_encoded, Job, QuantizerEncoder};
use shrink_methods::pipeline::Silent as Quiet;
use shrink_methods::rtn::Rtn;
use shrink_methods::select::Selection;
use shrink_models::Model;
use shrink_train::distill::{logits_no_graph, Silent, Windows};
use shrink_train::lora::{self, LoraSpec};
use shrink_train::reparam::{self, FinetuneConfig, Reparam};

const NF4: Rtn = Rtn::Nf4(Nf4Spec {
    kind: Fp4Kind::Nf4,
    block_size: 32,
    double_quant: false,
});

/// `fixture` quantized to NF4 (blocks of 32) into `dir`.
fn nf4(dir: &Path, name: &str) -> PathBuf {
    let ckpt = Checkpoint::open(fixture(name)).unwrap();
    let out = dir.join(format!("{name}-nf4"));
    let job = Job {
        ckpt: &ckpt,
        output: &out,
        selection: &Selection::default(),
        dense_dtype: FloatType::F32,
        progress: &Quiet,
    };
    let enc = QuantizerEncoder {
        method: Box::new(NF4),
        dense_dtype: FloatType::F32,
    };
    write_encoded(&job, &enc).unwrap();
    out
}

fn spec() -> LoraSpec {
    LoraSpec {
        r: 4,
        alpha: 8.0,
        targets: vec![],
        seed: 1,
    }
}

#[test]
fn the_pair_gradient_matches_finite_differences() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["tiny-llama", "tiny-gpt2"] {
        let base = Checkpoint::open(nf4(tmp.path(), name)).unwrap();
        let teacher = Model::load(&Checkpoint::open(fixture(name)).unwrap()).unwrap();
        let (mut student, mut pairs) = lora::load(&base, &spec()).unwrap();
        // B = 0 at the start makes dL/dA vanish: give B values first.
        for p in pairs.iter_mut() {
            let mut th = p.theta().to_vec();
            let n = th.len();
            let nb = p.b().len();
            for (k, x) in th[n - nb..].iter_mut().enumerate() {
                *x = 0.02 * (((k * 7919) % 13) as f32 - 6.0) / 6.0;
            }
            p.set_theta(th);
        }
        let w = ids(33, 500, 4242);
        let loss = |student: &mut shrink_train::Trainable, pairs: &[lora::LoraWeight]| {
            reparam::rebuild(student, pairs).unwrap();
            reparam::gradients(Some(&teacher), student, pairs, &w, 32, None).unwrap()
        };
        let (g, _) = loss(&mut student, &pairs);
        // Check the largest-gradient element of A and of B in three pairs.
        for pi in [0, pairs.len() / 2, pairs.len() - 1] {
            let na = pairs[pi].a().len();
            for range in [0..na, na..g[pi].len()] {
                let k = range
                    .clone()
                    .max_by(|&i, &j| g[pi][i].abs().total_cmp(&g[pi][j].abs()))
                    .unwrap();
                let eps = 1e-3f32;
                let mut at = |d: f32| -> f64 {
                    let mut th = pairs[pi].theta().to_vec();
                    th[k] += d;
                    let saved = pairs[pi].theta().to_vec();
                    pairs[pi].set_theta(th);
                    let l = loss(&mut student, &pairs).1;
                    pairs[pi].set_theta(saved);
                    l
                };
                let fd = (at(eps) - at(-eps)) / (2.0 * eps as f64);
                let gk = g[pi][k] as f64;
                eprintln!(
                    "{name} {} θ[{k}]: analytic {gk:.6e}, finite difference {fd:.6e}",
                    pairs[pi].name
                );
                assert!((fd - gk).abs() <= 0.03 * gk.abs() + 1e-6, "{fd} vs {gk}");
            }
        }
    }
}

#[test]
fn adapters_trained_over_nf4_run_as_written_and_merge() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = FinetuneConfig {
        steps: 30,
        seq_len: 32,
        batch: 2,
        lr: 2e-3,
        warmup: 0,
        min_lr_ratio: 1.0,
        clip: 0.0,
        seed: 0,
        teacher_topk: None,
        save_every: 0,
    };
    for name in ["tiny-llama", "tiny-gpt2"] {
        let dir = nf4(tmp.path(), name);
        let base = Checkpoint::open(&dir).unwrap();
        let teacher = Model::load(&Checkpoint::open(fixture(name)).unwrap()).unwrap();
        let (mut student, mut pairs) = lora::load(&base, &spec()).unwrap();
        let windows = Windows::cut(&ids(12 * 33, 500, 4242), 32, 0, Path::new("ids")).unwrap();
        let kl = |student: &mut shrink_train::Trainable, pairs: &[lora::LoraWeight]| -> f64 {
            reparam::rebuild(student, pairs).unwrap();
            windows.train[..6]
                .iter()
                .map(|w| {
                    reparam::gradients(Some(&teacher), student, pairs, w, 32, None)
                        .unwrap()
                        .1
                })
                .sum::<f64>()
                / 6.0
        };
        let before = kl(&mut student, &pairs);
        reparam::train(
            "qlora",
            Some(&teacher),
            &mut student,
            &mut pairs,
            &windows,
            &cfg,
            &tmp.path().join(format!("{name}.run")),
            false,
            &AtomicBool::new(false),
            &Silent,
        )
        .unwrap();
        let after = kl(&mut student, &pairs);
        eprintln!("{name}: KL to the float model, NF4 {before:.5}, NF4 + LoRA {after:.5}");
        assert!(after < 0.9 * before, "{name}: {before} -> {after}");

        // The adapter as PEFT files, read back, run beside the NF4 layers: training's logits.
        let ad = lora::adapter(&spec(), &pairs, "base");
        assert_eq!(ad.modules.len(), pairs.len());
        let out = tmp.path().join(format!("{name}-lora"));
        ad.write(&out, &[&dir], &[]).unwrap();
        let read = Adapter::read(&out).unwrap();
        assert_eq!(read, ad);
        let probe = ids(20, 500, 4242);
        let want: Vec<f32> = logits_no_graph(&student, &probe)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let run = |m: &Model| -> Vec<f32> {
            m.forward(&probe, None)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        let got = run(&Model::load_with(&base, Some(&read)).unwrap());
        let plain = run(&Model::load(&base).unwrap());
        let maxd = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max)
        };
        let (d, moved) = (maxd(&want, &got), maxd(&plain, &got));
        eprintln!("{name}: runtime with adapter vs trained forward {d:.2e} (the adapter moves logits by {moved:.2e})");
        assert!(
            d < 1e-4 && moved > 100.0 * d.max(1e-6),
            "{name}: {d} {moved}"
        );

        // --merge: W0 + s·B·A requantized on the base's grid, into its layout.
        let (grid, sel) = lora::merge_grid(&base).unwrap();
        assert_eq!(grid, NF4);
        let merged = tmp.path().join(format!("{name}-merged"));
        let r = shrink_train::qat::store(
            &base,
            student,
            Box::new(grid),
            &sel,
            ("qlora", serde_json::json!({}), vec![]),
            &merged,
            &Quiet,
        )
        .unwrap();
        assert!(r.method.starts_with("qlora-nf4"), "{}", r.method);
        assert_eq!(r.quantized_tensors, pairs.len());
        Model::load(&Checkpoint::open(&merged).unwrap())
            .unwrap()
            .forward(&probe, None)
            .unwrap();
    }
}

#[test]
fn bad_lora_settings_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let base = Checkpoint::open(nf4(tmp.path(), "tiny-llama")).unwrap();
    let bad = |s: LoraSpec| lora::load(&base, &s).err().unwrap().to_string();
    assert!(bad(LoraSpec { r: 0, ..spec() }).contains("must be positive"));
    let e = bad(LoraSpec {
        targets: vec!["c_attn".into()],
        ..spec()
    });
    assert!(e.contains("c_attn") && e.contains("q_proj"), "{e}");
    // --merge needs one of the round-to-nearest layouts it can requantize.
    let float = Checkpoint::open(fixture("tiny-llama")).unwrap();
    assert!(lora::merge_grid(&float).is_err());
}
