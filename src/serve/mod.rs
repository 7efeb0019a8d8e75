//! `aurum serve`: the repository over HTTP.
//!
//! Three things are served. The repository's static layout (`FORMAT`, `refs/`, `manifests/`,
//! `packs/`, `templates/`) with HTTP Range support, which is all a node needs to update, so any web server,
//! cache or object store holding a copy serves just as well. And a small JSON API for what only
//! the catalog knows: images, revisions, partition templates (`/api/v1/templates/CLASS`), and
//! the reports nodes send after an update. And network boot: the per-node iPXE scripts
//! (`/boot/MAC.ipxe`, from the node database), the boot kit (`/boot/kit/`, from the
//! repository's `bootkit/` directory), the install phases nodes report
//! (`/api/v1/install/NODE`), and who a diskless node is and what it boots (`/api/v1/boot/MAC`).
//!
//! Files are streamed from disk, never loaded whole, so memory stays flat however many clients
//! fetch packs at once. Immutable files (packs, indexes, manifests: all named by their hash)
//! are marked cacheable forever; refs and `packs/list` must be revalidated.

mod http;
pub mod status;
pub mod tls;
mod upstream;

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use self::http::{Handler, Method, Reply, Request};
use crate::catalog::{Catalog, NodeAction, NodeReport, Outcome};
use crate::error::{invalid, Error, IoContext, Result};
use crate::format::report::InstallPhase;
use crate::format::report::PhaseReport;
use crate::name::ClassName;

/// The port `aurum serve` listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 8035;
/// Largest report body accepted.
const MAX_BODY: usize = 64 << 10;
/// Largest delta request accepted (512 records with 255 bases each).
const MAX_DELTA_BODY: usize = crate::format::delta::MAX_REQUEST;
const _: () = assert!(MAX_DELTA_BODY as u64 <= http::MAX_BODY);

/// A bound listening socket, not yet answering.
pub struct Serving {
    listener: TcpListener,
    stalled: Duration,
    pub addr: SocketAddr,
    options: Options,
    /// A cache tier's hold on its directory's `tmp/` ([`upstream::prepare`]).
    _tier_lock: Option<std::fs::File>,
}

/// How a server behaves beyond the defaults.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// File answers sent at once at most (0: no limit); past it, `503` with `Retry-After`.
    pub max_transfers: usize,
    /// A cache tier: files this server lacks are fetched from here, checked, kept and served;
    /// the API and boot scripts are passed on.
    pub upstream: Option<String>,
    /// Take writes (node reports, install phases) without a token: for a lab network only.
    pub open_writes: bool,
    /// Speak TLS with these certificates (reloadable).
    pub tls: Option<std::sync::Arc<tls::Certificates>>,
}

/// Binds `listen` for the repository at `root`; connections that stall for `stalled` (a
/// request head not complete, an idle kept-alive connection, an answer not read) are closed.
pub fn bind(root: &Path, listen: &str, stalled: Duration) -> Result<Serving> {
    bind_with(root, listen, stalled, Options::default())
}

/// [`bind`] with `options`. A cache tier (`options.upstream`) needs no repository at `root`:
/// the directory (created when missing) holds what it has fetched, under `public/`.
pub fn bind_with(
    root: &Path,
    listen: &str,
    stalled: Duration,
    options: Options,
) -> Result<Serving> {
    let mut tier_lock = None;
    if options.upstream.is_some() {
        tier_lock = upstream::prepare(root)?;
    } else if !root.join("FORMAT").exists() {
        return Err(Error::NotFound(format!(
            "no aurum repository at {}: create one with `aurum init`",
            root.display()
        )));
    }
    let listener = TcpListener::bind(listen)
        .map_err(|e| invalid(format!("cannot listen on {listen}: {e}")))?;
    let addr = listener.local_addr()?;
    Ok(Serving {
        listener,
        stalled,
        addr,
        options,
        _tier_lock: tier_lock,
    })
}

impl Serving {
    /// Answers requests on up to `threads` workers until `stop` is set; returns once the answers
    /// being sent are done.
    pub fn run(self, root: &Path, threads: usize, stop: &AtomicBool) -> Result<()> {
        let options = &self.options;
        let upstream = match &options.upstream {
            Some(url) => Some(upstream::Upstream::new(url)?),
            None => None,
        };
        let upstream = upstream.as_ref();
        let tls = match &options.tls {
            Some(certs) => Some(certs.server_config()?),
            None => None,
        };
        http::run(self.listener, threads, self.stalled, tls, stop, || Worker {
            root,
            catalog: None,
            options,
            upstream,
        })
    }
}

