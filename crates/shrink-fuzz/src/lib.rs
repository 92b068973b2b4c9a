//! Fuzz harnesses of shrink: one function per reader of untrusted bytes.
//!
//! Each `pub fn TARGET(data: &[u8])` writes `data` into files of a scratch directory and drives
//! shrink's public readers over them the way the commands do (`inspect`, `eval`, `generate`,
//! `export`, `quantize --imatrix`, `eval --adapter`), ignoring the errors they return. An error
//! is the right answer to a bad file; a panic, an abort, a hang or a huge allocation is a bug.
//!
//! - [`gguf`]: the bytes as a `.gguf` model;
//! - [`safetensors`]: the bytes as `model.safetensors` beside tiny-llama's config.json
//!   (`vocab_size` 64);
//! - [`safetensors_index`]: the bytes as `model.safetensors.index.json` over two fixed shards;
//! - [`config`]: the bytes as `config.json` beside a tiny fixture's weights (the architecture's,
//!   chosen by the `model_type` the bytes name);
//! - [`tokenizer_json`]: the bytes as `tokenizer.json` (also turned into GGUF metadata);
//! - [`chat_template`]: the bytes as the chat template of a fixed tokenizer;
//! - [`imatrix`]: the bytes as an importance matrix (legacy `.dat` or GGUF);
//! - [`quantized_layouts`]: the first byte picks a quantized layout (GPTQ, AWQ, bitsandbytes,
//!   compressed-tensors, HQQ, sparse), the rest is the `model.safetensors`;
//! - [`peft`]: a PEFT LoRA adapter directory (config, NUL, safetensors), then run over tiny-llama.
//!
//! The fixed files come from the fixtures (`../shared/fixtures` beside the repository, or
//! `$SHRINK_FIXTURES`) and are written once per thread. Files live in a per-thread directory
//! under `/dev/shm` (else the temporary directory), removed when the thread ends; directories
//! left by processes that no longer exist are removed when a new one is made.
//!
//! The harness itself allocates nothing in proportion to what a file claims: it reads tensors
//! one by one (only those of at most [`SMALL`] elements directly), and everything else is the
//! readers' own doing.
//!
//! With `SHRINK_FUZZ_TRACE` set, each stage prints `ok` or its error: how far an input got.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use shrink_io::checkpoint::StoredDtype;
use shrink_io::tokenizer::Tokenizer;
use shrink_io::Checkpoint;
use shrink_models::footprint::{module_sizes, Footprint};
use shrink_models::gguf_arch::GgufArch;
use shrink_models::sparsity::Sparsity;
use shrink_models::{Architecture, BertClassifier, Model, ModelConfig};

/// Tensors of at most this many elements are read directly by every target.
pub const SMALL: u64 = 1 << 20;

/// A harness: drives the readers over one input.
pub type Harness = fn(&[u8]);

/// The targets, by name, as the fuzz binaries and the regression test call them.
pub const TARGETS: &[(&str, Harness)] = &[
    ("gguf", gguf),
    ("safetensors", safetensors),
    ("safetensors_index", safetensors_index),
    ("config", config),
    ("tokenizer_json", tokenizer_json),
    ("chat_template", chat_template),
    ("imatrix", imatrix),
    ("quantized_layouts", quantized_layouts),
    ("peft", peft),
];

// ---------------------------------------------------------------------------------------------
// Scratch directory and fixed files
// ---------------------------------------------------------------------------------------------

/// The shared fixtures directory.
pub fn fixtures() -> PathBuf {
    match std::env::var_os("SHRINK_FIXTURES") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures"),
    }
}

/// Read a fixture file, or stop with a message saying where the fixtures are expected (a setup
/// error, not a finding: every input then "crashes", which AFL's dry run reports at once).
fn fixture(rel: &str) -> Vec<u8> {
    let p = fixtures().join(rel);
    fs::read(&p).unwrap_or_else(|e| {
        panic!(
            "shrink-fuzz: cannot read fixture {} ({e}); set SHRINK_FIXTURES to the shared \
             fixtures directory",
            p.display()
        )
    })
}

