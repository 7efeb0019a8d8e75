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
//! Each entry trades places with the one on disk (`renameat2` with `RENAME_EXCHANGE`: one
//! atomic call, the path never missing), so the update's area becomes the rollback's own,
//! holding what the rollback replaced under the same lines, and the next rollback, forward
//! again, is as local and as cheap. Where the path holds nothing the entry is renamed out and
//! its line dropped; what the update created is moved in under new lines. A journal names
//! the run before the first rename: every rename is atomic, so a kill leaves each path old or
//! new, and the rerun (the full engine finishing an interrupted rollback) completes it,
//! reading the blobs it needs from the area, whichever version each of its files holds then
//! (each is checked against its hash before use).

use std::collections::{BTreeSet, HashSet};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use nix::errno::Errno;
use nix::fcntl::{renameat, renameat2, RenameFlags};
use rayon::prelude::*;

use super::{claim_node, Engine, Run, UpdateReport};
use crate::apply::disk::{is_under, Stat};
use crate::apply::node::{Journal, STATE_DIR};
use crate::apply::undo::{self, UndoArea};
use crate::apply::{set_metadata, set_mtime};
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
    /// What the path holds now: `Some(_)` something, which trades places with the area's
    /// entry (`Some(true)`: a directory is one of the two, so cached directories are
    /// forgotten; on a filesystem without exchange it is moved into the area first, and a
    /// `Some(false)` is linked there, so the path never goes missing); `None`: nothing, the
    /// entry is renamed out of the area.
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

/// The paths a rollback's walk handles whole (restored, removed, excluded), nothing below
/// which it looks at. The walk asks about paths in ascending byte order, and the paths below
/// one are a single run of that order (those starting with it and `/`), so a stack holds them:
/// one whose run the walk has passed is dropped, and only the top can hold the path asked
/// (each was added when nothing held it, so a later one lies before the runs of those below
/// it: `a/b.c` before `a/b/`).
#[derive(Default)]
struct Done<'a>(Vec<&'a [u8]>);

impl<'a> Done<'a> {
    fn add(&mut self, path: &'a [u8]) {
        self.0.push(path);
    }

    /// Whether `path` lies under one of them; asked in ascending order.
    fn holds(&mut self, path: &[u8]) -> bool {
        while let Some(&top) = self.0.last() {
            if is_under(path, top) {
                return true;
            }
            // Past `top/`'s run: at or after `top0` (`0` follows `/`).
            let past = match path.strip_prefix(top) {
                Some(rest) => rest.first().is_some_and(|&c| c > b'/'),
                None => path > top,
            };
            if !past {
                return false;
            }
            self.0.pop();
        }
        false
    }
}

/// A look at the disk the walk in [`diff`] asks for, made afterwards with all the others on
/// every core.
enum Check<'m> {
    /// `back[i]`, moved aside by the update: in the area it must look like `want`, and its
    /// path like `now` (or hold nothing, where the update deleted it).
    Back {
        i: usize,
        want: &'m Entry,
        now: Option<&'m Entry>,
    },
    /// The path `rel` the update created (`now`, resolved), still as the update made it.
    Created { rel: &'m [u8], now: &'m Entry },
    /// `meta[i]`: the current revision's `had`, still of its kind, whose metadata becomes
    /// `want`'s.
    Meta {
        i: usize,
        had: &'m Entry,
        want: &'m Entry,
    },
}

/// What a passed [`Check`] found.
enum Found {
    /// A [`Check::Back`]: whether its metadata must be set after the rename ([`Back::fix`]).
    Back(bool),
    Created,
    /// A [`Check::Meta`]: what is set ([`Times`]).
    Meta(Times),
}

/// Checks one tree path or area entry may take at a time (see [`crate::apply::run_length`]).
const CHECK_RUN: usize = 256;

