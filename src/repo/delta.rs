//! Binary deltas: a changed blob sent as a zstd frame compressed against the version the node
//! already holds (what `zstd --patch-from=OLD NEW` makes).
//!
//! A node that needs blob T and holds an older version of the same file asks the server for
//! "T, given the bytes of blobs B1..Bn". The *base* (B1..Bn) is chosen by [`base_for`] from the
//! node's current manifest: for a file stored as one blob, the old file's blob; for a chunked
//! file, the old chunks overlapping the new chunk's byte range. The server and the capture that
//! precomputes deltas use the same function, so the precomputed delta is the one asked for.
//!
//! The server answers from its cache (`deltas/` in the repository) or computes the delta on
//! demand and keeps it. When the blob compressed on its own is smaller than the delta (a file
//! rewritten rather than patched) it sends that instead (it decodes the same way); when neither
//! saves 5 % of the blob it says so ("no delta pays") and the node fetches the blob from
//! its pack. Every reconstructed blob is checked
//! against its id before use, so a wrong base or a wrong delta can never be installed.
//!
//! A request with no base asks for the blob compressed on its own: a node that needs a few
//! blobs of a large group fetches them this way rather than the whole group.
//!
//! The bytes (the request and answer of `POST /api/v1/deltas`, the delta frame, the cache's
//! file names) are specified in [`crate::format::delta`].

use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};
use crate::format::delta::{cache_stem, cache_target, MAX_BASE_IDS};
pub use crate::format::delta::{
    decode, decode_request, encode, encode_answer, encode_request, read_answer, Want, MAX_BATCH,
};
use crate::format::manifest::{Chunk, Entry, Kind, Manifest};
use crate::format::Id;

/// Bases larger than this are not used (the delta window must hold base and target).
pub const MAX_BASE: u64 = 4 << 20;
/// A delta is sent only when it saves at least 5 % of the blob's raw size.
pub const PAYS_NUM: u64 = 19;
pub const PAYS_DEN: u64 = 20;
/// zstd level of deltas made at capture time: the level `aurum serve` uses on demand, so a
/// delta is the same bytes whichever made it. Level 15 saved 1.3 % of the delta bytes of a
/// Debian security update (611 KiB instead of 619 KiB) for 5 times the time (7.5 s instead of
/// 1.5 s, against a 0.9 s capture), which made a capture spend most of its time on deltas.
pub const LEVEL_PRECOMPUTE: i32 = 12;
/// zstd level of deltas made on demand while a node waits.
pub const LEVEL_ON_DEMAND: i32 = 12;
/// A node asks for at most this many bytes of targets in one request...
pub const MAX_BATCH_BYTES: u64 = 16 << 20;
/// ...and a server puts at most this many delta bytes in one answer (the rest: "none").
pub const MAX_ANSWER: usize = 32 << 20;

/// Answers a request body: every pair, from the cache or made now, in parallel.
pub fn answer(
    cache: &Cache,
    blobs: &(dyn crate::store::BlobSource + Sync),
    body: &[u8],
) -> Result<Vec<u8>> {
    use rayon::prelude::*;
    let wants = decode_request(body)?;
    let deltas: Vec<Option<Vec<u8>>> = wants
        .par_iter()
        .map(|w| match get_or_make(cache, blobs, w, LEVEL_ON_DEMAND) {
            Ok(d) => d,
            Err(e) => {
                // A base or target the repository lacks: the node fetches the whole blob
                // (and hears about a missing target from the pack lookup).
                log::info!("no delta for {}: {e:#}", w.target.short());
                None
            }
        })
        .collect();
    let mut out = Vec::new();
    for d in &deltas {
        let d = d.as_deref().filter(|d| out.len() + d.len() <= MAX_ANSWER);
        encode_answer(&mut out, d);
    }
    Ok(out)
}

/// The base for the chunk of `len` bytes at `offset` of a new file, given the chunks of the
/// file's old version: the old chunks overlapping that byte range (for a file of one blob,
/// that blob), or none when there is nothing comparable.
pub fn base_for(old: &[Chunk], offset: u64, len: u32) -> Vec<Id> {
    if old.is_empty() {
        return Vec::new();
    }
    let end = offset + u64::from(len);
    let mut base = Vec::new();
    let mut total = 0u64;
    let mut at = 0u64;
    for c in old {
        let c_end = at + u64::from(c.len);
        if c_end > offset
            && at < end
            && total + u64::from(c.len) <= MAX_BASE
            && base.len() < MAX_BASE_IDS
        {
            base.push(c.id);
            total += u64::from(c.len);
        }
        at = c_end;
    }
    if base.is_empty() {
        // The new chunk lies past the old file's end (the file grew): its last chunk.
        let last = old.last().expect("non-empty");
        if u64::from(last.len) <= MAX_BASE {
            base.push(last.id);
        }
    }
    base
}

/// The file entry at each path of a manifest, hard links resolved.
pub fn files_by_path(m: &Manifest) -> std::collections::HashMap<&[u8], &Entry> {
    m.entries
        .iter()
        .filter_map(|e| {
            let r = m.resolve(e);
            matches!(r.kind, Kind::File { .. }).then_some((e.path.as_slice(), r))
        })
        .collect()
}

