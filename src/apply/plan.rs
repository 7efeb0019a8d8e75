//! The update planner: what it takes to bring a node's tree to a manifest, as a value.
//!
//! [`plan`] compares the target manifest with the node's disk, read through a [`DiskView`]
//! and nothing else, and returns an [`UpdatePlan`]: the entries to create, replace, rewrite or
//! only give new metadata, what to delete, and the hand changes it would overwrite. The
//! update engine ([`super::update`]) fetches and executes that plan; a dry run prints it.
//! Keeping it pure is what lets the tests below check type swaps, hardlinks, excludes and the
//! rest on in-memory trees, without a filesystem or root.
//!
//! The node's current manifest lets a stat stand in for a hash, as the capture's stat cache
//! does: a file whose size and mtime still match the revision the node runs is taken to be
//! that version without reading it (not after a crash, and not with `--verify-local`).

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::disk::{is_under, DiskView, Stat};
use super::preflight::{Needs, Touch};
use crate::apply::node::STATE_DIR;
use crate::error::Result;
use crate::excludes::Excludes;
use crate::format::manifest::{display_path, file_name, parent, Chunk, Entry, Kind, Manifest};
use crate::format::Id;
use crate::progress::Progress;
use crate::sys::Xattrs;

/// What a step does to its entry.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Act {
    /// Nothing is there: make it.
    Create,
    /// Something else is there (another type, symlink target or hardlink): replace it whole.
    Replace,
    /// A regular file whose content differs: write it anew.
    Content,
    /// The entry is right but for its metadata.
    Meta,
}

/// One entry of the target manifest the update must act on.
#[derive(Debug)]
pub(crate) struct Step {
    /// Its index in the manifest.
    pub entry: usize,
    pub act: Act,
    /// What differs (`content`, `mode`, `owner`, `xattrs`, `mtime`, `type`, `target`,
    /// `hardlink`), for the itemised plan.
    pub what: Vec<&'static str>,
}

/// A path changed on the node by hand: it differs from the node's current revision.
#[derive(Debug, PartialEq, Serialize)]
pub struct LocalChange {
    pub path: String,
    /// `content`, `mode`, `owner`, `xattrs`, `mtime`, `type`, `target` (a symlink's),
    /// `deleted` (gone from the node) or `added` (the node's revision has no such path).
    pub what: Vec<&'static str>,
}

/// What the planner is told besides the disk and the manifest.
#[derive(Clone, Copy)]
pub(crate) struct PlanOptions<'a> {
    /// Paths the update leaves alone (nor creates, nor changes, nor deletes).
    pub excludes: &'a Excludes,
    /// Delete nothing the manifest lacks.
    pub no_delete: bool,
    /// Hash local files instead of trusting size and mtime.
    pub verify_local: bool,
    /// The manifest of the revision the node ran before this update: its files are known by
    /// their stat, and differences from it are hand changes.
    pub current: Option<&'a Manifest>,
    /// An interrupted update is being finished: no stat is trusted (the interrupted run may
    /// have written the new version in the same clock tick as the old) and nothing is called
    /// a hand change (that run made the differences).
    pub resuming: bool,
    /// Undoing a failed update: the tree it was bringing. `no_delete` keeps what the node
    /// had, not what that update left on it.
    pub failed: Option<&'a Manifest>,
    /// Directories of the repositories the manifest embeds: their aurum-managed paths are
    /// the rebuild's, not the plan's (see [`crate::format::embedded`]).
    pub embedded: &'a [Vec<u8>],
}

/// What an update has to do: the output of [`plan`].
#[derive(Debug, Default)]
pub(crate) struct UpdatePlan {
    /// In manifest order (a directory before what it holds).
    pub steps: Vec<Step>,
    /// Tree paths on disk the manifest lacks, each with everything under it; sorted.
    pub removals: Vec<Vec<u8>>,
    /// Files that share their inode with another name although the manifest gives them their
    /// own: the other name (perhaps in an undo area) may hold the wanted content, so the
    /// file may serve as its own blob source.
    pub relink: Vec<usize>,
    /// The directories the update manages (all the manifest's but the excluded ones), by
    /// index in manifest order: their metadata is set last, once their contents are in place.
    pub dirs: Vec<usize>,
    /// Hand changes the update overwrites or deletes.
    pub local_changes: Vec<LocalChange>,
}

