//! Rollouts of diskless nodes (`rootfs = memory` or `netroot` in the node database): an update
//! is a reboot into the new revision, a rollback a reboot into the old one. (A netroot node
//! boots the revision's exported image: export each revision before rolling it out to them,
//! or they fail to boot it and fall back.)
//!
//! A diskless node holds nothing to update: every boot fetches the revision its node database
//! entry names at that moment (`/api/v1/boot/MAC`, [`crate::netboot::memory`]). So its part
//! of a rollout wave is:
//!
//! 1. its entry is set to the rollout's revision, pinned (`compute@7`, never a moving
//!    `compute` that a later capture would change under it);
//! 2. it is rebooted: through its BMC when the database has one (a hard reset: there is no
//!    disk to lose), else over ssh with the plan's reboot command, detached so that ssh returns
//!    before the node goes down (a dropped connection is not a failed reboot);
//! 3. the driver waits, up to the plan's `boot_timeout`, for what the node sends by itself:
//!    `boot-memory`'s install phases (a `failed` one ends the wait at once), then the health
//!    report of the new revision (the image's `aurum-health.service`, or any `aurum health`
//!    it runs at boot). The catalog is read, not the node: no ssh session has to survive the
//!    reboot;
//! 4. unhealthy, or silent past the timeout: its entry goes back to its last-known-good
//!    revision (the one it booted before the rollout) and it is rebooted again and waited for
//!    the same way; its step is `fell-back`, with the reason and how the fallback went.
//!
//! The same reboot puts a healthy node back when its wave is rolled back (failure threshold,
//! abort). Disk nodes of the same wave go their own way ([`super::rollout`]) at the same time.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::exec::Status;
use super::nodeset::Target;
use super::power::{self, Action};
use crate::catalog::nodes::{InstallPhase, NodeEntry};
use crate::catalog::rollouts::Rollout;
use crate::catalog::{Catalog, NodeAction, Outcome};
use crate::error::Result;
use crate::format::rollout::{NodeStep, Plan, DISKLESS_REBOOT};
use crate::repo::Repository;

/// How often the driver reads the catalog for a rebooting node's reports.
const POLL: Duration = Duration::from_millis(500);

/// A revision a diskless node boots: its pinned name and id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Boot {
    /// `compute@7`.
    pub name: String,
    /// The id (hex), which its health report carries.
    pub id: String,
}

/// A diskless node of a rollout.
#[derive(Clone, Debug)]
pub struct MemoryNode {
    pub entry: NodeEntry,
    /// What it booted before the rollout touched it (its last-known-good), when known.
    pub previous: Option<Boot>,
}

impl MemoryNode {
    /// Node `name` when the node database says it is diskless (in memory, or on a network root); `recorded` is the
    /// previous revision the rollout wrote down for it (a resumed rollout), else it is what
    /// the node last booted (its last install phase), else what its entry names now.
    pub fn of(repo: &Repository, name: &str, recorded: Option<&str>) -> Result<Option<MemoryNode>> {
        let Some(entry) = repo.catalog.inventory_node(name)? else {
            return Ok(None);
        };
        if !entry.rootfs.is_diskless() {
            return Ok(None);
        }
        // The phase names it as `compute@6 1f2e3d4c`.
        let booted = entry
            .last
            .as_ref()
            .filter(|l| l.phase == InstallPhase::Done)
            .and_then(|l| l.revision.as_deref())
            .and_then(|r| r.split_whitespace().next());
        let previous = [recorded, booted, entry.image.as_deref()]
            .into_iter()
            .flatten()
            .find_map(|spec| repo.resolve(spec).ok())
            .map(|r| Boot {
                name: r.name(),
                id: r.id.hex(),
            });
        Ok(Some(MemoryNode { entry, previous }))
    }
}

/// A boot that went well: seconds from the reboot to the boot report, and to health passed;
/// and how the node was rebooted (`reset through its BMC ...`, `rebooted over ssh (...)`).
#[derive(Clone, Debug)]
pub struct Booted {
    pub booted: f64,
    pub healthy: f64,
    pub how: String,
}