fn chunks_of(e: &Entry) -> &[Chunk] {
    match &e.kind {
        Kind::File { chunks, .. } => chunks,
        _ => &[],
    }
}

/// Every (target, base) pair a node at `old` asks for when going to `new`, for the blobs in
/// `missing` (all new blobs when `None`): the new chunks of files that exist in both.
pub fn wants(old: &Manifest, new: &Manifest, missing: Option<&dyn Fn(&Id) -> bool>) -> Vec<Want> {
    let old_files = files_by_path(old);
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for e in &new.entries {
        let r = new.resolve(e);
        let Kind::File { chunks, .. } = &r.kind else {
            continue;
        };
        let Some(o) = old_files.get(e.path.as_slice()) else {
            continue;
        };
        let old_chunks = chunks_of(o);
        let old_ids: std::collections::HashSet<&Id> = old_chunks.iter().map(|c| &c.id).collect();
        let mut offset = 0u64;
        for c in chunks {
            let at = offset;
            offset += u64::from(c.len);
            if old_ids.contains(&c.id) || missing.is_some_and(|m| !m(&c.id)) {
                continue;
            }
            let base = base_for(old_chunks, at, c.len);
            if !base.is_empty() && seen.insert(c.id) {
                out.push(Want { target: c.id, base });
            }
        }
    }
    out
}

/// The repository's delta cache: `public/deltas/XX/<target>-<base key>.zd`, or `.none` when no
/// delta pays for that pair. Deltas are derived data: deleting the directory loses nothing.
pub struct Cache {
    repo: PathBuf,
    dir: PathBuf,
}

/// What the cache knows of a pair.
pub enum Cached {
    Delta(Vec<u8>),
    NonePays,
    Unknown,
}

impl Cache {
    pub fn new(repo_root: &Path) -> Cache {
        Cache {
            repo: repo_root.to_path_buf(),
            dir: crate::store::published(repo_root).join("deltas"),
        }
    }

    fn stem(&self, w: &Want) -> PathBuf {
        self.dir.join(cache_stem(w))
    }

    pub fn get(&self, w: &Want) -> Cached {
        let stem = self.stem(w);
        if let Ok(d) = std::fs::read(stem.with_extension("zd")) {
            return Cached::Delta(d);
        }
        if stem.with_extension("none").exists() {
            return Cached::NonePays;
        }
        Cached::Unknown
    }

    /// Records a pair's delta (or that none pays), atomically and world-readable, like every
    /// published file.
    pub fn put(&self, w: &Want, delta: Option<&[u8]>) -> Result<()> {
        let stem = self.stem(w);
        let path = stem.with_extension(if delta.is_some() { "zd" } else { "none" });
        crate::store::write_cached(&self.repo, &path, delta.unwrap_or(&[]))
    }

    /// Removes every cached delta whose target `live` rejects; returns how many files went.
    pub fn prune(&self, live: &dyn Fn(&Id) -> bool) -> Result<u64> {
        let mut removed = 0;
        let Ok(top) = std::fs::read_dir(&self.dir) else {
            return Ok(0);
        };
        for sub in top {
            let sub = sub.at(&self.dir)?.path();
            let Ok(files) = std::fs::read_dir(&sub) else {
                continue;
            };
            for f in files {
                let f = f.at(&sub)?.path();
                let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
                let keep = cache_target(name).is_some_and(|id| live(&id))
                    // Temporary files an older aurum wrote here, before they moved to tmp/.
                    && !name.contains(".tmp");
                if !keep {
                    std::fs::remove_file(&f).at(&f)?;
                    removed += 1;
                }
            }
            let _ = std::fs::remove_dir(&sub);
        }
        Ok(removed)
    }
}

/// The delta for `w`, from the cache or made now (and cached); `None` when no delta pays.
pub fn get_or_make(
    cache: &Cache,
    blobs: &(dyn crate::store::BlobSource + Sync),
    w: &Want,
    level: i32,
) -> Result<Option<Vec<u8>>> {
    match cache.get(w) {
        Cached::Delta(d) => return Ok(Some(d)),
        Cached::NonePays => return Ok(None),
        Cached::Unknown => {}
    }
    let mut base = Vec::new();
    for b in &w.base {
        base.extend_from_slice(&blobs.get(b)?);
        if base.len() as u64 > MAX_BASE {
            return Ok(None);
        }
    }
    let target = blobs.get(&w.target)?;
    // Incompressible data (random, already compressed) gains nothing from a high level: the
    // matches against the base are what count, and any level finds those.
    let level = if crate::store::compressible(&target) {
        level
    } else {
        level.min(3)
    };
    if w.base.is_empty() {
        // The blob alone: always sent, the caller has decided it is cheaper than its group.
        let d = encode(&[], &target, level)?;
        cache.put(w, Some(&d))?;
        return Ok(Some(d));
    }
    // The delta, or the blob compressed alone when that is smaller (a rewritten file): either
    // decodes with the base as prefix. Sent when it beats the blob's raw size by 5 %,
    // else the node fetches the blob from its pack.
    // A frame with the base as prefix is never much larger than the blob compressed alone
    // (zstd may ignore the prefix), so the blob is compressed alone only when the delta does
    // not pay: half the work of every delta that does (issue #14).
    let delta = encode(&base, &target, level)?;
    let pays = |d: &[u8]| (d.len() as u64) * PAYS_DEN <= (target.len() as u64) * PAYS_NUM;
    let best = if pays(&delta) {
        delta
    } else {
        let alone = encode(&[], &target, level)?;
        if alone.len() < delta.len() {
            alone
        } else {
            delta
        }
    };
    let delta = pays(&best).then_some(best);
    cache.put(w, delta.as_deref())?;
    Ok(delta)
}

