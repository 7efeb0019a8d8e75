//! The apply engine: making a directory hold exactly what a manifest describes.
//!
//! `checkout` (a revision into an empty directory) is its first use; updateclient, rollback and
//! install grow from the same pieces: [`write_file`] and [`set_metadata`] act through a parent
//! directory descriptor opened with `O_NOFOLLOW` at every step (see [`crate::sys`]), so no
//! symlink in the target can turn a write into one outside the root, and every blob comes from a
//! [`BlobSource`] that checks it against its id before a byte of it is written.
//!
//! Metadata goes on in the only order that keeps it: owner, then mode (chown clears setuid),
//! then xattrs (chown clears security.capability), made exactly the entry's, names it lacks
//! removed, then times (everything else changes ctime and, for directories, mtime).
//! Directories get theirs last, deepest first.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;

use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{mknodat, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchownat, linkat, symlinkat, Gid, Uid};

pub mod bootcount;
pub mod client;
mod disk;
pub mod embedded;
pub mod health;
pub mod hooks;
pub mod node;
pub mod overrides;
mod plan;
mod preflight;
pub mod source;
pub mod stage;
mod tree;
mod undo;
pub mod update;
pub mod verified;

use crate::error::{invalid, IoContext, Result};
use crate::format::embedded::is_reserved;
use crate::format::manifest::{file_name, parent, Entry, EntrySource, Kind};
use crate::format::Id;
use crate::progress::Progress;
use crate::sys::{self, shown};
use tree::TreeWriter;

pub use crate::store::BlobSource;

/// What an apply did.
#[derive(Debug, Default)]
pub struct ApplyReport {
    pub entries: u64,
    pub files: u64,
    pub bytes: u64,
    /// Things that could not be kept (ownership when not root, xattrs the filesystem refuses).
    pub warnings: Vec<String>,
    /// The repositories the revision embeds, rebuilt.
    pub embedded: Vec<crate::repo::embedded::Rebuilt>,
}

/// Collects warnings from several threads.
struct Warnings(Mutex<Vec<String>>);

impl Warnings {
    fn push(&self, w: String) {
        let mut v = self.0.lock().expect("warnings lock");
        if v.len() < 1000 {
            v.push(w);
        }
    }
}

/// Materialises `manifest` into `target`, which must be empty or absent.
///
/// All or nothing: when it fails (a blob missing or damaged, a disk full), what it wrote is
/// removed again and the error says so, so that no file that looks complete but is not (a
/// 0-byte or half-written one, a directory without its files) is left behind.
pub fn checkout(
    manifest: &dyn EntrySource,
    blobs: &dyn BlobSource,
    target: &Path,
    progress: &dyn Progress,
) -> Result<ApplyReport> {
    sys::check_proc()?;
    let created = match std::fs::read_dir(target) {
        Ok(mut it) => {
            if it.next().is_some() {
                return Err(invalid(format!(
                    "{} is not empty; checkout writes only into an empty or new directory",
                    target.display()
                )));
            }
            false
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(target).at(target)?;
            true
        }
        Err(e) => return Err(e).at(target),
    };
    checkout_into(manifest, blobs, target, progress).map_err(|e| {
        progress.finish();
        let note = match remove_checkout(target, created) {
            Ok(()) if created => format!("; the checkout was stopped and {} removed again", target.display()),
            Ok(()) => format!("; the checkout was stopped and {} emptied again", target.display()),
            Err(r) => format!(
                "; the checkout was stopped, and what it wrote could not be removed ({r}): delete {} before using it",
                target.display()
            ),
        };
        e.with_note(&note)
    })
}

/// Takes back a failed checkout: `target` itself when the checkout made it, else what it put
/// in it (it was empty before).
fn remove_checkout(target: &Path, created: bool) -> Result<()> {
    if created {
        return std::fs::remove_dir_all(target).at(target);
    }
    for e in std::fs::read_dir(target).at(target)? {
        let p = e.at(target)?.path();
        match std::fs::symlink_metadata(&p).at(&p)?.is_dir() {
            true => std::fs::remove_dir_all(&p).at(&p)?,
            false => std::fs::remove_file(&p).at(&p)?,
        }
    }
    Ok(())
}

