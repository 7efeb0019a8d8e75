//! What a repository publishes for web servers and nodes (issue #12, items 9-10): files a
//! web server not running as root can read while the catalog stays private, whatever the
//! umask; and the derived files (`packs/list`, `refs/`) checked by verify, rebuilt by
//! `verify --repair`, and named by a node that meets a damaged one.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{have, is_root, skip, write_random, Env};
use crate::serve::Server;
use crate::update::{node_at, node_diff, two_revisions};

/// The aurum command of `env`, run with umask `mask`.
fn with_umask(env: &Env, mask: u32, args: &[&str]) -> String {
    let mut c = env.cmd(args);
    // SAFETY: umask is async-signal-safe and touches only the child.
    unsafe {
        c.pre_exec(move || {
            nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
            Ok(())
        });
    }
    let out = c.output().expect("run aurum");
    assert!(
        out.status.success(),
        "aurum {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Every file and directory under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if out[i].is_dir() {
            let mut sub: Vec<PathBuf> = std::fs::read_dir(&out[i])
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            out.append(&mut sub);
        }
        i += 1;
    }
    out
}

/// Whether user `nobody` (65534, no groups) can read every file of `files`.
fn nobody_reads(files: &[PathBuf]) -> Result<(), String> {
    for f in files {
        let o = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
            .arg(f)
            .stdout(std::process::Stdio::null())
            .output()
            .expect("setpriv is installed by test.sh");
        if !o.status.success() {
            return Err(format!(
                "{}: {}",
                f.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
    }
    Ok(())
}

/// The published layout: everything under public/.
fn published(repo: &Path) -> Vec<PathBuf> {
    walk(&repo.join("public"))
}

/// Issue #12 item 9: repository files were created 0600, so nginx running as www-data could
/// not serve them. Under a umask of 077 even, published files are now 0644 (directories
/// 0755) and readable by an unprivileged user; the catalog and the lock stay 0600 and
/// unreadable to it. An export is readable as the umask allows, like tar's. A repository
/// with the old modes is reported by verify and fixed by `verify --repair` and on upgrade.
#[test]
fn issue12_published_files_are_world_readable_and_the_catalog_private() {
    if !is_root() || !have("setpriv") {
        return skip("needs root and setpriv (util-linux)");
    }
    let env = Env {
        dir: tempfile::tempdir().unwrap(),
    };
    // The test's own directory stands for /srv: others may enter it.
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let src = env.path("g");
    write_random(&src.join("usr/lib/big.bin"), 3, 2 << 20);
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/motd"), "hi\n").unwrap();
    let s = src.to_str().unwrap();
    with_umask(&env, 0o077, &["init"]);
    with_umask(
        &env,
        0o077,
        &["getimage", "--golden-client", s, "--image", "web"],
    );
    with_umask(&env, 0o077, &["tag", "web@1", "production"]);
    let repo = env.repo();
    let public = env.public();
    assert!(public.join("packs/list").exists() && public.join("refs/web/tags/production").exists());

    let files = published(&repo);
    for f in &files {
        let want = if f.is_dir() { 0o755 } else { 0o644 };
        assert_eq!(mode(f), want, "{}", f.display());
    }
    assert_eq!(mode(&repo), 0o755);
    nobody_reads(
        &files
            .iter()
            .filter(|f| f.is_file())
            .cloned()
            .collect::<Vec<_>>(),
    )
    .unwrap_or_else(|e| panic!("a web server running as nobody cannot read {e}"));
    for private in ["aurum.db", "lock"] {
        assert_eq!(mode(&repo.join(private)), 0o600, "{private}");
        assert!(
            nobody_reads(&[repo.join(private)]).is_err(),
            "{private} is readable by others"
        );
    }
    // An export follows the umask like tar: readable by others under the usual 022.
    let archive = env.path("web.tar");
    with_umask(
        &env,
        0o022,
        &["export", "web", "-o", archive.to_str().unwrap()],
    );
    assert_eq!(mode(&archive), 0o644);
    nobody_reads(&[archive]).unwrap();

    // A repository left by an older aurum: everything it wrote was 0600.
    let old_modes = || {
        for f in published(&repo).iter().filter(|f| f.is_file()) {
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        std::fs::set_permissions(
            repo.join("aurum.db"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
    };
    old_modes();
    let v = env.run(&["verify"]);
    let out = String::from_utf8_lossy(&v.stdout);
    assert_eq!(v.status.code(), Some(3), "{out}");
    assert!(out.contains("DAMAGED mode"), "{out}");
    let fixed = env.ok(&["verify", "--repair"]);
    assert!(fixed.contains("fixed the modes of"), "{fixed}");
    nobody_reads(
        &published(&repo)
            .into_iter()
            .filter(|f| f.is_file())
            .collect::<Vec<_>>(),
    )
    .unwrap();
    assert_eq!(mode(&repo.join("aurum.db")), 0o600);
    env.ok(&["verify"]);

    // On upgrade: the first command of this aurum on an old repository fixes the modes.
    old_modes();
    let db = rusqlite::Connection::open(repo.join("aurum.db")).unwrap();
    db.execute("DELETE FROM meta WHERE key = 'file-modes'", [])
        .unwrap();
    drop(db);
    env.ok(&["lsimage"]);
    nobody_reads(
        &published(&repo)
            .into_iter()
            .filter(|f| f.is_file())
            .collect::<Vec<_>>(),
    )
    .unwrap();
    assert_eq!(mode(&repo.join("aurum.db")), 0o600);
    env.ok(&["verify"]);
}

/// Issue #12 item 10: verify passed a damaged `packs/list`, after which nodes failed with a
/// misleading "garbage-collected?". Now verify names each published file that disagrees with
/// the catalog (exit 3), a node names the file and the command that fixes it, and
/// `verify --repair` rebuilds them so that the update goes through.
#[test]
fn issue12_verify_catches_damaged_published_files_and_repair_rebuilds_them() {
    let env = Env::new();
    let (_, rev2) = two_revisions(&env);
    let node = node_at(&env, "node", "c@1");
    let list = env.public().join("packs/list");
    let good = std::fs::read_to_string(&list).unwrap();
    let srv = Server::start(&env);
    let url = format!("http://{}", srv.addr);
    let update = || {
        Command::new(env!("CARGO_BIN_EXE_aurum"))
            .args([
                "--no-progress",
                "updateclient",
                "--server",
                &url,
                "--image",
                "c@2",
            ])
            .args(["--root", node.to_str().unwrap(), "--no-default-excludes"])
            .output()
            .unwrap()
    };

    for (damage, says) in [
        // Cut in the middle of a line, as a copy interrupted half-way leaves it.
        (good[..good.len() / 2 - 10].to_string(), "packs/list"),
        // Lines lost.
        (String::new(), "packs/list"),
    ] {
        std::fs::write(&list, &damage).unwrap();
        let v = env.run(&["verify"]);
        let out = String::from_utf8_lossy(&v.stdout);
        assert_eq!(
            v.status.code(),
            Some(3),
            "verify passed a damaged list:\n{out}"
        );
        assert!(out.contains("DAMAGED published packs/list"), "{out}");

        let o = update();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{err}");
        assert!(
            err.contains(&format!("{url}/{says}")) && err.contains("aurum verify --repair"),
            "the node must name the file and the fix:\n{err}"
        );
        assert!(!err.contains("garbage-collected"), "{err}");
    }

    // A head naming a revision that is not the newest, and a tag of an image that is gone.
    let public = env.public();
    std::fs::write(public.join("refs/c/head"), "0".repeat(64) + "\n").unwrap();
    std::fs::create_dir_all(public.join("refs/gone/tags")).unwrap();
    std::fs::write(public.join("refs/gone/tags/x"), "1\n").unwrap();
    let v = env.run(&["verify"]);
    let out = String::from_utf8_lossy(&v.stdout);
    assert_eq!(v.status.code(), Some(3), "{out}");
    for f in ["packs/list", "refs/c/head", "refs/gone/tags/x"] {
        assert!(
            out.contains(&format!("DAMAGED published {f}")),
            "{f}:\n{out}"
        );
    }

    let fixed = env.ok(&["verify", "--repair"]);
    for f in [
        "rebuilt packs/list",
        "rebuilt refs/c/head",
        "removed refs/gone/tags/x",
    ] {
        assert!(fixed.contains(f), "{f}:\n{fixed}");
    }
    assert_eq!(std::fs::read_to_string(&list).unwrap(), good);
    assert!(!public.join("refs/gone").exists());
    env.ok(&["verify"]);
    let o = update();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(node_diff(&rev2, &node), "");
}
