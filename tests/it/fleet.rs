//! The simulated fleet (tests/rig/fleet) that rollout, scheduler and scale-out tests share:
//! nodes that are network namespaces with their own address, hostname and root file system,
//! sshd inside, aurum inside, and a master namespace whose `aurum serve` they update from.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::common::{can_run, have, is_root, sh, write_random, Env};

/// A fleet brought up for one test and always brought down.
pub struct Fleet {
    state: PathBuf,
    pub master: String,
    pub nodes: Vec<String>,
}

fn rig() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/rig/fleet")
}

impl Fleet {
    /// `count` nodes, their state under `dir`.
    pub fn up(dir: &Path, count: usize) -> Fleet {
        let state = dir.join("fleet");
        let out = Command::new(rig())
            .args(["up", "-n", &count.to_string(), "--state"])
            .arg(&state)
            .args(["--aurum", env!("CARGO_BIN_EXE_aurum")])
            .output()
            .unwrap();
        let fleet = Fleet {
            state,
            master: String::new(),
            nodes: Vec::new(),
        };
        assert!(
            out.status.success(),
            "fleet up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let env = std::fs::read_to_string(fleet.state.join("env")).unwrap();
        let value = |key: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("{key}=")))
                .unwrap()
                .trim_matches('"')
                .to_string()
        };
        let mut fleet = fleet;
        fleet.master = value("FLEET_MASTER");
        fleet.nodes = value("FLEET_NODES")
            .split(' ')
            .map(str::to_string)
            .collect();
        fleet
    }

    fn rig(&self, verb: &str) -> Command {
        let mut c = Command::new(rig());
        c.arg(verb).arg("--state").arg(&self.state);
        c
    }

    /// Runs `script` on `node` over ssh from the master; its output, panicking on failure.
    pub fn ssh(&self, node: &str, script: &str) -> String {
        let out = self.rig("ssh").arg(node).arg(script).output().unwrap();
        assert!(
            out.status.success(),
            "{node}: `{script}` failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `cmd` in the master's namespace, its output dropped (a server's log must not
    /// fill an unread pipe; use `spawn_capturing` to read it).
    pub fn spawn_on_master(&self, cmd: &[&str]) -> Child {
        self.rig("master")
            .args(cmd)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Starts `cmd` in the master's namespace with its output piped, to be read with
    /// `wait_with_output`.
    pub fn spawn_capturing(&self, cmd: &[&str]) -> Child {
        self.rig("master")
            .args(cmd)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Runs `cmd` in the master's namespace to its end.
    pub fn on_master(&self, cmd: &[&str]) -> std::process::Output {
        self.rig("master").args(cmd).output().unwrap()
    }

    /// The ssh command line, for `--ssh`, that reaches the nodes from the master.
    pub fn ssh_command(&self) -> String {
        format!(
            "ssh -i {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
            self.state.join("id_ed25519").display()
        )
    }

    /// A node's address.
    pub fn address(&self, node: &str) -> String {
        let net = self.master.rsplit_once('.').unwrap().0;
        format!(
            "{net}.{}",
            node.trim_start_matches('n').parse::<u32>().unwrap()
        )
    }

    /// `aurum serve` of `repo` on the master's address, port 8035, once it answers.
    pub fn serve(&self, repo: &Path) -> Child {
        let listen = format!("{}:8035", self.master);
        let child = self.spawn_on_master(&[
            env!("CARGO_BIN_EXE_aurum"),
            "--repo",
            repo.to_str().unwrap(),
            "serve",
            "--listen",
            &listen,
            // The fleet's network is the test's own lab: nodes report without tokens (the
            // tokens themselves are tests/it/tokens.rs's).
            "--open-writes",
        ]);
        self.wait_port(8035);
        child
    }

    /// Waits until something listens on the master's `port`.
    pub fn wait_port(&self, port: u16) {
        let probe = format!("exec 3<>/dev/tcp/{}/{port}", self.master);
        for _ in 0..100 {
            let ok = self
                .rig("master")
                .args(["bash", "-c", &probe])
                .stderr(Stdio::null())
                .status()
                .unwrap()
                .success();
            if ok {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!(
            "nothing listens on {}:{port} in the master namespace",
            self.master
        );
    }

    /// A node's root file system, seen from the host.
    pub fn root(&self, node: &str) -> PathBuf {
        self.state.join("nodes").join(node).join("root")
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = self.rig("down").status();
    }
}

/// Whether the fleet rig can run here (root, sshd, ip, and the cached Debian root it builds).
pub fn fleet_can_run() -> bool {
    can_run(is_root(), "root (network namespaces, overlay mounts)")
        && can_run(have("sshd"), "sshd (openssh-server)")
        && can_run(have("ip"), "ip (iproute2)")
        && can_run(have("debootstrap"), "debootstrap (the nodes' Debian root)")
}

#[test]
fn fleet_nodes_are_separate_machines_that_update_from_the_master() {
    if !fleet_can_run() {
        return;
    }
    let env = Env::new();
    let golden = env.path("golden");
    std::fs::create_dir_all(golden.join("etc")).unwrap();
    std::fs::write(golden.join("etc/motd"), "revision one\n").unwrap();
    write_random(&golden.join("opt/data.bin"), 7, 300_000);
    env.getimage(&golden, "compute", &[]);

    let fleet = Fleet::up(env.dir.path(), 3);
    assert_eq!(fleet.nodes, ["n01", "n02", "n03"]);
    // Each node is its own machine: its name, its address, its own files.
    let mut addresses = Vec::new();
    for node in &fleet.nodes {
        let said = fleet.ssh(node, "hostname; hostname -I; cat /etc/debian_version");
        let mut lines = said.lines();
        assert_eq!(lines.next(), Some(node.as_str()));
        addresses.push(lines.next().unwrap().trim().to_string());
        assert!(lines.next().unwrap().starts_with("12."), "{said}");
    }
    addresses.dedup();
    assert_eq!(addresses.len(), 3, "{addresses:?}");
    fleet.ssh("n01", "echo only-here > /etc/n01-only");
    assert!(!fleet.root("n02").join("etc/n01-only").exists());

    // The master serves; every node updates a directory from it over the fleet's network.
    let mut serve = fleet.serve(&env.repo());
    for node in &fleet.nodes {
        fleet.ssh(
            node,
            "mkdir -p /srv/node && aurum --no-progress updateclient --server http://master:8035 --image compute --root /srv/node --quiet",
        );
        let got = fleet.root(node).join("srv/node");
        assert_eq!(
            std::fs::read_to_string(got.join("etc/motd")).unwrap(),
            "revision one\n"
        );
        assert_eq!(
            std::fs::read(got.join("opt/data.bin")).unwrap(),
            std::fs::read(golden.join("opt/data.bin")).unwrap()
        );
    }
    // And the master's report list names each node by the hostname it reported.
    let nodes = env.ok(&["nodes", "--json"]);
    for node in &fleet.nodes {
        assert!(
            nodes.contains(&format!("\"{node}\"")),
            "{node} not in {nodes}"
        );
    }
    serve.kill().unwrap();
    serve.wait().unwrap();
    let state = fleet.state.clone();
    drop(fleet);
    assert!(!state.exists(), "fleet down left {}", state.display());
    assert!(
        !sh("mount").contains(state.to_str().unwrap()),
        "fleet down left mounts"
    );
}

/// `aurum exec` and `copy` on the fleet: node sets with the node database's groups and
/// addresses, folded output, an exit status that counts failures, per-node timeouts, nodes
/// that cannot be reached, relays (--tree), and copies that keep owners and modes.
#[test]
fn exec_and_copy_fan_out_fold_and_count_failures() {
    if !fleet_can_run() {
        return;
    }
    let env = Env::new();
    let fleet = Fleet::up(env.dir.path(), 8);
    for (i, node) in fleet.nodes.iter().enumerate() {
        let group = ["rack1", "rack1", "rack2", "rack2"]
            .get(i)
            .unwrap_or(&"rack3");
        env.ok(&[
            "node",
            "add",
            node,
            "--mac",
            &format!("52:54:00:00:00:0{}", i + 1),
            "--ip",
            &fleet.address(node),
            "--group",
            group,
        ]);
    }
    // n09 is in the database at an address nobody answers on.
    env.ok(&[
        "node",
        "add",
        "n09",
        "--mac",
        "52:54:00:00:00:09",
        "--ip",
        &fleet.address("n99"),
    ]);
    std::fs::write(fleet.root("n03").join("etc/debian_version"), "12.0\n").unwrap();
    let ssh = fleet.ssh_command();
    let repo = env.repo();
    let aurum = |args: &[&str]| {
        let mut cmd = vec![
            env!("CARGO_BIN_EXE_aurum"),
            "--repo",
            repo.to_str().unwrap(),
            "--no-progress",
        ];
        cmd.extend_from_slice(args);
        fleet.on_master(&cmd)
    };

    let out = aurum(&[
        "exec",
        "@all!n09",
        "--ssh",
        &ssh,
        "--",
        "cat",
        "/etc/debian_version",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let version = std::fs::read_to_string(fleet.root("n01").join("etc/debian_version")).unwrap();
    assert_eq!(
        stdout,
        format!("---------------\nn[01-02,04-08] (7)\n---------------\n{version}---------------\nn03\n---------------\n12.0\n")
    );

    // One node fails, one times out, one cannot be reached: the exit status is 3, each is
    // named, and --json says which is which.
    let script = "case $(hostname) in n02) exit 7;; n04) sleep 30;; esac; echo fine";
    let started = std::time::Instant::now();
    let out = aurum(&[
        "exec",
        "@all",
        "--ssh",
        &ssh,
        "--timeout",
        "3",
        "--connect-timeout",
        "2",
        "--json",
        "--",
        script,
    ]);
    assert!(
        started.elapsed().as_secs() < 20,
        "the timeout did not cut n04 short"
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = crate::common::json(&String::from_utf8_lossy(&out.stdout));
    let status = |node: &str| {
        report["results"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["node"] == node)
            .unwrap()["status"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(status("n01"), "ok");
    assert_eq!(status("n02"), "failed");
    assert_eq!(status("n04"), "timeout");
    assert_eq!(status("n09"), "unreachable");
    assert_eq!(report["ok"], 6);
    let out = aurum(&["exec", "n0[1-2]", "--ssh", &ssh, "--", script]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("aurum: n02: exit status 7"));

    // Through a relay: n01 reaches n[02-04] itself (with its own key) and reports back.
    std::fs::copy(
        fleet.state.join("id_ed25519"),
        fleet.root("n01").join("root/.ssh/id_ed25519"),
    )
    .unwrap();
    let relay_ssh =
        "ssh -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR";
    let out = aurum(&[
        "exec",
        "n0[2-4]",
        "--ssh",
        &ssh,
        "--tree",
        "n01",
        "--relay-ssh",
        relay_ssh,
        "--json",
        "--",
        "hostname",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = crate::common::json(&String::from_utf8_lossy(&out.stdout));
    let said: Vec<&str> = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["stdout"].as_str().unwrap().trim())
        .collect();
    assert_eq!(said, ["n02", "n03", "n04"]);

    // A copy keeps owners and modes, into a directory made on the way.
    let src = env.path("conf");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("sub/slurm.conf"), "ClusterName=test\n").unwrap();
    sh(&format!(
        "chown -R 1234:4321 '{0}' && chmod 0640 '{0}/sub/slurm.conf'",
        src.display()
    ));
    let out = aurum(&[
        "copy",
        "@rack2",
        src.to_str().unwrap(),
        "/etc/new/place",
        "--ssh",
        &ssh,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for node in ["n03", "n04"] {
        let f = fleet.root(node).join("etc/new/place/conf/sub/slurm.conf");
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "ClusterName=test\n");
        let st = sh(&format!("stat -c '%u:%g %a' '{}'", f.display()));
        assert_eq!(st.trim(), "1234:4321 640");
    }
    assert!(!fleet.root("n01").join("etc/new").exists());
    // And through the relay, which unpacks the archive it is sent and copies on.
    let out = aurum(&[
        "copy",
        "n0[2-3]",
        src.to_str().unwrap(),
        "/opt/relayed",
        "--ssh",
        &ssh,
        "--tree",
        "n01",
        "--relay-ssh",
        relay_ssh,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for node in ["n02", "n03"] {
        let f = fleet.root(node).join("opt/relayed/conf/sub/slurm.conf");
        let st = sh(&format!("stat -c '%u:%g %a' '{}'", f.display()));
        assert_eq!(st.trim(), "1234:4321 640", "{node}");
    }

    // On 8 nodes, two at a time and through two relays, the output is what clubak prints.
    if can_run(have("clubak"), "clubak (clustershell)") {
        clubak_folds_the_same(&fleet, &aurum, &ssh, relay_ssh);
    }

    // A node set that names a group nobody is in says which groups there are.
    let out = aurum(&["exec", "@rack9", "--", "true"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the groups are rack1, rack2"));
}

/// A busybox root carrying a required health check that passes when `healthy`, with
/// /etc/version saying `version`.
fn checked_golden(env: &Env, version: u32, healthy: bool) -> PathBuf {
    let root = env.path(&format!("golden{version}"));
    let state = if healthy { "running" } else { "stopped" };
    sh(&format!(
        r#"
        r={root}
        mkdir -p $r/bin $r/etc/aurum/health/required.d $r/tmp
        cp /bin/busybox $r/bin/busybox
        for t in $(/bin/busybox --list); do [ $t = busybox ] || ln -sf busybox $r/bin/$t; done
        echo {state} > $r/etc/service.state
        echo {version} > $r/etc/version
        printf '#!/bin/sh\nstate=$(cat /etc/service.state)\necho "service is $state"\n[ "$state" = running ]\n' > $r/etc/aurum/health/required.d/10-service
        chmod 755 $r/etc/aurum/health/required.d/10-service
        "#,
        root = root.display()
    ));
    root
}

/// The master side of a rollout test: the fleet, the repository served from the master's
/// namespace, and every node on `img@1` under /srv/node.
struct RolloutRig {
    env: Env,
    fleet: Fleet,
    serve: Child,
}

impl RolloutRig {
    fn new(nodes: usize, versions: &[(u32, bool)]) -> RolloutRig {
        RolloutRig::new_with(nodes, versions, |_, _| {})
    }

    /// As `new`, with `tweak` called on each golden root (with its version) before capture.
    fn new_with(nodes: usize, versions: &[(u32, bool)], tweak: impl Fn(u32, &Path)) -> RolloutRig {
        let env = Env::new();
        for &(v, healthy) in versions {
            let golden = checked_golden(&env, v, healthy);
            tweak(v, &golden);
            env.getimage(&golden, "img", &[]);
        }
        let fleet = Fleet::up(env.dir.path(), nodes);
        for (i, node) in fleet.nodes.iter().enumerate() {
            env.ok(&[
                "node",
                "add",
                node,
                "--mac",
                &format!("52:54:00:00:01:{:02x}", i + 1),
                "--ip",
                &fleet.address(node),
                "--group",
                "compute",
            ]);
        }
        let serve = fleet.serve(&env.repo());
        let rig = RolloutRig { env, fleet, serve };
        let out = rig.aurum(&[
            "exec", "@compute", "--ssh", &rig.fleet.ssh_command(), "--",
            "mkdir -p /srv/node && aurum --quiet updateclient --server http://master:8035 --image img@1 --root /srv/node",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        rig
    }

    /// aurum run in the master's namespace on the repository.
    fn aurum(&self, args: &[&str]) -> std::process::Output {
        let repo = self.env.repo();
        let mut cmd = vec![
            env!("CARGO_BIN_EXE_aurum"),
            "--repo",
            repo.to_str().unwrap(),
            "--no-progress",
        ];
        cmd.extend_from_slice(args);
        self.fleet.on_master(&cmd)
    }

    /// The arguments of a rollout of `rev` over the fleet, before the options of the test.
    fn start_args(&self, rev: &str) -> Vec<String> {
        [
            "rollout",
            "start",
            rev,
            "@compute",
            "--server",
            "http://master:8035",
            "--node-root",
            "/srv/node",
            "--ssh",
            &self.fleet.ssh_command(),
            "--json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// Runs a rollout of `rev` over the fleet with the test's options `extra`, to its end: its
    /// exit status and `rollout status --json`.
    fn start(&self, rev: &str, extra: &[&str]) -> (Option<i32>, serde_json::Value) {
        let mut args = self.start_args(rev);
        args.extend(extra.iter().map(|a| a.to_string()));
        self.rollout(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// The version each node's /srv/node holds.
    fn versions(&self) -> Vec<String> {
        self.fleet
            .nodes
            .iter()
            .map(|n| {
                std::fs::read_to_string(self.fleet.root(n).join("srv/node/etc/version"))
                    .unwrap()
                    .trim()
                    .to_string()
            })
            .collect()
    }

    fn rollout(&self, args: &[&str]) -> (Option<i32>, serde_json::Value) {
        let out = self.aurum(args);
        let v = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
        (out.status.code(), v)
    }
}

impl Drop for RolloutRig {
    fn drop(&mut self) {
        let _ = self.serve.kill();
        let _ = self.serve.wait();
    }
}

fn states(v: &serde_json::Value) -> Vec<String> {
    v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            format!(
                "{}={}",
                n["node"].as_str().unwrap(),
                n["state"].as_str().unwrap()
            )
        })
        .collect()
}

/// On the fleet's 8 nodes, `--fanout 2`, direct and through two relays: `aurum exec` prints
/// what `clubak -c` prints for the same outputs.
fn clubak_folds_the_same(
    fleet: &Fleet,
    aurum: &dyn Fn(&[&str]) -> std::process::Output,
    ssh: &str,
    relay_ssh: &str,
) {
    for relay in ["n01", "n05"] {
        let key = fleet.root(relay).join("root/.ssh/id_ed25519");
        std::fs::copy(fleet.state.join("id_ed25519"), key).unwrap();
    }
    let hosts: Vec<String> = fleet
        .nodes
        .iter()
        .map(|n| format!("{n}={}", fleet.address(n)))
        .collect();
    let hosts = hosts.join(",");
    let script = "case $(hostname) in n0[1-3]) echo a;; n0[4-6]) echo b; echo c;; *) echo d;; esac";
    let direct = aurum(&[
        "exec", "n[01-08]", "--hosts", &hosts, "--ssh", ssh, "--fanout", "2", "--json", "--",
        script,
    ]);
    let report = crate::common::json(&String::from_utf8_lossy(&direct.stdout));
    let mut lines = String::new();
    for r in report["results"].as_array().unwrap() {
        for line in r["stdout"].as_str().unwrap().lines() {
            lines.push_str(&format!("{}: {line}\n", r["node"].as_str().unwrap()));
        }
    }
    let clubak = Command::new("sh")
        .arg("-c")
        .arg(format!("printf '%s' '{lines}' | clubak -c -S ': '"))
        .output()
        .unwrap();
    let expected = String::from_utf8_lossy(&clubak.stdout).into_owned();
    assert!(expected.contains("n[04-06] (3)"), "{expected}");
    for tree in [None, Some("n01,n05")] {
        let mut args = vec![
            "exec", "n[01-08]", "--hosts", &hosts, "--ssh", ssh, "--fanout", "2",
        ];
        if let Some(relays) = tree {
            args.extend(["--tree", relays, "--relay-ssh", relay_ssh]);
        }
        args.extend(["--", script]);
        let out = aurum(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            expected,
            "tree {tree:?}"
        );
    }
}

/// Rollouts on 8 simulated nodes: a good revision goes canary -> waves -> done and moves
/// last-known-good; one that fails its health check stops at the canary, which is back on its
/// previous revision, with no other node changed; dead nodes count as failed and --max-failed
/// decides.
#[test]
fn rollouts_gate_waves_on_health_and_failures() {
    if !fleet_can_run() || !can_run(Path::new("/bin/busybox").exists(), "busybox-static") {
        return;
    }
    let rig = RolloutRig::new(8, &[(1, true), (2, true), (3, false), (4, true), (5, true)]);
    let started = std::time::Instant::now();
    let (code, v) = rig.start("img@2", &["--canary", "1", "--waves", "50%,100%"]);
    let good_rollout = started.elapsed();
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["rollout"]["state"], "done");
    assert_eq!(v["rollout"]["plan"]["waves"], 3);
    assert!(states(&v).iter().all(|s| s.ends_with("=done")), "{v}");
    assert_eq!(rig.versions(), vec!["2"; 8]);
    let log = rig.env.ok(&["log", "img", "--json"]);
    assert!(log.contains("last-known-good"), "{log}");
    let tagged = rig.env.ok(&["show", "img:last-known-good", "--json"]);
    assert_eq!(crate::common::json(&tagged)["number"], 2, "{tagged}");

    // A revision whose health check fails: the canary takes it, fails, is rolled back, and the
    // rollout stops there.
    let (code, v) = rig.start("img@3", &["--canary", "1", "--waves", "100%"]);
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(v["rollout"]["state"], "failed");
    assert_eq!(v["rollout"]["wave"], 0);
    let s = states(&v);
    assert_eq!(s[0], "n01=failed", "{v}");
    assert!(s[1..].iter().all(|s| s.ends_with("=pending")), "{v}");
    let detail = v["nodes"][0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("unhealthy (10-service); rolled back"),
        "{detail}"
    );
    assert_eq!(
        rig.versions(),
        vec!["2"; 8],
        "the canary is back on img@2, no other node moved"
    );
    let tagged = rig.env.ok(&["show", "img:last-known-good", "--json"]);
    assert_eq!(crate::common::json(&tagged)["number"], 2);

    // Two dead nodes (sshd killed) with --max-failed 1: the rollout fails, and the wave's
    // healthy nodes are rolled back. With one dead node it would pass.
    for node in ["n04", "n07"] {
        sh(&format!(
            "kill $(cat '{}/run/sshd.pid')",
            rig.fleet.root(node).display()
        ));
    }
    let (code, v) = rig.start(
        "img@4",
        &[
            "--canary",
            "0",
            "--waves",
            "100%",
            "--max-failed",
            "1",
            "--connect-timeout",
            "2",
        ],
    );
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(v["rollout"]["state"], "failed");
    let s = states(&v);
    assert!(
        s.contains(&"n04=failed".to_string()) && s.contains(&"n07=failed".to_string()),
        "{v}"
    );
    let versions = rig.versions();
    assert!(
        versions.iter().all(|x| x == "2"),
        "the wave was rolled back: {versions:?}"
    );
    let mut args = rig.start_args("img@5");
    args.extend(["--nodeset-unused"].map(String::from));
    args.pop();
    args[3] = "@compute!n07".into();
    args.extend(
        [
            "--canary",
            "0",
            "--max-failed",
            "1",
            "--connect-timeout",
            "2",
        ]
        .map(String::from),
    );
    let (code, v) = rig.rollout(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["rollout"]["state"], "done");
    assert!(states(&v).contains(&"n04=failed".to_string()));
    let versions = rig.versions();
    assert_eq!(
        versions.iter().filter(|x| *x == "5").count(),
        6,
        "{versions:?}"
    );
    eprintln!(
        "rollout of a good revision over 8 nodes: {:.1} s",
        good_rollout.as_secs_f64()
    );
}

/// Where a rollout test's node keeps its stage, under its root.
const NODE_STAGE: &str = "srv/node/var/lib/aurum-node/stage";

/// A rollout with --stage: every node of a wave stages the revision before any activates it
/// (the events say so), the rollout ends done with no stage left; a revision failing its
/// health check stops at the canary, which is back on its previous revision, and the nodes of
/// the later wave were never staged; a node that cannot stage stops the wave before any node
/// activates, and the others' stages are freed.
#[test]
fn staged_rollouts_stage_each_wave_before_activating() {
    if !fleet_can_run() || !can_run(Path::new("/bin/busybox").exists(), "busybox-static") {
        return;
    }
    let rig = RolloutRig::new(4, &[(1, true), (2, true), (3, false), (4, true)]);
    let started = std::time::Instant::now();
    let (code, v) = rig.start("img@2", &["--stage", "--canary", "1", "--waves", "100%"]);
    let took = started.elapsed();
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["rollout"]["state"], "done", "{v}");
    assert_eq!(v["rollout"]["plan"]["stage"], true, "{v}");
    assert!(states(&v).iter().all(|s| s.ends_with("=done")), "{v}");
    assert_eq!(rig.versions(), vec!["2"; 4]);
    // Wave 1 (n02..n04): all three staged before the first activation.
    let events: Vec<String> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["node"].as_str().is_some_and(|n| n != "n01"))
        .map(|e| e["event"].as_str().unwrap_or_default().to_string())
        .collect();
    let last_staged = events.iter().rposition(|e| e.contains("staged img@2"));
    let first_activation = events.iter().position(|e| e.contains("activating img@2"));
    assert_eq!(
        events.iter().filter(|e| e.contains("staged img@2")).count(),
        3,
        "{events:?}"
    );
    assert!(last_staged < first_activation, "{events:?}");
    for n in &rig.fleet.nodes {
        let stage = rig.fleet.root(n).join(NODE_STAGE);
        assert!(!stage.exists(), "{n} kept its stage after activating");
    }

    let (code, v) = rig.start("img@3", &["--stage", "--canary", "1", "--waves", "100%"]);
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(v["rollout"]["state"], "failed", "{v}");
    let s = states(&v);
    assert_eq!(s[0], "n01=failed", "{v}");
    assert!(s[1..].iter().all(|s| s.ends_with("=pending")), "{v}");
    assert_eq!(rig.versions(), vec!["2"; 4], "the canary is back on img@2");
    for n in &rig.fleet.nodes[1..] {
        let stage = rig.fleet.root(n).join(NODE_STAGE);
        assert!(!stage.exists(), "{n} of a wave never reached was staged");
    }

    // A node that cannot stage (sshd killed) with --max-failed 0: the wave stops before any
    // node activates, and the others' stages are freed.
    sh(&format!(
        "kill $(cat '{}/run/sshd.pid')",
        rig.fleet.root("n03").display()
    ));
    let (code, v) = rig.start(
        "img@4",
        &[
            "--stage",
            "--canary",
            "0",
            "--waves",
            "100%",
            "--connect-timeout",
            "2",
        ],
    );
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(v["rollout"]["state"], "failed", "{v}");
    assert!(states(&v).contains(&"n03=failed".to_string()), "{v}");
    assert_eq!(rig.versions(), vec!["2"; 4], "no node activated");
    for n in &rig.fleet.nodes {
        let stage = rig.fleet.root(n).join(NODE_STAGE);
        assert!(!stage.exists(), "{n} kept a stage of a stopped wave");
    }
    eprintln!(
        "staged rollout of a good revision over 4 nodes: {:.1} s",
        took.as_secs_f64()
    );
}

/// A real Slurm cluster (tests/rig/slurm) on a fleet: slurmctld on the master, a slurmd in
/// every node; stopped when dropped (before the fleet is).
struct Slurm<'a> {
    fleet: &'a Fleet,
}

fn slurm_rig() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/rig/slurm")
}

impl<'a> Slurm<'a> {
    fn up(fleet: &'a Fleet) -> Slurm<'a> {
        let out = Command::new(slurm_rig())
            .arg("up")
            .arg("--state")
            .arg(&fleet.state)
            .output()
            .unwrap();
        let slurm = Slurm { fleet };
        assert!(
            out.status.success(),
            "slurm up: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        slurm
    }

    /// The path of slurm.conf on the master (SLURM_CONF for Slurm's commands there).
    fn conf(&self) -> PathBuf {
        self.fleet.state.join("slurm/slurm.conf")
    }

    /// aurum run on the master on the rig's repository, Slurm's commands reaching this cluster.
    fn aurum(&self, rig: &RolloutRig, args: &[String]) -> std::process::Output {
        let repo = rig.env.repo();
        let mut cmd = vec![
            "env".to_string(),
            format!("SLURM_CONF={}", self.conf().display()),
            env!("CARGO_BIN_EXE_aurum").to_string(),
            "--repo".to_string(),
            repo.display().to_string(),
            "--no-progress".to_string(),
        ];
        cmd.extend(args.iter().cloned());
        self.fleet
            .on_master(&cmd.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// A Slurm command run on the master, times as seconds since the epoch; its output.
    fn ctl(&self, args: &[&str]) -> String {
        let out = Command::new(slurm_rig())
            .arg("ctl")
            .arg("--state")
            .arg(&self.fleet.state)
            .args(args)
            .env("SLURM_TIME_FORMAT", "%s")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `KEY=value` of a `scontrol show ... --oneliner` line.
    fn field(line: &str, key: &str) -> String {
        line.split(' ')
            .find_map(|w| w.strip_prefix(&format!("{key}=")))
            .unwrap_or("")
            .to_string()
    }

    /// A node's state and drain reason as scontrol shows them.
    fn node(&self, node: &str) -> (String, String) {
        let line = self.ctl(&["scontrol", "show", "node", node, "--oneliner"]);
        let reason = line
            .split_once(" Reason=")
            .map(|(_, r)| r.trim().to_string())
            .unwrap_or_default();
        (Slurm::field(&line, "State"), reason)
    }
}

impl Drop for Slurm<'_> {
    fn drop(&mut self) {
        let _ = Command::new(slurm_rig())
            .arg("down")
            .arg("--state")
            .arg(&self.fleet.state)
            .status();
    }
}

/// A job as Slurm recorded it: id, node, state, exit code, start and end (epoch seconds).
#[derive(Debug)]
struct SlurmJob {
    id: u64,
    nodes: String,
    state: String,
    exit: String,
    start: i64,
    end: i64,
}

/// `aurum rollout start --slurm` on 4 nodes of a real Slurm cluster, with jobs (sbatch and
/// srun) running all along: each node is drained, activated (and rebooted: its slurmd
/// restarted) only once no job runs on it, checked and resumed; no job is lost; the node whose
/// health check fails stays drained with aurum's reason and is not rolled back. The timeline
/// (the rollout's events against the jobs Slurm ran) shows no job on a node while it was out.
#[test]
fn slurm_rollouts_reboot_no_node_under_a_job() {
    if !fleet_can_run()
        || !can_run(Path::new("/bin/busybox").exists(), "busybox-static")
        || !can_run(
            have("slurmctld") && have("slurmd") && have("scontrol"),
            "slurmctld, slurmd and slurm-client",
        )
    {
        return;
    }
    // Revision 2 carries a check that fails on n03 only (its "GPU" is missing).
    let rig = RolloutRig::new_with(4, &[(1, true), (2, true)], |v, root| {
        if v == 2 {
            let check = root.join("etc/aurum/health/required.d/20-gpu");
            std::fs::write(
                &check,
                "#!/bin/sh\n[ \"$(hostname)\" != n03 ] || { echo no GPU; exit 1; }\n",
            )
            .unwrap();
            sh(&format!("chmod 755 '{}'", check.display()));
        }
    });
    let slurm = Slurm::up(&rig.fleet);
    let began = std::time::Instant::now();

    // A job on every node when the rollout starts, then a stream of batch jobs and two
    // interactive ones (srun) that keep going while it runs.
    for _ in 0..4 {
        slurm.ctl(&["sbatch", "--output=/dev/null", "--wrap", "sleep 8"]);
    }
    let stop = std::sync::atomic::AtomicBool::new(false);
    let srun_failures = std::sync::atomic::AtomicUsize::new(0);
    let (code, v, submitted) = std::thread::scope(|s| {
        let feeder = s.spawn(|| {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                slurm.ctl(&["sbatch", "--output=/dev/null", "--wrap", "sleep 3"]);
                n += 1;
                std::thread::sleep(std::time::Duration::from_millis(2500));
            }
            n
        });
        let mut sruns = Vec::new();
        for _ in 0..2 {
            sruns.push(s.spawn(|| {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let ok = Command::new(slurm_rig())
                        .args(["ctl", "--state"])
                        .arg(&rig.fleet.state)
                        .args(["srun", "-N1", "sleep", "2"])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .unwrap()
                        .success();
                    if !ok {
                        srun_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    n += 1;
                }
                n
            }));
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
        let mut args = rig.start_args("img@2");
        args.extend(
            [
                "--slurm",
                "--canary",
                "1",
                "--waves",
                "100%",
                "--max-unavailable",
                "1",
                "--max-failed",
                "1",
                "--reboot-command",
                "/usr/local/sbin/simulated-reboot",
                "--boot-timeout",
                "60",
            ]
            .map(String::from),
        );
        let out = slurm.aurum(&rig, &args);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
        let batch = feeder.join().unwrap();
        let interactive: usize = sruns.into_iter().map(|h| h.join().unwrap()).sum();
        (out.status.code(), v, 4 + batch + interactive)
    });
    let rollout_took = began.elapsed();

    // The rollout: done with one failure tolerated, n03 failed and left drained.
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["rollout"]["state"], "done", "{v}");
    let s = states(&v);
    assert_eq!(s, ["n01=done", "n02=done", "n03=failed", "n04=done"], "{v}");
    let detail = v["nodes"][2]["detail"].as_str().unwrap();
    assert!(
        detail.contains("unhealthy (20-gpu)") && detail.contains("left drained"),
        "{detail}"
    );
    // Every node on the new revision, n03 too: it was not rolled back.
    assert_eq!(rig.versions(), vec!["2"; 4]);
    for node in ["n01", "n02", "n04"] {
        let (state, reason) = slurm.node(node);
        assert!(!state.contains("DRAIN"), "{node} is {state} ({reason})");
    }
    let (state, reason) = slurm.node("n03");
    assert!(state.contains("DRAIN"), "n03 is {state}");
    assert!(
        reason.starts_with("aurum: rollout 1: img@2: unhealthy (20-gpu)"),
        "{reason}"
    );

    // Every job submitted ran to its end: none lost, none failed.
    for _ in 0..120 {
        if slurm.ctl(&["squeue", "--noheader"]).trim().is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    assert_eq!(srun_failures.load(std::sync::atomic::Ordering::Relaxed), 0);
    let jobs: Vec<SlurmJob> = slurm
        .ctl(&["scontrol", "show", "job", "--oneliner"])
        .lines()
        .filter(|l| l.starts_with("JobId="))
        .map(|l| SlurmJob {
            id: Slurm::field(l, "JobId").parse().unwrap(),
            nodes: Slurm::field(l, "NodeList"),
            state: Slurm::field(l, "JobState"),
            exit: Slurm::field(l, "ExitCode"),
            start: Slurm::field(l, "StartTime").parse().unwrap_or(0),
            end: Slurm::field(l, "EndTime").parse().unwrap_or(0),
        })
        .collect();
    assert_eq!(jobs.len(), submitted, "{jobs:?}");
    for j in &jobs {
        assert_eq!(
            (j.state.as_str(), j.exit.as_str()),
            ("COMPLETED", "0:0"),
            "{j:?}"
        );
    }
    // sacct reads the same from Slurm's job completion log.
    let sacct = slurm.ctl(&[
        "sacct",
        "--completion",
        "--noheader",
        "--parsable2",
        "--format=JobID,State",
    ]);
    let completed = sacct.lines().filter(|l| l.ends_with("|COMPLETED")).count();
    assert_eq!(completed, submitted, "{sacct}");

    // The timeline: per node, when it was drained, activated, back; no job ran on a node
    // from its activation to its return, and at least the canary had a job to wait for.
    let events = v["events"].as_array().unwrap();
    let at = |node: &str, prefix: &str| -> i64 {
        events
            .iter()
            .find(|e| e["node"] == node && e["event"].as_str().unwrap().starts_with(prefix))
            .unwrap_or_else(|| panic!("{node}: no `{prefix}` event in {events:?}"))["time"]
            .as_i64()
            .unwrap()
    };
    let start = at("n01", "pending: staging");
    let mut waited_for_jobs = 0;
    eprintln!("slurm rollout timeline (s after the rollout began):");
    for node in &rig.fleet.nodes {
        let drained = at(node, "draining");
        let activated = at(node, "updating: no job runs");
        let back = events
            .iter()
            .rev()
            .find(|e| e["node"] == node.as_str())
            .unwrap()["time"]
            .as_i64()
            .unwrap();
        let on_node: Vec<&SlurmJob> = jobs.iter().filter(|j| j.nodes == *node).collect();
        for j in &on_node {
            assert!(
                j.end <= activated || j.start >= back,
                "job {} ran on {node} from {} to {} while it was out ({activated}..{back})",
                j.id,
                j.start,
                j.end
            );
        }
        let waited = on_node
            .iter()
            .filter(|j| j.start <= drained && j.end > drained)
            .count();
        waited_for_jobs += usize::from(waited > 0);
        eprintln!(
            "  {node}: drained {:>3}, {waited} job(s) running then; activated {:>3}, back {:>3}; {} job(s) ran on it",
            drained - start,
            activated - start,
            back - start,
            on_node.len()
        );
    }
    assert!(
        waited_for_jobs >= 1,
        "no drain waited for a job: the test proves nothing"
    );

    // As Slurm's HealthCheckProgram: n03 still fails and keeps an aurum reason; a healthy
    // node that a failed check had drained is resumed.
    let out = rig.fleet.on_master(&[
        "ssh",
        "-i",
        rig.fleet.state.join("id_ed25519").to_str().unwrap(),
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
        &format!("root@{}", rig.fleet.address("n03")),
        "aurum --quiet health --slurm --root /srv/node",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let (_, reason) = slurm.node("n03");
    assert!(
        reason.starts_with("aurum: health: 20-gpu failed"),
        "{reason}"
    );
    slurm.ctl(&[
        "scontrol",
        "update",
        "nodename=n01",
        "state=drain",
        "reason=aurum: health: 20-gpu failed",
    ]);
    let said = rig
        .fleet
        .ssh("n01", "aurum health --slurm --root /srv/node");
    assert!(said.contains("resumed"), "{said}");
    assert!(!slurm.node("n01").0.contains("DRAIN"));
    // An administrator's drain is not aurum's to lift.
    slurm.ctl(&[
        "scontrol",
        "update",
        "nodename=n02",
        "state=drain",
        "reason=bad DIMM",
    ]);
    rig.fleet
        .ssh("n02", "aurum --quiet health --slurm --root /srv/node");
    assert!(slurm.node("n02").1.starts_with("bad DIMM"));

    // A node Slurm does not know: refused before anything starts.
    rig.env.ok(&[
        "node",
        "add",
        "n09",
        "--mac",
        "52:54:00:00:01:09",
        "--ip",
        &rig.fleet.address("n09"),
    ]);
    let mut args = rig.start_args("img@1");
    args[3] = "n[01,09]".into();
    args.push("--slurm".into());
    let out = slurm.aurum(&rig, &args);
    assert_eq!(out.status.code(), Some(2));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("Slurm knows no node n09"), "{said}");
    let listed = rig.aurum(&["rollout", "status", "--json"]);
    assert_eq!(
        crate::common::json(&String::from_utf8_lossy(&listed.stdout))
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // A job that outlasts --drain-timeout: its node is resumed, not updated, its stage freed,
    // and the job runs on.
    let job = slurm.ctl(&[
        "sbatch",
        "--parsable",
        "-w",
        "n04",
        "--output=/dev/null",
        "--wrap",
        "sleep 120",
    ]);
    let job = job.trim();
    let job_state = || {
        slurm
            .ctl(&["squeue", "--noheader", "-j", job, "-o", "%T"])
            .trim()
            .to_string()
    };
    for _ in 0..100 {
        if job_state() == "RUNNING" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(job_state(), "RUNNING");
    let mut args = rig.start_args("img@1");
    args[3] = "n04".into();
    args.extend(["--slurm", "--canary", "0", "--drain-timeout", "3"].map(String::from));
    let out = slurm.aurum(&rig, &args);
    assert_eq!(out.status.code(), Some(1));
    let v = crate::common::json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(v["nodes"][0]["state"], "failed", "{v}");
    let detail = v["nodes"][0]["detail"].as_str().unwrap();
    assert!(
        detail.contains(
            "jobs still ran after --drain-timeout 3 s; resumed in Slurm, not updated; stage freed"
        ),
        "{detail}"
    );
    assert_eq!(job_state(), "RUNNING", "the job was touched");
    assert!(!slurm.node("n04").0.contains("DRAIN"));
    assert_eq!(rig.versions()[3], "2");
    assert!(!rig.fleet.root("n04").join(NODE_STAGE).exists());
    slurm.ctl(&["scancel", job]);
    eprintln!(
        "slurm rollout of 4 nodes with {submitted} jobs: {:.1} s, jobs lost 0, nodes waiting for jobs at their drain: {waited_for_jobs}",
        rollout_took.as_secs_f64()
    );
}

/// A rollout paused between waves stops there and `resume` finishes it; a driver killed
/// mid-wave (the master restarting) leaves it running, and `resume` drives it on to the end.
#[test]
fn rollouts_pause_resume_and_survive_a_master_restart() {
    if !fleet_can_run() || !can_run(Path::new("/bin/busybox").exists(), "busybox-static") {
        return;
    }
    let rig = RolloutRig::new(8, &[(1, true), (2, true), (3, true)]);
    let status = |id: &str| {
        let out = rig.aurum(&["rollout", "status", id, "--json"]);
        // Null until the rollout exists.
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    };
    let spawn = |args: &[String]| {
        let repo = rig.env.repo();
        let mut cmd = vec![
            env!("CARGO_BIN_EXE_aurum"),
            "--repo",
            repo.to_str().unwrap(),
            "--no-progress",
        ];
        cmd.extend(args.iter().map(String::as_str));
        rig.fleet.spawn_on_master(&cmd)
    };
    let wait_for = |id: &str, what: &str, ok: &dyn Fn(&serde_json::Value) -> bool| {
        for _ in 0..600 {
            let v = status(id);
            if ok(&v) {
                return v;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("rollout {id}: {what} never happened: {}", status(id));
    };

    // Paused in the window between the canary and the next wave.
    let mut args = rig.start_args("img@2");
    args.extend(["--canary", "1", "--waves", "100%", "--pause-between", "30"].map(String::from));
    let mut driver = spawn(&args);
    wait_for("1", "the canary", &|v| v["nodes"][0]["state"] == "done");
    let out = rig.aurum(&["rollout", "pause", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        driver.wait().unwrap().success(),
        "a paused rollout is no failure"
    );
    let v = status("1");
    assert_eq!(v["rollout"]["state"], "paused", "{v}");
    assert_eq!(rig.versions().iter().filter(|x| *x == "2").count(), 1);
    let out = rig.aurum(&["rollout", "resume", "1", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(status("1")["rollout"]["state"], "done");
    assert_eq!(rig.versions(), vec!["2"; 8]);

    // The driver killed mid-wave, one node at a time: the rollout stays running, and resume
    // ends it with every node on the revision.
    let mut args = rig.start_args("img@3");
    args.extend(["--canary", "0", "--waves", "100%", "--max-unavailable", "1"].map(String::from));
    let mut driver = spawn(&args);
    wait_for("2", "a third node done", &|v| {
        v["nodes"]
            .as_array()
            .is_some_and(|n| n.iter().filter(|n| n["state"] == "done").count() >= 3)
    });
    // (`fleet master` and `ip netns exec` exec the driver: its pid is the child's.)
    driver.kill().unwrap();
    let _ = driver.wait();
    assert!(
        !sh("ps -eo args").contains("rollout start img@3"),
        "the driver survived"
    );
    let v = status("2");
    assert_eq!(v["rollout"]["state"], "running", "{v}");
    assert!(
        rig.versions().iter().any(|x| x == "2"),
        "killed before the end"
    );
    let out = rig.aurum(&["rollout", "resume", "2", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = status("2");
    assert_eq!(v["rollout"]["state"], "done", "{v}");
    assert_eq!(rig.versions(), vec!["3"; 8]);
    let events: Vec<&str> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("done: every wave passed")),
        "{events:?}"
    );

    // Aborted after its canary: every node it moved goes back, and it reads aborted.
    let mut args = rig.start_args("img@2");
    args.extend(["--canary", "1", "--waves", "100%", "--pause-between", "30"].map(String::from));
    let mut driver = spawn(&args);
    wait_for("3", "the canary", &|v| v["nodes"][0]["state"] == "done");
    assert_eq!(rig.versions()[0], "2");
    let out = rig.aurum(&["rollout", "abort", "3"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exit = driver.wait().unwrap();
    assert_eq!(exit.code(), Some(1), "an aborted rollout exits 1");
    let v = status("3");
    assert_eq!(v["rollout"]["state"], "aborted", "{v}");
    assert_eq!(v["nodes"][0]["state"], "rolled-back", "{v}");
    assert_eq!(rig.versions(), vec!["3"; 8], "the canary went back");
}

/// The status page of `aurum serve`, in headless Chromium: it shows each node's revision and
/// health, and updates by itself (no reload by the browser) while a rollout runs.
#[test]
fn the_status_page_follows_a_rollout_in_a_browser() {
    if !fleet_can_run()
        || !can_run(Path::new("/bin/busybox").exists(), "busybox-static")
        || !can_run(
            have("chromium") && have("chromedriver"),
            "chromium and chromium-driver",
        )
        || !can_run(
            Command::new("/usr/bin/python3")
                .args(["-c", "import selenium"])
                .status()
                .is_ok_and(|s| s.success()),
            "selenium for python3 (python3-selenium)",
        )
    {
        return;
    }
    let rig = RolloutRig::new(3, &[(1, true), (2, true)]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/statuspage.py");
    let url = format!("http://{}:8035/", rig.fleet.master);
    let watch = |checks: serde_json::Value, timeout: u32| {
        let checks = checks.to_string();
        let timeout = timeout.to_string();
        rig.fleet.spawn_capturing(&[
            "/usr/bin/python3",
            script.to_str().unwrap(),
            &url,
            &checks,
            &timeout,
        ])
    };
    let finish = |child: Child| {
        let out = child.wait_with_output().unwrap();
        let shown = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "the page never showed it: {shown}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        crate::common::json(&shown)
    };

    // Before: every node on img@1.
    let before = finish(watch(
        serde_json::json!([
            ["node", "n01", "revision", "img@1"],
            ["node", "n03", "revision", "img@1"]
        ]),
        60,
    ));
    assert_eq!(before["node"]["n02"]["rollout"], "-");

    // One browser watches the whole rollout: the page must bring the canary's new revision and
    // health, then the end, through its own refreshes.
    let browser = watch(
        serde_json::json!([
            ["node", "n01", "revision", "img@2"],
            ["node", "n01", "health", "healthy"],
            ["node", "n03", "revision", "img@2"],
            ["node", "n03", "rollout", "done"],
            ["rollout", "1", "state", "done"],
        ]),
        120,
    );
    std::thread::sleep(std::time::Duration::from_secs(3));
    let (code, v) = rig.start("img@2", &["--canary", "1", "--pause-between", "6"]);
    assert_eq!(code, Some(0), "{v}");
    let after = finish(browser);
    assert!(
        after["node"]["n02"]["rollout"]
            .as_str()
            .unwrap()
            .contains("#1 wave 1 done"),
        "{after}"
    );
    // The page the browser opened before the rollout reloaded itself to show all this.
    assert_eq!(after["reloaded"], true, "{after}");
}

/// The test's stand-in for a diskless node's reboot (issue 21 item 3), run on the node by the
/// rollout's --reboot-command: what the boot kit does (`boot-memory`, asking the server by
/// MAC which revision the node boots, into a fresh tmpfs at /srv/mem) and what the image's
/// aurum-health.service does (`health`, reported to the server). QEMU does the real thing in
/// diskless::qemu_diskless_node_is_rolled_out_by_reboot_and_falls_back.
const FAKE_BOOT: &str = r#"#!/bin/sh
mac=$1
umount /srv/mem 2>/dev/null
mkdir -p /srv/mem
{
  echo "boot at $(date +%s)"
  aurum --no-progress boot-memory --server http://master:8035 --mac "$mac" --root /srv/mem --headroom 16 &&
  aurum --no-progress health --root /srv/mem --server http://master:8035
  echo "rc $?"
} >>/var/log/fake-boot.log 2>&1
"#;

/// A wave mixing a disk node (n01) and a diskless node (n02): the diskless node is updated by
/// a reboot into the revision its node database entry now names; an unhealthy revision makes
/// the disk node roll back and the diskless one fall back by a reboot into its last-known-good
/// revision; a node silent past --boot-timeout falls back too. `rollout status --json` says so.
#[test]
fn rollouts_reboot_diskless_nodes_and_fall_back() {
    if !fleet_can_run() || !can_run(Path::new("/bin/busybox").exists(), "busybox-static") {
        return;
    }
    let rig = RolloutRig::new(2, &[(1, true), (2, true), (3, false), (4, true)]);
    let mac = "52:54:00:00:01:02";
    let boot = rig.fleet.root("n02").join("usr/local/sbin/fake-boot");
    std::fs::write(&boot, FAKE_BOOT).unwrap();
    sh(&format!("chmod 755 '{}'", boot.display()));
    let reboot = format!("/usr/local/sbin/fake-boot {mac}");
    rig.env
        .ok(&["node", "set", "n02", "--rootfs", "memory", "--image", "img"]);
    // Its first boot, before any rollout: img@1 (the newest then was img@4, so pin it).
    rig.env.ok(&["node", "set", "n02", "--image", "img@1"]);
    rig.fleet.ssh("n02", &reboot);
    // The tmpfs is mounted in the node's own mount namespace (its sshd's): read it there.
    let mem_version = || {
        rig.fleet
            .ssh("n02", "cat /srv/mem/etc/version 2>/dev/null || true")
            .trim()
            .to_string()
    };
    assert_eq!(
        mem_version(),
        "1",
        "{}",
        rig.fleet.ssh("n02", "cat /var/log/fake-boot.log")
    );
    // The entry names a moving reference: the rollout must fall back to what the node booted
    // (img@1 then), not to what `img` names by then.
    rig.env.ok(&["node", "set", "n02", "--image", "img"]);
    let image_of = |node: &str| {
        let v = crate::common::json(&rig.env.ok(&["node", "show", node, "--json"]));
        v["node"]["image"].as_str().unwrap_or_default().to_string()
    };
    let detail = |v: &serde_json::Value, node: &str| -> String {
        v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node"] == node)
            .map(|n| n["detail"].as_str().unwrap().to_string())
            .unwrap()
    };
    let opts = [
        "--canary",
        "0",
        "--reboot-command",
        &reboot,
        "--boot-timeout",
        "60",
    ];

    let started = std::time::Instant::now();
    let (code, v) = rig.start("img@2", &opts);
    let good = started.elapsed();
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(states(&v), ["n01=done", "n02=done"], "{v}");
    assert_eq!(rig.versions()[0], "2");
    assert_eq!(mem_version(), "2", "n02 rebooted into img@2");
    assert_eq!(image_of("n02"), "img@2");
    assert!(detail(&v, "n02").contains("healthy: booted img@2"), "{v}");
    assert_eq!(v["nodes"][1]["previous"], "img@1", "{v}");

    // Unhealthy: n01 is rolled back, n02 falls back by a reboot into img@2.
    let started = std::time::Instant::now();
    let (code, v) = rig.start("img@3", &opts);
    let bad = started.elapsed();
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(v["rollout"]["state"], "failed");
    assert_eq!(states(&v), ["n01=failed", "n02=fell-back"], "{v}");
    let d = detail(&v, "n02");
    assert!(
        d.contains(
            "unhealthy on img@3 (10-service); fell back to img@2: rebooted into it, healthy"
        ),
        "{d}"
    );
    assert_eq!(rig.versions()[0], "2");
    assert_eq!(mem_version(), "2", "n02 is back on img@2");
    assert_eq!(image_of("n02"), "img@2");
    let log = rig.fleet.ssh("n02", "cat /var/log/fake-boot.log");
    assert_eq!(log.matches("boot at").count(), 4, "{log}");

    // A node that never reports (its reboot does nothing): after --boot-timeout its entry is
    // put back on img@2, but that reboot does nothing either, so it is failed, not fell-back
    // (it is not seen healthy on any revision).
    let mut args = rig.start_args("img@4");
    args[3] = "n02".into();
    args.extend(
        [
            "--canary",
            "0",
            "--reboot-command",
            "true",
            "--boot-timeout",
            "3",
        ]
        .map(String::from),
    );
    let (code, v) = rig.rollout(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(states(&v), ["n02=failed"], "{v}");
    let d = detail(&v, "n02");
    assert!(
        d.starts_with("no boot report of img@4 within 3 s of its reboot")
            && d.contains("its node database entry is back on img@2, but after the reboot into it: no boot report of img@2"),
        "{d}"
    );
    assert_eq!(image_of("n02"), "img@2");
    let text = rig.env.ok(&["rollout", "status", "3"]);
    assert!(text.contains("failed n02"), "{text}");
    eprintln!(
        "mixed wave (disk + diskless by reboot): good revision {:.1} s, unhealthy one with fallback {:.1} s",
        good.as_secs_f64(),
        bad.as_secs_f64()
    );
}
