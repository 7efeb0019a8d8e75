//! Finding the aurum repositories inside a tree being captured, and recording each by
//! reference (see [`crate::format::embedded`] and [`crate::repo::embedded`]).
//!
//! A repository is recognised by its `FORMAT` file beside its catalog `aurum.db`, at any
//! depth. Its catalog is snapshotted (SQLite's `VACUUM INTO`, a consistent copy even while
//! the master works) and stored as blobs; its packs and manifests are taken into the
//! capturing repository under their own names (already there when it was pulled from it);
//! the aurum-managed paths of its directory leave the scan, and the directory's entry gets
//! the record.

use std::collections::HashSet;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

use super::scan::Scanned;
use super::BlobSink;
use crate::catalog::Catalog;
use crate::error::{invalid, IoContext, Result};
use crate::format::embedded::{self as record, EmbeddedRepo};
use crate::format::manifest::{display_path, file_name, parent, Entry, Kind};
use crate::format::FORMAT_VERSION;
use crate::repo::embedded::{take_in, Pins, TakenIn};
use crate::repo::{BlobWriter, Repository};

/// One repository a capture found and recorded.
#[derive(Clone, Debug, Serialize)]
pub struct Embedded {
    /// Its directory in the image (`/var/lib/aurum`).
    pub path: String,
    pub images: u64,
    pub revisions: u64,
    pub packs: u64,
    /// Bytes of its catalog snapshot (stored as blobs, like a file).
    pub catalog_bytes: u64,
    #[serde(flatten)]
    pub taken_in: TakenIn,
}

/// Whether `dir` holds an aurum repository: its `FORMAT` and its catalog, regular files.
fn is_repository(dir: &Path) -> bool {
    let file = |name: &str| {
        std::fs::symlink_metadata(dir.join(name)).is_ok_and(|m| m.file_type().is_file())
    };
    file("FORMAT") && file("aurum.db")
}

/// Finds repositories in a local capture's scan as it streams by (see the module doc):
/// each directory is looked at on disk as its entry passes (two `lstat`s), so that its
/// record goes on its entry before the entries beneath it follow.
pub struct Finder {
    root: PathBuf,
    /// Directories of the repositories found so far (manifest paths).
    found: Vec<Vec<u8>>,
    pub embedded: Vec<Embedded>,
}

impl Finder {
    /// A finder for the tree at `root`.
    pub fn new(root: &Path) -> Finder {
        Finder {
            root: root.to_path_buf(),
            found: Vec::new(),
            embedded: Vec::new(),
        }
    }

    /// Takes the next entry of the scan: `None` for an aurum-managed path of a repository
    /// found (left out), else the entry, with a record when it is a repository's directory.
    pub fn take(
        &mut self,
        repo: &mut Repository,
        sink: &Mutex<BlobWriter>,
        mut s: Scanned,
    ) -> Result<Option<Scanned>> {
        let path = &s.entry.path;
        if record::managed_by_any(path, &self.found) {
            return Ok(None);
        }
        if s.entry.kind != Kind::Dir
            || !is_repository(&self.root.join(std::ffi::OsStr::from_bytes(path)))
        {
            return Ok(Some(s));
        }
        let shown = display_path(path);
        let (rec, report) = record_one(repo, &self.root, path, sink).map_err(|e| {
            e.with_note(&format!(
                " (the aurum repository at {shown} in the golden client; `getimage --no-embedded-repos` captures it as plain files)"
            ))
        })?;
        record::attach(&mut s.entry, &rec);
        self.found.push(s.entry.path.clone());
        self.embedded.push(report);
        Ok(Some(s))
    }
}

/// The repositories a scan passes that it cannot record (a remote capture reads no file of
/// the golden client but through its agent): their directories, known by a `FORMAT` and an
/// `aurum.db` side by side, so that the administrator is told they went in as plain files.
#[derive(Default)]
pub struct Unrecorded {
    formats: HashSet<Vec<u8>>,
    catalogs: HashSet<Vec<u8>>,
    found: Vec<Vec<u8>>,
}

