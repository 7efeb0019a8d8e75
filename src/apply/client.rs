//! The commands run on a node, end to end: `updateclient`, `rollback` and `mark-good`.
//!
//! [`update::update`] brings a root to a manifest. Around it a node command finds the target
//! (a revision spec, the previous revision, the last-known-good one), fetches its manifest
//! (as a delta against the one the node runs when the server makes deltas), lays the node's
//! overrides over it, runs the update hooks and tells the server how it went. That is all
//! here, so the CLI only fills [`ClientUpdate`] or [`RollbackTo`] and prints the report.

use std::path::PathBuf;
use std::sync::Arc;

use crate::apply::bootcount;
use crate::apply::hooks::{self, HookEnv, Identity, Stage};
use crate::apply::node::{Journal, Node, RevRef};
use crate::apply::overrides::{self, Composing};
use crate::apply::source::{RevisionSource, Target};
use crate::apply::update::{self, Overlay, UpdateOptions, UpdateReport};
use crate::catalog::{NodeAction, NodeReport, Outcome};
use crate::error::{invalid, Error, Result};
use crate::excludes::Excludes;
use crate::format::manifest::Manifest;
use crate::format::Id;
use crate::progress::Progress;

/// This machine's host name, as hooks and reports give it: the kernel's, or when nothing set
/// it at boot (the kernel says `(none)`, or a placeholder `localhost`: a minimal init, a
/// rescue system) the name in /etc/hostname, which `aurum install` writes. The server files
/// reports by this name, so a node whose name is unset would otherwise report as `(none)`,
/// which it refuses.
pub fn hostname() -> String {
    let kernel = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok());
    let file = std::fs::read_to_string("/etc/hostname").ok();
    pick_hostname(kernel.as_deref(), file.as_deref())
}

/// [`hostname`] from the kernel's name and /etc/hostname's text: the first of them that names
/// the machine, else the kernel's as it is, else `unknown`.
fn pick_hostname(kernel: Option<&str>, file: Option<&str>) -> String {
    let unset = |h: &str| h.is_empty() || h == "(none)" || h == "localhost";
    let kernel = kernel.map(str::trim);
    let file = file.and_then(|f| {
        f.lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
    });
    kernel
        .filter(|h| !unset(h))
        .or(file.filter(|h| !unset(h)))
        .or(kernel.filter(|h| !h.is_empty()))
        .unwrap_or("unknown")
        .to_string()
}

/// Called with each hook's name and output once it has run.
pub type HookOutput = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// The update hooks to run around an update.
pub struct ClientHooks {
    /// The hooks directory (`pre-update/`, `post-update/`).
    pub dir: PathBuf,
    /// The node's group, for choosing hooks.
    pub group: Option<String>,
    pub on_output: HookOutput,
}

/// An `updateclient` run.
pub struct ClientUpdate {
    /// The revision: IMAGE, IMAGE@N, IMAGE:TAG or an id.
    pub spec: String,
    /// What the update does; its `overlay` and `before_writes` are filled here.
    pub opts: UpdateOptions,
    /// Override images to start following, and to stop following.
    pub add_override: Vec<String>,
    pub no_override: Vec<String>,
    /// Not run on a dry run.
    pub hooks: Option<ClientHooks>,
    /// Boots the new revision is given on trial before the node falls back by itself (see
    /// [`bootcount`]); 0: no trial. Only where the node boots with GRUB.
    pub boot_tries: u32,
}

/// Brings `node` to the revision `run.spec` names, from `source`, and reports the outcome to
/// the source (not on a dry run).
pub fn updateclient(
    node: &Node,
    source: &dyn RevisionSource,
    mut run: ClientUpdate,
    progress: &dyn Progress,
) -> Result<UpdateReport> {
    let dry_run = run.opts.dry_run;
    let result = (|| -> Result<UpdateReport> {
        let (target, manifest, overlay) = resolve_for_node(
            node,
            source,
            &run.spec,
            &run.add_override,
            &run.no_override,
            Composing::Update,
        )?;
        run.opts.overlay = Some(overlay);
        let hooks = run.hooks.as_ref().filter(|_| !dry_run);
        let env = hook_env(node, hooks, &target, source.describe(), &mut run.opts);
        let trial = match dry_run {
            true => None,
            false => bootcount::prepare(node, run.boot_tries)?,
        };
        let r = update::update(node, &target, &manifest, Some(source), &run.opts, progress)?;
        let begun = match trial {
            Some(p) => bootcount::begin(node, p)?,
            None => None,
        };
        if begun.is_none() && !dry_run {
            bootcount::refresh(node)?;
        }
        if let Some(h) = hooks {
            run_hooks(&h.dir, Stage::PostUpdate, &env, h.on_output.as_ref())?;
        }
        Ok(r)
    })();
    if !dry_run {
        report_to(
            node,
            Some(source),
            NodeAction::Updateclient,
            result.as_ref(),
        );
    }
    result
}

