//! getimage: capturing a golden client into a new revision.
//!
//! The engine is the same for every kind of golden client; what differs is behind [`Source`]:
//! a local directory ([`LocalSource`]) or `aurum agent` on the far end of an ssh connection
//! ([`remote::RemoteSource`]). A capture runs in five steps:
//!
//! 1. scan the tree (entries, metadata, stat data);
//! 2. take each file's chunk list from the stat cache when its stat data is unchanged;
//! 3. hash the other files (a local source stores the blobs it finds missing on the way);
//! 4. fetch every chunk the repository still lacks and store it;
//! 5. only then write the manifest and record the revision.
//!
//! Step 5 comes strictly after every blob is durable and in the catalog, so a capture killed at
//! any moment leaves no revision that names a missing blob; the packs it did finish are adopted
//! by the next capture, which therefore resumes rather than starts over.

pub mod agent;
pub mod chroot;
pub mod embedded;
pub mod keep;
pub mod remote;
pub mod scan;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rayon::prelude::*;

use crate::catalog::{Revision, RevisionStats};
use crate::error::{invalid, IoContext, Result};
use crate::excludes::Excludes;
use crate::format::manifest::{
    decode_content, decode_xattrs, encode_content, encode_xattrs, Entry, Kind, Validator,
};
use crate::format::pack::Codec;
use crate::format::wire::Known;
use crate::format::wire::StatKey;
use crate::format::Id;
use crate::progress::Progress;
use crate::repo::{check_name, BlobWriter, Repository};
pub use crate::store::chunk::{file_chunks, Content, ExtentReader};
use crate::store::{compressible, group_blobs, PreparedGroup};
use scan::Scanned;

/// Member `inner..inner + len` of a group's body; a group whose table points past its body
/// is damaged (a received one was checked, member by member, already).
fn member(body: &[u8], inner: u32, len: u32) -> Result<&[u8]> {
    body.get(inner as usize..inner as usize + len as usize)
        .ok_or_else(|| crate::error::corrupt("a group's table points past its body"))
}

/// Where blobs go as a source finds them.
pub trait BlobSink: Sync {
    /// True exactly once for each blob that must be stored; the caller then calls `put`.
    fn claim(&self, id: &Id) -> Result<bool>;
    /// [`claim`](BlobSink::claim) for many blobs, in this order; the answers in the same order.
    fn claim_many(&self, ids: &[Id]) -> Result<Vec<bool>> {
        ids.iter().map(|id| self.claim(id)).collect()
    }
    /// Stores (or sends) a claimed blob, compressed by the caller.
    fn put(&self, id: &Id, codec: Codec, raw_len: u32, payload: &[u8]) -> Result<()>;
    /// Stores (or sends) a claimed compressible blob, raw: it is compressed with its neighbours.
    fn put_grouped(&self, id: &Id, raw: &[u8]) -> Result<()>;
    /// Stores a group received whole (see [`PreparedGroup::received`]): its members that
    /// are not claimed yet are claimed and stored.
    fn put_received(&self, group: PreparedGroup, body: &[u8]) -> Result<()> {
        for (id, len, inner) in &group.members {
            if self.claim(id)? {
                store(self, id, member(body, *inner, *len)?)?;
            }
        }
        Ok(())
    }

    /// The blobs the repository already has, for a remote agent to leave out.
    fn known(&self) -> Result<Known> {
        Ok(Known::default())
    }
    /// Stores claimed blobs, in this order.
    fn put_many(&self, blobs: Vec<(Id, Vec<u8>)>) -> Result<()> {
        for (id, data) in blobs {
            store(self, &id, &data)?;
        }
        Ok(())
    }
}

impl BlobSink for Mutex<BlobWriter> {
    fn claim(&self, id: &Id) -> Result<bool> {
        self.lock().expect("blob writer lock").claim(id)
    }
    fn claim_many(&self, ids: &[Id]) -> Result<Vec<bool>> {
        self.lock().expect("blob writer lock").claim_many(ids)
    }
    fn put(&self, id: &Id, codec: Codec, raw_len: u32, payload: &[u8]) -> Result<()> {
        self.lock()
            .expect("blob writer lock")
            .put(id, codec, raw_len, payload)
    }
    fn put_grouped(&self, id: &Id, raw: &[u8]) -> Result<()> {
        self.lock().expect("blob writer lock").put_grouped(id, raw)
    }

    /// Groups in order and compresses the groups in parallel, outside the lock, so that
    /// hashing threads can go on claiming blobs meanwhile.
    fn put_many(&self, blobs: Vec<(Id, Vec<u8>)>) -> Result<()> {
        let open = self
            .lock()
            .expect("blob writer lock")
            .begin_many(blobs.iter().map(|b| &b.0))?;
        let g = group_blobs(blobs, open)?;
        self.lock()
            .expect("blob writer lock")
            .end_many(g.raw, &g.groups, g.open)
    }

    fn known(&self) -> Result<Known> {
        self.lock().expect("blob writer lock").known()
    }

