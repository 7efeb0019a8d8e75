//! A cache tier: `aurum serve --upstream URL`.
//!
//! A rack server or a cluster master caches its parent: a file named by its hash (pack, pack
//! index, manifest, delta) that this server lacks is fetched from the upstream once, checked
//! (a pack against its id, a manifest against its id, an index against its checksum and
//! against its pack, fetched first), kept
//! under `ROOT/public/` and served from there like any repository file, Range and conditional
//! requests included. What can change (refs, `packs/list`, templates, `FORMAT`) is asked of the
//! upstream each time, and the API (reports, deltas, install phases) and boot scripts are passed
//! on to it, so nodes behind a tier behave exactly as nodes of the origin; but for blob
//! locations (`POST /api/v1/locate`), answered 404, so that nodes read the indexes the tier
//! keeps (fetched from the origin once for all of them, and checked once it holds their pack).
//!
//! A pack (the bulk of every transfer) is not stored before it is forwarded: on a miss, one
//! thread fetches it into a temporary file and every node asking for it meanwhile is sent the
//! file as it grows ([`http::Growing`]), a Range as soon as its bytes are there. The last byte
//! is held back until the whole pack hashes to its id; only then is it sent and the pack kept.
//! A pack that does not (damaged, or cut short) is dropped, and every answer still sending it
//! is aborted, so no node takes it for whole. Memory is one buffer a fetch; the rest is the
//! file, in the page cache.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use super::http::{self, Method, Reply, Request};
use super::{parse_range, static_file, static_path, text, RangeAsk, TEXT};
use crate::error::{invalid, IoContext, Result};
use crate::format::Id;

/// The largest answer passed on from the upstream (API answers, refs, boot scripts, the boot
/// kit), spooled to disk on the way.
const MAX_PASSED: u64 = 16 << 30;

/// Bytes read from the upstream at a time while streaming a pack.
const STREAM_CHUNK: usize = 256 << 10;

/// A pack being fetched from the upstream and sent on as it arrives.
struct Stream {
    /// What the upstream answered: the length and the file being filled, or the status and
    /// message to answer with instead. `None` until it has answered.
    head: std::sync::Mutex<Option<std::result::Result<Head, (u16, String)>>>,
    told: std::sync::Condvar,
    body: std::sync::Arc<http::Growing>,
    /// Why the fetch failed after its head, for those who wait for its end.
    failed: std::sync::Mutex<Option<String>>,
}

struct Head {
    len: u64,
    file: File,
    last_modified: Option<String>,
}

type Streams =
    std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<Stream>>>>;

/// Makes `root` a cache directory: `public/` and `tmp/`. The tier that holds `tier.lock`
/// (returned: held while it runs) owns `tmp/`, and clears what a killed tier left there
/// (partial packs); a second tier started on the same directory leaves it alone.
pub fn prepare(root: &Path) -> Result<Option<File>> {
    let tmp = root.join("tmp");
    for d in [root.join(crate::store::PUBLISHED), tmp.clone()] {
        std::fs::create_dir_all(&d).at(&d)?;
    }
    let lock_path = root.join("tier.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .at(&lock_path)?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            log::warn!(
                target: crate::progress::NOTICE,
                "another cache tier runs on {}: its temporary files are left alone",
                root.display()
            );
            return Ok(None);
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(e).at(&lock_path),
    }
    for e in std::fs::read_dir(&tmp).at(&tmp)? {
        let p = e.at(&tmp)?.path();
        let gone = match p.is_dir() && !p.is_symlink() {
            true => std::fs::remove_dir_all(&p),
            false => std::fs::remove_file(&p),
        };
        gone.at(&p)?;
    }
    Ok(Some(lock))
}

/// The server a tier fetches from.
pub struct Upstream {
    base: String,
    agent: ureq::Agent,
    /// The objects being fetched now, each with the lock its fetcher holds: a node asking for
    /// one waits for that fetch instead of starting another (a rack of nodes asking for the
    /// same pack at once costs the upstream one copy).
    fetching:
        std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<std::sync::Mutex<()>>>>,
    /// The packs being streamed now: who asks for one while it comes is sent the same file.
    streams: Streams,
}