/// What one server thread keeps between requests: its catalog connection, opened on the
/// first request that needs it.
struct Worker<'a> {
    root: &'a Path,
    catalog: Option<Catalog>,
    options: &'a Options,
    upstream: Option<&'a upstream::Upstream>,
}

impl Worker<'_> {
    fn catalog(&mut self) -> Result<&mut Catalog> {
        if self.catalog.is_none() {
            self.catalog = Some(Catalog::open(&self.root.join("aurum.db"))?);
        }
        Ok(self.catalog.as_mut().expect("opened above"))
    }
}

impl Handler for Worker<'_> {
    /// One request: route it and answer it (the engine logs it).
    fn handle(&mut self, rq: &Request, reply: &mut Reply) {
        let path = rq.path();
        if let Some(up) = self.upstream {
            return up.handle(self.root, rq, reply, self.options.max_transfers);
        }
        if let Some(mac) = boot_mac(rq.method, path) {
            let host = rq.header("Host");
            let answer = match boot_response(self, mac, host) {
                Ok(script) => Answer::new(200, TEXT, script.into_bytes()),
                Err(e) => Answer::new(
                    500,
                    TEXT,
                    format!("#!ipxe\necho aurum: {e:#}\nsleep 10\nexit\n").into_bytes(),
                ),
            };
            return answer.header("Cache-Control", "no-store").send(reply);
        }
        if matches!(rq.method, Method::Get | Method::Head) && matches!(path, "/" | "/status") {
            let answer = match self.catalog().and_then(|c| status::page(c)) {
                Ok(html) => Answer::new(200, "text/html; charset=utf-8", html.into_bytes()),
                Err(e) => text(500, &format!("{e:#}")),
            };
            return answer.header("Cache-Control", "no-store").send(reply);
        }
        if let Some(api) = path.strip_prefix("/api/v1/") {
            let answer = api_response(self, rq, api).unwrap_or_else(|e| {
                let code = match e {
                    Error::NotFound(_) => 404,
                    Error::Invalid(_) => 400,
                    _ => 500,
                };
                text(code, &format!("{e:#}"))
            });
            return answer.send(reply);
        }
        if let Err((code, msg)) = static_file(self.root, rq, reply, self.options.max_transfers) {
            let answer = text(code, &msg);
            match code {
                405 => answer.header("Allow", "GET, HEAD"),
                _ => answer,
            }
            .send(reply)
        }
    }
}

const TEXT: &str = "text/plain; charset=utf-8";

/// An answer made in memory: the API, boot scripts, errors.
struct Answer {
    status: u16,
    content_type: &'static str,
    extra: Option<(&'static str, &'static str)>,
    body: Vec<u8>,
}

impl Answer {
    fn new(status: u16, content_type: &'static str, body: Vec<u8>) -> Answer {
        Answer {
            status,
            content_type,
            extra: None,
            body,
        }
    }

    fn header(mut self, name: &'static str, value: &'static str) -> Answer {
        self.extra = Some((name, value));
        self
    }

    fn send(self, reply: &mut Reply) {
        reply.status(self.status);
        if self.status != 204 {
            reply.header("Content-Type", self.content_type);
        }
        if let Some((name, value)) = self.extra {
            reply.header(name, value);
        }
        reply.bytes(&self.body);
    }
}

fn json_answer<T: serde::Serialize>(v: &T) -> Answer {
    let body = serde_json::to_vec_pretty(v).expect("serialisable");
    Answer::new(200, "application/json", body)
}

fn text(status: u16, msg: &str) -> Answer {
    Answer::new(status, TEXT, format!("{msg}\n").into_bytes())
}

fn no_content() -> Answer {
    Answer::new(204, "", Vec::new())
}

/// The MAC of a `GET /boot/MAC.ipxe`.
fn boot_mac(method: Method, path: &str) -> Option<&str> {
    if method != Method::Get && method != Method::Head {
        return None;
    }
    path.strip_prefix("/boot/")
        .and_then(|f| f.strip_suffix(".ipxe"))
        .filter(|m| !m.contains('/'))
}

