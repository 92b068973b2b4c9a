//! GPTQ and AWQ checkpoints through `shrink_io::hf_int`: what the writers store reads back
//! exactly (every GPTQ bit width, v1 and v2 zero points, act-order), and damaged checkpoints
//! are refused with an error that names the file, the tensor and what is wrong.

use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use serde_json::{json, Value};
use shrink_formats::float::FloatType;
use shrink_formats::gptq_layout::{CheckpointFormat, GptqParts, GPTQ_BITS};
use shrink_formats::int::{self, Granularity, IntSpec};
use shrink_io::hf_int::{
    awq_config, awq_tensors, gptq_config, gptq_quantize_config, gptq_tensors, read_awq, read_gptq,
};
use shrink_io::quantized::{Quantized, StoredTensor};
use shrink_io::safetensors::SafetensorsModel;

const MODULE: &str = "model.layers.0.mlp.down_proj";

/// xorshift64* stream.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        (self.next() >> 11) % n
    }
}

/// Random GPTQ parts of a `[rows, cols]` weight, groups of `g`, act-order if `act`.
fn parts(rng: &mut Rng, bits: u8, g: usize, rows: usize, cols: usize, act: bool) -> GptqParts {
    let ng = cols.div_ceil(g);
    let mut g_idx: Vec<u32> = (0..cols).map(|c| (c / g) as u32).collect();
    if act {
        for i in (1..cols).rev() {
            g_idx.swap(i, rng.below(i as u64 + 1) as usize);
        }
    }
    GptqParts {
        bits,
        group_size: g,
        rows,
        cols,
        codes: (0..rows * cols)
            .map(|_| rng.below(1 << bits) as u8)
            .collect(),
        scales: (0..rows * ng)
            .map(|_| half::f16::from_f32(1e-3 + rng.below(1000) as f32 * 1e-4).to_f32())
            .collect(),
        zeros: (0..rows * ng).map(|_| rng.below(1 << bits) as u8).collect(),
        g_idx,
    }
}

/// Write `tensors` as `dir/model.safetensors` and a config.json with `qcfg`; open the model.
fn write(dir: &Path, tensors: &[StoredTensor], qcfg: &Value) -> SafetensorsModel {
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
    let config = json!({"architectures": ["LlamaForCausalLM"], "quantization_config": qcfg});
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    SafetensorsModel::open_dir(dir).unwrap()
}

/// Assert `r` is an error naming `dir` and containing every phrase (case-insensitive).
fn expect_err(r: shrink_io::Result<Option<Quantized>>, dir: &Path, phrases: &[&str]) {
    let msg = match r {
        Ok(_) => panic!("expected an error saying {phrases:?}, got success"),
        Err(e) => e.to_string(),
    };
    eprintln!("{msg}");
    assert!(
        msg.contains(&dir.display().to_string()),
        "error does not name {}:\n  {msg}",
        dir.display()
    );
    let lower = msg.to_lowercase();
    for p in phrases {
        assert!(
            lower.contains(&p.to_lowercase()),
            "error does not say {p:?}:\n  {msg}"
        );
    }
}

fn gptq_cfg(bits: u8, g: Option<usize>) -> Value {
    gptq_config(bits, g, false, false, 0.01, true, false)
}

#[test]
fn gptq_reads_back_what_it_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = Rng(42);
    for bits in GPTQ_BITS {
        for act in [false, true] {
            let p = parts(&mut rng, bits, 32, 64, 128, act);
            let dir = tmp.path().join(format!("gptq{bits}{act}"));
            std::fs::create_dir(&dir).unwrap();
            let qcfg = gptq_cfg(bits, Some(32));
            let st = write(&dir, &gptq_tensors(MODULE, &p).unwrap(), &qcfg);
            let q = read_gptq(&st, &dir, &qcfg, MODULE).unwrap().unwrap();
            // Act-order (a shuffled g_idx, every group still 32 columns) reads as the integer
            // tensor over the columns sorted by group, with the permutation; its values are the
            // layout's exactly.
            assert_eq!(q.dequantize().0, p.dequantize(), "{bits} bits, act {act}");
            if act {
                assert_eq!(q.stored_bytes(), p.stored_bytes());
            }
            match (q, act) {
                (Quantized::Int(t), false) => assert_eq!(Some(t), p.to_int_tensor()),
                (Quantized::ActOrder { t, perm, .. }, true) => {
                    assert_eq!((t.rows, t.cols), (64, 128));
                    let mut sorted = perm.clone();
                    sorted.sort();
                    assert_eq!(sorted, (0..128).collect::<Vec<u32>>());
                    for (j, &c) in perm.iter().enumerate() {
                        assert_eq!(p.g_idx[c as usize] as usize, j / 32);
                    }
                }
                (_, act) => panic!("{bits} bits, act {act}: wrong variant"),
            }
            // A module stored dense has no qweight.
            assert!(read_gptq(&st, &dir, &qcfg, "lm_head").unwrap().is_none());
        }
    }
}

