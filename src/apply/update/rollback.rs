//! Rollback by rename: `aurum rollback` right after an update puts back what that update moved
//! aside, one `rename` per entry, from the node's own undo area, without reading or writing a
//! byte of content and without looking at the rest of the tree.
//!
//! It is taken only when it is sure to give the tree the full engine would: the node's one
//! undo area belongs to the update that left it on its current revision (every entry there
//! looks like the previous revision's, by kind, size and mtime), every path the two revisions
//! hold differently is either in that area, created by the update, or differs in metadata
//! only, and nothing was changed by hand since (each path to restore or remove still looks like
//! the current revision's). Otherwise the full engine runs, as it always did.
//!
//! Each entry it replaces is kept first in the rollback's own undo area (a hard link; a
//! directory is moved), so the path never goes missing and the next rollback, forward again,
//! is local and as cheap. A journal names the run before the first rename: every rename is
//! atomic, so a kill leaves each path old or new, and the rerun (the full engine finishing an
//! interrupted rollback) completes it from both areas.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashSet};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::Instant;

use nix::fcntl::renameat;

use super::{claim_node, Engine, Run, UpdateReport};
use crate::apply::disk::{is_under, Stat};
use crate::apply::node::STATE_DIR;
use crate::apply::undo::{self, UndoArea};
use crate::apply::{set_metadata, set_metadata_root, set_mtime};
use crate::error::{IoContext, Result};
use crate::excludes::Excludes;
use crate::format::manifest::{file_name, parent, Entry, Kind, Manifest};
use crate::format::report::NodeAction;
use crate::sys::{self, shown, DirCache};

/// What a rollback by rename does, every part of it checked before the first write.
pub(super) struct Restore {
    /// The update's undo area.
    area: PathBuf,
    /// Tree paths brought back from `area`, in path order.
    back: Vec<Back>,
    /// Paths the update created (the top-most of each subtree), moved into the rollback's area.
    created: Vec<Vec<u8>>,
    /// Entries of the previous revision whose metadata alone differs, and whether only their
    /// mtime is to be set ([`Times`]).
    meta: Vec<(usize, Times)>,
    /// Directories whose metadata is set at the end, deepest first.
    dirs: BTreeSet<Vec<u8>>,
}

/// Which metadata a rollback sets on a file, symlink or special it does not replace.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Times {
    /// The revisions differ in the mtime alone (most of a package upgrade's metadata-only
    /// changes), and owner, mode and xattrs on disk are the revisions' (nothing changed them
    /// by hand): `utimensat` only, not the owner, mode and xattr calls that would set what is
    /// already there.
    Only,
    /// All of it is set.
    AndMore,
}

impl Times {
    /// What `now` (on disk; `xattrs` reads its xattrs) needs to become `want`, when it is the
    /// entry `had` of the current revision.
    fn needed(
        had: &Entry,
        want: &Entry,
        now: &Stat,
        xattrs: impl FnOnce() -> Option<sys::Xattrs>,
    ) -> Times {
        let same_but_mtime = (had.mode, had.uid, had.gid, &had.xattrs)
            == (want.mode, want.uid, want.gid, &want.xattrs);
        let untouched = || {
            (now.uid, now.gid) == (had.uid, had.gid)
                && (matches!(had.kind, Kind::Symlink { .. }) || now.mode & 0o7777 == had.mode)
                && xattrs().is_some_and(|x| crate::apply::same_xattrs(&x, &had.xattrs))
        };
        if same_but_mtime && untouched() {
            Times::Only
        } else {
            Times::AndMore
        }
    }
}

/// One entry put back from the update's undo area.
struct Back {
    rel: Vec<u8>,
    /// Its file name in the area.
    file: Vec<u8>,
    /// What the path holds now is kept in the rollback's own area first: `Some(true)` moved
    /// there (a directory, or anything a directory replaces), `Some(false)` linked (the path
    /// never goes missing), `None`: the path holds nothing.
    keep: Option<bool>,
    /// Its metadata differs from the previous revision's (changed by hand before the last
    /// rollback, which kept it so): set after the rename.
    fix: bool,
}

/// Whether the disk entry `st` looks like `e` (a resolved entry): same kind, and for a regular
/// file the same size and mtime.
fn looks_like(st: &Stat, e: &Entry) -> bool {
    match &e.kind {
        Kind::File { size, .. } => {
            same_kind(st, e)
                && st.size == *size
                && (st.mtime, st.mtime_nsec) == (e.mtime, e.mtime_nsec)
        }
        _ => same_kind(st, e),
    }
}