/// A per-thread scratch directory, removed when the thread ends.
struct Scratch {
    dir: PathBuf,
    /// Sub-directories whose fixed files are written.
    ready: HashSet<String>,
}

impl Scratch {
    fn new() -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        remove_stale(&base);
        let pid = std::process::id();
        let dir = base.join(format!(
            "shrink-fuzz-{pid}-{}",
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("shrink-fuzz: cannot create {}: {e}", dir.display()));
        Scratch {
            dir,
            ready: HashSet::new(),
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Remove `shrink-fuzz-PID-N` directories of processes that no longer run (Linux only: other
/// systems keep them).
fn remove_stale(base: &Path) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("shrink-fuzz-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

thread_local! {
    static SCRATCH: RefCell<Option<Scratch>> = const { RefCell::new(None) };
}

/// The directory `name` in this thread's scratch directory, with `init` run on it the first time.
fn workdir(name: &str, init: impl FnOnce(&Path)) -> PathBuf {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        let s = s.get_or_insert_with(Scratch::new);
        let dir = s.dir.join(name);
        if !s.ready.contains(name) {
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir)
                .unwrap_or_else(|e| panic!("shrink-fuzz: cannot create {}: {e}", dir.display()));
            init(&dir);
            s.ready.insert(name.to_string());
        }
        dir
    })
}

/// Write a fixed file of the harness (a failure is a setup error).
fn put(path: &Path, bytes: impl AsRef<[u8]>) {
    fs::write(path, bytes)
        .unwrap_or_else(|e| panic!("shrink-fuzz: cannot write {}: {e}", path.display()));
}

/// Write the input's file. Any stale file of the same name is replaced.
fn put_input(path: &Path, bytes: &[u8]) {
    put(path, bytes)
}

/// Whether `SHRINK_FUZZ_TRACE` is set: then [`seen`] prints how far each input got.
fn tracing() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("SHRINK_FUZZ_TRACE").is_some())
}

/// `r` as an option; with `SHRINK_FUZZ_TRACE` set, the stage and its error (or `ok`) printed.
fn seen<T, E: std::fmt::Display>(stage: &str, r: std::result::Result<T, E>) -> Option<T> {
    match r {
        Ok(v) => {
            if tracing() {
                eprintln!("  {stage}: ok");
            }
            Some(v)
        }
        Err(e) => {
            if tracing() {
                eprintln!("  {stage}: {e}");
            }
            None
        }
    }
}

