//! `shrink compare` on the tiny Llama fixture: a calibrated output's report carries its
//! quantize time, and compare shows it (issue 11, item 5: GPTQ and AWQ rows used to show '–').

mod common;
use common::*;

/// A Lee-shaped corpus (300 documents, one per line) of pseudo-words in `dir`/lee.cor.
fn lee_corpus(dir: &std::path::Path) -> std::path::PathBuf {
    let words = std::fs::read_to_string(calib_text(dir, 3000)).unwrap();
    let words: Vec<&str> = words.split_whitespace().collect();
    let docs: Vec<String> = words.chunks(10).take(300).map(|c| c.join(" ")).collect();
    assert_eq!(docs.len(), 300);
    let p = dir.join("lee.cor");
    std::fs::write(&p, docs.join("\n")).unwrap();
    p
}

#[test]
fn compare_prints_the_quantize_time_of_gptq_and_awq_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_llama_with_tokenizer(tmp.path());
    set_positions(&model, 512);
    let calib = calib_text(tmp.path(), 1500);
    let corpus = lee_corpus(tmp.path());
    let (m, c) = (model.to_str().unwrap(), calib.to_str().unwrap());
    let mut outs = Vec::new();
    for method in ["gptq", "awq"] {
        let out = tmp.path().join(method);
        let o = out.to_str().unwrap();
        let r = shrink(&[
            "quantize",
            m,
            "--method",
            method,
            "--bits",
            "4",
            "--group-size",
            "32",
            "--calib",
            c,
            "--calib-format",
            "raw",
            "--calib-samples",
            "8",
            "--calib-seqlen",
            "64",
            "-o",
            o,
        ]);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        outs.push(out);
    }
    let mut args = vec!["compare", m];
    args.extend(outs.iter().map(|o| o.to_str().unwrap()));
    let corpus = corpus.to_str().unwrap();
    // No generation: the random fixture picks ids beyond the byte-level tokenizer's 256.
    args.extend(["--text", corpus, "--max-windows", "1", "--max-tokens", "0"]);
    let r = shrink(&args);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let md = String::from_utf8(r.stdout).unwrap();
    for out in &outs {
        let row = md
            .lines()
            .find(|l| l.starts_with(&format!("| {} |", out.display())))
            .unwrap_or_else(|| panic!("no row for {}:\n{md}", out.display()));
        let last = row.trim_end_matches('|').rsplit('|').next().unwrap().trim();
        assert!(
            last.parse::<f64>().is_ok_and(|t| t >= 0.0),
            "quantize time of {}: {last:?}\n{md}",
            out.display()
        );
    }

    args.push("--json");
    let r = shrink(&args);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    for (row, method) in v["models"].as_array().unwrap().iter().zip(["gptq", "awq"]) {
        assert!(row["method"].as_str().unwrap().starts_with(method), "{row}");
        assert!(row["quantize_seconds"].as_f64().is_some(), "{row}");
        assert!(row["bits_per_weight_quantized"].as_f64().unwrap() > 4.0);
        assert_eq!(row["layers"].as_array().unwrap().len(), 14);
    }
}
