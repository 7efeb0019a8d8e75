//! `getimage` subcommand, and `agent`, its far end on a remote golden client.

use std::path::PathBuf;

use aurum::capture::remote::{RemoteSource, SshUrl};
use aurum::capture::{self, CaptureOptions, LocalSource, Source};
use aurum::excludes::{read_exclude_file, Excludes, ALWAYS_EXCLUDED, DEFAULT_CAPTURE_EXCLUDES};
use clap::Args;

use super::{human_bytes, open, Global};

/// Capture a golden client into a new revision of an image.
///
/// SOURCE is a directory on this machine (a mounted root or a chroot) or
/// ssh://[user@]host[:port][/path], reached with the system ssh running `aurum agent` on the
/// golden client; only content the repository lacks crosses the network. The capture follows
/// the golden client's disk filesystems mounted below the root (like rsync -x per mount) and
/// skips pseudo and network filesystems (proc, sysfs, tmpfs, NFS).
///
/// A re-capture of an unchanged tree costs about a stat per file, and an identical tree
/// records no new revision. Prints the revision (`compute@3 1f2e3d4c`) and a summary.
///
/// An aurum repository inside the tree (a cluster master's) is recorded by reference, not as
/// files: see --no-embedded-repos and the book's chapter "Building the next cluster".
#[derive(Args)]
pub struct GetimageArgs {
    /// The golden client: a directory, or ssh://[user@]host[:port][/path].
    #[arg(
        long,
        value_name = "SOURCE",
        required_unless_present = "show_default_excludes"
    )]
    golden_client: Option<String>,
    /// The image to add the revision to (created when new).
    #[arg(
        long,
        value_name = "NAME",
        required_unless_present = "show_default_excludes"
    )]
    image: Option<String>,
    /// A note kept with the revision (`aurum log` shows it).
    #[arg(short, long, default_value = "")]
    message: String,
    /// Leave out paths matching PATTERN, an rsync exclude rule: `/var/log/*` is anchored at
    /// the image root, a name without `/` matches anywhere, a trailing `/` matches directories
    /// only; `+ PATTERN` keeps what a later rule (or a default) would leave out. The first
    /// rule that matches decides. Repeatable.
    #[arg(long, value_name = "PATTERN")]
    exclude: Vec<String>,
    /// Read more exclude rules from FILE, as `rsync --exclude-from` does: one a line, `- ` or
    /// `+ ` before a pattern, `#` or `;` starting a comment (a SystemImager getimage exclude
    /// file works as it is). Its rules come before --exclude's, and both before the defaults.
    #[arg(long, value_name = "FILE")]
    exclude_file: Vec<PathBuf>,
    /// Do not apply the default excludes (SystemImager's getimage list plus /run, /tmp, /dev
    /// contents, machine-id, ssh host keys).
    #[arg(long)]
    no_default_excludes: bool,
    /// Print the default exclude patterns and exit.
    #[arg(long)]
    show_default_excludes: bool,
    /// The ssh command and its options for a remote golden client, like rsync's -e, split
    /// as a shell would (e.g. "ssh -i /root/.ssh/cluster -o 'ProxyJump bastion'").
    #[arg(long, value_name = "COMMAND", default_value = "ssh")]
    ssh: String,
    /// zstd level (1-19) for what this capture stores. The default, 3, keeps a first capture
    /// fast; a revision about to be pushed to many nodes can pay a slower capture for smaller
    /// transfers (19 stores a Debian python3 install in about a fifth less).
    #[arg(long, value_name = "N", default_value_t = aurum::store::ZSTD_LEVEL,
          value_parser = clap::value_parser!(i32).range(1..=19))]
    level: i32,
    /// Do not precompute the binary deltas from the previous revision (nodes updating from it
    /// then get them made on demand by `aurum serve`).
    #[arg(long)]
    no_deltas: bool,
    /// Start no delta after this many seconds of precomputing them (default: four fifths of
    /// the capture's own time, so that with the deltas under way when it runs out they take
    /// about as long as the capture). Deltas not made by then are made by `aurum serve`
    /// when the first node asks for them, and cached.
    #[arg(long, value_name = "SECONDS")]
    delta_budget: Option<f64>,
    /// The command that runs aurum on a remote golden client.
    #[arg(long, value_name = "COMMAND", default_value = "aurum")]
    agent_command: String,
    /// Capture the aurum repositories found in the tree (a cluster master's) as plain files.
    /// By default each is recorded by reference: its catalog is kept, its packs and manifests
    /// are held once by this repository (nothing more when it was pulled from here), and
    /// checkout, install and updateclient rebuild a working repository from them.
    #[arg(long)]
    no_embedded_repos: bool,
    #[command(flatten)]
    sign: super::trust::SignKeyArgs,
    /// Print JSON instead of the summary lines: the revision ({"revision", "image", "number",
    /// "id"}), "unchanged", the counts, "warnings", "deltas" and "embedded" (each repository
    /// recorded by reference: "path", "images", "revisions", "packs", "catalog_bytes",
    /// "packs_added", "manifests_added", "bytes_added").
    #[arg(long)]
    json: bool,
}

