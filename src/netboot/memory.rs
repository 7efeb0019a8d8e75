//! Diskless nodes: a revision booted into memory.
//!
//! A node whose root is `memory` in the node database network-boots the boot kit every time
//! (its iPXE script never sends it to a disk). The kit's `/init` gets an address, then runs
//! `aurum boot-memory`, which
//!
//! 1. asks the server who this node is, by the MAC of the interface that got the lease
//!    (`GET /api/v1/boot/MAC`, answered from the node database: [`identity`]), so the
//!    revision it boots is the one the database says at that moment;
//! 2. resolves the revision (refusing it, with trusted keys in the kit's node.toml, unless a
//!    trusted key signed it: [`Verified`]) and fetches its manifest, and the node's overrides (`override`,
//!    `override.GROUP`, `override.NODE`: per-node identity such as SSH host keys is kept on
//!    the server in the node's override image), from the same server, or cache tier, the
//!    kit came from;
//! 3. mounts a tmpfs sized to the tree (every file rounded up to whole pages) plus headroom
//!    for what the running node writes, refusing a tree the node's memory cannot hold;
//! 4. lays the revision in with the updateclient engine: every blob is checked against its
//!    hash as it arrives, the node state (`/var/lib/aurum-node/`) is written, so `aurum
//!    node-status`, `health` and `updateclient` work on the running node as on an installed
//!    one;
//! 5. writes the node's identity: `/etc/hostname`; `/etc/machine-id` derived from the node's
//!    name ([`machine_id`]: every node booting one image must not share the golden client's,
//!    and an empty one would make every boot a systemd "first boot"); `/etc/fstab` without the disk entries of the golden client (there is no disk
//!    to wait for); `/etc/aurum/node.toml` naming the server, when the image has none; the
//!    node's token (the kit's `aurum.token=`) in `/var/lib/aurum-node/token`, for the running
//!    node's reports (`aurum health`);
//! 6. reports the phases to the server (`aurum node show`) like an install.
//!
//! `/init` then switches root into the tmpfs and runs the image's own init. Updating a
//! diskless node is rebooting it after its database entry names the new revision; rolling it
//! back is rebooting it with the old one ([`crate::fleet::diskless`]).

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::apply::overrides;
use crate::apply::source::{HttpOptions, HttpRepo, RevisionSource, Target};
use crate::apply::verified::{Policy, Verified};
use crate::catalog::nodes::{normalise_mac, RootFs};
use crate::catalog::Catalog;
use crate::devices::Mount;
use crate::error::{invalid, Error, IoContext, Result};
use crate::format::manifest::{Kind, Manifest};
use crate::install::{Phase, Reporter};

/// The identity endpoint under the server's URL: `GET /api/v1/boot/MAC`.
pub const IDENTITY_API: &str = "api/v1/boot";

/// Who a booting node is, from the node database, and the revision it boots now.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BootIdentity {
    pub node: String,
    pub mac: String,
    pub rootfs: RootFs,
    /// The reference in the node database (`compute`, `compute:prod`, `compute@4`).
    pub image: String,
    /// What the reference names now: `compute@4`.
    pub revision: String,
    /// The revision's id (hex).
    pub id: String,
    pub group: Option<String>,
    /// The window, in seconds, of the random delay the node waits before its fetch, scaled by
    /// the server to the number of diskless nodes in its database ([`start_window`]): a rack
    /// powered on at once must not fetch in lockstep. Absent from older servers: none.
    #[serde(default)]
    pub jitter: f64,
}

/// Diskless node starts per second the server's suggested window allows on average: with `n`
/// diskless nodes in the database, the window is `n / STARTS_PER_SECOND` seconds, at most
/// [`MAX_WINDOW`] (book: Diskless nodes, many at once).
pub const STARTS_PER_SECOND: f64 = 50.0;

/// The longest window the server suggests, in seconds.
pub const MAX_WINDOW: f64 = 120.0;

/// The start window for `diskless` nodes in the database.
pub fn start_window(diskless: usize) -> f64 {
    (diskless as f64 / STARTS_PER_SECOND).min(MAX_WINDOW)
}

