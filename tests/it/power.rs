//! `aurum power` and `aurum reinstall` against real BMC simulators on 127.0.0.1: OpenIPMI's
//! `ipmi_sim` (Debian openipmi) spoken to by the real `ipmitool` over IPMI v2.0 lanplus, and
//! sushy-tools' `sushy-emulator` (PyPI) as a Redfish BMC, over HTTP and over HTTPS with the
//! BMC's own certificate. ipmi_sim's chassis-control script records the power state and boot
//! device, and boots a simulated node: a process that reads its netboot entry from `aurum
//! serve` and reports install phases as the boot kit does. Passwords must never show in
//! output, logs, the process table or the catalog.

use std::fs;
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{json, need, Env};
use crate::serve::Server;

pub(crate) const IPMI_PASSWORD: &str = "ipmi-S3cret-77";
const REDFISH_PASSWORD: &str = "rf-S3cret-42";

/// The simulated node ipmi_sim boots: reads the BMC's boot device (a one-time override, so
/// it is reset), then its iPXE script from `aurum serve`, and when that installs, reports
/// the phases of an install (or a failure, when the file `fail` exists).
const NODE_PY: &str = r#"
import json, os, re, sys, time, urllib.request
state, server, node, mac = sys.argv[1:5]
def log(m):
    with open(os.path.join(state, "node.log"), "a") as f:
        f.write(m + "\n")
boot_file = os.path.join(state, "boot")
boot = open(boot_file).read().strip() if os.path.exists(boot_file) else "default"
open(boot_file, "w").write("default\n")
if boot != "pxe":
    log("boot from disk (boot device %s)" % boot)
    sys.exit(0)
script = urllib.request.urlopen("%s/boot/%s.ipxe" % (server, mac)).read().decode()
if "kernel " not in script:
    log("netboot entry boots the local disk")
    sys.exit(0)
log("netboot entry installs")
# The boot kit's installer reports with the token the script gives it.
token = re.search(r"aurum\.token=(\S+)", script).group(1)
def post(phase, detail, revision=None):
    body = {"phase": phase, "detail": detail}
    if revision:
        body["revision"] = revision
    req = urllib.request.Request("%s/api/v1/install/%s" % (server, node),
        data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "Authorization": "Bearer " + token})
    urllib.request.urlopen(req).read()
    time.sleep(0.2)
post("facts", "1 disk")
post("partition", "/dev/vda")
post("transfer", "12 of 12 files", "tiny@1 5151")
if os.path.exists(os.path.join(state, "fail")):
    post("failed", "sgdisk: cannot open /dev/vda")
else:
    post("done", "installed", "tiny@1 5151")
log("install reported")
"#;

/// ipmi_sim's chassis control: `get power|boot...` and `set power N|reset 1|boot DEV...`.
const CHASSIS_SH: &str = r#"#!/bin/sh
state=$(dirname "$0")
echo "$@" >> "$state/calls.log"
op=$1; shift
# With a QEMU node (qemu.sh), the power is whether its QEMU runs.
power_now() {
  if [ -x "$state/qemu.sh" ]; then
    [ -s "$state/qemu.pid" ] && kill -0 "$(cat "$state/qemu.pid")" 2>/dev/null && echo 1 || echo 0
  else
    cat "$state/power" 2>/dev/null || echo 0
  fi
}
boot_node() {
  if [ -x "$state/qemu.sh" ]; then
    [ -s "$state/qemu.pid" ] && kill "$(cat "$state/qemu.pid")" 2>/dev/null
    setsid "$state/qemu.sh" >>"$state/node.log" 2>&1 </dev/null &
  elif [ -s "$state/node.args" ]; then
    setsid python3 "$state/node.py" "$state" $(cat "$state/node.args") >>"$state/node.log" 2>&1 </dev/null &
  fi
}
case "$op" in
get)
  for p in "$@"; do
    case $p in
      power) echo "power:$(power_now)" ;;
      boot) echo "boot:$(cat "$state/boot" 2>/dev/null || echo default)" ;;
    esac
  done ;;
set)
  while [ -n "$1" ]; do
    case $1 in
      power)
        was=$(power_now)
        echo "$2" > "$state/power"
        if [ "$2" = 1 ] && [ "$was" = 0 ]; then boot_node; fi
        if [ "$2" = 0 ] && [ -s "$state/qemu.pid" ]; then kill "$(cat "$state/qemu.pid")" 2>/dev/null; fi ;;
      reset) boot_node ;;
      boot) echo "$2" > "$state/boot" ;;
    esac
    shift 2
  done ;;
esac
"#;

/// A free UDP port on 127.0.0.1 (free when this returns; nothing else here takes ports).
fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes `text` to `path` with mode `mode`.
fn write_mode(path: &Path, text: &str, mode: u32) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A running ipmi_sim, killed when dropped; its chassis state in `state`. With an executable
/// `state/qemu.sh` (which writes its pid to `state/qemu.pid` and execs QEMU), the BMC powers a
/// QEMU node: power on and reset start that script (killing a running guest first), power off
/// kills the guest, and dropping the BMC kills it too.
pub(crate) struct IpmiSim {
    child: Child,
    pub(crate) state: PathBuf,
    pub(crate) addr: String,
}

