//! A node's own record of what it runs, kept in `/var/lib/aurum-node/` on its root.
//!
//! `state.json` names the current, previous and last-known-good revisions (each with the
//! override revisions laid over it) and the override images the node follows, and keeps a
//! history; `manifests/` holds their manifests (so diffs and rollbacks need no server): the
//! image's, and for a revision with overrides the composed tree's too; `undo/` holds
//! what the last update replaced or deleted; `staging/` the blobs fetched for an update in
//! progress; `stage/` the manifests and blobs of a staged revision (`updateclient --stage`,
//! see [`crate::apply::stage`]); `journal.json` exists only while an update runs, so a
//! rerun knows to finish it (and a first install that was killed is never taken for a
//! complete one: see [`Journal::fresh`]).
//! This directory is excluded from every capture and every update. The layout of
//! `state.json` is [`crate::format::node`].

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::apply::source::Target;
use crate::error::{corrupt, invalid, IoContext, Result};
use crate::format::manifest::{self, Manifest};
pub use crate::format::node::{short_id, HistoryEntry, NodeState, RevRef, Staged};
use crate::format::Id;

/// The node state directory, relative to the node's root.
pub const STATE_DIR: &str = "var/lib/aurum-node";
/// The node's token for its reports, in the state directory (`aurum install` writes it; 0600).
pub const TOKEN_FILE: &str = "token";

impl From<&Target> for RevRef {
    fn from(t: &Target) -> RevRef {
        RevRef {
            image: t.image.clone(),
            number: t.number,
            id: t.id.hex(),
            overrides: Vec::new(),
            tree: None,
        }
    }
}

pub use crate::format::node::Journal;

/// The stage directory (`updateclient --stage`), in the state directory.
pub const STAGE: &str = "stage";

/// Keeps a copy of manifest `m` in `dir` (compressed, named by its id), durably: node state
/// written after it names it.
pub fn keep_manifest_in(dir: &Path, m: &Manifest) -> Result<Id> {
    let raw = m.encode();
    let id = Id::of(&raw);
    let p = kept_path(dir, &id);
    if !p.exists() {
        fs::create_dir_all(dir).at(dir)?;
        crate::sys::write_atomic(
            &p,
            // Level 1: the node's own copy (an update writes its target's as it ends: level 3
            // took 25 ms of a 0.34 s update of 20,000 files, the last thing before it returned).
            &manifest::compress_file(&raw, 1)?,
            crate::sys::WriteOpts {
                durable: true,
                mode: Some(STATE_FILE_MODE),
                ..Default::default()
            },
        )?;
    }
    Ok(id)
}

/// Where [`keep_manifest_in`] keeps the manifest `id` in `dir`.
fn kept_path(dir: &Path, id: &Id) -> PathBuf {
    dir.join(format!("{}.mf", id.hex()))
}

/// A manifest kept in `dir` by [`keep_manifest_in`], if there is one.
pub fn kept_manifest_in(dir: &Path, id: &Id) -> Result<Option<Manifest>> {
    let p = kept_path(dir, id);
    let packed = match fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).at(&p),
    };
    let raw = manifest::decompress_file(&packed[..], id)
        .map_err(|problem| corrupt(format!("{} is damaged ({problem})", p.display())))?;
    Manifest::decode(&raw).map(Some)
}

/// The state directory of a node root, locked for one update at a time.
pub struct Node {
    pub root: PathBuf,
    pub dir: PathBuf,
    /// Unset for a read-only view of a root aurum never updated (no lock file to hold), and for
    /// a root opened with [`Node::open_deferred`] until [`Node::claim`].
    lock: OnceLock<fs::File>,
}

/// The mode of the files in the state directory: `node-status` reads them as any user.
const STATE_FILE_MODE: u32 = 0o644;

fn write_file(dir: &Path, name: &str, data: &[u8]) -> Result<()> {
    crate::sys::write_atomic(
        &dir.join(name),
        data,
        crate::sys::WriteOpts {
            durable: true,
            mode: Some(STATE_FILE_MODE),
            ..Default::default()
        },
    )
}

/// Locks the node's `lock` file, exclusive for an update, shared for a reader, saying so when
/// it has to wait.
fn take_lock(lock: &fs::File, lock_path: &Path, exclusive: bool, root: &Path) -> Result<()> {
    crate::sys::lock_file(
        lock,
        lock_path,
        exclusive,
        &format!(
            "another aurum update or rollback is running on {}; waiting for it",
            root.display()
        ),
    )
}

/// Reads a node's state without locking or creating anything (for `node-status`, which must
/// work while an update runs). `None` when aurum never updated this root.
pub fn peek(root: &Path) -> Result<Option<(NodeState, Option<Journal>)>> {
    let dir = root.join(STATE_DIR);
    if !dir.is_dir() {
        return Ok(None);
    }
    let read = |name: &str| -> Result<Option<Vec<u8>>> {
        let p = dir.join(name);
        match fs::read(&p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).at(&p),
        }
    };
    let state = match read("state.json")? {
        Some(b) => NodeState::decode(&b, "state.json")?,
        None => NodeState::default(),
    };
    let journal = match read("journal.json")? {
        Some(b) => {
            Some(serde_json::from_slice(&b).map_err(|e| corrupt(format!("journal.json: {e}")))?)
        }
        None => None,
    };
    Ok(Some((state, journal)))
}

impl Node {
    /// Opens (creating) the state directory under `root` and takes its lock.
    pub fn open(root: &Path) -> Result<Node> {
        let node = Node::open_deferred(root)?;
        node.claim()?;
        Ok(node)
    }

