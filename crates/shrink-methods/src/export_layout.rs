//! Export to an ecosystem's quantized safetensors layout (`shrink export MODEL --to
//! gptq|awq|bitsandbytes|compressed-tensors`): a Hugging Face directory whose quantized
//! linears follow that layout and `quantization_config`, written by
//! [`crate::per_tensor::write_encoded`].
//!
//! A weight the input already stores quantized on a grid the layout holds (an integer grid for
//! gptq / awq / compressed-tensors, NF4/FP4 or row-wise int8 for bitsandbytes) is repacked
//! with its codes, scales and zero points unchanged: the export is lossless. Any other weight
//! is read as float32 (dequantized if stored quantized, with a warning that requantizing stacks
//! error) and rounded to the nearest point of the target grid.

use std::cell::RefCell;
use std::collections::BTreeSet;

use serde_json::Value;
use shrink_formats::awq_layout::AwqParts;
use shrink_formats::float::FloatType;
use shrink_formats::gptq_layout::GptqParts;
use shrink_formats::int::{Granularity, IntSpec};
use shrink_formats::nf4::{Fp4Kind, Nf4Spec};
use shrink_io::hf_int;
use shrink_io::quantized::Quantized;
use shrink_io::Checkpoint;
use shrink_models::{Architecture, LinearInfo};

use crate::error::{MethodError, Result};
use crate::per_tensor::{encoded, layout, write_encoded, Encoded, Encoder, Job};
use crate::report::Report;
use crate::rtn::Rtn;
use crate::select::Selection;

/// Refuse the options with `msg`.
macro_rules! bail {
    ($($t:tt)*) => {
        return Err(MethodError::Options(format!($($t)*)))
    };
}

/// An ecosystem safetensors layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// AutoGPTQ / GPTQModel `gptq` (v1 zero points), with quantize_config.json.
    Gptq,
    /// AutoAWQ GEMM, 4-bit.
    Awq,
    /// bitsandbytes 4-bit (nf4/fp4) or 8-bit.
    Bitsandbytes,
    /// compressed-tensors `pack-quantized` / `int-quantized`.
    CompressedTensors,
}

impl Layout {
    /// The layout `--to` names, if it is one.
    pub fn parse(s: &str) -> Option<Layout> {
        Some(match s {
            "gptq" => Layout::Gptq,
            "awq" => Layout::Awq,
            "bitsandbytes" | "bnb" => Layout::Bitsandbytes,
            "compressed-tensors" | "ct" => Layout::CompressedTensors,
            _ => return None,
        })
    }

    /// The name `--to` takes.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Gptq => "gptq",
            Layout::Awq => "awq",
            Layout::Bitsandbytes => "bitsandbytes",
            Layout::CompressedTensors => "compressed-tensors",
        }
    }
}

/// What the user asked for; unset fields follow the input's own grid, then the defaults.
#[derive(Clone, Debug, Default)]
pub struct Request {
    /// `--type`: int2..int8, nf4, fp4.
    pub ty: Option<String>,
    /// `--group-size`.
    pub group_size: Option<usize>,
    /// `--sym`.
    pub sym: bool,
    /// `--double-quant`.
    pub double_quant: bool,
    /// `--block-size`.
    pub block_size: Option<usize>,
}

impl Request {
    fn is_default(&self) -> bool {
        self.ty.is_none()
            && self.group_size.is_none()
            && !self.sym
            && !self.double_quant
            && self.block_size.is_none()
    }
}

/// The grid a layout can hold that the input stores `q` on, if any.
fn grid_of(layout: Layout, q: &Quantized) -> Option<Rtn> {
    match (layout, q) {
        (Layout::Bitsandbytes, Quantized::Nf4(t, _)) => Some(Rtn::Nf4(t.spec)),
        (Layout::Bitsandbytes, Quantized::Int8Row(_, threshold)) => Some(Rtn::LlmInt8 {
            threshold: *threshold as f64,
        }),
        (Layout::CompressedTensors, Quantized::Int(t) | Quantized::W8A8(t)) => {
            Some(Rtn::Int(t.spec))
        }
        (Layout::Gptq, Quantized::Int(t) | Quantized::W8A8(t)) => {
            GptqParts::from_int_tensor(t).ok().map(|_| Rtn::Int(t.spec))
        }
        (Layout::Awq, Quantized::Int(t) | Quantized::W8A8(t)) => {
            AwqParts::from_int_tensor(t).ok().map(|_| Rtn::Int(t.spec))
        }
        _ => None,
    }
}