/// `data` split at its first NUL byte: (before, after); no NUL gives (data, []).
fn split_nul(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

// ---------------------------------------------------------------------------------------------
// What the commands do with a checkpoint
// ---------------------------------------------------------------------------------------------

/// Drive every reader the commands use over the checkpoint at `path`: open (validation),
/// `inspect` (footprint, modules, sparsity: every weight decoded), the configuration, the
/// export mapping, loading and one forward step of the model (eval/generate), the tokenizer.
pub fn drive_checkpoint(path: &Path) {
    let Some(ckpt) = seen("open", Checkpoint::open(path)) else {
        return;
    };
    let tensors = ckpt.tensors();

    // Every stored tensor, as inspect --tensors lists it and readers decode it.
    for t in &tensors {
        let _ = t.dtype.name();
        let _ = ckpt.has(&t.name);
        if t.elements() <= SMALL {
            let _ = ckpt.read_f32(&t.name);
        }
    }
    // Weights stored in a quantized or sparse layout, by module.
    if let Checkpoint::Hf(h) = &ckpt {
        let modules: BTreeSet<String> = tensors.iter().filter_map(|t| module_of(&t.name)).collect();
        for m in modules {
            let w = format!("{m}.weight");
            let _ = ckpt.has(&w);
            let small = match h.quantized(&w) {
                Ok(Some(q)) => {
                    let _ = q.stored_bytes();
                    let (rows, cols) = q.shape();
                    let small = (rows as u64).saturating_mul(cols as u64) <= SMALL;
                    if small {
                        let _ = q.dequantize();
                    }
                    small
                }
                // Dense (read above when small) or sparse (decoded by read_f32).
                Ok(None) => !h.weights.tensors.contains_key(&w),
                Err(_) => true,
            };
            if small {
                let _ = ckpt.read_f32(&w);
            }
        }
    }

    // inspect: footprint, modules, sparsity.
    let f = Footprint::of(&ckpt);
    let _ = f.bits_per_weight();
    let _ = f.float32_bytes();
    let _ = f.to_json(path, true, true);
    let _ = module_sizes(&f.tensors);
    if let Some(s) = seen("sparsity", Sparsity::of(&ckpt)) {
        let _ = s.overall();
        let _ = s.linear_weights();
        let _ = s.to_json();
    }

    // The architecture: configuration, export mapping, load and run.
    match seen("architecture", Architecture::from_checkpoint(&ckpt)) {
        Some(Architecture::Decoder(cfg)) => drive_decoder(&ckpt, &cfg, &tensors),
        Some(Architecture::Encoder(cfg)) => {
            let _ = cfg.to_hf_json();
            let arch = Architecture::Encoder(cfg.clone());
            let _ = arch.block_linears();
            let w = arch.weight_loader(&ckpt);
            if let Some(m) = seen("load classifier", BertClassifier::load(cfg, &w)) {
                let _ = seen("classify", m.forward(&[0, 1]));
            }
        }
        None => {
            let _ = ModelConfig::from_checkpoint(&ckpt);
        }
    }

    // The tokenizer, as every text command opens it.
    if let Some(tok) = seen("tokenizer", Tokenizer::for_checkpoint(&ckpt)) {
        let roundtrip = matches!(ckpt, Checkpoint::Gguf(_));
        drive_tokenizer(
            &tok,
            roundtrip
                .then(|| path.with_extension("hf-tokenizer"))
                .as_deref(),
        );
    }
}

/// The module a stored tensor belongs to (`a.b.q_proj` of `a.b.q_proj.qweight`), for the
/// suffixes of the quantized and sparse layouts.
fn module_of(name: &str) -> Option<String> {
    const SUFFIXES: &[&str] = &[
        ".weight",
        ".qweight",
        ".qzeros",
        ".scales",
        ".g_idx",
        ".weight_packed",
        ".weight_scale",
        ".weight_zero_point",
        ".weight_shape",
        ".SCB",
        ".W_q",
        ".scale",
        ".zero",
        ".compressed",
        ".bitmask",
        ".row_offsets",
        ".shape",
    ];
    // bitsandbytes 4-bit: `<module>.weight.absmax`, `<module>.weight.quant_state...`.
    if let Some(i) = name.find(".weight.") {
        return Some(name[..i].to_string());
    }
    SUFFIXES
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .map(str::to_string)
}

/// A causal LM's configuration: its JSON, weight list, export mapping, load and one step.
fn drive_decoder(ckpt: &Checkpoint, cfg: &ModelConfig, tensors: &[shrink_io::TensorEntry]) {
    let _ = cfg.family();
    let _ = cfg.vocab_size();
    let _ = cfg.num_layers();
    let _ = cfg.max_context();
    let _ = cfg.to_hf_json("float32", Some(1), Some(2));
    let _ = shrink_models::decoder_linears(cfg);

    // export --to gguf: the GGUF name and row transform of every HF tensor.
    if let Checkpoint::Hf(h) = ckpt {
        if let Ok(arch) = GgufArch::of(cfg, &h.dir) {
            let _ = arch.hparams(1);
            let _ = arch.heads();
            let _ = arch.vocab_size();
            for t in tensors {
                if GgufArch::skipped(&t.name) {
                    continue;
                }
                let Some((_, transform)) = arch.tensor(&t.name) else {
                    continue;
                };
                let _ = transform.shape(&t.shape);
                if t.elements() <= SMALL && matches!(t.dtype, StoredDtype::Float(_)) {
                    if let Ok((v, shape)) = ckpt.read_f32(&t.name) {
                        let _ = transform.apply(&t.name, v, &shape);
                    }
                }
            }
        }
    }

    // eval / generate: load (quantized weights kept packed) and one step.
    if let Some(m) = seen("load", Model::load(ckpt)) {
        let _ = m.bytes_per_token();
        let _ = m.config();
        let ids: &[u32] = if cfg.vocab_size() > 1 { &[0, 1] } else { &[0] };
        let _ = seen("forward", m.last_logits(ids, None));
    }
}

/// What the text commands do with a tokenizer: encode, decode (whole and streamed), special
/// ids, the chat template; with `hf_dir`, write its Hugging Face files there and read them
/// back (`convert` of a GGUF).
pub fn drive_tokenizer(tok: &Tokenizer, hf_dir: Option<&Path>) {
    let text = "Hello, world! 123 <|im_start|>user\nthé naïve 🦀 \t  <|im_end|>";
    let _ = tok.vocab_size();
    let _ = (tok.bos_id(), tok.eos_id(), tok.eos_ids(), tok.adds_bos());
    for special in [true, false] {
        if let Ok(ids) = tok.encode(text, special) {
            let _ = tok.decode(&ids);
            let mut stream = tok.decode_stream();
            for &id in &ids {
                if stream.step(id).is_err() {
                    break;
                }
            }
            for &id in ids.iter().take(8) {
                let _ = tok.is_eos(id);
                if let Some(t) = tok.id_to_token(id) {
                    let _ = tok.token_to_id(&t);
                }
            }
        }
    }
    // Ids outside the vocabulary must be refused.
    let n = tok.vocab_size() as u32;
    let _ = tok.decode(&[n, u32::MAX]);
    let mut stream = tok.decode_stream();
    let _ = stream.step(n);
    drive_chat_template(tok);
    if let Some(dir) = hf_dir {
        if let Ok(files) = tok.hf_files() {
            let _ = fs::remove_dir_all(dir);
            if fs::create_dir_all(dir).is_ok() {
                for (name, content) in &files {
                    put(&dir.join(name), content);
                }
                if let Ok(t) = Tokenizer::from_file(&dir.join("tokenizer.json")) {
                    let _ = t.encode(text, true);
                }
            }
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// `generate --chat`: the template over a conversation, then the result encoded.
fn drive_chat_template(tok: &Tokenizer) {
    if tok.chat_template().is_none() {
        return;
    }
    let conv = [
        ("system", "You are terse."),
        ("user", "Name three fruits. <b>{{ not code }}</b>"),
    ];
    if let Some(text) = seen("chat template", tok.apply_chat_template(&conv, true)) {
        let _ = tok.encode(&text, true);
    }
    let _ = tok.apply_chat_template(&conv[1..], false);
}

// ---------------------------------------------------------------------------------------------
// Targets
// ---------------------------------------------------------------------------------------------

/// The bytes as a `.gguf` model: open, tensors, config, export mapping, load, tokenizer.
pub fn gguf(data: &[u8]) {
    let dir = workdir("gguf", |_| {});
    let p = dir.join("model.gguf");
    put_input(&p, data);
    drive_checkpoint(&p);
}

/// tiny-llama's config.json.
fn llama_config() -> Vec<u8> {
    fixture("tiny-llama/config.json")
}

/// tiny-llama's config.json with `vocab_size` 64: seeds of the whole model (the embedding cut
/// to 64 rows) then fit in AFL's preferred sizes.
fn llama_config_v64() -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(&llama_config())
        .unwrap_or_else(|e| panic!("shrink-fuzz: tiny-llama's config.json: {e}"));
    v["vocab_size"] = 64.into();
    v.to_string().into_bytes()
}

/// The bytes as `model.safetensors` beside tiny-llama's config.json (`vocab_size` 64).
pub fn safetensors(data: &[u8]) {
    let dir = workdir("safetensors", |d| {
        put(&d.join("config.json"), llama_config_v64())
    });
    put_input(&dir.join("model.safetensors"), data);
    drive_checkpoint(&dir);
}

/// The names of tiny-llama's two shards the index seeds refer to.
pub const SHARDS: [&str; 2] = [
    "model-00001-of-00002.safetensors",
    "model-00002-of-00002.safetensors",
];

/// tiny-llama's tensors split in two shards by name (the first half of the sorted names, then
/// the rest).
fn write_shards(dir: &Path) {
    let bytes = fixture("tiny-llama/model.safetensors");
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .unwrap_or_else(|e| panic!("shrink-fuzz: tiny-llama's safetensors: {e}"));
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    let half = names.len() / 2;
    for (i, part) in [&names[..half], &names[half..]].into_iter().enumerate() {
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = part
            .iter()
            .map(|n| (n.clone(), st.tensor(n).expect("listed tensor")))
            .collect();
        let out = safetensors::serialize(views, None).expect("serialise a shard");
        put(&dir.join(SHARDS[i]), out);
    }
}

/// The bytes as `model.safetensors.index.json` over two fixed shards of tiny-llama.
pub fn safetensors_index(data: &[u8]) {
    let dir = workdir("safetensors_index", |d| {
        put(&d.join("config.json"), llama_config());
        write_shards(d);
    });
    put_input(&dir.join("model.safetensors.index.json"), data);
    if let Ok(m) = shrink_io::safetensors::SafetensorsModel::open_dir(&dir) {
        for t in m.tensors.values() {
            let _ = m.bytes(t).len();
            let _ = m.path_of(t);
        }
    }
    drive_checkpoint(&dir);
}

/// The fixture whose weights sit beside a fuzzed config.json: the first architecture the bytes
/// name (so that each architecture's seed keeps its weights while it is mutated).
fn config_arch(data: &[u8]) -> &'static str {
    const ARCHS: &[(&str, &str)] = &[
        ("distilbert", "tiny-distilbert_cls"),
        ("bert", "tiny-bert_cls"),
        ("gpt_neox", "tiny-gpt_neox"),
        ("gpt2", "tiny-gpt2"),
        ("qwen2", "tiny-qwen2"),
        ("mistral", "tiny-mistral"),
    ];
    ARCHS
        .iter()
        .find(|(k, _)| data.windows(k.len()).any(|w| w == k.as_bytes()))
        .map_or("tiny-llama", |(_, d)| d)
}

/// The bytes as `config.json` beside the weights of the fixture of the architecture they name
/// (tiny-llama when none): configuration, inspect, export mapping, load and one step.
pub fn config(data: &[u8]) {
    let arch = config_arch(data);
    let dir = workdir(&format!("config-{arch}"), |d| {
        put(
            &d.join("model.safetensors"),
            fixture(&format!("{arch}/model.safetensors")),
        )
    });
    put_input(&dir.join("config.json"), data);
    drive_checkpoint(&dir);
}

/// A byte-level BPE of 256 byte tokens, a few merges and the ChatML special tokens.
fn small_tokenizer_json() -> String {
    let byte_char = shrink_io::tokenizer::byte_chars();
    let mut vocab = serde_json::Map::new();
    for (i, c) in byte_char.iter().enumerate() {
        vocab.insert(c.to_string(), i.into());
    }
    let mut merges = Vec::new();
    for (a, b) in [("t", "h"), ("th", "e"), ("Ġ", "t"), ("i", "n"), ("e", "r")] {
        vocab.insert(format!("{a}{b}"), vocab.len().into());
        merges.push(format!("{a} {b}"));
    }
    let mut added = Vec::new();
    for s in ["<|im_start|>", "<|im_end|>"] {
        added.push(
            serde_json::json!({"id": vocab.len(), "content": s, "single_word": false,
            "lstrip": false, "rstrip": false, "normalized": false, "special": true}),
        );
        vocab.insert(s.to_string(), vocab.len().into());
    }
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                          "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                    "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "vocab": vocab, "merges": merges}
    })
    .to_string()
}