    /// Stores the whole group as it came when every member is new (the usual case: the
    /// agent sends only what the repository's filter does not know), else its new members.
    fn put_received(&self, group: PreparedGroup, body: &[u8]) -> Result<()> {
        let mut w = self.lock().expect("blob writer lock");
        let ids: Vec<Id> = group.members.iter().map(|m| m.0).collect();
        let new = w.claim_many(&ids)?;
        if new.iter().all(|&n| n) {
            let open = w.begin_many(ids.iter())?;
            return w.end_many(Vec::new(), &[group], open);
        }
        drop(w);
        for ((id, len, inner), new) in group.members.iter().zip(new) {
            if new {
                store(self, id, member(body, *inner, *len)?)?;
            }
        }
        Ok(())
    }
}

/// A golden client.
pub trait Source {
    /// How the revision records where it came from; also the stat cache's key.
    fn describe(&self) -> String;
    /// Hands the whole tree to `emit`, sorted; returns warnings for the administrator.
    /// A source that takes `lookup` asks the stat cache about each entry as it scans (see
    /// [`scan::walk`]), and [`Self::looks_up`] says so.
    fn scan<'e>(
        &mut self,
        progress: &dyn Progress,
        lookup: Option<&mut scan::Lookup<'e>>,
        emit: &mut scan::Emit<'e>,
    ) -> Result<Vec<String>>;
    /// Whether [`Self::scan`] uses the stat cache lookup it is given.
    fn looks_up(&self) -> bool {
        false
    }
    /// The tree's root on this machine, for a source that is a local directory: where the
    /// repositories it holds are read from to be recorded by reference ([`embedded`]).
    fn local_root(&self) -> Option<&Path> {
        None
    }
    /// How many entries [`getimage`] hashes, stores and writes out at a time (the memory a
    /// capture holds is about this many entries); `usize::MAX` for all at once, for a source
    /// whose file numbers must count from the start of the scan.
    fn batch_entries(&self) -> usize {
        usize::MAX
    }
    /// Content of the files at these indexes of the scan; blobs `sink` claims are stored now.
    /// `None` for a file that no longer exists (it vanished since the scan).
    fn hash(
        &mut self,
        files: &[usize],
        scanned: &[Scanned],
        sink: &dyn BlobSink,
        progress: &dyn Progress,
    ) -> Result<Vec<Option<Content>>>;
    /// Stores these (already claimed) chunks: (scan index, chunk numbers). Returns the scan
    /// indexes of the files that no longer exist, whose chunks were not stored.
    fn fetch(
        &mut self,
        wants: &[(usize, Vec<u32>)],
        scanned: &[Scanned],
        sink: &dyn BlobSink,
        progress: &dyn Progress,
    ) -> Result<Vec<usize>>;
}

/// A golden client that is a directory on this machine (a mounted root or a chroot).
pub struct LocalSource {
    root: PathBuf,
    fd: Option<OwnedFd>,
    excludes: Excludes,
}

impl LocalSource {
    pub fn new(root: &Path, excludes: Excludes) -> LocalSource {
        LocalSource {
            root: root.to_path_buf(),
            fd: None,
            excludes,
        }
    }

    fn root_fd(&mut self) -> Result<&OwnedFd> {
        if self.fd.is_none() {
            self.fd = Some(crate::sys::open_root(&self.root)?);
        }
        Ok(self.fd.as_ref().expect("set above"))
    }

    /// Cuts one file into chunks, handing each chunk to `each` (chunk number, id, bytes);
    /// `None` when the file is gone. Once open, a file is read to the end even if it is
    /// removed meanwhile; one that shrinks while read fails the capture, as before.
    fn read_chunks(
        dirs: &mut LastDir,
        shown_root: &Path,
        s: &Scanned,
        mut each: impl FnMut(u32, &Id, &[u8]) -> Result<()>,
    ) -> Result<Option<Content>> {
        let file = match dirs.open_file(&s.entry.path, shown_root) {
            Ok(f) => f,
            Err(e) if scan::is_vanished(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        file_chunks(file, s.stat.size, s.stat.maybe_sparse, &mut each)
            .map(Some)
            .map_err(|e| match e {
                crate::Error::Os(io) => crate::Error::Io {
                    path: crate::sys::shown(shown_root, &s.entry.path),
                    source: io,
                },
                other => other,
            })
    }
}

/// The directory a hashing worker opened last ([`crate::sys::LastDir`]): files come in tree
/// order (29,350 `openat` for the 6,660 entries of a Debian minbase root when each was opened
/// from the root).
struct LastDir<'a> {
    root: &'a OwnedFd,
    last: crate::sys::DirCache,
}

impl<'a> LastDir<'a> {
    fn new(root: &'a OwnedFd) -> LastDir<'a> {
        LastDir {
            root,
            last: crate::sys::DirCache::default(),
        }
    }

    fn open_file(&mut self, rel: &[u8], shown_root: &Path) -> Result<std::fs::File> {
        use std::os::fd::AsFd;
        self.last.open_file(self.root.as_fd(), rel, shown_root)
    }
}

/// Hands a claimed blob to the sink: grouped when compressible, else raw on its own.
pub fn store<S: BlobSink + ?Sized>(sink: &S, id: &Id, data: &[u8]) -> Result<()> {
    if compressible(data) {
        sink.put_grouped(id, data)
    } else {
        sink.put(id, Codec::Raw, data.len() as u32, data)
    }
}

/// Files hashed together before their new blobs are stored in order (bounds memory): up to
/// this many bytes, and this many files (a million files of a few bytes each made one batch
/// of a few hundred MiB of bookkeeping before).
const BATCH_BYTES: u64 = 8 << 20;
const BATCH_FILES: usize = 4096;
/// A file bigger than a batch is handed from its reader to storing this many bytes at a
/// time: a group's worth, compressed while the next piece is read.
const BIG_PIECE: u64 = crate::store::GROUP_TARGET as u64;

/// Entries of a local golden client captured at a time: a batch's entries, contents and stat
/// cache rows are what a capture holds in memory (some 10 MiB), whatever the tree's size.
const LOCAL_BATCH: usize = 8_192;

impl Source for LocalSource {
    fn describe(&self) -> String {
        let abs = std::fs::canonicalize(&self.root).unwrap_or_else(|_| self.root.clone());
        format!("local:{}", abs.display())
    }

