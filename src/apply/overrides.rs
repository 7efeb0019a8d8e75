//! Overrides: trees laid over a node's image, global, then group, then node.
//!
//! As in SystemImager, an override is a directory tree copied over the image after it is
//! applied, so a group or a single node can differ from the image in a few files (a site
//! config, one node's network setup) without an image of its own. Here an override is an image
//! in the repository like any other (captured with `aurum getimage`), so it is versioned and a
//! server ships it the same way: `override` for every node, `override.GROUP` for a group,
//! `override.HOSTNAME` for one node. The node's wins over the group's, which wins over the
//! global one, simply by being laid last.
//!
//! The overrides are not written over the root after the image: [`compose`] lays them over the
//! image's manifest, and install, updateclient and rollback hand the composed manifest to the
//! apply engine. So the tree the node holds is one manifest, which the node state records with
//! the override revisions in it: the next update plans against it (an override's file is
//! neither deleted nor taken for a change by hand), a rollback returns to it exactly, and
//! `--dry-run` shows the overrides' part of the plan like the image's.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use crate::apply::node::RevRef;
use crate::apply::source::RevisionSource;
use crate::apply::update::Overlay;
use crate::error::{corrupt, invalid, Error, Result};
use crate::format::manifest::{display_path, Kind, Manifest};
use crate::format::Id;
use crate::progress::Quiet;
use crate::store::BlobSource;

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

/// The override images a node follows after an administrator's change: `add` appended (laid
/// last, so they win), `remove` taken out. Removing one the node does not follow is an error,
/// as a misspelt name would otherwise change nothing silently.
pub fn edit_follow(follow: &[String], add: &[String], remove: &[String]) -> Result<Vec<String>> {
    let mut v: Vec<String> = follow.to_vec();
    for r in remove {
        let before = v.len();
        v.retain(|n| n != r);
        if v.len() == before {
            return Err(invalid(format!(
                "--no-override {r}: this node does not follow {r} (it follows: {}); \
                 `aurum node-status` lists them",
                if follow.is_empty() {
                    "none".to_string()
                } else {
                    follow.join(", ")
                }
            )));
        }
    }
    for a in add {
        if !v.contains(a) {
            v.push(a.clone());
        }
    }
    Ok(v)
}

/// One override revision to lay: what the node records, and its manifest.
pub struct Layer {
    pub rev: RevRef,
    pub manifest: Manifest,
}

/// The override images whose files the tree the node holds now has (laid over its current
/// revision): what an update composed without one of them would delete.
pub fn held(state: &crate::format::node::NodeState) -> Vec<String> {
    state
        .current
        .iter()
        .flat_map(|c| c.overrides.iter())
        .filter_map(|o| o.image.clone())
        .collect()
}

/// The command composing a node's tree, as the errors of [`resolve`] name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Composing {
    Update,
    Stage,
    Rollback,
    Install,
    BootMemory,
    BootNetroot,
}

impl Composing {
    /// The command's run, as a sentence's subject.
    fn run(self) -> &'static str {
        match self {
            Composing::Update => "the update",
            Composing::Stage => "the staged revision",
            Composing::Rollback => "the rollback",
            Composing::Install => "the install",
            Composing::BootMemory => "the boot into memory",
            Composing::BootNetroot => "the boot from a network root",
        }
    }
}

/// The newest revision of each image of `follow` the source has, in order. An image it lacks
/// is skipped (a group without an override of its own), except those in `required` (named by
/// the administrator on this command line): a misspelt name must not pass unnoticed. When
/// some servers did not answer and the others lack an image, it is skipped only if it is not
/// in `held` (the node has none of its files to lose); one the node holds stops `composing`.
pub fn resolve(
    source: &dyn RevisionSource,
    follow: &[String],
    required: &[String],
    held: &[String],
    composing: Composing,
) -> Result<Vec<Layer>> {
    let mut layers = Vec::new();
    for name in follow {
        let target = match source.resolve(name) {
            Ok(t) => t,
            Err(Error::NotFound(_)) if !required.contains(name) => continue,
            Err(Error::NotFound(e)) => {
                return Err(Error::NotFound(format!(
                    "--override {name}: {e}; capture the override first (aurum getimage \
                     --image {name})"
                )))
            }
            // Not on the servers that answered, and the node has none of its files: nothing is
            // lost by going on without it (a node on a server that is down for good must
            // still update and boot). The next update lays it if it turns up.
            Err(Error::PartialNotFound { message, .. })
                if !required.contains(name) && !held.contains(name) =>
            {
                log::warn!("{message}; going on without the override image `{name}`, which this node does not hold yet");
                continue;
            }
            // Composed without it, the node would lose the override's files (or go without one
            // it was told to take): only servers that all answered may say it is absent.
            Err(Error::PartialNotFound {
                message,
                unreachable,
            }) => {
                let why = match held.contains(name) {
                    true => format!(
                        "This node follows the override image `{name}`: without it {} would \
                         delete the override's files",
                        composing.run()
                    ),
                    false => format!(
                        "--override {name} was given: {} cannot go on without it",
                        composing.run()
                    ),
                };
                return Err(Error::PartialNotFound {
                    message: format!(
                        "{message}. {why}, so nothing on the node was changed. Bring {} back, \
                         or give --server only servers that hold the whole repository",
                        unreachable.join(", ")
                    ),
                    unreachable,
                });
            }
            Err(e) => return Err(e),
        };
        let manifest = source.manifest(&target.id)?;
        layers.push(Layer {
            rev: RevRef::from(&target),
            manifest,
        });
    }
    Ok(layers)
}

