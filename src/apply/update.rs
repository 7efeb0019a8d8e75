//! updateclient and rollback: bringing a live root to a revision with the least work.
//!
//! One engine serves both (and `install`, for the tree it writes), as a pipeline of named
//! steps, the methods of a `Run`: `plan` compares the target manifest with what is on disk
//! (the planner, `apply::plan`, is pure: it reads the disk through a `DiskView` and returns
//! an `UpdatePlan`); `locate` finds every blob it can on the node itself (an unchanged file
//! elsewhere, the old version of a changed file, the undo area); `prepare` checks the node
//! can take the plan; `fetch` brings only the rest into staging; `execute` applies the plan;
//! `commit` moves the node state. Applying:
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
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use nix::fcntl::renameat;
use nix::sys::stat::{mkdirat, Mode};
use nix::unistd::{unlinkat, UnlinkatFlags};
use rayon::prelude::*;
use serde::Serialize;

mod fresh;
mod rollback;

use super::disk::{is_under, RootView};
pub use super::plan::LocalChange;
use super::plan::{self, Act, PlanOptions, Step, UpdatePlan};
use super::preflight;
use super::undo::{self, UndoArea};
use super::{create_special, set_metadata, set_metadata_of, temp_name, write_file, BlobSource};
use crate::apply::node::{HistoryEntry, Journal, Node, NodeState, RevRef, STATE_DIR};
use crate::apply::source::{RevisionSource, Target};
use crate::error::{corrupt, invalid, Error, IoContext, Result};
use crate::excludes::Excludes;
use crate::format::manifest::{display_path, file_name, parent, Entry, Kind, Manifest};
use crate::format::report::NodeAction;
use crate::format::Id;
use crate::progress::Progress;
use crate::repo::delta;
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
    // The boot loader the node's own install put on its ESP (grub-install, bootctl: EFI/BOOT,
    // EFI/<id>), which no image need hold: deleting it as a file the revision lacks would leave
    // the node nothing to boot. Kernels and loader entries on the ESP are the image's.
    "/efi/EFI/",
    "/boot/efi/EFI/",
    "/boot/EFI/",
    "lost+found/",
];

/// What an update is asked to do.
pub struct UpdateOptions {
    /// `updateclient`, `rollback` or `install` (recorded in history and reports).
    pub action: NodeAction,
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
    /// A staged update (`updateclient --stage`, `--activate`); `None`: an ordinary one.
    pub stage: Option<StageAt>,
}

/// Where the blobs of a staged update are kept, and which half of it a run is.
#[derive(Clone, Debug)]
pub struct StageAt {
    /// The stage's blob directory (in the node state directory).
    pub blobs: PathBuf,
    /// Stage only: plan against the tree, fetch into `blobs` what the node lacks (whole,
    /// deltas rebuilt), and stop, changing nothing in the tree. Otherwise activate: read
    /// blobs from `blobs` first, fetch only what is neither there nor on the node, and clear
    /// the node state's `staged` when the update commits.
    pub only_fetch: bool,
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
    /// The repositories the revision embeds, rebuilt (or brought to the revision's record).
    pub embedded: Vec<crate::repo::embedded::Rebuilt>,
    pub warnings: Vec<String>,
    pub seconds: f64,
    pub unchanged: bool,
}

/// Where a blob can be read on the node.
#[derive(Clone)]
struct LocalChunk {
    /// A path in the tree (manifest path) or a file of the undo area.
    at: LocalAt,
    /// Offset in the file's data (its data extents laid end to end, for a sparse file).
    offset: u64,
    len: u32,
    extents: Option<Arc<Vec<(u64, u64)>>>,
}

#[derive(Clone)]
enum LocalAt {
    Tree(Vec<u8>),
    File(PathBuf),
}

