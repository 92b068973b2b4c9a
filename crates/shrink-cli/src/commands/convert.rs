//! `shrink convert` (being written).
use std::path::PathBuf;
/// Arguments of `shrink convert`.
#[derive(clap::Args)]
pub struct Args {
    /// Model.
    pub model: PathBuf,
}
/// Run.
pub fn run(_a: Args) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
