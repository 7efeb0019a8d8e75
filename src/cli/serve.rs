//! `serve` and `nodes` subcommands.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::Args;
use nix::sys::signal::{SigSet, Signal};

use super::{human_bytes, human_time, open, print_json, Global};

/// Serve the repository over HTTP to nodes, caches and other masters.
///
/// Serves the repository's published directory, REPO/public/ (FORMAT, refs/, manifests/,
/// packs/ with HTTP Range, templates/), at the top of its URLs (/packs/list is
/// REPO/public/packs/list), and a JSON API: /api/v1/images, /api/v1/images/NAME/revisions,
/// /api/v1/nodes, and POST /api/v1/reports for what nodes report after an update. Nodes can
/// equally update from any web server or cache publishing REPO/public/ (or a copy of it);
/// only reports, deltas and blob locations (POST /api/v1/locate: no pack index read) need
/// aurum serve.
/// Logs one line per request on stderr; stops cleanly on SIGTERM or Ctrl-C.
#[derive(Args)]
pub struct ServeArgs {
    /// Address and port to listen on. Default: `listen` in aurum.toml, else 0.0.0.0:8035.
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<String>,
    /// Requests worked on at once, at most: one worker per core, more (up to N) only while
    /// every worker is held up by a long request (a delta, a slow disk). Connections take no
    /// thread while they wait (idle, or a node's socket full), so thousands of nodes may stay
    /// connected.
    #[arg(long, default_value_t = 64, value_name = "N")]
    threads: usize,
    /// Close a connection that stalls this long: a request head not complete this long after
    /// its first byte, a kept-alive connection with no request, a node that stops reading its
    /// answer. A slow node that keeps reading is never dropped.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    stall_timeout: u64,
    /// Send at most N files at once (packs, large manifests); past that, answer 503 with a
    /// Retry-After, which aurum nodes honour, instead of slowing every transfer down.
    /// 0: no limit.
    #[arg(long, default_value_t = 0, value_name = "N")]
    max_transfers: usize,
    /// Be a cache tier of the aurum serve at URL: --repo is then a cache directory (made when
    /// missing). Packs, indexes, manifests and deltas this server lacks are fetched once,
    /// checked against their ids, kept and served; refs, the API and boot scripts are passed
    /// on. Give nodes this server's address; the upstream sees one fetch per object.
    #[arg(long, value_name = "URL")]
    upstream: Option<String>,
    /// Take node reports and install phases without a token. Without it every write needs
    /// `Authorization: Bearer TOKEN`, an admin token (`aurum token create`) or the node's own
    /// (`aurum token node NODE`, given to installers by the boot script); reads stay open.
    /// For a closed lab network only.
    #[arg(long)]
    open_writes: bool,
    /// Speak HTTPS with the certificate in FILE (PEM: the server's certificate, then any
    /// intermediates); needs --tls-key. SIGHUP reads both files again without dropping a
    /// connection (a failed reload keeps the old certificate, with a warning).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
}

