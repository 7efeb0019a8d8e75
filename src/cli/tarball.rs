//! `export` and `import` subcommands.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use super::{human_bytes, open, Global};

/// Write a revision as a tar archive (zstd-compressed when FILE ends in .zst or .tzst).
///
/// GNU tar with pax headers for xattrs and nanosecond mtimes, as `tar --xattrs` reads them.
/// Sockets have no tar form and are left out with a warning; sparse files are written dense.
#[derive(Args)]
pub struct ExportArgs {
    /// The revision.
    rev: String,
    /// The archive to write (`-` for standard output, uncompressed).
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
}

pub fn export(g: &Global, a: ExportArgs) -> anyhow::Result<()> {
    let repo = open(g)?;
    let rev = repo.resolve(&a.rev)?;
    let manifest = repo.load_manifest(&rev.id)?;
    let name = a.output.to_string_lossy().into_owned();
    let warnings = if name == "-" {
        aurum::tarball::export(&repo, &manifest, std::io::stdout().lock())?
    } else {
        let mut tmp = tempfile::NamedTempFile::new_in(
            a.output
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new(".")),
        )?;
        let w = if name.ends_with(".zst") || name.ends_with(".tzst") {
            let mut enc =
                zstd::stream::write::Encoder::new(std::io::BufWriter::new(tmp.as_file_mut()), 3)?;
            let w = aurum::tarball::export(&repo, &manifest, &mut enc)?;
            enc.finish()?.flush()?;
            w
        } else {
            let f = std::io::BufWriter::new(tmp.as_file_mut());
            aurum::tarball::export(&repo, &manifest, f)?
        };
        tmp.as_file().sync_all()?;
        tmp.persist(&a.output)?;
        w
    };
    for w in &warnings {
        eprintln!("aurum: warning: {w}");
    }
    if name != "-" {
        let size = std::fs::metadata(&a.output)?.len();
        eprintln!(
            "{} {} -> {} ({})",
            rev.name(),
            rev.id.short(),
            a.output.display(),
            human_bytes(size)
        );
    }
    Ok(())
}

/// Import a tar archive (plain, .zst or .gz) as a new revision of an image.
///
/// A container or chroot rootfs tarball imports this way. Names with `..` are refused;
/// directories the archive leaves implicit are created root-owned 0755.
#[derive(Args)]
pub struct ImportArgs {
    /// The image to add the revision to (created when new).
    #[arg(long)]
    image: String,
    /// A note kept with the revision.
    #[arg(short, long, default_value = "")]
    message: String,
    /// The archive.
    file: PathBuf,
}

pub fn import(g: &Global, a: ImportArgs) -> anyhow::Result<()> {
    let mut repo = open(g)?;
    let started = std::time::Instant::now();
    let (rev, stats) = aurum::tarball::import(&mut repo, &a.file, &a.image, &a.message)?;
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
