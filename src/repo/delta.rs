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
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

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
        file_wants(chunks_of(o), chunks, missing, &mut |c, base| {
            if seen.insert(c.id) {
                out.push(Want { target: c.id, base });
            }
            Ok(())
        })
        .expect("collecting in memory does not fail");
    }
    out
}

/// Calls `take` with each new chunk of a file (and its base) whose old version had the chunks
/// `old`, for the blobs in `missing` (all when `None`): what [`wants`] and [`each_want`] do
/// for every file in both revisions.
fn file_wants(
    old: &[Chunk],
    new: &[Chunk],
    missing: Option<&dyn Fn(&Id) -> bool>,
    take: &mut dyn FnMut(&Chunk, Vec<Id>) -> Result<()>,
) -> Result<()> {
    let old_ids: std::collections::HashSet<&Id> = old.iter().map(|c| &c.id).collect();
    let mut offset = 0u64;
    for c in new {
        let at = offset;
        offset += u64::from(c.len);
        if old_ids.contains(&c.id) || missing.is_some_and(|m| !m(&c.id)) {
            continue;
        }
        let base = base_for(old, at, c.len);
        if !base.is_empty() {
            take(c, base)?;
        }
    }
    Ok(())
}

/// Calls `f` with every pair [`wants`] gives for the revisions `parent` and `rev` of the
/// repository (all new blobs), and the target's length, in tree order, without holding either
/// manifest: a merge-join of the two manifest files read one entry at a time
/// ([`crate::repo::diff::Pairs`]), and the targets seen so far kept as 8-byte heads
/// ([`crate::repo::seen::IdHeads`]).
///
/// A path that is a hard link on either side needs the chunks of its link's target, an
/// earlier entry that the merge has passed: such paths are noted on the way and served by a
/// second pass over both files that keeps the chunks of those targets alone. A link whose
/// target is the same path on both sides needs nothing of its own (its target's pair brings
/// the chunks), so memory grows with the number of hard links that changed, not with the tree.
pub fn each_want(
    repo: &crate::repo::Repository,
    parent: &Id,
    rev: &Id,
    f: &mut dyn FnMut(Want, u32) -> Result<()>,
) -> Result<()> {
    let mut seen = crate::repo::seen::IdHeads::default();
    let mut take = |c: &Chunk, base: Vec<Id>| -> Result<()> {
        if seen.first(&c.id) {
            f(Want { target: c.id, base }, c.len)?;
        }
        Ok(())
    };
    // (the old file's path, the new file's path) of each path reached through a hard link.
    let mut links: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let pairs =
        crate::repo::diff::Pairs::new(repo.manifest_entries(parent)?, repo.manifest_entries(rev)?);
    for pair in pairs {
        let (Some(o), Some(n)) = pair? else {
            continue;
        };
        match (&o.kind, &n.kind) {
            (Kind::File { chunks: oc, .. }, Kind::File { chunks: nc, .. }) => {
                file_wants(oc, nc, None, &mut take)?;
            }
            // A link to the same path on both sides holds what that path holds, and the
            // target's own pair brings its wants: only links that moved are kept.
            (Kind::Hardlink { target: ot }, Kind::Hardlink { target: nt }) if ot == nt => {}
            (
                Kind::File { .. } | Kind::Hardlink { .. },
                Kind::File { .. } | Kind::Hardlink { .. },
            ) => {
                links.push((file_path(o), file_path(n)));
            }
            _ => {}
        }
    }
    if links.is_empty() {
        return Ok(());
    }
    let old = files_at(repo, parent, links.iter().map(|l| &l.0))?;
    let new = files_at(repo, rev, links.iter().map(|l| &l.1))?;
    for (o, n) in &links {
        if let (Some(oc), Some(nc)) = (old.get(o), new.get(n)) {
            file_wants(oc, nc, None, &mut take)?;
        }
    }
    Ok(())
}

/// The path holding the content of entry `e`: its own, or its hard link's target.
fn file_path(e: Entry) -> Vec<u8> {
    match e.kind {
        Kind::Hardlink { target } => target,
        _ => e.path,
    }
}

