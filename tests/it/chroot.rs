//! `aurum chroot` on a small real root (busybox-static): the new revision differs from its
//! parent by exactly what the command did, the parent stays as it was, no mount outlives a
//! session (also when aurum is sent SIGTERM or SIGINT mid-command), and only a successful,
//! uninterrupted session commits unless told otherwise. Needs root and busybox-static (both
//! provided by ./test.sh).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::{is_root, json, revisions_of, rsync_diff, sh, skip, Env};

const BUSYBOX: &str = "/bin/busybox";

/// Root and busybox, or a reason to skip.
fn ready() -> bool {
    if !is_root() {
        skip("aurum chroot needs root");
        return false;
    }
    assert!(
        Path::new(BUSYBOX).exists(),
        "{BUSYBOX} is missing: install busybox-static (./test.sh does)"
    );
    true
}

/// A small bootable-looking root made of busybox-static, captured as `img@1` with everything
/// in it (`--no-default-excludes`), so that it has a device node in /dev and files in /tmp for
/// the chroot to leave alone. It has no /run: the chroot must make that mount point itself and
/// leave no trace of it.
fn busybox_image(env: &Env) -> PathBuf {
    let root = env.path("golden");
    sh(&format!(
        r#"
        r={root}
        mkdir -p $r/bin $r/etc $r/proc $r/sys $r/dev $r/tmp $r/root $r/var/tmp
        cp {BUSYBOX} $r/bin/busybox
        for t in $({BUSYBOX} --list); do [ $t = busybox ] || ln -sf busybox $r/bin/$t; done
        echo 'root:x:0:0:root:/root:/bin/sh' > $r/etc/passwd
        echo 'root:x:0:' > $r/etc/group
        echo 'hello' > $r/etc/motd
        echo 'to be deleted' > $r/etc/old
        echo 'scratch' > $r/tmp/scratch
        mknod -m 666 $r/dev/null c 1 3
        chmod 1777 $r/tmp
        touch -d '2024-01-02 03:04:05' $r/etc/* $r/etc $r/tmp $r/root $r/dev $r
        "#,
        root = root.display()
    ));
    env.getimage(&root, "img", &["--no-default-excludes"]);
    root
}

/// Mount points below `dir`, from our own /proc/self/mountinfo.
fn mounts_below(dir: &Path) -> Vec<String> {
    let dir = fs::canonicalize(dir).unwrap();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(String::from))
        .filter(|p| Path::new(p).starts_with(&dir))
        .collect()
}

/// Work directories left in the repository's tmp/.
fn work_dirs(env: &Env) -> Vec<String> {
    fs::read_dir(env.repo().join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("chroot-"))
        .collect()
}

/// `aurum diff`'s lines.
fn diff_lines(env: &Env, from: &str, to: &str) -> Vec<String> {
    env.ok(&["diff", from, to])
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn chroot_edit_records_exactly_the_commands_changes() {
    if !ready() {
        return;
    }
    let env = Env::new();
    let golden = busybox_image(&env);
    let script = r#"
        set -e
        # The chroot's filesystems are there while the command runs.
        test -c /dev/null && test -c /dev/urandom && test -r /proc/self/status
        test -d /sys/kernel && test -s /etc/resolv.conf && touch /run/in-run
        # Scratch the image keeps as the parent has it, whatever we do here.
        echo junk > /tmp/junk; rm /tmp/scratch; echo x > /dev/made-up
        # The edit itself.
        echo new > /etc/new
        echo more >> /etc/motd
        rm /etc/old
        chmod 600 /etc/passwd
        chown 5:6 /etc/group
        ln /etc/new /root/link
    "#;
    let out = env.ok(&[
        "chroot", "img", "-m", "patch", "--", "/bin/sh", "-c", script,
    ]);
    assert!(out.starts_with("img@2 "), "{out}");
    assert!(out.contains("(chroot edit of img@1)"), "{out}");
    let expected = [
        "M /etc  (mtime)",
        "M /etc/group  (owner)",
        "M /etc/motd  (content, mtime)",
        "A /etc/new",
        "D /etc/old",
        "M /etc/passwd  (mode)",
        "M /root  (mtime)",
        "A /root/link",
    ];
    assert_eq!(diff_lines(&env, "img@1", "img@2"), expected, "{out}");
    // chroot prints the same changes it recorded.
    for line in expected {
        assert!(out.contains(line), "{line} missing from:\n{out}");
    }
    assert!(
        out.contains("img@1 -> img@2: 2 added, 1 removed, 5 changed"),
        "{out}"
    );

    // The hardlink is one: /root/link names /etc/new.
    let ls = env.ok(&["ls", "img@2", "/root"]);
    assert!(ls.contains("/root/link => /etc/new"), "{ls}");

    // The log says where the revision came from; show records the parent and the source.
    let log = env.ok(&["log", "img"]);
    assert!(log.contains("chroot edit of img@1"), "{log}");
    assert!(log.contains("patch"), "{log}");
    let show = json(&env.ok(&["show", "img@2", "--json"]));
    let parent = json(&env.ok(&["show", "img@1", "--json"]));
    assert_eq!(show["parent"], parent["id"]);
    assert_eq!(show["source"], "chroot:img@1");

    // The parent is untouched: it verifies and still checks out as the golden tree.
    env.ok(&["verify"]);
    let co = env.path("co1");
    env.ok(&["checkout", "img@1", co.to_str().unwrap()]);
    let d = rsync_diff(&golden, &co);
    assert!(d.is_empty(), "img@1 changed:\n{d}");

    // Nothing is left mounted, and the work directory is gone.
    assert!(mounts_below(env.dir.path()).is_empty());
    assert!(work_dirs(&env).is_empty(), "{:?}", work_dirs(&env));
}

#[test]
fn failed_and_no_commit_sessions_make_no_revision() {
    if !ready() {
        return;
    }
    let env = Env::new();
    busybox_image(&env);

    let err = env.fails(
        &[
            "chroot",
            "img",
            "--",
            "/bin/sh",
            "-c",
            "touch /etc/x; exit 3",
        ],
        1,
    );
    assert!(err.contains("exit status 3"), "{err}");
    assert!(err.contains("nothing committed"), "{err}");
    assert_eq!(revisions_of(&env, "img"), 1);

    let out = env.ok(&["chroot", "img", "--no-commit", "--", "/bin/touch", "/etc/y"]);
    assert!(out.is_empty(), "{out}");
    assert_eq!(revisions_of(&env, "img"), 1);

    // A command that changes nothing records nothing.
    let out = env.ok(&["chroot", "img", "--", "/bin/true"]);
    assert!(out.contains("nothing committed"), "{out}");
    assert_eq!(revisions_of(&env, "img"), 1);

    // --commit-on-failure commits what a failing command did, here into another image, and a
    // process the command left running in the chroot is stopped before the capture.
    let out = env.ok(&[
        "chroot",
        "img",
        "--commit-on-failure",
        "--image",
        "fixed",
        "--",
        "/bin/sh",
        "-c",
        "/bin/sleep 60 & touch /etc/x; exit 3",
    ]);
    assert!(out.starts_with("fixed@1 "), "{out}");
    assert_eq!(
        diff_lines(&env, "img@1", "fixed@1"),
        ["M /etc  (mtime)", "A /etc/x"]
    );
    let show = json(&env.ok(&["show", "fixed@1", "--json"]));
    assert_eq!(
        show["parent"],
        json(&env.ok(&["show", "img@1", "--json"]))["id"]
    );
    assert_eq!(revisions_of(&env, "img"), 1);
    let here = fs::canonicalize(env.dir.path()).unwrap();
    let stragglers = sh(&format!(
        "for p in /proc/[0-9]*; do readlink $p/root; done 2>/dev/null | grep -c '^{}' || true",
        here.display()
    ));
    assert_eq!(stragglers.trim(), "0", "processes still run in a chroot");

    assert!(mounts_below(env.dir.path()).is_empty());
    assert!(work_dirs(&env).is_empty(), "{:?}", work_dirs(&env));
}

#[test]
fn a_signal_to_aurum_stops_the_command_unmounts_and_commits_nothing() {
    if !ready() {
        return;
    }
    let env = Env::new();
    busybox_image(&env);
    for sig in [
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGINT,
    ] {
        let child = env
            .cmd(&[
                "chroot",
                "img",
                "--commit-on-failure",
                "--",
                "/bin/sleep",
                "30",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_for_session(&env);
        let up = mounts_below(env.dir.path());
        assert!(up.iter().any(|m| m.ends_with("/root/dev/null")), "{up:?}");
        let killed_at = Instant::now();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            killed_at.elapsed() < Duration::from_secs(8),
            "{sig}: aurum took {:?} to stop",
            killed_at.elapsed()
        );
        assert_eq!(out.status.code(), Some(1), "{sig}: {stderr}");
        assert!(
            stderr.contains(&format!("interrupted by {sig}")),
            "{stderr}"
        );
        assert!(stderr.contains("nothing committed"), "{stderr}");
        let left = mounts_below(env.dir.path());
        assert!(left.is_empty(), "{sig} left mounts: {left:?}");
        assert!(work_dirs(&env).is_empty(), "{:?}", work_dirs(&env));
        assert_eq!(revisions_of(&env, "img"), 1, "{sig} made a revision");
    }

    // SIGKILL cannot be caught: the mounts stay, and --resume is how they are cleared.
    let mut child = env
        .cmd(&["chroot", "img", "--", "/bin/sleep", "30"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_session(&env);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!mounts_below(env.dir.path()).is_empty());
    let dirs = work_dirs(&env);
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    let dir = env.repo().join("tmp").join(&dirs[0]);
    let out = env.ok(&["chroot", "--resume", dir.to_str().unwrap()]);
    assert!(out.contains("nothing committed"), "{out}");
    let left = mounts_below(env.dir.path());
    assert!(left.is_empty(), "--resume left mounts: {left:?}");
    assert!(work_dirs(&env).is_empty(), "{:?}", work_dirs(&env));
    assert_eq!(revisions_of(&env, "img"), 1);
}

/// Issue #12, item 7: Ctrl-C sends SIGINT to the whole process group, so the command gets it
/// at the same moment as aurum and may end first: killed by it, or exiting by itself from a
/// trap. Either way the session was interrupted, and `--commit-on-failure` must not commit it.
#[test]
fn ctrl_c_to_the_process_group_never_commits_a_chroot_edit() {
    use std::os::unix::process::CommandExt;
    if !ready() {
        return;
    }
    let env = Env::new();
    busybox_image(&env);
    // Each script touches its marker once it is ready for the signal (the trap set).
    let commands = [
        // Dies of the SIGINT itself.
        (
            "touch /etc/x; exec /bin/sleep 30",
            "etc/x",
            "killed by SIGINT",
        ),
        // Catches it and exits non-zero by itself, before aurum has looked.
        (
            "trap 'exit 3' INT; touch /etc/y; /bin/sleep 30 & wait",
            "etc/y",
            "exit status 3",
        ),
    ];
    for round in 0..2 {
        for (script, marker, ended) in commands {
            let child = env
                .cmd(&[
                    "chroot",
                    "img",
                    "--commit-on-failure",
                    "--",
                    "/bin/sh",
                    "-c",
                    script,
                ])
                .process_group(0)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            wait_for_session(&env);
            wait_for_marker(&env, marker);
            let group = nix::unistd::Pid::from_raw(child.id() as i32);
            let sent = Instant::now();
            nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGINT).unwrap();
            let out = child.wait_with_output().unwrap();
            // The command got the signal itself (it does not inherit aurum's blocked mask):
            // it ended at once, not killed after the grace period.
            assert!(
                sent.elapsed() < Duration::from_secs(8),
                "{:?}",
                sent.elapsed()
            );
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            let what = format!("round {round}, `{script}`:\n{stdout}\n{stderr}");
            assert_eq!(out.status.code(), Some(1), "{what}");
            assert!(stderr.contains("interrupted by SIGINT"), "{what}");
            assert!(stderr.contains(&format!("ended ({ended})")), "{what}");
            assert!(stderr.contains("nothing committed (interrupted)"), "{what}");
            assert_eq!(revisions_of(&env, "img"), 1, "{what}");
            assert!(mounts_below(env.dir.path()).is_empty(), "{what}");
            assert!(work_dirs(&env).is_empty(), "{what}");
        }
    }

    // A command killed by a signal that did not come through aurum is no "failure" to commit
    // either: only a plain non-zero exit is.
    let err = env.fails(
        &[
            "chroot",
            "img",
            "--commit-on-failure",
            "--",
            "/bin/sh",
            "-c",
            "touch /etc/z; kill -KILL $$",
        ],
        1,
    );
    assert!(err.contains("killed by SIGKILL"), "{err}");
    assert!(err.contains("nothing committed"), "{err}");
    assert_eq!(revisions_of(&env, "img"), 1);
}

/// Waits until the whole session is mounted (resolv.conf is mounted last, /run before it) and
/// the command has had a moment to start.
fn wait_for_session(env: &Env) {
    let started = Instant::now();
    let resolv = std::path::Path::new("/etc/resolv.conf").exists();
    loop {
        let up = mounts_below(env.dir.path());
        let has = |end: &str| up.iter().any(|m| m.ends_with(end));
        if has("/root/proc")
            && has("/root/dev/null")
            && has("/root/run")
            && (!resolv || has("/root/etc/resolv.conf"))
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the chroot never came up: {up:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
}

/// Waits until the command in the chroot session has made `rel` (relative to its root).
fn wait_for_marker(env: &Env, rel: &str) {
    let started = Instant::now();
    while !work_dirs(env).iter().any(|w| {
        env.repo()
            .join("tmp")
            .join(w)
            .join("root")
            .join(rel)
            .exists()
    }) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the command never made {rel}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn kept_work_directory_can_be_resumed() {
    if !ready() {
        return;
    }
    let env = Env::new();
    busybox_image(&env);

    // A look that commits nothing, kept; then committed with --resume.
    let out = env
        .cmd(&[
            "chroot",
            "img",
            "--no-commit",
            "--keep",
            "--",
            "/bin/touch",
            "/etc/one",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let dir = stderr
        .lines()
        .find_map(|l| l.strip_prefix("aurum: work directory kept: "))
        .unwrap_or_else(|| panic!("no kept directory in:\n{stderr}"))
        .to_string();
    assert!(
        stderr.contains(&format!("aurum chroot --resume {dir}")),
        "{stderr}"
    );
    assert_eq!(revisions_of(&env, "img"), 1);
    assert!(mounts_below(Path::new(&dir)).is_empty());

    // The work tree shares no inode with the repository: editing it cannot reach a pack.
    let inodes = |d: &Path| -> Vec<(u64, u64)> {
        sh(&format!(
            "find {} -xdev -type f -printf '%D %i\\n'",
            d.display()
        ))
        .lines()
        .map(|l| {
            let (a, b) = l.split_once(' ').unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        })
        .collect()
    };
    let repo_inodes = inodes(&env.public().join("packs"));
    let tree_inodes = inodes(&Path::new(&dir).join("root"));
    assert!(!tree_inodes.is_empty());
    assert!(tree_inodes.iter().all(|i| !repo_inodes.contains(i)));
    assert!(
        fs::metadata(Path::new(&dir).join("root/etc/motd"))
            .unwrap()
            .nlink()
            == 1
    );

    let out = env.ok(&["chroot", "--resume", &dir, "--keep", "-m", "one"]);
    assert!(out.starts_with("img@2 "), "{out}");
    assert_eq!(
        diff_lines(&env, "img@1", "img@2"),
        ["M /etc  (mtime)", "A /etc/one"]
    );

    // Edited again by hand and resumed with a command: a child of the revision it became.
    fs::write(Path::new(&dir).join("root/etc/two"), "2\n").unwrap();
    let out = env.ok(&[
        "chroot", "--resume", &dir, "-m", "two", "--", "/bin/rm", "/etc/one",
    ]);
    assert!(out.starts_with("img@3 "), "{out}");
    assert!(out.contains("(chroot edit of img@2)"), "{out}");
    assert_eq!(
        diff_lines(&env, "img@2", "img@3"),
        ["M /etc  (mtime)", "D /etc/one", "A /etc/two"]
    );
    let log = env.ok(&["log", "img"]);
    assert!(log.contains("chroot edit of img@2"), "{log}");
    // Without --keep the resumed directory is removed.
    assert!(!Path::new(&dir).exists());
    let err = env.fails(&["chroot", "--resume", &dir], 2);
    assert!(err.contains("not a work directory"), "{err}");
    assert!(work_dirs(&env).is_empty(), "{:?}", work_dirs(&env));
}