/// [`checkout`] into an empty `target`, through the one fresh-tree writer, the entries
/// streamed from `manifest` (each checked as it comes; a bad one stops the checkout, which
/// then takes back what it wrote): two passes, one for the progress total, one to write.
fn checkout_into(
    manifest: &dyn EntrySource,
    blobs: &dyn BlobSource,
    target: &Path,
    progress: &dyn Progress,
) -> Result<ApplyReport> {
    let root = sys::open_root(target)?;
    let writer = TreeWriter::new(root.as_fd(), target, true);
    let mut total = 0u64;
    let mut records = Vec::new();
    for e in manifest.entries()? {
        let e = e?;
        total += e.data_len();
        if crate::format::embedded::record_of(&e).is_some() {
            records.push(e);
        }
    }
    progress.phase("writing files", Some(total), true);
    let mut failed = None;
    let entries = manifest
        .entries()?
        .map_while(|e| e.map_err(|err| failed = Some(err)).ok());
    let counts = writer.write_tree(entries, blobs, progress)?;
    if let Some(err) = failed {
        return Err(err);
    }
    progress.finish();
    let embedded = embedded::rebuild_all(target, &records, &embedded::FromBlobs(blobs))?;
    // Like cp, a checkout leaves the flushing to the kernel: it writes into a new directory,
    // so a crash loses nothing that was there. `aurum checkout --sync` flushes.
    Ok(ApplyReport {
        entries: counts.entries,
        files: counts.files,
        bytes: counts.bytes,
        warnings: writer.into_warnings(),
        embedded,
    })
}

/// The longest file name Linux filesystems take (NAME_MAX).
const NAME_MAX: usize = 255;

/// Suffix of the temporary names aurum writes entries under before renaming them into place.
const TEMP_SUFFIX: &[u8] = b".aurum-new";

/// The temporary name an entry `name` is written under in its own directory before it is
/// renamed over `name`: `.NAME.aurum-new`, or, when that would pass NAME_MAX (a name of more
/// than 244 bytes), `.aurum-new-` and a hash of the name, so that a name the filesystem takes
/// can always be updated. Both forms say whose file it is to an administrator who finds one;
/// aurum itself finds its leftovers through its journal, not by these names. The one function
/// for every temporary name next to a tree entry (update, rollback, and the undo of a failed
/// update all go through it).
pub fn temp_name(name: &[u8]) -> Vec<u8> {
    if name.len() + 1 + TEMP_SUFFIX.len() <= NAME_MAX {
        let mut temp = Vec::with_capacity(name.len() + 1 + TEMP_SUFFIX.len());
        temp.push(b'.');
        temp.extend_from_slice(name);
        temp.extend_from_slice(TEMP_SUFFIX);
        return temp;
    }
    let mut temp = b".aurum-new-".to_vec();
    temp.extend_from_slice(blake3::hash(name).to_hex()[..32].as_bytes());
    temp
}

