//! The state a layer-by-layer run keeps so that a killed or failed run continues after its last
//! kept layer (`--resume`) instead of starting again from the first.
//!
//! After each block the layer loop ([`crate::pipeline::Layers`]) saves in the run directory
//! `layer-NNNN.safetensors` (the tensors the block gives the output, and what the method carries
//! from it: report figures, statistics); when a keep is due ([`RunDir::every`], and after the
//! last block) it adds `activations-NNNN.safetensors` (the next block's inputs) and then
//! `state.json` (how many layers are finished, and what identifies the run). Each file is written
//! whole under a temporary name and renamed, so a kill at any point leaves a `state.json` whose
//! files are all complete. A resumed run reads the kept layers instead of recomputing them and
//! starts the next block from the saved activations: its output is byte for byte the output of
//! an uninterrupted run. The directory is removed once the output is committed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use safetensors::tensor::{Dtype, TensorView};
use serde_json::{json, Value};
use shrink_formats::float::{self, FloatType};
use shrink_io::quantized::StoredTensor;
use shrink_io::safetensors::{SafetensorsFile, StTensorInfo};
use shrink_io::IoError;

use crate::error::{MethodError, Result};
use crate::pipeline::Stored;

/// Name of the file that says how far a run got.
const STATE: &str = "state.json";
/// What `state.json` declares itself to be.
const FORMAT: &str = "shrink-layers-v1";

/// Where a layer-by-layer run keeps its finished layers, and whether it continues an earlier
/// run kept there.
#[derive(Debug, Clone)]
pub struct RunDir {
    /// The directory (created if missing; the CLI's default is `OUT.run` beside the output).
    pub dir: PathBuf,
    /// Continue the run the directory holds (a run without `resume` refuses a directory that
    /// holds one, rather than silently discarding it).
    pub resume: bool,
    /// Keep the finished layers at most this often (zero: after every layer); the last layer
    /// is always kept. A resumed run repeats the layers finished since the last keep.
    pub every: std::time::Duration,
}

/// What makes two runs the same, so that one may continue the other: the method and its
/// settings, the input's files (names, sizes, modification times), the calibration samples
/// and `extra` (the dense type, the selection).
pub fn identity(
    input: &Path,
    method: &str,
    settings: &str,
    samples: &[Vec<u32>],
    extra: Value,
) -> Value {
    let mut files: Vec<Value> = Vec::new();
    let listing: Vec<PathBuf> = if input.is_dir() {
        std::fs::read_dir(input)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    } else {
        vec![input.to_path_buf()]
    };
    for p in listing {
        let Ok(m) = std::fs::metadata(&p) else {
            continue;
        };
        if !m.is_file() {
            continue;
        }
        let mtime = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
        files.push(json!([name, m.len(), mtime.to_string()]));
    }
    files.sort_by_key(|f| f[0].as_str().unwrap_or("").to_string());
    let mut h = Fnv::default();
    for s in samples {
        h.add(&(s.len() as u64).to_le_bytes());
        for &id in s {
            h.add(&id.to_le_bytes());
        }
    }
    json!({
        "method": method,
        "settings": settings,
        "input": input.display().to_string(),
        "input_files": files,
        "samples": samples.len(),
        "samples_fnv1a64": format!("{:016x}", h.0),
        "extra": extra,
    })
}

/// FNV-1a, 64 bits: a hash that stays the same across Rust releases and platforms (std's
/// `DefaultHasher` promises neither), for telling saved runs apart; not for security.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn add(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// The run directories of this process holding finished layers, with how many: the binary
/// names them when a run stops early, so the user knows that `--resume` continues it.
static KEPT: std::sync::Mutex<Vec<(PathBuf, usize)>> = std::sync::Mutex::new(Vec::new());

fn kept_list() -> std::sync::MutexGuard<'static, Vec<(PathBuf, usize)>> {
    KEPT.lock().unwrap_or_else(|e| e.into_inner())
}

/// The run directories this process keeps finished layers in (a run not yet finished), with
/// the number of layers each holds.
pub fn kept() -> Vec<(PathBuf, usize)> {
    kept_list().clone()
}

/// An opened run directory: the layers it holds finished, and where the next ones go.
#[derive(Debug)]
pub struct LayerState {
    dir: PathBuf,
    identity: Value,
    done: usize,
    resumed: usize,
    seconds: f64,
    every: std::time::Duration,
    last: std::time::Instant,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> MethodError + '_ {
    move |e| MethodError::Io(IoError::os(path, e))
}

fn bad(path: &Path, what: impl Into<String>) -> MethodError {
    MethodError::Io(IoError::malformed(path, what))
}

