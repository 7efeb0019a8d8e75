//! `node` subcommand group: the node database (`add`, `list`, `show`, `set`, `rm`, `import`).

use std::path::{Path, PathBuf};

use aurum::catalog::nodes::{self, BmcProtocol, Boot, NodeEntry, RootFs};
use aurum::name::ClassName;
use aurum::repo::{Lock, Repository};
use clap::{Args, Subcommand};

use super::{human_time, open, print_json, Global};

/// The node database: the machines PXE boots and installs, by name, MAC and address.
///
/// Each node has a MAC (its boot script is picked by it), optionally a fixed IP (DHCP host
/// entry), a class (its partition template; without one the templates' [match] sections
/// pick), an image (the revision it installs), a group (overrides and hooks) and a BMC
/// (address, protocol, user, password file: for `aurum power` and `aurum reinstall`). Names,
/// MACs and IPs are unique. Each node also has a boot mode, `install` or
/// `local`, switched by `aurum pxe netboot` and by a successful install, and a root: `disk`
/// (installed), `memory` (diskless: every network boot lays its image into RAM), `netroot`
/// (diskless: every network boot mounts its image read-only, with a tmpfs for writes) or `nfs`
/// (the same over NFS).
#[derive(Args)]
pub struct NodeArgs {
    #[command(subcommand)]
    command: NodeCommand,
}

#[derive(Subcommand)]
enum NodeCommand {
    Add(AddArgs),
    List(ListArgs),
    Show(ShowArgs),
    Set(SetArgs),
    Rm(RmArgs),
    Import(ImportArgs),
}

/// Fields a node can be given at `add` and changed by `set`.
#[derive(Args)]
struct Fields {
    /// Fixed IP address (written as the node's DHCP host entry).
    #[arg(long)]
    ip: Option<String>,
    /// Hardware class: the partition template it is installed with (a class of `aurum
    /// template list`).
    #[arg(long)]
    class: Option<String>,
    /// The revision it installs: IMAGE, IMAGE@N or IMAGE:TAG (one the repository holds).
    #[arg(long, value_name = "REV")]
    image: Option<String>,
    /// Group (picks group overrides and hooks).
    #[arg(long, value_name = "NAME")]
    group: Option<String>,
    /// Address of its BMC, for `aurum power` and `aurum reinstall`: HOST or HOST:PORT (IPMI,
    /// UDP port 623 by default; Redfish: https://HOST), or a Redfish URL (http://HOST:PORT,
    /// or one ending in /redfish/v1/Systems/ID when the BMC has several systems).
    #[arg(long, value_name = "ADDR")]
    bmc: Option<String>,
    /// The BMC's protocol: ipmi (IPMI v2.0 lanplus, through ipmitool; the default) or redfish.
    #[arg(long, value_name = "PROTO", value_parser = ["ipmi", "redfish", ""])]
    bmc_protocol: Option<String>,
    /// The BMC user aurum logs in as.
    #[arg(long, value_name = "USER")]
    bmc_user: Option<String>,
    /// The file holding the BMC password (its first line; keep it mode 0600). The password is
    /// read at each use and never stored in the database.
    #[arg(long, value_name = "FILE")]
    bmc_password_file: Option<String>,
    /// Redfish over HTTPS: a PEM file with the CA certificate that signed the BMC's
    /// certificate, trusted for this BMC instead of the usual public roots.
    #[arg(long, value_name = "FILE")]
    bmc_ca_file: Option<String>,
    /// Where its root lives: disk (installed by `aurum install`, the default), memory
    /// (diskless: every network boot fetches its image from the server into a tmpfs and runs
    /// from RAM; rebooting it is how it updates, and how it rolls back) or netroot (diskless:
    /// every network boot mounts its revision's image, published with `aurum export
    /// --netroot`, read-only under a tmpfs overlay) or nfs (diskless: every network boot
    /// mounts its revision's NFSv4 export, published with `aurum export --nfs` and served by
    /// nfs-ganesha, read-only under a tmpfs overlay).
    #[arg(long, value_name = "WHERE", value_parser = ["disk", "memory", "netroot", "nfs"])]
    rootfs: Option<String>,
}

