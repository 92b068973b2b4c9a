//! Learned rotations (SpinQuant) on the tiny Llama-family fixtures: dL/dU and dL/dR2 against
//! finite differences, training lowers the quantized model's KL to the float one below the
//! random rotation's, and the rotation written by `shrink_methods::rotate` is the one trained.

mod common;
use common::{fixture, ids};

use std::path::Path;
use std::sync::atomic::AtomicBool;

use shrink_formats::float::FloatType;
use shrink_formats::int::{Granularity, IntSpec};
use shrink_io::Checkpoint;
use shrink_methods::pipeline::Silent as Quiet;
use shrink_methods::rotate::{rotate, Given, RotateSpec};
use shrink_methods::rtn::Rtn;
use shrink_methods::select::Selection;
use shrink_models::Model;
use shrink_train::distill::{logits_no_graph, Silent, Windows};
use shrink_train::optim::cayley_step;
use shrink_train::reparam::{self, FinetuneConfig, Trained};
use shrink_train::rotation::{self, RotationSpec};

const BOTH: RotationSpec = RotationSpec {
    residual: true,
    heads: true,
};

/// A random orthogonal matrix of order n: Cayley steps from the identity along random
/// gradients.
fn random_orthogonal(n: usize, seed: u64) -> Vec<f64> {
    let mut x = vec![0f64; n * n];
    (0..n).for_each(|i| x[i * n + i] = 1.0);
    for s in 0..3 {
        let g: Vec<f64> = ids(n * n, 2001, seed + s)
            .iter()
            .map(|&v| v as f64 / 1000.0 - 1.0)
            .collect();
        cayley_step(&mut x, &g, n, 1.0);
    }
    x
}

/// A randomly rotated copy of a fixture in `dir` (channels `keep` left out).
fn rotated(name: &str, dir: &Path, keep: &[usize]) -> Checkpoint {
    let out = dir.join(format!("{name}-rot"));
    let spec = RotateSpec {
        keep: Some(keep.to_vec()),
        ..RotateSpec::default()
    };
    let ckpt = Checkpoint::open(fixture(name)).unwrap();
    rotate(&ckpt, &out, spec, FloatType::F32, &Quiet).unwrap();
    Checkpoint::open(&out).unwrap()
}

#[test]
fn rotation_gradients_match_finite_differences() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["tiny-llama", "tiny-qwen2"] {
        let keep = [3usize, 40];
        let ckpt = rotated(name, tmp.path(), &keep);
        let (mut student, mut rot) =
            rotation::load(&ckpt, &keep, BOTH, &Selection::default(), None).unwrap();
        let k = rot.order();
        let hd = rot.given().heads.unwrap()[0].len().isqrt();
        let layers = rot.given().heads.unwrap().len();
        let base = Given {
            residual: Some(random_orthogonal(k, 5)),
            heads: Some(
                (0..layers)
                    .map(|l| random_orthogonal(hd, 9 + l as u64))
                    .collect(),
            ),
            provenance: None,
        };
        rot.set(base.clone()).unwrap();
        rot.rebuild(&mut student).unwrap();
        let window = ids(33, 500, 77);
        // Cross-entropy on the text: in float the loss does not depend on an orthogonal U, but
        // it does on U + εD, so the gradient is checked off the manifold.
        let (g, _) = reparam::gradients_of(None, &mut student, &rot, &window, 32, None).unwrap();
        let loss_at =
            |student: &mut shrink_train::Trainable, rot: &mut rotation::Rotation, given: Given| {
                rot.set(given).unwrap();
                rot.rebuild(student).unwrap();
                reparam::gradients_of(None, student, &*rot, &window, 32, None)
                    .unwrap()
                    .1
            };
        let eps = 1e-3;
        // Along U.
        let d: Vec<f64> = ids(k * k, 1001, 31)
            .iter()
            .map(|&v| v as f64 / 500.0 - 1.0)
            .collect();
        let shifted = |s: f64| Given {
            residual: Some(
                base.residual
                    .as_ref()
                    .unwrap()
                    .iter()
                    .zip(&d)
                    .map(|(u, d)| u + s * d)
                    .collect(),
            ),
            heads: None,
            provenance: None,
        };
        let fd = (loss_at(&mut student, &mut rot, shifted(eps))
            - loss_at(&mut student, &mut rot, shifted(-eps)))
            / (2.0 * eps);
        let an: f64 = g[0].iter().zip(&d).map(|(&g, d)| g as f64 * d).sum();
        eprintln!("{name}: dL/dU·D analytic {an:.6}, finite differences {fd:.6}");
        assert!(
            (an - fd).abs() < 0.02 * fd.abs().max(1e-3),
            "{name}: {an} vs {fd}"
        );
        rot.set(base.clone()).unwrap();
        // Along R2 of the last block.
        let e: Vec<f64> = ids(hd * hd, 1001, 32)
            .iter()
            .map(|&v| v as f64 / 500.0 - 1.0)
            .collect();
        let shifted = |s: f64| {
            let mut h = base.heads.clone().unwrap();
            h[layers - 1]
                .iter_mut()
                .zip(&e)
                .for_each(|(r, e)| *r += s * e);
            Given {
                residual: None,
                heads: Some(h),
                provenance: None,
            }
        };
        let fd = (loss_at(&mut student, &mut rot, shifted(eps))
            - loss_at(&mut student, &mut rot, shifted(-eps)))
            / (2.0 * eps);
        let an: f64 = g[layers].iter().zip(&e).map(|(&g, e)| g as f64 * e).sum();
        eprintln!("{name}: dL/dR2·E analytic {an:.6}, finite differences {fd:.6}");
        assert!(
            (an - fd).abs() < 0.02 * fd.abs().max(1e-3),
            "{name}: {an} vs {fd}"
        );
    }
}

