//! The small text files of `public/` that name things, for clients that read a repository as
//! static files: `FORMAT`, `refs/IMAGES`, `refs/IMAGE/{head,revisions,log,tags/TAG}`,
//! `packs/list`, `deltas/list`, `templates/CLASSES` and `templates/log`.
//!
//! `refs/IMAGES`, `refs/IMAGE/log` and `deltas/list` exist for `aurum pull` (version 2 of
//! these files): a web server cannot list directories, so a repository says which images it
//! has, everything a revision's catalog row holds, and which precomputed deltas it keeps;
//! `templates/log` (also version 2) holds every saved version of the partition templates.
//!
//! Each is ASCII (class names aside, which are checked names), one item a line, every line
//! ending in `\n`. They are derived from the catalog (`publish` says what each must hold and
//! writes them); nodes and `verify` read them back with the decoders here. A decoder refuses a
//! file it cannot read completely rather than skip a line: a skipped line of `packs/list`
//! would hide a pack and fail an update later for the wrong reason.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::Id;
use crate::name::ClassName;

/// What every `FORMAT` file starts with; the repository layout version follows.
pub const FORMAT_PREFIX: &str = "aurum repository format";

/// Version of these files: 2 added `refs/IMAGES`, `refs/IMAGE/log` and `deltas/list`, which
/// older readers never look at (so [`super::FORMAT_VERSION`] stayed). A change that old
/// readers would misread bumps [`super::FORMAT_VERSION`] too.
pub const VERSION: u32 = 2;

/// Version of `refs/IMAGE/log`, written on its first line; a reader refuses a newer one.
pub const LOG_VERSION: u32 = 1;

/// Why a file could not be read, said as `verify` and a node report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    NotText,
    /// The last line has no newline: the file was cut short (or is being written by hand).
    CutShort,
    /// Line `line` (from 1) does not read as `want`.
    BadLine {
        line: usize,
        want: &'static str,
    },
    /// Written by a newer aurum, in a version this one cannot read.
    Newer {
        version: u32,
        reads: u32,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::NotText => f.write_str("it is not text"),
            Problem::CutShort => f.write_str("it is cut short (no final newline)"),
            Problem::BadLine { line, want } => write!(f, "line {line} is not `{want}`"),
            Problem::Newer { version, reads } => write!(
                f,
                "it is version {version}, made by a newer aurum (this aurum reads up to {reads}): upgrade aurum"
            ),
        }
    }
}

/// `FORMAT`: `aurum repository format N\n`.
pub fn format_file(version: u32) -> String {
    format!("{FORMAT_PREFIX} {version}\n")
}

/// The layout version a `FORMAT` file names: its last word. `None` when the file is not
/// aurum's or its last word is no number.
pub fn format_version(data: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(data).ok()?.trim();
    if !text.starts_with(FORMAT_PREFIX) {
        return None;
    }
    text.rsplit(' ').next()?.parse().ok()
}

/// `refs/IMAGE/head` and `refs/IMAGE/tags/TAG`: one revision id in hex, then `\n`.
pub fn encode_ref(id: &Id) -> Vec<u8> {
    format!("{}\n", id.hex()).into_bytes()
}

/// Reads a ref file (surrounding white space allowed, as a hand-written file may have).
pub fn decode_ref(data: &[u8]) -> Option<Id> {
    Id::from_hex(std::str::from_utf8(data).ok()?.trim())
}

/// `refs/IMAGE/revisions`: `NUMBER ID\n` per revision, oldest first.
pub fn encode_revisions(revs: impl IntoIterator<Item = (u32, Id)>) -> Vec<u8> {
    revs.into_iter()
        .map(|(n, id)| format!("{n} {}\n", id.hex()))
        .collect::<String>()
        .into_bytes()
}

/// Reads `refs/IMAGE/revisions`.
pub fn decode_revisions(data: &[u8]) -> Result<Vec<(u32, Id)>, Problem> {
    decode_pairs(data, "NUMBER REVISION-ID", |a, b| {
        Some((a.parse().ok()?, Id::from_hex(b)?))
    })
}

