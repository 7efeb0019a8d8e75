//! Repository commands end to end: references, listings, tags, image management, dedup, the
//! stat cache, diff, excludes, export/import, and refusing bad input.

use crate::common::{have, rev_of, rsync_diff, sh, Env};

fn tree(env: &Env, name: &str) -> std::path::PathBuf {
    let p = env.path(name);
    sh(&format!(
        "mkdir -p {p}/etc {p}/usr/lib {p}/proc/1 {p}/var/log && printf 'a\\n' > {p}/etc/a && printf 'b\\n' > {p}/etc/b \
         && head -c 2000000 /dev/urandom > {p}/usr/lib/libbig.so && printf log > {p}/var/log/syslog \
         && printf id > {p}/etc/machine-id && printf stat > {p}/proc/1/status",
        p = p.display()
    ));
    p
}

fn new_stored_bytes(getimage_out: &str) -> f64 {
    // "... , 1.2 MiB new stored, ..."
    let part = getimage_out
        .split(", ")
        .find(|s| s.ends_with("new stored"))
        .expect("summary has new stored");
    let mut w = part.split_whitespace();
    let n: f64 = w.next().unwrap().parse().unwrap();
    let unit = w.next().unwrap();
    n * match unit {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1048576.0,
        "GiB" => 1073741824.0,
        u => panic!("unit {u}"),
    }
}

#[test]
fn references_listings_and_tags() {
    let env = Env::new();
    let src = tree(&env, "g");
    let s = src.to_str().unwrap();
    let out1 = env.ok(&[
        "getimage",
        "--golden-client",
        s,
        "--image",
        "compute",
        "-m",
        "first",
    ]);
    assert_eq!(rev_of(&out1), "compute@1");
    sh(&format!("printf 'a2\\n' > {s}/etc/a"));
    let out2 = env.ok(&[
        "getimage",
        "--golden-client",
        s,
        "--image",
        "compute",
        "-m",
        "second",
    ]);
    assert_eq!(rev_of(&out2), "compute@2");
    let id2 = out2.split_whitespace().nth(1).unwrap().to_string();

    // Every form of reference.
    assert!(env.ok(&["show", "compute"]).contains("compute@2"));
    assert!(env.ok(&["show", "compute@1"]).contains("first"));
    assert!(env.ok(&["show", &id2]).contains("compute@2"));
    env.ok(&["tag", "compute@1", "production"]);
    assert!(env
        .ok(&["show", "compute:production"])
        .contains("compute@1"));
    let err = env.fails(&["show", "compute@9"], 2);
    assert!(err.contains("no revision 9"), "{err}");
    // IMAGE~N counts back from the newest; past the first revision is an error naming it.
    assert!(env.ok(&["show", "compute~1"]).contains("first"));
    assert!(env.ok(&["show", "compute~"]).contains("compute@1"));
    assert!(env.ok(&["show", "compute~0"]).contains("compute@2"));
    let err = env.fails(&["show", "compute~2"], 2);
    assert!(
        err.contains("past the first revision") && err.contains("compute~1"),
        "{err}"
    );
    let err = env.fails(&["show", "compute@2~1"], 2);
    assert!(err.contains("IMAGE~N"), "{err}");
    let err = env.fails(&["show", "nosuch"], 2);
    assert!(err.contains("lsimage"), "{err}");
    env.fails(&["show", "compute:nosuchtag"], 2);
    env.fails(&["tag", "compute@1", "bad/tag"], 2);

    // Listings, text and JSON.
    let ls = env.ok(&["lsimage"]);
    assert!(
        ls.contains("compute") && ls.contains("production=@1"),
        "{ls}"
    );
    let json: serde_json::Value = serde_json::from_str(&env.ok(&["lsimage", "--json"])).unwrap();
    assert_eq!(json[0]["name"], "compute");
    assert_eq!(json[0]["revisions"], 2);
    let log = env.ok(&["log", "compute"]);
    assert!(
        log.find("compute@2").unwrap() < log.find("compute@1").unwrap(),
        "{log}"
    );
    assert!(log.contains("(production)"), "{log}");
    let json: serde_json::Value =
        serde_json::from_str(&env.ok(&["log", "compute", "--json"])).unwrap();
    assert_eq!(json[1]["tags"][0], "production");
    assert_eq!(json[0]["parent"], json[1]["id"]);

    // Refs mirror the catalog for static clients.
    let refs = env.public().join("refs/compute");
    assert_eq!(
        std::fs::read_to_string(refs.join("head"))
            .unwrap()
            .trim()
            .len(),
        64
    );
    assert!(std::fs::read_to_string(refs.join("head"))
        .unwrap()
        .starts_with(&id2));
    assert!(refs.join("tags/production").exists());
    env.ok(&["tag", "--delete", "compute:production"]);
    assert!(!refs.join("tags/production").exists());
    env.fails(&["tag", "--delete", "compute:production"], 2);

    // Default excludes: machine-id and /proc contents are out, /proc itself is in.
    let all = env.ok(&["ls", "compute", "-r"]);
    assert!(!all.contains("machine-id"), "{all}");
    assert!(all.lines().any(|l| l.ends_with(" /proc")), "{all}");
    assert!(!all.contains("/proc/1"), "{all}");
    let defaults = env.ok(&["getimage", "--show-default-excludes"]);
    assert!(defaults.contains("/etc/ssh/ssh_host_*"), "{defaults}");
}

#[test]
fn cpimage_mvimage_rmimage() {
    let env = Env::new();
    let src = tree(&env, "g");
    env.getimage(&src, "compute", &[]);
    env.ok(&["tag", "compute", "production"]);
    env.ok(&["cpimage", "compute", "compute-test"]);
    let a: serde_json::Value =
        serde_json::from_str(&env.ok(&["show", "compute", "--json"])).unwrap();
    let b: serde_json::Value =
        serde_json::from_str(&env.ok(&["show", "compute-test:production", "--json"])).unwrap();
    assert_eq!(a["id"], b["id"], "a copy names the same revision");
    env.fails(&["cpimage", "compute", "compute-test"], 2);
    env.ok(&["mvimage", "compute-test", "login"]);
    assert!(env.ok(&["show", "login:production"]).contains("login@1"));
    env.fails(&["show", "compute-test"], 2);
    assert!(env.public().join("refs/login/tags/production").exists());
    assert!(!env.public().join("refs/compute-test").exists());
    let err = env.fails(&["rmimage", "login"], 2);
    assert!(err.contains("has tags") && err.contains("--force"), "{err}");
    env.ok(&["rmimage", "login", "--force"]);
    env.fails(&["log", "login"], 2);
    // The other image is untouched, and gc keeps what it needs.
    env.ok(&["gc"]);
    env.ok(&["verify"]);
    let out = env.path("out");
    env.ok(&["checkout", "compute", out.to_str().unwrap()]);
    assert_eq!(std::fs::read(out.join("etc/a")).unwrap(), b"a\n");
}

