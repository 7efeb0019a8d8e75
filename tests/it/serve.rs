//! `aurum serve`: the static layout with HTTP Range, the JSON API and node reports, many
//! clients at once, and a clean stop on SIGTERM. Everything on 127.0.0.1.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::common::{json, write_random, Env};

/// A running `aurum serve`, killed when dropped.
pub struct Server {
    pub child: Child,
    pub addr: String,
    /// `http://ADDR`, or `https://ADDR` for a server with a certificate.
    pub url: String,
    /// Body bytes sent so far, from the server's request log.
    pub sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Server {
    pub fn start(env: &Env) -> Server {
        Server::start_with(env, &[])
    }

    /// Starts `aurum serve` with `extra` arguments; the writes of the test's commands carry
    /// the repository's admin token ([`Env::admin_token`]).
    pub fn start_with(env: &Env, extra: &[&str]) -> Server {
        env.admin_token();
        let mut args = vec!["serve", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let mut child = env
            .cmd(&args)
            .stderr(Stdio::piped())
            .spawn()
            .expect("start aurum serve");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        // Notes may come first (an older repository's upgrade); the address line says `serving`.
        let first = lines
            .find(|l| {
                l.as_ref()
                    .map_or(true, |l| l.contains("serving") || l.contains("caching"))
            })
            .expect("serve prints its address")
            .unwrap();
        // The last URL of the line (http:// or https://): a cache tier names its upstream
        // first.
        let addr = first
            .rsplit("://")
            .next()
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or_else(|| panic!("no address in `{first}`"))
            .to_string();
        let scheme = first
            .rsplit_once("://")
            .and_then(|(before, _)| before.rsplit(|c: char| !c.is_ascii_alphabetic()).next())
            .unwrap_or("http");
        let url = format!("{scheme}://{addr}");
        // Keep draining the request log so the server never blocks on a full pipe, adding
        // up the body bytes of each line (`PEER METHOD TARGET STATUS BYTES`).
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = sent.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Some(n) = line
                    .split_whitespace()
                    .last()
                    .and_then(|n| n.parse::<u64>().ok())
                {
                    counter.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
        Server {
            child,
            addr,
            url,
            sent,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request; returns (status, headers in lowercase, body).
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header block");
    let head = String::from_utf8_lossy(&raw[..split]).to_lowercase();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head, raw[split + 4..].to_vec())
}

fn a_pack(env: &Env) -> (String, Vec<u8>) {
    let packs = env.public().join("packs");
    for d in std::fs::read_dir(&packs).unwrap() {
        let d = d.unwrap().path();
        if d.is_dir() {
            for f in std::fs::read_dir(&d).unwrap() {
                let f = f.unwrap().path();
                if f.extension().is_some_and(|e| e == "pack") {
                    let rel = f
                        .strip_prefix(env.public())
                        .unwrap()
                        .to_str()
                        .unwrap()
                        .to_string();
                    return (format!("/{rel}"), std::fs::read(&f).unwrap());
                }
            }
        }
    }
    panic!("no pack");
}

fn repo_with_an_image(env: &Env) {
    let src = env.path("g");
    write_random(&src.join("usr/lib/big.bin"), 7, 3 << 20);
    std::fs::write(src.join("motd"), b"hello\n").unwrap();
    env.getimage(&src, "img", &[]);
}

/// A server for a repository with an image, and one of its packs (URL path and bytes).
fn serving_a_pack() -> (Env, Server, String, Vec<u8>) {
    let env = Env::new();
    repo_with_an_image(&env);
    let srv = Server::start(&env);
    let (pack, bytes) = a_pack(&env);
    (env, srv, pack, bytes)
}

#[test]
fn serves_the_static_layout_with_ranges() {
    let env = Env::new();
    repo_with_an_image(&env);
    let srv = Server::start(&env);
    let (st, _, body) = http(&srv.addr, "GET", "/FORMAT", &[], b"");
    assert_eq!(
        (st, body.as_slice()),
        (200, &b"aurum repository format 2\n"[..])
    );
    let head = std::fs::read(env.public().join("refs/img/head")).unwrap();
    assert_eq!(http(&srv.addr, "GET", "/refs/img/head", &[], b"").2, head);

    let (pack, bytes) = a_pack(&env);
    let (st, h, body) = http(&srv.addr, "GET", &pack, &[("Range", "bytes=0-7")], b"");
    assert_eq!(st, 206, "{h}");
    assert_eq!(body, b"AURUMPK\x01");
    assert!(
        h.contains(&format!("content-range: bytes 0-7/{}", bytes.len())),
        "{h}"
    );
    assert!(h.contains("immutable"), "{h}");
    let n = bytes.len();
    let (st, _, body) = http(
        &srv.addr,
        "GET",
        &pack,
        &[("Range", &format!("bytes={}-", n - 100))],
        b"",
    );
    assert_eq!((st, body.as_slice()), (206, &bytes[n - 100..]));
    let (st, _, body) = http(&srv.addr, "GET", &pack, &[], b"");
    assert_eq!(st, 200);
    assert!(body == bytes, "whole pack differs");
    let (st, h, body) = http(&srv.addr, "HEAD", &pack, &[], b"");
    assert_eq!(st, 200);
    assert!(
        body.is_empty() && h.contains(&format!("content-length: {n}")),
        "{h}"
    );
    assert_eq!(
        http(
            &srv.addr,
            "GET",
            &pack,
            &[("Range", &format!("bytes={n}-"))],
            b""
        )
        .0,
        416
    );

    // Nothing outside the static layout.
    for bad in [
        "/aurum.db",
        "/lock",
        "/tmp/",
        "/packs/../aurum.db",
        "/nothing",
    ] {
        assert_eq!(http(&srv.addr, "GET", bad, &[], b"").0, 404, "{bad}");
    }
    assert_eq!(http(&srv.addr, "DELETE", "/FORMAT", &[], b"").0, 405);
}

#[test]
fn api_lists_images_and_records_node_reports() {
    let env = Env::new();
    repo_with_an_image(&env);
    let srv = Server::start(&env);
    let (st, _, body) = http(&srv.addr, "GET", "/api/v1/images", &[], b"");
    assert_eq!(st, 200);
    assert_eq!(json(&String::from_utf8_lossy(&body))[0]["name"], "img");
    let (st, _, body) = http(&srv.addr, "GET", "/api/v1/images/img/revisions", &[], b"");
    assert_eq!(st, 200);
    let revs = json(&String::from_utf8_lossy(&body));
    let id = revs[0]["id"].as_str().unwrap().to_string();
    assert_eq!(
        http(&srv.addr, "GET", "/api/v1/images/nope/revisions", &[], b"").0,
        404
    );
    // A known endpoint asked with the wrong method: 405, naming the right one.
    let (st, head, _) = http(&srv.addr, "DELETE", "/api/v1/images", &[], b"");
    assert_eq!(st, 405);
    assert!(head.contains("allow: get"), "{head}");
    assert_eq!(http(&srv.addr, "GET", "/api/v1/reports", &[], b"").0, 405);
    assert_eq!(http(&srv.addr, "GET", "/api/v1/nothing", &[], b"").0, 404);

    let report = format!(
        r#"{{"hostname":"n01","image":"img","revision":"{id}","action":"updateclient","result":"ok","bytes":1234,"seconds":0.5}}"#
    );
    let auth = format!("Bearer {}", env.admin_token());
    assert_eq!(
        http(
            &srv.addr,
            "POST",
            "/api/v1/reports",
            &[
                ("Content-Type", "application/json"),
                ("Authorization", &auth)
            ],
            report.as_bytes()
        )
        .0,
        204
    );
    let (st, _, body) = http(
        &srv.addr,
        "POST",
        "/api/v1/reports",
        &[],
        b"{\"hostname\":\"n02\"}",
    );
    assert_eq!(st, 400, "{}", String::from_utf8_lossy(&body));
    let bad_host = report.replace("n01", "../n01");
    assert_eq!(
        http(
            &srv.addr,
            "POST",
            "/api/v1/reports",
            &[],
            bad_host.as_bytes()
        )
        .0,
        400
    );

    let (_, _, body) = http(&srv.addr, "GET", "/api/v1/nodes", &[], b"");
    let nodes = json(&String::from_utf8_lossy(&body));
    assert_eq!(nodes.as_array().unwrap().len(), 1);
    assert_eq!(nodes[0]["hostname"], "n01");
    assert_eq!(nodes[0]["address"], "127.0.0.1");
    let listed = json(&env.ok(&["nodes", "--json"]));
    assert_eq!(listed[0]["revision"], id.as_str());
    let table = env.ok(&["nodes"]);
    assert!(
        table.contains("n01") && table.contains(&id[..8]) && table.contains("updateclient"),
        "{table}"
    );
}

#[test]
fn sixteen_clients_at_once_get_exact_bytes() {
    let (_env, srv, pack, bytes) = serving_a_pack();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let (addr, pack, bytes) = (&srv.addr, &pack, &bytes);
                s.spawn(move || {
                    for k in 0..4 {
                        let a = (i * 7919 + k * 104_729) % (bytes.len() - 4096);
                        let range = format!("bytes={a}-{}", a + 4095);
                        let (st, _, body) = http(addr, "GET", pack, &[("Range", &range)], b"");
                        assert_eq!(st, 206);
                        assert!(body == bytes[a..a + 4096], "client {i} got wrong bytes");
                    }
                    let (_, _, whole) = http(addr, "GET", pack, &[], b"");
                    assert!(whole == *bytes, "client {i} got a wrong pack");
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    });
}

/// A request that holds its worker a long time (here node reports waiting for the catalog,
/// which another process has locked) must not hold the other nodes' requests: the server
/// runs one worker per core and adds workers while every one of them is held up.
#[test]
fn requests_held_up_do_not_hold_the_others() {
    let env = Env::new();
    repo_with_an_image(&env);
    // One report per core and two more: more than the server starts workers for.
    let held = std::thread::available_parallelism().map_or(2, |n| n.get()) + 2;
    let threads = (held + 4).to_string();
    let srv = Server::start_with(&env, &["--threads", &threads, "--open-writes"]);
    let (_, _, body) = http(&srv.addr, "GET", "/api/v1/images/img/revisions", &[], b"");
    let id = json(&String::from_utf8_lossy(&body))[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let db = rusqlite::Connection::open(env.repo().join("aurum.db")).unwrap();
    db.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let reports: Vec<_> = (0..held)
        .map(|i| {
            let (addr, id) = (srv.addr.clone(), id.clone());
            std::thread::spawn(move || {
                let report = format!(
                    r#"{{"hostname":"n{i:02}","image":"img","revision":"{id}","action":"updateclient","result":"ok","bytes":1,"seconds":0.1}}"#
                );
                http(&addr, "POST", "/api/v1/reports", &[], report.as_bytes()).0
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    for _ in 0..3 {
        assert_eq!(http(&srv.addr, "GET", "/FORMAT", &[], b"").0, 200);
    }
    // The catalog stays locked for 60 s (SQLite's wait): answered long before that.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered only after {:?}",
        started.elapsed()
    );
    db.execute_batch("COMMIT").unwrap();
    for r in reports {
        assert_eq!(r.join().unwrap(), 204);
    }
}

/// Nodes that hang half-way through a download must not hold the server: their connections
/// are dropped after the stall timeout and others are answered.
#[test]
fn hung_clients_do_not_block_the_server() {
    let env = Env::new();
    let src = env.path("g");
    // Random, so stored as is: far more than the socket buffers of a client that never reads.
    write_random(&src.join("big.bin"), 11, 48 << 20);
    env.getimage(&src, "img", &[]);
    let srv = Server::start_with(&env, &["--threads", "2", "--stall-timeout", "2"]);
    let (pack, _) = a_pack(&env);
    // A server left without a connection for longer than the stall timeout still accepts.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(http(&srv.addr, "GET", "/FORMAT", &[], b"").0, 200);
    // Four clients ask for the pack and never read a byte: more than the server has threads.
    let hung: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = TcpStream::connect(&srv.addr).unwrap();
            let req = format!("GET {pack} HTTP/1.1\r\nHost: {}\r\n\r\n", srv.addr);
            s.write_all(req.as_bytes()).unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    // `http` gives up after 30 s: without the stall timeout this would wait for ever.
    let started = Instant::now();
    let (st, _, body) = http(&srv.addr, "GET", "/FORMAT", &[], b"");
    assert_eq!(st, 200);
    assert!(body.starts_with(b"aurum repository format"));
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "answered only after {:?}",
        started.elapsed()
    );
    drop(hung);
}

/// Nodes that go away in the middle of a pack (a reboot, a killed update) must not stop the
/// server: `sendfile` to a closed connection raises SIGPIPE.
#[test]
fn clients_that_go_away_mid_answer_do_not_stop_the_server() {
    let env = Env::new();
    let src = env.path("g");
    write_random(&src.join("big.bin"), 12, 24 << 20);
    env.getimage(&src, "img", &[]);
    let srv = Server::start(&env);
    let (pack, _) = a_pack(&env);
    for _ in 0..4 {
        let mut s = TcpStream::connect(&srv.addr).unwrap();
        let req = format!("GET {pack} HTTP/1.1\r\nHost: {}\r\n\r\n", srv.addr);
        s.write_all(req.as_bytes()).unwrap();
        let mut some = [0u8; 4096];
        s.read_exact(&mut some).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(http(&srv.addr, "GET", "/FORMAT", &[], b"").0, 200);
}

#[test]
fn stops_cleanly_on_sigterm() {
    let env = Env::new();
    let mut srv = Server::start(&env);
    assert_eq!(http(&srv.addr, "GET", "/FORMAT", &[], b"").0, 200);
    let pid = nix::unistd::Pid::from_raw(srv.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = srv.child.try_wait().unwrap() {
            assert!(status.success(), "serve exited with {status} on SIGTERM");
            break;
        }
        assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// RFC 9110's range rules: a 416 says the length, a stale `If-Range` gets the whole object,
/// several ranges at once get the whole object (200) rather than an error, and a current
/// validator gets a 304.
#[test]
fn issue23_ranges_and_validators_follow_rfc_9110() {
    let (env, srv, pack, bytes) = serving_a_pack();
    let n = bytes.len();
    let (st, h, _) = http(
        &srv.addr,
        "GET",
        &pack,
        &[("Range", &format!("bytes={n}-"))],
        b"",
    );
    assert_eq!(st, 416);
    assert!(h.contains(&format!("content-range: bytes */{n}")), "{h}");

    let (st, h, _) = http(&srv.addr, "HEAD", &pack, &[], b"");
    assert_eq!(st, 200);
    let etag = h
        .lines()
        .find_map(|l| l.strip_prefix("etag: "))
        .unwrap_or_else(|| panic!("no ETag in {h}"))
        .trim()
        .to_string();
    // (`http` lowercases the head, and HTTP dates are case-sensitive.)
    let mtime = std::fs::metadata(env.public().join(pack.trim_start_matches('/')))
        .unwrap()
        .modified()
        .unwrap();
    let modified = httpdate::fmt_http_date(mtime);
    assert!(
        h.contains(&format!("last-modified: {}", modified.to_lowercase())),
        "{h}"
    );
    // A current validator: the range applies.
    for v in [etag.as_str(), modified.as_str()] {
        let (st, _, body) = http(
            &srv.addr,
            "GET",
            &pack,
            &[("Range", "bytes=0-7"), ("If-Range", v)],
            b"",
        );
        assert_eq!((st, body.len()), (206, 8), "{v}");
    }
    // A stale one: the whole object.
    for v in ["\"1-2\"", "Mon, 01 Jan 2001 00:00:00 GMT"] {
        let (st, _, body) = http(
            &srv.addr,
            "GET",
            &pack,
            &[("Range", "bytes=0-7"), ("If-Range", v)],
            b"",
        );
        assert_eq!((st, body.len()), (200, n), "{v}");
    }
    let (st, _, body) = http(&srv.addr, "GET", &pack, &[("Range", "bytes=0-1,5-6")], b"");
    assert_eq!((st, body.len()), (200, n));
    let (st, _, body) = http(&srv.addr, "GET", &pack, &[("If-None-Match", &etag)], b"");
    assert_eq!((st, body.len()), (304, 0));
}

/// Issue 23: connections that send half a request head are closed after the stall timeout,
/// others are answered meanwhile, and once they have gone nodes still install and update from
/// the server (tiny_http's thread pool once left a later connection unread after such a
/// crowd went away, and the node hung).
#[test]
fn issue23_half_sent_heads_are_dropped_and_nothing_is_left_unread() {
    let env = Env::new();
    repo_with_an_image(&env);
    let srv = Server::start_with(&env, &["--stall-timeout", "3"]);
    let half: Vec<TcpStream> = (0..300)
        .map(|_| {
            let mut s = TcpStream::connect(&srv.addr).unwrap();
            s.write_all(b"GET /FORMAT HTTP/1.1\r\nHost: x\r\nRange: by")
                .unwrap();
            s
        })
        .collect();
    let (st, _, body) = http(&srv.addr, "GET", "/FORMAT", &[], b"");
    assert_eq!(st, 200);
    assert!(body.starts_with(b"aurum repository format"));
    // Each is closed by the server: the read ends (EOF or reset) rather than timing out. The
    // 30 s here is a bound for a stuck test, not a measure: the server closes them after 3 s.
    for mut s in half {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = [0u8; 512];
        match s.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!(
                "the server answered half a head: {}",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(e) => assert!(
                !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "a half-sent head was still held after 30 s"
            ),
        }
    }
    // Twenty fresh installs in a row; a request left unread would fail one after 20 s.
    let url = format!("http://{}", srv.addr);
    for i in 0..20 {
        let root = env.path(&format!("node{i}"));
        std::fs::create_dir_all(&root).unwrap();
        env.ok(&[
            "updateclient",
            "--server",
            &url,
            "--image",
            "img",
            "--root",
            root.to_str().unwrap(),
            "--no-default-excludes",
            "--idle-timeout",
            "20",
            "--http-tries",
            "1",
        ]);
        assert_eq!(std::fs::read(root.join("motd")).unwrap(), b"hello\n");
    }
}

/// A node updating from `aurum serve` asks where the blobs it lacks lie (`POST
/// /api/v1/locate`) and reads no pack index: its index cache stays empty (from a plain web
/// server it reads the indexes, as `network.rs` drives). The answer places every stored blob
/// as its pack index does, a group member with its group's body length, and no other blob.
#[test]
fn an_update_from_aurum_serve_locates_its_blobs_without_pack_indexes() {
    use aurum::format::pack::{self, Codec};
    use aurum::format::Id;
    let env = Env::new();
    let (a, b) = (env.path("one"), env.path("two"));
    write_random(&a.join("usr/lib/libone.so"), 1, 1 << 20);
    std::fs::create_dir_all(a.join("var/lib/dpkg")).unwrap();
    std::fs::write(a.join("var/lib/dpkg/status"), "one\n").unwrap();
    env.getimage(&a, "c", &["--no-default-excludes"]);
    let node = crate::update::node_at(&env, "node", "c@1");
    crate::common::sh(&format!("cp -a {}/. {}/", a.display(), b.display()));
    // New files, which no base on the node helps: small compressible ones (stored in a
    // group), and a large random one (stored alone).
    std::fs::create_dir_all(b.join("usr/share/doc/new")).unwrap();
    for i in 0..40 {
        let text = format!("package {i} documentation line\n").repeat(50 + i);
        std::fs::write(b.join(format!("usr/share/doc/new/f{i}")), text).unwrap();
    }
    write_random(&b.join("usr/lib/libtwo.so"), 2, 1 << 20);
    env.getimage(&b, "c", &["--no-default-excludes"]);

    let srv = Server::start(&env);
    crate::update::ok(&[
        "updateclient",
        "--server",
        &srv.url,
        "--image",
        "c@2",
        "--root",
        node.to_str().unwrap(),
        "--no-default-excludes",
    ]);
    assert_eq!(crate::update::node_diff(&b, &node), "");
    let cache = node.join("var/lib/aurum-node/cache");
    assert!(cache.is_dir(), "no index cache at {}", cache.display());
    let indexes: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .map(|f| f.file_name())
        .collect();
    assert!(indexes.is_empty(), "pack indexes were read: {indexes:?}");

    // The API itself: every blob of every pack, and one the repository does not have.
    let mut listed = Vec::new();
    for fan in std::fs::read_dir(env.public().join("packs"))
        .unwrap()
        .flatten()
    {
        for f in std::fs::read_dir(fan.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let p = f.path();
            if p.extension().is_some_and(|e| e == "idx") {
                let pack_id = p.file_stem().unwrap().to_str().unwrap().to_string();
                for e in pack::decode_index(&std::fs::read(&p).unwrap()).unwrap() {
                    listed.push((pack_id.clone(), e));
                }
            }
        }
    }
    let mut ids: Vec<Id> = listed.iter().map(|(_, e)| e.id).collect();
    ids.push(Id([0xee; 32]));
    let (status, _, answer) = http(
        &srv.addr,
        "POST",
        "/api/v1/locate",
        &[],
        &pack::encode_locate_request(&ids),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    let places = pack::decode_locate_answer(&answer, &ids).unwrap();
    assert!(
        places.last().unwrap().is_none(),
        "an unknown blob was placed"
    );
    // A group's body ends where its last member does (the member table comes first).
    let mut ends: std::collections::HashMap<(&str, u64), u64> = Default::default();
    for (pack_id, e) in &listed {
        let end = ends.entry((pack_id.as_str(), e.offset)).or_default();
        *end = (*end).max(u64::from(e.inner) + u64::from(e.raw_len));
    }
    let mut groups = 0;
    for ((pack_id, want), place) in listed.iter().zip(&places) {
        let (got_pack, got, group_len) = place.as_ref().expect("a stored blob is placed");
        assert_eq!((&got_pack.hex(), got), (pack_id, want));
        match (want.codec, group_len) {
            (Codec::ZstdGroup, Some(len)) => {
                assert_eq!(*len, ends[&(pack_id.as_str(), want.offset)]);
                groups += 1;
            }
            (Codec::ZstdGroup, None) => panic!("a group member without its group's length"),
            (_, len) => assert_eq!(*len, None),
        }
    }
    assert!(groups >= 40, "{groups} group members placed");
    // Malformed requests are refused in words, not answered.
    let (status, _, body) = http(&srv.addr, "POST", "/api/v1/locate", &[], b"short");
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("malformed locate request"));
    let (status, _, _) = http(&srv.addr, "GET", "/api/v1/locate", &[], b"");
    assert_eq!(status, 405);
}
