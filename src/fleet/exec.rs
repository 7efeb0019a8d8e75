//! Running a command, or copying files, on every node of a set over the system `ssh`.
//!
//! At most `fanout` nodes are worked on at once (ClusterShell's default is 64). Each node has a
//! time limit for the whole command; a node over it has its ssh killed and is reported as timed
//! out (the remote command may go on, as with clush: ssh cannot stop what it started without a
//! terminal). ssh's own exit status 255 means it could not reach or log in to the node.
//!
//! With relays (`--tree`, as rgang does), the set is cut into contiguous slices, one per relay;
//! each relay runs the same aurum there (`aurum exec --json` on its slice, with the addresses
//! given) and its JSON comes back and is merged, so the master keeps one connection per relay
//! instead of one per node.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::nodeset::{self, Target};
use crate::error::{invalid, Error, Result};
use crate::progress::Progress;

/// How to reach the nodes.
#[derive(Clone, Debug)]
pub struct Options {
    /// The ssh command and its options (`["ssh", "-i", "/root/.ssh/cluster"]`).
    pub ssh: Vec<String>,
    /// Nodes worked on at once.
    pub fanout: usize,
    /// The longest a node's command may run (connection included); `None`: no limit.
    pub timeout: Option<Duration>,
    /// Seconds ssh waits for a node to answer (`ConnectTimeout`).
    pub connect_timeout: u64,
    /// Relays (`--tree`); empty: the master reaches every node itself.
    pub relays: Vec<Target>,
    /// The ssh command relays use to reach their nodes.
    pub relay_ssh: String,
    /// The aurum command on a relay.
    pub relay_aurum: String,
}

/// What is done on each node.
#[derive(Clone, Debug)]
pub enum Job {
    /// A shell command line, run by the node's login shell.
    Command(String),
    /// `src` (a file or a directory, with owners, modes, times, ACLs and xattrs) copied into the
    /// directory `dest` on each node, created when missing.
    Copy { src: PathBuf, dest: String },
}

/// How a node's command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Ok,
    /// The command ran and exited non-zero (or was killed by a signal).
    Failed,
    /// Over the time limit: its ssh was killed.
    Timeout,
    /// ssh could not reach the node or log in (its exit status 255), or the relay could not.
    Unreachable,
}

/// One node's result.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeResult {
    pub node: String,
    pub host: String,
    pub status: Status,
    /// The command's exit status, when it exited.
    pub exit: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub seconds: f64,
}

impl NodeResult {
    fn new(t: &Target, status: Status, stderr: String) -> NodeResult {
        NodeResult {
            node: t.name.clone(),
            host: t.host.clone(),
            status,
            exit: None,
            stdout: String::new(),
            stderr,
            seconds: 0.0,
        }
    }

    /// A node whose command could not even start, for `why`.
    pub fn failed(t: &Target, why: &str) -> NodeResult {
        NodeResult::new(t, Status::Failed, why.to_string())
    }

    /// What went wrong, in words (empty when it went well).
    pub fn problem(&self) -> String {
        let last = self.stderr.lines().rev().find(|l| !l.trim().is_empty());
        let said = last.map(|l| format!(": {}", l.trim())).unwrap_or_default();
        match self.status {
            Status::Ok => String::new(),
            Status::Failed => match self.exit {
                Some(code) => format!("exit status {code}"),
                None => "killed by a signal".to_string(),
            },
            Status::Timeout => format!("timed out after {:.0} s", self.seconds),
            Status::Unreachable => format!("unreachable{said}"),
        }
    }
}

/// Runs `job` on every target, in the targets' order in the result.
pub fn run(
    targets: &[Target],
    job: &Job,
    opts: &Options,
    progress: &dyn Progress,
) -> Result<Vec<NodeResult>> {
    if opts.ssh.is_empty() {
        return Err(invalid("the ssh command is empty"));
    }
    // A copy is packed once, and each node's ssh reads the same archive.
    let archive = match job {
        Job::Copy { src, .. } => Some(pack(src)?),
        Job::Command(_) => None,
    };
    let archive_path = archive.as_ref().map(|a| a.path());
    progress.phase("nodes", Some(targets.len() as u64), false);
    let results = if opts.relays.is_empty() {
        fan_out(targets, opts.fanout, progress, |t| {
            direct(t, job, archive_path, opts)
        })
    } else {
        let slices = slice(targets, opts.relays.len());
        let per_relay: Vec<(Target, &[Target])> = opts.relays.iter().cloned().zip(slices).collect();
        let merged = fan_out(&per_relay, opts.relays.len(), progress, |(relay, part)| {
            let r = relayed(relay, part, job, archive_path, opts);
            progress.advance(part.len() as u64);
            r
        });
        merged.into_iter().flatten().collect()
    };
    progress.finish();
    Ok(results)
}

