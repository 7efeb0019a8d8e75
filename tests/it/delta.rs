//! Binary deltas: a patched file crosses the wire as a zstd delta against the version the node
//! holds, precomputed at capture or made on demand by `aurum serve`; a wrong delta is caught by
//! the blob's id and the whole blob fetched instead.

use std::path::{Path, PathBuf};

use crate::common::{json, sh, write_random, Env};
use crate::serve::Server;
use crate::update::{node_at, node_diff, ok};

/// Text-like content (compressible, like a library or a config file).
fn words(seed: u64, n: usize) -> String {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    let mut out = String::new();
    for _ in 0..n {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        out.push_str(&format!("sym{:x} ", (x >> 33) % 5000));
    }
    out
}

/// rev1, and rev2 = rev1 patched: a library edited in three places, a chunked 3 MiB file with
/// 4 KiB rewritten, ten config files edited, fifty files with only new timestamps.
fn patched_pair(env: &Env) -> (PathBuf, PathBuf) {
    let a = env.path("rev1");
    let b = env.path("rev2");
    std::fs::create_dir_all(a.join("usr/lib")).unwrap();
    std::fs::create_dir_all(a.join("etc/conf.d")).unwrap();
    std::fs::create_dir_all(a.join("usr/share/doc")).unwrap();
    std::fs::write(a.join("usr/lib/libfoo.so"), words(1, 120_000)).unwrap();
    write_random(&a.join("var/lib/disk.img"), 2, 3 << 20);
    for i in 0..10 {
        std::fs::write(a.join(format!("etc/conf.d/c{i}")), words(10 + i, 400)).unwrap();
    }
    for i in 0..50 {
        std::fs::write(a.join(format!("usr/share/doc/d{i}")), words(100 + i, 300)).unwrap();
    }
    sh(&format!("cp -a {}/. {}/", a.display(), b.display()));
    let lib = b.join("usr/lib/libfoo.so");
    let mut data = std::fs::read(&lib).unwrap();
    for at in [1000usize, 300_000, 700_000] {
        data[at..at + 16].copy_from_slice(b"PATCHED-PATCHED!");
    }
    std::fs::write(&lib, data).unwrap();
    sh(&format!(
        "cd {b} && head -c 4096 /dev/urandom | dd of=var/lib/disk.img bs=4096 seek=300 conv=notrunc 2>/dev/null \
         && for i in 0 1 2 3 4 5 6 7 8 9; do printf 'option = %s\\n' $i >> etc/conf.d/c$i; done \
         && touch -d '2030-01-01' usr/share/doc/*",
        b = b.display()
    ));
    (a, b)
}

fn update(srv: &Server, node: &Path, rev: &str) -> serde_json::Value {
    json(&ok(&[
        "updateclient",
        "--server",
        &format!("http://{}", srv.addr),
        "--image",
        rev,
        "--root",
        node.to_str().unwrap(),
        "--no-default-excludes",
        "--json",
    ]))
}

fn delta_files(repo: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(dirs) = std::fs::read_dir(repo.join("public/deltas")) {
        for d in dirs {
            // deltas/list, beside the fan-out directories, names them for pullers.
            let d = d.unwrap().path();
            if !d.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(d).unwrap() {
                let f = f.unwrap().path();
                if f.extension().is_some_and(|e| e == "zd") {
                    out.push(f);
                }
            }
        }
    }
    out.sort();
    out
}

