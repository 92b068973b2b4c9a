//! `shrink distill` end to end on the tiny fixtures: a student made from its teacher learns,
//! the output is a normal checkpoint, a killed run resumes exactly, bad input is refused.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{fixture, shrink};

/// Token ids as the JSON `--text-format ids` reads: `n` tokens cycling through a fixed
/// pseudo-random order of 97 ids below 512 (each token determines the next: learnable).
fn ids_text(dir: &Path, n: usize) -> PathBuf {
    let mut x = 7u64;
    let cycle: Vec<u32> = (0..97)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 40) as u32 % 512
        })
        .collect();
    let ids: Vec<u32> = (0..n).map(|i| cycle[i % 97]).collect();
    let p = dir.join("ids.json");
    std::fs::write(&p, serde_json::to_string(&vec![ids]).unwrap()).unwrap();
    p
}

fn distill_args<'a>(text: &'a str, out: &'a str, steps: &'a str) -> Vec<&'a str> {
    vec![
        "distill",
        "--text",
        text,
        "--text-format",
        "ids",
        "--steps",
        steps,
        "--seq-len",
        "16",
        "-o",
        out,
    ]
}

fn log_lines(run_dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run_dir.join("train.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn ok(o: &std::process::Output) {
    assert!(
        o.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn student_from_teacher_learns_and_is_a_normal_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let text = ids_text(dir.path(), 1200);
    let out = dir.path().join("student");
    let teacher = fixture("tiny-llama");
    let (t, o) = (text.to_str().unwrap(), out.to_str().unwrap());
    let mut args = distill_args(t, o, "30");
    args.extend([
        "--teacher",
        teacher.to_str().unwrap(),
        "--student-from-teacher",
        "layers=1",
        "--lr",
        "1e-2",
        "--alpha",
        "0.2",
        "--json",
    ]);
    let r = shrink(&args);
    ok(&r);
    let report: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(report["summary"]["steps"], 30);
    // A smaller model of the same architecture, every file a checkpoint needs.
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["num_hidden_layers"], 1);
    for f in [
        "model.safetensors",
        "train.jsonl",
        "loss.png",
        "distill.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let ckpt = shrink_io_open(&out);
    assert!(ckpt.success(), "inspect the output");
    // The loss fell: the last five steps' mean below the first five's.
    let log = log_lines(&dir.path().join("student.run"));
    assert_eq!(log.len(), 30);
    let mean = |s: &[serde_json::Value]| {
        s.iter().map(|l| l["loss"].as_f64().unwrap()).sum::<f64>() / s.len() as f64
    };
    assert!(
        mean(&log[25..]) < 0.8 * mean(&log[..5]),
        "loss {} → {}",
        mean(&log[..5]),
        mean(&log[25..])
    );
    // The run is over: no checkpoint or partial one is left behind.
    let run = dir.path().join("student.run");
    for n in ["checkpoint", ".checkpoint.partial", ".checkpoint.previous"] {
        assert!(!run.join(n).exists(), "{n} left in the run directory");
    }
    // The student can be quantized like any model.
    let q = dir.path().join("q");
    ok(&shrink(&[
        "quantize",
        out.to_str().unwrap(),
        "--method",
        "int",
        "--bits",
        "8",
        "--group-size",
        "32",
        "-o",
        q.to_str().unwrap(),
    ]));
}

fn shrink_io_open(p: &Path) -> std::process::ExitStatus {
    shrink(&["inspect", p.to_str().unwrap()]).status
}

/// A run killed with SIGKILL at an arbitrary moment and resumed ends with the same log and the
/// same weights as an uninterrupted run with the same seed.
#[test]
fn sigkill_then_resume_continues_the_same_run() {
    let dir = tempfile::tempdir().unwrap();
    let text = ids_text(dir.path(), 1200);
    let teacher = fixture("tiny-llama");
    let student = fixture("tiny-llama");
    let run = |out: &Path, extra: &[&str]| {
        let (t, o) = (text.to_str().unwrap(), out.to_str().unwrap());
        let mut args = distill_args(t, o, "60");
        args.extend([
            "--teacher",
            teacher.to_str().unwrap(),
            "--student",
            student.to_str().unwrap(),
            "--save-every",
            "5",
            "--lr",
            "3e-3",
        ]);
        args.extend(extra);
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let full = dir.path().join("full");
    ok(&shrink(
        &run(&full, &[])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    ));

    let killed = dir.path().join("killed");
    let run_dir = dir.path().join("killed.run");
    let mut child = Command::new(env!("CARGO_BIN_EXE_shrink"))
        .args(run(&killed, &[]))
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Kill once a checkpoint exists and the run has gone past it.
    let t0 = std::time::Instant::now();
    loop {
        let lines = std::fs::read_to_string(run_dir.join("train.jsonl"))
            .map(|s| s.lines().count())
            .unwrap_or(0);
        if lines >= 12 || t0.elapsed().as_secs() > 120 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!killed.exists(), "a killed run wrote its output");
    let done = log_lines(&run_dir).len();
    assert!(done < 60, "the run finished before it was killed");
    assert!(!run_dir
        .join(".checkpoint.partial")
        .join("state.json")
        .exists());

    ok(&shrink(
        &run(&killed, &["--resume"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    ));
    let (a, b) = (log_lines(&dir.path().join("full.run")), log_lines(&run_dir));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x["step"], y["step"]);
        assert_eq!(x["loss"], y["loss"], "step {}", x["step"]);
    }
    assert_eq!(
        std::fs::read(full.join("model.safetensors")).unwrap(),
        std::fs::read(killed.join("model.safetensors")).unwrap(),
        "resumed weights differ from the uninterrupted run's"
    );
}

/// Ctrl-C (SIGINT) writes a checkpoint first and says how to continue.
#[test]
fn ctrl_c_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let text = ids_text(dir.path(), 1200);
    let teacher = fixture("tiny-llama");
    let out = dir.path().join("out");
    let (t, o) = (text.to_str().unwrap(), out.to_str().unwrap());
    let mut args = distill_args(t, o, "100000");
    args.extend([
        "--teacher",
        teacher.to_str().unwrap(),
        "--student",
        teacher.to_str().unwrap(),
        "--save-every",
        "0",
    ]);
    let child = Command::new(env!("CARGO_BIN_EXE_shrink"))
        .args(&args)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let run_dir = dir.path().join("out.run");
    let t0 = std::time::Instant::now();
    while !run_dir.join("train.jsonl").exists() && t0.elapsed().as_secs() < 120 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    let st = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let r = child.wait_with_output().unwrap();
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.contains("interrupted at step") && err.contains("--resume"),
        "{err}"
    );
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(run_dir.join("checkpoint").join("state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        state["step"].as_u64().unwrap() as usize,
        log_lines(&run_dir).len()
    );
    assert!(!out.exists());
}

fn refused(args: &[&str], needle: &str) {
    let r = shrink(args);
    assert!(!r.status.success(), "{args:?} succeeded");
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains(needle), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let text = ids_text(dir.path(), 400);
    let teacher = fixture("tiny-llama");
    let tt = teacher.to_str().unwrap();
    let (t, d) = (text.to_str().unwrap(), dir.path());
    let out = d.join("o");
    let o = out.to_str().unwrap();
    let with = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = distill_args(t, o, "3")
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.extend(["--teacher".to_string(), tt.to_string()]);
        if !extra.contains(&"--lr") {
            a.extend(["--lr".to_string(), "3e-3".to_string()]);
        }
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let run = |a: Vec<String>, needle: &str| {
        refused(&a.iter().map(String::as_str).collect::<Vec<_>>(), needle)
    };

    // A student with another vocabulary: tiny-llama with its embedding cut to 256 rows.
    let other = d.join("small-vocab");
    std::fs::create_dir(&other).unwrap();
    let bytes = std::fs::read(teacher.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in st.tensors() {
        let mut shape = view.shape().to_vec();
        let mut data = view.data().to_vec();
        if name == "model.embed_tokens.weight" {
            data.truncate(256 * shape[1] * 4);
            shape[0] = 256;
        }
        tensors.push((name, shape, data));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    std::fs::write(
        other.join("model.safetensors"),
        safetensors::serialize(views, None).unwrap(),
    )
    .unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(teacher.join("config.json")).unwrap()).unwrap();
    cfg["vocab_size"] = 256.into();
    std::fs::write(other.join("config.json"), cfg.to_string()).unwrap();
    run(
        with(&["--student", other.to_str().unwrap()]),
        "different vocabularies",
    );

    // Too little text for one window.
    let short = d.join("short.json");
    std::fs::write(&short, "[[1, 2, 3, 4, 5]]").unwrap();
    let mut a = with(&["--student", tt]);
    let i = a.iter().position(|x| x == t).unwrap();
    a[i] = short.to_str().unwrap().into();
    run(a, "window");
    let empty = d.join("empty.json");
    std::fs::write(&empty, "[[]]").unwrap();
    let mut a = with(&["--student", tt]);
    a[i] = empty.to_str().unwrap().into();
    run(a, "no tokens");

    // Impossible options.
    run(with(&["--student", tt, "--alpha", "1.5"]), "--alpha");
    run(
        with(&["--student", tt, "--temperature", "0"]),
        "--temperature",
    );
    run(with(&["--student-from-teacher", "layers=9"]), "blocks");
    run(with(&["--student-from-teacher", "depth=1"]), "unknown key");
    run(
        with(&["--student", tt, "--kl", "reverse", "--teacher-topk", "8"]),
        "reverse KL",
    );
    // Resuming nothing; an output that exists.
    run(with(&["--student", tt, "--resume"]), "no checkpoint");
    std::fs::create_dir(&out).unwrap();
    run(with(&["--student", tt]), "already exists");
    std::fs::remove_dir(&out).unwrap();

    // A loss that becomes NaN: the step is named and the last good checkpoint kept.
    let _ = std::fs::remove_dir_all(d.join("o.run"));
    let r = shrink(
        &with(&[
            "--student",
            tt,
            "--lr",
            "1e30",
            "--clip",
            "0",
            "--save-every",
            "1",
        ])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>(),
    );
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.contains("at step") && err.contains("last good checkpoint"),
        "{err}"
    );
    assert!(d
        .join("o.run")
        .join("checkpoint")
        .join("state.json")
        .is_file());
    assert!(!out.exists());
}
