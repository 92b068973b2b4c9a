//! The per-tensor costs of the ggml types over SmolLM2 (`sensitivity::ggml_costs`), and an
//! allocation under a budget between the all-Q4_0 and all-Q8_0 sizes.

mod common;

use shrink_formats::ggml::GgmlType;
use shrink_methods::allocate::{self, Candidate};
use shrink_methods::pipeline::Silent;
use shrink_methods::sensitivity::ggml_costs;

#[test]
fn costs_of_smollm2_and_a_mix_within_a_budget() {
    let Some(p) = common::smollm2() else {
        return;
    };
    let g = shrink_io::GgufFile::open(&p).unwrap();
    let costs = ggml_costs(&g, &[GgmlType::Q4_0, GgmlType::Q8_0], None, &Silent).unwrap();
    assert_eq!(costs.len(), g.tensors.len());
    let mut quantized = 0;
    for (t, info) in costs.iter().zip(&g.tensors) {
        let n = info.elements();
        match t.candidates.as_slice() {
            [(GgmlType::Q4_0, a), (GgmlType::Q8_0, b)] => {
                quantized += 1;
                assert_eq!(a.bytes, n / 32 * 18, "{}", t.name);
                assert_eq!(b.bytes, n / 32 * 34, "{}", t.name);
                assert!(b.loss < a.loss, "{}: {a:?} {b:?}", t.name);
            }
            [(ty, c)] => {
                assert!(t.name.contains("norm"), "{} kept as stored", t.name);
                assert_eq!((*ty, c.loss, c.bytes), (info.ty, 0.0, info.bytes));
            }
            other => panic!("{}: {other:?}", t.name),
        }
    }
    // 30 blocks × 7 linears and the tied embedding.
    assert_eq!(quantized, 211);
    let options: Vec<Vec<Candidate>> = costs
        .iter()
        .map(|t| t.candidates.iter().map(|c| c.1).collect())
        .collect();
    let (min, max) = allocate::reachable(&options).unwrap();
    let budget = (min + max) / 2;
    let a = allocate::within_bytes(&options, budget).unwrap();
    let all_q4: f64 = options.iter().map(|o| o[0].loss).sum();
    assert!(a.bytes <= budget && a.bytes > min);
    assert!(a.loss < all_q4 && a.loss >= a.loss_bound);
}
