//! Tokenizers: read from a Hugging Face `tokenizer.json`, or rebuilt from GGUF metadata so that
//! text is split into exactly the ids llama.cpp produces.
//!
//! A GGUF file carries its vocabulary as `tokenizer.ggml.*` metadata. For the byte-level BPE
//! family (`tokenizer.ggml.model = "gpt2"`) the tokenizer is assembled from the `tokenizers`
//! crate's building blocks: a BPE model over `tokenizer.ggml.tokens` and
//! `tokenizer.ggml.merges`, a pre-tokenizer chosen by `tokenizer.ggml.pre` with the regex lists
//! of llama.cpp's `llama-vocab.cpp` (each applied in turn, matches and gaps both kept, then the
//! GPT-2 byte-to-unicode mapping), and control / user-defined tokens registered as added tokens
//! so that they are matched whole in the text (special tokens in text are parsed as special, as
//! llama.cpp does with `parse_special`). Decoding follows llama.cpp's `token_to_piece`: normal
//! tokens are mapped back through the byte table, control and user-defined tokens are printed as
//! they are written; nothing is skipped and no spaces are "cleaned up", so decoding the ids of a
//! text gives the text back.
//!
//! Every error is an [`IoError::Tokenizer`] naming the file the tokenizer comes from.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, ErrorKind, State};
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

use crate::error::{IoError, Result};
use crate::gguf::{GgufFile, GgufValue};

/// llama.cpp's `llama_token_type` codes, as stored in `tokenizer.ggml.token_type`.
mod token_type {
    pub const NORMAL: u64 = 1;
    pub const UNKNOWN: u64 = 2;
    pub const CONTROL: u64 = 3;
    pub const USER_DEFINED: u64 = 4;
}

/// Token texts that end generation when present in the vocabulary (llama.cpp's EOG list).
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "<|end_of_text|>",
    "<end_of_utterance>",
];

/// The GPT-2 pre-tokenizer regex.
const GPT2_RE: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// The Llama 3 pre-tokenizer regex, case-insensitive contractions spelled out (as llama.cpp does).
const LLAMA3_RE: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// The Qwen2 / StableLM2 pre-tokenizer regex: like Llama 3 with single digits.
const QWEN2_RE: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// One of llama.cpp's pre-tokenizer rules: the `tokenizer.ggml.pre` names that select it, the
/// regexes applied in turn, and the vocabulary flags it sets.
struct PreRule {
    names: &'static [&'static str],
    regexes: &'static [&'static str],
    ignore_merges: bool,
    add_bos: bool,
}

/// The pre-tokenizer rules shrink supports, after llama.cpp's `llama-vocab.cpp`.
const PRE_RULES: &[PreRule] = &[
    PreRule {
        names: &["default"],
        regexes: &[
            r"[\p{P}\$\+<=>\^~\|]+",
            GPT2_RE,
            r"\p{N}+",
            "[0-9][0-9][0-9]",
        ],
        ignore_merges: false,
        add_bos: false,
    },
    PreRule {
        names: &[
            "smollm",
            "starcoder",
            "refact",
            "command-r",
            "codeshell",
            "exaone",
            "minerva-7b",
        ],
        regexes: &[r"\p{N}", GPT2_RE],
        ignore_merges: false,
        add_bos: false,
    },
    PreRule {
        names: &[
            "gpt-2",
            "phi-2",
            "mpt",
            "olmo",
            "jais",
            "trillion",
            "granite-docling",
            "exaone4",
            "gigachat",
            "mellum",
        ],
        regexes: &[GPT2_RE],
        ignore_merges: false,
        add_bos: false,
    },
    PreRule {
        names: &[
            "llama3",
            "llama-v3",
            "llama-bpe",
            "falcon3",
            "falcon-h1",
            "pixtral",
            "midm-2.0",
            "lfm2",
        ],
        regexes: &[LLAMA3_RE],
        ignore_merges: true,
        add_bos: true,
    },
    PreRule {
        names: &["dbrx", "smaug-bpe"],
        regexes: &[LLAMA3_RE],
        ignore_merges: false,
        add_bos: false,
    },
    PreRule {
        names: &[
            "qwen2",
            "deepseek-r1-qwen",
            "kormo",
            "megrez",
            "stablelm2",
            "hunyuan",
        ],
        regexes: &[QWEN2_RE],
        ignore_merges: false,
        add_bos: false,
    },
    PreRule {
        names: &["falcon"],
        regexes: &[r"[\p{P}\$\+<=>\^~\|`]+", GPT2_RE, "[0-9][0-9][0-9]"],
        ignore_merges: false,
        add_bos: false,
    },
    PreRule {
        names: &["poro-chat", "bloom", "gpt3-finnish"],
        regexes: &[r" ?[^(\s|.,!?…。，、।۔،)]+"],
        ignore_merges: false,
        add_bos: false,
    },
];

/// All `tokenizer.ggml.pre` names shrink accepts, for error messages.
fn supported_pre_names() -> String {
    PRE_RULES
        .iter()
        .flat_map(|r| r.names.iter().copied())
        .collect::<Vec<_>>()
        .join(", ")
}

/// GPT-2's reversible byte-to-unicode table: `table[b]` is the character standing for byte `b`.
pub fn byte_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[b as usize] = if printable {
            b as char
        } else {
            n += 1;
            char::from_u32(255 + n).expect("256..=323 are valid chars")
        };
    }
    table
}