/// The grid of the flags for `layout`.
fn requested_grid(layout: Layout, r: &Request) -> Result<Rtn> {
    let ty = r.ty.as_deref().unwrap_or(match layout {
        Layout::Bitsandbytes => "nf4",
        _ => "int4",
    });
    let int_bits = ty
        .strip_prefix("int")
        .and_then(|b| b.parse::<u8>().ok())
        .filter(|b| (2..=8).contains(b));
    let int = |bits: u8| {
        let granularity = match r.group_size {
            Some(0) => Granularity::Channel,
            Some(g) => Granularity::Group(g),
            None => Granularity::Group(64),
        };
        Rtn::Int(IntSpec {
            bits,
            symmetric: r.sym,
            granularity,
            scale_type: FloatType::F16,
        })
    };
    Ok(match (layout, ty, int_bits) {
        (Layout::Bitsandbytes, "nf4" | "fp4", _) => Rtn::Nf4(Nf4Spec {
            kind: if ty == "nf4" {
                Fp4Kind::Nf4
            } else {
                Fp4Kind::Fp4
            },
            block_size: r.block_size.unwrap_or(64),
            double_quant: r.double_quant,
        }),
        (Layout::Bitsandbytes, "int8", _) => Rtn::LlmInt8 { threshold: 6.0 },
        (Layout::Bitsandbytes, _, _) => {
            bail!("--to bitsandbytes stores nf4, fp4 or int8 (--type), not {ty:?}")
        }
        (Layout::Gptq, _, Some(b @ (2 | 3 | 4 | 8))) => int(b),
        (Layout::Gptq, _, _) => bail!("--to gptq stores int2, int3, int4 or int8, not {ty:?}"),
        (Layout::Awq, _, Some(4)) => {
            if r.sym {
                bail!("--to awq stores asymmetric 4-bit groups (no --sym)");
            }
            int(4)
        }
        (Layout::Awq, _, _) => bail!("--to awq stores int4 only, not {ty:?}"),
        (Layout::CompressedTensors, _, Some(b)) => int(b),
        (Layout::CompressedTensors, _, None) => {
            bail!("--to compressed-tensors stores int2 .. int8, not {ty:?}")
        }
    })
}

/// Encodes the selected linears in one ecosystem layout, reusing the input's codes when it can.
pub struct LayoutEncoder {
    layout: Layout,
    grid: Rtn,
    /// Whether the grid came from the input (`true`) or from the flags / defaults.
    grid_from_input: bool,
    dense: &'static str,
    /// Weights stored quantized in the input that had to be dequantized and requantized.
    requantized: RefCell<BTreeSet<String>>,
}

impl LayoutEncoder {
    /// The encoder for `layout`: the grid of `--type` and friends, or when none is given, the
    /// grid `first` (the input's first selected weight, if stored quantized) is on.
    pub fn new(
        layout: Layout,
        request: &Request,
        first: Option<&Quantized>,
        dense: FloatType,
    ) -> Result<LayoutEncoder> {
        let from_input = first
            .filter(|_| request.is_default())
            .and_then(|q| grid_of(layout, q));
        let grid_from_input = from_input.is_some();
        let grid = match from_input {
            Some(g) => g,
            None => requested_grid(layout, request)?,
        };
        Ok(LayoutEncoder {
            layout,
            grid,
            grid_from_input,
            dense: dense.torch_name(),
            requantized: RefCell::new(BTreeSet::new()),
        })
    }

    /// The weight `q` as is, when it is on this encoder's grid (W8A8 codes as plain
    /// integers: the layouts here store weights only).
    fn reuse(&self, q: Quantized) -> Option<Quantized> {
        if grid_of(self.layout, &q).as_ref().map(Rtn::name) != Some(self.grid.name()) {
            return None;
        }
        match q {
            Quantized::W8A8(t) => Some(Quantized::Int(t)),
            Quantized::Int(_) | Quantized::Nf4(..) | Quantized::Int8Row(..) => Some(q),
            _ => None,
        }
    }

    fn int_spec(&self) -> Option<IntSpec> {
        match &self.grid {
            Rtn::Int(s) => Some(*s),
            _ => None,
        }
    }
}

impl Encoder for LayoutEncoder {
    fn name(&self) -> String {
        format!("{} {}", self.layout.name(), self.grid.name())
    }

    fn validate(&self, l: &LinearInfo) -> Result<()> {
        // Weights the input stores on this grid are checked by their own layout; the others
        // are requantized and must fit it.
        self.grid.validate(&l.weight, l.out_features, l.in_features)
    }

