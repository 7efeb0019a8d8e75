//! The boot kit: the kernel and initramfs a node boots from the network to install itself.
//!
//! SystemImager shipped a prebuilt "BOEL" kernel and initrd (and `si_mkbootpackage` to make
//! one from the server's own kernel, "UYOK"). aurum builds the initramfs from parts any Debian
//! machine has: a kernel and its modules (a `linux-image` package unpacked is enough), busybox
//! (shell, udhcpc, insmod, the basic tools), the programs `aurum install` runs (sgdisk, mkfs.*,
//! util-linux's blkid and mount) with the shared libraries `ldd` lists, and aurum itself. Its
//! `/init` loads the modules, gets an address by DHCP, reads `aurum.server=`, `aurum.node=`,
//! `aurum.image=`, `aurum.class=`, `aurum.group=`, `aurum.disk=` and `aurum.done=` from the
//! kernel command line, runs `aurum install --report`, then reboots or powers off; on failure
//! it sends the log tail to the server and leaves a shell on the console. The trust the
//! installer needs comes inside the kit, never over the network it installs from: the public
//! keys revisions and templates must be signed by, and the CA an `https://` server's
//! certificate must be signed by, in the kit's `/etc/aurum/node.toml`, which every aurum
//! command of the kit reads. With
//! `aurum.rootfs=memory` (a diskless node) it runs `aurum boot-memory` instead and switches
//! root into the tmpfs that laid the revision in ([`super::memory`]); with
//! `aurum.rootfs=netroot` it runs `aurum boot-netroot`, which mounts the revision's image
//! read-only under an overlay whose writes go to a tmpfs on `/run` ([`super::netroot`]), moves
//! `/run` into the new root and switches root into the overlay.
//!
//! The archive is written here (cpio "newc", gzip) rather than with cpio(1): we need entries
//! the build cannot create as an unprivileged file (the `/dev/console` node the kernel opens
//! before `/init` runs), and the format is a page of code.
//!
//! Modules are loaded with busybox insmod in dependency order computed from `modules.dep`:
//! busybox modprobe does not follow soft dependencies, which is why the default list names
//! some (crc32c_generic for ext4, nls_ascii for the ESP's vfat) explicitly.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{invalid, IoContext, Result};
use crate::netboot::pxe::{KIT_CMDLINE, KIT_INITRD, KIT_KERNEL};

/// Modules for common NICs, disk controllers and the filesystems templates use. Those a
/// kernel lacks (or has built in) are skipped.
pub const DEFAULT_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "virtio_net",
    "e1000",
    "e1000e",
    "igb",
    "ixgbe",
    "tg3",
    "bnx2",
    "sd_mod",
    "ahci",
    "nvme",
    "crc32c_generic",
    "md_mod",
    "raid0",
    "raid1",
    "raid10",
    "raid456",
    "ext4",
    "xfs",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    // A netroot node's image (a loop device), its filesystem and the overlay over it.
    "loop",
    "erofs",
    "overlay",
    // An nfs node's root: the kernel's NFSv4 client (nfs, sunrpc and the rest come as its
    // dependencies).
    "nfsv4",
];

/// Programs `aurum install` runs that busybox lacks or does differently (util-linux's blkid
/// and mount take options busybox's do not). The first ones are required.
const REQUIRED_TOOLS: &[&str] = &["sgdisk", "mkfs.ext4", "blkid", "mount", "umount"];
const OPTIONAL_TOOLS: &[&str] = &[
    "mke2fs",
    "mkfs.ext2",
    "mkfs.ext3",
    "sfdisk",
    "mkfs.vfat",
    "mkfs.fat",
    "mkfs.xfs",
    "mkswap",
    "losetup",
    "mdadm",
    "mkfs.btrfs",
];

