//! Commands that lay out and install a node: `facts`, `prepareclient`, `install`.

use std::path::PathBuf;

use aurum::apply::source::{HttpRepo, LocalRepo, RevisionSource};
use aurum::format::report::InstallPhase;
use aurum::install::report::{self, PhaseReport, ServerReporter};
use aurum::install::{InstallOptions, Phase, Reporter};
use aurum::name::ClassName;
use aurum::template::size::human;
use aurum::template::store;
use clap::Args;

use super::{human_bytes, print_json, Global};

/// Print this machine's hardware facts: disks, DMI, memory, CPUs, MACs, firmware.
///
/// Read from /sys and /proc only, so it works in a minimal installer. Save them with --json
/// to ask `aurum template match --facts FILE` which class the machine gets.
#[derive(Args)]
pub struct FactsArgs {
    /// Print JSON (the format `template match --facts` reads).
    #[arg(long)]
    json: bool,
}

pub fn facts(_: &Global, a: FactsArgs) -> anyhow::Result<()> {
    let f = aurum::facts::gather(std::path::Path::new("/"))?;
    if a.json {
        return print_json(&f);
    }
    println!("hostname  {}", f.hostname);
    println!("firmware  {:?}", f.firmware);
    let or_dash = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            s.to_string()
        }
    };
    println!(
        "system    {} {} (serial {})",
        or_dash(&f.vendor),
        or_dash(&f.product),
        or_dash(&f.serial)
    );
    println!("memory    {}", human(f.memory));
    println!("cpus      {}", f.cpus);
    for d in &f.disks {
        println!(
            "disk      {:<10} {:>10}  {}{}{}",
            d.name,
            human(d.size),
            or_dash(&d.model),
            if d.rotational {
                ", rotational"
            } else {
                ", solid state"
            },
            if d.removable { ", removable" } else { "" }
        );
    }
    for n in &f.nics {
        println!("nic       {:<10} {}", n.name, n.mac);
    }
    Ok(())
}

/// Write the golden client's disk layout as a partition template.
///
/// Reads the disk's GPT, each partition's filesystem and label (blkid) and its mount point
/// and options (the mounts and /etc/fstab; for an image file, the /etc/fstab on its root
/// filesystem). Sizes are kept as found, except the last data partition, which becomes `*`
/// (the rest of the disk). Import the result with `aurum template import FILE`.
#[derive(Args)]
pub struct PrepareclientArgs {
    /// The disk (a block device, or an image file). Default: the disk holding /.
    #[arg(long, value_name = "DEV|FILE")]
    disk: Option<PathBuf>,
    /// Write the template here instead of standard output (its name is the class).
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
    /// With --output, print JSON: {"disk", "file", "class"}.
    #[arg(long, requires = "output")]
    json: bool,
}

/// The disk holding the root filesystem (`/dev/sda` for `/dev/sda2`).
fn root_disk() -> anyhow::Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    let dev = aurum::sys::parse_fstab(&mounts)
        .into_iter()
        .find(|m| m.point == "/" && m.spec.starts_with("/dev/"))
        .map(|m| m.spec)
        .ok_or_else(|| aurum::Error::Invalid("/ is not on a disk here: give --disk".into()))?;
    let name = std::fs::canonicalize(&dev)?;
    let part = name
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    // /sys/class/block/sda2 is a link into .../sda/sda2: its parent is the disk.
    let sys = std::fs::canonicalize(format!("/sys/class/block/{part}"))?;
    let disk = sys
        .parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| {
            aurum::Error::Invalid(format!("cannot tell the disk of {dev}: give --disk"))
        })?;
    Ok(PathBuf::from(format!("/dev/{disk}")))
}

pub fn prepareclient(_: &Global, a: PrepareclientArgs) -> anyhow::Result<()> {
    let disk = match a.disk {
        Some(d) => d,
        None => root_disk()?,
    };
    let text = aurum::template::prepare::prepare(&disk)?;
    match &a.output {
        Some(out) => {
            let class = store::class_of(out)?;
            aurum::template::Template::parse(&class, &out.display().to_string(), &text)?;
            std::fs::write(out, &text).map_err(|e| aurum::Error::Io {
                path: out.clone(),
                source: e,
            })?;
            if a.json {
                return print_json(&serde_json::json!({
                    "disk": disk.display().to_string(),
                    "file": out.display().to_string(),
                    "class": class,
                }));
            }
            eprintln!(
                "wrote the layout of {} to {} (class {class}); add it with `aurum template import {}`",
                disk.display(),
                out.display(),
                out.display()
            );
        }
        None => print!("{text}"),
    }
    Ok(())
}

