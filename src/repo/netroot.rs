//! The network-root images a repository publishes (`aurum export --netroot`), on disk:
//! `public/netroot/ID.erofs.json` (the record of revision ID's image), `HASH.erofs` (the image,
//! named by its BLAKE3) and `HASH.erofs.sig` (its signatures). Layouts are in
//! [`crate::format::netroot`] and [`crate::format::signature`]; building an image is
//! [`crate::netboot::netroot::export`].
//!
//! Crash safety and the order of writes: [`publish`] syncs the image and renames it to its
//! content name, writes its signatures, and renames the record into place last. A node reads
//! the record first, so it finds either the old record (naming the old image, which stays) or
//! the new one (naming an image that is whole on disk). A killed export leaves at most files no
//! record names, which [`unnamed`] lists for `gc`.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use serde::Serialize;

use crate::catalog::Revision;
use crate::error::{corrupt, IoContext, Result};
use crate::format::netroot::{info_path, sig_path, ImageFormat, ImageInfo, NetrootFile, DIR};
use crate::format::signature::{self, NetrootSignature, SignedNetroot};
use crate::format::Id;
use crate::repo::signatures::{now, Counted, SignatureSummary};
use crate::repo::Repository;
use crate::store::{self, published};
use crate::sys::sync_dir;
use crate::trust::{self, SigningKey, TrustedKeys, WantedNetroot};

/// The published record of revision `id`'s image, when it was exported.
pub fn record(root: &Path, id: &Id) -> Result<Option<ImageInfo>> {
    let p = published(root).join(info_path(&id.hex(), ImageFormat::Erofs));
    match fs::read(&p) {
        Ok(b) => ImageInfo::decode(&b, &p.display().to_string()).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).at(&p),
    }
}

/// Every record under `public/netroot/`, with the revision id its name gives.
fn records(root: &Path) -> Result<Vec<(Id, Result<ImageInfo>)>> {
    let dir = published(root).join(DIR);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).at(&dir),
    };
    let mut out = Vec::new();
    for e in entries {
        let name = e.at(&dir)?.file_name().to_string_lossy().into_owned();
        if let Some(NetrootFile::Record(id)) = NetrootFile::of(&name) {
            let p = dir.join(&name);
            let info = fs::read(&p)
                .at(&p)
                .and_then(|b| ImageInfo::decode(&b, &p.display().to_string()));
            out.push((id, info));
        }
    }
    out.sort_by_key(|(id, _)| *id);
    Ok(out)
}