/// What to build.
pub struct KitOptions {
    pub kernel: PathBuf,
    /// A directory holding `lib/modules/VERSION/` (an unpacked linux-image package, or `/`),
    /// or the `VERSION` directory itself.
    pub modules: PathBuf,
    pub out: PathBuf,
    /// The aurum binary to put in (a static build, ideally).
    pub aurum: PathBuf,
    pub busybox: PathBuf,
    /// Module names; empty: [`DEFAULT_MODULES`].
    pub module_names: Vec<String>,
    /// Extra kernel arguments served with the kit (`console=ttyS0,115200`).
    pub append: String,
    /// Public key lines the installer trusts: written into the kit's /etc/aurum/node.toml,
    /// so that `aurum install` there takes only revisions they signed. The keys come with the
    /// kit, not over the network the kit installs from, which an attacker may control.
    pub trusted_keys: Vec<String>,
    /// The CA certificate (PEM) the installer trusts for an `https://` server, instead of any
    /// public CA: copied to the kit's [`KIT_CA`] and named as `ca` in its node.toml. Like the
    /// keys, it comes with the kit, not over the network.
    pub ca: Option<PathBuf>,
}

/// Where the kit keeps the CA of `--ca` (the installer's node.toml names it).
pub const KIT_CA: &str = "/etc/aurum/ca.pem";

/// What was built.
#[derive(Debug, serde::Serialize)]
pub struct KitReport {
    pub kernel_version: String,
    /// Modules in load order.
    pub modules: Vec<String>,
    /// Default modules this kernel does not have as modules (built in, or absent).
    pub skipped: Vec<String>,
    pub tools: Vec<String>,
    pub missing_tools: Vec<String>,
    pub entries: usize,
    pub initrd_bytes: u64,
}

/// `virtio-net` and `virtio_net` are the same module.
fn modname(s: &str) -> String {
    let base = s.rsplit('/').next().unwrap_or(s);
    let base = base.split(".ko").next().unwrap_or(base);
    base.replace('-', "_")
}

/// The modules directory (`.../lib/modules/VERSION`) and VERSION.
fn modules_dir(o: &KitOptions) -> Result<(PathBuf, String)> {
    if o.modules.join("modules.order").exists() || o.modules.join("kernel").is_dir() {
        let v = o
            .modules
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        return Ok((o.modules.clone(), v));
    }
    let base = o.modules.join("lib/modules");
    let mut versions: Vec<String> = std::fs::read_dir(&base)
        .at(&base)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    versions.sort();
    let kname = o
        .kernel
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let v = versions
        .iter()
        .find(|v| kname.ends_with(v.as_str()))
        .or(versions.last())
        .cloned()
        .ok_or_else(|| invalid(format!("no kernel version directory in {}", base.display())))?;
    Ok((base.join(&v), v))
}

/// `modules.dep`: module name -> (path relative to the modules dir, dependencies' names).
type DepMap = HashMap<String, (String, Vec<String>)>;

fn read_deps(dir: &Path, version: &str) -> Result<DepMap> {
    let dep = dir.join("modules.dep");
    if !dep.exists() {
        // An unpacked package has no modules.dep: depmod writes it (-b: the tree's base).
        let base = dir
            .parent()
            .and_then(|p| p.parent())
            .and_then(|p| p.parent())
            .ok_or_else(|| invalid(format!("{} is not under lib/modules/", dir.display())))?;
        crate::devices::run(Command::new("depmod").arg("-b").arg(base).arg(version)).map_err(
            |e| {
                invalid(format!(
                    "{} has no modules.dep and depmod failed: {e} (install kmod)",
                    dir.display()
                ))
            },
        )?;
    }
    let text = std::fs::read_to_string(&dep).at(&dep)?;
    let mut m = DepMap::new();
    for line in text.lines() {
        let Some((path, deps)) = line.split_once(':') else {
            continue;
        };
        m.insert(
            modname(path),
            (
                path.to_string(),
                deps.split_whitespace().map(modname).collect(),
            ),
        );
    }
    Ok(m)
}