/// Entries whose disk side [`plan`] asks the view for at once.
const LOOK_BATCH: usize = 4096;

/// Whether the update leaves `path` alone: the node's own state, or an exclude.
fn skipped(opts: &PlanOptions, path: &[u8], is_dir: bool) -> bool {
    let state_dir = STATE_DIR.as_bytes();
    path == state_dir
        || is_under(path, state_dir)
        || opts.excludes.excluded(path, is_dir)
        || crate::format::embedded::managed_by_any(path, opts.embedded)
}

/// Plans bringing the tree `view` shows to `manifest` (a validated manifest).
pub(crate) fn plan(
    view: &dyn DiskView,
    manifest: &Manifest,
    opts: &PlanOptions,
    progress: &dyn Progress,
) -> Result<UpdatePlan> {
    progress.phase("planning", Some(manifest.entries.len() as u64), false);
    let mut planner = Planner {
        view,
        opts,
        primaries: manifest
            .entries
            .iter()
            .filter_map(|e| match &e.kind {
                Kind::Hardlink { target } => Some(target.as_slice()),
                _ => None,
            })
            .collect(),
        steps: Vec::new(),
        changing: HashSet::new(),
        excluded_dirs: Vec::new(),
        children: HashMap::new(),
        hashed: HashMap::new(),
        looked: HashMap::new(),
        relink: Vec::new(),
    };
    // The disk's side of the entries is read a batch ahead, so the view can look at many at
    // once; the walk below then decides in manifest order (what it creates or replaces
    // changes which looks count), and ignores the looks it has no use for.
    // What the walk skips is not looked at ahead either, nor anything below a skipped
    // directory (the rule of `Planner::excluded`): an exclude such as `/home/*` may be a mount
    // the update must not touch.
    let mut skipped_dirs: Vec<&[u8]> = Vec::new();
    for (b, batch) in manifest.entries.chunks(LOOK_BATCH).enumerate() {
        let mut paths: Vec<&[u8]> = Vec::with_capacity(batch.len());
        for e in batch {
            let is_dir = e.kind == Kind::Dir;
            let skip = !e.path.is_empty()
                && (skipped_dirs.iter().any(|d| is_under(&e.path, d))
                    || skipped(opts, &e.path, is_dir));
            match skip {
                true if is_dir => skipped_dirs.push(&e.path),
                true => {}
                false => paths.push(&e.path),
            }
        }
        let ahead = view.look_all(&paths);
        debug_assert_eq!(ahead.len(), paths.len(), "a look for every path");
        let mut looks = paths.iter().copied().zip(ahead).peekable();
        for (j, e) in batch.iter().enumerate() {
            progress.advance(1);
            let look = looks
                .next_if(|(p, _)| *p == e.path.as_slice())
                .and_then(|(_, l)| l);
            planner.entry(b * LOOK_BATCH + j, e, look)?;
        }
    }
    progress.finish();
    let mut removals = planner.extras(manifest);
    removals.sort();
    let local_changes = planner.hand_changes(manifest, &removals)?;
    let dirs = (0..manifest.entries.len())
        .filter(|&i| {
            let e = &manifest.entries[i];
            e.kind == Kind::Dir && (e.path.is_empty() || !planner.excluded(&e.path, true))
        })
        .collect();
    Ok(UpdatePlan {
        steps: planner.steps,
        removals,
        relink: planner.relink,
        dirs,
        local_changes,
    })
}

/// The planner's state while it walks the manifest.
struct Planner<'a> {
    view: &'a dyn DiskView,
    opts: &'a PlanOptions<'a>,
    /// Paths other entries are hardlinks to.
    primaries: HashSet<&'a [u8]>,
    steps: Vec<Step>,
    /// Paths the plan creates or replaces: nothing below them is on disk for it.
    changing: HashSet<&'a [u8]>,
    excluded_dirs: Vec<&'a [u8]>,
    /// The names the manifest has in each directory.
    children: HashMap<&'a [u8], HashSet<&'a [u8]>>,
    /// The chunks of disk files the plan read, by entry, for the hand-change check.
    hashed: HashMap<usize, Option<Vec<Chunk>>>,
    /// What the disk showed of the entries the plan touches, by entry.
    looked: HashMap<usize, (Stat, Xattrs)>,
    relink: Vec<usize>,
}

