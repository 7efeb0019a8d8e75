//! The revision-spec grammar: how a user names a revision on the command line.
//!
//! `IMAGE` (its newest revision), `IMAGE@N` (revision number N), `IMAGE:TAG`, `IMAGE~N` (N
//! revisions before the newest, as git's `~`; `IMAGE~` is `IMAGE~1`), or hex digits of a
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
    /// `IMAGE~N`: N revisions before the image's newest (see [`step_back`]).
    Back { image: String, back: u32 },
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

    /// For `IMAGE@N` and `IMAGE~N`: the revision number meant, given the `numbers` of the
    /// image's revisions (`IMAGE@N` is N whether or not it is among them: the caller says it
    /// is missing). Other specs name no number: 0 (use only on the two numbered forms).
    pub fn number_among(&self, numbers: &[u32]) -> Result<u32, Error> {
        match self {
            RevSpec::Number { number, .. } => Ok(*number),
            RevSpec::Back { image, back } => step_back(image, *back, numbers),
            RevSpec::Tag { .. } | RevSpec::Bare(_) => Ok(0),
        }
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
        if let Some((image, n)) = spec.split_once('~') {
            if image.contains(['@', ':']) || image.is_empty() {
                return Err(invalid(format!(
                    "`{spec}`: `~N` follows an image name only (IMAGE~N, N revisions before its newest); name an older revision as IMAGE@N"
                )));
            }
            let back: u32 = match n {
                "" => 1,
                n => n.parse().map_err(|_| {
                    invalid(format!(
                        "`{spec}`: the part after ~ must be a number of revisions to go back"
                    ))
                })?,
            };
            return Ok(RevSpec::Back {
                image: image.into(),
                back,
            });
        }
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

/// The number of the revision `back` revisions before the newest of `image`, whose revision
/// numbers are `numbers` (any order; numbers removed from the image are skipped, as git skips
/// nothing but counts commits). The one reading of `IMAGE~N` for every resolver.
pub fn step_back(image: &str, back: u32, numbers: &[u32]) -> Result<u32, Error> {
    let mut sorted = numbers.to_vec();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    sorted.dedup();
    let Some(&newest) = sorted.first() else {
        return Err(Error::NotFound(format!(
            "image `{image}` has no revisions yet"
        )));
    };
    sorted.get(back as usize).copied().ok_or_else(|| {
        let first = sorted.len() - 1;
        invalid(format!(
            "`{image}~{back}` goes back past the first revision of `{image}`: it has {} revision{} \
             (newest {image}@{newest}), so {image}~{first} is the oldest; `aurum log {image}` lists them",
            sorted.len(),
            if sorted.len() == 1 { "" } else { "s" },
        ))
    })
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
        assert_eq!(
            p("compute~2"),
            RevSpec::Back {
                image: "compute".into(),
                back: 2
            }
        );
        assert_eq!(
            p("compute~"),
            RevSpec::Back {
                image: "compute".into(),
                back: 1
            }
        );
        assert_eq!(
            p("compute~0"),
            RevSpec::Back {
                image: "compute".into(),
                back: 0
            }
        );
        for bad in [
            "compute~x",
            "compute~-1",
            "compute~1~1",
            "~1",
            "compute@3~1",
            "compute:prod~1",
        ] {
            assert!(bad.parse::<RevSpec>().is_err(), "{bad}");
        }
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
    fn tilde_steps_back_from_the_newest() {
        // Revisions 1, 2, 4 and 5 (3 was removed): ~1 is 4, ~2 is 2, ~3 is 1.
        let numbers = [2, 5, 1, 4];
        assert_eq!(step_back("c", 0, &numbers).unwrap(), 5);
        assert_eq!(step_back("c", 1, &numbers).unwrap(), 4);
        assert_eq!(step_back("c", 2, &numbers).unwrap(), 2);
        assert_eq!(step_back("c", 3, &numbers).unwrap(), 1);
        let err = step_back("c", 4, &numbers).unwrap_err().to_string();
        assert!(
            err.contains("past the first revision") && err.contains("c~3"),
            "{err}"
        );
        let err = step_back("c", 1, &[7]).unwrap_err().to_string();
        assert!(err.contains("1 revision (newest c@7)"), "{err}");
        assert!(step_back("c", 0, &[]).is_err());
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
