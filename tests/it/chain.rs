//! The recursive chain end to end in QEMU (issue #16): a super master (this host, `aurum serve`
//! on 127.0.0.1) PXE-installs a cluster master VM from its `master` image, whose root holds an
//! aurum repository; the master boots from its disk, regenerates its DHCP/TFTP configuration
//! for its own addresses (`aurum pxe config`), serves its repository with `aurum serve` and
//! dnsmasq, and PXE-installs a compute VM from it on a network of their own. Then the super
//! master captures a new compute revision, the master pulls it (`aurum pull`) and the compute
//! node, booted from its disk, updates to it (`aurum updateclient`) and reports to the master.
//! The master's repository is captured by reference (embedded), and rebuilt by the install.
//! The two levels: the master's repository holds a `submaster` image whose root holds a
//! repository too; in the master VM it checks out and that repository verifies.
//!
//! Every VM runs under TCG. The installed roots are built from the boot kit's own initramfs
//! (busybox, aurum and its libraries), so they have no GRUB: a VM "boots its disk" with the
//! kit's kernel given to QEMU and the kit's initramfs with one more archive appended whose
//! `/init` loads the kit's modules, mounts the root partition and switch_roots to its
//! `/sbin/init` (the kernel unpacks concatenated archives in order, the last copy of a path
//! winning). That init mounts /proc, /sys and /dev and leaves a root shell on the serial
//! console, which the test types commands into.
//!
//! The master and the compute VM run at once (the master serves while the compute installs):
//! the whole test holds [`crate::pxe::ONE_GUEST`], like every QEMU test, so no other guest
//! of the suite competes with the two.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{json, need, sh, write_random, Env};
use crate::pxe::{build_kit, tail, ONE_GUEST, TEMPLATE};
use crate::serve::Server;

const MASTER_MAC: &str = "52:54:00:00:16:01";
/// The master's second NIC, on the cluster network it serves.
const MASTER_MAC2: &str = "52:54:00:00:16:02";
const COMPUTE_MAC: &str = "52:54:00:00:16:21";
const MASTER_IP: &str = "10.16.0.1";
const COMPUTE_IP: &str = "10.16.0.21";
/// Where the repository sits in the master's root (aurum's default).
const INNER_REPO: &str = "var/lib/aurum";

/// The `/init` appended to the kit's initramfs to boot an installed disk.
const LOCAL_BOOT_INIT: &str = r#"#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t devtmpfs devtmpfs /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
exec </dev/console >/dev/console 2>&1
while read -r m; do insmod "$m" 2>/dev/null; done < /etc/aurum-modules
for i in $(seq 100); do [ -b /dev/vda2 ] && break; sleep 0.1; done
mkdir -p /newroot
mount -t ext4 /dev/vda2 /newroot || exec setsid cttyhack sh
umount /proc /sys
mount --move /dev /newroot/dev
echo "local boot: switching to /dev/vda2"
exec switch_root /newroot /sbin/init
"#;

/// The installed roots' `/sbin/init`: the basic mounts, then a shell on the console.
const ROOT_INIT: &str = r#"#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /tmp /run /dev/pts
ifconfig lo 127.0.0.1 up
exec </dev/console >/dev/console 2>&1
echo "chain: root up on $(cat /etc/hostname 2>/dev/null)"
export PS1=
exec setsid cttyhack sh
"#;

/// A QEMU guest whose serial console is a file to read and a pipe to type into.
struct Guest {
    name: &'static str,
    child: Child,
    stdin: ChildStdin,
    log: PathBuf,
    commands: usize,
}

impl Guest {
    fn start(name: &'static str, env: &Env, args: &[String]) -> Guest {
        use std::os::unix::process::CommandExt;
        let log = env.path(&format!("{name}.serial"));
        let mut child = Command::new("qemu-system-x86_64")
            .args([
                "-accel",
                "tcg",
                "-cpu",
                "max",
                "-M",
                "q35",
                "-smp",
                "1",
                "-display",
                "none",
                "-no-reboot",
                "-nodefaults",
                "-serial",
                "stdio",
            ])
            .args(args)
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(fs::File::create(&log).unwrap())
            .stderr(fs::File::create(env.path(&format!("{name}.stderr"))).unwrap())
            .spawn()
            .expect("start qemu");
        let stdin = child.stdin.take().unwrap();
        Guest {
            name,
            child,
            stdin,
            log,
            commands: 0,
        }
    }

