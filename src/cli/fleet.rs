//! `exec` and `copy`: a command or files on every node of a node set, over ssh.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::{print_json, say, Global};
use aurum::fleet::exec::{self, Job, NodeResult, Options, Report, Status};
use aurum::fleet::fold;
use aurum::fleet::nodeset::{self, Target};

/// How the nodes are reached; shared by exec and copy.
#[derive(Args)]
pub struct Reach {
    /// Nodes worked on at once.
    #[arg(short, long, default_value_t = 64, value_name = "N")]
    fanout: usize,
    /// Give up on a node whose command has not ended after SECONDS (its ssh is killed; the
    /// node is reported as timed out). Default: no limit.
    #[arg(short = 't', long, value_name = "SECONDS")]
    timeout: Option<u64>,
    /// Seconds ssh waits for a node to answer.
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    connect_timeout: u64,
    /// The ssh command and its options, split as a shell would, like rsync's -e
    /// (e.g. "ssh -i /root/.ssh/cluster -l root").
    #[arg(long, env = "AURUM_SSH", default_value = "ssh", value_name = "COMMAND")]
    ssh: String,
    /// Relay through these nodes (a node set), as rgang does: the set is cut into one
    /// contiguous slice per relay, and each relay runs aurum there on its slice. Relays need
    /// aurum, and ssh access to their slice (see --relay-ssh).
    #[arg(long, value_name = "NODESET")]
    tree: Option<String>,
    /// The ssh command relays use to reach their nodes.
    #[arg(long, default_value = "ssh", value_name = "COMMAND")]
    relay_ssh: String,
    /// The aurum command on relays.
    #[arg(long, default_value = "aurum", value_name = "COMMAND")]
    relay_aurum: String,
    /// Addresses to use instead of the node database's, NAME=HOST,... (what a relay is given).
    #[arg(long, hide = true, value_name = "NAME=HOST,...")]
    hosts: Option<String>,
    /// Print each node's result as JSON (status, exit status, stdout, stderr, seconds).
    #[arg(long)]
    json: bool,
}

