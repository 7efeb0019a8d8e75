//! A cache tier: `aurum serve --upstream URL`.
//!
//! A rack server or a cluster master caches its parent: a file named by its hash (pack, pack
//! index, manifest, delta) that this server lacks is fetched from the upstream once, checked
//! (a pack against its id, a manifest against its id, an index against its checksum and
//! against its pack, fetched first), kept
//! under `ROOT/public/` and served from there like any repository file, Range and conditional
//! requests included. What can change (refs, `packs/list`, templates, `FORMAT`) is asked of the
//! upstream each time, and the API (reports, deltas, install phases) and boot scripts are passed
//! on to it, so nodes behind a tier behave exactly as nodes of the origin.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use super::http::{Method, Reply, Request};
use super::{static_file, static_path, text};
use crate::error::{invalid, IoContext, Result};
use crate::format::Id;

/// The largest answer passed on from the upstream (API answers, refs, boot scripts, the boot
/// kit), spooled to disk on the way.
const MAX_PASSED: u64 = 16 << 30;

/// Makes `root` a cache directory: `public/` and `tmp/`.
pub fn prepare(root: &Path) -> Result<()> {
    for d in [root.join(crate::store::PUBLISHED), root.join("tmp")] {
        std::fs::create_dir_all(&d).at(&d)?;
    }
    Ok(())
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
        if let Err(e) = self.pass_on(root, rq, reply) {
            text(
                502,
                &format!("the upstream {} did not answer {path}: {e}", self.base),
            )
            .send(reply);
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
        if !pack_file.exists() {
            self.fetch_once(root, &pack_path, &pack_file)
                .map_err(|(code, msg)| {
                    (
                        if code == 404 { 502 } else { code },
                        format!("{path} cannot be checked against its pack: {msg}"),
                    )
                })?;
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
