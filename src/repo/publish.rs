//! The files a repository publishes for static clients, where they lie, and who may read them.
//!
//! Everything a web server may publish lies in one directory, `REPO/public/`
//! ([`store::PUBLISHED`]): `FORMAT`, packs with their indexes, manifests, refs, templates and
//! cached deltas. The catalog (with its node records), the lock and `tmp/` lie beside it, so
//! that a web server given `public/` as its root cannot hand them out whatever its
//! configuration says. [`layout`] checks (and repairs) that split; it is also how an older
//! repository, which had these directories at its top, is moved into `public/`.
//!
//! A node that updates from a plain web server finds everything through a few files derived
//! from the catalog: `packs/list` (which pack indexes to read), `refs/IMAGE/{head,revisions,
//! tags/TAG}` (which revision a name means) and `templates/{CLASS.toml,CLASSES}` (partition
//! templates for installs). This module says, in one place, what each must hold, so that
//! writing them (a commit, gc, a tag) and checking them (`verify`) cannot disagree, and
//! `verify --repair` rebuilds them from the same code. Their paths here are relative to
//! `public/`, as they are in URLs.
//!
//! It also owns the repository's file modes: everything under `public/` is world-readable
//! (0644 files, 0755 directories, whatever the umask), so that nginx running as www-data can
//! serve it; what is private (the catalog, the lock, `tmp/`) stays 0600/0700.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::catalog::Catalog;
use crate::error::{IoContext, Result};
use crate::format::refs::{
    decode_delta_list, decode_pack_list, encode_classes, encode_delta_list, encode_images,
    encode_log, encode_pack_list, encode_ref, encode_revisions, encode_template_log, format_file,
    ImageLog, LoggedRevision, LoggedTemplate,
};
use crate::format::{Id, FORMAT_VERSION};
use crate::store::{self, published};
use crate::sys::sync_dir;

pub use crate::store::{PUBLIC_DIR, PUBLIC_FILE, PUBLISHED};

/// Mode of a private file (the catalog, the lock).
pub const PRIVATE_FILE: u32 = 0o600;
/// Mode of a private directory (`tmp/`).
pub const PRIVATE_DIR: u32 = 0o700;

/// The directories of `public/` (besides the file `FORMAT`); nothing else belongs there.
pub const PUBLIC_DIRS: &[&str] = &[
    "packs",
    "manifests",
    "refs",
    "templates",
    "deltas",
    "sigs",
    crate::format::netroot::DIR,
];

/// What `FORMAT` holds, in the repository's top (read by aurum before it opens anything) and
/// in `public/` (read by nodes to know they found a repository).
pub fn format_text() -> String {
    format_file(FORMAT_VERSION)
}

/// `packs/list`: `ID SIZE` for every pack of the catalog.
pub fn pack_list(catalog: &Catalog) -> Result<Vec<u8>> {
    let packs = catalog.packs()?;
    Ok(encode_pack_list(
        packs.into_iter().map(|(id, size, _)| (id, size)),
    ))
}

/// The files of `refs/IMAGE/` (paths relative to the repository), empty for an image that is
/// not in the catalog.
pub fn refs(catalog: &Catalog, image: &str) -> Result<BTreeMap<PathBuf, Vec<u8>>> {
    let mut files = BTreeMap::new();
    if !catalog.image_exists(image)? {
        return Ok(files);
    }
    let dir = Path::new("refs").join(image);
    let revs = catalog.revisions(image)?;
    files.insert(
        dir.join("revisions"),
        encode_revisions(revs.iter().rev().map(|r| (r.number, r.id))),
    );
    files.insert(
        dir.join("log"),
        encode_log(&image_log(catalog, image, &revs)?),
    );
    if let Some(head) = revs.first() {
        files.insert(dir.join("head"), encode_ref(&head.id));
    }
    for (tag, number) in catalog.tags(image)? {
        let rev = revs
            .iter()
            .find(|r| r.number == number)
            .expect("tags name existing revisions");
        files.insert(dir.join("tags").join(tag), encode_ref(&rev.id));
    }
    Ok(files)
}

