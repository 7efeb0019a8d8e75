//! A node's first revision onto a fresh root, written the way `checkout` writes.
//!
//! On an empty root (or fresh filesystems holding only their mount points) nothing is
//! replaced and nothing deleted, so the update engine's care for a running node buys nothing:
//! no undo area (there is nothing to roll back to), no temporary name and rename per file (no
//! old version to keep readable). Files are written in parallel under their final names, each
//! directory opened once per batch of its files rather than once per file and path component.
//!
//! Crash safety comes from the journal instead: it is written, marked [`Journal::fresh`],
//! before the first entry, and removed only after everything is on disk and the state names
//! the revision. A run killed in between leaves a journal and no current revision: the node
//! is never taken for a complete one, and the rerun (an ordinary update finishing an
//! interrupted one) hashes every file and rewrites what is missing or half written.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::sys::stat::{mkdirat, Mode};
use rayon::prelude::*;

use super::{Act, Engine, Provider, Step};
use crate::apply::{create_special, set_metadata, write_file};
use crate::error::{IoContext, Result};
use crate::format::manifest::{file_name, parent, Entry, Kind, Manifest};
use crate::node::{Journal, Node};
use crate::progress::Progress;
use crate::sys::{self, shown};

/// Files written with one open of their directory (a large directory is split so that
/// its files are still written in parallel).
const BATCH: usize = 64;

/// Creates every entry of `steps` (all of them creations, but for the metadata of directories
/// already there, which the caller sets with every directory's at the end) under `journal`.
/// Returns the filesystems written to, for the caller to make durable before it commits.
pub(super) fn apply(
    engine: &Engine,
    node: &Node,
    manifest: &Manifest,
    steps: &[Step],
    staging: &Path,
    journal: Journal,
    progress: &dyn Progress,
) -> Result<sys::Syncer> {
    node.begin(&journal)?;
    let root = &engine.root;
    let syncer = sys::Syncer::default();
    syncer.note(engine.root_fd.as_fd());
    let created: Vec<&Entry> = steps
        .iter()
        .filter(|s| s.act == Act::Create)
        .map(|s| &manifest.entries[s.entry])
        .collect();

    // Directories first, in manifest order (parents before children), private until their
    // metadata is set at the end.
    let mut last: Option<(Vec<u8>, OwnedFd)> = None;
    let mut in_dir = |p: &'_ [u8]| -> Result<OwnedFd> {
        if last.as_ref().map(|(lp, _)| lp.as_slice()) != Some(p) {
            last = None;
            let fd = engine.dir(p)?;
            syncer.note(fd.as_fd());
            last = Some((p.to_vec(), fd));
        }
        let fd = &last.as_ref().expect("set above").1;
        nix::unistd::dup(fd).at(shown(root, p))
    };
    for e in created.iter().filter(|e| e.kind == Kind::Dir) {
        let dir = in_dir(parent(&e.path))?;
        mkdirat(
            dir.as_fd(),
            file_name(&e.path),
            Mode::from_bits_truncate(0o700),
        )
        .at(shown(root, &e.path))?;
    }

    // Regular files, in parallel, in batches sharing one descriptor of their directory.
    let files: Vec<&Entry> = created
        .iter()
        .copied()
        .filter(|e| matches!(e.kind, Kind::File { .. }))
        .collect();
    let mut batches: Vec<&[&Entry]> = Vec::new();
    for group in files.chunk_by(|a, b| parent(&a.path) == parent(&b.path)) {
        batches.extend(group.chunks(BATCH));
    }
    let total: u64 = files.iter().map(|e| e.data_len()).sum();
    progress.phase("writing", Some(total), true);
    let provider = Provider {
        engine,
        staging: staging.to_path_buf(),
    };
    batches.par_iter().try_for_each(|batch| -> Result<()> {
        let dir = engine.dir(parent(&batch[0].path))?;
        syncer.note(dir.as_fd());
        for e in batch.iter() {
            let name = file_name(&e.path);
            let file = write_file(dir.as_fd(), name, e, &provider, root, progress)?;
            set_metadata(dir.as_fd(), name, e, Some(&file), root, &|w| engine.warn(w))?;
        }
        Ok(())
    })?;
    progress.finish();

    // Everything else, in manifest order so that hardlink targets exist before their links.
    for e in created
        .iter()
        .filter(|e| !matches!(e.kind, Kind::File { .. } | Kind::Dir))
    {
        let dir = in_dir(parent(&e.path))?;
        let name = file_name(&e.path);
        create_special(dir.as_fd(), name, &engine.root_fd, e, root)?;
        if !matches!(e.kind, Kind::Hardlink { .. }) {
            set_metadata(dir.as_fd(), name, e, None, root, &|w| engine.warn(w))?;
        }
    }
    Ok(syncer)
}
