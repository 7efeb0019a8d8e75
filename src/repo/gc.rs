//! `gc`: removing what no revision references.
//!
//! gc runs with the repository locked exclusively, so no capture can be between "the repository
//! already has this blob" and "the revision naming it is recorded" while gc decides what is
//! dead. It deletes packs with no live blob, rewrites packs whose live part is small (copying
//! the stored bytes, not recompressing), and deletes manifests no image uses and the
//! network-root images of revisions that are gone. The order of its
//! steps keeps every revision readable if it is killed at any point: new packs are durable and
//! recorded before old ones are forgotten, and forgotten before their files are deleted.

use std::collections::HashSet;
use std::fs;
use std::path::Path;

use serde::Serialize;

use crate::error::{IoContext, Result};
use crate::format::manifest::Kind;
use crate::format::pack::Codec;
use crate::format::pack::IndexEntry;
use crate::format::Id;
use crate::progress::Progress;
use crate::repo::Repository;
use crate::store::{manifest_path, pack_path, tmp_dir, FinishedPack, PackWriter};

/// A pack is rewritten when less than this share of its bytes is live.
pub const REPACK_BELOW: f64 = 0.5;

/// What gc did (or would do, with `dry_run`).
#[derive(Debug, Default, Serialize)]
pub struct GcReport {
    pub live_blobs: u64,
    pub dead_blobs: u64,
    pub packs_deleted: u64,
    pub packs_repacked: u64,
    pub manifests_deleted: u64,
    pub deltas_deleted: u64,
    /// Network-root images (`export --netroot`) no record names: of revisions that are gone,
    /// or replaced by a re-export.
    pub netroot_images_deleted: u64,
    /// NFS-exported trees (`export --nfs`) of revisions that are gone.
    pub nfs_trees_deleted: u64,
    pub bytes_freed: u64,
    pub dry_run: bool,
}

/// Collects garbage. The repository must be open with [`crate::repo::Lock::Exclusive`].
pub fn gc(repo: &mut Repository, dry_run: bool, progress: &dyn Progress) -> Result<GcReport> {
    let mut report = GcReport {
        dry_run,
        ..Default::default()
    };
    if !dry_run {
        // Nobody else holds the lock, so whatever is in tmp/ belongs to a dead process.
        let tmp = tmp_dir(&repo.root);
        // (Directories too: a killed `export --netroot` leaves its checkout there.)
        for f in fs::read_dir(&tmp).at(&tmp)? {
            let p = f.at(&tmp)?.path();
            let _ = match fs::symlink_metadata(&p).map(|m| m.is_dir()) {
                Ok(true) => fs::remove_dir_all(&p),
                _ => fs::remove_file(&p),
            };
        }
        repo.adopt_orphan_packs()?;
    }

    // Live set: every blob a revision of any image names, and the packs and manifests of
    // the repositories embedded in revisions (kept whole, see `repo::embedded`).
    let revisions: HashSet<Id> = repo.catalog.all_revision_ids()?.into_iter().collect();
    let mut live: HashSet<Id> = HashSet::new();
    let mut pins = crate::repo::embedded::Pins::default();
    progress.phase("reading manifests", Some(revisions.len() as u64), false);
    for id in &revisions {
        for e in repo.manifest_entries(id)? {
            let e = e?;
            pins.add(&e)?;
            if let Kind::File { chunks, .. } = e.kind {
                live.extend(chunks.into_iter().map(|c| c.id));
            }
        }
        progress.advance(1);
    }
    progress.finish();
    live.extend(pins.blobs.iter().copied());

    let packs = repo.catalog.packs()?;
    progress.phase("collecting", Some(packs.len() as u64), false);
    let mut repack = Repacker::new(&repo.root);
    for (pack, size, _) in packs {
        if pins.packs.contains(&pack) {
            progress.advance(1);
            continue;
        }
        let blobs = repo.catalog.pack_blobs(&pack)?;
        let (alive, dead): (Vec<_>, Vec<_>) = blobs.into_iter().partition(|b| live.contains(&b.id));
        report.live_blobs += alive.len() as u64;
        report.dead_blobs += dead.len() as u64;
        // Group members share one record: count each record once.
        let live_bytes: u64 = alive
            .iter()
            .filter(|b| b.codec != Codec::ZstdGroup)
            .map(|b| u64::from(b.stored_len))
            .chain(
                alive
                    .iter()
                    .filter(|b| b.codec == Codec::ZstdGroup)
                    .map(|b| (b.offset, u64::from(b.stored_len)))
                    .collect::<std::collections::HashMap<_, _>>()
                    .into_values(),
            )
            .sum();
        if alive.is_empty() {
            report.packs_deleted += 1;
            report.bytes_freed += size;
            repack.retire(pack);
        } else if !dead.is_empty() && (live_bytes as f64) < REPACK_BELOW * size as f64 {
            // (A pack with nothing dead is never rewritten: for a pack of one tiny blob the
            // header alone is "more than half", and the copy would be the same pack.)
            report.packs_repacked += 1;
            report.bytes_freed += size.saturating_sub(live_bytes);
            if !dry_run {
                repack.copy(repo, &pack, &alive)?;
            }
            repack.retire(pack);
        }
        progress.advance(1);
    }
    progress.finish();
    if !dry_run {
        repack.commit(repo, None)?;
    }

    // Manifests no image uses any more.
    let mdir = crate::store::published(&repo.root).join("manifests");
    for sub in fs::read_dir(&mdir).at(&mdir)? {
        let sub = sub.at(&mdir)?.path();
        if !sub.is_dir() {
            continue;
        }
        for f in fs::read_dir(&sub).at(&sub)? {
            let p = f.at(&sub)?.path();
            let id = p
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(Id::from_hex);
            if let Some(id) = id {
                let used = revisions.contains(&id) || pins.manifests.contains(&id);
                if !used && p == manifest_path(&repo.root, &id) {
                    report.manifests_deleted += 1;
                    if !dry_run {
                        fs::remove_file(&p).at(&p)?;
                    }
                }
            }
        }
    }
    // Network-root records of revisions that are gone, then images (and their signatures)
    // no record names: those of removed revisions, and those a re-export replaced.
    let public = crate::store::published(&repo.root);
    for (rel, kind, size) in
        crate::repo::netroot::unnamed(&repo.root, &|id| revisions.contains(id))?
    {
        if matches!(kind, crate::format::netroot::NetrootFile::Image(_)) {
            report.netroot_images_deleted += 1;
            report.bytes_freed += size;
        }
        if !dry_run {
            fs::remove_file(public.join(&rel)).at(public.join(&rel))?;
        }
    }
    // NFS-exported trees of revisions that are gone (their records went above), and the
    // ganesha EXPORT blocks written again without them.
    let nfs = repo.root.join(crate::format::netroot::NFS_DIR);
    if let Ok(dirs) = fs::read_dir(&nfs) {
        let mut gone = false;
        for d in dirs {
            let d = d.at(&nfs)?;
            let name = d.file_name().to_string_lossy().into_owned();
            let Some(id) = Id::from_hex(&name) else {
                continue;
            };
            if revisions.contains(&id) {
                continue;
            }
            report.nfs_trees_deleted += 1;
            gone = true;
            if !dry_run {
                fs::remove_dir_all(d.path()).at(d.path())?;
            }
        }
        if gone && !dry_run {
            crate::repo::publish::write_ganesha_exports(&repo.root)?;
        }
    }
    // Cached deltas whose target is gone (a blob or a manifest no revision uses).
    if !dry_run {
        report.deltas_deleted = crate::repo::delta::Cache::new(&repo.root)
            .prune(&|id| live.contains(id) || revisions.contains(id))?;
        crate::repo::publish::write_delta_list(&repo.root)?;
    }
    if !dry_run {
        repo.catalog.event(
            "gc",
            None,
            &format!(
                "deleted {} packs, repacked {}, freed {} bytes",
                report.packs_deleted, report.packs_repacked, report.bytes_freed
            ),
        )?;
    }
    Ok(report)
}

