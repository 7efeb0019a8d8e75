//! Import of archives written by other tools (GNU tar, bsdtar, old tars, hand-built headers)
//! and in every compression they come in: nothing may be imported wrongly or dropped silently
//! (issue 12, item 13).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::common::{need, rsync_diff, sh, Env};

/// A 512-byte tar header: `magic` makes it ustar, else it is an old (v7) header. Numeric
/// fields left `None` stay blank, as GNU tar leaves a volume label's.
fn header(name: &str, flag: u8, size: Option<u64>, link: &str, magic: bool) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    if let Some(size) = size {
        h[100..108].copy_from_slice(b"0000644\0");
        h[108..116].copy_from_slice(b"0000000\0");
        h[116..124].copy_from_slice(b"0000000\0");
        h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    }
    h[136..148].copy_from_slice(format!("{:011o}\0", 1_600_000_000u64).as_bytes());
    h[156] = flag;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    if magic {
        h[257..265].copy_from_slice(b"ustar\x0000");
    }
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// A member: its header, then its data padded to a block.
fn member(out: &mut Vec<u8>, header: Vec<u8>, data: &[u8]) {
    out.extend(header);
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

/// A pax extended header with these records, for the member that follows.
fn pax(out: &mut Vec<u8>, records: &[(&str, &[u8])]) {
    let mut data = Vec::new();
    for (k, v) in records {
        let rest = k.len() + v.len() + 3;
        let mut len = rest + 1;
        while len != rest + len.to_string().len() {
            len = rest + len.to_string().len();
        }
        data.extend_from_slice(format!("{len} {k}=").as_bytes());
        data.extend_from_slice(v);
        data.push(b'\n');
    }
    member(
        out,
        header("PaxHeaders/x", b'x', Some(data.len() as u64), "", true),
        &data,
    );
}

fn finish(mut out: Vec<u8>) -> Vec<u8> {
    out.extend([0u8; 1024]);
    out
}

/// A small tree every tar format can carry: whole-second times, a hard link, a symlink.
fn plain_tree(env: &Env) -> std::path::PathBuf {
    let src = env.path("src");
    sh(&format!(
        "mkdir -p {s}/d/e {s}/empty && cd {s} && echo hello > d/f && ln d/f d/hard && ln -s f d/sym \
         && echo world > top && chmod 640 top && find . -exec touch -h -d @1600000000 {{}} +",
        s = src.display()
    ));
    src
}

/// Old tars (v7) and bsdtar's v7 mark directories only by a trailing `/`: they became regular
/// files. Every format GNU tar and bsdtar write now imports and checks out equal to its source,
/// and aurum's export of it stays readable by both.
#[test]
fn imports_every_format_gnu_tar_and_bsdtar_write() {
    if !need("bsdtar") {
        return;
    }
    let env = Env::new();
    let src = plain_tree(&env);
    let mut made = Vec::new();
    for f in ["gnu", "oldgnu", "pax", "posix", "ustar", "v7"] {
        made.push((format!("gnutar-{f}"), format!("tar --format={f}")));
    }
    for f in ["pax", "ustar", "gnutar", "v7"] {
        made.push((format!("bsdtar-{f}"), format!("bsdtar --format {f}")));
    }
    for (name, tar) in &made {
        let t = env.path(&format!("{name}.tar"));
        sh(&format!("{tar} -C {} -cf {} .", src.display(), t.display()));
        env.ok(&["import", "--image", name, t.to_str().unwrap()]);
        let out = env.path(&format!("{name}-out"));
        env.ok(&["checkout", name, out.to_str().unwrap()]);
        let d = rsync_diff(&src, &out);
        assert!(d.trim().is_empty(), "{name}: {d}");
    }
    // xattrs and ACLs as bsdtar writes them (LIBARCHIVE.xattr.*, star's ACL text with ids)
    // and as GNU tar --format=posix does.
    sh(&format!(
        "cd {} && setfattr -n user.k -v 'a=b' top && setfacl -m u:4321:rw,g:99:r top \
         && setfacl -d -m u:4321:rx d && touch -h -d @1600000000 top d",
        src.display()
    ));
    for (name, tar) in [
        ("bsdtar-pax-acl", "bsdtar --format pax --acls --xattrs"),
        (
            "gnutar-posix-acl",
            "tar --format=posix --acls --xattrs --xattrs-include='*'",
        ),
    ] {
        let t = env.path(&format!("{name}.tar"));
        sh(&format!("{tar} -C {} -cf {} .", src.display(), t.display()));
        env.ok(&["import", "--image", name, t.to_str().unwrap()]);
        let out = env.path(&format!("{name}-out"));
        env.ok(&["checkout", name, out.to_str().unwrap()]);
        let d = rsync_diff(&src, &out);
        assert!(d.trim().is_empty(), "{name}: {d}");
    }
    // aurum's export stays readable by GNU tar and bsdtar.
    let t = env.path("back.tar");
    env.ok(&["export", "bsdtar-pax-acl", "-o", t.to_str().unwrap()]);
    for x in [
        "tar --acls --xattrs --xattrs-include='*'",
        "bsdtar --acls --xattrs",
    ] {
        let dir = env.path(&format!("x-{}", x.len()));
        sh(&format!(
            "mkdir {d} && {x} --numeric-owner -C {d} -xpf {t}",
            d = dir.display(),
            t = t.display()
        ));
        // bsdtar leaves the mtime of the directory it extracts into alone.
        let d = rsync_diff(&src, &dir);
        let d: Vec<_> = d
            .lines()
            .filter(|l| !(x.starts_with("bsdtar") && l.ends_with(" ./")))
            .collect();
        assert!(d.is_empty(), "{x} -x of aurum export: {d:?}");
    }
}

/// Hand-built old headers: old-style directories (`\0` and `0` with a trailing `/`), a GNU
/// volume label (blank size, which failed the import), and a hard link header carrying a size
/// but no data (the reader skipped "data" into the next header).
#[test]
fn imports_old_style_directories_volume_labels_and_sized_links() {
    let env = Env::new();
    let mut t = Vec::new();
    member(&mut t, header("LABEL", b'V', None, "", false), b"");
    member(&mut t, header("olddir/", b'\0', Some(0), "", false), b"");
    member(&mut t, header("olddir/x", b'0', Some(2), "", false), b"x\n");
    member(&mut t, header("zerodir/", b'0', Some(0), "", true), b"");
    member(&mut t, header("a", b'0', Some(6), "", true), b"first\n");
    member(&mut t, header("b", b'1', Some(6), "a", true), b"");
    // star can store a hard link's data after its header: that data is skipped.
    member(&mut t, header("b2", b'1', Some(6), "a", true), b"first\n");
    member(&mut t, header("z", b'0', Some(2), "", true), b"z\n");
    let archive = env.path("old.tar");
    std::fs::write(&archive, finish(t)).unwrap();
    env.ok(&["import", "--image", "old", archive.to_str().unwrap()]);
    let out = env.path("out");
    env.ok(&["checkout", "old", out.to_str().unwrap()]);
    assert!(out.join("olddir").is_dir(), "olddir/ is not a directory");
    assert!(out.join("zerodir").is_dir(), "zerodir/ is not a directory");
    assert_eq!(std::fs::read(out.join("olddir/x")).unwrap(), b"x\n");
    assert_eq!(std::fs::read(out.join("b")).unwrap(), b"first\n");
    assert_eq!(std::fs::read(out.join("z")).unwrap(), b"z\n");
    let ino = |n: &str| std::fs::metadata(out.join(n)).unwrap().ino();
    assert_eq!(ino("a"), ino("b"));
    assert_eq!(ino("a"), ino("b2"));
    assert!(!out.join("LABEL").exists());
}

/// `tar -r` appends a new version of a file under the same name: the last member wins, and a
/// hard link refers to the member its target named at that point of the archive (the link got
/// the last copy's content).
#[test]
fn duplicate_names_last_wins_and_links_keep_their_point() {
    let env = Env::new();
    let mut t = Vec::new();
    member(&mut t, header("a", b'0', Some(6), "", true), b"first\n");
    member(&mut t, header("b", b'1', Some(0), "a", true), b"");
    member(&mut t, header("a", b'0', Some(7), "", true), b"second\n");
    member(&mut t, header("c", b'1', Some(0), "a", true), b"");
    let archive = env.path("dup.tar");
    std::fs::write(&archive, finish(t)).unwrap();
    env.ok(&["import", "--image", "dup", archive.to_str().unwrap()]);
    let out = env.path("out");
    env.ok(&["checkout", "dup", out.to_str().unwrap()]);
    let read = |n: &str| std::fs::read_to_string(out.join(n)).unwrap();
    assert_eq!(read("a"), "second\n");
    assert_eq!(
        read("b"),
        "first\n",
        "b must keep the content a had when b was linked"
    );
    assert_eq!(read("c"), "second\n");
    let ino = |n: &str| std::fs::metadata(out.join(n)).unwrap().ino();
    assert_eq!(ino("a"), ino("c"));
    assert_ne!(ino("a"), ino("b"));
    // A hard link to a name no member before it holds is refused.
    let mut t = Vec::new();
    member(&mut t, header("b", b'1', Some(0), "a", true), b"");
    member(&mut t, header("a", b'0', Some(1), "", true), b"x");
    std::fs::write(&archive, finish(t)).unwrap();
    let err = env.fails(&["import", "--image", "fwd", archive.to_str().unwrap()], 2);
    assert!(err.contains("no member before it"), "{err}");
}

/// pax records bsdtar, GNU tar --selinux and star write were dropped without a word; an ACL
/// without a mask imported and then failed checkout with EINVAL.
#[test]
fn pax_records_are_imported_or_refused_by_name() {
    let env = Env::new();
    let mut t = Vec::new();
    pax(
        &mut t,
        &[
            ("LIBARCHIVE.xattr.user.a%3Db", b"aGk"),
            ("RHT.security.selinux", b"system_u:object_r:etc_t:s0"),
            (
                "SCHILY.acl.access",
                b"user::rw-\nuser:1234:r--\ngroup::r--\ngroup:99:-w-\nother::---",
            ),
            ("atime", b"1600000000.5"),
            ("SCHILY.nlink", b"1"),
        ],
    );
    member(&mut t, header("f", b'0', Some(3), "", true), b"hi\n");
    let archive = env.path("pax.tar");
    std::fs::write(&archive, finish(t)).unwrap();
    env.ok(&["import", "--image", "p", archive.to_str().unwrap()]);
    let out = env.path("out");
    env.ok(&["checkout", "p", out.to_str().unwrap()]);
    let f = out.join("f");
    let acl = sh(&format!("getfacl -n {}", f.display()));
    assert!(acl.contains("mask::rw-"), "{acl}");
    assert!(acl.contains("user:1234:r--"), "{acl}");
    let x = sh(&format!(
        "getfattr --absolute-names -n user.a=b {}",
        f.display()
    ));
    // getfattr writes the `=` of the name as `\075`.
    assert!(x.contains("user.a\\075b=\"hi\""), "{x}");
    // The selinux label is kept (checkout on a kernel without SELinux may not set it, so look
    // at the export), with the NUL the kernel's value ends in.
    let back = env.path("back.tar");
    env.ok(&["export", "p", "-o", back.to_str().unwrap()]);
    let bytes = std::fs::read(&back).unwrap();
    let want = b"SCHILY.xattr.security.selinux=system_u:object_r:etc_t:s0\0\n";
    assert!(
        bytes.windows(want.len()).any(|w| w == want),
        "no selinux label in the export"
    );
    // Records aurum cannot keep are refused, naming the member and the record.
    for (record, value) in [
        (
            "SCHILY.acl.ace",
            &b"owner@:rw-p--aARWcCos:-------:allow"[..],
        ),
        ("SCHILY.fflags", b"uappnd"),
        ("FOO.bar", b"1"),
    ] {
        let mut t = Vec::new();
        pax(&mut t, &[(record, value)]);
        member(&mut t, header("g", b'0', Some(0), "", true), b"");
        std::fs::write(&archive, finish(t)).unwrap();
        let err = env.fails(
            &["import", "--image", "refused", archive.to_str().unwrap()],
            2,
        );
        assert!(err.contains("`g`") && err.contains(record), "{err}");
    }
    // So is a member type aurum does not know (a Solaris ACL header).
    let mut t = Vec::new();
    member(&mut t, header("s", b'A', Some(0), "", true), b"");
    std::fs::write(&archive, finish(t)).unwrap();
    let err = env.fails(
        &["import", "--image", "refused", archive.to_str().unwrap()],
        2,
    );
    assert!(err.contains("`s`") && err.contains("Solaris ACL"), "{err}");
    env.fails(&["show", "refused"], 2);
}

/// bzip2, xz and lz4 archives failed with garbled errors, and so did a zstd stream that starts
/// with a skippable frame: all of them import to the very revision the plain archive gives.
#[test]
fn imports_every_compression_by_its_magic() {
    for tool in ["bzip2", "xz", "lz4", "zstd"] {
        if !need(tool) {
            return;
        }
    }
    let env = Env::new();
    let src = plain_tree(&env);
    let plain = env.path("a.tar");
    sh(&format!(
        "tar -C {} -cf {} .",
        src.display(),
        plain.display()
    ));
    let id = |name: &str, file: &Path| {
        let out = env.ok(&["import", "--image", name, file.to_str().unwrap()]);
        out.split_whitespace().nth(1).unwrap().to_string()
    };
    let want = id("plain", &plain);
    let p = plain.display();
    for (name, cmd) in [
        ("gzip", format!("gzip -c {p}")),
        ("bzip2", format!("bzip2 -c {p}")),
        (
            "pbzip2-like",
            format!("(head -c 5000 {p} | bzip2 -c; tail -c +5001 {p} | bzip2 -c)"),
        ),
        ("xz", format!("xz -c {p}")),
        ("lz4", format!("lz4 -c {p}")),
        ("zstd", format!("zstd -qc {p}")),
        // pzstd and zstdmt put a skippable frame first.
        (
            "zstd-skippable",
            format!("(printf 'P*M\\030\\004\\000\\000\\000abcd'; zstd -qc {p})"),
        ),
        (
            "lz4-skippable",
            format!("(printf 'Q*M\\030\\002\\000\\000\\000ab'; lz4 -c {p})"),
        ),
    ] {
        let f = env.path(&format!("a.{name}"));
        sh(&format!("{cmd} > {}", f.display()));
        assert_eq!(id(name, &f), want, "{name}");
    }
    // A format aurum does not read is named, not garbled.
    let f = env.path("a.lz");
    std::fs::write(&f, b"LZIP\x01rest").unwrap();
    let err = env.fails(&["import", "--image", "lzip", f.to_str().unwrap()], 2);
    assert!(err.contains("lzip"), "{err}");
}
