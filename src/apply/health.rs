//! `aurum health`: a node's health checks, which its image carries.
//!
//! Checks are executables in the node's `/etc/aurum/health/required.d/` (any failure makes the
//! node unhealthy) and `wanted.d/` (failures are reported, nothing more), as greenboot lays
//! them out. Each runs in name order (run-parts' rules: names of letters, digits, `_` and `-`;
//! editor backups and package leftovers are skipped) with a time limit, in its own process
//! group so a check that starts children cannot outlive its limit. On a root other than `/`
//! they run chrooted into it. The result goes into the node's `state.json` (when aurum manages
//! the root) and is what a rollout's health gate reads.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{IoContext, Result};
pub use crate::format::node::{CheckResult, CheckStatus, HealthRecord};

/// Where checks live, relative to the node's root.
pub const HEALTH_DIR: &str = "etc/aurum/health";

/// The most of a check's output kept (its end).
const KEEP_OUTPUT: usize = 4096;

/// The checks of `root`, required first, each directory in name order.
pub fn checks(root: &Path) -> Result<Vec<(String, bool, PathBuf)>> {
    let mut found = Vec::new();
    for (dir, required) in [("required.d", true), ("wanted.d", false)] {
        let path = root.join(HEALTH_DIR).join(dir);
        let entries = match std::fs::read_dir(&path) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).at(&path),
        };
        let mut names: Vec<(String, PathBuf)> = Vec::new();
        for e in entries {
            let e = e.at(&path)?;
            let name = e.file_name().to_string_lossy().into_owned();
            let file = e.path();
            let meta = std::fs::metadata(&file).at(&file)?;
            if run_parts_name(&name) && meta.is_file() {
                names.push((name, file));
            }
        }
        names.sort();
        found.extend(names.into_iter().map(|(n, f)| (n, required, f)));
    }
    Ok(found)
}

/// Whether run-parts would run a file of this name.
fn run_parts_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Runs every check of `root`, each for at most `limit`.
pub fn run(root: &Path, limit: Duration) -> Result<Vec<CheckResult>> {
    let chroot = root != Path::new("/");
    checks(root)?
        .into_iter()
        .map(|(name, required, file)| {
            let inside = Path::new("/").join(file.strip_prefix(root).unwrap_or(&file));
            Ok(run_one(
                name,
                required,
                &file,
                &inside,
                chroot.then_some(root),
                limit,
            ))
        })
        .collect()
}

fn run_one(
    name: String,
    required: bool,
    file: &Path,
    inside: &Path,
    chroot: Option<&Path>,
    limit: Duration,
) -> CheckResult {
    let start = Instant::now();
    let result = |status, exit, output: String| CheckResult {
        name: name.clone(),
        required,
        status,
        exit,
        seconds: start.elapsed().as_secs_f64(),
        output,
    };
    let executable = std::fs::metadata(file).is_ok_and(|m| m.permissions().mode() & 0o111 != 0);
    if !executable {
        return result(
            CheckStatus::Error,
            None,
            format!("{} is not executable (chmod +x it)", file.display()),
        );
    }
    let mut cmd = match chroot {
        Some(root) => {
            let mut c = Command::new("chroot");
            c.arg(root).arg(inside);
            c
        }
        None => Command::new(inside),
    };
    cmd.current_dir("/")
        .env("AURUM_HEALTH_CHECK", &name)
        .env("AURUM_HEALTH_REQUIRED", if required { "1" } else { "0" })
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return result(CheckStatus::Error, None, format!("cannot run it: {e}")),
    };
    let pid = child.id() as i32;
    // Output and error read together into one buffer, as a terminal would show them.
    let out = child.stdout.take();
    let err = child.stderr.take();
    let readers = [out.map(read_all), err.map(read_all)];
    let deadline = start + limit;
    let (status, timed_out) = loop {
        match child.try_wait() {
            Ok(Some(s)) => break (Some(s), false),
            Ok(None) if Instant::now() >= deadline => {
                // The whole group: a check's children die with it.
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                break (child.wait().ok(), true);
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => break (None, false),
        }
    };
    // What the check left running (a daemon it started, `sleep &`) must not keep the node's
    // health waiting: the whole group goes, as it does at the time limit.
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    let mut output = Vec::new();
    for r in readers.into_iter().flatten() {
        output.extend(r.join().unwrap_or_default());
    }
    let start_at = output.len().saturating_sub(KEEP_OUTPUT);
    let text = String::from_utf8_lossy(output.get(start_at..).unwrap_or_default()).into_owned();
    let exit = status.and_then(|s| s.code());
    let status = match (timed_out, exit) {
        (true, _) => CheckStatus::Timeout,
        (false, Some(0)) => CheckStatus::Pass,
        // 126 and 127: the shell's "cannot execute" and "not found" (a bad #! line).
        (false, Some(126 | 127)) if chroot.is_some() => CheckStatus::Error,
        _ => CheckStatus::Fail,
    };
    result(status, exit, text)
}

