//! `export` and `import`: revisions as tar archives.
//!
//! Export writes a GNU tar (long names and link targets through GNU extensions) with a pax
//! extended header before any entry that has xattrs, ACLs or a sub-second mtime, the way GNU
//! tar `--xattrs --acls` and bsdtar write them (`SCHILY.xattr.NAME`, `SCHILY.acl.access`,
//! `mtime=SEC.NSEC`). Sparse files go as GNU sparse members, holes left out. It can be piped to
//! a compressor on the fly. Sockets have no tar form and are left out with a warning, as GNU
//! tar does.
//!
//! Import reads tarballs from GNU tar, bsdtar, star and old tars, plain or compressed
//! ([`decompress`]), with our own reader ([`read`]), normalises `./`-prefixed names, refuses
//! names that would leave the root, builds the tree as a tar extracts it (later members
//! replace earlier ones, hard links refer to what their target was at that point: [`tree`]),
//! makes the parent directories an archive leaves implicit, keeps the holes of sparse members,
//! the xattrs and the ACLs of pax records ([`pax`], [`acl`]), refuses any record or member type
//! it does not understand rather than drop it, and stores the content exactly as getimage
//! would.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

use crate::capture::BlobSink;
use crate::catalog::{Revision, RevisionStats};
use crate::error::{corrupt, invalid, IoContext, Result};
use crate::format::manifest::{is_clean_path, Chunk, Entry, Kind, Manifest};
use crate::format::Id;
use crate::repo::Repository;
use crate::store::chunk;

mod acl;
mod decompress;
mod pax;
mod read;
mod tree;

fn pax_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    // The length counts itself, so find the fixed point.
    let rest = key.len() + value.len() + 3;
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    out.extend_from_slice(format!("{len} {key}=").as_bytes());
    out.extend_from_slice(value);
    out.push(b'\n');
}

fn as_path(bytes: &[u8]) -> &Path {
    Path::new(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(bytes))
}

/// Writes `manifest` as a tar stream to `out`; returns warnings.
pub fn export(repo: &Repository, manifest: &Manifest, out: impl Write) -> Result<Vec<String>> {
    let mut warnings = Vec::new();
    let mut b = tar::Builder::new(out);
    for e in &manifest.entries {
        let mut path = if e.path.is_empty() {
            b"./".to_vec()
        } else {
            e.path.clone()
        };
        if e.kind == Kind::Dir && !e.path.is_empty() {
            path.push(b'/');
        }
        let mut pax = Vec::new();
        if e.mtime_nsec != 0 {
            pax_record(
                &mut pax,
                "mtime",
                format!("{}.{:09}", e.mtime, e.mtime_nsec).as_bytes(),
            );
        }
        for (k, v) in &e.xattrs {
            // ACLs go as GNU tar `--acls` writes them, so that it restores them.
            let acl_key = match k.as_slice() {
                acl::ACCESS_XATTR => Some(acl::ACCESS_PAX),
                acl::DEFAULT_XATTR => Some(acl::DEFAULT_PAX),
                _ => None,
            };
            if let Some((key, text)) = acl_key.zip(acl::to_text(v)) {
                pax_record(&mut pax, key, text.as_bytes());
                continue;
            }
            match std::str::from_utf8(k) {
                Ok(k) => pax_record(&mut pax, &format!("SCHILY.xattr.{k}"), v),
                Err(_) => warnings.push(format!(
                    "{}: xattr with a non-UTF-8 name cannot go into a tar archive",
                    e.display()
                )),
            }
        }
        if e.kind == Kind::Socket {
            warnings.push(format!(
                "{}: socket ignored (tar has no socket type)",
                e.display()
            ));
            continue;
        }
        if !pax.is_empty() {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::XHeader);
            h.set_path("././@PaxHeader").at("tar")?;
            h.set_size(pax.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append(&h, &pax[..]).at("tar")?;
        }
        let mut h = tar::Header::new_gnu();
        h.set_mode(e.mode);
        h.set_uid(u64::from(e.uid));
        h.set_gid(u64::from(e.gid));
        h.set_mtime(e.mtime.max(0) as u64);
        h.set_size(0);
        let p = as_path(&path);
        match &e.kind {
            Kind::File {
                size,
                extents: Some(extents),
                ..
            } => {
                let ext_blocks = sparse_header(&mut h, extents, *size);
                let data = std::io::Cursor::new(ext_blocks).chain(repo.open_data(e));
                b.append_data(&mut h, p, data).at(e.display())?;
            }
            Kind::File { size, .. } => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(*size);
                b.append_data(&mut h, p, repo.open_file(e))
                    .at(e.display())?;
            }
            Kind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                b.append_data(&mut h, p, std::io::empty()).at(e.display())?;
            }
            Kind::Symlink { target } => {
                h.set_entry_type(tar::EntryType::Symlink);
                b.append_link(&mut h, p, as_path(target)).at(e.display())?;
            }
            Kind::Hardlink { target } => {
                h.set_entry_type(tar::EntryType::Link);
                b.append_link(&mut h, p, as_path(target)).at(e.display())?;
            }
            Kind::Char { rdev } | Kind::Block { rdev } => {
                h.set_entry_type(if matches!(e.kind, Kind::Char { .. }) {
                    tar::EntryType::Char
                } else {
                    tar::EntryType::Block
                });
                h.set_device_major(libc::major(*rdev)).at(e.display())?;
                h.set_device_minor(libc::minor(*rdev)).at(e.display())?;
                b.append_data(&mut h, p, std::io::empty()).at(e.display())?;
            }
            Kind::Fifo => {
                h.set_entry_type(tar::EntryType::Fifo);
                b.append_data(&mut h, p, std::io::empty()).at(e.display())?;
            }
            Kind::Socket => unreachable!("skipped above"),
        }
    }
    b.into_inner().at("tar")?.flush()?;
    Ok(warnings)
}

