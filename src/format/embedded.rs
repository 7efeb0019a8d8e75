//! Embedded repositories: the record a manifest keeps of an aurum repository found inside a
//! captured tree (a cluster master's root holding its own repository), and which paths of such
//! a repository's directory are aurum's own.
//!
//! A capture does not store an embedded repository's packs and manifests as file content (that
//! would store every image twice). It keeps, on the entry of the repository's directory, a
//! reserved attribute named [`RECORD`] holding an [`EmbeddedRepo`]: the chunks of a snapshot
//! of its catalog, and the ids of its packs and manifests, which the capturing repository
//! holds once, by reference (gc keeps them alive through the record). The aurum-managed
//! paths of the directory ([`is_managed`]) are left out of the manifest; checkout, install and
//! updateclient rebuild them from the record.
//!
//! The attribute's name has no namespace (`user.`, `security.`, ...), so no real extended
//! attribute can take it; apply never sets it on disk. A manifest holding one is written with
//! the second manifest magic, so that an aurum too old to know the record refuses the
//! manifest instead of checking out a repository without its packs.

use super::manifest::{Chunk, Entry};
use super::{Id, Reader, Writer};
use crate::error::{corrupt, invalid, Result};

/// The name of the reserved attribute that holds the record.
pub const RECORD: &[u8] = b"aurum.repository";

/// Version of the record's encoding; a newer one is refused with a message to upgrade.
pub const RECORD_VERSION: u64 = 1;

/// What a revision keeps of a repository embedded in its tree.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EmbeddedRepo {
    /// The repository's format (its `FORMAT` file).
    pub format: u32,
    /// Size of the catalog snapshot (`aurum.db` without its stat cache, blob index and pack
    /// list, which a rebuild makes again from the pack indexes).
    pub catalog_size: u64,
    /// Its chunks, stored as any file's content.
    pub catalog: Vec<Chunk>,
    /// Packs (id, size), oldest first, held by the capturing repository under the same names.
    pub packs: Vec<(Id, u64)>,
    /// Manifests of every revision the catalog snapshot records, held likewise.
    pub manifests: Vec<Id>,
}

impl EmbeddedRepo {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.var(RECORD_VERSION);
        w.var(u64::from(self.format));
        w.var(self.catalog_size);
        w.var(self.catalog.len() as u64);
        for c in &self.catalog {
            w.id(&c.id);
            w.var(u64::from(c.len));
        }
        w.var(self.packs.len() as u64);
        for (id, size) in &self.packs {
            w.id(id);
            w.var(*size);
        }
        w.var(self.manifests.len() as u64);
        for id in &self.manifests {
            w.id(id);
        }
        w.buf
    }

    /// Decodes a record; `at` (the directory, as shown) goes into the errors.
    pub fn decode(data: &[u8], at: &str) -> Result<EmbeddedRepo> {
        let mut r = Reader::new(data, "embedded repository record");
        let version = r.var()?;
        if version > RECORD_VERSION {
            return Err(invalid(format!(
                "{at} holds an embedded repository recorded by a newer aurum (record version {version}, this aurum reads up to {RECORD_VERSION}): upgrade aurum"
            )));
        }
        let format = u32::try_from(r.var()?)
            .map_err(|_| corrupt(format!("{at}: embedded repository format out of range")))?;
        let catalog_size = r.var()?;
        let n = r.var()?;
        let mut catalog = Vec::with_capacity(n.min(1 << 16) as usize);
        for _ in 0..n {
            let id = r.id()?;
            let len = u32::try_from(r.var()?)
                .map_err(|_| corrupt(format!("{at}: catalog chunk length out of range")))?;
            catalog.push(Chunk { id, len });
        }
        if catalog.iter().map(|c| u64::from(c.len)).sum::<u64>() != catalog_size {
            return Err(corrupt(format!(
                "{at}: the embedded repository's catalog chunks do not add up to its size"
            )));
        }
        let n = r.var()?;
        let mut packs = Vec::with_capacity(n.min(1 << 16) as usize);
        for _ in 0..n {
            packs.push((r.id()?, r.var()?));
        }
        let n = r.var()?;
        let mut manifests = Vec::with_capacity(n.min(1 << 16) as usize);
        for _ in 0..n {
            manifests.push(r.id()?);
        }
        if !r.at_end() {
            return Err(corrupt(format!(
                "{at}: embedded repository record has trailing bytes"
            )));
        }
        Ok(EmbeddedRepo {
            format,
            catalog_size,
            catalog,
            packs,
            manifests,
        })
    }
}

