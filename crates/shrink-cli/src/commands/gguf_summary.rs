//! The summary `quantize` (GGUF methods) and `export --to gguf` report for the file they wrote:
//! tensors, weights and bits/weight per type, and the fallbacks row lengths forced.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use shrink_formats::ggml::GgmlType;
use shrink_io::gguf_write::GgufTensorSpec;

/// Per-type tally.
#[derive(Default, Clone, Copy)]
struct Tally {
    tensors: u64,
    elements: u64,
    bytes: u64,
}

impl Tally {
    fn bits_per_weight(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.elements.max(1) as f64
    }
}

/// Types and fallbacks of a written GGUF's tensors.
pub(crate) struct GgufSummary {
    by_type: BTreeMap<&'static str, Tally>,
    /// (row length, wanted type, stored type) → tensors.
    fallbacks: BTreeMap<(u64, &'static str, &'static str), u64>,
    /// Weights in all tensors.
    pub elements: u64,
    /// Bytes of all tensors.
    pub tensor_bytes: u64,
}

impl GgufSummary {
    /// The summary of `tensors`: each spec with the type the rules wanted when a fallback
    /// replaced it.
    pub(crate) fn new<'a>(
        tensors: impl IntoIterator<Item = (&'a GgufTensorSpec, Option<GgmlType>)>,
    ) -> Self {
        let mut s = GgufSummary {
            by_type: BTreeMap::new(),
            fallbacks: BTreeMap::new(),
            elements: 0,
            tensor_bytes: 0,
        };
        for (spec, wanted) in tensors {
            let (n, b) = (
                spec.elements(),
                spec.bytes().expect("validated by the writer"),
            );
            let t = s.by_type.entry(spec.ty.name()).or_default();
            t.tensors += 1;
            t.elements += n;
            t.bytes += b;
            s.elements += n;
            s.tensor_bytes += b;
            if let Some(w) = wanted {
                *s.fallbacks
                    .entry((spec.ne[0], w.name(), spec.ty.name()))
                    .or_default() += 1;
            }
        }
        s
    }

    /// Bits per weight over all tensors, as llama-quantize reports it.
    pub(crate) fn bits_per_weight(&self) -> f64 {
        self.tensor_bytes as f64 * 8.0 / self.elements.max(1) as f64
    }

    /// The report's `types` object.
    pub(crate) fn types_json(&self) -> Value {
        self.by_type
            .iter()
            .map(|(t, x)| {
                let v = json!({"tensors": x.tensors, "elements": x.elements, "bytes": x.bytes,
                               "bits_per_weight": x.bits_per_weight()});
                (t.to_string(), v)
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    }

    /// The report's `fallbacks` list.
    pub(crate) fn fallbacks_json(&self) -> Value {
        self.fallbacks
            .iter()
            .map(|((cols, w, got), n)| json!({"cols": cols, "wanted": w, "got": got, "tensors": n}))
            .collect()
    }

    /// Print one line per type, then one per fallback.
    pub(crate) fn print(&self) {
        for (t, x) in &self.by_type {
            println!(
                "  {t:<7} {:>4} tensors {:>12} weights {:>7.3} bits/weight",
                x.tensors,
                x.elements,
                x.bits_per_weight()
            );
        }
        for ((cols, w, got), n) in &self.fallbacks {
            println!("fallback       {cols}-wide rows: {w} → {got} on {n} tensors (rows not whole {w} blocks, as llama.cpp does)");
        }
    }
}
