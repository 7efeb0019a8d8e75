//! `state.json`: a node's own record of what it runs, in `/var/lib/aurum-node/` on its root.
//!
//! The file is JSON (pretty-printed) naming the current, previous and last-known-good
//! revisions (each with the override revisions laid over it), the override images the node
//! follows, and the history of its runs. It carries no version field: every field added since
//! the first version is optional on reading ([`VERSION`] counts those additions), so any aurum
//! reads any state file, and a file without the new fields is what an older aurum wrote.
//! `node` owns the directory and writes the file atomically. `journal.json` ([`Journal`]) and
//! the undo index lines ([`undo_index_line`]) are defined here too; the update engine
//! (`apply`) writes them.

use serde::{Deserialize, Serialize};

use super::Id;
use crate::error::{corrupt, Result};

/// Version of `state.json`, not stored: 1 had revisions and history; 2 added `overrides` and
/// `tree` to a revision and the node's `overrides` list, both absent (empty) when not used;
/// 3 added `health`, the last health check, absent until `aurum health` runs; 4 added
/// `staged`, the revision `updateclient --stage` fetched and staged, absent when none is;
/// 5 added `trial`, a revision on trial under boot counting, and `boot`, the last boot's
/// record, both absent until boot counting is used; 6 added `systemd-boot` as a trial's
/// `bootloader`.
pub const VERSION: u32 = 6;

named_enum! {
    /// The boot loader whose own counter a trial uses.
    pub enum Bootloader {
        /// GRUB (BIOS or UEFI): the counter is in its environment block, `/boot/grub/grubenv`.
        Grub = "grub",
        /// systemd-boot (UEFI): the counter is in the name of aurum's entry on the ESP,
        /// `loader/entries/aurum-revision+LEFT-DONE.conf`.
        SystemdBoot = "systemd-boot",
    }
}

/// A revision on trial: written onto the node's disk, booted under the boot loader's try
/// counter, and not yet blessed (a boot whose `aurum health` passed). While a trial lasts
/// `last_known_good` stays the revision before it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Trial {
    /// The revision on trial (the node's current one).
    pub revision: RevRef,
    /// The revision the node goes back to when the trial fails: the last-known-good one when
    /// the trial began (or the one it ran, when none was recorded).
    pub fallback: RevRef,
    /// Boots it is given before the boot loader boots the fallback entry.
    pub tries: u32,
    pub bootloader: Bootloader,
    /// When the trial began (seconds since the epoch).
    pub started: i64,
}

named_enum! {
    /// What a boot of a node came to.
    pub enum BootOutcome {
        /// A boot with no trial: the node runs its revision as before.
        Booted = "booted",
        /// A boot of the revision on trial; tries remain, it is not blessed yet.
        Trial = "trial",
        /// The revision on trial passed its health checks on this boot and is now the
        /// last-known-good one.
        Blessed = "blessed",
        /// The revision on trial used up its boots or failed its health checks: the node went
        /// back to the fallback revision.
        FellBack = "fell-back",
    }
}

/// What the node records of a boot (`aurum boot` at startup, and `aurum health` on a trial
/// boot), and reports to the server.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BootRecord {
    pub time: i64,
    /// The kernel's boot id (`/proc/sys/kernel/random/boot_id`): which boot this record is of.
    pub boot_id: String,
    /// The revision the node runs after this boot's checks (after a fallback, the fallback).
    pub revision: Option<RevRef>,
    pub outcome: BootOutcome,
    /// Tries left on the boot loader's counter after this boot, on a trial boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tries_left: Option<u32>,
    /// The revision that was on trial, when the node fell back from it or blessed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trial: Option<RevRef>,
    /// Why the node fell back: the boots it used up, or the health checks that failed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// A revision staged on the node (`updateclient --stage`): what it needs is in the state
