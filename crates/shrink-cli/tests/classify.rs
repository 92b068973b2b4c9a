//! The classifier example end to end on the tiny BERT and DistilBERT fixtures (given a
//! byte-level tokenizer): `shrink train-classifier` learns a toy sentiment set, `shrink distill
//! --task classify` writes a student with fewer layers and heads that loads, quantizes to NF4
//! and compares, and bad input is refused with nothing written.

mod common;

use std::path::{Path, PathBuf};

use common::{fixture_with_tokenizer, shrink};

const ARCHS: [&str; 2] = ["tiny-bert_cls", "tiny-distilbert_cls"];

/// `n` labelled sentences of 2–4 words, each word from its label's list (learnable from any
/// token), in `dir`/`name`.
fn toy_data(dir: &Path, name: &str, n: usize, seed: u64) -> PathBuf {
    let pos = ["great", "lovely", "fun", "superb", "moving", "witty"];
    let neg = ["awful", "dull", "boring", "poor", "tedious", "bland"];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = |m: usize| {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 33) as usize % m
    };
    let mut text = String::new();
    for i in 0..n {
        let (label, words) = if i % 2 == 0 {
            ("pos", pos)
        } else {
            ("neg", neg)
        };
        let k = 2 + next(3);
        let s: Vec<&str> = (0..k).map(|_| words[next(words.len())]).collect();
        text += &format!("__label__{label} {}\n", s.join(" "));
    }
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn ok(o: &std::process::Output) -> serde_json::Value {
    assert!(
        o.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

struct Toy {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    model: PathBuf,
    train: PathBuf,
    valid: PathBuf,
    test: PathBuf,
}

fn toy(arch: &str) -> Toy {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    Toy {
        model: fixture_with_tokenizer(&dir, arch),
        train: toy_data(&dir, "train.txt", 96, 1),
        valid: toy_data(&dir, "valid.txt", 32, 2),
        test: toy_data(&dir, "test.txt", 32, 3),
        dir,
        _tmp: tmp,
    }
}

fn train_classifier(t: &Toy, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "train-classifier",
        s(&t.model),
        "--data",
        s(&t.train),
        "--valid",
        s(&t.valid),
        "--test",
        s(&t.test),
        "--batch",
        "8",
        "--seed",
        "3",
        "-o",
        s(out),
        "--json",
    ];
    args.extend_from_slice(extra);
    shrink(&args)
}

fn accuracy(m: &serde_json::Value) -> f64 {
    m["accuracy"].as_f64().unwrap()
}

/// Fine-tuning takes the fixtures from chance to (nearly) every toy sentence right; the output
/// carries the data's labels and scores the same under `shrink compare` (the inference forward)
/// as the trainer reported (the trainable forward).
#[test]
fn fine_tuning_learns_a_toy_set() {
    for arch in ARCHS {
        let t = toy(arch);
        let before = ok(&train_classifier(
            &t,
            &t.dir.join("before"),
            &["--epochs", "1", "--lr", "1e-12"],
        ));
        let out = t.dir.join("ft");
        let r = ok(&train_classifier(
            &t,
            &out,
            &["--epochs", "6", "--lr", "1e-3"],
        ));
        let (a0, a1) = (accuracy(&before["test"]), accuracy(&r["test"]));
        assert!(
            a1 >= 0.9 && a1 > a0 + 0.2,
            "{arch}: test accuracy {a0} → {a1}"
        );
        assert_eq!(r["labels"], serde_json::json!(["neg", "pos"]));
        let epochs = r["summary"]["epochs"].as_array().unwrap();
        assert_eq!(epochs.len(), 6);
        assert!(epochs.iter().all(|e| e["valid"]["n"] == 32));
        // 96 sentences in steps of 8, 6 epochs.
        assert_eq!(r["summary"]["steps"], 72);
        let cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
        assert_eq!(cfg["id2label"], serde_json::json!({"0": "neg", "1": "pos"}));
        assert!(out.join("tokenizer.json").is_file() && out.join("train.jsonl").is_file());
        let c = ok(&shrink(&[
            "compare",
            s(&out),
            s(&out),
            "--data",
            s(&t.test),
            "--json",
        ]));
        let row = &c["rows"][0];
        assert!(
            (accuracy(&row["metrics"]) - a1).abs() < 1e-9,
            "{arch}: {row}"
        );
        assert_eq!(row["metrics"]["confusion"], r["test"]["confusion"]);
        // The same seed gives the same run.
        let again = ok(&train_classifier(
            &t,
            &t.dir.join("ft2"),
            &["--epochs", "6", "--lr", "1e-3"],
        ));
        assert_eq!(
            std::fs::read(out.join("model.safetensors")).unwrap(),
            std::fs::read(t.dir.join("ft2/model.safetensors")).unwrap(),
            "{arch}: not deterministic"
        );
        assert_eq!(again["test"], r["test"]);
    }
}

/// A bare encoder (a sentence-transformers BertModel: no `bert.` prefix, no classifier) gets a
/// head for the data's labels and learns.
#[test]
fn a_bare_encoder_gets_a_head() {
    let t = toy("tiny-bert_cls");
    let bare = t.dir.join("bare");
    std::fs::create_dir(&bare).unwrap();
    let bytes = std::fs::read(t.model.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| n.starts_with("bert."))
        .map(|(n, v)| (n["bert.".len()..].to_string(), v))
        .collect();
    std::fs::write(
        bare.join("model.safetensors"),
        safetensors::serialize(kept, None).unwrap(),
    )
    .unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(t.model.join("config.json")).unwrap()).unwrap();
    cfg["architectures"] = serde_json::json!(["BertModel"]);
    std::fs::write(bare.join("config.json"), cfg.to_string()).unwrap();
    std::fs::copy(t.model.join("tokenizer.json"), bare.join("tokenizer.json")).unwrap();
    let out = t.dir.join("ft");
    let r = ok(&shrink(&[
        "train-classifier",
        s(&bare),
        "--data",
        s(&t.train),
        "--test",
        s(&t.test),
        "--batch",
        "8",
        "--epochs",
        "6",
        "--lr",
        "1e-3",
        "-o",
        s(&out),
        "--json",
    ]));
    assert_eq!(
        r["initialised"],
        serde_json::json!(["classifier.weight", "classifier.bias"])
    );
    assert!(accuracy(&r["test"]) >= 0.9, "{}", r["test"]);
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        cfg["architectures"],
        serde_json::json!(["BertForSequenceClassification"])
    );
    assert_eq!(cfg["label2id"], serde_json::json!({"neg": 0, "pos": 1}));
}

