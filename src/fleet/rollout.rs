//! Rollouts: a revision onto a node set in waves, each gated by the nodes' health checks.
//!
//! The nodes are cut into waves: an optional canary (the first N nodes), then waves whose
//! sizes are cumulative shares of the set (`10%,50%,100%`) or counts. In a wave, at most
//! `max_unavailable` nodes are worked on at once; each node is updated over ssh
//! (`aurum updateclient` from the server), then its health checks run (`aurum health`), and an
//! unhealthy node is rolled back on the spot. A node that cannot be reached or whose update
//! fails counts as failed too. With the plan's `stage`, every node of a wave first stages the
//! revision (`updateclient --stage`, the node keeps running), and only once the whole wave is
//! staged does each activate it (`updateclient --activate`): a node is down for its activation
//! only; a node whose staging fails counts as failed and is left as it was. With the plan's `slurm`,
//! each staged node is drained in Slurm, waited for until no job runs on it, activated (and
//! rebooted), checked with `aurum health --slurm` and resumed; a node failing any of it stays
//! drained with aurum's reason, and nothing is rolled back ([`super::slurm`]). When the failures exceed `max_failed`, the rollout stops and the
//! wave's healthy nodes are rolled back as well; when the last wave passes, the image's
//! `last-known-good` tag moves to the revision.
//!
//! Diskless nodes (`rootfs = memory`) of any wave are updated by a reboot into the revision
//! instead, and fall back by a reboot into their last-known-good one ([`super::diskless`]); a
//! wave may mix them with disk nodes.
//!
//! Every transition is written to the catalog as it happens ([`crate::catalog::rollouts`]): a
//! driver that dies (the master restarted) leaves the rollout `running`, and `rollout resume`
//! drives it on, redoing the nodes that were in flight (an update to the revision a node already
//! runs changes nothing). `pause` and `abort` are rows written by another command; the driver
//! reads them between nodes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use std::collections::HashMap;

use super::diskless::{self, MemoryNode};
use super::exec::{self, Job, NodeResult, Options, Status};
use super::nodeset::Target;
use crate::catalog::rollouts::{Rollout, RolloutNode};
use crate::catalog::Catalog;
use crate::error::{invalid, Result};
use crate::format::rollout::{NodeStep, Plan, RolloutState, Threshold};
use crate::progress::Progress;
use crate::repo::Repository;

/// The tag a passed rollout moves.
pub const LAST_KNOWN_GOOD: &str = "last-known-good";

/// How big the waves after the canary are: each a cumulative share of the nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaveSize {
    Percent(u32),
    Count(usize),
}

/// Reads `--waves`: `10%,50%,100%` or `2,10,all`.
pub fn parse_waves(text: &str) -> Result<Vec<WaveSize>> {
    text.split(',')
        .map(|w| {
            let w = w.trim();
            let bad = || {
                invalid(format!(
                    "`{w}` in --waves is not a share (10%) or a count of nodes (4); write e.g. 10%,50%,100%"
                ))
            };
            if w == "all" {
                Ok(WaveSize::Percent(100))
            } else if let Some(p) = w.strip_suffix('%') {
                let p: u32 = p.parse().map_err(|_| bad())?;
                if p == 0 || p > 100 {
                    return Err(bad());
                }
                Ok(WaveSize::Percent(p))
            } else {
                let n: usize = w.parse().map_err(|_| bad())?;
                if n == 0 {
                    return Err(bad());
                }
                Ok(WaveSize::Count(n))
            }
        })
        .collect()
}

/// Reads `--max-failed`: a count (`2`) or a share (`10%`).
pub fn parse_threshold(text: &str) -> Result<Threshold> {
    let bad = || {
        invalid(format!(
            "--max-failed `{text}` is not a count (2) or a share (10%)"
        ))
    };
    match text.strip_suffix('%') {
        Some(p) => Ok(Threshold::Percent(p.parse().map_err(|_| bad())?)),
        None => Ok(Threshold::Count(text.parse().map_err(|_| bad())?)),
    }
}

/// The wave of each of `n` nodes: the first `canary` in wave 0, then the waves `sizes` say
/// (cumulative), the last always reaching every node. Returns the wave per node and the number
/// of waves.
pub fn assign_waves(n: usize, canary: usize, sizes: &[WaveSize]) -> (Vec<usize>, usize) {
    let mut waves = Vec::with_capacity(n);
    let canary = canary.min(n);
    waves.extend(std::iter::repeat_n(0, canary));
    let first = usize::from(canary > 0);
    let mut wave = first;
    for size in sizes {
        let upto = match *size {
            WaveSize::Percent(p) => (n * p as usize).div_ceil(100),
            WaveSize::Count(c) => canary + c,
        }
        .min(n);
        if upto > waves.len() {
            waves.resize(upto, wave);
            wave += 1;
        }
    }
    if waves.len() < n {
        waves.resize(n, wave);
        wave += 1;
    }
    (waves, wave.max(first))
}

