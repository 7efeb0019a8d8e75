//! A rollout as the catalog keeps it (tables `rollouts`, `rollout_nodes`, `rollout_events`,
//! schema 5): its states, each node's state, and the plan, stored as JSON in `rollouts.plan`
//! (fields added later must be optional so older rows read).

use serde::{Deserialize, Serialize};

named_enum! {
    /// Where a rollout stands.
    pub enum RolloutState {
        /// Being driven (or its driver died: `rollout resume` drives it on).
        Running = "running",
        /// Stopped between nodes at the administrator's request; `rollout resume` goes on.
        Paused = "paused",
        /// Every wave passed; the image's last-known-good tag points at the revision.
        Done = "done",
        /// Stopped by its failure threshold; the failing wave was rolled back.
        Failed = "failed",
        /// Stopped by the administrator; the wave in progress was rolled back.
        Aborted = "aborted",
    }
}

impl RolloutState {
    /// Whether the rollout is over (nothing more will be done).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RolloutState::Done | RolloutState::Failed | RolloutState::Aborted
        )
    }
}

named_enum! {
    /// Where one node of a rollout stands.
    pub enum NodeStep {
        Pending = "pending",
        /// Drained in Slurm (a `--slurm` rollout); waiting for its jobs to end.
        Draining = "draining",
        /// Its update was started.
        Updating = "updating",
        /// Updated; its health checks run.
        Checking = "checking",
        /// Updated and healthy.
        Done = "done",
        /// Unreachable, its update failed, or unhealthy (then rolled back when it could be).
        Failed = "failed",
        /// Healthy but rolled back with its wave (the rollout failed or was aborted).
        RolledBack = "rolled-back",
        /// A diskless node that was unhealthy on the revision or did not come back from its
        /// reboot: its node database entry was set back to its last-known-good revision and
        /// it was rebooted into it and seen healthy there (else the step is `failed`). Counts
        /// as a failure.
        FellBack = "fell-back",
    }
}

/// How a diskless node without a BMC is rebooted over ssh when the plan names no command.
pub const DISKLESS_REBOOT: &str = "systemctl reboot || reboot";

/// How many failures a rollout tolerates: a count, or a share of its nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Threshold {
    Count(usize),
    Percent(u32),
}

impl Default for Threshold {
    /// No failure tolerated.
    fn default() -> Threshold {
        Threshold::Count(0)
    }
}

impl Threshold {
    /// The largest number of failed nodes allowed out of `total`.
    pub fn allowed(self, total: usize) -> usize {
        match self {
            Threshold::Count(n) => n,
            Threshold::Percent(p) => total * p as usize / 100,
        }
    }
}

/// What a rollout was asked to do: everything `rollout resume` needs to drive it on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The server nodes update from.
    pub server: String,
    /// The nodes' root (`/`, or another directory aurum manages).
    pub node_root: String,
    pub max_failed: Threshold,
    /// Nodes of a wave updated at once.
    pub max_unavailable: usize,
    /// Seconds between waves.
    pub pause_between: u64,
    /// The ssh command (split) the master reaches nodes with.
    pub ssh: Vec<String>,
    pub connect_timeout: u64,
    /// Seconds one node's update may take.
    pub update_timeout: u64,
    /// Seconds one health check may take.
    pub health_timeout: u64,
    /// The aurum command on the nodes.
    pub aurum: String,
    /// The number of waves (the canary, when there is one, is wave 0).
    pub waves: usize,
    /// Whether wave 0 is a canary.
    pub canary: bool,
    /// Stage the revision on every node of a wave (`updateclient --stage`) before any of
    /// them activates it (`--activate`), so that a node is down only while it activates.
    /// Absent from rollouts started before it existed: off.
    #[serde(default)]
    pub stage: bool,
    /// Take each node out of Slurm for its activation: drain it, wait until no job runs on
    /// it, activate (and reboot), check, resume. Implies `stage`. Absent: off.
    #[serde(default)]
    pub slurm: bool,
    /// Seconds a drained node's jobs may take to end (0: no limit).
    #[serde(default)]
    pub drain_timeout: u64,
    /// The command run on a node after its activation to reboot it (`--slurm`); the driver
    /// then waits for its slurmd to start again. None: the revision is activated in place.
    /// A diskless node without a BMC is rebooted with it too (None there:
    /// [`DISKLESS_REBOOT`]).
    #[serde(default)]
    pub reboot_command: Option<String>,
    /// Seconds a rebooted node has to come back in Slurm, or a diskless node to report its
    /// boot and its health.
    #[serde(default)]
    pub boot_timeout: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_round_trip_and_thresholds_count() {
        let p = Plan {
            server: "http://master:8035".into(),
            node_root: "/".into(),
            max_failed: Threshold::Percent(10),
            max_unavailable: 4,
            pause_between: 0,
            ssh: vec!["ssh".into()],
            connect_timeout: 10,
            update_timeout: 600,
            health_timeout: 60,
            aurum: "aurum".into(),
            waves: 3,
            canary: true,
            stage: true,
            slurm: true,
            drain_timeout: 0,
            reboot_command: Some("systemctl reboot".into()),
            boot_timeout: 600,
        };
        let text = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<Plan>(&text).unwrap(), p);
        assert_eq!(Threshold::Percent(10).allowed(25), 2);
        assert_eq!(Threshold::Count(1).allowed(25), 1);
        assert_eq!(RolloutState::parse("rolled-back"), None);
        assert_eq!(NodeStep::parse("rolled-back"), Some(NodeStep::RolledBack));
    }
}