/// The modules to load for `names`, dependencies first, each once.
fn load_order(deps: &DepMap, names: &[String]) -> (Vec<String>, Vec<String>) {
    fn visit(deps: &DepMap, n: &str, seen: &mut HashSet<String>, out: &mut Vec<String>) {
        if !seen.insert(n.to_string()) {
            return;
        }
        if let Some((_, ds)) = deps.get(n) {
            // modules.dep lists the whole closure, most basic last: load in reverse.
            for d in ds.iter().rev() {
                visit(deps, d, seen, out);
            }
            out.push(n.to_string());
        }
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut missing = Vec::new();
    for n in names {
        let n = modname(n);
        if deps.contains_key(&n) {
            visit(deps, &n, &mut seen, &mut out);
        } else {
            missing.push(n);
        }
    }
    (out, missing)
}

/// Where `prog` is on PATH.
fn which(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

/// The staging tree of the initramfs.
struct Stage {
    root: PathBuf,
}

impl Stage {
    /// Copies `src` (following symlinks) to `rel` in the tree with mode `mode`.
    fn copy(&self, src: &Path, rel: &str, mode: u32) -> Result<()> {
        let dst = self.root.join(rel.trim_start_matches('/'));
        if let Some(d) = dst.parent() {
            std::fs::create_dir_all(d).at(d)?;
        }
        std::fs::copy(src, &dst).at(src)?;
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(mode)).at(&dst)?;
        Ok(())
    }

    fn write(&self, rel: &str, text: &str, mode: u32) -> Result<()> {
        let dst = self.root.join(rel);
        if let Some(d) = dst.parent() {
            std::fs::create_dir_all(d).at(d)?;
        }
        std::fs::write(&dst, text).at(&dst)?;
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(mode)).at(&dst)
    }

    /// Copies a program to `rel` and the shared libraries `ldd` lists, at their own paths.
    fn program(&self, src: &Path, rel: &str) -> Result<()> {
        self.copy(src, rel, 0o755)?;
        let out = Command::new("ldd").arg(src).output();
        let Ok(out) = out else { return Ok(()) };
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // `libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)` or `/lib64/ld-linux-x86-64.so.2 (0x...)`
            let lib = match line.split_once("=>") {
                Some((_, r)) => r.split_whitespace().next(),
                None => line
                    .split_whitespace()
                    .next()
                    .filter(|p| p.starts_with('/')),
            };
            if let Some(lib) = lib.filter(|l| l.starts_with('/')) {
                if !self.root.join(lib.trim_start_matches('/')).exists() {
                    self.copy(Path::new(lib), lib, 0o755)?;
                }
            }
        }
        Ok(())
    }
}

