//! `shrink quantize MODEL --method q4_k_m|q8_0|... -o OUT.gguf`: llama-quantize over a GGUF
//! ([`shrink_methods::ggml_quantize`]), the report printed.

use anyhow::{bail, Result};
use shrink_io::Checkpoint;
use shrink_methods::ggml_mix::GgmlPreset;
use shrink_methods::ggml_quantize::{quantize_gguf, GgmlQuantize};

use crate::common;

/// Run `shrink quantize` for the llama.cpp preset `preset` (a name `--method` accepts).
pub fn run(a: &super::quantize::Args, preset: &str) -> Result<()> {
    let preset = GgmlPreset::from_name(preset).expect("a --method value");
    let ckpt = common::open(&a.model)?;
    let Checkpoint::Gguf(g) = &ckpt else {
        let (d, p) = (a.model.display(), preset.name().to_ascii_lowercase());
        bail!(
            "{d}: --method {p} takes a GGUF input (it keeps that file's metadata); for a Hugging \
             Face directory run `shrink export {d} --to gguf --type {p} -o OUT.gguf`, which also \
             builds the tokenizer metadata from tokenizer.json"
        );
    };
    let opts = GgmlQuantize {
        preset,
        imatrix: a.imatrix.clone(),
        allow_requantize: a.allow_requantize,
        overwrite: false,
        leave_output_tensor: a.leave_output_tensor,
    };
    let r = quantize_gguf(g, &a.model, &a.output, &opts, &common::Bar::default())?;
    common::print_report(&r, a.json)
}
