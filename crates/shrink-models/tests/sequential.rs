//! Running a decoder layer by layer (`Sequential`) gives the model's own hidden states, and
//! the taps see each linear's real input.

use std::path::PathBuf;

use shrink_io::Checkpoint;
use shrink_models::sequential::Sequential;
use shrink_models::Model;

fn fixture(arch: &str) -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/fixtures"
    ))
    .join(arch)
}

#[test]
fn layer_by_layer_equals_the_forward_pass() {
    for arch in ["tiny-llama", "tiny-qwen2", "tiny-mistral"] {
        let ckpt = Checkpoint::open(fixture(arch)).unwrap();
        let model = Model::load(&ckpt).unwrap();
        let seq = Sequential::new(&ckpt).unwrap();
        let ids: Vec<u32> = (0..40).map(|i| (i * 7 + 3) % 100).collect();
        let mut xs = seq.embed(std::slice::from_ref(&ids)).unwrap();
        let mut seen = 0;
        for l in 0..seq.num_layers() {
            let layer = seq.layer(l).unwrap();
            let mut tap = |_: usize, name: &str, t: &candle_core::Tensor| {
                assert_eq!(t.dim(0).unwrap(), ids.len(), "{name}");
                seen += 1;
                Ok(())
            };
            xs = seq.run(&layer, &xs, Some(&mut tap)).unwrap();
        }
        assert_eq!(seen, 7 * seq.num_layers());
        let Model::Llama(m) = &model else { panic!() };
        let ours =
            candle_nn::ops::rms_norm(&xs[0], &m.norm, seq.config().rms_norm_eps as f32).unwrap();
        let want = model.hidden(&ids, None).unwrap();
        let d = (ours - want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-5, "{arch}: {d}");
    }
}

#[test]
fn other_architectures_are_refused_clearly() {
    let ckpt = Checkpoint::open(fixture("tiny-gpt2")).unwrap();
    let e = Sequential::new(&ckpt).err().unwrap().to_string();
    assert!(e.contains("Llama family"), "{e}");
}
