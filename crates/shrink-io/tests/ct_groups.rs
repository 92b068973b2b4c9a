//! compressed-tensors checkpoints with several config groups: each module read on the grid of
//! the group that names it; a `weight_shape` too large to be a weight refused by name (it
//! overflowed the packed-word count: `quantized_layouts` campaign).

use std::path::Path;

use safetensors::tensor::TensorView;
use shrink_formats::float::FloatType;
use shrink_formats::int::{quantize, Granularity, IntSpec};
use shrink_io::quantized::{ct_config_groups, ct_tensors, Quantized, StoredTensor};
use shrink_io::Checkpoint;

fn write(dir: &Path, tensors: &[StoredTensor], qcfg: serde_json::Value) {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                TensorView::new(t.dtype, t.shape.clone(), &t.bytes).unwrap(),
            )
        })
        .collect();
    safetensors::tensor::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    let cfg = serde_json::json!({"model_type": "llama", "quantization_config": qcfg});
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
}

#[test]
fn each_module_on_its_groups_grid_and_a_lying_shape_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (rows, cols) = (8, 64);
    let w: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 37) % 23) as f32 - 11.0)
        .collect();
    let int2 = IntSpec::asymmetric(2, Granularity::Group(32), FloatType::F16);
    let int4 = IntSpec::asymmetric(4, Granularity::Channel, FloatType::F16);
    let a = quantize(&w, rows, cols, int2).unwrap();
    let b = quantize(&w, rows, cols, int4).unwrap();
    let mut tensors = ct_tensors("a", &a);
    tensors.extend(ct_tensors("b", &b));
    let qcfg = ct_config_groups(&[(int4, vec!["b".into()]), (int2, vec!["a".into()])], &[]);
    write(tmp.path(), &tensors, qcfg.clone());
    let Checkpoint::Hf(h) = Checkpoint::open(tmp.path()).unwrap() else {
        panic!("a directory")
    };
    for (name, want) in [("a.weight", &a), ("b.weight", &b)] {
        match h.quantized(name).unwrap() {
            Some(Quantized::Int(t)) => assert_eq!(&t, want, "{name}"),
            _ => panic!("{name}: not integers"),
        }
    }

    // A weight_shape claiming 2^40 × 2^40 elements.
    let huge = 1i64 << 40;
    for t in tensors.iter_mut().filter(|t| t.name == "a.weight_shape") {
        t.bytes = [huge, huge].iter().flat_map(|v| v.to_le_bytes()).collect();
    }
    let bad = tmp.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    write(&bad, &tensors, qcfg);
    let Checkpoint::Hf(h) = Checkpoint::open(&bad).unwrap() else {
        panic!("a directory")
    };
    let e = h.quantized("a.weight").err().expect("refused").to_string();
    assert!(
        e.contains("a.weight_shape") && e.contains("too large"),
        "{e}"
    );
}
