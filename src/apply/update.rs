//! updateclient and rollback: bringing a live root to a revision with the least work.
//!
//! One engine serves both. It plans by comparing the target manifest with what is on disk
//! (the node's current manifest lets a stat stand in for a hash, as the capture's stat cache
//! does), takes every blob it can from the node itself (an unchanged file elsewhere, the old
//! version of a changed file, the undo area), fetches only the rest, then applies:
//!
//! - every file is written under a temporary name in its directory, fsynced, given its
//!   metadata, and renamed into place, so it is always either old or new;
//! - whatever is replaced or deleted is first moved into the undo area, so a rollback of the
//!   last update is local, needs no network, and costs time in proportion to the change;
//! - a journal marks the update in progress: a rerun after a crash finishes it.
//!
//! A rollback is the same engine aimed at the previous revision, with the undo area as its only
//! blob source.
//!
//! The manifest an update is given is the tree the node is to hold: the image's, with the
//! node's overrides composed over it when it has some ([`Overlay`] names them, and the node
//! state records them). On a root without node state, a plan that would delete or replace
//! anything is refused unless the administrator adopts the root (`check_unmanaged`).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use nix::fcntl::renameat;
use nix::sys::stat::{mkdirat, FileStat, Mode};
use nix::unistd::unlinkat;
use nix::unistd::UnlinkatFlags;
use serde::Serialize;

mod fresh;

use super::preflight::{self, Touch};
use super::{create_special, set_metadata, temp_name, write_file, BlobSource};
use crate::apply::node::{HistoryEntry, Journal, Node, NodeState, RevRef, STATE_DIR};
use crate::apply::source::{RevisionSource, Target};
use crate::error::{corrupt, invalid, Error, IoContext, Result};
use crate::excludes::Excludes;
use crate::format::manifest::{display_path, file_name, parent, Chunk, Entry, Kind, Manifest};
use crate::format::Id;
use crate::progress::Progress;
use crate::repo::delta;
use crate::store::chunk::file_chunks;
use crate::sys::{self, shown};

/// Every default exclude of an update: SystemImager's updateclient.local.exclude
/// ([`UPDATECLIENT_EXCLUDES`]) and everything getimage leaves out of images by default (without
/// those an update would delete the node's ssh host keys, machine id and LVM backups, which no
/// image holds).
pub fn default_update_excludes() -> Vec<&'static str> {
    let mut v: Vec<&str> = UPDATECLIENT_EXCLUDES.to_vec();
    for p in crate::excludes::DEFAULT_CAPTURE_EXCLUDES {
        if !v.contains(p) {
            v.push(p);
        }
    }
    v
}

/// SystemImager's updateclient.local.exclude: a node's identity, its local data and logs.
pub const UPDATECLIENT_EXCLUDES: &[&str] = &[
    "/etc/mtab",
    "/etc/fstab",
    "/etc/hostname",
    "/etc/hosts",
    "/etc/machine-id",
    "/var/lib/dbus/machine-id",
    "/etc/ssh/ssh_host_*",
    "/etc/network/interfaces",
    "/etc/network/interfaces.d/*",
    "/etc/netplan/*",
    "/etc/sysconfig/network",
    "/etc/sysconfig/network-scripts/ifcfg-*",
    "/etc/NetworkManager/system-connections/*",
    "/etc/udev/rules.d/70-persistent-net.rules",
    "/etc/resolv.conf",
    "/etc/adjtime",
    "/var/lib/dhcp/*",
    "/var/lib/dhclient/*",
    "/var/lib/NetworkManager/*",
    "/var/lib/random-seed",
    "/var/lib/systemd/random-seed",
    "/var/lib/nfs/*",
    "/proc/*",
    "/sys/*",
    "/dev/*",
    "/run/*",
    "/var/run/*",
    "/var/lock/*",
    "/var/log/*",
    "/var/spool/*",
    "/var/tmp/*",
    "/tmp/*",
    "/home/*",
    "/mnt/*",
    "/media/*",
    "lost+found/",
];

/// What an update is asked to do.
pub struct UpdateOptions {
    /// `updateclient` or `rollback` (recorded in history and reports).
    pub action: String,
    pub dry_run: bool,
    pub no_delete: bool,
    /// Hash local files instead of trusting size and mtime.
    pub verify_local: bool,
    pub excludes: Excludes,
    /// Take responsibility for a root that holds no node state: let the plan delete or replace
    /// what is there (without it such a plan is refused, see `check_unmanaged`).
    pub adopt: bool,
    /// The overrides composed into the manifest the update is given; `None`: the image alone,
    /// and the node's list of overrides is left as it is.
    pub overlay: Option<Overlay>,
    /// Called once the plan has passed every check (unmanaged root, space, writability) and
    /// before the first write: updateclient's pre-update hooks, which a refused plan must not
    /// run (they typically stop services).
    pub before_writes: Option<Box<dyn Fn() -> Result<()>>>,
}

/// The overrides of an update: the manifest it is given is the image's with these composed
/// over it (see [`crate::apply::overrides::compose`]).
#[derive(Default)]
pub struct Overlay {
    /// The override revisions composed, in the order they were laid.
    pub layers: Vec<RevRef>,
    /// The image's own manifest, kept on the node as the base of the next manifest delta.
    pub image: Option<Manifest>,
    /// The override images the node follows from now on; `None` keeps its list.
    pub follow: Option<Vec<String>>,
}

/// What an update did (or, dry, would do).
#[derive(Debug, Default, Serialize)]
pub struct UpdateReport {
    pub from: Option<RevRef>,
    pub to: Option<RevRef>,
    pub created: u64,
    pub changed: u64,
    pub metadata_only: u64,
    pub deleted: u64,
    /// Paths that differed from the node's current revision before the update (changed by
    /// hand) and were overwritten or deleted.
    pub modified_locally: Vec<String>,
    /// The same paths, each with what differed.
    pub local_changes: Vec<LocalChange>,
    /// Blob bytes needed that came from the node itself.
    pub bytes_reused: u64,
    /// Bytes that crossed the network.
    pub bytes_fetched: u64,
    /// Blob bytes the plan needs from the server (dry run: what would be fetched).
    pub bytes_to_fetch: u64,
    /// Blobs rebuilt from a binary delta against the version the node held.
    pub deltas: u64,
    /// Blobs the node asked a delta for (the server may find that none pays).
    pub deltas_asked: u64,
    /// The itemised plan (rsync -i style), filled for a dry run.
    pub plan: Vec<String>,
    pub warnings: Vec<String>,
    pub seconds: f64,
    pub unchanged: bool,
}

/// A path changed on the node by hand: it differs from the node's current revision.
#[derive(Debug, Serialize)]
pub struct LocalChange {
    pub path: String,
    /// `content`, `mode`, `owner`, `xattrs`, `mtime`, `type`, `target` (a symlink's),
    /// `deleted` (gone from the node) or `added` (the node's revision has no such path).
    pub what: Vec<&'static str>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Act {
    Create,
    Replace,
    Content,
    Meta,
}

struct Step {
    entry: usize,
    act: Act,
    what: Vec<&'static str>,
}

/// Where a blob can be read on the node.
#[derive(Clone)]
struct LocalChunk {
    /// A path in the tree (manifest path) or a file of the undo area.
    at: LocalAt,
    /// Offset in the file's data (its data extents laid end to end, for a sparse file).
    offset: u64,
    len: u32,
    extents: Option<std::sync::Arc<Vec<(u64, u64)>>>,
}

#[derive(Clone)]
enum LocalAt {
    Tree(Vec<u8>),
    File(PathBuf),
}

fn entry_is_under(path: &[u8], dir: &[u8]) -> bool {
    path.starts_with(dir) && path.get(dir.len()) == Some(&b'/')
}

/// Metadata of a disk entry that differs from `e` (a resolved, non-hardlink entry).
fn meta_diff(st: &FileStat, xattrs: &[(Vec<u8>, Vec<u8>)], e: &Entry) -> Vec<&'static str> {
    let mut what = Vec::new();
    let is_link = matches!(e.kind, Kind::Symlink { .. });
    if !is_link && st.st_mode & 0o7777 != e.mode {
        what.push("mode");
    }
    if st.st_uid != e.uid || st.st_gid != e.gid {
        what.push("owner");
    }
    if !crate::apply::same_xattrs(xattrs, &e.xattrs) {
        what.push("xattrs");
    }
    if e.kind != Kind::Dir && (st.st_mtime, st.st_mtime_nsec as u32) != (e.mtime, e.mtime_nsec) {
        what.push("mtime");
    }
    what
}

fn kind_matches(st: &FileStat, e: &Entry) -> bool {
    let fmt = st.st_mode & libc::S_IFMT;
    match e.kind {
        Kind::File { .. } | Kind::Hardlink { .. } => fmt == libc::S_IFREG,
        Kind::Dir => fmt == libc::S_IFDIR,
        Kind::Symlink { .. } => fmt == libc::S_IFLNK,
        Kind::Char { rdev } => fmt == libc::S_IFCHR && st.st_rdev == rdev,
        Kind::Block { rdev } => fmt == libc::S_IFBLK && st.st_rdev == rdev,
        Kind::Fifo => fmt == libc::S_IFIFO,
        Kind::Socket => fmt == libc::S_IFSOCK,
    }
}

