//! Exclude rules for getimage and updateclient, with rsync's filter-rule meaning.
//!
//! Sites migrating from SystemImager bring `updateclient.local.exclude` and getimage exclude
//! files written for `rsync --exclude-from`, so a rule reads exactly as rsync reads it there:
//!
//! - `- PATTERN` excludes, `+ PATTERN` includes, and a line with neither is an exclude;
//! - the rules are tried in order and the first one that matches decides (an entry no rule
//!   matches is captured); an excluded directory is left out with everything below it, so a
//!   `+` rule cannot bring back something inside it, as in rsync;
//! - a pattern starting with `/` is anchored at the image root (`/var/log/*`); one without is
//!   matched against the end of the path at a `/` boundary, so `lost+found` and `log/*.gz`
//!   match at any depth;
//! - `*` and `?` never cross a `/`, `**` does, `[...]` is a character class (`[!...]` or
//!   `[^...]` negated), `\` quotes the next character, a trailing `/` limits the rule to
//!   directories, and `dir/***` matches `dir` and everything in it.
//!
//! Thus `/proc/*` keeps the empty `/proc` mount point while `/proc` alone would drop it.

use regex::bytes::RegexSet;

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

/// Never captured, never touched by an update, whatever the options: a node's own aurum
/// state, and its boot counting (GRUB's environment block, where GRUB counts a revision's
/// boots, and aurum's GRUB configuration and kept fallback kernel; with systemd-boot, aurum's
/// entries and kernels on the ESP; see `apply::bootcount`).
pub const ALWAYS_EXCLUDED: &[&str] = &[
    "/var/lib/aurum-node",
    "/boot/grub/grubenv",
    "/boot/grub/aurum.cfg",
    "/boot/grub/aurum",
    "/efi/aurum",
    "/efi/loader/entries/aurum-*",
    "/boot/efi/aurum",
    "/boot/efi/loader/entries/aurum-*",
    "/boot/aurum",
    "/boot/loader/entries/aurum-*",
];

/// One rule: what a match means.
#[derive(Clone)]
struct Rule {
    include: bool,
    dir_only: bool,
}

/// A compiled list of rules.
#[derive(Clone)]
pub struct Excludes {
    set: RegexSet,
    rules: Vec<Rule>,
    patterns: Vec<String>,
}

impl Excludes {
    /// Compiles rules; an unparsable one is refused with its text.
    pub fn new(patterns: &[String]) -> Result<Excludes> {
        let mut regexes = Vec::new();
        let mut rules = Vec::new();
        for p in patterns {
            if p == "!" || p.starts_with("! ") {
                return Err(invalid(format!(
                    "exclude rule `{p}` (rsync's \"clear the list\") is not supported: leave the defaults out with --no-default-excludes instead"
                )));
            }
            let (include, pattern) = match (p.strip_prefix("+ "), p.strip_prefix("- ")) {
                (Some(rest), _) => (true, rest),
                (None, Some(rest)) => (false, rest),
                (None, None) => (false, p.as_str()),
            };
            if pattern.is_empty() {
                return Err(invalid(format!("exclude rule `{p}` has no pattern")));
            }
            let (body, dir_only) = match pattern.strip_suffix('/') {
                Some(b) if !b.is_empty() => (b, true),
                _ => (pattern, false),
            };
            regexes.push(rule_regex(body).ok_or_else(|| {
                invalid(format!(
                    "exclude pattern `{p}` is not valid: a `[` opens a class that no `]` closes (write `\\[` for a literal one)"
                ))
            })?);
            rules.push(Rule { include, dir_only });
        }
        let set = RegexSet::new(&regexes).map_err(|e| invalid(format!("exclude patterns: {e}")))?;
        Ok(Excludes {
            set,
            rules,
            patterns: patterns.to_vec(),
        })
    }

