//! Paths a capture takes from a base revision instead of from the tree it scans.
//!
//! `aurum chroot` captures a work tree that had proc, sysfs, a small /dev, a tmpfs /run and the
//! host's resolv.conf laid over it while the command ran; whatever the tree holds at those
//! places afterwards says nothing about the image. So the new revision takes them, and the few
//! per-machine files a package script may generate in a chroot (machine-id, ssh host keys), as
//! the parent revision has them: the scan leaves them out, and [`splice`] puts the parent's
//! entries back. The result differs from the parent exactly where the command changed the tree.

use crate::format::manifest::{display_path, parent, Entry, Kind, Manifest};

use crate::excludes::Excludes;

/// What the base revision contributes: its manifest, and which of its paths it gives.
pub struct Keep {
    pub base: Manifest,
    /// Paths (with everything below a matching directory) taken from `base`; the scan must
    /// leave out the same paths.
    pub paths: Excludes,
}

impl Keep {
    /// Whether `path`, or a directory above it, is one the base gives.
    fn kept(&self, path: &[u8]) -> bool {
        let mut p = path;
        loop {
            if p.is_empty() {
                return false;
            }
            // Only the deepest component can be a non-directory: every ancestor is a directory.
            if self
                .paths
                .excluded(p, p.len() < path.len() || self.is_dir(path))
            {
                return true;
            }
            p = parent(p);
        }
    }

    fn is_dir(&self, path: &[u8]) -> bool {
        self.base.get(path).is_some_and(|e| e.kind == Kind::Dir)
    }
}

/// Merges the base's kept entries into `scanned` (sorted, without kept paths). An entry whose
/// directory is gone from the new tree, or a hardlink whose file is, cannot be kept: it is
/// dropped and named in a warning.
pub fn splice(scanned: Vec<Entry>, keep: &Keep, warnings: &mut Vec<String>) -> Vec<Entry> {
    let kept: Vec<&Entry> = keep
        .base
        .entries
        .iter()
        .filter(|e| keep.kept(&e.path))
        .collect();
    let mut out: Vec<Entry> = Vec::with_capacity(scanned.len() + kept.len());
    let mut dirs: std::collections::HashSet<Vec<u8>> = std::collections::HashSet::new();
    let mut files: std::collections::HashSet<Vec<u8>> = std::collections::HashSet::new();
    let mut from_scan = scanned.into_iter().peekable();
    let mut from_base = kept.into_iter().peekable();
    loop {
        let take_scan = match (from_scan.peek(), from_base.peek()) {
            (Some(s), Some(b)) => s.path < b.path,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        let e = if take_scan {
            from_scan.next().expect("peeked")
        } else {
            let e = from_base.next().expect("peeked").clone();
            let placeable = e.path.is_empty() || dirs.contains(parent(&e.path));
            let linkable = match &e.kind {
                Kind::Hardlink { target } => files.contains(target),
                _ => true,
            };
            if !placeable || !linkable {
                warnings.push(format!(
                    "{} is kept from the parent revision, but the tree no longer has {}; left out",
                    display_path(&e.path),
                    if placeable {
                        "the file it is a hardlink of"
                    } else {
                        "its directory"
                    }
                ));
                continue;
            }
            e
        };
        match e.kind {
            Kind::Dir => {
                dirs.insert(e.path.clone());
            }
            Kind::File { .. } => {
                files.insert(e.path.clone());
            }
            _ => {}
        }
        out.push(e);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(path: &str, kind: Kind, mtime: i64) -> Entry {
        Entry {
            path: path.into(),
            kind,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime,
            mtime_nsec: 0,
            xattrs: vec![],
        }
    }

    fn file() -> Kind {
        Kind::File {
            size: 0,
            chunks: vec![],
            extents: None,
        }
    }

    #[test]
    fn kept_paths_come_from_the_base() {
        let base = Manifest {
            entries: vec![
                e("", Kind::Dir, 1),
                e("dev", Kind::Dir, 1),
                e("dev/null", Kind::Char { rdev: 259 }, 1),
                e("etc", Kind::Dir, 1),
                e("etc/resolv.conf", file(), 1),
                e("tmp", Kind::Dir, 1),
                e("tmp/a", file(), 1),
                e(
                    "tmp/b",
                    Kind::Hardlink {
                        target: "etc/x".into(),
                    },
                    1,
                ),
            ],
        };
        let keep = Keep {
            base,
            paths: Excludes::new(&["/dev".into(), "/etc/resolv.conf".into(), "/tmp/*".into()])
                .unwrap(),
        };
        // The scan saw a changed /etc, no /etc/x, and a /tmp the command emptied.
        let scanned = vec![
            e("", Kind::Dir, 2),
            e("etc", Kind::Dir, 2),
            e("etc/passwd", file(), 2),
            e("tmp", Kind::Dir, 2),
        ];
        let mut warnings = Vec::new();
        let got = splice(scanned, &keep, &mut warnings);
        let paths: Vec<(String, i64)> = got.iter().map(|e| (e.display(), e.mtime)).collect();
        assert_eq!(
            paths,
            vec![
                ("/".into(), 2),
                ("/dev".into(), 1),
                ("/dev/null".into(), 1),
                ("/etc".into(), 2),
                ("/etc/passwd".into(), 2),
                ("/etc/resolv.conf".into(), 1),
                ("/tmp".into(), 2),
                ("/tmp/a".into(), 1),
            ]
        );
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("/tmp/b"), "{warnings:?}");
        Manifest { entries: got }.validate().unwrap();
    }
}