/// The engine's view of a node root during one update.
struct Engine {
    root_fd: OwnedFd,
    root: PathBuf,
    warnings: Mutex<Vec<String>>,
    undo_dir: PathBuf,
    undo_index: Option<File>,
    undo_next: u64,
    /// Tree paths moved into the undo area during this run, and where they went.
    moved: HashMap<Vec<u8>, PathBuf>,
    /// Undo numbers whose index line is already written (and synced), by tree path.
    announced: HashMap<Vec<u8>, u64>,
    /// Blobs the node holds.
    local: HashMap<Id, Vec<LocalChunk>>,
    /// Whole files of the undo areas, by their content: a rollback links them back instead of
    /// writing their bytes again.
    whole: HashMap<Id, PathBuf>,
    /// Whether the run deletes, before it commits, the undo areas other than its own (it
    /// changes the revision), and its own (it undoes a failed update). A file is linked back
    /// only from an area that goes: a tree file sharing its inode with a kept area would let
    /// an in-place edit change what a later rollback restores.
    drops_others: bool,
    drops_own: bool,
    /// The directory [`Engine::dir`] opened last.
    last_dir: Mutex<Option<(Vec<u8>, OwnedFd)>>,
    undo_fd: Option<OwnedFd>,
}

/// A key for a regular file's whole content (its chunk list and sparse map).
fn content_key(e: &Entry) -> Option<Id> {
    let Kind::File {
        size,
        chunks,
        extents,
    } = &e.kind
    else {
        return None;
    };
    let mut h = blake3::Hasher::new();
    h.update(&size.to_le_bytes());
    for c in chunks {
        h.update(&c.id.0);
        h.update(&c.len.to_le_bytes());
    }
    if let Some(ext) = extents {
        for (o, l) in ext {
            h.update(&o.to_le_bytes());
            h.update(&l.to_le_bytes());
        }
    }
    Some(Id(*h.finalize().as_bytes()))
}

impl Engine {
    fn for_root(node: &Node) -> Result<Engine> {
        Ok(Engine {
            root_fd: sys::open_root(&node.root)?,
            root: node.root.clone(),
            warnings: Mutex::new(Vec::new()),
            undo_dir: PathBuf::new(),
            undo_index: None,
            undo_next: 0,
            moved: HashMap::new(),
            announced: HashMap::new(),
            local: HashMap::new(),
            whole: HashMap::new(),
            drops_others: false,
            drops_own: false,
            last_dir: Mutex::new(None),
            undo_fd: None,
        })
    }

    /// A file of an undo area this run drops that should hold exactly `e`'s content (unchecked).
    fn whole_source(&self, e: &Entry) -> Option<&PathBuf> {
        let src = content_key(e).and_then(|k| self.whole.get(&k))?;
        let goes = if src.starts_with(&self.undo_dir) {
            self.drops_own
        } else {
            self.drops_others
        };
        goes.then_some(src)
    }

    /// Links a file of the undo area holding exactly `e`'s content to `name` in `dir`, after
    /// checking every chunk of it; false when there is none (or it changed, or links fail).
    fn link_whole(&self, dir: BorrowedFd, name: &[u8], e: &Entry) -> bool {
        let Some(src) = self.whole_source(e) else {
            return false;
        };
        let Kind::File {
            chunks, extents, ..
        } = &e.kind
        else {
            return false;
        };
        let extents = extents.clone().map(std::sync::Arc::new);
        let mut off = 0u64;
        for c in chunks {
            let lc = LocalChunk {
                at: LocalAt::File(src.clone()),
                offset: off,
                len: c.len,
                extents: extents.clone(),
            };
            if self.read_local(&c.id, &lc).is_none() {
                return false;
            }
            off += u64::from(c.len);
        }
        let (Some(parent), Some(file)) = (src.parent(), src.file_name()) else {
            return false;
        };
        let Ok(pfd) = sys::open_root(parent) else {
            return false;
        };
        nix::unistd::linkat(pfd.as_fd(), file, dir, name, nix::fcntl::AtFlags::empty()).is_ok()
    }

    fn warn(&self, w: String) {
        self.warnings.lock().expect("lock").push(w);
    }

    /// Writes the file `e` under `temp` in `dir`, with its metadata: linked back from an undo
    /// area that holds its very content (a rollback), else written from `blobs`.
    fn write_temp(
        &self,
        dir: BorrowedFd,
        temp: &[u8],
        e: &Entry,
        blobs: &dyn BlobSource,
        progress: &dyn Progress,
    ) -> Result<()> {
        let _ = unlinkat(dir, temp, UnlinkatFlags::NoRemoveDir);
        let file = if self.link_whole(dir, temp, e) {
            progress.advance(e.data_len());
            None
        } else {
            Some(write_file(dir, temp, e, blobs, &self.root, progress)?)
        };
        set_metadata(dir, temp, e, file.as_ref(), &self.root, &|w| self.warn(w))
    }

    /// Removes the temporary names an interrupted run listed in its journal; those it had not
    /// created yet (or had already renamed into place) are simply absent.
    fn remove_temps(&self, temps: &[String]) {
        for rel in temps.iter().filter_map(|h| unhex(h)) {
            if let Ok(dir) = self.dir(parent(&rel)) {
                let _ = unlinkat(dir.as_fd(), file_name(&rel), UnlinkatFlags::NoRemoveDir);
            }
        }
    }

    /// Renames the written `temp` over `name` (tree path `rel`), keeping the old entry in the
    /// undo area unless it is new. When both names are already one inode (a rerun linked back
    /// the very file an interrupted run had put in place), rename(2) would do nothing and
    /// leave the temporary name behind: it is removed instead, and the entry, already right,
    /// is not kept as its own old version.
    fn put_in_place(
        &mut self,
        dir: BorrowedFd,
        temp: &[u8],
        name: &[u8],
        rel: &[u8],
        act: Act,
    ) -> Result<()> {
        if act != Act::Create {
            let same = match (sys::lstat_at(dir, temp), sys::lstat_at(dir, name)) {
                (Ok(t), Ok(n)) => (t.st_dev, t.st_ino) == (n.st_dev, n.st_ino),
                _ => false,
            };
            if same {
                return unlinkat(dir, temp, UnlinkatFlags::NoRemoveDir).at(shown(&self.root, rel));
            }
            self.keep(dir, name, rel)?;
        }
        renameat(dir, temp, dir, name).at(shown(&self.root, rel))
    }

    /// The directory `rel` of the tree. The engine walks the tree in manifest order, so the
    /// directory asked for is mostly the last one or below it: it is opened from there (one
    /// `openat`, or none) rather than from the root, one component at a time, for every entry.
    fn dir(&self, rel: &[u8]) -> Result<OwnedFd> {
        let mut last = self.last_dir.lock().expect("dir lock");
        let from = match last.as_ref() {
            Some((p, fd)) if p.as_slice() == rel => return nix::unistd::dup(fd).at(&self.root),
            Some((p, fd)) if p.is_empty() => Some((fd, rel)),
            Some((p, fd)) if entry_is_under(rel, p) => Some((fd, &rel[p.len() + 1..])),
            _ => None,
        };
        let opened =
            from.and_then(|(fd, rest)| sys::open_dir_beneath(fd.as_fd(), rest, &self.root).ok());
        // Failing from the last directory, open from the root, so the error names the path.
        let fd = match opened {
            Some(fd) => fd,
            None => sys::open_dir_beneath(self.root_fd.as_fd(), rel, &self.root)?,
        };
        *last = Some((rel.to_vec(), nix::unistd::dup(&fd).at(&self.root)?));
        Ok(fd)
    }