/// A ChatML template.
const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + \
    message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}\
    {{ '<|im_start|>assistant\\n' }}{% endif %}";

/// tokenizer_config.json naming the ChatML tokens, with `template` as the chat template.
fn tokenizer_config(template: &str) -> String {
    serde_json::json!({
        "bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "add_bos_token": false,
        "chat_template": template,
    })
    .to_string()
}

/// The bytes as `tokenizer.json` (beside a ChatML tokenizer_config.json): read, encode, decode,
/// chat template; then as the export builds GGUF metadata from it, written as a GGUF and read
/// back as the GGUF's tokenizer.
pub fn tokenizer_json(data: &[u8]) {
    let dir = workdir("tokenizer_json", |d| {
        put(&d.join("tokenizer_config.json"), tokenizer_config(CHATML))
    });
    let path = dir.join("tokenizer.json");
    put_input(&path, data);
    let Some(tok) = seen("tokenizer.json", Tokenizer::from_file(&path)) else {
        return;
    };
    drive_tokenizer(&tok, None);
    // export --to gguf: the tokenizer as GGUF metadata, then read back from a GGUF.
    let vocab = tok.vocab_size();
    if let Some(meta) = seen(
        "gguf metadata",
        shrink_io::gguf_meta::tokenizer_metadata(&dir, vocab, None),
    ) {
        let _ = &meta.pre;
        let mut kv = vec![(
            "general.architecture".to_string(),
            shrink_io::GgufValue::String("llama".into()),
        )];
        kv.extend(meta.metadata);
        let g = dir.join("tokenizer.gguf");
        let _ = fs::remove_file(&g);
        let opts = shrink_io::gguf_write::GgufWriteOptions {
            overwrite: true,
            inputs: Vec::new(),
        };
        let written = shrink_io::gguf_write::write_gguf::<shrink_io::IoError>(
            &g,
            &kv,
            Vec::new(),
            &opts,
            |_, _| Ok(Vec::new()),
        );
        if written.is_ok() {
            if let Ok(file) = shrink_io::GgufFile::open(&g) {
                if let Some(t) = seen("gguf tokenizer", Tokenizer::from_gguf(&file)) {
                    drive_tokenizer(&t, None);
                }
            }
        }
        let _ = fs::remove_file(&g);
    }
}

