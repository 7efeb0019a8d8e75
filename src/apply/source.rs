//! Where a node gets revisions from: a local repository directory, or an HTTP server holding
//! the repository's static layout (`aurum serve`, nginx, a cache, a `python3 -m http.server`).
//!
//! The HTTP client reads plain files: refs to find a revision, its manifest, `packs/list`
//! and the pack indexes (cached on the node; they never change) to locate blobs, then the
//! blobs themselves as HTTP Range requests, neighbouring records coalesced into one request and
//! several requests in flight. From `aurum serve` itself (not a cache tier) it asks for
//! deltas, and where up to 4,096 blobs lie instead (`POST /api/v1/locate`). Every blob is
//! checked against its id before it is handed on; a server that sends wrong bytes stops the
//! update with the blob's name. The HTTP proxy settings of the environment (`http_proxy`,
//! `no_proxy`) are honoured.
//!
//! A server that stalls must not hang a node silently: every connection has a connect timeout
//! and every read an idle timeout ([`HttpOptions`]); GETs (idempotent: the repository's files
//! never change under a name, or are replaced whole) are retried with jittered exponential
//! backoff, each retry warned about on stderr and on the progress line; the final error names the
//! server, the file and the time waited. The delta API is optional: whatever goes wrong with
//! it (an error status, a refused connection, a timeout), the node warns once and fetches
//! whole blobs from the static layout, which alone is always enough.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rayon::prelude::*;

use crate::catalog::NodeReport;
use crate::error::{corrupt, invalid, Error, IoContext, Result};
use crate::format::manifest::{self, FileProblem, Manifest};
use crate::format::pack::{self, decode_index, Codec, IndexEntry};
use crate::format::refs;
use crate::format::signature;
use crate::format::Id;
use crate::progress::Progress;
use crate::repo::delta::{self, Want};
use crate::repo::{Lock, Repository, RevSpec};
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

/// Receives each fetched blob, verified: borrowed when it lies in a buffer the source keeps
/// (a fresh root writes most blobs straight from the decompressed group, without a copy), owned
/// when the source made it for the sink.
pub type BlobSinkFn<'a> = dyn Fn(&Id, Cow<[u8]>) -> Result<()> + Sync + 'a;

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
    /// A file of the repository's published directory (`packs/XX/ID.pack`), as stored,
    /// unchecked: what rebuilding an embedded repository copies.
    fn public_file(&self, rel: &str) -> Result<Vec<u8>>;
    /// The published signatures of `image@number` (`sigs/IMAGE/N`), unread; none when the
    /// revision was never signed.
    fn signatures(&self, image: &str, number: u32) -> Result<Option<Vec<u8>>>;
    /// Every byte received from the network so far (refs, manifests, indexes, blobs,
    /// deltas); 0 for a source that is not reached over a network.
    fn bytes_received(&self) -> u64 {
        0
    }
    /// Asks for binary deltas of blobs against bases the node holds (see [`crate::repo::delta`]);
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
        use crate::store::BlobSource;
        let repo = Repository::open(&self.root, Lock::Shared)?;
        let blobs = repo.blobs_for_command()?;
        progress.phase("copying blobs", Some(ids.len() as u64), false);
        // In parallel: decompressing and checking are the work, and a fresh root's sink
        // writes files.
        ids.par_iter().try_for_each(|id| -> Result<()> {
            sink(id, Cow::Owned(blobs.get(id)?))?;
            progress.advance(1);
            Ok(())
        })?;
        progress.finish();
        Ok(0)
    }

    fn report(&self, _: &NodeReport) -> Result<()> {
        Ok(())
    }

    fn public_file(&self, rel: &str) -> Result<Vec<u8>> {
        crate::repo::read_public(&self.root, rel)
    }

    fn signatures(&self, image: &str, number: u32) -> Result<Option<Vec<u8>>> {
        let path = store::published(&self.root).join(signature::path(image, number));
        match std::fs::read(&path) {
            Ok(data) => Ok(Some(data)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).at(&path),
        }
    }
}

/// Records coalesced into one Range request are at most this far apart...
const COALESCE_GAP: u64 = 512;
/// ...and one request asks for at most this much (a record larger than that is asked alone).
/// Small enough that the four workers share the work evenly to its end (on a fresh root each
/// decompresses and writes what its range holds) and that the bytes held per worker stay
/// small; a request costs a fraction of a millisecond on a kept-alive connection (issue #23).
const MAX_REQUEST: u64 = 2 << 20;
/// Requests in flight at once.
const IN_FLIGHT: usize = 4;

/// How patient a node is with an HTTP server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpOptions {
    /// Time to establish a connection.
    pub connect_timeout: Duration,
    /// Time a read (or write) may wait without one byte moving: a slow server that keeps
    /// sending is never cut off, a silent one is after this long.
    pub idle_timeout: Duration,
    /// Tries of each GET on each server (1 = no retry).
    pub attempts: u32,
    /// The HTTP proxies requests go through.
    pub proxies: crate::proxy::Proxies,
    /// Sent as `Authorization: Bearer` with the node's reports (`aurum serve` takes writes
    /// with a token only); never with reads.
    pub token: Option<String>,
    /// For an https:// server: the CA its certificate must be signed by; none: the system's
    /// trust store.
    pub ca: Option<PathBuf>,
}

impl Default for HttpOptions {
    /// 10 s to connect (a server on the same network answers in milliseconds; a dead one is
    /// worth knowing about quickly), 60 s of silence (a loaded server behind a cache can pause
    /// for seconds; a minute of nothing is a stall), 4 tries.
    fn default() -> HttpOptions {
        HttpOptions {
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            attempts: 4,
            proxies: crate::proxy::Proxies::none(),
            token: None,
            ca: None,
        }
    }
}

/// One try of a request that did not work out.
enum Failure {
    /// Worth another try: no connection, a timeout, a 5xx.
    Transient(String),
    /// Another try would get the same answer (a 404, wrong bytes).
    Final(Error),
    /// The server is busy (503 with Retry-After): come back after `after`. Not counted as a
    /// try, up to [`MAX_BUSY`] of waiting in all.
    Busy { why: String, after: Duration },
    /// This server lacks the file (a mirror not yet complete, or behind the master): another
    /// server may have it; when none has, the error says so for all of them.
    Missing(Error),
}

