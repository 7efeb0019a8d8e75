//! What the update planner may know of a node's disk, and nothing more: [`DiskView`].
//!
//! The planner ([`super::plan`]) decides from the metadata of the entries on disk (and, when
//! size and mtime cannot tell, their content's chunk ids) what an update has to do. Reading
//! goes through this trait so that the planner does no I/O of its own: the engine gives it a
//! [`RootView`] over the live root, and the planner's tests an in-memory tree.
//!
//! Paths are manifest paths (relative, `/`-separated, the empty path is the root). A path is
//! looked up beneath the root without following symlinks in any of its components, as the
//! engine writes it: an entry whose parent is not a directory on disk does not exist for the
//! planner (the engine would create it, after replacing its parent).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use nix::sys::stat::FileStat;
use rayon::prelude::*;

use crate::error::Result;
use crate::format::manifest::{file_name, parent, Chunk};
use crate::store::chunk::file_chunks;
use crate::sys::{self, Xattrs};

/// The metadata of one entry on disk: what lstat(2) says of it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Stat {
    /// `st_mode`: the type bits (`S_IFMT`) and the permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// 512-byte blocks allocated (fewer than the size needs: a sparse file).
    pub blocks: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub nlink: u64,
    pub dev: u64,
    pub ino: u64,
    pub rdev: u64,
}

impl Stat {
    /// The type bits, to compare with `libc::S_IF*`.
    pub fn format(&self) -> u32 {
        self.mode & libc::S_IFMT
    }

    pub fn is_dir(&self) -> bool {
        self.format() == libc::S_IFDIR
    }

    /// Whether `other` is the very same inode.
    pub fn same_inode(&self, other: &Stat) -> bool {
        (self.dev, self.ino) == (other.dev, other.ino)
    }
}

impl From<&FileStat> for Stat {
    fn from(st: &FileStat) -> Stat {
        Stat {
            mode: st.st_mode,
            uid: st.st_uid,
            gid: st.st_gid,
            size: st.st_size as u64,
            blocks: st.st_blocks as u64,
            mtime: st.st_mtime,
            mtime_nsec: st.st_mtime_nsec as u32,
            nlink: st.st_nlink,
            dev: st.st_dev,
            ino: st.st_ino,
            rdev: st.st_rdev,
        }
    }
}

/// Read access to a node's tree, for the planner.
pub(crate) trait DiskView {
    /// The entry at `path` (without following a final symlink), or `None` when there is none
    /// or a component above it is not a directory.
    fn stat(&self, path: &[u8]) -> Option<Stat>;
    /// The extended attributes of the entry at `path`, sorted by name (none when unreadable).
    fn xattrs(&self, path: &[u8]) -> Xattrs;
    /// The entry at `path` with its extended attributes.
    fn look(&self, path: &[u8]) -> Option<(Stat, Xattrs)> {
        let st = self.stat(path)?;
        Some((st, self.xattrs(path)))
    }
    /// [`DiskView::look`] at each of `paths`, in their order (a view may look at several at
    /// once).
    fn look_all(&self, paths: &[&[u8]]) -> Vec<Option<(Stat, Xattrs)>> {
        paths.iter().map(|p| self.look(p)).collect()
    }
    /// The target of the symlink at `path`.
    fn readlink(&self, path: &[u8]) -> Option<Vec<u8>>;
    /// The chunk ids of the regular file at `path`, whose metadata is `st` (`None` when it
    /// cannot be read).
    fn chunks(&self, path: &[u8], st: &Stat) -> Result<Option<Vec<Chunk>>>;
    /// The names in the directory at `path`, each with whether it is a directory; `None`
    /// when it is not a directory that can be read.
    fn list(&self, path: &[u8]) -> Option<Vec<(Vec<u8>, bool)>>;
}

/// Paths one worker of [`RootView::look_all`] takes at a time.
const LOOK_RUN: usize = 256;

/// A node's live root, read through directory descriptors beneath it.
pub(crate) struct RootView {
    pub root_fd: OwnedFd,
    /// The root as the administrator named it (for messages).
    pub root: PathBuf,
    /// The directories [`RootView::dir`] opened last (see [`sys::DirCache`]), shared with its
    /// callers (no `dup` and `close` per entry).
    dirs: Mutex<sys::DirCache>,
}

impl RootView {
    pub fn open(root: PathBuf) -> Result<RootView> {
        Ok(RootView {
            root_fd: sys::open_root(&root)?,
            root,
            dirs: Mutex::default(),
        })
    }

