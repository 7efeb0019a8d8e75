//! Signed revisions (issue 20): keys from `aurum key generate` and from `ssh-keygen`, nodes
//! that check them over a repository directory and over `aurum serve`, refusals of unsigned,
//! untrusted, altered, older and stale revisions (each leaving the node as it was), key
//! rotation and revocation, `verify`, `log`/`show`, pull and push carrying signatures, and
//! an install refused before its disk is touched.

use std::fs;
use std::path::{Path, PathBuf};

use crate::common::{json, need, sh, write_random, Env};
use crate::serve::Server;

/// A small tree, different for each `version`.
fn tree(env: &Env, version: u32) -> PathBuf {
    let t = env.path(&format!("tree{version}"));
    fs::create_dir_all(t.join("etc")).unwrap();
    fs::write(t.join("etc/motd"), format!("version {version}\n")).unwrap();
    write_random(&t.join("usr/lib/lib.so"), u64::from(version), 200_000);
    t
}

/// `aurum key generate`: the private key's path and its public line.
fn generate(env: &Env, name: &str) -> (PathBuf, String) {
    let key = env.path(name);
    let out = env.ok(&[
        "key",
        "generate",
        key.to_str().unwrap(),
        "-C",
        &format!("{name}@master"),
        "--json",
    ]);
    let v = json(&out);
    assert_eq!(
        v["fingerprint"].as_str().unwrap().len(),
        "SHA256:".len() + 43
    );
    (key, v["public_key"].as_str().unwrap().to_string())
}

/// The key `admin` ([`generate`]) and `compute@1` captured signed with it.
fn signed_compute(env: &Env) -> (PathBuf, String) {
    let (admin, admin_pub) = generate(env, "admin");
    env.getimage(
        &tree(env, 1),
        "compute",
        &["--sign-key", admin.to_str().unwrap()],
    );
    (admin, admin_pub)
}

/// An ed25519 key made by ssh-keygen, as an administrator already has one.
fn ssh_keygen(env: &Env, name: &str) -> (PathBuf, String) {
    let key = env.path(name);
    sh(&format!(
        "ssh-keygen -q -t ed25519 -N '' -C {name}@laptop -f {}",
        key.display()
    ));
    let public = fs::read_to_string(env.path(&format!("{name}.pub"))).unwrap();
    (key, public.trim().to_string())
}