/// What a command run through ssh on one node says, and how it ended.
fn on_node(t: &Target, plan: &Plan, words: &[&str], timeout: u64) -> NodeResult {
    let mut cmd = vec![plan.aurum.as_str(), "--no-progress", "--quiet"];
    cmd.extend_from_slice(words);
    on_node_raw(t, plan, &shell_words::join(&cmd), timeout)
}

/// Why a node's command failed, in a few words.
pub(super) fn why(r: &NodeResult) -> String {
    let last = r
        .stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .trim_start_matches("aurum: error: ");
    match r.status {
        Status::Unreachable => format!("unreachable ({last})"),
        Status::Timeout => r.problem(),
        _ if last.is_empty() => r.problem(),
        _ => last.to_string(),
    }
}

/// The revision a node runs (`image@N`, or its id), from `aurum node-status --json`; `None`
/// when aurum never updated that root; the error says why the node could not be asked.
fn node_revision(t: &Target, plan: &Plan) -> std::result::Result<Option<String>, String> {
    let r = on_node(
        t,
        plan,
        &["node-status", "--root", &plan.node_root, "--json"],
        plan.connect_timeout + 60,
    );
    if r.status == Status::Unreachable || r.status == Status::Timeout {
        return Err(why(&r));
    }
    if r.status != Status::Ok {
        // Not updated by aurum yet (node-status says so and exits non-zero).
        return Ok(None);
    }
    let v: serde_json::Value =
        serde_json::from_str(&r.stdout).map_err(|e| format!("node-status said no JSON: {e}"))?;
    let current = &v["state"]["current"];
    Ok(
        match (current["image"].as_str(), current["number"].as_u64()) {
            (Some(image), Some(n)) => Some(format!("{image}@{n}")),
            _ => current["id"].as_str().map(str::to_string),
        },
    )
}

/// The names of the required checks that failed, from `aurum health --json`.
fn failed_checks(report: &str) -> String {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(report) else {
        return "no health report".to_string();
    };
    let names: Vec<String> = v["health"]["checks"]
        .as_array()
        .map(|checks| {
            checks
                .iter()
                .filter(|c| c["required"] == true && c["status"] != "pass")
                .map(|c| c["name"].as_str().unwrap_or("?").to_string())
                .collect()
        })
        .unwrap_or_default();
    names.join(", ")
}

/// One node through its update and health gate, writing each step to the catalog. `failed`
/// is called the moment the node is known to have failed (before any rollback, which may take
/// long), so the threshold stops further nodes at once.
fn drive_node(
    r: &Rollout,
    t: &Target,
    cat: &Mutex<&mut Catalog>,
    failed: &(dyn Fn() + Sync),
) -> Result<NodeStep> {
    let plan = &r.plan;
    let set =
        |step, previous: Option<&str>, detail: &str| set_step(r, t, cat, step, previous, detail);
    let target = format!("{}@{}", r.image, r.number);
    // What it runs now is what a rollback must return it to, recorded before anything moves.
    let previous = match node_revision(t, plan) {
        Ok(p) => p,
        Err(why) => {
            failed();
            set(NodeStep::Failed, None, &format!("unreachable: {why}"))?;
            return Ok(NodeStep::Failed);
        }
    };
    let words: &[&str] = match plan.stage {
        true => &["--activate"],
        false => &["--image", &target],
    };
    set(
        NodeStep::Updating,
        previous.as_deref(),
        &format!("{}{target}", if plan.stage { "activating " } else { "" }),
    )?;
    let update = on_node(
        t,
        plan,
        &[
            &["updateclient", "--server", &plan.server][..],
            words,
            &["--root", &plan.node_root, "--json"],
        ]
        .concat(),
        plan.update_timeout,
    );
    if update.status != Status::Ok {
        failed();
        // An update cut short by its time limit (or a lost connection) may still finish on
        // the node: put it back if it did.
        let back = restore(t, plan, &target, previous.as_deref());
        let detail = format!("update failed: {}; {back}", why(&update));
        set(NodeStep::Failed, None, &detail)?;
        return Ok(NodeStep::Failed);
    }
    set(NodeStep::Checking, None, "health checks")?;
    let health = health_on_node(t, plan, &[]);
    if health.status == Status::Ok {
        set(NodeStep::Done, None, "healthy")?;
        return Ok(NodeStep::Done);
    }
    failed();
    let why_failed = match (health.status, health.exit) {
        (Status::Failed, Some(1)) => format!("unhealthy ({})", failed_checks(&health.stdout)),
        _ => format!("health checks did not run: {}", why(&health)),
    };
    let back = restore(t, plan, &target, previous.as_deref());
    set(NodeStep::Failed, None, &format!("{why_failed}; {back}"))?;
    Ok(NodeStep::Failed)
}

