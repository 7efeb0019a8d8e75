//! Overrides: trees laid over a freshly installed root, global, then group, then node.
//!
//! As in SystemImager, an override is a directory tree copied over the image after it is
//! applied, so a group or a single node can differ from the image in a few files (a site
//! config, one node's network setup) without an image of its own. Here an override is an image
//! in the repository like any other (captured with `aurum getimage`), so it is versioned and a
//! server ships it the same way: `override` for every node, `override.GROUP` for a group,
//! `override.HOSTNAME` for one node. The node's wins over the group's, which wins over the
//! global one, simply by being laid last.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::path::Path;

use nix::sys::stat::{mkdirat, Mode};
use nix::unistd::{unlinkat, UnlinkatFlags};

use crate::apply::{create_special, set_metadata, write_file, BlobSource};
use crate::error::{corrupt, Error, IoContext, Result};
use crate::format::manifest::{file_name, parent, Kind, Manifest};
use crate::format::Id;
use crate::progress::Quiet;
use crate::source::RevisionSource;
use crate::sys::{self, shown};

/// The override images that apply to a node, in the order they are laid.
pub fn names(group: Option<&str>, hostname: &str) -> Vec<String> {
    let mut v = vec!["override".to_string()];
    if let Some(g) = group {
        v.push(format!("override.{g}"));
    }
    if !hostname.is_empty() {
        v.push(format!("override.{hostname}"));
    }
    v
}

struct MemBlobs(HashMap<Id, Vec<u8>>);

impl BlobSource for MemBlobs {
    fn get(&self, id: &Id) -> Result<Vec<u8>> {
        self.0.get(id).cloned().ok_or_else(|| {
            corrupt(format!(
                "blob {} of an override was not fetched",
                id.short()
            ))
        })
    }
}

/// Lays the newest revision of `image` over `root`, when the source has that image. Returns
/// the revision laid (`override.n01@2 1a2b3c4d`), `None` when there is no such image.
pub fn lay(source: &dyn RevisionSource, image: &str, root: &Path) -> Result<Option<String>> {
    let target = match source.resolve(image) {
        Ok(t) => t,
        Err(Error::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    let m = source.manifest(&target.id)?;
    lay_manifest(source, &m, root)?;
    Ok(Some(target.name()))
}

fn lay_manifest(source: &dyn RevisionSource, m: &Manifest, root: &Path) -> Result<()> {
    m.validate()?;
    let mut ids: Vec<Id> = m
        .entries
        .iter()
        .flat_map(|e| match &e.kind {
            Kind::File { chunks, .. } => chunks.iter().map(|c| c.id).collect(),
            _ => Vec::new(),
        })
        .collect();
    ids.sort();
    ids.dedup();
    let blobs = std::sync::Mutex::new(HashMap::new());
    source.fetch(
        &ids,
        &|id, data| {
            blobs.lock().expect("blobs lock").insert(*id, data);
            Ok(())
        },
        &Quiet,
    )?;
    let blobs = MemBlobs(blobs.into_inner().expect("blobs lock"));
    let root_fd = sys::open_root(root)?;
    let warn = |w: String| log::warn!("{w}");
    for e in m.entries.iter().skip(1) {
        let dir = sys::open_dir_beneath(root_fd.as_fd(), parent(&e.path), root)?;
        let name = file_name(&e.path);
        let existing = sys::lstat_at(dir.as_fd(), name).ok();
        let is_dir = existing.is_some_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR);
        match &e.kind {
            Kind::Dir => {
                if existing.is_some() && !is_dir {
                    unlinkat(dir.as_fd(), name, UnlinkatFlags::NoRemoveDir)
                        .at(shown(root, &e.path))?;
                }
                if !is_dir {
                    mkdirat(dir.as_fd(), name, Mode::from_bits_truncate(0o700))
                        .at(shown(root, &e.path))?;
                }
            }
            kind => {
                if is_dir {
                    return Err(crate::error::invalid(format!(
                        "override has a {} where the image has a directory: {}",
                        kind.name(),
                        shown(root, &e.path).display()
                    )));
                }
                if existing.is_some() {
                    unlinkat(dir.as_fd(), name, UnlinkatFlags::NoRemoveDir)
                        .at(shown(root, &e.path))?;
                }
                if let Kind::File { .. } = kind {
                    let f = write_file(dir.as_fd(), name, e, &blobs, root, &Quiet)?;
                    set_metadata(dir.as_fd(), name, e, Some(&f), root, &warn)?;
                } else {
                    create_special(dir.as_fd(), name, &root_fd, e, root)?;
                    if !matches!(kind, Kind::Hardlink { .. }) {
                        set_metadata(dir.as_fd(), name, e, None, root, &warn)?;
                    }
                }
            }
        }
    }
    // Directory metadata last, deepest first (writing into a directory changes its mtime). The
    // root of the override is not applied: the image decides the root's owner and mode.
    for e in m.entries.iter().skip(1).rev() {
        if e.kind == Kind::Dir {
            let dir = sys::open_dir_beneath(root_fd.as_fd(), parent(&e.path), root)?;
            set_metadata(dir.as_fd(), file_name(&e.path), e, None, root, &warn)?;
        }
    }
    Ok(())
}
