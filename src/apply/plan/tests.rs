//! The planner on in-memory trees: no filesystem, no root.
//!
//! Each test builds a target manifest and a disk ([`MemoryView`]) and checks the plan. Entries
//! get one uid, gid and mtime unless a test says otherwise, so that a disk entry built from a
//! manifest entry ([`on_disk`]) matches it exactly.

use super::*;
use crate::apply::disk::memory::{MemoryView, Node};
use crate::progress::Quiet;

const MTIME: i64 = 1_700_000_000;

fn chunk(n: u8, len: u32) -> Chunk {
    Chunk {
        id: Id([n; 32]),
        len,
    }
}

fn entry(path: &str, kind: Kind, mode: u32) -> Entry {
    Entry {
        path: path.as_bytes().to_vec(),
        kind,
        mode,
        uid: 0,
        gid: 0,
        mtime: MTIME,
        mtime_nsec: 0,
        xattrs: Vec::new(),
    }
}

fn dir(path: &str) -> Entry {
    entry(path, Kind::Dir, 0o755)
}

fn file(path: &str, chunks: &[Chunk]) -> Entry {
    let size = chunks.iter().map(|c| u64::from(c.len)).sum();
    let kind = Kind::File {
        size,
        chunks: chunks.to_vec(),
        extents: None,
    };
    entry(path, kind, 0o644)
}

fn symlink(path: &str, target: &str) -> Entry {
    let kind = Kind::Symlink {
        target: target.as_bytes().to_vec(),
    };
    entry(path, kind, 0o777)
}

fn hardlink(path: &str, target: &str) -> Entry {
    let kind = Kind::Hardlink {
        target: target.as_bytes().to_vec(),
    };
    entry(path, kind, 0o644)
}

/// A manifest of `entries` and the root, sorted as manifests are.
fn manifest(mut entries: Vec<Entry>) -> Manifest {
    entries.push(dir(""));
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    Manifest { entries }
}

/// The disk entry that matches `e` exactly, with inode number `ino`.
fn on_disk(e: &Entry, ino: u64) -> Node {
    let (format, size, link, chunks) = match &e.kind {
        Kind::Dir => (libc::S_IFDIR, 0, None, None),
        Kind::File { size, chunks, .. } => (libc::S_IFREG, *size, None, Some(chunks.clone())),
        Kind::Symlink { target } => (
            libc::S_IFLNK,
            target.len() as u64,
            Some(target.clone()),
            None,
        ),
        k => panic!("no disk entry for {}", k.name()),
    };
    Node {
        stat: Stat {
            mode: format | e.mode,
            uid: e.uid,
            gid: e.gid,
            size,
            blocks: size.div_ceil(512),
            mtime: e.mtime,
            mtime_nsec: e.mtime_nsec,
            nlink: 1,
            dev: 1,
            ino,
            rdev: 0,
        },
        xattrs: e.xattrs.clone(),
        link,
        chunks,
    }
}

/// A disk holding exactly `m` (hardlinks aside).
fn disk_of(m: &Manifest) -> MemoryView {
    let mut view = MemoryView::new();
    for (i, e) in m.entries.iter().enumerate().skip(1) {
        view.insert(
            std::str::from_utf8(&e.path).unwrap(),
            on_disk(e, i as u64 + 2),
        );
    }
    view
}

fn excludes(patterns: &[&str]) -> Excludes {
    Excludes::new(&patterns.iter().map(|p| p.to_string()).collect::<Vec<_>>()).unwrap()
}

fn options(excludes: &Excludes) -> PlanOptions<'_> {
    PlanOptions {
        excludes,
        no_delete: false,
        verify_local: false,
        current: None,
        resuming: false,
        failed: None,
        embedded: &[],
    }
}

fn run(view: &MemoryView, m: &Manifest, opts: &PlanOptions) -> UpdatePlan {
    plan(view, m, opts, &Quiet).unwrap()
}

/// The steps as (path, act, what), for comparisons.
fn steps<'m>(p: &UpdatePlan, m: &'m Manifest) -> Vec<(&'m str, Act, Vec<&'static str>)> {
    p.steps
        .iter()
        .map(|s| {
            let path = std::str::from_utf8(&m.entries[s.entry].path).unwrap();
            (path, s.act, s.what.clone())
        })
        .collect()
}

