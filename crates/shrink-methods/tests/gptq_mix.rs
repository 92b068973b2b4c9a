//! `calibrated::gptq_mix` (`shrink auto --to compressed-tensors --rounding gptq`): with one grid
//! for every weight it writes exactly what `calibrated::gptq` writes (the same codes, read back
//! from compressed-tensors instead of the gptq layout); with a grid per weight each weight of
//! the first block — whose inputs no earlier quantization changed — equals the uniform run of
//! its own grid; a tensor encoded outside the blocks is written as given.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::{fixture, samples, scratch};

use shrink_formats::float::FloatType;
use shrink_formats::int::{Granularity, IntSpec};
use shrink_io::quantized::{ct_config_groups, ct_tensors, Quantized};
use shrink_io::Checkpoint;
use shrink_methods::calibrated::{self, Run};
use shrink_methods::gptq::GptqSpec;
use shrink_methods::pipeline::Silent;
use shrink_methods::select::Selection;
use shrink_models::Architecture;

fn int(bits: u8, granularity: Granularity) -> IntSpec {
    IntSpec::asymmetric(bits, granularity, FloatType::F16)
}

/// The uniform GPTQ run of `spec` (gptq layout) into `out`.
fn uniform(ckpt: &Checkpoint, out: &Path, spec: GptqSpec) {
    let (all, samples) = (Selection::default(), samples());
    let run = Run::new(ckpt, out, &samples, &all, &Silent);
    calibrated::gptq(&run, spec, false).unwrap();
}

/// The mix of `grids` (compressed-tensors) into `out`, with `outside` encoded beforehand.
fn mix(
    ckpt: &Checkpoint,
    out: &Path,
    grids: &HashMap<String, IntSpec>,
    outside: Vec<(String, Vec<shrink_io::quantized::StoredTensor>)>,
    extra: &[(IntSpec, String)],
) {
    let (all, samples) = (Selection::default(), samples());
    let mut run = Run::new(ckpt, out, &samples, &all, &Silent);
    run.dense_dtype = FloatType::F16;
    let mut groups: Vec<(IntSpec, Vec<String>)> = Vec::new();
    for (w, g) in grids
        .iter()
        .map(|(w, g)| (w.clone(), *g))
        .chain(extra.iter().map(|(g, w)| (w.clone(), *g)))
    {
        let m = w.trim_end_matches(".weight").to_string();
        match groups.iter_mut().find(|(s, _)| *s == g) {
            Some((_, v)) => v.push(m),
            None => groups.push((g, vec![m])),
        }
    }
    let qcfg = ct_config_groups(&groups, &["lm_head".to_string()]);
    calibrated::gptq_mix(&run, GptqSpec::default(), grids, outside, qcfg).unwrap();
}

fn weight(dir: &Path, name: &str) -> Vec<f32> {
    Checkpoint::open(dir).unwrap().read_f32(name).unwrap().0
}

#[test]
fn one_grid_writes_what_gptq_writes_and_a_mix_keeps_each_grid() {
    let model = fixture("tiny-llama");
    let ckpt = Checkpoint::open(&model).unwrap();
    let linears = Architecture::from_checkpoint(&ckpt)
        .unwrap()
        .block_linears();
    let tmp = scratch("gptq-mix");

    // One grid for all: the same weights as GPTQ's own run.
    let g32 = int(4, Granularity::Group(32));
    uniform(
        &ckpt,
        &tmp.join("gptq"),
        GptqSpec {
            group_size: 32,
            ..GptqSpec::default()
        },
    );
    let all: HashMap<String, IntSpec> = linears.iter().map(|l| (l.weight.clone(), g32)).collect();
    mix(&ckpt, &tmp.join("mix"), &all, Vec::new(), &[]);
    for l in &linears {
        assert_eq!(
            weight(&tmp.join("gptq"), &l.weight),
            weight(&tmp.join("mix"), &l.weight),
            "{}",
            l.weight
        );
    }

    // A grid per weight: block 0's weights equal the uniform runs of their grids.
    let kinds = [int(2, Granularity::Group(32)), int(8, Granularity::Channel)];
    let int2 = GptqSpec {
        bits: 2,
        group_size: 32,
        ..GptqSpec::default()
    };
    uniform(&ckpt, &tmp.join("u2"), int2);
    let grids: HashMap<String, IntSpec> = linears
        .iter()
        .enumerate()
        .map(|(i, l)| (l.weight.clone(), kinds[i % 2]))
        .collect();
    // The token table encoded outside the blocks.
    let (table, shape) = ckpt.read_f32("model.embed_tokens.weight").unwrap();
    let t4 = shrink_formats::int::quantize(&table, shape[0], shape[1], g32).unwrap();
    let outside = vec![(
        "model.embed_tokens.weight".to_string(),
        ct_tensors("model.embed_tokens", &t4),
    )];
    let extra = [(g32, "model.embed_tokens.weight".to_string())];
    mix(&ckpt, &tmp.join("mixed"), &grids, outside, &extra);
    let out = Checkpoint::open(tmp.join("mixed")).unwrap();
    let Checkpoint::Hf(h) = &out else { panic!() };
    let mut compared = 0;
    for (i, l) in linears.iter().enumerate() {
        let Some(Quantized::Int(t)) = h.quantized(&l.weight).unwrap() else {
            panic!("{}: not integers", l.weight)
        };
        assert_eq!(t.spec, kinds[i % 2], "{}", l.weight);
        if l.weight.starts_with("model.layers.0.") && kinds[i % 2].bits == 2 {
            assert_eq!(
                weight(&tmp.join("u2"), &l.weight),
                t.dequantize(),
                "{}",
                l.weight
            );
            compared += 1;
        }
    }
    assert!(compared >= 3, "block 0's int2 weights compared: {compared}");
    let Some(Quantized::Int(e)) = h.quantized("model.embed_tokens.weight").unwrap() else {
        panic!("the table is not stored as integers")
    };
    assert_eq!(e, t4);
    std::fs::remove_dir_all(&tmp).unwrap();
}
