//! Faults injected into every command that writes (issue 16): a full disk mid-write, and
//! interruptions (SIGINT, SIGTERM) and kills (SIGKILL) at points through a run on the real
//! model. Afterwards the output holds the complete result (the same bytes as an undisturbed
//! run) or nothing, no hidden temporary is left behind (a killed run's is removed by the next
//! run of the same output), errors name the user's `-o`, and the input is untouched.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// The hidden temporaries (`.NAME.partial-PID…`) in `dir`.
fn partials(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            n.contains(".partial-").then_some(n)
        })
        .collect()
}

/// `args` with every `{out}` replaced by `out`.
fn with_out(args: &[String], out: &Path) -> Vec<String> {
    args.iter()
        .map(|a| a.replace("{out}", out.to_str().unwrap()))
        .collect()
}

/// The files of an output that an undisturbed run writes identically (reports hold timings).
fn weights(out: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    snapshot(out)
        .into_iter()
        .filter(|(p, _)| {
            let n = p.file_name().unwrap().to_string_lossy();
            !n.ends_with(".json") && !n.ends_with(".md") && !n.ends_with(".jsonl")
        })
        .map(|(p, b)| (p.strip_prefix(out).unwrap().to_path_buf(), b))
        .collect()
}

/// Each command that writes, as arguments with `{out}` for the output path and the name the
/// output gets (a file's extension matters), on the tiny Llama with a tokenizer.
fn writers(dir: &Path) -> (Vec<(Vec<String>, &'static str)>, PathBuf) {
    let model = tiny_llama_with_tokenizer(dir);
    let m = model.to_str().unwrap().to_string();
    let calib = calib_text(dir, 3000).to_str().unwrap().to_string();
    let csv = dir.join("points.csv");
    std::fs::write(
        &csv,
        "label,source,bits_per_weight,ppl,windows\nf32,shrink,32,10.5,24\nint4,shrink,4.5,11.2,24\n",
    )
    .unwrap();
    let cal = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        v.extend(raw_calib(&calib).map(String::from));
        v
    };
    let train = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        v.extend(
            [
                "--text",
                &calib,
                "--text-format",
                "raw",
                "--steps",
                "2",
                "--seq-len",
                "16",
            ]
            .map(String::from),
        );
        v
    };
    let s = |v: &[&str]| -> Vec<String> { v.iter().map(|s| s.to_string()).collect() };
    // The GGUF methods take a GGUF input.
    let g = dir.join("model.gguf").to_str().unwrap().to_string();
    let r = shrink(&["export", &m, "--to", "gguf", "--type", "f32", "-o", &g]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    // Inputs of the commands that take a quantized model or a classifier.
    let nf4 = dir.join("nf4").to_str().unwrap().to_string();
    let gptq = dir.join("gptq-in").to_str().unwrap().to_string();
    for args in [
        s(&["quantize", &m, "--method", "nf4", "-o", &nf4]),
        cal(&[
            "quantize",
            &m,
            "--method",
            "gptq",
            "--group-size",
            "32",
            "-o",
            &gptq,
        ]),
    ] {
        let r = shrink(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    }
    let bert = fixture_with_tokenizer(dir, "tiny-bert_cls");
    let bert = bert.to_str().unwrap().to_string();
    let labelled = dir.join("labelled.txt");
    let lines: Vec<String> = (0..32)
        .map(|i| {
            let (label, word) = if i % 2 == 0 {
                ("LABEL_1", "great")
            } else {
                ("LABEL_0", "dull")
            };
            format!("__label__{label} a {word} film {i}")
        })
        .collect();
    std::fs::write(&labelled, lines.join("\n") + "\n").unwrap();
    let labelled = labelled.to_str().unwrap().to_string();
    let o = "{out}";
    let cases = vec![
        (
            train(&["qlora", &nf4, "--teacher", &m, "--rank", "4", "-o", o]),
            "out",
        ),
        (train(&["finetune", &gptq, "--teacher", &m, "-o", o]), "out"),
        (
            s(&[
                "train-classifier",
                &bert,
                "--data",
                &labelled,
                "--epochs",
                "1",
                "--batch",
                "8",
                "-o",
                o,
            ]),
            "out",
        ),
        (
            s(&["compare", &bert, &bert, "--data", &labelled, "--report", o]),
            "out",
        ),
        (s(&["convert", &m, "--dtype", "bf16", "-o", o]), "out"),
        (
            s(&["quantize", &m, "--method", "nf4", "--double-quant", "-o", o]),
            "out",
        ),
        (
            s(&[
                "quantize",
                &m,
                "--method",
                "hqq",
                "--bits",
                "4",
                "--group-size",
                "32",
                "-o",
                o,
            ]),
            "out",
        ),
        (
            cal(&[
                "quantize",
                &m,
                "--method",
                "gptq",
                "--group-size",
                "32",
                "-o",
                o,
            ]),
            "out",
        ),
        (
            cal(&[
                "quantize",
                &m,
                "--method",
                "awq",
                "--group-size",
                "32",
                "-o",
                o,
            ]),
            "out",
        ),
        (
            s(&["quantize", &g, "--method", "q4_k_m", "-o", o]),
            "out.gguf",
        ),
        (
            s(&["export", &m, "--to", "gguf", "--type", "q8_0", "-o", o]),
            "out.gguf",
        ),
        (
            s(&[
                "export",
                &m,
                "--to",
                "gptq",
                "--type",
                "int4",
                "--group-size",
                "32",
                "-o",
                o,
            ]),
            "out",
        ),
        (
            cal(&[
                "prune",
                &m,
                "--method",
                "wanda",
                "--sparsity",
                "0.5",
                "-o",
                o,
            ]),
            "out",
        ),
        (
            cal(&[
                "prune",
                &m,
                "--structured",
                "neurons",
                "--keep-ratio",
                "0.75",
                "-o",
                o,
            ]),
            "out",
        ),
        (s(&["rotate", &m, "-o", o]), "out"),
        (cal(&["imatrix", &m, "-o", o]), "out.dat"),
        (
            s(&["chart", "--data", csv.to_str().unwrap(), "-o", o]),
            "out.png",
        ),
        (
            train(&[
                "distill",
                "--teacher",
                &m,
                "--student-from-teacher",
                "layers=1",
                "-o",
                o,
            ]),
            "out",
        ),
        (
            train(&["qat", &m, "--bits", "4", "--group-size", "32", "-o", o]),
            "out",
        ),
    ];
    (cases, model)
}

/// The run `what` failed with `cause`, naming the user's `out` (not a temporary), without a
/// panic.
fn failed_naming(what: &str, r: &Output, cause: &str, out: &Path) {
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success(), "{what}: succeeded");
    assert!(err.contains(cause), "{what}: {err}");
    assert!(
        err.contains(out.to_str().unwrap()),
        "{what}: the error does not name -o: {err}"
    );
    assert!(
        !err.contains(".partial"),
        "{what}: names a temporary: {err}"
    );
    assert!(!err.contains("panicked"), "{what}: {err}");
}

