//! Issue #12, item 2: the overrides a node follows are laid again by every updateclient and
//! rollback (the host's over the group's over the image), recorded with their revisions, part
//! of the plan and of the hand-change check, and changed on a running node with
//! `updateclient --override` / `--no-override`. (`install` records them: tests/it/install.rs.)

use std::fs;
use std::path::{Path, PathBuf};

use crate::common::{sh, Env};
use crate::update::{node_at, node_diff};

fn files(env: &Env, name: &str, files: &[(&str, &str)]) -> PathBuf {
    let t = env.path(name);
    for (f, text) in files {
        fs::create_dir_all(t.join(f).parent().unwrap()).unwrap();
        fs::write(t.join(f), text).unwrap();
    }
    t
}

/// What the node should hold: `image` with each override copied over it in order (files
/// replaced, not written through, so a hardlink of the image keeps its content), the root's
/// own metadata left as the image's.
fn expected(env: &Env, name: &str, image: &Path, overrides: &[&Path]) -> PathBuf {
    let e = env.path(name);
    sh(&format!("cp -a {}/. {}/", image.display(), e.display()));
    for o in overrides {
        for top in fs::read_dir(o).unwrap() {
            sh(&format!(
                "cp -a --remove-destination {} {}/",
                top.unwrap().path().display(),
                e.display()
            ));
        }
    }
    e
}

fn on(env: &Env, node: &Path, args: &[&str]) -> std::process::Output {
    let mut a = args.to_vec();
    a.extend_from_slice(&["--root", node.to_str().unwrap()]);
    env.run(&a)
}

fn ok_on(env: &Env, node: &Path, args: &[&str]) -> (String, String) {
    let out = on(env, node, args);
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "{args:?}: {o}\n{e}");
    (o, e)
}

fn read(node: &Path, f: &str) -> String {
    fs::read_to_string(node.join(f)).unwrap()
}

