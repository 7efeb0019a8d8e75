//! Commands run on a node: `updateclient`, `rollback`, `mark-good`, `node-status`.

use std::path::PathBuf;
use std::sync::Arc;

use aurum::apply::client::{self, ClientHooks, ClientUpdate, RollbackTo};
use aurum::apply::node::Node;
use aurum::apply::source::{HttpRepo, LocalRepo, RevisionSource};
use aurum::apply::stage;
use aurum::apply::update::{default_update_excludes, UpdateOptions, UpdateReport};
use aurum::apply::verified::Verified;
use aurum::config::{NodeFile, Origin};
use aurum::excludes::{read_exclude_file, Excludes, ALWAYS_EXCLUDED};
use aurum::format::report::NodeAction;
use clap::Args;

use super::{human_bytes, human_time, print_json, say, Global, HttpArgs, TokenArgs};

/// Where a node gets revisions from: --server, or a repository directory given with the
/// global --repo (or AURUM_REPO), e.g. an NFS mount of the master's; else node.toml's server.
#[derive(Args)]
pub struct SourceArgs {
    /// The image server: `aurum serve`, or any web server or cache holding a copy of the
    /// repository (http://master:8035, http://cache/aurum). Repeatable: several servers of
    /// the same repository (replicas, caches), tried in order; when one fails mid-update (or
    /// lacks a file: a stale mirror) the next takes over, resuming a cut transfer where it
    /// stopped. Default: $AURUM_SERVER
    /// (several separated by commas), else --repo DIR when given, else `server` in node.toml.
    #[arg(long, value_name = "URL")]
    server: Vec<String>,
    #[command(flatten)]
    http: HttpArgs,
    #[command(flatten)]
    token: TokenArgs,
}

impl SourceArgs {
    /// The source to read revisions from, none when nothing names one. With several servers
    /// (--server repeated, node.toml's list), the first that answers is used, and the others
    /// take over when it fails. With `trusted-keys` in node.toml, every revision it resolves
    /// is checked first (signatures, and with `allow_downgrade` unset, age and number).
    pub(super) fn open(
        &self,
        g: &Global,
        node: &Node,
        allow_downgrade: bool,
    ) -> anyhow::Result<Option<Box<dyn RevisionSource>>> {
        let Some(source) = self.open_unchecked(g, node)? else {
            return Ok(None);
        };
        let policy = super::trust::node_policy(g, allow_downgrade)?;
        if policy.keys.is_empty() {
            return Ok(Some(source));
        }
        let current = node.state()?.current;
        Ok(Some(Box::new(Verified::new(source, policy, current))))
    }

    /// [`Self::open`] without the signature checks of node.toml's `trusted-keys`.
    fn open_unchecked(
        &self,
        g: &Global,
        node: &Node,
    ) -> anyhow::Result<Option<Box<dyn RevisionSource>>> {
        // Pack indexes are cached in the node state directory; on a root that has none yet
        // they go to a private temporary directory, so that planning, a dry run and a refused
        // update create nothing under the root.
        let cache = node.dir.is_dir().then(|| node.dir.join("cache"));
        let servers = g.config.servers(self.server.clone());
        // A --repo or AURUM_REPO given for this command wins over node.toml's server; a
        // --server or AURUM_SERVER wins over both.
        let servers = servers.filter(|s| !g.repo_given || !matches!(s.origin, Origin::File(_)));
        let Some(servers) = servers else {
            return Ok(match g.repo_given {
                true => Some(Box::new(LocalRepo::new(&g.repo)?)),
                false => None,
            });
        };
        if servers.value.is_empty() {
            // An empty list (`server = []`) names no server.
            return Ok(None);
        }
        let token = self
            .token
            .token(g, Some(&node.dir.join(aurum::apply::node::TOKEN_FILE)))?;
        let options = self.http.options(Some(&g.config.node), token)?;
        let http = HttpRepo::with_servers(&servers.value, cache.as_deref(), &options)?;
        Ok(Some(Box::new(http)))
    }
}