#[test]
fn gptq_reads_other_tools_conventions() {
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = Rng(7);
    // gptq_v2 zero points, symmetric, no g_idx tensor, group_size -1, 3 bits.
    let mut p = parts(&mut rng, 3, 64, 32, 64, false);
    p.zeros.iter_mut().for_each(|z| *z = 4);
    let packed = p.pack(CheckpointFormat::GptqV2).unwrap();
    let le = |v: &[i32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let tensors = vec![
        StoredTensor {
            name: format!("{MODULE}.qweight"),
            dtype: Dtype::I32,
            shape: vec![6, 32],
            bytes: le(&packed.qweight),
        },
        StoredTensor {
            name: format!("{MODULE}.qzeros"),
            dtype: Dtype::I32,
            shape: vec![1, 3],
            bytes: le(&packed.qzeros),
        },
        StoredTensor {
            name: format!("{MODULE}.scales"),
            dtype: Dtype::F16,
            shape: vec![1, 32],
            bytes: packed.scales.iter().flat_map(|s| s.to_le_bytes()).collect(),
        },
    ];
    let mut qcfg = gptq_config(3, None, false, true, 0.1, true, false);
    qcfg["checkpoint_format"] = json!("gptq_v2");
    let st = write(tmp.path(), &tensors, &qcfg);
    match read_gptq(&st, tmp.path(), &qcfg, MODULE).unwrap() {
        Some(Quantized::Int(t)) => assert_eq!(t.dequantize(), p.dequantize()),
        _ => panic!("expected an IntTensor"),
    }
    // The same file read as v1 gives other zero points: the format matters.
    qcfg["checkpoint_format"] = json!("gptq");
    match read_gptq(&st, tmp.path(), &qcfg, MODULE).unwrap() {
        Some(Quantized::Int(t)) => assert_ne!(t.dequantize(), p.dequantize()),
        _ => panic!("expected an IntTensor"),
    }
    assert_eq!(gptq_quantize_config(&qcfg)["model_file_base_name"], "model");
}

#[test]
fn awq_reads_back_what_it_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let (rows, cols) = (64, 256);
    let w: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.03)
        .collect();
    let t = int::quantize(
        &w,
        rows,
        cols,
        IntSpec::asymmetric(4, Granularity::Group(128), FloatType::F16),
    )
    .unwrap();
    let qcfg = awq_config(4, Some(128), true, "gemm");
    let st = write(tmp.path(), &awq_tensors(MODULE, &t).unwrap(), &qcfg);
    match read_awq(&st, tmp.path(), &qcfg, MODULE).unwrap() {
        Some(Quantized::Int(back)) => assert_eq!(back, t),
        _ => panic!("expected an IntTensor"),
    }
    assert!(read_awq(&st, tmp.path(), &qcfg, "lm_head")
        .unwrap()
        .is_none());
    // AutoAWQ's own spellings.
    let autoawq = json!({"quant_method": "awq", "w_bit": 4, "q_group_size": 128,
                         "version": "GEMM", "zero_point": true});
    assert!(read_awq(&st, tmp.path(), &autoawq, MODULE)
        .unwrap()
        .is_some());
}

/// A GPTQ checkpoint (4-bit, G 32, [64, 128], act-order) damaged by `damage`, read with
/// `qcfg` (None: the writer's config); asserts the refusal says `phrases`.
fn gptq_damaged(
    name: &str,
    damage: impl FnOnce(&mut Vec<StoredTensor>),
    qcfg: Option<Value>,
    phrases: &[&str],
) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(name);
    std::fs::create_dir(&dir).unwrap();
    let p = parts(&mut Rng(3), 4, 32, 64, 128, true);
    let mut tensors = gptq_tensors(MODULE, &p).unwrap();
    damage(&mut tensors);
    let qcfg = qcfg.unwrap_or_else(|| gptq_cfg(4, Some(32)));
    let st = write(&dir, &tensors, &qcfg);
    expect_err(read_gptq(&st, &dir, &qcfg, MODULE), &dir, phrases);
}