    /// The undo area's directory, opened once.
    fn undo_fd(&mut self) -> Result<BorrowedFd<'_>> {
        if self.undo_fd.is_none() {
            self.undo_fd = Some(sys::open_root(&self.undo_dir)?);
        }
        Ok(self.undo_fd.as_ref().expect("set above").as_fd())
    }

    /// Moves `name` in `dir` (tree path `rel`) into the undo area.
    fn stash(&mut self, dir: BorrowedFd, name: &[u8], rel: &[u8]) -> Result<()> {
        // A directory moved away must not be found again by `dir`.
        *self.last_dir.lock().expect("dir lock") = None;
        let n = self.number(rel)?;
        let to = n.to_string();
        let undo_fd = self.undo_fd()?;
        match renameat(dir, name, undo_fd, to.as_str()) {
            Ok(()) => {}
            Err(nix::errno::Errno::EXDEV) => {
                // Another filesystem (a separate /boot): the old entry cannot be kept cheaply.
                self.warn(format!(
                    "{}: on another filesystem than the undo area; removed without a copy for rollback",
                    display_path(rel)
                ));
                remove_tree(dir, name, &shown(&self.root, rel))?;
                return Ok(());
            }
            Err(e) => return Err(e).at(shown(&self.root, rel)),
        }
        self.moved.insert(rel.to_vec(), self.undo_dir.join(to));
        Ok(())
    }

    /// Keeps the entry `name` in `dir` in the undo area ahead of renaming a new one over it:
    /// by a hard link, so the path never goes missing (a running program can always open it).
    /// A directory, or an entry that cannot be linked, is moved there instead.
    fn keep(&mut self, dir: BorrowedFd, name: &[u8], rel: &[u8]) -> Result<()> {
        let is_dir = sys::lstat_at(dir, name)
            .map(|s| s.st_mode & libc::S_IFMT == libc::S_IFDIR)
            .unwrap_or(false);
        if is_dir {
            return self.stash(dir, name, rel);
        }
        let n = self.number(rel)?;
        let to = n.to_string();
        match nix::unistd::linkat(
            dir,
            name,
            self.undo_fd()?,
            to.as_str(),
            nix::fcntl::AtFlags::empty(),
        ) {
            Ok(()) => {
                self.moved.insert(rel.to_vec(), self.undo_dir.join(to));
                Ok(())
            }
            // Another filesystem, or links refused: move it there under the same number.
            Err(_) => {
                self.announced.insert(rel.to_vec(), n);
                self.stash(dir, name, rel)
            }
        }
    }

    /// The undo number for `rel`: announced earlier, or a new one whose index line is written
    /// and synced now (an entry is never in the undo area without its line).
    fn number(&mut self, rel: &[u8]) -> Result<u64> {
        if let Some(n) = self.announced.remove(rel) {
            return Ok(n);
        }
        self.announce(&[rel])?;
        Ok(self.announced.remove(rel).expect("just announced"))
    }

    /// Writes the undo index lines of every path in `rels` with one sync.
    fn announce(&mut self, rels: &[&[u8]]) -> Result<()> {
        if rels.is_empty() {
            return Ok(());
        }
        let mut lines = String::new();
        for rel in rels {
            let n = self.undo_next;
            self.undo_next += 1;
            lines.push_str(&format!("{n} {}\n", hex(rel)));
            self.announced.insert(rel.to_vec(), n);
        }
        let index = self.undo_index.as_mut().expect("opened with the journal");
        index.write_all(lines.as_bytes()).at(&self.undo_dir)?;
        index.sync_data().at(&self.undo_dir)
    }

    fn read_local(&self, id: &Id, c: &LocalChunk) -> Option<Vec<u8>> {
        let file = match &c.at {
            LocalAt::File(p) => File::open(p).ok()?,
            LocalAt::Tree(rel) => match self.moved.get(rel) {
                Some(p) => File::open(p).ok()?,
                None => crate::sys::open_file_beneath(&self.root_fd, rel, &self.root).ok()?,
            },
        };
        let mut buf = vec![0u8; c.len as usize];
        match &c.extents {
            None => file.read_exact_at(&mut buf, c.offset).ok()?,
            Some(ext) => {
                // Map the data offset through the extents; a chunk may span several.
                let (mut data_at, mut filled) = (0u64, 0usize);
                for &(off, len) in ext.iter() {
                    let want = c.offset + filled as u64;
                    if want < data_at + len && filled < buf.len() {
                        let skip = want - data_at;
                        let n = ((len - skip) as usize).min(buf.len() - filled);
                        file.read_exact_at(&mut buf[filled..filled + n], off + skip)
                            .ok()?;
                        filled += n;
                    }
                    data_at += len;
                }
                if filled < buf.len() {
                    return None;
                }
            }
        }
        (Id::of(&buf) == *id).then_some(buf)
    }

    /// The blob, from the first place on the node that still holds it.
    fn find_local(&self, id: &Id) -> Option<Vec<u8>> {
        self.local
            .get(id)?
            .iter()
            .find_map(|c| self.read_local(id, c))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Removes a file or a whole directory tree named `name` in `dir`.
fn remove_tree(dir: BorrowedFd, name: &[u8], shown_path: &Path) -> Result<()> {
    let st = sys::lstat_at(dir, name).at(shown_path)?;
    if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
        let sub = nix::fcntl::openat(dir, name, sys::DIR_FLAGS, Mode::empty()).at(shown_path)?;
        let names: Vec<Vec<u8>> = nix::dir::Dir::from_fd(nix::unistd::dup(&sub).at(shown_path)?)
            .at(shown_path)?
            .into_iter()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_bytes().to_vec())
            .filter(|n| n != b"." && n != b"..")
            .collect();
        for n in names {
            remove_tree(
                sub.as_fd(),
                &n,
                &shown_path.join(std::ffi::OsStr::from_bytes(&n)),
            )?;
        }
        unlinkat(dir, name, UnlinkatFlags::RemoveDir).at(shown_path)
    } else {
        unlinkat(dir, name, UnlinkatFlags::NoRemoveDir).at(shown_path)
    }
}

/// Where the blobs an update needs come from, in order: the staging area (fetched), the node
/// itself, nothing else (everything missing was fetched before applying began).
struct Provider<'a> {
    engine: &'a Engine,
    staging: PathBuf,
}

impl BlobSource for Provider<'_> {
    fn get(&self, id: &Id) -> Result<Vec<u8>> {
        let staged = self.staging.join(id.hex());
        if let Ok(data) = std::fs::read(&staged) {
            if Id::of(&data) == *id {
                return Ok(data);
            }
        }
        if let Some(data) = self.engine.find_local(id) {
            return Ok(data);
        }
        Err(Error::NotFound(format!(
            "blob {} is needed but neither fetched nor on the node",
            id.short()
        )))
    }
}

/// The disk's answer for one path: its stat and xattrs, or nothing.
fn look(dir: BorrowedFd, name: &[u8]) -> Option<(FileStat, sys::Xattrs)> {
    let st = sys::lstat_at(dir, name).ok()?;
    let x = sys::xattrs_at(dir, name).unwrap_or_default();
    Some((st, x))
}

/// Refuses a revision in which an ancestor of the node state directory is not a directory.
/// The journal, the undo area and the staged blobs live there: replacing `/var` would move
/// them away in the middle of the update that writes them, and leave the node half updated,
/// every rerun failing. Checked before anything is written.
fn check_state_dir_path(manifest: &Manifest) -> Result<()> {
    let mut p = parent(STATE_DIR.as_bytes());
    while !p.is_empty() {
        let kind = match manifest.get(p).map(|e| &e.kind) {
            None | Some(Kind::Dir) => None,
            Some(Kind::Char { .. }) => Some("character device"),
            Some(Kind::Block { .. }) => Some("block device"),
            Some(Kind::Hardlink { .. }) => Some("file"),
            Some(k) => Some(k.name()),
        };
        if let Some(kind) = kind {
            return Err(invalid(format!(
                "the image makes {shown} a {kind}; the node state lives in /{STATE_DIR}, so {shown} \
                 must stay a directory on the node. Make {shown} a directory in the golden client \
                 (for a {shown} kept elsewhere, a bind mount in /etc/fstab instead of a symlink) and \
                 capture again; the node was not changed",
                shown = display_path(p)
            )));
        }
        p = parent(p);
    }
    Ok(())
}

/// What the node records for the tree `manifest` of `target`: the revision, and with overrides
/// the override revisions and the id of the composed manifest.
fn target_ref(target: &Target, manifest: &Manifest, opts: &UpdateOptions) -> RevRef {
    let mut r = RevRef::from(target);
    if let Some(o) = opts.overlay.as_ref().filter(|o| !o.layers.is_empty()) {
        r.overrides = o.layers.clone();
        r.tree = Some(Id::of(&manifest.encode()).hex());
    }
    r
}