/// Walks the previous revision `prev` and the current `cur` side by side (both sorted by path)
/// against the undo `index` (sorted), then checks the disk for everything the walk found.
fn diff(
    prev: &Manifest,
    cur: &Manifest,
    index: &[(Vec<u8>, Vec<u8>)],
    engine: &Engine,
    area: &std::path::Path,
    excludes: &Excludes,
) -> Result<Option<Restore>> {
    let mut r = Restore {
        area: PathBuf::new(),
        back: Vec::new(),
        created: Vec::new(),
        meta: Vec::new(),
        dirs: BTreeSet::new(),
    };
    let mut checks: Vec<Check> = Vec::new();
    let state_dir = STATE_DIR.as_bytes();
    // Paths handled whole (restored, removed, excluded): nothing below them is looked at.
    let mut done = Done::default();
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
            if !done.holds(&index[k].0) {
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
        if path == state_dir || is_under(path, state_dir) || done.holds(path) {
            continue;
        }
        let is_dir = p.or(c).is_some_and(|e| e.kind == Kind::Dir);
        if excludes.excluded(path, is_dir) {
            if is_dir {
                done.add(path);
            }
            continue;
        }
        if let Some((_, file)) = indexed {
            // What the update moved aside: it must look like the previous revision's entry,
            // and the path like the current one's (or hold nothing, where the update deleted).
            let Some(p) = p else { return Ok(None) };
            let moved = |e: &Entry| e.kind == Kind::Dir;
            checks.push(Check::Back {
                i: r.back.len(),
                want: prev.resolve(p),
                now: c.map(|c| cur.resolve(c)),
            });
            r.back.push(Back {
                rel: path.to_vec(),
                file: file.clone(),
                keep: c.map(|c| moved(c) || moved(p)),
                fix: false,
            });
            r.dirs.insert(parent(path).to_vec());
            done.add(path);
            continue;
        }
        match (p, c) {
            (None, Some(c)) => {
                // Created by the update: still as it made it?
                checks.push(Check::Created {
                    rel: &c.path,
                    now: cur.resolve(c),
                });
                r.created.push(path.to_vec());
                r.dirs.insert(parent(path).to_vec());
                done.add(path);
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
                            checks.push(Check::Meta {
                                i: r.meta.len(),
                                had: cur.resolve(c),
                                want: p,
                            });
                            r.meta.push((i - 1, Times::AndMore));
                        }
                    }
                }
            }
            // Deleted or changed by the update, yet not in its area (another filesystem than
            // the area, or not this update's area): the full engine fetches it.
            _ => return Ok(None),
        }
    }
    if !index[k..].iter().all(|(rel, _)| done.holds(rel)) {
        return Ok(None);
    }
    let area_fd = sys::open_root(area)?;
    let found = look(&checks, &r.back, engine, area_fd.as_fd());
    for (check, found) in checks.iter().zip(found) {
        match (check, found) {
            (Check::Back { i, .. }, Some(Found::Back(fix))) => r.back[*i].fix = fix,
            (Check::Created { .. }, Some(Found::Created)) => {}
            (Check::Meta { i, .. }, Some(Found::Meta(times))) => r.meta[*i].1 = times,
            _ => return Ok(None),
        }
    }
    Ok(Some(r))
}

/// Makes every check of [`diff`] on every core, each worker with directories of its own;
/// `None` for a check that fails.
fn look(checks: &[Check], back: &[Back], engine: &Engine, area: BorrowedFd) -> Vec<Option<Found>> {
    let (root_fd, root) = (engine.disk.root_fd.as_fd(), &engine.disk.root);
    let run = crate::apply::run_length(checks.len(), CHECK_RUN);
    let runs: Vec<Vec<Option<Found>>> = checks
        .par_chunks(run)
        .map(|run| {
            let mut dirs = DirCache::default();
            // Calls `f` with the directory of the tree path `rel` and what `rel` is there.
            let mut in_tree =
                |rel: &[u8], f: &dyn Fn(BorrowedFd, Option<Stat>) -> Option<Found>| {
                    let dir = dirs.dir(root_fd, parent(rel), root).ok()?;
                    f(
                        dir,
                        sys::lstat_at(dir, file_name(rel))
                            .ok()
                            .map(|s| Stat::from(&s)),
                    )
                };
            run.iter()
                .map(|check| match *check {
                    Check::Back { i, want, now } => {
                        let b = &back[i];
                        let st = Stat::from(&sys::lstat_at(area, &b.file).ok()?);
                        if !looks_like(&st, want) {
                            return None;
                        }
                        let xattrs = sys::xattrs_at(area, &b.file).unwrap_or_default();
                        let fix = !crate::apply::same_xattrs(&xattrs, &want.xattrs)
                            || (st.uid, st.gid) != (want.uid, want.gid)
                            || (st.mtime, st.mtime_nsec) != (want.mtime, want.mtime_nsec)
                            || (!matches!(want.kind, Kind::Symlink { .. })
                                && st.mode & 0o7777 != want.mode);
                        let area_dev = st.dev;
                        // An entry on another filesystem than the area cannot trade places
                        // with it (a mount made since the update): the full engine runs.
                        in_tree(&b.rel, &|_, on_disk| match (now, on_disk) {
                            (Some(now), Some(st)) if looks_like(&st, now) && st.dev == area_dev => {
                                Some(Found::Back(fix))
                            }
                            (None, None) => Some(Found::Back(fix)),
                            _ => None,
                        })
                    }
                    Check::Created { rel, now } => in_tree(rel, &|_, st| {
                        st.is_some_and(|st| looks_like(&st, now))
                            .then_some(Found::Created)
                    }),
                    Check::Meta { had, want, .. } => in_tree(&want.path, &|dir, st| {
                        // Still of the current revision's kind (not replaced by hand: a
                        // symlink there would have its target's mode set)? Its mtime may
                        // differ: a FAT ESP keeps it to 2 s.
                        let st = st?;
                        if !same_kind(&st, had) {
                            return None;
                        }
                        let xattrs = || sys::xattrs_at(dir, file_name(&want.path)).ok();
                        Some(Found::Meta(Times::needed(had, want, &st, xattrs)))
                    }),
                })
                .collect()
        })
        .collect();
    runs.into_iter().flatten().collect()
}

