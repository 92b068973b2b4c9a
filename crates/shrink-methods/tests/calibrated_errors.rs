//! A calibrated run's failures stay typed: bad options, bad input (a NaN weight, named with
//! the file), a numerical failure (naming the layer) and a write failure are distinct
//! `MethodError` variants, and each message names the file or the layer.

mod common;

use std::path::{Path, PathBuf};

use common::{fixture, samples, scratch};

use shrink_io::Checkpoint;
use shrink_methods::calibrated::{self, Run};
use shrink_methods::gptq::GptqSpec;
use shrink_methods::pipeline::Silent;
use shrink_methods::select::Selection;
use shrink_methods::MethodError;

fn gptq(model: &Path, out: &Path, spec: GptqSpec) -> Result<(), MethodError> {
    let ckpt = Checkpoint::open(model).unwrap();
    let (all, samples) = (Selection::default(), samples());
    let run = Run::new(&ckpt, out, &samples, &all, &Silent);
    calibrated::gptq(&run, spec, false).map(|_| ())
}

/// tiny-llama with `weight`'s element 5 set to NaN, in `dir`.
fn with_nan(dir: &Path, weight: &str) -> PathBuf {
    let src = fixture("tiny-llama");
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<u8>, Vec<usize>, safetensors::Dtype)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.data().to_vec(), v.shape().to_vec(), v.dtype()))
        .collect();
    let t = tensors.iter_mut().find(|t| t.0 == weight).unwrap();
    assert_eq!(t.3, safetensors::Dtype::F32);
    t.1[20..24].copy_from_slice(&f32::NAN.to_le_bytes());
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, b, s, d)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let m = dir.join("nan-model");
    std::fs::create_dir_all(&m).unwrap();
    safetensors::serialize_to_file(views, None, &m.join("model.safetensors")).unwrap();
    std::fs::copy(src.join("config.json"), m.join("config.json")).unwrap();
    m
}

#[test]
fn each_failure_is_its_own_variant_and_names_its_place() {
    let dir = scratch("calibrated-errors");
    let llama = fixture("tiny-llama");

    // Bad options: a group size that does not divide the 64 input features.
    let bad = GptqSpec {
        group_size: 48,
        ..GptqSpec::default()
    };
    let e = gptq(&llama, &dir.join("a"), bad).unwrap_err();
    assert!(matches!(e, MethodError::Options(_)), "{e:?}");
    assert!(e.to_string().contains("--group-size 48"), "{e}");
    assert!(!dir.join("a").exists(), "nothing written");

    // Bad input: a NaN in a weight, named with the file and the element — refused as the
    // weight is read (a malformed input), before any calibration.
    let weight = "model.layers.1.mlp.up_proj.weight";
    let nan = with_nan(&dir, weight);
    let spec = GptqSpec {
        group_size: 16,
        ..GptqSpec::default()
    };
    let e = gptq(&nan, &dir.join("b"), spec).unwrap_err();
    assert!(
        matches!(&e, MethodError::Model(shrink_models::ModelError::Io(_))),
        "{e:?}"
    );
    let m = e.to_string();
    assert!(
        m.contains("nan-model") && m.contains(weight) && m.contains("NaN"),
        "{m}"
    );
    assert!(!dir.join("b").exists(), "nothing left behind");

    // A write failure: the output's parent folder does not exist.
    let e = gptq(&llama, &dir.join("missing/out"), spec).unwrap_err();
    assert!(matches!(e, MethodError::Io(_)), "{e:?}");
    assert!(e.to_string().contains("missing"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_indefinite_hessian_is_a_numerical_failure_naming_the_layer() {
    let n = 4;
    let h: Vec<f64> = (0..n * n)
        .map(|k| if k / n == k % n { 1.0 } else { -5.0 })
        .collect();
    let layer = "model.layers.3.mlp.down_proj.weight";
    let e = shrink_methods::gptq::prepare(h, n, &GptqSpec::default(), layer).unwrap_err();
    assert!(matches!(e, MethodError::Numerical { .. }), "{e:?}");
    assert!(e.to_string().starts_with(layer), "{e}");
}
