//! The bodies of the fuzz targets, one function per parser of untrusted bytes: compiled into
//! the cargo-fuzz binaries (`fuzz_targets/`, libFuzzer, nightly) and into the integration
//! tests' stable runner (`tests/it/fuzz.rs`), so both exercise the same calls. Each must
//! return on any input; a panic is a finding.

use aurum::format::delta;
use aurum::format::manifest::{decode_content, Manifest};
use aurum::format::node::{parse_undo_index_line, NodeState};
use aurum::format::pack::{decode_group, decode_index, parse_record_header};
use aurum::format::refs;
use aurum::format::report::{NodeReport, PhaseReport};

/// A manifest as a node fetches it: what decodes must encode back to bytes that decode the
/// same.
pub fn manifest(data: &[u8]) {
    if let Ok(m) = Manifest::decode(data) {
        let again = Manifest::decode(&m.encode()).expect("an encoded manifest decodes");
        assert!(
            again.encode() == m.encode(),
            "a manifest does not round-trip"
        );
    }
    let _ = decode_content(data);
}

/// A pack index, a pack record header and a group.
pub fn pack_index(data: &[u8]) {
    let _ = decode_index(data);
    let _ = parse_record_header(data);
    let _ = decode_group(data);
}

/// A delta request as `aurum serve` reads it, a delta frame as a node applies it.
pub fn delta(data: &[u8]) {
    let _ = delta::decode_request(data);
    let (base, frame) = data.split_at(data.len() / 3);
    let _ = delta::decode(base, frame, &aurum::format::Id::of(b"target"));
}

/// The published text files a node or a puller reads (signatures files among them).
pub fn refs(data: &[u8]) {
    let _ = refs::decode_ref(data);
    let _ = refs::decode_revisions(data);
    let _ = refs::decode_pack_list(data);
    let _ = refs::decode_classes(data);
    let _ = refs::decode_images(data);
    let _ = refs::decode_log(data);
    let _ = refs::decode_template_log(data);
    let _ = refs::decode_delta_list(data);
    let _ = aurum::format::signature::decode::<aurum::format::signature::Signature>(data);
    let _ = aurum::format::signature::decode::<aurum::format::signature::TemplateSignature>(data);
    let _ =
        aurum::format::signature::decode::<aurum::format::signature::TemplateSetSignature>(data);
}

/// What `aurum serve` reads from any client: reports, install phases, a bearer token, a
/// Range header.
pub fn report(data: &[u8]) {
    let _ = NodeReport::decode(data);
    let _ = PhaseReport::decode(data);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = aurum::format::token::bearer(s);
        let _ = aurum::serve::parse_range(s, 1 << 20);
        let _ = aurum::serve::parse_range(s, 0);
    }
}

/// A node's state.json and undo index lines, as a crash may have left them.
pub fn node_state(data: &[u8]) {
    let _ = NodeState::decode(data, "state.json");
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = parse_undo_index_line(s);
    }
}

/// A partition template as an installer fetches it, and the sizes in it.
pub fn template(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let class = aurum::name::ClassName::new("fuzz").expect("a class name");
        let _ = aurum::template::Template::parse(&class, "fuzz", text);
        let _ = aurum::template::size::parse_bytes(text);
        let _ = aurum::template::size::parse_amount(text);
    }
}

/// A tar stream as `aurum import` reads one (from anyone: an archive downloaded, a vendor's
/// image), imported into a repository in a directory of its own and checked out there. The
/// importer and the checkout must write nothing outside that directory: after each input,
/// the directory holds only its repository and input (the checkout, `work/tree`, is removed:
/// a member that climbed out of it with `..` would be left beside them), the directory
/// around it holds only it, and the working directory is as it was.
pub fn tar_import(data: &[u8]) {
    use aurum::tarball::fuzzing::import_and_checkout;
    use std::path::PathBuf;
    use std::sync::OnceLock;
    fn listing(dir: &std::path::Path) -> Vec<std::ffi::OsString> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .expect("a directory")
            .map(|e| e.expect("an entry").file_name())
            .collect();
        v.sort();
        v
    }
    static DIRS: OnceLock<(PathBuf, PathBuf, Vec<std::ffi::OsString>)> = OnceLock::new();
    let (outer, cwd, cwd_before) = DIRS.get_or_init(|| {
        let outer = std::env::temp_dir().join(format!("aurum-fuzz-tar-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&outer);
        std::fs::create_dir_all(outer.join("work")).expect("a directory");
        let cwd = std::env::current_dir().expect("a working directory");
        let before = listing(&cwd);
        (outer, cwd, before)
    });
    let work = outer.join("work");
    let outcome = import_and_checkout(&work, data).expect("the harness's repository");
    assert_eq!(
        listing(outer),
        vec![std::ffi::OsString::from("work")],
        "the importer or the checkout wrote beside its directory ({outcome:?})"
    );
    let mut inside = listing(&work);
    inside.retain(|n| n != "input" && n != "repo");
    assert!(
        inside.is_empty(),
        "the checkout wrote {inside:?} beside its tree in {} ({outcome:?})",
        work.display()
    );
    assert_eq!(
        &listing(cwd),
        cwd_before,
        "the importer or the checkout wrote into the working directory ({outcome:?})"
    );
}

/// A target: a name and what it runs on one input.
pub type Target = (&'static str, fn(&[u8]));

/// Every target by name.
#[allow(dead_code)]
pub const ALL: &[Target] = &[
    ("manifest", manifest),
    ("pack_index", pack_index),
    ("delta", delta),
    ("refs", refs),
    ("report", report),
    ("node_state", node_state),
    ("template", template),
    ("tar_import", tar_import),
];