/// Carries out `restore` (see [`plan`]) and commits the run.
///
/// The update's area becomes the rollback's own: each entry that replaces one on disk trades
/// places with it (`renameat2` with `RENAME_EXCHANGE`, one atomic call), so the area's line
/// for the path then names what the path held, which is what the next rollback, forward
/// again, puts back. An entry whose path holds nothing is renamed out and its line dropped;
/// the paths the update created are moved in under new lines.
pub(super) fn apply(
    run: Run,
    engine: &mut Engine,
    restore: Restore,
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
    let undo_name = restore
        .area
        .file_name()
        .expect("an area found under undo/ has a name")
        .to_string_lossy()
        .into_owned();
    engine.undo = UndoArea::at(restore.area.clone());
    engine.undo.open()?;
    node.begin(&Journal {
        kept_undo: true,
        ..run.journal_of(&undo_name, false)
    })?;
    let root = engine.disk.root.clone();
    let created: Vec<&[u8]> = restore.created.iter().map(|p| p.as_slice()).collect();
    engine.undo.announce(&created)?;
    // The area's next index (the lines just announced in it), without the lines of the
    // entries renamed out of it below: written before anything moves.
    let out: HashSet<&[u8]> = restore
        .back
        .iter()
        .filter(|b| b.keep.is_none())
        .map(|b| b.file.as_slice())
        .collect();
    if !out.is_empty() {
        undo::write_index_without(&restore.area, &out)?;
    }
    let syncer = sys::Syncer::default();
    for p in &restore.created {
        let dir = engine.dir(parent(p))?;
        syncer.note_dir(parent(p), dir.as_fd());
        engine.stash(dir.as_fd(), file_name(p), p)?;
    }
    let manifest = run.manifest;
    let meta_root = engine.disk.root_fd.try_clone().at(&root)?;
    let meta_warnings = Mutex::new(Vec::new());
    let (gone, meta) = std::thread::scope(|s| {
        // The entries whose metadata alone changes are set on the other threads while the
        // renames go on here (one at a time: the kernel serialises renames across
        // directories): none lies below a path renamed, which the walk left alone.
        let meta = s.spawn(|| {
            let warn = |w| meta_warnings.lock().expect("lock").push(w);
            set_entries(manifest, &restore.meta, meta_root.as_fd(), &root, &warn)
        });
        let gone = put_back(&run, engine, &restore, &syncer, &mut report);
        (gone, meta.join())
    });
    let gone = gone?;
    meta.unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
    for w in meta_warnings.into_inner().expect("lock") {
        engine.warn(w);
    }
    report.deleted = restore.created.len() as u64;
    // The directories' own metadata last, deepest first.
    for e in restore
        .dirs
        .iter()
        .rev()
        .filter_map(|rel| manifest.get(rel))
    {
        super::set_dir_metadata(engine, e)?;
    }
    report.metadata_only = (restore.meta.len() + restore.dirs.len()) as u64;
    // No line is added from here on: the index may be replaced.
    engine.undo.sync()?;
    if gone.len() > out.len() {
        // Entries kept the old way (a filesystem without exchange) added lines and left
        // the area: the index is written again.
        undo::write_index_without(&restore.area, &gone)?;
        undo::replace_index(&restore.area)?;
    } else if !out.is_empty() {
        undo::replace_index(&restore.area)?;
    }
    syncer.note(engine.disk.root_fd.as_fd());
    syncer.sync(&root)?;
    sys::sync_dir(&restore.area)?;
    // The area is the run's own and stays; there is no other.
    engine.drops_others = true;
    engine.drops_own = false;
    run.commit(engine, &mut report, started)?;
    Ok(report)
}

