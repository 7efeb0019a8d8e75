//! Diskless nodes on a read-only network root (the Kerrighed and OpenSSI way).
//!
//! The server publishes a revision once as a read-only filesystem image ([`export`]:
//! `aurum export REV --netroot`), an EROFS image built by `mkfs.erofs` from a checkout of the
//! revision, into `public/netroot/HASH.erofs` (named by its BLAKE3) with a record of its size
//! and hash, `public/netroot/ID.erofs.json`, and, with a signing key, a signature binding the
//! image's hash and size to the revision ([`crate::repo::netroot`], [`crate::format::netroot`]).
//! Every node of that revision boots the same image: a node whose
//! root is `netroot` in the node database network-boots the kit every time, and the kit's
//! `/init` runs `aurum boot-netroot`, which
//!
//! 1. asks the server who this node is by MAC (as [`super::memory`] does), resolves its
//!    revision and reads the image's record (`netroot/ID.erofs.json`). A node that trusts
//!    signing keys has had the revision's own signature checked by then (as a boot into memory
//!    does), and now refuses an image unless a trusted key signed it as that revision's, with
//!    the record's hash and size: a server cannot hand it a forged image under a signed
//!    revision's name;
//! 2. mounts a tmpfs (the kit mounts it on `/run`, which follows the node into its root)
//!    sized to the image plus headroom for the node's writes, and fetches the image into it
//!    whole, in ranges that resume where a transfer broke, checking its size and BLAKE3 hash
//!    against the record;
//! 3. mounts the image read-only (a loop device) and an overlay on top of it whose upper
//!    layer is in the same tmpfs: the node writes where it likes, the writes live in RAM and
//!    are gone at the next boot;
//! 4. records in the node state (`/var/lib/aurum-node/`, in the upper layer) that the root is
//!    the revision, then lays the node's overrides (`override`, `override.GROUP`,
//!    `override.NODE`, fetched from the server) over it with the updateclient engine, so the
//!    overrides land in the upper layer and `aurum updateclient --dry-run --verify-local` on
//!    the running node compares its root with the revision plus overrides;
//! 5. writes the node's identity as a boot into memory does, and mounts the persistent
//!    filesystems the node's root lists in [`PERSIST_FSTAB`] (a per-node directory that
//!    outlives the boot, where the administrator asks for one);
//! 6. reports the phases to the server.
//!
//! Compared with a boot into memory, the node fetches the image compressed (LZ4HC: about half
//! the tree) and keeps it compressed in RAM, and file data is decompressed into the page cache
//! only when read; the image is one file for a web server or cache to serve, and the same
//! bytes for every node of the revision.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde::Serialize;

use crate::apply::node::{HistoryEntry, Node, RevRef};
use crate::apply::overrides;
use crate::apply::source::Target;
use crate::apply::source::{HttpRepo, RevisionSource};
use crate::catalog::nodes::RootFs;
use crate::devices::Mount;
use crate::error::{invalid, Error, IoContext, Result};
use crate::format::netroot::{
    image_path, info_path, nfs_info_path, nfs_pseudo, sig_path, ImageFormat, ImageInfo, NfsExport,
    NFS_DIR,
};
use crate::format::report::NodeAction;
use crate::format::signature::{decode, NetrootSignature};
use crate::install::{Phase, Reporter};
use crate::netboot::memory::{self, BootIdentity, MemoryOptions};
use crate::progress::Progress;
use crate::repo::Repository;
use crate::trust::{self, SigningKey, TrustedKeys, WantedNetroot};

/// The node's persistent filesystems, in fstab(5) form, in its root (put it in an override
/// image): mounted by `boot-netroot` before the switch of root.
pub const PERSIST_FSTAB: &str = "etc/aurum/persist.fstab";

/// The directory of the image, its mount and the overlay's layers, in the writable tmpfs.
const WORK: &str = "aurum-netroot";

/// Bytes fetched per range request: a broken transfer resumes from the last whole range.
const PIECE: u64 = 8 << 20;

/// What an export wrote.
#[derive(Debug, Serialize)]
pub struct ExportReport {
    pub info: ImageInfo,
    /// Where the image is.
    pub output: PathBuf,
    /// The key that signed the image (`SHA256:...`), when one did.
    pub signed_by: Option<String>,
    pub seconds: f64,
    pub warnings: Vec<String>,
}

