//! Staged updates: `updateclient --stage`, `--activate` and `--unstage`.
//!
//! Staging runs the update engine against the live tree up to its fetch and stops there: the
//! target's manifests (the tree's, and with overrides the image's) and every blob the plan
//! needs that the node does not hold (binary deltas rebuilt) land in the state directory's
//! `stage/`, and `state.json` records the revision (`staged`); nothing in the tree changes, so
//! the node keeps working. The stage is on disk: it survives a reboot.
//!
//! Activating runs the same journalled engine from the stage alone: the planner compares the
//! staged manifest with the tree as it is then (a node changed since staging still ends
//! exactly on the revision), blobs come from the stage first, then from the node; only what is
//! in neither is fetched, and without a server that is refused before anything changes. The
//! update commits like any other (undo area, `aurum rollback` works after it), clearing
//! `staged`; the stage is then deleted. A second `--stage` replaces the first; `--unstage`
//! frees it. Blobs and manifests in the stage are named by id, so a new stage is fetched
//! next to the one before (reusing its blobs), and what only the old one needed is deleted
//! once the state names the new one: a `--stage` that fails or is killed leaves a whole
//! stage, the one before it.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::apply::bootcount;
use crate::apply::client::{self, ClientHooks, ClientUpdate};
use crate::apply::hooks::Stage as HookStage;
use crate::apply::node::{keep_manifest_in, kept_manifest_in, Node, RevRef, Staged};
use crate::apply::source::{RevisionSource, Target};
use crate::apply::update::{self, Overlay, StageAt, UpdateOptions, UpdateReport};
use crate::catalog::NodeAction;
use crate::error::{corrupt, invalid, IoContext, Result};
use crate::format::manifest::{Kind, Manifest};
use crate::progress::Progress;

/// What `updateclient --stage` did.
#[derive(Debug, Serialize)]
pub struct StageReport {
    /// The revision staged, as the node state records it.
    pub staged: Staged,
    /// The revision staged before, which this stage replaced.
    pub replaced: Option<RevRef>,
    /// The plan against the tree as it was when staged (an activation plans again) and the
    /// bytes fetched and reused.
    pub update: UpdateReport,
}

/// What `updateclient --unstage` did.
#[derive(Debug, Serialize)]
pub struct UnstageReport {
    /// The revision that was staged (none: there was no stage to free).
    pub unstaged: Option<RevRef>,
    /// Bytes freed on disk.
    pub bytes_freed: u64,
}

fn blobs_dir(stage: &Path) -> PathBuf {
    stage.join("blobs")
}

fn manifests_dir(stage: &Path) -> PathBuf {
    stage.join("manifests")
}

/// Refuses to stage or activate on a root aurum does not manage, or (`staging`) with an
/// update unfinished.
fn check_node(node: &Node, staging: bool) -> Result<()> {
    if !node.dir.is_dir() || node.state()?.current.is_none() {
        return Err(invalid(format!(
            "aurum has not installed or updated {} yet: a staged update needs a node aurum \
             manages (install it, or run `aurum updateclient` once)",
            node.root.display()
        )));
    }
    node.claim()?;
    if staging && node.journal()?.is_some() {
        return Err(invalid(format!(
            "an update or rollback on {} was interrupted; rerun it to finish (node-status names \
             it) before staging another revision",
            node.root.display()
        )));
    }
    Ok(())
}