/// What `refs/IMAGE/log` holds: `revs` (the image's revisions, newest first, as
/// [`Catalog::revisions`] gives them) and its tags.
fn image_log(
    catalog: &Catalog,
    image: &str,
    revs: &[crate::catalog::Revision],
) -> Result<ImageLog> {
    Ok(ImageLog {
        revisions: revs
            .iter()
            .rev()
            .map(|r| LoggedRevision {
                number: r.number,
                id: r.id,
                parent: r.parent,
                created: r.created,
                message: r.message.clone(),
                source: r.source.clone(),
                files: r.files,
                bytes: r.bytes,
                new_bytes: r.new_bytes,
            })
            .collect(),
        tags: catalog.tags(image)?,
    })
}

/// `refs/IMAGES`: every image of the catalog with the id of its log, for pullers that
/// cannot list `refs/`.
pub fn images(catalog: &Catalog) -> Result<(PathBuf, Vec<u8>)> {
    let mut lines = Vec::new();
    for image in catalog.images()? {
        let revs = catalog.revisions(&image.name)?;
        let log = encode_log(&image_log(catalog, &image.name, &revs)?);
        lines.push((image.name, Id::of(&log)));
    }
    Ok((
        PathBuf::from("refs/IMAGES"),
        encode_images(lines.iter().map(|(n, id)| (n.as_str(), *id))),
    ))
}

/// Path of the delta list, relative to `public/`.
const DELTA_LIST: &str = "deltas/list";

/// `deltas/list`: every delta cache file under `public/deltas/` with its size, so that a
/// puller finds the deltas this repository precomputed (the cache has no catalog rows).
pub fn delta_list(root: &Path) -> Result<Vec<u8>> {
    let public = published(root);
    let mut files = Vec::new();
    for rel in files_under(&public.join("deltas"), "")? {
        let name = rel.to_string_lossy().into_owned();
        if crate::format::refs::delta_name_ok(&name) {
            let size = fs::metadata(public.join("deltas").join(&rel))
                .map(|m| m.len())
                .unwrap_or(0);
            files.push((name, size));
        }
    }
    Ok(encode_delta_list(files))
}

/// Rewrites `deltas/list` from the delta cache (after a capture precomputed deltas, a gc
/// pruned them, a pull brought some).
pub fn write_delta_list(root: &Path) -> Result<()> {
    let list = delta_list(root)?;
    store::write_cached(root, &published(root).join(DELTA_LIST), &list)
}

/// Checks `deltas/list`: it must parse and name only files that are there with their sizes
/// (deltas `aurum serve` made on demand since may be missing from it).
fn check_delta_list(root: &Path) -> Result<Option<String>> {
    let public = published(root);
    let path = public.join(DELTA_LIST);
    let text = match fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let has_deltas = !files_under(&public.join("deltas"), "")?.is_empty();
            return Ok(has_deltas.then(|| "missing".into()));
        }
        Err(e) => return Err(e).at(&path),
    };
    let list = match decode_delta_list(&text) {
        Ok(list) => list,
        Err(problem) => return Ok(Some(problem.to_string())),
    };
    for (name, size) in list {
        let there = fs::metadata(public.join("deltas").join(&name)).map(|m| m.len());
        if there.ok() != Some(size) {
            return Ok(Some(format!(
                "it names deltas/{name} (size {size}), which is not there with that size"
            )));
        }
    }
    Ok(None)
}

/// The files of `templates/`: each class's newest version, `CLASSES` listing them, and
/// `log`, every version of every class (for pullers).
pub fn templates(catalog: &Catalog) -> Result<BTreeMap<PathBuf, Vec<u8>>> {
    let mut files = BTreeMap::new();
    let templates = catalog.templates()?;
    let classes = encode_classes(templates.iter().map(|v| &v.class));
    for v in templates {
        files.insert(
            Path::new("templates").join(format!("{}.toml", v.class)),
            v.text.into_bytes(),
        );
    }
    files.insert(Path::new("templates").join("CLASSES"), classes);
    let all: Vec<LoggedTemplate> = catalog
        .all_template_versions()?
        .into_iter()
        .map(|v| LoggedTemplate {
            class: v.class.to_string(),
            version: v.version,
            created: v.created,
            note: v.note,
            text: v.text,
        })
        .collect();
    files.insert(
        Path::new("templates").join("log"),
        encode_template_log(&all),
    );
    Ok(files)
}

/// Writes derived files (paths relative to `public/`) atomically, world-readable.
pub fn write(root: &Path, files: &BTreeMap<PathBuf, Vec<u8>>) -> Result<()> {
    let public = published(root);
    for (rel, bytes) in files {
        store::write_atomic(root, &public.join(rel), bytes)?;
    }
    Ok(())
}

