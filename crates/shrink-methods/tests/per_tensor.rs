//! The per-tensor writer and the ecosystem-layout encoders over a whole (tiny) checkpoint:
//! what is written reads back as the quantizer's own dequantized weights, the report counts
//! the file's bytes, a repacked layout keeps the input's codes, and a method failure while
//! writing is reported as the method's error with nothing left behind.

use std::cell::Cell;
use std::path::PathBuf;

use serde_json::Value;
use shrink_formats::float::FloatType;
use shrink_formats::int::{Granularity, IntSpec};
use shrink_io::quantized::Quantized;
use shrink_io::Checkpoint;
use shrink_methods::export_layout::{export, Layout, Request};
use shrink_methods::per_tensor::{write_encoded, Encoded, Encoder, Job, QuantizerEncoder};
use shrink_methods::pipeline::Silent;
use shrink_methods::rtn::Rtn;
use shrink_methods::select::Selection;
use shrink_methods::MethodError;
use shrink_models::{Architecture, LinearInfo};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/fixtures"
    ))
    .join(name)
}

/// A fresh directory under the system's temporary directory, removed on drop.
struct Tmp(PathBuf);

impl Tmp {
    fn new(what: &str) -> Tmp {
        let p = std::env::temp_dir().join(format!("shrink-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Tmp(p)
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn int4_g32() -> Rtn {
    Rtn::Int(IntSpec {
        bits: 4,
        symmetric: false,
        granularity: Granularity::Group(32),
        scale_type: FloatType::F16,
    })
}

fn job<'a>(ckpt: &'a Checkpoint, output: &'a std::path::Path, sel: &'a Selection) -> Job<'a> {
    Job {
        ckpt,
        output,
        selection: sel,
        dense_dtype: FloatType::F32,
        progress: &Silent,
    }
}

#[test]
fn written_weights_read_back_as_the_quantizer_dequantizes_them() {
    let tmp = Tmp::new("per-tensor");
    let src = Checkpoint::open(fixture("tiny-llama")).unwrap();
    let out = tmp.0.join("q");
    let sel = Selection::default();
    let enc = QuantizerEncoder {
        method: Box::new(int4_g32()),
        dense_dtype: FloatType::F32,
    };
    let r = write_encoded(&job(&src, &out, &sel), &enc).unwrap();

    let arch = Architecture::from_checkpoint(&src).unwrap();
    let selected = sel.resolve(&arch).unwrap();
    assert_eq!(r.quantized_tensors, selected.len());
    assert_eq!(r.extra["reused_tensors"], 0);
    let back = Checkpoint::open(&out).unwrap();
    for l in &selected {
        let (w, _) = src.read_f32(&l.weight).unwrap();
        let want = int4_g32()
            .quantize(&l.weight, &w, l.out_features, l.in_features)
            .unwrap()
            .dequantize()
            .0;
        let (got, _) = back.read_f32(&l.weight).unwrap();
        assert!(
            want.iter()
                .zip(&got)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{}",
            l.weight
        );
    }
    // model_bytes counts every tensor byte of the file.
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!(r.model_bytes as usize, bytes.len() - 8 - header);
    let saved: Value =
        serde_json::from_slice(&std::fs::read(out.join("shrink-quantize.json")).unwrap()).unwrap();
    assert_eq!(saved["method"], r.method);
}

#[test]
fn a_layout_of_the_inputs_grid_keeps_its_codes() {
    let tmp = Tmp::new("export-layout");
    let src = Checkpoint::open(fixture("tiny-llama")).unwrap();
    let (gptq, ct) = (tmp.0.join("gptq"), tmp.0.join("ct"));
    let request = Request {
        ty: Some("int4".into()),
        group_size: Some(32),
        ..Request::default()
    };
    let r = export(&src, &gptq, Layout::Gptq, &request, None, &Silent).unwrap();
    assert_eq!(r.extra["grid_from"], "flags");
    let g = Checkpoint::open(&gptq).unwrap();
    let r = export(
        &g,
        &ct,
        Layout::CompressedTensors,
        &Request::default(),
        None,
        &Silent,
    )
    .unwrap();
    assert_eq!(r.extra["grid_from"], "input");
    assert_eq!(r.extra["requantized_tensors"], 0);
    assert_eq!(r.extra["reused_tensors"], r.quantized_tensors);
    assert_eq!(r.relative_rmse, Some(0.0));
    let c = Checkpoint::open(&ct).unwrap();
    let sel = Selection::default();
    for l in sel
        .resolve(&Architecture::from_checkpoint(&g).unwrap())
        .unwrap()
    {
        let (a, b) = (
            g.read_f32(&l.weight).unwrap().0,
            c.read_f32(&l.weight).unwrap().0,
        );
        assert!(
            a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{}",
            l.weight
        );
    }
}

/// Encodes like RTN int4 but fails the second time it sees a weight (the writing pass).
struct FailsWhileWriting {
    inner: QuantizerEncoder,
    calls: Cell<usize>,
    first: usize,
}

impl Encoder for FailsWhileWriting {
    fn name(&self) -> String {
        "failing".into()
    }
    fn validate(&self, l: &LinearInfo) -> shrink_methods::Result<()> {
        self.inner.validate(l)
    }
    fn encode(
        &self,
        l: &LinearInfo,
        read: &mut dyn FnMut() -> shrink_methods::Result<Vec<f32>>,
        source: Option<Quantized>,
    ) -> shrink_methods::Result<Encoded> {
        self.calls.set(self.calls.get() + 1);
        if self.calls.get() > self.first {
            return Err(MethodError::Numerical {
                layer: l.weight.clone(),
                what: "test failure".into(),
            });
        }
        self.inner.encode(l, read, source)
    }
    fn config(&self, ignore: &[String], dense_dtype: &str) -> Value {
        self.inner.config(ignore, dense_dtype)
    }
}

#[test]
fn a_method_failure_while_writing_is_the_methods_error_and_nothing_is_left() {
    let tmp = Tmp::new("per-tensor-fail");
    let src = Checkpoint::open(fixture("tiny-llama")).unwrap();
    let out = tmp.0.join("q");
    let sel = Selection::default();
    let n = sel
        .resolve(&Architecture::from_checkpoint(&src).unwrap())
        .unwrap()
        .len();
    let enc = FailsWhileWriting {
        inner: QuantizerEncoder {
            method: Box::new(int4_g32()),
            dense_dtype: FloatType::F32,
        },
        calls: Cell::new(0),
        first: n,
    };
    let e = write_encoded(&job(&src, &out, &sel), &enc).unwrap_err();
    assert!(matches!(e, MethodError::Numerical { .. }), "got {e:?}");
    assert!(!out.exists());
}
