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
//!
//! Every revision's signatures are checked too ([`crate::repo::signatures::check`]): a
//! signature that does not check out is damage (someone altered a revision or its signature),
//! and the revisions with none, or none by a key the repository trusts, are listed. So are
//! the network-root images (`export --netroot`): each is hashed against its record, and its
//! signatures checked ([`crate::repo::netroot::check`]).

use std::collections::{HashMap, HashSet};

use rayon::prelude::*;
use serde::Serialize;

use crate::catalog::Revision;
use crate::error::Result;
use crate::format::manifest::{Entry, Kind};
use crate::format::Id;
use crate::progress::Progress;
use crate::repo::embedded::Pins;
use crate::repo::publish::{Misplacement, PUBLISHED};
use crate::repo::seen::IdHeads;
use crate::repo::signatures::{self, SignatureSummary};
use crate::repo::Repository;
use crate::store::pack_path;
use crate::trust::TrustedKeys;

/// One thing verify found wrong.
#[derive(Debug, Serialize)]
pub struct Damage {
    /// `blob`, `pack`, `manifest`, `signature` (its id is then the key's fingerprint) or
    /// `netroot` (a network-root image, its id the image's path under `public/`).
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
    /// The revisions' signatures.
    pub signatures: SignatureSummary,
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
    keys: &TrustedKeys,
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
    // Manifests, streamed: each blob named is checked (one revision) or located (all) once.
    let mut by_id: HashMap<Id, Vec<String>> = HashMap::new();
    for r in &revisions {
        by_id.entry(r.id).or_default().push(r.name());
    }
    report.revisions = revisions.len() as u64;
    let mut bad_blobs: Vec<(Id, String)> = Vec::new();
    let mut needed = HashSet::new();
    let mut seen = IdHeads::default();
    let mut pins = Pins::default();
    for (id, names) in &by_id {
        let scanned = match repo.manifest_entries(id) {
            Err(e) => Ok(Err(e)),
            Ok(entries) if only.is_some() => {
                progress.phase("verifying blobs", Some(entries.remaining()), false);
                let r = each_new_blob(entries, &mut seen, &mut pins, progress, |id| {
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
                    Ok(())
                });
                progress.finish();
                r
            }
            Ok(entries) => each_new_blob(
                entries,
                &mut seen,
                &mut pins,
                &crate::progress::Quiet,
                |id| {
                    match repo.catalog.blob(id)? {
                        Some((pack, _)) => {
                            needed.insert(pack);
                        }
                        None => bad_blobs.push((*id, "missing from the repository".into())),
                    }
                    Ok(())
                },
            ),
        };
        if let Err(e) = scanned? {
            report.damage.push(Damage {
                kind: "manifest",
                id: id.hex(),
                problem: e.to_string().replace(RUN_VERIFY, ""),
                breaks: sorted_revisions(names.clone()),
            });
        }
    }
    drop(seen);
    report.signatures = signatures::check(repo, &revisions, keys)?;
    if only.is_none() {
        signatures::check_templates(repo, keys, &mut report.signatures)?;
        signatures::check_template_set(repo, keys, &mut report.signatures)?;
    }
    for p in crate::repo::netroot::check(repo, &revisions, keys, &mut report.signatures)? {
        report.damage.push(Damage {
            kind: "netroot",
            id: p.image,
            problem: p.problem,
            breaks: vec![p.revision],
        });
    }
    for (rev, key, problem) in &report.signatures.bad {
        report.damage.push(Damage {
            kind: "signature",
            id: key.clone(),
            problem: problem.clone(),
            breaks: vec![rev.clone()],
        });
    }
    check_pins(repo, &pins, &mut report)?;
    if only.is_none() {
        check_packs(repo, repair, progress, &mut report, &mut bad_blobs)?;
        check_published(repo, &needed, repair, &mut report)?;
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
    let users = users_of(repo, &by_id, &bad_blobs)?;
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

/// Checks that the packs and manifests embedded repositories' records name are here (gc
/// keeps them; a rebuild copies them).
fn check_pins(repo: &Repository, pins: &Pins, report: &mut VerifyReport) -> Result<()> {
    let packs: HashSet<Id> = repo.catalog.packs()?.into_iter().map(|p| p.0).collect();
    let held = "held for a repository embedded in a revision";
    for id in pins.packs.iter().filter(|id| !packs.contains(id)) {
        report.damage.push(Damage {
            kind: "pack",
            id: id.hex(),
            problem: format!("missing ({held}); pull or capture that revision again"),
            breaks: Vec::new(),
        });
    }
    for id in &pins.manifests {
        let path = crate::store::manifest_path(&repo.root, id);
        let problem = match std::fs::read(&path) {
            Err(e) => Some(e.to_string()),
            Ok(b) => crate::format::manifest::decompress_file(&b[..], id)
                .err()
                .map(|p| p.to_string()),
        };
        if let Some(p) = problem {
            report.damage.push(Damage {
                kind: "manifest",
                id: id.hex(),
                problem: format!("{p} ({held})"),
                breaks: Vec::new(),
            });
        }
    }
    Ok(())
}

/// Calls `each` once for every blob `entries` name that `seen` has not seen. The outer error
/// is `each`'s; the inner one is the manifest's (damage to report, not a failure of verify).
fn each_new_blob(
    entries: impl Iterator<Item = Result<Entry>>,
    seen: &mut IdHeads,
    pins: &mut Pins,
    progress: &dyn Progress,
    mut each: impl FnMut(&Id) -> Result<()>,
) -> Result<Result<()>> {
    for e in entries {
        let e = match e {
            Ok(e) => e,
            Err(damage) => return Ok(Err(damage)),
        };
        // An embedded repository's record: its catalog snapshot's blobs are checked as a
        // file's; its packs and manifests after the walk.
        let before = pins.blobs.len();
        if let Err(damage) = pins.add(&e) {
            return Ok(Err(damage));
        }
        if pins.blobs.len() != before {
            if let Some(r) = crate::format::embedded::decode_record(&e)? {
                for c in &r.catalog {
                    if seen.first(&c.id) {
                        each(&c.id)?;
                    }
                }
            }
        }
        if let Kind::File { chunks, .. } = &e.kind {
            for c in chunks {
                if seen.first(&c.id) {
                    each(&c.id)?;
                }
            }
        }
        progress.advance(1);
    }
    Ok(Ok(()))
}

/// The revisions that name each of `bad` blobs: a second pass over the manifests, made only
/// when something is damaged, so that the first keeps no list of users.
fn users_of(
    repo: &Repository,
    by_id: &HashMap<Id, Vec<String>>,
    bad: &[(Id, String)],
) -> Result<HashMap<Id, Vec<String>>> {
    let mut users: HashMap<Id, Vec<String>> = bad.iter().map(|b| (b.0, Vec::new())).collect();
    if users.is_empty() {
        return Ok(users);
    }
    for (id, names) in by_id {
        let Ok(entries) = repo.manifest_entries(id) else {
            continue;
        };
        let mut named: HashSet<Id> = HashSet::new();
        for e in entries.map_while(|e| e.ok()) {
            if let Kind::File { chunks, .. } = &e.kind {
                named.extend(
                    chunks
                        .iter()
                        .filter(|c| users.contains_key(&c.id))
                        .map(|c| c.id),
                );
            }
        }
        for blob in named {
            users.entry(blob).or_default().extend(names.iter().cloned());
        }
    }
    Ok(users)
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

/// Blobs of a pack checked at a time: their catalog rows are all verify holds of a pack.
const PAGE: i64 = 1 << 16;

/// Checks every pack (its blobs, its name, its index), one after the other, each a page of
/// blobs at a time read in parallel while the pack file is hashed, so that memory does not
/// grow with a pack's blob count; with `repair`, copies the good blobs of a damaged pack into
/// a new one and moves it aside.
fn check_packs(
    repo: &mut Repository,
    repair: bool,
    progress: &dyn Progress,
    report: &mut VerifyReport,
    bad_blobs: &mut Vec<(Id, String)>,
) -> Result<()> {
    let packs = repo.catalog.packs()?;
    let total: u64 = packs.iter().map(|p| p.1).sum();
    progress.phase("verifying packs", Some(total), true);
    let mut repack = crate::repo::gc::Repacker::new(&repo.root);
    let mut damaged_packs = 0;
    for (pack, _, _) in &packs {
        let root = repo.root.as_path();
        let (file_problem, checked) = std::thread::scope(|scope| {
            let hashing = scope.spawn(|| pack_file_problem(root, pack));
            let checked = check_pack(repo, pack, progress);
            (hashing.join().expect("pack hashing thread"), checked)
        });
        let (bad, n, bytes, index_problem) = checked?;
        let pack_problem = file_problem.or(index_problem);
        report.packs += 1;
        report.blobs += n;
        report.bytes += bytes;
        if repair && (pack_problem.is_some() || !bad.is_empty()) {
            // Keep what is still good in a new pack; the damaged one goes aside.
            let bad_ids: HashSet<Id> = bad.iter().map(|b| b.0).collect();
            let good: Vec<_> = repo
                .catalog
                .pack_blobs(pack)?
                .into_iter()
                .filter(|b| !bad_ids.contains(&b.id))
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
    progress.finish();
    if damaged_packs > 0 {
        repack.commit(repo, Some(&repo.root.join("damaged")))?;
    }
    Ok(())
}

/// Reads and checks every blob the catalog places in `pack`, a page at a time, and compares
/// them with the pack's index; returns (bad blobs, blobs, bytes, index problem).
#[allow(clippy::type_complexity)] // one use
fn check_pack(
    repo: &Repository,
    pack: &Id,
    progress: &dyn Progress,
) -> Result<(Vec<(Id, String)>, u64, u64, Option<String>)> {
    let (mut bad, mut n, mut bytes) = (Vec::new(), 0u64, 0u64);
    let listed = index_listing(&repo.root, pack);
    let mut unlisted = 0u64;
    let mut after: Option<crate::format::pack::IndexEntry> = None;
    let reader = &repo.packs;
    loop {
        let page = repo.catalog.pack_blobs_after(pack, after.as_ref(), PAGE)?;
        let Some(last) = page.last() else { break };
        after = Some(last.clone());
        // A record (a group, or a blob alone) is read and decompressed once for its members.
        let records: Vec<&[crate::format::pack::IndexEntry]> =
            page.chunk_by(|a, b| a.offset == b.offset).collect();
        bad.extend(
            records
                .par_iter()
                .flat_map_iter(|members| reader.check_record(pack, members))
                .collect::<Vec<_>>(),
        );
        let mut last_record = None;
        for b in &page {
            n += 1;
            bytes += u64::from(b.raw_len);
            if let Ok(listed) = &listed {
                unlisted += u64::from(!listed.holds(b));
            }
            // Group members share a record: advance once per record.
            if last_record != Some(b.offset) {
                progress
                    .advance(u64::from(b.stored_len) + crate::format::pack::RECORD_HEADER as u64);
                last_record = Some(b.offset);
            }
        }
    }
    let index_problem = match listed {
        Err(problem) => Some(problem),
        Ok(_) => (unlisted > 0).then(|| format!("its index lacks {unlisted} of its blobs")),
    };
    Ok((bad, n, bytes, index_problem))
}

/// Whether the pack file's content matches its name.
fn pack_file_problem(root: &std::path::Path, pack: &Id) -> Option<String> {
    let path = pack_path(root, pack, "pack");
    match std::fs::File::open(&path) {
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
    }
}

/// What a pack's index lists, as keyed 64-bit hashes of its entries (8 bytes and a control
/// byte an entry instead of the entries): HTTP clients read the index to find blobs, so it
/// must list every blob the catalog places in the pack, where the catalog places it.
struct Listing {
    keys: std::collections::hash_map::RandomState,
    seen: HashSet<u64, std::hash::BuildHasherDefault<crate::keyset::Uniform>>,
}

impl Listing {
    fn holds(&self, e: &crate::format::pack::IndexEntry) -> bool {
        use std::hash::BuildHasher;
        self.seen.contains(&self.keys.hash_one(e))
    }
}

/// The listing of a pack's index, read a page at a time; the error says what is wrong with
/// the index.
fn index_listing(root: &std::path::Path, pack: &Id) -> std::result::Result<Listing, String> {
    use std::hash::BuildHasher;
    let path = pack_path(root, pack, "idx");
    let file = std::fs::File::open(&path)
        .and_then(|f| Ok((f.metadata()?.len(), f)))
        .map_err(|e| format!("cannot read its index {}: {e}", path.display()))?;
    let (len, file) = file;
    let damaged = |e: crate::Error| format!("its index is damaged: {e}");
    let entries = crate::format::pack::IndexEntries::new(std::io::BufReader::new(file), len)
        .map_err(damaged)?;
    let mut listing = Listing {
        keys: Default::default(),
        seen: Default::default(),
    };
    for e in entries {
        let e = e.map_err(damaged)?;
        listing.seen.insert(listing.keys.hash_one(&e));
    }
    Ok(listing)
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