/// directory's `stage/` (its manifests and the blobs the node lacked), so that `updateclient
/// --activate` applies it without a network.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Staged {
    /// The revision as the node will record it once activated (its overrides and tree too).
    pub revision: RevRef,
    /// When it was staged (seconds since the epoch).
    pub time: i64,
    /// Bytes the stage holds on disk (blobs and manifests).
    pub bytes: u64,
    /// Blobs in the stage.
    pub blobs: u64,
    /// The override images the node follows once it is activated, when staging changed the
    /// list (`--override`, `--no-override`); absent: the list stays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow: Option<Vec<String>>,
}

/// How one health check ended.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum CheckStatus {
    Pass,
    /// It exited non-zero or was killed by a signal.
    Fail,
    /// It ran past its time limit and was killed.
    Timeout,
    /// It could not be started (not executable, bad interpreter line).
    Error,
}

/// One check of a health run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CheckResult {
    /// The file name in `required.d/` or `wanted.d/`.
    pub name: String,
    /// Whether its failure makes the node unhealthy (`required.d`) or is only reported.
    pub required: bool,
    pub status: CheckStatus,
    pub exit: Option<i32>,
    pub seconds: f64,
    /// The end of what it printed (stdout and stderr), at most a few KiB.
    pub output: String,
}

/// The last run of the node's health checks.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HealthRecord {
    pub time: i64,
    /// The revision the node ran when checked (its current one), if aurum installed it.
    pub revision: Option<RevRef>,
    /// No required check failed.
    pub healthy: bool,
    pub checks: Vec<CheckResult>,
    /// The kernel's boot id when it ran: which boot this run was in (records written before
    /// it was kept lack it, and so does a run that left the root between two revisions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
}

/// A revision as the node records it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RevRef {
    pub image: Option<String>,
    pub number: Option<u32>,
    pub id: String,
    /// The override revisions laid over this one, in the order they were laid (none: the image
    /// alone). State files written before overrides were recorded lack the field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<RevRef>,
    /// With overrides, the id of the manifest of the tree the node holds (the image's with the
    /// overrides composed over it); without, the image's manifest is the tree's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree: Option<String>,
}

/// The first 8 characters of an id read from the node's files, which are never sliced past
/// their length (a hand-edited state file must not panic `node-status`).
pub fn short_id(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

impl RevRef {
    pub fn id(&self) -> Result<Id> {
        Id::from_hex(&self.id)
            .ok_or_else(|| corrupt(format!("node state names a bad revision id {}", self.id)))
    }

    /// The id of the manifest of the tree the node holds at this revision.
    pub fn tree_id(&self) -> Result<Id> {
        let hex = self.tree.as_deref().unwrap_or(&self.id);
        Id::from_hex(hex).ok_or_else(|| corrupt(format!("node state names a bad tree id {hex}")))
    }

    /// Whether the node holds the same tree at `self` as at `other` (same image revision and
    /// same override revisions).
    pub fn same_tree(&self, other: &RevRef) -> bool {
        self.tree.as_ref().unwrap_or(&self.id) == other.tree.as_ref().unwrap_or(&other.id)
    }

    /// `compute@3 1f2e3d4c`, with overrides `compute@3 1f2e3d4c + override@1, override.n05@2`.
    pub fn name(&self) -> String {
        let short = short_id(&self.id);
        let mut s = match (&self.image, self.number) {
            (Some(i), Some(n)) => format!("{i}@{n} {short}"),
            (Some(i), None) => format!("{i} {short}"),
            _ => short.to_string(),
        };
        for (k, o) in self.overrides.iter().enumerate() {
            s.push_str(if k == 0 { " + " } else { ", " });
            match (&o.image, o.number) {
                (Some(i), Some(n)) => s.push_str(&format!("{i}@{n}")),
                _ => s.push_str(&o.name()),
            }
        }
        s
    }
}

/// One line of the node's history.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HistoryEntry {
    pub time: i64,
    pub action: crate::format::report::NodeAction,
    pub from: Option<String>,
    pub to: String,
    pub result: String,
    pub bytes_fetched: u64,
    pub seconds: f64,
}

