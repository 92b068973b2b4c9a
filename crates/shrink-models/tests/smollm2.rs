//! The real SmolLM2-135M GGUF reproduces transformers' logits (../shared/fixtures/smollm2).

use std::path::PathBuf;

use shrink_io::Checkpoint;
use shrink_models::Model;

fn gguf() -> PathBuf {
    let dir = std::env::var_os("SHRINK_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets")));
    let p = dir.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "{} missing: run scripts/fetch-assets.sh",
        p.display()
    );
    p
}

fn fixtures() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/fixtures/smollm2"
    ))
}

#[test]
fn smollm2_logits_match_reference() {
    let ckpt = Checkpoint::open(gguf()).unwrap();
    let model = Model::load(&ckpt).unwrap();
    let prompts: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("prompts.json")).unwrap()).unwrap();
    let full = std::fs::read(fixtures().join("logits.safetensors")).unwrap();
    let full = safetensors::SafeTensors::deserialize(&full).unwrap();
    let mut worst = 0f32;
    for p in prompts["prompts"].as_array().unwrap() {
        let key = p["key"].as_str().unwrap();
        let ids: Vec<u32> = p["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let logits: Vec<Vec<f32>> = model.forward(&ids, None).unwrap().to_vec2().unwrap();
        for (pos, row) in logits.iter().enumerate() {
            let ref_ids: Vec<usize> = p["top5_ids"][pos]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            let ref_logits: Vec<f32> = p["top5_logits"][pos]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            let mut order: Vec<usize> = (0..row.len()).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
            assert_eq!(
                &order[..5],
                &ref_ids[..],
                "{key} position {pos}: top-5 ids differ"
            );
            for (id, want) in ref_ids.iter().zip(&ref_logits) {
                let d = (row[*id] - want).abs();
                worst = worst.max(d);
                assert!(
                    d <= 1e-3,
                    "{key} position {pos} id {id}: {} vs {want}",
                    row[*id]
                );
            }
        }
        // The whole last-position vector.
        let last = logits.last().unwrap();
        let r = full.tensor(key).unwrap();
        let r: Vec<f32> = r
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(r.len(), last.len());
        for (a, b) in last.iter().zip(&r) {
            let d = (a - b).abs();
            worst = worst.max(d);
            assert!(d <= 1e-3, "{key} last position: {a} vs {b}");
        }
    }
    eprintln!("max abs logit difference {worst}");
}
