//! `pxe` subcommand group: DHCP configuration, the TFTP tree, and switching a node between
//! install and local boot.

use std::path::PathBuf;

use aurum::catalog::nodes::Boot;
use aurum::netboot::pxe::{self, DhcpOptions};
use aurum::repo::{Lock, Repository};
use clap::{Args, Subcommand};

use super::{open, print_json, Global};

/// Network boot: DHCP configuration, the TFTP tree, install or local boot per node.
///
/// The chain: the firmware's PXE loads iPXE (undionly.kpxe for BIOS, snponly.efi for UEFI,
/// chosen by DHCP option 93); iPXE, recognised by its user class, gets the per-node script
/// http://SERVER:8035/boot/MAC.ipxe from `aurum serve`; the script loads the boot kit and
/// installs the node, or boots its local disk once it is installed.
#[derive(Args)]
pub struct PxeArgs {
    #[command(subcommand)]
    command: PxeCommand,
}

#[derive(Subcommand)]
enum PxeCommand {
    Config(ConfigArgs),
    Tftp(TftpArgs),
    Netboot(NetbootArgs),
}

/// Write a DHCP server configuration for the node database.
///
/// Host entries for every node (with its fixed IP when it has one), the BIOS and x86-64 UEFI
/// boot files by client architecture (option 93), and the iPXE user-class match that hands
/// iPXE the per-node script instead of iPXE again. dnsmasq can also serve TFTP (--tftp-root)
/// and run as ProxyDHCP beside an existing DHCP server (--proxy). Check the result with
/// `dnsmasq --test -C FILE` or `dhcpd -t -cf FILE`.
#[derive(Args)]
#[command(group = clap::ArgGroup::new("kind").required(true))]
struct ConfigArgs {
    /// Write a dnsmasq configuration here.
    #[arg(long, value_name = "FILE", group = "kind")]
    dnsmasq: Option<PathBuf>,
    /// Write an ISC dhcpd configuration here.
    #[arg(long, value_name = "FILE", group = "kind")]
    dhcpd: Option<PathBuf>,
    /// Where nodes reach `aurum serve`. Default: `url` in aurum.toml.
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// The TFTP server's address (next-server), when it is not the DHCP server.
    #[arg(long, value_name = "ADDR")]
    tftp_server: Option<String>,
    /// dnsmasq: also serve TFTP from this directory (the tree `aurum pxe tftp` writes).
    #[arg(long, value_name = "DIR")]
    tftp_root: Option<String>,
    /// dnsmasq: listen on this interface only.
    #[arg(long, value_name = "IF")]
    interface: Option<String>,
    /// The nodes' subnet, like 10.0.1.0/24.
    #[arg(long, value_name = "CIDR")]
    subnet: Option<String>,
    /// A dynamic address range for machines not in the database, like 10.0.1.100,10.0.1.200.
    #[arg(long, value_name = "A,B")]
    range: Option<String>,
    /// dnsmasq: ProxyDHCP, beside an existing DHCP server that hands out the addresses.
    #[arg(long)]
    proxy: bool,
    /// Print JSON: {"file", "kind", "nodes"}.
    #[arg(long)]
    json: bool,
}

/// Write the TFTP tree: the first iPXE script, and each node's pxelinux and iPXE files.
///
/// boot.ipxe (for DHCP servers that cannot match iPXE's user class, like QEMU's) chains to
/// the per-node script of `aurum serve`; ipxe/MAC.ipxe and pxelinux.cfg/01-MAC hold each
/// node's install or local-boot entry; aurum/ holds the boot kit for pxelinux, and the iPXE
/// binaries are copied from Debian's ipxe package when installed. The tree is remembered:
/// `aurum pxe netboot` and install reports rewrite a node's files in it.
#[derive(Args)]
struct TftpArgs {
    /// The TFTP root directory (as `pxe config --tftp-root`; `--root` is its old spelling).
    #[arg(long = "tftp-root", alias = "root", value_name = "DIR")]
    tftp_root: PathBuf,
    /// Where nodes reach `aurum serve`. Default: `url` in aurum.toml.
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// The boot kit directory. Default: REPO/bootkit.
    #[arg(long, value_name = "DIR")]
    kit: Option<PathBuf>,
    /// Print JSON: {"tftp_root", "nodes", "notes"}.
    #[arg(long)]
    json: bool,
}

