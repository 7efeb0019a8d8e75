//! Command-line definitions: one file per command group, each a thin layer over the library.
//!
//! The doc comments on the option structs are the `--help` text, written for an administrator.

mod boot;
mod bootkit;
mod checkout;
mod chroot;
mod config;
mod docs;
mod fleet;
mod getimage;
mod images;
mod init;
mod inspect;
mod install;
mod maintenance;
mod node;
mod nodedb;
mod power;
mod progress;
mod pxe;
mod replicate;
mod rollout;
mod serve;
mod si;
mod tarball;
mod template;
mod token;
mod trust;

use std::path::PathBuf;

use aurum::repo::{Lock, Repository};
use clap::{Args, Parser, Subcommand};

/// aurum: capture, version, verify and install golden images of Linux cluster nodes.
///
/// A golden client (a configured machine, or a directory holding a root filesystem) is
/// captured into an image; every capture is an immutable, content-addressed revision
/// (compute@1, compute@2, ...) that can be tagged, compared, checked out and verified.
/// Revisions are named IMAGE (newest), IMAGE@N, IMAGE:TAG, IMAGE~N (N before the newest) or by
/// 8+ hex digits of their id.
#[derive(Parser)]
#[command(
    name = "aurum",
    version,
    propagate_version = true,
    max_term_width = 100,
    after_long_help = "Configuration: /etc/aurum/aurum.toml (repository, listen, url) on the image \
server and /etc/aurum/node.toml (server, image, exclude, exclude-file, overrides, hooks, group) \
on a node; AURUM_CONFIG_DIR names another directory. AURUM_REPO and AURUM_SERVER override the \
files, flags override both; `aurum config show` prints what is in effect and why.\n\n\
Exit codes: 0 success, 1 failure, 2 bad input or something missing, 3 damaged data."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Args)]
pub struct Global {
    /// The repository directory. Default: $AURUM_REPO, else `repository` in aurum.toml, else
    /// /var/lib/aurum.
    #[arg(long = "repo", id = "repo", global = true, value_name = "DIR")]
    repo_flag: Option<PathBuf>,
    /// The repository directory in effect (flag, environment, aurum.toml or default).
    #[arg(skip)]
    pub repo: PathBuf,
    /// Whether --repo or AURUM_REPO was given (a node's commands then read from it).
    #[arg(skip)]
    pub repo_given: bool,
    /// The configuration files (aurum.toml, node.toml), read before the command runs.
    #[arg(skip)]
    pub config: aurum::config::Config,
    /// Never draw progress bars (they are drawn only on a terminal anyway).
    #[arg(long, global = true)]
    pub no_progress: bool,
    /// Say more about what is happening (repeat for debug output).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Print only errors and the command's result: no progress, warnings, notes or phase
    /// lines (--json output is unchanged).
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
}

impl Global {
    /// Reads the configuration files and settles the repository directory: --repo, else
    /// AURUM_REPO, else aurum.toml's `repository`, else /var/lib/aurum.
    fn configure(&mut self) -> anyhow::Result<()> {
        self.config = aurum::config::Config::load()?;
        let repo = self.config.repository(self.repo_flag.clone());
        self.repo_given = matches!(
            repo.origin,
            aurum::config::Origin::Flag(_) | aurum::config::Origin::Env(_)
        );
        self.repo = repo.value;
        Ok(())
    }

    /// The repository directory and where it came from.
    pub fn repo_setting(&self) -> aurum::config::Setting<PathBuf> {
        self.config.repository(self.repo_flag.clone())
    }

    /// The progress display the options ask for: bars on a terminal, unless --no-progress or
    /// --quiet.
    pub fn progress(&self) -> Box<dyn aurum::progress::Progress> {
        progress::for_terminal(self.no_progress || self.quiet)
    }
}

/// Set once from --quiet, before any command runs; read where a line is printed that is
/// neither an error nor the result.
static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether --quiet was given.
pub fn quiet() -> bool {
    QUIET.load(std::sync::atomic::Ordering::Relaxed)
}

