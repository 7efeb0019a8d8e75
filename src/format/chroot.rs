//! The files of an `aurum chroot` work directory, beside its tree `root/`: `chroot.json`
//! ([`WorkMeta`]: what the session edits, so that `--resume` can finish it) and, while a
//! session runs, `mount-points.json` (the [`Created`] mount points it made, so that a session
//! killed with SIGKILL can be tidied up after).
//!
//! Both are JSON with kebab-case keys; unknown keys are refused. They live only as long as the
//! work directory, on the machine that made it, and carry no version field.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{invalid, Result};

/// Version of both files (not stored: they never outlive the aurum that made them by much).
pub const VERSION: u32 = 1;

/// The metadata file of a work directory, next to its `root/`.
pub const META: &str = "chroot.json";

/// The list of [`Created`] mount points, next to `root/`.
pub const POINTS: &str = "mount-points.json";

/// What a work directory is for, kept in `chroot.json` so that `--resume` can finish it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct WorkMeta {
    /// The revision the tree was checked out from (hex id), and its name then.
    pub parent: String,
    pub parent_name: String,
    /// The image the new revision goes to.
    pub image: String,
    pub message: String,
}

impl WorkMeta {
    /// The bytes of `chroot.json` (pretty, with a final newline: people read it).
    pub fn encode(&self) -> Vec<u8> {
        let mut text = serde_json::to_vec_pretty(self).expect("strings serialise");
        text.push(b'\n');
        text
    }

    /// Reads `chroot.json`; `what` names the file in the error.
    pub fn decode(data: &[u8], what: &Path) -> Result<WorkMeta> {
        serde_json::from_slice(data)
            .map_err(|e| invalid(format!("{} is damaged: {e}", what.display())))
    }
}

/// A mount point a session had to create, removed again after it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Created {
    /// Relative to the tree's root: plain names only, never `..` or a leading `/`.
    pub rel: PathBuf,
    /// The times (ns) of the directory holding it before, and its mtime just after we created
    /// it: when nothing else changed the directory meanwhile, its old times are put back.
    pub before_atime: i64,
    pub before_mtime: i64,
    pub after_mtime: i64,
}

/// The bytes of `mount-points.json`. Every `rel` is made from a `&str`, so it is UTF-8.
pub fn encode_points(points: &[Created]) -> Vec<u8> {
    serde_json::to_vec(points).expect("UTF-8 paths and numbers serialise")
}

/// Reads `mount-points.json`, refusing a path that would lead out of the tree (the list says
/// what to delete).
pub fn decode_points(data: &[u8], what: &Path) -> Result<Vec<Created>> {
    let damaged =
        |e: &dyn std::fmt::Display| invalid(format!("{} is damaged: {e}", what.display()));
    let points: Vec<Created> = serde_json::from_slice(data).map_err(|e| damaged(&e))?;
    for p in &points {
        let inside = p.rel.components().next().is_some()
            && p.rel
                .components()
                .all(|c| matches!(c, Component::Normal(_)));
        if !inside {
            return Err(damaged(&format!(
                "{} is not a path inside the tree",
                p.rel.display()
            )));
        }
    }
    Ok(points)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn files_round_trip(
            meta in ("[0-9a-f]{64}", ".{0,20}", "[a-z]{1,10}", ".{0,60}"),
            points in prop::collection::vec(
                ("[a-z]{1,8}(/[a-z_][a-z._]{0,7}){0,2}", any::<i64>(), any::<i64>(), any::<i64>()),
                0..6,
            ),
        ) {
            let meta = WorkMeta {
                parent: meta.0,
                parent_name: meta.1,
                image: meta.2,
                message: meta.3,
            };
            let what = Path::new(META);
            prop_assert_eq!(WorkMeta::decode(&meta.encode(), what).unwrap(), meta);
            let points: Vec<Created> = points
                .into_iter()
                .map(|(rel, a, b, c)| Created {
                    rel: rel.into(),
                    before_atime: a,
                    before_mtime: b,
                    after_mtime: c,
                })
                .collect();
            prop_assert_eq!(decode_points(&encode_points(&points), Path::new(POINTS)).unwrap(), points);
        }

        #[test]
        fn any_bytes_decode_or_fail(data in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = WorkMeta::decode(&data, Path::new(META));
            let _ = decode_points(&data, Path::new(POINTS));
        }
    }

    #[test]
    fn paths_out_of_the_tree_are_refused() {
        for rel in ["/etc", "../x", "a/../../b", "a/..", "", "."] {
            let text =
                format!(r#"[{{"rel":"{rel}","before-atime":0,"before-mtime":0,"after-mtime":0}}]"#);
            let err = decode_points(text.as_bytes(), Path::new(POINTS));
            assert!(err.is_err(), "{rel} was accepted");
        }
        let unknown = br#"{"parent":"a","parent-name":"b","image":"c","message":"","x":1}"#;
        assert!(WorkMeta::decode(unknown, Path::new(META)).is_err());
    }
}
