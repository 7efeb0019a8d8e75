//! The revision-spec grammar: how a user names a revision on the command line.
//!
//! `IMAGE` (its newest revision), `IMAGE@N` (revision number N), `IMAGE:TAG`, or hex digits of a
//! revision id. A repository on disk and a repository over HTTP resolve these differently (the
//! catalog answers one, `refs/` files the other), but they must read the same text the same
//! way, so the grammar is parsed once here and each resolver matches on the result.

use std::str::FromStr;

use crate::error::{invalid, Error};
use crate::format::Id;

/// The shortest hex prefix taken as a revision id: shorter runs of hex digits are too likely
/// to be meant as an image name, and too likely to match several revisions.
pub const MIN_PREFIX: usize = 8;

/// A parsed revision reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevSpec {
    /// `IMAGE@N`.
    Number { image: String, number: u32 },
    /// `IMAGE:TAG`.
    Tag { image: String, tag: String },
    /// A bare word: an image name (its newest revision) or hex digits of a revision id. Which
    /// one it is depends on what the repository holds, so the resolver decides.
    Bare(String),
}

impl RevSpec {
    /// For a bare word of [`MIN_PREFIX`] to 64 hex digits: the digits in lower case, to look
    /// up as a revision id prefix.
    pub fn id_prefix(&self) -> Option<String> {
        let RevSpec::Bare(word) = self else {
            return None;
        };
        let hex = word.to_ascii_lowercase();
        ((MIN_PREFIX..=64).contains(&hex.len()) && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .then_some(hex)
    }

    /// For a bare word of all 64 hex digits: the revision id it spells.
    pub fn full_id(&self) -> Option<Id> {
        match self {
            RevSpec::Bare(word) => Id::from_hex(&word.to_ascii_lowercase()),
            _ => None,
        }
    }
}

impl FromStr for RevSpec {
    type Err = Error;

    /// `@` is looked for before `:`, as it always was: `a@3` is a number even in a tag
    /// position, and neither character may stand in an image or tag name.
    fn from_str(spec: &str) -> Result<RevSpec, Error> {
        if let Some((image, n)) = spec.split_once('@') {
            let number: u32 = n.parse().map_err(|_| {
                invalid(format!(
                    "`{spec}`: the part after @ must be a revision number, as in `{image}@3`; \
                     `aurum log {image}` lists the revisions",
                    image = spec.split('@').next().unwrap_or_default()
                ))
            })?;
            return Ok(RevSpec::Number {
                image: image.into(),
                number,
            });
        }
        if let Some((image, tag)) = spec.split_once(':') {
            return Ok(RevSpec::Tag {
                image: image.into(),
                tag: tag.into(),
            });
        }
        Ok(RevSpec::Bare(spec.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RevSpec {
        s.parse().unwrap()
    }

    #[test]
    fn grammar() {
        assert_eq!(
            p("compute@3"),
            RevSpec::Number {
                image: "compute".into(),
                number: 3
            }
        );
        assert_eq!(
            p("compute:prod"),
            RevSpec::Tag {
                image: "compute".into(),
                tag: "prod".into()
            }
        );
        assert_eq!(p("compute"), RevSpec::Bare("compute".into()));
        // An image pulled from a remote (`aurum pull`) is REMOTE/IMAGE.
        assert_eq!(
            p("super/compute@3"),
            RevSpec::Number {
                image: "super/compute".into(),
                number: 3
            }
        );
        assert_eq!(
            p("super/compute:prod"),
            RevSpec::Tag {
                image: "super/compute".into(),
                tag: "prod".into()
            }
        );
        assert!("compute@x".parse::<RevSpec>().is_err());
        assert!("compute@".parse::<RevSpec>().is_err());
        assert!("compute@-1".parse::<RevSpec>().is_err());
        // Multi-byte text around the separators is split on characters, never mid-character.
        assert_eq!(
            p("é:ü"),
            RevSpec::Tag {
                image: "é".into(),
                tag: "ü".into()
            }
        );
    }

    #[test]
    fn hex_words() {
        assert_eq!(p("DEADBEEF").id_prefix().as_deref(), Some("deadbeef"));
        assert_eq!(p("deadbee").id_prefix(), None);
        assert_eq!(p("compute").id_prefix(), None);
        assert_eq!(p("deadbeef@1").id_prefix(), None);
        assert_eq!(p(&"a".repeat(65)).id_prefix(), None);
        let full = "ab".repeat(32);
        assert_eq!(p(&full).full_id().map(|i| i.hex()), Some(full.clone()));
        assert_eq!(p("deadbeef").full_id(), None);
    }
}
