//! File-system calls relative to directory descriptors.
//!
//! Capture and apply never hand a full path to the kernel: they walk one component at a time
//! with `openat(O_NOFOLLOW)` and act on names relative to the parent's descriptor. That is what
//! lets very long paths (beyond PATH_MAX) work, and what guarantees that a symlink planted in a
//! target tree cannot redirect a write outside the target root. The xattr calls go through
//! `/proc/self/fd/N/name` with the `l*` variants, which resolves the parent through the
//! descriptor and does not follow the last component; listing them uses `listxattrat` where
//! the kernel has it (Linux 6.13), which is the same without the walk through procfs.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fstatat, FileStat, Mode};

use crate::error::{IoContext, Result};

/// The flags for opening a directory we will walk through.
pub const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// A path relative to a root, for error messages.
pub fn shown(root: &Path, rel: &[u8]) -> PathBuf {
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(OsStr::from_bytes(rel))
    }
}

/// Opens a directory given as a host path (following symlinks, as an administrator expects for
/// the argument itself).
pub fn open_root(path: &Path) -> Result<OwnedFd> {
    nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .at(path)
}

/// Opens the regular file at `rel` beneath `root` for reading, following no symlink.
pub fn open_file_beneath(root: &OwnedFd, rel: &[u8], shown_root: &Path) -> Result<std::fs::File> {
    LastDir::default().open_file(root.as_fd(), rel, shown_root)
}

/// The directory beneath a root that a worker opened last. Work that goes through a tree in
/// order (a checkout's files, a capture's hashing) finds most entries in the directory of the
/// one before, and opens them with one `openat` instead of one `openat` and one `close` per
/// component of their path. Only for directories nothing renames meanwhile.
#[derive(Default)]
pub struct LastDir(Option<(Vec<u8>, OwnedFd)>);

impl LastDir {
    /// The directory `rel` beneath `root` (never through a symlink): the one kept, or opened now
    /// and kept.
    pub fn dir(
        &mut self,
        root: BorrowedFd,
        rel: &[u8],
        shown_root: &Path,
    ) -> Result<BorrowedFd<'_>> {
        if !matches!(&self.0, Some((kept, _)) if kept.as_slice() == rel) {
            self.0 = Some((rel.to_vec(), open_dir_beneath(root, rel, shown_root)?));
        }
        Ok(self
            .0
            .as_ref()
            .map(|(_, fd)| fd.as_fd())
            .expect("kept above"))
    }

    /// Opens the regular file at `rel` beneath `root` for reading, following no symlink.
    pub fn open_file(
        &mut self,
        root: BorrowedFd,
        rel: &[u8],
        shown_root: &Path,
    ) -> Result<std::fs::File> {
        let (parent, name) = match rel.iter().rposition(|&b| b == b'/') {
            Some(i) => (
                rel.get(..i).unwrap_or_default(),
                rel.get(i + 1..).unwrap_or_default(),
            ),
            None => (&b""[..], rel),
        };
        let dir = self.dir(root, parent, shown_root)?;
        let fd = openat(
            dir,
            name,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .at(shown(shown_root, rel))?;
        Ok(std::fs::File::from(fd))
    }
}

/// Directories kept by a [`DirCache`].
const DIR_CACHE: usize = 16;

/// The directories beneath a root that a worker opened last, and the directories on their
/// way: like [`LastDir`], but when work leaves a directory for another (a fresh root's files
/// written in the order their blobs arrive, or `usr/share/doc/a` followed by
/// `usr/share/doc/b`), the one wanted is often still kept, and else is opened from its
/// nearest kept ancestor with one `openat` per component below it, not one per component
/// from the root. Keeps at most 16 descriptors. A kept descriptor follows its directory
/// wherever it is moved: whoever moves directories of the tree drops the cache (as the
/// update engine does on every move into an undo area).
#[derive(Default)]
pub struct DirCache {
    /// Most recently used first.
    kept: Vec<(Vec<u8>, std::sync::Arc<OwnedFd>)>,
}