/// Prints a line on stderr that is neither an error nor the result (a note, a phase, a
/// summary beside the result), unless --quiet.
macro_rules! say {
    ($($arg:tt)*) => {
        if !$crate::cli::quiet() {
            eprintln!($($arg)*);
        }
    };
}
pub(crate) use say;

/// Prints `aurum: warning: ...` on stderr, unless --quiet.
pub fn warning(w: impl std::fmt::Display) {
    say!("aurum: warning: {w}");
}

/// How patient a node is with the --server (updateclient, rollback, install).
#[derive(Args)]
pub struct HttpArgs {
    /// Give up on connecting to the server after this long (then retry).
    #[arg(
        long,
        env = "AURUM_CONNECT_TIMEOUT",
        default_value_t = 10,
        value_name = "SECONDS"
    )]
    connect_timeout: u64,
    /// Give up on a request when no byte moves for this long (then retry): a slow server
    /// that keeps sending is never cut off, a stalled one is.
    #[arg(
        long,
        env = "AURUM_IDLE_TIMEOUT",
        default_value_t = 60,
        value_name = "SECONDS"
    )]
    idle_timeout: u64,
    /// Tries of each download before the command fails (with jittered, doubling pauses).
    #[arg(long, env = "AURUM_HTTP_TRIES", default_value_t = 4, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=20))]
    http_tries: u32,
    /// Send every request through this HTTP proxy (http://HOST:PORT, e.g. a site's Squid):
    /// plain `GET http://server/...` requests, which a cache can keep. Default: the
    /// environment's http_proxy (no_proxy honoured, as curl does), else `proxy` in node.toml;
    /// "" for none.
    #[arg(long, value_name = "URL")]
    proxy: Option<String>,
    /// For an https:// server: trust only certificates signed by the CA in FILE (PEM).
    /// Default (on a node): `ca` in node.toml, else the system's trust store (/etc/ssl/certs).
    #[arg(long, env = "AURUM_CA", value_name = "FILE")]
    ca: Option<std::path::PathBuf>,
}

/// The token a command sends with its reports to the server.
#[derive(Args)]
pub struct TokenArgs {
    /// The file holding the token sent with reports to the server (aurum serve takes writes
    /// with a token only). Default: AURUM_TOKEN (the token itself), else `token-file` in
    /// node.toml, else the node's /var/lib/aurum-node/token, which install writes.
    #[arg(long, value_name = "FILE")]
    token_file: Option<std::path::PathBuf>,
}

impl TokenArgs {
    /// The token in effect; `node_token` is the node's own token file, used when nothing
    /// names another.
    pub fn token(
        &self,
        g: &Global,
        node_token: Option<&std::path::Path>,
    ) -> anyhow::Result<Option<String>> {
        Ok(g.config.token(self.token_file.clone(), node_token)?)
    }
}

impl HttpArgs {
    /// The --proxy given, if any.
    pub fn proxy(&self) -> Option<&str> {
        self.proxy.as_deref()
    }

    /// The options; `node` is node.toml's settings on a node (its `proxy`, `no-proxy` and
    /// `ca`); `token` goes with the reports.
    pub fn options(
        &self,
        node: Option<&aurum::config::NodeFile>,
        token: Option<String>,
    ) -> aurum::Result<aurum::apply::source::HttpOptions> {
        let proxies = aurum::proxy::Proxies::choose(
            self.proxy.as_deref(),
            node.and_then(|n| n.proxy.as_deref()),
            node.and_then(|n| n.no_proxy.as_deref()),
        )?;
        Ok(aurum::apply::source::HttpOptions {
            connect_timeout: std::time::Duration::from_secs(self.connect_timeout.max(1)),
            idle_timeout: std::time::Duration::from_secs(self.idle_timeout.max(1)),
            attempts: self.http_tries,
            proxies,
            token,
            ca: self.ca.clone().or_else(|| node.and_then(|n| n.ca.clone())),
        })
    }
}

