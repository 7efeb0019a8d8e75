//! `aurum chroot`: editing a revision in a chroot and capturing the result as a new revision.
//!
//! A session has three steps, each its own function so that a kept work directory can be
//! resumed later:
//!
//! 1. [`prepare`] checks the revision out into a new work directory with the apply engine. The
//!    work tree is made of new files, never hardlinks or reflinks into the packs, so nothing
//!    the command does can reach the repository.
//! 2. [`run`] mounts proc, sysfs, a small /dev, a tmpfs on /run and the host's resolv.conf into
//!    the tree, runs the command chrooted there, and unmounts. [`Mounts`] unmounts in its
//!    `Drop` too, so an error or a panic cannot leave a mount behind, and SIGINT, SIGTERM and
//!    SIGHUP are held for us while the command runs ([`Signals`]) and passed on to it rather
//!    than killing us; an interrupted session never commits, even when the command ended
//!    first (a Ctrl-C reaches both).
//! 3. [`commit`] captures the tree as a new revision whose parent is the edited revision and
//!    whose source reads `chroot:IMAGE@N`. The mount points and the per-machine files in
//!    [`KEEP_FROM_PARENT`] are taken from the parent as they are (see [`crate::capture::keep`]),
//!    so the new revision differs from its parent exactly by what the command changed.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::signal::{kill, sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::unistd::Pid;

use crate::apply::ApplyReport;
use crate::capture::keep::Keep;
use crate::capture::{CaptureOptions, CaptureReport, Edit, LocalSource};
use crate::catalog::Revision;
use crate::error::{invalid, Error, IoContext, Result};
use crate::excludes::{Excludes, ALWAYS_EXCLUDED};
pub use crate::format::chroot::WorkMeta;
use crate::format::chroot::{decode_points, encode_points, Created, META, POINTS};
use crate::format::Id;
use crate::progress::Progress;
use crate::repo::diff::Change;
use crate::repo::{check_name, Repository};

/// What a new revision takes from its parent instead of from the work tree.
///
/// The first five are where the chroot's own filesystems were mounted: whatever is there
/// afterwards belongs to the host or to the session. The rest are scratch space (the
/// directories themselves too, so that a file left there does not even change their mtime) and the
/// identity of one machine, which package scripts create in a chroot (openssh-server makes
/// host keys, systemd a machine-id) and which every node must make for itself.
///
/// Everything else the command changes is captured, including what getimage leaves out of a
/// running golden client because there it is runtime state (/mnt, /media, /var/lib/nfs,
/// /etc/lvm, /etc/hostname): in a chroot nothing runs, so a change there is one somebody made.
pub const KEEP_FROM_PARENT: &[&str] = &[
    "/proc",
    "/sys",
    "/dev",
    "/run",
    "/etc/resolv.conf",
    "/tmp",
    "/var/tmp",
    "/etc/machine-id",
    "/var/lib/dbus/machine-id",
    "/etc/ssh/ssh_host_*",
];

/// How long a command gets to end after we pass it a signal, before it is killed.
const GRACE: Duration = Duration::from_secs(10);

/// A work directory: `DIR/chroot.json` and the tree in `DIR/root`.
pub struct WorkDir {
    pub dir: PathBuf,
    pub meta: WorkMeta,
}

impl WorkDir {
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// Opens a kept work directory.
    pub fn open(dir: &Path) -> Result<WorkDir> {
        let path = dir.join(META);
        let text = fs::read_to_string(&path).map_err(|e| {
            invalid(format!(
                "{} is not a work directory of `aurum chroot` (reading {META}: {e})",
                dir.display()
            ))
        })?;
        let meta = WorkMeta::decode(text.as_bytes(), &path)?;
        let dir = fs::canonicalize(dir).at(dir)?;
        Ok(WorkDir { dir, meta })
    }

    fn save(&self) -> Result<()> {
        let path = self.dir.join(META);
        fs::write(&path, self.meta.encode()).at(&path)
    }

