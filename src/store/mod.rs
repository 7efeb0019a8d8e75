//! Packs of blobs: writing them durably, reading blobs back verified.
//!
//! The store knows files and bytes, not the catalog: [`PackWriter`] hands each finished pack
//! back to its caller, which records it in the catalog only after the pack and its index are
//! durable under their final names. A pack that never reaches the catalog (a capture killed at
//! the wrong moment) is complete and valid on disk, and [`crate::repo::Repository`] adopts it the
//! next time a writer opens the repository.

pub mod chunk;

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::{corrupt, IoContext, Result};
use crate::format::pack::{self, Codec, IndexEntry};
use crate::format::Id;

/// Where blobs come from for those who write files: a local repository, an HTTP server, a
/// node's own files. Every implementation checks a blob against its id before handing it out.
pub trait BlobSource: Sync {
    /// The blob's content, already checked against `id`.
    fn get(&self, id: &Id) -> Result<Vec<u8>>;
    /// Hands the blob's content to `use_it`, borrowed where the source holds it already (a
    /// fresh root's writer has the fetched blob in hand: no copy of it is made).
    fn with_blob(&self, id: &Id, use_it: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        use_it(&self.get(id)?)
    }
    /// A file of the repository's published directory (`packs/XX/ID.pack`), as stored: what
    /// rebuilding an embedded repository copies. A source that is no repository has none.
    fn public_file(&self, rel: &str) -> Result<Vec<u8>> {
        Err(crate::error::invalid(format!(
            "{rel}: this source holds blobs only, not a repository's files, and cannot rebuild an embedded repository"
        )))
    }
}

/// A pack is closed once it grows past this many bytes (the design asks for 32-64 MiB).
pub const PACK_TARGET: u64 = 48 << 20;
/// A pack also closes at this many blobs: its index is held in memory until it closes, and a
/// capture remembers each blob of the open pack (a million small files made one pack whose
/// bookkeeping was over 100 MiB, issue 14).
pub const PACK_MAX_ENTRIES: usize = 65_536;
/// zstd level for blobs and groups (with long-distance matching, one thread per group, the
/// groups of a batch side by side): on a Debian root the store is then smaller than its
/// `tar | zstd -3`, and compression, which is most of a first capture's CPU, runs on both
/// cores. `getimage --level` raises it for a
/// revision about to be sent to many nodes.
pub const ZSTD_LEVEL: i32 = 3;

static LEVEL: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(ZSTD_LEVEL);

/// Sets the zstd level of the blobs and groups this process stores from now on (1 to 19).
pub fn set_level(level: i32) {
    LEVEL.store(level.clamp(1, 19), std::sync::atomic::Ordering::Relaxed);
}

/// The zstd level blobs and groups are stored at.
pub fn level() -> i32 {
    LEVEL.load(std::sync::atomic::Ordering::Relaxed)
}
/// A group is closed once its members add up to this many bytes.
///
/// Compressible blobs are stored in groups, several to a zstd frame, in tree order: compressed
/// one by one, blobs lose the context a solid stream keeps (similar files side by side), and the
/// store of a Debian root would be 10 % larger than its `tar | zstd -3`. Groups hold only blobs
/// new in one capture, so a node updating to that capture needs nearly every member of every
/// group it fetches, and an install reads them all anyway.
pub const GROUP_TARGET: usize = 8 << 20;
/// A group also closes at this many members: a capture holds the open group's members, and a
/// million files of a few bytes each made a single group of a million (issue 14). Files of a
/// few KiB reach [`GROUP_TARGET`] first.
pub const GROUP_MAX_MEMBERS: usize = 16_384;
/// Blobs whose first bytes do not shrink by this factor at zstd level 1 are stored raw, alone.
const INCOMPRESSIBLE: f64 = 0.95;

/// Whether a blob is worth compressing, judged on a sample (already compressed data, media and
/// packages are not, and are kept out of groups so that they are not compressed for nothing).
pub fn compressible(data: &[u8]) -> bool {
    let sample = data.get(..16 << 10).unwrap_or(data);
    if sample.len() < 64 {
        return true;
    }
    match SAMPLER.with(|c| c.borrow_mut().compress(sample)) {
        Ok(c) => (c.len() as f64) < INCOMPRESSIBLE * sample.len() as f64,
        Err(_) => true,
    }
}

