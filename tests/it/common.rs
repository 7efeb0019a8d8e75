//! Helpers shared by the integration tests: run the real `aurum` binary on temp directories.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A temp directory holding a fresh repository.
pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    /// A temp dir with an initialised repository at `repo/`.
    pub fn new() -> Env {
        let env = Env {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        env.ok(&["init"]);
        env
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn repo(&self) -> PathBuf {
        self.path("repo")
    }

    /// The repository's published directory, what a web server serves (`/packs/list` is
    /// `public/packs/list`).
    pub fn public(&self) -> PathBuf {
        self.repo().join("public")
    }

    /// The configuration directory the commands read (AURUM_CONFIG_DIR): `etc/` of the temp
    /// dir, absent until a test writes aurum.toml or node.toml there, so that no test reads
    /// the host's /etc/aurum.
    pub fn config_dir(&self) -> PathBuf {
        self.path("etc")
    }

    /// The aurum command with progress off, the test's configuration directory and none of
    /// the caller's AURUM_REPO, AURUM_SERVER, AURUM_TOKEN or AURUM_CA; no --repo. Once a
    /// test's server made its admin token ([`Env::admin_token`]), the command carries it as
    /// AURUM_TOKEN, as an administrator's shell would.
    pub fn bare(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_aurum"));
        c.arg("--no-progress").args(args);
        c.env_remove("AURUM_REPO")
            .env_remove("AURUM_SERVER")
            .env_remove("AURUM_TOKEN")
            .env_remove("AURUM_CA")
            .env("AURUM_CONFIG_DIR", self.config_dir());
        if let Ok(token) = std::fs::read_to_string(self.path("admin-token")) {
            c.env("AURUM_TOKEN", token.trim());
        }
        c
    }

    /// Gives the node at `root` its own token, as `aurum install` does: this machine's
    /// hostname is the name its reports carry.
    pub fn give_node_token(&self, root: &Path) {
        let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        let token = self.ok(&["token", "node", host.trim()]);
        let dir = root.join("var/lib/aurum-node");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("token"), token.trim()).unwrap();
    }

    /// The repository's admin token `tests`, made on first use (`aurum token create`).
    pub fn admin_token(&self) -> String {
        let file = self.path("admin-token");
        if let Ok(t) = std::fs::read_to_string(&file) {
            return t.trim().to_string();
        }
        let v = json(&self.ok(&["token", "create", "tests", "--json"]));
        let token = v["token"].as_str().expect("a token").to_string();
        std::fs::write(&file, &token).unwrap();
        token
    }

    /// The aurum command with --repo set and progress off (see [`Env::bare`]).
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.bare(&[]);
        c.arg("--repo").arg(self.repo()).args(args);
        c
    }

    /// Runs aurum; returns the output whatever the status.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run aurum")
    }

    /// Runs aurum, panics with its stderr unless it succeeds; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        stdout_of(self.run(args), &format!("aurum {args:?}"))
    }

    /// [`Env::ok`] on the repository at `repo` rather than the Env's (one inside a master's
    /// root, another site's).
    pub fn ok_at(&self, repo: &Path, args: &[&str]) -> String {
        let out = self
            .bare(&[])
            .arg("--repo")
            .arg(repo)
            .args(args)
            .output()
            .expect("run aurum");
        stdout_of(out, &format!("aurum --repo {} {args:?}", repo.display()))
    }

    /// Captures `src` into `image` with `extra` options; returns getimage's output.
    pub fn getimage(&self, src: &Path, image: &str, extra: &[&str]) -> String {
        self.getimage_at(&self.repo(), src, image, extra)
    }

    /// [`Env::getimage`] into the repository at `repo` (see [`Env::ok_at`]).
    pub fn getimage_at(&self, repo: &Path, src: &Path, image: &str, extra: &[&str]) -> String {
        let src = src.to_str().expect("test paths are UTF-8");
        let mut args = vec!["getimage", "--golden-client", src, "--image", image];
        args.extend_from_slice(extra);
        self.ok_at(repo, &args)
    }

    /// `aurum updateclient` of `image` from `server` (a URL) onto the node root `root`, then
    /// `extra`: as a node runs it, with no repository (see [`Env::bare`]).
    pub fn updateclient(&self, server: &str, image: &str, root: &Path, extra: &[&str]) -> Command {
        let root = root.to_str().expect("test paths are UTF-8");
        let mut c = self.bare(&[
            "updateclient",
            "--server",
            server,
            "--image",
            image,
            "--root",
            root,
        ]);
        c.args(extra);
        c
    }

    /// Writes `file` (aurum.toml, node.toml) in the configuration directory the commands read.
    pub fn write_config(&self, file: &str, text: &str) {
        let dir = self.config_dir();
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(file), text).unwrap();
    }

    /// A new empty directory `rel` in the temp dir (a node's root, a golden client).
    pub fn empty_dir(&self, rel: &str) -> PathBuf {
        let dir = self.path(rel);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Runs aurum expecting failure with `code`; returns stderr.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "aurum {args:?} should exit {code}:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

/// The stdout of `what`, which must have succeeded: else the test fails with its output.
fn stdout_of(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a shell command, panicking with its output on failure.
pub fn sh(script: &str) -> String {
    let out = Command::new("bash")
        .arg("-ec")
        .arg(script)
        .output()
        .expect("run bash");
    stdout_of(out, &format!("`{script}`"))
}

/// Whether an external program is on PATH.
pub fn have(prog: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {prog}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Says why a test cannot run here. Outside CI the test then returns (skips); under CI
/// (`CI=true`) a missing tool or privilege is a failure, since a green run that skipped the
/// QEMU or root tests proves nothing and `./test.sh` installs everything they need.
pub fn skip(reason: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "cannot run under CI: {reason} (./test.sh, run as root, installs what the tests need)"
        );
    }
    eprintln!("skipped: {reason}");
}

/// Whether `tool` is there for a test; see [`can_run`].
pub fn need(tool: &str) -> bool {
    can_run(have(tool), tool)
}

/// Whether we run as root (most fidelity checks need it; CI runs as root).
pub fn is_root() -> bool {
    nix::unistd::Uid::current().is_root()
}

/// `rsync -naHAXc --delete a/ b/` itemised output: empty when the trees are identical in content,
/// modes, owners, times (to the nanosecond where the filesystem has them), xattrs, ACLs and
/// hardlinks.
pub fn rsync_diff(a: &Path, b: &Path) -> String {
    let out = Command::new("rsync")
        .args(["-naHAXc", "--delete", "--itemize-changes"])
        .arg(format!("{}/", a.display()))
        .arg(format!("{}/", b.display()))
        .output()
        .expect("rsync is installed by test.sh");
    assert!(
        out.status.success(),
        "rsync failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The revision name (`compute@1`) from getimage's first output line.
pub fn rev_of(getimage_stdout: &str) -> String {
    getimage_stdout
        .split_whitespace()
        .next()
        .expect("getimage prints the revision first")
        .to_string()
}

/// Writes `len` bytes of xorshift noise (incompressible, reproducible) to `path`.
pub fn write_random(path: &Path, seed: u64, len: usize) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut data = vec![0u8; len.div_ceil(8) * 8];
    for w in data.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        w.copy_from_slice(&x.to_le_bytes());
    }
    data.truncate(len);
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).unwrap();
    }
    fs::write(path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Parses JSON, panicking with the text when it is not.
pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}

