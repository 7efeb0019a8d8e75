//! Replicating repositories (issue #16 items 1, 2 and 4's format check): `aurum pull` from a
//! directory, from `aurum serve`, from nginx serving `public/` and over ssh; `aurum push` to a
//! directory and over ssh; remotes and their last error; what a second pull and a killed pull
//! move; and the refusals (a damaged pack, a diverged image, a tag moving back, a newer format).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use crate::common::{is_root, json, need, skip, write_random, Env};
use crate::published::Nginx;
use crate::remote::{ready, Sshd};
use crate::serve::Server;

/// A golden tree of `files` incompressible files of `size` bytes, plus a small text file.
fn golden(dir: &Path, seed: u64, files: usize, size: usize) {
    for i in 0..files {
        write_random(
            &dir.join(format!("data/f{i}")),
            seed * 1000 + i as u64,
            size,
        );
    }
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    std::fs::write(dir.join("etc/motd"), format!("tree {seed}\n")).unwrap();
}

/// A source repository with `compute` (2 revisions, tags prod=@1 and latest=@2) and `login`.
fn source(env: &Env) {
    let g = env.path("gold");
    golden(&g, 1, 6, 300_000);
    env.getimage(&g, "compute", &["-q"]);
    write_random(&g.join("data/new"), 77, 200_000);
    env.getimage(&g, "compute", &["-q"]);
    env.ok(&["tag", "compute@1", "prod"]);
    env.ok(&["tag", "compute@2", "latest"]);
    let l = env.path("login");
    golden(&l, 2, 2, 100_000);
    env.getimage(&l, "login", &["-q"]);
    // A class with two versions.
    env.ok(&["template", "new", "gpu"]);
    let text = std::fs::read_to_string(env.public().join("templates/gpu.toml")).unwrap();
    let file = env.path("gpu.toml");
    std::fs::write(&file, format!("{text}# second version\n")).unwrap();
    env.ok(&["template", "import", s(&file)]);
}

/// An image's revisions as `log --json` gives them, without the image's name.
fn revisions(env: &Env, image: &str) -> Vec<serde_json::Value> {
    let mut revs = json(&env.ok(&["log", image, "--json"]))
        .as_array()
        .expect("log --json is an array")
        .clone();
    for r in &mut revs {
        r.as_object_mut().unwrap().remove("image");
    }
    revs
}

/// Every image of `from` is in `to` (as PREFIX + name) with the same revisions (numbers,
/// ids, parents, dates, messages, sizes) and tags; `to` verifies.
fn same_images(from: &Env, to: &Env, prefix: &str) {
    for image in ["compute", "login"] {
        assert_eq!(
            revisions(from, image),
            revisions(to, &format!("{prefix}{image}")),
            "{image} after the pull"
        );
    }
    to.ok(&["verify"]);
}