/// The tensor `<MODULE>.<suffix>` of a list.
fn tensor<'a>(ts: &'a mut [StoredTensor], suffix: &str) -> &'a mut StoredTensor {
    let name = format!("{MODULE}.{suffix}");
    ts.iter_mut().find(|t| t.name == name).unwrap()
}

#[test]
fn gptq_refuses_damaged_checkpoints() {
    gptq_damaged(
        "qweight_dtype",
        |ts| tensor(ts, "qweight").dtype = Dtype::F32,
        None,
        &["qweight", "dtype F32, expected I32"],
    );
    gptq_damaged(
        "qweight_rank",
        |ts| {
            let t = tensor(ts, "qweight");
            t.shape = vec![t.shape.iter().product()];
        },
        None,
        &["qweight", "two non-zero dimensions"],
    );
    gptq_damaged(
        "scales_shape",
        |ts| {
            let t = tensor(ts, "scales");
            t.shape = vec![5, 64];
            t.bytes.extend(vec![0; 128]);
        },
        None,
        &["down_proj.scales", "shape [5, 64], expected [4, 64]"],
    );
    gptq_damaged(
        "scales_dtype",
        |ts| {
            let t = tensor(ts, "scales");
            t.dtype = Dtype::BF16;
        },
        None,
        &["scales", "dtype BF16, expected F16"],
    );
    gptq_damaged(
        "scales_nan",
        |ts| tensor(ts, "scales").bytes[6..8].copy_from_slice(&half::f16::NAN.to_le_bytes()),
        None,
        &["scales", "not finite", "[0, 3]"],
    );
    gptq_damaged(
        "qzeros_shape",
        |ts| {
            let t = tensor(ts, "qzeros");
            t.shape = vec![8, 4];
        },
        None,
        &["qzeros", "expected [4, 8]"],
    );
    gptq_damaged(
        "qzeros_missing",
        |ts| ts.retain(|t| !t.name.ends_with(".qzeros")),
        None,
        &["down_proj.qzeros is missing"],
    );
    gptq_damaged(
        "g_idx_range",
        |ts| tensor(ts, "g_idx").bytes[40..44].copy_from_slice(&4i32.to_le_bytes()),
        None,
        &["g_idx", "entry 10 is 4, not a group"],
    );
    gptq_damaged(
        "g_idx_negative",
        |ts| tensor(ts, "g_idx").bytes[0..4].copy_from_slice(&(-1i32).to_le_bytes()),
        None,
        &["g_idx", "entry 0 is -1"],
    );
    gptq_damaged(
        "g_idx_length",
        |ts| {
            let t = tensor(ts, "g_idx");
            t.shape = vec![127];
            t.bytes.truncate(127 * 4);
        },
        None,
        &["g_idx", "shape [127], expected [128]"],
    );
    // The config and the tensors disagree.
    gptq_damaged(
        "config_group",
        |_| {},
        Some(gptq_cfg(4, Some(64))),
        &["qzeros", "expected [2, 8]"],
    );
    gptq_damaged(
        "config_bits",
        |_| {},
        Some(gptq_cfg(3, Some(32))),
        &["qweight", "do not hold a whole number of 3-bit"],
    );
    gptq_damaged(
        "config_bits_unsupported",
        |_| {},
        Some(gptq_cfg(5, Some(32))),
        &["bits 5 is not a gptq width"],
    );
    let mut marlin = gptq_cfg(4, Some(32));
    marlin["checkpoint_format"] = json!("marlin");
    gptq_damaged(
        "config_format",
        |_| {},
        Some(marlin),
        &["checkpoint_format \"marlin\" is not one shrink reads"],
    );
    let mut no_bits = gptq_cfg(4, Some(32));
    no_bits.as_object_mut().unwrap().remove("bits");
    gptq_damaged(
        "config_no_bits",
        |_| {},
        Some(no_bits),
        &["bits is missing"],
    );
    gptq_damaged(
        "config_group_zero",
        |_| {},
        Some(gptq_cfg(4, Some(0))),
        &["group_size is 0"],
    );
    // Output features that do not fill qzeros' int32 words (4 bits: a multiple of 8).
    gptq_damaged(
        "out_not_aligned",
        |ts| {
            let t = tensor(ts, "qweight");
            t.shape = vec![16, 36];
            t.bytes.truncate(16 * 36 * 4);
        },
        None,
        &["36 output features at 4 bits", "multiple of 8"],
    );
}

