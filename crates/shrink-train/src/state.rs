//! Training checkpoints: the weights, the optimiser's moments and the step, written so that a
//! killed run never leaves a half-written one.
//!
//! A checkpoint is a directory `checkpoint/` in the run directory holding `model.safetensors`,
//! `optimizer.safetensors` and `state.json` (written last). It is written as
//! `.checkpoint.partial/`, then the previous one is renamed `.checkpoint.previous/`, the new
//! one renamed into place and the previous removed; [`latest`] finds whichever complete one a
//! kill between those renames left.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};

use crate::error::{Result, TrainError};
use crate::optim::OptimState;
use crate::params::Params;

/// Name of the checkpoint directory inside a run directory.
pub const CHECKPOINT: &str = "checkpoint";
const PARTIAL: &str = ".checkpoint.partial";
const PREVIOUS: &str = ".checkpoint.previous";

fn os(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::File {
        path: shrink_io::output::shown(path.to_path_buf()),
        source,
    }
}

/// safetensors bytes of f32 tensors given as (name, shape, values).
pub fn safetensors_bytes(
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, s, _), b)| {
            TensorView::new(Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| TrainError::Options(format!("tensor {n}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, metadata)
        .map_err(|e| TrainError::Options(format!("safetensors: {e}")))
}

/// The f32 values of tensor `name` in `st` (read from `path`, named in errors).
pub fn f32_tensor(st: &safetensors::SafeTensors, name: &str, path: &Path) -> Result<Vec<f32>> {
    let t = st
        .tensor(name)
        .map_err(|_| TrainError::input(path, format!("has no tensor {name}")))?;
    if t.dtype() != Dtype::F32 {
        return Err(TrainError::input(
            path,
            format!("{name} is {:?}, expected F32", t.dtype()),
        ));
    }
    Ok(t.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// Write `bytes` to `path` through a temporary file renamed into place.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(shrink_io::output::write_atomic(path, bytes)?)
}

/// Save `params`, `opt` and `extra` (the run's own state, as JSON) as the run directory's
/// checkpoint; returns its path.
pub fn save(
    run_dir: &Path,
    params: &Params,
    opt: &OptimState,
    extra: &serde_json::Value,
) -> Result<PathBuf> {
    let partial = run_dir.join(PARTIAL);
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(os(&partial))?;
    }
    std::fs::create_dir(&partial).map_err(os(&partial))?;
    let model = partial.join("model.safetensors");
    params.write_safetensors(&model)?;
    let mut moments = Vec::with_capacity(2 * params.len());
    for (i, name) in params.names().iter().enumerate() {
        let shape = params.vars()[i].shape().dims().to_vec();
        moments.push((format!("m.{name}"), shape.clone(), opt.m[i].clone()));
        moments.push((format!("v.{name}"), shape, opt.v[i].clone()));
    }
    let o = partial.join("optimizer.safetensors");
    std::fs::write(&o, safetensors_bytes(&moments, None)?).map_err(os(&o))?;
    let state = serde_json::json!({ "step": opt.step, "run": extra });
    let s = partial.join("state.json");
    std::fs::write(&s, serde_json::to_vec_pretty(&state).expect("JSON")).map_err(os(&s))?;

    let current = run_dir.join(CHECKPOINT);
    let previous = run_dir.join(PREVIOUS);
    if previous.exists() {
        std::fs::remove_dir_all(&previous).map_err(os(&previous))?;
    }
    if current.exists() {
        std::fs::rename(&current, &previous).map_err(os(&current))?;
    }
    std::fs::rename(&partial, &current).map_err(os(&current))?;
    if previous.exists() {
        std::fs::remove_dir_all(&previous).map_err(os(&previous))?;
    }
    Ok(current)
}

/// The newest complete checkpoint of a run directory, if any.
pub fn latest(run_dir: &Path) -> Option<PathBuf> {
    [CHECKPOINT, PREVIOUS]
        .iter()
        .map(|n| run_dir.join(n))
        .find(|p| p.join("state.json").is_file())
}

/// Load checkpoint `dir` into `params`; returns the optimiser state and the run's JSON.
pub fn load(dir: &Path, params: &Params) -> Result<(OptimState, serde_json::Value)> {
    let s = dir.join("state.json");
    let text = std::fs::read(&s).map_err(os(&s))?;
    let state: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| TrainError::input(&s, format!("not JSON: {e}")))?;
    let step = state["step"]
        .as_u64()
        .ok_or_else(|| TrainError::input(&s, "no step"))? as usize;
    params.load_values(&dir.join("model.safetensors"))?;
    let o = dir.join("optimizer.safetensors");
    let bytes = std::fs::read(&o).map_err(os(&o))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| TrainError::input(&o, format!("not a safetensors file: {e}")))?;
    let mut opt = OptimState::new(params);
    opt.step = step;
    for (i, name) in params.names().iter().enumerate() {
        opt.m[i] = f32_tensor(&st, &format!("m.{name}"), &o)?;
        opt.v[i] = f32_tensor(&st, &format!("v.{name}"), &o)?;
        if opt.m[i].len() != params.vars()[i].elem_count() || opt.v[i].len() != opt.m[i].len() {
            return Err(TrainError::input(
                &o,
                format!("moments of {name} have the wrong size"),
            ));
        }
    }
    Ok((opt, state["run"].clone()))
}
