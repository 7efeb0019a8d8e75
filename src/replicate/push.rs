//! `aurum push`: a pull run the other way. To a directory it opens the repository there and
//! pulls from this one as a local source (the same code, the same checks). Over ssh
//! ([`push_ssh`]) it reads what DEST has (its `packs/list` and the logs of the images pushed),
//! sends what DEST lacks as a small repository layout into a staging directory under
//! `DEST/tmp/`, and runs `aurum pull --mirror` on that directory there: DEST checks and
//! records everything with its own pull, so a push is as safe to kill as a pull.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{source, PullOptions, PullReport};
use crate::capture::remote::SshUrl;
use crate::error::{invalid, Error, IoContext, Result};
use crate::format::manifest;
use crate::format::refs;
use crate::format::signature::TEMPLATE_DIR;
use crate::format::Id;
use crate::progress::Progress;
use crate::repo::{publish, Lock, Repository};
use crate::store;

/// What a push is asked to do.
#[derive(Clone, Debug, Default)]
pub struct PushOptions {
    /// A directory, or `ssh://[user@]host[:port]/path`.
    pub dest: String,
    /// Images to push; none: every image.
    pub images: Vec<String>,
    /// Let a tag at DEST move to an older revision.
    pub force: bool,
    /// The ssh command and its options.
    pub ssh: Vec<String>,
    /// The aurum command on DEST.
    pub aurum: Vec<String>,
}

/// Pushes the repository at `root` to `opts.dest`.
pub fn push(root: &Path, opts: &PushOptions, progress: &dyn Progress) -> Result<PullReport> {
    if let Some(url) = SshUrl::parse(&opts.dest) {
        return push_ssh(root, &url?, opts, progress);
    }
    let mut dest = Repository::open(Path::new(&opts.dest), Lock::Shared)?;
    let pull = PullOptions {
        source: root.display().to_string(),
        images: opts.images.clone(),
        mirror: true,
        force: opts.force,
        ..PullOptions::default()
    };
    super::pull(&mut dest, &pull, progress)
}

/// Pushes over ssh (see the module documentation).
pub fn push_ssh(
    root: &Path,
    url: &SshUrl,
    opts: &PushOptions,
    progress: &dyn Progress,
) -> Result<PullReport> {
    let repo = Repository::open(root, Lock::Shared)?;
    let dest = source::open(&url.canonical(), &opts.ssh, &Default::default())?;
    let images = if opts.images.is_empty() {
        repo.catalog
            .images()?
            .into_iter()
            .map(|i| i.name)
            .filter(|n| !n.contains('/'))
            .collect()
    } else {
        opts.images.clone()
    };
    let key = format!(
        "push-{}",
        &Id::of(format!("{}{:?}", url.canonical(), std::time::SystemTime::now()).as_bytes()).hex()
            [..16]
    );
    let local = store::tmp_dir(root).join(&key);
    let _ = fs::remove_dir_all(&local);
    let result = stage(
        &repo,
        dest.as_ref(),
        &images,
        &local.join(store::PUBLISHED),
        progress,
    )
    .and_then(|()| send(url, opts, &local, &key, &images, progress));
    let _ = fs::remove_dir_all(&local);
    result
}