/// The per-node iPXE script for `mac` (any spelling; iPXE sends `${mac}` with colons), from
/// the node database. `host` is the Host header: the address the node reached us at, which is
/// where its kernel, initramfs and installer must come from too. An unknown MAC gets a script
/// that says so on the node's console and falls through to the next boot device.
fn boot_response(w: &mut Worker, mac: &str, host: Option<&str>) -> Result<String> {
    let root = w.root;
    // The scheme the script was asked for on: an HTTPS server's installers talk HTTPS (and
    // check its certificate against the kit's CA), never plain HTTP to a TLS port.
    let scheme = if w.options.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let cat = w.catalog()?;
    // iPXE escapes the colons of `${mac}` in URLs (`52%3A54%3A...`).
    let mac = crate::catalog::nodes::normalise_mac(&mac.replace("%3A", ":").replace("%3a", ":"))?;
    let Some(node) = cat.inventory_node(&mac)? else {
        log::warn!("{mac} asked for its boot script and is not in the node database");
        return Ok(format!(
            "#!ipxe\necho aurum: {mac} is not in the node database (aurum node add NAME --mac {mac})\nsleep 10\nexit\n"
        ));
    };
    let server = format!("{scheme}://{}", host.unwrap_or("localhost:8035"));
    let append = crate::netboot::pxe::kit_append(&root.join("bootkit"));
    let append = crate::netboot::pxe::with_token(cat, &node, &append)?;
    Ok(crate::netboot::pxe::ipxe_script(&node, &server, &append))
}

/// Records an install phase of `node`. `done` switches it to local boot (and rewrites its
/// TFTP files) and, like `failed`, also becomes its report in `aurum nodes`.
fn install_phase(cat: &mut Catalog, node: &str, body: &[u8], peer: &str) -> Result<()> {
    let r = PhaseReport::decode(body)?;
    let n = cat.record_phase(node, r.phase, &r.detail, r.revision.as_deref())?;
    if r.phase.is_final() {
        let rev = n.last.as_ref().and_then(|l| l.revision.clone());
        let (image, revision) = match rev.as_deref().and_then(PhaseReport::image_and_id) {
            Some((image, id)) => (Some(image.to_string()), Some(id.to_string())),
            None => (n.image.clone(), None),
        };
        cat.record_report(
            &NodeReport {
                hostname: n.name.clone(),
                image,
                revision,
                action: NodeAction::Install,
                result: if r.phase == InstallPhase::Done {
                    Outcome::Ok
                } else {
                    Outcome::Failed
                },
                bytes: 0,
                seconds: 0.0,
                detail: r.detail.clone(),
                boot: None,
            },
            Some(peer),
        )?;
    }
    if r.phase == InstallPhase::Done {
        // The switch is in the database already (what the HTTP scripts follow); a TFTP tree
        // that cannot be rewritten is the administrator's to fix, not the node's.
        if let Err(e) = crate::netboot::pxe::refresh_tftp(cat, &n) {
            log::warn!("{}: could not rewrite its TFTP files: {e}", n.name);
        }
        log::warn!(
            target: crate::progress::NOTICE,
            "{} installed: switched to local boot",
            n.name
        );
    }
    Ok(())
}