/// A post-processor template naming a special token its table does not define (the tokenizers
/// crate accepts it and panics when it encodes; found by fuzzing), searched through sequences.
/// A template is known by its shape, not its `type`: tokenizers' untagged deserializer takes an
/// object with `single` / `pair` / `special_tokens` as a `TemplateProcessing` whatever its
/// `type` says (a fuzzed `"UdmplateProcessing"` got through a check by name).
fn template_gap(p: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    if let Some(gap) = p
        .get("processors")
        .and_then(Value::as_array)
        .and_then(|list| list.iter().find_map(template_gap))
    {
        return Some(gap);
    }
    let specials = p.get("special_tokens").and_then(Value::as_object);
    ["single", "pair"]
        .iter()
        .filter_map(|k| p.get(*k).and_then(Value::as_array))
        .flatten()
        .filter_map(|piece| piece.get("SpecialToken")?.get("id")?.as_str())
        .find(|id| !specials.is_some_and(|m| m.contains_key(*id)))
        .map(|id| {
            format!(
                "post_processor: its template names special token {id:?}, which its \
                 special_tokens do not define"
            )
        })
}

/// A call into the tokenizers crate about the file `path`: its error, or its panic ("the
/// tokenizers crate failed {doing}: …"), as this file's error.
fn guarded<T, E: std::fmt::Display>(
    path: &Path,
    doing: &str,
    f: impl FnOnce() -> std::result::Result<T, E>,
) -> Result<T> {
    match quietly(f) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(tk_err(path, e.to_string())),
        Err(why) => Err(tk_err(
            path,
            format!("the tokenizers crate failed {doing}: {why}"),
        )),
    }
}

/// `f()`, or the message of its panic, without the panic's report on stderr.
fn quietly<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    r.map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic".into())
    })
}

/// Instructions a chat template may run (minijinja's fuel): a real template renders a
/// conversation in thousands.
const CHAT_TEMPLATE_FUEL: u64 = 1_000_000;

/// Bytes a rendered chat prompt may hold beyond four times its messages.
const CHAT_TEMPLATE_OUTPUT: usize = 1 << 20;

/// A writer that fails once `limit` bytes have been written.
struct Bounded {
    buf: Vec<u8>,
    limit: usize,
}

impl std::io::Write for Bounded {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + b.len() > self.limit {
            self.buf.resize(self.limit, 0);
            return Err(std::io::Error::other("output limit"));
        }
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A text tokenizer: encode, decode, special ids and chat template of one model.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    source: PathBuf,
    /// For a GGUF-built tokenizer, every id's bytes as llama.cpp prints them; `None` to use the
    /// decoder of `tokenizer.json`.
    pieces: Option<Vec<Vec<u8>>>,
    vocab_size: usize,
    bos: Option<u32>,
    eos: Option<u32>,
    eos_ids: Vec<u32>,
    /// Whether `encode(.., true)` must prepend BOS / append EOS itself (not done by a
    /// post-processor of `tokenizer.json`).
    add_bos: bool,
    add_eos: bool,
    /// Whether `encode(.., true)` starts with BOS, by whichever means.
    bos_added: bool,
    chat_template: Option<String>,
    bos_text: Option<String>,
    eos_text: Option<String>,
    /// The unknown and padding tokens' texts, kept for `tokenizer_config.json`.
    unk_text: Option<String>,
    pad_text: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("source", &self.source)
            .field("vocab_size", &self.vocab_size)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("eos_ids", &self.eos_ids)
            .field("add_bos", &self.add_bos)
            .field("chat_template", &self.chat_template.is_some())
            .finish()
    }
}

