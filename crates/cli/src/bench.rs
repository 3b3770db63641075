//! `encore bench`: decode-step benchmark (random-weight presets or a model folder) and
//! `encore bench launch` (the launch-metadata micro-benchmark). CUDA only.

use anyhow::{bail, Result};
use clap::Args;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// `launch` runs the launch-metadata micro-benchmark instead of a model.
    what: Option<String>,
}

pub fn run(a: BenchArgs) -> Result<()> {
    bail!("bench {:?}: not built yet", a.what)
}
