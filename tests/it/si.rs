//! Migration from SystemImager: `template import-si` on layouts written in SystemImager's own
//! formats (tests/data/si/), `import-si` on an image directory with overrides and exclude
//! files, and `prepareclient` on an msdos disk. The QEMU install of a converted msdos + RAID1
//! layout is in pxe.rs, with the other guests.

use std::fs;
use std::path::{Path, PathBuf};

use crate::common::{have, is_root, json, sh, skip, Env};

/// A layout file of tests/data/si/.
pub fn layout(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/si")
        .join(name)
}

/// The rendered plan of `class` on disks of `size`, as JSON.
fn plan(env: &Env, class: &str, size: &str) -> serde_json::Value {
    json(&env.ok(&["template", "render", class, "--disk-size", size, "--json"]))
}

/// `(number, role, type, fs, mount)` of each partition of disk `d`.
fn rows(plan: &serde_json::Value, d: usize) -> Vec<String> {
    plan["disks"][d]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            format!(
                "{} {} {} {} {}",
                p["number"],
                p["role"].as_str().unwrap_or("-"),
                p["type"].as_str().unwrap(),
                p["fs"].as_str().unwrap_or("-"),
                p["mount"].as_str().unwrap_or("-")
            )
        })
        .collect()
}

#[test]
fn systemimager_layouts_convert_into_templates_that_render() {
    let env = Env::new();
    let import = |file: &str, class: &str| {
        json(&env.ok(&[
            "template",
            "import-si",
            layout(file).to_str().unwrap(),
            "--class",
            class,
            "--json",
        ]))
    };

    // SystemImager 4's autoinstallscript.conf: msdos, extended + logical, two RAID1 arrays.
    let r = import("msdos-raid1.conf", "si4");
    assert_eq!(r["version"], 1, "{r}");
    assert!(
        r["notes"].to_string().contains("/proc (proc) dropped"),
        "{r}"
    );
    let p = plan(&env, "si4", "40GiB");
    for d in 0..2 {
        assert_eq!(p["disks"][d]["label"], "msdos");
        assert_eq!(
            rows(&p, d),
            [
                format!(
                    "1 primary linux ext2 {}",
                    if d == 0 { "/boot" } else { "/boot2" }
                ),
                "2 extended linux - -".into(),
                "5 logical raid - -".into(),
                "6 logical swap swap -".into(),
                "7 logical raid - -".into(),
            ]
        );
    }
    assert_eq!(p["disks"][0]["partitions"][0]["boot"], true);
    assert_eq!(p["raids"][0]["level"], 1);
    assert_eq!(p["raids"][0]["fs"], "ext3");
    assert_eq!(p["raids"][0]["label"], "root");
    assert_eq!(p["raids"][1]["mount"], "/home");
    assert_eq!(p["raids"][1]["mount_options"], "nodev,nosuid");
    let shown = env.ok(&["template", "show", "si4"]);
    assert!(shown.contains("firmware = \"bios\""), "{shown}");

    // SystemImager 5's disks-layout.xml: partitions out of number order, a primary after the
    // extended one.
    import("complex.xml", "complex");
    let p = plan(&env, "complex", "100GiB");
    assert_eq!(
        rows(&p, 0),
        [
            "1 primary linux ext4 /boot",
            "2 primary linux ext4 /home",
            "3 extended linux - -",
            "5 logical linux ext4 /backup",
            "6 logical linux xfs /",
            "7 logical linux xfs /var",
            "4 primary swap swap -",
        ]
    );

    // GPT, ESP, LVM over RAID1, EFI bootloader.
    import("lvm-over-raid-efi.xml", "lvmraid");
    let p = plan(&env, "lvmraid", "100GiB");
    assert_eq!(rows(&p, 0)[0], "1 - efi vfat /boot/efi");
    assert_eq!(p["raids"][0]["name"], "system");
    let vg = &p["volume_groups"][0];
    assert_eq!(vg["devices"][0], "system");
    assert_eq!(vg["volumes"][1]["fs"], "swap");
    assert_eq!(vg["volumes"][3]["mount"], "/scratch");
    assert!(env
        .ok(&["template", "show", "lvmraid"])
        .contains("firmware = \"uefi\""));

    // RAID 1, 10, 6 and 5 with a spare, chunk sizes and a layout, over four disks.
    import("raid-levels.conf", "storage");
    let p = plan(&env, "storage", "200GiB");
    let levels: Vec<u64> = p["raids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["level"].as_u64().unwrap())
        .collect();
    assert_eq!(levels, [1, 10, 6, 5]);
    assert_eq!(p["raids"][3]["spares"].as_array().unwrap().len(), 1);
    assert_eq!(p["raids"][2]["chunk"], 256 << 10);
    assert_eq!(rows(&p, 0)[0], "1 - bios-boot - -");

    // Only the second disk: the first is left untouched.
    import("second-disk-only.xml", "data");
    let p = plan(&env, "data", "50GiB");
    assert_eq!(p["disks"][0]["untouched"], true);
    assert_eq!(rows(&p, 1)[1], "2 - linux xfs /srv");

    // --output writes a file and leaves the repository alone.
    let out = env.path("qemu.toml");
    env.ok(&[
        "template",
        "import-si",
        layout("qemu-msdos-raid1.xml").to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    env.ok(&["template", "check", out.to_str().unwrap()]);
    let listed = env.ok(&["template", "list"]);
    assert!(!listed.contains("qemu"), "{listed}");
}

#[test]
fn a_layout_aurum_cannot_express_is_refused_and_nothing_is_saved() {
    let env = Env::new();
    let bad = env.path("linear.conf");
    let text = fs::read_to_string(layout("msdos-raid1.conf"))
        .unwrap()
        .replacen("raid_level=\"raid1\"", "raid_level=\"linear\"", 1);
    fs::write(&bad, text).unwrap();
    let err = env.fails(
        &[
            "template",
            "import-si",
            bad.to_str().unwrap(),
            "--class",
            "linear",
        ],
        2,
    );
    assert!(
        err.contains(
            "linear.conf:22: <raid raid_level=\"linear\">: aurum builds RAID 0, 1, 4, 5, 6 and 10"
        ),
        "{err}"
    );
    assert!(err.contains("nothing was converted"), "{err}");
    assert!(!env.ok(&["template", "list"]).contains("linear"));
    // A file whose name says no class needs --class.
    let conf = env.path("autoinstallscript.conf");
    fs::copy(layout("msdos-raid1.conf"), &conf).unwrap();
    let err = env.fails(&["template", "import-si", conf.to_str().unwrap()], 2);
    assert!(err.contains("give one with --class NAME"), "{err}");
    let err = env.fails(
        &[
            "template",
            "import-si",
            layout("msdos-raid1.conf").to_str().unwrap(),
            "--class",
            "no/class",
        ],
        2,
    );
    assert!(err.contains("no/class"), "{err}");
}

/// A SystemImager server's tree: images/compute with exclude files and a layout, and
/// overrides/compute.
fn si_tree(root: &Path) -> PathBuf {
    let image = root.join("images/compute");
    let w = |rel: &str, text: &str| {
        let p = image.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    };
    w("etc/motd", "from the image\n");
    w("etc/hostname", "golden\n");
    w("opt/app/bin/run", "#!/bin/sh\n");
    w("var/cache/site/big.tmp", "junk\n");
    w("var/cache/site/keep.db", "kept by a + rule\n");
    w(
        "etc/systemimager/getimage.exclude",
        "# site additions\n+ /var/cache/site/keep.db\n- /var/cache/site/*\n",
    );
    w(
        "etc/systemimager/updateclient.local.exclude",
        "/etc/mtab\n/var/log/*\n- /opt/app/state/*\n",
    );
    fs::copy(
        layout("msdos-raid1.conf"),
        image.join("etc/systemimager/autoinstallscript.conf"),
    )
    .unwrap();
    let o = root.join("overrides/compute/etc");
    fs::create_dir_all(&o).unwrap();
    fs::write(o.join("motd"), "from the override\n").unwrap();
    fs::write(o.join("hostname"), "kept in the override\n").unwrap();
    image
}

#[test]
fn import_si_captures_the_image_its_overrides_excludes_and_layout() {
    let env = Env::new();
    let image = si_tree(&env.path("systemimager"));
    let dir = image.to_str().unwrap();

    // The dry run checks everything and captures nothing.
    let dry = env.ok(&["import-si", dir, "--dry-run"]);
    assert!(dry.contains("image compute from"), "{dry}");
    assert!(dry.contains("getimage.exclude"), "{dry}");
    assert!(
        dry.contains("exclude-file = [\"/etc/systemimager/updateclient.local.exclude\"]"),
        "{dry}"
    );
    assert!(dry.contains("as image override.compute"), "{dry}");
    assert!(dry.contains("as class compute"), "{dry}");
    assert!(!env.ok(&["lsimage"]).contains("compute"));

    let r = json(&env.ok(&["import-si", dir, "--json"]));
    assert!(
        r["revision"].as_str().unwrap().starts_with("compute@1"),
        "{r}"
    );
    assert_eq!(r["override_revision"], "override.compute@1");
    assert_eq!(r["template"][0], "compute");
    let ls = env.ok(&["ls", "compute", "-r"]);
    assert!(ls.contains("var/cache/site/keep.db"), "{ls}");
    assert!(
        !ls.contains("big.tmp"),
        "getimage.exclude was not applied:\n{ls}"
    );
    assert!(
        !ls.contains("etc/hostname"),
        "the default excludes were not applied:\n{ls}"
    );
    assert!(
        ls.contains("etc/systemimager/updateclient.local.exclude"),
        "{ls}"
    );
    // Overrides are captured exactly: an override's /etc/hostname is meant.
    let o = env.ok(&["cat", "override.compute", "etc/hostname"]);
    assert_eq!(o, "kept in the override\n");
    assert_eq!(
        env.ok(&["cat", "override.compute", "etc/motd"]),
        "from the override\n"
    );
    let t = env.ok(&["template", "show", "compute"]);
    assert!(
        t.contains("label = \"msdos\"") && t.contains("role = \"logical\""),
        "{t}"
    );

    // A layout aurum refuses stops the import before anything is captured.
    let env2 = Env::new();
    let bad = env2.path("bad.xml");
    fs::write(
        &bad,
        fs::read_to_string(layout("complex.xml"))
            .unwrap()
            .replace("fs=\"xfs\"", "fs=\"jfs\""),
    )
    .unwrap();
    let err = env2.fails(&["import-si", dir, "--layout", bad.to_str().unwrap()], 2);
    assert!(err.contains("<fsinfo fs=\"jfs\">"), "{err}");
    assert!(!env2.ok(&["lsimage"]).contains("compute"));
    // So does an exclude rule aurum cannot read.
    fs::write(
        image.join("etc/systemimager/getimage.exclude"),
        "!\n/var/cache/*\n",
    )
    .unwrap();
    let err = env2.fails(&["import-si", dir, "--no-overrides"], 2);
    assert!(err.contains("getimage.exclude"), "{err}");
    assert!(!env2.ok(&["lsimage"]).contains("compute"));
}

#[test]
fn prepareclient_records_an_msdos_disk_with_logical_partitions() {
    let tools = [
        "sfdisk",
        "losetup",
        "mkfs.ext2",
        "mkfs.ext3",
        "mkswap",
        "blkid",
    ];
    if !is_root() || !Path::new("/dev/loop-control").exists() || !tools.iter().all(|t| have(t)) {
        skip("needs root, loop devices, fdisk (sfdisk), e2fsprogs, util-linux");
        return;
    }
    let env = Env::new();
    let tree = env.path("tree");
    fs::create_dir_all(tree.join("etc")).unwrap();
    fs::write(tree.join("etc/motd"), "msdos\n").unwrap();
    env.getimage(&tree, "tiny", &[]);
    let t = env.path("msdos.toml");
    fs::write(
        &t,
        r#"[[disk]]
label = "msdos"

[[disk.partition]]
name = "boot"
size = "64MiB"
fs = "ext2"
label = "boot"
mount = "/boot"
boot = true

[[disk.partition]]
role = "extended"
size = "*"

[[disk.partition]]
role = "logical"
type = "swap"
size = "32MiB"

[[disk.partition]]
role = "logical"
size = "*"
fs = "ext3"
label = "root"
mount = "/"
"#,
    )
    .unwrap();
    env.ok(&["template", "import", t.to_str().unwrap()]);
    let img = env.path("disk.img");
    fs::File::create(&img).unwrap().set_len(400 << 20).unwrap();
    let hooks = env.path("no-hooks");
    fs::create_dir_all(&hooks).unwrap();
    env.ok(&[
        "install",
        "--disk",
        img.to_str().unwrap(),
        "--image",
        "tiny",
        "--class",
        "msdos",
        "--hooks",
        hooks.to_str().unwrap(),
    ]);
    let table = json(&sh(&format!("sfdisk --json {}", img.display())));
    let parts = table["partitiontable"]["partitions"].as_array().unwrap();
    let types: Vec<&str> = parts.iter().map(|p| p["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["83", "5", "82", "83"], "{table}");
    assert_eq!(parts[0]["bootable"], true, "{table}");
    let out = env.path("golden.toml");
    env.ok(&[
        "prepareclient",
        "--disk",
        img.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    let text = fs::read_to_string(&out).unwrap();
    assert!(text.contains("label = \"msdos\""), "{text}");
    for size in ["400MiB", "2GiB"] {
        let want = plan(&env, "msdos", size);
        let got = plan(&env, out.to_str().unwrap(), size);
        // Sizes differ only where a `*` moved (prepareclient gives it to /boot, the last
        // data partition not mounted at /): compare numbers, roles, types, filesystems,
        // mount points, labels.
        assert_eq!(rows(&want, 0), rows(&got, 0), "at {size}:\n{text}");
        let labels = |p: &serde_json::Value| p["disks"][0]["partitions"].to_string();
        assert_eq!(
            labels(&want).matches("\"label\":\"root\"").count(),
            labels(&got).matches("\"label\":\"root\"").count()
        );
    }
}