/// Whether the disk entry `st` is of `e`'s kind (a resolved entry).
fn same_kind(st: &Stat, e: &Entry) -> bool {
    let fmt = st.format();
    match &e.kind {
        Kind::File { .. } | Kind::Hardlink { .. } => fmt == libc::S_IFREG,
        Kind::Dir => fmt == libc::S_IFDIR,
        Kind::Symlink { .. } => fmt == libc::S_IFLNK,
        Kind::Char { .. } => fmt == libc::S_IFCHR,
        Kind::Block { .. } => fmt == libc::S_IFBLK,
        Kind::Fifo => fmt == libc::S_IFIFO,
        Kind::Socket => fmt == libc::S_IFSOCK,
    }
}

/// Whether `a` and `b` (same path, same kind and content) have the same owner, mode, xattrs
/// and mtime. A directory's mtime counts too: the update set it, so the rollback sets it back.
fn same_metadata(a: &Entry, b: &Entry) -> bool {
    (a.mode, a.uid, a.gid, &a.xattrs, a.mtime, a.mtime_nsec)
        == (b.mode, b.uid, b.gid, &b.xattrs, b.mtime, b.mtime_nsec)
}

/// The rollback by rename `run` can make, or `None` when the full engine must run.
pub(super) fn plan(run: &Run, engine: &Engine) -> Result<Option<Restore>> {
    let opts = run.opts;
    let (Some(cur), Some(from), Some(prev)) = (&run.current, &run.from, &run.state.previous) else {
        return Ok(None);
    };
    if opts.action != NodeAction::Rollback
        || opts.dry_run
        || opts.verify_local
        || opts.no_delete
        || run.undoing.is_some()
        || run.journal.is_some()
        || run.state.current.as_ref() != Some(from)
        || !run.to.same_tree(prev)
        // A repository the revisions embed differently is rebuilt, not renamed back.
        || !crate::apply::embedded::changed(&run.node.root, run.manifest, Some(cur)).is_empty()
    {
        return Ok(None);
    }
    let areas = undo::areas(&run.node.dir.join("undo"))?;
    let [area] = areas.as_slice() else {
        return Ok(None);
    };
    let mut index: Vec<(Vec<u8>, Vec<u8>)> = undo::entries(area)
        .into_iter()
        .filter_map(|(file, rel)| Some((rel, file.file_name()?.as_bytes().to_vec())))
        .collect();
    index.sort();
    if index.windows(2).any(|w| w[0].0 == w[1].0) {
        return Ok(None);
    }
    match diff(run.manifest, cur, &index, engine, area, &opts.excludes)? {
        Some(mut r) => {
            r.area = area.clone();
            Ok(Some(r))
        }
        None => Ok(None),
    }
}

