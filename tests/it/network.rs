//! A node against servers that misbehave (issue #12, items 10-12): a server that stalls half-way
//! through a pack or never answers, a delta API that answers 502, resets the connection or
//! stalls, and a damaged `packs/list`. Everything on 127.0.0.1; the misbehaving web server is
//! a few lines of Python's http.server, so the static layout it serves is the real repository.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::{have, skip, Env};
use crate::update::{node_at, node_diff, two_revisions};

/// Serves `sys.argv[1]` statically (no Range, like `python3 -m http.server`), misbehaving as
/// told: `PACKS=stall` sends half of every pack and then nothing (each such GET appends a line
/// to the file `HITS`; every POST's path is appended to `HITS.posts`); `DELTAS` is what every POST (/api/v1/deltas, /api/v1/locate) gets: 404
/// (no API, a plain web server), 502 (a proxy whose backend is down), `reset` (the connection
/// is reset), `stall` (no answer, ever) or `garbage` (deltas answer "none pays", and locate
/// answers nonsense).
const MISBEHAVING_SERVER: &str = r#"
import http.server, os, socket, struct, sys, time
root, packs, deltas, hits, portfile = sys.argv[1:6]
class H(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *a, **k):
        super().__init__(*a, directory=root, **k)
    def log_message(self, *a):
        pass
    def do_GET(self):
        if packs == 'stall' and self.path.endswith('.pack'):
            with open(os.path.join(root, self.path.lstrip('/')), 'rb') as f:
                data = f.read()
            with open(hits, 'a') as f:
                f.write(self.path + '\n')
            self.send_response(200)
            self.send_header('Content-Length', str(len(data)))
            self.end_headers()
            self.wfile.write(data[:len(data) // 2])
            self.wfile.flush()
            time.sleep(3600)
            return
        super().do_GET()
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get('Content-Length', 0)))
        with open(hits + '.posts', 'a') as f:
            f.write(self.path + '\n')
        if deltas == 'garbage':
            if self.path.endswith('/locate'):
                out = b'AURUMLC\x01\x07' + b'\x00' * 5
            else:
                # "No delta pays" for every record of a delta request.
                n, i = 0, 0
                while i + 33 <= len(body):
                    i += 33 + 32 * body[i + 32]
                    n += 1
                out = b'\x00' * 5 * n
            self.send_response(200)
            self.send_header('Content-Length', str(len(out)))
            self.end_headers()
            self.wfile.write(out)
            return
        if deltas == 'stall':
            time.sleep(3600)
        elif deltas == 'reset':
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
            self.connection.close()
            self.close_connection = True
        else:
            self.send_error(int(deltas))
s = http.server.ThreadingHTTPServer(('127.0.0.1', 0), H)
with open(portfile + '.tmp', 'w') as f:
    f.write(str(s.server_address[1]))
os.rename(portfile + '.tmp', portfile)
s.serve_forever()
"#;

/// The misbehaving server, killed when dropped.
pub(crate) struct Web {
    child: Child,
    pub(crate) url: String,
    hits: std::path::PathBuf,
}

impl Web {
    pub(crate) fn start(env: &Env, name: &str, packs: &str, deltas: &str) -> Web {
        let dir = env.path(name);
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("server.py");
        std::fs::write(&script, MISBEHAVING_SERVER).unwrap();
        let (hits, portfile) = (dir.join("hits"), dir.join("port"));
        let child = Command::new("python3")
            .arg(&script)
            .arg(env.public())
            .args([packs, deltas])
            .arg(&hits)
            .arg(&portfile)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 is installed by test.sh");
        let started = Instant::now();
        while !portfile.exists() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the test web server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let port = std::fs::read_to_string(&portfile).unwrap();
        Web {
            child,
            url: format!("http://127.0.0.1:{port}"),
            hits,
        }
    }

    /// How many POSTs it was sent to `path`.
    fn posts_to(&self, path: &str) -> usize {
        let posts = self.hits.with_extension("posts");
        std::fs::read_to_string(posts)
            .map(|t| t.lines().filter(|l| *l == path).count())
            .unwrap_or(0)
    }

    /// How many pack GETs it stalled.
    fn stalled(&self) -> usize {
        std::fs::read_to_string(&self.hits)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    }
}