/// The one directory of a repository that a web server may publish: everything a node
/// reads (`FORMAT`, packs, indexes, manifests, refs, templates, deltas) and nothing else. The
/// catalog, the lock and `tmp/` lie beside it, so that publishing this directory whole (an
/// nginx `root`, an rsync to a cache) cannot expose them.
pub const PUBLISHED: &str = "public";

/// `REPO/public`: see [`PUBLISHED`]. URLs are relative to it (`/packs/list` is
/// `REPO/public/packs/list`).
pub fn published(repo: &Path) -> PathBuf {
    repo.join(PUBLISHED)
}

/// `public/packs/ab/abcd….pack` for a pack id.
pub fn pack_path(repo: &Path, id: &Id, ext: &str) -> PathBuf {
    published(repo).join(pack::path(id, ext))
}

/// `public/manifests/ab/abcd….mf` for a revision id.
pub fn manifest_path(repo: &Path, id: &Id) -> PathBuf {
    published(repo).join(crate::format::manifest::path(id))
}

/// Where unfinished packs and other temporary files live; emptied whenever a writer starts
/// with the repository exclusively locked.
pub fn tmp_dir(repo: &Path) -> PathBuf {
    repo.join("tmp")
}

/// Mode of a file a web server publishes (packs, indexes, manifests, refs, templates):
/// world-readable whatever the umask, so that nginx running as www-data can serve it.
pub const PUBLIC_FILE: u32 = 0o644;
/// Mode of a directory a web server publishes.
pub const PUBLIC_DIR: u32 = 0o755;

/// Creates `dir` (and its parents) under `repo`, world-readable: a umask of 077 must not
/// leave a directory a web server cannot enter. Only what lies under `repo` is changed.
pub fn create_public_dir(repo: &Path, dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(dir).at(dir)?;
    let mut d = dir;
    while d.starts_with(repo) && d != repo {
        let mode = fs::metadata(d).at(d)?.permissions().mode() & 0o7777;
        if mode != PUBLIC_DIR {
            fs::set_permissions(d, fs::Permissions::from_mode(PUBLIC_DIR)).at(d)?;
        }
        d = d.parent().expect("under repo");
    }
    Ok(())
}

/// Gives a file about to be published its mode (a temporary file is created 0600).
fn make_public(f: &File, path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    f.set_permissions(fs::Permissions::from_mode(PUBLIC_FILE))
        .at(path)
}

/// Writes `data` to `path` atomically: temporary name, fsync, rename, fsync of the directory.
/// The file is world-readable ([`PUBLIC_FILE`]): everything written this way is published.
pub fn write_atomic(repo: &Path, path: &Path, data: &[u8]) -> Result<()> {
    place(repo, path, data, true)
}

/// [`write_atomic`] without the fsyncs, for derived files whose loss costs nothing but their
/// recomputation (cached deltas): a crash leaves the old file or the new one, never a torn
/// one at the name a reader trusts (a torn file would fail its check and be made again).
pub fn write_cached(repo: &Path, path: &Path, data: &[u8]) -> Result<()> {
    place(repo, path, data, false)
}

/// Writes `data` under a temporary name in `tmp/` (never inside [`PUBLISHED`], whose every
/// file a web server may hand out) and renames it to `path`, world-readable.
fn place(repo: &Path, path: &Path, data: &[u8], durable: bool) -> Result<()> {
    let dir = path.parent().expect("store paths have a parent");
    create_public_dir(repo, dir)?;
    let tmp = tmp_dir(repo);
    crate::sys::write_atomic(
        path,
        data,
        crate::sys::WriteOpts {
            durable,
            tmp_dir: Some(&tmp),
            mode: Some(PUBLIC_FILE),
        },
    )
}

