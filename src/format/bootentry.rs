//! systemd-boot's files on the EFI system partition: Boot Loader Specification type #1 entries
//! (`loader/entries/NAME.conf`), the boot counter in their names, and the `default` line of
//! `loader/loader.conf`.
//!
//! Boot counting (Boot Loader Specification, "Boot counting"): an entry named
//! `NAME+LEFT-DONE.conf` (or `NAME+LEFT.conf`, DONE being 0) is on trial. Each time
//! systemd-boot boots it, it renames the file on the ESP to `NAME+(LEFT-1)-(DONE+1).conf`
//! before the kernel starts (at LEFT 0 only DONE goes up); an entry at `+0` is "bad", and
//! systemd-boot sorts it after every other entry. A boot that went well blesses the entry by
//! dropping the counter (`NAME.conf`): what `systemd-bless-boot` does, and aurum after a passing
//! `aurum health`. [`EntryName`] parses and writes such names and does those renames.
//!
//! An entry file is `key value` lines; aurum writes `title`, `linux`, `initrd` and `options`
//! ([`Entry`]), paths being absolute on the ESP. The kernels aurum's entries boot are in
//! directories of the ESP's `aurum/` named for their content ([`kernel_dir`]).

use crate::error::{invalid, Result};

/// The file name suffix of a type #1 entry.
pub const SUFFIX: &str = ".conf";

/// A type #1 entry's file name, with its boot counter when it has one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryName {
    /// The name without counter and suffix (systemd-boot's entry id before the counter).
    pub name: String,
    /// Boots left (`+LEFT`); `None`: no counter, the entry is not on trial.
    pub left: Option<u32>,
    /// Boots done (`-DONE`); 0 when the name has none.
    pub done: u32,
}

impl EntryName {
    /// An entry without a counter.
    pub fn plain(name: &str) -> EntryName {
        EntryName {
            name: name.to_string(),
            left: None,
            done: 0,
        }
    }

    /// An entry on trial for `tries` boots.
    pub fn counting(name: &str, tries: u32) -> EntryName {
        EntryName {
            name: name.to_string(),
            left: Some(tries),
            done: 0,
        }
    }

    /// The name of file `file` (`foo+2-1.conf`), as systemd-boot reads it: `None` for a file
    /// that is no entry (no `.conf` suffix, or nothing before it). A `+` suffix that is not
    /// `+DIGITS` or `+DIGITS-DIGITS` is part of the name, as it is to systemd-boot.
    pub fn parse(file: &str) -> Option<EntryName> {
        let stem = file.strip_suffix(SUFFIX)?;
        if stem.is_empty() {
            return None;
        }
        let digits = |s: &str| -> Option<u32> {
            match !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                true => s.parse().ok(),
                false => None,
            }
        };
        if let Some((name, counter)) = stem.rsplit_once('+') {
            let (left, done) = match counter.split_once('-') {
                Some((l, d)) => (digits(l), digits(d)),
                None => (digits(counter), Some(0)),
            };
            if let (Some(left), Some(done), false) = (left, done, name.is_empty()) {
                return Some(EntryName {
                    name: name.to_string(),
                    left: Some(left),
                    done,
                });
            }
        }
        Some(EntryName::plain(stem))
    }

    /// The file name: `NAME.conf`, `NAME+LEFT.conf` before the first boot, else
    /// `NAME+LEFT-DONE.conf`.
    pub fn file(&self) -> String {
        match (self.left, self.done) {
            (None, _) => format!("{}{SUFFIX}", self.name),
            (Some(l), 0) => format!("{}+{l}{SUFFIX}", self.name),
            (Some(l), d) => format!("{}+{l}-{d}{SUFFIX}", self.name),
        }
    }

    /// The name systemd-boot gives the file when it boots the entry: one boot taken from
    /// LEFT (none below 0) and added to DONE. An entry without a counter keeps its name.
    pub fn booted(&self) -> EntryName {
        match self.left {
            None => self.clone(),
            Some(l) => EntryName {
                name: self.name.clone(),
                left: Some(l.saturating_sub(1)),
                done: self.done.saturating_add(1),
            },
        }
    }

    /// The name of the entry blessed: the counter dropped (`systemd-bless-boot good`).
    pub fn blessed(&self) -> EntryName {
        EntryName::plain(&self.name)
    }

    /// Whether the entry used up its boots: systemd-boot then sorts it last and boots it
    /// only when nothing else matches.
    pub fn bad(&self) -> bool {
        self.left == Some(0)
    }
}

