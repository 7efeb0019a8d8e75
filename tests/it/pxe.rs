//! The node database, DHCP/TFTP/iPXE configuration, install phase reports, and a real network
//! install: QEMU (TCG) PXE-boots a node with iPXE from QEMU's built-in DHCP/TFTP, loads the
//! boot kit from `aurum serve`, installs a small busybox image onto a raw virtio disk,
//! reports every phase and powers off; the disk is then checked on the host.
//!
//! The QEMU test needs what ./test.sh installs (qemu-system-x86 from bookworm-backports,
//! ipxe-qemu, busybox-static, kmod, gdisk, e2fsprogs, dosfstools) and downloads Debian's
//! kernel package once into /var/cache/aurum-test, from the archive of the machine's own APT
//! sources. QEMU runs under TCG (no KVM), one guest at a time.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{have, is_root, json, sh, skip, Env};
use crate::serve::Server;

pub(crate) const MAC: &str = "52:54:00:00:00:10";

fn get(url: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut r = agent.get(url).call().expect("GET");
    (
        r.status().as_u16(),
        r.body_mut().read_to_string().unwrap_or_default(),
    )
}

/// POSTs `body` with `token`, as the boot kit's installer does.
fn post(url: &str, body: &str, token: &str) -> u16 {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    agent
        .post(url)
        .header("Content-Type", "application/json")
        .header("Authorization", format!("Bearer {token}"))
        .send(body)
        .expect("POST")
        .status()
        .as_u16()
}

#[test]
fn node_database_refuses_duplicates_and_normalises_macs() {
    let env = Env::new();
    // A node's image must exist (issue #15): compute:prod.
    let tree = env.path("tree");
    fs::create_dir_all(tree.join("etc")).unwrap();
    env.getimage(&tree, "compute", &[]);
    env.ok(&["tag", "compute@1", "prod"]);
    env.ok(&[
        "node",
        "add",
        "n01",
        "--mac",
        "52-54-00-11-23-0A",
        "--ip",
        "10.0.1.1",
        "--class",
        "compute",
        "--image",
        "compute:prod",
        "--group",
        "rack1",
        "--bmc",
        "10.0.9.1",
    ]);
    let e = env.fails(&["node", "add", "n02", "--mac", "5254.0011.230a"], 2);
    assert!(
        e.contains("MAC 52:54:00:11:23:0a is already node n01's"),
        "{e}"
    );
    let e = env.fails(
        &[
            "node",
            "add",
            "n02",
            "--mac",
            "52:54:00:11:23:02",
            "--ip",
            "10.0.1.1",
        ],
        2,
    );
    assert!(e.contains("IP 10.0.1.1 is already node n01's"), "{e}");
    let e = env.fails(&["node", "add", "n01", "--mac", "52:54:00:11:23:03"], 2);
    assert!(e.contains("node n01 already exists"), "{e}");
    let e = env.fails(&["node", "add", "n02", "--mac", "52:54:00:11:23"], 2);
    assert!(e.contains("is not a MAC address"), "{e}");
    let e = env.fails(
        &[
            "node",
            "add",
            "n02",
            "--mac",
            "52:54:00:11:23:02",
            "--class",
            "../x",
        ],
        2,
    );
    assert!(
        e.contains("`../x` is not a valid class name: use letters, digits"),
        "{e}"
    );

    // Import: all or nothing.
    let csv = env.path("nodes.csv");
    fs::write(
        &csv,
        "name,mac,class\nn02,52:54:00:11:23:02,compute\nn03,52:54:00:11:23:03,gpu/a100\n",
    )
    .unwrap();
    let e = env.fails(&["node", "import", csv.to_str().unwrap()], 2);
    assert!(
        e.contains("nodes.csv:3: `gpu/a100` is not a valid class name"),
        "{e}"
    );
    fs::write(
        &csv,
        "name,mac,ip,class,image,group\nn02,52:54:00:11:23:02,10.0.1.2,compute,compute,rack1\nn03,52:54:00:11:23:0A,10.0.1.3,,,\n",
    )
    .unwrap();
    let e = env.fails(&["node", "import", csv.to_str().unwrap()], 2);
    assert!(e.contains("already node n01's"), "{e}");
    assert_eq!(
        json(&env.ok(&["node", "list", "--json"]))
            .as_array()
            .unwrap()
            .len(),
        1
    );
    fs::write(
        &csv,
        "name,mac,ip,class,image,group\nn02,52:54:00:11:23:02,10.0.1.2,compute,compute,rack1\nn03,52:54:00:11:23:03,,,,\n",
    )
    .unwrap();
    env.ok(&["node", "import", csv.to_str().unwrap()]);
    let list = json(&env.ok(&["node", "list", "--json"]));
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["n01", "n02", "n03"]);
    assert_eq!(list[0]["mac"], "52:54:00:11:23:0a");
    assert_eq!(list[0]["bmc"], "10.0.9.1");
    assert_eq!(list[0]["boot"], "install");

    env.ok(&["node", "set", "n03", "--ip", "10.0.1.3", "--class", "login"]);
    let e = env.fails(&["node", "set", "n03", "--mac", "52:54:00:11:23:02"], 2);
    assert!(e.contains("already node n02's"), "{e}");
    let show = env.ok(&["node", "show", "n03"]);
    assert!(
        show.contains("10.0.1.3") && show.contains("login"),
        "{show}"
    );
    assert!(show.contains("never reported"), "{show}");
    // Lookup by MAC, in any spelling.
    assert!(env
        .ok(&["node", "show", "52-54-00-11-23-03"])
        .contains("node      n03"));
    env.ok(&["node", "rm", "n03"]);
    env.fails(&["node", "show", "n03"], 2);
    assert!(env.ok(&["node", "list"]).contains("n02"));
}