#[test]
fn learned_rotation_beats_the_random_one_and_is_what_rotate_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let grid = Rtn::Int(IntSpec {
        bits: 3,
        symmetric: false,
        granularity: Granularity::Group(16),
        scale_type: FloatType::F16,
    });
    let keep: [usize; 0] = [];
    let ckpt = rotated("tiny-llama", tmp.path(), &keep);
    let teacher = Model::load(&ckpt).unwrap();
    let (mut student, mut rot) =
        rotation::load(&ckpt, &keep, BOTH, &Selection::default(), Some(&grid)).unwrap();
    let windows = Windows::cut(&ids(12 * 33, 500, 987), 32, 0, Path::new("ids")).unwrap();
    let kl = |student: &mut shrink_train::Trainable, rot: &rotation::Rotation| -> f64 {
        rot.rebuild(student).unwrap();
        windows.train[..6]
            .iter()
            .map(|w| {
                reparam::gradients_of(Some(&teacher), student, rot, w, 32, None)
                    .unwrap()
                    .1
            })
            .sum::<f64>()
            / 6.0
    };
    let random = kl(&mut student, &rot);
    let cfg = FinetuneConfig {
        steps: 30,
        seq_len: 32,
        batch: 2,
        lr: 1.5,
        warmup: 0,
        min_lr_ratio: 0.0,
        clip: 0.0,
        seed: 0,
        teacher_topk: None,
        save_every: 0,
    };
    let stop = AtomicBool::new(false);
    reparam::train_with(
        "rotation",
        Some(&teacher),
        &mut student,
        &mut rot,
        &windows,
        &cfg,
        &tmp.path().join("run"),
        false,
        &stop,
        &Silent,
    )
    .unwrap();
    let learned = kl(&mut student, &rot);
    eprintln!("KL to float at 3 bits: random rotation {random:.5}, learned {learned:.5}");
    assert!(learned < 0.9 * random, "{random} -> {learned}");

    // Written by rotate with the trained matrices, then fake-quantized on the same grid, the
    // model computes what training ran.
    let out = tmp.path().join("learned");
    let spec = RotateSpec {
        keep: Some(keep.to_vec()),
        given: rot.given(),
        ..RotateSpec::default()
    };
    let r = rotate(&ckpt, &out, spec, FloatType::F32, &Quiet).unwrap();
    assert_eq!(r.extra["residual"]["matrix"], "given (learned)");
    let probe = ids(20, 500, 4);
    let want: Vec<f32> = logits_no_graph(&student, &probe)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let (mut written, fq) = shrink_train::qat::load(
        &Checkpoint::open(&out).unwrap(),
        &Selection::default(),
        &grid,
    )
    .unwrap();
    reparam::rebuild(&mut written, &fq).unwrap();
    let got: Vec<f32> = logits_no_graph(&written, &probe)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let d = want
        .iter()
        .zip(&got)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!("written rotation, fake-quantized, against training's forward: max |Δlogit| {d:.2e}");
    assert!(d < 1e-2, "{d}");
}

#[test]
fn refusals() {
    let tmp = tempfile::tempdir().unwrap();
    // An unrotated model: its norm weights are not folded (the fixture's are all 1, so one is
    // changed).
    let plain = tmp.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    for f in std::fs::read_dir(fixture("tiny-llama")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, plain.join(f.file_name().unwrap())).unwrap();
    }
    let mut params = shrink_train::Params::load(&Checkpoint::open(&plain).unwrap()).unwrap();
    let i = params
        .names()
        .iter()
        .position(|n| n == "model.norm.weight")
        .unwrap();
    let g: Vec<f32> = params.values(i).unwrap().iter().map(|v| v * 1.5).collect();
    params.replace(i, g).unwrap();
    params
        .write_safetensors(&plain.join("model.safetensors"))
        .unwrap();
    let ckpt = Checkpoint::open(&plain).unwrap();
    let e = rotation::load(&ckpt, &[], BOTH, &Selection::default(), None)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("shrink rotate first"), "{e}");
    // LayerNorm families.
    let ckpt = Checkpoint::open(fixture("tiny-gpt2")).unwrap();
    let e = rotation::load(&ckpt, &[], BOTH, &Selection::default(), None)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("RMSNorm"), "{e}");
    // Nothing to learn.
    let none = RotationSpec {
        residual: false,
        heads: false,
    };
    let rot = rotated("tiny-llama", tmp.path(), &[]);
    let e = rotation::load(&rot, &[], none, &Selection::default(), None)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("nothing to learn"), "{e}");
}
