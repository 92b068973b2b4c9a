//! `shrink auto`'s measurements against the models it writes: the divergence the one-pass probe
//! measurement (`sensitivity::divergences`) finds for a set of tensors stored at other types
//! equals the divergence of the GGUF written with exactly those tensors requantized
//! (`ggml_quantize::write_mix`), loaded whole and run by the ordinary runtime — for a tensor of
//! the first block (row-permuted in the GGUF), one of the last, the tied token table (embedding
//! and head both), and all three at once.

mod common;

use std::collections::HashMap;

use shrink_formats::ggml::GgmlType;
use shrink_io::Checkpoint;
use shrink_methods::ggml_mix::TensorChoice;
use shrink_methods::ggml_quantize::{write_mix, MixWrite};
use shrink_methods::pipeline::Silent;
use shrink_methods::sensitivity::{divergences, divergences_within, stored_as};
use shrink_models::layerwise::Sequential;
use shrink_models::Model;

/// Per position, log-softmax of `logits` [t, vocab], in f64.
fn log_softmax(logits: &candle_core::Tensor) -> Vec<Vec<f64>> {
    logits
        .to_vec2::<f32>()
        .unwrap()
        .into_iter()
        .map(|r| {
            let m = r.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = m + r.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
            r.iter().map(|&v| v as f64 - lse).collect()
        })
        .collect()
}

#[test]
fn probe_divergences_equal_the_written_models() {
    let Some(p) = common::smollm2() else {
        return;
    };
    let ckpt = Checkpoint::open(&p).unwrap();
    let Checkpoint::Gguf(g) = &ckpt else {
        panic!("a GGUF")
    };
    let seq = Sequential::new(&ckpt).unwrap();
    // Two samples of pseudo-random token ids.
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let samples: Vec<Vec<u32>> = (0..2)
        .map(|_| {
            (0..40)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    (s % 49152) as u32
                })
                .collect()
        })
        .collect();
    // HF name → (GGUF name, type).
    let tensors: HashMap<&str, (&str, GgmlType)> = [
        (
            "model.layers.0.self_attn.q_proj.weight",
            ("blk.0.attn_q.weight", GgmlType::Q4_0),
        ),
        (
            "model.layers.29.mlp.down_proj.weight",
            ("blk.29.ffn_down.weight", GgmlType::Q2_K),
        ),
        (
            "model.embed_tokens.weight",
            ("token_embd.weight", GgmlType::Q4_0),
        ),
    ]
    .into_iter()
    .collect();
    let mut probes: Vec<Vec<String>> = tensors.keys().map(|k| vec![k.to_string()]).collect();
    probes.sort();
    probes.push(tensors.keys().map(|k| k.to_string()).collect());
    let replace = |_p: usize, hf: &str, w: &candle_core::Tensor| {
        let (name, ty) = tensors[hf];
        stored_as(name, ty, w, None)
    };
    let measured = divergences(&seq, &samples, &probes, &replace, &Silent).unwrap();
    // One probe alone gives what it gave beside the others, and so does each probe in a pass
    // of its own (the memory bound's passes).
    let alone = divergences(&seq, &samples, &probes[1..2], &replace, &Silent).unwrap();
    assert_eq!(alone[0], measured[1]);
    let one_each = divergences_within(&seq, &samples, &probes, &replace, 1, &Silent).unwrap();
    assert_eq!(one_each, measured);

    let base = Model::load(&ckpt).unwrap();
    let base_lp: Vec<Vec<Vec<f64>>> = samples
        .iter()
        .map(|ids| log_softmax(&base.forward(ids, None).unwrap()))
        .collect();
    let dir = tempdir();
    for (probe, d) in probes.iter().zip(&measured) {
        let out = dir.join("mix.gguf");
        let types: HashMap<&str, GgmlType> = probe.iter().map(|hf| tensors[hf.as_str()]).collect();
        let choices: Vec<TensorChoice> = g
            .tensors
            .iter()
            .map(|t| TensorChoice {
                name: t.name.clone(),
                ne: t.ne.clone(),
                ty: types.get(t.name.as_str()).copied(),
                wanted: None,
                requires_imatrix: false,
            })
            .collect();
        let opts = MixWrite {
            method: "probe".into(),
            ftype: 1024,
            imatrix: None,
            allow_requantize: true,
            overwrite: true,
        };
        write_mix(g, &p, &out, &choices, &opts, &Silent).unwrap();
        let mixed = Model::load(&Checkpoint::open(&out).unwrap()).unwrap();
        let (mut kl, mut nll, mut n) = (0f64, 0f64, 0usize);
        for (ids, lp) in samples.iter().zip(&base_lp) {
            let lq = log_softmax(&mixed.forward(ids, None).unwrap());
            for (i, (a, b)) in lp.iter().zip(&lq).enumerate() {
                kl += a.iter().zip(b).map(|(x, y)| x.exp() * (x - y)).sum::<f64>();
                if i + 1 < ids.len() {
                    let y = ids[i + 1] as usize;
                    nll += a[y] - b[y];
                    n += 1;
                }
            }
        }
        let positions: usize = samples.iter().map(Vec::len).sum();
        let (kl, nll) = (kl / positions as f64, nll / n as f64);
        assert!(kl > 1e-6, "{probe:?}: the change shows ({kl})");
        assert!(
            (d.kl - kl).abs() <= 2e-3 * kl,
            "{probe:?}: probe {} vs written model {kl}",
            d.kl
        );
        assert!(
            (d.nll_delta - nll).abs() <= 2e-3 * nll.abs() + 1e-5,
            "{probe:?}: probe {} vs written model {nll}",
            d.nll_delta
        );
    }
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("shrink-auto-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