/// The longest a node waits in all on a server that says it is busy.
const MAX_BUSY: Duration = Duration::from_secs(3600);

/// The Retry-After of an answer, in seconds (its date form is not used by aurum serve), at
/// most 5 minutes.
fn retry_after(resp: &ureq::http::Response<ureq::Body>) -> Option<Duration> {
    let secs: u64 = resp
        .headers()
        .get("Retry-After")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs.min(300)))
}

/// Whether a repository path names a file that never changes (named by its hash): one cut
/// short may be resumed with a Range request.
fn immutable(path: &str) -> bool {
    path.starts_with("manifests/") || (path.starts_with("packs/") && path != "packs/list")
}

/// A repository served over HTTP, by one server or several holding the same repository
/// (replicas, or caches of one master): each request goes to the server that answered last;
/// one that fails, or lacks the file (404), is retried at once on the next, and a transfer cut
/// short resumes there from the byte it stopped at. Only after every server failed does the node pause (the
/// jittered backoff) before a new round.
pub struct HttpRepo {
    bases: Vec<String>,
    /// The index in `bases` of the server in use.
    current: AtomicUsize,
    agent: ureq::Agent,
    options: HttpOptions,
    /// Where pack indexes are kept between updates (they never change).
    cache: PathBuf,
    /// The private directory `cache` is in when the caller has no place to keep indexes.
    _scratch: Option<tempfile::TempDir>,
    /// Body bytes received, of every kind (refs, manifests, indexes, packs, deltas).
    received: AtomicU64,
    /// Set once the delta API failed: it is not asked again, and warned about only once.
    deltas_off: AtomicBool,
    /// Set once `POST /api/v1/locate` could not answer (no such API: a plain web server, an
    /// older aurum, a cache tier; a failure; an answer that makes no sense or leaves a blob
    /// unplaced): blobs are found through the pack indexes for the rest of the run.
    locate_off: AtomicBool,
}

/// What an optional API of `aurum serve` answered ([`HttpRepo::post_api`]).
enum ApiAnswer {
    Body(Vec<u8>),
    /// No such API: a plain web server, an older aurum, a cache tier (404, 405, 501).
    Absent,
    /// No usable answer (no connection, a stall, an error status, a body cut short): why.
    Failed(String),
}

/// Where each wanted blob lies (its pack and index entry), and the uncompressed size of every
/// group holding one.
type Places = (HashMap<Id, (Id, IndexEntry)>, HashMap<(Id, u64), u64>);

/// Checks a server URL: plain http://.
fn check_base(base: &str) -> Result<()> {
    if !base.starts_with("http://") && !base.starts_with("https://") {
        return Err(invalid(format!(
            "{base}: give the server as an http:// or https:// URL, e.g. http://{}",
            if base.contains(':') {
                base.to_string()
            } else {
                format!("{base}:8035")
            }
        )));
    }
    Ok(())
}

impl HttpRepo {
    /// `base` is the URL of the repository's top (where FORMAT is). Pack indexes are cached
    /// in `cache`; `None`: in a private temporary directory, removed when the value goes (a
    /// shared one in /tmp could be seeded by any local user).
    pub fn new(base: &str, cache: Option<&Path>, options: &HttpOptions) -> Result<HttpRepo> {
        HttpRepo::with_servers(&[base.to_string()], cache, options)
    }

    /// [`HttpRepo::new`] with several servers of the same repository, in order of
    /// preference. The first whose FORMAT answers is used first; those that did not answer
    /// stay in the list (they may be back when another fails).
    pub fn with_servers(
        bases: &[String],
        cache: Option<&Path>,
        options: &HttpOptions,
    ) -> Result<HttpRepo> {
        if bases.is_empty() {
            return Err(invalid("no server given"));
        }
        for b in bases {
            check_base(b)?;
        }
        // No total timeout: a 16 MiB range over a slow link may take minutes and is fine as
        // long as bytes keep coming; the idle timeout is what catches a stall.
        // TCP_NODELAY (ureq's default, said here because it matters): a POST's body written
        // after its head must not wait for the server's delayed ACK (issue #23).
        let agent = crate::proxy::agent(
            ureq::Agent::config_builder()
                .no_delay(true)
                .timeout_connect(Some(options.connect_timeout))
                .timeout_per_read(Some(options.idle_timeout))
                .timeout_per_write(Some(options.idle_timeout))
                .http_status_as_error(false)
                .tls_config(crate::tls::client_config(options.ca.as_deref())?),
            &options.proxies,
        );
        let scratch = match cache {
            Some(_) => None,
            None => Some(
                tempfile::Builder::new()
                    .prefix("aurum-indexes.")
                    .tempdir()
                    .map_err(Error::Os)?,
            ),
        };
        let cache = match (cache, &scratch) {
            (Some(c), _) => c.to_path_buf(),
            (None, Some(t)) => t.path().to_path_buf(),
            (None, None) => unreachable!("made just above"),
        };
        let me = HttpRepo {
            bases: bases
                .iter()
                .map(|b| b.trim_end_matches('/').to_string())
                .collect(),
            current: AtomicUsize::new(0),
            agent,
            options: HttpOptions {
                attempts: options.attempts.max(1),
                ..options.clone()
            },
            cache,
            _scratch: scratch,
            received: AtomicU64::new(0),
            deltas_off: AtomicBool::new(false),
            locate_off: AtomicBool::new(false),
        };
        // The first server whose FORMAT answers; the others are tried in turn (retried as
        // any request is), so a node whose first server is down starts on the second.
        let format = me.get("FORMAT").map_err(|e| match e {
            Error::NotFound(_) => Error::NotFound(format!(
                "{}: check the URL; `aurum serve` serves the repository at its root, a web \
                 server must serve the repository's public/ directory",
                match me.bases.len() {
                    1 => format!(
                        "{} serves no aurum repository (it has no /FORMAT)",
                        me.base()
                    ),
                    _ => format!(
                        "none of {} serves an aurum repository (none has /FORMAT)",
                        me.all_bases()
                    ),
                }
            )),
            e => e,
        })?;
        if !format.starts_with(refs::FORMAT_PREFIX.as_bytes()) {
            return Err(invalid(format!(
                "{} does not serve an aurum repository (its /FORMAT is not aurum's): check \
                 the URL; a web server must serve the repository's public/ directory",
                me.base()
            )));
        }
        if let Some(p) = me.options.proxies.for_url(me.base()) {
            log::info!("{}: through the proxy {p}", me.base());
        }
        Ok(me)
    }

