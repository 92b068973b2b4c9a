//! GGUF metadata for a Hugging Face tokenizer: `tokenizer.json` (+ `tokenizer_config.json`,
//! `config.json`) → `tokenizer.ggml.*`, as llama.cpp's `convert_hf_to_gguf.py` writes it for
//! the byte-level BPE family (`_set_vocab_gpt2` / `get_vocab_base` and gguf-py's
//! `SpecialVocab`). The reverse of [`crate::tokenizer::Tokenizer::from_gguf`].
//!
//! What is written, in llama.cpp's order:
//! - `tokenizer.ggml.model` = `"gpt2"` and `tokenizer.ggml.pre` (chosen by [`pre_name`]);
//! - `tokenizer.ggml.tokens` for ids `0..vocab_size` (ids without a token become `[PADi]`) and
//!   `tokenizer.ggml.token_type` (i32: 1 normal, 3 control for special added tokens and tokens
//!   that look special, 4 user-defined for other added tokens, 5 unused for `[PADi]`);
//! - `tokenizer.ggml.merges` as `"a b"` strings;
//! - `tokenizer.ggml.{bos,eos,unknown,seperator,padding,cls,mask}_token_id` from
//!   `tokenizer_config.json`'s `*_token` (looked up among the added tokens), else
//!   `config.json`'s `*_token_id`; for `unk` also the BPE model's `unk_token`;
//! - `tokenizer.ggml.add_bos_token` / `add_eos_token` from `tokenizer_config.json` (an
//!   `add_eos_token` of false is left out: it is llama.cpp's default);
//! - `tokenizer.chat_template` from `tokenizer_config.json` or `chat_template.jinja`.
//!
//! `tokenizer.ggml.add_space_prefix` comes from `tokenizer_config.json`'s `add_prefix_space`,
//! else (shrink's addition) from the `ByteLevel` pre-tokenizer's `add_prefix_space`.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use crate::error::{IoError, Result};
use crate::gguf::GgufValue;

/// llama.cpp's token types (`llama_token_type`).
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

/// gguf-py's `SpecialVocab` token kinds, in its order, with their GGUF key names.
const SPECIAL_KINDS: [(&str, &str); 7] = [
    ("bos", "bos"),
    ("eos", "eos"),
    ("unk", "unknown"),
    ("sep", "seperator"),
    ("pad", "padding"),
    ("cls", "cls"),
    ("mask", "mask"),
];

/// The GPT-2 split regex, as tokenizers spells it in a `Split` pre-tokenizer.
const GPT2_RE: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";

/// The tokenizer metadata and what was chosen along the way.
#[derive(Debug, Clone)]
pub struct TokenizerMeta {
    /// `tokenizer.ggml.*` and `tokenizer.chat_template` key/values, in llama.cpp's order
    /// (`add_space_prefix` and `add_bos_token` first, as `LlamaModel.set_vocab` writes them).
    pub metadata: Vec<(String, GgufValue)>,
    /// The `tokenizer.ggml.pre` value and why it was chosen.
    pub pre: (String, String),
}

fn err(path: &Path, what: impl Into<String>) -> IoError {
    IoError::malformed(path, what.into())
}

