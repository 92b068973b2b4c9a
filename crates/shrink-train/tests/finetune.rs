//! Scale fine-tuning (E2E-QP) on tiny GPTQ models: the scales' gradient against finite
//! differences of the loss, the KL to the float teacher going down, codes and zero points
//! untouched in an output that loads like its input, an interrupted run resumed to the same
//! scales bit for bit, and bad input refused.

mod common;
use common::{fixture, ids};

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use shrink_io::Checkpoint;
use shrink_methods::calibrated::{self, Run};
use shrink_methods::gptq::GptqSpec;
use shrink_methods::pipeline::Silent as Quiet;
use shrink_methods::select::Selection;
use shrink_models::Model;
use shrink_train::distill::{read_log, Silent, Windows};
use shrink_train::finetune::{self, FinetuneConfig};
use shrink_train::TrainError;

/// `fixture` quantized by GPTQ (3 bits, groups of 16) into `dir/name`.
fn gptq(dir: &Path, fixture_name: &str) -> PathBuf {
    let ckpt = Checkpoint::open(fixture(fixture_name)).unwrap();
    let out = dir.join(format!("{fixture_name}-gptq"));
    let samples: Vec<Vec<u32>> = ids(8 * 48, 500, 12345)
        .chunks(48)
        .map(<[u32]>::to_vec)
        .collect();
    let all = Selection::default();
    let run = Run::new(&ckpt, &out, &samples, &all, &Quiet);
    let spec = GptqSpec {
        bits: 3,
        group_size: 16,
        ..Default::default()
    };
    calibrated::gptq(&run, spec, false).unwrap();
    out
}

fn cfg(steps: usize) -> FinetuneConfig {
    FinetuneConfig {
        steps,
        seq_len: 32,
        batch: 2,
        lr: 1e-3,
        warmup: 0,
        min_lr_ratio: 1.0,
        clip: 0.0,
        seed: 0,
        teacher_topk: None,
        save_every: 0,
    }
}

#[test]
fn trained_scales_bring_the_quantized_model_closer_to_its_teacher() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["tiny-llama", "tiny-gpt2", "tiny-gpt_neox"] {
        let q = gptq(tmp.path(), name);
        let input = Checkpoint::open(&q).unwrap();
        let teacher = Model::load(&Checkpoint::open(fixture(name)).unwrap()).unwrap();
        let (mut student, mut quant) = finetune::load(&input).unwrap();
        let windows = Windows::cut(&ids(12 * 33, 500, 12345), 32, 0, Path::new("ids")).unwrap();
        let run = tmp.path().join(format!("{name}.run"));
        let stop = AtomicBool::new(false);
        // The KL to the teacher on fixed windows, before and after.
        let kl = |student: &mut shrink_train::Trainable, quant: &[finetune::QuantWeight]| -> f64 {
            windows.train[..6]
                .iter()
                .map(|w| {
                    finetune::scale_gradients(&teacher, student, quant, w, 32, None)
                        .unwrap()
                        .1
                })
                .sum::<f64>()
                / 6.0
        };
        let before = kl(&mut student, &quant);
        finetune::finetune(
            &teacher,
            &mut student,
            &mut quant,
            &windows,
            &cfg(60),
            &run,
            false,
            &stop,
            &Silent,
        )
        .unwrap();
        let after = kl(&mut student, &quant);
        eprintln!("{name}: KL to the teacher {before:.5} -> {after:.5} after 60 steps");
        assert!(after < 0.95 * before, "{name}: {before} -> {after}");
        assert_eq!(read_log(&run).unwrap().len(), 60);

        // The output: same tensors, only the scales changed; it loads and runs.
        let out = tmp.path().join(format!("{name}-ft"));
        finetune::write(&input, &quant, &out, &[]).unwrap();
        let (a, b) = (
            Checkpoint::open(&q).unwrap(),
            Checkpoint::open(&out).unwrap(),
        );
        let (Checkpoint::Hf(ha), Checkpoint::Hf(hb)) = (&a, &b) else {
            unreachable!()
        };
        assert_eq!(
            ha.weights.tensors.keys().collect::<Vec<_>>(),
            hb.weights.tensors.keys().collect::<Vec<_>>()
        );
        let mut changed = 0;
        for (n, ta) in &ha.weights.tensors {
            let tb = &hb.weights.tensors[n];
            assert_eq!((ta.dtype, &ta.shape), (tb.dtype, &tb.shape), "{n}");
            let same = ha.weights.bytes(ta) == hb.weights.bytes(tb);
            if n.ends_with(".scales") {
                changed += usize::from(!same);
            } else {
                assert!(same, "{name}: {n} changed");
            }
        }
        assert_eq!(
            changed,
            quant.len(),
            "{name}: every quantized weight's scales move"
        );
        assert!(out.join("config.json").is_file() && out.join("quantize_config.json").is_file());
        // The written model is the trained one: its weights are what training ran on.
        let reread = finetune::load(&b).unwrap().1;
        for (x, y) in quant.iter().zip(&reread) {
            assert_eq!(x.stored_scales(), y.parts.scales, "{}", x.name);
        }
        Model::load(&b).unwrap().forward(&[1, 2, 3], None).unwrap();
    }
}

