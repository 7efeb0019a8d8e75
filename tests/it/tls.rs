//! `aurum serve` over TLS (issue #20, item 5), with certificates made by openssl in the test:
//! a node updates over https with a private CA, a certificate from another CA is refused at
//! once with a message that names the fix, and SIGHUP makes the server present a new
//! certificate without dropping the connection a client holds.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::{json, need, Env};
use crate::serve::Server;

/// Runs openssl with `args` in `dir`; panics with its stderr on failure.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA: `NAME.pem` and `NAME.key` in `dir`.
pub fn make_ca(dir: &Path, name: &str) -> PathBuf {
    let (pem, key) = (format!("{name}.pem"), format!("{name}.key"));
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &pem,
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ],
    );
    dir.join(pem)
}

/// A server certificate for 127.0.0.1 and localhost signed by the CA `ca` (as made by
/// [`make_ca`]): `NAME.pem` (the certificate) and `NAME.key`.
pub fn make_cert(dir: &Path, ca: &str, name: &str) -> (PathBuf, PathBuf) {
    let (pem, key, csr) = (
        format!("{name}.pem"),
        format!("{name}.key"),
        format!("{name}.csr"),
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    let ext = dir.join(format!("{name}.ext"));
    fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            ext.to_str().unwrap(),
        ],
    );
    (dir.join(pem), dir.join(key))
}

/// A ureq client trusting only `ca`.
fn client(ca: &Path) -> ureq::Agent {
    let certs = aurum::tls::client_config(Some(ca)).unwrap();
    ureq::Agent::config_builder()
        .tls_config(certs)
        .http_status_as_error(false)
        .build()
        .into()
}

/// `aurum serve` over TLS with the certificate `cert` and its key.
fn serve_tls(env: &Env, cert: &Path, key: &Path) -> Server {
    Server::start_with(
        env,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    )
}

fn get(agent: &ureq::Agent, url: &str) -> Result<(u16, String), String> {
    let mut r = agent.get(url).call().map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    Ok((status, r.body_mut().read_to_string().unwrap_or_default()))
}

