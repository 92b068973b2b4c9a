//! compressed-tensors' sparse layouts through `shrink_io::sparse`: a checkpoint written sparse
//! reads back through the normal loader bit for bit, 2:4 is refused for weights that are not
//! 2:4, damaged checkpoints are refused naming the file and the tensor, and a checkpoint
//! written by compressed-tensors itself decodes to its dense weights.

use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};
use serde_json::json;
use shrink_formats::float::FloatType;
use shrink_formats::sparse_layout::SparseLayout;
use shrink_formats::FormatError;
use shrink_io::quantized::StoredTensor;
use shrink_io::sparse::{sparse_tensors, sparsity_config, stored_bytes};
use shrink_io::Checkpoint;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures")
        .join(name)
}

fn write_st(path: &Path, tensors: &[StoredTensor]) {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                TensorView::new(t.dtype, t.shape.clone(), &t.bytes).unwrap(),
            )
        })
        .collect();
    safetensors::tensor::serialize_to_file(views, None, path).unwrap();
}

fn f32_tensor(name: &str, shape: Vec<usize>, v: &[f32]) -> StoredTensor {
    StoredTensor {
        name: name.into(),
        dtype: Dtype::F32,
        shape,
        bytes: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

/// Zero the smallest magnitudes of every row (half of them), or two of every four for 2:4.
fn prune(w: &mut [f32], cols: usize, two_four: bool) {
    let groups = if two_four { 4 } else { cols };
    for g in w.chunks_exact_mut(groups) {
        let mut idx: Vec<usize> = (0..g.len()).collect();
        idx.sort_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs()));
        for &i in &idx[..g.len() / 2] {
            g[i] = 0.0;
        }
    }
}

/// tiny-llama with its block linears pruned: the dense directory and the sparse one.
fn pruned_pair(tmp: &Path, layout: SparseLayout) -> (PathBuf, PathBuf) {
    let src = Checkpoint::open(fixture("tiny-llama")).unwrap();
    let (dense_dir, sparse_dir) = (tmp.join("dense"), tmp.join("sparse"));
    std::fs::create_dir_all(&dense_dir).unwrap();
    std::fs::create_dir_all(&sparse_dir).unwrap();
    let (mut dense, mut sparse) = (Vec::new(), Vec::new());
    let (mut zeros, mut total) = (0usize, 0usize);
    let mut names: Vec<String> = src.tensors().into_iter().map(|t| t.name).collect();
    names.sort();
    for name in &names {
        let (mut v, shape) = src.read_f32(name).unwrap();
        let target = name.contains(".layers.") && name.ends_with("_proj.weight");
        if target {
            prune(&mut v, shape[1], layout == SparseLayout::Sparse24Bitmask);
            let module = name.strip_suffix(".weight").unwrap();
            let t = sparse_tensors(module, &v, shape[0], shape[1], FloatType::F32, layout).unwrap();
            sparse.extend(t);
        } else {
            sparse.push(f32_tensor(name, shape.clone(), &v));
        }
        zeros += v.iter().filter(|x| **x == 0.0).count();
        total += v.len();
        dense.push(f32_tensor(name, shape, &v));
    }
    write_st(&dense_dir.join("model.safetensors"), &dense);
    write_st(&sparse_dir.join("model.safetensors"), &sparse);
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("tiny-llama/config.json")).unwrap()).unwrap();
    std::fs::write(dense_dir.join("config.json"), cfg.to_string()).unwrap();
    cfg["quantization_config"] = sparsity_config(
        layout,
        zeros as f64 / total as f64,
        &["Linear".into()],
        &["lm_head".into()],
    );
    std::fs::write(sparse_dir.join("config.json"), cfg.to_string()).unwrap();
    (dense_dir, sparse_dir)
}

