//! A checkpoint split into shards (model.safetensors.index.json) runs like the single file.

use std::collections::BTreeMap;
use std::path::PathBuf;

use shrink_io::Checkpoint;
use shrink_models::Model;

#[test]
fn sharded_checkpoint_equals_single_file() {
    let src = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/fixtures/tiny-llama"
    ));
    assert!(src.exists(), "fixtures missing at {}", src.display());
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let half = names.len() / 2;
    let mut weight_map = BTreeMap::new();
    for (i, part) in [&names[..half], &names[half..]].into_iter().enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", i + 1);
        let views: Vec<(String, safetensors::tensor::TensorView)> = part
            .iter()
            .map(|n| (n.clone(), st.tensor(n).unwrap()))
            .collect();
        safetensors::serialize_to_file(views, None, &dir.join(&file)).unwrap();
        for n in part {
            weight_map.insert(n.clone(), file.clone());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();

    let single = Model::load(&Checkpoint::open(&src).unwrap()).unwrap();
    let sharded_ckpt = Checkpoint::open(dir).unwrap();
    assert_eq!(sharded_ckpt.tensors().len(), names.len());
    let sharded = Model::load(&sharded_ckpt).unwrap();
    let ids: Vec<u32> = (0..16).map(|i| (i * 31 % 512) as u32).collect();
    let a: Vec<f32> = single
        .forward(&ids, None)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let b: Vec<f32> = sharded
        .forward(&ids, None)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!(a == b);
}