/// The golden client `golden` names: a local directory, or ssh://... reached through `ssh`.
fn source_of(
    g: &Global,
    golden: &str,
    ssh: &str,
    agent_command: &str,
    mut patterns: Vec<String>,
    embedded_repos: bool,
) -> anyhow::Result<Box<dyn Source>> {
    Ok(match SshUrl::parse(golden) {
        Some(url) => {
            let ssh = shell_words::split(ssh).map_err(|e| {
                aurum::Error::Invalid(format!("--ssh `{ssh}` is not a valid command line: {e}"))
            })?;
            Box::new(RemoteSource::connect(url?, &ssh, agent_command, patterns)?)
        }
        None => {
            let root = PathBuf::from(golden);
            if !root.is_dir() {
                return Err(aurum::Error::Invalid(format!(
                    "golden client {golden} is not a directory; give a mounted root, a chroot, or ssh://host/"
                ))
                .into());
            }
            // A repository inside the tree it captures would capture itself as files (recorded
            // by reference, it is the embedded repository whose objects are all here).
            let canonical = (std::fs::canonicalize(&g.repo), std::fs::canonicalize(&root));
            if let (Ok(r), Ok(s), false) = (canonical.0, canonical.1, embedded_repos) {
                if let Ok(rel) = r.strip_prefix(&s) {
                    patterns.insert(0, format!("/{}", rel.display()));
                }
            }
            Box::new(LocalSource::new(&root, Excludes::new(&patterns)?))
        }
    })
}

