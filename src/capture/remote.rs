//! A remote golden client, reached with the system `ssh` running `aurum agent` there.
//!
//! We use the administrator's own ssh (keys, agent, ProxyJump, known_hosts all apply) rather
//! than an ssh library, and the same aurum binary on both ends. Only what the repository lacks
//! crosses the wire: the agent sends stat data first, hashes only the files the stat cache cannot
//! vouch for, and sends the chunks the repository lacks as it reads them, grouped and
//! compressed on the golden client.
//!
//! ssh itself is asked (ahead of the administrator's ssh_config, behind anything given with
//! `--ssh`, since ssh keeps the first value it reads for each option) to keep its connection
//! for a minute (`ControlMaster`/`ControlPersist`), so that the next capture of the same client
//! skips the key exchange and login, which on a fast link cost more than an unchanged capture;
//! not to compress what is compressed already; and to prefer AES-GCM, which the processors
//! of a cluster run in hardware.

use std::io::{BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use super::agent::PIPE_BUFFER;
use super::scan::Scanned;
use super::{BlobSink, Content, Source};
use crate::error::{invalid, Error, Result};
use crate::format::pack::{Codec, IndexEntry};
use crate::format::wire::{self, Msg, PROTOCOL_VERSION};
use crate::progress::Progress;
use crate::store::{decode_blob, PreparedGroup};

/// `ssh://[user@]host[:port][/path]`, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SshUrl {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    pub path: String,
}

impl SshUrl {
    /// Parses a golden-client URL; `None` when `s` is not an ssh URL at all.
    pub fn parse(s: &str) -> Option<Result<SshUrl>> {
        let rest = s.strip_prefix("ssh://")?;
        Some(Self::parse_rest(s, rest))
    }

    fn parse_rest(full: &str, rest: &str) -> Result<SshUrl> {
        let bad = || {
            invalid(format!(
                "`{full}` is not a valid golden client URL: use ssh://[user@]host[:port][/path]"
            ))
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].to_string()),
            None => (rest, "/".to_string()),
        };
        let (user, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u.to_string()), h),
            None => (None, authority),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(bad)?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p.parse().map_err(|_| bad())?),
                None if after.is_empty() => None,
                None => return Err(bad()),
            };
            (h.to_string(), port)
        } else {
            match hostport.split_once(':') {
                Some((h, p)) => (h.to_string(), Some(p.parse().map_err(|_| bad())?)),
                None => (hostport.to_string(), None),
            }
        };
        // A host or user starting with `-` would be read by ssh as an option.
        if host.is_empty()
            || host.starts_with('-')
            || user.as_deref().is_some_and(|u| u.starts_with('-'))
        {
            return Err(bad());
        }
        Ok(SshUrl {
            user,
            host,
            port,
            path,
        })
    }

    /// The canonical text, used to name the revision's source and key the stat cache.
    pub fn canonical(&self) -> String {
        let user = self
            .user
            .as_deref()
            .map(|u| format!("{u}@"))
            .unwrap_or_default();
        let port = self.port.map(|p| format!(":{p}")).unwrap_or_default();
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("ssh://{user}{host}{port}{}", self.path)
    }
}

/// A golden client behind ssh.
pub struct RemoteSource {
    url: SshUrl,
    child: Child,
    to: Option<BufWriter<ChildStdin>>,
    from: BufReader<ChildStdout>,
    excludes: Vec<String>,
    /// The ssh command line as run, for error messages.
    shown: String,
    agent: String,
}

impl RemoteSource {
    /// Starts `ssh ... AGENT agent` and checks the agent's greeting.
    ///
    /// `ssh` is the ssh command with its options (`["ssh", "-i", "key"]`), `agent` the command
    /// that runs aurum on the golden client.
    pub fn connect(
        url: SshUrl,
        ssh: &[String],
        agent: &str,
        excludes: Vec<String>,
    ) -> Result<RemoteSource> {
        let (prog, args) = ssh
            .split_first()
            .ok_or_else(|| invalid("the ssh command is empty"))?;
        let mut cmd = Command::new(prog);
        cmd.args(args);
        cmd.args(ssh_defaults());
        if let Some(port) = url.port {
            cmd.arg("-p").arg(port.to_string());
        }
        let dest = match &url.user {
            Some(u) => format!("{u}@{}", url.host),
            None => url.host.clone(),
        };
        cmd.arg(&dest).arg(format!("{agent} agent"));
        let mut shown: Vec<String> = ssh.to_vec();
        if let Some(port) = url.port {
            shown.extend(["-p".to_string(), port.to_string()]);
        }
        shown.push(dest);
        let shown = shell_words::join(shown);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().map_err(|e| {
            Error::Remote(format!(
                "cannot run `{prog}`: {e}; install openssh-client or pass --ssh"
            ))
        })?;
        let to = Some(BufWriter::with_capacity(
            PIPE_BUFFER,
            child.stdin.take().expect("piped"),
        ));
        let from = BufReader::with_capacity(PIPE_BUFFER, child.stdout.take().expect("piped"));
        let mut me = RemoteSource {
            url,
            child,
            to,
            from,
            excludes,
            shown,
            agent: agent.to_string(),
        };
        match me.recv()? {
            Msg::Hello { version } if version == PROTOCOL_VERSION => Ok(me),
            Msg::Hello { version } => Err(Error::Remote(format!(
                "the golden client's aurum speaks agent protocol {version}, this one {PROTOCOL_VERSION}: install the same aurum version on both"
            ))),
            other => Err(Error::Remote(format!("unexpected first frame from the agent: {other:?}"))),
        }
    }