impl<'a> Planner<'a> {
    fn push(&mut self, i: usize, path: &'a [u8], act: Act, what: Vec<&'static str>) {
        if act != Act::Meta {
            self.changing.insert(path);
        }
        self.steps.push(Step {
            entry: i,
            act,
            what,
        });
    }

    fn excluded(&self, path: &[u8], is_dir: bool) -> bool {
        self.excluded_dirs.iter().any(|d| is_under(path, d)) || skipped(self.opts, path, is_dir)
    }

    /// Plans entry `i`, `e`, which the disk showed as `look` (when it was looked at).
    fn entry(&mut self, i: usize, e: &'a Entry, look: Option<(Stat, Xattrs)>) -> Result<()> {
        if e.path.is_empty() {
            if let Some((st, x)) = look {
                let what = meta_diff(&st, &x, e);
                if !what.is_empty() {
                    self.push(i, &e.path, Act::Meta, what);
                }
            }
            return Ok(());
        }
        let is_dir = e.kind == Kind::Dir;
        if self.excluded(&e.path, is_dir) {
            if is_dir {
                self.excluded_dirs.push(&e.path);
            }
            return Ok(());
        }
        self.children
            .entry(parent(&e.path))
            .or_default()
            .insert(file_name(&e.path));
        // A directory the plan creates or replaces is not one on disk: no need to look.
        let disk = match self.changing.contains(parent(&e.path)) {
            true => None,
            false => look,
        };
        let Some((st, x)) = disk else {
            self.push(i, &e.path, Act::Create, vec![]);
            return Ok(());
        };
        let before = self.steps.len();
        self.decide(i, e, &st, &x)?;
        // Kept for the hand-change check of what the plan touches: looked at once.
        if self.steps.len() > before && self.opts.current.is_some() && !self.opts.resuming {
            self.looked.insert(i, (st, x));
        }
        Ok(())
    }

    /// Plans entry `i`, `e`, found on disk as `st`, `x`.
    fn decide(&mut self, i: usize, e: &'a Entry, st: &Stat, x: &Xattrs) -> Result<()> {
        let st = *st;
        if let Kind::Hardlink { target: t } = &e.kind {
            let same_inode = !self.changing.contains(t.as_slice())
                && self.view.stat(t).is_some_and(|p| p.same_inode(&st));
            if !same_inode {
                self.push(i, &e.path, Act::Replace, vec!["hardlink"]);
            }
            return Ok(());
        }
        if !kind_matches(&st, e) {
            self.push(i, &e.path, Act::Replace, vec!["type"]);
            return Ok(());
        }
        let mut what = meta_diff(&st, x, e);
        match &e.kind {
            Kind::File { .. } if !self.same_content(i, e, &st)? => {
                what.insert(0, "content");
                self.push(i, &e.path, Act::Content, what);
                return Ok(());
            }
            Kind::Symlink { target: t } if self.view.readlink(&e.path).as_ref() != Some(t) => {
                self.push(i, &e.path, Act::Replace, vec!["target"]);
                return Ok(());
            }
            _ => {}
        }
        if !what.is_empty() {
            self.push(i, &e.path, Act::Meta, what);
        }
        Ok(())
    }

    /// Whether the regular file on disk at `e`'s path, `st`, holds `e`'s content.
    fn same_content(&mut self, i: usize, e: &Entry, st: &Stat) -> Result<bool> {
        let Kind::File { size, chunks, .. } = &e.kind else {
            return Ok(false);
        };
        let old = self
            .opts
            .current
            .and_then(|m| m.get(&e.path).map(|o| m.resolve(o)));
        if st.nlink > 1 && !self.primaries.contains(e.path.as_slice()) {
            // A hardlink the image has broken: give the path its own inode.
            self.relink.push(i);
            return Ok(false);
        }
        let disk_is_old = !self.opts.resuming
            && old.is_some_and(|r| {
                st.size == r.size() && (st.mtime, st.mtime_nsec) == (r.mtime, r.mtime_nsec)
            });
        if let (Some(old), true, false) = (old, disk_is_old, self.opts.verify_local) {
            return Ok(matches!(&old.kind, Kind::File { chunks: c, .. } if c == chunks));
        }
        // Size and mtime prove nothing here (two versions written in the same clock tick
        // share both): read it.
        if st.size != *size {
            return Ok(false);
        }
        let on_disk = self.view.chunks(&e.path, st)?;
        let same = on_disk.as_ref() == Some(chunks);
        if old.is_some() {
            self.hashed.insert(i, on_disk);
        }
        Ok(same)
    }