/// `SHRINK_SPARSE_KEEP=DIR cargo test -p shrink-io --test sparse` keeps the checkpoints in
/// `DIR/<layout>/{dense,sparse}` for `scripts/check-sparse.py DIR/<layout>/sparse
/// DIR/<layout>/dense`.
#[test]
fn a_sparse_checkpoint_reads_back_bit_for_bit() {
    for layout in SparseLayout::ALL {
        let tmp = tempfile::tempdir().unwrap();
        let root = match std::env::var_os("SHRINK_SPARSE_KEEP") {
            Some(d) => PathBuf::from(d).join(layout.name()),
            None => tmp.path().to_path_buf(),
        };
        let (dense_dir, sparse_dir) = pruned_pair(&root, layout);
        let dense = Checkpoint::open(&dense_dir).unwrap();
        let sparse = Checkpoint::open(&sparse_dir).unwrap();
        let mut n = 0;
        for t in dense.tensors() {
            assert!(sparse.has(&t.name), "{}", t.name);
            let (a, sa) = dense.read_f32(&t.name).unwrap();
            let (b, sb) = sparse.read_f32(&t.name).unwrap();
            assert_eq!(sa, sb, "{}", t.name);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a), bits(&b), "{} ({layout:?})", t.name);
            if let Checkpoint::Hf(h) = &sparse {
                // Sparse weights are dense floats to the rest of shrink, not quantized ones.
                assert!(h.quantized(&t.name).unwrap().is_none());
            }
            n += 1;
        }
        assert_eq!(n, 20);
        // The sparse file is smaller than the dense one (half the linear weights are zeros).
        let size = |c: &Checkpoint| c.tensors().iter().map(|t| t.bytes).sum::<u64>();
        assert!(size(&sparse) < size(&dense), "{layout:?}");
    }
}

#[test]
fn the_config_is_compressed_tensors_sparsity_config() {
    let v = sparsity_config(
        SparseLayout::Sparse24Bitmask,
        0.25,
        &["Linear".into()],
        &["lm_head".into()],
    );
    assert_eq!(v["quant_method"], "compressed-tensors");
    let s = &v["sparsity_config"];
    assert_eq!(s["format"], "sparse-24-bitmask");
    assert_eq!(s["sparsity_structure"], "2:4");
    assert_eq!(s["global_sparsity"], 0.25);
    assert_eq!(s["targets"], json!(["Linear"]));
    assert_eq!(s["ignore"], json!(["lm_head"]));
    assert_eq!(s["registry_requires_subclass"], false);
    let u = sparsity_config(SparseLayout::Bitmask, 0.5, &[], &[]);
    assert_eq!(u["sparsity_config"]["sparsity_structure"], "unstructured");
}

#[test]
fn tensors_are_named_typed_and_counted_as_compressed_tensors_writes_them() {
    // [[1, 0, 0, 2, 0, 0, 0, 0, 3]] in bfloat16.
    let w = [1.0f32, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 3.0];
    let t = sparse_tensors("m", &w, 1, 9, FloatType::BF16, SparseLayout::Bitmask).unwrap();
    let names: Vec<(&str, Dtype, &[usize])> = t
        .iter()
        .map(|t| (t.name.as_str(), t.dtype, t.shape.as_slice()))
        .collect();
    assert_eq!(
        names,
        [
            ("m.shape", Dtype::I64, &[2][..]),
            ("m.compressed", Dtype::BF16, &[3][..]),
            ("m.bitmask", Dtype::U8, &[1, 2][..]),
            ("m.row_offsets", Dtype::I64, &[1][..]),
        ]
    );
    assert_eq!(t[2].bytes, vec![0b0000_1001, 0b1]);
    assert_eq!(stored_bytes(&t), 16 + 3 * 2 + 2 + 8);
    let w24 = [0.0f32, 5.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0];
    let t = sparse_tensors(
        "m",
        &w24,
        2,
        4,
        FloatType::F16,
        SparseLayout::Sparse24Bitmask,
    )
    .unwrap();
    assert_eq!(t.len(), 3);
    assert_eq!(
        (t[0].name.as_str(), t[0].shape.as_slice()),
        ("m.shape", &[2, 1][..])
    );
    assert_eq!(
        (t[1].dtype, t[1].shape.as_slice()),
        (Dtype::F16, &[2, 2][..])
    );
    assert_eq!(t[2].bytes, vec![0b1010, 0b0011]);
}

