//! Manifests read and written one entry at a time, so that no command needs a whole image's
//! entry list in memory (a million entries decode to several hundred MiB).
//!
//! The bytes are those of [`Manifest::encode`](super::Manifest::encode): a reader yields each
//! entry as soon as it is decoded and checked, and a writer takes entries in path order.
//!
//! **Reading.** [`Entries`] pulls the decompressed bytes through a small buffer (64 KiB, grown
//! only for an entry larger than that), decodes one entry, and checks it with a [`Validator`]
//! before handing it out, so a consumer never sees an entry the whole-manifest decoder would
//! refuse. The hash of a manifest file is computed over the bytes as they pass, and checked when
//! the last entry has been read: a consumer that writes as it reads (checkout) sees a damaged
//! file as an error at the end, after entries that were each valid on their own.
//! [`Manifest::decode`](super::Manifest::decode) is this same reader over a byte slice, so the
//! two refuse exactly the same inputs with the same messages.
//!
//! **Validating in bounded memory.** Sorted order needs the previous path only. "The parent is a
//! directory" and "a hardlink names an earlier non-directory" need the paths seen so far: they
//! are kept as 64-bit hashes keyed at random per reader (SipHash-1-3, as std's hash maps) in a
//! [`KeySet`](crate::keyset::KeySet), about 9 bytes per entry (9 MiB for a million entries),
//! rather than the paths themselves. An attacker who does not know the key cannot aim a collision; and a hardlink
//! target must in any case be a clean path sorting before the link, so even a chance collision
//! could only name a path inside the tree (the link call then fails).
//!
//! **Writing.** The encoding starts with the entry count, which a capture knows only at the end.
//! [`ManifestWriter`] therefore compresses the entries into a spill file as they come, and
//! [`ManifestWriter::finish`] writes the header as a zstd frame of its own followed by the
//! spilled frames (zstd readers read concatenated frames as one stream), after one pass over
//! the spill to hash header and entries in order: the id is that of the same bytes
//! `Manifest::encode` would produce, so streaming changed no revision id.

use std::collections::hash_map::RandomState;
use std::fs::File;
use std::hash::BuildHasher;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};

use super::{decode_entry, display_path, encode_entry, is_clean_path, parent, Entry, Kind};
use super::{magic, MAGIC, MAGIC_V2, MAX_FILE};
use crate::error::{corrupt, invalid, Result};
use crate::format::{Id, StreamReader, Writer};

type Seen = crate::keyset::KeySet;

/// Checks the invariants that make a manifest safe to apply, one entry at a time in path
/// order (see the module doc for what it keeps).
pub struct Validator {
    prev: Option<Vec<u8>>,
    keys: RandomState,
    dirs: Seen,
    linkable: Seen,
    /// The parent directory the last entry was found under: most entries share their
    /// neighbour's, which is then not looked up again (the sets only grow).
    last_parent: Option<Vec<u8>>,
}

impl Default for Validator {
    fn default() -> Self {
        Validator {
            prev: None,
            keys: RandomState::new(),
            dirs: Seen::default(),
            linkable: Seen::default(),
            last_parent: None,
        }
    }
}

impl Validator {
    fn key(&self, path: &[u8]) -> u64 {
        self.keys.hash_one(path)
    }

    /// Checks `e`, the entry after every entry checked so far.
    pub fn check(&mut self, e: &Entry) -> Result<()> {
        let p = e.path.as_slice();
        // Only an error shows the path (escaping it ahead cost every entry an allocation).
        let shown = || e.display();
        if !is_clean_path(p) {
            return Err(corrupt(format!(
                "manifest path {} is not a clean relative path; refusing it",
                shown()
            )));
        }
        match &self.prev {
            Some(q) if q.as_slice() >= p => {
                return Err(corrupt(format!("manifest is not sorted at {}", shown())));
            }
            Some(_) => {}
            None if !p.is_empty() || e.kind != Kind::Dir => {
                return Err(corrupt("manifest does not start with the root directory"));
            }
            None => {}
        }
        if !p.is_empty() && self.last_parent.as_deref() != Some(parent(p)) {
            if !self.dirs.contains(self.key(parent(p))) {
                return Err(corrupt(format!(
                    "manifest entry {} lies under something that is not a directory; refusing it",
                    shown()
                )));
            }
            let last = self.last_parent.get_or_insert_with(Vec::new);
            last.clear();
            last.extend_from_slice(parent(p));
        }
        let key = self.key(p);
        match &e.kind {
            Kind::Dir => {
                self.dirs.insert(key);
            }
            Kind::Hardlink { target } => {
                let t = target.as_slice();
                if !(t < p && is_clean_path(t) && self.linkable.contains(self.key(t))) {
                    return Err(corrupt(format!(
                        "hardlink {} points at {}, which is not an earlier file",
                        shown(),
                        display_path(target)
                    )));
                }
            }
            Kind::File { size, extents, .. } => {
                check_content(e, *size, extents.as_deref())?;
                self.linkable.insert(key);
            }
            _ => {
                self.linkable.insert(key);
            }
        }
        let prev = self.prev.get_or_insert_with(Vec::new);
        prev.clear();
        prev.extend_from_slice(p);
        Ok(())
    }
}

