//! Manifests: the tree of one revision.
//!
//! A manifest lists every entry of the tree sorted by path bytes, with all the metadata needed to
//! recreate it exactly. Content is named by blob ids, never stored here, so metadata-only changes
//! move no bytes and identical trees have identical manifests (and so identical revision ids).
//!
//! Paths are relative to the image root, `/`-separated raw bytes (names need not be UTF-8), with
//! no empty, `.` or `..` component; the root itself is the entry with the empty path.
//! [`Manifest::decode`] refuses any manifest that breaks these rules, that names a parent which
//! is not a directory, or whose hardlinks point anywhere but at an earlier non-directory entry:
//! that is what keeps an apply from ever writing outside its target root.
//!
//! A manifest *file* (`.mf`, in a repository and in a node's state directory) is the encoded
//! manifest compressed as zstd frames, named by the id of the encoded bytes:
//! [`compress_file`] and [`decompress_file`] whole, or one entry at a time with [`Entries`] and
//! [`ManifestWriter`] (the `stream` submodule), which keep memory flat for any size of tree.

mod stream;

use std::fmt;
use std::io::Read;

use super::{Id, Reader, Writer};
use crate::error::{corrupt, Result};

pub use stream::{Entries, FileSource, ManifestWriter, Validator};

/// First bytes of a manifest: `AURUMMF` and a version byte. Version 2 is written only when
/// an entry carries an embedded repository record ([`crate::format::embedded`]), so that an
/// aurum that does not know the record refuses the manifest; every other manifest keeps
/// version 1 (and its revision id).
const MAGIC: &[u8; 8] = b"AURUMMF\x01";
const MAGIC_V2: &[u8; 8] = b"AURUMMF\x02";

/// The magic for a manifest whose entries do (`true`) or do not carry an embedded record.
fn magic(embedded: bool) -> &'static [u8; 8] {
    if embedded {
        MAGIC_V2
    } else {
        MAGIC
    }
}

/// Largest encoded manifest a manifest file may hold (a tree of tens of millions of entries).
const MAX_FILE: u64 = 1 << 32;

/// A revision's manifest file, relative to the published directory: `manifests/XX/<id>.mf`.
pub fn path(id: &Id) -> String {
    format!("manifests/{}", id.fanned("mf"))
}

/// The bytes of a manifest file for the encoded manifest `raw`.
pub fn compress_file(raw: &[u8], level: i32) -> Result<Vec<u8>> {
    Ok(zstd::bulk::compress(raw, level)?)
}

/// Why a manifest file could not be read.
#[derive(Debug)]
pub enum FileProblem {
    /// Not zstd, cut short, or larger than any manifest: the decoder's complaint.
    Damaged(String),
    /// Whole, but its bytes are not those of the id it was read for.
    Mismatch,
}

impl fmt::Display for FileProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileProblem::Damaged(e) => f.write_str(e),
            FileProblem::Mismatch => f.write_str("hash mismatch"),
        }
    }
}

/// The encoded manifest a manifest file holds, checked against `id` (its name). Decode it with
/// [`Manifest::decode`].
pub fn decompress_file(packed: impl Read, id: &Id) -> std::result::Result<Vec<u8>, FileProblem> {
    let damaged = |e: std::io::Error| FileProblem::Damaged(e.to_string());
    let mut raw = Vec::new();
    zstd::stream::read::Decoder::new(packed)
        .map_err(damaged)?
        .take(MAX_FILE)
        .read_to_end(&mut raw)
        .map_err(damaged)?;
    if Id::of(&raw) != *id {
        return Err(FileProblem::Mismatch);
    }
    Ok(raw)
}

/// The length of a manifest file's encoded bytes when it is at most `cap`, else `None`: read
/// through without keeping them, and no further than `cap` (the bytes are not checked
/// against the id; a reader of the manifest does that).
pub fn raw_len_within(packed: impl Read, cap: u64) -> std::io::Result<Option<u64>> {
    let dec = zstd::stream::read::Decoder::new(packed)?;
    let n = std::io::copy(&mut dec.take(cap + 1), &mut std::io::sink())?;
    Ok((n <= cap).then_some(n))
}