/// Writes a file whose name depends on its content, as a streamed manifest's does: `write`
/// fills a temporary file in `tmp/` and returns the id its bytes are named by, `path` makes
/// that name; the file is made durable and renamed there, world-readable (unless a file of
/// that name is there already: same id, same content).
pub fn place_with(
    repo: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<&File>) -> Result<Id>,
    path: impl FnOnce(&Id) -> PathBuf,
) -> Result<Id> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tmp_dir(repo);
    let file = tempfile::NamedTempFile::new_in(&tmp).at(&tmp)?;
    let mut out = std::io::BufWriter::new(file.as_file());
    let id = write(&mut out)?;
    out.flush().at(file.path())?;
    drop(out);
    let path = path(&id);
    if path.exists() {
        return Ok(id);
    }
    let dir = path.parent().expect("store paths have a parent");
    create_public_dir(repo, dir)?;
    file.as_file()
        .set_permissions(std::fs::Permissions::from_mode(PUBLIC_FILE))
        .at(file.path())?;
    file.as_file().sync_all().at(file.path())?;
    file.persist(&path).map_err(|e| e.error).at(&path)?;
    crate::sys::sync_dir(dir)?;
    Ok(id)
}

thread_local! {
    static SAMPLER: std::cell::RefCell<zstd::bulk::Compressor<'static>> =
        std::cell::RefCell::new(zstd::bulk::Compressor::new(1).expect("zstd context"));
}

/// The compressors of blobs and groups not in use, kept between uses (a context with its
/// tables costs more to set up than a small group to compress). They are not thread-local:
/// a capture's are dropped by [`release_compressors`] once it has stored everything: two of
/// them (then with two zstd workers each) held some 40 MiB through the delta precompute
/// that follows, and at `--level 19` each is near 40 MiB alone (issue #14).
static COMPRESSORS: std::sync::Mutex<Vec<zstd::bulk::Compressor<'static>>> =
    std::sync::Mutex::new(Vec::new());

fn new_compressor() -> zstd::bulk::Compressor<'static> {
    let mut c = zstd::bulk::Compressor::new(level()).expect("zstd context");
    // Long-distance matching finds the repeats between similar files of a group.
    // One thread a context: the groups of a batch are compressed on rayon's threads
    // side by side, beside the hashing of the next batch. A context with two zstd
    // workers of its own cost some 25 MiB (a round buffer of window and jobs, and a
    // context per worker), one on each thread that compressed: three of them were
    // 75 MiB of a capture's 172 MiB peak on a live Debian root (issue 14); this one
    // is about 3 MiB.
    for p in [
        zstd::zstd_safe::CParameter::EnableLongDistanceMatching(true),
        // A group is at most a few MiB: no need for long mode's 128 MiB window.
        zstd::zstd_safe::CParameter::WindowLog(23),
        zstd::zstd_safe::CParameter::NbWorkers(0),
    ] {
        c.set_parameter(p).expect("zstd parameter");
    }
    if level() >= 10 {
        // The high levels' default tables are sized for inputs far larger than a group;
        // these keep a context near 40 MiB.
        for p in [
            zstd::zstd_safe::CParameter::HashLog(21),
            zstd::zstd_safe::CParameter::ChainLog(22),
        ] {
            c.set_parameter(p).expect("zstd parameter");
        }
    }
    c
}