    /// The server in use (after a failover, the one that took over).
    pub fn base(&self) -> &str {
        &self.bases[self.current.load(Ordering::Relaxed) % self.bases.len()]
    }

    /// Every server, for messages.
    fn all_bases(&self) -> String {
        self.bases.join(", ")
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base(), path)
    }

    fn url_at(&self, server: usize, path: &str) -> String {
        format!("{}/{}", self.bases[server], path)
    }

    fn net(&self, path: &str, e: impl std::fmt::Display) -> Error {
        Error::Remote(format!("{}: {e}", self.url(path)))
    }

    /// Reads an answer's body onto the end of `into` (at most `limit` bytes), counting every
    /// byte in `received` as it comes: a body cut short leaves what arrived in `into`, for a
    /// resumed request to go on from. The error (a timeout, a connection cut) says what went
    /// wrong with `path`.
    fn body_into(
        &self,
        resp: &mut ureq::http::Response<ureq::Body>,
        path: &str,
        limit: u64,
        into: &mut Vec<u8>,
    ) -> std::result::Result<(), String> {
        use std::io::Read;
        let mut reader = resp.body_mut().with_config().limit(limit).reader();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    into.extend_from_slice(&buf[..n]);
                    self.received.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let why = match e.get_ref().and_then(|i| i.downcast_ref::<ureq::Error>()) {
                        Some(u) => describe(u),
                        None => e.to_string(),
                    };
                    return Err(format!("reading {path}: {why}"));
                }
            }
        }
    }

    /// Reads an answer's whole body (at most `limit` bytes).
    fn body(
        &self,
        resp: &mut ureq::http::Response<ureq::Body>,
        path: &str,
        limit: u64,
    ) -> std::result::Result<Vec<u8>, String> {
        let mut body = Vec::new();
        self.body_into(resp, path, limit, &mut body)?;
        Ok(body)
    }

    /// GETs a whole file (up to 1 GiB) of the repository, e.g. `templates/compute.toml`. A
    /// file named by its hash that was cut short is resumed (on the next server when there
    /// are several) from the byte it stopped at.
    pub fn get(&self, path: &str) -> Result<Vec<u8>> {
        self.get_storable(path).map(|(bytes, _)| bytes)
    }

    /// [`Self::get`], and whether the answer may be kept: not when any part of it came with
    /// `Cache-Control: no-store` (a cache tier passes on an index it could not check yet that
    /// way, `serve --upstream`).
    fn get_storable(&self, path: &str) -> Result<(Vec<u8>, bool)> {
        let got: std::cell::RefCell<Vec<u8>> = Default::default();
        let storable = std::cell::Cell::new(true);
        let resumable = immutable(path);
        let bytes = self.retrying(path, None, &crate::progress::Quiet, |server| {
            let mut got = got.borrow_mut();
            if !resumable {
                got.clear();
            }
            let mut rq = self.agent.get(self.url_at(server, path));
            if !got.is_empty() {
                log::warn!(
                    "{}: resuming {path} at byte {}",
                    self.bases[server],
                    got.len()
                );
                rq = rq.header("Range", &format!("bytes={}-", got.len()));
            }
            let mut resp = rq.call().map_err(transient)?;
            match resp.status().as_u16() {
                206 => {}
                200 => {
                    got.clear();
                    storable.set(true);
                }
                404 => return Err(self.not_found(server, path)),
                s => return Err(self.status_failure(server, path, s, retry_after(&resp))),
            }
            let no_store = resp
                .headers()
                .get_all("cache-control")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|d| d.trim().eq_ignore_ascii_case("no-store"));
            if no_store {
                storable.set(false);
            }
            self.body_into(&mut resp, path, 1 << 30, &mut got)
                .map_err(Failure::Transient)?;
            Ok(std::mem::take(&mut *got))
        })?;
        Ok((bytes, storable.get()))
    }

    /// GETs bytes `start..=end` of a file. A transfer cut short (a server gone, a stall) is
    /// resumed from the byte it stopped at, on the next server when there are several:
    /// nothing that arrived is fetched again.
    pub fn get_range(
        &self,
        path: &str,
        start: u64,
        end: u64,
        progress: &dyn Progress,
    ) -> Result<Vec<u8>> {
        let what = format!("bytes {start}-{end}");
        let want = (end + 1).saturating_sub(start);
        let got: std::cell::RefCell<Vec<u8>> = Default::default();
        self.retrying(path, Some(&what), progress, |server| {
            let mut got = got.borrow_mut();
            let from = start + got.len() as u64;
            if !got.is_empty() {
                log::warn!(
                    "{}: resuming {path} ({what}) at byte {from}: {} bytes already here",
                    self.bases[server],
                    got.len()
                );
            }
            let mut resp = self
                .agent
                .get(self.url_at(server, path))
                .header("Range", &format!("bytes={from}-{end}"))
                .call()
                .map_err(transient)?;
            let status = resp.status().as_u16();
            if status == 404 {
                return Err(self.not_found(server, path));
            }
            if status >= 500 {
                return Err(self.status_failure(server, path, status, retry_after(&resp)));
            }
            if status == 200 {
                // A server that ignores Range sends the whole file: the part wanted is cut
                // out of it.
                let body = self
                    .body(&mut resp, path, 1 << 34)
                    .map_err(Failure::Transient)?;
                if body.len() as u64 > end && start <= end {
                    got.clear();
                    return Ok(body[start as usize..=end as usize].to_vec());
                }
                return Err(Failure::Final(self.net(
                    path,
                    format!(
                        "HTTP 200 for bytes {start}-{end} ({} bytes came)",
                        body.len()
                    ),
                )));
            }
            if status != 206 {
                return Err(Failure::Final(
                    self.net(path, format!("HTTP {status} for bytes {from}-{end}")),
                ));
            }
            let before = got.len();
            self.body_into(&mut resp, path, want - before as u64 + 1, &mut got)
                .map_err(|why| {
                    Failure::Transient(format!("{why} ({} bytes kept)", got.len() - before))
                })?;
            if got.len() as u64 != want {
                return Err(Failure::Final(self.net(
                    path,
                    format!(
                        "HTTP 206 for bytes {from}-{end} ({} bytes came)",
                        got.len() - before
                    ),
                )));
            }
            Ok(std::mem::take(&mut *got))
        })
    }

    /// A 404 for `path` from `server`. With several servers another may have the file: a
    /// mirror not yet complete, or one that lags behind (no ref yet for an image published
    /// since its last pull), so the others are asked before the node gives up. With one
    /// server it is the answer.
    fn not_found(&self, server: usize, path: &str) -> Failure {
        let e = Error::NotFound(format!(
            "{} not found on the server",
            self.url_at(server, path)
        ));
        match self.bases.len() > 1 {
            true => Failure::Missing(e),
            false => Failure::Final(e),
        }
    }

    /// An HTTP status that is not an answer: a 5xx may pass (a restarting backend, an
    /// overloaded cache), anything else will not.
    fn status_failure(
        &self,
        server: usize,
        path: &str,
        status: u16,
        retry_after: Option<Duration>,
    ) -> Failure {
        if let (503, Some(after)) = (status, retry_after) {
            return Failure::Busy {
                why: format!(
                    "HTTP 503: the server is busy, asks to come back in {} s",
                    after.as_secs()
                ),
                after,
            };
        }
        if status >= 500 {
            Failure::Transient(format!("HTTP {status}"))
        } else {
            Failure::Final(Error::Remote(format!(
                "{}: HTTP {status}",
                self.url_at(server, path)
            )))
        }
    }

    /// Runs `attempt` (given the index of the server to ask) until it succeeds, fails for
    /// good, or has been tried [`HttpOptions::attempts`] times on every server. A server
    /// that fails hands over to the next at once; once every server failed in a round, a
    /// jittered, doubling backoff before the next round. A busy server (503 + Retry-After)
    /// hands over too, and when every server is busy the node waits as asked, without
    /// counting a try. Each handover and retry is said on stderr and on the progress line,
    /// so that a stall is never silent.
    fn retrying<T>(
        &self,
        path: &str,
        part: Option<&str>,
        progress: &dyn Progress,
        attempt: impl Fn(usize) -> std::result::Result<T, Failure>,
    ) -> Result<T> {
        let started = Instant::now();
        let object = match part {
            Some(p) => format!("{path} ({p})"),
            None => path.to_string(),
        };
        let servers = self.bases.len();
        let attempts = self.options.attempts;
        let mut server = self.current.load(Ordering::Relaxed) % servers;
        let mut busy = Duration::ZERO;
        let mut round = 1;
        // This round's failures: how many, how many said busy (the shortest wait asked),
        // which servers lacked the file.
        let mut failed = 0;
        let mut missing = vec![false; servers];
        let mut busy_for: Option<Duration> = None;
        let mut noted = false;
        // Why a server that did not answer the file did not (a 404 is an answer).
        let mut silence = String::new();
        loop {
            let why = match attempt(server) {
                Ok(v) => {
                    if noted {
                        progress.note("");
                    }
                    self.current.store(server, Ordering::Relaxed);
                    return Ok(v);
                }
                Err(Failure::Final(e)) => return Err(e),
                Err(Failure::Missing(e)) => {
                    missing[server] = true;
                    if missing.iter().all(|m| *m) {
                        return Err(Error::NotFound(format!(
                            "{object} not found on any of {}",
                            self.all_bases()
                        )));
                    }
                    e.to_string()
                }
                Err(Failure::Transient(why)) => {
                    silence.clone_from(&why);
                    why
                }
                Err(Failure::Busy { why, after }) => {
                    busy_for = Some(busy_for.map_or(after, |b| b.min(after)));
                    silence.clone_from(&why);
                    why
                }
            };
            failed += 1;
            noted = true;
            let next = (server + 1) % servers;
            if failed < servers {
                log::warn!(
                    "{}: {object}: {why}; trying the next server, {}",
                    self.bases[server],
                    self.bases[next]
                );
                progress.note(&format!("server failed: trying {}", self.bases[next]));
                server = next;
                continue;
            }
            // Every server failed this round.
            let all_busy = busy_for.is_some() && busy < MAX_BUSY;
            if let (true, Some(after)) = (all_busy, busy_for) {
                // Spread the returns of many nodes told the same delay.
                let pause = after + backoff(1, Duration::from_secs(1)) / 2;
                busy += pause;
                log::warn!(
                    "{}: {object}: {why}; waiting {:.1} s",
                    self.bases[server],
                    pause.as_secs_f64()
                );
                progress.note("server busy: waiting");
                std::thread::sleep(pause);
            } else {
                if round >= attempts && missing.iter().any(|m| *m) {
                    // The servers that answered lack it and the others stayed silent through
                    // every try: it may be on those. Not a NotFound, which callers may read as
                    // "absent" (an override's head: the node would be composed without it).
                    let on = |lacks: bool| -> Vec<String> {
                        self.bases
                            .iter()
                            .zip(&missing)
                            .filter(|(_, m)| **m == lacks)
                            .map(|(b, _)| b.clone())
                            .collect()
                    };
                    let (lacking, silent) = (on(true), on(false));
                    return Err(Error::PartialNotFound {
                        message: format!(
                            "{object} is not on {}, and {} did not answer ({attempts} {}, \
                             last: {silence}): it may be there",
                            lacking.join(", "),
                            silent.join(", "),
                            if attempts == 1 { "try" } else { "tries" }
                        ),
                        unreachable: silent,
                    });
                }
                if round >= attempts {
                    return Err(Error::Unanswered {
                        server: self.all_bases(),
                        object,
                        attempts,
                        waited: started.elapsed(),
                        last: why,
                    });
                }
                let pause = backoff(round, self.options.connect_timeout);
                log::warn!(
                    "{}: {object}: {why}; retrying in {:.1} s (try {} of {attempts})",
                    self.bases[server],
                    pause.as_secs_f64(),
                    round + 1
                );
                progress.note(&format!(
                    "server stalled: retry {} of {attempts}",
                    round + 1
                ));
                std::thread::sleep(pause);
                round += 1;
            }
            (failed, busy_for) = (0, None);
            missing.fill(false);
            server = next;
        }
    }

    /// Where each of `ids` lies, read from the pack indexes `packs/list` names, newest pack
    /// first, until every id is found (a node keeps the indexes it read).
    fn places_from_indexes(&self, ids: &[Id]) -> Result<Places> {
        let wanted: std::collections::HashSet<Id> = ids.iter().copied().collect();
        let list = self.get("packs/list")?;
        let mut found: HashMap<Id, (Id, IndexEntry)> = HashMap::new();
        // The uncompressed size of every group holding a wanted blob: where its last member
        // ends (the member table comes first), the length its record header gives, as
        // `POST /api/v1/locate` answers it.
        let mut group_raw: HashMap<(Id, u64), u64> = HashMap::new();
        let packs = self.pack_list(&list)?;
        for pack in &packs {
            let pack = *pack;
            let index = self.pack_index(&pack).map_err(|e| match e {
                Error::NotFound(_) => self.inconsistent(
                    "packs/list",
                    &format!("it names pack {} whose index is missing", pack.short()),
                ),
                e => e,
            })?;
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
                        let end = u64::from(e.inner) + u64::from(e.raw_len);
                        let len = group_raw.entry((pack, e.offset)).or_default();
                        *len = (*len).max(end);
                    }
                }
            }
            if found.len() == wanted.len() {
                break;
            }
        }
        if let Some(missing) = ids.iter().find(|id| !found.contains_key(id)) {
            // The caller holds the revision's manifest, which the server still publishes: gc
            // keeps every blob of a manifest it keeps, so a blob no listed pack holds means
            // the server's published files disagree with its store.
            return Err(self.inconsistent(
                "packs/list",
                &format!(
                    "blob {} is in none of the {} packs it names (or their indexes)",
                    missing.short(),
                    packs.len()
                ),
            ));
        }
        Ok((found, group_raw))
    }

    /// Asks `aurum serve` where `ids` lie (`POST /api/v1/locate`), and the bytes that moved;
    /// `None` when it cannot say: more ids than one request takes (an install, or a large
    /// update: they need most of every pack, and read the indexes a cache keeps), a plain
    /// web server, an older aurum or a cache tier (404, 405, 501), a failure, an answer that
    /// does not place every id. The pack indexes are read then, as they always were. It is
    /// not asked again in this run once it could not answer, nor once the delta API failed
    /// (a stalled API would cost its timeout twice).
    fn locate(&self, ids: &[Id]) -> Option<(Places, u64)> {
        if ids.len() > pack::MAX_LOCATE
            || self.locate_off.load(Ordering::Relaxed)
            || self.deltas_off.load(Ordering::Relaxed)
        {
            return None;
        }
        let path = "api/v1/locate";
        let body = pack::encode_locate_request(ids);
        let not_now = |why: &str| {
            self.locate_off.store(true, Ordering::Relaxed);
            log::info!("{}: {why}; reading pack indexes instead", self.url(path));
            None
        };
        // The API itself failed (no answer, a stall, an error status): the delta service,
        // asked next, would wait as long (a fresh root asks for no delta before this).
        let api_down = |why: &str| {
            self.deltas_failed(&format!("{path} failed first: {why}"));
            not_now(why)
        };
        // A place is at most 48 bytes, and a pack id (32) is named once, for one blob or more.
        let answer = match self.post_api(path, &body, 80 * ids.len() as u64 + 64) {
            ApiAnswer::Body(a) => a,
            ApiAnswer::Absent => {
                self.locate_off.store(true, Ordering::Relaxed);
                return None;
            }
            ApiAnswer::Failed(why) => return api_down(&why),
        };
        let places = match pack::decode_locate_answer(&answer, ids) {
            Ok(p) => p,
            Err(e) => return not_now(&e.to_string()),
        };
        let mut found = HashMap::with_capacity(ids.len());
        let mut group_raw = HashMap::new();
        for (id, place) in ids.iter().zip(places) {
            let Some((pack, e, group_len)) = place else {
                return not_now(&format!("it does not place blob {}", id.short()));
            };
            if let Some(len) = group_len {
                group_raw.insert((pack, e.offset), len);
            }
            found.insert(*id, (pack, e));
        }
        Some(((found, group_raw), (body.len() + answer.len()) as u64))
    }

    fn pack_index(&self, pack: &Id) -> Result<Vec<IndexEntry>> {
        let cached = self.cache.join(format!("{}.idx", pack.hex()));
        if let Ok(bytes) = std::fs::read(&cached) {
            if let Ok(entries) = decode_index(&bytes) {
                return Ok(entries);
            }
        }
        let path = crate::format::pack::path(pack, "idx");
        let (bytes, storable) = self.get_storable(&path)?;
        let entries = decode_index(&bytes)
            .map_err(|e| self.inconsistent(&path, &format!("it does not decode ({e})")))?;
        // An index a cache tier passed on unchecked (`no-store`, while its pack streams in)
        // serves this run only: kept, a wrong one would fail every later update.
        if !storable {
            return Ok(entries);
        }
        std::fs::create_dir_all(&self.cache).at(&self.cache)?;
        // Concurrent updates sharing the cache do not collide (see write_atomic).
        crate::sys::write_atomic(&cached, &bytes, Default::default())?;
        Ok(entries)
    }
}

