//! Replicating repositories: `aurum pull` copies images, revisions (same numbers and ids),
//! tags, templates and precomputed deltas from another repository; `aurum push` is a pull
//! run the other way ([`push`]).
//!
//! A pull reads only the files a repository publishes (`refs/IMAGES`, `refs/IMAGE/log`,
//! `packs/list`, pack indexes, packs, manifests, `deltas/list`, `templates/`), so any static
//! web server of `public/`, a directory or an ssh login can be its source ([`source`]).
//!
//! The order is what makes it safe to kill: a staging directory `tmp/pull-KEY/` (the
//! partial-pull marker) receives the manifests (each checked against its id), the pack
//! indexes and the packs (fetched from where a killed pull stopped, then checked whole: the
//! pack against its name and every blob its index lists against the blob's id). Only when
//! every pack checked are they registered, then the manifests placed, then the catalog rows
//! written in one transaction, and last the published refs. A re-run re-checks whatever it
//! finds in the staging directory and never trusts it. Only packs holding blobs this
//! repository lacks are fetched, so a second pull moves about what the new revisions stored.

pub mod push;
pub mod source;

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::apply::source::HttpOptions;
use crate::catalog::PulledImage;
use crate::error::{corrupt, invalid, Error, IoContext, Result};
use crate::format::manifest::{self, Kind, Manifest};
use crate::format::pack::{self as packfmt, decode_index, Codec, IndexEntry};
use crate::format::refs::{self, ImageLog, LoggedRevision};
use crate::format::signature::{
    self, Signature, TemplateSet, TemplateSetSignature, TemplateSignature,
};
use crate::format::Id;
use crate::name::ClassName;
use crate::progress::Progress;
use crate::repo::embedded::Pins;
use crate::repo::Repository;
use crate::store::{self, FinishedPack};
use crate::trust::{self, TrustedKeys, Wanted};
use source::Source;

/// What a pull is asked to do.
#[derive(Clone, Debug, Default)]
pub struct PullOptions {
    /// A remote's name, or a source: `http://…`, `ssh://[user@]host/path`, a directory.
    pub source: String,
    /// Images to pull (their names in the source); none: every image.
    pub images: Vec<String>,
    /// Keep the source's image names (a source that is not a remote needs it).
    pub mirror: bool,
    /// Let tags move to older revisions.
    pub force: bool,
    /// The ssh command and its options.
    pub ssh: Vec<String>,
    pub http: HttpOptions,
    /// With any, a revision no trusted key signed is refused (aurum.toml's `trusted-keys`).
    pub keys: TrustedKeys,
}

/// One image a pull brought.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PulledReport {
    /// Its name here.
    pub image: String,
    /// Its name in the source.
    pub from: String,
    /// Revisions added, and tags set or moved.
    pub revisions: u64,
    pub tags: u64,
    /// The source's newest revision number.
    pub newest: Option<u32>,
}

/// What a pull did.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PullReport {
    pub source: String,
    pub remote: Option<String>,
    pub images: Vec<PulledReport>,
    /// Images of the source left alone: pulled copies of a third repository's images
    /// (`REMOTE/IMAGE`) that this repository has no remote for.
    pub skipped: Vec<String>,
    pub revisions: u64,
    pub tags: u64,
    pub manifests: u64,
    pub packs: u64,
    /// Blobs in the fetched packs.
    pub objects: u64,
    pub deltas: u64,
    pub templates: u64,
    /// Signatures files written (new, or changed at the source).
    #[serde(default)]
    pub signatures: u64,
    /// Bytes read from the source by this run (files of every kind).
    pub bytes: u64,
    /// Bytes of packs this run found already fetched by an interrupted pull (checked again).
    pub resumed_bytes: u64,
}

/// Where a pull's files are staged: `tmp/pull-KEY`.
fn staging(root: &Path, key: &str) -> PathBuf {
    store::tmp_dir(root).join(format!("pull-{key}"))
}

/// The staging key of a source: the remote's name, or a hash of the URL.
fn staging_key(remote: Option<&str>, url: &str) -> String {
    match remote {
        Some(r) => format!("remote-{r}"),
        None => format!("url-{}", &Id::of(url.as_bytes()).hex()[..16]),
    }
}

/// Pulls from a remote or a source (see the module documentation). A pull from a remote
/// records how it went in the remote's row, failures included.
pub fn pull(
    repo: &mut Repository,
    opts: &PullOptions,
    progress: &dyn Progress,
) -> Result<PullReport> {
    let remote = repo.catalog.remote(&opts.source)?;
    let (name, url, mirror) = match &remote {
        Some(r) => (Some(r.name.clone()), r.url.clone(), r.mirror || opts.mirror),
        None => (None, opts.source.clone(), opts.mirror),
    };
    if name.is_none() && !mirror {
        return Err(invalid(format!(
            "`{url}` is not a remote: pull it with --mirror (images keep their names), or name it with `aurum remote add NAME {url}` and pull NAME (images land as NAME/IMAGE)"
        )));
    }
    let result = pull_from(repo, opts, name.as_deref(), &url, mirror, progress);
    if let Some(name) = &name {
        let noted = match &result {
            Ok(_) => repo.catalog.remote_pulled(name, 0),
            Err(e) => repo.catalog.remote_failed(name, &e.to_string()),
        };
        if let Err(e) = noted {
            log::warn!("cannot record the pull in remote {name}'s row: {e}");
        }
    }
    result
}