/// Runs `f` with a compressor of the pool (a new one when all are in use).
fn with_compressor<T>(f: impl FnOnce(&mut zstd::bulk::Compressor<'static>) -> T) -> T {
    let pooled = COMPRESSORS.lock().expect("compressor pool lock").pop();
    let mut c = pooled.unwrap_or_else(new_compressor);
    let out = f(&mut c);
    COMPRESSORS.lock().expect("compressor pool lock").push(c);
    out
}

/// Drops the compressors kept for the next blob or group: for a command that has stored
/// what it had to and goes on to other work.
pub fn release_compressors() {
    COMPRESSORS.lock().expect("compressor pool lock").clear();
}

/// Compresses a blob, or keeps it raw when zstd does not make it smaller.
pub fn compress(raw: &[u8]) -> (Codec, Vec<u8>) {
    let packed = with_compressor(|c| c.compress(raw));
    match packed {
        Ok(p) if p.len() < raw.len() => (Codec::Zstd, p),
        _ => (Codec::Raw, raw.to_vec()),
    }
}

/// Decompresses a whole group payload.
pub fn decode_group_payload(id: &Id, payload: &[u8]) -> Result<Vec<u8>> {
    let bad = |e: std::io::Error| {
        corrupt(format!(
            "the group holding blob {} does not decompress: {e}",
            id.short()
        ))
    };
    // Into a buffer of the size the frame header gives, when it gives one a group can have:
    // decode_all's doubling held up to twice the body, and copied it on the way.
    match zstd::zstd_safe::get_frame_content_size(payload) {
        Ok(Some(n)) if n <= (GROUP_TARGET + (2 << 20)) as u64 => {
            zstd::bulk::decompress(payload, n as usize).map_err(bad)
        }
        _ => {
            let mut body = zstd::stream::decode_all(payload).map_err(bad)?;
            body.shrink_to_fit();
            Ok(body)
        }
    }
}

/// Turns a stored payload back into the blob and checks it against its id.
pub fn decode_blob(e: &IndexEntry, payload: &[u8]) -> Result<Vec<u8>> {
    let (id, raw_len) = (&e.id, e.raw_len);
    let raw = match e.codec {
        Codec::Raw => payload.to_vec(),
        Codec::Zstd => zstd::bulk::decompress(payload, raw_len as usize)
            .map_err(|err| corrupt(format!("blob {} does not decompress: {err}", id.short())))?,
        Codec::ZstdGroup => {
            let body = decode_group_payload(id, payload)?;
            member(e, &body)?
        }
    };
    check(e, raw)
}

/// A group member's bytes, cut out of the decompressed group body.
fn member(e: &IndexEntry, body: &[u8]) -> Result<Vec<u8>> {
    let start = e.inner as usize;
    body.get(start..start + e.raw_len as usize)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| corrupt(format!("blob {} lies outside its group", e.id.short())))
}

/// What a damaged blob's error tells a command other than verify to do; verify, which names
/// the revisions itself, leaves it out.
pub const FIND_BROKEN: &str = "; run `aurum verify` to see which revisions it breaks";

fn check(e: &IndexEntry, raw: Vec<u8>) -> Result<Vec<u8>> {
    let (id, raw_len) = (&e.id, e.raw_len);
    if raw.len() != raw_len as usize || Id::of(&raw) != *id {
        return Err(corrupt(format!(
            "blob {} is damaged (its content no longer matches its hash){FIND_BROKEN}",
            id.short()
        )));
    }
    Ok(raw)
}

/// A pack that is durable under its final name, for the caller to record in the catalog.
#[derive(Debug)]
pub struct FinishedPack {
    pub id: Id,
    pub size: u64,
    pub entries: Vec<IndexEntry>,
}

/// A group compressed and ready to append; made on any thread, appended in order.
pub struct PreparedGroup {
    id: Id,
    body_len: u32,
    payload: Vec<u8>,
    /// (blob id, length, offset in the body) of each member.
    pub members: Vec<(Id, u32, u32)>,
}

impl PreparedGroup {
    /// Encodes and compresses a group of blobs.
    pub fn new(members: Vec<(Id, Vec<u8>)>) -> Result<PreparedGroup> {
        let (body, offsets) = pack::encode_group(&members);
        let members: Vec<(Id, u32, u32)> = members
            .into_iter()
            .zip(offsets)
            .map(|((id, data), inner)| (id, data.len() as u32, inner))
            .collect();
        // The members' bytes are in the body now: let them go before compressing.
        let mut payload =
            with_compressor(|c| c.compress(&body)).map_err(|e| corrupt(format!("zstd: {e}")))?;
        // zstd's output buffer is sized for the worst case (the body's size); a batch's
        // groups are held until they are appended.
        payload.shrink_to_fit();
        Ok(PreparedGroup {
            id: Id::of(&body),
            body_len: body.len() as u32,
            payload,
            members,
        })
    }

    /// Takes a group compressed elsewhere (by a remote capture's agent) after checking every
    /// member against its id; returns it with its decompressed body.
    pub fn received(payload: Vec<u8>) -> Result<(PreparedGroup, Vec<u8>)> {
        let body = zstd::bulk::decompress(&payload, GROUP_TARGET + (2 << 20))
            .map_err(|e| corrupt(format!("a received group does not decompress: {e}")))?;
        let table = pack::decode_group(&body)?;
        let mut members = Vec::with_capacity(table.len());
        for (id, inner, len) in table {
            let data = usize::try_from(inner)
                .ok()
                .zip(usize::try_from(len).ok())
                .and_then(|(inner, len)| body.get(inner..inner.checked_add(len)?))
                .unwrap_or_default();
            if Id::of(data) != id {
                return Err(corrupt(format!(
                    "member {} of a received group does not match its id",
                    id.short()
                )));
            }
            members.push((id, len, inner));
        }
        let group = PreparedGroup {
            id: Id::of(&body),
            body_len: body.len() as u32,
            payload,
            members,
        };
        Ok((group, body))
    }