#[test]
fn dedup_and_stat_cache() {
    let env = Env::new();
    let a = tree(&env, "a");
    let first = env.getimage(&a, "one", &[]);
    assert!(new_stored_bytes(&first) > 1_000_000.0, "{first}");
    // A second image sharing everything but one small file stores about that file only.
    let b = env.path("b");
    sh(&format!(
        "cp -a {}/. {}/ && printf 'different\\n' > {}/etc/b",
        a.display(),
        b.display(),
        b.display()
    ));
    let second = env.getimage(&b, "two", &[]);
    assert!(new_stored_bytes(&second) < 1024.0, "{second}");
    // Unchanged re-capture: every file comes from the stat cache, no new revision.
    std::thread::sleep(std::time::Duration::from_secs(3));
    env.getimage(&b, "two", &[]);
    let again = env.getimage(&b, "two", &[]);
    assert!(again.contains("(unchanged)"), "{again}");
    assert!(again.contains("0 B hashed"), "{again}");
    assert!(again.contains("(4 files from the stat cache)"), "{again}");
    // A change the stat cache must notice (same size, new mtime).
    sh(&format!("printf 'B\\n' > {}/etc/b", b.display()));
    let changed = env.getimage(&b, "two", &[]);
    assert_eq!(rev_of(&changed), "two@2");
    assert_eq!(env.ok(&["cat", "two", "/etc/b"]), "B\n");
}

/// System calls of one `aurum getimage` of `src` into `image`, by name (`strace -c -f`).
fn getimage_calls(
    env: &Env,
    src: &std::path::Path,
    image: &str,
) -> (String, std::collections::HashMap<String, u64>) {
    let counts = env.path("strace.txt");
    // Every call traced rather than `-c`'s summary, which leaves out calls strace has no name
    // for (listxattrat, to strace 6.1).
    let out = std::process::Command::new("strace")
        .args(["-f", "-o"])
        .arg(&counts)
        .arg(env!("CARGO_BIN_EXE_aurum"))
        .args(["--no-progress", "--repo"])
        .arg(env.repo())
        .args(["getimage", "--golden-client"])
        .arg(src)
        .args(["--image", image])
        .output()
        .expect("run strace");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut calls = std::collections::HashMap::new();
    for line in std::fs::read_to_string(&counts).unwrap().lines() {
        // PID name(arguments...; a call another thread interrupted goes on in a
        // `<... name resumed>` line, not counted again.
        let call = line
            .split_once(' ')
            .map_or(line, |(_, rest)| rest.trim_start());
        if let Some((name, _)) = call.split_once('(') {
            if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                *calls.entry(name.to_string()).or_insert(0u64) += 1;
            }
        }
    }
    (stdout, calls)
}

/// The calls that list an entry's xattrs, by whichever system call: `listxattrat` (Linux 6.13,
/// number 465, which an older strace names `syscall_0x1d1`), or `llistxattr` through
/// /proc/self/fd on older kernels.
fn xattr_lists(calls: &std::collections::HashMap<String, u64>) -> u64 {
    ["llistxattr", "listxattr", "listxattrat", "syscall_0x1d1"]
        .iter()
        .map(|c| calls.get(*c).copied().unwrap_or(0))
        .sum()
}

/// Issue 14: an unchanged re-capture costs about one `lstat` per entry. The stat cache keeps
/// every entry's xattrs with its stat data (ctime included, which every xattr change moves), so
/// an entry whose stat data is unchanged has them neither listed nor read; an xattr set on or
/// removed from a file or a directory, with nothing else changed, is still captured. A cache
/// written by an older aurum (no xattrs recorded) is filled in by the next capture.
#[test]
fn an_unchanged_recapture_lists_no_xattrs_and_an_xattr_change_is_still_captured() {
    if !crate::common::need("strace")
        || !crate::common::need("setfattr")
        || !crate::common::need("sqlite3")
    {
        return;
    }
    let env = Env::new();
    let src = env.path("src");
    sh(&format!(
        "mkdir -p {s}/etc/sub {s}/usr && printf 'a\n' > {s}/etc/a && printf 'b\n' > {s}/etc/b \
         && : > {s}/etc/empty && ln -s a {s}/etc/a.sym && setfattr -n user.k -v one {s}/etc/a \
         && setfattr -n user.d -v dir {s}/etc/sub && head -c 100000 /dev/urandom > {s}/usr/big",
        s = src.display()
    ));
    let entries = 8; // below the root: etc, etc/a, etc/a.sym, etc/b, etc/empty, etc/sub, usr, usr/big
                     // The first capture's entries are too new to cache (racy); the second caches them all.
    std::thread::sleep(std::time::Duration::from_secs(3));
    env.getimage(&src, "x", &[]);
    env.getimage(&src, "x", &[]);
    let (out, calls) = getimage_calls(&env, &src, "x");
    assert!(out.contains("(unchanged)"), "{out}");
    assert!(out.contains("(4 files from the stat cache)"), "{out}");
    // The root's xattrs are read (it is opened, not looked up); no other entry's.
    let listed = xattr_lists(&calls);
    assert!(
        listed <= 1,
        "an unchanged re-capture listed xattrs {listed} times: {calls:?}"
    );
    assert!(
        calls.get("newfstatat").copied().unwrap_or(0) >= entries,
        "{calls:?}"
    );

    // An xattr changed on a file, another added to a directory, one removed: nothing else.
    sh(&format!(
        "setfattr -n user.k -v two {s}/etc/a && setfattr -n user.e -v more {s}/etc/sub && setfattr -x user.d {s}/etc/sub",
        s = src.display()
    ));
    let changed = env.getimage(&src, "x", &[]);
    assert_eq!(rev_of(&changed), "x@2", "{changed}");
    let out = env.path("out");
    env.ok(&["checkout", "x@2", out.to_str().unwrap()]);
    let got = |path: &str| {
        sh(&format!(
            "getfattr -d --absolute-names {}",
            out.join(path).display()
        ))
    };
    assert!(got("etc/a").contains("user.k=\"two\""), "{}", got("etc/a"));
    let sub = got("etc/sub");
    assert!(
        sub.contains("user.e=\"more\"") && !sub.contains("user.d"),
        "{sub}"
    );

    // A stat cache without xattrs (as an older aurum wrote it): they are read, and recorded.
    std::thread::sleep(std::time::Duration::from_secs(3));
    env.getimage(&src, "x", &[]);
    sh(&format!(
        "sqlite3 {} 'UPDATE statcache SET xattrs = NULL'",
        env.repo().join("aurum.db").display()
    ));
    let (out, calls) = getimage_calls(&env, &src, "x");
    assert!(out.contains("(unchanged)"), "{out}");
    assert!(xattr_lists(&calls) >= entries, "{calls:?}");
    let (out, calls) = getimage_calls(&env, &src, "x");
    assert!(out.contains("(unchanged)"), "{out}");
    assert!(xattr_lists(&calls) <= 1, "{calls:?}");

    // A path gone from the tree leaves the cache, whose other rows stay as they were.
    let db = env.repo().join("aurum.db");
    let rows = |filter: &str| {
        sh(&format!(
            "sqlite3 {} \"SELECT count(*) FROM statcache{filter}\"",
            db.display()
        ))
        .trim()
        .parse::<u64>()
        .unwrap()
    };
    assert_eq!(rows(""), entries + 1);
    sh(&format!("rm {}/etc/b", src.display()));
    std::thread::sleep(std::time::Duration::from_secs(3));
    let gone = env.getimage(&src, "x", &[]);
    assert_eq!(rev_of(&gone), "x@3", "{gone}");
    assert_eq!(rows(" WHERE path = CAST('etc/b' AS BLOB)"), 0);
    assert_eq!(rows(""), entries);
    let (out, calls) = getimage_calls(&env, &src, "x");
    assert!(
        out.contains("(unchanged)") && out.contains("(3 files from the stat cache)"),
        "{out}"
    );
    assert!(xattr_lists(&calls) <= 1, "{calls:?}");
}

