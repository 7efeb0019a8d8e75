//! Partition templates, `facts`, `prepareclient` and `install`: real sparse disk images, real
//! sgdisk, mkfs, loop devices and mounts (root), compared with rsync and checked by e2fsck.
//!
//! The seed 003 scenario is `install_same_class_on_13_and_22_gib`: one class whose /scr takes
//! the rest, installed on a 13 GiB and a 22 GiB disk; only /scr differs, by 9 GiB.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{have, is_root, json, rsync_diff, sh, skip, Env};

/// The class used for installs: compute (with an ESP) when this kernel mounts vfat, else
/// bios-legacy (same layout with a bios-boot partition instead of the ESP).
pub(crate) fn class() -> &'static str {
    let fs = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if fs.lines().any(|l| l.trim_end().ends_with("vfat")) {
        "compute"
    } else {
        "bios-legacy"
    }
}

/// Whether installs can run here: root, loop devices, the tools, busybox for chrooted hooks.
pub(crate) fn can_install() -> bool {
    let ok = is_root()
        && Path::new("/dev/loop-control").exists()
        && [
            "sgdisk",
            "losetup",
            "mkfs.ext4",
            "mkswap",
            "e2fsck",
            "busybox",
            "rsync",
        ]
        .iter()
        .all(|p| have(p));
    if !ok {
        skip("needs root, loop devices, gdisk, e2fsprogs, busybox-static, rsync");
    }
    ok
}

/// A tiny root filesystem: busybox as /bin/sh (so chrooted hooks run), a few files with
/// owners, modes, a hardlink, a symlink, and files under /scr (another filesystem).
pub(crate) fn tiny_tree(root: &Path) {
    for d in [
        "bin",
        "etc",
        "var/lib/app",
        "scr/data",
        "tmp",
        "usr/lib",
        "dev",
        "proc",
        "sys",
    ] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::copy(sh("command -v busybox").trim(), root.join("bin/busybox")).unwrap();
    for l in [
        "sh", "cat", "echo", "sed", "grep", "rm", "ln", "chmod", "printf", "env",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(l)).unwrap();
    }
    fs::write(root.join("etc/motd"), "welcome to the cluster\n").unwrap();
    fs::write(root.join("etc/hosts"), "127.0.0.1\tlocalhost\n").unwrap();
    crate::common::write_random(&root.join("usr/lib/libbig.so"), 7, 3 << 20);
    fs::hard_link(
        root.join("usr/lib/libbig.so"),
        root.join("usr/lib/libbig.so.1"),
    )
    .unwrap();
    fs::write(root.join("var/lib/app/state"), "x").unwrap();
    fs::set_permissions(
        root.join("var/lib/app/state"),
        fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    sh(&format!(
        "chown 1234:5678 {}",
        root.join("var/lib/app/state").display()
    ));
    fs::write(root.join("scr/data/input"), "scratch input\n").unwrap();
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
}

/// A sparse file of `gib` GiB.
pub(crate) fn disk(env: &Env, name: &str, gib: u64) -> PathBuf {
    let p = env.path(name);
    fs::File::create(&p).unwrap().set_len(gib << 30).unwrap();
    p
}

/// `sgdisk -p` rows: (number, start sector, end sector, code, name).
fn gpt_rows(img: &Path) -> Vec<(u32, u64, u64, String, String)> {
    let out = sh(&format!("sgdisk -p {}", img.display()));
    let mut rows = Vec::new();
    let mut table = false;
    for l in out.lines() {
        if l.trim_start().starts_with("Number") {
            table = true;
            continue;
        }
        let f: Vec<&str> = l.split_whitespace().collect();
        if table && f.len() >= 7 {
            rows.push((
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
                f[5].to_string(),
                f[6].to_string(),
            ));
        }
    }
    rows
}

/// A read-only loop mount of a byte range of an image, unmounted on drop.
struct RoMount(PathBuf);

impl RoMount {
    fn new(img: &Path, start: u64, len: u64, at: &Path) -> RoMount {
        fs::create_dir_all(at).unwrap();
        sh(&format!(
            "mount -o ro,loop,offset={start},sizelimit={len} {} {}",
            img.display(),
            at.display()
        ));
        RoMount(at.to_path_buf())
    }
}

