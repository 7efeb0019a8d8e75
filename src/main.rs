//! The `aurum` binary: parses the command line and dispatches to one command.
//!
//! Everything a command does lives in the library; `cli/` only turns options into a library
//! call and its result into output. Errors print with their whole chain and exit with the code
//! [`aurum::Error::exit_code`] gives (2 for usage errors, as clap does).

mod cli;

use clap::{CommandFactory, FromArgMatches};

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
        eprintln!("aurum: error: {}", chain(&err));
        let code = err
            .downcast_ref::<aurum::Error>()
            .map(aurum::Error::exit_code)
            .unwrap_or(1);
        std::process::exit(code);
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
