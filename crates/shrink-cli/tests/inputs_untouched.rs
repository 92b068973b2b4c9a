//! No output path, with or without `--overwrite`, replaces or writes inside an input: the
//! commands refuse before reading anything and leave the input's bytes as they were.

mod common;
use common::*;

use std::fs;
use std::path::{Path, PathBuf};

/// A copy of the tiny Llama fixture in `dir`.
fn model_copy(dir: &Path) -> PathBuf {
    let src = fixture("tiny-llama");
    let dst = dir.join("model");
    fs::create_dir(&dst).unwrap();
    for e in fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
    dst
}

#[test]
fn no_output_replaces_or_enters_an_input() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_copy(tmp.path());
    let m = model.to_str().unwrap();
    let before = snapshot(&model);
    let inside = |name: &str| model.join(name).to_str().unwrap().to_string();
    // export to GGUF over the model's own files, even with --overwrite.
    for name in ["model.safetensors", "config.json", "new.gguf"] {
        let o = inside(name);
        refused(
            &[
                "export",
                m,
                "--to",
                "gguf",
                "--type",
                "f32",
                "-o",
                &o,
                "--overwrite",
            ],
            &["inside the input"],
            None,
        );
    }
    // quantize / convert / export to a directory inside the model's.
    let sub = inside("sub");
    refused(
        &[
            "quantize",
            m,
            "--method",
            "int",
            "--bits",
            "4",
            "--group-size",
            "32",
            "-o",
            &sub,
        ],
        &["inside the input"],
        None,
    );
    refused(
        &["convert", m, "--dtype", "bf16", "-o", &sub],
        &["inside the input"],
        None,
    );
    // compare --report into the model's directory, and into an existing directory.
    let text = tmp.path().join("text.cor");
    fs::write(&text, "x").unwrap();
    let t = text.to_str().unwrap();
    refused(
        &["compare", m, m, "--text", t, "--report", &sub],
        &["inside the input"],
        None,
    );
    let existing = tmp.path().join("old-report");
    fs::create_dir(&existing).unwrap();
    fs::write(existing.join("keep.png"), b"png").unwrap();
    refused(
        &[
            "compare",
            m,
            m,
            "--text",
            t,
            "--report",
            existing.to_str().unwrap(),
        ],
        &["already exists"],
        None,
    );
    assert_eq!(fs::read(existing.join("keep.png")).unwrap(), b"png");
    assert_eq!(snapshot(&model), before, "the model directory is unchanged");
    // chart over its own data.
    let data = tmp.path().join("data.csv");
    let csv = "label,source,bits_per_weight,ppl,windows\nf32,shrink,32,29.3,24\n";
    fs::write(&data, csv).unwrap();
    let d = data.to_str().unwrap();
    refused(
        &["chart", "--data", d, "-o", d],
        &["same path as an input"],
        None,
    );
    assert_eq!(fs::read_to_string(&data).unwrap(), csv);
    // Nothing else appeared beside them (no temporary directories left).
    let names: Vec<String> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 4, "{names:?}");
}