#[test]
fn two_four_is_refused_for_a_weight_that_is_not() {
    let w = [1.0f32, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0];
    let e = sparse_tensors(
        "model.layers.3.mlp.up_proj",
        &w,
        2,
        4,
        FloatType::F32,
        SparseLayout::Sparse24Bitmask,
    )
    .unwrap_err();
    assert!(matches!(e, FormatError::WithTensor { .. }));
    let msg = e.to_string();
    assert!(msg.contains("model.layers.3.mlp.up_proj.weight"), "{msg}");
    assert!(msg.contains("2:4") && msg.contains("row 0"), "{msg}");
    // The same weight is fine unstructured.
    assert!(sparse_tensors("m", &w, 2, 4, FloatType::F32, SparseLayout::Bitmask).is_ok());
}

/// A one-module sparse checkpoint whose parts are `tensors`.
fn one_module(dir: &Path, tensors: &[StoredTensor], layout: SparseLayout) -> Checkpoint {
    std::fs::create_dir_all(dir).unwrap();
    write_st(&dir.join("model.safetensors"), tensors);
    let cfg = json!({"model_type": "llama",
        "quantization_config": sparsity_config(layout, 0.5, &["Linear".into()], &[])});
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    Checkpoint::open(dir).unwrap()
}

/// A change that makes a sparse module lie.
type Damage = Box<dyn Fn(&mut Vec<StoredTensor>)>;

#[test]
fn lying_files_are_refused_naming_file_and_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let w = [1.0f32, 0.0, 2.0, 0.0, 0.0, 3.0, 4.0, 0.0];
    let good = sparse_tensors("q", &w, 2, 4, FloatType::F32, SparseLayout::Bitmask).unwrap();
    let cases: Vec<(&str, Damage, &[&str])> = vec![
        (
            "count",
            Box::new(|t| {
                // One value fewer than the bitmask flags.
                t[1].bytes.truncate(8);
                t[1].shape = vec![2];
            }),
            &["q.compressed", "flags 4", "holds 2"],
        ),
        (
            "shape",
            Box::new(|t| {
                t[0].bytes = [3i64, 4].iter().flat_map(|v| v.to_le_bytes()).collect();
            }),
            &["q.bitmask", "shape [2, 1]", "expected [3, 1]"],
        ),
        (
            "offsets",
            Box::new(|t| {
                t[3].bytes = [0i64, 1].iter().flat_map(|v| v.to_le_bytes()).collect();
            }),
            &["q.compressed", "row_offsets[1]"],
        ),
        (
            "dtype",
            Box::new(|t| {
                t[2].dtype = Dtype::I8;
            }),
            &["q.bitmask", "dtype I8"],
        ),
        (
            "missing",
            Box::new(|t| {
                t.remove(3);
            }),
            &["q.row_offsets is missing"],
        ),
        (
            "quantized",
            Box::new(|t| {
                t[1].dtype = Dtype::I8;
                t[1].bytes.truncate(4);
            }),
            &["q.compressed", "sparse float weights only"],
        ),
    ];
    for (what, damage, phrases) in cases {
        let mut t = good.clone();
        damage(&mut t);
        let dir = tmp.path().join(what);
        let ckpt = one_module(&dir, &t, SparseLayout::Bitmask);
        let msg = match ckpt.read_f32("q.weight") {
            Ok(_) => panic!("{what}: read a lying file"),
            Err(e) => e.to_string(),
        };
        assert!(msg.contains(&dir.display().to_string()), "{what}: {msg}");
        for p in phrases {
            assert!(msg.contains(p), "{what}: {msg} does not say {p:?}");
        }
    }
    // A 2:4 checkpoint whose bitmask has three bits in a group.
    let w24 = [1.0f32, 0.0, 2.0, 0.0];
    let mut t = sparse_tensors(
        "q",
        &w24,
        1,
        4,
        FloatType::F32,
        SparseLayout::Sparse24Bitmask,
    )
    .unwrap();
    t[2].bytes = vec![0b0111];
    let ckpt = one_module(&tmp.path().join("t24"), &t, SparseLayout::Sparse24Bitmask);
    let msg = ckpt.read_f32("q.weight").err().unwrap().to_string();
    assert!(
        msg.contains("q.compressed") && msg.contains("flags 3"),
        "{msg}"
    );
}