/// A hardlink group's further name holds no content in the stat cache. When it becomes the
/// group's first name with its stat data unchanged (here the old first name is newly
/// excluded), the cache must not vouch for it: it is hashed once, its row rewritten, and the
/// next capture takes it from the cache.
#[test]
fn a_hardlink_name_that_becomes_the_first_is_cached_again() {
    if !crate::common::need("sqlite3") {
        return;
    }
    let env = Env::new();
    let src = env.path("src");
    sh(&format!(
        "mkdir -p {s}/etc && head -c 60000 /dev/urandom | base64 -w 0 | head -c 50000 > {s}/etc/a1 && ln {s}/etc/a1 {s}/etc/a2 \
         && printf 'b\n' > {s}/etc/b",
        s = src.display()
    ));
    std::thread::sleep(std::time::Duration::from_secs(3));
    let capture = |extra: &[&str]| {
        let mut args = vec!["--json"];
        args.extend_from_slice(extra);
        crate::common::json(&env.getimage(&src, "x", &args))
    };
    capture(&[]);
    let first = capture(&[]);
    assert_eq!(first["bytes_hashed"], 0, "{first}");
    let excluded = capture(&["--exclude", "/etc/a1"]);
    assert_eq!(excluded["bytes_hashed"], 50000, "{excluded}");
    let again = capture(&["--exclude", "/etc/a1"]);
    assert_eq!(again["bytes_hashed"], 0, "{again}");
    assert_eq!(again["from_cache"], 2, "{again}");
    assert_eq!(env.ok(&["cat", "x", "/etc/a2"]).len(), 50000);

    // A row whose chunks do not cover the file's data (no chunks at all, as encoded for a
    // file of none) with the file's stat data: the file is hashed, and cached again.
    sh(&format!(
        "sqlite3 {} \"UPDATE statcache SET content = X'0000' WHERE path = CAST('etc/a2' AS BLOB)\"",
        env.repo().join("aurum.db").display()
    ));
    let bad = capture(&["--exclude", "/etc/a1"]);
    assert_eq!(bad["bytes_hashed"], 50000, "{bad}");
    assert_eq!(bad["from_cache"], 1, "{bad}");
    let again = capture(&["--exclude", "/etc/a1"]);
    assert_eq!(again["bytes_hashed"], 0, "{again}");
}

/// The stat cache does not vouch for an entry changed in the two seconds before a capture
/// began: a change in the same timestamp would look like no change. A file rewritten with
/// the same size and its mtime put back (only its ctime is new), and an xattr set, right
/// after a capture, are captured at once, and their rows stay out of the cache until a
/// capture sees them settled. An entry the cache vouches for that is racy (an mtime in the
/// future) has its row removed and not counted as kept, so the rows of a vanished path are
/// still found and pruned.
#[test]
fn a_recapture_at_once_captures_a_change_the_stat_cache_cannot_see() {
    if !crate::common::need("setfattr") || !crate::common::need("sqlite3") {
        return;
    }
    let env = Env::new();
    let src = env.path("src");
    sh(&format!(
        "mkdir -p {s}/etc && printf 'aaaa\n' > {s}/etc/a && printf 'b\n' > {s}/etc/b \
         && printf 'c\n' > {s}/etc/c && printf 'g\n' > {s}/etc/g",
        s = src.display()
    ));
    std::thread::sleep(std::time::Duration::from_secs(3));
    let db = env.repo().join("aurum.db");
    let rows = |filter: &str| {
        sh(&format!(
            "sqlite3 {} \"SELECT count(*) FROM statcache{filter}\"",
            db.display()
        ))
        .trim()
        .parse::<u64>()
        .unwrap()
    };
    let of = |path: &str| format!(" WHERE path = CAST('{path}' AS BLOB)");
    env.getimage(&src, "x", &[]);
    assert_eq!(rows(""), 6, "the root, etc and four files");

    // Same size, mtime put back, an xattr set: all within the capture's racy window.
    sh(&format!(
        "touch -r {s}/etc/a {s}/ref && printf 'AAAA\n' > {s}/etc/a && touch -r {s}/ref {s}/etc/a \
         && rm {s}/ref && setfattr -n user.k -v one {s}/etc/b",
        s = src.display()
    ));
    let changed = env.getimage(&src, "x", &[]);
    assert_eq!(rev_of(&changed), "x@2", "{changed}");
    assert_eq!(env.ok(&["cat", "x", "/etc/a"]), "AAAA\n");
    let out = env.path("out");
    env.ok(&["checkout", "x@2", out.to_str().unwrap()]);
    let b = sh(&format!(
        "getfattr -d --absolute-names {}",
        out.join("etc/b").display()
    ));
    assert!(b.contains("user.k=\"one\""), "{b}");
    assert_eq!(rows(&of("etc/a")), 0, "a racy file's row is kept out");
    assert_eq!(rows(&of("etc/b")), 0, "a racy file's row is kept out");
    std::thread::sleep(std::time::Duration::from_secs(3));
    env.getimage(&src, "x", &[]);
    assert_eq!(rows(""), 6);

    // A row the cache vouches for whose file is racy (its stat data put in the row by hand,
    // as a clock set back would leave it), and a vanished path: the racy row goes and so
    // does the vanished path's.
    use std::os::unix::fs::MetadataExt;
    let c = src.join("etc/c");
    sh(&format!(
        "touch -d @$(( $(date +%s) + 3600 )) {}",
        c.display()
    ));
    let m = std::fs::metadata(&c).unwrap();
    sh(&format!(
        "sqlite3 {} \"UPDATE statcache SET mtime_ns = {}, ctime_ns = {}{}\"",
        db.display(),
        m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        m.ctime() * 1_000_000_000 + m.ctime_nsec(),
        of("etc/c")
    ));
    sh(&format!("rm {}/etc/g", src.display()));
    let gone = env.getimage(&src, "x", &[]);
    assert_eq!(rev_of(&gone), "x@3", "{gone}");
    assert_eq!(rows(&of("etc/c")), 0, "{gone}");
    assert_eq!(rows(&of("etc/g")), 0, "{gone}");
}

