//! Tokenizer tests against references nobody here wrote: llama.cpp's ids of the lee-ppl-v1 texts
//! and prompts for SmolLM2-135M-Instruct, and the chat template stored in its GGUF.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use shrink_io::tokenizer::Tokenizer;
use shrink_io::{GgufFile, IoError};

fn assets_dir() -> PathBuf {
    std::env::var_os("SHRINK_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets")))
}

fn fixtures_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/fixtures"
    ))
}

/// A file the tests need; fails (never skips) when it is missing.
fn need(path: PathBuf) -> PathBuf {
    assert!(
        path.is_file(),
        "{} is missing: run scripts/fetch-assets.sh (assets dir can be set with SHRINK_ASSETS)",
        path.display()
    );
    path
}

fn model_path() -> PathBuf {
    need(assets_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf"))
}

fn smollm() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let g = GgufFile::open(model_path()).expect("open the SmolLM2 GGUF");
        Tokenizer::from_gguf(&g).expect("build the tokenizer from GGUF metadata")
    })
}

/// The corpus documents: lines, each stripped.
fn documents() -> Vec<String> {
    let path = need(assets_dir().join("lee_background.cor"));
    let text = std::fs::read_to_string(&path).expect("corpus is UTF-8");
    let docs: Vec<String> = text.lines().map(|l| l.trim().to_string()).collect();
    assert_eq!(
        docs.len(),
        300,
        "{}: expected 300 documents",
        path.display()
    );
    docs
}

fn eval_text() -> String {
    documents()[150..300].join("\n\n")
}

fn calib_text() -> String {
    documents()[0..150].join("\n\n")
}

/// An int32 tensor of the fixture file, as u32 ids.
fn fixture_ids(name: &str) -> Vec<u32> {
    let path = need(fixtures_dir().join("smollm2/tokens.safetensors"));
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st
        .tensor(name)
        .unwrap_or_else(|e| panic!("{}: no tensor {name}: {e}", path.display()));
    assert_eq!(t.dtype(), safetensors::Dtype::I32, "{name} should be int32");
    t.data()
        .chunks_exact(4)
        .map(|c| {
            let v = i32::from_le_bytes(c.try_into().unwrap());
            u32::try_from(v).expect("ids are non-negative")
        })
        .collect()
}

