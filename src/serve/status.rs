//! The status page `aurum serve` answers at `/`: every node (from the node database and from
//! the reports nodes send) with its revision, last update, health and place in a rollout, and
//! the rollouts with their progress per wave. Plain server-rendered HTML that reloads itself
//! every few seconds; scripts read the same from `/api/v1/nodes` and `/api/v1/rollouts`.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::catalog::rollouts::{Rollout, RolloutNode};
use crate::catalog::{Catalog, NodeAction, NodeState, Outcome};
use crate::error::Result;
use crate::format::rollout::NodeStep;

/// Seconds between reloads of the page.
const REFRESH: u32 = 5;

/// Rollouts shown (the newest).
const ROLLOUTS: usize = 10;

/// `<`, `>`, `&` and quotes escaped for HTML text and attributes.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn when(t: i64) -> String {
    let ago = crate::catalog::now() - t;
    match ago {
        i64::MIN..=59 => format!("{}s ago", ago.max(0)),
        60..=3599 => format!("{}m ago", ago / 60),
        3600..=86399 => format!("{}h ago", ago / 3600),
        _ => format!("{}d ago", ago / 86400),
    }
}

/// A revision id as people read it: `image@N` when the catalog knows it, else its first 8
/// hex digits.
fn revision_name(cat: &Catalog, image: Option<&str>, id: Option<&str>) -> Result<String> {
    let Some(id) = id else { return Ok("-".into()) };
    let short = crate::format::node::short_id(id);
    if let Some(image) = image {
        if let Some(r) = cat
            .revisions(image)?
            .into_iter()
            .rev()
            .find(|r| r.id.hex() == id)
        {
            return Ok(format!("{}@{}", r.image, r.number));
        }
    }
    Ok(short.to_string())
}

/// One row of the nodes table.
#[derive(Default)]
struct Row {
    ip: String,
    assigned: String,
    last: Option<NodeState>,
    health: Option<NodeState>,
    staged: Option<NodeState>,
    rollout: Option<(i64, RolloutNode)>,
}

