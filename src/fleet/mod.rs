//! Working on many nodes at once: node sets (ClusterShell's syntax, with the node database's
//! groups), commands and file copies over the administrator's own ssh with a fan-out limit,
//! per-node timeouts and relays, and output folded the way `clubak` folds it.
//!
//! This is the fleet layer, beside [`crate::install`] and [`crate::netboot`]: it reads the node
//! database ([`crate::catalog`]) to find addresses and groups, and runs nothing of its own on a
//! node but `ssh` (and, for relays, the same aurum binary there).

pub mod diskless;
pub mod exec;
pub mod fold;
pub mod nodeset;
pub mod power;
pub mod reinstall;
pub mod rollout;
pub mod slurm;
