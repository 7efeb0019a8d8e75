//! `verify`: re-reading and re-hashing what a repository holds.
//!
//! Every blob is decompressed and hashed against its id, every pack against its name, every
//! manifest against its revision id, and every blob a revision names must be in the catalog.
//! A damaged blob is reported with the revisions it breaks, so the administrator knows which
//! images to capture again (or to restore from a replica).
//!
//! A whole-repository verify also checks what a web server publishes besides packs and
//! manifests: `packs/list`, `refs/` and `templates/` against the catalog (see
//! [`crate::repo::publish`]), and that published files are world-readable and the catalog private.
//! A node updating over HTTP trusts those files; `--repair` rebuilds them.

use std::collections::{HashMap, HashSet};

use rayon::prelude::*;
use serde::Serialize;

use crate::catalog::Revision;
use crate::error::Result;
use crate::format::manifest::Kind;
use crate::format::Id;
use crate::progress::Progress;
use crate::repo::publish::{Misplacement, PUBLISHED};
use crate::repo::Repository;
use crate::store::pack_path;

/// One thing verify found wrong.
#[derive(Debug, Serialize)]
pub struct Damage {
    /// `blob`, `pack` or `manifest`.
    pub kind: &'static str,
    pub id: String,
    pub problem: String,
    /// Revisions (`image@N`) this damage breaks.
    pub breaks: Vec<String>,
}

/// What verify checked and found.
#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
    pub revisions: u64,
    pub packs: u64,
    pub blobs: u64,
    pub bytes: u64,
    pub damage: Vec<Damage>,
    /// Damaged or missing blobs removed from the catalog (with `repair`).
    pub forgotten: u64,
    /// Published files rewritten or removed because they disagreed with the catalog (with
    /// `repair`).
    pub republished: Vec<crate::repo::publish::Republished>,
    /// Files and directories whose mode was changed (with `repair`): (path, old, new).
    pub modes_fixed: Vec<(String, u32, u32)>,
    /// What was moved into or out of `public/`, or written there (with `repair`).
    pub layout_fixed: Vec<crate::repo::publish::Misplaced>,
}

