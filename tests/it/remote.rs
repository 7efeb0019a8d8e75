//! Remote capture through a real sshd: `getimage --golden-client ssh://...` end to end.
//!
//! Each test starts its own throwaway `/usr/sbin/sshd` on 127.0.0.1 (own host key, own
//! authorized_keys, a free port) and points getimage at it with the real ssh client, the way an
//! administrator would. The "golden client" is this same machine, with the agent run as the
//! absolute path of the aurum binary under test. We check what the remote path promises: the
//! captured tree checks out identical to the source (content, modes, setuid, owners, nanosecond
//! times, xattrs, ACLs, hardlinks, symlinks, fifos), a re-capture sends only what the repository
//! lacks and trusts the stat cache, a remote capture records the same revision a local capture
//! of the same tree would, and a broken connection fails loudly without recording anything.
//! Needs root (sshd, root login, setuid files) and openssh-server/client, rsync, attr, acl.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{have, is_root, rev_of, revisions_of, rsync_diff, sh, skip, write_random, Env};

const SSHD: &str = "/usr/sbin/sshd";

/// False (after saying so) when not root; panics when a needed tool is missing.
pub fn ready() -> bool {
    if !is_root() {
        skip("needs root");
        return false;
    }
    assert!(
        Path::new(SSHD).is_file(),
        "{SSHD} is missing: install openssh-server (./test.sh does)"
    );
    for (tool, package) in [
        ("ssh", "openssh-client"),
        ("ssh-keygen", "openssh-client"),
        ("rsync", "rsync"),
        ("setfattr", "attr"),
        ("setfacl", "acl"),
        ("mkfifo", "coreutils"),
    ] {
        assert!(
            have(tool),
            "`{tool}` is missing: install {package} (./test.sh does)"
        );
    }
    true
}

