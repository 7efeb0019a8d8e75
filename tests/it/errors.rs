//! Errors an administrator can act on: bad inputs, one table row each, and the message must
//! name what failed, why, and what to do, with the exit code book/src/errors.md documents.
//!
//! Each row runs a bash snippet in a scratch directory holding a repository `$R` with
//! `compute@1` and `compute@2` (tag `prod` on @1), its golden client `$G`, an empty node root
//! `$N` and `$D` (the directory itself), with `aurum` on PATH; the snippet's last command is
//! the aurum call under test. The bar, beyond each row's fragments: an `aurum: error:` line,
//! no sentence said twice, and no internal guess ("garbage-collected?") in place of a cause.

use super::common::{can_run, have, is_root, Env, Ext4};
use std::process::Command;

struct Case {
    name: &'static str,
    /// Bash: setup, then the aurum command (`aurum` is the built binary with --repo $R).
    script: &'static str,
    code: i32,
    /// Fragments the message must hold: what failed, and the command or action that fixes it.
    says: &'static [&'static str],
}

/// A Python HTTP server on a free port in the background, its URL in $URL: `serve DIR` serves
/// files; `serve500` answers every request with HTTP 500.
const HTTP: &str = r#"
serve() { python3 -c '
import http.server, functools, sys, socketserver
h = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
h.log_message = lambda *a: None
s = http.server.HTTPServer(("127.0.0.1", 0), h); print(s.server_port, flush=True); s.serve_forever()' "$1" > $D/port & until [ -s $D/port ]; do sleep 0.1; done; URL=http://127.0.0.1:$(cat $D/port); }
serve500() { python3 -c '
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self): self.send_response(500); self.end_headers()
    def log_message(self, *a): pass
s = http.server.HTTPServer(("127.0.0.1", 0), H); print(s.server_port, flush=True); s.serve_forever()' > $D/port & until [ -s $D/port ]; do sleep 0.1; done; URL=http://127.0.0.1:$(cat $D/port); }
trap 'kill $(jobs -p) 2>/dev/null' EXIT
"#;

#[rustfmt::skip]
const CASES: &[Case] = &[
    // Revision references.
    Case { name: "revision number out of range", script: "aurum show compute@9", code: 2, says: &["compute", "no revision 9", "aurum log compute"] },
    Case { name: "revision spec not a number", script: "aurum show compute@x", code: 2, says: &["compute@x", "revision number", "aurum log compute"] },
    Case { name: "missing image", script: "aurum show nosuch", code: 2, says: &["nosuch", "aurum lsimage"] },
    Case { name: "unknown tag", script: "aurum checkout compute:nosuch $D/co", code: 2, says: &["no tag `nosuch`", "aurum log compute"] },
    Case { name: "log of a missing image", script: "aurum log nosuch", code: 2, says: &["no image `nosuch`", "aurum lsimage"] },
    Case { name: "diff with a missing revision", script: "aurum diff compute@1 compute@7", code: 2, says: &["no revision 7", "aurum log compute"] },
    // Names.
    Case { name: "bad image name", script: "aurum getimage --golden-client $G --image 'bad name'", code: 2, says: &["`bad name`", "use letters, digits"] },
    Case { name: "bad tag name", script: "aurum tag compute@1 bad/tag", code: 2, says: &["`bad/tag`", "use letters, digits"] },
    Case { name: "delete an unknown tag", script: "aurum tag --delete compute:nosuch", code: 2, says: &["no tag `nosuch`", "aurum log compute"] },
    Case { name: "cpimage onto an existing image", script: "aurum cpimage compute compute", code: 2, says: &["already exists", "aurum rmimage compute"] },
    Case { name: "rmimage of a missing image", script: "aurum rmimage nosuch", code: 2, says: &["no image `nosuch`", "aurum lsimage"] },
    Case { name: "mvimage of a missing image", script: "aurum mvimage nosuch other", code: 2, says: &["no image `nosuch`", "aurum lsimage"] },
    // Repository.
    Case { name: "no repository", script: "$AURUM --repo $D/none lsimage", code: 2, says: &["no aurum repository at", "aurum init --repo"] },
    Case { name: "newer repository format", script: "echo 'aurum repository format 9' > $R/FORMAT; aurum lsimage", code: 2, says: &["format 9", "newer aurum", "upgrade aurum"] },
    Case { name: "damaged FORMAT file", script: "echo garbage > $R/FORMAT; aurum lsimage", code: 3, says: &["FORMAT is damaged", "`garbage`", "restore it"] },
    Case { name: "flipped byte in a pack", script: "p=$(ls $R/public/packs/*/*.pack | head -1); printf X | dd of=$p bs=1 seek=100 conv=notrunc status=none; aurum verify", code: 3, says: &["DAMAGED pack", "aurum verify --repair"] },
    Case { name: "flipped byte read by cat", script: "for p in $R/public/packs/*/*.pack; do printf X | dd of=$p bs=1 seek=100 conv=notrunc status=none; done; aurum cat compute@1 /usr/lib/big", code: 3, says: &["is damaged", "aurum verify"] },
    Case { name: "truncated manifest", script: "for m in $R/public/manifests/*/*; do truncate -s 20 $m; done; aurum checkout compute $D/co", code: 3, says: &["manifest", "is damaged", "aurum verify"] },
    Case { name: "init over a golden tree", script: "aurum init --repo $G", code: 2, says: &["is not empty", "give a new or empty directory"] },
    // Reading revisions.
    Case { name: "cat of a missing path", script: "aurum cat compute /etc/nosuch", code: 2, says: &["has no /etc/nosuch", "aurum ls compute@2"] },
    Case { name: "cat of a directory", script: "aurum cat compute /etc", code: 2, says: &["/etc is a dir", "not a file", "aurum ls"] },
    Case { name: "checkout into a non-empty directory", script: "mkdir -p $D/co/x; aurum checkout compute $D/co", code: 2, says: &["not empty", "empty"] },
    Case { name: "export to an unknown compression", script: "aurum export compute -o $D/x.tar.bz2", code: 2, says: &["x.tar.bz2", "name the archive", "-o -"] },
    // Import and capture.
    Case { name: "import of a missing archive", script: "aurum import --image i $D/none.tar", code: 2, says: &["no archive", "none.tar", "give the path"] },
    Case { name: "import path escaping the root", script: "mkdir $D/e && echo x > $D/e/f && tar -C $D/e -cf $D/e.tar --transform 's,^./f,../evil,' ./f 2>/dev/null; aurum import --image e $D/e.tar", code: 2, says: &["../evil", "leaves the root", "repack it"] },
    Case { name: "golden client missing", script: "aurum getimage --golden-client $D/none --image c", code: 2, says: &["is not a directory", "give a mounted root"] },
    Case { name: "bad --ssh", script: "aurum getimage --golden-client ssh://h/ --ssh 'ssh \"' --image c", code: 2, says: &["--ssh"] },
    // Nodes and the network.
    Case { name: "node root missing", script: "aurum updateclient --server http://127.0.0.1:1 --image compute --root $D/none", code: 2, says: &["is not a directory", "give --root"] },
    Case { name: "server down", script: "aurum updateclient --server http://127.0.0.1:1 --image compute --root $N --http-tries 1 --connect-timeout 1", code: 1, says: &["http://127.0.0.1:1", "check that the server", "up and reachable"] },
    Case { name: "server answering 404", script: "mkdir $D/www; serve $D/www; aurum updateclient --server $URL --image compute --root $N --http-tries 1", code: 2, says: &["serves no aurum repository", "check the URL", "public/"] },
    Case { name: "server answering 500", script: "serve500; aurum updateclient --server $URL --image compute --root $N --http-tries 1", code: 1, says: &["HTTP 500", "its log"] },
    Case { name: "missing refs file", script: "rm $R/public/refs/compute/head; serve $R/public; aurum updateclient --server $URL --image compute --root $N --http-tries 1", code: 2, says: &["no image `compute`", "refs/compute/head", "aurum verify --repair"] },
    Case { name: "updateclient without an image", script: "aurum updateclient --server http://127.0.0.1:1 --root $N", code: 2, says: &["--image", "node.toml"] },
    Case { name: "rollback with nothing to go back to", script: "aurum rollback --root $N", code: 2, says: &["no previous revision", "aurum node-status", "--to"] },
    Case { name: "unknown config key", script: "mkdir -p $AURUM_CONFIG_DIR; echo 'sever = \"x\"' > $AURUM_CONFIG_DIR/node.toml; aurum lsimage", code: 2, says: &["node.toml", "sever", "fix the file"] },
    // Templates and the node database.
    Case { name: "bad template", script: "printf '[[partition]]\\nmountpoint = \"/\"\\n' > $D/bad.toml; aurum template import $D/bad.toml", code: 2, says: &["bad.toml:1", "unknown field `partition`", "expected one of"] },
    Case { name: "missing template file", script: "aurum template import $D/none.toml", code: 2, says: &["no template file", "aurum template show"] },
    Case { name: "unknown class", script: "aurum node add n01 --mac 52:54:00:00:00:01 --class nosuch", code: 2, says: &["no class `nosuch`", "aurum template new nosuch"] },
    Case { name: "bad MAC", script: "aurum node add n01 --mac 52:54:00:zz:00:01", code: 2, says: &["52:54:00:zz:00:01", "is not a MAC address", "give six hex bytes"] },
    Case { name: "bad node set", script: "aurum exec 'n[1-' -- true", code: 2, says: &["`n[1-` is not a node set", "n[01-64,70]"] },
    Case { name: "node add with a missing image", script: "aurum node add n01 --mac 52:54:00:00:00:01 --image nosuch", code: 2, says: &["nosuch", "aurum lsimage"] },
];

/// Runs one case; returns what is wrong with its message, if anything.
fn check(case: &Case) -> Option<String> {
    let env = Env::new();
    let g = env.path("golden");
    std::fs::create_dir_all(g.join("etc")).unwrap();
    std::fs::create_dir_all(g.join("usr/lib")).unwrap();
    std::fs::write(g.join("etc/motd"), "one\n").unwrap();
    super::common::write_random(&g.join("usr/lib/big"), 7, 200_000);
    env.getimage(&g, "compute", &[]);
    std::fs::write(g.join("etc/motd"), "two\n").unwrap();
    env.getimage(&g, "compute", &[]);
    env.ok(&["tag", "compute@1", "prod"]);
    std::fs::create_dir_all(env.path("node")).unwrap();
    let aurum = env!("CARGO_BIN_EXE_aurum");
    let script = format!(
        "D={d}; R={r}; G={g}; N={d}/node; AURUM={aurum}\n{HTTP}\naurum() {{ {aurum} --no-progress --repo $R \"$@\"; }}\n{}",
        case.script,
        d = env.dir.path().display(),
        r = env.repo().display(),
        g = g.display(),
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .env_remove("AURUM_REPO")
        .env_remove("AURUM_SERVER")
        .env("AURUM_CONFIG_DIR", env.config_dir())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let all = format!("{}{err}", String::from_utf8_lossy(&out.stdout));
    let mut wrong = Vec::new();
    if out.status.code() != Some(case.code) {
        wrong.push(format!("exit {:?}, not {}", out.status.code(), case.code));
    }
    if !all.contains("aurum: error: ") && !all.contains("error: ") {
        wrong.push("no error line".into());
    }
    for s in case.says {
        if !all.contains(s) {
            wrong.push(format!("does not say `{s}`"));
        }
    }
    for bad in ["garbage-collected?", "not implemented"] {
        if all.contains(bad) {
            wrong.push(format!("says `{bad}`"));
        }
    }
    for line in all.lines() {
        let parts: Vec<&str> = line.split("; ").filter(|p| p.len() > 12).collect();
        for (k, p) in parts.iter().enumerate() {
            if parts[..k].contains(p) {
                wrong.push(format!("says `{p}` twice"));
            }
        }
    }
    (!wrong.is_empty()).then(|| {
        format!(
            "{}: {}\n  {}",
            case.name,
            wrong.join(", "),
            all.trim().replace('\n', "\n  ")
        )
    })
}

#[test]
fn every_error_says_what_why_and_what_to_do() {
    if !can_run(
        have("python3"),
        "python3 (the HTTP server of the server rows)",
    ) {
        return;
    }
    assert!(CASES.len() >= 40, "the table has {} rows", CASES.len());
    let fails: Vec<String> = CASES.iter().filter_map(check).collect();
    assert!(
        fails.is_empty(),
        "{} of {} errors fail the bar:\n{}",
        fails.len(),
        CASES.len(),
        fails.join("\n")
    );
}

/// Privilege and space: not root where root is needed, an unreadable golden client, a full
/// disk. These need root to set up (setpriv, a loop-mounted ext4).
#[test]
fn privilege_and_space_errors_say_what_to_do() {
    if !can_run(
        is_root() && have("setpriv") && have("mkfs.ext4"),
        "root, setpriv and mkfs.ext4",
    ) {
        return;
    }
    let env = Env::new();
    let big = env.path("big");
    super::common::write_random(&big.join("f"), 3, 20 << 20);
    env.getimage(&big, "big", &[]);
    let fs = Ext4::mount(&env.path("img"), &env.path("mnt"), 8);
    let full = env.path("mnt/co");
    let err = env.fails(&["checkout", "big", full.to_str().unwrap()], 1);
    assert!(
        err.contains("No space left") && err.contains("free space on that filesystem"),
        "{err}"
    );
    assert!(!full.exists(), "the failed checkout was removed");
    drop(fs);

    // Not root: a repository and a golden client of user nobody, a directory it cannot read.
    let nobody = env.path("nobody");
    super::common::sh(&format!(
        "mkdir -p {n}/secret {n}/pub && echo s > {n}/secret/f && echo p > {n}/pub/f && chmod 700 {n}/secret && chown 65534 {n} && chmod 755 {d}",
        n = nobody.display(),
        d = env.dir.path().display()
    ));
    let as_nobody = |args: &[&str]| {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_aurum"))
            .arg("--no-progress")
            .arg("--repo")
            .arg(nobody.join("repo"))
            .args(args)
            .env("AURUM_CONFIG_DIR", env.config_dir())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(as_nobody(&["init"]).0, Some(0));
    let (code, err) = as_nobody(&[
        "getimage",
        "--golden-client",
        nobody.join("secret").to_str().unwrap(),
        "--image",
        "s",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("Permission denied") && err.contains("run the command as root"),
        "{err}"
    );
    let (code, err) = as_nobody(&[
        "getimage",
        "--golden-client",
        nobody.join("pub").to_str().unwrap(),
        "--image",
        "p",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = as_nobody(&["chroot", "p", "--", "true"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("run it as root") || err.contains("as root"),
        "{err}"
    );
}