/// Lay out a node's disk(s) from its class's template and install a revision onto them.
///
/// Renders the class's partition template for the real disk sizes (refusing before anything
/// is written when it does not fit), writes a fresh GPT, makes the filesystems,
/// applies the revision with the overrides laid over it (images `override`, `override.GROUP`,
/// `override.HOSTNAME`) with the updateclient engine (so `aurum updateclient` and `aurum
/// rollback` work from the first boot, and keep the overrides), writes /etc/fstab by UUID and
/// /etc/hostname, and
/// runs the hooks: pre-install on the installer, post-install chrooted in the new root (the
/// shipped ones set the hostname, clear the machine id, regenerate ssh host keys and install
/// GRUB). An image file gets a loop device per partition. Everything is unmounted and
/// detached at the end, on failure too; the time of each step is printed (and in --json).
/// THE DISK IS ERASED.
#[derive(Args)]
pub struct InstallArgs {
    /// The disk(s) to erase and install: block devices or image files, in template order;
    /// `auto`: this machine's first disk that is not removable (for the boot kit).
    #[arg(long, required = true, value_name = "DEV|FILE|auto")]
    disk: Vec<PathBuf>,
    /// The image server (`aurum serve` or any copy of the repository over HTTP). Default:
    /// $AURUM_SERVER; without either, the repository directory --repo is read.
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    #[command(flatten)]
    http: super::HttpArgs,
    #[command(flatten)]
    token: super::TokenArgs,
    /// Install only a revision signed by this key: an OpenSSH public key line, or the absolute
    /// path of a file of them (repeatable; added to node.toml's `trusted-keys`, which the boot
    /// kit carries when built with `bootkit build --trusted-key`). Anything else is refused
    /// before the disk is touched.
    #[arg(long, value_name = "KEY|FILE")]
    trusted_key: Vec<String>,
    /// The revision: IMAGE, IMAGE@N, IMAGE:TAG or a revision id.
    #[arg(long, value_name = "REV")]
    image: String,
    /// The hardware class, or `auto` to pick it from this machine's facts.
    #[arg(long, default_value = "auto")]
    class: String,
    /// The node's hostname (written to /etc/hostname; picks hostname hooks and overrides).
    #[arg(long, value_name = "NAME")]
    hostname: Option<String>,
    /// The node's group (picks group hooks and overrides).
    #[arg(long, value_name = "NAME")]
    group: Option<String>,
    /// Hooks directory (pre-install/, post-install/...). Default: the repository's `hooks`
    /// image when it has one, else the hooks shipped with aurum.
    #[arg(long, value_name = "DIR")]
    hooks: Option<PathBuf>,
    /// Use these facts (from `aurum facts --json` on the node) to pick the class, instead of
    /// this machine's: to write a disk or an image file for another machine. The disks' sizes
    /// are always the real ones.
    #[arg(long, value_name = "FILE")]
    facts: Option<PathBuf>,
    /// Print the class, the plan and the revision; write nothing.
    #[arg(long, short = 'n')]
    dry_run: bool,
    /// Print the report as JSON at the end.
    #[arg(long)]
    json: bool,
    /// Also send each phase to the --server as node --hostname's install progress
    /// (`aurum nodes`, `aurum node show`); success switches the node to local boot.
    #[arg(long, requires = "hostname")]
    report: bool,
}

/// Prints each phase on the terminal: none with --quiet but a failure, and no transfer
/// progress with --no-progress.
struct Terminal {
    no_progress: bool,
}

