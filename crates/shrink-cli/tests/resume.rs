//! `--resume` of the layer-by-layer runs (issue 16): GPTQ and the importance matrix killed
//! midway on the real model, and GPTQ, AWQ, SparseGPT and Wanda failing on a full disk on the
//! tiny fixtures, continue after their last finished layer and write exactly the bytes of an
//! uninterrupted run (on the real model, the uninterrupted run on one thread and the others on
//! two); the run directory is removed once the output is written; a run directory holding
//! another run is refused, and so is resuming with other flags.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Finished layers the run directory `dir` declares (0 when none).
fn layers_kept(dir: &Path) -> u64 {
    std::fs::read(dir.join("state.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["layers"].as_u64())
        .unwrap_or(0)
}

/// Run `args` and send `sig` once the run directory `dir` holds `n` finished layers; whether
/// the run was stopped (not finished first), and its stderr.
fn stop_after_layers(args: &[String], dir: &Path, n: u64, sig: libc::c_int) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shrink"))
        .env("RAYON_NUM_THREADS", "2")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while layers_kept(dir) < n {
        if child.try_wait().unwrap().is_some() || t.elapsed() > Duration::from_secs(300) {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    // SAFETY: signalling the child this test spawned (it may have exited: then ESRCH).
    unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    let out = child.wait_with_output().unwrap();
    (
        !out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Run shrink with `args` on `n` threads.
fn on_threads(n: usize, args: &[String]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_shrink"))
        .env("RAYON_NUM_THREADS", n.to_string())
        .args(args)
        .output()
        .unwrap()
}

/// The files of an output that two runs write identically (reports hold timings).
fn weights(out: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    snapshot(out)
        .into_iter()
        .filter(|(p, _)| !p.to_string_lossy().ends_with(".json"))
        .map(|(p, b)| (p.strip_prefix(out).unwrap().to_path_buf(), b))
        .collect()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// `args` then `-o out`.
fn to(args: &[&str], out: &Path) -> Vec<String> {
    let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    v.extend(["-o".into(), out.display().to_string()]);
    v
}

#[test]
fn killed_runs_of_the_real_model_resume_to_the_same_bytes() {
    let Some(g) = real_model() else { return };
    let calib = asset("lee_background.cor");
    let (g, calib) = (g.to_str().unwrap(), calib.to_str().unwrap());
    let small = [
        "--calib",
        calib,
        "--calib-samples",
        "6",
        "--calib-seqlen",
        "96",
        "--keep-every",
        "0",
    ];
    let cases: Vec<(&str, Vec<&str>)> = vec![
        (
            "gptq",
            [
                &["quantize", g, "--method", "gptq", "--bits", "4"][..],
                &small,
            ]
            .concat(),
        ),
        ("imatrix", [&["imatrix", g][..], &small].concat()),
    ];
    let tmp = tempfile::tempdir().unwrap();
    for (name, args) in cases {
        let t0 = Instant::now();
        let whole = tmp.path().join(format!("{name}-whole"));
        // The uninterrupted run on one thread, the others on two: the bytes are the same
        // whatever the thread count too (the determinism test of these two methods).
        let r = on_threads(1, &to(&args, &whole));
        assert!(
            r.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        eprintln!("{name}: whole run {:.1} s", t0.elapsed().as_secs_f64());
        assert!(
            !tmp.path().join(format!("{name}-whole.run")).exists(),
            "{name}: run dir left"
        );

        let out = tmp.path().join(name);
        let run_dir = tmp.path().join(format!("{name}.run"));
        let full = to(&args, &out);
        // Killed outright, after 7 layers; then interrupted after 19 (it says what it kept).
        let (stopped, _) = stop_after_layers(&full, &run_dir, 7, libc::SIGKILL);
        assert!(stopped && !out.exists(), "{name}: finished before the kill");
        assert!(layers_kept(&run_dir) >= 7, "{name}");

        // Without --resume the kept run is not thrown away.
        refused(&strs(&full), &["--resume", "earlier run"], Some(&out));
        // Nor taken up by a run on other samples.
        let mut other: Vec<String> = full.iter().map(|a| a.replace("96", "95")).collect();
        other.push("--resume".into());
        refused(&strs(&other), &["different run", "samples"], Some(&out));

        let mut resume = full.clone();
        resume.push("--resume".into());
        let (stopped, err) = stop_after_layers(&resume, &run_dir, 19, libc::SIGINT);
        assert!(stopped, "{name}: finished before the interrupt");
        assert!(
            err.contains("--resume") && err.contains(run_dir.to_str().unwrap()),
            "{name}: {err}"
        );
        assert!(layers_kept(&run_dir) >= 19, "{name}");

        let r = on_threads(2, &resume);
        assert!(
            r.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        assert!(!run_dir.exists(), "{name}: the run directory is left");
        if name == "imatrix" {
            assert!(
                std::fs::read(&out).unwrap() == std::fs::read(&whole).unwrap(),
                "{name}"
            );
        } else {
            assert!(
                weights(&out) == weights(&whole),
                "{name}: resumed bytes differ"
            );
            let rep = same_report(&out, &whole, name);
            assert!(
                rep["resumed_after_layers"].as_u64().unwrap() >= 19,
                "{name}"
            );
        }
        eprintln!("{name}: {:.1} s", t0.elapsed().as_secs_f64());
    }
}

#[test]
fn resume_with_nothing_kept_starts_from_the_first_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_llama_with_tokenizer(tmp.path());
    let calib = calib_text(tmp.path(), 3000);
    let out = tmp.path().join("q");
    let state = tmp.path().join("state");
    let args = [
        "quantize",
        model.to_str().unwrap(),
        "--method",
        "gptq",
        "--group-size",
        "16",
        "--calib",
        calib.to_str().unwrap(),
        "--calib-format",
        "raw",
        "--calib-samples",
        "4",
        "--calib-seqlen",
        "32",
        "--resume",
        "--run-dir",
        state.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ];
    let r = shrink(&args);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(!state.exists());
    // A run directory inside the input is refused.
    let mut inside: Vec<&str> = args.to_vec();
    let i = inside.iter().position(|a| *a == "--run-dir").unwrap();
    let in_model = model.join("run");
    inside[i + 1] = in_model.to_str().unwrap();
    let out2 = tmp.path().join("q2");
    *inside.last_mut().unwrap() = out2.to_str().unwrap();
    refused(&inside, &["inside the input"], Some(&out2));
    assert!(!in_model.exists());
    // Flags that keep no layers refuse --resume rather than ignore it.
    let mut rtn: Vec<&str> = vec!["quantize", model.to_str().unwrap(), "--method", "hqq"];
    let h = tmp.path().join("h");
    rtn.extend(["--resume", "-o", h.to_str().unwrap()]);
    refused(&rtn, &["--resume", "keeps no finished layers"], None);
}

/// Whether two report values are equal, numbers to 1e-12 relative: sums of per-row figures
/// (GPTQ's losses) are added in another order on another number of threads.
fn close(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value::{Array, Number, Object};
    match (a, b) {
        (Number(x), Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            (x - y).abs() <= 1e-12 * x.abs().max(y.abs())
        }
        (Array(x), Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| close(a, b)),
        (Object(x), Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| close(v, w)))
        }
        _ => a == b,
    }
}

/// The report of `out`, whose per-layer figures (what the finished layers carried) must equal
/// those of `whole`'s.
fn same_report(out: &Path, whole: &Path, name: &str) -> serde_json::Value {
    let read = |d: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(d.join("shrink-quantize.json")).unwrap()).unwrap()
    };
    let (rep, whole_rep) = (read(out), read(whole));
    for key in [
        "relative_rmse",
        "gptq_loss_per_layer",
        "awq_layers",
        "layer_sparsity",
        "sparsegpt_loss_per_layer",
    ] {
        assert!(
            close(&rep[key], &whole_rep[key]),
            "{name}: {key}: {} against {}",
            rep[key],
            whole_rep[key]
        );
    }
    rep
}

#[test]
fn runs_failing_on_a_full_disk_resume_to_the_same_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let llama = tiny_llama_with_tokenizer(tmp.path());
    let gpt2 = fixture_with_tokenizer(tmp.path(), "tiny-gpt2");
    let calib = calib_text(tmp.path(), 3000);
    let (llama, gpt2, calib) = (
        llama.to_str().unwrap(),
        gpt2.to_str().unwrap(),
        calib.to_str().unwrap(),
    );
    let cal = raw_calib(calib);
    let cases: Vec<(&str, Vec<&str>)> = vec![
        (
            "gptq-llama",
            vec!["quantize", llama, "--method", "gptq", "--group-size", "16"],
        ),
        (
            "awq-llama",
            vec!["quantize", llama, "--method", "awq", "--group-size", "16"],
        ),
        (
            "awq-gpt2",
            vec!["quantize", gpt2, "--method", "awq", "--group-size", "16"],
        ),
        (
            "sparsegpt-llama",
            vec!["prune", llama, "--method", "sparsegpt", "--pattern", "2:4"],
        ),
        (
            "wanda-llama",
            vec!["prune", llama, "--method", "wanda", "--sparsity", "0.5"],
        ),
    ];
    for (name, args) in cases {
        let args = [&args[..], &cal].concat();
        let whole = tmp.path().join(format!("{name}-whole"));
        let r = shrink(&strs(&to(&args, &whole)));
        assert!(
            r.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        // The disk fills as the last bytes of the output are written. The writer buffers a
        // megabyte, so on these small models both blocks are finished and kept by then (what
        // a resumed run does after the last kept layer is tested on the real model above).
        let limit = std::fs::metadata(whole.join("model.safetensors"))
            .unwrap()
            .len()
            - 16;
        let out = tmp.path().join(name);
        let run_dir = tmp.path().join(format!("{name}.run"));
        let r = shrink_limited(&to(&args, &out), limit);
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success() && !out.exists(), "{name}: {err}");
        assert!(
            err.contains("note: 2 finished layers are kept"),
            "{name}: {err}"
        );
        assert_eq!(layers_kept(&run_dir), 2, "{name}");

        let mut resume = to(&args, &out);
        resume.push("--resume".into());
        let r = shrink(&strs(&resume));
        assert!(
            r.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        assert!(!run_dir.exists(), "{name}: the run directory is left");
        assert!(
            weights(&out) == weights(&whole),
            "{name}: resumed bytes differ"
        );
        let rep = same_report(&out, &whole, name);
        assert_eq!(rep["resumed_after_layers"], 2, "{name}");
    }
}
