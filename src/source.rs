//! Where a node gets revisions from: a local repository directory, or an HTTP server holding
//! the repository's static layout (`aurum serve`, nginx, a cache, a `python3 -m http.server`).
//!
//! The HTTP client reads only plain files: refs to find a revision, its manifest, `packs/list`
//! and the pack indexes (cached on the node; they never change) to locate blobs, then the
//! blobs themselves as HTTP Range requests, neighbouring records coalesced into one request and
//! several requests in flight. Every blob is checked against its id before it is handed on; a
//! server that sends wrong bytes stops the update with the blob's name. The HTTP proxy
//! settings of the environment (`http_proxy`, `no_proxy`) are honoured.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::catalog::NodeReport;
use crate::delta::{self, Want};
use crate::error::{corrupt, invalid, Error, IoContext, Result};
use crate::format::manifest::Manifest;
use crate::format::pack::{decode_index, Codec, IndexEntry};
use crate::format::Id;
use crate::progress::Progress;
use crate::repo::{Lock, Repository};
use crate::store::{self, decode_blob};

/// A revision a node is asked to go to.
#[derive(Clone, Debug)]
pub struct Target {
    pub image: Option<String>,
    pub number: Option<u32>,
    pub id: Id,
}

impl Target {
    /// `compute@3 1f2e3d4c`, or the short id alone.
    pub fn name(&self) -> String {
        match (&self.image, self.number) {
            (Some(i), Some(n)) => format!("{i}@{n} {}", self.id.short()),
            (Some(i), None) => format!("{i} {}", self.id.short()),
            _ => self.id.short(),
        }
    }
}

/// Receives each fetched blob, verified.
pub type BlobSinkFn<'a> = dyn Fn(&Id, Vec<u8>) -> Result<()> + Sync + 'a;

/// A repository as a node sees it.
pub trait RevisionSource: Sync {
    /// For messages and reports.
    fn describe(&self) -> String;
    /// `IMAGE`, `IMAGE@N`, `IMAGE:TAG` or a revision id.
    fn resolve(&self, spec: &str) -> Result<Target>;
    /// A revision's manifest, checked and validated.
    fn manifest(&self, id: &Id) -> Result<Manifest>;
    /// A revision's manifest, fetched as a delta against `base` (a manifest the node holds,
    /// encoded) when the source can; else whole.
    fn manifest_from(&self, id: &Id, base: (&Id, &[u8])) -> Result<Manifest> {
        let _ = base;
        self.manifest(id)
    }
    /// Hands every blob of `ids` to `sink`; returns the bytes that crossed the network.
    fn fetch(&self, ids: &[Id], sink: &BlobSinkFn, progress: &dyn Progress) -> Result<u64>;
    /// Tells the server what the node did (no-op without a server).
    fn report(&self, report: &NodeReport) -> Result<()>;
    /// Every byte received from the network so far (refs, manifests, indexes, blobs,
    /// deltas); 0 for a source that is not reached over a network.
    fn bytes_received(&self) -> u64 {
        0
    }
    /// Asks for binary deltas of blobs against bases the node holds (see [`crate::delta`]);
    /// hands each delta the server has to `sink` (unchecked: the caller rebuilds and checks
    /// the blob). Returns the bytes that crossed the network. A source that makes no deltas
    /// (a local repository, a plain web server) hands none: the caller fetches whole blobs.
    fn fetch_deltas(
        &self,
        _wants: &[(Want, u32)],
        _sink: &DeltaSinkFn,
        _progress: &dyn Progress,
    ) -> Result<u64> {
        Ok(0)
    }
}

/// Receives each delta the server sent, for the target blob named.
pub type DeltaSinkFn<'a> = dyn Fn(&Id, Vec<u8>) -> Result<()> + Sync + 'a;

/// A repository directory on this machine (or an NFS mount of the master's).
pub struct LocalRepo {
    root: PathBuf,
}

impl LocalRepo {
    pub fn new(root: &Path) -> Result<LocalRepo> {
        Repository::open(root, Lock::Shared)?;
        Ok(LocalRepo {
            root: root.to_path_buf(),
        })
    }
}

impl RevisionSource for LocalRepo {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn resolve(&self, spec: &str) -> Result<Target> {
        let r = Repository::open(&self.root, Lock::Shared)?.resolve(spec)?;
        Ok(Target {
            image: Some(r.image),
            number: Some(r.number),
            id: r.id,
        })
    }

