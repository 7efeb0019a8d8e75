//! A repository: the store, the catalog, the refs mirror and the lock, and the operations that
//! need more than one of them (revision references, committing a revision).
//!
//! Locking: every command holds `repo/lock` shared while it works; `gc` holds it exclusively.
//! That is what keeps gc from deleting a blob that a capture running at the same moment has just
//! decided it does not need to store again.
//!
//! Opening a repository also brings one written by an older aurum to today's layout (see
//! [`upgrade_layout`] and [`upgrade_modes`]), once, so that no other code needs to know the
//! older layouts.

pub mod delta;
pub mod diff;
pub mod embedded;
pub mod gc;
pub mod netroot;
pub mod publish;
pub mod seen;
pub mod signatures;
pub mod verify;

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::Read;

use crate::format::manifest::Chunk;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::catalog::{Catalog, Revision, RevisionStats};
use crate::error::{invalid, Error, IoContext, Result};
use crate::format::manifest::{
    Entries, EntryIter, EntrySource, FileSource, Manifest, ManifestWriter,
};

/// The zstd level of a repository's manifest files.
const MANIFEST_LEVEL: i32 = 9;

/// A revision's entries as [`Repository::manifest_entries`] reads them.
pub type ManifestEntries = Entries<FileSource<File>>;
use crate::format::pack::{decode_index, Codec};
use crate::format::{Id, FORMAT_VERSION};
use crate::store::{self, FinishedPack, PackReader, PackWriter};

mod names;
mod nodes;
mod revspec;
pub use names::ImageRemoval;
pub use revspec::{step_back, RevSpec};

/// Catalog meta key set once the repository's file modes were brought to what
/// [`publish::check_modes`] wants (repositories made before it had everything 0600).
const MODES_META: &str = "file-modes";
/// Catalog meta key set once the published files lie in `public/` (format 1 had them at the
/// repository's top): the end of [`upgrade_layout`], which `FORMAT` saying 2 only begins.
const LAYOUT_META: &str = "public-dir";
/// Catalog meta key set once the published files include those `aurum pull` reads
/// (`refs/IMAGES`, `refs/IMAGE/log`, `deltas/list`; version 2 of [`crate::format::refs`]):
/// a repository made before gets them at its first open by this aurum, as a recovery.
const PULL_FILES_META: &str = "pull-files";
/// Catalog meta key set once network-root images are named by their content
/// ([`netroot::upgrade`]); a repository made before has them renamed at its first open.
const NETROOT_NAMES_META: &str = "netroot-content-names";
/// The repository format that had the published directories at the top; opened by moving
/// them into `public/`.
const TOP_LEVEL_FORMAT: u32 = 1;

/// How a command holds the repository lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lock {
    Shared,
    Exclusive,
}

/// An open repository.
pub struct Repository {
    pub root: PathBuf,
    pub catalog: Catalog,
    pub packs: PackReader,
    _lock: File,
}

/// Checks an image or tag name: letters, digits, `.`, `_`, `-`, not starting with a dot or dash.
pub fn check_name(what: &str, name: &str) -> Result<()> {
    if what == "image" && crate::format::refs::image_name_ok(name) && name.contains('/') {
        return Err(invalid(format!(
            "`{name}` is an image pulled from remote `{}` and is read-only here: copy it with `aurum cpimage {name} NEW-NAME` and work on the copy",
            name.split('/').next().unwrap_or_default()
        )));
    }
    crate::name::check(what, name)?;
    // An image named like a revision id would hide the revisions whose ids start that way.
    let hexlike = name.len() >= 8 && name.bytes().all(|b| b.is_ascii_hexdigit());
    if what == "image" && hexlike {
        return Err(invalid(format!(
            "`{name}` cannot be an image name: it reads as a revision id; add a letter that is not a hex digit"
        )));
    }
    Ok(())
}

/// Whether `name` may name an image to read: a name [`check_name`] takes, or `REMOTE/NAME`
/// for an image pulled from a remote (read-only, so `check_name` refuses it for writing).
pub fn is_image_name(name: &str) -> bool {
    crate::format::refs::image_name_ok(name)
        && name
            .split('/')
            .all(|part| check_name("image", part).is_ok())
}

/// Creates a new, empty repository at `root`.
pub fn init(root: &Path) -> Result<()> {
    // FORMAT is written last, so a directory without it is at most a half-made repository
    // that init may finish.
    if root.join("FORMAT").exists() {
        return Err(invalid(format!(
            "{} is already an aurum repository",
            root.display()
        )));
    }
    // Only a new or empty directory (or one a killed init left half made): a repository's
    // files written among a golden client's would be a mess to untangle.
    if let Ok(dir) = fs::read_dir(root) {
        let ours = |n: &str| {
            matches!(n, store::PUBLISHED | "tmp" | "lock" | "lost+found")
                || n.starts_with("aurum.db")
        };
        let foreign: Vec<String> = dir
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !ours(n))
            .take(3)
            .collect();
        if !foreign.is_empty() {
            return Err(invalid(format!(
                "{} is not empty (it holds {}...): give a new or empty directory for the repository",
                root.display(),
                foreign.join(", ")
            )));
        }
    }
    fs::create_dir_all(root).at(root)?;
    let public = store::published(root);
    for d in ["packs", "manifests", "refs"] {
        store::create_public_dir(root, &public.join(d))?;
    }
    fs::create_dir_all(store::tmp_dir(root)).at(store::tmp_dir(root))?;
    // The catalog (node records included) and the lock are private: created 0600 before
    // SQLite opens the catalog, since SQLite gives its WAL the database file's mode.
    for f in ["aurum.db", "lock"] {
        let p = root.join(f);
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(publish::PRIVATE_FILE)
            .open(&p)
            .at(&p)?;
    }
    publish::layout(root, true)?;
    publish::check_modes(root, true)?;
    let catalog = Catalog::open(&root.join("aurum.db"))?;
    catalog.set_meta(MODES_META, "1")?;
    catalog.set_meta(LAYOUT_META, "1")?;
    let (images, list) = publish::images(&catalog)?;
    store::write_atomic(root, &public.join(images), &list)?;
    catalog.set_meta(PULL_FILES_META, "1")?;
    catalog.set_meta(NETROOT_NAMES_META, "1")?;
    catalog.set_meta("format", &FORMAT_VERSION.to_string())?;
    catalog.set_meta("created", &crate::catalog::now().to_string())?;
    store::write_atomic(
        root,
        &root.join("FORMAT"),
        publish::format_text().as_bytes(),
    )?;
    catalog.event("init", None, &format!("created {}", root.display()))?;
    Ok(())
}

