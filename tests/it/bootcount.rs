//! Boot counting and fallback (`aurum boot`, `aurum health` on a trial boot, `updateclient
//! --boot-tries`): the state machine on a real node root with GRUB's files, GRUB's side played
//! by `grub-editenv` (the counter) and the kernel command line GRUB's fallback entry gives; the
//! GRUB script checked by `grub-script-check`; the reports through a real `aurum serve`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{json, need, Env};
use crate::serve::Server;

/// A golden client that boots with GRUB: busybox (the health checks run chrooted), a kernel
/// and initramfs of `version` (bytes standing for them), GRUB's configuration, the kernel
/// command line, and a required health check that passes or fails.
fn golden(root: &Path, version: &str, healthy: bool) {
    let _ = fs::remove_dir_all(root);
    crate::pxe::golden(root);
    fs::create_dir_all(root.join("boot/grub")).unwrap();
    fs::write(
        root.join(format!("boot/vmlinuz-{version}")),
        format!("kernel {version}\n"),
    )
    .unwrap();
    fs::write(
        root.join(format!("boot/initrd.img-{version}")),
        format!("initrd {version}\n"),
    )
    .unwrap();
    fs::write(
        root.join("boot/grub/grub.cfg"),
        format!("menuentry 'node' {{\n  linux /boot/vmlinuz-{version} root=LABEL=root ro\n}}\n"),
    )
    .unwrap();
    fs::create_dir_all(root.join("etc/kernel")).unwrap();
    fs::write(
        root.join("etc/kernel/cmdline"),
        "BOOT_IMAGE=/boot/vmlinuz root=LABEL=root ro console=ttyS0\n",
    )
    .unwrap();
    let checks = root.join("etc/aurum/health/required.d");
    fs::create_dir_all(&checks).unwrap();
    let body = match healthy {
        true => "echo app answers\n",
        false => "echo the app does not answer on port 8080 >&2\nexit 3\n",
    };
    fs::write(checks.join("10-app"), format!("#!/bin/sh\n{body}")).unwrap();
    fs::set_permissions(checks.join("10-app"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(
        root.join("etc/motd"),
        format!("revision with kernel {version}\n"),
    )
    .unwrap();
}

/// Captures a revision of image `node` from the golden client of [`golden`] for each (kernel
/// version, healthy), in order.
fn capture(env: &Env, revisions: &[(&str, bool)]) {
    let g = env.path("golden");
    for (version, healthy) in revisions {
        golden(&g, version, *healthy);
        env.getimage(&g, "node", &[]);
    }
}

fn state(env: &Env, root: &Path) -> serde_json::Value {
    json(&env.ok(&["node-status", "--root", root.to_str().unwrap(), "--json"]))["state"].clone()
}

fn grubenv(root: &Path) -> String {
    let out = Command::new("grub-editenv")
        .arg(root.join("boot/grub/grubenv"))
        .arg("list")
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// GRUB's part at one boot: one try taken from the counter (what aurum.cfg's script does).
fn grub_takes_a_try(root: &Path) {
    let env = grubenv(root);
    let left: u32 = env
        .lines()
        .find_map(|l| l.strip_prefix("aurum_tries="))
        .expect("a counter")
        .parse()
        .unwrap();
    let st = Command::new("grub-editenv")
        .arg(root.join("boot/grub/grubenv"))
        .args(["set", &format!("aurum_tries={}", left - 1)])
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn a_failing_revision_falls_back_and_a_good_one_is_blessed() {
    if !need("grub-editenv") || !need("grub-script-check") || !need("busybox") {
        return;
    }
    let env = Env::new();
    capture(&env, &[("1.0", true), ("2.0", false), ("3.0", true)]);
    let srv = Server::start(&env);
    let url = format!("http://{}", srv.addr);
    let root = env.path("root");
    fs::create_dir_all(&root).unwrap();
    let r = root.to_str().unwrap();
    let cmdline = "root=LABEL=root ro console=ttyS0";
    let update = |rev: &str| {
        env.ok(&[
            "updateclient",
            "--root",
            r,
            "--server",
            &url,
            "--image",
            rev,
            "--boot-tries",
            "2",
        ])
    };

    // The first revision has nothing to fall back to: no trial.
    update("node@1");
    assert!(state(&env, &root).get("trial").is_none());
    assert!(!root.join("boot/grub/aurum.cfg").exists());

    // The second goes on trial: the kernel the node booted is kept for the fallback entry.
    update("node@2");
    let s = state(&env, &root);
    assert_eq!(s["trial"]["revision"]["number"], 2, "{s}");
    assert_eq!(s["trial"]["fallback"]["number"], 1, "{s}");
    assert_eq!(s["trial"]["tries"], 2);
    assert_eq!(s["trial"]["bootloader"], "grub");
    let listed = grubenv(&root);
    assert!(listed.contains("aurum_tries=2\n"), "{listed}");
    assert!(listed.contains("aurum_trial=node@2 "), "{listed}");
    assert_eq!(
        fs::read_to_string(root.join("boot/grub/aurum/vmlinuz")).unwrap(),
        "kernel 1.0\n"
    );
    assert_eq!(
        fs::read_to_string(root.join("boot/grub/aurum/initrd.img")).unwrap(),
        "initrd 1.0\n"
    );
    let cfg = fs::read_to_string(root.join("boot/grub/aurum.cfg")).unwrap();
    assert!(
        cfg.contains(&format!(
            "linux ${{prefix}}/aurum/vmlinuz {cmdline} aurum.fallback\n"
        )),
        "{cfg}"
    );
    let custom = fs::read_to_string(root.join("boot/grub/custom.cfg")).unwrap();
    assert!(custom.contains("source ${prefix}/aurum.cfg"), "{custom}");
    for f in ["aurum.cfg", "custom.cfg"] {
        let check = Command::new("grub-script-check")
            .arg(root.join("boot/grub").join(f))
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "grub-script-check {f}: {}",
            String::from_utf8_lossy(&check.stderr)
        );
    }

    // Boot 1 of 2: GRUB took a try; the boot is recorded as a trial boot.
    grub_takes_a_try(&root);
    let b = json(&env.ok(&[
        "boot",
        "--root",
        r,
        "--cmdline",
        cmdline,
        "--server",
        &url,
        "--json",
    ]));
    assert_eq!(b["record"]["outcome"], "trial", "{b}");
    assert_eq!(b["record"]["tries_left"], 1, "{b}");
    assert_eq!(b["reboot"], false);

    // Its health check fails: the node goes back to revision 1 at once, by itself.
    let out = env.run(&["health", "--root", r, "--server", &url, "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let h = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(h["boot"]["outcome"], "fell-back", "{h}");
    let reason = h["boot"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("node@2")
            && reason.contains("10-app (exit 3: the app does not answer on port 8080)"),
        "{reason}"
    );
    let s = state(&env, &root);
    assert_eq!(s["current"]["number"], 1, "{s}");
    assert_eq!(s["last_known_good"]["number"], 1, "{s}");
    assert!(s.get("trial").is_none(), "{s}");
    assert_eq!(s["boot"]["outcome"], "fell-back");
    assert_eq!(
        fs::read_to_string(root.join("etc/motd")).unwrap(),
        "revision with kernel 1.0\n"
    );
    assert!(root.join("boot/vmlinuz-1.0").exists() && !root.join("boot/vmlinuz-2.0").exists());
    let listed = grubenv(&root);
    assert!(!listed.contains("aurum_"), "{listed}");
    assert!(!root.join("boot/grub/aurum.cfg").exists());
    // The server has the boot report: `aurum nodes` says the node fell back, and why.
    let nodes = json(&env.ok(&["nodes", "--json"]));
    let n = &nodes[0];
    assert_eq!(n["action"], "boot", "{nodes}");
    assert_eq!(n["result"], "failed", "{nodes}");
    assert_eq!(n["boot"]["fell_back"], true, "{nodes}");
    assert!(
        n["boot"]["booted"].as_str().unwrap().starts_with("node@1 "),
        "{nodes}"
    );
    assert!(n["boot"]["reason"].as_str().unwrap().contains("10-app"));
    let table = env.ok(&["nodes"]);
    assert!(table.contains("fell back to node@1"), "{table}");
    let status = env.ok(&["node-status", "--root", r]);
    assert!(status.contains("FELL BACK: node@2"), "{status}");

    // Revision 2 again, and this time it never reaches a passing health check: after its 2
    // boots GRUB boots the fallback entry, and `aurum boot` puts the node back.
    update("node@2");
    for _ in 0..2 {
        grub_takes_a_try(&root);
        let b = json(&env.ok(&["boot", "--root", r, "--cmdline", cmdline, "--json"]));
        assert_eq!(b["record"]["outcome"], "trial", "{b}");
    }
    assert!(grubenv(&root).contains("aurum_tries=0\n"));
    let fallback_cmdline =
        format!("BOOT_IMAGE=(hd0,gpt2)/boot/grub/aurum/vmlinuz {cmdline} aurum.fallback");
    let b = json(&env.ok(&[
        "boot",
        "--root",
        r,
        "--cmdline",
        &fallback_cmdline,
        "--server",
        &url,
        "--json",
    ]));
    assert_eq!(b["record"]["outcome"], "fell-back", "{b}");
    assert_eq!(b["reboot"], true);
    assert!(
        b["record"]["reason"]
            .as_str()
            .unwrap()
            .contains("did not pass its health checks in 2 boots"),
        "{b}"
    );
    assert_eq!(state(&env, &root)["current"]["number"], 1);

    // Revision 3 passes its checks on its first boot: blessed, the new last-known-good.
    update("node@3");
    grub_takes_a_try(&root);
    env.ok(&["boot", "--root", r, "--cmdline", cmdline, "--server", &url]);
    let h = json(&env.ok(&["health", "--root", r, "--server", &url, "--json"]));
    assert_eq!(h["boot"]["outcome"], "blessed", "{h}");
    let s = state(&env, &root);
    assert_eq!(s["current"]["number"], 3, "{s}");
    assert_eq!(s["last_known_good"]["number"], 3, "{s}");
    assert!(s.get("trial").is_none(), "{s}");
    assert!(!grubenv(&root).contains("aurum_"));
    assert!(!root.join("boot/grub/aurum").exists());
    let nodes = json(&env.ok(&["nodes", "--json"]));
    assert_eq!(nodes[0]["boot"]["outcome"], "blessed", "{nodes}");
    assert_eq!(nodes[0]["boot"]["fell_back"], false, "{nodes}");
    // A later health run on the same boot is no trial boot: nothing more happens.
    let h = json(&env.ok(&["health", "--root", r, "--json"]));
    assert!(h["boot"].is_null(), "{h}");
    // An ordinary boot is recorded as such.
    let b = json(&env.ok(&["boot", "--root", r, "--cmdline", cmdline, "--json"]));
    assert_eq!(b["record"]["outcome"], "booted", "{b}");
}

/// Runs aurum with `args` under strace, SIGKILLed (strace's signal injection, delivered as the
/// call begins) at its `k`-th rename onto `file` (of any file: `None`); whether it was killed
/// (else it ran to its end).
fn killed_at_rename(env: &Env, file: Option<&Path>, k: u32, args: &[&str]) -> bool {
    killed_at(env, "rename,renameat,renameat2", file, k, args)
}

/// Runs aurum with `args` under strace, SIGKILLed at its `k`-th call of one of `calls` (strace's
/// syscall names, comma-separated) on `file` (on any file: `None`); whether it was killed.
fn killed_at(env: &Env, calls: &str, file: Option<&Path>, k: u32, args: &[&str]) -> bool {
    let mut strace = Command::new("strace");
    strace.args(["-f", "-o", "/dev/null"]);
    if let Some(f) = file {
        strace.arg("-P").arg(f);
    }
    let status = strace
        .args(["-e", &format!("trace={calls}")])
        .args(["-e", &format!("inject={calls}:signal=KILL:when={k}")])
        .arg(env!("CARGO_BIN_EXE_aurum"))
        .args(["--no-progress", "--repo"])
        .arg(env.repo())
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    std::os::unix::process::ExitStatusExt::signal(&status) == Some(9)
}

/// Review finding: a fallback puts the root back, then ends the trial; a kill between the two
/// left `state.trial` naming the failed revision on the restored root, and the next `aurum
/// boot` and `aurum health` blessed the failed revision there. A failing `aurum health` on a
/// trial boot is killed before each of its writes of `state.json` in turn (strace's signal
/// injection); wherever the kill left the root put back with the trial still in the state,
/// `aurum health` run again on that boot, and the next boot with its health check, must end
/// the trial as a fallback and keep the revision the root is on as the last-known-good one.
/// After every other kill, the next boot and health check never bless a revision the root is
/// not on.
#[test]
fn a_fallback_killed_before_its_trial_ends_is_finished_not_blessed() {
    if !need("grub-editenv") || !need("busybox") || !need("strace") {
        return;
    }
    let env = Env::new();
    capture(&env, &[("1.0", true), ("2.0", false)]);
    let ready = env.path("ready");
    fs::create_dir_all(&ready).unwrap();
    let rd = ready.to_str().unwrap();
    let cmdline = "root=LABEL=root ro console=ttyS0";
    env.ok(&["updateclient", "--root", rd, "--image", "node@1"]);
    env.ok(&[
        "updateclient",
        "--root",
        rd,
        "--image",
        "node@2",
        "--boot-tries",
        "2",
    ]);
    grub_takes_a_try(&ready);
    let b = json(&env.ok(&["boot", "--root", rd, "--cmdline", cmdline, "--json"]));
    assert_eq!(b["record"]["outcome"], "trial", "{b}");

    let root = env.path("root");
    let r = root.to_str().unwrap();
    let fresh = |to: &Path, from: &Path| {
        let _ = fs::remove_dir_all(to);
        crate::common::sh(&format!("cp -a {} {}", from.display(), to.display()));
    };
    // Nothing blesses a revision the root is not on: the last-known-good one is the root's.
    let root_is_last_known_good = |root: &Path, when: &str| {
        let s = state(&env, root);
        assert!(s.get("trial").is_none(), "{when}: {s}");
        assert_eq!(s["current"]["number"], 1, "{when}: {s}");
        assert_eq!(s["last_known_good"]["number"], 1, "{when}: {s}");
        assert_eq!(
            fs::read_to_string(root.join("etc/motd")).unwrap(),
            "revision with kernel 1.0\n",
            "{when}"
        );
        assert!(
            !grubenv(root).contains("aurum_"),
            "{when}: {}",
            grubenv(root)
        );
    };
    let (mut in_window, mut in_rollback, mut kills) = (0, 0, 0);
    for k in 1..=40 {
        fresh(&root, &ready);
        let state_json = root.join("var/lib/aurum-node/state.json");
        if !killed_at_rename(&env, Some(&state_json), k, &["health", "--root", r]) {
            // The run reached its end: every write of it was a kill point before.
            assert!(k > 2, "aurum health wrote state.json only {} times", k - 1);
            root_is_last_known_good(&root, "health not killed");
            break;
        }
        kills += 1;
        let s = state(&env, &root);
        let when = format!("killed before write {k} of state.json");
        if root.join("var/lib/aurum-node/journal.json").exists() {
            // Killed inside the rollback: the next boot finishes it, then the fallback.
            in_rollback += 1;
            let b = json(&env.ok(&["boot", "--root", r, "--cmdline", cmdline, "--json"]));
            assert_eq!(b["record"]["outcome"], "fell-back", "{when}: {b}");
            assert_eq!(b["reboot"], true, "{when}: {b}");
            let reason = b["record"]["reason"].as_str().unwrap();
            assert!(
                reason.starts_with("`aurum rollback` to node@1 ")
                    && reason.contains("was interrupted on this root, and is finished now"),
                "{when}: {reason}"
            );
        } else if s["current"]["number"] == 1 && s.get("trial").is_some() {
            in_window += 1;
            // The health check run again on the same boot (it passes now, on revision 1).
            let again = env.path("again");
            fresh(&again, &root);
            let h = json(&env.ok(&["health", "--root", again.to_str().unwrap(), "--json"]));
            assert_eq!(h["boot"]["outcome"], "fell-back", "{when}: {h}");
            assert_eq!(h["boot"]["trial"]["number"], 2, "{when}: {h}");
            root_is_last_known_good(&again, &format!("{when}, health again"));
            // The next boot.
            let b = json(&env.ok(&["boot", "--root", r, "--cmdline", cmdline, "--json"]));
            assert_eq!(b["record"]["outcome"], "fell-back", "{when}: {b}");
            assert_eq!(b["reboot"], false, "{when}: {b}");
        } else {
            env.ok(&["boot", "--root", r, "--cmdline", cmdline]);
        }
        let _ = env.run(&["health", "--root", r]);
        root_is_last_known_good(&root, &format!("{when}, then a boot and a health check"));
    }
    println!(
        "{kills} kills, {in_rollback} inside the rollback, {in_window} between the rollback \
         and the end of the trial"
    );
    assert!(in_rollback > 0, "no kill landed inside the rollback");
    assert!(
        in_window > 0,
        "no kill landed between the rollback and the end of the trial"
    );
}

/// Review finding: `aurum boot` and `aurum health` acted on a root a killed rollback left
/// between two revisions (its journal there): they recorded the boot, ran the checks and
/// reported the revision the state named, on a root holding part of each. A rollback, and an
/// update, are killed at a rename in the middle of their work (strace's signal injection);
/// then `aurum boot` on the root must bring it to exactly one revision (the rollback finished,
/// the update undone), say so in the boot record and ask for a reboot; `aurum mark-good`
/// refuses such a root; `aurum health` on a copy of it, no part of a boot (a later review),
/// leaves it as it is, unhealthy, and the boot after it brings it to one revision.
#[test]
fn boot_and_health_finish_a_killed_rollback_and_undo_a_killed_update() {
    if !need("strace") || !need("rsync") {
        return;
    }
    let env = Env::new();
    let (a, b) = (env.path("rev1"), env.path("rev2"));
    for i in 0..60 {
        let rel = format!("usr/share/d{}/f{i:02}", i % 6);
        crate::common::write_random(&a.join(&rel), i, 300);
        crate::common::write_random(&b.join(&rel), i + 1000, 300);
    }
    crate::common::sh(&format!(
        "mkdir -p {a}/var/lib {b}/var/lib && printf gone > {a}/usr/only-in-1 && \
         printf new > {b}/usr/only-in-2",
        a = a.display(),
        b = b.display()
    ));
    env.getimage(&a, "r", &[]);
    env.getimage(&b, "r", &[]);
    let at_1 = crate::update::node_at(&env, "at-1", "r@1");
    let at_2 = env.path("at-2");
    crate::common::sh(&format!("cp -a {} {}", at_1.display(), at_2.display()));
    let update = ["updateclient", "--image", "r@2", "--no-default-excludes"];
    env.ok(&[&update[..], &["--root", at_2.to_str().unwrap()]].concat());
    let cmdline = "root=LABEL=root ro";
    let exactly = |root: &Path, rev: &Path, number: u64, when: &str| {
        assert_eq!(crate::update::node_diff(rev, root), "", "{when}");
        assert!(
            !root.join("var/lib/aurum-node/journal.json").exists(),
            "{when}"
        );
        assert_eq!(state(&env, root)["current"]["number"], number, "{when}");
    };
    // (the ready root, the command killed, the revision the root must end on, the reason)
    let rollback = ["rollback", "--no-default-excludes"];
    let cases: [(&Path, &[&str], &Path, u64, &str); 2] = [
        (&at_2, &rollback, &a, 1, "`aurum rollback` to r@1 "),
        (&at_1, &update, &a, 1, "`aurum updateclient` to r@2 "),
    ];
    for (ready, cmd, rev, number, reason) in cases {
        let mut mixed = false;
        for k in [12, 30, 45] {
            let when = format!("{cmd:?} killed at rename {k}");
            let root = env.path("root");
            let again = env.path("again");
            for d in [&root, &again] {
                let _ = fs::remove_dir_all(d);
            }
            crate::common::sh(&format!("cp -a {} {}", ready.display(), root.display()));
            let r = root.to_str().unwrap();
            let args = [cmd, &["--root", r]].concat();
            assert!(killed_at_rename(&env, None, k, &args), "{when}: not killed");
            assert!(
                root.join("var/lib/aurum-node/journal.json").exists(),
                "{when}: no journal"
            );
            let olds = (0..60)
                .filter(|i| {
                    let rel = format!("usr/share/d{}/f{i:02}", i % 6);
                    fs::read(root.join(&rel)).unwrap() == fs::read(a.join(&rel)).unwrap()
                })
                .count();
            mixed |= olds > 0 && olds < 60;
            crate::common::sh(&format!("cp -a {} {}", root.display(), again.display()));

            let refused = env.run(&["mark-good", "--root", r]);
            let err = String::from_utf8_lossy(&refused.stderr);
            assert!(
                !refused.status.success()
                    && err.contains("was interrupted on")
                    && err.contains("aurum rollback"),
                "{when}: mark-good: {err}"
            );

            let out = json(&env.ok(&["boot", "--root", r, "--cmdline", cmdline, "--json"]));
            assert_eq!(out["reboot"], true, "{when}: {out}");
            assert_eq!(out["record"]["outcome"], "booted", "{when}: {out}");
            let why = out["record"]["reason"].as_str().unwrap();
            assert!(why.starts_with(reason), "{when}: {why}");
            exactly(&root, rev, number, &format!("{when}, then boot"));

            // No `aurum boot` recorded this boot on the copy: health is no part of the boot
            // and leaves the root to the administrator, unhealthy.
            let g = again.to_str().unwrap();
            left_to_the_administrator(&env, &again, &when);
            // Then the boot brings it to one revision.
            env.ok(&["boot", "--root", g, "--cmdline", cmdline]);
            exactly(
                &again,
                rev,
                number,
                &format!("{when}, then health, then boot"),
            );
        }
        assert!(
            mixed,
            "{cmd:?}: no kill landed between two renames of the tree"
        );
    }
}

/// `aurum health` on `root`, a root a kill left between two revisions, outside the boot's first
/// health check: the root is left exactly as it was (its journal too), the result is unhealthy
/// with the failed check `aurum-interrupted` saying what was interrupted, nothing reboots.
fn left_to_the_administrator(env: &Env, root: &Path, when: &str) {
    let snap = root.with_extension("snap");
    let _ = fs::remove_dir_all(&snap);
    crate::common::sh(&format!("cp -a {} {}", root.display(), snap.display()));
    let out = env.run(&["health", "--root", root.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(1), "{when}: health");
    let h = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(h["health"]["healthy"], false, "{when}: {h}");
    assert_eq!(
        h["health"]["checks"][0]["name"], "aurum-interrupted",
        "{when}: {h}"
    );
    let why = h["health"]["checks"][0]["output"].as_str().unwrap();
    assert!(
        why.contains("was interrupted on") && why.contains("run `aurum rollback`"),
        "{when}: {why}"
    );
    assert!(h["boot"].is_null(), "{when}: {h}");
    assert_eq!(crate::update::node_diff(&snap, root), "", "{when}: health");
    assert!(
        root.join("var/lib/aurum-node/journal.json").exists(),
        "{when}"
    );
    assert_eq!(
        fs::read(snap.join("var/lib/aurum-node/journal.json")).unwrap(),
        fs::read(root.join("var/lib/aurum-node/journal.json")).unwrap(),
        "{when}"
    );
}

/// Review findings: `aurum health` is Slurm's HealthCheckProgram and runs every few minutes on
/// nodes taking jobs, where `updateclient` runs too; it undid a killed update under running
/// jobs and rebooted. And a recovery that failed in `aurum boot` (here an update killed
/// mid-way whose undo area is gone, with no server to fetch from) aborted the boot: nothing
/// recorded, the fallback never taken. Now a boot records such a boot (`booted`, the error its
/// reason) and exits non-zero; the boot's first health check, given the server, brings the root
/// back. An update killed after the boot and its health check on the running system is left to
/// the administrator, the node unhealthy.
#[test]
fn health_recovers_only_as_part_of_the_boot() {
    if !need("strace") || !need("rsync") {
        return;
    }
    let env = Env::new();
    let (a, b) = (env.path("rev1"), env.path("rev2"));
    for i in 0..40 {
        let rel = format!("usr/share/d{}/f{i:02}", i % 4);
        crate::common::write_random(&a.join(&rel), i, 300);
        crate::common::write_random(&b.join(&rel), i + 1000, 300);
    }
    crate::common::sh(&format!(
        "mkdir -p {a}/var/lib {b}/var/lib",
        a = a.display(),
        b = b.display()
    ));
    env.getimage(&a, "r", &[]);
    env.getimage(&b, "r", &[]);
    let srv = Server::start(&env);
    let url = format!("http://{}", srv.addr);
    let at_1 = crate::update::node_at(&env, "at-1", "r@1");
    let update = ["updateclient", "--image", "r@2", "--no-default-excludes"];
    let cmdline = "root=LABEL=root ro";
    let journal = |root: &Path| root.join("var/lib/aurum-node/journal.json");

    // Killed on the running system, after this boot and its first health check.
    let live = env.path("live");
    crate::common::sh(&format!("cp -a {} {}", at_1.display(), live.display()));
    let l = live.to_str().unwrap();
    env.ok(&["boot", "--root", l, "--cmdline", cmdline]);
    env.ok(&["health", "--root", l]);
    assert!(killed_at_rename(
        &env,
        None,
        20,
        &[&update[..], &["--root", l]].concat()
    ));
    left_to_the_administrator(&env, &live, "killed after the boot's health check");
    left_to_the_administrator(&env, &live, "and again");

    // Killed before the boot, the undo area lost: the boot cannot go back without a server.
    let root = env.path("root");
    crate::common::sh(&format!("cp -a {} {}", at_1.display(), root.display()));
    let r = root.to_str().unwrap();
    assert!(killed_at_rename(
        &env,
        None,
        20,
        &[&update[..], &["--root", r]].concat()
    ));
    let j = json(&fs::read_to_string(journal(&root)).unwrap());
    let area = root
        .join("var/lib/aurum-node/undo")
        .join(j["undo"].as_str().unwrap());
    assert!(area.is_dir(), "{}", area.display());
    fs::remove_dir_all(&area).unwrap();
    // The journal of a second before the boot.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    // `bare`: no --repo either, the node alone.
    let out = env
        .bare(&["boot", "--root", r, "--cmdline", cmdline, "--json"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "boot without the undo area: {err} {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(err.contains("was interrupted on"), "{err}");
    let bt = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(bt["record"]["outcome"], "booted", "{bt}");
    assert!(
        bt["record"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("bringing the root to one revision failed: "),
        "{bt}"
    );
    assert_eq!(state(&env, &root)["boot"]["outcome"], "booted");
    assert!(journal(&root).exists());
    // Every --slurm run leaves it (scontrol is not needed to see that: the check fails first).
    let slurm = env
        .bare(&["health", "--root", r, "--slurm", "--json"])
        .output()
        .unwrap();
    assert!(!slurm.status.success());
    assert!(journal(&root).exists(), "health --slurm changed the root");
    // The boot's first health check, with the server, brings it back to r@1.
    let h = json(&env.ok(&["health", "--root", r, "--server", &url, "--json"]));
    assert_eq!(h["boot"]["outcome"], "booted", "{h}");
    assert!(
        h["boot"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("`aurum updateclient` to r@2 "),
        "{h}"
    );
    assert_eq!(h["health"]["healthy"], true, "{h}");
    assert!(!journal(&root).exists());
    assert_eq!(crate::update::node_diff(&a, &root), "");
    assert_eq!(state(&env, &root)["current"]["number"], 1);
}

/// Review finding: an update's commit saves state.json (naming the new revision), then prunes
/// the manifests, then removes its journal; killed in between, the journal was left on a
/// whole tree the state said was the new revision, and `aurum boot` undid the finished update
/// (back to the journal's `from`) and rebooted. `aurum updateclient` is killed as it removes
/// its journal (the state saved, the manifests pruned), and at each rename onto state.json;
/// where the kill left the state at r@2 with the journal still there, `aurum boot` must
/// finish the commit (no journal, the root exactly r@2, nothing undone, no reboot); after
/// every kill the root ends on exactly one revision.
#[test]
fn boot_finishes_an_update_killed_after_its_commit_saved_the_state() {
    if !need("strace") || !need("rsync") {
        return;
    }
    let env = Env::new();
    let (a, b) = (env.path("rev1"), env.path("rev2"));
    for i in 0..12 {
        let rel = format!("usr/share/d{}/f{i:02}", i % 3);
        crate::common::write_random(&a.join(&rel), i, 300);
        crate::common::write_random(&b.join(&rel), i + 1000, 300);
    }
    crate::common::sh(&format!(
        "mkdir -p {a}/var/lib {b}/var/lib && printf new > {b}/usr/only-in-2",
        a = a.display(),
        b = b.display()
    ));
    env.getimage(&a, "r", &[]);
    env.getimage(&b, "r", &[]);
    let at_1 = crate::update::node_at(&env, "at-1", "r@1");
    let update = ["updateclient", "--image", "r@2", "--no-default-excludes"];
    let cmdline = "root=LABEL=root ro";
    let (mut committed, mut kills) = (0, 0);
    let kill_points = [
        ("unlink,unlinkat", "journal.json", 1),
        ("rename,renameat,renameat2", "state.json", 1),
        ("rename,renameat,renameat2", "state.json", 2),
    ];
    for (calls, file, k) in kill_points {
        let when = format!("updateclient killed at {calls} {k} of {file}");
        let root = env.path("root");
        let _ = fs::remove_dir_all(&root);
        crate::common::sh(&format!("cp -a {} {}", at_1.display(), root.display()));
        let r = root.to_str().unwrap();
        let path = root.join("var/lib/aurum-node").join(file);
        let args = [&update[..], &["--root", r]].concat();
        if !killed_at(&env, calls, Some(&path), k, &args) {
            continue;
        }
        kills += 1;
        let journal = root.join("var/lib/aurum-node/journal.json");
        let at_2 = state(&env, &root)["current"]["number"] == 2 && journal.exists();
        let out = json(&env.ok(&["boot", "--root", r, "--cmdline", cmdline, "--json"]));
        assert!(!journal.exists(), "{when}: {out}");
        let number = state(&env, &root)["current"]["number"].as_u64().unwrap();
        let rev = if number == 2 { &b } else { &a };
        assert_eq!(crate::update::node_diff(rev, &root), "", "{when}");
        if at_2 {
            committed += 1;
            assert_eq!(number, 2, "{when}: the finished update was undone: {out}");
            assert_eq!(out["reboot"], false, "{when}: {out}");
            let why = out["record"]["reason"].as_str().unwrap();
            assert!(
                why.starts_with("`aurum updateclient` to r@2 ")
                    && why.contains("after it had committed"),
                "{when}: {why}"
            );
            assert_eq!(state(&env, &root)["current"]["number"], 2, "{when}");
        }
    }
    println!("{kills} kills, {committed} after the commit saved the state");
    assert!(
        committed > 0,
        "no kill landed after the commit saved the state"
    );
}

/// systemd-boot's part at one boot of the counting entry: `aurum-revision+LEFT[-DONE].conf`
/// renamed with one boot taken from LEFT and added to DONE (what systemd-boot does on the ESP
/// before the kernel starts); the new name.
fn systemd_boot_takes_a_try(esp: &Path) -> String {
    let entries = esp.join("loader/entries");
    let file = fs::read_dir(&entries)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .find(|f| f.starts_with("aurum-revision+"))
        .expect("a counting entry");
    let counter = file
        .strip_prefix("aurum-revision+")
        .and_then(|c| c.strip_suffix(".conf"))
        .unwrap();
    let (left, done) = match counter.split_once('-') {
        Some((l, d)) => (l.parse::<u32>().unwrap(), d.parse::<u32>().unwrap()),
        None => (counter.parse().unwrap(), 0),
    };
    let next = format!(
        "aurum-revision+{}-{}.conf",
        left.saturating_sub(1),
        done + 1
    );
    fs::rename(entries.join(&file), entries.join(&next)).unwrap();
    next
}

/// The kernel and initramfs (their text) that entry `file` of `esp` boots.
fn entry_kernel(esp: &Path, file: &str) -> (String, Option<String>) {
    let text = fs::read_to_string(esp.join("loader/entries").join(file)).unwrap();
    let on_esp = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|p| fs::read_to_string(esp.join(p.trim().trim_start_matches('/'))).unwrap())
    };
    (on_esp("linux ").expect("a linux line"), on_esp("initrd "))
}

/// The directories under the ESP's `aurum/`.
fn kernel_dirs(esp: &Path) -> Vec<String> {
    let mut v: Vec<String> = match fs::read_dir(esp.join("aurum")) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

fn entry_files(esp: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(esp.join("loader/entries"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A node booting with systemd-boot (its ESP at /boot/efi with `loader/loader.conf`): the new
/// revision gets an entry with the Boot Loader Specification's counter in its name and the
/// kernel copied to the ESP; a failing health check falls back at once; an entry that
/// reaches `+0` loses to the fallback entry and the node falls back; a passing one is blessed
/// by dropping the counter. systemd-boot's renames are played by the test; the ESP's files
/// are then put on a real vfat image (mtools) to check their names hold there.
#[test]
fn systemd_boot_entries_count_down_fall_back_and_are_blessed() {
    if !need("busybox") || !need("mkfs.vfat") || !need("mcopy") {
        return;
    }
    let env = Env::new();
    let g = env.path("golden");
    let sd_golden = |version: &str, healthy: bool| {
        golden(&g, version, healthy);
        fs::remove_dir_all(g.join("boot/grub")).unwrap();
        fs::create_dir_all(g.join("boot/efi/loader/entries")).unwrap();
        fs::write(
            g.join("boot/efi/loader/loader.conf"),
            "timeout 0\ndefault debian-*\n",
        )
        .unwrap();
        env.getimage(&g, "node", &[]);
    };
    sd_golden("1.0", true);
    sd_golden("2.0", false);
    sd_golden("3.0", true);
    let srv = Server::start(&env);
    let url = format!("http://{}", srv.addr);
    let root = env.path("root");
    fs::create_dir_all(&root).unwrap();
    let r = root.to_str().unwrap();
    let esp = root.join("boot/efi");
    let cmdline = "root=LABEL=root ro console=ttyS0";
    let update = |rev: &str| {
        env.ok(&[
            "updateclient",
            "--root",
            r,
            "--server",
            &url,
            "--image",
            rev,
            "--boot-tries",
            "2",
        ])
    };
    let boot = |cmdline: &str| {
        json(&env.ok(&[
            "boot",
            "--root",
            r,
            "--cmdline",
            cmdline,
            "--server",
            &url,
            "--json",
        ]))
    };
    let read = |p: &str| fs::read_to_string(esp.join(p)).unwrap();

    update("node@1");
    assert!(state(&env, &root).get("trial").is_none());
    assert!(entry_files(&esp).is_empty());

    // On trial: the counting entry for revision 2's kernel, the fallback entry for the kernel
    // the node ran, and loader.conf's default matching both (the image's default set aside).
    update("node@2");
    let s = state(&env, &root);
    assert_eq!(s["trial"]["bootloader"], "systemd-boot", "{s}");
    assert_eq!(
        entry_files(&esp),
        ["aurum-fallback.conf", "aurum-revision+2.conf"]
    );
    let entry = read("loader/entries/aurum-revision+2.conf");
    assert!(entry.starts_with("title aurum: node@2 "), "{entry}");
    assert!(
        entry.contains("linux /aurum/k-") && entry.contains(&format!("options {cmdline}\n")),
        "{entry}"
    );
    assert_eq!(
        entry_kernel(&esp, "aurum-revision+2.conf"),
        ("kernel 2.0\n".into(), Some("initrd 2.0\n".into()))
    );
    let fallback = read("loader/entries/aurum-fallback.conf");
    assert!(
        fallback.contains(&format!("options {cmdline} aurum.fallback\n"))
            && fallback.contains("linux /aurum/fallback/vmlinuz\n"),
        "{fallback}"
    );
    assert_eq!(read("aurum/fallback/vmlinuz"), "kernel 1.0\n");
    assert_eq!(
        read("loader/loader.conf"),
        "timeout 0\n#aurum-set-aside: default debian-*\ndefault aurum-*\n"
    );
    // The same files on a real ESP: a vfat filesystem keeps the names with their counter.
    let img = env.path("esp.img");
    crate::common::sh(&format!(
        "mkfs.vfat -C {i} 8192 >/dev/null && mcopy -s -i {i} {}/loader {}/aurum ::/ && \
         mren -i {i} ::/loader/entries/aurum-revision+2.conf aurum-revision+1-1.conf",
        esp.display(),
        esp.display(),
        i = img.display()
    ));
    let listed = crate::common::sh(&format!("mdir -b -i {} ::/loader/entries", img.display()));
    assert!(
        listed.contains("::/loader/entries/aurum-revision+1-1.conf")
            && listed.contains("::/loader/entries/aurum-fallback.conf"),
        "{listed}"
    );

    // Boot 1 of 2, and the health check fails: back to revision 1 at once; the revision entry
    // boots revision 1's kernel again, the fallback entry is gone.
    assert_eq!(systemd_boot_takes_a_try(&esp), "aurum-revision+1-1.conf");
    let b = boot(cmdline);
    assert_eq!(b["record"]["outcome"], "trial", "{b}");
    assert_eq!(b["record"]["tries_left"], 1, "{b}");
    let out = env.run(&["health", "--root", r, "--server", &url, "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let h = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(h["boot"]["outcome"], "fell-back", "{h}");
    assert_eq!(state(&env, &root)["current"]["number"], 1);
    assert_eq!(entry_files(&esp), ["aurum-revision.conf"]);
    assert_eq!(entry_kernel(&esp, "aurum-revision.conf").0, "kernel 1.0\n");
    assert!(!esp.join("aurum/fallback").exists());
    // Revision 2's kernel went with its entry: one directory, the one the entry boots.
    assert_eq!(kernel_dirs(&esp).len(), 1, "{:?}", kernel_dirs(&esp));
    assert!(read("loader/entries/aurum-revision.conf").contains(&format!("options {cmdline}\n")));

    // Revision 2 again, never healthy: two boots take the entry to +0, systemd-boot then
    // boots the fallback entry, and `aurum boot` puts the node back.
    update("node@2");
    for left in [1, 0] {
        systemd_boot_takes_a_try(&esp);
        let b = boot(cmdline);
        assert_eq!(b["record"]["tries_left"], left, "{b}");
    }
    assert_eq!(
        entry_files(&esp),
        ["aurum-fallback.conf", "aurum-revision+0-2.conf"]
    );
    let b = boot(&format!("{cmdline} aurum.fallback"));
    assert_eq!(b["record"]["outcome"], "fell-back", "{b}");
    assert_eq!(b["reboot"], true);
    let reason = b["record"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("did not pass its health checks in 2 boots: systemd-boot booted"),
        "{reason}"
    );
    assert_eq!(state(&env, &root)["current"]["number"], 1);
    assert_eq!(entry_files(&esp), ["aurum-revision.conf"]);
    let nodes = json(&env.ok(&["nodes", "--json"]));
    assert_eq!(nodes[0]["boot"]["fell_back"], true, "{nodes}");

    // Revision 3 passes on its first boot: blessed, the counter dropped from the name.
    update("node@3");
    systemd_boot_takes_a_try(&esp);
    boot(cmdline);
    let h = json(&env.ok(&["health", "--root", r, "--server", &url, "--json"]));
    assert_eq!(h["boot"]["outcome"], "blessed", "{h}");
    assert_eq!(entry_files(&esp), ["aurum-revision.conf"]);
    assert_eq!(entry_kernel(&esp, "aurum-revision.conf").0, "kernel 3.0\n");
    assert!(read("loader/entries/aurum-revision.conf").starts_with("title aurum: node@3 "));
    assert!(!esp.join("aurum/fallback").exists());
    assert_eq!(kernel_dirs(&esp).len(), 1, "{:?}", kernel_dirs(&esp));
    let s = state(&env, &root);
    assert_eq!(s["last_known_good"]["number"], 3, "{s}");
    assert!(s.get("trial").is_none(), "{s}");

    // A rollback after the blessing (no trial): aurum's entry still boots, so it must boot
    // the kernel the root now has, not revision 3's.
    env.ok(&["rollback", "--root", r, "--server", &url, "--to", "node@1"]);
    assert_eq!(state(&env, &root)["current"]["number"], 1);
    assert_eq!(entry_files(&esp), ["aurum-revision.conf"]);
    assert_eq!(entry_kernel(&esp, "aurum-revision.conf").0, "kernel 1.0\n");
    assert!(read("loader/entries/aurum-revision.conf").starts_with("title aurum: node@1 "));
    // And an update without boot tries likewise.
    env.ok(&[
        "updateclient",
        "--root",
        r,
        "--server",
        &url,
        "--image",
        "node@3",
    ]);
    assert_eq!(entry_kernel(&esp, "aurum-revision.conf").0, "kernel 3.0\n");
    assert_eq!(kernel_dirs(&esp).len(), 1, "{:?}", kernel_dirs(&esp));
    assert!(read("loader/entries/aurum-revision.conf").starts_with("title aurum: node@3 "));
}

/// The revision number a title of aurum's entries names (`aurum: node@3 ...`, `aurum: fall
/// back to node@2 ...`).
fn titled_number(esp: &Path, file: &str) -> String {
    let text = fs::read_to_string(esp.join("loader/entries").join(file)).unwrap();
    let title = text.lines().next().unwrap_or_default();
    let after = title
        .split("node@")
        .nth(1)
        .unwrap_or_else(|| panic!("{file}: {title}"));
    after.chars().take_while(char::is_ascii_digit).collect()
}

/// Every entry on `esp` boots the kernel and initramfs of the revision its title names, whole;
/// every directory under `aurum/` is one an entry boots (or a leftover, when `leftovers`).
fn entries_boot_their_own_kernels(esp: &Path, when: &str, leftovers: bool) {
    let mut named = Vec::new();
    for file in entry_files(esp) {
        let n = titled_number(esp, &file);
        let (kernel, initrd) = entry_kernel(esp, &file);
        let initrd = initrd.unwrap_or_default();
        assert_eq!(
            kernel,
            format!("kernel {n}.0\n"),
            "{when}: {file} boots the wrong kernel"
        );
        assert!(
            initrd.starts_with(&format!("initrd {n}.0\n")) && initrd.len() == BIG_INITRD + 11,
            "{when}: {file} boots the wrong or a partial initramfs ({} bytes, {:?})",
            initrd.len(),
            initrd.get(..11)
        );
        let text = fs::read_to_string(esp.join("loader/entries").join(&file)).unwrap();
        let linux = text
            .lines()
            .find_map(|l| l.strip_prefix("linux /aurum/"))
            .unwrap();
        named.push(linux.split('/').next().unwrap().to_string());
    }
    if !leftovers {
        named.sort();
        named.dedup();
        assert_eq!(
            kernel_dirs(esp),
            named,
            "{when}: kernels no entry boots are left"
        );
    }
}

/// Bytes of the initramfs of [`killed_kernel_copies_leave_every_entry_booting_its_own_kernel`]
/// after its first line: big enough that copying it to the ESP takes a while after the kernel
/// landed, so the kill lands in between.
const BIG_INITRD: usize = 48 << 20;

/// Runs aurum with `args` and SIGKILLs it the moment a new kernel file lands in a directory of
/// the ESP's `aurum/` other than the fallback's (while its initramfs is still being copied);
/// panics when it was not killed.
fn killed_at_new_kernel(env: &Env, esp: &Path, args: &[&str]) {
    let kernels = || -> Vec<(String, u64)> {
        use std::os::unix::fs::MetadataExt;
        kernel_dirs(esp)
            .into_iter()
            .filter(|d| d != "fallback")
            .filter_map(|d| {
                let m = fs::metadata(esp.join("aurum").join(&d).join("vmlinuz")).ok()?;
                Some((d, m.ino()))
            })
            .collect()
    };
    let before = kernels();
    let mut child = env
        .cmd(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        if kernels().iter().any(|k| !before.contains(k)) {
            break;
        }
        std::hint::spin_loop();
    }
    let _ = child.kill();
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "aurum {args:?} was not killed while it copied the kernel ({status})"
    );
}

/// The kernel command line of the systemd-boot nodes of [`systemd_boot_node`].
const SD_CMDLINE: &str = "root=LABEL=root ro console=ttyS0";

/// Three revisions, `node@1` to `node@3` (kernels 1.0 to 3.0), of a golden client that boots
/// with systemd-boot (its ESP at /boot/efi), each initramfs [`BIG_INITRD`] bytes past its
/// first line; and an empty node root for them: the root, and its ESP.
fn systemd_boot_node(env: &Env) -> (PathBuf, PathBuf) {
    let g = env.path("golden");
    for v in ["1.0", "2.0", "3.0"] {
        golden(&g, v, true);
        fs::remove_dir_all(g.join("boot/grub")).unwrap();
        let mut initrd = format!("initrd {v}\n").into_bytes();
        initrd.resize(initrd.len() + BIG_INITRD, 0);
        fs::write(g.join(format!("boot/initrd.img-{v}")), initrd).unwrap();
        fs::create_dir_all(g.join("boot/efi/loader/entries")).unwrap();
        fs::write(g.join("boot/efi/loader/loader.conf"), "timeout 0\n").unwrap();
        env.getimage(&g, "node", &[]);
    }
    let root = env.path("root");
    fs::create_dir_all(&root).unwrap();
    let esp = root.join("boot/efi");
    (root, esp)
}

/// Review finding (systemd-boot trial order): the revision's kernel was copied over
/// `aurum/revision/` on the ESP before the counting entry was written, so a kill in between
/// left the entry before it booting the new kernel with no trial. Now the kernel goes into a
/// fresh directory first. An update with a trial and a rollback (which copies the root's kernel
/// again) are killed the moment the new kernel lands on the ESP, while its 48 MiB initramfs is
/// still being copied: every entry must still boot the kernel and initramfs of the revision it
/// names. After the killed update, the next boot (revision 2's kernel on revision 3's root)
/// is not counted and its health check blesses nothing (review finding: it blessed revision 3,
/// whose kernel had never booted, and dropped the fallback): `aurum boot` writes the counting
/// entry and asks for a reboot, and the boot through that entry is the trial the health check
/// blesses. The killed rollback run again points the entry at the root's kernel; no kernel is
/// left that no entry boots.
#[test]
fn killed_kernel_copies_leave_every_entry_booting_its_own_kernel() {
    if !need("busybox") {
        return;
    }
    let env = Env::new();
    let (root, esp) = systemd_boot_node(&env);
    let srv = Server::start(&env);
    let url = format!("http://{}", srv.addr);
    let r = root.to_str().unwrap();
    let cmdline = SD_CMDLINE;
    let update = |rev: &str| -> Vec<String> {
        [
            "updateclient",
            "--root",
            r,
            "--server",
            &url,
            "--image",
            rev,
            "--boot-tries",
            "2",
        ]
        .map(String::from)
        .to_vec()
    };
    let boot_and_bless = || {
        env.ok(&["boot", "--root", r, "--cmdline", cmdline]);
        let h = json(&env.ok(&["health", "--root", r, "--json"]));
        assert_eq!(h["boot"]["outcome"], "blessed", "{h}");
    };
    let ok = |v: Vec<String>| env.ok(&v.iter().map(String::as_str).collect::<Vec<_>>());
    ok(update("node@1"));
    ok(update("node@2"));
    systemd_boot_takes_a_try(&esp);
    boot_and_bless();
    assert_eq!(entry_files(&esp), ["aurum-revision.conf"]);
    entries_boot_their_own_kernels(&esp, "revision 2 blessed", false);

    // Killed while revision 3's kernel is copied for its trial: the blessed entry of revision 2
    // still boots revision 2's kernel. That boot is not the trial's: `aurum boot` writes the
    // counting entry (and the fallback's) and asks for a reboot; a health check then blesses
    // nothing. The boot through the counting entry is the trial, and its check blesses 3.
    let up3 = update("node@3");
    killed_at_new_kernel(
        &env,
        &esp,
        &up3.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    entries_boot_their_own_kernels(&esp, "update to 3 killed", true);
    let b = json(&env.ok(&["boot", "--root", r, "--cmdline", cmdline, "--json"]));
    assert_eq!(b["reboot"], true, "{b}");
    assert_eq!(b["record"]["outcome"], "booted", "{b}");
    assert!(
        b["record"]["reason"]
            .as_str()
            .unwrap()
            .contains("had no counting entry"),
        "{b}"
    );
    let h = json(&env.ok(&["health", "--root", r, "--json"]));
    assert_ne!(h["boot"]["outcome"], "blessed", "{h}");
    let files = entry_files(&esp);
    assert!(
        files.iter().any(|f| f.starts_with("aurum-revision+2"))
            && files.contains(&"aurum-fallback.conf".to_string()),
        "{files:?}"
    );
    entries_boot_their_own_kernels(&esp, "the trial's beginning finished by boot", true);
    systemd_boot_takes_a_try(&esp);
    boot_and_bless();
    assert_eq!(state(&env, &root)["current"]["number"], 3);
    assert_eq!(entry_files(&esp), ["aurum-revision.conf"]);
    assert_eq!(titled_number(&esp, "aurum-revision.conf"), "3");
    entries_boot_their_own_kernels(&esp, "revision 3 blessed after the kill", false);

    // A rollback copies the root's kernel again: killed while it does, the entry still boots
    // revision 3's; run again, it boots revision 1's.
    let back = ["rollback", "--root", r, "--server", &url, "--to", "node@1"];
    killed_at_new_kernel(&env, &esp, &back);
    entries_boot_their_own_kernels(&esp, "rollback to 1 killed", true);
    env.ok(&back);
    assert_eq!(state(&env, &root)["current"]["number"], 1);
    assert_eq!(titled_number(&esp, "aurum-revision.conf"), "1");
    entries_boot_their_own_kernels(&esp, "rollback to 1 run again", false);
}

/// Review finding: an update during a systemd-boot trial commits the new root, then begins
/// its trial; killed in between, the state's trial names the revision before while the root is
/// the new one. The next boot ran that revision's kernel (its counting entry) on the new root:
/// `aurum boot` ends the stale trial, points the entry at the root's kernel, and must reboot
/// into it (it did not, off the fallback revision). The kill is made by hand: the trial in
/// state.json is set back to the revision before, as the update left it.
#[test]
fn an_update_killed_before_its_trial_began_reboots_into_the_roots_kernel() {
    if !need("busybox") {
        return;
    }
    let env = Env::new();
    let (root, esp) = systemd_boot_node(&env);
    let r = root.to_str().unwrap();
    let cmdline = SD_CMDLINE;
    let update = |rev: &str| {
        env.ok(&[
            "updateclient",
            "--root",
            r,
            "--image",
            rev,
            "--boot-tries",
            "2",
        ]);
    };
    update("node@1");
    update("node@2");
    systemd_boot_takes_a_try(&esp);
    let b = json(&env.ok(&["boot", "--root", r, "--cmdline", cmdline, "--json"]));
    assert_eq!(b["record"]["outcome"], "trial", "{b}");
    let on_trial = state(&env, &root)["trial"]["revision"].clone();
    update("node@3");
    let path = root.join("var/lib/aurum-node/state.json");
    let mut s: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    assert_eq!(s["trial"]["revision"]["number"], 3, "{s}");
    s["trial"]["revision"] = on_trial;
    fs::write(&path, serde_json::to_vec(&s).unwrap()).unwrap();

    let b = json(&env.ok(&["boot", "--root", r, "--cmdline", cmdline, "--json"]));
    assert_eq!(b["reboot"], true, "{b}");
    assert_eq!(b["record"]["outcome"], "booted", "{b}");
    let s = state(&env, &root);
    assert!(s.get("trial").is_none(), "{s}");
    assert_eq!(s["current"]["number"], 3, "{s}");
    assert_eq!(entry_files(&esp), ["aurum-revision.conf"]);
    assert_eq!(titled_number(&esp, "aurum-revision.conf"), "3");
    entries_boot_their_own_kernels(&esp, "the stale trial ended", false);
}

/// The node's `/sbin/init`: network, `aurum boot`, `aurum health`, power off. A fallback
/// reboots from inside `aurum boot` or `aurum health` (`/sbin/reboot`), which ends the QEMU
/// run (`-no-reboot`): the test starts the next boot.
const NODE_INIT: &str = r#"#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /tmp /run
exec </dev/console >/dev/console 2>&1
hostname -F /etc/hostname
echo "aurum-test: up on $(cat /etc/motd)"
ifconfig eth0 up
udhcpc -i eth0 -n -q -t 5 -T 2 -s /etc/udhcpc.script >/dev/null 2>&1 || echo "aurum-test: no DHCP"
if [ -e /etc/aurum-test-esp ]; then
    mount -t vfat /dev/vda1 /boot/efi && echo "aurum-test: ESP mounted"
fi
aurum --no-progress boot || echo "aurum-test: aurum boot failed"
aurum --no-progress health || echo "aurum-test: unhealthy"
echo "aurum-test: boot over"
sync
poweroff -f
"#;

/// The node's initramfs `/init`: the disk and filesystem modules, then the root from `root=`.
const INITRAMFS_INIT: &str = r#"#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t devtmpfs devtmpfs /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
while read -r m; do insmod "$m" 2>/dev/null; done < /etc/aurum-modules
root=$(sed -n 's/.*root=\([^ ]*\).*/\1/p' /proc/cmdline)
mkdir -p /newroot
for i in 1 2 3 4 5 6 7 8 9 10; do
    mount -t ext4 "$root" /newroot 2>/dev/null && break
    sleep 1
done
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
"#;

/// An initramfs that cannot boot the node: its `/init` gives up (the kernel panics, and
/// `panic=1` reboots).
const BROKEN_INIT: &str = "#!/bin/sh\necho 'aurum-test: this initramfs cannot boot'\nexit 1\n";

/// The node's GRUB configuration (what grub-mkconfig would write, reduced). `no_timer_check`:
/// under TCG on a loaded host the kernel's IO-APIC timer check can fail and panic a boot that
/// should have reached the initramfs (seen in a run of this test).
const GRUB_CFG: &str = r#"set timeout=0
set default=0
if [ -s $prefix/grubenv ]; then
  load_env
fi
menuentry 'aurum test node' {
  linux /boot/vmlinuz root=/dev/vda2 console=ttyS0 panic=1 no_timer_check
  initrd /boot/initrd.img
}
if [ -f $prefix/custom.cfg ]; then
  source $prefix/custom.cfg
fi
"#;

/// The UEFI node's disk: an ESP (made, not mounted: this host's kernel may not mount vfat) and
/// an ext4 root. The BIOS node is installed with the shipped `bios-legacy` class instead.
const UEFI_TEMPLATE: &str = r#"description = "boot counting test node (UEFI)"

[[disk]]

[[disk.partition]]
name = "esp"
type = "efi"
size = "16MiB"
fs = "vfat"
label = "ESP"

[[disk.partition]]
name = "root"
size = "*"
fs = "ext4"
label = "root"
mount = "/"
"#;

/// What runs GRUB's BIOS setup: it writes boot.img into the MBR and core.img into the
/// bios-boot partition (grub-install --target=i386-pc runs it; it needs a device, which a
/// disk image in a container without partition loop devices cannot give grub-install).
const GRUB_BIOS_SETUP: &str = "/usr/lib/grub/i386-pc/grub-bios-setup";

/// The node's firmware: the same scenario runs on both.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Firmware {
    /// SeaBIOS, GRUB i386-pc from the MBR and the bios-boot partition of a `bios-legacy` class
    /// install.
    Bios,
    /// OVMF, GRUB x86_64-efi from the ESP's removable-media path.
    Uefi,
}

fn sh_ok(script: &str) -> String {
    crate::common::sh(script)
}

fn executable(p: &Path, text: &str) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    let _ = fs::remove_file(p);
    fs::write(p, text).unwrap();
    fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
}

/// cpio newc + gzip of `dir` into `out`.
fn pack_initramfs(dir: &Path, out: &Path) {
    sh_ok(&format!(
        "cd {} && find . | cpio -o -H newc --quiet | gzip -1 > {}",
        dir.display(),
        out.display()
    ));
}

/// A revision of the QEMU node's golden client: the boot kit's tree (busybox, aurum with its
/// libraries, the kernel modules) as its root, with its own init, GRUB's configuration, a
/// kernel and initramfs (`broken`: one that cannot boot), and a health check.
struct NodeImage {
    kit_tree: std::path::PathBuf,
    kernel: std::path::PathBuf,
    initrd: std::path::PathBuf,
    broken_initrd: std::path::PathBuf,
    server: String,
}

impl NodeImage {
    fn write(&self, root: &Path, label: &str, healthy: bool, broken: bool) {
        let _ = fs::remove_dir_all(root);
        sh_ok(&format!(
            "cp -a {}/. {}",
            self.kit_tree.display(),
            root.display()
        ));
        let _ = fs::remove_file(root.join("init"));
        executable(&root.join("sbin/init"), NODE_INIT);
        executable(
            &root.join("sbin/reboot"),
            "#!/bin/sh\nsync\nexec busybox reboot -f\n",
        );
        let boot = root.join("boot");
        fs::create_dir_all(boot.join("grub")).unwrap();
        fs::create_dir_all(boot.join("efi")).unwrap();
        fs::copy(&self.kernel, boot.join("vmlinuz-6.1-test")).unwrap();
        let initrd = if broken {
            &self.broken_initrd
        } else {
            &self.initrd
        };
        fs::copy(initrd, boot.join("initrd.img-6.1-test")).unwrap();
        std::os::unix::fs::symlink("vmlinuz-6.1-test", boot.join("vmlinuz")).unwrap();
        std::os::unix::fs::symlink("initrd.img-6.1-test", boot.join("initrd.img")).unwrap();
        fs::write(boot.join("grub/grub.cfg"), GRUB_CFG).unwrap();
        fs::create_dir_all(root.join("etc/kernel")).unwrap();
        fs::write(
            root.join("etc/kernel/cmdline"),
            "root=/dev/vda2 console=ttyS0 panic=1 no_timer_check\n",
        )
        .unwrap();
        fs::create_dir_all(root.join("etc/aurum")).unwrap();
        fs::write(
            root.join("etc/aurum/node.toml"),
            format!("server = \"{}\"\n", self.server),
        )
        .unwrap();
        let body = if healthy {
            "echo the app answers"
        } else {
            "echo the app does not answer on port 8080; exit 3"
        };
        executable(
            &root.join("etc/aurum/health/required.d/10-app"),
            &format!("#!/bin/sh\n{body}\n"),
        );
        fs::write(root.join("etc/motd"), format!("{label}\n")).unwrap();
    }
}

/// Boots the QEMU node from its disk once (SeaBIOS or OVMF, then GRUB from the disk), until
/// it powers off or reboots; returns the serial console and the seconds it took.
fn boot_node(env: &Env, fw: Firmware, disk: &Path, n: usize) -> (String, f64) {
    let log = env.path(&format!("serial-{n}.log"));
    let started = std::time::Instant::now();
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(crate::qemu::machine());
    if fw == Firmware::Uefi {
        cmd.args(crate::qemu::pflash(&env.path("OVMF_VARS.fd")));
    }
    let mut qemu = crate::qemu::spawn(
        cmd.arg("-drive")
            .arg(format!(
                "file={},format=raw,if=none,id=d0,cache=unsafe",
                disk.display()
            ))
            .args(["-device", "virtio-blk-pci,drive=d0,bootindex=0"])
            .args(["-netdev", "user,id=n0,net=10.0.2.0/24"])
            .args([
                "-device",
                &format!("virtio-net-pci,netdev=n0,mac={},romfile=", crate::pxe::MAC),
            ])
            .stderr(std::process::Stdio::null()),
        &log,
    );
    let wait = crate::qemu::Wait {
        started,
        limit: std::time::Duration::from_secs(300),
        poll: std::time::Duration::from_millis(250),
        lines: 60,
    };
    wait.exit(&mut qemu, &log, |_| None)
        .unwrap_or_else(|why| panic!("{fw:?} boot {n}: {why}"));
    let secs = started.elapsed().as_secs_f64();
    eprintln!("{fw:?} boot {n}: {secs:.1} s");
    (
        String::from_utf8_lossy(&fs::read(&log).unwrap()).into_owned(),
        secs,
    )
}

/// The byte offset of partition `n` of `disk`.
fn partition_offset(disk: &Path, n: u32) -> u64 {
    let info = sh_ok(&format!("sgdisk -i {n} {}", disk.display()));
    let first: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("First sector: "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .expect("sgdisk names the first sector");
    first * 512
}

/// Runs `f` with the node's root filesystem (partition 2 in both layouts) mounted (the node
/// is off).
fn with_root<T>(env: &Env, disk: &Path, f: impl FnOnce(&Path) -> T) -> T {
    let mnt = env.path("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let offset = partition_offset(disk, 2);
    sh_ok(&format!(
        "mount -o loop,offset={offset} {} {}",
        disk.display(),
        mnt.display()
    ));
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mnt)));
    sh_ok(&format!("umount {}", mnt.display()));
    out.unwrap_or_else(|e| std::panic::resume_unwind(e))
}

fn last_boot(env: &Env) -> serde_json::Value {
    json(&env.ok(&["nodes", "--json"]))
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["hostname"] == "vm1")
        .cloned()
        .unwrap_or_default()
}

/// Installs `node@1` onto a new disk for `fw` and puts GRUB on it as grub-install would:
/// UEFI, GRUB at the ESP's removable-media path (with mtools); BIOS, a `bios-legacy` class
/// install with GRUB's boot.img in the MBR and core.img in the bios-boot partition (with
/// grub-bios-setup). GRUB's own files are built in, its prefix the root's `/boot/grub`.
fn install_node(env: &Env, fw: Firmware) -> std::path::PathBuf {
    let (platform, class, size, modules) = match fw {
        Firmware::Uefi => {
            let t = env.path("node.toml");
            fs::write(&t, UEFI_TEMPLATE).unwrap();
            env.ok(&["template", "import", t.to_str().unwrap()]);
            ("x86_64-efi", "node", 384u64 << 20, "efi_gop all_video")
        }
        // The class's smallest disk: 12 GiB, sparse.
        Firmware::Bios => ("i386-pc", "bios-legacy", 12u64 << 30, "biosdisk"),
    };
    let disk = env.path("disk.raw");
    fs::File::create(&disk).unwrap().set_len(size).unwrap();
    env.ok(&[
        "install",
        "--disk",
        disk.to_str().unwrap(),
        "--image",
        "node@1",
        "--class",
        class,
        "--hostname",
        "vm1",
    ]);
    let image = env.path("grub.img");
    sh_ok(&format!(
        "grub-mkimage -O {platform} -o {} -p '(hd0,gpt2)/boot/grub' part_gpt ext2 normal \
         linux echo test loadenv configfile search gzio serial terminal sleep {modules}",
        image.display()
    ));
    match fw {
        Firmware::Uefi => {
            let esp = format!("{}@@{}", disk.display(), partition_offset(&disk, 1));
            sh_ok(&format!(
                "mmd -i {esp} ::/EFI ::/EFI/BOOT && mcopy -i {esp} {} ::/EFI/BOOT/BOOTX64.EFI",
                image.display()
            ));
            fs::copy(crate::pxe::OVMF_VARS, env.path("OVMF_VARS.fd")).unwrap();
        }
        Firmware::Bios => with_root(env, &disk, |root| {
            // grub-bios-setup finds the root of its directory in the device map: the loop
            // device the root is mounted from. The images go away again: the MBR and the
            // bios-boot partition hold them now, and updates would delete them.
            let dir = root.join("aurum-test-grub");
            fs::create_dir_all(&dir).unwrap();
            fs::copy(&image, dir.join("core.img")).unwrap();
            fs::copy("/usr/lib/grub/i386-pc/boot.img", dir.join("boot.img")).unwrap();
            let loopdev = sh_ok(&format!("findmnt -no SOURCE {}", root.display()));
            let map = env.path("device.map");
            fs::write(
                &map,
                format!("(hd0) {}\n(hd1) {}\n", disk.display(), loopdev.trim()),
            )
            .unwrap();
            sh_ok(&format!(
                "{GRUB_BIOS_SETUP} -d {} -m {} {}",
                dir.display(),
                map.display(),
                disk.display()
            ));
            fs::remove_dir_all(&dir).unwrap();
        }),
    }
    disk
}

/// A QEMU node installed with GRUB on `fw`, booted from its disk: a revision whose health
/// check fails goes back to last-known-good by itself; one whose initramfs cannot boot does
/// after its 2 tries (GRUB's counter, then GRUB's fallback entry); a good one is blessed.
/// Each outcome reaches the server as a boot report. 6 boots.
fn falls_back_by_itself(fw: Firmware) {
    let tools = [
        "qemu-system-x86_64",
        "grub-mkimage",
        "grub-editenv",
        "busybox",
        "cpio",
        "depmod",
        "sgdisk",
        "mkfs.ext4",
        "mkfs.vfat",
        "mcopy",
        "mkswap",
        "findmnt",
        "apt-get",
        "dpkg",
    ];
    if tools.iter().any(|t| !need(t)) {
        return;
    }
    let firmware_files = match fw {
        Firmware::Uefi => [crate::pxe::OVMF_CODE, "/usr/lib/grub/x86_64-efi/linux.mod"],
        Firmware::Bios => [GRUB_BIOS_SETUP, "/usr/lib/grub/i386-pc/linux.mod"],
    };
    if !crate::common::is_root() || firmware_files.iter().any(|f| !Path::new(f).exists()) {
        crate::common::skip(&format!(
            "needs root (loop mounts) and {firmware_files:?} (packages ovmf, \
             grub-efi-amd64-bin, grub-pc-bin)"
        ));
        return;
    }
    let started = std::time::Instant::now();
    let env = Env::new();
    let kit = crate::pxe::build_kit(&env);
    let kit_tree = env.path("kit-tree");
    fs::create_dir_all(&kit_tree).unwrap();
    sh_ok(&format!(
        "cd {} && zcat {}/initrd.img | cpio -id --quiet",
        kit_tree.display(),
        kit.display()
    ));
    // The node's initramfs: the kit's tree with an init that mounts the disk's root (and
    // loads the virtio-net and vfat modules: the root's init loads none), without what only
    // the root uses (aurum and its libraries; busybox is static) and modules this machine
    // does not need: 18 MB less for GRUB to read through the firmware at each boot.
    let ird = env.path("initrd-tree");
    sh_ok(&format!(
        "cp -a {}/. {i} && cd {i} && rm -rf usr/bin/aurum lib/x86_64-linux-gnu lib64 && \
         cd lib/modules/*/kernel && rm -rf fs/xfs drivers/net/ethernet \
         drivers/net/phy drivers/net/mdio.ko drivers/md drivers/ata drivers/nvme drivers/dca \
         drivers/i2c",
        kit_tree.display(),
        i = ird.display(),
    ));
    executable(&ird.join("init"), INITRAMFS_INIT);
    let initrd = env.path("initrd.img");
    pack_initramfs(&ird, &initrd);
    let bad = env.path("broken-tree");
    fs::create_dir_all(bad.join("bin")).unwrap();
    fs::copy(kit_tree.join("bin/busybox"), bad.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", bad.join("bin/sh")).unwrap();
    executable(&bad.join("init"), BROKEN_INIT);
    let broken_initrd = env.path("broken-initrd.img");
    pack_initramfs(&bad, &broken_initrd);

    let srv = Server::start(&env);
    let port = srv.addr.rsplit(':').next().unwrap().to_string();
    let image = NodeImage {
        kit_tree,
        kernel: crate::pxe::debian_kernel().0,
        initrd,
        broken_initrd,
        server: format!("http://10.0.2.2:{port}"),
    };
    let g = env.path("golden");
    for (label, healthy, broken) in [
        ("revision 1 (good)", true, false),
        ("revision 2 (fails its health check)", false, false),
        ("revision 3 (cannot boot)", true, true),
        ("revision 4 (good)", true, false),
    ] {
        image.write(&g, label, healthy, broken);
        env.getimage(&g, "node", &[]);
    }
    let disk = install_node(&env, fw);
    let url = format!("http://{}", srv.addr);
    let update = |rev: &str| {
        with_root(&env, &disk, |root| {
            env.ok(&[
                "updateclient",
                "--root",
                root.to_str().unwrap(),
                "--server",
                &url,
                "--image",
                rev,
                "--boot-tries",
                "2",
            ])
        })
    };
    let _guest = crate::pxe::ONE_GUEST
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let guest_started = std::time::Instant::now();
    let mut times = Vec::new();
    let mut boot = || {
        let (s, secs) = boot_node(&env, fw, &disk, times.len() + 1);
        times.push(secs);
        s
    };

    // First boot from the disk: revision 1, no trial.
    let s = boot();
    assert!(
        s.contains("aurum-test: up on revision 1"),
        "{}",
        tail_of(&s)
    );
    assert!(s.contains("boot: node@1"), "{}", tail_of(&s));
    assert!(s.contains("aurum-test: boot over"), "{}", tail_of(&s));
    assert_eq!(last_boot(&env)["boot"]["outcome"], "booted");

    // Revision 2 fails its health check on its first boot: back to revision 1 at once (the
    // restored root is checked on the disk: it is the tree revision 1 booted from).
    update("node@2");
    let s = boot();
    assert!(
        s.contains("aurum-test: up on revision 2"),
        "{}",
        tail_of(&s)
    );
    assert!(s.contains("rebooting into it"), "{}", tail_of(&s));
    let n = last_boot(&env);
    assert_eq!(n["boot"]["fell_back"], true, "{n}");
    assert!(
        n["boot"]["reason"]
            .as_str()
            .unwrap()
            .contains("10-app (exit 3: the app does not answer on port 8080)"),
        "{n}"
    );
    assert!(
        n["boot"]["booted"].as_str().unwrap().starts_with("node@1 "),
        "{n}"
    );
    with_root(&env, &disk, |root| {
        let s = state(&env, root);
        assert_eq!(s["current"]["number"], 1, "{s}");
        assert!(s.get("trial").is_none(), "{s}");
        assert_eq!(
            fs::read_to_string(root.join("etc/motd")).unwrap(),
            "revision 1 (good)\n"
        );
    });

    // Revision 3's initramfs cannot boot: two boots panic, then GRUB boots the fallback entry
    // (revision 1's kernel and initramfs, kept), and the node puts revision 1 back itself.
    update("node@3");
    let fallback_started = std::time::Instant::now();
    for _ in 0..2 {
        let s = boot();
        assert!(s.contains("this initramfs cannot boot"), "{}", tail_of(&s));
    }
    let s = boot();
    assert!(s.contains("aurum.fallback"), "{}", tail_of(&s));
    assert!(s.contains("rebooting into it"), "{}", tail_of(&s));
    let to_fallback = fallback_started.elapsed().as_secs_f64();
    let n = last_boot(&env);
    assert_eq!(n["boot"]["fell_back"], true, "{n}");
    assert!(
        n["boot"]["reason"].as_str().unwrap().contains("node@3")
            && n["boot"]["reason"].as_str().unwrap().contains("in 2 boots"),
        "{n}"
    );
    with_root(&env, &disk, |root| {
        let s = state(&env, root);
        assert_eq!(s["current"]["number"], 1, "{s}");
        assert!(s.get("trial").is_none(), "{s}");
        assert_eq!(
            fs::read_to_string(root.join("etc/motd")).unwrap(),
            "revision 1 (good)\n"
        );
    });

    // Revision 4 is good: its first boot (GRUB's own entry again: the fallback cleared the
    // counter) passes the health check and blesses it.
    update("node@4");
    let s = boot();
    assert!(
        s.contains("aurum-test: up on revision 4"),
        "{}",
        tail_of(&s)
    );
    let n = last_boot(&env);
    assert_eq!(n["boot"]["outcome"], "blessed", "{n}");
    with_root(&env, &disk, |root| {
        let s = state(&env, root);
        assert_eq!(s["last_known_good"]["number"], 4, "{s}");
        assert!(s.get("trial").is_none(), "{s}");
    });
    let times: Vec<String> = times.iter().map(|t| format!("{t:.0}")).collect();
    eprintln!(
        "{fw:?}: {} boots ({} s), {:.0} s with the guest, fallback of a revision that cannot \
         boot {to_fallback:.0} s after its update; whole test {:.0} s",
        times.len(),
        times.join(" + "),
        guest_started.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn qemu_uefi_node_falls_back_by_itself_and_blesses_a_good_revision() {
    falls_back_by_itself(Firmware::Uefi);
}

#[test]
fn qemu_bios_node_falls_back_by_itself_and_blesses_a_good_revision() {
    falls_back_by_itself(Firmware::Bios);
}

/// The systemd-boot node's disk: an ESP big enough for three kernels and initramfs, and the
/// root.
const SD_TEMPLATE: &str = r#"description = "boot counting test node (systemd-boot)"

[[disk]]

[[disk.partition]]
name = "esp"
type = "efi"
size = "64MiB"
fs = "vfat"
label = "ESP"

[[disk.partition]]
name = "root"
size = "*"
fs = "ext4"
label = "root"
mount = "/"
"#;

/// systemd-boot for UEFI, from Debian's package (unpacked once into the test cache).
fn systemd_boot_efi() -> std::path::PathBuf {
    static ONCE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _once = ONCE.lock().unwrap_or_else(|e| e.into_inner());
    let cache = Path::new("/var/cache/aurum-test/systemd-boot-efi");
    let efi = cache.join("usr/lib/systemd/boot/efi/systemd-bootx64.efi");
    if !efi.exists() {
        sh_ok(&format!(
            "cd /var/cache/aurum-test && (ls systemd-boot-efi_*.deb >/dev/null 2>&1 || \
             apt-get download -q systemd-boot-efi >&2) && rm -rf {c}.tmp && \
             dpkg -x systemd-boot-efi_*.deb {c}.tmp && mv {c}.tmp {c}",
            c = cache.display()
        ));
    }
    efi
}

/// The node's ESP as mtools names it.
fn esp_of(disk: &Path) -> String {
    format!("{}@@{}", disk.display(), partition_offset(disk, 1))
}

/// The update runs on the host, whose kernel may not mount vfat: the ESP's aurum and
/// loader directories are copied into the root's `/boot/efi` (the mount point, on the root
/// filesystem) for it, and back onto the ESP after it. On the node, the ESP is mounted there.
fn update_through_esp(env: &Env, disk: &Path, url: &str, rev: &str) {
    let esp = esp_of(disk);
    with_root(env, disk, |root| {
        let dir = root.join("boot/efi");
        sh_ok(&format!(
            "cd {d} && rm -rf loader aurum && mcopy -s -i {esp} ::/loader . && \
             (mcopy -s -i {esp} ::/aurum . 2>/dev/null || true)",
            d = dir.display()
        ));
        env.ok(&[
            "updateclient",
            "--root",
            root.to_str().unwrap(),
            "--server",
            url,
            "--image",
            rev,
            "--boot-tries",
            "2",
        ]);
        sh_ok(&format!(
            "mdeltree -i {esp} ::/loader && (mdeltree -i {esp} ::/aurum 2>/dev/null || true) \
             && cd {d} && mcopy -s -i {esp} loader aurum ::/ && rm -rf loader aurum node",
            d = dir.display()
        ));
    });
}

fn esp_entries(disk: &Path) -> Vec<String> {
    let listed = sh_ok(&format!("mdir -b -i {} ::/loader/entries", esp_of(disk)));
    let mut v: Vec<String> = listed
        .lines()
        .filter_map(|l| l.trim().strip_prefix("::/loader/entries/"))
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

/// A UEFI QEMU node that boots with systemd-boot (Debian's systemd-boot-efi on its ESP): a
/// revision whose initramfs cannot boot gets an entry with 2 tries; systemd-boot renames it
/// at each boot down to `+0-2`, then orders it last and boots aurum's fallback entry, and the
/// node puts the revision before back; a good revision's entry is blessed (the counter
/// dropped, by aurum on the node's vfat ESP). 5 boots.
#[test]
fn qemu_systemd_boot_node_falls_back_by_itself_and_blesses_a_good_revision() {
    let tools = [
        "qemu-system-x86_64",
        "busybox",
        "cpio",
        "sgdisk",
        "mkfs.ext4",
        "mkfs.vfat",
        "mcopy",
        "mdeltree",
        "apt-get",
        "dpkg",
    ];
    if tools.iter().any(|t| !need(t)) {
        return;
    }
    if !crate::common::is_root() || !Path::new(crate::pxe::OVMF_CODE).exists() {
        crate::common::skip("needs root (loop mounts) and OVMF (package ovmf)");
        return;
    }
    let started = std::time::Instant::now();
    let env = Env::new();
    let kit = crate::pxe::build_kit(&env);
    let kit_tree = env.path("kit-tree");
    fs::create_dir_all(&kit_tree).unwrap();
    sh_ok(&format!(
        "cd {} && zcat {}/initrd.img | cpio -id --quiet",
        kit_tree.display(),
        kit.display()
    ));
    let ird = env.path("initrd-tree");
    sh_ok(&format!(
        "cp -a {}/. {i} && cd {i} && rm -rf usr/bin/aurum lib/x86_64-linux-gnu lib64 && \
         cd lib/modules/*/kernel && rm -rf fs/xfs drivers/net/ethernet drivers/net/phy \
         drivers/net/mdio.ko drivers/md drivers/ata drivers/nvme drivers/dca drivers/i2c",
        kit_tree.display(),
        i = ird.display(),
    ));
    executable(&ird.join("init"), INITRAMFS_INIT);
    let initrd = env.path("initrd.img");
    pack_initramfs(&ird, &initrd);
    let bad = env.path("broken-tree");
    fs::create_dir_all(bad.join("bin")).unwrap();
    fs::copy(kit_tree.join("bin/busybox"), bad.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", bad.join("bin/sh")).unwrap();
    executable(&bad.join("init"), BROKEN_INIT);
    let broken_initrd = env.path("broken-initrd.img");
    pack_initramfs(&bad, &broken_initrd);
    let srv = Server::start(&env);
    let port = srv.addr.rsplit(':').next().unwrap().to_string();
    let image = NodeImage {
        kit_tree,
        kernel: crate::pxe::debian_kernel().0,
        initrd,
        broken_initrd,
        server: format!("http://10.0.2.2:{port}"),
    };
    // The golden client's ESP, captured with it: loader.conf as `bootctl install` leaves it
    // and the entry kernel-install wrote, with its kernel; no GRUB.
    let cmdline = "root=/dev/vda2 console=ttyS0 panic=1 no_timer_check";
    let g = env.path("golden");
    for (label, broken) in [
        ("revision 1 (good)", false),
        ("revision 2 (cannot boot)", true),
        ("revision 3 (good)", false),
    ] {
        image.write(&g, label, true, broken);
        fs::remove_dir_all(g.join("boot/grub")).unwrap();
        fs::write(g.join("etc/aurum-test-esp"), "").unwrap();
        let esp = g.join("boot/efi");
        fs::create_dir_all(esp.join("loader/entries")).unwrap();
        fs::create_dir_all(esp.join("node")).unwrap();
        fs::write(esp.join("loader/loader.conf"), "timeout 0\n").unwrap();
        fs::copy(&image.kernel, esp.join("node/vmlinuz")).unwrap();
        fs::copy(&image.initrd, esp.join("node/initrd.img")).unwrap();
        fs::write(
            esp.join("loader/entries/node.conf"),
            format!(
                "title node\nlinux /node/vmlinuz\ninitrd /node/initrd.img\noptions {cmdline}\n"
            ),
        )
        .unwrap();
        env.getimage(&g, "node", &[]);
    }
    let t = env.path("node.toml");
    fs::write(&t, SD_TEMPLATE).unwrap();
    env.ok(&["template", "import", t.to_str().unwrap()]);
    let disk = env.path("disk.raw");
    fs::File::create(&disk).unwrap().set_len(384 << 20).unwrap();
    env.ok(&[
        "install",
        "--disk",
        disk.to_str().unwrap(),
        "--image",
        "node@1",
        "--class",
        "node",
        "--hostname",
        "vm1",
    ]);
    // The install wrote the image's /boot/efi into the mount point on the root (the ESP is
    // made, not mounted, here): it goes onto the ESP, with systemd-boot at the
    // removable-media path (`bootctl install` on the node would put it there too).
    let esp = esp_of(&disk);
    with_root(&env, &disk, |root| {
        sh_ok(&format!(
            "cd {}/boot/efi && mcopy -s -i {esp} loader node ::/ && rm -rf loader node && \
             mmd -i {esp} ::/EFI ::/EFI/BOOT && mcopy -i {esp} {} ::/EFI/BOOT/BOOTX64.EFI",
            root.display(),
            systemd_boot_efi().display()
        ))
    });
    fs::copy(crate::pxe::OVMF_VARS, env.path("OVMF_VARS.fd")).unwrap();
    let url = format!("http://{}", srv.addr);
    let _guest = crate::pxe::ONE_GUEST
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let guest_started = std::time::Instant::now();
    let mut times = Vec::new();
    let mut boot = || {
        let (s, secs) = boot_node(&env, Firmware::Uefi, &disk, times.len() + 1);
        times.push(secs);
        s
    };

    // First boot: systemd-boot boots the image's entry; the node mounts its ESP.
    let s = boot();
    assert!(
        s.contains("aurum-test: up on revision 1") && s.contains("aurum-test: ESP mounted"),
        "{}",
        tail_of(&s)
    );
    assert_eq!(last_boot(&env)["boot"]["outcome"], "booted");

    // Revision 2 cannot boot: its entry counts down on the ESP, systemd-boot's renames.
    update_through_esp(&env, &disk, &url, "node@2");
    assert_eq!(
        esp_entries(&disk),
        ["aurum-fallback.conf", "aurum-revision+2.conf", "node.conf"]
    );
    let fallback_started = std::time::Instant::now();
    for _ in 0..2 {
        let s = boot();
        assert!(s.contains("this initramfs cannot boot"), "{}", tail_of(&s));
    }
    assert_eq!(
        esp_entries(&disk),
        [
            "aurum-fallback.conf",
            "aurum-revision+0-2.conf",
            "node.conf"
        ]
    );
    // At +0 the entry sorts last: `default aurum-*` picks the fallback entry.
    let s = boot();
    assert!(s.contains("aurum.fallback"), "{}", tail_of(&s));
    assert!(s.contains("rebooting into it"), "{}", tail_of(&s));
    let to_fallback = fallback_started.elapsed().as_secs_f64();
    let n = last_boot(&env);
    assert_eq!(n["boot"]["fell_back"], true, "{n}");
    let reason = n["boot"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("node@2") && reason.contains("in 2 boots: systemd-boot booted"),
        "{n}"
    );
    assert_eq!(esp_entries(&disk), ["aurum-revision.conf", "node.conf"]);

    // Revision 3 is good: its entry's first boot passes the health check, and aurum blesses
    // it on the node's ESP by dropping the counter.
    update_through_esp(&env, &disk, &url, "node@3");
    let s = boot();
    assert!(
        s.contains("aurum-test: up on revision 3"),
        "{}",
        tail_of(&s)
    );
    assert_eq!(last_boot(&env)["boot"]["outcome"], "blessed");
    assert_eq!(esp_entries(&disk), ["aurum-revision.conf", "node.conf"]);
    let times: Vec<String> = times.iter().map(|t| format!("{t:.0}")).collect();
    eprintln!(
        "systemd-boot: {} boots ({} s), {:.0} s with the guest, fallback of a revision that \
         cannot boot {to_fallback:.0} s after its update; whole test {:.0} s",
        times.len(),
        times.join(" + "),
        guest_started.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

fn tail_of(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}