    /// Deletes the work directory, after making sure nothing is mounted below it (a recursive
    /// delete through a bind mount of /dev would delete the host's devices).
    pub fn remove(self) -> Result<()> {
        stop_stragglers(&self.root());
        unmount_below(&self.root())?;
        fs::remove_dir_all(&self.dir).at(&self.dir)
    }
}

/// The source a chroot edit of `parent` records (`chroot:compute@3`).
pub fn source_of(parent: &Revision) -> String {
    format!("chroot:{}", parent.name())
}

/// The revision a chroot edit was made from, read back from a revision's source.
pub fn edited_from(source: &str) -> Option<&str> {
    source.strip_prefix("chroot:")
}

/// Checks `parent` out into a new work directory under `under`, for a new revision of `image`.
pub fn prepare(
    repo: &Repository,
    parent: &Revision,
    image: &str,
    message: &str,
    under: &Path,
    progress: &dyn Progress,
) -> Result<(WorkDir, ApplyReport)> {
    check_name("image", image)?;
    require_root()?;
    fs::create_dir_all(under).at(under)?;
    let dir = tempfile::Builder::new()
        .prefix("chroot-")
        .tempdir_in(under)
        .at(under)?
        .keep();
    let work = WorkDir {
        dir: fs::canonicalize(&dir).at(&dir)?,
        meta: WorkMeta {
            parent: parent.id.hex(),
            parent_name: parent.name(),
            image: image.to_string(),
            message: message.to_string(),
        },
    };
    work.save()?;
    let manifest = repo.load_manifest(&parent.id)?;
    let blobs = repo.blobs_for_command()?;
    match crate::apply::checkout(&manifest, &blobs, &work.root(), progress) {
        Ok(report) => Ok((work, report)),
        // Nothing to resume from: the checkout took its files back, the directory goes too.
        Err(e) => {
            let _ = fs::remove_dir_all(&work.dir);
            Err(e)
        }
    }
}

fn require_root() -> Result<()> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(invalid(
            "aurum chroot mounts filesystems and calls chroot(2): run it as root",
        ))
    }
}

/// How the command ended.
#[derive(Debug)]
pub struct RunOutcome {
    pub status: ExitStatus,
    /// The signal we received (and passed on) while it ran or as it ended, if any.
    pub interrupted: Option<Signal>,
}

/// How a session's command ended, as far as committing goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Exit status 0, and nobody interrupted the session.
    Success,
    /// It exited non-zero by itself: the only failure `--commit-on-failure` commits.
    Failed,
    /// A signal ended it that did not come through us (the OOM killer, a `kill -9`): the
    /// command stopped wherever it was, so the tree is in no state to commit.
    Killed,
    /// We got SIGINT, SIGTERM or SIGHUP while it ran: never committed, whatever its status
    /// (a Ctrl-C reaches the whole process group, so the command may well have caught it and
    /// exited 130, or 1, by itself).
    Interrupted(Signal),
}

impl RunOutcome {
    pub fn ending(&self) -> Ending {
        match (self.interrupted, self.status.code()) {
            (Some(sig), _) => Ending::Interrupted(sig),
            (None, Some(0)) => Ending::Success,
            (None, Some(_)) => Ending::Failed,
            (None, None) => Ending::Killed,
        }
    }

    /// Whether the session's tree may become a revision; `on_failure` is
    /// `--commit-on-failure`.
    pub fn commits(&self, on_failure: bool) -> bool {
        match self.ending() {
            Ending::Success => true,
            Ending::Failed => on_failure,
            Ending::Killed | Ending::Interrupted(_) => false,
        }
    }

    /// Whether the command succeeded and nobody interrupted it.
    pub fn success(&self) -> bool {
        self.ending() == Ending::Success
    }

    /// `exit status 3`, `killed by SIGTERM`.
    pub fn describe(&self) -> String {
        match (self.status.code(), self.status.signal()) {
            (Some(c), _) => format!("exit status {c}"),
            (None, Some(s)) => match Signal::try_from(s) {
                Ok(sig) => format!("killed by {sig}"),
                Err(_) => format!("killed by signal {s}"),
            },
            _ => self.status.to_string(),
        }
    }
}