/// Refuses a plan that deletes or replaces entries on a root that holds no node state (and no
/// interrupted update), unless `--adopt` takes responsibility: run on a workstation by mistake
/// (the default root is `/`), updateclient would otherwise delete `/home`, `/boot` and
/// everything else the image lacks. Creating entries and setting metadata lose nothing, so an
/// empty root and one that already holds the image (a node another tool installed) pass. A dry
/// run is not refused: its warning says what a real run would do. Checked before anything is
/// written, the state directory included.
fn check_unmanaged(
    root: &Path,
    managed: bool,
    manifest: &Manifest,
    steps: &[Step],
    removals: &[Vec<u8>],
    opts: &UpdateOptions,
) -> Result<Option<String>> {
    let replaced: Vec<&[u8]> = steps
        .iter()
        .filter(|s| matches!(s.act, Act::Replace | Act::Content))
        .map(|s| manifest.entries[s.entry].path.as_slice())
        .collect();
    // Leftover temporary names count too: without a journal there never was an update here to
    // leave them, so a `*.aurum-new` is someone else's file.
    let deleted: Vec<&[u8]> = removals.iter().map(|p| p.as_slice()).collect();
    if managed || opts.adopt || (deleted.is_empty() && replaced.is_empty()) {
        return Ok(None);
    }
    let examples: Vec<String> = deleted
        .iter()
        .chain(&replaced)
        .take(5)
        .map(|p| display_path(p))
        .collect();
    let what = format!(
        "{} holds no aurum node state (/{STATE_DIR}), and the plan would delete {} entries \
         (each with everything under it) and replace {} ({}{})",
        root.display(),
        deleted.len(),
        replaced.len(),
        examples.join(", "),
        if deleted.len() + replaced.len() > examples.len() {
            ", ..."
        } else {
            ""
        }
    );
    if opts.dry_run {
        return Ok(Some(format!(
            "{what}: a real run is refused unless given --adopt"
        )));
    }
    Err(invalid(format!(
        "refusing to update: {what}. Nothing was changed. Is --root right? If this root is a \
         node you mean to bring to the image (installed by another tool), review the plan with \
         `aurum updateclient --dry-run`, then rerun updateclient with --adopt; a new node is \
         installed with `aurum install`"
    )))
}

/// Takes the node's lock before the first write, when the update planned on a root without a
/// state directory (see [`Node::open_deferred`]); refuses to go on if another update ran in
/// the meantime, as the plan was made against what that one changed. The directories holding
/// the state directory exist from then on: the steps creating them are dropped (their
/// metadata is set with every directory's at the end).
fn claim_node(
    node: &Node,
    planned: &NodeState,
    manifest: &Manifest,
    steps: &mut Vec<Step>,
) -> Result<()> {
    if !node.claim()? {
        return Ok(());
    }
    if node.state()?.current != planned.current || node.journal()?.is_some() {
        return Err(invalid(format!(
            "another aurum update ran on {} while this one planned; nothing was changed, rerun it",
            node.root.display()
        )));
    }
    let state_dir = STATE_DIR.as_bytes();
    steps.retain(|s| {
        let p = manifest.entries[s.entry].path.as_slice();
        !(s.act == Act::Create && (p == state_dir || entry_is_under(state_dir, p)))
    });
    Ok(())
}

/// Brings the root of `node` to `target`. `source` fetches what the node lacks; `None` means
/// the node must hold everything (a rollback).
///
/// When the filesystem refuses a write once applying has begun (full, over quota, read-only,
/// an immutable file), the node is returned to the revision it ran before and the error says
/// so: a node is never left between two revisions by something the administrator can fix.
pub fn update(
    node: &Node,
    target: &Target,
    manifest: &Manifest,
    source: Option<&dyn RevisionSource>,
    opts: &UpdateOptions,
    progress: &dyn Progress,
) -> Result<UpdateReport> {
    let err = match run(node, target, manifest, source, opts, progress, None) {
        Ok(report) => return Ok(report),
        Err(err) => err,
    };
    match refused_write(&err) {
        Some(errno) if !opts.dry_run => undo_failed(node, manifest, opts, progress, err, errno),
        _ => Err(err),
    }
}

/// The errno of a write the filesystem refused for a reason the administrator can remove.
fn refused_write(err: &Error) -> Option<i32> {
    err.raw_os_error()
        .filter(|e| [libc::ENOSPC, libc::EDQUOT, libc::EROFS, libc::EPERM].contains(e))
}

/// After `err` stopped an update mid-way: removes its temporary names and staged blobs and
/// takes the node back to the revision the update started from, linking the entries it had
/// moved aside back from its undo area. The error returned names the cause, the state of the
/// node, and what to do.
fn undo_failed(
    node: &Node,
    failed: &Manifest,
    opts: &UpdateOptions,
    progress: &dyn Progress,
    err: Error,
    errno: i32,
) -> Result<UpdateReport> {
    let fix = match errno {
        libc::ENOSPC => "free space there",
        libc::EDQUOT => "raise the quota or free space",
        libc::EROFS => "remount it read-write",
        _ => "make it writable (`lsattr` shows an immutable or append-only flag; `chattr -i` clears it)",
    };
    // Whatever stops the undo, the error still names the write that failed and its fix.
    let not_returned = |e: Error| {
        Error::Unwritable(format!(
            "{err}: {fix}; the node could not be returned to its revision ({e}); every file \
             is either its old or its new version; once it is fixed, run the same command \
             again (or `aurum rollback`)"
        ))
    };
    let journal = node.journal().map_err(not_returned)?;
    free_staging(node);
    let Some(from) = journal.as_ref().and_then(|j| j.from.clone()) else {
        // Nothing was applied yet (the failure came before), or the node had no revision to
        // go back to (its first update): a rerun finishes or redoes it.
        if let Some(j) = &journal {
            Engine::for_root(node)
                .map_err(not_returned)?
                .remove_temps(&j.temps);
        }
        return Err(Error::Unwritable(format!(
            "{err}: {fix}, then run the same command again; every file on the node is either \
             its old or its new version"
        )));
    };
    let (target, back, overlay) = recorded(node, &from)
        .and_then(|r| r.ok_or_else(|| no_manifest(&from)))
        .map_err(not_returned)?;
    // Back to exactly what the node ran, its overrides included; the list of overrides it
    // follows stays as it was.
    let opts = &UpdateOptions {
        action: opts.action.clone(),
        dry_run: false,
        no_delete: opts.no_delete,
        verify_local: opts.verify_local,
        excludes: opts.excludes.clone(),
        adopt: true,
        overlay: Some(overlay),
        before_writes: None,
    };
    let cause = err.to_string();
    let undoing = Undoing {
        cause: &cause,
        failed,
    };
    match run(node, &target, &back, None, opts, progress, Some(undoing)) {
        Ok(_) => Err(Error::Unwritable(format!(
            "{cause}: {fix}, then run the same command again; the node was returned to {} \
             and nothing of the update is left on it",
            from.name()
        ))),
        Err(undo_err) => Err(Error::Unwritable(format!(
            "{cause}: {fix}; returning the node to {} failed too ({undo_err}); every file \
             is either its old or its new version; once it is fixed, run the same command \
             again (or `aurum rollback`)",
            from.name()
        ))),
    }
}

/// Keeps a fetched or rebuilt blob in `staging` until the run uses it: written under a
/// temporary name and renamed, so a staged blob is always whole.
fn stage(staging: &Path, id: &Id, data: &[u8]) -> Result<()> {
    let p = staging.join(id.hex());
    let tmp = staging.join(format!(".{}", id.hex()));
    std::fs::write(&tmp, data).at(&tmp)?;
    std::fs::rename(&tmp, &p).at(&p)
}

/// Deletes the staged blobs of an update that will not use them (or has used them).
fn free_staging(node: &Node) {
    let staging = node.dir.join("staging");
    if let Ok(it) = std::fs::read_dir(&staging) {
        for f in it.flatten() {
            let _ = std::fs::remove_file(f.path());
        }
    }
}

/// A run taking the node back from an update that failed: why it failed, and the tree that
/// update was bringing (what it may have created).
#[derive(Clone, Copy)]
struct Undoing<'a> {
    cause: &'a str,
    failed: &'a Manifest,
}

