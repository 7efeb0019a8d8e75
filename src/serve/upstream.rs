//! A cache tier: `aurum serve --upstream URL`.
//!
//! A rack server or a cluster master caches its parent: a file named by its hash (pack, pack
//! index, manifest, delta) that this server lacks is fetched from the upstream once, checked
//! (a pack against its id, a manifest against its id, an index against its checksum), kept
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

/// The largest answer passed on from the upstream whole (API answers, refs, boot scripts).
const MAX_PASSED: u64 = 64 << 20;

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
        if let Err(e) = self.pass_on(rq, reply) {
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

    /// Passes `rq` on to the upstream and its answer back.
    fn pass_on(&self, rq: &Request, reply: &mut Reply) -> std::result::Result<(), String> {
        let url = format!("{}{}", self.base, rq.target);
        let resp = match rq.method {
            Method::Post => {
                let mut r = self.agent.post(&url);
                if let Some(ct) = rq.header("Content-Type") {
                    r = r.header("Content-Type", ct);
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
                )
            })
            .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
            .collect();
        let body = resp
            .into_body()
            .with_config()
            .limit(MAX_PASSED)
            .read_to_vec()
            .map_err(|e| e.to_string())?;
        reply.status(status);
        for (k, v) in &headers {
            reply.header(k, v);
        }
        reply.bytes(&body);
        Ok(())
    }
}

/// Checks a fetched immutable file against its name: a pack's id is the hash of its bytes, a
/// manifest's that of its decompressed bytes, an index carries its own checksum.
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
