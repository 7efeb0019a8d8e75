//! `init` subcommand.

use clap::Args;

use super::Global;

/// Create an empty repository.
///
/// The repository is a directory of plain files (packs, manifests, refs) plus a SQLite
/// catalog, so it can be backed up with any tool and served by any web server. It is created
/// at --repo (default $AURUM_REPO, else /var/lib/aurum). It starts with the partition
/// templates shipped with aurum (`aurum template list`).
#[derive(Args)]
pub struct InitArgs {}

pub fn exec(g: &Global, _: InitArgs) -> anyhow::Result<()> {
    aurum::repo::init(&g.repo)?;
    let mut repo = aurum::repo::Repository::open(&g.repo, aurum::repo::Lock::Shared)?;
    aurum::template::store::seed(&mut repo)?;
    println!(
        "initialised an empty aurum repository in {}",
        g.repo.display()
    );
    Ok(())
}