/// `state.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct NodeState {
    pub current: Option<RevRef>,
    pub previous: Option<RevRef>,
    pub last_known_good: Option<RevRef>,
    pub history: Vec<HistoryEntry>,
    /// The override images this node follows, in the order they are laid (the last wins):
    /// `install` records `override`, `override.GROUP`, `override.HOSTNAME`; `updateclient
    /// --override`/`--no-override` change the list. Absent from older state files: none.
    #[serde(default)]
    pub overrides: Vec<String>,
    /// The last health check (`aurum health`); absent until one ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthRecord>,
    /// The revision staged for activation (`updateclient --stage`); absent when none is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staged: Option<Staged>,
    /// The revision on trial under boot counting; absent when none is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trial: Option<Trial>,
    /// The last boot's record; absent until `aurum boot` ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<BootRecord>,
}

impl NodeState {
    /// The bytes of `state.json`.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("strings and numbers serialise")
    }

    /// Reads `state.json`; `what` names the file in the error.
    pub fn decode(data: &[u8], what: &str) -> Result<NodeState> {
        serde_json::from_slice(data).map_err(|e| corrupt(format!("{what}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// #13: `aurum nodes` and `node-status` show the first 8 bytes of a revision id that came
    /// from a node's report or state file; a multi-byte character across byte 8 must not
    /// panic (it shows the text whole).
    #[test]
    fn short_id_of_any_text() {
        assert_eq!(short_id("0123456789abcdef"), "01234567");
        assert_eq!(short_id("0123"), "0123");
        assert_eq!(short_id("0123456é89"), "0123456é89");
        assert_eq!(short_id("aéééé"), "aéééé");
        assert_eq!(short_id("ééééé"), "éééé");
        assert_eq!(short_id(""), "");
    }

    fn rev(overrides: Vec<RevRef>) -> impl Strategy<Value = RevRef> {
        (
            prop::option::of("[a-z][a-z0-9.]{0,12}"),
            prop::option::of(any::<u32>()),
            any::<[u8; 32]>(),
            prop::option::of(any::<[u8; 32]>()),
        )
            .prop_map(move |(image, number, id, tree)| RevRef {
                image,
                number,
                id: Id(id).hex(),
                overrides: overrides.clone(),
                tree: tree.map(|t| Id(t).hex()),
            })
    }

    fn state() -> impl Strategy<Value = NodeState> {
        let entry = (
            any::<i64>(),
            prop::sample::select(crate::format::report::NodeAction::ALL),
            prop::option::of(any::<[u8; 32]>()),
            any::<[u8; 32]>(),
            any::<u64>(),
            // Seconds as aurum records them: a few decimals (binary fractions round-trip
            // exactly through JSON).
            0u32..1_000_000,
        )
            .prop_map(|(time, action, from, to, bytes, ms)| HistoryEntry {
                time,
                action,
                from: from.map(|f| Id(f).hex()),
                to: Id(to).hex(),
                result: "ok".into(),
                bytes_fetched: bytes,
                seconds: f64::from(ms) / 1024.0,
            });
        let with_overrides = prop::collection::vec(rev(Vec::new()), 0..3)
            .prop_flat_map(|o| prop::option::of(rev(o)));
        (
            with_overrides,
            prop::option::of(rev(Vec::new())),
            prop::option::of(rev(Vec::new())),
            prop::collection::vec(entry, 0..4),
            prop::collection::vec("override(\\.[a-z0-9]{1,8})?", 0..3),
        )
            .prop_map(|(current, previous, last_known_good, history, overrides)| {
                NodeState {
                    current,
                    previous,
                    last_known_good,
                    history,
                    overrides,
                    health: None,
                    staged: None,
                    trial: None,
                    boot: None,
                }
            })
    }

    proptest! {
        #[test]
        fn states_round_trip(s in state()) {
            prop_assert_eq!(NodeState::decode(&s.encode(), "state.json").unwrap(), s);
        }

        #[test]
        fn any_bytes_decode_or_fail(data in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = NodeState::decode(&data, "state.json");
        }
    }

    #[test]
    fn state_files_written_before_overrides_were_recorded_still_read() {
        let old = br#"{"current":{"image":"c","number":2,"id":"ab"},"previous":null,
            "last_known_good":null,"history":[]}"#;
        let s = NodeState::decode(old, "state.json").unwrap();
        let cur = s.current.unwrap();
        assert!(cur.overrides.is_empty() && cur.tree.is_none() && s.overrides.is_empty());
        assert_eq!(cur.name(), "c@2 ab");
        // Without overrides nothing new is written, so an older aurum reads the file too.
        let back = serde_json::to_string(&cur).unwrap();
        assert!(
            !back.contains("overrides") && !back.contains("tree"),
            "{back}"
        );
        let err = NodeState::decode(b"{\"current\": 3}", "state.json").unwrap_err();
        assert!(err.to_string().contains("state.json"), "{err}");
    }

    #[test]
    fn a_staged_revision_round_trips_and_files_without_one_read() {
        let old = br#"{"current":{"image":"c","number":2,"id":"ab"},"previous":null,
            "last_known_good":null,"history":[],"overrides":[]}"#;
        let mut s = NodeState::decode(old, "state.json").unwrap();
        assert!(s.staged.is_none());
        assert!(!String::from_utf8(s.encode()).unwrap().contains("staged"));
        s.staged = Some(Staged {
            revision: s.current.clone().unwrap(),
            time: 1_795_320_421,
            bytes: 4096,
            blobs: 3,
            follow: Some(vec!["override".into()]),
        });
        assert_eq!(NodeState::decode(&s.encode(), "state.json").unwrap(), s);
    }

    #[test]
    fn a_trial_and_a_boot_record_round_trip_and_older_files_read() {
        let old = br#"{"current":{"image":"c","number":2,"id":"ab"},"previous":null,
            "last_known_good":null,"history":[],"overrides":[]}"#;
        let mut s = NodeState::decode(old, "state.json").unwrap();
        assert!(s.trial.is_none() && s.boot.is_none());
        let text = String::from_utf8(s.encode()).unwrap();
        assert!(!text.contains("trial") && !text.contains("boot"), "{text}");
        let rev = s.current.clone().unwrap();
        s.trial = Some(Trial {
            revision: rev.clone(),
            fallback: rev.clone(),
            tries: 3,
            bootloader: Bootloader::Grub,
            started: 1_795_320_421,
        });
        s.boot = Some(BootRecord {
            time: 1_795_320_500,
            boot_id: "0f4c".into(),
            revision: Some(rev.clone()),
            outcome: BootOutcome::FellBack,
            tries_left: None,
            trial: Some(rev),
            reason: "health check 10-app failed".into(),
        });
        assert_eq!(NodeState::decode(&s.encode(), "state.json").unwrap(), s);
        let text = String::from_utf8(s.encode()).unwrap();
        assert!(text.contains("\"outcome\": \"fell-back\""), "{text}");
        assert!(text.contains("\"bootloader\": \"grub\""), "{text}");
        assert!(!text.contains("\"entry\""), "{text}");
        // Version 5 wrote the systemd-boot entry file in the trial: read, and left out.
        let v5 = br#"{"current":null,"previous":null,"last_known_good":null,"history":[],
            "trial":{"revision":{"image":"c","number":2,"id":"ab"},
            "fallback":{"image":"c","number":1,"id":"cd"},"tries":3,"bootloader":"systemd-boot",
            "started":1795320421,"entry":"aurum-revision.conf"}}"#;
        let t = NodeState::decode(v5, "state.json").unwrap().trial.unwrap();
        assert_eq!((t.tries, t.bootloader), (3, Bootloader::SystemdBoot));
    }

    #[test]
    fn the_tree_is_the_composed_manifest_when_there_is_one() {
        let o = RevRef {
            image: Some("override.n05".into()),
            number: Some(3),
            id: "cd".repeat(32),
            overrides: Vec::new(),
            tree: None,
        };
        let mut r = RevRef {
            image: Some("c".into()),
            number: Some(1),
            id: "ab".repeat(32),
            overrides: vec![o],
            tree: Some("ef".repeat(32)),
        };
        assert_eq!(r.tree_id().unwrap().hex(), "ef".repeat(32));
        assert_eq!(r.name(), "c@1 abababab + override.n05@3");
        let plain = RevRef {
            overrides: Vec::new(),
            tree: None,
            ..r.clone()
        };
        assert!(!r.same_tree(&plain));
        r.tree = None;
        assert!(r.same_tree(&plain));
    }
}

