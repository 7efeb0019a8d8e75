//! `checkout` subcommand.

use std::path::PathBuf;

use clap::Args;

use super::{human_bytes, open, Global};

/// Write a revision into an empty directory, with full fidelity.
///
/// Ownership, modes (setuid, sticky), nanosecond mtimes, xattrs (ACLs, capabilities, SELinux
/// labels), hardlinks, devices, fifos, sockets and sparse holes come out as they went in. Run
/// it as root to keep ownership and devices. Every blob is checked against its hash before it
/// is written; a damaged one stops the checkout. An aurum repository the revision embeds (a
/// cluster master's) is rebuilt as a working repository from this one's packs.
#[derive(Args)]
pub struct CheckoutArgs {
    /// The revision (IMAGE, IMAGE@N, IMAGE:TAG or 8+ hex digits).
    rev: String,
    /// The directory to create or fill (it must be empty).
    dir: PathBuf,
    /// Flush the written data to disk before returning (one syncfs), as before powering off
    /// or pulling a USB disk. Without it, like cp, the kernel writes it back in its own time.
    #[arg(long)]
    sync: bool,
    /// Print JSON: the revision ({"revision", "image", "number", "id"}), "dir", the counts,
    /// "warnings" and "embedded" (each repository rebuilt: "dir", "images", "revisions",
    /// "packs_copied", "bytes_copied", ...).
    #[arg(long)]
    json: bool,
}

pub fn exec(g: &Global, a: CheckoutArgs) -> anyhow::Result<()> {
    let repo = open(g)?;
    let rev = repo.resolve(&a.rev)?;
    // Streamed from its file at each pass: a checkout's memory does not grow with the tree.
    let manifest = aurum::repo::StoredManifest {
        repo: &repo,
        id: rev.id,
    };
    let blobs = repo.blobs_for_command()?;
    let progress = g.progress();
    let started = std::time::Instant::now();
    let r = aurum::apply::checkout(&manifest, &blobs, &a.dir, progress.as_ref())?;
    if a.sync {
        let fd = aurum::sys::open_root(&a.dir)?;
        aurum::sys::sync_fs(std::os::fd::AsFd::as_fd(&fd), &a.dir)?;
    }
    if a.json {
        let mut v = super::revision_json(&rev);
        v["dir"] = a.dir.display().to_string().into();
        v["entries"] = r.entries.into();
        v["files"] = r.files.into();
        v["bytes"] = r.bytes.into();
        v["seconds"] = started.elapsed().as_secs_f64().into();
        v["warnings"] = serde_json::json!(r.warnings);
        v["embedded"] = serde_json::json!(r.embedded);
        return super::print_json(&v);
    }
    for w in &r.warnings {
        super::warning(w);
    }
    for e in &r.embedded {
        println!(
            "rebuilt the embedded repository {}: {} images, {} revisions, {} packs copied ({})",
            e.dir.display(),
            e.images,
            e.revisions,
            e.packs_copied,
            human_bytes(e.bytes_copied)
        );
    }
    println!(
        "{} {} -> {}: {} entries, {} files, {} in {:.2} s",
        rev.name(),
        rev.id.short(),
        a.dir.display(),
        r.entries,
        r.files,
        human_bytes(r.bytes),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
