//! Every byte layout aurum writes, one module each: on disk [`manifest`]s, [`pack`]s and their
//! indexes, the published text files ([`refs`]: `FORMAT`, refs, `packs/list`), a node's
//! `state.json` ([`node`]), a chroot work directory's files ([`chroot`]), the catalog's SQL
//! schema ([`catalog`]); on the wire the agent's frames ([`wire`]), binary [`delta`]s and what
//! nodes [`report`] to the server. Each module holds its version, its types, its encoder and
//! decoder (decoders return errors on any input, never panic) and a round-trip test.
//!
//! This module depends on nothing in aurum but `error`, so the format can be read and tested on
//! its own.
//! `book/src/format.md` is its specification; a change here is a change there, and bumps
//! [`FORMAT_VERSION`] when old readers could misread the new bytes.

// Decoders read untrusted bytes: no index may panic, so none is unchecked.
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

/// An enum that JSON and the catalog hold as one of a fixed set of names (a node's report
/// result, its action, an install phase): the names are written once, in the invocation, and
/// `as_str`, `parse`, serde, `Display` (honouring width, for tables) and the SQL conversions
/// all come from them.
macro_rules! named_enum {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)* }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant,)*
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }

            /// The value named `s`, as [`Self::as_str`] writes it.
            pub fn parse(s: &str) -> Option<$name> {
                Self::ALL.iter().copied().find(|v| v.as_str() == s)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }

        impl rusqlite::types::ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(self.as_str().into())
            }
        }

        impl rusqlite::types::FromSql for $name {
            fn column_result(
                v: rusqlite::types::ValueRef<'_>,
            ) -> rusqlite::types::FromSqlResult<Self> {
                let s = v.as_str()?;
                $name::parse(s).ok_or_else(|| {
                    rusqlite::types::FromSqlError::Other(
                        format!(
                            "`{s}` is none of {} (written by another version of aurum?)",
                            Self::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", ")
                        )
                        .into(),
                    )
                })
            }
        }
    };
}

pub mod bootentry;
pub mod catalog;
pub mod chroot;
pub mod delta;
pub mod embedded;
pub mod grubenv;
pub mod manifest;
pub mod netroot;
pub mod node;
pub mod pack;
pub mod refs;
pub mod report;
pub mod rollout;
pub mod signature;
pub mod token;
pub mod wire;

use std::fmt;

use crate::error::{corrupt, Result};

/// Version of the repository layout. Stored in the catalog and in `repo/FORMAT` (and
/// `repo/public/FORMAT`). Version 2 moved the published files into `public/`; version 1
/// repositories are upgraded when opened. The bytes of manifests, packs and indexes did not
/// change, nor did the URLs a node reads.
pub const FORMAT_VERSION: u32 = 2;

/// `bytes` in lowercase hexadecimal (no `format!` per byte: ids and paths are
/// written this way by the thousand).
pub fn to_hex(bytes: &[u8]) -> String {
    let digit = |n: u8| char::from_digit(u32::from(n), 16).unwrap_or('0');
    let mut s = String::with_capacity(2 * bytes.len());
    for &b in bytes {
        s.push(digit(b >> 4));
        s.push(digit(b & 15));
    }
    s
}

/// A content id: the blake3 hash of the uncompressed bytes of a blob or manifest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(pub [u8; 32]);

impl Id {
    /// Hash of `data`.
    pub fn of(data: &[u8]) -> Id {
        Id(*blake3::hash(data).as_bytes())
    }

    /// Full lowercase hex.
    pub fn hex(&self) -> String {
        to_hex(&self.0)
    }

    /// The 8-digit prefix shown in listings.
    pub fn short(&self) -> String {
        self.hex()[..8].to_string()
    }

    /// `XX/<hex>.<ext>`, XX the first two hex digits: how the repository spreads files named
    /// by ids over 256 directories (`packs/`, `manifests/`, `deltas/`).
    pub fn fanned(&self, ext: &str) -> String {
        let hex = self.hex();
        format!("{}/{hex}.{ext}", hex.get(..2).unwrap_or_default())
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Id> {
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Id(out))
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

/// In JSON (`refs/IMAGE/log`) an id is its 64 hex digits.
impl serde::Serialize for Id {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.hex())
    }
}

impl<'de> serde::Deserialize<'de> for Id {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Id, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Id::from_hex(&s).ok_or_else(|| serde::de::Error::custom("not an id of 64 hex digits"))
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.short())
    }
}

impl From<blake3::Hash> for Id {
    fn from(h: blake3::Hash) -> Id {
        Id(*h.as_bytes())
    }
}

/// Appends the LEB128-style encodings every binary format here uses.
#[derive(Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    /// Unsigned varint: 7 bits a byte, low bits first, high bit set on all but the last byte.
    pub fn var(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    /// Signed varint, zigzag-encoded.
    pub fn svar(&mut self, v: i64) {
        self.var(((v << 1) ^ (v >> 63)) as u64);
    }

    /// Length-prefixed bytes.
    pub fn bytes(&mut self, b: &[u8]) {
        self.var(b.len() as u64);
        self.buf.extend_from_slice(b);
    }

    pub fn raw(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }

    pub fn id(&mut self, id: &Id) {
        self.buf.extend_from_slice(&id.0);
    }
}