    fn send(&mut self, msg: &Msg) -> Result<()> {
        let to = self
            .to
            .as_mut()
            .ok_or_else(|| Error::Remote("the connection to the agent is closed".into()))?;
        wire::send(to, msg)?;
        to.flush()?;
        Ok(())
    }

    fn recv(&mut self) -> Result<Msg> {
        match wire::recv(&mut self.from) {
            Ok(Some(Msg::Error(e))) => Err(Error::Remote(format!(
                "the agent on {} failed: {e}",
                self.url.host
            ))),
            Ok(Some(m)) => Ok(m),
            Ok(None) | Err(_) => {
                // The agent may still be waiting for input: end it before reaping ssh.
                drop(self.to.take());
                let _ = self.child.kill();
                let status = self.child.wait().ok();
                Err(Error::Remote(format!(
                    "the connection to {} ended ({}); check that `{} {} agent --help` works without a password prompt (fix the ssh options with --ssh, or the remote command with --agent-command)",
                    self.url.host,
                    status.map(|s| s.to_string()).unwrap_or_else(|| "no status".into()),
                    self.shown,
                    self.agent,
                )))
            }
        }
    }
}

impl RemoteSource {
    /// Never store what we have not checked: a file that changed between hashing and
    /// sending, or a damaged transfer, fails here.
    fn check_blob(
        &self,
        id: crate::format::Id,
        codec: Codec,
        raw_len: u32,
        payload: &[u8],
    ) -> Result<Vec<u8>> {
        let entry = IndexEntry {
            id,
            offset: 0,
            stored_len: payload.len() as u32,
            raw_len,
            codec,
            inner: 0,
        };
        if codec == Codec::ZstdGroup {
            return Err(Error::Remote(
                "the agent sent a group as a blob; is the same aurum version installed on both ends?".into(),
            ));
        }
        decode_blob(&entry, payload).map_err(|_| self.damaged())
    }

    fn damaged(&self) -> Error {
        Error::Remote(format!(
            "a chunk from {} does not match its hash (a file changed during the capture?); run getimage again",
            self.url.host
        ))
    }
}

/// The ssh options a capture adds after the administrator's `--ssh` words (see the module
/// documentation); a value given there wins.
pub fn ssh_defaults() -> Vec<String> {
    let mut opts = vec![
        "-o".to_string(),
        "Compression=no".to_string(),
        "-o".to_string(),
        "Ciphers=^aes128-gcm@openssh.com".to_string(),
    ];
    if let Some(dir) = control_dir() {
        opts.extend([
            "-o".to_string(),
            "ControlMaster=auto".to_string(),
            "-o".to_string(),
            format!("ControlPath={}/%C", dir.display()),
            "-o".to_string(),
            "ControlPersist=60".to_string(),
        ]);
    }
    opts
}

/// A directory only this user can enter, for ssh's connection sockets: under
/// `$XDG_RUNTIME_DIR`, else `/tmp/aurum-ssh-UID`. `None` (no connection sharing) when it
/// cannot be made or belongs to someone else.
fn control_dir() -> Option<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let uid = nix::unistd::getuid().as_raw();
    let dir = match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("aurum-ssh"),
        _ => PathBuf::from(format!("/tmp/aurum-ssh-{uid}")),
    };
    let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
    let meta = std::fs::symlink_metadata(&dir).ok()?;
    (meta.is_dir() && meta.uid() == uid && meta.permissions().mode() & 0o077 == 0).then_some(dir)
}

impl Drop for RemoteSource {
    fn drop(&mut self) {
        // Closing stdin ends the agent; then reap ssh.
        drop(self.to.take());
        let _ = self.child.wait();
    }
}

impl Source for RemoteSource {
    fn describe(&self) -> String {
        self.url.canonical()
    }

