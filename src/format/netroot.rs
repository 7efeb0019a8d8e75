//! Network-root images (`aurum export --netroot`): where a revision's read-only image lies in
//! the published tree, and the small JSON record beside it that a booting node checks the
//! image against.
//!
//! `public/netroot/ID.erofs.json` is an [`ImageInfo`]: the record of revision `ID` (hex)'s
//! image. The image itself is `public/netroot/HASH.erofs`, named by its content (HASH: the
//! BLAKE3 of the file), and its signatures are `public/netroot/HASH.erofs.sig`
//! ([`crate::format::signature`]'s netroot blocks). An export writes (and syncs) the image and
//! its signatures first and then renames the record into place, so a record always names a
//! complete image, and a re-export never replaces the bytes a node may be fetching under the
//! name it reads: the old image stays until `gc` finds no record naming it. A booting node reads
//! the record, fetches the image its hash names, and refuses an image whose size or BLAKE3
//! differ from the record (and, when it trusts keys, a record no trusted signature vouches
//! for).
//!
//! Format 2 repositories made before content naming published `ID.erofs` (named by revision);
//! [`ImageInfo::is_content_named`] tells such a record, which opening the repository renames.

use serde::{Deserialize, Serialize};

use super::Id;

/// The directory under `public/` (and the URL path) of the images.
pub const DIR: &str = "netroot";

/// A read-only image's filesystem.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageFormat {
    /// EROFS (erofs-utils' mkfs.erofs), LZ4HC-compressed: keeps owners, modes, nanosecond
    /// mtimes, xattrs, hardlinks and devices, so the mounted image is the revision exactly.
    Erofs,
}

impl ImageFormat {
    /// The file name ending, and the kernel's name of the filesystem.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Erofs => "erofs",
        }
    }
}

/// What a booting node needs to know of an image before it fetches it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// The revision's id (hex) the image holds.
    pub id: String,
    pub format: ImageFormat,
    /// The image's path under `public/` and the server's URL: `netroot/HASH.erofs`.
    pub path: String,
    pub bytes: u64,
    /// BLAKE3 of the whole image (hex).
    pub blake3: String,
    /// Entries of the revision's tree, and bytes of file data in it.
    pub entries: u64,
    pub tree_bytes: u64,
}

/// The image whose BLAKE3 is `hash` (hex): `netroot/HASH.erofs`.
pub fn image_path(hash: &str, format: ImageFormat) -> String {
    format!("{DIR}/{hash}.{}", format.as_str())
}

/// The signatures of the image whose BLAKE3 is `hash`: `netroot/HASH.erofs.sig`.
pub fn sig_path(hash: &str, format: ImageFormat) -> String {
    format!("{}.sig", image_path(hash, format))
}

/// The record of revision `id_hex`'s image: `netroot/ID.erofs.json`.
pub fn info_path(id_hex: &str, format: ImageFormat) -> String {
    format!("{DIR}/{id_hex}.{}.json", format.as_str())
}

/// A file of `netroot/`, by its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetrootFile {
    /// `ID.erofs.json`: the record of revision ID's image.
    Record(Id),
    /// `HASH.erofs` (or, before content naming, `ID.erofs`).
    Image(Id),
    /// `HASH.erofs.sig`.
    Signatures(Id),
    /// `ID.nfs.json`: the record of revision ID's NFS export.
    NfsRecord(Id),
}

impl NetrootFile {
    /// What the file named `name` is (`None`: nothing an export writes).
    pub fn of(name: &str) -> Option<NetrootFile> {
        let (hex, rest) = name.split_once('.')?;
        let id = Id::from_hex(hex)?;
        match rest {
            "erofs.json" => Some(NetrootFile::Record(id)),
            "erofs" => Some(NetrootFile::Image(id)),
            "erofs.sig" => Some(NetrootFile::Signatures(id)),
            "nfs.json" => Some(NetrootFile::NfsRecord(id)),
            _ => None,
        }
    }
}

impl ImageInfo {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("strings and numbers serialise");
        v.push(b'\n');
        v
    }

    /// Reads a record, refusing one whose revision id or hash are not 64 hex digits (the
    /// hash names the file a node fetches).
    pub fn decode(b: &[u8], origin: &str) -> crate::error::Result<ImageInfo> {
        let info: ImageInfo = serde_json::from_slice(b)
            .map_err(|e| crate::error::corrupt(format!("{origin} is not an image record: {e}")))?;
        if Id::from_hex(&info.id).is_none() || Id::from_hex(&info.blake3).is_none() {
            return Err(crate::error::corrupt(format!(
                "{origin}: its revision id or BLAKE3 is not 64 hex digits; export the revision again"
            )));
        }
        Ok(info)
    }

    /// The image's BLAKE3, as an id (checked by [`ImageInfo::decode`]).
    pub fn hash(&self) -> Id {
        Id::from_hex(&self.blake3).unwrap_or(Id([0; 32]))
    }

    /// Where the image lies by its content: `netroot/HASH.erofs`.
    pub fn content_path(&self) -> String {
        image_path(&self.hash().hex(), self.format)
    }

    /// Whether the record names its image by content (not by revision, as before).
    pub fn is_content_named(&self) -> bool {
        self.path == self.content_path()
    }
}

