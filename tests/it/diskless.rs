//! Diskless nodes (issue 21): a QEMU node (TCG; SeaBIOS or OVMF) PXE-boots the boot kit from
//! `aurum serve`, and the kit boots a real Debian revision (tests/rig/debian-root, with
//! systemd and the aurum binary) into memory: `aurum boot-memory` asks the server who the node
//! is by its MAC, lays the revision and the node's override (its own SSH host key) into a
//! tmpfs, and the kit switches root into it. systemd comes up; a unit of the image runs `aurum
//! health` (reported to the server), compares the running root with the revision by hash
//! (`aurum updateclient --dry-run --verify-local`: nothing to change), prints what memory the
//! node uses, and powers off.

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::common::{can_run, have, is_root, json, need, sh, skip, Env};
use crate::pxe::{build_kit, debian_kernel, tail, MAC, ONE_GUEST, OVMF_CODE, OVMF_VARS};
use crate::serve::Server;

/// What the image's boot check prints on the serial console.
const CHECK_SCRIPT: &str = r#"#!/bin/sh
# The test's boot check: health, a hash comparison of the root with its revision, memory use.
exec >/dev/ttyS0 2>&1
echo "AURUM-CHECK: root is $(stat -f -c %T /), hostname $(hostname), up $(cut -d' ' -f1 /proc/uptime) s"
echo "AURUM-CHECK: host key $(cat /etc/ssh/ssh_host_ed25519_key.pub), machine id $(cat /etc/machine-id)"
aurum --no-progress health --timeout 60
echo "AURUM-CHECK: health rc=$?, up $(cut -d' ' -f1 /proc/uptime) s"
# An NFS root: what went over the wire so far (the per-operation RPC bytes of the mount).
NFS=$(grep ' /run/aurum-netroot/lower nfs4 ' /proc/mounts)
nfs_stats() {
    [ -n "$NFS" ] && awk -v when="$1" '/^device /{f=($0 ~ /fstype nfs4/)}
         f && $1 == "bytes:" {d=$6}
         f && $1 ~ /^[A-Z_0-9]+:$/ && NF >= 9 {s+=$5; r+=$6; n+=$2}
         END{print "AURUM-CHECK: nfs " when " received " r " bytes, sent " s " bytes in " n " calls, file data " d " bytes"}' \
        /proc/self/mountstats
}
nfs_stats at-health
echo "AURUM-CHECK: memory used $(awk '/MemTotal/{t=$2} /MemAvailable/{a=$2} END{print t-a}' /proc/meminfo) KiB, root $(df -k / | awk 'NR==2{print $3}') KiB, run $(df -k /run | awk 'NR==2{print $3}') KiB"
# A network root's persistent filesystem: what the last boot left, and a file for the next.
if [ -d /var/lib/persist ]; then
    echo "AURUM-CHECK: persist is $(stat -f -c %T /var/lib/persist), holds $(cat /var/lib/persist/kept)"
    echo "written by $(hostname)" > /var/lib/persist/new
fi
# Where the boot waited: journal lines after a pause of more than 5 s.
journalctl -b -o short-monotonic --no-pager | \
    awk '{e=index($0, "]"); t=substr($0, 2, e-2)+0;
          if (t-p>5) print "AURUM-CHECK: waited " int(t-p) " s before: " substr($0, e+2); p=t}'
# Mount points whose modes the kernel sets, and a directory systemd makes at boot.
aurum --no-progress --quiet updateclient --dry-run --verify-local --json \
    --exclude /proc --exclude /sys --exclude /var/lib/systemd/timers \
    --exclude /var/lib/persist > /run/plan.json
echo "AURUM-CHECK: verify rc=$?, up $(cut -d' ' -f1 /proc/uptime) s"
nfs_stats after-verify
echo AURUM-PLAN-BEGIN
cat /run/plan.json
echo AURUM-PLAN-END
# An NFS root: a write must land in the tmpfs upper layer, not on the server.
if [ -n "$NFS" ]; then
    echo "written on $(hostname)" > /root/nfs-write
    echo "AURUM-CHECK: nfs write in upper $(cat /run/aurum-netroot/upper/root/nfs-write), lower $(cat /run/aurum-netroot/lower/root/nfs-write 2>&1 | head -c 60)"
fi
systemctl poweroff
"#;

const CHECK_UNIT: &str = "[Unit]
Description=aurum diskless test: health, verify, memory, power off
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/aurum-boot-check

[Install]
WantedBy=multi-user.target
";

fn write_mode(path: &Path, text: &str, mode: u32) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// The Debian root with aurum, a required health check (the root is a `root_fs` (tmpfs, or
/// overlayfs for a network root), the hostname and the SSH host key are the node's) and the
/// boot check unit running `check`; `server` is the image server as the guest reaches it.
fn debian_golden(
    env: &Env,
    server: &str,
    host_key_pub: &str,
    root_fs: &str,
    check: &str,
) -> PathBuf {
    let rig = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/rig/debian-root");
    let out = Command::new(rig)
        .output()
        .expect("run tests/rig/debian-root");
    assert!(
        out.status.success(),
        "tests/rig/debian-root: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cached = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let g = env.path("golden");
    sh(&format!("cp -a '{cached}' '{}'", g.display()));
    // The binary without its debug information (the test build's is 200 MB).
    sh(&format!(
        "strip --strip-debug -o '{}' '{}'",
        g.join("usr/bin/aurum").display(),
        env!("CARGO_BIN_EXE_aurum")
    ));
    write_mode(
        &g.join("etc/aurum/node.toml"),
        &format!("server = \"{server}\"\nimage = \"deb@1\"\n"),
        0o644,
    );
    write_mode(
        &g.join("etc/aurum/health/required.d/10-diskless"),
        &format!(
            "#!/bin/sh\nset -e\n[ \"$(stat -f -c %T /)\" = {root_fs} ]\n[ \"$(hostname)\" = vm1 ]\n\
             [ \"$(cat /etc/ssh/ssh_host_ed25519_key.pub)\" = '{}' ]\n",
            host_key_pub.trim()
        ),
        0o755,
    );
    write_mode(&g.join("usr/local/sbin/aurum-boot-check"), check, 0o755);
    write_mode(
        &g.join("etc/systemd/system/aurum-boot-check.service"),
        CHECK_UNIT,
        0o644,
    );
    let wants = g.join("etc/systemd/system/multi-user.target.wants");
    fs::create_dir_all(&wants).unwrap();
    std::os::unix::fs::symlink(
        "/etc/systemd/system/aurum-boot-check.service",
        wants.join("aurum-boot-check.service"),
    )
    .unwrap();
    // No getty on the serial console: its output would interleave with the check's, and this
    // minbase root has no udev, so systemd would wait 90 s for a dev-ttyS0.device that never
    // becomes ready (measured: 83 s of a 188 s boot).
    let _ = fs::remove_file(g.join("etc/systemd/system/getty.target.wants/getty@tty1.service"));
    std::os::unix::fs::symlink(
        "/dev/null",
        g.join("etc/systemd/system/serial-getty@ttyS0.service"),
    )
    .unwrap();
    g
}

/// The node's override image: its own SSH host key, kept on the server, and the files of
/// `extra` (path, text). Returns the public key.
fn host_key_override(env: &Env, extra: &[(&str, &str)]) -> String {
    let o = env.path("override.vm1");
    fs::create_dir_all(o.join("etc/ssh")).unwrap();
    for (p, text) in extra {
        write_mode(&o.join(p), text, 0o644);
    }
    sh(&format!(
        "ssh-keygen -q -t ed25519 -N '' -C vm1 -f '{}'",
        o.join("etc/ssh/ssh_host_ed25519_key").display()
    ));
    // The default excludes leave SSH host keys out of a capture: here they are the point.
    env.getimage(&o, "override.vm1", &["--no-default-excludes"]);
    fs::read_to_string(o.join("etc/ssh/ssh_host_ed25519_key.pub")).unwrap()
}

/// The serial console's text.
fn serial(log: &Path) -> String {
    String::from_utf8_lossy(&fs::read(log).unwrap_or_default()).into_owned()
}

/// What went on: aurum's lines and the check's, then the console's last lines.
fn story(log: &Path) -> String {
    let text = serial(log);
    let ours: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("aurum") || l.contains("AURUM") || l.contains("FAIL"))
        .collect();
    format!(
        "{}
--- last lines ---
{}",
        ours.join("\n"),
        tail(log, 40)
    )
}