/// Whether a manifest file's entries may carry embedded repository records (its magic says
/// version 2), read from its first bytes alone: what lets a capture look into only those
/// manifests of an embedded repository that embed repositories in turn.
pub fn file_embeds(packed: impl Read) -> bool {
    let mut magic = [0u8; 8];
    zstd::stream::read::Decoder::new(packed)
        .and_then(|mut d| d.read_exact(&mut magic))
        .is_ok_and(|()| &magic == MAGIC_V2)
}

/// One piece of a file's content: a blob and its uncompressed length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub id: Id,
    pub len: u32,
}

/// What an entry is, with what only that kind carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A regular file. `chunks` hold its data in order; for a sparse file `extents` lists the
    /// (offset, length) ranges that hold data and the chunks cover only those, concatenated.
    File {
        size: u64,
        chunks: Vec<Chunk>,
        extents: Option<Vec<(u64, u64)>>,
    },
    Dir,
    Symlink {
        target: Vec<u8>,
    },
    /// A further name of an earlier entry (the first name in path order is the full entry).
    Hardlink {
        target: Vec<u8>,
    },
    Char {
        rdev: u64,
    },
    Block {
        rdev: u64,
    },
    Fifo,
    Socket,
}

impl Kind {
    fn code(&self) -> u8 {
        match self {
            Kind::File { .. } => 1,
            Kind::Dir => 2,
            Kind::Symlink { .. } => 3,
            Kind::Hardlink { .. } => 4,
            Kind::Char { .. } => 5,
            Kind::Block { .. } => 6,
            Kind::Fifo => 7,
            Kind::Socket => 8,
        }
    }

    /// One word for listings and diffs.
    pub fn name(&self) -> &'static str {
        match self {
            Kind::File { .. } => "file",
            Kind::Dir => "dir",
            Kind::Symlink { .. } => "symlink",
            Kind::Hardlink { .. } => "hardlink",
            Kind::Char { .. } => "char",
            Kind::Block { .. } => "block",
            Kind::Fifo => "fifo",
            Kind::Socket => "socket",
        }
    }

    /// The `ls -l` type letter.
    pub fn letter(&self) -> char {
        match self {
            Kind::File { .. } | Kind::Hardlink { .. } => '-',
            Kind::Dir => 'd',
            Kind::Symlink { .. } => 'l',
            Kind::Char { .. } => 'c',
            Kind::Block { .. } => 'b',
            Kind::Fifo => 'p',
            Kind::Socket => 's',
        }
    }
}

/// One entry of a tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub path: Vec<u8>,
    pub kind: Kind,
    /// Permission bits including setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    /// Every extended attribute, sorted by name (ACLs and capabilities are xattrs too).
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Entry {
    /// The path as an administrator reads it: `/` + path, non-UTF-8 bytes escaped as `\xNN`.
    pub fn display(&self) -> String {
        display_path(&self.path)
    }

    /// Size in bytes as `ls` shows it (0 for all but files and symlinks).
    pub fn size(&self) -> u64 {
        match &self.kind {
            Kind::File { size, .. } => *size,
            Kind::Symlink { target } => target.len() as u64,
            _ => 0,
        }
    }

    /// Bytes of data the chunks carry (smaller than `size` for a sparse file).
    pub fn data_len(&self) -> u64 {
        match &self.kind {
            Kind::File { chunks, .. } => chunks.iter().map(|c| u64::from(c.len)).sum(),
            _ => 0,
        }
    }
}

/// `/` + path with non-UTF-8 bytes and control characters escaped.
pub fn display_path(path: &[u8]) -> String {
    let mut s = String::from("/");
    s.push_str(&escape_bytes(path));
    s
}

/// Bytes as text, `\xNN` for what is not printable UTF-8.
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut s = String::new();
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() || c == '\\' {
                for b in c.to_string().bytes() {
                    s.push_str(&format!("\\x{b:02x}"));
                }
            } else {
                s.push(c);
            }
        }
        for b in chunk.invalid() {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    s
}

