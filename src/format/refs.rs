//! The small text files of `public/` that name things, for clients that read a repository as
//! static files: `FORMAT`, `refs/IMAGE/{head,revisions,tags/TAG}`, `packs/list` and
//! `templates/CLASSES`.
//!
//! Each is ASCII (class names aside, which are checked names), one item a line, every line
//! ending in `\n`. They are derived from the catalog (`publish` says what each must hold and
//! writes them); nodes and `verify` read them back with the decoders here. A decoder refuses a
//! file it cannot read completely rather than skip a line: a skipped line of `packs/list`
//! would hide a pack and fail an update later for the wrong reason.

use std::fmt;

use super::Id;
use crate::name::ClassName;

/// What every `FORMAT` file starts with; the repository layout version follows.
pub const FORMAT_PREFIX: &str = "aurum repository format";

/// Version of these files. They have not changed since the first repository format; a change
/// that old readers would misread bumps [`super::FORMAT_VERSION`] too.
pub const VERSION: u32 = 1;

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
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::NotText => f.write_str("it is not text"),
            Problem::CutShort => f.write_str("it is cut short (no final newline)"),
            Problem::BadLine { line, want } => write!(f, "line {line} is not `{want}`"),
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
