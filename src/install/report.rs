//! Install phases sent to `aurum serve`, so the administrator sees every node's install from
//! the master (`aurum nodes`, `aurum node show NODE`) and a successful one switches the node
//! to local boot.
//!
//! Wire format: `POST /api/v1/install/NODE` with a JSON [`PhaseReport`] (see
//! [`crate::format::report`]). A report that cannot be delivered is logged and dropped:
//! losing the progress display must not fail an install.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use super::{Phase, Reporter};

/// How many phase lines a `failed` report carries as "the last lines of output".
const TAIL: usize = 20;

pub use crate::format::report::PhaseReport;

// The layout is `format::report`'s; how a phase becomes a report is install's business.
impl PhaseReport {
    /// The report of `p`, and the line it adds to the output tail.
    pub fn of(p: &Phase, revision: Option<String>) -> PhaseReport {
        let v = serde_json::to_value(p).unwrap_or_default();
        let (detail, done, total) = match p {
            Phase::Transfer { done, total } => (
                format!("{} of {} bytes", done, total),
                Some(*done),
                Some(*total),
            ),
            _ => (
                v.get("detail")
                    .and_then(|d| d.as_str())
                    .unwrap_or("")
                    .to_string(),
                None,
                None,
            ),
        };
        PhaseReport {
            phase: p.name(),
            detail,
            revision,
            done,
            total,
        }
    }
}

/// POSTs a report to `server`'s install endpoint for `node`.
pub fn post(agent: &ureq::Agent, server: &str, node: &str, r: &PhaseReport) -> crate::Result<()> {
    let url = format!("{}/api/v1/install/{node}", server.trim_end_matches('/'));
    let body = r.encode();
    let resp = agent
        .post(&url)
        .header("Content-Type", "application/json")
        .send(&body[..])
        .map_err(|e| crate::Error::Remote(format!("{url}: {e}")))?;
    match resp.status().as_u16() {
        200..=299 => Ok(()),
        s => Err(crate::Error::Remote(format!("{url}: HTTP {s}"))),
    }
}

/// A short-timeout HTTP agent for reports; TCP_NODELAY, so that the POST's body is not held
/// back behind its head (issue #23).
pub fn agent() -> ureq::Agent {
    // The environment's proxies; one that does not parse was refused by the install's
    // source already.
    let proxies = crate::proxy::Proxies::from_env().unwrap_or_default();
    crate::proxy::agent(
        ureq::Agent::config_builder()
            .no_delay(true)
            .timeout_global(Some(Duration::from_secs(15)))
            .http_status_as_error(false),
        &proxies,
    )
}

/// Sends every phase to the server, besides passing it on to `inner` (the terminal).
pub struct ServerReporter<'a> {
    inner: &'a dyn Reporter,
    server: String,
    node: String,
    agent: ureq::Agent,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    revision: Option<String>,
    tail: VecDeque<String>,
}

impl<'a> ServerReporter<'a> {
    pub fn new(inner: &'a dyn Reporter, server: &str, node: &str) -> ServerReporter<'a> {
        ServerReporter {
            inner,
            server: server.to_string(),
            node: node.to_string(),
            agent: agent(),
            state: Mutex::new(State::default()),
        }
    }
}

impl Reporter for ServerReporter<'_> {
    fn report(&self, p: Phase) {
        let mut report = {
            let mut st = self.state.lock().expect("reporter lock");
            if let Phase::Revision(r) = &p {
                st.revision = Some(r.clone());
            }
            let r = PhaseReport::of(&p, st.revision.clone());
            if let Phase::Failed(_) = p {
                let mut r = r;
                r.detail = format!(
                    "{}\n--- last output ---\n{}",
                    r.detail,
                    st.tail.iter().cloned().collect::<Vec<_>>().join("\n")
                );
                r
            } else {
                st.tail.extend(
                    format!("{}: {}", r.phase, r.detail)
                        .lines()
                        .map(String::from),
                );
                while st.tail.len() > TAIL {
                    st.tail.pop_front();
                }
                r
            }
        };
        let mut cut = report.detail.len().min(32 << 10);
        while !report.detail.is_char_boundary(cut) {
            cut -= 1;
        }
        report.detail.truncate(cut);
        if let Err(e) = post(&self.agent, &self.server, &self.node, &report) {
            log::warn!("could not report the {} phase: {e}", report.phase);
        }
        self.inner.report(p);
    }
}