/// Whether a URL path names a file that never changes (named by its hash).
fn immutable(path: &str) -> bool {
    (path.starts_with("/packs/") && (path.ends_with(".pack") || path.ends_with(".idx")))
        || (path.starts_with("/manifests/") && path.ends_with(".mf"))
        || (path.starts_with("/deltas/") && !path.ends_with("/list"))
}

impl Upstream {
    pub fn new(url: &str) -> Result<Upstream> {
        if !url.starts_with("http://") {
            return Err(invalid(format!(
                "--upstream {url}: give the http:// URL of another aurum serve (or a web server of its public/)"
            )));
        }
        // The environment's proxies (http_proxy, no_proxy), as curl takes them.
        let agent = crate::proxy::agent(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_connect(Some(Duration::from_secs(10)))
                .timeout_recv_body(Some(Duration::from_secs(600))),
            &crate::proxy::Proxies::from_env()?,
        );
        Ok(Upstream {
            base: url.trim_end_matches('/').to_string(),
            agent,
            fetching: Default::default(),
            streams: Default::default(),
        })
    }

    /// Answers `rq` from the cache in `root`, fetching or passing on what it must.
    pub(super) fn handle(
        &self,
        root: &Path,
        rq: &Request,
        reply: &mut Reply,
        max_transfers: usize,
    ) {
        let path = rq.path();
        if immutable(path) && matches!(rq.method, Method::Get | Method::Head) {
            if let Some(file) = static_path(root, path) {
                if path.ends_with(".pack") && !file.exists() {
                    if let Some(stream) = self.stream(root, path, &file) {
                        return send_stream(rq, reply, &file, &stream, max_transfers);
                    }
                }
                if path.ends_with(".idx") && !file.exists() {
                    let pack_path = format!("{}.pack", path.trim_end_matches(".idx"));
                    if let Some(pack_file) = static_path(root, &pack_path) {
                        // The pack is coming (its stream started here if need be): the
                        // index cannot be checked against it yet. A pack kept already is
                        // whole and checked, though its stream may not be marked ended yet
                        // (its fetch stores it, lets the last bytes go, then marks it): a
                        // node asking for the index right after the pack got it unchecked.
                        if !pack_file.exists()
                            && self
                                .stream(root, &pack_path, &pack_file)
                                .is_some_and(|s| !s.body.ended())
                        {
                            return self.provisional_index(root, reply, path);
                        }
                    }
                }
                if !file.exists() {
                    if let Err((code, msg)) = self.fetch_once(root, path, &file) {
                        return text(code, &msg).send(reply);
                    }
                }
            }
            if let Err((code, msg)) = static_file(root, rq, reply, max_transfers) {
                text(code, &msg).send(reply);
            }
            return;
        }
        // Blob locations are the origin's catalog's, and would bypass the checks a tier makes
        // of the indexes it keeps: nodes behind a tier read those indexes, which it fetches
        // once for all of them (a locate passed on would reach the origin for every node).
        if path.trim_end_matches('/') == "/api/v1/locate" {
            return text(
                404,
                "a cache tier does not locate blobs: read the pack indexes it serves",
            )
            .send(reply);
        }
        if let Err(e) = self.pass_on(root, rq, reply) {
            text(
                502,
                &format!("the upstream {} did not answer {path}: {e}", self.base),
            )
            .send(reply);
        }
    }