/// Number of revisions `lsimage --json` lists for `image` (0 when the image is absent).
pub fn revisions_of(env: &Env, image: &str) -> u64 {
    json(&env.ok(&["lsimage", "--json"]))
        .as_array()
        .expect("lsimage --json is an array")
        .iter()
        .find(|i| i["name"] == image)
        .map(|i| i["revisions"].as_u64().expect("revisions is a number"))
        .unwrap_or(0)
}

/// Whether a test may run: `ok` says its root or tool requirement (`what`) is met. When it is
/// not, the test is skipped with a message, except under CI (`CI=true`), where test.sh has
/// installed every tool and runs as root, so a missing one is a failure.
pub fn can_run(ok: bool, what: &str) -> bool {
    if !ok {
        skip(&format!("this test needs {what}"));
    }
    ok
}

/// A small ext4 filesystem on an image file, loop-mounted at `dir` while the value lives.
pub struct Ext4 {
    pub dir: PathBuf,
}

impl Ext4 {
    /// Makes a `mib` MiB ext4 image at `img` and mounts it at `dir` (root and mkfs.ext4 needed).
    pub fn mount(img: &Path, dir: &Path, mib: u32) -> Ext4 {
        sh(&format!(
            "mkdir -p {d} && truncate -s {mib}M {i} && mkfs.ext4 -q -F -m 0 {i} && mount -o loop {i} {d}",
            d = dir.display(),
            i = img.display()
        ));
        Ext4 {
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-R").arg(&self.dir).output();
    }
}
