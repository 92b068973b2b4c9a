//! Structured pruning from Rust, without the binary.
//!
//! cargo run --release -p shrink-methods --example structured -- \
//!     MODEL_DIR OUT layers 6|neurons 0.75|heads 0.75 [LEE_CORPUS]
//!
//! calibrates on the lee-ppl-v1 calibration documents (0..149) of LEE_CORPUS, 32 samples of
//! 512 tokens, or without it on 4 fixed samples of 32 ids (the tiny fixtures); and
//!
//! cargo run --release -p shrink-methods --example structured -- logits MODEL_DIR
//!
//! prints shrink's logits of MODEL_DIR on ids (37 i + 5) mod 500, i < 20, as JSON
//! (`scripts/check-structured.py` compares them with transformers').

use shrink_io::tokenizer::Tokenizer;
use shrink_io::Checkpoint;
use shrink_methods::calib::{draw_samples, CalibSpec};
use shrink_methods::calibrated::Run;
use shrink_methods::pipeline::Silent;
use shrink_methods::select::Selection;
use shrink_methods::structured::{prune, Structured};
use shrink_models::{Architecture, BertClassifier, Model, WeightLoader};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [cmd, model] = args.as_slice() {
        if cmd == "logits" {
            return logits(model);
        }
    }
    let (model, output, mode, arg, corpus) = match args.as_slice() {
        [m, o, mode, a] => (m, o, mode, a, None),
        [m, o, mode, a, c] => (m, o, mode, a, Some(c)),
        _ => return Err("usage: structured MODEL OUT layers|neurons|heads N [LEE_CORPUS]".into()),
    };
    let what = match mode.as_str() {
        "layers" => Structured::Layers {
            remove: arg.parse()?,
        },
        "neurons" => Structured::Neurons {
            keep_ratio: arg.parse()?,
        },
        "heads" => Structured::Heads {
            keep_ratio: arg.parse()?,
        },
        other => return Err(format!("unknown mode {other:?}").into()),
    };
    let ckpt = Checkpoint::open(model)?;
    let samples = match corpus {
        Some(c) => {
            let text = std::fs::read_to_string(c)?;
            let docs: Vec<&str> = text.lines().map(str::trim).take(150).collect();
            let ids = Tokenizer::for_checkpoint(&ckpt)?.encode(&docs.join("\n\n"), false)?;
            let spec = CalibSpec {
                samples: 32,
                seqlen: 512,
                seed: 0,
            };
            draw_samples(&ids, spec)?
        }
        None => (0..4)
            .map(|s| (0..32).map(|i| (i * 31 + s * 7 + 3) % 500).collect())
            .collect(),
    };
    let all = Selection::default();
    let run = Run::new(&ckpt, output.as_ref(), &samples, &all, &Silent);
    let report = prune(&run, what)?;
    for line in report.lines() {
        println!("{line}");
    }
    Ok(())
}

/// Print shrink's logits of `model` on the fixed ids as `{"shape": [...], "logits": [...]}`.
fn logits(model: &str) -> Result<(), Box<dyn std::error::Error>> {
    let ids: Vec<u32> = (0..20).map(|i| (i * 37 + 5) % 500).collect();
    let ckpt = Checkpoint::open(model)?;
    let t = match Architecture::from_checkpoint(&ckpt)? {
        Architecture::Decoder(_) => Model::load(&ckpt)?.forward(&ids, None)?,
        Architecture::Encoder(c) => {
            BertClassifier::load(c, &WeightLoader::new(&ckpt, None, &[]))?.forward(&ids)?
        }
    };
    let shape = t.dims().to_vec();
    let v: Vec<f32> = t.flatten_all()?.to_vec1()?;
    println!(
        "{}",
        serde_json::json!({"ids": ids, "shape": shape, "logits": v})
    );
    Ok(())
}