/// The bytes (as UTF-8, invalid sequences replaced) as the chat template of a fixed byte-level
/// tokenizer: rendered over a two-message conversation, with and without the generation prompt,
/// and the result encoded (`generate --chat`).
pub fn chat_template(data: &[u8]) {
    let dir = workdir("chat_template", |d| {
        put(&d.join("tokenizer.json"), small_tokenizer_json())
    });
    let template = String::from_utf8_lossy(data);
    put(
        &dir.join("tokenizer_config.json"),
        tokenizer_config(&template),
    );
    if let Some(tok) = seen(
        "tokenizer",
        Tokenizer::from_file(&dir.join("tokenizer.json")),
    ) {
        drive_chat_template(&tok);
    }
}

/// The bytes as an importance matrix (`quantize --imatrix`): read by format sniffing and as
/// the legacy format, and a matrix read is written back and read again.
pub fn imatrix(data: &[u8]) {
    let dir = workdir("imatrix", |_| {});
    let p = dir.join("imatrix.dat");
    put_input(&p, data);
    let _ = shrink_io::imatrix::Imatrix::parse_legacy(&p, data);
    if let Some(m) = seen("imatrix", shrink_io::imatrix::Imatrix::read(&p)) {
        for name in m.entries.keys() {
            let _ = m.get(name);
        }
        let out = dir.join("written.dat");
        let _ = fs::remove_file(&out);
        if m.write(&out).is_ok() {
            let _ = shrink_io::imatrix::Imatrix::read(&out);
        }
        let _ = fs::remove_file(&out);
    }
}