fn fixture_json(name: &str) -> serde_json::Value {
    let path = need(fixtures_dir().join("smollm2").join(name));
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

/// Compare id lists; on a mismatch say where, with the tokens around it.
fn assert_ids_equal(tok: &Tokenizer, what: &str, got: &[u32], want: &[u32]) {
    if got == want {
        return;
    }
    let pos = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let lo = pos.saturating_sub(5);
    let show = |ids: &[u32]| {
        ids.iter()
            .map(|&id| format!("{id}:{:?}", tok.id_to_token(id).unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(" ")
    };
    panic!(
        "{what}: {} ids, expected {}; first difference at position {pos}\n  got:      {}\n  expected: {}\n  text there: {:?}",
        got.len(),
        want.len(),
        show(&got[lo..(pos + 6).min(got.len())]),
        show(&want[lo..(pos + 6).min(want.len())]),
        tok.decode(&want[lo..(pos + 6).min(want.len())]).unwrap_or_default(),
    );
}

/// FIPS 180-4 SHA-256, enough to check the protocol texts against the fixture's digests.
fn sha256_hex(data: &[u8]) -> String {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 64];
        for i in 0..16 {
            w[i] = u32::from_be_bytes(block[4 * i..4 * i + 4].try_into().unwrap());
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }
    h.iter().map(|x| format!("{x:08x}")).collect()
}

#[test]
fn sha256_self_check() {
    assert_eq!(
        sha256_hex(b""),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(
        sha256_hex(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn protocol_texts_match_fixture_digests() {
    let meta = fixture_json("lee_ppl_v1.json");
    assert_eq!(
        sha256_hex(eval_text().as_bytes()),
        meta["eval_text_sha256"].as_str().unwrap(),
        "evaluation text"
    );
    assert_eq!(
        sha256_hex(calib_text().as_bytes()),
        meta["calib_text_sha256"].as_str().unwrap(),
        "calibration text"
    );
}

#[test]
fn smollm2_metadata() {
    let tok = smollm();
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.eos_id(), Some(2));
    assert!(!tok.adds_bos(), "SmolLM2's GGUF says add_bos_token = false");
    // <|endoftext|> (0) and <|im_end|> (2) both end generation.
    assert_eq!(tok.eos_ids(), vec![0, 2]);
    assert_eq!(tok.id_to_token(1).as_deref(), Some("<|im_start|>"));
    assert_eq!(tok.id_to_token(3575).as_deref(), Some("\u{120}capital"));
    assert_eq!(tok.id_to_token(49152), None);
    // No BOS even with add_special, since the model does not ask for it.
    assert_eq!(
        tok.encode("The capital", true).unwrap(),
        tok.encode("The capital", false).unwrap()
    );
}

#[test]
fn eval_ids_match_llama_cpp() {
    let tok = smollm();
    let text = eval_text();
    let want = fixture_ids("eval_ids");
    assert_eq!(want.len(), 37891);
    let t0 = Instant::now();
    let got = tok.encode(&text, false).unwrap();
    let dt = t0.elapsed();
    eprintln!(
        "encoded the evaluation text ({} bytes) into {} tokens in {:.1} ms",
        text.len(),
        got.len(),
        dt.as_secs_f64() * 1e3
    );
    assert_ids_equal(tok, "eval_ids", &got, &want);
    // Round trip.
    assert!(
        tok.decode(&got).unwrap() == text,
        "decode(encode(eval text)) differs from the text"
    );
}

#[test]
fn calib_ids_match_llama_cpp() {
    let tok = smollm();
    let text = calib_text();
    let want = fixture_ids("calib_ids");
    let got = tok.encode(&text, false).unwrap();
    assert_ids_equal(tok, "calib_ids", &got, &want);
    assert!(
        tok.decode(&got).unwrap() == text,
        "decode(encode(calib text)) differs from the text"
    );
}

#[test]
fn prompt_ids_match_llama_cpp() {
    let tok = smollm();
    let prompts = fixture_json("prompts.json");
    let prompts = prompts["prompts"].as_array().expect("prompts list");
    assert!(!prompts.is_empty());
    for p in prompts {
        let key = p["key"].as_str().unwrap_or("?");
        let text = p["text"].as_str().unwrap();
        let want: Vec<u32> = p["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let got = tok.encode(text, false).unwrap();
        assert_ids_equal(tok, key, &got, &want);
        if let Some(tokens) = p["tokens"].as_array() {
            let names: Vec<String> = got.iter().map(|&id| tok.id_to_token(id).unwrap()).collect();
            let want_names: Vec<&str> = tokens.iter().map(|t| t.as_str().unwrap()).collect();
            assert_eq!(names, want_names, "{key}: token strings");
        }
        assert_eq!(tok.decode(&got).unwrap(), text, "{key}: round trip");
    }
}

#[test]
fn digits_are_split_one_by_one() {
    let tok = smollm();
    let ids = tok.encode("In 2024, 12345 people", false).unwrap();
    let pieces: Vec<String> = ids.iter().map(|&id| tok.decode(&[id]).unwrap()).collect();
    assert_eq!(
        pieces,
        ["In", " ", "2", "0", "2", "4", ",", " ", "1", "2", "3", "4", "5", " people"]
    );
}

#[test]
fn special_tokens_in_text_are_parsed() {
    let tok = smollm();
    let ids = tok.encode("<|im_start|>user\nHi<|im_end|>", false).unwrap();
    assert_eq!(ids.first(), Some(&1));
    assert_eq!(ids.last(), Some(&2));
    assert_eq!(ids.iter().filter(|&&id| id == 1 || id == 2).count(), 2);
}

#[test]
fn tricky_strings_round_trip() {
    let tok = smollm();
    let cases = [
        "",
        " ",
        "12345",
        "a  b   c    d",
        "   leading and trailing   ",
        "line one\nline two\n\n\nline three\r\n",
        "\ttabs\tand\u{a0}non-breaking\u{3000}spaces",
        "naïve café, déjà vu — “quotes” ‘single’ …",
        "日本語のテキスト、中文文本。한국어",
        "emoji 😀👍🏽 family 👨‍👩‍👧‍👦 flags 🇫🇷",
        "math ∑ ∫ √ π ≈ 3.14159; x² + y³",
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
        "<|endoftext|><|endoftext|>",
        "don't won't it's I'm you're we've they'll he'd",
        "U+FFFD \u{fffd} replacement",
        "code: fn main() { println!(\"{}\", 1 + 2); } // ok",
    ];
    for text in cases {
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(
            tok.decode(&ids).unwrap(),
            text,
            "round trip of {text:?} via {ids:?}"
        );
    }
}

#[test]
fn decode_rejects_unknown_ids() {
    let tok = smollm();
    let err = tok.decode(&[5, 49152]).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("49152") && msg.contains("SmolLM2-135M-Instruct.Q4_1.gguf"),
        "{msg}"
    );
}

#[test]
fn decode_stream_matches_decode() {
    let tok = smollm();
    let text = "Emoji 😀 and 日本語, digits 12345.\n<|im_end|>";
    let ids = tok.encode(text, false).unwrap();
    let mut stream = tok.decode_stream();
    let mut out = String::new();
    let mut held_back = 0;
    for &id in &ids {
        match stream.step(id).unwrap() {
            Some(s) => {
                assert!(
                    !s.contains('\u{fffd}'),
                    "stream printed a partial character: {s:?}"
                );
                out.push_str(&s);
            }
            None => held_back += 1,
        }
    }
    assert_eq!(out, text);
    // 😀 is four bytes spread over several byte-level tokens.
    assert!(
        held_back > 0,
        "expected some tokens to hold back incomplete characters"
    );
    assert!(stream.step(u32::MAX).is_err());
}

#[test]
fn decode_stream_over_eval_text() {
    let tok = smollm();
    let ids = fixture_ids("eval_ids");
    let mut stream = tok.decode_stream();
    let mut out = String::new();
    for &id in &ids {
        if let Some(s) = stream.step(id).unwrap() {
            out.push_str(&s);
        }
    }
    assert!(
        out == eval_text(),
        "streamed text differs from the evaluation text"
    );
}

#[test]
fn chat_template_renders_smollm2_shape() {
    let tok = smollm();
    let template = tok
        .chat_template()
        .expect("SmolLM2's GGUF carries a chat template");
    assert!(template.contains("<|im_start|>"));
    let out = tok.apply_chat_template(&[("user", "Hello")], true).unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    );
    // With a system message of one's own, no default system prompt.
    let out = tok
        .apply_chat_template(&[("system", "Be brief."), ("user", "Hi")], false)
        .unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    );
    // The rendered prompt tokenizes with its special tokens whole.
    let ids = tok.encode(&out, false).unwrap();
    assert_eq!(ids.iter().filter(|&&id| id == 1).count(), 2);
    assert_eq!(ids.iter().filter(|&&id| id == 2).count(), 2);
}

// ---------------------------------------------------------------------------------------------
// Hand-written GGUF files: small vocabularies and bad metadata.

enum Kv<'a> {
    Str(&'a str),
    U32(u32),
    Bool(bool),
    Strs(Vec<&'a str>),
    I32s(Vec<i32>),
}

/// Write a GGUF v3 file with no tensors and the given metadata.
fn write_gguf(dir: &Path, name: &str, kvs: &[(&str, Kv)]) -> PathBuf {
    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    let mut out = Vec::new();
    out.extend_from_slice(b"GGUF");
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes());
    out.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
    for (key, v) in kvs {
        string(&mut out, key);
        match v {
            Kv::Str(s) => {
                out.extend_from_slice(&8u32.to_le_bytes());
                string(&mut out, s);
            }
            Kv::U32(x) => {
                out.extend_from_slice(&4u32.to_le_bytes());
                out.extend_from_slice(&x.to_le_bytes());
            }
            Kv::Bool(b) => {
                out.extend_from_slice(&7u32.to_le_bytes());
                out.push(*b as u8);
            }
            Kv::Strs(items) => {
                out.extend_from_slice(&9u32.to_le_bytes());
                out.extend_from_slice(&8u32.to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for s in items {
                    string(&mut out, s);
                }
            }
            Kv::I32s(items) => {
                out.extend_from_slice(&9u32.to_le_bytes());
                out.extend_from_slice(&5u32.to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for x in items {
                    out.extend_from_slice(&x.to_le_bytes());
                }
            }
        }
    }
    let path = dir.join(name);
    std::fs::write(&path, out).unwrap();
    path
}

/// A tiny byte-level vocabulary: "<s>", "</s>" (control), "<tool>" (user-defined), letters, Ġ.
fn tiny_kvs<'a>() -> Vec<(&'a str, Kv<'a>)> {
    vec![
        ("tokenizer.ggml.model", Kv::Str("gpt2")),
        ("tokenizer.ggml.pre", Kv::Str("smollm")),
        ("tokenizer.ggml.tokens", Kv::Strs(vec!["<s>", "</s>", "<tool>", "a", "b", "ab", "\u{120}", "\u{120}ab", "1", "2"])),
        ("tokenizer.ggml.token_type", Kv::I32s(vec![3, 3, 4, 1, 1, 1, 1, 1, 1, 1])),
        ("tokenizer.ggml.merges", Kv::Strs(vec!["a b", "\u{120} ab"])),
        ("tokenizer.ggml.bos_token_id", Kv::U32(0)),
        ("tokenizer.ggml.eos_token_id", Kv::U32(1)),
        ("tokenizer.ggml.add_bos_token", Kv::Bool(true)),
        ("tokenizer.chat_template", Kv::Str("{{ bos_token }}{% for m in messages %}[{{ m['role'] | upper }}] {{ m['content'].strip() }}{% endfor %}{% if add_generation_prompt %}[A]{% endif %}")),
    ]
}

fn tiny_with(
    change: impl FnOnce(&mut Vec<(&'static str, Kv<'static>)>),
) -> (tempfile::TempDir, PathBuf, Result<Tokenizer, IoError>) {
    let dir = tempfile::tempdir().unwrap();
    let mut kvs = tiny_kvs();
    change(&mut kvs);
    let path = write_gguf(dir.path(), "tiny.gguf", &kvs);
    let g = GgufFile::open(&path).expect("hand-written GGUF opens");
    let tok = Tokenizer::from_gguf(&g);
    (dir, path, tok)
}

fn set(kvs: &mut Vec<(&'static str, Kv<'static>)>, key: &'static str, v: Option<Kv<'static>>) {
    kvs.retain(|(k, _)| *k != key);
    if let Some(v) = v {
        kvs.push((key, v));
    }
}

/// The error of building a tiny tokenizer with `key` changed: it names the file and says `what`.
fn tiny_error(key: &'static str, v: Option<Kv<'static>>, what: &[&str]) {
    let (_dir, path, tok) = tiny_with(|kvs| set(kvs, key, v));
    let err = tok.expect_err("bad metadata must be an error");
    assert!(matches!(err, IoError::Tokenizer { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "error should name the file: {msg}"
    );
    for w in what {
        assert!(msg.contains(w), "error should mention {w:?}: {msg}");
    }
}

#[test]
fn tiny_gguf_tokenizer_works() {
    let (_dir, _path, tok) = tiny_with(|_| {});
    let tok = tok.unwrap();
    assert_eq!(tok.vocab_size(), 10);
    assert_eq!(tok.encode("ab ab", false).unwrap(), vec![5, 7]);
    assert_eq!(
        tok.encode("ab ab", true).unwrap(),
        vec![0, 5, 7],
        "add_bos_token = true prepends BOS"
    );
    // Digits alone; control and user-defined tokens whole.
    assert_eq!(
        tok.encode("12<tool>a</s>", false).unwrap(),
        vec![8, 9, 2, 3, 1]
    );
    assert_eq!(tok.decode(&[0, 5, 7, 2, 1]).unwrap(), "<s>ab ab<tool></s>");
    assert_eq!(tok.eos_ids(), vec![1]);
    let out = tok
        .apply_chat_template(&[("user", "  hi  ")], true)
        .unwrap();
    assert_eq!(out, "<s>[USER] hi[A]");
}

#[test]
fn every_supported_pre_tokenizer_builds() {
    let names = [
        "default",
        "smollm",
        "starcoder",
        "refact",
        "gpt-2",
        "mpt",
        "olmo",
        "llama3",
        "llama-bpe",
        "dbrx",
        "qwen2",
        "stablelm2",
        "falcon",
        "poro-chat",
    ];
    for name in names {
        let (_dir, _path, tok) =
            tiny_with(|kvs| set(kvs, "tokenizer.ggml.pre", Some(Kv::Str(name))));
        let tok = tok.unwrap_or_else(|e| panic!("pre {name}: {e}"));
        assert_eq!(
            tok.encode("ab ab", false).unwrap(),
            vec![5, 7],
            "pre {name}"
        );
    }
    // Without tokenizer.ggml.pre, llama.cpp uses its "default" rule.
    let (_dir, _path, tok) = tiny_with(|kvs| set(kvs, "tokenizer.ggml.pre", None));
    assert_eq!(tok.unwrap().encode("ab ab", false).unwrap(), vec![5, 7]);
}

#[test]
fn bad_metadata_is_a_clear_error() {
    tiny_error(
        "tokenizer.ggml.tokens",
        None,
        &["tokenizer.ggml.tokens", "missing"],
    );
    tiny_error(
        "tokenizer.ggml.merges",
        Some(Kv::Strs(vec!["ab"])),
        &["tokenizer.ggml.merges[0]", "\"ab\""],
    );
    tiny_error(
        "tokenizer.ggml.merges",
        Some(Kv::Strs(vec!["a c"])),
        &["tokenizer.ggml.merges[0]", "\"c\""],
    );
    tiny_error(
        "tokenizer.ggml.merges",
        None,
        &["tokenizer.ggml.merges", "missing"],
    );
    tiny_error(
        "tokenizer.ggml.token_type",
        Some(Kv::I32s(vec![1, 1])),
        &["token_type", "2 entries", "10"],
    );
    tiny_error(
        "tokenizer.ggml.model",
        Some(Kv::Str("bert")),
        &["\"bert\"", "gpt2"],
    );
    tiny_error("tokenizer.ggml.model", None, &["tokenizer.ggml.model"]);
    tiny_error(
        "tokenizer.ggml.pre",
        Some(Kv::Str("nonsense")),
        &["\"nonsense\"", "smollm", "llama3", "qwen2"],
    );
    tiny_error(
        "tokenizer.ggml.bos_token_id",
        Some(Kv::U32(99)),
        &["bos_token_id", "99"],
    );
    tiny_error(
        "tokenizer.ggml.tokens",
        Some(Kv::U32(7)),
        &["tokenizer.ggml.tokens", "array"],
    );
    tiny_error(
        "tokenizer.ggml.tokens",
        Some(Kv::Strs(vec![
            "<s>",
            "</s>",
            "<tool>",
            "a",
            "b",
            "ab",
            "\u{120}",
            "\u{120}ab",
            "1",
            "a",
        ])),
        &["twice"],
    );
}

#[test]
fn tokenizer_json_with_config() {
    let dir = tempfile::tempdir().unwrap();
    let tokenizer_json = r#"{
      "version": "1.0",
      "truncation": null,
      "padding": null,
      "added_tokens": [
        {"id": 0, "content": "<|im_start|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
        {"id": 1, "content": "<|im_end|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
      ],
      "normalizer": null,
      "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
      "post_processor": null,
      "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
      "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                "vocab": {"<|im_start|>": 0, "<|im_end|>": 1, "h": 2, "i": 3, "hi": 4, "Ġ": 5, "Ġhi": 6, "\n": 7, "Ċ": 8},
                "merges": ["h i", "Ġ hi"]}
    }"#;
    let config = r#"{"eos_token": {"content": "<|im_end|>"}, "bos_token": null,
        "chat_template": "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"}"#;
    std::fs::write(dir.path().join("tokenizer.json"), tokenizer_json).unwrap();
    std::fs::write(dir.path().join("tokenizer_config.json"), config).unwrap();
    let tok = Tokenizer::from_file(&dir.path().join("tokenizer.json")).unwrap();
    assert_eq!(tok.eos_id(), Some(1));
    assert_eq!(tok.bos_id(), None);
    assert_eq!(tok.eos_ids(), vec![1]);
    let ids = tok.encode("<|im_start|>hi hi\n<|im_end|>", true).unwrap();
    assert_eq!(ids, vec![0, 4, 6, 8, 1]);
    assert_eq!(tok.decode(&ids).unwrap(), "<|im_start|>hi hi\n<|im_end|>");
    let mut stream = tok.decode_stream();
    let streamed: String = ids
        .iter()
        .filter_map(|&id| stream.step(id).unwrap())
        .collect();
    assert_eq!(streamed, "<|im_start|>hi hi\n<|im_end|>");
    let out = tok.apply_chat_template(&[("user", "hi")], true).unwrap();
    assert_eq!(
        out,
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    );

    let missing = dir.path().join("nope.json");
    let err = Tokenizer::from_file(&missing).unwrap_err();
    assert!(err.to_string().contains("nope.json"), "{err}");
}