/// Runs `command` (argv; empty for an interactive login shell of the image) chrooted in `root`
/// with the chroot's filesystems mounted, and unmounts them again whatever happens.
pub fn run(root: &Path, command: &[OsString]) -> Result<RunOutcome> {
    require_root()?;
    let root = fs::canonicalize(root).at(root)?;
    let argv = if command.is_empty() {
        default_shell(&root)
    } else {
        command.to_vec()
    };
    let signals = Signals::catch()?;
    let mut mounts = Mounts::new(&root);
    mounts.setup()?;
    if let Some(sig) = signals.take() {
        mounts.teardown()?;
        return Err(invalid(format!(
            "interrupted by {sig} before the command started; nothing ran"
        )));
    }
    let outcome = spawn_and_wait(&root, &argv, &signals);
    // The command's processes may outlive it (a daemon a package script started); they would
    // keep the mounts busy and change the tree while it is captured.
    stop_stragglers(&root);
    mounts.teardown()?;
    let mut outcome = outcome?;
    // A Ctrl-C while we tidied up means "stop" as much as one while the command ran. After
    // the release, the default actions are back: a later one ends aurum before it commits.
    let late = signals.release();
    if outcome.interrupted.is_none() {
        outcome.interrupted = late;
    }
    Ok(outcome)
}

/// The image's `$SHELL` when the image has it, else its /bin/sh; as a login shell.
fn default_shell(root: &Path) -> Vec<OsString> {
    let shell = std::env::var_os("SHELL")
        .filter(|s| {
            let rel = Path::new(s).strip_prefix("/").unwrap_or(Path::new(s));
            Path::new(s).is_absolute() && fs::symlink_metadata(root.join(rel)).is_ok()
        })
        .unwrap_or_else(|| "/bin/sh".into());
    vec![shell, "-l".into()]
}

fn spawn_and_wait(root: &Path, argv: &[OsString], signals: &Signals) -> Result<RunOutcome> {
    let [program, args @ ..] = argv else {
        return Err(invalid("no command to run in the image"));
    };
    let mut cmd = std::process::Command::new(program);
    cmd.args(args);
    // The host's environment names host paths and settings; the chroot gets a clean one.
    cmd.env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("HOME", "/root")
        .env("LANG", "C.UTF-8");
    for keep in ["TERM", "http_proxy", "https_proxy", "no_proxy"] {
        if let Some(v) = std::env::var_os(keep) {
            cmd.env(keep, v);
        }
    }
    let chroot_to = root.to_path_buf();
    // The signal mask survives fork and exec: the command must get the signals we hold.
    let held = caught_set();
    // SAFETY: runs in the child between fork and exec: only chroot(2), chdir(2) and
    // sigprocmask(2), all async-signal-safe system calls, on values prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::chroot(&chroot_to)?;
            nix::unistd::chdir("/")?;
            held.thread_unblock()?;
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| {
        invalid(format!(
            "cannot run {} in the image: {e}",
            program.to_string_lossy()
        ))
    })?;
    let pid = Pid::from_raw(child.id() as i32);
    let mut interrupted: Option<(Signal, Instant)> = None;
    let mut killed = false;
    loop {
        if let Some(status) = child.try_wait()? {
            // The kernel queues a signal sent to a process group (a Ctrl-C) for every member
            // before any of them can be reaped, and [`Signals`] keeps it queued until we take
            // it: if it ended the command, this look finds it.
            if interrupted.is_none() {
                interrupted = signals.take().map(|s| (s, Instant::now()));
            }
            return Ok(RunOutcome {
                status,
                interrupted: interrupted.map(|i| i.0),
            });
        }
        if let Some(sig) = signals.wait(Duration::from_millis(50)) {
            match interrupted {
                None => {
                    log::warn!("got {sig}: passing it to the command");
                    let _ = kill(pid, sig);
                    interrupted = Some((sig, Instant::now()));
                }
                // A second signal: the administrator means it.
                Some(_) if !killed => {
                    let _ = kill(pid, Signal::SIGKILL);
                    killed = true;
                }
                Some(_) => {}
            }
        }
        if let Some((_, since)) = interrupted {
            if !killed && since.elapsed() > GRACE {
                let _ = kill(pid, Signal::SIGKILL);
                killed = true;
            }
        }
    }
}

