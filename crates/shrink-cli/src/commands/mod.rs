//! One module per subcommand.

pub mod auto;
pub mod bench;
pub mod calibrated;
pub mod chart;
pub mod compare;
pub mod convert;
pub mod distill;
pub mod distill_classify;
pub mod eval;
pub mod export;
pub mod export_layout;
pub mod finetune;
pub mod generate;
pub mod imatrix;
pub mod inspect;
pub mod prune;
pub mod qat;
pub mod qlora;
pub mod quantize;
pub mod quantize_ggml;
pub mod rotate;
pub mod train_classifier;
