//! Differences between two revisions, entry by entry.

use serde::Serialize;

use crate::format::manifest::{Entry, Kind, Manifest};

/// How one path differs.
#[derive(Debug, Serialize)]
pub struct Change {
    /// `/`-rooted path, non-UTF-8 bytes escaped.
    pub path: String,
    /// `added`, `removed` or `changed`.
    pub status: &'static str,
    /// For `changed`: what differs (type, content, mode, owner, mtime, xattrs, target, device).
    pub what: Vec<&'static str>,
}

/// What differs between two entries at the same path.
pub fn entry_changes(old: &Entry, new: &Entry) -> Vec<&'static str> {
    let mut what = Vec::new();
    match (&old.kind, &new.kind) {
        (
            Kind::File {
                size: s1,
                chunks: c1,
                extents: e1,
            },
            Kind::File {
                size: s2,
                chunks: c2,
                extents: e2,
            },
        ) => {
            if s1 != s2 || c1 != c2 || e1 != e2 {
                what.push("content");
            }
        }
        (Kind::Symlink { target: a }, Kind::Symlink { target: b })
        | (Kind::Hardlink { target: a }, Kind::Hardlink { target: b }) => {
            if a != b {
                what.push("target");
            }
        }
        (Kind::Char { rdev: a }, Kind::Char { rdev: b })
        | (Kind::Block { rdev: a }, Kind::Block { rdev: b }) => {
            if a != b {
                what.push("device");
            }
        }
        (a, b) if std::mem::discriminant(a) == std::mem::discriminant(b) => {}
        _ => what.push("type"),
    }
    if old.mode != new.mode {
        what.push("mode");
    }
    if old.uid != new.uid || old.gid != new.gid {
        what.push("owner");
    }
    if old.xattrs != new.xattrs {
        what.push("xattrs");
    }
    if (old.mtime, old.mtime_nsec) != (new.mtime, new.mtime_nsec) {
        what.push("mtime");
    }
    what
}

/// Every path that differs, in path order.
pub fn diff(a: &Manifest, b: &Manifest) -> Vec<Change> {
    use std::cmp::Ordering;
    let mut out = Vec::new();
    let mut ea = a.entries.iter().peekable();
    let mut eb = b.entries.iter().peekable();
    loop {
        let ord = match (ea.peek(), eb.peek()) {
            (Some(x), Some(y)) => x.path.cmp(&y.path),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => break,
        };
        match ord {
            Ordering::Less => {
                if let Some(x) = ea.next() {
                    out.push(Change {
                        path: x.display(),
                        status: "removed",
                        what: vec![],
                    });
                }
            }
            Ordering::Greater => {
                if let Some(y) = eb.next() {
                    out.push(Change {
                        path: y.display(),
                        status: "added",
                        what: vec![],
                    });
                }
            }
            Ordering::Equal => {
                if let (Some(x), Some(y)) = (ea.next(), eb.next()) {
                    let what = entry_changes(x, y);
                    if !what.is_empty() {
                        out.push(Change {
                            path: y.display(),
                            status: "changed",
                            what,
                        });
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(path: &str, kind: Kind, mode: u32) -> Entry {
        Entry {
            path: path.into(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            xattrs: vec![],
        }
    }

    #[test]
    fn reports_each_kind_of_change() {
        let a = Manifest {
            entries: vec![
                e("", Kind::Dir, 0o755),
                e("gone", Kind::Fifo, 0o644),
                e("m", Kind::Fifo, 0o644),
                e("t", Kind::Fifo, 0o644),
            ],
        };
        let b = Manifest {
            entries: vec![
                e("", Kind::Dir, 0o755),
                e("m", Kind::Fifo, 0o600),
                e("new", Kind::Fifo, 0o644),
                e("t", Kind::Socket, 0o644),
            ],
        };
        let d = diff(&a, &b);
        let got: Vec<(&str, &str, Vec<&str>)> = d
            .iter()
            .map(|c| (c.path.as_str(), c.status, c.what.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("/gone", "removed", vec![]),
                ("/m", "changed", vec!["mode"]),
                ("/new", "added", vec![]),
                ("/t", "changed", vec!["type"]),
            ]
        );
    }
}
