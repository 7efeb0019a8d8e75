//! A node's first revision onto a fresh root, written the way `checkout` writes.
//!
//! On an empty root (or fresh filesystems holding only their mount points) nothing is
//! replaced and nothing deleted, so the update engine's care for a running node buys nothing:
//! no undo area (there is nothing to roll back to), no temporary name and rename per file (no
//! old version to keep readable), and no staging of fetched blobs: a file made of one blob is
//! written, under its final name, as that blob arrives; only the blobs of larger files are
//! staged, and those files written once the fetch is done, in parallel. Directories are
//! opened once each (see [`Dirs`]), not once per file and path component.
//!
//! Crash safety comes from the journal instead: it is written, marked [`Journal::fresh`],
//! before the first entry, and removed only after everything is on disk and the state names
//! the revision. A run killed in between leaves a journal and no current revision: the node
//! is never taken for a complete one, and the rerun (an ordinary update finishing an
//! interrupted one) hashes every file and rewrites what is missing or half written.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use nix::sys::stat::{mkdirat, Mode};
use rayon::prelude::*;

use super::{Act, Engine, Provider, Step};
use crate::apply::node::{Journal, Node};
use crate::apply::{create_special, set_metadata, write_file, BlobSource};
use crate::error::{IoContext, Result};
use crate::format::manifest::{file_name, parent, Entry, Kind, Manifest};
use crate::format::Id;
use crate::progress::{Progress, Quiet};
use crate::sys::{self, shown};

/// At most this many directories are held open at once (a node's open-file limit may be
/// 1024); past it the set is emptied and filled again.
const OPEN_DIRS: usize = 512;

/// The directories of a fresh root, opened once each (from their parent when it is open).
struct Dirs<'a> {
    engine: &'a Engine,
    open: Mutex<HashMap<Vec<u8>, Arc<OwnedFd>>>,
    syncer: &'a sys::Syncer,
}

impl Dirs<'_> {
    fn get(&self, rel: &[u8]) -> Result<Arc<OwnedFd>> {
        if let Some(fd) = self.open.lock().expect("dirs lock").get(rel) {
            return Ok(fd.clone());
        }
        let fd = if rel.is_empty() {
            self.engine.dir(rel)?
        } else {
            let up = self.get(parent(rel))?;
            match nix::fcntl::openat(up.as_fd(), file_name(rel), sys::DIR_FLAGS, Mode::empty()) {
                Ok(fd) => fd,
                // Opened again from the root, so that the error names the path.
                Err(_) => self.engine.dir(rel)?,
            }
        };
        self.syncer.note(fd.as_fd());
        let fd = Arc::new(fd);
        let mut open = self.open.lock().expect("dirs lock");
        if open.len() >= OPEN_DIRS {
            open.clear();
        }
        open.insert(rel.to_vec(), fd.clone());
        Ok(fd)
    }
}

/// One blob, as a [`BlobSource`] for the file made of it alone.
struct One<'a>(&'a Id, &'a [u8]);

impl BlobSource for One<'_> {
    fn get(&self, id: &Id) -> Result<Vec<u8>> {
        debug_assert_eq!(id, self.0);
        Ok(self.1.to_vec())
    }
}

/// Writes a fresh root: begun before the fetch, fed every fetched blob, finished after it.
pub(super) struct Writer<'a> {
    engine: &'a Engine,
    /// The entries the run creates, in manifest order.
    created: Vec<&'a Entry>,
    /// The regular files among them, each with whether it is written yet.
    files: Vec<(&'a Entry, AtomicBool)>,
    /// The files made of one blob alone (no holes), by that blob.
    whole: HashMap<Id, Vec<usize>>,
    /// Blobs some other file needs too: staged as well.
    shared: HashSet<Id>,
    dirs: Dirs<'a>,
}

