//! The undo area of an update: what it replaced or deleted, kept for a local rollback.
//!
//! Each update that changes a live root has one directory under the node's `undo/`. Every
//! entry the update replaces or deletes goes there (by a hard link when it can, so the path
//! never goes missing; a directory is moved), named by a number, and the area's `index` says
//! which tree path each number held: one line `N HEXPATH`. A line is written and synced before
//! its entry is moved, so an entry is never in the area without its line (a line without its
//! entry is harmless: readers find no file there).
//!
//! A rollback by rename takes over the area of the update it undoes (see
//! `apply::update::rollback`): its entries trade places with the tree's, entries it renames
//! out lose their lines (the index is written anew, [`write_index_without`]), and numbers may
//! then have gaps: a new entry is numbered past the largest.
//!
//! An area that is dropped is first renamed with the [`DROPPED`] prefix, so that a half-deleted
//! area is never read as one (its index may be gone while its files are not).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::fcntl::renameat;
use nix::sys::stat::Mode;
use nix::unistd::{unlinkat, UnlinkatFlags};

use crate::error::{IoContext, Result};
use crate::format::manifest::display_path;
pub(super) use crate::format::node::{hex, unhex};
use crate::format::node::{
    parse_undo_index_line as parse_index_line, undo_index_line as index_line,
};
use crate::sys::{self, shown};

/// Prefix an undo area is renamed to when it is dropped.
pub(super) const DROPPED: &str = ".dropped-";

/// The undo area one run writes to.
pub(super) struct UndoArea {
    pub dir: PathBuf,
    index: Option<File>,
    /// The number the next entry gets (past the index's largest).
    next: u64,
    fd: Option<OwnedFd>,
    /// Tree paths moved or linked into the area during this run, and where they went.
    moved: HashMap<Vec<u8>, PathBuf>,
    /// Numbers whose index line is already written (and synced), by tree path.
    announced: HashMap<Vec<u8>, u64>,
}

impl UndoArea {
    /// The area `dir`, not opened yet (a dry run never opens it).
    pub fn at(dir: PathBuf) -> UndoArea {
        UndoArea {
            dir,
            index: None,
            next: 0,
            fd: None,
            moved: HashMap::new(),
            announced: HashMap::new(),
        }
    }

    /// Makes the area (or opens the one an interrupted run made) for writing.
    pub fn open(&mut self) -> Result<()> {
        std::fs::create_dir_all(&self.dir).at(&self.dir)?;
        let index_path = self.dir.join("index");
        // Each entry's index line is written first, so the lines number the next one: past
        // the last number and the line count (a rollback drops the lines of entries it put
        // back, see [`write_index_without`]).
        self.next = std::fs::read_to_string(&index_path)
            .map(|t| {
                let last = t.lines().filter_map(parse_index_line).map(|(n, _)| n + 1);
                last.max().unwrap_or(0).max(t.lines().count() as u64)
            })
            .unwrap_or(0);
        self.index = Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&index_path)
                .at(&index_path)?,
        );
        Ok(())
    }

    /// Whether this run put nothing in the area.
    pub fn unused(&self) -> bool {
        self.next == 0
    }

    /// Where this run put the entry that was at tree path `rel`.
    pub fn moved(&self, rel: &[u8]) -> Option<&PathBuf> {
        self.moved.get(rel)
    }

    /// Makes every index line written so far durable, with the file's metadata.
    pub fn sync(&self) -> Result<()> {
        match &self.index {
            Some(f) => f.sync_all().at(self.dir.join("index")),
            None => Ok(()),
        }
    }

    /// The area's directory, opened once.
    fn fd(&mut self) -> Result<BorrowedFd<'_>> {
        if self.fd.is_none() {
            self.fd = Some(sys::open_root(&self.dir)?);
        }
        Ok(self.fd.as_ref().expect("set above").as_fd())
    }

    /// Writes the index lines of every path in `rels` with one sync.
    pub fn announce(&mut self, rels: &[&[u8]]) -> Result<()> {
        if rels.is_empty() {
            return Ok(());
        }
        let mut lines = String::new();
        for rel in rels {
            let n = self.next;
            self.next += 1;
            lines.push_str(&index_line(n, rel));
            self.announced.insert(rel.to_vec(), n);
        }
        let index = self.index.as_mut().expect("opened with the journal");
        index.write_all(lines.as_bytes()).at(&self.dir)?;
        index.sync_data().at(&self.dir)
    }

    /// The number for `rel`: announced earlier, or a new one whose index line is written
    /// and synced now.
    fn number(&mut self, rel: &[u8]) -> Result<u64> {
        if let Some(n) = self.announced.remove(rel) {
            return Ok(n);
        }
        self.announce(&[rel])?;
        Ok(self.announced.remove(rel).expect("just announced"))
    }

    /// Moves `name` in `dir` (tree path `rel`, below `root`) into the area. On another
    /// filesystem than the area (a separate /boot) the entry cannot be kept cheaply: it is
    /// removed, and `warn` told.
    pub fn stash(
        &mut self,
        dir: BorrowedFd,
        name: &[u8],
        rel: &[u8],
        root: &Path,
        warn: &dyn Fn(String),
    ) -> Result<()> {
        let to = self.number(rel)?.to_string();
        match renameat(dir, name, self.fd()?, to.as_str()) {
            Ok(()) => {}
            Err(nix::errno::Errno::EXDEV) => {
                warn(format!(
                    "{}: on another filesystem than the undo area; removed without a copy for rollback",
                    display_path(rel)
                ));
                return remove_tree(dir, name, &shown(root, rel));
            }
            Err(e) => return Err(e).at(shown(root, rel)),
        }
        self.moved.insert(rel.to_vec(), self.dir.join(to));
        Ok(())
    }

    /// Keeps the non-directory `name` in `dir` in the area ahead of renaming a new one over
    /// it: by a hard link, so the path never goes missing (a running program can always open
    /// it); moved there instead when it cannot be linked.
    pub fn keep_file(
        &mut self,
        dir: BorrowedFd,
        name: &[u8],
        rel: &[u8],
        root: &Path,
        warn: &dyn Fn(String),
    ) -> Result<()> {
        let n = self.number(rel)?;
        let to = n.to_string();
        let linked = nix::unistd::linkat(
            dir,
            name,
            self.fd()?,
            to.as_str(),
            nix::fcntl::AtFlags::empty(),
        );
        match linked {
            Ok(()) => {
                self.moved.insert(rel.to_vec(), self.dir.join(to));
                Ok(())
            }
            // Another filesystem, or links refused: move it there under the same number.
            Err(_) => {
                self.announced.insert(rel.to_vec(), n);
                self.stash(dir, name, rel, root, warn)
            }
        }
    }
}