/// `journal.json`: an update in progress.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Journal {
    pub action: super::report::NodeAction,
    pub from: Option<RevRef>,
    pub to: RevRef,
    pub undo: String,
    /// Every temporary name (tree path, hex) the update may create, written and synced before
    /// it creates the first: a rerun removes exactly these, and never guesses at names.
    #[serde(default)]
    pub temps: Vec<String>,
    /// The node's first revision written onto a fresh root as `checkout` writes: under final
    /// names, with no temporary names and no undo area. Until the journal goes, files may be
    /// half written: a rerun hashes every file and rewrites those that differ, and the state
    /// names no revision (a killed first install is never taken for a complete one).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fresh: bool,
    /// The undo area is the last update's, taken over by a rollback by rename (whose
    /// entries trade places with the tree's): undoing this run after a refused write keeps
    /// it, as it holds the way back to the revision before.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub kept_undo: bool,
}

/// The undo index line of entry `n` of an undo area, which held tree path `rel`: `N HEXPATH`
/// (the file `N` of the area holds what the path held). Version 1, not stored: the areas of
/// a run are read only by the same aurum's rerun or rollback.
pub fn undo_index_line(n: u64, rel: &[u8]) -> String {
    format!("{n} {}\n", hex(rel))
}

/// An undo index line (without its newline) read back; `None` for a line that is not one (a
/// torn last line after a crash).
pub fn parse_undo_index_line(line: &str) -> Option<(u64, Vec<u8>)> {
    let (n, h) = line.split_once(' ')?;
    Some((n.parse().ok()?, unhex(h)?))
}

