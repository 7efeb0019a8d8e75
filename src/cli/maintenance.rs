//! `verify` and `gc` subcommands.

use aurum::repo::publish::{Misplacement, Republish, PUBLISHED};
use aurum::repo::{Lock, Repository};
use clap::Args;

use super::{human_bytes, open, print_json, Global};

/// Re-read and re-hash what the repository holds.
///
/// Without REV: every pack (each blob against its id, each pack against its name), every
/// manifest, and that every blob a revision names is present. With REV: that revision's
/// manifest and blobs only. Each damaged blob is named with the revisions it breaks. Exits
/// with 3 when anything is damaged.
///
/// Also checks the layout (everything a web server may publish in REPO/public/, nothing
/// else there), what it publishes for nodes besides packs and manifests (packs/list, refs/,
/// templates/) against the catalog, and that published files are world-readable and the
/// catalog and lock private; and every revision's signatures (a signature that does not
/// check out is damage; revisions unsigned, or signed only by keys not in aurum.toml's
/// `trusted-keys`, are counted and named), and each class's newest template's (counted,
/// the unsigned classes named, once any template is signed or aurum.toml trusts keys).
///
/// With --repair, damaged blobs are forgotten, so that capturing a golden client (or
/// importing a tarball) that still holds their content stores it again and mends every
/// revision they broke; until then those revisions fail to check out. Misplaced files are
/// moved, the published files rebuilt from the catalog and the modes fixed.
#[derive(Args)]
pub struct VerifyArgs {
    /// Verify only this revision.
    rev: Option<String>,
    /// Forget damaged blobs so that the next capture of their content stores them again, and
    /// move damaged packs aside (to damaged/) after copying out what is still good; move
    /// published directories into public/ and foreign files out of it (to damaged/public/);
    /// rebuild packs/list, refs/ and templates/ from the catalog; fix file modes. Checks the whole
    /// repository and waits for other aurum commands, like gc.
    #[arg(long, conflicts_with = "rev")]
    repair: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn verify(g: &Global, a: VerifyArgs) -> anyhow::Result<()> {
    let mut repo = if a.repair {
        Repository::open(&g.repo, Lock::Exclusive)?
    } else {
        open(g)?
    };
    let only = a.rev.as_deref().map(|r| repo.resolve(r)).transpose()?;
    let progress = g.progress();
    let keys = super::trust::server_keys(g)?;
    let report =
        aurum::repo::verify::verify(&mut repo, only.as_ref(), a.repair, &keys, progress.as_ref())?;
    if a.json {
        print_json(&report)?;
    } else {
        println!(
            "checked {} revisions, {} packs, {} blobs ({})",
            report.revisions,
            report.packs,
            report.blobs,
            human_bytes(report.bytes)
        );
        let sigs = &report.signatures;
        println!(
            "signatures: {} revisions signed{}, {} unsigned{}",
            sigs.signed,
            if keys.is_empty() {
                ""
            } else {
                " by a trusted key"
            },
            sigs.unsigned.len(),
            if sigs.untrusted.is_empty() {
                String::new()
            } else {
                format!(
                    ", {} signed only by keys aurum.toml does not trust: {}",
                    sigs.untrusted.len(),
                    sigs.untrusted.join(", ")
                )
            }
        );
        // Only where templates are signed at all: a repository that signs nothing is not
        // told so twice.
        if sigs.templates_signed > 0 || !keys.is_empty() {
            println!(
                "templates: {} signed{}, {} unsigned{}",
                sigs.templates_signed,
                if keys.is_empty() {
                    ""
                } else {
                    " by a trusted key"
                },
                sigs.templates_unsigned.len(),
                if sigs.templates_unsigned.is_empty() {
                    String::new()
                } else {
                    format!(
                        " ({}: `aurum template sign` signs them)",
                        sigs.templates_unsigned.join(", ")
                    )
                }
            );
            match &sigs.template_set {
                None => println!(
                    "template set: none{}; `aurum template sign --sign-key KEY` signs it \
                     (installers that check signatures need it)",
                    if keys.is_empty() {
                        ""
                    } else {
                        " signed by a trusted key"
                    }
                ),
                Some(set) => println!(
                    "template set: {} classes, signed by {}{} at {} UTC{}",
                    set.classes,
                    set.key,
                    set.signer
                        .as_deref()
                        .map(|s| format!(" ({s})"))
                        .unwrap_or_default(),
                    super::human_time(set.signed),
                    if set.differs.is_empty() {
                        ", names every class's newest template".to_string()
                    } else {
                        format!(
                            "; OUT OF DATE ({}): installers that check signatures refuse \
                             those classes until `aurum template sign --sign-key KEY` signs \
                             it again",
                            set.differs.join("; ")
                        )
                    }
                ),
            }
        }
        if sigs.netroot_signed > 0 || !sigs.netroot_unsigned.is_empty() {
            println!(
                "network-root images: {} signed{}, {} unsigned{}",
                sigs.netroot_signed,
                if keys.is_empty() {
                    ""
                } else {
                    " by a trusted key"
                },
                sigs.netroot_unsigned.len(),
                if sigs.netroot_unsigned.is_empty() {
                    String::new()
                } else {
                    format!(
                        " ({}: `aurum sign REV --sign-key KEY` signs them)",
                        sigs.netroot_unsigned.join(", ")
                    )
                }
            );
        }
        for d in &report.damage {
            let breaks = if d.breaks.is_empty() {
                String::new()
            } else {
                format!("; breaks {}", d.breaks.join(", "))
            };
            println!("DAMAGED {} {}: {}{}", d.kind, d.id, d.problem, breaks);
        }
        for r in &report.republished {
            match r.action {
                Republish::Rebuilt => println!("rebuilt {} from the catalog", r.file),
                Republish::Removed => {
                    println!("removed {}: it named nothing the catalog has", r.file)
                }
            }
        }
        for m in &report.layout_fixed {
            match m.problem {
                Misplacement::OutsidePublic => {
                    println!("moved {} into {PUBLISHED}/", m.path)
                }
                Misplacement::Foreign => {
                    println!("moved {} aside to damaged/{PUBLISHED}/", m.path)
                }
                Misplacement::Format => println!("wrote {}", m.path),
            }
        }
        if let Some((first, _, want)) = report.modes_fixed.first() {
            println!(
                "fixed the modes of {} files and directories (e.g. {first} to {want:o}): published files are world-readable, the catalog private",
                report.modes_fixed.len()
            );
        }
        if report.forgotten > 0 {
            println!(
                "forgot {} damaged blobs: capture the broken revisions' golden clients again to mend them",
                report.forgotten
            );
        }
    }
    let breaks_nothing = report.damage.iter().all(|d| d.breaks.is_empty());
    if a.repair
        && !report.damage.is_empty()
        && breaks_nothing
        && report.damage.iter().all(|d| d.kind == "pack")
    {
        // A damaged pack whose blobs were all good (a bad index, a stray byte outside every
        // blob) is rewritten whole by the repair: nothing is lost.
        if !a.json {
            println!("repaired: the damaged packs were rewritten from their blobs, all good");
        }
        return Ok(());
    }
    if !report.damage.is_empty() {
        return Err(aurum::Error::Corrupt(format!(
            "{} damaged objects; run `aurum verify --repair` and capture the broken revisions again, or restore the repository from a replica",
            report.damage.len()
        ))
        .into());
    }
    if !a.json {
        println!("repository is intact");
    }
    Ok(())
}

/// Delete content no revision references, and compact packs.
///
/// Packs with nothing live are deleted; packs less than half live are rewritten; manifests no
/// image uses are deleted. gc takes the repository lock exclusively: it waits until no other
/// aurum command (capture, serve's delta maker, checkout...) is using the repository, and
/// while it runs, commands that start wait for it. No capture can lose a blob to it.
#[derive(Args)]
pub struct GcArgs {
    /// Report what would be freed, change nothing.
    #[arg(long, short = 'n')]
    dry_run: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn gc(g: &Global, a: GcArgs) -> anyhow::Result<()> {
    let mut repo = if a.dry_run {
        open(g)?
    } else {
        Repository::open(&g.repo, Lock::Exclusive)?
    };
    let progress = g.progress();
    let r = aurum::repo::gc::gc(&mut repo, a.dry_run, progress.as_ref())?;
    if a.json {
        return print_json(&r);
    }
    println!(
        "{}{} live blobs, {} dead; {} packs deleted, {} repacked, {} manifests deleted, {} cached deltas deleted; {} freed",
        if r.dry_run { "(dry run) " } else { "" },
        r.live_blobs,
        r.dead_blobs,
        r.packs_deleted,
        r.packs_repacked,
        r.manifests_deleted,
        r.deltas_deleted,
        human_bytes(r.bytes_freed)
    );
    if r.netroot_images_deleted > 0 {
        println!(
            "{} network-root images deleted (of removed revisions, or replaced by a re-export)",
            r.netroot_images_deleted
        );
    }
    if r.nfs_trees_deleted > 0 {
        println!(
            "{} NFS-exported trees of removed revisions deleted (reload nfs-ganesha)",
            r.nfs_trees_deleted
        );
    }
    Ok(())
}