pub fn exec(g: &Global, a: GetimageArgs) -> anyhow::Result<()> {
    let delta_budget = a
        .delta_budget
        .map(|s| {
            std::time::Duration::try_from_secs_f64(s).map_err(|_| {
                aurum::Error::Invalid(format!(
                    "--delta-budget {s}: give a number of seconds, 0 or more"
                ))
            })
        })
        .transpose()?;
    if a.show_default_excludes {
        for p in DEFAULT_CAPTURE_EXCLUDES.iter().chain(ALWAYS_EXCLUDED) {
            println!("{p}");
        }
        return Ok(());
    }
    let golden = a.golden_client.expect("required by clap");
    let image = a.image.expect("required by clap");
    // The first rule that matches decides (as in rsync): the administrator's come before the
    // defaults, so that a `+` rule can keep what a default would leave out; nothing comes
    // before what is never captured.
    let mut patterns: Vec<String> = ALWAYS_EXCLUDED.iter().map(|s| s.to_string()).collect();
    for f in &a.exclude_file {
        patterns.extend(read_exclude_file(f)?);
    }
    patterns.extend(a.exclude);
    if !a.no_default_excludes {
        patterns.extend(DEFAULT_CAPTURE_EXCLUDES.iter().map(|s| s.to_string()));
    }

    aurum::store::set_level(a.level);
    let key = a.sign.load()?;
    let mut repo = open(g)?;
    let mut source = source_of(
        g,
        &golden,
        &a.ssh,
        &a.agent_command,
        patterns,
        !a.no_embedded_repos,
    )?;
    let progress = g.progress();
    let opts = CaptureOptions {
        image,
        message: a.message,
        edit: None,
        embedded_repos: !a.no_embedded_repos,
    };
    let r = capture::getimage(&mut repo, source.as_mut(), &opts, progress.as_ref())?;
    drop(source);
    let rev = &r.revision;
    super::trust::sign_new(&repo, rev, key.as_ref())?;
    // Deltas first, so that --json can say what they came to.
    let deltas = match (rev.parent, r.unchanged, a.no_deltas) {
        (Some(parent), false, false) => {
            let t = std::time::Instant::now();
            // The deltas under way when the budget runs out are finished (a large pair takes
            // tens of milliseconds): at the full capture time they made the capture 2.08x one
            // without deltas in the bench's fully changed tree.
            let budget = delta_budget.unwrap_or(r.elapsed.mul_f64(0.8));
            let p =
                aurum::repo::delta::precompute(&repo, &parent, &rev.id, budget, progress.as_ref())?;
            Some((parent, p, t.elapsed()))
        }
        _ => None,
    };
    if a.json {
        let mut v = super::revision_json(rev);
        v["unchanged"] = r.unchanged.into();
        v["entries"] = r.entries.into();
        v["files"] = r.files.into();
        v["bytes"] = r.bytes.into();
        v["bytes_hashed"] = r.bytes_hashed.into();
        v["from_cache"] = r.from_cache.into();
        v["new_bytes"] = r.new_bytes.into();
        v["seconds"] = r.elapsed.as_secs_f64().into();
        v["warnings"] = serde_json::json!(r.warnings);
        v["adopted_packs"] = r.adopted_packs.into();
        v["embedded"] = serde_json::json!(r.embedded);
        v["deltas"] = deltas
            .as_ref()
            .map_or(serde_json::Value::Null, |(from, p, _)| {
                serde_json::json!({
                    "from": from.hex(), "deltas": p.deltas, "delta_bytes": p.delta_bytes,
                    "target_bytes": p.target_bytes, "left": p.left,
                })
            });
        return super::print_json(&v);
    }
    for w in &r.warnings {
        super::warning(w);
    }
    println!(
        "{} {}{}",
        rev.name(),
        rev.id.short(),
        if r.unchanged { " (unchanged)" } else { "" }
    );
    let warned = match r.warnings.len() {
        0 => String::new(),
        1 => ", 1 warning".to_string(),
        n => format!(", {n} warnings"),
    };
    println!(
        "{} entries, {} files, {} scanned, {} hashed ({} files from the stat cache), {} new stored, {:.2} s{warned}",
        r.entries,
        r.files,
        human_bytes(r.bytes),
        human_bytes(r.bytes_hashed),
        r.from_cache,
        human_bytes(r.new_bytes),
        r.elapsed.as_secs_f64()
    );
    if let Some((parent, p, took)) = deltas.filter(|(_, p, _)| p.pairs > 0) {
        let left = if p.left > 0 {
            format!(
                "; {} left for `aurum serve` to make when first asked (--delta-budget)",
                p.left
            )
        } else {
            String::new()
        };
        println!(
            "{} deltas from {} precomputed (changed files and the manifest): {} for {}, {:.2} s{left}",
            p.deltas,
            parent.short(),
            human_bytes(p.delta_bytes),
            human_bytes(p.target_bytes),
            took.as_secs_f64()
        );
    }
    for e in &r.embedded {
        println!(
            "embedded repository {}: {} images, {} revisions, {} packs ({} taken in, {}), catalog {}",
            e.path,
            e.images,
            e.revisions,
            e.packs,
            e.taken_in.packs_added,
            human_bytes(e.taken_in.bytes_added),
            human_bytes(e.catalog_bytes)
        );
    }
    if r.adopted_packs > 0 {
        println!(
            "(recovered {} packs left by an interrupted capture)",
            r.adopted_packs
        );
    }
    Ok(())
}

/// Serve a remote capture on stdin/stdout (run by getimage through ssh; not for direct use).
#[derive(Args)]
pub struct AgentArgs {}

pub fn agent(_: AgentArgs) -> anyhow::Result<()> {
    aurum::capture::agent::serve(std::io::stdin().lock(), std::io::stdout())?;
    Ok(())
}