impl Reporter for Terminal {
    fn report(&self, p: Phase) {
        if super::quiet() && !matches!(p, Phase::Failed(_)) {
            return;
        }
        match p {
            Phase::Transfer { .. } if self.no_progress => {}
            Phase::Transfer { done, total } => {
                eprintln!(
                    "install: transfer {} of {}",
                    human_bytes(done),
                    human_bytes(total)
                )
            }
            Phase::Plan(table) => eprint!("install: plan\n{table}"),
            Phase::Failed(e) => eprintln!("install: FAILED: {e}"),
            other => {
                let v = serde_json::to_value(&other).unwrap_or_default();
                eprintln!(
                    "install: {} {}",
                    other.name(),
                    v.get("detail").and_then(|d| d.as_str()).unwrap_or("")
                );
            }
        }
    }
}

pub fn install(g: &Global, mut a: InstallArgs) -> anyhow::Result<()> {
    // --server, else AURUM_SERVER: node.toml's server is a running node's, not an installer's.
    // Its trust is an installer's too (the boot kit's node.toml): `trusted-keys` and `ca`.
    a.server = a
        .server
        .or_else(|| aurum::config::env_var(aurum::config::SERVER_ENV));
    if a.report && a.server.is_none() {
        return Err(aurum::Error::Invalid(
            "--report sends the phases to the image server: give --server URL (or AURUM_SERVER)"
                .into(),
        )
        .into());
    }
    let class = (a.class != "auto")
        .then(|| ClassName::new(a.class.as_str()))
        .transpose()?;
    let http_options = a
        .http
        .options(Some(&g.config.node), a.token.token(g, None)?)?;
    let mut policy = super::trust::node_policy(g, false)?;
    if !a.trusted_key.is_empty() {
        let n = &g.config.node;
        let mut keys = n.trusted_keys.clone();
        keys.extend(a.trusted_key.iter().cloned());
        policy.keys = aurum::trust::TrustedKeys::parse(&keys, &n.revoked_keys)?;
    }
    // The templates are checked as they are fetched, the revision as it is resolved.
    let (source, templates): (Box<dyn RevisionSource>, _) = match &a.server {
        Some(url) => {
            let http = HttpRepo::new(url, None, &http_options)?;
            let t = store::from_server(&http, class.as_ref(), &policy.keys, policy.max_age)?;
            (Box::new(http), t)
        }
        None => {
            let repo = aurum::repo::Repository::open(&g.repo, aurum::repo::Lock::Shared)?;
            let t = store::from_repo(&repo, class.as_ref(), &policy.keys, policy.max_age)?;
            (Box::new(LocalRepo::new(&g.repo)?), t)
        }
    };
    // A bare node runs nothing yet: there is nothing to roll back from.
    let source: Box<dyn RevisionSource> = match policy.keys.is_empty() {
        true => source,
        false => Box::new(aurum::apply::verified::Verified::new(source, policy, None)),
    };
    let facts = match &a.facts {
        Some(f) => aurum::facts::load(f)?,
        None => aurum::facts::gather(std::path::Path::new("/"))?,
    };
    let disks = if matches!(a.disk.as_slice(), [d] if d.as_os_str() == "auto") {
        let d = facts
            .disks
            .iter()
            .find(|d| !d.removable && d.size > 0)
            .ok_or_else(|| {
                aurum::Error::NotFound(
                    "--disk auto: this machine has no fixed disk (is its driver in the boot kit?)"
                        .into(),
                )
            })?;
        vec![PathBuf::from(format!("/dev/{}", d.name))]
    } else {
        a.disk
    };
    let opts = InstallOptions {
        disks,
        class,
        image: a.image,
        hostname: a.hostname,
        token: http_options.token.clone(),
        group: a.group,
        hooks: a.hooks,
        dry_run: a.dry_run,
        facts,
        templates,
    };
    let terminal = Terminal {
        no_progress: g.no_progress,
    };
    let r = match (a.report, &a.server, &opts.hostname) {
        (true, Some(server), Some(node)) => {
            let sink = report::PhaseSink::new(server, &http_options)?;
            let to_server = ServerReporter::new(&terminal, sink, node);
            aurum::install::install(source.as_ref(), opts, &to_server)?
        }
        _ => aurum::install::install(source.as_ref(), opts, &terminal)?,
    };
    for w in &r.warnings {
        super::warning(w);
    }
    let times: Vec<String> = r
        .times
        .iter()
        .map(|t| format!("{} {:.2} s", t.step.name(), t.seconds))
        .collect();
    super::say!("install: times: {}", times.join(", "));
    if a.json {
        return print_json(&r);
    }
    if a.dry_run {
        println!(
            "dry run: would install {} as class {}; nothing was written",
            r.revision, r.class
        );
    } else {
        println!(
            "installed {} as class {}: {} filesystems, {} hooks, {} overrides, {:.1} s",
            r.revision,
            r.class,
            r.filesystems.len(),
            r.hooks.len(),
            r.overrides.len(),
            r.seconds
        );
    }
    Ok(())
}