impl HttpRepo {
    /// The pack ids of `packs/list` (one `ID SIZE` a line), refusing a damaged list: a line
    /// skipped would hide its pack's blobs and fail the update later with a wrong reason.
    fn pack_list(&self, list: &[u8]) -> Result<Vec<Id>> {
        let packs = refs::decode_pack_list(list)
            .map_err(|p| self.inconsistent("packs/list", &p.to_string()))?;
        Ok(packs.into_iter().map(|(id, _)| id).collect())
    }

    /// A file the server publishes disagrees with the server's store.
    fn inconsistent(&self, file: &str, problem: &str) -> Error {
        Error::Inconsistent {
            file: self.url(file),
            problem: problem.to_string(),
        }
    }

    /// A missing ref file means the server has no such image.
    fn no_image(&self, image: &str, e: Error) -> Error {
        match e {
            Error::NotFound(_) if self.bases.len() > 1 => Error::NotFound(format!(
                "no image `{image}` on any of {}: `aurum lsimage` on the master lists them; a mirror that lacks an image the master has needs an `aurum pull`",
                self.all_bases()
            )),
            Error::NotFound(_) => Error::NotFound(format!(
                "{} has no image `{image}`: `aurum lsimage` on the server lists them; if it lists `{image}`, its published refs/{image}/head is missing, and `aurum verify --repair` there rebuilds it",
                self.base()
            )),
            e => e,
        }
    }