    /// The compressed body, as it goes into a pack.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }
}

/// New blobs, in order, cut the way a capture stores them: incompressible ones raw, the others
/// appended to `open` (the group still being filled) and closed into groups of
/// [`GROUP_TARGET`], compressed in parallel. Returns the raw blobs, the closed groups and the
/// group left open.
pub fn group_blobs(
    blobs: Vec<(Id, Vec<u8>)>,
    mut open: Vec<(Id, Vec<u8>)>,
) -> Result<GroupedBlobs> {
    use rayon::prelude::*;
    let dense: Vec<bool> = blobs.par_iter().map(|(_, d)| compressible(d)).collect();
    let mut open_bytes: usize = open.iter().map(|m| m.1.len()).sum();
    let mut full = Vec::new();
    let mut raw = Vec::new();
    for ((id, data), dense) in blobs.into_iter().zip(dense) {
        if !dense {
            raw.push((id, data));
            continue;
        }
        open_bytes += data.len();
        open.push((id, data));
        if open_bytes >= GROUP_TARGET || open.len() >= GROUP_MAX_MEMBERS {
            full.push(std::mem::take(&mut open));
            open_bytes = 0;
        }
    }
    let groups = full
        .into_par_iter()
        .map(PreparedGroup::new)
        .collect::<Result<Vec<_>>>()?;
    Ok(GroupedBlobs { raw, groups, open })
}

/// What [`group_blobs`] made.
pub struct GroupedBlobs {
    pub raw: Vec<(Id, Vec<u8>)>,
    pub groups: Vec<PreparedGroup>,
    pub open: Vec<(Id, Vec<u8>)>,
}

struct OpenPack {
    file: tempfile::NamedTempFile,
    path: PathBuf,
    hasher: blake3::Hasher,
    offset: u64,
    entries: Vec<IndexEntry>,
}

/// Appends blobs to packs, closing each at [`PACK_TARGET`].
pub struct PackWriter {
    repo: PathBuf,
    cur: Option<OpenPack>,
    group: Vec<(Id, Vec<u8>)>,
    group_bytes: usize,
    /// Payload bytes written so far (what the blobs take on disk).
    pub written: u64,
}

impl PackWriter {
    pub fn new(repo: &Path) -> PackWriter {
        PackWriter {
            repo: repo.to_path_buf(),
            cur: None,
            group: Vec::new(),
            group_bytes: 0,
            written: 0,
        }
    }

    /// Adds a small blob (raw bytes) to the open group; returns a pack when this filled one.
    pub fn add_grouped(&mut self, id: &Id, raw: &[u8]) -> Result<Option<FinishedPack>> {
        self.group.push((*id, raw.to_vec()));
        self.group_bytes += raw.len();
        if self.group_bytes >= GROUP_TARGET || self.group.len() >= GROUP_MAX_MEMBERS {
            return self.flush_group();
        }
        Ok(None)
    }

    /// Writes the open group as one record whose members all point at it.
    fn flush_group(&mut self) -> Result<Option<FinishedPack>> {
        if self.group.is_empty() {
            return Ok(None);
        }
        let members = std::mem::take(&mut self.group);
        self.group_bytes = 0;
        let g = PreparedGroup::new(members)?;
        self.add_prepared(&g)
    }

    /// Appends a group compressed elsewhere (see [`PreparedGroup`]).
    pub fn add_prepared(&mut self, g: &PreparedGroup) -> Result<Option<FinishedPack>> {
        self.append(&g.id, Codec::ZstdGroup, g.body_len, &g.payload, &g.members)
    }

    /// Takes the members of the open group out (to be regrouped with more blobs by a caller
    /// that compresses groups in parallel); give back what is left with [`Self::restore_group`].
    pub fn take_group(&mut self) -> Vec<(Id, Vec<u8>)> {
        self.group_bytes = 0;
        std::mem::take(&mut self.group)
    }