    fn manifest(&self, id: &Id) -> Result<Manifest> {
        Repository::open(&self.root, Lock::Shared)?.load_manifest(id)
    }

    fn fetch(&self, ids: &[Id], sink: &BlobSinkFn, progress: &dyn Progress) -> Result<u64> {
        use crate::apply::BlobSource;
        let repo = Repository::open(&self.root, Lock::Shared)?;
        let blobs = repo.blobs()?;
        progress.phase("copying blobs", Some(ids.len() as u64), false);
        for id in ids {
            sink(id, blobs.get(id)?)?;
            progress.advance(1);
        }
        progress.finish();
        Ok(0)
    }

    fn report(&self, _: &NodeReport) -> Result<()> {
        Ok(())
    }
}

/// Records coalesced into one Range request are at most this far apart...
const COALESCE_GAP: u64 = 512;
/// ...and one request asks for at most this much.
const MAX_REQUEST: u64 = 16 << 20;
/// Requests in flight at once.
const IN_FLIGHT: usize = 4;

/// A repository served over HTTP.
pub struct HttpRepo {
    base: String,
    agent: ureq::Agent,
    /// Where pack indexes are kept between updates (they never change).
    cache: PathBuf,
    /// Body bytes received, of every kind (refs, manifests, indexes, packs, deltas).
    received: AtomicU64,
}

impl HttpRepo {
    /// `base` is the URL of the repository's top (where FORMAT is).
    pub fn new(base: &str, cache: &Path) -> Result<HttpRepo> {
        if base.starts_with("https://") {
            return Err(invalid(format!(
                "{base}: aurum speaks plain HTTP (every blob and manifest is checked against its \
                 id, so TLS adds no integrity); give the server as http://HOST:8035"
            )));
        }
        if !base.starts_with("http://") {
            return Err(invalid(format!(
                "{base}: give the server as an http:// URL, e.g. http://{}",
                if base.contains(':') {
                    base.to_string()
                } else {
                    format!("{base}:8035")
                }
            )));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(300)))
            .http_status_as_error(false)
            .build()
            .into();
        let me = HttpRepo {
            base: base.trim_end_matches('/').to_string(),
            agent,
            cache: cache.to_path_buf(),
            received: AtomicU64::new(0),
        };
        let format = me.get("FORMAT")?;
        if !String::from_utf8_lossy(&format).starts_with("aurum repository format") {
            return Err(invalid(format!(
                "{base} does not serve an aurum repository (its /FORMAT is not aurum's)"
            )));
        }
        Ok(me)
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base, path)
    }

    fn net(&self, path: &str, e: impl std::fmt::Display) -> Error {
        Error::Remote(format!("{}: {e}", self.url(path)))
    }

    /// Reads an answer's body (at most `limit` bytes), counting it in `received`.
    fn body(
        &self,
        resp: &mut ureq::http::Response<ureq::Body>,
        path: &str,
        limit: u64,
    ) -> Result<Vec<u8>> {
        let body = resp
            .body_mut()
            .with_config()
            .limit(limit)
            .read_to_vec()
            .map_err(|e| self.net(path, e))?;
        self.received
            .fetch_add(body.len() as u64, Ordering::Relaxed);
        Ok(body)
    }

    /// GETs a whole file (up to 1 GiB) of the repository, e.g. `templates/compute.toml`.
    pub fn get(&self, path: &str) -> Result<Vec<u8>> {
        let mut resp = self
            .agent
            .get(self.url(path))
            .call()
            .map_err(|e| self.net(path, e))?;
        match resp.status().as_u16() {
            200 => self.body(&mut resp, path, 1 << 30),
            404 => Err(Error::NotFound(format!(
                "{} not found on the server",
                self.url(path)
            ))),
            s => Err(self.net(path, format!("HTTP {s}"))),
        }
    }

    /// GETs bytes `start..=end` of a file.
    fn get_range(&self, path: &str, start: u64, end: u64) -> Result<Vec<u8>> {
        let mut resp = self
            .agent
            .get(self.url(path))
            .header("Range", &format!("bytes={start}-{end}"))
            .call()
            .map_err(|e| self.net(path, e))?;
        let status = resp.status().as_u16();
        let body = self.body(&mut resp, path, 1 << 34)?;
        match status {
            206 if body.len() as u64 == end - start + 1 => Ok(body),
            // A server that ignores Range sends the whole file.
            200 if body.len() as u64 > end => Ok(body[start as usize..=end as usize].to_vec()),
            s => Err(self.net(
                path,
                format!(
                    "HTTP {s} for bytes {start}-{end} ({} bytes came)",
                    body.len()
                ),
            )),
        }
    }

    fn pack_index(&self, pack: &Id) -> Result<Vec<IndexEntry>> {
        let cached = self.cache.join(format!("{}.idx", pack.hex()));
        if let Ok(bytes) = std::fs::read(&cached) {
            if let Ok(entries) = decode_index(&bytes) {
                return Ok(entries);
            }
        }
        let hex = pack.hex();
        let path = format!("packs/{}/{hex}.idx", &hex[..2]);
        let bytes = self.get(&path)?;
        let entries = decode_index(&bytes).map_err(|e| self.net(&path, e))?;
        std::fs::create_dir_all(&self.cache).at(&self.cache)?;
        let tmp = cached.with_extension("tmp");
        std::fs::write(&tmp, &bytes).at(&tmp)?;
        std::fs::rename(&tmp, &cached).at(&cached)?;
        Ok(entries)
    }
}