fn api_response(w: &mut Worker, rq: &Request, api: &str) -> Result<Answer> {
    let root = w.root;
    let open = w.options.open_writes;
    let cat = w.catalog()?;
    let parts: Vec<&str> = api.trim_end_matches('/').split('/').collect();
    let body = rq.body;
    match (rq.method, parts.as_slice()) {
        (Method::Get, ["images"]) => Ok(json_answer(&cat.images()?)),
        (Method::Get, ["images", name, "revisions"]) => {
            if !cat.image_exists(name)? {
                return Err(Error::NotFound(format!("no image `{name}`")));
            }
            Ok(json_answer(&cat.revisions(name)?))
        }
        (Method::Get, ["nodes"]) => Ok(json_answer(&cat.nodes()?)),
        (Method::Get, ["rollouts"]) => {
            let mut all = Vec::new();
            for r in cat.rollouts()? {
                let nodes = cat.rollout_nodes(r.id)?;
                all.push(serde_json::json!({"rollout": r, "nodes": nodes}));
            }
            Ok(json_answer(&all))
        }
        (Method::Get, ["rollouts", id]) => {
            let id: i64 = id
                .parse()
                .map_err(|_| Error::NotFound(format!("no rollout `{id}`")))?;
            Ok(json_answer(&serde_json::json!({
                "rollout": cat.rollout(id)?,
                "nodes": cat.rollout_nodes(id)?,
                "events": cat.rollout_events(id)?,
            })))
        }
        (Method::Post, ["deltas"]) => {
            if body.len() > MAX_DELTA_BODY {
                return Err(invalid("delta request too large"));
            }
            let repo = crate::repo::Repository::open(root, crate::repo::Lock::Shared)?;
            let blobs = crate::repo::BlobsAndManifests {
                root,
                blobs: repo.blobs()?,
            };
            let answer =
                crate::repo::delta::answer(&crate::repo::delta::Cache::new(root), &blobs, body)?;
            Ok(Answer::new(200, "application/octet-stream", answer))
        }
        (Method::Post, ["locate"]) => Ok(Answer::new(
            200,
            "application/octet-stream",
            locate(root, cat, body)?,
        )),
        (Method::Get, ["boot", mac]) => Ok(json_answer(&crate::netboot::memory::identity(
            root, cat, mac,
        )?)
        .header("Cache-Control", "no-store")),
        (Method::Get, ["templates"]) => Ok(json_answer(&cat.templates()?)),
        (Method::Get, ["templates", class]) => {
            let t = cat
                .template(&ClassName::new(*class)?, None)?
                .ok_or_else(|| Error::NotFound(format!("no template for class `{class}`")))?;
            Ok(Answer::new(
                200,
                "application/toml; charset=utf-8",
                t.text.into_bytes(),
            ))
        }
        (Method::Post, ["install", node]) => {
            if body.len() > MAX_BODY {
                return Err(invalid("report too large"));
            }
            crate::repo::check_name("node", node)?;
            if let Some(refused) = refuse_write(cat, rq, Some(node), open)? {
                return Ok(refused);
            }
            install_phase(cat, node, body, &rq.peer.to_string())?;
            Ok(no_content())
        }
        (Method::Post, ["reports"]) => {
            if body.len() > MAX_BODY {
                return Err(invalid("report too large"));
            }
            let report = NodeReport::decode(body)?;
            crate::repo::check_name("host", &report.hostname)?;
            let node = Some(report.hostname.as_str());
            if let Some(refused) = refuse_write(cat, rq, node, open)? {
                return Ok(refused);
            }
            cat.record_report(&report, Some(&rq.peer.to_string()))?;
            Ok(no_content())
        }
        (_, parts) => match endpoint_method(parts) {
            Some(allowed) => Ok(text(405, &format!("/api/v1/{api} answers {allowed} only"))
                .header("Allow", allowed)),
            None => Err(Error::NotFound(format!("no API endpoint /api/v1/{api}"))),
        },
    }
}

/// The answer that refuses a write, or `None` when the request's bearer token allows it: an
/// admin token, or the token of `node` (the node the write is about). No token: 401; a wrong,
/// revoked or other node's token: 403. Every refusal is logged with the peer's address.
fn refuse_write(
    cat: &mut Catalog,
    rq: &Request,
    node: Option<&str>,
    open: bool,
) -> Result<Option<Answer>> {
    if open {
        return Ok(None);
    }
    let what = format!("{} {}", rq.method_name, rq.path());
    let Some(presented) = rq
        .header("Authorization")
        .and_then(crate::format::token::bearer)
    else {
        log::warn!("{}: {what} refused: no token", rq.peer);
        let msg = "this server takes writes with a token only: send `Authorization: Bearer TOKEN` \
                   (a node's token is in /var/lib/aurum-node/token; see `aurum token --help`)";
        return Ok(Some(
            text(401, msg).header("WWW-Authenticate", "Bearer realm=\"aurum\""),
        ));
    };
    match cat.authorize(presented, node)? {
        Ok(access) => {
            log::debug!("{}: {what} by {access:?}", rq.peer);
            Ok(None)
        }
        Err(why) => {
            log::warn!("{}: {what} refused: {why}", rq.peer);
            Ok(Some(text(403, &format!("refused: {why}"))))
        }
    }
}

