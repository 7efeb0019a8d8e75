//! `pull`, `push` and `remote` subcommands: replicating repositories between masters.

use aurum::replicate::{self, PullOptions, PullReport};
use clap::{Args, Subcommand};

use super::{human_bytes, human_time, open, print_json, say, Global, HttpArgs};

/// Copy images, revisions, tags, templates and precomputed deltas from another repository.
///
/// SOURCE is a remote's name (`aurum remote add`), or with --mirror a repository: an http://
/// URL (`aurum serve`, or any web server publishing a repository's public/ directory), a
/// directory (a repository, or a copy of its public/), or ssh://[user@]host[:port]/path
/// (read with cat and tail over ssh; aurum is not needed there). Revision numbers and ids
/// stay as they are in the source. Images from a remote land as REMOTE/IMAGE (read-only
/// here: `aurum cpimage` one to work on it); with --mirror they keep their names.
///
/// Every object is checked against its id before it is kept, and nothing is recorded before
/// everything is: a pull that is killed or fails leaves the repository as it was, and running
/// it again finishes it, fetching only what is missing. A pull is refused when an image here
/// has a revision number the source gives another id (diverged), or when a tag would move
/// to an older revision (unless --force). A pull from a remote records its outcome, which
/// `aurum remote list` shows.
///
/// Revision signatures (sigs/) come along, those of revisions already here too (signed again
/// at the source). When aurum.toml lists `trusted-keys`, a new revision no trusted key signed
/// is refused, and nothing is pulled.
#[derive(Args)]
pub struct PullArgs {
    /// A remote's name, or (with --mirror) http://HOST:PORT, a directory, ssh://host/path.
    source: String,
    /// The images to pull (their names in the source); none: every image.
    images: Vec<String>,
    /// Keep the source's image names instead of REMOTE/IMAGE.
    #[arg(long)]
    mirror: bool,
    /// Let a tag move to an older revision.
    #[arg(long)]
    force: bool,
    /// The ssh command and its options for an ssh:// source, split as a shell would (e.g.
    /// "ssh -i /root/.ssh/cluster").
    #[arg(long, value_name = "COMMAND", default_value = "ssh")]
    ssh: String,
    #[command(flatten)]
    http: HttpArgs,
    /// Print a JSON summary.
    #[arg(long)]
    json: bool,
}

/// Copy images to another repository: a directory, or ssh://[user@]host[:port]/path.
///
/// To a directory, this is `aurum pull --mirror` run there with this repository as the
/// source. Over ssh, the revisions, manifests and packs DEST lacks are copied into a staging
/// directory under DEST/tmp/, and `aurum pull --mirror` is run on DEST over ssh (aurum must be
/// installed there). Images keep their names. Refused when a tag at DEST would move back, or
/// an image there has diverged, unless --force (for tags).
#[derive(Args)]
pub struct PushArgs {
    /// The repository to push to: a directory, or ssh://[user@]host[:port]/path.
    dest: String,
    /// The images to push; none: every image.
    images: Vec<String>,
    /// Let a tag at DEST move to an older revision.
    #[arg(long)]
    force: bool,
    /// The ssh command and its options, split as a shell would.
    #[arg(long, value_name = "COMMAND", default_value = "ssh")]
    ssh: String,
    /// The aurum command on DEST, for ssh.
    #[arg(long, value_name = "COMMAND", default_value = "aurum")]
    aurum_command: String,
    /// Print a JSON summary.
    #[arg(long)]
    json: bool,
}

/// Name the repositories this one pulls from, and see how their last pulls went.
#[derive(Args)]
pub struct RemoteArgs {
    #[command(subcommand)]
    command: RemoteCommand,
}

#[derive(Subcommand)]
enum RemoteCommand {
    /// Add a remote: `aurum pull NAME` then copies its images as NAME/IMAGE (or, with
    /// --mirror, under their own names).
    Add {
        /// Its name here: letters, digits, `.`, `_`, `-`; not an image's name.
        name: String,
        /// http://HOST:PORT, ssh://[user@]host[:port]/path, or a directory.
        url: String,
        /// Pull its images under their own names.
        #[arg(long)]
        mirror: bool,
        /// Print JSON: {"remote", "url", "mirror"}.
        #[arg(long)]
        json: bool,
    },
    /// List remotes: URL, last successful pull, last error and its time, and the lag
    /// (revisions the remote had that this repository lacked at the last contact).
    List {
        /// Print JSON: [{"name", "url", "mirror", "created", "last_success", "since_success"
        /// (seconds), "last_error", "last_error_time", "last_contact", "lag"}].
        #[arg(long)]
        json: bool,
    },
    /// Forget a remote. Its images stay (as read-only copies) unless --prune.
    Remove {
        name: String,
        /// Also remove the images pulled from it (NAME/IMAGE), tags and all.
        #[arg(long)]
        prune: bool,
        /// Say what would be removed; change nothing.
        #[arg(long, short = 'n')]
        dry_run: bool,
        /// Print JSON: {"remote", "images": [...], "dry_run"}.
        #[arg(long)]
        json: bool,
    },
}

