//! Commands that name things: `tag`, `cpimage`, `mvimage`, `rmimage`.

use aurum::repo::RevSpec;
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
        let Ok(RevSpec::Tag { image, tag }) = a.rev.parse() else {
            return Err(aurum::Error::Invalid(format!(
                "`{}`: give the tag to delete as IMAGE:TAG",
                a.rev
            ))
            .into());
        };
        repo.untag(&image, &tag)?;
        println!("deleted {image}:{tag}");
        return Ok(());
    }
    let tag = a.tag.expect("required by clap");
    let rev = repo.tag(&a.rev, &tag)?;
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
    open(g)?.copy_image(&a.src, &a.dst)?;
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
    open(g)?.rename_image(&a.old, &a.new)?;
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
    open(g)?.remove_image(&a.name, a.force)?;
    println!(
        "removed image {}; run `aurum gc` to free the space only it used",
        a.name
    );
    Ok(())
}