/// The tree a node is to hold at revision `image` (its manifest): the newest revisions of the
/// overrides in `follow` composed over it (see [`resolve`] for `required`), and the overlay the
/// update records (the node follows `follow` from then on).
pub fn for_node(
    source: &dyn RevisionSource,
    image: Manifest,
    follow: Vec<String>,
    required: &[String],
    held: &[String],
    composing: Composing,
) -> Result<(Manifest, Overlay)> {
    let layers = resolve(source, &follow, required, held, composing)?;
    let mut overlay = Overlay {
        layers: layers.iter().map(|l| l.rev.clone()).collect(),
        image: None,
        follow: Some(follow),
    };
    if layers.is_empty() {
        return Ok((image, overlay));
    }
    let manifests: Vec<&Manifest> = layers.iter().map(|l| &l.manifest).collect();
    let tree = compose(&image, &manifests)?;
    overlay.image = Some(image);
    Ok((tree, overlay))
}

/// The manifest of `image` with every layer laid over it, in order: each entry of a layer
/// (its directories too) replaces the entry at its path or is added; the root directory's
/// metadata stays the image's. A layer may turn a file into a directory, not a directory into
/// anything else (that would drop what the directory holds). A hardlink of the tree whose file
/// a layer replaces keeps the old content, as it would on disk: it becomes a file of its own.
pub fn compose(image: &Manifest, layers: &[&Manifest]) -> Result<Manifest> {
    let mut tree: BTreeMap<Vec<u8>, crate::format::manifest::Entry> = image
        .entries
        .iter()
        .map(|e| (e.path.clone(), e.clone()))
        .collect();
    for layer in layers {
        layer.validate()?;
        for e in layer.entries.iter().skip(1) {
            if let Some(old) = tree.get(&e.path) {
                if old.kind == Kind::Dir && e.kind != Kind::Dir {
                    return Err(invalid(format!(
                        "an override has a {} where the image has a directory: {}; make it a \
                         directory in the override, or remove the directory from the image",
                        e.kind.name(),
                        display_path(&e.path)
                    )));
                }
                if old.kind != Kind::Dir {
                    detach_links(&mut tree, &e.path, layer);
                }
            }
            tree.insert(e.path.clone(), e.clone());
        }
    }
    let m = Manifest {
        entries: tree.into_values().collect(),
    };
    m.validate()?;
    Ok(m)
}

/// Before the entry at `path` is replaced: the hardlinks pointing at it (which `layer` does
/// not replace too) keep its content, the first as a file of its own, the others linked to it.
fn detach_links(
    tree: &mut BTreeMap<Vec<u8>, crate::format::manifest::Entry>,
    path: &[u8],
    layer: &Manifest,
) {
    let links: Vec<Vec<u8>> = tree
        .values()
        .filter(|e| matches!(&e.kind, Kind::Hardlink { target } if target == path))
        .filter(|e| layer.get(&e.path).is_none())
        .map(|e| e.path.clone())
        .collect();
    // A link to a path the tree lacks (a damaged manifest) has no content to keep.
    let (Some(first), Some(mut own)) = (links.first(), tree.get(path).cloned()) else {
        return;
    };
    own.path = first.clone();
    tree.insert(first.clone(), own);
    for l in links.iter().skip(1) {
        if let Some(e) = tree.get_mut(l) {
            e.kind = Kind::Hardlink {
                target: first.clone(),
            };
        }
    }
}

struct MemBlobs(HashMap<Id, Vec<u8>>);

impl BlobSource for MemBlobs {
    fn get(&self, id: &Id) -> Result<Vec<u8>> {
        self.0
            .get(id)
            .cloned()
            .ok_or_else(|| corrupt(format!("blob {} of an image was not fetched", id.short())))
    }
}