impl Fields {
    fn apply(self, n: &mut NodeEntry) -> aurum::Result<()> {
        if let Some(ip) = self.ip {
            n.set_ip((!ip.is_empty()).then_some(ip.as_str()))?;
        }
        let set = |slot: &mut Option<String>, v: Option<String>| {
            if let Some(v) = v {
                *slot = (!v.is_empty()).then_some(v);
            }
        };
        if let Some(c) = self.class {
            n.class = if c.is_empty() {
                None
            } else {
                Some(ClassName::new(c)?)
            };
        }
        set(&mut n.image, self.image);
        set(&mut n.group, self.group);
        set(&mut n.bmc, self.bmc);
        let b = &mut n.bmc_access;
        if let Some(p) = self.bmc_protocol {
            b.bmc_protocol = match p.as_str() {
                "" => None,
                p => Some(BmcProtocol::parse(p)?),
            };
        }
        set(&mut b.bmc_user, self.bmc_user);
        if let Some(r) = self.rootfs {
            n.rootfs = RootFs::parse(&r)?;
        }
        if let Some(f) = self.bmc_password_file {
            b.bmc_password_file = secret_file(Path::new(&f), "--bmc-password-file", true)?;
        }
        if let Some(f) = self.bmc_ca_file {
            b.bmc_ca_file = secret_file(Path::new(&f), "--bmc-ca-file", false)?;
        }
        Ok(())
    }
}

/// The absolute path of `file`, checked readable (`None` for an empty value: unset). A
/// password file that others can read is accepted with a warning.
fn secret_file(file: &Path, flag: &str, secret: bool) -> aurum::Result<Option<String>> {
    use std::os::unix::fs::PermissionsExt;
    if file.as_os_str().is_empty() {
        return Ok(None);
    }
    let abs = std::path::absolute(file).map_err(|e| aurum::Error::Io {
        path: file.to_path_buf(),
        source: e,
    })?;
    let meta = std::fs::File::open(&abs)
        .and_then(|f| f.metadata())
        .map_err(|e| {
            aurum::Error::Invalid(format!(
                "{flag} {}: cannot read it ({e}); it is read each time the BMC is used",
                abs.display()
            ))
        })?;
    if !meta.is_file() {
        return Err(aurum::Error::Invalid(format!(
            "{flag} {}: not a regular file",
            abs.display()
        )));
    }
    if secret && meta.permissions().mode() & 0o077 != 0 {
        super::say!(
            "aurum: warning: {} can be read by other users than its owner: `chmod 600 {}`",
            abs.display(),
            abs.display()
        );
    }
    Ok(Some(abs.display().to_string()))
}

/// `ipmi:ADDR`, `redfish:URL` or `-`.
fn bmc_summary(n: &NodeEntry) -> String {
    match &n.bmc {
        Some(a) => format!("{}:{a}", n.bmc_access.protocol().as_str()),
        None => "-".into(),
    }
}

/// Add a node to the database (its next network boot installs it).
#[derive(Args)]
struct AddArgs {
    /// The node's hostname.
    name: String,
    /// Its boot NIC's MAC address (any of 52:54:00:11:23:01, 52-54-00-11-23-01, 5254.0011.2301).
    #[arg(long)]
    mac: String,
    #[command(flatten)]
    fields: Fields,
    /// Print the node added as JSON (as `node show --json` prints it).
    #[arg(long)]
    json: bool,
}