    /// Makes `members` the open group again.
    pub fn restore_group(&mut self, members: Vec<(Id, Vec<u8>)>) {
        self.group_bytes = members.iter().map(|m| m.1.len()).sum();
        self.group = members;
    }

    /// Appends one blob; returns a pack when this blob filled it.
    pub fn add(
        &mut self,
        id: &Id,
        codec: Codec,
        raw_len: u32,
        payload: &[u8],
    ) -> Result<Option<FinishedPack>> {
        self.append(id, codec, raw_len, payload, &[(*id, raw_len, 0)])
    }

    /// Writes one record and indexes `members` (id, length, offset in the record's body).
    fn append(
        &mut self,
        id: &Id,
        codec: Codec,
        raw_len: u32,
        payload: &[u8],
        members: &[(Id, u32, u32)],
    ) -> Result<Option<FinishedPack>> {
        self.written += payload.len() as u64;
        if self.cur.is_none() {
            let tmp = tmp_dir(&self.repo);
            let mut file = tempfile::Builder::new()
                .suffix(".pack")
                .tempfile_in(&tmp)
                .at(&tmp)?;
            file.write_all(pack::PACK_MAGIC).at(file.path())?;
            let mut hasher = blake3::Hasher::new();
            hasher.update(pack::PACK_MAGIC);
            self.cur = Some(OpenPack {
                path: file.path().to_path_buf(),
                file,
                hasher,
                offset: pack::PACK_MAGIC.len() as u64,
                entries: Vec::new(),
            });
        }
        let cur = self.cur.as_mut().expect("opened above");
        let header = pack::record_header(id, codec, payload.len() as u32, raw_len);
        let w = cur.file.as_file_mut();
        w.write_all(&header).at(&cur.path)?;
        w.write_all(payload).at(&cur.path)?;
        cur.hasher.update(&header);
        cur.hasher.update(payload);
        for &(mid, len, inner) in members {
            cur.entries.push(IndexEntry {
                id: mid,
                offset: cur.offset + header.len() as u64,
                stored_len: payload.len() as u32,
                raw_len: len,
                codec,
                inner,
            });
        }
        cur.offset += (header.len() + payload.len()) as u64;
        if cur.offset >= PACK_TARGET || cur.entries.len() >= PACK_MAX_ENTRIES {
            return self.finish();
        }
        Ok(None)
    }

    /// Closes the open pack, if any: fsync, index, renames, directory fsync.
    pub fn finish(&mut self) -> Result<Option<FinishedPack>> {
        if let Some(done) = self.flush_group()? {
            // The group's record closed the pack; nothing is left open.
            debug_assert!(self.cur.is_none());
            return Ok(Some(done));
        }
        let Some(mut cur) = self.cur.take() else {
            return Ok(None);
        };
        make_public(cur.file.as_file(), cur.file.path())?;
        cur.file.as_file().sync_all().at(cur.file.path())?;
        let id = Id::from(cur.hasher.finalize());
        let pack_at = pack_path(&self.repo, &id, "pack");
        let dir = pack_at.parent().expect("pack paths have a parent");
        create_public_dir(&self.repo, dir)?;
        // The pack goes in first: an index never names a pack that is not there.
        cur.file
            .persist(&pack_at)
            .map_err(|e| e.error)
            .at(&pack_at)?;
        let index = pack::encode_index(&mut cur.entries);
        write_atomic(&self.repo, &pack_path(&self.repo, &id, "idx"), &index)?;
        Ok(Some(FinishedPack {
            id,
            size: cur.offset,
            entries: cur.entries,
        }))
    }
}