/// Reboots `n` (BMC, else ssh); says how, or why it could not.
fn reboot(plan: &Plan, t: &Target, n: &NodeEntry) -> std::result::Result<String, String> {
    if let Some(bmc) = &n.bmc {
        let r = power::apply(
            n,
            Action::Boot,
            Duration::from_secs(plan.connect_timeout + 30),
        );
        return match r.status {
            power::Outcome::Ok => Ok(format!("reset through its BMC {bmc}")),
            _ => Err(format!("its BMC {bmc} did not reset it: {}", r.message)),
        };
    }
    let cmd = plan.reboot_command.as_deref().unwrap_or(DISKLESS_REBOOT);
    // Detached, a second late: ssh returns before the node goes down.
    let script = format!("(sleep 1; {cmd}) </dev/null >/dev/null 2>&1 &");
    let out = super::rollout::on_node_raw(t, plan, &script, plan.connect_timeout + 30);
    match out.status {
        Status::Ok => Ok(format!("rebooted over ssh ({cmd})")),
        _ => Err(format!("not rebooted: {}", super::rollout::why(&out))),
    }
}

/// Sets `n`'s entry to `to`, reboots it, and waits for its boot report and the health report
/// of `to`. The error says why it did not come up healthy.
pub fn boot_into(
    cat: &Mutex<&mut Catalog>,
    plan: &Plan,
    t: &Target,
    n: &NodeEntry,
    to: &Boot,
) -> std::result::Result<Booted, String> {
    let lock = || cat.lock().unwrap_or_else(|e| e.into_inner());
    let (phases, reports) = {
        let c = lock();
        let marks = c
            .install_phase_mark()
            .and_then(|p| Ok((p, c.report_mark()?)));
        marks.map_err(|e| format!("the catalog: {e}"))?
    };
    lock()
        .set_node_image(&n.name, &to.name)
        .map_err(|e| format!("the node database: {e}"))?;
    let started = Instant::now();
    let how = reboot(plan, t, n)?;
    let limit = Duration::from_secs(plan.boot_timeout.max(1));
    let mut booted = None;
    let mut last = String::from("no boot report");
    loop {
        {
            let c = lock();
            for p in c
                .install_phases_after(&n.name, phases)
                .map_err(|e| format!("the catalog: {e}"))?
            {
                match p.phase {
                    InstallPhase::Failed => {
                        return Err(format!("its boot into {} failed: {}", to.name, p.detail))
                    }
                    InstallPhase::Done => {
                        booted.get_or_insert(started.elapsed().as_secs_f64());
                    }
                    _ => {}
                }
                last = format!("last boot phase {}", p.phase);
            }
            let health = c
                .reports_after(&n.name, NodeAction::Health, reports)
                .map_err(|e| format!("the catalog: {e}"))?;
            // A report of another revision is the old system's, before it went down.
            if let Some(h) = health.iter().find(|h| {
                h.report
                    .revision
                    .as_deref()
                    .is_some_and(|r| !r.is_empty() && to.id.starts_with(r))
            }) {
                let healthy = started.elapsed().as_secs_f64();
                return match h.report.result {
                    Outcome::Ok => Ok(Booted {
                        booted: booted.unwrap_or(healthy),
                        healthy,
                        how,
                    }),
                    _ => Err(format!(
                        "unhealthy on {} ({})",
                        to.name,
                        h.report.detail.trim_start_matches("failed: ")
                    )),
                };
            }
        }
        if started.elapsed() >= limit {
            return Err(match booted {
                Some(_) => format!(
                    "booted {} but sent no health report within {} s of its reboot",
                    to.name, plan.boot_timeout
                ),
                None => format!(
                    "no boot report of {} within {} s of its reboot ({last})",
                    to.name, plan.boot_timeout
                ),
            });
        }
        std::thread::sleep(POLL);
    }
}

