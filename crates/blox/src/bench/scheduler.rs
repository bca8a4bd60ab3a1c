//! TEMPORARY during the engine rewrite: the daemon scheduler's bench is being rewritten.

use std::path::Path;

use anyhow::Result;

use super::Bench;

pub(crate) async fn run(_bench: &mut Bench, _dir: &Path, _quick: bool) -> Result<()> {
    Ok(())
}