    /// The directory `rel` of the tree. The engine walks the tree in manifest order, so the
    /// directory asked for is mostly one opened just before, or below one: it is opened from
    /// there (one `openat`, or none) rather than from the root, one component at a time, for
    /// every entry.
    pub fn dir(&self, rel: &[u8]) -> Result<Arc<OwnedFd>> {
        let mut dirs = self.dirs.lock().expect("dir lock");
        dirs.shared(self.root_fd.as_fd(), rel, &self.root)
    }

    /// Forgets the directories opened: one may have just been moved away.
    pub fn forget_dirs(&self) {
        *self.dirs.lock().expect("dir lock") = sys::DirCache::default();
    }

    /// Calls `f` with the directory holding `path` and the name in it (the root: itself, `.`).
    fn at<T>(&self, path: &[u8], f: impl FnOnce(BorrowedFd, &[u8]) -> Option<T>) -> Option<T> {
        if path.is_empty() {
            return f(self.root_fd.as_fd(), b".");
        }
        if parent(path).is_empty() {
            return f(self.root_fd.as_fd(), file_name(path));
        }
        let dir = self.dir(parent(path)).ok()?;
        f(dir.as_fd(), file_name(path))
    }
}

impl DiskView for RootView {
    fn stat(&self, path: &[u8]) -> Option<Stat> {
        self.at(path, |dir, name| {
            sys::lstat_at(dir, name).ok().map(|st| Stat::from(&st))
        })
    }

    fn xattrs(&self, path: &[u8]) -> Xattrs {
        self.at(path, |dir, name| sys::xattrs_at(dir, name).ok())
            .unwrap_or_default()
    }

    /// One directory lookup for both (the planner asks this of every entry).
    fn look(&self, path: &[u8]) -> Option<(Stat, Xattrs)> {
        self.at(path, |dir, name| {
            let st = sys::lstat_at(dir, name).ok()?;
            Some((
                Stat::from(&st),
                sys::xattrs_at(dir, name).unwrap_or_default(),
            ))
        })
    }

    /// On every core, each worker taking runs of neighbouring paths with directory
    /// descriptors of its own: an update's plan looks at every entry of the revision (an
    /// `lstat` and an `llistxattr` each), which was most of its time on one core.
    fn look_all(&self, paths: &[&[u8]]) -> Vec<Option<(Stat, Xattrs)>> {
        let run = super::run_length(paths.len(), LOOK_RUN);
        let runs: Vec<Vec<Option<(Stat, Xattrs)>>> = paths
            .par_chunks(run)
            .map(|run| {
                let mut dirs = sys::DirCache::default();
                run.iter()
                    .map(|&path| {
                        let (dir, name) = match path.is_empty() {
                            true => (self.root_fd.as_fd(), &b"."[..]),
                            false => {
                                let dir = dirs.dir(self.root_fd.as_fd(), parent(path), &self.root);
                                (dir.ok()?, file_name(path))
                            }
                        };
                        let st = sys::lstat_at(dir, name).ok()?;
                        Some((
                            Stat::from(&st),
                            sys::xattrs_at(dir, name).unwrap_or_default(),
                        ))
                    })
                    .collect()
            })
            .collect();
        runs.into_iter().flatten().collect()
    }

    fn readlink(&self, path: &[u8]) -> Option<Vec<u8>> {
        self.at(path, |dir, name| {
            nix::fcntl::readlinkat(dir, name)
                .ok()
                .map(|t| t.as_bytes().to_vec())
        })
    }

    fn chunks(&self, path: &[u8], st: &Stat) -> Result<Option<Vec<Chunk>>> {
        let Ok(file) = crate::sys::open_file_beneath(&self.root_fd, path, &self.root) else {
            return Ok(None);
        };
        let sparse = st.blocks * 512 < st.size;
        Ok(file_chunks(file, st.size, sparse, |_, _, _| Ok(()))
            .ok()
            .map(|c| c.chunks))
    }

    fn list(&self, path: &[u8]) -> Option<Vec<(Vec<u8>, bool)>> {
        let dir = self.dir(path).ok()?;
        let listing = nix::dir::Dir::from_fd(nix::unistd::dup(&dir).ok()?).ok()?;
        let mut names = Vec::new();
        for ent in listing.into_iter().flatten() {
            let name = ent.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let is_dir = match ent.file_type() {
                Some(t) => t == nix::dir::Type::Directory,
                None => sys::lstat_at(dir.as_fd(), name).is_ok_and(|s| Stat::from(&s).is_dir()),
            };
            names.push((name.to_vec(), is_dir));
        }
        Some(names)
    }
}

/// Whether manifest path `path` is strictly below the directory `dir` (not the root: every
/// non-empty path is below the root, and callers handle it apart).
pub(crate) fn is_under(path: &[u8], dir: &[u8]) -> bool {
    path.starts_with(dir) && path.get(dir.len()) == Some(&b'/')
}

