//! A node's first revision onto a fresh root, written by the one fresh-tree writer
//! ([`TreeWriter`], which `checkout` uses too).
//!
//! On an empty root (or fresh filesystems holding only their mount points) nothing is
//! replaced and nothing deleted, so the update engine's care for a running node buys nothing:
//! no undo area (there is nothing to roll back to), no temporary name and rename per file (no
//! old version to keep readable), and no staging of fetched blobs: a file made of one blob is
//! written, under its final name, as that blob arrives; only the blobs of larger files are
//! staged, and those files written once the fetch is done, in parallel.
//!
//! Crash safety comes from the journal instead: it is written, marked [`Journal::fresh`],
//! before the first entry, and removed only after everything is on disk and the state names
//! the revision. A run killed in between leaves a journal and no current revision: the node
//! is never taken for a complete one, and the rerun (an ordinary update finishing an
//! interrupted one) hashes every file and rewrites what is missing or half written.

use std::collections::{HashMap, HashSet};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{Act, Engine, Provider, Step};
use crate::apply::node::{Journal, Node};
use crate::apply::tree::TreeWriter;
use crate::apply::BlobSource;
use crate::error::Result;
use crate::format::manifest::{Entry, Kind, Manifest};
use crate::format::Id;
use crate::progress::{Progress, Quiet};
use crate::sys;

/// One blob, as a [`BlobSource`] for the file made of it alone.
struct One<'a>(&'a Id, &'a [u8]);

impl BlobSource for One<'_> {
    fn get(&self, id: &Id) -> Result<Vec<u8>> {
        debug_assert_eq!(id, self.0);
        Ok(self.1.to_vec())
    }

    fn with_blob(&self, id: &Id, use_it: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        debug_assert_eq!(id, self.0);
        use_it(self.1)
    }
}

/// Writes a fresh root: begun before the fetch, fed every fetched blob, finished after it.
pub(super) struct Writer<'a> {
    engine: &'a Engine,
    tree: TreeWriter<'a>,
    /// The entries the run creates, in manifest order.
    created: Vec<&'a Entry>,
    /// The regular files among them, each with whether it is written yet.
    files: Vec<(&'a Entry, AtomicBool)>,
    /// The files made of one blob alone (no holes), by that blob.
    whole: HashMap<Id, Vec<usize>>,
    /// Blobs some other file needs too: staged as well.
    shared: HashSet<Id>,
}

impl<'a> Writer<'a> {
    /// Writes `journal` (marked fresh), then makes the directories of `steps` (all of them
    /// creations, but for the metadata of directories already there, which the caller sets
    /// with every directory's at the end). Notes in `syncer` the filesystems of the root and
    /// of those directories (mount points), where every new entry lands.
    pub(super) fn begin(
        engine: &'a Engine,
        node: &Node,
        manifest: &'a Manifest,
        steps: &[Step],
        journal: Journal,
        syncer: &sys::Syncer,
    ) -> Result<Writer<'a>> {
        node.begin(&journal)?;
        syncer.note(engine.disk.root_fd.as_fd());
        let mut tree = TreeWriter::new(engine.disk.root_fd.as_fd(), &engine.disk.root, false);
        tree.flushed_at_the_end();
        for s in steps.iter().filter(|s| s.act == Act::Meta) {
            let dir = engine.dir(&manifest.entries[s.entry].path)?;
            syncer.note(dir.as_fd());
            tree.beneath(dir.as_fd());
        }
        let created: Vec<&Entry> = steps
            .iter()
            .filter(|s| s.act == Act::Create)
            .map(|s| &manifest.entries[s.entry])
            .collect();
        // Parents come first in a manifest.
        for e in created.iter().filter(|e| e.kind == Kind::Dir) {
            tree.make_dir(e)?;
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
            tree,
            created,
            files,
            whole,
            shared,
        })
    }

    /// Writes every file made of `data` alone; true when the blob must be staged as well.
    pub(super) fn take(&self, id: &Id, data: &[u8]) -> Result<bool> {
        for &i in self.whole.get(id).into_iter().flatten() {
            let (e, done) = &self.files[i];
            self.tree.write_file(e, &One(id, data), &Quiet)?;
            done.store(true, Ordering::Relaxed);
        }
        Ok(self.shared.contains(id) || !self.whole.contains_key(id))
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
        self.tree.write_files(&left, &provider, progress)?;
        progress.finish();
        for e in self
            .created
            .iter()
            .filter(|e| !matches!(e.kind, Kind::File { .. } | Kind::Dir))
        {
            self.tree.make_special(e)?;
        }
        for w in self.tree.into_warnings() {
            engine.warn(w);
        }
        Ok(())
    }
}
