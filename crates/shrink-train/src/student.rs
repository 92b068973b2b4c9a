//! Students made from their teacher by structured pruning (as Minitron: prune, then distil).
//!
//! A spec names what the student keeps: `layers=K` (K blocks, the others dropped by lowest
//! Block Influence), `heads=R` and `neurons=R` (the share of attention heads / MLP channels
//! kept by mean activation), comma-separated, applied in that order with
//! [`shrink_methods::structured`].

use std::path::{Path, PathBuf};

use shrink_io::Checkpoint;
use shrink_methods::calibrated::Run;
use shrink_methods::pipeline::Progress;
use shrink_methods::select::Selection;
use shrink_methods::structured::{self, Structured};
use shrink_models::Architecture;

use crate::error::{Result, TrainError};

/// What a student keeps of its teacher.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct StudentSpec {
    /// Blocks kept.
    pub layers: Option<usize>,
    /// Share of attention heads kept.
    pub heads: Option<f64>,
    /// Share of MLP channels kept.
    pub neurons: Option<f64>,
}

impl std::fmt::Display for StudentSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(k) = self.layers {
            parts.push(format!("{k} blocks"));
        }
        if let Some(r) = self.heads {
            parts.push(format!("{r} of the heads"));
        }
        if let Some(r) = self.neurons {
            parts.push(format!("{r} of the MLP channels"));
        }
        write!(f, "keep {}", parts.join(", "))
    }
}

impl StudentSpec {
    /// Parse `layers=24,heads=0.75,neurons=0.5` (any subset, at least one).
    pub fn parse(s: &str) -> Result<Self> {
        let mut spec = StudentSpec::default();
        let bad = |w: String| TrainError::Options(format!("--student-from-teacher {s:?}: {w}"));
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| bad(format!("{part:?} is not key=value")))?;
            match k.trim() {
                "layers" => {
                    spec.layers = Some(v.trim().parse().map_err(|_| {
                        bad(format!("layers takes a count of blocks to keep, not {v:?}"))
                    })?)
                }
                "heads" | "neurons" => {
                    let r: f64 = v
                        .trim()
                        .parse()
                        .map_err(|_| bad(format!("{k} takes a share in (0, 1], not {v:?}")))?;
                    if !(r > 0.0 && r <= 1.0) {
                        return Err(bad(format!("{k}={r} is outside (0, 1]")));
                    }
                    if k.trim() == "heads" {
                        spec.heads = Some(r);
                    } else {
                        spec.neurons = Some(r);
                    }
                }
                other => {
                    return Err(bad(format!(
                        "unknown key {other:?} (layers=K, heads=R, neurons=R)"
                    )))
                }
            }
        }
        if spec == StudentSpec::default() {
            return Err(bad(
                "names nothing to keep (layers=K, heads=R, neurons=R)".into()
            ));
        }
        Ok(spec)
    }

    /// The structured removals, in order, for a teacher of `layers` blocks.
    pub fn steps(&self, layers: usize) -> Result<Vec<Structured>> {
        let mut v = Vec::new();
        if let Some(k) = self.layers {
            if k == 0 || k > layers {
                return Err(TrainError::Options(format!(
                    "--student-from-teacher layers={k}: the teacher has {layers} blocks (keep 1..={layers})"
                )));
            }
            if k < layers {
                v.push(Structured::Layers { remove: layers - k });
            }
        }
        if let Some(r) = self.heads.filter(|&r| r < 1.0) {
            v.push(Structured::Heads { keep_ratio: r });
        }
        if let Some(r) = self.neurons.filter(|&r| r < 1.0) {
            v.push(Structured::Neurons { keep_ratio: r });
        }
        Ok(v)
    }
}

/// Make the student `spec` describes from `teacher` (an HF directory), calibrated on
/// `samples`, into `out` (must not exist). Intermediate models go to siblings of `out` and
/// are removed. Returns `out`.
pub fn from_teacher(
    teacher: &Checkpoint,
    spec: &StudentSpec,
    samples: &[Vec<u32>],
    out: &Path,
    progress: &dyn Progress,
) -> Result<PathBuf> {
    let layers = match Architecture::from_checkpoint(teacher)? {
        Architecture::Decoder(c) => c.num_layers(),
        Architecture::Encoder(c) => c.num_layers,
    };
    let steps = spec.steps(layers)?;
    if steps.is_empty() {
        return Err(TrainError::Options(
            "--student-from-teacher keeps everything: the student would be the teacher".into(),
        ));
    }
    let all = Selection::default();
    let mut current: Option<PathBuf> = None;
    for (i, what) in steps.iter().enumerate() {
        let last = i + 1 == steps.len();
        let target = if last {
            out.to_path_buf()
        } else {
            out.with_file_name(format!(
                "{}.step{i}",
                out.file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default()
            ))
        };
        if target.exists() && !last {
            std::fs::remove_dir_all(&target).map_err(|source| TrainError::File {
                path: target.clone(),
                source,
            })?;
        }
        let opened;
        let src = match &current {
            Some(p) => {
                opened = Checkpoint::open(p)?;
                &opened
            }
            None => teacher,
        };
        let run = Run::new(src, &target, samples, &all, progress);
        structured::prune(&run, *what)?;
        if let Some(prev) = current.replace(target) {
            let _ = std::fs::remove_dir_all(prev);
        }
    }
    Ok(out.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_refuse() {
        let s = StudentSpec::parse("layers=24, heads=0.75").unwrap();
        assert_eq!(s.layers, Some(24));
        assert_eq!(s.heads, Some(0.75));
        assert_eq!(
            s.steps(30).unwrap(),
            vec![
                Structured::Layers { remove: 6 },
                Structured::Heads { keep_ratio: 0.75 }
            ]
        );
        for bad in ["", "layers", "layers=x", "heads=0", "heads=1.5", "depth=3"] {
            assert!(StudentSpec::parse(bad).is_err(), "{bad}");
        }
        assert!(StudentSpec::parse("layers=31").unwrap().steps(30).is_err());
    }
}
