//! Embedded repositories (issue #16): a cluster master's root holding an aurum repository is
//! captured with the repository recorded by reference, and checkout, updateclient and
//! install rebuild a working repository from it; gc keeps what the record names.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::common::{json, sh, write_random, Env};
use crate::serve::Server;

/// Bytes of a repository's packs and manifests (what a capture stores).
fn stored(repo: &Path) -> u64 {
    sh(&format!(
        "du -sb --apparent-size {0}/public/packs {0}/public/manifests | awk '{{s+=$1}} END {{print s}}'",
        repo.display()
    ))
    .trim()
    .parse()
    .unwrap()
}

/// A small OS-like tree: text files that compress, and a binary.
fn os_tree(dir: &Path, seed: u64) {
    for i in 0..40 {
        let p = dir.join(format!("usr/share/doc/pkg{i}/README"));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, format!("package {i} seed {seed}\n").repeat(200)).unwrap();
    }
    write_random(&dir.join("usr/bin/tool"), seed, 300_000);
    fs::create_dir_all(dir.join("etc")).unwrap();
    fs::write(dir.join("etc/hostname"), format!("host{seed}\n")).unwrap();
}

/// A super master (the Env's repository) with image `compute` (two revisions, a tag), and a
/// master root `master/` whose repository `var/lib/aurum` pulled it as remote `super`.
fn super_and_master(env: &Env) -> PathBuf {
    let gold = env.path("gold");
    os_tree(&gold, 1);
    env.getimage(&gold, "compute", &[]);
    write_random(&gold.join("opt/app.bin"), 7, 2_000_000);
    env.getimage(&gold, "compute", &[]);
    env.ok(&["tag", "compute@1", "stable"]);
    let master = env.path("master");
    os_tree(&master, 2);
    let inner = master.join("var/lib/aurum");
    env.ok_at(&inner, &["init"]);
    env.ok_at(
        &inner,
        &["remote", "add", "super", env.repo().to_str().unwrap()],
    );
    env.ok_at(&inner, &["pull", "super", "compute"]);
    master
}

/// What a repository lists: images with their revisions (numbers, ids) and tags.
fn listing(env: &Env, repo: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for img in json(&env.ok_at(repo, &["lsimage", "--json"]))
        .as_array()
        .unwrap()
    {
        let name = img["name"].as_str().unwrap().to_string();
        out.push(format!("{name} {}", img["revisions"]));
        out.push(env.ok_at(repo, &["log", &name]));
    }
    out
}

fn verify(env: &Env, repo: &Path) {
    let v = env.ok_at(repo, &["verify"]);
    assert!(v.contains("repository is intact"), "{v}");
}