/// The inverse of [`escape_bytes`]: `\xNN` becomes the byte NN (escape_bytes writes a
/// backslash itself as `\x5c`, so this is exact for what it wrote).
pub fn unescape_bytes(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while let Some(&c) = text.get(i) {
        if c == b'\\' && text.get(i + 1) == Some(&b'x') {
            let hex = text
                .get(i + 2..i + 4)
                .and_then(|h| std::str::from_utf8(h).ok());
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    out
}

/// The parent of a manifest path (`b""` for a top-level name).
pub fn parent(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => path.get(..i).unwrap_or_default(),
        None => b"",
    }
}

/// The last component of a manifest path.
pub fn file_name(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => path.get(i + 1..).unwrap_or_default(),
        None => path,
    }
}

/// Whether `path` is a valid manifest path: relative, no empty, `.` or `..` component, no NUL.
pub fn is_clean_path(path: &[u8]) -> bool {
    if path.is_empty() {
        return true;
    }
    !path.contains(&0)
        && path
            .split(|&b| b == b'/')
            .all(|c| !c.is_empty() && c != b"." && c != b"..")
}

/// A boxed stream of entries in path order, each checked, the first error ending it.
pub type EntryIter<'a> = Box<dyn Iterator<Item = Result<Entry>> + 'a>;

/// A tree whose entries can be read in path order, from the start, as often as needed: a
/// manifest in memory, or one streamed from its file each time (which keeps a consumer that
/// makes several passes, as checkout does, in memory that does not grow with the tree).
pub trait EntrySource {
    /// The entries from the first, each checked as [`Manifest::decode`] checks them.
    fn entries(&self) -> Result<EntryIter<'_>>;
}

impl EntrySource for Manifest {
    fn entries(&self) -> Result<EntryIter<'_>> {
        let mut check = Validator::default();
        Ok(Box::new(
            self.entries
                .iter()
                .map(move |e| check.check(e).map(|()| e.clone())),
        ))
    }
}

/// A whole tree.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifest {
    pub entries: Vec<Entry>,
}

impl Manifest {
    /// The binary form (uncompressed); its blake3 hash is the revision id.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        let embedded = self
            .entries
            .iter()
            .any(|e| super::embedded::record_of(e).is_some());
        w.raw(magic(embedded));
        w.var(self.entries.len() as u64);
        for e in &self.entries {
            encode_entry(&mut w, e);
        }
        w.buf
    }

    /// Parses and validates (see the module doc): the streaming reader, [`Entries`], over
    /// the whole bytes, so both refuse the same manifests.
    pub fn decode(data: &[u8]) -> Result<Manifest> {
        let stream = Entries::of_bytes(data)?;
        let mut entries = Vec::with_capacity(stream.remaining().min(1 << 20) as usize);
        for e in stream {
            entries.push(e?);
        }
        Ok(Manifest { entries })
    }

    /// The entry at `path`, by binary search.
    pub fn get(&self, path: &[u8]) -> Option<&Entry> {
        self.entries
            .binary_search_by(|e| e.path.as_slice().cmp(path))
            .ok()
            .and_then(|i| self.entries.get(i))
    }

    /// Resolves a hardlink to the entry that carries its content and metadata.
    pub fn resolve<'a>(&'a self, e: &'a Entry) -> &'a Entry {
        match &e.kind {
            Kind::Hardlink { target } => self.get(target).unwrap_or(e),
            _ => e,
        }
    }

    /// Checks the invariants that make a manifest safe to apply.
    pub fn validate(&self) -> Result<()> {
        let mut check = Validator::default();
        self.entries.iter().try_for_each(|e| check.check(e))
    }
}