/// One published file that disagrees with the catalog.
#[derive(Debug, Serialize)]
pub struct Stale {
    /// Relative to `public/`, e.g. `packs/list`.
    pub file: String,
    pub problem: String,
}

/// Every derived file with what it must hold, except `packs/list` (which may lag behind the
/// catalog by packs no revision uses: see [`check_pack_list`]).
fn expected(catalog: &Catalog) -> Result<BTreeMap<PathBuf, Vec<u8>>> {
    let mut all = templates(catalog)?;
    let (path, bytes) = images(catalog)?;
    all.insert(path, bytes);
    for image in catalog.images()? {
        all.extend(refs(catalog, &image.name)?);
    }
    Ok(all)
}

/// Files under `dir` (relative to `root`, and returned relative to it), recursively.
fn files_under(root: &Path, dir: &str) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![root.join(dir)];
    while let Some(d) = todo.pop() {
        let entries = match fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).at(&d),
        };
        for e in entries {
            let p = e.at(&d)?.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p.strip_prefix(root).expect("under root").to_path_buf());
            }
        }
    }
    Ok(out)
}

/// Checks `packs/list`: it must parse, name only packs the catalog has (with their sizes), and
/// name every pack in `needed` (those holding blobs of revisions).
fn check_pack_list(root: &Path, catalog: &Catalog, needed: &HashSet<Id>) -> Result<Option<String>> {
    let path = published(root).join("packs/list");
    let text = match fs::read(&path) {
        Ok(t) => t,
        // A repository with no revision yet may have no list yet.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((!needed.is_empty()).then(|| "missing".into()))
        }
        Err(e) => return Err(e).at(&path),
    };
    let list = match decode_pack_list(&text) {
        Ok(list) => list,
        Err(problem) => return Ok(Some(problem.to_string())),
    };
    let known: BTreeMap<Id, u64> = catalog
        .packs()?
        .into_iter()
        .map(|(id, size, _)| (id, size))
        .collect();
    let mut listed = HashSet::new();
    for (n, (id, size)) in list.into_iter().enumerate() {
        if known.get(&id) != Some(&size) {
            return Ok(Some(format!(
                "line {} names pack {} (size {size}), which the catalog does not have with that size",
                n + 1,
                id.short()
            )));
        }
        listed.insert(id);
    }
    let unlisted = needed.iter().filter(|p| !listed.contains(p)).count();
    Ok((unlisted > 0).then(|| {
        format!(
            "it leaves out {unlisted} packs holding blobs of revisions (nodes would not find them)"
        )
    }))
}

/// Compares every published derived file with the catalog. `needed`: the packs holding
/// blobs of revisions.
pub fn check(root: &Path, catalog: &Catalog, needed: &HashSet<Id>) -> Result<Vec<Stale>> {
    let mut stale = Vec::new();
    if let Some(problem) = check_pack_list(root, catalog, needed)? {
        stale.push(Stale {
            file: "packs/list".into(),
            problem,
        });
    }
    if let Some(problem) = check_delta_list(root)? {
        stale.push(Stale {
            file: DELTA_LIST.into(),
            problem,
        });
    }
    let want = expected(catalog)?;
    let public = published(root);
    let mut present = HashSet::new();
    for dir in ["refs", "templates"] {
        for rel in files_under(&public, dir)? {
            let problem = match want.get(&rel) {
                None => Some("names nothing the catalog has (stale)".to_string()),
                Some(bytes) => match fs::read(public.join(&rel)) {
                    Ok(b) if b == *bytes => None,
                    Ok(_) => Some("differs from the catalog".into()),
                    Err(e) => Some(format!("cannot be read: {e}")),
                },
            };
            if let Some(problem) = problem {
                stale.push(Stale {
                    file: rel.display().to_string(),
                    problem,
                });
            }
            present.insert(rel);
        }
    }
    for rel in want.keys().filter(|r| !present.contains(*r)) {
        stale.push(Stale {
            file: rel.display().to_string(),
            problem: "missing".into(),
        });
    }
    Ok(stale)
}

/// What [`rebuild`] did to a published file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Republish {
    /// Written again from the catalog (it was missing or differed).
    Rebuilt,
    /// Deleted: it named nothing the catalog has.
    Removed,
}