/// Fetches and stages the revision `run.spec` names on `node`, replacing any earlier stage.
/// Nothing in the tree changes; the update hooks do not run (they run on activation).
pub fn stage(
    node: &Node,
    source: &dyn RevisionSource,
    mut run: ClientUpdate,
    progress: &dyn Progress,
) -> Result<StageReport> {
    check_node(node, true)?;
    let (target, manifest, overlay) = client::resolve_for_node(
        node,
        source,
        &run.spec,
        &run.add_override,
        &run.no_override,
        crate::apply::overrides::Composing::Stage,
    )?;
    let stage = node.stage_dir();
    let before = node.state()?.staged.map(|s| s.revision);
    let result = (|| -> Result<StageReport> {
        keep_manifest_in(&manifests_dir(&stage), &manifest)?;
        if let Some(image) = &overlay.image {
            keep_manifest_in(&manifests_dir(&stage), image)?;
        }
        let follow = overlay.follow.clone();
        run.opts.overlay = Some(overlay);
        run.opts.before_writes = None;
        run.opts.stage = Some(StageAt {
            blobs: blobs_dir(&stage),
            only_fetch: true,
        });
        let update = update::update(node, &target, &manifest, Some(source), &run.opts, progress)?;
        let revision = update.to.clone().unwrap_or_else(|| RevRef::from(&target));
        // The blobs are durable (one syncfs) before the state names the new stage.
        let fd = crate::sys::open_root(&stage)?;
        crate::sys::sync_fs(std::os::fd::AsFd::as_fd(&fd), &stage)?;
        let mut staged = Staged {
            revision,
            time: crate::catalog::now(),
            bytes: 0,
            blobs: 0,
            follow,
        };
        let mut state = node.state()?;
        state.staged = Some(staged.clone());
        node.save_state(&state)?;
        // Only now does what the stage before held and this one does not need go.
        prune(&stage, &manifest, kept_manifests(&staged.revision)?)?;
        (staged.bytes, staged.blobs) = disk_usage(&blobs_dir(&stage));
        staged.bytes += disk_usage(&manifests_dir(&stage)).0;
        state.staged = Some(staged.clone());
        node.save_state(&state)?;
        Ok(StageReport {
            staged,
            replaced: before.clone(),
            update,
        })
    })();
    if let Ok(r) = &result {
        // The server's status page shows what each node has staged.
        let report = crate::format::report::NodeReport {
            hostname: client::hostname(),
            image: r.staged.revision.image.clone(),
            revision: Some(r.staged.revision.id.clone()),
            action: NodeAction::Stage,
            result: crate::format::report::Outcome::Ok,
            bytes: r.update.bytes_fetched,
            seconds: r.update.seconds,
            detail: String::new(),
            boot: None,
        };
        if let Err(e) = source.report(&report) {
            log::info!("report not delivered: {e}");
        }
    }
    // A failed first stage frees what it fetched; a stage before it stays whole (its files
    // are all there: nothing is deleted before the state names the new one).
    if result.is_err() && before.is_none() {
        let _ = fs::remove_dir_all(&stage);
    }
    result
}

/// The manifest files a stage of `rev` keeps: the tree's, and with overrides the image's.
fn kept_manifests(rev: &RevRef) -> Result<Vec<String>> {
    let mut ids = vec![format!("{}.mf", rev.tree_id()?.hex())];
    ids.push(format!("{}.mf", rev.id()?.hex()));
    Ok(ids)
}

/// Deletes from the stage the blobs `manifest` does not use and the manifests other than
/// `keep` (file names).
fn prune(stage: &Path, manifest: &Manifest, keep: Vec<String>) -> Result<()> {
    let used: HashSet<String> = manifest
        .entries
        .iter()
        .flat_map(|e| match &e.kind {
            Kind::File { chunks, .. } => chunks.iter().map(|c| c.id.hex()).collect(),
            _ => Vec::new(),
        })
        .collect();
    for (dir, wanted) in [
        (blobs_dir(stage), &used),
        (manifests_dir(stage), &keep.into_iter().collect()),
    ] {
        let Ok(it) = fs::read_dir(&dir) else { continue };
        for f in it.flatten() {
            if !wanted.contains(&*f.file_name().to_string_lossy()) {
                let _ = fs::remove_file(f.path());
            }
        }
    }
    Ok(())
}