/// Names the archive in an error that names no file.
fn in_archive(e: crate::Error, path: &Path) -> crate::Error {
    match e {
        crate::Error::Os(source) => crate::Error::Io {
            path: path.to_path_buf(),
            source,
        },
        other => other,
    }
}

/// Makes `h` an old GNU sparse header (type `S`, as GNU tar `-S` writes by default, and as
/// GNU tar, bsdtar and Python's tarfile extract with their holes) for a file of `size` bytes
/// with these data extents. Returns the extension blocks for the map entries the header has
/// no room for; they go between the header and the data. The map ends with an empty extent
/// at the file's end, as GNU tar writes it, so that a trailing hole keeps the file's size.
fn sparse_header(h: &mut tar::Header, extents: &[(u64, u64)], size: u64) -> Vec<u8> {
    let mut map: Vec<(u64, u64)> = extents.to_vec();
    if map.last().is_none_or(|&(off, len)| off + len < size) {
        map.push((size, 0));
    }
    h.set_entry_type(tar::EntryType::GNUSparse);
    h.set_size(extents.iter().map(|e| e.1).sum());
    let gnu = h.as_gnu_mut().expect("a GNU header");
    gnu.set_real_size(size);
    let in_header = gnu.sparse.len();
    for (slot, &(off, len)) in gnu.sparse.iter_mut().zip(&map) {
        slot.set_offset(off);
        slot.set_length(len);
    }
    gnu.set_is_extended(map.len() > in_header);
    let mut blocks = Vec::new();
    let rest: Vec<_> = map.iter().skip(in_header).collect();
    let per_block = tar::GnuExtSparseHeader::new().sparse().len();
    for (i, group) in rest.chunks(per_block).enumerate() {
        let mut ext = tar::GnuExtSparseHeader::new();
        for (slot, &&(off, len)) in ext.sparse_mut().iter_mut().zip(group) {
            slot.set_offset(off);
            slot.set_length(len);
        }
        ext.set_is_extended((i + 1) * per_block < rest.len());
        blocks.extend_from_slice(ext.as_bytes());
    }
    blocks
}

