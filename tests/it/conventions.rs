//! Conventions every command keeps (issue #15, item 3): shell completions and man pages made
//! from the command definitions, `--quiet` everywhere, `--json` on every command that changes
//! something (naming what it made), `--dry-run` on every destructive one (changing no byte),
//! and one spelling per flag with the old one kept as a hidden alias.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{can_run, is_root, json, need, sh, Env};

/// Every command path (`["node", "add"]`) that `aurum --help` and its subcommands' list.
fn commands(env: &Env, path: &[String], out: &mut Vec<Vec<String>>) {
    let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
    args.push("--help");
    let help = env.ok(&args);
    let mut in_commands = false;
    for line in help.lines() {
        if line.starts_with("Commands:") {
            in_commands = true;
            continue;
        }
        if in_commands && !line.starts_with("  ") {
            in_commands = false;
        }
        if !in_commands {
            continue;
        }
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        if name == "help" || line.starts_with("    ") {
            continue;
        }
        let mut sub = path.to_vec();
        sub.push(name.to_string());
        out.push(sub.clone());
        commands(env, &sub, out);
    }
}

fn all_commands(env: &Env) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    commands(env, &[], &mut out);
    assert!(out.len() > 40, "too few commands found: {out:?}");
    out
}

#[test]
fn completions_load_in_every_shell_and_complete_commands_and_flags() {
    let env = Env::new();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = env.ok(&["completions", shell]);
        assert!(script.contains("getimage"), "{shell}: {script}");
        assert!(script.contains("tftp-root"), "{shell}: no --tftp-root");
    }
    let dir = env.path("completions");
    for (shell, file) in [
        ("bash", "aurum.bash"),
        ("zsh", "_aurum"),
        ("fish", "aurum.fish"),
    ] {
        let printed = env.ok(&["completions", shell, "--dir", dir.to_str().unwrap()]);
        assert_eq!(printed.trim(), dir.join(file).display().to_string());
    }
    // The acceptance check of issue #15, as written there.
    sh(&format!(
        "{} completions bash | bash -n",
        env!("CARGO_BIN_EXE_aurum")
    ));
    let bash = dir.join("aurum.bash");
    sh(&format!("bash -n {}", bash.display()));
    // Loaded into a bash, it completes a command name and a subcommand's flag.
    let complete = |words: &str| {
        sh(&format!(
            "source {}; COMP_WORDS=({words}); COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 )); \
             _aurum aurum \"${{COMP_WORDS[-1]}}\" \"${{COMP_WORDS[-2]}}\"; echo \"${{COMPREPLY[@]}}\"",
            bash.display()
        ))
    };
    assert!(complete("aurum getim").contains("getimage"));
    assert!(complete("aurum pxe tftp --tftp").contains("--tftp-root"));
    assert!(complete("aurum rmimage --dry").contains("--dry-run"));
    if need("zsh") {
        sh(&format!("zsh -n {}", dir.join("_aurum").display()));
    }
    if need("fish") {
        sh(&format!(
            "fish --no-execute {}",
            dir.join("aurum.fish").display()
        ));
    }
}

#[test]
fn man_pages_exist_for_every_command_and_render() {
    let env = Env::new();
    let dir = env.path("man");
    let pages = json(&env.ok(&["man", dir.to_str().unwrap(), "--json"]));
    let pages: Vec<PathBuf> = pages["pages"]
        .as_array()
        .expect("pages")
        .iter()
        .map(|p| PathBuf::from(p.as_str().unwrap()))
        .collect();
    let mut want = vec![dir.join("aurum.1")];
    for c in all_commands(&env) {
        want.push(dir.join(format!("aurum-{}.1", c.join("-"))));
    }
    for w in &want {
        assert!(pages.contains(w), "no page {} in {pages:?}", w.display());
    }
    assert_eq!(pages.len(), want.len(), "{pages:?}");
    if !need("man") {
        return;
    }
    for p in &pages {
        let out = Command::new("man")
            .arg("-l")
            .arg(p)
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "100")
            .output()
            .expect("run man");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "man -l {}: {}",
            p.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("NAME") && text.contains("SYNOPSIS"),
            "{}: {text}",
            p.display()
        );
    }
    // The page of a command carries its --help text.
    let rm = sh(&format!(
        "MANPAGER=cat MANWIDTH=100 man -l {}",
        dir.join("aurum-rmimage.1").display()
    ));
    assert!(rm.contains("dry-run") && rm.contains("si_rmimage"), "{rm}");
}

