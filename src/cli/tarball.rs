//! `export` and `import` subcommands.
//!
//! `export` writes a tar archive, or a read-only filesystem image for diskless nodes on a
//! network root (`--netroot`, or `-o FILE.erofs`: [`aurum::netboot::netroot`]).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::{human_bytes, open, Global};

/// Write a revision as a tar archive, or as a read-only EROFS image for diskless nodes.
///
/// A tar archive is compressed as FILE's ending says. GNU tar with pax headers for xattrs, POSIX ACLs and nanosecond mtimes, as `tar --xattrs
/// --acls` reads them. Sparse files keep their holes (GNU sparse entries). Sockets have no tar
/// form and are left out with a warning.
///
/// With --netroot the revision is published for diskless nodes whose root is `netroot` (`aurum
/// node set NODE --rootfs netroot`): it is checked out (every blob verified; run as root to
/// keep owners and devices) and `mkfs.erofs` (Debian: erofs-utils) makes an LZ4HC-compressed
/// EROFS image of it, which keeps owners, modes, nanosecond mtimes, xattrs and hardlinks, at
/// public/netroot/HASH.erofs (named by its BLAKE3), with a record of its size and hash at
/// public/netroot/ID.erofs.json, written last: a node booting during a re-export gets the old
/// image or the new one whole. With --sign-key (or AURUM_SIGN_KEY) the image is signed for the
/// revision; nodes whose node.toml lists trusted-keys boot only signed images (`aurum sign
/// REV` signs an existing export too). `aurum serve` serves it; a node boots it read-only with
/// a tmpfs overlay for its writes, and lays its overrides over it at boot. Export every
/// revision netroot nodes are to boot; `aurum gc` removes images no record names.
/// `-o FILE.erofs` writes such an image elsewhere, without publishing or signing it.
///
/// With --nfs the revision is published for diskless nodes whose root is `nfs`: a checkout
/// (every blob verified; owners, modes, xattrs, hardlinks, nanosecond mtimes) in the
/// repository's nfsroot/ID/, which nfs-ganesha (FSAL VFS, read-only, NFSv4, no root squash)
/// exports to every node of the revision; nfsroot/ganesha-exports.conf holds an EXPORT block
/// per exported revision. A node mounts its revision read-only with a tmpfs overlay for its
/// writes. Run as root.
#[derive(Args)]
pub struct ExportArgs {
    /// The revision.
    rev: String,
    /// The file to write: FILE.tar (plain), FILE.tar.gz or FILE.tgz (gzip), FILE.tar.zst or
    /// FILE.tzst (zstd), `-` for standard output (plain tar), or FILE.erofs (an EROFS image).
    #[arg(
        short,
        long,
        value_name = "FILE",
        required_unless_present_any = ["netroot", "nfs"],
        conflicts_with_all = ["netroot", "nfs"]
    )]
    output: Option<PathBuf>,
    /// Publish the revision as an EROFS image for netroot nodes, in the repository's
    /// public/netroot/, where `aurum serve` serves it.
    #[arg(long, conflicts_with = "nfs")]
    netroot: bool,
    /// Publish the revision for nfs nodes: a checkout in the repository's nfsroot/ID/ (mode
    /// 0700: for the NFS server alone), its record in public/netroot/ID.nfs.json, and an
    /// EXPORT block for nfs-ganesha in nfsroot/ganesha-exports.conf (every exported revision;
    /// `%include` it in ganesha.conf and reload nfs-ganesha). A revision exported before keeps
    /// its tree; its record is written again.
    #[arg(long)]
    nfs: bool,
    /// Where nodes mount the NFS exports from: HOST, HOST:PORT or :PORT. Default: the host
    /// of the aurum server the node boots from, port 2049.
    #[arg(long, value_name = "HOST[:PORT]", requires = "nfs")]
    nfs_server: Option<String>,
    /// With --netroot, sign the image with this ed25519 private key (OpenSSH format, as
    /// `aurum sign` takes it): nodes that trust keys boot only a signed image.
    #[arg(long, env = aurum::trust::KEY_ENV, value_name = "FILE")]
    sign_key: Option<PathBuf>,
    /// Print JSON: the revision ({"revision", "image", "number", "id"}), "output", "bytes"
    /// and "warnings" (not with `-o -`); for an image also "blake3", "entries",
    /// "tree_bytes", "seconds" and "signed_by" (the key's fingerprint, or null); with --nfs
    /// "path", "pseudo", "server", "export_id", "entries", "tree_bytes", "ganesha_config",
    /// "ganesha_block", "reused" and "seconds".
    #[arg(long)]
    json: bool,
}