/// The revision `spec` names, and the tree `node` is to hold at it: its manifest (fetched as
/// a delta when it can be) with the overrides the node follows composed over it, the list
/// edited by `add` and `remove` first.
pub(crate) fn resolve_for_node(
    node: &Node,
    source: &dyn RevisionSource,
    spec: &str,
    add: &[String],
    remove: &[String],
    composing: Composing,
) -> Result<(Target, Manifest, Overlay)> {
    let target = source.resolve(spec)?;
    let image = fetch_manifest(node, source, &target.id)?;
    let state = node.state()?;
    let follow = overrides::edit_follow(&state.overrides, add, remove)?;
    let held = overrides::held(&state);
    let (manifest, overlay) = overrides::for_node(source, image, follow, add, &held, composing)?;
    Ok((target, manifest, overlay))
}

/// The environment of the update hooks for an update of `node` to `target`; with `hooks`,
/// the pre-update ones are set to run in `opts.before_writes` (once the plan passed every
/// check). The caller runs the post-update ones with it.
pub(crate) fn hook_env(
    node: &Node,
    hooks: Option<&ClientHooks>,
    target: &Target,
    server: String,
    opts: &mut UpdateOptions,
) -> HookEnv {
    let env = HookEnv {
        who: Identity {
            image: target.image.clone().unwrap_or_default(),
            group: hooks.and_then(|h| h.group.clone()),
            hostname: hostname(),
        },
        root: node.root.clone(),
        revision: target.id.hex(),
        server,
        ..Default::default()
    };
    if let Some(h) = hooks {
        let (dir, env, out) = (h.dir.clone(), env.clone(), h.on_output.clone());
        opts.before_writes = Some(Box::new(move || {
            run_hooks(&dir, Stage::PreUpdate, &env, out.as_ref())
        }));
    }
    env
}

/// Where a rollback goes.
pub enum RollbackTo {
    /// The revision the node ran before its last update, from its own undo area.
    Previous,
    /// The revision the node's `mark-good` recorded.
    LastKnownGood,
    /// Any revision, from the source.
    Spec(String),
}

/// Rolls `node` back (see [`RollbackTo`]) and reports the outcome to the source when there is
/// one. `opts.overlay` is filled here.
pub fn rollback(
    node: &Node,
    source: Option<&dyn RevisionSource>,
    to: RollbackTo,
    mut opts: UpdateOptions,
    progress: &dyn Progress,
) -> Result<UpdateReport> {
    let result = (|| -> Result<UpdateReport> {
        let (target, manifest, overlay) = rollback_target(node, source, to)?;
        opts.overlay = Some(overlay);
        let r = update::update(node, &target, &manifest, source, &opts, progress)?;
        // A rollback ends any trial: the administrator (or the fallback) chose the revision.
        if !opts.dry_run {
            bootcount::cancel(node)?;
            bootcount::refresh(node)?;
        }
        Ok(r)
    })();
    // A dry run changed nothing: there is nothing to tell the server.
    if !opts.dry_run {
        report_to(node, source, NodeAction::Rollback, result.as_ref());
    }
    result
}

/// The revision, manifest and overlay a rollback goes to.
fn rollback_target(
    node: &Node,
    source: Option<&dyn RevisionSource>,
    to: RollbackTo,
) -> Result<(Target, Manifest, Overlay)> {
    match to {
        RollbackTo::Spec(spec) => {
            let s = source.ok_or_else(|| {
                invalid("--to needs --server URL or --repo DIR to find the revision")
            })?;
            let t = s.resolve(&spec)?;
            let image = fetch_manifest(node, s, &t.id)?;
            // Another revision of the image, with the newest of the overrides the node follows.
            let state = node.state()?;
            let held = overrides::held(&state);
            let (m, overlay) =
                overrides::for_node(s, image, state.overrides, &[], &held, Composing::Rollback)?;
            Ok((t, m, overlay))
        }
        RollbackTo::LastKnownGood => {
            let lkg = node.state()?.last_known_good.ok_or_else(|| {
                invalid("no last-known-good revision recorded; `aurum mark-good` records one")
            })?;
            match update::recorded(node, &lkg)? {
                Some(back) => Ok(back),
                // Without overrides the image's manifest is the tree's: the server has it.
                None if lkg.overrides.is_empty() => {
                    let s = source.ok_or_else(|| {
                        invalid("the node no longer holds that manifest; give --server")
                    })?;
                    let id = lkg.id()?;
                    let m = s.manifest(&id)?;
                    let t = Target {
                        image: lkg.image,
                        number: lkg.number,
                        id,
                    };
                    Ok((t, m, Overlay::default()))
                }
                None => Err(update::no_manifest(&lkg)),
            }
        }
        RollbackTo::Previous => update::rollback_target(node),
    }
}