    /// The stream of the pack `path` (kept at `file`), started if none is running; `None`
    /// when the pack is kept already.
    fn stream(&self, root: &Path, path: &str, file: &Path) -> Option<std::sync::Arc<Stream>> {
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = streams.get(path) {
            return Some(s.clone());
        }
        if file.exists() {
            return None;
        }
        let stream = std::sync::Arc::new(Stream {
            head: Default::default(),
            told: Default::default(),
            body: Default::default(),
            failed: Default::default(),
        });
        streams.insert(path.to_string(), stream.clone());
        let (agent, base, streams) = (self.agent.clone(), self.base.clone(), self.streams.clone());
        let (tmp_dir, path, file, s) = (
            root.join("tmp"),
            path.to_string(),
            file.to_path_buf(),
            stream.clone(),
        );
        std::thread::spawn(move || {
            let result = pull(&agent, &base, &path, &tmp_dir, &file, &s);
            if let Err((code, msg)) = result {
                log::warn!("{msg}");
                let mut head = s.head.lock().unwrap_or_else(|e| e.into_inner());
                if head.is_none() {
                    *head = Some(Err((code, msg.clone())));
                }
                drop(head);
                *s.failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(msg);
                s.told.notify_all();
                s.body.finish(false);
            }
            // The pack is kept (or the next ask fetches it again): later asks read the file.
            streams
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&path);
        });
        Some(stream)
    }

    /// Answers the index `path` while its pack is being fetched: from the upstream, checked
    /// against its own checksum only, and not kept (nor cacheable). It is kept once asked
    /// for after its pack is, checked against the pack's records then. A node's first request
    /// is for the index; waiting for the whole pack to check it would hold every node behind a
    /// cold tier for the fill. An index pointing at the wrong bytes can fail the updates that
    /// read it meanwhile (a node checks every blob against its id), never install them.
    fn provisional_index(&self, root: &Path, reply: &mut Reply, path: &str) {
        let url = format!("{}{path}", self.base);
        let resp = match self.agent.get(&url).call() {
            Ok(r) => r,
            Err(e) => {
                return text(
                    502,
                    &format!("the upstream {} did not answer {path}: {e}", self.base),
                )
                .send(reply)
            }
        };
        match resp.status().as_u16() {
            200 => {}
            404 => {
                return text(404, &format!("{path} not found (upstream {})", self.base)).send(reply)
            }
            s => {
                return text(
                    502,
                    &format!("the upstream {} answered {path} with HTTP {s}", self.base),
                )
                .send(reply)
            }
        }
        let mut spool = match tempfile::tempfile_in(root.join("tmp")) {
            Ok(f) => f,
            Err(e) => return text(500, &format!("spooling {path}: {e}")).send(reply),
        };
        let mut body = resp
            .into_body()
            .into_with_config()
            .limit(MAX_PASSED)
            .reader();
        let checked = std::io::copy(&mut body, &mut spool)
            .map_err(|e| (502, format!("{url}: {e}")))
            .and_then(|len| {
                let mut data = Vec::with_capacity(len as usize);
                std::io::Seek::rewind(&mut spool)
                    .and_then(|_| spool.read_to_end(&mut data))
                    .map_err(|e| (500, e.to_string()))?;
                crate::format::pack::decode_index(&data).map_err(|e| {
                    (
                        502,
                        format!(
                            "the upstream {} sent a damaged {path}: {e}; not kept",
                            self.base
                        ),
                    )
                })?;
                Ok(len)
            });
        let len = match checked {
            Ok(len) => len,
            Err((code, msg)) => return text(code, &msg).send(reply),
        };
        let stem = path
            .rsplit('/')
            .next()
            .unwrap_or("")
            .trim_end_matches(".idx");
        reply
            .status(200)
            .header("Content-Type", "application/octet-stream")
            .header("Cache-Control", "no-store")
            .header("ETag", format_args!("\"{stem}\""));
        if let Err(e) = reply.file(spool, 0, len) {
            text(500, &format!("{path}: {e}")).send(reply);
        }
    }

    /// [`Upstream::fetch`], one fetch per object at a time: who comes while it runs waits for
    /// it and finds the file.
    fn fetch_once(
        &self,
        root: &Path,
        path: &str,
        file: &Path,
    ) -> std::result::Result<(), (u16, String)> {
        let lock = self
            .fetching
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(path.to_string())
            .or_default()
            .clone();
        let result = {
            let _only = lock.lock().unwrap_or_else(|e| e.into_inner());
            if file.exists() {
                Ok(())
            } else {
                self.fetch(root, path, file)
            }
        };
        let mut fetching = self.fetching.lock().unwrap_or_else(|e| e.into_inner());
        // The last one out forgets the object.
        if std::sync::Arc::strong_count(&lock) <= 2 {
            fetching.remove(path);
        }
        result
    }

    /// Fetches the immutable file `path` into `file`, checked; the status and message to
    /// answer with when it cannot.
    fn fetch(
        &self,
        root: &Path,
        path: &str,
        file: &Path,
    ) -> std::result::Result<(), (u16, String)> {
        let url = format!("{}{path}", self.base);
        let resp = self.agent.get(&url).call().map_err(|e| {
            (
                502,
                format!("the upstream {} did not answer {path}: {e}", self.base),
            )
        })?;
        match resp.status().as_u16() {
            200 => {}
            404 => return Err((404, format!("{path} not found (upstream {})", self.base))),
            s => {
                return Err((
                    502,
                    format!("the upstream {} answered {path} with HTTP {s}", self.base),
                ))
            }
        }
        let tmp_dir = root.join("tmp");
        let mut tmp =
            tempfile::NamedTempFile::new_in(&tmp_dir).map_err(|e| (500, e.to_string()))?;
        let mut body = resp.into_body().into_reader();
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = body
                .read(&mut buf)
                .map_err(|e| (502, format!("{url}: {e}")))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            tmp.write_all(&buf[..n])
                .map_err(|e| (500, format!("caching {path}: {e}")))?;
        }
        check(path, file, tmp.path(), hasher.finalize().into()).map_err(|e| {
            (
                502,
                format!(
                    "the upstream {} sent a damaged {path}: {e}; not kept",
                    self.base
                ),
            )
        })?;
        if path.ends_with(".idx") {
            self.check_index(root, path, tmp.path())?;
        }
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir).map_err(|e| (500, e.to_string()))?;
        }
        let _ = std::fs::set_permissions(
            tmp.path(),
            std::os::unix::fs::PermissionsExt::from_mode(crate::store::PUBLIC_FILE),
        );
        tmp.persist(file)
            .map_err(|e| (500, format!("caching {path}: {e}")))?;
        Ok(())
    }

    /// Checks a fetched pack index against its pack, which is fetched first when this tier
    /// lacks it (and checked against its id): the index must list every blob the pack's
    /// records hold, and only where they are. An index with a good checksum that points
    /// elsewhere (a wrong or an old index for this pack) would send every node behind this tier
    /// to the wrong bytes; each node would refuse them, but none could update.
    fn check_index(
        &self,
        root: &Path,
        path: &str,
        tmp: &Path,
    ) -> std::result::Result<(), (u16, String)> {
        let pack_path = format!("{}.pack", path.trim_end_matches(".idx"));
        let pack_file = static_path(root, &pack_path)
            .ok_or_else(|| (400, format!("{path}: not a pack index's path")))?;
        if let Some(stream) = self.stream(root, &pack_path, &pack_file) {
            if !stream.body.wait_end() {
                let (code, msg) = match &*stream.head.lock().unwrap_or_else(|e| e.into_inner()) {
                    Some(Err((code, msg))) => (*code, msg.clone()),
                    _ => (
                        502,
                        stream
                            .failed
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .clone()
                            .unwrap_or_default(),
                    ),
                };
                return Err((
                    if code == 404 { 502 } else { code },
                    format!("{path} cannot be checked against its pack: {msg}"),
                ));
            }
        }
        let damaged = |why: String| {
            (
                502,
                format!(
                    "the upstream {} sent a damaged {path}: {why}; not kept",
                    self.base
                ),
            )
        };
        let data = std::fs::read(tmp).map_err(|e| (500, e.to_string()))?;
        let listed =
            crate::format::pack::decode_index(&data).map_err(|e| damaged(e.to_string()))?;
        let held = crate::store::pack_entries(&pack_file).map_err(|e| (500, e.to_string()))?;
        match crate::store::index_mismatch(&listed, &held) {
            Some(why) => Err(damaged(why)),
            None => Ok(()),
        }
    }

    /// Passes `rq` on to the upstream and its answer back.
    fn pass_on(
        &self,
        root: &Path,
        rq: &Request,
        reply: &mut Reply,
    ) -> std::result::Result<(), String> {
        let url = format!("{}{}", self.base, rq.target);
        let resp = match rq.method {
            Method::Post => {
                let mut r = self.agent.post(&url);
                // The node's token goes on: the upstream decides on writes, a tier keeps no
                // tokens.
                for h in ["Content-Type", "Authorization"] {
                    if let Some(v) = rq.header(h) {
                        r = r.header(h, v);
                    }
                }
                r.send(rq.body)
            }
            Method::Head => self.agent.head(&url).call(),
            _ => {
                let mut r = self.agent.get(&url);
                for h in ["Range", "If-None-Match", "If-Modified-Since"] {
                    if let Some(v) = rq.header(h) {
                        r = r.header(h, v);
                    }
                }
                r.call()
            }
        }
        .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let headers: Vec<(String, String)> = resp
            .headers()
            .iter()
            .filter(|(k, _)| {
                matches!(
                    k.as_str(),
                    "content-type"
                        | "cache-control"
                        | "etag"
                        | "last-modified"
                        | "content-range"
                        | "accept-ranges"
                        | "retry-after"
                        | "allow"
                        | "www-authenticate"
                )
            })
            .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
            .collect();
        // Spooled to an unnamed file of tmp/ and sent from there with sendfile: memory stays
        // flat whatever the size (a boot kit's initramfs, a large delta answer), and the file
        // is gone once the answer is.
        let mut spool = tempfile::tempfile_in(root.join("tmp"))
            .map_err(|e| format!("spooling the answer in {}: {e}", root.join("tmp").display()))?;
        let mut body = resp
            .into_body()
            .into_with_config()
            .limit(MAX_PASSED)
            .reader();
        let len = std::io::copy(&mut body, &mut spool).map_err(|e| e.to_string())?;
        reply.status(status);
        for (k, v) in &headers {
            reply.header(k, v);
        }
        reply
            .file(spool, 0, len)
            .map_err(|e| format!("reading back the spooled answer: {e}"))
    }
}