/// One run of the engine. `undoing` is set when the run takes the node back from an
/// update that failed (see [`undo_failed`]): it then links the entries back from the failed
/// update's undo area and drops that area at the end.
fn run(
    node: &Node,
    target: &Target,
    manifest: &Manifest,
    source: Option<&dyn RevisionSource>,
    opts: &UpdateOptions,
    progress: &dyn Progress,
    undoing: Option<Undoing>,
) -> Result<UpdateReport> {
    let started = Instant::now();
    manifest.validate()?;
    check_state_dir_path(manifest)?;
    let mut state = node.state()?;
    let journal = node.journal()?;
    // The revision the node ran before whatever is in progress.
    let from = match &journal {
        Some(j) => j.from.clone(),
        None => state.current.clone(),
    };
    // What the node ran before: a file still matching its size and mtime there is taken to be
    // that version without reading it (as the capture's stat cache does). After a crash that is
    // the revision the interrupted run started from, and every file is hashed: one the
    // interrupted run replaced may share size and mtime with the old version (both written in
    // one clock tick), and taking it for the old one would ask for blobs the run may already
    // have dropped with the undo areas.
    let current = match &from {
        Some(c) => node.kept_manifest(&c.tree_id()?)?,
        None => None,
    };
    let to_ref = target_ref(target, manifest, opts);
    let mut engine = Engine::for_root(node)?;
    engine.drops_others = !from.as_ref().is_some_and(|f| f.same_tree(&to_ref));
    engine.drops_own = undoing.is_some();
    if let (Some(j), false) = (&journal, opts.dry_run) {
        engine.remove_temps(&j.temps);
    }
    let mut report = UpdateReport {
        from: from.clone(),
        to: Some(to_ref.clone()),
        ..Default::default()
    };

    // ---- plan ----
    progress.phase("planning", Some(manifest.entries.len() as u64), false);
    let state_dir = STATE_DIR.as_bytes();
    let skip = |path: &[u8], is_dir: bool| -> bool {
        path == state_dir || entry_is_under(path, state_dir) || opts.excludes.excluded(path, is_dir)
    };
    let primaries: HashSet<&[u8]> = manifest
        .entries
        .iter()
        .filter_map(|e| match &e.kind {
            Kind::Hardlink { target } => Some(target.as_slice()),
            _ => None,
        })
        .collect();
    let mut steps: Vec<Step> = Vec::new();
    let mut changing: HashSet<&[u8]> = HashSet::new();
    let mut excluded_dirs: Vec<&[u8]> = Vec::new();
    let mut children: HashMap<&[u8], HashSet<&[u8]>> = HashMap::new();
    let mut last_dir: Option<(Vec<u8>, Option<OwnedFd>)> = None;
    // The chunks of disk files the plan read, by entry, for the hand-change check.
    let mut hashed: HashMap<usize, Option<Vec<Chunk>>> = HashMap::new();
    let mut relink: Vec<usize> = Vec::new();
    for (i, e) in manifest.entries.iter().enumerate() {
        progress.advance(1);
        if e.path.is_empty() {
            if let Some((st, x)) = look(engine.root_fd.as_fd(), b".") {
                let what = meta_diff(&st, &x, e);
                if !what.is_empty() {
                    steps.push(Step {
                        entry: i,
                        act: Act::Meta,
                        what,
                    });
                }
            }
            continue;
        }
        let is_dir = e.kind == Kind::Dir;
        if excluded_dirs.iter().any(|d| entry_is_under(&e.path, d)) || skip(&e.path, is_dir) {
            if is_dir {
                excluded_dirs.push(&e.path);
            }
            continue;
        }
        children
            .entry(parent(&e.path))
            .or_default()
            .insert(file_name(&e.path));
        let p = parent(&e.path);
        if last_dir.as_ref().map(|(lp, _)| lp.as_slice()) != Some(p) {
            // A directory the plan creates or replaces is not one on disk: no need to try.
            let on_disk = (!changing.contains(p))
                .then(|| engine.dir(p).ok())
                .flatten();
            last_dir = Some((p.to_vec(), on_disk));
        }
        let Some(dir) = last_dir.as_ref().and_then(|(_, d)| d.as_ref()) else {
            steps.push(Step {
                entry: i,
                act: Act::Create,
                what: vec![],
            });
            changing.insert(&e.path);
            continue;
        };
        let name = file_name(&e.path);
        let Some((st, x)) = look(dir.as_fd(), name) else {
            steps.push(Step {
                entry: i,
                act: Act::Create,
                what: vec![],
            });
            changing.insert(&e.path);
            continue;
        };
        if let Kind::Hardlink { target: t } = &e.kind {
            let same_inode = !changing.contains(t.as_slice())
                && engine
                    .dir(parent(t))
                    .ok()
                    .and_then(|d| sys::lstat_at(d.as_fd(), file_name(t)).ok())
                    .is_some_and(|pst| pst.st_ino == st.st_ino && pst.st_dev == st.st_dev);
            if !same_inode {
                steps.push(Step {
                    entry: i,
                    act: Act::Replace,
                    what: vec!["hardlink"],
                });
                changing.insert(&e.path);
            }
            continue;
        }
        if !kind_matches(&st, e) {
            steps.push(Step {
                entry: i,
                act: Act::Replace,
                what: vec!["type"],
            });
            changing.insert(&e.path);
            continue;
        }
        let mut what = meta_diff(&st, &x, e);
        match &e.kind {
            Kind::File { size, chunks, .. } => {
                let old = current
                    .as_ref()
                    .and_then(|m| m.get(&e.path).map(|o| m.resolve(o)));
                // Not after a crash: the interrupted run may have put the target's version in
                // place, and two versions written in one clock tick share size and mtime.
                let disk_is_old = journal.is_none()
                    && old.is_some_and(|r| {
                        st.st_size as u64 == r.size()
                            && (st.st_mtime, st.st_mtime_nsec as u32) == (r.mtime, r.mtime_nsec)
                    });
                let same = if st.st_nlink > 1 && !primaries.contains(e.path.as_slice()) {
                    // A hardlink the image has broken: give the path its own inode. Its other
                    // name may be in an undo area (a file an interrupted rollback linked back)
                    // and hold the very content wanted, so the file may be its own source.
                    relink.push(i);
                    false
                } else if opts.verify_local || !disk_is_old {
                    // Without --verify-local, size and mtime prove nothing here (two versions
                    // written in the same clock tick share both): read it.
                    st.st_size as u64 == *size && {
                        let on_disk = local_chunks(&engine, &e.path, &st)?;
                        let same = on_disk.as_ref() == Some(chunks);
                        if old.is_some() {
                            hashed.insert(i, on_disk);
                        }
                        same
                    }
                } else {
                    matches!(&old.expect("disk_is_old").kind, Kind::File { chunks: c, .. } if c == chunks)
                };
                if !same {
                    what.insert(0, "content");
                    steps.push(Step {
                        entry: i,
                        act: Act::Content,
                        what,
                    });
                    changing.insert(&e.path);
                    continue;
                }
            }
            Kind::Symlink { target: t } => {
                let on_disk = nix::fcntl::readlinkat(dir.as_fd(), name).ok();
                if on_disk.as_ref().map(|o| o.as_bytes()) != Some(t.as_slice()) {
                    steps.push(Step {
                        entry: i,
                        act: Act::Replace,
                        what: vec!["target"],
                    });
                    changing.insert(&e.path);
                    continue;
                }
            }
            _ => {}
        }
        if !what.is_empty() {
            steps.push(Step {
                entry: i,
                act: Act::Meta,
                what,
            });
        }
    }
    progress.finish();

    // Extras: what the disk has under the image's directories that the image does not.
    let mut removals: Vec<Vec<u8>> = Vec::new();
    let state_ancestors: Vec<&[u8]> = {
        let mut v = Vec::new();
        let mut p = state_dir;
        loop {
            v.push(p);
            if p.is_empty() {
                break;
            }
            p = parent(p);
        }
        v
    };
    // Directories to list: the image's own (skipping excluded ones), then extra directories
    // that hold excluded entries (those are kept, like rsync keeps a directory whose contents
    // are protected by an exclude, and only their other contents go).
    let empty = HashSet::new();
    let mut to_list: Vec<Vec<u8>> = manifest
        .entries
        .iter()
        .filter(|e| e.kind == Kind::Dir)
        .filter(|e| {
            e.path.is_empty()
                || !(skip(&e.path, true)
                    || excluded_dirs
                        .iter()
                        .any(|d| *d == e.path.as_slice() || entry_is_under(&e.path, d)))
        })
        .map(|e| e.path.clone())
        .collect();
    let created_by_failed: HashSet<&[u8]> = match undoing {
        Some(u) if opts.no_delete => u.failed.entries.iter().map(|e| e.path.as_slice()).collect(),
        _ => HashSet::new(),
    };
    // What stays: the excluded, and with --no-delete what the node had (not what a failed
    // update left on it).
    let keeps = |p: &[u8], is_dir: bool| {
        skip(p, is_dir) || (opts.no_delete && !created_by_failed.contains(p))
    };
    while let Some(dir_path) = to_list.pop() {
        // A directory the plan creates holds nothing yet.
        if changing.contains(dir_path.as_slice()) {
            continue;
        }
        let Ok(dir) = engine.dir(&dir_path) else {
            continue;
        };
        let Ok(listing) = nix::dir::Dir::from_fd(nix::unistd::dup(&dir).at(&engine.root)?) else {
            continue;
        };
        let known = children.get(dir_path.as_slice()).unwrap_or(&empty);
        for ent in listing.into_iter().flatten() {
            let name = ent.file_name().to_bytes();
            if name == b"." || name == b".." || known.contains(name) {
                continue;
            }
            let mut path = dir_path.clone();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(name);
            if state_ancestors.contains(&path.as_slice()) {
                continue;
            }
            let is_dir = sys::lstat_at(dir.as_fd(), name)
                .is_ok_and(|s| s.st_mode & libc::S_IFMT == libc::S_IFDIR);
            if keeps(&path, is_dir) {
                continue;
            } else if is_dir && holds(&engine, &path, &keeps) {
                to_list.push(path);
            } else {
                removals.push(path);
            }
        }
    }
    removals.sort();
    let managed = state.current.is_some() || journal.is_some();
    if let Some(w) = check_unmanaged(&node.root, managed, manifest, &steps, &removals, opts)? {
        engine.warn(w);
    }

    // Hand changes: what the update overwrites or deletes that differs from the revision the
    // node runs. Not after a crash (the interrupted run made the differences) nor on a node
    // aurum never updated (nothing to compare with).
    if let (Some(cur), None) = (current.as_ref(), &journal) {
        let mut touched: Vec<(&[u8], Option<usize>)> = steps
            .iter()
            .map(|s| (manifest.entries[s.entry].path.as_slice(), Some(s.entry)))
            .collect();
        touched.extend(removals.iter().map(|p| (p.as_slice(), None)));
        touched.sort();
        for (p, i) in touched {
            let on_disk = i.and_then(|i| hashed.get(&i));
            let what = changed_by_hand(&engine, cur, p, on_disk, opts.verify_local)?;
            if !what.is_empty() {
                report.modified_locally.push(display_path(p));
                report.local_changes.push(LocalChange {
                    path: display_path(p),
                    what,
                });
            }
        }
    }

    // ---- blobs: from the node, else fetched ----
    let mut needed: Vec<Id> = Vec::new();
    let mut seen: HashSet<Id> = HashSet::new();
    for s in &steps {
        if let Kind::File { chunks, .. } = &manifest.entries[s.entry].kind {
            if s.act != Act::Meta {
                for c in chunks {
                    if seen.insert(c.id) {
                        needed.push(c.id);
                    }
                }
            }
        }
    }
    index_local(&mut engine, current.as_ref(), node, &state)?;
    for &i in &relink {
        let e = &manifest.entries[i];
        add_local(&mut engine.local, e, LocalAt::Tree(e.path.clone()));
    }
    let staging = node.dir.join("staging");
    let mut to_fetch = Vec::new();
    // Blobs an interrupted run fetched already: one listing, not a stat per blob.
    let staged: HashSet<std::ffi::OsString> = std::fs::read_dir(&staging)
        .map(|it| it.flatten().map(|f| f.file_name()).collect())
        .unwrap_or_default();
    for id in &needed {
        if staged.contains(std::ffi::OsStr::new(&id.hex())) {
            continue;
        }
        // Read it now: a file changed since the node's last update must not be counted on.
        match engine.find_local(id) {
            Some(data) => report.bytes_reused += data.len() as u64,
            None => to_fetch.push(*id),
        }
    }
    let chunk_len: HashMap<Id, u32> = manifest
        .entries
        .iter()
        .flat_map(|e| match &e.kind {
            Kind::File { chunks, .. } => chunks.iter().map(|c| (c.id, c.len)).collect(),
            _ => Vec::new(),
        })
        .collect();
    report.bytes_to_fetch = to_fetch.iter().map(|id| u64::from(chunk_len[id])).sum();

    for s in &steps {
        let e = &manifest.entries[s.entry];
        match s.act {
            Act::Create => report.created += 1,
            Act::Replace | Act::Content => report.changed += 1,
            Act::Meta => report.metadata_only += 1,
        }
        if opts.dry_run {
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
            report.plan.push(format!("{tag} {}{what}", e.display()));
        }
    }
    report.deleted = removals.len() as u64;
    if opts.dry_run {
        for p in &removals {
            report
                .plan
                .push(format!("- {:<8} {}", "delete", display_path(p)));
        }
    }
    report.unchanged = steps.is_empty() && removals.is_empty();
    if opts.dry_run {
        report.seconds = started.elapsed().as_secs_f64();
        report.warnings = engine.warnings.into_inner().expect("lock");
        return Ok(report);
    }
    let undo_name = match &journal {
        Some(j) => j.undo.clone(),
        None => {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            format!("{t}-{}", std::process::id())
        }
    };
    engine.undo_dir = node.dir.join("undo").join(&undo_name);
    // Undoing a failed update writes next to nothing (it links back what the update moved
    // aside) and must not be refused for the very lack of room that stopped the update.
    if undoing.is_none() {
        let needs = plan_needs(&engine, manifest, &steps, &removals, report.bytes_to_fetch);
        preflight::check(engine.root_fd.as_fd(), &engine.root, &needs)?;
    }
    if let (None, Some(before)) = (undoing, &opts.before_writes) {
        before()?;
    }
    // The lock is taken (and on a new node the state directory made) only once nothing above
    // refused the run: a refused plan leaves an unmanaged root without a state directory.
    claim_node(node, &state, manifest, &mut steps)?;
    let syncer = sys::Syncer::default();
    let fresh = if is_fresh(&from, undoing.is_some(), manifest, &steps, &removals) {
        let journal = Journal {
            action: opts.action.clone(),
            from: None,
            to: to_ref.clone(),
            undo: undo_name.clone(),
            temps: Vec::new(),
            fresh: true,
        };
        Some(fresh::Writer::begin(
            &engine, node, manifest, &steps, journal, &syncer,
        )?)
    } else {
        None
    };
    // Blobs whose older version the node holds: ask for a binary delta against it first.
    let mut delta_wants: Vec<(delta::Want, u32)> = Vec::new();
    if let (Some(cur), Some(_)) = (current.as_ref(), source) {
        let missing: HashSet<Id> = to_fetch.iter().copied().collect();
        for w in delta::wants(cur, manifest, Some(&|id: &Id| missing.contains(id))) {
            if w.base.iter().all(|b| engine.local.contains_key(b)) {
                let len = chunk_len[&w.target];
                delta_wants.push((w, len));
            }
        }
    }
    report.deltas_asked = delta_wants.len() as u64;
    if !delta_wants.is_empty() {
        let source = source.expect("checked above");
        let by_target: HashMap<Id, &delta::Want> =
            delta_wants.iter().map(|(w, _)| (w.target, w)).collect();
        let rebuilt: std::sync::Mutex<HashSet<Id>> = Default::default();
        let staging_ref = &staging;
        let engine_ref = &engine;
        report.bytes_fetched += source.fetch_deltas(
            &delta_wants,
            &|target, d| {
                let Some(w) = by_target.get(target) else {
                    return Ok(());
                };
                let mut base = Vec::new();
                for b in &w.base {
                    match engine_ref.find_local(b) {
                        Some(data) => base.extend_from_slice(&data),
                        // Changed on disk since: the whole blob is fetched instead.
                        None => return Ok(()),
                    }
                }
                match delta::decode(&base, &d, target) {
                    Ok(data) => {
                        stage(staging_ref, target, &data)?;
                        rebuilt.lock().expect("lock").insert(*target);
                    }
                    Err(e) => log::warn!("{e:#}; fetching the whole blob"),
                }
                Ok(())
            },
            progress,
        )?;
        let rebuilt = rebuilt.into_inner().expect("lock");
        report.deltas = rebuilt.len() as u64;
        to_fetch.retain(|id| !rebuilt.contains(id));
    }
    if !to_fetch.is_empty() {
        let source = source.ok_or_else(|| {
            Error::NotFound(format!(
                "{} blobs of the target are not on this node (undo area and files); give --server or --repo to fetch them",
                to_fetch.len()
            ))
        })?;
        let staging_ref = &staging;
        let fresh_ref = &fresh;
        report.bytes_fetched += source.fetch(
            &to_fetch,
            &|id, data| {
                // On a fresh root a file made of this blob alone is written now.
                if let Some(w) = fresh_ref {
                    if !w.take(id, &data)? {
                        return Ok(());
                    }
                }
                stage(staging_ref, id, &data)
            },
            progress,
        )?;
    }

    // ---- apply ----
    match fresh {
        Some(writer) => writer.finish(&staging, progress)?,
        None => {
            let journal = Journal {
                action: opts.action.clone(),
                from: from.clone(),
                to: to_ref.clone(),
                undo: undo_name,
                temps: Vec::new(),
                fresh: false,
            };
            apply_in_place(
                &mut engine,
                node,
                manifest,
                &steps,
                &removals,
                &staging,
                journal,
                &syncer,
                progress,
            )?
        }
    }
    let index_path = engine.undo_dir.join("index");
    // Directory metadata last, deepest first: creating and removing entries moved their mtimes.
    for e in manifest.entries.iter().rev() {
        if e.kind != Kind::Dir
            || (!e.path.is_empty()
                && (skip(&e.path, true)
                    || excluded_dirs.iter().any(|d| entry_is_under(&e.path, d))))
        {
            continue;
        }
        if e.path.is_empty() {
            super::set_metadata_root(&engine.root_fd, e, &engine.root, &|w| engine.warn(w))?;
        } else if let Ok(dir) = engine.dir(parent(&e.path)) {
            set_metadata(
                dir.as_fd(),
                file_name(&e.path),
                e,
                None,
                &engine.root,
                &|w| engine.warn(w),
            )?;
        }
    }
    if let Some(f) = &engine.undo_index {
        f.sync_all().at(&index_path)?;
    }
    // Every rename, removal and metadata change durable before the state says it is done.
    for p in &removals {
        if let Ok(d) = engine.dir(parent(p)) {
            syncer.note(d.as_fd());
        }
    }
    syncer.sync(&engine.root)?;

    // ---- commit ----
    // The undo areas this run makes useless go before the state moves: a crash in between
    // leaves a tree already at the target, which a rerun finds needing nothing.
    drop_areas(node, &engine)?;
    node.keep_manifest(manifest)?;
    if let Some(image) = opts.overlay.as_ref().and_then(|o| o.image.as_ref()) {
        node.keep_manifest(image)?;
    }
    let to = to_ref;
    let switched = !from.as_ref().is_some_and(|f| f.same_tree(&to));
    if switched {
        state.previous = from.clone();
    }
    state.current = Some(to.clone());
    if let Some(follow) = opts.overlay.as_ref().and_then(|o| o.follow.as_ref()) {
        state.overrides = follow.clone();
    }
    report.seconds = started.elapsed().as_secs_f64();
    // What crossed the network: the blobs and deltas counted above, and also the refs, the
    // manifest and the pack indexes that told the node what to fetch.
    if let Some(src) = source {
        report.bytes_fetched = report.bytes_fetched.max(src.bytes_received());
    }
    state.history.push(HistoryEntry {
        time: crate::catalog::now(),
        action: opts.action.clone(),
        from: from.as_ref().map(|f| f.id.clone()),
        to: to.id.clone(),
        result: match undoing {
            None => "ok".into(),
            Some(u) => format!("undone: {}", u.cause),
        },
        bytes_fetched: report.bytes_fetched,
        seconds: report.seconds,
    });
    node.save_state(&state)?;
    node.prune_manifests(&state)?;
    node.end()?;
    // A run that stayed on the same revision (a repair) drops its own area when it moved
    // nothing aside.
    if engine.undo_next == 0 {
        let _ = std::fs::remove_dir_all(&engine.undo_dir);
    }
    free_staging(node);
    report.warnings = engine.warnings.into_inner().expect("lock");
    Ok(report)
}