    fn scan<'e>(
        &mut self,
        progress: &dyn Progress,
        lookup: Option<&mut scan::Lookup<'e>>,
        emit: &mut scan::Emit<'e>,
    ) -> Result<Vec<String>> {
        scan::walk(&self.root, &self.excludes, progress, lookup, emit)
    }

    fn looks_up(&self) -> bool {
        true
    }

    fn local_root(&self) -> Option<&Path> {
        Some(&self.root)
    }

    fn batch_entries(&self) -> usize {
        LOCAL_BATCH
    }

    fn hash(
        &mut self,
        files: &[usize],
        scanned: &[Scanned],
        sink: &dyn BlobSink,
        progress: &dyn Progress,
    ) -> Result<Vec<Option<Content>>> {
        let shown_root = self.root.clone();
        let root = self.root_fd()?;
        let total: u64 = files.iter().map(|&i| scanned[i].stat.size).sum();
        progress.phase("hashing", Some(total), true);
        // Files are hashed in parallel a batch at a time, and each batch's new blobs are then
        // stored in tree order (while the next batch is hashed), so that similar neighbours
        // share groups and a pack reads sequentially at install.
        // Workers keep every chunk they cut, and the batch's chunks are claimed afterwards,
        // in tree order and with one read of the catalog: claiming each chunk as it was cut
        // took the writer's lock and an SQLite query per chunk (10,788 `fcntl` locks and most
        // of the futex waits of a capture of a Debian minbase root), and let the worker that
        // got there first decide where a chunk shared by two files of a batch was stored.
        let hash_batch = |batch: &[usize]| {
            batch
                .par_iter()
                .map_init(
                    || LastDir::new(root),
                    |dirs, &i| {
                        let mut cut = Vec::new();
                        let c =
                            Self::read_chunks(dirs, &shown_root, &scanned[i], |_, id, data| {
                                progress.advance(data.len() as u64);
                                cut.push((*id, data.to_vec()));
                                Ok(())
                            })?;
                        Ok((c, cut))
                    },
                )
                .collect::<Result<Vec<_>>>()
        };
        type Hashed = (Option<Content>, Vec<(Id, Vec<u8>)>);
        let store_blobs = |blobs: Vec<(Id, Vec<u8>)>| -> Result<()> {
            let new = sink.claim_many(&blobs.iter().map(|b| b.0).collect::<Vec<_>>())?;
            let blobs = blobs
                .into_iter()
                .zip(new)
                .filter_map(|(b, new)| new.then_some(b))
                .collect();
            sink.put_many(blobs)
        };
        let store_batch = |results: Vec<Hashed>| -> Result<Vec<Option<Content>>> {
            let mut contents = Vec::with_capacity(results.len());
            let mut blobs = Vec::new();
            for (c, cut) in results {
                blobs.extend(cut);
                contents.push(c);
            }
            store_blobs(blobs)?;
            Ok(contents)
        };
        let mut out = Vec::with_capacity(files.len());
        let mut hashed = Vec::new();
        let mut rest = files;
        loop {
            let mut n = 0;
            let mut bytes = 0;
            // A file bigger than a batch gets a batch of its own (below), never the end of one;
            // a batch is at most BATCH_BYTES (it could reach twice that when its last file was
            // let in below the mark: two batches in flight held 32 MiB, issue 14).
            while n < rest.len()
                && (n == 0
                    || (bytes + scanned[rest[n]].stat.size <= BATCH_BYTES && n < BATCH_FILES))
            {
                bytes += scanned[rest[n]].stat.size;
                n += 1;
            }
            let (batch, tail) = rest.split_at(n);
            rest = tail;
            if let [big] = batch {
                if scanned[*big].stat.size > BATCH_BYTES {
                    // A file bigger than a batch is stored as it is read, so memory stays
                    // bounded whatever its size; the batch before it goes first, in order.
                    // One thread reads and hashes it, handing its chunks on BIG_PIECE bytes
                    // at a time; this one claims and stores them, compressing the piece's
                    // groups on rayon's threads while the next piece is read (a big file was
                    // read, hashed and compressed on one thread before, issue 14).
                    out.extend(store_batch(std::mem::take(&mut hashed))?);
                    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<(Id, Vec<u8>)>>(0);
                    let c = std::thread::scope(|scope| {
                        let reader = scope.spawn(|| {
                            let tx = tx;
                            let mut dirs = LastDir::new(root);
                            let mut piece = Vec::new();
                            let mut bytes = 0;
                            let c = Self::read_chunks(
                                &mut dirs,
                                &shown_root,
                                &scanned[*big],
                                |_, id, data| {
                                    progress.advance(data.len() as u64);
                                    piece.push((*id, data.to_vec()));
                                    bytes += data.len() as u64;
                                    if bytes >= BIG_PIECE {
                                        bytes = 0;
                                        // The storer gone means it failed: its error is told.
                                        tx.send(std::mem::take(&mut piece))
                                            .map_err(|_| invalid("the capture stopped"))?;
                                    }
                                    Ok(())
                                },
                            )?;
                            if !piece.is_empty() {
                                tx.send(piece).map_err(|_| invalid("the capture stopped"))?;
                            }
                            Ok(c)
                        });
                        let stored = rx.iter().try_for_each(&store_blobs);
                        drop(rx);
                        let read: Result<Option<Content>> =
                            reader.join().expect("a capture's reading thread panicked");
                        stored.and(read)
                    })?;
                    out.push(c);
                    continue;
                }
            }
            let (stored, next) = rayon::join(|| store_batch(hashed), || hash_batch(batch));
            out.extend(stored?);
            hashed = next?;
            if batch.is_empty() {
                break;
            }
        }
        progress.finish();
        Ok(out)
    }