fn removals(p: &UpdatePlan) -> Vec<&str> {
    p.removals
        .iter()
        .map(|r| std::str::from_utf8(r).unwrap())
        .collect()
}

fn sample() -> Manifest {
    manifest(vec![
        dir("etc"),
        file("etc/motd", &[chunk(1, 100)]),
        file("etc/big", &[chunk(2, 4096), chunk(3, 10)]),
        symlink("etc/localtime", "/usr/share/zoneinfo/UTC"),
        dir("usr"),
    ])
}

#[test]
fn a_node_already_at_the_target_plans_nothing_and_hashes_nothing_it_knows() {
    let m = sample();
    let view = disk_of(&m);
    let ex = excludes(&[]);
    // The node runs this very revision: size and mtime stand in for the content.
    let opts = PlanOptions {
        current: Some(&m),
        ..options(&ex)
    };
    let p = run(&view, &m, &opts);
    assert!(p.is_noop(), "{:?}", p.steps);
    assert!(p.needed_blobs(&m).is_empty());
    assert!(p.local_changes.is_empty());
    assert_eq!(view.hashed.get(), 0);
    assert_eq!(p.counts(), (0, 0, 0));
    // Without a revision to trust, the same disk is read, and still found right.
    let p = run(&view, &m, &options(&ex));
    assert!(p.is_noop());
    assert_eq!(view.hashed.get(), 2);
}

#[test]
fn an_empty_root_is_all_creates_with_each_blob_once() {
    let mut m = sample();
    m.entries.push(file("usr/copy", &[chunk(1, 100)]));
    let view = MemoryView::new();
    let ex = excludes(&[]);
    let p = run(&view, &m, &options(&ex));
    let acts: Vec<_> = steps(&p, &m).into_iter().map(|(p, a, _)| (p, a)).collect();
    let want: Vec<_> = m.entries[1..]
        .iter()
        .map(|e| (std::str::from_utf8(&e.path).unwrap(), Act::Create))
        .collect();
    assert_eq!(acts, want);
    assert!(p.only_creates(&m));
    assert!(p.removals.is_empty());
    // usr/copy is made of the blob of etc/motd: asked for once.
    let ids: Vec<_> = p.needed_blobs(&m).iter().map(|id| id.0[0]).collect();
    assert_eq!(ids, vec![2, 3, 1]);
    assert_eq!(p.counts(), (m.entries.len() as u64 - 1, 0, 0));
}

#[test]
fn a_file_that_becomes_a_directory_is_replaced_and_its_new_contents_created() {
    let m = manifest(vec![dir("opt"), file("opt/tool", &[chunk(7, 5)])]);
    let mut view = MemoryView::new();
    view.insert("opt", on_disk(&file("opt", &[chunk(9, 3)]), 2));
    let ex = excludes(&[]);
    let p = run(&view, &m, &options(&ex));
    assert_eq!(
        steps(&p, &m),
        vec![
            ("opt", Act::Replace, vec!["type"]),
            ("opt/tool", Act::Create, vec![])
        ]
    );
    assert!(p.removals.is_empty());
    assert!(!p.only_creates(&m));
}

#[test]
fn a_directory_that_becomes_a_symlink_is_replaced_whole() {
    let m = manifest(vec![symlink("data", "/srv/data")]);
    let mut view = MemoryView::new();
    view.insert("data", on_disk(&dir("data"), 2));
    view.insert("data/a", on_disk(&file("data/a", &[chunk(1, 1)]), 3));
    let ex = excludes(&[]);
    let p = run(&view, &m, &options(&ex));
    assert_eq!(steps(&p, &m), vec![("data", Act::Replace, vec!["type"])]);
    // What the directory held goes with it into the undo area, not one by one.
    assert!(p.removals.is_empty());
}

