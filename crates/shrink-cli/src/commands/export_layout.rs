//! `shrink export MODEL --to gptq|awq|bitsandbytes|compressed-tensors`: the flags handed to
//! [`shrink_methods::export_layout::export`], its report printed.

use anyhow::Result;
use shrink_formats::float::FloatType;
use shrink_methods::export_layout::{export, Layout, Request};

use crate::common;

/// Run `shrink export` to an ecosystem layout.
pub fn run(a: super::export::Args, layout: Layout) -> Result<()> {
    let ckpt = common::open(&a.model)?;
    let request = Request {
        ty: a.ty,
        group_size: a.group_size,
        sym: a.sym,
        double_quant: a.double_quant,
        block_size: a.block_size,
    };
    let dense = a.dense_dtype.as_deref().and_then(FloatType::parse);
    let bar = common::Bar::default();
    let report = export(&ckpt, &a.output, layout, &request, dense, &bar)?;
    common::print_report(&report, a.json)
}