impl HttpRepo {
    /// A missing ref file means the server has no such image.
    fn no_image(&self, image: &str, e: Error) -> Error {
        match e {
            Error::NotFound(_) => Error::NotFound(format!(
                "{} has no image `{image}` (`aurum lsimage` on the server lists them)",
                self.base
            )),
            e => e,
        }
    }

    /// The number of an image's newest revision with this id, for the node's records
    /// (`compute@7`); none when the server's list does not say.
    fn number_of(&self, image: &str, id: &Id) -> Option<u32> {
        let list = self.get(&format!("refs/{image}/revisions")).ok()?;
        String::from_utf8_lossy(&list)
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(_, v)| Id::from_hex(v.trim()).as_ref() == Some(id))
            .filter_map(|(k, _)| k.parse().ok())
            .max()
    }
}

fn ref_name_ok(s: &str) -> bool {
    crate::repo::check_name("image", s).is_ok()
}

impl RevisionSource for HttpRepo {
    fn describe(&self) -> String {
        self.base.clone()
    }

    fn bytes_received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    fn resolve(&self, spec: &str) -> Result<Target> {
        let id_of = |text: Vec<u8>, what: &str| -> Result<Id> {
            Id::from_hex(String::from_utf8_lossy(&text).trim())
                .ok_or_else(|| corrupt(format!("{what} on the server does not hold a revision id")))
        };
        if let Some((image, n)) = spec.split_once('@') {
            let number: u32 = n.parse().map_err(|_| {
                invalid(format!(
                    "`{spec}`: the part after @ must be a revision number"
                ))
            })?;
            if !ref_name_ok(image) {
                return Err(invalid(format!("`{image}` is not an image name")));
            }
            let list = self
                .get(&format!("refs/{image}/revisions"))
                .map_err(|e| self.no_image(image, e))?;
            let text = String::from_utf8_lossy(&list);
            let id = text
                .lines()
                .filter_map(|l| l.split_once(' '))
                .find(|(k, _)| k.parse() == Ok(number))
                .and_then(|(_, v)| Id::from_hex(v.trim()))
                .ok_or_else(|| {
                    Error::NotFound(format!(
                        "image `{image}` has no revision {number} on {}",
                        self.base
                    ))
                })?;
            return Ok(Target {
                image: Some(image.into()),
                number: Some(number),
                id,
            });
        }
        if let Some((image, tag)) = spec.split_once(':') {
            if !ref_name_ok(image) || !ref_name_ok(tag) {
                return Err(invalid(format!("`{spec}` is not IMAGE:TAG")));
            }
            let text = self
                .get(&format!("refs/{image}/tags/{tag}"))
                .map_err(|e| match e {
                    Error::NotFound(_) => match self.get(&format!("refs/{image}/head")) {
                        Ok(_) => Error::NotFound(format!(
                            "image `{image}` has no tag `{tag}` on {}",
                            self.base
                        )),
                        Err(e) => self.no_image(image, e),
                    },
                    e => e,
                })?;
            let id = id_of(text, "the tag")?;
            return Ok(Target {
                image: Some(image.into()),
                number: self.number_of(image, &id),
                id,
            });
        }
        if let Some(id) = Id::from_hex(&spec.to_ascii_lowercase()) {
            return Ok(Target {
                image: None,
                number: None,
                id,
            });
        }
        if ref_name_ok(spec) {
            let text = self
                .get(&format!("refs/{spec}/head"))
                .map_err(|e| self.no_image(spec, e))?;
            let id = id_of(text, "the image head")?;
            return Ok(Target {
                image: Some(spec.into()),
                number: self.number_of(spec, &id),
                id,
            });
        }
        Err(invalid(format!(
            "`{spec}`: from an HTTP server, name a revision as IMAGE, IMAGE@N, IMAGE:TAG or its full 64-digit id"
        )))
    }