#[derive(Subcommand)]
pub enum Command {
    Init(init::InitArgs),
    Getimage(getimage::GetimageArgs),
    #[command(hide = true)]
    Agent(getimage::AgentArgs),
    Lsimage(inspect::LsimageArgs),
    Log(inspect::LogArgs),
    Show(inspect::ShowArgs),
    Ls(inspect::LsArgs),
    Cat(inspect::CatArgs),
    Diff(inspect::DiffArgs),
    Tag(images::TagArgs),
    Cpimage(images::CpimageArgs),
    Mvimage(images::MvimageArgs),
    Rmimage(images::RmimageArgs),
    Checkout(checkout::CheckoutArgs),
    Chroot(chroot::ChrootArgs),
    Export(tarball::ExportArgs),
    Import(tarball::ImportArgs),
    Verify(maintenance::VerifyArgs),
    Gc(maintenance::GcArgs),
    Serve(serve::ServeArgs),
    Nodes(serve::NodesArgs),
    Updateclient(node::UpdateclientArgs),
    Rollback(node::RollbackArgs),
    MarkGood(node::MarkGoodArgs),
    NodeStatus(node::NodeStatusArgs),
    Health(node::HealthArgs),
    Boot(boot::BootArgs),
    Node(nodedb::NodeArgs),
    Exec(fleet::ExecArgs),
    Rollout(rollout::RolloutArgs),
    Power(power::PowerArgs),
    Reinstall(power::ReinstallArgs),
    Copy(fleet::CopyArgs),
    Pxe(pxe::PxeArgs),
    Bootkit(bootkit::BootkitArgs),
    Template(template::TemplateArgs),
    Config(config::ConfigArgs),
    Completions(docs::CompletionsArgs),
    Man(docs::ManArgs),
    Pull(replicate::PullArgs),
    Push(replicate::PushArgs),
    Remote(replicate::RemoteArgs),
    Token(token::TokenArgs),
    Facts(install::FactsArgs),
    Prepareclient(install::PrepareclientArgs),
    Install(install::InstallArgs),
    BootMemory(install::BootMemoryArgs),
    BootNetroot(install::BootNetrootArgs),
    ImportSi(si::ImportSiArgs),
    Key(trust::KeyArgs),
    Sign(trust::SignArgs),
    #[command(hide = true)]
    InstallReport(install::InstallReportArgs),
}