/// Moves the blobs worth keeping out of packs that are to go, into new packs, and then retires
/// the old packs: gc's repack, and verify's repair of a damaged pack.
pub struct Repacker {
    writer: PackWriter,
    written: Vec<FinishedPack>,
    retired: Vec<Id>,
}

impl Repacker {
    pub fn new(root: &Path) -> Repacker {
        Repacker {
            writer: PackWriter::new(root),
            written: Vec::new(),
            retired: Vec::new(),
        }
    }

    /// Copies `blobs` of `pack` into the new packs: whole blobs as stored, group members
    /// regrouped (each read and checked).
    pub fn copy(&mut self, repo: &Repository, pack: &Id, blobs: &[IndexEntry]) -> Result<()> {
        for b in blobs {
            let done = if b.codec == Codec::ZstdGroup {
                self.writer.add_grouped(&b.id, &repo.packs.read(pack, b)?)?
            } else {
                let payload = repo.packs.read_payload(pack, b)?;
                self.writer.add(&b.id, b.codec, b.raw_len, &payload)?
            };
            self.written.extend(done);
        }
        Ok(())
    }

    /// Marks a pack to be removed by [`Self::commit`].
    pub fn retire(&mut self, pack: Id) {
        self.retired.push(pack);
    }

    /// Makes the new packs durable and recorded, forgets the retired ones, then deletes their
    /// files (or, with `keep_in`, moves them there, for a damaged pack worth a look).
    pub fn commit(mut self, repo: &mut Repository, keep_in: Option<&Path>) -> Result<()> {
        self.written.extend(self.writer.finish()?);
        repo.catalog.replace_packs(&self.retired, &self.written)?;
        repo.write_pack_list()?;
        if let Some(dir) = keep_in {
            fs::create_dir_all(dir).at(dir)?;
        }
        // A rewritten pack can come out byte for byte the same as a retired one, under the
        // same name: its files are the new pack's now, and stay.
        let rewritten: HashSet<Id> = self.written.iter().map(|p| p.id).collect();
        for pack in self.retired.iter().filter(|p| !rewritten.contains(p)) {
            for ext in ["idx", "pack"] {
                let p = pack_path(&repo.root, pack, ext);
                let r = match keep_in {
                    Some(dir) => fs::rename(&p, dir.join(p.file_name().expect("named"))),
                    None => fs::remove_file(&p),
                };
                if let Err(e) = r {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        return Err(e).at(&p);
                    }
                }
            }
        }
        Ok(())
    }
}