    fn fetch(
        &mut self,
        wants: &[(usize, Vec<u32>)],
        scanned: &[Scanned],
        sink: &dyn BlobSink,
        progress: &dyn Progress,
    ) -> Result<Vec<usize>> {
        let shown_root = self.root.clone();
        let root = self.root_fd()?;
        progress.phase("storing", Some(wants.len() as u64), false);
        let r = wants
            .par_iter()
            .map_init(
                || LastDir::new(root),
                |dirs, (i, numbers)| {
                    let s = &scanned[*i];
                    let c = Self::read_chunks(dirs, &shown_root, s, |n, id, data| {
                        if numbers.contains(&n) {
                            store(sink, id, data)?;
                        }
                        Ok(())
                    })?;
                    progress.advance(1);
                    Ok(c.is_none().then_some(*i))
                },
            )
            .collect::<Result<Vec<_>>>();
        progress.finish();
        Ok(r?.into_iter().flatten().collect())
    }
}

/// For each file with content, the numbers of its chunks that are claimed and not stored yet,
/// each chunk asked of one file only.
fn missing_chunks(
    contents: &[Option<Content>],
    gone: &[bool],
    pending: &std::collections::HashSet<Id>,
) -> Vec<(usize, Vec<u32>)> {
    let mut asked = std::collections::HashSet::new();
    let mut wants = Vec::new();
    if pending.is_empty() {
        return wants;
    }
    for (i, c) in contents.iter().enumerate() {
        let Some(c) = c.as_ref().filter(|_| !gone[i]) else {
            continue;
        };
        let numbers: Vec<u32> = (0u32..)
            .zip(&c.chunks)
            .filter(|(_, chunk)| pending.contains(&chunk.id) && asked.insert(chunk.id))
            .map(|(n, _)| n)
            .collect();
        if !numbers.is_empty() {
            wants.push((i, numbers));
        }
    }
    wants
}

/// Hardlink groups whose content-carrying name vanished during the capture: the group's next
/// name (in path order, in this batch or a later one) becomes a plain file and carries the
/// content, and the others point at it.
#[derive(Default)]
struct Heirs {
    /// Vanished first name -> the name that took over, once one did.
    heirs: std::collections::HashMap<Vec<u8>, Option<Vec<u8>>>,
}

impl Heirs {
    fn vanished(&mut self, path: &[u8]) {
        self.heirs.insert(path.to_vec(), None);
    }