    /// What the disk has under the manifest's directories that the manifest does not.
    fn extras(&self, manifest: &Manifest) -> Vec<Vec<u8>> {
        let opts = self.opts;
        let state_ancestors: Vec<&[u8]> = {
            let mut v = vec![STATE_DIR.as_bytes()];
            while let Some(&p) = v.last().filter(|p| !p.is_empty()) {
                v.push(parent(p));
            }
            v
        };
        let created_by_failed: HashSet<&[u8]> = match opts.failed {
            Some(f) if opts.no_delete => f.entries.iter().map(|e| e.path.as_slice()).collect(),
            _ => HashSet::new(),
        };
        // What stays: the excluded, and with --no-delete what the node had (not what a failed
        // update left on it).
        let keeps = |p: &[u8], is_dir: bool| {
            skipped(opts, p, is_dir) || (opts.no_delete && !created_by_failed.contains(p))
        };
        // Directories to list: the manifest's own (but excluded ones), then extra directories
        // that hold excluded entries (those are kept, as rsync keeps a directory whose
        // contents an exclude protects, and only their other contents go).
        let mut to_list: Vec<Vec<u8>> = manifest
            .entries
            .iter()
            .filter(|e| e.kind == Kind::Dir)
            .filter(|e| {
                e.path.is_empty()
                    || !(skipped(opts, &e.path, true)
                        || self
                            .excluded_dirs
                            .iter()
                            .any(|d| *d == e.path.as_slice() || is_under(&e.path, d)))
            })
            .map(|e| e.path.clone())
            .collect();
        let empty = HashSet::new();
        let mut removals = Vec::new();
        while let Some(dir) = to_list.pop() {
            // A directory the plan creates holds nothing yet.
            if self.changing.contains(dir.as_slice()) {
                continue;
            }
            let Some(listing) = self.view.list(&dir) else {
                continue;
            };
            let known = self.children.get(dir.as_slice()).unwrap_or(&empty);
            for (name, is_dir) in listing {
                if known.contains(name.as_slice()) {
                    continue;
                }
                let path = join(&dir, &name);
                if state_ancestors.contains(&path.as_slice()) || keeps(&path, is_dir) {
                    continue;
                } else if is_dir && holds(self.view, &path, &keeps) {
                    to_list.push(path);
                } else {
                    removals.push(path);
                }
            }
        }
        removals
    }

    /// Hand changes: what the plan overwrites or deletes that differs from the revision the
    /// node runs. None after a crash (the interrupted run made the differences) nor on a
    /// node aurum never updated (nothing to compare with).
    fn hand_changes(&self, manifest: &Manifest, removals: &[Vec<u8>]) -> Result<Vec<LocalChange>> {
        let (Some(cur), false) = (self.opts.current, self.opts.resuming) else {
            return Ok(Vec::new());
        };
        let mut touched: Vec<(&[u8], Option<usize>)> = self
            .steps
            .iter()
            .map(|s| (manifest.entries[s.entry].path.as_slice(), Some(s.entry)))
            .collect();
        touched.extend(removals.iter().map(|p| (p.as_slice(), None)));
        touched.sort();
        let mut changes = Vec::new();
        for (p, i) in touched {
            let on_disk = i.and_then(|i| self.hashed.get(&i));
            let looked = i.and_then(|i| self.looked.get(&i));
            let what = changed_by_hand(self.view, cur, p, on_disk, looked, self.opts.verify_local)?;
            if !what.is_empty() {
                changes.push(LocalChange {
                    path: display_path(p),
                    what,
                });
            }
        }
        Ok(changes)
    }
}

