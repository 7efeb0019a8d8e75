//! `aurum serve`: the repository over HTTP.
//!
//! Three things are served. The repository's static layout (`FORMAT`, `refs/`, `manifests/`,
//! `packs/`, `templates/`) with HTTP Range support, which is all a node needs to update, so any web server,
//! cache or object store holding a copy serves just as well. And a small JSON API for what only
//! the catalog knows: images, revisions, partition templates (`/api/v1/templates/CLASS`), and
//! the reports nodes send after an update. And network boot: the per-node iPXE scripts
//! (`/boot/MAC.ipxe`, from the node database), the boot kit (`/boot/kit/`, from the
//! repository's `bootkit/` directory) and the install phases nodes report
//! (`/api/v1/install/NODE`).
//!
//! Files are streamed from disk, never loaded whole, so memory stays flat however many clients
//! fetch packs at once. Immutable files (packs, indexes, manifests: all named by their hash)
//! are marked cacheable forever; refs and `packs/list` must be revalidated.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tiny_http::{Header, Method, Request, Response, Server, StatusCode};

use crate::catalog::{Catalog, NodeReport};
use crate::error::{invalid, Error, Result};

/// The port `aurum serve` listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 8035;
/// Largest report body accepted.
const MAX_BODY: u64 = 64 << 10;
/// Largest delta request accepted (512 records with 255 bases each).
const MAX_DELTA_BODY: u64 = (crate::delta::MAX_BATCH as u64) * (33 + 255 * 32);

/// A running server.
pub struct Serving {
    server: Arc<Server>,
    pub addr: SocketAddr,
}

/// Binds `listen` for the repository at `root`; connections that stall for `stalled` are
/// dropped.
pub fn bind(root: &Path, listen: &str, stalled: Duration) -> Result<Serving> {
    if !root.join("FORMAT").exists() {
        return Err(Error::NotFound(format!(
            "no aurum repository at {}: create one with `aurum init`",
            root.display()
        )));
    }
    let listener = std::net::TcpListener::bind(listen)
        .map_err(|e| invalid(format!("cannot listen on {listen}: {e}")))?;
    // Connections accepted from this socket inherit its send timeout (Linux copies it at
    // accept): a node that stops reading its answer frees the answering thread after
    // `stalled` instead of holding it for ever. A slow node that keeps reading never hits it.
    // (Not the receive timeout: on a listening socket that one times accept() out, and the
    // server would stop accepting after `stalled` without a connection. Half-sent request
    // heads wait on tiny_http's per-connection threads, not on the answering ones.)
    for opt in [libc::SO_SNDTIMEO] {
        let tv = libc::timeval {
            tv_sec: stalled.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: setsockopt on a socket we own, with a timeval of the right size.
        let r = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&listener),
                libc::SOL_SOCKET,
                opt,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(Error::Os(std::io::Error::last_os_error()));
        }
    }
    let server = Server::from_listener(listener, None)
        .map_err(|e| invalid(format!("cannot listen on {listen}: {e}")))?;
    let addr = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| invalid(format!("{listen} is not an IP address and port")))?;
    Ok(Serving {
        server: Arc::new(server),
        addr,
    })
}

impl Serving {
    /// Answers requests on `threads` threads until `stop` is set; returns once they are done.
    pub fn run(self, root: &Path, threads: usize, stop: &AtomicBool) -> Result<()> {
        std::thread::scope(|s| {
            for _ in 0..threads.max(1) {
                let server = self.server.clone();
                s.spawn(move || {
                    let mut catalog: Option<Catalog> = None;
                    while !stop.load(Ordering::Relaxed) {
                        match server.recv_timeout(Duration::from_millis(200)) {
                            Ok(Some(rq)) => handle(root, &mut catalog, rq),
                            Ok(None) => {}
                            Err(e) => log::warn!("receiving a request: {e}"),
                        }
                    }
                });
            }
        });
        Ok(())
    }
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("valid header")
}

fn json_response<T: serde::Serialize>(v: &T) -> Response<std::io::Cursor<Vec<u8>>> {
    let body = serde_json::to_vec_pretty(v).expect("serialisable");
    Response::from_data(body).with_header(header("Content-Type", "application/json"))
}

fn text(status: u16, msg: &str) -> Response<std::io::Cursor<Vec<u8>>> {
    Response::from_string(format!("{msg}\n"))
        .with_status_code(StatusCode(status))
        .with_header(header("Content-Type", "text/plain; charset=utf-8"))
}