impl Unrecorded {
    /// Looks at the next entry of the scan.
    pub fn see(&mut self, e: &Entry) {
        if !matches!(e.kind, Kind::File { .. }) {
            return;
        }
        let dir = parent(&e.path).to_vec();
        let (mine, other) = match file_name(&e.path) {
            b"FORMAT" => (&mut self.formats, &self.catalogs),
            b"aurum.db" => (&mut self.catalogs, &self.formats),
            _ => return,
        };
        if other.contains(&dir) {
            self.found.push(dir);
        } else {
            mine.insert(dir);
        }
    }

    /// A warning for each repository seen.
    pub fn warnings(&self) -> Vec<String> {
        self.found
            .iter()
            .map(|dir| {
                format!(
                    "{}: an aurum repository, captured as plain files (its packs stored again); \
                     only a capture of a root on this machine (mounted, or a chroot) records it \
                     by reference; --no-embedded-repos says plain files are meant",
                    display_path(dir)
                )
            })
            .collect()
    }
}

fn record_one(
    repo: &mut Repository,
    root: &Path,
    dir: &[u8],
    sink: &Mutex<BlobWriter>,
) -> Result<(EmbeddedRepo, Embedded)> {
    let abs = root.join(std::ffi::OsStr::from_bytes(dir));
    let format_file = abs.join("FORMAT");
    let text = std::fs::read(&format_file).at(&format_file)?;
    let format = crate::repo::check_format(&abs.display().to_string(), &text)?;
    if format != FORMAT_VERSION {
        return Err(invalid(format!(
            "{} is a repository of format {format}, which this aurum reads but does not embed: run any aurum command on it once (it is then brought to format {FORMAT_VERSION})",
            abs.display()
        )));
    }
    let work = tempfile::tempdir_in(crate::store::tmp_dir(&repo.root))
        .at(crate::store::tmp_dir(&repo.root))?;
    let snapshot = work.path().join("catalog");
    Catalog::snapshot(&abs.join("aurum.db"), &snapshot)?;
    // Read through a copy: opening migrates, and the snapshot is stored as its aurum left it.
    let reading = work.path().join("reading");
    std::fs::copy(&snapshot, &reading).at(&reading)?;
    let (packs, manifests, (images, revisions)) = {
        let cat = Catalog::open(&reading)?;
        // Oldest first: the order a rebuild records them in again.
        let mut packs: Vec<_> = cat
            .packs()?
            .into_iter()
            .map(|(id, size, _)| (id, size))
            .collect();
        packs.reverse();
        let mut manifests = cat.all_revision_ids()?;
        manifests.sort();
        let counts = (
            cat.images()?.len() as u64,
            cat.all_revisions()?.len() as u64,
        );
        (packs, manifests, counts)
    };
    Catalog::strip_snapshot(&snapshot)?;
    let file = std::fs::File::open(&snapshot).at(&snapshot)?;
    let size = file.metadata().at(&snapshot)?.len();
    let content = super::file_chunks(file, size, false, |_, id, data| {
        if sink.claim(id)? {
            super::store(sink, id, data)?;
        }
        Ok(())
    })?;
    // The manifests of repositories embedded in its revisions are its too (it holds them
    // for those records): a record names everything a rebuild copies, at every depth.
    let mut pins = Pins::default();
    for id in &manifests {
        pins.add_manifest(&abs, id)?;
    }
    let mut manifests = manifests;
    manifests.extend(pins.manifests);
    manifests.sort();
    manifests.dedup();
    let rec = EmbeddedRepo {
        format,
        catalog_size: size,
        catalog: content.chunks,
        packs,
        manifests,
    };
    let taken_in = take_in(repo, &abs, &rec)?;
    let report = Embedded {
        path: display_path(dir),
        images,
        revisions,
        packs: rec.packs.len() as u64,
        catalog_bytes: size,
        taken_in,
    };
    Ok((rec, report))
}
