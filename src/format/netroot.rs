//! Network-root images (`aurum export --netroot`): where a revision's read-only image lies in
//! the published tree, and the small JSON record beside it that a booting node checks the
//! image against.
//!
//! `public/netroot/ID.erofs` is the revision `ID` (hex) as an EROFS filesystem, built from a
//! checkout of it; `public/netroot/ID.erofs.json` is an [`ImageInfo`]. The record is written
//! after the image and renamed into place, so a record always describes a complete image. The
//! server hands the record to a netroot node in its identity (`GET /api/v1/boot/MAC`), and
//! the node refuses an image whose size or BLAKE3 hash differ from it.

use serde::{Deserialize, Serialize};

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
    /// The image's path under `public/` and the server's URL: `netroot/ID.erofs`.
    pub path: String,
    pub bytes: u64,
    /// BLAKE3 of the whole image (hex).
    pub blake3: String,
    /// Entries of the revision's tree, and bytes of file data in it.
    pub entries: u64,
    pub tree_bytes: u64,
}

/// `netroot/ID.erofs`.
pub fn image_path(id_hex: &str, format: ImageFormat) -> String {
    format!("{DIR}/{id_hex}.{}", format.as_str())
}

/// The record beside the image: `netroot/ID.erofs.json`.
pub fn info_path(id_hex: &str, format: ImageFormat) -> String {
    format!("{}.json", image_path(id_hex, format))
}

impl ImageInfo {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("strings and numbers serialise");
        v.push(b'\n');
        v
    }

    pub fn decode(b: &[u8], origin: &str) -> crate::error::Result<ImageInfo> {
        serde_json::from_slice(b)
            .map_err(|e| crate::error::corrupt(format!("{origin} is not an image record: {e}")))
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
