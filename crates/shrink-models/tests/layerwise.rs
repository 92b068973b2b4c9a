//! Running any architecture block by block ([`Sequential`]) gives the model's own hidden
//! states, and the taps see each linear's real input.

use std::path::PathBuf;

use candle_core::Tensor;
use shrink_io::Checkpoint;
use shrink_models::layerwise::Sequential;
use shrink_models::{BertClassifier, BertConfig, Model};

fn fixture(arch: &str) -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/fixtures"
    ))
    .join(arch)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// The stack's output for `ids`, and how many linear inputs the taps saw (each of the right
/// length and width).
fn run_stack(seq: &Sequential, ids: &[u32]) -> (Tensor, usize) {
    let mut xs = seq.embed(&[ids.to_vec()]).unwrap();
    let mut seen = 0;
    for l in 0..seq.num_layers() {
        let block = seq.layer(l).unwrap();
        let mut tap = |_: usize, name: &str, t: &Tensor| {
            assert_eq!(t.dim(0).unwrap(), ids.len(), "{name}");
            let lin = block.linear(name).expect("a linear of the block");
            assert_eq!(t.dim(1).unwrap(), lin.in_features(), "{name}");
            seen += 1;
            Ok(())
        };
        xs = seq.run(block.as_ref(), &xs, Some(&mut tap)).unwrap();
    }
    (xs.pop().unwrap(), seen)
}

#[test]
fn block_by_block_equals_the_forward_pass() {
    let ids: Vec<u32> = (0..40).map(|i| (i * 7 + 3) % 100).collect();
    for arch in [
        "tiny-llama",
        "tiny-qwen2",
        "tiny-mistral",
        "tiny-gpt2",
        "tiny-gpt_neox",
    ] {
        let ckpt = Checkpoint::open(fixture(arch)).unwrap();
        let model = Model::load(&ckpt).unwrap();
        let seq = Sequential::new(&ckpt).unwrap();
        let (x, seen) = run_stack(&seq, &ids);
        assert_eq!(seen, seq.linears().len() * seq.num_layers(), "{arch}");
        let ours = match &model {
            Model::Llama(m) => {
                candle_nn::ops::rms_norm(&x, &m.norm, m.cfg.rms_norm_eps as f32).unwrap()
            }
            Model::Gpt2(m) => {
                let eps = m.cfg.layer_norm_epsilon as f32;
                candle_nn::ops::layer_norm(&x, &m.ln_f.0, &m.ln_f.1, eps).unwrap()
            }
            Model::Neox(m) => {
                let (w, b) = &m.final_layer_norm;
                candle_nn::ops::layer_norm(&x, w, b, m.cfg.layer_norm_eps as f32).unwrap()
            }
        };
        let want = model.hidden(&ids, None).unwrap();
        let d = max_diff(&ours, &want);
        assert!(d < 1e-5, "{arch}: {d}");
    }
    for arch in ["tiny-bert_cls", "tiny-distilbert_cls"] {
        let ckpt = Checkpoint::open(fixture(arch)).unwrap();
        let cfg = BertConfig::from_checkpoint(&ckpt).unwrap();
        let model =
            BertClassifier::load(cfg, &shrink_models::WeightLoader::new(&ckpt, None, &[])).unwrap();
        let seq = Sequential::new(&ckpt).unwrap();
        let (x, seen) = run_stack(&seq, &ids);
        assert_eq!(seen, 6 * seq.num_layers(), "{arch}");
        let d = max_diff(&x, &model.encode(&ids).unwrap());
        assert!(d < 1e-5, "{arch}: {d}");
    }
}

#[test]
fn scale_groups_name_real_norms_and_linears() {
    for arch in [
        "tiny-llama",
        "tiny-gpt2",
        "tiny-gpt_neox",
        "tiny-bert_cls",
        "tiny-distilbert_cls",
    ] {
        let ckpt = Checkpoint::open(fixture(arch)).unwrap();
        let seq = Sequential::new(&ckpt).unwrap();
        let mut block = seq.layer(0).unwrap();
        let groups = seq.stack().scale_groups();
        assert!(!groups.is_empty(), "{arch}");
        for g in groups {
            for l in g.linears {
                assert!(block.linear(l).is_some(), "{arch}: {l}");
            }
            match g.prev {
                shrink_models::layerwise::Prev::Norm(n) => {
                    assert!(block.norm_mut(n).is_some(), "{arch}: {n}")
                }
                shrink_models::layerwise::Prev::Linear(n) => {
                    assert!(block.linear(n).is_some(), "{arch}: {n}")
                }
            }
        }
        assert_eq!(
            seq.layer_of(&seq.weight_name(1, seq.linears()[0].name)),
            Some(1)
        );
    }
}