fn pull_from(
    repo: &mut Repository,
    opts: &PullOptions,
    remote: Option<&str>,
    url: &str,
    mirror: bool,
    progress: &dyn Progress,
) -> Result<PullReport> {
    let src = source::open(url, &opts.ssh, &opts.http)?;
    let format = src.get("FORMAT")?.ok_or_else(|| {
        Error::NotFound(format!("{url} has no FORMAT: it is no aurum repository"))
    })?;
    crate::repo::check_format(url, &format)?;
    let stage = staging(&repo.root, &staging_key(remote, url));
    fs::create_dir_all(&stage).at(&stage)?;
    // One pull at a time into one staging directory.
    let lock_path = stage.join("lock");
    let lock = File::create(&lock_path).at(&lock_path)?;
    crate::sys::lock_file(
        &lock,
        &lock_path,
        true,
        "another pull from this source is running; waiting for it",
    )?;
    let mut report = PullReport {
        source: url.to_string(),
        remote: remote.map(str::to_string),
        ..PullReport::default()
    };
    let plan = plan(repo, src.as_ref(), opts, remote, mirror, &mut report)?;
    let signatures = fetch_signatures(repo, src.as_ref(), &plan, &report, &opts.keys)?;
    let templates = fetch_templates(src.as_ref(), url, &opts.keys)?;
    let template_set = fetch_template_set(repo, src.as_ref(), &templates, &opts.keys)?;
    if let Some(r) = remote {
        repo.catalog.remote_contacted(
            r,
            plan.images.iter().map(|i| i.revisions.len() as u64).sum(),
        )?;
    }
    let fetched = Fetch {
        repo,
        src: src.as_ref(),
        stage: &stage,
        progress,
    };
    let mut manifests = fetched.manifests(&plan.manifests)?;
    // The packs and manifests of repositories embedded in those revisions come whole, so
    // that they can be rebuilt from here (see `repo::embedded`).
    let mut pins = Pins::default();
    for m in &manifests {
        pins.add_file(&m.packed[..], &m.id)?;
    }
    for id in &plan.present {
        pins.add_manifest(&repo.root, id)?;
    }
    let more: Vec<Id> = pins
        .manifests
        .iter()
        .filter(|id| !manifests.iter().any(|m| m.id == **id))
        .filter(|id| !store::manifest_path(&repo.root, id).exists())
        .copied()
        .collect();
    manifests.extend(fetched.manifests(&more)?);
    let wanted = fetched.wanted_blobs(&manifests, &plan.present)?;
    let packs = fetched.choose_packs(wanted, &pins.packs)?;
    let checked = fetched.packs(&packs, &mut report)?;
    register(repo, &checked, &manifests)?;
    report.packs = checked.len() as u64;
    report.objects = checked.iter().map(|p| p.entries.len() as u64).sum();
    report.manifests = manifests.len() as u64;
    report.deltas = pull_deltas(repo, src.as_ref(), &manifests)?;
    record(repo, &plan.images)?;
    report.signatures = write_signatures(repo, &signatures)?;
    report.templates = save_templates(repo, &templates)?;
    if let Some(set) = template_set {
        if repo.template_set()? != set {
            repo.write_template_set(&set)?;
        }
    }
    report.bytes = src.bytes_moved();
    drop(lock);
    fs::remove_dir_all(&stage).at(&stage)?;
    Ok(report)
}

/// What a pull will add.
struct Plan {
    /// The images to record, with only the revisions this repository lacks.
    images: Vec<PulledImage>,
    /// Manifests of those revisions this repository lacks.
    manifests: Vec<Id>,
    /// Manifests of those revisions this repository has already (the same tree recorded
    /// under another name, or placed by a pull killed before it recorded its revisions):
    /// their blobs are wanted too when missing.
    present: Vec<Id>,
}

/// Reads the source's images and logs, and decides what to add: refuses an image that
/// diverged (a revision number with another id here) and a tag that would move back.
fn plan(
    repo: &Repository,
    src: &dyn Source,
    opts: &PullOptions,
    remote: Option<&str>,
    mirror: bool,
    report: &mut PullReport,
) -> Result<Plan> {
    let list = src.get("refs/IMAGES")?.ok_or_else(|| {
        invalid(format!(
            "{} publishes no refs/IMAGES (it was written by an older aurum): run any command of this aurum on it once (or `aurum verify --repair`), then pull again",
            src.describe()
        ))
    })?;
    let all = refs::decode_images(&list).map_err(|p| inconsistent(src, "refs/IMAGES", p))?;
    for want in &opts.images {
        if !all.iter().any(|(name, _)| name == want) {
            let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
            return Err(Error::NotFound(format!(
                "{} has no image `{want}` (it has {})",
                src.describe(),
                names.join(", ")
            )));
        }
    }
    let mut plan = Plan {
        images: Vec::new(),
        manifests: Vec::new(),
        present: Vec::new(),
    };
    let mut seen_manifests = HashSet::new();
    for (image, log_id) in all
        .iter()
        .filter(|(i, _)| opts.images.is_empty() || opts.images.contains(i))
    {
        let Some(local) = local_name(repo, image, remote, mirror)? else {
            report.skipped.push(image.clone());
            continue;
        };
        // Our own log of the image is the source's, byte for byte, when nothing changed
        // there since the last pull: then the log (which grows with the history) is not
        // fetched.
        let ours = store::published(&repo.root).join(format!("refs/{local}/log"));
        if fs::read(&ours).is_ok_and(|b| Id::of(&b) == *log_id) {
            report.images.push(PulledReport {
                image: local.clone(),
                from: image.clone(),
                revisions: 0,
                tags: 0,
                newest: repo.catalog.newest(&local)?.map(|r| r.number),
            });
            continue;
        }
        let path = format!("refs/{image}/log");
        let text = src.get(&path)?.ok_or_else(|| {
            Error::NotFound(format!(
                "{} lists image `{image}` but has no {path}",
                src.describe()
            ))
        })?;
        let log = refs::decode_log(&text).map_err(|p| inconsistent(src, &path, p))?;
        let (pulled, moved) = plan_image(repo, &local, &log, opts.force, src)?;
        for r in &pulled.revisions {
            if !seen_manifests.insert(r.id) {
                continue;
            }
            if store::manifest_path(&repo.root, &r.id).exists() {
                plan.present.push(r.id);
            } else {
                plan.manifests.push(r.id);
            }
        }
        report.revisions += pulled.revisions.len() as u64;
        report.tags += moved;
        report.images.push(PulledReport {
            image: local.clone(),
            from: image.clone(),
            revisions: pulled.revisions.len() as u64,
            tags: moved,
            newest: log.revisions.last().map(|r| r.number),
        });
        plan.images.push(pulled);
    }
    Ok(plan)
}