/// One request: route it, answer it, log it.
fn handle(root: &Path, catalog: &mut Option<Catalog>, mut rq: Request) {
    let method = rq.method().clone();
    let url = rq.url().to_string();
    let path = url.split('?').next().unwrap_or("").to_string();
    let peer = rq
        .remote_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|| "-".into());
    if let Some(mac) = boot_mac(&method, &path) {
        let (status, bytes) = boot(root, catalog, mac, rq);
        eprintln!("{peer} {method} {url} {status} {bytes}");
        return;
    }
    let (status, bytes, result) = if let Some(api) = path.strip_prefix("/api/v1/") {
        let r = api_response(root, catalog, &method, api, &peer, &mut rq);
        let (status, body) = match r {
            Ok(resp) => (resp.status_code().0, resp),
            Err(e) => {
                let code = match e {
                    Error::NotFound(_) => 404,
                    Error::Invalid(_) => 400,
                    _ => 500,
                };
                (code, text(code, &format!("{e:#}")))
            }
        };
        let len = body.data_length().unwrap_or(0) as u64;
        (status, len, rq.respond(body))
    } else {
        match static_file(root, &method, &path, &rq) {
            Ok((status, len, resp)) => (status, len, rq.respond(resp)),
            Err((code, msg)) => (code, 0, rq.respond(text(code, &msg))),
        }
    };
    if let Err(e) = result {
        log::debug!("{peer} went away: {e}");
    }
    eprintln!("{peer} {method} {url} {status} {bytes}");
}

/// The MAC of a `GET /boot/MAC.ipxe`.
fn boot_mac<'a>(method: &Method, path: &'a str) -> Option<&'a str> {
    if *method != Method::Get && *method != Method::Head {
        return None;
    }
    path.strip_prefix("/boot/")
        .and_then(|f| f.strip_suffix(".ipxe"))
        .filter(|m| !m.contains('/'))
}

/// Answers `GET /boot/MAC.ipxe`; returns the status and length sent.
fn boot(root: &Path, catalog: &mut Option<Catalog>, mac: &str, rq: Request) -> (u16, u64) {
    let host = rq
        .headers()
        .iter()
        .find(|h| h.field.equiv("Host"))
        .map(|h| h.value.as_str().to_string());
    let (status, body) = match boot_response(root, catalog, mac, host.as_deref()) {
        Ok(script) => (200, script),
        Err(e) => (500, format!("#!ipxe\necho aurum: {e:#}\nsleep 10\nexit\n")),
    };
    let resp = Response::from_string(body)
        .with_status_code(StatusCode(status))
        .with_header(header("Content-Type", "text/plain; charset=utf-8"))
        .with_header(header("Cache-Control", "no-store"));
    let len = resp.data_length().unwrap_or(0) as u64;
    if let Err(e) = rq.respond(resp) {
        log::debug!("went away: {e}");
    }
    (status, len)
}

/// The per-node iPXE script for `mac` (any spelling; iPXE sends `${mac}` with colons), from
/// the node database. `host` is the Host header: the address the node reached us at, which is
/// where its kernel, initramfs and installer must come from too. An unknown MAC gets a script
/// that says so on the node's console and falls through to the next boot device.
fn boot_response(
    root: &Path,
    catalog: &mut Option<Catalog>,
    mac: &str,
    host: Option<&str>,
) -> Result<String> {
    if catalog.is_none() {
        *catalog = Some(Catalog::open(&root.join("aurum.db"))?);
    }
    let cat = catalog.as_mut().expect("opened above");
    // iPXE escapes the colons of `${mac}` in URLs (`52%3A54%3A...`).
    let mac = crate::nodedb::normalise_mac(&mac.replace("%3A", ":").replace("%3a", ":"))?;
    let Some(node) = cat.inventory_node(&mac)? else {
        log::warn!("{mac} asked for its boot script and is not in the node database");
        return Ok(format!(
            "#!ipxe\necho aurum: {mac} is not in the node database (aurum node add NAME --mac {mac})\nsleep 10\nexit\n"
        ));
    };
    let server = format!("http://{}", host.unwrap_or("localhost:8035"));
    let append = crate::pxe::kit_append(&root.join("bootkit"));
    Ok(crate::pxe::ipxe_script(&node, &server, &append))
}