impl Drop for RoMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// `e2fsck -fn` on a byte range of an image (through a read-only loop device).
fn e2fsck_clean(img: &Path, start: u64, len: u64) {
    let dev = sh(&format!(
        "losetup --find --show --read-only --offset {start} --sizelimit {len} {}",
        img.display()
    ));
    let dev = dev.trim();
    let out = Command::new("e2fsck").args(["-fn", dev]).output().unwrap();
    sh(&format!("losetup --detach {dev}"));
    assert!(
        out.status.success(),
        "e2fsck -fn found problems:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// No loop device is attached to `img` any more (so nothing of it is mounted either).
pub(crate) fn detached(img: &Path) {
    // A loop device still mounted stays listed here even after a detach (autoclear).
    let out = sh(&format!("losetup --associated {}", img.display()));
    assert!(out.trim().is_empty(), "loop devices left attached: {out}");
}

/// The body of an HTTP GET that must answer 200 (HTTP/1.0 over a socket).
fn http_get(url: &str) -> String {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut s = std::net::TcpStream::connect(host).unwrap();
    write!(s, "GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    assert!(head.contains(" 200 "), "{head}");
    body.to_string()
}

/// A hooks directory whose hooks record their order and environment.
fn recording_hooks(env: &Env) -> PathBuf {
    let dir = env.path("hooks");
    let log = env.path("hook.log");
    let w = |rel: &str, body: &str| {
        let p = dir.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    };
    for name in [
        "10all.a",
        "20all.b",
        "05compute.c",
        "01rack1.d",
        "00n01.e",
        "01other.x",
    ] {
        w(
            &format!("pre-install/{name}"),
            &format!("echo {name} >> {}", log.display()),
        );
    }
    // Chrooted: this writes into the new root, and records what it was told.
    w(
        "post-install/50all.record",
        "echo \"$AURUM_ROOT $AURUM_IMAGE $AURUM_HOSTNAME $AURUM_CLASS $AURUM_GROUP ${#AURUM_REVISION}\" > /hook-was-here",
    );
    dir
}

#[test]
fn shipped_templates_pass_check_and_are_seeded() {
    let env = Env::new();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("partition-templates");
    let mut files: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .map(|p| p.display().to_string())
        .collect();
    files.sort();
    assert!(files.len() >= 6, "{files:?}");
    let mut args = vec!["template", "check"];
    args.extend(files.iter().map(String::as_str));
    let out = env.ok(&args);
    assert_eq!(
        out.lines().filter(|l| l.starts_with("ok ")).count(),
        files.len(),
        "{out}"
    );
    // `init` seeded exactly these, unchanged.
    let list = json(&env.ok(&["template", "list", "--json"]));
    assert_eq!(list.as_array().unwrap().len(), files.len());
    for f in &files {
        let class = Path::new(f).file_stem().unwrap().to_str().unwrap();
        let shown = env.ok(&["template", "show", class]);
        assert!(shown.ends_with(&fs::read_to_string(f).unwrap()), "{class}");
        assert_eq!(
            fs::read_to_string(env.public().join(format!("templates/{class}.toml"))).unwrap(),
            fs::read_to_string(f).unwrap()
        );
    }
    env.ok(&["template", "check"]);
}

#[test]
fn impossible_templates_give_the_documented_errors() {
    let env = Env::new();
    let e = env.fails(
        &["template", "render", "compute", "--disk-size", "10GiB"],
        2,
    );
    assert!(
        e.contains("class compute needs 11.5 GiB, disk is 10 GiB (1.5 GiB short)"),
        "{e}"
    );
    let bad = |name: &str, text: &str| -> String {
        let p = env.path(name);
        fs::write(&p, text).unwrap();
        env.fails(&["template", "check", p.to_str().unwrap()], 2)
    };
    let head = "[[disk]]\n[[disk.partition]]\nsize = \"8GiB\"\nfs = \"ext4\"\nmount = \"/\"\n";
    let e = bad(
        "two.toml",
        &format!("{head}[[disk.partition]]\nsize = \"*\"\n[[disk.partition]]\nsize = \"*\"\n"),
    );
    assert!(
        e.contains("two.toml:8: disk 1 has two `*` partitions"),
        "{e}"
    );
    let e = bad(
        "typo.toml",
        &format!("{head}[[disk.partition]]\nsize = \"1GiB\"\nmountpoint = \"/x\"\n"),
    );
    assert!(e.contains("typo.toml:8: unknown field `mountpoint`"), "{e}");
    let e = bad(
        "unit.toml",
        &format!("{head}[[disk.partition]]\nsize = \"1 gigabyte\"\n"),
    );
    assert!(
        e.contains("unit.toml:7:") && e.contains("unknown unit `gigabyte`"),
        "{e}"
    );
    let e = bad(
        "pct.toml",
        &format!("{head}[[disk.partition]]\nsize = \"60%\"\n[[disk.partition]]\nsize = \"50%\"\n"),
    );
    assert!(e.contains("asks for 110% of the disk"), "{e}");
    let e = bad(
        "noroot.toml",
        "[[disk]]\n[[disk.partition]]\nsize = \"*\"\nfs = \"xfs\"\nmount = \"/scr\"\n",
    );
    assert!(e.contains("nothing is mounted at /"), "{e}");
}

#[test]
fn match_picks_a_class_and_says_why() {
    let env = Env::new();
    let facts = |fw: &str| {
        let p = env.path(&format!("facts-{fw}.json"));
        fs::write(
            &p,
            format!(
                r#"{{"hostname":"n01","firmware":"{fw}","vendor":"QEMU","product":"Standard PC","memory":8589934592,"cpus":4,
                   "disks":[{{"name":"sda","size":13958643712}}],"nics":[]}}"#
            ),
        )
        .unwrap();
        p
    };
    let out = env.ok(&[
        "template",
        "match",
        "--facts",
        facts("uefi").to_str().unwrap(),
    ]);
    assert!(out.ends_with("class: compute\n"), "{out}");
    assert!(out.contains("no  firmware Bios: Uefi"), "{out}");
    let out = env.ok(&[
        "template",
        "match",
        "--facts",
        facts("bios").to_str().unwrap(),
    ]);
    assert!(out.ends_with("class: bios-legacy\n"), "{out}");
    // facts --json reads this machine and round-trips through match.
    let mine = env.path("mine.json");
    fs::write(&mine, env.ok(&["facts", "--json"])).unwrap();
    let v = json(&fs::read_to_string(&mine).unwrap());
    assert!(v["memory"].as_u64().unwrap() > 0 && v["cpus"].as_u64().unwrap() > 0);
    let _ = env.run(&["template", "match", "--facts", mine.to_str().unwrap()]);
}

#[test]
fn edit_saves_valid_versions_and_keeps_the_old_one_when_invalid() {
    let env = Env::new();
    let editor = env.path("editor.sh");
    let set_editor = |script: &str| {
        fs::write(&editor, format!("#!/bin/sh\n{script}\n")).unwrap();
        fs::set_permissions(&editor, fs::Permissions::from_mode(0o755)).unwrap();
    };
    let edit = |code: Option<i32>| {
        let out = env
            .cmd(&["template", "edit", "compute"])
            .env("EDITOR", &editor)
            .env_remove("VISUAL")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        match code {
            None => assert!(out.status.success(), "{err}"),
            Some(c) => assert_eq!(out.status.code(), Some(c), "{err}"),
        }
        String::from_utf8_lossy(&out.stdout).into_owned() + &err
    };
    // Too big a root for the class's smallest disk (disk-min = 12GiB): refused.
    set_editor(r#"sed -i 's/size = "8GiB"/size = "10GiB"/' "$1""#);
    let out = edit(Some(2));
    assert!(
        out.contains("class compute needs 13.5 GiB, disk is 12 GiB"),
        "{out}"
    );
    set_editor(r#"sed -i 's/size = "2GiB"/size = "1GiB"/' "$1""#);
    let out = edit(None);
    assert!(out.contains("saved as version 2"), "{out}");
    assert!(
        out.contains("disk 1 (12 GiB"),
        "the plan for the smallest disk is shown: {out}"
    );
    set_editor(r#"sed -i 's/^fs = "ext4"/fs = "ext5"/' "$1""#);
    let out = edit(Some(2));
    assert!(
        out.contains("compute.toml:") && out.contains("ext5"),
        "{out}"
    );
    assert!(
        out.contains("NOT saved: class compute stays at version 2"),
        "{out}"
    );
    let shown = env.ok(&["template", "show", "compute"]);
    assert!(
        shown.starts_with("# class compute, version 2 of 2"),
        "{shown}"
    );
    assert!(
        shown.contains("# version 1:") && shown.contains("size = \"1GiB\""),
        "{shown}"
    );
    assert!(env
        .ok(&["template", "show", "compute@1"])
        .contains("size = \"2GiB\""));
    env.ok(&["template", "new", "gpu", "--from", "compute"]);
    assert!(env
        .ok(&["template", "show", "gpu"])
        .contains("size = \"1GiB\""));
}

#[test]
fn install_same_class_on_13_and_22_gib() {
    if !can_install() {
        return;
    }
    let class = class();
    let env = Env::new();
    let tree = env.path("tree");
    tiny_tree(&tree);
    env.getimage(&tree, "compute", &[]);
    let hooks = recording_hooks(&env);
    let co = env.path("co");
    env.ok(&["checkout", "compute", co.to_str().unwrap()]);

    // A disk too small is refused before anything is written; a dry run writes nothing.
    let small = disk(&env, "small.img", 5);
    let e = env.fails(
        &[
            "install",
            "--disk",
            small.to_str().unwrap(),
            "--image",
            "compute",
            "--class",
            class,
        ],
        2,
    );
    assert!(
        e.contains(&format!("class {class} needs ")) && e.contains("disk is 5 GiB"),
        "{e}"
    );
    let d13 = disk(&env, "d13.img", 13);
    let dry = env.ok(&[
        "install",
        "--disk",
        d13.to_str().unwrap(),
        "--image",
        "compute",
        "--class",
        class,
        "--dry-run",
    ]);
    assert!(dry.contains("nothing was written"), "{dry}");
    assert_eq!(
        fs::metadata(&d13)
            .map(|m| std::os::unix::fs::MetadataExt::blocks(&m))
            .unwrap(),
        0
    );

    let started = std::time::Instant::now();
    let out = env.ok(&[
        "install",
        "--disk",
        d13.to_str().unwrap(),
        "--image",
        "compute",
        "--class",
        class,
        "--hostname",
        "n01",
        "--group",
        "rack1",
        "--hooks",
        hooks.to_str().unwrap(),
    ]);
    eprintln!("13 GiB install: {:.1} s", started.elapsed().as_secs_f64());
    assert!(out.contains("installed compute@1"), "{out}");
    detached(&d13);
    // Hooks ran in SystemImager's order: all (by number), image, group, host; not other's.
    let log = fs::read_to_string(env.path("hook.log")).unwrap();
    assert_eq!(
        log.split_whitespace().collect::<Vec<_>>(),
        ["10all.a", "20all.b", "05compute.c", "01rack1.d", "00n01.e"]
    );

    // The 22 GiB node installs from `aurum serve`, its class picked from its facts (saved
    // as `aurum facts --json` would): BIOS picks bios-legacy, UEFI compute.
    let server = crate::serve::Server::start(&env);
    let facts = env.path("n02.json");
    let fw = if class == "compute" { "uefi" } else { "bios" };
    fs::write(
        &facts,
        format!(r#"{{"hostname":"n02","firmware":"{fw}","memory":8589934592,"cpus":4,"disks":[{{"name":"sda","size":1}}]}}"#),
    )
    .unwrap();
    let d22 = disk(&env, "d22.img", 22);
    let out = env.ok(&[
        "install",
        "--disk",
        d22.to_str().unwrap(),
        "--server",
        &format!("http://{}", server.addr),
        "--image",
        "compute",
        "--facts",
        facts.to_str().unwrap(),
        "--hostname",
        "n02",
        "--hooks",
        hooks.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(json(&out)["class"], class, "{out}");
    // Each step's time is reported, in order (issue #23).
    let steps: Vec<String> = json(&out)["times"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["step"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        steps,
        [
            "plan",
            "pre-install-hooks",
            "partition",
            "mkfs",
            "transfer",
            "configure",
            "post-install-hooks",
            "release"
        ],
        "{out}"
    );
    // The server hands out templates on its API too.
    let api = http_get(&format!("http://{}/api/v1/templates/{class}", server.addr));
    assert_eq!(
        api,
        fs::read_to_string(env.public().join(format!("templates/{class}.toml"))).unwrap()
    );
    drop(server);
    detached(&d22);

    // Same partitions but /scr, which is 9 GiB larger.
    let (a, b) = (gpt_rows(&d13), gpt_rows(&d22));
    eprintln!("sgdisk -p, 13 GiB: {a:?}\nsgdisk -p, 22 GiB: {b:?}");
    assert_eq!(a.len(), 4);
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((x.0, x.1, &x.3, &x.4), (y.0, y.1, &y.3, &y.4));
        if x.4 == "scr" {
            assert_eq!((y.2 - x.2) * 512, 9 << 30, "/scr grows by 9 GiB");
        } else {
            assert_eq!(x.2, y.2);
        }
        assert_eq!(x.1 % 2048, 0, "MiB aligned");
        assert_eq!((x.2 + 1) % 2048, 0, "MiB aligned");
    }

    for (img, host) in [(&d13, "n01"), (&d22, "n02")] {
        let rows = gpt_rows(img);
        let part = |name: &str| {
            let r = rows.iter().find(|r| r.4 == name).unwrap();
            (r.1 * 512, (r.2 + 1 - r.1) * 512)
        };
        let (rs, rl) = part("root");
        let (ss, sl) = part("scr");
        e2fsck_clean(img, rs, rl);
        e2fsck_clean(img, ss, sl);
        let root = RoMount::new(img, rs, rl, &env.path(&format!("m-{host}")));
        let scr = RoMount::new(img, ss, sl, &env.path(&format!("s-{host}")));
        // Each filesystem holds exactly the revision: / all but /scr, /scr its part; what
        // install adds (fstab, hostname, node state, the hook's mark) is listed and checked.
        let diff = rsync_diff(&co, &root.0);
        let added = [
            "hook-was-here",
            "lost+found/",
            "var/lib/aurum-node/",
            "etc/fstab",
            "etc/hostname",
        ];
        let unexpected: Vec<&str> = diff
            .lines()
            // /scr's files are on the other filesystem; / and /etc get new entries.
            .filter(|l| !l.contains(" scr/") && !l.ends_with(" etc/") && !l.ends_with(" ./"))
            .filter(|l| {
                !l.strip_prefix("*deleting   ")
                    .is_some_and(|p| added.iter().any(|a| p.starts_with(a)))
            })
            .collect();
        assert!(
            unexpected.is_empty(),
            "differences from the revision:\n{diff}"
        );
        assert!(
            diff.contains("*deleting   var/lib/aurum-node/state.json"),
            "{diff}"
        );
        let scr_diff = rsync_diff(&co.join("scr"), &scr.0);
        assert_eq!(scr_diff.trim(), "*deleting   lost+found/", "{scr_diff}");
        let fstab = fs::read_to_string(root.0.join("etc/fstab")).unwrap();
        assert!(
            fstab.contains(" /scr ") && fstab.contains(" swap ") && fstab.contains("UUID="),
            "{fstab}"
        );
        assert_eq!(
            fs::read_to_string(root.0.join("etc/hostname")).unwrap(),
            format!("{host}\n")
        );
        let mark = fs::read_to_string(root.0.join("hook-was-here")).unwrap();
        assert!(
            mark.starts_with(&format!("/ compute {host} {class} "))
                && mark.trim_end().ends_with(" 64"),
            "{mark}"
        );
        // The node state says what runs, so updateclient and rollback work from first boot.
        let st = env.ok(&["node-status", "--root", root.0.to_str().unwrap()]);
        assert!(st.contains("current          compute"), "{st}");
        assert!(st.contains("install"), "{st}");
    }
}

#[test]
fn prepareclient_reproduces_the_template_and_updateclient_works_after_install() {
    if !can_install() {
        return;
    }
    let class = class();
    let env = Env::new();
    let tree = env.path("tree");
    tiny_tree(&tree);
    env.getimage(&tree, "compute", &[]);
    // Overrides: global, then group, then node; the node's wins.
    for (image, files) in [
        (
            "override",
            vec![("etc/motd", "global\n"), ("etc/site.conf", "site\n")],
        ),
        ("override.g1", vec![("etc/motd", "group\n")]),
        (
            "override.n05",
            vec![("etc/motd", "node\n"), ("etc/node.conf", "n05\n")],
        ),
        ("override.other", vec![("etc/motd", "not for n05\n")]),
    ] {
        let t = env.path(image);
        for (f, text) in files {
            fs::create_dir_all(t.join(f).parent().unwrap()).unwrap();
            fs::write(t.join(f), text).unwrap();
        }
        env.getimage(&t, image, &[]);
    }
    let img = disk(&env, "node.img", 14);
    let empty_hooks = env.path("no-hooks");
    fs::create_dir_all(&empty_hooks).unwrap();
    env.ok(&[
        "install",
        "--disk",
        img.to_str().unwrap(),
        "--image",
        "compute",
        "--class",
        class,
        "--hooks",
        empty_hooks.to_str().unwrap(),
        "--hostname",
        "n05",
        "--group",
        "g1",
    ]);
    let out_file = env.path("golden.toml");
    env.ok(&[
        "prepareclient",
        "--disk",
        img.to_str().unwrap(),
        "--output",
        out_file.to_str().unwrap(),
    ]);
    detached(&img);
    let plan = |t: &str, size: &str| {
        json(&env.ok(&["template", "render", t, "--disk-size", size, "--json"]))
    };
    for size in ["14GiB", "40GiB"] {
        let (want, got) = (plan(class, size), plan(out_file.to_str().unwrap(), size));
        let keys = |v: &serde_json::Value| -> Vec<String> {
            v["disks"][0]["partitions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    format!(
                        "{} {} {} {} {} {}",
                        p["start"], p["size"], p["type"], p["fs"], p["mount"], p["label"]
                    )
                })
                .collect()
        };
        assert_eq!(
            keys(&want),
            keys(&got),
            "at {size}:\n{}",
            fs::read_to_string(&out_file).unwrap()
        );
    }

    // updateclient on the installed root: a new revision, then a rollback.
    fs::write(tree.join("var/lib/app/state"), "version two\n").unwrap();
    env.getimage(&tree, "compute", &[]);
    let rows = gpt_rows(&img);
    let r = rows.iter().find(|r| r.4 == "root").unwrap();
    let m = env.path("rw");
    fs::create_dir_all(&m).unwrap();
    sh(&format!(
        "mount -o loop,offset={},sizelimit={} {} {}",
        r.1 * 512,
        (r.2 + 1 - r.1) * 512,
        img.display(),
        m.display()
    ));
    let res = std::panic::catch_unwind(|| {
        let root = m.to_str().unwrap();
        let read = |f: &str| fs::read_to_string(m.join(f)).unwrap();
        assert_eq!(read("etc/motd"), "node\n");
        assert_eq!(read("etc/site.conf"), "site\n");
        assert_eq!(read("etc/node.conf"), "n05\n");
        let out = env.ok(&[
            "updateclient",
            "--image",
            "compute@2",
            "--root",
            root,
            "--repo",
            env.repo().to_str().unwrap(),
        ]);
        // Issue #12: the overrides the node was installed with belong to it. The update lays
        // them again, so only the image's own change is a change; the node's motd and the
        // files only an override has stay.
        assert!(
            out.contains("compute@1") && out.contains("compute@2") && out.contains("1 changed"),
            "{out}"
        );
        assert!(
            out.contains("+ override@1, override.g1@1, override.n05@1"),
            "{out}"
        );
        assert_eq!(read("var/lib/app/state"), "version two\n");
        assert_eq!(read("etc/motd"), "node\n");
        assert_eq!(read("etc/site.conf"), "site\n");
        assert_eq!(read("etc/node.conf"), "n05\n");
        let st = env.ok(&["node-status", "--root", root]);
        assert!(
            st.contains("overrides        override, override.g1, override.n05\n"),
            "{st}"
        );
        env.ok(&["rollback", "--root", root]);
        assert_eq!(read("var/lib/app/state"), "x");
        assert_eq!(read("etc/motd"), "node\n");
        assert_eq!(read("etc/node.conf"), "n05\n");
    });
    sh(&format!("umount {}", m.display()));
    detached(&img);
    if let Err(e) = res {
        std::panic::resume_unwind(e);
    }
}

#[test]
fn a_failing_hook_stops_the_install_shows_its_output_and_releases_everything() {
    if !can_install() {
        return;
    }
    let env = Env::new();
    let tree = env.path("tree");
    tiny_tree(&tree);
    env.getimage(&tree, "compute", &[]);
    let hooks = env.path("hooks");
    fs::create_dir_all(hooks.join("post-install")).unwrap();
    let h = hooks.join("post-install/70all.fail");
    fs::write(
        &h,
        "#!/bin/sh\necho 'cannot configure the frobnicator' >&2\nexit 3\n",
    )
    .unwrap();
    fs::set_permissions(&h, fs::Permissions::from_mode(0o755)).unwrap();
    let img = disk(&env, "node.img", 13);
    let e = env.fails(
        &[
            "install",
            "--disk",
            img.to_str().unwrap(),
            "--image",
            "compute",
            "--class",
            class(),
            "--hooks",
            hooks.to_str().unwrap(),
        ],
        1,
    );
    assert!(e.contains("hook post-install/70all.fail failed"), "{e}");
    assert!(e.contains("cannot configure the frobnicator"), "{e}");
    assert!(e.contains("install: FAILED"), "{e}");
    detached(&img);
}

#[test]
fn raid_and_lvm_without_their_tools_are_refused_before_anything_is_written() {
    let env = Env::new();
    let tree = env.path("tree");
    fs::create_dir_all(tree.join("etc")).unwrap();
    fs::write(tree.join("etc/motd"), "hi\n").unwrap();
    env.getimage(&tree, "compute", &[]);
    let (a, b) = (disk(&env, "a.img", 40), disk(&env, "b.img", 40));
    for (class, tool, pkg) in [("raid1", "mdadm", "mdadm"), ("lvm", "pvcreate", "lvm2")] {
        if have(tool) {
            eprintln!("skipped {class}: {tool} is installed");
            continue;
        }
        let mut args = vec!["install", "--disk", a.to_str().unwrap()];
        if class == "raid1" {
            args.extend(["--disk", b.to_str().unwrap()]);
        }
        args.extend(["--image", "compute", "--class", class]);
        let e = env.fails(&args, 2);
        assert!(
            e.contains(&format!("class {class} needs "))
                && e.contains(&format!("(packages: {pkg}")),
            "{e}"
        );
        assert!(e.contains("nothing was written"), "{e}");
        for img in [&a, &b] {
            assert_eq!(
                std::os::unix::fs::MetadataExt::blocks(&fs::metadata(img).unwrap()),
                0
            );
        }
    }
}

#[test]
fn updateclient_runs_pre_and_post_update_hooks_and_a_failing_one_stops_it() {
    let env = Env::new();
    let tree = env.path("tree");
    fs::create_dir_all(tree.join("etc")).unwrap();
    fs::write(tree.join("etc/motd"), "one\n").unwrap();
    env.getimage(&tree, "compute", &[]);
    fs::write(tree.join("etc/motd"), "two\n").unwrap();
    env.getimage(&tree, "compute", &[]);
    let node = env.path("node");
    let hooks = env.path("hooks");
    let log = env.path("update-hooks.log");
    let w = |rel: &str, body: &str| {
        let p = hooks.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    };
    let rec = |name: &str| {
        format!(
            "echo \"{name} $AURUM_IMAGE $(cat $AURUM_ROOT/etc/motd 2>/dev/null)\" >> {}",
            log.display()
        )
    };
    w("pre-update/10all.before", &rec("pre"));
    w("post-update/10compute.after", &rec("post"));
    w("post-update/05rack9.after", &rec("rack9"));
    let (n, h, r) = (node.to_str().unwrap(), hooks.to_str().unwrap(), env.repo());
    let r = r.to_str().unwrap();
    fs::create_dir_all(&node).unwrap();
    env.ok(&[
        "updateclient",
        "--image",
        "compute@1",
        "--root",
        n,
        "--repo",
        r,
        "--hooks",
        h,
    ]);
    assert_eq!(
        fs::read_to_string(&log).unwrap(),
        "pre compute \npost compute one\n"
    );
    // A failing pre-update hook: nothing changes.
    w(
        "pre-update/20all.refuse",
        "echo 'node is draining' >&2; exit 1",
    );
    let e = env.fails(
        &[
            "updateclient",
            "--image",
            "compute@2",
            "--root",
            n,
            "--repo",
            r,
            "--hooks",
            h,
        ],
        1,
    );
    assert!(
        e.contains("hook pre-update/20all.refuse failed") && e.contains("node is draining"),
        "{e}"
    );
    assert_eq!(fs::read_to_string(node.join("etc/motd")).unwrap(), "one\n");
}

#[test]
fn shipped_hooks_name_the_node_and_warn_loudly_without_a_bootloader() {
    if !can_install() {
        return;
    }
    let env = Env::new();
    let tree = env.path("tree");
    tiny_tree(&tree);
    fs::write(
        tree.join("etc/machine-id"),
        "0123456789abcdef0123456789abcdef\n",
    )
    .unwrap();
    env.getimage(&tree, "compute", &["--no-default-excludes"]);
    let img = disk(&env, "node.img", 13);
    let out = env
        .cmd(&[
            "install",
            "--disk",
            img.to_str().unwrap(),
            "--image",
            "compute",
            "--class",
            class(),
            "--hostname",
            "n07",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    detached(&img);
    // Never silence: the warning is on the terminal and in the closing warnings.
    assert!(
        err.contains(
            "aurum: warning: post-install/90all.bootloader: WARNING: the image has no grub-install"
        ),
        "{err}"
    );
    let rows = gpt_rows(&img);
    let r = rows.iter().find(|r| r.4 == "root").unwrap();
    let root = RoMount::new(&img, r.1 * 512, (r.2 + 1 - r.1) * 512, &env.path("m"));
    let read = |f: &str| fs::read_to_string(root.0.join(f)).unwrap();
    assert!(
        read("etc/hosts").contains("127.0.1.1\tn07 n07"),
        "{}",
        read("etc/hosts")
    );
    assert_eq!(read("etc/hostname"), "n07\n");
    assert_eq!(
        read("etc/machine-id"),
        "",
        "emptied for a new id at first boot"
    );
}

#[test]
fn a_hooks_image_in_the_repository_replaces_the_shipped_hooks() {
    if !can_install() {
        return;
    }
    let env = Env::new();
    let tree = env.path("tree");
    tiny_tree(&tree);
    env.getimage(&tree, "compute", &[]);
    let hooks = recording_hooks(&env);
    env.getimage(&hooks, "hooks", &[]);
    let img = disk(&env, "node.img", 13);
    let out = env.ok(&[
        "install",
        "--disk",
        img.to_str().unwrap(),
        "--image",
        "compute",
        "--class",
        class(),
        "--hostname",
        "n01",
        "--group",
        "rack1",
    ]);
    detached(&img);
    // The image's hooks ran (checked out with their modes), not the shipped ones.
    let log = fs::read_to_string(env.path("hook.log")).unwrap();
    assert_eq!(
        log, "10all.a\n20all.b\n05compute.c\n01rack1.d\n00n01.e\n",
        "{out}"
    );
    let rows = gpt_rows(&img);
    let r = rows.iter().find(|r| r.4 == "root").unwrap();
    let root = RoMount::new(&img, r.1 * 512, (r.2 + 1 - r.1) * 512, &env.path("m"));
    let was = fs::read_to_string(root.0.join("hook-was-here")).unwrap();
    assert!(was.starts_with("/ compute n01"), "{was}");
}