impl IpmiSim {
    pub(crate) fn start(dir: &Path) -> IpmiSim {
        let state = dir.join("bmc");
        fs::create_dir_all(&state).unwrap();
        let port = free_udp_port();
        let chassis = state.join("chassis.sh");
        write_mode(&chassis, CHASSIS_SH, 0o755);
        write_mode(&state.join("node.py"), NODE_PY, 0o644);
        let conf = format!(
            r#"name "aurumtest"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 {port}
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid a123456789abcdefa123456789abcdef
  endlan
  chassis_control "{}"
  user 2 true "admin" "{IPMI_PASSWORD}" admin 10 none md2 md5 straight
"#,
            chassis.display()
        );
        write_mode(&state.join("lan.conf"), &conf, 0o600);
        fs::write(
            state.join("sim.emu"),
            "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\nsel_enable 0x20 1000 0x0a\nmc_enable 0x20\n",
        )
        .unwrap();
        let child = Command::new("ipmi_sim")
            .arg("-c")
            .arg(state.join("lan.conf"))
            .arg("-f")
            .arg(state.join("sim.emu"))
            .arg("-s")
            .arg(state.join("persist"))
            .arg("-n")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(state.join("ipmi_sim.log")).unwrap())
            .spawn()
            .expect("start ipmi_sim");
        let sim = IpmiSim {
            child,
            state,
            addr: format!("127.0.0.1:{port}"),
        };
        // Ready once it answers a session (ipmitool itself, with the password from a file).
        let pw = dir.join("probe-pw");
        write_mode(&pw, IPMI_PASSWORD, 0o600);
        let ready = wait_for(Duration::from_secs(20), || {
            Command::new("ipmitool")
                .args(["-I", "lanplus", "-C", "3", "-H", "127.0.0.1", "-p"])
                .arg(port.to_string())
                .args(["-U", "admin", "-f"])
                .arg(&pw)
                .args(["-N", "1", "-R", "1", "chassis", "power", "status"])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        });
        assert!(
            ready,
            "ipmi_sim did not answer: {}",
            sim.file("ipmi_sim.log")
        );
        let _ = fs::remove_file(sim.state.join("calls.log"));
        sim
    }

    pub(crate) fn file(&self, name: &str) -> String {
        fs::read_to_string(self.state.join(name)).unwrap_or_default()
    }

    fn power(&self) -> String {
        self.file("power").trim().to_string()
    }
}

