//! Read-only commands: `lsimage`, `log`, `show`, `ls`, `cat`, `diff`.

use std::io::Write;

use aurum::catalog::Revision;
use aurum::format::manifest::{
    display_path, escape_bytes, parent, unescape_bytes, Entry, Kind, Manifest,
};
use aurum::trust::Checked;
use clap::Args;
use serde::Serialize;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use super::{human_bytes, human_time, open, print_json, print_json_seq, Global};

/// List images with their newest revision and tags (like si_lsimage).
#[derive(Args)]
pub struct LsimageArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn lsimage(g: &Global, a: LsimageArgs) -> anyhow::Result<()> {
    let repo = open(g)?;
    let images = repo.catalog.images()?;
    if a.json {
        return print_json(&images);
    }
    if images.is_empty() {
        println!(
            "no images yet; capture one with `aurum getimage --golden-client DIR --image NAME`"
        );
        return Ok(());
    }
    println!(
        "{:<20} {:>5} {:<10} {:<19} {:>10}  TAGS",
        "IMAGE", "REVS", "NEWEST", "CAPTURED", "SIZE"
    );
    for i in images {
        let (id, when, size) = match &i.newest {
            Some(r) => (
                format!("@{} {}", r.number, &r.id.short()[..4]),
                human_time(r.created),
                human_bytes(r.bytes),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        let tags: Vec<String> = i
            .tags
            .iter()
            .map(|t| format!("{}=@{}", t.tag, t.number))
            .collect();
        println!(
            "{:<20} {:>5} {:<10} {:<19} {:>10}  {}",
            i.name,
            i.revisions,
            id,
            when,
            size,
            tags.join(" ")
        );
    }
    Ok(())
}

/// Show the revisions of an image, newest first.
#[derive(Args)]
pub struct LogArgs {
    /// The image.
    image: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// A revision with its signatures checked, as `log --json` and `show --json` print it.
#[derive(Serialize)]
struct SignedRevision<'a> {
    #[serde(flatten)]
    revision: &'a Revision,
    signatures: Vec<Checked>,
}

/// Every revision of `revs` with its signatures, checked against aurum.toml's keys.
fn with_signers<'a>(
    g: &Global,
    repo: &aurum::repo::Repository,
    revs: &'a [Revision],
) -> anyhow::Result<Vec<SignedRevision<'a>>> {
    let keys = super::trust::server_keys(g)?;
    revs.iter()
        .map(|revision| {
            Ok(SignedRevision {
                revision,
                signatures: repo.signers(revision, &keys)?,
            })
        })
        .collect()
}

/// `signed by admin@master (SHA256:...) 2026-12-06 10:00:00 UTC, trusted`, one line per
/// signature; `unsigned` when there is none.
fn signer_lines(sigs: &[Checked]) -> Vec<String> {
    if sigs.is_empty() {
        return vec!["unsigned".into()];
    }
    sigs.iter()
        .map(|c| {
            let who = match &c.signer {
                Some(s) if !s.is_empty() => format!("{s} ({})", c.key),
                _ => c.key.clone(),
            };
            let why = c
                .problem
                .as_deref()
                .map_or_else(String::new, |p| format!(": {p}"));
            format!(
                "signed by {who} {} UTC, {}{why}",
                human_time(c.signed),
                c.standing
            )
        })
        .collect()
}

pub fn log(g: &Global, a: LogArgs) -> anyhow::Result<()> {
    let repo = open(g)?;
    repo.require_image(&a.image)?;
    let revs = repo.catalog.revisions(&a.image)?;
    let signed = with_signers(g, &repo, &revs)?;
    if a.json {
        return print_json(&signed);
    }
    for SignedRevision {
        revision: r,
        signatures,
    } in signed
    {
        let tags = if r.tags.is_empty() {
            String::new()
        } else {
            format!(" ({})", r.tags.join(", "))
        };
        println!("{} {}{}", r.name(), r.id.short(), tags);
        println!(
            "    {}  {} files, {}, {} new",
            human_time(r.created),
            r.files,
            human_bytes(r.bytes),
            human_bytes(r.new_bytes)
        );
        if !r.message.is_empty() {
            println!("    {}", r.message);
        }
        if let Some(of) = aurum::capture::chroot::edited_from(&r.source) {
            println!("    chroot edit of {of}");
        }
        // Unsigned revisions are the rule where nothing is signed: no line for them.
        if !signatures.is_empty() {
            for line in signer_lines(&signatures) {
                println!("    {line}");
            }
        }
    }
    Ok(())
}

