//! Serving many nodes (issue 19): objects named by their hash carry their id as a strong ETag
//! and get 304s; `serve --upstream` is a cache tier that fetches each object once, checks it and
//! serves it, so a second node behind it costs the origin almost nothing; a pack it lacks is
//! streamed to the nodes as it arrives, one upstream fetch for all who ask; a damaged object
//! from the upstream is never kept nor delivered whole; `--max-transfers` answers 503 + Retry-After and nodes wait and
//! finish; a forward Squid gets plain absolute-form GETs (never CONNECT) and caches them; a
//! node given two servers finishes on the second when the first dies mid-pack, resuming where
//! the cut was. Everything on 127.0.0.1.

use std::sync::atomic::Ordering;

use crate::common::{sh, write_random, Env};
use crate::serve::{http, Server};

/// A repository with `img@1`: 40 files of 64 KiB to 1 MiB of random data.
pub(crate) fn origin() -> Env {
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
        .updateclient(
            &format!("http://{server}"),
            "img",
            std::path::Path::new(root),
            &[],
        )
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
    // What a killed tier left in tmp/ (a partial pack) goes when the next one starts.
    let left = cache.repo().join("tmp/.tmpPARTIAL");
    std::fs::create_dir_all(left.parent().unwrap()).unwrap();
    std::fs::write(&left, vec![7u8; 1 << 20]).unwrap();
    let tier = Server::start_with(&cache, &["--upstream", &format!("http://{}", origin.addr)]);
    assert!(!left.exists(), "a killed tier's temporary file is kept");

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
    // The tier streams it as it comes, but aborts the answer before its end once the check
    // fails.
    let (status, len, body, _, _) = timed_get(
        &tier.addr,
        &format!("/packs/{}/{new_id}.pack", &new_id[..2]),
        "",
    );
    assert_eq!(status, 200);
    assert!(
        (body.len() as u64) < len,
        "a damaged pack was delivered whole"
    );
    assert!(!cache
        .public()
        .join(format!("packs/{}/{new_id}.pack", &new_id[..2]))
        .exists());
    let out = origin_env
        .updateclient(&tier.url, "img", &second, &["--http-tries", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        !second.join("data/new").exists(),
        "a damaged blob was installed"
    );

    // An index whose checksum is good but which places a blob where its pack has no such
    // record (one offset moved): the tier checks it against the pack and refuses it.
    std::fs::write(&new_pack, {
        bytes[at] ^= 0xff;
        &bytes
    })
    .unwrap();
    write_random(&golden.join("data/newer"), 98, 200_000);
    origin_env.getimage(&golden, "img", &[]);
    let list = String::from_utf8(http(&origin.addr, "GET", "/packs/list", &[], b"").2).unwrap();
    let newer = list.split_whitespace().next().unwrap().to_string();
    let idx_path = format!("packs/{}/{newer}.idx", &newer[..2]);
    let idx = origin_env.public().join(&idx_path);
    let mut entries = aurum::format::pack::decode_index(&std::fs::read(&idx).unwrap()).unwrap();
    entries[0].offset += 1;
    std::fs::write(&idx, aurum::format::pack::encode_index(&mut entries)).unwrap();
    // While its pack is still coming, the index is passed on checked against its own checksum
    // only, not cacheable and not kept.
    let (status, head, _) = http(&tier.addr, "GET", &format!("/{idx_path}"), &[], b"");
    assert_eq!(status, 200);
    assert!(head.contains("cache-control: no-store"), "{head}");
    assert!(!cache.public().join(&idx_path).exists());
    // Once the pack is kept, the index is checked against it and refused.
    let pack_path = format!("/packs/{}/{newer}.pack", &newer[..2]);
    assert_eq!(http(&tier.addr, "GET", &pack_path, &[], b"").0, 200);
    let (status, _, body) = http(&tier.addr, "GET", &format!("/{idx_path}"), &[], b"");
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains("damaged") && body.contains("where its pack holds no such record"),
        "{body}"
    );
    assert!(!cache.public().join(&idx_path).exists());

    // A node updating through the tier while a pack streams in is passed its index unchecked
    // (no-store). It must not keep it: a wrong one kept in its cache would fail every later
    // update, long after the tier refused it. (The origin's index of the pack before is put
    // right first.)
    entries[0].offset -= 1;
    std::fs::write(&idx, aurum::format::pack::encode_index(&mut entries)).unwrap();
    write_random(&golden.join("data/newest"), 97, 4 << 20);
    origin_env.getimage(&golden, "img", &[]);
    let list = String::from_utf8(http(&origin.addr, "GET", "/packs/list", &[], b"").2).unwrap();
    let newest = list.split_whitespace().next().unwrap().to_string();
    let idx = origin_env
        .public()
        .join(format!("packs/{}/{newest}.idx", &newest[..2]));
    let good = std::fs::read(&idx).unwrap();
    let mut entries = aurum::format::pack::decode_index(&good).unwrap();
    for e in &mut entries {
        e.offset += 1;
    }
    std::fs::write(&idx, aurum::format::pack::encode_index(&mut entries)).unwrap();
    let out = origin_env
        .updateclient(&tier.url, "img", &second, &["--http-tries", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a wrong index installed");
    assert!(
        !second
            .join(format!("var/lib/aurum-node/cache/{newest}.idx"))
            .exists(),
        "the node kept an index the tier passed on unchecked"
    );
    std::fs::write(&idx, &good).unwrap();
    let out = origin_env
        .updateclient(&tier.url, "img", &second, &["--http-tries", "1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(second.join("data/newest")).unwrap(),
        std::fs::read(golden.join("data/newest")).unwrap()
    );

    // What the tier passes on is spooled to disk, not held in memory, and has no 64 MiB cap
    // any more: a 72 MiB initramfs of the boot kit comes through whole.
    let kit = origin_env.repo().join("bootkit");
    std::fs::create_dir_all(&kit).unwrap();
    let initrd: Vec<u8> = (0..72u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(kit.join("initrd.img"), &initrd).unwrap();
    let (status, _, body) = http(&tier.addr, "GET", "/boot/kit/initrd.img", &[], b"");
    assert_eq!(status, 200);
    assert!(
        body == initrd,
        "{} bytes came of {}",
        body.len(),
        initrd.len()
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
    let (host, origin_port) = origin.addr.split_once(':').unwrap();
    let mut conf = example.to_string();
    for (from, to) in [
        ("http_port 8035", "http_port 127.0.0.1:@PORT@".to_string()),
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
    let (mut squid, addr) = Squid::start(&dir, conf);
    let (after_first, by_second) = two_nodes_through(&origin_env, &origin, &addr);
    squid.stop();
    assert!(
        by_second * 100 < after_first,
        "the second node behind squid cost the origin {by_second} bytes (the first {after_first})"
    );
}

/// A Squid started by a test, on a free port of 127.0.0.1, logging into its directory.
pub(crate) struct Squid {
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl Squid {
    /// Starts Squid with `conf`, in which `@PORT@` is replaced by the port it listens on; its
    /// files (pid, logs) go to `dir`. Returns it and its address.
    pub(crate) fn start(dir: &std::path::Path, conf: String) -> (Squid, String) {
        let port = crate::published::free_port();
        let d = dir.display();
        let mut conf = conf.replace("@PORT@", &port.to_string());
        conf.push_str(&format!(
            "\npid_filename {d}/squid.pid\naccess_log {d}/access.log\ncache_log {d}/cache.log\n\
             coredump_dir {d}\ncache_effective_user proxy\n"
        ));
        let file = dir.join("squid.conf");
        std::fs::write(&file, conf).unwrap();
        sh(&format!(
            "chown -R proxy '{d}' && squid -N -z -f '{}' 2>&1",
            file.display()
        ));
        let child = std::process::Command::new("squid")
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
        (
            Squid {
                child,
                dir: dir.to_path_buf(),
            },
            addr,
        )
    }

    /// Its access log so far (Squid writes it as requests end).
    pub(crate) fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Squid {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `cmd` without the caller's proxy variables (curl's names, both cases).
fn no_proxy_env(cmd: &mut std::process::Command) -> &mut std::process::Command {
    for v in [
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
        "no_proxy",
        "NO_PROXY",
    ] {
        cmd.env_remove(v);
    }
    cmd
}

/// A node's update through a forward proxy: `proxy` given as `--proxy URL`, or (`None`) the
/// environment's http_proxy = `env_proxy`.
fn update_through(
    env: &Env,
    server: &str,
    root: &std::path::Path,
    flag: Option<&str>,
    env_proxy: &str,
) {
    std::fs::create_dir_all(root).unwrap();
    let mut cmd = env.updateclient(&format!("http://{server}"), "img", root, &[]);
    if let Some(p) = flag {
        cmd.args(["--proxy", p]);
    }
    no_proxy_env(&mut cmd).env("http_proxy", env_proxy);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A site's forward Squid (Debian's default squid.conf with the book's lines for a cache): a
/// node with `http_proxy` set sends it plain absolute-form GETs (no CONNECT), Squid keeps the
/// packs, and a second node's fetches are cache hits that cost the origin under 1 % of the
/// first's bytes. Then `--proxy` and node.toml's `no-proxy`, as curl takes them.
#[test]
fn a_forward_squid_gets_plain_gets_and_caches_them() {
    if !crate::common::need("squid") {
        return;
    }
    let debian = std::fs::read_to_string("/etc/squid/squid.conf")
        .expect("Debian's default /etc/squid/squid.conf (package squid)");
    let origin_env = origin();
    let origin = Server::start(&origin_env);
    let dir = origin_env.path("squid");
    std::fs::create_dir_all(&dir).unwrap();
    let mut example = book_block("squid", "forward proxy keeps");
    let spool = "/var/spool/squid 20000";
    assert!(
        example.contains(spool),
        "the book's forward squid example lost `{spool}`"
    );
    example = example.replace(spool, &format!("{}/cache 1000", dir.display()));
    // Debian's file with the book's lines where it includes conf.d, listening on a free port.
    let include = "include /etc/squid/conf.d/*.conf";
    assert!(debian.contains(include) && debian.contains("\nhttp_port 3128"));
    let conf = debian
        .replace(include, &example)
        .replace("\nhttp_port 3128", "\nhttp_port 127.0.0.1:@PORT@")
        .replace("coredump_dir /var/spool/squid", "");
    let (squid, proxy) = Squid::start(&dir, conf);

    // The first node through http_proxy (a bare host:port, as curl takes it).
    let first = origin_env.path("node-a");
    update_through(&origin_env, &origin.addr, &first, None, &proxy);
    let after_first = origin.sent.load(Ordering::Relaxed);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let url = format!("http://{}/packs/", origin.addr);
    let first_lines = squid
        .access_log()
        .lines()
        .filter(|l| l.contains(&url))
        .count();
    // The second through --proxy, which wins over an http_proxy that goes nowhere.
    let second = origin_env.path("node-b");
    update_through(
        &origin_env,
        &origin.addr,
        &second,
        Some(&format!("http://{proxy}")),
        "http://127.0.0.1:9",
    );
    let by_second = origin.sent.load(Ordering::Relaxed) - after_first;
    for node in [&first, &second] {
        assert_eq!(
            crate::common::rsync_diff(&node.join("data"), &origin_env.path("golden/data")),
            ""
        );
    }
    assert!(
        after_first > 5 << 20,
        "the first node fetched {after_first} bytes from the origin"
    );
    assert!(
        by_second * 100 < after_first,
        "the second node behind squid cost the origin {by_second} bytes (the first {after_first})"
    );
    // Squid's log: plain GETs with the absolute URL, no CONNECT; the second node's pack
    // ranges were hits.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let log = squid.access_log();
    let packs: Vec<&str> = log.lines().filter(|l| l.contains(&url)).collect();
    assert!(!packs.is_empty(), "no pack request in squid's log:\n{log}");
    assert!(!log.contains("CONNECT"), "{log}");
    assert!(packs.iter().all(|l| l.contains(" GET ")), "{log}");
    let second_node: Vec<&&str> = packs[first_lines..]
        .iter()
        .filter(|l| l.contains(".pack ") || l.contains(".idx "))
        .collect();
    let hits = second_node
        .iter()
        .filter(|l| l.contains("TCP_HIT/") || l.contains("TCP_MEM_HIT/"))
        .count();
    assert!(
        hits > 0 && hits == second_node.len(),
        "the second node's pack and index requests were not all cache hits:\n{}",
        packs.join("\n")
    );
    eprintln!(
        "forward squid: origin bytes {after_first} for the first node, {by_second} for the second; {} pack requests, {hits} hits",
        packs.len()
    );

    // node.toml's no-proxy (curl's rules: a suffix of the host, the URL's port ignored)
    // sends a node around a proxy that does not exist; without it the update fails.
    let third = origin_env.path("node-c");
    std::fs::create_dir_all(&third).unwrap();
    std::fs::create_dir_all(origin_env.config_dir()).unwrap();
    let node_toml = origin_env.config_dir().join("node.toml");
    std::fs::write(
        &node_toml,
        "proxy = \"http://127.0.0.1:9\"\nno-proxy = \".0.0.1\"\n",
    )
    .unwrap();
    let run = |root: &std::path::Path| {
        let mut cmd = origin_env.updateclient(
            &origin.url,
            "img",
            root,
            &["--http-tries", "1", "--connect-timeout", "2"],
        );
        no_proxy_env(&mut cmd).output().unwrap()
    };
    let out = run(&third);
    assert!(!out.status.success(), "an IP is not under a name suffix");
    std::fs::write(
        &node_toml,
        "proxy = \"http://127.0.0.1:9\"\nno-proxy = \"127.0.0.0/8\"\n",
    )
    .unwrap();
    let out = run(&third);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_file(&node_toml).unwrap();
}

/// A TCP relay on 127.0.0.1 in front of `upstream` that sends answers on at about `rate`
/// bytes a second, counting them, and cuts the client off when the upstream goes away, or at
/// once when `cut` is set (what a server dying mid-answer does: the bytes the relay holds in
/// its socket buffers, whole 2 MiB ranges on loopback, are not passed on).
struct Relay {
    addr: String,
    sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Relay {
    fn start(upstream: &str, rate: u64) -> Relay {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = sent.clone();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cutter = cut.clone();
        let upstream = upstream.to_string();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = std::net::TcpStream::connect(&upstream) else {
                    continue;
                };
                let (mut c_in, mut s_out) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c_in, &mut s_out);
                    let _ = s_out.shutdown(std::net::Shutdown::Write);
                });
                let (mut s_in, mut c_out) = (server, client);
                let counter = counter.clone();
                let cutter = cutter.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 16 << 10];
                    loop {
                        if cutter.load(Ordering::Relaxed) {
                            break;
                        }
                        match s_in.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if c_out.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                                counter.fetch_add(n as u64, Ordering::Relaxed);
                                std::thread::sleep(std::time::Duration::from_micros(
                                    n as u64 * 1_000_000 / rate,
                                ));
                            }
                        }
                    }
                    let _ = c_out.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        Relay { addr, sent, cut }
    }
}

/// Two `aurum serve` of one repository; the first dies in the middle of the node's pack
/// transfer: the node goes on with the second at once, asking it only for the bytes that had
/// not arrived (a Range from where the cut was), and finishes with the right tree.
#[test]
fn killing_one_of_two_servers_mid_update_the_node_resumes_on_the_other() {
    let env = origin();
    let mut a = Server::start(&env);
    let b = Server::start(&env);
    // The node reaches the first through a relay slow enough to be killed mid-pack.
    let relay = Relay::start(&a.addr, 4 << 20);
    let list = String::from_utf8(http(&b.addr, "GET", "/packs/list", &[], b"").2).unwrap();
    let pack_size: u64 = list
        .lines()
        .map(|l| l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap())
        .sum();
    let root = env.path("node");
    std::fs::create_dir_all(&root).unwrap();
    let started = std::time::Instant::now();
    let child = env
        .updateclient(
            &format!("http://{}", relay.addr),
            "img",
            &root,
            &["--server", &b.url, "--json"],
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Kill the first server once a quarter of the packs has gone through.
    let cut_at = pack_size / 4;
    while relay.sent.load(Ordering::Relaxed) < cut_at {
        assert!(
            started.elapsed().as_secs() < 60,
            "the node never got a quarter of the pack from the first server"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    relay.cut.store(true, Ordering::Relaxed);
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(
        crate::common::rsync_diff(&root.join("data"), &env.path("golden/data")),
        ""
    );
    assert!(err.contains("trying the next server"), "{err}");
    assert!(err.contains("resuming packs/"), "{err}");
    // What the first sent (heads included) and what the second sent add up to the packs
    // once, not a quarter more: nothing that arrived was fetched again.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let from_a = relay.sent.load(Ordering::Relaxed);
    let from_b = b.sent.load(Ordering::Relaxed);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!(
        "failover: packs {pack_size} B; first server {from_a} B (cut at {cut_at}), second {from_b} B; node's report: {}",
        report
    );
    assert!(from_a >= cut_at);
    assert!(
        from_b < (pack_size + (256 << 10)).saturating_sub(from_a),
        "the second server sent {from_b} bytes: more than what was missing ({} of {pack_size})",
        pack_size.saturating_sub(from_a)
    );
    assert!(
        from_a + from_b < pack_size + (512 << 10),
        "{from_a} + {from_b} bytes moved for {pack_size} bytes of packs: something was fetched twice"
    );
}

/// A mirror that lacks the image (stale: not pulled since the image was published) answers
/// 404 for its refs: the node asks the next server and installs from it. When every server
/// lacks it, the error names them all.
#[test]
fn a_server_lacking_the_image_hands_over_to_the_next() {
    let env = origin();
    let good = Server::start(&env);
    let stale_env = Env::new();
    let stale = Server::start(&stale_env);
    let stale2_env = Env::new();
    let stale2 = Server::start(&stale2_env);
    let root = env.path("node");
    std::fs::create_dir_all(&root).unwrap();
    let node = |servers: &[&str]| {
        let mut args = vec!["updateclient", "--http-tries", "1"];
        let urls: Vec<String> = servers.iter().map(|s| format!("http://{s}")).collect();
        for u in &urls {
            args.extend(["--server", u]);
        }
        args.extend(["--image", "img", "--root", root.to_str().unwrap()]);
        env.bare(&args).output().unwrap()
    };
    let out = node(&[&stale.addr, &good.addr]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("refs/img/head not found on the server; trying the next server"),
        "{err}"
    );
    assert_eq!(
        crate::common::rsync_diff(&root.join("data"), &env.path("golden/data")),
        ""
    );
    let out = node(&[&stale.addr, &stale2.addr]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!(
            "no image `img` on any of http://{}, http://{}",
            stale.addr, stale2.addr
        )),
        "{err}"
    );
}

/// A GET of `path` on `addr`, read as it comes: (status, Content-Length, the body bytes that
/// came before the server closed or the length was reached, seconds to the first body byte,
/// seconds to the end). A body cut short (an aborted answer) is returned as far as it came.
fn timed_get(addr: &str, path: &str, extra: &str) -> (u16, u64, Vec<u8>, f64, f64) {
    use std::io::{Read, Write};
    let started = std::time::Instant::now();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut first = None;
    let mut head_end = None;
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        raw.extend_from_slice(&buf[..n]);
        if head_end.is_none() {
            head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
        }
        if first.is_none() && head_end.is_some_and(|h| raw.len() > h) {
            first = Some(started.elapsed().as_secs_f64());
        }
    }
    let end = started.elapsed().as_secs_f64();
    let h = head_end.expect("a header block");
    let head = String::from_utf8_lossy(&raw[..h]).to_lowercase();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    (status, len, raw.split_off(h), first.unwrap_or(end), end)
}

/// The origin's largest pack: its URL path and bytes.
fn largest_pack(env: &Env) -> (String, Vec<u8>) {
    let packs = env.public().join("packs");
    let mut best: Option<std::path::PathBuf> = None;
    for d in std::fs::read_dir(&packs).unwrap().flatten() {
        for f in std::fs::read_dir(d.path()).into_iter().flatten().flatten() {
            let f = f.path();
            let size = |p: &std::path::Path| std::fs::metadata(p).unwrap().len();
            if f.extension().is_some_and(|e| e == "pack")
                && best.as_ref().is_none_or(|b| size(&f) > size(b))
            {
                best = Some(f);
            }
        }
    }
    let f = best.expect("a pack");
    let rel = f.strip_prefix(env.public()).unwrap().to_str().unwrap();
    (format!("/{rel}"), std::fs::read(&f).unwrap())
}

/// A tier streams a pack it lacks: behind a slow upstream (2 MB/s), the first bytes reach
/// the node long before the upstream has sent the whole pack; a second node asking at the same
/// time shares the one upstream fetch, and a third asking a Range near the start gets it
/// before the upstream is done; all get the pack's exact bytes, and the tier keeps it.
#[test]
fn a_cache_tier_streams_a_pack_as_it_arrives_and_fetches_it_once() {
    let origin_env = origin();
    let origin = Server::start(&origin_env);
    let (path, bytes) = largest_pack(&origin_env);
    let size = bytes.len() as u64;
    assert!(size > 4 << 20, "the largest pack has {size} bytes");
    let rate = 2 << 20;
    let relay = Relay::start(&origin.addr, rate);
    let cache = Env::new();
    let tier = Server::start_with(&cache, &["--upstream", &format!("http://{}", relay.addr)]);
    let kept = cache.public().join(path.trim_start_matches('/'));

    let started = std::time::Instant::now();
    let upstream_done = std::thread::scope(|s| {
        let watch = s.spawn(|| {
            // When the upstream has sent the whole pack (the relay counts its bytes).
            while relay.sent.load(Ordering::Relaxed) < size {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            started.elapsed().as_secs_f64()
        });
        let a = s.spawn(|| timed_get(&tier.addr, &path, ""));
        std::thread::sleep(std::time::Duration::from_millis(300));
        let b = s.spawn(|| timed_get(&tier.addr, &path, ""));
        let r = s.spawn(|| timed_get(&tier.addr, &path, "Range: bytes=1000-1999\r\n"));
        let upstream_done = watch.join().unwrap();
        let (a, b, r) = (a.join().unwrap(), b.join().unwrap(), r.join().unwrap());
        for (who, got) in [("first", &a), ("second", &b)] {
            assert_eq!(got.0, 200, "{who}");
            assert_eq!(got.1, size, "{who}");
            assert!(
                got.2 == bytes,
                "the {who} node got {} bytes, not the pack's",
                got.2.len()
            );
            // First bytes at the node well before the upstream is done (the whole pack takes
            // size / rate seconds through the relay).
            assert!(
                got.3 + 1.0 < upstream_done,
                "the {who} node's first byte came at {:.2} s, the upstream was done at {upstream_done:.2} s",
                got.3
            );
        }
        assert_eq!(r.0, 206);
        assert!(r.2 == bytes[1000..2000], "the Range answer");
        assert!(
            r.4 + 1.0 < upstream_done,
            "the Range answer ended at {:.2} s, the upstream was done at {upstream_done:.2} s",
            r.4
        );
        upstream_done
    });
    assert!(
        upstream_done > (size / rate) as f64 * 0.8,
        "the relay did not throttle: {upstream_done:.2} s for {size} bytes"
    );
    // One fetch from the upstream for three asks.
    let from_upstream = relay.sent.load(Ordering::Relaxed);
    assert!(
        from_upstream < size + (64 << 10),
        "the upstream sent {from_upstream} bytes for a pack of {size}"
    );
    assert_eq!(std::fs::read(&kept).unwrap(), bytes, "the kept pack");
    // Kept: asked again, it comes from the tier alone.
    let (status, _, body, _, _) = timed_get(&tier.addr, &path, "");
    assert_eq!(status, 200);
    assert!(body == bytes);
    assert!(relay.sent.load(Ordering::Relaxed) < size + (64 << 10));
    let tmp: Vec<_> = std::fs::read_dir(cache.repo().join("tmp"))
        .unwrap()
        .collect();
    assert!(tmp.is_empty(), "left in tmp/: {tmp:?}");
}

/// A pack the upstream holds damaged (one byte flipped): the tier streams it while it comes
/// but holds back its end until it is checked, finds it does not hash to its id, and aborts
/// every answer before its body is complete; it keeps nothing, and a node fails rather than
/// install it.
#[test]
fn a_cache_tier_never_keeps_nor_completes_a_damaged_pack() {
    let origin_env = origin();
    let origin = Server::start(&origin_env);
    let (path, mut bytes) = largest_pack(&origin_env);
    let at = bytes.len() * 3 / 4;
    bytes[at] ^= 0x5a;
    std::fs::write(
        origin_env.public().join(path.trim_start_matches('/')),
        &bytes,
    )
    .unwrap();
    let relay = Relay::start(&origin.addr, 4 << 20);
    let cache = Env::new();
    let tier = Server::start_with(&cache, &["--upstream", &format!("http://{}", relay.addr)]);
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| timed_get(&tier.addr, &path, ""));
        let b = s.spawn(|| timed_get(&tier.addr, &path, ""));
        (a.join().unwrap(), b.join().unwrap())
    });
    for got in [&a, &b] {
        assert_eq!(got.0, 200);
        assert_eq!(got.1, bytes.len() as u64);
        assert!(
            (got.2.len() as u64) < got.1,
            "a damaged pack was delivered whole ({} bytes)",
            got.2.len()
        );
        // What came was what the upstream sent, up to where the answer was aborted.
        assert!(got.2 == bytes[..got.2.len()]);
    }
    assert!(!cache.public().join(path.trim_start_matches('/')).exists());
    let tmp: Vec<_> = std::fs::read_dir(cache.repo().join("tmp"))
        .unwrap()
        .collect();
    assert!(tmp.is_empty(), "left in tmp/: {tmp:?}");
    // A node behind the tier fails (after its one try) and installs nothing damaged.
    let root = origin_env.path("node");
    std::fs::create_dir_all(&root).unwrap();
    let out = origin_env
        .updateclient(&tier.url, "img", &root, &["--http-tries", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// Review finding: with several servers, one down and another answering 404 for an override's
/// head, the 404 was believed after the last try, and the node was composed without the
/// override: its files deleted. Two servers, the first stopped and the second a copy of the
/// repository without the override image: the update fails naming the server that did not
/// answer, and the override's files stay. With both up it succeeds; when every server answers
/// 404 (the override removed everywhere) the node goes on without it, as before.
#[test]
fn an_override_head_missing_on_one_server_while_another_is_down_is_not_taken_as_absent() {
    let env = origin();
    let ov = env.path("ov");
    sh(&format!(
        "mkdir -p {o}/etc && printf 'the override\\n' > {o}/etc/ov.conf",
        o = ov.display()
    ));
    env.getimage(&ov, "ov", &[]);
    let lacking = Env::new();
    sh(&format!(
        "rm -rf {l} && cp -a {r} {l}",
        r = env.repo().display(),
        l = lacking.repo().display()
    ));
    lacking.ok(&["rmimage", "ov"]);
    let full = Server::start(&env);
    let stale = Server::start(&lacking);
    let root = env.path("node");
    std::fs::create_dir_all(&root).unwrap();
    let conf = root.join("etc/ov.conf");
    let node = |servers: &[&str], extra: &[&str]| {
        let mut args = vec!["updateclient", "--http-tries", "1"];
        let urls: Vec<String> = servers.iter().map(|s| format!("http://{s}")).collect();
        for u in &urls {
            args.extend(["--server", u]);
        }
        args.extend(["--image", "img", "--root", root.to_str().unwrap()]);
        args.extend(extra);
        env.bare(&args).output().unwrap()
    };
    let out = node(&[&full.addr], &["--override", "ov"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), "the override\n");

    let down = full.addr.clone();
    drop(full);
    let out = node(&[&down, &stale.addr], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the update went on without the override:\n{err}"
    );
    assert_eq!(out.status.code(), Some(1), "{err}");
    println!("with {down} down: {err}");
    assert!(
        err.contains(&format!("refs/ov/head is not on http://{}", stale.addr))
            && err.contains(&format!("Bring http://{down} back"))
            && err.contains("follows the override image `ov`"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&conf).unwrap(),
        "the override\n",
        "the override's file was touched"
    );

    // Both up (the full one back on another port), the stale one first: it hands over.
    let full = Server::start(&env);
    let out = node(&[&stale.addr, &full.addr], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), "the override\n");

    // Every server answers 404: the override is gone from the repository, and from the node.
    let stale2 = Server::start(&lacking);
    let out = node(&[&stale.addr, &stale2.addr], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !conf.exists(),
        "the override removed everywhere stays on the node"
    );
}
