//! Diskless nodes on a read-only network root (the Kerrighed and OpenSSI way).
//!
//! The server publishes a revision once as a read-only filesystem image ([`export`]:
//! `aurum export REV --netroot`), an EROFS image built by `mkfs.erofs` from a checkout of the
//! revision, into `public/netroot/ID.erofs` with a record of its size and hash beside it
//! ([`crate::format::netroot`]). Every node of that revision boots the same image: a node whose
//! root is `netroot` in the node database network-boots the kit every time, and the kit's
//! `/init` runs `aurum boot-netroot`, which
//!
//! 1. asks the server who this node is by MAC (as [`super::memory`] does), resolves its
//!    revision and reads the image's record (`netroot/ID.erofs.json`);
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
use crate::apply::source::{HttpRepo, RevisionSource};
use crate::devices::Mount;
use crate::error::{invalid, Error, IoContext, Result};
use crate::format::netroot::{image_path, info_path, ImageFormat, ImageInfo};
use crate::format::report::NodeAction;
use crate::install::{Phase, Reporter};
use crate::netboot::memory::{self, BootIdentity, MemoryOptions};
use crate::progress::Progress;
use crate::repo::Repository;

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
    pub seconds: f64,
    pub warnings: Vec<String>,
}

/// The published image of revision `id` (hex), when [`export`] wrote one.
pub fn published(root: &Path, id_hex: &str) -> Result<Option<ImageInfo>> {
    let p = crate::store::published(root).join(info_path(id_hex, ImageFormat::Erofs));
    match std::fs::read(&p) {
        Ok(b) => ImageInfo::decode(&b, &p.display().to_string()).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).at(&p),
    }
}

/// Builds revision `rev`'s EROFS image: into `public/netroot/` (with its record) when `output`
/// is `None`, else into the file `output`. The revision is checked out into the repository's
/// `tmp/` (every blob verified), `mkfs.erofs` makes the image beside it, and the image is
/// renamed into place: a killed export leaves no partial image under the real name.
pub fn export(
    repo: &Repository,
    rev: &crate::catalog::Revision,
    output: Option<&Path>,
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
    let checkout = crate::apply::checkout(&manifest, &repo.blobs()?, &tree, progress)?;
    let image = tmp.path().join("image");
    // --preserve-mtime: every file keeps its own mtime (nanoseconds included), at the cost of
    // extended inodes; xattrs are kept by default. LZ4HC: what the Debian kernel's EROFS reads (no LZMA there).
    crate::devices::run(
        Command::new("mkfs.erofs")
            .args(["-zlz4hc", "--preserve-mtime", "--quiet"])
            .arg(&image)
            .arg(&tree),
    )
    .map_err(|e| Error::Tool(format!("building the image of {}: {e}", rev.name())))?;
    let (bytes, hash) = hash_file(&image)?;
    let id = rev.id.hex();
    let info = ImageInfo {
        id: id.clone(),
        format: ImageFormat::Erofs,
        path: image_path(&id, ImageFormat::Erofs),
        bytes,
        blake3: hash,
        entries: checkout.entries as u64,
        tree_bytes: checkout.bytes,
    };
    let target = match output {
        Some(o) => o.to_path_buf(),
        None => crate::store::published(&repo.root).join(&info.path),
    };
    if let Some(d) = target.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d).at(d)?;
    }
    // World-readable, as everything a web server publishes.
    std::fs::set_permissions(&image, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .at(&image)?;
    std::fs::rename(&image, &target).at(&target)?;
    if output.is_none() {
        let p = crate::store::published(&repo.root).join(info_path(&id, ImageFormat::Erofs));
        crate::store::write_atomic(&repo.root, &p, &info.encode())?;
    }
    Ok(ExportReport {
        info,
        output: target,
        seconds: started.elapsed().as_secs_f64(),
        warnings: checkout.warnings,
    })
}

/// Size and BLAKE3 (hex) of a file.
fn hash_file(p: &Path) -> Result<(u64, String)> {
    let mut f = std::fs::File::open(p).at(p)?;
    let mut h = blake3::Hasher::new();
    let n = std::io::copy(&mut f, &mut h).at(p)?;
    Ok((n, h.finalize().to_hex().to_string()))
}

/// What a boot from a network root did.
#[derive(Debug, Serialize)]
pub struct NetrootReport {
    pub node: String,
    /// `compute@4 1f2e3d4c`.
    pub revision: String,
    pub id: String,
    pub overrides: Vec<String>,
    /// The image fetched, and its size.
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
    // The image's record is not signed: nothing ties its bytes to the revision's signature,
    // so a node that trusts keys would take any image a hostile server or a man in the middle
    // hands it under a signed revision's name. Refused before anything is fetched or mounted.
    if !o.policy.keys.is_empty() {
        let e = Error::Untrusted(format!(
            "refusing to boot {} from a network root: this node trusts signing keys, and network-root images are not signed (their record on the server is not tied to the revision's signature). Boot the node into memory instead (`aurum node set {} --rootfs memory`), which checks every byte against the signed revision, or remove trusted-keys from the boot kit's node.toml",
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
            "{} from a network root: image {} MiB, {} MiB of a {} MiB tmpfs used, {} MiB fetched, {:.1} s",
            rep.revision,
            rep.image_bytes >> 20,
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
    let info = match http.get(&info_path(&id, ImageFormat::Erofs)) {
        Ok(b) => ImageInfo::decode(&b, &info_path(&id, ImageFormat::Erofs))?,
        Err(Error::NotFound(_)) => {
            return Err(Error::NotFound(format!(
                "{} has no network-root image on {}: publish one on the server with `aurum export {} --netroot`",
                target.name(),
                http.base(),
                me.revision
            )))
        }
        Err(e) => return Err(e),
    };
    if info.id != id {
        return Err(Error::Remote(format!(
            "{}'s image record names revision {}, not {id}: export it again with `aurum export {} --netroot`",
            target.name(),
            info.id,
            me.revision
        )));
    }
    let image_manifest = source.manifest(&target.id)?;
    let follow = overrides::names(me.group.as_deref(), &me.node);
    let (manifest, overlay) =
        overrides::for_node(source, image_manifest.clone(), follow.clone(), &[])?;
    let size = match o.size {
        Some(s) if s < info.bytes => {
            return Err(invalid(format!(
            "--size {} MiB is smaller than the image ({} MiB): give a larger size or leave it out",
            s >> 20,
            info.bytes.div_ceil(1 << 20)
        )))
        }
        Some(s) => s,
        None => (info.bytes + o.headroom).div_ceil(1 << 20) << 20,
    };
    if let Some(total) = memory::mem_total() {
        if info.bytes + (64 << 20) > total {
            return Err(invalid(format!(
                "{}'s image is {} MiB and this node has {} MiB of memory in all: give it more memory, or boot it from its disk",
                target.name(),
                info.bytes.div_ceil(1 << 20),
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
    let file = work.join(format!("{id}.{}", info.format.as_str()));
    fetch_image(http, &info, &file, reporter)?;
    let lower = Mount::new(
        &file,
        &work.join("lower"),
        Some(info.format.as_str()),
        "ro,loop",
    )?;
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
            bytes_fetched: info.bytes,
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
        image: info.path.clone(),
        image_bytes: info.bytes,
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
    // Where the revision's image is published, whatever path the record names.
    let path = image_path(&info.id, info.format);
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
            "{} arrived with BLAKE3 {hash}, its record says {}: the image on the server changed while it was fetched, or is damaged; export it again with `aurum export REV --netroot`",
            info.path, info.blake3
        )));
    }
    Ok(())
}
