//! Soak a harness the way a persistent-mode fuzzer does: one process calls it over the files of
//! some directories again and again, and the process's address space and resident memory are
//! printed as they go. A reader that leaks, or an allocator whose address space grows with the
//! calls, shows here as a rising `VmSize` long before a 1 GiB limit (AFL's `-m 1024`) turns it
//! into an abort that no single input reproduces.
//!
//! ```sh
//! cargo run --release -p shrink-fuzz --example soak -- TARGET CALLS EVERY DIR...
//! ```
//! e.g. `soak chat_template 200000 10000 fuzz/seeds/chat_template fuzz/regressions/chat_template`.
//! With `SOAK_LIMIT_MIB` set, the address space is limited as AFL limits it.

use std::path::PathBuf;
use std::time::Instant;

/// `VmSize`, `VmRSS`, `VmData` (KiB) and the number of mappings of this process.
fn vm() -> (u64, u64, u64, usize) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let get = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let maps = std::fs::read_to_string("/proc/self/maps")
        .map(|m| m.lines().count())
        .unwrap_or(0);
    (get("VmSize:"), get("VmRSS:"), get("VmData:"), maps)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        eprintln!("usage: soak TARGET CALLS EVERY DIR...");
        std::process::exit(2);
    }
    let target = &args[0];
    let calls: usize = args[1].parse().expect("CALLS: a count");
    let every: usize = args[2].parse().expect("EVERY: a count");
    let harness = shrink_fuzz::TARGETS
        .iter()
        .find(|(n, _)| n == target)
        .map(|(_, f)| *f)
        .unwrap_or_else(|| panic!("no harness {target}"));
    let mut inputs: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    for dir in &args[3..] {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        entries.sort();
        for p in entries {
            let bytes = std::fs::read(&p).unwrap();
            inputs.push((p, bytes));
        }
    }
    assert!(!inputs.is_empty(), "no input files");
    #[cfg(target_os = "linux")]
    if let Some(mib) = std::env::var("SOAK_LIMIT_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        // SAFETY: setrlimit on an initialised struct, lowering the soft limit only.
        unsafe {
            let mut lim: libc::rlimit = std::mem::zeroed();
            if libc::getrlimit(libc::RLIMIT_AS, &mut lim) == 0 {
                lim.rlim_cur = lim.rlim_max.min((mib << 20) as libc::rlim_t);
                libc::setrlimit(libc::RLIMIT_AS, &lim);
            }
        }
    }
    let t0 = Instant::now();
    println!("calls\tseconds\tVmSize_KiB\tVmRSS_KiB\tVmData_KiB\tmappings");
    let (s, r, d, m) = vm();
    println!("0\t0.0\t{s}\t{r}\t{d}\t{m}");
    for i in 0..calls {
        let (_, bytes) = &inputs[i % inputs.len()];
        harness(bytes);
        if (i + 1) % every == 0 {
            let (s, r, d, m) = vm();
            println!(
                "{}\t{:.1}\t{s}\t{r}\t{d}\t{m}",
                i + 1,
                t0.elapsed().as_secs_f64()
            );
        }
    }
}