impl Drop for Web {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn aurum(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_aurum"))
        .arg("--no-progress")
        .args(args)
        .output()
        .expect("run aurum")
}

fn update(url: &str, node: &Path, extra: &[&str]) -> (Output, Duration) {
    let started = Instant::now();
    let mut args = vec![
        "updateclient",
        "--server",
        url,
        "--image",
        "c@2",
        "--root",
        node.to_str().unwrap(),
        "--no-default-excludes",
    ];
    args.extend_from_slice(extra);
    let o = aurum(&args);
    (o, started.elapsed())
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Issue #12 item 11: a server that sends half a pack and then nothing made the node wait
/// 315 s in silence. Now each stalled GET is given up after the idle timeout, retried (said
/// on stderr), and the final error names the server, the file and the time waited; the node
/// is left as it was.
#[test]
fn issue12_a_stalled_server_is_retried_then_named() {
    if !have("python3") {
        return skip("needs python3");
    }
    let env = Env::new();
    let (rev1, _) = two_revisions(&env);
    let node = node_at(&env, "node", "c@1");
    let web = Web::start(&env, "web", "stall", "404");
    let (o, took) = update(
        &web.url,
        &node,
        &[
            "--idle-timeout",
            "1",
            "--connect-timeout",
            "1",
            "--http-tries",
            "2",
        ],
    );
    let err = stderr(&o);
    assert!(!o.status.success(), "the update succeeded:\n{err}");
    assert!(took < Duration::from_secs(30), "took {took:?}:\n{err}");
    assert!(err.contains("retrying in"), "no retry was said:\n{err}");
    assert!(
        err.contains("server stalled") || err.contains("stalled"),
        "{err}"
    );
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains(&web.url)
            && last.contains(".pack (bytes ")
            && last.contains("after 2 tries over")
            && last.contains("--idle-timeout"),
        "the final error must name the server, the file, the tries and the time:\n{err}"
    );
    // Two tries of at least one range (four ranges are fetched at once).
    assert!(web.stalled() >= 2, "{} stalled GETs", web.stalled());
    assert_eq!(node_diff(&rev1, &node), "", "the node was changed");
}

/// Issue #12 item 11: a server that accepts connections and never answers a byte.
#[test]
fn issue12_a_silent_server_fails_fast_with_its_name() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    // Left running when the test ends: it holds the connections until the client drops them.
    std::thread::spawn(move || {
        // Hold each connection open, never answering, until the client gives up.
        let mut open = Vec::new();
        for c in listener.incoming().take(2) {
            open.push(c.unwrap());
        }
        for mut c in open {
            let mut sink = Vec::new();
            let _ = c.read_to_end(&mut sink);
        }
    });
    let env = Env::new();
    let node = env.path("node");
    std::fs::create_dir_all(&node).unwrap();
    let started = Instant::now();
    let o = aurum(&[
        "updateclient",
        "--server",
        &url,
        "--image",
        "c",
        "--root",
        node.to_str().unwrap(),
        "--idle-timeout",
        "1",
        "--http-tries",
        "2",
    ]);
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(started.elapsed() < Duration::from_secs(20), "{err}");
    assert!(
        err.contains(&format!(
            "{url}: no usable answer for FORMAT after 2 tries over"
        )),
        "{err}"
    );
}

/// Issue #12 item 12: whatever goes wrong with the optional delta API (a proxy answering 502
/// because its backend is down, a reset connection, no answer), the update fetches whole
/// blobs from the static layout and succeeds, with one warning.
#[test]
fn issue12_a_failing_delta_service_falls_back_to_whole_blobs() {
    if !have("python3") {
        return skip("needs python3");
    }
    let env = Env::new();
    let (_, rev2) = two_revisions(&env);
    for (i, deltas) in ["502", "reset", "stall"].into_iter().enumerate() {
        let node = node_at(&env, &format!("node{i}"), "c@1");
        let web = Web::start(&env, &format!("web{i}"), "serve", deltas);
        let (o, _) = update(&web.url, &node, &["--idle-timeout", "2"]);
        let err = stderr(&o);
        assert!(
            o.status.success(),
            "delta service {deltas}: update failed:\n{err}"
        );
        assert_eq!(node_diff(&rev2, &node), "", "delta service {deltas}");
        assert_eq!(
            err.matches("the delta service failed").count(),
            1,
            "delta service {deltas}: one warning expected:\n{err}"
        );
    }
    // A plain web server (404: no API at all) is the normal case: no warning.
    let node = node_at(&env, "node-plain", "c@1");
    let web = Web::start(&env, "web-plain", "serve", "404");
    let (o, _) = update(&web.url, &node, &[]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(!err.contains("delta service"), "{err}");
    assert_eq!(node_diff(&rev2, &node), "");
}

/// `POST /api/v1/locate` answering nonsense (a proxy mangling it, a server bug): the node
/// reads the pack indexes instead (and keeps them), and the update ends exact.
#[test]
fn a_locate_answer_that_makes_no_sense_falls_back_to_the_pack_indexes() {
    if !have("python3") {
        return skip("needs python3");
    }
    let env = Env::new();
    let (_, rev2) = two_revisions(&env);
    let node = node_at(&env, "node", "c@1");
    let web = Web::start(&env, "web", "serve", "garbage");
    let (o, _) = update(&web.url, &node, &[]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert_eq!(node_diff(&rev2, &node), "");
    let cache = node.join("var/lib/aurum-node/cache");
    assert!(cache.is_dir(), "no index cache at {}", cache.display());
    let indexes = std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .filter(|f| f.file_name().to_string_lossy().ends_with(".idx"))
        .count();
    assert!(indexes > 0, "the pack indexes were not read:\n{err}");
    // Asked once, and not again in the run after an answer that made no sense.
    assert_eq!(web.posts_to("/api/v1/locate"), 1, "{err}");
}

/// On a fresh root the first API call is `POST /api/v1/locate`: when it fails (here 502, a
/// proxy whose backend is down), the delta service is not asked after it (it would wait as
/// long on a stalled server), the one warning says so, and the install ends exact.
#[test]
fn a_failing_locate_on_a_fresh_root_turns_the_delta_service_off_too() {
    if !have("python3") {
        return skip("needs python3");
    }
    let env = Env::new();
    let (_, rev2) = two_revisions(&env);
    let node = env.path("fresh");
    std::fs::create_dir_all(&node).unwrap();
    let web = Web::start(&env, "web", "serve", "502");
    let (o, _) = update(&web.url, &node, &[]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert_eq!(node_diff(&rev2, &node), "");
    assert_eq!(web.posts_to("/api/v1/locate"), 1, "{err}");
    assert_eq!(web.posts_to("/api/v1/deltas"), 0, "{err}");
    assert_eq!(err.matches("the delta service failed").count(), 1, "{err}");
}
