//! Packs of blobs: writing them durably, reading blobs back verified.
//!
//! The store knows files and bytes, not the catalog: [`PackWriter`] hands each finished pack
//! back to its caller, which records it in the catalog only after the pack and its index are
//! durable under their final names. A pack that never reaches the catalog (a capture killed at
//! the wrong moment) is complete and valid on disk, and [`crate::repo::Repository`] adopts it the
//! next time a writer opens the repository.

pub mod chunk;

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::{corrupt, IoContext, Result};
use crate::format::pack::{self, Codec, IndexEntry};
use crate::format::Id;
use crate::sys::sync_dir;

/// A pack is closed once it grows past this many bytes (the design asks for 32-64 MiB).
pub const PACK_TARGET: u64 = 48 << 20;
/// zstd level for blobs: level 3 compresses about as well as gzip -9 at several times the speed.
pub const ZSTD_LEVEL: i32 = 3;

/// `packs/ab/abcd….pack` for a pack id.
pub fn pack_path(repo: &Path, id: &Id, ext: &str) -> PathBuf {
    let hex = id.hex();
    repo.join("packs")
        .join(&hex[..2])
        .join(format!("{hex}.{ext}"))
}

/// `manifests/ab/abcd….mf` for a revision id.
pub fn manifest_path(repo: &Path, id: &Id) -> PathBuf {
    let hex = id.hex();
    repo.join("manifests").join(&hex[..2]).join(format!("{hex}.mf"))
}

/// Where unfinished packs and other temporary files live; emptied whenever a writer starts
/// with the repository exclusively locked.
pub fn tmp_dir(repo: &Path) -> PathBuf {
    repo.join("tmp")
}