/// A tree path as the undo index and the journal's `temps` write it: lower-case hex.
pub fn hex(b: &[u8]) -> String {
    super::to_hex(b)
}

/// A path written by [`hex`]; `None` for anything else.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod undo_index_tests {
    use super::*;

    #[test]
    fn undo_index_lines_round_trip_any_path_and_refuse_torn_ones() {
        let p = b"etc/\xff\x00name with space".to_vec();
        let line = undo_index_line(7, &p);
        assert_eq!(parse_undo_index_line(line.trim_end()), Some((7, p)));
        assert_eq!(parse_undo_index_line("7 6574632f7"), None);
        assert_eq!(parse_undo_index_line("7"), None);
        assert_eq!(parse_undo_index_line("x 6574"), None);
        assert_eq!(unhex("zz"), None);
    }

    #[test]
    fn a_journal_round_trips_and_older_journals_read() {
        let j: Journal = serde_json::from_str(
            r#"{"action":"updateclient","from":null,"to":{"image":"a","number":2,"id":"00"},"undo":"u1"}"#,
        )
        .unwrap();
        assert!(j.temps.is_empty() && !j.fresh);
        let back: Journal = serde_json::from_str(&serde_json::to_string(&j).unwrap()).unwrap();
        assert_eq!(back.undo, "u1");
        assert!(serde_json::from_str::<Journal>("{\"action\":\"nothing\"}").is_err());
    }
}
