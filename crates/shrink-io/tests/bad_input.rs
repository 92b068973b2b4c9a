//! Damaged inputs: every one must give an error naming the file and what is wrong with it,
//! never a panic. Safetensors cases start from a real fixture (tiny-llama) and damage a copy;
//! GGUF cases are crafted with a small writer whose correctness the first GGUF test proves.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use shrink_io::{Checkpoint, GgufFile, GgufValue, OutputDir};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn fixtures() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures");
    assert!(
        p.join("tiny-llama/model.safetensors").is_file(),
        "fixtures missing: expected {} (the shared fixtures directory beside the repository)",
        p.display()
    );
    p
}

/// Assert `r` is an error whose message names `path` and contains every phrase (case-insensitive).
fn expect_err<T>(r: shrink_io::Result<T>, path: &Path, phrases: &[&str]) -> String {
    let msg = match r {
        Ok(_) => panic!("expected an error about {}, got success", path.display()),
        Err(e) => e.to_string(),
    };
    eprintln!("{msg}");
    assert!(
        msg.contains(&path.display().to_string()),
        "error does not name the file {}:\n  {msg}",
        path.display()
    );
    let lower = msg.to_lowercase();
    for p in phrases {
        assert!(
            lower.contains(&p.to_lowercase()),
            "error does not say {p:?}:\n  {msg}"
        );
    }
    msg
}

/// A writable copy of tiny-llama (config.json + model.safetensors) in `tmp/name`.
fn llama_copy(tmp: &Path, name: &str) -> PathBuf {
    let src = fixtures().join("tiny-llama");
    let dir = tmp.join(name);
    fs::create_dir(&dir).unwrap();
    for f in ["config.json", "model.safetensors"] {
        // read + write rather than fs::copy: the fixtures are read-only and fs::copy keeps modes.
        fs::write(dir.join(f), fs::read(src.join(f)).unwrap()).unwrap();
    }
    dir
}

/// A safetensors file split into its header (as JSON) and its data section.
fn st_split(bytes: &[u8]) -> (serde_json::Map<String, Value>, Vec<u8>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    (header.as_object().unwrap().clone(), bytes[8 + n..].to_vec())
}

/// Serialize a header and a data section as a safetensors file (header padded to 8 bytes).
fn st_join(header: &serde_json::Map<String, Value>, data: &[u8]) -> Vec<u8> {
    st_join_raw(serde_json::to_string(header).unwrap().as_bytes(), data)
}

fn st_join_raw(header: &[u8], data: &[u8]) -> Vec<u8> {
    let mut h = header.to_vec();
    h.resize(h.len().next_multiple_of(8), b' ');
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out
}

/// Tensor names of a header sorted by their data offsets.
fn by_offset(header: &serde_json::Map<String, Value>) -> Vec<String> {
    let mut names: Vec<(u64, String)> = header
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| (v["data_offsets"][0].as_u64().unwrap(), k.clone()))
        .collect();
    names.sort();
    names.into_iter().map(|(_, k)| k).collect()
}