#[test]
fn a_full_disk_leaves_nothing_and_names_the_output() {
    let tmp = tempfile::tempdir().unwrap();
    let (cases, model) = writers(tmp.path());
    let input = snapshot(&model);
    for (i, (args, name)) in cases.iter().enumerate() {
        let what = format!("{} {}", args[0], args[1..].join(" "));
        // An undisturbed run, for the size of what it writes.
        let done = tmp.path().join(format!("done{i}"));
        std::fs::create_dir(&done).unwrap();
        let full = done.join(name);
        let r = shrink(
            &with_out(args, &full)
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        );
        assert!(
            r.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        let largest = snapshot(&full).iter().map(|(_, b)| b.len()).max().unwrap() as u64;
        // The same run on a disk that fills halfway through its largest file.
        let failed = tmp.path().join(format!("failed{i}"));
        std::fs::create_dir(&failed).unwrap();
        let out = failed.join(name);
        let r = shrink_limited(&with_out(args, &out), largest / 2);
        failed_naming(&what, &r, "File too large", &out);
        assert!(!out.exists(), "{what}: a half-written output is left");
        assert_eq!(partials(&failed), Vec::<String>::new(), "{what}");
        assert!(snapshot(&model) == input, "{what}: the input changed");
    }
}

/// Run a copy of shrink, `bin`, with `args` as an unprivileged user (nobody) when the tests run
/// as root, whom directory permissions do not stop.
fn shrink_unprivileged(bin: &Path, args: &[String]) -> Output {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new(bin);
    c.args(args);
    // SAFETY: getuid is always safe; setgid/setuid between fork and exec are async-signal-safe.
    if unsafe { libc::geteuid() } == 0 {
        unsafe {
            c.pre_exec(|| {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(65534) != 0
                    || libc::setuid(65534) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    c.output().expect("run shrink")
}

#[test]
fn a_read_only_output_directory_fails_naming_the_output() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let mode = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
    // Everything the unprivileged run reads lies in the test's directory, readable by all: the
    // inputs, and a copy of the binary (the checkout's path may not be).
    mode(tmp.path(), 0o755).unwrap();
    let (cases, model) = writers(tmp.path());
    let bin = tmp.path().join("shrink");
    std::fs::copy(env!("CARGO_BIN_EXE_shrink"), &bin).unwrap();
    mode(&bin, 0o755).unwrap();
    let input = snapshot(&model);
    let ro = tmp.path().join("read-only");
    std::fs::create_dir(&ro).unwrap();
    mode(&ro, 0o555).unwrap();
    for (args, name) in &cases {
        let what = format!("{} {}", args[0], args[1..].join(" "));
        let out = ro.join(name);
        let r = shrink_unprivileged(&bin, &with_out(args, &out));
        failed_naming(&what, &r, "Permission denied", &out);
        assert!(
            std::fs::read_dir(&ro).unwrap().next().is_none(),
            "{what}: left a file"
        );
    }
    assert!(snapshot(&model) == input, "the input changed");
}

/// What a signal `sig` sent `after` into `args`' run left: the run's status and stderr.
fn signalled(args: &[String], sig: libc::c_int, after: Duration) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_shrink"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(after);
    // SAFETY: signalling the child this test spawned (it may have exited: then ESRCH).
    unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    child.wait_with_output().unwrap()
}

#[test]
fn interrupted_and_killed_runs_leave_the_whole_result_or_nothing() {
    let Some(g) = real_model() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let gs = g.to_str().unwrap().to_string();
    let input = snapshot(&g);
    let commands: Vec<(Vec<String>, &str)> = [
        (vec!["convert", &gs, "--dtype", "bf16", "--no-check"], "out"),
        (
            vec!["quantize", &gs, "--method", "hqq", "--bits", "4"],
            "out",
        ),
        (
            vec!["export", &gs, "--to", "gguf", "--type", "q4_k_m"],
            "out.gguf",
        ),
        (
            vec![
                "prune",
                &gs,
                "--method",
                "magnitude",
                "--sparsity",
                "0.5",
                "--dequantize",
            ],
            "out",
        ),
    ]
    .into_iter()
    .map(|(a, n)| {
        let mut a: Vec<String> = a.into_iter().map(String::from).collect();
        a.extend(["-o".into(), "{out}".into()]);
        (a, n)
    })
    .collect();
    for (i, (args, name)) in commands.iter().enumerate() {
        let what = args[..2].join(" ");
        let full = tmp.path().join(format!("whole{i}-{name}"));
        let r = shrink(
            &with_out(args, &full)
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        );
        assert!(r.status.success(), "{what}");
        let whole = weights(&full);
        // Signals early, midway and late through the run (a run takes 1–3 s here).
        for (k, (sig, ms)) in [
            (libc::SIGINT, 150),
            (libc::SIGTERM, 700),
            (libc::SIGINT, 1500),
            (libc::SIGKILL, 200),
            (libc::SIGKILL, 900),
        ]
        .into_iter()
        .enumerate()
        {
            let dir = tmp.path().join(format!("run{i}-{k}"));
            std::fs::create_dir(&dir).unwrap();
            let out = dir.join(name);
            let r = signalled(&with_out(args, &out), sig, Duration::from_millis(ms));
            let err = String::from_utf8_lossy(&r.stderr);
            let case = format!("{what}: signal {sig} after {ms} ms");
            assert!(!err.contains("panicked"), "{case}: {err}");
            if r.status.success() {
                // Finished before the signal: the whole result.
                assert!(
                    weights(&out) == whole,
                    "{case}: finished, but not the whole result"
                );
                continue;
            }
            assert!(!out.exists(), "{case}: an output is left");
            if sig == libc::SIGKILL {
                // A killed run cannot clean up; the next run of the same output does.
                let r = shrink(
                    &with_out(args, &out)
                        .iter()
                        .map(String::as_str)
                        .collect::<Vec<_>>(),
                );
                assert!(r.status.success(), "{case}: the run after");
                assert!(weights(&out) == whole, "{case}: the run after differs");
            } else {
                use std::os::unix::process::ExitStatusExt;
                assert_eq!(
                    r.status.code(),
                    Some(128 + sig),
                    "{case}: {:?}",
                    r.status.signal()
                );
                assert!(err.contains("interrupted"), "{case}: {err}");
            }
            assert_eq!(partials(&dir), Vec::<String>::new(), "{case}");
        }
    }
    assert!(snapshot(&g) == input, "the input changed");
}