/// A fine-tuned teacher distilled into a student with fewer layers and heads: the student loads,
/// quantizes to NF4 with double quantization, and compares side by side with its teacher.
#[test]
fn distilled_student_is_smaller_quantizes_and_compares() {
    for arch in ARCHS {
        let t = toy(arch);
        let teacher = t.dir.join("teacher");
        ok(&train_classifier(
            &t,
            &teacher,
            &["--epochs", "6", "--lr", "1e-3"],
        ));
        let student = t.dir.join("student");
        let r = ok(&shrink(&[
            "distill",
            "--task",
            "classify",
            "--teacher",
            s(&teacher),
            "--student-layers",
            "1",
            "--student-heads",
            "2",
            "--data",
            s(&t.train),
            "--valid",
            s(&t.valid),
            "--test",
            s(&t.test),
            "--batch",
            "8",
            "--epochs",
            "4",
            "--lr",
            "1e-3",
            "-o",
            s(&student),
            "--json",
        ]));
        assert_eq!(r["kept_layers"], serde_json::json!([1]));
        assert!(r["parameters"].as_u64() < r["teacher_parameters"].as_u64());
        assert!(accuracy(&r["test"]) >= 0.8, "{arch}: {}", r["test"]);
        let cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(student.join("config.json")).unwrap()).unwrap();
        let (layers, heads) = if arch == "tiny-bert_cls" {
            ("num_hidden_layers", "num_attention_heads")
        } else {
            ("n_layers", "n_heads")
        };
        assert_eq!(
            (cfg[layers].as_u64(), cfg[heads].as_u64()),
            (Some(1), Some(2))
        );
        let nf4 = t.dir.join("student-nf4");
        let q = shrink(&[
            "quantize",
            s(&student),
            "--method",
            "nf4",
            "--double-quant",
            "-o",
            s(&nf4),
        ]);
        assert!(q.status.success(), "{}", String::from_utf8_lossy(&q.stderr));
        let c = ok(&shrink(&[
            "compare",
            s(&teacher),
            s(&student),
            s(&nf4),
            "--data",
            s(&t.test),
            "--json",
        ]));
        let rows = c["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 3);
        let bytes: Vec<u64> = rows
            .iter()
            .map(|r| r["model_bytes"].as_u64().unwrap())
            .collect();
        assert!(
            bytes[1] < bytes[0] && bytes[2] < bytes[1],
            "{arch}: {bytes:?}"
        );
        assert_eq!(rows[1]["layers"], 1);
        assert_eq!(rows[2]["heads"], 2);
        assert_eq!(rows[1]["parameters"], rows[2]["parameters"]);
        assert!(
            rows[2]["method"].as_str().unwrap().starts_with("nf4"),
            "{}",
            rows[2]
        );
        // The student scores under compare what distill reported.
        assert!((accuracy(&rows[1]["metrics"]) - accuracy(&r["test"])).abs() < 1e-9);
        for row in rows {
            assert!(accuracy(&row["metrics"]) >= 0.7, "{arch}: {row}");
        }
        let text = shrink(&["compare", s(&teacher), s(&nf4), "--data", s(&t.test)]);
        let md = String::from_utf8_lossy(&text.stdout);
        assert!(
            md.contains("| accuracy | precision | recall | F1 |"),
            "{md}"
        );
    }
}

