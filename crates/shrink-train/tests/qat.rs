//! Quantization-aware training on tiny models of three families (GPT-2's Conv1D layout
//! included): training through the grid brings the quantized model closer to the float one
//! than rounding it does, and the stored output computes exactly what training ran on.

mod common;
use common::{fixture, ids};

use std::path::Path;
use std::sync::atomic::AtomicBool;

use shrink_formats::float::FloatType;
use shrink_formats::int::{Granularity, IntSpec};
use shrink_io::Checkpoint;
use shrink_methods::pipeline::Silent as Quiet;
use shrink_methods::rtn::Rtn;
use shrink_methods::select::Selection;
use shrink_models::Model;
use shrink_train::distill::{logits_no_graph, Silent, Windows};
use shrink_train::qat;
use shrink_train::reparam::{self, FinetuneConfig};

#[test]
fn qat_beats_rounding_and_its_output_computes_what_training_ran() {
    let tmp = tempfile::tempdir().unwrap();
    let grid = Rtn::Int(IntSpec {
        bits: 3,
        symmetric: false,
        granularity: Granularity::Group(16),
        scale_type: FloatType::F16,
    });
    let cfg = FinetuneConfig {
        steps: 40,
        seq_len: 32,
        batch: 2,
        lr: 5e-4,
        warmup: 0,
        min_lr_ratio: 1.0,
        clip: 0.0,
        seed: 0,
        teacher_topk: None,
        save_every: 0,
    };
    for name in ["tiny-llama", "tiny-gpt2", "tiny-gpt_neox"] {
        let ckpt = Checkpoint::open(fixture(name)).unwrap();
        let teacher = Model::load(&ckpt).unwrap();
        let (mut student, mut fq) = qat::load(&ckpt, &Selection::default(), &grid).unwrap();
        let windows = Windows::cut(&ids(12 * 33, 500, 987), 32, 0, Path::new("ids")).unwrap();
        // KL to the float model on fixed windows; before training the model is plain rounding.
        let kl = |student: &mut shrink_train::Trainable, fq: &[qat::FakeQuant]| -> f64 {
            reparam::rebuild(student, fq).unwrap();
            windows.train[..6]
                .iter()
                .map(|w| {
                    reparam::gradients(Some(&teacher), student, fq, w, 32, None)
                        .unwrap()
                        .1
                })
                .sum::<f64>()
                / 6.0
        };
        let ptq = kl(&mut student, &fq);
        let stop = AtomicBool::new(false);
        let run = tmp.path().join(format!("{name}.run"));
        reparam::train(
            "qat",
            Some(&teacher),
            &mut student,
            &mut fq,
            &windows,
            &cfg,
            &run,
            false,
            &stop,
            &Silent,
        )
        .unwrap();
        let trained = kl(&mut student, &fq);
        let changed = qat::changed_from_ptq(&ckpt, &fq).unwrap();
        eprintln!(
            "{name}: KL to float, rounding {ptq:.5}, QAT {trained:.5}; {:.1} % of weights moved on the grid",
            100.0 * changed
        );
        assert!(trained < 0.9 * ptq, "{name}: {ptq} -> {trained}");
        assert!(changed > 0.0, "{name}: {changed}");

        // The stored model is what training ran: same logits from the quantized output.
        let probe: Vec<u32> = ids(20, 500, 987);
        let want: Vec<f32> = logits_no_graph(&student, &probe)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let out = tmp.path().join(format!("{name}-qat"));
        let report = qat::write(
            &ckpt,
            student,
            fq,
            Box::new(grid),
            &Selection::default(),
            (serde_json::json!({"steps": 40}), vec![]),
            &out,
            &Quiet,
        )
        .unwrap();
        assert!(report.method.starts_with("qat-int3"), "{}", report.method);
        let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "scratch left behind: {leftovers:?}");
        let got: Vec<f32> = Model::load(&Checkpoint::open(&out).unwrap())
            .unwrap()
            .forward(&probe, None)
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
        eprintln!("{name}: stored model vs trained forward, max |Δlogit| {d:.2e}");
        assert!(d < 1e-3, "{name}: {d}");
    }
}
