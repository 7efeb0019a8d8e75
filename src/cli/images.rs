//! Commands that name things: `tag`, `cpimage`, `mvimage`, `rmimage`.

use aurum::repo::check_name;
use clap::Args;

use super::{open, Global};

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
}

pub fn tag(g: &Global, a: TagArgs) -> anyhow::Result<()> {
    let mut repo = open(g)?;
    if a.delete {
        let Ok(aurum::repo::RevSpec::Tag { image, tag }) = a.rev.parse() else {
            return Err(aurum::Error::Invalid(format!(
                "`{}`: give the tag to delete as IMAGE:TAG",
                a.rev
            ))
            .into());
        };
        let (image, tag) = (image.as_str(), tag.as_str());
        repo.require_image(image)?;
        let publishing = repo.publishing()?;
        if !repo.catalog.delete_tag(image, tag)? {
            return Err(
                aurum::Error::NotFound(format!("image `{image}` has no tag `{tag}`")).into(),
            );
        }
        repo.write_refs(image)?;
        publishing.done();
        println!("deleted {image}:{tag}");
        return Ok(());
    }
    let tag = a.tag.expect("required by clap");
    check_name("tag", &tag)?;
    let rev = repo.resolve(&a.rev)?;
    let publishing = repo.publishing()?;
    repo.catalog.set_tag(&rev.image, &tag, rev.number)?;
    repo.write_refs(&rev.image)?;
    publishing.done();
    println!("{}:{tag} -> {} {}", rev.image, rev.name(), rev.id.short());
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
}

pub fn cpimage(g: &Global, a: CpimageArgs) -> anyhow::Result<()> {
    let mut repo = open(g)?;
    repo.require_image(&a.src)?;
    check_name("image", &a.dst)?;
    if repo.catalog.image_exists(&a.dst)? {
        return Err(aurum::Error::Invalid(format!(
            "image `{}` already exists; pick another name or `aurum rmimage {}` first",
            a.dst, a.dst
        ))
        .into());
    }
    let publishing = repo.publishing()?;
    repo.catalog.copy_image(&a.src, &a.dst)?;
    repo.write_refs(&a.dst)?;
    publishing.done();
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
}

pub fn mvimage(g: &Global, a: MvimageArgs) -> anyhow::Result<()> {
    let mut repo = open(g)?;
    repo.require_image(&a.old)?;
    check_name("image", &a.new)?;
    if repo.catalog.image_exists(&a.new)? {
        return Err(aurum::Error::Invalid(format!("image `{}` already exists", a.new)).into());
    }
    let publishing = repo.publishing()?;
    repo.catalog.rename_image(&a.old, &a.new)?;
    repo.write_refs(&a.old)?;
    repo.write_refs(&a.new)?;
    publishing.done();
    println!("renamed {} to {}", a.old, a.new);
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
}

pub fn rmimage(g: &Global, a: RmimageArgs) -> anyhow::Result<()> {
    let mut repo = open(g)?;
    repo.require_image(&a.name)?;
    let tags = repo.catalog.tags(&a.name)?;
    if !tags.is_empty() && !a.force {
        let list: Vec<String> = tags
            .iter()
            .map(|(t, n)| format!("{}:{t} (@{n})", a.name))
            .collect();
        return Err(aurum::Error::Invalid(format!(
            "image `{}` has tags {}; delete them with `aurum tag --delete`, or pass --force",
            a.name,
            list.join(", ")
        ))
        .into());
    }
    let publishing = repo.publishing()?;
    repo.catalog.delete_image(&a.name)?;
    repo.write_refs(&a.name)?;
    publishing.done();
    println!(
        "removed image {}; run `aurum gc` to free the space only it used",
        a.name
    );
    Ok(())
}