/// Rebuilds a pack's index from its record headers (for a pack whose index was never written,
/// when a capture was killed between the two). Checks the pack against its name first.
pub fn rebuild_index(repo: &Path, id: &Id) -> Result<FinishedPack> {
    use std::io::Read;
    let path = pack_path(repo, id, "pack");
    let mut f = std::io::BufReader::new(File::open(&path).at(&path)?);
    let mut all = Vec::new();
    f.read_to_end(&mut all).at(&path)?;
    if Id::of(&all) != *id || !all.starts_with(pack::PACK_MAGIC) {
        return Err(corrupt(format!(
            "{} does not match its name",
            path.display()
        )));
    }
    let mut entries = Vec::new();
    let mut at = pack::PACK_MAGIC.len();
    while at < all.len() {
        let (rid, codec, stored, raw) =
            pack::parse_record_header(all.get(at..).unwrap_or_default())?;
        let offset = at + pack::RECORD_HEADER;
        let payload = all
            .get(offset..offset + stored as usize)
            .ok_or_else(|| corrupt(format!("{} is truncated", path.display())))?;
        let header = (rid, codec, stored, raw);
        record_entries(&mut entries, header, offset as u64, || Ok(payload.into()))?;
        at = offset + stored as usize;
    }
    let index = pack::encode_index(&mut entries);
    write_atomic(repo, &pack_path(repo, id, "idx"), &index)?;
    Ok(FinishedPack {
        id: *id,
        size: all.len() as u64,
        entries,
    })
}

/// Adds the index entries of the record whose `header` ([`pack::parse_record_header`]) comes
/// before `offset`: its blob, or a group's members from the group's table. `payload` (the
/// stored bytes) is read only for a group.
fn record_entries<'a>(
    entries: &mut Vec<IndexEntry>,
    header: (Id, Codec, u32, u32),
    offset: u64,
    payload: impl FnOnce() -> Result<std::borrow::Cow<'a, [u8]>>,
) -> Result<()> {
    let (rid, codec, stored, raw) = header;
    if codec != Codec::ZstdGroup {
        entries.push(IndexEntry {
            id: rid,
            offset,
            stored_len: stored,
            raw_len: raw,
            codec,
            inner: 0,
        });
        return Ok(());
    }
    let body = decode_group_payload(&rid, &payload()?)?;
    for (id, inner, raw_len) in pack::decode_group(&body)? {
        entries.push(IndexEntry {
            id,
            offset,
            stored_len: stored,
            raw_len,
            codec,
            inner,
        });
    }
    Ok(())
}

/// What is wrong with the index `listed` of the pack whose records are `held` (from
/// [`pack_entries`]), none when it fits: it must place every blob where the pack holds it, and
/// list every blob the pack holds. An index with a good checksum that points elsewhere (a wrong
/// or an old index for this pack) would send every read to the wrong bytes.
pub fn index_mismatch(listed: &[IndexEntry], held: &[IndexEntry]) -> Option<String> {
    let held_set: std::collections::HashSet<_> = held.iter().collect();
    if let Some(e) = listed.iter().find(|e| !held_set.contains(e)) {
        return Some(format!(
            "it places blob {} where its pack holds no such record",
            e.id.short()
        ));
    }
    let listed_ids: std::collections::HashSet<_> = listed.iter().map(|e| e.id).collect();
    held.iter()
        .find(|e| !listed_ids.contains(&e.id))
        .map(|e| format!("it lacks blob {} that its pack holds", e.id.short()))
}

/// The index entries a pack file's record headers describe (a group's members from its
/// table), read record by record: one record (at most a group) in memory at a time. The
/// pack's content is not checked against its name here.
pub fn pack_entries(path: &Path) -> Result<Vec<IndexEntry>> {
    let f = File::open(path).at(path)?;
    let len = f.metadata().at(path)?.len();
    let truncated = || corrupt(format!("{} is truncated", path.display()));
    let mut magic = [0u8; 8];
    f.read_exact_at(&mut magic, 0).map_err(|_| truncated())?;
    if &magic != pack::PACK_MAGIC {
        return Err(corrupt(format!("{} is not an aurum pack", path.display())));
    }
    let mut entries = Vec::new();
    let mut at = pack::PACK_MAGIC.len() as u64;
    let mut header = [0u8; pack::RECORD_HEADER];
    while at < len {
        f.read_exact_at(&mut header, at).map_err(|_| truncated())?;
        let (rid, codec, stored, raw) = pack::parse_record_header(&header)?;
        let offset = at + pack::RECORD_HEADER as u64;
        if offset + u64::from(stored) > len {
            return Err(truncated());
        }
        record_entries(&mut entries, (rid, codec, stored, raw), offset, || {
            let mut payload = vec![0u8; stored as usize];
            f.read_exact_at(&mut payload, offset).at(path)?;
            Ok(payload.into())
        })?;
        at = offset + u64::from(stored);
    }
    Ok(entries)
}