#[test]
fn dhcp_configs_pass_dnsmasq_and_dhcpd_checks() {
    let env = Env::new();
    env.ok(&[
        "node",
        "add",
        "n01",
        "--mac",
        "52:54:00:11:23:01",
        "--ip",
        "10.0.1.1",
    ]);
    env.ok(&["node", "add", "n02", "--mac", "52:54:00:11:23:02"]);
    let server = "http://10.0.1.254:8035";
    let full = env.path("dnsmasq.conf");
    let proxy = env.path("proxy.conf");
    let dhcpd = env.path("dhcpd.conf");
    env.ok(&[
        "pxe",
        "config",
        "--dnsmasq",
        full.to_str().unwrap(),
        "--server",
        server,
        "--subnet",
        "10.0.1.0/24",
        "--range",
        "10.0.1.100,10.0.1.200",
        "--tftp-root",
        "/srv/tftp",
    ]);
    env.ok(&[
        "pxe",
        "config",
        "--dnsmasq",
        proxy.to_str().unwrap(),
        "--server",
        server,
        "--subnet",
        "10.0.1.0/24",
        "--proxy",
    ]);
    env.ok(&[
        "pxe",
        "config",
        "--dhcpd",
        dhcpd.to_str().unwrap(),
        "--server",
        server,
        "--subnet",
        "10.0.1.0/24",
        "--range",
        "10.0.1.100,10.0.1.200",
    ]);
    let text = fs::read_to_string(&full).unwrap();
    for want in [
        "dhcp-host=52:54:00:11:23:01,10.0.1.1,n01,infinite",
        "dhcp-host=52:54:00:11:23:02,n02",
        "dhcp-match=set:efi64,option:client-arch,7",
        "dhcp-userclass=set:ipxe,iPXE",
        "dhcp-boot=tag:ipxe,http://10.0.1.254:8035/boot/${mac}.ipxe",
        "dhcp-boot=tag:!ipxe,tag:efi64,snponly.efi",
        "dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe",
    ] {
        assert!(text.contains(want), "no `{want}` in:\n{text}");
    }
    assert!(fs::read_to_string(&proxy)
        .unwrap()
        .contains("dhcp-range=10.0.1.0,proxy"));
    let text = fs::read_to_string(&dhcpd).unwrap();
    assert!(text.contains(
        "host n01 { hardware ethernet 52:54:00:11:23:01; fixed-address 10.0.1.1; option host-name \"n01\"; }"
    ));
    let e = env.fails(
        &[
            "pxe",
            "config",
            "--dhcpd",
            "/dev/null",
            "--server",
            server,
            "--proxy",
        ],
        2,
    );
    assert!(e.contains("ProxyDHCP"), "{e}");

    if have("dnsmasq") {
        for f in [&full, &proxy] {
            sh(&format!("dnsmasq --test -C {}", f.display()));
        }
    } else {
        skip("dnsmasq is not installed (dnsmasq-base): its syntax check cannot run");
    }
    if have("dhcpd") {
        sh(&format!("dhcpd -t -cf {}", dhcpd.display()));
    } else {
        skip("dhcpd is not installed (isc-dhcp-server): its syntax check cannot run");
    }
}