impl DirCache {
    /// The directory `rel` beneath `root` (never through a symlink).
    pub fn dir<'s>(
        &'s mut self,
        root: BorrowedFd<'s>,
        rel: &[u8],
        shown_root: &Path,
    ) -> Result<BorrowedFd<'s>> {
        if rel.is_empty() {
            return Ok(root);
        }
        match self.kept.iter().position(|(k, _)| k.as_slice() == rel) {
            Some(0) => {}
            Some(i) => {
                let hit = self.kept.remove(i);
                self.kept.insert(0, hit);
            }
            None => self.open(root, rel, shown_root)?,
        }
        Ok(self
            .kept
            .first()
            .map(|(_, fd)| fd.as_fd())
            .expect("kept above"))
    }

    /// [`DirCache::dir`], as a descriptor the caller may hold on to (the root: opened anew).
    pub fn shared(
        &mut self,
        root: BorrowedFd,
        rel: &[u8],
        shown_root: &Path,
    ) -> Result<std::sync::Arc<OwnedFd>> {
        if rel.is_empty() {
            return Ok(std::sync::Arc::new(open_dir_beneath(
                root, rel, shown_root,
            )?));
        }
        self.dir(root, rel, shown_root)?;
        Ok(self
            .kept
            .first()
            .map(|(_, fd)| fd.clone())
            .expect("kept above"))
    }

    /// Opens `rel` from its deepest kept ancestor (or `root`) and keeps it, first, and the
    /// directories opened on the way.
    fn open(&mut self, root: BorrowedFd, rel: &[u8], shown_root: &Path) -> Result<()> {
        let base = self
            .kept
            .iter()
            .enumerate()
            .filter(|(_, (k, _))| {
                rel.len() > k.len() && rel.starts_with(k) && rel.get(k.len()) == Some(&b'/')
            })
            .max_by_key(|(_, (k, _))| k.len())
            .map(|(i, (k, _))| (i, k.len()));
        let mut at = base.map_or(0, |(_, len)| len + 1);
        let mut fd: Option<OwnedFd> = None;
        while at < rel.len() {
            let end = rel
                .get(at..)
                .and_then(|r| r.iter().position(|&b| b == b'/'))
                .map_or(rel.len(), |j| at + j);
            let comp = rel.get(at..end).unwrap_or_default();
            let next = match (&fd, base) {
                (Some(f), _) => openat(f, comp, DIR_FLAGS, Mode::empty()),
                (None, Some((i, _))) => {
                    let parent = self
                        .kept
                        .get(i)
                        .map(|(_, f)| f.as_fd())
                        .expect("found above");
                    openat(parent, comp, DIR_FLAGS, Mode::empty())
                }
                (None, None) => openat(root, comp, DIR_FLAGS, Mode::empty()),
            }
            .at(shown(shown_root, rel))?;
            if let Some(prev) = fd.replace(next) {
                // Ancestors are kept too: the next directory is likely their child.
                self.keep(rel.get(..at - 1).unwrap_or_default().to_vec(), prev);
            }
            at = end + 1;
        }
        self.keep(rel.to_vec(), fd.expect("rel is not empty"));
        Ok(())
    }

    fn keep(&mut self, rel: Vec<u8>, fd: OwnedFd) {
        self.kept.retain(|(k, _)| *k != rel);
        self.kept.truncate(DIR_CACHE - 1);
        self.kept.insert(0, (rel, std::sync::Arc::new(fd)));
    }

    /// Opens the regular file at `rel` beneath `root` for reading, following no symlink.
    pub fn open_file(
        &mut self,
        root: BorrowedFd,
        rel: &[u8],
        shown_root: &Path,
    ) -> Result<std::fs::File> {
        let (parent, name) = match rel.iter().rposition(|&b| b == b'/') {
            Some(i) => (
                rel.get(..i).unwrap_or_default(),
                rel.get(i + 1..).unwrap_or_default(),
            ),
            None => (&b""[..], rel),
        };
        let dir = self.dir(root, parent, shown_root)?;
        let fd = openat(
            dir,
            name,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .at(shown(shown_root, rel))?;
        Ok(std::fs::File::from(fd))
    }
}