#[test]
fn quiet_and_no_progress_are_taken_by_every_command() {
    let env = Env::new();
    for c in all_commands(&env) {
        let mut args: Vec<&str> = c.iter().map(String::as_str).collect();
        args.push("--help");
        let help = env.ok(&args);
        for flag in ["--quiet", "--no-progress", "--repo <DIR>"] {
            assert!(help.contains(flag), "aurum {} lacks {flag}", c.join(" "));
        }
    }
}

/// Every file under `dir` with its bytes (directories as empty entries).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                out.insert(p.clone(), Vec::new());
                stack.push(p);
            } else if meta.is_file() {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// A repository with images `compute` (2 revisions, tagged) and `login`, and one node.
fn populated(env: &Env) {
    let tree = env.path("tree");
    sh(&format!(
        "mkdir -p {t}/etc && echo one > {t}/etc/a && echo x > {t}/etc/b",
        t = tree.display()
    ));
    env.getimage(&tree, "compute", &[]);
    sh(&format!("echo two > {}/etc/a", tree.display()));
    env.getimage(&tree, "compute", &[]);
    env.getimage(&tree, "login", &[]);
    env.ok(&["tag", "compute@1", "production"]);
    env.ok(&[
        "node",
        "add",
        "n1",
        "--mac",
        "52:54:00:00:00:01",
        "--image",
        "compute",
    ]);
}

/// --dry-run says what would happen and changes no byte of the repository.
#[test]
fn dry_runs_change_no_byte_of_the_repository() {
    let env = Env::new();
    populated(&env);
    let before = snapshot(&env.repo());
    let cases: &[(&[&str], &str)] = &[
        (
            &["rmimage", "compute", "--force", "--dry-run"],
            "would remove image compute (2 revisions and its tags production)",
        ),
        (
            &["rmimage", "login", "-n"],
            "would remove image login (1 revisions)",
        ),
        (
            &["tag", "--delete", "compute:production", "--dry-run"],
            "would be deleted compute:production (it named compute@1",
        ),
        (
            &["tag", "compute@2", "production", "-n"],
            "would tag compute:production -> compute@2",
        ),
        (
            &["mvimage", "login", "head", "--dry-run"],
            "would rename login to head",
        ),
        (&["node", "rm", "n1", "--dry-run"], "would remove node n1"),
        (&["gc", "--dry-run"], "(dry run)"),
    ];
    for (args, says) in cases {
        let out = env.ok(args);
        assert!(out.contains(says), "aurum {args:?} printed:\n{out}");
        assert!(
            snapshot(&env.repo()) == before,
            "aurum {args:?} changed the repository"
        );
    }
    // JSON says it was a dry run, and the checks of the real command are made.
    let v = json(&env.ok(&["rmimage", "compute", "--force", "-n", "--json"]));
    assert_eq!(v["dry_run"], true);
    assert_eq!(v["revisions"], serde_json::json!([2, 1]));
    let err = env.fails(&["rmimage", "compute", "--dry-run"], 2);
    assert!(err.contains("has tags compute:production"), "{err}");
    env.fails(&["tag", "-d", "compute:nosuch", "-n"], 2);
    env.fails(&["node", "rm", "n1", "nosuch", "-n"], 2);
    assert!(
        snapshot(&env.repo()) == before,
        "a refused dry run changed the repository"
    );
    // The real commands do change it.
    env.ok(&["node", "rm", "n1"]);
    assert!(snapshot(&env.repo()) != before);
}

/// `rollback --dry-run` prints the plan and leaves the node's files and state as they were.
#[test]
fn rollback_dry_run_changes_nothing_on_the_node() {
    let env = Env::new();
    populated(&env);
    let node = env.path("node");
    std::fs::create_dir(&node).unwrap();
    let root = node.to_str().unwrap();
    env.ok(&["updateclient", "--image", "compute@1", "--root", root]);
    env.ok(&["updateclient", "--image", "compute@2", "--root", root]);
    let before = snapshot(&node);
    let out = env.run(&["rollback", "--root", root, "--dry-run"]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("/etc/a") && stdout.contains("compute@2"),
        "{stdout}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing was changed"));
    assert!(
        snapshot(&node) == before,
        "rollback --dry-run changed the node"
    );
    let v = json(&env.ok(&["rollback", "--root", root, "-n", "--json"]));
    assert_eq!(v["to"]["number"], 1, "{v}");
    assert!(snapshot(&node) == before);
    env.ok(&["rollback", "--root", root]);
    assert_eq!(
        std::fs::read_to_string(node.join("etc/a")).unwrap(),
        "one\n"
    );
}

/// The hex id a JSON value names as `id`, checked to be a whole revision id.
fn id_of(v: &serde_json::Value) -> String {
    let id = v["id"].as_str().unwrap_or_else(|| panic!("no id in {v}"));
    assert_eq!(id.len(), 64, "{v}");
    id.to_string()
}