/// The server's side: the identity of the node with `mac`, its image reference resolved in
/// the repository at `root`. A MAC not in the database, or a node without an image, is an
/// error that says how to fix it.
pub fn identity(root: &Path, cat: &Catalog, mac: &str) -> Result<BootIdentity> {
    let mac = normalise_mac(&mac.replace("%3A", ":").replace("%3a", ":"))?;
    let n = cat.inventory_node(&mac)?.ok_or_else(|| {
        Error::NotFound(format!(
            "{mac} is not in the node database: aurum node add NAME --mac {mac} --rootfs memory --image REF"
        ))
    })?;
    let image = n.image.clone().ok_or_else(|| {
        Error::NotFound(format!(
            "node {} has no image to boot: aurum node set {} --image REF",
            n.name, n.name
        ))
    })?;
    let repo = crate::repo::Repository::open(root, crate::repo::Lock::Shared)?;
    let rev = repo.resolve(&image)?;
    let diskless = cat
        .inventory()?
        .iter()
        .filter(|n| n.rootfs.is_diskless())
        .count();
    Ok(BootIdentity {
        node: n.name,
        mac,
        rootfs: n.rootfs,
        image,
        revision: rev.name(),
        id: rev.id.hex(),
        group: n.group,
        jitter: start_window(diskless),
    })
}

/// What to boot, and where.
pub struct MemoryOptions {
    /// `aurum serve` or its cache tiers (`serve --upstream`), in order of preference, as the
    /// kit's command line names them (`aurum.server=`, then `aurum.failover=`): the first
    /// that answers is used, the next takes over when it fails, as for updates.
    pub servers: Vec<String>,
    /// The HTTP proxy given (`aurum.proxy=`), written into the node's node.toml so that its
    /// updates and reports take the same way.
    pub proxy: Option<String>,
    /// The window of the random delay before the fetch, in seconds; `None`: the server's
    /// suggestion ([`BootIdentity::jitter`]).
    pub jitter: Option<f64>,
    pub http: HttpOptions,
    /// The MAC the node is known by (the interface that got the DHCP lease).
    pub mac: Option<String>,
    /// Instead of asking the server: the node's name, revision and group.
    pub node: Option<String>,
    pub image: Option<String>,
    pub group: Option<String>,
    /// Where to mount the tmpfs (an empty directory).
    pub root: PathBuf,
    /// The tmpfs size; `None`: the tree's size plus [`MemoryOptions::headroom`].
    pub size: Option<u64>,
    /// Room left for what the running node writes (logs, /var, /tmp when not its own tmpfs).
    pub headroom: u64,
    /// What the revision and its overrides must be signed by (the kit's node.toml): checked
    /// before the tmpfs is mounted.
    pub policy: Policy,
}

/// What a boot into memory did.
#[derive(Debug, Serialize)]
pub struct MemoryReport {
    pub node: String,
    /// `compute@4 1f2e3d4c`.
    pub revision: String,
    pub id: String,
    pub overrides: Vec<String>,
    /// Entries of the tree (image and overrides composed).
    pub entries: usize,
    /// Bytes of file data in the tree.
    pub tree_bytes: u64,
    /// Bytes received from the server (manifests, indexes, packs), compressed as sent.
    pub fetched_bytes: u64,
    /// The tmpfs's size limit, and what the tree takes of it.
    pub tmpfs_size: u64,
    pub tmpfs_used: u64,
    /// The random delay waited before the fetch, and the window it was drawn from (seconds).
    pub start_delay: f64,
    pub start_window: f64,
    /// Seconds from the identity's answer to the tree laid, the delay included.
    pub seconds: f64,
    pub warnings: Vec<String>,
}

/// Bytes a tmpfs holds for `m`: every file's data in whole pages.
pub fn tree_pages(m: &Manifest) -> u64 {
    const PAGE: u64 = 4096;
    m.entries
        .iter()
        .map(|e| match &e.kind {
            Kind::File { .. } => e.data_len().div_ceil(PAGE) * PAGE,
            Kind::Symlink { target } if target.len() >= 60 => PAGE,
            _ => 0,
        })
        .sum()
}

/// The tmpfs size for a tree of `pages` bytes: `size` when given, else the tree and
/// `headroom`, rounded up to a MiB.
pub fn tmpfs_size(pages: u64, size: Option<u64>, headroom: u64) -> Result<u64> {
    let want = pages + headroom;
    match size {
        Some(s) if s < pages => Err(invalid(format!(
            "--size {} MiB is smaller than the tree ({} MiB): give a larger size or leave it out",
            s >> 20,
            pages.div_ceil(1 << 20)
        ))),
        Some(s) => Ok(s),
        None => Ok(want.div_ceil(1 << 20) << 20),
    }
}

/// `MemTotal` of /proc/meminfo, in bytes.
pub(crate) fn mem_total() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb << 10)
}

