//! Export from Rust, without the binary: a quantized checkpoint (GPTQ, AWQ, bitsandbytes,
//! compressed-tensors, or a float HF directory) written as compressed-tensors — the input's
//! codes repacked unchanged where it already stores them on a grid that layout holds — and as a
//! Q4_K_M GGUF llama.cpp loads.
//!
//! cargo run --release -p shrink-methods --example export -- smollm2-gptq smollm2-out
//! (smollm2-gptq from `examples/gptq.rs` or `shrink quantize --method gptq`; writes
//! smollm2-out-ct/ and smollm2-out.gguf)

use shrink_io::Checkpoint;
use shrink_methods::export_gguf::{export_gguf, GgufExport, Target};
use shrink_methods::export_layout::{export, Layout, Request};
use shrink_methods::pipeline::Silent;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, out] = args.as_slice() else {
        return Err("usage: export MODEL_DIR OUTPUT_STEM".into());
    };
    let ckpt = Checkpoint::open(model)?;

    // compressed-tensors, keeping the input's grid (no --type: the input's own).
    let ct = format!("{out}-ct");
    let none = Request {
        ty: None,
        group_size: None,
        sym: false,
        double_quant: false,
        block_size: None,
    };
    let r = export(
        &ckpt,
        ct.as_ref(),
        Layout::CompressedTensors,
        &none,
        None,
        &Silent,
    )?;
    let requantized = r
        .extra
        .get("requantized_tensors")
        .cloned()
        .unwrap_or_default();
    println!("{ct}: {requantized} tensors requantized");

    // A GGUF with llama.cpp's Q4_K_M mix (quantized inputs are dequantized first).
    let gguf = format!("{out}.gguf");
    let o = GgufExport {
        target: Target::parse("q4_k_m")?,
        pre: None,
        overwrite: false,
    };
    let r = export_gguf(&ckpt, model.as_ref(), gguf.as_ref(), &o, &Silent)?;
    println!("{gguf}: {:.3} bits/weight", r.bits_per_weight_model);
    Ok(())
}