/// Kills processes whose root directory is inside `root`.
fn stop_stragglers(root: &Path) {
    let find = || -> Vec<Pid> {
        let Ok(procs) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        procs
            .filter_map(|p| {
                let p = p.ok()?;
                let pid: i32 = p.file_name().to_str()?.parse().ok()?;
                let r = fs::read_link(p.path().join("root")).ok()?;
                r.starts_with(root).then(|| Pid::from_raw(pid))
            })
            .collect()
    };
    for (sig, wait) in [(Signal::SIGTERM, 20), (Signal::SIGKILL, 20)] {
        let left = find();
        if left.is_empty() {
            return;
        }
        log::warn!(
            "{} processes still run in the chroot; sending them {sig}",
            left.len()
        );
        for p in left {
            let _ = kill(p, sig);
        }
        for _ in 0..wait {
            if find().is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The last signal received among those [`Signals`] catches (0: none), by a thread that did
/// not block it.
static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn note_signal(sig: libc::c_int) {
    RECEIVED.store(sig, Ordering::SeqCst);
}

/// SIGINT, SIGTERM and SIGHUP held for us (instead of killing us, which would leave the
/// mounts) while it lives; the previous handlers and masks come back when it is dropped.
///
/// They are blocked, not merely caught: a caught signal runs its handler on whichever thread
/// the kernel picks, at a moment of its own, so "did a Ctrl-C come before the command ended?"
/// would be a race. Blocked in this thread and in rayon's workers (the checkout started them),
/// a signal stays queued until [`Signals::take`] or [`Signals::wait`] takes it, and threads
/// started later inherit the mask. The handler stays as a backstop for a thread we do not
/// know of (it only notes the signal), so that none of them dies of it either.
struct Signals {
    old: Vec<(Signal, SigAction)>,
}

const CAUGHT: [Signal; 3] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP];

fn caught_set() -> SigSet {
    let mut set = SigSet::empty();
    for sig in CAUGHT {
        set.add(sig);
    }
    set
}

impl Signals {
    fn catch() -> Result<Signals> {
        RECEIVED.store(0, Ordering::SeqCst);
        let action = SigAction::new(
            SigHandler::Handler(note_signal),
            SaFlags::empty(),
            SigSet::empty(),
        );
        let mut old = Vec::new();
        for sig in CAUGHT {
            // SAFETY: the handler only stores to an atomic.
            let prev = unsafe { sigaction(sig, &action) }.map_err(std::io::Error::from)?;
            old.push((sig, prev));
        }
        let signals = Signals { old };
        caught_set().thread_block().map_err(std::io::Error::from)?;
        rayon::broadcast(|_| caught_set().thread_block())
            .into_iter()
            .collect::<nix::Result<()>>()
            .map_err(std::io::Error::from)?;
        Ok(signals)
    }

    /// A signal received since the last look, without waiting.
    fn take(&self) -> Option<Signal> {
        self.wait(Duration::ZERO)
    }

    /// Gives the signals back to their previous handlers; returns one that came in since the
    /// last look, up to the moment they were given back.
    fn release(self) -> Option<Signal> {
        let last = self.take();
        drop(self);
        last.or_else(|| Signal::try_from(RECEIVED.swap(0, Ordering::SeqCst)).ok())
    }

    /// A signal received since the last look, waiting up to `d` for one.
    fn wait(&self, d: Duration) -> Option<Signal> {
        let set = caught_set();
        let timeout = libc::timespec {
            tv_sec: d.as_secs() as libc::time_t,
            tv_nsec: d.subsec_nanos() as libc::c_long,
        };
        // SAFETY: `set` and `timeout` are live for the call; no siginfo is asked for.
        let got = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &timeout) };
        let noted = RECEIVED.swap(0, Ordering::SeqCst);
        [got, noted]
            .into_iter()
            .filter(|&s| s > 0)
            .find_map(|s| Signal::try_from(s).ok())
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        // Unblocked while our handler is still in place, a signal that came in since the last
        // look only lands in RECEIVED; then the previous handlers come back.
        let _ = rayon::broadcast(|_| caught_set().thread_unblock());
        let _ = caught_set().thread_unblock();
        for (sig, prev) in self.old.drain(..) {
            // SAFETY: restoring the handler that was there before.
            let _ = unsafe { sigaction(sig, &prev) };
        }
    }
}