/// `dir`/`name` as a manifest path.
fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut path = dir.to_vec();
    if !path.is_empty() {
        path.push(b'/');
    }
    path.extend_from_slice(name);
    path
}

/// Whether the disk directory `rel` holds, at any depth, something `keeps` (an exclude,
/// --no-delete) protects.
fn holds(view: &dyn DiskView, rel: &[u8], keeps: &dyn Fn(&[u8], bool) -> bool) -> bool {
    view.list(rel).is_some_and(|names| {
        names.into_iter().any(|(name, is_dir)| {
            let path = join(rel, &name);
            keeps(&path, is_dir) || (is_dir && holds(view, &path, keeps))
        })
    })
}

/// Metadata of a disk entry that differs from `e` (a resolved, non-hardlink entry).
fn meta_diff(st: &Stat, xattrs: &Xattrs, e: &Entry) -> Vec<&'static str> {
    let mut what = Vec::new();
    let is_link = matches!(e.kind, Kind::Symlink { .. });
    if !is_link && st.mode & 0o7777 != e.mode {
        what.push("mode");
    }
    if st.uid != e.uid || st.gid != e.gid {
        what.push("owner");
    }
    if !crate::apply::same_xattrs(xattrs, &e.xattrs) {
        what.push("xattrs");
    }
    if e.kind != Kind::Dir && (st.mtime, st.mtime_nsec) != (e.mtime, e.mtime_nsec) {
        what.push("mtime");
    }
    what
}

fn kind_matches(st: &Stat, e: &Entry) -> bool {
    let fmt = st.format();
    match e.kind {
        Kind::File { .. } | Kind::Hardlink { .. } => fmt == libc::S_IFREG,
        Kind::Dir => fmt == libc::S_IFDIR,
        Kind::Symlink { .. } => fmt == libc::S_IFLNK,
        Kind::Char { rdev } => fmt == libc::S_IFCHR && st.rdev == rdev,
        Kind::Block { rdev } => fmt == libc::S_IFBLK && st.rdev == rdev,
        Kind::Fifo => fmt == libc::S_IFIFO,
        Kind::Socket => fmt == libc::S_IFSOCK,
    }
}

/// What differs between the disk at `rel` and its entry in `cur`, the revision the node runs:
/// what was changed there by hand. `looked` is what the plan saw of it on disk, `on_disk` the
/// disk file's chunks when the plan read them;
/// they are read here only when size and mtime cannot tell (or with `verify_local`).
fn changed_by_hand(
    view: &dyn DiskView,
    cur: &Manifest,
    rel: &[u8],
    on_disk: Option<&Option<Vec<Chunk>>>,
    looked: Option<&(Stat, Xattrs)>,
    verify_local: bool,
) -> Result<Vec<&'static str>> {
    let disk = match looked {
        Some((st, x)) => Some((*st, x.clone())),
        None => view.look(rel),
    };
    let (old, (st, x)) = match (cur.get(rel).map(|o| cur.resolve(o)), disk) {
        (Some(old), Some(disk)) => (old, disk),
        (Some(_), None) => return Ok(vec!["deleted"]),
        (None, Some(_)) => return Ok(vec!["added"]),
        (None, None) => return Ok(vec![]),
    };
    if !kind_matches(&st, old) {
        return Ok(vec!["type"]);
    }
    let mut what = meta_diff(&st, &x, old);
    match &old.kind {
        Kind::File { size, chunks, .. } => {
            let content = if st.size != *size {
                true
            } else if !verify_local && !what.contains(&"mtime") {
                false
            } else {
                let read;
                let c = match on_disk {
                    Some(c) => c.as_ref(),
                    None => {
                        read = view.chunks(rel, &st)?;
                        read.as_ref()
                    }
                };
                c != Some(chunks)
            };
            if content {
                what.insert(0, "content");
            }
        }
        Kind::Symlink { target } if view.readlink(rel).as_ref() != Some(target) => {
            what.insert(0, "target");
        }
        _ => {}
    }
    if matches!(what.first(), Some(&"content") | Some(&"target")) {
        // A new mtime goes with new content or a new symlink: say only that.
        what.retain(|w| *w != "mtime");
    }
    Ok(what)
}