/// An `IoError::Tokenizer` about `path`.
fn tk_err(path: &Path, what: impl Into<String>) -> IoError {
    IoError::Tokenizer {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

/// Typed access to `tokenizer.*` metadata, every error naming the key and the file.
struct Meta<'a> {
    g: &'a GgufFile,
}

impl<'a> Meta<'a> {
    fn err(&self, what: impl Into<String>) -> IoError {
        tk_err(self.g.path(), what)
    }

    fn string(&self, key: &str) -> Result<Option<&'a str>> {
        match self.g.get(key) {
            None => Ok(None),
            Some(GgufValue::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.err(format!(
                "metadata {key} should be a string, found {}",
                v.summary()
            ))),
        }
    }

    fn array(&self, key: &str) -> Result<Option<&'a [GgufValue]>> {
        match self.g.get(key) {
            None => Ok(None),
            Some(v) => v.as_array().map(Some).ok_or_else(|| {
                self.err(format!(
                    "metadata {key} should be an array, found {}",
                    v.summary()
                ))
            }),
        }
    }

    /// Every item of array `key` converted by `f`; `what` names the expected type in errors.
    fn typed_array<T>(
        &self,
        key: &str,
        what: &str,
        f: impl Fn(&'a GgufValue) -> Option<T>,
    ) -> Result<Option<Vec<T>>> {
        let Some(items) = self.array(key)? else {
            return Ok(None);
        };
        items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                f(v).ok_or_else(|| {
                    self.err(format!(
                        "metadata {key}[{i}] should be {what}, found {}",
                        v.summary()
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    fn str_array(&self, key: &str) -> Result<Option<Vec<&'a str>>> {
        self.typed_array(key, "a string", GgufValue::as_str)
    }

    fn uint_array(&self, key: &str) -> Result<Option<Vec<u64>>> {
        self.typed_array(key, "a non-negative integer", GgufValue::as_u64)
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.g.get(key) {
            None => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| {
                self.err(format!(
                    "metadata {key} should be a bool, found {}",
                    v.summary()
                ))
            }),
        }
    }

    /// A token id: absent → None; present → an integer below `n_tokens`.
    fn token_id(&self, key: &str, n_tokens: usize) -> Result<Option<u32>> {
        let Some(v) = self.g.get(key) else {
            return Ok(None);
        };
        match v.as_u64() {
            Some(id) if (id as usize) < n_tokens => Ok(Some(id as u32)),
            Some(id) => Err(self.err(format!(
                "metadata {key} = {id} is outside the vocabulary of {n_tokens} tokens"
            ))),
            None => Err(self.err(format!(
                "metadata {key} should be a token id, found {}",
                v.summary()
            ))),
        }
    }

    /// `tokenizer.ggml.tokens`: present, not empty, and few enough for u32 ids.
    fn tokens(&self) -> Result<Vec<&'a str>> {
        let tokens = self.str_array("tokenizer.ggml.tokens")?.ok_or_else(|| {
            self.err("metadata tokenizer.ggml.tokens (the vocabulary) is missing")
        })?;
        let n = tokens.len();
        if n == 0 {
            return Err(self.err("metadata tokenizer.ggml.tokens is empty"));
        }
        if n > u32::MAX as usize {
            return Err(self.err(format!(
                "metadata tokenizer.ggml.tokens has {n} entries, more than ids can hold"
            )));
        }
        Ok(tokens)
    }

    /// `tokenizer.ggml.token_type`, one per token (all normal when absent).
    fn token_types(&self, n: usize) -> Result<Vec<u64>> {
        match self.uint_array("tokenizer.ggml.token_type")? {
            Some(t) if t.len() != n => Err(self.err(format!(
                "metadata tokenizer.ggml.token_type has {} entries but tokenizer.ggml.tokens has {n}",
                t.len()
            ))),
            Some(t) => Ok(t),
            None => Ok(vec![token_type::NORMAL; n]),
        }
    }

    /// `tokenizer.ggml.merges` parsed as llama.cpp does, every part checked against `vocab`.
    fn merges(&self, vocab: &Vocab) -> Result<Merges> {
        let merge_strs = self.str_array("tokenizer.ggml.merges")?.ok_or_else(|| {
            self.err(
                "metadata tokenizer.ggml.merges is missing (a gpt2 tokenizer needs its BPE merges)",
            )
        })?;
        let mut merges: Merges = Vec::with_capacity(merge_strs.len());
        for (i, m) in merge_strs.iter().enumerate() {
            // As llama.cpp: split at the first space after the first byte, so "Ġ Ġ" and "  x" parse.
            let pos = m.bytes().skip(1).position(|b| b == b' ').map(|p| p + 1);
            let pair = pos
                .map(|p| (&m[..p], &m[p + 1..]))
                .filter(|(a, b)| !a.is_empty() && !b.is_empty());
            let Some((a, b)) = pair else {
                return Err(self.err(format!(
                    "metadata tokenizer.ggml.merges[{i}] = {m:?} is not a pair of tokens separated by a space (\"a b\")"
                )));
            };
            let joined = format!("{a}{b}");
            for part in [a, b, joined.as_str()] {
                if !vocab.contains_key(part) {
                    return Err(self.err(format!(
                        "metadata tokenizer.ggml.merges[{i}] = {m:?}: {part:?} is not in tokenizer.ggml.tokens"
                    )));
                }
            }
            merges.push((a.to_string(), b.to_string()));
        }
        Ok(merges)
    }

    /// The pre-tokenizer rule that `tokenizer.ggml.pre` (default `"default"`) names.
    fn pre_rule(&self) -> Result<&'static PreRule> {
        let pre_name = self.string("tokenizer.ggml.pre")?.unwrap_or("default");
        PRE_RULES.iter().find(|r| r.names.contains(&pre_name)).ok_or_else(|| {
            self.err(format!(
                "tokenizer.ggml.pre \"{pre_name}\" is not supported; shrink knows these pre-tokenizers (after \
                 llama.cpp): {}",
                supported_pre_names()
            ))
        })
    }

    /// The special token ids and add-BOS/EOS flags, checked for consistency.
    fn special_tokens(&self, n: usize, rule: &PreRule) -> Result<GgufSpecials> {
        let bos = self.token_id("tokenizer.ggml.bos_token_id", n)?;
        let eos = self.token_id("tokenizer.ggml.eos_token_id", n)?;
        let unk = self.token_id("tokenizer.ggml.unknown_token_id", n)?;
        let pad = self.token_id("tokenizer.ggml.padding_token_id", n)?;
        let eot = self.token_id("tokenizer.ggml.eot_token_id", n)?;
        let eom = self.token_id("tokenizer.ggml.eom_token_id", n)?;
        let add_bos = self
            .bool("tokenizer.ggml.add_bos_token")?
            .unwrap_or(rule.add_bos);
        let add_eos = self.bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false);
        if add_bos && bos.is_none() {
            return Err(self.err(
                "tokenizer.ggml.add_bos_token is true but tokenizer.ggml.bos_token_id is not set",
            ));
        }
        if add_eos && eos.is_none() {
            return Err(self.err(
                "tokenizer.ggml.add_eos_token is true but tokenizer.ggml.eos_token_id is not set",
            ));
        }
        Ok(GgufSpecials {
            bos,
            eos,
            unk,
            pad,
            eot,
            eom,
            add_bos,
            add_eos,
        })
    }
}

/// The special token ids and add-BOS/EOS flags of GGUF tokenizer metadata.
struct GgufSpecials {
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    pad: Option<u32>,
    eot: Option<u32>,
    eom: Option<u32>,
    add_bos: bool,
    add_eos: bool,
}

/// Token texts and the BPE vocabulary; llama.cpp names empty tokens [EMPTY_i], rejects duplicates.
fn gguf_vocab(meta: &Meta<'_>, tokens: &[&str]) -> Result<(Vec<String>, Vocab)> {
    let mut texts: Vec<String> = Vec::with_capacity(tokens.len());
    let mut vocab = Vocab::default();
    for (i, t) in tokens.iter().enumerate() {
        let text = if t.is_empty() {
            format!("[EMPTY_{i}]")
        } else {
            t.to_string()
        };
        if let Some(prev) = vocab.insert(text.clone(), i as u32) {
            return Err(meta.err(format!(
                "metadata tokenizer.ggml.tokens holds {text:?} twice (ids {prev} and {i})"
            )));
        }
        texts.push(text);
    }
    Ok((texts, vocab))
}