/// Whether the run writes a fresh root: the node's first revision, onto a root that holds
/// nothing of it yet (empty, or fresh filesystems with only their mount points), so that every
/// step creates an entry or sets a directory's metadata and nothing is replaced or deleted.
/// Such a run is written as `checkout` writes (see [`fresh`]).
fn is_fresh(
    from: &Option<RevRef>,
    undoing: bool,
    manifest: &Manifest,
    steps: &[Step],
    removals: &[Vec<u8>],
) -> bool {
    from.is_none()
        && !undoing
        && removals.is_empty()
        && steps.iter().all(|s| {
            s.act == Act::Create
                || (s.act == Act::Meta && manifest.entries[s.entry].kind == Kind::Dir)
        })
}

/// Applies the plan on a node that may be running: each file written under a temporary name
/// and renamed into place, whatever it replaces or deletes kept in the undo area, all under
/// `journal` (its temporary names are filled in here), noting the filesystems written to in
/// `syncer`.
#[allow(clippy::too_many_arguments)]
fn apply_in_place(
    engine: &mut Engine,
    node: &Node,
    manifest: &Manifest,
    steps: &[Step],
    removals: &[Vec<u8>],
    staging: &Path,
    journal: Journal,
    syncer: &sys::Syncer,
    progress: &dyn Progress,
) -> Result<()> {
    std::fs::create_dir_all(&engine.undo_dir).at(&engine.undo_dir)?;
    let index_path = engine.undo_dir.join("index");
    // Each stash writes its index line first, so the line count numbers the next one.
    engine.undo_next = std::fs::read_to_string(&index_path)
        .map(|t| t.lines().count() as u64)
        .unwrap_or(0);
    engine.undo_index = Some(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&index_path)
            .at(&index_path)?,
    );
    node.begin(&Journal {
        temps: steps
            .iter()
            .filter(|s| s.act != Act::Meta)
            .map(|s| &manifest.entries[s.entry])
            .filter(|e| e.kind != Kind::Dir)
            .map(|e| {
                let mut t = parent(&e.path).to_vec();
                if !t.is_empty() {
                    t.push(b'/');
                }
                t.extend_from_slice(&temp_name(file_name(&e.path)));
                hex(&t)
            })
            .collect(),
        ..journal
    })?;

    // Every entry this run moves or links into the undo area gets its index line now, with
    // one sync (rather than one per entry).
    {
        let mut rels: Vec<&[u8]> = removals.iter().map(|p| p.as_slice()).collect();
        rels.extend(
            steps
                .iter()
                .filter(|s| matches!(s.act, Act::Replace | Act::Content))
                .map(|s| manifest.entries[s.entry].path.as_slice()),
        );
        engine.announce(&rels)?;
    }
    for p in removals {
        let dir = engine.dir(parent(p))?;
        engine.stash(dir.as_fd(), file_name(p), p)?;
    }
    let total: u64 = steps
        .iter()
        .filter(|s| matches!(s.act, Act::Create | Act::Replace | Act::Content))
        .map(|s| manifest.entries[s.entry].data_len())
        .sum();
    progress.phase("writing", Some(total), true);
    // Pass 1: the new content of every file whose directory exists is written under a
    // temporary name, then made durable with one syncfs, so that pass 2 only renames: a crash
    // at any point leaves each path with its old content or its new.
    let provider = Provider {
        engine: &*engine,
        staging: staging.to_path_buf(),
    };
    let mut prewritten: HashSet<usize> = HashSet::new();
    syncer.note(engine.root_fd.as_fd());
    for s in steps {
        let e = &manifest.entries[s.entry];
        if s.act == Act::Meta || !matches!(e.kind, Kind::File { .. }) {
            continue;
        }
        let Ok(dir) = engine.dir(parent(&e.path)) else {
            continue; // a directory this update creates: written in pass 2
        };
        let temp = temp_name(file_name(&e.path));
        syncer.note(dir.as_fd());
        engine.write_temp(dir.as_fd(), &temp, e, &provider, progress)?;
        prewritten.insert(s.entry);
    }
    drop(provider);
    if !prewritten.is_empty() {
        syncer.sync(&engine.root)?;
    }
    // Pass 2, in manifest order.
    for s in steps {
        let e = &manifest.entries[s.entry];
        let dir = if e.path.is_empty() {
            None
        } else {
            Some(engine.dir(parent(&e.path))?)
        };
        if let Some(d) = &dir {
            syncer.note(d.as_fd());
        }
        let name = file_name(&e.path);
        let temp = temp_name(name);
        match (s.act, &e.kind) {
            (Act::Meta, _) | (_, Kind::Dir) => {
                if e.kind == Kind::Dir && s.act != Act::Meta {
                    let dir = dir.as_ref().expect("not the root");
                    if s.act == Act::Replace {
                        engine.stash(dir.as_fd(), name, &e.path)?;
                    }
                    mkdirat(dir.as_fd(), name, Mode::from_bits_truncate(0o700))
                        .at(shown(&engine.root, &e.path))?;
                }
                // Directory metadata is set at the end; other metadata now.
                if e.kind != Kind::Dir {
                    let dir = dir.as_ref().expect("not the root");
                    let r = manifest.resolve(e);
                    set_metadata(dir.as_fd(), name, r, None, &engine.root, &|w| {
                        engine.warn(w)
                    })?;
                }
            }
            (_, Kind::File { .. }) => {
                let dir = dir.as_ref().expect("not the root");
                if !prewritten.contains(&s.entry) {
                    let provider = Provider {
                        engine: &*engine,
                        staging: staging.to_path_buf(),
                    };
                    engine.write_temp(dir.as_fd(), &temp, e, &provider, progress)?;
                }
                engine.put_in_place(dir.as_fd(), &temp, name, &e.path, s.act)?;
            }
            _ => {
                let dir = dir.as_ref().expect("not the root");
                let _ = unlinkat(dir.as_fd(), temp.as_slice(), UnlinkatFlags::NoRemoveDir);
                create_special(dir.as_fd(), &temp, &engine.root_fd, e, &engine.root)?;
                if !matches!(e.kind, Kind::Hardlink { .. }) {
                    set_metadata(dir.as_fd(), &temp, e, None, &engine.root, &|w| {
                        engine.warn(w)
                    })?;
                }
                engine.put_in_place(dir.as_fd(), &temp, name, &e.path, s.act)?;
            }
        }
    }
    progress.finish();
    Ok(())
}

