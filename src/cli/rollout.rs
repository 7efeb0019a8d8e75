//! `rollout`: a revision onto a node set in waves with health gates.

use clap::{Args, Subcommand};

use super::{human_time, print_json, say, Global};
use aurum::catalog::rollouts::{Rollout, RolloutNode};
use aurum::fleet::nodeset;
use aurum::fleet::rollout::{self, assign_waves, parse_threshold, parse_waves};
use aurum::format::rollout::{NodeStep, Plan, RolloutState};
use aurum::repo::{Lock, Repository};

/// Roll a revision out to a node set in waves, each gated by the nodes' health checks.
///
/// `start` cuts the nodes into a canary and waves, updates each node over ssh from the server
/// (`aurum updateclient`; with --stage, every node of a wave stages the revision before any
/// activates it), runs its health checks (`aurum health`), rolls an unhealthy node
/// back on the spot, stops and rolls the wave back when failures exceed --max-failed, and moves
/// the image's last-known-good tag to the revision when the last wave passes. With --slurm,
/// each node is drained in Slurm and touched only once no job runs on it. The rollout is
/// kept in the catalog: `status` shows it while it runs, `pause`/`resume`/`abort` steer it,
/// and `resume` drives one on whose master restarted.
///
/// Diskless nodes (`--rootfs memory` in the node database) are updated by a reboot: their
/// entry is set to the revision, they are reset through their BMC (or rebooted over ssh with
/// --reboot-command), and they must report the boot and a passing health check within
/// --boot-timeout; if not, their entry goes back to the revision they booted before and they
/// are rebooted into it (state `fell-back`, with the reason). A wave may mix both kinds.
#[derive(Args)]
pub struct RolloutArgs {
    #[command(subcommand)]
    command: RolloutCommand,
}

#[derive(Subcommand)]
enum RolloutCommand {
    Start(Box<StartArgs>),
    Status(StatusArgs),
    Pause(IdArgs),
    Resume(IdArgs),
    Abort(IdArgs),
}

/// Start a rollout and drive it to its end (or until paused).
///
/// Example: aurum rollout start compute@7 @compute --canary 1 --waves 25%,100% --max-failed 1
#[derive(Args)]
struct StartArgs {
    /// The revision (IMAGE@N, IMAGE:TAG, IMAGE).
    #[arg(value_name = "REV")]
    rev: String,
    /// The nodes (ClusterShell syntax; @GROUP, @all from the node database).
    nodeset: String,
    /// Nodes in the first wave, the canary, alone before any other (0: no canary).
    #[arg(long, default_value_t = 1, value_name = "N")]
    canary: usize,
    /// The waves after the canary: cumulative shares (10%,50%,100%) or counts (2,10,all).
    #[arg(long, default_value = "100%", value_name = "LIST")]
    waves: String,
    /// Failed nodes tolerated over the whole rollout (a count, or a share: 10%); one more
    /// stops it and rolls the wave back.
    #[arg(long, default_value = "0", value_name = "N|P%")]
    max_failed: String,
    /// Nodes of a wave updated at once (0: the whole wave).
    #[arg(long, default_value_t = 0, value_name = "N")]
    max_unavailable: usize,
    /// Seconds to wait between waves (a window to pause or abort in).
    #[arg(long, default_value_t = 0, value_name = "SECONDS")]
    pause_between: u64,
    /// Where nodes reach `aurum serve`. Default: `url` in aurum.toml.
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// The root aurum manages on each node.
    #[arg(long, default_value = "/", value_name = "DIR")]
    node_root: String,
    /// The ssh command and its options, split as a shell would.
    #[arg(long, env = "AURUM_SSH", default_value = "ssh", value_name = "COMMAND")]
    ssh: String,
    /// Seconds ssh waits for a node to answer.
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    connect_timeout: u64,
    /// The longest one node's update (or rollback) may take.
    #[arg(long, default_value_t = 1800, value_name = "SECONDS")]
    update_timeout: u64,
    /// The longest one health check may take on a node.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    health_timeout: u64,
    /// The aurum command on the nodes.
    #[arg(long, default_value = "aurum", value_name = "COMMAND")]
    node_aurum: String,
    /// Stage the revision on every node of a wave first (`updateclient --stage`, while they
    /// keep working), then activate it on each (`--activate`, at most --max-unavailable at
    /// once): a node is down only for its activation. A node whose staging fails counts as
    /// failed and is not touched.
    #[arg(long)]
    stage: bool,
    /// Take each node out of Slurm for its update, so that none is touched under a job: the
    /// wave stages the revision while jobs run (as --stage), then each node is drained
    /// (`scontrol update state=drain reason="aurum: rollout ID: REV"`), waited for until no
    /// job runs on it, activated (`updateclient --activate --if-staged`), rebooted with
    /// --reboot-command if given, checked with `aurum health --slurm`, and resumed. A node
    /// whose activation or checks fail stays drained with aurum's reason and is not rolled
    /// back; neither --max-failed nor abort rolls nodes back. Slurm's node names must be
    /// aurum's; scontrol and squeue run here, reaching slurmctld as Slurm's own
    /// configuration says (SLURM_CONF, or /etc/slurm/slurm.conf).
    #[arg(long)]
    slurm: bool,
    /// With --slurm: the longest a drained node's jobs may run on (0: no limit); past it the
    /// node is resumed, not updated (its stage freed), and counts as failed.
    #[arg(long, default_value_t = 0, value_name = "SECONDS", requires = "slurm")]
    drain_timeout: u64,
    /// The command that reboots a node, run on it over ssh: with --slurm, after its
    /// activation (e.g. `systemctl reboot`; the node is back when its slurmd has started
    /// again; default: no reboot, the revision is activated in place); on a diskless node
    /// without a BMC, to boot it into the revision (default: `systemctl reboot || reboot`).
    #[arg(long, value_name = "COMMAND")]
    reboot_command: Option<String>,
    /// The longest a rebooted node may take to come back: in Slurm (--slurm), or, for a
    /// diskless node, to report its boot and the health of the revision (else it falls back).
    #[arg(long, default_value_t = 600, value_name = "SECONDS")]
    boot_timeout: u64,
    /// Print the rollout's end as JSON (what `rollout status ID --json` prints).
    #[arg(long)]
    json: bool,
}