/// `packs/list`: `PACK-ID SIZE\n` per pack, in the order given (aurum writes newest first).
pub fn encode_pack_list(packs: impl IntoIterator<Item = (Id, u64)>) -> Vec<u8> {
    packs
        .into_iter()
        .map(|(id, size)| format!("{} {size}\n", id.hex()))
        .collect::<String>()
        .into_bytes()
}

/// Reads `packs/list`.
pub fn decode_pack_list(data: &[u8]) -> Result<Vec<(Id, u64)>, Problem> {
    decode_pairs(data, "PACK-ID SIZE", |a, b| {
        Some((Id::from_hex(a)?, b.parse().ok()?))
    })
}

/// `templates/CLASSES`: one class name a line.
pub fn encode_classes<'a>(classes: impl IntoIterator<Item = &'a ClassName>) -> Vec<u8> {
    classes
        .into_iter()
        .map(|c| format!("{c}\n"))
        .collect::<String>()
        .into_bytes()
}

/// Reads `templates/CLASSES` (empty lines are skipped); each name must be a valid class name,
/// since it becomes a file name and a URL part.
pub fn decode_classes(data: &[u8]) -> Result<Vec<ClassName>, Problem> {
    let text = text_of(data)?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.is_empty())
        .map(|(i, l)| {
            ClassName::new(l).map_err(|_| Problem::BadLine {
                line: i + 1,
                want: "CLASS (letters, digits, `.`, `_`, `-`)",
            })
        })
        .collect()
}

/// Whether `name` may name an image in a published file: a name, or `REMOTE/NAME` for an
/// image pulled from a remote (see `aurum pull`).
pub fn image_name_ok(name: &str) -> bool {
    let mut parts = name.split('/');
    let ok = |p: Option<&str>| p.is_some_and(crate::name::is_valid);
    match (parts.next(), parts.next(), parts.next()) {
        (first, None, None) => ok(first),
        (first, Some(second), None) => ok(first) && ok(Some(second)),
        _ => false,
    }
}

/// `refs/IMAGES`: `IMAGE LOG-ID\n` per image, sorted by name; `LOG-ID` is the blake3 hash
/// of the image's `refs/IMAGE/log`, so a puller whose copy of the log hashes the same need
/// not fetch it (a long history's log is far larger than a new revision's objects).
pub fn encode_images<'a>(images: impl IntoIterator<Item = (&'a str, Id)>) -> Vec<u8> {
    let mut lines: Vec<(&str, Id)> = images.into_iter().collect();
    lines.sort_unstable();
    lines
        .into_iter()
        .map(|(n, log)| format!("{n} {}\n", log.hex()))
        .collect::<String>()
        .into_bytes()
}

/// Reads `refs/IMAGES`, refusing a name that could not be an image's (it becomes a path).
pub fn decode_images(data: &[u8]) -> Result<Vec<(String, Id)>, Problem> {
    decode_pairs(data, "IMAGE LOG-ID", |a, b| {
        image_name_ok(a).then(|| Some((a.to_string(), Id::from_hex(b)?)))?
    })
}

/// One revision as `refs/IMAGE/log` holds it: its catalog row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedRevision {
    pub number: u32,
    pub id: Id,
    pub parent: Option<Id>,
    /// Seconds since the epoch.
    pub created: i64,
    pub message: String,
    pub source: String,
    pub files: u64,
    pub bytes: u64,
    /// What the capture stored anew, in the repository that made it.
    pub new_bytes: u64,
}

/// What `refs/IMAGE/log` holds: every revision (oldest first) and every tag with its number.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageLog {
    pub revisions: Vec<LoggedRevision>,
    pub tags: Vec<(String, u32)>,
}

/// A line of `refs/IMAGE/log`: a JSON object whose `kind` says what it is.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
enum LogLine {
    /// The first line.
    Log {
        version: u32,
    },
    Revision(LoggedRevision),
    Tag {
        tag: String,
        number: u32,
    },
}

