//! Repositories embedded in a revision's tree (see [`crate::format::embedded`]): taking one in
//! when a capture finds it, what gc keeps alive for it, and rebuilding it when a tree is
//! written from the revision.
//!
//! Packs and manifests go by reference at the level of whole files: an embedded repository's
//! pack is held by the capturing repository under the same name (a pack's name is the hash of
//! its bytes), so a master whose repository was pulled from the capturing one costs nothing
//! but its catalog snapshot, and rebuilding it is copying files, not recompressing blobs. A
//! pack the capturing repository lacks is copied in whole at capture. gc never deletes nor
//! rewrites a pack or a manifest a live revision's record names.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::catalog::Catalog;
use crate::error::{corrupt, invalid, IoContext, Result};
use crate::format::embedded::EmbeddedRepo;
use crate::format::manifest::{self, Entry};
use crate::format::pack::{self as packfmt, decode_index};
use crate::format::{Id, FORMAT_VERSION};
use crate::store::{self, FinishedPack};

use super::{publish, Repository};

/// What a rebuild reads from the repository a revision came from.
pub trait EmbeddedSource: Sync {
    /// A file of its published directory (`packs/XX/ID.pack`, `manifests/XX/ID.mf`), as
    /// stored; the caller checks it against its name.
    fn public_file(&self, rel: &str) -> Result<Vec<u8>>;
    /// A blob (a chunk of the catalog snapshot), checked against its id.
    fn blob(&self, id: &Id) -> Result<Vec<u8>>;
}

/// What records of live revisions name: gc keeps the packs and manifests whole, and the
/// catalog snapshots' blobs alive.
#[derive(Default)]
pub struct Pins {
    pub packs: HashSet<Id>,
    pub manifests: HashSet<Id>,
    pub blobs: HashSet<Id>,
}

impl Pins {
    /// Adds what `e`'s record (if it has one) names.
    pub fn add(&mut self, e: &Entry) -> Result<()> {
        if let Some(r) = crate::format::embedded::decode_record(e)? {
            self.packs.extend(r.packs.iter().map(|p| p.0));
            self.manifests.extend(r.manifests);
            self.blobs.extend(r.catalog.iter().map(|c| c.id));
        }
        Ok(())
    }

    /// Adds what the records in the manifest file `id` of the repository at `root` name
    /// (nothing, and nothing read past its first bytes, for a manifest that embeds none).
    pub fn add_manifest(&mut self, root: &Path, id: &Id) -> Result<()> {
        let path = store::manifest_path(root, id);
        let file = fs::File::open(&path).at(&path)?;
        if !manifest::file_embeds(&file) {
            return Ok(());
        }
        let file = fs::File::open(&path).at(&path)?;
        for e in manifest::Entries::of_file(std::io::BufReader::new(file), id)? {
            self.add(&e?)?;
        }
        Ok(())
    }

    /// [`Pins::add_manifest`] for a manifest file's bytes (as stored, compressed).
    pub fn add_file(&mut self, packed: &[u8], id: &Id) -> Result<()> {
        if !manifest::file_embeds(packed) {
            return Ok(());
        }
        for e in manifest::Entries::of_file(packed, id)? {
            self.add(&e?)?;
        }
        Ok(())
    }
}

/// What taking a repository in added to the capturing one.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct TakenIn {
    pub packs_added: u64,
    pub manifests_added: u64,
    /// Bytes of packs and manifests copied in (0 when the capturing repository had them).
    pub bytes_added: u64,
}

/// Makes `repo` hold every pack and manifest of `record` that the embedded repository at
/// `dir` has and `repo` lacks, each checked against its name: packs placed and recorded in
/// the catalog (durable before the revision naming them is), then manifests.
pub fn take_in(repo: &mut Repository, dir: &Path, record: &EmbeddedRepo) -> Result<TakenIn> {
    let mut out = TakenIn::default();
    let have: HashSet<Id> = repo.catalog.packs()?.into_iter().map(|p| p.0).collect();
    let from = store::published(dir);
    for (id, size) in record.packs.iter().filter(|(id, _)| !have.contains(id)) {
        let rel = packfmt::path(id, "pack");
        let bytes = fs::read(from.join(&rel)).at(from.join(&rel))?;
        check_pack(&bytes, id, *size, &from.join(&rel).display().to_string())?;
        let idx_rel = packfmt::path(id, "idx");
        let idx = fs::read(from.join(&idx_rel)).at(from.join(&idx_rel))?;
        let entries = decode_index(&idx).map_err(|e| {
            corrupt(format!(
                "{}: {e}; run `aurum verify` in that repository",
                from.join(&idx_rel).display()
            ))
        })?;
        store::write_atomic(
            &repo.root,
            &store::pack_path(&repo.root, id, "pack"),
            &bytes,
        )?;
        store::write_atomic(&repo.root, &store::pack_path(&repo.root, id, "idx"), &idx)?;
        repo.catalog.add_pack(&FinishedPack {
            id: *id,
            size: *size,
            entries,
        })?;
        out.packs_added += 1;
        out.bytes_added += bytes.len() as u64;
    }
    for id in &record.manifests {
        let to = store::manifest_path(&repo.root, id);
        if to.exists() {
            continue;
        }
        let at = store::manifest_path(dir, id);
        let bytes = fs::read(&at).at(&at)?;
        check_manifest(&bytes, id, &at.display().to_string())?;
        store::write_atomic(&repo.root, &to, &bytes)?;
        out.manifests_added += 1;
        out.bytes_added += bytes.len() as u64;
    }
    if out.packs_added > 0 {
        repo.write_pack_list()?;
    }
    Ok(out)
}