/// A capture goes a batch of 32,768 entries at a time (issue 14: memory stays flat): a tree
/// of 33,000 entries spans two batches, with hardlink groups whose names fall in different
/// batches, and comes back whole; re-captured unchanged, every file of both batches comes
/// from the stat cache, and a change in the second batch is seen.
#[test]
fn a_capture_larger_than_a_batch_keeps_hardlinks_across_batches_and_the_stat_cache() {
    let env = Env::new();
    let src = env.path("big");
    // a/ holds 33,000 files; z/ (walked last, in the second batch) holds names of a/'s
    // first files, and m/ (in between) names of a/'s last ones.
    sh(&format!(
        "mkdir -p {s}/a {s}/m {s}/z && cd {s}/a && seq -w 0 32999 | xargs -n 1000 sh -c \
         'for n; do echo $n > f$n; done' _ && ln {s}/a/f00000 {s}/z/first && ln {s}/a/f00000 {s}/m/first \
         && ln {s}/a/f32999 {s}/z/last && ln {s}/a/f20000 {s}/z/middle",
        s = src.display()
    ));
    let s = src.to_str().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(3));
    env.ok(&["getimage", "--golden-client", s, "--image", "big"]);
    let out = env.path("co");
    env.ok(&["checkout", "big", out.to_str().unwrap()]);
    assert_eq!(rsync_diff(&src, &out), "");
    let ino = |p: &str| std::fs::metadata(out.join(p)).unwrap().ino();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(ino("a/f00000"), ino("z/first"));
    assert_eq!(ino("a/f00000"), ino("m/first"));
    assert_eq!(ino("a/f32999"), ino("z/last"));
    assert_eq!(env.ok(&["cat", "big", "/z/middle"]), "20000\n");
    let again = env.getimage(&src, "big", &[]);
    assert!(again.contains("(unchanged)"), "{again}");
    assert!(again.contains("0 B hashed"), "{again}");
    assert!(
        again.contains("(33000 files from the stat cache)"),
        "{again}"
    );
    sh(&format!("echo changed > {s}/a/f32900"));
    let changed = env.getimage(&src, "big", &[]);
    assert_eq!(rev_of(&changed), "big@2");
    assert_eq!(env.ok(&["cat", "big", "/a/f32900"]), "changed\n");
    assert_eq!(env.ok(&["cat", "big", "/a/f32899"]), "32899\n");
}

/// The walk puts entries out in path byte order by itself, with no sort of the whole tree:
/// `d-x` and `d.x` sort between `d` and `d/...`, and the first name of a hardlinked file in
/// that order (`d-x/link`, not `d/sub/f` walked first) carries its content.
#[test]
fn names_sorting_between_a_directory_and_its_children_capture_in_path_order() {
    let env = Env::new();
    let src = env.path("g");
    sh(&format!(
        "mkdir -p {s}/d/sub {s}/d.x/y {s}/d-x && echo 1 > {s}/d/sub/f && echo 2 > {s}/d.x/y/f \
         && ln {s}/d/sub/f {s}/d-x/link && ln {s}/d/sub/f {s}/d.x/link && echo 3 > {s}/d0",
        s = src.display()
    ));
    let s = src.to_str().unwrap();
    env.ok(&["getimage", "--golden-client", s, "--image", "i"]);
    let listing = env.ok(&["ls", "i", "-r", "--json"]);
    let paths: Vec<String> = serde_json::from_str::<serde_json::Value>(&listing)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect();
    let mut sorted = paths.clone();
    sorted.sort();
    assert_eq!(paths, sorted);
    assert!(paths.iter().any(|p| p == "/d.x/y/f"), "{paths:?}");
    let out = env.path("co");
    env.ok(&["checkout", "i", out.to_str().unwrap()]);
    assert_eq!(rsync_diff(&src, &out), "");
    assert_eq!(env.ok(&["cat", "i", "/d-x/link"]), "1\n");
}

#[test]
fn diff_names_what_changed() {
    let env = Env::new();
    let src = tree(&env, "g");
    let s = src.to_str().unwrap();
    env.ok(&["getimage", "--golden-client", s, "--image", "i"]);
    sh(&format!(
        "cd {s} && chmod 600 etc/a && printf new > etc/new && rm etc/b && rm -r var/log && mkdir var/log && ln -s x usr/lib/libbig2.so \
         && head -c 2000000 /dev/urandom > usr/lib/libbig.so && setfattr -n user.x -v 1 etc/new && touch -d 2000-01-01 etc"
    ));
    env.ok(&["getimage", "--golden-client", s, "--image", "i"]);
    let d = env.ok(&["diff", "i@1", "i@2"]);
    assert!(d.contains("A /etc/new"), "{d}");
    assert!(d.contains("D /etc/b"), "{d}");
    assert!(d.contains("M /etc/a  (mode)"), "{d}");
    assert!(d.contains("M /usr/lib/libbig.so  (content"), "{d}");
    assert!(d.contains("D /var/log/syslog"), "{d}");
    assert!(d.contains("A /usr/lib/libbig2.so"), "{d}");
    let json: serde_json::Value =
        serde_json::from_str(&env.ok(&["diff", "i@1", "i@2", "--json"])).unwrap();
    let etc = json
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["path"] == "/etc")
        .unwrap();
    assert_eq!(etc["what"], serde_json::json!(["mtime"]));
    assert_eq!(env.ok(&["diff", "i@2", "i@2"]), "");
}

#[test]
fn excludes_from_options_and_files() {
    let env = Env::new();
    let src = tree(&env, "g");
    let xfile = env.path("x.exclude");
    std::fs::write(&xfile, "# logs stay on the node\n/var/log/*\n").unwrap();
    env.getimage(
        &src,
        "i",
        &[
            "--exclude",
            "*.so",
            "--exclude-file",
            xfile.to_str().unwrap(),
        ],
    );
    let all = env.ok(&["ls", "i", "-r"]);
    assert!(
        !all.contains("libbig.so") && !all.contains("syslog"),
        "{all}"
    );
    assert!(all.contains("/etc/a"), "{all}");
    let err = env.fails(
        &[
            "getimage",
            "--golden-client",
            src.to_str().unwrap(),
            "--image",
            "i",
            "--exclude",
            "[bad",
        ],
        2,
    );
    assert!(err.contains("[bad"), "{err}");
    let err = env.fails(
        &[
            "getimage",
            "--golden-client",
            "/no/such/dir",
            "--image",
            "i",
        ],
        2,
    );
    assert!(err.contains("not a directory"), "{err}");
    env.fails(
        &[
            "getimage",
            "--golden-client",
            src.to_str().unwrap(),
            "--image",
            "bad name",
        ],
        2,
    );
}