/// A number after `word` on a line of `text` holding `marker`.
fn figure(text: &str, marker: &str, word: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.contains(marker))?;
    let rest = &line[line.find(word)? + word.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// Where the QEMU node's root lives.
#[derive(Clone, Copy, PartialEq)]
enum Root {
    /// `--rootfs memory`: the revision laid into a tmpfs.
    Memory,
    /// `--rootfs netroot`: the revision's EROFS image under a tmpfs overlay, and a persistent
    /// filesystem on a second disk.
    Netroot,
    /// `--rootfs nfs`: the revision's NFSv4 export from nfs-ganesha on the host, under a tmpfs
    /// overlay, and the same persistent filesystem.
    Nfs,
}

fn boot_into_memory(uefi: bool) {
    boot_diskless(uefi, Root::Memory)
}

fn boot_diskless(uefi: bool, how: Root) {
    let rom = Path::new("/usr/lib/ipxe/qemu/efi-virtio.rom");
    let needs = [
        "qemu-system-x86_64",
        "busybox",
        "depmod",
        "apt-get",
        "dpkg",
        "debootstrap",
        "strip",
        "ssh-keygen",
        "sgdisk",
        "mkfs.ext4",
        "mkfs.erofs",
        "debugfs",
    ];
    let missing: Vec<&&str> = needs.iter().filter(|p| !have(p)).collect();
    if !missing.is_empty() || !rom.exists() || !is_root() {
        skip(&format!(
            "the diskless boot test needs root, ipxe-qemu's ROMs and {missing:?}"
        ));
        return;
    }
    if how == Root::Nfs && !need_ganesha() {
        return;
    }
    if uefi && !Path::new(OVMF_CODE).exists() {
        skip(&format!(
            "the UEFI diskless test needs {OVMF_CODE} (package ovmf)"
        ));
        return;
    }
    let env = Env::new();
    debian_kernel();
    build_kit(&env);
    let srv = Server::start(&env);
    let port = srv.addr.rsplit(':').next().unwrap().to_string();
    let server = format!("http://10.0.2.2:{port}");
    // systemd's status lines would bury the check's on the console.
    let cmdline = env.repo().join("bootkit/cmdline");
    let append = fs::read_to_string(&cmdline).unwrap();
    fs::write(
        &cmdline,
        format!("{} systemd.show_status=0\n", append.trim()),
    )
    .unwrap();
    let (rootfs, root_fs, switched) = match how {
        Root::Memory => ("memory", "tmpfs", "switching root to the tmpfs"),
        Root::Netroot => ("netroot", "overlayfs", "switching root to the overlay"),
        Root::Nfs => ("nfs", "overlayfs", "switching root to the overlay"),
    };
    // A network root's persistent filesystem: a second disk, by label, with a file from "the
    // last boot".
    let persist = env.path("persist.img");
    let persist_list = "LABEL=vm1-state /var/lib/persist ext4 defaults 0 2\n";
    let extra: &[(&str, &str)] = match how {
        Root::Memory => &[],
        Root::Netroot | Root::Nfs => {
            let seed = env.path("persist-seed");
            fs::create_dir_all(&seed).unwrap();
            fs::write(seed.join("kept"), "the last boot's file\n").unwrap();
            sh(&format!(
                "truncate -s 16M '{d}' && mkfs.ext4 -q -F -L vm1-state -d '{s}' '{d}'",
                d = persist.display(),
                s = seed.display()
            ));
            &[("etc/aurum/persist.fstab", persist_list)]
        }
    };
    let key = host_key_override(&env, extra);
    let g = debian_golden(&env, &server, &key, root_fs, CHECK_SCRIPT);
    // Documentation and translations left out: a smaller image boots sooner under TCG.
    env.getimage(
        &g,
        "deb",
        &[
            "--exclude",
            "/usr/share/doc/*",
            "--exclude",
            "/usr/share/man/*",
            "--exclude",
            "/usr/share/locale/*",
            "--exclude",
            "/usr/share/info/*",
        ],
    );
    let rev = json(&env.ok(&["show", "deb", "--json"]));
    let export = (how == Root::Netroot).then(|| {
        let t = Instant::now();
        let e = json(&env.ok(&["export", "deb", "--netroot", "--json"]));
        (e, t.elapsed().as_secs_f64())
    });
    // NFS: the revision exported for nodes that reach ganesha through QEMU's 10.0.2.2.
    let mut ganesha = None;
    let nfs_export = (how == Root::Nfs).then(|| {
        let nfs_port = free_port();
        let t = Instant::now();
        let e = json(&env.ok(&[
            "export",
            "deb",
            "--nfs",
            "--nfs-server",
            &format!("10.0.2.2:{nfs_port}"),
            "--json",
        ]));
        let secs = t.elapsed().as_secs_f64();
        ganesha = Some(Ganesha::start(
            &env,
            nfs_port,
            Path::new(e["ganesha_config"].as_str().unwrap()),
        ));
        (e, secs)
    });
    env.ok(&[
        "node", "add", "vm1", "--mac", MAC, "--image", "deb", "--rootfs", rootfs,
    ]);
    let tftp = env.path("tftp");
    env.ok(&[
        "pxe",
        "tftp",
        "--tftp-root",
        tftp.to_str().unwrap(),
        "--server",
        &server,
    ]);
    let script = fs::read_to_string(tftp.join("ipxe/52-54-00-00-00-10.ipxe")).unwrap();
    assert!(
        script.contains(&format!("aurum.rootfs={rootfs}")),
        "{script}"
    );

    let log = env.path("serial.log");
    let mut args = crate::qemu::machine();
    args.extend([
        "-boot".into(),
        "order=n".into(),
        "-device".into(),
        format!("virtio-net-pci,netdev=n0,mac={MAC}"),
        "-netdev".into(),
        format!(
            "user,id=n0,net=10.0.2.0/24,tftp={},bootfile=boot.ipxe",
            tftp.display()
        ),
    ]);
    if uefi {
        let vars = env.path("OVMF_VARS.fd");
        fs::copy(OVMF_VARS, &vars).unwrap();
        args.extend(crate::qemu::pflash(&vars));
    }
    if how != Root::Memory {
        args.extend([
            "-drive".into(),
            format!(
                "file={},format=raw,if=virtio,cache=unsafe",
                persist.display()
            ),
        ]);
    }
    let _guest = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let sent_before = srv.sent.load(std::sync::atomic::Ordering::Relaxed);
    let started = Instant::now();
    let mut qemu = crate::qemu::spawn(
        Command::new("qemu-system-x86_64")
            .args(&args)
            .stderr(Stdio::piped()),
        &log,
    );
    let wait = crate::qemu::Wait {
        started,
        limit: Duration::from_secs(420),
        poll: Duration::from_millis(250),
        lines: 80,
    };
    let mut healthy_at = None;
    let status = wait
        .exit(&mut qemu, &log, |text| {
            if healthy_at.is_none() && text.contains("AURUM-CHECK: health rc=") {
                healthy_at = Some(started.elapsed());
            }
            (text.contains("here is a shell") || text.contains("Kernel panic"))
                .then_some("the diskless boot failed")
        })
        .unwrap_or_else(|why| panic!("{why}"));
    let powered_off = started.elapsed();
    let mut err = String::new();
    qemu.stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        status.success(),
        "qemu: {status}\n{err}\n{}",
        tail(&log, 60)
    );
    let text = serial(&log);
    let fetched = srv.sent.load(std::sync::atomic::Ordering::Relaxed) - sent_before;

    // The kit booted the revision (into memory, or from its image) and switched root into it.
    assert!(text.contains(switched), "{}", story(&log));
    assert!(
        text.contains(&format!("AURUM-CHECK: root is {root_fs}, hostname vm1")),
        "{}",
        story(&log)
    );
    assert!(text.contains("AURUM-CHECK: health rc=0"), "{}", story(&log));
    // The running root is the revision plus the node's override, by hash.
    assert!(text.contains("AURUM-CHECK: verify rc=0"), "{}", story(&log));
    let plan =
        &text[text.find("AURUM-PLAN-BEGIN").unwrap() + 16..text.find("AURUM-PLAN-END").unwrap()];
    let plan: serde_json::Value =
        serde_json::from_str(plan.trim()).unwrap_or_else(|e| panic!("{e}: {plan}"));
    for k in ["created", "changed", "metadata_only", "deleted"] {
        assert_eq!(
            plan[k], 0,
            "the node's root differs from deb@1 + override.vm1: {plan:#}"
        );
    }

    // The server saw the boot (phases, no switch to local boot) and the health report.
    let show = env.ok(&["node", "show", "vm1"]);
    assert!(show.contains(&format!("boot      {rootfs}")), "{show}");
    assert!(show.contains("phase     done deb@1"), "{show}");
    let nodes = json(&env.ok(&["nodes", "--json"]));
    let vm1 = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["hostname"] == "vm1")
        .unwrap_or_else(|| panic!("no report from vm1: {nodes:#}"))
        .clone();
    let id = rev["id"].as_str().unwrap();
    assert!(id.starts_with(vm1["revision"].as_str().unwrap()), "{vm1:#}");
    let db = rusqlite::Connection::open(env.repo().join("aurum.db")).unwrap();
    let (result, revision): (String, String) = db
        .query_row(
            "SELECT result, revision FROM node_reports WHERE hostname = 'vm1' AND action = 'health'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("vm1 reported its health");
    assert_eq!((result.as_str(), revision.as_str()), ("ok", id));

    // The persistent filesystem: the node read the last boot's file and left its own.
    if how != Root::Memory {
        assert!(
            text.contains("AURUM-CHECK: persist is ext2/ext3, holds the last boot's file"),
            "{}",
            story(&log)
        );
        let new = sh(&format!(
            "debugfs -R 'cat /new' '{}' 2>/dev/null",
            persist.display()
        ));
        assert_eq!(new, "written by vm1\n");
    }

    let used = figure(&text, "AURUM-CHECK: memory used", "used").unwrap_or(0);
    let root = figure(&text, "AURUM-CHECK: memory used", "root").unwrap_or(0);
    let run = figure(&text, "AURUM-CHECK: memory used", "run").unwrap_or(0);
    if let Some((e, secs)) = &export {
        eprintln!(
            "netroot export: {} MiB EROFS image of {} MiB of files in {secs:.1} s; /run (image and upper layer) {:.1} MiB",
            e["bytes"].as_u64().unwrap() >> 20,
            e["tree_bytes"].as_u64().unwrap() >> 20,
            run as f64 / 1024.0
        );
    }
    eprintln!(
        "diskless {} ({rootfs}): power-on to health passed {:.1} s, powered off at {:.1} s; {:.1} MiB served \
         (kit and revision), root {:.1} MiB in memory, node uses {:.1} MiB; revision {} MiB in {} files",
        if uefi { "UEFI" } else { "BIOS" },
        healthy_at.unwrap_or_default().as_secs_f64(),
        powered_off.as_secs_f64(),
        fetched as f64 / 1048576.0,
        root as f64 / 1024.0,
        used as f64 / 1024.0,
        rev["bytes"].as_u64().unwrap_or(0) >> 20,
        rev["files"],
    );
    if let Some((e, secs)) = &nfs_export {
        // The root came over NFS, and the node's write went to its tmpfs, not to the server.
        assert!(
            text.contains("AURUM-CHECK: nfs write in upper written on vm1, lower cat: "),
            "{}",
            story(&log)
        );
        let tree = Path::new(e["path"].as_str().unwrap());
        assert!(tree.join("etc/hostname").exists() || tree.join("etc").is_dir());
        assert!(!tree.join("root/nfs-write").exists());
        let received = figure(&text, "AURUM-CHECK: nfs at-health", "received").unwrap_or(0);
        assert!(received > 1 << 20, "{}", story(&log));
        let all = figure(&text, "AURUM-CHECK: nfs after-verify", "received").unwrap_or(0);
        // The comparison by hash read every file over NFS.
        assert!(all > e["tree_bytes"].as_u64().unwrap(), "{}", story(&log));
        let g = ganesha.take().unwrap();
        let log_text = g.stop();
        eprintln!(
            "nfs export: {} entries, {} MiB of files in {secs:.1} s; the node received {:.1} MiB over NFS by its health check, {:.1} MiB after the comparison by hash, /run {:.1} MiB",
            e["entries"],
            e["tree_bytes"].as_u64().unwrap() >> 20,
            received as f64 / 1048576.0,
            all as f64 / 1048576.0,
            run as f64 / 1024.0
        );
        assert!(
            !log_text.contains(":CRIT :") || log_text.contains("DBUS"),
            "{log_text}"
        );
    }
    for l in text.lines().filter(|l| {
        l.contains("booted into memory as")
            || l.contains("booted from a network root as")
            || l.contains("from a network root: nfs")
            || l.contains("read-only in")
            || l.starts_with("AURUM-CHECK")
    }) {
        eprintln!("{l}");
    }
}