/// A pull's JSON summary.
fn pull(env: &Env, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["pull", "--json"];
    all.extend_from_slice(args);
    json(&env.ok(&all))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn pull_from_a_directory_keeps_everything_and_moves_only_what_is_new() {
    let a = Env::new();
    source(&a);
    let b = Env::new();
    b.ok(&["remote", "add", "sup", s(&a.repo())]);
    let r = pull(&b, &["sup"]);
    assert_eq!(r["revisions"], 3, "{r}");
    assert_eq!(r["tags"], 2, "{r}");
    same_images(&a, &b, "sup/");
    let full = r["bytes"].as_u64().unwrap();
    // Templates come with their history.
    assert_eq!(r["templates"], 2, "{r}");
    assert!(b
        .ok(&["template", "show", "gpu"])
        .contains("# second version"));
    assert!(!b
        .ok(&["template", "show", "gpu@1"])
        .contains("# second version"));

    // Pulled images are read-only here, and named like that in refs/.
    let e = b.fails(
        &[
            "getimage",
            "--golden-client",
            s(&a.path("gold")),
            "--image",
            "sup/compute",
        ],
        2,
    );
    assert!(e.contains("cpimage"), "{e}");
    assert!(b.public().join("refs/sup/compute/tags/prod").is_file());
    assert!(std::fs::read_to_string(b.public().join("refs/IMAGES"))
        .unwrap()
        .contains("sup/compute "));
    // A remote cannot take an image's name, nor an image a remote's.
    b.ok(&["cpimage", "sup/compute", "mine"]);
    let e = b.fails(&["remote", "add", "mine", s(&a.repo())], 2);
    assert!(e.contains("image called `mine`"), "{e}");

    // A second pull after one new revision moves about that revision's new objects.
    write_random(&a.path("gold/data/f0"), 999, 300_000);
    a.getimage(&a.path("gold"), "compute", &["-q"]);
    let new_bytes = revisions(&a, "compute")[0]["new_bytes"].as_u64().unwrap();
    let r = pull(&b, &["sup"]);
    let moved = r["bytes"].as_u64().unwrap();
    eprintln!(
        "full pull {full} B; second pull after one revision storing {new_bytes} B: {moved} B"
    );
    assert_eq!(r["revisions"], 1, "{r}");
    // The deltas the source precomputed for the changed file came along.
    assert!(r["deltas"].as_u64().unwrap() > 0, "{r}");
    assert!(
        moved as f64 <= 1.1 * new_bytes as f64 + 256.0 * 1024.0,
        "second pull moved {moved} B for a revision of {new_bytes} new bytes"
    );
    same_images(&a, &b, "sup/");
    // With nothing new, no image's log is fetched (refs/IMAGES names each log's hash).
    let r = pull(&b, &["sup"]);
    let idle = r["bytes"].as_u64().unwrap();
    eprintln!("a pull with nothing new: {idle} B");
    assert!(idle < 64 << 10, "a pull with nothing new moved {idle} B");
    let remotes = json(&b.ok(&["remote", "list", "--json"]));
    assert_eq!(remotes[0]["lag"], 0, "{remotes}");
    assert!(remotes[0]["last_success"].is_i64(), "{remotes}");
    assert!(
        remotes[0]["since_success"].as_i64().unwrap() < 60,
        "{remotes}"
    );

    // A tag moving back is refused without --force.
    a.ok(&["tag", "compute@1", "latest"]);
    let e = b.fails(&["pull", "sup"], 2);
    assert!(e.contains("would move back"), "{e}");
    b.ok(&["pull", "sup", "--force"]);
    same_images(&a, &b, "sup/");

    // remove keeps the images unless --prune.
    b.ok(&["remote", "remove", "sup"]);
    assert!(!revisions(&b, "sup/compute").is_empty());
    b.ok(&["remote", "add", "sup", s(&a.repo())]);
    b.ok(&["remote", "remove", "sup", "--prune"]);
    assert!(b.run(&["log", "sup/compute"]).status.code() == Some(2));
    b.ok(&["verify"]);
}

#[test]
fn a_diverged_image_and_a_damaged_pack_are_refused_with_nothing_recorded() {
    let a = Env::new();
    source(&a);
    // A mirror of a, then each captures its own compute@3.
    let c = Env::new();
    pull(&c, &["--mirror", s(&a.public())]);
    same_images(&a, &c, "");
    let g = c.path("other");
    golden(&g, 5, 1, 1000);
    c.getimage(&g, "compute", &["-q"]);
    write_random(&a.path("gold/data/f1"), 4242, 1000);
    a.getimage(&a.path("gold"), "compute", &["-q"]);
    let theirs = revisions(&a, "compute")[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mine = revisions(&c, "compute")[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let e = c.fails(&["pull", "--mirror", s(&a.repo())], 2);
    assert!(
        e.contains("diverged") && e.contains(&theirs) && e.contains(&mine) && e.contains("compute"),
        "{e}"
    );
    assert_eq!(revisions(&c, "compute")[0]["id"], mine.as_str());

    // One byte of a pack changed on the source: refused, nothing registered.
    let d = Env::new();
    let pack = walk_packs(&a.public());
    let mut bytes = std::fs::read(&pack).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&pack, &bytes).unwrap();
    let e = d.fails(&["pull", "--mirror", s(&a.repo())], 3);
    assert!(
        e.contains("damaged") && e.contains("nothing was registered"),
        "{e}"
    );
    assert!(d.ok(&["lsimage"]).contains("no images"));
    let v = json(&d.ok(&["verify", "--json"]));
    assert_eq!(v["packs"], 0, "{v}");
    assert!(
        walk_packs_opt(&d.public()).is_none(),
        "a pack was registered"
    );
}

/// The largest pack file under `public`.
fn walk_packs(public: &Path) -> std::path::PathBuf {
    walk_packs_opt(public).expect("a pack")
}

fn walk_packs_opt(public: &Path) -> Option<std::path::PathBuf> {
    let mut best: Option<(u64, std::path::PathBuf)> = None;
    for sub in std::fs::read_dir(public.join("packs")).ok()?.flatten() {
        let Ok(files) = std::fs::read_dir(sub.path()) else {
            continue;
        };
        for f in files.flatten() {
            let p = f.path();
            let len = f.metadata().unwrap().len();
            if p.extension().is_some_and(|e| e == "pack") && best.as_ref().is_none_or(|b| b.0 < len)
            {
                best = Some((len, p));
            }
        }
    }
    best.map(|b| b.1)
}

#[test]
fn pull_from_serve_and_a_failed_pull_is_shown_by_remote_list() {
    let a = Env::new();
    source(&a);
    let srv = Server::start(&a);
    let b = Env::new();
    b.ok(&[
        "remote",
        "add",
        "web",
        &format!("http://{}", srv.addr),
        "--mirror",
    ]);
    pull(&b, &["web"]);
    same_images(&a, &b, "");
    drop(srv);
    // The source is down: the pull fails, and remote list says so.
    b.fails(&["pull", "web", "--http-tries", "1"], 1);
    let remotes = json(&b.ok(&["remote", "list", "--json"]));
    let err = remotes[0]["last_error"].as_str().unwrap_or_default();
    assert!(err.contains("no usable answer"), "{remotes}");
    assert!(remotes[0]["last_error_time"].is_i64(), "{remotes}");
    assert!(remotes[0]["last_success"].is_i64(), "{remotes}");
    assert!(b.ok(&["remote", "list"]).contains("last error"));
}

#[test]
fn a_repository_made_by_a_newer_aurum_is_refused() {
    let a = Env::new();
    std::fs::write(a.repo().join("FORMAT"), "aurum repository format 9\n").unwrap();
    let e = a.fails(&["lsimage"], 2);
    assert!(
        e.contains("made by a newer aurum (format 9, this aurum reads up to 2): upgrade aurum"),
        "{e}"
    );
    std::fs::write(a.public().join("FORMAT"), "aurum repository format 9\n").unwrap();
    let b = Env::new();
    let e = b.fails(&["pull", "--mirror", s(&a.public())], 2);
    assert!(e.contains("newer aurum"), "{e}");
}

/// Bytes nginx sent, from its access log (combined format: the field after the status).
fn nginx_bytes(env: &Env) -> u64 {
    std::fs::read_to_string(env.path("nginx/access.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split('"').nth(2))
        .filter_map(|rest| rest.split_whitespace().nth(1))
        .filter_map(|n| n.parse::<u64>().ok())
        .sum()
}

/// nginx (as www-data, configured as the book says) serving the source's public/; a pull
/// killed at several points finishes on its re-run, moving at most 1.3x a full pull.
#[test]
fn pull_from_nginx_survives_kills() {
    if !is_root() {
        return skip("needs root (nginx's workers switch to www-data)");
    }
    if !need("nginx") {
        return;
    }
    let a = Env::new();
    std::fs::set_permissions(a.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let g = a.path("gold");
    golden(&g, 3, 48, 1 << 20);
    a.getimage(&g, "compute", &["-q"]);
    let nginx = Nginx::start(&a);
    let url = format!("http://{}", nginx.addr);

    let b = Env::new();
    let before = nginx_bytes(&a);
    let started = Instant::now();
    pull(&b, &["--mirror", &url]);
    let took = started.elapsed();
    let full = nginx_bytes(&a) - before;
    assert_eq!(revisions(&a, "compute"), revisions(&b, "compute"));
    b.ok(&["verify"]);

    let c = Env::new();
    let before = nginx_bytes(&a);
    // Kill points that differ from run to run (the seed is printed): three runs are killed
    // once the pack being fetched has grown past a random size, three after a random time
    // (most land after the fetch: checking, registering, recording).
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    eprintln!("kill points seeded with {seed}");
    let mut x = u64::from(seed) | 1;
    let mut random = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let staged = |env: &Env| -> u64 {
        let mut n = 0;
        for d in std::fs::read_dir(env.repo().join("tmp")).unwrap().flatten() {
            if let Ok(packs) = std::fs::read_dir(d.path().join("packs")) {
                n += packs
                    .flatten()
                    .map(|f| f.metadata().unwrap().len())
                    .sum::<u64>();
            }
        }
        n
    };
    let mut kills = 0;
    for run in 0..6 {
        let mut child = c
            .cmd(&["pull", "--mirror", &url])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        let (grown, after) = if run < 3 {
            (full * (run + 1) / 4 + random(full / 5), took * 3)
        } else {
            (u64::MAX, took * (20 + random(80) as u32) / 100)
        };
        while child.try_wait().unwrap().is_none() && t0.elapsed() < after && staged(&c) < grown {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        child.wait().unwrap();
    }
    let last = pull(&c, &["--mirror", &url]);
    let total = nginx_bytes(&a) - before;
    eprintln!(
        "full pull from nginx: {full} B in {:.2} s; with {kills} kills: {total} B ({:.2}x); the last run found {} B of packs fetched before",
        took.as_secs_f64(),
        total as f64 / full as f64,
        last["resumed_bytes"]
    );
    assert!(
        kills >= 3,
        "only {kills} pulls were killed before they ended"
    );
    assert!(
        total as f64 <= 1.3 * full as f64,
        "killed pulls moved {total} B against {full} B for one full pull"
    );
    assert_eq!(revisions(&a, "compute"), revisions(&c, "compute"));
    c.ok(&["verify"]);
}

/// Over ssh: a pull reads with cat and tail; a push copies what the destination lacks and
/// runs aurum pull there; a push to a directory is a pull there.
#[test]
fn pull_and_push_over_ssh_and_to_a_directory() {
    if !ready() {
        return;
    }
    let sshd = Sshd::start();
    let ssh = sshd.ssh_command();
    let a = Env::new();
    source(&a);
    let b = Env::new();
    let url = sshd.url(&a.repo());
    let half = stage_half(&b, &a, &url, false);
    let r = pull(&b, &["--mirror", "--ssh", &ssh, &url]);
    assert_eq!(r["revisions"], 3, "{r}");
    // The rest of a half-fetched pack came with `tail -c +N`.
    assert_eq!(r["resumed_bytes"].as_u64().unwrap(), half, "{r}");
    same_images(&a, &b, "");

    // Push to a directory.
    let d = Env::new();
    let out = a.ok(&["push", s(&d.repo()), "--json"]);
    assert_eq!(json(&out)["revisions"], 3, "{out}");
    same_images(&a, &d, "");

    // Push over ssh: once everything, then one new revision.
    let e = Env::new();
    let aurum = env!("CARGO_BIN_EXE_aurum");
    let dest = sshd.url(&e.repo());
    let push = |extra: &[&str]| {
        let mut args = vec![
            "push",
            "--json",
            "--ssh",
            &ssh,
            "--aurum-command",
            aurum,
            &dest,
        ];
        args.extend_from_slice(extra);
        json(&a.ok(&args))
    };
    let r = push(&[]);
    assert_eq!(r["revisions"], 3, "{r}");
    same_images(&a, &e, "");
    // Signatures go along, those made after a revision was pushed or pulled too (issue 20).
    let key = a.path("admin.key");
    a.ok(&["key", "generate", s(&key)]);
    a.ok(&["sign", "compute@1", "--sign-key", s(&key)]);
    let r = push(&[]);
    assert_eq!(r["signatures"], 1, "{r}");
    let sig = |env: &Env| std::fs::read(env.public().join("sigs/compute/1")).unwrap();
    assert_eq!(sig(&a), sig(&e));
    let r = pull(&b, &["--mirror", "--ssh", &ssh, &url]);
    assert_eq!(r["signatures"], 1, "{r}");
    assert_eq!(sig(&a), sig(&b));
    write_random(&a.path("gold/data/f2"), 31337, 300_000);
    a.getimage(&a.path("gold"), "compute", &["-q"]);
    let r = push(&[]);
    assert_eq!(r["revisions"], 1, "{r}");
    assert!(r["deltas"].as_u64().unwrap() > 0, "{r}");
    let new_bytes = revisions(&a, "compute")[0]["new_bytes"].as_u64().unwrap();
    eprintln!(
        "push over ssh of one revision storing {new_bytes} B sent {} B",
        r["bytes"]
    );
    same_images(&a, &e, "");
    // A tag moving back at the destination is refused without --force.
    a.ok(&["tag", "compute@1", "latest"]);
    let out = a.run(&["push", "--ssh", &ssh, "--aurum-command", aurum, &dest]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("would move back"));
    push(&["--force"]);
    same_images(&a, &e, "");
    // Without aurum there, the error says so.
    let out = a.run(&[
        "push",
        "--ssh",
        &ssh,
        "--aurum-command",
        "/nonexistent/aurum",
        &dest,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("not installed there"),
        "{err}"
    );
}

/// A repository made before the files for pullers existed gets them at its next open; a
/// static copy of one (no aurum to add them) is refused with what to do.
#[test]
fn an_older_repository_gets_the_files_pullers_read() {
    let a = Env::new();
    source(&a);
    let strip = |env: &Env| {
        let db = rusqlite::Connection::open(env.repo().join("aurum.db")).unwrap();
        db.execute("DELETE FROM meta WHERE key = 'pull-files'", [])
            .unwrap();
        let p = env.public();
        for f in [
            "refs/IMAGES",
            "refs/compute/log",
            "refs/login/log",
            "templates/log",
        ] {
            std::fs::remove_file(p.join(f)).unwrap();
        }
        let _ = std::fs::remove_file(p.join("deltas/list"));
    };
    strip(&a);
    let copy = a.path("copy");
    crate::common::sh(&format!(
        "cp -a {} {}",
        a.public().display(),
        copy.display()
    ));
    let b = Env::new();
    let e = b.fails(&["pull", "--mirror", s(&copy)], 2);
    assert!(
        e.contains("older aurum") && e.contains("refs/IMAGES"),
        "{e}"
    );
    // Any command opening the repository publishes them.
    a.ok(&["lsimage"]);
    for f in [
        "refs/IMAGES",
        "refs/compute/log",
        "refs/login/log",
        "templates/log",
    ] {
        assert!(a.public().join(f).is_file(), "{f} was not published");
    }
    a.ok(&["verify"]);
    pull(&b, &["--mirror", s(&a.repo())]);
    same_images(&a, &b, "");
    // verify names a log that disagrees with the catalog.
    std::fs::write(
        a.public().join("refs/login/log"),
        "{\"kind\":\"log\",\"version\":1}\n",
    )
    .unwrap();
    let v = a.fails(&["verify"], 3);
    let out = String::from_utf8_lossy(&a.run(&["verify"]).stdout).into_owned();
    assert!(
        out.contains("refs/login/log") || v.contains("refs/login/log"),
        "{out}{v}"
    );
}

/// Stages what a killed pull from `url` into `env` would have left: the first half of the
/// source's largest pack (or, with `garbage`, as many wrong bytes) and a damaged manifest
/// of its newest compute revision. Returns the bytes staged.
fn stage_half(env: &Env, source: &Env, url: &str, garbage: bool) -> u64 {
    let key = format!("url-{}", &blake3::hash(url.as_bytes()).to_hex()[..16]);
    let stage = env.repo().join("tmp").join(format!("pull-{key}"));
    let pack = walk_packs(&source.public());
    let bytes = std::fs::read(&pack).unwrap();
    let half = &bytes[..bytes.len() / 2];
    let part = stage.join("packs").join(format!(
        "{}.part",
        pack.file_name().unwrap().to_str().unwrap()
    ));
    std::fs::create_dir_all(part.parent().unwrap()).unwrap();
    let staged: Vec<u8> = if garbage {
        half.iter().map(|b| b ^ 0xff).collect()
    } else {
        half.to_vec()
    };
    std::fs::write(&part, &staged).unwrap();
    let newest = revisions(source, "compute")[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::create_dir_all(stage.join("manifests")).unwrap();
    std::fs::write(
        stage.join(format!("manifests/{newest}.mf")),
        b"not a manifest",
    )
    .unwrap();
    half.len() as u64
}

/// A pull finds what a killed one staged, checks it again, and goes on from there: a good
/// half pack is completed, a damaged one and a damaged manifest fetched again.
#[test]
fn a_rerun_checks_what_a_killed_pull_staged() {
    let a = Env::new();
    source(&a);
    for garbage in [false, true] {
        let b = Env::new();
        let url = s(&a.repo()).to_string();
        let half = stage_half(&b, &a, &url, garbage);
        let r = pull(&b, &["--mirror", &url]);
        assert_eq!(r["resumed_bytes"].as_u64().unwrap(), half, "{r}");
        same_images(&a, &b, "");
        assert!(
            std::fs::read_dir(b.repo().join("tmp"))
                .unwrap()
                .flatten()
                .all(|e| !e.file_name().to_string_lossy().starts_with("pull-")),
            "the staging directory is left after a pull that finished"
        );
    }
}