/// The name a source's image takes here; `None` to leave it alone (a pulled copy of a third
/// repository's image, whose remote this repository does not have).
fn local_name(
    repo: &Repository,
    image: &str,
    remote: Option<&str>,
    mirror: bool,
) -> Result<Option<String>> {
    if let Some((prefix, _)) = image.split_once('/') {
        if !mirror || repo.catalog.remote(prefix)?.is_none() {
            return Ok(None);
        }
        return Ok(Some(image.to_string()));
    }
    if mirror {
        if repo.catalog.remote(image)?.is_some() {
            return Err(invalid(format!(
                "the source's image `{image}` has the name of a remote here; pull without --mirror, or rename the remote"
            )));
        }
        return Ok(Some(image.to_string()));
    }
    let remote = remote.expect("a pull without --mirror is from a remote");
    Ok(Some(format!("{remote}/{image}")))
}

/// What one image adds: its revisions this repository lacks, and its tags; refuses a
/// diverged image and (without `force`) a tag moving back. Returns the image and the number
/// of tags set or moved.
fn plan_image(
    repo: &Repository,
    local: &str,
    log: &ImageLog,
    force: bool,
    src: &dyn Source,
) -> Result<(PulledImage, u64)> {
    let mine: HashMap<u32, Id> = repo
        .catalog
        .revisions(local)?
        .into_iter()
        .map(|r| (r.number, r.id))
        .collect();
    let mut revisions = Vec::new();
    for r in &log.revisions {
        match mine.get(&r.number) {
            Some(id) if *id == r.id => {}
            Some(id) => {
                return Err(invalid(format!(
                    "image `{local}` has diverged: its revision {} is {} here and {} in {}; nothing was pulled (pull it as another remote's image, or `aurum rmimage {local}` here first)",
                    r.number,
                    id.hex(),
                    r.id.hex(),
                    src.describe()
                )))
            }
            None => revisions.push(r.clone()),
        }
    }
    let tags_here: HashMap<String, u32> = repo.catalog.tags(local)?.into_iter().collect();
    let mut moved = 0;
    for (tag, number) in &log.tags {
        match tags_here.get(tag) {
            Some(n) if n == number => continue,
            Some(n) if n > number && !force => {
                return Err(invalid(format!(
                    "tag `{local}:{tag}` would move back from revision {n} to {number}; nothing was pulled (--force moves it)"
                )))
            }
            _ => moved += 1,
        }
    }
    let exact_tags = local.contains('/');
    Ok((
        PulledImage {
            name: local.to_string(),
            revisions,
            tags: log.tags.clone(),
            exact_tags,
        },
        moved,
    ))
}

fn inconsistent(src: &dyn Source, file: &str, problem: refs::Problem) -> Error {
    Error::Inconsistent {
        file: format!("{}: {file}", src.describe()),
        problem: problem.to_string(),
    }
}

/// A manifest fetched and checked, waiting to be placed.
struct Staged {
    id: Id,
    /// The manifest file's bytes (compressed).
    packed: Vec<u8>,
    /// The blobs it names.
    blobs: Vec<Id>,
}

/// The blob ids an encoded manifest names: its files' chunks, and the catalog snapshots of
/// the repositories it embeds.
fn blob_ids(raw: &[u8]) -> Result<Vec<Id>> {
    let mut out = Vec::new();
    for e in Manifest::decode(raw)?.entries {
        if let Some(r) = crate::format::embedded::decode_record(&e)? {
            out.extend(r.catalog.iter().map(|c| c.id));
        }
        if let Kind::File { chunks, .. } = e.kind {
            out.extend(chunks.into_iter().map(|c| c.id));
        }
    }
    Ok(out)
}

/// A pack fetched and checked, waiting in the staging directory to be registered.
struct Checked {
    id: Id,
    size: u64,
    entries: Vec<IndexEntry>,
    file: PathBuf,
}

/// The fetching half of a pull: everything lands in the staging directory, checked.
struct Fetch<'a> {
    repo: &'a Repository,
    src: &'a dyn Source,
    stage: &'a Path,
    progress: &'a dyn Progress,
}