fn ssh_words(ssh: &str) -> anyhow::Result<Vec<String>> {
    shell_words::split(ssh)
        .map_err(|e| anyhow::anyhow!("--ssh `{ssh}` is not a valid command line: {e}"))
}

fn print_report(r: &PullReport, json: bool, verb: &str) -> anyhow::Result<()> {
    if json {
        return print_json(r);
    }
    for im in &r.images {
        if im.revisions > 0 || im.tags > 0 {
            println!(
                "{} <- {}: {} revisions, {} tags",
                im.image, im.from, im.revisions, im.tags
            );
        }
    }
    for s in &r.skipped {
        say!("skipped {s}: an image the source pulled from a remote this repository does not have");
    }
    println!(
        "{verb} {} revisions of {} images, {} tags; {} packs ({} objects), {} manifests, {} deltas, {} templates, {} signatures; {} moved",
        r.revisions,
        r.images.len(),
        r.tags,
        r.packs,
        r.objects,
        r.manifests,
        r.deltas,
        r.templates,
        r.signatures,
        human_bytes(r.bytes)
    );
    Ok(())
}

pub fn pull(g: &Global, a: PullArgs) -> anyhow::Result<()> {
    let mut repo = open(g)?;
    let opts = PullOptions {
        source: a.source,
        images: a.images,
        mirror: a.mirror,
        force: a.force,
        ssh: ssh_words(&a.ssh)?,
        http: a.http.options(None, None)?,
        keys: super::trust::server_keys(g)?,
    };
    let progress = g.progress();
    let report = replicate::pull(&mut repo, &opts, progress.as_ref())?;
    print_report(&report, a.json, "pulled")
}

pub fn push(g: &Global, a: PushArgs) -> anyhow::Result<()> {
    let opts = replicate::push::PushOptions {
        dest: a.dest,
        images: a.images,
        force: a.force,
        ssh: ssh_words(&a.ssh)?,
        aurum: ssh_words(&a.aurum_command)?,
    };
    let progress = g.progress();
    let report = replicate::push::push(&g.repo, &opts, progress.as_ref())?;
    print_report(&report, a.json, "pushed")
}

pub fn remote(g: &Global, a: RemoteArgs) -> anyhow::Result<()> {
    let mut repo = open(g)?;
    match a.command {
        RemoteCommand::Add {
            name,
            url,
            mirror,
            json,
        } => {
            let url = replicate::add_remote(&mut repo, &name, &url, mirror)?;
            if json {
                return print_json(
                    &serde_json::json!({ "remote": name, "url": url, "mirror": mirror }),
                );
            }
            println!("added remote {name} ({url}); `aurum pull {name}` copies its images");
        }
        RemoteCommand::Remove {
            name,
            prune,
            dry_run,
            json,
        } => {
            let r = replicate::remove_remote(&mut repo, &name, prune, dry_run)?;
            if json {
                return print_json(&r);
            }
            let would = if dry_run { "would remove" } else { "removed" };
            println!("{would} remote {name}");
            for image in &r.images {
                println!("{would} image {image}");
            }
            if dry_run {
                println!("nothing was changed");
            }
        }
        RemoteCommand::List { json } => {
            let remotes = repo.catalog.remotes()?;
            let now = aurum::catalog::now();
            if json {
                // With the time since the last successful pull, which a monitoring script
                // compares with its limit.
                let mut v = serde_json::to_value(&remotes)?;
                for (r, row) in remotes.iter().zip(v.as_array_mut().into_iter().flatten()) {
                    row["since_success"] = r.last_success.map(|t| now - t).into();
                }
                return print_json(&v);
            }
            for r in remotes {
                let ok = match r.last_success {
                    Some(t) => format!("{} ({} s ago)", human_time(t), now - t),
                    None => "never".into(),
                };
                println!(
                    "{}\t{}{}\tlast pull: {ok}\tlag: {}",
                    r.name,
                    r.url,
                    if r.mirror { " (mirror)" } else { "" },
                    r.lag.map_or("unknown".into(), |n| format!("{n} revisions"))
                );
                if let (Some(e), Some(t)) = (&r.last_error, r.last_error_time) {
                    println!("\tlast error ({}): {e}", human_time(t));
                }
            }
        }
    }
    Ok(())
}