/// The identity from the server (by MAC), or from the options when they name the revision.
fn who(o: &MemoryOptions, http: &HttpRepo) -> Result<BootIdentity> {
    if let (Some(node), Some(image)) = (&o.node, &o.image) {
        return Ok(BootIdentity {
            node: node.clone(),
            mac: o.mac.clone().unwrap_or_default(),
            rootfs: RootFs::Memory,
            image: image.clone(),
            revision: image.clone(),
            id: String::new(),
            group: o.group.clone(),
            jitter: 0.0,
        });
    }
    let mac = o.mac.as_deref().ok_or_else(|| {
        invalid("give --mac (the node's MAC, to ask the server who it is) or --node and --image")
    })?;
    let mac = normalise_mac(mac)?;
    let body = http.get(&format!("{IDENTITY_API}/{mac}"))?;
    let mut id: BootIdentity = serde_json::from_slice(&body).map_err(|e| {
        Error::Remote(format!(
            "{}/{IDENTITY_API}/{mac} answered no node identity ({e}): is it aurum serve, of this version?",
            http.base()
        ))
    })?;
    if let Some(g) = &o.group {
        id.group = Some(g.clone());
    }
    if let Some(n) = &o.node {
        id.node = n.clone();
    }
    Ok(id)
}

/// The golden client's /etc/fstab without what a root in memory cannot have: the root, /boot
/// and the ESP, swap, and any filesystem named by UUID, LABEL or PARTUUID (a disk of the
/// golden client). Such lines are kept as comments; network filesystems and tmpfs stay.
pub fn diskless_fstab(text: &str) -> String {
    let mut out = String::from("# aurum: this node's root is in memory (diskless); the golden client's disk entries are commented out.\n");
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let disk = match f.as_slice() {
            [spec, at, fstype, ..] if !spec.starts_with('#') => {
                matches!(*at, "/" | "/boot" | "/boot/efi")
                    || *fstype == "swap"
                    || ["UUID=", "LABEL=", "PARTUUID=", "PARTLABEL=", "/dev/"]
                        .iter()
                        .any(|p| spec.starts_with(p))
            }
            _ => false,
        };
        if disk {
            out.push_str("#diskless# ");
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The node's machine id: 32 hex digits derived from its name, so that it is the same at every
/// boot (the journal and whatever keys on it carry over) and differs between nodes booting
/// one image. Not empty: systemd would take every boot for a first boot and apply its presets
/// (re-enabling what the image disabled).
pub fn machine_id(node: &str) -> String {
    let h = blake3::hash(format!("aurum diskless machine-id {node}").as_bytes());
    h.to_hex()[..32].to_string()
}

fn write(root: &Path, rel: &str, text: &str) -> Result<()> {
    let p = root.join(rel);
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).at(d)?;
    }
    std::fs::write(&p, text).at(&p)
}

/// Writes the node's identity into its new root: `/etc/hostname`, `/etc/machine-id`
/// ([`machine_id`]), `/etc/fstab` without the golden client's disks ([`diskless_fstab`]),
/// `/etc/aurum/node.toml` naming the servers and proxy of `o` when the image has none
/// ([`node_toml`]), and the node's token for its own reports. Shared by the boots into memory
/// and from a network root.
pub(crate) fn write_identity(root: &Path, me: &BootIdentity, o: &MemoryOptions) -> Result<()> {
    write(root, "etc/hostname", &format!("{}\n", me.node))?;
    write(
        root,
        "etc/machine-id",
        &format!("{}\n", machine_id(&me.node)),
    )?;
    if let Ok(fstab) = std::fs::read_to_string(root.join("etc/fstab")) {
        write(root, "etc/fstab", &diskless_fstab(&fstab))?;
    }
    if !root.join("etc/aurum/node.toml").exists() {
        write(
            root,
            "etc/aurum/node.toml",
            &node_toml(&o.servers, o.proxy.as_deref()),
        )?;
    }
    // The node's token (the kit's aurum.token=), for the running node's own reports.
    if let Some(t) = &o.http.token {
        crate::install::write_token(root, t)?;
    }
    Ok(())
}

/// Who this node is, asked of the servers by MAC (or taken from the options), and the server
/// that answered (the first of `o.servers` that did): the node reports its phases there.
pub fn ask_identity(o: &MemoryOptions) -> Result<(BootIdentity, String)> {
    let http = o.source()?;
    let me = who(o, &http)?;
    Ok((me, http.base().to_string()))
}