/// The page.
pub fn page(cat: &Catalog) -> Result<String> {
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    for n in cat.inventory()? {
        let row = rows.entry(n.name.clone()).or_default();
        row.ip = n.ip.unwrap_or_default();
        row.assigned = n.image.unwrap_or_default();
    }
    for n in cat.nodes()? {
        if n.report.action != NodeAction::Health {
            let host = n.report.hostname.clone();
            rows.entry(host).or_default().last = Some(n);
        }
    }
    for n in cat.latest_reports(NodeAction::Updateclient)? {
        let row = rows.entry(n.report.hostname.clone()).or_default();
        if row.last.as_ref().is_none_or(|l| l.reported < n.reported) {
            row.last = Some(n);
        }
    }
    for n in cat.latest_reports(NodeAction::Stage)? {
        let host = n.report.hostname.clone();
        rows.entry(host).or_default().staged = Some(n);
    }
    for n in cat.latest_reports(NodeAction::Health)? {
        let host = n.report.hostname.clone();
        rows.entry(host).or_default().health = Some(n);
    }
    let rollouts: Vec<Rollout> = cat.rollouts()?.into_iter().take(ROLLOUTS).collect();
    let mut parts: Vec<(Rollout, Vec<RolloutNode>)> = Vec::new();
    for r in rollouts {
        let nodes = cat.rollout_nodes(r.id)?;
        parts.push((r, nodes));
    }
    // A node's place in the newest rollout that holds it.
    for (r, nodes) in parts.iter().rev() {
        for n in nodes {
            rows.entry(n.node.clone()).or_default().rollout = Some((r.id, n.clone()));
        }
    }

    let mut html = String::new();
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH}\">\
         <title>aurum: nodes and rollouts</title><style>\
         body{{font-family:sans-serif;margin:1em}} table{{border-collapse:collapse}} \
         td,th{{border:1px solid #ccc;padding:2px 8px;text-align:left}} \
         .ok{{color:#060}} .bad{{color:#b00;font-weight:bold}} .busy{{color:#a60}}\
         </style></head><body>\n<h1>aurum</h1>\n<h2>Nodes ({})</h2>\n\
         <table id=\"nodes\"><tr><th>node</th><th>address</th><th>revision</th>\
         <th>staged</th><th>last update</th><th>health</th><th>rollout</th></tr>\n",
        rows.len()
    );
    for (name, row) in &rows {
        let (revision, last) = match &row.last {
            Some(l) => (
                revision_name(cat, l.report.image.as_deref(), l.report.revision.as_deref())?,
                format!(
                    "<span class=\"{}\">{} {}</span> {}",
                    if l.report.result == Outcome::Ok {
                        "ok"
                    } else {
                        "bad"
                    },
                    l.report.action,
                    l.report.result,
                    when(l.reported)
                ),
            ),
            None => ("-".to_string(), "-".to_string()),
        };
        // A stage newer than the node's last update (an activation reports as an update).
        let staged = match (&row.staged, &row.last) {
            (Some(st), last) if last.as_ref().is_none_or(|l| l.reported < st.reported) => {
                revision_name(
                    cat,
                    st.report.image.as_deref(),
                    st.report.revision.as_deref(),
                )?
            }
            _ => "-".to_string(),
        };
        let health = match &row.health {
            Some(h) if h.report.result == Outcome::Ok => {
                format!("<span class=\"ok\">healthy</span> {}", when(h.reported))
            }
            Some(h) => format!(
                "<span class=\"bad\">UNHEALTHY</span> {} {}",
                esc(&h.report.detail),
                when(h.reported)
            ),
            None => "-".to_string(),
        };
        let rollout = match &row.rollout {
            Some((id, n)) => {
                let class = match n.state {
                    NodeStep::Done => "ok",
                    NodeStep::Failed | NodeStep::RolledBack | NodeStep::FellBack => "bad",
                    _ => "busy",
                };
                format!(
                    "#{id} wave {} <span class=\"{class}\">{}</span>",
                    n.wave, n.state
                )
            }
            None => "-".to_string(),
        };
        let _ = writeln!(
            html,
            "<tr id=\"node-{n}\"><td>{n}</td><td>{}</td><td class=\"revision\">{}</td>\
             <td class=\"staged\">{}</td><td>{last}</td>\
             <td class=\"health\">{health}</td><td class=\"rollout\">{rollout}</td></tr>",
            esc(&row.ip),
            esc(&revision),
            esc(&staged),
            n = esc(name),
        );
    }
    html.push_str(
        "</table>\n<h2>Rollouts</h2>\n<table id=\"rollouts\"><tr><th>#</th>\
        <th>revision</th><th>nodes</th><th>state</th><th>waves</th><th>why</th></tr>\n",
    );
    for (r, nodes) in &parts {
        let mut waves = Vec::new();
        for w in 0..r.plan.waves {
            let of: Vec<&RolloutNode> = nodes.iter().filter(|n| n.wave == w).collect();
            let done = of.iter().filter(|n| n.state == NodeStep::Done).count();
            let failed = of
                .iter()
                .filter(|n| {
                    matches!(
                        n.state,
                        NodeStep::Failed | NodeStep::RolledBack | NodeStep::FellBack
                    )
                })
                .count();
            waves.push(format!(
                "{w}: {done}/{}{}",
                of.len(),
                if failed > 0 {
                    format!(" <span class=\"bad\">{failed} failed</span>")
                } else {
                    String::new()
                }
            ));
        }
        let _ = writeln!(
            html,
            "<tr id=\"rollout-{}\"><td>{}</td><td>{}@{}</td><td>{}</td><td class=\"state\">{}</td>\
             <td>{}</td><td>{}</td></tr>",
            r.id,
            r.id,
            esc(&r.image),
            r.number,
            esc(&r.nodeset),
            r.state,
            waves.join(" · "),
            esc(&r.reason)
        );
    }
    let _ = write!(
        html,
        "</table>\n<p>Reloads every {REFRESH} s. JSON: <a href=\"/api/v1/nodes\">/api/v1/nodes</a>, \
         <a href=\"/api/v1/rollouts\">/api/v1/rollouts</a>.</p>\n</body></html>\n"
    );
    Ok(html)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            esc("<b>\"x\" & 'y'</b>"),
            "&lt;b&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/b&gt;"
        );
    }
}