    /// The number of an image's newest revision with this id, for the node's records
    /// (`compute@7`); none when the server's list does not say.
    fn number_of(&self, image: &str, id: &Id) -> Option<u32> {
        let list = self.get(&format!("refs/{image}/revisions")).ok()?;
        refs::decode_revisions(&list)
            .ok()?
            .into_iter()
            .filter(|(_, r)| r == id)
            .map(|(n, _)| n)
            .max()
    }
}

/// A failure to reach the server or to read its answer: worth another try, unless the
/// server's certificate is refused (another try gets the same certificate).
fn transient(e: ureq::Error) -> Failure {
    match is_tls(&e) {
        true => Failure::Final(Error::Remote(describe(&e))),
        false => Failure::Transient(describe(&e)),
    }
}

/// Whether `e` is the TLS handshake failing (a certificate refused): ureq reports rustls'
/// verdict inside an I/O error.
fn is_tls(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::Tls(_) | ureq::Error::Rustls(_) => true,
        ureq::Error::Io(io) => io
            .get_ref()
            .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some()),
        _ => false,
    }
}

/// What went wrong, in words an administrator can act on.
fn describe(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Timeout(ureq::Timeout::Connect) => "no connection in time".into(),
        ureq::Error::Timeout(ureq::Timeout::PerRead | ureq::Timeout::PerWrite) => {
            "no data moved within the idle timeout (the server stalled)".into()
        }
        ureq::Error::Timeout(t) => format!("timed out ({t})"),
        e if is_tls(e) => crate::tls::explain("the server", &e.to_string()),
        e => e.to_string(),
    }
}