/// A type #1 entry as aurum writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub title: String,
    /// The kernel, an absolute path on the ESP (`/aurum/.../vmlinuz`).
    pub linux: String,
    /// The initramfs, the same way.
    pub initrd: Option<String>,
    /// The kernel command line.
    pub options: String,
}

impl Entry {
    /// The file's text. A title is one line: line breaks in it become spaces.
    pub fn encode(&self) -> String {
        let title: String = self
            .title
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let mut s = format!("title {title}\nlinux {}\n", self.linux);
        if let Some(i) = &self.initrd {
            s.push_str(&format!("initrd {i}\n"));
        }
        s.push_str(&format!("options {}\n", self.options));
        s
    }

    /// Reads an entry's text: the keys aurum writes (others, such as `version` or
    /// `sort-key`, are ignored). `what` names the file in errors.
    pub fn decode(text: &str, what: &str) -> Result<Entry> {
        let mut e = Entry {
            title: String::new(),
            linux: String::new(),
            initrd: None,
            options: String::new(),
        };
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line
                .split_once(char::is_whitespace)
                .map(|(k, v)| (k, v.trim()))
                .unwrap_or((line, ""));
            match key {
                "title" => e.title = value.to_string(),
                "linux" => e.linux = value.to_string(),
                "initrd" => e.initrd = Some(value.to_string()),
                "options" => e.options = value.to_string(),
                _ => {}
            }
        }
        if e.linux.is_empty() {
            return Err(invalid(format!(
                "boot entry {what} has no `linux` line: rewrite it or remove it"
            )));
        }
        Ok(e)
    }
}

/// The directory of the ESP (`/aurum/` below it) where aurum puts the revision's kernel and
/// initramfs: `k-` and the first 16 hex digits of the blake3 hash of both (the kernel's length
/// first, so that no split of the same bytes gives the same name). Named for the content, a
/// new kernel never goes into a directory an entry boots, and a kernel already there for an
/// entry is not copied again.
pub fn kernel_dir(kernel: &[u8], initrd: Option<&[u8]>) -> String {
    let mut h = blake3::Hasher::new();
    h.update(&(kernel.len() as u64).to_le_bytes());
    h.update(kernel);
    if let Some(i) = initrd {
        h.update(b"initrd");
        h.update(i);
    }
    let hex = h.finalize().to_hex();
    format!("k-{}", hex.get(..16).unwrap_or_default())
}

impl Entry {
    /// The directory under `/aurum/` whose `vmlinuz` the entry boots, for an entry of aurum's
    /// (`linux /aurum/DIR/vmlinuz`); None for any other.
    pub fn aurum_dir(&self) -> Option<&str> {
        let dir = self
            .linux
            .strip_prefix("/aurum/")?
            .strip_suffix("/vmlinuz")?;
        (!dir.is_empty() && !dir.contains('/')).then_some(dir)
    }
}

/// The marker before a `default` line of `loader.conf` that aurum set aside.
const SET_ASIDE: &str = "#aurum-set-aside: ";