/// Where a diskless boot fetches from, and when (boot-memory and boot-netroot).
#[derive(Args)]
pub struct DisklessFetchArgs {
    /// The image server (`aurum serve`, or a cache tier of it: `serve --upstream`), as the
    /// kit's command line names it (aurum.server=). Repeatable: other servers or tiers of the
    /// same repository (the kit's aurum.failover=), tried in order when one fails, as an
    /// update does; they also go into the node's node.toml. Phases are reported to the one
    /// that answered who this node is.
    #[arg(long, value_name = "URL", required = true)]
    server: Vec<String>,
    /// Wait a random delay of up to SECONDS before the fetch (the kit's aurum.jitter=), so
    /// that a rack powered on at once does not fetch in lockstep; 0: none. Default: the window
    /// the server suggests with the node's identity, 1 s per 50 diskless nodes in its
    /// database, at most 120 s.
    #[arg(long, value_name = "SECONDS")]
    jitter: Option<f64>,
    /// The MAC of the interface that booted: the server says which node this is.
    #[arg(long, value_name = "MAC", required_unless_present = "image")]
    mac: Option<String>,
    /// Boot this revision instead of asking the server (IMAGE, IMAGE@N, IMAGE:TAG); needs
    /// --node.
    #[arg(long, value_name = "REV", requires = "node")]
    image: Option<String>,
    /// The node's name (its hostname, and its override image override.NODE).
    #[arg(long, value_name = "NAME")]
    node: Option<String>,
    /// The node's group (its override image override.GROUP); default: the database's.
    #[arg(long, value_name = "NAME")]
    group: Option<String>,
}

impl DisklessFetchArgs {
    /// --jitter, checked.
    fn jitter(&self) -> aurum::Result<Option<f64>> {
        match self.jitter {
            Some(j) if !(0.0..=3600.0).contains(&j) => Err(aurum::error::invalid(
                "--jitter is a number of seconds from 0 to 3600",
            )),
            j => Ok(j),
        }
    }
}

/// Boot a diskless node: lay its revision into a tmpfs, for the boot kit to switch root into.
///
/// Run by the boot kit's /init on a node whose root is `memory` in the node database (`aurum
/// node set NODE --rootfs memory`). Asks the server who this node is by its MAC (the node
/// database names its revision and group), fetches the revision and the node's override images
/// (`override`, `override.GROUP`, `override.NODE`: keep per-node identity such as SSH host
/// keys there) from the server or cache tier the kit came from, checking every blob against
/// its hash, mounts a tmpfs at --root sized to the tree plus --headroom, and lays the tree in
/// with the updateclient engine (so node-status, health and updateclient work on the running
/// node). Then it writes /etc/hostname and /etc/machine-id (derived from the node's name: the
/// same at every boot, different on every node), comments the golden client's disks out of /etc/fstab, names the server in
/// /etc/aurum/node.toml when the image has none, leaves the token (the kit's aurum.token=) in
/// /var/lib/aurum-node/token for the node's own reports, and reports each phase to the server
/// (`aurum node show NODE`). The tmpfs stays mounted; /init then runs `switch_root`. On
/// failure nothing stays mounted.
#[derive(Args)]
pub struct BootMemoryArgs {
    #[command(flatten)]
    fetch: DisklessFetchArgs,
    #[command(flatten)]
    http: super::HttpArgs,
    #[command(flatten)]
    token: super::TokenArgs,
    /// Where to mount the tmpfs and lay the root (an empty directory; created if missing).
    #[arg(long, value_name = "DIR")]
    root: PathBuf,
    /// The tmpfs size in MiB; default: the tree's size plus --headroom.
    #[arg(long, value_name = "MIB")]
    size: Option<u64>,
    /// Room the running node may write beyond the tree (logs, /var), in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 256)]
    headroom: u64,
    /// Do not send the phases to the server.
    #[arg(long)]
    no_report: bool,
    /// Print the report as JSON at the end.
    #[arg(long)]
    json: bool,
}

