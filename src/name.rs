//! Names: the one syntax every name aurum keeps follows (images, tags, groups, classes), and
//! [`ClassName`], a hardware class (the stem of a partition template, `compute`,
//! `bios-legacy`).
//!
//! A name ends up as a file name (`templates/compute.toml`), a URL part (`/templates/compute`),
//! a kernel argument (`aurum.class=compute`) and a catalog key, so the syntax is narrow enough
//! for all of them. A class travels as a [`ClassName`] rather than a `String`, so that a value
//! read from a CSV file, a server or the command line is checked once, where it enters, and
//! cannot reach a path or a URL unchecked.

use std::fmt;
use std::str::FromStr;

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

use crate::error::{invalid, Error, Result};

/// The longest name, in bytes.
pub const MAX_LEN: usize = 64;

/// What a name may contain, for error messages.
pub const RULE: &str =
    "use letters, digits, `.`, `_` and `-`, starting with a letter or digit, at most 64 characters";

/// Whether `name` follows the syntax: ASCII letters, digits, `.`, `_`, `-`, starting with a
/// letter or digit, 1 to [`MAX_LEN`] bytes.
pub fn is_valid(name: &str) -> bool {
    name.len() <= MAX_LEN
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// Checks `name` as a name of `what` (`image`, `tag`, `class`), saying what a name may contain.
pub fn check(what: &str, name: &str) -> Result<()> {
    if is_valid(name) {
        Ok(())
    } else {
        Err(invalid(format!(
            "`{name}` is not a valid {what} name: {RULE}"
        )))
    }
}

/// A hardware class name, checked on construction.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct ClassName(String);

impl ClassName {
    /// Checks `name` and makes it a class name.
    pub fn new(name: impl Into<String>) -> Result<ClassName> {
        let name = name.into();
        check("class", &name)?;
        Ok(ClassName(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ClassName {
    type Err = Error;

    fn from_str(s: &str) -> Result<ClassName> {
        ClassName::new(s)
    }
}

impl fmt::Display for ClassName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for ClassName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for ClassName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for ClassName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl<'de> serde::Deserialize<'de> for ClassName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<ClassName, D::Error> {
        let s = String::deserialize(d)?;
        ClassName::new(s).map_err(serde::de::Error::custom)
    }
}

impl ToSql for ClassName {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        self.0.to_sql()
    }
}

/// A catalog row with a bad class name (written by hand, or by an older aurum that did not
/// check node CSV files) reads as an error, not as a class.
impl FromSql for ClassName {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<ClassName> {
        let s = String::column_result(value)?;
        ClassName::new(s).map_err(|e| FromSqlError::Other(Box::new(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_template_stems() {
        for ok in [
            "compute",
            "bios-legacy",
            "raid1",
            "a",
            "x.y_z",
            &"a".repeat(64),
        ] {
            assert_eq!(ClassName::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn refuses_what_could_leave_a_directory_or_a_url_part() {
        for bad in [
            "",
            "../x",
            "a/b",
            "-x",
            ".hidden",
            "a b",
            "é",
            "a\n",
            &"a".repeat(65),
        ] {
            let e = bad.parse::<ClassName>().unwrap_err().to_string();
            assert!(
                e.contains("is not a valid class name: use letters, digits"),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn serde_is_a_plain_string_and_checks() {
        let c: ClassName = serde_json::from_str("\"compute\"").unwrap();
        assert_eq!(serde_json::to_string(&c).unwrap(), "\"compute\"");
        assert!(serde_json::from_str::<ClassName>("\"../etc\"").is_err());
    }

    #[test]
    fn sql_round_trip_and_bad_rows() {
        let db = rusqlite::Connection::open_in_memory().unwrap();
        let c = ClassName::new("compute").unwrap();
        let back: ClassName = db.query_row("SELECT ?1", [&c], |r| r.get(0)).unwrap();
        assert_eq!(back, c);
        let bad = db.query_row("SELECT 'a/b'", [], |r| r.get::<_, ClassName>(0));
        assert!(bad.is_err());
    }
}