/// The BPE model with `rule`'s regex pre-tokenizer and the byte-level pre-tokenizer and decoder.
fn bpe_tokenizer(
    meta: &Meta<'_>,
    vocab: Vocab,
    merges: Merges,
    rule: &PreRule,
) -> Result<tokenizers::Tokenizer> {
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(rule.ignore_merges)
        .cache_capacity(0)
        .build()
        .map_err(|e| meta.err(format!("cannot build the BPE model: {e}")))?;
    let mut steps: Vec<PreTokenizerWrapper> = Vec::with_capacity(rule.regexes.len() + 1);
    for re in rule.regexes {
        let split = Split::new(
            SplitPattern::Regex(re.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| meta.err(format!("pre-tokenizer regex {re:?} does not compile: {e}")))?;
        steps.push(split.into());
    }
    steps.push(ByteLevel::new(false, false, false).into());

    let mut inner = tokenizers::Tokenizer::new(bpe);
    inner.with_pre_tokenizer(Some(Sequence::new(steps)));
    inner.with_decoder(Some(ByteLevel::new(false, false, false)));
    Ok(inner)
}

/// Replace a BPE model by the same model without its word cache. tokenizers 0.23 keeps each BPE
/// instance's cache (up to 10,000 words) in a thread-local map keyed by the instance and never
/// removes it when the instance is dropped: every tokenizer loaded and used on a thread stays in
/// memory for the thread's life (found by fuzzing: a persistent process grew by ~1 MB a call
/// until its allocations failed). Without the cache each word is merged again; encoding stays
/// well under a second for the largest texts shrink reads.
/// `merges` is the file's `model.merges`, which the model was read from: pairs, or (the older
/// form) strings "a b".
fn without_bpe_cache(
    inner: &mut tokenizers::Tokenizer,
    merges: serde_json::Value,
) -> std::result::Result<(), String> {
    let tokenizers::ModelWrapper::BPE(bpe) = inner.get_model() else {
        return Ok(());
    };
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum MergeList {
        Pairs(Merges),
        Strings(Vec<String>),
    }
    let merges: Merges = match serde_json::from_value(merges) {
        Ok(MergeList::Pairs(m)) => m,
        Ok(MergeList::Strings(m)) => m
            .iter()
            .map(|s| match s.split_once(' ') {
                Some((a, b)) => Ok((a.to_string(), b.to_string())),
                None => Err(format!("BPE merge {s:?} is not two tokens")),
            })
            .collect::<std::result::Result<_, _>>()?,
        Err(e) => return Err(format!("cannot read the BPE merges: {e}")),
    };
    let vocab: Vocab = bpe.get_vocab().into_iter().collect();
    let mut b = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .cache_capacity(0)
        .fuse_unk(bpe.fuse_unk)
        .byte_fallback(bpe.byte_fallback)
        .ignore_merges(bpe.ignore_merges);
    if let Some(d) = bpe.dropout {
        b = b.dropout(d);
    }
    if let Some(u) = &bpe.unk_token {
        b = b.unk_token(u.clone());
    }
    if let Some(p) = &bpe.continuing_subword_prefix {
        b = b.continuing_subword_prefix(p.clone());
    }
    if let Some(x) = &bpe.end_of_word_suffix {
        b = b.end_of_word_suffix(x.clone());
    }
    let plain = b
        .build()
        .map_err(|e| format!("cannot rebuild the BPE model: {e}"))?;
    inner.with_model(plain);
    Ok(())
}

/// Register control and unknown tokens as special, user-defined ones as matched in text too.
fn add_gguf_tokens(
    inner: &mut tokenizers::Tokenizer,
    path: &Path,
    texts: &[String],
    types: &[u64],
) -> Result<()> {
    let added = |ty: u64| {
        types
            .iter()
            .enumerate()
            .filter(move |(_, &t)| t == ty)
            .map(move |(i, _)| {
                AddedToken::from(texts[i].clone(), ty != token_type::USER_DEFINED).normalized(false)
            })
    };
    let specials: Vec<AddedToken> = added(token_type::CONTROL)
        .chain(added(token_type::UNKNOWN))
        .collect();
    let user: Vec<AddedToken> = added(token_type::USER_DEFINED).collect();
    if !specials.is_empty() {
        inner
            .add_special_tokens(specials)
            .map_err(|e| tk_err(path, e.to_string()))?;
    }
    if !user.is_empty() {
        inner
            .add_tokens(user)
            .map_err(|e| tk_err(path, e.to_string()))?;
    }
    Ok(())
}

/// What each id prints as (llama.cpp's token_to_piece with special tokens rendered).
fn gguf_pieces(texts: &[String], types: &[u64]) -> Vec<Vec<u8>> {
    let table = byte_chars();
    let mut char_byte: HashMap<char, u8> = HashMap::with_capacity(256);
    for (b, &c) in table.iter().enumerate() {
        char_byte.insert(c, b as u8);
    }
    texts
        .iter()
        .zip(types)
        .map(|(text, &ty)| match ty {
            token_type::CONTROL | token_type::UNKNOWN | token_type::USER_DEFINED => {
                text.as_bytes().to_vec()
            }
            _ => {
                let mut out = Vec::with_capacity(text.len());
                for c in text.chars() {
                    match char_byte.get(&c) {
                        Some(&b) => out.push(b),
                        None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                    }
                }
                out
            }
        })
        .collect()
}

impl Tokenizer {
    /// From a tokenizer.json; reads tokenizer_config.json beside it when present (chat_template,
    /// bos/eos tokens, add_bos_token) and generation_config.json for extra end-of-generation ids.
    pub fn from_file(path: &Path) -> Result<Self> {
        // Strict JSON first (serde_json, naming line and column); then the tokenizers crate,
        // whose deserializers panic on some malformed files (found by fuzzing): its panic is
        // this file's error.
        let text = crate::read_text(path)?;
        let value =
            serde_json::from_str::<serde_json::Value>(&text).map_err(|source| IoError::Json {
                path: path.to_path_buf(),
                source,
            })?;
        if let Some(what) = value.get("post_processor").and_then(template_gap) {
            return Err(tk_err(path, what));
        }
        let mut inner = guarded(path, "on it", || text.parse::<tokenizers::Tokenizer>())?;
        let merges = value
            .pointer("/model/merges")
            .cloned()
            .unwrap_or_else(|| serde_json::Value::Array(Vec::new()));
        without_bpe_cache(&mut inner, merges).map_err(|e| tk_err(path, e))?;
        // Ids must not depend on a truncation or padding setting saved with the file.
        inner
            .with_truncation(None)
            .map_err(|e| tk_err(path, format!("cannot disable truncation: {e}")))?;
        inner.with_padding(None);
        let dir = path.parent().unwrap_or(Path::new("."));

        let config_path = dir.join("tokenizer_config.json");
        let config = if config_path.is_file() {
            Some(crate::read_json(&config_path)?)
        } else {
            None
        };
        let token_text = |v: &serde_json::Value| -> Option<String> {
            match v {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Object(o) => o
                    .get("content")
                    .and_then(|c| c.as_str())
                    .map(str::to_string),
                _ => None,
            }
        };
        let cfg = |key: &str| config.as_ref().and_then(|c| c.get(key));
        let bos_text = cfg("bos_token").and_then(token_text);
        let eos_text = cfg("eos_token").and_then(token_text);
        let unk_text = cfg("unk_token").and_then(token_text);
        let pad_text = cfg("pad_token").and_then(token_text);
        let chat_template = match cfg("chat_template") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            // A list of named templates: take "default", else the first.
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|x| x.as_str()) == Some("default"))
                .or_else(|| list.first())
                .and_then(|t| t.get("template"))
                .and_then(|t| t.as_str())
                .map(str::to_string),
            Some(v) => {
                return Err(tk_err(
                    &config_path,
                    format!("chat_template should be a string or a list, found {v}"),
                ))
            }
        };
        // Recent repositories keep the template in chat_template.jinja instead.
        let chat_template = match chat_template {
            Some(t) => Some(t),
            None => {
                let jinja = dir.join("chat_template.jinja");
                if jinja.is_file() {
                    Some(crate::read_text(&jinja)?)
                } else {
                    None
                }
            }
        };

        let bos = bos_text.as_deref().and_then(|t| inner.token_to_id(t));
        let eos = eos_text.as_deref().and_then(|t| inner.token_to_id(t));
        // Whether the post-processor already adds BOS / EOS.
        // The tokenizers crate may still panic on a post-processor it accepted: its panic is
        // this file's error.
        let probe = guarded(path, "encoding with it", || inner.encode_fast("", true))?;
        let probe = probe.get_ids();
        let add_bos_cfg = cfg("add_bos_token")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let add_eos_cfg = cfg("add_eos_token")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let add_bos = add_bos_cfg && bos.is_some() && probe.first() != bos.as_ref();
        let add_eos = add_eos_cfg && eos.is_some() && probe.last() != eos.as_ref();
        let bos_added = add_bos || (bos.is_some() && probe.first() == bos.as_ref());

        let mut eos_ids: Vec<u32> = eos.into_iter().collect();
        let gen_path = dir.join("generation_config.json");
        if gen_path.is_file() {
            let gen = crate::read_json(&gen_path)?;
            match gen.get("eos_token_id") {
                Some(serde_json::Value::Number(n)) => eos_ids.extend(n.as_u64().map(|v| v as u32)),
                Some(serde_json::Value::Array(a)) => {
                    eos_ids.extend(a.iter().filter_map(|v| v.as_u64()).map(|v| v as u32))
                }
                _ => {}
            }
        }
        eos_ids.extend(EOG_TEXTS.iter().filter_map(|t| inner.token_to_id(t)));
        eos_ids.retain(|&id| inner.id_to_token(id).is_some());
        eos_ids.sort_unstable();
        eos_ids.dedup();

        let vocab_size = inner.get_vocab_size(true);
        Ok(Tokenizer {
            inner,
            source: path.to_path_buf(),
            pieces: None,
            vocab_size,
            bos,
            eos,
            eos_ids,
            add_bos,
            add_eos,
            bos_added,
            chat_template,
            bos_text,
            eos_text,
            unk_text,
            pad_text,
        })
    }

    /// Built from GGUF metadata (tokenizer.ggml.*), matching llama.cpp's tokenization.
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let meta = Meta { g };
        let model = meta.string("tokenizer.ggml.model")?.ok_or_else(|| {
            meta.err("metadata tokenizer.ggml.model is missing: the file carries no tokenizer")
        })?;
        match model {
            "gpt2" => Self::from_gguf_bpe(&meta),
            other => Err(meta.err(format!(
                "tokenizer.ggml.model \"{other}\" is not supported: shrink builds \"gpt2\" (byte-level BPE) tokenizers \
                 from GGUF metadata; SentencePiece (\"llama\") and others are not implemented yet — use the model's \
                 tokenizer.json instead"
            ))),
        }
    }

    /// The byte-level BPE family (`tokenizer.ggml.model = "gpt2"`).
    fn from_gguf_bpe(meta: &Meta<'_>) -> Result<Self> {
        let path = meta.g.path();
        let tokens = meta.tokens()?;
        let n = tokens.len();
        let types = meta.token_types(n)?;
        let (texts, vocab) = gguf_vocab(meta, &tokens)?;
        let merges = meta.merges(&vocab)?;
        let rule = meta.pre_rule()?;
        let mut inner = bpe_tokenizer(meta, vocab, merges, rule)?;
        add_gguf_tokens(&mut inner, path, &texts, &types)?;
        let pieces = gguf_pieces(&texts, &types);
        let sp = meta.special_tokens(n, rule)?;
        let chat_template = meta.string("tokenizer.chat_template")?.map(str::to_string);

        let mut eos_ids: Vec<u32> = [sp.eos, sp.eot, sp.eom].into_iter().flatten().collect();
        eos_ids.extend(EOG_TEXTS.iter().filter_map(|t| inner.token_to_id(t)));
        eos_ids.sort_unstable();
        eos_ids.dedup();

        Ok(Tokenizer {
            bos_text: sp.bos.map(|id| texts[id as usize].clone()),
            eos_text: sp.eos.map(|id| texts[id as usize].clone()),
            unk_text: sp.unk.map(|id| texts[id as usize].clone()),
            pad_text: sp.pad.map(|id| texts[id as usize].clone()),
            inner,
            source: path.to_path_buf(),
            pieces: Some(pieces),
            vocab_size: n,
            bos: sp.bos,
            eos: sp.eos,
            eos_ids,
            add_bos: sp.add_bos,
            add_eos: sp.add_eos,
            bos_added: sp.add_bos,
            chat_template,
        })
    }

    fn err(&self, what: impl Into<String>) -> IoError {
        tk_err(&self.source, what)
    }

    /// The file this tokenizer was read from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Token ids of `text`. Special tokens written in the text are parsed as special. With
    /// `add_special`, BOS (and EOS) are added only where the model asks for them (GGUF
    /// `add_bos_token` / `add_eos_token`; tokenizer.json's post-processor and `add_bos_token`).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, add_special)
            .map_err(|e| self.err(format!("cannot encode text: {e}")))?;
        let body = enc.get_ids();
        let mut ids = Vec::with_capacity(body.len() + 2);
        if add_special && self.add_bos {
            ids.extend(self.bos);
        }
        ids.extend_from_slice(body);
        if add_special && self.add_eos {
            ids.extend(self.eos);
        }
        Ok(ids)
    }

    fn check_id(&self, id: u32) -> Result<()> {
        let known = match &self.pieces {
            Some(p) => (id as usize) < p.len(),
            None => self.inner.id_to_token(id).is_some(),
        };
        if known {
            Ok(())
        } else {
            Err(self.err(format!(
                "token id {id} is outside the vocabulary of {} tokens",
                self.vocab_size
            )))
        }
    }

    /// The bytes `ids` print as (GGUF-built tokenizers only).
    fn decode_bytes(&self, pieces: &[Vec<u8>], ids: &[u32], out: &mut Vec<u8>) -> Result<()> {
        for &id in ids {
            match pieces.get(id as usize) {
                Some(p) => out.extend_from_slice(p),
                None => {
                    return Err(self.err(format!(
                        "token id {id} is outside the vocabulary of {} tokens",
                        pieces.len()
                    )))
                }
            }
        }
        Ok(())
    }

    /// Text of `ids`, skipping nothing: special tokens are written out, and decoding the ids of a
    /// text gives that text back. Bytes that do not form UTF-8 become U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match &self.pieces {
            Some(pieces) => {
                let mut bytes = Vec::with_capacity(ids.len() * 4);
                self.decode_bytes(pieces, ids, &mut bytes)?;
                Ok(match String::from_utf8(bytes) {
                    Ok(s) => s,
                    Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
                })
            }
            None => {
                for &id in ids {
                    self.check_id(id)?;
                }
                self.inner
                    .decode(ids, false)
                    .map_err(|e| self.err(format!("cannot decode ids: {e}")))
            }
        }
    }

    /// Number of ids (vocabulary entries, added tokens included).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The vocabulary entry of `id` as stored (byte-level form, e.g. `Ġthe`), if any.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The id of vocabulary entry `token` (byte-level form), if any.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Beginning-of-sequence id, if the model has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// End-of-sequence id, if the model has one.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// All ids that end generation: EOS, plus end-of-turn tokens such as `<|im_end|>`,
    /// `<|endoftext|>` or `<|eot_id|>` found in the vocabulary (llama.cpp's end-of-generation set).
    pub fn eos_ids(&self) -> Vec<u32> {
        self.eos_ids.clone()
    }

    /// Whether `id` ends generation.
    pub fn is_eos(&self, id: u32) -> bool {
        self.eos_ids.binary_search(&id).is_ok()
    }

    /// Whether `encode(text, true)` prepends BOS.
    pub fn adds_bos(&self) -> bool {
        self.bos_added
    }

    /// The model's chat template (Jinja), if it has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Render the chat template (minijinja) for [(role, content)] with add_generation_prompt.
    ///
    /// The template sees `messages` (a list of `{role, content}`), `add_generation_prompt`,
    /// `bos_token` and `eos_token`, with Jinja's `trim_blocks` and `lstrip_blocks` on as in
    /// `transformers`, `raise_exception(msg)`, a `tojson` filter and the common Python string and
    /// dict methods (`strip`, `split`, `startswith`, `items`, `get`, ...).
    pub fn apply_chat_template(
        &self,
        messages: &[(&str, &str)],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self
            .chat_template
            .as_deref()
            .ok_or_else(|| self.err("the model has no chat template"))?;
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        // A template is code from the model's files: its instructions are bounded (a nested
        // loop that never ends stops) and so is what it writes (below).
        env.set_fuel(Some(CHAT_TEMPLATE_FUEL));
        env.set_unknown_method_callback(python_method);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<Value, minijinja::Error> {
                Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!("raise_exception: {msg}"),
                ))
            },
        );
        env.add_filter("tojson", tojson);
        let msgs: Vec<BTreeMap<&str, &str>> = messages
            .iter()
            .map(|&(role, content)| BTreeMap::from([("role", role), ("content", content)]))
            .collect();
        let ctx = minijinja::context! {
            messages => msgs,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_text.clone().unwrap_or_default(),
            eos_token => self.eos_text.clone().unwrap_or_default(),
        };
        let render = |e: minijinja::Error| {
            let mut what = format!("chat template: {e}");
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                what.push_str(&format!(": {s}"));
                src = s.source();
            }
            self.err(what)
        };
        let tmpl = env.template_from_str(template).map_err(render)?;
        let limit = CHAT_TEMPLATE_OUTPUT + 4 * messages.iter().map(|m| m.1.len()).sum::<usize>();
        let mut out = Bounded {
            buf: Vec::new(),
            limit,
        };
        tmpl.render_captured_to(ctx, &mut out).map_err(|e| {
            if out.buf.len() >= limit {
                self.err(format!(
                    "chat template: the rendered prompt passed {limit} bytes; refused"
                ))
            } else {
                render(e)
            }
        })?;
        String::from_utf8(out.buf).map_err(|e| self.err(format!("chat template: {e}")))
    }

    /// The files a Hugging Face directory carries for this tokenizer: `tokenizer.json` and
    /// `tokenizer_config.json` (chat template, BOS/EOS, add_bos_token), as (name, content).
    pub fn hf_files(&self) -> Result<Vec<(String, String)>> {
        let json = self
            .inner
            .to_string(true)
            .map_err(|e| self.err(format!("cannot serialise tokenizer.json: {e}")))?;
        let mut cfg = serde_json::Map::new();
        cfg.insert("tokenizer_class".into(), "PreTrainedTokenizerFast".into());
        cfg.insert("add_bos_token".into(), self.add_bos.into());
        cfg.insert("add_eos_token".into(), self.add_eos.into());
        if let Some(b) = &self.bos_text {
            cfg.insert("bos_token".into(), b.clone().into());
        }
        if let Some(e) = &self.eos_text {
            cfg.insert("eos_token".into(), e.clone().into());
        }
        if let Some(u) = &self.unk_text {
            cfg.insert("unk_token".into(), u.clone().into());
        }
        if let Some(p) = &self.pad_text {
            cfg.insert("pad_token".into(), p.clone().into());
        }
        if let Some(t) = &self.chat_template {
            cfg.insert("chat_template".into(), t.clone().into());
        }
        let cfg = serde_json::to_string_pretty(&serde_json::Value::Object(cfg))
            .map_err(|e| self.err(format!("cannot serialise tokenizer_config.json: {e}")))?;
        Ok(vec![
            ("tokenizer.json".into(), json),
            ("tokenizer_config.json".into(), cfg),
        ])
    }

    /// Incremental decoder for streaming generation: feed ids one at a time with
    /// [`DecodeStream::step`]; each call returns the new text that can be printed (a character
    /// split over several tokens is held back until it is complete).
    pub fn decode_stream(&self) -> DecodeStream<'_> {
        DecodeStream {
            tok: self,
            pending: Vec::new(),
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
        }
    }
}

