//! Crash safety, damage detection and garbage collection, on real processes and real packs.
//!
//! The repository promises that a capture killed at any moment (kill -9, power loss) leaves no
//! revision naming a missing blob and nothing `verify` objects to, and that the next capture
//! resumes from the packs the dead one finished; that one flipped byte in a pack is found by
//! `verify` (exit 3, naming the revisions it breaks) and is never written out by `checkout`; and
//! that `gc` after `rmimage` frees the removed image's content while every remaining revision
//! still checks out identical to its source. These tests kill the real binary with SIGKILL at
//! several moments, corrupt a real pack file, and run gc on images that share content.
//! On a node, an updateclient or rollback killed at any moment and run again leaves the node
//! exactly at its target: no temporary name left, no file sharing an inode with the undo area
//! (issue #12; `bench/killtrials` runs the long version of that test).
//! They need rsync (installed by ./test.sh) but not root.

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::{have, json, rev_of, revisions_of, rsync_diff, sh, write_random, Env};

fn require_rsync() {
    assert!(
        have("rsync"),
        "`rsync` is missing: install rsync (./test.sh does)"
    );
}

/// Every file under `dir` (recursively) whose name ends with `.ext`.
fn files_with_ext(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap_or_else(|e| panic!("read {}: {e}", d.display())) {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else if p.extension().is_some_and(|x| x == ext) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn total_size(files: &[PathBuf]) -> u64 {
    files.iter().map(|p| fs::metadata(p).unwrap().len()).sum()
}

/// Bytes of the packs under `packs/` that have their index, i.e. that a capture can reuse.
fn indexed_pack_bytes(packs_dir: &Path) -> u64 {
    let packs: Vec<PathBuf> = files_with_ext(packs_dir, "pack")
        .into_iter()
        .filter(|p| p.with_extension("idx").exists())
        .collect();
    total_size(&packs)
}

/// Pack files with no index next to them.
fn unindexed_packs(packs_dir: &Path) -> Vec<PathBuf> {
    files_with_ext(packs_dir, "pack")
        .into_iter()
        .filter(|p| !p.with_extension("idx").exists())
        .collect()
}

/// When to SIGKILL a capture.
#[derive(Debug)]
enum Kill {
    /// This long after it started.
    After(Duration),
    /// As soon as a pack index appears that was not there when it started.
    AfterNewPack,
}

/// Runs getimage and SIGKILLs it as `kill` says; returns its output (it may have finished first).
fn getimage_killed(env: &Env, src: &Path, image: &str, kill: &Kill) -> std::process::Output {
    let idx_before = files_with_ext(&env.public().join("packs"), "idx");
    let mut child = env
        .cmd(&[
            "getimage",
            "--golden-client",
            src.to_str().unwrap(),
            "--image",
            image,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn aurum getimage");
    match kill {
        Kill::After(d) => std::thread::sleep(*d),
        Kill::AfterNewPack => {
            let deadline = Instant::now() + Duration::from_secs(120);
            while child.try_wait().expect("poll getimage").is_none() {
                if files_with_ext(&env.public().join("packs"), "idx") != idx_before {
                    break;
                }
                assert!(Instant::now() < deadline, "getimage wrote no pack in 120 s");
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
    // SIGKILL; harmless if it already exited (the caller tells which from the status).
    let _ = child.kill();
    child.wait_with_output().expect("wait for getimage")
}

#[test]
fn killed_captures_leave_the_repository_intact_and_resumable() {
    require_rsync();
    let env = Env::new();
    let src = env.path("golden");
    // ~107 MiB of noise: 300 files of 256 KiB and four of 8 MiB, so a debug-build capture takes
    // around a second and the kills below land in scanning, hashing, storing and committing.
    for i in 0..300u64 {
        write_random(
            &src.join(format!("files/{:02}/f{i:03}.bin", i % 17)),
            1000 + i,
            256 << 10,
        );
    }
    for i in 0..4u64 {
        write_random(&src.join(format!("big/disk{i}.img")), 5000 + i, 8 << 20);
    }
    sh(&format!(
        "cd '{}' && mkdir -p etc && printf 'a=1\\n' > etc/conf && ln -s ../etc/conf big/conf-link && ln etc/conf etc/conf.hard",
        src.display()
    ));

    // How long an uninterrupted capture takes here, so the kills land at the same fractions of
    // it on a fast machine and a slow one.
    let full = {
        let probe = Env::new();
        let t = Instant::now();
        probe.getimage(&src, "probe", &[]);
        t.elapsed()
    };
    println!("an uninterrupted capture takes {full:?}");

    let packs_dir = env.public().join("packs");
    let mut recorded = 0u64; // revisions of `crash` so far (0, or 1 once a capture won the race)
    let mut interrupted = 0;
    let mut resume_checked = false;
    // The capture that records the revision must not store again what earlier, killed captures
    // already put in finished packs. Noise does not compress, so stored ≈ raw.
    let mut check_resumed = |packs_before: u64, out: &str| {
        let rev = json(&env.ok(&["show", "crash@1", "--json"]));
        let bytes = rev["bytes"].as_u64().expect("bytes");
        let new_bytes = rev["new_bytes"].as_u64().expect("new_bytes");
        println!("recording capture: {packs_before} bytes of packs before, {new_bytes} of {bytes} stored");
        assert!(
            new_bytes + packs_before <= bytes + (1 << 20),
            "the capture stored {new_bytes} bytes although {packs_before} bytes of packs were \
             already there for a {bytes}-byte tree: it did not resume\n{out}"
        );
        resume_checked |= packs_before > 0;
    };
    // First a kill the moment the first pack is durable, so the later captures have finished
    // packs to resume from; then kills at fractions of a full capture's time.
    let mut kills = vec![Kill::AfterNewPack];
    kills.extend(
        [0.005, 0.02, 0.08, 0.2, 0.35, 0.5, 0.65, 0.8, 0.95].map(|f| Kill::After(full.mul_f64(f))),
    );
    for kill in kills {
        let packs_before = indexed_pack_bytes(&packs_dir);
        let out = getimage_killed(&env, &src, "crash", &kill);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            // It finished before the kill: then its revision must be there.
            println!("kill {kill:?}: the capture had finished");
            assert_eq!(rev_of(&stdout), "crash@1", "{stdout}");
            if recorded == 0 {
                check_resumed(packs_before, &stdout);
            }
            recorded = 1;
        } else {
            assert_eq!(
                out.status.signal(),
                Some(9),
                "getimage failed by itself ({}), not by our SIGKILL:\n{stderr}",
                out.status
            );
            interrupted += 1;
            // A kill that lands after the commit but before the process exits leaves a
            // complete revision: that is the "new" side of "every revision old or new".
            if recorded == 0 && revisions_of(&env, "crash") == 1 {
                println!("kill {kill:?}: landed after the commit");
                check_resumed(packs_before, &stdout);
                recorded = 1;
            }
        }
        assert_eq!(
            revisions_of(&env, "crash"),
            recorded,
            "after a kill {kill:?} the image has an unexpected number of revisions"
        );
        let v = env.run(&["verify"]);
        assert!(
            v.status.success(),
            "verify fails after getimage was killed {kill:?} ({}):\n{}\n{}",
            v.status,
            String::from_utf8_lossy(&v.stdout),
            String::from_utf8_lossy(&v.stderr)
        );
    }
    assert!(
        interrupted >= 4,
        "only {interrupted} of 10 captures were interrupted"
    );

    // Run to completion.
    let packs_before = indexed_pack_bytes(&packs_dir);
    let out = env.getimage(&src, "crash", &[]);
    assert_eq!(rev_of(&out), "crash@1", "{out}");
    if recorded == 0 {
        check_resumed(packs_before, &out);
    }
    assert!(
        resume_checked,
        "no kill landed after a pack was finished, so resuming was never tested"
    );
    assert_eq!(revisions_of(&env, "crash"), 1);
    env.ok(&["verify"]);
    let co = env.path("checkout");
    env.ok(&["checkout", "crash@1", co.to_str().unwrap()]);
    let d = rsync_diff(&src, &co);
    assert!(
        d.is_empty(),
        "checkout after the kills differs from the source:\n{d}"
    );

    // The dead captures' half-written packs are in tmp/; gc clears them, and stays correct.
    env.ok(&["gc"]);
    let leftovers: Vec<_> = fs::read_dir(env.repo().join("tmp")).unwrap().collect();
    assert!(
        leftovers.is_empty(),
        "gc left {} files in tmp/",
        leftovers.len()
    );
    // A kill between a pack's rename into packs/ and its index's can leave a pack with no index
    // (rare here; a_pack_left_without_its_index_is_not_leaked makes that state on purpose).
    let lost = unindexed_packs(&packs_dir);
    assert!(
        lost.is_empty(),
        "packs without an index survive gc (leaked): {lost:?}"
    );
    env.ok(&["verify"]);
    let co2 = env.path("checkout2");
    env.ok(&["checkout", "crash@1", co2.to_str().unwrap()]);
    let d = rsync_diff(&src, &co2);
    assert!(
        d.is_empty(),
        "checkout after gc differs from the source:\n{d}"
    );
}

#[test]
fn a_pack_left_without_its_index_is_not_leaked() {
    require_rsync();
    // A capture killed after PackWriter::finish renamed a full pack into packs/ but before the
    // pack's index was renamed next to it leaves exactly this: a complete, valid pack under its
    // final name, no .idx, nothing in the catalog. (Reproduced with the real binary by slowing
    // fsync under `strace -e inject=fsync:delay_enter=...` and killing it in that window; here
    // we make the state directly so the test is deterministic.)
    let src = tempfile::tempdir().unwrap();
    write_random(&src.path().join("data/big.bin"), 21, 3 << 20);
    fs::write(src.path().join("data/small.txt"), "small\n").unwrap();
    // The dead capture's pack holds the tree's big content next to something else, so it is
    // not byte for byte the pack the next capture writes (which would simply replace it).
    let donor_src = tempfile::tempdir().unwrap();
    sh(&format!(
        "cp -a '{}/.' '{}/'",
        src.path().display(),
        donor_src.path().display()
    ));
    write_random(&donor_src.path().join("data/other.bin"), 22, 200_000);
    let donor = Env::new();
    donor.getimage(donor_src.path(), "img", &[]);
    let donor_packs = files_with_ext(&donor.public().join("packs"), "pack");
    assert_eq!(donor_packs.len(), 1, "{donor_packs:?}");

    let env = Env::new();
    let packs_dir = env.public().join("packs");
    let orphan = packs_dir.join(
        donor_packs[0]
            .strip_prefix(donor.public().join("packs"))
            .unwrap(),
    );
    fs::create_dir_all(orphan.parent().unwrap()).unwrap();
    fs::copy(&donor_packs[0], &orphan).unwrap();

    env.ok(&["verify"]);
    let out = env.getimage(src.path(), "img", &[]);
    assert_eq!(rev_of(&out), "img@1", "{out}");
    env.ok(&["gc"]);
    env.ok(&["verify"]);
    let co = env.path("checkout");
    env.ok(&["checkout", "img@1", co.to_str().unwrap()]);
    let d = rsync_diff(src.path(), &co);
    assert!(d.is_empty(), "checkout differs from the source:\n{d}");

    // The pack must end up either adopted (its index rebuilt from its record headers, so the
    // capture reuses it) or deleted by gc: 3 MiB of content must not cost 6 MiB forever.
    let lost = unindexed_packs(&packs_dir);
    assert!(
        lost.is_empty(),
        "a pack with no index is neither adopted by getimage/verify nor deleted by gc; it stays in \
         the repository forever and its blobs were stored a second time: {lost:?}\ngetimage said:\n{out}"
    );
    let on_disk = files_with_ext(&packs_dir, "pack").len() as u64;
    let known = json(&env.ok(&["verify", "--json"]))["packs"]
        .as_u64()
        .expect("packs");
    assert_eq!(
        on_disk, known,
        "pack files on disk vs packs the repository knows"
    );
}

/// Flips one byte in the middle of the payload of the record lying across the middle of `pack`.
/// A pack is a magic, then records: a header (id, codec, lengths) followed by the payload.
fn damage_pack(pack: &Path) {
    use aurum::format::pack::{parse_record_header, PACK_MAGIC, RECORD_HEADER};
    let mut data = fs::read(pack).unwrap();
    assert!(
        data.starts_with(PACK_MAGIC),
        "{} is not a pack",
        pack.display()
    );
    let half = data.len() / 2;
    let mut off = PACK_MAGIC.len();
    let target = loop {
        assert!(
            off + RECORD_HEADER <= data.len(),
            "walked off the end of {}",
            pack.display()
        );
        let (_, _, stored, _) = parse_record_header(&data[off..off + RECORD_HEADER])
            .unwrap_or_else(|e| panic!("bad record header at {off} in {}: {e}", pack.display()));
        let (start, end) = (off + RECORD_HEADER, off + RECORD_HEADER + stored as usize);
        if end > half && stored > 0 {
            break start + stored as usize / 2;
        }
        off = end;
    };
    data[target] ^= 0x5a;
    fs::write(pack, data).unwrap();
}

#[test]
fn a_damaged_blob_is_reported_and_never_installed() {
    require_rsync();
    let env = Env::new();
    let src = env.path("golden");
    write_random(&src.join("usr/lib/big.bin"), 11, 3 << 20);
    write_random(&src.join("usr/lib/medium.bin"), 12, 300_000);
    sh(&format!(
        "cd '{}' && mkdir -p etc && printf 'hello\\n' > etc/motd && printf 'x=1\\n' > etc/conf",
        src.display()
    ));
    let out = env.getimage(&src, "img", &[]);
    assert_eq!(rev_of(&out), "img@1", "{out}");
    env.ok(&["verify"]);

    let packs = files_with_ext(&env.public().join("packs"), "pack");
    assert!(
        !packs.is_empty(),
        "no pack file under {}",
        env.public().join("packs").display()
    );
    let biggest = packs
        .iter()
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    damage_pack(biggest);

    // Whole-repository verify names the blob and the revision it breaks.
    let v = env.run(&["verify"]);
    let stdout = String::from_utf8_lossy(&v.stdout);
    assert_eq!(
        v.status.code(),
        Some(3),
        "verify of a damaged repository must exit 3:\n{stdout}"
    );
    assert!(
        stdout.contains("DAMAGED blob"),
        "verify should name the damaged blob:\n{stdout}"
    );
    assert!(
        stdout.contains("img@1"),
        "verify should name the broken revision:\n{stdout}"
    );
    assert!(!stdout.contains("repository is intact"), "{stdout}");

    // So does verify of that revision alone.
    let v = env.run(&["verify", "img@1"]);
    let stdout = String::from_utf8_lossy(&v.stdout);
    assert_eq!(
        v.status.code(),
        Some(3),
        "verify img@1 must exit 3:\n{stdout}"
    );
    assert!(
        stdout.contains("DAMAGED blob") && stdout.contains("img@1"),
        "{stdout}"
    );

    // Checkout refuses: the damaged blob's bytes never reach the target.
    let co = env.path("checkout");
    let c = env.run(&["checkout", "img@1", co.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&c.stderr);
    assert!(
        !c.status.success(),
        "checkout of a damaged revision must fail:\n{stderr}"
    );
    assert_eq!(c.status.code(), Some(3), "damaged data exits 3:\n{stderr}");
    assert!(
        stderr.contains("damaged"),
        "the error should say the blob is damaged:\n{stderr}"
    );
    // Whatever checkout wrote is a true prefix of the source (chunks are checked before they are
    // written), and not everything was written.
    let mut incomplete = 0;
    for rel in [
        "usr/lib/big.bin",
        "usr/lib/medium.bin",
        "etc/motd",
        "etc/conf",
    ] {
        let want = fs::read(src.join(rel)).unwrap();
        match fs::read(co.join(rel)) {
            Ok(got) => {
                assert!(
                    want.starts_with(&got),
                    "{rel} in the failed checkout holds bytes the source does not: damaged data was installed"
                );
                if got.len() < want.len() {
                    incomplete += 1;
                }
            }
            Err(_) => incomplete += 1,
        }
    }
    assert!(
        incomplete > 0,
        "checkout failed, yet every file is complete"
    );
}

#[test]
fn gc_after_rmimage_frees_unique_content_and_keeps_shared_content() {
    require_rsync();
    let env = Env::new();
    // `drop` is captured first, so the content it shares with `keep` lies in its pack next to
    // 8 MiB only `drop` uses: removing `drop` leaves that pack mostly dead (repack). `gone` has
    // a pack all to itself (delete).
    let drop_src = env.path("drop");
    write_random(&drop_src.join("shared/lib.bin"), 1, 2 << 20);
    write_random(&drop_src.join("shared/small.dat"), 2, 5000);
    sh(&format!(
        "cd '{}' && printf 'shared text\\n' > shared/readme && ln -s readme shared/link",
        drop_src.display()
    ));
    write_random(&drop_src.join("only/drop.bin"), 3, 8 << 20);
    let keep_src = env.path("keep");
    fs::create_dir(&keep_src).unwrap();
    sh(&format!(
        "cp -a '{}/shared' '{}/'",
        drop_src.display(),
        keep_src.display()
    ));
    write_random(&keep_src.join("only/keep.bin"), 4, 1 << 20);
    let gone_src = env.path("gone");
    write_random(&gone_src.join("only/gone.bin"), 5, 4 << 20);

    assert_eq!(rev_of(&env.getimage(&drop_src, "drop", &[])), "drop@1");
    let out = env.getimage(&keep_src, "keep", &[]);
    assert_eq!(rev_of(&out), "keep@1");
    let keep_new = json(&env.ok(&["show", "keep@1", "--json"]))["new_bytes"]
        .as_u64()
        .unwrap();
    assert!(
        keep_new < (1 << 20) + (64 << 10),
        "keep@1 stored the shared content again ({keep_new} bytes)"
    );
    assert_eq!(rev_of(&env.getimage(&gone_src, "gone", &[])), "gone@1");

    // A tagged image is not removed without --force.
    env.ok(&["tag", "drop@1", "prod"]);
    env.fails(&["rmimage", "drop"], 2);
    assert_eq!(revisions_of(&env, "drop"), 1);
    env.ok(&["tag", "--delete", "drop:prod"]);
    env.ok(&["rmimage", "drop"]);
    env.ok(&["rmimage", "gone"]);
    let images = json(&env.ok(&["lsimage", "--json"]));
    let names: Vec<&str> = images
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["keep"]);

    let packs_dir = env.public().join("packs");
    let before = files_with_ext(&packs_dir, "pack");
    assert_eq!(before.len(), 3, "one pack per capture: {before:?}");
    let size_before = total_size(&before);

    // A dry run reports and changes nothing.
    let dry = json(&env.ok(&["gc", "--dry-run", "--json"]));
    assert_eq!(dry["dry_run"], true, "{dry}");
    assert_eq!(
        files_with_ext(&packs_dir, "pack"),
        before,
        "gc --dry-run changed the packs"
    );

    let r = json(&env.ok(&["gc", "--json"]));
    assert_eq!(r["dry_run"], false, "{r}");
    for k in [
        "packs_deleted",
        "packs_repacked",
        "manifests_deleted",
        "bytes_freed",
        "live_blobs",
        "dead_blobs",
    ] {
        assert_eq!(
            r[k], dry[k],
            "gc and gc --dry-run disagree on {k}: {r} vs {dry}"
        );
    }
    assert_eq!(r["packs_deleted"], 1, "gone's pack is all dead: {r}");
    assert_eq!(r["packs_repacked"], 1, "drop's pack is 80% dead: {r}");
    assert_eq!(r["manifests_deleted"], 2, "drop@1 and gone@1: {r}");
    assert!(r["dead_blobs"].as_u64().unwrap() > 0, "{r}");
    let freed = r["bytes_freed"].as_u64().unwrap();
    // 8 MiB + 4 MiB of noise are dead (either pack alone would free at most 8 MiB).
    assert!(
        freed >= 11 << 20,
        "about 12 MiB should be freed, not {freed}: {r}"
    );

    let after = files_with_ext(&packs_dir, "pack");
    assert_eq!(
        after.len(),
        2,
        "keep's pack and the repacked shared content: {after:?}"
    );
    assert_eq!(
        files_with_ext(&packs_dir, "idx").len(),
        2,
        "every pack has exactly one index"
    );
    let size_after = total_size(&after);
    assert!(
        size_before - size_after >= 11 << 20,
        "packs shrank only from {size_before} to {size_after} bytes"
    );

    env.ok(&["verify"]);
    let co = env.path("checkout");
    env.ok(&["checkout", "keep", co.to_str().unwrap()]);
    let d = rsync_diff(&keep_src, &co);
    assert!(d.is_empty(), "keep after gc differs from its source:\n{d}");

    // Nothing is left to collect.
    let again = json(&env.ok(&["gc", "--json"]));
    assert_eq!(
        (
            &again["packs_deleted"],
            &again["packs_repacked"],
            &again["bytes_freed"]
        ),
        (
            &serde_json::json!(0),
            &serde_json::json!(0),
            &serde_json::json!(0)
        ),
        "a second gc found more garbage: {again}"
    );
    env.ok(&["verify"]);
}

/// A pack of one tiny blob is mostly header: gc must neither call it "mostly dead" and rewrite
/// it into itself (same content, same name) nor delete the file it has just written.
#[test]
fn gc_keeps_packs_of_tiny_files() {
    let env = Env::new();
    let src = env.path("g1");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), "a\n").unwrap();
    env.getimage(&src, "g", &[]);
    fs::write(src.join("hostname2"), "1\n").unwrap();
    env.getimage(&src, "g", &[]);
    let r = json(&env.ok(&["gc", "--json"]));
    assert_eq!(r["dead_blobs"], 0, "{r}");
    assert_eq!(
        r["packs_repacked"], 0,
        "nothing is dead, nothing to rewrite: {r}"
    );
    env.ok(&["verify"]);
    // Now one tiny blob dies next to a live one: its pack is rewritten, and still verifies.
    fs::write(src.join("hostname2"), "2\n").unwrap();
    env.getimage(&src, "g", &[]);
    env.ok(&["rmimage", "g"]);
    env.getimage(&src, "h", &[]);
    env.ok(&["gc"]);
    env.ok(&["verify"]);
    let co = env.path("co");
    env.ok(&["checkout", "h", co.to_str().unwrap()]);
    assert_eq!(fs::read(co.join("hostname2")).unwrap(), b"2\n");
    assert_eq!(fs::read(co.join("a")).unwrap(), b"a\n");
}

/// A capture that records its revision but dies before writing `refs/` (killed, or here
/// failing to write them) leaves a marker in `tmp/`; the next command to open the repository
/// publishes the revision, so nodes reading refs over HTTP are not left one revision behind
/// and `verify` has nothing to object to. CI once caught a kill in exactly that window.
#[test]
fn a_revision_recorded_but_not_published_is_published_by_the_next_command() {
    let env = Env::new();
    let src = env.path("g");
    write_random(&src.join("a.bin"), 1, 50_000);
    env.getimage(&src, "g", &[]);
    write_random(&src.join("b.bin"), 2, 50_000);
    // refs/g as a file: the commit lands in the catalog, writing refs/g/head fails.
    let refs = env.public().join("refs/g");
    let head_before = fs::read(refs.join("head")).unwrap();
    fs::remove_dir_all(&refs).unwrap();
    fs::write(&refs, "in the way\n").unwrap();
    let out = env.run(&[
        "getimage",
        "--golden-client",
        src.to_str().unwrap(),
        "--image",
        "g",
    ]);
    assert!(
        !out.status.success(),
        "the capture could not publish its refs, yet succeeded"
    );
    assert_eq!(revisions_of(&env, "g"), 2);
    let markers = || -> Vec<String> {
        fs::read_dir(env.repo().join("tmp"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("publishing-"))
            .collect()
    };
    assert_eq!(
        markers().len(),
        1,
        "no marker left for the unfinished publish"
    );
    // While public/ stays broken, commands warn, go on, and verify names the stale refs.
    let out = env.run(&["verify"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "verify accepted refs that lag the catalog"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("verify --repair"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Once it can, the next command (any) finishes the publish.
    fs::remove_file(&refs).unwrap();
    env.ok(&["log", "g"]);
    let rev2 = json(&env.ok(&["show", "g@2", "--json"]));
    let head = fs::read_to_string(refs.join("head")).unwrap();
    assert_eq!(
        head.trim(),
        rev2["id"].as_str().unwrap(),
        "refs/g/head is not revision 2"
    );
    assert_ne!(head.as_bytes(), &head_before[..]);
    assert!(
        markers().is_empty(),
        "the marker outlived the publish: {:?}",
        markers()
    );
    env.ok(&["verify"]);
}

/// A pack index (what HTTP clients read to find blobs) with a flipped byte is reported by
/// verify, and verify --repair writes it again.
#[test]
fn verify_finds_and_repairs_a_damaged_index() {
    let env = Env::new();
    let src = env.path("g");
    write_random(&src.join("lib.bin"), 9, 300_000);
    env.getimage(&src, "g", &[]);
    let idx = files_with_ext(&env.public().join("packs"), "idx");
    assert_eq!(idx.len(), 1);
    let mut bytes = fs::read(&idx[0]).unwrap();
    bytes[20] ^= 1;
    fs::write(&idx[0], &bytes).unwrap();
    let out = env.run(&["verify"]);
    assert_eq!(out.status.code(), Some(3));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("index"),
        "verify does not name the index: {text}"
    );
    env.ok(&["verify", "--repair"]);
    env.ok(&["verify"]);
    let co = env.path("co");
    env.ok(&["checkout", "g", co.to_str().unwrap()]);
    assert_eq!(
        fs::read(co.join("lib.bin")).unwrap(),
        fs::read(src.join("lib.bin")).unwrap()
    );
}

#[test]
fn verify_repair_lets_a_new_capture_mend_a_damaged_revision() {
    require_rsync();
    let env = Env::new();
    let src = env.path("golden");
    write_random(&src.join("usr/lib/big.bin"), 21, 3 << 20);
    sh(&format!(
        "cd '{}' && mkdir -p etc && printf 'hello\\n' > etc/motd",
        src.display()
    ));
    assert_eq!(rev_of(&env.getimage(&src, "img", &[])), "img@1");
    let packs = files_with_ext(&env.public().join("packs"), "pack");
    let biggest = packs
        .iter()
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    damage_pack(biggest);

    // Without --repair, a new capture trusts the damaged copy and mends nothing.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    env.getimage(&src, "img", &[]);
    env.fails(&["verify"], 3);

    let r = env.run(&["verify", "--repair"]);
    assert_eq!(r.status.code(), Some(3));
    let repaired = String::from_utf8_lossy(&r.stdout);
    let forgot: usize = repaired
        .lines()
        .find_map(|l| l.strip_prefix("forgot "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no `forgot N` line:\n{repaired}"));
    let damaged = repaired.matches("DAMAGED blob").count();
    assert_eq!(
        forgot, damaged,
        "each damaged blob is forgotten once:\n{repaired}"
    );
    let out = String::from_utf8_lossy(&r.stderr).into_owned();
    assert!(
        out.contains("verify --repair") || out.contains("damaged"),
        "{out}"
    );
    let v = env.run(&["verify"]);
    let stdout = String::from_utf8_lossy(&v.stdout);
    assert!(
        stdout.contains("missing"),
        "forgotten blobs show as missing:\n{stdout}"
    );
    assert!(!biggest.exists(), "the damaged pack was moved aside");
    assert_eq!(
        files_with_ext(&env.repo().join("damaged"), "pack").len(),
        1,
        "the damaged pack is kept in damaged/ for a look"
    );

    // Capturing the same tree stores the content again, and the old revision is whole.
    let again = env.getimage(&src, "img", &[]);
    assert!(again.contains("(unchanged)"), "{again}");
    env.ok(&["verify"]);
    let co = env.path("checkout");
    env.ok(&["checkout", "img@1", co.to_str().unwrap()]);
    let d = rsync_diff(&src, &co);
    assert!(d.trim().is_empty(), "{d}");
}

/// Tree files of `node` sharing an inode with a file of its private state directory.
fn shared_with_state(node: &Path) -> Vec<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    fn walk(dir: &Path, skip: &Path, out: &mut Vec<(PathBuf, (u64, u64))>) {
        for e in fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            let m = fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                if p != skip {
                    walk(&p, skip, out);
                }
            } else {
                out.push((p, (m.dev(), m.ino())));
            }
        }
    }
    let state = node.join("var/lib/aurum-node");
    let (mut private, mut tree) = (Vec::new(), Vec::new());
    walk(&state, Path::new(""), &mut private);
    walk(node, &state, &mut tree);
    let private: std::collections::HashSet<_> = private.into_iter().map(|(_, i)| i).collect();
    tree.into_iter()
        .filter(|(_, i)| private.contains(i))
        .map(|(p, _)| p)
        .collect()
}

/// Issue #12, item 4: kill -9 during updateclient or rollback, then the same command again.
#[test]
fn killed_updates_and_rollbacks_leave_no_temporary_name_and_no_shared_inode() {
    require_rsync();
    let env = Env::new();
    let (a, b) = (env.path("rev1"), env.path("rev2"));
    for d in 0..8 {
        for f in 0..100u64 {
            let seed = d * 1000 + f;
            write_random(&a.join(format!("usr/d{d}/f{f:03}")), seed, 1500);
            let changed = if f % 2 == 0 { seed + 500_000 } else { seed };
            write_random(&b.join(format!("usr/d{d}/f{f:03}")), changed, 1500);
        }
    }
    sh(&format!(
        "mkdir -p {a}/var/lib {b}/var/lib && for d in {a}/usr/* {b}/usr/*; do \
         ln $d/f001 $d/hard && ln -s f002 $d/link; done && rm {b}/usr/d3/f007 && printf new > {b}/usr/d3/new",
        a = a.display(),
        b = b.display()
    ));
    env.getimage(&a, "k", &[]);
    env.getimage(&b, "k", &[]);
    let node = crate::update::node_at(&env, "node", "k@1");
    let (repo, n) = (env.repo(), node.to_str().unwrap().to_string());
    let up = [
        "--no-progress",
        "--repo",
        repo.to_str().unwrap(),
        "updateclient",
        "--image",
        "k@2",
        "--root",
        &n,
        "--no-default-excludes",
    ];
    let back = ["--no-progress", "rollback", "--root", &n];
    let timed = |args: &[&str]| {
        let t = Instant::now();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_aurum"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "aurum {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        t.elapsed()
    };
    let (t_up, t_back) = (timed(&up), timed(&back));
    // Whether the child died of our SIGKILL (it may have finished first on a fast machine).
    let killed = |args: &[&str], after: Duration| -> bool {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_aurum"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(after);
        let _ = child.kill();
        let status = child.wait().expect("wait for aurum");
        assert!(
            status.success() || status.signal() == Some(9),
            "aurum {args:?} failed by itself ({status}), not by our SIGKILL"
        );
        status.signal() == Some(9)
    };
    let (mut updates_killed, mut rollbacks_killed) = (0, 0);
    for f in [0.02, 0.1, 0.25, 0.4, 0.55, 0.7, 0.85, 0.95] {
        updates_killed += u32::from(killed(&up, t_up.mul_f64(f)));
        timed(&up);
        assert_eq!(
            crate::update::node_diff(&b, &node),
            "",
            "update killed at {f}, rerun"
        );
        assert_eq!(
            shared_with_state(&node),
            Vec::<PathBuf>::new(),
            "update killed at {f}"
        );
        rollbacks_killed += u32::from(killed(&back, t_back.mul_f64(f)));
        let status = json(&crate::update::ok(&["node-status", "--root", &n, "--json"]));
        if !status["interrupted"].is_null() || status["state"]["current"]["number"] != 1 {
            timed(&back);
        }
        assert_eq!(
            crate::update::node_diff(&a, &node),
            "",
            "rollback killed at {f}, rerun"
        );
        assert_eq!(
            shared_with_state(&node),
            Vec::<PathBuf>::new(),
            "rollback killed at {f}"
        );
    }
    // A kill at 2 % of the run's time lands mid-run whatever the machine's speed or load.
    assert!(
        updates_killed >= 1 && rollbacks_killed >= 1,
        "no kill landed mid-run ({updates_killed} updates, {rollbacks_killed} rollbacks): the test proved nothing"
    );
}

/// Issue #12, item 8: a checkout that stops on a damaged blob leaves nothing that looks
/// complete but is not (today's 0-byte or half-written files): it takes back what it wrote,
/// and says which file's content failed.
#[test]
fn a_failed_checkout_leaves_no_half_written_files() {
    let env = Env::new();
    let src = env.path("golden");
    write_random(&src.join("usr/lib/big.bin"), 21, 3 << 20);
    for i in 0..40 {
        write_random(&src.join(format!("etc/small{i}")), 100 + i, 2000);
    }
    env.getimage(&src, "img", &[]);
    let packs = files_with_ext(&env.public().join("packs"), "pack");
    damage_pack(
        packs
            .iter()
            .max_by_key(|p| fs::metadata(p).unwrap().len())
            .unwrap(),
    );

    // Into a new directory: it is removed again. Into an empty one: it is emptied again.
    let new = env.path("new");
    let empty = env.path("empty");
    fs::create_dir(&empty).unwrap();
    for target in [&new, &empty] {
        let err = env.fails(&["checkout", "img@1", target.to_str().unwrap()], 3);
        assert!(err.contains("usr/lib/big.bin"), "names the file:\n{err}");
        assert!(err.contains("checkout was stopped"), "{err}");
        if target == &new {
            assert!(!new.exists(), "{err}");
        } else {
            let left: Vec<_> = fs::read_dir(&empty).unwrap().collect();
            assert!(left.is_empty(), "left behind: {left:?}\n{err}");
        }
    }
}

/// Issue #23, item 5: the first updateclient into an empty root is written as checkout writes
/// (under final names, no undo area), so a kill -9 mid-way leaves half-written files under
/// their real names. The node must not claim the revision until a rerun has made it exact.
#[test]
fn a_killed_first_update_into_an_empty_root_is_redone_never_taken_for_complete() {
    require_rsync();
    let env = Env::new();
    let src = env.path("golden");
    for d in 0..12 {
        for f in 0..150u64 {
            write_random(
                &src.join(format!("usr/d{d}/f{f:03}")),
                d * 1000 + f,
                if f == 0 { 600_000 } else { 3000 },
            );
        }
    }
    sh(&format!(
        "cd {} && mkdir -p var/lib etc && for d in usr/*; do ln $d/f001 $d/hard && ln -s f002 $d/link; \
         done && mkfifo etc/fifo && chmod 640 usr/d1/f003",
        src.display()
    ));
    env.getimage(&src, "k", &[]);
    let repo = env.repo();
    let update = |root: &Path| -> std::process::Command {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_aurum"));
        c.args([
            "--no-progress",
            "--repo",
            repo.to_str().unwrap(),
            "updateclient",
        ])
        .args(["--image", "k@1", "--no-default-excludes", "--root"])
        .arg(root);
        c
    };
    let status = |root: &Path| {
        json(&crate::update::ok(&[
            "node-status",
            "--root",
            root.to_str().unwrap(),
            "--json",
        ]))
    };
    // How long a whole first update takes here, to kill the others at fractions of it.
    let probe = env.path("probe");
    fs::create_dir(&probe).unwrap();
    let t = Instant::now();
    assert!(update(&probe).status().unwrap().success());
    let whole = t.elapsed();
    assert_eq!(crate::update::node_diff(&src, &probe), "");

    let mut caught_writing = 0;
    // Six kills spread over the run, and more in between while none has landed in the writing
    // (a loaded machine makes the probe's time a poor guide).
    let fractions = [
        0.2, 0.35, 0.5, 0.65, 0.8, 0.9, 0.3, 0.45, 0.6, 0.75, 0.25, 0.55, 0.4, 0.7,
    ];
    for (k, f) in fractions.into_iter().enumerate() {
        if k >= 6 && caught_writing > 0 {
            break;
        }
        let root = env.path(&format!("node{k}"));
        fs::create_dir(&root).unwrap();
        let mut child = update(&root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(whole.mul_f64(f));
        let _ = child.kill();
        let finished = child.wait().unwrap().success();
        if !finished && root.join("var/lib/aurum-node").is_dir() {
            // The node names the revision only once it holds all of it (the kill may come
            // after the commit, while the run tidies up).
            let s = status(&root);
            if !s["state"]["current"].is_null() {
                assert_eq!(
                    crate::update::node_diff(&src, &root),
                    "",
                    "killed at {f}, the node claims a revision it does not hold: {s}"
                );
            }
            // The journal goes only after state.json names the revision, so a kill between
            // the two leaves both (the tree whole, checked above); the next run tidies up.
            if s["interrupted"]["fresh"] == true && s["state"]["current"].is_null() {
                caught_writing += 1;
            }
        }
        assert!(update(&root).status().unwrap().success(), "rerun after {f}");
        assert_eq!(
            crate::update::node_diff(&src, &root),
            "",
            "killed at {f}, rerun"
        );
        let s = status(&root);
        assert!(
            s["interrupted"].is_null() && s["state"]["current"]["number"] == 1,
            "{s}"
        );
    }
    assert!(
        caught_writing > 0,
        "no kill landed while the fresh root was being written (journal marked fresh)"
    );
}

/// A command that finds an orphan publishing marker while another command holds the
/// repository never works without the lock (Linux drops a shared flock before trying to make
/// it exclusive, so a failed upgrade would leave it unlocked), and a name command that fails
/// leaves no marker behind.
#[test]
fn recovering_a_publish_never_leaves_a_command_without_the_lock() {
    use std::os::unix::fs::OpenOptionsExt;
    let env = Env::new();
    let src = env.path("g");
    write_random(&src.join("a.bin"), 3, 10_000);
    env.getimage(&src, "g", &[]);
    // A failed name command: no marker left.
    env.fails(&["tag", "--delete", "g:nosuch"], 2);
    let markers = || -> usize {
        fs::read_dir(env.repo().join("tmp"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("publishing-"))
            .count()
    };
    assert_eq!(
        markers(),
        0,
        "a failed tag --delete left a publishing marker"
    );
    // An orphan marker, and another holder of the shared lock.
    fs::write(env.repo().join("tmp/publishing-orphan"), "").unwrap();
    let lock_path = env.repo().join("lock");
    let other = fs::OpenOptions::new()
        .read(true)
        .append(true)
        .mode(0o600)
        .open(&lock_path)
        .unwrap();
    other.lock_shared().unwrap();
    // A command that holds the repository a while: a remote capture whose "ssh" sleeps
    // before failing (the repository is opened before the golden client is reached).
    let mut child = env
        .cmd(&[
            "getimage",
            "--golden-client",
            "ssh://node1/",
            "--image",
            "h",
            "--ssh",
            "sh -c 'sleep 4; exit 1'",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    drop(other);
    // Now only getimage may hold the lock: an exclusive lock (what gc takes) must not be had.
    let probe = fs::File::open(&lock_path).unwrap();
    let got = probe.try_lock().is_ok();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        !got,
        "a command that met an orphan marker while another held the repository lost its lock"
    );
    drop(probe);
    // With the lock free, the next command recovers: the marker is gone.
    env.ok(&["lsimage"]);
    assert_eq!(markers(), 0, "the orphan marker was not recovered");
}

/// Issue #14, item 4: a rollback right after an update renames each entry back from the undo
/// area, one rename per file. Killed at any point, every file is its old or its new version
/// (never missing, never half written), and rerunning `aurum rollback` finishes it exactly,
/// leaving no inode shared with the state directory. At least one kill must land between two
/// renames (some files back, some not), or the test proved nothing.
#[test]
fn a_killed_rollback_by_rename_leaves_every_file_old_or_new_and_finishes_when_rerun() {
    require_rsync();
    let env = Env::new();
    let (a, b) = (env.path("rev1"), env.path("rev2"));
    let files: Vec<String> = (0..12)
        .flat_map(|d| (0..400).map(move |f| format!("usr/d{d:02}/f{f:03}")))
        .collect();
    for (i, rel) in files.iter().enumerate() {
        let seed = i as u64;
        write_random(&a.join(rel), seed, 700);
        let changed = if i % 2 == 0 { seed + 1_000_000 } else { seed };
        write_random(&b.join(rel), changed, 700);
    }
    sh(&format!(
        "mkdir -p {a}/var/lib {b}/var/lib && printf gone > {a}/usr/only-in-1 && printf new > {b}/usr/only-in-2",
        a = a.display(),
        b = b.display()
    ));
    env.getimage(&a, "r", &[]);
    env.getimage(&b, "r", &[]);
    let node = crate::update::node_at(&env, "node", "r@1");
    let (repo, n) = (env.repo(), node.to_str().unwrap().to_string());
    crate::update::ok(&[
        "--repo",
        repo.to_str().unwrap(),
        "updateclient",
        "--image",
        "r@2",
        "--root",
        &n,
        "--no-default-excludes",
    ]);
    let back = ["rollback", "--root", &n, "--no-default-excludes"];
    let current = || {
        let status = json(&crate::update::ok(&["node-status", "--root", &n, "--json"]));
        (
            status["state"]["current"]["number"].as_u64().unwrap_or(0),
            !status["interrupted"].is_null(),
        )
    };
    // Each rollback goes the other way (r@2 -> r@1 -> r@2 ...), from the area the one before
    // left; timed once whole to place the kills.
    let t = Instant::now();
    crate::update::ok(&back);
    let whole = t.elapsed();
    assert_eq!(crate::update::node_diff(&a, &node), "", "rollback to r@1");
    let (mut mixed, mut killed) = (0, 0);
    for f in [0.3, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95, 0.5, 0.6, 0.7] {
        let (before, _) = current();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_aurum"))
            .arg("--no-progress")
            .args(back)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(whole.mul_f64(f));
        let _ = child.kill();
        let status = child.wait().expect("wait for aurum");
        assert!(
            status.success() || status.signal() == Some(9),
            "aurum rollback failed by itself ({status}), not by our SIGKILL"
        );
        killed += u32::from(status.signal() == Some(9));
        // Every file is whole: its r@1 or its r@2 version.
        let (mut old, mut new) = (0, 0);
        for rel in &files {
            let have =
                fs::read(node.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e} (killed at {f})"));
            let (one, two) = (
                fs::read(a.join(rel)).unwrap(),
                fs::read(b.join(rel)).unwrap(),
            );
            if one == two {
                assert_eq!(have, one, "{rel}, killed at {f}");
            } else if have == one {
                old += 1;
            } else {
                assert_eq!(have, two, "{rel} is neither version, killed at {f}");
                new += 1;
            }
        }
        mixed += u32::from(old > 0 && new > 0);
        let (now, interrupted) = current();
        if interrupted {
            crate::update::ok(&back);
        }
        let (after, interrupted) = current();
        assert!(!interrupted, "the rerun finished it (killed at {f})");
        assert!(
            !interrupted && (after != before || !status.success() || now != before),
            "a finished rollback changes the revision (killed at {f})"
        );
        let want = if after == 1 { &a } else { &b };
        assert_eq!(
            crate::update::node_diff(want, &node),
            "",
            "killed at {f}, rerun"
        );
        assert_eq!(
            shared_with_state(&node),
            Vec::<PathBuf>::new(),
            "killed at {f}"
        );
    }
    assert!(
        killed >= 1 && mixed >= 1,
        "no kill landed between two renames ({killed} killed, {mixed} mixed): the test proved nothing"
    );
}