#[test]
fn serve_gives_per_node_scripts_and_a_done_report_switches_to_local_boot() {
    let env = Env::new();
    // A node's class and image must exist (issue #15).
    let tree = env.path("tree");
    fs::create_dir_all(tree.join("etc")).unwrap();
    env.getimage(&tree, "tiny", &[]);
    let t = env.path("tiny.toml");
    fs::write(&t, TEMPLATE).unwrap();
    env.ok(&["template", "import", t.to_str().unwrap()]);
    env.ok(&[
        "node", "add", "n01", "--mac", MAC, "--image", "tiny", "--class", "tiny",
    ]);
    let tftp = env.path("tftp");
    let srv = Server::start(&env);
    let base = format!("http://{}", srv.addr);
    env.ok(&[
        "pxe",
        "tftp",
        "--tftp-root",
        tftp.to_str().unwrap(),
        "--server",
        &base,
    ]);
    let first = fs::read_to_string(tftp.join("boot.ipxe")).unwrap();
    assert!(
        first.contains(&format!("chain {base}/boot/${{mac}}.ipxe")),
        "{first}"
    );
    let node_file = tftp.join("ipxe/52-54-00-00-00-10.ipxe");
    let pxelinux = tftp.join("pxelinux.cfg/01-52-54-00-00-00-10");
    assert!(fs::read_to_string(&node_file).unwrap().contains("kernel "));
    assert!(fs::read_to_string(&pxelinux).unwrap().contains("APPEND "));

    // iPXE escapes the colons of ${mac}.
    let (st, script) = get(&format!("{base}/boot/52%3A54%3A00%3A00%3A00%3A10.ipxe"));
    assert_eq!(st, 200);
    assert!(
        script.contains(&format!("kernel {base}/boot/kit/vmlinuz initrd=initrd.img aurum.server={base} aurum.node=n01 aurum.image=tiny aurum.class=tiny")),
        "{script}"
    );
    let (_, unknown) = get(&format!("{base}/boot/52:54:00:00:00:99.ipxe"));
    assert!(unknown.contains("not in the node database"), "{unknown}");

    // The script hands the installer its node's token, which its reports carry.
    let token = script
        .split_whitespace()
        .find_map(|w| w.strip_prefix("aurum.token="))
        .unwrap_or_else(|| panic!("no aurum.token= in {script}"))
        .to_string();
    let url = format!("{base}/api/v1/install/n01");
    assert_eq!(
        post(
            &url,
            r#"{"phase":"transfer","detail":"1 of 2 bytes","revision":"tiny@1 0123abcd","done":1,"total":2}"#,
            &token
        ),
        204
    );
    assert!(env
        .ok(&["node", "show", "n01"])
        .contains("phase     transfer"));
    assert_eq!(
        post(
            &format!("{base}/api/v1/install/n99"),
            r#"{"phase":"done","detail":""}"#,
            &token
        ),
        403,
        "n01's token wrote for n99"
    );
    assert_eq!(
        post(
            &format!("{base}/api/v1/install/n99"),
            r#"{"phase":"done","detail":""}"#,
            &env.admin_token()
        ),
        404
    );
    assert_eq!(
        post(&url, r#"{"phase":"done","detail":"installed"}"#, &token),
        204
    );

    let show = env.ok(&["node", "show", "n01"]);
    assert!(show.contains("boot      local"), "{show}");
    assert!(show.contains("revision  tiny@1 0123abcd"), "{show}");
    let (_, script) = get(&format!("{base}/boot/{MAC}.ipxe"));
    assert!(
        script.contains("sanboot --no-describe --drive 0x80"),
        "{script}"
    );
    assert!(fs::read_to_string(&node_file).unwrap().contains("sanboot"));
    assert!(fs::read_to_string(&pxelinux)
        .unwrap()
        .contains("LOCALBOOT 0"));
    let nodes = env.ok(&["nodes"]);
    assert!(
        nodes.contains("install") && nodes.contains("ok") && nodes.contains("done tiny@1"),
        "{nodes}"
    );

    // What the boot kit's /init sends when an install fails: the log tail.
    let log = env.path("install.log");
    let lines: Vec<String> = (1..=60).map(|i| format!("line {i}")).collect();
    fs::write(&log, lines.join("\n") + "\nsgdisk: cannot open /dev/vda\n").unwrap();
    env.ok(&[
        "install-report",
        "--server",
        &base,
        "--node",
        "n01",
        "--phase",
        "failed",
        "--detail-file",
        log.to_str().unwrap(),
    ]);
    let show = json(&env.ok(&["node", "show", "n01", "--json"]));
    let last = &show["node"]["last"];
    assert_eq!(last["phase"], "failed");
    let detail = last["detail"].as_str().unwrap();
    assert!(detail.ends_with("sgdisk: cannot open /dev/vda"), "{detail}");
    assert!(
        !detail.contains("line 20\n") && detail.contains("line 60"),
        "{detail}"
    );
    assert!(env.ok(&["nodes"]).contains("failed"));

    env.ok(&["pxe", "netboot", "n01", "--install"]);
    assert!(fs::read_to_string(&node_file).unwrap().contains("kernel "));
    let (_, script) = get(&format!("{base}/boot/{MAC}.ipxe"));
    assert!(script.contains("kernel "), "{script}");
}

#[test]
fn bootkit_has_init_tools_and_modules_in_dependency_order() {
    if !["busybox", "sgdisk", "mkfs.ext4", "blkid", "cpio"]
        .iter()
        .all(|p| have(p))
    {
        skip("needs busybox-static, gdisk, e2fsprogs, util-linux, cpio");
        return;
    }
    let env = Env::new();
    // A kernel tree with fake modules: only the file names and modules.dep matter here.
    let mods = env.path("tree/lib/modules/6.1.0-99-amd64");
    for m in [
        "kernel/fs/ext4/ext4.ko",
        "kernel/fs/jbd2/jbd2.ko",
        "kernel/fs/mbcache.ko",
    ] {
        fs::create_dir_all(mods.join(m).parent().unwrap()).unwrap();
        fs::write(mods.join(m), m).unwrap();
    }
    fs::write(
        mods.join("modules.dep"),
        "kernel/fs/ext4/ext4.ko: kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko\nkernel/fs/jbd2/jbd2.ko:\nkernel/fs/mbcache.ko:\n",
    )
    .unwrap();
    fs::write(
        mods.join("modules.builtin"),
        "kernel/drivers/block/virtio_blk.ko\n",
    )
    .unwrap();
    let kernel = env.path("tree/vmlinuz-6.1.0-99-amd64");
    fs::write(&kernel, "not really a kernel").unwrap();
    let kit = env.path("kit");
    let build = |extra: &[&str]| {
        let mut a = vec![
            "bootkit",
            "build",
            "--kernel",
            kernel.to_str().unwrap(),
            "--modules",
        ];
        let tree = env.path("tree");
        let tree = tree.to_str().unwrap().to_string();
        let kit = kit.to_str().unwrap().to_string();
        a.push(&tree);
        a.push("-o");
        a.push(&kit);
        a.extend_from_slice(extra);
        env.run(&a)
    };
    // The installer's trusted key travels in the kit (issue 20), given as its .pub file.
    let key = env.path("admin.key");
    env.ok(&["key", "generate", key.to_str().unwrap()]);
    let key_pub = format!("{}.pub", key.display());
    let out = build(&[
        "--module",
        "ext4",
        "--module",
        "virtio_blk",
        "--append",
        "console=ttyS0",
        "--trusted-key",
        &key_pub,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = build(&["--module", "e1000"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no module e1000"));

    assert_eq!(
        fs::read_to_string(kit.join("cmdline")).unwrap(),
        "console=ttyS0\n"
    );
    assert_eq!(
        fs::read(kit.join("vmlinuz")).unwrap(),
        b"not really a kernel"
    );
    let list = sh(&format!(
        "zcat {} | cpio -it --quiet",
        kit.join("initrd.img").display()
    ));
    for want in [
        "init",
        "bin/busybox",
        "bin/sh",
        "sbin/udhcpc",
        "usr/bin/aurum",
        "usr/sbin/sgdisk",
        "usr/sbin/mkfs.ext4",
        "usr/sbin/blkid",
        "dev/console",
        "lib/modules/6.1.0-99-amd64/kernel/fs/ext4/ext4.ko",
        "etc/aurum-modules",
        "etc/udhcpc.script",
    ] {
        assert!(
            list.lines().any(|l| l == want),
            "no {want} in the initramfs:\n{list}"
        );
    }
    let x = env.path("x");
    fs::create_dir_all(&x).unwrap();
    sh(&format!(
        "cd {} && zcat {} | cpio -id --quiet etc/aurum-modules init etc/aurum/node.toml",
        x.display(),
        kit.join("initrd.img").display()
    ));
    let node_toml = fs::read_to_string(x.join("etc/aurum/node.toml")).unwrap();
    let key_line = fs::read_to_string(&key_pub).unwrap();
    assert!(
        node_toml.contains(&format!("trusted-keys = [\"{}\"]", key_line.trim())),
        "{node_toml}"
    );
    let order = fs::read_to_string(x.join("etc/aurum-modules")).unwrap();
    let names: Vec<&str> = order
        .lines()
        .map(|l| l.rsplit('/').next().unwrap())
        .collect();
    assert_eq!(names, ["jbd2.ko", "mbcache.ko", "ext4.ko"]);
    assert!(fs::read_to_string(x.join("init"))
        .unwrap()
        .contains("aurum \"$@\""));
}

/// One TCG guest at a time: on a 2-core runner two or three at once starved a guest's kernel
/// (RCU stalls) past the time limit while other tests ran beside them (tests/it/power.rs's
/// reinstall guest takes it too).
pub(crate) static ONE_GUEST: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The kernel and its modules, from Debian's package, unpacked once into a cache outside the
/// repository. Returns (vmlinuz, the unpacked tree).
pub(crate) fn debian_kernel() -> (PathBuf, PathBuf) {
    // The QEMU tests run in parallel: one downloads and unpacks, the others wait for it.
    static ONCE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _once = ONCE.lock().unwrap_or_else(|e| e.into_inner());
    let cache = Path::new("/var/cache/aurum-test");
    fs::create_dir_all(cache).unwrap();
    let pkg =
        sh("apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/{print $2; exit}'");
    let pkg = pkg.trim();
    assert!(
        !pkg.is_empty(),
        "apt-cache knows no linux-image-amd64: run apt-get update"
    );
    let tree = cache.join(pkg);
    if !tree.join("boot").is_dir() {
        let deb = sh(&format!(
            "cd {c} && ls {pkg}_*.deb 2>/dev/null || (apt-get download -q {pkg} >&2 && ls {pkg}_*.deb)",
            c = cache.display()
        ));
        let tmp = cache.join(format!("{pkg}.tmp{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        sh(&format!(
            "dpkg -x {}/{} {}",
            cache.display(),
            deb.trim(),
            tmp.display()
        ));
        fs::rename(&tmp, &tree).unwrap();
    }
    let kernel = fs::read_dir(tree.join("boot"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("vmlinuz-")
        })
        .expect("the package has a vmlinuz");
    (kernel, tree)
}

/// A golden client of a few MB: busybox (so the chrooted hooks run) and some files.
pub(crate) fn golden(root: &Path) {
    for d in ["bin", "etc", "dev", "proc", "sys", "tmp", "var/lib/app"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::copy(sh("command -v busybox").trim(), root.join("bin/busybox")).unwrap();
    for l in [
        "sh", "cat", "echo", "sed", "grep", "rm", "ln", "chmod", "printf", "env",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(l)).unwrap();
    }
    fs::write(root.join("etc/motd"), "installed over the network\n").unwrap();
    crate::common::write_random(&root.join("var/lib/app/data"), 11, 2 << 20);
}

pub(crate) const TEMPLATE: &str = r#"description = "PXE test node: a small ESP and root"

[[disk]]

[[disk.partition]]
name = "esp"
type = "efi"
size = "16MiB"
fs = "vfat"
label = "ESP"
mount = "/boot/efi"
mount-options = "umask=0077"

[[disk.partition]]
name = "root"
size = "*"
fs = "ext4"
label = "root"
mount = "/"
"#;

/// The last lines of a serial log.
pub(crate) fn tail(log: &Path, n: usize) -> String {
    let text = String::from_utf8_lossy(&fs::read(log).unwrap_or_default()).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// How the VM gets DHCP and its first boot file.
#[derive(Clone, Copy, PartialEq)]
enum Net {
    /// QEMU's built-in DHCP and TFTP, handing out the TFTP tree's `boot.ipxe`.
    User,
    /// dnsmasq with aurum's generated configuration, on a tap device in a network namespace
    /// of its own (with `aurum serve` in it too).
    Dnsmasq,
}

/// The dnsmasq route: the node's fixed address and the host's address on the tap device.
const NODE_IP: &str = "10.77.0.10";
const HOST_IP: &str = "10.77.0.1";

/// Runs in a new network namespace: a tap device for QEMU, `aurum serve` and dnsmasq on it,
/// then QEMU in the foreground (its serial console on stdout).
const NETNS_SCRIPT: &str = r#"set -e
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
ip link set lo up
ip tuntap add dev tap0 mode tap
ip addr add "$HOST_IP/24" dev tap0
ip -6 addr add fd77::1/64 dev tap0
ip link set tap0 up
"$AURUM" --repo "$REPO" --no-progress serve --listen "$HOST_IP:8035" 2>"$WORK/serve.log" &
# RA only: without an IPv6 router iPXE waits ~13 s for one.
dnsmasq --keep-in-foreground --conf-file="$CONF" --user=root --pid-file="$WORK/dnsmasq.pid" \
    --dhcp-leasefile="$WORK/leases" --log-dhcp --enable-ra --dhcp-range=fd77::,ra-only \
    2>"$WORK/dnsmasq.log" &
for i in $(seq 50); do
    [ -s "$WORK/serve.log" ] && [ -s "$WORK/dnsmasq.pid" ] && break
    sleep 0.1
done
"$@"
"#;

/// Whether the dnsmasq route can run here.
fn can_netns() -> bool {
    is_root()
        && Path::new("/dev/net/tun").exists()
        && ["unshare", "ip", "dnsmasq"].iter().all(|p| have(p))
}

/// Debian's OVMF (x86-64 UEFI firmware for QEMU), read-only code and a template of its
/// variable store.
pub(crate) const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub(crate) const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// The disk layout a PXE test installs.
#[derive(Clone, Copy, PartialEq)]
enum Layout {
    /// [`TEMPLATE`]: GPT, an ESP and an ext4 root.
    Gpt,
    /// tests/data/si/qemu-msdos-raid1.xml converted by `template import-si`: an msdos label,
    /// ext2 /boot, an extended partition with two RAID1 members (mdadm in the guest: the test
    /// machine's kernel has no md module) holding an ext3 root, and swap.
    SiMsdosRaid1,
}

/// PXE-installs a QEMU node over `net`, booting SeaBIOS or (`uefi`) OVMF, with `layout`, and
/// checks the disk, the reports and the switch to local boot.
fn pxe_install(net: Net, uefi: bool, layout: Layout) {
    let rom = Path::new("/usr/lib/ipxe/qemu/efi-virtio.rom");
    let needs = [
        "qemu-system-x86_64",
        "busybox",
        "sgdisk",
        "mkfs.ext4",
        "mkfs.vfat",
        "e2fsck",
        "debugfs",
        "depmod",
        "apt-get",
        "dpkg",
    ];
    // The kit carries the host's sfdisk, mdadm and mkfs.ext2/3 for the guest.
    let si_needs: &[&str] = match layout {
        Layout::Gpt => &[],
        Layout::SiMsdosRaid1 => &["sfdisk", "mdadm", "mkfs.ext2", "mkfs.ext3", "mkswap"],
    };
    let missing: Vec<&&str> = needs.iter().chain(si_needs).filter(|p| !have(p)).collect();
    if !missing.is_empty() || !rom.exists() {
        skip(&format!(
            "the PXE install test needs {missing:?}{}",
            if rom.exists() {
                ""
            } else {
                " and ipxe-qemu's ROMs"
            }
        ));
        return;
    }
    if uefi && !Path::new(OVMF_CODE).exists() {
        skip(&format!(
            "the UEFI install test needs {OVMF_CODE} (package ovmf)"
        ));
        return;
    }
    if net == Net::Dnsmasq && !can_netns() {
        skip("the dnsmasq route needs root, /dev/net/tun, unshare, ip and dnsmasq");
        return;
    }
    let started = Instant::now();
    let env = Env::new();
    build_kit(&env);
    let kit_built = started.elapsed();

    let g = env.path("golden");
    golden(&g);
    let captured = env.getimage(&g, "tiny", &[]);
    // `tiny@1 1f2e3d4c`: the node names the revision by image and short id.
    let short_id = captured.split_whitespace().nth(1).unwrap().to_string();
    match layout {
        Layout::Gpt => {
            let t = env.path("tiny.toml");
            fs::write(&t, TEMPLATE).unwrap();
            env.ok(&["template", "import", t.to_str().unwrap()]);
        }
        Layout::SiMsdosRaid1 => {
            let xml = crate::si::layout("qemu-msdos-raid1.xml");
            env.ok(&[
                "template",
                "import-si",
                xml.to_str().unwrap(),
                "--class",
                "tiny",
            ]);
        }
    }
    let mut add = vec![
        "node", "add", "vm1", "--mac", MAC, "--image", "tiny", "--class", "tiny",
    ];
    if net == Net::Dnsmasq {
        add.extend(["--ip", NODE_IP]);
    }
    env.ok(&add);
    let tftp = env.path("tftp");
    let disk = env.path("disk.raw");
    fs::File::create(&disk).unwrap().set_len(256 << 20).unwrap();
    let log = env.path("serial.log");

    let mut qemu_args: Vec<String> = vec!["qemu-system-x86_64".into()];
    qemu_args.extend(crate::qemu::machine());
    qemu_args.extend([
        "-boot".into(),
        "order=n".into(),
        "-device".into(),
        format!("virtio-net-pci,netdev=n0,mac={MAC}"),
        "-drive".into(),
        format!("file={},format=raw,if=virtio,cache=unsafe", disk.display()),
    ]);
    if uefi {
        let vars = env.path("OVMF_VARS.fd");
        fs::copy(OVMF_VARS, &vars).unwrap();
        qemu_args.extend(crate::qemu::pflash(&vars));
    }
    qemu_args.push("-netdev".into());
    // Kept alive (the user route's server) until the checks are done.
    let mut _srv = None;
    let mut cmd = match net {
        Net::User => {
            let srv = Server::start(&env);
            let port = srv.addr.rsplit(':').next().unwrap().to_string();
            _srv = Some(srv);
            env.ok(&[
                "pxe",
                "tftp",
                "--tftp-root",
                tftp.to_str().unwrap(),
                "--server",
                &format!("http://10.0.2.2:{port}"),
            ]);
            qemu_args.push(format!(
                "user,id=n0,net=10.0.2.0/24,tftp={},bootfile=boot.ipxe",
                tftp.display()
            ));
            let mut c = Command::new(&qemu_args[0]);
            c.args(&qemu_args[1..]);
            c
        }
        Net::Dnsmasq => {
            let server = format!("http://{HOST_IP}:8035");
            env.ok(&[
                "pxe",
                "tftp",
                "--tftp-root",
                tftp.to_str().unwrap(),
                "--server",
                &server,
            ]);
            let conf = env.path("dnsmasq.conf");
            env.ok(&[
                "pxe",
                "config",
                "--dnsmasq",
                conf.to_str().unwrap(),
                "--server",
                &server,
                "--interface",
                "tap0",
                "--subnet",
                "10.77.0.0/24",
                "--tftp-root",
                tftp.to_str().unwrap(),
            ]);
            qemu_args.push("tap,id=n0,ifname=tap0,script=no,downscript=no".into());
            let mut c = Command::new("unshare");
            c.args(["-n", "bash", "-c", NETNS_SCRIPT, "netns"])
                .args(&qemu_args)
                .env("AURUM", env!("CARGO_BIN_EXE_aurum"))
                .env("REPO", env.repo())
                .env("WORK", env.dir.path())
                .env("CONF", &conf)
                .env("HOST_IP", HOST_IP);
            c
        }
    };
    let _guest = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let booted = Instant::now();
    let mut qemu = crate::qemu::spawn(cmd.stderr(Stdio::piped()), &log);
    let wait = crate::qemu::Wait {
        started: booted,
        limit: Duration::from_secs(240),
        poll: Duration::from_millis(500),
        lines: 60,
    };
    let status = wait
        .exit(&mut qemu, &log, |text| {
            (text.contains("aurum: install failed") || text.contains("here is a shell"))
                .then_some("the install failed")
        })
        .unwrap_or_else(|why| panic!("{why}\ndnsmasq: {}", tail(&env.path("dnsmasq.log"), 20)));
    let mut err = String::new();
    qemu.stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let install_time = booted.elapsed();
    assert!(
        status.success(),
        "qemu: {status}\n{err}\n{}",
        tail(&log, 60)
    );
    let serial = String::from_utf8_lossy(&fs::read(&log).unwrap()).into_owned();
    assert!(
        serial.contains("aurum: install done: poweroff"),
        "{}",
        tail(&log, 60)
    );
    match net {
        // The first script reached aurum serve (not only the TFTP fallback).
        Net::User => assert!(
            !serial.contains("trying the TFTP copy"),
            "{}",
            tail(&log, 80)
        ),
        // iPXE got the per-node script straight from DHCP, and the node its fixed address.
        Net::Dnsmasq => {
            assert!(
                serial.contains(&format!("http://{HOST_IP}:8035/boot/")),
                "{}",
                tail(&log, 80)
            );
            assert!(
                serial.contains(&format!("has address {NODE_IP}")),
                "{}",
                tail(&log, 80)
            );
        }
    }
    eprintln!(
        "boot kit built in {:.1} s; PXE boot to installed and powered off in {:.1} s",
        kit_built.as_secs_f64(),
        install_time.as_secs_f64()
    );

    match layout {
        Layout::Gpt => check_gpt_disk(&env, &disk, &g),
        Layout::SiMsdosRaid1 => check_msdos_raid1_disk(&disk, &g),
    }

    // The node reported every phase, and is switched to local boot.
    let show = env.ok(&["node", "show", "vm1"]);
    assert!(show.contains("boot      local"), "{show}");
    assert!(show.contains("phase     done"), "{show}");
    assert!(
        show.contains(&format!("revision  tiny@1 {short_id}")),
        "{show}"
    );
    // Every phase reached the server. From the catalog, not `node show`, which lists the
    // last 40 (a RAID layout's install reports more: each array and filesystem).
    let db = rusqlite::Connection::open(env.repo().join("aurum.db")).unwrap();
    let reported: Vec<String> = db
        .prepare("SELECT DISTINCT phase FROM install_phases WHERE node = 'vm1'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for phase in [
        "facts",
        "partition",
        "mkfs",
        "transfer",
        "hooks",
        "bootloader",
        "done",
    ] {
        assert!(
            reported.iter().any(|p| p == phase),
            "no {phase} phase reported: {reported:?}\n{show}"
        );
    }
    let script = fs::read_to_string(tftp.join("ipxe/52-54-00-00-00-10.ipxe")).unwrap();
    assert!(script.contains("sanboot"), "{script}");
}

/// The disk of a [`Layout::Gpt`] install: GPT as the template says, a clean ext4 root holding
/// the revision.
fn check_gpt_disk(env: &Env, disk: &Path, g: &Path) {
    let gpt = sh(&format!("sgdisk -p {}", disk.display()));
    let rows: Vec<Vec<&str>> = gpt
        .lines()
        .skip_while(|l| !l.starts_with("Number"))
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 2, "{gpt}");
    assert_eq!((rows[0][5], rows[0][6]), ("EF00", "esp"), "{gpt}");
    assert_eq!((rows[1][5], rows[1][6]), ("8300", "root"), "{gpt}");
    let offset: u64 = rows[1][1].parse::<u64>().unwrap() * 512;
    fsck_clean(disk, offset);
    let cat = |p: &str| debugfs_cat(disk, offset, p);
    assert_eq!(cat("/etc/motd"), "installed over the network\n");
    assert_eq!(cat("/etc/hostname"), "vm1\n");
    assert!(cat("/etc/fstab").contains("/boot/efi"));
    if is_root() && Path::new("/dev/loop-control").exists() {
        let mnt = env.path("mnt");
        fs::create_dir_all(&mnt).unwrap();
        sh(&format!(
            "mount -o ro,loop,offset={offset} {} {}",
            disk.display(),
            mnt.display()
        ));
        let same = |rel: &str| fs::read(g.join(rel)).unwrap() == fs::read(mnt.join(rel)).unwrap();
        let ok = same("var/lib/app/data") && same("bin/busybox");
        let listing = sh(&format!("ls -la {}/bin | head -5", mnt.display()));
        sh(&format!("umount {}", mnt.display()));
        assert!(
            ok,
            "the installed files differ from the golden client's:\n{listing}"
        );
    }
}

/// The file `path` of the ext filesystem at `offset` of `disk`, read with debugfs.
fn debugfs_cat(disk: &Path, offset: u64, path: &str) -> String {
    sh(&format!(
        "debugfs -R 'cat {path}' '{}?offset={offset}' 2>/dev/null",
        disk.display()
    ))
}

/// `e2fsck -fn` passes on the filesystem at `offset` of `disk`.
fn fsck_clean(disk: &Path, offset: u64) {
    let fsimg = format!("{}?offset={offset}", disk.display());
    let out = Command::new("e2fsck")
        .args(["-fn", &fsimg])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "e2fsck -fn {fsimg}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The disk of a [`Layout::SiMsdosRaid1`] install: an MBR with the partition types and boot
/// flag of the layout, an ext2 /boot, two RAID1 members of one array (read with `mdadm
/// --examine` through a loop device: no md driver needed on this side) each holding the same
/// clean ext3 root with the revision, and swap.
fn check_msdos_raid1_disk(disk: &Path, g: &Path) {
    let table = json(&sh(&format!("sfdisk --json {}", disk.display())));
    let t = &table["partitiontable"];
    assert_eq!(t["label"], "dos", "{table}");
    let parts = t["partitions"].as_array().unwrap();
    let kinds: Vec<(&str, &str)> = parts
        .iter()
        .map(|p| (p["node"].as_str().unwrap(), p["type"].as_str().unwrap()))
        .collect();
    let name = disk.display().to_string();
    let want: Vec<(String, &str)> = [
        ("1", "83"),
        ("2", "5"),
        ("5", "fd"),
        ("6", "fd"),
        ("7", "82"),
    ]
    .iter()
    .map(|(n, t)| (format!("{name}{n}"), *t))
    .collect();
    assert_eq!(
        kinds,
        want.iter()
            .map(|(n, t)| (n.as_str(), *t))
            .collect::<Vec<_>>(),
        "{table}"
    );
    assert_eq!(parts[0]["bootable"], true, "{table}");
    let start = |i: usize| parts[i]["start"].as_u64().unwrap() * 512;
    let probe = |offset: u64| {
        sh(&format!(
            "blkid -p -O {offset} -o export {} || true",
            disk.display()
        ))
    };
    assert!(probe(start(0)).contains("TYPE=ext2"), "{}", probe(start(0)));
    fsck_clean(disk, start(0));
    assert!(probe(start(4)).contains("TYPE=swap"), "{}", probe(start(4)));
    let mut uuids = Vec::new();
    for i in [2, 3] {
        let info = probe(start(i));
        assert!(info.contains("TYPE=linux_raid_member"), "{info}");
        let examine = sh(&format!(
            "l=$(losetup --find --show --read-only --offset {} --sizelimit {} {}); \
             mdadm --examine $l; r=$?; losetup -d $l; exit $r",
            start(i),
            parts[i]["size"].as_u64().unwrap() * 512,
            disk.display()
        ));
        assert!(examine.contains("Raid Level : raid1"), "{examine}");
        assert!(examine.contains("Raid Devices : 2"), "{examine}");
        let field = |k: &str| {
            examine
                .lines()
                .find_map(|l| l.trim().strip_prefix(k))
                .map(|v| v.trim_start_matches([' ', ':']).to_string())
                .unwrap_or_else(|| panic!("no {k} in:\n{examine}"))
        };
        uuids.push(field("Array UUID"));
        let data: u64 = field("Data Offset")
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        // Each mirror half holds the whole root filesystem after mdadm's data offset.
        let root = start(i) + data * 512;
        let info = probe(root);
        assert!(
            info.contains("TYPE=ext3") && info.contains("LABEL=root"),
            "{info}"
        );
        fsck_clean(disk, root);
        let cat = |p: &str| debugfs_cat(disk, root, p);
        assert_eq!(cat("/etc/motd"), "installed over the network\n");
        assert_eq!(cat("/etc/hostname"), "vm1\n");
        let fstab = cat("/etc/fstab");
        for want in ["/boot", "ext2", "ext3", "swap"] {
            assert!(fstab.contains(want), "no {want} in /etc/fstab:\n{fstab}");
        }
        let data = sh(&format!(
            "debugfs -R 'cat /var/lib/app/data' '{}?offset={root}' 2>/dev/null | cmp - {} && echo same",
            disk.display(),
            g.join("var/lib/app/data").display()
        ));
        assert!(data.contains("same"), "{data}");
    }
    assert_eq!(uuids[0], uuids[1], "the two members are of one array");
}

#[test]
fn qemu_node_installs_over_the_network_and_switches_to_local_boot() {
    pxe_install(Net::User, false, Layout::Gpt);
}

/// The same install with aurum's generated dnsmasq configuration as the DHCP server.
#[test]
fn qemu_node_installs_with_the_generated_dnsmasq_config() {
    pxe_install(Net::Dnsmasq, false, Layout::Gpt);
}

/// The same install on UEFI firmware (OVMF): iPXE's EFI build, the kernel's EFI stub, and
/// facts that say UEFI.
#[test]
fn qemu_uefi_node_installs_over_the_network() {
    pxe_install(Net::User, true, Layout::Gpt);
}

/// A SystemImager layout (msdos label, extended and logical partitions, RAID1 of two logical
/// partitions with ext3, ext2 /boot, swap) converted by `template import-si` and installed over
/// the network: sfdisk and mdadm run in the guest.
#[test]
fn qemu_node_installs_a_converted_systemimager_msdos_raid1_layout() {
    pxe_install(Net::User, false, Layout::SiMsdosRaid1);
}

/// A node row an older aurum wrote with a class name or install phase this one refuses (it
/// stored any) does not stop `node list`, `node show` or `node set`, which repairs it.
#[test]
fn node_rows_with_old_invalid_values_are_shown_and_repairable() {
    let env = Env::new();
    env.ok(&[
        "node",
        "add",
        "n1",
        "--mac",
        "52:54:00:00:00:01",
        "--class",
        "compute",
    ]);
    let db = rusqlite::Connection::open(env.repo().join("aurum.db")).unwrap();
    db.execute(
        "UPDATE inventory SET class = 'gpu a100', phase = 'hook-custom' WHERE name = 'n1'",
        [],
    )
    .unwrap();
    drop(db);
    let out = env.run(&["node", "list"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "node list fails on an old row: {err}");
    assert!(
        err.contains("aurum node set n1 --class"),
        "no warning naming the fix: {err}"
    );
    env.ok(&["node", "show", "n1"]);
    env.ok(&["node", "set", "n1", "--class", "compute"]);
    let out = env.run(&["node", "list"]);
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("is not valid"),
        "the class was not repaired"
    );
}

/// The boot kit of the Debian kernel in `env`'s repository (`bootkit/`), whose installer
/// reports on the serial console and powers off when done.
pub(crate) fn build_kit(env: &Env) -> std::path::PathBuf {
    let (kernel, tree) = debian_kernel();
    let kit = env.repo().join("bootkit");
    env.ok(&[
        "bootkit",
        "build",
        "--kernel",
        kernel.to_str().unwrap(),
        "--modules",
        tree.to_str().unwrap(),
        "-o",
        kit.to_str().unwrap(),
        "--append",
        "console=ttyS0,115200 aurum.done=poweroff",
    ]);
    kit
}