/// Show one revision: id, parent, date, source, size and tags.
#[derive(Args)]
pub struct ShowArgs {
    /// The revision (IMAGE, IMAGE@N, IMAGE:TAG or 8+ hex digits).
    rev: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn show(g: &Global, a: ShowArgs) -> anyhow::Result<()> {
    let repo = open(g)?;
    let r = repo.resolve(&a.rev)?;
    let signed = with_signers(g, &repo, std::slice::from_ref(&r))?;
    if a.json {
        return print_json(&signed[0]);
    }
    print_revision(&r);
    for (i, line) in signer_lines(&signed[0].signatures).iter().enumerate() {
        println!("{}{line}", if i == 0 { "signature " } else { "          " });
    }
    Ok(())
}

fn print_revision(r: &Revision) {
    println!("revision  {}", r.name());
    println!("id        {}", r.id.hex());
    if let Some(p) = r.parent {
        println!("parent    {}", p.hex());
    }
    println!("captured  {} UTC", human_time(r.created));
    println!("source    {}", r.source);
    println!(
        "content   {} files, {} ({} newly stored)",
        r.files,
        human_bytes(r.bytes),
        human_bytes(r.new_bytes)
    );
    if !r.tags.is_empty() {
        println!("tags      {}", r.tags.join(", "));
    }
    if !r.message.is_empty() {
        println!("message   {}", r.message);
    }
}

/// List the entries of a revision, like `ls -l`.
#[derive(Args)]
pub struct LsArgs {
    /// The revision.
    rev: String,
    /// A directory (or file) inside the image; default the root.
    #[arg(default_value = "/")]
    path: OsString,
    /// List everything below PATH, not just its direct entries.
    #[arg(short, long)]
    recursive: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct LsRow {
    path: String,
    kind: &'static str,
    mode: String,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: i64,
    mtime_nsec: u32,
    target: Option<String>,
    xattrs: Vec<String>,
}

fn mode_string(e: &Entry) -> String {
    let m = e.mode;
    let mut s = String::new();
    s.push(e.kind.letter());
    for (shift, special, lower, upper) in [
        (6, 0o4000, 's', 'S'),
        (3, 0o2000, 's', 'S'),
        (0, 0o1000, 't', 'T'),
    ] {
        let bits = (m >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(match (bits & 1 != 0, m & special != 0) {
            (true, true) => lower,
            (false, true) => upper,
            (true, false) => 'x',
            (false, false) => '-',
        });
    }
    s
}

/// A path given on the command line, as the manifest spells it. Names that are not UTF-8
/// can be given as their bytes, or as `ls` prints them (`/bad\xff\xfename`).
fn inside_path<'m>(m: &'m Manifest, p: &OsStr) -> (Vec<u8>, Option<&'m Entry>) {
    let raw = p.as_bytes();
    let trim = |b: &[u8]| -> Vec<u8> {
        let start = b.iter().position(|&c| c != b'/').unwrap_or(b.len());
        let end = b.iter().rposition(|&c| c != b'/').map_or(start, |i| i + 1);
        b.get(start..end.max(start)).unwrap_or_default().to_vec()
    };
    let given = trim(raw);
    if let Some(e) = m.get(&given) {
        return (given, Some(e));
    }
    let unescaped = trim(&unescape_bytes(raw));
    match m.get(&unescaped) {
        Some(e) => (unescaped, Some(e)),
        None => (given, None),
    }
}

pub fn ls(g: &Global, a: LsArgs) -> anyhow::Result<()> {
    let repo = open(g)?;
    let r = repo.resolve(&a.rev)?;
    let m = repo.load_manifest(&r.id)?;
    let (base, start) = inside_path(&m, &a.path);
    let start = start.ok_or_else(|| {
        aurum::Error::NotFound(format!(
            "{} has no {}; `aurum ls {} /` lists its top directory",
            r.name(),
            display_path(&base),
            r.name()
        ))
    })?;
    let selected: Vec<&Entry> = if start.kind != Kind::Dir {
        vec![start]
    } else {
        m.entries
            .iter()
            .filter(|e| {
                if e.path == base {
                    return false;
                }
                let under = base.is_empty()
                    || (e.path.starts_with(&base) && e.path.get(base.len()) == Some(&b'/'));
                under && (a.recursive || parent(&e.path) == base.as_slice())
            })
            .collect()
    };
    let rows: Vec<LsRow> = selected
        .iter()
        .map(|e| LsRow {
            path: e.display(),
            kind: e.kind.name(),
            // A hardlink shows what it links to: a hardlinked fifo is a `p`, not a `-`.
            mode: mode_string(m.resolve(e)),
            uid: e.uid,
            gid: e.gid,
            size: m.resolve(e).size(),
            mtime: e.mtime,
            mtime_nsec: e.mtime_nsec,
            target: match &e.kind {
                Kind::Symlink { target } => Some(escape_bytes(target)),
                Kind::Hardlink { target } => Some(display_path(target)),
                Kind::Char { rdev } | Kind::Block { rdev } => {
                    Some(format!("{},{}", libc::major(*rdev), libc::minor(*rdev)))
                }
                _ => None,
            },
            xattrs: e.xattrs.iter().map(|(k, _)| escape_bytes(k)).collect(),
        })
        .collect();
    if a.json {
        return print_json(&rows);
    }
    let mut out = std::io::stdout().lock();
    for row in rows {
        let suffix = match (&row.target, row.kind) {
            (Some(t), "symlink") => format!(" -> {t}"),
            (Some(t), "hardlink") => format!(" => {t}"),
            (Some(t), _) => format!(" [{t}]"),
            _ => String::new(),
        };
        let plus = if row.xattrs.is_empty() { ' ' } else { '+' };
        writeln!(
            out,
            "{}{} {:>5} {:>5} {:>10} {} {}{}",
            row.mode,
            plus,
            row.uid,
            row.gid,
            row.size,
            human_time(row.mtime),
            row.path,
            suffix
        )?;
    }
    Ok(())
}

/// Write a file of a revision to standard output.
#[derive(Args)]
pub struct CatArgs {
    /// The revision.
    rev: String,
    /// The file's path inside the image (a name that is not UTF-8 may be given as `ls`
    /// prints it, with `\xNN` escapes).
    path: OsString,
}

pub fn cat(g: &Global, a: CatArgs) -> anyhow::Result<()> {
    let repo = open(g)?;
    let r = repo.resolve(&a.rev)?;
    let m = repo.load_manifest(&r.id)?;
    let (p, e) = inside_path(&m, &a.path);
    let e = e.ok_or_else(|| {
        aurum::Error::NotFound(format!(
            "{} has no {}; `aurum ls {} DIR` lists what a directory holds",
            r.name(),
            display_path(&p),
            r.name()
        ))
    })?;
    let e = m.resolve(e);
    let Kind::File { .. } = &e.kind else {
        return Err(aurum::Error::Invalid(format!(
            "{} is a {} in {}, not a file: `cat` writes a regular file; `aurum ls {} {}` shows it",
            display_path(&p),
            e.kind.name(),
            r.name(),
            r.name(),
            display_path(&p)
        ))
        .into());
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    std::io::copy(&mut repo.open_file(e), &mut out)?;
    out.flush()?;
    Ok(())
}

/// Compare two revisions: what was added, removed or changed, and how.
///
/// For a changed path it says which of type, content, mode, owner, mtime, xattrs, target
/// (symlink or hardlink) and device numbers differ.
#[derive(Args)]
pub struct DiffArgs {
    /// The older revision.
    from: String,
    /// The newer revision.
    to: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn diff(g: &Global, a: DiffArgs) -> anyhow::Result<()> {
    let repo = open(g)?;
    let from = repo.resolve(&a.from)?;
    let to = repo.resolve(&a.to)?;
    // Both manifests stream: a diff of two million-entry revisions holds two entries.
    let changes = aurum::repo::diff::Merge::new(
        repo.manifest_entries(&from.id)?,
        repo.manifest_entries(&to.id)?,
    );
    if a.json {
        return print_json_seq(changes);
    }
    let counts = print_changes(changes)?;
    super::say!("{} -> {}: {counts}", from.name(), to.name());
    Ok(())
}

/// Prints changes one a line as they come (`A /path`, `D /path`, `M /path  (content,
/// mode)`); returns their count (`2 added, 0 removed, 1 changed`).
pub(super) fn print_changes<C: std::borrow::Borrow<aurum::repo::diff::Change>>(
    changes: impl IntoIterator<Item = aurum::Result<C>>,
) -> anyhow::Result<String> {
    let mut out = std::io::stdout().lock();
    let (mut added, mut removed, mut changed) = (0u64, 0u64, 0u64);
    for c in changes {
        let c = c?;
        let c = c.borrow();
        let letter = match c.status {
            "added" => {
                added += 1;
                'A'
            }
            "removed" => {
                removed += 1;
                'D'
            }
            _ => {
                changed += 1;
                'M'
            }
        };
        if c.what.is_empty() {
            writeln!(out, "{letter} {}", c.path)?;
        } else {
            writeln!(out, "{letter} {}  ({})", c.path, c.what.join(", "))?;
        }
    }
    Ok(format!(
        "{added} added, {removed} removed, {changed} changed"
    ))
}