    /// Points this batch's hardlinks to vanished names at their heirs; returns the entries
    /// made plain files, which still need reading.
    fn adopt(&mut self, batch: &mut [Scanned], gone: &[bool]) -> Vec<usize> {
        let mut promoted = Vec::new();
        if self.heirs.is_empty() {
            return promoted;
        }
        for (i, s) in batch.iter_mut().enumerate() {
            let Kind::Hardlink { target } = &s.entry.kind else {
                continue;
            };
            if gone[i] {
                continue;
            }
            let Some(heir) = self.heirs.get_mut(target) else {
                continue;
            };
            s.entry.kind = match heir {
                Some(path) => Kind::Hardlink {
                    target: path.clone(),
                },
                None => {
                    *heir = Some(s.entry.path.clone());
                    promoted.push(i);
                    Kind::File {
                        size: s.stat.size,
                        chunks: Vec::new(),
                        extents: None,
                    }
                }
            };
        }
        promoted
    }
}

/// The scan, spooled to an unnamed file in the repository's `tmp/` (gone with the process,
/// however it ends) and read back a batch at a time: the tree is never in memory whole.
struct Spool {
    out: std::io::BufWriter<std::fs::File>,
    entries: u64,
    file_bytes: u64,
    /// Which entries the stat cache vouched for, a bit each (125 KiB for a million).
    vouched: Vec<u64>,
}

impl Spool {
    fn new(repo: &Repository) -> Result<Spool> {
        let tmp = crate::store::tmp_dir(&repo.root);
        let file = tempfile::tempfile_in(&tmp).at(&tmp)?;
        Ok(Spool {
            out: std::io::BufWriter::with_capacity(1 << 20, file),
            entries: 0,
            file_bytes: 0,
            vouched: Vec::new(),
        })
    }

    fn push(&mut self, s: Scanned) -> Result<()> {
        if matches!(s.entry.kind, Kind::File { .. }) {
            self.file_bytes += s.stat.size;
        }
        let (word, bit) = ((self.entries / 64) as usize, self.entries % 64);
        if word == self.vouched.len() {
            self.vouched.push(0);
        }
        self.vouched[word] |= u64::from(s.vouched) << bit;
        self.entries += 1;
        crate::format::wire::send(
            &mut self.out,
            &crate::format::wire::Msg::Entry {
                entry: s.entry,
                stat: s.stat,
            },
        )
    }

    fn read(self) -> Result<SpoolReader> {
        use std::io::Seek;
        let mut file = self
            .out
            .into_inner()
            .map_err(|e| crate::Error::Os(e.into_error()))?;
        file.rewind()?;
        Ok(SpoolReader {
            input: std::io::BufReader::with_capacity(1 << 20, file),
            vouched: self.vouched,
            next: 0,
        })
    }
}

struct SpoolReader {
    input: std::io::BufReader<std::fs::File>,
    vouched: Vec<u64>,
    /// The number of the next entry.
    next: u64,
}

impl SpoolReader {
    /// The next `n` entries (fewer at the end, none after it).
    fn batch(&mut self, n: usize) -> Result<Vec<Scanned>> {
        let mut out = Vec::with_capacity(n.min(LOCAL_BATCH));
        while out.len() < n {
            match crate::format::wire::recv(&mut self.input)? {
                Some(crate::format::wire::Msg::Entry { entry, stat }) => {
                    let (word, bit) = ((self.next / 64) as usize, self.next % 64);
                    let vouched = self.vouched.get(word).is_some_and(|w| w >> bit & 1 == 1);
                    self.next += 1;
                    out.push(Scanned {
                        entry,
                        stat,
                        vouched,
                    })
                }
                Some(_) => {
                    return Err(crate::error::corrupt("the capture's scan spool is damaged"))
                }
                None => break,
            }
        }
        Ok(out)
    }
}

/// One progress bar for the whole capture after the scan: batches hash, store and fetch in
/// turn, and each would otherwise start a bar of its own.
struct OneBar<'a>(&'a dyn Progress);

impl Progress for OneBar<'_> {
    fn phase(&self, _: &str, _: Option<u64>, _: bool) {}
    fn advance(&self, n: u64) {
        self.0.advance(n)
    }
    fn finish(&self) {}
    fn note(&self, note: &str) {
        self.0.note(note)
    }
}

/// What the batches of a capture add up to.
#[derive(Default)]
struct Counts {
    files: u64,
    bytes: u64,
    bytes_hashed: u64,
    hashed: u64,
    from_cache: u64,
    /// Entries whose stat cache row the capture keeps as it is.
    kept: u64,
}

/// Where a capture's entries go: straight into the manifest, or (an edit, whose kept parent
/// paths are spliced in at the end) held until the end.
enum ManifestOut {
    Stream(Box<(crate::format::manifest::ManifestWriter, Validator)>),
    Held(Vec<Entry>),
}

/// What getimage was asked to do.
pub struct CaptureOptions {
    pub image: String,
    pub message: String,
    /// Set when the capture edits an existing revision (`aurum chroot`) instead of reading a
    /// golden client.
    pub edit: Option<Edit>,
    /// Record the aurum repositories the tree holds by reference ([`embedded`]); `false`
    /// (`--no-embedded-repos`) captures them as plain files.
    pub embedded_repos: bool,
}

/// A capture of a work tree made from an existing revision.
pub struct Edit {
    /// The revision edited: recorded as the parent (rather than the image's newest), and a
    /// tree identical to it records nothing.
    pub parent: Revision,
    /// What the new revision records as its source, e.g. `chroot:compute@3`. A work tree is
    /// new every time, so an edit neither reads nor fills the stat cache.
    pub source: String,
    /// Paths taken from the parent as it has them (the scan must leave them out).
    pub keep: keep::Keep,
}