fn flock(file: &File, lock: Lock, path: &Path) -> Result<()> {
    let (exclusive, waiting) = match lock {
        Lock::Shared => (
            false,
            "`aurum gc` or `aurum verify --repair` holds the repository; waiting for it",
        ),
        Lock::Exclusive => (
            true,
            "other aurum commands are using the repository; waiting for them to finish",
        ),
    };
    crate::sys::lock_file(file, path, exclusive, waiting)
}

/// Prefix of the markers in `tmp/` that say a command is between changing the catalog and
/// rewriting the published files derived from it ([`Publishing`]).
const PUBLISHING_PREFIX: &str = "publishing-";

/// Held by a command from before it changes what the published files derive from (a revision,
/// a tag, an image name, a template) until it has rewritten them: a marker file in `tmp/`,
/// locked while the command lives. A command killed in between leaves the marker unlocked,
/// and the next command to open the repository rebuilds the published files from the catalog
/// ([`lock_and_recover`]), so a revision committed just before a kill is never left invisible
/// to nodes that read `refs/` over HTTP.
pub struct Publishing {
    path: PathBuf,
    _file: File,
}

impl Publishing {
    fn begin(root: &Path) -> Result<Publishing> {
        let tmp = store::tmp_dir(root);
        fs::create_dir_all(&tmp).at(&tmp)?;
        // Locked under a name the orphan scan ignores, then renamed: a live command's marker
        // is never seen unlocked, and the scan's own probe never meets a marker being made.
        let (file, made) = tempfile::Builder::new()
            .prefix(".publishing-new-")
            .tempfile_in(&tmp)
            .at(&tmp)?
            .keep()
            .map_err(|e| e.error)
            .at(&tmp)?;
        file.lock().at(&made)?;
        let unique = made
            .file_name()
            .map(|n| n.to_string_lossy().replace(".publishing-new-", ""))
            .unwrap_or_default();
        let path = tmp.join(format!("{PUBLISHING_PREFIX}{unique}"));
        fs::rename(&made, &path).at(&path)?;
        // Durable before the catalog changes, so a power cut in between is also repaired.
        crate::sys::sync_dir(&tmp)?;
        Ok(Publishing { path, _file: file })
    }
}

impl Publishing {
    /// The published files are written: removes the marker. A command that fails before
    /// this leaves it (unlocked once the command exits) for the next one to finish.
    pub fn done(self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Markers in `tmp/` that no living command holds locked: commands killed (or failed)
/// between changing the catalog and publishing ([`Publishing`]).
fn orphan_markers(root: &Path) -> Vec<PathBuf> {
    let Ok(dir) = fs::read_dir(store::tmp_dir(root)) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(PUBLISHING_PREFIX)
        })
        .map(|e| e.path())
        .filter(|p| File::open(p).is_ok_and(|f| f.try_lock().is_ok()))
        .collect()
}

/// Takes the repository lock as asked, first finishing what a command killed between a
/// catalog change and its publishing left ([`Publishing`]): when orphan markers are there
/// and the lock can be had exclusively without waiting (nobody else is at work), the
/// published files are rebuilt from the catalog under it, and the lock is then given back
/// down to `lock` before the command does anything. When others are at work, the next
/// command to find the repository free does it. A failed rebuild (a read-only copy, a
/// damaged `public/`) is a warning; `verify` names what is stale.
///
/// Shared to exclusive is never converted on a held lock: Linux drops the shared lock first,
/// so a failed conversion would leave the command working with no lock at all.
fn lock_and_recover(root: &Path, file: &File, lock: Lock) -> Result<Catalog> {
    let lock_path = root.join("lock");
    // refs/IMAGES is written with the other pull files and always exists once they are (an
    // empty repository's is empty): its presence spares every command a catalog look-up.
    let behind = || {
        !store::published(root).join("refs/IMAGES").exists()
            && Catalog::open(&root.join("aurum.db"))
                .and_then(|c| c.get_meta(PULL_FILES_META))
                .is_ok_and(|m| m.is_none())
    };
    let recover = (!orphan_markers(root).is_empty() || behind()) && file.try_lock().is_ok();
    if !recover {
        flock(file, lock, &lock_path)?;
        return Catalog::open(&root.join("aurum.db"));
    }
    let catalog = Catalog::open(&root.join("aurum.db"))?;
    let left = orphan_markers(root);
    match publish::rebuild(root, &catalog) {
        Ok(rebuilt) => {
            for p in &left {
                let _ = fs::remove_file(p);
            }
            if let Err(e) = catalog.set_meta(PULL_FILES_META, "1") {
                log::debug!("cannot record that the pull files are published: {e}");
            }
            log::info!(
                "{}: a command stopped before publishing what it recorded; rebuilt {} published files",
                root.display(),
                rebuilt.len()
            );
        }
        Err(e) => log::warn!(
            "{}: a command stopped before publishing what it recorded, and rebuilding the published files failed: {e}; `aurum verify --repair` rebuilds them",
            root.display()
        ),
    }
    if lock == Lock::Shared {
        // May wait for a gc that slips in meanwhile; nothing has been done yet.
        flock(file, Lock::Shared, &lock_path)?;
    }
    Ok(catalog)
}