#[test]
fn export_import_round_trip() {
    let env = Env::new();
    let src = tree(&env, "g");
    sh(&format!("cd {} && ln etc/a etc/a.hard && ln -s a etc/a.sym && setfattr -n user.k -v v etc/a && touch -d '2020-01-01 00:00:00.25' etc/b", src.display()));
    let out = env.getimage(&src, "i", &[]);
    let id = out.split_whitespace().nth(1).unwrap().to_string();
    let tarball = env.path("i.tar.zst");
    env.ok(&["export", "i", "-o", tarball.to_str().unwrap()]);
    // GNU tar reads it.
    let listing = sh(&format!("zstd -dc {} | tar -tvf -", tarball.display()));
    assert!(listing.contains("etc/a.hard link to etc/a"), "{listing}");
    // Importing it back gives the very same revision id: nothing was lost.
    let imported = env.ok(&["import", "--image", "back", tarball.to_str().unwrap()]);
    assert_eq!(
        imported.split_whitespace().nth(1).unwrap(),
        id,
        "{imported}"
    );
    // A tarball made by GNU tar imports and checks out equal to its source.
    let gnu = env.path("gnu.tar.gz");
    sh(&format!(
        "tar --xattrs --xattrs-include='*' -C {} -czf {} .",
        src.display(),
        gnu.display()
    ));
    env.ok(&["import", "--image", "gnu", gnu.to_str().unwrap()]);
    let dst = env.path("gnu-out");
    env.ok(&["checkout", "gnu", dst.to_str().unwrap()]);
    // GNU tar keeps whole-second... no: it keeps nanoseconds in pax; compare everything.
    let d = rsync_diff(&src, &dst);
    assert!(d.trim().is_empty(), "{d}");
}

/// `export -o x.tar.gz` wrote a plain tar under that name, and any unknown ending did too.
#[test]
fn export_compresses_as_the_name_says_and_refuses_unknown_endings() {
    let env = Env::new();
    let src = tree(&env, "g");
    env.getimage(&src, "i", &[]);
    for (name, magic) in [
        ("a.tar.gz", &[0x1f, 0x8b][..]),
        ("a.tgz", &[0x1f, 0x8b][..]),
        ("a.tar.zst", &[0x28, 0xb5, 0x2f, 0xfd][..]),
        ("a.tzst", &[0x28, 0xb5, 0x2f, 0xfd][..]),
    ] {
        let out = env.path(name);
        env.ok(&["export", "i", "-o", out.to_str().unwrap()]);
        let bytes = std::fs::read(&out).unwrap();
        assert!(
            bytes.starts_with(magic),
            "{name} is not compressed as named"
        );
        let listing = sh(&format!("tar -tf {}", out.display()));
        assert!(listing.lines().any(|l| l == "etc/a"), "{name}: {listing}");
    }
    let plain = env.path("a.tar");
    env.ok(&["export", "i", "-o", plain.to_str().unwrap()]);
    assert_eq!(&std::fs::read(&plain).unwrap()[257..262], b"ustar");
    for name in ["a.tar.bz2", "a.tar.xz", "a.zip", "archive"] {
        let out = env.path(name);
        let err = env.fails(&["export", "i", "-o", out.to_str().unwrap()], 2);
        assert!(err.contains(".tar.gz") && err.contains("-o -"), "{err}");
        assert!(!out.exists(), "{name} was written");
    }
    // A missing directory is reported under the name asked for, not the temp file's.
    let err = env.fails(&["export", "i", "-o", "/nonexistent/dir/x.tar"], 1);
    assert!(err.contains("/nonexistent/dir/x.tar:"), "{err}");
    assert!(!err.contains(".tmp"), "{err}");
}

#[test]
fn refuses_archives_that_escape_the_root() {
    if !have("python3") {
        panic!("python3 is needed (test.sh installs it)");
    }
    let env = Env::new();
    let evil = env.path("evil.tar");
    sh(&format!(
        "python3 -c \"import tarfile,io; t=tarfile.open('{}','w'); i=tarfile.TarInfo('../../etc/evil'); d=b'x'; i.size=1; t.addfile(i, io.BytesIO(d)); t.close()\"",
        evil.display()
    ));
    let err = env.fails(&["import", "--image", "evil", evil.to_str().unwrap()], 2);
    assert!(err.contains("leaves the root"), "{err}");
    env.fails(&["show", "evil"], 2);
}

#[test]
fn checkout_refuses_a_non_empty_directory_and_init_twice() {
    let env = Env::new();
    let src = tree(&env, "g");
    env.getimage(&src, "i", &[]);
    let err = env.fails(&["checkout", "i", src.to_str().unwrap()], 2);
    assert!(err.contains("not empty"), "{err}");
    let err = env.fails(&["init"], 2);
    assert!(err.contains("already"), "{err}");
    let other = env.path("nothing-here");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_aurum"))
        .args(["--repo", other.to_str().unwrap(), "lsimage"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("aurum init"));
    // init refuses a directory holding other files (a golden tree given by mistake).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_aurum"))
        .args(["--repo", src.to_str().unwrap(), "init"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
    assert!(!src.join("aurum.db").exists() && !src.join("public").exists());
    let _ = rsync_diff;
}

#[test]
fn every_command_has_help() {
    let env = Env::new();
    for cmd in [
        "init", "getimage", "lsimage", "log", "show", "ls", "cat", "diff", "tag", "cpimage",
        "mvimage", "rmimage", "checkout", "export", "import", "verify", "gc", "serve", "nodes",
    ] {
        let help = env.ok(&[cmd, "--help"]);
        assert!(help.contains("Usage: aurum"), "{cmd}: {help}");
        assert!(
            help.lines().next().unwrap().len() > 10,
            "{cmd} has no description"
        );
    }
}

/// A name that is not UTF-8 can be read back with `cat` and `ls`, given as its bytes or as
/// `ls` prints it; a hardlinked fifo lists as a fifo.
#[test]
fn cat_and_ls_take_names_that_are_not_utf8() {
    use std::os::unix::ffi::OsStrExt;
    let env = Env::new();
    let src = env.path("g");
    std::fs::create_dir(&src).unwrap();
    let name = std::ffi::OsStr::from_bytes(b"bad\xff\xfename");
    std::fs::write(src.join(name), "hi\n").unwrap();
    sh(&format!(
        "mkfifo '{0}/fifo' && ln '{0}/fifo' '{0}/fifo2'",
        src.display()
    ));
    env.getimage(&src, "t", &[]);
    let listing = env.ok(&["ls", "t"]);
    assert!(listing.contains("/bad\\xff\\xfename"), "{listing}");
    let fifo2 = listing.lines().find(|l| l.contains("/fifo2")).unwrap();
    assert!(
        fifo2.starts_with('p'),
        "a hardlinked fifo lists as a fifo: {fifo2}"
    );
    let mut raw = std::ffi::OsString::from("/");
    raw.push(name);
    let out = env
        .cmd(&["cat", "t"])
        .arg(&raw)
        .output()
        .expect("run aurum");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"hi\n");
    assert_eq!(env.ok(&["cat", "t", "/bad\\xff\\xfename"]), "hi\n");
    assert!(env.ok(&["ls", "t", "/bad\\xff\\xfename"]).contains("bad"));
    env.fails(&["cat", "t", "/bad\\xff"], 2);
}

/// `getimage --golden-client /` failed with "var/churn10: No such file or directory" when a
/// file vanished between the directory listing and its stat or read. Files come and go here
/// while the capture runs (as in a live /var); every capture must succeed and verify, and the
/// vanished ones must show up as warnings, at least once over the attempts (a test that never
/// saw a file vanish would prove nothing).
#[test]
fn getimage_leaves_out_files_that_vanish_during_the_capture() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let env = Env::new();
    let live = env.path("live");
    for d in 0..20 {
        for f in 0..100 {
            let p = live.join(format!("usr/d{d}/f{f}"));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, format!("{d} {f}\n").repeat(50)).unwrap();
        }
    }
    let var = live.join("var");
    std::fs::create_dir_all(&var).unwrap();
    let mut seen = 0;
    for attempt in 0..20 {
        let stop = AtomicBool::new(false);
        let out = std::thread::scope(|s| {
            // Churn: files and whole directories created and removed as fast as we can. The
            // files are empty: a file replaced by a shorter one between its stat and its read
            // fails the capture ("file shrank"), which is not what this test is about.
            s.spawn(|| {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let dir = var.join(format!("spool{}", i % 3));
                    let _ = std::fs::create_dir_all(&dir);
                    for k in 0..20 {
                        let _ = std::fs::File::create(dir.join(format!("churn{k}")));
                    }
                    if i.is_multiple_of(2) {
                        let _ = std::fs::remove_dir_all(&dir);
                    } else {
                        for k in 0..20 {
                            let _ = std::fs::remove_file(dir.join(format!("churn{k}")));
                        }
                    }
                    i += 1;
                }
            });
            let out = env.run(&[
                "getimage",
                "--golden-client",
                live.to_str().unwrap(),
                "--image",
                "live",
            ]);
            stop.store(true, Ordering::Relaxed);
            out
        });
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "attempt {attempt} failed:\n{stdout}\n{stderr}"
        );
        let vanished = stderr.matches("vanished during the capture").count();
        if vanished > 0 {
            assert!(stdout.contains(" warning"), "{stdout}");
        }
        seen += vanished;
        env.ok(&["verify", &rev_of(&stdout)]);
        if seen >= 5 {
            break;
        }
    }
    assert!(
        seen > 0,
        "no file vanished during 20 captures: the test tested nothing"
    );
}