/// What a capture did, for its summary line.
#[derive(Debug)]
pub struct CaptureReport {
    pub revision: Revision,
    /// True when the tree is identical to the image's newest revision (nothing recorded).
    pub unchanged: bool,
    pub entries: u64,
    pub files: u64,
    pub bytes: u64,
    pub bytes_hashed: u64,
    pub from_cache: u64,
    pub new_bytes: u64,
    pub adopted_packs: usize,
    /// The repositories found in the tree and recorded by reference.
    pub embedded: Vec<embedded::Embedded>,
    pub warnings: Vec<String>,
    pub elapsed: Duration,
}

/// What one batch of the scan holds once captured: each entry's content (files), and which
/// entries vanished on the way and are left out.
struct Captured {
    contents: Vec<Option<Content>>,
    gone: Vec<bool>,
}

/// Steps 2 to 4 for one batch: the stat cache, hashing, fetching what is still missing.
#[allow(clippy::too_many_arguments)]
fn capture_batch(
    repo: &Repository,
    source: &mut dyn Source,
    sink: &Mutex<BlobWriter>,
    describe: &str,
    use_cache: bool,
    looked_up: bool,
    batch: &mut [Scanned],
    heirs: &mut Heirs,
    warnings: &mut Vec<String>,
    counts: &mut Counts,
    progress: &dyn Progress,
) -> Result<Captured> {
    let n = batch.len();
    let mut contents: Vec<Option<Content>> = vec![None; n];
    let mut gone = vec![false; n];
    // Names of hardlink groups whose first name vanished in an earlier batch.
    let mut to_hash = heirs.adopt(batch, &gone);
    let mut files: Vec<usize> = (0..n)
        .filter(|&i| matches!(batch[i].entry.kind, Kind::File { .. }) && !to_hash.contains(&i))
        .collect();
    // A scan that asked the stat cache left the content it vouched for in the entry: the
    // chunks cover the file's data (a file it did not know has none yet).
    if looked_up {
        files.retain(|&i| {
            let Kind::File {
                size,
                chunks,
                extents,
            } = &mut batch[i].entry.kind
            else {
                return true;
            };
            // An empty file the cache did not vouch for is read like any other (it may have
            // vanished since the scan).
            if !scan::covers(*size, chunks, extents.as_deref())
                || (chunks.is_empty() && !batch[i].vouched)
            {
                return true;
            }
            contents[i] = Some(Content {
                chunks: std::mem::take(chunks),
                extents: extents.take(),
            });
            counts.from_cache += 1;
            progress.advance(batch[i].stat.size);
            false
        });
    }
    let cached = if use_cache && !looked_up {
        repo.catalog.statcache_lookup(
            describe,
            files
                .iter()
                .map(|&i| (batch[i].entry.path.as_slice(), &batch[i].stat)),
        )?
    } else {
        vec![None; files.len()]
    };
    for (&i, cached) in files.iter().zip(cached) {
        match cached.map(|(bytes, _)| decode_content(&bytes)) {
            Some(Ok((chunks, extents))) => {
                contents[i] = Some(Content { chunks, extents });
                counts.from_cache += 1;
                progress.advance(batch[i].stat.size);
            }
            _ => to_hash.push(i),
        }
    }
    to_hash.sort_unstable();
    counts.hashed += to_hash.len() as u64;
    counts.bytes_hashed += to_hash.iter().map(|&i| batch[i].stat.size).sum::<u64>();

    // Hash what the cache cannot vouch for, then fetch every chunk still missing (remote
    // sources, or blobs gc removed since caching). A file that vanishes on the way is left
    // out; when it carried the content of a hardlink group, the next name of the group takes
    // over and is read in another round, and chunks only it had are let go.
    let mut considered = vec![false; n];
    let mut pending_hash = to_hash;
    loop {
        let mut vanished = Vec::new();
        if !pending_hash.is_empty() {
            let hashed = source.hash(&pending_hash, batch, sink, progress)?;
            for (&i, c) in pending_hash.iter().zip(hashed) {
                match c {
                    Some(c) => contents[i] = Some(c),
                    None => vanished.push(i),
                }
            }
        }
        for &i in &vanished {
            gone[i] = true;
        }
        let wants = {
            let mut w = sink.lock().expect("blob writer lock");
            let fresh: Vec<usize> = (0..n)
                .filter(|&i| !considered[i] && !gone[i] && contents[i].is_some())
                .collect();
            let ids = fresh
                .iter()
                .flat_map(|&i| &contents[i].as_ref().expect("some").chunks);
            w.claim_many(ids.map(|ch| &ch.id))?;
            for &i in &fresh {
                considered[i] = true;
            }
            if gone.iter().any(|&g| g) {
                // Every earlier batch left nothing pending: what is pending is this batch's.
                let live: std::collections::HashSet<Id> = (0..n)
                    .filter(|&i| !gone[i])
                    .filter_map(|i| contents[i].as_ref())
                    .flat_map(|c| c.chunks.iter().map(|ch| ch.id))
                    .collect();
                w.release(|id| live.contains(id));
            }
            missing_chunks(&contents, &gone, w.pending())
        };
        if !wants.is_empty() {
            vanished.extend(source.fetch(&wants, batch, sink, progress)?);
        }
        for &i in &vanished {
            gone[i] = true;
            contents[i] = None;
            warnings.push(scan::vanished(&batch[i].entry.path));
            if matches!(batch[i].entry.kind, Kind::File { .. }) {
                heirs.vanished(&batch[i].entry.path);
            }
        }
        pending_hash = heirs.adopt(batch, &gone);
        if vanished.is_empty() {
            break;
        }
    }
    Ok(Captured { contents, gone })
}