impl Drop for IpmiSim {
    fn drop(&mut self) {
        // A QEMU node the BMC started goes with it.
        if let Ok(pid) = fs::read_to_string(self.state.join("qemu.pid")) {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running sushy-emulator (fake systems driver, basic auth), killed when dropped.
struct Sushy {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Sushy {
    /// Over HTTPS with `tls` = (certificate, key), else HTTP.
    fn start(dir: &Path, tls: Option<(&Path, &Path)>) -> Sushy {
        let sd = dir.join(if tls.is_some() { "sushy-tls" } else { "sushy" });
        fs::create_dir_all(&sd).unwrap();
        // The users file is htpasswd's bcrypt form, made with the bcrypt sushy-tools uses.
        let hash = Command::new("python3")
            .args([
                "-c",
                "import bcrypt,sys;print(bcrypt.hashpw(sys.stdin.read().encode(),bcrypt.gensalt()).decode())",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(REDFISH_PASSWORD.as_bytes())?;
                c.wait_with_output()
            })
            .unwrap();
        assert!(
            hash.status.success(),
            "bcrypt (from sushy-tools) in python3"
        );
        let users = sd.join("htpasswd");
        write_mode(
            &users,
            &format!("admin:{}", String::from_utf8_lossy(&hash.stdout)),
            0o600,
        );
        fs::write(
            sd.join("conf.py"),
            format!(
                "SUSHY_EMULATOR_AUTH_FILE = '{}'\nSUSHY_EMULATOR_STATE_DIR = '{}'\n",
                users.display(),
                sd.join("state").display()
            ),
        )
        .unwrap();
        let port = free_tcp_port();
        let log = sd.join("sushy.log");
        let mut c = Command::new("sushy-emulator");
        c.arg("--fake")
            .arg("--config")
            .arg(sd.join("conf.py"))
            .args(["-i", "127.0.0.1", "-p", &port.to_string()]);
        if let Some((cert, key)) = tls {
            c.arg("--ssl-certificate")
                .arg(cert)
                .arg("--ssl-key")
                .arg(key);
        }
        let child = c
            .stdin(Stdio::null())
            .stdout(fs::File::create(&log).unwrap())
            .stderr(Stdio::from(
                fs::File::options().append(true).open(&log).unwrap(),
            ))
            .spawn()
            .expect("start sushy-emulator");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let s = Sushy {
            child,
            url: format!("{scheme}://127.0.0.1:{port}"),
            log,
        };
        let up = wait_for(Duration::from_secs(30), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(
            up,
            "sushy-emulator did not start: {}",
            fs::read_to_string(&s.log).unwrap_or_default()
        );
        s
    }
}

impl Drop for Sushy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for(limit: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// Every piece of text the test saw from aurum, checked for passwords at the end.
#[derive(Default)]
struct Seen(String);

impl Seen {
    fn add(&mut self, o: &Output) -> String {
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        self.0.push_str(&out);
        self.0.push_str(&String::from_utf8_lossy(&o.stderr));
        out
    }

    /// No password in what was seen, in the repository's files (catalog and its journal
    /// included) or in `extra` files.
    fn assert_clean(&self, env: &Env, extra: &[&Path]) {
        for pw in [IPMI_PASSWORD, REDFISH_PASSWORD] {
            assert!(
                !self.0.contains(pw),
                "a password in aurum's output:\n{}",
                self.0
            );
            let mut files = vec![];
            collect(&env.repo(), &mut files);
            files.extend(extra.iter().map(|p| p.to_path_buf()));
            for f in files {
                let bytes = fs::read(&f).unwrap_or_default();
                assert!(
                    !bytes.windows(pw.len()).any(|w| w == pw.as_bytes()),
                    "a password in {}",
                    f.display()
                );
            }
        }
    }
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            collect(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Samples every process's command line and environment while it runs: how many ipmitool
/// processes it saw, and any command line or environment holding a password.
struct PsWatch {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<(usize, Vec<String>)>,
}

impl PsWatch {
    fn start() -> PsWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let (mut seen, mut leaks) = (std::collections::BTreeSet::new(), Vec::new());
            while !flag.load(Ordering::Relaxed) {
                for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
                    let pid = e.file_name().to_string_lossy().into_owned();
                    if !pid.bytes().all(|b| b.is_ascii_digit()) {
                        continue;
                    }
                    let cmdline = fs::read(e.path().join("cmdline")).unwrap_or_default();
                    let environ = fs::read(e.path().join("environ")).unwrap_or_default();
                    let cmd = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                    if cmd.starts_with("ipmitool ") {
                        seen.insert(pid.clone());
                    }
                    for pw in [IPMI_PASSWORD, REDFISH_PASSWORD] {
                        let env = String::from_utf8_lossy(&environ);
                        if cmd.contains(pw) || env.contains(pw) {
                            leaks.push(format!("pid {pid}: {cmd}"));
                        }
                    }
                }
            }
            (seen.len(), leaks)
        });
        PsWatch { stop, handle }
    }

    fn finish(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        let (seen, leaks) = self.handle.join().unwrap();
        assert!(
            leaks.is_empty(),
            "a password in the process table: {leaks:?}"
        );
        seen
    }
}

fn add_node(env: &Env, name: &str, mac: &str, extra: &[&str]) {
    let mut args = vec!["node", "add", name, "--mac", mac];
    args.extend_from_slice(extra);
    env.ok(&args);
}

/// The JSON array aurum printed, by node name.
fn by_node(out: &str) -> std::collections::BTreeMap<String, serde_json::Value> {
    json(out)
        .as_array()
        .expect("a JSON array")
        .iter()
        .map(|r| (r["node"].as_str().unwrap().to_string(), r.clone()))
        .collect()
}

#[test]
fn ipmi_power_and_boot_device_through_ipmi_sim_without_showing_the_password() {
    if !need("ipmi_sim") || !need("ipmitool") {
        return;
    }
    let env = Env::new();
    let sim = IpmiSim::start(env.dir.path());
    let pw = env.path("bmc-password");
    write_mode(&pw, &format!("{IPMI_PASSWORD}\n"), 0o600);
    let bad = env.path("bmc-wrong");
    write_mode(&bad, "not-it\n", 0o600);
    let (pw_s, bad_s) = (pw.to_str().unwrap(), bad.to_str().unwrap());
    let ipmi = ["--bmc-protocol", "ipmi", "--bmc-user", "admin"];
    for i in 1..=4 {
        let mac = format!("52:54:00:00:10:0{i}");
        let mut a = vec![
            "--bmc",
            &sim.addr,
            "--bmc-password-file",
            pw_s,
            "--group",
            "rack1",
        ];
        a.extend_from_slice(&ipmi);
        add_node(&env, &format!("n0{i}"), &mac, &a);
    }
    // One without a BMC, one with the wrong password, one whose BMC does not exist, one
    // whose BMC port swallows packets and never answers.
    add_node(&env, "n05", "52:54:00:00:10:05", &[]);
    let mut a = vec!["--bmc", &sim.addr, "--bmc-password-file", bad_s];
    a.extend_from_slice(&ipmi);
    add_node(&env, "n06", "52:54:00:00:10:06", &a);
    let closed = format!("127.0.0.1:{}", free_udp_port());
    let mut a = vec!["--bmc", &closed, "--bmc-password-file", pw_s];
    a.extend_from_slice(&ipmi);
    add_node(&env, "n07", "52:54:00:00:10:07", &a);
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    let mut a = vec!["--bmc", &silent_addr, "--bmc-password-file", pw_s];
    a.extend_from_slice(&ipmi);
    add_node(&env, "n08", "52:54:00:00:10:08", &a);

    let mut seen = Seen::default();
    let show = seen.add(&env.run(&["node", "show", "n01", "--json"]));
    let node = &json(&show)["node"];
    assert_eq!(node["bmc"], sim.addr.as_str());
    assert_eq!(node["bmc_protocol"], "ipmi");
    assert_eq!(node["bmc_user"], "admin");
    assert_eq!(node["bmc_password_file"], pw_s);
    let list = seen.add(&env.run(&["node", "list"]));
    assert!(list.contains(&format!("ipmi:{}", sim.addr)), "{list}");

    // The whole rack at once, watched in the process table.
    let watch = PsWatch::start();
    let t = Instant::now();
    let on = env.run(&["power", "on", "@rack1", "--json"]);
    let on_secs = t.elapsed().as_secs_f64();
    assert!(
        on.status.success(),
        "{}",
        String::from_utf8_lossy(&on.stderr)
    );
    let r = by_node(&seen.add(&on));
    assert_eq!(r.len(), 4);
    assert!(
        r.values()
            .all(|v| v["status"] == "ok" && v["protocol"] == "ipmi"),
        "{r:?}"
    );
    assert_eq!(sim.power(), "1");
    let t = Instant::now();
    let status = seen.add(&env.run(&["power", "status", "n[01-04]", "--json"]));
    let status_secs = t.elapsed().as_secs_f64();
    assert!(
        by_node(&status).values().all(|v| v["power"] == "on"),
        "{status}"
    );
    let out = seen.add(&env.run(&["power", "bootdev", "pxe", "n01", "--persistent", "--uefi"]));
    assert!(out.contains("n01: next boots: pxe (UEFI)"), "{out}");
    assert_eq!(sim.file("boot").trim(), "pxe");
    let out = seen.add(&env.run(&["power", "off", "n01"]));
    assert!(out.contains("n01: power off sent"), "{out}");
    assert_eq!(sim.power(), "0");
    assert!(seen
        .add(&env.run(&["power", "status", "n01"]))
        .contains("n01: off"));
    // A cycle of a node that is off powers it on.
    let out = seen.add(&env.run(&["power", "cycle", "n01", "--json"]));
    let r = by_node(&out);
    assert_eq!(r["n01"]["power"], "off");
    assert_eq!(r["n01"]["message"], "was off: power on sent");
    assert_eq!(sim.power(), "1");
    seen.add(&env.run(&["power", "reset", "n02"]));
    let calls = sim.file("calls.log");
    assert!(calls.contains("set reset 1"), "{calls}");
    assert!(calls.contains("set boot pxe"), "{calls}");
    let ipmitools = watch.finish();
    assert!(
        ipmitools > 0,
        "the process table was never sampled while ipmitool ran"
    );

    // The failures: one line each on stderr, a status per kind in JSON, the exit status the
    // number of failed nodes.
    let t = Instant::now();
    let bad = env.run(&["power", "status", "n[05-07]", "--timeout", "15", "--json"]);
    let bad_secs = t.elapsed().as_secs_f64();
    assert_eq!(
        bad.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let mut r = by_node(&seen.add(&bad));
    // A BMC that never answers, with a limit shorter than ipmitool's own retries.
    let slow = env.run(&["power", "status", "n08", "--timeout", "3", "--json"]);
    assert_eq!(slow.status.code(), Some(1));
    r.extend(by_node(&seen.add(&slow)));
    assert_eq!(r["n05"]["status"], "no-bmc");
    let m = r["n05"]["message"].as_str().unwrap();
    assert!(m.contains("aurum node set n05 --bmc ADDR"), "{m}");
    assert_eq!(r["n06"]["status"], "auth-failed", "{:?}", r["n06"]);
    assert!(r["n06"]["message"].as_str().unwrap().contains(bad_s));
    assert_eq!(r["n07"]["status"], "unreachable", "{:?}", r["n07"]);
    assert_eq!(r["n08"]["status"], "timeout", "{:?}", r["n08"]);
    let n08 = r["n08"]["seconds"].as_f64().unwrap();
    assert!((2.5..6.0).contains(&n08), "the 3 s limit took {n08} s");
    let text = env.run(&["power", "status", "n05", "n06"]);
    let err = String::from_utf8_lossy(&text.stderr).into_owned();
    seen.add(&text);
    assert!(
        err.contains("aurum: n06: the BMC at") && err.contains("refused user admin"),
        "{err}"
    );
    assert!(err.contains("0 of 2 BMCs succeeded"), "{err}");

    // Debug logging on: still no password.
    let v = env.run(&["-vv", "power", "status", "n01"]);
    seen.add(&v);
    drop(silent);
    seen.assert_clean(&env, &[]);
    eprintln!(
        "measured: power on of 4 nodes {on_secs:.2} s, status of 4 {status_secs:.2} s, 3 failing BMCs (no BMC, wrong password, closed port) {bad_secs:.2} s, a silent BMC with --timeout 3: {n08:.2} s; {ipmitools} ipmitool processes seen in /proc"
    );
}

/// A CA and the BMC's certificate for 127.0.0.1 signed by it: (CA, certificate, key).
fn bmc_certificate(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let p = |f: &str| dir.join(f).display().to_string();
    fs::write(
        dir.join("leaf.ext"),
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\n",
    )
    .unwrap();
    crate::common::sh(&format!(
        "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj '/CN=BMC test CA' -keyout {ca_key} -out {ca} 2>/dev/null
         openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout {key} -out {csr} 2>/dev/null
         openssl x509 -req -in {csr} -CA {ca} -CAkey {ca_key} -CAcreateserial -days 2 -extfile {ext} -out {cert} 2>/dev/null",
        ca_key = p("ca.key"),
        ca = p("ca.pem"),
        key = p("bmc.key"),
        csr = p("bmc.csr"),
        ext = p("leaf.ext"),
        cert = p("bmc.crt"),
    ));
    (dir.join("ca.pem"), dir.join("bmc.crt"), dir.join("bmc.key"))
}

#[test]
fn redfish_power_and_boot_device_through_sushy_tools() {
    if !need("sushy-emulator") || !need("openssl") {
        return;
    }
    let env = Env::new();
    let (ca, cert, key) = bmc_certificate(env.dir.path());
    let plain = Sushy::start(env.dir.path(), None);
    let tls = Sushy::start(env.dir.path(), Some((&cert, &key)));
    let pw = env.path("rf-password");
    write_mode(&pw, &format!("{REDFISH_PASSWORD}\n"), 0o600);
    let bad = env.path("rf-wrong");
    write_mode(&bad, "nope\n", 0o600);
    let (pw_s, bad_s, ca_s) = (
        pw.to_str().unwrap(),
        bad.to_str().unwrap(),
        ca.to_str().unwrap(),
    );
    let rf = ["--bmc-protocol", "redfish", "--bmc-user", "admin"];
    let node = |name: &str, mac: &str, addr: &str, pwf: &str, extra: &[&str]| {
        let mut a = vec!["--bmc", addr, "--bmc-password-file", pwf];
        a.extend_from_slice(&rf);
        a.extend_from_slice(extra);
        add_node(&env, name, mac, &a);
    };
    node("r01", "52:54:00:00:20:01", &plain.url, pw_s, &[]);
    node(
        "r02",
        "52:54:00:00:20:02",
        &tls.url,
        pw_s,
        &["--bmc-ca-file", ca_s],
    );
    node("r03", "52:54:00:00:20:03", &tls.url, pw_s, &[]);
    node("r04", "52:54:00:00:20:04", &plain.url, bad_s, &[]);
    let closed = format!("http://127.0.0.1:{}", free_tcp_port());
    node("r05", "52:54:00:00:20:05", &closed, pw_s, &[]);
    let mut seen = Seen::default();
    let show = seen.add(&env.run(&["node", "show", "r02"]));
    assert!(show.contains(&format!("bmc CA    {ca_s}")), "{show}");

    let t = Instant::now();
    let on = env.run(&["power", "on", "r01", "r02", "--json"]);
    let on_secs = t.elapsed().as_secs_f64();
    assert!(
        on.status.success(),
        "{}",
        String::from_utf8_lossy(&on.stdout)
    );
    seen.add(&on);
    // The fake driver applies power changes 1 to 11 s later, as real hardware lags.
    let t = Instant::now();
    let both_on = wait_for(Duration::from_secs(30), || {
        let o = env.run(&["power", "status", "r01", "r02", "--json"]);
        let r = by_node(&String::from_utf8_lossy(&o.stdout));
        r.values().all(|v| v["power"] == "on")
    });
    let settle = t.elapsed().as_secs_f64();
    assert!(both_on, "sushy's systems never showed On");
    // Boot device: target and mode land in the system's Boot object.
    let out = seen.add(&env.run(&["power", "bootdev", "pxe", "r02", "--uefi"]));
    assert!(out.contains("r02: next boot: pxe (UEFI)"), "{out}");
    let system = boot_of(&tls.url, &ca);
    assert_eq!(system["BootSourceOverrideTarget"], "Pxe", "{system}");
    assert_eq!(system["BootSourceOverrideMode"], "UEFI", "{system}");
    seen.add(&env.run(&["power", "bootdev", "disk", "r02", "--persistent"]));
    assert_eq!(boot_of(&tls.url, &ca)["BootSourceOverrideTarget"], "Hdd");
    // sushy lists no PowerCycle among its reset types: a cycle is ForceOff then On.
    let cycle = seen.add(&env.run(&["power", "cycle", "r01", "--json"]));
    assert_eq!(
        by_node(&cycle)["r01"]["message"],
        "power cycle sent",
        "{cycle}"
    );
    let log = fs::read_to_string(&plain.log).unwrap();
    assert_eq!(log.matches("POST /redfish/v1/Systems/").count(), 3, "{log}");
    seen.add(&env.run(&["power", "off", "r01", "r02"]));

    let bad = env.run(&["power", "status", "r[03-05]", "--json", "--timeout", "10"]);
    assert_eq!(bad.status.code(), Some(3));
    let r = by_node(&seen.add(&bad));
    assert_eq!(r["r03"]["status"], "failed", "{:?}", r["r03"]);
    let m = r["r03"]["message"].as_str().unwrap();
    assert!(m.contains("TLS") && m.contains("--bmc-ca-file"), "{m}");
    assert_eq!(r["r04"]["status"], "auth-failed", "{:?}", r["r04"]);
    assert_eq!(r["r05"]["status"], "unreachable", "{:?}", r["r05"]);
    seen.add(&env.run(&["-vv", "power", "status", "r01"]));
    seen.assert_clean(&env, &[&plain.log, &tls.log]);
    eprintln!("measured: Redfish power on of 2 BMCs {on_secs:.2} s; sushy's fake systems showed On after {settle:.1} s");
}

/// The `Boot` object of the one system of the sushy at `url`, checked against the CA.
fn boot_of(url: &str, ca: &Path) -> serde_json::Value {
    let script = format!(
        "import json,ssl,urllib.request,base64\n\
         ctx=ssl.create_default_context(cafile='{}')\n\
         h={{'Authorization':'Basic '+base64.b64encode(b'admin:{REDFISH_PASSWORD}').decode()}}\n\
         get=lambda p: json.load(urllib.request.urlopen(urllib.request.Request('{url}'+p,headers=h),context=ctx))\n\
         s=get('/redfish/v1/Systems')['Members'][0]['@odata.id']\n\
         print(json.dumps(get(s)['Boot']))",
        ca.display()
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    json(&String::from_utf8_lossy(&out.stdout))
}

#[test]
fn reinstall_boots_the_node_through_its_bmc_and_waits_for_the_install() {
    if !need("ipmi_sim") || !need("ipmitool") || !need("python3") {
        return;
    }
    let env = Env::new();
    let tree = env.path("tree");
    fs::create_dir_all(tree.join("etc")).unwrap();
    fs::write(tree.join("etc/hostname"), "tiny\n").unwrap();
    env.getimage(&tree, "tiny", &[]);
    let sim = IpmiSim::start(env.dir.path());
    let pw = env.path("bmc-password");
    write_mode(&pw, &format!("{IPMI_PASSWORD}\n"), 0o600);
    let mac = "52:54:00:00:30:01";
    add_node(
        &env,
        "n01",
        mac,
        &[
            "--bmc",
            &sim.addr,
            "--bmc-user",
            "admin",
            "--bmc-password-file",
            pw.to_str().unwrap(),
        ],
    );
    add_node(
        &env,
        "n02",
        "52:54:00:00:30:02",
        &[
            "--bmc",
            "127.0.0.1:9",
            "--bmc-user",
            "admin",
            "--bmc-password-file",
            pw.to_str().unwrap(),
        ],
    );
    env.ok(&["pxe", "netboot", "n01", "n02", "--local"]);
    let srv = Server::start(&env);
    let base = format!("http://{}", srv.addr);
    fs::write(sim.state.join("node.args"), format!("{base} n01 {mac}\n")).unwrap();
    let mut seen = Seen::default();

    // Powered off: reinstall powers it on, from the network once.
    let t = Instant::now();
    let out = env.run(&[
        "reinstall",
        "n01",
        "--image",
        "tiny@1",
        "--wait",
        "60",
        "--json",
    ]);
    let secs = t.elapsed().as_secs_f64();
    let text = seen.add(&out);
    assert!(
        out.status.success(),
        "{text}\n{}\nnode: {}",
        String::from_utf8_lossy(&out.stderr),
        sim.file("node.log")
    );
    let r = &by_node(&text)["n01"];
    assert_eq!(r["state"], "installed", "{r}");
    assert_eq!(r["boot"], "local");
    assert_eq!(r["revision"], "tiny@1 5151");
    let phases: Vec<&str> = r["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    assert_eq!(phases, ["facts", "partition", "transfer", "done"]);
    assert!(
        r["power"]["message"]
            .as_str()
            .unwrap()
            .contains("was off: power on sent"),
        "{r}"
    );
    assert!(sim.file("node.log").contains("netboot entry installs"));
    let calls = sim.file("calls.log");
    let (boot_at, on_at) = (
        calls.find("set boot pxe").unwrap(),
        calls.find("set power 1").unwrap(),
    );
    assert!(boot_at < on_at, "PXE was not set before the boot:\n{calls}");
    let show = json(&env.ok(&["node", "show", "n01", "--json"]));
    assert_eq!(show["node"]["boot"], "local");
    assert_eq!(show["node"]["image"], "tiny@1");
    let script = crate::serve::http(&srv.addr, "GET", &format!("/boot/{mac}.ipxe"), &[], b"").2;
    assert!(
        String::from_utf8_lossy(&script).contains("sanboot"),
        "the netboot entry is not local again"
    );

    // Running now: a reset; this time the install fails, and the node stays on install.
    fs::write(sim.state.join("fail"), "").unwrap();
    let out = env.run(&["reinstall", "n01", "--wait", "60"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    seen.add(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("n01: the install failed: sgdisk: cannot open /dev/vda"),
        "{err}"
    );
    assert!(err.contains("next network boot: install"), "{err}");
    assert!(sim.file("calls.log").contains("set reset 1"));
    assert_eq!(
        json(&env.ok(&["node", "show", "n01", "--json"]))["node"]["boot"],
        "install"
    );

    // A BMC that cannot be reached: the node is left as it was (local boot).
    let out = env.run(&[
        "reinstall",
        "n02",
        "--wait",
        "5",
        "--timeout",
        "4",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let r = &by_node(&seen.add(&out))["n02"];
    assert_eq!(r["state"], "power-failed", "{r}");
    assert_eq!(r["boot"], "local");
    assert_eq!(
        json(&env.ok(&["node", "show", "n02", "--json"]))["node"]["boot"],
        "local"
    );
    seen.assert_clean(&env, &[&sim.state.join("node.log")]);
    eprintln!("measured: reinstall of a powered-off node through ipmi_sim to its done report: {secs:.2} s");
}

/// A QEMU node (SeaBIOS, iPXE, QEMU's user network) that ipmi_sim powers: its chassis script
/// starts QEMU on power on or reset and kills it on power off. `aurum reinstall` switches the
/// node (installed, on local boot) back to install, sets PXE through the BMC, powers it on and
/// waits for the boot kit's reports; the guest installs and powers off.
#[test]
fn qemu_node_is_reinstalled_through_ipmi_sim() {
    let rom = Path::new("/usr/lib/ipxe/qemu/efi-virtio.rom");
    let tools = [
        "ipmi_sim",
        "ipmitool",
        "qemu-system-x86_64",
        "busybox",
        "sgdisk",
        "mkfs.ext4",
        "mkfs.vfat",
        "depmod",
        "apt-get",
        "dpkg",
    ];
    if !tools.iter().all(|t| need(t)) || !crate::common::can_run(rom.exists(), "ipxe-qemu's ROMs") {
        return;
    }
    let env = Env::new();
    crate::pxe::build_kit(&env);
    let g = env.path("golden");
    crate::pxe::golden(&g);
    env.getimage(&g, "tiny", &[]);
    let t = env.path("tiny.toml");
    fs::write(&t, crate::pxe::TEMPLATE).unwrap();
    env.ok(&["template", "import", t.to_str().unwrap()]);
    let sim = IpmiSim::start(env.dir.path());
    let pw = env.path("bmc-password");
    write_mode(&pw, &format!("{IPMI_PASSWORD}\n"), 0o600);
    let mac = crate::pxe::MAC;
    add_node(
        &env,
        "vm1",
        mac,
        &[
            "--image",
            "tiny",
            "--class",
            "tiny",
            "--bmc",
            &sim.addr,
            "--bmc-user",
            "admin",
            "--bmc-password-file",
            pw.to_str().unwrap(),
        ],
    );
    // As after an earlier install: its network boots go to the local disk.
    env.ok(&["pxe", "netboot", "vm1", "--local"]);
    let srv = Server::start(&env);
    let port = srv.addr.rsplit(':').next().unwrap().to_string();
    let tftp = env.path("tftp");
    env.ok(&[
        "pxe",
        "tftp",
        "--tftp-root",
        tftp.to_str().unwrap(),
        "--server",
        &format!("http://10.0.2.2:{port}"),
    ]);
    let disk = env.path("disk.raw");
    fs::File::create(&disk).unwrap().set_len(256 << 20).unwrap();
    let serial = env.path("serial.log");
    let qemu = format!(
        "#!/bin/sh\necho $$ > {pid}\nexec qemu-system-x86_64 -accel tcg -cpu max -M q35 -m 1024 -smp 2 \
         -nographic -no-reboot -nodefaults -serial stdio -boot order=n \
         -device virtio-net-pci,netdev=n0,mac={mac} \
         -drive file={disk},format=raw,if=virtio,cache=unsafe \
         -netdev user,id=n0,net=10.0.2.0/24,tftp={tftp},bootfile=boot.ipxe >{serial} 2>&1\n",
        pid = sim.state.join("qemu.pid").display(),
        disk = disk.display(),
        tftp = tftp.display(),
        serial = serial.display(),
    );
    write_mode(&sim.state.join("qemu.sh"), &qemu, 0o755);
    let mut seen = Seen::default();
    let _guest = crate::pxe::ONE_GUEST
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let t = Instant::now();
    let out = env.run(&["reinstall", "vm1", "--wait", "400", "--json"]);
    let secs = t.elapsed().as_secs_f64();
    let text = seen.add(&out);
    assert!(
        out.status.success(),
        "{text}\n{}\nserial console:\n{}",
        String::from_utf8_lossy(&out.stderr),
        crate::pxe::tail(&serial, 60)
    );
    let r = &by_node(&text)["vm1"];
    assert_eq!(r["state"], "installed", "{r}");
    assert_eq!(r["boot"], "local");
    assert!(
        r["revision"].as_str().unwrap().starts_with("tiny@1 "),
        "{r}"
    );
    let phases: Vec<&str> = r["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    assert!(
        phases.contains(&"transfer") && phases.last() == Some(&"done"),
        "{phases:?}"
    );
    let calls = sim.file("calls.log");
    assert!(
        calls.find("set boot pxe").unwrap() < calls.find("set power 1").unwrap(),
        "{calls}"
    );
    // The guest powers itself off after the install: the BMC sees it off.
    let off = wait_for(Duration::from_secs(60), || {
        env.ok(&["power", "status", "vm1"]).contains("vm1: off")
    });
    assert!(off, "QEMU still runs:\n{}", crate::pxe::tail(&serial, 20));
    let console = fs::read_to_string(&serial).unwrap_or_default();
    assert!(
        console.contains("aurum: install done"),
        "{}",
        crate::pxe::tail(&serial, 40)
    );
    seen.assert_clean(&env, &[&serial]);
    eprintln!(
        "measured: QEMU node (TCG) reinstalled through ipmi_sim, from the command to the done report: {secs:.1} s, {} phases reported",
        phases.len()
    );
}

/// A BMC's `https://` through the environment's `https_proxy`, as curl takes it: a CONNECT
/// tunnel through a Squid (the TLS inside it checked against the BMC's CA), and no proxy for
/// a host `no_proxy` names.
#[test]
fn redfish_over_https_goes_through_a_connect_tunnel_of_https_proxy() {
    if !need("sushy-emulator") || !need("openssl") || !need("squid") {
        return;
    }
    let env = Env::new();
    let (ca, cert, key) = bmc_certificate(env.dir.path());
    let tls = Sushy::start(env.dir.path(), Some((&cert, &key)));
    let pw = env.path("rf-password");
    write_mode(&pw, &format!("{REDFISH_PASSWORD}\n"), 0o600);
    add_node(
        &env,
        "r02",
        "52:54:00:00:20:02",
        &[
            "--bmc",
            &tls.url,
            "--bmc-password-file",
            pw.to_str().unwrap(),
            "--bmc-protocol",
            "redfish",
            "--bmc-user",
            "admin",
            "--bmc-ca-file",
            ca.to_str().unwrap(),
        ],
    );
    let dir = env.path("squid");
    fs::create_dir_all(&dir).unwrap();
    // Debian's default allows CONNECT to port 443 only; a BMC emulator listens elsewhere.
    let conf = "http_port 127.0.0.1:@PORT@\nhttp_access allow localhost\nhttp_access deny all\n";
    let (squid, proxy) = crate::tiers::Squid::start(&dir, conf.to_string());
    let status = |https_proxy: &str, no_proxy: &str| {
        let mut c = env.cmd(&["power", "status", "r02", "--json", "--timeout", "10"]);
        for v in [
            "http_proxy",
            "HTTPS_PROXY",
            "all_proxy",
            "ALL_PROXY",
            "no_proxy",
            "NO_PROXY",
        ] {
            c.env_remove(v);
        }
        c.env("https_proxy", https_proxy).env("no_proxy", no_proxy);
        c.output().unwrap()
    };
    let port = tls.url.rsplit(':').next().unwrap().to_string();
    let out = status(&format!("http://{proxy}"), "");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_millis(300));
    let log = squid.access_log();
    assert!(
        log.contains(&format!("CONNECT 127.0.0.1:{port}")),
        "no CONNECT in squid's log:\n{log}"
    );
    // A proxy that is not there: the BMC is unreachable through it...
    let gone = format!("http://127.0.0.1:{}", free_tcp_port());
    let out = status(&gone, "");
    assert!(!out.status.success());
    // ...and reached directly when no_proxy names it (an address by its network).
    let out = status(&gone, "127.0.0.0/8");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