/// The pause before try `n + 1`: `base` (at most 1 s) doubled per try, at most 30 s, times a
/// random factor between 0.5 and 1.5, so that a hundred nodes that lost the server at the same
/// moment do not come back at the same moment.
fn backoff(n: u32, base: Duration) -> Duration {
    let base = base.min(Duration::from_secs(1));
    let pause = (base * 2u32.pow((n - 1).min(5))).min(Duration::from_secs(30));
    pause.mul_f64(0.5 + random_fraction())
}

/// A random number in [0, 1), for jitters (retry pauses, a diskless node's start): nodes that
/// started together must not come back together.
pub fn random_fraction() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS: randomness enough for a jitter, without a crate.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    );
    (h.finish() % 1_000_000) as f64 / 1_000_000.0
}

fn ref_name_ok(s: &str) -> bool {
    crate::repo::is_image_name(s)
}

impl RevisionSource for HttpRepo {
    fn describe(&self) -> String {
        self.base().to_string()
    }

    fn bytes_received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    fn signatures(&self, image: &str, number: u32) -> Result<Option<Vec<u8>>> {
        if !ref_name_ok(image) {
            return Err(invalid(format!("`{image}` is not an image name")));
        }
        match self.get(&signature::path(image, number)) {
            Ok(data) => Ok(Some(data)),
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn resolve(&self, spec: &str) -> Result<Target> {
        let id_of = |text: Vec<u8>, what: &str| -> Result<Id> {
            refs::decode_ref(&text)
                .ok_or_else(|| corrupt(format!("{what} on the server does not hold a revision id")))
        };
        let parsed: RevSpec = spec.parse()?;
        match &parsed {
            RevSpec::Number { image, .. } | RevSpec::Back { image, .. } => {
                if !ref_name_ok(image) {
                    return Err(invalid(format!("`{image}` is not an image name")));
                }
                let list = self
                    .get(&format!("refs/{image}/revisions"))
                    .map_err(|e| self.no_image(image, e))?;
                let path = format!("refs/{image}/revisions");
                let list = refs::decode_revisions(&list)
                    .map_err(|p| self.inconsistent(&path, &p.to_string()))?;
                let numbers: Vec<u32> = list.iter().map(|(n, _)| *n).collect();
                let number = parsed.number_among(&numbers)?;
                let id = list
                    .into_iter()
                    .find_map(|(n, id)| (n == number).then_some(id))
                    .ok_or_else(|| {
                        Error::NotFound(format!(
                            "image `{image}` has no revision {number} on {}",
                            self.base()
                        ))
                    })?;
                return Ok(Target {
                    image: Some(image.clone()),
                    number: Some(number),
                    id,
                });
            }
            RevSpec::Tag { image, tag } => {
                if !ref_name_ok(image) || !ref_name_ok(tag) {
                    return Err(invalid(format!("`{spec}` is not IMAGE:TAG")));
                }
                let text = self
                    .get(&format!("refs/{image}/tags/{tag}"))
                    .map_err(|e| match e {
                        Error::NotFound(_) => match self.get(&format!("refs/{image}/head")) {
                            Ok(_) => Error::NotFound(format!(
                                "image `{image}` has no tag `{tag}` on {}",
                                self.base()
                            )),
                            Err(e) => self.no_image(image, e),
                        },
                        e => e,
                    })?;
                let id = id_of(text, "the tag")?;
                return Ok(Target {
                    image: Some(image.clone()),
                    number: self.number_of(image, &id),
                    id,
                });
            }
            RevSpec::Bare(_) => {}
        }
        if let Some(id) = parsed.full_id() {
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
            "`{spec}`: from an HTTP server, name a revision as IMAGE, IMAGE@N, IMAGE:TAG, IMAGE~N or its full 64-digit id"
        )))
    }