/// Writes node.toml with these trusted and revoked keys and `extra` lines.
fn node_toml(env: &Env, trusted: &[&str], revoked: &[&str], extra: &str) {
    let list = |keys: &[&str]| {
        keys.iter()
            .map(|k| format!("{k:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    env.write_config(
        "node.toml",
        &format!(
            "trusted-keys = [{}]\nrevoked-keys = [{}]\n{extra}",
            list(trusted),
            list(revoked)
        ),
    );
}

/// Every file under `root` with its content, to show that a refused update changed nothing.
fn snapshot(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    if !root.exists() {
        return out;
    }
    let listing = sh(&format!("cd {} && find . | sort", root.display()));
    for p in listing.lines() {
        let full = root.join(p);
        let data = if full.is_file() {
            fs::read(&full).unwrap()
        } else {
            Vec::new()
        };
        out.push((p.to_string(), data));
    }
    out
}

/// Runs updateclient (with `args`) on `node`, expecting exit 3 and the node unchanged;
/// returns the message.
fn refused(env: &Env, node: &Path, args: &[&str]) -> String {
    let before = snapshot(node);
    let mut all = vec!["updateclient", "--root", node.to_str().unwrap()];
    all.extend_from_slice(args);
    let e = env.fails(&all, 3);
    assert_eq!(
        snapshot(node),
        before,
        "a refused update changed the node: {e}"
    );
    assert!(e.contains("Nothing on this node was changed"), "{e}");
    e
}

fn update(env: &Env, node: &Path, args: &[&str]) -> String {
    let mut all = vec!["updateclient", "--root", node.to_str().unwrap()];
    all.extend_from_slice(args);
    env.ok(&all)
}

#[test]
fn nodes_take_only_revisions_signed_by_a_trusted_key() {
    if !need("ssh-keygen") {
        return;
    }
    let env = Env::new();
    let (admin, admin_pub) = generate(&env, "admin");
    let (laptop, _) = ssh_keygen(&env, "laptop");
    env.getimage(&tree(&env, 1), "compute", &[]);
    let node = env.empty_dir("node");
    node_toml(&env, &[&admin_pub], &[], "");

    // Unsigned: refused, naming the revision and what to do.
    let e = refused(&env, &node, &["--image", "compute"]);
    assert!(
        e.contains("refusing compute@1") && e.contains("no signature"),
        "{e}"
    );
    assert!(e.contains("aurum sign"), "{e}");

    // Signed by a key the node does not trust (an ssh-keygen key): refused, naming the key.
    env.ok(&["sign", "compute", "--sign-key", laptop.to_str().unwrap()]);
    let laptop_fp = sh(&format!("ssh-keygen -lf {}.pub", laptop.display()));
    let laptop_fp = laptop_fp.split_whitespace().nth(1).unwrap();
    let e = refused(&env, &node, &["--image", "compute"]);
    assert!(e.contains("does not trust") && e.contains(laptop_fp), "{e}");

    // Signed by the trusted key too: taken.
    env.ok(&["sign", "compute@1", "--sign-key", admin.to_str().unwrap()]);
    let out = update(&env, &node, &["--image", "compute"]);
    assert!(out.contains("-> compute@1"), "{out}");
    assert_eq!(
        fs::read_to_string(node.join("etc/motd")).unwrap(),
        "version 1\n"
    );
    // An override image is checked like the image.
    let extra = env.path("extra");
    fs::create_dir_all(extra.join("etc")).unwrap();
    fs::write(extra.join("etc/extra.conf"), "x\n").unwrap();
    env.getimage(&extra, "extra", &[]);
    let e = refused(&env, &node, &["--image", "compute", "--override", "extra"]);
    assert!(
        e.contains("refusing extra@1") && e.contains("no signature"),
        "{e}"
    );
    env.ok(&["sign", "extra", "--sign-key", admin.to_str().unwrap()]);
    update(&env, &node, &["--image", "compute", "--override", "extra"]);
    assert!(node.join("etc/extra.conf").exists());
    // A staged update is checked when it stages: nothing is staged.
    env.getimage(&tree(&env, 2), "compute", &[]);
    let e = refused(&env, &node, &["--image", "compute", "--stage"]);
    assert!(e.contains("refusing compute@2"), "{e}");

    // ssh-keygen checks the signature on its own: the signed text is the block's first seven
    // lines, the armored signature follows.
    let sigs = fs::read_to_string(env.public().join("sigs/compute/1")).unwrap();
    let blocks: Vec<&str> = sigs.split("aurum revision signature 1\n").skip(1).collect();
    assert_eq!(blocks.len(), 2, "{sigs}");
    // The laptop's signature came first, the admin's second.
    let lines: Vec<&str> = blocks[1].lines().collect();
    fs::write(
        env.path("msg"),
        format!("aurum revision signature 1\n{}\n", lines[..6].join("\n")),
    )
    .unwrap();
    fs::write(env.path("msg.sig"), format!("{}\n", lines[6..].join("\n"))).unwrap();
    fs::write(
        env.path("allowed"),
        format!("admin namespaces=\"aurum-revision\" {admin_pub}\n"),
    )
    .unwrap();
    let ok = sh(&format!(
        "cd {} && ssh-keygen -Y verify -f allowed -I admin -n aurum-revision -s msg.sig < msg",
        env.dir.path().display()
    ));
    assert!(ok.contains("Good \"aurum-revision\" signature"), "{ok}");

    // log and show name the signers (--json too).
    let log = env.ok(&["log", "compute"]);
    assert!(log.contains("signed by") && log.contains("valid"), "{log}");
    let v = json(&env.ok(&["show", "compute@1", "--json"]));
    let signers = v["signatures"].as_array().unwrap();
    assert_eq!(signers.len(), 2, "{v}");
    // With aurum.toml trusting the admin key, that signature is "trusted", the other not.
    env.write_config("aurum.toml", &format!("trusted-keys = [{admin_pub:?}]\n"));
    let v = json(&env.ok(&["show", "compute@1", "--json"]));
    let standings: Vec<&str> = v["signatures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["standing"].as_str().unwrap())
        .collect();
    assert!(
        standings.contains(&"trusted") && standings.contains(&"untrusted"),
        "{v}"
    );
    let shown = env.ok(&["show", "compute@1"]);
    assert!(shown.contains("signed by admin@master ("), "{shown}");
    let verified = env.ok(&["verify"]);
    assert!(
        verified.contains("signatures: 2 revisions signed by a trusted key, 1 unsigned"),
        "{verified}"
    );
}

#[test]
fn altered_and_older_revisions_are_refused_over_http() {
    let env = Env::new();
    let (admin, admin_pub) = signed_compute(&env);
    let key = admin.to_str().unwrap();
    env.getimage(&tree(&env, 2), "compute", &["--sign-key", key]);
    // Signed by the trusted key, but of another image.
    env.getimage(&tree(&env, 9), "evil", &["--sign-key", key]);
    let server = Server::start(&env);
    let url = server.url.clone();
    let node = env.empty_dir("node");
    node_toml(&env, &[&admin_pub], &[], "");
    let out = update(&env, &node, &["--server", &url, "--image", "compute"]);
    assert!(out.contains("-> compute@2"), "{out}");

    let public = env.public();
    let save = |rel: &str| fs::read(public.join(rel)).unwrap();
    let put = |rel: &str, data: &[u8]| fs::write(public.join(rel), data).unwrap();
    let (head, revisions, sig2) = (
        save("refs/compute/head"),
        save("refs/compute/revisions"),
        save("sigs/compute/2"),
    );
    let ids = String::from_utf8(revisions.clone()).unwrap();
    let id_of = |n: &str| {
        ids.lines()
            .find_map(|l| l.strip_prefix(&format!("{n} ")).map(str::to_string))
            .unwrap()
    };
    let (id1, id2) = (id_of("1"), id_of("2"));
    let evil_id = String::from_utf8(save("refs/evil/head")).unwrap();

    // A signed older revision presented as the newest (a rollback attack): refused.
    put("refs/compute/head", format!("{id1}\n").as_bytes());
    put("refs/compute/revisions", format!("1 {id1}\n").as_bytes());
    let e = refused(&env, &node, &["--server", &url, "--image", "compute"]);
    assert!(
        e.contains("runs compute@2") && e.contains("--allow-downgrade"),
        "{e}"
    );
    put("refs/compute/head", &head);
    put("refs/compute/revisions", &revisions);

    // Another image's revision, validly signed, served as compute@3 with its signature.
    put(
        "refs/compute/revisions",
        format!("1 {id1}\n2 {id2}\n3 {}", evil_id).as_bytes(),
    );
    put("refs/compute/head", evil_id.as_bytes());
    fs::copy(public.join("sigs/evil/1"), public.join("sigs/compute/3")).unwrap();
    let e = refused(&env, &node, &["--server", &url, "--image", "compute"]);
    assert!(
        e.contains("made for another revision") && e.contains("evil"),
        "{e}"
    );
    fs::remove_file(public.join("sigs/compute/3")).unwrap();
    put("refs/compute/head", &head);
    put("refs/compute/revisions", &revisions);

    // The signed text edited (the number of another revision): the signature fails.
    put(
        "sigs/compute/2",
        String::from_utf8(sig2.clone())
            .unwrap()
            .replace("created ", "created 1")
            .as_bytes(),
    );
    let e = refused(&env, &node, &["--server", &url, "--image", "compute@2"]);
    assert!(e.contains("does not check out"), "{e}");
    let v = env.fails(&["verify"], 3);
    assert!(v.contains("damaged"), "{v}");
    put("sigs/compute/2", &sig2);

    // A manifest altered after signing: its id no longer matches, nothing is written.
    let mf = sh(&format!("find {} -name '{id2}.mf'", public.display()));
    let mf = PathBuf::from(mf.trim());
    let original = fs::read(&mf).unwrap();
    let mut bad = original.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    fs::write(&mf, &bad).unwrap();
    let wiped = env.empty_dir("wiped");
    // An update of an empty root, which must fail (exit 3).
    let wiped_fails = || {
        env.fails(
            &[
                "updateclient",
                "--root",
                wiped.to_str().unwrap(),
                "--server",
                &url,
                "--image",
                "compute",
            ],
            3,
        )
    };
    let before = snapshot(&wiped);
    wiped_fails();
    assert_eq!(snapshot(&wiped), before);
    fs::write(&mf, &original).unwrap();

    // A pack altered after signing: the blob fails its id, the node is left as it was.
    let packs = sh(&format!(
        "find {} -name '*.pack'",
        public.join("packs").display()
    ));
    let originals: Vec<(String, Vec<u8>)> = packs
        .lines()
        .map(|p| (p.to_string(), fs::read(p).unwrap()))
        .collect();
    for (p, original) in &originals {
        let mut data = original.clone();
        let mid = data.len() / 2;
        data[mid] ^= 0xff;
        fs::write(p, data).unwrap();
    }
    wiped_fails();
    assert!(!wiped.join("etc/motd").exists());
    for (p, original) in &originals {
        fs::write(p, original).unwrap();
    }

    // Going back on purpose: --allow-downgrade (the node holds every blob it needs).
    let out = update(
        &env,
        &node,
        &[
            "--repo",
            env.repo().to_str().unwrap(),
            "--image",
            "compute@1",
            "--allow-downgrade",
        ],
    );
    assert!(
        out.contains("compute@2") && out.contains("-> compute@1"),
        "{out}"
    );
}

#[test]
fn a_stale_signature_is_refused_until_the_master_signs_again() {
    let env = Env::new();
    let (admin, admin_pub) = signed_compute(&env);
    let key = admin.to_str().unwrap();
    let node = env.empty_dir("node");
    node_toml(&env, &[&admin_pub], &[], "max-age = \"2s\"\n");
    std::thread::sleep(std::time::Duration::from_secs(3));
    let e = refused(&env, &node, &["--image", "compute"]);
    assert!(
        e.contains("freeze attack") && e.contains("aurum sign compute"),
        "{e}"
    );
    env.ok(&["sign", "compute", "--sign-key", key]);
    update(&env, &node, &["--image", "compute"]);
    // A bad age is named.
    node_toml(&env, &[&admin_pub], &[], "max-age = \"2 weeks\"\n");
    let e = env.fails(
        &[
            "updateclient",
            "--root",
            node.to_str().unwrap(),
            "--image",
            "compute",
        ],
        2,
    );
    assert!(e.contains("max-age `2 weeks`"), "{e}");
}

#[test]
fn keys_rotate_and_a_revoked_key_no_longer_counts() {
    if !need("ssh-keygen") {
        return;
    }
    let env = Env::new();
    let (old, old_pub) = generate(&env, "old");
    let (new, new_pub) = ssh_keygen(&env, "new");
    env.getimage(
        &tree(&env, 1),
        "compute",
        &["--sign-key", old.to_str().unwrap()],
    );
    let node = env.empty_dir("node");
    node_toml(&env, &[&old_pub], &[], "");
    update(&env, &node, &["--image", "compute"]);

    // Rotation: nodes trust both keys; new revisions are signed with the new key; the old
    // ones stay valid under the old key while it is trusted.
    node_toml(&env, &[&old_pub, &new_pub], &[], "");
    env.getimage(
        &tree(&env, 2),
        "compute",
        &["--sign-key", new.to_str().unwrap()],
    );
    update(&env, &node, &["--image", "compute"]);
    update(&env, &node, &["--image", "compute@1", "--allow-downgrade"]);

    // The old key is stolen: revoked (by fingerprint), its signatures no longer count.
    let old_fp = json(&env.ok(&["key", "show", old.to_str().unwrap(), "--json"]))["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    node_toml(&env, &[&old_pub, &new_pub], &[&old_fp], "");
    let e = refused(&env, &node, &["--image", "compute@1", "--allow-downgrade"]);
    assert!(e.contains("revoked") && e.contains(&old_fp), "{e}");
    // Everything signed again with the new key.
    let signed = json(&env.ok(&[
        "sign",
        "--all",
        "--sign-key",
        new.to_str().unwrap(),
        "--json",
    ]));
    // Two revisions, and (--all with no image) the six classes' templates and the set.
    let signed = signed.as_array().unwrap();
    assert_eq!(
        signed.iter().filter(|v| v["revision"].is_string()).count(),
        2
    );
    assert_eq!(
        signed.iter().filter(|v| v["template"].is_string()).count(),
        6
    );
    assert_eq!(signed.last().unwrap()["template_set"], 6, "{signed:?}");
    update(&env, &node, &["--image", "compute@1", "--allow-downgrade"]);
    // Re-signing replaced the new key's signature, and kept the old key's.
    assert_eq!(
        fs::read_to_string(env.public().join("sigs/compute/1"))
            .unwrap()
            .matches("BEGIN SSH SIGNATURE")
            .count(),
        2
    );

    // verify, with aurum.toml trusting the new key and revoking the old one.
    env.write_config(
        "aurum.toml",
        &format!("trusted-keys = [{new_pub:?}]\nrevoked-keys = [{old_pub:?}]\n"),
    );
    let v = json(&env.ok(&["verify", "--json"]));
    assert_eq!(v["signatures"]["signed"], 2, "{v}");
    let log = env.ok(&["log", "compute"]);
    assert!(
        log.contains("REVOKED") && log.contains("new@laptop"),
        "{log}"
    );

    // A key file that is not a private key, and a key that exists, are refused by name.
    let e = env.fails(
        &[
            "sign",
            "compute",
            "--sign-key",
            &format!("{}.pub", new.display()),
        ],
        2,
    );
    assert!(e.contains("not the .pub"), "{e}");
    let e = env.fails(&["key", "generate", old.to_str().unwrap()], 2);
    assert!(e.contains("never overwrites"), "{e}");
    let e = env.fails(&["sign", "compute"], 2);
    assert!(e.contains("--sign-key"), "{e}");
}

#[test]
fn pull_and_push_carry_signatures_and_a_master_refuses_unsigned_revisions() {
    let master = Env::new();
    let (admin, admin_pub) = signed_compute(&master);
    let key = admin.to_str().unwrap();
    // The templates too: a master that trusts keys pulls only signed ones.
    master.ok(&["template", "sign", "--sign-key", key]);
    let server = Server::start(&master);
    let url = server.url.clone();

    let cluster = Env::new();
    cluster.write_config("aurum.toml", &format!("trusted-keys = [{admin_pub:?}]\n"));
    cluster.ok(&["remote", "add", "super", &url]);
    let out = cluster.ok(&["pull", "super"]);
    assert!(out.contains("1 signatures"), "{out}");
    assert!(cluster.public().join("sigs/super/compute/1").exists());
    let v = cluster.ok(&["verify"]);
    assert!(v.contains("1 revisions signed by a trusted key"), "{v}");

    // A revision signed later at the source is signed here after the next pull.
    master.getimage(&tree(&master, 2), "compute", &[]);
    let e = cluster.fails(&["pull", "super"], 3);
    assert!(
        e.contains("refusing to pull compute@2") && e.contains("no signature"),
        "{e}"
    );
    assert_eq!(crate::common::revisions_of(&cluster, "super/compute"), 1);
    master.ok(&["sign", "compute", "--sign-key", key]);
    cluster.ok(&["pull", "super"]);
    assert_eq!(crate::common::revisions_of(&cluster, "super/compute"), 2);

    // A node of the cluster checks the pulled copy (signed as `compute` at the source).
    let cluster_server = Server::start(&cluster);
    let node = cluster.empty_dir("node");
    node_toml(&cluster, &[&admin_pub], &[], "");
    let out = update(
        &cluster,
        &node,
        &["--server", &cluster_server.url, "--image", "super/compute"],
    );
    assert!(out.contains("-> super/compute@2"), "{out}");

    // A push to a directory carries them too.
    let backup = Env::new();
    master.ok(&["push", backup.repo().to_str().unwrap()]);
    assert!(backup.public().join("sigs/compute/2").exists());
    let log = backup.ok(&["log", "compute"]);
    assert!(log.contains("signed by"), "{log}");
}

#[test]
fn an_install_refuses_an_unsigned_revision_before_touching_the_disk() {
    if !crate::install::can_install() {
        return;
    }
    let env = Env::new();
    let (admin, admin_pub) = generate(&env, "admin");
    let t = env.path("tiny");
    crate::install::tiny_tree(&t);
    env.getimage(&t, "compute", &[]);
    let class = crate::install::class();
    let d = crate::install::disk(&env, "d.img", 13);
    env.ok(&[
        "template",
        "sign",
        class,
        "--sign-key",
        admin.to_str().unwrap(),
    ]);
    let args = [
        "install",
        "--disk",
        d.to_str().unwrap(),
        "--image",
        "compute",
        "--class",
        class,
        "--trusted-key",
        &admin_pub,
    ];
    let e = env.fails(&args, 3);
    assert!(
        e.contains("refusing compute@1") && e.contains("no signature"),
        "{e}"
    );
    let blocks = |p: &Path| std::os::unix::fs::MetadataExt::blocks(&fs::metadata(p).unwrap());
    assert_eq!(blocks(&d), 0, "the refused install wrote to the disk");
    env.ok(&["sign", "compute", "--sign-key", admin.to_str().unwrap()]);
    let out = env.ok(&args);
    assert!(out.contains("installed compute@1"), "{out}");
    crate::install::detached(&d);
}

/// The diskless path of the netboot installer (`boot-memory`, which the boot kit's /init runs
/// for a node whose root is memory) refuses an unsigned revision before it mounts its tmpfs,
/// and boots the revision once signed.
#[test]
fn a_diskless_boot_refuses_an_unsigned_revision_before_mounting() {
    if !crate::common::is_root() {
        crate::common::skip("boot-memory mounts a tmpfs: needs root");
        return;
    }
    let env = Env::new();
    let (admin, admin_pub) = generate(&env, "admin");
    env.getimage(&tree(&env, 1), "compute", &[]);
    node_toml(&env, &[&admin_pub], &[], "");
    let srv = crate::serve::Server::start(&env);
    let url = format!("http://{}", srv.addr);
    let root = env.path("newroot");
    let args = [
        "boot-memory",
        "--server",
        &url,
        "--image",
        "compute",
        "--node",
        "n01",
        "--root",
        root.to_str().unwrap(),
        "--no-report",
    ];
    let e = env.fails(&args, 3);
    assert!(
        e.contains("refusing compute@1") && e.contains("no signature"),
        "{e}"
    );
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains(root.to_str().unwrap()),
        "a refused boot left a tmpfs mounted"
    );
    env.ok(&["sign", "compute", "--sign-key", admin.to_str().unwrap()]);
    let out = env.run(&args);
    let mounted = fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .contains(root.to_str().unwrap());
    if mounted {
        sh(&format!("umount {}", root.display()));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && mounted && stdout.contains("booted into memory as n01"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A node that trusts keys boots a network root only when a trusted key signed its image as
/// the revision's (issue #21): an unsigned export, an image altered on the server (with or
/// without its record rewritten to match), and a record that hands over another revision's
/// signed image are refused, naming the image and the revision, with nothing left mounted;
/// `aurum sign` signs an existing export, `export --sign-key` a new one, and the signed image
/// boots on the host; `verify` sees the altered image and counts signed images.
#[test]
fn a_node_that_trusts_keys_boots_only_a_signed_network_root() {
    if !crate::common::can_run(crate::common::is_root(), "root (mount)")
        || !need("mkfs.erofs")
        || !need("losetup")
    {
        return;
    }
    let env = Env::new();
    let (admin, admin_pub) = generate(&env, "admin");
    let key = admin.to_str().unwrap();
    for v in 1..=2 {
        env.getimage(&tree(&env, v), "compute", &["--sign-key", key]);
    }
    node_toml(&env, &[&admin_pub], &[], "");
    let srv = Server::start(&env);
    let url = format!("http://{}", srv.addr);
    let root = env.path("newroot");
    let rw = env.path("rw");
    let args = |rev: &'static str| -> Vec<String> {
        [
            "boot-netroot",
            "--server",
            &url,
            "--image",
            rev,
            "--node",
            "n01",
            "--root",
            root.to_str().unwrap(),
            "--rw",
            rw.to_str().unwrap(),
            "--no-report",
            "--json",
        ]
        .map(String::from)
        .to_vec()
    };
    // Exit 3 for what a signature refuses, 1 for bytes that differ from their record.
    let refused_with = |rev: &'static str, code: i32| -> String {
        let a = args(rev);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let e = env.fails(&a, code);
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
        assert!(
            !mounts.contains(rw.to_str().unwrap()) && !mounts.contains(root.to_str().unwrap()),
            "a refused network-root boot left something mounted: {e}"
        );
        e
    };
    let refused = |rev: &'static str| refused_with(rev, 3);
    let record_of = |e: &serde_json::Value| {
        env.public()
            .join(format!("netroot/{}.erofs.json", e["id"].as_str().unwrap()))
    };

    // Exported without a key: refused, saying how to sign it.
    let e1 = json(&env.ok(&["export", "compute@1", "--netroot", "--json"]));
    assert_eq!(e1["signed_by"], serde_json::Value::Null);
    assert!(
        e1["warnings"][0]
            .as_str()
            .unwrap()
            .contains("aurum sign compute@1"),
        "{e1:#}"
    );
    let image1 = format!("netroot/{}.erofs", e1["blake3"].as_str().unwrap());
    let e = refused("compute@1");
    assert!(
        e.contains(&format!(
            "refusing the network-root image {image1} of compute@1"
        )) && e.contains("no signature")
            && e.contains("aurum sign"),
        "{e}"
    );

    // `aurum sign` signs the revision and its existing export; the image boots.
    let s = json(&env.ok(&["sign", "compute@1", "--sign-key", key, "--json"]));
    assert_eq!(s[0]["netroot"], image1.as_str(), "{s:#}");
    let a = args("compute@1");
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let out = env.run(&a);
    for p in [root.clone(), rw.join("aurum-netroot/lower"), rw.clone()] {
        let _ = std::process::Command::new("umount").arg(&p).status();
    }
    assert!(
        out.status.success(),
        "the signed network root did not boot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        json(&String::from_utf8_lossy(&out.stdout))["image"],
        image1.as_str()
    );
    let v = env.ok(&["verify"]);
    assert!(v.contains("network-root images: 1 signed"), "{v}");

    // Another revision's signed image handed over under compute@1's record: refused.
    let e2 = json(&env.ok(&[
        "export",
        "compute@2",
        "--netroot",
        "--sign-key",
        key,
        "--json",
    ]));
    assert!(
        e2["signed_by"].as_str().unwrap().starts_with("SHA256:"),
        "{e2:#}"
    );
    let good1 = fs::read(record_of(&e1)).unwrap();
    let mut forged = json(&fs::read_to_string(record_of(&e2)).unwrap());
    forged["id"] = e1["id"].clone();
    fs::write(record_of(&e1), serde_json::to_vec(&forged).unwrap()).unwrap();
    let e = refused("compute@1");
    assert!(
        e.contains("refusing the network-root image")
            && e.contains("of compute@1")
            && e.contains("another network-root image (number 2")
            && e.contains("the signature by SHA256:"),
        "{e}"
    );
    fs::write(record_of(&e1), &good1).unwrap();

    // The image altered on the server: its bytes no longer match the signed record.
    let path1 = env.public().join(&image1);
    let original = fs::read(&path1).unwrap();
    let mut altered = original.clone();
    let at = altered.len() / 2;
    altered[at] ^= 0xff;
    fs::write(&path1, &altered).unwrap();
    let e = refused_with("compute@1", 1);
    assert!(e.contains("arrived with BLAKE3"), "{e}");
    let v = env.run(&["verify"]);
    assert!(
        !v.status.success() && String::from_utf8_lossy(&v.stdout).contains("DAMAGED netroot"),
        "{}",
        String::from_utf8_lossy(&v.stdout)
    );
    // ...and its record rewritten to match, under the altered image's own name, with the
    // signatures copied there: the signature names other bytes.
    let hash = blake3::hash(&altered).to_hex().to_string();
    fs::rename(&path1, env.public().join(format!("netroot/{hash}.erofs"))).unwrap();
    fs::copy(
        env.public().join(format!("{image1}.sig")),
        env.public().join(format!("netroot/{hash}.erofs.sig")),
    )
    .unwrap();
    let mut rewritten = json(&String::from_utf8_lossy(&good1));
    rewritten["blake3"] = hash.clone().into();
    rewritten["path"] = format!("netroot/{hash}.erofs").into();
    fs::write(record_of(&e1), serde_json::to_vec(&rewritten).unwrap()).unwrap();
    let e = refused("compute@1");
    assert!(
        e.contains(&format!(
            "refusing the network-root image netroot/{hash}.erofs of compute@1"
        )) && e.contains("another network-root image (file BLAKE3"),
        "{e}"
    );
}

/// `--allow-downgrade` waives `max-age` for the older revision it lets a node go back to (an
/// old revision's signature is old: only heads are signed again), saying so, and for nothing
/// else: a newer revision with a stale signature is refused with the flag too.
#[test]
fn allow_downgrade_waives_max_age_only_for_a_downgrade() {
    let env = Env::new();
    let (admin, admin_pub) = generate(&env, "admin");
    for v in 1..=3 {
        env.getimage(
            &tree(&env, v),
            "compute",
            &["--sign-key", admin.to_str().unwrap()],
        );
    }
    let node = env.path("node");
    fs::create_dir_all(&node).unwrap();
    node_toml(&env, &[&admin_pub], &[], "max-age = \"3s\"\n");
    update(&env, &node, &["--image", "compute@2"]);
    std::thread::sleep(std::time::Duration::from_secs(4));
    // Every signature is stale now. Forward, the flag changes nothing: a freeze is refused.
    let e = refused(&env, &node, &["--image", "compute@3", "--allow-downgrade"]);
    assert!(
        e.contains("freeze attack") && e.contains("only for a revision older"),
        "{e}"
    );
    // Back without the flag: a rollback attack, refused.
    let e = refused(&env, &node, &["--image", "compute@1"]);
    assert!(e.contains("runs compute@2, a newer revision"), "{e}");
    // Back with it: taken despite its stale signature, with a warning naming the age.
    let out = env.run(&[
        "updateclient",
        "--root",
        node.to_str().unwrap(),
        "--image",
        "compute@1",
        "--allow-downgrade",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("aurum: warning: compute@1")
            && err.contains("longer than max-age (3s)")
            && err.contains("taken because --allow-downgrade asked to go back from compute@2"),
        "{err}"
    );
}

/// `ssh-keygen -Y verify` passes the first block of the signatures file `file`, signed by
/// `key` (as `admin`) in `namespace`: its message cut out with `sed` (the lines before the
/// armored signature), as the book's Security chapter shows.
fn ssh_keygen_verifies(env: &Env, key: &str, namespace: &str, file: &Path) {
    let dir = env.path("check");
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join("allowed"),
        format!("admin namespaces=\"{namespace}\" {key}\n"),
    )
    .unwrap();
    sh(&format!(
        "cd {} && sed '/BEGIN SSH SIGNATURE/,$d' {f} > msg && \
         sed -n '/BEGIN SSH SIGNATURE/,/END SSH SIGNATURE/p' {f} > msg.sig && \
         ssh-keygen -Y verify -f allowed -I admin -n {namespace} -s msg.sig < msg",
        dir.display(),
        f = file.display()
    ));
}

/// `aurum install --dry-run` of image `compute` onto a 13 GiB disk image with this machine's
/// facts, from the server `url`, trusting `key`.
struct DryInstall {
    disk: PathBuf,
    facts: PathBuf,
    url: String,
    key: String,
}

impl DryInstall {
    fn new(env: &Env, url: &str, key: &str) -> DryInstall {
        let disk = env.path("d.img");
        fs::File::create(&disk).unwrap().set_len(13 << 30).unwrap();
        let facts = env.path("facts.json");
        fs::write(&facts, env.ok(&["facts", "--json"])).unwrap();
        DryInstall {
            disk,
            facts,
            url: url.to_string(),
            key: key.to_string(),
        }
    }

    /// Runs it for `class`: its output when `expect` is 0, else its error output, the exit
    /// code checked to be `expect`.
    fn run(&self, env: &Env, class: &str, expect: i32) -> String {
        let args = [
            "install",
            "--dry-run",
            "--disk",
            self.disk.to_str().unwrap(),
            "--server",
            &self.url,
            "--image",
            "compute",
            "--class",
            class,
            "--facts",
            self.facts.to_str().unwrap(),
            "--trusted-key",
            &self.key,
        ];
        match expect {
            0 => env.ok(&args),
            code => env.fails(&args, code),
        }
    }
}

/// Partition templates decide what is written where on a node's disks: an installer with
/// trusted keys refuses a template no trusted key signed, one altered after signing, and one
/// whose signature was made for another text, before the disk is touched; `template sign`
/// and `template import --sign-key` sign them, and pull carries the signatures, refusing
/// unsigned templates when the puller trusts keys.
#[test]
fn templates_are_signed_and_installers_refuse_unsigned_or_altered_ones() {
    let env = Env::new();
    let (admin, admin_pub) = generate(&env, "admin");
    let key = admin.to_str().unwrap();
    env.getimage(&tree(&env, 1), "compute", &["--sign-key", key]);
    let srv = Server::start(&env);
    let url = format!("http://{}", srv.addr);
    let class = crate::install::class();
    let install = DryInstall::new(&env, &url, &admin_pub);
    let dry_run = |expect: i32| install.run(&env, class, expect);
    // Unsigned (as `aurum init` seeds them): refused, naming the fix.
    let e = dry_run(3);
    assert!(
        e.contains("refusing the templates from")
            && e.contains("template set")
            && e.contains("aurum template sign")
            && e.contains("Nothing on this node was changed"),
        "{e}"
    );
    let out = env.ok(&["template", "sign", class, "--sign-key", key, "--json"]);
    let signed = json(&out);
    let id = signed[0]["text"].as_str().unwrap().to_string();
    let sig_file = env.public().join(format!("sigs/_templates/{class}/{id}"));
    assert!(sig_file.exists());
    // verify counts them (the shipped templates aurum init seeded are not signed yet).
    let v = env.ok(&["verify"]);
    assert!(v.contains("templates: 1 signed, 5 unsigned ("), "{v}");
    // ssh-keygen can check it too: the block's first four lines, namespace aurum-template.
    if need("ssh-keygen") {
        ssh_keygen_verifies(&env, &admin_pub, "aurum-template", &sig_file);
    }
    let out = dry_run(0);
    assert!(out.contains("would install compute@1"), "{out}");

    // The published text altered (a tampered server): it has no signature of its own...
    let published = env.public().join(format!("templates/{class}.toml"));
    let original = fs::read_to_string(&published).unwrap();
    let altered = original.replacen("[[disk]]", "# altered\n[[disk]]", 1);
    assert_ne!(altered, original);
    fs::write(&published, &altered).unwrap();
    let e = dry_run(3);
    assert!(e.contains("no signature"), "{e}");
    // ...and the genuine signature put beside it is refused as made for another text.
    let altered_id = aurum::format::Id::of(altered.as_bytes()).hex();
    fs::copy(
        &sig_file,
        env.public()
            .join(format!("sigs/_templates/{class}/{altered_id}")),
    )
    .unwrap();
    let e = dry_run(3);
    assert!(
        e.contains("does not check out") && e.contains("made for another template"),
        "{e}"
    );
    fs::write(&published, &original).unwrap();
    dry_run(0);

    // A template imported with --sign-key is signed at once.
    let t = env.path(&format!("{class}.toml"));
    fs::write(&t, original.replacen("[[disk]]", "# v2\n[[disk]]", 1)).unwrap();
    let out = env.run(&["template", "import", t.to_str().unwrap(), "--sign-key", key]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("signed template {class}")),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dry_run(0);

    // A master that trusts the key pulls only signed templates, and their signatures.
    let cluster = Env::new();
    fs::create_dir_all(cluster.config_dir()).unwrap();
    fs::write(
        cluster.config_dir().join("aurum.toml"),
        format!("trusted-keys = [{admin_pub:?}]\n"),
    )
    .unwrap();
    cluster.ok(&["remote", "add", "super", &url]);
    let e = cluster.fails(&["pull", "super"], 3);
    assert!(
        e.contains("refusing to pull the template of class") && e.contains("Nothing was pulled"),
        "{e}"
    );
    assert_eq!(crate::common::revisions_of(&cluster, "super/compute"), 0);
    env.ok(&["template", "sign", "--sign-key", key]);
    cluster.ok(&["pull", "super"]);
    let v2 = aurum::format::Id::of(fs::read(&t).unwrap().as_slice()).hex();
    assert!(cluster
        .public()
        .join(format!("sigs/_templates/{class}/{v2}"))
        .exists());
    // Its own installers check them as the master's do.
    let cluster_srv = Server::start(&cluster);
    let out = cluster.ok(&[
        "install",
        "--dry-run",
        "--disk",
        install.disk.to_str().unwrap(),
        "--server",
        &format!("http://{}", cluster_srv.addr),
        "--image",
        "super/compute",
        "--class",
        class,
        "--facts",
        install.facts.to_str().unwrap(),
        "--trusted-key",
        &admin_pub,
    ]);
    assert!(out.contains("would install super/compute@1"), "{out}");
}

/// A template's signature says a text was once its class's, not that it still is: the
/// signed template set (class -> current text, and when) closes that. An installer with
/// trusted keys refuses an older signed text a server replays, a `templates/CLASSES` that
/// leaves a class out, and (with `max-age`) a set signed too long ago, until `aurum sign
/// --all` signs everything again; `verify` reports a set that is out of date or altered; a
/// pull refuses a set older than the one it holds (a stale mirror).
#[test]
fn the_template_set_refuses_replayed_texts_dropped_classes_and_stale_sets() {
    let env = Env::new();
    let (admin, admin_pub) = generate(&env, "admin");
    let key = admin.to_str().unwrap();
    env.getimage(&tree(&env, 1), "compute", &["--sign-key", key]);
    let out = env.run(&["template", "sign", "--sign-key", key]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("signed the template set (6 classes)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let set_file = env.public().join("sigs/_template-set");
    let first_set = fs::read_to_string(&set_file).unwrap();
    assert!(
        first_set.starts_with("aurum template set 1\nsigned "),
        "{first_set}"
    );
    // A copy of the repository as it is now: later, a mirror that stopped updating.
    let stale_mirror = env.path("stale-mirror");
    sh(&format!(
        "cp -a {} {}",
        env.repo().display(),
        stale_mirror.display()
    ));
    // ssh-keygen checks the set too: the lines up to the last `class` line, its namespace.
    if need("ssh-keygen") {
        ssh_keygen_verifies(&env, &admin_pub, "aurum-template-set", &set_file);
    }
    let srv = Server::start(&env);
    let url = format!("http://{}", srv.addr);
    let class = crate::install::class();
    let install = DryInstall::new(&env, &url, &admin_pub);
    let dry_run = |class: &str, expect: i32| install.run(&env, class, expect);
    // The happy path.
    let out = dry_run(class, 0);
    assert!(out.contains("would install compute@1"), "{out}");
    let v = env.ok(&["verify"]);
    assert!(
        v.contains("template set: 6 classes, signed by SHA256:")
            && v.contains("names every class's newest template"),
        "{v}"
    );

    // A new text of the class, imported and signed: the set names it now...
    let published = env.public().join(format!("templates/{class}.toml"));
    let v1 = fs::read_to_string(&published).unwrap();
    let t = env.path(&format!("{class}.toml"));
    fs::write(&t, v1.replacen("[[disk]]", "# v2\n[[disk]]", 1)).unwrap();
    let out = env.run(&["template", "import", t.to_str().unwrap(), "--sign-key", key]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("signed the template set"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dry_run(class, 0);
    // ...so a server handing out the older text, validly signed in its day, is refused.
    let v2 = fs::read_to_string(&published).unwrap();
    fs::write(&published, &v1).unwrap();
    let e = dry_run(class, 3);
    assert!(
        e.contains(&format!("refusing the template of class {class}"))
            && e.contains("names another text")
            && e.contains("replayed")
            && e.contains("Nothing on this node was changed"),
        "{e}"
    );
    fs::write(&published, &v2).unwrap();
    dry_run(class, 0);

    // A class left out of the unsigned class list: an installer picking its class from the
    // facts refuses the list; verify finds the list altered.
    let list_file = env.public().join("templates/CLASSES");
    let list = fs::read_to_string(&list_file).unwrap();
    let dropped = list.lines().find(|c| *c != class).unwrap().to_string();
    fs::write(&list_file, list.replace(&format!("{dropped}\n"), "")).unwrap();
    let e = dry_run("auto", 3);
    assert!(
        e.contains(&format!(
            "leaves out {dropped}, which the signed template set names"
        )) && e.contains("Nothing on this node was changed"),
        "{e}"
    );
    let v = env.run(&["verify"]);
    let v = String::from_utf8_lossy(&v.stdout);
    assert!(v.contains("templates/CLASSES"), "{v}");
    fs::write(&list_file, &list).unwrap();

    // The set altered: verify reports it damaged, and installers refuse it.
    let good_set = fs::read_to_string(&set_file).unwrap();
    let v2_id = aurum::format::Id::of(v2.as_bytes()).hex();
    let v1_id = aurum::format::Id::of(v1.as_bytes()).hex();
    fs::write(&set_file, good_set.replace(&v2_id, &v1_id)).unwrap();
    let e = dry_run(class, 3);
    assert!(e.contains("does not check out"), "{e}");
    let v = env.run(&["verify"]);
    let v = String::from_utf8_lossy(&v.stdout);
    assert!(
        v.contains("DAMAGED signature") && v.contains("template set"),
        "{v}"
    );
    fs::write(&set_file, &good_set).unwrap();

    // A template imported without a key: the set is out of date, and verify says so.
    fs::write(&t, v1.replacen("[[disk]]", "# v3\n[[disk]]", 1)).unwrap();
    env.ok(&["template", "import", t.to_str().unwrap()]);
    let v = env.ok(&["verify"]);
    assert!(
        v.contains("OUT OF DATE") && v.contains(&format!("{class}: the set names text")),
        "{v}"
    );

    // Stale: with max-age, a set signed longer ago is refused (a frozen server) until the
    // master signs again; `aurum sign --all` signs the revisions, the templates and the set.
    env.ok(&["sign", "--all", "--sign-key", key]);
    env.write_config("node.toml", "max-age = \"2s\"\n");
    std::thread::sleep(std::time::Duration::from_secs(3));
    let e = dry_run(class, 3);
    assert!(
        e.contains("template set")
            && e.contains("longer than max-age (2s)")
            && e.contains("freeze attack")
            && e.contains("Nothing on this node was changed"),
        "{e}"
    );
    env.ok(&["sign", "--all", "--sign-key", key]);
    let out = dry_run(class, 0);
    assert!(out.contains("would install compute@1"), "{out}");
    env.write_config("node.toml", "");

    // A master that trusts the key pulls the set with the templates...
    let cluster = Env::new();
    cluster.write_config("aurum.toml", &format!("trusted-keys = [{admin_pub:?}]\n"));
    cluster.ok(&["remote", "add", "super", &url]);
    cluster.ok(&["pull", "super"]);
    let pulled = cluster.public().join("sigs/_template-set");
    assert_eq!(
        fs::read_to_string(&pulled).unwrap(),
        fs::read_to_string(&set_file).unwrap()
    );
    // ...and refuses a mirror whose set is older than the one it holds.
    cluster.ok(&["remote", "add", "stale", stale_mirror.to_str().unwrap()]);
    let before = fs::read_to_string(&pulled).unwrap();
    let e = cluster.fails(&["pull", "stale"], 3);
    assert!(
        e.contains("older than the one this repository holds") && e.contains("Nothing was pulled"),
        "{e}"
    );
    assert_eq!(fs::read_to_string(&pulled).unwrap(), before);
    assert_eq!(crate::common::revisions_of(&cluster, "stale/compute"), 0);
}

/// A node that trusts keys refuses an NFS root, even of a signed revision exported with
/// `export --nfs` (issue #21): exit 3, saying why and what to boot instead, before anything
/// is mounted (the server is never asked for the export record).
#[test]
fn a_node_that_trusts_keys_refuses_an_nfs_root() {
    if !crate::common::can_run(crate::common::is_root(), "root (checkout, mount)") {
        return;
    }
    let env = Env::new();
    let (admin, admin_pub) = generate(&env, "admin");
    env.getimage(
        &tree(&env, 1),
        "compute",
        &["--sign-key", admin.to_str().unwrap()],
    );
    env.ok(&["export", "compute@1", "--nfs"]);
    node_toml(&env, &[&admin_pub], &[], "");
    let srv = Server::start(&env);
    let url = format!("http://{}", srv.addr);
    let root = env.path("newroot");
    let rw = env.path("rw");
    let e = env.fails(
        &[
            "boot-netroot",
            "--nfs",
            "--server",
            &url,
            "--image",
            "compute@1",
            "--node",
            "n01",
            "--root",
            root.to_str().unwrap(),
            "--rw",
            rw.to_str().unwrap(),
            "--no-report",
        ],
        3,
    );
    assert!(
        e.contains("refusing to boot compute@1 from an NFS root") && e.contains("--rootfs memory"),
        "{e}"
    );
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains(rw.to_str().unwrap()) && !mounts.contains(root.to_str().unwrap()),
        "{mounts}"
    );
}