/// What precomputing the deltas of a revision did.
#[derive(Debug, Default)]
pub struct Precomputed {
    /// Pairs considered (new chunks of files that exist in the parent too).
    pub pairs: u64,
    /// Deltas that pay, and their total size.
    pub deltas: u64,
    pub delta_bytes: u64,
    /// The size of the blobs they stand for.
    pub target_bytes: u64,
    /// Pairs left for `aurum serve` to make on a node's first request, the time budget
    /// being spent.
    pub left: u64,
}

/// Makes (at a high level, on every core) the deltas a node running `parent` will ask for
/// when it updates to `rev`, so `aurum serve` answers them from its cache.
///
/// At most for `budget`: a capture must not spend most of its time on deltas (a tree whose
/// every file changed has as many pairs as files). The manifest's delta comes first (every
/// node asks for it), then the files in tree order; pairs left when the budget is spent are
/// made by `aurum serve` on the first node's request and cached like these.
pub fn precompute(
    repo: &crate::repo::Repository,
    parent: &Id,
    rev: &Id,
    budget: std::time::Duration,
    progress: &dyn crate::progress::Progress,
) -> Result<Precomputed> {
    let deadline = std::time::Instant::now() + budget;
    use rayon::prelude::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    let old = repo.load_manifest(parent)?;
    let new = repo.load_manifest(rev)?;
    // The manifest itself, against its parent's, first.
    let mut wants = vec![Want {
        target: *rev,
        base: vec![*parent],
    }];
    wants.extend(self::wants(&old, &new, None));
    let manifest_len = new.encode().len() as u64;
    let target_len: std::collections::HashMap<Id, u32> = new
        .entries
        .iter()
        .flat_map(|e| match &e.kind {
            Kind::File { chunks, .. } => chunks.as_slice(),
            _ => &[],
        })
        .map(|c| (c.id, c.len))
        .collect();
    let cache = Cache::new(&repo.root);
    let blobs = crate::repo::BlobsAndManifests {
        root: &repo.root,
        blobs: repo.blobs()?,
    };
    progress.phase("precomputing deltas", Some(wants.len() as u64), false);
    let (deltas, delta_bytes, target_bytes, left) = (
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
    );
    // Pairs are taken in order from one shared counter, so what the budget leaves undone is
    // a tail of the list (the manifest's delta, first, is always made).
    let next = std::sync::atomic::AtomicUsize::new(0);
    let one = |w: &Want| -> Result<()> {
        if std::time::Instant::now() >= deadline && w.target != *rev {
            left.fetch_add(1, Ordering::Relaxed);
            progress.advance(1);
            return Ok(());
        }
        if let Some(d) = get_or_make(&cache, &blobs, w, LEVEL_PRECOMPUTE)? {
            deltas.fetch_add(1, Ordering::Relaxed);
            delta_bytes.fetch_add(d.len() as u64, Ordering::Relaxed);
            let len: u64 = if w.target == *rev {
                manifest_len
            } else {
                target_len.get(&w.target).copied().map_or(0, u64::from)
            };
            target_bytes.fetch_add(len, Ordering::Relaxed);
        }
        progress.advance(1);
        Ok(())
    };
    (0..rayon::current_num_threads())
        .into_par_iter()
        .try_for_each(|_| -> Result<()> {
            while let Some(w) = wants.get(next.fetch_add(1, Ordering::Relaxed)) {
                one(w)?;
            }
            Ok(())
        })?;
    progress.finish();
    crate::repo::publish::write_delta_list(&repo.root)?;
    Ok(Precomputed {
        pairs: wants.len() as u64,
        deltas: deltas.into_inner(),
        delta_bytes: delta_bytes.into_inner(),
        target_bytes: target_bytes.into_inner(),
        left: left.into_inner(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(n: u8, len: u32) -> Chunk {
        Chunk {
            id: Id::of(&[n]),
            len,
        }
    }

    #[test]
    fn bases_are_the_overlapping_old_chunks() {
        let old = [chunk(1, 100), chunk(2, 100), chunk(3, 100)];
        assert_eq!(base_for(&old, 0, 100), vec![old[0].id]);
        assert_eq!(base_for(&old, 50, 100), vec![old[0].id, old[1].id]);
        assert_eq!(base_for(&old, 400, 10), vec![old[2].id]);
        assert!(base_for(&[], 0, 10).is_empty());
    }
}