/// Checks the newest revision of `image` out into the empty directory `dir`, when the source
/// has that image (install's `hooks` image). Returns the revision (`hooks@2 1a2b3c4d`), `None`
/// when there is no such image.
pub fn checkout(source: &dyn RevisionSource, image: &str, dir: &Path) -> Result<Option<String>> {
    let target = match source.resolve(image) {
        Ok(t) => t,
        Err(Error::NotFound(_)) => return Ok(None),
        // Some servers did not answer: the image may be on those, and without it the node
        // would be installed without its hooks.
        Err(Error::PartialNotFound {
            message,
            unreachable,
        }) => {
            return Err(Error::PartialNotFound {
                message: format!(
                    "{message}. Without the `{image}` image the node would be installed \
                     without its hooks: bring {} back, or give only servers that hold the \
                     whole repository",
                    unreachable.join(", ")
                ),
                unreachable,
            })
        }
        Err(e) => return Err(e),
    };
    let m = source.manifest(&target.id)?;
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
            blobs
                .lock()
                .expect("blobs lock")
                .insert(*id, data.into_owned());
            Ok(())
        },
        &Quiet,
    )?;
    let blobs = MemBlobs(blobs.into_inner().expect("blobs lock"));
    crate::apply::checkout(&m, &blobs, dir, &Quiet)?;
    Ok(Some(target.name()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::manifest::{Chunk, Entry};

    fn entry(path: &str, kind: Kind, mode: u32) -> Entry {
        Entry {
            path: path.as_bytes().to_vec(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: 1,
            mtime_nsec: 0,
            xattrs: Vec::new(),
        }
    }

    fn file(path: &str, seed: u8) -> Entry {
        entry(
            path,
            Kind::File {
                size: 1,
                chunks: vec![Chunk {
                    id: Id::of(&[seed]),
                    len: 1,
                }],
                extents: None,
            },
            0o644,
        )
    }

    fn link(path: &str, target: &str) -> Entry {
        entry(
            path,
            Kind::Hardlink {
                target: target.as_bytes().to_vec(),
            },
            0o644,
        )
    }

    fn m(entries: Vec<Entry>) -> Manifest {
        Manifest { entries }
    }

    #[test]
    fn the_last_layer_wins_and_the_root_stays_the_images() {
        let image = m(vec![
            entry("", Kind::Dir, 0o755),
            entry("etc", Kind::Dir, 0o755),
            file("etc/motd", 1),
        ]);
        let group = m(vec![
            entry("", Kind::Dir, 0o700),
            entry("etc", Kind::Dir, 0o750),
            file("etc/motd", 2),
            file("etc/site", 3),
        ]);
        let host = m(vec![
            entry("", Kind::Dir, 0o700),
            entry("etc", Kind::Dir, 0o750),
            file("etc/motd", 4),
        ]);
        let c = compose(&image, &[&group, &host]).unwrap();
        assert_eq!(c.get(b"").unwrap().mode, 0o755);
        assert_eq!(c.get(b"etc").unwrap().mode, 0o750);
        assert_eq!(c.get(b"etc/motd"), Some(&file("etc/motd", 4)));
        assert_eq!(c.get(b"etc/site"), Some(&file("etc/site", 3)));
        assert_eq!(c.entries.len(), 4);
    }

    #[test]
    fn a_replaced_file_leaves_its_hardlinks_the_old_content() {
        let image = m(vec![
            entry("", Kind::Dir, 0o755),
            file("a", 1),
            link("b", "a"),
            link("c", "a"),
        ]);
        let over = m(vec![entry("", Kind::Dir, 0o755), file("a", 2)]);
        let c = compose(&image, &[&over]).unwrap();
        assert_eq!(c.get(b"a"), Some(&file("a", 2)));
        assert_eq!(c.get(b"b"), Some(&file("b", 1)));
        assert_eq!(c.get(b"c"), Some(&link("c", "b")));
    }

    #[test]
    fn a_directory_is_not_replaced_by_a_file() {
        let image = m(vec![
            entry("", Kind::Dir, 0o755),
            entry("etc", Kind::Dir, 0o755),
        ]);
        let over = m(vec![entry("", Kind::Dir, 0o755), file("etc", 1)]);
        let e = compose(&image, &[&over]).unwrap_err().to_string();
        assert!(e.contains("/etc") && e.contains("directory"), "{e}");
    }

    #[test]
    fn follow_list_edits() {
        let f = names(Some("g1"), "n05");
        let v = edit_follow(&f, &["override.x".into()], &["override.g1".into()]).unwrap();
        assert_eq!(v, ["override", "override.n05", "override.x"]);
        let e = edit_follow(&f, &[], &["override.nope".into()]).unwrap_err();
        assert!(e.to_string().contains("does not follow"), "{e}");
    }
}