/// Content and allocated bytes (`st_blocks` × 512) of a file.
fn content_and_allocated(p: &std::path::Path) -> (Vec<u8>, u64) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (std::fs::read(p).unwrap(), m.blocks() * 512)
}

/// A sparse file (100 MiB, 8 KiB of data) came out of export + import dense; now the holes
/// survive aurum's export (read by GNU tar), its import, and GNU tar's own sparse formats.
/// A file of written zeros stays dense throughout (a swap file must not get holes).
#[test]
fn export_and_import_keep_sparse_holes() {
    let env = Env::new();
    let src = env.path("g");
    sh(&format!(
        "mkdir -p {s} && cd {s} && truncate -s 100M sparse && printf head | dd of=sparse conv=notrunc status=none \
         && printf middle | dd of=sparse bs=1M seek=50 conv=notrunc status=none \
         && truncate -s 30M ends-in-data && printf tail | dd of=ends-in-data bs=1M seek=29 conv=notrunc status=none \
         && truncate -s 5M all-hole && dd if=/dev/zero of=zeros bs=1M count=2 status=none && printf small > small",
        s = src.display()
    ));
    let sparse_names = ["sparse", "ends-in-data", "all-hole"];
    // Every sparse file reads the same and takes well under 1 MiB; `zeros` stays allocated.
    let check = |dir: &std::path::Path, what: &str| {
        for name in sparse_names {
            let (want, _) = content_and_allocated(&src.join(name));
            let (got, allocated) = content_and_allocated(&dir.join(name));
            assert!(got == want, "{what}: {name} differs");
            assert!(
                allocated < 1 << 20,
                "{what}: {name} is dense ({allocated} bytes)"
            );
        }
        let (got, allocated) = content_and_allocated(&dir.join("zeros"));
        assert_eq!(got, vec![0u8; 2 << 20], "{what}: zeros differs");
        assert!(
            allocated >= 2 << 20,
            "{what}: zeros got holes ({allocated} bytes)"
        );
    };
    let id = env
        .getimage(&src, "i", &[])
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    let tarball = env.path("i.tar");
    env.ok(&["export", "i", "-o", tarball.to_str().unwrap()]);
    let size = std::fs::metadata(&tarball).unwrap().len();
    assert!(size < 4 << 20, "the archive holds the holes: {size} bytes");
    // GNU tar extracts aurum's archive sparse.
    let x = env.path("x");
    sh(&format!(
        "mkdir {x} && tar -C {x} -xf {t}",
        x = x.display(),
        t = tarball.display()
    ));
    check(&x, "tar -xf of aurum export");
    // Import gives back the very revision, holes and all.
    let back = env.ok(&["import", "--image", "back", tarball.to_str().unwrap()]);
    assert_eq!(back.split_whitespace().nth(1).unwrap(), id, "{back}");
    // GNU tar's sparse formats: old GNU (the default), and pax 0.0, 0.1 and 1.0.
    for (n, opts) in [
        ("gnu", "-S"),
        ("pax00", "-S --format=pax --sparse-version=0.0"),
        ("pax01", "-S --format=pax --sparse-version=0.1"),
        ("pax10", "-S --format=pax --sparse-version=1.0"),
    ] {
        let t = env.path(&format!("{n}.tar"));
        sh(&format!(
            "tar {opts} -C {} -cf {} .",
            src.display(),
            t.display()
        ));
        env.ok(&["import", "--image", n, t.to_str().unwrap()]);
        let out = env.path(&format!("{n}-out"));
        env.ok(&["checkout", n, out.to_str().unwrap()]);
        check(&out, n);
        let d = rsync_diff(&src, &out);
        assert!(d.trim().is_empty(), "{n}: {d}");
    }
}

