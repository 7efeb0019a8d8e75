//! What a member's pax records mean for the image: xattrs, ACLs, or nothing on purpose.
//!
//! Every record is either applied or deliberately ignored; any other record refuses the
//! archive naming the member and the record, so that nothing an archive says is dropped
//! without a word. The lists:
//!
//! - applied by the reader ([`super::read`]): `path`, `linkpath`, `size`, `uid`, `gid`, `mtime`,
//!   `SCHILY.devmajor`, `SCHILY.devminor` and the sparse records `GNU.sparse.*`;
//! - applied here: `SCHILY.xattr.NAME` (GNU tar, bsdtar, star), `LIBARCHIVE.xattr.NAME`
//!   (bsdtar: the name URL-encoded, the value base64), `RHT.security.selinux` (GNU tar
//!   `--selinux`), `SCHILY.acl.access` and `SCHILY.acl.default` (POSIX ACLs as text);
//! - ignored, as a capture records none of it: `atime`, `ctime`, `LIBARCHIVE.creationtime`
//!   (times other than mtime), `uname`, `gname` (aurum keeps numeric owners), `charset`,
//!   `hdrcharset` (names are kept as bytes), `comment`, `SCHILY.dev`, `SCHILY.ino`,
//!   `SCHILY.nlink` (hard links are members of their own), `LIBARCHIVE.symlinktype` (a
//!   Windows distinction), `GNU.volume.label` (the archive's label) and `GNU.dumpdir` (an
//!   incremental dump's directory listing).
//!
//! Refused by name, since the image cannot hold them: `SCHILY.acl.ace` (NFSv4 ACLs),
//! `SCHILY.fflags` (file flags, `chattr`), `GNU.volume.*` otherwise (a member split across
//! volumes).

use base64::Engine;

use super::acl;
use super::read::Member;
use crate::error::{invalid, Result};

/// Records that carry nothing a revision keeps (see the module doc).
const IGNORED: &[&[u8]] = &[
    b"atime",
    b"ctime",
    b"LIBARCHIVE.creationtime",
    b"uname",
    b"gname",
    b"charset",
    b"hdrcharset",
    b"comment",
    b"SCHILY.dev",
    b"SCHILY.ino",
    b"SCHILY.nlink",
    b"LIBARCHIVE.symlinktype",
    b"GNU.volume.label",
    b"GNU.dumpdir",
];

/// Records the reader applies to the member's header fields.
const APPLIED: &[&[u8]] = &[
    b"path",
    b"linkpath",
    b"size",
    b"uid",
    b"gid",
    b"mtime",
    b"SCHILY.devmajor",
    b"SCHILY.devminor",
];

/// A member's xattrs (sorted, one value per name) and its ACLs in text form (xattr name, text).
pub(crate) struct Attributes {
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    pub acls: Vec<(&'static [u8], Vec<u8>)>,
}

/// Reads the xattrs and ACLs out of `m`'s pax records; refuses a record we do not understand.
pub(crate) fn attributes(m: &Member) -> Result<Attributes> {
    let mut xattrs = std::collections::BTreeMap::new();
    let mut selinux = None;
    let mut acls = Vec::new();
    for (key, value) in &m.pax {
        if let Some(x) = key.strip_prefix(b"SCHILY.xattr.") {
            xattrs.insert(x.to_vec(), value.clone());
        } else if let Some(x) = key.strip_prefix(b"LIBARCHIVE.xattr.") {
            let name =
                url_decode(x).ok_or_else(|| refuse(m, key, "its name is not URL-encoded"))?;
            let value =
                base64_decode(value).ok_or_else(|| refuse(m, key, "its value is not base64"))?;
            xattrs.insert(name, value);
        } else if key == b"RHT.security.selinux" {
            // getfilecon's string; the kernel's value (what a capture records) ends in a NUL.
            let mut v = value.clone();
            if v.last() != Some(&0) {
                v.push(0);
            }
            selinux = Some(v);
        } else if key == acl::ACCESS_PAX.as_bytes() || key == acl::DEFAULT_PAX.as_bytes() {
            if !value.is_empty() {
                let x = if key == acl::ACCESS_PAX.as_bytes() {
                    acl::ACCESS_XATTR
                } else {
                    acl::DEFAULT_XATTR
                };
                acls.push((x, value.clone()));
            }
        } else if key.starts_with(b"GNU.sparse.")
            || APPLIED.contains(&key.as_slice())
            || IGNORED.contains(&key.as_slice())
        {
        } else {
            let why = match key.as_slice() {
                b"SCHILY.acl.ace" => "it is an NFSv4 ACL, which a Linux image cannot hold as a POSIX ACL; make the archive without ACLs (or with POSIX ACLs)",
                b"SCHILY.fflags" => "it holds file flags (chattr), which aurum does not keep; make the archive without them (bsdtar --no-fflags)",
                k if k.starts_with(b"GNU.volume.") => "the member is split across the volumes of a multi-volume archive; join the volumes into one archive (tar -M -xf, then tar -cf)",
                _ => "aurum does not know this record; rather than drop it, it refuses the archive: make the archive without it",
            };
            return Err(refuse(m, key, why));
        }
    }
    // An exact xattr record wins over the selinux context's string form.
    if let Some(v) = selinux {
        xattrs.entry(b"security.selinux".to_vec()).or_insert(v);
    }
    Ok(Attributes {
        xattrs: xattrs.into_iter().collect(),
        acls,
    })
}

fn refuse(m: &Member, key: &[u8], why: &str) -> crate::Error {
    invalid(format!(
        "archive member `{}` has pax record `{}`: {why}; nothing was imported",
        String::from_utf8_lossy(&m.name),
        String::from_utf8_lossy(key)
    ))
}

/// libarchive's `%XX` escapes of an xattr name.
fn url_decode(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut rest = s;
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' {
            let (hex, after) = tail.split_first_chunk::<2>()?;
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            rest = after;
        } else {
            out.push(b);
            rest = tail;
        }
    }
    Some(out)
}

/// libarchive writes base64 without padding; accept it with or without.
fn base64_decode(v: &[u8]) -> Option<Vec<u8>> {
    use base64::engine::{general_purpose, DecodePaddingMode, GeneralPurpose};
    let engine = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        general_purpose::GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    engine.decode(v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libarchive_names_and_values() {
        assert_eq!(url_decode(b"user.a%3Db%25").unwrap(), b"user.a=b%");
        assert!(url_decode(b"user.%4").is_none());
        assert_eq!(base64_decode(b"dlxueA").unwrap(), b"v\\nx");
        assert_eq!(base64_decode(b"dlxueA==").unwrap(), b"v\\nx");
    }
}
