//! `power` and `reinstall`: nodes' BMCs (IPMI or Redfish), from the node database.

use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};

use super::{open, print_json, say, Global};
use aurum::catalog::nodes::{Boot, NodeEntry};
use aurum::fleet::nodeset;
use aurum::fleet::power::{self, Action, BootTarget, Outcome, PowerResult};
use aurum::fleet::reinstall::{self, State};
use aurum::repo::{Lock, Repository};

/// Power and boot-device control through the nodes' BMCs (IPMI or Redfish).
///
/// Each node's BMC is set in the node database: `aurum node set NAME --bmc ADDR --bmc-protocol
/// ipmi|redfish --bmc-user USER --bmc-password-file FILE`. IPMI goes through ipmitool (IPMI
/// v2.0 lanplus; it reads the password file itself), Redfish through HTTP(S) with basic
/// authentication. The password is never stored, printed or put on a command line. BMCs are
/// worked on in parallel (--fanout); the exit status is the number of nodes that failed (at
/// most 125).
///
/// Example: aurum power status @rack1
#[derive(Args)]
pub struct PowerArgs {
    #[command(subcommand)]
    command: PowerCommand,
}

#[derive(Subcommand)]
enum PowerCommand {
    /// Power the nodes on.
    On(Common),
    /// Power the nodes off, hard (IPMI `power off`, Redfish `ForceOff`).
    Off(Common),
    /// Power the nodes off and on again (a node that is off is powered on).
    Cycle(Common),
    /// Hard-reset the nodes (IPMI `power reset`, Redfish `ForceRestart`).
    Reset(Common),
    /// Boot the nodes whatever their state: on when off, else a hard reset (xCAT's `rpower
    /// boot`).
    Boot(Common),
    /// Show whether each node is powered on.
    Status(Common),
    /// Set the device the nodes boot from next: pxe (the network) or disk.
    Bootdev(BootdevArgs),
}

/// What every power command takes.
#[derive(Args)]
struct Common {
    /// The nodes: node sets (n[01-64], @GROUP, @all; ClusterShell's syntax), their union.
    #[arg(required = true, value_name = "NODESET")]
    nodeset: Vec<String>,
    #[command(flatten)]
    bmc: BmcOptions,
    /// Print JSON: [{"node", "bmc", "protocol", "status", "power", "message", "seconds"}...].
    #[arg(long)]
    json: bool,
}

/// How many BMCs at once, and how long each may take.
#[derive(Args)]
struct BmcOptions {
    /// BMCs talked to at once.
    #[arg(short, long, default_value_t = 32, value_name = "N")]
    fanout: usize,
    /// Give up on a BMC that has not answered after SECONDS (the node is reported as timed
    /// out).
    #[arg(short = 't', long, default_value_t = 30, value_name = "SECONDS")]
    timeout: u64,
}

