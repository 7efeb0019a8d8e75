//! A node's own record of what it runs, kept in `/var/lib/aurum-node/` on its root.
//!
//! `state.json` names the current, previous and last-known-good revisions and keeps a history;
//! `manifests/` holds their manifests (so diffs and rollbacks need no server); `undo/` holds
//! what the last update replaced or deleted; `staging/` the blobs fetched for an update in
//! progress; `journal.json` exists only while an update runs, so a rerun knows to finish it.
//! This directory is excluded from every capture and every update.

use std::fs;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{corrupt, invalid, IoContext, Result};
use crate::format::manifest::Manifest;
use crate::format::Id;
use crate::source::Target;

/// The node state directory, relative to the node's root.
pub const STATE_DIR: &str = "var/lib/aurum-node";

/// A revision as the node records it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RevRef {
    pub image: Option<String>,
    pub number: Option<u32>,
    pub id: String,
}

impl RevRef {
    pub fn id(&self) -> Result<Id> {
        Id::from_hex(&self.id)
            .ok_or_else(|| corrupt(format!("node state names a bad revision id {}", self.id)))
    }

    /// `compute@3 1f2e3d4c`.
    pub fn name(&self) -> String {
        let short = &self.id[..8.min(self.id.len())];
        match (&self.image, self.number) {
            (Some(i), Some(n)) => format!("{i}@{n} {short}"),
            (Some(i), None) => format!("{i} {short}"),
            _ => short.to_string(),
        }
    }
}

impl From<&Target> for RevRef {
    fn from(t: &Target) -> RevRef {
        RevRef {
            image: t.image.clone(),
            number: t.number,
            id: t.id.hex(),
        }
    }
}

/// One line of the node's history.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub time: i64,
    pub action: String,
    pub from: Option<String>,
    pub to: String,
    pub result: String,
    pub bytes_fetched: u64,
    pub seconds: f64,
}

/// `state.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NodeState {
    pub current: Option<RevRef>,
    pub previous: Option<RevRef>,
    pub last_known_good: Option<RevRef>,
    pub history: Vec<HistoryEntry>,
}

/// `journal.json`: an update in progress.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Journal {
    pub action: String,
    pub from: Option<RevRef>,
    pub to: RevRef,
    pub undo: String,
    /// Every temporary name (tree path, hex) the update may create, written and synced before
    /// it creates the first: a rerun removes exactly these, and never guesses at names.
    #[serde(default)]
    pub temps: Vec<String>,
}

/// The state directory of a node root, locked for one update at a time.
pub struct Node {
    pub root: PathBuf,
    pub dir: PathBuf,
    /// None for a read-only view of a root aurum never updated (no lock file to hold).
    _lock: Option<fs::File>,
}

fn write_json(dir: &Path, name: &str, v: &impl Serialize) -> Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(name);
    let data = serde_json::to_vec_pretty(v).expect("serialisable");
    {
        let mut f = fs::File::create(&tmp).at(&tmp)?;
        std::io::Write::write_all(&mut f, &data).at(&tmp)?;
        f.sync_all().at(&tmp)?;
    }
    fs::rename(&tmp, &path).at(&path)?;
    crate::sys::sync_dir(dir)
}

/// flock()s `lock` (`how` is LOCK_EX or LOCK_SH), saying so when it has to wait.
fn take_lock(lock: &fs::File, lock_path: &Path, how: libc::c_int, root: &Path) -> Result<()> {
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(lock.as_raw_fd(), how | libc::LOCK_NB) } != 0 {
        eprintln!(
            "aurum: another aurum update or rollback is running on {}; waiting for it",
            root.display()
        );
        // SAFETY: as above, blocking this time.
        if unsafe { libc::flock(lock.as_raw_fd(), how) } != 0 {
            return Err(std::io::Error::last_os_error()).at(lock_path);
        }
    }
    Ok(())
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
        Some(b) => serde_json::from_slice(&b).map_err(|e| corrupt(format!("state.json: {e}")))?,
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
        if !root.is_dir() {
            return Err(invalid(format!("{} is not a directory", root.display())));
        }
        let dir = root.join(STATE_DIR);
        for sub in ["manifests", "undo", "staging", "cache"] {
            fs::create_dir_all(dir.join(sub)).at(dir.join(sub))?;
        }
        let lock_path = dir.join("lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&lock_path)
            .at(&lock_path)?;
        take_lock(&lock, &lock_path, libc::LOCK_EX, root)?;
        Ok(Node {
            root: root.to_path_buf(),
            dir,
            _lock: Some(lock),
        })
    }

    /// Opens the state directory under `root` for reading only, for a dry run: it creates
    /// nothing (no directory, no lock file), so it works on a root aurum never updated and on a
    /// read-only one. The lock is taken shared when there is a lock file, so the state read is
    /// not one an update is halfway through.
    pub fn open_read_only(root: &Path) -> Result<Node> {
        if !root.is_dir() {
            return Err(invalid(format!("{} is not a directory", root.display())));
        }
        let dir = root.join(STATE_DIR);
        let lock_path = dir.join("lock");
        let lock = match fs::File::open(&lock_path) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).at(&lock_path),
        };
        if let Some(f) = &lock {
            take_lock(f, &lock_path, libc::LOCK_SH, root)?;
        }
        Ok(Node {
            root: root.to_path_buf(),
            dir,
            _lock: lock,
        })
    }

    pub fn state(&self) -> Result<NodeState> {
        let p = self.dir.join("state.json");
        match fs::read(&p) {
            Ok(b) => {
                serde_json::from_slice(&b).map_err(|e| corrupt(format!("{}: {e}", p.display())))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(NodeState::default()),
            Err(e) => Err(e).at(&p),
        }
    }

    pub fn save_state(&self, s: &NodeState) -> Result<()> {
        write_json(&self.dir, "state.json", s)
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
        write_json(&self.dir, "journal.json", j)
    }

    pub fn end(&self) -> Result<()> {
        let p = self.dir.join("journal.json");
        fs::remove_file(&p).at(&p)?;
        crate::sys::sync_dir(&self.dir)
    }

    /// Keeps a copy of a manifest the node may need without a server.
    pub fn keep_manifest(&self, m: &Manifest) -> Result<Id> {
        let raw = m.encode();
        let id = Id::of(&raw);
        let p = self.dir.join("manifests").join(format!("{}.mf", id.hex()));
        if !p.exists() {
            let tmp = p.with_extension("tmp");
            fs::write(&tmp, zstd::bulk::compress(&raw, 3)?).at(&tmp)?;
            fs::rename(&tmp, &p).at(&p)?;
        }
        Ok(id)
    }

    /// A manifest kept by [`Self::keep_manifest`], if there is one.
    pub fn kept_manifest(&self, id: &Id) -> Result<Option<Manifest>> {
        let p = self.dir.join("manifests").join(format!("{}.mf", id.hex()));
        let packed = match fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).at(&p),
        };
        let mut raw = Vec::new();
        zstd::stream::read::Decoder::new(&packed[..])?.read_to_end(&mut raw)?;
        if Id::of(&raw) != *id {
            return Err(corrupt(format!("{} is damaged", p.display())));
        }
        Manifest::decode(&raw).map(Some)
    }

    /// Deletes kept manifests no state entry names any more.
    pub fn prune_manifests(&self, s: &NodeState) -> Result<()> {
        let keep: Vec<String> = [&s.current, &s.previous, &s.last_known_good]
            .into_iter()
            .flatten()
            .map(|r| format!("{}.mf", r.id))
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
