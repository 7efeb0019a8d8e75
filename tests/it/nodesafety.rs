//! Nothing lost on a node (issue #12): names as long as a filesystem takes, a full disk, a
//! read-only mount and an immutable file. Each update is refused before it touches anything,
//! or undone; the node is left at a revision, and the next run succeeds once the cause is gone.

use std::path::Path;
use std::process::Command;

use crate::common::{can_run, have, is_root, json, sh, write_random, Env, Ext4};
use crate::update::{node_at, node_diff, ok};

/// Runs aurum on a node, expecting it to fail; returns stderr.
fn refused(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_aurum"))
        .arg("--no-progress")
        .args(args)
        .output()
        .expect("run aurum");
    assert!(
        !out.status.success(),
        "aurum {args:?} should fail:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The node is at revision `number` of its image with no update in progress, and holds no
/// staged blob and no temporary name.
fn settled(node: &Path, number: u64) {
    let n = node.to_str().unwrap();
    let status = json(&ok(&["node-status", "--root", n, "--json"]));
    assert!(
        status["interrupted"].is_null(),
        "left interrupted: {status}"
    );
    assert_eq!(status["state"]["current"]["number"], number, "{status}");
    let staged = sh(&format!("ls -A {n}/var/lib/aurum-node/staging"));
    assert_eq!(staged, "", "staged blobs left behind");
    let temps = sh(&format!("find {n} -name '*aurum-new*'"));
    assert_eq!(temps, "", "temporary names left behind");
}

#[test]
fn names_of_255_bytes_update_roll_back_check_out_and_import() {
    let env = Env::new();
    let (a, b) = (env.path("rev1"), env.path("rev2"));
    let long = "n".repeat(255);
    let long2 = format!("{}.conf", "c".repeat(245));
    for (dir, text) in [(&a, "one"), (&b, "two")] {
        sh(&format!(
            "mkdir -p {d}/etc/{long} {d}/var/lib && printf {text} > {d}/etc/{long2} \
             && printf {text} > {d}/etc/{long}/{long} && ln -s {long2} {d}/etc/x{}",
            &long[1..],
            d = dir.display()
        ));
    }
    env.getimage(&a, "long", &[]);
    env.getimage(&b, "long", &[]);
    let repo = env.repo();
    let r = repo.to_str().unwrap();
    let node = node_at(&env, "node", "long@1");
    let n = node.to_str().unwrap();
    ok(&[
        "updateclient",
        "--repo",
        r,
        "--image",
        "long@2",
        "--root",
        n,
    ]);
    assert_eq!(node_diff(&b, &node), "", "update of 255-byte names");
    ok(&["rollback", "--root", n]);
    assert_eq!(node_diff(&a, &node), "", "rollback of 255-byte names");
    // Checkout and an archive's round trip keep them too.
    let tar = env.path("long.tar");
    env.ok(&["export", "long@2", "-o", tar.to_str().unwrap()]);
    env.ok(&["import", "--image", "back", tar.to_str().unwrap()]);
    let out = env.path("out");
    env.ok(&["checkout", "back", out.to_str().unwrap()]);
    assert_eq!(node_diff(&b, &out), "", "checkout of an imported archive");
}

/// Two revisions for a node on a small filesystem: rev2 adds `big` bytes of incompressible
/// data and changes every small file.
fn small_fs_revisions(env: &Env, big: usize) {
    let (a, b) = (env.path("rev1"), env.path("rev2"));
    for i in 0..300 {
        write_random(&a.join(format!("usr/share/f{i:03}")), i, 3000);
        write_random(&b.join(format!("usr/share/f{i:03}")), 5000 + i, 3000);
    }
    write_random(&b.join("usr/lib/big"), 9, big);
    sh(&format!(
        "mkdir -p {a}/var/lib {b}/var/lib {a}/etc {b}/etc && printf one > {a}/etc/a && printf two > {b}/etc/a",
        a = a.display(),
        b = b.display()
    ));
    env.getimage(&a, "s", &[]);
    env.getimage(&b, "s", &[]);
}

/// A node at `s@1` on its own small ext4 at `mnt/node`.
fn node_on_ext4(env: &Env, mib: u32) -> (Ext4, std::path::PathBuf) {
    let fs = Ext4::mount(&env.path("fs.img"), &env.path("mnt"), mib);
    let node = fs.dir.join("node");
    env.ok(&["checkout", "s@1", node.to_str().unwrap()]);
    let r = env.repo();
    ok(&[
        "updateclient",
        "--repo",
        r.to_str().unwrap(),
        "--image",
        "s@1",
        "--root",
        node.to_str().unwrap(),
        "--no-default-excludes",
    ]);
    (fs, node)
}

/// A node at `s@1` on a `mib` MiB ext4 (see [`small_fs_revisions`] for `big`), and the
/// arguments that update it to `s@2`. `None` where the test cannot run (not root, no e2fsprogs).
fn small_node(big: usize, mib: u32) -> Option<(Env, Ext4, std::path::PathBuf, Vec<String>)> {
    if !root_with_ext4() {
        return None;
    }
    let env = Env::new();
    small_fs_revisions(&env, big);
    let (fs, node) = node_on_ext4(&env, mib);
    let args = [
        "updateclient",
        "--repo",
        env.repo().to_str().unwrap(),
        "--image",
        "s@2",
        "--root",
    ]
    .iter()
    .map(|a| a.to_string())
    .chain([node.to_str().unwrap().to_string()])
    .collect();
    Some((env, fs, node, args))
}

fn root_with_ext4() -> bool {
    can_run(
        is_root() && have("mkfs.ext4") && have("chattr"),
        "root, mkfs.ext4 and chattr (e2fsprogs)",
    )
}

#[test]
fn an_update_larger_than_the_free_space_is_refused_in_words() {
    let Some((env, _fs, node, args)) = small_node(30 << 20, 24) else {
        return;
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let n = node.to_str().unwrap();
    let err = refused(&args);
    assert!(
        err.contains("the update needs") && err.contains("MiB free") && err.contains(n),
        "the refusal says how much is needed where:\n{err}"
    );
    assert_eq!(
        node_diff(&env.path("rev1"), &node),
        "",
        "the node was changed"
    );
    settled(&node, 1);
    // The node is not wedged: a rollback answers as on any node (this one has nothing to go
    // back to, and says so).
    let rb = refused(&["rollback", "--root", n]);
    assert!(rb.contains("no previous revision"), "{rb}");
}

#[test]
fn a_disk_filled_by_another_writer_mid_update_returns_the_node_to_its_revision() {
    disk_filled_mid_update(false);
}

/// With --no-delete the undo still removes what the failed update created (rev2's new
/// `usr/lib/`), and keeps what the node had beside its image.
#[test]
fn a_disk_filled_mid_update_with_no_delete_leaves_nothing_of_the_update() {
    disk_filled_mid_update(true);
}

fn disk_filled_mid_update(no_delete: bool) {
    let Some((env, fs, node, mut args)) = small_node(4 << 20, 24) else {
        return;
    };
    let mine = node.join("opt/mine");
    if no_delete {
        args.push("--no-delete".into());
        std::fs::create_dir_all(mine.parent().unwrap()).unwrap();
        std::fs::write(&mine, "the administrator's").unwrap();
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // The other writer fills the filesystem the moment the update starts applying: its journal
    // appears after the space check and the fetch. The update is stopped (SIGSTOP) while the
    // disk fills, so it cannot finish first however the machine is loaded.
    let journal = node.join("var/lib/aurum-node/journal.json");
    let filler = fs.dir.join("filler");
    let child = Command::new(env!("CARGO_BIN_EXE_aurum"))
        .arg("--no-progress")
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let start = std::time::Instant::now();
    while !journal.exists() && start.elapsed() < std::time::Duration::from_secs(60) {
        std::hint::spin_loop();
    }
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP);
    let _ = Command::new("fallocate")
        .args(["-l", "64M"])
        .arg(&filler)
        .output();
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=64k", "oflag=append", "conv=notrunc"])
        .arg(format!("of={}", filler.display()))
        .stderr(std::process::Stdio::null())
        .output();
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the update was expected to run out of space"
    );
    assert!(
        err.contains("No space left") && err.contains("returned to"),
        "the error says the disk is full and that the node was returned:\n{err}"
    );
    if no_delete {
        assert_eq!(
            std::fs::read_to_string(&mine).unwrap(),
            "the administrator's"
        );
        // Gone again for the comparison, the root's mtime with it.
        std::fs::remove_dir_all(node.join("opt")).unwrap();
        sh(&format!(
            "touch -r {} {}",
            env.path("rev1").display(),
            node.display()
        ));
    }
    assert_eq!(
        node_diff(&env.path("rev1"), &node),
        "",
        "the node is not at its old revision"
    );
    settled(&node, 1);
    std::fs::remove_file(&filler).unwrap();
    ok(&args);
    assert_eq!(
        node_diff(&env.path("rev2"), &node),
        "",
        "the rerun once space was made"
    );
    settled(&node, 2);
}

#[test]
fn a_read_only_mount_is_refused_before_anything_changes() {
    let Some((env, _fs, node, args)) = small_node(1000, 32) else {
        return;
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let usr = node.join("usr");
    sh(&format!(
        "mount --bind {u} {u} && mount -o remount,ro,bind {u}",
        u = usr.display()
    ));
    let err = refused(&args);
    assert!(
        err.contains(&format!("{} is mounted read-only", usr.display()))
            && err.contains("remount,rw"),
        "the refusal names the mount and the fix:\n{err}"
    );
    assert_eq!(node_diff(&env.path("rev1"), &node), "");
    settled(&node, 1);
    sh(&format!("umount {}", usr.display()));
    ok(&args);
    assert_eq!(node_diff(&env.path("rev2"), &node), "");
}

#[test]
fn an_immutable_file_is_named_before_anything_changes() {
    let Some((env, _fs, node, args)) = small_node(1000, 32) else {
        return;
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let victim = node.join("usr/share/f150");
    sh(&format!("chattr +i {}", victim.display()));
    let err = refused(&args);
    sh(&format!("chattr -i {}", victim.display()));
    assert!(
        err.contains(&format!("{} is immutable", victim.display()))
            && err.contains(&format!("chattr -i {}", victim.display())),
        "the refusal names the file and the fix:\n{err}"
    );
    assert_eq!(
        node_diff(&env.path("rev1"), &node),
        "",
        "the update half-applied"
    );
    settled(&node, 1);
    ok(&args);
    assert_eq!(node_diff(&env.path("rev2"), &node), "");
}

/// A rollback by rename that a refused write stops midway (an immutable file among those it
/// puts back, after others went back already) is undone to the revision it started from, and
/// keeps the update's undo area it had taken over: once the flag is cleared, `aurum rollback`
/// goes back with no repository to read from.
#[test]
fn a_rollback_by_rename_stopped_by_a_refused_write_keeps_the_way_back() {
    let Some((env, _fs, node, args)) = small_node(1000, 32) else {
        return;
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&args);
    assert_eq!(node_diff(&env.path("rev2"), &node), "", "updated");
    let n = node.to_str().unwrap();
    let victim = node.join("usr/share/f150");
    sh(&format!("chattr +i {}", victim.display()));
    let err = refused(&["rollback", "--root", n]);
    sh(&format!("chattr -i {}", victim.display()));
    assert!(
        err.contains("immutable") || err.contains("not permitted"),
        "the refusal names its cause:\n{err}"
    );
    assert!(
        err.contains("was returned to"),
        "the rollback was undone:\n{err}"
    );
    assert_eq!(
        node_diff(&env.path("rev2"), &node),
        "",
        "the rollback half-applied"
    );
    settled(&node, 2);
    ok(&["rollback", "--root", n]);
    assert_eq!(node_diff(&env.path("rev1"), &node), "", "rolled back");
    settled(&node, 1);
}