/// Builds the kit into `o.out`: `vmlinuz`, `initrd.img`, `cmdline`.
pub fn build(o: &KitOptions) -> Result<KitReport> {
    let (mdir, version) = modules_dir(o)?;
    let deps = read_deps(&mdir, &version)?;
    let explicit = !o.module_names.is_empty();
    let names: Vec<String> = if explicit {
        o.module_names.clone()
    } else {
        DEFAULT_MODULES.iter().map(|s| s.to_string()).collect()
    };
    let (order, missing) = load_order(&deps, &names);
    let builtin = std::fs::read_to_string(mdir.join("modules.builtin")).unwrap_or_default();
    let builtin: HashSet<String> = builtin.lines().map(modname).collect();
    let absent: Vec<&String> = missing.iter().filter(|m| !builtin.contains(*m)).collect();
    if explicit && !absent.is_empty() {
        return Err(invalid(format!(
            "kernel {version} has no module {} (see {})",
            absent
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            mdir.join("modules.dep").display()
        )));
    }

    let tmp = tempfile::Builder::new()
        .prefix("aurum-bootkit.")
        .tempdir()?;
    let st = Stage {
        root: tmp.path().to_path_buf(),
    };
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp", "run", "mnt",
        "var/tmp",
    ] {
        std::fs::create_dir_all(st.root.join(d)).at(&st.root)?;
    }
    // busybox and its applets.
    st.copy(&o.busybox, "bin/busybox", 0o755)?;
    let list = Command::new(&o.busybox)
        .arg("--list-full")
        .output()
        .map_err(|e| {
            invalid(format!(
                "{}: {e} (install busybox-static)",
                o.busybox.display()
            ))
        })?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let link = st.root.join(applet);
        if applet.is_empty() || link.exists() || applet == "bin/busybox" {
            continue;
        }
        if let Some(d) = link.parent() {
            std::fs::create_dir_all(d).at(d)?;
        }
        std::os::unix::fs::symlink("/bin/busybox", &link).at(&link)?;
    }
    // The installer and its tools (PATH puts /usr/sbin and /usr/bin before busybox's).
    st.program(&o.aurum, "usr/bin/aurum")?;
    if Command::new("strip")
        .arg("--strip-debug")
        .arg(st.root.join("usr/bin/aurum"))
        .status()
        .map(|s| !s.success())
        .unwrap_or(false)
    {
        log::warn!("could not strip debug information from the aurum binary");
    }
    let mut tools = Vec::new();
    let mut missing_tools = Vec::new();
    for (t, required) in REQUIRED_TOOLS
        .iter()
        .map(|t| (t, true))
        .chain(OPTIONAL_TOOLS.iter().map(|t| (t, false)))
    {
        match which(t) {
            Some(p) => {
                st.program(&p, &format!("usr/sbin/{t}"))?;
                tools.push(t.to_string());
            }
            None if required => {
                return Err(invalid(format!(
                    "{t} is not installed here and every install needs it (packages: gdisk, e2fsprogs, util-linux, mount)"
                )))
            }
            None => missing_tools.push(t.to_string()),
        }
    }
    // Modules, decompressed (busybox insmod reads plain .ko), and their load order.
    let mut list = String::new();
    for m in &order {
        // load_order returns only modules found in `deps`.
        let Some((rel, _)) = deps.get(m) else {
            continue;
        };
        let plain = rel
            .trim_end_matches(".xz")
            .trim_end_matches(".zst")
            .trim_end_matches(".gz");
        let dst = format!("lib/modules/{version}/{plain}");
        let src = mdir.join(rel);
        if rel.ends_with(".ko") {
            st.copy(&src, &dst, 0o644)?;
        } else {
            let tool = if rel.ends_with(".zst") {
                "zstd"
            } else if rel.ends_with(".xz") {
                "xz"
            } else {
                "gzip"
            };
            let out = Command::new(tool)
                .arg("-dc")
                .arg(&src)
                .output()
                .map_err(|e| invalid(format!("{tool} -dc {}: {e}", src.display())))?;
            st.write(&dst, "", 0o644)?;
            std::fs::write(st.root.join(&dst), out.stdout).at(&dst)?;
        }
        list += &format!("/{dst}\n");
    }
    st.write("etc/aurum-modules", &list, 0o644)?;
    st.write("etc/udhcpc.script", UDHCPC_SCRIPT, 0o755)?;
    st.write("init", INIT, 0o755)?;
    if let Some(ca) = &o.ca {
        // Checked here, so that a kit never boots with a CA file its installer cannot read.
        crate::tls::read_certificates(ca)?;
        st.copy(ca, KIT_CA, 0o644)?;
    }
    if !o.trusted_keys.is_empty() || o.ca.is_some() {
        let node = crate::config::NodeFile {
            trusted_keys: o.trusted_keys.clone(),
            ca: o.ca.as_ref().map(|_| PathBuf::from(KIT_CA)),
            ..Default::default()
        };
        let text = toml::to_string(&node)
            .map_err(|e| invalid(format!("cannot write the kit's node.toml: {e}")))?;
        st.write("etc/aurum/node.toml", &text, 0o644)?;
    }

    std::fs::create_dir_all(&o.out).at(&o.out)?;
    let initrd = o.out.join(KIT_INITRD);
    let tmp_initrd = o.out.join(format!(".{KIT_INITRD}.tmp"));
    let entries = write_cpio(&st.root, &tmp_initrd)?;
    std::fs::rename(&tmp_initrd, &initrd).at(&initrd)?;
    let kernel = o.out.join(KIT_KERNEL);
    std::fs::copy(&o.kernel, &kernel).at(&o.kernel)?;
    std::fs::write(o.out.join(KIT_CMDLINE), format!("{}\n", o.append.trim()))
        .at(o.out.join(KIT_CMDLINE))?;
    Ok(KitReport {
        kernel_version: version,
        modules: order,
        skipped: missing,
        tools,
        missing_tools,
        entries,
        initrd_bytes: std::fs::metadata(&initrd).at(&initrd)?.len(),
    })
}

