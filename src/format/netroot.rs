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