/// The quantized layouts [`quantized_layouts`] picks from: name, config.json and, for GPTQ,
/// quantize_config.json (written by `fuzz/make-seeds.sh` from shrink's own exports of
/// tiny-llama, `vocab_size` cut to 64 as the seeds' embeddings are).
pub const LAYOUTS: &[(&str, &str, Option<&str>)] = &[
    (
        "gptq",
        include_str!("../layouts/gptq/config.json"),
        Some(include_str!("../layouts/gptq/quantize_config.json")),
    ),
    (
        "gptq-actorder",
        include_str!("../layouts/gptq-actorder/config.json"),
        Some(include_str!(
            "../layouts/gptq-actorder/quantize_config.json"
        )),
    ),
    (
        "gptq-int3-sym",
        include_str!("../layouts/gptq-int3-sym/config.json"),
        Some(include_str!(
            "../layouts/gptq-int3-sym/quantize_config.json"
        )),
    ),
    ("awq", include_str!("../layouts/awq/config.json"), None),
    (
        "bnb-nf4",
        include_str!("../layouts/bnb-nf4/config.json"),
        None,
    ),
    (
        "bnb-fp4-dq",
        include_str!("../layouts/bnb-fp4-dq/config.json"),
        None,
    ),
    (
        "bnb-int8",
        include_str!("../layouts/bnb-int8/config.json"),
        None,
    ),
    (
        "ct-pack-int4",
        include_str!("../layouts/ct-pack-int4/config.json"),
        None,
    ),
    (
        "ct-naive-int8-channel",
        include_str!("../layouts/ct-naive-int8-channel/config.json"),
        None,
    ),
    (
        "ct-int6-tensor",
        include_str!("../layouts/ct-int6-tensor/config.json"),
        None,
    ),
    (
        "ct-w8a8",
        include_str!("../layouts/ct-w8a8/config.json"),
        None,
    ),
    ("hqq-4", include_str!("../layouts/hqq-4/config.json"), None),
    (
        "hqq-axis0",
        include_str!("../layouts/hqq-axis0/config.json"),
        None,
    ),
    (
        "sparse-bitmask",
        include_str!("../layouts/sparse-bitmask/config.json"),
        None,
    ),
    (
        "sparse-24",
        include_str!("../layouts/sparse-24/config.json"),
        None,
    ),
];

