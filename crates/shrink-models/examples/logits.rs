//! A decoder's logits from Rust, optionally with a PEFT LoRA adapter beside its layers.
//!
//! cargo run --release -p shrink-models --example logits -- MODEL_DIR [ADAPTER_DIR]
//!
//! prints shrink's logits of MODEL_DIR on ids (37 i + 5) mod 500, i < 20, as JSON
//! `{"ids": [...], "shape": [...], "logits": [...]}` (`scripts/check-peft-load.py` compares
//! them with PEFT's over transformers + bitsandbytes).

use shrink_io::peft::Adapter;
use shrink_io::Checkpoint;
use shrink_models::Model;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (model, adapter) = match args.as_slice() {
        [m] => (m, None),
        [m, a] => (m, Some(Adapter::read(std::path::Path::new(a))?)),
        _ => return Err("usage: logits MODEL_DIR [ADAPTER_DIR]".into()),
    };
    let ids: Vec<u32> = (0..20).map(|i| (i * 37 + 5) % 500).collect();
    let ckpt = Checkpoint::open(model)?;
    let t = Model::load_with(&ckpt, adapter.as_ref())?.forward(&ids, None)?;
    let shape = t.dims().to_vec();
    let v: Vec<f32> = t.flatten_all()?.to_vec1()?;
    println!(
        "{}",
        serde_json::json!({"ids": ids, "shape": shape, "logits": v})
    );
    Ok(())
}