    fn serial(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// Fails the test with the console's last lines.
    fn fail(&mut self, why: &str) -> ! {
        self.kill();
        panic!(
            "{}: {why}; serial console (last 80 lines):\n{}",
            self.name,
            tail(&self.log, 80)
        );
    }

    fn kill(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.child.wait();
    }

    /// Waits until the console shows `want` after byte `from`; returns the console from
    /// `from`. Fails on `bad`, on the guest's exit, or after `limit`.
    fn wait_for(&mut self, from: usize, want: &str, bad: &[&str], limit: u64) -> String {
        let t = Instant::now();
        loop {
            let text = self.serial();
            let new = text.get(from..).unwrap_or("").to_string();
            if new.contains(want) {
                return new;
            }
            if let Some(b) = bad.iter().find(|b| new.contains(**b)) {
                self.fail(&format!("the console says `{b}`"));
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                self.fail(&format!("QEMU exited ({st}) before `{want}`"));
            }
            if t.elapsed() > Duration::from_secs(limit) {
                self.fail(&format!("no `{want}` after {limit} s"));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Runs `cmd` in the console's shell; returns what it printed (with the echo of the
    /// command). Fails unless it exits 0 within `limit` seconds.
    fn run(&mut self, cmd: &str, limit: u64) -> String {
        self.commands += 1;
        let n = self.commands;
        let from = self.serial().len();
        // The console echoes the command: its marker is split by quotes there, whole only
        // in what echo prints.
        writeln!(self.stdin, "{cmd} 2>&1; echo \"@@{n}\"\"=$?@@\"").unwrap();
        self.stdin.flush().unwrap();
        let out = self.wait_for(from, &format!("@@{n}="), &[], limit);
        if !out.contains(&format!("@@{n}=0@@")) {
            self.fail(&format!("`{cmd}` failed:\n{out}"));
        }
        out
    }

    /// Waits for QEMU to exit by itself (the guest powered off).
    fn wait_exit(&mut self, limit: u64) {
        let t = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                assert!(
                    st.success(),
                    "{}: qemu {st}\n{}",
                    self.name,
                    tail(&self.log, 60)
                );
                return;
            }
            if t.elapsed() > Duration::from_secs(limit) {
                self.fail(&format!("still running after {limit} s"));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

/// The QEMU arguments of a NIC.
fn nic(id: &str, mac: &str, slot: u8, backend: String) -> Vec<String> {
    vec![
        "-netdev".into(),
        backend,
        "-device".into(),
        format!("virtio-net-pci,netdev={id},mac={mac},addr={slot:#x}"),
    ]
}

/// The QEMU arguments of the virtio disk `disk`.
fn drive(disk: &Path) -> Vec<String> {
    vec![
        "-drive".into(),
        format!("file={},format=raw,if=virtio,cache=unsafe", disk.display()),
    ]
}

/// The QEMU arguments that boot the root partition of the installed disk: the kit's kernel,
/// and its initramfs with [`LOCAL_BOOT_INIT`] appended (`boot`).
fn local_boot(kit: &Path, boot: &Path) -> Vec<String> {
    vec![
        "-kernel".into(),
        kit.join("vmlinuz").display().to_string(),
        "-initrd".into(),
        boot.display().to_string(),
        "-append".into(),
        "console=ttyS0,115200 quiet".into(),
    ]
}

/// The kit's initramfs followed by an archive holding [`LOCAL_BOOT_INIT`] as `/init`.
fn local_boot_initrd(env: &Env, kit: &Path) -> PathBuf {
    let dir = env.path("localboot");
    fs::create_dir_all(&dir).unwrap();
    write_mode(&dir.join("init"), LOCAL_BOOT_INIT, 0o755);
    let out = env.path("localboot.img");
    sh(&format!(
        "cp {kit}/initrd.img {out} && cd {dir} && echo init | cpio -o -H newc --quiet | gzip -1 >> {out}",
        kit = kit.display(),
        out = out.display(),
        dir = dir.display()
    ));
    out
}

fn write_mode(path: &Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    if let Some(d) = path.parent() {
        fs::create_dir_all(d).unwrap();
    }
    let _ = fs::remove_file(path);
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A root that boots with [`local_boot`]: the kit's initramfs unpacked (busybox and its
/// applets, aurum and its libraries, the install tools), without its installer `/init`,
/// kernel modules (the initramfs loads them before switching) or device nodes, and with
/// [`ROOT_INIT`] as `/sbin/init`.
fn node_root(kit: &Path, root: &Path) {
    fs::create_dir_all(root).unwrap();
    sh(&format!(
        "cd {} && zcat {}/initrd.img | cpio -idm --quiet --nonmatching 'dev/*' && rm -rf init linuxrc lib/modules",
        root.display(),
        kit.display()
    ));
    for d in ["dev", "proc", "sys", "tmp", "run", "root"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    write_mode(&root.join("sbin/init"), ROOT_INIT, 0o755);
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )
    .unwrap();
    fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
}

/// Copies the program at `src` and the libraries `ldd` lists for it into `root`.
fn copy_program(src: &str, root: &Path) {
    sh(&format!(
        "cp -L --parents {src} {r} && for l in $(ldd {src} | grep -o '/[^ ]*'); do cp -L --parents $l {r}; done",
        r = root.display()
    ));
}

/// A compute root: [`node_root`] with an application's data and a banner of revision `n`.
fn compute_root(kit: &Path, root: &Path, n: u32) {
    if !root.exists() {
        node_root(kit, root);
        write_random(&root.join("var/lib/app/data"), 16, 1 << 20);
    }
    fs::write(root.join("etc/motd"), format!("compute revision {n}\n")).unwrap();
    write_random(
        &root.join(format!("var/lib/app/update-{n}")),
        16 + n as u64,
        256 << 10,
    );
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

#[test]
fn qemu_super_master_installs_a_master_that_installs_and_updates_a_compute_node() {
    let rom = Path::new("/usr/lib/ipxe/qemu/efi-virtio.rom");
    for t in [
        "qemu-system-x86_64",
        "busybox",
        "cpio",
        "gzip",
        "strip",
        "dnsmasq",
        "ldd",
        "sgdisk",
        "mkfs.ext4",
        "mkfs.vfat",
        "debugfs",
        "depmod",
        "apt-get",
        "dpkg",
    ] {
        if !need(t) {
            return;
        }
    }
    if !crate::common::can_run(rom.exists(), "ipxe-qemu's ROMs") {
        return;
    }
    let total = Instant::now();
    // The super master.
    let sup = Env::new();
    let kit = build_kit(&sup);
    let boot = local_boot_initrd(&sup, &kit);
    for class in ["master", "compute"] {
        let t = sup.path(&format!("{class}.toml"));
        fs::write(&t, TEMPLATE).unwrap();
        sup.ok(&["template", "import", t.to_str().unwrap()]);
    }
    let compute = sup.path("compute-root");
    compute_root(&kit, &compute, 1);
    let first = sup.getimage(&compute, "compute", &[]);
    let first_id = first.split_whitespace().nth(1).unwrap().to_string();

    // The master's root: a node root with dnsmasq, and a repository holding what the
    // master's cluster needs (the compute image pulled from the super master, so with the
    // same revision ids, the boot kit, the compute template and node).
    let master = sup.path("master-root");
    node_root(&kit, &master);
    copy_program("/usr/sbin/dnsmasq", &master);
    let repo = master.join(INNER_REPO);
    sup.ok_at(&repo, &["init"]);
    sup.ok_at(
        &repo,
        &["pull", "--mirror", sup.repo().to_str().unwrap(), "compute"],
    );
    sh(&format!(
        "cp -r {} {}/bootkit",
        kit.display(),
        repo.display()
    ));
    sup.ok_at(
        &repo,
        &[
            "template",
            "import",
            sup.path("compute.toml").to_str().unwrap(),
        ],
    );
    sup.ok_at(
        &repo,
        &[
            "node",
            "add",
            "c1",
            "--mac",
            COMPUTE_MAC,
            "--ip",
            COMPUTE_IP,
            "--image",
            "compute",
            "--class",
            "compute",
        ],
    );
    // The two levels: the master's repository also holds the image of a master for the next
    // cluster, whose root holds a repository of its own (at another path). A few files and
    // the repository are enough for that root: it is checked out in the master, not booted.
    let submaster = sup.path("submaster-root");
    crate::pxe::golden(&submaster);
    let subrepo = submaster.join("srv/aurum");
    sup.ok_at(&subrepo, &["init"]);
    sup.ok_at(
        &subrepo,
        &["pull", "--mirror", sup.repo().to_str().unwrap(), "compute"],
    );
    sup.getimage_at(&repo, &submaster, "submaster", &[]);
    // The master's repository is recorded by reference: its catalog, and its packs held
    // once by the super master's repository (the compute image's are there already).
    let captured = json(&sup.getimage(&master, "master", &["--json"]));
    let embedded = &captured["embedded"][0];
    assert_eq!(embedded["path"], "/var/lib/aurum", "{captured}");
    assert_eq!(embedded["images"], 2, "{captured}");
    sup.ok(&[
        "node", "add", "m1", "--mac", MASTER_MAC, "--image", "master", "--class", "master",
    ]);
    let srv = Server::start(&sup);
    let port = srv.addr.rsplit(':').next().unwrap().to_string();
    let super_url = format!("http://10.0.2.2:{port}");
    let tftp = sup.path("tftp");
    sup.ok(&[
        "pxe",
        "tftp",
        "--tftp-root",
        tftp.to_str().unwrap(),
        "--server",
        &super_url,
    ]);
    let prepared = total.elapsed();

    let _guest = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let user_net = |id: &str, tftp: Option<&Path>| {
        let mut s = format!("user,id={id},net=10.0.2.0/24");
        if let Some(t) = tftp {
            s += &format!(",tftp={},bootfile=boot.ipxe", t.display());
        }
        s
    };
    let failed = ["aurum: install failed", "here is a shell", "Kernel panic"];

    // 1. The super master PXE-installs the master.
    let t = Instant::now();
    let master_disk = sup.path("master.raw");
    fs::File::create(&master_disk)
        .unwrap()
        .set_len(768 << 20)
        .unwrap();
    let mut args = vec!["-m".into(), "768".into(), "-boot".into(), "order=n".into()];
    args.extend(nic("n0", MASTER_MAC, 3, user_net("n0", Some(&tftp))));
    args.extend(drive(&master_disk));
    let mut m = Guest::start("master-install", &sup, &args);
    m.wait_for(0, "aurum: install done", &failed, 600);
    m.wait_exit(60);
    let install_master = t.elapsed();

    // 2. The master boots its disk, regenerates its PXE configuration for its own addresses
    // and serves its repository.
    let t = Instant::now();
    let cluster_sock = sup.path("cluster.sock");
    let mut args = vec!["-m".into(), "768".into()];
    args.extend(local_boot(&kit, &boot));
    args.extend(nic("n0", MASTER_MAC, 3, user_net("n0", None)));
    args.extend(nic(
        "n1",
        MASTER_MAC2,
        4,
        format!(
            "stream,id=n1,server=on,addr.type=unix,addr.path={}",
            cluster_sock.display()
        ),
    ));
    args.extend(drive(&master_disk));
    let mut m = Guest::start("master", &sup, &args);
    m.wait_for(0, "chain: root up on m1", &["Kernel panic"], 300);
    m.run("udhcpc -i eth0 -n -q -t 5 -s /etc/udhcpc.script", 120);
    m.run(
        &format!("ifconfig eth1 {MASTER_IP} netmask 255.255.255.0 up && ip -6 addr add fd16::1/64 dev eth1"),
        60,
    );
    m.run(
        &format!(
            "aurum pxe tftp --tftp-root /srv/tftp --server http://{MASTER_IP}:8035 && \
             aurum pxe config --dnsmasq /etc/dnsmasq.conf --server http://{MASTER_IP}:8035 \
             --interface eth1 --subnet 10.16.0.0/24 --tftp-root /srv/tftp"
        ),
        120,
    );
    m.run(
        "dnsmasq --conf-file=/etc/dnsmasq.conf --user=root --pid-file=/run/dnsmasq.pid \
         --dhcp-leasefile=/tmp/leases --log-dhcp --log-facility=/tmp/dnsmasq.log \
         --enable-ra --dhcp-range=fd16::,ra-only",
        60,
    );
    m.run(
        "(aurum --no-progress serve --listen 0.0.0.0:8035 >/tmp/serve.log 2>&1 &) && \
         for i in $(seq 100); do grep -q serving /tmp/serve.log && break; sleep 0.2; done; \
         cat /tmp/serve.log; grep -q serving /tmp/serve.log",
        120,
    );
    let listed = m.run("aurum lsimage", 60);
    assert!(listed.contains("compute"), "{listed}");
    let master_serves = t.elapsed();

    // The repository the install laid down verifies, with the super master's revision ids;
    // the image it holds for the next cluster's master checks out with a repository inside
    // that verifies too.
    let t = Instant::now();
    m.run("aurum verify", 300);
    let shown = m.run("aurum show compute@1", 60);
    assert!(shown.contains(&first_id), "{shown}");
    m.run(
        "aurum checkout submaster /root/submaster && aurum --repo /root/submaster/srv/aurum verify",
        600,
    );
    let shown = m.run("aurum --repo /root/submaster/srv/aurum show compute@1", 60);
    assert!(shown.contains(&first_id), "{shown}");
    let two_levels = t.elapsed();

    // 3. The master PXE-installs the compute node.
    let t = Instant::now();
    let compute_disk = sup.path("compute.raw");
    fs::File::create(&compute_disk)
        .unwrap()
        .set_len(384 << 20)
        .unwrap();
    let stream = format!(
        "stream,id=n0,server=off,addr.type=unix,addr.path={}",
        cluster_sock.display()
    );
    let mut args = vec!["-m".into(), "768".into(), "-boot".into(), "order=n".into()];
    args.extend(nic("n0", COMPUTE_MAC, 3, stream.clone()));
    args.extend(drive(&compute_disk));
    let mut c = Guest::start("compute-install", &sup, &args);
    c.wait_for(0, "aurum: install done", &failed, 600);
    c.wait_exit(60);
    let install_compute = t.elapsed();
    let show = m.run("aurum node show c1", 60);
    assert!(show.contains("phase     done"), "{show}");
    assert!(show.contains("revision  compute@1"), "{show}");

    // The compute node boots its disk.
    let t = Instant::now();
    let mut args = vec!["-m".into(), "512".into()];
    args.extend(local_boot(&kit, &boot));
    args.extend(nic("n0", COMPUTE_MAC, 3, stream));
    args.extend(drive(&compute_disk));
    let mut c = Guest::start("compute", &sup, &args);
    c.wait_for(0, "chain: root up on c1", &["Kernel panic"], 300);
    let lease = c.run("udhcpc -i eth0 -n -q -t 5 -s /etc/udhcpc.script", 120);
    assert!(
        lease.contains(&format!("has address {COMPUTE_IP}")),
        "{lease}"
    );
    let motd = c.run("cat /etc/motd", 30);
    assert!(motd.contains("compute revision 1"), "{motd}");
    let boot_compute = t.elapsed();

    // 4. The super master publishes compute@2; the master pulls it, same id and number.
    let t = Instant::now();
    compute_root(&kit, &compute, 2);
    let second = sup.getimage(&compute, "compute", &[]);
    let second_id = second.split_whitespace().nth(1).unwrap().to_string();
    // Through a named remote, so that `remote list` tells how the last pull went.
    m.run(&format!("aurum remote add hq {super_url}"), 60);
    let pulled = m.run("aurum pull hq compute --mirror", 300);
    assert!(pulled.contains("pulled 1 revisions"), "{pulled}");
    let pull = t.elapsed();
    let shown = m.run("aurum show compute@2", 60);
    assert!(shown.contains(&second_id), "{pulled}\n{shown}");
    let remotes = m.run("aurum remote list", 60);
    assert!(
        remotes.contains("last pull:") && remotes.contains("lag: 0 revisions"),
        "{remotes}"
    );
    let again = m.run("aurum pull hq compute --mirror", 300);
    assert!(again.contains("pulled 0 revisions"), "{again}");

    // 5. The compute node updates to it from the master, and reports there.
    let t = Instant::now();
    let updated = c.run(
        &format!(
            "aurum --no-progress updateclient --server http://{MASTER_IP}:8035 --image compute"
        ),
        300,
    );
    let motd = c.run("cat /etc/motd && ls /var/lib/app", 30);
    assert!(motd.contains("compute revision 2"), "{updated}\n{motd}");
    assert!(motd.contains("update-2"), "{motd}");
    let update = t.elapsed();
    // The compute's init set no host name: the report names it from /etc/hostname.
    let nodes = m.run("aurum nodes", 60);
    assert!(
        nodes.lines().any(|l| l.starts_with("c1 ")
            && l.contains(&second_id)
            && l.contains("updateclient  ok")),
        "the master has no report of the update:\n{nodes}"
    );

    eprintln!(
        "chain: the master image's repository added {} bytes to the super master's store",
        embedded["bytes_added"]
    );
    eprintln!(
        "chain: prepared {}, install master {}, master serves {}, install compute {}, \
         boot compute {}, pull {}, update {}; two levels checked in the master {}; total {}",
        secs(prepared),
        secs(install_master),
        secs(master_serves),
        secs(install_compute),
        secs(boot_compute),
        secs(pull),
        secs(update),
        secs(two_levels),
        secs(total.elapsed())
    );
    drop(srv);
}