/// A sparse member's data extents as a manifest keeps them (adjacent ones merged, empty ones
/// dropped); `None` when they cover the whole file, which is then stored plain as a capture
/// would store it. Zero runs inside the data stay data: only the archive's holes are holes.
fn dense_or_extents(extents: &[(u64, u64)], size: u64) -> Option<Vec<(u64, u64)>> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &(off, len) in extents.iter().filter(|e| e.1 > 0) {
        match out.last_mut() {
            Some(last) if last.0 + last.1 == off => last.1 += len,
            _ => out.push((off, len)),
        }
    }
    if out == [(0, size)] || (size == 0 && out.is_empty()) {
        None
    } else {
        Some(out)
    }
}

/// Normalises a tar member name to a manifest path; `None` for the root itself.
fn normalise(name: &[u8]) -> Result<Option<Vec<u8>>> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for c in name.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                return Err(invalid(format!(
                    "archive member `{}` leaves the root; refusing the archive (nothing was recorded): \
                     repack it without `..` names, or extract it where you trust it and capture \
                     the directory with `aurum getimage`",
                    String::from_utf8_lossy(name)
                )))
            }
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return Ok(None);
    }
    let p = parts.join(&b'/');
    if !is_clean_path(&p) {
        return Err(invalid(format!(
            "archive member `{}` is not a valid path",
            String::from_utf8_lossy(name)
        )));
    }
    Ok(Some(p))
}

/// Imports a tarball as a new revision of `image`.
pub fn import(
    repo: &mut Repository,
    path: &Path,
    image: &str,
    message: &str,
) -> Result<(Revision, RevisionStats)> {
    crate::repo::check_name("image", image)?;
    repo.adopt_orphan_packs()?;
    let sink = std::sync::Mutex::new(repo.blob_writer()?);
    let mut archive = read::Reader::new(decompress::open(path)?);
    let mut tree = tree::Tree::default();
    let mut accounts = acl::Accounts {
        passwd: None,
        group: None,
    };
    while let Some(m) = archive.next().map_err(|e| in_archive(e, path))? {
        let name = normalise(&m.name)?;
        let pax::Attributes { xattrs, acls } = pax::attributes(&m)?;
        let mut e = Entry {
            path: Vec::new(),
            kind: Kind::Dir,
            mode: m.mode & 0o7777,
            uid: m.uid,
            gid: m.gid,
            mtime: m.mtime,
            mtime_nsec: m.mtime_nsec,
            xattrs,
        };
        e.kind = match m.typeflag {
            b'5' => Kind::Dir,
            b'2' => Kind::Symlink {
                target: m.link.clone(),
            },
            b'1' => Kind::Hardlink {
                target: normalise(&m.link)?.ok_or_else(|| corrupt("hardlink to the root"))?,
            },
            b'3' => Kind::Char {
                rdev: libc::makedev(m.dev_major, m.dev_minor),
            },
            b'4' => Kind::Block {
                rdev: libc::makedev(m.dev_major, m.dev_minor),
            },
            b'6' => Kind::Fifo,
            b'0' | b'\0' | b'7' => {
                // The image's account files name the users and groups of its ACLs.
                let keep = match name.as_deref() {
                    Some(b"etc/passwd") => Some(&mut accounts.passwd),
                    Some(b"etc/group") => Some(&mut accounts.group),
                    _ => None,
                };
                store_file(&mut archive, &m, &sink, keep).map_err(|e| in_archive(e, path))?
            }
            other => return Err(unknown_type(&m.name, other)),
        };
        tree.add(name, tree::Node { entry: e, acls })?;
    }
    let newest = tree.newest();
    let (root, list) = tree.into_entries(&accounts)?;
    let mut entries: BTreeMap<Vec<u8>, Entry> =
        list.into_iter().map(|e| (e.path.clone(), e)).collect();
    let mut sink = sink.into_inner().expect("blob writer lock");
    sink.finish()?;

    // Parents the archive left implicit.
    let paths: Vec<Vec<u8>> = entries.keys().cloned().collect();
    for p in paths {
        let mut here = p.as_slice();
        while let Some(i) = here.iter().rposition(|&b| b == b'/') {
            here = here.split_at(i).0;
            if entries.contains_key(here) {
                break;
            }
            entries.insert(here.to_vec(), implied_dir(here.to_vec(), newest));
        }
    }
    let mut list = vec![root.unwrap_or_else(|| implied_dir(Vec::new(), newest))];
    list.extend(entries.into_values());
    let manifest = Manifest { entries: list };
    manifest.validate()?;
    let files = manifest
        .entries
        .iter()
        .filter(|e| matches!(e.kind, Kind::File { .. }))
        .count() as u64;
    let bytes = manifest
        .entries
        .iter()
        .map(|e| match e.kind {
            Kind::File { size, .. } => size,
            _ => 0,
        })
        .sum();
    let stats = RevisionStats {
        files,
        bytes,
        new_bytes: sink.new_bytes(),
    };
    let id = repo.store_manifest(&manifest)?;
    let source = format!(
        "import:{}",
        std::fs::canonicalize(path)
            .unwrap_or(path.to_path_buf())
            .display()
    );
    let rev = repo.commit_revision(image, &id, message, &source, &stats)?;
    Ok((rev, stats))
}

