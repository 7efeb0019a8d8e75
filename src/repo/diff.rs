//! Differences between two revisions, entry by entry: a merge-join of two sorted entry
//! streams.

use std::borrow::Borrow;
use std::cmp::Ordering;

use serde::Serialize;

use crate::error::Result;
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
    let ok = |e| -> Result<&Entry> { Ok(e) };
    Merge::new(a.entries.iter().map(ok), b.entries.iter().map(ok))
        .collect::<Result<_>>()
        .expect("entries in memory read without error")
}

/// Every path that differs between two entry streams (each in path order, as manifests and
/// [`crate::repo::Repository::manifest_entries`] give them), as an iterator: a merge-join
/// that holds one entry of each side, so two revisions of any size diff in the same small
/// memory. The first error of either stream ends it.
pub struct Merge<A: Iterator, B: Iterator> {
    pairs: Pairs<A, B>,
}

impl<E, A, B> Merge<A, B>
where
    E: Borrow<Entry>,
    A: Iterator<Item = Result<E>>,
    B: Iterator<Item = Result<E>>,
{
    pub fn new(a: A, b: B) -> Self {
        Merge {
            pairs: Pairs::new(a, b),
        }
    }
}

impl<E, A, B> Iterator for Merge<A, B>
where
    E: Borrow<Entry>,
    A: Iterator<Item = Result<E>>,
    B: Iterator<Item = Result<E>>,
{
    type Item = Result<Change>;

    fn next(&mut self) -> Option<Result<Change>> {
        loop {
            let change = match self.pairs.next()? {
                Err(e) => return Some(Err(e)),
                Ok((Some(x), None)) => Change {
                    path: x.borrow().display(),
                    status: "removed",
                    what: vec![],
                },
                Ok((None, Some(y))) => Change {
                    path: y.borrow().display(),
                    status: "added",
                    what: vec![],
                },
                Ok((Some(x), Some(y))) => {
                    let what = entry_changes(x.borrow(), y.borrow());
                    if what.is_empty() {
                        continue;
                    }
                    Change {
                        path: y.borrow().display(),
                        status: "changed",
                        what,
                    }
                }
                Ok((None, None)) => continue,
            };
            return Some(Ok(change));
        }
    }
}

/// The entries of two streams in path order (each sorted), paired by path: `(Some, Some)` for a
/// path in both, one side `None` for a path in one only. The merge-join under [`Merge`] and
/// under the streamed delta precomputation ([`crate::repo::delta::precompute`]); it holds one
/// entry of each side. The first error of either stream ends it.
pub struct Pairs<A: Iterator, B: Iterator> {
    a: std::iter::Peekable<A>,
    b: std::iter::Peekable<B>,
    failed: bool,
}

impl<E, A, B> Pairs<A, B>
where
    E: Borrow<Entry>,
    A: Iterator<Item = Result<E>>,
    B: Iterator<Item = Result<E>>,
{
    pub fn new(a: A, b: B) -> Self {
        Pairs {
            a: a.peekable(),
            b: b.peekable(),
            failed: false,
        }
    }

    /// The next pair of entries at the same path (either side missing where the path is
    /// only in the other); None at the end of both.
    #[allow(clippy::type_complexity)] // a pair of optional entries
    fn pair(&mut self) -> Result<Option<(Option<E>, Option<E>)>> {
        let ord = match (self.a.peek(), self.b.peek()) {
            (Some(Err(_)), _) | (_, Some(Err(_))) => Ordering::Equal,
            (Some(Ok(x)), Some(Ok(y))) => x.borrow().path.cmp(&y.borrow().path),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => return Ok(None),
        };
        Ok(Some(match ord {
            Ordering::Less => (self.a.next().transpose()?, None),
            Ordering::Greater => (None, self.b.next().transpose()?),
            Ordering::Equal => (self.a.next().transpose()?, self.b.next().transpose()?),
        }))
    }
}

impl<E, A, B> Iterator for Pairs<A, B>
where
    E: Borrow<Entry>,
    A: Iterator<Item = Result<E>>,
    B: Iterator<Item = Result<E>>,
{
    #[allow(clippy::type_complexity)] // a pair of optional entries
    type Item = Result<(Option<E>, Option<E>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let got = self.pair();
        self.failed = got.is_err();
        got.transpose()
    }
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