#[test]
fn qemu_bios_node_boots_a_debian_revision_into_memory() {
    boot_into_memory(false);
}

#[test]
fn qemu_uefi_node_boots_a_debian_revision_into_memory() {
    boot_into_memory(true);
}

/// The network root in QEMU: the Debian revision exported as an EROFS image, booted
/// read-only under a tmpfs overlay, the node's override laid into the upper layer, its
/// persistent filesystem (a second disk, by label) mounted from the override's list.
#[test]
fn qemu_bios_node_boots_a_debian_revision_from_a_network_root() {
    boot_diskless(false, Root::Netroot);
}

#[test]
fn qemu_uefi_node_boots_a_debian_revision_from_a_network_root() {
    boot_diskless(true, Root::Netroot);
}

/// The NFS root in QEMU: the Debian revision exported with `aurum export --nfs`, served by
/// nfs-ganesha (FSAL VFS, NFSv4 only, its own configuration, pid, log and recovery
/// directory) on the host's loopback, reached by the guest through QEMU's 10.0.2.2; the node
/// mounts it read-only with the kernel's client under a tmpfs overlay, the override and the
/// persistent filesystem as the network root has them, and checks by hash that its root is
/// the revision plus its override. A file the node writes lands in the tmpfs, not on the
/// server.
#[test]
fn qemu_bios_node_boots_a_debian_revision_from_nfs() {
    boot_diskless(false, Root::Nfs);
}

/// Whether nfs-ganesha and its VFS backend are here (see [`need`]).
fn need_ganesha() -> bool {
    need("ganesha.nfsd")
        && can_run(
            !sh("ls /usr/lib/*/ganesha/libfsalvfs.so 2>/dev/null || true")
                .trim()
                .is_empty(),
            "nfs-ganesha's FSAL VFS (package nfs-ganesha-vfs)",
        )
}

/// A TCP port free on loopback now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// nfs-ganesha serving `aurum export --nfs`'s exports on 127.0.0.1:PORT: NFSv4 only (no
/// rpcbind), numeric owners (the nodes have no idmapper), its configuration, pid file, log and
/// recovery directory in the test's directory. Stopped (SIGTERM, then SIGKILL) when dropped.
struct Ganesha {
    child: Option<std::process::Child>,
    log: PathBuf,
}