fn points_file(root: &Path) -> PathBuf {
    root.parent()
        .expect("a work tree has a work directory")
        .join(POINTS)
}

/// The chroot's filesystems. Unmounted by [`Mounts::teardown`], or at the latest on drop.
struct Mounts {
    root: PathBuf,
    created: Vec<Created>,
    active: bool,
}

fn mtime_ns(m: &fs::Metadata) -> i64 {
    m.mtime() * 1_000_000_000 + m.mtime_nsec()
}

fn time_of(ns: i64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + Duration::from_nanos(ns.max(0) as u64)
}

/// Removes the mount points a session made (after everything is unmounted), newest first, and
/// forgets the list.
fn remove_points(root: &Path, created: &[Created]) {
    for c in created.iter().rev() {
        let path = root.join(&c.rel);
        let parent = path.parent().expect("below the root").to_path_buf();
        let untouched = fs::metadata(&parent)
            .map(|m| mtime_ns(&m) == c.after_mtime)
            .unwrap_or(false);
        let removed = if path.is_dir() {
            fs::remove_dir(&path)
        } else {
            fs::remove_file(&path)
        };
        if let Err(e) = removed {
            // It is kept from the parent anyway; only the leftover is untidy.
            if e.kind() != std::io::ErrorKind::NotFound {
                log::warn!("cannot remove {}: {e}", path.display());
            }
            continue;
        }
        if untouched {
            let times = fs::FileTimes::new()
                .set_accessed(time_of(c.before_atime))
                .set_modified(time_of(c.before_mtime));
            if let Err(e) = fs::File::open(&parent).and_then(|f| f.set_times(times)) {
                log::warn!("cannot restore the times of {}: {e}", parent.display());
            }
        }
    }
    let _ = fs::remove_file(points_file(root));
}

/// Tidies up after a session that could not (SIGKILL): its mount points, as it recorded them.
fn remove_recorded_points(root: &Path) -> Result<()> {
    let file = points_file(root);
    let text = match fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).at(&file),
    };
    let created = decode_points(text.as_bytes(), &file)?;
    remove_points(root, &created);
    Ok(())
}

impl Mounts {
    fn new(root: &Path) -> Mounts {
        Mounts {
            root: root.to_path_buf(),
            created: Vec::new(),
            active: false,
        }
    }