impl Fetch<'_> {
    /// Fetches (or finds staged, and checks again) the manifests.
    fn manifests(&self, ids: &[Id]) -> Result<Vec<Staged>> {
        let dir = self.stage.join("manifests");
        fs::create_dir_all(&dir).at(&dir)?;
        self.progress
            .phase("fetching manifests", Some(ids.len() as u64), false);
        let mut out = Vec::new();
        for id in ids {
            let staged = dir.join(format!("{}.mf", id.hex()));
            let packed = match fs::read(&staged) {
                Ok(b) if manifest::decompress_file(&b[..], id).is_ok() => b,
                _ => {
                    let path = manifest::path(id);
                    let b = self.src.get(&path)?.ok_or_else(|| {
                        Error::NotFound(format!(
                            "{} lists revision {} but has no {path}; run `aurum verify` there",
                            self.src.describe(),
                            id.short()
                        ))
                    })?;
                    crate::sys::write_atomic(&staged, &b, Default::default())?;
                    b
                }
            };
            let raw = manifest::decompress_file(&packed[..], id).map_err(|p| {
                corrupt(format!(
                    "manifest {} from {} is damaged ({p}); nothing was registered",
                    id.short(),
                    self.src.describe()
                ))
            })?;
            // Decoded here so that a manifest that does not decode is refused before
            // anything is registered.
            out.push(Staged {
                id: *id,
                packed,
                blobs: blob_ids(&raw)?,
            });
            self.progress.advance(1);
        }
        self.progress.finish();
        Ok(out)
    }

    /// The blobs the manifests (fetched, or `present` here) name that this repository lacks.
    fn wanted_blobs(&self, manifests: &[Staged], present: &[Id]) -> Result<HashSet<Id>> {
        let mut named: HashSet<Id> = manifests
            .iter()
            .flat_map(|m| m.blobs.iter().copied())
            .collect();
        for id in present {
            named.extend(blob_ids(&self.repo.load_manifest_raw(id)?)?);
        }
        // Sorted, so that each batch asked is one dense range of ids.
        let mut named: Vec<Id> = named.into_iter().collect();
        named.sort_unstable();
        let cat = &self.repo.catalog;
        cat.reading(|c| {
            let mut wanted = HashSet::new();
            for part in named.chunks(1 << 16) {
                let part: Vec<&Id> = part.iter().collect();
                let has = c.has_blobs(&part)?;
                wanted.extend(
                    part.into_iter()
                        .zip(has)
                        .filter(|(_, h)| !h)
                        .map(|(id, _)| *id),
                );
            }
            Ok(wanted)
        })
    }

    /// The source's packs that hold the wanted blobs (newest first, as `packs/list` is),
    /// and the `pinned` ones (named by embedded repositories' records, fetched whole), with
    /// their sizes and indexes. Packs this repository has are never looked at.
    fn choose_packs(
        &self,
        mut wanted: HashSet<Id>,
        pinned: &HashSet<Id>,
    ) -> Result<Vec<(Id, u64, Vec<IndexEntry>)>> {
        let have: HashSet<Id> = self
            .repo
            .catalog
            .packs()?
            .into_iter()
            .map(|p| p.0)
            .collect();
        let mut pinned: HashSet<Id> = pinned.difference(&have).copied().collect();
        if wanted.is_empty() && pinned.is_empty() {
            return Ok(Vec::new());
        }
        let text = self
            .src
            .get("packs/list")?
            .ok_or_else(|| Error::NotFound(format!("{} has no packs/list", self.src.describe())))?;
        let list =
            refs::decode_pack_list(&text).map_err(|p| inconsistent(self.src, "packs/list", p))?;
        let dir = self.stage.join("idx");
        fs::create_dir_all(&dir).at(&dir)?;
        let mut chosen = Vec::new();
        for (pack, size) in list {
            if wanted.is_empty() && pinned.is_empty() {
                break;
            }
            if have.contains(&pack) || (wanted.is_empty() && !pinned.contains(&pack)) {
                continue;
            }
            let entries = self.index(&dir, &pack, false)?;
            if pinned.remove(&pack) || entries.iter().any(|e| wanted.contains(&e.id)) {
                for e in &entries {
                    wanted.remove(&e.id);
                }
                chosen.push((pack, size, entries));
            }
        }
        if let Some(missing) = wanted.iter().next() {
            return Err(corrupt(format!(
                "{} lacks {} blobs its revisions name (blob {} among them); run `aurum verify` there; nothing was registered",
                self.src.describe(),
                wanted.len(),
                missing.short()
            )));
        }
        if let Some(missing) = pinned.iter().next() {
            return Err(corrupt(format!(
                "{} lacks pack {}, which a repository embedded in one of its revisions holds; run `aurum verify` there; nothing was registered",
                self.src.describe(),
                missing.short()
            )));
        }
        Ok(chosen)
    }

    /// A pack's index, staged (or, with `again`, fetched anew).
    fn index(&self, dir: &Path, pack: &Id, again: bool) -> Result<Vec<IndexEntry>> {
        let staged = dir.join(format!("{}.idx", pack.hex()));
        if !again {
            if let Some(entries) = fs::read(&staged).ok().and_then(|b| decode_index(&b).ok()) {
                return Ok(entries);
            }
        }
        let path = packfmt::path(pack, "idx");
        let bytes = self.src.get(&path)?.ok_or_else(|| {
            Error::NotFound(format!(
                "{} lists pack {} but has no {path}",
                self.src.describe(),
                pack.short()
            ))
        })?;
        let entries = decode_index(&bytes).map_err(|e| {
            corrupt(format!(
                "{}: {path} does not decode ({e}); nothing was registered",
                self.src.describe()
            ))
        })?;
        crate::sys::write_atomic(&staged, &bytes, Default::default())?;
        Ok(entries)
    }

    /// Fetches the chosen packs into the staging directory, each from where an interrupted
    /// pull stopped, and checks each whole; a pack that fails the check after a resumed
    /// fetch is fetched once more from its start, with its index.
    fn packs(
        &self,
        packs: &[(Id, u64, Vec<IndexEntry>)],
        report: &mut PullReport,
    ) -> Result<Vec<Checked>> {
        let dir = self.stage.join("packs");
        fs::create_dir_all(&dir).at(&dir)?;
        let total = packs.iter().map(|p| p.1).sum();
        self.progress.phase("fetching packs", Some(total), true);
        let mut out = Vec::new();
        for (id, size, entries) in packs {
            let file = dir.join(format!("{}.pack.part", id.hex()));
            let had = self.fetch_pack(id, *size, &file)?;
            report.resumed_bytes += had;
            self.progress.advance(had);
            let mut entries = entries.clone();
            if let Err(e) = check_pack(&file, id, *size, &entries) {
                if had == 0 {
                    return Err(refused(self.src, id, e));
                }
                log::info!(
                    "pack {} staged by an earlier pull fails its check ({e}): fetching it again",
                    id.short()
                );
                fs::remove_file(&file).at(&file)?;
                entries = self.index(&self.stage.join("idx"), id, true)?;
                self.fetch_pack(id, *size, &file)?;
                check_pack(&file, id, *size, &entries).map_err(|e| refused(self.src, id, e))?;
            }
            out.push(Checked {
                id: *id,
                size: *size,
                entries,
                file,
            });
        }
        self.progress.finish();
        Ok(out)
    }

    /// Appends what `file` lacks of pack `id`; returns the bytes it already held.
    fn fetch_pack(&self, id: &Id, size: u64, file: &Path) -> Result<u64> {
        // A pull killed between placing a pack and recording it left it in packs/: taken
        // back to be checked like anything staged.
        let placed = store::pack_path(&self.repo.root, id, "pack");
        if !file.exists() && placed.exists() {
            fs::rename(&placed, file).at(file)?;
        }
        let mut had = fs::metadata(file).map(|m| m.len()).unwrap_or(0);
        if had > size {
            fs::remove_file(file).at(file)?;
            had = 0;
        }
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
            .at(file)?;
        if had < size {
            self.src
                .fetch_from(&packfmt::path(id, "pack"), had, size, &mut f, self.progress)?;
        }
        f.flush().at(file)?;
        f.sync_all().at(file)?;
        Ok(had)
    }
}