/// Unknown labels, empty and malformed files are refused naming the file (and line); nothing is
/// written.
#[test]
fn bad_input_is_refused_and_nothing_written() {
    let t = toy("tiny-bert_cls");
    let out = t.dir.join("out");
    let write = |name: &str, text: &str| {
        let p = t.dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let unknown = write("unknown.txt", "__label__pos fun\n__label__meh so so\n");
    let empty = write("empty.txt", "");
    let three = write(
        "three.txt",
        "__label__pos fun\n__label__neg dull\n__label__meh so so\n",
    );
    let unlabelled = write("unlabelled.txt", "__label__pos fun\nno label here\n");
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["--data", s(&t.train), "--valid", s(&unknown)],
            "unknown.txt:2: label \"meh\" is not one of the model's labels (neg, pos)".into(),
        ),
        (
            vec!["--data", s(&empty)],
            "empty.txt: no labelled sentence".into(),
        ),
        (
            vec!["--data", s(&three)],
            "its classifier has 2 classes and no id2label; the data has 3 labels".into(),
        ),
        (
            vec!["--data", s(&unlabelled)],
            "unlabelled.txt:2: expected `__label__LABEL text`".into(),
        ),
        (
            vec!["--data", s(&t.train), "--max-len", "4096"],
            "--max-len 4096 exceeds the model's 128 positions".into(),
        ),
    ];
    for (args, want) in cases {
        let mut full = vec!["train-classifier", s(&t.model), "-o", s(&out)];
        full.extend(args);
        let r = shrink(&full);
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success() && err.contains(&want), "{want}: {err}");
        assert!(!out.exists());
    }
    // Distillation: labels the teacher does not know, an empty file.
    let r = shrink(&[
        "distill",
        "--task",
        "classify",
        "--teacher",
        s(&t.model),
        "--data",
        s(&t.train),
        "-o",
        s(&out),
    ]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success()
            && err.contains(
                "train.txt:1: label \"pos\" is not one of the model's labels (LABEL_0, LABEL_1)"
            ),
        "{err}"
    );
    let r = shrink(&[
        "distill",
        "--task",
        "classify",
        "--teacher",
        s(&t.model),
        "--data",
        s(&empty),
        "-o",
        s(&out),
    ]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains("empty.txt"), "{err}");
    assert!(!out.exists());
    let leftovers: Vec<_> = std::fs::read_dir(&t.dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(leftovers.is_empty());
}