/// Lays out in `public` (a local staging directory) what DEST lacks of `images`: their logs
/// and refs, the manifests of the revisions DEST lacks, and the packs holding their blobs
/// that DEST does not have.
fn stage(
    repo: &Repository,
    dest: &dyn source::Source,
    images: &[String],
    public: &Path,
    progress: &dyn Progress,
) -> Result<()> {
    progress.phase("finding what the destination lacks", None, false);
    let dest_packs: HashSet<Id> = match dest.get("packs/list")? {
        Some(t) => refs::decode_pack_list(&t)
            .map_err(|p| invalid(format!("{}: packs/list: {p}", dest.describe())))?
            .into_iter()
            .map(|p| p.0)
            .collect(),
        None => HashSet::new(),
    };
    let mut files: BTreeMap<PathBuf, Vec<u8>> = BTreeMap::new();
    let mut manifests = Vec::new();
    for image in images {
        repo.require_image(image)?;
        let theirs: HashSet<(u32, Id)> = match dest.get(&format!("refs/{image}/log"))? {
            Some(t) => refs::decode_log(&t)
                .map_err(|p| invalid(format!("{}: refs/{image}/log: {p}", dest.describe())))?
                .revisions
                .iter()
                .map(|r| (r.number, r.id))
                .collect(),
            None => HashSet::new(),
        };
        for r in repo.catalog.revisions(image)? {
            if !theirs.contains(&(r.number, r.id)) {
                manifests.push(r.id);
            }
        }
        files.extend(publish::refs(&repo.catalog, image)?);
    }
    let mut logs = Vec::new();
    for image in images {
        let log = files
            .get(&PathBuf::from(format!("refs/{image}/log")))
            .expect("publish::refs writes the log");
        logs.push((image.as_str(), Id::of(log)));
    }
    files.insert(PathBuf::from("refs/IMAGES"), refs::encode_images(logs));
    files.insert(PathBuf::from("FORMAT"), publish::format_text().into_bytes());
    files.extend(publish::templates(&repo.catalog)?);
    // The packs holding the blobs of those revisions, unless DEST has the pack.
    let mut packs: BTreeMap<Id, u64> = BTreeMap::new();
    let sizes: std::collections::HashMap<Id, u64> = repo
        .catalog
        .packs()?
        .into_iter()
        .map(|p| (p.0, p.1))
        .collect();
    // What the repositories embedded in those revisions hold comes whole (see
    // `repo::embedded`): their packs, and their manifests beside the revisions'.
    let mut pins = crate::repo::embedded::Pins::default();
    for id in &manifests {
        pins.add_manifest(&repo.root, id)?;
    }
    for pack in pins.packs.iter().filter(|p| !dest_packs.contains(p)) {
        packs.insert(*pack, sizes.get(pack).copied().unwrap_or(0));
    }
    let pinned: Vec<Id> = pins
        .manifests
        .iter()
        .filter(|id| !manifests.contains(id))
        .copied()
        .collect();
    let mut seen = HashSet::new();
    for id in &manifests {
        for blob in super::blob_ids(&repo.load_manifest_raw(id)?)? {
            if !seen.insert(blob) {
                continue;
            }
            let (pack, _) = repo.catalog.blob(&blob)?.ok_or_else(|| {
                Error::Corrupt(format!(
                    "blob {} is missing from the repository; run `aurum verify`",
                    blob.short()
                ))
            })?;
            if !dest_packs.contains(&pack) {
                packs.insert(pack, sizes.get(&pack).copied().unwrap_or(0));
            }
        }
    }
    files.insert(
        PathBuf::from("packs/list"),
        refs::encode_pack_list(packs.iter().map(|(id, size)| (*id, *size))),
    );
    for (rel, bytes) in &files {
        let p = public.join(rel);
        fs::create_dir_all(p.parent().expect("under public")).at(&p)?;
        fs::write(&p, bytes).at(&p)?;
    }
    let link = |rel: String| -> Result<()> {
        let from = store::published(&repo.root).join(&rel);
        let to = public.join(&rel);
        fs::create_dir_all(to.parent().expect("under public")).at(&to)?;
        fs::hard_link(&from, &to)
            .or_else(|_| fs::copy(&from, &to).map(|_| ()))
            .at(&to)
    };
    for id in manifests.iter().chain(&pinned) {
        link(manifest::path(id))?;
    }
    // Every revision's signatures, so that DEST has those made or renewed since.
    for image in images {
        for r in repo.catalog.revisions(image)? {
            let rel = crate::format::signature::path(image, r.number);
            if store::published(&repo.root).join(&rel).exists() {
                link(rel)?;
            }
        }
    }
    // Every template's signatures (sigs/_templates/CLASS/ID), which DEST's pull carries over
    // with the templates.
    if store::published(&repo.root)
        .join(crate::format::signature::TEMPLATE_SET_PATH)
        .exists()
    {
        link(crate::format::signature::TEMPLATE_SET_PATH.to_string())?;
    }
    let tdir = store::published(&repo.root).join(TEMPLATE_DIR);
    for class in read_names(&tdir)? {
        for file in read_names(&tdir.join(&class))? {
            link(format!("{TEMPLATE_DIR}/{class}/{file}"))?;
        }
    }
    for id in packs.keys() {
        link(crate::format::pack::path(id, "pack"))?;
        link(crate::format::pack::path(id, "idx"))?;
    }
    // The deltas this repository keeps towards what is sent, for DEST's nodes.
    let targets: HashSet<Id> = seen.into_iter().chain(manifests.iter().copied()).collect();
    let deltas: Vec<(String, u64)> = refs::decode_delta_list(&publish::delta_list(&repo.root)?)
        .map_err(|p| invalid(format!("{}: deltas/list: {p}", repo.root.display())))?
        .into_iter()
        .filter(|(name, _)| super::delta_target(name).is_some_and(|t| targets.contains(&t)))
        .collect();
    for (name, _) in &deltas {
        link(format!("deltas/{name}"))?;
    }
    let list = public.join("deltas/list");
    fs::create_dir_all(public.join("deltas")).at(&list)?;
    fs::write(&list, refs::encode_delta_list(deltas)).at(&list)?;
    progress.finish();
    Ok(())
}