pub fn boot_memory(g: &Global, a: BootMemoryArgs) -> anyhow::Result<()> {
    use aurum::netboot::memory::{self, MemoryOptions};
    let opts = MemoryOptions {
        servers: a.fetch.server.clone(),
        proxy: a.http.proxy().map(str::to_string),
        jitter: a.fetch.jitter()?,
        http: a
            .http
            .options(Some(&g.config.node), a.token.token(g, None)?)?,
        mac: a.fetch.mac.clone(),
        node: a.fetch.node.clone(),
        image: a.fetch.image.clone(),
        group: a.fetch.group.clone(),
        root: a.root,
        size: a.size.map(|m| m << 20),
        headroom: a.headroom << 20,
        policy: super::trust::node_policy(g, false)?,
    };
    let terminal = Terminal {
        no_progress: g.no_progress,
    };
    let (me, answered) = memory::ask_identity(&opts)?;
    let r = if a.no_report {
        memory::boot_memory(&opts, &me, &terminal)?
    } else {
        let sink = report::PhaseSink::new(&answered, &opts.http)?;
        let to_server = ServerReporter::new(&terminal, sink, &me.node);
        memory::boot_memory(&opts, &me, &to_server)?
    };
    for w in &r.warnings {
        super::warning(w);
    }
    if a.json {
        return print_json(&r);
    }
    println!(
        "{} booted into memory as {}: {} entries, {} in a {} tmpfs, {} fetched, {:.1} s (start delay {:.1} s of {:.0} s)",
        r.revision,
        r.node,
        r.entries,
        human_bytes(r.tmpfs_used),
        human_bytes(r.tmpfs_size),
        human_bytes(r.fetched_bytes),
        r.seconds,
        r.start_delay,
        r.start_window
    );
    Ok(())
}

/// Boot a diskless node from a read-only network root, for the boot kit to switch root into.
///
/// Run by the boot kit's /init on a node whose root is `netroot` in the node database (`aurum
/// node set NODE --rootfs netroot`). Asks the server who this node is by its MAC, reads the
/// record of its revision's image (published on the server with `aurum export REV --netroot`),
/// mounts a tmpfs at --rw sized to the image plus --headroom, fetches the image into it whole
/// (resuming a broken transfer; size and BLAKE3 hash checked), mounts it read-only and an
/// overlay at --root whose writes go to the tmpfs. A node whose root is `nfs` (or given
/// --nfs) mounts its revision's NFSv4 export instead (`aurum export REV --nfs`; the record
/// says where, by default the server's host on port 2049), read-only with the kernel's
/// client, under the same overlay; a node that trusts signing keys refuses an NFS root. It records the revision in the node state
/// and lays the node's override images (`override`, `override.GROUP`, `override.NODE`) over it
/// with the updateclient engine, so node-status, health and `updateclient --verify-local`
/// work on the running node; then writes the node's identity as boot-memory does, mounts the
/// persistent filesystems its root lists in /etc/aurum/persist.fstab (fstab form, from an
/// override image; `nofail` ones may be absent) and reports each phase to the server. Everything stays mounted; /init moves --rw into the new root
/// (the kit uses /run) and runs `switch_root`. On failure nothing stays mounted.
#[derive(Args)]
pub struct BootNetrootArgs {
    #[command(flatten)]
    fetch: DisklessFetchArgs,
    #[command(flatten)]
    http: super::HttpArgs,
    #[command(flatten)]
    token: super::TokenArgs,
    /// Where to mount the overlay, the node's new root (created if missing).
    #[arg(long, value_name = "DIR")]
    root: PathBuf,
    /// Where to mount the tmpfs that holds the image and the node's writes (the kit: /run,
    /// which it moves into the new root).
    #[arg(long, value_name = "DIR")]
    rw: PathBuf,
    /// The tmpfs size in MiB; default: the image's size plus --headroom.
    #[arg(long, value_name = "MIB")]
    size: Option<u64>,
    /// Room the running node may write (logs, /var, /tmp when not its own tmpfs), in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 256)]
    headroom: u64,
    /// Mount the revision's NFSv4 export (`aurum export REV --nfs` on the server) instead of
    /// fetching its image, as for a node whose root is `nfs` in the node database (the kit
    /// gives it for `aurum.rootfs=nfs`).
    #[arg(long)]
    nfs: bool,
    /// Do not send the phases to the server.
    #[arg(long)]
    no_report: bool,
    /// Print the report as JSON at the end.
    #[arg(long)]
    json: bool,
}