/// Which paths an update leaves alone.
#[derive(Args, Default)]
pub struct ExcludeArgs {
    /// Leave paths matching PATTERN alone (never written, never deleted). Repeatable; these
    /// come before node.toml's `exclude`.
    #[arg(long, value_name = "PATTERN")]
    exclude: Vec<String>,
    /// Read more exclude rules from FILE, as `rsync --exclude-from` does (SystemImager's
    /// updateclient.local.exclude works as it is): `- ` or `+ ` before a pattern, `#` or `;`
    /// comments; the first rule that matches decides, and these come before node.toml's
    /// `exclude-file` and `exclude`, and all before the defaults.
    #[arg(long, value_name = "FILE")]
    exclude_file: Vec<PathBuf>,
    /// Do not apply the default update excludes (SystemImager's updateclient.local.exclude:
    /// network identity, /etc/fstab, /home, /tmp, logs, spool, leases...).
    #[arg(long)]
    no_default_excludes: bool,
}

impl ExcludeArgs {
    pub(super) fn build(&self, config: &NodeFile) -> anyhow::Result<Excludes> {
        // The first rule that matches decides (as in rsync): the command line's before
        // node.toml's, both before the defaults, nothing before what is never touched.
        let mut p: Vec<String> = ALWAYS_EXCLUDED.iter().map(|s| s.to_string()).collect();
        for f in &self.exclude_file {
            p.extend(read_exclude_file(f)?);
        }
        p.extend(self.exclude.iter().cloned());
        for f in &config.exclude_file {
            p.extend(read_exclude_file(f)?);
        }
        p.extend(config.exclude.iter().cloned());
        if !self.no_default_excludes {
            p.extend(default_update_excludes().into_iter().map(String::from));
        }
        Ok(Excludes::new(&p)?)
    }
}