fn refused(src: &dyn Source, id: &Id, e: Error) -> Error {
    corrupt(format!(
        "pack {} from {} is damaged ({e}); nothing was registered: run `aurum verify` there",
        id.short(),
        src.describe()
    ))
}

/// Checks a fetched pack: its size, its bytes against its name (a pack's id is the hash of
/// its bytes), and every blob its index lists against the blob's id.
fn check_pack(file: &Path, id: &Id, size: u64, entries: &[IndexEntry]) -> Result<()> {
    let bytes = fs::read(file).at(file)?;
    if bytes.len() as u64 != size {
        return Err(corrupt(format!(
            "it has {} bytes, its list says {size}",
            bytes.len()
        )));
    }
    if Id::of(&bytes) != *id {
        return Err(corrupt("its bytes do not match its name"));
    }
    let mut sorted: Vec<&IndexEntry> = entries.iter().collect();
    sorted.sort_by_key(|e| (e.offset, e.inner));
    let mut group: Option<(u64, Vec<u8>)> = None;
    for e in sorted {
        let payload = bytes
            .get(e.offset as usize..(e.offset as usize).saturating_add(e.stored_len as usize))
            .ok_or_else(|| corrupt(format!("blob {} lies outside the pack", e.id.short())))?;
        if e.codec != Codec::ZstdGroup {
            store::decode_blob(e, payload)?;
            continue;
        }
        if group.as_ref().is_none_or(|(at, _)| *at != e.offset) {
            group = Some((e.offset, store::decode_group_payload(&e.id, payload)?));
        }
        let body = &group.as_ref().expect("set above").1;
        let raw = body
            .get(e.inner as usize..(e.inner as usize).saturating_add(e.raw_len as usize))
            .ok_or_else(|| corrupt(format!("blob {} lies outside its group", e.id.short())))?;
        if Id::of(raw) != e.id {
            return Err(corrupt(format!(
                "blob {} does not match its id",
                e.id.short()
            )));
        }
    }
    Ok(())
}

/// Registers the checked packs (file, index, catalog row, each durable before the next) and
/// places the manifests. The catalog rows and `packs/list` are written under the publishing
/// marker: a pull killed between them leaves the list to the next command to rebuild (a
/// re-run finds the packs registered and has none left to list itself).
fn register(repo: &mut Repository, packs: &[Checked], manifests: &[Staged]) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let publishing = repo.publishing()?;
    for p in packs {
        let to = store::pack_path(&repo.root, &p.id, "pack");
        let dir = to.parent().expect("packs/XX");
        store::create_public_dir(&repo.root, dir)?;
        fs::set_permissions(&p.file, fs::Permissions::from_mode(store::PUBLIC_FILE)).at(&p.file)?;
        fs::rename(&p.file, &to).at(&to)?;
        crate::sys::sync_dir(dir)?;
        let mut entries = p.entries.clone();
        store::write_atomic(
            &repo.root,
            &store::pack_path(&repo.root, &p.id, "idx"),
            &packfmt::encode_index(&mut entries),
        )?;
        repo.catalog.add_pack(&FinishedPack {
            id: p.id,
            size: p.size,
            entries,
        })?;
    }
    if !packs.is_empty() {
        repo.write_pack_list()?;
    }
    publishing.done();
    for m in manifests {
        let path = store::manifest_path(&repo.root, &m.id);
        if !path.exists() {
            store::write_atomic(&repo.root, &path, &m.packed)?;
        }
    }
    Ok(())
}