    /// Opens the state directory under `root` when there is one (as [`Node::open`]); on a root
    /// aurum never updated it creates nothing yet, so that an update can plan and refuse (see
    /// `updateclient --adopt`) leaving the root exactly as it was. [`Node::claim`] creates and
    /// locks it before anything is written.
    pub fn open_deferred(root: &Path) -> Result<Node> {
        if !root.is_dir() {
            return Err(invalid(format!(
                "{} is not a directory: give --root the directory the node runs from (`/`, or \
                 a mounted node root)",
                root.display()
            )));
        }
        let node = Node {
            root: root.to_path_buf(),
            dir: root.join(STATE_DIR),
            lock: OnceLock::new(),
        };
        if node.dir.is_dir() {
            node.claim()?;
        }
        Ok(node)
    }

    /// Creates the state directory and takes its lock, unless held already. True when this
    /// call took the lock (the state may have changed since it was last read).
    pub fn claim(&self) -> Result<bool> {
        if self.lock.get().is_some() {
            return Ok(false);
        }
        for sub in ["manifests", "undo", "staging", "cache"] {
            fs::create_dir_all(self.dir.join(sub)).at(self.dir.join(sub))?;
        }
        let lock_path = self.dir.join("lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&lock_path)
            .at(&lock_path)?;
        take_lock(&lock, &lock_path, true, &self.root)?;
        // A Node is used from one thread at a time; the lock was unset just above.
        let _ = self.lock.set(lock);
        Ok(true)
    }

    /// Opens the state directory under `root` for reading only, for a dry run: it creates
    /// nothing (no directory, no lock file), so it works on a root aurum never updated and on a
    /// read-only one. The lock is taken shared when there is a lock file, so the state read is
    /// not one an update is halfway through.
    pub fn open_read_only(root: &Path) -> Result<Node> {
        if !root.is_dir() {
            return Err(invalid(format!(
                "{} is not a directory: give --root the directory the node runs from (`/`, or \
                 a mounted node root)",
                root.display()
            )));
        }
        let dir = root.join(STATE_DIR);
        let lock_path = dir.join("lock");
        let lock = match fs::File::open(&lock_path) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).at(&lock_path),
        };
        let held = OnceLock::new();
        if let Some(f) = lock {
            take_lock(&f, &lock_path, false, root)?;
            let _ = held.set(f);
        }
        Ok(Node {
            root: root.to_path_buf(),
            dir,
            lock: held,
        })
    }

    pub fn state(&self) -> Result<NodeState> {
        let p = self.dir.join("state.json");
        match fs::read(&p) {
            Ok(b) => NodeState::decode(&b, &p.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(NodeState::default()),
            Err(e) => Err(e).at(&p),
        }
    }

    pub fn save_state(&self, s: &NodeState) -> Result<()> {
        write_file(&self.dir, "state.json", &s.encode())
    }

    pub fn journal(&self) -> Result<Option<Journal>> {
        let p = self.dir.join("journal.json");
        match fs::read(&p) {
            Ok(b) => Ok(Some(
                serde_json::from_slice(&b).map_err(|e| corrupt(format!("{}: {e}", p.display())))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).at(&p),
        }
    }

    pub fn begin(&self, j: &Journal) -> Result<()> {
        let data = serde_json::to_vec_pretty(j).expect("strings and numbers serialise");
        write_file(&self.dir, "journal.json", &data)
    }

    pub fn end(&self) -> Result<()> {
        let p = self.dir.join("journal.json");
        fs::remove_file(&p).at(&p)?;
        crate::sys::sync_dir(&self.dir)
    }

    /// Keeps a copy of a manifest the node may need without a server.
    pub fn keep_manifest(&self, m: &Manifest) -> Result<Id> {
        keep_manifest_in(&self.dir.join("manifests"), m)
    }

    /// Keeps `m`, whose id is `id`, unless it is kept already: no encoding to learn its id
    /// (a rollback goes to a revision the node keeps; encoding 20,000 entries takes
    /// milliseconds).
    pub(crate) fn keep_manifest_as(&self, id: &Id, m: &Manifest) -> Result<()> {
        if !kept_path(&self.dir.join("manifests"), id).exists() {
            self.keep_manifest(m)?;
        }
        Ok(())
    }

    /// A manifest kept by [`Self::keep_manifest`], if there is one.
    pub fn kept_manifest(&self, id: &Id) -> Result<Option<Manifest>> {
        kept_manifest_in(&self.dir.join("manifests"), id)
    }

    /// The stage (`updateclient --stage`): the staged revision's manifests and blobs.
    pub fn stage_dir(&self) -> PathBuf {
        self.dir.join(STAGE)
    }

    /// Deletes kept manifests no state entry names any more.
    pub fn prune_manifests(&self, s: &NodeState) -> Result<()> {
        // The image's manifest (a base for manifest deltas) and the composed tree's.
        let keep: Vec<String> = [&s.current, &s.previous, &s.last_known_good]
            .into_iter()
            .flatten()
            .flat_map(|r| [Some(&r.id), r.tree.as_ref()])
            .flatten()
            .map(|id| format!("{id}.mf"))
            .collect();
        let dir = self.dir.join("manifests");
        for f in fs::read_dir(&dir).at(&dir)? {
            let f = f.at(&dir)?;
            if !keep.iter().any(|k| f.file_name().to_string_lossy() == *k) {
                let _ = fs::remove_file(f.path());
            }
        }
        Ok(())
    }
}