    fn manifest(&self, id: &Id) -> Result<Manifest> {
        let hex = id.hex();
        let path = format!("manifests/{}/{hex}.mf", &hex[..2]);
        let packed = self.get(&path)?;
        let mut raw = Vec::new();
        zstd::stream::read::Decoder::new(&packed[..])?
            .take(1 << 32)
            .read_to_end(&mut raw)
            .map_err(|e| {
                corrupt(format!(
                    "manifest {} from the server is damaged: {e}",
                    id.short()
                ))
            })?;
        if Id::of(&raw) != *id {
            return Err(corrupt(format!(
                "manifest {} from {} does not match its id; refusing it",
                id.short(),
                self.base
            )));
        }
        Manifest::decode(&raw)
    }

    fn manifest_from(&self, id: &Id, base: (&Id, &[u8])) -> Result<Manifest> {
        let want = Want {
            target: *id,
            base: vec![*base.0],
        };
        let got: Mutex<Option<Vec<u8>>> = Mutex::new(None);
        let quiet = crate::progress::Quiet;
        let r = self.fetch_deltas(
            &[(want, 0)],
            &|_, d| {
                *got.lock().expect("lock") = Some(d);
                Ok(())
            },
            &quiet,
        );
        if let (Ok(_), Some(d)) = (r, got.into_inner().expect("lock")) {
            if let Ok(raw) = delta::decode(base.1, &d, id) {
                return Manifest::decode(&raw);
            }
        }
        self.manifest(id)
    }