/// The signatures files of the pulled images' revisions, old and new (a revision signed again
/// at the source, after a key rotation or to refresh its signing time, is so here too). With
/// `keys`, every new revision must carry a trusted signature, or nothing is pulled: the check
/// comes before anything is fetched or written.
fn fetch_signatures(
    repo: &Repository,
    src: &dyn Source,
    plan: &Plan,
    report: &PullReport,
    keys: &TrustedKeys,
) -> Result<Vec<(String, u32, Vec<Signature>)>> {
    let mut out = Vec::new();
    for im in &report.images {
        let new: HashMap<u32, &LoggedRevision> = plan
            .images
            .iter()
            .find(|p| p.name == im.image)
            .map(|p| p.revisions.iter().map(|r| (r.number, r)).collect())
            .unwrap_or_default();
        let mut numbers: Vec<u32> = repo
            .catalog
            .revisions(&im.image)?
            .iter()
            .map(|r| r.number)
            .collect();
        numbers.extend(new.keys());
        for n in numbers {
            let path = signature::path(&im.from, n);
            let sigs = match src.get(&path)? {
                Some(d) => signature::decode(&d).map_err(|p| inconsistent(src, &path, p))?,
                None => Vec::new(),
            };
            if let Some(r) = new.get(&n).filter(|_| !keys.is_empty()) {
                let want = Wanted {
                    image: &im.image,
                    number: n,
                    id: r.id,
                    parent: r.parent,
                    created: Some(r.created),
                };
                trust::accept(&sigs, &want, keys).map_err(|why| {
                    Error::Untrusted(format!(
                        "refusing to pull {}@{n} ({}) from {}: {why}. Nothing was pulled",
                        im.from,
                        r.id.short(),
                        src.describe()
                    ))
                })?;
            }
            if !sigs.is_empty() {
                out.push((im.image.clone(), n, sigs));
            }
        }
    }
    Ok(out)
}

/// Writes the signatures files that differ from ours; returns how many.
fn write_signatures(repo: &Repository, sigs: &[(String, u32, Vec<Signature>)]) -> Result<u64> {
    let mut written = 0;
    for (image, number, s) in sigs {
        if repo.signatures(image, *number)? != *s {
            repo.write_signatures(image, *number, s)?;
            written += 1;
        }
    }
    Ok(written)
}

/// Writes the catalog rows (one transaction) and then the published refs, under the
/// publishing marker (a pull killed in between is published by the next command).
fn record(repo: &mut Repository, images: &[PulledImage]) -> Result<()> {
    let publishing = repo.publishing()?;
    if let Err(e) = repo.catalog.record_pulled(images) {
        publishing.done();
        return Err(e);
    }
    // Packs first, as a capture does: a node that sees the new heads must find their packs
    // listed (written again here also when every pack was registered by an earlier run).
    repo.write_pack_list()?;
    for im in images {
        repo.write_refs(&im.name)?;
    }
    publishing.done();
    Ok(())
}

/// Copies the deltas the source precomputed towards the pulled manifests and blobs (as
/// listed in its `deltas/list`; a source without one has none to give). Deltas are checked by
/// the node that applies them (the result against its id), like the ones made here.
fn pull_deltas(repo: &Repository, src: &dyn Source, manifests: &[Staged]) -> Result<u64> {
    let Some(text) = src.get("deltas/list")? else {
        return Ok(0);
    };
    let list = refs::decode_delta_list(&text).map_err(|p| inconsistent(src, "deltas/list", p))?;
    let targets: HashSet<Id> = manifests
        .iter()
        .flat_map(|m| std::iter::once(m.id).chain(m.blobs.iter().copied()))
        .collect();
    let dir = store::published(&repo.root).join("deltas");
    let mut copied = 0;
    for (name, _) in list {
        let wanted = delta_target(&name).is_some_and(|t| targets.contains(&t));
        if !wanted || dir.join(&name).exists() {
            continue;
        }
        if let Some(bytes) = src.get(&format!("deltas/{name}"))? {
            store::write_cached(&repo.root, &dir.join(&name), &bytes)?;
            copied += 1;
        }
    }
    if copied > 0 {
        crate::repo::publish::write_delta_list(&repo.root)?;
    }
    Ok(copied)
}

/// The target (a blob or manifest id) of a delta cache file named as in `deltas/list`.
fn delta_target(name: &str) -> Option<Id> {
    crate::format::delta::cache_target(name.split('/').nth(1)?)
}

/// A template version to pull, with the signatures the source has for its text.
struct PulledTemplate {
    class: ClassName,
    text: String,
    note: String,
    signatures: Vec<TemplateSignature>,
}

/// The source's template versions, oldest first (its newest only when it has no
/// `templates/log`), each with its signatures. With `keys`, the newest version of each class
/// (the one installers here would be handed) must carry a trusted signature, or nothing is
/// pulled: the check comes before anything is written, as for revisions.
fn fetch_templates(src: &dyn Source, url: &str, keys: &TrustedKeys) -> Result<Vec<PulledTemplate>> {
    let versions: Vec<(String, String, String)> = match src.get("templates/log")? {
        Some(text) => refs::decode_template_log(&text)
            .map_err(|p| inconsistent(src, "templates/log", p))?
            .into_iter()
            .map(|v| {
                (
                    v.class,
                    v.text,
                    format!(
                        "pulled from {url} (version {} there: {})",
                        v.version, v.note
                    ),
                )
            })
            .collect(),
        None => newest_templates(src, url)?,
    };
    let mut out: Vec<PulledTemplate> = Vec::new();
    for (class, text, note) in versions {
        let class = ClassName::new(class)?;
        let id = Id::of(text.as_bytes());
        let path = signature::template_path(class.as_str(), &id);
        let signatures = match src.get(&path)? {
            Some(d) => signature::decode::<TemplateSignature>(&d)
                .map_err(|p| inconsistent(src, &path, p))?,
            None => Vec::new(),
        };
        out.push(PulledTemplate {
            class,
            text,
            note,
            signatures,
        });
    }
    if !keys.is_empty() {
        for (i, t) in out.iter().enumerate() {
            if out[i + 1..].iter().any(|later| later.class == t.class) {
                continue;
            }
            let id = Id::of(t.text.as_bytes());
            let bytes = signature::encode(&t.signatures);
            let sigs = (!t.signatures.is_empty()).then_some(&bytes[..]);
            crate::template::store::unsigned_because(&t.class, &id, sigs, keys).map_err(|why| {
                Error::Untrusted(format!(
                    "refusing to pull the template of class {} ({}) from {}: {why}. Nothing was \
                     pulled",
                    t.class,
                    id.short(),
                    src.describe()
                ))
            })?;
        }
    }
    Ok(out)
}