/// Builds revision `rev`'s EROFS image: into `public/netroot/` (with its record, and signed
/// with `key` when there is one) when `output` is `None`, else into the file `output`. The
/// revision is checked out into the repository's `tmp/` (every blob verified), `mkfs.erofs`
/// makes the image beside it, and the image is published by [`crate::repo::netroot::publish`]:
/// a killed export leaves no record naming a partial image.
pub fn export(
    repo: &Repository,
    rev: &crate::catalog::Revision,
    output: Option<&Path>,
    key: Option<&SigningKey>,
    progress: &dyn Progress,
) -> Result<ExportReport> {
    let started = Instant::now();
    if !crate::devices::have("mkfs.erofs") {
        return Err(invalid(
            "mkfs.erofs is not installed: install erofs-utils (Debian: apt-get install erofs-utils)",
        ));
    }
    let tmp_root = repo.root.join("tmp");
    std::fs::create_dir_all(&tmp_root).at(&tmp_root)?;
    let tmp = tempfile::Builder::new()
        .prefix("netroot.")
        .tempdir_in(&tmp_root)
        .at(&tmp_root)?;
    let tree = tmp.path().join("tree");
    let manifest = crate::repo::StoredManifest { repo, id: rev.id };
    let checkout = crate::apply::checkout(&manifest, &repo.blobs_for_command()?, &tree, progress)?;
    let image = tmp.path().join("image");
    // --preserve-mtime: every file keeps its own mtime (nanoseconds included), at the cost of
    // extended inodes; xattrs are kept by default. LZ4HC: what the Debian kernel's EROFS reads (no LZMA there).
    // The filesystem's UUID comes from the revision, not from chance; the superblock's build
    // time still differs from run to run (erofs-utils 1.5's -T and SOURCE_DATE_EPOCH would also
    // set every file's mtime), so images are not byte-reproducible: see the book's design notes.
    crate::devices::run(
        Command::new("mkfs.erofs")
            .args(["-zlz4hc", "--preserve-mtime", "--quiet"])
            .arg(format!("-U{}", uuid_of(&rev.id)))
            .arg(&image)
            .arg(&tree),
    )
    .map_err(|e| Error::Tool(format!("building the image of {}: {e}", rev.name())))?;
    let (bytes, hash) = crate::repo::netroot::hash_file(&image)?;
    let info = ImageInfo {
        id: rev.id.hex(),
        format: ImageFormat::Erofs,
        path: image_path(&hash.hex(), ImageFormat::Erofs),
        bytes,
        blake3: hash.hex(),
        entries: checkout.entries as u64,
        tree_bytes: checkout.bytes,
    };
    let mut warnings = checkout.warnings;
    let (target, signed_by) = match output {
        Some(o) => {
            if let Some(d) = o.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(d).at(d)?;
            }
            std::fs::set_permissions(&image, std::os::unix::fs::PermissionsExt::from_mode(0o644))
                .at(&image)?;
            std::fs::rename(&image, o).at(o)?;
            (o.to_path_buf(), None)
        }
        None => {
            let sig = crate::repo::netroot::publish(&repo.root, rev, &image, &info, key)?;
            if sig.is_none() && !repo.signatures(&rev.image, rev.number)?.is_empty() {
                warnings.push(format!(
                    "{} is signed but its network-root image is not: nodes that trust keys refuse it; sign it with `aurum sign {} --sign-key KEY`",
                    rev.name(),
                    rev.name()
                ));
            }
            (
                crate::store::published(&repo.root).join(&info.path),
                key.filter(|_| sig.is_some()).map(SigningKey::fingerprint),
            )
        }
    };
    Ok(ExportReport {
        info,
        output: target,
        signed_by,
        seconds: started.elapsed().as_secs_f64(),
        warnings,
    })
}

/// What an NFS export wrote.
#[derive(Debug, Serialize)]
pub struct NfsExportReport {
    #[serde(flatten)]
    pub record: NfsExport,
    /// The file of ganesha EXPORT blocks, one per exported revision, to `%include`.
    pub ganesha_config: PathBuf,
    /// The revision's EXPORT block (as in that file).
    pub ganesha_block: String,
    /// The tree was there already (exported before): only the record was written.
    pub reused: bool,
    pub seconds: f64,
    pub warnings: Vec<String>,
}

/// The first ganesha `Export_Id` aurum gives; its exports count up from here.
pub const FIRST_EXPORT_ID: u16 = 1000;

