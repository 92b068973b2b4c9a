//! Checkpoint I/O for shrink: read models and texts, write outputs atomically.
//!
//! Principal types:
//! - [`Checkpoint`]: a Hugging Face directory ([`HfCheckpoint`]) or a GGUF file ([`GgufFile`]),
//!   memory-mapped and validated at open, tensors read one at a time as float32;
//! - [`tokenizer::Tokenizer`]: from tokenizer.json or built from GGUF metadata;
//! - [`OutputDir`] and [`write_safetensors_streaming`]: outputs that appear only when complete.
//!
//! Neighbours: `shrink-formats` decodes the stored bytes; `shrink-models` maps tensor names to
//! architectures. Every error is an [`IoError`] naming the file and what is wrong in it.
//!
//! ```no_run
//! let ckpt = shrink_io::Checkpoint::open("assets/SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! for t in ckpt.tensors() {
//!     println!("{} {} {:?}", t.name, t.dtype.name(), t.shape);
//! }
//! # Ok::<(), shrink_io::IoError>(())
//! ```
#![deny(missing_docs)]

pub mod checkpoint;
pub mod error;
pub mod gguf;
pub mod gguf_meta;
pub mod gguf_write;
pub mod hf_int;
pub mod imatrix;
pub mod model_card;
pub mod output;
pub mod peft;
pub mod quantized;
pub mod safetensors;
pub mod sparse;
pub mod tokenizer;

use std::path::Path;

pub use checkpoint::{Checkpoint, HfCheckpoint, StoredDtype, TensorEntry};
pub use error::{IoError, Result};
pub use gguf::{GgufFile, GgufValue};
pub use output::{
    refuse_inputs, write_safetensors_ordered, write_safetensors_streaming, LazyTensor, OutputDir,
    TensorHeader,
};

/// The safetensors dtype of a float storage type.
pub fn safetensors_dtype(f: shrink_formats::float::FloatType) -> ::safetensors::tensor::Dtype {
    use shrink_formats::float::FloatType;
    match f {
        FloatType::F32 => ::safetensors::tensor::Dtype::F32,
        FloatType::F16 => ::safetensors::tensor::Dtype::F16,
        FloatType::BF16 => ::safetensors::tensor::Dtype::BF16,
    }
}

/// Drop a read-only file map's pages from the resident set, once the `len` bytes at `offset`
/// (a tensor) have been read.
///
/// The pages stay in the page cache and are read again if touched; this only keeps a
/// tensor-by-tensor pass over a large file from counting the whole file in its RSS. The whole
/// map is released, not just the tensor's range: a page fault maps the cached pages around it
/// too (Linux's fault-around, and whole large folios of a freshly written file), so reading one
/// tensor maps parts of its neighbours, which would otherwise stay resident for the rest of the
/// pass (0.3–0.7 MiB per layer on SmolLM2, measured by scripts/bench-convert-rss.sh). Unmapped
/// ranges cost the kernel next to nothing.
pub fn release_pages(map: &memmap2::Mmap, offset: usize, len: usize) {
    if len == 0 || offset + len > map.len() {
        return;
    }
    #[cfg(unix)]
    // SAFETY: the map is read-only (MAP_PRIVATE, never written), so MADV_DONTNEED cannot
    // discard modifications; later reads fault the file's pages back in.
    unsafe {
        let _ = map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, 0, map.len());
    }
}

/// Bytes of memory the system can still give without swapping (Linux's `MemAvailable`), if
/// known.
pub fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Read and parse a JSON file, naming the file in any error.
pub fn read_json(path: &Path) -> Result<serde_json::Value> {
    let bytes = std::fs::read(path).map_err(|e| IoError::os(path, e))?;
    serde_json::from_slice(&bytes).map_err(|source| IoError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Read a text file that must be UTF-8, naming the file and the byte offset if it is not.
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| IoError::os(path, e))?;
    String::from_utf8(bytes).map_err(|e| {
        IoError::malformed(
            path,
            format!(
                "not UTF-8 text: invalid byte sequence at byte {}",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}