/// The entries of the area `dir` by its index: each file's path there and the tree path it
/// held. Empty when the area has no index.
pub(super) fn entries(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(index) = std::fs::read_to_string(dir.join("index")) else {
        return Vec::new();
    };
    index
        .lines()
        .filter_map(parse_index_line)
        .map(|(n, path)| (dir.join(n.to_string()), path))
        .collect()
}

/// Writes the index of the area `dir` without the lines of the entries named in `gone`, as
/// `index.new`, durably, for [`replace_index`] to put in place once those entries have left
/// the area: written ahead, a full disk stops a rollback before it changes anything (and an
/// entry is never in the area without its line).
pub(super) fn write_index_without(dir: &Path, gone: &HashSet<&[u8]>) -> Result<()> {
    let path = dir.join("index");
    let index = std::fs::read_to_string(&path).at(&path)?;
    let kept: String = index
        .lines()
        .filter(|l| {
            parse_index_line(l).is_none_or(|(n, _)| !gone.contains(n.to_string().as_bytes()))
        })
        .flat_map(|l| [l, "\n"])
        .collect();
    let opts = sys::WriteOpts {
        durable: true,
        mode: Some(0o644),
        ..Default::default()
    };
    sys::write_atomic(&dir.join(NEW_INDEX), kept.as_bytes(), opts)
}

/// Puts the index [`write_index_without`] wrote in place of the area `dir`'s (the caller
/// syncs the area's directory).
pub(super) fn replace_index(dir: &Path) -> Result<()> {
    let path = dir.join("index");
    std::fs::rename(dir.join(NEW_INDEX), &path).at(&path)
}

/// The name [`write_index_without`] writes the next index under.
const NEW_INDEX: &str = "index.new";

/// The areas under `undo` (the node's `undo/` directory) that are not being dropped.
pub(super) fn areas(undo: &Path) -> Result<Vec<PathBuf>> {
    let it = match std::fs::read_dir(undo) {
        Ok(it) => it,
        // A dry run on a root aurum never updated: no state directory yet.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).at(undo),
    };
    let mut v = Vec::new();
    for d in it {
        let d = d.at(undo)?;
        if !d.file_name().as_bytes().starts_with(DROPPED.as_bytes()) {
            v.push(d.path());
        }
    }
    Ok(v)
}

/// Deletes areas under `undo`: `own` when `drops_own`, every other one when `drops_others`,
/// and whatever a crash left half dropped.
pub(super) fn drop_areas(
    undo: &Path,
    own: &Path,
    drops_own: bool,
    drops_others: bool,
) -> Result<()> {
    for d in std::fs::read_dir(undo).at(undo)? {
        let d = d.at(undo)?;
        let name = d.file_name();
        let path = d.path();
        let dropped = name.as_bytes().starts_with(DROPPED.as_bytes());
        let goes = if path == own {
            drops_own
        } else {
            dropped || drops_others
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
    // Also when nothing was dropped: the run's own area may be new.
    sys::sync_dir(undo)
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