/// Publishes revision `rev` for nodes whose root is `nfs`: a verified checkout in
/// `nfsroot/ID/` (owners, modes, xattrs, hardlinks, nanosecond mtimes as the revision has
/// them; built in the repository's `tmp/` and renamed into place, so a killed export leaves
/// no partial tree under the real name), its record `public/netroot/ID.nfs.json` (where nodes
/// mount it from), and `nfsroot/ganesha-exports.conf` with an EXPORT block for every exported
/// revision. `server` is where nodes reach the NFS server (`HOST[:PORT]`), when it is not
/// the aurum server's host on port 2049. A revision exported before keeps its tree and
/// Export_Id; its record is written again.
pub fn export_nfs(
    repo: &Repository,
    rev: &crate::catalog::Revision,
    server: Option<&str>,
    progress: &dyn Progress,
) -> Result<NfsExportReport> {
    use std::os::unix::fs::PermissionsExt;
    let started = Instant::now();
    if let Some(s) = server {
        if s.is_empty() || s.contains(['/', ' ', '"', '\n']) {
            return Err(invalid(format!(
                "--nfs-server `{s}` is not HOST, HOST:PORT or :PORT"
            )));
        }
        // A port must be a port.
        nfs_host_port("http://localhost", Some(s))?;
    }
    let id = rev.id.hex();
    let dir = repo.root.join(NFS_DIR);
    std::fs::create_dir_all(&dir).at(&dir)?;
    // The trees hold every file of the revision, /etc/shadow included: for root (the NFS
    // server) alone.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).at(&dir)?;
    let path = dir.join(&id);
    let path_str = path
        .to_str()
        .filter(|p| !p.contains(['"', '\n']))
        .ok_or_else(|| {
            invalid(format!(
            "{} cannot be named in ganesha's configuration: move the repository to a plainer path",
            path.display()
        ))
        })?;
    let mut warnings = Vec::new();
    let reused = path.is_dir();
    let (entries, tree_bytes) = if reused {
        let old = published_nfs(&repo.root, &id)?;
        match old {
            Some(r) => (r.entries, r.tree_bytes),
            // A tree whose record was lost: the catalog's counts.
            None => (rev.files, rev.bytes),
        }
    } else {
        let tmp_root = repo.root.join("tmp");
        std::fs::create_dir_all(&tmp_root).at(&tmp_root)?;
        let tmp = tempfile::Builder::new()
            .prefix("nfsroot.")
            .tempdir_in(&tmp_root)
            .at(&tmp_root)?;
        let tree = tmp.path().join("tree");
        let manifest = crate::repo::StoredManifest { repo, id: rev.id };
        let checkout = crate::apply::checkout(&manifest, &repo.blobs()?, &tree, progress)?;
        warnings = checkout.warnings;
        // A checkout does not fsync file by file: the tree is made durable before it takes
        // its name, or a power cut could leave a tree that a later export takes as done.
        let fd = crate::sys::open_root(&tree)?;
        crate::sys::sync_fs(std::os::fd::AsFd::as_fd(&fd), &tree)?;
        std::fs::rename(&tree, &path).at(&path)?;
        crate::sys::sync_dir(&dir)?;
        (checkout.entries, checkout.bytes)
    };
    // Exports run under the repository's shared lock: two at once must not take the same
    // Export_Id, nor write ganesha's file over each other.
    let lock_path = dir.join(".export.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .at(&lock_path)?;
    crate::sys::lock_file(
        &lock,
        &lock_path,
        true,
        "another `aurum export --nfs` is choosing its Export_Id; waiting for it",
    )?;
    let records = crate::repo::publish::nfs_records(&repo.root)?;
    let export_id = match records.iter().find(|r| r.id == id) {
        Some(r) => r.export_id,
        None => (FIRST_EXPORT_ID..=u16::MAX)
            .find(|n| records.iter().all(|r| r.export_id != *n))
            .ok_or_else(|| invalid("every ganesha Export_Id from 1000 up is taken: delete old revisions (`aurum gc`)"))?,
    };
    let record = NfsExport {
        id: id.clone(),
        server: server.map(str::to_string),
        pseudo: nfs_pseudo(&id),
        path: path_str.to_string(),
        export_id,
        entries,
        tree_bytes,
    };
    let p = crate::store::published(&repo.root).join(nfs_info_path(&id));
    crate::store::create_public_dir(&repo.root, p.parent().expect("under netroot/"))?;
    crate::store::write_atomic(&repo.root, &p, &record.encode())?;
    let ganesha_config = crate::repo::publish::write_ganesha_exports(&repo.root)?;
    Ok(NfsExportReport {
        ganesha_block: record.ganesha_block(),
        record,
        ganesha_config,
        reused,
        seconds: started.elapsed().as_secs_f64(),
        warnings,
    })
}

/// The NFS export record of revision `id_hex`, when [`export_nfs`] wrote one.
pub fn published_nfs(root: &Path, id_hex: &str) -> Result<Option<NfsExport>> {
    let p = crate::store::published(root).join(nfs_info_path(id_hex));
    match std::fs::read(&p) {
        Ok(b) => NfsExport::decode(&b, &p.display().to_string()).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).at(&p),
    }
}