/// Cuts `targets` into `n` contiguous slices of near-equal size (none empty).
fn slice(targets: &[Target], n: usize) -> Vec<&[Target]> {
    let n = n.clamp(1, targets.len().max(1));
    let (size, extra) = (targets.len() / n, targets.len() % n);
    let mut out = Vec::with_capacity(n);
    let mut at = 0;
    for i in 0..n {
        let len = size + usize::from(i < extra);
        if len > 0 {
            out.push(&targets[at..at + len]);
        }
        at += len;
    }
    out
}

/// Applies `work` to every item with at most `fanout` at once; results in the items' order.
pub(crate) fn fan_out<T: Sync, R: Send>(
    items: &[T],
    fanout: usize,
    progress: &dyn Progress,
    work: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let done: Mutex<Vec<Option<R>>> = Mutex::new(items.iter().map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..fanout.clamp(1, items.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                let r = work(item);
                if let Some(slot) = done.lock().unwrap_or_else(|e| e.into_inner()).get_mut(i) {
                    *slot = Some(r);
                }
                progress.advance(1);
            });
        }
    });
    done.into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .flatten()
        .collect()
}

/// The ssh command line to `host` running `remote`.
fn ssh_command(ssh: &[String], connect_timeout: u64, host: &str, remote: &str) -> Command {
    let (prog, words) = ssh.split_first().expect("checked non-empty");
    let mut c = Command::new(prog);
    c.args(words)
        .args(["-o", "BatchMode=yes", "-o"])
        .arg(format!("ConnectTimeout={connect_timeout}"))
        .arg("--")
        .arg(host)
        .arg(remote);
    c
}

/// One node reached from here.
fn direct(t: &Target, job: &Job, archive: Option<&Path>, opts: &Options) -> NodeResult {
    let remote = match job {
        Job::Command(cmd) => cmd.clone(),
        Job::Copy { dest, .. } => unpack_command(dest),
    };
    let mut cmd = ssh_command(&opts.ssh, opts.connect_timeout, &t.host, &remote);
    run_one(t, &mut cmd, archive, opts.timeout)
}

/// The shell command that unpacks a copy's archive from stdin into `dest`.
fn unpack_command(dest: &str) -> String {
    let dest = shell_words::quote(dest);
    format!("mkdir -p {dest} && tar -C {dest} --xattrs --acls --numeric-owner -xpf -")
}

