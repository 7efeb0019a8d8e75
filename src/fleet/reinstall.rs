//! Reinstalling nodes through their BMCs: what `si_mkclientnetboot` plus a trip to the machine
//! room did, in one command.
//!
//! For each node: its netboot entry is switched to install (and its image changed when asked),
//! its BMC is told to boot from the network once, and the node is booted (on when off, else a
//! hard reset). The install's phases then arrive at `aurum serve` (`POST /api/v1/install/NODE`)
//! and land in the catalog, which this polls. A `done` report switches the node back to local
//! boot (the server does so; this makes sure of it and rewrites the TFTP files). A node whose
//! BMC could not be driven is put back as it was, so that no later boot reinstalls it by
//! surprise; a node whose install failed or did not report in time stays on install.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::power::{self, Action, BootTarget, Outcome};
use crate::catalog::nodes::{Boot, InstallPhase, LastPhase, NodeEntry};
use crate::error::Result;
use crate::netboot::pxe;
use crate::progress::Progress;
use crate::repo::Repository;

/// How nodes are reinstalled.
#[derive(Clone, Debug)]
pub struct Options {
    /// The revision to install instead of each node's own (IMAGE, IMAGE@N, IMAGE:TAG).
    pub image: Option<String>,
    /// How long to wait for the installs' final reports; zero: do not wait.
    pub wait: Duration,
    /// BMCs talked to at once, and the time limit of each.
    pub power: power::Options,
    /// Boot the nodes in UEFI mode (the BMC's boot-device option).
    pub uefi: bool,
}

/// How a node's reinstall ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// The install reported done; the node boots its disk again.
    Installed,
    /// The install reported failure.
    Failed,
    /// No final report within the wait.
    Timeout,
    /// Booted for the install, not waited for (`--wait 0`).
    Started,
    /// Its BMC could not be driven: nothing was done to the node.
    PowerFailed,
}

/// One node's reinstall.
#[derive(Clone, Debug, Serialize)]
pub struct NodeReinstall {
    pub node: String,
    pub state: State,
    /// The revision the install reported (`IMAGE@N SHORTID`).
    pub revision: Option<String>,
    /// The node's next network boot after this: `install` or `local`.
    pub boot: Boot,
    /// What happened, or what went wrong and what to do.
    pub message: String,
    /// The BMC's answer to the boot-device and boot requests.
    pub power: Option<power::PowerResult>,
    /// The phases the install reported, oldest first.
    pub phases: Vec<LastPhase>,
    pub seconds: f64,
}

/// Reinstalls the nodes `names` (all in the node database): switches them to install, boots
/// them through their BMCs, waits for their reports. `on_phase` hears each phase as it comes.
pub fn reinstall(
    repo: &mut Repository,
    names: &[String],
    opts: &Options,
    progress: &dyn Progress,
    on_phase: &dyn Fn(&str, &LastPhase),
) -> Result<Vec<NodeReinstall>> {
    let start = Instant::now();
    // Every node is checked before any is touched.
    let mut before = Vec::with_capacity(names.len());
    for name in names {
        let n = repo.catalog.inventory_get(name)?;
        if let Some(image) = &opts.image {
            repo.check_node_fields(&n.name, None, Some(image))?;
        }
        before.push(n);
    }
    let mark = repo.catalog.install_phase_mark()?;
    let mut nodes = Vec::with_capacity(before.len());
    for n in &before {
        let mut m = n.clone();
        m.image = opts.image.clone().or(m.image);
        m.boot = Boot::Install;
        repo.catalog.update_node(&m)?;
        nodes.push(pxe::netboot(&mut repo.catalog, &m.name, Boot::Install)?.0);
    }
    let booted = boot_all(&nodes, opts, progress);
    let mut out = Vec::with_capacity(nodes.len());
    for ((n, old), r) in nodes.iter().zip(&before).zip(booted) {
        let mut res = NodeReinstall {
            node: n.name.clone(),
            state: State::Started,
            revision: None,
            boot: Boot::Install,
            message: "booted to install".into(),
            power: None,
            phases: Vec::new(),
            seconds: 0.0,
        };
        if r.status != Outcome::Ok {
            // Put back as it was: a later boot must not reinstall it by surprise.
            repo.catalog.update_node(old)?;
            pxe::netboot(&mut repo.catalog, &old.name, old.boot)?;
            res.state = State::PowerFailed;
            res.boot = old.boot;
            res.message = format!("{} (the node was left as it was)", r.message);
        }
        res.power = Some(r);
        out.push(res);
    }
    if !opts.wait.is_zero() {
        wait(repo, &mut out, mark, start + opts.wait, on_phase)?;
    }
    for r in &mut out {
        r.seconds = start.elapsed().as_secs_f64();
    }
    Ok(out)
}