/// A file's sparse map lies in order within its size, and its chunks cover exactly its data.
fn check_content(e: &Entry, size: u64, extents: Option<&[(u64, u64)]>) -> Result<()> {
    let covered = match extents {
        None => size,
        Some(ext) => {
            let mut end = 0u64;
            let mut sum = 0u64;
            for &(off, len) in ext {
                if off < end || off.saturating_add(len) > size || len == 0 {
                    return Err(corrupt(format!(
                        "sparse map of {} is out of order or out of bounds",
                        e.display()
                    )));
                }
                end = off + len;
                sum += len;
            }
            sum
        }
    };
    if covered != e.data_len() {
        return Err(corrupt(format!(
            "chunks of {} do not add up to its size",
            e.display()
        )));
    }
    Ok(())
}

/// The source of a manifest file's entries: its zstd frames, decompressed.
pub type FileSource<R> = std::io::Take<zstd::stream::read::Decoder<'static, std::io::BufReader<R>>>;

/// The entries of an encoded manifest, decoded and checked one at a time (an iterator; the
/// first error ends it).
pub struct Entries<R> {
    src: StreamReader<R>,
    /// Entries the header announced and not read yet.
    left: u64,
    check: Validator,
    /// For a manifest file: the id its bytes must hash to.
    id: Option<Id>,
    done: bool,
}

impl<'a> Entries<&'a [u8]> {
    /// The entries of the encoded (uncompressed) manifest `raw`.
    pub fn of_bytes(raw: &'a [u8]) -> Result<Self> {
        Entries::start(
            StreamReader::new(raw, "manifest", "manifest".into(), false),
            None,
        )
    }
}

impl<R: Read> Entries<FileSource<R>> {
    /// The entries of a manifest file (zstd frames), whose encoded bytes must hash to `id`.
    pub fn of_file(packed: R, id: &Id) -> Result<Self> {
        let dec = zstd::stream::read::Decoder::new(packed).map_err(|e| damaged(id, &e))?;
        let label = format!("manifest {}", id.short());
        let src = StreamReader::new(dec.take(MAX_FILE), "manifest", label, true);
        Entries::start(src, Some(*id))
    }
}

fn damaged(id: &Id, problem: &dyn std::fmt::Display) -> crate::Error {
    corrupt(format!(
        "manifest {} is damaged ({problem}); run `aurum verify`",
        id.short()
    ))
}

impl<R: Read> Entries<R> {
    fn start(mut src: StreamReader<R>, id: Option<Id>) -> Result<Self> {
        let left = src.parse(|r| {
            let m = r.raw(8)?;
            if m != MAGIC && m != MAGIC_V2 {
                if let Some(v) = m.strip_prefix(&MAGIC[..7]).and_then(|v| v.first()) {
                    return Err(invalid(format!(
                        "manifest version {v} was written by a newer aurum (this one reads up to version {}): upgrade aurum",
                        MAGIC_V2[7]
                    )));
                }
                return Err(corrupt(
                    "not an aurum manifest (bad magic); the repository may be damaged or newer than this aurum",
                ));
            }
            r.var()
        })?;
        Ok(Entries {
            src,
            left,
            check: Validator::default(),
            id,
            done: false,
        })
    }

    /// How many entries are still to come (as the header announced them).
    pub fn remaining(&self) -> u64 {
        self.left
    }