/// Creates a new regular file `name` in `dir` with the entry's content (holes kept). The data
/// is not flushed: the caller syncs the filesystem once the batch is written.
pub fn write_file(
    dir: BorrowedFd,
    name: &[u8],
    e: &Entry,
    blobs: &dyn BlobSource,
    shown_root: &Path,
    progress: &dyn Progress,
) -> Result<File> {
    let Kind::File {
        size,
        chunks,
        extents,
    } = &e.kind
    else {
        unreachable!("write_file is called for files only")
    };
    let shown_path = shown(shown_root, &e.path);
    // A blob's error names the blob; the administrator needs the file it was for too.
    // A blob's content is borrowed from the source where it has it (see `with_blob`).
    let with = |id: &Id, use_it: &mut dyn FnMut(&[u8]) -> Result<()>| {
        let mut failed_here = false;
        blobs
            .with_blob(id, &mut |data| {
                use_it(data).inspect_err(|_| failed_here = true)
            })
            .map_err(|err| match failed_here {
                true => err,
                false => err.with_note(&format!(" (content of {})", shown_path.display())),
            })
    };
    let fd = openat(
        dir,
        name,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .at(&shown_path)?;
    let mut file = File::from(fd);
    match extents {
        None => {
            // Each blob in one write: chunks are 16 KiB or more, and a buffer per file cost
            // an mmap and munmap for every small file of a checkout.
            for c in chunks {
                with(&c.id, &mut |data| {
                    file.write_all(data).at(&shown_path)?;
                    progress.advance(data.len() as u64);
                    Ok(())
                })?;
            }
        }
        Some(ext) => {
            // Write each data extent at its offset; the rest stays a hole.
            let mut ext_iter = ext.iter().copied();
            let (mut off, mut left) = ext_iter.next().unwrap_or((0, 0));
            for c in chunks {
                with(&c.id, &mut |data| {
                    let mut d = data;
                    while !d.is_empty() {
                        while left == 0 {
                            (off, left) = ext_iter.next().ok_or_else(|| {
                                crate::error::corrupt(format!(
                                    "sparse map of {} is short",
                                    e.display()
                                ))
                            })?;
                        }
                        let n = d.len().min(left as usize);
                        file.write_all_at(&d[..n], off).at(&shown_path)?;
                        off += n as u64;
                        left -= n as u64;
                        d = &d[n..];
                    }
                    progress.advance(data.len() as u64);
                    Ok(())
                })?;
            }
            file.set_len(*size).at(&shown_path)?;
        }
    }
    // Not fsynced here: callers make a whole batch durable with one syncfs (sys::sync_fs).
    Ok(file)
}

/// Creates a symlink, device, fifo, socket or hardlink `e` in `dir`.
pub fn create_special(
    dir: BorrowedFd,
    name: &[u8],
    root: BorrowedFd,
    e: &Entry,
    shown_root: &Path,
) -> Result<()> {
    let shown_path = shown(shown_root, &e.path);
    let perm = Mode::from_bits_truncate(0o600);
    match &e.kind {
        Kind::Symlink { target } => symlinkat(target.as_slice(), dir, name).at(&shown_path),
        Kind::Char { rdev } => mknodat(dir, name, SFlag::S_IFCHR, perm, *rdev).at(&shown_path),
        Kind::Block { rdev } => mknodat(dir, name, SFlag::S_IFBLK, perm, *rdev).at(&shown_path),
        Kind::Fifo => mknodat(dir, name, SFlag::S_IFIFO, perm, 0).at(&shown_path),
        Kind::Socket => mknodat(dir, name, SFlag::S_IFSOCK, perm, 0).at(&shown_path),
        Kind::Hardlink { target } => {
            let tdir = sys::open_dir_beneath(root, parent(target), shown_root)?;
            linkat(tdir.as_fd(), file_name(target), dir, name, AtFlags::empty()).at(&shown_path)
        }
        Kind::File { .. } | Kind::Dir => unreachable!("created elsewhere"),
    }
}

pub(crate) fn set_metadata_root(
    root: BorrowedFd,
    e: &Entry,
    shown_root: &Path,
    warn: &dyn Fn(String),
) -> Result<()> {
    // The root has no parent we may open; act on it through its own descriptor.
    let file = File::from(nix::unistd::dup(root).at(shown_root)?);
    apply_owner(
        nix::unistd::fchown(
            &file,
            Some(Uid::from_raw(e.uid)),
            Some(Gid::from_raw(e.gid)),
        ),
        e,
        shown_root,
        warn,
    )?;
    nix::sys::stat::fchmod(&file, Mode::from_bits_truncate(e.mode)).at(shown_root)?;
    set_xattrs(root, b"", e, shown_root, warn)?;
    let t = TimeSpec::new(e.mtime, i64::from(e.mtime_nsec));
    nix::sys::stat::futimens(&file, &t, &t).at(shown_root)
}

fn apply_owner(
    r: nix::Result<()>,
    e: &Entry,
    shown_root: &Path,
    warn: &dyn Fn(String),
) -> Result<()> {
    match r {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EPERM) => {
            warn(format!(
                "{}: cannot set owner {}:{} (run as root to keep ownership)",
                shown(shown_root, &e.path).display(),
                e.uid,
                e.gid
            ));
            Ok(())
        }
        Err(err) => Err(err).at(shown(shown_root, &e.path)),
    }
}

