//! The fuzz targets (tests/fuzz/targets.rs) on stable Rust: each parser of untrusted bytes is
//! fed mutations (bit flips, byte changes, insertions, deletions, truncations, splices) of real
//! files from a repository (manifests, pack indexes, refs, logs, a template, a state.json) and of
//! reports, for AURUM_FUZZ_SECONDS each (default 2). A panic is a finding: the input is
//! saved under target/fuzz-findings/ and the test fails. Coverage-guided runs are cargo-fuzz's
//! (`cargo +nightly fuzz run --fuzz-dir tests/fuzz TARGET`).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::Env;

#[path = "../fuzz/targets.rs"]
mod targets;

/// xorshift64*: random enough to mutate, no crate needed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut d = seeds[rng.below(seeds.len())].clone();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(d.len() + 1);
        let last = at.min(d.len().saturating_sub(1));
        match rng.below(7) {
            0 if !d.is_empty() => d[last] ^= 1 << rng.below(8),
            1 if !d.is_empty() => d[last] = rng.next() as u8,
            2 => d.insert(at, rng.next() as u8),
            3 if at < d.len() => {
                d.remove(at);
            }
            4 => d.truncate(at),
            5 => {
                let other = &seeds[rng.below(seeds.len())];
                let from = rng.below(other.len() + 1);
                d.splice(at..at, other[from..].iter().take(rng.below(64)).copied());
            }
            _ => {
                let interesting = [0u8, 0xff, 0x7f, 0x80, b'\n', b'"', b'{', b'0'];
                if !d.is_empty() {
                    d[last] = interesting[rng.below(interesting.len())];
                }
            }
        }
    }
    d
}

/// Every file under `dir`, as seeds.
fn files(dir: &Path, out: &mut Vec<Vec<u8>>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else if let Ok(b) = std::fs::read(&p) {
            if b.len() <= 1 << 20 {
                out.push(b);
            }
        }
    }
}

#[test]
fn every_parser_survives_mutated_inputs() {
    let env = Env::new();
    let g = env.path("g");
    std::fs::create_dir_all(g.join("etc")).unwrap();
    std::fs::write(g.join("etc/motd"), "hello\n").unwrap();
    std::os::unix::fs::symlink("motd", g.join("etc/link")).unwrap();
    crate::common::write_random(&g.join("usr/lib/a.bin"), 1, 100_000);
    env.getimage(&g, "img", &[]);
    std::fs::write(g.join("etc/motd"), "hello again\n").unwrap();
    env.getimage(&g, "img", &[]);
    let node = env.path("node");
    env.ok(&["checkout", "img", node.to_str().unwrap()]);
    let mut seeds = vec![
        Vec::new(),
        br#"{"hostname":"n01","image":"img","revision":null,"action":"updateclient","result":"ok","bytes":1,"seconds":0.5,"detail":""}"#.to_vec(),
        br#"{"phase":"transfer","detail":"1 of 2","revision":"img@1 0123abcd","done":1,"total":2}"#.to_vec(),
        b"Bearer aurum_tok_00ff".to_vec(),
        b"bytes=0-99".to_vec(),
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/partition-templates/compute.toml"))
            .map(String::into_bytes)
            .unwrap_or_default(),
    ];
    files(&env.public(), &mut seeds);
    // Real tar files (GNU, pax with xattrs, sparse, v7, compressed; members that try to
    // climb out), for tar_import.
    files(
        Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fuzz/corpus/tar_import"
        )),
        &mut seeds,
    );
    files(&node.join("var/lib/aurum-node"), &mut seeds);
    let secs: u64 = std::env::var("AURUM_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ std::process::id() as u64);
    let findings = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-findings");
    let mut failed = Vec::new();
    for (name, target) in targets::ALL {
        let (start, mut execs) = (Instant::now(), 0u64);
        while start.elapsed() < Duration::from_secs(secs) {
            let input = mutate(&mut rng, &seeds);
            if std::panic::catch_unwind(|| target(&input)).is_err() {
                std::fs::create_dir_all(&findings).unwrap();
                let f = findings.join(format!("{name}-{execs}"));
                std::fs::write(&f, &input).unwrap();
                failed.push(format!("{name}: panicked on {}", f.display()));
                break;
            }
            execs += 1;
        }
        eprintln!(
            "fuzz {name}: {execs} executions in {:.1} s",
            start.elapsed().as_secs_f64()
        );
    }
    assert!(failed.is_empty(), "{failed:#?}");
}