/// One diskless node through its reboot into the rollout's revision and its health gate,
/// falling back on failure. `failed` is called the moment it is known to have failed.
pub fn drive_node(
    r: &Rollout,
    t: &Target,
    m: &MemoryNode,
    cat: &Mutex<&mut Catalog>,
    failed: &(dyn Fn() + Sync),
) -> Result<NodeStep> {
    let plan = &r.plan;
    let set = |step, previous: Option<&str>, detail: &str| -> Result<()> {
        cat.lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_rollout_node(r.id, &t.name, step, previous, detail)
    };
    let target = Boot {
        name: format!("{}@{}", r.image, r.number),
        id: r.revision.clone(),
    };
    let previous = m.previous.as_ref().map(|p| p.name.as_str());
    set(
        NodeStep::Updating,
        previous,
        &format!("diskless: rebooting into {}", target.name),
    )?;
    let why = match boot_into(cat, plan, t, &m.entry, &target) {
        Ok(b) => {
            set(
                NodeStep::Done,
                None,
                &format!(
                    "healthy: booted {} {:.0} s after its reboot, health passed at {:.0} s ({})",
                    target.name, b.booted, b.healthy, b.how
                ),
            )?;
            return Ok(NodeStep::Done);
        }
        Err(why) => why,
    };
    failed();
    let back = fall_back(cat, plan, t, m, &target, &why);
    let step = match back.1 {
        true => NodeStep::FellBack,
        false => NodeStep::Failed,
    };
    set(step, None, &back.0)?;
    Ok(step)
}

/// Puts `m` back on its previous revision after `why` (its entry, then a reboot into it when
/// it booted the target); the detail, and whether it was rebooted into it.
fn fall_back(
    cat: &Mutex<&mut Catalog>,
    plan: &Plan,
    t: &Target,
    m: &MemoryNode,
    target: &Boot,
    why: &str,
) -> (String, bool) {
    let Some(prev) = &m.previous else {
        // Nothing known to go back to: its entry is left as the administrator had it.
        let put = match &m.entry.image {
            Some(image) => match cat
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .set_node_image(&m.entry.name, image)
            {
                Ok(()) => format!("its node database entry is back on {image}"),
                Err(e) => format!("its entry could not be put back: {e}"),
            },
            None => "it has no image in the node database".to_string(),
        };
        return (
            format!("{why}; no last-known-good revision to fall back to (it never reported a boot); {put}"),
            false,
        );
    };
    if prev.id == target.id {
        return (
            format!(
                "{why}; it booted {} before the rollout: left on it",
                prev.name
            ),
            false,
        );
    }
    match boot_into(cat, plan, t, &m.entry, prev) {
        Ok(b) => (
            format!(
                "{why}; fell back to {}: rebooted into it, healthy {:.0} s after the reboot ({})",
                prev.name, b.healthy, b.how
            ),
            true,
        ),
        // Its entry is back, but it is not seen healthy on it: a failure, not a fallback.
        Err(e) => (
            format!(
                "{why}; its node database entry is back on {}, but after the reboot into it: {e}",
                prev.name
            ),
            false,
        ),
    }
}

/// Puts a diskless node the rollout moved back on its previous revision (its wave is rolled
/// back); says what was done, starting `rolled back` when it was.
pub fn restore(
    cat: &Mutex<&mut Catalog>,
    plan: &Plan,
    t: &Target,
    m: &MemoryNode,
    target: &Boot,
) -> String {
    let Some(prev) = &m.previous else {
        return "not rolled back: it booted no revision known before the rollout".to_string();
    };
    if prev.id == target.id {
        return format!("it booted {} before the rollout: left on it", prev.name);
    }
    match boot_into(cat, plan, t, &m.entry, prev) {
        Ok(b) => format!(
            "rolled back to {}: rebooted into it, healthy {:.0} s after the reboot ({})",
            prev.name, b.healthy, b.how
        ),
        Err(e) => format!("rollback to {} failed: {e}", prev.name),
    }
}