/// Makes the xattrs of `name` in `dir` exactly `e`'s: every name `e` lacks is removed, the
/// others set where their value differs. Setting alone would keep what the entry must not have:
/// an xattr or ACL the image dropped, one added by hand, one a new entry inherited from a
/// default ACL, one an old file brings back from the undo area.
/// An SELinux label the revision does not carry is the node's to keep: its policy labels
/// every file, and an image captured without labels (from a host without SELinux, or with
/// `--exclude`d labels) must not strip them, nor show every file as changed.
pub const NODE_LABEL: &[u8] = b"security.selinux";

/// Whether the xattrs `have` on disk are the entry's `want`, an unwanted node label aside.
pub fn same_xattrs(have: &[(Vec<u8>, Vec<u8>)], want: &[(Vec<u8>, Vec<u8>)]) -> bool {
    let keeps_label = !want.iter().any(|(k, _)| k == NODE_LABEL);
    let mut have = have
        .iter()
        .filter(|(k, _)| !(keeps_label && k == NODE_LABEL));
    // An embedded repository's record is aurum's, never on a disk.
    let mut want = want.iter().filter(|(k, _)| !is_reserved(k));
    loop {
        match (have.next(), want.next()) {
            (None, None) => return true,
            (Some(a), Some(b)) if a == b => {}
            _ => return false,
        }
    }
}

fn set_xattrs(
    dir: BorrowedFd,
    name: &[u8],
    e: &Entry,
    shown_root: &Path,
    warn: &dyn Fn(String),
) -> Result<()> {
    let shown_path = shown(shown_root, &e.path);
    let refused = |what: &str, k: &[u8], err: &std::io::Error| {
        warn(format!(
            "{}: cannot {what} xattr {}: {err}",
            shown_path.display(),
            String::from_utf8_lossy(k)
        ))
    };
    // Read after owner and mode are set: chown drops security.capability, chmod rewrites an
    // ACL's mask.
    let have = sys::xattrs_at(dir, name).at(&shown_path)?;
    for (k, _) in &have {
        if e.xattrs.iter().any(|(w, _)| w == k) || k == NODE_LABEL {
            continue;
        }
        if let Err(err) = sys::remove_xattr_at(dir, name, k) {
            match err.raw_os_error() {
                Some(libc::ENODATA) => {}
                Some(libc::ENOTSUP) | Some(libc::EPERM) | Some(libc::EACCES) => {
                    refused("remove", k, &err)
                }
                _ => return Err(err).at(&shown_path),
            }
        }
    }
    for (k, v) in e.xattrs.iter().filter(|(k, _)| !is_reserved(k)) {
        if have.iter().any(|(hk, hv)| hk == k && hv == v) {
            continue;
        }
        if let Err(err) = sys::set_xattr_at(dir, name, k, v) {
            match err.raw_os_error() {
                Some(libc::ENOTSUP) | Some(libc::EPERM) => refused("set", k, &err),
                _ => return Err(err).at(&shown_path),
            }
        }
    }
    Ok(())
}

/// Sets owner, mode, xattrs (exactly `e`'s, see [`set_xattrs`]) and mtime of `e` (named in
/// `dir`), in that order.
pub fn set_metadata(
    dir: BorrowedFd,
    name: &[u8],
    e: &Entry,
    file: Option<&File>,
    shown_root: &Path,
    warn: &dyn Fn(String),
) -> Result<()> {
    set_metadata_of(dir, name, e, file, shown_root, warn, false)
}

/// Whether a new entry made in `dir` may be given xattrs by the kernel: the directory has a
/// default ACL (or its xattrs cannot be read, so nobody can tell). Without one, a new entry
/// gets none but a security label (which is the node's, see [`NODE_LABEL`]).
pub fn gives_xattrs(dir: BorrowedFd) -> bool {
    sys::xattrs_at(dir, b"")
        .map(|x| x.iter().any(|(k, _)| k == b"system.posix_acl_default"))
        .unwrap_or(true)
}