/// Packs `src` into a temporary tar archive (owners, modes, times, ACLs, xattrs, hardlinks).
fn pack(src: &Path) -> Result<tempfile::NamedTempFile> {
    std::fs::symlink_metadata(src).map_err(|e| Error::Io {
        path: src.to_path_buf(),
        source: e,
    })?;
    let parent = src
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = src
        .file_name()
        .ok_or_else(|| invalid(format!("{} names no file to copy", src.display())))?;
    let archive = tempfile::NamedTempFile::new().map_err(|e| Error::Io {
        path: std::env::temp_dir(),
        source: e,
    })?;
    let out = Command::new("tar")
        .arg("-C")
        .arg(parent)
        .args(["--xattrs", "--acls", "--numeric-owner", "-cf"])
        .arg(archive.path())
        .arg("--")
        .arg(name)
        .output()
        .map_err(|e| invalid(format!("cannot run tar: {e}; install tar")))?;
    if !out.status.success() {
        return Err(invalid(format!(
            "tar could not pack {}: {}",
            src.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(archive)
}

/// Runs one ssh to its end or its time limit, feeding it `stdin_file` when given.
fn run_one(
    t: &Target,
    cmd: &mut Command,
    stdin_file: Option<&Path>,
    timeout: Option<Duration>,
) -> NodeResult {
    let start = Instant::now();
    let stdin = match stdin_file.map(std::fs::File::open) {
        None => Stdio::null(),
        Some(Ok(f)) => Stdio::from(f),
        Some(Err(e)) => {
            return NodeResult::new(t, Status::Failed, format!("cannot read the archive: {e}"))
        }
    };
    // Its own process group, so that a time limit stops whatever it started too (a wrapper
    // around ssh, sshpass) and nothing left behind holds the output pipes open.
    let child = cmd
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            return NodeResult::new(
                t,
                Status::Unreachable,
                format!(
                    "cannot run {:?}: {e}; install openssh-client or fix --ssh",
                    cmd.get_program()
                ),
            )
        }
    };
    let (out, err) = (reader(child.stdout.take()), reader(child.stderr.take()));
    let (status, timed_out) = wait(&mut child, timeout);
    // Whatever the command left running in its group goes with it.
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    let exit = status.and_then(|s| s.code());
    let status = match (timed_out, exit) {
        (true, _) => Status::Timeout,
        (false, Some(0)) => Status::Ok,
        (false, Some(255)) => Status::Unreachable,
        _ => Status::Failed,
    };
    NodeResult {
        node: t.name.clone(),
        host: t.host.clone(),
        status,
        exit: if status == Status::Timeout {
            None
        } else {
            exit
        },
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        seconds: start.elapsed().as_secs_f64(),
    }
}

fn reader(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
}

/// Waits for `child`, killing it at `timeout`; its status (none if it could not be had) and
/// whether it was killed for the time.
fn wait(child: &mut Child, timeout: Option<Duration>) -> (Option<std::process::ExitStatus>, bool) {
    let Some(limit) = timeout else {
        return (child.wait().ok(), false);
    };
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return (Some(status), false),
            Ok(None) if Instant::now() >= deadline => {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(child.id() as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                return (child.wait().ok(), true);
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => return (None, false),
        }
    }
}

/// A slice of the set worked on by `relay`: `aurum exec --json` (or `copy`) run there.
fn relayed(
    relay: &Target,
    part: &[Target],
    job: &Job,
    archive: Option<&Path>,
    opts: &Options,
) -> Vec<NodeResult> {
    let names = nodeset::fold(part.iter().map(|t| t.name.as_str()));
    let hosts: Vec<String> = part
        .iter()
        .map(|t| format!("{}={}", t.name, t.host))
        .collect();
    let mut words = vec![
        opts.relay_aurum.clone(),
        "--no-progress".into(),
        "--quiet".into(),
    ];
    let (verb_args, tail): (Vec<String>, Vec<String>) = match job {
        Job::Command(cmd) => (vec!["exec".into()], vec!["--".into(), cmd.clone()]),
        Job::Copy { src, dest } => {
            let name = src
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (
                vec!["copy".into(), "--from-archive".into(), "-".into()],
                vec![name, dest.clone()],
            )
        }
    };
    words.extend(verb_args);
    words.extend([
        "--json".into(),
        "--fanout".into(),
        opts.fanout.to_string(),
        "--connect-timeout".into(),
        opts.connect_timeout.to_string(),
        "--ssh".into(),
        opts.relay_ssh.clone(),
        "--hosts".into(),
        hosts.join(","),
    ]);
    if let Some(t) = opts.timeout {
        words.extend(["--timeout".into(), t.as_secs().max(1).to_string()]);
    }
    words.push(names);
    words.extend(tail);
    let remote = shell_words::join(&words);
    let mut cmd = ssh_command(&opts.ssh, opts.connect_timeout, &relay.host, &remote);
    // The relay's own limit is per node; its slice may take several rounds of its fan-out.
    let rounds = part.len().div_ceil(opts.fanout.max(1)) as u32 + 1;
    let r = run_one(relay, &mut cmd, archive, opts.timeout.map(|t| t * rounds));
    match serde_json::from_str::<Report>(&r.stdout) {
        Ok(report) if r.status != Status::Timeout => report.results,
        _ => {
            let why = match r.status {
                Status::Timeout => "timed out".to_string(),
                _ => format!(
                    "gave no report ({})",
                    r.stderr.lines().last().unwrap_or("no message").trim()
                ),
            };
            part.iter()
                .map(|t| {
                    NodeResult::new(
                        t,
                        Status::Unreachable,
                        format!("relay {} {why}", relay.name),
                    )
                })
                .collect()
        }
    }
}

/// What `aurum exec --json` prints: counts and each node's result.
#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    pub nodes: usize,
    pub ok: usize,
    pub failed: usize,
    pub results: Vec<NodeResult>,
}

impl Report {
    pub fn new(results: Vec<NodeResult>) -> Report {
        let ok = results.iter().filter(|r| r.status == Status::Ok).count();
        Report {
            nodes: results.len(),
            ok,
            failed: results.len() - ok,
            results,
        }
    }
}

/// Unpacks a copy's archive read from `archive` into a fresh temporary directory and returns
/// it with the path of `name` inside (what a relay does with the archive it is sent).
pub fn receive(mut archive: impl Read, name: &str) -> Result<(tempfile::TempDir, PathBuf)> {
    let dir = tempfile::tempdir().map_err(|e| Error::Io {
        path: std::env::temp_dir(),
        source: e,
    })?;
    let mut child = Command::new("tar")
        .arg("-C")
        .arg(dir.path())
        .args(["--xattrs", "--acls", "--numeric-owner", "-xpf", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|e| invalid(format!("cannot run tar: {e}; install tar")))?;
    if let Some(mut stdin) = child.stdin.take() {
        std::io::copy(&mut archive, &mut stdin).map_err(|e| Error::Io {
            path: dir.path().to_path_buf(),
            source: e,
        })?;
    }
    let status = child.wait().map_err(|e| invalid(format!("tar: {e}")))?;
    if !status.success() {
        return Err(invalid("the archive to copy could not be unpacked"));
    }
    let path = dir.path().join(name);
    Ok((dir, path))
}