impl<'a> Writer<'a> {
    /// Writes `journal` (marked fresh), then makes the directories of `steps` (all of them
    /// creations, but for the metadata of directories already there, which the caller sets
    /// with every directory's at the end).
    pub(super) fn begin(
        engine: &'a Engine,
        node: &Node,
        manifest: &'a Manifest,
        steps: &[Step],
        journal: Journal,
        syncer: &'a sys::Syncer,
    ) -> Result<Writer<'a>> {
        node.begin(&journal)?;
        syncer.note(engine.disk.root_fd.as_fd());
        let created: Vec<&Entry> = steps
            .iter()
            .filter(|s| s.act == Act::Create)
            .map(|s| &manifest.entries[s.entry])
            .collect();
        let dirs = Dirs {
            engine,
            open: Mutex::new(HashMap::new()),
            syncer,
        };
        // Private until their metadata is set at the end; parents come first in a manifest.
        for e in created.iter().filter(|e| e.kind == Kind::Dir) {
            mkdirat(
                dirs.get(parent(&e.path))?.as_fd(),
                file_name(&e.path),
                Mode::from_bits_truncate(0o700),
            )
            .at(shown(&engine.disk.root, &e.path))?;
        }
        let files: Vec<(&Entry, AtomicBool)> = created
            .iter()
            .filter(|e| matches!(e.kind, Kind::File { .. }))
            .map(|e| (*e, AtomicBool::new(false)))
            .collect();
        let mut whole: HashMap<Id, Vec<usize>> = HashMap::new();
        let mut shared = HashSet::new();
        for (i, (e, _)) in files.iter().enumerate() {
            if let Kind::File {
                chunks, extents, ..
            } = &e.kind
            {
                match (chunks.as_slice(), extents) {
                    ([one], None) => whole.entry(one.id).or_default().push(i),
                    _ => shared.extend(chunks.iter().map(|c| c.id)),
                }
            }
        }
        Ok(Writer {
            engine,
            created,
            files,
            whole,
            shared,
            dirs,
        })
    }

    /// Writes every file made of `data` alone; true when the blob must be staged as well.
    pub(super) fn take(&self, id: &Id, data: &[u8]) -> Result<bool> {
        for &i in self.whole.get(id).into_iter().flatten() {
            let (e, done) = &self.files[i];
            self.write(e, &One(id, data), &Quiet)?;
            done.store(true, Ordering::Relaxed);
        }
        Ok(self.shared.contains(id) || !self.whole.contains_key(id))
    }

    fn write(&self, e: &Entry, blobs: &dyn BlobSource, progress: &dyn Progress) -> Result<()> {
        let root = &self.engine.disk.root;
        let dir = self.dirs.get(parent(&e.path))?;
        let name = file_name(&e.path);
        let file = write_file(dir.as_fd(), name, e, blobs, root, progress)?;
        set_metadata(dir.as_fd(), name, e, Some(&file), root, &|w| {
            self.engine.warn(w)
        })
    }

    /// Writes the files not written yet (from `staging`, or the node), in parallel, then the
    /// other entries in manifest order (hardlink targets exist before their links).
    pub(super) fn finish(self, staging: &Path, progress: &dyn Progress) -> Result<()> {
        let engine = self.engine;
        let left: Vec<&Entry> = self
            .files
            .iter()
            .filter(|(_, done)| !done.load(Ordering::Relaxed))
            .map(|(e, _)| *e)
            .collect();
        let total: u64 = left.iter().map(|e| e.data_len()).sum();
        progress.phase("writing", Some(total), true);
        let provider = Provider {
            engine,
            staging: staging.to_path_buf(),
        };
        left.par_iter()
            .try_for_each(|e| self.write(e, &provider, progress))?;
        progress.finish();
        for e in self
            .created
            .iter()
            .filter(|e| !matches!(e.kind, Kind::File { .. } | Kind::Dir))
        {
            let dir = self.dirs.get(parent(&e.path))?;
            let name = file_name(&e.path);
            create_special(
                dir.as_fd(),
                name,
                &engine.disk.root_fd,
                e,
                &engine.disk.root,
            )?;
            if !matches!(e.kind, Kind::Hardlink { .. }) {
                set_metadata(dir.as_fd(), name, e, None, &engine.disk.root, &|w| {
                    engine.warn(w)
                })?;
            }
        }
        Ok(())
    }
}
