//! Fidelity: the tree that comes out of `checkout` equals the tree that went into `getimage`,
//! for every kind of entry and attribute the issue lists (devices, setuid, owners, nanosecond
//! mtimes, xattrs, ACLs, capabilities, hardlinks, sparse holes, non-UTF-8 names, paths longer
//! than PATH_MAX), and mounts inside the golden client are handled like SystemImager's.

use std::path::Path;

use crate::common::{have, is_root, rsync_diff, sh, skip, Env};

/// Compares two trees with tests/it/treecmp.py (every attribute, beyond PATH_MAX).
fn tree_diff(a: &Path, b: &Path) -> (bool, String) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/treecmp.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(a)
        .arg(b)
        .output()
        .expect("python3 is installed by test.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Builds a tree with one of everything under `root`.
fn build_everything(root: &Path) {
    let r = root.display();
    sh(&format!(
        r#"
        cd {r}
        mkdir -p etc usr/bin var/empty dir/with/depth srv
        printf 'hello\n' > etc/motd
        : > etc/empty
        head -c 3000000 /dev/urandom > usr/bin/big
        cp usr/bin/big usr/bin/big-copy
        printf 'tool' > usr/bin/suid && chmod 4755 usr/bin/suid
        printf 'tool' > usr/bin/sgid && chmod 2711 usr/bin/sgid
        mkdir tmpdir && chmod 1777 tmpdir
        ln etc/motd etc/motd.hard
        ln etc/motd dir/motd.hard2
        ln -s ../etc/motd dir/motd.link
        ln -s /does/not/exist dangling
        mknod chardev c 1 3
        mknod blockdev b 7 0
        mkfifo fifo
        python3 -c 'import socket; s=socket.socket(socket.AF_UNIX); s.bind("sock")'
        chown 1234:5678 etc/motd
        chown -h 42:43 dangling
        chown 7:8 var/empty
        setfattr -n user.note -v "kept" etc/empty
        setfattr -n trusted.secret -v 0x00ff00 usr/bin/sgid
        setfattr -n user.dir -v yes dir
        setfacl -m u:1000:rwx,g:100:r-x srv
        setfacl -d -m u:1000:rwx srv
        truncate -s 200M sparse
        printf 'middle' | dd of=sparse bs=1 seek=100000000 conv=notrunc 2>/dev/null
        printf 'end' | dd of=sparse bs=1 seek=209715197 conv=notrunc 2>/dev/null
        touch "$(printf 'name-\xff\xfe-not-utf8')"
        mkdir "$(printf 'dir-\xc3\x28')" && printf x > "$(printf 'dir-\xc3\x28/f\x80')"
        touch 'with space and * glob [chars]'
        touch -d '2001-02-03 04:05:06.123456789' etc/motd
        touch -h -d '1999-12-31 23:59:59.5' dir/motd.link
        touch -d '1970-01-01 00:00:00' etc/empty
        "#
    ));
    if have("setcap") {
        sh(&format!(
            "cd {r} && setcap cap_net_raw+ep usr/bin/suid && chmod 4755 usr/bin/suid"
        ));
    }
    // A path longer than PATH_MAX (4096), built with relative cds.
    sh(&format!(
        r#"cd {r} && mkdir long && cd long && for i in $(seq 1 24); do d=$(printf 'd%.0s' $(seq 1 200)); mkdir $d && cd $d; done && printf deep > deep-file"#
    ));
    sh(&format!(
        "cd {r} && touch -d '2010-10-10 10:10:10.000000001' etc dir"
    ));
}

#[test]
fn checkout_equals_capture_for_every_kind_of_entry() {
    if !is_root() {
        skip("needs root");
        return;
    }
    let env = Env::new();
    let src = env.path("golden");
    std::fs::create_dir(&src).unwrap();
    build_everything(&src);
    let out = env.getimage(&src, "all", &["--no-default-excludes"]);
    assert!(out.starts_with("all@1 "), "{out}");
    let dst = env.path("checkout");
    env.ok(&["checkout", "all@1", dst.to_str().unwrap()]);
    let (same, report) = tree_diff(&src, &dst);
    assert!(same, "trees differ:\n{report}");
    // A second, independent judge for what rsync can see (it cannot go beyond PATH_MAX).
    // Removing `long` gives both roots a new mtime, a second apart when the clock ticks in
    // between: the root's own mtime was judged above, so it is made the same again.
    sh(&format!(
        "rm -rf {s}/long {d}/long && touch -h -r {s} {d}",
        s = src.display(),
        d = dst.display()
    ));
    let itemized = rsync_diff(&src, &dst);
    assert!(
        itemized.trim().is_empty(),
        "rsync sees differences:\n{itemized}"
    );
    // The sparse file is stored as its data, not 200 MiB of zeros.
    let du: u64 = sh(&format!(
        "du -sk {}/packs | cut -f1",
        env.public().display()
    ))
    .trim()
    .parse()
    .unwrap();
    assert!(
        du < 10_000,
        "store holds {du} KiB; holes were stored as data"
    );
}

#[test]
fn ls_and_cat_show_what_was_captured() {
    let env = Env::new();
    let src = env.path("golden");
    sh(&format!(
        "mkdir -p {s}/etc && printf 'hello\\n' > {s}/etc/motd && ln -s motd {s}/etc/link && truncate -s 5000 {s}/holes && printf z >> {s}/holes",
        s = src.display()
    ));
    env.getimage(&src, "x", &[]);
    assert_eq!(env.ok(&["cat", "x", "/etc/motd"]), "hello\n");
    let holes = env.cmd(&["cat", "x", "holes"]).output().unwrap().stdout;
    assert_eq!(holes.len(), 5001);
    assert_eq!(holes[5000], b'z');
    let ls = env.ok(&["ls", "x", "/etc"]);
    assert!(ls.contains("/etc/link -> motd"), "{ls}");
    assert!(ls.contains("/etc/motd"), "{ls}");
    let json: serde_json::Value =
        serde_json::from_str(&env.ok(&["ls", "x", "-r", "--json"])).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 4);
    let err = env.fails(&["cat", "x", "/etc"], 2);
    assert!(err.contains("not a file"), "{err}");
    env.fails(&["cat", "x", "/nope"], 2);
}

