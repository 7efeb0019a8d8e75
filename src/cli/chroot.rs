//! `chroot` subcommand: edit a revision in a chroot and record the result as a new revision.

use std::ffi::OsString;
use std::path::PathBuf;

use aurum::capture::chroot::{self, Ending, WorkDir};
use clap::Args;

use super::inspect::print_changes;
use super::{open, Global};

/// Edit an image in a chroot: run a command, or a shell, in a copy of a revision and record
/// the result as a new revision.
///
/// The revision is checked out into a work directory (under the repository's tmp/, or
/// --workdir); the repository itself is never written through it. proc, sysfs (read-only), a
/// small /dev (null, zero, full, random, urandom, tty, ptmx, pts), a tmpfs on /run and the
/// host's /etc/resolv.conf are mounted into it, and COMMAND runs chrooted there with a clean
/// environment (PATH, HOME=/root, LANG=C.UTF-8, TERM and the proxy variables). Without a
/// COMMAND, an interactive login shell of the image starts ($SHELL when the image has it,
/// else /bin/sh). Everything is unmounted afterwards, also on errors and when aurum gets
/// SIGINT, SIGTERM or SIGHUP: those are passed to the command, which is killed if it has not
/// ended 10 seconds later, and nothing is committed.
///
/// When the command succeeds, the tree becomes a new revision of the image (or of --image),
/// whose parent is the edited revision and whose log entry reads "chroot edit of
/// compute@3"; the changes against the parent are printed. These keep the parent's version
/// whatever the command did to them: /proc, /sys, /dev, /run, /etc/resolv.conf, /tmp and
/// /var/tmp, /etc/machine-id, /var/lib/dbus/machine-id, /etc/ssh/ssh_host_*.
/// Everything else is captured, including what getimage leaves out of a running golden
/// client (/mnt, /media, /etc/hostname, ...).
///
/// For example, to patch the revision the nodes fall back to:
/// aurum chroot compute:last-known-good -m "openssl fix" -- apt-get install -y openssl
#[derive(Args)]
pub struct ChrootArgs {
    /// The revision to edit (IMAGE, IMAGE@N, IMAGE:TAG or 8+ hex digits).
    #[arg(required_unless_present = "resume", conflicts_with = "resume")]
    rev: Option<String>,
    /// The image the new revision goes to (created when new); default the edited revision's.
    #[arg(long, value_name = "NAME", conflicts_with = "resume")]
    image: Option<String>,
    /// A note kept with the new revision (`aurum log` shows it). With --resume it replaces
    /// the one given when the session began.
    #[arg(short, long)]
    message: Option<String>,
    /// Keep the work directory afterwards (it is printed), to look at it or to commit it
    /// later with --resume; without --keep it is removed.
    #[arg(long)]
    keep: bool,
    /// Only look: commit nothing.
    #[arg(long)]
    no_commit: bool,
    /// Commit even when the command fails by exiting non-zero. A command killed by a signal,
    /// and an interrupted session (aurum got SIGINT, SIGTERM or SIGHUP, as from a Ctrl-C,
    /// whatever the command then did), never commit.
    #[arg(long, conflicts_with = "no_commit")]
    commit_on_failure: bool,
    /// Make the work directory inside DIR instead of the repository's tmp/. It needs room for
    /// the whole image, and a filesystem that keeps owners, devices and xattrs.
    #[arg(long, value_name = "DIR", conflicts_with = "resume")]
    workdir: Option<PathBuf>,
    /// Commit a work directory kept with --keep (after running COMMAND in it, when one is
    /// given). It becomes a revision whose parent is the one the directory was made from, or
    /// the one it was last committed as.
    #[arg(long, value_name = "DIR")]
    resume: Option<PathBuf>,
    #[command(flatten)]
    sign: super::trust::SignKeyArgs,
    /// Print JSON at the end: the new revision ({"revision", "image", "number", "id"}),
    /// "parent", "unchanged" and "changes"; or {"committed": false, "reason"} when nothing was.
    #[arg(long)]
    json: bool,
    /// The command to run and its arguments, after `--`.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

pub fn exec(g: &Global, a: ChrootArgs) -> anyhow::Result<()> {
    let key = a.sign.load()?;
    let progress = g.progress();
    let mut work = match &a.resume {
        Some(dir) => {
            let mut work = WorkDir::open(dir)?;
            if let Some(m) = &a.message {
                work.meta.message = m.clone();
            }
            work
        }
        None => {
            // The repository is held only while it is read or written, not while the command
            // (perhaps an interactive shell) runs: gc must not wait for a lunch break.
            let repo = open(g)?;
            let parent = repo.resolve(a.rev.as_deref().expect("required by clap"))?;
            let image = a.image.clone().unwrap_or_else(|| parent.image.clone());
            let under = a
                .workdir
                .clone()
                .unwrap_or_else(|| aurum::store::tmp_dir(&repo.root));
            let message = a.message.clone().unwrap_or_default();
            let (work, r) =
                chroot::prepare(&repo, &parent, &image, &message, &under, progress.as_ref())?;
            for w in &r.warnings {
                super::warning(w);
            }
            super::say!(
                "aurum: {} checked out into {} ({} entries)",
                parent.name(),
                work.root().display(),
                r.entries
            );
            work
        }
    };

    let outcome = if a.resume.is_none() || !a.command.is_empty() {
        match chroot::run(&work.root(), &a.command) {
            Ok(o) => Some(o),
            Err(e) => return finish(work, a.keep, Err(e.into())),
        }
    } else {
        None
    };
    let ending = outcome.as_ref().map(|o| o.ending());
    match (&outcome, ending) {
        (Some(o), Some(Ending::Interrupted(sig))) => eprintln!(
            "aurum: interrupted by {sig}; the command ended ({}) and everything is unmounted",
            o.describe()
        ),
        (Some(o), Some(Ending::Failed | Ending::Killed)) => {
            eprintln!("aurum: the command failed ({})", o.describe())
        }
        _ => {}
    }
    let commit = !a.no_commit
        && outcome
            .as_ref()
            .is_none_or(|o| o.commits(a.commit_on_failure));
    if !commit {
        let why = match ending {
            _ if a.no_commit => "--no-commit",
            Some(Ending::Interrupted(_)) => "interrupted",
            Some(Ending::Killed) => "the command was killed by a signal, which never commits",
            _ => "the command failed; --commit-on-failure commits anyway",
        };
        if a.json {
            super::print_json(&serde_json::json!({"committed": false, "reason": why}))?;
        } else {
            eprintln!("aurum: nothing committed ({why})");
        }
        let result = match outcome.filter(|o| !o.success()) {
            Some(o) => Err(anyhow::anyhow!(
                "the command in the chroot: {}",
                o.describe()
            )),
            None => Ok(()),
        };
        return finish(work, a.keep, result);
    }

    let mut repo = open(g)?;
    let r = match chroot::commit(&mut repo, &mut work, progress.as_ref()) {
        Ok(r) => r,
        Err(e) => return finish(work, true, Err(e.into())),
    };
    if let Err(e) = super::trust::sign_new(&repo, &r.capture.revision, key.as_ref()) {
        return finish(work, true, Err(e));
    }
    if !r.capture.unchanged {
        // The deltas a node running the parent will ask for, as getimage makes them.
        if let Err(e) = aurum::repo::delta::precompute(
            &repo,
            &r.parent.id,
            &r.capture.revision.id,
            r.capture.elapsed,
            progress.as_ref(),
        ) {
            super::warning(format!("deltas from the parent not precomputed: {e:#}"));
        }
    }
    drop(repo);
    if a.json {
        let mut v = super::revision_json(&r.capture.revision);
        v["committed"] = (!r.capture.unchanged).into();
        v["unchanged"] = r.capture.unchanged.into();
        v["parent"] = super::revision_json(&r.parent);
        v["changes"] = serde_json::to_value(&r.changes)?;
        v["warnings"] = serde_json::json!(r.capture.warnings);
        super::print_json(&v)?;
        return finish(work, a.keep, Ok(()));
    }
    for w in &r.capture.warnings {
        super::warning(w);
    }
    let rev = &r.capture.revision;
    if r.capture.unchanged {
        println!(
            "{} {} (unchanged: the command changed nothing; nothing committed)",
            rev.name(),
            rev.id.short()
        );
    } else {
        println!(
            "{} {} (chroot edit of {})",
            rev.name(),
            rev.id.short(),
            r.parent.name()
        );
        let counts = print_changes(r.changes.iter().map(Ok))?;
        println!("{} -> {}: {counts}", r.parent.name(), rev.name());
    }
    finish(work, a.keep, Ok(()))
}

/// Keeps (saying where and how to go on) or removes the work directory, then returns
/// `result`; a failed removal is the error only when there is no other.
fn finish(work: WorkDir, keep: bool, result: anyhow::Result<()>) -> anyhow::Result<()> {
    if keep {
        eprintln!(
            "aurum: work directory kept: {}\naurum: commit it with `aurum chroot --resume {}`, or delete it with `rm -rf` once nothing is mounted below it",
            work.dir.display(),
            work.dir.display()
        );
        return result;
    }
    let dir = work.dir.clone();
    let removed = work.remove().map_err(|e| {
        anyhow::Error::from(e).context(format!("removing the work directory {}", dir.display()))
    });
    match (result, removed) {
        (Err(e), Err(r)) => {
            eprintln!("aurum: error: {r:#}");
            Err(e)
        }
        (result, removed) => result.and(removed),
    }
}
