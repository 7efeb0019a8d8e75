//! Undoing an archive's compression, recognised by its first bytes rather than its name.
//!
//! Import reads plain tar and tar compressed with gzip (multi-member too), zstd, bzip2 (multi-
//! stream, as pbzip2 writes), xz (multi-stream) and lz4 frames. zstd and lz4 streams may start
//! with skippable frames (pzstd and zstdmt write one before the data); we step over them here,
//! since they carry no data and tell zstd and lz4 apart only by what follows them. Every
//! decoder streams, so memory stays bounded whatever the archive's size. A few formats old
//! tools wrote that we do not read are named in a clear error instead of a garbled one.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use crate::error::{invalid, IoContext, Result};

const ZSTD: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
const LZ4: [u8; 4] = [0x04, 0x22, 0x4d, 0x18];
const XZ: [u8; 6] = [0xfd, b'7', b'z', b'X', b'Z', 0];

/// Formats we recognise but do not read: their magic, their name, the command that undoes them.
const UNREAD: &[(&[u8], &str, &str)] = &[
    (b"LZIP", "lzip", "lzip -dc"),
    (&[0x1f, 0x9d], "compress (.Z)", "gzip -dc"),
    (&[0x89, b'L', b'Z', b'O'], "lzop", "lzop -dc"),
    (&[0x02, 0x21, 0x4c, 0x18], "legacy lz4", "lz4 -dc"),
    (b"PK\x03\x04", "zip (not a tar archive)", "unzip"),
];

/// Whether `b` starts a zstd/lz4 skippable frame (magic 0x184D2A50..=0x184D2A5F, little-endian).
fn skippable(b: &[u8]) -> bool {
    matches!(b, [m, 0x2a, 0x4d, 0x18, ..] if m & 0xf0 == 0x50)
}

/// The first `n` bytes of `f` without consuming them (fewer at the end of the file).
fn peek(f: &mut BufReader<std::fs::File>, path: &Path, n: usize) -> Result<Vec<u8>> {
    let buf = f.fill_buf().at(path)?;
    Ok(buf.iter().take(n).copied().collect())
}

/// Opens an archive, undoing its compression.
pub(crate) fn open(path: &Path) -> Result<Box<dyn Read>> {
    let mut f = BufReader::new(std::fs::File::open(path).at(path)?);
    let mut magic = peek(&mut f, path, 8)?;
    let mut skipped = false;
    while skippable(&magic) {
        let Some(&[_, _, _, _, l0, l1, l2, l3]) = magic.first_chunk::<8>() else {
            return Err(invalid(format!(
                "{}: it ends inside a zstd/lz4 skippable frame header; the archive is cut short",
                path.display()
            )));
        };
        let len = u32::from_le_bytes([l0, l1, l2, l3]);
        f.consume(8);
        let got =
            std::io::copy(&mut (&mut f).take(u64::from(len)), &mut std::io::sink()).at(path)?;
        if got != u64::from(len) {
            return Err(invalid(format!(
                "{}: it ends inside a zstd/lz4 skippable frame; the archive is cut short",
                path.display()
            )));
        }
        skipped = true;
        magic = peek(&mut f, path, 8)?;
    }
    Ok(if magic.starts_with(&ZSTD) {
        Box::new(zstd::stream::read::Decoder::with_buffer(f).at(path)?)
    } else if magic.starts_with(&LZ4) {
        Box::new(lz4_flex::frame::FrameDecoder::new(f))
    } else if skipped {
        return Err(invalid(format!(
            "{}: a skippable frame is followed by neither a zstd nor an lz4 frame; this is not an archive import reads",
            path.display()
        )));
    } else if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(f))
    } else if magic.starts_with(b"BZh") {
        Box::new(bzip2::bufread::MultiBzDecoder::new(f))
    } else if magic.starts_with(&XZ) {
        Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(f))
    } else if let Some((_, name, undo)) = UNREAD.iter().find(|(m, ..)| magic.starts_with(m)) {
        return Err(invalid(format!(
            "{}: it is compressed with {name}, which import does not read; undo it first (`{undo} FILE > FILE.tar`) and import the result",
            path.display()
        )));
    } else {
        Box::new(f)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skippable_frame_magics() {
        assert!(skippable(&[0x50, 0x2a, 0x4d, 0x18]));
        assert!(skippable(&[0x5f, 0x2a, 0x4d, 0x18, 0, 0, 0, 0]));
        assert!(!skippable(&ZSTD));
        assert!(!skippable(&LZ4));
    }
}