/// The importer as the fuzz target `tar_import` (tests/fuzz) drives it: not an interface for
/// programs, and not kept stable.
#[doc(hidden)]
pub mod fuzzing {
    use std::cell::RefCell;
    use std::path::Path;

    use crate::error::{IoContext, Result};
    use crate::repo::{Lock, Repository, StoredManifest};

    thread_local! {
        /// The repository of this thread's inputs, and how many revisions it holds.
        static REPO: RefCell<Option<(Repository, u32)>> = const { RefCell::new(None) };
    }

    /// Past this many revisions the repository is made anew, so that a long run does not
    /// fill the disk.
    const RENEW: u32 = 500;

    /// What one input came to.
    #[derive(Debug, PartialEq, Eq)]
    pub enum Outcome {
        /// The importer refused it (most inputs).
        Refused,
        /// Imported, and checked out (`Ok`) or not (the error: a tree the filesystem here
        /// cannot hold, such as an xattr it refuses, is no finding).
        Imported(std::result::Result<(), String>),
    }

    /// Writes `data` to `dir/input` and imports it, as `aurum import` reads a file (a tar
    /// stream, plain or compressed), into the repository `dir/repo` (made when absent) as a
    /// revision of `fuzz`; when it is taken, checks the revision out into `dir/tree` as
    /// `aurum checkout` does, and removes that again. Both write only under `dir`: the fuzz
    /// target asserts it. An `Err` is a failure of this harness (no repository), not of the
    /// input.
    pub fn import_and_checkout(dir: &Path, data: &[u8]) -> Result<Outcome> {
        let root = dir.join("repo");
        let input = dir.join("input");
        let tree = dir.join("tree");
        REPO.with(|cell| {
            let mut slot = cell.borrow_mut();
            if slot.as_ref().is_none_or(|(_, n)| *n >= RENEW) {
                *slot = None;
                match std::fs::remove_dir_all(&root) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e).at(&root),
                    _ => {}
                }
                std::fs::create_dir_all(&root).at(&root)?;
                crate::repo::init(&root)?;
                *slot = Some((Repository::open(&root, Lock::Exclusive)?, 0));
            }
            let Some((repo, count)) = slot.as_mut() else {
                unreachable!("set above")
            };
            std::fs::write(&input, data).at(&input)?;
            let rev = match super::import(repo, &input, "fuzz", "fuzz") {
                Ok((rev, _)) => rev,
                Err(_) => return Ok(Outcome::Refused),
            };
            *count += 1;
            // What the importer took must name only clean paths below the tree's root, hard
            // links included: the checkout's own refusal is a second line, not the first.
            for e in repo.manifest_entries(&rev.id)? {
                let e = e?;
                assert!(
                    crate::format::manifest::is_clean_path(&e.path),
                    "the import took the path {:?}",
                    String::from_utf8_lossy(&e.path)
                );
                if let crate::format::manifest::Kind::Hardlink { target } = &e.kind {
                    assert!(
                        !target.is_empty() && crate::format::manifest::is_clean_path(target),
                        "the import took a hard link to {:?}",
                        String::from_utf8_lossy(target)
                    );
                }
            }
            let manifest = StoredManifest { repo, id: rev.id };
            let checked_out = repo.blobs().and_then(|blobs| {
                crate::apply::checkout(&manifest, &blobs, &tree, &crate::progress::Quiet)
            });
            match std::fs::remove_dir_all(&tree) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e).at(&tree),
                _ => {}
            }
            Ok(Outcome::Imported(
                checked_out.map(|_| ()).map_err(|e| e.to_string()),
            ))
        })
    }
}