/// Encodes one entry (also used on the agent wire).
pub fn encode_entry(w: &mut Writer, e: &Entry) {
    w.bytes(&e.path);
    w.u8(e.kind.code());
    w.var(u64::from(e.mode));
    w.var(u64::from(e.uid));
    w.var(u64::from(e.gid));
    w.svar(e.mtime);
    w.var(u64::from(e.mtime_nsec));
    w.var(e.xattrs.len() as u64);
    for (k, v) in &e.xattrs {
        w.bytes(k);
        w.bytes(v);
    }
    match &e.kind {
        Kind::File {
            size,
            chunks,
            extents,
        } => {
            w.var(*size);
            w.raw(&encode_content(chunks, extents.as_deref()));
        }
        Kind::Symlink { target } | Kind::Hardlink { target } => w.bytes(target),
        Kind::Char { rdev } | Kind::Block { rdev } => w.var(*rdev),
        Kind::Dir | Kind::Fifo | Kind::Socket => {}
    }
}

/// A file's content (chunks and sparse map) as the stat cache stores it.
pub fn encode_content(chunks: &[Chunk], extents: Option<&[(u64, u64)]>) -> Vec<u8> {
    let mut w = Writer::default();
    w.var(chunks.len() as u64);
    for c in chunks {
        w.id(&c.id);
        w.var(u64::from(c.len));
    }
    match extents {
        None => w.u8(0),
        Some(ext) => {
            w.u8(1);
            w.var(ext.len() as u64);
            for &(off, len) in ext {
                w.var(off);
                w.var(len);
            }
        }
    }
    w.buf
}

/// An entry's xattrs as the stat cache stores them.
pub fn encode_xattrs(xattrs: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut w = Writer::default();
    w.var(xattrs.len() as u64);
    for (k, v) in xattrs {
        w.bytes(k);
        w.bytes(v);
    }
    w.buf
}

/// The inverse of [`encode_xattrs`].
pub fn decode_xattrs(data: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut r = Reader::new(data, "stat cache entry");
    let n = r.var()?;
    let mut out = Vec::with_capacity(n.min(64) as usize);
    for _ in 0..n {
        out.push((r.bytes()?.to_vec(), r.bytes()?.to_vec()));
    }
    if !r.at_end() {
        return Err(corrupt("stat cache entry has trailing bytes"));
    }
    Ok(out)
}

/// A file's content as a stat cache entry holds it: its chunks, and its data extents when sparse.
pub type Content = (Vec<Chunk>, Option<Vec<(u64, u64)>>);

/// The inverse of [`encode_content`].
pub fn decode_content(data: &[u8]) -> Result<Content> {
    let mut r = Reader::new(data, "stat cache entry");
    let out = read_content(&mut r)?;
    if !r.at_end() {
        return Err(corrupt("stat cache entry has trailing bytes"));
    }
    Ok(out)
}

/// Reads what [`encode_content`] wrote.
pub fn read_content(r: &mut Reader) -> Result<Content> {
    let n = r.var()?;
    let mut chunks = Vec::with_capacity(n.min(1 << 16) as usize);
    for _ in 0..n {
        let id = r.id()?;
        let len = small(r.var()?, "chunk length")?;
        chunks.push(Chunk { id, len });
    }
    let extents = match r.u8()? {
        0 => None,
        _ => {
            let n = r.var()?;
            let mut ext = Vec::with_capacity(n.min(1 << 16) as usize);
            for _ in 0..n {
                ext.push((r.var()?, r.var()?));
            }
            Some(ext)
        }
    };
    Ok((chunks, extents))
}

fn small(v: u64, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| corrupt(format!("manifest {what} {v} is out of range")))
}