/// The engine's hold on a node root during one update: the root, the undo area it writes,
/// and where on the node each blob can be read.
struct Engine {
    disk: RootView,
    warnings: Mutex<Vec<String>>,
    undo: UndoArea,
    /// Blobs the node holds.
    local: HashMap<Id, Vec<LocalChunk>>,
    /// Whole files of the undo areas, by their content (every file holding it, as several paths
    /// may hold the same bytes): a rollback links them back instead of writing their bytes
    /// again.
    whole: HashMap<Id, Vec<PathBuf>>,
    /// Whether the run deletes, before it commits, the undo areas other than its own (it
    /// changes the revision), and its own (it undoes a failed update). A file is linked back
    /// only from an area that goes: a tree file sharing its inode with a kept area would let
    /// an in-place edit change what a later rollback restores.
    drops_others: bool,
    drops_own: bool,
    /// Whether the run finishes an interrupted one (temporary names may be left over).
    resuming: bool,
    /// Undo files (device, inode) this run linked into the tree (see [`Engine::link_one`]).
    linked: Mutex<HashSet<(u64, u64)>>,
    /// Tree directories by whether they give new entries xattrs (see [`Engine::gives_xattrs`]).
    acl_dirs: Mutex<HashMap<Vec<u8>, bool>>,
    /// Fetched blobs held in memory (see [`Engine::keep_blob`]).
    held: Mutex<Held>,
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
            disk: RootView::open(node.root.clone())?,
            warnings: Mutex::new(Vec::new()),
            undo: UndoArea::at(PathBuf::new()),
            local: HashMap::new(),
            whole: HashMap::new(),
            drops_others: false,
            drops_own: false,
            resuming: false,
            linked: Mutex::default(),
            acl_dirs: Mutex::new(HashMap::new()),
            held: Mutex::default(),
        })
    }

    /// The files of the undo areas this run drops that should hold exactly `e`'s content
    /// (unchecked).
    fn whole_sources<'e>(&'e self, e: &Entry) -> impl Iterator<Item = &'e PathBuf> + 'e {
        let sources = content_key(e).and_then(|k| self.whole.get(&k));
        sources.into_iter().flatten().filter(|src| {
            if src.starts_with(&self.undo.dir) {
                self.drops_own
            } else {
                self.drops_others
            }
        })
    }

    /// Links a file of the undo area holding exactly `e`'s content to `name` in `dir`, after
    /// checking every chunk of it; false when there is none (or it changed, or links fail).
    fn link_whole(&self, dir: BorrowedFd, name: &[u8], e: &Entry) -> bool {
        self.whole_sources(e)
            .any(|src| self.link_one(src, dir, name, e))
    }

    /// Links the undo file `src` to `name` in `dir` if it holds exactly `e`'s content and is
    /// not in the tree already. An undo file goes to one tree path at most: two paths the
    /// revision gives their own inodes (two files with the same bytes, such as two packages'
    /// identical trigger files) would share one, and the metadata set for the second would be
    /// the first's too. Linked by this run: it is in the tree. After a crash (or undoing a
    /// failed update), one with another name than its own may have been linked into the tree
    /// by the interrupted run: it is written instead. Otherwise its other names are the
    /// area's (a hardlinked group kept whole), as no undo area shares an inode with the tree
    /// after a run.
    fn link_one(&self, src: &Path, dir: BorrowedFd, name: &[u8], e: &Entry) -> bool {
        let Kind::File {
            chunks, extents, ..
        } = &e.kind
        else {
            return false;
        };
        let (Some(parent), Some(file)) = (src.parent(), src.file_name()) else {
            return false;
        };
        let Ok(pfd) = sys::open_root(parent) else {
            return false;
        };
        let Ok(st) = sys::lstat_at(pfd.as_fd(), file.as_bytes()) else {
            return false;
        };
        let inode = (st.st_dev, st.st_ino);
        let free =
            st.st_mode & libc::S_IFMT == libc::S_IFREG && (st.st_nlink == 1 || !self.resuming);
        // Claimed before it is checked and linked: files are written on several threads, and
        // only one of them may have it.
        if !free || !self.linked.lock().expect("lock").insert(inode) {
            return false;
        }
        let unclaim = || {
            self.linked.lock().expect("lock").remove(&inode);
            false
        };
        let extents = extents.clone().map(Arc::new);
        let mut off = 0u64;
        for c in chunks {
            let lc = LocalChunk {
                at: LocalAt::File(src.to_path_buf()),
                offset: off,
                len: c.len,
                extents: extents.clone(),
            };
            if self.read_local(&c.id, &lc).is_none() {
                return unclaim();
            }
            off += u64::from(c.len);
        }
        nix::unistd::linkat(pfd.as_fd(), file, dir, name, nix::fcntl::AtFlags::empty()).is_ok()
            || unclaim()
    }

    fn warn(&self, w: String) {
        self.warnings.lock().expect("lock").push(w);
    }

    /// Writes the file `e` under `temp` in `dir`, with its metadata: linked back from an undo
    /// area that holds its very content (a rollback), else written from `blobs`.
    /// Returns whether it was linked (it may then be the very inode already in place).
    fn write_temp(
        &self,
        dir: BorrowedFd,
        temp: &[u8],
        e: &Entry,
        blobs: &dyn BlobSource,
        progress: &dyn Progress,
    ) -> Result<bool> {
        // Only a run after a crash finds a temporary name left over.
        if self.resuming {
            let _ = unlinkat(dir, temp, UnlinkatFlags::NoRemoveDir);
        }
        let (file, linked) = if self.link_whole(dir, temp, e) {
            progress.advance(e.data_len());
            (None, true)
        } else {
            let file = write_file(dir, temp, e, blobs, &self.disk.root, progress)?;
            (Some(file), false)
        };
        // A file just written in a directory without a default ACL has no xattrs to look at.
        let bare = !linked && !self.gives_xattrs(parent(&e.path), dir);
        let warn = |w| self.warn(w);
        set_metadata_of(dir, temp, e, file.as_ref(), &self.disk.root, &warn, bare)?;
        Ok(linked)
    }

    /// Whether the tree directory `rel` (open as `dir`) gives new entries xattrs (see
    /// [`super::gives_xattrs`]), asked once per directory.
    fn gives_xattrs(&self, rel: &[u8], dir: BorrowedFd) -> bool {
        let mut known = self.acl_dirs.lock().expect("lock");
        if let Some(&gives) = known.get(rel) {
            return gives;
        }
        let gives = super::gives_xattrs(dir);
        known.insert(rel.to_vec(), gives);
        gives
    }

    /// Removes the temporary names an interrupted run listed in its journal; those it had not
    /// created yet (or had already renamed into place) are simply absent.
    fn remove_temps(&self, temps: &[String]) {
        for rel in temps.iter().filter_map(|h| undo::unhex(h)) {
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
    /// `linked`: the temporary name was linked rather than written (only then can it be the
    /// inode in place).
    fn put_in_place(
        &mut self,
        dir: BorrowedFd,
        temp: &[u8],
        name: &[u8],
        rel: &[u8],
        act: Act,
        linked: bool,
    ) -> Result<()> {
        let root = &self.disk.root;
        if act != Act::Create {
            let same = linked
                && match (sys::lstat_at(dir, temp), sys::lstat_at(dir, name)) {
                    (Ok(t), Ok(n)) => (t.st_dev, t.st_ino) == (n.st_dev, n.st_ino),
                    _ => false,
                };
            if same {
                return unlinkat(dir, temp, UnlinkatFlags::NoRemoveDir).at(shown(root, rel));
            }
            self.keep(dir, name, rel, act)?;
        }
        renameat(dir, temp, dir, name).at(shown(&self.disk.root, rel))
    }

    /// The directory `rel` of the tree.
    fn dir(&self, rel: &[u8]) -> Result<Arc<OwnedFd>> {
        self.disk.dir(rel)
    }

    /// Moves `name` in `dir` (tree path `rel`) into the undo area.
    fn stash(&mut self, dir: BorrowedFd, name: &[u8], rel: &[u8]) -> Result<()> {
        // A directory moved away must not be found again by `dir`.
        self.disk.forget_dirs();
        let warnings = &self.warnings;
        let warn = |w| warnings.lock().expect("lock").push(w);
        self.undo.stash(dir, name, rel, &self.disk.root, &warn)
    }

    /// Keeps the entry `name` in `dir` in the undo area ahead of renaming a new one over it
    /// (see [`UndoArea::keep_file`]); a directory is moved there.
    /// `act` [`Act::Content`]: the planner found a regular file there (no need to look).
    fn keep(&mut self, dir: BorrowedFd, name: &[u8], rel: &[u8], act: Act) -> Result<()> {
        let is_dir = act != Act::Content
            && sys::lstat_at(dir, name)
                .map(|s| s.st_mode & libc::S_IFMT == libc::S_IFDIR)
                .unwrap_or(false);
        if is_dir {
            return self.stash(dir, name, rel);
        }
        let warnings = &self.warnings;
        let warn = |w| warnings.lock().expect("lock").push(w);
        self.undo.keep_file(dir, name, rel, &self.disk.root, &warn)
    }

    fn read_local(&self, id: &Id, c: &LocalChunk) -> Option<Vec<u8>> {
        let file = match &c.at {
            LocalAt::File(p) => File::open(p).ok()?,
            LocalAt::Tree(rel) => match self.undo.moved(rel) {
                Some(p) => File::open(p).ok()?,
                None => {
                    crate::sys::open_file_beneath(&self.disk.root_fd, rel, &self.disk.root).ok()?
                }
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

/// Where the blobs an update needs come from, in order: the staging area (fetched), the node
/// itself, nothing else (everything missing was fetched before applying began).
struct Provider<'a> {
    engine: &'a Engine,
    staging: PathBuf,
}

impl BlobSource for Provider<'_> {
    fn get(&self, id: &Id) -> Result<Vec<u8>> {
        let held = self
            .engine
            .held
            .lock()
            .expect("lock")
            .blobs
            .get(id)
            .cloned();
        if let Some(data) = held {
            return Ok(data.to_vec());
        }
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
    plan: &UpdatePlan,
    opts: &UpdateOptions,
) -> Result<Option<String>> {
    let replaced: Vec<&[u8]> = plan.replaced(manifest).collect();
    // Leftover temporary names count too: without a journal there never was an update here to
    // leave them, so a `*.aurum-new` is someone else's file.
    let deleted: Vec<&[u8]> = plan.removals.iter().map(|p| p.as_slice()).collect();
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
        !(s.act == Act::Create && (p == state_dir || is_under(state_dir, p)))
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
    crate::sys::check_proc()?;
    let err = match run(node, target, manifest, source, opts, progress, None) {
        Ok(report) => return Ok(report),
        Err(err) => err,
    };
    // Staging writes nothing in the tree: there is nothing to undo.
    let staging_only = opts.stage.as_ref().is_some_and(|s| s.only_fetch);
    match refused_write(&err) {
        Some(errno) if !opts.dry_run && !staging_only => {
            undo_failed(node, manifest, opts, progress, err, errno)
        }
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
        action: opts.action,
        dry_run: false,
        no_delete: opts.no_delete,
        verify_local: opts.verify_local,
        excludes: opts.excludes.clone(),
        adopt: true,
        overlay: Some(overlay),
        before_writes: None,
        stage: None,
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

/// Keeps a fetched or rebuilt blob in `staging` until the run uses it: written atomically, so
/// a staged blob is always whole (a temporary file left by a kill is removed with the rest
/// of `staging` by [`free_staging`]).
fn stage(staging: &Path, id: &Id, data: &[u8]) -> Result<()> {
    crate::sys::write_atomic(&staging.join(id.hex()), data, Default::default())
}

/// Fetched blobs held in memory rather than staged, at most this many bytes: a staged small
/// blob costs some ten system calls (create, write, rename, open, read, unlink), as many as the
/// file it is for, and its unlink alone took 0.3 ms on a busy disk.
const HELD_BYTES: u64 = 64 << 20;

/// Blobs held in memory, and the room left for them. The room is reserved on disk (a file of
/// that size in `staging`, removed with the staged blobs), so that, as with staged blobs, an
/// update stopped by a full disk frees that much for the undo that follows.
#[derive(Default)]
struct Held {
    /// Shared, so a writer copies one out without holding the lock (files are written on
    /// every core).
    blobs: HashMap<Id, Arc<[u8]>>,
    room: u64,
}

impl Engine {
    /// Reserves room for up to `bytes` of held blobs (nothing held when the disk refuses).
    fn reserve(&self, staging: &Path, bytes: u64) {
        let bytes = bytes.min(HELD_BYTES);
        if bytes == 0 || std::fs::create_dir_all(staging).is_err() {
            return;
        }
        let reserved = File::create(staging.join("reserve")).ok().filter(|f| {
            nix::fcntl::fallocate(f, nix::fcntl::FallocateFlags::empty(), 0, bytes as i64).is_ok()
        });
        if reserved.is_some() {
            self.held.lock().expect("lock").room = bytes;
        }
    }

    /// Keeps a fetched or rebuilt blob until the run uses it: held in memory while the
    /// reserved room lasts, else staged.
    fn keep_blob(&self, staging: &Path, id: &Id, data: Vec<u8>) -> Result<()> {
        {
            let mut held = self.held.lock().expect("lock");
            if data.len() as u64 <= held.room {
                held.room -= data.len() as u64;
                held.blobs.insert(*id, data.into());
                return Ok(());
            }
        }
        stage(staging, id, &data)
    }
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

/// One run of the engine: what it was asked, and what it read of the node before planning.
/// Its steps are methods, called in order by [`run`].
struct Run<'a> {
    node: &'a Node,
    manifest: &'a Manifest,
    source: Option<&'a dyn RevisionSource>,
    opts: &'a UpdateOptions,
    progress: &'a dyn Progress,
    /// Set when the run takes the node back from an update that failed.
    undoing: Option<Undoing<'a>>,
    /// Where fetched blobs wait until they are written.
    staging: PathBuf,
    state: NodeState,
    journal: Option<Journal>,
    /// The revision the node ran before whatever is in progress.
    from: Option<RevRef>,
    /// Its manifest, when the node keeps it.
    current: Option<Manifest>,
    /// What the node will record for the tree of the update.
    to: RevRef,
}

/// One run of the engine: [`Run::plan`], then [`Run::locate`] the blobs on the node; a dry
/// run stops there. Then the checks before the first write ([`Run::prepare`]),
/// [`Run::fetch`] what the node lacks, [`Run::execute`] the plan (or, on a fresh root, write
/// it as checkout does), [`finish_tree`], and [`Run::commit`] the node state. `undoing` is set
/// when the run takes the node back from an update that failed (see [`undo_failed`]): it
/// then links the entries back from the failed update's undo area and drops that area at the
/// end.
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
    let run = Run::start(node, target, manifest, source, opts, progress, undoing)?;
    // Only a rollback: an undo after a failed write puts back what it can, and a staged
    // activation without a server goes on as it did.
    if source.is_none() && undoing.is_none() && opts.action == NodeAction::Rollback {
        super::embedded::need_source(&node.root, manifest, run.current.as_ref(), &target.name())?;
    }
    let mut engine = Engine::for_root(node)?;
    engine.drops_others = !run.from.as_ref().is_some_and(|f| f.same_tree(&run.to));
    // An area a rollback by rename took over from the update before is kept: it holds the
    // way back.
    let kept = run.journal.as_ref().is_some_and(|j| j.kept_undo);
    engine.drops_own = undoing.is_some() && !kept;
    engine.resuming = run.journal.is_some() || undoing.is_some();
    if let (Some(j), false) = (&run.journal, opts.dry_run) {
        engine.remove_temps(&j.temps);
    }
    // Right after an update, a rollback renames back what it moved aside.
    if let Some(restore) = rollback::plan(&run, &engine)? {
        let mut report = rollback::apply(run, &mut engine, restore, started)?;
        report.warnings = engine.warnings.into_inner().expect("lock");
        return Ok(report);
    }
    let (mut plan, mut report) = run.plan(&engine)?;
    let blobs = run.locate(&mut engine, &plan, &mut report)?;
    if opts.dry_run {
        report.plan = plan.itemised(manifest);
        report.seconds = started.elapsed().as_secs_f64();
        report.warnings = engine.warnings.into_inner().expect("lock");
        return Ok(report);
    }
    if opts.stage.as_ref().is_some_and(|s| s.only_fetch) {
        run.fetch_to_stage(&engine, blobs, &mut report)?;
        report.seconds = started.elapsed().as_secs_f64();
        report.warnings = engine.warnings.into_inner().expect("lock");
        return Ok(report);
    }
    let undo_name = run.prepare(&mut engine, &mut plan, &report)?;
    let syncer = sys::Syncer::default();
    let fresh = match run.from.is_none() && undoing.is_none() && plan.only_creates(manifest) {
        true => {
            let journal = run.journal_of(&undo_name, true);
            let writer =
                fresh::Writer::begin(&engine, node, manifest, &plan.steps, journal, &syncer);
            Some(writer?)
        }
        false => None,
    };
    run.fetch(&engine, blobs, fresh.as_ref(), &mut report)?;
    match fresh {
        Some(writer) => writer.finish(&run.staging, progress)?,
        None => run.execute(&mut engine, &plan, &undo_name, &syncer)?,
    }
    finish_tree(&engine, manifest, &plan, &syncer)?;
    // Before the state moves: a crash in the rebuild leaves an update that a rerun finishes.
    if let Some(src) = source {
        let records = super::embedded::changed(&node.root, manifest, run.current.as_ref());
        report.embedded = super::embedded::rebuild_all(
            &node.root,
            &records,
            &super::embedded::FromRevisions(src),
        )?;
    }
    run.commit(&engine, &mut report, started)?;
    report.warnings = engine.warnings.into_inner().expect("lock");
    Ok(report)
}

/// The name of a new undo area: its time and the process.
fn new_undo_name() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{t}-{}", std::process::id())
}

/// The blobs a run needs from outside the node, and the length of every blob of the target.
struct Blobs {
    to_fetch: Vec<Id>,
    chunk_len: HashMap<Id, u32>,
}

impl<'a> Run<'a> {
    /// A run of the engine on `node`, with the node's state read.
    fn start(
        node: &'a Node,
        target: &Target,
        manifest: &'a Manifest,
        source: Option<&'a dyn RevisionSource>,
        opts: &'a UpdateOptions,
        progress: &'a dyn Progress,
        undoing: Option<Undoing<'a>>,
    ) -> Result<Run<'a>> {
        let state = node.state()?;
        let journal = node.journal()?;
        let from = match &journal {
            Some(j) => j.from.clone(),
            None => state.current.clone(),
        };
        // After a crash that is the revision the interrupted run started from (and the
        // planner trusts no stat, see `PlanOptions::resuming`).
        let current = match &from {
            Some(c) => node.kept_manifest(&c.tree_id()?)?,
            None => None,
        };
        Ok(Run {
            node,
            manifest,
            source,
            opts,
            progress,
            undoing,
            staging: match &opts.stage {
                Some(s) => s.blobs.clone(),
                None => node.dir.join("staging"),
            },
            to: target_ref(target, manifest, opts),
            state,
            journal,
            from,
            current,
        })
    }

    /// The journal of this run, `fresh` or not, its undo area named `undo`.
    fn journal_of(&self, undo: &str, fresh: bool) -> Journal {
        Journal {
            action: self.opts.action,
            from: if fresh { None } else { self.from.clone() },
            to: self.to.clone(),
            undo: undo.to_string(),
            temps: Vec::new(),
            fresh,
            // A rerun of a rollback by rename goes on in the area it took over.
            kept_undo: self.journal.as_ref().is_some_and(|j| j.kept_undo),
        }
    }

    /// Plans the update (see [`plan::plan`]), refuses it on a root aurum does not manage
    /// (see [`check_unmanaged`]), and starts the report with what the plan does.
    fn plan(&self, engine: &Engine) -> Result<(UpdatePlan, UpdateReport)> {
        let (opts, manifest) = (self.opts, self.manifest);
        let embedded = super::embedded::dirs(&super::embedded::records(&manifest.entries));
        let plan_opts = PlanOptions {
            excludes: &opts.excludes,
            no_delete: opts.no_delete,
            verify_local: opts.verify_local,
            current: self.current.as_ref(),
            resuming: self.journal.is_some(),
            failed: self.undoing.map(|u| u.failed),
            embedded: &embedded,
        };
        let mut plan = plan::plan(&engine.disk, manifest, &plan_opts, self.progress)?;
        let managed = self.state.current.is_some() || self.journal.is_some();
        if let Some(w) = check_unmanaged(&self.node.root, managed, manifest, &plan, opts)? {
            engine.warn(w);
        }
        let (created, changed, metadata_only) = plan.counts();
        let local_changes = std::mem::take(&mut plan.local_changes);
        let report = UpdateReport {
            from: self.from.clone(),
            to: Some(self.to.clone()),
            created,
            changed,
            metadata_only,
            deleted: plan.removals.len() as u64,
            modified_locally: local_changes.iter().map(|c| c.path.clone()).collect(),
            local_changes,
            unchanged: plan.is_noop(),
            ..Default::default()
        };
        Ok((plan, report))
    }

    /// Finds on the node every blob the plan needs that it holds (an unchanged file, the old
    /// version of a changed one, an undo area, or staged by an interrupted run), reading each
    /// to be sure of it, and counts in `report` what is reused and what must be fetched.
    fn locate(
        &self,
        engine: &mut Engine,
        plan: &UpdatePlan,
        report: &mut UpdateReport,
    ) -> Result<Blobs> {
        let manifest = self.manifest;
        let current = match (&self.from, &self.current) {
            (Some(f), Some(m)) => Some((f.tree_id()?, m)),
            _ => None,
        };
        let needed = plan.needed_blobs(manifest);
        // Of the current revision's files, those that may serve: holding a blob the plan
        // needs, or the old version of a path whose new content holds one (a delta's base,
        // which `delta::wants` takes from the first such path, excluded or not), a hardlink
        // resolved to the file that carries its content.
        let wanted: HashSet<&Id> = needed.iter().collect();
        let holds = |e: &Entry| matches!(&e.kind, Kind::File { chunks, .. } if chunks.iter().any(|c| wanted.contains(&c.id)));
        let mut bases: HashSet<&[u8]> = manifest
            .entries
            .iter()
            .filter(|e| holds(manifest.resolve(e)))
            .map(|e| e.path.as_slice())
            .collect();
        if let Some((_, cur)) = current {
            let primaries: Vec<&[u8]> = bases
                .iter()
                .filter_map(|p| match cur.get(p).map(|e| &e.kind) {
                    Some(Kind::Hardlink { target }) => Some(target.as_slice()),
                    _ => None,
                })
                .collect();
            bases.extend(primaries);
        }
        let serves = |e: &Entry| bases.contains(e.path.as_slice()) || holds(e);
        index_local(engine, current, &serves, self.node, &self.state)?;
        for &i in &plan.relink {
            let e = &manifest.entries[i];
            add_local(&mut engine.local, e, LocalAt::Tree(e.path.clone()));
        }
        // Blobs an interrupted run fetched already: one listing, not a stat per blob.
        let staged: HashSet<std::ffi::OsString> = std::fs::read_dir(&self.staging)
            .map(|it| it.flatten().map(|f| f.file_name()).collect())
            .unwrap_or_default();
        let mut to_fetch = Vec::new();
        for id in needed {
            if !staged.is_empty() && staged.contains(std::ffi::OsStr::new(&id.hex())) {
                continue;
            }
            // Read it now: a file changed since the node's last update must not be counted on.
            match engine.find_local(&id) {
                Some(data) => report.bytes_reused += data.len() as u64,
                None => to_fetch.push(id),
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
        Ok(Blobs {
            to_fetch,
            chunk_len,
        })
    }

    /// Everything between a plan and its first write: names the undo area (an interrupted
    /// run's own, or a new one), checks the node's filesystems can take the plan, runs the
    /// pre-update hooks and takes the node's lock. Returns the undo area's name.
    fn prepare(
        &self,
        engine: &mut Engine,
        plan: &mut UpdatePlan,
        report: &UpdateReport,
    ) -> Result<String> {
        let undo_name = match &self.journal {
            Some(j) => j.undo.clone(),
            None => new_undo_name(),
        };
        engine.undo = UndoArea::at(self.node.dir.join("undo").join(&undo_name));
        // Undoing a failed update writes next to nothing (it links back what the update moved
        // aside) and must not be refused for the very lack of room that stopped the update.
        if self.undoing.is_none() {
            let linked = |e: &Entry| engine.whole_sources(e).next().is_some();
            let staged = report.bytes_to_fetch;
            let needs = plan.needs(self.manifest, &linked, STAGED.as_bytes(), staged);
            preflight::check(engine.disk.root_fd.as_fd(), &engine.disk.root, &needs)?;
        }
        if let (None, Some(before)) = (self.undoing, &self.opts.before_writes) {
            before()?;
        }
        // The lock is taken (and on a new node the state directory made) only once nothing
        // above refused the run: a refused plan leaves an unmanaged root without a state
        // directory.
        claim_node(self.node, &self.state, self.manifest, &mut plan.steps)?;
        Ok(undo_name)
    }

    /// Fetches what the node lacks into staging (on a fresh root, `fresh` writes a file made
    /// of one blob as it arrives): first binary deltas against the versions the node holds,
    /// then whole blobs for the rest.
    fn fetch(
        &self,
        engine: &Engine,
        blobs: Blobs,
        fresh: Option<&fresh::Writer>,
        report: &mut UpdateReport,
    ) -> Result<()> {
        let Blobs {
            mut to_fetch,
            chunk_len,
        } = blobs;
        // A stage keeps every blob on disk, for an activation by another process.
        if !self.stage_only() {
            engine.reserve(&self.staging, report.bytes_to_fetch);
        }
        // Blobs whose older version the node holds: ask for a binary delta against it first.
        let mut delta_wants: Vec<(delta::Want, u32)> = Vec::new();
        if let (Some(cur), Some(_)) = (self.current.as_ref(), self.source) {
            let missing: HashSet<Id> = to_fetch.iter().copied().collect();
            for w in delta::wants(cur, self.manifest, Some(&|id: &Id| missing.contains(id))) {
                if w.base.iter().all(|b| engine.local.contains_key(b)) {
                    let len = chunk_len[&w.target];
                    delta_wants.push((w, len));
                }
            }
        }
        report.deltas_asked = delta_wants.len() as u64;
        if let (false, Some(source)) = (delta_wants.is_empty(), self.source) {
            let rebuilt = self.fetch_deltas(engine, source, &delta_wants, report)?;
            report.deltas = rebuilt.len() as u64;
            to_fetch.retain(|id| !rebuilt.contains(id));
        }
        if to_fetch.is_empty() {
            return Ok(());
        }
        let source = self.source.ok_or_else(|| match &self.opts.stage {
            Some(_) => Error::NotFound(format!(
                "{} blobs the staged revision needs are neither in the stage nor on the node \
                 (files changed on the node since it was staged); nothing was changed: activate \
                 with the server reachable (--server) to fetch them, or stage it again",
                to_fetch.len()
            )),
            None => Error::NotFound(format!(
                "{} blobs of the target are not on this node (undo area and files); give --server or --repo to fetch them",
                to_fetch.len()
            )),
        })?;
        // Not `self` in the callback: the options' hook is not Sync.
        let staging = &self.staging;
        report.bytes_fetched += source.fetch(
            &to_fetch,
            &|id, data| {
                // On a fresh root a file made of this blob alone is written now.
                if let Some(w) = fresh {
                    if !w.take(id, &data)? {
                        return Ok(());
                    }
                }
                engine.keep_blob(staging, id, data.into_owned())
            },
            self.progress,
        )?;
        Ok(())
    }

    fn stage_only(&self) -> bool {
        self.opts.stage.as_ref().is_some_and(|s| s.only_fetch)
    }

    /// `updateclient --stage`: fetches into the stage what the plan needs and the node lacks,
    /// after checking the stage's filesystem has room for it; the tree is not touched.
    fn fetch_to_stage(
        &self,
        engine: &Engine,
        blobs: Blobs,
        report: &mut UpdateReport,
    ) -> Result<()> {
        self.node.claim()?;
        std::fs::create_dir_all(&self.staging).at(&self.staging)?;
        let stage_rel = self
            .staging
            .strip_prefix(&self.node.root)
            .map(|p| p.as_os_str().as_bytes().to_vec())
            .unwrap_or_else(|_| STAGED.as_bytes().to_vec());
        let needs = preflight::Needs {
            writes: vec![(stage_rel.as_slice(), report.bytes_to_fetch)],
            touched: Vec::new(),
        };
        preflight::check(engine.disk.root_fd.as_fd(), &engine.disk.root, &needs)?;
        self.fetch(engine, blobs, None, report)
    }

    /// Asks `source` for the deltas `wants`, rebuilds each target blob from its base on the
    /// node and stages it. Returns the blobs rebuilt (a delta that does not rebuild its blob
    /// is fetched whole instead).
    fn fetch_deltas(
        &self,
        engine: &Engine,
        source: &dyn RevisionSource,
        wants: &[(delta::Want, u32)],
        report: &mut UpdateReport,
    ) -> Result<HashSet<Id>> {
        let by_target: HashMap<Id, &delta::Want> =
            wants.iter().map(|(w, _)| (w.target, w)).collect();
        let rebuilt: Mutex<HashSet<Id>> = Default::default();
        let staging = &self.staging;
        report.bytes_fetched += source.fetch_deltas(
            wants,
            &|target, d| {
                let Some(w) = by_target.get(target) else {
                    return Ok(());
                };
                let mut base = Vec::new();
                for b in &w.base {
                    match engine.find_local(b) {
                        Some(data) => base.extend_from_slice(&data),
                        // Changed on disk since: the whole blob is fetched instead.
                        None => return Ok(()),
                    }
                }
                match delta::decode(&base, &d, target) {
                    Ok(data) => {
                        engine.keep_blob(staging, target, data)?;
                        rebuilt.lock().expect("lock").insert(*target);
                    }
                    Err(e) => log::warn!("{e:#}; fetching the whole blob"),
                }
                Ok(())
            },
            self.progress,
        )?;
        Ok(rebuilt.into_inner().expect("lock"))
    }

    /// Applies the plan on a node that may be running: each file written under a temporary
    /// name and renamed into place, whatever it replaces or deletes kept in the undo area
    /// `undo`, all under the run's journal, noting the filesystems written to in `syncer`.
    fn execute(
        &self,
        engine: &mut Engine,
        plan: &UpdatePlan,
        undo: &str,
        syncer: &sys::Syncer,
    ) -> Result<()> {
        let (manifest, progress) = (self.manifest, self.progress);
        // The hooks and the fetch ran since the plan opened these: a hook may have moved one.
        engine.disk.forget_dirs();
        engine.undo.open()?;
        self.node.begin(&Journal {
            temps: plan
                .steps
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
                    undo::hex(&t)
                })
                .collect(),
            ..self.journal_of(undo, false)
        })?;
        // Every entry this run moves or links into the undo area gets its index line now,
        // with one sync (rather than one per entry).
        let mut rels: Vec<&[u8]> = plan.removals.iter().map(|p| p.as_slice()).collect();
        rels.extend(plan.replaced(manifest));
        engine.undo.announce(&rels)?;
        for p in &plan.removals {
            let dir = engine.dir(parent(p))?;
            engine.stash(dir.as_fd(), file_name(p), p)?;
        }
        let total: u64 = plan
            .steps
            .iter()
            .filter(|s| s.act != Act::Meta)
            .map(|s| manifest.entries[s.entry].data_len())
            .sum();
        progress.phase("writing", Some(total), true);
        let prewritten = prewrite(engine, manifest, plan, &self.staging, syncer, progress)?;
        // Pass 2, in manifest order.
        for s in &plan.steps {
            let written = prewritten.get(&s.entry).copied();
            put_step(
                engine,
                manifest,
                s,
                written,
                &self.staging,
                syncer,
                progress,
            )?;
        }
        progress.finish();
        Ok(())
    }

    /// Records the update on the node: drops the undo areas it makes useless, keeps the
    /// manifests and moves the node state to the target, with a history line.
    fn commit(self, engine: &Engine, report: &mut UpdateReport, started: Instant) -> Result<()> {
        let (node, opts) = (self.node, self.opts);
        // The undo areas this run makes useless go before the state moves: a crash in between
        // leaves a tree already at the target, which a rerun finds needing nothing.
        let undo_root = node.dir.join("undo");
        undo::drop_areas(
            &undo_root,
            &engine.undo.dir,
            engine.drops_own,
            engine.drops_others,
        )?;
        node.keep_manifest_as(&self.to.tree_id()?, self.manifest)?;
        if let Some(image) = opts.overlay.as_ref().and_then(|o| o.image.as_ref()) {
            node.keep_manifest(image)?;
        }
        let Run {
            mut state,
            from,
            to,
            ..
        } = self;
        if !from.as_ref().is_some_and(|f| f.same_tree(&to)) {
            state.previous = from.clone();
        }
        state.current = Some(to.clone());
        if let Some(follow) = opts.overlay.as_ref().and_then(|o| o.follow.as_ref()) {
            state.overrides = follow.clone();
        }
        // An activation consumes the stage (its files go once the state says so).
        if opts.stage.is_some() {
            state.staged = None;
        }
        report.seconds = started.elapsed().as_secs_f64();
        // What crossed the network: the blobs and deltas counted above, and also the refs,
        // the manifest and the pack indexes that told the node what to fetch.
        if let Some(src) = self.source {
            report.bytes_fetched = report.bytes_fetched.max(src.bytes_received());
        }
        state.history.push(HistoryEntry {
            time: crate::catalog::now(),
            action: opts.action,
            from: from.as_ref().map(|f| f.id.clone()),
            to: to.id.clone(),
            result: match self.undoing {
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
        if engine.undo.unused() {
            let _ = std::fs::remove_dir_all(&engine.undo.dir);
        }
        free_staging(node);
        Ok(())
    }
}

/// Sets the metadata of the directory `e` (the root too), once every entry in it is in
/// place; one whose parent cannot be opened (gone by hand) is left.
fn set_dir_metadata(engine: &Engine, e: &Entry) -> Result<()> {
    let (root, warn) = (&engine.disk.root, &|w| engine.warn(w));
    if e.path.is_empty() {
        super::set_metadata_root(engine.disk.root_fd.as_fd(), e, root, warn)
    } else if let Ok(dir) = engine.dir(parent(&e.path)) {
        set_metadata(dir.as_fd(), file_name(&e.path), e, None, root, warn)
    } else {
        Ok(())
    }
}

/// After the entries are in place: the metadata of every directory the update manages,
/// deepest first (creating and removing entries moved their mtimes), then every rename,
/// removal and metadata change made durable before the state says the update is done.
fn finish_tree(
    engine: &Engine,
    manifest: &Manifest,
    plan: &UpdatePlan,
    syncer: &sys::Syncer,
) -> Result<()> {
    for &i in plan.dirs.iter().rev() {
        set_dir_metadata(engine, &manifest.entries[i])?;
    }
    engine.undo.sync()?;
    for p in &plan.removals {
        if let Ok(d) = engine.dir(parent(p)) {
            syncer.note_dir(parent(p), d.as_fd());
        }
    }
    syncer.sync(&engine.disk.root)
}

/// Files one worker of [`prewrite`] writes in a row.
const PREWRITE_RUN: usize = 64;

/// Pass 1 of [`Run::execute`]: the new content of every file whose directory exists is written
/// under a temporary name, then made durable with one syncfs, so that pass 2 only renames: a
/// crash at any point leaves each path with its old content or its new. Returns the steps
/// written, each with whether it was linked (see [`Engine::write_temp`]).
fn prewrite(
    engine: &Engine,
    manifest: &Manifest,
    plan: &UpdatePlan,
    staging: &Path,
    syncer: &sys::Syncer,
    progress: &dyn Progress,
) -> Result<HashMap<usize, bool>> {
    let provider = Provider {
        engine,
        staging: staging.to_path_buf(),
    };
    syncer.note(engine.disk.root_fd.as_fd());
    let files: Vec<&Step> = plan
        .steps
        .iter()
        .filter(|s| {
            s.act != Act::Meta && matches!(manifest.entries[s.entry].kind, Kind::File { .. })
        })
        .collect();
    // On every core, each worker writing runs of neighbouring files with directory
    // descriptors of its own (nothing is renamed until pass 2).
    let run = super::run_length(files.len(), PREWRITE_RUN);
    let (root_fd, root) = (engine.disk.root_fd.as_fd(), &engine.disk.root);
    let written: Vec<Vec<(usize, bool)>> = files
        .par_chunks(run)
        .map(|run| {
            let (mut dirs, mut noted, mut out) = (sys::DirCache::default(), None, Vec::new());
            for s in run {
                let e = &manifest.entries[s.entry];
                let Ok(dir) = dirs.dir(root_fd, parent(&e.path), root) else {
                    continue; // a directory this update creates: written in pass 2
                };
                if noted != Some(parent(&e.path)) {
                    syncer.note(dir);
                    noted = Some(parent(&e.path));
                }
                let temp = temp_name(file_name(&e.path));
                out.push((
                    s.entry,
                    engine.write_temp(dir, &temp, e, &provider, progress)?,
                ));
            }
            Ok(out)
        })
        .collect::<Result<_>>()?;
    let prewritten: HashMap<usize, bool> = written.into_iter().flatten().collect();
    if !prewritten.is_empty() {
        syncer.sync(&engine.disk.root)?;
    }
    Ok(prewritten)
}

/// Pass 2 of [`Run::execute`] for step `s`: makes a directory, puts a file (`written` in pass 1,
/// `Some(linked)`, else written now) or a special entry in place over the old one, or sets metadata.
fn put_step(
    engine: &mut Engine,
    manifest: &Manifest,
    s: &Step,
    written: Option<bool>,
    staging: &Path,
    syncer: &sys::Syncer,
    progress: &dyn Progress,
) -> Result<()> {
    let e = &manifest.entries[s.entry];
    let dir = if e.path.is_empty() {
        None
    } else {
        Some(engine.dir(parent(&e.path))?)
    };
    if let Some(d) = &dir {
        syncer.note_dir(parent(&e.path), d.as_fd());
    }
    let name = file_name(&e.path);
    let temp = temp_name(name);
    let root = engine.disk.root.clone();
    match (s.act, &e.kind) {
        (Act::Meta, _) | (_, Kind::Dir) => {
            if e.kind == Kind::Dir && s.act != Act::Meta {
                let dir = dir.as_ref().expect("not the root");
                if s.act == Act::Replace {
                    engine.stash(dir.as_fd(), name, &e.path)?;
                }
                mkdirat(dir.as_fd(), name, Mode::from_bits_truncate(0o700))
                    .at(shown(&root, &e.path))?;
            }
            // Directory metadata is set at the end; other metadata now.
            if e.kind != Kind::Dir {
                let dir = dir.as_ref().expect("not the root");
                let r = manifest.resolve(e);
                set_metadata(dir.as_fd(), name, r, None, &root, &|w| engine.warn(w))?;
            }
        }
        (_, Kind::File { .. }) => {
            let dir = dir.as_ref().expect("not the root");
            let mut linked = written.unwrap_or(false);
            if written.is_none() {
                let provider = Provider {
                    engine: &*engine,
                    staging: staging.to_path_buf(),
                };
                linked = engine.write_temp(dir.as_fd(), &temp, e, &provider, progress)?;
            }
            engine.put_in_place(dir.as_fd(), &temp, name, &e.path, s.act, linked)?;
        }
        _ => {
            let dir = dir.as_ref().expect("not the root");
            let _ = unlinkat(dir.as_fd(), temp.as_slice(), UnlinkatFlags::NoRemoveDir);
            create_special(dir.as_fd(), &temp, engine.disk.root_fd.as_fd(), e, &root)?;
            if !matches!(e.kind, Kind::Hardlink { .. }) {
                set_metadata(dir.as_fd(), &temp, e, None, &root, &|w| engine.warn(w))?;
            }
            engine.put_in_place(dir.as_fd(), &temp, name, &e.path, s.act, true)?;
        }
    }
    Ok(())
}

/// Where staged blobs go, as a tree path (for the space check).
const STAGED: &str = "var/lib/aurum-node/staging/blobs";

/// Notes that the blobs of regular file `e` can be read at `at`.
fn add_local(local: &mut HashMap<Id, Vec<LocalChunk>>, e: &Entry, at: LocalAt) {
    if let Kind::File {
        chunks, extents, ..
    } = &e.kind
    {
        let extents = extents.clone().map(Arc::new);
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

/// Indexes the blobs the node holds: the files of its current revision (`current`, with its
/// tree id) that `serves`, and the undo areas (with the manifests of the revisions their files
/// came from).
fn index_local(
    engine: &mut Engine,
    current: Option<(Id, &Manifest)>,
    serves: &dyn Fn(&Entry) -> bool,
    node: &Node,
    state: &NodeState,
) -> Result<()> {
    if let Some((_, m)) = current {
        for e in m.entries.iter().filter(|e| serves(e)) {
            add_local(&mut engine.local, e, LocalAt::Tree(e.path.clone()));
        }
    }
    // Undo areas hold files of the revisions the node ran before.
    let entries: Vec<(PathBuf, Vec<u8>)> = undo::areas(&node.dir.join("undo"))?
        .iter()
        .flat_map(|area| undo::entries(area))
        .collect();
    if entries.is_empty() {
        return Ok(());
    }
    // Each revision once; the current one is decoded already.
    let mut ids = Vec::new();
    for r in [&state.previous, &state.current, &state.last_known_good]
        .into_iter()
        .flatten()
    {
        let id = r.tree_id()?;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    let mut kept: Vec<Manifest> = Vec::new();
    for id in &ids {
        if current.is_none_or(|(c, _)| c != *id) {
            kept.extend(node.kept_manifest(id)?);
        }
    }
    let manifests: Vec<&Manifest> = kept
        .iter()
        .chain(current.filter(|(c, _)| ids.contains(c)).map(|(_, m)| m))
        .collect();
    for (base, path) in entries {
        for m in &manifests {
            if let Some(e) = m.get(&path) {
                let r = m.resolve(e);
                add_local(&mut engine.local, r, LocalAt::File(base.clone()));
                if let Some(k) = content_key(r) {
                    let files = engine.whole.entry(k).or_default();
                    if !files.contains(&base) {
                        files.push(base.clone());
                    }
                }
            }
            // What was under a directory moved aside: the manifest's entries below `path`
            // are one run of its sorted list.
            let mut below = path.clone();
            below.push(b'/');
            let from = m.entries.partition_point(|e| e.path < below);
            for e in m.entries[from..]
                .iter()
                .take_while(|e| e.path.starts_with(&below))
            {
                let r = m.resolve(e);
                let suffix = std::ffi::OsStr::from_bytes(&e.path[below.len()..]);
                let at = base.join(suffix);
                add_local(&mut engine.local, r, LocalAt::File(at.clone()));
                // Files of a directory moved aside link back as well as single files.
                if let Some(k) = content_key(r) {
                    let files = engine.whole.entry(k).or_default();
                    if !files.contains(&at) {
                        files.push(at);
                    }
                }
            }
        }
    }
    Ok(())
}

/// Finishes a run a kill stopped after its commit saved the node state (the tree and the
/// state already at the journal's target, the journal not yet removed): what the commit does
/// after that, as a rerun of the same command would find nothing left to write. Its leftover
/// temporary names go, the manifests no revision needs any more, the journal and the staged
/// blobs. `None` (nothing done) when there is no journal or its run had not committed; a
/// repair (a run to the revision it started from) never counts as committed here, the state
/// naming its target all along.
pub fn finish_committed(node: &Node) -> Result<Option<Journal>> {
    let Some(j) = node.journal()? else {
        return Ok(None);
    };
    let state = node.state()?;
    let committed = state.current.as_ref().is_some_and(|c| c.same_tree(&j.to))
        && !j.from.as_ref().is_some_and(|f| f.same_tree(&j.to));
    if !committed {
        return Ok(None);
    }
    Engine::for_root(node)?.remove_temps(&j.temps);
    node.prune_manifests(&state)?;
    node.end()?;
    free_staging(node);
    Ok(Some(j))
}

/// The revision a rollback goes to: before an interrupted update, else the previous one; with
/// the manifest of the tree the node held there and the overrides laid in it.
pub fn rollback_target(node: &Node) -> Result<(Target, Manifest, Overlay)> {
    let state = node.state()?;
    let back = match node.journal()? {
        Some(j) if j.action == NodeAction::Rollback => Some(j.to),
        Some(j) => j.from,
        None => state.previous.clone(),
    }
    .ok_or_else(|| {
        invalid(
            "this node has no previous revision to roll back to: `aurum node-status` shows what \
         it runs; `aurum rollback --to REV --server URL` goes to a given revision",
        )
    })?;
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