/// Brings an older repository's file modes to today's, once (the first time this aurum opens
/// it). Best effort: a read-only copy (an NFS export) is left as it is, and `verify` still
/// reports what is wrong there.
fn upgrade_modes(root: &Path, catalog: &Catalog) {
    if catalog.get_meta(MODES_META).ok().flatten().is_some() {
        return;
    }
    match publish::check_modes(root, true) {
        Ok(fixed) => {
            if !fixed.is_empty() {
                log::info!(
                    "{}: made {} published files world-readable (and the catalog private)",
                    root.display(),
                    fixed.len()
                );
            }
            if let Err(e) = catalog.set_meta(MODES_META, "1") {
                log::debug!("cannot record the file modes upgrade: {e}");
            }
        }
        Err(e) => log::debug!("file modes of {} left as they are: {e}", root.display()),
    }
}

/// Moves the published directories of a format-1 repository (at its top) into `public/`,
/// or finishes a move that was interrupted. Runs under the exclusive lock (taken here if
/// `held` is shared, and given back after), so that no command of this aurum or an older
/// one works on the repository meanwhile.
///
/// Crash safety: `FORMAT` is rewritten first, so that an older aurum refuses the repository
/// from then on instead of writing at the top; then every move is a rename ([`publish::layout`]),
/// the derived files are rebuilt and the modes set; the catalog marker comes last. A command
/// killed anywhere in between leaves a repository whose next open does the rest.
fn upgrade_layout(root: &Path, catalog: &Catalog, lock: &File, held: Lock) -> Result<()> {
    let lock_path = root.join("lock");
    if held == Lock::Shared {
        flock(lock, Lock::Exclusive, &lock_path)?;
    }
    // Another command may have finished the upgrade while this one waited for the lock.
    if catalog.get_meta(LAYOUT_META)?.is_none() {
        store::write_atomic(
            root,
            &root.join("FORMAT"),
            publish::format_text().as_bytes(),
        )?;
        let moved = publish::layout(root, true)?;
        publish::rebuild(root, catalog)?;
        publish::check_modes(root, true)?;
        catalog.set_meta("format", &FORMAT_VERSION.to_string())?;
        catalog.set_meta(LAYOUT_META, "1")?;
        catalog.event(
            "upgrade",
            None,
            &format!(
                "moved the published files into {}/ ({} entries)",
                store::PUBLISHED,
                moved.len()
            ),
        )?;
        log::warn!(
            target: crate::progress::NOTICE,
            "{}: moved the published files (packs, manifests, refs, templates) into {}/; a web server must now publish {} (URLs are unchanged)",
            root.display(),
            store::PUBLISHED,
            store::published(root).display()
        );
    }
    if held == Lock::Shared {
        flock(lock, Lock::Shared, &lock_path)?;
    }
    Ok(())
}

/// Renames the network-root images of a repository made before they were named by content
/// ([`netroot::upgrade`]), once, under the exclusive lock (taken here if `held` is shared,
/// and given back after) so that no export or gc runs meanwhile. A read-only repository (an
/// NFS export) is left as it is: its old names still serve nodes of the aurum that made them.
fn upgrade_netroot(root: &Path, catalog: &Catalog, lock: &File, held: Lock) -> Result<()> {
    let lock_path = root.join("lock");
    // Read-only (where the upgrade cannot be recorded either): no exclusive lock at every
    // open, which would make readers wait on each other and on a long shared holder.
    let writable = |p: &Path| nix::unistd::access(p, nix::unistd::AccessFlags::W_OK).is_ok();
    if !writable(root) || !writable(&root.join("aurum.db")) {
        return Ok(());
    }
    if held == Lock::Shared {
        flock(lock, Lock::Exclusive, &lock_path)?;
    }
    if catalog.get_meta(NETROOT_NAMES_META)?.is_none() {
        match netroot::upgrade(root) {
            Ok(renamed) => {
                if renamed > 0 {
                    catalog.event(
                        "upgrade",
                        None,
                        &format!("named {renamed} network-root images by their BLAKE3"),
                    )?;
                    log::warn!(
                        target: crate::progress::NOTICE,
                        "{}: network-root images are now named by their BLAKE3 (public/netroot/HASH.erofs); boot kits must be made again with this aurum (`aurum bootkit`) to find them",
                        root.display()
                    );
                }
                if let Err(e) = catalog.set_meta(NETROOT_NAMES_META, "1") {
                    log::debug!("cannot record the network-root names upgrade: {e}");
                }
            }
            Err(e) => log::debug!(
                "network-root images of {} left as they are: {e}",
                root.display()
            ),
        }
    }
    if held == Lock::Shared {
        flock(lock, Lock::Shared, &lock_path)?;
    }
    Ok(())
}

/// Checks a `FORMAT` file's text (of a repository at `place`, a path or a URL): refuses a
/// repository made by a newer aurum, saying to upgrade, and anything that is not a
/// repository this aurum reads. Returns the format.
pub fn check_format(place: &str, text: &[u8]) -> Result<u32> {
    let Some(version) = crate::format::refs::format_version(text) else {
        return Err(invalid(format!(
            "{place}: its FORMAT file is not an aurum repository's"
        )));
    };
    if version > FORMAT_VERSION {
        return Err(invalid(format!(
            "{place} was made by a newer aurum (format {version}, this aurum reads up to {FORMAT_VERSION}): upgrade aurum"
        )));
    }
    if version != FORMAT_VERSION && version != TOP_LEVEL_FORMAT {
        return Err(invalid(format!(
            "{place} holds repository format {version}; this aurum reads formats {TOP_LEVEL_FORMAT} and {FORMAT_VERSION}"
        )));
    }
    Ok(version)
}