/// The signatures of the image whose BLAKE3 is `file` (none when unsigned).
pub fn signatures(root: &Path, file: &Id) -> Result<Vec<NetrootSignature>> {
    let p = published(root).join(sig_path(&file.hex(), ImageFormat::Erofs));
    match fs::read(&p) {
        Ok(data) => signature::decode::<NetrootSignature>(&data).map_err(|pr| {
            corrupt(format!(
                "{}: {pr}; sign the image again (`aurum sign IMAGE@N --sign-key KEY`), which \
                 rewrites the file",
                p.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).at(&p),
    }
}

/// What a signature of `info`, the image of `rev`, must say.
fn statement(rev: &Revision, info: &ImageInfo) -> SignedNetroot {
    SignedNetroot {
        image: rev.image.clone(),
        number: rev.number,
        manifest: rev.id,
        file: info.hash(),
        bytes: info.bytes,
        signed: now(),
    }
}

/// `sigs` with `key`'s signature of `rev`'s image `info` in place of its earlier one of the
/// same revision (other keys', and other revisions' of the same bytes, are kept).
fn signed_with(
    mut sigs: Vec<NetrootSignature>,
    rev: &Revision,
    info: &ImageInfo,
    key: &SigningKey,
) -> Result<(Vec<NetrootSignature>, NetrootSignature)> {
    let sig = key.sign_netroot(statement(rev, info))?;
    let mine = key.fingerprint();
    sigs.retain(|s| {
        trust::netroot_key_of(s).as_deref() != Some(mine.as_str())
            || s.netroot.image != rev.image
            || s.netroot.number != rev.number
    });
    sigs.push(sig.clone());
    Ok((sigs, sig))
}

/// Publishes the image file `image` (in the repository's `tmp/`) of `rev` as `info` names it:
/// the image synced and renamed to its content name, signed with `key` when there is one, and
/// the record renamed into place last. Returns the signature made.
pub fn publish(
    root: &Path,
    rev: &Revision,
    image: &Path,
    info: &ImageInfo,
    key: Option<&SigningKey>,
) -> Result<Option<NetrootSignature>> {
    let public = published(root);
    let target = public.join(info.content_path());
    let dir = target.parent().expect("netroot/ has a parent");
    store::create_public_dir(root, dir)?;
    {
        let f = fs::File::open(image).at(image)?;
        // World-readable, as everything a web server publishes.
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .at(image)?;
        f.sync_all().at(image)?;
    }
    // The same name is the same bytes: a re-export of a reproducible image replaces it with
    // itself, and a node fetching it meanwhile reads the same content.
    fs::rename(image, &target).at(&target)?;
    sync_dir(dir)?;
    let sig = match key {
        Some(key) => {
            let (sigs, sig) = signed_with(signatures(root, &info.hash())?, rev, info, key)?;
            write_signatures(root, &info.hash(), &sigs)?;
            Some(sig)
        }
        None => None,
    };
    store::write_atomic(
        root,
        &public.join(info_path(&info.id, info.format)),
        &info.encode(),
    )?;
    Ok(sig)
}

fn write_signatures(root: &Path, file: &Id, sigs: &[NetrootSignature]) -> Result<()> {
    let p = published(root).join(sig_path(&file.hex(), ImageFormat::Erofs));
    store::write_atomic(root, &p, &signature::encode(sigs))
}

impl Repository {
    /// Signs `rev`'s published network-root image with `key`, now, when it has one. Needs the
    /// repository locked exclusively.
    pub fn sign_netroot(
        &self,
        rev: &Revision,
        key: &SigningKey,
    ) -> Result<Option<(ImageInfo, NetrootSignature)>> {
        let Some(info) = record(&self.root, &rev.id)? else {
            return Ok(None);
        };
        let (sigs, sig) = signed_with(signatures(&self.root, &info.hash())?, rev, &info, key)?;
        write_signatures(&self.root, &info.hash(), &sigs)?;
        Ok(Some((info, sig)))
    }
}

/// The files of `public/netroot/` an export wrote that no record of a revision in `live`
/// names (relative to `public/`), with their sizes: records of revisions that are gone (NFS
/// export records too), then images and signatures no remaining record names (an older export's, or a killed one's).
/// Files of other names are left alone.
pub fn unnamed(root: &Path, live: &dyn Fn(&Id) -> bool) -> Result<Vec<(String, NetrootFile, u64)>> {
    let dir = published(root).join(DIR);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).at(&dir),
    };
    let mut files = Vec::new();
    for e in entries {
        let e = e.at(&dir)?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(kind) = NetrootFile::of(&name) {
            files.push((name, kind, e.metadata().at(e.path())?.len()));
        }
    }
    let mut named = BTreeSet::new();
    // A live revision's record that does not read could name any image: then no image goes.
    let mut unread = None;
    for (id, info) in records(root)? {
        match (live(&id), info) {
            (true, Ok(info)) => {
                named.insert(info.path.clone());
                named.insert(sig_path(&info.hash().hex(), info.format));
            }
            (true, Err(e)) => unread = Some(e),
            (false, _) => {}
        }
    }
    if let Some(e) = &unread {
        log::warn!(
            target: crate::progress::NOTICE,
            "{e}: no network-root image is deleted while a live revision's record does not read \
             (export that revision again, `aurum export --netroot REV`, then gc)"
        );
    }
    let mut out: Vec<_> = files
        .into_iter()
        .filter(|(name, kind, _)| match kind {
            NetrootFile::Record(id) | NetrootFile::NfsRecord(id) => !live(id),
            _ => unread.is_none() && !named.contains(&format!("{DIR}/{name}")),
        })
        .map(|(name, kind, size)| (format!("{DIR}/{name}"), kind, size))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Renames the images of records made before content naming (`ID.erofs`) to their content
/// names and rewrites their records. Each step is a rename, the record last, so a killed
/// upgrade leaves an image under one of its names and a record naming an image that is
/// there, or (killed between the two renames) one whose next run finishes. Returns how many
/// images it renamed.
pub fn upgrade(root: &Path) -> Result<usize> {
    let public = published(root);
    let mut renamed = 0;
    for (_, info) in records(root)? {
        let Ok(mut info) = info else { continue };
        if info.is_content_named() {
            continue;
        }
        let old = public.join(&info.path);
        let new = public.join(info.content_path());
        if fs::symlink_metadata(&old).is_ok() {
            fs::rename(&old, &new).at(&new)?;
            sync_dir(new.parent().expect("netroot/ has a parent"))?;
            renamed += 1;
        }
        if fs::symlink_metadata(&new).is_ok() {
            info.path = info.content_path();
            store::write_atomic(
                root,
                &public.join(info_path(&info.id, info.format)),
                &info.encode(),
            )?;
        }
    }
    Ok(renamed)
}

/// Where a record's image is missing, differs from it, or its signatures do not check out.
#[derive(Debug, Serialize)]
pub struct NetrootProblem {
    /// `compute@3`.
    pub revision: String,
    /// The image, relative to `public/`.
    pub image: String,
    pub problem: String,
}

/// Checks the published image of each of `revisions` that has one: the image is there with
/// the record's size and BLAKE3, and its signatures (counted into `s`) check out. Returns the
/// problems.
pub fn check(
    repo: &Repository,
    revisions: &[Revision],
    keys: &TrustedKeys,
    s: &mut SignatureSummary,
) -> Result<Vec<NetrootProblem>> {
    let mut problems = Vec::new();
    for rev in revisions {
        let info = match record(&repo.root, &rev.id) {
            Ok(Some(info)) => info,
            Ok(None) => continue,
            Err(e) => {
                problems.push(NetrootProblem {
                    revision: rev.name(),
                    image: info_path(&rev.id.hex(), ImageFormat::Erofs),
                    problem: e.to_string(),
                });
                continue;
            }
        };
        let path = published(&repo.root).join(&info.path);
        let problem = match hash_file(&path) {
            Err(e) => Some(format!("{e}")),
            Ok((bytes, _)) if bytes != info.bytes => Some(format!(
                "it is {bytes} bytes, its record says {}",
                info.bytes
            )),
            Ok((_, hash)) if hash != info.hash() => Some(format!(
                "its BLAKE3 is {}, its record says {}",
                hash.hex(),
                info.blake3
            )),
            Ok(_) => None,
        };
        if let Some(problem) = problem {
            problems.push(NetrootProblem {
                revision: rev.name(),
                image: info.path.clone(),
                problem: format!(
                    "{problem}; export it again (`aurum export {} --netroot`)",
                    rev.name()
                ),
            });
        }
        let want = WantedNetroot {
            image: &rev.image,
            number: rev.number,
            id: rev.id,
            file: info.hash(),
            bytes: info.bytes,
        };
        let checked = signatures(&repo.root, &info.hash()).map(|mut sigs| {
            // Blocks of another revision whose image is the same bytes are its own.
            sigs.retain(|s| {
                trust::image_matches(&s.netroot.image, &rev.image) && s.netroot.number == rev.number
            });
            trust::check_netroot(&sigs, &want, keys)
        });
        let what = format!("netroot image of {}", rev.name());
        s.count(Counted::Netroot, rev.name(), what, checked, keys);
    }
    Ok(problems)
}

/// Size and BLAKE3 of a file.
pub fn hash_file(p: &Path) -> Result<(u64, Id)> {
    let mut f = fs::File::open(p).at(p)?;
    let mut h = blake3::Hasher::new();
    let n = std::io::copy(&mut f, &mut h).at(p)?;
    Ok((n, Id(*h.finalize().as_bytes())))
}