/// Writes node `t`'s step in rollout `r` to the catalog.
fn set_step(
    r: &Rollout,
    t: &Target,
    cat: &Mutex<&mut Catalog>,
    step: NodeStep,
    previous: Option<&str>,
    detail: &str,
) -> Result<()> {
    cat.lock()
        .unwrap_or_else(|e| e.into_inner())
        .set_rollout_node(r.id, &t.name, step, previous, detail)
}

/// `aurum health` on `t` (with `extra` options), reporting to the plan's server.
fn health_on_node(t: &Target, plan: &Plan, extra: &[&str]) -> NodeResult {
    let timeout = plan.health_timeout.to_string();
    let words = [
        &["health"][..],
        extra,
        &[
            "--root",
            &plan.node_root,
            "--timeout",
            &timeout,
            "--server",
            &plan.server,
            "--json",
        ],
    ]
    .concat();
    on_node(t, plan, &words, plan.update_timeout)
}

/// Runs `script` itself (not aurum) on `t` over ssh.
pub(super) fn on_node_raw(t: &Target, plan: &Plan, script: &str, timeout: u64) -> NodeResult {
    let opts = Options {
        ssh: plan.ssh.clone(),
        fanout: 1,
        timeout: Some(Duration::from_secs(timeout.max(1))),
        connect_timeout: plan.connect_timeout,
        relays: Vec::new(),
        relay_ssh: String::new(),
        relay_aurum: String::new(),
    };
    let job = Job::Command(script.to_string());
    match exec::run(
        std::slice::from_ref(t),
        &job,
        &opts,
        &crate::progress::Quiet,
    ) {
        Ok(mut r) if !r.is_empty() => r.swap_remove(0),
        Ok(_) => NodeResult::failed(t, "no result"),
        Err(e) => NodeResult::failed(t, &e.to_string()),
    }
}

/// Frees the stage of a node that will not be activated now (a boot-time
/// `updateclient --activate --if-staged` would otherwise activate it at its next reboot, outside
/// any rollout); says how that went, as the end of a detail.
fn free_stage(t: &Target, plan: &Plan) -> String {
    let out = on_node(
        t,
        plan,
        &["updateclient", "--unstage", "--root", &plan.node_root],
        plan.update_timeout,
    );
    match out.status {
        Status::Ok => "; stage freed".to_string(),
        _ => format!("; unstage failed: {}", why(&out)),
    }
}

/// How often a `--slurm` rollout asks Slurm about a node it waits for.
const SLURM_POLL: Duration = Duration::from_millis(500);