impl BmcOptions {
    fn options(&self) -> power::Options {
        power::Options {
            fanout: self.fanout.max(1),
            timeout: Duration::from_secs(self.timeout.max(1)),
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Device {
    /// The network (PXE).
    Pxe,
    /// The local disk.
    Disk,
}

#[derive(Args)]
struct BootdevArgs {
    /// pxe or disk.
    device: Device,
    #[command(flatten)]
    common: Common,
    /// Every boot from now on, not only the next one.
    #[arg(long)]
    persistent: bool,
    /// Boot in UEFI mode (IPMI's efiboot option, Redfish's BootSourceOverrideMode UEFI).
    #[arg(long)]
    uefi: bool,
}

pub fn exec(g: &Global, a: PowerArgs) -> anyhow::Result<()> {
    let (common, action) = match a.command {
        PowerCommand::On(c) => (c, Action::On),
        PowerCommand::Off(c) => (c, Action::Off),
        PowerCommand::Cycle(c) => (c, Action::Cycle),
        PowerCommand::Reset(c) => (c, Action::Reset),
        PowerCommand::Boot(c) => (c, Action::Boot),
        PowerCommand::Status(c) => (c, Action::Status),
        PowerCommand::Bootdev(b) => (
            b.common,
            Action::Bootdev {
                target: match b.device {
                    Device::Pxe => BootTarget::Pxe,
                    Device::Disk => BootTarget::Disk,
                },
                persistent: b.persistent,
                uefi: b.uefi,
            },
        ),
    };
    let inventory = open(g)?.catalog.inventory()?;
    let names = names(&common.nodeset, &inventory)?;
    let progress = g.progress();
    let results = power::run(
        &names,
        &inventory,
        action,
        &common.bmc.options(),
        progress.as_ref(),
    );
    let failed = results.iter().filter(|r| r.status != Outcome::Ok).count();
    if common.json {
        print_json(&results)?;
    } else {
        show(&results);
    }
    exit_with(failed)
}

/// The names of the union of the node sets `sets`.
fn names(sets: &[String], inventory: &[NodeEntry]) -> anyhow::Result<Vec<String>> {
    Ok(nodeset::resolve(&sets.join(","), inventory)?
        .into_iter()
        .map(|t| t.name)
        .collect())
}

/// Exits with the number of failed nodes (at most 125) when some failed.
fn exit_with(failed: usize) -> anyhow::Result<()> {
    if failed > 0 {
        std::process::exit(failed.min(125) as i32);
    }
    Ok(())
}

/// One line per node; failures on standard error, folded by message.
fn show(results: &[PowerResult]) {
    for r in results.iter().filter(|r| r.status == Outcome::Ok) {
        println!("{}: {}", r.node, r.message);
    }
    let mut kinds: Vec<&str> = results
        .iter()
        .filter(|r| r.status != Outcome::Ok)
        .map(|r| r.message.as_str())
        .collect();
    kinds.sort();
    kinds.dedup();
    for kind in kinds {
        let nodes = nodeset::fold(
            results
                .iter()
                .filter(|r| r.status != Outcome::Ok && r.message == kind)
                .map(|r| r.node.as_str()),
        );
        eprintln!("aurum: {nodes}: {kind}");
    }
    let ok = results.iter().filter(|r| r.status == Outcome::Ok).count();
    say!("aurum: {ok} of {} BMCs succeeded", results.len());
}

/// Reinstall nodes through their BMCs: install at the next network boot, boot them, wait.
///
/// For each node: its netboot entry is switched to install (and its image to --image), its
/// BMC is told to boot from the network once and the node is booted (powered on when off,
/// else hard-reset). The command then waits for each install's final report to reach `aurum
/// serve` (which must be running, with the nodes pointed at it), printing phases as they
/// come. A node that installed boots its local disk again; one whose install failed or did
/// not report in time stays on install; one whose BMC failed is left as it was. The exit
/// status is the number of nodes not installed (at most 125).
///
/// Example: aurum reinstall 'n[01-04]' --image compute@12 --wait 1800
#[derive(Args)]
pub struct ReinstallArgs {
    /// The nodes: node sets of the node database (n[01-04], @GROUP), their union.
    #[arg(required = true, value_name = "NODESET")]
    nodeset: Vec<String>,
    /// The revision to install, IMAGE, IMAGE@N or IMAGE:TAG (kept as each node's image).
    /// Default: each node's own image.
    #[arg(long, value_name = "I@R")]
    image: Option<String>,
    /// Wait at most SECONDS for the installs to report done; 0: boot them and return.
    #[arg(long, default_value_t = 3600, value_name = "SECONDS")]
    wait: u64,
    /// Boot in UEFI mode (the BMC's boot-device option).
    #[arg(long)]
    uefi: bool,
    #[command(flatten)]
    bmc: BmcOptions,
    /// Print JSON: [{"node", "state", "revision", "boot", "message", "power", "phases",
    /// "seconds"}...].
    #[arg(long)]
    json: bool,
}

pub fn reinstall(g: &Global, a: ReinstallArgs) -> anyhow::Result<()> {
    let mut repo = Repository::open(&g.repo, Lock::Shared)?;
    let inventory = repo.catalog.inventory()?;
    let names = names(&a.nodeset, &inventory)?;
    if let Some(unknown) = names
        .iter()
        .find(|n| !inventory.iter().any(|i| &i.name == *n))
    {
        return Err(aurum::Error::NotFound(format!(
            "no node {unknown} in the node database: only its nodes can be reinstalled (`aurum node add {unknown} --mac MAC --bmc ADDR ...`)"
        ))
        .into());
    }
    let opts = reinstall::Options {
        image: a.image,
        wait: Duration::from_secs(a.wait),
        power: a.bmc.options(),
        uefi: a.uefi,
    };
    let progress = g.progress();
    let json = a.json;
    let results = reinstall::reinstall(&mut repo, &names, &opts, progress.as_ref(), &|node, p| {
        if !json {
            say!(
                "{node}: {} {}",
                p.phase,
                p.detail.lines().next().unwrap_or("")
            );
        }
    })?;
    let failed = results
        .iter()
        .filter(|r| !matches!(r.state, State::Installed | State::Started))
        .count();
    if json {
        print_json(&results)?;
    } else {
        for r in &results {
            let line = format!(
                "{}: {} (next network boot: {}, {:.0} s)",
                r.node,
                r.message,
                match r.boot {
                    Boot::Install => "install",
                    Boot::Local => "local disk",
                },
                r.seconds
            );
            match r.state {
                State::Installed | State::Started => println!("{line}"),
                _ => eprintln!("aurum: {line}"),
            }
        }
    }
    exit_with(failed)
}
