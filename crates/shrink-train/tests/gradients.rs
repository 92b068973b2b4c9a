//! The trainable forward's loss and gradients equal PyTorch's, for every architecture, and one
//! AdamW step equals `torch.optim.AdamW`'s.
//!
//! The references (`tests/data/grad-<arch>.safetensors`) are transformers' models and PyTorch
//! autograd on row 0 of each tiny fixture's `input_ids`, made by
//! `scripts/make-train-reference.py` (its docstring says what each key holds). Two losses:
//! `ce` (cross-entropy: next tokens for causal LMs, label 1 for classifiers) and `kd`
//! (α = 0.5, T = 2, forward KL against fixed random teacher logits, plus (1 − α) CE), both
//! averaged over the rows.

use std::path::{Path, PathBuf};

use shrink_train::forward::Task;
use shrink_train::grad::{backward, Grads};
use shrink_train::loss::{kd_loss, Divergence, KdLoss, Teacher};
use shrink_train::optim::{self, AdamW, OptimState};
use shrink_train::Trainable;

/// ‖g − g_ref‖ / ‖g_ref‖ allowed for every parameter.
const GRAD_REL_TOL: f64 = 1e-4;
/// |loss − loss_ref| / |loss_ref| allowed.
const LOSS_REL_TOL: f64 = 1e-5;
/// A reference gradient whose norm is below this is zero in exact arithmetic, float noise in
/// both (BERT's key biases: softmax is invariant to a shift every query's scores share); ours
/// must then be as small, not relatively close.
const ZERO_GRAD_NORM: f64 = 1e-6;
/// |w − w_ref| allowed after one AdamW step.
const ADAMW_ABS_TOL: f32 = 1e-6;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures")
        .join(name)
}

fn data(arch: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(format!("grad-{arch}.safetensors"))
}

/// A reference file's tensors, by key.
struct Reference {
    bytes: Vec<u8>,
}

impl Reference {
    fn open(path: &Path) -> Self {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Reference { bytes }
    }

    fn st(&self) -> safetensors::SafeTensors<'_> {
        safetensors::SafeTensors::deserialize(&self.bytes).unwrap()
    }

    fn keys(&self) -> Vec<String> {
        self.st().names().into_iter().map(String::from).collect()
    }

    fn f32(&self, key: &str) -> Vec<f32> {
        let st = self.st();
        let t = st.tensor(key).unwrap_or_else(|_| panic!("no {key}"));
        assert_eq!(t.dtype(), safetensors::Dtype::F32, "{key}");
        t.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    fn ids(&self, key: &str) -> Vec<u32> {
        let st = self.st();
        let t = st.tensor(key).unwrap_or_else(|_| panic!("no {key}"));
        assert_eq!(t.dtype(), safetensors::Dtype::I64, "{key}");
        t.data()
            .chunks_exact(8)
            .map(|c| u32::try_from(i64::from_le_bytes(c.try_into().unwrap())).unwrap())
            .collect()
    }
}

/// The index in `Params` (which holds checkpoint names) of the parameter transformers'
/// `named_parameters()` calls `hf`.
///
/// The names agree but for GPT-NeoX's head, a module transformers 5 calls `lm_head` and loads
/// from the checkpoint's `embed_out.weight`. A tied head is one shared tensor, listed once
/// under the input embedding's name on both sides (`named_parameters()` drops duplicates,
/// `Params` holds no head when tied); a bare GPT-2 name (`GPT2Model` rather than
/// `GPT2LMHeadModel`) is looked up under `transformer.`.
fn param_index(model: &Trainable, hf: &str) -> usize {
    let names = model.params.names();
    let find = |n: &str| names.iter().position(|m| m == n);
    let renamed = match (model.arch().family(), hf) {
        ("gpt_neox", "lm_head.weight") => "embed_out.weight".to_string(),
        ("gpt2", _) if !hf.starts_with("transformer.") && hf != "lm_head.weight" => {
            format!("transformer.{hf}")
        }
        _ => hf.to_string(),
    };
    find(hf)
        .or_else(|| find(&renamed))
        .unwrap_or_else(|| panic!("the model has no parameter for PyTorch's {hf}"))
}

fn norm(v: impl Iterator<Item = f64>) -> f64 {
    v.map(|x| x * x).sum::<f64>().sqrt()
}

