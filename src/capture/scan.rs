//! Walking a local tree into manifest entries.
//!
//! The walk stays on the filesystems that make up the golden client: it descends into a mount
//! point only when the filesystem mounted there is a disk filesystem (ext4, xfs, btrfs, vfat...),
//! as SystemImager captures a client's mounted partitions, and records pseudo and network
//! filesystems (proc, sysfs, tmpfs, NFS...) as their empty mount-point directory.
//!
//! Entries come back sorted by path bytes, with hardlinks resolved so that the first name of each
//! inode in that order carries the content and the others point at it.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{openat, readlinkat};
use nix::sys::stat::{FileStat, Mode};
use rayon::prelude::*;

use crate::error::{IoContext, Result};
use crate::excludes::Excludes;
use crate::format::manifest::{Entry, Kind};
use crate::format::wire::StatKey;
use crate::progress::Progress;
use crate::sys::{self, shown, DIR_FLAGS};

/// An entry with the stat data the stat cache keys on.
#[derive(Clone, Debug)]
pub struct Scanned {
    pub entry: Entry,
    pub stat: StatKey,
    /// The stat cache vouched for the whole entry (its row, xattrs and content, is what the
    /// capture would write again).
    pub vouched: bool,
}

/// What the stat cache holds for an entry whose stat data is what the capture that cached it
/// saw: the file's content, and its xattrs when that capture recorded them (an xattr cannot
/// change without changing the inode's ctime, which the stat data includes).
#[derive(Clone, Debug, Default)]
pub struct Cached {
    pub content: Option<crate::format::manifest::Content>,
    pub xattrs: Option<Vec<(Vec<u8>, Vec<u8>)>>,
}

/// Whether `chunks` hold all of a file's data: its `size` bytes, or for a sparse file the
/// bytes of its `extents`.
pub fn covers(
    size: u64,
    chunks: &[crate::format::manifest::Chunk],
    extents: Option<&[(u64, u64)]>,
) -> bool {
    let have: u64 = chunks.iter().map(|c| u64::from(c.len)).sum();
    let data = match extents {
        None => size,
        Some(ext) => ext.iter().map(|e| e.1).sum(),
    };
    have == data
}

/// Asks the stat cache about a directory's entries at once: (path, stat data) -> what it
/// vouches for, in the same order.
pub type Lookup<'a> = dyn FnMut(&[(&[u8], &StatKey)]) -> Result<Vec<Option<Cached>>> + Send + 'a;

/// Filesystems that hold a golden client's data and are captured when mounted below its root.
const DISK_FILESYSTEMS: &[&str] = &[
    "ext2", "ext3", "ext4", "xfs", "btrfs", "vfat", "msdos", "jfs", "reiserfs", "f2fs", "zfs",
    "bcachefs", "exfat",
];

/// Mount points under the root, from /proc/self/mountinfo: absolute path -> filesystem type
/// (the last mount on a point is the one seen).
fn mount_table() -> HashMap<PathBuf, String> {
    crate::sys::mount_table()
        .into_iter()
        .map(|m| (m.point, m.fstype))
        .collect()
}

/// The mtime recorded for a directory the capture keeps empty (a mount point it does not
/// descend into, a directory whose content is excluded): the epoch, so that it never changes.
pub const HELD_EMPTY_MTIME: i64 = 0;

/// Metadata common to every kind, from a stat.
fn entry_from_stat(
    path: Vec<u8>,
    kind: Kind,
    st: &FileStat,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
) -> Entry {
    Entry {
        path,
        kind,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        mtime: st.st_mtime,
        mtime_nsec: st.st_mtime_nsec as u32,
        xattrs,
    }
}

fn stat_key(st: &FileStat) -> StatKey {
    StatKey {
        size: st.st_size as u64,
        mtime_ns: st.st_mtime * 1_000_000_000 + st.st_mtime_nsec,
        ctime_ns: st.st_ctime * 1_000_000_000 + st.st_ctime_nsec,
        ino: st.st_ino,
        maybe_sparse: (st.st_blocks as u64) * 512 < st.st_size as u64,
    }
}

/// A name that is there to record.
struct Found {
    name: Vec<u8>,
    path: Vec<u8>,
    st: FileStat,
    kind: Kind,
    /// `None` until read (or vouched for by the stat cache).
    xattrs: Option<Vec<(Vec<u8>, Vec<u8>)>>,
    vouched: bool,
}

/// One name of a directory, looked at.
enum Probe {
    Found(Box<Found>),
    /// Left out by the excludes.
    Excluded,
    /// Gone since the directory was listed.
    Vanished(Vec<u8>),
    /// Neither a file, a directory, a link nor a device: skipped with a warning.
    Unknown(Vec<u8>),
}