/// Opens the directory `rel` beneath `root`, never following a symlink on the way.
pub fn open_dir_beneath(root: BorrowedFd, rel: &[u8], shown_root: &Path) -> Result<OwnedFd> {
    if rel.is_empty() {
        return nix::unistd::dup(root).at(shown_root);
    }
    let mut comps = rel.split(|&b| b == b'/');
    let first = comps.next().unwrap_or_default();
    let mut fd = openat(root, first, DIR_FLAGS, Mode::empty()).at(shown(shown_root, rel))?;
    for comp in comps {
        fd = openat(&fd, comp, DIR_FLAGS, Mode::empty()).at(shown(shown_root, rel))?;
    }
    Ok(fd)
}

/// `lstat` of `name` in `dir`.
pub fn lstat_at(dir: BorrowedFd, name: &[u8]) -> nix::Result<FileStat> {
    fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
}

/// The `/proc/self/fd/N/name` path for the `l*` calls that have no `*at` form. An empty name
/// means the directory `dir` itself, as `/proc/self/fd/N/.`: the `l*` calls on the bare
/// `/proc/self/fd/N` would act on that magic link, not on the directory (the root's xattrs were
/// neither captured nor set that way).
pub fn proc_path(dir: BorrowedFd, name: &[u8]) -> CString {
    let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    if name.is_empty() {
        p.push(b'.');
    } else {
        p.extend_from_slice(name);
    }
    CString::new(p).expect("names hold no NUL")
}

/// What every path through `/proc/self/fd` needs: a mounted /proc. A minimal init, an
/// initramfs or a chroot may not have mounted it, and each call would then fail with a bare
/// "No such file or directory" naming a file that is there.
const NO_PROC: &str = "/proc is not mounted: aurum reads and sets extended attributes through \
     /proc/self/fd; mount it (`mount -t proc proc /proc`) and run the command again";

/// Refuses to start work that goes through `/proc/self/fd` when /proc is not mounted (see
/// [`NO_PROC`]), before anything is written.
pub fn check_proc() -> Result<()> {
    if Path::new("/proc/self/fd").is_dir() {
        Ok(())
    } else {
        Err(crate::error::invalid(NO_PROC))
    }
}

/// `e` from a call through `/proc/self/fd`, or the reason it failed when that is a missing
/// /proc.
fn proc_error(e: std::io::Error) -> std::io::Error {
    if e.kind() == std::io::ErrorKind::NotFound && !Path::new("/proc/self/fd").is_dir() {
        std::io::Error::new(std::io::ErrorKind::NotFound, NO_PROC)
    } else {
        e
    }
}

/// `name` in `dir` as a path the xattr calls take (through /proc, so the name is resolved
/// from the directory descriptor, not from a path someone may change meanwhile).
fn xattr_path(dir: BorrowedFd, name: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(proc_path(dir, name).as_bytes()))
}

/// Extended attributes as (name, value) pairs.
pub type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// `listxattrat(2)` (Linux 6.13): the same number on every architecture aurum builds for.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const SYS_LISTXATTRAT: libc::c_long = 465;

