//! Exclude patterns for getimage.
//!
//! Patterns read like SystemImager's and rsync's: one starting with `/` is anchored at the
//! image root (`/var/log/*`), one without a slash matches that name anywhere (`lost+found`),
//! `*` never crosses a `/`, `**` does, and a trailing `/` limits the pattern to directories.
//! An excluded directory is left out with everything below it, so `/proc/*` keeps the empty
//! `/proc` mount point while `/proc` alone would drop it.

use globset::{Candidate, GlobBuilder, GlobSet, GlobSetBuilder};

use crate::error::{invalid, Result};

/// SystemImager's getimage defaults (its getimage.exclude and 5.0 additions), plus what a
/// running system holds that belongs to one machine or to no disk at all.
pub const DEFAULT_CAPTURE_EXCLUDES: &[&str] = &[
    "/proc/*",
    "/sys/*",
    "/dev/*",
    "/run/*",
    "/tmp/*",
    "/var/tmp/*",
    "/media/*",
    "/mnt/*",
    "/selinux/*",
    "/var/lib/nfs/*",
    "/etc/lvm/cache/*",
    "/etc/lvm/backup/*",
    "/etc/lvm/archive/*",
    "/etc/udev/rules.d/70-persistent-net.rules",
    "/lib/udev/rules.d/75-persistent-net-generator.rules",
    "/etc/blkid.tab",
    "/etc/blkid/blkid.tab*",
    "/etc/mtab",
    "/etc/ssh/ssh_host_*",
    "/etc/machine-id",
    "/var/lib/dbus/machine-id",
    "/etc/hostname",
    "lost+found/",
];

/// Never captured, whatever the options: a node's own aurum state.
pub const ALWAYS_EXCLUDED: &[&str] = &["/var/lib/aurum-node"];

/// A compiled list of patterns.
pub struct Excludes {
    set: GlobSet,
    dir_only: Vec<bool>,
    patterns: Vec<String>,
}

impl Excludes {
    /// Compiles patterns; an unparsable one is refused with its text.
    pub fn new(patterns: &[String]) -> Result<Excludes> {
        let mut b = GlobSetBuilder::new();
        let mut dir_only = Vec::new();
        for p in patterns {
            let (body, only_dirs) = match p.strip_suffix('/') {
                Some(b) if !b.is_empty() => (b, true),
                _ => (p.as_str(), false),
            };
            let glob = if body.starts_with('/') {
                body.to_string()
            } else {
                format!("/**/{body}")
            };
            let g = GlobBuilder::new(&glob)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|e| invalid(format!("exclude pattern `{p}` is not valid: {e}")))?;
            b.add(g);
            dir_only.push(only_dirs);
        }
        let set = b
            .build()
            .map_err(|e| invalid(format!("exclude patterns: {e}")))?;
        Ok(Excludes {
            set,
            dir_only,
            patterns: patterns.to_vec(),
        })
    }

    /// Whether the entry at manifest path `rel` is excluded.
    pub fn excluded(&self, rel: &[u8], is_dir: bool) -> bool {
        if rel.is_empty() {
            return false;
        }
        let mut abs = Vec::with_capacity(rel.len() + 1);
        abs.push(b'/');
        abs.extend_from_slice(rel);
        let path = std::path::Path::new(
            <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&abs),
        );
        let cand = Candidate::new(path);
        self.set
            .matches_candidate(&cand)
            .into_iter()
            .any(|i| is_dir || !self.dir_only[i])
    }

    /// Whether the excludes leave out whatever the directory `rel` holds (`/tmp/*`, `*`):
    /// whether they exclude a name in it that no pattern names specifically (NUL is in no file
    /// name), file or directory.
    pub fn excludes_everything_in(&self, rel: &[u8]) -> bool {
        let mut probe = rel.to_vec();
        probe.extend_from_slice(b"/\0");
        self.excluded(&probe, false) && self.excluded(&probe, true)
    }

    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }
}

/// Reads patterns from a file: one a line, `#` comments and blank lines ignored.
pub fn read_exclude_file(path: &std::path::Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        crate::error::invalid(format!(
            "cannot read the exclude file {}: {e}",
            path.display()
        ))
    })?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(p: &[&str]) -> Excludes {
        Excludes::new(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn anchored_and_floating_patterns() {
        let e = ex(&["/proc/*", "lost+found/", "/etc/ssh/ssh_host_*", "*.swp"]);
        assert!(!e.excluded(b"proc", true));
        assert!(e.excluded(b"proc/1", true));
        assert!(e.excluded(b"lost+found", true));
        assert!(e.excluded(b"scr/lost+found", true));
        assert!(!e.excluded(b"scr/lost+found", false));
        assert!(e.excluded(b"etc/ssh/ssh_host_rsa_key", false));
        assert!(!e.excluded(b"etc/ssh/sshd_config", false));
        assert!(!e.excluded(b"usr/proc/1", false));
        assert!(e.excluded(b"home/a/.x.swp", false));
        assert!(e.excluded(b"home/\xff.swp", false));
    }

    #[test]
    fn directories_whose_content_is_excluded() {
        let e = ex(&["/tmp/*", "/var/log/*.log", "/media/*/"]);
        assert!(e.excludes_everything_in(b"tmp"));
        assert!(!e.excludes_everything_in(b"var/log"));
        assert!(!e.excludes_everything_in(b"media"));
        assert!(!e.excludes_everything_in(b"etc"));
        assert!(ex(&["*"]).excludes_everything_in(b"etc"));
    }

    #[test]
    fn defaults_compile() {
        let d: Vec<String> = DEFAULT_CAPTURE_EXCLUDES
            .iter()
            .map(|s| s.to_string())
            .collect();
        let e = Excludes::new(&d).unwrap();
        assert!(e.excluded(b"etc/machine-id", false));
        assert!(e.excluded(b"dev/null", false));
        assert!(!e.excluded(b"dev", true));
        assert!(!e.excluded(b"etc/passwd", false));
    }
}