#[test]
fn old_weight_dot_names_are_read_too() {
    // compressed-tensors 0.8 kept `.weight` in the names: `q.weight.compressed`, ...
    let tmp = tempfile::tempdir().unwrap();
    let w = [1.0f32, 0.0, 2.0, 0.0];
    let mut t =
        sparse_tensors("q.weight", &w, 2, 2, FloatType::F32, SparseLayout::Bitmask).unwrap();
    t.push(f32_tensor("n.weight", vec![2], &[1.0, 2.0]));
    let ckpt = one_module(tmp.path(), &t, SparseLayout::Bitmask);
    assert_eq!(ckpt.read_f32("q.weight").unwrap(), (w.to_vec(), vec![2, 2]));
    assert_eq!(ckpt.read_f32("n.weight").unwrap().0, vec![1.0, 2.0]);
}

/// The reference checkpoints compressed-tensors 0.14 wrote (scripts/make-sparse-reference.py).
fn reference(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/ct-sparse")
        .join(name)
}

#[test]
fn compressed_tensors_own_checkpoints_decode_to_their_dense_weights() {
    for layout in SparseLayout::ALL {
        let sparse = Checkpoint::open(reference(layout.name())).unwrap();
        let dense = Checkpoint::open(reference(&format!("{}-dense", layout.name()))).unwrap();
        let Checkpoint::Hf(h) = &sparse else {
            unreachable!()
        };
        assert_eq!(
            h.quantization_config().unwrap(),
            &sparsity_config(
                layout,
                h.quantization_config().unwrap()["sparsity_config"]["global_sparsity"]
                    .as_f64()
                    .unwrap(),
                &["Linear".into()],
                &["lm_head".into()]
            ),
            "shrink writes the config compressed-tensors writes"
        );
        let mut modules = 0;
        for t in dense.tensors() {
            let (want, ws) = dense.read_f32(&t.name).unwrap();
            let (got, gs) = sparse.read_f32(&t.name).unwrap();
            assert_eq!(ws, gs, "{}", t.name);
            // −0.0 is a zero to compressed-tensors: it comes back +0.0, equal as a value.
            assert_eq!(want, got, "{}", t.name);
            let module = t.name.strip_suffix(".weight").unwrap();
            if !h
                .weights
                .tensors
                .contains_key(&format!("{module}.compressed"))
            {
                continue;
            }
            modules += 1;
            // shrink's writer stores what compressed-tensors stores: the same tensors, and for
            // the unstructured layout the same bytes (2:4 may pick other zeros to fill a group).
            let dtype = match &t.dtype {
                shrink_io::StoredDtype::Float(f) => *f,
                other => panic!("{other:?}"),
            };
            let ours = sparse_tensors(module, &want, ws[0], ws[1], dtype, layout).unwrap();
            for o in &ours {
                let theirs = &h.weights.tensors[&o.name];
                assert_eq!(
                    (o.dtype, &o.shape),
                    (theirs.dtype, &theirs.shape),
                    "{}",
                    o.name
                );
                let same_bytes = o.bytes.as_slice() == h.weights.bytes(theirs);
                if layout == SparseLayout::Bitmask || o.name.ends_with(".shape") {
                    assert!(same_bytes, "{}", o.name);
                }
            }
        }
        assert_eq!(modules, 3, "{layout:?}");
    }
}