/// Checks a fetched immutable file against its name: a pack's id is the hash of its bytes, a
/// manifest's that of its decompressed bytes, an index carries its own checksum (and is
/// checked against its pack after, [`Upstream::check_index`]).
fn check(path: &str, file: &Path, tmp: &Path, hash: [u8; 32]) -> Result<()> {
    let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    if path.ends_with(".pack") {
        let id = Id::from_hex(stem).ok_or_else(|| invalid("not named by an id"))?;
        if Id(hash) != id {
            return Err(invalid("its bytes are not those of its id"));
        }
    } else if path.ends_with(".mf") {
        let id = Id::from_hex(stem).ok_or_else(|| invalid("not named by an id"))?;
        let f = File::open(tmp).at(tmp)?;
        crate::format::manifest::decompress_file(f, &id).map_err(|e| invalid(e.to_string()))?;
    } else if path.ends_with(".idx") {
        let data = std::fs::read(tmp).at(tmp)?;
        crate::format::pack::decode_index(&data)?;
    }
    Ok(())
}

/// Fetches the pack `path` from `base` into a temporary file of `tmp_dir`, telling `stream`'s
/// waiters its head as soon as the upstream answers and advancing its body as bytes arrive
/// (all but the last, until the pack is checked); keeps it at `file` once its bytes hash to
/// its id. The status and message to answer with when it cannot.
fn pull(
    agent: &ureq::Agent,
    base: &str,
    path: &str,
    tmp_dir: &Path,
    file: &Path,
    stream: &Stream,
) -> std::result::Result<(), (u16, String)> {
    let url = format!("{base}{path}");
    let resp = agent.get(&url).call().map_err(|e| {
        (
            502,
            format!("the upstream {base} did not answer {path}: {e}"),
        )
    })?;
    match resp.status().as_u16() {
        200 => {}
        404 => return Err((404, format!("{path} not found (upstream {base})"))),
        s => {
            return Err((
                502,
                format!("the upstream {base} answered {path} with HTTP {s}"),
            ))
        }
    }
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let len = header("content-length").and_then(|v| v.trim().parse::<u64>().ok());
    let last_modified = header("last-modified");
    let id = file
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(Id::from_hex)
        .ok_or_else(|| (400, format!("{path}: not named by an id")))?;
    let mut tmp = tempfile::NamedTempFile::new_in(tmp_dir).map_err(|e| (500, e.to_string()))?;
    let tell = |len: u64, f: &File| -> std::result::Result<(), (u16, String)> {
        let file = f.try_clone().map_err(|e| (500, e.to_string()))?;
        *stream.head.lock().unwrap_or_else(|e| e.into_inner()) = Some(Ok(Head {
            len,
            file,
            last_modified: last_modified.clone(),
        }));
        stream.told.notify_all();
        Ok(())
    };
    // Without a length (a web server that streams chunked) nothing can be sent before the
    // end: the pack is stored, then forwarded.
    if let Some(len) = len {
        tell(len, tmp.as_file())?;
    }
    let mut body = resp
        .into_body()
        .into_with_config()
        .limit(MAX_PASSED)
        .reader();
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; STREAM_CHUNK];
    let mut written = 0u64;
    loop {
        let n = body
            .read(&mut buf)
            .map_err(|e| (502, format!("{url}: {e}")))?;
        if n == 0 {
            break;
        }
        let got = buf.get(..n).unwrap_or_default();
        hasher.update(got);
        tmp.write_all(got)
            .map_err(|e| (500, format!("caching {path}: {e}")))?;
        written += n as u64;
        if let Some(len) = len {
            if written > len {
                return Err((
                    502,
                    format!(
                        "the upstream {base} sent more of {path} than its length {len}; not kept"
                    ),
                ));
            }
            // The last byte waits for the check.
            stream.body.advance(written.min(len.saturating_sub(1)));
        }
    }
    if len.is_some_and(|len| written != len) {
        return Err((
            502,
            format!("the upstream {base} sent {written} bytes of {path}, not its length; not kept"),
        ));
    }
    if Id(*hasher.finalize().as_bytes()) != id {
        return Err((
            502,
            format!(
                "the upstream {base} sent a damaged {path}: its bytes are not those of its id; not kept"
            ),
        ));
    }
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(|e| (500, e.to_string()))?;
    }
    let _ = std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(crate::store::PUBLIC_FILE),
    );
    let kept = tmp
        .persist(file)
        .map_err(|e| (500, format!("caching {path}: {e}")))?;
    if len.is_none() {
        tell(written, &kept)?;
    }
    stream.body.advance(written);
    stream.body.finish(true);
    Ok(())
}