/// The chunks of the files at `paths` in revision `id` (one pass over its manifest file).
fn files_at<'p>(
    repo: &crate::repo::Repository,
    id: &Id,
    paths: impl Iterator<Item = &'p Vec<u8>>,
) -> Result<std::collections::HashMap<Vec<u8>, Vec<Chunk>>> {
    let wanted: std::collections::HashSet<&Vec<u8>> = paths.collect();
    let mut found = std::collections::HashMap::new();
    for e in repo.manifest_entries(id)? {
        let e = e?;
        if let Kind::File { chunks, .. } = e.kind {
            if wanted.contains(&e.path) {
                found.insert(e.path, chunks);
            }
        }
    }
    Ok(found)
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

/// Pairs whose deltas are made together, on every core, before the merge reads on: enough to
/// keep the threads busy, few enough that the list never grows with the tree (a tree whose
/// every file changed has as many pairs as files).
const BATCH: usize = 1024;

/// Makes (at a high level, on every core) the deltas a node running `parent` will ask for
/// when it updates to `rev`, so `aurum serve` answers them from its cache.
///
/// At most for `budget`: a capture must not spend most of its time on deltas (a tree whose
/// every file changed has as many pairs as files). The manifest's delta comes first (every
/// node asks for it), then the files in tree order, a batch at a time as the merge-join of the
/// two manifests ([`each_want`]) finds them; pairs left when the budget is spent are made by
/// `aurum serve` on the first node's request and cached like these.
///
/// The manifest's delta is made only when both manifests are at most [`MAX_BASE`] long: a
/// larger base is refused anyway (the server answers "no delta" and the node fetches the
/// manifest whole), and reading two manifests of a million entries whole to find that out
/// held over 600 MiB (issue #14).
pub fn precompute(
    repo: &crate::repo::Repository,
    parent: &Id,
    rev: &Id,
    budget: std::time::Duration,
    progress: &dyn crate::progress::Progress,
) -> Result<Precomputed> {
    let deadline = std::time::Instant::now() + budget;
    // The capture has stored everything: its compressors would stay idle beside the deltas'.
    crate::store::release_compressors();
    let cache = Cache::new(&repo.root);
    let blobs = crate::repo::BlobsAndManifests {
        root: &repo.root,
        blobs: repo.blobs()?,
    };
    let tally = Tally::default();
    progress.phase("precomputing deltas", None, false);
    let manifest_len = match (
        repo.manifest_len_within(parent, MAX_BASE)?,
        repo.manifest_len_within(rev, MAX_BASE)?,
    ) {
        (Some(_), Some(len)) => Some(len),
        _ => {
            log::debug!(
                "the delta of manifest {} from {} is not precomputed: one of them is over {} bytes, more than a delta base may be (nodes fetch the manifest whole)",
                rev.short(),
                parent.short(),
                MAX_BASE
            );
            None
        }
    };
    if let Some(len) = manifest_len {
        // Always made, budget or not: every node asks for it first.
        let w = Want {
            target: *rev,
            base: vec![*parent],
        };
        tally.made(get_or_make(&cache, &blobs, &w, LEVEL_PRECOMPUTE)?, len);
        progress.advance(1);
    }
    let mut batch: Vec<(Want, u32)> = Vec::with_capacity(BATCH);
    let run = |batch: &mut Vec<(Want, u32)>| -> Result<()> {
        use rayon::prelude::*;
        batch.par_iter().try_for_each(|(w, len)| -> Result<()> {
            if std::time::Instant::now() >= deadline {
                tally.left.fetch_add(1, Relaxed);
            } else {
                tally.made(
                    get_or_make(&cache, &blobs, w, LEVEL_PRECOMPUTE)?,
                    u64::from(*len),
                );
            }
            progress.advance(1);
            Ok(())
        })?;
        batch.clear();
        Ok(())
    };
    each_want(repo, parent, rev, &mut |w, len| {
        tally.pairs.fetch_add(1, Relaxed);
        if std::time::Instant::now() >= deadline {
            // Counted, not kept: what the budget leaves is a tail of the list.
            tally.left.fetch_add(1, Relaxed);
            progress.advance(1);
            return Ok(());
        }
        batch.push((w, len));
        if batch.len() == BATCH {
            run(&mut batch)?;
        }
        Ok(())
    })?;
    run(&mut batch)?;
    progress.finish();
    crate::repo::publish::write_delta_list(&repo.root)?;
    Ok(Precomputed {
        pairs: tally.pairs.into_inner() + u64::from(manifest_len.is_some()),
        deltas: tally.deltas.into_inner(),
        delta_bytes: tally.delta_bytes.into_inner(),
        target_bytes: tally.target_bytes.into_inner(),
        left: tally.left.into_inner(),
    })
}

/// What [`precompute`]'s threads have done so far.
#[derive(Default)]
struct Tally {
    pairs: AtomicU64,
    deltas: AtomicU64,
    delta_bytes: AtomicU64,
    target_bytes: AtomicU64,
    left: AtomicU64,
}

impl Tally {
    /// Counts a delta made for a target of `target_len` bytes (nothing when none pays).
    fn made(&self, delta: Option<Vec<u8>>, target_len: u64) {
        if let Some(d) = delta {
            self.deltas.fetch_add(1, Relaxed);
            self.delta_bytes.fetch_add(d.len() as u64, Relaxed);
            self.target_bytes.fetch_add(target_len, Relaxed);
        }
    }
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

    fn entry(path: &str, kind: Kind) -> Entry {
        Entry {
            path: path.into(),
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            xattrs: vec![],
        }
    }

    fn file(path: &str, chunks: &[Chunk]) -> Entry {
        let size = chunks.iter().map(|c| u64::from(c.len)).sum();
        entry(
            path,
            Kind::File {
                size,
                chunks: chunks.to_vec(),
                extents: None,
            },
        )
    }

    fn link(path: &str, target: &str) -> Entry {
        entry(
            path,
            Kind::Hardlink {
                target: target.into(),
            },
        )
    }

    /// The streamed merge-join finds the pairs the in-memory one does, in the same order
    /// (hard links on either side or unchanged, chunked files, files new, gone and unchanged).
    #[test]
    fn streamed_wants_are_the_in_memory_ones() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        crate::repo::init(&root).unwrap();
        let repo = crate::repo::Repository::open(&root, crate::repo::Lock::Shared).unwrap();
        let old = Manifest {
            entries: vec![
                entry("", Kind::Dir),
                file("a", &[chunk(1, 10)]),
                file("b", &[chunk(2, 10), chunk(3, 10), chunk(4, 10)]),
                link("c", "a"),
                file("d", &[chunk(5, 10)]),
                file("e", &[chunk(6, 10)]),
                file("gone", &[chunk(7, 10)]),
                link("l", "b"),
                link("m", "b"),
                file("same", &[chunk(8, 10)]),
            ],
        };
        let new = Manifest {
            entries: vec![
                entry("", Kind::Dir),
                file("0new", &[chunk(16, 10)]),
                file("a", &[chunk(11, 10)]),
                file("b", &[chunk(2, 10), chunk(13, 15), chunk(14, 10)]),
                file("c", &[chunk(15, 10)]),
                link("d", "a"),
                link("e", "0new"),
                file("l", &[chunk(17, 10)]),
                link("m", "b"),
                file("same", &[chunk(8, 10)]),
            ],
        };
        let parent = repo.store_manifest(&old).unwrap();
        let rev = repo.store_manifest(&new).unwrap();
        let mut streamed = Vec::new();
        each_want(&repo, &parent, &rev, &mut |w, _| {
            streamed.push(w);
            Ok(())
        })
        .unwrap();
        let mut in_memory = wants(&old, &new, None);
        // The streamed pass serves paths reached through a hard link last.
        let key = |w: &Want| w.target.0;
        let (mut a, mut b) = (streamed.clone(), in_memory.clone());
        a.sort_by_key(key);
        b.sort_by_key(key);
        assert_eq!(a, b);
        assert_eq!(streamed[..3], in_memory[..3]);
        in_memory.retain(|w| w.target == chunk(16, 10).id);
        assert_eq!(in_memory.len(), 1, "e (a link to a new file) has a delta");
        assert_eq!(in_memory[0].base, vec![chunk(6, 10).id]);
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