impl MemoryOptions {
    /// A client of the servers, in order, failing over as an update does.
    pub(crate) fn source(&self) -> Result<HttpRepo> {
        HttpRepo::with_servers(&self.servers, None, &self.http)
    }

    /// Waits the random start delay: up to the window `--jitter` gives, else the one the
    /// server suggested with the identity. Returns the delay and the window (seconds).
    pub(crate) fn start_delay(&self, me: &BootIdentity) -> (f64, f64) {
        let window = self.jitter.unwrap_or(me.jitter).clamp(0.0, 3600.0);
        let delay = window * crate::apply::source::random_fraction();
        if delay > 0.0 {
            log::info!("waiting {delay:.1} s (of a {window:.0} s start window) before the fetch");
            std::thread::sleep(std::time::Duration::from_secs_f64(delay));
        }
        (delay, window)
    }
}

/// node.toml of a diskless node whose image has none: its servers and proxy, as it booted.
pub fn node_toml(servers: &[String], proxy: Option<&str>) -> String {
    let q = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    let mut t = String::from("# Written at boot by aurum: this diskless node's image servers.\n");
    match servers {
        [one] => t.push_str(&format!("server = {}\n", q(one))),
        many => t.push_str(&format!(
            "server = [{}]\n",
            many.iter().map(|s| q(s)).collect::<Vec<_>>().join(", ")
        )),
    }
    if let Some(p) = proxy {
        t.push_str(&format!("proxy = {}\n", q(p)));
    }
    t
}

/// Boots the node's revision into a tmpfs at `o.root`, reporting each phase. On success the
/// tmpfs stays mounted (the caller switches root into it); on failure it is unmounted.
/// `me` is who the node is ([`ask_identity`]).
pub fn boot_memory(
    o: &MemoryOptions,
    me: &BootIdentity,
    reporter: &dyn Reporter,
) -> Result<MemoryReport> {
    let started = Instant::now();
    // A rack powered on at once asks for its identities together (small answers), then
    // spreads its fetches over the window.
    let (delay, window) = o.start_delay(me);
    let r = o.source().and_then(|http| {
        boot_inner(o, checked(o, http).as_ref(), me, reporter, started).map(|rep| MemoryReport {
            start_delay: delay,
            start_window: window,
            ..rep
        })
    });
    match &r {
        Ok(rep) => reporter.report(Phase::Done(format!(
            "{} in memory: {} MiB in a {} MiB tmpfs, {} MiB fetched, {:.1} s",
            rep.revision,
            rep.tmpfs_used >> 20,
            rep.tmpfs_size >> 20,
            rep.fetched_bytes >> 20,
            rep.seconds
        ))),
        Err(e) => reporter.report(Phase::Failed(format!("{e:#}"))),
    }
    r
}

/// The server as a source of revisions, checking signatures when the node trusts keys. A
/// diskless node runs nothing before this boot: nothing to roll back from.
pub(crate) fn checked(o: &MemoryOptions, http: HttpRepo) -> Box<dyn RevisionSource> {
    match o.policy.keys.is_empty() {
        true => Box::new(http),
        false => Box::new(Verified::new(Box::new(http), o.policy.clone(), None)),
    }
}

/// The revision the server named (IMAGE@N: the reference may move while we boot), checked
/// against the id the identity gave.
pub(crate) fn resolve_target(
    source: &dyn RevisionSource,
    me: &BootIdentity,
    server: &str,
) -> Result<Target> {
    let target = source.resolve(&me.revision)?;
    if !me.id.is_empty() && target.id.hex() != me.id {
        return Err(Error::Remote(format!(
            "{} is {} here but the node database's server said {}: is {server} a cache of another repository?",
            me.revision,
            target.id.hex(),
            me.id,
        )));
    }
    Ok(target)
}

