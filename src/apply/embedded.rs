//! Rebuilding the repositories a revision embeds (see [`crate::format::embedded`]) once its
//! tree is written: checkout, install and updateclient call [`rebuild_all`] with where the
//! revision came from, which holds the embedded repositories' packs and manifests under
//! their own names.
//!
//! The rebuild goes by path below the root: it runs after the tree is the revision's, whose
//! directories the manifest rules keep free of symlinks, so no path below a repository's
//! directory can lead out of the root.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;

use super::source::RevisionSource;
use super::BlobSource;
use crate::error::{corrupt, invalid, IoContext, Result};
use crate::format::embedded::{decode_record, record_of};
use crate::format::manifest::{Entry, Manifest};
use crate::format::Id;
use crate::progress::Quiet;
use crate::repo::embedded::{rebuild, EmbeddedSource, Rebuilt};

/// The entries of a tree that carry a record, in path order (each a directory).
pub fn records<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> Vec<Entry> {
    entries
        .into_iter()
        .filter(|e| record_of(e).is_some())
        .cloned()
        .collect()
}

/// The entries of `manifest` whose repository an update must rebuild: those whose record
/// differs from the one the node's `current` revision had there, or whose repository is not
/// on the node. A repository the update does not change is left as the node has it: on a
/// cluster master it is live (it pulls, it captures), and its catalog moves on between
/// updates.
pub fn changed(root: &Path, manifest: &Manifest, current: Option<&Manifest>) -> Vec<Entry> {
    records(&manifest.entries)
        .into_iter()
        .filter(|e| {
            let same = current
                .and_then(|c| c.get(&e.path))
                .is_some_and(|c| record_of(c) == record_of(e));
            let there = crate::sys::shown(root, &e.path).join("FORMAT").exists();
            !(same && there)
        })
        .collect()
}

/// Refuses a run with no source (a rollback from the node's own undo area) that would have
/// to rebuild a repository of `manifest` (see [`changed`]): the record names a catalog
/// snapshot and packs that only the revision's source holds, and a run that went ahead would
/// leave the node saying it runs `target` with another revision's repository in it.
pub fn need_source(
    root: &Path,
    manifest: &Manifest,
    current: Option<&Manifest>,
    target: &str,
) -> Result<()> {
    match changed(root, manifest, current).first() {
        None => Ok(()),
        Some(e) => Err(invalid(format!(
            "{target} embeds the aurum repository at {} as it was then, which this node cannot \
             rebuild from its undo area: give the server it updates from (--server URL, or \
             --repo DIR) and run again; nothing on this node was changed",
            e.display()
        ))),
    }
}

/// The directories (manifest paths) of the repositories `entries` embed.
pub fn dirs(entries: &[Entry]) -> Vec<Vec<u8>> {
    entries.iter().map(|e| e.path.clone()).collect()
}

/// Rebuilds the repository of every entry in `records` under `root`, then gives its
/// directory back the entry's mtime (which the rebuild moved).
pub fn rebuild_all(
    root: &Path,
    records: &[Entry],
    src: &dyn EmbeddedSource,
) -> Result<Vec<Rebuilt>> {
    let mut out = Vec::new();
    for e in records {
        let Some(record) = decode_record(e)? else {
            continue;
        };
        let dir = crate::sys::shown(root, &e.path);
        let done = rebuild(&dir, &record, Some((e.uid, e.gid)), src).map_err(|err| {
            err.with_note(&format!(
                " (while rebuilding the aurum repository embedded at {})",
                e.display()
            ))
        })?;
        let t = TimeSpec::new(e.mtime, i64::from(e.mtime_nsec));
        utimensat(
            nix::fcntl::AT_FDCWD,
            &dir,
            &t,
            &t,
            UtimensatFlags::NoFollowSymlink,
        )
        .at(&dir)?;
        out.push(done);
    }
    Ok(out)
}

/// A rebuild's source for a checkout: the repository's blob reader.
pub struct FromBlobs<'a>(pub &'a dyn BlobSource);

impl EmbeddedSource for FromBlobs<'_> {
    fn public_file(&self, rel: &str) -> Result<Vec<u8>> {
        self.0.public_file(rel)
    }

    fn blob(&self, id: &Id) -> Result<Vec<u8>> {
        self.0.get(id)
    }
}

/// A rebuild's source for install and updateclient: where the node gets revisions from.
pub struct FromRevisions<'a>(pub &'a dyn RevisionSource);

impl EmbeddedSource for FromRevisions<'_> {
    fn public_file(&self, rel: &str) -> Result<Vec<u8>> {
        self.0.public_file(rel)
    }

    fn blob(&self, id: &Id) -> Result<Vec<u8>> {
        let got = Mutex::new(HashMap::new());
        self.0.fetch(
            &[*id],
            &|id, data| {
                got.lock()
                    .expect("blob lock")
                    .insert(*id, data.into_owned());
                Ok(())
            },
            &Quiet,
        )?;
        got.into_inner()
            .expect("blob lock")
            .remove(id)
            .ok_or_else(|| corrupt(format!("blob {} was not sent", id.short())))
    }
}
