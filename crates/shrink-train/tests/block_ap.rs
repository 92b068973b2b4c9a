//! Block-AP on tiny models (Llama, GPT-2's Conv1D layout): every block's reconstruction error
//! falls below round-to-nearest's, the output is a GPTQ-layout checkpoint that loads, computes
//! what the report says, and that E2E-QP (`finetune`) takes next.

mod common;
use common::{fixture, ids};

use shrink_io::Checkpoint;
use shrink_methods::calibrated::Run;
use shrink_methods::pipeline::Silent;
use shrink_methods::select::Selection;
use shrink_models::Model;
use shrink_train::block_ap::{self, BlockApSpec};

#[test]
fn block_ap_beats_rounding_block_by_block_and_writes_gptq() {
    let tmp = tempfile::tempdir().unwrap();
    let samples: Vec<Vec<u32>> = ids(8 * 32, 500, 777)
        .chunks(32)
        .map(<[u32]>::to_vec)
        .collect();
    let spec = BlockApSpec {
        bits: 3,
        group_size: 16,
        epochs: 4,
        batch: 2,
        quant_lr: 1e-3,
        weight_lr: 1e-4,
        ..Default::default()
    };
    for name in ["tiny-llama", "tiny-gpt2"] {
        let ckpt = Checkpoint::open(fixture(name)).unwrap();
        let out = tmp.path().join(format!("{name}-bap"));
        let sel = Selection::default();
        let run = Run::new(&ckpt, &out, &samples, &sel, &Silent);
        let r = block_ap::quantize(&run, &spec).unwrap();
        assert_eq!(r.method, "block-ap-w3g16-asym");
        let blocks = r.extra["block_ap"]["blocks"].as_array().unwrap();
        assert!(!blocks.is_empty());
        for b in blocks {
            let (rtn, trained) = (
                b["mse_rtn"].as_f64().unwrap(),
                b["mse_trained"].as_f64().unwrap(),
            );
            eprintln!(
                "{name} block {}: MSE rounding {rtn:.3e}, Block-AP {trained:.3e}",
                b["block"]
            );
            assert!(trained < rtn, "{name}: {b}");
        }
        // A GPTQ checkpoint: E2E-QP reads it, the runtime runs it.
        let q = Checkpoint::open(&out).unwrap();
        let (_, quant) = shrink_train::finetune::load(&q).unwrap();
        assert_eq!(quant.len(), r.quantized_tensors);
        assert!(out.join("quantize_config.json").is_file());
        Model::load(&q).unwrap().forward(&[1, 2, 3], None).unwrap();
    }
    // Refused: a layout that cannot store the bits, a group that does not divide.
    let ckpt = Checkpoint::open(fixture("tiny-llama")).unwrap();
    let out = tmp.path().join("bad");
    let sel = Selection::default();
    let run = Run::new(&ckpt, &out, &samples, &sel, &Silent);
    for (s, msg) in [
        (BlockApSpec { bits: 5, ..spec }, "2, 3, 4 or 8"),
        (
            BlockApSpec {
                group_size: 7,
                ..spec
            },
            "multiple of --group-size",
        ),
    ] {
        let e = block_ap::quantize(&run, &s).unwrap_err().to_string();
        assert!(e.contains(msg), "{e}");
        assert!(!out.exists());
    }
}