/// The record an entry carries, undecoded.
pub fn record_of(e: &Entry) -> Option<&[u8]> {
    e.xattrs
        .iter()
        .find(|(k, _)| k == RECORD)
        .map(|(_, v)| v.as_slice())
}

/// The record an entry carries, decoded.
pub fn decode_record(e: &Entry) -> Result<Option<EmbeddedRepo>> {
    record_of(e)
        .map(|r| EmbeddedRepo::decode(r, &e.display()))
        .transpose()
}

/// Whether an xattr name is aurum's own (never set on or read from a disk).
pub fn is_reserved(name: &[u8]) -> bool {
    name == RECORD
}

/// Puts `record` on `e`, keeping its xattrs sorted by name.
pub fn attach(e: &mut Entry, record: &EmbeddedRepo) {
    e.xattrs.retain(|(k, _)| k != RECORD);
    let at = e.xattrs.partition_point(|(k, _)| k.as_slice() < RECORD);
    e.xattrs.insert(at, (RECORD.to_vec(), record.encode()));
}

/// Names in a repository's directory that are aurum's: what a capture leaves out and a
/// rebuild writes. (The directory's other files, a README, a site script, are captured as
/// files.)
const MANAGED: &[&[u8]] = &[
    b"FORMAT",
    b"aurum.db",
    b"aurum.db-wal",
    b"aurum.db-shm",
    b"aurum.db-journal",
    b"lock",
    b"tmp",
    b"public",
];

/// Whether `path` (a manifest path) is one of the aurum-managed paths of the repository
/// whose directory is `repo` (a manifest path too), or lies under one.
pub fn is_managed(path: &[u8], repo: &[u8]) -> bool {
    let rest = if repo.is_empty() {
        path
    } else {
        match path.strip_prefix(repo).and_then(|r| r.strip_prefix(b"/")) {
            Some(r) => r,
            None => return false,
        }
    };
    let first = rest.split(|&b| b == b'/').next().unwrap_or_default();
    MANAGED.contains(&first)
}

/// Whether `path` is managed by any of the repositories at `repos`.
pub fn managed_by_any(path: &[u8], repos: &[Vec<u8>]) -> bool {
    repos.iter().any(|r| is_managed(path, r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_refuse_newer_versions() {
        let r = EmbeddedRepo {
            format: 2,
            catalog_size: 7,
            catalog: vec![Chunk {
                id: Id::of(b"c"),
                len: 7,
            }],
            packs: vec![(Id::of(b"p"), 1234)],
            manifests: vec![Id::of(b"m")],
        };
        assert_eq!(EmbeddedRepo::decode(&r.encode(), "/x").unwrap(), r);
        let mut newer = r.encode();
        newer[0] = 9;
        let err = EmbeddedRepo::decode(&newer, "/x").unwrap_err().to_string();
        assert!(
            err.contains("newer aurum") && err.contains("upgrade"),
            "{err}"
        );
        assert!(EmbeddedRepo::decode(&r.encode()[..10], "/x").is_err());
    }

    #[test]
    fn managed_paths_are_aurums_own() {
        assert!(is_managed(b"srv/repo/public/packs/ab/x.pack", b"srv/repo"));
        assert!(is_managed(b"srv/repo/aurum.db", b"srv/repo"));
        assert!(is_managed(b"srv/repo/tmp", b"srv/repo"));
        assert!(!is_managed(b"srv/repo/README", b"srv/repo"));
        assert!(!is_managed(b"srv/repo", b"srv/repo"));
        assert!(!is_managed(b"srv/repository/public", b"srv/repo"));
        assert!(is_managed(b"public/x", b""));
    }
}