/// Writes the tree at `root` as a gzip-compressed cpio newc archive, plus `/dev/console`.
/// Returns the number of entries.
fn write_cpio(root: &Path, out: &Path) -> Result<usize> {
    // Sorted, parents before children, so the kernel can create each entry.
    let mut paths: BTreeMap<String, PathBuf> = BTreeMap::new();
    fn walk(dir: &Path, rel: &str, out: &mut BTreeMap<String, PathBuf>) -> Result<()> {
        for e in std::fs::read_dir(dir).at(dir)? {
            let e = e.at(dir)?;
            let name = e.file_name().to_string_lossy().into_owned();
            let r = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            out.insert(r.clone(), e.path());
            if e.file_type().at(e.path())?.is_dir() {
                walk(&e.path(), &r, out)?;
            }
        }
        Ok(())
    }
    walk(root, "", &mut paths)?;
    let file = std::fs::File::create(out).at(out)?;
    let mut z =
        flate2::write::GzEncoder::new(std::io::BufWriter::new(file), flate2::Compression::new(6));
    let mut ino = 1u32;
    let mut count = 0;
    let mut entry = |z: &mut dyn Write, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]| {
        let head = format!(
            "070701{ino:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() + 1,
            0
        );
        ino += 1;
        count += 1;
        let pad = |n: usize| (4 - n % 4) % 4;
        z.write_all(head.as_bytes())?;
        z.write_all(name.as_bytes())?;
        z.write_all(&[0u8; 4][..1 + pad(head.len() + name.len() + 1)])?;
        z.write_all(data)?;
        z.write_all(&[0u8; 4][..pad(data.len())])
    };
    let io = |e: std::io::Error| crate::Error::Io {
        path: out.to_path_buf(),
        source: e,
    };
    for (rel, p) in &paths {
        let meta = std::fs::symlink_metadata(p).at(p)?;
        let ft = meta.file_type();
        let (mode, data) = if ft.is_symlink() {
            let t = std::fs::read_link(p).at(p)?;
            (0o120777, t.to_string_lossy().into_owned().into_bytes())
        } else if ft.is_dir() {
            (0o040000 | (meta.mode() & 0o7777), Vec::new())
        } else {
            (0o100000 | (meta.mode() & 0o7777), std::fs::read(p).at(p)?)
        };
        entry(&mut z, rel, mode, (0, 0), &data).map_err(io)?;
    }
    entry(&mut z, "dev/console", 0o020600, (5, 1), &[]).map_err(io)?;
    entry(&mut z, "TRAILER!!!", 0, (0, 0), &[]).map_err(io)?;
    let w = z.finish().map_err(io)?;
    w.into_inner()
        .map_err(|e| io(e.into_error()))?
        .sync_all()
        .map_err(io)?;
    Ok(count - 1)
}

/// busybox udhcpc calls this with the lease in the environment.
const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
# aurum boot kit: configure the interface udhcpc got a lease for.
case "$1" in
deconfig)
    ifconfig "$interface" 0.0.0.0 up
    ;;
bound|renew)
    ifconfig "$interface" "$ip" netmask "${subnet:-255.255.255.0}" up
    for r in $router; do route add default gw "$r" dev "$interface"; break; done
    : > /etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done
    echo "aurum: $interface has address $ip"
    ;;
esac
exit 0
"#;

