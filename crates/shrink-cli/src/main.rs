//! `shrink`: make language models smaller and faster, and show what each step cost.
//!
//! A thin binary over the library crates (ripgrep's shape): flags are parsed here, turned
//! into library options, and every command's work happens in `shrink-*` crates.

mod commands;
mod common;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Parser, Subcommand};

/// Make large language models smaller and faster, and show exactly what each step cost.
///
/// MODEL is a Hugging Face model directory (config.json + *.safetensors [+ tokenizer.json])
/// or a .gguf file. Get the default real model and text with scripts/fetch-assets.sh.
#[derive(Parser)]
#[command(name = "shrink", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show architecture, parameter counts, dtypes and the exact memory footprint.
    Inspect(commands::inspect::Args),
    /// Change the storage dtype (f32/bf16/f16) and write a Hugging Face directory, tensor by tensor.
    Convert(commands::convert::Args),
    /// Export to llama.cpp's GGUF (F32/F16/BF16 or a preset), to float HF, or to the GPTQ / AWQ /
    /// bitsandbytes / compressed-tensors safetensors layouts; from any model shrink reads.
    Export(commands::export::Args),
    /// Quantize: round to nearest (int8/intN per tensor/channel/group, NF4, FP4, LLM.int8,
    /// dynamic int8), calibrated (GPTQ, AWQ), HQQ, or GGUF k-quants; streaming.
    Quantize(commands::quantize::Args),
    /// Rotate the residual stream and the heads (QuaRot / SpinQuant without online Hadamards):
    /// the same outputs, weights that quantize with less error.
    Rotate(commands::rotate::Args),
    /// Prune: weights to zero (magnitude, Wanda, SparseGPT; unstructured or 2:4; uniform or OWL;
    /// SparseGPT with joint quantization), or whole layers, MLP neurons or attention heads.
    Prune(commands::prune::Args),
    /// Distil a teacher LM into a student (soft targets + next-token CE; the student given or
    /// pruned from the teacher), resumable; the output is a normal checkpoint. With
    /// `--task classify`: a classifier into a student with fewer layers and heads.
    Distill(commands::distill::Args),
    /// Train a quantized (gptq-layout) model's scales against its float teacher (EfficientQAT's
    /// E2E-QP): codes frozen, the same layout written back.
    Finetune(commands::finetune::Args),
    /// Quantization-aware training: the float model trained through the quantizer's rounding
    /// (straight-through estimator) against its own outputs, then quantized for real.
    Qat(commands::qat::Args),
    /// QLoRA: LoRA adapters trained over a quantized model's frozen weights, written as a PEFT
    /// adapter (and, with --merge, folded back and requantized).
    Qlora(commands::qlora::Args),
    /// Fine-tune a BERT/DistilBERT encoder into a sequence classifier on labelled sentences.
    TrainClassifier(commands::train_classifier::Args),
    /// Choose every tensor's ggml type from measured sensitivities to meet a bits/weight,
    /// KL or perplexity target, and write the GGUF (with the per-tensor plan).
    Auto(commands::auto::Args),
    /// Collect llama.cpp's importance matrix (mean x² per input column) from calibration text.
    Imatrix(commands::imatrix::Args),
    /// Perplexity on the lee-ppl-v1 protocol; with --base, KLD and top-1 agreement too.
    Eval(commands::eval::Args),
    /// Compare compressed models with their base: size, PPL, KLD, top-1, per-layer error, histograms, generations.
    Compare(commands::compare::Args),
    /// Generate text from a prompt, streaming tokens as they are produced.
    Generate(commands::generate::Args),
    /// Prompt-processing and generation tokens/s in llama-bench's columns, against the memory-bandwidth ceiling.
    Bench(commands::bench::Args),
    /// Chart perplexity against bits/weight for every method of a results CSV (PNG).
    Chart(commands::chart::Args),
}