impl Repository {
    /// Opens the repository at `root`, holding its lock as asked.
    pub fn open(root: &Path, lock: Lock) -> Result<Repository> {
        let format = root.join("FORMAT");
        let text = match fs::read_to_string(&format) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound(format!(
                    "no aurum repository at {}: create one with `aurum init --repo {}`, or point --repo / AURUM_REPO at an existing one",
                    root.display(),
                    root.display()
                )))
            }
            Err(e) => return Err(e).at(&format),
        };
        if crate::format::refs::format_version(text.as_bytes()).is_none() {
            return Err(Error::Corrupt(format!(
                "{} is damaged: it reads `{}`, not a repository format line; restore it from a \
                 replica or backup (this aurum writes `{} {FORMAT_VERSION}`), then run `aurum verify`",
                format.display(),
                text.trim().chars().take(40).collect::<String>(),
                crate::format::refs::FORMAT_PREFIX
            )));
        }
        check_format(&root.display().to_string(), text.as_bytes())?;
        let lock_path = root.join("lock");
        let lock_file = fs::OpenOptions::new()
            .read(true)
            .create(true)
            .append(true)
            .open(&lock_path)
            .or_else(|_| File::open(&lock_path))
            .at(&lock_path)?;
        let catalog = lock_and_recover(root, &lock_file, lock)?;
        if catalog.get_meta(LAYOUT_META)?.is_none() {
            upgrade_layout(root, &catalog, &lock_file, lock).map_err(|e| {
                e.with_note(&format!(
                    " (while moving the published files of {} into {}/, as this aurum keeps them; run any aurum command once where the repository is writable, as its owner)",
                    root.display(),
                    store::PUBLISHED
                ))
            })?;
        }
        upgrade_modes(root, &catalog);
        if catalog.get_meta(NETROOT_NAMES_META)?.is_none() {
            upgrade_netroot(root, &catalog, &lock_file, lock)?;
        }
        Ok(Repository {
            root: root.to_path_buf(),
            catalog,
            packs: PackReader::new(root),
            _lock: lock_file,
        })
    }

    /// Resolves `IMAGE`, `IMAGE@N`, `IMAGE:TAG`, `IMAGE~N` or a hex prefix of at least 8 digits.
    pub fn resolve(&self, spec: &str) -> Result<Revision> {
        let not_found = |what: String| Error::NotFound(what);
        let parsed: RevSpec = spec.parse()?;
        match &parsed {
            RevSpec::Number { image, number } => {
                self.require_image(image)?;
                return self.catalog.revision(image, *number)?.ok_or_else(|| {
                    not_found(format!(
                        "image `{image}` has no revision {number}; `aurum log {image}` lists its revisions"
                    ))
                });
            }
            RevSpec::Tag { image, tag } => {
                self.require_image(image)?;
                let number = self
                    .catalog
                    .tags(image)?
                    .into_iter()
                    .find(|(t, _)| t == tag)
                    .map(|(_, n)| n)
                    .ok_or_else(|| {
                        not_found(format!(
                            "image `{image}` has no tag `{tag}`; `aurum log {image}` shows its tags"
                        ))
                    })?;
                return Ok(self
                    .catalog
                    .revision(image, number)?
                    .expect("tags reference existing revisions"));
            }
            RevSpec::Back { image, back } => {
                self.require_image(image)?;
                let numbers: Vec<u32> = self
                    .catalog
                    .revisions(image)?
                    .iter()
                    .map(|r| r.number)
                    .collect();
                let number = revspec::step_back(image, *back, &numbers)?;
                return Ok(self
                    .catalog
                    .revision(image, number)?
                    .expect("listed just above"));
            }
            RevSpec::Bare(_) => {}
        }
        if self.catalog.image_exists(spec)? {
            return self
                .catalog
                .newest(spec)?
                .ok_or_else(|| not_found(format!("image `{spec}` has no revisions yet")));
        }
        if let Some(hex) = parsed.id_prefix() {
            let found = self.catalog.revisions_by_prefix(&hex)?;
            let ids: HashSet<Id> = found.iter().map(|r| r.id).collect();
            if ids.len() > 1 {
                return Err(invalid(format!(
                    "revision prefix `{spec}` is ambiguous ({} revisions match); give more digits",
                    ids.len()
                )));
            }
            if let Some(rev) = found.into_iter().next() {
                return Ok(rev);
            }
        }
        Err(not_found(format!(
            "no image or revision `{spec}`; `aurum lsimage` lists images (references: IMAGE, IMAGE@N, IMAGE:TAG, IMAGE~N, or 8+ hex digits of a revision id)"
        )))
    }

    /// An error unless the image exists.
    pub fn require_image(&self, image: &str) -> Result<()> {
        if self.catalog.image_exists(image)? {
            Ok(())
        } else {
            Err(Error::NotFound(format!(
                "no image `{image}`; `aurum lsimage` lists images"
            )))
        }
    }

    /// Reads, checks and decodes a revision's manifest.
    pub fn load_manifest(&self, id: &Id) -> Result<Manifest> {
        Manifest::decode(&self.load_manifest_raw(id)?)
    }

    /// A manifest's encoded bytes, checked against its id.
    pub fn load_manifest_raw(&self, id: &Id) -> Result<Vec<u8>> {
        manifest_raw_at(&self.root, id)
    }

    /// The length of a manifest's encoded bytes when at most `cap` (see
    /// [`crate::format::manifest::raw_len_within`]).
    pub fn manifest_len_within(&self, id: &Id, cap: u64) -> Result<Option<u64>> {
        let path = store::manifest_path(&self.root, id);
        let file = File::open(&path).at(&path)?;
        crate::format::manifest::raw_len_within(file, cap).map_err(|e| {
            Error::Corrupt(format!(
                "manifest {} is damaged ({e}); run `aurum verify`",
                id.short()
            ))
        })
    }

    /// A revision's entries, read and checked one at a time in path order: what a command
    /// that looks at each entry once uses, in memory that does not grow with the tree. The
    /// file's hash is checked after the last entry (see [`crate::format::manifest::Entries`]).
    pub fn manifest_entries(&self, id: &Id) -> Result<ManifestEntries> {
        let path = store::manifest_path(&self.root, id);
        let file = File::open(&path).at(&path)?;
        Entries::of_file(file, id)
    }

    /// A writer for a new manifest, entries pushed in path order; [`Self::store_manifest_from`]
    /// stores it.
    pub fn manifest_writer(&self) -> Result<ManifestWriter> {
        let tmp = store::tmp_dir(&self.root);
        let spill = tempfile::tempfile_in(&tmp).at(&tmp)?;
        ManifestWriter::new(spill, MANIFEST_LEVEL)
    }

    /// [`Self::manifest_writer`] expecting the entries of revision `base` (the previous
    /// capture of the same tree): nothing is compressed while they repeat it, and an unchanged
    /// tree writes nothing at all (see [`ManifestWriter::with_base`]).
    pub fn manifest_writer_like(&self, base: Option<&Id>) -> Result<ManifestWriter> {
        let Some(base) = base else {
            return self.manifest_writer();
        };
        let path = store::manifest_path(&self.root, base);
        let Ok(file) = File::open(&path) else {
            return self.manifest_writer();
        };
        let tmp = store::tmp_dir(&self.root);
        let spill = tempfile::tempfile_in(&tmp).at(&tmp)?;
        ManifestWriter::with_base(spill, MANIFEST_LEVEL, file, base)
    }

    /// Stores what `w` was given durably, as [`Self::store_manifest`] does; returns its id.
    /// Entries that repeat the writer's base exactly are that manifest, already stored.
    pub fn store_manifest_from(&self, mut w: ManifestWriter) -> Result<Id> {
        if let Some(id) = w.same_as_base() {
            return Ok(id);
        }
        store::place_with(
            &self.root,
            |out| w.finish(out),
            |id| store::manifest_path(&self.root, id),
        )
    }
}

