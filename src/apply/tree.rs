//! The one writer of a fresh tree: entries that do not exist yet, written under their final
//! names. `checkout` (a revision into an empty directory) and an update onto an empty root
//! (`update::fresh`, a node's first revision, an install) both write through it.
//!
//! Nothing is replaced, so nothing needs a temporary name, a rename or an undo area; what makes
//! it fast is opening each directory as rarely as possible: every worker keeps the directories
//! it wrote into last ([`sys::DirCache`]), and entries come in path order (or, for a fresh
//! root, in the order their blobs arrive, which the cache's 16 directories mostly absorb), so
//! most files are created with one `openat` and no directory opened at all.
//!
//! [`TreeWriter::write_tree`] takes the entries as an iterator in path order and holds only a
//! bounded batch of files at a time (plus the directories, whose metadata goes on last,
//! deepest first), so that a manifest read as a stream can be written as one.

use std::borrow::Borrow;
use std::os::fd::BorrowedFd;
use std::path::Path;
use std::sync::Mutex;

use nix::sys::stat::{mkdirat, Mode};
use rayon::prelude::*;

use super::{
    create_special, gives_xattrs, set_metadata, set_metadata_of, set_metadata_root, write_file,
    BlobSource, Warnings,
};
use crate::error::{IoContext, Result};
use crate::format::manifest::{file_name, parent, Entry, Kind};
use crate::progress::Progress;
use crate::sys::{self, shown, DirCache};

/// Smallest file whose writeback [`TreeWriter::flushed_at_the_end`] starts at once: the
/// bytes are in the larger files, and a request per small file would cost more than it saves.
const WRITE_BACK_FROM: u64 = 64 << 10;

/// Files written per batch of [`TreeWriter::write_tree`]: enough to keep every core busy,
/// few enough that a batch of entries stays small in memory.
const BATCH: usize = 4096;

/// Files one worker writes in a row with its directory cache (contiguous in path order, so
/// mostly in one directory).
const RUN: usize = 64;

/// What [`TreeWriter::write_tree`] wrote.
#[derive(Debug, Default, Clone, Copy)]
pub struct TreeCounts {
    pub entries: u64,
    pub files: u64,
    pub bytes: u64,
}

/// Writes new entries beneath a root opened by the caller (see the module documentation).
pub struct TreeWriter<'a> {
    root: BorrowedFd<'a>,
    shown_root: &'a Path,
    /// Whether a device node the process may not make (not root) is a warning rather than an
    /// error: a checkout keeps going without devices, as it does without ownership.
    lenient_devices: bool,
    warnings: Warnings,
    /// Whether new entries get no xattrs from the kernel: the root has no default ACL, and
    /// every directory beneath it is made here and gets its own xattrs only at the end.
    bare: bool,
    /// The directory caches of the workers, each taken for a run of files and given back.
    lasts: Mutex<Vec<DirCache>>,
    /// Whether each file's writeback starts as soon as it is written (see
    /// [`TreeWriter::flushed_at_the_end`]).
    write_back: bool,
}

impl<'a> TreeWriter<'a> {
    pub fn new(root: BorrowedFd<'a>, shown_root: &'a Path, lenient_devices: bool) -> Self {
        TreeWriter {
            root,
            shown_root,
            lenient_devices,
            warnings: Warnings(Mutex::new(Vec::new())),
            bare: !gives_xattrs(root),
            lasts: Mutex::new(Vec::new()),
            write_back: false,
        }
    }

    /// The caller makes the tree durable when it is written (a node's fresh root, flushed
    /// before its state names the revision): the disk starts writing each file as soon as it
    /// is written ([`sys::start_writeback`]), while the rest is decompressed and written,
    /// rather than all of it during that last flush.
    pub fn flushed_at_the_end(&mut self) {
        self.write_back = true;
    }

    /// Notes a directory already there (a mount point) that new entries are made in: its
    /// default ACL, if any, would give them xattrs.
    pub fn beneath(&mut self, dir: BorrowedFd) {
        self.bare &= !gives_xattrs(dir);
    }

    /// What could not be kept (ownership when not root, xattrs the filesystem refuses).
    pub fn into_warnings(self) -> Vec<String> {
        self.warnings.0.into_inner().expect("warnings lock")
    }

    fn warn(&self, w: String) {
        self.warnings.push(w)
    }

    /// Calls `f` with the directory `rel`, through a directory cache of the pool.
    fn in_dir<T>(&self, rel: &[u8], f: impl FnOnce(BorrowedFd) -> Result<T>) -> Result<T> {
        let mut last = self.take_last();
        let r = match last.dir(self.root, rel, self.shown_root) {
            Ok(dir) => f(dir),
            Err(e) => Err(e),
        };
        self.give_back(last);
        r
    }

    fn take_last(&self) -> DirCache {
        self.lasts
            .lock()
            .expect("dirs lock")
            .pop()
            .unwrap_or_default()
    }

    fn give_back(&self, last: DirCache) {
        self.lasts.lock().expect("dirs lock").push(last)
    }

    /// Makes the directory `e`, private (0700) until [`TreeWriter::dir_metadata`] gives it its
    /// own at the end. Its parent must exist.
    pub fn make_dir(&self, e: &Entry) -> Result<()> {
        self.in_dir(parent(&e.path), |dir| {
            mkdirat(dir, file_name(&e.path), Mode::from_bits_truncate(0o700))
                .at(shown(self.shown_root, &e.path))
        })
    }

