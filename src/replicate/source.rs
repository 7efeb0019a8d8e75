//! Where `aurum pull` reads another repository's published files: a local directory (a
//! repository's top or a copy of its `public/`), an HTTP server (`aurum serve` or any static
//! server of `public/`), or a host reached with the system `ssh`, where plain `cat` and
//! `tail` read the files (no aurum needed there).
//!
//! A puller only reads files by their path relative to `public/`, whole or from an offset
//! (to resume a pack a killed pull left half fetched), so that is all a [`Source`] does. It
//! counts the bytes it moved, which the pull reports.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::apply::source::{HttpOptions, HttpRepo, RevisionSource};
use crate::capture::remote::{ssh_defaults, SshUrl};
use crate::error::{invalid, Error, IoContext, Result};
use crate::progress::Progress;

/// Bytes asked for in one HTTP range request while fetching a pack: small enough that a
/// killed pull loses little (a piece is written once it has all come: six kills of a 50 MB
/// pull cost 17 % more bytes than a pull left alone with 8 MiB pieces, 0 to 13 % with
/// 2 MiB), large enough that a request costs nothing next to its data.
const PIECE: u64 = 2 << 20;

/// Another repository's published files.
pub trait Source {
    /// The source as the administrator gave it, for messages.
    fn describe(&self) -> String;
    /// A whole file (relative to `public/`), `None` when the source has no such file.
    fn get(&self, path: &str) -> Result<Option<Vec<u8>>>;
    /// Appends the bytes of `path` from `offset` (its whole length being `size`) to `out`,
    /// advancing `progress` by the bytes written.
    fn fetch_from(
        &self,
        path: &str,
        offset: u64,
        size: u64,
        out: &mut File,
        progress: &dyn Progress,
    ) -> Result<()>;
    /// Bytes read from the source so far.
    fn bytes_moved(&self) -> u64;
}

/// Opens a source: `http://…`, `ssh://[user@]host[:port]/path`, or a directory. `ssh` is the
/// ssh command with its options (`["ssh", "-i", "key"]`).
pub fn open(url: &str, ssh: &[String], http: &HttpOptions) -> Result<Box<dyn Source>> {
    if url.starts_with("http://") || url.starts_with("https://") {
        let repo = HttpRepo::new(url, None, http)?;
        return Ok(Box::new(Http {
            url: url.to_string(),
            repo,
        }));
    }
    if let Some(parsed) = SshUrl::parse(url) {
        return Ok(Box::new(Ssh::new(parsed?, ssh)?));
    }
    if url.contains("://") {
        return Err(invalid(format!(
            "`{url}`: give a source as http://HOST:PORT, ssh://[user@]host/path or a directory"
        )));
    }
    Ok(Box::new(Dir::new(Path::new(url))?))
}

/// A repository on a local (or mounted) file system.
struct Dir {
    given: PathBuf,
    /// Its `public/` (or the directory itself when it is a copy of one).
    public: PathBuf,
    moved: AtomicU64,
    /// The source repository's lock, held shared while we read (a gc there waits), when the
    /// directory is a repository's top.
    _lock: Option<File>,
}

impl Dir {
    fn new(dir: &Path) -> Result<Dir> {
        let public = if dir.join(crate::store::PUBLISHED).join("FORMAT").exists() {
            dir.join(crate::store::PUBLISHED)
        } else if dir.join("FORMAT").exists() && dir.join("refs").is_dir() {
            dir.to_path_buf()
        } else {
            return Err(Error::NotFound(format!(
                "{} is no aurum repository (nor a copy of a repository's public/ directory)",
                dir.display()
            )));
        };
        let lock = match File::open(dir.join("lock")) {
            Ok(f) => {
                crate::sys::lock_file(
                    &f,
                    &dir.join("lock"),
                    false,
                    "the source repository is being garbage-collected; waiting for it",
                )?;
                Some(f)
            }
            Err(_) => None,
        };
        Ok(Dir {
            given: dir.to_path_buf(),
            public,
            moved: AtomicU64::new(0),
            _lock: lock,
        })
    }
}

impl Source for Dir {
    fn describe(&self) -> String {
        self.given.display().to_string()
    }

    fn get(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let p = self.public.join(path);
        match std::fs::read(&p) {
            Ok(b) => {
                self.moved.fetch_add(b.len() as u64, Ordering::Relaxed);
                Ok(Some(b))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).at(&p),
        }
    }

    fn fetch_from(
        &self,
        path: &str,
        offset: u64,
        _size: u64,
        out: &mut File,
        progress: &dyn Progress,
    ) -> Result<()> {
        let p = self.public.join(path);
        let mut f = File::open(&p).at(&p)?;
        f.seek(SeekFrom::Start(offset)).at(&p)?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).at(&p)?;
            if n == 0 {
                return Ok(());
            }
            out.write_all(buf.get(..n).unwrap_or_default())
                .map_err(Error::Os)?;
            self.moved.fetch_add(n as u64, Ordering::Relaxed);
            progress.advance(n as u64);
        }
    }

    fn bytes_moved(&self) -> u64 {
        self.moved.load(Ordering::Relaxed)
    }
}

/// A repository served over HTTP, read with the node's client (retries, timeouts, proxies).
struct Http {
    url: String,
    repo: HttpRepo,
}

impl Source for Http {
    fn describe(&self) -> String {
        self.url.clone()
    }

