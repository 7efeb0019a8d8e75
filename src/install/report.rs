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

/// Where install phases go: the server, with the token and trust of the installer's
/// `HttpOptions`.
pub struct PhaseSink {
    agent: ureq::Agent,
    server: String,
    token: Option<String>,
}

impl PhaseSink {
    /// A short-timeout client for `server`; TCP_NODELAY, so that the POST's body is not held
    /// back behind its head (issue #23).
    pub fn new(
        server: &str,
        options: &crate::apply::source::HttpOptions,
    ) -> crate::Result<PhaseSink> {
        let agent = crate::proxy::agent(
            ureq::Agent::config_builder()
                .no_delay(true)
                .timeout_global(Some(Duration::from_secs(15)))
                .http_status_as_error(false)
                .tls_config(crate::tls::client_config(options.ca.as_deref())?),
            &options.proxies,
        );
        Ok(PhaseSink {
            agent,
            server: server.trim_end_matches('/').to_string(),
            token: options.token.clone(),
        })
    }

    /// POSTs a report to the server's install endpoint for `node`.
    pub fn post(&self, node: &str, r: &PhaseReport) -> crate::Result<()> {
        let url = format!("{}/api/v1/install/{node}", self.server);
        let body = r.encode();
        let mut rq = self
            .agent
            .post(&url)
            .header("Content-Type", "application/json");
        if let Some(t) = &self.token {
            rq = rq.header("Authorization", format!("Bearer {t}"));
        }
        let resp = rq
            .send(&body[..])
            .map_err(|e| crate::Error::Remote(format!("{url}: {e}")))?;
        match resp.status().as_u16() {
            200..=299 => Ok(()),
            s @ (401 | 403) => Err(crate::Error::Remote(format!(
                "{url}: HTTP {s}: the server refused the installer's token (the boot script \
                 passes it as aurum.token=; by hand, AURUM_TOKEN=$(aurum token node {node}))"
            ))),
            s => Err(crate::Error::Remote(format!("{url}: HTTP {s}"))),
        }
    }
}

/// Sends every phase to the server, besides passing it on to `inner` (the terminal).
pub struct ServerReporter<'a> {
    inner: &'a dyn Reporter,
    sink: PhaseSink,
    node: String,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    revision: Option<String>,
    tail: VecDeque<String>,
}

impl<'a> ServerReporter<'a> {
    pub fn new(inner: &'a dyn Reporter, sink: PhaseSink, node: &str) -> ServerReporter<'a> {
        ServerReporter {
            inner,
            sink,
            node: node.to_string(),
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
        if let Err(e) = self.sink.post(&self.node, &report) {
            log::warn!("could not report the {} phase: {e}", report.phase);
        }
        self.inner.report(p);
    }
}
