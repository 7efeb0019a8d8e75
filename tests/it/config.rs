//! Configuration (issue #15, item 4): aurum.toml and node.toml in AURUM_CONFIG_DIR, the
//! environment over them and flags over both, `config show` saying where each value came
//! from, a node updating with no flag at all, and `node add` refusing what does not exist.

use crate::common::{json, sh, Env};
use crate::serve::Server;

fn output(cmd: &mut std::process::Command) -> (bool, String, String) {
    let o = cmd.output().expect("run aurum");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn config_show_says_where_each_value_came_from() {
    let env = Env::new();
    let conf = env.config_dir();
    // No file: the defaults.
    let v = json(&output(&mut env.bare(&["config", "show", "--json"])).1);
    let s = &v["settings"];
    assert_eq!(s["repository"]["value"], "/var/lib/aurum");
    assert_eq!(s["repository"]["source"], "default");
    assert_eq!(s["listen"]["value"], "0.0.0.0:8035");
    assert_eq!(s["config-dir"]["source"], "env");
    assert!(s.get("server").is_none(), "{v}");

    env.write_config(
        "aurum.toml",
        &format!(
            "repository = \"{}\"\nlisten = \"127.0.0.1:9000\"\n",
            env.repo().display()
        ),
    );
    env.write_config("node.toml", "server = \"http://master:8035\"\nimage = \"compute:production\"\nexclude = [\"/scratch/*\"]\n");
    let v = json(&output(&mut env.bare(&["config", "show", "--json"])).1);
    let s = &v["settings"];
    let server_file = conf.join("aurum.toml").display().to_string();
    let node_file = conf.join("node.toml").display().to_string();
    assert_eq!(s["repository"]["value"], env.repo().display().to_string());
    assert_eq!(
        (
            s["repository"]["source"].as_str(),
            s["repository"]["from"].as_str()
        ),
        (Some("file"), Some(server_file.as_str()))
    );
    assert_eq!(s["listen"]["value"], "127.0.0.1:9000");
    assert_eq!(
        s["server"]["value"],
        serde_json::json!(["http://master:8035"])
    );
    assert_eq!(s["server"]["from"], node_file);
    assert_eq!(s["image"]["value"], "compute:production");
    assert_eq!(s["exclude"]["value"], serde_json::json!(["/scratch/*"]));
    assert_eq!(v["files"], serde_json::json!([server_file, node_file]));

    // The environment over the files, the flag over the environment.
    let v = json(
        &output(
            env.bare(&["config", "show", "--json"])
                .env("AURUM_REPO", "/srv/env")
                .env("AURUM_SERVER", "http://other:8035"),
        )
        .1,
    );
    assert_eq!(v["settings"]["repository"]["value"], "/srv/env");
    assert_eq!(v["settings"]["repository"]["from"], "AURUM_REPO");
    assert_eq!(
        v["settings"]["server"]["value"],
        serde_json::json!(["http://other:8035"])
    );
    assert_eq!(v["settings"]["server"]["source"], "env");
    let (ok, text, _) = output(
        env.bare(&["--repo", "/srv/flag", "config", "show"])
            .env("AURUM_REPO", "/srv/env"),
    );
    assert!(ok);
    let line = text.lines().find(|l| l.starts_with("repository")).unwrap();
    assert!(
        line.contains("/srv/flag") && line.contains("(flag --repo)"),
        "{text}"
    );
    assert!(text.contains(&format!("(file {node_file})")), "{text}");

    // aurum.toml's repository is the one commands use without --repo.
    let (ok, out, err) = output(&mut env.bare(&["lsimage", "--json"]));
    assert!(ok, "{err}");
    assert_eq!(json(&out), serde_json::json!([]));
}

#[test]
fn a_bad_configuration_file_is_refused_naming_file_and_key() {
    let env = Env::new();
    env.write_config("node.toml", "sever = \"http://master:8035\"\n");
    let o = env.cmd(&["lsimage"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("node.toml") && err.contains("sever") && err.contains("AURUM_CONFIG_DIR"),
        "{err}"
    );
    env.write_config("node.toml", "image = 3\n");
    let o = env.cmd(&["config", "show"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{o:?}");
}

/// With node.toml naming the server(s) and the image, `updateclient` needs no flag; a server
/// that does not answer is passed over for the next one; node.toml's excludes are kept.
#[test]
fn updateclient_takes_server_and_image_from_node_toml() {
    let env = Env::new();
    let tree = env.path("tree");
    sh(&format!(
        "mkdir -p {t}/etc {t}/scratch && echo one > {t}/etc/a && echo img > {t}/scratch/x",
        t = tree.display()
    ));
    env.getimage(&tree, "compute", &[]);
    env.ok(&["tag", "compute@1", "production"]);
    let srv = Server::start(&env);
    // Port 9 on the loopback (discard) is closed here: refused at once.
    env.write_config("node.toml", &format!(
        "server = [\"http://127.0.0.1:9\", \"http://{}\"]\nimage = \"compute:production\"\nexclude = [\"/scratch/*\"]\n",
        srv.addr
    ));
    let node = env.path("node");
    std::fs::create_dir(&node).unwrap();
    let root = node.to_str().unwrap();
    let (ok, out, err) = output(&mut env.bare(&[
        "updateclient",
        "--root",
        root,
        "--http-tries",
        "1",
        "--connect-timeout",
        "2",
    ]));
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("-> compute@1"), "{out}");
    assert!(
        err.contains("127.0.0.1:9") && err.contains("trying the next"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(node.join("etc/a")).unwrap(),
        "one\n"
    );
    assert!(
        !node.join("scratch/x").exists(),
        "node.toml's exclude was not applied"
    );

    // A flag wins over the file: --image names another revision.
    sh(&format!("echo two > {}/etc/a", tree.display()));
    env.getimage(&tree, "compute", &[]);
    let (ok, out, err) = output(&mut env.bare(&[
        "updateclient",
        "--root",
        root,
        "--image",
        "compute@2",
        "--server",
        &format!("http://{}", srv.addr),
    ]));
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("-> compute@2"), "{out}");
    // AURUM_SERVER over node.toml: a dead server named there is the one used, and fails.
    let (ok, _, err) = output(
        env.bare(&[
            "updateclient",
            "--root",
            root,
            "--dry-run",
            "--http-tries",
            "1",
            "--connect-timeout",
            "2",
        ])
        .env("AURUM_SERVER", "http://127.0.0.1:9"),
    );
    assert!(!ok && err.contains("127.0.0.1:9"), "{err}");

    // Without node.toml the error says how to give them.
    std::fs::remove_file(env.config_dir().join("node.toml")).unwrap();
    let (ok, _, err) = output(&mut env.bare(&["updateclient", "--root", root]));
    assert!(
        !ok && err.contains("--image") && err.contains("node.toml"),
        "{err}"
    );
    let (ok, _, err) =
        output(&mut env.bare(&["updateclient", "--root", root, "--image", "compute"]));
    assert!(
        !ok && err.contains("--server") && err.contains("AURUM_SERVER"),
        "{err}"
    );
}

/// `node add` (and `set`, `import`) refuse a class or image the repository does not have,
/// and a malformed MAC, saying what to do; nothing is added.
#[test]
fn node_add_checks_class_image_and_mac() {
    let env = Env::new();
    let tree = env.path("tree");
    sh(&format!(
        "mkdir -p {t}/etc && echo one > {t}/etc/a",
        t = tree.display()
    ));
    env.getimage(&tree, "compute", &[]);
    let mac = "52:54:00:00:00:01";
    let err = env.fails(&["node", "add", "n1", "--mac", mac, "--class", "gpu"], 2);
    assert!(
        err.contains("no class `gpu`")
            && err.contains("aurum template new gpu")
            && err.contains("compute"),
        "{err}"
    );
    let err = env.fails(&["node", "add", "n1", "--mac", mac, "--image", "nosuch"], 2);
    assert!(
        err.contains("nosuch") && err.contains("aurum lsimage"),
        "{err}"
    );
    let err = env.fails(
        &[
            "node",
            "add",
            "n1",
            "--mac",
            mac,
            "--image",
            "compute:production",
        ],
        2,
    );
    assert!(err.contains("no tag `production`"), "{err}");
    let err = env.fails(&["node", "add", "n1", "--mac", "52:54:00:00:01"], 2);
    assert!(
        err.contains("not a MAC address") && err.contains("six hex bytes"),
        "{err}"
    );
    assert_eq!(
        json(&env.ok(&["node", "list", "--json"])),
        serde_json::json!([])
    );

    env.ok(&[
        "node",
        "add",
        "n1",
        "--mac",
        mac,
        "--class",
        "compute",
        "--image",
        "compute@1",
    ]);
    let err = env.fails(&["node", "set", "n1", "--class", "gpu"], 2);
    assert!(err.contains("no class `gpu`"), "{err}");
    env.ok(&["node", "set", "n1", "--class", "", "--group", "rack1"]);
    let csv = env.path("nodes.csv");
    std::fs::write(
        &csv,
        "name,mac,image\nn2,52:54:00:00:00:02,compute\nn3,52:54:00:00:00:03,nosuch\n",
    )
    .unwrap();
    let err = env.fails(&["node", "import", csv.to_str().unwrap()], 2);
    assert!(
        err.contains("node n3") && err.contains("nothing was imported"),
        "{err}"
    );
    assert_eq!(
        json(&env.ok(&["node", "list", "--json"]))
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// aurum.toml's `listen` is where `serve` listens and its `url` what the PXE files point
/// nodes at, with no flag; without `url`, pxe says how to give it.
#[test]
fn aurum_toml_gives_serve_and_pxe_their_defaults() {
    use std::io::{BufRead, BufReader};
    let env = Env::new();
    let tftp = env.path("tftp");
    let err = env.fails(&["pxe", "tftp", "--tftp-root", tftp.to_str().unwrap()], 2);
    assert!(
        err.contains("--server URL") && err.contains("aurum.toml"),
        "{err}"
    );
    env.write_config(
        "aurum.toml",
        &format!(
            "repository = \"{}\"\nlisten = \"127.0.0.1:0\"\nurl = \"http://10.9.8.7:8035\"\n",
            env.repo().display()
        ),
    );
    let mut child = env
        .bare(&["serve"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let first = BufReader::new(child.stderr.take().unwrap())
        .lines()
        .next()
        .unwrap()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        first.contains(&format!(
            "serving {} on http://127.0.0.1:",
            env.repo().display()
        )),
        "{first}"
    );
    let (ok, _, err) =
        output(&mut env.bare(&["pxe", "tftp", "--tftp-root", tftp.to_str().unwrap()]));
    assert!(ok, "{err}");
    let boot = std::fs::read_to_string(tftp.join("boot.ipxe")).unwrap();
    assert!(boot.contains("http://10.9.8.7:8035"), "{boot}");
}