/// Show rollouts: all of them, or one with its nodes and log.
#[derive(Args)]
struct StatusArgs {
    /// The rollout.
    id: Option<i64>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// A rollout's number, as `rollout status` lists it.
#[derive(Args)]
struct IdArgs {
    id: i64,
    /// Print the rollout afterwards as JSON.
    #[arg(long)]
    json: bool,
}

pub fn exec(g: &Global, a: RolloutArgs) -> anyhow::Result<()> {
    match a.command {
        RolloutCommand::Start(a) => start(g, *a),
        RolloutCommand::Status(a) => status(g, a),
        RolloutCommand::Pause(a) => steer(g, a, RolloutState::Paused),
        RolloutCommand::Resume(a) => resume(g, a),
        RolloutCommand::Abort(a) => steer(g, a, RolloutState::Aborted),
    }
}

fn open(g: &Global) -> aurum::Result<Repository> {
    Repository::open(&g.repo, Lock::Shared)
}

fn start(g: &Global, a: StartArgs) -> anyhow::Result<()> {
    let mut repo = open(g)?;
    let rev = repo.resolve(&a.rev)?;
    let targets = nodeset::resolve(&a.nodeset, &repo.catalog.inventory()?)?;
    if a.slurm {
        let names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
        aurum::fleet::slurm::check_known(&names)?;
    }
    let (waves, count) = assign_waves(targets.len(), a.canary, &parse_waves(&a.waves)?);
    let server = g
        .config
        .url(a.server)
        .ok_or_else(|| {
            aurum::Error::Invalid(format!(
                "give where nodes reach `aurum serve` with --server URL, or set `url` in {}",
                g.config.dir.join(aurum::config::SERVER_FILE).display()
            ))
        })?
        .value;
    let plan = Plan {
        server,
        node_root: a.node_root,
        max_failed: parse_threshold(&a.max_failed)?,
        max_unavailable: a.max_unavailable,
        pause_between: a.pause_between,
        ssh: shell_words::split(&a.ssh)
            .map_err(|e| aurum::error::invalid(format!("--ssh `{}`: {e}", a.ssh)))?,
        connect_timeout: a.connect_timeout.max(1),
        update_timeout: a.update_timeout.max(1),
        health_timeout: a.health_timeout.max(1),
        aurum: a.node_aurum,
        waves: count,
        canary: a.canary > 0,
        stage: a.stage || a.slurm,
        slurm: a.slurm,
        drain_timeout: a.drain_timeout,
        reboot_command: a.reboot_command,
        boot_timeout: a.boot_timeout.max(1),
    };
    let nodes: Vec<(String, String, usize)> = targets
        .into_iter()
        .zip(waves)
        .map(|(t, w)| (t.name, t.host, w))
        .collect();
    let id = repo.catalog.create_rollout(
        &rev.image,
        rev.number,
        &rev.id.hex(),
        &a.nodeset,
        &plan,
        &nodes,
    )?;
    say!(
        "aurum: rollout {id}: {} to {} nodes in {count} waves",
        rev.name(),
        nodes.len()
    );
    drive(g, &mut repo, id, a.json)
}

/// Drives rollout `id`, then prints where it ended; exit status 1 unless done or paused.
fn drive(g: &Global, repo: &mut Repository, id: i64, json: bool) -> anyhow::Result<()> {
    let progress = g.progress();
    let say_line = |line: &str| {
        say!("aurum: {line}");
    };
    let end = rollout::drive(repo, id, progress.as_ref(), &say_line)?;
    if json {
        print_rollout_json(repo, id)?;
    } else {
        print_rollout(repo, id)?;
    }
    if matches!(end, RolloutState::Failed | RolloutState::Aborted) {
        std::process::exit(1);
    }
    Ok(())
}

fn resume(g: &Global, a: IdArgs) -> anyhow::Result<()> {
    let mut repo = open(g)?;
    let r = repo.catalog.rollout(a.id)?;
    if r.state.is_final() {
        return Err(aurum::error::invalid(format!(
            "rollout {} is {}: start a new one with `aurum rollout start`",
            a.id, r.state
        ))
        .into());
    }
    drive(g, &mut repo, a.id, a.json)
}

/// `pause` and `abort`: with a driver running, a request it carries out between nodes; with
/// none, carried out here.
fn steer(g: &Global, a: IdArgs, to: RolloutState) -> anyhow::Result<()> {
    let mut repo = open(g)?;
    let r = repo.catalog.rollout(a.id)?;
    if r.state.is_final() {
        return Err(
            aurum::error::invalid(format!("rollout {} is already {}", a.id, r.state)).into(),
        );
    }
    let done = rollout::steer(&mut repo, a.id, to, &|line: &str| say!("aurum: {line}"))?;
    say!("aurum: rollout {}: {done}", a.id);
    if a.json {
        print_rollout_json(&repo, a.id)?;
    }
    Ok(())
}

fn status(g: &Global, a: StatusArgs) -> anyhow::Result<()> {
    let repo = open(g)?;
    match a.id {
        Some(id) if a.json => print_rollout_json(&repo, id),
        Some(id) => print_rollout(&repo, id),
        None => {
            let all = repo.catalog.rollouts()?;
            if a.json {
                return print_json(&all);
            }
            for r in &all {
                println!("{}", headline(r));
            }
            Ok(())
        }
    }
}

fn headline(r: &Rollout) -> String {
    format!(
        "{:>4}  {:<9} {}@{} -> {}  wave {} of {}  {}  ({})",
        r.id,
        r.state,
        r.image,
        r.number,
        r.nodeset,
        r.wave,
        r.plan.waves,
        human_time(r.updated),
        r.reason
    )
}

fn print_rollout_json(repo: &Repository, id: i64) -> anyhow::Result<()> {
    print_json(&serde_json::json!({
        "rollout": repo.catalog.rollout(id)?,
        "nodes": repo.catalog.rollout_nodes(id)?,
        "events": repo.catalog.rollout_events(id)?,
    }))
}

fn print_rollout(repo: &Repository, id: i64) -> anyhow::Result<()> {
    let r = repo.catalog.rollout(id)?;
    let nodes = repo.catalog.rollout_nodes(id)?;
    println!("{}", headline(&r));
    for wave in 0..r.plan.waves {
        let of_wave: Vec<&RolloutNode> = nodes.iter().filter(|n| n.wave == wave).collect();
        let name = if wave == 0 && r.plan.canary {
            "canary"
        } else {
            ""
        };
        let mut parts = Vec::new();
        for step in NodeStep::ALL {
            let names: Vec<&str> = of_wave
                .iter()
                .filter(|n| n.state == *step)
                .map(|n| n.node.as_str())
                .collect();
            if !names.is_empty() {
                parts.push(format!("{step} {}", nodeset::fold(names)));
            }
        }
        println!("  wave {wave:<2} {name:<7} {}", parts.join(", "));
    }
    for n in nodes
        .iter()
        .filter(|n| matches!(n.state, NodeStep::Failed | NodeStep::FellBack))
    {
        println!("  {}: {}", n.node, n.detail);
    }
    Ok(())
}
