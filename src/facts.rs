//! Hardware facts of this machine, read from /sys and /proc: what picks a node's class.
//!
//! Everything comes from files the kernel exports, so facts work in a minimal installer
//! initramfs with no udev, no dmidecode and no lsblk. Fields the kernel does not expose (a VM
//! has no DMI serial, an unprivileged user cannot read it) are left empty rather than guessed.

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{invalid, IoContext, Result};

/// Firmware the machine booted with.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Firmware {
    #[default]
    Bios,
    Uefi,
}

/// A disk.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DiskFact {
    /// Kernel name (`sda`, `nvme0n1`).
    pub name: String,
    pub size: u64,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub rotational: bool,
    #[serde(default)]
    pub removable: bool,
}

/// A network interface with a hardware address.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NicFact {
    pub name: String,
    pub mac: String,
}

/// What `aurum facts` prints and `aurum template match --facts` reads.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Facts {
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub firmware: Firmware,
    #[serde(default)]
    pub vendor: String,
    #[serde(default)]
    pub product: String,
    #[serde(default)]
    pub serial: String,
    /// Bytes of RAM.
    #[serde(default)]
    pub memory: u64,
    #[serde(default)]
    pub cpus: u32,
    /// Fixed disks, by kernel name (sda before sdb).
    #[serde(default)]
    pub disks: Vec<DiskFact>,
    #[serde(default)]
    pub nics: Vec<NicFact>,
}

fn read_trim(p: &Path) -> String {
    fs::read_to_string(p)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Whether a block device is a disk a node could be installed on (not a loop, RAM, optical or
/// mapper device, not a partition).
fn is_disk(name: &str) -> bool {
    !["loop", "ram", "zram", "sr", "fd", "dm-", "md", "nbd"]
        .iter()
        .any(|p| name.starts_with(p))
}

/// Reads the facts of the machine whose /sys and /proc are under `root` (`/` normally; tests
/// point it at a fake tree).
pub fn gather(root: &Path) -> Result<Facts> {
    let sys = root.join("sys");
    let proc_ = root.join("proc");
    let dmi = sys.join("class/dmi/id");
    let mut f = Facts {
        hostname: read_trim(&proc_.join("sys/kernel/hostname")),
        firmware: if sys.join("firmware/efi").is_dir() {
            Firmware::Uefi
        } else {
            Firmware::Bios
        },
        vendor: read_trim(&dmi.join("sys_vendor")),
        product: read_trim(&dmi.join("product_name")),
        serial: read_trim(&dmi.join("product_serial")),
        ..Default::default()
    };
    let meminfo = proc_.join("meminfo");
    let mi = fs::read_to_string(&meminfo).at(&meminfo)?;
    f.memory = mi
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|k| k * 1024)
        .ok_or_else(|| invalid(format!("{} has no MemTotal line", meminfo.display())))?;
    let cpuinfo = proc_.join("cpuinfo");
    f.cpus = fs::read_to_string(&cpuinfo)
        .at(&cpuinfo)?
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count() as u32;
    let block = sys.join("block");
    let mut names: Vec<String> = fs::read_dir(&block)
        .at(&block)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| is_disk(n))
        .collect();
    names.sort();
    for name in names {
        let d = block.join(&name);
        let sectors: u64 = read_trim(&d.join("size")).parse().unwrap_or(0);
        if sectors == 0 {
            continue;
        }
        f.disks.push(DiskFact {
            size: sectors * 512,
            model: read_trim(&d.join("device/model")),
            rotational: read_trim(&d.join("queue/rotational")) == "1",
            removable: read_trim(&d.join("removable")) == "1",
            name,
        });
    }
    let net = sys.join("class/net");
    if let Ok(rd) = fs::read_dir(&net) {
        let mut nics: Vec<NicFact> = rd
            .filter_map(|e| e.ok())
            // Physical interfaces have a device; lo, bridges and veths do not.
            .filter(|e| e.path().join("device").exists())
            .map(|e| NicFact {
                mac: read_trim(&e.path().join("address")),
                name: e.file_name().to_string_lossy().into_owned(),
            })
            .filter(|n| !n.mac.is_empty() && n.mac != "00:00:00:00:00:00")
            .collect();
        nics.sort_by(|a, b| a.name.cmp(&b.name));
        f.nics = nics;
    }
    Ok(f)
}

/// Reads facts saved by `aurum facts --json` (or written by hand).
pub fn load(path: &Path) -> Result<Facts> {
    let text = fs::read_to_string(path).at(path)?;
    serde_json::from_str(&text).map_err(|e| {
        invalid(format!(
            "{}: not a facts file ({e}); make one with `aurum facts --json`",
            path.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_fake_machine() {
        let t = tempfile::tempdir().unwrap();
        let w = |p: &str, s: &str| {
            let p = t.path().join(p);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, s).unwrap();
        };
        w(
            "proc/meminfo",
            "MemTotal:       16384000 kB\nMemFree: 1 kB\n",
        );
        w(
            "proc/cpuinfo",
            "processor\t: 0\nflags: x\n\nprocessor\t: 1\n",
        );
        w("proc/sys/kernel/hostname", "n01\n");
        w("sys/class/dmi/id/sys_vendor", "Dell Inc.\n");
        w("sys/class/dmi/id/product_name", "PowerEdge R650\n");
        w("sys/block/sda/size", "27262976\n");
        w("sys/block/sda/queue/rotational", "1\n");
        w("sys/block/sda/device/model", "ST14000NM\n");
        w("sys/block/loop0/size", "100\n");
        w("sys/class/net/eno1/address", "52:54:00:11:23:01\n");
        w("sys/class/net/eno1/device/x", "");
        w("sys/class/net/lo/address", "00:00:00:00:00:00\n");
        fs::create_dir_all(t.path().join("sys/firmware/efi")).unwrap();
        let f = gather(t.path()).unwrap();
        assert_eq!(f.memory, 16_384_000 * 1024);
        assert_eq!(f.cpus, 2);
        assert_eq!(f.firmware, Firmware::Uefi);
        assert_eq!(f.disks.len(), 1);
        assert_eq!(f.disks[0].size, 13 << 30);
        assert!(f.disks[0].rotational);
        assert_eq!(f.nics.len(), 1);
        assert_eq!(f.product, "PowerEdge R650");
    }
}
