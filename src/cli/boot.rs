//! `boot` command: what a node runs early at every boot (boot counting and fallback), and the
//! pieces `health` uses on a trial boot.

use std::path::{Path, PathBuf};

use aurum::apply::bootcount::{self, BootContext, BootOutcome, BootRecord, BootResult, ThisBoot};
use aurum::apply::client::Recovered;
use aurum::apply::health::HealthRecord;
use aurum::apply::node::Node;
use aurum::apply::source::{HttpRepo, RevisionSource};
use clap::Args;

use super::node::{ExcludeArgs, SourceArgs};
use super::{human_time, print_json, say, Global};

/// Record this boot; on the fallback entry, put the node back to its last-known-good revision.
///
/// Run it early at every boot (aurum-boot.service does, before the network). On a boot of a
/// revision on trial (one `aurum updateclient` wrote with --boot-tries) it records the tries
/// left; `aurum health` passing on that boot then blesses the revision. When the boot loader
/// (GRUB or systemd-boot) has used up the tries it boots aurum's fallback entry (the kernel the
/// node ran before, with
/// `aurum.fallback`): then this command puts the root back to the revision before the trial
/// from the node's own undo area (no network needed), records that the node fell back and why,
/// reports it to the server, and reboots into the restored root. Every boot is reported
/// (action `boot`); `aurum node-status` and `aurum nodes` show the last one.
///
/// A root a killed `aurum rollback` or update left between two revisions (its journal is
/// there) is first brought to one, as `aurum rollback` does when rerun: an interrupted
/// rollback is finished, an interrupted update undone, from the undo area; the boot is then
/// recorded with what was done, counts as no trial boot, and the node reboots into the root.
#[derive(Args)]
pub struct BootArgs {
    /// The node's root.
    #[arg(long, default_value = "/", value_name = "DIR")]
    root: PathBuf,
    /// The kernel command line of this boot. Default: /proc/cmdline (give it for a root mounted
    /// elsewhere, e.g. from a rescue system: `aurum.fallback` in it means the boot loader
    /// booted the fallback entry).
    #[arg(long, value_name = "TEXT")]
    cmdline: Option<String>,
    /// After a fallback, do not reboot (the root is put back; the running system is still the
    /// revision that failed until the node reboots). Never reboots with a --root other than /.
    #[arg(long)]
    no_reboot: bool,
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    excludes: ExcludeArgs,
    /// Print the boot record as JSON: {"record": {"time", "boot_id", "revision", "outcome",
    /// "tries_left", "trial", "reason"}, "reboot"}.
    #[arg(long)]
    json: bool,
}

/// This boot, from /proc, with `cmdline` given instead of the kernel's when it is.
fn this_boot(cmdline: Option<String>) -> anyhow::Result<ThisBoot> {
    let mut this = ThisBoot::running()?;
    if let Some(c) = cmdline {
        this.cmdline = c;
    }
    Ok(this)
}

pub fn boot(g: &Global, a: BootArgs) -> anyhow::Result<()> {
    let node = Node::open_deferred(&a.root)?;
    if node.state()?.current.is_none() {
        return Err(aurum::Error::Invalid(format!(
            "aurum has not installed or updated {} yet: there is no boot to record",
            a.root.display()
        ))
        .into());
    }
    node.claim()?;
    // A boot without the network still counts and falls back: the report is then lost. A
    // fallback goes back, as a rollback does: signatures are checked, numbers and ages not.
    let source = match a.source.open(g, &node, true) {
        Ok(s) => s,
        Err(e) => {
            log::warn!("no server to report to: {e:#}");
            None
        }
    };
    let progress = g.progress();
    let cx = BootContext {
        this: this_boot(a.cmdline)?,
        source: source.as_deref(),
        excludes: a.excludes.build(&g.config.node)?,
        progress: progress.as_ref(),
    };
    let r = bootcount::boot(&node, &cx)?;
    if a.json {
        print_json(&r)?;
    } else {
        print_record(&r.record);
    }
    // Recorded and reported; the root is still between two revisions (the reason says why).
    if let Some(why) = aurum::apply::client::left_interrupted(&node)? {
        return Err(aurum::Error::Tool(format!(
            "{why} (this boot could not: {})",
            r.record.reason
        ))
        .into());
    }
    reboot_if_asked(&a.root, &r, a.no_reboot)
}

