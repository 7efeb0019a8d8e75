//! What nodes tell `aurum serve`: the report of an update, rollback or install
//! (`POST /api/v1/reports`, a JSON [`NodeReport`]) and each phase of an install as it happens
//! (`POST /api/v1/install/NODE`, a JSON [`PhaseReport`]).
//!
//! Both are single JSON objects. The server refuses unknown fields, so a node never believes a
//! field was recorded when it was not; fields added later must be optional (`#[serde(default)]`)
//! so that older nodes' reports still read. The version is the `v1` of the URLs.

use serde::{Deserialize, Serialize};

use crate::error::{invalid, Result};

/// Version of both reports: the `v1` in `/api/v1/reports` and `/api/v1/install/NODE`.
pub const VERSION: u32 = 1;

named_enum! {
    /// How a node's update, rollback or install ended.
    pub enum Outcome {
        Ok = "ok",
        Failed = "failed",
    }
}

named_enum! {
    /// What a node reports having done.
    pub enum NodeAction {
        Updateclient = "updateclient",
        Rollback = "rollback",
        Install = "install",
        /// Its health checks ran (`aurum health --server`): result ok = healthy.
        Health = "health",
        /// It staged a revision (`updateclient --stage`): the revision is the staged one.
        Stage = "stage",
        /// It booted (`aurum boot`), or a trial boot's health checks blessed the revision or
        /// sent it back (`aurum health`): the revision is the one it runs; see `boot`.
        Boot = "boot",
    }
}

named_enum! {
    /// A phase of an install, as a node reports it and the catalog keeps it.
    pub enum InstallPhase {
        Facts = "facts",
        Class = "class",
        Plan = "plan",
        Revision = "revision",
        Partition = "partition",
        Mkfs = "mkfs",
        Transfer = "transfer",
        Overrides = "overrides",
        Hooks = "hooks",
        Bootloader = "bootloader",
        Done = "done",
        Failed = "failed",
    }
}

impl InstallPhase {
    /// Whether the install is over (`done` or `failed`).
    pub fn is_final(self) -> bool {
        matches!(self, InstallPhase::Done | InstallPhase::Failed)
    }
}

/// What a node tells the server after an update, rollback or install.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeReport {
    pub hostname: String,
    pub image: Option<String>,
    /// Revision id (hex) the node runs after the action.
    pub revision: Option<String>,
    pub action: NodeAction,
    pub result: Outcome,
    pub bytes: u64,
    pub seconds: f64,
    #[serde(default)]
    pub detail: String,
    /// For action `boot`: what the boot came to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<BootReport>,
}

/// What a node reports of a boot (action `boot`): which revision booted, whether it fell
/// back from a revision on trial, and why.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BootReport {
    pub outcome: crate::format::node::BootOutcome,
    /// The node went back to its last-known-good revision (outcome `fell-back`).
    pub fell_back: bool,
    /// The revision the node runs after the boot, as people read it (`IMAGE@N SHORT-ID`).
    pub booted: Option<String>,
    /// The revision on trial (a trial boot, a blessed one, or the one fallen back from).
    #[serde(default)]
    pub trial: Option<String>,
    /// Boots left on the boot loader's counter, on a trial boot.
    #[serde(default)]
    pub tries_left: Option<u32>,
    /// Why the node fell back.
    #[serde(default)]
    pub reason: String,
}

impl NodeReport {
    /// The request body.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("strings and numbers serialise")
    }

    /// Reads a request body.
    pub fn decode(body: &[u8]) -> Result<NodeReport> {
        serde_json::from_slice(body).map_err(|e| invalid(format!("not a node report: {e}")))
    }
}

/// One install phase of one node, as POSTed to the server.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PhaseReport {
    pub phase: InstallPhase,
    /// Human-readable; for `failed`, the error and the last lines of output.
    pub detail: String,
    /// The revision being installed, once resolved, as people read it: `IMAGE@N SHORT-ID`,
    /// `IMAGE SHORT-ID` or `SHORT-ID` (see [`PhaseReport::image_and_id`]).
    #[serde(default)]
    pub revision: Option<String>,
    /// Bytes transferred and to transfer (`transfer` only).
    #[serde(default)]
    pub done: Option<u64>,
    #[serde(default)]
    pub total: Option<u64>,
}