/// Whether the kernel refused `listxattrat` once (older than 6.13, or a seccomp filter).
static NO_LISTXATTRAT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The names of `name`'s xattrs in `dir` (not following a symlink) by `listxattrat`, from the
/// directory descriptor itself: the path through /proc/self/fd that the other xattr calls
/// take costs a walk of procfs, once for every entry an update or a capture looks at.
/// `None` where the kernel lacks the call.
fn list_xattrs_at(
    dir: BorrowedFd,
    name: &[u8],
) -> Option<std::io::Result<Vec<std::ffi::OsString>>> {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        use std::sync::atomic::Ordering;
        if NO_LISTXATTRAT.load(Ordering::Relaxed) {
            return None;
        }
        // The empty name is the directory itself, as in `proc_path`.
        let cname = CString::new(if name.is_empty() { &b"."[..] } else { name }).ok()?;
        let list = |buf: &mut [u8]| {
            // SAFETY: a valid descriptor, a NUL-terminated name and a buffer of `buf.len()`
            // bytes (none when empty: the call then only says how many it needs).
            let n = unsafe {
                libc::syscall(
                    SYS_LISTXATTRAT,
                    dir.as_raw_fd(),
                    cname.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW as libc::c_uint,
                    if buf.is_empty() {
                        std::ptr::null_mut()
                    } else {
                        buf.as_mut_ptr()
                    },
                    buf.len(),
                )
            };
            match n {
                n if n >= 0 => Ok(n as usize),
                _ => Err(std::io::Error::last_os_error()),
            }
        };
        loop {
            let wanted = match list(&mut []) {
                Ok(n) => n,
                Err(e) => match e.raw_os_error() {
                    Some(libc::ENOSYS | libc::EPERM) => {
                        NO_LISTXATTRAT.store(true, Ordering::Relaxed);
                        return None;
                    }
                    Some(libc::ENOTSUP) => return Some(Ok(Vec::new())),
                    _ => return Some(Err(e)),
                },
            };
            if wanted == 0 {
                return Some(Ok(Vec::new()));
            }
            let mut buf = vec![0u8; wanted];
            match list(&mut buf) {
                Ok(n) => {
                    buf.truncate(n);
                    let names = buf
                        .split(|&b| b == 0)
                        .filter(|k| !k.is_empty())
                        .map(|k| OsStr::from_bytes(k).to_os_string())
                        .collect();
                    return Some(Ok(names));
                }
                // One was added meanwhile: ask again.
                Err(e) if e.raw_os_error() == Some(libc::ERANGE) => continue,
                Err(e) => return Some(Err(e)),
            }
        }
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = (dir, name);
        None
    }
}

/// Every xattr of `name` in `dir` (not following a symlink), sorted by name.
pub fn xattrs_at(dir: BorrowedFd, name: &[u8]) -> std::io::Result<Xattrs> {
    let listed = list_xattrs_at(dir, name).unwrap_or_else(|| {
        xattr::list(xattr_path(dir, name))
            .map(|keys| keys.collect())
            .or_else(|e| match e.raw_os_error() {
                Some(libc::ENOTSUP) => Ok(Vec::new()),
                _ => Err(proc_error(e)),
            })
    });
    let keys = listed?;
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let p = xattr_path(dir, name);
    let mut out = Vec::new();
    for key in keys {
        // Removed between list and get: it is simply not there.
        let val = xattr::get(&p, &key)?.unwrap_or_default();
        out.push((key.into_vec(), val));
    }
    out.sort();
    Ok(out)
}

/// Sets one xattr on `name` in `dir` (not following a symlink).
pub fn set_xattr_at(dir: BorrowedFd, name: &[u8], key: &[u8], value: &[u8]) -> std::io::Result<()> {
    xattr::set(xattr_path(dir, name), OsStr::from_bytes(key), value).map_err(proc_error)
}

/// Removes one xattr from `name` in `dir` (not following a symlink).
pub fn remove_xattr_at(dir: BorrowedFd, name: &[u8], key: &[u8]) -> std::io::Result<()> {
    xattr::remove(xattr_path(dir, name), OsStr::from_bytes(key)).map_err(proc_error)
}