#[test]
fn patched_files_cross_the_wire_as_deltas() {
    let env = Env::new();
    let (a, b) = patched_pair(&env);
    env.getimage(&a, "p", &["--no-default-excludes"]);
    let node = node_at(&env, "node", "p@1");
    let out = env.getimage(&b, "p", &["--no-default-excludes"]);
    assert!(
        out.contains("deltas from"),
        "getimage precomputes deltas:\n{out}"
    );
    assert!(!delta_files(&env.repo()).is_empty(), "no delta was cached");

    let srv = Server::start(&env);
    let r = update(&srv, &node, "p@2");
    assert_eq!(node_diff(&b, &node), "", "the node is not rev2: {r}");
    // The library (~1 MB), the 64 KiB chunk around the rewritten block and the ten configs
    // came as deltas; the timestamp-only files moved no bytes. Whole, the library alone
    // would be hundreds of KiB.
    let deltas = r["deltas"].as_u64().unwrap();
    let fetched = r["bytes_fetched"].as_u64().unwrap();
    assert!(deltas >= 12, "only {deltas} blobs came as deltas: {r}");
    assert!(r["metadata_only"].as_u64().unwrap() >= 50, "{r}");
    assert!(
        fetched < 40_000,
        "{fetched} bytes fetched for a few patches: {r}"
    );

    // Rollback needs nothing from the network and restores rev1.
    drop(srv);
    ok(&["rollback", "--root", node.to_str().unwrap()]);
    assert_eq!(node_diff(&a, &node), "");
}

#[test]
fn deltas_are_made_on_demand_and_wrong_ones_are_refused() {
    let env = Env::new();
    let (a, b) = patched_pair(&env);
    env.getimage(&a, "p", &["--no-default-excludes"]);
    let node1 = node_at(&env, "node1", "p@1");
    let node2 = node_at(&env, "node2", "p@1");
    env.getimage(&b, "p", &["--no-default-excludes", "--no-deltas"]);
    assert!(
        delta_files(&env.repo()).is_empty(),
        "--no-deltas cached deltas"
    );

    // Made by the server while the node waits, then cached.
    let srv = Server::start(&env);
    let r = update(&srv, &node1, "p@2");
    assert_eq!(node_diff(&b, &node1), "");
    assert!(r["deltas"].as_u64().unwrap() >= 12, "{r}");
    let cached = delta_files(&env.repo());
    assert!(
        cached.len() >= 12,
        "the server cached {} deltas",
        cached.len()
    );

    // Every cached delta replaced by another one: valid zstd frames that rebuild the wrong
    // bytes. The node must notice each by its id and fetch the whole blobs instead.
    let first = std::fs::read(&cached[0]).unwrap();
    for (i, f) in cached.iter().enumerate() {
        let other = std::fs::read(&cached[(i + 1) % cached.len()]).unwrap();
        std::fs::write(
            f,
            if other == std::fs::read(f).unwrap() {
                &first
            } else {
                &other
            },
        )
        .unwrap();
    }
    let r = update(&srv, &node2, "p@2");
    assert_eq!(
        node_diff(&b, &node2),
        "",
        "a wrong delta reached the node: {r}"
    );
    assert_eq!(
        r["deltas"].as_u64().unwrap(),
        0,
        "a wrong delta was used: {r}"
    );
    assert!(r["deltas_asked"].as_u64().unwrap() >= 12, "{r}");
}

/// A capture spends a bounded time on deltas (`--delta-budget`, by default four fifths of
/// the capture's time): with none, only the manifest's delta is made, the rest are left for the
/// server, and a node still gets every patched file as a delta.
#[test]
fn a_spent_delta_budget_leaves_the_rest_to_the_server() {
    let env = Env::new();
    let (a, b) = patched_pair(&env);
    env.getimage(&a, "p", &["--no-default-excludes"]);
    let node = node_at(&env, "node", "p@1");
    let out = env.getimage(&b, "p", &["--no-default-excludes", "--delta-budget", "0"]);
    assert!(
        out.contains("left for `aurum serve`"),
        "getimage does not say deltas were left: {out}"
    );
    assert!(
        delta_files(&env.repo()).len() <= 1,
        "more than the manifest's delta made with no budget: {:?}",
        delta_files(&env.repo())
    );
    let srv = Server::start(&env);
    let r = update(&srv, &node, "p@2");
    assert_eq!(node_diff(&b, &node), "", "the node is not rev2: {r}");
    assert!(r["deltas"].as_u64().unwrap() >= 12, "{r}");
    assert!(
        delta_files(&env.repo()).len() >= 12,
        "the server cached no delta"
    );
    let bad = env.run(&[
        "getimage",
        "--golden-client",
        b.to_str().unwrap(),
        "--image",
        "p",
        "--delta-budget=-1",
    ]);
    assert_eq!(
        bad.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--delta-budget"));
}
