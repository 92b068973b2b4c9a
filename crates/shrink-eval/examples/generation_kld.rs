//! What generation's int8 activations cost (`shrink_models::runtime::set_int8_activations`):
//! the first N tokens of the lee-ppl-v1 evaluation text fed one at a time through the KV cache,
//! as generation runs, once with float activations and once with int8 ones; prints the mean
//! KL divergence of the int8 run's next-token distribution from the float run's, their top-1
//! agreement, and each run's perplexity on those tokens. With `kv-f16` last, also a float16 KV
//! cache (`KvCache::half`), alone and with int8 activations, against the same float run.
//!
//! Usage: cargo run --release -p shrink-eval --example generation_kld -- MODEL LEE_CORPUS [N] [kv-f16]

use shrink_io::tokenizer::Tokenizer;
use shrink_io::Checkpoint;
use shrink_models::{KvCache, Model};

fn log_softmax(l: &[f32]) -> Vec<f64> {
    let m = l.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v)) as f64;
    let z = l.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln() + m;
    l.iter().map(|&v| v as f64 - z).collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (model, corpus) = (&args[1], &args[2]);
    let n: usize = args.get(3).map_or(Ok(256), |s| s.parse())?;
    let kv_f16 = args.get(4).is_some_and(|a| a == "kv-f16");
    let ckpt = Checkpoint::open(std::path::Path::new(model))?;
    let tok = Tokenizer::for_checkpoint(&ckpt)?;
    let m = Model::load(&ckpt)?;
    let text = shrink_eval::lee_texts(&std::fs::read_to_string(corpus)?)?.evaluation;
    let ids = tok.encode(&text, false)?;
    let ids = &ids[..(n + 1).min(ids.len())];
    let run = |int8: bool, half: bool| -> Result<Vec<Vec<f64>>, Box<dyn std::error::Error>> {
        shrink_models::runtime::set_int8_activations(int8);
        let mut cache = if half {
            KvCache::half()
        } else {
            KvCache::new()
        };
        let mut out = Vec::new();
        for &id in &ids[..ids.len() - 1] {
            out.push(log_softmax(&m.last_logits(&[id], Some(&mut cache))?));
        }
        Ok(out)
    };
    let reference = run(false, false)?;
    // (label, int8 activations, float16 cache) of each run compared with the float run.
    let runs: &[(&str, bool, bool)] = if kv_f16 {
        &[
            ("float16 cache", false, true),
            ("int8 activations", true, false),
            ("int8 activations + float16 cache", true, true),
        ]
    } else {
        &[("int8 activations", true, false)]
    };
    for &(label, int8, half) in runs {
        let q = run(int8, half)?;
        let (mut kl, mut agree, mut nll_f, mut nll_q) = (0.0, 0, 0.0, 0.0);
        for (i, (f, q)) in reference.iter().zip(&q).enumerate() {
            kl += f.iter().zip(q).map(|(a, b)| a.exp() * (a - b)).sum::<f64>();
            let top = |v: &[f64]| (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap();
            agree += (top(f) == top(q)) as usize;
            let next = ids[i + 1] as usize;
            nll_f -= f[next];
            nll_q -= q[next];
        }
        let t = reference.len() as f64;
        println!(
            "{model}: {} positions one at a time; KL(float ‖ {label}) mean {:.2e}, top-1 agreement {:.2} %, PPL float {:.4}, {label} {:.4}",
            reference.len(),
            kl / t,
            100.0 * agree as f64 / t,
            (nll_f / t).exp(),
            (nll_q / t).exp()
        );
    }
    Ok(())
}