/// A published file [`rebuild`] changed.
#[derive(Debug, Serialize)]
pub struct Republished {
    pub file: String,
    pub action: Republish,
}

/// Rewrites every published derived file from the catalog and removes stale ones under
/// `refs/` and `templates/`. Returns the files it changed.
pub fn rebuild(root: &Path, catalog: &Catalog) -> Result<Vec<Republished>> {
    let mut changed = Vec::new();
    let public = published(root);
    let mut want = expected(catalog)?;
    want.insert(PathBuf::from("packs/list"), pack_list(catalog)?);
    want.insert(PathBuf::from(DELTA_LIST), delta_list(root)?);
    for (rel, bytes) in &want {
        if fs::read(public.join(rel)).ok().as_ref() != Some(bytes) {
            store::write_atomic(root, &public.join(rel), bytes)?;
            changed.push(Republished {
                file: rel.display().to_string(),
                action: Republish::Rebuilt,
            });
        }
    }
    for dir in ["refs", "templates"] {
        for rel in files_under(&public, dir)? {
            if !want.contains_key(&rel) {
                let p = public.join(&rel);
                fs::remove_file(&p).at(&p)?;
                changed.push(Republished {
                    file: rel.display().to_string(),
                    action: Republish::Removed,
                });
            }
        }
    }
    // Directories of images that are gone.
    if let Ok(images) = fs::read_dir(public.join("refs")) {
        for d in images.flatten() {
            if d.path().is_dir()
                && files_under(
                    &public,
                    &format!("refs/{}", d.file_name().to_string_lossy()),
                )?
                .is_empty()
            {
                fs::remove_dir_all(d.path()).at(d.path())?;
            }
        }
    }
    Ok(changed)
}

/// What a repository file's mode must be (`rel` relative to the repository): `None` for
/// files nobody publishes nor guards (`bootkit/`, `damaged/`).
fn wanted_mode(rel: &Path, is_dir: bool) -> Option<u32> {
    let top = rel
        .components()
        .next()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .unwrap_or_default();
    match (top.as_str(), is_dir) {
        // The top must let a web server through to public/.
        ("", _) => Some(PUBLIC_DIR),
        ("FORMAT", _) => Some(PUBLIC_FILE),
        (PUBLISHED, d) => Some(if d { PUBLIC_DIR } else { PUBLIC_FILE }),
        ("lock", _) => Some(PRIVATE_FILE),
        (t, false) if t.starts_with("aurum.db") => Some(PRIVATE_FILE),
        ("tmp", true) if rel.components().count() == 1 => Some(PRIVATE_DIR),
        _ => None,
    }
}

/// Files and directories of the repository whose mode is not what it must be (published
/// ones world-readable, private ones private); with `fix`, changes them. Returns them,
/// relative to the repository (`.` for its top), with the mode found and the mode wanted.
pub fn check_modes(root: &Path, fix: bool) -> Result<Vec<(String, u32, u32)>> {
    let mut wrong = Vec::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let path = root.join(&rel);
        let meta = fs::symlink_metadata(&path).at(&path)?;
        if let Some(want) = wanted_mode(&rel, meta.is_dir()) {
            let mode = meta.permissions().mode() & 0o7777;
            if mode != want {
                if fix {
                    fs::set_permissions(&path, fs::Permissions::from_mode(want)).at(&path)?;
                }
                let name = if rel.as_os_str().is_empty() {
                    ".".to_string()
                } else {
                    rel.display().to_string()
                };
                wrong.push((name, mode, want));
            }
        }
        let top_level = rel.as_os_str().is_empty();
        let descend = top_level || (meta.is_dir() && wanted_mode(&rel, true) == Some(PUBLIC_DIR));
        if descend {
            for e in fs::read_dir(&path).at(&path)? {
                let e = e.at(&path)?;
                if e.file_type().at(&path)?.is_symlink() {
                    continue;
                }
                todo.push(rel.join(e.file_name()));
            }
        }
    }
    wrong.sort();
    Ok(wrong)
}

/// Something out of place in the repository's layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Misplacement {
    /// A directory of the published layout at the repository's top, where an older aurum kept
    /// it: moved into `public/`, merging with what is there.
    OutsidePublic,
    /// An entry of `public/` that is not part of the published layout (a web server would
    /// hand it out): moved aside to `damaged/public/`.
    Foreign,
    /// `public/FORMAT` is missing or says another format: written again.
    Format,
}