#[test]
fn a_master_is_captured_by_reference_and_checks_out_as_a_working_repository() {
    let env = Env::new();
    let master = super_and_master(&env);
    let inner = master.join("var/lib/aurum");

    // The same root without its repository, captured into a twin of the super master, is
    // what the repository must cost next to.
    let twin = Env::new();
    twin.getimage(&env.path("gold"), "compute", &[]);
    let bare = env.path("bare");
    sh(&format!(
        "cp -a {} {} && rm -rf {}/var/lib/aurum",
        master.display(),
        bare.display(),
        bare.display()
    ));
    let before_twin = stored(&twin.repo());
    twin.getimage(&bare, "master", &[]);
    let without = stored(&twin.repo()) - before_twin;

    let before = stored(&env.repo());
    let out = env.getimage(&master, "master", &["--json"]);
    let with = stored(&env.repo()) - before;
    let report = json(&out);
    let e = &report["embedded"][0];
    assert_eq!(e["path"], "/var/lib/aurum", "{report}");
    assert_eq!(e["images"], 1, "{report}");
    assert_eq!(e["revisions"], 2, "{report}");
    assert_eq!(
        e["packs_added"], 0,
        "packs pulled from here are here: {report}"
    );
    eprintln!(
        "store cost of the master root: {without} bytes without its repository, {with} with it ({} more)",
        with as i64 - without as i64
    );
    assert!(with <= without + (1 << 20), "{with} vs {without}");

    // The manifest records the repository, not its files.
    let ls = env.ok(&["ls", "master", "/var/lib/aurum"]);
    assert!(!ls.contains("aurum.db") && !ls.contains("public"), "{ls}");

    let out_dir = env.path("out");
    let started = Instant::now();
    let co = json(&env.ok(&["checkout", "master", out_dir.to_str().unwrap(), "--json"]));
    eprintln!(
        "checkout of the master with its repository rebuilt: {:.2} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(co["embedded"][0]["revisions"], 2, "{co}");
    let rebuilt = out_dir.join("var/lib/aurum");
    verify(&env, &rebuilt);
    assert_eq!(listing(&env, &rebuilt), listing(&env, &inner));
    assert!(env
        .ok_at(&rebuilt, &["log", "super/compute"])
        .contains("stable"));
    // The rebuilt repository works: it checks out, and it pulls what is new upstream.
    let c = env.path("c");
    env.ok_at(
        &rebuilt,
        &["checkout", "super/compute@2", c.to_str().unwrap()],
    );
    assert_eq!(
        fs::read(c.join("opt/app.bin")).unwrap(),
        fs::read(env.path("gold/opt/app.bin")).unwrap()
    );
    fs::write(env.path("gold/etc/motd"), "new\n").unwrap();
    env.getimage(&env.path("gold"), "compute", &[]);
    let pulled = env.ok_at(&rebuilt, &["pull", "super", "compute"]);
    assert!(pulled.contains("1 revisions"), "{pulled}");
    verify(&env, &rebuilt);
}

#[test]
fn no_embedded_repos_stores_the_repository_as_files() {
    let env = Env::new();
    let master = super_and_master(&env);
    let before = stored(&env.repo());
    env.getimage(&master, "master", &[]);
    let by_reference = stored(&env.repo()) - before;
    let before = stored(&env.repo());
    let out = json(&env.getimage(&master, "files", &["--no-embedded-repos", "--json"]));
    let as_files = stored(&env.repo()) - before;
    assert_eq!(out["embedded"], serde_json::json!([]));
    eprintln!(
        "master root with its repository: {by_reference} bytes by reference, {as_files} more as plain files"
    );
    assert!(as_files > 2_000_000, "{as_files}");
    let ls = env.ok(&["ls", "files", "/var/lib/aurum"]);
    assert!(ls.contains("aurum.db") && ls.contains("public"), "{ls}");
}

#[test]
fn gc_keeps_the_packs_an_embedded_repository_references() {
    let env = Env::new();
    let master = super_and_master(&env);
    let inner = master.join("var/lib/aurum");
    // An image made on the master itself: its packs exist nowhere else.
    let local = env.path("local");
    os_tree(&local, 3);
    write_random(&local.join("data.bin"), 9, 1_000_000);
    env.getimage_at(&inner, &local, "site", &[]);
    let out = json(&env.getimage(&master, "master", &["--json"]));
    assert!(
        out["embedded"][0]["packs_added"].as_u64().unwrap() >= 1,
        "{out}"
    );
    let gc = json(&env.ok(&["gc", "--json"]));
    assert_eq!(gc["packs_deleted"], 0, "{gc}");
    verify(&env, &env.repo());
    let out_dir = env.path("out");
    env.ok(&["checkout", "master", out_dir.to_str().unwrap()]);
    verify(&env, &out_dir.join("var/lib/aurum"));
    let site = env.path("site");
    env.ok_at(
        &out_dir.join("var/lib/aurum"),
        &["checkout", "site", site.to_str().unwrap()],
    );
    assert_eq!(
        fs::read(site.join("data.bin")).unwrap(),
        fs::read(local.join("data.bin")).unwrap()
    );
    // verify checks what the record names: a manifest only the record holds, gone, is
    // damage.
    let site_id = json(&env.ok_at(&inner, &["log", "--json", "site"]))[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mf = env
        .public()
        .join(format!("manifests/{}/{site_id}.mf", &site_id[..2]));
    let aside = env.path("aside.mf");
    fs::rename(&mf, &aside).unwrap();
    env.fails(&["verify"], 3);
    let out = String::from_utf8_lossy(&env.run(&["verify"]).stdout).into_owned();
    assert!(
        out.contains(&format!("DAMAGED manifest {site_id}"))
            && out.contains("held for a repository embedded"),
        "{out}"
    );
    fs::rename(&aside, &mf).unwrap();
    verify(&env, &env.repo());
    // Once no revision records the repository, its packs go.
    env.ok(&["rmimage", "master"]);
    let gc = json(&env.ok(&["gc", "--json"]));
    assert!(gc["packs_deleted"].as_u64().unwrap() >= 1, "{gc}");
    verify(&env, &env.repo());
}

#[test]
fn a_repository_embedded_in_an_embedded_image_is_rebuilt_at_both_levels() {
    let env = Env::new();
    let master = super_and_master(&env);
    let inner = master.join("var/lib/aurum");
    // A sub-master's root with a repository of its own, captured by the master.
    let sub = env.path("sub");
    os_tree(&sub, 4);
    let sub_repo = sub.join("srv/aurum");
    env.ok_at(&sub_repo, &["init"]);
    let tiny = env.path("tiny");
    os_tree(&tiny, 5);
    env.getimage_at(&sub_repo, &tiny, "tiny", &[]);
    env.getimage_at(&inner, &sub, "submaster", &[]);
    env.getimage(&master, "master", &[]);

    let out_dir = env.path("out");
    env.ok(&["checkout", "master", out_dir.to_str().unwrap()]);
    let level1 = out_dir.join("var/lib/aurum");
    verify(&env, &level1);
    let out2 = env.path("out2");
    env.ok_at(&level1, &["checkout", "submaster", out2.to_str().unwrap()]);
    let level2 = out2.join("srv/aurum");
    verify(&env, &level2);
    assert_eq!(listing(&env, &level2), listing(&env, &sub_repo));
    let t = env.path("t");
    env.ok_at(&level2, &["checkout", "tiny", t.to_str().unwrap()]);
    assert_eq!(
        fs::read(t.join("usr/bin/tool")).unwrap(),
        fs::read(tiny.join("usr/bin/tool")).unwrap()
    );
}

#[test]
fn updateclient_over_http_rebuilds_the_repository_and_brings_it_to_the_next_revision() {
    let env = Env::new();
    let master = super_and_master(&env);
    let inner = master.join("var/lib/aurum");
    env.getimage(&master, "master", &[]);
    let srv = Server::start(&env);
    let url = format!("http://{}", srv.addr);
    let node = env.path("node");
    fs::create_dir(&node).unwrap();
    let update = |rev: &str| {
        json(&env.ok(&[
            "updateclient",
            "--server",
            &url,
            "--image",
            rev,
            "--root",
            node.to_str().unwrap(),
            "--adopt",
            "--json",
        ]))
    };
    let r = update("master@1");
    assert_eq!(r["embedded"][0]["revisions"], 2, "{r}");
    let rebuilt = node.join("var/lib/aurum");
    verify(&env, &rebuilt);
    assert_eq!(listing(&env, &rebuilt), listing(&env, &inner));

    // The master pulls a new compute revision; the super master captures it again.
    fs::write(env.path("gold/etc/motd"), "v3\n").unwrap();
    env.getimage(&env.path("gold"), "compute", &[]);
    env.ok_at(&inner, &["pull", "super", "compute"]);
    env.getimage(&master, "master", &[]);
    let r = update("master@2");
    assert_eq!(r["embedded"][0]["revisions"], 3, "{r}");
    assert!(r["embedded"][0]["packs_kept"].as_u64().unwrap() >= 1, "{r}");
    verify(&env, &rebuilt);
    assert_eq!(listing(&env, &rebuilt), listing(&env, &inner));
    // An update that leaves the record alone leaves the live repository alone.
    let r = update("master@2");
    assert_eq!(r["embedded"], serde_json::json!([]), "{r}");
}

#[test]
fn a_repository_newer_than_this_aurum_is_refused_with_what_to_do() {
    let env = Env::new();
    let master = super_and_master(&env);
    let inner = master.join("var/lib/aurum");
    fs::write(inner.join("FORMAT"), "aurum repository format 9\n").unwrap();
    let e = env.fails(
        &[
            "getimage",
            "--golden-client",
            master.to_str().unwrap(),
            "--image",
            "m",
        ],
        2,
    );
    assert!(
        e.contains("newer aurum")
            && e.contains("upgrade aurum")
            && e.contains("--no-embedded-repos"),
        "{e}"
    );
    let out = env
        .bare(&["--repo", inner.to_str().unwrap(), "lsimage"])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("newer aurum"), "{e}");
    // Captured as files, it is just files.
    env.getimage(&master, "m", &["--no-embedded-repos"]);
}

#[test]
fn pulling_a_master_image_brings_the_packs_and_manifests_of_its_repository() {
    let env = Env::new();
    let master = super_and_master(&env);
    let inner = master.join("var/lib/aurum");
    // A pack only the master's repository has, taken in at capture.
    let local = env.path("local");
    os_tree(&local, 6);
    env.getimage_at(&inner, &local, "site", &[]);
    env.getimage(&master, "master", &[]);
    // Another site pulls only the master image: the compute revisions its repository
    // holds come along as packs and manifests, not as revisions of that site.
    let other = env.path("other");
    env.ok_at(&other, &["init"]);
    env.ok_at(
        &other,
        &["pull", "--mirror", env.repo().to_str().unwrap(), "master"],
    );
    verify(&env, &other);
    let images = env.ok_at(&other, &["lsimage"]);
    assert!(
        images.contains("master") && !images.contains("compute"),
        "{images}"
    );
    let out_dir = env.path("out");
    env.ok_at(&other, &["checkout", "master", out_dir.to_str().unwrap()]);
    let rebuilt = out_dir.join("var/lib/aurum");
    verify(&env, &rebuilt);
    assert_eq!(listing(&env, &rebuilt), listing(&env, &inner));
    // gc there keeps them too.
    env.ok_at(&other, &["gc"]);
    let again = env.path("again");
    env.ok_at(&other, &["checkout", "master", again.to_str().unwrap()]);
    verify(&env, &again.join("var/lib/aurum"));
}

#[test]
fn a_pack_index_that_does_not_fit_its_pack_is_refused_by_the_rebuild() {
    let env = Env::new();
    let master = super_and_master(&env);
    // The packs of `compute`, which the master's repository pulled: the record names them.
    let idx = |repo: &Path| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(repo.join("public/packs"))
            .unwrap()
            .map(|d| d.unwrap().path())
            .filter(|d| d.is_dir())
            .flat_map(|d| fs::read_dir(d).unwrap())
            .map(|f| f.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "idx"))
            .collect();
        v.sort();
        v
    };
    let compute = idx(&env.repo());
    assert!(compute.len() >= 2, "{compute:?}");
    env.getimage(&master, "master", &[]);
    // One pack's index replaced by another's: a sound index (its checksum is right) that
    // places the blobs in the wrong pack.
    fs::copy(&compute[1], &compute[0]).unwrap();
    let out_dir = env.path("out");
    let e = env.fails(&["checkout", "master", out_dir.to_str().unwrap()], 3);
    assert!(
        e.contains("does not fit pack") && e.contains("aurum verify --repair"),
        "{e}"
    );
}