/// `tar --acls` archives failed to import ("malformed pax extension": GNU tar's ACL records
/// span several lines). Now their ACLs become the kernel's ACL xattrs, with names mapped
/// through the archive's own /etc/passwd and /etc/group, and export writes them back the way
/// `tar --acls` extracts them.
#[test]
fn import_and_export_keep_gnu_tar_acls() {
    let env = Env::new();
    let src = env.path("one");
    sh(&format!(
        "mkdir -p {s}/etc {s}/d && cd {s} && echo x > f && echo y > g \
         && (getent passwd 0 65534; true) > etc/passwd && (getent group 0 100; true) > etc/group \
         && setfacl -m u:65534:rw,u:12345:rwx,g:100:r f && setfacl -d -m u:65534:rx,g:100:rwx d \
         && setfacl -m u:65534:r d && setfattr -n user.k -v v g && setfattr -n user.nl -v 0x610a62 g",
        s = src.display()
    ));
    for (n, opts, ext) in [
        ("plain", "--acls", "tar"),
        ("gz", "--xattrs --xattrs-include='*' --acls -z", "tar.gz"),
    ] {
        let t = env.path(&format!("{n}.{ext}"));
        sh(&format!(
            "tar {opts} -C {} -cf {} .",
            src.display(),
            t.display()
        ));
        env.ok(&["import", "--image", n, t.to_str().unwrap()]);
        let out = env.path(&format!("{n}-out"));
        env.ok(&["checkout", n, out.to_str().unwrap()]);
        let acl = sh(&format!("getfacl -n {0}/f {0}/d", out.display()));
        assert!(
            acl.contains("user:65534:rw-") && acl.contains("user:12345:rwx"),
            "{acl}"
        );
        assert!(acl.contains("default:group:100:rwx"), "{acl}");
        if n == "gz" {
            let d = rsync_diff(&src, &out);
            assert!(d.trim().is_empty(), "{n}: {d}");
        }
    }
    // aurum's own export extracts with its ACLs under GNU tar --acls.
    let t = env.path("back.tar");
    env.ok(&["export", "gz", "-o", t.to_str().unwrap()]);
    let x = env.path("x");
    sh(&format!(
        "mkdir {x} && tar --acls --xattrs --xattrs-include='*' --numeric-owner -C {x} -xpf {t}",
        x = x.display(),
        t = t.display()
    ));
    let d = rsync_diff(&src, &x);
    assert!(d.trim().is_empty(), "tar -x of aurum export: {d}");
    // A name the archive's /etc/passwd does not list is refused, not guessed.
    let host_name = sh("getent passwd 65534 | cut -d: -f1");
    if !host_name.trim().is_empty() {
        sh(&format!(
            "cd {} && getent passwd 0 > etc/passwd",
            src.display()
        ));
        let t = env.path("unknown.tar");
        sh(&format!(
            "tar --acls -C {} -cf {} .",
            src.display(),
            t.display()
        ));
        let err = env.fails(&["import", "--image", "unknown", t.to_str().unwrap()], 2);
        assert!(
            err.contains(&format!("`{}`", host_name.trim())) && err.contains("/etc/passwd"),
            "{err}"
        );
    }
}

/// Issue #12, item 14: exclude files written for `rsync --exclude-from` (SystemImager's
/// getimage and updateclient.local.exclude) mean to aurum what they mean to rsync: the same
/// tree captured by aurum and copied by rsync with the same file holds the same paths.
#[test]
fn exclude_files_follow_rsync_rules() {
    if !have("rsync") {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "rsync is missing (./test.sh installs it)"
        );
        eprintln!("skipped: needs rsync");
        return;
    }
    let env = Env::new();
    let src = env.path("golden");
    sh(&format!(
        "cd {s} 2>/dev/null || mkdir -p {s} && cd {s} \
         && mkdir -p etc/ssh var/log/apt home/a/cache srv/data/x opt usr/share/doc/cache tmp \
         && for f in etc/fstab etc/hosts etc/ssh/ssh_host_rsa_key etc/ssh/sshd_config \
              var/log/syslog var/log/keep.log var/log/apt/history.log home/a/.x.swp home/a/notes \
              home/a/cache/c srv/data/x/important srv/data/top opt/a1.conf opt/b2.conf opt/c3.conf \
              opt/a12.conf usr/share/doc/cache/d usr/share/doc/README tmp/t 'etc/we ird'; \
            do printf x > \"$f\"; done",
        s = src.display()
    ));
    let rules = env.path("updateclient.local.exclude");
    std::fs::write(
        &rules,
        "# as SystemImager sites write them\n\
         - /etc/fstab\n\
         ; rsync's other comment\n\
         \n\
         + /var/log/keep.log\n\
         - /var/log/*\n\
         /home/*/*.swp\n\
         - cache/\n\
         + /srv/data/**/important\n\
         - /srv/data/*\n\
         - /opt/[ab]?.conf\n\
         - /etc/ssh/ssh_host_*\n\
         - /etc/we ird\n\
         - /tmp/***\n",
    )
    .unwrap();
    let rules_arg = rules.to_str().unwrap();

    let listing = |root: &std::path::Path| {
        sh(&format!(
            "cd {} && find . -mindepth 1 | sort",
            root.display()
        ))
    };
    let by_rsync = env.path("by-rsync");
    sh(&format!(
        "rsync -a --exclude-from={rules_arg} {}/ {}/",
        src.display(),
        by_rsync.display()
    ));
    env.getimage(
        &src,
        "img",
        &["--no-default-excludes", "--exclude-file", rules_arg],
    );
    let by_aurum = env.path("by-aurum");
    env.ok(&["checkout", "img", by_aurum.to_str().unwrap()]);
    let (want, got) = (listing(&by_rsync), listing(&by_aurum));
    assert_eq!(got, want, "aurum and rsync disagree on {rules_arg}");
    // The rules did something: not a comparison of two full copies.
    let lines: Vec<&str> = got.lines().collect();
    for gone in [
        "./etc/fstab",
        "./var/log/syslog",
        "./home/a/.x.swp",
        "./opt/a1.conf",
        "./tmp",
    ] {
        assert!(!lines.contains(&gone), "{gone} kept:\n{got}");
    }
    for kept in [
        "./var/log/keep.log",
        "./opt/a12.conf",
        "./etc/hosts",
        "./home/a/notes",
    ] {
        assert!(lines.contains(&kept), "{kept} lost:\n{got}");
    }
}

/// A command that must wait for another's lock says so once (it said it twice, through the
/// log and directly), waits, and goes on when the lock is released.
#[test]
fn a_command_waiting_for_a_lock_says_so_once() {
    if !crate::common::need("flock") {
        return;
    }
    let env = Env::new();
    let t = tree(&env, "t");
    env.getimage(&t, "img", &[]);
    let node = env.path("node");
    env.ok(&["checkout", "img@1", node.to_str().unwrap()]);
    let lock = env.repo().join("lock");
    let node_lock = node.join("var/lib/aurum-node/lock");
    std::fs::create_dir_all(node_lock.parent().unwrap()).unwrap();
    for (held, args, said) in [
        (
            &lock,
            vec!["gc"],
            "other aurum commands are using the repository; waiting for them to finish",
        ),
        (
            &node_lock,
            vec![
                "updateclient",
                "--image",
                "img@1",
                "--root",
                node.to_str().unwrap(),
                "--adopt",
            ],
            "another aurum update or rollback is running on",
        ),
    ] {
        // flock(1) holds the lock until its command ends: until the fifo is written.
        let fifo = env.path("release");
        let _ = std::fs::remove_file(&fifo);
        sh(&format!("mkfifo {}", fifo.display()));
        let mut holder = std::process::Command::new("flock")
            .arg(held)
            .args(["-c", &format!("cat {}", fifo.display())])
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        // The holder has the lock once a non-blocking try fails.
        while std::process::Command::new("flock")
            .args(["-n"])
            .arg(held)
            .arg("true")
            .status()
            .unwrap()
            .success()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "flock never took {held:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let waiter = env
            .cmd(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Released once aurum waits on it: /proc/locks shows a blocked request on the lock
        // file's inode as "->".
        let ino = format!(
            ":{} ",
            std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(held).unwrap())
        );
        while !std::fs::read_to_string("/proc/locks")
            .unwrap()
            .lines()
            .any(|l| l.contains("->") && l.contains(&ino))
        {
            assert!(std::time::Instant::now() < deadline, "aurum never waited");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        std::fs::write(&fifo, "go\n").unwrap();
        holder.wait().unwrap();
        let out = waiter.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "aurum {args:?}: {err}");
        assert_eq!(err.matches(said).count(), 1, "said once:\n{err}");
    }
}