/// The one method an API endpoint answers, for a 405 to name.
fn endpoint_method(parts: &[&str]) -> Option<&'static str> {
    match parts {
        ["images"]
        | ["images", _, "revisions"]
        | ["nodes"]
        | ["templates"]
        | ["templates", _]
        | ["rollouts"]
        | ["rollouts", _]
        | ["boot", _] => Some("GET"),
        ["deltas"] | ["locate"] | ["install", _] | ["reports"] => Some("POST"),
        _ => None,
    }
}

/// `POST /api/v1/locate`: where each asked blob lies, from the catalog, so that a node
/// updating reads no pack index (an index is as large as its pack's blob count, and the
/// packs other images' captures added since are read through before the right one). A
/// group's body length comes from its record header in the pack, 41 bytes read once a group.
fn locate(root: &Path, cat: &Catalog, body: &[u8]) -> Result<Vec<u8>> {
    use crate::format::pack::{self, Codec};
    use crate::format::Id;
    use std::collections::HashMap;
    use std::os::unix::fs::FileExt;
    let ids = pack::decode_locate_request(body)?;
    let places = cat.reading(|c| ids.iter().map(|id| c.blob(id)).collect::<Result<Vec<_>>>())?;
    // Each pack named once: whether it is published (a blob in one that is not is answered
    // "not here", and the node reads the indexes, which say what is published), and the body
    // length of each group a blob is in, from its record header. One pack open at a time.
    let mut order: Vec<usize> = (0..places.len()).filter(|&i| places[i].is_some()).collect();
    order.sort_unstable_by_key(|&i| places[i].as_ref().map(|(p, e)| (*p, e.offset)));
    let mut published: HashMap<Id, bool> = HashMap::new();
    let mut group_len: HashMap<(Id, u64), u64> = HashMap::new();
    let mut open: Option<(Id, File)> = None;
    for &i in &order {
        let (pack_id, e) = places[i].as_ref().expect("filtered above");
        let path = crate::store::pack_path(root, pack_id, "pack");
        if !*published.entry(*pack_id).or_insert_with(|| path.is_file()) {
            continue;
        }
        if e.codec != Codec::ZstdGroup || group_len.contains_key(&(*pack_id, e.offset)) {
            continue;
        }
        if open.as_ref().is_none_or(|(p, _)| p != pack_id) {
            open = Some((*pack_id, File::open(&path).at(&path)?));
        }
        let (_, file) = open.as_ref().expect("opened above");
        let no_group = || {
            crate::error::corrupt(format!(
                "{}: the catalog places blob {} in a group at offset {}, where the pack holds \
                 none; `aurum verify` checks the repository",
                path.display(),
                e.id.short(),
                e.offset
            ))
        };
        let at = e
            .offset
            .checked_sub(pack::RECORD_HEADER as u64)
            .ok_or_else(no_group)?;
        let mut header = [0u8; pack::RECORD_HEADER];
        file.read_exact_at(&mut header, at).at(&path)?;
        let (_, codec, stored, raw) = pack::parse_record_header(&header)?;
        if codec != Codec::ZstdGroup {
            return Err(no_group());
        }
        if stored != e.stored_len {
            return Err(crate::error::corrupt(format!(
                "{}: the group at offset {} is {stored} bytes, the catalog says {}; `aurum \
                 verify` checks the repository",
                path.display(),
                e.offset,
                e.stored_len
            )));
        }
        group_len.insert((*pack_id, e.offset), u64::from(raw));
    }
    let located: Vec<Option<pack::Located>> = places
        .into_iter()
        .map(|place| {
            let (pack_id, e) = place?;
            if !published[&pack_id] {
                return None;
            }
            let len = group_len.get(&(pack_id, e.offset)).copied();
            Some((pack_id, e, len))
        })
        .collect();
    Ok(pack::encode_locate_answer(&located))
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
        return [
            crate::netboot::pxe::KIT_KERNEL,
            crate::netboot::pxe::KIT_INITRD,
        ]
        .contains(&f)
        .then(|| root.join("bootkit").join(f));
    }
    Some(crate::store::published(root).join(rel))
}

/// What a `Range` header asks of a file of a given size (RFC 9110, 14.2).
#[derive(Debug, PartialEq, Eq)]
pub enum RangeAsk {
    /// No usable range: the whole file, `200`. A range in another unit, a malformed one and
    /// several ranges at once (which nodes never ask for) are ignored, as the RFC allows.
    Whole,
    /// Bytes `start..=end`, `206`.
    Part(u64, u64),
    /// A range that starts past the end, `416` with `Content-Range: bytes */SIZE`.
    Unsatisfiable,
}