/// Streaming decoder returned by [`Tokenizer::decode_stream`].
#[derive(Debug)]
pub struct DecodeStream<'a> {
    tok: &'a Tokenizer,
    /// GGUF-built: bytes of an incomplete UTF-8 character not printed yet.
    pending: Vec<u8>,
    /// tokenizer.json: the ids still needed to decode the next chunk in context.
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl DecodeStream<'_> {
    /// Feed the next generated id; returns the text it completes, or `None` while a character is
    /// still incomplete.
    pub fn step(&mut self, id: u32) -> Result<Option<String>> {
        self.tok.check_id(id)?;
        match &self.tok.pieces {
            Some(pieces) => {
                self.pending.extend_from_slice(&pieces[id as usize]);
                let mut out = String::new();
                let mut rest: &[u8] = &self.pending;
                loop {
                    match std::str::from_utf8(rest) {
                        Ok(s) => {
                            out.push_str(s);
                            rest = &[];
                            break;
                        }
                        Err(e) => {
                            let valid = e.valid_up_to();
                            out.push_str(
                                std::str::from_utf8(&rest[..valid]).expect("checked valid"),
                            );
                            match e.error_len() {
                                // Invalid bytes: print a replacement, as decode does.
                                Some(len) => {
                                    out.push('\u{FFFD}');
                                    rest = &rest[valid + len..];
                                }
                                // An incomplete character at the end: wait for more bytes.
                                None => {
                                    rest = &rest[valid..];
                                    break;
                                }
                            }
                        }
                    }
                }
                self.pending = rest.to_vec();
                Ok(if out.is_empty() { None } else { Some(out) })
            }
            None => {
                // Decode a window in context and print what it adds past the previous window
                // (keeps decoders that strip a leading space or fuse bytes correct).
                self.ids.push(id);
                let prefix = self
                    .tok
                    .decode(&self.ids[self.prefix_offset..self.read_offset])?;
                let full = self.tok.decode(&self.ids[self.prefix_offset..])?;
                if full.len() <= prefix.len() || full.ends_with('\u{FFFD}') {
                    return Ok(None);
                }
                let cut = if full.starts_with(&prefix) {
                    prefix.len()
                } else {
                    full.char_indices()
                        .zip(prefix.chars())
                        .find(|((_, a), b)| a != b)
                        .map(|((i, _), _)| i)
                        .unwrap_or(prefix.len().min(full.len()))
                };
                let new = full[cut..].to_string();
                // The next window starts where this one's new text began.
                self.ids.drain(..self.read_offset);
                self.prefix_offset = 0;
                self.read_offset = self.ids.len();
                Ok(Some(new))
            }
        }
    }
}