impl UpdatePlan {
    /// Whether the plan does nothing at all.
    pub fn is_noop(&self) -> bool {
        self.steps.is_empty() && self.removals.is_empty()
    }

    /// Whether every step creates an entry or sets a directory's metadata, and nothing is
    /// deleted: the plan of a fresh root.
    pub fn only_creates(&self, manifest: &Manifest) -> bool {
        self.removals.is_empty()
            && self.steps.iter().all(|s| {
                s.act == Act::Create
                    || (s.act == Act::Meta && manifest.entries[s.entry].kind == Kind::Dir)
            })
    }

    /// The counts of a report: entries created, changed (replaced or rewritten), and given
    /// new metadata only.
    pub fn counts(&self) -> (u64, u64, u64) {
        let n = |f: &dyn Fn(Act) -> bool| self.steps.iter().filter(|s| f(s.act)).count() as u64;
        (
            n(&|a| a == Act::Create),
            n(&|a| matches!(a, Act::Replace | Act::Content)),
            n(&|a| a == Act::Meta),
        )
    }

    /// The plan itemised, rsync -i style, one line per step and deletion.
    pub fn itemised(&self, manifest: &Manifest) -> Vec<String> {
        let mut lines = Vec::new();
        for s in &self.steps {
            let e = &manifest.entries[s.entry];
            let tag = match s.act {
                Act::Create => format!("+ {:<8}", e.kind.name()),
                Act::Replace => format!("> {:<8}", e.kind.name()),
                Act::Content => format!("> {:<8}", "content"),
                Act::Meta => format!(". {:<8}", "metadata"),
            };
            let what = if s.what.is_empty() {
                String::new()
            } else {
                format!("  ({})", s.what.join(", "))
            };
            lines.push(format!("{tag} {}{what}", e.display()));
        }
        for p in &self.removals {
            lines.push(format!("- {:<8} {}", "delete", display_path(p)));
        }
        lines
    }

    /// The blobs the plan writes, each once, in the order first needed.
    pub fn needed_blobs(&self, manifest: &Manifest) -> Vec<Id> {
        let mut seen = HashSet::new();
        let mut needed = Vec::new();
        for s in self.steps.iter().filter(|s| s.act != Act::Meta) {
            if let Kind::File { chunks, .. } = &manifest.entries[s.entry].kind {
                needed.extend(chunks.iter().map(|c| c.id).filter(|id| seen.insert(*id)));
            }
        }
        needed
    }

    /// Tree paths of the entries the plan replaces or rewrites.
    pub fn replaced<'m>(&'m self, manifest: &'m Manifest) -> impl Iterator<Item = &'m [u8]> + 'm {
        self.steps
            .iter()
            .filter(|s| matches!(s.act, Act::Replace | Act::Content))
            .map(move |s| manifest.entries[s.entry].path.as_slice())
    }

    /// What the plan will write and touch, for the space and writability check. `linked`
    /// tells the files that are linked back from an undo area (they take no new space);
    /// `staged`: the bytes of blobs to fetch, staged at `staging` (a tree path) until used.
    pub fn needs<'m>(
        &'m self,
        manifest: &'m Manifest,
        linked: &dyn Fn(&Entry) -> bool,
        staging: &'m [u8],
        staged: u64,
    ) -> Needs<'m> {
        let mut needs = Needs::default();
        for s in &self.steps {
            let e = &manifest.entries[s.entry];
            let touch = match s.act {
                Act::Create => None,
                Act::Replace | Act::Content if e.kind != Kind::Dir => Some(Touch::Replace),
                Act::Replace | Act::Content => Some(Touch::Delete),
                Act::Meta => Some(Touch::Change),
            };
            if let Some(t) = touch {
                needs.touched.push((e.path.as_slice(), t));
            }
            if s.act != Act::Meta {
                let bytes = if linked(e) { 0 } else { e.data_len() };
                needs.writes.push((e.path.as_slice(), bytes));
            }
        }
        needs
            .touched
            .extend(self.removals.iter().map(|p| (p.as_slice(), Touch::Delete)));
        needs.writes.push((staging, staged));
        needs
    }
}

#[cfg(test)]
mod tests;
