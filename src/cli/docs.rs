//! `completions` and `man`: shell completions and manual pages, generated from the command
//! definitions themselves (clap_complete, clap_mangen), so they cannot drift from `--help`.

use std::path::{Path, PathBuf};

use clap::{Args, CommandFactory};
use clap_complete::Shell;

use super::{print_json, Cli, Global};

/// Print the shell completion script for SHELL (or write it into --dir).
///
/// Load it for the current bash with `source <(aurum completions bash)`, or install it where
/// the shell looks: /usr/share/bash-completion/completions/aurum, a directory on zsh's $fpath
/// (as `_aurum`), ~/.config/fish/completions/aurum.fish.
#[derive(Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    shell: Shell,
    /// Write the script into DIR under the name the shell looks for (aurum.bash, _aurum,
    /// aurum.fish, aurum.elv, _aurum.ps1) instead of printing it (DIR is created when
    /// missing); the path is printed.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

pub fn completions(_: &Global, a: CompletionsArgs) -> anyhow::Result<()> {
    let mut cmd = Cli::command();
    match &a.dir {
        None => clap_complete::generate(a.shell, &mut cmd, "aurum", &mut std::io::stdout()),
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| aurum::Error::Io {
                path: dir.clone(),
                source: e,
            })?;
            let path =
                clap_complete::generate_to(a.shell, &mut cmd, "aurum", dir).map_err(|e| {
                    aurum::Error::Io {
                        path: dir.clone(),
                        source: e,
                    }
                })?;
            println!("{}", path.display());
        }
    }
    Ok(())
}

/// Write a manual page for aurum and for each of its commands into DIR.
///
/// aurum.1, aurum-getimage.1, aurum-node-add.1, ...: one page a command, with its --help
/// text, for `man -l DIR/aurum-getimage.1` or, installed in /usr/local/share/man/man1,
/// `man aurum-getimage`. The paths written are printed.
#[derive(Args)]
pub struct ManArgs {
    /// The directory to write the pages into (created when missing).
    #[arg(value_name = "DIR")]
    dir: PathBuf,
    /// Print the pages written as JSON.
    #[arg(long)]
    json: bool,
}

pub fn man(_: &Global, a: ManArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&a.dir).map_err(|e| aurum::Error::Io {
        path: a.dir.clone(),
        source: e,
    })?;
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut written = Vec::new();
    write_pages(&cmd, &a.dir, &mut written)?;
    if a.json {
        return print_json(&serde_json::json!({ "pages": written }));
    }
    for p in &written {
        println!("{}", p.display());
    }
    Ok(())
}

/// Writes the page of `cmd` and of each of its visible subcommands, depth first.
fn write_pages(cmd: &clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let page = clap_mangen::Man::new(cmd.clone())
        .source(format!("aurum {}", env!("CARGO_PKG_VERSION")))
        .manual("aurum manual");
    let path = page.generate_to(dir).map_err(|e| aurum::Error::Io {
        path: dir.join(page.get_filename()),
        source: e,
    })?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, dir, written)?;
    }
    Ok(())
}