#[test]
fn the_scale_gradient_matches_finite_differences() {
    let tmp = tempfile::tempdir().unwrap();
    let q = gptq(tmp.path(), "tiny-llama");
    let input = Checkpoint::open(&q).unwrap();
    let teacher = Model::load(&Checkpoint::open(fixture("tiny-llama")).unwrap()).unwrap();
    let windows = Windows::cut(&ids(2 * 33, 500, 12345), 32, 0, Path::new("ids")).unwrap();
    // One step with batch 1 at a tiny lr: Adam's first step moves every scale by about lr
    // against its gradient's sign, so the loss change predicts Σ |g|·lr.
    let (mut student, mut quant) = finetune::load(&input).unwrap();
    let (g, loss0) =
        finetune::scale_gradients(&teacher, &mut student, &quant, &windows.train[0], 32, None)
            .unwrap();
    let (name, k) = (quant[3].name.clone(), 5);
    let gk = g[3][k] as f64;
    // Central differences with steps of about 1 %; the model runs on float16 scales, so the
    // step taken is the difference of the stored values.
    let s0 = quant[3].scales[k];
    let mut at = |f: f32| -> (f64, f64) {
        quant[3].scales[k] = s0 * f;
        let stored = quant[3].stored_scales()[k] as f64;
        finetune::rebuild(&mut student, &quant).unwrap();
        let (_, l) =
            finetune::scale_gradients(&teacher, &mut student, &quant, &windows.train[0], 32, None)
                .unwrap();
        (stored, l)
    };
    let ((sp, lp), (sm, lm)) = (at(1.01), at(0.99));
    let fd = (lp - lm) / (sp - sm);
    eprintln!("{name} scale {k}: analytic {gk:.6e}, central difference {fd:.6e} (loss {loss0:.5})");
    assert!((fd - gk).abs() <= 0.02 * gk.abs() + 1e-7, "{fd} vs {gk}");
}

#[test]
fn an_interrupted_run_resumes_to_the_same_scales() {
    let tmp = tempfile::tempdir().unwrap();
    let q = gptq(tmp.path(), "tiny-qwen2");
    let input = Checkpoint::open(&q).unwrap();
    let teacher = Model::load(&Checkpoint::open(fixture("tiny-qwen2")).unwrap()).unwrap();
    let windows = Windows::cut(&ids(10 * 33, 500, 12345), 32, 0, Path::new("ids")).unwrap();
    let stop = AtomicBool::new(false);
    let whole = |steps: usize, run: &Path, resume: bool, stop: &AtomicBool| {
        let (mut s, mut qw) = finetune::load(&input).unwrap();
        let r = finetune::finetune(
            &teacher,
            &mut s,
            &mut qw,
            &windows,
            &cfg(steps),
            run,
            resume,
            stop,
            &Silent,
        );
        (r, qw)
    };
    let (r, straight) = whole(8, &tmp.path().join("a"), false, &stop);
    r.unwrap();
    // Stopped after its first step (as Ctrl-C does), then resumed.
    let run = tmp.path().join("b");
    let (r, _) = whole(8, &run, false, &AtomicBool::new(true));
    assert!(
        matches!(r, Err(TrainError::Interrupted { step: 1, .. })),
        "{r:?}"
    );
    let (r, resumed) = whole(8, &run, true, &stop);
    assert_eq!(r.unwrap().resumed_from, Some(1));
    for (x, y) in straight.iter().zip(&resumed) {
        assert_eq!(x.scales, y.scales, "{}", x.name);
    }
    assert_eq!(read_log(&run).unwrap().len(), 8);
    // A second run in the same directory without --resume is refused.
    let (r, _) = whole(8, &run, false, &stop);
    assert!(r.unwrap_err().to_string().contains("--resume"));
}

#[test]
fn inputs_without_gptq_scales_are_refused() {
    let float = Checkpoint::open(fixture("tiny-llama")).unwrap();
    let e = finetune::load(&float).err().unwrap().to_string();
    assert!(e.contains("not quantized"), "{e}");
}