/// Issue #16: a node whose image embeds a repository goes forward and rolls back: the
/// rollback (from its undo area, and with `--to`) gives back the repository the earlier
/// revision recorded, exactly (the same images, revisions, ids and tags), from the server, and
/// `verify` passes inside it. Without a server it is refused, the node left as it was (it
/// used to say it ran the earlier revision with the later one's repository in it).
#[test]
fn rollback_restores_the_repository_the_earlier_revision_embeds() {
    let env = Env::new();
    let master = super_and_master(&env);
    let inner = master.join("var/lib/aurum");
    env.getimage(&master, "master", &[]);
    let at_1 = listing(&env, &inner);
    fs::write(env.path("gold/etc/motd"), "v3\n").unwrap();
    env.getimage(&env.path("gold"), "compute", &[]);
    env.ok_at(&inner, &["pull", "super", "compute"]);
    env.ok_at(&inner, &["tag", "super/compute@3", "newest"]);
    env.getimage(&master, "master", &[]);
    let at_2 = listing(&env, &inner);
    assert_ne!(at_1, at_2);

    let srv = Server::start(&env);
    let node = env.empty_dir("node");
    let rebuilt = node.join("var/lib/aurum");
    let n = node.to_str().unwrap();
    let run = |args: &[&str]| {
        let started = Instant::now();
        let out = json(&env.ok(args));
        (out, started.elapsed().as_secs_f64())
    };
    let update = |rev: &str| {
        run(&[
            "updateclient",
            "--server",
            &srv.url,
            "--image",
            rev,
            "--root",
            n,
            "--adopt",
            "--json",
        ])
    };
    update("master@1");
    assert_eq!(listing(&env, &rebuilt), at_1);
    update("master@2");
    assert_eq!(listing(&env, &rebuilt), at_2);

    // Back from the undo area with no server: the repository cannot be rebuilt from there,
    // so the rollback is refused and changes nothing.
    let out = env
        .bare(&["rollback", "--root", n, "--json"])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{e}");
    assert!(
        e.contains("master@1")
            && e.contains("/var/lib/aurum")
            && e.contains("--server")
            && e.contains("nothing on this node was changed"),
        "{e}"
    );
    assert_eq!(listing(&env, &rebuilt), at_2);
    let status = json(&env.ok(&["node-status", "--root", n, "--json"]));
    assert_eq!(status["state"]["current"]["number"], 2, "{status}");
    // With the server, the same rollback rebuilds it.
    let (r, secs) = run(&["rollback", "--root", n, "--server", &srv.url, "--json"]);
    eprintln!(
        "rollback to master@1 from the undo area, the repository from the server: {secs:.2} s"
    );
    assert_eq!(r["embedded"][0]["revisions"], 2, "{r}");
    verify(&env, &rebuilt);
    assert_eq!(listing(&env, &rebuilt), at_1);
    let t = env.path("t");
    env.ok_at(
        &rebuilt,
        &["checkout", "super/compute@2", t.to_str().unwrap()],
    );
    assert_eq!(
        fs::read(t.join("opt/app.bin")).unwrap(),
        fs::read(env.path("gold/opt/app.bin")).unwrap()
    );

    // Forward again, then back by name through the server.
    update("master@2");
    assert_eq!(listing(&env, &rebuilt), at_2);
    let (r, secs) = run(&[
        "rollback", "--root", n, "--to", "master@1", "--server", &srv.url, "--json",
    ]);
    eprintln!("rollback --to master@1 over http: {secs:.2} s");
    assert_eq!(r["embedded"][0]["revisions"], 2, "{r}");
    verify(&env, &rebuilt);
    assert_eq!(listing(&env, &rebuilt), at_1);
}