    fn wants_source(&self) -> bool {
        true
    }

    fn encode(
        &self,
        l: &LinearInfo,
        read: &mut dyn FnMut() -> Result<Vec<f32>>,
        source: Option<Quantized>,
    ) -> Result<Encoded> {
        let had_source = source.is_some();
        let (q, input, seconds) = match source.and_then(|s| self.reuse(s)) {
            Some(q) => (q, None, 0.0),
            None => {
                if had_source {
                    self.requantized.borrow_mut().insert(l.weight.clone());
                }
                let w = read()?;
                let t = std::time::Instant::now();
                let q = self
                    .grid
                    .quantize(&l.weight, &w, l.out_features, l.in_features)?;
                (q, Some(w), t.elapsed().as_secs_f64())
            }
        };
        let fmt = |source| MethodError::Format {
            name: l.weight.clone(),
            source,
        };
        encoded(l, q, input, seconds, |module, q| match (q, self.layout) {
            (Quantized::Int(t), Layout::Gptq) => {
                let parts = GptqParts::from_int_tensor(t).map_err(fmt)?;
                hf_int::gptq_tensors(module, &parts).map_err(fmt)
            }
            (Quantized::Int(t), Layout::Awq) => hf_int::awq_tensors(module, t).map_err(fmt),
            _ => layout(module, q, self.dense),
        })
    }

    fn config(&self, ignore: &[String], dense_dtype: &str) -> Value {
        let group = |s: &IntSpec| match s.granularity {
            Granularity::Group(g) => Some(g),
            _ => None,
        };
        match (self.layout, self.int_spec()) {
            (Layout::Gptq, Some(s)) => {
                hf_int::gptq_config(s.bits, group(&s), false, s.symmetric, 0.01, true, false)
            }
            (Layout::Awq, Some(s)) => hf_int::awq_config(4, group(&s), true, "gemm"),
            _ => self.grid.config(ignore, dense_dtype),
        }
    }

    fn extra_files(&self, config: &Value) -> Result<Vec<(String, Vec<u8>)>> {
        Ok(match self.layout {
            Layout::Gptq => vec![(
                "quantize_config.json".to_string(),
                serde_json::to_vec_pretty(&hf_int::gptq_quantize_config(config))
                    .expect("JSON values serialize"),
            )],
            _ => Vec::new(),
        })
    }

    fn report(&self, r: &mut Report) {
        let n = self.requantized.borrow().len();
        let (from, whose) = if self.grid_from_input {
            ("input", "the input's")
        } else {
            ("flags", "requested")
        };
        r.set("layout", self.layout.name());
        r.set("grid_from", from);
        r.set("requantized_tensors", n);
        r.notes.push(format!(
            "layout         {} ({whose} grid {})",
            self.layout.name(),
            self.grid.name()
        ));
        if n > 0 {
            let warning = format!(
                "{n} weights were stored quantized on another grid: dequantized and requantized, \
                 which stacks both rounding errors"
            );
            r.set("warning", &warning);
            r.notes.push(format!("warning        {warning}"));
        }
    }
}

/// Export `ckpt` to `output` in `layout`: the grid `request` asks for, or the input's own when
/// it asks for nothing; dense tensors as `dense_dtype`, else as the input's float type (f32
/// for a GGUF).
pub fn export(
    ckpt: &Checkpoint,
    output: &std::path::Path,
    layout: Layout,
    request: &Request,
    dense_dtype: Option<FloatType>,
    progress: &dyn crate::pipeline::Progress,
) -> Result<Report> {
    let arch = Architecture::from_checkpoint(ckpt)?;
    let selection = Selection::default();
    let first = selection.resolve(&arch)?.into_iter().next();
    let (first_source, input_dense) = match ckpt {
        Checkpoint::Hf(h) => {
            let src = match &first {
                Some(l) => h.quantized(&l.weight)?,
                None => None,
            };
            let dense = ckpt.tensors().iter().find_map(|t| match t.dtype {
                shrink_io::StoredDtype::Float(f) => Some(f),
                _ => None,
            });
            (src, dense)
        }
        Checkpoint::Gguf(_) => (None, None),
    };
    let dense = dense_dtype.or(input_dense).unwrap_or(FloatType::F32);
    let enc = LayoutEncoder::new(layout, request, first_source.as_ref(), dense)?;
    let job = Job {
        ckpt,
        output,
        selection: &selection,
        dense_dtype: dense,
        progress,
    };
    write_encoded(&job, &enc)
}