impl Repository {
    /// Stores a manifest durably; returns its id (the revision id).
    pub fn store_manifest(&self, m: &Manifest) -> Result<Id> {
        let raw = m.encode();
        let id = Id::of(&raw);
        let path = store::manifest_path(&self.root, &id);
        if !path.exists() {
            let packed = crate::format::manifest::compress_file(&raw, MANIFEST_LEVEL)?;
            store::write_atomic(&self.root, &path, &packed)?;
        }
        Ok(id)
    }

    /// A blob's content, verified.
    pub fn read_blob(&self, id: &Id) -> Result<Vec<u8>> {
        let (pack, entry) = self.catalog.blob(id)?.ok_or_else(|| {
            Error::Corrupt(format!(
                "blob {} is missing from the repository; run `aurum verify`",
                id.short()
            ))
        })?;
        self.packs.read(&pack, &entry)
    }

    /// Records a new revision of `image`, child of the image's newest, and updates its refs.
    pub fn commit_revision(
        &mut self,
        image: &str,
        id: &Id,
        message: &str,
        source: &str,
        stats: &RevisionStats,
    ) -> Result<Revision> {
        check_name("image", image)?;
        let parent = self.catalog.newest(image)?.map(|r| r.id);
        self.commit_child(image, parent.as_ref(), id, message, source, stats)
    }

    /// Records a new revision of `image` with the given parent (an edit of an older revision,
    /// or of another image's, has a parent that is not the image's newest).
    pub fn commit_child(
        &mut self,
        image: &str,
        parent: Option<&Id>,
        id: &Id,
        message: &str,
        source: &str,
        stats: &RevisionStats,
    ) -> Result<Revision> {
        check_name("image", image)?;
        if self.catalog.remote(image)?.is_some() {
            return Err(invalid(format!(
                "`{image}` is the name of a remote (its images are `{image}/IMAGE`): give the image another name"
            )));
        }
        let publishing = self.publishing()?;
        let number = match self
            .catalog
            .add_revision(image, id, parent, message, source, stats)
        {
            Ok(n) => n,
            Err(e) => {
                // One transaction, rolled back: nothing to publish.
                publishing.done();
                return Err(e);
            }
        };
        // Packs first: a static client that sees the new head must find its packs listed.
        self.write_pack_list()?;
        self.write_refs(image)?;
        publishing.done();
        Ok(self
            .catalog
            .revision(image, number)?
            .expect("just inserted"))
    }

    /// Marks the repository as being between a catalog change and the rewrite of the published
    /// files; hold the result until they are written ([`Publishing`]).
    pub fn publishing(&self) -> Result<Publishing> {
        Publishing::begin(&self.root)
    }

    /// Rewrites `refs/IMAGE/` from the catalog (removing it when the image is gone).
    pub fn write_refs(&self, image: &str) -> Result<()> {
        let public = store::published(&self.root);
        let dir = public.join("refs").join(image);
        let files = publish::refs(&self.catalog, image)?;
        let (images, list) = publish::images(&self.catalog)?;
        if files.is_empty() {
            if dir.exists() {
                fs::remove_dir_all(&dir).at(&dir)?;
            }
            self.remove_signatures(image)?;
            return store::write_atomic(&self.root, &public.join(images), &list);
        }
        publish::write(&self.root, &files)?;
        store::write_atomic(&self.root, &public.join(images), &list)?;
        let tag_dir = dir.join("tags");
        store::create_public_dir(&self.root, &tag_dir)?;
        for old in fs::read_dir(&tag_dir).at(&tag_dir)? {
            let old = old.at(&tag_dir)?.path();
            let rel = old.strip_prefix(&public).expect("under public/");
            if !files.contains_key(rel) {
                fs::remove_file(&old).at(&old)?;
            }
        }
        Ok(())
    }

    /// Rewrites `packs/list`, the pack ids a static client may fetch indexes of.
    pub fn write_pack_list(&self) -> Result<()> {
        write_pack_list(&self.root, &self.catalog)
    }

