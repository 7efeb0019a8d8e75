//! Commands that name things: `tag`, `cpimage`, `mvimage`, `rmimage`.

use aurum::repo::RevSpec;
use clap::Args;

use super::{open, print_json, revision_json, Global};

/// Put a movable name on a revision (compute:production), or remove one.
///
/// `aurum tag compute@7 production` points compute:production at revision 7, moving it if it
/// pointed elsewhere. `aurum tag --delete compute:production` removes it.
#[derive(Args)]
pub struct TagArgs {
    /// The revision to tag, or with --delete the IMAGE:TAG to remove.
    rev: String,
    /// The tag name.
    #[arg(required_unless_present = "delete")]
    tag: Option<String>,
    /// Remove the tag IMAGE:TAG instead.
    #[arg(long, short = 'd')]
    delete: bool,
    /// Say which revision the tag would name (or, with --delete, which it names now); change
    /// nothing.
    #[arg(long, short = 'n')]
    dry_run: bool,
    /// Print JSON: {"tag": "IMAGE:TAG", "revision", "image", "number", "id", "deleted",
    /// "dry_run"}.
    #[arg(long)]
    json: bool,
}

pub fn tag(g: &Global, a: TagArgs) -> anyhow::Result<()> {
    let mut repo = open(g)?;
    let (image, tag, rev) = if a.delete {
        let Ok(RevSpec::Tag { image, tag }) = a.rev.parse() else {
            return Err(aurum::Error::Invalid(format!(
                "`{}`: give the tag to delete as IMAGE:TAG",
                a.rev
            ))
            .into());
        };
        // The revision it names, which also checks that the tag exists.
        let rev = repo.resolve(&a.rev)?;
        if !a.dry_run {
            repo.untag(&image, &tag)?;
        }
        (image, tag, rev)
    } else {
        let tag = a.tag.expect("required by clap");
        let rev = if a.dry_run {
            aurum::repo::check_name("tag", &tag)?;
            repo.resolve(&a.rev)?
        } else {
            repo.tag(&a.rev, &tag)?
        };
        (rev.image.clone(), tag, rev)
    };
    if a.json {
        let mut v = revision_json(&rev);
        v["tag"] = format!("{image}:{tag}").into();
        v["deleted"] = a.delete.into();
        v["dry_run"] = a.dry_run.into();
        return print_json(&v);
    }
    let would = if a.dry_run { "would be " } else { "" };
    if a.delete {
        println!(
            "{would}deleted {image}:{tag} (it named {} {})",
            rev.name(),
            rev.id.short()
        );
    } else {
        println!(
            "{}{image}:{tag} -> {} {}",
            if a.dry_run { "would tag " } else { "" },
            rev.name(),
            rev.id.short()
        );
    }
    Ok(())
}

/// Copy an image under a new name, with its whole history and tags (like si_cpimage).
///
/// Nothing is copied on disk: both images name the same immutable revisions, so the copy is
/// instant and takes no space. The two images then evolve separately.
#[derive(Args)]
pub struct CpimageArgs {
    /// The image to copy.
    src: String,
    /// The new image name.
    dst: String,
    /// Print JSON: {"image", "from"}.
    #[arg(long)]
    json: bool,
}

pub fn cpimage(g: &Global, a: CpimageArgs) -> anyhow::Result<()> {
    open(g)?.copy_image(&a.src, &a.dst)?;
    if a.json {
        return print_json(&serde_json::json!({ "image": a.dst, "from": a.src }));
    }
    println!("copied {} to {}", a.src, a.dst);
    Ok(())
}

/// Rename an image (like si_mvimage); its revisions and tags follow.
#[derive(Args)]
pub struct MvimageArgs {
    /// The current name.
    old: String,
    /// The new name.
    new: String,
    /// Check that the rename would succeed; change nothing.
    #[arg(long, short = 'n')]
    dry_run: bool,
    /// Print JSON: {"image", "from", "dry_run"}.
    #[arg(long)]
    json: bool,
}

pub fn mvimage(g: &Global, a: MvimageArgs) -> anyhow::Result<()> {
    let mut repo = open(g)?;
    if a.dry_run {
        repo.check_rename_image(&a.old, &a.new)?;
    } else {
        repo.rename_image(&a.old, &a.new)?;
    }
    if a.json {
        return print_json(
            &serde_json::json!({ "image": a.new, "from": a.old, "dry_run": a.dry_run }),
        );
    }
    println!(
        "{} {} to {}",
        if a.dry_run { "would rename" } else { "renamed" },
        a.old,
        a.new
    );
    Ok(())
}

/// Remove an image and its revisions from the catalog (like si_rmimage).
///
/// Refuses while the image has tags, since a tag usually means nodes run it; use --force to
/// remove it anyway. Content shared with other images stays; `aurum gc` frees the rest.
#[derive(Args)]
pub struct RmimageArgs {
    /// The image to remove.
    name: String,
    /// Remove it even though it has tags.
    #[arg(long)]
    force: bool,
    /// Say what would be removed (its revisions and tags); change nothing.
    #[arg(long, short = 'n')]
    dry_run: bool,
    /// Print JSON: {"image", "revisions": [N...], "tags": [...], "dry_run"}.
    #[arg(long)]
    json: bool,
}

pub fn rmimage(g: &Global, a: RmimageArgs) -> anyhow::Result<()> {
    let mut repo = open(g)?;
    let r = if a.dry_run {
        repo.plan_remove_image(&a.name, a.force)?
    } else {
        repo.remove_image(&a.name, a.force)?
    };
    if a.json {
        let mut v = serde_json::to_value(&r)?;
        v["dry_run"] = a.dry_run.into();
        return print_json(&v);
    }
    let tags = if r.tags.is_empty() {
        String::new()
    } else {
        format!(" and its tags {}", r.tags.join(", "))
    };
    if a.dry_run {
        println!(
            "would remove image {} ({} revisions{tags}); nothing was changed",
            r.image,
            r.revisions.len()
        );
    } else {
        println!(
            "removed image {} ({} revisions{tags}); run `aurum gc` to free the space only it used",
            r.image,
            r.revisions.len()
        );
    }
    Ok(())
}
