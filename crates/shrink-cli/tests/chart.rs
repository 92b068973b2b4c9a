//! `shrink chart` end to end: a small CSV becomes a PNG of the size asked for; a bad row is
//! refused with its file and line, and no image is written.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

fn shrink(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shrink"))
        .args(args)
        .output()
        .expect("run shrink")
}

/// Width and height from a PNG's signature and IHDR chunk; panics if it is not a PNG.
fn png_size(path: &Path) -> (u32, u32) {
    let bytes = fs::read(path).expect("read png");
    assert!(
        bytes.len() > 33,
        "{} is too short for a PNG",
        path.display()
    );
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    assert_eq!(&bytes[12..16], b"IHDR", "first chunk is IHDR");
    let be = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap());
    (be(16), be(20))
}

const CSV: &str = "\
label,source,bits_per_weight,ppl,windows,command,extra
f32,base,32.000,27.3078,24,peers.md,x
nf4-dq,shrink,4.1270,34.1652,24,\"shrink quantize M --method nf4 --double-quant, then eval\",x
int8-channel,shrink,8.0234,27.3376,24,shrink eval,x
llama.cpp-Q4_K_M,llama.cpp,6.165,29.0199,24,peers.md,x
hqq-2bit-g64-axis0,hqq,2.500,85894.6882,24,peers.md,x
nf4-dq,shrink,4.1270,37.0552,74,full protocol,x
";

#[test]
fn writes_a_png_of_the_size_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("points.csv");
    fs::write(&data, CSV).unwrap();
    let png = dir.path().join("chart.png");
    let out = shrink(&[
        "chart",
        "--data",
        data.to_str().unwrap(),
        "-o",
        png.to_str().unwrap(),
        "--width",
        "900",
        "--height",
        "640",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(png_size(&png), (900, 640));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["points"], 5, "the 74-window row is filtered out: {v}");
    assert_eq!(v["shrink_points"], 2);
    assert_eq!(v["off_chart"][0]["label"], "hqq-2bit-g64-axis0");
    assert_eq!(v["baseline"]["label"], "f32");
    // Only the PNG is left: the temporary name was renamed onto it.
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");

    // --windows picks the other set; the default size is the library's.
    let out = shrink(&[
        "chart",
        "--data",
        data.to_str().unwrap(),
        "-o",
        png.to_str().unwrap(),
        "--windows",
        "74",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(png_size(&png), shrink_eval::chart::SIZE);
}

#[test]
fn a_bad_row_is_named_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("chart.png");
    let cases = [
        (CSV.replace("27.3376", "n/a"), ":4:", "ppl `n/a`"),
        (CSV.replace("6.165", "-1"), ":5:", "bits_per_weight `-1`"),
        (
            CSV.replace(",24,peers.md,x\nhqq", ",many,peers.md,x\nhqq"),
            ":5:",
            "windows `many`",
        ),
        (CSV.replace("ppl,", "perplexity,"), ":1:", "no column `ppl`"),
        (format!("{CSV}lonely,shrink\n"), ":8:", "2 fields"),
    ];
    for (i, (csv, line, what)) in cases.iter().enumerate() {
        let data = dir.path().join(format!("bad{i}.csv"));
        fs::write(&data, csv).unwrap();
        let out = shrink(&[
            "chart",
            "--data",
            data.to_str().unwrap(),
            "-o",
            png.to_str().unwrap(),
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "case {i} succeeded");
        assert!(
            err.contains(&format!("bad{i}.csv{line}")) && err.contains(what),
            "case {i}: {err}"
        );
        assert!(!png.exists(), "case {i} wrote {}", png.display());
    }

    // An unclosed quote names the line the record starts on; no rows at 7 windows names those found.
    let data = dir.path().join("quote.csv");
    fs::write(&data, CSV.replace("then eval\"", "then eval")).unwrap();
    let out = shrink(&[
        "chart",
        "--data",
        data.to_str().unwrap(),
        "-o",
        png.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("quote.csv:3: a quoted field is never closed"),
        "{err}"
    );
    let data = dir.path().join("good.csv");
    fs::write(&data, CSV).unwrap();
    let out = shrink(&[
        "chart",
        "--data",
        data.to_str().unwrap(),
        "-o",
        png.to_str().unwrap(),
        "--windows",
        "7",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no rows with windows = 7") && err.contains("24, 74"),
        "{err}"
    );
    assert!(!png.exists());
}

const SPARSITY_CSV: &str = "\
label,source,sparsity,ppl,windows
f32,base,0.0,27.3078,24
magnitude-50,shrink,0.5,41.2,24
wanda-50,shrink,0.5,33.9,24
sparsegpt-2:4,shrink,0.5,36.1,24
wanda-70,shrink,0.7,310.0,24
";

#[test]
fn charts_perplexity_against_sparsity() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("sparsity.csv");
    fs::write(&data, SPARSITY_CSV).unwrap();
    let png = dir.path().join("sparsity.png");
    let args = |x: &str| {
        vec![
            "chart".to_string(),
            "--data".into(),
            data.to_str().unwrap().into(),
            "-o".into(),
            png.to_str().unwrap().into(),
            "--x".into(),
            x.into(),
            "--json".into(),
        ]
    };
    let a = args("sparsity");
    let out = shrink(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["x"], "sparsity");
    assert_eq!(v["points"], 5);
    assert_eq!(v["baseline"]["label"], "f32");
    assert!(v["title"].as_str().unwrap().contains("sparsity"), "{v}");
    // The point above the perplexity cap is listed with its sparsity.
    assert_eq!(v["off_chart"][0]["label"], "wanda-70");
    let s = v["off_chart"][0]["sparsity"].as_f64().unwrap();
    assert!((s - 0.7).abs() < 1e-12, "{s}");
    assert_eq!(png_size(&png), (1600, 1000));
    // The default axis needs a bits_per_weight column, which this file lacks.
    fs::remove_file(&png).unwrap();
    let a = args("bits");
    let out = shrink(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no column `bits_per_weight`"), "{err}");
    assert!(!png.exists());
    // A sparsity of 1 or more is refused with its line.
    fs::write(
        &data,
        "label,source,sparsity,ppl,windows\nx,shrink,1.0,30,24\n",
    )
    .unwrap();
    let a = args("sparsity");
    let out = shrink(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(":2: sparsity `1.0`"),
        "{err}"
    );
}