/// `refs/IMAGE/log`: JSON lines, `{"kind":"log","version":1}` first, then a `revision` line
/// per revision (oldest first), then a `tag` line per tag.
pub fn encode_log(log: &ImageLog) -> Vec<u8> {
    let mut out = String::new();
    let mut line = |l: &LogLine| {
        out.push_str(&serde_json::to_string(l).expect("plain data serializes"));
        out.push('\n');
    };
    line(&LogLine::Log {
        version: LOG_VERSION,
    });
    for r in &log.revisions {
        line(&LogLine::Revision(r.clone()));
    }
    for (tag, number) in &log.tags {
        line(&LogLine::Tag {
            tag: tag.clone(),
            number: *number,
        });
    }
    out.into_bytes()
}

/// Reads `refs/IMAGE/log`: refuses a newer version, a line that is no log line, a tag with a
/// bad name or naming a revision the log lacks, and revision numbers out of order.
pub fn decode_log(data: &[u8]) -> Result<ImageLog, Problem> {
    let mut log = ImageLog::default();
    let bad = |line: usize| Problem::BadLine {
        line,
        want: "a JSON log line",
    };
    for (i, text) in text_of(data)?.lines().enumerate() {
        let line: LogLine = serde_json::from_str(text).map_err(|_| bad(i + 1))?;
        match (i, line) {
            (0, LogLine::Log { version }) if version > LOG_VERSION => {
                return Err(Problem::Newer {
                    version,
                    reads: LOG_VERSION,
                })
            }
            (0, LogLine::Log { .. }) => {}
            (0, _) | (_, LogLine::Log { .. }) => return Err(bad(i + 1)),
            (_, LogLine::Revision(r)) => {
                if log.revisions.last().is_some_and(|p| p.number >= r.number)
                    || !log.tags.is_empty()
                {
                    return Err(bad(i + 1));
                }
                log.revisions.push(r);
            }
            (_, LogLine::Tag { tag, number }) => {
                if !crate::name::is_valid(&tag) || !log.revisions.iter().any(|r| r.number == number)
                {
                    return Err(bad(i + 1));
                }
                log.tags.push((tag, number));
            }
        }
    }
    if data.is_empty() {
        return Err(Problem::CutShort);
    }
    Ok(log)
}

/// One saved version of a partition template, as `templates/log` holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedTemplate {
    pub class: String,
    pub version: u32,
    /// Seconds since the epoch.
    pub created: i64,
    pub note: String,
    /// The TOML text as saved.
    pub text: String,
}

/// `templates/log`: JSON lines, one per saved version of every class, by class then
/// version, so that a puller copies a class's history and not only its newest version.
pub fn encode_template_log(versions: &[LoggedTemplate]) -> Vec<u8> {
    let mut out = String::new();
    for v in versions {
        out.push_str(&serde_json::to_string(v).expect("plain data serializes"));
        out.push('\n');
    }
    out.into_bytes()
}

/// Reads `templates/log`, refusing a class that is no class name (it becomes a path).
pub fn decode_template_log(data: &[u8]) -> Result<Vec<LoggedTemplate>, Problem> {
    text_of(data)?
        .lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str::<LoggedTemplate>(l)
                .ok()
                .filter(|v| crate::name::is_valid(&v.class))
                .ok_or(Problem::BadLine {
                    line: i + 1,
                    want: "a JSON template version",
                })
        })
        .collect()
}

/// Whether `rel` is the name of a delta cache file, relative to `deltas/`
/// (`XX/<target>-<key>.zd` or `.none`, see [`super::delta::cache_stem`]).
pub fn delta_name_ok(rel: &str) -> bool {
    let hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let Some((sub, file)) = rel.split_once('/') else {
        return false;
    };
    let Some((stem, ext)) = file.rsplit_once('.') else {
        return false;
    };
    let Some((target, key)) = stem.split_once('-') else {
        return false;
    };
    hex(sub, 2)
        && hex(target, 64)
        && target.starts_with(sub)
        && hex(key, 32)
        && matches!(ext, "zd" | "none")
}