    fn get(&self, path: &str) -> Result<Option<Vec<u8>>> {
        match self.repo.get(path) {
            Ok(b) => Ok(Some(b)),
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn fetch_from(
        &self,
        path: &str,
        offset: u64,
        size: u64,
        out: &mut File,
        progress: &dyn Progress,
    ) -> Result<()> {
        let mut at = offset;
        while at < size {
            let end = (at + PIECE).min(size) - 1;
            let bytes = self.repo.get_range(path, at, end, progress)?;
            out.write_all(&bytes).map_err(Error::Os)?;
            progress.advance(bytes.len() as u64);
            at = end + 1;
        }
        Ok(())
    }

    fn bytes_moved(&self) -> u64 {
        self.repo.bytes_received()
    }
}

/// A repository on a host reached with the system ssh; files are read with `cat` and
/// `tail -c +N`, over one shared connection (ControlMaster).
struct Ssh {
    url: SshUrl,
    command: Vec<String>,
    /// The remote directory `public/` files are under.
    public: String,
    moved: AtomicU64,
}

/// `ssh [options] host -- script`: the administrator's ssh command and options first (ssh
/// keeps the first value it reads for an option), then connection sharing, no prompts.
pub fn ssh_command(url: &SshUrl, ssh: &[String], script: &str) -> Result<Command> {
    let (prog, opts) = ssh
        .split_first()
        .ok_or_else(|| invalid("the ssh command is empty"))?;
    let mut cmd = Command::new(prog);
    cmd.args(opts)
        .args(ssh_defaults())
        .args(["-o", "BatchMode=yes"]);
    if let Some(port) = url.port {
        cmd.arg("-p").arg(port.to_string());
    }
    if let Some(user) = &url.user {
        cmd.arg("-l").arg(user);
    }
    cmd.arg("--").arg(&url.host).arg(script);
    Ok(cmd)
}

/// Exit status our remote commands give for a file that is not there (ssh itself uses 255).
const MISSING: i32 = 44;

impl Ssh {
    fn new(url: SshUrl, ssh: &[String]) -> Result<Ssh> {
        let mut me = Ssh {
            public: url.path.trim_end_matches('/').to_string(),
            url,
            command: ssh.to_vec(),
            moved: AtomicU64::new(0),
        };
        let top = me.public.clone();
        me.public = format!("{top}/{}", crate::store::PUBLISHED);
        if me.get("FORMAT")?.is_none() {
            me.public = top;
            if me.get("FORMAT")?.is_none() {
                return Err(Error::NotFound(format!(
                    "{} is no aurum repository (no FORMAT there nor in its public/)",
                    me.url.canonical()
                )));
            }
        }
        Ok(me)
    }

    /// Runs `script` (a POSIX shell command) on the host; stdout goes to `out`.
    fn run(&self, script: &str, out: Stdio) -> Result<std::process::Child> {
        ssh_command(&self.url, &self.command, script)?
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                Error::Remote(format!(
                    "cannot run `{}`: {e}; install openssh-client or pass --ssh",
                    self.command.join(" ")
                ))
            })
    }

    fn quoted(&self, path: &str) -> String {
        shell_words::quote(&format!("{}/{path}", self.public)).into_owned()
    }

    /// Waits for a remote command: `Ok(false)` when the file was missing.
    fn finish(&self, child: std::process::Child, what: &str) -> Result<bool> {
        let out = child.wait_with_output().map_err(Error::Os)?;
        match out.status.code() {
            Some(0) => Ok(true),
            Some(MISSING) => Ok(false),
            _ => Err(Error::Remote(format!(
                "{}: reading {what} over ssh failed ({}): {}",
                self.url.canonical(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))),
        }
    }
}

impl Source for Ssh {
    fn describe(&self) -> String {
        self.url.canonical()
    }

    fn get(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let q = self.quoted(path);
        let mut child = self.run(
            &format!("if [ -f {q} ]; then exec cat {q}; else exit {MISSING}; fi"),
            Stdio::piped(),
        )?;
        let mut data = Vec::new();
        child
            .stdout
            .take()
            .expect("piped")
            .read_to_end(&mut data)
            .map_err(Error::Os)?;
        if !self.finish(child, path)? {
            return Ok(None);
        }
        self.moved.fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(Some(data))
    }

    fn fetch_from(
        &self,
        path: &str,
        offset: u64,
        _size: u64,
        out: &mut File,
        progress: &dyn Progress,
    ) -> Result<()> {
        let q = self.quoted(path);
        let mut child = self.run(
            &format!(
                "if [ -f {q} ]; then exec tail -c +{} {q}; else exit {MISSING}; fi",
                offset + 1
            ),
            Stdio::piped(),
        )?;
        let mut from = child.stdout.take().expect("piped");
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = from.read(&mut buf).map_err(Error::Os)?;
            if n == 0 {
                break;
            }
            out.write_all(buf.get(..n).unwrap_or_default())
                .map_err(Error::Os)?;
            self.moved.fetch_add(n as u64, Ordering::Relaxed);
            progress.advance(n as u64);
        }
        if !self.finish(child, path)? {
            return Err(Error::NotFound(format!(
                "{}: {path} is listed but not there",
                self.url.canonical()
            )));
        }
        Ok(())
    }

    fn bytes_moved(&self) -> u64 {
        self.moved.load(Ordering::Relaxed)
    }
}