/// The data extents (offset, length) of an open file, using SEEK_DATA / SEEK_HOLE.
pub fn data_extents(file: &impl AsFd, size: u64) -> std::io::Result<Vec<(u64, u64)>> {
    use nix::unistd::{lseek, Whence};
    let fd = file.as_fd();
    let mut out = Vec::new();
    let mut pos: i64 = 0;
    let size = size as i64;
    while pos < size {
        let data = match lseek(fd, pos, Whence::SeekData) {
            Ok(d) => d,
            Err(nix::errno::Errno::ENXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let hole = lseek(fd, data, Whence::SeekHole)?;
        let end = hole.min(size);
        if end > data {
            out.push((data as u64, (end - data) as u64));
        }
        pos = hole;
    }
    // Rewound for the reader that follows.
    lseek(fd, 0, Whence::SeekSet)?;
    Ok(out)
}

/// fsyncs a directory so that renames into it are durable.
pub fn sync_dir(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|d| d.sync_all())
        .at(path)
}

/// How [`write_atomic`] writes.
#[derive(Debug, Default, Clone, Copy)]
pub struct WriteOpts<'a> {
    /// fsync the file before the rename and the directory after it, so the new content
    /// survives a power cut; without, a crash leaves the old file or the new one, never a
    /// torn one, but maybe the old one.
    pub durable: bool,
    /// Where the temporary file is made (on the same filesystem as the target); default the
    /// target's directory. A repository writes through its `tmp/`, so that a web server
    /// serving the target's directory never sees a half-written file.
    pub tmp_dir: Option<&'a Path>,
    /// The file's mode; default 0600, as the temporary file is made.
    pub mode: Option<u32>,
}

