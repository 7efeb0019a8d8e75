//! Issue #12, item 1: updateclient on a root without node state (the default root is `/`)
//! must not delete or replace what is there unless `--adopt` says so; an empty root and a root
//! already holding the image need nothing; `--dry-run` shows the plan either way.

use std::path::Path;

use crate::common::{rsync_diff, sh, Env};
use crate::serve::Server;
use crate::update::node_diff;

/// The image `r@1`: a few files of a small system.
fn image(env: &Env) -> std::path::PathBuf {
    let t = env.path("image");
    sh(&format!(
        "mkdir -p {t}/etc {t}/usr/bin {t}/var/lib/app && printf 'image\\n' > {t}/etc/motd \
         && printf 'tool' > {t}/usr/bin/tool && printf 's' > {t}/var/lib/app/state",
        t = t.display()
    ));
    env.getimage(&t, "r", &[]);
    t
}

/// A workstation's root: something of its own in /boot, /bin and /srv, and an /etc/motd that
/// differs from the image's.
fn workstation(env: &Env, name: &str) -> std::path::PathBuf {
    let w = env.path(name);
    sh(&format!(
        "mkdir -p {w}/boot {w}/bin {w}/srv/data {w}/etc {w}/usr/bin \
         && printf 'kernel' > {w}/boot/vmlinuz && printf 'ls' > {w}/bin/ls \
         && printf 'precious\\n' > {w}/srv/data/thesis.tex && printf 'mine\\n' > {w}/etc/motd \
         && printf 'draft' > {w}/usr/bin/.notes.aurum-new",
        w = w.display()
    ));
    w
}

/// A byte-exact copy (times, modes, owners) to compare with afterwards.
fn snapshot(env: &Env, root: &Path, name: &str) -> std::path::PathBuf {
    let s = env.path(name);
    sh(&format!("cp -a {}/. {}/", root.display(), s.display()));
    s
}

fn update(env: &Env, root: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "updateclient",
        "--image",
        "r@1",
        "--root",
        root.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    env.run(&args)
}

#[test]
fn an_unmanaged_root_is_refused_and_left_byte_identical() {
    let env = Env::new();
    image(&env);
    let ws = workstation(&env, "ws");
    let before = snapshot(&env, &ws, "before");

    let out = update(&env, &ws, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    // /boot, /bin, /srv go; /etc/motd is replaced.
    for want in [
        "holds no aurum node state",
        "delete 4 entries",
        "replace 1",
        "/boot",
        "Nothing was changed",
        "--adopt",
        "--dry-run",
    ] {
        assert!(err.contains(want), "missing {want:?} in: {err}");
    }
    let d = rsync_diff(&before, &ws);
    assert_eq!(d, "", "the refused update changed the root:\n{d}");
    assert!(!ws.join("var").exists());

    // Pre-update hooks (which stop services) do not run for a refused update.
    let hooks = env.path("hooks");
    let ran = env.path("pre-update-ran");
    let hook = hooks.join("pre-update/10all.stop");
    sh(&format!(
        "mkdir -p {d} && printf '#!/bin/sh\\ntouch {ran}\\n' > {h} && chmod 755 {h}",
        d = hook.parent().unwrap().display(),
        ran = ran.display(),
        h = hook.display()
    ));
    let out = update(&env, &ws, &["--hooks", hooks.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!ran.exists(), "a pre-update hook ran for a refused update");
    let out = update(&env, &ws, &["--hooks", hooks.to_str().unwrap(), "--adopt"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        ran.exists(),
        "the pre-update hook did not run for the update"
    );
    sh(&format!(
        "rm -rf {0} && mkdir {0} && cp -a {1}/. {0}/",
        ws.display(),
        before.display()
    ));

    // Over HTTP too (the pack indexes it reads are cached elsewhere than the root).
    let srv = Server::start(&env);
    let url = format!("http://{}", srv.addr);
    let out = env.run(&[
        "updateclient",
        "--server",
        &url,
        "--image",
        "r@1",
        "--root",
        ws.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let d = rsync_diff(&before, &ws);
    assert_eq!(d, "", "the refused update over HTTP changed the root:\n{d}");

    // A dry run shows the plan, says a real run would be refused, and changes nothing.
    let out = update(&env, &ws, &["--dry-run"]);
    assert!(out.status.success());
    let plan = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        plan.contains("- delete   /srv") && plan.contains("> content  /etc/motd"),
        "{plan}"
    );
    assert!(err.contains("refused unless given --adopt"), "{err}");
    assert_eq!(rsync_diff(&before, &ws), "");
}

#[test]
fn adopt_takes_an_unmanaged_root_to_the_image() {
    let env = Env::new();
    let tree = image(&env);
    let ws = workstation(&env, "ws");
    let out = update(&env, &ws, &["--adopt"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(node_diff(&tree, &ws), "");
    // Now a node: the next update needs no --adopt, and a rollback would have the undo area.
    let st = env.ok(&["node-status", "--root", ws.to_str().unwrap()]);
    assert!(st.contains("current          r@1"), "{st}");
    let out = update(&env, &ws, &[]);
    assert!(out.status.success());
}

#[test]
fn an_empty_root_and_a_root_holding_the_image_need_no_adopt() {
    let env = Env::new();
    let tree = image(&env);
    let empty = env.path("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = update(&env, &empty, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(node_diff(&tree, &empty), "");

    // Installed by another tool: the same content, other times (metadata is set, not refused).
    let other = env.path("other");
    sh(&format!(
        "cp -r {}/. {}/ && touch -d 2001-01-01 {}/etc/motd",
        tree.display(),
        other.display(),
        other.display()
    ));
    let out = update(&env, &other, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(node_diff(&tree, &other), "");
}