/// Puts each entry of `restore.back` in place (see [`apply`]); returns the area's entries
/// renamed out rather than exchanged, whose lines go.
fn put_back<'r>(
    run: &Run,
    engine: &mut Engine,
    restore: &'r Restore,
    syncer: &sys::Syncer,
    report: &mut UpdateReport,
) -> Result<HashSet<&'r [u8]>> {
    let root = engine.disk.root.clone();
    let area_fd = sys::open_root(&restore.area)?;
    let mut gone = HashSet::new();
    for b in &restore.back {
        let (p, name) = (b.rel.as_slice(), file_name(&b.rel));
        let dir = engine.dir(parent(p))?;
        syncer.note_dir(parent(p), dir.as_fd());
        let traded = b.keep.is_some()
            && match renameat2(
                area_fd.as_fd(),
                b.file.as_slice(),
                dir.as_fd(),
                name,
                RenameFlags::RENAME_EXCHANGE,
            ) {
                Ok(()) => true,
                // A filesystem without exchange: kept the way an update keeps it, under a
                // new line (the plan made sure the entry and the area share a filesystem).
                Err(Errno::EINVAL | Errno::ENOSYS) => false,
                Err(e) => return Err(e).at(shown(&root, p)),
            };
        if b.keep == Some(true) {
            // A directory changed places: none kept may be found again by its path.
            engine.disk.forget_dirs();
        }
        if !traded {
            match b.keep {
                Some(true) => engine.stash(dir.as_fd(), name, p)?,
                Some(false) => engine.keep(dir.as_fd(), name, p, super::Act::Content)?,
                None => {}
            }
            renameat(area_fd.as_fd(), b.file.as_slice(), dir.as_fd(), name).at(shown(&root, p))?;
            gone.insert(b.file.as_slice());
        }
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
    Ok(gone)
}

/// Sets the metadata of the entries `meta` of `manifest` (see [`Restore::meta`]), on every
/// core: they are spread over many directories (usr/share/locale/*/...), and each worker
/// keeps directories of its own beneath `root_fd`.
fn set_entries(
    manifest: &Manifest,
    meta: &[(usize, Times)],
    root_fd: BorrowedFd,
    root: &std::path::Path,
    warn: &(dyn Fn(String) + Sync),
) -> Result<()> {
    let run_len = crate::apply::run_length(meta.len(), CHECK_RUN);
    meta.par_chunks(run_len).try_for_each(|part| {
        let mut cache = DirCache::default();
        part.iter().try_for_each(|&(i, times)| {
            let e = &manifest.entries[i];
            let (dir, name) = (
                cache.dir(root_fd, parent(&e.path), root)?,
                file_name(&e.path),
            );
            match times {
                Times::Only => set_mtime(dir, name, e, root),
                Times::AndMore => set_metadata(dir, name, e, None, root, warn),
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stack answers as a search of every ancestor among the added paths does, over every
    /// path of a few components of names that sort before `/`, around it and after it.
    #[test]
    fn done_paths_answer_as_a_search_of_every_ancestor() {
        let names: [&[u8]; 5] = [b"a", b"a!", b"a.b", b"a0", b"b"];
        let mut paths: Vec<Vec<u8>> = Vec::new();
        let mut layer: Vec<Vec<u8>> = vec![Vec::new()];
        for _ in 0..3 {
            let mut next = Vec::new();
            for p in &layer {
                for n in names {
                    let mut q = p.clone();
                    if !q.is_empty() {
                        q.push(b'/');
                    }
                    q.extend_from_slice(n);
                    next.push(q);
                }
            }
            paths.extend(next.iter().cloned());
            layer = next;
        }
        paths.sort();
        for seed in 0..50u64 {
            let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            let mut done = Done::default();
            let mut set: HashSet<&[u8]> = HashSet::new();
            let (mut held, mut added) = (0, 0);
            for p in &paths {
                let mut a = p.as_slice();
                let expected = std::iter::from_fn(|| {
                    (!a.is_empty()).then(|| {
                        a = parent(a);
                        a
                    })
                })
                .any(|a| set.contains(a));
                assert_eq!(
                    done.holds(p),
                    expected,
                    "seed {seed}: {}",
                    String::from_utf8_lossy(p)
                );
                held += usize::from(expected);
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if !expected && x % 5 == 0 {
                    done.add(p);
                    set.insert(p);
                    added += 1;
                }
            }
            assert!(
                added > 0 && held > 0,
                "seed {seed}: a case that tests nothing"
            );
        }
    }
}