    fn fetch(&self, ids: &[Id], sink: &BlobSinkFn, progress: &dyn Progress) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        // Where each wanted blob lies.
        let wanted: std::collections::HashSet<Id> = ids.iter().copied().collect();
        let list = self.get("packs/list")?;
        let mut found: HashMap<Id, (Id, IndexEntry)> = HashMap::new();
        // The uncompressed size of every group holding a wanted blob.
        let mut group_raw: HashMap<(Id, u64), u64> = HashMap::new();
        for line in String::from_utf8_lossy(&list).lines() {
            let Some(pack) = line.split_whitespace().next().and_then(Id::from_hex) else {
                continue;
            };
            let index = self.pack_index(&pack)?;
            let mut hit = false;
            for e in &index {
                if wanted.contains(&e.id) && !found.contains_key(&e.id) {
                    found.insert(e.id, (pack, e.clone()));
                    hit = true;
                }
            }
            if hit {
                for e in &index {
                    if e.codec == Codec::ZstdGroup {
                        *group_raw.entry((pack, e.offset)).or_default() += u64::from(e.raw_len);
                    }
                }
            }
            if found.len() == wanted.len() {
                break;
            }
        }
        if let Some(missing) = ids.iter().find(|id| !found.contains_key(id)) {
            return Err(Error::NotFound(format!(
                "blob {} is not in the repository at {}; was the revision garbage-collected?",
                missing.short(),
                self.base
            )));
        }
        // A group of which the node wants less than half is better asked of `aurum serve`
        // blob by blob (each compressed alone) than fetched whole.
        let mut wanted_raw: HashMap<(Id, u64), u64> = HashMap::new();
        for (pack, e) in found.values() {
            if e.codec == Codec::ZstdGroup {
                *wanted_raw.entry((*pack, e.offset)).or_default() += u64::from(e.raw_len);
            }
        }
        let singles: Vec<(Want, u32)> = found
            .values()
            .filter(|(pack, e)| {
                e.codec == Codec::ZstdGroup
                    && wanted_raw[&(*pack, e.offset)] * 2 < group_raw[&(*pack, e.offset)]
            })
            .map(|(_, e)| {
                (
                    Want {
                        target: e.id,
                        base: Vec::new(),
                    },
                    e.raw_len,
                )
            })
            .collect();
        let mut moved_singles = 0;
        if !singles.is_empty() {
            let got: Mutex<Vec<Id>> = Mutex::new(Vec::new());
            moved_singles = self.fetch_deltas(
                &singles,
                &|id, d| {
                    let data = delta::decode(&[], &d, id).map_err(|_| {
                        corrupt(format!(
                            "the server sent wrong bytes for blob {}; nothing was written with them",
                            id.short()
                        ))
                    })?;
                    sink(id, data)?;
                    got.lock().expect("lock").push(*id);
                    Ok(())
                },
                progress,
            )?;
            for id in got.into_inner().expect("lock") {
                found.remove(&id);
            }
        }
        // Records (a blob, or a group holding wanted blobs), then coalesced ranges.
        let mut records: HashMap<(Id, u64), (u32, Vec<IndexEntry>)> = HashMap::new();
        for (pack, e) in found.into_values() {
            records
                .entry((pack, e.offset))
                .or_insert((e.stored_len, Vec::new()))
                .1
                .push(e);
        }
        let mut records: Vec<((Id, u64), (u32, Vec<IndexEntry>))> = records.into_iter().collect();
        records.sort_by(|a, b| a.0.cmp(&b.0));
        type Record = (u64, u32, Vec<IndexEntry>);
        let mut ranges: Vec<(Id, Vec<Record>)> = Vec::new();
        for ((pack, offset), (len, members)) in records {
            let joins = ranges.last().is_some_and(|(p, recs)| {
                let (first, _, _) = &recs[0];
                let (last_off, last_len, _) = recs.last().expect("non-empty");
                *p == pack
                    && offset <= last_off + u64::from(*last_len) + COALESCE_GAP
                    && offset + u64::from(len) - first <= MAX_REQUEST
            });
            if joins {
                ranges
                    .last_mut()
                    .expect("checked")
                    .1
                    .push((offset, len, members));
            } else {
                ranges.push((pack, vec![(offset, len, members)]));
            }
        }
        let total: u64 = ranges
            .iter()
            .map(|(_, recs)| {
                let (a, _, _) = &recs[0];
                let (b, l, _) = recs.last().expect("non-empty");
                b + u64::from(*l) - a
            })
            .sum();
        progress.phase("fetching", Some(total), true);
        let moved = AtomicU64::new(0);
        let queue = Mutex::new(ranges.into_iter());
        let first_error: Mutex<Option<Error>> = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..IN_FLIGHT {
                s.spawn(|| loop {
                    if first_error.lock().expect("lock").is_some() {
                        return;
                    }
                    let Some((pack, recs)) = queue.lock().expect("lock").next() else {
                        return;
                    };
                    if let Err(e) = self.fetch_range(&pack, &recs, sink, &moved, progress) {
                        first_error.lock().expect("lock").get_or_insert(e);
                        return;
                    }
                });
            }
        });
        progress.finish();
        if let Some(e) = first_error.into_inner().expect("lock") {
            return Err(e);
        }
        Ok(moved.into_inner() + moved_singles)
    }

    fn fetch_deltas(
        &self,
        wants: &[(Want, u32)],
        sink: &DeltaSinkFn,
        progress: &dyn Progress,
    ) -> Result<u64> {
        if wants.is_empty() {
            return Ok(0);
        }
        // Batches of at most MAX_BATCH records and MAX_BATCH_BYTES of targets.
        let mut batches: Vec<Vec<Want>> = vec![Vec::new()];
        let mut bytes = 0u64;
        for (w, len) in wants {
            let last = batches.last_mut().expect("non-empty");
            if !last.is_empty()
                && (last.len() >= delta::MAX_BATCH
                    || bytes + u64::from(*len) > delta::MAX_BATCH_BYTES)
            {
                batches.push(Vec::new());
                bytes = 0;
            }
            bytes += u64::from(*len);
            batches.last_mut().expect("non-empty").push(w.clone());
        }
        progress.phase("fetching deltas", Some(wants.len() as u64), false);
        let moved = AtomicU64::new(0);
        let unsupported = std::sync::atomic::AtomicBool::new(false);
        let queue = Mutex::new(batches.into_iter());
        let first_error: Mutex<Option<Error>> = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..IN_FLIGHT {
                s.spawn(|| loop {
                    if first_error.lock().expect("lock").is_some()
                        || unsupported.load(Ordering::Relaxed)
                    {
                        return;
                    }
                    let Some(batch) = queue.lock().expect("lock").next() else {
                        return;
                    };
                    match self.delta_batch(&batch, sink, &moved, progress) {
                        Ok(true) => {}
                        Ok(false) => unsupported.store(true, Ordering::Relaxed),
                        Err(e) => {
                            first_error.lock().expect("lock").get_or_insert(e);
                        }
                    }
                });
            }
        });
        progress.finish();
        if let Some(e) = first_error.into_inner().expect("lock") {
            return Err(e);
        }
        Ok(moved.into_inner())
    }

    fn report(&self, report: &NodeReport) -> Result<()> {
        let body = serde_json::to_vec(report).expect("serialisable");
        let resp = self
            .agent
            .post(self.url("api/v1/reports"))
            .content_type("application/json")
            .send(&body[..])
            .map_err(|e| self.net("api/v1/reports", e))?;
        match resp.status().as_u16() {
            200..=299 => Ok(()),
            s => Err(self.net(
                "api/v1/reports",
                format!("HTTP {s} (a plain web server takes no reports)"),
            )),
        }
    }
}