/// Where a walk hands each entry as it finds it, in path order.
pub type Emit<'a> = dyn FnMut(Scanned) -> Result<()> + Send + 'a;

struct Walker<'a, 'e> {
    root: PathBuf,
    abs_root: PathBuf,
    excludes: &'a Excludes,
    mounts: HashMap<PathBuf, String>,
    emit: &'a mut Emit<'e>,
    lookup: Option<&'a mut Lookup<'e>>,
    /// The first name (in path order) of each inode with several names: the one that
    /// carries the content. Only multiply-linked files are kept, not the whole tree.
    inodes: HashMap<(u64, u64), Vec<u8>>,
    warnings: Vec<String>,
    progress: &'a dyn Progress,
}

/// Walks `root` and returns its entries, sorted, plus warnings for the administrator.
/// Holds the whole tree: [`walk`] hands entries on as it goes instead.
pub fn scan(
    root: &Path,
    excludes: &Excludes,
    progress: &dyn Progress,
) -> Result<(Vec<Scanned>, Vec<String>)> {
    let mut out = Vec::new();
    let warnings = walk(root, excludes, progress, None, &mut |s| {
        out.push(s);
        Ok(())
    })?;
    Ok((out, warnings))
}

/// Walks `root`, handing each entry to `emit` in path byte order, with hardlinks resolved
/// (the first name of each inode carries the content, the others point at it); returns the
/// warnings for the administrator. Memory stays flat whatever the tree's size.
///
/// With a `lookup`, each directory's entries are looked up in the stat cache after their
/// `lstat`: the xattrs of an entry it vouches for are not read again, and a file's content
/// comes with it (its chunks cover its data); the other entries' xattrs are read as without.
pub fn walk<'e>(
    root: &Path,
    excludes: &Excludes,
    progress: &dyn Progress,
    lookup: Option<&mut Lookup<'e>>,
    emit: &mut Emit<'e>,
) -> Result<Vec<String>> {
    sys::check_proc()?;
    let fd = sys::open_root(root)?;
    let st = nix::sys::stat::fstat(&fd).at(root)?;
    let xattrs = sys::xattrs_at(fd.as_fd(), b"").at(root)?;
    let abs_root = std::fs::canonicalize(root).at(root)?;
    let mut w = Walker {
        root: root.to_path_buf(),
        abs_root,
        excludes,
        mounts: mount_table(),
        emit,
        lookup,
        inodes: HashMap::new(),
        warnings: Vec::new(),
        progress,
    };
    progress.phase("scanning", None, false);
    (w.emit)(Scanned {
        entry: entry_from_stat(Vec::new(), Kind::Dir, &st, xattrs),
        stat: stat_key(&st),
        vouched: false,
    })?;
    // In the pool, so that each directory's parallel calls do not cross into it from outside.
    rayon::scope(|_| w.walk(fd, Vec::new(), st.st_dev))?;
    progress.finish();
    Ok(w.warnings)
}