/// A private sshd on 127.0.0.1, killed when dropped.
pub struct Sshd {
    child: Child,
    port: u16,
    client_key: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "aurum-test", "-f"])
        .arg(path)
        .output()
        .expect("run ssh-keygen");
    assert!(
        out.status.success(),
        "ssh-keygen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

impl Sshd {
    pub fn start() -> Sshd {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let host_key = d.join("host_ed25519");
        let client_key = d.join("client_ed25519");
        keygen(&host_key);
        keygen(&client_key);
        let authorized = d.join("authorized_keys");
        fs::copy(client_key.with_extension("pub"), &authorized).expect("write authorized_keys");
        fs::set_permissions(&authorized, fs::Permissions::from_mode(0o600)).unwrap();
        // sshd refuses to start without its privilege-separation directory.
        fs::create_dir_all("/run/sshd").expect("create /run/sshd");
        let port = free_port();
        let config = d.join("sshd_config");
        fs::write(
            &config,
            format!(
                "ListenAddress 127.0.0.1\n\
                 Port {port}\n\
                 HostKey {host}\n\
                 PidFile {pid}\n\
                 AuthorizedKeysFile {auth}\n\
                 PermitRootLogin prohibit-password\n\
                 PubkeyAuthentication yes\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 StrictModes no\n\
                 UsePAM no\n\
                 UseDNS no\n\
                 LogLevel VERBOSE\n",
                host = host_key.display(),
                pid = d.join("sshd.pid").display(),
                auth = authorized.display(),
            ),
        )
        .expect("write sshd_config");
        // A config sshd rejects is reported here, with sshd's own words.
        let check = Command::new(SSHD)
            .arg("-t")
            .arg("-f")
            .arg(&config)
            .output()
            .expect("run sshd -t");
        assert!(
            check.status.success(),
            "sshd -t rejects the test config:\n{}",
            String::from_utf8_lossy(&check.stderr)
        );
        let log = d.join("sshd.log");
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("create sshd.log"))
            .spawn()
            .expect("spawn sshd");
        let mut sshd = Sshd {
            child,
            port,
            client_key,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            if let Some(status) = sshd.child.try_wait().expect("poll sshd") {
                panic!("sshd exited at start ({status}):\n{}", sshd.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "sshd does not accept connections on port {port} after 10 s:\n{}",
                sshd.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        sshd
    }

    /// The --ssh value: our throwaway key, no host key checks, no prompts.
    pub fn ssh_command(&self) -> String {
        format!(
            "ssh -i {} -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR",
            self.client_key.display()
        )
    }

    /// ssh://root@127.0.0.1:PORT/ABS/PATH
    pub fn url(&self, path: &Path) -> String {
        assert!(path.is_absolute());
        format!("ssh://root@127.0.0.1:{}{}", self.port, path.display())
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `len` bytes of xorshift noise (incompressible, so stored sizes equal raw sizes).
/// A small root filesystem with every kind of thing a remote capture must carry.
fn build_golden(root: &Path) {
    sh(&format!(
        r#"
        cd '{root}'
        mkdir -p etc usr/bin usr/lib usr/share/doc/pkg/deep/er var/empty data srv
        printf 'version=1\n' > etc/app.conf
        printf 'welcome to the golden client\n' > etc/motd
        chmod 0640 etc/motd
        printf '#!/bin/sh\necho tool\n' > usr/bin/tool
        chmod 4755 usr/bin/tool
        printf '#!/bin/sh\necho group\n' > usr/bin/grouptool
        chown 0:12 usr/bin/grouptool
        chmod 2711 usr/bin/grouptool
        printf 'ELF-ish library bytes\n' > usr/lib/libx.so.1
        ln -s libx.so.1 usr/lib/libx.so
        ln -s ../../etc/motd usr/share/motd-link
        printf 'deep\n' > usr/share/doc/pkg/deep/er/README
        printf 'shared inode\n' > data/hard1
        ln data/hard1 data/hard2
        printf 'has attributes\n' > data/attrs.txt
        setfattr -n user.aurum.note -v hello data/attrs.txt
        setfattr -n trusted.aurum -v 0x00ff00 data/attrs.txt
        setfacl -m u:65534:r data/attrs.txt
        setfacl -d -m g:65534:rx srv
        mkfifo data/fifo
        chown 65534:65534 data/attrs.txt
        chmod 1777 var/empty
        touch -h -d '2001-02-03 04:05:06.123456789' usr/lib/libx.so
        touch -d '2020-01-02 03:04:05.987654321' usr/share/doc/pkg/deep/er/README
        "#,
        root = root.display()
    ));
    // More than 1 MiB of noise, so it is cut into several chunks.
    write_random(&root.join("usr/lib/big.bin"), 42, 3 * 1024 * 1024 + 12_345);
    write_random(&root.join("srv/small.bin"), 7, 40_000);
}

/// getimage's summary line, parsed.
#[derive(Debug)]
struct Summary {
    entries: u64,
    files: u64,
    scanned: f64,
    hashed: f64,
    from_cache: u64,
    new_stored: f64,
}

/// `12 B`, `1.5 KiB`, `3.0 MiB` -> bytes (approximate above 1 KiB: one decimal is printed).
fn parse_bytes(s: &str) -> f64 {
    let (num, unit) = s
        .trim()
        .split_once(' ')
        .unwrap_or_else(|| panic!("not a size: `{s}`"));
    let n: f64 = num.parse().unwrap_or_else(|_| panic!("not a size: `{s}`"));
    let mult = match unit {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        other => panic!("unknown unit `{other}` in `{s}`"),
    };
    n * mult
}

fn summary(stdout: &str) -> Summary {
    let line = stdout
        .lines()
        .find(|l| l.contains(" new stored"))
        .unwrap_or_else(|| panic!("no summary line in getimage output:\n{stdout}"));
    let mut s = Summary {
        entries: u64::MAX,
        files: u64::MAX,
        scanned: -1.0,
        hashed: -1.0,
        from_cache: u64::MAX,
        new_stored: -1.0,
    };
    for part in line.split(", ") {
        if let Some(n) = part.strip_suffix(" entries") {
            s.entries = n
                .parse()
                .unwrap_or_else(|_| panic!("bad entry count in `{line}`"));
        } else if let Some(n) = part.strip_suffix(" files") {
            s.files = n
                .parse()
                .unwrap_or_else(|_| panic!("bad file count in `{line}`"));
        } else if let Some(x) = part.strip_suffix(" scanned") {
            s.scanned = parse_bytes(x);
        } else if let Some(rest) = part.strip_suffix(" files from the stat cache)") {
            let (hashed, cached) = rest
                .split_once(" hashed (")
                .unwrap_or_else(|| panic!("bad hashed part in `{line}`"));
            s.hashed = parse_bytes(hashed);
            s.from_cache = cached
                .parse()
                .unwrap_or_else(|_| panic!("bad cache count in `{line}`"));
        } else if let Some(x) = part.strip_suffix(" new stored") {
            s.new_stored = parse_bytes(x);
        }
    }
    assert!(
        s.entries != u64::MAX
            && s.files != u64::MAX
            && s.scanned >= 0.0
            && s.hashed >= 0.0
            && s.from_cache != u64::MAX
            && s.new_stored >= 0.0,
        "cannot parse summary line `{line}`"
    );
    s
}

fn show_json(env: &Env, rev: &str) -> serde_json::Value {
    serde_json::from_str(&env.ok(&["show", rev, "--json"])).expect("show --json is JSON")
}

fn remote_getimage(env: &Env, sshd: &Sshd, golden: &Path, image: &str) -> String {
    let url = sshd.url(golden);
    let ssh = sshd.ssh_command();
    let out = env.run(&[
        "getimage",
        "--golden-client",
        &url,
        "--image",
        image,
        "--ssh",
        &ssh,
        "--agent-command",
        env!("CARGO_BIN_EXE_aurum"),
    ]);
    assert!(
        out.status.success(),
        "remote getimage of {url} failed ({}):\n{}\n{}\nsshd log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        sshd.log_text()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn remote_capture_is_faithful_and_sends_only_what_is_missing() {
    if !ready() {
        return;
    }
    let sshd = Sshd::start();
    let env = Env::new();
    let golden = env.path("golden");
    fs::create_dir(&golden).unwrap();
    build_golden(&golden);
    // Files changed within 2 s before a capture starts are not put in the stat cache; wait so
    // the first capture caches every file and the second can show it.
    std::thread::sleep(Duration::from_millis(3100));

    // First capture: everything is new.
    let out = remote_getimage(&env, &sshd, &golden, "img");
    assert_eq!(rev_of(&out), "img@1", "{out}");
    let first = summary(&out);
    assert_eq!(
        first.from_cache, 0,
        "a fresh repository has no stat cache: {out}"
    );
    // 14 directories, 10 files, 2 symlinks, a hardlink and a fifo.
    assert_eq!(
        (first.entries, first.files),
        (28, 10),
        "entries, files: {out}"
    );
    assert!(
        first.new_stored > 3.0 * 1024.0 * 1024.0,
        "the 3 MiB of noise must have been stored: {out}"
    );
    let rev1 = show_json(&env, "img@1");
    assert_eq!(rev1["source"], sshd.url(&golden), "revision source: {rev1}");

    let out1 = env.path("out1");
    env.ok(&["checkout", "img@1", out1.to_str().unwrap()]);
    let d = rsync_diff(&golden, &out1);
    assert!(
        d.is_empty(),
        "remote capture differs from the golden tree:\n{d}"
    );

    // Change one 10-byte file and capture again over ssh.
    fs::write(golden.join("etc/app.conf"), "version=2\n").unwrap();
    let out = remote_getimage(&env, &sshd, &golden, "img");
    assert_eq!(rev_of(&out), "img@2", "{out}");
    let second = summary(&out);
    assert_eq!(second.files, first.files, "{out}");
    assert!(
        second.new_stored < 64.0 * 1024.0,
        "only a 10-byte file changed, yet {} bytes were stored: {out}",
        second.new_stored
    );
    let new_bytes = show_json(&env, "img@2")["new_bytes"]
        .as_u64()
        .expect("new_bytes");
    assert!(
        new_bytes > 0 && new_bytes < 64 * 1024,
        "img@2 new_bytes = {new_bytes}"
    );
    assert_eq!(
        second.from_cache,
        second.files - 1,
        "every file but the changed one should come from the stat cache: {out}"
    );
    assert!(
        second.hashed <= 1024.0,
        "only the changed file should be hashed: {out}"
    );

    let out2 = env.path("out2");
    env.ok(&["checkout", "img@2", out2.to_str().unwrap()]);
    let d = rsync_diff(&golden, &out2);
    assert!(
        d.is_empty(),
        "second remote capture differs from the golden tree:\n{d}"
    );
    let changes = env.ok(&["diff", "img@1", "img@2"]);
    assert!(
        changes.contains("etc/app.conf"),
        "diff img@1 img@2 should name etc/app.conf:\n{changes}"
    );
    assert_eq!(
        changes.lines().count(),
        1,
        "only etc/app.conf changed:\n{changes}"
    );

    // Nothing changed: no new revision, nothing hashed, nothing stored.
    let out = remote_getimage(&env, &sshd, &golden, "img");
    let first_line = out.lines().next().unwrap_or_default();
    assert!(
        first_line.starts_with("img@2 ") && first_line.ends_with("(unchanged)"),
        "an unchanged tree should record no revision: {out}"
    );
    let third = summary(&out);
    assert_eq!(third.new_stored, 0.0, "{out}");
    // etc/app.conf changed less than 2 s before the last capture, so it was not cached then.
    assert!(
        third.from_cache >= third.files - 1 && third.hashed <= 1024.0,
        "{out}"
    );

    // A local capture of the same tree stores nothing new and yields the very same revision id:
    // the agent scans and cuts exactly as a local capture does.
    let out = env.ok(&[
        "getimage",
        "--golden-client",
        golden.to_str().unwrap(),
        "--image",
        "local",
    ]);
    assert_eq!(rev_of(&out), "local@1", "{out}");
    assert_eq!(
        summary(&out).new_stored,
        0.0,
        "every blob is already stored: {out}"
    );
    assert_eq!(
        show_json(&env, "local@1")["id"],
        show_json(&env, "img@2")["id"],
        "local and remote captures of one tree should be the same revision"
    );

    env.ok(&["verify"]);
    assert_eq!(revisions_of(&env, "img"), 2);
}

#[test]
fn remote_capture_fails_cleanly_when_the_connection_fails() {
    if !ready() {
        return;
    }
    let sshd = Sshd::start();
    let env = Env::new();
    let golden = env.path("golden");
    fs::create_dir(&golden).unwrap();
    fs::write(golden.join("file"), "content\n").unwrap();
    let url = sshd.url(&golden);
    let ssh = sshd.ssh_command();

    // sshd lets us in, but there is no aurum at the agent command's path.
    let out = env.run(&[
        "getimage",
        "--golden-client",
        &url,
        "--image",
        "img",
        "--ssh",
        &ssh,
        "--agent-command",
        "/nonexistent/aurum",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "getimage with a missing agent must fail:\n{stderr}"
    );
    assert!(
        out.status.code().is_some(),
        "getimage should exit, not die: {}",
        out.status
    );
    assert!(
        stderr.contains("connection"),
        "the error should mention the connection:\n{stderr}"
    );
    assert!(stderr.contains("aurum: error:"), "{stderr}");

    // Nothing listens on this port: ssh itself fails.
    let closed = free_port();
    let out = env.run(&[
        "getimage",
        "--golden-client",
        &format!("ssh://root@127.0.0.1:{closed}{}", golden.display()),
        "--image",
        "img",
        "--ssh",
        &ssh,
        "--agent-command",
        env!("CARGO_BIN_EXE_aurum"),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "getimage to a closed port must fail:\n{stderr}"
    );
    assert!(
        out.status.code().is_some(),
        "getimage should exit, not die: {}",
        out.status
    );
    assert!(
        stderr.contains("connection"),
        "the error should mention the connection:\n{stderr}"
    );

    // Neither attempt recorded anything, and the repository is intact.
    assert_eq!(revisions_of(&env, "img"), 0);
    env.ok(&["verify"]);

    // The same setup with the right agent works, so the failures above were the agent's fault.
    let out = remote_getimage(&env, &sshd, &golden, "img");
    assert_eq!(rev_of(&out), "img@1", "{out}");
}

/// Stands in for ssh: runs the remote command here, relaying frames both ways (with `log PATH`
/// in the plan, it writes there the type of each request and the bytes the agent answered),
/// and removes
/// files of the golden client just before it hands the agent the request that reads them
/// (`h PATH` before the first Hash, `f PATH` before the first Fetch). That puts a file's
/// disappearance exactly between the scan and the read, every time. With `k all` in the plan
/// it also makes every Hash request's filter of known blobs say "known" to everything, as a
/// filter's false positives would, so that the agent sends no content while hashing and the
/// server asks for all of it in a Fetch.
const VANISHING_SSH: &str = r#"
import os, subprocess, sys, threading
plan = [l.split(' ', 1) for l in open(sys.argv[1]).read().splitlines() if l]
agent = subprocess.Popen(sys.argv[-1], shell=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
inp = sys.stdin.buffer
kinds, answered = [], [0]

def relay():
    while True:
        data = agent.stdout.read1(1 << 16)
        if not data:
            break
        answered[0] += len(data)
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()

copier = threading.Thread(target=relay)
copier.start()

def var(b, at):
    v, shift = 0, 0
    while True:
        v |= (b[at] & 0x7f) << shift
        shift += 7
        at += 1
        if b[at - 1] < 0x80:
            return v, at

while True:
    head = inp.read(4)
    if len(head) < 4:
        break
    body = inp.read(int.from_bytes(head, 'little'))
    kind = body[:1].decode()
    kinds.append(kind)
    if kind == 'h' and ['k', 'all'] in plan:
        n, at = var(body, 1)
        for _ in range(n):
            _, at = var(body, at)
        body = body[:at] + bytes([8]) + b'\xff' * 8 + body[-1:]
        head = len(body).to_bytes(4, 'little')
    for step in [p for p in plan if p[0] == kind]:
        if os.path.lexists(step[1]):
            os.unlink(step[1])
        plan.remove(step)
    agent.stdin.write(head + body)
    agent.stdin.flush()
agent.stdin.close()
status = agent.wait()
copier.join()
for step in [p for p in plan if p[0] == 'log']:
    open(step[1], 'w').write(''.join(kinds) + ' ' + str(answered[0]))
sys.exit(status)
"#;

/// Captures `golden` as `image` through [`VANISHING_SSH`] with `plan`; returns stdout, stderr.
fn relayed_getimage(
    env: &Env,
    golden: &Path,
    image: &str,
    plan: &str,
    extra: &[&str],
) -> (String, String) {
    let plan_file = env.path(&format!("plan-{image}"));
    fs::write(&plan_file, plan).unwrap();
    let script = env.path("relay-ssh.py");
    fs::write(&script, VANISHING_SSH).unwrap();
    let out = env
        .cmd(&[
            "getimage",
            "--golden-client",
            &format!("ssh://gold{}", golden.display()),
            "--image",
            image,
            "--ssh",
            &format!("python3 {} {}", script.display(), plan_file.display()),
            "--agent-command",
            env!("CARGO_BIN_EXE_aurum"),
        ])
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stdout}\n{stderr}");
    (stdout, stderr)
}

/// The agent compresses what a remote capture stores, so `--level` must reach it: with the
/// groups made on the golden client, a remote `getimage --level 19` stored level 3 groups.
#[test]
fn remote_capture_stores_at_the_level_asked_for() {
    let golden = tempfile::tempdir().unwrap();
    // Text from a small vocabulary: level 19 finds much more in it than level 1.
    sh(&format!(
        "python3 -c \"import random; r = random.Random(5); w = [''.join(r.choice('abcdefghij') for _ in range(r.randint(2, 9))) for _ in range(300)]; open('{}/words', 'w').write(' '.join(r.choice(w) for _ in range(400000)))\"",
        golden.path().display()
    ));
    let stored = |level: &str| {
        let env = Env::new();
        let (stdout, _) = relayed_getimage(&env, golden.path(), "img", "", &["--level", level]);
        env.ok(&["verify", "img"]);
        summary(&stdout).new_stored
    };
    let (fast, small) = (stored("1"), stored("19"));
    assert!(
        small < 0.9 * fast,
        "level 19 stored {small} bytes, level 1 {fast}: the agent ignored --level"
    );
}

/// What the relay logged: the request types in order, and the bytes the agent answered.
fn relay_log(path: &Path) -> (String, u64) {
    let text = fs::read_to_string(path).unwrap();
    let (kinds, bytes) = text.split_once(' ').unwrap();
    (kinds.to_string(), bytes.parse().unwrap())
}

/// A first remote capture asked the agent to hash every file, then to read every file again
/// to send the chunks the repository lacked (and compressed each chunk twice). Now the agent
/// sends what the repository's filter does not know while hashing: no Fetch round follows;
/// and a second golden client with the same content sends chunk lists, not the content.
#[test]
fn remote_first_capture_reads_each_file_once_and_sends_no_known_content() {
    let env = Env::new();
    let golden = env.path("golden");
    fs::create_dir_all(golden.join("lib")).unwrap();
    for i in 0..20u64 {
        write_random(&golden.join(format!("lib/f{i}")), i, 100_000);
    }
    fs::write(golden.join("lib/text"), "line of text\n".repeat(50_000)).unwrap();
    let log = env.path("log1");
    let (stdout, _) = relayed_getimage(
        &env,
        &golden,
        "one",
        &format!("log {}\n", log.display()),
        &[],
    );
    let (kinds, answered) = relay_log(&log);
    assert_eq!(
        kinds, "Sh",
        "requests of a first capture: {kinds}\n{stdout}"
    );
    assert!(
        answered > 2_000_000,
        "the content came in the hash round: {answered} bytes"
    );
    env.ok(&["verify", "one"]);
    let dst = env.path("out");
    env.ok(&["checkout", "one", dst.to_str().unwrap()]);
    let diff = rsync_diff(&golden, &dst);
    assert!(diff.trim().is_empty(), "{diff}");

    // The same tree at another path is another golden client (no stat cache), same content.
    let twin = env.path("twin");
    sh(&format!("cp -a {} {}", golden.display(), twin.display()));
    let log = env.path("log2");
    let (stdout, _) =
        relayed_getimage(&env, &twin, "two", &format!("log {}\n", log.display()), &[]);
    let (kinds, answered) = relay_log(&log);
    assert_eq!(
        kinds, "Sh",
        "requests of the twin's capture: {kinds}\n{stdout}"
    );
    assert!(
        answered < 100_000,
        "the twin's capture sent {answered} bytes: content the repository has"
    );
    assert_eq!(summary(&stdout).new_stored, 0.0, "{stdout}");
}

/// getimage failed outright ("No such file or directory") when a file of a live golden client
/// vanished between the scan and the agent reading it. Now the file is left out with a
/// warning, a hardlink whose content-carrying name vanished is carried by its next name, and
/// a chunk whose file vanished before sending it is fetched from another file holding it
/// (the fetch round, which the known-blob filter's false positives lead to, is forced here).
#[test]
fn remote_capture_leaves_out_files_that_vanish_before_they_are_read() {
    let env = Env::new();
    let golden = env.path("golden");
    fs::create_dir_all(golden.join("d")).unwrap();
    write_random(&golden.join("d/a"), 1, 50_000);
    write_random(&golden.join("d/h1"), 2, 50_000);
    fs::hard_link(golden.join("d/h1"), golden.join("d/h2")).unwrap();
    fs::hard_link(golden.join("d/h1"), golden.join("d/h3")).unwrap();
    write_random(&golden.join("d/c"), 3, 2_000_000);
    write_random(&golden.join("d/same-as-c"), 3, 2_000_000);
    write_random(&golden.join("d/z"), 4, 10_000);
    let d = golden.join("d");
    let plan = format!(
        "k all\nh {a}\nh {h1}\nf {c}\n",
        a = d.join("a").display(),
        h1 = d.join("h1").display(),
        c = d.join("c").display()
    );
    // Removing files changes d's mtime after the scan read it; put it back to compare.
    let stamp = env.path("d-mtime");
    sh(&format!("touch -r {} {}", d.display(), stamp.display()));
    let (stdout, stderr) = relayed_getimage(&env, &golden, "live", &plan, &[]);
    for gone in ["/d/a", "/d/h1", "/d/c"] {
        assert!(
            stderr.contains(&format!("warning: {gone}: vanished during the capture")),
            "no warning for {gone}:\n{stderr}"
        );
    }
    assert!(stdout.contains(", 3 warnings"), "{stdout}");
    assert!(!d.join("a").exists() && !d.join("c").exists());
    env.ok(&["verify", "live"]);
    sh(&format!("touch -r {} {}", stamp.display(), d.display()));
    // The revision is the golden client as it is now: h2 carries the content, h3 links to it.
    let dst = env.path("out");
    env.ok(&["checkout", "live", dst.to_str().unwrap()]);
    let diff = rsync_diff(&golden, &dst);
    assert!(diff.trim().is_empty(), "{diff}");
}
