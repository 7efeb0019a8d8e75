//! Slurm, through its own client commands (`scontrol`, `squeue`, from PATH, with the
//! configuration Slurm itself finds: SLURM_CONF or /etc/slurm/slurm.conf): a node's state,
//! draining it with a reason, resuming it, and the jobs running on it.
//!
//! aurum's reasons all begin with [`REASON_PREFIX`], so that an administrator (and aurum
//! itself) tells its drains from others: a rollout drains with `aurum: rollout N: ...`, a
//! failed health check with `aurum: health: ...`. aurum resumes only nodes it drained itself.

use std::process::{Command, Stdio};

use crate::error::{Error, Result};

/// What every drain reason aurum writes begins with.
pub const REASON_PREFIX: &str = "aurum:";

/// What `aurum health --slurm` drains a node with when a required check fails.
pub const HEALTH_REASON: &str = "aurum: health:";

/// A node as `scontrol show node` describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct NodeState {
    pub name: String,
    /// The state with its flags, as Slurm writes it: `IDLE`, `MIXED+DRAIN`, `IDLE+DRAIN`,
    /// `DOWN+NOT_RESPONDING`...
    pub state: String,
    /// Why it is drained or down (empty when it is not), without Slurm's `[user@time]`.
    pub reason: String,
    /// When its slurmd last started: a node that rebooted has a later one.
    pub slurmd_start: String,
}

impl NodeState {
    fn words(&self) -> impl Iterator<Item = &str> {
        self.state.split('+')
    }

    /// Whether no new job is given to it (drained, or draining while jobs end).
    pub fn drained(&self) -> bool {
        self.words().any(|w| w == "DRAIN")
    }

    /// Whether no job runs on it: idle (or down), nothing completing.
    pub fn no_job(&self) -> bool {
        let base = self.words().next().unwrap_or("");
        matches!(base, "IDLE" | "DOWN" | "FUTURE")
            && !self.words().any(|w| w == "COMPLETING" || w == "ALLOCATED")
    }

    /// Whether its slurmd answers slurmctld.
    pub fn responding(&self) -> bool {
        !self.state.starts_with("DOWN") && !self.words().any(|w| w == "NOT_RESPONDING")
    }

    /// Whether aurum drained it (its reason is one of aurum's).
    pub fn drained_by_aurum(&self) -> bool {
        self.drained() && self.reason.starts_with(REASON_PREFIX)
    }
}

/// Runs a Slurm command to its end; its standard output, or an error with what it said.
fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            Error::Tool(format!(
                "{program}: {e}; install Slurm's client commands (Debian: slurm-client) on this machine"
            ))
        })?;
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stderr);
        let said = said
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        return Err(Error::Tool(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            said.trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Reads `scontrol show node --oneliner` for one node.
pub fn parse_node(text: &str) -> Option<NodeState> {
    let line = text.lines().find(|l| l.starts_with("NodeName="))?;
    let field = |key: &str| {
        line.split(' ')
            .find_map(|w| w.strip_prefix(key).and_then(|w| w.strip_prefix('=')))
            .unwrap_or("")
            .to_string()
    };
    // The reason has spaces; it runs to Slurm's ` [user@time]` or the end of the line.
    let reason = match line.find(" Reason=") {
        Some(at) => {
            let rest = &line[at + " Reason=".len()..];
            let end = rest.rfind(" [").unwrap_or(rest.len());
            rest[..end].trim().to_string()
        }
        None => String::new(),
    };
    Some(NodeState {
        name: field("NodeName"),
        state: field("State"),
        reason,
        slurmd_start: field("SlurmdStartTime"),
    })
}

/// Every node slurmctld knows.
pub fn nodes() -> Result<Vec<NodeState>> {
    let text = run("scontrol", &["show", "node", "--oneliner"])?;
    Ok(text.lines().filter_map(parse_node).collect())
}

/// Refuses a `--slurm` rollout of `names` when Slurm cannot be asked or lacks one of them,
/// saying which: checked before anything is staged or drained.
pub fn check_known(names: &[&str]) -> Result<()> {
    let known = nodes().map_err(|e| {
        Error::Invalid(format!(
            "--slurm: Slurm cannot be asked here: {e}; install Slurm's client commands (slurm-client) and its configuration (SLURM_CONF, or /etc/slurm/slurm.conf) on this machine"
        ))
    })?;
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| !known.iter().any(|k| k.name == *n))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "--slurm: Slurm knows no node {}; a --slurm rollout needs Slurm's node names to be aurum's (`sinfo -N` lists Slurm's)",
        missing.join(", ")
    )))
}

/// Node `name` as slurmctld sees it.
pub fn node(name: &str) -> Result<NodeState> {
    let text = run("scontrol", &["show", "node", name, "--oneliner"])?;
    parse_node(&text).ok_or_else(|| {
        Error::NotFound(format!(
            "Slurm knows no node {name} (`scontrol show node {name}` said: {})",
            text.trim()
        ))
    })
}

/// Drains node `name` with `reason` (running jobs go on; no new one starts there).
pub fn drain(name: &str, reason: &str) -> Result<()> {
    let reason = format!("reason={reason}");
    run(
        "scontrol",
        &[
            "update",
            &format!("nodename={name}"),
            "state=drain",
            &reason,
        ],
    )
    .map(drop)
}

/// Returns node `name` to service.
pub fn resume(name: &str) -> Result<()> {
    run(
        "scontrol",
        &["update", &format!("nodename={name}"), "state=resume"],
    )
    .map(drop)
}

/// The ids of the jobs running (or starting, or ending) on node `name`.
pub fn jobs_on(name: &str) -> Result<Vec<String>> {
    let text = run(
        "squeue",
        &[
            "--noheader",
            "--nodelist",
            name,
            "--states",
            "RUNNING,CONFIGURING,COMPLETING,SUSPENDED,STOPPED",
            "--format",
            "%A",
        ],
    )?;
    Ok(text
        .split_whitespace()
        .map(str::to_string)
        .collect::<Vec<_>>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_lines_read_with_their_reason() {
        let line = "NodeName=n02 Arch=x86_64 CoresPerSocket=1 CPUAlloc=0 State=MIXED+DRAIN ThreadsPerCore=1 \
            BootTime=2026-12-06T10:00:00 SlurmdStartTime=2026-12-06T20:01:02 LastBusyTime=2026-12-06T20:01:05 \
            CapWatts=n/a Reason=aurum: rollout 3: img@2 [root@2026-12-06T20:02:00]\n";
        let n = parse_node(line).unwrap();
        assert_eq!(n.name, "n02");
        assert_eq!(n.state, "MIXED+DRAIN");
        assert_eq!(n.reason, "aurum: rollout 3: img@2");
        assert_eq!(n.slurmd_start, "2026-12-06T20:01:02");
        assert!(n.drained() && n.drained_by_aurum() && !n.no_job() && n.responding());
        let idle =
            parse_node("NodeName=n01 State=IDLE+DRAIN Reason=maintenance [admin@x]").unwrap();
        assert!(idle.drained() && idle.no_job() && !idle.drained_by_aurum());
        let down = parse_node("NodeName=n03 State=IDLE+NOT_RESPONDING").unwrap();
        assert!(!down.responding() && !down.drained() && down.reason.is_empty());
        assert!(!parse_node("NodeName=n04 State=IDLE+COMPLETING+DRAIN")
            .unwrap()
            .no_job());
        assert_eq!(parse_node("no such node"), None);
    }
}
