//! Outputs written under a temporary name and renamed into place only when complete.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, View};

use crate::error::{IoError, Result};

/// The temporary outputs this process is writing, each with the path it will be renamed to:
/// removed by [`remove_partials`] when the process is interrupted, and used by [`shown`] so
/// that errors name the user's `-o`, not the hidden temporary.
static PARTIALS: std::sync::Mutex<Vec<(PathBuf, PathBuf)>> = std::sync::Mutex::new(Vec::new());

fn partials() -> std::sync::MutexGuard<'static, Vec<(PathBuf, PathBuf)>> {
    PARTIALS.lock().unwrap_or_else(|e| e.into_inner())
}

/// A temporary output, `.NAME.partial-PID` beside its target `NAME`, registered while it
/// exists (see [`remove_partials`]). Creating one first removes the same target's temporaries
/// left by processes that are provably dead (killed, or crashed before cleaning up).
#[derive(Debug)]
pub struct Partial {
    tmp: PathBuf,
    target: PathBuf,
}

impl Partial {
    /// Register the temporary path of `target` (whose parent directory must exist); the file
    /// or directory itself is the caller's to create.
    pub fn new(target: &Path) -> Result<Self> {
        Partial::with_extension(target, "")
    }

    /// [`Partial::new`] with `ext` (e.g. `.png`) after the name, for writers that choose the
    /// format from the file's extension.
    pub fn with_extension(target: &Path, ext: &str) -> Result<Self> {
        let (parent, name) = parent_and_name(target)?;
        remove_stale(&parent, &name);
        let tmp = parent.join(format!(".{name}.partial-{}{ext}", std::process::id()));
        partials().push((tmp.clone(), target.to_path_buf()));
        Ok(Partial {
            tmp,
            target: target.to_path_buf(),
        })
    }

    /// The temporary path.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// The path it becomes on commit.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Rename the temporary into place; it is no longer a temporary.
    pub fn commit(&self) -> Result<()> {
        std::fs::rename(&self.tmp, &self.target).map_err(|e| IoError::os(&self.target, e))?;
        partials().retain(|(t, _)| t != &self.tmp);
        Ok(())
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        // Not committed (or committed already, where this finds nothing): remove it.
        let mut live = partials();
        if let Some(i) = live.iter().position(|(t, _)| t == &self.tmp) {
            live.swap_remove(i);
            drop(live);
            remove_path(&self.tmp);
        }
    }
}

/// Write the whole file `path` through a temporary beside it renamed into place, so that a kill
/// leaves either the previous file or the new one, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = Partial::new(path)?;
    std::fs::write(tmp.path(), bytes).map_err(|e| IoError::os(tmp.path(), e))?;
    tmp.commit()
}

/// Remove a file or a directory tree, whichever `p` is, ignoring errors.
fn remove_path(p: &Path) {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            // A writer thread may still be adding files while the tree goes: try again.
            for _ in 0..3 {
                if std::fs::remove_dir_all(p).is_ok() || !p.exists() {
                    break;
                }
            }
        }
        Ok(_) => {
            let _ = std::fs::remove_file(p);
        }
        Err(_) => {}
    }
}

/// Remove every temporary output of this process (the binary calls it on SIGINT, SIGTERM and
/// SIGHUP before exiting), returning the targets that were being written.
pub fn remove_partials() -> Vec<PathBuf> {
    let live = std::mem::take(&mut *partials());
    live.into_iter()
        .map(|(tmp, target)| {
            remove_path(&tmp);
            target
        })
        .collect()
}

/// `path` as the user knows it: a path inside one of this process's temporary outputs is
/// shown inside the target it will become.
pub fn shown(path: PathBuf) -> PathBuf {
    let live = partials();
    for (tmp, target) in live.iter() {
        if let Ok(rest) = path.strip_prefix(tmp) {
            return if rest.as_os_str().is_empty() {
                target.clone()
            } else {
                target.join(rest)
            };
        }
    }
    path
}