impl Ganesha {
    fn start(env: &Env, port: u16, exports: &Path) -> Ganesha {
        let dir = env.path("ganesha");
        fs::create_dir_all(dir.join("recovery")).unwrap();
        let conf = dir.join("ganesha.conf");
        fs::write(
            &conf,
            format!(
                "NFS_CORE_PARAM {{\n    Protocols = 4;\n    NFS_Port = {port};\n    Bind_addr = 127.0.0.1;\n    Enable_NLM = false;\n    Enable_RQUOTA = false;\n}}\n\
                 NFSV4 {{\n    Only_Numeric_Owners = true;\n    Allow_Numeric_Owners = true;\n    Graceless = true;\n    RecoveryBackend = fs;\n    RecoveryRoot = \"{}\";\n}}\n\
                 NFS_KRB5 {{\n    Active_krb5 = false;\n}}\n\
                 %include \"{}\"\n",
                dir.join("recovery").display(),
                exports.display()
            ),
        )
        .unwrap();
        let log = dir.join("ganesha.log");
        let child = Command::new("ganesha.nfsd")
            .arg("-F")
            .arg("-f")
            .arg(&conf)
            .arg("-L")
            .arg(&log)
            .arg("-p")
            .arg(dir.join("ganesha.pid"))
            .args(["-N", "NIV_EVENT"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ganesha.nfsd starts");
        let g = Ganesha {
            child: Some(child),
            log,
        };
        // Up when it listens.
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "ganesha.nfsd does not listen on {port}:\n{}",
                fs::read_to_string(&g.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let text = fs::read_to_string(&g.log).unwrap_or_default();
        assert!(
            ![":CONFIG :CRIT", ":CONFIG :MAJ", ":FSAL :CRIT", ":FSAL :MAJ"]
                .iter()
                .any(|w| text.contains(w)),
            "ganesha did not take the exports:\n{text}"
        );
        g
    }

    /// Stops the server; returns its log.
    fn stop(mut self) -> String {
        self.halt();
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn halt(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let t = Instant::now();
            while c.try_wait().ok().flatten().is_none() {
                if t.elapsed() > Duration::from_secs(20) {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

impl Drop for Ganesha {
    fn drop(&mut self) {
        self.halt();
    }
}

/// `aurum export --nfs` on the host: the tree under nfsroot/ID is the revision exactly
/// (owners, setuid, nanosecond mtimes, xattrs, hardlinks, symlinks: rsync finds no
/// difference from the golden tree), private to root, with its record for the nodes and a
/// ganesha EXPORT block; nfs-ganesha loads the blocks; exporting again reuses the tree and its
/// Export_Id; a second revision gets the next Export_Id; gc deletes the tree of a removed
/// revision and its block.
#[test]
fn nfs_export_is_the_revision_and_ganesha_takes_it() {
    if !can_run(is_root(), "root (owners)")
        || !need("setfattr")
        || !need("rsync")
        || !need_ganesha()
    {
        return;
    }
    let env = Env::new();
    let g = env.path("golden");
    sh(&format!(
        "set -e; mkdir -p '{g}'; cd '{g}'; mkdir -p etc usr/bin srv/data
         echo 'root:x:0:0::/root:/bin/sh' > etc/passwd
         echo 'root:*:19000:0:99999:7:::' > etc/shadow; chmod 600 etc/shadow
         head -c 300000 /dev/urandom > usr/bin/tool; chmod 4755 usr/bin/tool
         ln usr/bin/tool usr/bin/tool-again
         ln -s tool usr/bin/tool-link
         echo data > srv/data/file; chown 1234:5678 srv/data/file
         touch -d '2021-02-03 04:05:06.123456789' srv/data/file
         setfattr -n user.aurum -v nfs srv/data/file",
        g = g.display()
    ));
    env.getimage(&g, "base", &[]);
    // A node asked to boot a revision that is not exported stops with the command to run,
    // before anything is mounted.
    let srv = Server::start(&env);
    let rw = env.path("rw");
    let err = env.fails(
        &[
            "boot-netroot",
            "--nfs",
            "--server",
            &format!("http://{}", srv.addr),
            "--image",
            "base@1",
            "--node",
            "n1",
            "--root",
            env.path("newroot").to_str().unwrap(),
            "--rw",
            rw.to_str().unwrap(),
            "--no-report",
        ],
        2,
    );
    assert!(
        err.contains("is not exported over NFS") && err.contains("aurum export base@1 --nfs"),
        "{err}"
    );
    assert!(!fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .contains(rw.to_str().unwrap()));
    let started = Instant::now();
    let e = json(&env.ok(&["export", "base", "--nfs", "--json"]));
    let export_s = started.elapsed().as_secs_f64();
    let id = e["id"].as_str().unwrap().to_string();
    let tree = env.repo().join("nfsroot").join(&id);
    assert_eq!(e["path"], tree.to_str().unwrap());
    assert_eq!(e["pseudo"], format!("/aurum/{id}"));
    assert_eq!(e["export_id"], 1000);
    assert_eq!(e["reused"], false);
    assert!(e.get("server").is_none(), "{e:#}");
    let diff = crate::common::rsync_diff(&g, &tree);
    assert!(
        diff.is_empty(),
        "the exported tree differs from the golden one:\n{diff}"
    );
    let mode = fs::metadata(env.repo().join("nfsroot"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    let record =
        json(&fs::read_to_string(env.public().join(format!("netroot/{id}.nfs.json"))).unwrap());
    assert_eq!(record["pseudo"], e["pseudo"]);
    let conf = fs::read_to_string(e["ganesha_config"].as_str().unwrap()).unwrap();
    for want in [
        "Export_Id = 1000;",
        &format!("Path = \"{}\";", tree.display()),
        &format!("Pseudo = \"/aurum/{id}\";"),
        "Access_Type = RO;",
        "Squash = No_Root_Squash;",
        "Protocols = 4;",
        "Name = VFS;",
    ] {
        assert!(conf.contains(want), "{want} not in:\n{conf}");
    }
    assert_eq!(
        e["ganesha_block"].as_str().map(|b| conf.contains(b)),
        Some(true)
    );
    // The repository stays valid with the records and trees.
    env.ok(&["verify"]);

    // Again, with a server for the nodes: the tree and its Export_Id stay.
    let again = json(&env.ok(&[
        "export",
        "base",
        "--nfs",
        "--nfs-server",
        "nfs1:2050",
        "--json",
    ]));
    assert_eq!(again["reused"], true);
    assert_eq!(again["export_id"], 1000);
    assert_eq!(again["server"], "nfs1:2050");
    let err = env.fails(&["export", "base", "--nfs", "--nfs-server", "nfs1:port"], 2);
    assert!(err.contains("not a port"), "{err}");
    // A second revision: the next Export_Id, both blocks in the file.
    fs::write(g.join("etc/motd"), "two\n").unwrap();
    env.getimage(&g, "other", &[]);
    let e2 = json(&env.ok(&["export", "other", "--nfs", "--json"]));
    assert_eq!(e2["export_id"], 1001);
    let conf = fs::read_to_string(e["ganesha_config"].as_str().unwrap()).unwrap();
    assert_eq!(conf.matches("EXPORT {").count(), 2, "{conf}");

    // nfs-ganesha takes the blocks and serves them.
    let port = free_port();
    let ganesha = Ganesha::start(&env, port, Path::new(e["ganesha_config"].as_str().unwrap()));
    let log = ganesha.stop();
    assert!(log.contains("NFS SERVER INITIALIZED"), "{log}");
    assert!(
        !log.contains(":CONFIG :CRIT") && !log.contains(":CONFIG :MAJ"),
        "{log}"
    );

    // gc deletes the tree of a removed revision, its record and its block.
    env.ok(&["rmimage", "base"]);
    let gc = json(&env.ok(&["gc", "--json"]));
    assert_eq!(gc["nfs_trees_deleted"], 1, "{gc:#}");
    assert!(!tree.exists());
    assert!(!env.public().join(format!("netroot/{id}.nfs.json")).exists());
    let conf = fs::read_to_string(e["ganesha_config"].as_str().unwrap()).unwrap();
    assert_eq!(conf.matches("EXPORT {").count(), 1, "{conf}");
    assert!(conf.contains("Export_Id = 1001;"), "{conf}");
    eprintln!(
        "nfs export on the host: {export_s:.2} s for {} entries, {} bytes of files",
        e["entries"], e["tree_bytes"]
    );
}

/// Detaches a loop device when dropped.
struct Detach(String);

impl Drop for Detach {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

/// Unmounts what a host-side `boot-netroot` left mounted, innermost first, when dropped.
struct Unmount(Vec<PathBuf>);

impl Drop for Unmount {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = Command::new("umount").arg(p).status();
        }
    }
}

/// A network root booted on the host itself (no QEMU): `aurum export --netroot` publishes an
/// EROFS image of a revision with the things an image must keep (owners, setuid, nanosecond
/// mtimes, xattrs, hardlinks, symlinks); `aurum boot-netroot` asks `aurum serve` who the node
/// is by MAC, fetches the image whole, mounts it read-only under a tmpfs overlay and lays the
/// node's override over it. The root is then the revision plus the override by hash
/// (`updateclient --dry-run --verify-local`), its writes go to the tmpfs, and a revision
/// without an image is refused with the command that publishes one.
#[test]
fn netroot_on_the_host_is_the_revision_plus_overrides() {
    if !can_run(is_root(), "root (mount)")
        || !need("mkfs.erofs")
        || !need("setfattr")
        || !need("losetup")
    {
        return;
    }
    let env = Env::new();
    let g = env.path("golden");
    sh(&format!(
        "set -e; mkdir -p '{g}'; cd '{g}'; mkdir -p etc/ssh usr/bin var/lib srv/data run tmp
         echo 'root:x:0:0::/root:/bin/sh' > etc/passwd
         mkdir -p etc/aurum; echo 'image = \"base@1\"' > etc/aurum/node.toml
         printf 'UUID=abcd / ext4 defaults 0 1\\n' > etc/fstab
         head -c 300000 /dev/urandom > usr/bin/tool; chmod 4755 usr/bin/tool
         ln usr/bin/tool usr/bin/tool-again
         ln -s tool usr/bin/tool-link
         echo data > srv/data/file; chown 1234:5678 srv/data/file
         touch -d '2021-02-03 04:05:06.123456789' srv/data/file
         setfattr -n user.aurum -v netroot srv/data/file",
        g = g.display()
    ));
    env.getimage(&g, "base", &[]);
    let o = env.path("override.n1");
    fs::create_dir_all(o.join("etc/ssh")).unwrap();
    fs::write(o.join("etc/ssh/ssh_host_ed25519_key.pub"), "n1's key\n").unwrap();
    fs::write(o.join("etc/motd"), "node n1\n").unwrap();
    // Its persistent directory: a filesystem of its own (here on a loop device), listed in
    // the override, mounted by boot-netroot; one that is absent but `nofail` is a warning.
    let label = format!("per{}", std::process::id() % 100_000);
    let disk = env.path("persist.img");
    let seed = env.path("persist-seed");
    fs::create_dir_all(&seed).unwrap();
    fs::write(seed.join("kept"), "from the last boot\n").unwrap();
    sh(&format!(
        "truncate -s 16M '{d}' && mkfs.ext4 -q -F -L {label} -d '{s}' '{d}'",
        d = disk.display(),
        s = seed.display()
    ));
    let lo = sh(&format!("losetup --find --show '{}'", disk.display()));
    let lo = lo.trim().to_string();
    let _detach = Detach(lo.clone());
    fs::create_dir_all(o.join("etc/aurum")).unwrap();
    fs::write(
        o.join("etc/aurum/persist.fstab"),
        format!("LABEL={label} /var/lib/persist ext4 defaults 0 2\nLABEL=absent{label} /mnt/scratch auto nofail 0 0\n"),
    )
    .unwrap();
    env.getimage(&o, "override.n1", &["--no-default-excludes"]);
    env.ok(&[
        "node",
        "add",
        "n1",
        "--mac",
        "52:54:00:00:00:21",
        "--image",
        "base",
        "--rootfs",
        "netroot",
    ]);
    let srv = Server::start(&env);
    let server = format!("http://{}", srv.addr);
    let root = env.path("newroot");
    let rw = env.path("rw");
    let boot = |env: &Env| {
        env.bare(&[
            "boot-netroot",
            "--server",
            &server,
            "--mac",
            "52:54:00:00:00:21",
            "--root",
            root.to_str().unwrap(),
            "--rw",
            rw.to_str().unwrap(),
            "--no-report",
            "--json",
        ])
        .output()
        .unwrap()
    };

    // Not exported yet: refused, saying how to publish it, and nothing stays mounted.
    let out = boot(&env);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("has no network-root image") && err.contains("aurum export base@1 --netroot"),
        "{err}"
    );
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains(rw.to_str().unwrap()), "{mounts}");

    let started = Instant::now();
    let e = json(&env.ok(&["export", "base", "--netroot", "--json"]));
    let export_s = started.elapsed().as_secs_f64();
    let id = e["id"].as_str().unwrap().to_string();
    // Named by its content, its record by the revision.
    let image = env
        .public()
        .join(format!("netroot/{}.erofs", e["blake3"].as_str().unwrap()));
    assert_eq!(e["output"], image.to_str().unwrap());
    assert_eq!(
        fs::metadata(&image).unwrap().len(),
        e["bytes"].as_u64().unwrap()
    );
    let record =
        json(&fs::read_to_string(env.public().join(format!("netroot/{id}.erofs.json"))).unwrap());
    assert_eq!(record["blake3"], e["blake3"]);
    // The published layout takes the image (verify does not call it foreign).
    env.ok(&["verify"]);
    // -o FILE.erofs: the same image elsewhere, published nowhere.
    let elsewhere = env.path("base.erofs");
    env.ok(&["export", "base", "-o", elsewhere.to_str().unwrap()]);
    let look = env.path("look");
    fs::create_dir_all(&look).unwrap();
    let seen = sh(&format!(
        "mount -t erofs -o ro,loop '{}' '{l}' && stat -c '%a %u:%g %y' '{l}/srv/data/file'; umount '{l}'",
        elsewhere.display(),
        l = look.display()
    ));
    assert_eq!(seen, "644 1234:5678 2021-02-03 04:05:06.123456789 +0000\n");
    assert_eq!(
        fs::read_dir(env.public().join("netroot")).unwrap().count(),
        2
    );

    let out = boot(&env);
    let _mounted = Unmount(vec![
        root.join("var/lib/persist"),
        root.clone(),
        rw.join("aurum-netroot/lower"),
        rw.clone(),
    ]);
    assert!(
        out.status.success(),
        "boot-netroot failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(r["node"], "n1");
    assert_eq!(
        r["overrides"][0].as_str().unwrap().split(' ').next(),
        Some("override.n1@1")
    );
    assert!(r["fetched_bytes"].as_u64().unwrap() >= r["image_bytes"].as_u64().unwrap());
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        mounts.contains(&format!("{} overlay", root.display())),
        "{mounts}"
    );

    // The revision's metadata, as the image keeps it.
    let st = sh(&format!(
        "cd '{}' && stat -c '%a %u:%g %y %h' usr/bin/tool srv/data/file && getfattr --only-values -n user.aurum srv/data/file && readlink usr/bin/tool-link",
        root.display()
    ));
    let tool_mtime = sh(&format!("stat -c '%y' '{}/usr/bin/tool'", g.display()));
    assert_eq!(
        st,
        format!(
            "4755 0:0 {} 2\n644 1234:5678 2021-02-03 04:05:06.123456789 +0000 1\nnetroottool\n",
            tool_mtime.trim_end()
        )
    );
    // The override and the identity are in the root, written to the tmpfs.
    assert_eq!(
        fs::read_to_string(root.join("etc/ssh/ssh_host_ed25519_key.pub")).unwrap(),
        "n1's key\n"
    );
    assert_eq!(
        fs::read_to_string(root.join("etc/hostname")).unwrap(),
        "n1\n"
    );
    assert!(fs::read_to_string(root.join("etc/fstab"))
        .unwrap()
        .contains("#diskless# UUID=abcd"));
    assert!(rw.join("aurum-netroot/upper/etc/motd").exists());
    fs::write(root.join("srv/data/new"), "written on the node\n").unwrap();
    assert!(rw.join("aurum-netroot/upper/srv/data/new").exists());
    assert!(fs::write(rw.join("aurum-netroot/lower/srv/data/x"), "").is_err());
    // The persistent directory is the node's own filesystem, not the tmpfs.
    assert_eq!(
        r["persist"],
        serde_json::json!(["/var/lib/persist"]),
        "{r:#}"
    );
    assert!(
        r["warnings"][0]
            .as_str()
            .unwrap()
            .contains("is not mounted on /mnt/scratch (nofail)"),
        "{r:#}"
    );
    assert_eq!(
        fs::read_to_string(root.join("var/lib/persist/kept")).unwrap(),
        "from the last boot\n"
    );
    fs::write(root.join("var/lib/persist/new"), "this boot\n").unwrap();
    assert!(!rw.join("aurum-netroot/upper/var/lib/persist/new").exists());

    // By hash, the root is the revision and the node's override.
    let plan = json(&env.ok(&[
        "updateclient",
        "--root",
        root.to_str().unwrap(),
        "--server",
        &server,
        "--image",
        "base@1",
        "--dry-run",
        "--verify-local",
        "--exclude",
        "/srv/data/new",
        "--exclude",
        "/var/lib/persist",
        "--json",
    ]));
    for k in ["created", "changed", "metadata_only", "deleted"] {
        assert_eq!(
            plan[k], 0,
            "the netroot differs from base@1 + override.n1: {plan:#}"
        );
    }
    // Changed on the node: seen as a difference.
    fs::write(root.join("srv/data/file"), "changed\n").unwrap();
    let plan = json(&env.ok(&[
        "updateclient",
        "--root",
        root.to_str().unwrap(),
        "--server",
        &server,
        "--image",
        "base@1",
        "--dry-run",
        "--verify-local",
        "--exclude",
        "/srv/data/new",
        "--json",
    ]));
    assert_eq!(plan["changed"], 1, "{plan:#}");
    // A re-export publishes a new image (mkfs.erofs stamps its build time) beside the one
    // nodes may be fetching, and switches the record to it; gc removes the one no record
    // names.
    let again = json(&env.ok(&["export", "base", "--netroot", "--json"]));
    let image2 = PathBuf::from(again["output"].as_str().unwrap());
    assert!(image.exists() && image2.exists());
    let record =
        json(&fs::read_to_string(env.public().join(format!("netroot/{id}.erofs.json"))).unwrap());
    assert_eq!(record["blake3"], again["blake3"]);
    if image2 != image {
        let gc = json(&env.ok(&["gc", "--json"]));
        assert_eq!(gc["netroot_images_deleted"], 1, "{gc:#}");
        assert!(!image.exists() && image2.exists());
    }
    // gc deletes the image with its revision.
    let image = image2;
    env.ok(&["rmimage", "base"]);
    let gc = json(&env.ok(&["gc", "--json"]));
    assert_eq!(gc["netroot_images_deleted"], 1, "{gc:#}");
    assert!(!image.exists());
    assert!(!env
        .public()
        .join(format!("netroot/{id}.erofs.json"))
        .exists());
    eprintln!(
        "netroot on the host: export {export_s:.2} s, image {} bytes for {} bytes of files, boot {:.2} s, {} bytes fetched",
        e["bytes"], e["tree_bytes"], r["seconds"].as_f64().unwrap(), r["fetched_bytes"]
    );
}

/// The boot check of the rollout test: health (its report is the rollout's gate), then the
/// node stays up with sshd, for the rollout to reboot it.
const ROLLOUT_CHECK: &str = r#"#!/bin/sh
exec >/dev/ttyS0 2>&1
echo "AURUM-CHECK: booted $(cat /etc/version) into $(stat -f -c %T /), up $(cut -d' ' -f1 /proc/uptime) s"
aurum --no-progress health --timeout 60
echo "AURUM-CHECK: version $(cat /etc/version) health rc=$?, up $(cut -d' ' -f1 /proc/uptime) s"
"#;

/// Issue 21 item 3 in QEMU: a BIOS node whose BMC is ipmi_sim (spoken to by the real
/// ipmitool) is powered on through it and boots deb@1 into memory, passing its health check;
/// `aurum rollout` resets it through the BMC into deb@2, which passes; then into deb@3, whose
/// required health check fails, and the rollout falls it back by resetting it into deb@2.
/// Every update is a reset through the BMC, then PXE and the kit. (The reboot over ssh, for
/// nodes without a BMC, is `fleet::rollouts_reboot_diskless_nodes_and_fall_back`.)
#[test]
fn qemu_diskless_node_is_rolled_out_by_reboot_and_falls_back() {
    let rom = Path::new("/usr/lib/ipxe/qemu/efi-virtio.rom");
    let needs = [
        "qemu-system-x86_64",
        "busybox",
        "depmod",
        "apt-get",
        "dpkg",
        "debootstrap",
        "strip",
        "ssh",
        "ssh-keygen",
        "sgdisk",
        "mkfs.ext4",
        "ipmi_sim",
        "ipmitool",
    ];
    let missing: Vec<&&str> = needs.iter().filter(|p| !have(p)).collect();
    if !missing.is_empty() || !rom.exists() || !is_root() {
        skip(&format!(
            "the diskless rollout test needs root, ipxe-qemu's ROMs and {missing:?}"
        ));
        return;
    }
    let env = Env::new();
    debian_kernel();
    build_kit(&env);
    let srv = Server::start(&env);
    let port = srv.addr.rsplit(':').next().unwrap().to_string();
    let server = format!("http://10.0.2.2:{port}");
    let cmdline = env.repo().join("bootkit/cmdline");
    let append = fs::read_to_string(&cmdline).unwrap();
    fs::write(
        &cmdline,
        format!("{} systemd.show_status=0\n", append.trim()),
    )
    .unwrap();
    let key = host_key_override(&env, &[]);
    let g = debian_golden(&env, &server, &key, "tmpfs", ROLLOUT_CHECK);
    let excludes = [
        "--exclude",
        "/usr/share/doc/*",
        "--exclude",
        "/usr/share/man/*",
        "--exclude",
        "/usr/share/locale/*",
        "--exclude",
        "/usr/share/info/*",
    ];
    for version in 1..=3 {
        fs::write(g.join("etc/version"), format!("{version}\n")).unwrap();
        if version == 3 {
            write_mode(
                &g.join("etc/aurum/health/required.d/20-broken"),
                "#!/bin/sh\necho 'the service of version 3 does not start'\nexit 1\n",
                0o755,
            );
        }
        env.getimage(&g, "deb", &excludes);
    }
    let sim = crate::power::IpmiSim::start(env.dir.path());
    let bmc_pw = env.path("bmc-password");
    write_mode(
        &bmc_pw,
        &format!("{}\n", crate::power::IPMI_PASSWORD),
        0o600,
    );
    env.ok(&[
        "node",
        "add",
        "vm1",
        "--mac",
        MAC,
        "--ip",
        "127.0.0.1",
        "--image",
        "deb@1",
        "--rootfs",
        "memory",
        "--bmc",
        &sim.addr,
        "--bmc-user",
        "admin",
        "--bmc-password-file",
        bmc_pw.to_str().unwrap(),
    ]);
    let tftp = env.path("tftp");
    env.ok(&[
        "pxe",
        "tftp",
        "--tftp-root",
        tftp.to_str().unwrap(),
        "--server",
        &server,
    ]);
    let log = env.path("serial.log");
    // Without -no-reboot: a reboot from inside the guest is a reset, and the firmware
    // PXE-boots again. The BMC starts this script on power on and on reset; every boot
    // appends to the one console log.
    let mut args: Vec<String> = crate::qemu::machine()
        .into_iter()
        .filter(|a| a != "-no-reboot")
        .collect();
    args.extend([
        "-boot".into(),
        "order=n".into(),
        "-device".into(),
        format!("virtio-net-pci,netdev=n0,mac={MAC}"),
        "-netdev".into(),
        format!(
            "user,id=n0,net=10.0.2.0/24,tftp={},bootfile=boot.ipxe",
            tftp.display()
        ),
    ]);
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    write_mode(
        &sim.state.join("qemu.sh"),
        &format!(
            "#!/bin/sh\necho $$ > '{}'\nexec qemu-system-x86_64 {} </dev/null >>'{}' 2>/dev/null\n",
            sim.state.join("qemu.pid").display(),
            quoted.join(" "),
            log.display()
        ),
        0o755,
    );
    let _guest = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let on = env.ok(&["power", "on", "vm1"]);
    assert!(on.contains("vm1"), "{on}");
    // The first boot: deb@1 into memory, healthy.
    loop {
        let text = serial(&log);
        if text.contains("AURUM-CHECK: version 1 health rc=") {
            assert!(
                text.contains("AURUM-CHECK: version 1 health rc=0"),
                "{}",
                story(&log)
            );
            break;
        }
        let failed = text.contains("here is a shell") || text.contains("Kernel panic");
        if failed || started.elapsed() > Duration::from_secs(420) {
            panic!(
                "the first boot did not pass its health check after {:.0} s:\n{}",
                started.elapsed().as_secs_f64(),
                story(&log)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let first = started.elapsed();
    let rollout = |rev: &str| {
        let t = Instant::now();
        let out = env
            .cmd(&[
                "rollout",
                "start",
                rev,
                "vm1",
                "--canary",
                "0",
                "--server",
                &server,
                "--boot-timeout",
                "420",
                "--json",
            ])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
            panic!("{}\n{}", String::from_utf8_lossy(&out.stderr), story(&log))
        });
        (out.status.code(), v, t.elapsed())
    };
    let node = |v: &serde_json::Value| v["nodes"][0].clone();

    let (code, v, good) = rollout("deb@2");
    assert_eq!(code, Some(0), "{v:#}\n{}", story(&log));
    assert_eq!(node(&v)["state"], "done", "{v:#}");
    assert_eq!(node(&v)["previous"], "deb@1", "{v:#}");
    let good_detail = node(&v)["detail"].clone();
    assert!(
        good_detail
            .as_str()
            .unwrap()
            .contains(&format!("reset through its BMC {}", sim.addr)),
        "{v:#}"
    );
    let waited = Instant::now();
    while !serial(&log).contains("AURUM-CHECK: version 2 health rc=0")
        && waited.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        serial(&log).contains("AURUM-CHECK: version 2 health rc=0"),
        "{}",
        story(&log)
    );

    let (code, v, bad) = rollout("deb@3");
    assert_eq!(code, Some(1), "{v:#}\n{}", story(&log));
    assert_eq!(v["rollout"]["state"], "failed", "{v:#}");
    let n = node(&v);
    assert_eq!(n["state"], "fell-back", "{v:#}");
    let detail = n["detail"].as_str().unwrap();
    assert!(
        detail.contains(
            "unhealthy on deb@3 (20-broken); fell back to deb@2: rebooted into it, healthy"
        ),
        "{detail}"
    );
    // The last boot is deb@2 again, healthy. Its report reached the server before the check
    // printed its line: give the console a moment.
    let last_is_healthy_2 = || {
        let text = serial(&log);
        text.rfind("AURUM-CHECK: version")
            .is_some_and(|i| text[i..].starts_with("AURUM-CHECK: version 2 health rc=0"))
    };
    let waited = Instant::now();
    while !last_is_healthy_2() && waited.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(500));
    }
    let text = serial(&log);
    assert!(
        text.contains("AURUM-CHECK: version 3 health rc=1"),
        "{}",
        story(&log)
    );
    assert!(last_is_healthy_2(), "{}", story(&log));
    let show = json(&env.ok(&["node", "show", "vm1", "--json"]));
    assert_eq!(show["node"]["image"], "deb@2", "{show:#}");
    // ipmitool's calls, as the BMC saw them: the power on, then a reset for each reboot
    // (into deb@2, into deb@3, and the fallback into deb@2).
    let calls = sim.file("calls.log");
    assert_eq!(calls.matches("set power 1").count(), 1, "{calls}");
    assert_eq!(calls.matches("reset").count(), 3, "{calls}");
    drop(sim);
    eprintln!(
        "diskless rollout (BIOS, TCG): first boot to health {:.0} s; rollout of deb@2 {:.0} s ({}); \
         rollout of the unhealthy deb@3 with its fallback {:.0} s ({})",
        first.as_secs_f64(),
        good.as_secs_f64(),
        good_detail,
        bad.as_secs_f64(),
        detail
    );
}

/// Boots `count` diskless nodes (n01.., MACs 52:54:00:00:03:NN) into tmpfs roots under
/// `dir` at the same moment, each with `servers` and `extra` arguments; their reports
/// (JSON), in node order, and the wall time of the whole storm.
fn storm(
    env: &Env,
    dir: &Path,
    count: usize,
    servers: &[String],
    extra: &[&str],
) -> (Vec<serde_json::Value>, Duration) {
    let started = Instant::now();
    let children: Vec<(PathBuf, std::process::Child)> = (1..=count)
        .map(|i| {
            let root = dir.join(format!("n{i:02}"));
            fs::create_dir_all(&root).unwrap();
            let mac = format!("52:54:00:00:03:{i:02x}");
            let mut args = vec!["boot-memory", "--mac", &mac, "--headroom", "16", "--json"];
            for s in servers {
                args.extend(["--server", s]);
            }
            args.extend(["--root", root.to_str().unwrap()]);
            args.extend_from_slice(extra);
            let child = env
                .bare(&args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            (root, child)
        })
        .collect();
    let mut reports = Vec::new();
    for (root, child) in children {
        let out = child.wait_with_output().unwrap();
        let _ = Command::new("umount").arg(&root).status();
        assert!(
            out.status.success(),
            "{}: {}",
            root.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        reports.push(json(&String::from_utf8_lossy(&out.stdout)));
    }
    (reports, started.elapsed())
}

/// The spread of the nodes' `seconds` (fetch and lay, the start delay included): min and max.
fn spread(reports: &[serde_json::Value]) -> (f64, f64) {
    let s: Vec<f64> = reports
        .iter()
        .map(|r| r["seconds"].as_f64().unwrap())
        .collect();
    (
        s.iter().cloned().fold(f64::MAX, f64::min),
        s.iter().cloned().fold(0.0, f64::max),
    )
}

/// Issue 21 item 4 without QEMU: the fetch step of a diskless boot (`boot-memory`, as the kit
/// runs it) through a `serve --upstream` cache tier on loopback. A node given a dead server
/// first fails over to the tier (and reports through it); its root is the revision, and its
/// node.toml names the same servers and proxy for its updates. The server suggests a start
/// window scaled to its diskless nodes. Then storms of 16 nodes at once: straight at the
/// origin, through the tier (the origin sends one copy), and with a jittered start.
#[test]
fn memory_boots_fetch_through_a_cache_tier_with_failover_and_jitter() {
    if !is_root() {
        skip("the diskless fetch test mounts tmpfs roots: it needs root");
        return;
    }
    let origin_env = crate::tiers::origin();
    let count = 16;
    for i in 1..=count {
        origin_env.ok(&[
            "node",
            "add",
            &format!("n{i:02}"),
            "--mac",
            &format!("52:54:00:00:03:{i:02x}"),
            "--image",
            "img",
            "--rootfs",
            "memory",
        ]);
    }
    let origin = Server::start(&origin_env);
    let cache = Env::new();
    let tier = Server::start_with(&cache, &["--upstream", &format!("http://{}", origin.addr)]);
    let tier_url = format!("http://{}", tier.addr);
    let origin_url = format!("http://{}", origin.addr);

    // The identity, through the tier, carries the start window: 16 diskless nodes, 1 s per 50.
    let (status, _, body) = crate::serve::http(
        &tier.addr,
        "GET",
        "/api/v1/boot/52:54:00:00:03:01",
        &[],
        b"",
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let me = json(&String::from_utf8_lossy(&body));
    assert_eq!(me["node"], "n01");
    assert!((me["jitter"].as_f64().unwrap() - 0.32).abs() < 1e-9, "{me}");

    // A dead server first (nothing listens on port 1): the node fails over to the tier.
    let root = origin_env.path("mem/failover");
    fs::create_dir_all(&root).unwrap();
    let out = origin_env
        .bare(&[
            "boot-memory",
            "--server",
            "http://127.0.0.1:1",
            "--server",
            &tier_url,
            "--proxy",
            "",
            "--connect-timeout",
            "2",
            "--mac",
            "52:54:00:00:03:01",
            "--root",
            root.to_str().unwrap(),
            "--headroom",
            "16",
            "--jitter",
            "1.5",
            "--json",
        ])
        .output()
        .unwrap();
    let toml = fs::read_to_string(root.join("etc/aurum/node.toml")).unwrap_or_default();
    if !out.status.success() {
        let _ = Command::new("umount").arg(&root).status();
        panic!("{}", String::from_utf8_lossy(&out.stderr));
    }
    let diff = crate::common::rsync_diff(&root.join("data"), &origin_env.path("golden/data"));
    let _ = Command::new("umount").arg(&root).status();
    assert_eq!(diff, "", "the tmpfs root differs from img");
    let r = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(r["start_window"], 1.5, "{r}");
    assert!(r["start_delay"].as_f64().unwrap() <= 1.5, "{r}");
    assert!(
        toml.contains(&format!(
            "server = [\"http://127.0.0.1:1\", \"{tier_url}\"]\nproxy = \"\"\n"
        )),
        "{toml}"
    );
    let after_first = origin.sent.load(Ordering::Relaxed);
    assert!(after_first > 5 << 20, "the origin sent {after_first} bytes");
    // Its phases went to the tier that answered, and on to the origin.
    let show = origin_env.ok(&["node", "show", "n01"]);
    assert!(show.contains("phase     done img@1"), "{show}");

    // 16 nodes at once through the tier: the origin sends next to nothing more (the tier has
    // every pack from the first node), and every node is laid.
    let dir = origin_env.path("mem/storm");
    let before = origin.sent.load(Ordering::Relaxed);
    let (via_tier, tier_time) = storm(
        &origin_env,
        &dir,
        count,
        std::slice::from_ref(&tier_url),
        &["--jitter", "0"],
    );
    let tier_origin_bytes = origin.sent.load(Ordering::Relaxed) - before;
    assert!(
        tier_origin_bytes * 20 < after_first,
        "16 nodes behind the warm tier cost the origin {tier_origin_bytes} bytes (one node {after_first})"
    );
    // The same storm straight at the origin: 16 copies.
    let before = origin.sent.load(Ordering::Relaxed);
    let (direct, direct_time) = storm(
        &origin_env,
        &dir,
        count,
        std::slice::from_ref(&origin_url),
        &["--jitter", "0"],
    );
    let direct_bytes = origin.sent.load(Ordering::Relaxed) - before;
    assert!(direct_bytes > 15 * (after_first / 2), "{direct_bytes}");
    // With the window the server suggests (0.32 s here) and with a 4 s one.
    let (suggested, suggested_time) = storm(
        &origin_env,
        &dir,
        count,
        std::slice::from_ref(&origin_url),
        &[],
    );
    for r in &suggested {
        assert!(
            (r["start_window"].as_f64().unwrap() - 0.32).abs() < 1e-9,
            "{r}"
        );
    }
    let (jittered, jittered_time) = storm(
        &origin_env,
        &dir,
        count,
        std::slice::from_ref(&origin_url),
        &["--jitter", "4"],
    );
    let delays: Vec<f64> = jittered
        .iter()
        .map(|r| r["start_delay"].as_f64().unwrap())
        .collect();
    assert!(delays.iter().all(|d| (0.0..=4.0).contains(d)), "{delays:?}");
    let distinct: std::collections::BTreeSet<u64> =
        delays.iter().map(|d| (d * 1000.0) as u64).collect();
    assert!(
        distinct.len() > count / 2,
        "the nodes started together: {delays:?}"
    );
    let lay = |rs: &[serde_json::Value]| {
        let v: Vec<f64> = rs
            .iter()
            .map(|r| r["seconds"].as_f64().unwrap() - r["start_delay"].as_f64().unwrap())
            .collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    eprintln!(
        "boot storm of {count} diskless nodes ({:.1} MiB fetched each): through the warm tier \
         {:.1} s wall, origin sent {:.2} MiB, per node {:.1}-{:.1} s; straight at the origin \
         {:.1} s wall, origin sent {:.1} MiB, per node {:.1}-{:.1} s (mean fetch {:.2} s); \
         suggested window 0.32 s: {:.1} s wall (mean fetch {:.2} s); 4 s window: {:.1} s wall, \
         mean fetch after the delay {:.2} s",
        via_tier[0]["fetched_bytes"].as_f64().unwrap() / 1048576.0,
        tier_time.as_secs_f64(),
        tier_origin_bytes as f64 / 1048576.0,
        spread(&via_tier).0,
        spread(&via_tier).1,
        direct_time.as_secs_f64(),
        direct_bytes as f64 / 1048576.0,
        spread(&direct).0,
        spread(&direct).1,
        lay(&direct),
        suggested_time.as_secs_f64(),
        lay(&suggested),
        jittered_time.as_secs_f64(),
        lay(&jittered),
    );
}

/// Captures image `big` from the golden client `g` (three files of incompressible data, so an
/// export takes a few seconds to kill it in), and SIGKILLs `aurum export big EXPORT` once its
/// checkout in the repository's `tmp/` has begun.
fn export_killed_in_its_checkout(env: &Env, g: &Path, export: &str) {
    for i in 0..3 {
        crate::common::write_random(&g.join(format!("data/{i}")), i, 16 << 20);
    }
    env.getimage(g, "big", &[]);
    let mut child = env
        .cmd(&["export", "big", export])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let tmp = env.repo().join("tmp");
    let started = Instant::now();
    while fs::read_dir(&tmp).map(|d| d.count()).unwrap_or(0) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the export never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(50));
    child.kill().unwrap();
    assert!(
        !child.wait().unwrap().success(),
        "the export finished before it was killed"
    );
}

/// `export --netroot` killed part-way (during the checkout or mkfs.erofs) leaves no image and no
/// record under `public/netroot/`, a repository `verify` passes, and a checkout in `tmp/` that
/// `gc` removes; the export run again publishes the image. Re-exports killed at any point
/// leave the record naming a whole image (issue #21: images are named by content and the
/// record is written last), and gc removes the images no record names.
#[test]
fn a_killed_netroot_export_publishes_nothing() {
    if !can_run(is_root(), "root (checkout)") || !need("mkfs.erofs") {
        return;
    }
    let env = Env::new();
    let g = env.path("golden");
    export_killed_in_its_checkout(&env, &g, "--netroot");
    let tmp = env.repo().join("tmp");
    let published = env.public().join("netroot");
    let left: Vec<_> = fs::read_dir(&published)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "a killed export left {left:?}");
    env.ok(&["verify"]);
    assert!(fs::read_dir(&tmp).unwrap().count() > 0);
    env.ok(&["gc"]);
    assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0);
    let started = Instant::now();
    let e = json(&env.ok(&["export", "big", "--netroot", "--json"]));
    let whole = started.elapsed();
    let record = published.join(format!("{}.erofs.json", e["id"].as_str().unwrap()));
    assert!(record.exists());
    // Re-exports killed at points spread over their run, late ones included (mkfs.erofs
    // done, the image being synced, renamed, the record written): each time the record names
    // a whole image with its hash, the old one or the new one, and verify passes.
    for share in [0.5, 0.9, 0.97] {
        let mut child = env
            .cmd(&["export", "big", "--netroot"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(whole.mul_f64(share));
        let _ = child.kill();
        let finished = child.wait().unwrap().success();
        let r = json(&fs::read_to_string(&record).unwrap());
        let image = env.public().join(r["path"].as_str().unwrap());
        let bytes = fs::read(&image).unwrap();
        assert_eq!(
            (
                bytes.len() as u64,
                blake3::hash(&bytes).to_hex().to_string()
            ),
            (
                r["bytes"].as_u64().unwrap(),
                r["blake3"].as_str().unwrap().to_string()
            ),
            "killed at {share} of an export (finished: {finished}), the record names another image"
        );
        env.ok(&["verify"]);
    }
    // gc leaves the record and the image it names.
    env.ok(&["gc"]);
    let mut left: Vec<String> = fs::read_dir(&published)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    let r = json(&fs::read_to_string(&record).unwrap());
    let mut want = vec![
        format!("{}.erofs", r["blake3"].as_str().unwrap()),
        format!("{}.erofs.json", e["id"].as_str().unwrap()),
    ];
    want.sort();
    assert_eq!(left, want);
}

/// A repository whose network-root image was published before images were named by content
/// (`netroot/ID.erofs`, its record naming that) has it renamed to `netroot/HASH.erofs` and
/// its record rewritten at the first open by this aurum, once; verify and gc then take it as
/// any other export, and a signed image keeps its signature.
#[test]
fn an_image_named_by_revision_is_renamed_to_its_content_name() {
    if !can_run(is_root(), "root (checkout)") || !need("mkfs.erofs") {
        return;
    }
    let env = Env::new();
    let g = env.path("golden");
    fs::create_dir_all(g.join("etc")).unwrap();
    fs::write(g.join("etc/motd"), "old layout\n").unwrap();
    env.getimage(&g, "base", &[]);
    let key = env.path("admin");
    env.ok(&["key", "generate", key.to_str().unwrap()]);
    let e = json(&env.ok(&[
        "export",
        "base",
        "--netroot",
        "--sign-key",
        key.to_str().unwrap(),
        "--json",
    ]));
    let (id, hash) = (e["id"].as_str().unwrap(), e["blake3"].as_str().unwrap());
    let dir = env.public().join("netroot");
    // As an older aurum left it.
    fs::rename(
        dir.join(format!("{hash}.erofs")),
        dir.join(format!("{id}.erofs")),
    )
    .unwrap();
    let record = dir.join(format!("{id}.erofs.json"));
    let mut r = json(&fs::read_to_string(&record).unwrap());
    r["path"] = format!("netroot/{id}.erofs").into();
    fs::write(&record, serde_json::to_vec_pretty(&r).unwrap()).unwrap();
    let db = rusqlite::Connection::open(env.repo().join("aurum.db")).unwrap();
    db.execute("DELETE FROM meta WHERE key = 'netroot-content-names'", [])
        .unwrap();
    drop(db);

    let v = env.ok(&["verify"]);
    assert!(v.contains("network-root images: 1 signed"), "{v}");
    assert!(dir.join(format!("{hash}.erofs")).exists());
    assert!(!dir.join(format!("{id}.erofs")).exists());
    let r = json(&fs::read_to_string(&record).unwrap());
    assert_eq!(r["path"], format!("netroot/{hash}.erofs"));
    let gc = json(&env.ok(&["gc", "--json"]));
    assert_eq!(gc["netroot_images_deleted"], 0, "{gc:#}");
    assert!(dir.join(format!("{hash}.erofs")).exists());
}

/// `export --nfs` killed during its checkout leaves no tree under `nfsroot/`, no record and
/// no EXPORT block; `verify` passes, `gc` removes the checkout left in `tmp/`, and the export
/// run again publishes the whole tree (rsync finds no difference from the golden tree).
#[test]
fn a_killed_nfs_export_publishes_nothing() {
    if !can_run(is_root(), "root (checkout)") || !need("rsync") {
        return;
    }
    let env = Env::new();
    let g = env.path("golden");
    export_killed_in_its_checkout(&env, &g, "--nfs");
    let tmp = env.repo().join("tmp");
    let trees: Vec<_> = fs::read_dir(env.repo().join("nfsroot"))
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(trees.is_empty(), "a killed export left {trees:?}");
    let records: Vec<_> = fs::read_dir(env.public().join("netroot"))
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(records.is_empty(), "a killed export left {records:?}");
    env.ok(&["verify"]);
    assert!(fs::read_dir(&tmp).unwrap().count() > 0);
    env.ok(&["gc"]);
    assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0);
    let e = json(&env.ok(&["export", "big", "--nfs", "--json"]));
    assert_eq!(e["reused"], false);
    let tree = Path::new(e["path"].as_str().unwrap());
    let diff = crate::common::rsync_diff(&g, tree);
    assert!(diff.is_empty(), "{diff}");
    let conf = fs::read_to_string(e["ganesha_config"].as_str().unwrap()).unwrap();
    assert_eq!(conf.matches("EXPORT {").count(), 1, "{conf}");
}
