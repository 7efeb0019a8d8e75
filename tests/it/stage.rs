//! Staged updates: `updateclient --stage` fetches a revision into the node's state directory
//! without touching the tree, `--activate` applies it with the server down (and after a kill),
//! `--unstage` frees it, a second `--stage` replaces the first, and a node changed between
//! staging and activation still ends exactly on the revision.

use std::path::Path;

use crate::common::{json, sh, write_random, Env};
use crate::serve::Server;
use crate::update::{killed, node_at, node_diff, ok, two_revisions, KillAt};

fn status(node: &Path) -> serde_json::Value {
    json(&ok(&[
        "node-status",
        "--root",
        node.to_str().unwrap(),
        "--json",
    ]))["state"]
        .clone()
}

fn stage_dir(node: &Path) -> std::path::PathBuf {
    node.join("var/lib/aurum-node/stage")
}

/// Runs aurum, expecting it to fail; returns its stderr.
fn fails(args: &[&str]) -> String {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_aurum"))
        .arg("--no-progress")
        .args(args)
        .output()
        .expect("run aurum");
    assert!(!o.status.success(), "aurum {args:?} succeeded");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_staged_revision_activates_with_the_server_down_and_rolls_back() {
    let env = Env::new();
    let (rev1, rev2) = two_revisions(&env);
    let node = node_at(&env, "node", "c@1");
    let n = node.to_str().unwrap();
    let srv = Server::start(&env);
    env.give_node_token(&node);
    let url = format!("http://{}", srv.addr);
    let staged = json(&ok(&[
        "updateclient",
        "--stage",
        "--server",
        &url,
        "--image",
        "c@2",
        "--root",
        n,
        "--no-default-excludes",
        "--json",
    ]));
    assert_eq!(staged["staged"]["revision"]["number"], 2, "{staged}");
    assert!(
        staged["update"]["bytes_fetched"].as_u64().unwrap() > 0,
        "{staged}"
    );
    // Nothing in the tree changed; the state names the stage (read by a new process: the stage
    // is on disk, as after a reboot).
    assert_eq!(node_diff(&rev1, &node), "", "staging changed the tree");
    let st = status(&node);
    assert_eq!(st["current"]["number"], 1);
    assert_eq!(st["staged"]["revision"]["number"], 2);
    assert!(stage_dir(&node).join("blobs").is_dir());
    let shown = ok(&["node-status", "--root", n]);
    assert!(shown.contains("staged           c@2"), "{shown}");
    // The node told the server, whose status page shows the stage; what the node runs is
    // still its last update's report.
    let (_, _, page) = crate::serve::http(&srv.addr, "GET", "/", &[], b"");
    let page = String::from_utf8_lossy(&page);
    assert!(page.contains("<td class=\"staged\">c@2</td>"), "{page}");
    let nodes = env.ok(&["nodes", "--json"]);
    assert!(
        !nodes.contains("\"stage\""),
        "a stage replaced the node's last report: {nodes}"
    );

    // The server goes away; activation needs only the stage.
    drop(srv);
    let r = json(&ok(&[
        "updateclient",
        "--activate",
        "--server",
        &url,
        "--root",
        n,
        "--no-default-excludes",
        "--json",
    ]));
    assert_eq!(r["bytes_fetched"], 0, "{r}");
    let d = node_diff(&rev2, &node);
    assert_eq!(d, "", "activation did not reach rev2:\n{d}");
    let st = status(&node);
    assert_eq!(st["current"]["number"], 2);
    assert!(st["staged"].is_null(), "{st}");
    assert!(!stage_dir(&node).exists(), "the stage was not freed");
    // Activated like any update: the undo area takes it back, offline.
    ok(&["rollback", "--root", n]);
    assert_eq!(node_diff(&rev1, &node), "");
    let e = fails(&["updateclient", "--activate", "--root", n]);
    assert!(e.contains("nothing is staged"), "{e}");
}

#[test]
fn a_second_stage_replaces_the_first_and_unstage_frees_it() {
    let env = Env::new();
    let (rev1, rev2) = two_revisions(&env);
    let rev3 = env.path("rev3");
    sh(&format!(
        "cp -a {}/. {r}/ && printf three > {r}/etc/a",
        rev2.display(),
        r = rev3.display()
    ));
    write_random(&rev3.join("opt/blob"), 9, 2 << 20);
    env.getimage(&rev3, "c", &["--no-default-excludes"]);
    let node = node_at(&env, "node", "c@1");
    let (n, repo) = (node.to_str().unwrap(), env.repo());
    let r = repo.to_str().unwrap();
    let stage = |rev: &str| {
        json(&ok(&[
            "updateclient",
            "--stage",
            "--repo",
            r,
            "--image",
            rev,
            "--root",
            n,
            "--no-default-excludes",
            "--json",
        ]))
    };
    stage("c@2");
    let second = stage("c@3");
    assert_eq!(second["replaced"]["number"], 2, "{second}");
    // A stage killed part way leaves a whole stage: the one before, or its own.
    let again = [
        "updateclient",
        "--stage",
        "--repo",
        r,
        "--image",
        "c@2",
        "--root",
        n,
        "--no-default-excludes",
    ];
    killed(&again, &node, KillAt::Ms(40));
    let st = status(&node);
    let number = st["staged"]["revision"]["number"].as_u64();
    assert!(matches!(number, Some(2 | 3)), "{st}");
    let second = stage("c@3");
    assert_eq!(status(&node)["staged"]["revision"]["number"], 3);
    let bytes = second["staged"]["bytes"].as_u64().unwrap();
    assert!(bytes > 2 << 20, "{second}");
    assert_eq!(node_diff(&rev1, &node), "");
    let freed = json(&ok(&["updateclient", "--unstage", "--root", n, "--json"]));
    assert_eq!(freed["unstaged"]["number"], 3, "{freed}");
    assert!(
        freed["bytes_freed"].as_u64().unwrap() >= bytes - 4096,
        "{freed}"
    );
    assert!(!stage_dir(&node).exists());
    assert!(status(&node)["staged"].is_null());
    let again = json(&ok(&["updateclient", "--unstage", "--root", n, "--json"]));
    assert!(again["unstaged"].is_null(), "{again}");
    assert_eq!(node_diff(&rev1, &node), "");
}

#[test]
fn a_node_changed_since_staging_still_ends_on_the_revision() {
    let env = Env::new();
    let (_, rev2) = two_revisions(&env);
    let node = node_at(&env, "node", "c@1");
    let (n, repo) = (node.to_str().unwrap(), env.repo());
    let r = repo.to_str().unwrap();
    let stage = [
        "updateclient",
        "--stage",
        "--repo",
        r,
        "--image",
        "c@2",
        "--root",
        n,
        "--no-default-excludes",
    ];
    ok(&stage);
    // Changes the stage can absorb: a file edited, one deleted, one added, a mode changed.
    sh(&format!(
        "cd {n} && printf edited > etc/a && rm etc/gone && printf stray > etc/stray \
         && chmod 600 etc/keep && rm -r srv/old"
    ));
    ok(&[
        "updateclient",
        "--activate",
        "--root",
        n,
        "--no-default-excludes",
    ]);
    let d = node_diff(&rev2, &node);
    assert_eq!(d, "", "changed node, activated:\n{d}");

    // A change the stage cannot absorb: the old library (whose unchanged blobs the stage left
    // on the node) is overwritten; offline that is refused before anything changes.
    // On a second node:
    let node = node_at(&env, "node2", "c@1");
    let n = node.to_str().unwrap();
    ok(&[
        "updateclient",
        "--stage",
        "--repo",
        r,
        "--image",
        "c@2",
        "--root",
        n,
        "--no-default-excludes",
    ]);
    write_random(&node.join("usr/lib/libbig.so"), 77, 3 << 20);
    let e = fails(&[
        "updateclient",
        "--activate",
        "--root",
        n,
        "--no-default-excludes",
    ]);
    assert!(e.contains("neither in the stage nor on the node"), "{e}");
    assert_eq!(status(&node)["current"]["number"], 1);
    assert_eq!(status(&node)["staged"]["revision"]["number"], 2);
    // With the server reachable the rest is fetched.
    ok(&[
        "updateclient",
        "--activate",
        "--repo",
        r,
        "--root",
        n,
        "--no-default-excludes",
    ]);
    let d = node_diff(&rev2, &node);
    assert_eq!(d, "", "changed node, activated with a server:\n{d}");
}

#[test]
fn a_killed_activation_finishes_when_rerun() {
    let env = Env::new();
    let (a, b) = crate::update::kill_revisions(&env);
    let repo = env.repo();
    let r = repo.to_str().unwrap();
    let mut activations_killed = 0;
    let points = [
        KillAt::Journal,
        KillAt::Ms(30),
        KillAt::Ms(120),
        KillAt::Ms(300),
    ];
    for (i, at) in points.into_iter().enumerate() {
        let node = node_at(&env, &format!("node{i}"), "k@1");
        let n = node.to_str().unwrap();
        ok(&[
            "updateclient",
            "--stage",
            "--repo",
            r,
            "--image",
            "k@2",
            "--root",
            n,
        ]);
        let activate = ["updateclient", "--activate", "--root", n];
        activations_killed += killed(&activate, &node, at) as u32;
        // Every file is old or new: each is one of the two revisions' versions.
        for f in 0..60 {
            let p = format!("data/f{f:02}");
            let now = std::fs::read(node.join(&p)).unwrap();
            assert!(
                now == std::fs::read(a.join(&p)).unwrap()
                    || now == std::fs::read(b.join(&p)).unwrap(),
                "{p} is neither old nor new after a kill at {at:?}"
            );
        }
        let st = json(&ok(&["node-status", "--root", n, "--json"]));
        if !st["interrupted"].is_null() || !st["state"]["staged"].is_null() {
            ok(&activate);
        }
        assert_eq!(
            node_diff(&b, &node),
            "",
            "activation killed at {at:?}, then rerun"
        );
        assert!(status(&node)["staged"].is_null());
        ok(&["rollback", "--root", n]);
        assert_eq!(
            node_diff(&a, &node),
            "",
            "rollback after a killed activation"
        );
    }
    assert!(activations_killed >= 1, "no kill landed");
}