/// The initramfs's /init.
const INIT: &str = r#"#!/bin/sh
# aurum boot kit: install this node from aurum serve, then reboot or power off; or, with
# aurum.rootfs=memory, boot its revision into memory (diskless) and switch root into it; with
# aurum.rootfs=netroot, mount its revision's image read-only under a tmpfs overlay; with
# aurum.rootfs=nfs, the same with its revision's NFS export.
# Kernel command line: aurum.server=URL aurum.node=NAME aurum.image=REF [aurum.class=CLASS]
# [aurum.group=GROUP] [aurum.disk=DEV|auto] [aurum.done=reboot|poweroff|shell]
# [aurum.token=TOKEN] (the node's token for its phase reports; aurum serve's boot script has it)
# Diskless: aurum.server=URL aurum.rootfs=memory|netroot|nfs [init=PATH] [aurum.failover=URL[,URL...]]
# [aurum.proxy=URL] [aurum.jitter=SECONDS] (other servers or cache tiers tried when the first
# fails; the HTTP proxy; the window of the random delay before the fetch)
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mkdir -p /dev/pts /tmp /run
exec </dev/console >/dev/console 2>&1
say() { echo "aurum: $*"; }
arg() {
    for w in $(cat /proc/cmdline); do
        case "$w" in "$1="*) echo "${w#*=}"; return ;; esac
    done
}
SERVER=$(arg aurum.server)
NODE=$(arg aurum.node)
IMAGE=$(arg aurum.image)
CLASS=$(arg aurum.class)
GROUP=$(arg aurum.group)
DISK=$(arg aurum.disk)
DONE=$(arg aurum.done)
AURUM_TOKEN=$(arg aurum.token)
[ -n "$AURUM_TOKEN" ] && export AURUM_TOKEN
ROOTFS=$(arg aurum.rootfs)
rescue() {
    say "$*"
    say "here is a shell; the install log is /tmp/install.log; 'poweroff -f' ends"
    exec setsid cttyhack sh
}

say "loading $(wc -l < /etc/aurum-modules) kernel modules"
while read -r m; do insmod "$m" 2>/dev/null; done < /etc/aurum-modules
# Let the drivers find their devices.
sleep 1

up=
for try in 1 2 3 4 5; do
    for n in /sys/class/net/*; do
        n=${n##*/}
        [ "$n" = lo ] && continue
        ifconfig "$n" up
        if udhcpc -i "$n" -n -q -t 4 -T 2 -s /etc/udhcpc.script; then up=$n; break 2; fi
    done
    sleep 1
done
[ -n "$up" ] || rescue "no DHCP answer on any interface"