/// Every command that changes something prints JSON naming what it made.
#[test]
fn every_changing_command_prints_json_naming_what_it_made() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env {
        dir: tempfile::tempdir().unwrap(),
    };
    let v = json(&env.ok(&["init", "--json"]));
    assert_eq!(v["repository"], env.repo().display().to_string());
    assert!(v["templates"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c == "compute"));

    let tree = dir.path().join("tree");
    sh(&format!(
        "mkdir -p {t}/etc && echo one > {t}/etc/a",
        t = tree.display()
    ));
    let t = tree.to_str().unwrap();
    let v = json(&env.ok(&[
        "getimage",
        "--golden-client",
        t,
        "--image",
        "compute",
        "--json",
    ]));
    assert_eq!(
        (v["revision"].as_str(), v["number"].as_u64()),
        (Some("compute@1"), Some(1))
    );
    let first = id_of(&v);
    sh(&format!("echo two > {t}/etc/a"));
    let v = json(&env.ok(&[
        "getimage",
        "--golden-client",
        t,
        "--image",
        "compute",
        "--json",
    ]));
    assert_eq!(v["revision"], "compute@2");
    assert!(v["deltas"].is_object(), "{v}");
    assert_ne!(id_of(&v), first);

    let tar = dir.path().join("c.tar");
    let v = json(&env.ok(&["export", "compute@1", "-o", tar.to_str().unwrap(), "--json"]));
    assert_eq!(
        (v["revision"].as_str(), id_of(&v)),
        (Some("compute@1"), first.clone())
    );
    let v = json(&env.ok(&[
        "import",
        "--image",
        "imported",
        tar.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(v["revision"], "imported@1");
    let out = dir.path().join("out");
    let v = json(&env.ok(&["checkout", "compute@1", out.to_str().unwrap(), "--json"]));
    assert_eq!(
        (v["revision"].as_str(), v["dir"].as_str()),
        (Some("compute@1"), out.to_str())
    );

    let v = json(&env.ok(&["tag", "compute@1", "production", "--json"]));
    assert_eq!(
        (v["tag"].as_str(), v["revision"].as_str()),
        (Some("compute:production"), Some("compute@1"))
    );
    let v = json(&env.ok(&["tag", "-d", "compute:production", "--json"]));
    assert_eq!(
        (v["deleted"].as_bool(), v["revision"].as_str()),
        (Some(true), Some("compute@1"))
    );
    let v = json(&env.ok(&["cpimage", "compute", "copy", "--json"]));
    assert_eq!(v["image"], "copy");
    let v = json(&env.ok(&["mvimage", "copy", "moved", "--json"]));
    assert_eq!(
        (v["image"].as_str(), v["from"].as_str()),
        (Some("moved"), Some("copy"))
    );
    let v = json(&env.ok(&["rmimage", "moved", "--json"]));
    assert_eq!(
        (v["image"].as_str(), v["dry_run"].as_bool()),
        (Some("moved"), Some(false))
    );
    let v = json(&env.ok(&["gc", "--json"]));
    assert!(v["live_blobs"].is_number(), "{v}");
    let v = json(&env.ok(&["verify", "--json"]));
    assert!(v["damage"].as_array().unwrap().is_empty(), "{v}");

    let v = json(&env.ok(&["template", "new", "gpu", "--json"]));
    assert_eq!(
        (v["class"].as_str(), v["version"].as_u64()),
        (Some("gpu"), Some(1))
    );
    let file = dir.path().join("gpu.toml");
    let text = env.ok(&["template", "show", "compute"]);
    std::fs::write(&file, text.replace("compute", "gpu")).unwrap();
    let v = json(&env.ok(&["template", "import", file.to_str().unwrap(), "--json"]));
    assert_eq!(
        (v[0]["class"].as_str(), v[0]["version"].as_u64()),
        (Some("gpu"), Some(2))
    );

    let v = json(&env.ok(&[
        "node",
        "add",
        "n1",
        "--mac",
        "52:54:00:00:00:01",
        "--class",
        "gpu",
        "--image",
        "compute",
        "--json",
    ]));
    assert_eq!(
        (v["name"].as_str(), v["boot"].as_str()),
        (Some("n1"), Some("install"))
    );
    let v = json(&env.ok(&["node", "set", "n1", "--group", "rack1", "--json"]));
    assert_eq!(v["group"], "rack1");
    let v = json(&env.ok(&["pxe", "netboot", "n1", "--local", "--json"]));
    assert_eq!(
        (v[0]["node"].as_str(), v[0]["boot"].as_str()),
        (Some("n1"), Some("local"))
    );
    let csv = dir.path().join("nodes.csv");
    std::fs::write(&csv, "name,mac\nn2,52:54:00:00:00:02\n").unwrap();
    let v = json(&env.ok(&["node", "import", csv.to_str().unwrap(), "--json"]));
    assert_eq!(v[0]["name"], "n2");
    let conf = dir.path().join("dnsmasq.conf");
    let v = json(&env.ok(&[
        "pxe",
        "config",
        "--dnsmasq",
        conf.to_str().unwrap(),
        "--server",
        "http://10.0.0.1:8035",
        "--subnet",
        "10.0.0.0/24",
        "--json",
    ]));
    assert_eq!(
        (v["kind"].as_str(), v["nodes"].as_u64()),
        (Some("dnsmasq"), Some(2))
    );
    let tftp = dir.path().join("tftp");
    let v = json(&env.ok(&[
        "pxe",
        "tftp",
        "--tftp-root",
        tftp.to_str().unwrap(),
        "--server",
        "http://10.0.0.1:8035",
        "--json",
    ]));
    assert_eq!(v["nodes"], 2);
    let v = json(&env.ok(&["node", "rm", "n1", "n2", "--json"]));
    assert_eq!(v["removed"], serde_json::json!(["n1", "n2"]));

    // On a node: updateclient, mark-good, rollback name the revisions they went to.
    let node = dir.path().join("node");
    std::fs::create_dir(&node).unwrap();
    let root = node.to_str().unwrap();
    let v = json(&env.ok(&[
        "updateclient",
        "--image",
        "compute@1",
        "--root",
        root,
        "--json",
    ]));
    assert_eq!(v["to"]["number"], 1, "{v}");
    let v = json(&env.ok(&["mark-good", "--root", root, "--json"]));
    assert_eq!(v["revision"], "compute@1");
    assert_eq!(v["last_known_good"]["id"].as_str(), Some(first.as_str()));
    env.ok(&["updateclient", "--image", "compute@2", "--root", root]);
    let v = json(&env.ok(&["rollback", "--root", root, "--json"]));
    assert_eq!(v["to"]["number"], 1, "{v}");

    let man = dir.path().join("man");
    let v = json(&env.ok(&["man", man.to_str().unwrap(), "--json"]));
    assert!(v["pages"].as_array().unwrap().len() > 40);
}

/// chroot's JSON names the revision it committed and its parent, or says nothing was.
#[test]
fn chroot_json_names_the_new_revision() {
    if !can_run(is_root(), "root (chroot mounts /proc)") || !need("busybox") {
        return;
    }
    let env = Env::new();
    let tree = env.path("tree");
    sh(&format!(
        "mkdir -p {t}/bin {t}/etc && cp \"$(command -v busybox)\" {t}/bin/busybox \
         && ln -s busybox {t}/bin/sh && ln -s busybox {t}/bin/true && echo one > {t}/etc/a",
        t = tree.display()
    ));
    env.getimage(&tree, "img", &[]);
    let v = json(&env.ok(&["chroot", "img@1", "--json", "--", "/bin/true"]));
    assert_eq!(
        (v["committed"].as_bool(), v["unchanged"].as_bool()),
        (Some(false), Some(true)),
        "{v}"
    );
    let v = json(&env.ok(&[
        "chroot",
        "img@1",
        "--json",
        "--",
        "/bin/sh",
        "-c",
        "echo two > /etc/a",
    ]));
    assert_eq!(
        (v["revision"].as_str(), v["committed"].as_bool()),
        (Some("img@2"), Some(true)),
        "{v}"
    );
    assert_eq!(v["parent"]["revision"], "img@1");
    id_of(&v);
    assert!(
        v["changes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["path"] == "/etc/a"),
        "{v}"
    );
    let v = json(&env.ok(&[
        "chroot",
        "img@2",
        "--no-commit",
        "--json",
        "--",
        "/bin/true",
    ]));
    assert_eq!(v["committed"], false);
}

/// One spelling per concept: `pxe tftp --tftp-root` as `pxe config --tftp-root`; the old
/// `--root` still works for scripts but is not shown.
#[test]
fn old_flag_spellings_are_hidden_aliases() {
    let env = Env::new();
    let help = env.ok(&["pxe", "tftp", "--help"]);
    assert!(help.contains("--tftp-root <DIR>"), "{help}");
    assert!(!help.contains("--root <DIR>"), "{help}");
    for flag in ["--tftp-root", "--root"] {
        let dir = env.path(flag.trim_start_matches('-'));
        env.ok(&[
            "pxe",
            "tftp",
            flag,
            dir.to_str().unwrap(),
            "--server",
            "http://10.0.0.1:8035",
        ]);
        assert!(dir.join("boot.ipxe").is_file(), "{flag}");
    }
}