/// The directory under the repository (not under `public/`: the trees hold every file of a
/// revision, `/etc/shadow` included, and are for the NFS server alone) of the NFS-exported
/// trees: `nfsroot/ID/` is the revision `ID` checked out.
pub const NFS_DIR: &str = "nfsroot";

/// The file of ganesha EXPORT blocks in [`NFS_DIR`], one per exported revision, for
/// `%include` in ganesha.conf.
pub const GANESHA_EXPORTS: &str = "ganesha-exports.conf";

/// The NFSv4 path (ganesha's `Pseudo`) under which revision `id_hex` is exported.
pub fn nfs_pseudo(id_hex: &str) -> String {
    format!("/aurum/{id_hex}")
}

/// The record of an NFS export (`aurum export REV --nfs`): `public/netroot/ID.nfs.json`. A
/// node whose root is `nfs` reads it from the server to learn where to mount its revision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NfsExport {
    /// The revision's id (hex) the tree holds.
    pub id: String,
    /// Where nodes mount from: `HOST[:PORT]`; absent: the host of the aurum server the node
    /// booted from, port 2049.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// The NFSv4 path of the export ([`nfs_pseudo`]).
    pub pseudo: String,
    /// The tree's directory on the server.
    pub path: String,
    /// ganesha's `Export_Id` of the export.
    pub export_id: u16,
    /// Entries of the revision's tree, and bytes of file data in it.
    pub entries: u64,
    pub tree_bytes: u64,
}

/// The record of revision `id_hex`'s NFS export: `netroot/ID.nfs.json`.
pub fn nfs_info_path(id_hex: &str) -> String {
    format!("{DIR}/{id_hex}.nfs.json")
}

impl NfsExport {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("strings and numbers serialise");
        v.push(b'\n');
        v
    }

    pub fn decode(b: &[u8], origin: &str) -> crate::error::Result<NfsExport> {
        serde_json::from_slice(b).map_err(|e| {
            crate::error::corrupt(format!("{origin} is not an NFS export record: {e}"))
        })
    }

    /// ganesha's EXPORT block: FSAL VFS (the tree is a plain directory), read-only, NFSv4
    /// over TCP, AUTH_SYS with root not squashed (the root's files are root's).
    pub fn ganesha_block(&self) -> String {
        format!(
            "# {pseudo}: revision {id}\nEXPORT {{\n    Export_Id = {eid};\n    Path = \"{path}\";\n    Pseudo = \"{pseudo}\";\n    Access_Type = RO;\n    Squash = No_Root_Squash;\n    Protocols = 4;\n    Transports = TCP;\n    SecType = sys;\n    FSAL {{\n        Name = VFS;\n    }}\n}}\n",
            pseudo = self.pseudo,
            id = self.id,
            eid = self.export_id,
            path = self.path,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_told_by_name_and_records_checked() {
        let h = Id::of(b"x");
        assert_eq!(
            NetrootFile::of(&format!("{}.erofs", h.hex())),
            Some(NetrootFile::Image(h))
        );
        assert_eq!(
            NetrootFile::of(&format!("{}.erofs.sig", h.hex())),
            Some(NetrootFile::Signatures(h))
        );
        assert_eq!(
            NetrootFile::of(&format!("{}.erofs.json", h.hex())),
            Some(NetrootFile::Record(h))
        );
        assert_eq!(
            NetrootFile::of(&format!("{}.nfs.json", h.hex())),
            Some(NetrootFile::NfsRecord(h))
        );
        assert_eq!(NetrootFile::of("x.erofs"), None);
        assert_eq!(NetrootFile::of(&format!("{}.erofs.tmp", h.hex())), None);
        let info = ImageInfo {
            id: Id::of(b"rev").hex(),
            format: ImageFormat::Erofs,
            path: image_path(&h.hex(), ImageFormat::Erofs),
            bytes: 10,
            blake3: h.hex(),
            entries: 1,
            tree_bytes: 1,
        };
        assert!(info.is_content_named());
        assert_eq!(ImageInfo::decode(&info.encode(), "r").unwrap(), info);
        let bad = String::from_utf8(info.encode())
            .unwrap()
            .replace(&h.hex(), "../../etc/passwd");
        assert!(ImageInfo::decode(bad.as_bytes(), "r").is_err());
    }

    #[test]
    fn nfs_record_round_trips_and_makes_a_ganesha_block() {
        let r = NfsExport {
            id: "ab".repeat(32),
            server: None,
            pseudo: nfs_pseudo(&"ab".repeat(32)),
            path: "/srv/aurum/nfsroot/abab".into(),
            export_id: 1000,
            entries: 3,
            tree_bytes: 10,
        };
        assert_eq!(NfsExport::decode(&r.encode(), "x").unwrap(), r);
        assert!(!String::from_utf8(r.encode()).unwrap().contains("server"));
        let b = r.ganesha_block();
        for want in [
            "Export_Id = 1000;",
            "Path = \"/srv/aurum/nfsroot/abab\";",
            "Access_Type = RO;",
            "Squash = No_Root_Squash;",
            "Protocols = 4;",
            "Name = VFS;",
        ] {
            assert!(b.contains(want), "{b}");
        }
        assert_eq!(nfs_info_path("ab"), "netroot/ab.nfs.json");
    }
}