/// Bring this node (or the root at --root) to a revision, moving only what changed.
///
/// Compares the revision with what is on disk, reuses every blob the node already holds,
/// fetches the rest (as coalesced HTTP Range requests, each checked against its hash), and
/// writes each file under a temporary name before renaming it into place. What it replaces or
/// deletes goes to the undo area first, so `aurum rollback` can return without a network. Files
/// changed by hand are overwritten and listed. An interrupted update finishes when rerun.
///
/// Staged: --stage fetches the revision into /var/lib/aurum-node/stage/ while the node keeps
/// working (nothing in the tree changes); --activate later applies it in seconds from the stage
/// alone, with no network needed, as a normal update (rollback works after it); --unstage frees
/// the stage. `aurum node-status` shows the staged revision.
#[derive(Args)]
pub struct UpdateclientArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// The revision: IMAGE, IMAGE@N, IMAGE:TAG or a revision id. Default: `image` in
    /// node.toml.
    #[arg(long, value_name = "REV")]
    image: Option<String>,
    /// Let the node go to an older revision of its image than the one it runs, even when
    /// that revision's signature is older than node.toml's `max-age` (with a warning). Without
    /// it a node that checks signatures (`trusted-keys` in node.toml) refuses an older
    /// revision: a server offering old, validly signed revisions is a rollback attack. A
    /// revision that is not older than the running one is held to `max-age` either way.
    #[arg(long)]
    allow_downgrade: bool,
    /// The node's root.
    #[arg(long, default_value = "/", value_name = "DIR")]
    root: PathBuf,
    /// Print the itemised plan and the bytes it would fetch; change nothing.
    #[arg(long, short = 'n')]
    dry_run: bool,
    /// Keep files the revision does not have.
    #[arg(long)]
    no_delete: bool,
    /// Hash local files rather than trusting their size and modification time.
    #[arg(long)]
    verify_local: bool,
    /// Take over a root aurum has no state on (a node installed by another tool): let the
    /// update delete and replace what the image lacks or has otherwise. Without it such an
    /// update is refused, changing nothing; see the plan with --dry-run first.
    #[arg(long)]
    adopt: bool,
    /// Also lay the override image IMAGE over this node, now and on every later update
    /// (after the overrides it follows, so it wins). Repeatable; node.toml's `overrides` are
    /// added on every update too.
    #[arg(long = "override", value_name = "IMAGE")]
    add_override: Vec<String>,
    /// Stop laying the override image IMAGE over this node: its files go back to the image's
    /// (or the other overrides'), those only it had are deleted. Repeatable.
    #[arg(long = "no-override", value_name = "IMAGE")]
    no_override: Vec<String>,
    #[command(flatten)]
    excludes: ExcludeArgs,
    /// Print the default update excludes and exit.
    #[arg(long)]
    show_default_excludes: bool,
    /// Run the pre-update/ and post-update/ hooks of this hooks directory (named
    /// NN<class>.<what>; class all, the image, --group or this host's name) before and after
    /// the update. A failing pre-update hook stops the update before anything changes.
    /// Default: `hooks` in node.toml.
    #[arg(long, value_name = "DIR")]
    hooks: Option<PathBuf>,
    /// The node's group, for choosing hooks. Default: `group` in node.toml.
    #[arg(long, value_name = "NAME")]
    group: Option<String>,
    /// Fetch and stage the revision without changing the tree: its manifest and every blob
    /// the node lacks go to the node's state directory (stage/), and node-status shows it.
    /// The stage survives a reboot; a later --stage replaces it. Hooks do not run.
    #[arg(long, conflicts_with_all = ["activate", "unstage", "dry_run"])]
    stage: bool,
    /// Apply the staged revision from the stage: no network needed (a server, when
    /// reachable, only fetches what changed on the node since staging). Journalled, with an
    /// undo area, as any update; the hooks run; the stage is freed once it is done.
    #[arg(long, conflicts_with_all = ["unstage", "dry_run", "image", "add_override", "no_override"])]
    activate: bool,
    /// With --activate: when nothing is staged, do nothing and exit 0 (for a boot-time unit
    /// or a scheduler's reboot program, which run whether or not a rollout staged a revision).
    #[arg(long, requires = "activate")]
    if_staged: bool,
    /// Forget the staged revision and delete the stage.
    #[arg(long, conflicts_with_all = ["dry_run", "image", "add_override", "no_override"])]
    unstage: bool,
    /// Boots the new revision gets on trial: the boot loader counts them, and a revision that
    /// has not passed `aurum health` after that many boots (or fails it on one) is put back to
    /// the revision before it by the node itself. 0: no trial. Only on a node that boots with
    /// GRUB (/boot/grub/grub.cfg) or systemd-boot (loader/loader.conf on the ESP at /efi,
    /// /boot/efi or /boot); at most 9. Default: 3 when the node runs aurum boot at
    /// startup (aurum-boot.service enabled), else 0. See `aurum boot`.
    #[arg(long, value_name = "N")]
    boot_tries: Option<u32>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn print_report(action: &str, r: &UpdateReport, dry_run: bool, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(r);
    }
    if dry_run {
        super::say!("aurum: {action} --dry-run: nothing was changed; the plan follows");
    }
    for line in &r.plan {
        println!("{line}");
    }
    for w in &r.warnings {
        super::warning(w);
    }
    for c in &r.local_changes {
        super::say!(
            "aurum: changed on this node, overwritten: {} ({})",
            c.path,
            c.what.join(", ")
        );
    }
    let to = r.to.as_ref().map(|t| t.name()).unwrap_or_default();
    let from = r
        .from
        .as_ref()
        .map(|t| t.name())
        .unwrap_or_else(|| "(unknown)".into());
    println!(
        "{action}{}: {from} -> {to}: {} created, {} changed, {} metadata only, {} deleted; {} fetched{}, {} reused{}, {:.2} s",
        if r.plan.is_empty() && r.unchanged { " (nothing to do)" } else { "" },
        r.created,
        r.changed,
        r.metadata_only,
        r.deleted,
        human_bytes(r.bytes_fetched),
        if r.deltas > 0 { format!(" ({} blobs as deltas)", r.deltas) } else { String::new() },
        human_bytes(r.bytes_reused),
        if r.plan.is_empty() { String::new() } else { format!(", {} to fetch", human_bytes(r.bytes_to_fetch)) },
        r.seconds
    );
    Ok(())
}

