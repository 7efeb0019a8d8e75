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
//! Wire format of `POST /api/v1/deltas` (all integers little-endian):
//! request: repeated `target id (32) | n (u8) | n base ids (32 each)`;
//! response: repeated `status (u8: 0 none, 1 delta) | length (u32) | bytes`, one record per
//! request record, in order.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{corrupt, invalid, IoContext, Result};
use crate::format::manifest::{Chunk, Entry, Kind, Manifest};
use crate::format::Id;

/// Bases larger than this are not used (the delta window must hold base and target).
pub const MAX_BASE: u64 = 4 << 20;
/// zstd window: 2^23 = 8 MiB holds the largest base plus the largest target.
const WINDOW_LOG: u32 = 23;
/// A delta is sent only when it saves at least 5 % of the blob's raw size.
pub const PAYS_NUM: u64 = 19;
pub const PAYS_DEN: u64 = 20;
/// zstd level of deltas made at capture time (once per revision, so it can be slow).
pub const LEVEL_PRECOMPUTE: i32 = 15;
/// zstd level of deltas made on demand while a node waits.
pub const LEVEL_ON_DEMAND: i32 = 12;
/// Most records in one request.
pub const MAX_BATCH: usize = 512;
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

/// One delta a node asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Want {
    pub target: Id,
    pub base: Vec<Id>,
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
        if c_end > offset && at < end && total + u64::from(c.len) <= MAX_BASE {
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

/// Compresses `target` against `base`.
pub fn encode(base: &[u8], target: &[u8], level: i32) -> Result<Vec<u8>> {
    let mut enc = zstd::stream::write::Encoder::with_ref_prefix(Vec::new(), level, base)?;
    enc.set_parameter(zstd::stream::raw::CParameter::WindowLog(WINDOW_LOG))?;
    enc.set_pledged_src_size(Some(target.len() as u64))?;
    enc.write_all(target)?;
    Ok(enc.finish()?)
}

/// Rebuilds a blob from its base and delta, and checks it is `target`.
pub fn decode(base: &[u8], delta: &[u8], target: &Id) -> Result<Vec<u8>> {
    let wrong = || {
        corrupt(format!(
            "the delta for blob {} does not rebuild it; it was not used",
            target.short()
        ))
    };
    let mut dec = zstd::stream::read::Decoder::with_ref_prefix(delta, base).map_err(|_| wrong())?;
    dec.set_parameter(zstd::stream::raw::DParameter::WindowLogMax(WINDOW_LOG))
        .map_err(|_| wrong())?;
    let mut out = Vec::new();
    dec.take(u64::from(u32::MAX))
        .read_to_end(&mut out)
        .map_err(|_| wrong())?;
    if Id::of(&out) != *target {
        return Err(wrong());
    }
    Ok(out)
}

/// The request body for `wants`.
pub fn encode_request(wants: &[Want]) -> Vec<u8> {
    let mut out = Vec::with_capacity(wants.len() * 66);
    for w in wants {
        out.extend_from_slice(&w.target.0);
        out.push(w.base.len() as u8);
        for b in &w.base {
            out.extend_from_slice(&b.0);
        }
    }
    out
}

fn id_at(data: &[u8], at: usize) -> Option<Id> {
    Some(Id(data.get(at..at + 32)?.try_into().ok()?))
}

/// Parses a request body.
pub fn decode_request(data: &[u8]) -> Result<Vec<Want>> {
    let bad = || invalid("malformed delta request");
    let mut out = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let target = id_at(data, at).ok_or_else(bad)?;
        let n = *data.get(at + 32).ok_or_else(bad)? as usize;
        at += 33;
        let mut base = Vec::with_capacity(n);
        for _ in 0..n {
            base.push(id_at(data, at).ok_or_else(bad)?);
            at += 32;
        }
        if out.len() >= MAX_BATCH {
            return Err(bad());
        }
        out.push(Want { target, base });
    }
    Ok(out)
}

/// One record of a response (the records follow the request's order; the target is not
/// repeated: the node checks every rebuilt blob against the id it asked for).
pub fn encode_answer(out: &mut Vec<u8>, delta: Option<&[u8]>) {
    out.push(u8::from(delta.is_some()));
    let d = delta.unwrap_or(&[]);
    out.extend_from_slice(&(d.len() as u32).to_le_bytes());
    out.extend_from_slice(d);
}