/// [`set_metadata`]; `bare`: `e` was just made by aurum in a directory that gives new entries
/// no xattrs (see [`gives_xattrs`]), so when `e` has none either, there are none to read,
/// set or remove (a `llistxattr` per file saved).
pub fn set_metadata_of(
    dir: BorrowedFd,
    name: &[u8],
    e: &Entry,
    file: Option<&File>,
    shown_root: &Path,
    warn: &dyn Fn(String),
    bare: bool,
) -> Result<()> {
    let shown_path = shown(shown_root, &e.path);
    let uid = Some(Uid::from_raw(e.uid));
    let gid = Some(Gid::from_raw(e.gid));
    let is_link = matches!(e.kind, Kind::Symlink { .. });
    apply_owner(
        fchownat(dir, name, uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW),
        e,
        shown_root,
        warn,
    )?;
    if !is_link {
        let mode = Mode::from_bits_truncate(e.mode);
        match file {
            Some(f) => nix::sys::stat::fchmod(f, mode).at(&shown_path)?,
            None => nix::sys::stat::fchmodat(
                dir,
                name,
                mode,
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            )
            .at(&shown_path)?,
        }
    }
    if !(bare && e.xattrs.iter().all(|(k, _)| is_reserved(k))) {
        set_xattrs(dir, name, e, shown_root, warn)?;
    }
    set_mtime(dir, name, e, shown_root)
}

/// Sets the mtime (and atime) of `e`, named `name` in `dir`, without following a symlink.
pub fn set_mtime(dir: BorrowedFd, name: &[u8], e: &Entry, shown_root: &Path) -> Result<()> {
    let t = TimeSpec::new(e.mtime, i64::from(e.mtime_nsec));
    match utimensat(dir, name, &t, &t, UtimensatFlags::NoFollowSymlink) {
        Ok(()) => Ok(()),
        // The path is made only for the error: this runs for every entry of a checkout.
        Err(err) => Err(err).at(shown(shown_root, &e.path)),
    }
}

/// How many neighbouring items (files, paths) one worker takes at a time out of `len`, at most
/// `most`: short lists still go to every core, a run being at most a quarter of a core's share.
pub(crate) fn run_length(len: usize, most: usize) -> usize {
    len.div_ceil(4 * rayon::current_num_threads())
        .clamp(1, most)
}

#[cfg(test)]
mod label_tests {
    use super::*;

    #[test]
    fn temp_names_fit_name_max_whatever_the_name() {
        assert_eq!(temp_name(b"passwd"), b".passwd.aurum-new");
        for len in [1, 243, 244, 245, 254, 255] {
            let name = vec![b'x'; len];
            let t = temp_name(&name);
            assert!(
                t.len() <= NAME_MAX,
                "{len}-byte name: {}-byte temp",
                t.len()
            );
            assert!(t.starts_with(b".") && t.windows(9).any(|w| w == b"aurum-new"));
            assert_ne!(t, name);
        }
        // Long names that differ only at the end get different temporary names.
        let (mut a, mut b) = (vec![b'y'; 255], vec![b'y'; 255]);
        a[254] = b'a';
        b[254] = b'b';
        assert_ne!(temp_name(&a), temp_name(&b));
    }

    fn x(pairs: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        pairs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn a_node_label_the_image_lacks_is_the_nodes() {
        let label = ("security.selinux", "system_u:object_r:bin_t:s0");
        let user = ("user.a", "1");
        assert!(same_xattrs(&x(&[label, user]), &x(&[user])));
        assert!(same_xattrs(&x(&[label]), &x(&[])));
        // An image that carries labels has them applied exactly.
        let other = ("security.selinux", "system_u:object_r:etc_t:s0");
        assert!(!same_xattrs(&x(&[label]), &x(&[other])));
        assert!(!same_xattrs(&x(&[]), &x(&[other])));
        assert!(!same_xattrs(&x(&[user]), &x(&[])));
        assert!(!same_xattrs(&x(&[]), &x(&[user])));
    }
}
