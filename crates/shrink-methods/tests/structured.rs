//! Structured pruning on every tiny fixture: each mode's result loads in shrink with the shapes
//! and config its mode implies and runs; layer removal drops the block of lowest Block
//! Influence (measured here independently); slicing MLP channels or heads gives the logits of
//! the original model with the removed channels' or heads' weights zeroed (a check that does
//! not go through the pruner's bookkeeping); bad input is refused and nothing is written.

use std::path::{Path, PathBuf};

use candle_core::Tensor;
use shrink_io::Checkpoint;
use shrink_methods::calibrated::{self, Run};
use shrink_methods::gptq::GptqSpec;
use shrink_methods::pipeline::Silent;
use shrink_methods::select::Selection;
use shrink_methods::structured::{prune, Structured};
use shrink_methods::MethodError;
use shrink_models::layerwise::Sequential;
use shrink_models::{Architecture, BertClassifier, Model, WeightLoader};

const ALL: [&str; 7] = [
    "tiny-llama",
    "tiny-mistral",
    "tiny-qwen2",
    "tiny-gpt2",
    "tiny-gpt_neox",
    "tiny-bert_cls",
    "tiny-distilbert_cls",
];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures")
        .join(name)
}

/// A fresh, empty scratch folder for `test`.
fn scratch(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("shrink-structured-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn samples() -> Vec<Vec<u32>> {
    (0..4)
        .map(|s| {
            (0..32)
                .map(|i| ((i * 31 + s * 7 + 3) % 500) as u32)
                .collect()
        })
        .collect()
}

fn run_prune(model: &Path, out: &Path, what: Structured) -> Result<serde_json::Value, MethodError> {
    let ckpt = Checkpoint::open(model).unwrap();
    let (all, samples) = (Selection::default(), samples());
    let run = Run::new(&ckpt, out, &samples, &all, &Silent);
    prune(&run, what).map(|r| r.to_json())
}

fn config(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap()
}

/// Logits of a model directory on a fixed prompt: [t, vocab] of a causal LM, [labels] of a
/// classifier — as one flat vector.
fn logits(dir: &Path) -> Vec<f32> {
    let ids: Vec<u32> = (0..20).map(|i| (i * 37 + 5) % 500).collect();
    let ckpt = Checkpoint::open(dir).unwrap();
    let t = match Architecture::from_checkpoint(&ckpt).unwrap() {
        Architecture::Decoder(_) => Model::load(&ckpt).unwrap().forward(&ids, None).unwrap(),
        Architecture::Encoder(c) => BertClassifier::load(c, &WeightLoader::new(&ckpt, None, &[]))
            .unwrap()
            .forward(&ids)
            .unwrap(),
    };
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Every tensor of a safetensors file: name → (shape, f32 values).
fn tensors(dir: &Path) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| {
            assert_eq!(t.dtype(), safetensors::Dtype::F32, "{n}");
            let f = t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            (n, t.shape().to_vec(), f)
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn get<'a>(ts: &'a [(String, Vec<usize>, Vec<f32>)], name: &str) -> (&'a [usize], &'a [f32]) {
    let t = ts
        .iter()
        .find(|t| t.0 == name)
        .unwrap_or_else(|| panic!("{name}"));
    (&t.1, &t.2)
}

/// A copy of the model in `src` (config.json and weights) with `edit` applied to its tensors.
fn edited(src: &Path, dst: &Path, mut edit: impl FnMut(&str, &[usize], &mut [f32])) {
    let mut ts = tensors(src);
    for (n, s, v) in &mut ts {
        edit(n, s, v);
    }
    let bytes: Vec<Vec<u8>> = ts
        .iter()
        .map(|t| t.2.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = ts
        .iter()
        .zip(&bytes)
        .map(|(t, b)| {
            let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, t.1.clone(), b);
            (t.0.clone(), v.unwrap())
        })
        .collect();
    std::fs::create_dir_all(dst).unwrap();
    safetensors::serialize_to_file(views, None, &dst.join("model.safetensors")).unwrap();
    std::fs::copy(src.join("config.json"), dst.join("config.json")).unwrap();
}

/// Column `j` of a [rows, cols] matrix, or row `j` (axis 0).
fn line(shape: &[usize], v: &[f32], axis: usize, j: usize, width: usize) -> Vec<f32> {
    let (rows, cols) = (shape[0], shape[1]);
    if axis == 0 {
        v[j * width * cols..(j + 1) * width * cols].to_vec()
    } else {
        (0..rows)
            .flat_map(|r| v[r * cols + j * width..r * cols + (j + 1) * width].to_vec())
            .collect()
    }
}

/// Which units (of `width` lines along `axis`) of the original tensor the pruned one kept,
/// found by value.
fn kept_units(
    orig: (&[usize], &[f32]),
    pruned: (&[usize], &[f32]),
    axis: usize,
    width: usize,
) -> Vec<usize> {
    let n = pruned.0[axis] / width;
    (0..n)
        .map(|k| {
            let p = line(pruned.0, pruned.1, axis, k, width);
            (0..orig.0[axis] / width)
                .find(|&j| line(orig.0, orig.1, axis, j, width) == p)
                .expect("every kept unit is one of the original's")
        })
        .collect()
}

/// Zero the units of `v` (along `axis`, `width` lines each) not in `kept`.
fn zero_others(shape: &[usize], v: &mut [f32], axis: usize, width: usize, kept: &[usize]) {
    let cols = shape[1];
    for j in 0..shape[axis] / width {
        if kept.contains(&j) {
            continue;
        }
        for r in 0..shape[0] {
            for c in 0..cols {
                let unit = if axis == 0 { r / width } else { c / width };
                if unit == j {
                    v[r * cols + c] = 0.0;
                }
            }
        }
    }
}

/// (block prefix, down projection's stored name inside the block, its channel axis, MLP
/// width key) of each fixture.
fn mlp_of(fixture: &str) -> (&'static str, &'static str, usize, &'static str) {
    match fixture {
        "tiny-gpt2" => ("transformer.h", "mlp.c_proj.weight", 0, "n_inner"),
        "tiny-gpt_neox" => (
            "gpt_neox.layers",
            "mlp.dense_4h_to_h.weight",
            1,
            "intermediate_size",
        ),
        "tiny-bert_cls" => (
            "bert.encoder.layer",
            "output.dense.weight",
            1,
            "intermediate_size",
        ),
        "tiny-distilbert_cls" => (
            "distilbert.transformer.layer",
            "ffn.lin2.weight",
            1,
            "hidden_dim",
        ),
        _ => (
            "model.layers",
            "mlp.down_proj.weight",
            1,
            "intermediate_size",
        ),
    }
}

fn layers_key(fixture: &str) -> &'static str {
    match fixture {
        "tiny-gpt2" => "n_layer",
        "tiny-distilbert_cls" => "n_layers",
        _ => "num_hidden_layers",
    }
}

/// Block Influence of each block, computed here from the blocks' inputs and outputs.
fn block_influence(model: &Path) -> Vec<f64> {
    let ckpt = Checkpoint::open(model).unwrap();
    let seq = Sequential::new(&ckpt).unwrap();
    let mut xs = seq.embed(&samples()).unwrap();
    let mut bi = Vec::new();
    for l in 0..seq.num_layers() {
        let ys = seq.run(seq.layer(l).unwrap().as_ref(), &xs, None).unwrap();
        let (mut sum, mut n) = (0f64, 0);
        for (x, y) in xs.iter().zip(&ys) {
            let (x, y): (Vec<Vec<f32>>, Vec<Vec<f32>>) =
                (x.to_vec2().unwrap(), y.to_vec2().unwrap());
            for (a, b) in x.iter().zip(&y) {
                let dot: f64 = a.iter().zip(b).map(|(p, q)| (p * q) as f64).sum();
                let na: f64 = a.iter().map(|p| (p * p) as f64).sum::<f64>().sqrt();
                let nb: f64 = b.iter().map(|p| (p * p) as f64).sum::<f64>().sqrt();
                sum += dot / (na * nb);
                n += 1;
            }
        }
        bi.push(1.0 - sum / n as f64);
        xs = ys;
    }
    bi
}

#[test]
fn layers_drops_the_block_of_lowest_influence_on_every_architecture() {
    let dir = scratch("layers");
    for f in ALL {
        let src = fixture(f);
        let out = dir.join(f);
        let r = run_prune(&src, &out, Structured::Layers { remove: 1 }).unwrap();
        let bi = block_influence(&src);
        let lowest = if bi[0] <= bi[1] { 0 } else { 1 };
        let s = &r["structured"];
        assert_eq!(s["dropped"][0]["layer"], lowest, "{f}: {bi:?} {s}");
        let reported = s["dropped"][0]["block_influence"].as_f64().unwrap();
        assert!(
            (reported - bi[lowest]).abs() < 1e-4,
            "{f}: {reported} vs {bi:?}"
        );
        assert_eq!(config(&out)[layers_key(f)], 1, "{f}");
        // The kept block is the original's, renumbered 0.
        let (prefix, down, _, _) = mlp_of(f);
        let kept = 1 - lowest;
        let (o, p) = (tensors(&src), tensors(&out));
        assert_eq!(
            get(&o, &format!("{prefix}.{kept}.{down}")),
            get(&p, &format!("{prefix}.0.{down}")),
            "{f}"
        );
        assert!(
            p.iter().all(|t| !t.0.contains(&format!("{prefix}.1."))),
            "{f}"
        );
        assert!(
            r["params_after"].as_u64() < r["params_before"].as_u64(),
            "{f}"
        );
        assert!(logits(&out).iter().all(|x| x.is_finite()), "{f}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn neurons_slicing_equals_zeroing_the_removed_channels_on_every_architecture() {
    let dir = scratch("neurons");
    for f in ALL {
        let src = fixture(f);
        let out = dir.join(f);
        run_prune(&src, &out, Structured::Neurons { keep_ratio: 0.5 }).unwrap();
        let (prefix, down, axis, key) = mlp_of(f);
        let width = config(&src)[key].as_u64().unwrap_or(256) as usize;
        assert_eq!(config(&out)[key], width / 2, "{f}");
        let (o, p) = (tensors(&src), tensors(&out));
        let mut kept = Vec::new();
        for l in 0..2 {
            let name = format!("{prefix}.{l}.{down}");
            let k = kept_units(get(&o, &name), get(&p, &name), axis, 1);
            assert_eq!(k.len(), width / 2);
            assert!(k.windows(2).all(|w| w[0] < w[1]), "{f}: order kept");
            kept.push((name, k));
        }
        let zeroed = dir.join(format!("{f}-zeroed"));
        edited(&src, &zeroed, |n, s, v| {
            if let Some((_, k)) = kept.iter().find(|(name, _)| name == n) {
                zero_others(s, v, axis, 1, k);
            }
        });
        let d = max_diff(&logits(&out), &logits(&zeroed));
        assert!(d < 1e-4, "{f}: sliced and zeroed logits differ by {d}");
        // And pruning changed the function (the removed channels did something).
        assert!(max_diff(&logits(&out), &logits(&src)) > 1e-4, "{f}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn heads_slicing_equals_zeroing_the_removed_heads_llama_family() {
    let dir = scratch("heads");
    // tiny-llama and tiny-qwen2: 4 query heads over 2 key/value heads of 16 → keep 1 group.
    for f in ["tiny-llama", "tiny-qwen2"] {
        let src = fixture(f);
        let out = dir.join(f);
        let r = run_prune(&src, &out, Structured::Heads { keep_ratio: 0.5 }).unwrap();
        let c = config(&out);
        assert_eq!(c["num_attention_heads"], 2, "{f}");
        assert_eq!(c["num_key_value_heads"], 1, "{f}");
        assert_eq!(c["head_dim"], 16, "{f}");
        assert_eq!(c["hidden_size"], 64, "{f}");
        let (o, p) = (tensors(&src), tensors(&out));
        let mut kept = Vec::new();
        for l in 0..2 {
            let name = format!("model.layers.{l}.self_attn.o_proj.weight");
            let q = kept_units(get(&o, &name), get(&p, &name), 1, 16);
            // Whole groups: the two query heads of one key/value head.
            assert!(q == [0, 1] || q == [2, 3], "{f}: {q:?}");
            assert_eq!(
                r["structured"]["heads_kept"][l],
                serde_json::json!(q),
                "{f}"
            );
            let k = format!("model.layers.{l}.self_attn.k_proj.weight");
            let kv = kept_units(get(&o, &k), get(&p, &k), 0, 16);
            assert_eq!(kv, [q[0] / 2], "{f}");
            kept.push((name, q));
        }
        let zeroed = dir.join(format!("{f}-zeroed"));
        edited(&src, &zeroed, |n, s, v| {
            if let Some((_, k)) = kept.iter().find(|(name, _)| name == n) {
                zero_others(s, v, 1, 16, k);
            }
        });
        let d = max_diff(&logits(&out), &logits(&zeroed));
        assert!(d < 1e-4, "{f}: sliced and zeroed logits differ by {d}");
    }
    // tiny-mistral: 4 query heads share 1 key/value head: the only group stays.
    let out = dir.join("tiny-mistral");
    run_prune(
        &fixture("tiny-mistral"),
        &out,
        Structured::Heads { keep_ratio: 0.6 },
    )
    .unwrap();
    assert_eq!(config(&out)["num_attention_heads"], 4);
    let e = run_prune(
        &fixture("tiny-mistral"),
        &dir.join("none"),
        Structured::Heads { keep_ratio: 0.4 },
    )
    .unwrap_err();
    assert!(e.to_string().contains("key/value groups"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn heads_are_refused_where_transformers_derives_the_head_width() {
    let dir = scratch("heads-refused");
    for f in [
        "tiny-gpt2",
        "tiny-gpt_neox",
        "tiny-bert_cls",
        "tiny-distilbert_cls",
    ] {
        let out = dir.join(f);
        let e = run_prune(&fixture(f), &out, Structured::Heads { keep_ratio: 0.5 }).unwrap_err();
        assert!(matches!(e, MethodError::Options(_)), "{f}: {e:?}");
        assert!(
            e.to_string().contains("hidden_size / num_heads"),
            "{f}: {e}"
        );
        assert!(!out.exists(), "{f}: nothing written");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_input_is_refused_and_nothing_is_written() {
    let dir = scratch("bad");
    let llama = fixture("tiny-llama");
    let cases = [
        (Structured::Layers { remove: 0 }, "0 layers"),
        (Structured::Layers { remove: 2 }, "leaves none"),
        (Structured::Layers { remove: 7 }, "leaves none"),
        (Structured::Neurons { keep_ratio: 0.0 }, "outside (0, 1]"),
        (Structured::Neurons { keep_ratio: 1.5 }, "outside (0, 1]"),
        (
            Structured::Neurons {
                keep_ratio: f64::NAN,
            },
            "outside (0, 1]",
        ),
        (Structured::Neurons { keep_ratio: 0.001 }, "keeps none"),
        (Structured::Heads { keep_ratio: -0.5 }, "outside (0, 1]"),
        (Structured::Heads { keep_ratio: 0.2 }, "keeps none"),
    ];
    for (i, (what, msg)) in cases.into_iter().enumerate() {
        let out = dir.join(format!("out{i}"));
        let e = run_prune(&llama, &out, what).unwrap_err();
        assert!(matches!(e, MethodError::Options(_)), "{what:?}: {e:?}");
        assert!(e.to_string().contains(msg), "{what:?}: {e}");
        assert!(!out.exists(), "{what:?}: nothing written");
    }
    // A quantized checkpoint (GPTQ of tiny-llama) is refused.
    let q = dir.join("gptq");
    {
        let ckpt = Checkpoint::open(&llama).unwrap();
        let (all, s) = (Selection::default(), samples());
        let run = Run::new(&ckpt, &q, &s, &all, &Silent);
        let spec = GptqSpec {
            group_size: 16,
            ..GptqSpec::default()
        };
        calibrated::gptq(&run, spec, false).unwrap();
    }
    let out = dir.join("from-gptq");
    let e = run_prune(&q, &out, Structured::Layers { remove: 1 }).unwrap_err();
    assert!(matches!(e, MethodError::Input { .. }), "{e:?}");
    assert!(e.to_string().contains("quantized"), "{e}");
    assert!(!out.exists());
    // No leftovers beside the outputs.
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["gptq"], "only the quantized input remains");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_pruned_output_reloads_in_sequential_and_keeps_the_tokenizer_files() {
    let dir = scratch("reload");
    let out = dir.join("out");
    run_prune(
        &fixture("tiny-qwen2"),
        &out,
        Structured::Layers { remove: 1 },
    )
    .unwrap();
    // qwen2's per-layer list follows the blocks.
    assert_eq!(config(&out)["layer_types"].as_array().unwrap().len(), 1);
    let ckpt = Checkpoint::open(&out).unwrap();
    let seq = Sequential::new(&ckpt).unwrap();
    assert_eq!(seq.num_layers(), 1);
    let xs: Vec<Tensor> = seq.embed(&samples()).unwrap();
    let ys = seq.run(seq.layer(0).unwrap().as_ref(), &xs, None).unwrap();
    assert_eq!(ys[0].dims(), xs[0].dims());
    assert!(out.join("shrink-quantize.json").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