#[test]
fn a_symlink_with_another_target_is_replaced_and_a_new_mode_is_metadata_only() {
    let m = manifest(vec![
        symlink("lib", "usr/lib"),
        file("run.sh", &[chunk(1, 10)]),
        dir("srv"),
    ]);
    let mut view = disk_of(&m);
    view.entries.get_mut(&b"lib"[..]).unwrap().link = Some(b"usr/lib64".to_vec());
    let sh = view.entries.get_mut(&b"run.sh"[..]).unwrap();
    sh.stat.mode = libc::S_IFREG | 0o755;
    sh.stat.uid = 1000;
    view.entries.get_mut(&b"srv"[..]).unwrap().stat.mode = libc::S_IFDIR | 0o700;
    let ex = excludes(&[]);
    let p = run(&view, &m, &options(&ex));
    assert_eq!(
        steps(&p, &m),
        vec![
            ("lib", Act::Replace, vec!["target"]),
            ("run.sh", Act::Meta, vec!["mode", "owner"]),
            ("srv", Act::Meta, vec!["mode"]),
        ]
    );
    assert_eq!(p.counts(), (0, 1, 2));
    // A metadata change needs no blob.
    assert!(p.needed_blobs(&m).is_empty());
    let lines = p.itemised(&m);
    assert_eq!(lines[0], "> symlink  /lib  (target)");
    assert_eq!(lines[1], ". metadata /run.sh  (mode, owner)");
}

#[test]
fn hardlinks_on_one_inode_are_kept_and_those_on_two_are_replaced() {
    let m = manifest(vec![
        file("a", &[chunk(1, 10)]),
        hardlink("b", "a"),
        hardlink("c", "a"),
    ]);
    let a = m.get(b"a").unwrap();
    let mut view = MemoryView::new();
    let mut shared = on_disk(a, 2);
    shared.stat.nlink = 2;
    view.insert("a", shared.clone()).insert("b", shared);
    // c has a's content but an inode of its own.
    view.insert("c", on_disk(a, 3));
    let ex = excludes(&[]);
    let p = run(&view, &m, &options(&ex));
    assert_eq!(steps(&p, &m), vec![("c", Act::Replace, vec!["hardlink"])]);
    assert!(p.relink.is_empty());
}

#[test]
fn a_hardlink_the_image_broke_gets_an_inode_of_its_own() {
    let m = manifest(vec![
        file("bin/x", &[chunk(1, 10)]),
        file("bin/y", &[chunk(1, 10)]),
        dir("bin"),
    ]);
    let mut view = disk_of(&m);
    let mut shared = on_disk(m.get(b"bin/x").unwrap(), 40);
    shared.stat.nlink = 2;
    view.insert("bin/x", shared.clone()).insert("bin/y", shared);
    let ex = excludes(&[]);
    let p = run(&view, &m, &options(&ex));
    let content: Vec<_> = steps(&p, &m).into_iter().map(|(p, a, _)| (p, a)).collect();
    assert_eq!(
        content,
        vec![("bin/x", Act::Content), ("bin/y", Act::Content)]
    );
    // Each may be its own blob source: the content wanted is the content there.
    assert_eq!(p.relink.len(), 2);
    assert_eq!(view.hashed.get(), 0);
}

#[test]
fn excluded_paths_are_neither_changed_created_nor_deleted() {
    let m = manifest(vec![
        dir("etc"),
        file("etc/hostname", &[chunk(1, 6)]),
        dir("scratch"),
        dir("cache"),
        file("cache/index", &[chunk(2, 6)]),
    ]);
    let mut view = disk_of(&m);
    view.entries.remove(&b"cache/index"[..]);
    let host = view.entries.get_mut(&b"etc/hostname"[..]).unwrap();
    host.chunks = Some(vec![chunk(9, 6)]);
    host.stat.mtime += 1;
    view.insert("scratch/run1", on_disk(&file("x", &[chunk(3, 1)]), 90));
    view.insert("junk", on_disk(&file("x", &[chunk(4, 1)]), 91));
    let ex = excludes(&["/etc/hostname", "/scratch/*", "/cache/"]);
    let p = run(&view, &m, &options(&ex));
    assert!(p.steps.is_empty(), "{:?}", steps(&p, &m));
    assert_eq!(removals(&p), vec!["junk"]);
    // The excluded directory's metadata is not the update's either.
    let dirs: Vec<_> = p.dirs.iter().map(|&i| m.entries[i].display()).collect();
    assert_eq!(dirs, vec!["/", "/etc", "/scratch"]);
}