    /// After the last entry: nothing may follow, and a file's bytes must hash to its id.
    fn finish(&mut self) -> Result<()> {
        if !self.src.at_end()? {
            return Err(corrupt("manifest has trailing bytes"));
        }
        if let Some(id) = &self.id {
            if self.src.hash().as_ref() != Some(id) {
                return Err(damaged(id, &"hash mismatch"));
            }
        }
        Ok(())
    }

    fn next_entry(&mut self) -> Result<Option<Entry>> {
        if self.left == 0 {
            self.finish()?;
            return Ok(None);
        }
        let e = self.src.parse(decode_entry)?;
        self.left -= 1;
        self.check.check(&e)?;
        Ok(Some(e))
    }
}

impl<R: Read> Iterator for Entries<R> {
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Result<Entry>> {
        if self.done {
            return None;
        }
        let got = self.next_entry();
        if !matches!(got, Ok(Some(_))) {
            self.done = true;
        }
        got.transpose()
    }
}

/// Writes a manifest file from entries given in path order (see the module doc).
///
/// Given a base (the manifest of the previous capture of the same tree, [`Self::with_base`]),
/// the writer compares each entry's bytes with the base's as they come and compresses nothing
/// while they match: an unchanged tree then costs one decompression of the base, and
/// [`Self::same_as_base`] says so at the end. At the first difference the matched prefix is
/// read again from the base into the compressor and writing goes on as without one.
pub struct ManifestWriter {
    /// Compressing into the spill; `None` while every entry so far matched the base.
    enc: Option<zstd::stream::write::Encoder<'static, BufWriter<File>>>,
    /// The spill, until the compressor takes it.
    spill: Option<File>,
    base: Option<Base>,
    one: Writer,
    count: u64,
    prev: Option<Vec<u8>>,
    level: i32,
    /// Whether an entry carried an embedded repository record (the magic then says version 2).
    embedded: bool,
}

/// A manifest file the entries are expected to repeat.
struct Base {
    id: Id,
    /// Its encoded bytes, decompressed as they are compared.
    src: zstd::stream::read::Decoder<'static, std::io::BufReader<File>>,
    /// Its header (magic and entry count).
    head: Vec<u8>,
    /// Bytes of entries matched so far.
    matched: u64,
    /// The hash of the base's bytes read so far, checked against its id at the end: a damaged
    /// base file is never taken for the new manifest.
    hash: blake3::Hasher,
    scratch: Vec<u8>,
}

impl Base {
    fn open(mut file: File, id: Id) -> std::io::Result<Base> {
        file.seek(SeekFrom::Start(0))?;
        let mut src = zstd::stream::read::Decoder::new(file)?;
        let mut head = vec![0u8; 8];
        src.read_exact(&mut head)?;
        loop {
            let mut b = [0u8];
            src.read_exact(&mut b)?;
            head.push(b[0]);
            if b[0] & 0x80 == 0 || head.len() > 18 {
                break;
            }
        }
        let mut hash = blake3::Hasher::new();
        hash.update(&head);
        Ok(Base {
            id,
            src,
            head,
            matched: 0,
            hash,
            scratch: Vec::new(),
        })
    }

    /// Whether the base's next bytes are `bytes` (false on any read problem).
    fn next_is(&mut self, bytes: &[u8]) -> bool {
        self.scratch.resize(bytes.len(), 0);
        if self.src.read_exact(&mut self.scratch).is_err() || self.scratch != bytes {
            return false;
        }
        self.hash.update(bytes);
        self.matched += bytes.len() as u64;
        true
    }

    /// The base's entry bytes matched so far, read again from its start.
    fn replay(self, into: &mut impl Write) -> Result<()> {
        let mut file = self.src.finish().into_inner();
        file.seek(SeekFrom::Start(0))?;
        let mut src = zstd::stream::read::Decoder::new(file)?;
        std::io::copy(
            &mut (&mut src).take(self.head.len() as u64),
            &mut std::io::sink(),
        )?;
        let copied = std::io::copy(&mut src.take(self.matched), into)?;
        if copied != self.matched {
            return Err(corrupt("a manifest file changed while it was read"));
        }
        Ok(())
    }
}