/// Copies the staging directory `local` to `DEST/tmp/KEY` (one tar stream over ssh), runs
/// `aurum pull --mirror` there on it, and removes it.
fn send(
    url: &SshUrl,
    opts: &PushOptions,
    local: &Path,
    key: &str,
    images: &[String],
    progress: &dyn Progress,
) -> Result<PullReport> {
    let top = url.path.trim_end_matches('/');
    let staging = format!("{top}/tmp/{key}");
    let q = |s: &str| shell_words::quote(s).into_owned();
    progress.phase("sending", None, true);
    let mut child = ssh(
        url,
        opts,
        &format!("mkdir -p {0} && tar -x -C {0}", q(&staging)),
    )?
    .stdin(Stdio::piped())
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .map_err(|e| Error::Remote(format!("cannot run ssh: {e}")))?;
    let sent = {
        let mut counter = Counting {
            inner: child.stdin.take().expect("piped"),
            n: 0,
        };
        let mut tar = tar::Builder::new(&mut counter);
        tar.append_dir_all(".", local).map_err(Error::Os)?;
        tar.finish().map_err(Error::Os)?;
        drop(tar);
        counter.n
    };
    let out = child.wait_with_output().map_err(Error::Os)?;
    if !out.status.success() {
        return Err(Error::Remote(format!(
            "{}: copying the objects to {staging} failed ({}): {}",
            url.canonical(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    progress.finish();
    let mut pull: Vec<String> = opts.aurum.iter().map(|w| q(w)).collect();
    pull.extend(
        ["--repo", top, "pull", "--mirror", "--json", "--no-progress"]
            .iter()
            .map(|w| q(w)),
    );
    if opts.force {
        pull.push("--force".into());
    }
    pull.push(q(&format!("{staging}/{}", store::PUBLISHED)));
    pull.extend(images.iter().map(|i| q(i)));
    let script = format!("{}; s=$?; rm -rf {}; exit $s", pull.join(" "), q(&staging));
    let out = ssh(url, opts, &script)?
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Remote(format!("cannot run ssh: {e}")))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(127) {
        return Err(Error::Remote(format!(
            "{}: `{}` is not installed there (or not in PATH): a push over ssh runs `aurum pull` on the destination; install aurum there or give its path with --aurum-command",
            url.canonical(),
            opts.aurum.join(" ")
        )));
    }
    if !out.status.success() {
        return Err(Error::Remote(format!(
            "{}: the pull on the destination failed: {}",
            url.canonical(),
            stderr.trim().trim_start_matches("aurum: error: ")
        )));
    }
    let mut report: PullReport = serde_json::from_slice(&out.stdout).map_err(|e| {
        Error::Remote(format!(
            "{}: the destination's pull said something this aurum cannot read ({e}); are both ends the same aurum version?",
            url.canonical()
        ))
    })?;
    report.source = url.canonical();
    report.bytes = sent;
    Ok(report)
}

fn ssh(url: &SshUrl, opts: &PushOptions, script: &str) -> Result<Command> {
    source::ssh_command(url, &opts.ssh, script)
}

/// A writer that counts what passes.
struct Counting<W> {
    inner: W,
    n: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The names in directory `dir` (none when it does not exist).
fn read_names(dir: &Path) -> Result<Vec<String>> {
    match fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| {
                e.map(|e| e.file_name().to_string_lossy().into_owned())
                    .at(dir)
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).at(dir),
    }
}