/// Verifies one revision (its manifest and every blob it names) or, with `None`, everything.
///
/// With `repair` (which needs the repository locked exclusively), damaged blobs are removed
/// from the catalog, and a damaged pack's good blobs are copied into a new pack while the pack
/// itself is moved to `damaged/`. The revisions that named damaged blobs stay broken, but the
/// next getimage or import of a tree holding that content stores it again (instead of trusting
/// the damaged copy), which mends them.
pub fn verify(
    repo: &mut Repository,
    only: Option<&Revision>,
    repair: bool,
    progress: &dyn Progress,
) -> Result<VerifyReport> {
    let mut report = VerifyReport::default();
    let revisions = match only {
        Some(r) => vec![r.clone()],
        None => {
            repo.adopt_orphan_packs()?;
            repo.catalog.all_revisions()?
        }
    };
    // Manifests, and which revisions use each blob.
    let mut users: HashMap<Id, Vec<String>> = HashMap::new();
    let mut by_id: HashMap<Id, Vec<String>> = HashMap::new();
    for r in &revisions {
        by_id.entry(r.id).or_default().push(r.name());
    }
    for (id, names) in &by_id {
        report.revisions += names.len() as u64;
        match repo.load_manifest(id) {
            Ok(m) => {
                for e in &m.entries {
                    if let Kind::File { chunks, .. } = &e.kind {
                        for c in chunks {
                            let u = users.entry(c.id).or_default();
                            if u.last() != names.last() {
                                u.extend(names.iter().cloned());
                            }
                        }
                    }
                }
            }
            Err(e) => report.damage.push(Damage {
                kind: "manifest",
                id: id.hex(),
                problem: e.to_string().replace(RUN_VERIFY, ""),
                breaks: sorted_revisions(names.clone()),
            }),
        }
    }
    let mut bad_blobs: Vec<(Id, String)> = Vec::new();
    match only {
        Some(_) => {
            progress.phase("verifying blobs", Some(users.len() as u64), false);
            for id in users.keys() {
                match repo.catalog.blob(id)? {
                    None => bad_blobs.push((*id, "missing from the repository".into())),
                    Some((pack, entry)) => {
                        report.blobs += 1;
                        report.bytes += u64::from(entry.raw_len);
                        if let Err(e) = repo.packs.read(&pack, &entry) {
                            bad_blobs.push((*id, e.to_string()));
                        }
                    }
                }
                progress.advance(1);
            }
            progress.finish();
        }
        None => {
            let packs = repo.catalog.packs()?;
            let mut work = Vec::new();
            for (pack, size, _) in &packs {
                work.push((*pack, *size, repo.catalog.pack_blobs(pack)?));
            }
            let total: u64 = packs.iter().map(|p| p.1).sum();
            progress.phase("verifying packs", Some(total), true);
            let (root, packs_reader) = (&repo.root, &repo.packs);
            #[allow(clippy::type_complexity)] // one use: bad blobs, a pack error, two counts
            let results: Vec<(Vec<(Id, String)>, Option<String>, u64, u64)> = work
                .par_iter()
                .map(|(pack, _, blobs)| check_pack(root, packs_reader, pack, blobs, progress))
                .collect();
            progress.finish();
            let mut repack = crate::repo::gc::Repacker::new(&repo.root);
            let mut damaged_packs = 0;
            for ((pack, _, blobs), (bad, pack_problem, n, bytes)) in work.iter().zip(results) {
                report.packs += 1;
                report.blobs += n;
                report.bytes += bytes;
                if repair && (pack_problem.is_some() || !bad.is_empty()) {
                    // Keep what is still good in a new pack; the damaged one goes aside.
                    let bad_ids: HashSet<Id> = bad.iter().map(|b| b.0).collect();
                    let good: Vec<_> = blobs
                        .iter()
                        .filter(|b| !bad_ids.contains(&b.id))
                        .cloned()
                        .collect();
                    repack.copy(repo, pack, &good)?;
                    repack.retire(*pack);
                    damaged_packs += 1;
                }
                bad_blobs.extend(bad);
                if let Some(p) = pack_problem {
                    report.damage.push(Damage {
                        kind: "pack",
                        id: pack.hex(),
                        problem: p,
                        breaks: vec![],
                    });
                }
            }
            if damaged_packs > 0 {
                repack.commit(repo, Some(&repo.root.join("damaged")))?;
            }
            let mut needed = HashSet::new();
            for id in users.keys() {
                match repo.catalog.blob(id)? {
                    Some((pack, _)) => {
                        needed.insert(pack);
                    }
                    None => bad_blobs.push((*id, "missing from the repository".into())),
                }
            }
            check_published(repo, &needed, repair, &mut report)?;
        }
    }
    if repair {
        // Whole-repository repair already left damaged blobs out of the new packs.
        // A blob of a damaged pack is listed again as missing once the pack is retired.
        let ids: Vec<Id> = bad_blobs
            .iter()
            .map(|b| b.0)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        repo.catalog.remove_blobs(&ids)?;
        report.forgotten = ids.len() as u64;
        if !ids.is_empty() {
            repo.catalog.event(
                "repair",
                None,
                &format!("forgot {} damaged blobs", ids.len()),
            )?;
        }
    }
    let mut seen = HashSet::new();
    for (id, problem) in bad_blobs {
        if seen.insert(id) {
            report.damage.push(Damage {
                kind: "blob",
                id: id.hex(),
                problem: problem.replace(crate::store::FIND_BROKEN, ""),
                breaks: sorted_revisions(users.get(&id).cloned().unwrap_or_default()),
            });
        }
    }
    Ok(report)
}