/// Python methods that chat templates call on strings and dicts.
fn python_method(
    state: &State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> std::result::Result<Value, minijinja::Error> {
    if let Some(s) = value.as_str() {
        return python_str_method(s, method, args);
    }
    if value.kind() == ValueKind::Map {
        return python_dict_method(state, value, method, args);
    }
    Err(minijinja::Error::from(ErrorKind::UnknownMethod))
}

/// A chat-template error about a bad call of `method`.
fn method_err(method: &str, what: &str) -> minijinja::Error {
    minijinja::Error::new(ErrorKind::InvalidOperation, format!("{method}(): {what}"))
}

/// Argument `i` of a call of `method` as an optional string (absent or none → `None`).
fn str_arg(
    method: &str,
    args: &[Value],
    i: usize,
) -> std::result::Result<Option<String>, minijinja::Error> {
    match args.get(i) {
        None => Ok(None),
        Some(v) if v.is_none() || v.is_undefined() => Ok(None),
        Some(v) => v
            .as_str()
            .map(|s| Some(s.to_string()))
            .ok_or_else(|| method_err(method, "argument must be a string")),
    }
}

/// Argument `i` of a call of `method` as a required string; `what` says what is needed.
fn req_str_arg(
    method: &str,
    args: &[Value],
    i: usize,
    what: &str,
) -> std::result::Result<String, minijinja::Error> {
    str_arg(method, args, i)?.ok_or_else(|| method_err(method, what))
}

/// Python's `str` methods: strip family, case changes, search, split and replace.
fn python_str_method(
    s: &str,
    method: &str,
    args: &[Value],
) -> std::result::Result<Value, minijinja::Error> {
    Ok(match method {
        "strip" | "lstrip" | "rstrip" => {
            let chars = str_arg(method, args, 0)?;
            let pat = |c: char| match &chars {
                Some(cs) => cs.contains(c),
                None => c.is_whitespace(),
            };
            Value::from(match method {
                "strip" => s.trim_matches(pat),
                "lstrip" => s.trim_start_matches(pat),
                _ => s.trim_end_matches(pat),
            })
        }
        "upper" => Value::from(s.to_uppercase()),
        "lower" => Value::from(s.to_lowercase()),
        "capitalize" => Value::from(py_capitalize(s)),
        "title" => Value::from(py_title(s)),
        "startswith" | "endswith" => {
            let p = req_str_arg(method, args, 0, "needs a string argument")?;
            Value::from(if method == "startswith" {
                s.starts_with(&p)
            } else {
                s.ends_with(&p)
            })
        }
        "split" | "rsplit" => {
            let parts: Vec<Value> = match str_arg(method, args, 0)? {
                Some(sep) if sep.is_empty() => return Err(method_err(method, "empty separator")),
                Some(sep) => s.split(sep.as_str()).map(Value::from).collect(),
                None => s.split_whitespace().map(Value::from).collect(),
            };
            Value::from(parts)
        }
        "replace" => {
            let from = req_str_arg(method, args, 0, "needs two string arguments")?;
            let to = req_str_arg(method, args, 1, "needs two string arguments")?;
            Value::from(s.replace(&from, &to))
        }
        "find" => {
            let p = req_str_arg(method, args, 0, "needs a string argument")?;
            Value::from(
                s.find(&p)
                    .map(|b| s[..b].chars().count() as i64)
                    .unwrap_or(-1),
            )
        }
        "count" => {
            let p = req_str_arg(method, args, 0, "needs a string argument")?;
            Value::from(if p.is_empty() {
                s.chars().count() + 1
            } else {
                s.matches(&p).count()
            })
        }
        _ => return Err(minijinja::Error::from(ErrorKind::UnknownMethod)),
    })
}

/// Python's `str.capitalize`: first character upper case, the rest lower case.
fn py_capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f
            .to_uppercase()
            .chain(c.flat_map(char::to_lowercase))
            .collect::<String>(),
        None => String::new(),
    }
}

