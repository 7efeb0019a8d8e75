//! Boot counting and fallback (`aurum boot`, `aurum health` on a trial boot, `updateclient
//! --boot-tries`): the state machine on a real node root with GRUB's files, GRUB's side played
//! by `grub-editenv` (the counter) and the kernel command line GRUB's fallback entry gives; the
//! GRUB script checked by `grub-script-check`; the reports through a real `aurum serve`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
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
    let g = env.path("golden");
    golden(&g, "1.0", true);
    env.getimage(&g, "node", &[]);
    golden(&g, "2.0", false);
    env.getimage(&g, "node", &[]);
    golden(&g, "3.0", true);
    env.getimage(&g, "node", &[]);
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