/// Runs `f` with the node at `root`, locked, and the context of `health`'s part in boot
/// counting: this boot, the server it reports to (when one is given and answers), and the
/// excludes a fallback honours.
fn in_health_context<T>(
    g: &Global,
    root: &Path,
    server: Option<&str>,
    excludes: &ExcludeArgs,
    f: impl FnOnce(&Node, &BootContext) -> aurum::Result<T>,
) -> anyhow::Result<T> {
    let node = Node::open(root)?;
    let http = match server {
        Some(url) => {
            let options = super::node::report_options(g, root)?;
            match HttpRepo::new(url, Some(&node.dir.join("cache")), &options) {
                Ok(h) => Some(h),
                Err(e) => {
                    log::warn!("no server to report to: {e:#}");
                    None
                }
            }
        }
        None => None,
    };
    let progress = g.progress();
    let cx = BootContext {
        this: this_boot(None)?,
        source: http.as_ref().map(|h| h as &dyn RevisionSource),
        excludes: excludes.build(&g.config.node)?,
        progress: progress.as_ref(),
    };
    Ok(f(&node, &cx)?)
}

/// What `health` found before its checks on a root a kill left between two revisions.
#[derive(Default)]
pub struct BeforeHealth {
    /// It was brought to one revision (the boot's first health check).
    pub recovered: Option<Recovered>,
    /// It was left as it is, for the administrator: why, for a failed check.
    pub left: Option<String>,
}

/// `health`'s part before its checks: a root a kill left between two revisions is brought to
/// one first (see [`bootcount::recover`]) on the boot's first health check only (see
/// [`bootcount::health_may_recover`]), never with `slurm` (Slurm's HealthCheckProgram runs on
/// a node taking jobs); else it is left as it is. Nothing on a root aurum never updated.
pub fn before_health(
    g: &Global,
    root: &Path,
    server: Option<&str>,
    excludes: &ExcludeArgs,
    slurm: bool,
) -> anyhow::Result<BeforeHealth> {
    match aurum::apply::node::peek(root)? {
        Some((_, Some(_))) => {}
        _ => return Ok(BeforeHealth::default()),
    }
    in_health_context(g, root, server, excludes, |node, cx| {
        if !slurm && bootcount::health_may_recover(node, &cx.this)? {
            return Ok(BeforeHealth {
                recovered: bootcount::recover(node, cx)?,
                left: None,
            });
        }
        Ok(BeforeHealth {
            recovered: None,
            left: aurum::apply::client::left_interrupted(node)?,
        })
    })
}

/// `health`'s part on a trial boot (see [`bootcount::after_health`]).
pub fn after_health(
    g: &Global,
    root: &Path,
    server: Option<&str>,
    excludes: &ExcludeArgs,
    record: &HealthRecord,
    recovered: Option<&Recovered>,
) -> anyhow::Result<Option<BootResult>> {
    in_health_context(g, root, server, excludes, |node, cx| {
        bootcount::after_health(node, cx, record, recovered)
    })
}

/// One line on a boot record, as node-status shows it.
pub fn describe(b: &BootRecord) -> String {
    let rev = b
        .revision
        .as_ref()
        .map(|r| r.name())
        .unwrap_or_else(|| "-".into());
    let at = human_time(b.time);
    match b.outcome {
        BootOutcome::Booted if b.reason.is_empty() => format!("{rev} at {at}"),
        BootOutcome::Booted => format!("{rev} at {at}: {}", b.reason),
        BootOutcome::Trial => format!(
            "{rev} at {at}, on trial ({} tries left)",
            b.tries_left
                .map(|t| t.to_string())
                .unwrap_or_else(|| "?".into())
        ),
        BootOutcome::Blessed => format!("{rev} at {at}, blessed (now last-known-good)"),
        BootOutcome::FellBack => format!("{rev} at {at}, FELL BACK: {}", b.reason),
    }
}

pub fn print_record(b: &BootRecord) {
    println!("boot: {}", describe(b));
}

/// Reboots the node when a fallback put its root back, unless told not to or the root is not
/// this system's.
pub fn reboot_if_asked(root: &Path, r: &BootResult, no_reboot: bool) -> anyhow::Result<()> {
    if !r.reboot {
        return Ok(());
    }
    let what = match r.record.outcome {
        BootOutcome::FellBack => "the root was put back",
        // A trial whose counting entry `boot` had to write: the revision's own kernel.
        _ => "the boot loader's entry for this root was written",
    };
    if no_reboot || root != Path::new("/") {
        say!("aurum: {what}; reboot to run it");
        return Ok(());
    }
    say!("aurum: {what}; rebooting into it");
    Ok(bootcount::reboot()?)
}