impl Walker<'_, '_> {
    fn walk(&mut self, dir: OwnedFd, rel: Vec<u8>, dev: u64) -> Result<()> {
        let shown_dir = shown(&self.root, &rel);
        // Listed through the directory's own descriptor (no `dup`, no `fdopendir`): the
        // calls below only name entries relative to it, which its position does not affect.
        let mut listing = rustix::fs::Dir::new(dir)
            .map_err(std::io::Error::from)
            .at(&shown_dir)?;
        let mut names: Vec<Vec<u8>> = Vec::new();
        for ent in &mut listing {
            let ent = ent.map_err(std::io::Error::from).at(&shown_dir)?;
            let name = ent.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(name.to_vec());
            }
        }
        let dir = listing.fd().map_err(std::io::Error::from).at(&shown_dir)?;
        names.sort();
        // The calls made for each name (lstat, listxattr, readlink) are most of a scan's time
        // and wait on the kernel: made for a directory's names in parallel, they keep both
        // cores busy. What follows (opening and descending into directories, recording) stays
        // in name order, so entries and warnings come out as a sequential walk makes them, and
        // at most one directory per level is open at a time.
        let (root, excludes) = (self.root.as_path(), self.excludes);
        let mut probes: Vec<Result<Probe>> = names
            .par_iter()
            .with_min_len(16)
            .map(|name| probe(root, excludes, dir.as_fd(), &rel, name))
            .collect();
        // What the stat cache vouches for needs no more calls; the rest's xattrs are read.
        if let Some(lookup) = &mut self.lookup {
            let found: Vec<&mut Found> = probes
                .iter_mut()
                .filter_map(|p| match p {
                    Ok(Probe::Found(f)) => Some(&mut **f),
                    _ => None,
                })
                .collect();
            let keys: Vec<StatKey> = found.iter().map(|f| stat_key(&f.st)).collect();
            let asked: Vec<(&[u8], &StatKey)> = found
                .iter()
                .zip(&keys)
                .map(|(f, k)| (f.path.as_slice(), k))
                .collect();
            let answers = lookup(&asked)?;
            for (f, cached) in found.into_iter().zip(answers) {
                let Some(cached) = cached else { continue };
                // A file is vouched for only when the cached chunks cover its data: a row
                // written for a further name of a hardlink group holds none.
                f.vouched = cached.xattrs.is_some()
                    && match (&f.kind, &cached.content) {
                        (Kind::File { size, .. }, Some((c, e))) => covers(*size, c, e.as_deref()),
                        (Kind::File { .. }, None) => false,
                        _ => true,
                    };
                f.xattrs = cached.xattrs;
                if let (
                    Kind::File {
                        chunks, extents, ..
                    },
                    Some((c, e)),
                ) = (&mut f.kind, cached.content)
                {
                    (*chunks, *extents) = (c, e);
                }
            }
        }
        let unread = |p: &Result<Probe>| matches!(p, Ok(Probe::Found(f)) if f.xattrs.is_none());
        let read_xattrs = |p: &mut Result<Probe>| {
            if let Ok(Probe::Found(f)) = p {
                if f.xattrs.is_none() {
                    match sys::xattrs_at(dir.as_fd(), &f.name) {
                        Ok(x) => f.xattrs = Some(x),
                        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                            *p = Ok(Probe::Vanished(std::mem::take(&mut f.path)))
                        }
                        Err(e) => *p = Err(e).at(shown(root, &f.path)),
                    }
                }
            }
        };
        match probes.iter().filter(|p| unread(p)).count() {
            0 => {}
            1..16 => probes.iter_mut().for_each(read_xattrs),
            _ => probes.par_iter_mut().with_min_len(16).for_each(read_xattrs),
        }
        // Entries come out in path byte order with no sort of the whole tree: a directory's
        // subtree (`name/...`) is walked once every sibling sorting before `name/` is out, as
        // `name.d` sorts between `name` and `name/x` ('.' < '/').
        let mut subtrees: BTreeMap<Vec<u8>, (OwnedFd, Vec<u8>, u64)> = BTreeMap::new();
        for probe in probes {
            let Found {
                name,
                path,
                st,
                kind,
                xattrs,
                vouched,
            } = match probe? {
                Probe::Found(f) => *f,
                Probe::Excluded => continue,
                Probe::Vanished(path) => {
                    self.vanished(&path);
                    continue;
                }
                Probe::Unknown(path) => {
                    self.warnings.push(format!(
                        "{}: unknown file type, skipped",
                        shown(&self.root, &path).display()
                    ));
                    continue;
                }
            };
            self.walk_subtrees(&mut subtrees, Some(&name))?;
            let fmt = st.st_mode & libc::S_IFMT;
            // A directory is opened before it is recorded, so that one gone by now is left out.
            let sub = if fmt == libc::S_IFDIR {
                match openat(dir.as_fd(), name.as_slice(), DIR_FLAGS, Mode::empty()) {
                    Ok(sub) => Some(sub),
                    Err(nix::errno::Errno::ENOENT) => {
                        self.vanished(&path);
                        continue;
                    }
                    Err(e) => return Err(e).at(shown(&self.root, &path)),
                }
            } else {
                None
            };
            // A mount point we do not descend into (/proc, /run, a tmpfs /tmp) and a directory
            // whose content the excludes leave out (/tmp/*) are recorded empty, and their mtime
            // would be the live one, which changes with every file made in them: fixed, an
            // unchanged system re-captures as unchanged. Mode, owner and xattrs are kept.
            let descend = match &sub {
                Some(sub) => st.st_dev == dev || self.descend_mount(&path, sub),
                None => false,
            };
            let held_empty =
                sub.is_some() && (!descend || self.excludes.excludes_everything_in(&path));
            // The walk goes in path order: an inode's first name seen carries the content.
            let mut kind = kind;
            if fmt != libc::S_IFDIR && st.st_nlink > 1 {
                match self.inodes.entry((st.st_dev, st.st_ino)) {
                    std::collections::hash_map::Entry::Occupied(first) => {
                        kind = Kind::Hardlink {
                            target: first.get().clone(),
                        };
                    }
                    std::collections::hash_map::Entry::Vacant(slot) => {
                        slot.insert(path.clone());
                    }
                }
            }
            let xattrs = xattrs.expect("read above when the stat cache had none");
            let mut entry = entry_from_stat(path.clone(), kind, &st, xattrs);
            if held_empty {
                (entry.mtime, entry.mtime_nsec) = (HELD_EMPTY_MTIME, 0);
            }
            (self.emit)(Scanned {
                entry,
                stat: stat_key(&st),
                vouched,
            })?;
            self.progress.advance(1);
            if let Some(sub) = sub.filter(|_| descend) {
                let mut key = name;
                key.push(b'/');
                subtrees.insert(key, (sub, path, st.st_dev));
            }
        }
        self.walk_subtrees(&mut subtrees, None)
    }

    /// Walks the subtrees held back whose `name/` sorts before `name` (all with None).
    fn walk_subtrees(
        &mut self,
        subtrees: &mut BTreeMap<Vec<u8>, (OwnedFd, Vec<u8>, u64)>,
        name: Option<&[u8]>,
    ) -> Result<()> {
        while let Some(first) = subtrees.first_entry() {
            if name.is_some_and(|n| first.key().as_slice() >= n) {
                break;
            }
            let (sub, path, dev) = first.remove();
            self.walk(sub, path, dev)?;
        }
        Ok(())
    }

    fn vanished(&mut self, rel: &[u8]) {
        self.warnings.push(vanished(rel));
    }

    /// Whether to capture what is mounted at `rel`.
    fn descend_mount(&mut self, rel: &[u8], dir: &OwnedFd) -> bool {
        let abs = self.abs_root.join(OsStr::from_bytes(rel));
        match self.mounts.get(&abs) {
            Some(fstype) if DISK_FILESYSTEMS.contains(&fstype.as_str()) => true,
            Some(fstype) => {
                log::info!("not descending into {} ({fstype})", abs.display());
                false
            }
            // A btrfs subvolume has a device number of its own without being mounted: it is
            // part of the filesystem being captured (Fedora's and openSUSE's /home, /var...).
            None if nix::sys::statfs::fstatfs(dir)
                .map(|s| s.filesystem_type() == nix::sys::statfs::BTRFS_SUPER_MAGIC)
                .unwrap_or(false) =>
            {
                true
            }
            None => {
                self.warnings.push(format!(
                    "{}: another filesystem whose mount is not in /proc/self/mountinfo; its content is not captured",
                    abs.display()
                ));
                false
            }
        }
    }
}

