//! Before an update touches anything: can the node's filesystems take it?
//!
//! An update that fails half-way (a full disk, a read-only mount, one immutable file) costs a
//! rollback at best, so what can be known beforehand is checked beforehand, and refused in
//! words that name the place and the fix: the free space of every filesystem the update
//! writes to against what it will write there (new file data rounded up to whole blocks, the
//! staged blobs, a margin for directories, the journal and the undo index), free inodes,
//! read-only mounts, and the `chattr` immutable and append-only flags of every entry it
//! replaces, changes or deletes and of every directory it writes in. What still goes wrong
//! (another writer filling the disk meanwhile, a quota) is undone by the update itself.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::sys::statvfs::{fstatvfs, FsFlags};

use crate::error::{Error, Result};
use crate::format::manifest::{display_path, file_name, parent};
use crate::sys::{self, shown};

/// Room kept free beyond the data on each filesystem written to: directories, the journal,
/// the undo index, metadata blocks the filesystem allocates.
const MARGIN: u64 = 1 << 20;

/// What an existing entry is about to undergo, for the message that names it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Touch {
    Replace,
    Change,
    Delete,
}

/// What an update will write and touch, gathered from its plan.
#[derive(Default)]
pub(super) struct Needs<'a> {
    /// New entries (tree path, bytes of data they take); directories and specials take 0.
    pub writes: Vec<(&'a [u8], u64)>,
    /// Existing entries the update replaces, changes in place or deletes.
    pub touched: Vec<(&'a [u8], Touch)>,
}

/// A mount: its filesystem, and whether this mount of it is read-only (a read-only bind mount
/// shares its device number with the writable mount it was made from).
type MountKey = (u64, bool);

/// The mount holding the open directory `dir`.
fn mount_key(dir: BorrowedFd) -> Option<MountKey> {
    let st = nix::sys::stat::fstat(dir).ok()?;
    let ro = fstatvfs(dir).ok()?.flags().contains(FsFlags::ST_RDONLY);
    Some((st.st_dev as u64, ro))
}

/// One mount the update writes to.
struct Fs {
    /// An open directory on it, and that directory's tree path (to name the mount).
    dir: OwnedFd,
    rel: Vec<u8>,
    block: u64,
    bytes: u64,
    inodes: u64,
}

/// Refuses, before anything is written, an update the node's filesystems cannot take.
pub(super) fn check(root_fd: BorrowedFd, root: &Path, needs: &Needs) -> Result<()> {
    let mut fss: HashMap<MountKey, Fs> = HashMap::new();
    let mut dev_of: HashMap<Vec<u8>, MountKey> = HashMap::new();
    let mut blocked: Vec<String> = Vec::new();
    let mut checked_dirs: HashMap<Vec<u8>, ()> = HashMap::new();
    let mut missing: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    // Most entries are in the directory of the one before.
    let mut dirs = sys::DirCache::default();
    let mut check_dir = |rel: &[u8], blocked: &mut Vec<String>, dirs: &mut sys::DirCache| {
        if checked_dirs.insert(rel.to_vec(), ()).is_none() {
            flag_check(root_fd, root, rel, "write in it", blocked, dirs);
        }
    };
    for &(path, bytes) in &needs.writes {
        let Some((dir_rel, dev)) = existing_dir(
            root_fd,
            root,
            parent(path),
            &mut dev_of,
            &mut fss,
            &mut missing,
        ) else {
            continue;
        };
        check_dir(&dir_rel, &mut blocked, &mut dirs);
        let fs = fss.get_mut(&dev).expect("registered");
        fs.bytes += bytes.div_ceil(fs.block) * fs.block;
        fs.inodes += 1;
    }
    for &(path, touch) in &needs.touched {
        if existing_dir(
            root_fd,
            root,
            parent(path),
            &mut dev_of,
            &mut fss,
            &mut missing,
        )
        .is_none()
        {
            continue;
        }
        if touch != Touch::Change {
            check_dir(parent(path), &mut blocked, &mut dirs);
        }
        let what = match touch {
            Touch::Replace => "replace it",
            Touch::Change => "change it",
            Touch::Delete => "delete it",
        };
        flag_check(root_fd, root, path, what, &mut blocked, &mut dirs);
    }
    for fs in fss.values() {
        let Ok(vfs) = fstatvfs(fs.dir.as_fd()) else {
            continue;
        };
        if vfs.flags().contains(FsFlags::ST_RDONLY) {
            let at = mount_point(root_fd, root, &fs.rel);
            return Err(Error::Unwritable(format!(
                "{at} is mounted read-only and the update writes there: remount it read-write \
                 (`mount -o remount,rw {at}`) and run again; the node was not changed"
            )));
        }
    }
    if !blocked.is_empty() {
        let n = blocked.len();
        blocked.truncate(10);
        let more = if n > 10 {
            format!(" (and {} more)", n - 10)
        } else {
            String::new()
        };
        return Err(Error::Unwritable(format!(
            "{}{more}; the node was not changed",
            blocked.join("; ")
        )));
    }
    for fs in fss.values() {
        let Ok(vfs) = fstatvfs(fs.dir.as_fd()) else {
            continue;
        };
        // Root may use the blocks reserved for it; anyone else only the available ones.
        let blocks = if nix::unistd::geteuid().is_root() {
            vfs.blocks_free()
        } else {
            vfs.blocks_available()
        };
        let free = blocks * vfs.fragment_size();
        let need = fs.bytes + MARGIN;
        if need > free {
            let at = mount_point(root_fd, root, &fs.rel);
            return Err(Error::Unwritable(format!(
                "the update needs {} on {at}, {} free: free space there (or give the \
                 filesystem more room) and run again; the node was not changed",
                mib(need, true),
                mib(free, false)
            )));
        }
        // Some filesystems (btrfs) report no inode limit at all.
        let inodes_free = vfs.files_available();
        if vfs.files() > 0 && fs.inodes > inodes_free {
            let at = mount_point(root_fd, root, &fs.rel);
            return Err(Error::Unwritable(format!(
                "the update makes {} new files on {at}, which has {inodes_free} free inodes: \
                 delete files there and run again; the node was not changed",
                fs.inodes
            )));
        }
    }
    Ok(())
}

/// `31 MiB`: needs rounded up, free space rounded down, so the message never understates the
/// shortfall.
fn mib(bytes: u64, up: bool) -> String {
    let m = if up {
        bytes.div_ceil(1 << 20)
    } else {
        bytes >> 20
    };
    format!("{m} MiB")
}

/// The deepest existing directory at or above `rel` (an update may create the rest), opened
/// and its filesystem registered in `fss`; `None` when not even the root opens. `missing`
/// remembers, for each directory found absent, the existing one above it: a fresh root's
/// files would otherwise each try every missing directory above them again.
fn existing_dir(
    root_fd: BorrowedFd,
    root: &Path,
    rel: &[u8],
    dev_of: &mut HashMap<Vec<u8>, MountKey>,
    fss: &mut HashMap<MountKey, Fs>,
    missing: &mut HashMap<Vec<u8>, Vec<u8>>,
) -> Option<(Vec<u8>, MountKey)> {
    let mut at: Vec<u8> = rel.to_vec();
    let mut absent: Vec<Vec<u8>> = Vec::new();
    let found = loop {
        if let Some(&dev) = dev_of.get(&at) {
            break Some(dev);
        }
        if let Some(up) = missing.get(&at) {
            at = up.clone();
            continue;
        }
        if let Ok(dir) = sys::open_dir_beneath(root_fd, &at, root) {
            let dev = mount_key(dir.as_fd())?;
            dev_of.insert(at.clone(), dev);
            fss.entry(dev).or_insert_with(|| Fs {
                block: fstatvfs(dir.as_fd())
                    .map(|v| v.fragment_size().max(512))
                    .unwrap_or(4096),
                dir,
                rel: at.clone(),
                bytes: 0,
                inodes: 0,
            });
            break Some(dev);
        }
        if at.is_empty() {
            break None;
        }
        let up = parent(&at).to_vec();
        absent.push(std::mem::replace(&mut at, up));
    };
    for a in absent {
        missing.insert(a, at.clone());
    }
    found.map(|dev| (at, dev))
}

/// Notes in `blocked` an entry whose `chattr` flags forbid what the update does to it.
fn flag_check(
    root_fd: BorrowedFd,
    root: &Path,
    rel: &[u8],
    what: &str,
    blocked: &mut Vec<String>,
    dirs: &mut sys::DirCache,
) {
    let flags = if rel.is_empty() {
        sys::inode_flags_at(root_fd, b".")
    } else {
        match dirs.dir(root_fd, parent(rel), root) {
            Ok(dir) => sys::inode_flags_at(dir, file_name(rel)),
            Err(_) => None,
        }
    };
    let Some(flags) = flags else {
        return;
    };
    let (flag, name) = if flags & sys::FS_IMMUTABLE_FL != 0 {
        ('i', "immutable")
    } else if flags & sys::FS_APPEND_FL != 0 {
        ('a', "append-only")
    } else {
        return;
    };
    let p = shown(root, rel);
    blocked.push(format!(
        "{} is {name} (chattr +{flag}) and the update must {what}: clear the flag with \
         `chattr -{flag} {}` (or exclude {} from updates) and run again",
        p.display(),
        p.display(),
        display_path(rel)
    ));
}

/// The mount point (within the node) of the mount holding the tree directory `rel`: its
/// highest ancestor on the same mount, shown as a host path.
fn mount_point(root_fd: BorrowedFd, root: &Path, rel: &[u8]) -> String {
    let dev = |r: &[u8]| {
        sys::open_dir_beneath(root_fd, r, root)
            .ok()
            .and_then(|d| mount_key(d.as_fd()))
    };
    let mine = dev(rel);
    let mut top = rel;
    while !top.is_empty() && dev(parent(top)) == mine {
        top = parent(top);
    }
    shown(root, top).display().to_string()
}