fn read_all(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

/// The name of the failed required check `aurum health` adds when a kill left the root between
/// two revisions and it did not bring it to one (see [`check`]).
pub const INTERRUPTED_CHECK: &str = "aurum-interrupted";

/// Runs the checks of `root` and records the result in its node state when aurum manages it
/// (`false` in the second place when it does not: nothing was recorded). `interrupted`: why
/// the root is between two revisions, when it is and was left so; the result then has a
/// failed required check [`INTERRUPTED_CHECK`] saying it, is unhealthy, and does not count as
/// this boot's health check (no boot id).
pub fn check(
    root: &Path,
    limit: Duration,
    interrupted: Option<&str>,
) -> Result<(HealthRecord, bool)> {
    let mut checks = run(root, limit)?;
    if let Some(why) = interrupted {
        checks.insert(
            0,
            CheckResult {
                name: INTERRUPTED_CHECK.into(),
                required: true,
                status: CheckStatus::Error,
                exit: None,
                seconds: 0.0,
                output: why.to_string(),
            },
        );
    }
    let current = crate::apply::node::peek(root)?.and_then(|(s, _)| s.current);
    let record = HealthRecord {
        time: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64),
        revision: current,
        healthy: healthy(&checks),
        checks,
        // A run that left the root between two revisions is not the boot's health check (the
        // next one may still bring the root to one, see `bootcount::health_may_recover`).
        boot_id: match interrupted {
            Some(_) => None,
            None => std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .ok()
                .map(|s| s.trim().to_string()),
        },
    };
    let managed = crate::apply::node::peek(root)?.is_some();
    if managed {
        let node = crate::apply::node::Node::open(root)?;
        let mut state = node.state()?;
        state.health = Some(record.clone());
        node.save_state(&state)?;
    }
    Ok((record, managed))
}

/// Tells the server at `url` how the health check went (`POST /api/v1/reports`, action
/// `health`; the failed checks in the detail). The status page shows it.
pub fn report(
    url: &str,
    options: &crate::apply::source::HttpOptions,
    record: &HealthRecord,
) -> Result<()> {
    use crate::apply::source::{HttpRepo, RevisionSource};
    use crate::format::report::{NodeAction, NodeReport, Outcome};
    let failed: Vec<&str> = record
        .checks
        .iter()
        .filter(|c| c.status != CheckStatus::Pass)
        .map(|c| c.name.as_str())
        .collect();
    let report = NodeReport {
        hostname: crate::apply::client::hostname(),
        image: record.revision.as_ref().and_then(|r| r.image.clone()),
        revision: record.revision.as_ref().map(|r| r.id.clone()),
        action: NodeAction::Health,
        result: if record.healthy {
            Outcome::Ok
        } else {
            Outcome::Failed
        },
        bytes: 0,
        seconds: record.checks.iter().map(|c| c.seconds).sum(),
        detail: if failed.is_empty() {
            String::new()
        } else {
            format!("failed: {}", failed.join(", "))
        },
        boot: None,
    };
    HttpRepo::new(url, None, options)?.report(&report)
}

/// Whether `checks` leave the node healthy: no required check other than passed.
pub fn healthy(checks: &[CheckResult]) -> bool {
    checks
        .iter()
        .all(|c| !c.required || c.status == CheckStatus::Pass)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(dir: &Path, sub: &str, name: &str, body: &str) {
        let d = dir.join(HEALTH_DIR).join(sub);
        std::fs::create_dir_all(&d).unwrap();
        let f = d.join(name);
        std::fs::write(&f, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn required_failures_make_a_node_unhealthy_wanted_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        // On the real root (no chroot): the checks' own paths are absolute.
        let root = dir.path();
        check(root, "required.d", "10-ok", "echo fine");
        check(root, "required.d", "20-slow", "sleep 5 & sleep 5");
        check(root, "wanted.d", "10-bad", "echo broken >&2; exit 3");
        check(root, "wanted.d", "x.dpkg-old", "exit 1");
        let found = checks(root).unwrap();
        let names: Vec<&str> = found.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(names, ["10-ok", "20-slow", "10-bad"]);
        let results: Vec<CheckResult> = found
            .into_iter()
            .map(|(n, req, f)| run_one(n, req, &f, &f, None, Duration::from_millis(500)))
            .collect();
        assert_eq!(results[0].status, CheckStatus::Pass);
        assert_eq!(results[0].output, "fine\n");
        assert_eq!(results[1].status, CheckStatus::Timeout);
        assert!(
            results[1].seconds < 3.0,
            "the group was not killed at the limit"
        );
        assert_eq!(results[2].status, CheckStatus::Fail);
        assert_eq!(results[2].exit, Some(3));
        assert_eq!(results[2].output, "broken\n");
        assert!(!healthy(&results));
        assert!(healthy(&[results[0].clone(), results[2].clone()]));
    }
}