/// One node of a `--slurm` rollout: drained in Slurm, waited for until no job runs on it,
/// its staged revision activated (and the node rebooted, with a reboot command), its health
/// checked with `aurum health --slurm`, and resumed. A node that fails any step after its
/// drain stays drained with aurum's reason and is not rolled back; a pause or abort asked
/// while its jobs run undoes the drain and leaves it pending.
fn drive_slurm_node(
    r: &Rollout,
    t: &Target,
    cat: &Mutex<&mut Catalog>,
    failed: &(dyn Fn() + Sync),
    catalog_path: &std::path::Path,
) -> Result<NodeStep> {
    use super::slurm;
    let plan = &r.plan;
    let set =
        |step, previous: Option<&str>, detail: &str| set_step(r, t, cat, step, previous, detail);
    let target = format!("{}@{}", r.image, r.number);
    let reason = format!("{} rollout {}: {target}", slurm::REASON_PREFIX, r.id);
    let give_up = |why: String| -> Result<NodeStep> {
        failed();
        set(NodeStep::Failed, None, &why)?;
        Ok(NodeStep::Failed)
    };
    let previous = match node_revision(t, plan) {
        Ok(p) => p,
        Err(why) => return give_up(format!("unreachable: {why}; not drained")),
    };
    let before = match slurm::node(&t.name) {
        Ok(st) => st,
        Err(e) => return give_up(format!("not drained: {e}")),
    };
    // A node drained by someone else (an administrator's reason) is updated but stays
    // drained: putting it back in service is not the rollout's to decide.
    let theirs = before.drained() && !before.drained_by_aurum();
    if !theirs {
        if let Err(e) = slurm::drain(&t.name, &reason) {
            return give_up(format!("not drained: {e}"));
        }
    }
    // After the drain, a failure leaves the node drained, with what happened as its reason.
    let leave_drained = |why: String| -> Result<NodeStep> {
        let said = if theirs {
            "left drained (drained before the rollout)".to_string()
        } else {
            let mut text = format!("{reason}: {why}");
            if text.len() > 200 {
                let mut cut = 200;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
            }
            match slurm::drain(&t.name, &text) {
                Ok(()) => "left drained in Slurm, not rolled back".to_string(),
                Err(e) => format!("could not set its drain reason: {e}"),
            }
        };
        give_up(format!("{why}; {said}"))
    };
    set(
        NodeStep::Draining,
        previous.as_deref(),
        &format!("drained in Slurm ({}); waiting for its jobs", before.state),
    )?;
    let started = std::time::Instant::now();
    let mut errors = 0;
    loop {
        let st = match slurm::node(&t.name) {
            Ok(st) => st,
            Err(e) => {
                errors += 1;
                if errors > 20 {
                    return leave_drained(format!("Slurm stopped answering: {e}"));
                }
                std::thread::sleep(SLURM_POLL);
                continue;
            }
        };
        if !st.drained() {
            return give_up(format!(
                "resumed in Slurm by someone else while its jobs ended ({}); not updated{}",
                st.state,
                free_stage(t, plan)
            ));
        }
        if st.no_job() && slurm::jobs_on(&t.name).is_ok_and(|j| j.is_empty()) {
            break;
        }
        if request(catalog_path, r.id)?.is_some() {
            if !theirs {
                slurm::resume(&t.name)?;
            }
            let freed = free_stage(t, plan);
            set(
                NodeStep::Pending,
                None,
                &format!("drain undone: the rollout was asked to stop while its jobs ran{freed}"),
            )?;
            return Ok(NodeStep::Pending);
        }
        if plan.drain_timeout > 0 && started.elapsed().as_secs() >= plan.drain_timeout {
            if !theirs {
                slurm::resume(&t.name)?;
            }
            return give_up(format!(
                "jobs still ran after --drain-timeout {} s; resumed in Slurm, not updated{}",
                plan.drain_timeout,
                free_stage(t, plan)
            ));
        }
        std::thread::sleep(SLURM_POLL);
    }
    set(
        NodeStep::Updating,
        None,
        &format!("no job runs: activating {target}"),
    )?;
    let update = on_node(
        t,
        plan,
        &[
            "updateclient",
            "--server",
            &plan.server,
            "--activate",
            "--if-staged",
            "--root",
            &plan.node_root,
            "--json",
        ],
        plan.update_timeout,
    );
    if update.status != Status::Ok {
        return leave_drained(format!("activation failed: {}", why(&update)));
    }
    match node_revision(t, plan) {
        Ok(Some(now)) if now == target => {}
        Ok(now) => {
            return leave_drained(format!(
                "runs {} after its activation, not {target} (was it staged?)",
                now.as_deref().unwrap_or("no revision of aurum's")
            ))
        }
        Err(why) => return leave_drained(format!("unreachable after its activation: {why}")),
    }
    if let Some(cmd) = &plan.reboot_command {
        set(NodeStep::Updating, None, &format!("rebooting: {cmd}"))?;
        // The connection may drop as the node goes down: what the command says is not
        // the answer; slurmd starting again is.
        let _ = on_node_raw(t, plan, cmd, plan.connect_timeout + 30);
        let since = std::time::Instant::now();
        loop {
            if let Ok(st) = slurm::node(&t.name) {
                if st.slurmd_start != before.slurmd_start && st.responding() {
                    break;
                }
            }
            if since.elapsed().as_secs() >= plan.boot_timeout.max(1) {
                return leave_drained(format!(
                    "its slurmd did not start again within {} s of its reboot",
                    plan.boot_timeout
                ));
            }
            std::thread::sleep(SLURM_POLL);
        }
    }
    set(NodeStep::Checking, None, "health checks")?;
    let health = health_on_node(t, plan, &["--slurm", "--slurm-node", &t.name]);
    if health.status != Status::Ok {
        let v: serde_json::Value = serde_json::from_str(&health.stdout).unwrap_or_default();
        let why_failed = match (health.status, health.exit) {
            (Status::Failed, Some(1)) if v["health"]["healthy"] == false => {
                format!("unhealthy ({})", failed_checks(&health.stdout))
            }
            (Status::Failed, Some(1)) => format!(
                "not back in Slurm: {}",
                v["slurm"]["action"].as_str().unwrap_or("?")
            ),
            _ => format!("health checks did not run: {}", why(&health)),
        };
        return leave_drained(why_failed);
    }
    if theirs {
        set(
            NodeStep::Done,
            None,
            &format!("healthy; left drained ({})", before.reason),
        )?;
        return Ok(NodeStep::Done);
    }
    if let Err(e) = slurm::resume(&t.name) {
        return leave_drained(format!("healthy, but not resumed: {e}"));
    }
    set(NodeStep::Done, None, "healthy; resumed in Slurm")?;
    Ok(NodeStep::Done)
}

