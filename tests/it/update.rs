//! updateclient and rollback on real node roots: every kind of change, bytes on the wire,
//! a plain web server, rollback with the server stopped, kill -9 and rerun, a server sending
//! wrong bytes, a symlink planted to lead writes outside the root, and 16 nodes at once.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::{is_root, json, sh, skip, write_random, Env};
use crate::serve::Server;

/// Differences between a node root and a reference tree, leaving out the node's own state.
pub fn node_diff(reference: &Path, node: &Path) -> String {
    let out = Command::new("rsync")
        .args([
            "-naHAXc",
            "--delete",
            "--itemize-changes",
            "--exclude=/var/lib/aurum-node",
        ])
        .arg(format!("{}/", reference.display()))
        .arg(format!("{}/", node.display()))
        .output()
        .expect("rsync");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn aurum(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_aurum"))
        .arg("--no-progress")
        .args(args)
        .output()
        .expect("run aurum")
}

pub fn ok(args: &[&str]) -> String {
    let o = aurum(args);
    assert!(
        o.status.success(),
        "aurum {args:?}: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// rev1 and rev2 of a small root with every kind of change between them.
pub fn two_revisions(env: &Env) -> (PathBuf, PathBuf) {
    let a = env.path("rev1");
    let b = env.path("rev2");
    write_random(&a.join("usr/lib/libbig.so"), 1, 3 << 20);
    write_random(&a.join("usr/bin/tool"), 2, 200_000);
    sh(&format!(
        r#"cd {a} && mkdir -p etc/conf.d var/lib/dpkg var/log srv/old/deep home/alice \
        && printf 'one\n' > etc/a && printf 'keep\n' > etc/keep && printf 'gone\n' > etc/gone \
        && printf 'deep\n' > srv/old/deep/f && ln -s a etc/link && ln etc/a etc/a.hard \
        && printf 'x' > etc/to-dir && mkdir etc/to-file && ln -s keep etc/to-regular \
        && printf 'ln1' > etc/pair1 && ln etc/pair1 etc/pair2 && mkfifo etc/fifo \
        && printf 'status\n' > var/lib/dpkg/status && printf 'log\n' > var/log/syslog \
        && printf 'mine\n' > home/alice/notes && chmod 4755 usr/bin/tool \
        && truncate -s 50M srv/sparse && printf 'mid' | dd of=srv/sparse bs=1 seek=20000000 conv=notrunc 2>/dev/null"#,
        a = a.display()
    ));
    if is_root() {
        sh(&format!("cd {} && mknod etc/dev c 1 3 && chown 7:8 etc/keep && setfattr -n user.k -v 1 etc/keep", a.display()));
    }
    sh(&format!("cp -a {}/. {}/", a.display(), b.display()));
    sh(&format!(
        r#"cd {b} && printf 'two\n' > etc/a && rm etc/gone && printf 'new\n' > etc/new && rm -r srv/old \
        && rm etc/to-dir && mkdir etc/to-dir && printf 'in' > etc/to-dir/f && rmdir etc/to-file && printf 'f' > etc/to-file \
        && rm etc/to-regular && printf 'reg' > etc/to-regular && rm etc/pair2 && printf 'ln1' > etc/pair2 \
        && ln etc/new etc/new.hard && chmod 700 usr/bin && ln -sf keep etc/link \
        && dd if=/dev/urandom of=usr/lib/libbig.so bs=1 count=64 seek=1500000 conv=notrunc 2>/dev/null \
        && printf 'MID' | dd of=srv/sparse bs=1 seek=20000000 conv=notrunc 2>/dev/null \
        && printf 'changed\n' > var/lib/dpkg/status"#,
        b = b.display()
    ));
    if is_root() {
        sh(&format!("cd {} && rm etc/dev && mknod etc/dev c 1 5 && chown 9:9 etc/keep && setfattr -n user.k -v 2 etc/keep", b.display()));
    }
    env.getimage(&a, "c", &["--no-default-excludes"]);
    env.getimage(&b, "c", &["--no-default-excludes"]);
    (a, b)
}

/// A node root at `rev` (checked out, then adopted by updateclient so it has node state).
pub fn node_at(env: &Env, name: &str, rev: &str) -> PathBuf {
    let node = env.path(name);
    env.ok(&["checkout", rev, node.to_str().unwrap()]);
    let repo = env.repo();
    ok(&[
        "updateclient",
        "--repo",
        repo.to_str().unwrap(),
        "--image",
        rev,
        "--root",
        node.to_str().unwrap(),
        "--no-default-excludes",
    ]);
    node
}

#[test]
fn update_and_rollback_over_http_with_every_kind_of_change() {
    let env = Env::new();
    let (rev1, rev2) = two_revisions(&env);
    let node = node_at(&env, "node", "c@1");
    assert_eq!(node_diff(&rev1, &node), "");
    let srv = Server::start(&env);
    env.give_node_token(&node);
    let url = format!("http://{}", srv.addr);
    let n = node.to_str().unwrap();

    // Dry run: the plan, and nothing changes.
    let plan = ok(&[
        "updateclient",
        "--server",
        &url,
        "--image",
        "c@2",
        "--root",
        n,
        "--dry-run",
        "--no-default-excludes",
    ]);
    assert!(
        plan.contains("/etc/new")
            && plan.contains("- delete   /etc/gone")
            && plan.contains("to fetch"),
        "{plan}"
    );
    assert_eq!(node_diff(&rev1, &node), "", "a dry run changed the node");

    let report = json(&ok(&[
        "updateclient",
        "--server",
        &url,
        "--image",
        "c@2",
        "--root",
        n,
        "--no-default-excludes",
        "--json",
    ]));
    let d = node_diff(&rev2, &node);
    assert_eq!(d, "", "node differs from rev2:\n{d}");
    // Only what changed crossed the wire: the 3 MiB library came mostly from the node itself.
    let fetched = report["bytes_fetched"].as_u64().unwrap();
    assert!(fetched > 0 && fetched < 400_000, "{report}");
    assert!(
        report["bytes_reused"].as_u64().unwrap() > 2_000_000,
        "{report}"
    );
    // The node told the server.
    let nodes = json(&env.ok(&["nodes", "--json"]));
    assert_eq!(nodes[0]["action"], "updateclient");
    assert_eq!(nodes[0]["result"], "ok");

    // Rollback needs no server.
    drop(srv);
    ok(&["rollback", "--root", n]);
    let d = node_diff(&rev1, &node);
    assert_eq!(d, "", "rollback did not restore rev1:\n{d}");
    let status = json(&ok(&["node-status", "--root", n, "--json"]));
    assert_eq!(status["state"]["current"]["number"], 1);
    assert_eq!(status["state"]["previous"]["number"], 2);
    ok(&["mark-good", "--root", n]);
    ok(&[
        "updateclient",
        "--repo",
        env.repo().to_str().unwrap(),
        "--image",
        "c@2",
        "--root",
        n,
        "--no-default-excludes",
    ]);
    ok(&["rollback", "--last-known-good", "--root", n]);
    assert_eq!(node_diff(&rev1, &node), "");
}

/// The boot loader a node's install put on its ESP (grub-install's EFI/BOOT/BOOTX64.EFI and
/// EFI/aurum, bootctl's EFI/systemd) is in no image. Updates and rollbacks must not delete it
/// as a file the revision lacks, while the image's loader entries on the ESP are updated. A
/// systemd-boot QEMU node whose rollback went through the full engine was left with nothing
/// to boot.
#[test]
fn the_boot_loader_on_the_esp_survives_updates_and_rollbacks() {
    let env = Env::new();
    let g = env.path("golden");
    let entry = |tree: &Path| tree.join("boot/efi/loader/entries/node.conf");
    sh(&format!(
        "mkdir -p {g}/boot/efi/loader/entries {g}/etc && printf 'one\n' > {e} && printf 'a\n' > {g}/etc/a",
        g = g.display(),
        e = entry(&g).display()
    ));
    env.getimage(&g, "e", &[]);
    sh(&format!(
        "printf 'two\n' > {e} && printf 'b\n' > {g}/etc/a",
        g = g.display(),
        e = entry(&g).display()
    ));
    env.getimage(&g, "e", &[]);
    let node = node_at(&env, "node", "e@1");
    let (n, repo) = (node.to_str().unwrap(), env.repo());
    // With the default excludes, as a node runs it.
    let update = |rev: &str| {
        let repo = repo.to_str().unwrap();
        ok(&["updateclient", "--repo", repo, "--image", rev, "--root", n])
    };
    sh(&format!(
        "mkdir -p {n}/boot/efi/EFI/BOOT {n}/boot/efi/EFI/aurum && printf boot > {n}/boot/efi/EFI/BOOT/BOOTX64.EFI \
         && printf grub > {n}/boot/efi/EFI/aurum/grubx64.efi"
    ));
    let boot_loader_kept = |when: &str| {
        for f in ["EFI/BOOT/BOOTX64.EFI", "EFI/aurum/grubx64.efi"] {
            assert!(node.join("boot/efi").join(f).exists(), "{f} gone {when}");
        }
    };
    update("e@2");
    assert_eq!(std::fs::read_to_string(entry(&node)).unwrap(), "two\n");
    boot_loader_kept("after an update");
    update("e@1");
    assert_eq!(std::fs::read_to_string(entry(&node)).unwrap(), "one\n");
    boot_loader_kept("after an update back");
    update("e@2");
    ok(&["rollback", "--root", n]);
    assert_eq!(std::fs::read_to_string(entry(&node)).unwrap(), "one\n");
    boot_loader_kept("after a rollback");
}

#[test]
fn default_excludes_keep_the_nodes_own_files() {
    let env = Env::new();
    let (_, rev2) = two_revisions(&env);
    let node = node_at(&env, "node", "c@1");
    let n = node.to_str().unwrap();
    sh(&format!("printf 'local\\n' > {n}/home/alice/notes && printf 'n01\\n' > {n}/etc/hostname && mkdir -p {n}/etc/ssh && printf key > {n}/etc/ssh/ssh_host_ed25519_key"));
    ok(&[
        "updateclient",
        "--repo",
        env.repo().to_str().unwrap(),
        "--image",
        "c@2",
        "--root",
        n,
    ]);
    assert_eq!(
        std::fs::read_to_string(node.join("home/alice/notes")).unwrap(),
        "local\n"
    );
    assert_eq!(
        std::fs::read_to_string(node.join("etc/hostname")).unwrap(),
        "n01\n"
    );
    assert!(node.join("etc/ssh/ssh_host_ed25519_key").exists());
    assert_eq!(
        std::fs::read_to_string(node.join("etc/a")).unwrap(),
        "two\n"
    );
    let _ = rev2;
    assert!(ok(&["updateclient", "--show-default-excludes"]).contains("/etc/fstab"));
}

#[test]
fn a_plain_web_server_is_enough() {
    let env = Env::new();
    let (_, rev2) = two_revisions(&env);
    let node = node_at(&env, "node", "c@1");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut web = Command::new("python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
            "--directory",
        ])
        .arg(env.public())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let mut up = false;
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(up, "python3 -m http.server did not start");
    let r = aurum(&[
        "updateclient",
        "--server",
        &url,
        "--image",
        "c:nosuch",
        "--root",
        node.to_str().unwrap(),
    ]);
    assert!(!r.status.success());
    let o = aurum(&[
        "updateclient",
        "--server",
        &url,
        "--image",
        "c",
        "--root",
        node.to_str().unwrap(),
        "--no-default-excludes",
    ]);
    let _ = web.kill();
    let _ = web.wait();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(node_diff(&rev2, &node), "");
}

#[test]
fn a_server_sending_wrong_bytes_changes_nothing() {
    let env = Env::new();
    let (rev1, _) = two_revisions(&env);
    let node = node_at(&env, "node", "c@1");
    // Damage every pack written by the second capture (the newest files).
    let mut packs: Vec<PathBuf> = Vec::new();
    for d in std::fs::read_dir(env.public().join("packs")).unwrap() {
        let d = d.unwrap().path();
        if d.is_dir() {
            for f in std::fs::read_dir(&d).unwrap() {
                let f = f.unwrap().path();
                if f.extension().is_some_and(|e| e == "pack") {
                    packs.push(f);
                }
            }
        }
    }
    packs.sort_by_key(|p| std::fs::metadata(p).unwrap().modified().unwrap());
    let newest = packs.last().unwrap();
    let mut data = std::fs::read(newest).unwrap();
    for i in (60..data.len()).step_by(997) {
        data[i] ^= 0x55;
    }
    std::fs::write(newest, data).unwrap();
    // The deltas precomputed at capture would rebuild the files without the damaged pack.
    let _ = std::fs::remove_dir_all(env.public().join("deltas"));
    let srv = Server::start(&env);
    let o = aurum(&[
        "updateclient",
        "--server",
        &format!("http://{}", srv.addr),
        "--image",
        "c@2",
        "--root",
        node.to_str().unwrap(),
        "--no-default-excludes",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "an update with wrong bytes succeeded");
    assert!(err.contains("wrong bytes for blob"), "{err}");
    assert_eq!(node_diff(&rev1, &node), "", "the node was changed");
}

#[test]
fn a_symlink_on_the_node_cannot_lead_writes_outside_the_root() {
    let env = Env::new();
    let (_, rev2) = two_revisions(&env);
    let node = node_at(&env, "node", "c@1");
    let outside = env.path("outside");
    std::fs::create_dir(&outside).unwrap();
    // Someone replaced /etc/conf.d... and /srv with symlinks to a directory outside the root.
    sh(&format!(
        "rm -rf {n}/etc/to-dir && ln -s {o} {n}/etc/to-dir",
        n = node.display(),
        o = outside.display()
    ));
    ok(&[
        "updateclient",
        "--repo",
        env.repo().to_str().unwrap(),
        "--image",
        "c@2",
        "--root",
        node.to_str().unwrap(),
        "--no-default-excludes",
    ]);
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "something was written outside the root"
    );
    assert_eq!(node_diff(&rev2, &node), "");
}

/// Runs an aurum command and SIGKILLs it after `ms` milliseconds (if still running).
/// When to kill a command: `ms` after its start, or as soon as the node's journal appears
/// (it has begun to change the root).
#[derive(Clone, Copy, Debug)]
pub enum KillAt {
    Ms(u64),
    Journal,
}

/// Runs aurum and kills it (SIGKILL) at `at`; whether it was still running then.
pub fn killed(args: &[&str], root: &Path, at: KillAt) -> bool {
    let mut child = Command::new(env!("CARGO_BIN_EXE_aurum"))
        .arg("--no-progress")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    match at {
        KillAt::Ms(ms) => std::thread::sleep(Duration::from_millis(ms)),
        KillAt::Journal => {
            let journal = root.join("var/lib/aurum-node/journal.json");
            while !journal.exists() && child.try_wait().unwrap().is_none() {
                std::hint::spin_loop();
            }
        }
    }
    let _ = child.kill();
    let status = child.wait().unwrap();
    std::os::unix::process::ExitStatusExt::signal(&status) == Some(libc::SIGKILL)
}

/// Two revisions of image `k`, 60 files of 300,000 bytes each all changed between them,
/// and one file only in each: what the kill tests cut short. Returns the two trees.
pub fn kill_revisions(env: &Env) -> (std::path::PathBuf, std::path::PathBuf) {
    let a = env.path("rev1");
    let b = env.path("rev2");
    for i in 0..60 {
        write_random(&a.join(format!("data/f{i:02}")), i, 300_000);
        write_random(&b.join(format!("data/f{i:02}")), 1000 + i, 300_000);
    }
    sh(&format!(
        "mkdir -p {a}/var/lib {b}/var/lib && printf a > {a}/only-a && printf b > {b}/only-b",
        a = a.display(),
        b = b.display()
    ));
    env.getimage(&a, "k", &[]);
    env.getimage(&b, "k", &[]);
    (a, b)
}

#[test]
fn killed_updates_and_rollbacks_finish_when_rerun() {
    let env = Env::new();
    let (a, b) = kill_revisions(&env);
    let repo = env.repo();
    let r = repo.to_str().unwrap();
    let (mut updates_killed, mut rollbacks_killed) = (0, 0);
    let points = [
        KillAt::Journal,
        KillAt::Ms(30),
        KillAt::Ms(120),
        KillAt::Ms(300),
    ];
    for (i, at) in points.into_iter().enumerate() {
        let node = node_at(&env, &format!("node{i}"), "k@1");
        let n = node.to_str().unwrap();
        let up = ["updateclient", "--repo", r, "--image", "k@2", "--root", n];
        updates_killed += killed(&up, &node, at) as u32;
        ok(&up);
        assert_eq!(
            node_diff(&b, &node),
            "",
            "update killed at {at:?}, then rerun"
        );
        rollbacks_killed += killed(&["rollback", "--root", n], &node, at) as u32;
        // Rerun only what did not finish: a second rollback of a finished one goes forward.
        let status = json(&ok(&["node-status", "--root", n, "--json"]));
        if !status["interrupted"].is_null() || status["state"]["current"]["number"] != 1 {
            ok(&["rollback", "--root", n]);
        }
        assert_eq!(
            node_diff(&a, &node),
            "",
            "rollback killed at {at:?}, then rerun"
        );
    }
    // At least the kill at the journal lands mid-run, whatever the machine's speed.
    assert!(
        updates_killed >= 1 && rollbacks_killed >= 1,
        "no kill landed: {updates_killed} updates, {rollbacks_killed} rollbacks"
    );
}

#[test]
fn sixteen_nodes_update_from_one_server() {
    let env = Env::new();
    let (_, rev2) = two_revisions(&env);
    let nodes: Vec<PathBuf> = (0..16)
        .map(|i| node_at(&env, &format!("n{i:02}"), "c@1"))
        .collect();
    let srv = Server::start(&env);
    for n in &nodes {
        env.give_node_token(n);
    }
    let url = format!("http://{}", srv.addr);
    std::thread::scope(|s| {
        for n in &nodes {
            let url = &url;
            s.spawn(move || {
                ok(&[
                    "updateclient",
                    "--server",
                    url,
                    "--image",
                    "c@2",
                    "--root",
                    n.to_str().unwrap(),
                    "--no-default-excludes",
                ]);
            });
        }
    });
    for n in &nodes {
        assert_eq!(node_diff(&rev2, n), "", "{}", n.display());
    }
    assert_eq!(
        json(&env.ok(&["nodes", "--json"]))
            .as_array()
            .unwrap()
            .len(),
        1,
        "all nodes share this host's name"
    );
}

/// Publishes a hand-made manifest as image `name` in the repository, bypassing getimage (which
/// would never write one like it).
fn publish_raw_manifest(env: &Env, name: &str, m: &aurum::format::manifest::Manifest) -> String {
    let raw = m.encode();
    let id = aurum::format::Id::of(&raw);
    let hex = id.hex();
    let dir = env.public().join("manifests").join(&hex[..2]);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(format!("{hex}.mf")),
        zstd::bulk::compress(&raw, 3).unwrap(),
    )
    .unwrap();
    let refs = env.public().join("refs").join(name);
    std::fs::create_dir_all(&refs).unwrap();
    std::fs::write(refs.join("head"), format!("{hex}\n")).unwrap();
    hex
}

#[test]
fn manifests_that_lead_outside_the_root_are_refused() {
    use aurum::format::manifest::{Entry, Kind, Manifest};
    let env = Env::new();
    let (_, _) = two_revisions(&env);
    let node = node_at(&env, "node", "c@1");
    let before = node_diff(&env.path("rev1"), &node);
    assert_eq!(before, "");
    let outside = env.path("outside");
    std::fs::create_dir(&outside).unwrap();
    let e = |path: &str, kind: Kind| Entry {
        path: path.as_bytes().to_vec(),
        kind,
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime: 0,
        mtime_nsec: 0,
        xattrs: vec![],
    };
    let fifo = || Kind::Fifo;
    let evil = [
        ("dotdot", vec![e("", Kind::Dir), e("../escaped", fifo())]),
        ("absolute", vec![e("", Kind::Dir), e("/escaped", fifo())]),
        (
            "through-a-symlink",
            vec![
                e("", Kind::Dir),
                e(
                    "link",
                    Kind::Symlink {
                        target: outside.to_str().unwrap().as_bytes().to_vec(),
                    },
                ),
                e("link/escaped", fifo()),
            ],
        ),
    ];
    let srv = Server::start(&env);
    for (name, entries) in evil {
        publish_raw_manifest(&env, name, &Manifest { entries });
        let o = aurum(&[
            "updateclient",
            "--server",
            &format!("http://{}", srv.addr),
            "--image",
            name,
            "--root",
            node.to_str().unwrap(),
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{name}: accepted");
        assert!(err.contains("refusing"), "{name}: {err}");
    }
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    assert!(!env.path("escaped").exists() && !Path::new("/escaped").exists());
    assert_eq!(
        node_diff(&env.path("rev1"), &node),
        "",
        "the node was changed"
    );
}

#[test]
fn a_small_change_fetches_little() {
    let env = Env::new();
    let a = env.path("rev1");
    write_random(&a.join("usr/lib/libbig.so"), 3, 4 << 20);
    for i in 0..200 {
        std::fs::create_dir_all(a.join("usr/share/doc")).unwrap();
        std::fs::write(
            a.join(format!("usr/share/doc/f{i}")),
            format!("documentation {i}\n").repeat(50),
        )
        .unwrap();
    }
    std::fs::create_dir_all(a.join("var/lib")).unwrap();
    std::fs::write(a.join("etc.conf"), b"setting = 1\n").unwrap();
    env.getimage(&a, "s", &[]);
    let node = node_at(&env, "node", "s@1");
    std::fs::write(a.join("etc.conf"), b"setting = 2\n").unwrap();
    env.getimage(&a, "s", &[]);
    let srv = Server::start(&env);
    let r = json(&ok(&[
        "updateclient",
        "--server",
        &format!("http://{}", srv.addr),
        "--image",
        "s@2",
        "--root",
        node.to_str().unwrap(),
        "--json",
    ]));
    // One 12-byte file changed: what crosses the wire is its compressed record, not the 4 MiB
    // library or the documentation group next to it.
    let fetched = r["bytes_fetched"].as_u64().unwrap();
    assert!(fetched > 0 && fetched < 1024, "{r}");
    assert_eq!(node_diff(&a, &node), "");
}

/// `aurum` with `--repo` for updateclient and rollback, panicking unless it succeeds.
fn on_node(env: &Env, node: &Path, args: &[&str]) -> String {
    let repo = env.repo();
    let mut a = vec![
        args[0],
        "--repo",
        repo.to_str().unwrap(),
        "--root",
        node.to_str().unwrap(),
    ];
    a.extend_from_slice(&args[1..]);
    ok(&a)
}

/// The xattrs of `path` (not following a symlink), `getfattr -d -m -` style.
fn xattrs_of(path: &Path) -> String {
    sh(&format!(
        "getfattr -h -d -m - --absolute-names {}",
        path.display()
    ))
}

#[test]
fn removed_xattrs_and_acls_are_removed_by_update_and_rollback() {
    if !is_root() {
        skip("needs root (trusted.* xattrs on a symlink)");
        return;
    }
    let env = Env::new();
    let a = env.path("rev1");
    let b = env.path("rev2");
    // rev1: xattrs and ACLs on files, on a directory with a default ACL (what is created in it
    // inherits an ACL), on a symlink and on the root; rev2 the same without them, and with
    // new entries in a directory whose default ACL stays.
    sh(&format!(
        r#"mkdir -p {a}/etc/d {a}/etc/d2 {a}/var/lib && cd {a} \
        && printf 'one\n' > etc/f && setfattr -n user.new -v x etc/f \
        && printf 'same\n' > etc/g && setfattr -n user.new -v x etc/g \
        && printf 'acl\n' > etc/acl && setfacl -m u:1234:rwx etc/acl \
        && setfacl -d -m u:1234:rwx etc/d && setfattr -n user.a -v 1 etc/d \
        && printf 'in\n' > etc/d/inner && setfacl -d -m u:1234:rwx etc/d2 \
        && ln -s f etc/link && setfattr -h -n trusted.t -v 1 etc/link \
        && setfattr -n user.root -v 1 ."#,
        a = a.display()
    ));
    sh(&format!(
        r#"cp -a {a}/. {b}/ && cd {b} \
        && printf 'two\n' > etc/f && setfattr -x user.new etc/f && setfattr -x user.new etc/g \
        && setfacl -b etc/acl && setfacl -b etc/d && setfattr -x user.a etc/d \
        && setfacl -b etc/d/inner && setfattr -h -x trusted.t etc/link \
        && printf 'new\n' > etc/d2/new && mkdir etc/d2/sub && setfacl -b etc/d2/new etc/d2/sub \
        && setfattr -x user.root ."#,
        a = a.display(),
        b = b.display()
    ));
    env.getimage(&a, "x", &[]);
    env.getimage(&b, "x", &[]);
    // The checkout is exact too (the root's xattr included; nothing inherited in etc/d2).
    let co = env.path("co");
    env.ok(&["checkout", "x@2", co.to_str().unwrap()]);
    assert_eq!(crate::common::rsync_diff(&b, &co), "", "checkout of rev2");

    let node = node_at(&env, "node", "x@1");
    assert_eq!(node_diff(&a, &node), "");
    on_node(&env, &node, &["updateclient", "--image", "x@2"]);
    let d = node_diff(&b, &node);
    assert_eq!(d, "", "update to rev2 kept xattrs or ACLs:\n{d}");
    assert!(!xattrs_of(&node.join("etc/link")).contains("trusted.t"));
    assert!(!xattrs_of(&node).contains("user.root"));

    // Hand-added xattrs and ACLs go too, whichever way the node is brought to a revision: the
    // rolled-back-from file comes back from the undo area carrying them.
    let by_hand = || {
        sh(&format!(
            "cd {n} && setfattr -n user.hand -v 1 etc/f && setfattr -n user.hand -v 1 etc/g \
             && setfacl -m u:4321:r etc/acl && setfattr -h -n trusted.hand -v 1 etc/link \
             && setfattr -n user.hand -v 1 etc/d",
            n = node.display()
        ));
    };
    by_hand();
    on_node(&env, &node, &["rollback"]);
    let d = node_diff(&a, &node);
    assert_eq!(d, "", "rollback to rev1:\n{d}");
    by_hand();
    on_node(&env, &node, &["rollback"]);
    let d = node_diff(&b, &node);
    assert_eq!(d, "", "rollback forward to rev2, from the undo area:\n{d}");
    by_hand();
    on_node(&env, &node, &["rollback", "--to", "x@1"]);
    assert_eq!(node_diff(&a, &node), "", "rollback --to");
    ok(&["mark-good", "--root", node.to_str().unwrap()]);
    on_node(&env, &node, &["updateclient", "--image", "x@2"]);
    assert_eq!(node_diff(&b, &node), "");
    by_hand();
    on_node(&env, &node, &["rollback", "--last-known-good"]);
    let d = node_diff(&a, &node);
    assert_eq!(d, "", "rollback --last-known-good:\n{d}");
    // An update to the revision the node runs repairs hand-added xattrs as well.
    by_hand();
    on_node(&env, &node, &["updateclient", "--image", "x@1"]);
    assert_eq!(node_diff(&a, &node), "", "repair of rev1");
}

#[test]
fn hand_changes_are_listed_with_what_changed() {
    let env = Env::new();
    let a = env.path("rev1");
    let b = env.path("rev2");
    sh(&format!(
        r#"mkdir -p {a}/etc {a}/usr/bin {a}/var/lib && cd {a} \
        && printf 'one\n' > etc/conf && printf 'tool' > usr/bin/tool && chmod 755 usr/bin/tool \
        && printf 'x\n' > etc/x && printf 'del\n' > etc/del && printf 't\n' > etc/type \
        && printf 'abcd\n' > etc/verify && ln -s conf etc/link && printf 'old\n' > etc/changes \
        && printf 'touched\n' > etc/touched"#,
        a = a.display()
    ));
    sh(&format!(
        "cp -a {a}/. {b}/ && printf 'new\\n' > {b}/etc/changes",
        a = a.display(),
        b = b.display()
    ));
    env.getimage(&a, "h", &[]);
    env.getimage(&b, "h", &[]);
    let node = node_at(&env, "node", "h@1");
    // By hand: content (size and mtime differ), mode, xattrs, a deletion, a type change, a
    // symlink's target, a file the revision lacks, an mtime, and a content change with size and
    // mtime kept (only --verify-local sees it).
    sh(&format!(
        r#"cd {n} && printf 'edited\n' > etc/conf && chmod 700 usr/bin/tool \
        && setfattr -n user.hand -v 1 etc/x && rm etc/del && rm etc/type && mkdir etc/type \
        && ln -sfn x etc/link && printf 'mine\n' > etc/added && touch -d 2001-01-01 etc/touched \
        && cp -p etc/verify /tmp/.aurum-test-ref.$$ && printf 'wxyz\n' > etc/verify \
        && touch -r /tmp/.aurum-test-ref.$$ etc/verify && rm /tmp/.aurum-test-ref.$$"#,
        n = node.display()
    ));
    let mut expected = vec![
        ("/etc/added", "added"),
        ("/etc/conf", "content"),
        ("/etc/del", "deleted"),
        ("/etc/link", "target"),
        ("/etc/touched", "mtime"),
        ("/etc/type", "type"),
        ("/etc/x", "xattrs"),
        ("/usr/bin/tool", "mode"),
    ];
    if is_root() {
        sh(&format!("chown 7:7 {}/etc/x", node.display()));
        expected[6].1 = "owner, xattrs";
    }
    // Without --verify-local the same-size edit with its mtime restored is not seen; the
    // revision's own change (etc/changes) is never a hand change.
    let o = aurum(&[
        "updateclient",
        "--repo",
        env.repo().to_str().unwrap(),
        "--image",
        "h@2",
        "--root",
        node.to_str().unwrap(),
        "--dry-run",
    ]);
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    let listed: Vec<&str> = err
        .lines()
        .filter_map(|l| l.strip_prefix("aurum: changed on this node, overwritten: "))
        .collect();
    let want: Vec<String> = expected.iter().map(|(p, w)| format!("{p} ({w})")).collect();
    assert_eq!(listed, want, "{err}");

    expected.insert(6, ("/etc/verify", "content"));
    let r = json(&on_node(
        &env,
        &node,
        &["updateclient", "--image", "h@2", "--verify-local", "--json"],
    ));
    let changes: Vec<(String, String)> = r["local_changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let what: Vec<&str> = c["what"]
                .as_array()
                .unwrap()
                .iter()
                .map(|w| w.as_str().unwrap())
                .collect();
            (c["path"].as_str().unwrap().to_string(), what.join(", "))
        })
        .collect();
    let want: Vec<(String, String)> = expected
        .iter()
        .map(|(p, w)| (p.to_string(), w.to_string()))
        .collect();
    assert_eq!(changes, want, "{r}");
    // modified_locally stays the list of paths.
    let paths: Vec<&str> = r["modified_locally"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        expected.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        "{r}"
    );
    let d = node_diff(&b, &node);
    assert_eq!(d, "", "{d}");
}

#[test]
fn an_image_that_makes_var_a_symlink_is_refused_before_anything_changes() {
    use aurum::format::manifest::{Entry, Kind, Manifest};
    let env = Env::new();
    let a = env.path("rev1");
    sh(&format!(
        "mkdir -p {a}/etc {a}/var/lib/dpkg && printf 'one\\n' > {a}/etc/a && printf s > {a}/var/lib/dpkg/status",
        a = a.display()
    ));
    env.getimage(&a, "v", &[]);
    let node = node_at(&env, "node", "v@1");
    let e = |path: &str, kind: Kind| Entry {
        path: path.as_bytes().to_vec(),
        kind,
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime: 0,
        mtime_nsec: 0,
        xattrs: vec![],
    };
    let link = |t: &str| Kind::Symlink {
        target: t.as_bytes().to_vec(),
    };
    let bad = [
        (
            "var-symlink",
            vec![e("", Kind::Dir), e("var", link("private/var"))],
            "/var a symlink",
        ),
        (
            "var-fifo",
            vec![e("", Kind::Dir), e("var", Kind::Fifo)],
            "/var a fifo",
        ),
        (
            "varlib-symlink",
            vec![
                e("", Kind::Dir),
                e("var", Kind::Dir),
                e("var/lib", link("/usr/lib")),
            ],
            "/var/lib a symlink",
        ),
    ];
    let srv = Server::start(&env);
    for (name, entries, says) in bad {
        publish_raw_manifest(&env, name, &Manifest { entries });
        // Refused, and refused again: nothing was left half done.
        for _ in 0..2 {
            let o = aurum(&[
                "updateclient",
                "--server",
                &format!("http://{}", srv.addr),
                "--image",
                name,
                "--root",
                node.to_str().unwrap(),
            ]);
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(2), "{name}: {err}");
            assert!(
                err.contains(&format!("the image makes {says}"))
                    && err.contains("/var/lib/aurum-node"),
                "{name}: {err}"
            );
            assert_eq!(node_diff(&a, &node), "", "{name}: the node was changed");
            assert!(!node.join(".var.aurum-new").exists());
        }
    }
    // The node is not stuck: a good revision still goes on.
    let status = json(&ok(&[
        "node-status",
        "--root",
        node.to_str().unwrap(),
        "--json",
    ]));
    assert!(status["interrupted"].is_null(), "{status}");
    sh(&format!("printf 'two\\n' > {}/etc/a", a.display()));
    env.getimage(&a, "v", &[]);
    on_node(&env, &node, &["updateclient", "--image", "v@2"]);
    assert_eq!(node_diff(&a, &node), "");
}

/// A read-only bind mount of `src` at `at`, unmounted when dropped (also when a test panics).
struct ReadOnlyMount(PathBuf);

impl ReadOnlyMount {
    fn new(src: &Path, at: &Path) -> ReadOnlyMount {
        std::fs::create_dir_all(at).unwrap();
        sh(&format!("mount --bind {} {}", src.display(), at.display()));
        let m = ReadOnlyMount(at.to_path_buf());
        sh(&format!("mount -o remount,ro,bind {}", at.display()));
        m
    }
}

impl Drop for ReadOnlyMount {
    fn drop(&mut self) {
        let done = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !done {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

#[test]
fn a_dry_run_writes_nothing_under_the_root() {
    let env = Env::new();
    let a = env.path("rev1");
    sh(&format!(
        "mkdir -p {a}/etc {a}/var/lib/dpkg && printf 'one\\n' > {a}/etc/a && printf s > {a}/var/lib/dpkg/status",
        a = a.display()
    ));
    env.getimage(&a, "r", &[]);
    sh(&format!("printf 'two\\n' > {}/etc/a", a.display()));
    env.getimage(&a, "r", &[]);
    let rev1 = env.path("rev1-tree");
    env.ok(&["checkout", "r@1", rev1.to_str().unwrap()]);
    let dry = |root: &Path| {
        let plan = on_node(&env, root, &["updateclient", "--image", "r@2", "--dry-run"]);
        assert!(plan.contains("> content  /etc/a"), "{plan}");
    };
    // A root aurum never updated: no state directory appears, no directory's mtime moves.
    let fresh = env.path("fresh");
    env.ok(&["checkout", "r@1", fresh.to_str().unwrap()]);
    assert_eq!(crate::common::rsync_diff(&rev1, &fresh), "");
    dry(&fresh);
    let d = crate::common::rsync_diff(&rev1, &fresh);
    assert_eq!(d, "", "the dry run changed the fresh root:\n{d}");

    // A node with state: its state directory is not touched either (no lock file created).
    let node = node_at(&env, "node", "r@1");
    std::fs::remove_file(node.join("var/lib/aurum-node/lock")).unwrap();
    let before = env.path("before");
    sh(&format!("cp -a {}/. {}/", node.display(), before.display()));
    dry(&node);
    let d = crate::common::rsync_diff(&before, &node);
    assert_eq!(d, "", "the dry run changed the node:\n{d}");

    if !is_root() {
        skip("the read-only mounts need root");
        return;
    }
    for (name, root) in [("fresh", &fresh), ("node", &node)] {
        let ro = ReadOnlyMount::new(root, &env.path(&format!("ro-{name}")));
        dry(&ro.0);
        drop(ro);
    }
    sh(&format!("touch {}/var/lib/aurum-node/lock", node.display()));
    let ro = ReadOnlyMount::new(&node, &env.path("ro-locked"));
    dry(&ro.0);
}

/// A minimal init that did not mount /proc (found booting a node from a bare busybox init):
/// updateclient, checkout and getimage set and read extended attributes through
/// /proc/self/fd, and without /proc they failed with "No such file or directory" naming a
/// file that exists. Now they refuse up front, saying to mount /proc, and write nothing.
#[test]
fn commands_without_proc_mounted_say_to_mount_it() {
    if !crate::common::can_run(is_root(), "root (a mount namespace hiding /proc)")
        || !crate::common::need("unshare")
    {
        return;
    }
    let env = Env::new();
    let g = env.path("golden");
    std::fs::create_dir_all(g.join("etc")).unwrap();
    std::fs::write(g.join("etc/motd"), "hello\n").unwrap();
    env.getimage(&g, "t", &[]);
    let node = env.path("node");
    std::fs::create_dir_all(&node).unwrap();
    let repo = env.repo();
    let aurum = env!("CARGO_BIN_EXE_aurum");
    // /proc hidden under an empty tmpfs in a mount namespace of the command's own.
    let without_proc = |args: &str| {
        Command::new("unshare")
            .args(["-m", "--fork", "sh", "-c"])
            .arg(format!(
                "mount -t tmpfs none /proc && exec {aurum} --no-progress --repo {} {args}",
                repo.display()
            ))
            .env("AURUM_CONFIG_DIR", env.config_dir())
            .output()
            .unwrap()
    };
    for args in [
        format!("updateclient --image t --adopt --root {}", node.display()),
        format!("checkout t {}", env.path("co").display()),
        format!("getimage --golden-client {} --image t", g.display()),
    ] {
        let out = without_proc(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "aurum {args}: {err}");
        assert!(
            err.contains("/proc is not mounted") && err.contains("mount -t proc proc /proc"),
            "aurum {args}: {err}"
        );
    }
    assert!(!node.join("etc").exists(), "the update wrote into the root");
    assert!(!env.path("co").join("etc").exists());
    assert_eq!(crate::common::revisions_of(&env, "t"), 1);
}

/// Update, rollback, update, rollback, each ending exactly on its revision (`rsync -c`, times
/// to the nanosecond) and warning of no hand change, on a tree with what real package updates
/// make and the other tests' trees lacked: directories whose mtime alone changes (the root, one
/// whose only change is a file's mtime, one where nothing at all changed inside), two trigger
/// files of the same size whose content changes to the same bytes with different mtimes, a
/// metadata-only change, a file created and one deleted, a hardlinked pair whose content
/// changes. The rollbacks are the rename ones
/// (right after each update), the second update goes forward again from the first rollback's
/// undo area.
#[test]
fn update_and_rollback_twice_each_end_exact() {
    let env = Env::new();
    let (a, b) = (env.path("rev1"), env.path("rev2"));
    let info = "var/lib/dpkg/info";
    sh(&format!(
        r#"mkdir -p {a}/etc/cron.daily {a}/etc/pam.d {a}/{info} {a}/usr/lib && cd {a} \
        && printf 'rotate\n' > etc/cron.daily/logrotate && printf 'auth\n' > etc/pam.d/common-auth \
        && printf 'activate-noawait ldconfig-zlib1\n' > {info}/zlib1g.triggers \
        && printf 'activate-noawait ldconfig-pcre2\n' > {info}/libpcre2.triggers \
        && printf 'mode\n' > etc/mode && printf 'gone\n' > etc/deleted && printf 'lib\n' > usr/lib/x \
        && printf 'perl 1\n' > usr/lib/perl && ln usr/lib/perl usr/lib/perl5 \
        && touch -d '2022-11-05 12:24:46.5' {info}/zlib1g.triggers \
        && touch -d '2023-01-01 15:44:06' {info}/libpcre2.triggers \
        && find . -type d -exec touch -d '2023-02-02 10:00:00.25' {{}} +"#,
        a = a.display()
    ));
    sh(&format!(
        r#"cp -a {a}/. {b}/ && cd {b} \
        && printf 'activate-noawait ldconfig-both\n' > {info}/zlib1g.triggers \
        && printf 'activate-noawait ldconfig-both\n' > {info}/libpcre2.triggers \
        && touch -d '2026-11-28 20:17:18' {info}/zlib1g.triggers \
        && touch -d '2026-10-03 13:07:41.75' {info}/libpcre2.triggers \
        && touch -d '2026-10-03 13:00:00' etc/pam.d/common-auth && chmod 600 etc/mode \
        && rm etc/deleted && printf 'new\n' > etc/created && printf 'perl 2\n' > usr/lib/perl \
        && touch -d '2026-10-03 12:00:00' . etc etc/cron.daily etc/pam.d {info}"#,
        a = a.display(),
        b = b.display()
    ));
    if is_root() {
        sh(&format!("chown 7:8 {}/etc/mode", b.display()));
    }
    env.getimage(&a, "t", &["--no-default-excludes"]);
    env.getimage(&b, "t", &["--no-default-excludes"]);
    let node = node_at(&env, "node", "t@1");
    assert_eq!(node_diff(&a, &node), "", "adopted rev1");
    let ino = |rel: &str| std::fs::metadata(node.join(rel)).unwrap().ino();
    let run = |args: &[&str], step: &str, want: &Path| {
        let repo = env.repo();
        let o = aurum(
            &[
                args,
                &[
                    "--repo",
                    repo.to_str().unwrap(),
                    "--root",
                    node.to_str().unwrap(),
                    "--no-default-excludes",
                ],
            ]
            .concat(),
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{step}: {err}");
        assert!(!err.contains("changed on this node"), "{step}: {err}");
        let d = node_diff(want, &node);
        assert_eq!(d, "", "{step}: the node differs:\n{d}");
        // Two files the revision gives their own inodes keep them (rsync -H cannot tell).
        assert_ne!(
            ino(&format!("{info}/zlib1g.triggers")),
            ino(&format!("{info}/libpcre2.triggers")),
            "{step}: two trigger files share an inode"
        );
    };
    for i in 1..=2 {
        run(
            &["updateclient", "--image", "t@2"],
            &format!("update {i}"),
            &b,
        );
        run(&["rollback"], &format!("rollback {i}"), &a);
    }
}

/// A rollback by rename sets only the mtime of an entry whose revisions differ in the mtime
/// alone, but not when the entry's owner, mode or xattrs were changed by hand since the update:
/// those are put back too, as the full engine would.
#[test]
fn a_rollback_by_rename_undoes_a_hand_change_to_an_entry_whose_mtime_alone_changed() {
    let env = Env::new();
    let (a, b) = (env.path("rev1"), env.path("rev2"));
    sh(&format!(
        r#"mkdir -p {a}/etc/pam.d {a}/var/lib && cd {a} && printf 'auth\n' > etc/pam.d/common-auth \
        && printf 'session\n' > etc/pam.d/common-session && printf 'gone\n' > etc/deleted \
        && find . -exec touch -d '2023-02-02 10:00:00' {{}} +"#,
        a = a.display()
    ));
    sh(&format!(
        r#"cp -a {a}/. {b}/ && cd {b} && rm etc/deleted \
        && touch -d '2026-10-03 13:00:00' etc/pam.d/common-auth etc/pam.d/common-session"#,
        a = a.display(),
        b = b.display()
    ));
    env.getimage(&a, "t", &["--no-default-excludes"]);
    env.getimage(&b, "t", &["--no-default-excludes"]);
    let node = node_at(&env, "node", "t@1");
    let ino = |rel: &str| std::fs::metadata(node.join(rel)).unwrap().ino();
    let deleted = ino("etc/deleted");
    let repo = env.repo();
    let node_args = [
        "--repo",
        repo.to_str().unwrap(),
        "--root",
        node.to_str().unwrap(),
        "--no-default-excludes",
    ];
    ok(&[&["updateclient", "--image", "t@2"][..], &node_args].concat());
    assert_eq!(node_diff(&b, &node), "", "updated");
    // By hand, after the update: a mode and an xattr on the files whose mtime alone changed.
    sh(&format!(
        "cd {} && chmod 600 etc/pam.d/common-auth && setfattr -n user.hand -v 1 etc/pam.d/common-session",
        node.display()
    ));
    ok(&[&["rollback"][..], &node_args].concat());
    let d = node_diff(&a, &node);
    assert_eq!(d, "", "the hand changes outlived the rollback:\n{d}");
    assert_eq!(ino("etc/deleted"), deleted, "not a rollback by rename");
}

/// A rollback by rename trades places with the update's undo area (one `renameat2` with
/// `RENAME_EXCHANGE` per entry): the area stays the node's one area, under its name, and then
/// holds what the rollback replaced, so each further rollback goes the other way by rename
/// too. A file the update deleted is renamed out and its line dropped; one the update created
/// is moved in under a new line; a directory and a file trade places whole. Every line of the
/// area's index names a file there, after every rollback.
#[test]
fn rollbacks_by_rename_trade_places_with_the_undo_area_back_and_forth() {
    let env = Env::new();
    let (a, b) = (env.path("rev1"), env.path("rev2"));
    sh(&format!(
        r#"mkdir -p {a}/etc {a}/opt/thing {a}/var/lib && cd {a} && printf 'one\n' > etc/changed \
        && printf 'gone\n' > etc/deleted && printf 'inside\n' > opt/thing/file \
        && printf 'same\n' > etc/same"#,
        a = a.display()
    ));
    sh(&format!(
        r#"cp -a {a}/. {b}/ && cd {b} && printf 'two, longer\n' > etc/changed && rm etc/deleted \
        && printf 'new\n' > etc/created && rm -r opt/thing && printf 'a file now\n' > opt/thing"#,
        a = a.display(),
        b = b.display()
    ));
    env.getimage(&a, "t", &["--no-default-excludes"]);
    env.getimage(&b, "t", &["--no-default-excludes"]);
    let node = node_at(&env, "node", "t@1");
    let repo = env.repo();
    let n = node.to_str().unwrap();
    let node_args = ["--root", n, "--no-default-excludes"];
    ok(&[
        &[
            "--repo",
            repo.to_str().unwrap(),
            "updateclient",
            "--image",
            "t@2",
        ][..],
        &node_args,
    ]
    .concat());
    assert_eq!(node_diff(&b, &node), "", "updated");
    let undo = node.join("var/lib/aurum-node/undo");
    let areas = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&undo)
            .unwrap()
            .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let area = areas();
    assert_eq!(area.len(), 1, "one undo area after the update: {area:?}");
    let index = undo.join(&area[0]).join("index");
    let ino = |rel: &str| std::fs::symlink_metadata(node.join(rel)).unwrap().ino();
    let (changed2, thing2) = (ino("etc/changed"), ino("opt/thing"));
    let mut previous: Option<(u64, u64)> = None;
    for (i, want) in [&a, &b, &a, &b].into_iter().enumerate() {
        ok(&[&["rollback"][..], &node_args].concat());
        let d = node_diff(want, &node);
        assert_eq!(d, "", "rollback {i}:\n{d}");
        assert_eq!(
            areas(),
            area,
            "rollback {i} kept the update's area, and only it"
        );
        // Every line names a file in the area (a line for an entry renamed out is dropped).
        let lines = std::fs::read_to_string(&index).unwrap();
        let mut paths = Vec::new();
        for line in lines.lines() {
            let (num, path) = line.split_once(' ').expect("N HEXPATH");
            assert!(
                std::fs::symlink_metadata(undo.join(&area[0]).join(num)).is_ok(),
                "rollback {i}: index line {line:?} names no file"
            );
            paths.push(path.to_string());
        }
        let mut unique = paths.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(
            unique.len(),
            paths.len(),
            "rollback {i}: a path twice in {lines}"
        );
        // The inodes trade places: the one the update wrote is back after each second rollback.
        let now = (ino("etc/changed"), ino("opt/thing"));
        if want == &b {
            assert_eq!(now, (changed2, thing2), "rollback {i}: not renamed back");
        }
        if let Some(before) = previous {
            assert_ne!(now, before, "rollback {i} changed nothing");
        }
        previous = Some(now);
    }
}