/// `export --netroot` and `export -o FILE.erofs`.
fn export_image(g: &Global, a: &ExportArgs) -> anyhow::Result<()> {
    let key = match a.netroot {
        true => a
            .sign_key
            .as_deref()
            .map(aurum::trust::SigningKey::load)
            .transpose()?,
        false => None,
    };
    let repo = open(g)?;
    let rev = repo.resolve(&a.rev)?;
    let progress = g.progress();
    let r = aurum::netboot::netroot::export(
        &repo,
        &rev,
        a.output.as_deref(),
        key.as_ref(),
        progress.as_ref(),
    )?;
    if a.json {
        let mut v = super::revision_json(&rev);
        v["output"] = r.output.display().to_string().into();
        v["bytes"] = r.info.bytes.into();
        v["blake3"] = r.info.blake3.clone().into();
        v["entries"] = r.info.entries.into();
        v["tree_bytes"] = r.info.tree_bytes.into();
        v["seconds"] = r.seconds.into();
        v["signed_by"] = serde_json::json!(r.signed_by);
        v["warnings"] = serde_json::json!(r.warnings);
        return super::print_json(&v);
    }
    for w in &r.warnings {
        super::warning(w);
    }
    super::say!(
        "{} {} -> {} ({}, {} entries, {} of files, {:.1} s)",
        rev.name(),
        rev.id.short(),
        r.output.display(),
        human_bytes(r.info.bytes),
        r.info.entries,
        human_bytes(r.info.tree_bytes),
        r.seconds
    );
    if let Some(k) = &r.signed_by {
        super::say!("aurum: signed the image of {} with {k}", rev.name());
    }
    Ok(())
}

/// `export --nfs`.
fn export_nfs(g: &Global, a: &ExportArgs) -> anyhow::Result<()> {
    let repo = open(g)?;
    let rev = repo.resolve(&a.rev)?;
    let progress = g.progress();
    let r = aurum::netboot::netroot::export_nfs(
        &repo,
        &rev,
        a.nfs_server.as_deref(),
        progress.as_ref(),
    )?;
    if a.json {
        let mut v = super::revision_json(&rev);
        let mut rec = serde_json::to_value(&r)?;
        if let (Some(o), Some(rec)) = (v.as_object_mut(), rec.as_object_mut()) {
            // The revision's "id" is the record's too.
            rec.remove("id");
            o.append(rec);
        }
        return super::print_json(&v);
    }
    for w in &r.warnings {
        super::warning(w);
    }
    super::say!(
        "{} {} -> {} ({} entries, {} of files, {:.1} s{})",
        rev.name(),
        rev.id.short(),
        r.record.path,
        r.record.entries,
        human_bytes(r.record.tree_bytes),
        r.seconds,
        if r.reused { ", exported before" } else { "" }
    );
    super::say!(
        "NFSv4 export {} (Export_Id {}), nodes mount it from {}; EXPORT blocks of every exported revision in {}: `%include \"{}\"` in ganesha.conf (NFSV4 {{ Only_Numeric_Owners = true; }}) and reload nfs-ganesha",
        r.record.pseudo,
        r.record.export_id,
        r.record.server.as_deref().unwrap_or("the aurum server's host, port 2049"),
        r.ganesha_config.display(),
        r.ganesha_config.display()
    );
    Ok(())
}

/// How an archive named FILE is compressed, from its ending.
#[derive(Clone, Copy)]
enum Compression {
    Plain,
    Gzip,
    Zstd,
}

impl Compression {
    fn of(name: &str) -> anyhow::Result<Compression> {
        const ENDINGS: &[(&str, Compression)] = &[
            (".tar", Compression::Plain),
            (".tar.gz", Compression::Gzip),
            (".tgz", Compression::Gzip),
            (".tar.zst", Compression::Zstd),
            (".tzst", Compression::Zstd),
        ];
        ENDINGS
            .iter()
            .find(|(end, _)| name.ends_with(end))
            .map(|&(_, c)| c)
            .ok_or_else(|| {
                aurum::Error::Invalid(format!(
                    "cannot tell how to write `{name}`: name the archive FILE.tar, FILE.tar.gz, FILE.tgz, FILE.tar.zst or FILE.tzst, FILE.erofs for an EROFS image, or give `-o -` for a plain tar on standard output"
                ))
                .into()
            })
    }
}

pub fn export(g: &Global, a: ExportArgs) -> anyhow::Result<()> {
    let image = a
        .output
        .as_ref()
        .is_some_and(|o| o.extension().is_some_and(|e| e == "erofs"));
    if a.nfs {
        return export_nfs(g, &a);
    }
    if a.netroot || image {
        return export_image(g, &a);
    }
    let Some(output) = a.output else {
        return Err(aurum::Error::Invalid("give -o FILE or --netroot".into()).into());
    };
    let name = output.to_string_lossy().into_owned();
    if a.json && name == "-" {
        return Err(aurum::Error::Invalid(
            "--json with `-o -`: standard output carries the archive; give -o FILE".into(),
        )
        .into());
    }
    let compression = if name == "-" {
        Compression::Plain
    } else {
        Compression::of(&name)?
    };
    let repo = open(g)?;
    let rev = repo.resolve(&a.rev)?;
    let manifest = repo.load_manifest(&rev.id)?;
    let warnings = if name == "-" {
        aurum::tarball::export(&repo, &manifest, std::io::stdout().lock())?
    } else {
        write_archive(&repo, &manifest, &output, compression)
            .with_context(|| output.display().to_string())?
    };
    if !a.json {
        for w in &warnings {
            super::warning(w);
        }
    }
    if name != "-" {
        let size = std::fs::metadata(&output)?.len();
        if a.json {
            let mut v = super::revision_json(&rev);
            v["output"] = output.display().to_string().into();
            v["bytes"] = size.into();
            v["warnings"] = serde_json::json!(warnings);
            return super::print_json(&v);
        }
        super::say!(
            "{} {} -> {} ({})",
            rev.name(),
            rev.id.short(),
            output.display(),
            human_bytes(size)
        );
    }
    Ok(())
}