    /// Whether the entry at manifest path `rel` is excluded: the first rule that matches it
    /// decides.
    pub fn excluded(&self, rel: &[u8], is_dir: bool) -> bool {
        if rel.is_empty() {
            return false;
        }
        // `/` + the path, on the stack for all but the longest paths: this runs for every
        // entry a capture walks and every path an update or a rollback looks at.
        let mut short = [0u8; 256];
        let long: Vec<u8>;
        let abs: &[u8] = match short.get_mut(..rel.len() + 1) {
            Some(buf) => {
                buf[0] = b'/';
                buf[1..].copy_from_slice(rel);
                buf
            }
            None => {
                long = [b"/", rel].concat();
                &long
            }
        };
        // Most paths match no rule: one pass that may stop early says so, before the search
        // for every rule that matches (which reads the whole path, for the first in order).
        if !self.set.is_match(abs) {
            return false;
        }
        self.set
            .matches(abs)
            .into_iter()
            .filter_map(|i| self.rules.get(i))
            .find(|r| is_dir || !r.dir_only)
            .is_some_and(|r| !r.include)
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

/// The regex for an rsync pattern (without its rule prefix and trailing `/`), matched against
/// `/` + the manifest path; `None` for an unclosed `[` (which rsync lets match nothing).
fn rule_regex(pattern: &str) -> Option<String> {
    // `dir/***`: the directory and everything in it.
    let (pattern, and_below) = match pattern.strip_suffix("/***") {
        Some(p) if !p.is_empty() => (p, true),
        _ => (pattern, false),
    };
    let (anchored, body) = match pattern.strip_prefix('/') {
        Some(b) => (true, b),
        None => (false, pattern),
    };
    // Bytes, not Unicode: paths need not be UTF-8; `.` crosses newlines.
    // Unanchored, the pattern starts at any `/` of the path (which always starts with one).
    let mut re = String::from(if anchored { "(?s-u)^/" } else { "(?s-u)^.*/" });
    let chars: Vec<char> = body.chars().collect();
    let mut rest = chars.as_slice();
    while let Some((&c, tail)) = rest.split_first() {
        let here = rest;
        rest = tail;
        match (c, tail) {
            ('\\', [escaped, after @ ..]) => {
                re.push_str(&regex::escape(&escaped.to_string()));
                rest = after;
            }
            ('*', _) => {
                let more = tail.iter().take_while(|&&c| c == '*').count();
                re.push_str(if more > 0 { ".*" } else { "[^/]*" });
                rest = tail.get(more..).unwrap_or_default();
            }
            ('?', _) => re.push_str("[^/]"),
            ('[', _) => {
                let (cls, len) = class(here)?;
                re.push_str(&cls);
                rest = here.get(len..).unwrap_or_default();
            }
            (c, _) => re.push_str(&regex::escape(&c.to_string())),
        }
    }
    if and_below {
        re.push_str("(?:/.*)?");
    }
    re.push('$');
    Some(re)
}

/// A `[...]` class at the start of `chars` as a regex class (a negated one never matches
/// `/`), and how many characters it took; `None` when it is not closed.
fn class(chars: &[char]) -> Option<(String, usize)> {
    let mut out = String::from("[");
    let mut i = 1;
    if matches!(chars.get(i), Some('!' | '^')) {
        out.push_str("^/");
        i += 1;
    }
    let first = i;
    loop {
        let c = *chars.get(i)?;
        if c == ']' && i > first {
            out.push(']');
            return Some((out, i + 1));
        }
        if c == '-' && i > first && chars.get(i + 1) != Some(&']') {
            out.push('-');
        } else {
            out.push_str(&regex::escape(&c.to_string()));
        }
        i += 1;
    }
}

/// Reads rules from a file as `rsync --exclude-from` does: one a line, `+ `/`- ` prefixes
/// kept for [`Excludes::new`], `#` and `;` comments and blank lines ignored.
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
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
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
        // Paths longer than the stack buffer, and paths exactly at its edge.
        for n in [253, 254, 255, 256, 400] {
            let dir = "d".repeat(n - "/x.swp".len());
            assert!(e.excluded(format!("{dir}/x.swp").as_bytes(), false), "{n}");
            assert!(!e.excluded(format!("{dir}/x.swq").as_bytes(), false), "{n}");
            assert!(
                e.excluded(format!("{dir}/lost+found").as_bytes(), true),
                "{n}"
            );
        }
    }

    #[test]
    fn rsync_rules_first_match_wins() {
        let e = ex(&[
            "+ /var/log/keep.log",
            "- /var/log/*",
            "+ *.conf",
            "- /etc/**",
            "- /opt/[!a]?",
            "/srv/***",
            "cache/",
            "/a\\*b",
        ]);
        assert!(!e.excluded(b"var/log/keep.log", false));
        assert!(e.excluded(b"var/log/syslog", false));
        assert!(!e.excluded(b"etc/ssh/sshd.conf", false));
        assert!(e.excluded(b"etc/ssh/key", false));
        assert!(e.excluded(b"opt/b1", false));
        assert!(!e.excluded(b"opt/a1", false));
        assert!(!e.excluded(b"opt/b12", false));
        assert!(e.excluded(b"srv", true) && e.excluded(b"srv/x/y", false));
        assert!(!e.excluded(b"srvx", true));
        assert!(e.excluded(b"home/u/cache", true));
        assert!(!e.excluded(b"home/u/cache", false));
        assert!(e.excluded(b"a*b", false) && !e.excluded(b"axb", false));
        assert!(Excludes::new(&["!".into()]).is_err());
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
