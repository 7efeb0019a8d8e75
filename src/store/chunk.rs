//! Cutting file content into blobs.
//!
//! A file of up to [`SMALL_FILE`] bytes is one blob. A larger one is cut by content-defined
//! chunking (FastCDC, 16/64/256 KiB), so an edit inside a big file changes only the chunks around
//! it and a delta moves only those. Cuts depend on content alone, which the agent relies on:
//! it cuts a file again to send the chunks the server asked for, and gets the same ones.

use std::io::Read;

use crate::error::Result;
use crate::format::manifest::Chunk;
use crate::format::Id;

/// Files up to this size are stored as one blob.
pub const SMALL_FILE: u64 = 1 << 20;
pub const CDC_MIN: u32 = 16 << 10;
pub const CDC_AVG: u32 = 64 << 10;
pub const CDC_MAX: u32 = 256 << 10;

/// Calls `f` with each chunk of the `len` bytes `reader` yields, in order.
pub fn chunks(
    mut reader: impl Read,
    len: u64,
    mut f: impl FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    if len <= SMALL_FILE {
        let mut buf = Vec::with_capacity(len as usize);
        reader.by_ref().take(len).read_to_end(&mut buf)?;
        if (buf.len() as u64) < len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "file shrank while it was read; capture again when it is quiet",
            )
            .into());
        }
        if !buf.is_empty() {
            f(&buf)?;
        }
        return Ok(());
    }
    let mut total = 0u64;
    for chunk in fastcdc::v2020::StreamCDC::new(reader.take(len), CDC_MIN, CDC_AVG, CDC_MAX) {
        let chunk = chunk.map_err(|e| std::io::Error::other(e.to_string()))?;
        total += chunk.length as u64;
        f(&chunk.data)?;
    }
    if total < len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "file shrank while it was read; capture again when it is quiet",
        )
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cut(data: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        chunks(data, data.len() as u64, |c| {
            out.push(c.to_vec());
            Ok(())
        })
        .unwrap();
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(8))]
        #[test]
        fn chunks_reassemble(seed: u64, len in 0usize..3_000_000) {
            let mut x = seed | 1;
            let data: Vec<u8> = (0..len).map(|_| { x ^= x << 13; x ^= x >> 7; x ^= x << 17; x as u8 }).collect();
            let parts = cut(&data);
            prop_assert_eq!(parts.concat(), data);
            for p in &parts {
                prop_assert!(p.len() as u64 <= SMALL_FILE);
            }
        }
    }

    #[test]
    fn an_edit_changes_few_chunks() {
        let mut x = 7u64;
        let data: Vec<u8> = (0..4_000_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let mut edited = data.clone();
        edited[2_000_000] ^= 0xff;
        let a = cut(&data);
        let b = cut(&edited);
        let same = b.iter().filter(|c| a.contains(c)).count();
        assert!(
            b.len() - same <= 2,
            "{} of {} chunks changed",
            b.len() - same,
            b.len()
        );
    }
}

/// A file's content as a source reports it.
#[derive(Clone, Debug, Default)]
pub struct Content {
    pub chunks: Vec<Chunk>,
    pub extents: Option<Vec<(u64, u64)>>,
}

/// Cuts an open file into chunks as a capture does, handing each to `each` (chunk number, id,
/// bytes). `maybe_sparse` asks for the file's data extents (holes are not chunked).
pub fn file_chunks(
    file: std::fs::File,
    size: u64,
    maybe_sparse: bool,
    mut each: impl FnMut(u32, &Id, &[u8]) -> Result<()>,
) -> Result<Content> {
    let extents = if maybe_sparse {
        let ext = crate::sys::data_extents(&file, size)?;
        // A file with no holes after all (preallocated or compressed blocks) is stored plain.
        if ext == [(0, size)] {
            None
        } else {
            Some(ext)
        }
    } else {
        None
    };
    let data_len = match &extents {
        Some(ext) => ext.iter().map(|e| e.1).sum(),
        None => size,
    };
    let reader = ExtentReader::new(file, extents.clone().unwrap_or_else(|| vec![(0, size)]));
    let mut cut = Vec::new();
    chunks(reader, data_len, |data| {
        let id = Id::of(data);
        each(cut.len() as u32, &id, data)?;
        cut.push(Chunk {
            id,
            len: data.len() as u32,
        });
        Ok(())
    })?;
    Ok(Content {
        chunks: cut,
        extents,
    })
}

/// Reads the data extents of a file one after the other (all of it for a dense file).
pub struct ExtentReader {
    file: std::fs::File,
    extents: Vec<(u64, u64)>,
    at: usize,
    done: u64,
}

impl ExtentReader {
    pub fn new(file: std::fs::File, extents: Vec<(u64, u64)>) -> ExtentReader {
        ExtentReader {
            file,
            extents,
            at: 0,
            done: 0,
        }
    }
}

impl std::io::Read for ExtentReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        while let Some(&(off, len)) = self.extents.get(self.at) {
            if self.done == len {
                self.at += 1;
                self.done = 0;
                continue;
            }
            let want = buf.len().min((len - self.done) as usize);
            let n = self.file.read_at(&mut buf[..want], off + self.done)?;
            if n == 0 {
                return Ok(0);
            }
            self.done += n as u64;
            return Ok(n);
        }
        Ok(0)
    }
}