pub fn boot_netroot(g: &Global, a: BootNetrootArgs) -> anyhow::Result<()> {
    use aurum::netboot::{memory, netroot};
    let opts = memory::MemoryOptions {
        servers: a.fetch.server.clone(),
        proxy: a.http.proxy().map(str::to_string),
        jitter: a.fetch.jitter()?,
        http: a
            .http
            .options(Some(&g.config.node), a.token.token(g, None)?)?,
        mac: a.fetch.mac.clone(),
        node: a.fetch.node.clone(),
        image: a.fetch.image.clone(),
        group: a.fetch.group.clone(),
        root: a.root,
        size: a.size.map(|m| m << 20),
        headroom: a.headroom << 20,
        policy: super::trust::node_policy(g, false)?,
    };
    let terminal = Terminal {
        no_progress: g.no_progress,
    };
    let (mut me, answered) = memory::ask_identity(&opts)?;
    if a.nfs {
        me.rootfs = aurum::catalog::nodes::RootFs::Nfs;
    }
    let r = if a.no_report {
        netroot::boot_netroot(&opts, &a.rw, &me, &terminal)?
    } else {
        let sink = report::PhaseSink::new(&answered, &opts.http)?;
        let to_server = ServerReporter::new(&terminal, sink, &me.node);
        netroot::boot_netroot(&opts, &a.rw, &me, &to_server)?
    };
    for w in &r.warnings {
        super::warning(w);
    }
    if a.json {
        return print_json(&r);
    }
    println!(
        "{} booted from a network root as {}: {} {}, {} used of a {} tmpfs, {} fetched, {:.1} s",
        r.revision,
        r.node,
        if r.source == "nfs" { "NFS" } else { "image" },
        if r.source == "nfs" {
            r.image.clone()
        } else {
            human_bytes(r.image_bytes)
        },
        human_bytes(r.tmpfs_used),
        human_bytes(r.tmpfs_size),
        human_bytes(r.fetched_bytes),
        r.seconds
    );
    for p in &r.persist {
        println!("persistent filesystem mounted on {p}");
    }
    Ok(())
}

/// Send one install phase to the server (the boot kit's /init, when aurum install itself
/// could not report: it crashed, or the tools it needs are missing).
#[derive(Args)]
pub struct InstallReportArgs {
    #[arg(long, value_name = "URL")]
    server: String,
    #[arg(long)]
    node: String,
    /// The phase: facts, class, plan, revision, partition, mkfs, transfer, overrides, hooks,
    /// bootloader, done or failed.
    #[arg(long, value_parser = parse_phase)]
    phase: InstallPhase,
    /// The detail; its last 40 lines are sent.
    #[arg(long, value_name = "FILE")]
    detail_file: PathBuf,
    #[command(flatten)]
    http: super::HttpArgs,
    #[command(flatten)]
    token: super::TokenArgs,
}

fn parse_phase(s: &str) -> Result<InstallPhase, String> {
    InstallPhase::parse(s).ok_or_else(|| format!("`{s}` is not an install phase"))
}

pub fn install_report(g: &Global, a: InstallReportArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&a.detail_file).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let r = PhaseReport {
        phase: a.phase,
        detail: lines
            .get(lines.len().saturating_sub(40)..)
            .unwrap_or_default()
            .join("\n"),
        revision: None,
        done: None,
        total: None,
    };
    let options = a
        .http
        .options(Some(&g.config.node), a.token.token(g, None)?)?;
    report::PhaseSink::new(&a.server, &options)?.post(&a.node, &r)?;
    Ok(())
}