/// A quantized checkpoint: byte 0 picks the layout ([`LAYOUTS`], modulo their number); with its
/// high bit clear the rest is `model.safetensors` beside the layout's config.json, with it set
/// the rest is a config.json, a NUL byte, then `model.safetensors`. Every weight is then read
/// (dequantized, sparse decoded), inspected, loaded and run one step.
pub fn quantized_layouts(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let (name, cfg, qcfg) = LAYOUTS[(first & 0x7f) as usize % LAYOUTS.len()];
    if tracing() {
        eprintln!("  layout: {name}");
    }
    let dir = workdir("quantized_layouts", |_| {});
    let (cfg, st) = if first & 0x80 != 0 {
        split_nul(rest)
    } else {
        (cfg.as_bytes(), rest)
    };
    put_input(&dir.join("config.json"), cfg);
    let qc = dir.join("quantize_config.json");
    match qcfg {
        Some(q) => put(&qc, q),
        None => {
            let _ = fs::remove_file(&qc);
        }
    }
    put_input(&dir.join("model.safetensors"), st);
    drive_checkpoint(&dir);
}

/// A PEFT LoRA adapter: `adapter_config.json`, a NUL byte, then `adapter_model.safetensors`.
/// Read (`eval --adapter`), its accounting and serialisation, then loaded over tiny-llama and
/// run one step.
pub fn peft(data: &[u8]) {
    let base = workdir("peft-base", |d| {
        put(&d.join("config.json"), llama_config());
        put(
            &d.join("model.safetensors"),
            fixture("tiny-llama/model.safetensors"),
        );
    });
    let dir = workdir("peft", |_| {});
    let (cfg, st) = split_nul(data);
    put_input(&dir.join("adapter_config.json"), cfg);
    put_input(&dir.join("adapter_model.safetensors"), st);
    let Some(a) = seen("adapter", shrink_io::peft::Adapter::read(&dir)) else {
        return;
    };
    let _ = (a.scale(), a.params(), a.stored_bytes(), a.config_json());
    let _ = a.safetensors_bytes();
    if let Ok(ckpt) = Checkpoint::open(&base) {
        if let Some(m) = seen("load with adapter", Model::load_with(&ckpt, Some(&a))) {
            let _ = seen("forward", m.last_logits(&[0, 1], None));
        }
    }
}