impl LayerState {
    /// Open `run_dir` (never one of the run's `inputs` or inside one) for a run identified by
    /// `identity` (see [`identity`]): with `resume`, the
    /// layers an identical earlier run finished there are taken up (none kept: the run starts
    /// from the first layer); without it, a directory holding an earlier run is refused.
    pub fn open(run_dir: &RunDir, identity: Value, inputs: &[&Path]) -> Result<Self> {
        let dir = &run_dir.dir;
        shrink_io::refuse_inputs(dir, inputs)?;
        let state = dir.join(STATE);
        let saved = match std::fs::read(&state) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(&state)(e)),
        };
        let mut done = 0;
        if let Some(bytes) = saved {
            if !run_dir.resume {
                return Err(bad(
                    dir,
                    "holds the finished layers of an earlier run: continue it with --resume (the \
                     same command and flags), or remove the directory",
                ));
            }
            let v: Value = serde_json::from_slice(&bytes)
                .map_err(|e| bad(&state, format!("not a run state: {e}")))?;
            if v["format"] != FORMAT {
                return Err(bad(&state, format!("not a {FORMAT} run state")));
            }
            if v["identity"] != identity {
                let differs: Vec<&str> = identity
                    .as_object()
                    .map(|o| {
                        o.iter()
                            .filter(|(k, val)| v["identity"][k.as_str()] != **val)
                            .map(|(k, _)| k.as_str())
                            .collect()
                    })
                    .unwrap_or_default();
                return Err(bad(
                    dir,
                    format!(
                        "--resume: the kept layers come from a different run ({} differ); run \
                         the same command with the same input and flags, or remove the directory",
                        if differs.is_empty() {
                            "its settings".to_string()
                        } else {
                            differs.join(", ")
                        }
                    ),
                ));
            }
            done = v["layers"]
                .as_u64()
                .ok_or_else(|| bad(&state, "no count of finished layers"))?
                as usize;
        } else {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        Ok(LayerState {
            dir: dir.clone(),
            identity,
            done,
            resumed: done,
            seconds: 0.0,
            every: run_dir.every,
            last: std::time::Instant::now(),
        })
    }

    /// How many layers an earlier run had finished when this one took them up (0: none).
    pub fn resumed(&self) -> usize {
        self.resumed
    }

    /// Whether the run is to be kept after finished layer `l` of `n`: the last one, or `every`
    /// has passed since the last keep.
    pub fn due(&self, l: usize, n: usize) -> bool {
        l + 1 == n || self.last.elapsed() >= self.every
    }

    /// Seconds this run spent keeping its finished layers.
    pub fn seconds(&self) -> f64 {
        self.seconds
    }

    /// The run directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn layer_path(&self, l: usize) -> PathBuf {
        self.dir.join(format!("layer-{l:04}.safetensors"))
    }

    fn activations_path(&self, l: usize) -> PathBuf {
        self.dir.join(format!("activations-{l:04}.safetensors"))
    }

    /// Put the tensors kept layer `l` gave the output into `stored`; returns what the step
    /// carried from it (see [`crate::pipeline::LayerStep::carry`]).
    pub fn load(&self, l: usize, stored: &mut Stored) -> Result<Value> {
        let path = self.layer_path(l);
        let (file, infos) = SafetensorsFile::open(&path)?;
        let meta = |key: &str| -> Result<Option<Value>> {
            file.metadata
                .as_ref()
                .and_then(|m| m.get(key))
                .map(|s| serde_json::from_str(s))
                .transpose()
                .map_err(|e| bad(&path, format!("its {key} entry is not JSON: {e}")))
        };
        let carry = meta("carry")?.unwrap_or(Value::Null);
        let kinds: HashMap<String, (Dtype, Vec<usize>)> = match meta("tensors")? {
            Some(v) => serde_json::from_value(v)
                .map_err(|e| bad(&path, format!("its tensor list is not readable: {e}")))?,
            None => HashMap::new(),
        };
        for info in &infos {
            let (dtype, shape) = kinds
                .get(&info.name)
                .cloned()
                .ok_or_else(|| bad(&path, format!("{} is not in its tensor list", info.name)))?;
            stored.insert(
                info.name.clone(),
                StoredTensor {
                    name: info.name.clone(),
                    dtype,
                    shape,
                    bytes: file.bytes(info).to_vec(),
                },
            );
        }
        Ok(carry)
    }

    /// The block inputs after the last finished layer (and the float model's, when kept).
    pub fn activations(&self) -> Result<(Vec<Tensor>, Option<Vec<Tensor>>)> {
        let path = self.activations_path(self.done.saturating_sub(1));
        let (file, infos) = SafetensorsFile::open(&path)?;
        let by_name: HashMap<&str, &StTensorInfo> =
            infos.iter().map(|i| (i.name.as_str(), i)).collect();
        let read = |prefix: &str| -> Result<Vec<Tensor>> {
            let mut out = Vec::new();
            while let Some(info) = by_name.get(format!("{prefix}.{}", out.len()).as_str()) {
                if info.dtype != Dtype::F32 {
                    return Err(bad(&path, format!("{} is not F32", info.name)));
                }
                let bytes = file.bytes(info);
                let mut v = vec![0f32; bytes.len() / 4];
                float::decode(FloatType::F32, bytes, &mut v);
                let t = Tensor::from_vec(v, info.shape.as_slice(), &Device::Cpu)
                    .map_err(shrink_models::ModelError::from)?;
                out.push(t);
            }
            Ok(out)
        };
        let xs = read("x")?;
        if xs.is_empty() {
            return Err(bad(&path, "holds no activations"));
        }
        let fs = read("f")?;
        Ok((xs, (!fs.is_empty()).then_some(fs)))
    }

    /// Save finished layer `l` of `n`: the `tensors` it gives the output and what the step
    /// `carry`s from it; then, when it is [`due`](LayerState::due), keep the run there: the
    /// next block's inputs `xs` (and the float model's `fs`) and the count of finished layers.
    /// A resumed run takes up the layers up to the last keep and computes the rest again.
    #[allow(clippy::too_many_arguments)]
    pub fn save(
        &mut self,
        l: usize,
        n: usize,
        tensors: &[&StoredTensor],
        carry: &Value,
        xs: &[Tensor],
        fs: Option<&[Tensor]>,
    ) -> Result<()> {
        let t0 = std::time::Instant::now();
        let kept_before = self.done.checked_sub(1);
        let path = self.layer_path(l);
        let kinds: HashMap<&str, (Dtype, &[usize])> = tensors
            .iter()
            .map(|t| (t.name.as_str(), (t.dtype, t.shape.as_slice())))
            .collect();
        let meta = HashMap::from([
            (
                "tensors".to_string(),
                serde_json::to_string(&kinds).expect("JSON"),
            ),
            ("carry".to_string(), carry.to_string()),
        ]);
        // Raw bytes: a layout's shape may be left to the output's plan (empty here).
        let views: Vec<(String, TensorView)> = tensors
            .iter()
            .map(|t| {
                TensorView::new(Dtype::U8, vec![t.bytes.len()], &t.bytes)
                    .map(|v| (t.name.clone(), v))
            })
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| bad(&path, e.to_string()))?;
        let bytes =
            safetensors::serialize(views, Some(meta)).map_err(|e| bad(&path, e.to_string()))?;
        shrink_io::output::write_atomic(&path, &bytes)?;
        if !self.due(l, n) {
            self.seconds += t0.elapsed().as_secs_f64();
            return Ok(());
        }

        let path = self.activations_path(l);
        let mut flat: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for (prefix, ts) in [("x", Some(xs)), ("f", fs)] {
            for (i, t) in ts.unwrap_or_default().iter().enumerate() {
                let v = t
                    .to_dtype(DType::F32)
                    .and_then(|t| t.flatten_all())
                    .and_then(|t| t.to_vec1::<f32>())
                    .map_err(shrink_models::ModelError::from)?;
                let b = float::encode(FloatType::F32, &v);
                flat.push((format!("{prefix}.{i}"), t.dims().to_vec(), b));
            }
        }
        let views: Vec<(String, TensorView)> = flat
            .iter()
            .map(|(n, s, b)| TensorView::new(Dtype::F32, s.clone(), b).map(|v| (n.clone(), v)))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| bad(&path, e.to_string()))?;
        let bytes = safetensors::serialize(views, None).map_err(|e| bad(&path, e.to_string()))?;
        shrink_io::output::write_atomic(&path, &bytes)?;

        let state = json!({"format": FORMAT, "layers": l + 1, "identity": self.identity});
        let text = serde_json::to_vec_pretty(&state).expect("JSON");
        shrink_io::output::write_atomic(&self.dir.join(STATE), &text)?;
        self.done = l + 1;
        let mut list = kept_list();
        list.retain(|(d, _)| d != &self.dir);
        list.push((self.dir.clone(), self.done));
        drop(list);
        if let Some(k) = kept_before {
            let old = self.activations_path(k);
            std::fs::remove_file(&old)
                .or_else(not_found)
                .map_err(io(&old))?;
        }
        self.seconds += t0.elapsed().as_secs_f64();
        self.last = std::time::Instant::now();
        Ok(())
    }

    /// The output is committed: remove the kept layers (`state.json` first, so a kill midway
    /// leaves nothing a later run would take up), and the directory if nothing else is in it.
    pub fn finish(self) -> Result<()> {
        kept_list().retain(|(d, _)| d != &self.dir);
        let state = self.dir.join(STATE);
        std::fs::remove_file(&state)
            .or_else(not_found)
            .map_err(io(&state))?;
        let entries = std::fs::read_dir(&self.dir).map_err(io(&self.dir))?;
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            let ours = (name.starts_with("layer-") || name.starts_with("activations-"))
                && name.ends_with(".safetensors");
            if ours {
                std::fs::remove_file(e.path())
                    .or_else(not_found)
                    .map_err(io(&e.path()))?;
            }
        }
        // Left in place when it holds anything else (a directory the user named).
        let _ = std::fs::remove_dir(&self.dir);
        Ok(())
    }
}

fn not_found(e: std::io::Error) -> std::io::Result<()> {
    if e.kind() == std::io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}
