//! Serving many nodes (issue 19): objects named by their hash carry their id as a strong ETag
//! and get 304s; `serve --upstream` is a cache tier that fetches each object once, checks it and
//! serves it, so a second node behind it costs the origin almost nothing; a damaged object from
//! the upstream is never kept; `--max-transfers` answers 503 + Retry-After and nodes wait and
//! finish. Everything on 127.0.0.1.

use std::sync::atomic::Ordering;

use crate::common::{sh, write_random, Env};
use crate::serve::{http, Server};

/// A repository with `img@1`: 40 files of 64 KiB to 1 MiB of random data.
fn origin() -> Env {
    let env = Env::new();
    let golden = env.path("golden");
    for i in 0..40u64 {
        write_random(
            &golden.join(format!("data/f{i:02}")),
            i,
            64 << 10 << (i % 5),
        );
    }
    env.getimage(&golden, "img", &[]);
    env
}

/// A node's update from `server` alone (no --repo: a node has no repository).
fn update(env: &Env, server: &str, root: &str) {
    std::fs::create_dir_all(root).unwrap();
    let out = env
        .bare(&[
            "updateclient",
            "--server",
            &format!("http://{server}"),
            "--image",
            "img",
            "--root",
            root,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two nodes install `img` one after the other through the cache at `addr`: the origin's bytes
/// for the first, and for the second; the second's tree is checked.
fn two_nodes_through(origin_env: &Env, origin: &Server, addr: &str) -> (u64, u64) {
    let first = origin_env.path("node-a");
    update(origin_env, addr, first.to_str().unwrap());
    let after_first = origin.sent.load(Ordering::Relaxed);
    let second = origin_env.path("node-b");
    update(origin_env, addr, second.to_str().unwrap());
    let by_second = origin.sent.load(Ordering::Relaxed) - after_first;
    assert_eq!(
        crate::common::rsync_diff(&second.join("data"), &origin_env.path("golden/data")),
        ""
    );
    (after_first, by_second)
}

/// The book's configuration block (of `serve.md`) after the fence "```LANG" that holds `marker`.
fn book_block(lang: &str, marker: &str) -> String {
    let book = include_str!("../../book/src/commands/serve.md");
    book.split(&format!("```{lang}\n"))
        .skip(1)
        .find(|b| b.contains(marker))
        .and_then(|b| b.split("```").next())
        .unwrap_or_else(|| panic!("the book's {lang} example with `{marker}`"))
        .to_string()
}

#[test]
fn a_cache_tier_fetches_each_object_once_and_checks_it() {
    let origin_env = origin();
    let origin = Server::start(&origin_env);
    let cache = Env::new();
    let tier = Server::start_with(&cache, &["--upstream", &format!("http://{}", origin.addr)]);

    let first = origin_env.path("node-a");
    update(&origin_env, &tier.addr, first.to_str().unwrap());
    let after_first = origin.sent.load(Ordering::Relaxed);
    let second = origin_env.path("node-b");
    update(&origin_env, &tier.addr, second.to_str().unwrap());
    let after_second = origin.sent.load(Ordering::Relaxed);
    let by_second = after_second - after_first;
    assert!(
        after_first > 5 << 20,
        "the first node fetched {after_first} bytes from the origin"
    );
    assert!(
        by_second * 100 < after_first,
        "the second node behind the tier cost the origin {by_second} bytes (the first {after_first})"
    );
    assert_eq!(
        crate::common::rsync_diff(&first.join("data"), &origin_env.path("golden/data")),
        ""
    );
    assert_eq!(
        crate::common::rsync_diff(&second.join("data"), &first.join("data")),
        ""
    );
    // The node's report went through the tier to the origin.
    let nodes = origin_env.ok(&["nodes", "--json"]);
    assert!(nodes.contains("\"updateclient\""), "{nodes}");

    // Packs and manifests answer with their id as a strong ETag, on the origin and the tier,
    // and a conditional GET gets 304.
    let list = String::from_utf8(http(&origin.addr, "GET", "/packs/list", &[], b"").2).unwrap();
    let pack_id = list.split_whitespace().next().unwrap();
    let pack = format!("/packs/{}/{pack_id}.pack", &pack_id[..2]);
    for addr in [&origin.addr, &tier.addr] {
        let (status, head, _) = http(addr, "HEAD", &pack, &[], b"");
        assert_eq!(status, 200);
        assert!(head.contains(&format!("etag: \"{pack_id}\"")), "{head}");
        assert!(
            head.contains("cache-control: public, max-age=31536000, immutable"),
            "{head}"
        );
        let tag = format!("\"{pack_id}\"");
        let (status, _, body) = http(addr, "GET", &pack, &[("If-None-Match", &tag)], b"");
        assert_eq!(status, 304);
        assert!(body.is_empty());
    }

    // A new revision whose pack the origin holds damaged: the tier refuses it, keeps nothing,
    // and the node fails saying so rather than installing it.
    let golden = origin_env.path("golden");
    write_random(&golden.join("data/new"), 99, 300_000);
    origin_env.getimage(&golden, "img", &[]);
    let list = String::from_utf8(http(&origin.addr, "GET", "/packs/list", &[], b"").2).unwrap();
    let new_id = list.split_whitespace().next().unwrap().to_string();
    let new_pack = origin_env
        .public()
        .join(format!("packs/{}/{new_id}.pack", &new_id[..2]));
    let mut bytes = std::fs::read(&new_pack).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0xff;
    std::fs::write(&new_pack, &bytes).unwrap();
    let (status, _, body) = http(
        &tier.addr,
        "GET",
        &format!("/packs/{}/{new_id}.pack", &new_id[..2]),
        &[],
        b"",
    );
    assert_eq!(status, 502, "{}", String::from_utf8_lossy(&body));
    assert!(
        String::from_utf8_lossy(&body).contains("damaged"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert!(!cache
        .public()
        .join(format!("packs/{}/{new_id}.pack", &new_id[..2]))
        .exists());
    let out = origin_env
        .bare(&[
            "updateclient",
            "--server",
            &format!("http://{}", tier.addr),
            "--image",
            "img",
            "--root",
            second.to_str().unwrap(),
            "--http-tries",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        !second.join("data/new").exists(),
        "a damaged blob was installed"
    );
}

#[test]
fn past_max_transfers_the_server_says_busy_and_nodes_wait() {
    let env = origin();
    let server = Server::start_with(&env, &["--max-transfers", "1"]);
    let list = String::from_utf8(http(&server.addr, "GET", "/packs/list", &[], b"").2).unwrap();
    let pack_id = list.split_whitespace().next().unwrap();
    let pack = format!("/packs/{}/{pack_id}.pack", &pack_id[..2]);
    // One client reads a pack very slowly: the one transfer allowed is taken.
    let mut slow = std::net::TcpStream::connect(&server.addr).unwrap();
    std::io::Write::write_all(
        &mut slow,
        format!("GET {pack} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (status, head, _) = http(&server.addr, "GET", &pack, &[], b"");
    assert_eq!(status, 503, "{head}");
    assert!(head.contains("retry-after: "), "{head}");
    // Small files still go out, and a node waits its turn and finishes once the slow client
    // is gone.
    let (status, _, _) = http(&server.addr, "GET", "/packs/list", &[], b"");
    assert_eq!(status, 200);
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(3));
        drop(slow);
    });
    let root = env.path("node");
    let started = std::time::Instant::now();
    update(&env, &server.addr, root.to_str().unwrap());
    assert!(
        started.elapsed().as_secs() >= 2,
        "the node did not wait for the busy server"
    );
    release.join().unwrap();
    assert_eq!(
        crate::common::rsync_diff(&root.join("data"), &env.path("golden/data")),
        ""
    );
}

/// nginx's `proxy_cache` in front of `aurum serve`, configured as the book says: the second
/// node behind it costs the origin under 1 % of the first, and a conditional GET gets 304.
#[test]
fn nginx_proxy_cache_as_the_book_configures_it_carries_nodes() {
    if !crate::common::need("nginx") {
        return;
    }
    let origin_env = origin();
    let origin = Server::start(&origin_env);
    let example = book_block("nginx", "proxy_cache_path");
    let dir = origin_env.path("nginx");
    std::fs::create_dir_all(&dir).unwrap();
    sh(&format!("chown www-data '{}'", dir.display()));
    let port = crate::published::free_port();
    let mut conf = example.to_string();
    for (from, to) in [
        (
            "/var/cache/nginx/aurum",
            dir.join("cache").display().to_string(),
        ),
        ("listen 8035;", format!("listen 127.0.0.1:{port};")),
        ("http://master:8035", format!("http://{}", origin.addr)),
    ] {
        assert!(
            conf.contains(from),
            "the book's nginx cache example lost `{from}`"
        );
        conf = conf.replace(from, &to);
    }
    let nginx = crate::published::Nginx::run(&dir, port, &conf);

    let (after_first, by_second) = two_nodes_through(&origin_env, &origin, &nginx.addr);
    assert!(
        by_second * 100 < after_first,
        "the second node behind nginx cost the origin {by_second} bytes (the first {after_first})"
    );
    let first = origin_env.path("node-a");
    let list = String::from_utf8(http(&nginx.addr, "GET", "/packs/list", &[], b"").2).unwrap();
    let pack_id = list.split_whitespace().next().unwrap();
    let pack = format!("/packs/{}/{pack_id}.pack", &pack_id[..2]);
    let (status, head, _) = http(
        &nginx.addr,
        "GET",
        &pack,
        &[("If-None-Match", &format!("\"{pack_id}\""))],
        b"",
    );
    assert_eq!(status, 304, "{head}");
    // And an update through the cache after a new revision: only the new objects move.
    let golden = origin_env.path("golden");
    write_random(&golden.join("data/patch"), 5, 200_000);
    origin_env.getimage(&golden, "img", &[]);
    update(&origin_env, &nginx.addr, first.to_str().unwrap());
    assert_eq!(
        crate::common::rsync_diff(&first.join("data"), &golden.join("data")),
        ""
    );
}

/// Squid as a reverse proxy in front of `aurum serve`, configured as the book says: the second
/// node behind it costs the origin under 1 % of the first.
#[test]
fn squid_as_the_book_configures_it_carries_nodes() {
    if !crate::common::need("squid") {
        return;
    }
    let origin_env = origin();
    let origin = Server::start(&origin_env);
    let example = book_block("squid", "cache_peer");
    let dir = origin_env.path("squid");
    std::fs::create_dir_all(&dir).unwrap();
    let port = crate::published::free_port();
    let (host, origin_port) = origin.addr.split_once(':').unwrap();
    let mut conf = example.to_string();
    for (from, to) in [
        ("http_port 8035", format!("http_port 127.0.0.1:{port}")),
        (
            "cache_peer master parent 8035",
            format!("cache_peer {host} parent {origin_port}"),
        ),
        (
            "/var/spool/squid-aurum 100000",
            format!("{}/cache 1000", dir.display()),
        ),
    ] {
        assert!(
            conf.contains(from),
            "the book's squid example lost `{from}`"
        );
        conf = conf.replace(from, &to);
    }
    let d = dir.display();
    conf.push_str(&format!(
        "pid_filename {d}/squid.pid\naccess_log {d}/access.log\ncache_log {d}/cache.log\n\
         coredump_dir {d}\ncache_effective_user proxy\n"
    ));
    let file = dir.join("squid.conf");
    std::fs::write(&file, conf).unwrap();
    sh(&format!(
        "chown -R proxy '{d}' && squid -N -z -f '{}' 2>&1",
        file.display()
    ));
    let mut squid = std::process::Command::new("squid")
        .args(["-N", "-f"])
        .arg(&file)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start squid");
    let addr = format!("127.0.0.1:{port}");
    let mut up = false;
    for _ in 0..200 {
        if std::net::TcpStream::connect(&addr).is_ok() {
            up = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        up,
        "squid did not listen: {}",
        std::fs::read_to_string(dir.join("cache.log")).unwrap_or_default()
    );

    let (after_first, by_second) = two_nodes_through(&origin_env, &origin, &addr);
    let _ = squid.kill();
    let _ = squid.wait();
    assert!(
        by_second * 100 < after_first,
        "the second node behind squid cost the origin {by_second} bytes (the first {after_first})"
    );
}
