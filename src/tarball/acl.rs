//! POSIX ACLs between their tar form and their xattr form.
//!
//! GNU tar `--acls` (and star, and bsdtar) write a file's ACLs as pax records
//! `SCHILY.acl.access` and `SCHILY.acl.default` in the long text form of `acl_to_text(3)`:
//! `user::rw-\nuser:alice:rw-\ngroup::r--\nmask::rw-\nother::r--`, with user and group *names*
//! (GNU tar writes names even with `--numeric-owner`; star appends the id as a fourth field).
//! The kernel keeps them as the xattrs `system.posix_acl_access` / `system.posix_acl_default`
//! in a binary form: a little-endian u32 version (2), then per entry a u16 tag, a u16
//! permission set and a u32 id. Import turns the text into the binary form (mapping names
//! through the image's own /etc/passwd and /etc/group, as the names mean on the nodes);
//! export writes the text form with numeric ids, which `tar --acls` extracts as they are.

use crate::error::{invalid, Result};

pub(crate) const ACCESS_XATTR: &[u8] = b"system.posix_acl_access";
pub(crate) const DEFAULT_XATTR: &[u8] = b"system.posix_acl_default";
pub(crate) const ACCESS_PAX: &str = "SCHILY.acl.access";
pub(crate) const DEFAULT_PAX: &str = "SCHILY.acl.default";

const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;
const NO_ID: u32 = u32::MAX;

/// Who an ACL's names refer to: the image's own account files when it has them, else this
/// host's accounts.
pub(crate) struct Accounts {
    pub passwd: Option<Vec<u8>>,
    pub group: Option<Vec<u8>>,
}

impl Accounts {
    fn id(&self, name: &str, user: bool, path: &str) -> Result<u32> {
        if let Ok(id) = name.parse::<u32>() {
            return Ok(id);
        }
        let (what, file) = if user {
            ("user", &self.passwd)
        } else {
            ("group", &self.group)
        };
        let etc = if user { "/etc/passwd" } else { "/etc/group" };
        match file {
            Some(text) => lookup(text, name).ok_or_else(|| {
                invalid(format!(
                    "{path}: its ACL names {what} `{name}`, which the archive's {etc} does not list; add the {what} to the image's {etc}, or make the archive with numeric ACLs"
                ))
            }),
            None => {
                let host = if user {
                    nix::unistd::User::from_name(name)
                        .ok()
                        .flatten()
                        .map(|u| u.uid.as_raw())
                } else {
                    nix::unistd::Group::from_name(name)
                        .ok()
                        .flatten()
                        .map(|g| g.gid.as_raw())
                };
                host.ok_or_else(|| {
                    invalid(format!(
                        "{path}: its ACL names {what} `{name}`, and neither the archive (it has no {etc}) nor this host knows that {what}; create it here, or make the archive with numeric ACLs"
                    ))
                })
            }
        }
    }
}

/// The id of `name` in passwd or group text (`name:x:ID:...`).
fn lookup(text: &[u8], name: &str) -> Option<u32> {
    text.split(|&b| b == b'\n').find_map(|line| {
        let mut f = line.split(|&b| b == b':');
        (f.next()? == name.as_bytes())
            .then(|| std::str::from_utf8(f.nth(1)?).ok()?.parse().ok())
            .flatten()
    })
}

