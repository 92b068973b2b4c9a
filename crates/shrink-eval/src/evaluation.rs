//! One model scored on a text (`shrink eval`): the protocol's text, tokenized, cut into windows
//! and scored, with KLD and top-1 agreement against a base model when one is given.

use std::path::{Path, PathBuf};

use shrink_io::tokenizer::Tokenizer;
use shrink_io::Checkpoint;
use shrink_methods::pipeline::Progress;
use shrink_models::{Model, ModelConfig};

use crate::error::{EvalError, Result};
use crate::{lee_texts, perplexity, PplOptions, PplReport, PROTOCOL};

/// How a text file becomes the evaluated text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextProtocol {
    /// The Lee corpus: documents 150..299 joined with blank lines (lee-ppl-v1).
    Lee,
    /// The whole file as it is.
    Raw,
}

impl TextProtocol {
    /// The name reports give the protocol.
    pub fn name(self) -> &'static str {
        match self {
            TextProtocol::Lee => PROTOCOL,
            TextProtocol::Raw => "raw",
        }
    }

    /// The evaluated text of `raw`, the content of the file at `path` (named in errors).
    pub fn text(self, raw: String, path: &Path) -> Result<String> {
        match self {
            TextProtocol::Lee => Ok(lee_texts(&raw)
                .map_err(|e| EvalError::Input(format!("{}: {e}", path.display())))?
                .evaluation),
            TextProtocol::Raw => Ok(raw),
        }
    }
}

/// What to evaluate.
#[derive(Debug, Clone)]
pub struct EvalRequest {
    /// Model to score (HF directory or .gguf).
    pub model: PathBuf,
    /// A PEFT LoRA adapter directory run beside the model's layers.
    pub adapter: Option<PathBuf>,
    /// Reference model for KLD and top-1 agreement.
    pub base: Option<PathBuf>,
    /// The text file.
    pub text: PathBuf,
    /// How the text file becomes the evaluated text.
    pub protocol: TextProtocol,
    /// Score only the first N windows.
    pub max_windows: Option<usize>,
}

/// The result of [`evaluate`].
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// What was asked.
    pub request: EvalRequest,
    /// Tokens of the evaluated text.
    pub tokens: usize,
    /// Seconds tokenizing took.
    pub tokenize_seconds: f64,
    /// Whether integer weights met activations rounded to int8 blocks of 32
    /// ([`shrink_models::runtime::int8_activations`] during the run), as llama.cpp computes;
    /// otherwise every product was float32 with the dequantized weights (lee-ppl-v1's rule).
    pub int8_activations: bool,
    /// The scores.
    pub report: PplReport,
}

/// Load the base model at `p` and check that its vocabulary is the model's.
fn load_base(p: &Path, model: &Model) -> Result<Model> {
    let bm = Model::load(&Checkpoint::open(p)?)?;
    if bm.config().vocab_size() != model.config().vocab_size() {
        return Err(EvalError::Input(format!(
            "{}: vocabulary of {} tokens differs from the model's {}; KLD needs the same vocabulary",
            p.display(),
            bm.config().vocab_size(),
            model.config().vocab_size()
        )));
    }
    Ok(bm)
}

/// Score `req.model` on its text; `progress` sees one task, "perplexity", of one step per window.
pub fn evaluate(req: &EvalRequest, progress: &dyn Progress) -> Result<Evaluation> {
    if req.max_windows == Some(0) {
        return Err(EvalError::Input("--max-windows must be at least 1".into()));
    }
    let raw = shrink_io::read_text(&req.text)?;
    let text = req.protocol.text(raw, &req.text)?;
    let ckpt = Checkpoint::open(&req.model)?;
    // An architecture shrink cannot run is the first thing to say, before a missing tokenizer.
    ModelConfig::from_checkpoint(&ckpt)?;
    let tok = Tokenizer::for_checkpoint(&ckpt)?;
    let t0 = std::time::Instant::now();
    let ids = tok.encode(&text, false)?;
    let tokenize_seconds = t0.elapsed().as_secs_f64();
    let opts = PplOptions {
        max_windows: req.max_windows,
        ..Default::default()
    };
    let total = crate::perplexity::windows(&ids, &opts).len();
    if total == 0 {
        return Err(EvalError::Input(format!(
            "{}: the text has {} tokens, fewer than one window of {}",
            req.text.display(),
            ids.len(),
            opts.window
        )));
    }
    let adapter = match &req.adapter {
        Some(p) => Some(shrink_io::peft::Adapter::read(p)?),
        None => None,
    };
    let model = Model::load_with(&ckpt, adapter.as_ref())?;
    let base = match &req.base {
        Some(p) => Some(load_base(p, &model)?),
        None => None,
    };
    progress.start("perplexity", total as u64);
    let mut last = 0;
    let report = perplexity(&model, base.as_ref(), &ids, &opts, |d, _| {
        progress.inc(d.saturating_sub(last) as u64);
        last = d;
    })?;
    progress.finish();
    Ok(Evaluation {
        request: req.clone(),
        tokens: ids.len(),
        tokenize_seconds,
        int8_activations: shrink_models::runtime::int8_activations(),
        report,
    })
}

