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
pub struct InitArgs {
    /// Print JSON: {"repository": DIR, "templates": [CLASS...]}.
    #[arg(long)]
    json: bool,
}

pub fn exec(g: &Global, a: InitArgs) -> anyhow::Result<()> {
    aurum::repo::init(&g.repo)?;
    let mut repo = aurum::repo::Repository::open(&g.repo, aurum::repo::Lock::Shared)?;
    let seeded = aurum::template::store::seed(&mut repo)?;
    if a.json {
        let classes: Vec<String> = seeded.iter().map(|(c, _, _)| c.to_string()).collect();
        return super::print_json(&serde_json::json!({
            "repository": g.repo.display().to_string(),
            "templates": classes,
        }));
    }
    println!(
        "initialised an empty aurum repository in {}",
        g.repo.display()
    );
    Ok(())
}