fn read_json_opt(path: &Path) -> Result<Option<Value>> {
    if path.is_file() {
        crate::read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

/// The text of a `*_token` entry of tokenizer_config.json (a string or `{content: ...}`).
fn token_text(v: &Value) -> Option<&str> {
    v.as_str()
        .or_else(|| v.get("content").and_then(Value::as_str))
}

/// llama.cpp's `does_token_look_special`.
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<｜") && t.ends_with("｜>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

/// The `tokenizer.ggml.pre` name for a tokenizer.json pre-tokenizer, by its structure (llama.cpp
/// picks it by hashing a test tokenization; shrink recognises the regex layouts it supports),
/// with the reason. Unrecognised layouts get `"default"`.
pub fn pre_name(tokenizer: &Value) -> (String, String) {
    let pre = &tokenizer["pre_tokenizer"];
    let steps: Vec<&Value> = match pre["type"].as_str() {
        Some("Sequence") => pre["pretokenizers"]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default(),
        Some(_) => vec![pre],
        None => vec![],
    };
    let desc: Vec<String> = steps
        .iter()
        .map(|s| match s["type"].as_str().unwrap_or("?") {
            "Split" => format!(
                "Split({})",
                s["pattern"]["Regex"]
                    .as_str()
                    .or(s["pattern"]["String"].as_str())
                    .unwrap_or("?")
            ),
            "Digits" => format!(
                "Digits(individual={})",
                s["individual_digits"].as_bool().unwrap_or(false)
            ),
            "ByteLevel" => format!(
                "ByteLevel(use_regex={})",
                s["use_regex"].as_bool().unwrap_or(true)
            ),
            other => other.to_string(),
        })
        .collect();
    let d: Vec<&str> = desc.iter().map(String::as_str).collect();
    let digits_gpt2 = ["Digits(individual=true)", "ByteLevel(use_regex=true)"];
    let split_digits_gpt2 = [
        "Split(\\p{N})".to_string(),
        format!("Split({GPT2_RE})"),
        "ByteLevel(use_regex=false)".to_string(),
    ];
    let name = if d == digits_gpt2 || desc == split_digits_gpt2 {
        // SmolLM / StarCoder: single digits, then GPT-2's split (one llama.cpp rule).
        "smollm"
    } else if d == ["ByteLevel(use_regex=true)"]
        || desc
            == [
                format!("Split({GPT2_RE})"),
                "ByteLevel(use_regex=false)".into(),
            ]
    {
        "gpt-2"
    } else if d.len() == 2
        && d[1] == "ByteLevel(use_regex=false)"
        && d[0].contains(r"\p{N}{1,3}")
        && d[0].contains(r"[^\r\n\p{L}\p{N}]?\p{L}+")
    {
        "llama-bpe"
    } else if d.len() == 2
        && d[1] == "ByteLevel(use_regex=false)"
        && d[0].contains(r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|")
    {
        "qwen2"
    } else {
        return (
            "default".into(),
            format!(
                "pre-tokenizer [{}] is not one shrink recognises; llama.cpp's \"default\" is used",
                desc.join(", ")
            ),
        );
    };
    (
        name.to_string(),
        format!(
            "pre-tokenizer [{}] is llama.cpp's \"{name}\"",
            desc.join(", ")
        ),
    )
}

/// An added token of tokenizer.json: id, content and whether it is special.
type Added = (u64, String, bool);

/// Build the tokenizer metadata of the HF directory `dir` (its `tokenizer.json`,
/// `tokenizer_config.json`, `chat_template.jinja` and `config.json`). `vocab_size` is
/// config.json's (the embedding's rows), at least the tokenizer's size; `pre` overrides the
/// pre-tokenizer name.
pub fn tokenizer_metadata(
    dir: &Path,
    vocab_size: usize,
    pre: Option<&str>,
) -> Result<TokenizerMeta> {
    let tj_path = dir.join("tokenizer.json");
    if !tj_path.is_file() {
        return Err(err(
            dir,
            "no tokenizer.json: a GGUF needs the tokenizer as metadata, and shrink builds it from tokenizer.json",
        ));
    }
    let tj = crate::read_json(&tj_path)?;
    let tc = read_json_opt(&dir.join("tokenizer_config.json"))?.unwrap_or(Value::Null);
    let cfg = read_json_opt(&dir.join("config.json"))?.unwrap_or(Value::Null);
    check_byte_level_bpe(&tj_path, &tj)?;
    let model = &tj["model"];
    let added = added_tokens(&tj);
    let (tokens, types) = token_table(&tj_path, model, &added, vocab_size)?;
    let n = tokens.len();
    let merges = merges(&tj_path, model)?;
    let (pre_value, pre_why) = match pre {
        Some(p) => (p.to_string(), "given with --pre".to_string()),
        None => pre_name(&tj),
    };

    let mut m: Vec<(String, GgufValue)> = Vec::new();
    if let Some(b) = add_space_prefix(&tc, &tj) {
        m.push(("tokenizer.ggml.add_space_prefix".into(), GgufValue::Bool(b)));
    }
    // LlamaModel.set_vocab: "Apply to granite small models only" (SmolLM's vocabulary size).
    let smol_no_bos = vocab_size == 49152;
    if smol_no_bos {
        m.push((
            "tokenizer.ggml.add_bos_token".into(),
            GgufValue::Bool(false),
        ));
    }
    m.push((
        "tokenizer.ggml.model".into(),
        GgufValue::String("gpt2".into()),
    ));
    m.push((
        "tokenizer.ggml.pre".into(),
        GgufValue::String(pre_value.clone()),
    ));
    m.push(("tokenizer.ggml.tokens".into(), GgufValue::Array(tokens)));
    m.push(("tokenizer.ggml.token_type".into(), GgufValue::Array(types)));
    // llama.cpp's loader requires the key for a `gpt2` tokenizer, even with no merges.
    m.push(("tokenizer.ggml.merges".into(), GgufValue::Array(merges)));
    push_special_token_ids(&mut m, &tc, &cfg, model, &added, n);
    push_add_special_flags(&mut m, &tc, smol_no_bos);
    if let Some(t) = chat_template(dir, &tc)? {
        m.push(("tokenizer.chat_template".into(), GgufValue::String(t)));
    }
    Ok(TokenizerMeta {
        metadata: m,
        pre: (pre_value, pre_why),
    })
}

/// Check that tokenizer.json holds a byte-level BPE model (the `gpt2` family).
fn check_byte_level_bpe(tj_path: &Path, tj: &Value) -> Result<()> {
    match tj["model"]["type"].as_str() {
        Some("BPE") => {}
        other => {
            return Err(err(
                tj_path,
                format!(
                    "tokenizer model {other:?} is not supported: shrink exports byte-level BPE (\"gpt2\") tokenizers only"
                ),
            ))
        }
    }
    let byte_level = |v: &Value| {
        v["type"] == "ByteLevel"
            || v["pretokenizers"]
                .as_array()
                .is_some_and(|a| a.iter().any(|s| s["type"] == "ByteLevel"))
    };
    if !byte_level(&tj["pre_tokenizer"]) && !byte_level(&tj["decoder"]) {
        return Err(err(
            tj_path,
            "the BPE tokenizer is not byte-level (no ByteLevel pre-tokenizer or decoder): \
             SentencePiece-style BPE is not supported",
        ));
    }
    Ok(())
}

/// tokenizer.json's `added_tokens` (entries without an id or content are skipped).
fn added_tokens(tj: &Value) -> Vec<Added> {
    tj["added_tokens"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| {
                    Some((
                        t["id"].as_u64()?,
                        t["content"].as_str()?.to_string(),
                        t["special"].as_bool().unwrap_or(false),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Tokens and token types: the BPE vocabulary, then added tokens, padded with `[PADi]`.
fn token_table(
    tj_path: &Path,
    model: &Value,
    added: &[Added],
    vocab_size: usize,
) -> Result<(Vec<GgufValue>, Vec<GgufValue>)> {
    let mut by_id: HashMap<u64, String> = HashMap::new();
    let vocab = model["vocab"]
        .as_object()
        .ok_or_else(|| err(tj_path, "model.vocab is not an object"))?;
    for (t, id) in vocab {
        let id = id
            .as_u64()
            .ok_or_else(|| err(tj_path, format!("model.vocab[{t:?}] is not an id")))?;
        by_id.insert(id, t.clone());
    }
    let mut added_special: HashMap<u64, bool> = HashMap::new();
    for (id, content, special) in added {
        by_id.insert(*id, content.clone());
        added_special.insert(*id, *special);
    }
    // The table is as long as the model's vocabulary: an id past it names no embedding row
    // (and a hostile id would size the table by itself).
    if let Some((&id, t)) = by_id
        .iter()
        .filter(|(&id, _)| id >= vocab_size as u64)
        .min_by_key(|(&id, _)| id)
    {
        return Err(err(
            tj_path,
            format!("token {t:?} has id {id}, past the model's vocabulary of {vocab_size}"),
        ));
    }
    let n = vocab_size;
    let mut tokens = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    for i in 0..n as u64 {
        match by_id.get(&i) {
            None => {
                tokens.push(GgufValue::String(format!("[PAD{i}]")));
                types.push(GgufValue::I32(UNUSED));
            }
            Some(t) => {
                let ty = match added_special.get(&i) {
                    Some(&special) if special || looks_special(t) => CONTROL,
                    Some(_) => USER_DEFINED,
                    None => NORMAL,
                };
                tokens.push(GgufValue::String(t.clone()));
                types.push(GgufValue::I32(ty));
            }
        }
    }
    Ok((tokens, types))
}

/// `tokenizer.ggml.merges` as `"a b"` strings, from `model.merges` (strings or pairs).
fn merges(tj_path: &Path, model: &Value) -> Result<Vec<GgufValue>> {
    match model["merges"].as_array() {
        None => Ok(vec![]),
        Some(a) => a
            .iter()
            .enumerate()
            .map(|(i, m)| match m {
                Value::String(s) => Ok(GgufValue::String(s.clone())),
                Value::Array(p) if p.len() == 2 && p.iter().all(Value::is_string) => {
                    Ok(GgufValue::String(format!(
                        "{} {}",
                        p[0].as_str().unwrap(),
                        p[1].as_str().unwrap()
                    )))
                }
                _ => Err(err(tj_path, format!("model.merges[{i}] is not a merge"))),
            })
            .collect::<Result<_>>(),
    }
}

/// `add_prefix_space` of tokenizer_config.json, else of the `ByteLevel` pre-tokenizer.
fn add_space_prefix(tc: &Value, tj: &Value) -> Option<bool> {
    tc["add_prefix_space"].as_bool().or_else(|| {
        let pre = &tj["pre_tokenizer"];
        let steps = pre["pretokenizers"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| vec![pre.clone()]);
        steps
            .iter()
            .find(|s| s["type"] == "ByteLevel")
            .and_then(|s| s["add_prefix_space"].as_bool())
    })
}

/// Push `tokenizer.ggml.<kind>_token_id` for each special token kind found (ids below `n`).
fn push_special_token_ids(
    m: &mut Vec<(String, GgufValue)>,
    tc: &Value,
    cfg: &Value,
    model: &Value,
    added: &[Added],
    n: usize,
) {
    for (kind, key) in SPECIAL_KINDS {
        let from_tc = tc
            .get(format!("{kind}_token"))
            .and_then(token_text)
            .and_then(|text| {
                added
                    .iter()
                    .find(|(_, c, _)| c == text)
                    .map(|(id, _, _)| *id)
            });
        let from_cfg = || cfg.get(format!("{kind}_token_id")).and_then(Value::as_u64);
        let from_model = || {
            (kind == "unk")
                .then(|| model["unk_token"].as_str())
                .flatten()
                .and_then(|t| model["vocab"].get(t).and_then(Value::as_u64))
        };
        if let Some(id) = from_tc.or_else(from_cfg).or_else(from_model) {
            if (id as usize) < n {
                m.push((
                    format!("tokenizer.ggml.{key}_token_id"),
                    GgufValue::U32(id as u32),
                ));
            }
        }
    }
}

/// Push `tokenizer.ggml.add_{bos,eos}_token` where tokenizer_config.json departs from llama.cpp.
fn push_add_special_flags(m: &mut Vec<(String, GgufValue)>, tc: &Value, smol_no_bos: bool) {
    for (kind, default) in [("bos", None), ("eos", Some(false))] {
        if kind == "bos" && smol_no_bos {
            continue;
        }
        if let Some(b) = tc[format!("add_{kind}_token")].as_bool() {
            if Some(b) != default {
                m.push((
                    format!("tokenizer.ggml.add_{kind}_token"),
                    GgufValue::Bool(b),
                ));
            }
        }
    }
}

/// The chat template: `chat_template.jinja`, else tokenizer_config.json's (or its "default").
fn chat_template(dir: &Path, tc: &Value) -> Result<Option<String>> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        return Ok(Some(crate::read_text(&jinja)?));
    }
    Ok(match &tc["chat_template"] {
        Value::String(s) => Some(s.clone()),
        Value::Array(a) => a
            .iter()
            .find(|t| t["name"] == "default")
            .and_then(|t| t["template"].as_str())
            .map(str::to_string),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_pre_tokenizers() {
        let smol = serde_json::json!({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true}]}});
        assert_eq!(pre_name(&smol).0, "smollm");
        let gpt2 = serde_json::json!({"pre_tokenizer": {"type": "ByteLevel", "use_regex": true}});
        assert_eq!(pre_name(&gpt2).0, "gpt-2");
        let none = serde_json::json!({"pre_tokenizer": null});
        assert_eq!(pre_name(&none).0, "default");
        assert!(looks_special("<|im_end|>") && !looks_special("hello"));
    }

    #[test]
    fn builds_vocabulary_types_and_special_ids() {
        let dir = tempfile::tempdir().unwrap();
        let tj = serde_json::json!({
            "added_tokens": [
                {"id": 4, "content": "<s>", "special": true},
                {"id": 5, "content": "foo", "special": false},
                {"id": 6, "content": "<|eot|>", "special": false},
            ],
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": true, "use_regex": true},
            "decoder": {"type": "ByteLevel"},
            "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "Ġ": 3},
                      "merges": [["a", "b"]]},
        });
        let tc = serde_json::json!({"bos_token": {"content": "<s>"}, "add_bos_token": true,
            "add_eos_token": false, "chat_template": "{{ x }}"});
        let cfg = serde_json::json!({"eos_token_id": 6});
        for (n, v) in [
            ("tokenizer.json", tj),
            ("tokenizer_config.json", tc),
            ("config.json", cfg),
        ] {
            std::fs::write(dir.path().join(n), v.to_string()).unwrap();
        }
        let m = tokenizer_metadata(dir.path(), 8, None).unwrap();
        assert_eq!(m.pre.0, "gpt-2");
        let get = |k: &str| {
            m.metadata
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        let s = |x: &str| GgufValue::String(x.into());
        assert_eq!(get("tokenizer.ggml.model"), Some(s("gpt2")));
        let tokens: Vec<GgufValue> = ["a", "b", "ab", "Ġ", "<s>", "foo", "<|eot|>", "[PAD7]"]
            .iter()
            .map(|t| s(t))
            .collect();
        assert_eq!(get("tokenizer.ggml.tokens"), Some(GgufValue::Array(tokens)));
        let types = [1, 1, 1, 1, 3, 4, 3, 5].map(GgufValue::I32).to_vec();
        assert_eq!(
            get("tokenizer.ggml.token_type"),
            Some(GgufValue::Array(types))
        );
        assert_eq!(
            get("tokenizer.ggml.merges"),
            Some(GgufValue::Array(vec![s("a b")]))
        );
        assert_eq!(get("tokenizer.ggml.bos_token_id"), Some(GgufValue::U32(4)));
        assert_eq!(get("tokenizer.ggml.eos_token_id"), Some(GgufValue::U32(6)));
        assert_eq!(
            get("tokenizer.ggml.add_bos_token"),
            Some(GgufValue::Bool(true))
        );
        assert_eq!(get("tokenizer.ggml.add_eos_token"), None);
        assert_eq!(
            get("tokenizer.ggml.add_space_prefix"),
            Some(GgufValue::Bool(true))
        );
        assert_eq!(get("tokenizer.chat_template"), Some(s("{{ x }}")));
        // Not byte-level BPE: refused.
        let wp = serde_json::json!({"model": {"type": "WordPiece", "vocab": {}}});
        std::fs::write(dir.path().join("tokenizer.json"), wp.to_string()).unwrap();
        let e = tokenizer_metadata(dir.path(), 8, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not supported"), "{e}");
    }
}