pub fn updateclient(g: &Global, a: UpdateclientArgs) -> anyhow::Result<()> {
    if a.show_default_excludes {
        for p in default_update_excludes().iter().chain(ALWAYS_EXCLUDED) {
            println!("{p}");
        }
        return Ok(());
    }
    if a.unstage {
        return unstage(&a.root, a.json);
    }
    if a.activate {
        return activate(g, a);
    }
    let config = &g.config;
    let spec = config.image(a.image.clone()).ok_or_else(|| {
        aurum::Error::Invalid(format!(
            "give the revision to update to with --image, or set `image` in {}",
            config.dir.join(aurum::config::NODE_FILE).display()
        ))
    })?;
    let spec = spec.value.as_str();
    // A dry run writes nothing under the root, not even the state directory or its lock; nor
    // does a real run before its plan passed (see --adopt).
    let node = if a.dry_run {
        Node::open_read_only(&a.root)?
    } else {
        Node::open_deferred(&a.root)?
    };
    let source = a.source.open(g, &node, a.allow_downgrade)?.ok_or_else(|| {
        aurum::Error::Invalid(format!(
            "give the image server with --server URL (or AURUM_SERVER, or `server` in {}), or a repository directory with --repo DIR",
            config.dir.join(aurum::config::NODE_FILE).display()
        ))
    })?;
    let opts = UpdateOptions {
        action: NodeAction::Updateclient,
        dry_run: a.dry_run,
        no_delete: a.no_delete,
        verify_local: a.verify_local,
        excludes: a.excludes.build(&config.node)?,
        adopt: a.adopt,
        overlay: None,
        before_writes: None,
        stage: None,
    };
    // node.toml's overrides are followed on every update, unless this one stops following one.
    let mut add_override = a.add_override;
    for o in &config.node.overrides {
        if !add_override.contains(o) && !a.no_override.contains(o) {
            add_override.push(o.clone());
        }
    }
    let hooks = a.hooks.or_else(|| config.node.hooks.clone());
    if hooks.is_none() && a.group.is_some() {
        return Err(aurum::Error::Invalid(
            "--group chooses hooks: give --hooks DIR too (or `hooks` in node.toml)".into(),
        )
        .into());
    }
    let run = ClientUpdate {
        spec: spec.to_string(),
        opts,
        add_override,
        no_override: a.no_override,
        hooks: hooks.map(|dir| client_hooks(dir, a.group.or_else(|| config.node.group.clone()))),
        boot_tries: aurum::apply::bootcount::tries(&a.root, a.boot_tries),
    };
    let progress = g.progress();
    if a.stage {
        let r = stage::stage(&node, source.as_ref(), run, progress.as_ref())?;
        return print_stage(&r, a.json);
    }
    let r = client::updateclient(&node, source.as_ref(), run, progress.as_ref())?;
    print_report("updateclient", &r, a.dry_run, a.json)
}

/// The update hooks of `dir`, their output printed as they run.
fn client_hooks(dir: PathBuf, group: Option<String>) -> ClientHooks {
    ClientHooks {
        dir,
        group,
        on_output: Arc::new(|name: &str, out: &str| {
            super::say!("updateclient: hook {name}");
            for line in out.lines() {
                super::say!("    {line}");
            }
        }),
    }
}

fn print_stage(r: &stage::StageReport, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(r);
    }
    for w in &r.update.warnings {
        super::warning(w);
    }
    if let Some(old) = &r.replaced {
        super::say!("aurum: the stage of {} was replaced", old.name());
    }
    let u = &r.update;
    println!(
        "staged: {}: {} blobs, {} on disk; {} fetched{}, {} on the node; against the tree now: \
         {} created, {} changed, {} metadata only, {} deleted; {:.2} s. Apply it with \
         `aurum updateclient --activate`",
        r.staged.revision.name(),
        r.staged.blobs,
        human_bytes(r.staged.bytes),
        human_bytes(u.bytes_fetched),
        if u.deltas > 0 {
            format!(" ({} blobs as deltas)", u.deltas)
        } else {
            String::new()
        },
        human_bytes(u.bytes_reused),
        u.created,
        u.changed,
        u.metadata_only,
        u.deleted,
        u.seconds
    );
    Ok(())
}