/// Where staged blobs go, as a tree path (for the space check).
const STAGED: &str = "var/lib/aurum-node/staging/blobs";

/// What the plan will write and touch, for [`preflight::check`]. A file linked back from an
/// undo area takes no new space.
fn plan_needs<'a>(
    engine: &Engine,
    manifest: &'a Manifest,
    steps: &[Step],
    removals: &'a [Vec<u8>],
    staged: u64,
) -> preflight::Needs<'a> {
    let mut needs = preflight::Needs::default();
    for s in steps {
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
            let bytes = if engine.whole_source(e).is_some() {
                0
            } else {
                e.data_len()
            };
            needs.writes.push((e.path.as_slice(), bytes));
        }
    }
    needs
        .touched
        .extend(removals.iter().map(|p| (p.as_slice(), Touch::Delete)));
    needs.writes.push((STAGED.as_bytes(), staged));
    needs
}

/// Prefix an undo area is renamed to when it is dropped: a half-deleted area is never read as
/// one (its index may be gone while its files are not).
const DROPPED: &str = ".dropped-";

/// Deletes the undo areas the run makes useless. Only the area of the last change of revision
/// is kept: it holds what a rollback to the previous revision needs. A run that stayed on the
/// same revision (a repair) keeps the older areas too; a run undoing a failed update drops the
/// failed update's area, whose entries it has put back.
fn drop_areas(node: &Node, engine: &Engine) -> Result<()> {
    let undo = node.dir.join("undo");
    for d in std::fs::read_dir(&undo).at(&undo)? {
        let d = d.at(&undo)?;
        let name = d.file_name();
        let path = d.path();
        let dropped = name.as_bytes().starts_with(DROPPED.as_bytes());
        let goes = if path == engine.undo_dir {
            engine.drops_own
        } else {
            dropped || engine.drops_others
        };
        if !goes {
            continue;
        }
        let gone = if dropped {
            path
        } else {
            let mut to = std::ffi::OsString::from(DROPPED);
            to.push(&name);
            let to = undo.join(to);
            std::fs::rename(&path, &to).at(&to)?;
            to
        };
        std::fs::remove_dir_all(&gone).at(&gone)?;
    }
    sys::sync_dir(&undo)
}