/// Tells each node's BMC to boot from the network once, then boots the node; per node, the
/// first failure or the boot's result.
fn boot_all(
    nodes: &[NodeEntry],
    opts: &Options,
    progress: &dyn Progress,
) -> Vec<power::PowerResult> {
    progress.phase("BMCs", Some(nodes.len() as u64), false);
    let results = super::exec::fan_out(nodes, opts.power.fanout, progress, |n| {
        let pxe = Action::Bootdev {
            target: BootTarget::Pxe,
            persistent: false,
            uefi: opts.uefi,
        };
        let first = power::apply(n, pxe, opts.power.timeout);
        if first.status != Outcome::Ok {
            return first;
        }
        let mut r = power::apply(n, Action::Boot, opts.power.timeout);
        r.message = format!("{}; {}", first.message, r.message);
        r.seconds += first.seconds;
        r
    });
    progress.finish();
    results
}

/// Polls the catalog until every started node reported its final phase or `deadline` passed.
fn wait(
    repo: &mut Repository,
    out: &mut [NodeReinstall],
    mark: i64,
    deadline: Instant,
    on_phase: &dyn Fn(&str, &LastPhase),
) -> Result<()> {
    loop {
        let mut pending = 0;
        for r in out.iter_mut().filter(|r| r.state == State::Started) {
            let phases = repo.catalog.install_phases_after(&r.node, mark)?;
            for p in phases.iter().skip(r.phases.len()) {
                on_phase(&r.node, p);
            }
            r.phases = phases;
            if let Some(last) = r.phases.last().filter(|p| p.phase.is_final()).cloned() {
                r.revision = r.phases.iter().rev().find_map(|p| p.revision.clone());
                finish(repo, r, last.phase, &last.detail)?;
            } else {
                pending += 1;
            }
        }
        if pending == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    for r in out.iter_mut().filter(|r| r.state == State::Started) {
        r.state = State::Timeout;
        r.message = format!(
            "no final install report in time ({}): it stays on install (`aurum pxe netboot {} --local` cancels); watch it with `aurum node show {}`",
            r.phases
                .last()
                .map(|p| format!("last phase {}", p.phase))
                .unwrap_or_else(|| "no phase reported: did it boot from the network?".into()),
            r.node,
            r.node
        );
    }
    Ok(())
}

/// Records a node's final phase: done switches it (back) to local boot.
fn finish(
    repo: &mut Repository,
    r: &mut NodeReinstall,
    phase: InstallPhase,
    detail: &str,
) -> Result<()> {
    if phase == InstallPhase::Done {
        pxe::netboot(&mut repo.catalog, &r.node, Boot::Local)?;
        r.state = State::Installed;
        r.boot = Boot::Local;
        r.message = match &r.revision {
            Some(rev) => format!("installed {rev}; it boots its local disk from now on"),
            None => "installed; it boots its local disk from now on".into(),
        };
    } else {
        r.state = State::Failed;
        r.message = format!(
            "the install failed: {}; it stays on install (`aurum node show {}` has its phases)",
            detail.lines().last().unwrap_or(""),
            r.node
        );
    }
    Ok(())
}