#[test]
fn a_node_updates_over_https_with_a_private_ca_and_a_wrong_ca_is_refused() {
    if !need("openssl") {
        return;
    }
    let env = Env::new();
    let dir = env.empty_dir("pki");
    let ca = make_ca(&dir, "site-ca");
    let other = make_ca(&dir, "other-ca");
    let (cert, key) = make_cert(&dir, "site-ca", "master");
    let golden = env.path("golden");
    fs::create_dir_all(golden.join("etc")).unwrap();
    fs::write(golden.join("etc/motd"), "over TLS\n").unwrap();
    crate::common::write_random(&golden.join("usr/lib/big.bin"), 3, 300_000);
    env.getimage(&golden, "img", &[]);
    let srv = serve_tls(&env, &cert, &key);
    let url = srv.url.clone();
    // Plain HTTP to a TLS port gets nothing served.
    assert!(
        get(&ureq::agent(), &format!("http://{}/FORMAT", srv.addr)).map_or(true, |(s, _)| s != 200)
    );

    let node = env.empty_dir("node");
    env.give_node_token(&node);
    let update = |ca: &Path| {
        let mut c = env.updateclient(
            &url,
            "img",
            &node,
            &[
                "--no-default-excludes",
                "--ca",
                ca.to_str().unwrap(),
                "--json",
            ],
        );
        c.env_remove("AURUM_TOKEN");
        let started = std::time::Instant::now();
        let out = c.output().unwrap();
        (out, started.elapsed())
    };
    // Another CA: refused at once (no retries), saying what to do, and the node unchanged.
    let (out, took) = update(&other);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("not signed by a CA this node trusts") && err.contains("--ca"),
        "{err}"
    );
    assert!(
        took < Duration::from_secs(5),
        "a refused certificate was retried for {took:?}"
    );
    assert!(!node.join("etc/motd").exists());
    // The site's CA: the update works, and its report (with the node's token) is recorded.
    let (out, _) = update(&ca);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        json(&String::from_utf8_lossy(&out.stdout))["bytes_fetched"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert_eq!(
        fs::read_to_string(node.join("etc/motd")).unwrap(),
        "over TLS\n"
    );
    assert_eq!(
        json(&env.ok(&["nodes", "--json"]))[0]["action"],
        "updateclient"
    );
    // node.toml's `ca` does the same as --ca.
    env.write_config("node.toml", &format!("ca = \"{}\"\n", ca.display()));
    let out = env.run(&[
        "updateclient",
        "--server",
        &url,
        "--image",
        "img",
        "--root",
        node.to_str().unwrap(),
        "--no-default-excludes",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sighup_serves_the_new_certificate_without_dropping_connections() {
    if !need("openssl") {
        return;
    }
    let env = Env::new();
    let dir = env.empty_dir("pki");
    let old_ca = make_ca(&dir, "old-ca");
    let new_ca = make_ca(&dir, "new-ca");
    let (cert, key) = make_cert(&dir, "old-ca", "server-old");
    let live_cert = dir.join("live.pem");
    let live_key = dir.join("live.key");
    fs::copy(&cert, &live_cert).unwrap();
    fs::copy(&key, &live_key).unwrap();
    let srv = serve_tls(&env, &live_cert, &live_key);
    let url = format!("{}/FORMAT", srv.url);
    let held = client(&old_ca);
    assert_eq!(get(&held, &url).unwrap().0, 200);

    // A broken pair is not taken: the old certificate stays.
    let (new_cert, new_key) = make_cert(&dir, "new-ca", "server-new");
    fs::copy(&new_cert, &live_cert).unwrap();
    let hup = || {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(srv.child.id() as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(500));
    };
    hup();
    assert_eq!(
        get(&client(&old_ca), &url).unwrap().0,
        200,
        "a mismatched key replaced the certificate"
    );
    // The matching key: new connections get the new certificate.
    fs::copy(&new_key, &live_key).unwrap();
    hup();
    let e = get(&client(&old_ca), &url).unwrap_err();
    assert!(e.contains("UnknownIssuer") || e.contains("issuer"), "{e}");
    assert_eq!(get(&client(&new_ca), &url).unwrap().0, 200);
    // The connection opened before the reload still answers.
    assert_eq!(get(&held, &url).unwrap().0, 200);
    // The server is still up and serving after all of it.
    assert!(srv_alive(&srv));
}

fn srv_alive(srv: &Server) -> bool {
    std::net::TcpStream::connect(&srv.addr).is_ok()
}

/// A boot kit with a fake kernel (only the kit's initramfs matters here) built with
/// `extra`, unpacked into `DIR/root`: the installer's own root, as /init sees it.
fn unpacked_kit(env: &Env, extra: &[&str]) -> PathBuf {
    let mods = env.path("tree/lib/modules/6.1.0-99-amd64");
    fs::create_dir_all(mods.join("kernel/fs/ext4")).unwrap();
    fs::write(mods.join("kernel/fs/ext4/ext4.ko"), "ext4").unwrap();
    fs::write(mods.join("modules.dep"), "kernel/fs/ext4/ext4.ko:\n").unwrap();
    let kernel = env.path("tree/vmlinuz-6.1.0-99-amd64");
    fs::write(&kernel, "not really a kernel").unwrap();
    let (tree, kit) = (env.path("tree"), env.path("kit"));
    let mut args = vec![
        "bootkit",
        "build",
        "--kernel",
        kernel.to_str().unwrap(),
        "--modules",
        tree.to_str().unwrap(),
        "-o",
        kit.to_str().unwrap(),
        "--module",
        "ext4",
    ];
    args.extend_from_slice(extra);
    env.ok(&args);
    let root = env.path("kit/root");
    fs::create_dir_all(&root).unwrap();
    crate::common::sh(&format!(
        "cd {} && zcat {} | cpio -id --quiet",
        root.display(),
        kit.join("initrd.img").display()
    ));
    root
}

/// The boot kit's installer, over an https:// server with a private CA (issue #20, the
/// netboot path): the CA and the trusted key travel inside the kit; the kit's own aurum,
/// chrooted into the kit's unpacked initramfs (no system trust store there, only what the kit
/// brought), runs the install /init runs, up to everything but the writing (--dry-run: the
/// class, the templates and the revision fetched over TLS, its signature checked). It refuses
/// a server whose certificate another CA signed and an unsigned revision, and installs once
/// the revision is signed; then a real install over TLS writes the disk.
#[test]
fn the_boot_kits_installer_trusts_only_its_ca_and_its_keys() {
    if !need("openssl") || !need("cpio") || !crate::install::can_install() {
        return;
    }
    let env = Env::new();
    let dir = env.path("pki");
    fs::create_dir_all(&dir).unwrap();
    let ca = make_ca(&dir, "site-ca");
    make_ca(&dir, "rogue-ca");
    let (cert, key) = make_cert(&dir, "site-ca", "master");
    let (rogue_cert, rogue_key) = make_cert(&dir, "rogue-ca", "rogue");
    let admin = env.path("admin.key");
    env.ok(&["key", "generate", admin.to_str().unwrap()]);
    let admin_pub = format!("{}.pub", admin.display());
    let root = unpacked_kit(
        &env,
        &["--ca", ca.to_str().unwrap(), "--trusted-key", &admin_pub],
    );
    assert_eq!(
        fs::read(root.join("etc/aurum/ca.pem")).unwrap(),
        fs::read(&ca).unwrap()
    );
    let node_toml = fs::read_to_string(root.join("etc/aurum/node.toml")).unwrap();
    assert!(
        node_toml.contains("ca = \"/etc/aurum/ca.pem\""),
        "{node_toml}"
    );
    // A CA file with no certificate is refused when the kit is built, not when a node boots.
    let e = env.fails(
        &[
            "bootkit",
            "build",
            "--kernel",
            env.path("tree/vmlinuz-6.1.0-99-amd64").to_str().unwrap(),
            "--modules",
            env.path("tree").to_str().unwrap(),
            "-o",
            env.path("kit2").to_str().unwrap(),
            "--ca",
            admin_pub.as_str(),
        ],
        2,
    );
    assert!(e.contains("no PEM certificate"), "{e}");

    let t = env.path("tiny");
    crate::install::tiny_tree(&t);
    env.getimage(&t, "compute", &[]);
    let class = crate::install::class();
    env.ok(&[
        "template",
        "sign",
        class,
        "--sign-key",
        admin.to_str().unwrap(),
    ]);
    fs::write(root.join("tmp/facts.json"), env.ok(&["facts", "--json"])).unwrap();
    fs::File::create(root.join("tmp/d.img"))
        .unwrap()
        .set_len(13 << 30)
        .unwrap();
    // What /init runs, less --report (no node database here) and plus --dry-run.
    let installer = |url: &str| {
        let out = Command::new("chroot")
            .arg(&root)
            .args([
                "/usr/bin/aurum",
                "--no-progress",
                "install",
                "--dry-run",
                "--repo",
                "/tmp/no-repo",
                "--disk",
                "/tmp/d.img",
                "--server",
                url,
                "--image",
                "compute",
                "--class",
                class,
                "--facts",
                "/tmp/facts.json",
            ])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let tls = |cert: &Path, key: &Path| {
        Server::start_with(
            &env,
            &[
                "--tls-cert",
                cert.to_str().unwrap(),
                "--tls-key",
                key.to_str().unwrap(),
            ],
        )
    };
    // A server (or a man in the middle) with a certificate from any other CA: refused.
    {
        let rogue = tls(&rogue_cert, &rogue_key);
        let (code, _, err) = installer(&format!("https://{}", rogue.addr));
        assert_ne!(code, Some(0));
        assert!(err.contains("not signed by a CA this node trusts"), "{err}");
    }
    let srv = tls(&cert, &key);
    let url = format!("https://{}", srv.addr);
    // The site's server, but a revision nobody signed: refused.
    let (code, _, err) = installer(&url);
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains("refusing compute@1") && err.contains("no signature"),
        "{err}"
    );
    env.ok(&["sign", "compute", "--sign-key", admin.to_str().unwrap()]);
    let (code, out, err) = installer(&url);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("would install compute@1"), "{out}");
    assert_eq!(
        std::os::unix::fs::MetadataExt::blocks(&fs::metadata(root.join("tmp/d.img")).unwrap()),
        0,
        "the dry run wrote to the disk"
    );
    // The boot script of an HTTPS server sends installers to it over HTTPS.
    env.ok(&[
        "node",
        "add",
        "n01",
        "--mac",
        "52:54:00:12:34:56",
        "--image",
        "compute",
    ]);
    let (status, script) =
        get(&client(&ca), &format!("{url}/boot/52:54:00:12:34:56.ipxe")).unwrap();
    assert_eq!(status, 200, "{script}");
    assert!(script.contains(&format!("aurum.server={url} ")), "{script}");
    // And a real install over TLS with the private CA writes the disk.
    let d = crate::install::disk(&env, "d.img", 13);
    let out = env.ok(&[
        "install",
        "--disk",
        d.to_str().unwrap(),
        "--server",
        &url,
        "--ca",
        ca.to_str().unwrap(),
        "--trusted-key",
        &admin_pub,
        "--image",
        "compute",
        "--class",
        class,
    ]);
    assert!(out.contains("installed compute@1"), "{out}");
    crate::install::detached(&d);
}