/// Writes `data` to `path` atomically: temporary name, fsync, rename, fsync of the directory.
pub fn write_atomic(repo: &Path, path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().expect("store paths have a parent");
    fs::create_dir_all(dir).at(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(tmp_dir(repo)).at(tmp_dir(repo))?;
    tmp.write_all(data).at(tmp.path())?;
    tmp.as_file().sync_all().at(tmp.path())?;
    tmp.persist(path).map_err(|e| e.error).at(path)?;
    sync_dir(dir)
}

thread_local! {
    static COMPRESSOR: std::cell::RefCell<zstd::bulk::Compressor<'static>> =
        std::cell::RefCell::new(zstd::bulk::Compressor::new(ZSTD_LEVEL).expect("zstd context"));
}

/// Compresses a blob, or keeps it raw when zstd does not make it smaller.
pub fn compress(raw: &[u8]) -> (Codec, Vec<u8>) {
    let packed = COMPRESSOR.with(|c| c.borrow_mut().compress(raw));
    match packed {
        Ok(p) if p.len() < raw.len() => (Codec::Zstd, p),
        _ => (Codec::Raw, raw.to_vec()),
    }
}

/// Turns a stored payload back into the blob and checks it against its id.
pub fn decode_blob(id: &Id, codec: Codec, raw_len: u32, payload: &[u8]) -> Result<Vec<u8>> {
    let raw = match codec {
        Codec::Raw => payload.to_vec(),
        Codec::Zstd => zstd::bulk::decompress(payload, raw_len as usize)
            .map_err(|e| corrupt(format!("blob {} does not decompress: {e}", id.short())))?,
    };
    if raw.len() != raw_len as usize || Id::of(&raw) != *id {
        return Err(corrupt(format!(
            "blob {} is damaged (its content no longer matches its hash); run `aurum verify` to see which revisions it breaks",
            id.short()
        )));
    }
    Ok(raw)
}

/// A pack that is durable under its final name, for the caller to record in the catalog.
#[derive(Debug)]
pub struct FinishedPack {
    pub id: Id,
    pub size: u64,
    pub entries: Vec<IndexEntry>,
}

struct OpenPack {
    file: tempfile::NamedTempFile,
    path: PathBuf,
    hasher: blake3::Hasher,
    offset: u64,
    entries: Vec<IndexEntry>,
}

/// Appends blobs to packs, closing each at [`PACK_TARGET`].
pub struct PackWriter {
    repo: PathBuf,
    cur: Option<OpenPack>,
}

impl PackWriter {
    pub fn new(repo: &Path) -> PackWriter {
        PackWriter {
            repo: repo.to_path_buf(),
            cur: None,
        }
    }

    /// Appends one blob; returns a pack when this blob filled it.
    pub fn add(
        &mut self,
        id: &Id,
        codec: Codec,
        raw_len: u32,
        payload: &[u8],
    ) -> Result<Option<FinishedPack>> {
        if self.cur.is_none() {
            let tmp = tmp_dir(&self.repo);
            let mut file = tempfile::Builder::new()
                .suffix(".pack")
                .tempfile_in(&tmp)
                .at(&tmp)?;
            file.write_all(pack::PACK_MAGIC).at(file.path())?;
            let mut hasher = blake3::Hasher::new();
            hasher.update(pack::PACK_MAGIC);
            self.cur = Some(OpenPack {
                path: file.path().to_path_buf(),
                file,
                hasher,
                offset: pack::PACK_MAGIC.len() as u64,
                entries: Vec::new(),
            });
        }
        let cur = self.cur.as_mut().expect("opened above");
        let header = pack::record_header(id, codec, payload.len() as u32, raw_len);
        let w = cur.file.as_file_mut();
        w.write_all(&header).at(&cur.path)?;
        w.write_all(payload).at(&cur.path)?;
        cur.hasher.update(&header);
        cur.hasher.update(payload);
        cur.entries.push(IndexEntry {
            id: *id,
            offset: cur.offset + header.len() as u64,
            stored_len: payload.len() as u32,
            raw_len,
            codec,
        });
        cur.offset += (header.len() + payload.len()) as u64;
        if cur.offset >= PACK_TARGET {
            return self.finish();
        }
        Ok(None)
    }

    /// Closes the open pack, if any: fsync, index, renames, directory fsync.
    pub fn finish(&mut self) -> Result<Option<FinishedPack>> {
        let Some(mut cur) = self.cur.take() else {
            return Ok(None);
        };
        cur.file.as_file().sync_all().at(cur.file.path())?;
        let id = Id::from(cur.hasher.finalize());
        let pack_at = pack_path(&self.repo, &id, "pack");
        let dir = pack_at.parent().expect("pack paths have a parent");
        fs::create_dir_all(dir).at(dir)?;
        // The pack goes in first: an index never names a pack that is not there.
        cur.file.persist(&pack_at).map_err(|e| e.error).at(&pack_at)?;
        let index = pack::encode_index(&mut cur.entries);
        write_atomic(&self.repo, &pack_path(&self.repo, &id, "idx"), &index)?;
        Ok(Some(FinishedPack {
            id,
            size: cur.offset,
            entries: cur.entries,
        }))
    }
}

/// Reads blobs out of packs, keeping a few pack files open.
pub struct PackReader {
    repo: PathBuf,
    open: Mutex<HashMap<Id, Arc<File>>>,
}

impl PackReader {
    pub fn new(repo: &Path) -> PackReader {
        PackReader {
            repo: repo.to_path_buf(),
            open: Mutex::new(HashMap::new()),
        }
    }

    fn file(&self, pack: &Id) -> Result<Arc<File>> {
        let mut open = self.open.lock().expect("pack cache lock");
        if let Some(f) = open.get(pack) {
            return Ok(f.clone());
        }
        if open.len() >= 64 {
            open.clear();
        }
        let path = pack_path(&self.repo, pack, "pack");
        let f = Arc::new(File::open(&path).at(&path)?);
        open.insert(*pack, f.clone());
        Ok(f)
    }

    /// The stored payload of a blob, unverified (for serving and copying).
    pub fn read_payload(&self, pack: &Id, e: &IndexEntry) -> Result<Vec<u8>> {
        let f = self.file(pack)?;
        let mut buf = vec![0u8; e.stored_len as usize];
        f.read_exact_at(&mut buf, e.offset)
            .at(pack_path(&self.repo, pack, "pack"))?;
        Ok(buf)
    }

    /// A blob's content, checked against its id.
    pub fn read(&self, pack: &Id, e: &IndexEntry) -> Result<Vec<u8>> {
        let payload = self.read_payload(pack, e)?;
        decode_blob(&e.id, e.codec, e.raw_len, &payload)
    }
}
