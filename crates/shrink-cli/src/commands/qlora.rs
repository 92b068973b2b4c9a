//! `shrink qlora`: LoRA adapters trained over a quantized model's frozen weights
//! ([`shrink_train::lora`]), written as a PEFT adapter and, with `--merge`, folded back and
//! requantized.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use shrink_io::Checkpoint;
use shrink_train::lora::{self, LoraSpec};
use shrink_train::reparam;

use super::distill::training;
use super::finetune::TrainOpts;
use crate::common;
use crate::common::run_dir_of;

/// Arguments of `shrink qlora`.
#[derive(clap::Args)]
#[command(
    after_help = "QLoRA (Dettmers et al. 2023): the quantized model's weights stay frozen as stored (NF4 from shrink quantize --method nf4 [--double-quant], or any layout shrink reads), and a low-rank pair per Linear of the blocks trains beside them: W = W0 + (alpha / r) · B A, A started Kaiming-uniform and B at zero as PEFT does, so training starts from the quantized model itself. With --teacher the target is the float model's next-token distribution (KL at temperature 1) — recovering what quantization lost; without one, the text itself (next-token cross-entropy) — an ordinary fine-tune.\n\nThe output is a PEFT adapter directory (adapter_config.json, adapter_model.safetensors) that PEFT's PeftModel.from_pretrained loads over the bitsandbytes checkpoint, and shrink eval MODEL --adapter OUT runs. The adapter's own bits count: the report gives bits/weight of the base, of the adapter and of both. --merge DIR also writes the merged model, W0 + (alpha / r) B A quantized again by the base's own grid (bitsandbytes NF4/FP4 or compressed-tensors int), which needs no adapter to run (and loses some of what it learned to rounding: compare both).\n\nTrain on the calibration documents only (--text-format lee keeps documents 0..149 of a Lee corpus file). The run directory (--run-dir, default OUT.run) holds train.jsonl and the checkpoint of the pairs; --resume continues a killed run exactly.\n\nExamples:\n  shrink quantize smollm2-f32 --method nf4 --double-quant -o smollm2-nf4\n  shrink qlora smollm2-nf4 --teacher smollm2-f32 --text assets/lee_background.cor --rank 8 -o smollm2-nf4-lora\n  shrink eval smollm2-nf4 --adapter smollm2-nf4-lora --text assets/lee_background.cor\n  shrink qlora smollm2-nf4 --teacher smollm2-f32 --text assets/lee_background.cor --targets q_proj,v_proj --merge smollm2-nf4-merged -o smollm2-nf4-lora-qv"
)]
pub struct Args {
    /// The quantized model (its weights stay frozen).
    pub model: PathBuf,
    /// The float model to distil from (KL to its next-token distribution); without it the
    /// adapters fit the text's next tokens.
    #[arg(long)]
    pub teacher: Option<PathBuf>,
    /// LoRA rank r.
    #[arg(long, default_value_t = 8)]
    pub rank: usize,
    /// LoRA α: the update is scaled by α / r.
    #[arg(long, default_value_t = 16.0)]
    pub lora_alpha: f64,
    /// Module names to adapt, comma-separated (q_proj,v_proj; c_attn for GPT-2); default:
    /// every Linear of the blocks, as QLoRA does.
    #[arg(long, value_delimiter = ',')]
    pub targets: Vec<String>,
    /// Seed of A's initialisation.
    #[arg(long, default_value_t = 0)]
    pub lora_seed: u64,
    #[command(flatten)]
    pub train: TrainOpts,
    /// Also write the merged, requantized model here (must not exist).
    #[arg(long)]
    pub merge: Option<PathBuf>,
    /// The adapter directory (must not exist).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Bits of the quantized weights of `ckpt` and their count.
fn stored_bits(ckpt: &Checkpoint) -> Result<(f64, usize)> {
    let Checkpoint::Hf(h) = ckpt else {
        bail!("{}: not a Hugging Face directory", ckpt.path().display());
    };
    let arch = shrink_models::Architecture::from_checkpoint(ckpt)?;
    let (mut bits, mut n) = (0f64, 0usize);
    for (name, shape) in arch.weight_shapes() {
        if let Some(q) = h.quantized(&name)? {
            bits += 8.0 * q.stored_bytes() as f64;
            n += shape.iter().product::<usize>();
        }
    }
    Ok((bits, n))
}

/// Run `shrink qlora`.
pub fn run(a: Args) -> Result<()> {
    let out = &a.output;
    for p in std::iter::once(out).chain(a.merge.as_ref()) {
        if p.exists() {
            bail!(
                "{}: output already exists; shrink never overwrites (remove it or choose another)",
                p.display()
            );
        }
    }
    let t = &a.train;
    let run_dir = run_dir_of(out, t.run_dir.as_deref());
    let ckpt = common::open(&a.model)?;
    let (base_bits, base_n) = stored_bits(&ckpt)?;
    if base_n == 0 {
        bail!(
            "{}: no weight is stored quantized — QLoRA trains over a quantized base (shrink \
             quantize MODEL --method nf4 --double-quant -o BASE first)",
            a.model.display()
        );
    }
    let merge_grid = match &a.merge {
        Some(_) => Some(lora::merge_grid(&ckpt)?),
        None => None,
    };
    let windows = t.windows(&ckpt)?;
    let cfg = t.config(2e-4, 1.0)?;
    let spec = LoraSpec {
        r: a.rank,
        alpha: a.lora_alpha,
        targets: a.targets.clone(),
        seed: a.lora_seed,
    };
    let (mut student, mut pairs) =
        lora::load(&ckpt, &spec).with_context(|| format!("loading {}", a.model.display()))?;
    t.check_positions(&student)?;
    let teacher = match &a.teacher {
        Some(p) => Some(shrink_models::Model::load(&common::open(p)?)?),
        None => None,
    };
    let method = format!("qlora-r{}-a{}", spec.r, spec.alpha);
    let summary = training("qlora", |bar, stop| {
        reparam::train(
            &method,
            teacher.as_ref(),
            &mut student,
            &mut pairs,
            &windows,
            &cfg,
            &run_dir,
            t.resume,
            stop,
            bar,
        )
    })?;
    drop(teacher);
    let (log, mut files) = if a.teacher.is_some() {
        TrainOpts::chart(&run_dir, "QLoRA", "KL to the float model per token", |l| {
            l.kd
        })?
    } else {
        TrainOpts::chart(&run_dir, "QLoRA", "next-token CE per token", |l| l.ce)?
    };
    let adapter = lora::adapter(&spec, &pairs, &a.model.display().to_string());
    let adapter_bits = 8.0 * adapter.stored_bytes() as f64;
    let record = serde_json::json!({
        "command": "qlora",
        "base": a.model,
        "teacher": a.teacher,
        "lora": spec,
        "adapted_modules": adapter.modules.len(),
        "adapter_params": adapter.params(),
        "bits_per_weight_base": base_bits / base_n as f64,
        "bits_per_weight_adapter": adapter_bits / base_n as f64,
        "bits_per_weight_with_adapter": (base_bits + adapter_bits) / base_n as f64,
        "config": cfg,
        "text": t.text,
        "train_windows": windows.train.len(),
        "loss_first_step": log.first().map(|l| l.loss),
        "loss_last_step": log.last().map(|l| l.loss),
        "summary": summary,
        "peak_rss_mib": shrink_methods::report::peak_rss().map(|b| b as f64 / (1u64 << 20) as f64),
    });
    files.push((
        "qlora.json".to_string(),
        serde_json::to_vec_pretty(&record)?,
    ));
    adapter.write(out, &[&a.model], &files)?;
    drop(pairs);
    if let (Some(m), Some((grid, selection))) = (&a.merge, merge_grid) {
        // The student holds W0 + s·B·A (rebuilt after the last step): quantize it again.
        let r = shrink_train::qat::store(
            &ckpt,
            student,
            Box::new(grid),
            &selection,
            ("qlora", record.clone(), files),
            m,
            &common::Bar::default(),
        )?;
        if !a.json {
            eprintln!("merged         {} ({})", m.display(), r.method);
        }
    }
    let _ = std::fs::remove_file(reparam::state_path(&run_dir));
    if a.json {
        println!("{}", serde_json::to_string_pretty(&record)?);
        return Ok(());
    }
    println!("wrote          {} (PEFT LoRA adapter)", out.display());
    println!(
        "trained        {} pairs of rank {} ({} parameters), {} steps × {} tokens; loss {:.4} → {:.4}",
        adapter.modules.len(),
        spec.r,
        adapter.params(),
        summary.steps,
        t.batch * t.seq_len,
        log.first().map_or(f64::NAN, |l| l.loss),
        log.last().map_or(f64::NAN, |l| l.loss)
    );
    println!(
        "bits/weight    {:.4} base + {:.4} adapter = {:.4}",
        record["bits_per_weight_base"].as_f64().unwrap_or(f64::NAN),
        record["bits_per_weight_adapter"]
            .as_f64()
            .unwrap_or(f64::NAN),
        record["bits_per_weight_with_adapter"]
            .as_f64()
            .unwrap_or(f64::NAN)
    );
    println!(
        "time           {:.1} s ({:.0} tokens/s)",
        summary.seconds, summary.tokens_per_s
    );
    Ok(())
}