/// What lies below an excluded directory is not even looked at (it may be a mount: `/home/*`
/// matches `home/alice`, not what is in it), though the disk is read a batch ahead.
#[test]
fn nothing_below_an_excluded_directory_is_looked_at() {
    let m = manifest(vec![
        dir("etc"),
        file("etc/hostname", &[chunk(1, 6)]),
        dir("home"),
        dir("home/alice"),
        file("home/alice/.bashrc", &[chunk(2, 6)]),
        dir("home/alice/src"),
        file("home/alice/src/a.c", &[chunk(3, 6)]),
    ]);
    let view = disk_of(&m);
    let ex = excludes(&["/home/*"]);
    let p = run(&view, &m, &options(&ex));
    assert!(p.steps.is_empty(), "{:?}", steps(&p, &m));
    let looked = view.looked.borrow();
    let below: Vec<_> = looked
        .iter()
        .filter(|p| p.starts_with(b"home/alice"))
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    assert!(below.is_empty(), "looked at {below:?}");
    assert!(looked.iter().any(|p| p == b"etc/hostname"), "{looked:?}");
}

#[test]
fn a_directory_the_image_lacks_stays_when_it_holds_something_excluded() {
    let m = manifest(vec![dir("etc")]);
    let mut view = disk_of(&m);
    view.insert("etc/site", on_disk(&dir("x"), 10));
    view.insert(
        "etc/site/keep.conf",
        on_disk(&file("x", &[chunk(1, 1)]), 11),
    );
    view.insert("etc/site/old.conf", on_disk(&file("x", &[chunk(2, 1)]), 12));
    view.insert("etc/stale", on_disk(&dir("x"), 13));
    view.insert("etc/stale/f", on_disk(&file("x", &[chunk(3, 1)]), 14));
    let ex = excludes(&["/etc/site/keep.conf"]);
    let p = run(&view, &m, &options(&ex));
    assert_eq!(removals(&p), vec!["etc/site/old.conf", "etc/stale"]);
}

#[test]
fn the_node_state_directory_is_never_touched() {
    let m = manifest(vec![dir("var"), dir("var/lib")]);
    let mut view = disk_of(&m);
    view.insert("var/lib/aurum-node", on_disk(&dir("x"), 10));
    view.insert(
        "var/lib/aurum-node/state",
        on_disk(&file("x", &[chunk(1, 1)]), 11),
    );
    let ex = excludes(&[]);
    let p = run(&view, &m, &options(&ex));
    assert!(p.is_noop(), "{:?}", p.removals);
    // Nor when the image has no /var at all: its ancestors stay too.
    let bare = manifest(vec![]);
    let p = run(&view, &bare, &options(&ex));
    assert!(p.is_noop(), "{:?}", p.removals);
}

#[test]
fn no_delete_keeps_what_the_node_had_but_not_what_a_failed_update_left() {
    let m = manifest(vec![]);
    let failed = manifest(vec![file("new", &[chunk(1, 1)])]);
    let mut view = disk_of(&m);
    view.insert("mine", on_disk(&file("mine", &[chunk(2, 1)]), 10));
    view.insert("new", on_disk(&file("new", &[chunk(1, 1)]), 11));
    let ex = excludes(&[]);
    let opts = PlanOptions {
        no_delete: true,
        ..options(&ex)
    };
    assert!(run(&view, &m, &opts).is_noop());
    let undoing = PlanOptions {
        failed: Some(&failed),
        ..opts
    };
    assert_eq!(removals(&run(&view, &m, &undoing)), vec!["new"]);
}

#[test]
fn a_stat_is_trusted_only_for_the_revision_the_node_runs_and_not_after_a_crash() {
    let old = manifest(vec![file("f", &[chunk(1, 10)])]);
    let new = manifest(vec![file("f", &[chunk(2, 10)])]);
    let view = disk_of(&old);
    let ex = excludes(&[]);
    let trusting = PlanOptions {
        current: Some(&old),
        ..options(&ex)
    };
    let p = run(&view, &new, &trusting);
    assert_eq!(steps(&p, &new), vec![("f", Act::Content, vec!["content"])]);
    assert_eq!(view.hashed.get(), 0);
    // Finishing an interrupted update, or with --verify-local, the file is read.
    for opts in [
        PlanOptions {
            resuming: true,
            ..trusting
        },
        PlanOptions {
            verify_local: true,
            ..trusting
        },
    ] {
        let before = view.hashed.get();
        let p = run(&view, &new, &opts);
        assert_eq!(p.steps.len(), 1);
        assert_eq!(view.hashed.get(), before + 1);
    }
    // The interrupted run had put the new version in place: nothing left to do.
    let done = disk_of(&new);
    let resuming = PlanOptions {
        resuming: true,
        ..trusting
    };
    assert!(run(&done, &new, &resuming).is_noop());
    // Trusting the stat there would have taken it for the old version and rewritten it.
    assert_eq!(run(&done, &new, &trusting).steps.len(), 1);
}