/// Run a command on every node of a node set, over ssh.
///
/// NODESET uses ClusterShell's syntax: n[01-64,70], n[1-4]-ib, @GROUP (the node database's
/// groups; @all is every node), and the operators , (union), ! (difference), & (intersection)
/// and ^. Nodes of the node database are reached at their recorded address, other names as ssh
/// resolves them. Identical outputs are printed once under the folded set of the nodes that
/// gave them, as clubak -c does; then one line per kind of failure. The exit status is the
/// number of nodes that failed, timed out or could not be reached (at most 125): 0 when all
/// succeeded.
///
/// Example: aurum exec 'n[01-64]' -- uname -r
#[derive(Args)]
pub struct ExecArgs {
    /// The nodes.
    nodeset: String,
    #[command(flatten)]
    reach: Reach,
    /// The command, run by each node's login shell (words are joined with spaces, as ssh does).
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

/// Copy a file or directory to every node of a node set, over ssh.
///
/// SRC lands in the directory DEST on each node (created when missing) with its owners,
/// modes, times, ACLs, xattrs and hardlinks (tar at both ends). The node set, output and exit
/// status are as for `aurum exec`.
///
/// Example: aurum copy @compute /etc/slurm/slurm.conf /etc/slurm
#[derive(Args)]
pub struct CopyArgs {
    /// The nodes.
    nodeset: String,
    /// The file or directory to copy.
    src: PathBuf,
    /// The directory on the nodes that receives it.
    dest: String,
    #[command(flatten)]
    reach: Reach,
    /// Read what to copy as a tar archive from FILE (- for stdin), SRC naming the entry in it
    /// (how a relay receives a copy).
    #[arg(long, hide = true, value_name = "FILE")]
    from_archive: Option<PathBuf>,
}

pub fn exec(g: &Global, a: ExecArgs) -> anyhow::Result<()> {
    let job = Job::Command(a.command.join(" "));
    run(g, &a.nodeset, &a.reach, &job)
}

pub fn copy(g: &Global, a: CopyArgs) -> anyhow::Result<()> {
    let received;
    let src = match &a.from_archive {
        None => a.src.clone(),
        Some(file) => {
            let name = a.src.to_string_lossy();
            received = if file.as_os_str() == "-" {
                exec::receive(std::io::stdin().lock(), &name)?
            } else {
                let f = std::fs::File::open(file).map_err(|e| aurum::Error::Io {
                    path: file.clone(),
                    source: e,
                })?;
                exec::receive(f, &name)?
            };
            received.1.clone()
        }
    };
    let job = Job::Copy {
        src,
        dest: a.dest.clone(),
    };
    run(g, &a.nodeset, &a.reach, &job)
}

/// The targets `set` names: with --hosts, those addresses; else the node database's, when
/// there is a repository.
fn targets(g: &Global, set: &str, hosts: Option<&str>) -> anyhow::Result<Vec<Target>> {
    if let Some(hosts) = hosts {
        let map: std::collections::HashMap<&str, &str> =
            hosts.split(',').filter_map(|p| p.split_once('=')).collect();
        return Ok(nodeset::expand(set)?
            .into_iter()
            .map(|name| Target {
                host: map
                    .get(name.as_str())
                    .map_or(name.clone(), |h| h.to_string()),
                name,
            })
            .collect());
    }
    let inventory = if g.repo.join("FORMAT").exists() {
        super::open(g)?.catalog.inventory()?
    } else {
        Vec::new()
    };
    Ok(nodeset::resolve(set, &inventory)?)
}

fn run(g: &Global, set: &str, reach: &Reach, job: &Job) -> anyhow::Result<()> {
    let targets = targets(g, set, reach.hosts.as_deref())?;
    let relays = match &reach.tree {
        Some(tree) => targets_of_tree(g, tree)?,
        None => Vec::new(),
    };
    let ssh = shell_words::split(&reach.ssh)
        .map_err(|e| aurum::error::invalid(format!("--ssh `{}`: {e}", reach.ssh)))?;
    let opts = Options {
        ssh,
        fanout: reach.fanout.max(1),
        timeout: reach.timeout.map(Duration::from_secs),
        connect_timeout: reach.connect_timeout.max(1),
        relays,
        relay_ssh: reach.relay_ssh.clone(),
        relay_aurum: reach.relay_aurum.clone(),
    };
    let progress = g.progress();
    let results = exec::run(&targets, job, &opts, progress.as_ref())?;
    let report = Report::new(results);
    let failed = report.failed;
    if reach.json {
        print_json(&report)?;
    } else {
        show(&report.results);
    }
    if failed > 0 {
        std::process::exit(failed.min(125) as i32);
    }
    Ok(())
}

fn targets_of_tree(g: &Global, tree: &str) -> anyhow::Result<Vec<Target>> {
    let inventory = if g.repo.join("FORMAT").exists() {
        super::open(g)?.catalog.inventory()?
    } else {
        Vec::new()
    };
    Ok(nodeset::resolve(tree, &inventory)?)
}

/// Folded outputs (stdout on stdout, stderr on stderr), then a line per kind of failure.
fn show(results: &[NodeResult]) {
    let out = fold::fold(
        results
            .iter()
            .filter(|r| !r.stdout.is_empty())
            .map(|r| (r.node.as_str(), r.stdout.as_bytes())),
    );
    print!("{}", fold::render(&out));
    let err = fold::fold(
        results
            .iter()
            .filter(|r| !r.stderr.is_empty() && r.status != Status::Unreachable)
            .map(|r| (r.node.as_str(), r.stderr.as_bytes())),
    );
    if !err.is_empty() && !super::quiet() {
        eprint!("{}", fold::render(&err));
    }
    let problems: Vec<(String, &str)> = results
        .iter()
        .filter(|r| r.status != Status::Ok)
        .map(|r| (r.problem(), r.node.as_str()))
        .collect();
    let mut kinds: Vec<&String> = problems.iter().map(|(p, _)| p).collect();
    kinds.sort();
    kinds.dedup();
    for kind in kinds {
        let nodes = nodeset::fold(problems.iter().filter(|(p, _)| p == kind).map(|(_, n)| *n));
        eprintln!("aurum: {nodes}: {kind}");
    }
    let ok = results.iter().filter(|r| r.status == Status::Ok).count();
    say!("aurum: {ok} of {} nodes succeeded", results.len());
}