/// Python's `str.title`: upper case after a non-letter, lower case after a letter.
fn py_title(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut prev_cased = false;
    for c in s.chars() {
        if prev_cased {
            out.extend(c.to_lowercase());
        } else {
            out.extend(c.to_uppercase());
        }
        prev_cased = c.is_alphabetic();
    }
    out
}

/// Python's `dict` methods: items, keys, values and get.
fn python_dict_method(
    state: &State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> std::result::Result<Value, minijinja::Error> {
    match method {
        "items" => state.apply_filter("items", std::slice::from_ref(value)),
        "keys" => Ok(Value::from(value.try_iter()?.collect::<Vec<_>>())),
        "values" => {
            let vals = value
                .try_iter()?
                .map(|k| value.get_item(&k))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            Ok(Value::from(vals))
        }
        "get" => {
            let key = args
                .first()
                .ok_or_else(|| method_err(method, "needs a key"))?;
            let v = value.get_item(key)?;
            Ok(if v.is_undefined() {
                args.get(1).cloned().unwrap_or(Value::from(()))
            } else {
                v
            })
        }
        _ => Err(minijinja::Error::from(ErrorKind::UnknownMethod)),
    }
}

/// Python's `json.dumps` separators (", " and ": ") for the `tojson` filter.
struct PyJsonFormatter;

impl serde_json::ser::Formatter for PyJsonFormatter {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }
    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }
    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
}