/// The source's template set (`sigs/_template-set`), to be written here with the templates.
/// With `keys`, the source must have one a trusted key signed that names exactly the newest
/// template of each class pulled (else a replayed older text, or a class left out, would
/// reach this repository's installers). A set older than the one this repository holds (its
/// newest trusted block, or without keys its newest sound block by the same key) is refused:
/// a source replaying old templates. Nothing is written before these checks.
fn fetch_template_set(
    repo: &Repository,
    src: &dyn Source,
    templates: &[PulledTemplate],
    keys: &TrustedKeys,
) -> Result<Option<Vec<TemplateSetSignature>>> {
    let path = signature::TEMPLATE_SET_PATH;
    let set = match src.get(path)? {
        Some(d) => {
            signature::decode::<TemplateSetSignature>(&d).map_err(|p| inconsistent(src, path, p))?
        }
        None => Vec::new(),
    };
    let refuse = |why: String| {
        Error::Untrusted(format!(
            "refusing to pull the templates from {}: {why}. Nothing was pulled",
            src.describe()
        ))
    };
    let sign = "`aurum template sign --sign-key KEY` there";
    if !keys.is_empty() && !templates.is_empty() {
        let (i, _) = trust::accept_template_set(&set, keys).map_err(|r| {
            refuse(format!(
                "its template set ({path}), which names the current template of every class, \
                 {}",
                match r {
                    trust::Refusal::Unsigned =>
                        format!("is missing; sign the templates there with {sign}"),
                    trust::Refusal::Untrusted(k) => format!(
                        "is signed only by keys not trusted here ({}); sign it with {sign}",
                        k.join(", ")
                    ),
                    trust::Refusal::Revoked(k) => format!(
                        "is signed only by revoked keys ({}); sign it with {sign}",
                        k.join(", ")
                    ),
                    trust::Refusal::Altered(why) =>
                        format!("does not check out ({why}): it was altered after signing"),
                }
            ))
        })?;
        let mut newest: Vec<(String, Id)> = Vec::new();
        for t in templates {
            let id = Id::of(t.text.as_bytes());
            match newest.iter_mut().find(|(c, _)| c == t.class.as_str()) {
                Some(slot) => slot.1 = id,
                None => newest.push((t.class.to_string(), id)),
            }
        }
        newest.sort();
        let current = TemplateSet {
            signed: 0,
            classes: newest,
        };
        let differs = crate::repo::signatures::set_differences(&set[i].set, &current);
        if !differs.is_empty() {
            return Err(refuse(format!(
                "its newest trusted template set does not name the templates it publishes \
                 ({}): an older signed text replayed or a class left out, or templates changed \
                 since the set was signed ({sign} signs it again)",
                differs.join("; ")
            )));
        }
    }
    if set.is_empty() {
        return Ok(None);
    }
    // Anti-rollback against the set held here.
    let held = repo.template_set()?;
    let newest = |sigs: &[TemplateSetSignature]| -> Option<(String, i64)> {
        trust::check_template_set(sigs, keys)
            .into_iter()
            .filter(|c| match keys.is_empty() {
                true => c.standing != trust::Standing::Bad,
                false => c.standing == trust::Standing::Trusted,
            })
            .max_by_key(|c| c.signed)
            .map(|c| (c.key, c.signed))
    };
    if let (Some((held_key, held_at)), Some((key, at))) = (newest(&held), newest(&set)) {
        if held_at > at && (!keys.is_empty() || held_key == key) {
            return Err(refuse(format!(
                "its template set (signed by {key} at {at}) is older than the one this \
                 repository holds (signed by {held_key} at {held_at}): a source replaying old \
                 templates (a rollback). Pull from a source that is up to date, or sign the \
                 templates there again ({sign})"
            )));
        }
    }
    Ok(Some(set))
}

/// Saves the pulled template versions, each as a new version here when it differs from this
/// repository's newest of its class (so a class's history comes along, and a text both have
/// is not saved twice), and their signatures. Returns how many versions were saved.
fn save_templates(repo: &mut Repository, templates: &[PulledTemplate]) -> Result<u64> {
    let mut saved = 0;
    for t in templates {
        let (_, new) = crate::template::store::save(repo, &t.class, &t.text, &t.note)?;
        saved += u64::from(new);
        let id = Id::of(t.text.as_bytes());
        if !t.signatures.is_empty()
            && repo.template_signatures(t.class.as_str(), &id)? != t.signatures
        {
            repo.write_template_signatures(t.class.as_str(), &id, &t.signatures)?;
        }
    }
    Ok(saved)
}