/// Applies the staged revision: the same engine as any update, with the stage as its first
/// blob source; `source`, when reachable, fetches only what the node changed since staging.
/// The stage is freed once the update committed. The update hooks run as for `updateclient`.
pub fn activate(
    node: &Node,
    source: Option<&dyn RevisionSource>,
    mut opts: UpdateOptions,
    hooks: Option<&ClientHooks>,
    boot_tries: u32,
    progress: &dyn Progress,
) -> Result<UpdateReport> {
    check_node(node, false)?;
    let state = node.state()?;
    let Some(staged) = state.staged else {
        return finish_committed(node, source, opts, progress);
    };
    let rev = &staged.revision;
    let missing = || {
        corrupt(format!(
            "the stage in {} lacks the manifest of {}: run `aurum updateclient --unstage`, \
             then stage it again",
            node.stage_dir().display(),
            rev.name()
        ))
    };
    let stage = node.stage_dir();
    let manifest =
        kept_manifest_in(&manifests_dir(&stage), &rev.tree_id()?)?.ok_or_else(missing)?;
    let image = match rev.overrides.is_empty() {
        true => None,
        false => Some(kept_manifest_in(&manifests_dir(&stage), &rev.id()?)?.ok_or_else(missing)?),
    };
    let target = Target {
        image: rev.image.clone(),
        number: rev.number,
        id: rev.id()?,
    };
    opts.overlay = Some(Overlay {
        layers: rev.overrides.clone(),
        image,
        follow: staged.follow.clone(),
    });
    opts.stage = Some(StageAt {
        blobs: blobs_dir(&stage),
        only_fetch: false,
    });
    let server = source.map(|s| s.describe()).unwrap_or_default();
    let env = client::hook_env(node, hooks, &target, server, &mut opts);
    let trial = bootcount::prepare(node, boot_tries)?;
    let result = update::update(node, &target, &manifest, source, &opts, progress).and_then(|r| {
        let begun = match trial {
            Some(p) => bootcount::begin(node, p)?,
            None => None,
        };
        if begun.is_none() {
            bootcount::refresh(node)?;
        }
        let _ = fs::remove_dir_all(node.stage_dir());
        if let Some(h) = hooks {
            client::run_hooks(&h.dir, HookStage::PostUpdate, &env, h.on_output.as_ref())?;
        }
        Ok(r)
    });
    client::report_to(node, source, NodeAction::Updateclient, result.as_ref());
    result
}

/// `--activate` with nothing staged: an activation killed after the node state moved (and the
/// stage was cleared) but before its journal went is finished from the manifest the node
/// kept; otherwise there is nothing to activate.
fn finish_committed(
    node: &Node,
    source: Option<&dyn RevisionSource>,
    mut opts: UpdateOptions,
    progress: &dyn Progress,
) -> Result<UpdateReport> {
    if let Some(j) = node.journal()? {
        if let Some((target, manifest, overlay)) = update::recorded(node, &j.to)? {
            opts.overlay = Some(overlay);
            let r = update::update(node, &target, &manifest, source, &opts, progress)?;
            let _ = fs::remove_dir_all(node.stage_dir());
            return Ok(r);
        }
    }
    let _ = fs::remove_dir_all(node.stage_dir());
    Err(invalid(format!(
        "nothing is staged on {}: stage a revision first with `aurum updateclient --stage \
         --image REV` (`aurum node-status` shows what the node runs)",
        node.root.display()
    )))
}

/// Frees the stage of `node` and clears `staged` in its state.
pub fn unstage(node: &Node) -> Result<UnstageReport> {
    if !node.dir.is_dir() {
        return Ok(UnstageReport {
            unstaged: None,
            bytes_freed: 0,
        });
    }
    node.claim()?;
    drop_stage(node)
}

/// Clears `staged` (durably, first: a stage the state no longer names is only leftover
/// files), then deletes the stage.
fn drop_stage(node: &Node) -> Result<UnstageReport> {
    let mut state = node.state()?;
    let unstaged = state.staged.take().map(|s| s.revision);
    if unstaged.is_some() {
        node.save_state(&state)?;
    }
    let dir = node.stage_dir();
    let (bytes_freed, _) = disk_usage(&dir);
    remove_dir(&dir)?;
    Ok(UnstageReport {
        unstaged,
        bytes_freed,
    })
}

/// Removes `dir` and everything in it; nothing there is fine.
fn remove_dir(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).at(dir),
    }
}

/// Bytes allocated on disk under `dir`, and the number of files.
fn disk_usage(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let (mut bytes, mut files) = (0, 0);
    let Ok(it) = fs::read_dir(dir) else {
        return (0, 0);
    };
    for e in it.flatten() {
        let Ok(md) = e.metadata() else { continue };
        if md.is_dir() {
            let (b, f) = disk_usage(&e.path());
            bytes += b + md.blocks() * 512;
            files += f;
        } else {
            bytes += md.blocks() * 512;
            files += 1;
        }
    }
    (bytes, files)
}