/// The filesystem UUID of a revision's image: its id's first 16 bytes, as a version-4-shaped
/// UUID (so tools that check the variant bits accept it).
fn uuid_of(id: &crate::format::Id) -> String {
    let mut b = [0u8; 16];
    b.copy_from_slice(&id.0[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = crate::format::to_hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// What a boot from a network root did.
#[derive(Debug, Serialize)]
pub struct NetrootReport {
    pub node: String,
    /// `compute@4 1f2e3d4c`.
    pub revision: String,
    pub id: String,
    pub overrides: Vec<String>,
    /// Where the read-only root came from: `erofs` (an image fetched whole) or `nfs`.
    pub source: &'static str,
    /// The image fetched (`netroot/ID.erofs`), or the NFS export mounted
    /// (`10.0.2.2:/aurum/ID`), and the image's size (0 for NFS).
    pub image: String,
    pub image_bytes: u64,
    /// Bytes received from the server (the image, manifests, override packs).
    pub fetched_bytes: u64,
    /// The writable tmpfs (image and overlay upper layer): its size limit, and what it holds.
    pub tmpfs_size: u64,
    pub tmpfs_used: u64,
    /// Where persistent filesystems were mounted ([`PERSIST_FSTAB`]).
    pub persist: Vec<String>,
    /// The random delay waited before the fetch, and the window it was drawn from (seconds).
    pub start_delay: f64,
    pub start_window: f64,
    pub seconds: f64,
    pub warnings: Vec<String>,
}

/// Boots the node's revision from its network image: a tmpfs at `rw` holds the image and the
/// overlay's writes, the overlay is mounted at `o.root`. On success everything stays mounted
/// (the caller moves `rw` into the new root and switches root into `o.root`); on failure
/// nothing does. `me` is who the node is ([`memory::ask_identity`]).
pub fn boot_netroot(
    o: &MemoryOptions,
    rw: &Path,
    me: &BootIdentity,
    reporter: &dyn Reporter,
) -> Result<NetrootReport> {
    let started = Instant::now();
    // An NFS root is read file by file as the node runs: nothing checks it against the signed
    // revision, so a node that trusts keys does not take one. Refused before anything is
    // fetched or mounted.
    if me.rootfs == RootFs::Nfs && !o.policy.keys.is_empty() {
        let e = Error::Untrusted(format!(
            "refusing to boot {} from an NFS root: this node trusts signing keys, and what an NFS server hands out file by file is not checked against the revision's signature. Boot the node into memory (`aurum node set {} --rootfs memory`), which checks every byte against the signed revision, or remove trusted-keys from the boot kit's node.toml",
            me.revision, me.node
        ));
        reporter.report(Phase::Failed(e.to_string()));
        return Err(e);
    }
    // The image comes over one connection, the revisions (signatures checked when the node
    // trusts keys) over another.
    // A rack powered on at once spreads its image fetches over the start window.
    let (delay, window) = o.start_delay(me);
    let r = o.source().and_then(|http| {
        let source = memory::checked(o, o.source()?);
        boot_inner(o, rw, &http, source.as_ref(), me, reporter, started).map(|rep| NetrootReport {
            start_delay: delay,
            start_window: window,
            ..rep
        })
    });
    match &r {
        Ok(rep) => reporter.report(Phase::Done(format!(
            "{} from a network root: {} {}, {} MiB of a {} MiB tmpfs used, {} MiB fetched, {:.1} s",
            rep.revision,
            rep.source,
            rep.image,
            rep.tmpfs_used >> 20,
            rep.tmpfs_size >> 20,
            rep.fetched_bytes >> 20,
            rep.seconds
        ))),
        Err(e) => reporter.report(Phase::Failed(format!("{e:#}"))),
    }
    r
}

fn boot_inner(
    o: &MemoryOptions,
    rw: &Path,
    http: &HttpRepo,
    source: &dyn RevisionSource,
    me: &BootIdentity,
    reporter: &dyn Reporter,
    started: Instant,
) -> Result<NetrootReport> {
    let target = memory::resolve_target(source, me, &o.servers.join(", "))?;
    reporter.report(Phase::Revision(target.name()));
    let id = target.id.hex();
    let lower_src = match me.rootfs {
        RootFs::Nfs => Lower::Nfs(nfs_record(http, &target.name(), &id, &me.revision)?),
        _ => Lower::Image(image_record(http, &target.name(), &id, &me.revision)?),
    };
    if let (Lower::Image(info), false) = (&lower_src, o.policy.keys.is_empty()) {
        check_signed(http, &o.policy.keys, &target, info)?;
    }
    let image_manifest = source.manifest(&target.id)?;
    let follow = overrides::names(me.group.as_deref(), &me.node);
    let (manifest, overlay) = overrides::for_node(
        source,
        image_manifest.clone(),
        follow.clone(),
        &[],
        &[],
        overrides::Composing::BootNetroot,
    )?;
    // The tmpfs holds the image (when there is one) and what the node writes.
    let image_bytes = match &lower_src {
        Lower::Image(info) => info.bytes,
        Lower::Nfs(_) => 0,
    };
    let size = match o.size {
        Some(s) if s < image_bytes => {
            return Err(invalid(format!(
            "--size {} MiB is smaller than the image ({} MiB): give a larger size or leave it out",
            s >> 20,
            image_bytes.div_ceil(1 << 20)
        )))
        }
        Some(s) => s,
        None => (image_bytes + o.headroom).div_ceil(1 << 20) << 20,
    };
    if let Some(total) = memory::mem_total() {
        if image_bytes + (64 << 20) > total {
            return Err(invalid(format!(
                "{}'s image is {} MiB and this node has {} MiB of memory in all: give it more memory, boot it from NFS (`--rootfs nfs`) or from its disk",
                target.name(),
                image_bytes.div_ceil(1 << 20),
                total >> 20
            )));
        }
    }
    // Mounted in this order, unmounted (on failure) in the reverse.
    let tmpfs = Mount::new(
        Path::new("tmpfs"),
        rw,
        Some("tmpfs"),
        &format!("size={size},mode=0755"),
    )?;
    let work = rw.join(WORK);
    for d in ["lower", "upper", "work"] {
        std::fs::create_dir_all(work.join(d)).at(work.join(d))?;
    }
    let (lower, image_name) = match &lower_src {
        Lower::Image(info) => {
            let file = work.join(format!("{id}.{}", info.format.as_str()));
            fetch_image(http, info, &file, reporter)?;
            let m = Mount::new(
                &file,
                &work.join("lower"),
                Some(info.format.as_str()),
                "ro,loop",
            )?;
            (m, info.content_path())
        }
        Lower::Nfs(rec) => {
            let t = Instant::now();
            let (m, what) = mount_nfs(http.base(), rec, &work.join("lower"))?;
            let mounted = t.elapsed().as_secs_f64();
            // The overrides' update compares every path of the revision with the root: one
            // lookup round trip each over NFS. A walk by directory first fills the client's
            // caches with READDIR's attributes, a round trip per directory instead.
            let t = Instant::now();
            let (dirs, entries) = prime(&work.join("lower"));
            log::warn!(
                target: crate::progress::NOTICE,
                "mounted {what} read-only in {mounted:.1} s; read {entries} entries in {dirs} directories in {:.1} s",
                t.elapsed().as_secs_f64()
            );
            (m, what)
        }
    };
    let root = Mount::new(
        Path::new("overlay"),
        &o.root,
        Some("overlay"),
        &format!(
            "lowerdir={},upperdir={},workdir={}",
            work.join("lower").display(),
            work.join("upper").display(),
            work.join("work").display()
        ),
    )?;
    // The node state says the root is the image; the overrides then go on as an update.
    {
        let node = Node::open(&o.root)?;
        node.keep_manifest(&image_manifest)?;
        let mut state = node.state()?;
        state.current = Some(RevRef::from(&target));
        state.overrides = follow;
        state.history.push(HistoryEntry {
            time: crate::catalog::now(),
            action: NodeAction::Install,
            from: None,
            to: id.clone(),
            result: "ok".into(),
            bytes_fetched: image_bytes,
            seconds: started.elapsed().as_secs_f64(),
        });
        node.save_state(&state)?;
    }
    let laid: Vec<String> = overlay.layers.iter().map(|r| r.name()).collect();
    let mut warnings = Vec::new();
    if !laid.is_empty() {
        let (_, w) = crate::install::apply_to_root(
            http,
            &target,
            &manifest,
            overlay,
            &o.root,
            &[],
            reporter,
        )?;
        warnings = w;
        for rev in &laid {
            reporter.report(Phase::Overrides(rev.clone()));
        }
    }
    memory::write_identity(&o.root, me, o)?;
    let persist = mount_persistent(&o.root, &mut warnings)?;
    let st = nix::sys::statvfs::statvfs(rw).map_err(|e| Error::Io {
        path: rw.to_path_buf(),
        source: e.into(),
    })?;
    let used = (st.blocks() - st.blocks_free()) * st.fragment_size();
    // Kept mounted: the caller moves the tmpfs into the new root and switches into it.
    root.keep();
    lower.keep();
    tmpfs.keep();
    Ok(NetrootReport {
        node: me.node.clone(),
        revision: target.name(),
        id,
        overrides: laid,
        source: match lower_src {
            Lower::Image(_) => "erofs",
            Lower::Nfs(_) => "nfs",
        },
        image: image_name,
        image_bytes,
        fetched_bytes: http.bytes_received() + source.bytes_received(),
        tmpfs_size: size,
        tmpfs_used: used,
        persist,
        start_delay: 0.0,
        start_window: 0.0,
        seconds: started.elapsed().as_secs_f64(),
        warnings,
    })
}

/// Where a network root's read-only lower layer comes from.
enum Lower {
    /// An EROFS image fetched whole into the tmpfs and loop-mounted.
    Image(ImageInfo),
    /// An NFSv4 export of the revision's tree, mounted read-only.
    Nfs(NfsExport),
}

/// The record of revision `id`'s image on the server.
fn image_record(http: &HttpRepo, name: &str, id: &str, asked: &str) -> Result<ImageInfo> {
    let info = match http.get(&info_path(id, ImageFormat::Erofs)) {
        Ok(b) => ImageInfo::decode(&b, &info_path(id, ImageFormat::Erofs))?,
        Err(Error::NotFound(_)) => {
            return Err(Error::NotFound(format!(
                "{name} has no network-root image on {}: publish one on the server with `aurum export {asked} --netroot`",
                http.base(),
            )))
        }
        Err(e) => return Err(e),
    };
    if info.id != id {
        return Err(Error::Remote(format!(
            "{name}'s image record names revision {}, not {id}: export it again with `aurum export {asked} --netroot`",
            info.id,
        )));
    }
    Ok(info)
}

/// The record of revision `id`'s NFS export on the server.
fn nfs_record(http: &HttpRepo, name: &str, id: &str, asked: &str) -> Result<NfsExport> {
    let rec = match http.get(&nfs_info_path(id)) {
        Ok(b) => NfsExport::decode(&b, &nfs_info_path(id))?,
        Err(Error::NotFound(_)) => {
            return Err(Error::NotFound(format!(
                "{name} is not exported over NFS by {}: export it on the server with `aurum export {asked} --nfs` and reload nfs-ganesha",
                http.base(),
            )))
        }
        Err(e) => return Err(e),
    };
    if rec.id != id || rec.pseudo != nfs_pseudo(id) {
        return Err(Error::Remote(format!(
            "{name}'s NFS export record names revision {} at {}, not {id}: export it again with `aurum export {asked} --nfs`",
            rec.id, rec.pseudo
        )));
    }
    Ok(rec)
}

/// The NFS server's address and port: the record's `HOST[:PORT]` (either part may be left
/// out), the host of the aurum server `base` (`http://HOST:PORT`) otherwise, port 2049 by
/// default. The kernel's NFS client takes an address, not a name: a name is resolved here.
fn nfs_address(base: &str, server: Option<&str>) -> Result<std::net::SocketAddr> {
    use std::net::ToSocketAddrs;
    let (host, port) = nfs_host_port(base, server)?;
    (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| Error::NotFound(format!("the NFS server {host}: {e}")))?
        .next()
        .ok_or_else(|| Error::NotFound(format!("the NFS server {host} has no address")))
}

/// The host and port of [`nfs_address`], not resolved.
fn nfs_host_port(base: &str, server: Option<&str>) -> Result<(String, u16)> {
    // `HOST`, `HOST:PORT`, `[V6]:PORT`, `V6` (more than one colon, no brackets).
    fn split(s: &str) -> (&str, Option<&str>) {
        if let Some(rest) = s.strip_prefix('[') {
            return match rest.split_once(']') {
                Some((h, p)) => (h, p.strip_prefix(':')),
                None => (rest, None),
            };
        }
        match s.split_once(':') {
            Some((h, p)) if !p.contains(':') => (h, Some(p)),
            _ => (s, None),
        }
    }
    let authority = base
        .split_once("://")
        .map_or(base, |(_, r)| r)
        .split('/')
        .next()
        .unwrap_or_default();
    let (base_host, _) = split(authority);
    let (host, port) = split(server.unwrap_or(""));
    let host = if host.is_empty() { base_host } else { host };
    let port: u16 = match port {
        None | Some("") => 2049,
        Some(p) => p.parse().map_err(|_| {
            invalid(format!(
                "`{p}` in the NFS export record's server is not a port: export it again with `--nfs-server HOST[:PORT]`"
            ))
        })?,
    };
    Ok((host.to_string(), port))
}

/// Walks the tree at `dir` (the NFS root), reading every directory and the attributes of
/// every entry in it: the kernel's NFS client then asks for each directory's entries with
/// their attributes (READDIR), and what follows finds them cached (the mount caches
/// attributes for an hour). Only a warm-up: what it cannot read, the update reads (and
/// reports) itself. Returns the directories and entries seen.
fn prime(dir: &Path) -> (u64, u64) {
    let (mut dirs, mut entries) = (0, 0);
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        dirs += 1;
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            entries += 1;
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(e.path());
            } else {
                // lstat: what the update's comparison asks.
                let _ = std::fs::symlink_metadata(e.path());
            }
        }
    }
    (dirs, entries)
}