/// Records an install phase of `node`. `done` switches it to local boot (and rewrites its
/// TFTP files) and, like `failed`, also becomes its report in `aurum nodes`.
fn install_phase(cat: &mut Catalog, node: &str, body: &[u8], peer: &str) -> Result<()> {
    let r: crate::install::report::PhaseReport = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("not an install phase report: {e}")))?;
    let n = cat.record_phase(node, &r.phase, &r.detail, r.revision.as_deref())?;
    if r.phase == "done" || r.phase == "failed" {
        let rev = n.last.as_ref().and_then(|l| l.revision.clone());
        let (image, revision) = match rev.as_deref().and_then(|s| s.split_once(' ')) {
            Some((name, id)) => (
                Some(name.split('@').next().unwrap_or(name).to_string()),
                Some(id.to_string()),
            ),
            None => (n.image.clone(), None),
        };
        cat.record_report(
            &NodeReport {
                hostname: n.name.clone(),
                image,
                revision,
                action: "install".into(),
                result: if r.phase == "done" { "ok" } else { "failed" }.into(),
                bytes: 0,
                seconds: 0.0,
                detail: r.detail.clone(),
            },
            Some(peer),
        )?;
    }
    if r.phase == "done" {
        // The switch is in the database already (what the HTTP scripts follow); a TFTP tree
        // that cannot be rewritten is the administrator's to fix, not the node's.
        if let Err(e) = crate::pxe::refresh_tftp(cat, &n) {
            log::warn!("{}: could not rewrite its TFTP files: {e}", n.name);
        }
        eprintln!("{} installed: switched to local boot", n.name);
    }
    Ok(())
}

fn api_response(
    root: &Path,
    catalog: &mut Option<Catalog>,
    method: &Method,
    api: &str,
    peer: &str,
    rq: &mut Request,
) -> Result<Response<std::io::Cursor<Vec<u8>>>> {
    if catalog.is_none() {
        *catalog = Some(Catalog::open(&root.join("aurum.db"))?);
    }
    let cat = catalog.as_mut().expect("opened above");
    let parts: Vec<&str> = api.trim_end_matches('/').split('/').collect();
    match (method, parts.as_slice()) {
        (Method::Get, ["images"]) => Ok(json_response(&cat.images()?)),
        (Method::Get, ["images", name, "revisions"]) => {
            if !cat.image_exists(name)? {
                return Err(Error::NotFound(format!("no image `{name}`")));
            }
            Ok(json_response(&cat.revisions(name)?))
        }
        (Method::Get, ["nodes"]) => Ok(json_response(&cat.nodes()?)),
        (Method::Post, ["deltas"]) => {
            let mut body = Vec::new();
            rq.as_reader()
                .take(MAX_DELTA_BODY + 1)
                .read_to_end(&mut body)?;
            if body.len() as u64 > MAX_DELTA_BODY {
                return Err(invalid("delta request too large"));
            }
            let repo = crate::repo::Repository::open(root, crate::repo::Lock::Shared)?;
            let blobs = crate::repo::BlobsAndManifests {
                root,
                blobs: repo.blobs()?,
            };
            let answer = crate::delta::answer(&crate::delta::Cache::new(root), &blobs, &body)?;
            Ok(Response::from_data(answer)
                .with_header(header("Content-Type", "application/octet-stream")))
        }
        (Method::Get, ["templates"]) => Ok(json_response(&cat.templates()?)),
        (Method::Get, ["templates", class]) => {
            let t = cat
                .template(class, None)?
                .ok_or_else(|| Error::NotFound(format!("no template for class `{class}`")))?;
            Ok(Response::from_data(t.text.into_bytes())
                .with_header(header("Content-Type", "application/toml; charset=utf-8")))
        }
        (Method::Post, ["install", node]) => {
            let mut body = Vec::new();
            rq.as_reader().take(MAX_BODY + 1).read_to_end(&mut body)?;
            if body.len() as u64 > MAX_BODY {
                return Err(invalid("report too large"));
            }
            install_phase(cat, node, &body, peer)?;
            Ok(Response::from_data(Vec::new()).with_status_code(StatusCode(204)))
        }
        (Method::Post, ["reports"]) => {
            let mut body = Vec::new();
            rq.as_reader().take(MAX_BODY + 1).read_to_end(&mut body)?;
            if body.len() as u64 > MAX_BODY {
                return Err(invalid("report too large"));
            }
            let report: NodeReport = serde_json::from_slice(&body)
                .map_err(|e| invalid(format!("not a node report: {e}")))?;
            crate::repo::check_name("host", &report.hostname)?;
            cat.record_report(&report, Some(peer))?;
            Ok(Response::from_data(Vec::new()).with_status_code(StatusCode(204)))
        }
        (_, parts) => match endpoint_method(parts) {
            Some(allowed) => Ok(text(405, &format!("/api/v1/{api} answers {allowed} only"))
                .with_header(header("Allow", allowed))),
            None => Err(Error::NotFound(format!("no API endpoint /api/v1/{api}"))),
        },
    }
}

/// The one method an API endpoint answers, for a 405 to name.
fn endpoint_method(parts: &[&str]) -> Option<&'static str> {
    match parts {
        ["images"] | ["images", _, "revisions"] | ["nodes"] | ["templates"] | ["templates", _] => {
            Some("GET")
        }
        ["deltas"] | ["install", _] | ["reports"] => Some("POST"),
        _ => None,
    }
}