    /// Records packs that are on disk with their index but missing from the catalog (left by a
    /// capture killed between writing a pack and recording it). Returns how many were adopted.
    pub fn adopt_orphan_packs(&mut self) -> Result<usize> {
        let known: HashSet<Id> = self.catalog.packs()?.into_iter().map(|p| p.0).collect();
        let packs_dir = store::published(&self.root).join("packs");
        let mut adopted = 0;
        for sub in fs::read_dir(&packs_dir).at(&packs_dir)? {
            let sub = sub.at(&packs_dir)?.path();
            if !sub.is_dir() {
                continue;
            }
            for f in fs::read_dir(&sub).at(&sub)? {
                let path = f.at(&sub)?.path();
                let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                    continue;
                };
                // A pack without its index: the capture died between the two renames.
                if let Some(hex) = name.strip_suffix(".pack") {
                    let Some(id) = Id::from_hex(hex) else {
                        continue;
                    };
                    if known.contains(&id) || store::pack_path(&self.root, &id, "idx").exists() {
                        continue;
                    }
                    match store::rebuild_index(&self.root, &id) {
                        Ok(done) => {
                            self.catalog.add_pack(&done)?;
                            adopted += 1;
                        }
                        Err(e) => log::warn!("ignoring pack {}: {e}", path.display()),
                    }
                    continue;
                }
                let Some(hex) = name.strip_suffix(".idx") else {
                    continue;
                };
                let Some(id) = Id::from_hex(hex) else {
                    continue;
                };
                if known.contains(&id) {
                    continue;
                }
                let pack = store::pack_path(&self.root, &id, "pack");
                let Ok(meta) = fs::metadata(&pack) else {
                    continue;
                };
                let entries = match fs::read(&path).at(&path).and_then(|b| decode_index(&b)) {
                    Ok(e) => e,
                    Err(e) => {
                        log::warn!("ignoring damaged pack index {}: {e}", path.display());
                        continue;
                    }
                };
                self.catalog.add_pack(&FinishedPack {
                    id,
                    size: meta.len(),
                    entries,
                })?;
                adopted += 1;
            }
        }
        if adopted > 0 {
            self.catalog.event(
                "adopt",
                None,
                &format!("adopted {adopted} unrecorded packs"),
            )?;
        }
        Ok(adopted)
    }

    /// A catalog connection of its own that reads one snapshot, taken at its first read
    /// ([`Catalog::hold_snapshot`]): for a thread other than the command's (a capture's scan
    /// asks the stat cache from the walker's).
    pub fn catalog_snapshot(&self) -> Result<Catalog> {
        let c = Catalog::open(&self.root.join("aurum.db"))?;
        c.hold_snapshot()?;
        Ok(c)
    }

    /// Opens a writer that stores blobs into new packs of this repository.
    pub fn blob_writer(&self) -> Result<BlobWriter> {
        Ok(BlobWriter {
            root: self.root.clone(),
            catalog: Catalog::open(&self.root.join("aurum.db"))?,
            packs: PackWriter::new(&self.root),
            claimed: HashSet::new(),
            pending: HashSet::new(),
        })
    }
}

/// Stores blobs the repository lacks, each once, and records finished packs in the catalog.
///
/// It has its own catalog connection so that a capture can share it between hashing threads
/// (behind a mutex) while the repository's main connection stays free.
pub struct BlobWriter {
    root: PathBuf,
    catalog: Catalog,
    packs: PackWriter,
    claimed: HashSet<Id>,
    /// Claimed and not stored yet: must be empty when the capture finishes.
    pending: HashSet<Id>,
}

impl BlobWriter {
    /// True exactly once for each blob the repository lacks: the caller must then [`put`] it.
    ///
    /// [`put`]: BlobWriter::put
    pub fn claim(&mut self, id: &Id) -> Result<bool> {
        if self.claimed.contains(id) || self.catalog.has_blob(id)? {
            return Ok(false);
        }
        self.claimed.insert(*id);
        self.pending.insert(*id);
        Ok(true)
    }

    /// [`claim`] for many blobs, in one read of the catalog; the answers are in the same order.
    ///
    /// [`claim`]: BlobWriter::claim
    pub fn claim_many<'a>(&mut self, ids: impl IntoIterator<Item = &'a Id>) -> Result<Vec<bool>> {
        let BlobWriter {
            catalog,
            claimed,
            pending,
            ..
        } = self;
        let ids: Vec<&Id> = ids.into_iter().collect();
        let unknown: Vec<&Id> = ids
            .iter()
            .filter(|id| !claimed.contains(*id))
            .copied()
            .collect();
        let stored = catalog.reading(|cat| cat.has_blobs(&unknown))?;
        let stored: HashSet<&Id> = unknown
            .iter()
            .zip(stored)
            .filter_map(|(id, has)| has.then_some(*id))
            .collect();
        Ok(ids
            .into_iter()
            .map(|id| {
                let new = !claimed.contains(id) && !stored.contains(id);
                if new {
                    claimed.insert(*id);
                    pending.insert(*id);
                }
                new
            })
            .collect())
    }

    fn unclaimed(&mut self, id: &Id) -> Result<()> {
        if self.pending.remove(id) {
            Ok(())
        } else {
            Err(Error::Remote(format!(
                "got blob {} that was not asked for (a file changed during the capture?); run getimage again",
                id.short()
            )))
        }
    }

    /// Records a finished pack in the catalog. Its blobs are in the catalog from now on, so
    /// their claims can go: what a capture remembers stays the size of one pack, not of every
    /// blob it stored (32 MiB of claims for a million small files before).
    fn recorded(&mut self, done: store::FinishedPack) -> Result<()> {
        self.catalog.add_pack(&done)?;
        for e in &done.entries {
            self.claimed.remove(&e.id);
        }
        if self.claimed.capacity() > 4 * self.claimed.len().max(1024) {
            self.claimed.shrink_to_fit();
        }
        Ok(())
    }

    /// The blobs the repository has, as a filter.
    pub fn known(&self) -> Result<crate::format::wire::Known> {
        self.catalog.known_blobs()
    }

    /// Blobs claimed and not stored yet.
    pub fn pending(&self) -> &HashSet<Id> {
        &self.pending
    }

    /// Gives up claims on pending blobs that `keep` rejects (their only file vanished before
    /// it was read again), so that they are neither expected nor reported as unreadable.
    pub fn release(&mut self, keep: impl Fn(&Id) -> bool) {
        let gone: Vec<Id> = self
            .pending
            .iter()
            .filter(|id| !keep(id))
            .copied()
            .collect();
        for id in gone {
            self.pending.remove(&id);
            self.claimed.remove(&id);
        }
    }

    /// Appends a claimed blob (already compressed by the caller).
    pub fn put(&mut self, id: &Id, codec: Codec, raw_len: u32, payload: &[u8]) -> Result<()> {
        self.unclaimed(id)?;
        if let Some(done) = self.packs.add(id, codec, raw_len, payload)? {
            self.recorded(done)?;
        }
        Ok(())
    }

    /// Appends a claimed compressible blob, raw: it goes into a group (see [`store::GROUP_TARGET`]).
    pub fn put_grouped(&mut self, id: &Id, raw: &[u8]) -> Result<()> {
        self.unclaimed(id)?;
        if let Some(done) = self.packs.add_grouped(id, raw)? {
            self.recorded(done)?;
        }
        Ok(())
    }

    /// Accepts claimed blobs for a caller that groups and compresses them itself (in
    /// parallel, outside any lock): checks each was claimed, and hands over the open group so
    /// the caller can fill it further. [`Self::end_many`] appends the result.
    pub fn begin_many<'a>(
        &mut self,
        ids: impl Iterator<Item = &'a Id>,
    ) -> Result<Vec<(Id, Vec<u8>)>> {
        for id in ids {
            self.unclaimed(id)?;
        }
        Ok(self.packs.take_group())
    }

    /// Appends what [`Self::begin_many`] accepted: raw blobs, compressed groups, and the
    /// group left open.
    pub fn end_many(
        &mut self,
        raw: Vec<(Id, Vec<u8>)>,
        groups: &[store::PreparedGroup],
        open: Vec<(Id, Vec<u8>)>,
    ) -> Result<()> {
        for (id, data) in raw {
            if let Some(done) = self.packs.add(&id, Codec::Raw, data.len() as u32, &data)? {
                self.recorded(done)?;
            }
        }
        for g in groups {
            if let Some(done) = self.packs.add_prepared(g)? {
                self.recorded(done)?;
            }
        }
        self.packs.restore_group(open);
        Ok(())
    }

    /// Bytes the new blobs take on disk.
    pub fn new_bytes(&self) -> u64 {
        self.packs.written
    }

    /// Closes the last pack. After this returns every put blob is durable and in the catalog,
    /// and every claimed blob was put (else a file changed while it was captured).
    pub fn finish(&mut self) -> Result<()> {
        if let Some(done) = self.packs.finish()? {
            self.recorded(done)?;
        }
        if self.packs.written > 0 {
            // Listed now, not only when a revision is committed: a capture that comes out
            // unchanged may still have stored blobs (a repaired repository's), which the
            // revisions already published need nodes to find.
            write_pack_list(&self.root, &self.catalog)?;
        }
        if !self.pending.is_empty() {
            return Err(Error::Remote(format!(
                "{} chunks found while hashing could not be read again (files changed during the capture?); run getimage again",
                self.pending.len()
            )));
        }
        Ok(())
    }
}

