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
        fleet.nodes = value("FLEET_NODES").split(' ').map(str::to_string).collect();
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

    /// Starts `cmd` in the master's namespace.
    pub fn spawn_on_master(&self, cmd: &[&str]) -> Child {
        self.rig("master")
            .args(cmd)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
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
        panic!("nothing listens on {}:{port} in the master namespace", self.master);
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
    let repo = env.repo();
    let listen = format!("{}:8035", fleet.master);
    let mut serve = fleet.spawn_on_master(&[
        env!("CARGO_BIN_EXE_aurum"),
        "--repo",
        repo.to_str().unwrap(),
        "serve",
        "--listen",
        &listen,
    ]);
    fleet.wait_port(8035);
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
        assert!(nodes.contains(&format!("\"{node}\"")), "{node} not in {nodes}");
    }
    serve.kill().unwrap();
    serve.wait().unwrap();
    let state = fleet.state.clone();
    drop(fleet);
    assert!(!state.exists(), "fleet down left {}", state.display());
    assert!(!sh("mount").contains(state.to_str().unwrap()), "fleet down left mounts");
}