#[test]
fn dropping_an_override_reverts_its_files_and_is_no_hand_change() {
    // The node runs the image with an override composed over it (its motd); the target is
    // the image alone.
    let image = manifest(vec![dir("etc"), file("etc/motd", &[chunk(1, 10)])]);
    let mut composed = image.clone();
    composed.entries[2] = file("etc/motd", &[chunk(5, 20)]);
    composed.entries.push(file("etc/site.conf", &[chunk(6, 3)]));
    let view = disk_of(&composed);
    let ex = excludes(&[]);
    let opts = PlanOptions {
        current: Some(&composed),
        ..options(&ex)
    };
    let p = run(&view, &image, &opts);
    assert_eq!(
        steps(&p, &image),
        vec![("etc/motd", Act::Content, vec!["content"])]
    );
    assert_eq!(removals(&p), vec!["etc/site.conf"]);
    assert!(p.local_changes.is_empty(), "{:?}", p.local_changes);
    assert_eq!(p.needed_blobs(&image), vec![Id([1; 32])]);
}

#[test]
fn hand_changes_overwritten_or_deleted_are_reported_with_what_changed() {
    let cur = manifest(vec![
        file("a", &[chunk(1, 10)]),
        file("b", &[chunk(2, 10)]),
        file("c", &[chunk(3, 10)]),
    ]);
    let target = manifest(vec![
        file("a", &[chunk(4, 10)]),
        file("b", &[chunk(5, 10)]),
        file("c", &[chunk(3, 10)]),
    ]);
    let mut view = disk_of(&cur);
    view.entries.get_mut(&b"a"[..]).unwrap().stat.mode = libc::S_IFREG | 0o600;
    let b = view.entries.get_mut(&b"b"[..]).unwrap();
    b.chunks = Some(vec![chunk(8, 10)]);
    b.stat.mtime += 5;
    view.insert("added", on_disk(&file("added", &[chunk(9, 1)]), 50));
    let ex = excludes(&[]);
    let opts = PlanOptions {
        current: Some(&cur),
        ..options(&ex)
    };
    let p = run(&view, &target, &opts);
    let changes: Vec<_> = p
        .local_changes
        .iter()
        .map(|c| (c.path.as_str(), c.what.clone()))
        .collect();
    // c is untouched by the update: not listed, whatever it holds.
    assert_eq!(
        changes,
        vec![
            ("/a", vec!["mode"]),
            ("/added", vec!["added"]),
            ("/b", vec!["content"]),
        ]
    );
}

#[test]
fn space_is_counted_for_new_data_but_not_for_files_linked_back() {
    let m = manifest(vec![
        file("big", &[chunk(1, 4000), chunk(2, 96)]),
        file("back", &[chunk(3, 500)]),
        dir("d"),
        file("same", &[chunk(4, 7)]),
    ]);
    let mut view = disk_of(&m);
    view.entries.remove(&b"big"[..]);
    view.entries.remove(&b"back"[..]);
    view.entries.get_mut(&b"d"[..]).unwrap().stat.mode = libc::S_IFDIR | 0o700;
    view.insert("gone", on_disk(&file("gone", &[chunk(5, 1)]), 60));
    let ex = excludes(&[]);
    let p = run(&view, &m, &options(&ex));
    let linked = |e: &Entry| e.path == b"back";
    let needs = p.needs(&m, &linked, b"staging", 4096);
    let writes: Vec<_> = needs
        .writes
        .iter()
        .map(|(p, n)| (std::str::from_utf8(p).unwrap(), *n))
        .collect();
    assert_eq!(writes, vec![("back", 0), ("big", 4096), ("staging", 4096)]);
    let touched: Vec<_> = needs
        .touched
        .iter()
        .map(|(p, t)| (std::str::from_utf8(p).unwrap(), *t))
        .collect();
    assert_eq!(touched, vec![("d", Touch::Change), ("gone", Touch::Delete)]);
}