/// How many decompressed groups a reader keeps: two per thread (a delta reads the old
/// version of a file from one group and the new from another), at most 12 (96 MiB of 8 MiB
/// groups). Two in all made every thread of a delta precompute or a delta answer decompress
/// a whole group for each small file: 20,000 changed files took minutes instead of seconds
/// (issue #14). Two spare on top (six on two cores) held 17 MiB more in every checkout,
/// fresh root and precompute for no gain in time.
fn group_cache() -> usize {
    (2 * rayon::current_num_threads()).min(12)
}

/// A decompressed group of a pack, by pack and offset.
type Group = ((Id, u64), Arc<Vec<u8>>);

/// Reads blobs out of packs, keeping a few pack files open.
pub struct PackReader {
    repo: PathBuf,
    open: Mutex<HashMap<Id, Arc<File>>>,
    /// The groups decompressed last (most recent first): members are read one after the
    /// other, by a few threads at once.
    groups: Mutex<Vec<Group>>,
}

impl PackReader {
    pub fn new(repo: &Path) -> PackReader {
        PackReader {
            repo: repo.to_path_buf(),
            open: Mutex::new(HashMap::new()),
            groups: Mutex::new(Vec::new()),
        }
    }

    fn file(&self, pack: &Id) -> Result<Arc<File>> {
        let mut open = self.open.lock().expect("pack cache lock");
        if let Some(f) = open.get(pack) {
            return Ok(f.clone());
        }
        if open.len() >= 64 {
            open.clear();
        }
        let path = pack_path(&self.repo, pack, "pack");
        let f = Arc::new(File::open(&path).at(&path)?);
        open.insert(*pack, f.clone());
        Ok(f)
    }

    /// The stored payload of a blob, unverified (for serving and copying).
    pub fn read_payload(&self, pack: &Id, e: &IndexEntry) -> Result<Vec<u8>> {
        let f = self.file(pack)?;
        let mut buf = vec![0u8; e.stored_len as usize];
        f.read_exact_at(&mut buf, e.offset)
            .at(pack_path(&self.repo, pack, "pack"))?;
        Ok(buf)
    }

    /// Checks the blobs of one record (the members of a group, or a blob stored alone), all
    /// at `members[0].offset`, reading and decompressing it once and leaving the group cache
    /// alone: how verify reads every blob of a pack once in small memory. Returns the blobs
    /// that fail, with why.
    pub fn check_record(&self, pack: &Id, members: &[IndexEntry]) -> Vec<(Id, String)> {
        let Some(first) = members.first() else {
            return Vec::new();
        };
        let all_fail = |e: crate::Error| members.iter().map(|m| (m.id, e.to_string())).collect();
        let payload = match self.read_payload(pack, first) {
            Ok(p) => p,
            Err(e) => return all_fail(e),
        };
        let body = match first.codec {
            Codec::ZstdGroup => match decode_group_payload(&first.id, &payload) {
                Ok(body) => Some(body),
                Err(e) => return all_fail(e),
            },
            _ => None,
        };
        members
            .iter()
            .filter_map(|m| {
                let checked = match &body {
                    Some(body) => member(m, body).and_then(|raw| check(m, raw)),
                    None => decode_blob(m, &payload),
                };
                checked.err().map(|e| (m.id, e.to_string()))
            })
            .collect()
    }

    /// A blob's content, checked against its id.
    pub fn read(&self, pack: &Id, e: &IndexEntry) -> Result<Vec<u8>> {
        if e.codec != Codec::ZstdGroup {
            let payload = self.read_payload(pack, e)?;
            return decode_blob(e, &payload);
        }
        let key = (*pack, e.offset);
        let cached = {
            let g = self.groups.lock().expect("group cache lock");
            g.iter().find(|(k, _)| *k == key).map(|(_, b)| b.clone())
        };
        let body = match cached {
            Some(b) => b,
            None => {
                let payload = self.read_payload(pack, e)?;
                let b = Arc::new(decode_group_payload(&e.id, &payload)?);
                let mut g = self.groups.lock().expect("group cache lock");
                g.insert(0, (key, b.clone()));
                g.truncate(group_cache());
                b
            }
        };
        check(e, member(e, &body)?)
    }
}