    fn manifest(&self, id: &Id) -> Result<Manifest> {
        let path = manifest::path(id);
        let packed = self.get(&path)?;
        let raw = manifest::decompress_file(&packed[..], id).map_err(|p| match p {
            FileProblem::Damaged(e) => corrupt(format!(
                "manifest {} from the server is damaged: {e}",
                id.short()
            )),
            FileProblem::Mismatch => corrupt(format!(
                "manifest {} from {} does not match its id; refusing it",
                id.short(),
                self.base()
            )),
        })?;
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
        let (mut found, group_raw, moved_locating) = match self.locate(ids) {
            Some((places, moved)) => (places.0, places.1, moved),
            None => {
                let (found, group_raw) = self.places_from_indexes(ids)?;
                (found, group_raw, 0)
            }
        };
        // A group of which the node wants less than half is better asked of `aurum serve`
        // blob by blob (each compressed alone) than fetched whole. Both sides count the
        // member table: a group of files of a few bytes is mostly table, and a node wanting
        // every member fetches it whole.
        let mut wanted_raw: HashMap<(Id, u64), u64> = HashMap::new();
        for (pack, e) in found.values() {
            if e.codec == Codec::ZstdGroup {
                *wanted_raw.entry((*pack, e.offset)).or_default() += pack::group_share(e.raw_len);
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
                    sink(id, Cow::Owned(data))?;
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
        type Record = (u64, u32, Vec<IndexEntry>);
        type At = ((Id, u64), (u32, Vec<IndexEntry>));
        let mut records: Vec<At> = records.into_iter().collect();
        records.sort_by_key(|a| a.0);
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
        let done = Finished::default();
        // A group decompresses whole (its window is the group), 8 MiB each: as many at once
        // as there are cores to decompress them, not one per request in flight (four bodies
        // were 34 of the 89 MB of heap an update to rev2b held at its peak, issue #14).
        let decoding = Permits::new(
            std::thread::available_parallelism()
                .map_or(1, usize::from)
                .min(IN_FLIGHT),
        );
        std::thread::scope(|s| {
            // Set however the body ends (a panic too: else the scope waits on the watcher).
            let _end = SetOnDrop(&done);
            s.spawn(|| self.watch_stall(&moved, &done, progress));
            let workers: Vec<_> = (0..IN_FLIGHT)
                .map(|_| {
                    s.spawn(|| loop {
                        if first_error.lock().expect("lock").is_some() {
                            return;
                        }
                        let Some((pack, recs)) = queue.lock().expect("lock").next() else {
                            return;
                        };
                        if let Err(e) =
                            self.fetch_range(&pack, &recs, sink, &moved, &decoding, progress)
                        {
                            first_error.lock().expect("lock").get_or_insert(e);
                            return;
                        }
                    })
                })
                .collect();
            for w in workers {
                let _ = w.join();
            }
        });
        progress.finish();
        if let Some(e) = first_error.into_inner().expect("lock") {
            return Err(e);
        }
        Ok(moved.into_inner() + moved_singles + moved_locating)
    }

    fn fetch_deltas(
        &self,
        wants: &[(Want, u32)],
        sink: &DeltaSinkFn,
        progress: &dyn Progress,
    ) -> Result<u64> {
        if wants.is_empty() || self.deltas_off.load(Ordering::Relaxed) {
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
                        || self.deltas_off.load(Ordering::Relaxed)
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
        let body = report.encode();
        let mut rq = self
            .agent
            .post(self.url("api/v1/reports"))
            .content_type("application/json");
        if let Some(t) = &self.options.token {
            rq = rq.header("Authorization", format!("Bearer {t}"));
        }
        let resp = rq
            .send(&body[..])
            .map_err(|e| self.net("api/v1/reports", describe(&e)))?;
        match resp.status().as_u16() {
            200..=299 => Ok(()),
            s @ (401 | 403) => Err(self.net(
                "api/v1/reports",
                format!(
                    "HTTP {s}: the server refused the report's token ({}); a node's token is \
                     in /var/lib/aurum-node/token (`aurum token node NODE` on the server)",
                    if self.options.token.is_some() {
                        "wrong or revoked"
                    } else {
                        "none was sent"
                    }
                ),
            )),
            s => Err(self.net(
                "api/v1/reports",
                format!("HTTP {s} (a plain web server takes no reports)"),
            )),
        }
    }
    fn public_file(&self, rel: &str) -> Result<Vec<u8>> {
        self.get(rel)
    }
}

impl HttpRepo {
    /// One delta request; `false` when the server makes no deltas (a plain web server) or
    /// the delta service failed: the caller then fetches whole blobs.
    fn delta_batch(
        &self,
        batch: &[Want],
        sink: &DeltaSinkFn,
        moved: &AtomicU64,
        progress: &dyn Progress,
    ) -> Result<bool> {
        let path = "api/v1/deltas";
        let body = delta::encode_request(batch)?;
        let answer = match self.post_api(path, &body, 1 << 30) {
            ApiAnswer::Body(a) => a,
            // No API here, or an older server: whole blobs it is, as planned.
            ApiAnswer::Absent => {
                self.deltas_off.store(true, Ordering::Relaxed);
                return Ok(false);
            }
            ApiAnswer::Failed(why) => return Ok(self.deltas_failed(&why)),
        };
        moved.fetch_add((body.len() + answer.len()) as u64, Ordering::Relaxed);
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

    /// POSTs `body` to one of `aurum serve`'s optional binary APIs (deltas, locate) and reads
    /// the answer, at most `limit` bytes.
    fn post_api(&self, path: &str, body: &[u8], limit: u64) -> ApiAnswer {
        let mut resp = match self
            .agent
            .post(self.url(path))
            .content_type("application/octet-stream")
            .send(body)
        {
            Ok(r) => r,
            Err(e) => return ApiAnswer::Failed(describe(&e)),
        };
        match resp.status().as_u16() {
            200 => match self.body(&mut resp, path, limit) {
                Ok(answer) => ApiAnswer::Body(answer),
                Err(why) => ApiAnswer::Failed(why),
            },
            404 | 405 | 501 => ApiAnswer::Absent,
            // The API is there but failing (a proxy whose backend is down answers 502).
            s => ApiAnswer::Failed(format!("HTTP {s}")),
        }
    }

    /// The delta service failed: it is optional, so this turns it off for the rest of the run
    /// and warns once; the whole blobs come from the static layout. Returns `false`.
    fn deltas_failed(&self, why: &str) -> bool {
        if !self.deltas_off.swap(true, Ordering::Relaxed) {
            let msg = format!(
                "{}: the delta service failed ({why}); fetching whole blobs instead (more bytes, same result)",
                self.url("api/v1/deltas")
            );
            log::warn!("{msg}");
        }
        false
    }

    /// Shows on the progress line how long nothing has arrived, once that is long enough to
    /// notice (a bar that merely stops moving looks like a hung program); clears it when
    /// bytes move again. Returns as soon as `done` is set (a plain sleep between looks held
    /// every fetch up to a quarter of a second after its last byte: a third of a security
    /// update's wall time).
    fn watch_stall(&self, moved: &AtomicU64, done: &Finished, progress: &dyn Progress) {
        const NOTICE: Duration = Duration::from_secs(5);
        let (mut last, mut since, mut shown) = (0, Instant::now(), false);
        while !done.wait(Duration::from_millis(250)) {
            let now = moved.load(Ordering::Relaxed);
            if now != last {
                (last, since) = (now, Instant::now());
                if shown {
                    progress.note("");
                    shown = false;
                }
            } else if since.elapsed() >= NOTICE {
                progress.note(&format!(
                    "waiting {} s for {}",
                    since.elapsed().as_secs(),
                    self.base()
                ));
                shown = true;
            }
        }
    }

    fn fetch_range(
        &self,
        pack: &Id,
        recs: &[(u64, u32, Vec<IndexEntry>)],
        sink: &BlobSinkFn,
        moved: &AtomicU64,
        decoding: &Permits,
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
        let bytes = self.get_range(
            &crate::format::pack::path(pack, "pack"),
            start,
            end,
            progress,
        )?;
        moved.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        progress.advance(bytes.len() as u64);
        for (offset, len, members) in recs {
            let wrong = |e: &IndexEntry| {
                corrupt(format!(
                    "the server sent wrong bytes for blob {} (pack {}); nothing was written with them. Check the server's repository with `aurum verify`",
                    e.id.short(),
                    pack.short()
                ))
            };
            let at = (offset - start) as usize;
            let Some(payload) = bytes.get(at..at + *len as usize) else {
                return Err(members.first().map_or_else(
                    || {
                        corrupt(format!(
                            "the server sent too few bytes of pack {}",
                            pack.short()
                        ))
                    },
                    wrong,
                ));
            };
            if let Some(group) = members.first().filter(|m| m.codec == Codec::ZstdGroup) {
                let _decoding = decoding.take();
                let body =
                    store::decode_group_payload(&group.id, payload).map_err(|_| wrong(group))?;
                for e in members {
                    let data = body
                        .get(e.inner as usize..e.inner as usize + e.raw_len as usize)
                        .filter(|d| Id::of(d) == e.id)
                        .ok_or_else(|| wrong(e))?;
                    sink(&e.id, Cow::Borrowed(data))?;
                }
            } else {
                for e in members {
                    sink(
                        &e.id,
                        Cow::Owned(decode_blob(e, payload).map_err(|_| wrong(e))?),
                    )?;
                }
            }
        }
        Ok(())
    }
}

/// A flag one thread sets and another waits on with a timeout, woken at once when it is set.
#[derive(Default)]
struct Finished {
    is_set: Mutex<bool>,
    told: std::sync::Condvar,
}

impl Finished {
    fn set(&self) {
        *self.is_set.lock().expect("lock") = true;
        self.told.notify_all();
    }

    /// Waits up to `timeout` for the flag; returns whether it is set.
    fn wait(&self, timeout: Duration) -> bool {
        let guard = self.is_set.lock().expect("lock");
        let (guard, _) = self
            .told
            .wait_timeout_while(guard, timeout, |set| !*set)
            .expect("lock");
        *guard
    }
}

/// At most so many holders at once: [`Permits::take`] waits for one to give its permit back.
struct Permits {
    free: Mutex<usize>,
    returned: std::sync::Condvar,
}

/// A permit, given back when dropped.
struct Permit<'a>(&'a Permits);

impl Permits {
    fn new(n: usize) -> Self {
        Permits {
            free: Mutex::new(n.max(1)),
            returned: std::sync::Condvar::new(),
        }
    }

    fn take(&self) -> Permit<'_> {
        let guard = self.free.lock().expect("lock");
        let mut free = self
            .returned
            .wait_while(guard, |free| *free == 0)
            .expect("lock");
        *free -= 1;
        Permit(self)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().expect("lock") += 1;
        self.0.returned.notify_one();
    }
}

/// Sets a [`Finished`] when dropped.
struct SetOnDrop<'a>(&'a Finished);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.set();
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use std::collections::HashSet;