/// Runs the chosen command.
pub fn run(mut cli: Cli) -> anyhow::Result<()> {
    QUIET.store(cli.global.quiet, std::sync::atomic::Ordering::Relaxed);
    // The agent runs on a golden client for a capture: its /etc/aurum is not ours to read.
    if !matches!(cli.command, Command::Agent(_)) {
        cli.global.configure()?;
    }
    let g = &cli.global;
    match cli.command {
        Command::Init(a) => init::exec(g, a),
        Command::Getimage(a) => getimage::exec(g, a),
        Command::Agent(a) => getimage::agent(a),
        Command::Lsimage(a) => inspect::lsimage(g, a),
        Command::Log(a) => inspect::log(g, a),
        Command::Show(a) => inspect::show(g, a),
        Command::Ls(a) => inspect::ls(g, a),
        Command::Cat(a) => inspect::cat(g, a),
        Command::Diff(a) => inspect::diff(g, a),
        Command::Tag(a) => images::tag(g, a),
        Command::Cpimage(a) => images::cpimage(g, a),
        Command::Mvimage(a) => images::mvimage(g, a),
        Command::Rmimage(a) => images::rmimage(g, a),
        Command::Checkout(a) => checkout::exec(g, a),
        Command::Chroot(a) => chroot::exec(g, a),
        Command::Export(a) => tarball::export(g, a),
        Command::Import(a) => tarball::import(g, a),
        Command::Verify(a) => maintenance::verify(g, a),
        Command::Gc(a) => maintenance::gc(g, a),
        Command::Serve(a) => serve::serve(g, a),
        Command::Nodes(a) => serve::nodes(g, a),
        Command::Updateclient(a) => node::updateclient(g, a),
        Command::Rollback(a) => node::rollback(g, a),
        Command::MarkGood(a) => node::mark_good(g, a),
        Command::NodeStatus(a) => node::node_status(g, a),
        Command::Health(a) => node::health(g, a),
        Command::Boot(a) => boot::boot(g, a),
        Command::Node(a) => nodedb::exec(g, a),
        Command::Exec(a) => fleet::exec(g, a),
        Command::Rollout(a) => rollout::exec(g, a),
        Command::Power(a) => power::exec(g, a),
        Command::Reinstall(a) => power::reinstall(g, a),
        Command::Copy(a) => fleet::copy(g, a),
        Command::Pxe(a) => pxe::exec(g, a),
        Command::Bootkit(a) => bootkit::exec(g, a),
        Command::Template(a) => template::exec(g, a),
        Command::Config(a) => config::exec(g, a),
        Command::Completions(a) => docs::completions(g, a),
        Command::Man(a) => docs::man(g, a),
        Command::Pull(a) => replicate::pull(g, a),
        Command::Push(a) => replicate::push(g, a),
        Command::Remote(a) => replicate::remote(g, a),
        Command::Token(a) => token::token(g, a),
        Command::Facts(a) => install::facts(g, a),
        Command::Prepareclient(a) => install::prepareclient(g, a),
        Command::Install(a) => install::install(g, a),
        Command::BootMemory(a) => install::boot_memory(g, a),
        Command::BootNetroot(a) => install::boot_netroot(g, a),
        Command::ImportSi(a) => si::import_si(g, a),
        Command::Key(a) => trust::key(g, a),
        Command::Sign(a) => trust::sign(g, a),
        Command::InstallReport(a) => install::install_report(g, a),
    }
}

/// Opens the repository named by `--repo` with a shared lock.
fn open(g: &Global) -> aurum::Result<Repository> {
    Repository::open(&g.repo, Lock::Shared)
}

/// `1.2 GiB`, `340 KiB`, `12 B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut unit = UNITS.iter();
    let mut u = unit.next().unwrap_or(&"B");
    while v >= 1024.0 {
        let Some(next) = unit.next() else { break };
        v /= 1024.0;
        u = next;
    }
    if n < 1024 {
        format!("{n} B")
    } else {
        format!("{v:.1} {u}")
    }
}

/// `2026-11-22 02:31:11` (UTC) from seconds since the epoch.
pub fn human_time(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The JSON naming a revision, which every command that makes or names one prints:
/// {"revision": "compute@3", "image": "compute", "number": 3, "id": "<64 hex digits>"}.
fn revision_json(r: &aurum::catalog::Revision) -> serde_json::Value {
    serde_json::json!({
        "revision": r.name(),
        "image": r.image,
        "number": r.number,
        "id": r.id.hex(),
    })
}

/// Prints a value as pretty JSON on stdout.
fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Prints a JSON array as [`print_json`] would, one item at a time as `items` yields them (a
/// listing that streams stays small in memory); the first error stops it.
fn print_json_seq<T: serde::Serialize>(
    items: impl Iterator<Item = aurum::Result<T>>,
) -> anyhow::Result<()> {
    use serde::Serializer;
    use std::io::Write;
    let mut failed = None;
    let items = items.map_while(|r| r.map_err(|e| failed = Some(e)).ok());
    let mut out = std::io::stdout().lock();
    serde_json::Serializer::pretty(&mut out).collect_seq(items)?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    writeln!(out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_bytes_and_times() {
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_time(0), "1970-01-01 00:00:00");
        assert_eq!(human_time(1_795_314_671), "2026-11-22 02:31:11");
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