fn check_pack(bytes: &[u8], id: &Id, size: u64, shown: &str) -> Result<()> {
    if bytes.len() as u64 != size || Id::of(bytes) != *id {
        return Err(corrupt(format!(
            "{shown} is not pack {} ({} bytes, {size} expected, or other bytes): run `aurum verify` where it comes from",
            id.short(),
            bytes.len()
        )));
    }
    Ok(())
}

fn check_manifest(bytes: &[u8], id: &Id, shown: &str) -> Result<()> {
    manifest::decompress_file(bytes, id).map_err(|p| {
        corrupt(format!(
            "{shown} is damaged ({p}): run `aurum verify` where it comes from"
        ))
    })?;
    Ok(())
}

/// What a rebuild did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Rebuilt {
    /// The repository's directory.
    pub dir: PathBuf,
    pub images: u64,
    pub revisions: u64,
    pub packs_copied: u64,
    /// Packs that were there already with the right bytes (an update).
    pub packs_kept: u64,
    pub manifests_copied: u64,
    /// Packs and manifests that the record no longer names, removed (an update).
    pub removed: u64,
    pub bytes_copied: u64,
    pub seconds: f64,
}

/// Makes the directory `dir` a working repository holding exactly what `record` says: its
/// catalog, packs and manifests from `src`, every published file derived from them. On a
/// directory that holds a rebuilt repository already (an update), packs and manifests that
/// are there with the right bytes stay, and those the record no longer names go. The files
/// made are given `owner` (uid, gid) when set.
pub fn rebuild(
    dir: &Path,
    record: &EmbeddedRepo,
    owner: Option<(u32, u32)>,
    src: &dyn EmbeddedSource,
) -> Result<Rebuilt> {
    if record.format > FORMAT_VERSION {
        return Err(invalid(format!(
            "the repository embedded at {} has format {}, newer than this aurum writes ({FORMAT_VERSION}): upgrade aurum",
            dir.display(),
            record.format
        )));
    }
    let started = std::time::Instant::now();
    let mut out = Rebuilt {
        dir: dir.to_path_buf(),
        ..Rebuilt::default()
    };
    let public = store::published(dir);
    for d in ["packs", "manifests", "refs"] {
        store::create_public_dir(dir, &public.join(d))?;
    }
    let tmp = store::tmp_dir(dir);
    fs::create_dir_all(&tmp).at(&tmp)?;

    // Packs and their indexes, then manifests: each checked against its name, in parallel
    // (reading and hashing are the work).
    let copied: Vec<(bool, u64)> = record
        .packs
        .par_iter()
        .map(|(id, size)| {
            let to = store::pack_path(dir, id, "pack");
            let idx_to = store::pack_path(dir, id, "idx");
            let good = fs::read(&to).is_ok_and(|b| check_pack(&b, id, *size, "").is_ok())
                && fs::read(&idx_to).is_ok_and(|b| decode_index(&b).is_ok());
            if good {
                return Ok((false, 0));
            }
            let rel = packfmt::path(id, "pack");
            let bytes = src.public_file(&rel)?;
            check_pack(&bytes, id, *size, &rel)?;
            let idx = src.public_file(&packfmt::path(id, "idx"))?;
            let listed = decode_index(&idx)
                .map_err(|e| corrupt(format!("index of pack {}: {e}", id.short())))?;
            store::write_cached(dir, &to, &bytes)?;
            // The pack is checked against its id, its index (not named by a hash) against it.
            if let Some(why) = store::index_mismatch(&listed, &store::pack_entries(&to)?) {
                return Err(corrupt(format!(
                    "{} does not fit pack {} ({why}): run `aurum verify --repair` where it comes from",
                    packfmt::path(id, "idx"),
                    id.short()
                )));
            }
            store::write_cached(dir, &idx_to, &idx)?;
            Ok((true, (bytes.len() + idx.len()) as u64))
        })
        .collect::<Result<_>>()?;
    for (new, bytes) in copied {
        match new {
            true => out.packs_copied += 1,
            false => out.packs_kept += 1,
        }
        out.bytes_copied += bytes;
    }
    let copied: Vec<u64> = record
        .manifests
        .par_iter()
        .map(|id| {
            let to = store::manifest_path(dir, id);
            if fs::read(&to).is_ok_and(|b| manifest::decompress_file(&b[..], id).is_ok()) {
                return Ok(0);
            }
            let rel = manifest::path(id);
            let bytes = src.public_file(&rel)?;
            check_manifest(&bytes, id, &rel)?;
            store::write_cached(dir, &to, &bytes)?;
            Ok(bytes.len() as u64 + 1)
        })
        .collect::<Result<_>>()?;
    out.manifests_copied = copied.iter().filter(|&&b| b > 0).count() as u64;
    out.bytes_copied += copied.iter().map(|b| b.saturating_sub(1)).sum::<u64>();
    out.removed = remove_unnamed(dir, record)?;

    // The catalog last: a repository whose catalog names a pack is one that has it.
    let mut db = Vec::with_capacity(record.catalog_size as usize);
    for c in &record.catalog {
        db.extend_from_slice(&src.blob(&c.id)?);
    }
    if db.len() as u64 != record.catalog_size {
        return Err(corrupt(format!(
            "the catalog of the repository embedded at {} does not have its recorded size",
            dir.display()
        )));
    }
    // A WAL left by the catalog this one replaces would be replayed over it.
    for f in ["aurum.db-wal", "aurum.db-shm", "aurum.db-journal"] {
        let _ = fs::remove_file(dir.join(f));
    }
    crate::sys::write_atomic(
        &dir.join("aurum.db"),
        &db,
        crate::sys::WriteOpts {
            durable: true,
            tmp_dir: Some(&tmp),
            mode: Some(publish::PRIVATE_FILE),
        },
    )?;
    {
        use std::os::unix::fs::OpenOptionsExt;
        let lock = dir.join("lock");
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(publish::PRIVATE_FILE)
            .open(&lock)
            .at(&lock)?;
    }
    let mut catalog = Catalog::open(&dir.join("aurum.db"))?;
    // The blob index, left out of the snapshot, from the pack indexes, in the packs' order.
    if catalog.packs()?.is_empty() {
        for (id, size) in &record.packs {
            let at = store::pack_path(dir, id, "idx");
            let entries = decode_index(&fs::read(&at).at(&at)?)?;
            catalog.add_pack(&FinishedPack {
                id: *id,
                size: *size,
                entries,
            })?;
        }
    }
    publish::layout(dir, true)?;
    publish::rebuild(dir, &catalog)?;
    // FORMAT last, as init writes it: without it the directory is no repository yet.
    store::write_atomic(dir, &dir.join("FORMAT"), publish::format_text().as_bytes())?;
    publish::check_modes(dir, true)?;
    out.images = catalog.images()?.len() as u64;
    out.revisions = catalog.all_revision_ids()?.len() as u64;
    drop(catalog);
    if let Some((uid, gid)) = owner {
        give(dir, uid, gid)?;
    }
    out.seconds = started.elapsed().as_secs_f64();
    Ok(out)
}