/// Remove `.NAME.partial-PID` entries of `parent` whose process is dead: the remains of a run
/// that was killed. A process that exists (or may, when the check is not possible) keeps its
/// temporary.
fn remove_stale(parent: &Path, name: &str) {
    let prefix = format!(".{name}.partial-");
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let file_name = e.file_name();
        let Some(pid) = file_name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .map(|p| p.split('.').next().unwrap_or(p))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && process_is_dead(pid) {
            remove_path(&e.path());
        }
    }
}

/// Whether no process `pid` exists (only provable on Unix: `kill(pid, 0)` fails with ESRCH).
fn process_is_dead(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return false;
        };
        // SAFETY: signal 0 sends nothing; it only checks that the process exists.
        let r = unsafe { libc::kill(pid, 0) };
        r == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        false
    }
}

/// An output directory being written: files go into a hidden sibling, renamed on [`commit`].
///
/// Dropping it without committing removes everything written, so a failure leaves nothing.
///
/// [`commit`]: OutputDir::commit
pub struct OutputDir {
    tmp: Partial,
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
        let tmp = Partial::new(&target)?;
        if tmp.path().exists() {
            std::fs::remove_dir_all(tmp.path()).map_err(|e| IoError::os(tmp.path(), e))?;
        }
        std::fs::create_dir(tmp.path()).map_err(|e| IoError::os(tmp.path(), e))?;
        Ok(OutputDir { tmp })
    }

    /// Path of a file inside the (temporary) directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// The temporary directory being written (readable before commit, e.g. to verify it).
    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// The final path the directory will have.
    pub fn target(&self) -> &Path {
        self.tmp.target()
    }

    /// Write a whole small file (config, tokenizer) into the directory.
    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let p = self.file(name);
        std::fs::write(&p, bytes).map_err(|e| IoError::os(&p, e))
    }

    /// Rename the finished directory into place.
    pub fn commit(self) -> Result<PathBuf> {
        self.tmp.commit()?;
        Ok(self.tmp.target().to_path_buf())
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
    // Each tensor's bytes are checked as they are produced; the first non-finite value found
    // fails the write (the crate's View cannot return an error, so it is kept here).
    let found: std::cell::RefCell<Option<String>> = Default::default();
    let found_ref = &found;
    let tensors: Vec<(String, LazyTensor<'_>)> = tensors
        .into_iter()
        .map(|(name, t)| {
            let LazyTensor {
                dtype,
                shape,
                len,
                make,
            } = t;
            let (n, s) = (name.clone(), shape.clone());
            let checked = move || {
                let bytes = make();
                if found_ref.borrow().is_none() {
                    if let Some(what) = crate::checkpoint::non_finite_stored(dtype, &bytes, &s) {
                        *found_ref.borrow_mut() = Some(format!("tensor {n} holds {what}"));
                    }
                }
                bytes
            };
            (name, LazyTensor::new(dtype, shape, len, checked))
        })
        .collect();
    safetensors::serialize_to_file(tensors, metadata, path).map_err(|e| match e {
        safetensors::SafeTensorError::IoError(io) => IoError::os(path, io),
        other => IoError::Safetensors {
            path: path.to_path_buf(),
            source: other,
        },
    })?;
    if let Some(what) = found.into_inner() {
        return Err(not_finite(path, &what));
    }
    // The crate writes through a private temporary file (mode 0600); give it the usual mode.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
            .map_err(|e| IoError::os(path, e))?;
    }
    Ok(())
}

/// The error of a write that would have stored a non-finite value: nothing is written.
fn not_finite(path: &Path, what: &str) -> IoError {
    IoError::malformed(
        path,
        format!(
            "{what}: the computation produced a value that is not finite, and shrink does not \
             write one (nothing was written)"
        ),
    )
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
        if let Some(what) = crate::checkpoint::non_finite_stored(t.dtype, &bytes, &t.shape) {
            return Err(not_finite(path, &format!("tensor {} holds {what}", t.name)).into());
        }
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