/// Puts `t` back on `previous` if it runs `target` (and did not before the rollout); says
/// what it did. A node that never reached the target is left as it is.
fn restore(t: &Target, plan: &Plan, target: &str, previous: Option<&str>) -> String {
    if previous == Some(target) {
        return format!("it ran {target} before the rollout: left on it");
    }
    match node_revision(t, plan) {
        Err(why) => format!("not rolled back: {why}"),
        Ok(Some(now)) if now == target => {
            // Right after its update, the node's own previous revision is `previous`: the
            // rollback by rename, from its undo area.
            let r = on_node(
                t,
                plan,
                &[
                    "rollback",
                    "--server",
                    &plan.server,
                    "--root",
                    &plan.node_root,
                    "--json",
                ],
                plan.update_timeout,
            );
            if r.status == Status::Ok {
                format!(
                    "rolled back to {}",
                    previous.unwrap_or("its previous revision")
                )
            } else {
                format!("rollback failed: {}", why(&r))
            }
        }
        Ok(now) => format!("left on {}", now.as_deref().unwrap_or("what it ran")),
    }
}

/// Stages the revision on every node of `todo` at once (staging does not take a node down);
/// a node whose staging fails is marked failed, counted in `failures` (setting `halt` past
/// `allowed`) and left out. Returns the nodes staged, to activate.
fn stage_wave(
    r: &Rollout,
    todo: Vec<RolloutNode>,
    cat: &Mutex<&mut Catalog>,
    failures: &std::sync::atomic::AtomicUsize,
    allowed: usize,
    halt: &AtomicBool,
) -> Result<Vec<RolloutNode>> {
    let plan = &r.plan;
    let target = format!("{}@{}", r.image, r.number);
    let set = |node: &str, step, detail: &str| -> Result<()> {
        cat.lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_rollout_node(r.id, node, step, None, detail)
    };
    let staged = Mutex::new(Vec::new());
    let fanout = todo.len().max(1);
    let results: Vec<Result<()>> = exec::fan_out(&todo, fanout, &crate::progress::Quiet, |n| {
        let t = Target {
            name: n.node.clone(),
            host: n.host.clone(),
        };
        set(&n.node, NodeStep::Pending, &format!("staging {target}"))?;
        let words = [
            "updateclient",
            "--stage",
            "--server",
            &plan.server,
            "--image",
            &target,
            "--root",
            &plan.node_root,
            "--json",
        ];
        let out = on_node(&t, plan, &words, plan.update_timeout);
        if out.status == Status::Ok {
            set(&n.node, NodeStep::Pending, &format!("staged {target}"))?;
            staged
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(n.node.clone());
        } else {
            set(
                &n.node,
                NodeStep::Failed,
                &format!("staging failed: {}", why(&out)),
            )?;
            if failures.fetch_add(1, Ordering::Relaxed) + 1 > allowed {
                halt.store(true, Ordering::Relaxed);
            }
        }
        Ok(())
    });
    results.into_iter().collect::<Result<Vec<()>>>()?;
    let staged = staged.into_inner().unwrap_or_else(|e| e.into_inner());
    let staged: Vec<RolloutNode> = todo
        .into_iter()
        .filter(|n| staged.contains(&n.node))
        .collect();
    if !halt.load(Ordering::Relaxed) {
        return Ok(staged);
    }
    // Too many failed to stage: the wave stops before any node activates; the others' stages
    // are freed (the nodes were never changed).
    let freed: Vec<Result<()>> = exec::fan_out(&staged, fanout, &crate::progress::Quiet, |n| {
        let t = Target {
            name: n.node.clone(),
            host: n.host.clone(),
        };
        let words = ["updateclient", "--unstage", "--root", &plan.node_root];
        let out = on_node(&t, plan, &words, plan.update_timeout);
        let detail = match out.status {
            Status::Ok => "staged, not activated: the wave stopped; stage freed".to_string(),
            _ => format!(
                "staged, not activated: the wave stopped; unstage failed: {}",
                why(&out)
            ),
        };
        set(&n.node, NodeStep::Pending, &detail)
    });
    freed.into_iter().collect::<Result<Vec<()>>>()?;
    Ok(Vec::new())
}