    fn mount(
        &self,
        source: impl AsRef<Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<()> {
        let source = source.as_ref();
        mount(Some(source), target, fstype, flags, data).map_err(|e| Error::Io {
            path: target.to_path_buf(),
            source: std::io::Error::other(format!("mounting {} here: {e}", source.display())),
        })
    }

    /// Makes `rel` (a directory or, with `file`, an empty file) if the image lacks it, and
    /// refuses a symlink: mount(2) would follow it out of the tree.
    fn point(&mut self, rel: &str, file: bool) -> Result<PathBuf> {
        let path = self.root.join(rel);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(invalid(format!(
                    "/{rel} is a symlink in the image; aurum chroot mounts over /{rel} and will not follow a symlink there"
                )))
            }
            Ok(m) if m.is_dir() != file => return Ok(path),
            Ok(_) => {
                return Err(invalid(format!(
                    "/{rel} in the image is not a {}",
                    if file { "file" } else { "directory" }
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).at(&path),
        }
        let parent = path.parent().expect("below the root").to_path_buf();
        let pm = fs::metadata(&parent).at(&parent)?;
        if file {
            fs::File::create(&path).at(&path)?;
        } else {
            fs::create_dir(&path).at(&path)?;
        }
        self.created.push(Created {
            rel: PathBuf::from(rel),
            before_atime: pm.atime() * 1_000_000_000 + pm.atime_nsec(),
            before_mtime: mtime_ns(&pm),
            after_mtime: mtime_ns(&fs::metadata(&parent).at(&parent)?),
        });
        let record = points_file(&self.root);
        fs::write(&record, encode_points(&self.created)).at(&record)?;
        Ok(path)
    }

    /// Mounts everything; on error, what was mounted is unmounted again (by `drop`).
    fn setup(&mut self) -> Result<()> {
        self.active = true;
        let root = self.root.clone();
        // A private bind of the tree on itself: the mounts below it then never propagate to
        // other mount namespaces sharing the repository's filesystem.
        self.mount(&root, &root, None, MsFlags::MS_BIND, None)?;
        mount(
            None::<&str>,
            &root,
            None::<&str>,
            MsFlags::MS_PRIVATE | MsFlags::MS_REC,
            None::<&str>,
        )
        .at(&root)?;
        let safe = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        let p = self.point("proc", false)?;
        self.mount("proc", &p, Some("proc"), safe, None)?;
        let p = self.point("sys", false)?;
        self.mount("sysfs", &p, Some("sysfs"), safe | MsFlags::MS_RDONLY, None)?;
        let dev = self.point("dev", false)?;
        self.mount(
            "tmpfs",
            &dev,
            Some("tmpfs"),
            MsFlags::MS_NOSUID,
            Some("mode=755,size=1m"),
        )?;
        for name in ["null", "zero", "full", "random", "urandom", "tty", "ptmx"] {
            let host = Path::new("/dev").join(name);
            if !host.exists() {
                log::warn!(
                    "the host has no {}; the chroot goes without",
                    host.display()
                );
                continue;
            }
            let target = dev.join(name);
            fs::File::create(&target).at(&target)?;
            self.mount(&host, &target, None, MsFlags::MS_BIND, None)?;
        }
        let pts = dev.join("pts");
        fs::create_dir(&pts).at(&pts)?;
        if Path::new("/dev/pts").is_dir() {
            self.mount("/dev/pts", &pts, None, MsFlags::MS_BIND, None)?;
        }
        let shm = dev.join("shm");
        fs::create_dir(&shm).at(&shm)?;
        fs::set_permissions(&shm, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).at(&shm)?;
        for (link, target) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ] {
            std::os::unix::fs::symlink(target, dev.join(link)).at(dev.join(link))?;
        }
        let run = self.point("run", false)?;
        self.mount(
            "tmpfs",
            &run,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=755"),
        )?;
        // The host's resolver configuration, so that apt can reach its mirrors; bound over the
        // image's own file, which is left as it was.
        let etc = root.join("etc");
        let host = Path::new("/etc/resolv.conf");
        if host.exists() && fs::symlink_metadata(&etc).is_ok_and(|m| m.is_dir()) {
            match self.point("etc/resolv.conf", true) {
                Ok(p) => self.mount("/etc/resolv.conf", &p, None, MsFlags::MS_BIND, None)?,
                Err(e) => log::warn!("no name resolution in the chroot: {e}"),
            }
        }
        Ok(())
    }

    /// Unmounts everything below the root (also what the command mounted itself), then
    /// removes the mount points we created. An error if a mount could not be removed.
    fn teardown(&mut self) -> Result<()> {
        if !self.active {
            return Ok(());
        }
        unmount_below(&self.root)?;
        self.active = false;
        remove_points(&self.root, &std::mem::take(&mut self.created));
        Ok(())
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            log::error!("{e}");
        }
    }
}

/// Mount points at or below `root`, in the order they were mounted.
fn mounts_below(root: &Path) -> Vec<PathBuf> {
    crate::sys::mount_table()
        .into_iter()
        .map(|m| m.point)
        .filter(|p| p.starts_with(root))
        .collect()
}