/// Decodes one entry without the manifest-wide checks.
pub fn decode_entry(r: &mut Reader) -> Result<Entry> {
    let path = r.bytes()?.to_vec();
    let code = r.u8()?;
    let mode = small(r.var()?, "mode")?;
    let uid = small(r.var()?, "uid")?;
    let gid = small(r.var()?, "gid")?;
    let mtime = r.svar()?;
    let mtime_nsec = small(r.var()?, "nanoseconds")?;
    let nx = r.var()?;
    let mut xattrs = Vec::new();
    for _ in 0..nx {
        let k = r.bytes()?.to_vec();
        let v = r.bytes()?.to_vec();
        xattrs.push((k, v));
    }
    let kind = match code {
        1 => {
            let size = r.var()?;
            let (chunks, extents) = read_content(r)?;
            Kind::File {
                size,
                chunks,
                extents,
            }
        }
        2 => Kind::Dir,
        3 => Kind::Symlink {
            target: r.bytes()?.to_vec(),
        },
        4 => Kind::Hardlink {
            target: r.bytes()?.to_vec(),
        },
        5 => Kind::Char { rdev: r.var()? },
        6 => Kind::Block { rdev: r.var()? },
        7 => Kind::Fifo,
        8 => Kind::Socket,
        other => return Err(corrupt(format!("manifest has unknown entry type {other}"))),
    };
    Ok(Entry {
        path,
        kind,
        mode,
        uid,
        gid,
        mtime,
        mtime_nsec,
        xattrs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn unescape_of_any_text() {
        assert_eq!(unescape_bytes(b"a\\x20b"), b"a b");
        for t in [&b"\\"[..], b"\\x", b"\\x4", b"\\xzz", b"x\\"] {
            assert_eq!(unescape_bytes(t), t);
        }
        assert_eq!(parent(b"a/b/c"), b"a/b");
        assert_eq!(parent(b"c"), b"");
        assert_eq!(file_name(b"a/b/c"), b"c");
        assert_eq!(file_name(b"a/"), b"");
        assert_eq!(file_name(b"c"), b"c");
    }

    fn entry(path: &str, kind: Kind) -> Entry {
        Entry {
            path: path.as_bytes().to_vec(),
            kind,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: 1,
            mtime_nsec: 2,
            xattrs: vec![],
        }
    }

    fn arb_kind() -> impl Strategy<Value = Kind> {
        prop_oneof![
            Just(Kind::Fifo),
            Just(Kind::Socket),
            any::<u64>().prop_map(|rdev| Kind::Char { rdev }),
            any::<u64>().prop_map(|rdev| Kind::Block { rdev }),
            proptest::collection::vec(any::<u8>(), 0..40)
                .prop_map(|target| Kind::Symlink { target }),
            proptest::collection::vec((any::<[u8; 32]>(), 0u32..1000), 0..5).prop_map(|cs| {
                let chunks: Vec<Chunk> = cs
                    .into_iter()
                    .map(|(id, len)| Chunk { id: Id(id), len })
                    .collect();
                let size = chunks.iter().map(|c| u64::from(c.len)).sum();
                Kind::File {
                    size,
                    chunks,
                    extents: None,
                }
            }),
        ]
    }

    proptest! {
        #[test]
        fn manifest_round_trips(
            names in proptest::collection::btree_set(proptest::collection::vec(1u8..=255, 1..12), 0..20),
            kinds in proptest::collection::vec(arb_kind(), 20),
            meta in proptest::collection::vec((any::<u32>(), any::<u32>(), any::<i64>(), 0u32..1_000_000_000), 20),
            xattr in proptest::collection::vec(any::<u8>(), 0..30),
        ) {
            let mut entries = vec![entry("", Kind::Dir)];
            for (i, name) in names.into_iter().filter(|n| is_clean_path(n) && !n.contains(&b'/')).enumerate() {
                let (uid, gid, mtime, nsec) = meta[i];
                entries.push(Entry {
                    path: name,
                    kind: kinds[i].clone(),
                    mode: 0o7777 & uid,
                    uid, gid, mtime, mtime_nsec: nsec,
                    xattrs: vec![(b"user.x".to_vec(), xattr.clone())],
                });
            }
            let m = Manifest { entries };
            let decoded = Manifest::decode(&m.encode()).unwrap();
            prop_assert_eq!(decoded, m);
        }
    }

    proptest! {
        /// A manifest from a server or a damaged file is refused or read, never a panic.
        #[test]
        fn any_bytes_after_the_magic_decode_or_fail(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Manifest::decode(&[&MAGIC[..], &data].concat());
            let _ = decompress_file(&data[..], &Id::of(&data));
        }
    }

    #[test]
    fn a_manifest_from_a_newer_aurum_says_to_upgrade_and_records_take_version_2() {
        let mut raw = Manifest {
            entries: vec![entry("", Kind::Dir)],
        }
        .encode();
        assert_eq!(&raw[..8], MAGIC);
        raw[7] = 3;
        let err = Manifest::decode(&raw).unwrap_err().to_string();
        assert!(
            err.contains("newer aurum") && err.contains("upgrade aurum"),
            "{err}"
        );
        let mut repo = entry("", Kind::Dir);
        crate::format::embedded::attach(
            &mut repo,
            &crate::format::embedded::EmbeddedRepo::default(),
        );
        let m = Manifest {
            entries: vec![repo],
        };
        let raw = m.encode();
        assert_eq!(&raw[..8], MAGIC_V2);
        assert_eq!(Manifest::decode(&raw).unwrap(), m);
        let (file, id) = stream_file(&m);
        assert_eq!(id, Id::of(&raw));
        assert!(file_embeds(&file[..]));
    }

    #[test]
    fn refuses_escapes_and_bad_parents() {
        for bad in ["../etc", "a/../../x", "/abs", "a//b", "./a"] {
            let m = Manifest {
                entries: vec![entry("", Kind::Dir), entry(bad, Kind::Fifo)],
            };
            assert!(Manifest::decode(&m.encode()).is_err(), "{bad} accepted");
        }
        // A file reached through a symlinked parent would write wherever the link points.
        let m = Manifest {
            entries: vec![
                entry("", Kind::Dir),
                entry(
                    "a",
                    Kind::Symlink {
                        target: b"/etc".to_vec(),
                    },
                ),
                entry("a/passwd", Kind::Fifo),
            ],
        };
        let err = Manifest::decode(&m.encode()).unwrap_err().to_string();
        assert!(err.contains("not a directory"), "{err}");
        let m = Manifest {
            entries: vec![
                entry("", Kind::Dir),
                entry(
                    "l",
                    Kind::Hardlink {
                        target: b"../x".to_vec(),
                    },
                ),
            ],
        };
        assert!(Manifest::decode(&m.encode()).is_err());
    }

    /// The whole-manifest rules as they were written before streaming, with exact path sets:
    /// the oracle the streaming validator must agree with.
    fn exact_validate(m: &Manifest) -> std::result::Result<(), String> {
        use std::collections::HashSet;
        let mut dirs: HashSet<&[u8]> = HashSet::new();
        let mut linkable: HashSet<&[u8]> = HashSet::new();
        let mut prev: Option<&[u8]> = None;
        for e in &m.entries {
            let p = e.path.as_slice();
            let shown = e.display();
            if !is_clean_path(p) {
                return Err(format!(
                    "manifest path {shown} is not a clean relative path; refusing it"
                ));
            }
            match prev {
                Some(q) if q >= p => return Err(format!("manifest is not sorted at {shown}")),
                None if !p.is_empty() || e.kind != Kind::Dir => {
                    return Err("manifest does not start with the root directory".into())
                }
                _ => {}
            }
            if !p.is_empty() && !dirs.contains(parent(p)) {
                return Err(format!("manifest entry {shown} lies under something that is not a directory; refusing it"));
            }
            match &e.kind {
                Kind::Dir => {
                    dirs.insert(p);
                }
                Kind::Hardlink { target } if !linkable.contains(target.as_slice()) => {
                    return Err(format!(
                        "hardlink {shown} points at {}, which is not an earlier file",
                        display_path(target)
                    ));
                }
                Kind::Hardlink { .. } => {}
                _ => {
                    linkable.insert(p);
                }
            }
            prev = Some(p);
        }
        Ok(())
    }

    /// Paths from a small alphabet, so that generated manifests hit every rule: unsorted,
    /// duplicate, unclean (`.`, `..`, `//`), under a non-directory, hardlinks anywhere.
    fn arb_tree() -> impl Strategy<Value = Manifest> {
        let path = proptest::collection::vec(
            prop_oneof![Just(b'a'), Just(b'b'), Just(b'.'), Just(b'/')],
            0..6,
        );
        let kind = prop_oneof![
            3 => Just(Kind::Dir),
            2 => Just(Kind::Fifo),
            1 => proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'b'), Just(b'.'), Just(b'/')], 0..6)
                .prop_map(|target| Kind::Hardlink { target }),
        ];
        (
            proptest::collection::vec((path, kind), 0..12),
            any::<bool>(),
        )
            .prop_map(|(items, sort)| {
                let mut entries: Vec<Entry> = items
                    .into_iter()
                    .map(|(p, k)| Entry {
                        path: p,
                        kind: k,
                        mode: 0o644,
                        uid: 0,
                        gid: 0,
                        mtime: 0,
                        mtime_nsec: 0,
                        xattrs: vec![],
                    })
                    .collect();
                if sort {
                    entries.sort_by(|a, b| a.path.cmp(&b.path));
                    entries.dedup_by(|a, b| a.path == b.path);
                }
                entries.insert(0, entry("", Kind::Dir));
                Manifest { entries }
            })
    }

    fn stream_file(m: &Manifest) -> (Vec<u8>, Id) {
        let mut w = ManifestWriter::new(tempfile::tempfile().unwrap(), 3).unwrap();
        for e in &m.entries {
            w.push(e).unwrap();
        }
        let mut file = Vec::new();
        let id = w.finish(&mut file).unwrap();
        (file, id)
    }

    proptest! {
        /// What the streaming writer writes, the streaming reader reads back; and its id is
        /// that of `Manifest::encode`'s bytes, which old readers decompress whole.
        #[test]
        fn streamed_manifest_files_round_trip(tree in arb_tree()) {
            // Keep the entries that leave the manifest valid.
            let mut m = Manifest::default();
            for e in tree.entries {
                m.entries.push(e);
                if exact_validate(&m).is_err() {
                    m.entries.pop();
                }
            }
            let (file, id) = stream_file(&m);
            prop_assert_eq!(id, Id::of(&m.encode()));
            let back: Vec<Entry> = Entries::of_file(&file[..], &id).unwrap().collect::<Result<_>>().unwrap();
            prop_assert_eq!(&back, &m.entries);
            prop_assert_eq!(decompress_file(&file[..], &id).unwrap(), m.encode());
        }

        /// Written against a base (the previous capture's manifest), a manifest is the same
        /// file with the same id as written without one, whether it repeats the base, is a
        /// prefix of it, extends it or departs from it anywhere; and the writer says it is the
        /// base exactly when the two are equal.
        #[test]
        fn manifests_written_against_a_base_are_unchanged(a in arb_tree(), b in arb_tree(), cut in 0usize..40, same in any::<bool>()) {
            let valid = |tree: Manifest| {
                let mut m = Manifest::default();
                for e in tree.entries {
                    m.entries.push(e);
                    if exact_validate(&m).is_err() {
                        m.entries.pop();
                    }
                }
                m
            };
            let base = valid(a);
            let new = if same {
                let mut m = base.clone();
                m.entries.truncate(cut.max(1));
                if cut % 3 == 0 { base.clone() } else { m }
            } else {
                valid(b)
            };
            let (base_file, base_id) = stream_file(&base);
            let (want_file, want_id) = stream_file(&new);
            let mut spilled = tempfile::tempfile().unwrap();
            std::io::Write::write_all(&mut spilled, &base_file).unwrap();
            let mut w = ManifestWriter::with_base(tempfile::tempfile().unwrap(), 3, spilled, &base_id).unwrap();
            for e in &new.entries {
                w.push(e).unwrap();
            }
            prop_assert_eq!(w.same_as_base().is_some(), want_id == base_id);
            let mut file = Vec::new();
            let id = w.finish(&mut file).unwrap();
            prop_assert_eq!(id, want_id);
            prop_assert_eq!(file, want_file);
        }

        /// The streaming reader refuses exactly what the exact whole-manifest rules refuse,
        /// with the same message, from a file as from bytes.
        #[test]
        fn streamed_decode_refuses_as_the_whole_rules(m in arb_tree()) {
            let raw = m.encode();
            let want = exact_validate(&m);
            let streamed: std::result::Result<Vec<Entry>, String> = Entries::of_bytes(&raw)
                .unwrap()
                .collect::<Result<Vec<_>>>()
                .map_err(|e| e.to_string());
            let id = Id::of(&raw);
            let packed = compress_file(&raw, 1).unwrap();
            let from_file: std::result::Result<Vec<Entry>, String> = Entries::of_file(&packed[..], &id)
                .unwrap()
                .collect::<Result<Vec<_>>>()
                .map_err(|e| e.to_string());
            prop_assert_eq!(&streamed, &from_file);
            match (want, streamed) {
                (Ok(()), Ok(got)) => prop_assert_eq!(got, m.entries),
                (Err(w), Err(g)) => prop_assert!(g.ends_with(&w), "{} vs {}", g, w),
                (w, g) => prop_assert!(false, "exact rules {:?}, stream {:?}", w, g),
            }
        }

        /// Truncated, extended or flipped bytes: the stream fails where the whole decoder
        /// fails, with the same message, and never panics.
        #[test]
        fn streamed_decode_of_damaged_bytes(m in arb_tree(), cut in any::<prop::sample::Index>(), flip in any::<u8>()) {
            let mut raw = m.encode();
            let i = cut.index(raw.len());
            raw[i] ^= flip;
            for bytes in [&raw[..], &raw[..i], &[&raw[..], b"x"].concat()[..]] {
                let whole = Manifest::decode(bytes).map_err(|e| e.to_string());
                let streamed = Entries::of_bytes(bytes)
                    .and_then(|s| s.collect::<Result<Vec<_>>>())
                    .map(|entries| Manifest { entries })
                    .map_err(|e| e.to_string());
                prop_assert_eq!(whole, streamed);
            }
        }
    }

    #[test]
    fn a_streamed_file_with_the_wrong_id_or_cut_short_is_damaged() {
        let m = Manifest {
            entries: vec![entry("", Kind::Dir), entry("f", Kind::Fifo)],
        };
        let (file, id) = stream_file(&m);
        let err = Entries::of_file(&file[..], &Id::of(b"other"))
            .unwrap()
            .collect::<Result<Vec<_>>>()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("hash mismatch") && err.contains("aurum verify"),
            "{err}"
        );
        let cut = &file[..file.len() - 3];
        let err = Entries::of_file(cut, &id)
            .and_then(|s| s.collect::<Result<Vec<_>>>())
            .unwrap_err()
            .to_string();
        assert!(err.contains("damaged"), "{err}");
    }

    #[test]
    fn manifest_files_round_trip_and_check_their_id() {
        let m = Manifest {
            entries: vec![entry("", Kind::Dir), entry("f", Kind::Fifo)],
        };
        let raw = m.encode();
        let id = Id::of(&raw);
        let packed = compress_file(&raw, 3).unwrap();
        let back = decompress_file(&packed[..], &id).unwrap();
        assert_eq!(Manifest::decode(&back).unwrap(), m);
        assert!(matches!(
            decompress_file(&packed[..], &Id::of(b"other")),
            Err(FileProblem::Mismatch)
        ));
        for bad in [&packed[..packed.len() - 2], b"not zstd", b""] {
            assert!(
                matches!(decompress_file(bad, &id), Err(FileProblem::Damaged(_))),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn escapes_non_utf8_for_display() {
        assert_eq!(display_path(b"a/\xffb\n"), "/a/\\xffb\\x0a");
        for raw in [&b"a/\xffb\n"[..], b"back\\slash\\x41", b"plain"] {
            assert_eq!(unescape_bytes(escape_bytes(raw).as_bytes()), raw);
        }
    }
}
