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

/// `p` with every link and `..` resolved, also when it does not exist yet (its nearest existing
/// ancestor resolved, the rest appended).
fn resolved(p: &Path) -> PathBuf {
    if let Ok(c) = std::fs::canonicalize(p) {
        return c;
    }
    match (p.parent(), p.file_name()) {
        (Some(parent), Some(name)) => {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            resolved(parent).join(name)
        }
        _ => std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()),
    }
}

/// Refuse an output `target` that is one of `inputs`, lies inside an input directory (a
/// model's own files: `-o MODEL/model.safetensors`), or contains an input: shrink never writes
/// over or into what it reads, whatever `--overwrite` says. Links are followed, so another
/// spelling of the same path is caught too.
pub fn refuse_inputs(target: &Path, inputs: &[&Path]) -> Result<()> {
    let t = resolved(target);
    for inp in inputs {
        let i = resolved(inp);
        let what = if t == i {
            "output is the same path as an input; shrink never writes over its input".to_string()
        } else if t.starts_with(&i) {
            format!(
                "output lies inside the input {}; shrink never writes into its input",
                inp.display()
            )
        } else if i.starts_with(&t) {
            format!(
                "output contains the input {}; shrink never writes over its input",
                inp.display()
            )
        } else {
            continue;
        };
        return Err(IoError::malformed(target, what));
    }
    Ok(())
}

impl OutputDir {
    /// Start writing `target`, which must not exist and must be neither an input nor inside
    /// one ([`refuse_inputs`]).
    pub fn create(target: impl AsRef<Path>, inputs: &[&Path]) -> Result<Self> {
        let target = target.as_ref().to_path_buf();
        // Checked first, so that `-o` naming the input says so rather than "already exists".
        refuse_inputs(&target, inputs)?;
        if target.exists() {
            return Err(IoError::malformed(
                &target,
                "output already exists; shrink never overwrites (remove it or choose another -o)",
            ));
        }
        let (parent, name) = parent_and_name(&target)?;
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

/// Name, dtype, shape and byte length of one tensor of a file written by
/// [`write_safetensors_ordered`].
#[derive(Debug, Clone)]
pub struct TensorHeader {
    /// Tensor name.
    pub name: String,
    /// Storage dtype.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Bytes of data.
    pub len: usize,
}

/// Write a safetensors file whose tensors are laid out in the given order, asking `next(i)`
/// for tensor i's bytes only when it is reached.
///
/// Unlike [`write_safetensors_streaming`] (whose crate sorts tensors by dtype), the order is
/// kept, so the several tensors of one quantized module are produced together and a module
/// is quantized once. The file is re-validated with the safetensors crate afterwards.
pub fn write_safetensors_ordered<E: From<IoError>>(
    path: &Path,
    header: &[TensorHeader],
    metadata: Option<HashMap<String, String>>,
    mut next: impl FnMut(usize) -> std::result::Result<Vec<u8>, E>,
) -> std::result::Result<(), E> {
    use std::io::Write;
    let mut map = serde_json::Map::new();
    if let Some(m) = metadata {
        map.insert("__metadata__".into(), serde_json::json!(m));
    }
    let mut offset = 0usize;
    for t in header {
        let dtype =
            serde_json::to_value(t.dtype).map_err(|e| IoError::malformed(path, e.to_string()))?;
        map.insert(
            t.name.clone(),
            serde_json::json!({"dtype": dtype, "shape": t.shape, "data_offsets": [offset, offset + t.len]}),
        );
        offset += t.len;
    }
    let mut text = serde_json::to_string(&serde_json::Value::Object(map))
        .map_err(|e| IoError::malformed(path, e.to_string()))?;
    while text.len() % 8 != 0 {
        text.push(' ');
    }
    let file = std::fs::File::create(path).map_err(|e| IoError::os(path, e))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    let io = |e| IoError::os(path, e);
    w.write_all(&(text.len() as u64).to_le_bytes())
        .map_err(io)?;
    w.write_all(text.as_bytes()).map_err(io)?;
    for (i, t) in header.iter().enumerate() {
        let bytes = next(i)?;
        if bytes.len() != t.len {
            return Err(IoError::malformed(
                path,
                format!(
                    "tensor {} produced {} bytes, its header says {}",
                    t.name,
                    bytes.len(),
                    t.len
                ),
            )
            .into());
        }
        w.write_all(&bytes).map_err(io)?;
    }
    w.flush().map_err(io)?;
    w.get_ref().sync_all().map_err(io)?;
    drop(w);
    crate::safetensors::SafetensorsFile::open(path)?;
    Ok(())
}

/// The existing directory an output `target` goes into, and its file name (the temporary name
/// beside it is built from both); errors when the parent is missing or there is no name.
pub(crate) fn parent_and_name(target: &Path) -> Result<(PathBuf, String)> {
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
        .ok_or_else(|| IoError::malformed(target, "output path has no file name"))?
        .to_string_lossy()
        .into_owned();
    Ok((parent, name))
}