fn boot_inner(
    o: &MemoryOptions,
    http: &dyn RevisionSource,
    me: &BootIdentity,
    reporter: &dyn Reporter,
    started: Instant,
) -> Result<MemoryReport> {
    let target = resolve_target(http, me, &o.servers.join(", "))?;
    reporter.report(Phase::Revision(target.name()));
    let image_manifest = http.manifest(&target.id)?;
    let follow = overrides::names(me.group.as_deref(), &me.node);
    let (manifest, overlay) = overrides::for_node(
        http,
        image_manifest,
        follow,
        &[],
        &[],
        overrides::Composing::BootMemory,
    )?;
    let pages = tree_pages(&manifest);
    let size = tmpfs_size(pages, o.size, o.headroom)?;
    if let Some(total) = mem_total() {
        // The kernel, the kit and the running system need the rest.
        if pages + (64 << 20) > total {
            return Err(invalid(format!(
                "{} needs {} MiB of memory for its files and this node has {} MiB in all: give it more memory, or boot it from its disk",
                target.name(),
                pages.div_ceil(1 << 20),
                total >> 20
            )));
        }
    }
    let mount = Mount::new(
        Path::new("tmpfs"),
        &o.root,
        Some("tmpfs"),
        &format!("size={size},mode=0755"),
    )?;
    let laid: Vec<String> = overlay.layers.iter().map(|r| r.name()).collect();
    let (_, warnings) =
        crate::install::apply_to_root(http, &target, &manifest, overlay, &o.root, &[], reporter)?;
    for rev in &laid {
        reporter.report(Phase::Overrides(rev.clone()));
    }
    write_identity(&o.root, me, o)?;
    let st = nix::sys::statvfs::statvfs(&o.root).map_err(|e| Error::Io {
        path: o.root.clone(),
        source: e.into(),
    })?;
    let used = (st.blocks() - st.blocks_free()) * st.fragment_size();
    // Kept mounted: the caller switches root into it.
    mount.keep();
    Ok(MemoryReport {
        node: me.node.clone(),
        revision: target.name(),
        id: target.id.hex(),
        overrides: laid,
        entries: manifest.entries.len(),
        tree_bytes: manifest.entries.iter().map(|e| e.data_len()).sum(),
        fetched_bytes: http.bytes_received(),
        tmpfs_size: size,
        tmpfs_used: used,
        start_delay: 0.0,
        start_window: 0.0,
        seconds: started.elapsed().as_secs_f64(),
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fstab_keeps_network_mounts_and_drops_disks() {
        let f = diskless_fstab(
            "# comment\nUUID=abcd / ext4 defaults 0 1\nLABEL=ESP /boot/efi vfat umask=0077 0 2\n/dev/sda3 none swap sw 0 0\nmaster:/home /home nfs defaults 0 0\ntmpfs /tmp tmpfs defaults 0 0\n",
        );
        assert!(f.contains("\n# comment\n"), "{f}");
        assert!(f.contains("#diskless# UUID=abcd / ext4"), "{f}");
        assert!(f.contains("#diskless# LABEL=ESP"), "{f}");
        assert!(f.contains("#diskless# /dev/sda3 none swap"), "{f}");
        assert!(f.contains("\nmaster:/home /home nfs"), "{f}");
        assert!(f.contains("\ntmpfs /tmp tmpfs"), "{f}");
    }

    #[test]
    fn machine_ids_are_per_node_and_stable() {
        let a = machine_id("n01");
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(a, machine_id("n01"));
        assert_ne!(a, machine_id("n02"));
    }

    #[test]
    fn node_toml_names_every_server_and_the_proxy() {
        let one = node_toml(&["http://rack1:8035".into()], None);
        assert!(one.ends_with("server = \"http://rack1:8035\"\n"), "{one}");
        let two = node_toml(
            &["http://rack1:8035".into(), "http://master:8035".into()],
            Some("http://squid:3128"),
        );
        assert!(
            two.contains("server = [\"http://rack1:8035\", \"http://master:8035\"]\nproxy = \"http://squid:3128\"\n"),
            "{two}"
        );
        let parsed: crate::config::NodeFile = toml::from_str(&two).unwrap();
        assert_eq!(parsed.proxy.as_deref(), Some("http://squid:3128"));
    }

    #[test]
    fn start_windows_grow_with_the_diskless_nodes_and_are_capped() {
        assert_eq!(start_window(0), 0.0);
        assert!((start_window(10) - 0.2).abs() < 1e-9);
        assert!((start_window(2000) - 40.0).abs() < 1e-9);
        assert_eq!(start_window(1_000_000), MAX_WINDOW);
    }

    #[test]
    fn tmpfs_is_the_tree_and_headroom_in_mib() {
        assert_eq!(tmpfs_size(3 << 20, None, 64 << 20).unwrap(), 67 << 20);
        assert_eq!(tmpfs_size(1, None, 0).unwrap(), 1 << 20);
        assert_eq!(tmpfs_size(3 << 20, Some(8 << 20), 0).unwrap(), 8 << 20);
        let e = tmpfs_size(30 << 20, Some(8 << 20), 0).unwrap_err();
        assert!(
            e.to_string().contains("smaller than the tree (30 MiB)"),
            "{e}"
        );
    }
}