/// An in-memory tree, for the planner's tests.
#[cfg(test)]
pub(crate) mod memory {
    use std::collections::BTreeMap;

    use super::{is_under, DiskView, Stat};
    use crate::error::Result;
    use crate::format::manifest::{parent, Chunk};
    use crate::sys::Xattrs;

    /// One entry of a [`MemoryView`].
    #[derive(Clone, Default)]
    pub struct Node {
        pub stat: Stat,
        pub xattrs: Xattrs,
        pub link: Option<Vec<u8>>,
        pub chunks: Option<Vec<Chunk>>,
    }

    /// A tree held in a map from manifest path to entry; the root (the empty path) is a
    /// directory from the start. Lookups count, so a test can tell what was read.
    pub struct MemoryView {
        pub entries: BTreeMap<Vec<u8>, Node>,
        pub hashed: std::cell::Cell<usize>,
        /// Every path looked at, in order.
        pub looked: std::cell::RefCell<Vec<Vec<u8>>>,
    }

    impl MemoryView {
        pub fn new() -> MemoryView {
            let mut entries = BTreeMap::new();
            entries.insert(Vec::new(), Node::dir(0o755));
            MemoryView {
                entries,
                hashed: std::cell::Cell::new(0),
                looked: Default::default(),
            }
        }

        /// Puts `node` at `path` (its parent directories are not made).
        pub fn insert(&mut self, path: &str, node: Node) -> &mut MemoryView {
            self.entries.insert(path.as_bytes().to_vec(), node);
            self
        }

        fn reachable(&self, path: &[u8]) -> bool {
            let mut p = parent(path);
            loop {
                if !self.entries.get(p).is_some_and(|n| n.stat.is_dir()) {
                    return false;
                }
                if p.is_empty() {
                    return true;
                }
                p = parent(p);
            }
        }

        fn get(&self, path: &[u8]) -> Option<&Node> {
            if !path.is_empty() && !self.reachable(path) {
                return None;
            }
            self.entries.get(path)
        }
    }

    impl Node {
        pub fn dir(mode: u32) -> Node {
            Node {
                stat: Stat {
                    mode: libc::S_IFDIR | mode,
                    nlink: 2,
                    ..Stat::default()
                },
                ..Node::default()
            }
        }
    }

    impl DiskView for MemoryView {
        fn stat(&self, path: &[u8]) -> Option<Stat> {
            self.looked.borrow_mut().push(path.to_vec());
            self.get(path).map(|n| n.stat)
        }

        fn xattrs(&self, path: &[u8]) -> Xattrs {
            self.get(path).map(|n| n.xattrs.clone()).unwrap_or_default()
        }

        fn readlink(&self, path: &[u8]) -> Option<Vec<u8>> {
            self.get(path).and_then(|n| n.link.clone())
        }

        fn chunks(&self, path: &[u8], _st: &Stat) -> Result<Option<Vec<Chunk>>> {
            self.hashed.set(self.hashed.get() + 1);
            Ok(self.get(path).and_then(|n| n.chunks.clone()))
        }

        fn list(&self, path: &[u8]) -> Option<Vec<(Vec<u8>, bool)>> {
            if !self.get(path)?.stat.is_dir() {
                return None;
            }
            Some(
                self.entries
                    .iter()
                    .filter(|(p, _)| {
                        !p.is_empty() && parent(p) == path && (path.is_empty() || is_under(p, path))
                    })
                    .map(|(p, n)| {
                        (
                            crate::format::manifest::file_name(p).to_vec(),
                            n.stat.is_dir(),
                        )
                    })
                    .collect(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real view sees a tree as the engine writes it: a symlink in the middle of a path
    /// leads nowhere (an image cannot make the update read or write outside the root).
    #[test]
    fn the_root_view_follows_no_symlink_and_lists_what_is_there() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret"), b"x").unwrap();
        std::fs::write(root.join("etc/motd"), b"hello").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        let view = RootView::open(root).unwrap();
        let motd = view.stat(b"etc/motd").unwrap();
        assert_eq!((motd.format(), motd.size), (libc::S_IFREG, 5));
        assert!(view.stat(b"").unwrap().is_dir());
        assert_eq!(view.stat(b"link").unwrap().format(), libc::S_IFLNK);
        assert_eq!(
            view.readlink(b"link").unwrap(),
            outside.as_os_str().as_bytes()
        );
        assert!(view.stat(b"link/secret").is_none());
        assert!(view.list(b"link").is_none());
        let mut names = view.list(b"").unwrap();
        names.sort();
        assert_eq!(
            names,
            vec![(b"etc".to_vec(), true), (b"link".to_vec(), false)]
        );
        let chunks = view.chunks(b"etc/motd", &motd).unwrap().unwrap();
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].id, crate::format::Id::of(b"hello"));
    }
}