/// Reads the next record of a response; `None` at its end.
pub fn read_answer(r: &mut impl Read) -> Result<Option<Option<Vec<u8>>>> {
    let mut head = [0u8; 5];
    let mut got = 0;
    while got < head.len() {
        let n = r.read(&mut head[got..])?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(corrupt("the server's delta answer is cut short"));
        }
        got += n;
    }
    let len = u32::from_le_bytes(head[1..5].try_into().expect("4 bytes"));
    if head[0] == 0 {
        return Ok(Some(None));
    }
    if head[0] != 1 || len > 64 << 20 {
        return Err(corrupt("the server's delta answer is malformed"));
    }
    let mut d = vec![0u8; len as usize];
    r.read_exact(&mut d)
        .map_err(|_| corrupt("the server's delta answer is cut short"))?;
    Ok(Some(Some(d)))
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
        let mut key = blake3::Hasher::new();
        for b in &w.base {
            key.update(&b.0);
        }
        let key = key.finalize().to_hex();
        let t = w.target.hex();
        self.dir.join(&t[..2]).join(format!("{t}-{}", &key[..32]))
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
                let keep = name
                    .get(..64)
                    .and_then(Id::from_hex)
                    .is_some_and(|id| live(&id))
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
    let delta = encode(&base, &target, level)?;
    let alone = encode(&[], &target, level)?;
    let best = if alone.len() < delta.len() {
        alone
    } else {
        delta
    };
    let pays = (best.len() as u64) * PAYS_DEN <= (target.len() as u64) * PAYS_NUM;
    let delta = pays.then_some(best);
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
}

/// Makes (at a high level, on every core) the deltas a node running `parent` will ask for
/// when it updates to `rev`, so `aurum serve` answers them from its cache.
pub fn precompute(
    repo: &crate::repo::Repository,
    parent: &Id,
    rev: &Id,
    progress: &dyn crate::progress::Progress,
) -> Result<Precomputed> {
    use rayon::prelude::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    let old = repo.load_manifest(parent)?;
    let new = repo.load_manifest(rev)?;
    let mut wants = wants(&old, &new, None);
    // The manifest itself, against its parent's.
    wants.push(Want {
        target: *rev,
        base: vec![*parent],
    });
    let manifest_len = new.encode().len() as u64;
    let cache = Cache::new(&repo.root);
    let blobs = crate::repo::BlobsAndManifests {
        root: &repo.root,
        blobs: repo.blobs()?,
    };
    progress.phase("precomputing deltas", Some(wants.len() as u64), false);
    let (deltas, delta_bytes, target_bytes) =
        (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    wants.par_iter().try_for_each(|w| -> Result<()> {
        if let Some(d) = get_or_make(&cache, &blobs, w, LEVEL_PRECOMPUTE)? {
            deltas.fetch_add(1, Ordering::Relaxed);
            delta_bytes.fetch_add(d.len() as u64, Ordering::Relaxed);
            let len: u64 = if w.target == *rev {
                manifest_len
            } else {
                new.entries
                    .iter()
                    .find_map(|e| match &e.kind {
                        Kind::File { chunks, .. } => chunks
                            .iter()
                            .find(|c| c.id == w.target)
                            .map(|c| u64::from(c.len)),
                        _ => None,
                    })
                    .unwrap_or(0)
            };
            target_bytes.fetch_add(len, Ordering::Relaxed);
        }
        progress.advance(1);
        Ok(())
    })?;
    progress.finish();
    Ok(Precomputed {
        pairs: wants.len() as u64,
        deltas: deltas.into_inner(),
        delta_bytes: delta_bytes.into_inner(),
        target_bytes: target_bytes.into_inner(),
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

    #[test]
    fn a_delta_rebuilds_its_target_and_nothing_else() {
        let base: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i * 7).to_le_bytes())
            .collect();
        let mut target = base.clone();
        target[1000..1010].copy_from_slice(b"0123456789");
        target.extend_from_slice(b"appended");
        let d = encode(&base, &target, 3).unwrap();
        assert!(d.len() < 200, "delta of {} bytes", d.len());
        assert_eq!(decode(&base, &d, &Id::of(&target)).unwrap(), target);
        // Another base gives other bytes, caught by the id check.
        let mut other = base.clone();
        other[5] ^= 1;
        assert!(decode(&other, &d, &Id::of(&target)).is_err());
    }

    #[test]
    fn requests_and_answers_round_trip() {
        let w = vec![
            Want {
                target: Id::of(b"a"),
                base: vec![Id::of(b"b")],
            },
            Want {
                target: Id::of(b"c"),
                base: vec![Id::of(b"d"), Id::of(b"e")],
            },
        ];
        assert_eq!(decode_request(&encode_request(&w)).unwrap(), w);
        assert!(decode_request(&encode_request(&w)[..40]).is_err());
        let mut out = Vec::new();
        encode_answer(&mut out, Some(b"xyz"));
        encode_answer(&mut out, None);
        let mut r = &out[..];
        assert_eq!(read_answer(&mut r).unwrap(), Some(Some(b"xyz".to_vec())));
        assert_eq!(read_answer(&mut r).unwrap(), Some(None));
        assert!(read_answer(&mut r).unwrap().is_none());
        assert!(read_answer(&mut &out[..3]).is_err());
    }
}