/// The pause or abort another command asked of rollout `id`, if any.
fn request(catalog_path: &std::path::Path, id: i64) -> Result<Option<RolloutState>> {
    Ok(Catalog::open(catalog_path)?.rollout(id)?.request)
}

/// The lock a rollout's driver holds while it runs (`tmp/rollout-ID.lock`), so that two
/// drivers never work the same rollout.
fn driver_lock(repo: &Repository, id: i64) -> Result<std::fs::File> {
    try_driver_lock(repo, id)?.ok_or_else(|| {
        invalid(format!(
            "rollout {id} is being driven by another aurum; `aurum rollout status {id}` shows it"
        ))
    })
}

/// The driver's lock, or `None` when a driver holds it.
fn try_driver_lock(repo: &Repository, id: i64) -> Result<Option<std::fs::File>> {
    use crate::error::IoContext;
    let path = repo.root.join(format!("tmp/rollout-{id}.lock"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .at(&path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(e).at(&path),
    }
}

/// Pauses or aborts rollout `id`. The request is written beside the rollout's state; with a
/// driver running, it carries it out before its next node and after the nodes in flight; with
/// none, it is carried out here (an abort rolls the current wave back). Says what was done.
pub fn steer(
    repo: &mut Repository,
    id: i64,
    to: RolloutState,
    say: &(dyn Fn(&str) + Sync),
) -> Result<String> {
    repo.catalog.set_rollout_request(id, Some(to))?;
    match try_driver_lock(repo, id)? {
        None => Ok(format!("{to} asked; its driver stops before its next node")),
        Some(_lock) => {
            let r = repo.catalog.rollout(id)?;
            finish_stop(repo, &r, r.wave, to, say)?;
            Ok(to.to_string())
        }
    }
}

/// Drives rollout `id` from where it stands to its end, or until paused. `say` receives a
/// line per transition.
pub fn drive(
    repo: &mut Repository,
    id: i64,
    progress: &dyn Progress,
    say: &(dyn Fn(&str) + Sync),
) -> Result<RolloutState> {
    let _driver = driver_lock(repo, id)?;
    let catalog_path = repo.root.join("aurum.db");
    let mut r = repo.catalog.rollout(id)?;
    if r.state.is_final() {
        return Ok(r.state);
    }
    // An abort asked while no driver ran (or whose rollback was cut short) is finished first.
    if r.request == Some(RolloutState::Aborted) {
        return finish_stop(repo, &r, r.wave, RolloutState::Aborted, say);
    }
    if r.state == RolloutState::Paused || r.request == Some(RolloutState::Paused) {
        repo.catalog.set_rollout_request(id, None)?;
        repo.catalog
            .set_rollout(id, RolloutState::Running, r.wave, "resumed")?;
        say(&format!("rollout {id}: resumed at wave {}", r.wave));
    }
    let nodes = repo.catalog.rollout_nodes(id)?;
    let total = nodes.len();
    let allowed = r.plan.max_failed.allowed(total);
    progress.phase("nodes", Some(total as u64), false);
    progress.advance(nodes.iter().filter(|n| settled(n.state)).count() as u64);
    for wave in r.wave..r.plan.waves {
        r = repo.catalog.rollout(id)?;
        if let Some(stop) = r.request {
            return finish_stop(repo, &r, wave, stop, say);
        }
        let failed_before = repo
            .catalog
            .rollout_nodes(id)?
            .iter()
            .filter(|n| matches!(n.state, NodeStep::Failed | NodeStep::FellBack))
            .count();
        // A rollout that was past its threshold when its driver died goes no further.
        if failed_before > allowed {
            return fail(repo, &r, wave, failed_before, allowed, say);
        }
        repo.catalog
            .set_rollout(id, RolloutState::Running, wave, &format!("wave {wave}"))?;
        say(&format!("rollout {id}: wave {wave}"));
        let todo: Vec<RolloutNode> = repo
            .catalog
            .rollout_nodes(id)?
            .into_iter()
            .filter(|n| n.wave == wave && !settled(n.state))
            .collect();
        let memory = memory_nodes(repo, &todo)?;
        let halt = AtomicBool::new(false);
        let failures = std::sync::atomic::AtomicUsize::new(failed_before);
        let failed_now = || {
            if failures.fetch_add(1, Ordering::Relaxed) + 1 > allowed {
                halt.store(true, Ordering::Relaxed);
            }
        };
        {
            let cat = Mutex::new(&mut repo.catalog);
            // Diskless nodes have nothing to stage: their reboot fetches the revision.
            let (diskless, todo): (Vec<RolloutNode>, Vec<RolloutNode>) =
                todo.into_iter().partition(|n| memory.contains_key(&n.node));
            let mut todo = match r.plan.stage {
                true => stage_wave(&r, todo, &cat, &failures, allowed, &halt)?,
                false => todo,
            };
            todo.extend(diskless);
            let fanout = if r.plan.max_unavailable == 0 {
                todo.len()
            } else {
                r.plan.max_unavailable
            };
            let results: Vec<Result<()>> =
                exec::fan_out(&todo, fanout, &crate::progress::Quiet, |n| {
                    if halt.load(Ordering::Relaxed) || request(&catalog_path, id)?.is_some() {
                        return Ok(());
                    }
                    let t = Target {
                        name: n.node.clone(),
                        host: n.host.clone(),
                    };
                    let step = match (memory.get(&n.node), r.plan.slurm) {
                        (Some(m), _) => diskless::drive_node(&r, &t, m, &cat, &failed_now)?,
                        (None, true) => drive_slurm_node(&r, &t, &cat, &failed_now, &catalog_path)?,
                        (None, false) => drive_node(&r, &t, &cat, &failed_now)?,
                    };
                    progress.advance(1);
                    say(&format!("rollout {id}: {}: {step}", n.node));
                    Ok(())
                });
            results.into_iter().collect::<Result<Vec<()>>>()?;
        }
        let failed = failures.load(Ordering::Relaxed);
        if failed > allowed {
            return fail(repo, &r, wave, failed, allowed, say);
        }
        // A pause or abort asked while the wave's nodes were in flight.
        if let Some(stop) = request(&catalog_path, id)? {
            return finish_stop(repo, &r, wave, stop, say);
        }
        if wave + 1 < r.plan.waves && r.plan.pause_between > 0 {
            say(&format!(
                "rollout {id}: wave {wave} passed; next in {} s",
                r.plan.pause_between
            ));
            for _ in 0..r.plan.pause_between {
                if request(&catalog_path, id)?.is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
    progress.finish();
    r = repo.catalog.rollout(id)?;
    if let Some(stop) = r.request {
        let last = r.plan.waves.saturating_sub(1);
        return finish_stop(repo, &r, last, stop, say);
    }
    let target = format!("{}@{}", r.image, r.number);
    repo.tag(&target, LAST_KNOWN_GOOD)?;
    let reason = format!(
        "every wave passed; {}:{LAST_KNOWN_GOOD} is {target}",
        r.image
    );
    repo.catalog.set_rollout(
        id,
        RolloutState::Done,
        r.plan.waves.saturating_sub(1),
        &reason,
    )?;
    say(&format!("rollout {id}: done: {reason}"));
    Ok(RolloutState::Done)
}

/// Whether a node's part is over (nothing more to do for it in this rollout).
fn settled(step: NodeStep) -> bool {
    matches!(
        step,
        NodeStep::Done | NodeStep::Failed | NodeStep::RolledBack | NodeStep::FellBack
    )
}

/// The diskless nodes among `nodes`, by name, with what each booted before the rollout.
fn memory_nodes(repo: &Repository, nodes: &[RolloutNode]) -> Result<HashMap<String, MemoryNode>> {
    let mut found = HashMap::new();
    for n in nodes {
        if let Some(m) = MemoryNode::of(repo, &n.node, n.previous.as_deref())? {
            found.insert(n.node.clone(), m);
        }
    }
    Ok(found)
}

/// The threshold is passed at `wave`: the wave goes back, the rollout fails.
fn fail(
    repo: &mut Repository,
    r: &Rollout,
    wave: usize,
    failed: usize,
    allowed: usize,
    say: &(dyn Fn(&str) + Sync),
) -> Result<RolloutState> {
    let reason = if r.plan.slurm {
        format!(
            "{failed} nodes failed, more than --max-failed allows ({allowed}); stopped at wave {wave} (--slurm: nothing rolled back, failed nodes left drained)"
        )
    } else {
        roll_back(repo, r, Some(wave), say)?;
        format!(
            "{failed} nodes failed, more than --max-failed allows ({allowed}); wave {wave} rolled back"
        )
    };
    repo.catalog
        .set_rollout(r.id, RolloutState::Failed, wave, &reason)?;
    say(&format!("rollout {}: failed: {reason}", r.id));
    Ok(RolloutState::Failed)
}

/// A pause or an abort asked for by another command, carried out at `wave`. The rollout
/// becomes `aborted` only once its wave is back, so an abort cut short is finished by `resume`
/// or another `abort`.
fn finish_stop(
    repo: &mut Repository,
    r: &Rollout,
    wave: usize,
    stop: RolloutState,
    say: &(dyn Fn(&str) + Sync),
) -> Result<RolloutState> {
    if stop == RolloutState::Aborted && r.plan.slurm {
        // Under Slurm the nodes done are back in service, running jobs: they stay.
        repo.catalog.set_rollout(
            r.id,
            RolloutState::Aborted,
            wave,
            "aborted; --slurm: the nodes done stay on the revision, in service",
        )?;
    } else if stop == RolloutState::Aborted {
        // Every node the rollout moved goes back: the cluster as it was before it.
        roll_back(repo, r, None, say)?;
        repo.catalog.set_rollout(
            r.id,
            RolloutState::Aborted,
            wave,
            "aborted; every node it had moved rolled back",
        )?;
    } else {
        repo.catalog.set_rollout(
            r.id,
            RolloutState::Paused,
            wave,
            &format!("paused at wave {wave}"),
        )?;
    }
    repo.catalog.set_rollout_request(r.id, None)?;
    say(&format!("rollout {}: {stop} at wave {wave}", r.id));
    Ok(stop)
}

/// Puts back every node of `wave` (of every wave: `None`) the rollout moved: those done, those
/// in flight when it stopped, and those that failed after their update may have gone through.
fn roll_back(
    repo: &mut Repository,
    r: &Rollout,
    wave: Option<usize>,
    say: &(dyn Fn(&str) + Sync),
) -> Result<()> {
    let touched: Vec<RolloutNode> = repo
        .catalog
        .rollout_nodes(r.id)?
        .into_iter()
        .filter(|n| wave.is_none_or(|w| n.wave == w))
        .filter(|n| {
            !matches!(
                n.state,
                NodeStep::Pending | NodeStep::RolledBack | NodeStep::FellBack
            )
        })
        .collect();
    let memory = memory_nodes(repo, &touched)?;
    let target = format!("{}@{}", r.image, r.number);
    let boot = diskless::Boot {
        name: target.clone(),
        id: r.revision.clone(),
    };
    let cat = Mutex::new(&mut repo.catalog);
    let fanout = touched.len().max(1);
    let results: Vec<Result<()>> = exec::fan_out(&touched, fanout, &crate::progress::Quiet, |n| {
        let t = Target {
            name: n.node.clone(),
            host: n.host.clone(),
        };
        let back = match memory.get(&n.node) {
            // A diskless node that failed was already fallen back (or could not be).
            Some(_) if n.state == NodeStep::Failed => return Ok(()),
            Some(m) => diskless::restore(&cat, &r.plan, &t, m, &boot),
            None => restore(&t, &r.plan, &target, n.previous.as_deref()),
        };
        if n.state == NodeStep::Failed && back.starts_with("left on") {
            // Failed and already put back (or never moved): its own story stands.
            return Ok(());
        }
        say(&format!("rollout {}: {}: {back}", r.id, n.node));
        let step = match n.state {
            NodeStep::Failed => NodeStep::Failed,
            _ if back.starts_with("rolled back") || back.starts_with("left on") => {
                NodeStep::RolledBack
            }
            _ => NodeStep::Failed,
        };
        cat.lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_rollout_node(r.id, &n.node, step, None, &back)
    });
    results.into_iter().collect::<Result<Vec<()>>>()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waves_are_cumulative_and_the_last_reaches_every_node() {
        let waves = parse_waves("10%,50%,100%").unwrap();
        let (w, n) = assign_waves(10, 1, &waves);
        assert_eq!(w, [0, 1, 1, 1, 1, 2, 2, 2, 2, 2]);
        assert_eq!(n, 3);
        let (w, n) = assign_waves(8, 0, &parse_waves("2,4").unwrap());
        assert_eq!(w, [0, 0, 1, 1, 2, 2, 2, 2]);
        assert_eq!(n, 3);
        let (w, n) = assign_waves(3, 5, &parse_waves("100%").unwrap());
        assert_eq!(w, [0, 0, 0]);
        assert_eq!(n, 1);
        assert!(parse_waves("0%").is_err());
        assert!(parse_waves("ten").is_err());
        assert_eq!(parse_threshold("10%").unwrap(), Threshold::Percent(10));
        assert_eq!(parse_threshold("2").unwrap(), Threshold::Count(2));
        assert!(parse_threshold("x").is_err());
    }
}