/// Mounts the NFSv4 export `rec` read-only at `at`, with the kernel's client and no
/// mount.nfs (the kit has none): the server's address goes in `addr=`. NFSv4.2 first (it
/// carries extended attributes), else NFSv4.1. The tree of a revision never changes, so
/// attributes are cached long and not revalidated at every open (`nocto`). Returns the mount
/// and `ADDR:/PSEUDO`.
fn mount_nfs(base: &str, rec: &NfsExport, at: &Path) -> Result<(Mount, String)> {
    let addr = nfs_address(base, rec.server.as_deref())?;
    let ip = addr.ip().to_string();
    let what = match addr {
        std::net::SocketAddr::V4(_) => format!("{ip}:{}", rec.pseudo),
        std::net::SocketAddr::V6(_) => format!("[{ip}]:{}", rec.pseudo),
    };
    let mut last = None;
    for vers in ["4.2", "4.1"] {
        let options = format!(
            "ro,vers={vers},addr={ip},port={},proto=tcp,sec=sys,hard,timeo=600,nocto,actimeo=3600",
            addr.port()
        );
        match Mount::new(Path::new(&what), at, Some("nfs4"), &options) {
            Ok(m) => {
                log::info!("mounted {what} (NFS {vers}) on {}", at.display());
                return Ok((m, what));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(Error::Tool(format!(
        "mounting the NFS export {what} (port {}): {}; is nfs-ganesha running there with `aurum export --nfs`'s exports, and does the boot kit load nfsv4?",
        addr.port(),
        last.map(|e| e.to_string()).unwrap_or_default()
    )))
}

/// Refuses, before anything is fetched or mounted, an image no trusted key vouches for as
/// `target` (whose own signature the source already checked): its signatures file must hold a
/// trusted signature naming the revision and the record's BLAKE3 and size, which the fetch then
/// holds the image to.
fn check_signed(
    http: &HttpRepo,
    keys: &TrustedKeys,
    target: &Target,
    info: &ImageInfo,
) -> Result<()> {
    let (Some(image), Some(number)) = (target.image.as_deref(), target.number) else {
        // The source refuses a revision without image and number when it checks signatures.
        return Err(Error::Untrusted(format!(
            "refusing revision {}: a network-root image is signed for IMAGE@N",
            target.id.short()
        )));
    };
    let sig_file = sig_path(&info.hash().hex(), info.format);
    let refuse = |why: String| {
        Error::Untrusted(format!(
            "refusing the network-root image {} of {image}@{number} ({}) from {}: {why}. Nothing was fetched or mounted",
            info.content_path(),
            target.id.short(),
            http.base()
        ))
    };
    let sigs = match http.get(&sig_file) {
        Ok(data) => decode::<NetrootSignature>(&data).map_err(|p| {
            refuse(format!(
                "its signatures file {sig_file} is unreadable ({p}): the server's copy is damaged or was altered; run `aurum verify` on the server"
            ))
        })?,
        Err(Error::NotFound(_)) => Vec::new(),
        Err(e) => return Err(e),
    };
    let want = WantedNetroot {
        image,
        number,
        id: target.id,
        file: info.hash(),
        bytes: info.bytes,
    };
    trust::accept_netroot(&sigs, &want, keys)
        .map(|_| ())
        .map_err(|r| refuse(r.to_string()))
}

/// Mounts the node's persistent filesystems, listed in fstab(5) form in [`PERSIST_FSTAB`]
/// of its root (from an override image), at their places in the new root: mounted here,
/// before the switch of root, they need neither udev nor the network configuration of the
/// running system. `LABEL=` and `UUID=` are found with blkid. One that cannot be mounted
/// fails the boot, unless its options say `nofail` (then it is a warning), as systemd treats
/// fstab. Returns the mount points.
fn mount_persistent(root: &Path, warnings: &mut Vec<String>) -> Result<Vec<String>> {
    let list = root.join(PERSIST_FSTAB);
    let text = match std::fs::read_to_string(&list) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).at(&list),
    };
    let mut points = Vec::new();
    for e in crate::sys::parse_fstab(&text) {
        let point = e.point.trim_start_matches('/');
        if point.is_empty() || point.split('/').any(|c| c == "..") {
            return Err(invalid(format!(
                "/{PERSIST_FSTAB}: `{}` is not a directory a persistent filesystem can be mounted on",
                e.point
            )));
        }
        let nofail = e.options.split(',').any(|o| o == "nofail");
        let options: Vec<&str> = e
            .options
            .split(',')
            .filter(|o| !["defaults", "nofail", "auto", "noauto"].contains(o))
            .collect();
        let mounted = device_of(&e.spec).and_then(|dev| {
            Mount::new(
                &dev,
                &root.join(point),
                (e.fstype != "auto").then_some(e.fstype.as_str()),
                &options.join(","),
            )
        });
        match mounted {
            Ok(m) => {
                m.keep();
                points.push(e.point.clone());
            }
            Err(err) if nofail => warnings.push(format!(
                "the persistent filesystem {} is not mounted on {} (nofail): {err:#}",
                e.spec, e.point
            )),
            Err(err) => {
                return Err(invalid(format!(
                    "the persistent filesystem {} of /{PERSIST_FSTAB} could not be mounted on {}: {err:#}; attach it, fix the node's override, or add `nofail` to its options",
                    e.spec, e.point
                )))
            }
        }
    }
    Ok(points)
}

/// The device of an fstab spec: a path as it stands, `LABEL=`/`UUID=` found by blkid (the kit
/// has no udev to make /dev/disk/by-label/).
fn device_of(spec: &str) -> Result<PathBuf> {
    if !(spec.starts_with("LABEL=") || spec.starts_with("UUID=")) {
        return Ok(PathBuf::from(spec));
    }
    let out = crate::devices::run(Command::new("blkid").args(["-o", "device", "-t", spec]))
        .map_err(|e| Error::NotFound(format!("no device has {spec} ({e})")))?;
    out.lines()
        .next()
        .map(PathBuf::from)
        .ok_or_else(|| Error::NotFound(format!("no device has {spec}")))
}

/// Fetches the image into `file` in [`PIECE`]-sized ranges, hashing as it goes, and checks it
/// against its record.
fn fetch_image(
    http: &HttpRepo,
    info: &ImageInfo,
    file: &Path,
    reporter: &dyn Reporter,
) -> Result<()> {
    let mut out = std::fs::File::create(file).at(file)?;
    let mut h = blake3::Hasher::new();
    let mut at = 0;
    // The image is named by its hash, whatever path the record says.
    let path = info.content_path();
    while at < info.bytes {
        let end = (at + PIECE).min(info.bytes) - 1;
        let piece = http.get_range(&path, at, end, &crate::progress::Quiet)?;
        h.update(&piece);
        out.write_all(&piece).at(file)?;
        at = end + 1;
        reporter.report(Phase::Transfer {
            done: at,
            total: info.bytes,
        });
    }
    let hash = h.finalize().to_hex().to_string();
    if hash != info.blake3 {
        return Err(Error::Remote(format!(
            "{path} arrived with BLAKE3 {hash}, its record says {}: the image on the server is damaged or was altered; run `aurum verify` on the server, and export the revision again with `aurum export REV --netroot`",
            info.blake3
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nfs_server_defaults_to_the_aurum_servers_host_on_2049() {
        let at = |base: &str, s: Option<&str>| nfs_host_port(base, s).unwrap();
        assert_eq!(at("http://10.0.2.2:8035", None), ("10.0.2.2".into(), 2049));
        assert_eq!(
            at("http://10.0.2.2:8035/", Some(":2050")),
            ("10.0.2.2".into(), 2050)
        );
        assert_eq!(at("https://[fd00::1]:8035", None), ("fd00::1".into(), 2049));
        assert_eq!(at("http://master", Some("nfs1")), ("nfs1".into(), 2049));
        assert_eq!(
            at("http://master", Some("nfs1:20490")),
            ("nfs1".into(), 20490)
        );
        assert_eq!(
            at("http://master", Some("[fd00::2]:2050")),
            ("fd00::2".into(), 2050)
        );
        assert_eq!(
            at("http://master", Some("fd00::2")),
            ("fd00::2".into(), 2049)
        );
        let e = nfs_host_port("http://master", Some("nfs1:port")).unwrap_err();
        assert!(e.to_string().contains("not a port"), "{e}");
        assert_eq!(
            nfs_address("http://127.0.0.1:1", Some(":2049")).unwrap(),
            "127.0.0.1:2049".parse().unwrap()
        );
    }
}