impl HttpRepo {
    /// One delta request; `false` when the server makes no deltas (a plain web server).
    fn delta_batch(
        &self,
        batch: &[Want],
        sink: &DeltaSinkFn,
        moved: &AtomicU64,
        progress: &dyn Progress,
    ) -> Result<bool> {
        let path = "api/v1/deltas";
        let body = delta::encode_request(batch);
        let mut resp = self
            .agent
            .post(self.url(path))
            .content_type("application/octet-stream")
            .send(&body[..])
            .map_err(|e| self.net(path, e))?;
        match resp.status().as_u16() {
            200 => {}
            // No API here, or an older server: whole blobs it is.
            404 | 405 | 501 => return Ok(false),
            s => return Err(self.net(path, format!("HTTP {s}"))),
        }
        moved.fetch_add(body.len() as u64, Ordering::Relaxed);
        let answer = self.body(&mut resp, path, 1 << 30)?;
        moved.fetch_add(answer.len() as u64, Ordering::Relaxed);
        let mut r = &answer[..];
        let mut n = 0;
        while let Some(d) = delta::read_answer(&mut r)? {
            let Some(w) = batch.get(n) else {
                return Err(corrupt(format!(
                    "{}: the delta answer has more records than the request",
                    self.url(path)
                )));
            };
            n += 1;
            if let Some(d) = d {
                sink(&w.target, d)?;
            }
            progress.advance(1);
        }
        Ok(true)
    }

    fn fetch_range(
        &self,
        pack: &Id,
        recs: &[(u64, u32, Vec<IndexEntry>)],
        sink: &BlobSinkFn,
        moved: &AtomicU64,
        progress: &dyn Progress,
    ) -> Result<()> {
        let start = recs[0].0;
        let (last_off, last_len, _) = recs.last().expect("non-empty");
        let end = last_off + u64::from(*last_len) - 1;
        for (offset, len, members) in recs {
            log::debug!(
                "range of pack {}: record at {offset} ({len} bytes, {:?}) for {} blobs ({} bytes)",
                pack.short(),
                members[0].codec,
                members.len(),
                members.iter().map(|m| u64::from(m.raw_len)).sum::<u64>()
            );
        }
        let hex = pack.hex();
        let bytes = self.get_range(&format!("packs/{}/{hex}.pack", &hex[..2]), start, end)?;
        moved.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        progress.advance(bytes.len() as u64);
        for (offset, len, members) in recs {
            let at = (offset - start) as usize;
            let payload = &bytes[at..at + *len as usize];
            let wrong = |e: &IndexEntry| {
                corrupt(format!(
                    "the server sent wrong bytes for blob {} (pack {}); nothing was written with them. Check the server's repository with `aurum verify`",
                    e.id.short(),
                    pack.short()
                ))
            };
            if members[0].codec == Codec::ZstdGroup {
                let body = store::decode_group_payload(&members[0].id, payload)
                    .map_err(|_| wrong(&members[0]))?;
                for e in members {
                    let data = body
                        .get(e.inner as usize..e.inner as usize + e.raw_len as usize)
                        .filter(|d| Id::of(d) == e.id)
                        .ok_or_else(|| wrong(e))?;
                    sink(&e.id, data.to_vec())?;
                }
            } else {
                for e in members {
                    sink(&e.id, decode_blob(e, payload).map_err(|_| wrong(e))?)?;
                }
            }
        }
        Ok(())
    }
}