/// --quiet (#13): only errors and the result. An update's hook output and a chroot's note go;
/// the report line stays; --json is unchanged; and --quiet cannot go with --verbose.
#[test]
fn quiet_prints_only_errors_and_the_result() {
    let env = Env::new();
    let t = tree(&env, "t");
    env.getimage(&t, "img", &[]);
    let hooks = env.path("hooks");
    let hook = hooks.join("post-update/10all.say");
    sh(&format!(
        "mkdir -p {d} && printf '#!/bin/sh\\necho HELLO\\n' > {h} && chmod 755 {h}",
        d = hook.parent().unwrap().display(),
        h = hook.display()
    ));
    let update = |node: &str, quiet: bool| {
        let root = env.path(node);
        std::fs::create_dir_all(&root).unwrap();
        let mut args = vec!["updateclient", "--image", "img@1", "--adopt"];
        args.extend(["--root", root.to_str().unwrap()]);
        args.extend(["--hooks", hooks.to_str().unwrap()]);
        if quiet {
            args.insert(0, "--quiet");
        }
        let out = env.run(&args);
        assert!(out.status.success(), "{out:?}");
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (out, err) = update("loud", false);
    assert!(out.contains("updateclient: "), "{out}");
    assert!(
        err.contains("hook post-update/10all.say") && err.contains("HELLO"),
        "{err}"
    );
    let (out, err) = update("quiet", true);
    assert!(out.contains("updateclient: "), "{out}");
    assert_eq!(err, "");

    let json = env.ok(&["--quiet", "lsimage", "--json"]);
    assert_eq!(json, env.ok(&["lsimage", "--json"]));

    let err = env.fails(&["--quiet", "--verbose", "lsimage"], 2);
    assert!(err.contains("--verbose"), "{err}");
}

/// Issue 14: files are hashed in parallel, and which of two files holding the same content
/// was hashed first used to decide where that content went in the pack. The same tree must
/// give the same packs, byte for byte, whatever the threads did.
#[test]
fn issue14_duplicate_files_are_stored_in_the_same_packs_every_time() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("g");
    for i in 0..600u32 {
        let dir = src.join(format!("d{:02}", i % 30));
        std::fs::create_dir_all(&dir).unwrap();
        // 40 distinct contents of 3-40 KiB, each in ~15 files spread over the directories.
        let k = (i * 7) % 40;
        let body: String = (0..(k + 3) * 30)
            .map(|n| format!("line {} of content {k}, {}\n", n, n * k))
            .collect();
        std::fs::write(dir.join(format!("f{i:04}")), body).unwrap();
    }
    let packs = |env: &Env| {
        env.getimage(&src, "dup", &[]);
        let mut names: Vec<String> = std::fs::read_dir(env.public().join("packs"))
            .unwrap()
            .flat_map(|d| std::fs::read_dir(d.unwrap().path()).into_iter().flatten())
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let first = packs(&Env::new());
    assert!(first.iter().any(|n| n.ends_with(".pack")), "{first:?}");
    for _ in 0..3 {
        assert_eq!(packs(&Env::new()), first);
    }
}

/// Files bigger than a hashing batch (8 MiB) are read and hashed on one thread while the
/// pieces read before are grouped and compressed on the others (issue 14: a big file was read,
/// hashed and compressed on one thread). A copy of such a file stores nothing new, a chunk
/// repeated inside one is stored once, the checkout gives the bytes back, and the packs do
/// not depend on which thread got where first.
#[test]
fn issue14_big_files_are_stored_in_pieces_and_in_the_same_packs_every_time() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("g");
    std::fs::create_dir_all(src.join("big")).unwrap();
    let text = |seed: usize, len: usize| -> Vec<u8> {
        let mut s = String::new();
        let mut n = 0;
        while s.len() < len {
            s.push_str(&format!("line {n} of part {seed}: {}\n", n * seed % 977));
            n += 1;
        }
        s.truncate(len);
        s.into_bytes()
    };
    let noise = |seed: u64, len: usize| -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    // 40 MiB: text and noise by turns, the first MiB again at the end.
    let mut a = Vec::new();
    for part in 0..39usize {
        if part % 3 == 2 {
            a.extend(noise(part as u64, 1 << 20));
        } else {
            a.extend(text(part, 1 << 20));
        }
    }
    a.extend(text(0, 1 << 20));
    std::fs::write(src.join("big/a.bin"), &a).unwrap();
    std::fs::write(src.join("big/b.bin"), &a).unwrap();
    let mut c = text(99, 5 << 20);
    c.extend(noise(99, (4 << 20) + 12_345));
    std::fs::write(src.join("big/c.bin"), &c).unwrap();
    for i in 0..50 {
        std::fs::write(src.join(format!("small{i:02}")), text(i, 3000 + i * 100)).unwrap();
    }
    let capture = |env: &Env| {
        let out = env.getimage(&src, "big", &[]);
        let mut names: Vec<String> = std::fs::read_dir(env.public().join("packs"))
            .unwrap()
            .flat_map(|d| std::fs::read_dir(d.unwrap().path()).into_iter().flatten())
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        (out, names)
    };
    let env = Env::new();
    let (out, first) = capture(&env);
    assert!(first.iter().any(|n| n.ends_with(".pack")), "{first:?}");
    // a.bin's noise is 13 MiB and c.bin's 4 MiB; the text compresses to little, and neither
    // b.bin nor a.bin's last MiB is stored again.
    let stored = new_stored_bytes(&out);
    assert!(
        stored > 17.0 * 1048576.0 && stored < 24.0 * 1048576.0,
        "{stored} bytes stored: {out}"
    );
    env.ok(&["verify"]);
    let dst = env.path("out");
    env.ok(&["checkout", "big", dst.to_str().unwrap()]);
    for name in ["big/a.bin", "big/b.bin", "big/c.bin", "small07"] {
        assert!(
            std::fs::read(src.join(name)).unwrap() == std::fs::read(dst.join(name)).unwrap(),
            "{name} differs after the checkout"
        );
    }
    for _ in 0..2 {
        assert_eq!(capture(&Env::new()).1, first);
    }
}