/// Walks the previous revision `prev` and the current `cur` side by side (both sorted by path)
/// against the undo `index` (sorted), checking the disk as it goes.
fn diff(
    prev: &Manifest,
    cur: &Manifest,
    index: &[(Vec<u8>, Vec<u8>)],
    engine: &Engine,
    area: &std::path::Path,
    excludes: &Excludes,
) -> Result<Option<Restore>> {
    let area_fd = sys::open_root(area)?;
    let (tree_dir, mut area_dir) = (RefCell::new(DirCache::default()), DirCache::default());
    // Asks `look` about the tree path `rel`, in its directory (kept from the last call).
    fn in_tree<T>(
        last: &RefCell<DirCache>,
        engine: &Engine,
        rel: &[u8],
        look: impl FnOnce(BorrowedFd, &[u8]) -> Option<T>,
    ) -> Option<T> {
        let mut last = last.borrow_mut();
        let dir = last
            .dir(engine.disk.root_fd.as_fd(), parent(rel), &engine.disk.root)
            .ok()?;
        look(dir, file_name(rel))
    }
    let tree_stat = |rel: &[u8]| -> Option<Stat> {
        in_tree(&tree_dir, engine, rel, |dir, name| {
            sys::lstat_at(dir, name).ok().map(|s| Stat::from(&s))
        })
    };
    let tree_xattrs = |rel: &[u8]| -> Option<sys::Xattrs> {
        in_tree(&tree_dir, engine, rel, |dir, name| {
            sys::xattrs_at(dir, name).ok()
        })
    };
    let mut r = Restore {
        area: PathBuf::new(),
        back: Vec::new(),
        created: Vec::new(),
        meta: Vec::new(),
        dirs: BTreeSet::new(),
    };
    let state_dir = STATE_DIR.as_bytes();
    // Paths handled whole (restored, removed, excluded): nothing below them is looked at.
    let mut done: HashSet<&[u8]> = HashSet::new();
    let under_done = |done: &HashSet<&[u8]>, path: &[u8]| {
        let mut p = path;
        while !p.is_empty() {
            p = parent(p);
            if done.contains(p) {
                return true;
            }
        }
        false
    };
    let (mut i, mut j, mut k) = (0, 0, 0);
    loop {
        let p = prev.entries.get(i);
        let c = cur.entries.get(j);
        let path: &[u8] = match (p, c) {
            (None, None) => break,
            (Some(p), None) => &p.path,
            (None, Some(c)) => &c.path,
            (Some(p), Some(c)) => p.path.as_slice().min(c.path.as_slice()),
        };
        let p = p.filter(|e| e.path == path);
        let c = c.filter(|e| e.path == path);
        i += usize::from(p.is_some());
        j += usize::from(c.is_some());
        while index.get(k).is_some_and(|(rel, _)| rel.as_slice() < path) {
            // An area entry for a path neither revision has: not this update's area.
            if !under_done(&done, &index[k].0) {
                return Ok(None);
            }
            k += 1;
        }
        let indexed = index.get(k).filter(|(rel, _)| rel.as_slice() == path);
        k += usize::from(indexed.is_some());
        if path.is_empty() {
            if let (Some(p), Some(c)) = (p, c) {
                if !same_metadata(p, c) {
                    r.dirs.insert(Vec::new());
                }
            }
            continue;
        }
        if path == state_dir || is_under(path, state_dir) || under_done(&done, path) {
            continue;
        }
        let is_dir = p.or(c).is_some_and(|e| e.kind == Kind::Dir);
        if excludes.excluded(path, is_dir) {
            if is_dir {
                done.insert(path);
            }
            continue;
        }
        if let Some((_, file)) = indexed {
            // What the update moved aside: it must look like the previous revision's entry,
            // and the path like the current one's (or hold nothing, where the update deleted).
            let Some(p) = p else { return Ok(None) };
            let want = prev.resolve(p);
            let Ok(adir) = area_dir.dir(area_fd.as_fd(), b"", area) else {
                return Ok(None);
            };
            let Some(st) = sys::lstat_at(adir, file).ok().map(|s| Stat::from(&s)) else {
                return Ok(None);
            };
            if !looks_like(&st, want) {
                return Ok(None);
            }
            let xattrs = sys::xattrs_at(adir, file).unwrap_or_default();
            let fix = !crate::apply::same_xattrs(&xattrs, &want.xattrs)
                || (st.uid, st.gid) != (want.uid, want.gid)
                || (st.mtime, st.mtime_nsec) != (want.mtime, want.mtime_nsec)
                || (!matches!(want.kind, Kind::Symlink { .. }) && st.mode & 0o7777 != want.mode);
            let now = tree_stat(path);
            match (c, now) {
                (Some(c), Some(st)) if looks_like(&st, cur.resolve(c)) => {}
                (None, None) => {}
                _ => return Ok(None),
            }
            let moved = |e: &Entry| e.kind == Kind::Dir;
            r.back.push(Back {
                rel: path.to_vec(),
                file: file.clone(),
                keep: c.map(|c| moved(c) || moved(p)),
                fix,
            });
            r.dirs.insert(parent(path).to_vec());
            done.insert(path);
            continue;
        }
        match (p, c) {
            (None, Some(c)) => {
                // Created by the update: still as it made it?
                if !tree_stat(path).is_some_and(|st| looks_like(&st, cur.resolve(c))) {
                    return Ok(None);
                }
                r.created.push(path.to_vec());
                r.dirs.insert(parent(path).to_vec());
                done.insert(path);
            }
            (Some(p), Some(c)) if p.kind == c.kind => {
                if let Kind::Hardlink { target } = &p.kind {
                    // A link to a target put back would still name the current inode.
                    if r.back.iter().any(|b| &b.rel == target) {
                        return Ok(None);
                    }
                } else if !same_metadata(p, c) {
                    match p.kind {
                        Kind::Dir => {
                            r.dirs.insert(path.to_vec());
                        }
                        _ => {
                            // Still of the current revision's kind (not replaced by hand: a
                            // symlink there would have its target's mode set)? Its mtime may
                            // differ: a FAT ESP keeps it to 2 s.
                            let had = cur.resolve(c);
                            let Some(now) = tree_stat(path) else {
                                return Ok(None);
                            };
                            if !same_kind(&now, had) {
                                return Ok(None);
                            }
                            let times = Times::needed(had, p, &now, || tree_xattrs(path));
                            r.meta.push((i - 1, times));
                        }
                    }
                }
            }
            // Deleted or changed by the update, yet not in its area (another filesystem than
            // the area, or not this update's area): the full engine fetches it.
            _ => return Ok(None),
        }
    }
    if !index[k..].iter().all(|(rel, _)| under_done(&done, rel)) {
        return Ok(None);
    }
    Ok(Some(r))
}