pub fn serve(g: &Global, a: ServeArgs) -> anyhow::Result<()> {
    // Signals go to a thread of their own, which asks the workers to finish.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGHUP);
    signals.thread_block()?;
    // Opening it brings a repository of an older aurum to the public/ layout served below.
    // A cache tier has none.
    if a.upstream.is_none() {
        drop(open(g)?);
    }
    let listen = g.config.listen(a.listen);
    let options = aurum::serve::Options {
        max_transfers: a.max_transfers,
        upstream: a.upstream.clone(),
        open_writes: a.open_writes,
        tls: match (&a.tls_cert, &a.tls_key) {
            (Some(cert), Some(key)) => Some(aurum::serve::tls::Certificates::load(cert, key)?),
            _ => None,
        },
    };
    let certificates = options.tls.clone();
    let scheme = if certificates.is_some() {
        "https"
    } else {
        "http"
    };
    if a.open_writes {
        super::warning("--open-writes: anyone who reaches this server can report as any node");
    }
    let serving = aurum::serve::bind_with(
        &g.repo,
        &listen.value,
        std::time::Duration::from_secs(a.stall_timeout.max(1)),
        options,
    )?;
    // Printed even with --quiet: it is serve's result, the address a port 0 was bound to.
    match &a.upstream {
        None => eprintln!(
            "aurum: serving {} on {scheme}://{} (SIGTERM or Ctrl-C stops)",
            g.repo.display(),
            serving.addr
        ),
        Some(up) => eprintln!(
            "aurum: caching {up} in {} on {scheme}://{} (SIGTERM or Ctrl-C stops)",
            g.repo.display(),
            serving.addr
        ),
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::spawn(move || {
        loop {
            match signals.wait() {
                Ok(Signal::SIGHUP) => match &certificates {
                    Some(c) => match c.reload() {
                        Ok(()) => super::say!("aurum: SIGHUP: TLS certificate reloaded"),
                        Err(e) => super::warning(format!(
                            "SIGHUP: the TLS certificate was not reloaded (the old one stays): {e:#}"
                        )),
                    },
                    None => super::say!("aurum: SIGHUP: nothing to reload (no --tls-cert)"),
                },
                Ok(sig) => {
                    super::say!("aurum: {sig}: finishing the requests in progress");
                    break;
                }
                Err(_) => break,
            }
        }
        flag.store(true, Ordering::Relaxed);
    });
    serving.run(&g.repo, a.threads, &stop)?;
    super::say!("aurum: stopped");
    Ok(())
}

/// List the nodes: what each reported to this server (what it runs) and, for the nodes of
/// the node database, their boot mode and the last phase of their install.
#[derive(Args)]
pub struct NodesArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn nodes(g: &Global, a: NodesArgs) -> anyhow::Result<()> {
    let repo = open(g)?;
    let nodes = repo.catalog.nodes()?;
    if a.json {
        // The reports only, as before the node database; `aurum node list --json` has it.
        return print_json(&nodes);
    }
    let inventory = repo.catalog.inventory()?;
    if nodes.is_empty() && inventory.is_empty() {
        println!("no node has reported yet");
        return Ok(());
    }
    println!(
        "{:<20} {:<16} {:<10} {:<13} {:<7} {:>10} {:<19} {:<7} INSTALL PHASE",
        "NODE", "IMAGE", "REVISION", "LAST ACTION", "RESULT", "FETCHED", "REPORTED", "BOOT"
    );
    let mut names: Vec<&str> = nodes.iter().map(|n| n.report.hostname.as_str()).collect();
    names.extend(inventory.iter().map(|n| n.name.as_str()));
    names.sort_unstable();
    names.dedup();
    for name in names {
        let rep = nodes.iter().find(|n| n.report.hostname == name);
        let inv = inventory.iter().find(|n| n.name == name);
        let (image, revision, action, result, fetched, reported) = match rep {
            Some(n) => {
                let r = &n.report;
                (
                    r.image.clone().unwrap_or_else(|| "-".into()),
                    r.revision
                        .as_deref()
                        .map(|s| aurum::apply::node::short_id(s).to_string())
                        .unwrap_or_else(|| "-".into()),
                    r.action.as_str().to_string(),
                    r.result.as_str().to_string(),
                    human_bytes(r.bytes),
                    human_time(n.reported),
                )
            }
            None => (
                inv.and_then(|n| n.image.clone())
                    .unwrap_or_else(|| "-".into()),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ),
        };
        let (boot, phase) = match inv {
            Some(n) => (
                n.boot.as_str(),
                n.last
                    .as_ref()
                    .map(|l| {
                        format!(
                            "{} {} {}",
                            l.phase,
                            l.revision.as_deref().unwrap_or("-"),
                            human_time(l.time)
                        )
                    })
                    .unwrap_or_else(|| "-".into()),
            ),
            None => ("-", "-".into()),
        };
        println!(
            "{name:<20} {image:<16} {revision:<10} {action:<13} {result:<7} {fetched:>10} {reported:<19} {boot:<7} {phase}"
        );
    }
    // Nodes whose last boot went back from a revision on trial, and why.
    for n in &nodes {
        if let Some(b) = n.report.boot.as_ref().filter(|b| b.fell_back) {
            println!(
                "{}: fell back to {} at {}: {}",
                n.report.hostname,
                b.booted.as_deref().unwrap_or("-"),
                human_time(n.reported),
                b.reason
            );
        }
    }
    Ok(())
}