/// One thing [`layout`] found out of place.
#[derive(Debug, Serialize)]
pub struct Misplaced {
    /// Relative to the repository, e.g. `packs` or `public/aurum.db`.
    pub path: String,
    pub problem: Misplacement,
}

/// Checks that the published files, and only they, lie in `public/`; with `fix`, moves
/// what is misplaced and writes `public/FORMAT`. Returns what was (or is) out of place.
///
/// This is also the upgrade of a repository that has its published directories at the top
/// (as format 1 had): each move is a rename within the repository's file system, so a
/// crash leaves every file in one of its two places, and running this again finishes.
pub fn layout(root: &Path, fix: bool) -> Result<Vec<Misplaced>> {
    let public = published(root);
    let mut found = Vec::new();
    if fix {
        store::create_public_dir(root, &public)?;
    }
    for d in PUBLIC_DIRS {
        let old = root.join(d);
        if fs::symlink_metadata(&old).is_ok() {
            if fix {
                merge_into(&old, &public.join(d))?;
            }
            found.push(Misplaced {
                path: d.to_string(),
                problem: Misplacement::OutsidePublic,
            });
        }
    }
    if fix && !found.is_empty() {
        sync_dir(&public)?;
        sync_dir(root)?;
    }
    let entries = match fs::read_dir(&public) {
        Ok(e) => e.collect::<std::io::Result<Vec<_>>>().at(&public)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).at(&public),
    };
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "FORMAT" || PUBLIC_DIRS.contains(&name.as_str()) {
            continue;
        }
        if fix {
            set_aside(root, &e.path())?;
        }
        found.push(Misplaced {
            path: format!("{PUBLISHED}/{name}"),
            problem: Misplacement::Foreign,
        });
    }
    let format = public.join("FORMAT");
    if fs::read_to_string(&format).ok() != Some(format_text()) {
        if fix {
            store::write_atomic(root, &format, format_text().as_bytes())?;
        }
        found.push(Misplaced {
            path: format!("{PUBLISHED}/FORMAT"),
            problem: Misplacement::Format,
        });
    }
    Ok(found)
}

/// Moves the tree `from` to `to`, merging it into what `to` already holds (when an older
/// aurum wrote at the top after an upgrade had begun): a file of `from` replaces its
/// namesake, which is safe because packs and manifests are named by their content and the
/// derived files are rebuilt from the catalog after an upgrade.
fn merge_into(from: &Path, to: &Path) -> Result<()> {
    let Ok(there) = fs::symlink_metadata(to) else {
        return fs::rename(from, to).at(to);
    };
    if !there.is_dir() || !fs::symlink_metadata(from).at(from)?.is_dir() {
        return fs::rename(from, to).at(to);
    }
    for e in fs::read_dir(from).at(from)? {
        let e = e.at(from)?;
        merge_into(&e.path(), &to.join(e.file_name()))?;
    }
    sync_dir(to)?;
    fs::remove_dir(from).at(from)
}

/// Moves an entry that does not belong in `public/` to `damaged/public/`, under a name not
/// taken yet there.
fn set_aside(root: &Path, path: &Path) -> Result<()> {
    let dir = root.join("damaged").join(PUBLISHED);
    fs::create_dir_all(&dir).at(&dir)?;
    let name = path.file_name().expect("an entry of public/");
    let mut to = dir.join(name);
    let mut n = 1;
    while fs::symlink_metadata(&to).is_ok() {
        to = dir.join(format!("{}.{n}", name.to_string_lossy()));
        n += 1;
    }
    fs::rename(path, &to).at(&to)?;
    sync_dir(&dir)
}

/// Every NFS export record in `public/netroot/`, by Export_Id.
pub fn nfs_records(root: &Path) -> Result<Vec<crate::format::netroot::NfsExport>> {
    let d = crate::store::published(root).join(crate::format::netroot::DIR);
    let mut v = Vec::new();
    let Ok(files) = fs::read_dir(&d) else {
        return Ok(v);
    };
    for f in files {
        let f = f.at(&d)?;
        if f.file_name().to_string_lossy().ends_with(".nfs.json") {
            let b = fs::read(f.path()).at(f.path())?;
            v.push(crate::format::netroot::NfsExport::decode(
                &b,
                &f.path().display().to_string(),
            )?);
        }
    }
    v.sort_by_key(|r| r.export_id);
    Ok(v)
}