/// Writes `data` to `path` atomically: a temporary file of its own (created exclusively, so
/// never through a link someone planted, and no collision between concurrent writers),
/// renamed over `path`. The one way aurum replaces a file that others read.
pub fn write_atomic(path: &Path, data: &[u8], opts: WriteOpts) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp_dir = opts.tmp_dir.unwrap_or(dir);
    let mut tmp = tempfile::NamedTempFile::new_in(tmp_dir).at(tmp_dir)?;
    tmp.write_all(data).at(tmp.path())?;
    if let Some(mode) = opts.mode {
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))
            .at(tmp.path())?;
    }
    if opts.durable {
        tmp.as_file().sync_all().at(tmp.path())?;
    }
    tmp.persist(path).map_err(|e| e.error).at(path)?;
    if opts.durable {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Flushes everything written to the filesystem holding `fd` (one call instead of an fsync
/// per file; `shown` names it in an error).
pub fn sync_fs(fd: BorrowedFd, shown: &Path) -> Result<()> {
    nix::unistd::syncfs(fd).at(shown)
}

/// Starts writing `file`'s dirty pages to its disk and returns without waiting
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`): a flush that follows finds them written or on
/// their way. Nothing is promised: a file system that cannot is left to that flush.
pub fn start_writeback(file: &std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain system call on a descriptor `file` keeps open for its duration.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// The filesystems a batch of writes touched, to make them durable with one syncfs each.
#[derive(Default)]
pub struct Syncer {
    fds: std::sync::Mutex<std::collections::HashMap<u64, OwnedFd>>,
    /// The tree directory [`Syncer::note_dir`] noted last.
    last: std::sync::Mutex<Option<Vec<u8>>>,
}

impl Syncer {
    /// [`Syncer::note`] for the directory `rel` of one tree: nothing to do (not even an
    /// `fstat`) when it is the directory noted just before, as it is for most entries of a
    /// tree walked in order.
    pub fn note_dir(&self, rel: &[u8], dir: BorrowedFd) {
        let mut last = self.last.lock().expect("syncer lock");
        if last.as_deref() == Some(rel) {
            return;
        }
        self.note(dir);
        *last = Some(rel.to_vec());
    }

    /// Notes the filesystem of `dir` (a directory something was written in).
    pub fn note(&self, dir: BorrowedFd) {
        let Ok(st) = nix::sys::stat::fstat(dir) else {
            return;
        };
        let mut fds = self.fds.lock().expect("syncer lock");
        if let std::collections::hash_map::Entry::Vacant(v) = fds.entry(st.st_dev) {
            if let Ok(fd) = nix::unistd::dup(dir) {
                v.insert(fd);
            }
        }
    }

    /// syncfs on every filesystem noted.
    pub fn sync(&self, shown: &Path) -> Result<()> {
        for fd in self.fds.lock().expect("syncer lock").values() {
            sync_fs(fd.as_fd(), shown)?;
        }
        Ok(())
    }
}

/// `FS_IMMUTABLE_FL` and `FS_APPEND_FL` of `chattr` (linux/fs.h; libc has the ioctl but not
/// these flags).
pub const FS_IMMUTABLE_FL: libc::c_long = 0x10;
pub const FS_APPEND_FL: libc::c_long = 0x20;

/// The inode flags (`lsattr`) of `name` in `dir`, for a regular file or a directory; `None`
/// for other kinds (opening a device or a fifo to ask could block or act on hardware) and
/// where the filesystem keeps no such flags (tmpfs).
///
/// One `statx` answers where the filesystem reports these two flags in its attributes (ext4,
/// XFS, btrfs, tmpfs); elsewhere (and on an overlay whose lower layer reports them) the file
/// is opened and asked with `FS_IOC_GETFLAGS`.
pub fn inode_flags_at(dir: BorrowedFd, name: &[u8]) -> Option<libc::c_long> {
    use rustix::fs::{statx, AtFlags, StatxAttributes, StatxFlags};
    let st = statx(dir, name, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::TYPE).ok()?;
    let fmt = u32::from(st.stx_mode) & libc::S_IFMT;
    if fmt != libc::S_IFREG && fmt != libc::S_IFDIR {
        return None;
    }
    let both = StatxAttributes::IMMUTABLE | StatxAttributes::APPEND;
    // An overlay reports its lower layer's attributes for a file not yet copied up, and EROFS
    // (the read-only image under a netroot node's overlay) calls every inode immutable, yet
    // the overlay copies the file up to write it: there, the flags of FS_IOC_GETFLAGS count.
    let on_overlay =
        || rustix::fs::fstatfs(dir).is_ok_and(|f| f.f_type == libc::OVERLAYFS_SUPER_MAGIC);
    if st.stx_attributes_mask.contains(both)
        && !(st.stx_attributes.intersects(both) && on_overlay())
    {
        let attrs = st.stx_attributes;
        let mut flags = 0;
        if attrs.contains(StatxAttributes::IMMUTABLE) {
            flags |= FS_IMMUTABLE_FL;
        }
        if attrs.contains(StatxAttributes::APPEND) {
            flags |= FS_APPEND_FL;
        }
        return Some(flags);
    }
    let fd = openat(
        dir,
        name,
        OFlag::O_RDONLY
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_NOCTTY
            | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let mut flags: libc::c_long = 0;
    // SAFETY: FS_IOC_GETFLAGS writes at most a long into `flags`, which outlives the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) };
    (r == 0).then_some(flags)
}

/// Takes an flock(2) lock on `file`, exclusive or shared (the kind other aurum versions and
/// `flock(1)` see); when another process holds it, says `waiting` once and waits.
pub fn lock_file(file: &std::fs::File, path: &Path, exclusive: bool, waiting: &str) -> Result<()> {
    let tried = if exclusive {
        file.try_lock()
    } else {
        file.try_lock_shared()
    };
    match tried {
        Ok(()) => return Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => {}
        Err(std::fs::TryLockError::Error(e)) => return Err(e).at(path),
    }
    log::warn!(target: crate::progress::NOTICE, "{waiting}");
    if exclusive {
        file.lock()
    } else {
        file.lock_shared()
    }
    .at(path)
}

/// One line of /proc/self/mountinfo: where something is mounted and its filesystem type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    pub point: PathBuf,
    pub fstype: String,
}

/// The mounts of this process, in the order they were mounted; empty when /proc is not there
/// (a caller that finds no mount has nothing to skip or undo).
pub fn mount_table() -> Vec<MountInfo> {
    std::fs::read("/proc/self/mountinfo")
        .map(|text| parse_mountinfo(&text))
        .unwrap_or_default()
}

/// The lines of a mountinfo file (proc(5)): the mount point is field 5, the filesystem type
/// the first field after the `-` separator. A line without them is passed over.
pub fn parse_mountinfo(text: &[u8]) -> Vec<MountInfo> {
    text.split(|&b| b == b'\n')
        .filter_map(|line| {
            let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
            let sep = fields.iter().position(|f| *f == b"-")?;
            let point = fields.get(4).filter(|_| sep > 4)?;
            let fstype = fields.get(sep + 1)?;
            Some(MountInfo {
                point: PathBuf::from(std::ffi::OsString::from_vec(unescape_mount(point))),
                fstype: String::from_utf8_lossy(fstype).into_owned(),
            })
        })
        .collect()
}

/// One line of an fstab(5) file or of /proc/self/mounts, which has the same shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FstabEntry {
    /// `UUID=…`, `LABEL=…` or a device path.
    pub spec: String,
    pub point: String,
    pub fstype: String,
    pub options: String,
}

/// The entries of an fstab or /proc/self/mounts text; comments, blank lines and lines with
/// fewer than four fields are passed over.
pub fn parse_fstab(text: &str) -> Vec<FstabEntry> {
    let field = |f: &str| String::from_utf8_lossy(&unescape_mount(f.as_bytes())).into_owned();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some(FstabEntry {
                spec: field(f.next()?),
                point: field(f.next()?),
                fstype: field(f.next()?),
                options: field(f.next()?),
            })
        })
        .collect()
}

/// The kernel writes space, tab, newline and backslash in mount tables as `\ooo`; anything
/// else after a backslash (or an octal number over 255) is kept as it stands.
fn unescape_mount(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut rest = field;
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'\\' {
            if let Some(v) = tail
                .get(..3)
                .and_then(|o| std::str::from_utf8(o).ok())
                .filter(|o| o.bytes().all(|c| (b'0'..=b'7').contains(&c)))
                .and_then(|o| u8::from_str_radix(o, 8).ok())
            {
                out.push(v);
                rest = tail.get(3..).unwrap_or_default();
                continue;
            }
        }
        out.push(b);
        rest = tail;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `listxattrat` and the path through /proc give the same names, for a file, a directory
    /// and a symlink (whose own xattrs, none, not its target's).
    #[test]
    fn listxattrat_lists_what_the_proc_path_lists() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::os::unix::fs::symlink("f", dir.path().join("l")).unwrap();
        for (name, key) in [("f", "user.a"), ("f", "user.b"), ("d", "user.c")] {
            if xattr::set(dir.path().join(name), key, b"v").is_err() {
                // A filesystem without user xattrs: nothing to compare, which CI must not hide.
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "no user xattrs on {}",
                    dir.path().display()
                );
                return;
            }
        }
        let fd = open_root(dir.path()).unwrap();
        for name in ["f", "d", "l", ".", ""] {
            let by_proc: Vec<std::ffi::OsString> =
                xattr::list(xattr_path(fd.as_fd(), name.as_bytes()))
                    .unwrap()
                    .collect();
            match list_xattrs_at(fd.as_fd(), name.as_bytes()) {
                Some(listed) => {
                    let (mut a, mut b) = (listed.unwrap(), by_proc);
                    a.sort();
                    b.sort();
                    assert_eq!(a, b, "{name}");
                }
                // A kernel older than 6.13: only the path through /proc.
                None => assert!(NO_LISTXATTRAT.load(std::sync::atomic::Ordering::Relaxed)),
            }
        }
        let all = xattrs_at(fd.as_fd(), b"f").unwrap();
        assert_eq!(
            all,
            vec![
                (b"user.a".to_vec(), b"v".to_vec()),
                (b"user.b".to_vec(), b"v".to_vec())
            ]
        );
        assert!(xattrs_at(fd.as_fd(), b"missing").is_err());
    }

    #[test]
    fn mountinfo_lines() {
        let text = b"22 1 8:2 / / rw,relatime shared:1 - ext4 /dev/sda2 rw\n\
            36 22 0:31 / /mnt/a\\040b rw master:3 - tmpfs tmpfs rw\n\
            37 22 0:32 / /short rw\n\
            \n";
        let m = parse_mountinfo(text);
        assert_eq!(
            m,
            vec![
                MountInfo {
                    point: "/".into(),
                    fstype: "ext4".into()
                },
                MountInfo {
                    point: "/mnt/a b".into(),
                    fstype: "tmpfs".into()
                },
            ]
        );
    }

    #[test]
    fn mount_escapes() {
        assert_eq!(unescape_mount(b"/a\\040b\\134c"), b"/a b\\c");
        assert_eq!(unescape_mount(b"/plain\\"), b"/plain\\");
        assert_eq!(unescape_mount(b"/x\\12"), b"/x\\12");
        // Over 255: kept as written, not wrapped or a panic.
        assert_eq!(unescape_mount(b"/x\\777"), b"/x\\777");
        assert_eq!(unescape_mount(b"/x\\+12"), b"/x\\+12");
    }

    #[test]
    fn fstab_lines() {
        let text = "# comment\n\nUUID=ab / ext4 defaults 0 1\n/dev/sdb1 /data\\040x xfs noatime\nshort line\n";
        let f = parse_fstab(text);
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].spec, "UUID=ab");
        assert_eq!(f[0].point, "/");
        assert_eq!(f[0].options, "defaults");
        assert_eq!(f[1].point, "/data x");
        assert_eq!(f[1].fstype, "xfs");
    }
}

#[cfg(test)]
mod dir_cache_tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// The directory a [`DirCache`] hands out is the one named, whatever the order of the
    /// requests, through ancestors kept or not, and once more than 16 are kept.
    #[test]
    fn every_directory_handed_out_is_the_one_named() {
        let t = tempfile::tempdir().expect("tempdir");
        let mut all = vec![b"".to_vec()];
        for a in ["a", "b", "c"] {
            for b in ["x", "y"] {
                for c in ["1", "2", "3", "4"] {
                    let rel = format!("{a}/{b}/{c}");
                    std::fs::create_dir_all(t.path().join(&rel)).expect("mkdir");
                    all.push(rel.into_bytes());
                }
                all.push(format!("{a}/{b}").into_bytes());
            }
            all.push(a.as_bytes().to_vec());
        }
        let root = open_root(t.path()).expect("root");
        let mut cache = DirCache::default();
        let mut order = all.clone();
        order.extend(all.iter().rev().cloned());
        order.extend(all.iter().step_by(3).cloned());
        order.extend(all.iter().step_by(5).rev().cloned());
        for rel in &order {
            let want = std::fs::metadata(shown(t.path(), rel)).expect("stat").ino();
            let fd = cache.dir(root.as_fd(), rel, t.path()).expect("dir");
            let got = nix::sys::stat::fstat(fd).expect("fstat").st_ino;
            assert_eq!(got, want, "{}", String::from_utf8_lossy(rel));
            assert!(cache.kept.len() <= DIR_CACHE);
        }
        // No symlink is followed on the way.
        std::os::unix::fs::symlink(t.path().join("a"), t.path().join("l")).expect("symlink");
        assert!(cache.dir(root.as_fd(), b"l/x", t.path()).is_err());
        std::fs::write(t.path().join("a/x/f"), b"f").expect("write");
        assert!(cache.open_file(root.as_fd(), b"a/x/f", t.path()).is_ok());
        assert!(cache.open_file(root.as_fd(), b"l/x/f", t.path()).is_err());
    }
}