if [ "$ROOTFS" = memory ] || [ "$ROOTFS" = netroot ] || [ "$ROOTFS" = nfs ]; then
    # Diskless: the server says which revision this MAC boots; it goes into a tmpfs
    # (memory), or its image is mounted read-only under an overlay whose writes go to a
    # tmpfs on /run (netroot).
    [ -n "$SERVER" ] || rescue "aurum.server= must be on the kernel command line"
    MAC=$(cat "/sys/class/net/$up/address")
    mkdir -p /newroot
    if [ "$ROOTFS" = memory ]; then
        say "booting into memory from $SERVER as $MAC"
        set -- boot-memory --root /newroot
        WHERE="the tmpfs"
    elif [ "$ROOTFS" = nfs ]; then
        say "booting from an NFS root from $SERVER as $MAC"
        set -- boot-netroot --nfs --root /newroot --rw /run
        WHERE="the overlay"
    else
        say "booting from a network root from $SERVER as $MAC"
        set -- boot-netroot --root /newroot --rw /run
        WHERE="the overlay"
    fi
    set -- "$@" --mac "$MAC"
    for s in $SERVER $(arg aurum.failover | tr , ' '); do set -- "$@" --server "$s"; done
    PROXY=$(arg aurum.proxy)
    [ -n "$PROXY" ] && set -- "$@" --proxy "$PROXY"
    JITTER=$(arg aurum.jitter)
    [ -n "$JITTER" ] && set -- "$@" --jitter "$JITTER"
    ( aurum --no-progress "$@"; \
      echo $? > /tmp/rc ) 2>&1 | tee /tmp/install.log
    [ "$(cat /tmp/rc 2>/dev/null)" = 0 ] || rescue "boot ($ROOTFS) failed"
    # Name resolution as the lease gave it, unless the image brings its own.
    [ -s /newroot/etc/resolv.conf ] || cp /etc/resolv.conf /newroot/etc/resolv.conf 2>/dev/null
    # init= of the command line, else the image's /sbin/init, else systemd itself (Debian
    # without systemd-sysv has no /sbin/init).
    INIT=$(arg init)
    for i in /sbin/init /lib/systemd/systemd /usr/lib/systemd/systemd; do
        [ -n "$INIT" ] && break
        { [ -L "/newroot$i" ] || [ -e "/newroot$i" ]; } && INIT=$i
    done
    [ -n "$INIT" ] || rescue "the image has no /sbin/init nor systemd: give init=PATH"
    for d in dev proc sys; do mkdir -p "/newroot/$d"; mount --move "/$d" "/newroot/$d"; done
    # The netroot tmpfs (image, overlay layers) goes along; systemd keeps a mounted /run.
    if [ "$ROOTFS" != memory ]; then mkdir -p /newroot/run; mount --move /run /newroot/run; fi
    say "switching root to $WHERE: $INIT"
    exec switch_root /newroot "$INIT"
fi
[ -n "$SERVER" ] && [ -n "$IMAGE" ] \
    || rescue "aurum.server= and aurum.image= must be on the kernel command line"

say "installing $IMAGE from $SERVER as ${NODE:-this node} on ${DISK:-auto}"
set -- install --no-progress --repo /tmp/no-repo --disk "${DISK:-auto}" --server "$SERVER" \
    --image "$IMAGE" --class "${CLASS:-auto}"
[ -n "$NODE" ] && set -- "$@" --hostname "$NODE" --report
[ -n "$GROUP" ] && set -- "$@" --group "$GROUP"
( aurum "$@"; echo $? > /tmp/rc ) 2>&1 | tee /tmp/install.log
if [ "$(cat /tmp/rc 2>/dev/null)" = 0 ]; then
    sync
    say "install done: ${DONE:-reboot}"
    case "$DONE" in
    poweroff) poweroff -f ;;
    shell) rescue "installed (aurum.done=shell)" ;;
    *) reboot -f ;;
    esac
fi
[ -n "$NODE" ] && aurum install-report --server "$SERVER" --node "$NODE" --phase failed \
    --detail-file /tmp/install.log
rescue "install failed"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_load_first_and_once() {
        let mut deps = DepMap::new();
        for (n, p, d) in [
            (
                "ext4",
                "kernel/fs/ext4/ext4.ko",
                vec!["mbcache", "jbd2", "crc16"],
            ),
            ("jbd2", "kernel/fs/jbd2/jbd2.ko", vec![]),
            ("mbcache", "kernel/fs/mbcache.ko", vec![]),
            ("crc16", "kernel/lib/crc16.ko", vec![]),
            ("vfat", "kernel/fs/fat/vfat.ko.xz", vec!["fat"]),
            ("fat", "kernel/fs/fat/fat.ko.xz", vec![]),
        ] {
            deps.insert(
                n.into(),
                (p.into(), d.into_iter().map(String::from).collect()),
            );
        }
        let (order, missing) = load_order(
            &deps,
            &[
                "ext4".into(),
                "vfat".into(),
                "jbd2".into(),
                "nls-ascii".into(),
            ],
        );
        assert_eq!(order, ["crc16", "jbd2", "mbcache", "ext4", "fat", "vfat"]);
        assert_eq!(missing, ["nls_ascii"]);
        assert_eq!(modname("kernel/net/virtio-net.ko.zst"), "virtio_net");
    }
}