/// Damage tiny-llama's model.safetensors with `f` and return (dir, file).
fn damaged_st(tmp: &Path, name: &str, f: impl FnOnce(Vec<u8>) -> Vec<u8>) -> (PathBuf, PathBuf) {
    let dir = llama_copy(tmp, name);
    let file = dir.join("model.safetensors");
    let bytes = fs::read(&file).unwrap();
    fs::write(&file, f(bytes)).unwrap();
    (dir, file)
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Safetensors
// ---------------------------------------------------------------------------------------------

#[test]
fn safetensors_copy_of_fixture_opens() {
    // The starting point of every damaged copy below is itself fine.
    let t = tmp();
    let dir = llama_copy(t.path(), "ok");
    let ck = Checkpoint::open(&dir).unwrap();
    assert_eq!(
        ck.tensors().iter().map(|t| t.elements()).sum::<u64>(),
        119_104
    );
    // And the split/join helpers round-trip it byte for byte (headers are already padded).
    let bytes = fs::read(dir.join("model.safetensors")).unwrap();
    let (h, d) = st_split(&bytes);
    let again = st_join(&h, &d);
    let ck2_dir = llama_copy(t.path(), "rejoined");
    fs::write(ck2_dir.join("model.safetensors"), again).unwrap();
    Checkpoint::open(&ck2_dir).unwrap();
}

#[test]
fn safetensors_truncated_in_data() {
    let t = tmp();
    let (dir, file) = damaged_st(t.path(), "m", |b| b[..b.len() - 100].to_vec());
    expect_err(Checkpoint::open(&dir), &file, &["truncated"]);
}

#[test]
fn safetensors_trailing_bytes() {
    let t = tmp();
    let (dir, file) = damaged_st(t.path(), "m", |mut b| {
        b.extend_from_slice(&[0; 12]);
        b
    });
    expect_err(
        Checkpoint::open(&dir),
        &file,
        &["12 bytes of trailing garbage"],
    );
}

#[test]
fn safetensors_truncated_in_header() {
    let t = tmp();
    let (dir, file) = damaged_st(t.path(), "m", |b| {
        let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
        b[..8 + n / 2].to_vec()
    });
    expect_err(Checkpoint::open(&dir), &file, &["header", "truncated"]);
}

#[test]
fn safetensors_file_shorter_than_length_prefix() {
    let t = tmp();
    let (dir, file) = damaged_st(t.path(), "m", |b| b[..5].to_vec());
    expect_err(Checkpoint::open(&dir), &file, &["header"]);
}

#[test]
fn safetensors_header_length_beyond_file() {
    let t = tmp();
    let (dir, file) = damaged_st(t.path(), "m", |mut b| {
        let len = b.len() as u64 + 1000;
        b[..8].copy_from_slice(&len.to_le_bytes());
        b
    });
    expect_err(Checkpoint::open(&dir), &file, &["header", "truncated"]);
    // An absurd length (more than safetensors' 100 MB header limit).
    let (dir, file) = damaged_st(t.path(), "m2", |mut b| {
        b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        b
    });
    expect_err(Checkpoint::open(&dir), &file, &["header"]);
}

#[test]
fn safetensors_offsets_past_end_of_file() {
    let t = tmp();
    // The last tensor claims twice its rows: shape and offsets agree, but the data runs past
    // the end of the file.
    let (dir, file) = damaged_st(t.path(), "m", |b| {
        let (mut h, d) = st_split(&b);
        let last = by_offset(&h).pop().unwrap();
        let e = &mut h[&last];
        let (s, end) = (
            e["data_offsets"][0].as_u64().unwrap(),
            e["data_offsets"][1].as_u64().unwrap(),
        );
        let mut shape: Vec<u64> = serde_json::from_value(e["shape"].clone()).unwrap();
        shape[0] *= 2;
        e["shape"] = json!(shape);
        e["data_offsets"] = json!([s, s + 2 * (end - s)]);
        st_join(&h, &d)
    });
    expect_err(Checkpoint::open(&dir), &file, &["truncated"]);
}

#[test]
fn safetensors_offsets_disagree_with_shape() {
    let t = tmp();
    let mut name = String::new();
    let (dir, file) = damaged_st(t.path(), "m", |b| {
        let (mut h, d) = st_split(&b);
        name = by_offset(&h).pop().unwrap();
        let e = &mut h[&name];
        let s = e["data_offsets"][0].as_u64().unwrap();
        e["data_offsets"] = json!([s, 1u64 << 40]);
        st_join(&h, &d)
    });
    expect_err(Checkpoint::open(&dir), &file, &[&name]);
}

#[test]
fn safetensors_overlapping_offsets() {
    let t = tmp();
    let (dir, file) = damaged_st(t.path(), "m", |b| {
        let (mut h, d) = st_split(&b);
        let names = by_offset(&h);
        // The second tensor starts 4 bytes early: it overlaps the first.
        let e = &mut h[&names[1]];
        let (s, end) = (
            e["data_offsets"][0].as_u64().unwrap(),
            e["data_offsets"][1].as_u64().unwrap(),
        );
        e["data_offsets"] = json!([s - 4, end - 4]);
        st_join(&h, &d)
    });
    let (h, _) = st_split(&std::fs::read(&file).unwrap());
    let names = by_offset(&h);
    expect_err(
        Checkpoint::open(&dir),
        &file,
        &["overlap", names[0].as_str(), names[1].as_str()],
    );
}

#[test]
fn safetensors_gap_between_tensors() {
    let t = tmp();
    let (dir, file) = damaged_st(t.path(), "m", |b| {
        let (mut h, mut d) = st_split(&b);
        // Every tensor after the first moves 4 bytes on: a gap the header does not account for.
        for n in by_offset(&h).into_iter().skip(1) {
            let e = &mut h[&n];
            let (s, end) = (
                e["data_offsets"][0].as_u64().unwrap(),
                e["data_offsets"][1].as_u64().unwrap(),
            );
            e["data_offsets"] = json!([s + 4, end + 4]);
        }
        d.extend_from_slice(&[0; 4]);
        st_join(&h, &d)
    });
    expect_err(
        Checkpoint::open(&dir),
        &file,
        &["belong to no tensor", "gap"],
    );
}

#[test]
fn safetensors_unknown_dtype() {
    let t = tmp();
    let (dir, file) = damaged_st(t.path(), "m", |b| {
        let (mut h, d) = st_split(&b);
        let first = by_offset(&h)[0].clone();
        h[&first]["dtype"] = json!("Q9");
        st_join(&h, &d)
    });
    expect_err(Checkpoint::open(&dir), &file, &["Q9"]);
}

#[test]
fn safetensors_header_not_json() {
    let t = tmp();
    let (dir, file) = damaged_st(t.path(), "m", |b| {
        let (_, d) = st_split(&b);
        st_join_raw(b"this is not JSON at all", &d)
    });
    expect_err(Checkpoint::open(&dir), &file, &["JSON"]);
}

#[test]
fn safetensors_header_not_utf8() {
    let t = tmp();
    let (dir, file) = damaged_st(t.path(), "m", |b| {
        let (h, d) = st_split(&b);
        let mut raw = serde_json::to_vec(&h).unwrap();
        raw[1] = 0xff; // inside the first key's opening quote
        st_join_raw(&raw, &d)
    });
    expect_err(Checkpoint::open(&dir), &file, &["UTF-8"]);
}

/// A one-tensor safetensors file: `name`, F32, 4 values.
fn one_tensor_file(name: &str) -> Vec<u8> {
    let mut h = serde_json::Map::new();
    h.insert(
        name.into(),
        json!({"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}),
    );
    st_join(&h, &[0u8; 16])
}

/// Turn a model.safetensors directory into two shards plus an index.json.
fn sharded(tmp: &Path, name: &str) -> (PathBuf, serde_json::Map<String, Value>) {
    let dir = llama_copy(tmp, name);
    fs::rename(
        dir.join("model.safetensors"),
        dir.join("model-00001-of-00002.safetensors"),
    )
    .unwrap();
    let (h, _) = st_split(&fs::read(dir.join("model-00001-of-00002.safetensors")).unwrap());
    let mut map = serde_json::Map::new();
    for n in by_offset(&h) {
        map.insert(n, json!("model-00001-of-00002.safetensors"));
    }
    (dir, map)
}

fn write_index(dir: &Path, map: &serde_json::Map<String, Value>) -> PathBuf {
    let p = dir.join("model.safetensors.index.json");
    fs::write(
        &p,
        serde_json::to_vec(&json!({"metadata": {}, "weight_map": map})).unwrap(),
    )
    .unwrap();
    p
}

#[test]
fn safetensors_sharded_index_opens() {
    let t = tmp();
    let (dir, mut map) = sharded(t.path(), "m");
    fs::write(
        dir.join("model-00002-of-00002.safetensors"),
        one_tensor_file("extra.weight"),
    )
    .unwrap();
    map.insert(
        "extra.weight".into(),
        json!("model-00002-of-00002.safetensors"),
    );
    write_index(&dir, &map);
    let ck = Checkpoint::open(&dir).unwrap();
    assert!(ck.has("extra.weight") && ck.has("model.norm.weight"));
    assert_eq!(ck.read_f32("extra.weight").unwrap().0, vec![0.0; 4]);
}

#[test]
fn safetensors_duplicate_tensor_across_shards() {
    let t = tmp();
    let (dir, mut map) = sharded(t.path(), "m");
    let shard2 = dir.join("model-00002-of-00002.safetensors");
    fs::write(&shard2, one_tensor_file("model.norm.weight")).unwrap();
    map.insert("extra".into(), json!("model-00002-of-00002.safetensors"));
    write_index(&dir, &map);
    let msg = expect_err(
        Checkpoint::open(&dir),
        &shard2,
        &["model.norm.weight", "appears"],
    );
    assert!(
        msg.contains("model-00001-of-00002.safetensors"),
        "should name the other shard too: {msg}"
    );
}

#[test]
fn safetensors_index_names_missing_shard() {
    let t = tmp();
    let (dir, mut map) = sharded(t.path(), "m");
    map.insert(
        "lost.weight".into(),
        json!("model-00002-of-00002.safetensors"),
    );
    write_index(&dir, &map);
    expect_err(
        Checkpoint::open(&dir),
        &dir.join("model-00002-of-00002.safetensors"),
        &["no such file"],
    );
}

#[test]
fn safetensors_index_path_escapes_directory() {
    let t = tmp();
    for (i, evil) in ["../x.safetensors", "/etc/passwd", "sub/../../x"]
        .iter()
        .enumerate()
    {
        let (dir, mut map) = sharded(t.path(), &format!("m{i}"));
        map.insert("evil.weight".into(), json!(evil));
        let index = write_index(&dir, &map);
        expect_err(Checkpoint::open(&dir), &index, &["outside the directory"]);
    }
}

#[test]
fn safetensors_index_malformed() {
    let t = tmp();
    let (dir, _) = sharded(t.path(), "m");
    let index = dir.join("model.safetensors.index.json");
    fs::write(&index, b"{\"weight_map\": [1, 2]}").unwrap();
    expect_err(Checkpoint::open(&dir), &index, &["weight_map"]);
    fs::write(&index, b"{\"weight_map\": ").unwrap();
    expect_err(Checkpoint::open(&dir), &index, &["JSON"]);
}

#[test]
fn directory_without_weights() {
    let t = tmp();
    let dir = llama_copy(t.path(), "m");
    fs::remove_file(dir.join("model.safetensors")).unwrap();
    expect_err(Checkpoint::open(&dir), &dir, &["no model.safetensors"]);
}

#[test]
fn lone_safetensors_file_is_not_a_model() {
    let t = tmp();
    let dir = llama_copy(t.path(), "m");
    let file = dir.join("model.safetensors");
    expect_err(Checkpoint::open(&file), &file, &["directory"]);
}

#[test]
fn missing_path() {
    let t = tmp();
    let p = t.path().join("nope");
    expect_err(Checkpoint::open(&p), &p, &["no such file"]);
}

// ---------------------------------------------------------------------------------------------
// config.json
// ---------------------------------------------------------------------------------------------

#[test]
fn config_missing() {
    let t = tmp();
    let dir = llama_copy(t.path(), "m");
    fs::remove_file(dir.join("config.json")).unwrap();
    expect_err(Checkpoint::open(&dir), &dir, &["config.json"]);
}

#[test]
fn config_malformed_json() {
    let t = tmp();
    let dir = llama_copy(t.path(), "m");
    let cfg = dir.join("config.json");
    fs::write(&cfg, b"{\"model_type\": \"llama\",").unwrap();
    expect_err(Checkpoint::open(&dir), &cfg, &["invalid JSON"]);
}

#[test]
fn config_not_an_object() {
    let t = tmp();
    let dir = llama_copy(t.path(), "m");
    let cfg = dir.join("config.json");
    fs::write(&cfg, b"[1, 2, 3]").unwrap();
    expect_err(Checkpoint::open(&dir), &cfg, &["not a JSON object"]);
}

// ---------------------------------------------------------------------------------------------
// GGUF
// ---------------------------------------------------------------------------------------------

/// A tensor info as the writer stores it.
#[derive(Clone)]
struct TInfo {
    name: String,
    /// ggml order: ne[0] (row length) first.
    ne: Vec<u64>,
    ty: u32,
    offset: u64,
}

/// A tiny GGUF writer: every field can be set to a lie.
#[derive(Clone)]
struct Gguf {
    version: u32,
    /// Overrides of the counts in the header (None: the true counts).
    n_tensors: Option<u64>,
    n_kv: Option<u64>,
    /// Key, value type, value bytes.
    kvs: Vec<(String, u32, Vec<u8>)>,
    tensors: Vec<TInfo>,
    data: Vec<u8>,
}

fn gstr(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(s.as_bytes());
    v
}

impl Gguf {
    fn new() -> Self {
        Gguf {
            version: 3,
            n_tensors: None,
            n_kv: None,
            kvs: vec![],
            tensors: vec![],
            data: vec![],
        }
    }

    fn kv(mut self, key: &str, ty: u32, value: Vec<u8>) -> Self {
        self.kvs.push((key.into(), ty, value));
        self
    }

    fn tensor(mut self, name: &str, ne: &[u64], ty: u32, offset: u64) -> Self {
        self.tensors.push(TInfo {
            name: name.into(),
            ne: ne.to_vec(),
            ty,
            offset,
        });
        self
    }

    /// The valid reference file: an F32 [2, 4] tensor (ne = [4, 2]) and a few metadata keys.
    fn valid() -> Self {
        let values: Vec<f32> = (0..8).map(|i| i as f32 * 0.5 - 1.25).collect();
        let mut arr = 8u32.to_le_bytes().to_vec(); // element type: string
        arr.extend_from_slice(&2u64.to_le_bytes());
        arr.extend(gstr("a"));
        arr.extend(gstr("bc"));
        let mut g = Gguf::new()
            .kv("general.architecture", 8, gstr("llama"))
            .kv("test.count", 4, 7u32.to_le_bytes().to_vec())
            .kv("test.scale", 6, 1.5f32.to_le_bytes().to_vec())
            .kv("test.words", 9, arr)
            .tensor("w", &[4, 2], 0, 0);
        g.data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        g
    }

    /// Header through the tensor infos (no padding).
    fn header(&self) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend_from_slice(&self.version.to_le_bytes());
        b.extend_from_slice(
            &self
                .n_tensors
                .unwrap_or(self.tensors.len() as u64)
                .to_le_bytes(),
        );
        b.extend_from_slice(&self.n_kv.unwrap_or(self.kvs.len() as u64).to_le_bytes());
        for (k, ty, v) in &self.kvs {
            b.extend(gstr(k));
            b.extend_from_slice(&ty.to_le_bytes());
            b.extend_from_slice(v);
        }
        for t in &self.tensors {
            b.extend(gstr(&t.name));
            b.extend_from_slice(&(t.ne.len() as u32).to_le_bytes());
            for d in &t.ne {
                b.extend_from_slice(&d.to_le_bytes());
            }
            b.extend_from_slice(&t.ty.to_le_bytes());
            b.extend_from_slice(&t.offset.to_le_bytes());
        }
        b
    }

    fn bytes(&self) -> Vec<u8> {
        let mut b = self.header();
        b.resize(b.len().next_multiple_of(32), 0);
        b.extend_from_slice(&self.data);
        b
    }
}

fn write_gguf(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, bytes).unwrap();
    p
}

/// Open crafted bytes both ways (GgufFile and Checkpoint) and expect the same kind of error.
fn gguf_err(bytes: &[u8], phrases: &[&str]) {
    let t = tmp();
    let p = write_gguf(t.path(), "bad.gguf", bytes);
    expect_err(GgufFile::open(&p), &p, phrases);
    expect_err(Checkpoint::open(&p), &p, phrases);
}

#[test]
fn gguf_valid_crafted_file_reads_back_exactly() {
    let t = tmp();
    let g = Gguf::valid();
    let p = write_gguf(t.path(), "ok.gguf", &g.bytes());
    let f = GgufFile::open(&p).unwrap();
    assert_eq!(f.version, 3);
    assert_eq!(f.alignment, 32);
    assert_eq!(f.data_offset % 32, 0);
    assert_eq!(f.architecture().unwrap(), "llama");
    assert_eq!(f.get("test.count"), Some(&GgufValue::U32(7)));
    assert_eq!(f.get("test.scale"), Some(&GgufValue::F32(1.5)));
    assert_eq!(
        f.get("test.words"),
        Some(&GgufValue::Array(vec![
            GgufValue::String("a".into()),
            GgufValue::String("bc".into())
        ]))
    );
    assert_eq!(f.metadata.len(), 4);
    assert_eq!(f.tensors.len(), 1);
    let info = &f.tensors[0];
    assert_eq!(
        (info.name.as_str(), info.shape(), info.bytes),
        ("w", vec![2, 4], 32)
    );
    let want: Vec<f32> = (0..8).map(|i| i as f32 * 0.5 - 1.25).collect();
    assert_eq!(f.read_f32(info).unwrap(), want);
    // Through Checkpoint too.
    let ck = Checkpoint::open(&p).unwrap();
    assert_eq!(ck.read_f32("w").unwrap(), (want, vec![2, 4]));
    // Version 2 reads the same.
    let mut g2 = g.clone();
    g2.version = 2;
    let p2 = write_gguf(t.path(), "v2.gguf", &g2.bytes());
    assert_eq!(GgufFile::open(&p2).unwrap().version, 2);
}

#[test]
fn gguf_bad_magic() {
    let mut b = Gguf::valid().bytes();
    b[..4].copy_from_slice(b"GGML");
    gguf_err(&b, &["not a GGUF file", "magic"]);
    gguf_err(b"GG", &["not a GGUF file"]);
    gguf_err(b"", &["not a GGUF file"]);
}

#[test]
fn gguf_truncated_header() {
    let g = Gguf::valid();
    let h = g.header();
    // Cut at many points inside the header: never a panic, always "truncated" (or, right after
    // the magic, a missing version).
    for cut in [6, 12, 20, 30, h.len() / 2, h.len() - 3] {
        gguf_err(&h[..cut], &["truncated"]);
    }
}

#[test]
fn gguf_truncated_data() {
    let b = Gguf::valid().bytes();
    gguf_err(&b[..b.len() - 4], &["w", "runs past the end", "truncated"]);
}

#[test]
fn gguf_header_ends_before_data_padding() {
    // The header ends mid-padding: even a zero-size tensor must not be read past the end.
    let mut g = Gguf::valid();
    g.tensors[0].ne = vec![0, 2];
    g.data.clear();
    let h = g.header();
    assert_ne!(
        h.len() % 32,
        0,
        "the test needs a header that is not already aligned"
    );
    gguf_err(&h, &["truncated"]);
}

#[test]
fn gguf_unknown_tensor_type() {
    let mut g = Gguf::valid();
    g.tensors[0].ty = 99;
    gguf_err(&g.bytes(), &["tensor w", "unknown tensor type id 99"]);
}

#[test]
fn gguf_unsupported_versions() {
    for v in [1u32, 4, 0xFFFF_FFFF] {
        let mut g = Gguf::valid();
        g.version = v;
        gguf_err(&g.bytes(), &[&format!("unsupported GGUF version {v}")]);
    }
}

#[test]
fn gguf_string_length_beyond_file() {
    // A metadata key whose length runs past the end.
    let mut b = Gguf::valid().bytes();
    b[24..32].copy_from_slice(&1_000_000u64.to_le_bytes());
    gguf_err(&b, &["metadata key", "string length 1000000 exceeds"]);
    // A string value whose length runs past the end.
    let mut g = Gguf::valid();
    let mut v = u64::MAX.to_le_bytes().to_vec();
    v.extend_from_slice(b"xyz");
    g.kvs[0].2 = v;
    gguf_err(&g.bytes(), &["general.architecture", "exceeds"]);
}

#[test]
fn gguf_array_length_beyond_file() {
    let mut g = Gguf::valid();
    let mut arr = 4u32.to_le_bytes().to_vec(); // u32 elements
    arr.extend_from_slice(&(u64::MAX / 2).to_le_bytes());
    g.kvs[3].2 = arr;
    gguf_err(&g.bytes(), &["test.words", "array of", "exceeds"]);
    // A length that fits the byte count but not the element size (u64 items): truncated.
    let mut g = Gguf::valid();
    g.kvs[3].2 = [10u32.to_le_bytes().as_slice(), &[0; 8]].concat();
    // test.words is the last key: after its length come the tensor info (41 bytes), the
    // padding and the data. Claim exactly that many items, 8 bytes each.
    let left = g.bytes().len() - (g.header().len() - 41);
    g.kvs[3].2[4..].copy_from_slice(&(left as u64).to_le_bytes());
    gguf_err(&g.bytes(), &["truncated"]);
}

#[test]
fn gguf_absurd_counts() {
    let mut g = Gguf::valid();
    g.n_tensors = Some(u64::MAX);
    gguf_err(&g.bytes(), &["header claims", "tensors"]);
    let mut g = Gguf::valid();
    g.n_kv = Some(1 << 40);
    gguf_err(&g.bytes(), &["header claims", "metadata keys"]);
}

#[test]
fn gguf_tensor_offset_not_aligned() {
    let mut g = Gguf::valid();
    g.tensors[0].offset = 4;
    g.data.extend_from_slice(&[0; 4]);
    gguf_err(&g.bytes(), &["tensor w", "offset 4 is not aligned to 32"]);
}

#[test]
fn gguf_overlapping_tensors() {
    let mut g = Gguf::valid().tensor("v", &[16], 0, 32);
    g.data.resize(96, 0);
    // v covers [32, 96); w is made to cover [0, 64): they overlap.
    g.tensors[0].ne = vec![16];
    gguf_err(&g.bytes(), &["overlap", "w", "v"]);
    // Identical offsets.
    let mut g = Gguf::valid().tensor("v", &[4, 2], 0, 0);
    g.data.resize(64, 0);
    gguf_err(&g.bytes(), &["overlap"]);
}

#[test]
fn gguf_duplicate_tensor_names() {
    let mut g = Gguf::valid().tensor("w", &[4, 2], 0, 32);
    g.data.resize(64, 0);
    gguf_err(&g.bytes(), &["tensor w appears twice"]);
}

#[test]
fn gguf_bad_dimension_counts() {
    let mut g = Gguf::valid();
    g.tensors[0].ne = vec![];
    gguf_err(&g.bytes(), &["tensor w", "0 dimensions"]);
    let mut g = Gguf::valid();
    g.tensors[0].ne = vec![2, 1, 1, 1, 4];
    gguf_err(&g.bytes(), &["tensor w", "5 dimensions"]);
}

#[test]
fn gguf_dimensions_overflow() {
    let mut g = Gguf::valid();
    g.tensors[0].ne = vec![1 << 32, 1 << 32, 1 << 32];
    gguf_err(&g.bytes(), &["tensor w", "overflow"]);
}

#[test]
fn gguf_block_type_with_ragged_rows() {
    let mut g = Gguf::valid();
    g.tensors[0].ty = 8; // Q8_0: blocks of 32 values, and a row of 4
    gguf_err(&g.bytes(), &["tensor w", "block size"]);
}

#[test]
fn gguf_bad_metadata_values() {
    let mut g = Gguf::valid();
    g.kvs[1].1 = 77;
    gguf_err(
        &g.bytes(),
        &["test.count", "unknown metadata value type 77"],
    );
    let g = Gguf::valid().kv("test.flag", 7, vec![2]);
    gguf_err(&g.bytes(), &["test.flag", "bool"]);
    let g = Gguf::valid().kv("general.alignment", 4, 24u32.to_le_bytes().to_vec());
    gguf_err(&g.bytes(), &["general.alignment", "power of two"]);
    let mut nested = 9u32.to_le_bytes().to_vec();
    nested.extend_from_slice(&1u64.to_le_bytes());
    nested.extend_from_slice(&0u32.to_le_bytes());
    nested.extend_from_slice(&0u64.to_le_bytes());
    let g = Gguf::valid().kv("test.nested", 9, nested);
    gguf_err(&g.bytes(), &["test.nested", "nested arrays"]);
}

// ---------------------------------------------------------------------------------------------
// Text and outputs
// ---------------------------------------------------------------------------------------------

#[test]
fn read_text_rejects_non_utf8_naming_file_and_offset() {
    let t = tmp();
    let p = t.path().join("latin1.txt");
    fs::write(&p, b"caf\xe9 au lait\n").unwrap();
    expect_err(shrink_io::read_text(&p), &p, &["not UTF-8", "byte 3"]);
    let ok = t.path().join("ok.txt");
    fs::write(&ok, "café\n").unwrap();
    assert_eq!(shrink_io::read_text(&ok).unwrap(), "café\n");
    let missing = t.path().join("missing.txt");
    expect_err(shrink_io::read_text(&missing), &missing, &["no such file"]);
}

#[test]
fn output_dir_refuses_existing_target() {
    let t = tmp();
    let target = t.path().join("out");
    fs::create_dir(&target).unwrap();
    expect_err(
        OutputDir::create(&target, &[]),
        &target,
        &["already exists"],
    );
    assert_eq!(
        fs::read_dir(t.path()).unwrap().count(),
        1,
        "nothing else was created"
    );
}

#[test]
fn output_dir_refuses_an_input() {
    let t = tmp();
    let model = llama_copy(t.path(), "model");
    expect_err(
        OutputDir::create(&model, &[&model]),
        &model,
        &["same path as an input"],
    );
    // Spelled differently (with a `.` component), still the same path.
    let other = t.path().join(".").join("model");
    expect_err(
        OutputDir::create(&other, &[&model]),
        &other,
        &["same path as an input"],
    );
    assert!(
        model.join("model.safetensors").is_file(),
        "the input is untouched"
    );
    assert_eq!(
        fs::read_dir(t.path()).unwrap().count(),
        1,
        "no temporary directory left"
    );
}

#[test]
fn outputs_never_go_inside_or_over_an_input() {
    let t = tmp();
    let model = llama_copy(t.path(), "model");
    let weights = model.join("model.safetensors");
    let before = fs::read(&weights).unwrap();
    // A new directory inside the model directory, or one containing it.
    let inside = model.join("out");
    expect_err(
        OutputDir::create(&inside, &[&model]),
        &inside,
        &["inside the input"],
    );
    expect_err(
        OutputDir::create(t.path(), &[&model]),
        t.path(),
        &["contains the input"],
    );
    // A GGUF file over one of the model's own files, even with overwrite.
    let opts = shrink_io::gguf_write::GgufWriteOptions {
        overwrite: true,
        inputs: vec![model.clone()],
    };
    let spec = shrink_io::gguf_write::GgufTensorSpec {
        name: "t".into(),
        ne: vec![4],
        ty: shrink_formats::ggml::GgmlType::F32,
    };
    for over in [
        weights.clone(),
        model.join("config.json"),
        model.join("new.gguf"),
    ] {
        let Err(e) =
            shrink_io::gguf_write::GgufWriter::create(&over, &[], vec![spec.clone()], &opts)
        else {
            panic!("{} was accepted", over.display())
        };
        assert!(e.to_string().contains("inside the input"), "{e}");
    }
    assert_eq!(
        fs::read(&weights).unwrap(),
        before,
        "the input is untouched"
    );
    assert!(!inside.exists() && !model.join("new.gguf").exists());
    // Sibling paths are fine (not a prefix match on the name).
    let sibling = t.path().join("model2");
    OutputDir::create(&sibling, &[&model]).unwrap();
}

#[test]
fn output_dir_refuses_missing_parent() {
    let t = tmp();
    let target = t.path().join("no/such/parent/out");
    expect_err(
        OutputDir::create(&target, &[]),
        &t.path().join("no/such/parent"),
        &["parent"],
    );
}

#[test]
fn output_dir_dropped_without_commit_leaves_nothing() {
    let t = tmp();
    let target = t.path().join("out");
    {
        let out = OutputDir::create(&target, &[]).unwrap();
        out.write("config.json", b"{}").unwrap();
        assert!(out.file("config.json").is_file());
        assert!(
            !target.exists(),
            "nothing appears under the final name before commit"
        );
    }
    assert!(!target.exists());
    let left: Vec<_> = fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn output_dir_commit_renames_into_place() {
    let t = tmp();
    let target = t.path().join("out");
    let out = OutputDir::create(&target, &[]).unwrap();
    out.write("config.json", b"{\"a\": 1}").unwrap();
    assert_eq!(out.target(), target);
    let done = out.commit().unwrap();
    assert_eq!(done, target);
    assert_eq!(fs::read(target.join("config.json")).unwrap(), b"{\"a\": 1}");
    let left: Vec<_> = fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        vec![std::ffi::OsString::from("out")],
        "only the committed directory remains"
    );
}