    #[test]
    fn finished_wakes_its_waiter_at_once_and_keeps_its_state() {
        let f = Finished::default();
        assert!(!f.wait(Duration::from_millis(10)), "not set yet");
        let t = Instant::now();
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(50));
                f.set();
            });
            assert!(f.wait(Duration::from_secs(60)));
        });
        assert!(t.elapsed() < Duration::from_secs(30), "woken late");
        // Set before the wait: not lost.
        let g = Finished::default();
        drop(SetOnDrop(&g));
        assert!(g.wait(Duration::from_secs(60)));
    }

    #[test]
    fn permits_never_let_more_holders_in_than_there_are() {
        let permits = Permits::new(2);
        let (now, most) = (AtomicU64::new(0), AtomicU64::new(0));
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..50 {
                        let _p = permits.take();
                        let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(n, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_micros(200));
                        now.fetch_sub(1, Ordering::SeqCst);
                    }
                });
            }
        });
        assert_eq!(
            most.into_inner(),
            2,
            "two permits, two holders at most (and both used)"
        );
        assert_eq!(*permits.free.lock().unwrap(), 2, "every permit given back");
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let base = Duration::from_secs(1);
        for n in 1..=10 {
            let nominal = (base * 2u32.pow((n - 1).min(5))).min(Duration::from_secs(30));
            let p = backoff(n, base);
            assert!(
                p >= nominal.mul_f64(0.5) && p <= nominal.mul_f64(1.5),
                "{n}: {p:?}"
            );
        }
        // A short connect timeout (tests) shortens the pauses with it.
        assert!(backoff(1, Duration::from_millis(100)) <= Duration::from_millis(150));
        let draws: HashSet<Duration> = (0..20).map(|_| backoff(3, base)).collect();
        assert!(draws.len() > 1, "no jitter");
    }
}