/// `tojson` as `transformers` defines it (`json.dumps(x, ensure_ascii=False, indent=indent)`).
fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let to_err = |e: serde_json::Error| {
        minijinja::Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}"))
    };
    let mut out = Vec::new();
    match indent {
        Some(n) => {
            let spaces = " ".repeat(n);
            let fmt = serde_json::ser::PrettyFormatter::with_indent(spaces.as_bytes());
            let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
            serde::Serialize::serialize(&value, &mut ser).map_err(to_err)?;
        }
        None => {
            let mut ser = serde_json::Serializer::with_formatter(&mut out, PyJsonFormatter);
            serde::Serialize::serialize(&value, &mut ser).map_err(to_err)?;
        }
    }
    Ok(Value::from_safe_string(
        String::from_utf8(out).expect("serde_json writes UTF-8"),
    ))
}

impl Tokenizer {
    /// The tokenizer of a checkpoint: tokenizer.json of an HF directory, or the GGUF's
    /// vocabulary.
    pub fn for_checkpoint(ckpt: &crate::Checkpoint) -> Result<Self> {
        match ckpt {
            crate::Checkpoint::Gguf(g) => Tokenizer::from_gguf(g),
            crate::Checkpoint::Hf(h) => match &h.tokenizer_json {
                Some(p) => Tokenizer::from_file(p),
                None => Err(IoError::malformed(
                    &h.dir,
                    "no tokenizer.json in this directory; this command needs one",
                )),
            },
        }
    }
}
