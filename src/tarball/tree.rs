//! The tree an archive describes, built member by member as a tar extracts it.
//!
//! A later member replaces an earlier one of the same name (`tar -r` appends a new version of
//! a file at the end), and a hard link joins the file its target names *at that point of the
//! archive*: when the target is replaced later, the link keeps the earlier content, as
//! GNU tar and bsdtar extract it. We therefore track files by inode: a hard link turns its
//! target's entry into a shared inode that every name linked to it refers to; replacing a name
//! only repoints that name. At the end, the first name of each inode in path order carries the
//! content and the others are manifest hardlinks to it, as a capture records them.

use std::collections::BTreeMap;

use super::acl;
use crate::error::{invalid, Result};
use crate::format::manifest::{display_path, Entry, Kind};

/// A member's entry and its ACLs in text form, turned into xattrs once the archive's own
/// account files are known.
pub(crate) struct Node {
    pub entry: Entry,
    pub acls: Vec<(&'static [u8], Vec<u8>)>,
}

enum Slot {
    Own(Node),
    /// An index into [`Tree::inodes`].
    Linked(usize),
}

#[derive(Default)]
pub(crate) struct Tree {
    slots: BTreeMap<Vec<u8>, Slot>,
    inodes: Vec<Node>,
    root: Option<Node>,
    newest: i64,
}

impl Tree {
    /// Adds a member under `path` (`None` for the root), replacing any earlier one of that name.
    pub fn add(&mut self, path: Option<Vec<u8>>, node: Node) -> Result<()> {
        self.newest = self.newest.max(node.entry.mtime);
        let Some(path) = path else {
            if node.entry.kind == Kind::Dir {
                self.root = Some(node);
            }
            return Ok(());
        };
        let slot = match &node.entry.kind {
            Kind::Hardlink { target } => Slot::Linked(self.inode_of(target, &path)?),
            _ => Slot::Own(node),
        };
        self.slots.insert(path, slot);
        Ok(())
    }

    /// The inode `target` names now, shared from here on; `link` names the link in errors.
    fn inode_of(&mut self, target: &[u8], link: &[u8]) -> Result<usize> {
        let next = self.inodes.len();
        let slot = self.slots.get_mut(target).ok_or_else(|| {
            invalid(format!(
                "archive member {} is a hard link to {}, which no member before it holds; the archive is damaged or was not made by a tar",
                display_path(link),
                display_path(target)
            ))
        })?;
        match slot {
            Slot::Linked(id) => Ok(*id),
            Slot::Own(node) if node.entry.kind == Kind::Dir => Err(invalid(format!(
                "archive has a hardlink to {}, which is not a file",
                display_path(target)
            ))),
            Slot::Own(_) => {
                let Slot::Own(node) = std::mem::replace(slot, Slot::Linked(next)) else {
                    unreachable!("matched above")
                };
                self.inodes.push(node);
                Ok(next)
            }
        }
    }

    /// The archive's newest mtime (implied directories take it).
    pub fn newest(&self) -> i64 {
        self.newest
    }

    /// The entries, root first, then in path order, with ACLs as xattrs and hard links to the
    /// first name of each file.
    pub fn into_entries(self, accounts: &acl::Accounts) -> Result<(Option<Entry>, Vec<Entry>)> {
        let root = self.root.map(|n| with_acls(n, accounts)).transpose()?;
        let mut inodes: Vec<Option<Node>> = self.inodes.into_iter().map(Some).collect();
        let mut first: Vec<Option<Entry>> = vec![None; inodes.len()];
        let mut out = Vec::with_capacity(self.slots.len());
        for (path, slot) in self.slots {
            let entry = match slot {
                Slot::Own(mut node) => {
                    node.entry.path = path;
                    with_acls(node, accounts)?
                }
                Slot::Linked(id) => match first.get(id).and_then(Option::as_ref) {
                    Some(primary) => Entry {
                        path,
                        kind: Kind::Hardlink {
                            target: primary.path.clone(),
                        },
                        ..primary.clone()
                    },
                    None => {
                        // `link` hands out ids of `inodes`, each taken once here.
                        let mut node = inodes
                            .get_mut(id)
                            .and_then(Option::take)
                            .expect("each inode once");
                        node.entry.path = path;
                        let e = with_acls(node, accounts)?;
                        if let Some(f) = first.get_mut(id) {
                            *f = Some(e.clone());
                        }
                        e
                    }
                },
            };
            out.push(entry);
        }
        Ok((root, out))
    }
}

fn with_acls(node: Node, accounts: &acl::Accounts) -> Result<Entry> {
    let mut e = node.entry;
    for (key, text) in node.acls {
        let value = acl::from_text(&text, accounts, &display_path(&e.path))?;
        e.xattrs.retain(|x| x.0 != key);
        e.xattrs.push((key.to_vec(), value));
    }
    e.xattrs.sort();
    Ok(e)
}
