//! GPTQ from Rust, without the binary: calibrate on the lee-ppl-v1 calibration documents and
//! write a 4-bit Hugging Face `gptq` checkpoint, layer by layer.
//!
//! cargo run --release -p shrink-methods --example gptq -- \
//!     assets/SmolLM2-135M-Instruct.Q4_1.gguf assets/lee_background.cor smollm2-gptq

use shrink_io::tokenizer::Tokenizer;
use shrink_io::Checkpoint;
use shrink_methods::calib::{draw_samples, CalibSpec};
use shrink_methods::calibrated::{self, Run};
use shrink_methods::gptq::GptqSpec;
use shrink_methods::pipeline::Silent;
use shrink_methods::select::Selection;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, corpus, output] = args.as_slice() else {
        return Err("usage: gptq MODEL.gguf LEE_CORPUS OUTPUT_DIR".into());
    };
    let ckpt = Checkpoint::open(model)?;
    let Checkpoint::Gguf(g) = &ckpt else {
        return Err("this example reads the tokenizer from a GGUF".into());
    };
    // lee-ppl-v1's calibration text: documents 0..149, stripped, joined by blank lines.
    let text = std::fs::read_to_string(corpus)?;
    let docs: Vec<&str> = text.lines().map(str::trim).take(150).collect();
    let ids = Tokenizer::from_gguf(g)?.encode(&docs.join("\n\n"), false)?;
    let spec = CalibSpec {
        samples: 16,
        seqlen: 512,
        seed: 0,
    };
    let samples = draw_samples(&ids, spec)?;
    let all = Selection::default(); // every linear of the blocks
    let run = Run::new(&ckpt, output.as_ref(), &samples, &all, &Silent);
    let gptq = GptqSpec {
        bits: 4,
        group_size: 64,
        ..GptqSpec::default()
    };
    let report = calibrated::gptq(&run, gptq, false)?;
    for line in report.lines() {
        println!("{line}");
    }
    Ok(())
}