    /// The agent reads every entry's xattrs on the golden client: no stat cache lookup here.
    fn scan<'e>(
        &mut self,
        progress: &dyn Progress,
        _lookup: Option<&mut super::scan::Lookup<'e>>,
        emit: &mut super::scan::Emit<'e>,
    ) -> Result<Vec<String>> {
        let msg = Msg::Scan {
            root: self.url.path.clone().into_bytes(),
            excludes: self.excludes.clone(),
        };
        self.send(&msg)?;
        progress.phase("scanning (remote)", None, false);
        let mut warnings = Vec::new();
        loop {
            match self.recv()? {
                Msg::Entry { entry, stat } => {
                    emit(Scanned {
                        entry,
                        stat,
                        vouched: false,
                    })?;
                    progress.advance(1);
                }
                Msg::Warning(w) => warnings.push(w),
                Msg::Done => break,
                other => {
                    return Err(Error::Remote(format!(
                        "unexpected frame while scanning: {other:?}"
                    )))
                }
            }
        }
        progress.finish();
        Ok(warnings)
    }

    fn hash(
        &mut self,
        files: &[usize],
        scanned: &[Scanned],
        sink: &dyn BlobSink,
        progress: &dyn Progress,
    ) -> Result<Vec<Option<Content>>> {
        self.send(&Msg::Hash {
            files: files.iter().map(|&i| i as u64).collect(),
            known: sink.known()?,
            level: crate::store::level() as u8,
        })?;
        let size = |file: u64| {
            usize::try_from(file)
                .ok()
                .and_then(|i| scanned.get(i))
                .map_or(0, |s| s.stat.size)
        };
        let total: u64 = files.iter().map(|&i| size(i as u64)).sum();
        progress.phase("hashing (remote)", Some(total), true);
        // Outer `None`: no answer yet; inner `None`: the file vanished.
        let mut out: Vec<Option<Option<Content>>> = vec![None; files.len()];
        let position: std::collections::HashMap<u64, usize> = files
            .iter()
            .enumerate()
            .map(|(p, &i)| (i as u64, p))
            .collect();
        let at = |file: u64| {
            position
                .get(&file)
                .copied()
                .ok_or_else(|| Error::Remote(format!("agent hashed a file not asked for ({file})")))
        };
        loop {
            match self.recv()? {
                Msg::Chunks {
                    file,
                    chunks,
                    extents,
                } => {
                    let p = at(file)?;
                    progress.advance(size(file));
                    if let Some(slot) = out.get_mut(p) {
                        *slot = Some(Some(Content { chunks, extents }));
                    }
                }
                Msg::Vanished { file } => {
                    let p = at(file)?;
                    progress.advance(size(file));
                    if let Some(slot) = out.get_mut(p) {
                        *slot = Some(None);
                    }
                }
                Msg::Blob {
                    id,
                    codec,
                    raw_len,
                    payload,
                } => {
                    if sink.claim(&id)? {
                        let raw = self.check_blob(id, codec, raw_len, &payload)?;
                        super::store(sink, &id, &raw)?;
                    }
                }
                Msg::Group { payload } => {
                    let (group, body) =
                        PreparedGroup::received(payload).map_err(|_| self.damaged())?;
                    sink.put_received(group, &body)?;
                }
                Msg::Done => break,
                other => {
                    return Err(Error::Remote(format!(
                        "unexpected frame while hashing: {other:?}"
                    )))
                }
            }
        }
        progress.finish();
        out.into_iter()
            .map(|c| c.ok_or_else(|| Error::Remote("agent skipped a file".into())))
            .collect()
    }

    fn fetch(
        &mut self,
        wants: &[(usize, Vec<u32>)],
        _scanned: &[Scanned],
        sink: &dyn BlobSink,
        progress: &dyn Progress,
    ) -> Result<Vec<usize>> {
        self.send(&Msg::Fetch {
            wants: wants.iter().map(|(i, n)| (*i as u64, n.clone())).collect(),
        })?;
        let mut total: usize = wants.iter().map(|w| w.1.len()).sum();
        progress.phase("receiving", Some(total as u64), false);
        let mut got = 0usize;
        let mut vanished = Vec::new();
        loop {
            match self.recv()? {
                Msg::Blob {
                    id,
                    codec,
                    raw_len,
                    payload,
                } => {
                    let raw = self.check_blob(id, codec, raw_len, &payload)?;
                    super::store(sink, &id, &raw)?;
                    got += 1;
                    progress.advance(1);
                }
                Msg::Vanished { file } => {
                    let w = wants.iter().find(|w| w.0 as u64 == file).ok_or_else(|| {
                        Error::Remote(format!("agent fetched a file not asked for ({file})"))
                    })?;
                    total -= w.1.len();
                    vanished.push(w.0);
                }
                Msg::Done => break,
                other => {
                    return Err(Error::Remote(format!(
                        "unexpected frame while receiving: {other:?}"
                    )))
                }
            }
        }
        progress.finish();
        if got != total {
            return Err(Error::Remote(format!(
                "the agent sent {got} of {total} chunks (files changed during the capture?); run getimage again"
            )));
        }
        Ok(vanished)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ssh_urls() {
        let u = SshUrl::parse("ssh://root@node1:2222/srv/root")
            .unwrap()
            .unwrap();
        assert_eq!(u.user.as_deref(), Some("root"));
        assert_eq!(u.host, "node1");
        assert_eq!(u.port, Some(2222));
        assert_eq!(u.path, "/srv/root");
        let u = SshUrl::parse("ssh://gold").unwrap().unwrap();
        assert_eq!(u.path, "/");
        assert_eq!(u.canonical(), "ssh://gold/");
        let u = SshUrl::parse("ssh://[::1]:22/x").unwrap().unwrap();
        assert_eq!(u.host, "::1");
        assert!(SshUrl::parse("ssh://host:notaport").unwrap().is_err());
        assert!(SshUrl::parse("/srv/image").is_none());
    }
}