#[test]
fn awq_refuses_damaged_checkpoints() {
    let w: Vec<f32> = (0..64 * 128).map(|i| (i as f32 * 0.013).sin()).collect();
    let t = int::quantize(
        &w,
        64,
        128,
        IntSpec::asymmetric(4, Granularity::Group(32), FloatType::F16),
    )
    .unwrap();
    let good = awq_tensors(MODULE, &t).unwrap();
    let cfg = awq_config(4, Some(32), true, "gemm");
    let cases: Vec<(&str, Vec<StoredTensor>, Value, Vec<&str>)> = vec![
        (
            "version",
            good.clone(),
            awq_config(4, Some(32), true, "gemv"),
            vec!["version \"gemv\" is not one shrink reads"],
        ),
        (
            "bits",
            good.clone(),
            awq_config(3, Some(32), true, "gemm"),
            vec!["bits 3", "4-bit"],
        ),
        (
            "zero_point",
            good.clone(),
            awq_config(4, Some(32), false, "gemm"),
            vec!["zero_point is false"],
        ),
        (
            "group",
            good.clone(),
            awq_config(4, Some(48), true, "gemm"),
            vec!["group size 48 does not divide the 128 columns"],
        ),
        (
            "qzeros_dtype",
            {
                let mut ts = good.clone();
                tensor(&mut ts, "qzeros").dtype = Dtype::U32;
                ts
            },
            cfg.clone(),
            vec!["down_proj.qzeros", "dtype U32, expected I32"],
        ),
        (
            "scales_shape",
            {
                let mut ts = good.clone();
                tensor(&mut ts, "scales").shape = vec![64, 4];
                ts
            },
            cfg.clone(),
            vec!["down_proj.scales", "shape [64, 4], expected [4, 64]"],
        ),
        (
            "qweight_dtype",
            {
                let mut ts = good.clone();
                tensor(&mut ts, "qweight").dtype = Dtype::F32;
                ts
            },
            cfg.clone(),
            vec!["qweight", "dtype F32"],
        ),
    ];
    let tmp = tempfile::tempdir().unwrap();
    for (name, tensors, qcfg, phrases) in cases {
        let dir = tmp.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        let st = write(&dir, &tensors, &qcfg);
        expect_err(read_awq(&st, &dir, &qcfg, MODULE), &dir, &phrases);
    }
}

/// compressed-tensors with several config groups: each module read on the grid of the group
/// that names it; a `weight_shape` too large to be a weight refused by name (it overflowed the
/// packed-word count: `quantized_layouts` campaign, round 5).
#[test]
fn each_module_on_its_groups_grid_and_a_lying_shape_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (rows, cols) = (8, 64);
    let w: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 37) % 23) as f32 - 11.0)
        .collect();
    let int2 = IntSpec::asymmetric(2, Granularity::Group(32), FloatType::F16);
    let int4 = IntSpec::asymmetric(4, Granularity::Channel, FloatType::F16);
    let a = int::quantize(&w, rows, cols, int2).unwrap();
    let b = int::quantize(&w, rows, cols, int4).unwrap();
    let mut tensors = shrink_io::quantized::ct_tensors("a", &a);
    tensors.extend(shrink_io::quantized::ct_tensors("b", &b));
    let qcfg = shrink_io::quantized::ct_config_groups(
        &[(int4, vec!["b".into()]), (int2, vec!["a".into()])],
        &[],
    );
    write(tmp.path(), &tensors, &qcfg);
    let shrink_io::Checkpoint::Hf(h) = shrink_io::Checkpoint::open(tmp.path()).unwrap() else {
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
    write(&bad, &tensors, &qcfg);
    let shrink_io::Checkpoint::Hf(h) = shrink_io::Checkpoint::open(&bad).unwrap() else {
        panic!("a directory")
    };
    let e = h.quantized("a.weight").err().expect("refused").to_string();
    assert!(
        e.contains("a.weight_shape") && e.contains("too large"),
        "{e}"
    );
}
