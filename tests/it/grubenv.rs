//! aurum's GRUB environment block writer against the real `grub-editenv` (grub-common): the
//! same sequence of sets and unsets, run by both, gives the same 1024 bytes after every step,
//! and each reads what the other wrote.

use std::fs;
use std::process::Command;

use aurum::format::grubenv::GrubEnv;

use crate::common::need;

fn editenv(file: &std::path::Path, args: &[&str]) {
    let out = Command::new("grub-editenv")
        .arg(file)
        .args(args)
        .output()
        .expect("run grub-editenv");
    assert!(
        out.status.success(),
        "grub-editenv {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn grubenv_edits_match_grub_editenv_byte_for_byte() {
    if !need("grub-editenv") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("grubenv");
    editenv(&file, &["create"]);
    let mut ours = GrubEnv::new();
    assert_eq!(fs::read(&file).unwrap(), ours.encode(), "create");
    // Sets that grow, shrink and empty a value in the middle of the block, values with the
    // characters GRUB escapes, unsets of the first, a middle and a missing variable.
    let steps: &[(&str, &str)] = &[
        ("set", "saved_entry=gnulinux-advanced-1f2e"),
        ("set", "aurum_trial=compute@7 0c4e2a17"),
        ("set", "aurum_tries=3"),
        ("set", "boot_success=0"),
        ("set", "aurum_tries=2"),
        ("set", "aurum_trial=compute@12 5d6e7f80 + override@3"),
        ("set", "note=back\\slash and\nnewline"),
        ("set", "aurum_trial=c@1 ab"),
        ("unset", "saved_entry"),
        ("set", "aurum_tries="),
        ("unset", "boot_success"),
        ("unset", "nothing_here"),
        ("set", "saved_entry=0"),
        ("set", "note=x"),
        ("unset", "aurum_trial"),
        ("unset", "aurum_tries"),
    ];
    for (k, (op, arg)) in steps.iter().enumerate() {
        editenv(&file, &[op, arg]);
        match *op {
            "set" => {
                let (n, v) = arg.split_once('=').unwrap();
                ours.set(n, v).unwrap();
            }
            _ => {
                ours.unset(arg);
            }
        }
        let theirs = fs::read(&file).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&theirs),
            String::from_utf8_lossy(ours.encode()),
            "step {k}: {op} {arg:?}"
        );
        assert_eq!(theirs, ours.encode(), "step {k}: {op} {arg:?}");
        // Each reads the other's block: grub-editenv list shows what aurum reads.
        let listed = Command::new("grub-editenv")
            .arg(&file)
            .arg("list")
            .output()
            .unwrap();
        let ours_listed: String = GrubEnv::decode(&theirs, "grubenv")
            .unwrap()
            .vars()
            .iter()
            .map(|(n, v)| format!("{n}={v}\n"))
            .collect();
        assert_eq!(
            String::from_utf8_lossy(&listed.stdout),
            ours_listed,
            "step {k}"
        );
    }
    // A block aurum wrote is one grub-editenv edits; one too full for a value is refused by
    // both, and neither changes it.
    fs::write(&file, ours.encode()).unwrap();
    editenv(&file, &["set", "after=aurum"]);
    ours.set("after", "aurum").unwrap();
    assert_eq!(fs::read(&file).unwrap(), ours.encode());
    let big = format!("big={}", "x".repeat(1000));
    let refused = Command::new("grub-editenv")
        .arg(&file)
        .args(["set", &big])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(ours.set("big", &"x".repeat(1000)).is_err());
    assert_eq!(fs::read(&file).unwrap(), ours.encode());
}