/// Stores the data of file member `m` as getimage would; keeps a copy in `keep` when given
/// (the archive's account files).
fn store_file<R: Read>(
    archive: &mut read::Reader<R>,
    m: &read::Member,
    sink: &std::sync::Mutex<crate::repo::BlobWriter>,
    keep: Option<&mut Option<Vec<u8>>>,
) -> Result<Kind> {
    let mut copy = keep.as_ref().map(|_| Vec::new());
    let extents = m.extents.as_ref().map(|x| dense_or_extents(x, m.size));
    let data_len = match &extents {
        Some(Some(x)) => x.iter().map(|e| e.1).sum(),
        _ => m.size,
    };
    let mut data = archive.data();
    let mut chunks = Vec::new();
    chunk::chunks(&mut data, data_len, |data| {
        if let Some(c) = &mut copy {
            c.extend_from_slice(data);
        }
        let id = Id::of(data);
        if sink.claim(&id)? {
            crate::capture::store(sink, &id, data)?;
        }
        chunks.push(Chunk {
            id,
            len: data.len() as u32,
        });
        Ok(())
    })?;
    if let (Some(keep), Some(copy)) = (keep, copy) {
        *keep = Some(copy);
    }
    Ok(Kind::File {
        size: m.size,
        chunks,
        extents: extents.flatten(),
    })
}

/// The error for a member whose type flag we do not read: refused, never left out quietly.
fn unknown_type(name: &[u8], flag: u8) -> crate::Error {
    let what = match flag {
        b'A' => "a Solaris ACL header, which aurum does not read",
        b'M' => "the continuation of a file from the previous volume of a multi-volume archive",
        b'N' => "an old GNU long-name record, which aurum does not read",
        b'I' => "star's inode-only record, which carries no content",
        _ => "a type aurum does not know",
    };
    invalid(format!(
        "archive member `{}` has type flag `{}`: {what}; refusing the archive rather than leaving the member out",
        String::from_utf8_lossy(name),
        char::from(flag).escape_default()
    ))
}

/// A directory the archive implies (a member's parent it does not list): root's, 0755, with the
/// archive's newest mtime.
fn implied_dir(path: Vec<u8>, mtime: i64) -> Entry {
    Entry {
        path,
        kind: Kind::Dir,
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime,
        mtime_nsec: 0,
        xattrs: vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_length_counts_itself() {
        let mut v = Vec::new();
        pax_record(&mut v, "mtime", b"1.5");
        assert_eq!(v, b"13 mtime=1.5\n");
        let mut v = Vec::new();
        pax_record(&mut v, "k", &[b'x'; 95]);
        assert_eq!(&v[..4], b"102 ");
        assert_eq!(v.len(), 102);
    }

    #[test]
    fn normalises_member_names() {
        assert_eq!(
            normalise(b"./etc/passwd").unwrap(),
            Some(b"etc/passwd".to_vec())
        );
        assert_eq!(normalise(b"./").unwrap(), None);
        assert_eq!(normalise(b"/usr//bin/").unwrap(), Some(b"usr/bin".to_vec()));
        assert!(normalise(b"../etc/shadow").is_err());
    }
}