/// Removes the packs and manifests under `dir` that `record` does not name (a master updated
/// to a revision whose repository dropped them).
fn remove_unnamed(dir: &Path, record: &EmbeddedRepo) -> Result<u64> {
    let packs: HashSet<&Id> = record.packs.iter().map(|p| &p.0).collect();
    let manifests: HashSet<&Id> = record.manifests.iter().collect();
    let public = store::published(dir);
    let mut removed = 0;
    for (sub, keep) in [("packs", &packs), ("manifests", &manifests)] {
        let Ok(fans) = fs::read_dir(public.join(sub)) else {
            continue;
        };
        for fan in fans.flatten().filter(|f| f.path().is_dir()) {
            for f in fs::read_dir(fan.path()).at(fan.path())?.flatten() {
                let p = f.path();
                let named = p
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .and_then(Id::from_hex)
                    .is_some_and(|id| keep.contains(&id));
                if !named {
                    fs::remove_file(&p).at(&p)?;
                    removed += 1;
                }
            }
        }
    }
    Ok(removed)
}

/// Gives the repository's aurum files to `uid`:`gid`, as the directory's owner had them
/// (only root can, and only root needs to: any other user made them its own).
fn give(dir: &Path, uid: u32, gid: u32) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let mut paths = vec![
        dir.join("FORMAT"),
        dir.join("aurum.db"),
        dir.join("lock"),
        store::tmp_dir(dir),
    ];
    let mut stack = vec![store::published(dir)];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).at(&d)?.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            } else {
                paths.push(e.path());
            }
        }
        paths.push(d);
    }
    for p in paths {
        std::os::unix::fs::lchown(&p, Some(uid), Some(gid)).at(&p)?;
    }
    Ok(())
}