/// Maps a URL path to a file of the static layout: `/X` is `REPO/public/X`, the directory that
/// holds what may be published and nothing else (so URLs did not change when the files moved
/// there from the repository's top). The catalog, the lock and temporary files lie outside it.
fn static_path(root: &Path, path: &str) -> Option<PathBuf> {
    let rel = path.trim_start_matches('/');
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "._-/".contains(c);
    if rel.is_empty()
        || !rel.chars().all(ok_char)
        || rel.split('/').any(|c| c.is_empty() || c.starts_with('.'))
    {
        return None;
    }
    if let Some(f) = rel.strip_prefix("boot/kit/") {
        return [crate::pxe::KIT_KERNEL, crate::pxe::KIT_INITRD]
            .contains(&f)
            .then(|| root.join("bootkit").join(f));
    }
    Some(crate::store::published(root).join(rel))
}

type FileResponse = Response<std::io::Take<File>>;

/// A static file, whole or the one byte range asked for.
fn static_file(
    root: &Path,
    method: &Method,
    path: &str,
    rq: &Request,
) -> std::result::Result<(u16, u64, FileResponse), (u16, String)> {
    if *method != Method::Get && *method != Method::Head {
        return Err((405, format!("{method} is not served here")));
    }
    let file_path = static_path(root, path).ok_or((404, format!("{path} is not served here")))?;
    let mut file = File::open(&file_path).map_err(|_| (404, format!("{path} not found")))?;
    let meta = file.metadata().map_err(|e| (500, e.to_string()))?;
    if !meta.is_file() {
        return Err((404, format!("{path} is not a file")));
    }
    let size = meta.len();
    let immutable = path.ends_with(".pack") || path.ends_with(".idx") || path.ends_with(".mf");
    let mut headers = vec![
        header("Accept-Ranges", "bytes"),
        header("Content-Type", "application/octet-stream"),
        header(
            "Cache-Control",
            if immutable {
                "public, max-age=31536000, immutable"
            } else {
                "no-cache"
            },
        ),
    ];
    let range = rq
        .headers()
        .iter()
        .find(|h| h.field.equiv("Range"))
        .map(|h| h.value.as_str().to_string());
    let (status, start, len) = match range {
        None => (200, 0, size),
        Some(r) => match parse_range(&r, size) {
            Some((a, b)) => {
                headers.push(header("Content-Range", &format!("bytes {a}-{b}/{size}")));
                (206, a, b - a + 1)
            }
            None => {
                return Err((416, format!("range {r} is not satisfiable (size {size})")));
            }
        },
    };
    file.seek(SeekFrom::Start(start))
        .map_err(|e| (500, e.to_string()))?;
    // A known length, never chunked: caches and range clients want Content-Length.
    let resp = Response::new(
        StatusCode(status),
        headers,
        file.take(len),
        Some(len as usize),
        None,
    )
    .with_chunked_threshold(usize::MAX);
    Ok((status, len, resp))
}

/// Parses one `bytes=A-B`, `bytes=A-` or `bytes=-N` range into inclusive offsets.
pub fn parse_range(spec: &str, size: u64) -> Option<(u64, u64)> {
    let r = spec.trim().strip_prefix("bytes=")?;
    if r.contains(',') || size == 0 {
        return None;
    }
    let (a, b) = r.split_once('-')?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().ok()?;
            (size.saturating_sub(n), size - 1)
        }
        (a, "") => (a.parse().ok()?, size - 1),
        (a, b) => (a.parse().ok()?, b.parse::<u64>().ok()?.min(size - 1)),
    };
    (start <= end && start < size).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(parse_range("bytes=90-", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=-10", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=95-200", 100), Some((95, 99)));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
    }

    #[test]
    fn only_the_static_layout_is_served() {
        let root = Path::new("/r");
        assert_eq!(
            static_path(root, "/packs/ab/x.pack"),
            Some(PathBuf::from("/r/public/packs/ab/x.pack"))
        );
        assert!(static_path(root, "/refs/compute/head").is_some());
        assert_eq!(
            static_path(root, "/FORMAT"),
            Some(PathBuf::from("/r/public/FORMAT"))
        );
        assert_eq!(
            static_path(root, "/boot/kit/vmlinuz"),
            Some(PathBuf::from("/r/bootkit/vmlinuz"))
        );
        assert!(static_path(root, "/boot/kit/cmdline").is_none());
        // The catalog's name leads into public/, where nothing of the kind lies.
        for private in ["/aurum.db", "/lock", "/tmp/x"] {
            assert!(static_path(root, private)
                .unwrap()
                .starts_with("/r/public/"));
        }
        for bad in [
            "/packs/../aurum.db",
            "/packs/../../aurum.db",
            "/refs/.x",
            "/packs//a",
            "/",
        ] {
            assert!(static_path(root, bad).is_none(), "{bad}");
        }
    }
}