impl PhaseReport {
    /// The request body.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("strings and numbers serialise")
    }

    /// Reads a request body.
    pub fn decode(body: &[u8]) -> Result<PhaseReport> {
        serde_json::from_slice(body)
            .map_err(|e| invalid(format!("not an install phase report: {e}")))
    }

    /// The image and (short) revision id a phase's `revision` names; `None` for a bare id,
    /// which names no image.
    pub fn image_and_id(revision: &str) -> Option<(&str, &str)> {
        let (name, id) = revision.split_once(' ')?;
        Some((name.split('@').next().unwrap_or(name), id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn node_reports_round_trip(
            hostname in "[a-z][a-z0-9-]{0,20}",
            image in prop::option::of("[a-z][a-z0-9.]{0,12}"),
            revision in prop::option::of("[0-9a-f]{64}"),
            action in prop::sample::select(NodeAction::ALL),
            result in prop::sample::select(Outcome::ALL),
            bytes: u64,
            ms in 0u32..10_000_000,
            detail in ".{0,40}",
        ) {
            let r = NodeReport {
                hostname, image, revision, action, result, bytes,
                // A binary fraction: exact through JSON.
                seconds: f64::from(ms) / 1024.0,
                detail,
                boot: None,
            };
            prop_assert_eq!(NodeReport::decode(&r.encode()).unwrap(), r);
        }

        #[test]
        fn phase_reports_round_trip(
            phase in prop::sample::select(InstallPhase::ALL),
            detail in ".{0,80}",
            revision in prop::option::of(".{0,30}"),
            done: Option<u64>,
            total: Option<u64>,
        ) {
            let r = PhaseReport { phase, detail, revision, done, total };
            prop_assert_eq!(PhaseReport::decode(&r.encode()).unwrap(), r);
        }

        #[test]
        fn any_bytes_decode_or_fail(data in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = (NodeReport::decode(&data), PhaseReport::decode(&data));
        }
    }

    #[test]
    fn names_are_todays_json_strings() {
        for &p in InstallPhase::ALL {
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{}\"", p.as_str()));
            assert_eq!(serde_json::from_str::<InstallPhase>(&json).unwrap(), p);
            assert_eq!(InstallPhase::parse(p.as_str()), Some(p));
        }
        assert_eq!(InstallPhase::parse("installing"), None);
        assert!(InstallPhase::Failed.is_final() && !InstallPhase::Mkfs.is_final());
        for (o, name) in [(Outcome::Ok, "ok"), (Outcome::Failed, "failed")] {
            assert_eq!(serde_json::to_string(&o).unwrap(), format!("\"{name}\""));
            assert_eq!(format!("{o:<7}|"), format!("{name:<7}|"));
        }
        assert!(serde_json::from_str::<Outcome>("\"partial\"").is_err());
        for &a in NodeAction::ALL {
            assert_eq!(serde_json::to_string(&a).unwrap(), format!("\"{a}\""));
            assert_eq!(NodeAction::parse(a.as_str()), Some(a));
        }
    }

    #[test]
    fn phase_revisions_name_their_image() {
        let f = PhaseReport::image_and_id;
        assert_eq!(f("compute@8 0c4e2a17"), Some(("compute", "0c4e2a17")));
        assert_eq!(f("compute 0c4e2a17"), Some(("compute", "0c4e2a17")));
        assert_eq!(f("0c4e2a17"), None);
        assert_eq!(f(""), None);
    }

    #[test]
    fn a_boot_report_round_trips() {
        let r = NodeReport {
            hostname: "n1".into(),
            image: Some("compute".into()),
            revision: Some("ab".repeat(32)),
            action: NodeAction::Boot,
            result: Outcome::Failed,
            bytes: 0,
            seconds: 0.0,
            detail: "fell back: health".into(),
            boot: Some(BootReport {
                outcome: crate::format::node::BootOutcome::FellBack,
                fell_back: true,
                booted: Some("compute@3 abababab".into()),
                trial: Some("compute@4 cdcdcdcd".into()),
                tries_left: None,
                reason: "compute@4 cdcdcdcd failed its health checks: 10-app (exit 1)".into(),
            }),
        };
        let json = String::from_utf8(r.encode()).unwrap();
        assert!(json.contains("\"fell_back\":true"), "{json}");
        assert_eq!(NodeReport::decode(json.as_bytes()).unwrap(), r);
    }

    #[test]
    fn unknown_fields_are_refused_and_optional_ones_may_be_missing() {
        let old = br#"{"hostname":"n1","image":null,"revision":null,"action":"install",
            "result":"ok","bytes":0,"seconds":0.5}"#;
        assert_eq!(NodeReport::decode(old).unwrap().detail, "");
        let extra = br#"{"phase":"done","detail":"","colour":"red"}"#;
        let err = PhaseReport::decode(extra).unwrap_err().to_string();
        assert!(err.contains("colour"), "{err}");
        let r = PhaseReport::decode(br#"{"phase":"done","detail":"ok"}"#).unwrap();
        assert_eq!((r.revision, r.done, r.total), (None, None, None));
    }
}
