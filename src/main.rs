//! The `aurum` binary: parses the command line and dispatches to one command.
//!
//! Everything a command does lives in the library; `cli/` only turns options into a library
//! call and its result into output. Errors print with their whole chain and exit with the code
//! [`aurum::Error::exit_code`] gives (2 for usage errors, as clap does).

mod cli;

use clap::{CommandFactory, FromArgMatches};

/// The soft limit of open files aurum raises itself to (see `main`).
const OPEN_FILES: libc::rlim_t = 16384;

fn main() {
    // Like every Unix tool, end quietly when the reader of our output goes away
    // (`aurum ls compute -r | head`) instead of panicking on a broken pipe.
    // SAFETY: setting a signal disposition before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    // Memory stays bounded: glibc's per-thread arenas otherwise keep the freed buffers of every
    // worker (measured: 139 MiB instead of 85 MiB peak for a capture precomputing deltas), and
    // a fixed trim threshold hands large freed blocks back at once. One arena costs nothing
    // measurable here: the threads allocate few, large buffers.
    // SAFETY: mallopt only tunes the allocator; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 << 10);
    }
    // Workers on every core keep directory descriptors of their own (16 each): a node with
    // many cores would reach the usual soft limit of 1,024 open files, and an update must
    // not take a directory it could not open for one that is not there. The soft limit is
    // ours to raise (aurum calls no select(2)), within the hard one and not without bound:
    // the programs aurum runs inherit it, and some close every descriptor up to it.
    let mut files = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct it is given; setrlimit only reads it.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut files) == 0 {
            let wanted = files.rlim_max.min(OPEN_FILES);
            if files.rlim_cur < wanted {
                files.rlim_cur = wanted;
                libc::setrlimit(libc::RLIMIT_NOFILE, &files);
            }
        }
    }
    let matches = cli::Cli::command().get_matches();
    let args = cli::Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let level = match args.global.verbose {
        _ if args.global.quiet => "error",
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format(|out, record| {
            use std::io::Write;
            match record.level() {
                _ if record.target() == aurum::progress::NOTICE => {
                    writeln!(out, "aurum: {}", record.args())
                }
                log::Level::Error => writeln!(out, "aurum: error: {}", record.args()),
                log::Level::Warn => writeln!(out, "aurum: warning: {}", record.args()),
                level => writeln!(
                    out,
                    "aurum: {} {}: {}",
                    level.as_str().to_lowercase(),
                    record.target(),
                    record.args()
                ),
            }
        })
        .init();
    if let Err(err) = cli::run(args) {
        eprintln!("aurum: error: {}{}", chain(&err), io_hint(&err));
        // The first aurum error in the chain decides, also one carried inside an io::Error (a
        // damaged blob met by a reader that `std::io::copy` drives, as in `cat`).
        let code = err
            .chain()
            .find_map(|c| {
                c.downcast_ref::<aurum::Error>().or_else(|| {
                    c.downcast_ref::<std::io::Error>()
                        .and_then(|e| e.get_ref())
                        .and_then(|e| e.downcast_ref::<aurum::Error>())
                })
            })
            .map(aurum::Error::exit_code)
            .unwrap_or(1);
        std::process::exit(code);
    }
}

/// What to do about an I/O error whose message does not say it already: a permission the
/// command lacks, or a full filesystem.
fn io_hint(err: &anyhow::Error) -> &'static str {
    let text = err.to_string();
    let kind = err.chain().find_map(|c| {
        c.downcast_ref::<std::io::Error>()
            .map(std::io::Error::kind)
            .or_else(|| match c.downcast_ref::<aurum::Error>() {
                Some(aurum::Error::Io { source, .. }) => Some(source.kind()),
                _ => None,
            })
    });
    match kind {
        Some(std::io::ErrorKind::PermissionDenied) if !text.contains("as root") => {
            "; run the command as root (or give this user access to that path)"
        }
        Some(std::io::ErrorKind::StorageFull) if !text.contains("free space") => {
            "; free space on that filesystem (`df -h` shows it), or use another, and run the same command again"
        }
        _ => "",
    }
}

/// The error and its causes, `: `-separated, leaving out a cause whose text the message already
/// holds (a path error already says "No such file or directory"; anyhow's `{:#}` would say it
/// twice).
fn chain(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}