/// Answers `rq` for the pack at `file` from its stream: as it grows, or the status the
/// upstream's failure calls for.
fn send_stream(
    rq: &Request,
    reply: &mut Reply,
    file: &Path,
    stream: &Stream,
    max_transfers: usize,
) {
    let path = rq.path();
    let (len, body_file, last_modified) = {
        let mut head = stream.head.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match &*head {
                None => head = stream.told.wait(head).unwrap_or_else(|e| e.into_inner()),
                Some(Err((code, msg))) => return text(*code, msg).send(reply),
                Some(Ok(h)) => match h.file.try_clone() {
                    Ok(f) => break (h.len, f, h.last_modified.clone()),
                    Err(e) => return text(500, &format!("{path}: {e}")).send(reply),
                },
            }
        }
    };
    let id = file.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    let tag = format!("\"{id}\"");
    let cache = "public, max-age=31536000, immutable";
    if rq
        .header("If-None-Match")
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == tag || t.trim() == "*"))
    {
        reply
            .status(304)
            .header("ETag", &tag)
            .header("Cache-Control", cache);
        return reply.bytes(b"");
    }
    let range_applies = rq.header("If-Range").is_none_or(|v| v == tag);
    let ask = match rq.header("Range") {
        Some(r) if range_applies => parse_range(r, len),
        _ => RangeAsk::Whole,
    };
    let sending = match ask {
        RangeAsk::Whole => len,
        RangeAsk::Part(a, b) => b - a + 1,
        RangeAsk::Unsatisfiable => 0,
    };
    if max_transfers > 0 && sending > http::INLINE_FILE && http::transfers() >= max_transfers {
        reply
            .status(503)
            .header(
                "Retry-After",
                super::busy_delay(http::transfers(), max_transfers),
            )
            .header("Cache-Control", "no-store")
            .header("Content-Type", TEXT);
        return reply.bytes(
            format!("{path}: the server is busy ({max_transfers} transfers); retry later\n")
                .as_bytes(),
        );
    }
    let (start, sending) = match ask {
        RangeAsk::Whole => {
            reply.status(200);
            (0, len)
        }
        RangeAsk::Part(a, b) => {
            reply
                .status(206)
                .header("Content-Range", format_args!("bytes {a}-{b}/{len}"));
            (a, b - a + 1)
        }
        RangeAsk::Unsatisfiable => {
            reply
                .status(416)
                .header("Content-Range", format_args!("bytes */{len}"))
                .header("Content-Type", TEXT);
            return reply.bytes(
                format!("{path}: the range asked for is past its end (size {len})\n").as_bytes(),
            );
        }
    };
    reply
        .header("Accept-Ranges", "bytes")
        .header("Content-Type", "application/octet-stream")
        .header("Cache-Control", cache)
        .header("ETag", &tag);
    if let Some(lm) = &last_modified {
        reply.header("Last-Modified", lm);
    }
    reply.growing(body_file, stream.body.clone(), start, sending);
}
