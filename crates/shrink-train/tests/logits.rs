//! The trainable forward's logits equal the fixtures' PyTorch logits, for every architecture.

use std::path::{Path, PathBuf};

use shrink_train::Trainable;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures")
        .join(name)
}

fn reference(dir: &Path) -> (Vec<Vec<u32>>, Vec<f32>, Vec<usize>) {
    let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let ids = st.tensor("input_ids").unwrap();
    let (b, t) = (ids.shape()[0], ids.shape()[1]);
    let raw: Vec<i64> = ids
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let rows = (0..b)
        .map(|i| raw[i * t..(i + 1) * t].iter().map(|&x| x as u32).collect())
        .collect();
    let l = st.tensor("logits").unwrap();
    let vals = l
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (rows, vals, l.shape().to_vec())
}

#[test]
fn logits_equal_pytorch() {
    for arch in [
        "llama",
        "qwen2",
        "mistral",
        "gpt2",
        "gpt_neox",
        "bert_cls",
        "distilbert_cls",
    ] {
        let dir = fixture(&format!("tiny-{arch}"));
        let ckpt = shrink_io::Checkpoint::open(&dir).unwrap();
        let model = Trainable::load(&ckpt).unwrap();
        let (rows, want, shape) = reference(&dir);
        let per = want.len() / rows.len();
        let mut worst = 0f32;
        for (b, ids) in rows.iter().enumerate() {
            let got: Vec<f32> = model
                .forward(ids)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert_eq!(got.len(), per, "{arch}: logits of shape {shape:?}");
            for (g, w) in got.iter().zip(&want[b * per..(b + 1) * per]) {
                worst = worst.max((g - w).abs());
            }
        }
        assert!(worst < 1e-4, "{arch}: max |Δlogit| {worst}");
    }
}