/// Checks the layout (the published files, and only they, in `public/`), the published
/// derived files and the modes; with `repair`, fixes them in that order (after any repack, so
/// that `packs/list` names the new packs).
fn check_published(
    repo: &Repository,
    needed: &HashSet<Id>,
    repair: bool,
    report: &mut VerifyReport,
) -> Result<()> {
    if repair {
        report.layout_fixed = crate::repo::publish::layout(&repo.root, true)?;
        report.republished = crate::repo::publish::rebuild(&repo.root, &repo.catalog)?;
        report.modes_fixed = crate::repo::publish::check_modes(&repo.root, true)?;
        return Ok(());
    }
    for m in crate::repo::publish::layout(&repo.root, false)? {
        report.damage.push(Damage {
            kind: "layout",
            problem: match m.problem {
                Misplacement::OutsidePublic => format!(
                    "published files outside {PUBLISHED}/, where a web server does not serve them (an older aurum wrote them?); `aurum verify --repair` moves them into {PUBLISHED}/"
                ),
                Misplacement::Foreign => format!(
                    "not part of the published layout, but inside {PUBLISHED}/, which a web server publishes whole; `aurum verify --repair` moves it to damaged/{PUBLISHED}/"
                ),
                Misplacement::Format => format!(
                    "missing or not this repository's format, so nodes would not take {PUBLISHED}/ for a repository; `aurum verify --repair` writes it"
                ),
            },
            id: m.path,
            breaks: vec![],
        });
    }
    for s in crate::repo::publish::check(&repo.root, &repo.catalog, needed)? {
        report.damage.push(Damage {
            kind: "published",
            id: s.file,
            problem: format!(
                "{}; nodes updating over HTTP trust this file: `aurum verify --repair` rebuilds it",
                s.problem
            ),
            breaks: vec![],
        });
    }
    let wrong = crate::repo::publish::check_modes(&repo.root, false)?;
    if let Some((first, mode, want)) = wrong.first() {
        report.damage.push(Damage {
            kind: "mode",
            id: first.clone(),
            problem: format!(
                "mode {mode:o}, should be {want:o} ({} files and directories in all): a web server not running as root cannot serve published files, and the catalog must stay private; `aurum verify --repair` fixes the modes",
                wrong.len()
            ),
            breaks: vec![],
        });
    }
    Ok(())
}

/// Checks a pack's blobs and its name; returns (bad blobs, pack problem, blobs, bytes).
fn check_pack(
    root: &std::path::Path,
    reader: &crate::store::PackReader,
    pack: &Id,
    blobs: &[crate::format::pack::IndexEntry],
    progress: &dyn Progress,
) -> (Vec<(Id, String)>, Option<String>, u64, u64) {
    let mut bad = Vec::new();
    let mut bytes = 0;
    let mut last_record = None;
    for b in blobs {
        if let Err(e) = reader.read(pack, b) {
            bad.push((b.id, e.to_string()));
        }
        bytes += u64::from(b.raw_len);
        // Group members share a record: advance once per record.
        if last_record != Some(b.offset) {
            progress.advance(u64::from(b.stored_len) + crate::format::pack::RECORD_HEADER as u64);
            last_record = Some(b.offset);
        }
    }
    let path = pack_path(root, pack, "pack");
    let pack_problem = match std::fs::File::open(&path) {
        Ok(mut f) => {
            let mut h = blake3::Hasher::new();
            h.update_reader(&mut f)
                .err()
                .map(|e| format!("cannot read: {e}"))
                .or_else(|| {
                    (Id::from(h.finalize()) != *pack).then(|| {
                        "its content does not match its name (damaged on disk)".to_string()
                    })
                })
        }
        Err(e) => Some(format!("cannot open {}: {e}", path.display())),
    };
    let problem = pack_problem.or_else(|| index_problem(root, pack, blobs));
    (bad, problem, blobs.len() as u64, bytes)
}

/// Checks a pack's index, which HTTP clients read to find blobs: it must decode and list
/// every blob the catalog places in this pack, where the catalog places it.
fn index_problem(
    root: &std::path::Path,
    pack: &Id,
    blobs: &[crate::format::pack::IndexEntry],
) -> Option<String> {
    let path = pack_path(root, pack, "idx");
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) => return Some(format!("cannot read its index {}: {e}", path.display())),
    };
    let entries = match crate::format::pack::decode_index(&data) {
        Ok(e) => e,
        Err(e) => return Some(format!("its index is damaged: {e}")),
    };
    let listed: HashSet<&crate::format::pack::IndexEntry> = entries.iter().collect();
    let missing = blobs.iter().filter(|b| !listed.contains(b)).count();
    (missing > 0).then(|| format!("its index lacks {missing} of its blobs"))
}

/// The advice a damaged manifest's error gives outside verify.
const RUN_VERIFY: &str = "; run `aurum verify`";

/// Revision names (`image@N`) by image, then number, so that a report reads the same each run.
fn sorted_revisions(mut names: Vec<String>) -> Vec<String> {
    names.sort_by_key(|n| match n.rsplit_once('@') {
        Some((image, num)) => (image.to_string(), num.parse::<u64>().unwrap_or(0)),
        None => (n.clone(), 0),
    });
    names
}