/// What one name of a directory is, from the calls that may run in parallel.
fn probe(
    root: &Path,
    excludes: &Excludes,
    dir: BorrowedFd,
    rel: &[u8],
    name: &[u8],
) -> Result<Probe> {
    let mut path = rel.to_vec();
    if !path.is_empty() {
        path.push(b'/');
    }
    path.extend_from_slice(name);
    // A live system changes under us: a name listed may be gone by the time we look at
    // it (or its directory may be gone while we walk it). Like rsync's "file has
    // vanished", that leaves the entry out with a warning rather than fails the capture.
    let st = match sys::lstat_at(dir, name) {
        Ok(st) => st,
        Err(nix::errno::Errno::ENOENT) => return Ok(Probe::Vanished(path)),
        Err(e) => return Err(e).at(shown(root, &path)),
    };
    let fmt = st.st_mode & libc::S_IFMT;
    if excludes.excluded(&path, fmt == libc::S_IFDIR) {
        return Ok(Probe::Excluded);
    }
    let kind = match fmt {
        libc::S_IFREG => Kind::File {
            size: st.st_size as u64,
            chunks: Vec::new(),
            extents: None,
        },
        libc::S_IFDIR => Kind::Dir,
        libc::S_IFLNK => match readlinkat(dir, name) {
            Ok(target) => Kind::Symlink {
                target: target.as_bytes().to_vec(),
            },
            Err(nix::errno::Errno::ENOENT) => return Ok(Probe::Vanished(path)),
            Err(e) => return Err(e).at(shown(root, &path)),
        },
        libc::S_IFCHR => Kind::Char { rdev: st.st_rdev },
        libc::S_IFBLK => Kind::Block { rdev: st.st_rdev },
        libc::S_IFIFO => Kind::Fifo,
        libc::S_IFSOCK => Kind::Socket,
        _ => return Ok(Probe::Unknown(path)),
    };
    Ok(Probe::Found(Box::new(Found {
        name: name.to_vec(),
        path,
        st,
        kind,
        xattrs: None,
        vouched: false,
    })))
}

/// The warning for an entry that disappeared during the capture and was left out. It names
/// the entry by its path in the image, as the scan, the hashing and a remote agent all know it.
pub fn vanished(rel: &[u8]) -> String {
    format!(
        "{}: vanished during the capture, left out of the revision",
        crate::format::manifest::display_path(rel)
    )
}

/// Whether `e` says that a path does not exist (any more).
pub fn is_vanished(e: &crate::Error) -> bool {
    matches!(e, crate::Error::Io { source, .. } if source.raw_os_error() == Some(libc::ENOENT))
}