/// Writes the archive to a temp file beside `target`, then renames it into place, so that a
/// failed export never leaves a partial archive under the real name. Errors name no path: the
/// caller names `target`, since the temp file's name means nothing to the administrator.
fn write_archive(
    repo: &aurum::repo::Repository,
    manifest: &aurum::format::manifest::Manifest,
    target: &std::path::Path,
    compression: Compression,
) -> anyhow::Result<Vec<String>> {
    let dir = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    // Created 0644 less the umask, as tar would: a temp file's own 0600 would leave the
    // archive unreadable to the web server or the colleague it is meant for.
    let mut tmp = tempfile::Builder::new()
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .tempfile_in(dir)
        .map_err(|e| without_temp_name(dir, e))?;
    let out = std::io::BufWriter::new(tmp.as_file_mut());
    let warnings = match compression {
        Compression::Plain => aurum::tarball::export(repo, manifest, out)?,
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(out, flate2::Compression::default());
            let w = aurum::tarball::export(repo, manifest, &mut enc)?;
            enc.finish()?.flush()?;
            w
        }
        Compression::Zstd => {
            let mut enc = zstd::stream::write::Encoder::new(out, 3)?;
            let w = aurum::tarball::export(repo, manifest, &mut enc)?;
            enc.finish()?.flush()?;
            w
        }
    };
    tmp.as_file().sync_all()?;
    tmp.persist(target).map_err(|e| e.error)?;
    Ok(warnings)
}

/// The error of making a temp file in `dir`, without the temp file's name that tempfile puts
/// in it: the reason `dir` cannot take a new file, as the OS gives it.
fn without_temp_name(dir: &std::path::Path, e: std::io::Error) -> std::io::Error {
    use nix::unistd::{access, AccessFlags};
    match access(dir, AccessFlags::W_OK | AccessFlags::X_OK) {
        Err(errno) => std::io::Error::from(errno),
        Ok(()) => std::io::Error::from(e.kind()),
    }
}

/// Import a tar archive (plain, gzip, zstd, bzip2, xz or lz4) as a new revision of an image.
///
/// A container or chroot rootfs tarball imports this way; GNU tar, bsdtar, star and old tars
/// are read, the compression is recognised from the content. Names with `..` are refused;
/// directories the archive leaves implicit are created root-owned 0755; a name archived
/// twice (`tar -r`) ends as its last member. Sparse members keep their holes; xattrs, SELinux
/// labels and POSIX ACLs of pax records are kept (ACL names are mapped through the archive's
/// own etc/passwd and etc/group). A pax record or member type aurum cannot keep refuses the
/// archive, naming the member.
#[derive(Args)]
pub struct ImportArgs {
    /// The image to add the revision to (created when new).
    #[arg(long, value_name = "NAME")]
    image: String,
    /// A note kept with the revision.
    #[arg(short, long, default_value = "")]
    message: String,
    /// The archive.
    file: PathBuf,
    #[command(flatten)]
    sign: super::trust::SignKeyArgs,
    /// Print JSON: the revision ({"revision", "image", "number", "id"}) and the counts.
    #[arg(long)]
    json: bool,
}

pub fn import(g: &Global, a: ImportArgs) -> anyhow::Result<()> {
    let key = a.sign.load()?;
    let mut repo = open(g)?;
    if a.file != std::path::Path::new("-") && !a.file.exists() {
        return Err(aurum::Error::NotFound(format!(
            "no archive {}: give the path of a tar file (plain or compressed), or `-` for \
             standard input",
            a.file.display()
        ))
        .into());
    }
    let started = std::time::Instant::now();
    let (rev, stats) = aurum::tarball::import(&mut repo, &a.file, &a.image, &a.message)?;
    super::trust::sign_new(&repo, &rev, key.as_ref())?;
    if a.json {
        let mut v = super::revision_json(&rev);
        v["files"] = stats.files.into();
        v["bytes"] = stats.bytes.into();
        v["new_bytes"] = stats.new_bytes.into();
        v["seconds"] = started.elapsed().as_secs_f64().into();
        return super::print_json(&v);
    }
    println!("{} {}", rev.name(), rev.id.short());
    println!(
        "{} files, {}, {} new stored, {:.2} s",
        stats.files,
        human_bytes(stats.bytes),
        human_bytes(stats.new_bytes),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