    /// Writes the regular file `e` with its content from `blobs` and its metadata.
    pub fn write_file(
        &self,
        e: &Entry,
        blobs: &dyn BlobSource,
        progress: &dyn Progress,
    ) -> Result<()> {
        let mut last = self.take_last();
        let r = self.write_file_with(&mut last, e, blobs, progress);
        self.give_back(last);
        r
    }

    fn write_file_with(
        &self,
        last: &mut DirCache,
        e: &Entry,
        blobs: &dyn BlobSource,
        progress: &dyn Progress,
    ) -> Result<()> {
        let dir = last.dir(self.root, parent(&e.path), self.shown_root)?;
        let name = file_name(&e.path);
        let file = write_file(dir, name, e, blobs, self.shown_root, progress)?;
        let warn = |w| self.warn(w);
        set_metadata_of(dir, name, e, Some(&file), self.shown_root, &warn, self.bare)?;
        if self.write_back && e.data_len() >= WRITE_BACK_FROM {
            sys::start_writeback(&file);
        }
        Ok(())
    }

    /// Writes the regular files `files` in parallel: the work is decompressing, hashing and
    /// writing. Each worker takes a run of neighbours, which share their directories.
    pub fn write_files<E: Borrow<Entry> + Sync>(
        &self,
        files: &[E],
        blobs: &dyn BlobSource,
        progress: &dyn Progress,
    ) -> Result<()> {
        // Short lists (a fresh root's few files of several blobs, written after the fetch)
        // still go to every core.
        let run = super::run_length(files.len(), RUN);
        files.par_chunks(run).try_for_each(|run| {
            let mut last = self.take_last();
            let r = run
                .iter()
                .try_for_each(|e| self.write_file_with(&mut last, e.borrow(), blobs, progress));
            self.give_back(last);
            r
        })
    }

    /// Makes the symlink, device, fifo, socket or hardlink `e` (a hardlink's target must be
    /// written already) with its metadata.
    pub fn make_special(&self, e: &Entry) -> Result<()> {
        self.in_dir(parent(&e.path), |dir| {
            let name = file_name(&e.path);
            match create_special(dir, name, self.root, e, self.shown_root) {
                // Only root may make device nodes.
                Err(crate::Error::Io { source, .. })
                    if self.lenient_devices
                        && source.raw_os_error() == Some(libc::EPERM)
                        && matches!(e.kind, Kind::Char { .. } | Kind::Block { .. }) =>
                {
                    self.warn(format!(
                        "{}: cannot make a device node (run as root to keep devices)",
                        shown(self.shown_root, &e.path).display()
                    ));
                    return Ok(());
                }
                r => r?,
            }
            if matches!(e.kind, Kind::Hardlink { .. }) {
                return Ok(());
            }
            let warn = |w| self.warn(w);
            set_metadata_of(dir, name, e, None, self.shown_root, &warn, self.bare)
        })
    }

    /// Gives the directory `e` (the root when its path is empty) its owner, mode, xattrs and
    /// times. Called deepest first, after everything inside it is written.
    pub fn dir_metadata(&self, e: &Entry) -> Result<()> {
        if e.path.is_empty() {
            return set_metadata_root(self.root, e, self.shown_root, &|w| self.warn(w));
        }
        self.in_dir(parent(&e.path), |dir| {
            set_metadata(dir, file_name(&e.path), e, None, self.shown_root, &|w| {
                self.warn(w)
            })
        })
    }

    /// Writes every entry of `entries` (in path order, parents before children, a hardlink
    /// after its target, the root first), content from `blobs`: directories as they come,
    /// files in parallel batches, the other entries after the files of their batch, and
    /// directory metadata at the end, deepest first.
    pub fn write_tree<E, I>(
        &self,
        entries: I,
        blobs: &dyn BlobSource,
        progress: &dyn Progress,
    ) -> Result<TreeCounts>
    where
        E: Borrow<Entry> + Send + Sync,
        I: IntoIterator<Item = E>,
    {
        let mut counts = TreeCounts::default();
        let mut dirs: Vec<E> = Vec::new();
        let mut files: Vec<E> = Vec::new();
        let mut others: Vec<E> = Vec::new();
        let flush = |files: &mut Vec<E>, others: &mut Vec<E>| -> Result<()> {
            self.write_files(files, blobs, progress)?;
            files.clear();
            others
                .drain(..)
                .try_for_each(|e| self.make_special(e.borrow()))
        };
        for item in entries {
            let e = item.borrow();
            counts.entries += 1;
            match &e.kind {
                Kind::Dir => {
                    if !e.path.is_empty() {
                        self.make_dir(e)?;
                    }
                    dirs.push(item);
                }
                Kind::File { .. } => {
                    counts.files += 1;
                    counts.bytes += e.data_len();
                    files.push(item);
                    if files.len() >= BATCH {
                        flush(&mut files, &mut others)?;
                    }
                }
                _ => others.push(item),
            }
        }
        flush(&mut files, &mut others)?;
        dirs.iter()
            .rev()
            .try_for_each(|e| self.dir_metadata(e.borrow()))?;
        Ok(counts)
    }
}