#[test]
fn mounts_inside_the_golden_client() {
    if !is_root() || !have("mkfs.ext4") {
        skip("needs root and e2fsprogs");
        return;
    }
    let env = Env::new();
    let src = env.path("golden");
    let img = env.path("boot.img");
    sh(&format!(
        "mkdir -p {s}/boot {s}/scratch && printf root > {s}/rootfile \
         && truncate -s 16M {img} && mkfs.ext4 -q -F {img} \
         && mount -o loop {img} {s}/boot && printf kernel > {s}/boot/vmlinuz \
         && mount -t tmpfs tmpfs {s}/scratch && printf pid > {s}/scratch/pidfile",
        s = src.display(),
        img = img.display()
    ));
    struct Unmount(String);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _boot = Unmount(format!("{}/boot", src.display()));
    let _scratch = Unmount(format!("{}/scratch", src.display()));
    env.getimage(&src, "m", &[]);
    let ls = env.ok(&["ls", "m", "/", "-r"]);
    assert!(
        ls.contains("/boot/vmlinuz"),
        "a disk filesystem mounted inside is captured:\n{ls}"
    );
    assert!(
        ls.lines().any(|l| l.ends_with(" /scratch")),
        "the mount point itself is kept:\n{ls}"
    );
    assert!(
        !ls.contains("pidfile"),
        "a tmpfs mounted inside is not captured:\n{ls}"
    );
    assert!(
        !ls.contains("lost+found"),
        "lost+found is excluded by default:\n{ls}"
    );
}

