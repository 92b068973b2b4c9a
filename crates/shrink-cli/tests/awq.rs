//! TEMPORARY harness (calls run_awq directly until `--method awq` is wired).
#![allow(dead_code, unused_imports)]

#[path = "../src/commands/awq.rs"]
mod awq_cmd;
#[path = "../src/commands/calibrated.rs"]
mod calibrated;
#[path = "../src/common.rs"]
mod common;
#[path = "common/mod.rs"]
mod helpers;
mod commands {
    pub(crate) use super::awq_cmd as awq;
    pub(crate) use super::calibrated;
}

use std::path::{Path, PathBuf};

use shrink_formats::float::FloatType;
use shrink_methods::calib::CalibSpec;

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

#[test]
#[ignore]
fn measure() {
    let model = PathBuf::from(env("AWQ_MODEL").unwrap());
    let out = PathBuf::from(env("AWQ_OUT").unwrap());
    let calib = commands::calibrated::CalibArgs {
        file: PathBuf::from(env("AWQ_CALIB").unwrap()),
        lee: env("AWQ_LEE").is_some(),
        spec: CalibSpec {
            samples: env("AWQ_SAMPLES").unwrap().parse().unwrap(),
            seqlen: env("AWQ_SEQLEN").unwrap().parse().unwrap(),
            seed: 0,
        },
    };
    commands::awq::run_awq(
        &model,
        &out,
        &calib,
        4,
        env("AWQ_GROUP").unwrap().parse().unwrap(),
        env("AWQ_SEARCH").unwrap().parse().unwrap(),
        &shrink_methods::select::Selection::default(),
        FloatType::parse(&env("AWQ_DENSE").unwrap_or("f32".into())).unwrap(),
        false,
    )
    .unwrap();
}

/// GPT-2's byte → printable character map (`bytes_to_unicode`).
fn byte_chars() -> Vec<char> {
    let mut keep: Vec<u32> = (33..=126).chain(161..=172).chain(174..=255).collect();
    let mut chars: Vec<u32> = keep.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !keep.contains(&b) {
            keep.push(b);
            chars.push(256 + n);
            n += 1;
        }
    }
    let mut out = vec![' '; 256];
    for (b, c) in keep.iter().zip(&chars) {
        out[*b as usize] = char::from_u32(*c).unwrap();
    }
    out
}

/// tiny-llama copied into `dir` with a byte-level tokenizer (one token per byte, ids 0..255).
fn tiny_llama_with_tokenizer(dir: &Path) -> PathBuf {
    let src = helpers::fixture("tiny-llama");
    let dst = dir.join("tiny-llama");
    std::fs::create_dir_all(&dst).unwrap();
    for f in ["config.json", "generation_config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    let vocab: serde_json::Map<String, serde_json::Value> = byte_chars()
        .iter()
        .enumerate()
        .map(|(i, c)| (c.to_string(), serde_json::json!(i)))
        .collect();
    let tj = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                          "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                    "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "vocab": vocab, "merges": []}
    });
    std::fs::write(dst.join("tokenizer.json"), tj.to_string()).unwrap();
    dst
}

/// A text of pseudo-words, deterministic.
fn calib_text(dir: &Path) -> PathBuf {
    let words = [
        "the",
        "model",
        "weights",
        "are",
        "quantized",
        "to",
        "four",
        "bits",
        "with",
        "scales",
        "that",
        "protect",
        "salient",
        "channels",
        "of",
        "activations",
        "and",
        "groups",
    ];
    let mut s = String::new();
    let mut x: u64 = 12345;
    for i in 0..800 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        s.push_str(words[(x >> 33) as usize % words.len()]);
        s.push(if i % 13 == 12 { '\n' } else { ' ' });
    }
    let p = dir.join("calib.txt");
    std::fs::write(&p, s).unwrap();
    p
}

fn ref_ids() -> Vec<Vec<u32>> {
    let bytes =
        std::fs::read(helpers::fixture("tiny-llama").join("reference.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let ids = st.tensor("input_ids").unwrap();
    let t = ids.shape()[1];
    let v: Vec<u32> = ids
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
        .collect();
    v.chunks(t).map(|c| c.to_vec()).collect()
}

fn logits(dir: &Path, ids: &[Vec<u32>]) -> Vec<f32> {
    let m = shrink_models::Model::load(&shrink_io::Checkpoint::open(dir).unwrap()).unwrap();
    ids.iter()
        .flat_map(|s| {
            m.forward(s, None)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        })
        .collect()
}

fn rel_rmse(a: &[f32], b: &[f32]) -> f64 {
    let n: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let d: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (n / d).sqrt()
}

#[test]
fn tiny_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_llama_with_tokenizer(tmp.path());
    let calib = calib_text(tmp.path());
    let out = tmp.path().join("awq");
    let c = commands::calibrated::CalibArgs {
        file: calib.clone(),
        lee: false,
        spec: CalibSpec {
            samples: 8,
            seqlen: 64,
            seed: 0,
        },
    };
    commands::awq::run_awq(
        &model,
        &out,
        &c,
        4,
        32,
        4,
        &Default::default(),
        FloatType::F32,
        true,
    )
    .unwrap();
    let rtn = tmp.path().join("rtn");
    let r = helpers::shrink(&[
        "quantize",
        model.to_str().unwrap(),
        "--method",
        "int",
        "--bits",
        "4",
        "--group-size",
        "32",
        "-o",
        rtn.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    for ids in [ref_ids(), {
        let tok =
            shrink_io::tokenizer::Tokenizer::from_file(&model.join("tokenizer.json")).unwrap();
        let ids = tok.encode("protect the salient channels of activations with scales that are quantized to four bits and groups of the model weights", false).unwrap();
        vec![ids]
    }] {
        let f = logits(&model, &ids);
        let a = logits(&out, &ids);
        let q = logits(&rtn, &ids);
        eprintln!("awq rel rmse {} rtn {}", rel_rmse(&a, &f), rel_rmse(&q, &f));
    }
    let rep: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("shrink-quantize.json")).unwrap()).unwrap();
    eprintln!("{}", rep["awq_layers"]);
}