impl ManifestWriter {
    /// A writer that spills into `spill` (an empty file of its own, unnamed), compressing at
    /// `level`.
    pub fn new(spill: File, level: i32) -> Result<Self> {
        let mut w = ManifestWriter {
            enc: None,
            spill: Some(spill),
            base: None,
            one: Writer::default(),
            count: 0,
            prev: None,
            level,
            embedded: false,
        };
        w.diverge()?;
        Ok(w)
    }

    /// [`Self::new`], with the manifest file `base` (of id `id`) expected to be repeated.
    /// A base that cannot be read is no base.
    pub fn with_base(spill: File, level: i32, base: File, id: &Id) -> Result<Self> {
        let base = Base::open(base, *id).ok();
        let mut w = ManifestWriter {
            enc: None,
            spill: Some(spill),
            base,
            one: Writer::default(),
            count: 0,
            prev: None,
            level,
            embedded: false,
        };
        if w.base.is_none() {
            w.diverge()?;
        }
        Ok(w)
    }

    /// Starts compressing: what matched the base so far goes in first.
    fn diverge(&mut self) -> Result<()> {
        if self.enc.is_some() {
            return Ok(());
        }
        let spill = self
            .spill
            .take()
            .expect("the spill is held until compressing");
        let mut enc = zstd::stream::write::Encoder::new(BufWriter::new(spill), self.level)?;
        // Level 9's own window (4 MiB) and hash table (2^21 rows) made a context of some
        // 15 MiB, held for a whole capture (issue 14, live root); sorted entries repeat what is
        // near them, so a 2 MiB window and a quarter of the table lose little.
        enc.set_parameter(zstd::stream::raw::CParameter::WindowLog(21))?;
        enc.set_parameter(zstd::stream::raw::CParameter::HashLog(19))?;
        if let Some(base) = self.base.take() {
            base.replay(&mut enc)?;
        }
        self.enc = Some(enc);
        Ok(())
    }

    /// Appends `e`, which must sort after the entry before it.
    pub fn push(&mut self, e: &Entry) -> Result<()> {
        if let Some(p) = &self.prev {
            if p.as_slice() >= e.path.as_slice() {
                return Err(corrupt(format!(
                    "entries reached the manifest writer out of order at {} (after {}); this is a bug in aurum",
                    e.display(),
                    display_path(p)
                )));
            }
        }
        let prev = self.prev.get_or_insert_with(Vec::new);
        prev.clear();
        prev.extend_from_slice(&e.path);
        self.embedded |= crate::format::embedded::record_of(e).is_some();
        self.one.buf.clear();
        encode_entry(&mut self.one, e);
        self.count += 1;
        if let Some(base) = &mut self.base {
            if base.next_is(&self.one.buf) {
                return Ok(());
            }
            self.diverge()?;
        }
        self.enc
            .as_mut()
            .expect("compressing once off the base")
            .write_all(&self.one.buf)?;
        Ok(())
    }

    /// Entries pushed so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The base's id when the entries pushed are exactly the base's (same header, nothing
    /// left over, and the base's bytes hash to its id): nothing needs writing.
    pub fn same_as_base(&mut self) -> Option<Id> {
        let base = self.base.as_mut()?;
        let mut head = Writer::default();
        head.raw(magic(self.embedded));
        head.var(self.count);
        let mut rest = [0u8; 1];
        let at_end = matches!(base.src.read(&mut rest), Ok(0));
        (head.buf == base.head && at_end && Id::from(base.hash.finalize()) == base.id)
            .then_some(base.id)
    }

    /// Writes the manifest file to `out`; returns its id.
    pub fn finish(mut self, out: &mut impl Write) -> Result<Id> {
        self.diverge()?;
        let mut spill = self
            .enc
            .take()
            .expect("compressing")
            .finish()?
            .into_inner()
            .map_err(|e| e.into_error())?;
        let mut head = Writer::default();
        head.raw(magic(self.embedded));
        head.var(self.count);
        let mut h = blake3::Hasher::new();
        h.update(&head.buf);
        spill.seek(SeekFrom::Start(0))?;
        h.update_reader(zstd::stream::read::Decoder::new(&spill)?)?;
        out.write_all(&zstd::bulk::compress(&head.buf, self.level)?)?;
        spill.seek(SeekFrom::Start(0))?;
        std::io::copy(&mut spill, out)?;
        Ok(h.finalize().into())
    }
}