#[test]
fn btrfs_subvolumes_inside_the_golden_client_are_captured() {
    if !is_root() || !have("mkfs.btrfs") {
        skip("needs root and btrfs-progs");
        return;
    }
    let env = Env::new();
    let src = env.path("golden");
    let img = env.path("btrfs.img");
    sh(&format!(
        "mkdir -p {s} && truncate -s 200M {img} && mkfs.btrfs -q -f {img} >/dev/null \
         && mount -o loop {img} {s} && btrfs subvolume create {s}/home >/dev/null \
         && mkdir {s}/home/alice && printf data > {s}/home/alice/file && printf root > {s}/rootfile",
        s = src.display(),
        img = img.display()
    ));
    struct Unmount(String);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _mnt = Unmount(src.display().to_string());
    let out = env.run(&[
        "getimage",
        "--golden-client",
        src.to_str().unwrap(),
        "--image",
        "b",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("not captured"), "{stderr}");
    assert_eq!(env.ok(&["cat", "b", "/home/alice/file"]), "data");
}

#[test]
fn an_unprivileged_checkout_warns_about_what_it_cannot_keep() {
    if !is_root() || !have("setpriv") {
        skip("needs root (to make the devices) and setpriv");
        return;
    }
    let env = Env::new();
    let src = env.path("golden");
    sh(&format!(
        "mkdir -p {s}/dev {s}/etc && mknod {s}/dev/null c 1 3 && printf x > {s}/etc/f && chown 12:34 {s}/etc/f",
        s = src.display()
    ));
    env.getimage(&src, "x", &["--no-default-excludes"]);
    let out = env.path("out");
    sh(&format!(
        "chmod -R a+rwX {} && mkdir {o} && chown 65534:65534 {o} && chmod 755 {}",
        env.repo().display(),
        env.dir.path().display(),
        o = out.display()
    ));
    let co = out.join("co");
    let r = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_aurum"))
        .arg("--repo")
        .arg(env.repo())
        .args(["--no-progress", "checkout", "x"])
        .arg(&co)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{stderr}");
    assert!(stderr.contains("cannot make a device node"), "{stderr}");
    assert!(stderr.contains("cannot set owner 12:34"), "{stderr}");
    assert_eq!(std::fs::read(co.join("etc/f")).unwrap(), b"x");
    assert!(!co.join("dev/null").exists());
}

/// Issue #12, item 15: an unchanged live root re-captures as unchanged, although the
/// directories the capture keeps empty change mtime between captures: a tmpfs mounted in the
/// tree (like /run) and a directory whose content is excluded (/tmp/*).
#[test]
fn an_unchanged_live_root_recaptures_as_unchanged() {
    if !is_root() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "needs root to mount a tmpfs"
        );
        eprintln!("skipped: needs root to mount a tmpfs");
        return;
    }
    let env = Env::new();
    let src = env.path("golden");
    sh(&format!(
        "mkdir -p {s}/etc {s}/tmp {s}/run && printf x > {s}/etc/motd && printf t > {s}/tmp/t \
         && chmod 1777 {s}/tmp && mount -t tmpfs -o mode=755 tmpfs {s}/run && printf p > {s}/run/pid",
        s = src.display()
    ));
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _run = Unmount(src.join("run"));
    let first = env.getimage(&src, "live", &[]);
    assert!(first.starts_with("live@1 "), "{first}");

    // The system runs on: files come and go in /tmp and /run, their mtimes move.
    std::thread::sleep(std::time::Duration::from_millis(20));
    sh(&format!(
        "printf n > {s}/tmp/new && rm {s}/tmp/t && printf q > {s}/run/other && rm {s}/run/pid",
        s = src.display()
    ));
    let again = env.getimage(&src, "live", &[]);
    assert!(again.contains("(unchanged)"), "{again}");
    assert_eq!(crate::common::revisions_of(&env, "live"), 1, "{again}");

    // Their mode is still the live one: a real change is recorded.
    sh(&format!("chmod 1770 {}/tmp", src.display()));
    let changed = env.getimage(&src, "live", &[]);
    assert!(changed.starts_with("live@2 "), "{changed}");
    let d = env.ok(&["diff", "live@1", "live@2"]);
    assert_eq!(d.trim(), "M /tmp  (mode)", "{d}");
}