fn write_pack_list(root: &Path, catalog: &Catalog) -> Result<()> {
    store::write_atomic(
        root,
        &store::published(root).join("packs").join("list"),
        &publish::pack_list(catalog)?,
    )
}

/// Reads verified blobs of a local repository from several threads at once.
pub struct RepoBlobs {
    db: PathBuf,
    /// A catalog connection for each thread of rayon's pool, and one for any other thread,
    /// opened on first use: one shared connection made every blob lookup of a parallel
    /// checkout wait on one lock (35,000 futex waits for 20,000 files, issue #14).
    catalogs: Vec<std::sync::Mutex<Option<Catalog>>>,
    packs: PackReader,
    /// Whether each connection reads one snapshot ([`Catalog::hold_snapshot`]).
    snapshot: bool,
}

impl Repository {
    /// A blob reader that apply can share between threads, for a long-lived user (the server):
    /// every lookup sees the catalog as it is then.
    pub fn blobs(&self) -> Result<RepoBlobs> {
        self.blob_reader(false)
    }

    /// A blob reader for one command that reads many blobs and ends (a checkout, a node's
    /// update from this repository): each of its connections reads one snapshot of the
    /// catalog, taken at its first lookup ([`Catalog::hold_snapshot`]). The blobs of the
    /// revisions it reads are in that snapshot: they were recorded before the revision was.
    pub fn blobs_for_command(&self) -> Result<RepoBlobs> {
        self.blob_reader(true)
    }

    fn blob_reader(&self, snapshot: bool) -> Result<RepoBlobs> {
        let db = self.root.join("aurum.db");
        let first = Catalog::open(&db)?;
        if snapshot {
            first.hold_snapshot()?;
        }
        let mut catalogs: Vec<_> = (0..rayon::current_num_threads())
            .map(|_| std::sync::Mutex::new(None))
            .collect();
        catalogs.push(std::sync::Mutex::new(Some(first)));
        Ok(RepoBlobs {
            db,
            catalogs,
            packs: PackReader::new(&self.root),
            snapshot,
        })
    }
}

impl crate::store::BlobSource for RepoBlobs {
    fn get(&self, id: &Id) -> Result<Vec<u8>> {
        // Threads outside the pool share the last connection.
        let last = self.catalogs.len().saturating_sub(1);
        let slot = rayon::current_thread_index().map_or(last, |i| i.min(last));
        let mut catalog = self
            .catalogs
            .get(slot)
            .ok_or_else(|| Error::Invalid("a blob source with no catalog connection".into()))?
            .lock()
            .expect("catalog lock");
        if catalog.is_none() {
            let c = Catalog::open(&self.db)?;
            if self.snapshot {
                c.hold_snapshot()?;
            }
            *catalog = Some(c);
        }
        let found = catalog.as_ref().expect("opened above").blob(id)?;
        drop(catalog);
        let (pack, entry) = found.ok_or_else(|| {
            Error::Corrupt(format!(
                "blob {} is missing from the repository; run `aurum verify`",
                id.short()
            ))
        })?;
        self.packs.read(&pack, &entry)
    }

    fn public_file(&self, rel: &str) -> Result<Vec<u8>> {
        let root = self.db.parent().unwrap_or(Path::new("."));
        read_public(root, rel)
    }
}

/// A file of the published directory of the repository at `root` (`rel` as a URL path).
pub fn read_public(root: &Path, rel: &str) -> Result<Vec<u8>> {
    if !rel
        .split('/')
        .all(|c| !c.is_empty() && c != "." && c != "..")
    {
        return Err(invalid(format!("{rel} is no path of a published file")));
    }
    let p = store::published(root).join(rel);
    fs::read(&p).at(&p)
}