/// The xattr value for an ACL in text form; `path` names the file in errors.
pub(crate) fn from_text(text: &[u8], accounts: &Accounts, path: &str) -> Result<Vec<u8>> {
    let text = String::from_utf8_lossy(text);
    let bad = |entry: &str| {
        invalid(format!(
            "{path}: ACL entry `{entry}` in the archive is not valid; refusing the archive"
        ))
    };
    let mut entries: Vec<(u16, u32, u16)> = Vec::new();
    for entry in text.split(['\n', ',']) {
        let entry = entry.split('#').next().unwrap_or("").trim();
        if entry.is_empty() {
            continue;
        }
        let f: Vec<&str> = entry.split(':').collect();
        // star's fourth field is the numeric id of the name.
        let (kind, name, perms, numeric) = match f.as_slice() {
            [kind, name, perms] => (*kind, *name, *perms, None),
            [kind, name, perms, n] => (*kind, *name, *perms, Some(*n)),
            _ => return Err(bad(entry)),
        };
        let named = !name.is_empty();
        let id = |user: bool| -> Result<u32> {
            match numeric {
                Some(n) => n.parse().map_err(|_| bad(entry)),
                None => accounts.id(name, user, path),
            }
        };
        let (tag, id) = match (kind, named) {
            ("user" | "u", false) => (USER_OBJ, NO_ID),
            ("user" | "u", true) => (USER, id(true)?),
            ("group" | "g", false) => (GROUP_OBJ, NO_ID),
            ("group" | "g", true) => (GROUP, id(false)?),
            ("mask" | "m", false) => (MASK, NO_ID),
            ("other" | "o", false) => (OTHER, NO_ID),
            _ => return Err(bad(entry)),
        };
        let mut perm = 0u16;
        for c in perms.chars() {
            perm |= match c {
                'r' => 4,
                'w' => 2,
                'x' => 1,
                '-' => 0,
                _ => return Err(bad(entry)),
            };
        }
        entries.push((tag, id, perm));
    }
    // The kernel wants the entries in tag order, named ones by id.
    entries.sort();
    check_and_mask(&mut entries, path)?;
    let mut out = VERSION.to_le_bytes().to_vec();
    for (tag, id, perm) in entries {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&perm.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    Ok(out)
}

/// Refuses an ACL the kernel would refuse (a base entry missing or doubled, a name twice), and
/// adds the mask an ACL with named entries needs when the text has none, as setfacl computes
/// it: the union of the group class's permissions (owning group, named users and groups).
/// `entries` are sorted.
fn check_and_mask(entries: &mut Vec<(u16, u32, u16)>, path: &str) -> Result<()> {
    for w in entries.windows(2) {
        if matches!(w, [a, b] if a.0 == b.0 && a.1 == b.1) {
            return Err(invalid(format!(
                "{path}: its ACL in the archive lists an entry twice; refusing the archive"
            )));
        }
    }
    for (tag, name) in [
        (USER_OBJ, "user::"),
        (GROUP_OBJ, "group::"),
        (OTHER, "other::"),
    ] {
        if !entries.iter().any(|e| e.0 == tag) {
            return Err(invalid(format!(
                "{path}: its ACL in the archive has no `{name}` entry, which every ACL needs; refusing the archive"
            )));
        }
    }
    let named = entries.iter().any(|e| matches!(e.0, USER | GROUP));
    if named && !entries.iter().any(|e| e.0 == MASK) {
        let perm = entries
            .iter()
            .filter(|e| matches!(e.0, USER | GROUP_OBJ | GROUP))
            .fold(0, |p, e| p | e.2);
        entries.push((MASK, NO_ID, perm));
        entries.sort();
    }
    Ok(())
}

/// The text form of an ACL xattr value, with numeric ids; `None` when it is not a valid ACL.
pub(crate) fn to_text(value: &[u8]) -> Option<String> {
    let body = value.strip_prefix(&VERSION.to_le_bytes()[..])?;
    if body.len() % 8 != 0 {
        return None;
    }
    let mut lines = Vec::new();
    for e in body.chunks_exact(8) {
        let &[t0, t1, p0, p1, i0, i1, i2, i3] = e else {
            return None;
        };
        let tag = u16::from_le_bytes([t0, t1]);
        let perm = u16::from_le_bytes([p0, p1]);
        let id = u32::from_le_bytes([i0, i1, i2, i3]);
        let (name, qualifier) = match tag {
            USER_OBJ => ("user", String::new()),
            USER => ("user", id.to_string()),
            GROUP_OBJ => ("group", String::new()),
            GROUP => ("group", id.to_string()),
            MASK => ("mask", String::new()),
            OTHER => ("other", String::new()),
            _ => return None,
        };
        if perm > 7 {
            return None;
        }
        let p = |bit: u16, c: char| if perm & bit != 0 { c } else { '-' };
        lines.push(format!(
            "{name}:{qualifier}:{}{}{}",
            p(4, 'r'),
            p(2, 'w'),
            p(1, 'x')
        ));
    }
    Some(lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gnu_tar_text_to_kernel_xattr_and_back() {
        let accounts = Accounts {
            passwd: Some(
                b"root:x:0:0::/root:/bin/sh\ncloudsdk:x:1000:1000::/home:/bin/sh\n".to_vec(),
            ),
            group: Some(b"root:x:0:\nusers:x:100:\n".to_vec()),
        };
        let text =
            b"user::rw-\nuser:cloudsdk:rw-\nuser:12345:rwx\ngroup::r--\nmask::rw-\nother::r--";
        let x = from_text(text, &accounts, "/f").unwrap();
        // What setfacl made for the same ACL (getfattr -e hex).
        let want = "0200000001000600ffffffff02000600e8030000020007003930000004000400ffffffff10000600ffffffff20000400ffffffff";
        let hex = crate::format::to_hex(&x);
        assert_eq!(hex, want);
        assert_eq!(
            to_text(&x).unwrap(),
            "user::rw-\nuser:1000:rw-\nuser:12345:rwx\ngroup::r--\nmask::rw-\nother::r--"
        );
        let err = from_text(b"user:nosuch:r--", &accounts, "/f").unwrap_err();
        assert!(err.to_string().contains("`nosuch`"), "{err}");
        // star's form, with the id after the permissions, and the short form.
        let star = from_text(
            b"user::rw-,user:bob:rw-:1000,group::r--,mask::rw-,other::r--",
            &accounts,
            "/f",
        )
        .unwrap();
        assert_eq!(
            to_text(&star).unwrap().lines().nth(1),
            Some("user:1000:rw-")
        );
        // No mask: computed as setfacl does; none needed without named entries.
        let x = from_text(
            b"user::rw-,user:7:r--,group::--x,group:9:-w-,other::---",
            &accounts,
            "/f",
        )
        .unwrap();
        assert_eq!(
            to_text(&x).unwrap(),
            "user::rw-\nuser:7:r--\ngroup::--x\ngroup:9:-w-\nmask::rwx\nother::---"
        );
        let x = from_text(b"user::rw-,group::r--,other::---", &accounts, "/f").unwrap();
        assert!(!to_text(&x).unwrap().contains("mask"));
        let err = from_text(b"user::rw-,user:7:r--,other::---", &accounts, "/f").unwrap_err();
        assert!(err.to_string().contains("`group::`"), "{err}");
    }
}