/// List the nodes of the database.
#[derive(Args)]
struct ListArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Show one node: its fields, boot mode, and the phases of its last install.
#[derive(Args)]
struct ShowArgs {
    /// Node name or MAC.
    name: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Change a node's fields (an empty value unsets one: --class '').
#[derive(Args)]
struct SetArgs {
    /// Node name.
    name: String,
    /// A new MAC (after a NIC or mainboard swap).
    #[arg(long)]
    mac: Option<String>,
    #[command(flatten)]
    fields: Fields,
    /// Print the node as changed, as JSON.
    #[arg(long)]
    json: bool,
}

/// Remove nodes from the database, all or none.
#[derive(Args)]
struct RmArgs {
    /// Node name(s) or MAC(s).
    #[arg(required = true)]
    names: Vec<String>,
    /// Say which nodes would be removed; change nothing.
    #[arg(long, short = 'n')]
    dry_run: bool,
    /// Print JSON: {"removed": [NODE...], "dry_run"}.
    #[arg(long)]
    json: bool,
}

/// Add the nodes of a CSV file, all or none.
///
/// The first line names the columns, in any order: name,mac,ip,class,image,group (and
/// optionally bmc, bmc_protocol, bmc_user, bmc_password_file, bmc_ca_file: the files as
/// absolute paths; and rootfs: disk, memory, netroot or nfs); name and mac are required, empty fields are unset, lines starting with
/// `#` are skipped. One bad line (or a duplicate name, MAC or IP) and nothing is added.
#[derive(Args)]
struct ImportArgs {
    /// The CSV file.
    file: PathBuf,
    /// Print the nodes added as JSON.
    #[arg(long)]
    json: bool,
}

pub fn exec(g: &Global, a: NodeArgs) -> anyhow::Result<()> {
    match a.command {
        NodeCommand::Add(a) => add(g, a),
        NodeCommand::List(a) => list(g, a),
        NodeCommand::Show(a) => show(g, a),
        NodeCommand::Set(a) => set(g, a),
        NodeCommand::Rm(a) => rm(g, a),
        NodeCommand::Import(a) => import(g, a),
    }
}

fn add(g: &Global, a: AddArgs) -> anyhow::Result<()> {
    let mut n = NodeEntry::new(&a.name, &a.mac)?;
    a.fields.apply(&mut n)?;
    let mut repo = Repository::open(&g.repo, Lock::Shared)?;
    repo.check_node(&n)?;
    repo.catalog.add_nodes(std::slice::from_ref(&n))?;
    if a.json {
        return print_json(&n);
    }
    println!(
        "added node {} ({}): {}",
        n.name,
        n.mac,
        match n.rootfs {
            RootFs::Memory => "diskless: every network boot runs its image in memory",
            RootFs::Netroot =>
                "diskless: every network boot mounts its image read-only from the server",
            RootFs::Nfs => "diskless: every network boot mounts its revision read-only over NFS",
            RootFs::Disk => "next network boot installs",
        }
    );
    Ok(())
}

fn list(g: &Global, a: ListArgs) -> anyhow::Result<()> {
    let nodes = open(g)?.catalog.inventory()?;
    if a.json {
        return print_json(&nodes);
    }
    if nodes.is_empty() {
        println!("no nodes: add them with `aurum node add` or `aurum node import`");
        return Ok(());
    }
    println!(
        "{:<16} {:<17} {:<15} {:<10} {:<16} {:<8} {:<7} {:<24} LAST PHASE",
        "NODE", "MAC", "IP", "CLASS", "IMAGE", "GROUP", "BOOT", "BMC"
    );
    for n in nodes {
        println!(
            "{:<16} {:<17} {:<15} {:<10} {:<16} {:<8} {:<7} {:<24} {}",
            n.name,
            n.mac,
            n.ip.as_deref().unwrap_or("-"),
            n.class.as_ref().map_or("-", ClassName::as_str),
            n.image.as_deref().unwrap_or("-"),
            n.group.as_deref().unwrap_or("-"),
            match n.rootfs {
                RootFs::Memory => "memory",
                RootFs::Netroot => "netroot",
                RootFs::Nfs => "nfs",
                RootFs::Disk => n.boot.as_str(),
            },
            bmc_summary(&n),
            n.last
                .as_ref()
                .map(|l| format!("{} {}", l.phase, human_time(l.time)))
                .unwrap_or_else(|| "-".into())
        );
    }
    Ok(())
}

fn show(g: &Global, a: ShowArgs) -> anyhow::Result<()> {
    let repo = open(g)?;
    let n = repo.catalog.inventory_get(&a.name)?;
    let phases = repo.catalog.install_phases(&n.name, 40)?;
    // The node's last boot report (boot counting: which revision booted, whether it fell back).
    let boot = repo
        .catalog
        .latest_reports(aurum::format::report::NodeAction::Boot)?
        .into_iter()
        .find(|r| r.report.hostname == n.name);
    if a.json {
        return print_json(&serde_json::json!({ "node": n, "phases": phases, "last_boot": boot }));
    }
    let or = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    println!("node      {}", n.name);
    println!("mac       {}", n.mac);
    println!("ip        {}", or(&n.ip));
    println!(
        "class     {}",
        n.class.as_ref().map_or("-", ClassName::as_str)
    );
    println!("image     {}", or(&n.image));
    println!("group     {}", or(&n.group));
    println!("bmc       {}", bmc_summary(&n));
    if n.bmc.is_some() {
        let b = &n.bmc_access;
        println!("bmc user  {}", or(&b.bmc_user));
        println!(
            "bmc pass  {}",
            match &b.bmc_password_file {
                Some(f) => format!("read from {f}"),
                None => "-".into(),
            }
        );
        if let Some(ca) = &b.bmc_ca_file {
            println!("bmc CA    {ca}");
        }
    }
    println!(
        "boot      {}",
        match (n.rootfs, n.boot) {
            (RootFs::Memory, _) => "memory (diskless: every network boot runs its image from RAM)",
            (RootFs::Netroot, _) => "netroot (diskless: every network boot mounts its image read-only, writes go to RAM)",
            (RootFs::Nfs, _) => "nfs (diskless: every network boot mounts its revision read-only over NFS, writes go to RAM)",
            (_, Boot::Install) => "install (the next network boot installs it)",
            (_, Boot::Local) => "local (network boots go on to the local disk)",
        }
    );
    match &n.last {
        None => println!("install   never reported"),
        Some(l) => {
            println!(
                "phase     {} {}",
                l.phase,
                l.detail.lines().next().unwrap_or("")
            );
            println!("revision  {}", or(&l.revision));
            println!("time      {}", human_time(l.time));
        }
    }
    if let Some(b) = &boot {
        println!(
            "last boot {} at {}",
            b.report.detail,
            human_time(b.reported)
        );
    }
    if !phases.is_empty() {
        println!("\nphases of its installs (newest last):");
        for p in phases {
            println!("  {}  {:<10} {}", human_time(p.time), p.phase, p.detail);
        }
    }
    Ok(())
}

fn set(g: &Global, a: SetArgs) -> anyhow::Result<()> {
    let mut repo = Repository::open(&g.repo, Lock::Shared)?;
    let mut n = repo.catalog.inventory_get(&a.name)?;
    if let Some(mac) = a.mac {
        n.mac = nodes::normalise_mac(&mac)?;
    }
    // Only what is being set is checked: a node whose image was removed since can still be
    // given a new group.
    let class = a.fields.class.as_ref().filter(|c| !c.is_empty()).cloned();
    let image = a.fields.image.as_ref().filter(|i| !i.is_empty()).cloned();
    a.fields.apply(&mut n)?;
    repo.check_node_fields(&n.name, class.and(n.class.as_ref()), image.as_deref())?;
    repo.catalog.update_node(&n)?;
    if a.json {
        return print_json(&n);
    }
    println!("updated node {}", n.name);
    Ok(())
}

fn rm(g: &Global, a: RmArgs) -> anyhow::Result<()> {
    let mut repo = Repository::open(&g.repo, Lock::Shared)?;
    // All or none: every node is looked up (by name or MAC) before any is removed.
    let names = a
        .names
        .iter()
        .map(|n| repo.catalog.inventory_get(n).map(|e| e.name))
        .collect::<Result<Vec<String>, _>>()?;
    if !a.dry_run {
        for name in &names {
            if !repo.catalog.remove_node(name)? {
                return Err(aurum::Error::NotFound(format!("no node {name}")).into());
            }
        }
    }
    if a.json {
        return print_json(&serde_json::json!({ "removed": names, "dry_run": a.dry_run }));
    }
    for name in &names {
        match a.dry_run {
            true => println!("would remove node {name}"),
            false => println!("removed node {name}"),
        }
    }
    Ok(())
}

fn import(g: &Global, a: ImportArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&a.file).map_err(|e| aurum::Error::Io {
        path: a.file.clone(),
        source: e,
    })?;
    let nodes = nodes::parse_csv(&text, &a.file.display().to_string())?;
    let mut repo = Repository::open(&g.repo, Lock::Shared)?;
    for n in &nodes {
        repo.check_node(n)
            .map_err(|e| e.with_note(&format!("nothing was imported from {}", a.file.display())))?;
    }
    repo.catalog.add_nodes(&nodes)?;
    if a.json {
        return print_json(&nodes);
    }
    println!("imported {} nodes from {}", nodes.len(), a.file.display());
    Ok(())
}