/// A node command a kill interrupted, and what [`recover`] made of it.
#[derive(Debug)]
pub struct Recovered {
    /// The journal the killed run left.
    pub interrupted: Journal,
    /// The revision the root is on now.
    pub now: RevRef,
    /// The killed run had committed (the state already named its target, the tree held
    /// it): only its last steps were left, and were done; nothing was undone.
    pub finished: bool,
}

impl Recovered {
    /// What happened, in one sentence for boot records and messages.
    pub fn describe(&self) -> String {
        let j = &self.interrupted;
        if self.finished {
            return format!(
                "`aurum {}` to {} was interrupted on this root after it had committed (the \
                 state named {}): its last steps are done now, nothing was undone",
                j.action,
                j.to.name(),
                self.now.name()
            );
        }
        match j.action {
            NodeAction::Rollback => format!(
                "`aurum rollback` to {} was interrupted on this root, and is finished now",
                j.to.name()
            ),
            action => format!(
                "`aurum {action}` to {} was interrupted on this root, which was put back to {}",
                j.to.name(),
                self.now.name()
            ),
        }
    }
}

/// The words for a root a kill left between two revisions (`journal.json` names the run).
fn interrupted(node: &Node, j: &Journal) -> String {
    format!(
        "`aurum {}` to {} was interrupted on {}: the root holds part of each revision",
        j.action,
        j.to.name(),
        node.root.display()
    )
}

/// Brings a root a kill left between two revisions (its journal says so) to one before a
/// node command acts on what it holds, as `aurum rollback` run again does: an interrupted
/// rollback is finished, an interrupted update undone (back to the revision it started
/// from), both from the node's own undo areas, `source` only for what they lack. `aurum
/// boot` runs it before the network and with no one at the console: going back is what the
/// node can always do by itself; finishing an update needs the server, its hooks and its
/// trial, and is the administrator's rerun. A trial is left as it is, for the caller to
/// judge. An update killed after its commit saved the state (the root whole at its target)
/// is not undone: only the commit's last steps are done ([`Recovered::finished`]). `None`
/// when nothing was interrupted; an error when the node's first revision was
/// (there is nothing to go back to: the same command again finishes it).
pub fn recover(
    node: &Node,
    source: Option<&dyn RevisionSource>,
    excludes: Excludes,
    progress: &dyn Progress,
) -> Result<Option<Recovered>> {
    let Some(j) = node.journal()? else {
        return Ok(None);
    };
    // Killed after its commit saved the state: the root is at the target, whole; what the
    // commit had left (the journal among it) is done, as a rerun of the command would.
    if let Some(j) = update::finish_committed(node)? {
        let now = node.state()?.current.unwrap_or_else(|| j.to.clone());
        return Ok(Some(Recovered {
            interrupted: j,
            now,
            finished: true,
        }));
    }
    let what = interrupted(node, &j);
    if j.action != NodeAction::Rollback && j.from.is_none() {
        return Err(invalid(format!(
            "{what}, and it was the node's first revision: there is none to go back to; run \
             `aurum {}` again to finish it",
            j.action
        )));
    }
    let (target, manifest, overlay) = update::rollback_target(node)?;
    let opts = UpdateOptions {
        action: NodeAction::Rollback,
        dry_run: false,
        no_delete: false,
        verify_local: false,
        excludes,
        adopt: false,
        overlay: Some(overlay),
        before_writes: None,
        stage: None,
    };
    let result = update::update(node, &target, &manifest, source, &opts, progress);
    report_to(node, source, NodeAction::Rollback, result.as_ref());
    result.map_err(|e| {
        Error::Tool(format!(
            "{what}; bringing it to {} failed: {e}; once that is fixed, run `aurum rollback`",
            target.name()
        ))
    })?;
    bootcount::refresh(node)?;
    let now = node.state()?.current.ok_or_else(|| {
        invalid(format!(
            "{what}; the rollback recorded no revision: run `aurum rollback`"
        ))
    })?;
    Ok(Some(Recovered {
        interrupted: j,
        now,
        finished: false,
    }))
}

/// What `aurum health` and `aurum boot` say of a root a kill left between two revisions when
/// they leave it so (see [`super::bootcount::health_may_recover`]); `None` when nothing was
/// interrupted.
pub fn left_interrupted(node: &Node) -> Result<Option<String>> {
    Ok(node.journal()?.map(|j| {
        format!(
            "{}; it is left so: run `aurum rollback` (it finishes an interrupted rollback and \
             undoes an interrupted update) or the interrupted command again, then reboot",
            interrupted(node, &j)
        )
    }))
}