/// `updateclient --activate`: the staged revision, from the stage; a server is used only when
/// one is given and answers.
fn activate(g: &Global, a: UpdateclientArgs) -> anyhow::Result<()> {
    if a.if_staged {
        let staged = aurum::apply::node::peek(&a.root)?.and_then(|(state, _)| state.staged);
        if staged.is_none() {
            if a.json {
                return print_json(&serde_json::json!({"activated": null}));
            }
            say!(
                "aurum: nothing is staged on {}: nothing to activate",
                a.root.display()
            );
            return Ok(());
        }
    }
    let node = Node::open_deferred(&a.root)?;
    let source = match a.source.open(g, &node, a.allow_downgrade) {
        Ok(s) => s,
        Err(e) => {
            log::warn!("activating without a server: {e:#}");
            None
        }
    };
    let opts = UpdateOptions {
        action: NodeAction::Updateclient,
        dry_run: false,
        no_delete: a.no_delete,
        verify_local: a.verify_local,
        excludes: a.excludes.build(&g.config.node)?,
        adopt: false,
        overlay: None,
        before_writes: None,
        stage: None,
    };
    let group = a.group.or_else(|| g.config.node.group.clone());
    let hooks = a
        .hooks
        .or_else(|| g.config.node.hooks.clone())
        .map(|dir| client_hooks(dir, group));
    let progress = g.progress();
    let r = stage::activate(
        &node,
        source.as_deref(),
        opts,
        hooks.as_ref(),
        aurum::apply::bootcount::tries(&a.root, a.boot_tries),
        progress.as_ref(),
    )?;
    print_report("activate", &r, false, a.json)
}

fn unstage(root: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let node = Node::open_deferred(root)?;
    let r = stage::unstage(&node)?;
    if json {
        return print_json(&r);
    }
    match &r.unstaged {
        Some(rev) => println!(
            "unstaged {}: {} freed",
            rev.name(),
            human_bytes(r.bytes_freed)
        ),
        None => println!("nothing was staged ({} freed)", human_bytes(r.bytes_freed)),
    }
    Ok(())
}

