//! Sizes in partition templates: `512MiB`, `20GiB`, `1.5TiB`, `500MB`, `2TB`, `5%`, `*`.
//!
//! Binary units (MiB, GiB, TiB) are what partitioning tools align to; decimal ones (MB, GB, TB)
//! are what disk vendors print, so both are accepted. Every size is turned into bytes once and
//! rounded up to whole MiB when rendered (see [`super::render`]), so a template never asks for
//! a partition smaller than it says.

use std::fmt;

use serde::{Deserialize, Deserializer};

/// One mebibyte: the alignment of every partition aurum writes.
pub const MIB: u64 = 1 << 20;
/// One gibibyte.
pub const GIB: u64 = 1 << 30;

/// A size field of a partition or volume.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Amount {
    /// An exact size in bytes.
    Bytes(u64),
    /// A share of the disk (of the volume group, for a logical volume).
    Percent(f64),
    /// Whatever is left; one per disk or volume group.
    Rest,
}

/// A size in bytes written with a unit (`min`, `max`, match ranges).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bytes(pub u64);

/// Parses `512MiB`, `20 GiB`, `1.5TiB`, `500MB`, `2TB`, `4096B`.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim();
    let mult: f64 = match unit {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => MIB as f64,
        "GiB" => GIB as f64,
        "TiB" => (1u64 << 40) as f64,
        "kB" | "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        "" => {
            return Err(format!(
                "size `{s}` has no unit: write it as 512MiB, 20GiB, 1TiB, 500MB, 2GB or 5%"
            ))
        }
        other => {
            return Err(format!(
                "size `{s}`: unknown unit `{other}` (use B, KiB, MiB, GiB, TiB, kB, MB, GB or TB)"
            ))
        }
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("size `{s}` is not a number followed by a unit (like 20GiB)"))?;
    let v = n * mult;
    if !v.is_finite() || v > u64::MAX as f64 / 2.0 {
        return Err(format!("size `{s}` is too large"));
    }
    Ok(v.round() as u64)
}

/// Parses a partition size: bytes with a unit, `N%` or `*`.
pub fn parse_amount(s: &str) -> Result<Amount, String> {
    let t = s.trim();
    if t == "*" {
        return Ok(Amount::Rest);
    }
    if let Some(p) = t.strip_suffix('%') {
        let v: f64 = p
            .trim()
            .parse()
            .map_err(|_| format!("size `{s}` is not a percentage (like 5%)"))?;
        if !(v > 0.0 && v <= 100.0) {
            return Err(format!("size `{s}` must be more than 0% and at most 100%"));
        }
        return Ok(Amount::Percent(v));
    }
    let b = parse_bytes(t)?;
    if b == 0 {
        return Err(format!("size `{s}` is zero"));
    }
    Ok(Amount::Bytes(b))
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Amount, D::Error> {
        let s = String::deserialize(d)?;
        parse_amount(&s).map_err(serde::de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let s = String::deserialize(d)?;
        parse_bytes(&s).map(Bytes).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Amount::Bytes(b) => f.write_str(&exact(*b)),
            Amount::Percent(p) => write!(f, "{p}%"),
            Amount::Rest => f.write_str("*"),
        }
    }
}

/// Bytes as a template would write them: `512MiB`, `20GiB`, or MiB when not whole GiB.
pub fn exact(b: u64) -> String {
    if b.is_multiple_of(1 << 40) && b >= 1 << 40 {
        format!("{}TiB", b >> 40)
    } else if b.is_multiple_of(GIB) && b >= GIB {
        format!("{}GiB", b / GIB)
    } else if b.is_multiple_of(MIB) {
        format!("{}MiB", b / MIB)
    } else {
        format!("{b}B")
    }
}

/// Bytes for people: `18.6 GiB`, `21 GiB`, `512 MiB`.
pub fn human(b: u64) -> String {
    let units = [
        ("TiB", 1u64 << 40),
        ("GiB", GIB),
        ("MiB", MIB),
        ("KiB", 1024),
    ];
    for (name, size) in units {
        if b >= size {
            let v = b as f64 / size as f64;
            let r = (v * 10.0).round() / 10.0;
            return if r.fract() == 0.0 {
                format!("{r:.0} {name}")
            } else {
                format!("{r:.1} {name}")
            };
        }
    }
    format!("{b} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_percent_and_rest() {
        assert_eq!(parse_bytes("512MiB"), Ok(512 * MIB));
        assert_eq!(parse_bytes("1.5 GiB"), Ok(3 * GIB / 2));
        assert_eq!(parse_bytes("500MB"), Ok(500_000_000));
        assert_eq!(parse_bytes("2TB"), Ok(2_000_000_000_000));
        assert_eq!(parse_amount("*"), Ok(Amount::Rest));
        assert_eq!(parse_amount("5%"), Ok(Amount::Percent(5.0)));
        assert!(parse_amount("20").unwrap_err().contains("no unit"));
        assert!(parse_amount("20GB!").unwrap_err().contains("unknown unit"));
        assert!(parse_amount("120%").is_err());
        assert!(parse_amount("0MiB").is_err());
    }

    #[test]
    fn prints_sizes() {
        assert_eq!(human(21 * GIB), "21 GiB");
        assert_eq!(human(20_000_000_000), "18.6 GiB");
        assert_eq!(exact(512 * MIB), "512MiB");
        assert_eq!(exact(8 * GIB), "8GiB");
    }
}
