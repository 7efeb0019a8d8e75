//! Which class a machine belongs to: the `[match]` section of each template against its facts.
//!
//! A class matches when every criterion it states holds and its template renders on the
//! machine's disks. Among matching classes the one stating the most criteria wins (a template
//! for "Dell R650 with two disks" beats a generic one); a tie is refused rather than guessed,
//! since installing the wrong layout wipes a disk. An explicit class (`--class`, the node
//! record) always wins over matching.

use serde::Deserialize;

use super::size::{human, Bytes};
use super::{render, Template};
use crate::error::{invalid, Result};
use crate::facts::{Facts, Firmware};
use crate::name::ClassName;

/// The `[match]` section.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Match {
    /// Each disk the template uses is at least this large...
    pub disk_min: Option<Bytes>,
    /// ...and at most this large.
    pub disk_max: Option<Bytes>,
    /// DMI system vendor, a glob (`Dell*`).
    pub vendor: Option<String>,
    /// DMI product name, a glob (`PowerEdge R6*`).
    pub product: Option<String>,
    pub memory_min: Option<Bytes>,
    pub memory_max: Option<Bytes>,
    pub cpus_min: Option<u32>,
    pub cpus_max: Option<u32>,
    pub firmware: Option<Firmware>,
}

/// One class's verdict.
#[derive(Debug, serde::Serialize)]
pub struct Verdict {
    pub class: ClassName,
    pub matches: bool,
    /// Criteria the template states (more wins).
    pub score: usize,
    /// One line per criterion: what was asked, what the machine has.
    pub reasons: Vec<String>,
}

fn glob_ok(pattern: &str, value: &str) -> bool {
    globset::GlobBuilder::new(pattern)
        .case_insensitive(true)
        .build()
        .map(|g| g.compile_matcher().is_match(value))
        .unwrap_or(false)
}

/// Judges one template against `facts`.
pub fn judge(t: &Template, facts: &Facts) -> Verdict {
    let m = &t.file.matching;
    let mut ok = true;
    let mut score = 0;
    let mut reasons = Vec::new();
    let want = t.file.disks.len();
    let disks = facts.disks.get(..want).unwrap_or(&facts.disks);
    if facts.disks.len() < want {
        ok = false;
        reasons.push(format!(
            "no  needs {want} disks, the machine has {}",
            facts.disks.len()
        ));
    }
    let mut check = |cond: bool, what: String| {
        score += 1;
        ok &= cond;
        reasons.push(format!("{} {what}", if cond { "yes" } else { "no " }));
    };
    if m.disk_min.is_some() || m.disk_max.is_some() {
        let lo = m.disk_min.map_or(0, |b| b.0);
        let hi = m.disk_max.map_or(u64::MAX, |b| b.0);
        let sizes: Vec<String> = disks
            .iter()
            .map(|d| format!("{} {}", d.name, human(d.size)))
            .collect();
        check(
            !disks.is_empty() && disks.iter().all(|d| d.size >= lo && d.size <= hi),
            format!(
                "disk size {}..{}: {}",
                m.disk_min.map_or("0".into(), |b| human(b.0)),
                m.disk_max.map_or("any".into(), |b| human(b.0)),
                sizes.join(", ")
            ),
        );
    }
    if let Some(v) = &m.vendor {
        check(
            glob_ok(v, &facts.vendor),
            format!("vendor `{v}`: `{}`", facts.vendor),
        );
    }
    if let Some(p) = &m.product {
        check(
            glob_ok(p, &facts.product),
            format!("product `{p}`: `{}`", facts.product),
        );
    }
    if m.memory_min.is_some() || m.memory_max.is_some() {
        let lo = m.memory_min.map_or(0, |b| b.0);
        let hi = m.memory_max.map_or(u64::MAX, |b| b.0);
        check(
            facts.memory >= lo && facts.memory <= hi,
            format!(
                "memory {}..{}: {}",
                human(lo),
                m.memory_max.map_or("any".into(), |b| human(b.0)),
                human(facts.memory)
            ),
        );
    }
    if m.cpus_min.is_some() || m.cpus_max.is_some() {
        let lo = m.cpus_min.unwrap_or(0);
        let hi = m.cpus_max.unwrap_or(u32::MAX);
        check(
            facts.cpus >= lo && facts.cpus <= hi,
            format!(
                "cpus {lo}..{}: {}",
                m.cpus_max.map_or("any".into(), |c| c.to_string()),
                facts.cpus
            ),
        );
    }
    if let Some(fw) = m.firmware {
        check(
            facts.firmware == fw,
            format!("firmware {fw:?}: {:?}", facts.firmware),
        );
    }
    if ok {
        let sizes: Vec<u64> = disks.iter().map(|d| d.size).collect();
        if let Err(e) = render(t, &sizes) {
            ok = false;
            reasons.push(format!("no  {e}"));
        }
    }
    Verdict {
        class: t.class.clone(),
        matches: ok,
        score,
        reasons,
    }
}

/// Every verdict, and the class chosen (the one matching class stating the most criteria).
pub fn choose(templates: &[Template], facts: &Facts) -> (Vec<Verdict>, Result<ClassName>) {
    let verdicts: Vec<Verdict> = templates.iter().map(|t| judge(t, facts)).collect();
    let best = verdicts.iter().filter(|v| v.matches).map(|v| v.score).max();
    let chosen = match best {
        None => Err(invalid(
            "no class matches this machine: give one with --class, or widen a template's [match] section",
        )),
        Some(s) => {
            let top: Vec<&str> = verdicts
                .iter()
                .filter(|v| v.matches && v.score == s)
                .map(|v| v.class.as_str())
                .collect();
            if let [one] = top.as_slice() {
                ClassName::new(*one)
            } else {
                Err(invalid(format!(
                    "classes {} match this machine equally well: give one with --class, or make their [match] sections more specific",
                    top.join(", ")
                )))
            }
        }
    };
    (verdicts, chosen)
}
