//! What a repository publishes for web servers and nodes (issue #12, items 9-10; issue #23,
//! item 3): files a web server not running as root can read while the catalog stays private,
//! whatever the umask; all of them in `public/`, which nginx as www-data serves to nodes, with
//! older repositories moved there; and the derived files (`packs/list`, `refs/`) checked by
//! verify, rebuilt by `verify --repair`, and named by a node that meets a damaged one.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use crate::common::{have, is_root, need, sh, skip, write_random, Env};
use crate::serve::{http, Server};
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
/// `verify --repair` rebuilds them so that the update goes through. The node reads the
/// published files from a plain web server (from `aurum serve` it would ask where its blobs
/// lie, and read no `packs/list`).
#[test]
fn issue12_verify_catches_damaged_published_files_and_repair_rebuilds_them() {
    if !have("python3") {
        return skip("needs python3");
    }
    let env = Env::new();
    let (_, rev2) = two_revisions(&env);
    let node = node_at(&env, "node", "c@1");
    let list = env.public().join("packs/list");
    let good = std::fs::read_to_string(&list).unwrap();
    let web = crate::network::Web::start(&env, "web", "serve", "404");
    let url = web.url.clone();
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

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// nginx configured as the book says (`commands/serve.md`), with only its address, root and
/// API port changed: the root is the repository's `public/`, the workers run as www-data.
pub struct Nginx {
    child: Child,
    pub addr: String,
}

impl Nginx {
    pub fn start(env: &Env) -> Nginx {
        let dir = env.path("nginx");
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let book = include_str!("../../book/src/commands/serve.md");
        let example = book
            .split("```nginx\n")
            .skip(1)
            .find(|b| !b.contains("proxy_cache_path"))
            .and_then(|b| b.split("```").next())
            .expect("the book's nginx example");
        let mut server = example.to_string();
        for (from, to) in [
            ("listen 8035;", format!("listen 127.0.0.1:{port};")),
            (
                "root /srv/aurum/public;",
                format!("root {};", env.public().display()),
            ),
            // Nothing answers the API: nodes fall back to whole blobs, as with a dead serve.
            ("127.0.0.1:8036", format!("127.0.0.1:{}", free_port())),
        ] {
            assert!(
                server.contains(from),
                "the book's nginx example lost `{from}`"
            );
            server = server.replace(from, &to);
        }
        Nginx::run(&dir, port, &server)
    }

    /// nginx in `dir` on 127.0.0.1:`port` with `server` (the `http` block's inside).
    pub fn run(dir: &Path, port: u16, server: &str) -> Nginx {
        let d = dir.display();
        let conf = dir.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "user www-data;\nworker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\n\
                 error_log {d}/error.log;\nevents {{ worker_connections 64; }}\n\
                 http {{\n access_log {d}/access.log;\n client_body_temp_path {d}/body;\n\
                 proxy_temp_path {d}/proxy;\n fastcgi_temp_path {d}/fastcgi;\n\
                 uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n{server}}}\n"
            ),
        )
        .unwrap();
        let child = Command::new("nginx")
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&conf)
            .spawn()
            .expect("start nginx");
        let addr = format!("127.0.0.1:{port}");
        let mut nginx = Nginx { child, addr };
        for _ in 0..200 {
            if std::net::TcpStream::connect(&nginx.addr).is_ok() {
                return nginx;
            }
            if let Ok(Some(status)) = nginx.child.try_wait() {
                panic!(
                    "nginx exited ({status}): {}",
                    std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("nginx did not listen on {}", nginx.addr);
    }

    /// The users nginx's worker processes run as.
    fn worker_users(&self) -> String {
        sh(&format!("ps -o user= --ppid {}", self.child.id()))
    }
}

impl Drop for Nginx {
    /// SIGTERM, not SIGKILL: a killed master leaves its workers running (and holding the
    /// test's output pipes).
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

/// `aurum updateclient` from `url` to `image` on `node`; panics unless it succeeds.
fn update_from(url: &str, image: &str, node: &Path) {
    let o = Command::new(env!("CARGO_BIN_EXE_aurum"))
        .args(["--no-progress", "updateclient", "--server", url])
        .args(["--image", image, "--root"])
        .arg(node)
        .arg("--no-default-excludes")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "updateclient {image} from {url}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A node made from an empty root at c@1, then updated to c@2, from `url`: exact each time.
fn install_then_update(env: &Env, url: &str, name: &str, rev1: &Path, rev2: &Path) {
    let node = env.path(name);
    std::fs::create_dir_all(&node).unwrap();
    update_from(url, "c@1", &node);
    assert_eq!(node_diff(rev1, &node), "", "c@1 from {url}");
    update_from(url, "c@2", &node);
    assert_eq!(node_diff(rev2, &node), "", "c@2 from {url}");
}

/// What nginx or serve answers for the catalog, the lock and temporary files, which a web
/// server must never hand out. `/FORMAT` must be 200 for the refusals to mean anything.
fn private_paths_refused(addr: &str) {
    assert_eq!(http(addr, "GET", "/FORMAT", &[], b"").0, 200);
    for path in [
        "/aurum.db",
        "/aurum.db-wal",
        "/lock",
        "/tmp/",
        "/public/FORMAT",
        "/../aurum.db",
        "/packs/../../aurum.db",
        "/%2e%2e/aurum.db",
    ] {
        let (status, _, body) = http(addr, "GET", path, &[], b"");
        assert!(
            status == 404 || status == 403 || status == 400,
            "GET {path} through {addr}: {status} ({} bytes)",
            body.len()
        );
    }
}

/// Issue #23 item 3: a repository served as it was exposed `aurum.db` (the catalog with the
/// node database) and `tmp/` to any web server given its directory. Now everything a web
/// server may publish is in `REPO/public/`: nginx running as www-data, configured as the
/// book says with that directory as its root, serves a node that installs into an empty root
/// and then updates, exactly; the catalog, the lock and `tmp/` are out of its reach.
#[test]
fn issue23_nginx_as_www_data_serves_public_and_never_the_catalog() {
    if !is_root() {
        return skip("needs root (nginx's workers switch to www-data)");
    }
    if !need("nginx") || !need("rsync") {
        return;
    }
    let env = Env::new();
    // The test's own directory stands for /srv: others may enter it.
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (rev1, rev2) = two_revisions(&env);
    let nginx = Nginx::start(&env);
    let users = nginx.worker_users();
    assert!(
        !users.trim().is_empty() && users.lines().all(|u| u.trim() == "www-data"),
        "nginx workers run as {users:?}"
    );
    private_paths_refused(&nginx.addr);
    install_then_update(
        &env,
        &format!("http://{}", nginx.addr),
        "node",
        &rev1,
        &rev2,
    );
}

/// Turns `repo` back into what an older aurum left (format 1: the published directories at
/// its top), or into what an upgrade killed part-way leaves: with `begun`, `FORMAT` says 2
/// and the first `moved` directories are in `public/` already.
fn as_older_aurum_left_it(repo: &Path, begun: bool, moved: usize) {
    let public = repo.join("public");
    for (i, d) in ["packs", "manifests", "refs", "templates", "deltas"]
        .iter()
        .enumerate()
    {
        if i >= moved && public.join(d).exists() {
            std::fs::rename(public.join(d), repo.join(d)).unwrap();
        }
    }
    if !begun {
        std::fs::remove_file(public.join("FORMAT")).unwrap();
        std::fs::remove_dir(&public).unwrap();
        std::fs::write(repo.join("FORMAT"), "aurum repository format 1\n").unwrap();
    }
    let db = rusqlite::Connection::open(repo.join("aurum.db")).unwrap();
    db.execute("DELETE FROM meta WHERE key = 'public-dir'", [])
        .unwrap();
    db.execute("UPDATE meta SET value = '1' WHERE key = 'format'", [])
        .unwrap();
}

/// Issue #23 item 3: repositories written by an older aurum, with the published directories
/// at the top, are moved into `public/` the first time this aurum opens them. An upgrade
/// killed after any of its steps (simulated here: each state its renames can leave, and an
/// older aurum writing at the top meanwhile) still opens and finishes. Afterwards `aurum
/// serve` serves the same URLs (old nodes keep working) and nginx the new directory; verify
/// names anything misplaced and `verify --repair` puts it right.
#[test]
fn issue23_an_older_repository_moves_into_public_and_still_serves() {
    if !have("rsync") {
        return skip("needs rsync");
    }
    let env = Env::new();
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (rev1, rev2) = two_revisions(&env);
    let repo = env.repo();
    let pristine = env.path("pristine");
    sh(&format!(
        "cp -a {}/. {}/",
        repo.display(),
        pristine.display()
    ));
    let mut states = vec![(false, 0)];
    states.extend((0..=5).map(|moved| (true, moved)));
    for (begun, moved) in states {
        let what = format!("upgrade begun: {begun}, directories moved: {moved}");
        sh(&format!(
            "rm -rf {r} && cp -a {p} {r}",
            r = repo.display(),
            p = pristine.display()
        ));
        as_older_aurum_left_it(&repo, begun, moved);
        assert!(repo.join("refs").exists() || moved >= 3, "{what}");
        if begun && moved > 0 {
            // An older aurum's write at the top after the upgrade began: both places hold
            // packs/.
            std::fs::create_dir_all(repo.join("packs")).unwrap();
            std::fs::copy(repo.join("public/packs/list"), repo.join("packs/list")).unwrap();
        }
        let images = env.ok(&["lsimage"]);
        assert!(images.contains('c'), "{what}: {images}");
        for d in ["packs", "manifests", "refs", "templates"] {
            assert!(!repo.join(d).exists(), "{what}: {d}/ left at the top");
            assert!(
                repo.join("public").join(d).is_dir(),
                "{what}: no public/{d}/"
            );
        }
        for f in ["FORMAT", "public/FORMAT"] {
            assert_eq!(
                std::fs::read_to_string(repo.join(f)).unwrap(),
                "aurum repository format 2\n",
                "{what}: {f}"
            );
        }
        env.ok(&["verify"]);
    }

    // An older repository served as it is, by this aurum's serve: the same URLs.
    sh(&format!(
        "rm -rf {r} && cp -a {p} {r}",
        r = repo.display(),
        p = pristine.display()
    ));
    as_older_aurum_left_it(&repo, false, 0);
    let srv = Server::start(&env);
    private_paths_refused(&srv.addr);
    install_then_update(&env, &format!("http://{}", srv.addr), "node1", &rev1, &rev2);
    drop(srv);
    if is_root() && have("nginx") {
        let nginx = Nginx::start(&env);
        install_then_update(
            &env,
            &format!("http://{}", nginx.addr),
            "node2",
            &rev1,
            &rev2,
        );
    }

    // Misplaced files: a copy of the catalog inside public/ (which a web server would hand
    // out), a published directory at the top, a lost public/FORMAT.
    std::fs::copy(repo.join("aurum.db"), repo.join("public/aurum.db")).unwrap();
    std::fs::create_dir_all(repo.join("refs/c")).unwrap();
    std::fs::write(repo.join("refs/c/head"), "stale\n").unwrap();
    std::fs::remove_file(repo.join("public/FORMAT")).unwrap();
    let v = env.run(&["verify"]);
    let out = String::from_utf8_lossy(&v.stdout);
    assert_eq!(v.status.code(), Some(3), "{out}");
    for f in ["public/aurum.db", "refs", "public/FORMAT"] {
        assert!(out.contains(&format!("DAMAGED layout {f}:")), "{f}:\n{out}");
    }
    let fixed = env.ok(&["verify", "--repair"]);
    assert!(fixed.contains("moved public/aurum.db aside"), "{fixed}");
    assert!(repo.join("damaged/public/aurum.db").exists());
    assert!(!repo.join("public/aurum.db").exists() && !repo.join("refs").exists());
    env.ok(&["verify"]);
}
