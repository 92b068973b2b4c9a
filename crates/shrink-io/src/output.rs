//! Outputs written under a temporary name and renamed into place only when complete.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, View};

use crate::error::{IoError, Result};

/// An output directory being written: files go into a hidden sibling, renamed on [`commit`].
///
/// Dropping it without committing removes everything written, so a failure leaves nothing.
///
/// [`commit`]: OutputDir::commit
pub struct OutputDir {
    target: PathBuf,
    tmp: PathBuf,
    done: bool,
}

impl OutputDir {
    /// Start writing `target`, which must not exist and must not be any of `inputs`.
    pub fn create(target: impl AsRef<Path>, inputs: &[&Path]) -> Result<Self> {
        let target = target.as_ref().to_path_buf();
        // Checked first, so that `-o` naming the input says so rather than "already exists".
        let abs = |p: &Path| {
            std::fs::canonicalize(p)
                .or_else(|_| std::path::absolute(p))
                .unwrap_or_else(|_| p.to_path_buf())
        };
        for inp in inputs {
            if abs(inp) == abs(&target) {
                return Err(IoError::malformed(
                    &target,
                    "output is the same path as an input",
                ));
            }
        }
        if target.exists() {
            return Err(IoError::malformed(
                &target,
                "output already exists; shrink never overwrites (remove it or choose another -o)",
            ));
        }
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !parent.is_dir() {
            return Err(IoError::malformed(
                &parent,
                "parent directory of the output does not exist",
            ));
        }
        let name = target
            .file_name()
            .ok_or_else(|| IoError::malformed(&target, "output path has no file name"))?
            .to_string_lossy()
            .into_owned();
        let tmp = parent.join(format!(".{name}.partial-{}", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| IoError::os(&tmp, e))?;
        }
        std::fs::create_dir(&tmp).map_err(|e| IoError::os(&tmp, e))?;
        Ok(OutputDir {
            target,
            tmp,
            done: false,
        })
    }

    /// Path of a file inside the (temporary) directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.tmp.join(name)
    }

    /// The temporary directory being written (readable before commit, e.g. to verify it).
    pub fn dir(&self) -> &Path {
        &self.tmp
    }

    /// The final path the directory will have.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Write a whole small file (config, tokenizer) into the directory.
    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let p = self.file(name);
        std::fs::write(&p, bytes).map_err(|e| IoError::os(&p, e))
    }

    /// Rename the finished directory into place.
    pub fn commit(mut self) -> Result<PathBuf> {
        std::fs::rename(&self.tmp, &self.target).map_err(|e| IoError::os(&self.target, e))?;
        self.done = true;
        Ok(self.target.clone())
    }
}

impl Drop for OutputDir {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

/// A tensor whose bytes are produced only when the writer reaches it.
pub struct LazyTensor<'a> {
    dtype: Dtype,
    shape: Vec<usize>,
    len: usize,
    make: Box<dyn Fn() -> Vec<u8> + 'a>,
}

impl<'a> LazyTensor<'a> {
    /// A tensor of `dtype` and `shape` whose `len` bytes `make` produces on demand.
    pub fn new(
        dtype: Dtype,
        shape: Vec<usize>,
        len: usize,
        make: impl Fn() -> Vec<u8> + 'a,
    ) -> Self {
        LazyTensor {
            dtype,
            shape,
            len,
            make: Box::new(make),
        }
    }
}

impl View for LazyTensor<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        let v = (self.make)();
        assert_eq!(
            v.len(),
            self.len,
            "lazy tensor produced the wrong byte count"
        );
        Cow::Owned(v)
    }
    fn data_len(&self) -> usize {
        self.len
    }
}

/// Write a safetensors file one tensor at a time: only one tensor's bytes live in memory.
pub fn write_safetensors_streaming(
    path: &Path,
    tensors: Vec<(String, LazyTensor<'_>)>,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    safetensors::serialize_to_file(tensors, metadata, path).map_err(|e| match e {
        safetensors::SafeTensorError::IoError(io) => IoError::os(path, io),
        other => IoError::Safetensors {
            path: path.to_path_buf(),
            source: other,
        },
    })?;
    // The crate writes through a private temporary file (mode 0600); give it the usual mode.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
            .map_err(|e| IoError::os(path, e))?;
    }
    Ok(())
}