/// Blobs, and the encoded manifests too: what the delta server compresses against (a node
/// fetches its next manifest as a delta against the one it runs).
pub struct BlobsAndManifests<'a> {
    pub root: &'a Path,
    pub blobs: RepoBlobs,
}

impl crate::store::BlobSource for BlobsAndManifests<'_> {
    fn get(&self, id: &Id) -> Result<Vec<u8>> {
        match self.blobs.get(id) {
            Ok(b) => Ok(b),
            Err(e) => {
                if store::manifest_path(self.root, id).exists() {
                    manifest_raw_at(self.root, id)
                } else {
                    Err(e)
                }
            }
        }
    }
}

/// A revision's manifest read from its file at each pass (see [`EntrySource`]).
pub struct StoredManifest<'a> {
    pub repo: &'a Repository,
    pub id: Id,
}

impl EntrySource for StoredManifest<'_> {
    fn entries(&self) -> Result<EntryIter<'_>> {
        Ok(Box::new(self.repo.manifest_entries(&self.id)?))
    }
}

/// The encoded bytes of manifest `id` in the repository at `root`, checked against its id.
pub fn manifest_raw_at(root: &Path, id: &Id) -> Result<Vec<u8>> {
    let path = store::manifest_path(root, id);
    let file = File::open(&path).at(&path)?;
    crate::format::manifest::decompress_file(file, id).map_err(|problem| {
        Error::Corrupt(format!(
            "manifest {} is damaged ({problem}); run `aurum verify`",
            id.short()
        ))
    })
}

/// Reads a file's bytes (holes as zeros) from its chunks.
pub struct ContentReader<'a> {
    repo: &'a Repository,
    chunks: std::slice::Iter<'a, Chunk>,
    /// Data extents left, with the position reached in the file.
    extents: Vec<(u64, u64)>,
    ext_at: usize,
    pos: u64,
    size: u64,
    buf: Vec<u8>,
    buf_at: usize,
}

impl Read for ContentReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.size || out.is_empty() {
            return Ok(0);
        }
        let (ext_off, ext_len) = self
            .extents
            .get(self.ext_at)
            .copied()
            .unwrap_or((self.size, 0));
        if self.pos < ext_off {
            // In a hole.
            let n = out.len().min((ext_off - self.pos) as usize);
            out.iter_mut().take(n).for_each(|b| *b = 0);
            self.pos += n as u64;
            return Ok(n);
        }
        if self.buf_at == self.buf.len() {
            let c = self
                .chunks
                .next()
                .ok_or_else(|| {
                    std::io::Error::other(Error::Corrupt(
                        "file content is shorter than its size (a damaged manifest); run `aurum verify`".into(),
                    ))
                })?;
            self.buf = self.repo.read_blob(&c.id).map_err(std::io::Error::other)?;
            self.buf_at = 0;
        }
        // The extents come from a manifest: overlapping ones are an error, not a panic.
        let left_in_ext = (ext_off + ext_len).checked_sub(self.pos).ok_or_else(|| {
            std::io::Error::other(Error::Corrupt(
                "the file's data extents overlap (a damaged manifest); run `aurum verify`".into(),
            ))
        })?;
        let rest = self.buf.get(self.buf_at..).unwrap_or_default();
        let n = out
            .len()
            .min(rest.len())
            .min(usize::try_from(left_in_ext).unwrap_or(usize::MAX));
        if let (Some(dst), Some(src)) = (out.get_mut(..n), rest.get(..n)) {
            dst.copy_from_slice(src);
        }
        self.buf_at += n;
        self.pos += n as u64;
        if self.pos == ext_off + ext_len {
            self.ext_at += 1;
        }
        Ok(n)
    }
}

impl Repository {
    /// Reads the data of a file entry without its holes (its data extents end to end, all of
    /// it for a dense file), blob by blob, verified.
    pub fn open_data<'a>(&'a self, e: &'a crate::format::manifest::Entry) -> ContentReader<'a> {
        let (size, chunks) = match &e.kind {
            crate::format::manifest::Kind::File {
                size,
                chunks,
                extents,
            } => (
                extents
                    .as_ref()
                    .map_or(*size, |x| x.iter().map(|e| e.1).sum()),
                &chunks[..],
            ),
            _ => (0, &[][..]),
        };
        ContentReader {
            repo: self,
            chunks: chunks.iter(),
            extents: vec![(0, size)],
            ext_at: 0,
            pos: 0,
            size,
            buf: Vec::new(),
            buf_at: 0,
        }
    }

    /// Reads the content of a file entry (holes as zeros), blob by blob, verified.
    pub fn open_file<'a>(&'a self, e: &'a crate::format::manifest::Entry) -> ContentReader<'a> {
        let (size, chunks, extents) = match &e.kind {
            crate::format::manifest::Kind::File {
                size,
                chunks,
                extents,
            } => (*size, &chunks[..], extents.clone()),
            _ => (0, &[][..], None),
        };
        ContentReader {
            repo: self,
            chunks: chunks.iter(),
            extents: extents.unwrap_or_else(|| vec![(0, size)]),
            ext_at: 0,
            pos: 0,
            size,
            buf: Vec::new(),
            buf_at: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pulled_images_are_read_but_not_written() {
        assert!(is_image_name("compute") && is_image_name("super/compute"));
        assert!(!is_image_name("a/b/c") && !is_image_name("/compute") && !is_image_name("super/"));
        assert!(
            !is_image_name("super/deadbeef12"),
            "a part that reads as an id"
        );
        let e = check_name("image", "super/compute")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cpimage super/compute"), "{e}");
        assert!(check_name("image", "a/b/c").is_err());
    }

    #[test]
    fn a_newer_format_says_to_upgrade() {
        let e = check_format("/srv/aurum", b"aurum repository format 9\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!("/srv/aurum was made by a newer aurum (format 9, this aurum reads up to {FORMAT_VERSION}): upgrade aurum")
        );
        assert_eq!(
            check_format("x", b"aurum repository format 2\n").unwrap(),
            2
        );
        assert!(check_format("x", b"something else 2\n").is_err());
        assert!(check_format("x", b"aurum repository format 0\n").is_err());
    }
}