/// Switch a node's next network boot to install or to its local disk (si_mkclientnetboot).
///
/// A node that reports a successful install is switched to local boot automatically.
#[derive(Args)]
#[command(group = clap::ArgGroup::new("mode").required(true))]
struct NetbootArgs {
    /// Node name(s).
    #[arg(required = true)]
    nodes: Vec<String>,
    /// Install (again) at the next network boot.
    #[arg(long, group = "mode")]
    install: bool,
    /// Boot from the local disk.
    #[arg(long, group = "mode")]
    local: bool,
    /// Print JSON: [{"node", "boot", "tftp_root"}...].
    #[arg(long)]
    json: bool,
}

/// Where nodes reach `aurum serve`: --server, else aurum.toml's `url`.
fn server_url(g: &Global, flag: Option<String>) -> anyhow::Result<String> {
    Ok(g.config
        .url(flag)
        .ok_or_else(|| {
            aurum::Error::Invalid(format!(
                "give where nodes reach `aurum serve` with --server URL, or set `url` in {}",
                g.config.dir.join(aurum::config::SERVER_FILE).display()
            ))
        })?
        .value)
}

pub fn exec(g: &Global, a: PxeArgs) -> anyhow::Result<()> {
    match a.command {
        PxeCommand::Config(a) => config(g, a),
        PxeCommand::Tftp(a) => tftp(g, a),
        PxeCommand::Netboot(a) => netboot(g, a),
    }
}

fn config(g: &Global, a: ConfigArgs) -> anyhow::Result<()> {
    let nodes = open(g)?.catalog.inventory()?;
    let range = match &a.range {
        Some(r) => Some(
            r.split_once(',')
                .map(|(x, y)| (x.trim().to_string(), y.trim().to_string()))
                .ok_or_else(|| aurum::Error::Invalid(format!("--range `{r}`: give A,B")))?,
        ),
        None => None,
    };
    let o = DhcpOptions {
        server: server_url(g, a.server)?,
        tftp_server: a.tftp_server,
        interface: a.interface,
        subnet: a.subnet,
        range,
        proxy: a.proxy,
        tftp_root: a.tftp_root,
    };
    let (file, kind, text) = match (a.dnsmasq, a.dhcpd) {
        (Some(f), _) => (f, "dnsmasq", pxe::dnsmasq_config(&nodes, &o)?),
        (None, Some(f)) => (f, "dhcpd", pxe::dhcpd_config(&nodes, &o)?),
        (None, None) => unreachable!("clap requires one"),
    };
    std::fs::write(&file, text).map_err(|e| aurum::Error::Io {
        path: file.clone(),
        source: e,
    })?;
    if a.json {
        return print_json(&serde_json::json!({
            "file": file.display().to_string(), "kind": kind, "nodes": nodes.len(),
        }));
    }
    println!("wrote {} ({} nodes)", file.display(), nodes.len());
    Ok(())
}

fn tftp(g: &Global, a: TftpArgs) -> anyhow::Result<()> {
    let repo = open(g)?;
    let kit = a.kit.unwrap_or_else(|| g.repo.join("bootkit"));
    let server = server_url(g, a.server)?;
    let notes = pxe::tftp(&repo.catalog, &a.tftp_root, &server, &kit)?;
    let nodes = repo.catalog.inventory()?.len();
    if a.json {
        return print_json(&serde_json::json!({
            "tftp_root": a.tftp_root.display().to_string(), "nodes": nodes, "notes": notes,
        }));
    }
    for n in notes {
        super::say!("aurum: note: {n}");
    }
    println!(
        "wrote the TFTP tree at {} ({nodes} nodes)",
        a.tftp_root.display()
    );
    Ok(())
}

fn netboot(g: &Global, a: NetbootArgs) -> anyhow::Result<()> {
    let boot = if a.install {
        Boot::Install
    } else {
        Boot::Local
    };
    let mut repo = Repository::open(&g.repo, Lock::Shared)?;
    let mut done = Vec::new();
    for name in &a.nodes {
        let (n, root) = pxe::netboot(&mut repo.catalog, name, boot)?;
        if a.json {
            done.push(serde_json::json!({
                "node": n.name, "boot": boot.as_str(),
                "tftp_root": root.map(|r| r.display().to_string()),
            }));
            continue;
        }
        println!(
            "{}: next network boot {}{}",
            n.name,
            match boot {
                Boot::Install => "installs",
                Boot::Local => "boots the local disk",
            },
            root.map(|r| format!(" (TFTP files in {} rewritten)", r.display()))
                .unwrap_or_default()
        );
    }
    if a.json {
        return print_json(&done);
    }
    Ok(())
}