/// Writes `nfsroot/ganesha-exports.conf` from the records: an EXPORT block for every exported
/// revision whose tree is there. Returns its path.
pub fn write_ganesha_exports(root: &Path) -> Result<PathBuf> {
    let mut text = String::from(
        "# Written by aurum (`aurum export REV --nfs`, `aurum gc`): one EXPORT per exported revision.\n\
         # Include it in ganesha.conf (%include this file), whose NFSV4 block must say\n\
         # `Only_Numeric_Owners = true;` (nodes have no idmapper), and reload nfs-ganesha.\n\n",
    );
    for r in nfs_records(root)? {
        if std::path::Path::new(&r.path).is_dir() {
            text.push_str(&r.ganesha_block());
            text.push('\n');
        }
    }
    // Written beside itself and renamed (not through write_atomic, which would make the
    // directory public: it is root's alone).
    let dir = root.join(crate::format::netroot::NFS_DIR);
    let p = dir.join(crate::format::netroot::GANESHA_EXPORTS);
    fs::create_dir_all(&dir).at(&dir)?;
    let mut f = tempfile::NamedTempFile::new_in(&dir).at(&dir)?;
    std::io::Write::write_all(&mut f, text.as_bytes()).at(f.path())?;
    f.as_file().sync_all().at(f.path())?;
    f.as_file()
        .set_permissions(fs::Permissions::from_mode(0o644))
        .at(f.path())?;
    f.persist(&p).map_err(|e| e.error).at(&p)?;
    crate::sys::sync_dir(&dir)?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A catalog with one pack of `size` bytes, in a fresh directory.
    fn one_pack(size: u64) -> (tempfile::TempDir, Catalog, Id) {
        let dir = tempfile::tempdir().unwrap();
        let mut catalog = Catalog::open(&dir.path().join("aurum.db")).unwrap();
        let id = Id::of(b"pack");
        catalog
            .add_pack(&store::FinishedPack {
                id,
                size,
                entries: Vec::new(),
            })
            .unwrap();
        (dir, catalog, id)
    }

    #[test]
    fn pack_list_damage_is_named() {
        let (dir, catalog, id) = one_pack(100);
        let root = dir.path();
        std::fs::create_dir_all(published(root).join("packs")).unwrap();
        let needed: HashSet<Id> = [id].into();
        let check = |text: &str| {
            std::fs::write(published(root).join("packs/list"), text).unwrap();
            check_pack_list(root, &catalog, &needed).unwrap()
        };
        let good = String::from_utf8(pack_list(&catalog).unwrap()).unwrap();
        assert_eq!(check(&good), None);
        assert!(check(&good[..good.len() - 3])
            .unwrap()
            .contains("cut short"));
        assert!(check("nonsense 1\n").unwrap().contains("line 1"));
        assert!(check(&format!("{} 99\n", id.hex()))
            .unwrap()
            .contains("that size"));
        assert!(check("").unwrap().contains("leaves out 1 packs"));
        // A pack no revision needs may be missing from the list (a capture killed before
        // committing its revision).
        std::fs::write(published(root).join("packs/list"), "").unwrap();
        assert_eq!(
            check_pack_list(root, &catalog, &HashSet::new()).unwrap(),
            None
        );
    }

    #[test]
    fn modes_by_place() {
        for (rel, dir, want) in [
            ("", true, Some(PUBLIC_DIR)),
            ("FORMAT", false, Some(PUBLIC_FILE)),
            ("public", true, Some(PUBLIC_DIR)),
            ("public/packs/ab/x.pack", false, Some(PUBLIC_FILE)),
            ("public/refs/img/tags", true, Some(PUBLIC_DIR)),
            ("public/deltas/ab/x.zd", false, Some(PUBLIC_FILE)),
            ("aurum.db-wal", false, Some(PRIVATE_FILE)),
            ("lock", false, Some(PRIVATE_FILE)),
            ("tmp", true, Some(PRIVATE_DIR)),
            ("tmp/x", false, None),
            ("bootkit/vmlinuz", false, None),
            // Left at the top by an older aurum: `layout` moves it, modes do not matter.
            ("packs/ab/x.pack", false, None),
        ] {
            assert_eq!(wanted_mode(Path::new(rel), dir), want, "{rel}");
        }
    }
}