/// Whether the disk directory `rel` holds, at any depth, something `keeps` (an exclude,
/// --no-delete) protects.
fn holds(engine: &Engine, rel: &[u8], keeps: &dyn Fn(&[u8], bool) -> bool) -> bool {
    let Ok(dir) = engine.dir(rel) else {
        return false;
    };
    let Ok(dup) = nix::unistd::dup(&dir) else {
        return false;
    };
    let Ok(listing) = nix::dir::Dir::from_fd(dup) else {
        return false;
    };
    for ent in listing.into_iter().flatten() {
        let name = ent.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let mut path = rel.to_vec();
        path.push(b'/');
        path.extend_from_slice(name);
        let is_dir = ent.file_type() == Some(nix::dir::Type::Directory);
        if keeps(&path, is_dir) || (is_dir && holds(engine, &path, keeps)) {
            return true;
        }
    }
    false
}

/// The chunk ids of the file on disk at `rel`.
fn local_chunks(engine: &Engine, rel: &[u8], st: &FileStat) -> Result<Option<Vec<Chunk>>> {
    let Ok(file) = crate::sys::open_file_beneath(&engine.root_fd, rel, &engine.root) else {
        return Ok(None);
    };
    let sparse = (st.st_blocks as u64) * 512 < st.st_size as u64;
    Ok(
        file_chunks(file, st.st_size as u64, sparse, |_, _, _| Ok(()))
            .ok()
            .map(|c| c.chunks),
    )
}

/// What differs between the disk at `rel` and its entry in `cur`, the revision the node runs:
/// what was changed there by hand. `on_disk` is the disk file's chunks when the plan read them;
/// they are read here only when size and mtime cannot tell (or with `verify_local`).
fn changed_by_hand(
    engine: &Engine,
    cur: &Manifest,
    rel: &[u8],
    on_disk: Option<&Option<Vec<Chunk>>>,
    verify_local: bool,
) -> Result<Vec<&'static str>> {
    let dir = if rel.is_empty() {
        None
    } else {
        match engine.dir(parent(rel)) {
            Ok(d) => Some(d),
            Err(_) => return Ok(cur.get(rel).map(|_| vec!["deleted"]).unwrap_or_default()),
        }
    };
    let (dir, name) = match &dir {
        Some(d) => (d.as_fd(), file_name(rel)),
        None => (engine.root_fd.as_fd(), &b"."[..]),
    };
    let (old, (st, x)) = match (cur.get(rel).map(|o| cur.resolve(o)), look(dir, name)) {
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
            let size_same = st.st_size as u64 == *size;
            let content = if !size_same {
                true
            } else if !verify_local && !what.contains(&"mtime") {
                false
            } else {
                let read;
                let c = match on_disk {
                    Some(c) => c.as_ref(),
                    None => {
                        read = local_chunks(engine, rel, &st)?;
                        read.as_ref()
                    }
                };
                c != Some(chunks)
            };
            if content {
                what.insert(0, "content");
            }
        }
        Kind::Symlink { target } => {
            let on_disk = nix::fcntl::readlinkat(dir, name).ok();
            if on_disk.as_ref().map(|o| o.as_bytes()) != Some(target.as_slice()) {
                what.insert(0, "target");
            }
        }
        _ => {}
    }
    if matches!(what.first(), Some(&"content") | Some(&"target")) {
        // A new mtime goes with new content or a new symlink: say only that.
        what.retain(|w| *w != "mtime");
    }
    Ok(what)
}

/// Notes that the blobs of regular file `e` can be read at `at`.
fn add_local(local: &mut HashMap<Id, Vec<LocalChunk>>, e: &Entry, at: LocalAt) {
    if let Kind::File {
        chunks, extents, ..
    } = &e.kind
    {
        let extents = extents.clone().map(std::sync::Arc::new);
        let mut off = 0u64;
        for c in chunks {
            local.entry(c.id).or_default().push(LocalChunk {
                at: at.clone(),
                offset: off,
                len: c.len,
                extents: extents.clone(),
            });
            off += u64::from(c.len);
        }
    }
}

/// Indexes the blobs the node holds: unchanged files of its current revision, and the undo
/// areas (with the manifests of the revisions their files came from).
fn index_local(
    engine: &mut Engine,
    current: Option<&Manifest>,
    node: &Node,
    state: &NodeState,
) -> Result<()> {
    let add = add_local;
    if let Some(m) = current {
        for e in &m.entries {
            add(&mut engine.local, e, LocalAt::Tree(e.path.clone()));
        }
    }
    // Undo areas hold files of the revisions the node ran before.
    let mut manifests: Vec<Manifest> = Vec::new();
    for r in [&state.previous, &state.current, &state.last_known_good]
        .into_iter()
        .flatten()
    {
        if let Some(m) = node.kept_manifest(&r.tree_id()?)? {
            manifests.push(m);
        }
    }
    let undo_root = node.dir.join("undo");
    let areas = match std::fs::read_dir(&undo_root) {
        Ok(it) => it,
        // A dry run on a root aurum never updated: no state directory yet.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).at(&undo_root),
    };
    for d in areas {
        let d = d.at(&undo_root)?;
        if d.file_name().as_bytes().starts_with(DROPPED.as_bytes()) {
            continue;
        }
        let d = d.path();
        let Ok(index) = std::fs::read_to_string(d.join("index")) else {
            continue;
        };
        for line in index.lines() {
            let Some((n, h)) = line.split_once(' ') else {
                continue;
            };
            let Some(path) = unhex(h) else { continue };
            let base = d.join(n);
            for m in &manifests {
                for e in &m.entries {
                    if e.path == path {
                        add(&mut engine.local, m.resolve(e), LocalAt::File(base.clone()));
                        if let Some(k) = content_key(m.resolve(e)) {
                            engine.whole.insert(k, base.clone());
                        }
                    } else if entry_is_under(&e.path, &path) {
                        let suffix = std::ffi::OsStr::from_bytes(&e.path[path.len() + 1..]);
                        let at = base.join(suffix);
                        add(&mut engine.local, m.resolve(e), LocalAt::File(at.clone()));
                        // Files of a directory moved aside link back as well as single files.
                        if let Some(k) = content_key(m.resolve(e)) {
                            engine.whole.entry(k).or_insert(at);
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// The revision a rollback goes to: before an interrupted update, else the previous one; with
/// the manifest of the tree the node held there and the overrides laid in it.
pub fn rollback_target(node: &Node) -> Result<(Target, Manifest, Overlay)> {
    let state = node.state()?;
    let back = match node.journal()? {
        Some(j) if j.action == "rollback" => Some(j.to),
        Some(j) => j.from,
        None => state.previous.clone(),
    }
    .ok_or_else(|| invalid("this node has no previous revision to roll back to"))?;
    recorded(node, &back)?.ok_or_else(|| no_manifest(&back))
}

/// The error for a revision whose manifest the node no longer keeps.
pub fn no_manifest(r: &RevRef) -> Error {
    corrupt(format!(
        "the node no longer holds the manifest of {}",
        r.name()
    ))
}

/// A revision the node recorded, to go back to exactly: its target, the manifest of the tree
/// (the overrides it had composed in), and the overlay naming those overrides. `None` when the
/// node no longer keeps that manifest.
pub fn recorded(node: &Node, r: &RevRef) -> Result<Option<(Target, Manifest, Overlay)>> {
    let Some(m) = node.kept_manifest(&r.tree_id()?)? else {
        return Ok(None);
    };
    let target = Target {
        image: r.image.clone(),
        number: r.number,
        id: r.id()?,
    };
    let overlay = Overlay {
        layers: r.overrides.clone(),
        image: None,
        follow: None,
    };
    Ok(Some((target, m, overlay)))
}