#[test]
fn overrides_survive_updates_and_rollbacks_and_can_be_changed_on_the_node() {
    let env = Env::new();
    let image = files(
        &env,
        "image",
        &[
            ("etc/motd", "image\n"),
            ("var/lib/app/state", "one\n"),
            ("usr/lib/libbig.so", "big one\n"),
        ],
    );
    fs::hard_link(
        image.join("usr/lib/libbig.so"),
        image.join("usr/lib/libbig.so.1"),
    )
    .unwrap();
    env.getimage(&image, "c", &[]);
    // The group's replaces a hardlinked file of the image and adds a file; the host's wins
    // over the group's motd.
    let g1 = files(
        &env,
        "g1",
        &[
            ("etc/motd", "group\n"),
            ("etc/site.conf", "site\n"),
            ("usr/lib/libbig.so", "patched\n"),
        ],
    );
    env.getimage(&g1, "override.g1", &[]);
    let n05 = files(
        &env,
        "n05",
        &[("etc/motd", "node\n"), ("etc/node.conf", "n05\n")],
    );
    env.getimage(&n05, "override.n05", &[]);
    let node = node_at(&env, "node", "c@1");
    let up = |extra: &[&str]| {
        let mut a = vec!["updateclient", "--image", "c", "--no-default-excludes"];
        a.extend_from_slice(extra);
        ok_on(&env, &node, &a)
    };

    // An administrator gives the running node its overrides.
    let (dry, _) = up(&[
        "--override",
        "override.g1",
        "--override",
        "override.n05",
        "--dry-run",
    ]);
    assert!(
        dry.contains("+ file     /etc/node.conf") && dry.contains("> content  /etc/motd"),
        "{dry}"
    );
    assert!(!node.join("etc/node.conf").exists(), "the dry run wrote");
    up(&["--override", "override.g1", "--override", "override.n05"]);
    assert_eq!(
        node_diff(&expected(&env, "want1", &image, &[&g1, &n05]), &node),
        ""
    );
    assert_eq!(read(&node, "usr/lib/libbig.so.1"), "big one\n");
    let st = env.ok(&["node-status", "--root", node.to_str().unwrap()]);
    assert!(
        st.contains("+ override.g1@1, override.n05@1")
            && st.contains("overrides        override.g1, override.n05"),
        "{st}"
    );

    // A new image revision: the overrides stay, nothing of theirs counts as changed by hand.
    fs::write(image.join("var/lib/app/state"), "two\n").unwrap();
    fs::write(image.join("etc/motd"), "image two\n").unwrap();
    env.getimage(&image, "c", &[]);
    let (dry, _) = up(&["--dry-run"]);
    assert!(
        !dry.contains("/etc/node.conf") && !dry.contains("/etc/motd"),
        "the plan touches the overrides' files:\n{dry}"
    );
    let (out, err) = up(&[]);
    assert!(
        out.contains("1 changed") && out.contains("0 deleted"),
        "{out}"
    );
    assert!(!err.contains("changed on this node"), "{err}");
    assert_eq!(read(&node, "var/lib/app/state"), "two\n");
    assert_eq!(
        node_diff(&expected(&env, "want2", &image, &[&g1, &n05]), &node),
        ""
    );
    let want2 = env.path("want2");

    // A new revision of an override is followed like the image's.
    fs::write(n05.join("etc/motd"), "node two\n").unwrap();
    env.getimage(&n05, "override.n05", &[]);
    up(&[]);
    assert_eq!(read(&node, "etc/motd"), "node two\n");
    let st = env.ok(&["node-status", "--root", node.to_str().unwrap()]);
    assert!(st.contains("override.n05@2"), "{st}");

    // Rollback goes back to exactly the previous tree (c@2 with override.n05@1), and again.
    ok_on(&env, &node, &["rollback"]);
    assert_eq!(node_diff(&want2, &node), "");
    ok_on(&env, &node, &["rollback"]);
    assert_eq!(read(&node, "etc/motd"), "node two\n");

    // The administrator drops the host's override: its files go, the group's motd is back.
    up(&["--no-override", "override.n05"]);
    assert!(!node.join("etc/node.conf").exists());
    assert_eq!(read(&node, "etc/motd"), "group\n");
    let st = env.ok(&["node-status", "--root", node.to_str().unwrap()]);
    assert!(st.contains("overrides        override.g1\n"), "{st}");

    // Names that do not exist are refused, changing nothing.
    for (args, want) in [
        (vec!["--no-override", "override.n05"], "does not follow"),
        (
            vec!["--override", "override.nope"],
            "capture the override first",
        ),
    ] {
        let mut a = vec!["updateclient", "--image", "c", "--no-default-excludes"];
        a.extend_from_slice(&args);
        let out = on(&env, &node, &a);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(want), "{err}");
    }
    assert_eq!(read(&node, "etc/motd"), "group\n");
}

/// Review finding: the error for an override the node holds that some servers lack while the
/// others are down said "the update would delete" whatever the command was. A rollback names
/// itself: the node follows an override, the override is then removed from the one server
/// that answers, and another server given does not answer.
#[test]
fn an_override_missing_on_the_servers_that_answer_names_the_command_it_stops() {
    let env = Env::new();
    let image = files(&env, "image", &[("etc/motd", "image\n")]);
    env.getimage(&image, "c", &[]);
    let n05 = files(&env, "n05", &[("etc/node.conf", "n05\n")]);
    env.getimage(&n05, "override.n05", &[]);
    let node = node_at(&env, "node", "c@1");
    ok_on(
        &env,
        &node,
        &["updateclient", "--image", "c", "--override", "override.n05"],
    );
    env.ok(&["rmimage", "override.n05"]);
    let srv = crate::serve::Server::start(&env);
    let down = format!("http://127.0.0.1:{}", crate::published::free_port());
    let out = on(
        &env,
        &node,
        &[
            "rollback",
            "--to",
            "c@1",
            "--server",
            &srv.url,
            "--server",
            &down,
            "--http-tries",
            "1",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("it may be there")
            && err.contains(
                "This node follows the override image `override.n05`: without it the rollback \
                 would delete the override's files, so nothing on the node was changed"
            )
            && !err.contains("the update"),
        "{err}"
    );
    assert_eq!(read(&node, "etc/node.conf"), "n05\n");
}