/// Captures `source` as a new revision of `opts.image`.
///
/// Memory stays flat whatever the tree's size: the scan is spooled to a file, and read back a
/// batch at a time ([`Source::batch_entries`]); each batch is looked up in the stat cache,
/// hashed, stored, and written to the streaming manifest before the next is read.
pub fn getimage(
    repo: &mut Repository,
    source: &mut dyn Source,
    opts: &CaptureOptions,
    progress: &dyn Progress,
) -> Result<CaptureReport> {
    let started = Instant::now();
    let started_ns = crate::catalog::now() * 1_000_000_000;
    check_name("image", &opts.image)?;
    let adopted_packs = repo.adopt_orphan_packs()?;
    let describe = match &opts.edit {
        Some(edit) => edit.source.clone(),
        None => source.describe(),
    };

    // Step 1: the scan, spooled; the repositories in a local tree recorded as it passes
    // (their catalog snapshots' blobs durable before the scan ends).
    let mut spool = Spool::new(repo)?;
    let root = source.local_root().filter(|_| opts.embedded_repos);
    let mut finder = root.map(embedded::Finder::new);
    // A remote tree's repositories go in as files: the administrator is told.
    let mut unrecorded = (root.is_none() && opts.embedded_repos && opts.edit.is_none())
        .then(embedded::Unrecorded::default);
    let snapshots = Mutex::new(repo.blob_writer()?);
    // A local tree asks the stat cache as it scans, so that what it vouches for is neither
    // read nor has its xattrs listed again; `vouched` stays true while it vouched for all.
    let use_cache = opts.edit.is_none();
    let vouched = std::sync::atomic::AtomicBool::new(true);
    let looked_up = use_cache && source.looks_up();
    let catalog = if looked_up {
        Some(repo.catalog_snapshot()?)
    } else {
        None
    };
    let (describe_, vouched_) = (&describe, &vouched);
    let mut ask = move |asked: &[(&[u8], &StatKey)]| -> Result<Vec<Option<scan::Cached>>> {
        let Some(catalog) = &catalog else {
            return Ok(vec![None; asked.len()]);
        };
        let rows = catalog.statcache_lookup(describe_, asked.iter().copied())?;
        let out: Vec<Option<scan::Cached>> = rows
            .into_iter()
            .map(|row| {
                row.map(|(content, xattrs)| scan::Cached {
                    content: decode_content(&content).ok(),
                    xattrs: xattrs.and_then(|x| decode_xattrs(&x).ok()),
                })
            })
            .collect();
        if out
            .iter()
            .any(|c| c.as_ref().is_none_or(|c| c.xattrs.is_none()))
        {
            vouched_.store(false, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(out)
    };
    let lookup: Option<&mut scan::Lookup> = if looked_up { Some(&mut ask) } else { None };
    let mut warnings = source.scan(progress, lookup, &mut |s| {
        let s = match &mut finder {
            Some(f) => f.take(repo, &snapshots, s)?,
            None => {
                if let Some(u) = &mut unrecorded {
                    u.see(&s.entry);
                }
                Some(s)
            }
        };
        s.map_or(Ok(()), |s| spool.push(s))
    })?;
    // The stat cache snapshot is let go before anything is written.
    drop(ask);
    warnings.extend(unrecorded.map(|u| u.warnings()).unwrap_or_default());
    let mut snapshots = snapshots.into_inner().expect("blob writer lock");
    snapshots.finish()?;
    let embedded = finder.map(|f| f.embedded).unwrap_or_default();
    let embedded_bytes =
        snapshots.new_bytes() + embedded.iter().map(|e| e.taken_in.bytes_added).sum::<u64>();
    if spool.entries == 0 {
        return Err(invalid("the golden client's tree is empty"));
    }
    progress.phase("capturing", Some(spool.file_bytes), true);
    let bar = OneBar(progress);
    let mut batches = spool.read()?;

    // Steps 2 to 4, a batch at a time; each batch's entries go to the manifest at once.
    // A work tree is new every time, so an edit neither reads nor fills the stat cache.
    if use_cache {
        repo.catalog.statcache_stage_begin()?;
    }
    let sink = Mutex::new(repo.blob_writer()?);
    let mut out = match &opts.edit {
        Some(_) => ManifestOut::Held(Vec::new()),
        None => {
            // The manifest of the last capture of this tree (else the image's newest): an
            // unchanged tree then compresses and writes no manifest at all.
            let base = match repo.catalog.newest_from_source(&describe)? {
                Some(rev) => Some(rev),
                None => repo.catalog.newest(&opts.image)?,
            };
            let writer = repo.manifest_writer_like(base.as_ref().map(|b| &b.id))?;
            ManifestOut::Stream(Box::new((writer, Validator::default())))
        }
    };
    let mut heirs = Heirs::default();
    let mut counts = Counts::default();
    let batch_entries = source.batch_entries().max(1);
    loop {
        let mut batch = batches.batch(batch_entries)?;
        if batch.is_empty() {
            break;
        }
        let Captured { contents, gone } = capture_batch(
            repo,
            source,
            &sink,
            &describe,
            use_cache,
            looked_up,
            &mut batch,
            &mut heirs,
            &mut warnings,
            &mut counts,
            &bar,
        )?;
        let mut cache_rows = Vec::new();
        for ((mut s, c), gone) in batch.into_iter().zip(contents).zip(gone) {
            if gone {
                continue;
            }
            // Entries touched in the last seconds may change again within the same
            // timestamp; caching them could vouch for content or xattrs we never read.
            let racy = s.stat.mtime_ns >= started_ns - 2_000_000_000
                || s.stat.ctime_ns >= started_ns - 2_000_000_000;
            // A row the stat cache vouched for stays as it is (it is what would be written);
            // a racy entry's old row goes.
            let cache = !racy && use_cache && !s.vouched;
            // (A racy entry's row goes even when vouched for: it is not kept.)
            if use_cache && s.vouched && !racy {
                counts.kept += 1;
            }
            if use_cache && racy {
                cache_rows.push((s.entry.path.clone(), s.stat, None));
            }
            let mut content = Vec::new();
            if let Kind::File {
                chunks, extents, ..
            } = &mut s.entry.kind
            {
                let c = c.ok_or_else(|| invalid("a file of the capture has no content"))?;
                counts.files += 1;
                counts.bytes += s.stat.size;
                if cache {
                    content = encode_content(&c.chunks, c.extents.as_deref());
                }
                *chunks = c.chunks;
                *extents = c.extents;
            }
            if cache {
                cache_rows.push((
                    s.entry.path.clone(),
                    s.stat,
                    Some((content, encode_xattrs(&s.entry.xattrs))),
                ));
            }
            match &mut out {
                ManifestOut::Stream(stream) => {
                    let (manifest, check) = &mut **stream;
                    check.check(&s.entry)?;
                    manifest.push(&s.entry)?;
                }
                ManifestOut::Held(all) => all.push(s.entry),
            }
        }
        if use_cache {
            repo.catalog.statcache_stage(&describe, &cache_rows)?;
        }
    }
    progress.finish();
    let mut sink = sink.into_inner().expect("blob writer lock");
    sink.finish()?;

    // Step 5: the manifest, then the revision.
    let manifest = match out {
        ManifestOut::Stream(stream) => stream.0,
        ManifestOut::Held(all) => {
            let edit = opts.edit.as_ref().expect("held only for an edit");
            let mut manifest = repo.manifest_writer()?;
            let mut check = Validator::default();
            for e in keep::splice(all, &edit.keep, &mut warnings) {
                check.check(&e)?;
                manifest.push(&e)?;
            }
            manifest
        }
    };
    let entries = manifest.count();
    let id = repo.store_manifest_from(manifest)?;
    let stats = RevisionStats {
        files: counts.files,
        bytes: counts.bytes,
        new_bytes: sink.new_bytes() + embedded_bytes,
    };
    let base = match &opts.edit {
        Some(edit) => Some(edit.parent.clone()),
        None => repo.catalog.newest(&opts.image)?,
    };
    let (revision, unchanged) = match base {
        Some(rev) if rev.id == id => (rev, true),
        base => (
            repo.commit_child(
                &opts.image,
                base.map(|b| b.id).as_ref(),
                &id,
                &opts.message,
                &describe,
                &stats,
            )?,
            false,
        ),
    };
    // An unchanged tree read wholly from the cache leaves the cache as it was: rewriting its
    // rows would be most of the cost of an unchanged re-capture.
    if use_cache {
        let vouched = vouched.load(std::sync::atomic::Ordering::Relaxed);
        if unchanged && counts.hashed == 0 && (vouched || !looked_up) {
            repo.catalog.statcache_discard()?;
        } else {
            // Rows of paths gone from the tree are found by their count, and then pruned by
            // the paths of the manifest just written.
            if repo.catalog.statcache_commit(&describe, counts.kept)? {
                let paths = repo
                    .manifest_entries(&revision.id)?
                    .map(|e| e.map(|e| e.path));
                repo.catalog.statcache_prune(&describe, paths)?;
            }
        }
    }
    Ok(CaptureReport {
        revision,
        unchanged,
        entries,
        files: counts.files,
        bytes: counts.bytes,
        bytes_hashed: counts.bytes_hashed,
        from_cache: counts.from_cache,
        new_bytes: sink.new_bytes() + embedded_bytes,
        adopted_packs,
        embedded,
        warnings,
        elapsed: started.elapsed(),
    })
}
