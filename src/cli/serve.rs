//! `serve` and `nodes` subcommands.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::Args;
use nix::sys::signal::{SigSet, Signal};

use super::{human_bytes, human_time, open, print_json, Global};

/// Serve the repository over HTTP to nodes, caches and other masters.
///
/// Serves the repository's static layout (FORMAT, refs/, manifests/, packs/ with HTTP Range)
/// and a JSON API: /api/v1/images, /api/v1/images/NAME/revisions, /api/v1/nodes, and POST
/// /api/v1/reports for what nodes report after an update. Nodes can equally update from any
/// web server or cache holding a copy of the repository; only reports need aurum serve.
/// Logs one line per request on stderr; stops cleanly on SIGTERM or Ctrl-C.
#[derive(Args)]
pub struct ServeArgs {
    /// Address and port to listen on.
    #[arg(long, default_value = "0.0.0.0:8035", value_name = "ADDR:PORT")]
    listen: String,
    /// Requests answered at once (each streams from disk; memory stays small).
    #[arg(long, default_value_t = 16)]
    threads: usize,
}

pub fn serve(g: &Global, a: ServeArgs) -> anyhow::Result<()> {
    // Signals go to a thread of their own, which asks the workers to finish.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.thread_block()?;
    let serving = aurum::serve::bind(&g.repo, &a.listen)?;
    eprintln!(
        "aurum: serving {} on http://{} (SIGTERM or Ctrl-C stops)",
        g.repo.display(),
        serving.addr
    );
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::spawn(move || {
        if let Ok(sig) = signals.wait() {
            eprintln!("aurum: {sig}: finishing the requests in progress");
        }
        flag.store(true, Ordering::Relaxed);
    });
    serving.run(&g.repo, a.threads, &stop)?;
    eprintln!("aurum: stopped");
    Ok(())
}

/// List the nodes that reported to this server, with what each runs.
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
        return print_json(&nodes);
    }
    if nodes.is_empty() {
        println!("no node has reported yet");
        return Ok(());
    }
    println!(
        "{:<20} {:<16} {:<10} {:<13} {:<7} {:>10} {:<19}",
        "NODE", "IMAGE", "REVISION", "LAST ACTION", "RESULT", "FETCHED", "REPORTED"
    );
    for n in nodes {
        let r = &n.report;
        println!(
            "{:<20} {:<16} {:<10} {:<13} {:<7} {:>10} {:<19}",
            r.hostname,
            r.image.as_deref().unwrap_or("-"),
            r.revision
                .as_deref()
                .map(|s| &s[..s.len().min(8)])
                .unwrap_or("-"),
            r.action,
            r.result,
            human_bytes(r.bytes),
            human_time(n.reported)
        );
    }
    Ok(())
}