/// The loss of case `case` and our gradient of it, checked against the reference; returns the
/// worst relative gradient difference and its parameter.
fn check_case(arch: &str, model: &Trainable, r: &Reference, case: &str) -> (f64, String) {
    let ids = r.ids("ids");
    let labels = r.ids("labels");
    let teacher = r.f32("teacher");
    let l = KdLoss {
        temperature: 2.0,
        alpha: if case == "kd" { 0.5 } else { 0.0 },
        divergence: Divergence::Forward,
    };
    let causal = model.task() == Task::CausalLm;
    let rows = labels.len();
    assert_eq!(
        rows,
        if causal { ids.len() - 1 } else { 1 },
        "{arch}: labels"
    );

    let mut grads = Grads::new(model.params.len());
    let loss = backward(model, &ids, &mut grads, |logits| {
        // Causal LMs: the last row predicts past the window; its gradient is zero.
        let (t, width) = logits.dims2()?;
        let z: Vec<f32> = logits.flatten_all()?.to_vec1()?;
        let z = &z[..rows * width];
        let teacher = match l.alpha > 0.0 {
            true => Teacher::Full(&teacher),
            false => Teacher::None,
        };
        let (parts, mut g) = kd_loss(z, width, &labels, teacher, &l, rows as f64)?;
        g.resize(t * width, 0.0);
        let g = candle_core::Tensor::from_vec(g, (t, width), logits.device())?;
        Ok((parts.total(&l) / rows as f64, g))
    })
    .unwrap();

    let want = r.f32(&format!("{case}.loss"))[0] as f64;
    assert!(
        (loss - want).abs() <= LOSS_REL_TOL * want.abs(),
        "{arch} {case}: loss {loss}, PyTorch {want}"
    );

    let prefix = format!("{case}.grad.");
    let mut seen = vec![false; model.params.len()];
    let mut worst = (0f64, String::new());
    for key in r.keys().into_iter().filter(|k| k.starts_with(&prefix)) {
        let hf = &key[prefix.len()..];
        let i = param_index(model, hf);
        seen[i] = true;
        let want = r.f32(&key);
        let got = grads.sums[i]
            .clone()
            .unwrap_or_else(|| vec![0.0; want.len()]);
        assert_eq!(got.len(), want.len(), "{arch} {case}: {hf} size");
        let diff = norm(got.iter().zip(&want).map(|(&a, &b)| a as f64 - b as f64));
        let scale = norm(want.iter().map(|&b| b as f64));
        if scale < ZERO_GRAD_NORM {
            let ours = norm(got.iter().map(|&a| a as f64));
            assert!(
                ours < ZERO_GRAD_NORM,
                "{arch} {case}: {hf}: ‖g‖ = {ours:.3e}, PyTorch's is zero ({scale:.3e})"
            );
            continue;
        }
        let rel = diff / scale;
        assert!(
            rel <= GRAD_REL_TOL,
            "{arch} {case}: {hf}: ‖g − g_ref‖/‖g_ref‖ = {rel:.3e} (‖g_ref‖ = {scale:.3e})"
        );
        if rel >= worst.0 {
            worst = (rel, hf.to_string());
        }
    }
    let missing: Vec<&String> = model
        .params
        .names()
        .iter()
        .zip(&seen)
        .filter(|(_, s)| !**s)
        .map(|(n, _)| n)
        .collect();
    assert!(
        missing.is_empty(),
        "{arch}: no PyTorch gradient for {missing:?}"
    );
    worst
}

fn check(arch: &str) {
    let dir = fixture(&format!("tiny-{arch}"));
    let ckpt = shrink_io::Checkpoint::open(&dir).unwrap();
    let model = Trainable::load(&ckpt).unwrap();
    let r = Reference::open(&data(arch));
    for case in ["ce", "kd"] {
        let (rel, name) = check_case(arch, &model, &r, case);
        println!("{arch} {case}: worst ‖g − g_ref‖/‖g_ref‖ {rel:.2e} ({name})");
    }
}

#[test]
fn llama_gradients_equal_pytorch() {
    check("llama");
}

#[test]
fn qwen2_gradients_equal_pytorch() {
    check("qwen2");
}

#[test]
fn mistral_gradients_equal_pytorch() {
    check("mistral");
}

#[test]
fn gpt2_gradients_equal_pytorch() {
    check("gpt2");
}

#[test]
fn gpt_neox_gradients_equal_pytorch() {
    check("gpt_neox");
}

#[test]
fn bert_cls_gradients_equal_pytorch() {
    check("bert_cls");
}

#[test]
fn distilbert_cls_gradients_equal_pytorch() {
    check("distilbert_cls");
}

/// One `optim::step` on PyTorch's `ce` gradient equals one `torch.optim.AdamW` step
/// (lr 1e-3, betas (0.9, 0.999), eps 1e-8, no weight decay) on it. The reference gradient,
/// not ours, is stepped on: Adam's first step is about `lr · sign(g)`, so a gradient element
/// near zero would turn a 1e-6 relative gradient difference into an lr-sized one.
#[test]
fn adamw_step_equals_pytorch() {
    let arch = "llama";
    let ckpt = shrink_io::Checkpoint::open(fixture(&format!("tiny-{arch}"))).unwrap();
    let mut model = Trainable::load(&ckpt).unwrap();
    let r = Reference::open(&data(arch));
    let mut grads = Grads::new(model.params.len());
    let prefix = "ce.grad.";
    for key in r.keys().into_iter().filter(|k| k.starts_with(prefix)) {
        grads.sums[param_index(&model, &key[prefix.len()..])] = Some(r.f32(&key));
    }
    assert!(
        grads.sums.iter().all(Option::is_some),
        "{arch}: a gradient is missing"
    );
    let opt = AdamW {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
    };
    let mut state = OptimState::new(&model.params);
    optim::step(&mut model.params, &grads, &mut state, &opt, opt.lr).unwrap();
    let prefix = "adamw.";
    let mut worst = 0f32;
    for key in r.keys().into_iter().filter(|k| k.starts_with(prefix)) {
        let i = param_index(&model, &key[prefix.len()..]);
        let want = r.f32(&key);
        let got = model.params.values(i).unwrap();
        assert_eq!(got.len(), want.len(), "{key}");
        for (j, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!(
                (a - b).abs() <= ADAMW_ABS_TOL,
                "{key}[{j}]: {a} after the step, PyTorch {b}"
            );
            worst = worst.max((a - b).abs());
        }
    }
    println!("{arch} adamw: worst |w − w_ref| {worst:.2e}");
}