/// Unmounts every mount at or below `root`, newest first; a busy one is detached (lazy
/// unmount), which takes it out of the tree at once. An error if any is still there after.
pub fn unmount_below(root: &Path) -> Result<()> {
    let root = fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    // A detach can reveal nothing new, but a mount stacked on another shows up once the one
    // above it is gone: go round until nothing is left.
    for _ in 0..4 {
        let found = mounts_below(&root);
        if found.is_empty() {
            return Ok(());
        }
        for p in found.iter().rev() {
            if let Err(e) = umount2(p, MntFlags::empty()) {
                log::debug!("unmounting {}: {e}; detaching it", p.display());
                if let Err(e) = umount2(p, MntFlags::MNT_DETACH) {
                    log::warn!("cannot unmount {}: {e}", p.display());
                }
            }
        }
    }
    let left = mounts_below(&root);
    let Some(first) = left.first() else {
        return Ok(());
    };
    Err(Error::Io {
        path: first.clone(),
        source: std::io::Error::other(format!(
            "{} mounts below {} could not be unmounted; unmount them (`umount -R {}`) before removing or committing it",
            left.len(),
            root.display(),
            root.display()
        )),
    })
}

/// What [`commit`] did.
pub struct CommitReport {
    pub capture: CaptureReport,
    pub parent: Revision,
    /// The new revision against its parent.
    pub changes: Vec<Change>,
}

/// Captures the work tree as a new revision of the work directory's image, child of its
/// parent. Afterwards the work directory names the new revision as its parent, so that a kept
/// one can be edited and committed again.
pub fn commit(
    repo: &mut Repository,
    work: &mut WorkDir,
    progress: &dyn Progress,
) -> Result<CommitReport> {
    let root = work.root();
    // A resumed directory may come from a session killed with SIGKILL: its processes and
    // mounts may still be there.
    stop_stragglers(&root);
    unmount_below(&root)?;
    remove_recorded_points(&root)?;
    let id = Id::from_hex(&work.meta.parent)
        .ok_or_else(|| invalid(format!("{META} names no valid parent revision")))?;
    let parent = repo
        .catalog
        .revisions_by_prefix(&work.meta.parent)?
        .into_iter()
        .find(|r| r.id == id)
        .ok_or_else(|| {
            Error::NotFound(format!(
                "the edited revision {} ({}) is no longer in the repository; nothing committed (the work tree is still in {})",
                work.meta.parent_name,
                id.short(),
                root.display()
            ))
        })?;
    let base = repo.load_manifest(&parent.id)?;
    let patterns: Vec<String> = KEEP_FROM_PARENT
        .iter()
        .chain(ALWAYS_EXCLUDED)
        .map(|s| s.to_string())
        .collect();
    let mut source = LocalSource::new(&root, Excludes::new(&patterns)?);
    let opts = CaptureOptions {
        image: work.meta.image.clone(),
        message: work.meta.message.clone(),
        edit: Some(Edit {
            parent: parent.clone(),
            source: source_of(&parent),
            keep: Keep {
                base,
                paths: Excludes::new(&patterns)?,
            },
        }),
        embedded_repos: true,
    };
    let capture = crate::capture::getimage(repo, &mut source, &opts, progress)?;
    let new = repo.load_manifest(&capture.revision.id)?;
    let changes = crate::repo::diff::diff(&opts.edit.as_ref().expect("set above").keep.base, &new);
    if !capture.unchanged {
        work.meta.parent = capture.revision.id.hex();
        work.meta.parent_name = capture.revision.name();
        work.save()?;
    }
    Ok(CommitReport {
        capture,
        parent,
        changes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_round_trip() {
        assert_eq!(edited_from("chroot:compute@3"), Some("compute@3"));
        assert_eq!(edited_from("local:/srv/golden"), None);
    }

    #[test]
    fn keep_list_compiles() {
        let p: Vec<String> = KEEP_FROM_PARENT.iter().map(|s| s.to_string()).collect();
        let e = Excludes::new(&p).unwrap();
        assert!(e.excluded(b"dev", true));
        assert!(e.excluded(b"etc/resolv.conf", false));
        assert!(e.excluded(b"tmp", true));
        assert!(e.excluded(b"var/tmp", true));
        assert!(!e.excluded(b"etc/hostname", false));
        assert!(!e.excluded(b"mnt/scratch", true));
    }
}