impl Evaluation {
    /// Scored tokens per second.
    pub fn tokens_per_second(&self) -> f64 {
        self.report.scored_tokens as f64 / self.report.seconds
    }

    /// The result as one JSON object; `per_window` adds every window's NLL.
    pub fn to_json(&self, per_window: bool) -> serde_json::Value {
        let (r, q) = (&self.report, &self.request);
        let mut v = serde_json::json!({
            "protocol": q.protocol.name(),
            "model": q.model,
            "adapter": q.adapter,
            "base": q.base,
            "tokens": self.tokens,
            "windows": r.windows,
            "scored_tokens": r.scored_tokens,
            "ppl": r.ppl,
            "nll_mean": r.nll_mean,
            "kld": r.kld,
            "top1_agreement": r.top1_agreement,
            "seconds": r.seconds,
            "tokenize_seconds": self.tokenize_seconds,
            "tokens_per_second": self.tokens_per_second(),
            "peak_rss_bytes": shrink_methods::report::peak_rss(),
            "activations": if self.int8_activations { "int8" } else { "float32" },
        });
        if per_window {
            v["per_window_nll"] =
                serde_json::json!(r.per_window.iter().map(|w| w.nll).collect::<Vec<_>>());
        }
        v
    }

    /// The result as text lines (model, protocol, tokens, perplexity, KLD, time, peak RSS).
    pub fn lines(&self) -> Vec<String> {
        let r = &self.report;
        let mut v = vec![
            format!(
                "model          {}{}",
                self.request.model.display(),
                self.request
                    .adapter
                    .as_ref()
                    .map(|a| format!(" + adapter {}", a.display()))
                    .unwrap_or_default()
            ),
            format!("protocol       {}", self.request.protocol.name()),
            format!(
                "tokens         {} ({} windows of 512, {} scored)",
                self.tokens, r.windows, r.scored_tokens
            ),
            format!("perplexity     {:.4}", r.ppl),
        ];
        if self.int8_activations {
            v.push("activations    int8 blocks of 32 for integer weights (as llama.cpp)".into());
        }
        if let (Some(k), Some(t)) = (r.kld, r.top1_agreement) {
            v.push(format!("KLD vs base    {k:.5}"));
            v.push(format!("top-1 agree    {:.2} %", 100.0 * t));
        }
        v.push(format!(
            "time           {:.1} s ({:.0} scored tokens/s)",
            r.seconds,
            self.tokens_per_second()
        ));
        if let Some(b) = shrink_methods::report::peak_rss() {
            v.push(format!(
                "peak RSS       {}",
                shrink_methods::report::human(b)
            ));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_name_and_cut_the_text() {
        assert_eq!(TextProtocol::Lee.name(), "lee-ppl-v1");
        assert_eq!(TextProtocol::Raw.name(), "raw");
        let p = Path::new("corpus.txt");
        assert_eq!(TextProtocol::Raw.text("a\nb".into(), p).unwrap(), "a\nb");
        let corpus: String = (0..300).map(|i| format!("doc {i}\n")).collect();
        let t = TextProtocol::Lee.text(corpus, p).unwrap();
        assert!(t.starts_with("doc 150\n\ndoc 151") && t.ends_with("doc 299"));
        let e = TextProtocol::Lee.text("short".into(), p).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("corpus.txt: the Lee corpus has 300"),
            "{e}"
        );
    }

    #[test]
    fn a_missing_text_file_is_named() {
        let req = EvalRequest {
            model: "no-model".into(),
            adapter: None,
            base: None,
            text: "/nonexistent/lee.cor".into(),
            protocol: TextProtocol::Lee,
            max_windows: None,
        };
        let e = evaluate(&req, &shrink_methods::pipeline::Silent).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/lee.cor"), "{e}");
        let req = EvalRequest {
            max_windows: Some(0),
            ..req
        };
        assert!(evaluate(&req, &shrink_methods::pipeline::Silent).is_err());
    }
}