/// Carries out `restore` (see [`plan`]) and commits the run.
pub(super) fn apply(
    run: Run,
    engine: &mut Engine,
    restore: Restore,
    undo_name: String,
    started: Instant,
) -> Result<UpdateReport> {
    let (node, opts) = (run.node, run.opts);
    let mut report = UpdateReport {
        from: run.from.clone(),
        to: Some(run.to.clone()),
        ..Default::default()
    };
    if let Some(before) = &opts.before_writes {
        before()?;
        // The hook may have moved a directory the check above opened.
        engine.disk.forget_dirs();
    }
    claim_node(node, &run.state, run.manifest, &mut Vec::new())?;
    engine.undo = UndoArea::at(node.dir.join("undo").join(&undo_name));
    engine.undo.open()?;
    node.begin(&run.journal_of(&undo_name, false))?;
    let root = engine.disk.root.clone();
    let mut kept: Vec<&[u8]> = restore.created.iter().map(|p| p.as_slice()).collect();
    kept.extend(
        restore
            .back
            .iter()
            .filter(|b| b.keep.is_some())
            .map(|b| b.rel.as_slice()),
    );
    engine.undo.announce(&kept)?;
    let syncer = sys::Syncer::default();
    for p in &restore.created {
        let dir = engine.dir(parent(p))?;
        syncer.note_dir(parent(p), dir.as_fd());
        engine.stash(dir.as_fd(), file_name(p), p)?;
    }
    let area_fd = sys::open_root(&restore.area)?;
    for b in &restore.back {
        let (p, name) = (b.rel.as_slice(), file_name(&b.rel));
        let dir = engine.dir(parent(p))?;
        syncer.note_dir(parent(p), dir.as_fd());
        match b.keep {
            Some(true) => engine.stash(dir.as_fd(), name, p)?,
            Some(false) => engine.keep(dir.as_fd(), name, p, super::Act::Content)?,
            None => {}
        }
        renameat(area_fd.as_fd(), b.file.as_slice(), dir.as_fd(), name).at(shown(&root, p))?;
        let e = run.manifest.get(p).map(|e| run.manifest.resolve(e));
        if let (Some(e), true) = (e, b.fix) {
            set_metadata(dir.as_fd(), name, e, None, &root, &|w| engine.warn(w))?;
        }
        report.bytes_reused += e.map_or(0, Entry::data_len);
        match b.keep {
            Some(_) => report.changed += 1,
            None => report.created += 1,
        }
    }
    report.deleted = restore.created.len() as u64;
    let warn = |w| engine.warn(w);
    // Nothing is renamed from here on: directories are kept by a cache of several (entries
    // with new metadata alone are spread over many directories: usr/share/locale/*/...).
    let mut cache = sys::DirCache::default();
    let root_fd = engine.disk.root_fd.as_fd();
    let mut set = |e: &Entry, times: Times| -> Result<()> {
        let (dir, name) = (
            cache.dir(root_fd, parent(&e.path), &root)?,
            file_name(&e.path),
        );
        match times {
            Times::Only => set_mtime(dir, name, e, &root),
            Times::AndMore => set_metadata(dir, name, e, None, &root, &warn),
        }
    };
    for &(i, times) in &restore.meta {
        set(&run.manifest.entries[i], times)?;
    }
    report.metadata_only = (restore.meta.len() + restore.dirs.len()) as u64;
    for rel in restore.dirs.iter().rev() {
        let Some(e) = run.manifest.get(rel) else {
            continue;
        };
        if rel.is_empty() {
            set_metadata_root(root_fd, e, &root, &warn)?;
        } else {
            set(e, Times::AndMore)?;
        }
    }
    engine.undo.sync()?;
    syncer.note(engine.disk.root_fd.as_fd());
    syncer.sync(&root)?;
    sys::sync_dir(&restore.area)?;
    engine.drops_others = true;
    engine.drops_own = false;
    run.commit(engine, &mut report, started)?;
    Ok(report)
}
