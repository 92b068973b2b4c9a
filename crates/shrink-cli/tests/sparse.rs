//! Sparse checkpoints through the binary: `shrink inspect` reports the sparsity of a
//! compressed-tensors sparse checkpoint (and its dense twin) weight by weight, and the model
//! loaded from the sparse layout computes exactly what the dense one computes.

mod common;

use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};
use shrink_formats::float::FloatType;
use shrink_formats::sparse_layout::SparseLayout;
use shrink_io::quantized::StoredTensor;
use shrink_io::Checkpoint;

fn write_st(path: &Path, tensors: &[StoredTensor]) {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|t| {
            let v = TensorView::new(t.dtype, t.shape.clone(), &t.bytes).unwrap();
            (t.name.clone(), v)
        })
        .collect();
    safetensors::tensor::serialize_to_file(views, None, path).unwrap();
}

/// tiny-llama with half of every block linear's row zeroed (smallest magnitudes), written
/// dense and in `layout`: (dense dir, sparse dir).
fn pruned(tmp: &Path, layout: SparseLayout) -> (PathBuf, PathBuf) {
    let src = Checkpoint::open(common::fixture("tiny-llama")).unwrap();
    let (dd, sd) = (tmp.join("dense"), tmp.join("sparse"));
    std::fs::create_dir_all(&dd).unwrap();
    std::fs::create_dir_all(&sd).unwrap();
    let (mut dense, mut sparse) = (Vec::new(), Vec::new());
    for t in src.tensors() {
        let (mut v, shape) = src.read_f32(&t.name).unwrap();
        let f32t = |v: &[f32]| StoredTensor {
            name: t.name.clone(),
            dtype: Dtype::F32,
            shape: shape.clone(),
            bytes: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        };
        if t.name.contains(".layers.") && t.name.ends_with("_proj.weight") {
            for g in v.chunks_exact_mut(4) {
                let mut idx = [0, 1, 2, 3];
                idx.sort_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs()));
                g[idx[0]] = 0.0;
                g[idx[1]] = 0.0;
            }
            let m = t.name.strip_suffix(".weight").unwrap();
            let st = shrink_io::sparse::sparse_tensors(
                m,
                &v,
                shape[0],
                shape[1],
                FloatType::F32,
                layout,
            );
            sparse.extend(st.unwrap());
        } else {
            sparse.push(f32t(&v));
        }
        dense.push(f32t(&v));
    }
    write_st(&dd.join("model.safetensors"), &dense);
    write_st(&sd.join("model.safetensors"), &sparse);
    let cfg_text = std::fs::read(common::fixture("tiny-llama/config.json")).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_slice(&cfg_text).unwrap();
    std::fs::write(dd.join("config.json"), cfg.to_string()).unwrap();
    cfg["quantization_config"] =
        shrink_io::sparse::sparsity_config(layout, 0.4, &["Linear".into()], &["lm_head".into()]);
    std::fs::write(sd.join("config.json"), cfg.to_string()).unwrap();
    (dd, sd)
}

fn inspect_json(dir: &Path) -> serde_json::Value {
    let out = common::shrink(&["inspect", dir.to_str().unwrap(), "--json", "--tensors"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn inspect_reports_sparsity_of_sparse_and_dense_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let (dd, sd) = pruned(tmp.path(), SparseLayout::Sparse24Bitmask);
    let (d, s) = (inspect_json(&dd), inspect_json(&sd));
    for v in [&d, &s] {
        let sp = &v["sparsity"];
        // Exactly half of every block linear is zero.
        assert_eq!(sp["linear_weights"], 0.5, "{sp}");
        assert_eq!(sp["per_tensor"]["model.layers.1.mlp.down_proj.weight"], 0.5);
        assert!(
            sp["per_tensor"]["model.embed_tokens.weight"]
                .as_f64()
                .unwrap()
                < 0.01
        );
        let overall = sp["overall"].as_f64().unwrap();
        assert!(overall > 0.3 && overall < 0.5, "{overall}");
    }
    assert_eq!(d["sparsity"], s["sparsity"]);
    // Same parameters, fewer bytes.
    assert_eq!(d["parameters"], s["parameters"]);
    assert!(s["footprint_bytes"].as_u64() < d["footprint_bytes"].as_u64());
    // Text output: the overall line, and the decoded weights listed with --tensors.
    let out = common::shrink(&["inspect", sd.to_str().unwrap(), "--tensors"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("50.00 % of linear weights"), "{text}");
    assert!(text.contains("sparsity decoded"), "{text}");
    let line = text
        .lines()
        .find(|l| {
            l.trim_start()
                .starts_with("model.layers.0.self_attn.q_proj.weight")
        })
        .unwrap();
    assert!(line.ends_with("50.00 %"), "{line}");
}

#[test]
fn a_model_loaded_from_a_sparse_layout_computes_what_the_dense_one_does() {
    for layout in SparseLayout::ALL {
        let tmp = tempfile::tempdir().unwrap();
        let (dd, sd) = pruned(tmp.path(), layout);
        let ids = [1u32, 17, 300, 42, 5, 511, 7];
        let logits = |dir: &Path| {
            let m = shrink_models::Model::load(&Checkpoint::open(dir).unwrap()).unwrap();
            m.forward(&ids, None)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let (a, b) = (logits(&dd), logits(&sd));
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a), bits(&b), "{layout:?}");
    }
}