/// Parses one `bytes=A-B`, `bytes=A-` or `bytes=-N` range against a file of `size` bytes.
pub fn parse_range(spec: &str, size: u64) -> RangeAsk {
    let Some(r) = spec.trim().strip_prefix("bytes=") else {
        return RangeAsk::Whole;
    };
    if r.contains(',') {
        return RangeAsk::Whole;
    }
    let Some((a, b)) = r.split_once('-') else {
        return RangeAsk::Whole;
    };
    let num = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (a.trim(), b.trim()) {
        ("", n) => match num(n) {
            Some(n) if n > 0 && size > 0 => RangeAsk::Part(size.saturating_sub(n), size - 1),
            Some(_) => RangeAsk::Unsatisfiable,
            None => RangeAsk::Whole,
        },
        (a, b) => {
            let Some(start) = num(a) else {
                return RangeAsk::Whole;
            };
            let end = match b {
                "" => u64::MAX,
                b => match num(b) {
                    Some(end) if end >= start => end,
                    _ => return RangeAsk::Whole,
                },
            };
            if start >= size {
                RangeAsk::Unsatisfiable
            } else {
                RangeAsk::Part(start, end.min(size - 1))
            }
        }
    }
}

/// A file's validators: its `ETag` (nginx's form: modification time and size in hex) and
/// its `Last-Modified`, both in whole seconds.
struct Validators<'a> {
    mtime: u64,
    size: u64,
    /// The object's id, for a file named by its hash: its entity tag, the same on every
    /// server and cache that holds it.
    id: Option<&'a str>,
}

/// Seconds a client told "busy" should wait: 1 at the limit, more the further past it.
fn busy_delay(transfers: usize, max: usize) -> u64 {
    (1 + transfers.saturating_sub(max) as u64 / max.max(1) as u64).min(30)
}

impl<'a> Validators<'a> {
    fn of(meta: &std::fs::Metadata, id: Option<&'a str>) -> Validators<'a> {
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        Validators {
            mtime,
            size: meta.len(),
            id,
        }
    }

    fn etag(&self) -> impl std::fmt::Display + '_ {
        struct Tag<'a, 'b>(&'a Validators<'b>);
        impl std::fmt::Display for Tag<'_, '_> {
            fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                match self.0.id {
                    Some(id) => write!(f, "\"{id}\""),
                    None => write!(f, "\"{:x}-{:x}\"", self.0.mtime, self.0.size),
                }
            }
        }
        Tag(self)
    }

    fn last_modified(&self) -> httpdate::HttpDate {
        httpdate::HttpDate::from(UNIX_EPOCH + Duration::from_secs(self.mtime))
    }

    /// Whether an entity tag names this version; `weak` allows a `W/` tag (If-None-Match).
    fn is_tag(&self, tag: &str, weak: bool) -> bool {
        let tag = match tag.strip_prefix("W/") {
            Some(t) if weak => t,
            Some(_) => return false,
            None => tag,
        };
        let quoted = tag.strip_prefix('"').and_then(|t| t.strip_suffix('"'));
        if let Some(id) = self.id {
            return quoted == Some(id);
        }
        let parts = quoted.and_then(|t| t.split_once('-'));
        parts.is_some_and(|(m, s)| {
            u64::from_str_radix(m, 16) == Ok(self.mtime)
                && u64::from_str_radix(s, 16) == Ok(self.size)
        })
    }

    /// Seconds since the epoch of an HTTP date, if it is one.
    fn date(value: &str) -> Option<u64> {
        let t: SystemTime = httpdate::parse_http_date(value).ok()?;
        t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
    }

    /// `If-None-Match` / `If-Modified-Since` (RFC 9110, 13.1.2-3): the client's copy is current.
    fn not_modified(&self, rq: &Request) -> bool {
        match rq.header("If-None-Match") {
            Some(tags) => tags
                .split(',')
                .any(|t| t.trim() == "*" || self.is_tag(t.trim(), true)),
            None => rq
                .header("If-Modified-Since")
                .and_then(Validators::date)
                .is_some_and(|since| self.mtime <= since),
        }
    }

    /// `If-Range` (RFC 9110, 13.1.5): the range applies only if the client's validator is
    /// this version's, compared strongly (an entity tag) or exactly (a date).
    fn range_applies(&self, rq: &Request) -> bool {
        match rq.header("If-Range") {
            None => true,
            Some(v) if v.starts_with('"') || v.starts_with("W/") => self.is_tag(v, false),
            Some(v) => Validators::date(v) == Some(self.mtime),
        }
    }
}