/// Refuses a command that would act on a root a kill left between two revisions, saying how
/// to bring it to one.
pub fn refuse_interrupted(node: &Node) -> Result<()> {
    match node.journal()? {
        None => Ok(()),
        Some(j) => Err(invalid(format!(
            "{}; run `aurum rollback` (it finishes an interrupted rollback and undoes an \
             interrupted update) or the interrupted command again, then this one",
            interrupted(node, &j)
        ))),
    }
}

/// Records the revision `node` runs as its last-known-good, and returns it. A revision on
/// trial is blessed by it: the trial ends. Refused on a root a kill left between two
/// revisions.
pub fn mark_good(node: &Node) -> Result<RevRef> {
    refuse_interrupted(node)?;
    bootcount::cancel(node)?;
    let mut state = node.state()?;
    let current = state
        .current
        .clone()
        .ok_or_else(|| invalid("this node has not been updated by aurum yet"))?;
    state.last_known_good = Some(current.clone());
    node.save_state(&state)?;
    Ok(current)
}

/// The target's manifest: as a delta against the one the node runs when the server makes
/// deltas (a few KiB instead of the whole), else whole.
pub fn fetch_manifest(node: &Node, source: &dyn RevisionSource, id: &Id) -> Result<Manifest> {
    let current = node
        .state()
        .ok()
        .and_then(|s| s.current)
        .and_then(|c| c.id().ok())
        .filter(|c| c != id);
    if let Some(cur) = current {
        if let Ok(Some(m)) = node.kept_manifest(&cur) {
            let raw = m.encode();
            if Id::of(&raw) == cur {
                return source.manifest_from(id, (&cur, &raw));
            }
        }
    }
    source.manifest(id)
}

pub(crate) fn run_hooks(
    dir: &std::path::Path,
    stage: Stage,
    env: &HookEnv,
    on_output: &(dyn Fn(&str, &str) + Send + Sync),
) -> Result<()> {
    for (name, out) in hooks::run_stage(dir, stage, env, None)? {
        on_output(&name, &out);
    }
    Ok(())
}

/// Tells the source how a node command went; a report that cannot be delivered is only logged
/// (the node's own history has it).
pub(crate) fn report_to(
    node: &Node,
    source: Option<&dyn RevisionSource>,
    action: NodeAction,
    result: std::result::Result<&UpdateReport, &crate::Error>,
) {
    let Some(source) = source else { return };
    // A failed run leaves the node on what it ran before: say so.
    let still = node.state().ok().and_then(|s| s.current);
    let report = match result {
        Ok(r) => NodeReport {
            hostname: hostname(),
            image: r.to.as_ref().and_then(|t| t.image.clone()),
            revision: r.to.as_ref().map(|t| t.id.clone()),
            action,
            result: Outcome::Ok,
            bytes: r.bytes_fetched,
            seconds: r.seconds,
            detail: String::new(),
            boot: None,
        },
        Err(e) => NodeReport {
            hostname: hostname(),
            image: still.as_ref().and_then(|c| c.image.clone()),
            revision: still.map(|c| c.id),
            action,
            result: Outcome::Failed,
            bytes: 0,
            seconds: 0.0,
            detail: error_chain(e),
            boot: None,
        },
    };
    if crate::name::check("host", &report.hostname).is_err() {
        log::warn!(
            "this machine's host name `{}` cannot name a node: the server will not record this \
             report; set the name (`hostname NAME`, and /etc/hostname for the next boot)",
            report.hostname
        );
    }
    if let Err(e) = source.report(&report) {
        log::info!("report not delivered: {e}");
    }
}

/// An error and its causes, `: `-separated (as the binary prints errors).
fn error_chain(e: &crate::Error) -> String {
    let mut s = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        s += &format!(": {c}");
        cause = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::pick_hostname;

    #[test]
    fn an_unset_kernel_host_name_falls_back_to_etc_hostname() {
        assert_eq!(pick_hostname(Some("n01"), Some("other\n")), "n01");
        assert_eq!(pick_hostname(Some("(none)"), Some("c1\n")), "c1");
        assert_eq!(pick_hostname(Some(""), Some("# a comment\n\n c1 \n")), "c1");
        assert_eq!(pick_hostname(Some("localhost"), Some("c1\n")), "c1");
        assert_eq!(pick_hostname(Some("localhost"), None), "localhost");
        assert_eq!(pick_hostname(Some("(none)"), Some("\n")), "(none)");
        assert_eq!(pick_hostname(None, None), "unknown");
    }
}