/// `loader.conf`'s text with `default PATTERN` as its only default: a `default` line already
/// there is kept as a comment ([`SET_ASIDE`]), for an administrator who takes the node's boot
/// back from aurum. Applying it twice gives the same text.
pub fn set_default(text: &str, pattern: &str) -> String {
    let ours = format!("default {pattern}");
    let mut out = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t == ours {
            continue;
        }
        match t.split_whitespace().next() {
            Some("default") => out.push_str(&format!("{SET_ASIDE}{line}\n")),
            _ => out.push_str(&format!("{line}\n")),
        }
    }
    out.push_str(&ours);
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(file: &str) -> EntryName {
        EntryName::parse(file).unwrap()
    }

    #[test]
    fn counting_names_parse_as_systemd_boot_reads_them() {
        assert_eq!(
            n("aurum-revision+3.conf"),
            EntryName::counting("aurum-revision", 3)
        );
        let e = n("aurum-revision+1-2.conf");
        assert_eq!(
            (e.name.as_str(), e.left, e.done),
            ("aurum-revision", Some(1), 2)
        );
        assert_eq!(n("debian-6.1.0.conf"), EntryName::plain("debian-6.1.0"));
        // The counter is the last `+`; what is not `+DIGITS[-DIGITS]` is part of the name.
        let e = n("foo-3+2.conf");
        assert_eq!((e.name.as_str(), e.left, e.done), ("foo-3", Some(2), 0));
        assert_eq!(n("a+b.conf"), EntryName::plain("a+b"));
        assert_eq!(n("a+1-.conf"), EntryName::plain("a+1-"));
        assert_eq!(n("a+-1.conf"), EntryName::plain("a+-1"));
        assert_eq!(n("+3.conf"), EntryName::plain("+3"));
        assert_eq!(EntryName::parse("loader.conf.tmp"), None);
        assert_eq!(EntryName::parse(".conf"), None);
        for f in ["x.conf", "x+0.conf", "x+3.conf", "x+2-1.conf", "x+0-9.conf"] {
            assert_eq!(n(f).file(), f);
        }
    }

    #[test]
    fn kernel_directories_are_named_for_both_files() {
        let a = kernel_dir(b"kernel 1", Some(b"initrd 1"));
        assert_eq!(a.len(), 18);
        assert!(a.starts_with("k-"));
        assert_eq!(a, kernel_dir(b"kernel 1", Some(b"initrd 1")));
        assert_ne!(a, kernel_dir(b"kernel 1", Some(b"initrd 2")));
        assert_ne!(a, kernel_dir(b"kernel 1", None));
        assert_ne!(kernel_dir(b"ab", Some(b"c")), kernel_dir(b"a", Some(b"bc")));
        let e = |linux: &str| Entry {
            title: String::new(),
            linux: linux.into(),
            initrd: None,
            options: String::new(),
        };
        assert_eq!(
            e(&format!("/aurum/{a}/vmlinuz")).aurum_dir(),
            Some(a.as_str())
        );
        assert_eq!(e("/aurum/fallback/vmlinuz").aurum_dir(), Some("fallback"));
        assert_eq!(e("/vmlinuz-6.1").aurum_dir(), None);
        assert_eq!(e("/aurum/a/b/vmlinuz").aurum_dir(), None);
    }

    #[test]
    fn each_boot_takes_one_and_blessing_drops_the_counter() {
        // The series the Boot Loader Specification gives: foo+3 → foo+2-1 → foo+1-2 →
        // foo+0-3, then only DONE goes up.
        let mut e = EntryName::counting("foo", 3);
        let mut seen = vec![e.file()];
        for _ in 0..4 {
            e = e.booted();
            seen.push(e.file());
        }
        assert_eq!(
            seen,
            [
                "foo+3.conf",
                "foo+2-1.conf",
                "foo+1-2.conf",
                "foo+0-3.conf",
                "foo+0-4.conf"
            ]
        );
        assert!(e.bad() && !n("foo+1-2.conf").bad() && !n("foo.conf").bad());
        assert_eq!(n("foo+1-2.conf").blessed().file(), "foo.conf");
        assert_eq!(n("foo.conf").booted().file(), "foo.conf");
    }

    #[test]
    fn entries_round_trip() {
        let e = Entry {
            title: "aurum: compute@8 0c4e2a17\n(on trial)".into(),
            linux: "/aurum/0c4e2a17/vmlinuz".into(),
            initrd: Some("/aurum/0c4e2a17/initrd.img".into()),
            options: "root=UUID=1234 ro quiet".into(),
        };
        let text = e.encode();
        assert!(text.starts_with("title aurum: compute@8 0c4e2a17 (on trial)\n"));
        let back = Entry::decode(&format!("# a comment\nsort-key x\n{text}"), "e").unwrap();
        assert_eq!(back.linux, e.linux);
        assert_eq!(back.initrd, e.initrd);
        assert_eq!(back.options, e.options);
        assert!(Entry::decode("title no kernel\n", "e").is_err());
    }

    #[test]
    fn the_default_line_is_set_aside() {
        let conf = "timeout 3\ndefault debian-*\n#console-mode keep\n";
        let set = set_default(conf, "aurum-*");
        assert_eq!(
            set,
            "timeout 3\n#aurum-set-aside: default debian-*\n#console-mode keep\ndefault aurum-*\n"
        );
        assert_eq!(set_default(&set, "aurum-*"), set);
        assert_eq!(set_default("", "aurum-*"), "default aurum-*\n");
    }
}