/// `deltas/list`: `XX/NAME SIZE\n` per cached delta, sorted.
pub fn encode_delta_list(files: impl IntoIterator<Item = (String, u64)>) -> Vec<u8> {
    let mut files: Vec<(String, u64)> = files.into_iter().collect();
    files.sort();
    files
        .into_iter()
        .map(|(name, size)| format!("{name} {size}\n"))
        .collect::<String>()
        .into_bytes()
}

/// Reads `deltas/list`, refusing a name the delta cache never writes (it becomes a path).
pub fn decode_delta_list(data: &[u8]) -> Result<Vec<(String, u64)>, Problem> {
    decode_pairs(data, "XX/DELTA-FILE SIZE", |a, b| {
        delta_name_ok(a).then(|| Some((a.to_string(), b.parse().ok()?)))?
    })
}

fn text_of(data: &[u8]) -> Result<&str, Problem> {
    let text = std::str::from_utf8(data).map_err(|_| Problem::NotText)?;
    if !text.is_empty() && !text.ends_with('\n') {
        return Err(Problem::CutShort);
    }
    Ok(text)
}

/// Lines of two words separated by white space, each read by `parse`.
fn decode_pairs<T>(
    data: &[u8],
    want: &'static str,
    parse: impl Fn(&str, &str) -> Option<T>,
) -> Result<Vec<T>, Problem> {
    text_of(data)?
        .lines()
        .enumerate()
        .map(|(n, line)| {
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some(a), Some(b), None) => parse(a, b),
                _ => None,
            }
            .ok_or(Problem::BadLine { line: n + 1, want })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id() -> impl Strategy<Value = Id> {
        any::<[u8; 32]>().prop_map(Id)
    }

    proptest! {
        #[test]
        fn files_round_trip(
            head in id(),
            revs in prop::collection::vec((any::<u32>(), id()), 0..8),
            packs in prop::collection::vec((id(), any::<u64>()), 0..8),
            classes in prop::collection::vec("[a-z][a-z0-9_-]{0,20}", 0..5),
            version: u32,
        ) {
            prop_assert_eq!(decode_ref(&encode_ref(&head)), Some(head));
            prop_assert_eq!(decode_revisions(&encode_revisions(revs.clone())).unwrap(), revs);
            prop_assert_eq!(decode_pack_list(&encode_pack_list(packs.clone())).unwrap(), packs);
            let classes: Vec<ClassName> = classes.into_iter().map(|c| ClassName::new(c).unwrap()).collect();
            prop_assert_eq!(decode_classes(&encode_classes(&classes)).unwrap(), classes);
            prop_assert_eq!(format_version(format_file(version).as_bytes()), Some(version));
        }

        #[test]
        fn any_bytes_decode_or_fail(data in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = (decode_ref(&data), decode_revisions(&data), decode_pack_list(&data));
            let _ = (decode_classes(&data), format_version(&data));
        }
    }

    fn logged() -> impl Strategy<Value = LoggedRevision> {
        (
            any::<u16>(),
            id(),
            prop::option::of(id()),
            any::<i64>(),
            ".{0,20}",
            ".{0,20}",
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
        )
            .prop_map(
                |(n, id, parent, created, message, source, files, bytes, new_bytes)| {
                    LoggedRevision {
                        number: u32::from(n),
                        id,
                        parent,
                        created,
                        message,
                        source,
                        files,
                        bytes,
                        new_bytes,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn replication_files_round_trip(
            images in prop::collection::vec("[a-z][a-z0-9]{0,8}(/[a-z][a-z0-9]{0,8})?", 0..6),
            mut revs in prop::collection::vec(logged(), 0..6),
            deltas in prop::collection::vec((id(), any::<[u8; 16]>(), any::<bool>(), any::<u64>()), 0..5),
        ) {
            let mut sorted: Vec<(String, Id)> = images.iter().map(|n| (n.clone(), Id::of(n.as_bytes()))).collect();
            sorted.sort();
            let encoded = encode_images(sorted.iter().rev().map(|(n, i)| (n.as_str(), *i)));
            prop_assert_eq!(decode_images(&encoded).unwrap(), sorted);
            revs.sort_by_key(|r| r.number);
            revs.dedup_by_key(|r| r.number);
            let tags = revs.iter().map(|r| (format!("t{}", r.number), r.number)).collect();
            let log = ImageLog { revisions: revs, tags };
            prop_assert_eq!(decode_log(&encode_log(&log)).unwrap(), log.clone());
            let mut files: Vec<(String, u64)> = deltas
                .into_iter()
                .map(|(t, k, none, size)| {
                    let key = crate::format::to_hex(&k);
                    let ext = if none { "none" } else { "zd" };
                    (format!("{}/{}-{key}.{ext}", &t.hex()[..2], t.hex()), size)
                })
                .collect();
            files.sort();
            prop_assert_eq!(decode_delta_list(&encode_delta_list(files.clone())).unwrap(), files);
            let templates: Vec<LoggedTemplate> = log
                .revisions
                .iter()
                .map(|r| LoggedTemplate {
                    class: format!("c{}", r.number),
                    version: r.number,
                    created: r.created,
                    note: r.message.clone(),
                    text: r.source.clone(),
                })
                .collect();
            prop_assert_eq!(decode_template_log(&encode_template_log(&templates)).unwrap(), templates);
        }

        #[test]
        fn any_bytes_decode_or_fail_too(data in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = (decode_images(&data), decode_log(&data), decode_delta_list(&data));
        let _ = decode_template_log(&data);
        }
    }

    #[test]
    fn replication_files_refuse_what_they_cannot_read() {
        let log = Id::of(b"log").hex();
        assert!(decode_images(format!("a/b/c {log}\n").as_bytes()).is_err());
        assert!(decode_images(format!("../etc {log}\n").as_bytes()).is_err());
        assert!(decode_images(b"compute\n").is_err());
        assert!(decode_images(format!("super/compute {log}\ncompute {log}\n").as_bytes()).is_ok());
        assert_eq!(
            decode_log(b"{\"kind\":\"log\",\"version\":9}\n"),
            Err(Problem::Newer {
                version: 9,
                reads: LOG_VERSION
            })
        );
        assert!(decode_log(b"").is_err());
        // A tag naming a revision the log lacks.
        assert!(decode_log(
            b"{\"kind\":\"log\",\"version\":1}\n{\"kind\":\"tag\",\"tag\":\"a\",\"number\":1}\n"
        )
        .is_err());
        assert!(decode_delta_list(b"ab/../../x 1\n").is_err());
        assert!(!delta_name_ok("ab/cd-ef.zd"));
    }

    #[test]
    fn a_bad_class_in_classes_is_a_bad_line() {
        let e = decode_classes(b"compute\n../../etc/passwd\n").unwrap_err();
        assert!(matches!(e, Problem::BadLine { line: 2, .. }), "{e}");
    }

    #[test]
    fn damage_is_named() {
        let id = Id::of(b"pack");
        let good = encode_pack_list([(id, 100)]);
        assert_eq!(
            decode_pack_list(&good[..good.len() - 3]),
            Err(Problem::CutShort)
        );
        assert_eq!(
            decode_pack_list(b"nonsense 1\n"),
            Err(Problem::BadLine {
                line: 1,
                want: "PACK-ID SIZE"
            })
        );
        assert_eq!(
            decode_pack_list(&[&good[..], b"\xff\n"].concat()),
            Err(Problem::NotText)
        );
        let three = format!("{} 1 2\n", id.hex());
        assert!(decode_pack_list(three.as_bytes()).is_err());
        assert_eq!(decode_pack_list(b""), Ok(Vec::new()));
        assert_eq!(
            decode_revisions(format!("1 {}\nx {}\n", id.hex(), id.hex()).as_bytes())
                .unwrap_err()
                .to_string(),
            "line 2 is not `NUMBER REVISION-ID`"
        );
        // A ref file edited by hand may lack its newline or carry spaces.
        assert_eq!(decode_ref(format!(" {} ", id.hex()).as_bytes()), Some(id));
        assert_eq!(decode_ref(b"abc\n"), None);
        assert_eq!(format_version(b"aurum repository format 2\n"), Some(2));
        assert_eq!(format_version(b"some other format 2\n"), None);
        assert_eq!(format_version(b"aurum repository format\n"), None);
    }
}