fn main() -> ExitCode {
    // A closed stdout (`shrink inspect ... | head`) ends the process quietly, as for other
    // command-line tools, instead of a panic on the failed print (Rust ignores SIGPIPE).
    #[cfg(unix)]
    // SAFETY: called first, before any thread exists; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // `shrink distill --task classify` has flags of its own: routed before clap would ask for
    // the language-model task's --text.
    clean_up_on_signals();
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(args) = commands::distill_classify::requested(&args) {
        shrink_models::runtime::tune_allocator();
        shrink_models::runtime::set_sparse_weights(false);
        let a = commands::distill_classify::Args::parse_from(args);
        return exit(commands::distill_classify::run(a));
    }
    let cli = Cli::parse();
    // Commands that run forward passes keep freed buffers in the heap (page faults otherwise
    // cost ~15 % of their time); the streaming ones leave glibc's defaults, which hand each
    // large tensor buffer back, so their peak stays one tensor whatever the model's depth.
    let forward = match &cli.command {
        Command::Eval(_)
        | Command::Generate(_)
        | Command::Bench(_)
        | Command::Compare(_)
        | Command::Imatrix(_)
        | Command::Auto(_)
        | Command::Distill(_)
        | Command::Finetune(_)
        | Command::Qat(_)
        | Command::Qlora(_)
        | Command::TrainClassifier(_) => true,
        Command::Prune(a) => a.method != Some(commands::prune::Method::Magnitude),
        Command::Quantize(a) => matches!(
            a.method,
            commands::quantize::Method::Gptq
                | commands::quantize::Method::Awq
                | commands::quantize::Method::BlockAp
        ),
        _ => false,
    };
    if forward {
        shrink_models::runtime::tune_allocator();
    }
    // Pruned weights held sparse pay for one token at a time and cost for many (BENCHMARKS.md).
    let generation = matches!(cli.command, Command::Generate(_) | Command::Bench(_));
    shrink_models::runtime::set_sparse_weights(generation);
    // Integer weights meet int8 activations one token at a time, as in llama.cpp; evaluation
    // and calibration keep float activations, so they measure the weights alone.
    shrink_models::runtime::set_int8_activations(generation);
    // A float16 / bfloat16 tied head read as such: half its bytes per generated token.
    shrink_models::runtime::set_half_head(generation);
    let result = match cli.command {
        Command::Inspect(a) => commands::inspect::run(a),
        Command::Convert(a) => commands::convert::run(a),
        Command::Export(a) => commands::export::run(a),
        Command::Quantize(a) => commands::quantize::run(a),
        Command::Imatrix(a) => commands::imatrix::run(a),
        Command::Auto(a) => commands::auto::run(a),
        Command::Prune(a) => commands::prune::run(a),
        Command::Rotate(a) => commands::rotate::run(a),
        Command::Distill(a) => commands::distill::run(a),
        Command::Finetune(a) => commands::finetune::run(a),
        Command::Qat(a) => commands::qat::run(a),
        Command::Qlora(a) => commands::qlora::run(a),
        Command::TrainClassifier(a) => commands::train_classifier::run(a),
        Command::Eval(a) => commands::eval::run(a),
        Command::Generate(a) => commands::generate::run(a),
        Command::Bench(a) => commands::bench::run(a),
        Command::Compare(a) => commands::compare::run(a),
        Command::Chart(a) => commands::chart::run(a),
    };
    exit(result)
}

/// Set while a training loop runs: a first interrupt then sets [`STOP`] (the loop checkpoints
/// and stops) instead of ending the process.
pub(crate) static GRACEFUL: AtomicBool = AtomicBool::new(false);

/// Set by the first interrupt while [`GRACEFUL`].
pub(crate) static STOP: AtomicBool = AtomicBool::new(false);

/// On SIGINT, SIGTERM or SIGHUP, remove the outputs being written (their hidden temporaries)
/// and exit with 128 + the signal, as a shell reports it. The signals are blocked in every
/// thread (the mask is inherited by threads spawned later, rayon's included) and taken by one
/// thread with `sigwait`, so the cleanup runs as ordinary code, not in a signal handler.
fn clean_up_on_signals() {
    #[cfg(unix)]
    // SAFETY: plain libc calls on a local signal set; called first in main, before any thread
    // exists, so every later thread inherits the mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return;
        }
        std::thread::spawn(move || loop {
            let mut sig: libc::c_int = 0;
            if libc::sigwait(&set, &mut sig) != 0 {
                return;
            }
            // A training loop checkpoints and stops on the first interrupt; a second ends it.
            if GRACEFUL.load(Ordering::SeqCst) && !STOP.swap(true, Ordering::SeqCst) {
                continue;
            }
            let targets = shrink_io::output::remove_partials();
            if targets.is_empty() {
                eprintln!("interrupted");
            }
            for target in targets {
                eprintln!("interrupted: {} was not written", target.display());
            }
            note_kept_layers();
            std::process::exit(128 + sig);
        });
    }
}

/// Say where a layer-by-layer run that stopped early kept its finished layers.
fn note_kept_layers() {
    for (dir, n) in shrink_methods::resume::kept() {
        eprintln!(
            "note: {n} finished layers are kept in {}: the same command with --resume \
             continues after them",
            dir.display()
        );
    }
}

/// The exit status of a command's result, its error printed with its causes.
fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The causes, except those a message already quotes (I/O errors print their source).
            let mut msg = e.to_string();
            for cause in e.chain().skip(1).map(|c| c.to_string()) {
                if !msg.contains(&cause) {
                    msg = format!("{msg}: {cause}");
                }
            }
            eprintln!("error: {msg}");
            note_kept_layers();
            ExitCode::FAILURE
        }
    }
}