/// The newest version of each of the source's templates, from `templates/CLASSES`.
fn newest_templates(src: &dyn Source, url: &str) -> Result<Vec<(String, String, String)>> {
    let Some(text) = src.get("templates/CLASSES")? else {
        return Ok(Vec::new());
    };
    let classes =
        refs::decode_classes(&text).map_err(|p| inconsistent(src, "templates/CLASSES", p))?;
    let mut out = Vec::new();
    for class in classes {
        let path = format!("templates/{class}.toml");
        if let Some(bytes) = src.get(&path)? {
            let text = String::from_utf8(bytes)
                .map_err(|_| corrupt(format!("{url}: {path} is not text")))?;
            out.push((class.to_string(), text, format!("pulled from {url}")));
        }
    }
    Ok(out)
}

/// Records a remote: `url` is `http://…`, `ssh://[user@]host/path` or a directory (made
/// absolute). Refused when an image has the name (its images would be `NAME/IMAGE`).
pub fn add_remote(repo: &mut Repository, name: &str, url: &str, mirror: bool) -> Result<String> {
    crate::name::check("remote", name)?;
    if repo.catalog.image_exists(name)? {
        return Err(invalid(format!(
            "there is an image called `{name}`: a remote cannot have an image's name (its images land as {name}/IMAGE); pick another name"
        )));
    }
    let url = if url.contains("://") {
        if !(url.starts_with("http://") || url.starts_with("https://") || url.starts_with("ssh://"))
        {
            return Err(invalid(format!(
                "`{url}`: a remote is http://HOST:PORT, ssh://[user@]host/path or a directory"
            )));
        }
        url.to_string()
    } else {
        let p = Path::new(url);
        let abs = if p.is_absolute() {
            p.to_path_buf()
        } else {
            std::env::current_dir().map_err(Error::Os)?.join(p)
        };
        abs.display().to_string()
    };
    repo.catalog.add_remote(name, &url, mirror)?;
    Ok(url)
}

/// What `remote remove` did (or, as a dry run, would do).
#[derive(Clone, Debug, Serialize)]
pub struct RemoteRemoved {
    pub remote: String,
    /// Images removed with it (`--prune`).
    pub images: Vec<String>,
    pub dry_run: bool,
}

/// Forgets a remote; with `prune`, also removes the images pulled from it (`NAME/…`, tags
/// and all). With `dry_run`, only says what it would remove.
pub fn remove_remote(
    repo: &mut Repository,
    name: &str,
    prune: bool,
    dry_run: bool,
) -> Result<RemoteRemoved> {
    if repo.catalog.remote(name)?.is_none() {
        return Err(Error::NotFound(format!(
            "no remote `{name}`; `aurum remote list` lists them"
        )));
    }
    let prefix = format!("{name}/");
    let mut images = Vec::new();
    if prune {
        for image in repo.catalog.images()? {
            if image.name.starts_with(&prefix) {
                images.push(image.name);
            }
        }
    }
    if !dry_run {
        for image in &images {
            repo.remove_image(image, true)?;
        }
        repo.catalog.remove_remote(name)?;
    }
    Ok(RemoteRemoved {
        remote: name.to_string(),
        images,
        dry_run,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::Lock;

    /// A repository holding one pack of a few blobs (grouped and alone); returns the pack's
    /// path, id, size and index.
    fn one_pack(dir: &Path) -> (PathBuf, Id, u64, Vec<IndexEntry>) {
        let root = dir.join("repo");
        crate::repo::init(&root).unwrap();
        let repo = Repository::open(&root, Lock::Shared).unwrap();
        let mut w = repo.blob_writer().unwrap();
        for n in 0..5u8 {
            let data = vec![n; 10_000 + usize::from(n)];
            let id = Id::of(&data);
            assert!(w.claim(&id).unwrap());
            if n < 3 {
                w.put_grouped(&id, &data).unwrap();
            } else {
                let (codec, payload) = store::compress(&data);
                w.put(&id, codec, data.len() as u32, &payload).unwrap();
            }
        }
        w.finish().unwrap();
        let (id, size, _) = repo.catalog.packs().unwrap()[0];
        let entries = repo.catalog.pack_blobs(&id).unwrap();
        (store::pack_path(&root, &id, "pack"), id, size, entries)
    }

    #[test]
    fn a_pack_is_checked_whole_and_blob_by_blob() {
        let dir = tempfile::tempdir().unwrap();
        let (path, id, size, entries) = one_pack(dir.path());
        check_pack(&path, &id, size, &entries).unwrap();
        // Its size, its name, and an index that lies about a blob are each refused.
        assert!(check_pack(&path, &id, size + 1, &entries).is_err());
        assert!(check_pack(&path, &Id::of(b"other"), size, &entries).is_err());
        let mut lying = entries.clone();
        lying[0].id = Id::of(b"not this blob");
        assert!(check_pack(&path, &id, size, &lying).is_err());
        let mut outside = entries.clone();
        outside[1].offset = size + 10;
        assert!(check_pack(&path, &id, size, &outside).is_err());
        // One byte changed.
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let bad = dir.path().join("bad.pack");
        fs::write(&bad, &bytes).unwrap();
        assert!(check_pack(&bad, &id, size, &entries).is_err());
    }

    #[test]
    fn staging_keys_are_file_names() {
        assert_eq!(staging_key(Some("super"), "http://x"), "remote-super");
        let k = staging_key(None, "ssh://root@h/srv/aurum");
        assert!(
            k.starts_with("url-") && k.len() == 20 && !k.contains('/'),
            "{k}"
        );
        assert_eq!(delta_target("ab/not-a-delta"), None);
    }
}