/// Answers a static file, whole or the byte range asked for; an error is the status and
/// message to answer instead.
fn static_file(
    root: &Path,
    rq: &Request,
    reply: &mut Reply,
    max_transfers: usize,
) -> std::result::Result<(), (u16, String)> {
    let path = rq.path();
    if rq.method != Method::Get && rq.method != Method::Head {
        return Err((405, format!("{} is not served here", rq.method_name)));
    }
    let file_path = static_path(root, path).ok_or((404, format!("{path} is not served here")))?;
    let file = File::open(&file_path).map_err(|_| (404, format!("{path} not found")))?;
    let meta = file.metadata().map_err(|e| (500, e.to_string()))?;
    if !meta.is_file() {
        return Err((404, format!("{path} is not a file")));
    }
    let size = meta.len();
    let immutable = path.ends_with(".pack")
        || path.ends_with(".idx")
        || path.ends_with(".mf")
        || path.starts_with("/deltas/");
    // A file named by its hash has that hash as its strong entity tag.
    let id = immutable
        .then(|| file_path.file_stem().and_then(|s| s.to_str()))
        .flatten();
    let v = Validators::of(&meta, id);
    let cache = if immutable {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    if v.not_modified(rq) {
        reply
            .status(304)
            .header("ETag", v.etag())
            .header("Cache-Control", cache);
        reply.bytes(b"");
        return Ok(());
    }
    let ask = match rq.header("Range") {
        Some(r) if v.range_applies(rq) => parse_range(r, size),
        _ => RangeAsk::Whole,
    };
    let sending = match ask {
        RangeAsk::Whole => size,
        RangeAsk::Part(a, b) => b - a + 1,
        RangeAsk::Unsatisfiable => 0,
    };
    if max_transfers > 0 && sending > http::INLINE_FILE && http::transfers() >= max_transfers {
        reply
            .status(503)
            .header("Retry-After", busy_delay(http::transfers(), max_transfers))
            .header("Cache-Control", "no-store")
            .header("Content-Type", TEXT);
        reply.bytes(
            format!("{path}: the server is busy ({max_transfers} transfers); retry later\n")
                .as_bytes(),
        );
        return Ok(());
    }
    let (start, len) = match ask {
        RangeAsk::Whole => {
            reply.status(200);
            (0, size)
        }
        RangeAsk::Part(a, b) => {
            reply
                .status(206)
                .header("Content-Range", format_args!("bytes {a}-{b}/{size}"));
            (a, b - a + 1)
        }
        RangeAsk::Unsatisfiable => {
            let msg = format!("{path}: the range asked for is past its end (size {size})\n");
            reply
                .status(416)
                .header("Content-Range", format_args!("bytes */{size}"))
                .header("Content-Type", TEXT);
            reply.bytes(msg.as_bytes());
            return Ok(());
        }
    };
    reply
        .header("Accept-Ranges", "bytes")
        .header("Content-Type", "application/octet-stream")
        .header("Cache-Control", cache)
        .header("ETag", v.etag())
        .header("Last-Modified", v.last_modified());
    reply
        .file(file, start, len)
        .map_err(|e| (500, format!("{path}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeAsk::*;
        assert_eq!(parse_range("bytes=0-9", 100), Part(0, 9));
        assert_eq!(parse_range("bytes=90-", 100), Part(90, 99));
        assert_eq!(parse_range("bytes=-10", 100), Part(90, 99));
        assert_eq!(parse_range("bytes=-200", 100), Part(0, 99));
        assert_eq!(parse_range("bytes=95-200", 100), Part(95, 99));
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
        // Several ranges, another unit, nonsense: ignored, the whole file.
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Whole);
        assert_eq!(parse_range("items=0-1", 100), Whole);
        assert_eq!(parse_range("bytes=9-3", 100), Whole);
        assert_eq!(parse_range("bytes=+1-3", 100), Whole);
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