/// Return this node to the revision it ran before its last update, from its own undo area.
///
/// Needs no network: what the last update replaced or deleted was kept on the node. With --to
/// it goes to any revision instead, fetching what the node lacks (give --server or
/// --repo); with --last-known-good to the revision `aurum mark-good` recorded. A
/// rollback interrupted by a crash finishes when rerun.
#[derive(Args)]
pub struct RollbackArgs {
    /// Go to this revision instead (IMAGE, IMAGE@N, IMAGE:TAG or an id).
    #[arg(long, conflicts_with = "last_known_good", value_name = "REV")]
    to: Option<String>,
    /// Go to the node's last-known-good revision.
    #[arg(long)]
    last_known_good: bool,
    #[command(flatten)]
    source: SourceArgs,
    /// The node's root.
    #[arg(long, default_value = "/", value_name = "DIR")]
    root: PathBuf,
    #[command(flatten)]
    excludes: ExcludeArgs,
    /// Print the itemised plan of the rollback and the bytes it would fetch; change nothing
    /// (no file, no node state, no report to the server).
    #[arg(long, short = 'n')]
    dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn rollback(g: &Global, a: RollbackArgs) -> anyhow::Result<()> {
    // A dry run writes nothing under the root, not even the node's lock.
    let node = if a.dry_run {
        Node::open_read_only(&a.root)?
    } else {
        Node::open_deferred(&a.root)?
    };
    // A plain rollback needs no source: do not fail on one that cannot be reached. Going back
    // is what a rollback is asked for: signatures are checked, revision numbers and ages not.
    let source = match a.source.open(g, &node, true) {
        Ok(s) => s,
        Err(e) if a.to.is_none() => {
            log::warn!("not using the repository given: {e:#}");
            None
        }
        Err(e) => return Err(e),
    };
    let opts = UpdateOptions {
        action: NodeAction::Rollback,
        dry_run: a.dry_run,
        no_delete: false,
        verify_local: false,
        excludes: a.excludes.build(&g.config.node)?,
        adopt: false,
        overlay: None,
        before_writes: None,
        stage: None,
    };
    let to = match (a.to, a.last_known_good) {
        (Some(spec), _) => RollbackTo::Spec(spec),
        (None, true) => RollbackTo::LastKnownGood,
        (None, false) => RollbackTo::Previous,
    };
    let progress = g.progress();
    let r = client::rollback(&node, source.as_deref(), to, opts, progress.as_ref())?;
    print_report("rollback", &r, a.dry_run, a.json)
}

/// Record the revision this node runs as its last-known-good.
///
/// Refused on a root a killed `aurum rollback` or update left between two revisions: run
/// `aurum rollback` (or the interrupted command) again first.
#[derive(Args)]
pub struct MarkGoodArgs {
    /// The node's root.
    #[arg(long, default_value = "/", value_name = "DIR")]
    root: PathBuf,
    /// Print JSON: {"revision": "IMAGE@N", "id", "last_known_good": {"image", "number", "id",
    /// "overrides"}}.
    #[arg(long)]
    json: bool,
}

pub fn mark_good(_: &Global, a: MarkGoodArgs) -> anyhow::Result<()> {
    // On a root aurum never updated there is nothing to mark: create nothing there.
    let node = Node::open_deferred(&a.root)?;
    let current = client::mark_good(&node)?;
    if a.json {
        let revision = match (&current.image, current.number) {
            (Some(i), Some(n)) => format!("{i}@{n}"),
            _ => current.id.clone(),
        };
        return print_json(
            &serde_json::json!({"last_known_good": current, "revision": revision, "id": current.id}),
        );
    }
    println!("last-known-good: {}", current.name());
    Ok(())
}

/// Run this node's health checks and record the result.
///
/// Runs the executables in ROOT/etc/aurum/health/required.d/ (any failure makes the node
/// unhealthy) and wanted.d/ (failures are only reported), each in name order with a time limit,
/// chrooted into ROOT when it is not /. Images carry their checks: put them in the golden
/// client's /etc/aurum/health/. The result is kept in the node's state (shown by node-status)
/// when aurum manages the root. Exits 0 when healthy, 1 when a required check failed.
///
/// A root a killed `aurum rollback` or update left between two revisions (its journal is in
/// ROOT/var/lib/aurum-node) is brought to one only by the boot's first health check: without
/// --slurm, when `aurum boot` recorded this boot, no health check of this boot ran before, and
/// the kill came before the boot (`aurum boot` could not bring it to one). Then, as `aurum
/// rollback` does when rerun, an interrupted rollback is finished, an interrupted update
/// undone (one killed after it had committed is finished), from the node's own undo area; the
/// checks run on that root, nothing is blessed on this boot, and the node is rebooted when
/// ROOT is / (--no-reboot: it is not; an update finished after its commit needs no reboot).
/// Any other time (a later check, every --slurm run, an update killed on the running system)
/// nothing on the root changes and nothing reboots: the node is UNHEALTHY, with the failed
/// required check `aurum-interrupted` saying what was interrupted and what to run, until the
/// administrator runs `aurum rollback` or the interrupted command again.
///
/// With --slurm it also answers for the node in Slurm, and can be Slurm's HealthCheckProgram
/// (slurm.conf: HealthCheckProgram=/usr/local/sbin/aurum-health, a script running
/// `aurum --quiet health --slurm`): a node failing a required check is drained with the
/// reason `aurum: health: CHECKS failed` (a node an administrator drained keeps its own
/// reason); a healthy node that a failed check had drained is resumed; a node drained for
/// another reason (a rollout's `aurum: rollout ...`, an administrator's) is left as it is.
/// It exits 1 too when slurmctld does not know the node or its slurmd does not answer.
#[derive(Args)]
pub struct HealthArgs {
    /// The node's root.
    #[arg(long, default_value = "/", value_name = "DIR")]
    root: PathBuf,
    /// The longest one check may run; it is then killed (with its children) and fails.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    timeout: u64,
    /// Report the result to this server (`aurum serve`: its status page shows it). Default:
    /// AURUM_SERVER, else node.toml's server; none: no report.
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// Answer for this node in Slurm too: drain it when unhealthy, resume it when a failed
    /// check had drained it and it is healthy again (needs scontrol on the node).
    #[arg(long)]
    slurm: bool,
    /// This node's name in Slurm. Default: its host name, up to the first dot.
    #[arg(long, value_name = "NAME", requires = "slurm")]
    slurm_node: Option<String>,
    /// On a boot of a revision on trial (see `aurum boot`), a fallback does not reboot the
    /// node (it is put back, and must be rebooted to run the revision put back); nor does the
    /// boot's first health check bringing an interrupted root to one revision.
    #[arg(long)]
    no_reboot: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// What `health --slurm` found and did in Slurm.
#[derive(serde::Serialize)]
struct SlurmGate {
    node: String,
    /// The node's state in Slurm before anything was done (empty when it could not be read).
    state: String,
    /// What was done, or why the node cannot go back to service.
    action: String,
    /// The node may take jobs (healthy, known to Slurm, its slurmd answering).
    ok: bool,
}

/// Drains or resumes this node in Slurm after its health checks.
fn slurm_gate(name: String, record: &aurum::format::node::HealthRecord) -> SlurmGate {
    use aurum::fleet::slurm;
    let failed: Vec<&str> = record
        .checks
        .iter()
        .filter(|c| c.required && c.status != aurum::apply::health::CheckStatus::Pass)
        .map(|c| c.name.as_str())
        .collect();
    let st = match slurm::node(&name) {
        Ok(st) => st,
        Err(e) => {
            return SlurmGate {
                node: name,
                state: String::new(),
                action: e.to_string(),
                ok: false,
            }
        }
    };
    let (action, ok) = if !record.healthy {
        if st.drained() && !st.drained_by_aurum() {
            (format!("left drained (its reason: {})", st.reason), false)
        } else {
            let reason = format!("{} {} failed", slurm::HEALTH_REASON, failed.join(", "));
            match slurm::drain(&name, &reason) {
                Ok(()) => (format!("drained: {reason}"), false),
                Err(e) => (format!("could not drain it: {e}"), false),
            }
        }
    } else if !st.responding() {
        (
            format!("its slurmd does not answer slurmctld (state {})", st.state),
            false,
        )
    } else if st.drained() && st.reason.starts_with(slurm::HEALTH_REASON) {
        match slurm::resume(&name) {
            Ok(()) => (format!("resumed (was drained: {})", st.reason), true),
            Err(e) => (format!("could not resume it: {e}"), false),
        }
    } else if st.drained() {
        (
            format!("healthy; left drained (reason: {})", st.reason),
            true,
        )
    } else {
        ("healthy; in service".to_string(), true)
    };
    SlurmGate {
        node: name,
        state: st.state,
        action,
        ok,
    }
}

/// How a node command with no HTTP flags reaches the server for its report: the
/// environment's proxies, node.toml's `ca`, and the node's token (AURUM_TOKEN, node.toml's
/// `token-file`, else ROOT/var/lib/aurum-node/token).
pub fn report_options(
    g: &Global,
    root: &std::path::Path,
) -> anyhow::Result<aurum::apply::source::HttpOptions> {
    let node_token = root
        .join(aurum::apply::node::STATE_DIR)
        .join(aurum::apply::node::TOKEN_FILE);
    Ok(aurum::apply::source::HttpOptions {
        proxies: aurum::proxy::Proxies::from_env()?,
        token: g.config.token(None, Some(&node_token))?,
        ca: g.config.node.ca.clone(),
        ..Default::default()
    })
}

pub fn health(g: &Global, a: HealthArgs) -> anyhow::Result<()> {
    use aurum::apply::health::{self, CheckStatus};
    let limit = std::time::Duration::from_secs(a.timeout.max(1));
    let server = g
        .config
        .servers(a.server.clone().into_iter().collect())
        .and_then(|s| s.value.first().cloned());
    // A fallback or a recovery honours node.toml's excludes and the defaults, as `aurum
    // rollback` does.
    let excludes = ExcludeArgs::default();
    let before = super::boot::before_health(g, &a.root, server.as_deref(), &excludes, a.slurm)?;
    if let Some(why) = &before.left {
        super::warning(why.clone());
    }
    let recovered = before.recovered;
    let (record, recorded) = health::check(&a.root, limit, before.left.as_deref())?;
    if let Some(url) = &server {
        if let Err(e) = health::report(url, &report_options(g, &a.root)?, &record) {
            super::warning(format!("the result was not reported to {url}: {e}"));
        }
    }
    let slurm = a.slurm.then(|| {
        let name = a.slurm_node.clone().unwrap_or_else(|| {
            let host = aurum::apply::client::hostname();
            host.split('.').next().unwrap_or(&host).to_string()
        });
        slurm_gate(name, &record)
    });
    // On a trial boot the result blesses the revision or sends the node back.
    // A root left between two revisions decides no trial: it is the administrator's.
    let trial = if recorded && before.left.is_none() {
        super::boot::after_health(
            g,
            &a.root,
            server.as_deref(),
            &excludes,
            &record,
            recovered.as_ref(),
        )?
    } else {
        None
    };
    if a.json {
        print_json(&serde_json::json!({
            "health": record,
            "recorded": recorded,
            "slurm": slurm,
            "boot": trial.as_ref().map(|t| &t.record)
        }))?;
    } else {
        for c in &record.checks {
            let status = match c.status {
                CheckStatus::Pass => "pass",
                CheckStatus::Fail => "FAIL",
                CheckStatus::Timeout => "TIMEOUT",
                CheckStatus::Error => "ERROR",
            };
            let kind = if c.required { "required" } else { "wanted" };
            println!("{status:<8} {kind:<9} {:<24} {:.2} s", c.name, c.seconds);
            if c.status != CheckStatus::Pass {
                for line in c
                    .output
                    .lines()
                    .rev()
                    .take(5)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                {
                    println!("         | {line}");
                }
            }
        }
        if record.checks.is_empty() {
            say!(
                "aurum: {} has no health checks ({}/required.d/ and wanted.d/ are empty or missing)",
                a.root.display(),
                health::HEALTH_DIR
            );
        }
        println!(
            "{}",
            if record.healthy {
                "healthy"
            } else {
                "UNHEALTHY"
            }
        );
        if !recorded {
            say!(
                "aurum: not recorded: aurum has not installed or updated {}",
                a.root.display()
            );
        }
        if let Some(t) = &trial {
            super::boot::print_record(&t.record);
        }
    }
    if let Some(t) = &trial {
        super::boot::reboot_if_asked(&a.root, t, a.no_reboot)?;
    }
    if let (Some(gate), false) = (&slurm, a.json) {
        println!("slurm    {} ({}): {}", gate.node, gate.state, gate.action);
    }
    if !record.healthy || slurm.is_some_and(|g| !g.ok) {
        std::process::exit(1);
    }
    Ok(())
}

/// Show what this node runs: current, previous and last-known-good revisions, and history.
#[derive(Args)]
pub struct NodeStatusArgs {
    /// The node's root.
    #[arg(long, default_value = "/", value_name = "DIR")]
    root: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn node_status(_: &Global, a: NodeStatusArgs) -> anyhow::Result<()> {
    let (state, journal) = aurum::apply::node::peek(&a.root)?.ok_or_else(|| {
        aurum::Error::NotFound(format!(
            "aurum has not updated {} yet (no {})",
            a.root.display(),
            aurum::apply::node::STATE_DIR
        ))
    })?;
    if a.json {
        return print_json(&serde_json::json!({"state": state, "interrupted": journal}));
    }
    let show = |r: &Option<aurum::apply::node::RevRef>| {
        r.as_ref().map(|r| r.name()).unwrap_or_else(|| "-".into())
    };
    println!("current          {}", show(&state.current));
    println!("previous         {}", show(&state.previous));
    println!("last-known-good  {}", show(&state.last_known_good));
    if let Some(st) = &state.staged {
        println!(
            "staged           {} at {} ({} blobs, {})",
            st.revision.name(),
            human_time(st.time),
            st.blobs,
            human_bytes(st.bytes)
        );
    }
    println!(
        "overrides        {}",
        if state.overrides.is_empty() {
            "-".to_string()
        } else {
            state.overrides.join(", ")
        }
    );
    if let Some(h) = &state.health {
        let failed: Vec<&str> = h
            .checks
            .iter()
            .filter(|c| c.status != aurum::apply::health::CheckStatus::Pass)
            .map(|c| c.name.as_str())
            .collect();
        println!(
            "health           {} at {}{}",
            if h.healthy { "healthy" } else { "UNHEALTHY" },
            human_time(h.time),
            if failed.is_empty() {
                String::new()
            } else {
                format!(" (failed: {})", failed.join(", "))
            }
        );
    }
    if let Some(t) = &state.trial {
        println!(
            "on trial         {} since {} ({} boots, {}; falls back to {})",
            t.revision.name(),
            human_time(t.started),
            t.tries,
            t.bootloader,
            t.fallback.name()
        );
    }
    if let Some(b) = &state.boot {
        println!("last boot        {}", super::boot::describe(b));
    }
    if let Some(j) = journal {
        println!(
            "INTERRUPTED      {} to {}: rerun it to finish",
            j.action,
            j.to.name()
        );
    }
    for h in state.history.iter().rev().take(20) {
        println!(
            "{}  {:<12} {} -> {}  {}, {} fetched, {:.2} s",
            human_time(h.time),
            h.action,
            h.from
                .as_deref()
                .map(aurum::apply::node::short_id)
                .unwrap_or("-"),
            aurum::apply::node::short_id(&h.to),
            h.result,
            human_bytes(h.bytes_fetched),
            h.seconds
        );
    }
    Ok(())
}