/// Issue #16: a master's root captured over ssh (`getimage --golden-client ssh://…`). Only a
/// local capture records its repository by reference (book: "Building the next cluster",
/// limits); over ssh the repository goes in as plain files, and the capture says so by a
/// warning naming it and what to do, unless --no-embedded-repos says plain files are meant.
#[test]
fn a_remote_capture_of_a_master_says_its_repository_went_in_as_files() {
    if !crate::remote::ready() {
        return;
    }
    let env = Env::new();
    let master = super_and_master(&env);
    let sshd = crate::remote::Sshd::start();
    let capture = |image: &str, extra: &[&str]| {
        let started = Instant::now();
        let url = sshd.url(&master);
        let ssh = sshd.ssh_command();
        let mut args = vec![
            "getimage",
            "--golden-client",
            &url,
            "--image",
            image,
            "--ssh",
            &ssh,
            "--agent-command",
            env!("CARGO_BIN_EXE_aurum"),
            "--json",
        ];
        args.extend_from_slice(extra);
        let out = json(&env.ok(&args));
        eprintln!(
            "remote capture of the master root: {:.2} s",
            started.elapsed().as_secs_f64()
        );
        out
    };
    let out = capture("master", &[]);
    assert_eq!(out["embedded"], serde_json::json!([]), "{out}");
    let warned: Vec<&str> = out["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w.as_str())
        .filter(|w| w.contains("aurum repository"))
        .collect();
    assert_eq!(warned.len(), 1, "{out}");
    assert!(
        warned[0].starts_with("/var/lib/aurum: ")
            && warned[0].contains("plain files")
            && warned[0].contains("--no-embedded-repos"),
        "{out}"
    );
    let ls = env.ok(&["ls", "master", "/var/lib/aurum"]);
    assert!(ls.contains("aurum.db") && ls.contains("public"), "{ls}");
    // The files are a copy of the idle repository: checked out, it works.
    let out_dir = env.path("out");
    env.ok(&["checkout", "master", out_dir.to_str().unwrap()]);
    let copy = out_dir.join("var/lib/aurum");
    verify(&env, &copy);
    assert_eq!(
        listing(&env, &copy),
        listing(&env, &master.join("var/lib/aurum"))
    );

    let out = capture("files", &["--no-embedded-repos"]);
    assert!(
        !out["warnings"].to_string().contains("aurum repository"),
        "{out}"
    );
}
