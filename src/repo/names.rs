//! The commands that name things: tags and image names (`tag`, `cpimage`, `mvimage`,
//! `rmimage`).
//!
//! Each changes the catalog and then rewrites the `refs/` files derived from it, under a
//! [`Publishing`](super::Publishing) marker, so that a command killed in between leaves the
//! published refs to be rebuilt by the next one rather than out of step with the catalog.

use super::{check_name, Repository};
use crate::catalog::Revision;
use crate::error::{invalid, Error, Result};

/// What `rmimage` removes (or, on a dry run, would remove).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImageRemoval {
    pub image: String,
    /// The numbers of its revisions, newest first.
    pub revisions: Vec<u32>,
    /// Its tags, removed with it.
    pub tags: Vec<String>,
}

impl Repository {
    /// Points `IMAGE:tag` at the revision `spec` names, moving the tag if it pointed
    /// elsewhere. Returns the revision.
    pub fn tag(&mut self, spec: &str, tag: &str) -> Result<Revision> {
        check_name("tag", tag)?;
        let rev = self.resolve(spec)?;
        self.republish(&[&rev.image], |repo| {
            repo.catalog.set_tag(&rev.image, tag, rev.number)
        })?;
        Ok(rev)
    }

    /// Removes the tag `image:tag`.
    pub fn untag(&mut self, image: &str, tag: &str) -> Result<()> {
        self.require_image(image)?;
        self.republish(&[image], |repo| {
            if repo.catalog.delete_tag(image, tag)? {
                Ok(())
            } else {
                Err(Error::NotFound(format!(
                    "image `{image}` has no tag `{tag}`"
                )))
            }
        })
    }

    /// Copies image `src` as `dst`, its history and tags with it. Nothing is copied on disk:
    /// both names reach the same immutable revisions.
    pub fn copy_image(&mut self, src: &str, dst: &str) -> Result<()> {
        self.require_image(src)?;
        check_name("image", dst)?;
        if self.catalog.image_exists(dst)? {
            return Err(invalid(format!(
                "image `{dst}` already exists; pick another name or `aurum rmimage {dst}` first"
            )));
        }
        self.republish(&[dst], |repo| repo.catalog.copy_image(src, dst))
    }

    /// The checks renaming image `old` to `new` makes; changes nothing (`mvimage --dry-run`).
    pub fn check_rename_image(&self, old: &str, new: &str) -> Result<()> {
        self.require_image(old)?;
        check_name("image", new)?;
        if self.catalog.image_exists(new)? {
            return Err(invalid(format!(
                "image `{new}` already exists; pick another name or `aurum rmimage {new}` first"
            )));
        }
        Ok(())
    }

    /// Renames image `old` to `new`; its revisions and tags follow.
    pub fn rename_image(&mut self, old: &str, new: &str) -> Result<()> {
        self.check_rename_image(old, new)?;
        self.republish(&[old, new], |repo| repo.catalog.rename_image(old, new))
    }

    /// What removing image `name` would remove, after the checks the removal makes: it
    /// refuses while the image has tags (a tag usually means nodes run it) unless `force`.
    /// Changes nothing: `rmimage --dry-run` prints it.
    pub fn plan_remove_image(&self, name: &str, force: bool) -> Result<ImageRemoval> {
        self.require_image(name)?;
        let tags = self.catalog.tags(name)?;
        if !tags.is_empty() && !force {
            let list: Vec<String> = tags
                .iter()
                .map(|(t, n)| format!("{name}:{t} (@{n})"))
                .collect();
            return Err(invalid(format!(
                "image `{name}` has tags {}; delete them with `aurum tag --delete`, or pass --force",
                list.join(", ")
            )));
        }
        Ok(ImageRemoval {
            image: name.to_string(),
            revisions: self
                .catalog
                .revisions(name)?
                .iter()
                .map(|r| r.number)
                .collect(),
            tags: tags.into_iter().map(|(t, _)| t).collect(),
        })
    }

    /// Removes image `name` and its revisions from the catalog, as
    /// [`plan_remove_image`](Self::plan_remove_image) planned. Its content stays until
    /// `aurum gc`.
    pub fn remove_image(&mut self, name: &str, force: bool) -> Result<ImageRemoval> {
        let plan = self.plan_remove_image(name, force)?;
        self.republish(&[name], |repo| repo.catalog.delete_image(name))?;
        Ok(plan)
    }

    /// Makes a catalog change and rewrites the refs of `images` after it, under a
    /// [`Publishing`](super::Publishing) marker. A change that fails (one transaction, so
    /// nothing changed) removes the marker; a rewrite that fails leaves it for the next
    /// command, which then rebuilds the published files.
    fn republish(
        &mut self,
        images: &[&str],
        change: impl FnOnce(&mut Repository) -> Result<()>,
    ) -> Result<()> {
        let publishing = self.publishing()?;
        if let Err(e) = change(self) {
            // Each change is one catalog transaction: when it fails, nothing changed.
            publishing.done();
            return Err(e);
        }
        for image in images {
            self.write_refs(image)?;
        }
        publishing.done();
        Ok(())
    }
}