/// Reads what [`Writer`] wrote; every error is [`crate::Error::Corrupt`] naming `what`.
pub struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    what: &'static str,
    /// Where `data` starts in the whole input, for the offsets errors name.
    base: u64,
    /// Whether a read ran past the end of `data` (a streaming reader then reads more and tries
    /// again).
    ran_short: std::cell::Cell<bool>,
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8], what: &'static str) -> Self {
        Reader::at(data, what, 0)
    }

    /// A reader over `data`, which starts at byte `base` of a longer input.
    pub fn at(data: &'a [u8], what: &'static str, base: u64) -> Self {
        Reader {
            data,
            pos: 0,
            what,
            base,
            ran_short: std::cell::Cell::new(false),
        }
    }

    /// Bytes read so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Whether some read failed for want of bytes (rather than for bad ones).
    pub fn ran_short(&self) -> bool {
        self.ran_short.get()
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    pub fn at_end(&self) -> bool {
        self.pos == self.data.len()
    }

    fn short(&self) -> crate::Error {
        self.ran_short.set(true);
        corrupt(format!(
            "{} is truncated at byte {}",
            self.what,
            self.base + self.pos as u64
        ))
    }

    pub fn u8(&mut self) -> Result<u8> {
        let b = *self.data.get(self.pos).ok_or_else(|| self.short())?;
        self.pos += 1;
        Ok(b)
    }

    pub fn var(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(corrupt(format!("{} has an overlong number", self.what)))
    }

    pub fn svar(&mut self) -> Result<i64> {
        let v = self.var()?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }

    pub fn raw(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).ok_or_else(|| self.short())?;
        let s = self.data.get(self.pos..end).ok_or_else(|| self.short())?;
        self.pos = end;
        Ok(s)
    }

    pub fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.var()?;
        let n = usize::try_from(n).map_err(|_| self.short())?;
        self.raw(n)
    }

    pub fn u32_le(&mut self) -> Result<u32> {
        let b = self.raw(4)?;
        Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }

    pub fn id(&mut self) -> Result<Id> {
        let mut id = [0u8; 32];
        id.copy_from_slice(self.raw(32)?);
        Ok(Id(id))
    }
}

/// Reads a long encoding from a byte stream one item at a time: items are decoded with a
/// [`Reader`] over a small buffer (64 KiB, grown only for a larger item), which is refilled and
/// the item decoded again when it ran out of bytes. Optionally hashes every byte read.
pub struct StreamReader<R> {
    src: R,
    buf: Vec<u8>,
    /// Start of the bytes of `buf` not decoded yet.
    start: usize,
    /// Offset of `buf[start]` in the whole input.
    offset: u64,
    eof: bool,
    what: &'static str,
    /// How a failed read is named: `manifest 1a2b3c4d`.
    label: String,
    hash: Option<blake3::Hasher>,
}

impl<R: std::io::Read> StreamReader<R> {
    const FILL: usize = 1 << 16;

    /// A reader of the `what` (for messages) in `src`; `label` names it when reading fails.
    pub fn new(src: R, what: &'static str, label: String, hashed: bool) -> Self {
        StreamReader {
            src,
            buf: Vec::new(),
            start: 0,
            offset: 0,
            eof: false,
            what,
            label,
            hash: hashed.then(blake3::Hasher::new),
        }
    }

    /// Reads more of the source into the buffer; false at its end.
    fn fill(&mut self) -> Result<bool> {
        self.buf.drain(..self.start);
        self.start = 0;
        let old = self.buf.len();
        self.buf.resize(old + Self::FILL.max(old), 0);
        let got = loop {
            match self.src.read(self.buf.get_mut(old..).unwrap_or_default()) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.buf.truncate(old);
                    return Err(corrupt(format!(
                        "{} is damaged ({e}); run `aurum verify`",
                        self.label
                    )));
                }
            }
        };
        self.buf.truncate(old + got);
        if let Some(h) = &mut self.hash {
            h.update(self.buf.get(old..).unwrap_or_default());
        }
        self.eof = got == 0;
        Ok(got > 0)
    }

    /// Runs `f` over the bytes not decoded yet, reading more and trying again while it runs
    /// out of them, until the source ends; on success, what `f` read is consumed.
    pub fn parse<T>(&mut self, f: impl Fn(&mut Reader) -> Result<T>) -> Result<T> {
        loop {
            let rest = self.buf.get(self.start..).unwrap_or_default();
            let mut r = Reader::at(rest, self.what, self.offset);
            match f(&mut r) {
                Ok(v) => {
                    let used = r.position();
                    self.start += used;
                    self.offset += used as u64;
                    return Ok(v);
                }
                Err(e) => {
                    if !r.ran_short() || self.eof || !self.fill()? {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// Whether the input is all read (reading on to find out).
    pub fn at_end(&mut self) -> Result<bool> {
        while self.start == self.buf.len() && self.fill()? {}
        Ok(self.start == self.buf.len())
    }

    /// The hash of every byte read so far (for a reader made `hashed`).
    pub fn hash(&self) -> Option<Id> {
        self.hash.as_ref().map(|h| h.finalize().into())
    }

    /// The source, for what follows the part read.
    pub fn into_inner(self) -> R {
        self.src
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn varints_round_trip(a: u64, b: i64, c: Vec<u8>) {
            let mut w = Writer::default();
            w.var(a);
            w.svar(b);
            w.bytes(&c);
            let mut r = Reader::new(&w.buf, "test");
            prop_assert_eq!(r.var().unwrap(), a);
            prop_assert_eq!(r.svar().unwrap(), b);
            prop_assert_eq!(r.bytes().unwrap(), &c[..]);
            prop_assert!(r.at_end());
        }
    }

    #[test]
    fn hex_round_trip() {
        let id = Id::of(b"aurum");
        assert_eq!(Id::from_hex(&id.hex()), Some(id));
        assert_eq!(id.short().len(), 8);
        assert_eq!(Id::from_hex("zz"), None);
        let fanned = id.fanned("mf");
        assert_eq!(fanned, format!("{}/{}.mf", &id.hex()[..2], id.hex()));
    }
}
