//! Loading and using a tokenizer again and again leaves nothing allocated. tokenizers 0.23 keeps
//! each BPE instance's word cache in a thread-local map that outlives the instance; shrink builds
//! its BPE models without that cache (`shrink_io::tokenizer`). A fuzzing campaign found the
//! growth (about 1 MB a call until a 1 GiB limit aborted the process). The bytes still allocated
//! are counted by this binary's allocator; alone in its own test binary, so that no other test's
//! allocations are counted.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::sync::atomic::{AtomicIsize, Ordering};

use shrink_io::tokenizer::Tokenizer;
use shrink_io::GgufFile;

fn assets_dir() -> PathBuf {
    std::env::var_os("SHRINK_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets")))
}

/// The system allocator, counting the bytes this process holds: what it keeps is measured
/// exactly, whatever the allocator's own pools and fragmentation do to the resident size.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only a counter is kept.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bytes allocated and not yet freed.
fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

#[test]
fn loading_and_encoding_again_does_not_grow_the_process() {
    let model = assets_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let corpus = assets_dir().join("lee_background.cor");
    assert!(
        model.is_file() && corpus.is_file(),
        "{} or {} missing: run scripts/fetch-assets.sh",
        model.display(),
        corpus.display()
    );
    // About 10,000 distinct words: each instance could cache as many.
    let text = std::fs::read_to_string(&corpus).unwrap();
    let g = GgufFile::open(&model).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in Tokenizer::from_gguf(&g).unwrap().hf_files().unwrap() {
        std::fs::write(dir.path().join(name), content).unwrap();
    }
    let json = dir.path().join("tokenizer.json");
    let from_json = || Tokenizer::from_file(&json).unwrap();
    let from_gguf = || Tokenizer::from_gguf(&g).unwrap();
    // The BPE rebuilt without its cache encodes as the GGUF's vocabulary does (the tokenizer
    // tests check that one against llama.cpp's ids).
    let reference = from_gguf().encode(&text, false).unwrap();
    assert_eq!(from_json().encode(&text, false).unwrap(), reference);
    let loaders: [(&str, &dyn Fn() -> Tokenizer); 2] =
        [("tokenizer.json", &from_json), ("GGUF", &from_gguf)];
    for (what, load) in loaders {
        // Warm up whatever is allocated once (regexes, the allocator's own pools).
        for _ in 0..2 {
            assert_eq!(load().encode(&text, false).unwrap(), reference);
        }
        let before = live();
        let rounds = 12;
        for _ in 0..rounds {
            assert_eq!(load().encode(&text, false).unwrap(), reference, "{what}");
        }
        let kept = live() - before;
        // With tokenizers' cache each round kept its cached words: 35.7 MiB for the 12 rounds
        // (measured with the fix reverted); without it nothing stays.
        assert!(
            kept < 1 << 20,
            "{what}: {rounds} loads and encodings kept {:.1} MiB allocated",
            kept as f64 / (1 << 20) as f64
        );
        eprintln!(
            "{what}: {rounds} loads + encodings of {} tokens, {kept:+} bytes still allocated",
            reference.len()
        );
    }
}
