//! `prepareclient`: the golden client's disk layout, written as a partition template.
//!
//! A GPT is read with the `gpt` crate (no partitioning tool needed on the golden client); an
//! MBR (msdos label, with its extended and logical partitions) with `sfdisk --json`, which
//! follows the chain of extended boot records as the kernel does;
//! each partition's filesystem, label and UUID come from `blkid`, and its mount point and
//! options from the system's mounts and /etc/fstab. For a disk image file (a golden client's
//! disk copied with dd, or a disk `aurum install` wrote) each partition is reached through a
//! loop device over its byte range, and the mount points come from the /etc/fstab found on the
//! image's root filesystem.
//!
//! Sizes are written exactly (in MiB when they are whole MiB) except the last data partition,
//! which becomes `*` (and so does the extended partition holding it, on an msdos disk), so the
//! template fits the golden client's disk and grows with bigger ones.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::size::exact;
use super::{Label, PartType, Role};
use crate::devices::{blkid, blkid_value, is_block, partition_node, run, Loop, Mount};
use crate::error::{invalid, Result};
use crate::sys::{parse_fstab, FstabEntry};

/// One partition as found.
#[derive(Debug)]
struct Found {
    number: u32,
    name: String,
    kind: PartType,
    role: Option<Role>,
    boot: bool,
    size: u64,
    fs: Option<String>,
    label: Option<String>,
    uuid: Option<String>,
    mount: Option<String>,
    options: Option<String>,
}

fn kind_of(t: &gpt::partition_types::Type) -> PartType {
    use PartType::*;
    [Efi, BiosBoot, Swap, Raid, Lvm]
        .into_iter()
        .find(|k| k.gpt_type().guid == t.guid)
        .unwrap_or(Linux)
}

/// One entry of a partition table: where it is and what the table says of it.
struct Entry {
    number: u32,
    start: u64,
    size: u64,
    name: String,
    kind: PartType,
    role: Option<Role>,
    boot: bool,
}

/// The GPT of `disk`, or `None` when it has none.
fn read_gpt(disk: &Path) -> Option<Vec<Entry>> {
    let gd = gpt::GptConfig::new().writable(false).open(disk).ok()?;
    let lb: u64 = (*gd.logical_block_size()).into();
    Some(
        gd.partitions()
            .iter()
            .filter(|(_, p)| p.is_used())
            .map(|(&n, p)| Entry {
                number: n,
                start: p.first_lba * lb,
                size: (p.last_lba + 1 - p.first_lba) * lb,
                name: p.name.clone(),
                kind: kind_of(&p.part_type_guid),
                role: None,
                boot: p.flags & (1 << 2) != 0,
            })
            .collect(),
    )
}

/// `sfdisk --json`'s view of a DOS table.
#[derive(serde::Deserialize)]
struct SfdiskDump {
    partitiontable: SfdiskTable,
}

#[derive(serde::Deserialize)]
struct SfdiskTable {
    label: String,
    #[serde(default = "sector")]
    sectorsize: u64,
    #[serde(default)]
    partitions: Vec<SfdiskPart>,
}

fn sector() -> u64 {
    512
}

#[derive(serde::Deserialize)]
struct SfdiskPart {
    node: String,
    start: u64,
    size: u64,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    bootable: bool,
}

/// The MBR of `disk` (primary, extended and logical partitions), read with `sfdisk --json`.
fn read_msdos(disk: &Path) -> Result<Vec<Entry>> {
    let out = run(Command::new("sfdisk").arg("--json").arg(disk)).map_err(|e| {
        invalid(format!(
            "{}: no readable GPT, and sfdisk reads no MBR either ({e}); prepareclient reads GPT and msdos disks (install util-linux's fdisk package for msdos)",
            disk.display()
        ))
    })?;
    let dump: SfdiskDump = serde_json::from_str(&out)
        .map_err(|e| invalid(format!("sfdisk --json {}: {e}", disk.display())))?;
    let t = dump.partitiontable;
    if t.label != "dos" {
        return Err(invalid(format!(
            "{}: a `{}` partition table; prepareclient reads GPT and msdos disks",
            disk.display(),
            t.label
        )));
    }
    let mut v = Vec::new();
    for p in t.partitions {
        // sfdisk names each partition by its device: the number is its last digits.
        let digits = p.node.len() - p.node.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        let number: u32 = p.node[p.node.len() - digits..].parse().map_err(|_| {
            invalid(format!(
                "sfdisk --json {}: partition `{}` has no number",
                disk.display(),
                p.node
            ))
        })?;
        let id = u8::from_str_radix(&p.kind, 16).unwrap_or(0x83);
        let role = match (id, number) {
            (0x05 | 0x0f | 0x85, _) => Role::Extended,
            (_, 5..) => Role::Logical,
            _ => Role::Primary,
        };
        v.push(Entry {
            number,
            start: p.start * t.sectorsize,
            size: p.size * t.sectorsize,
            name: String::new(),
            kind: [PartType::Efi, PartType::Swap, PartType::Raid, PartType::Lvm]
                .into_iter()
                .find(|k| k.mbr_id() == Some(id))
                .unwrap_or(PartType::Linux),
            role: Some(role),
            boot: p.bootable,
        });
    }
    Ok(v)
}

/// Reads the layout of `disk` (a block device or an image file) and writes it as a template.
pub fn prepare(disk: &Path) -> Result<String> {
    let (label, entries) = match read_gpt(disk) {
        Some(e) => (Label::Gpt, e),
        None => (Label::Msdos, read_msdos(disk)?),
    };
    let disk_size = crate::devices::size_of(disk)?;
    let block = is_block(disk)?;
    let mut found = Vec::new();
    let mut loops = Vec::new();
    for e in entries {
        let (dev, tags) = if e.role == Some(Role::Extended) {
            // It holds the logical partitions' boot records: nothing to probe.
            (PathBuf::new(), Vec::new())
        } else {
            let dev = if block {
                partition_node(disk, e.number)
            } else {
                let l = Loop::attach(disk, e.start, e.size)?;
                let d = l.dev.clone();
                loops.push(l);
                d
            };
            let tags = blkid(&dev)?;
            (dev, tags)
        };
        found.push((
            e.start,
            dev,
            Found {
                number: e.number,
                name: e.name,
                kind: e.kind,
                role: e.role,
                boot: e.boot,
                size: e.size,
                fs: blkid_value(&tags, "TYPE"),
                label: blkid_value(&tags, "LABEL"),
                uuid: blkid_value(&tags, "UUID"),
                mount: None,
                options: None,
            },
        ));
    }
    found.sort_by_key(|f| f.0);

    // Mount points: the running system's mounts and fstab for a live disk, the fstab on the
    // image's root filesystem for an image file.
    let mut table: Vec<FstabEntry> = Vec::new();
    if block {
        let fstab = std::fs::read_to_string("/etc/fstab").unwrap_or_default();
        table.extend(parse_fstab(&fstab));
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        table.extend(parse_fstab(&mounts));
    } else {
        let tmp = tempfile::Builder::new()
            .prefix("aurum-prepare.")
            .tempdir()?;
        for (_, dev, f) in &found {
            if !matches!(
                f.fs.as_deref(),
                Some("ext4" | "ext3" | "ext2" | "xfs" | "btrfs")
            ) {
                continue;
            }
            let at = tmp.path().join(f.number.to_string());
            let m = Mount::new(dev, &at, f.fs.as_deref(), "ro")?;
            let text = std::fs::read_to_string(m.at.join("etc/fstab")).ok();
            drop(m);
            let _ = std::fs::remove_dir(&at);
            if let Some(t) = text {
                table.extend(parse_fstab(&t));
            }
        }
    }
    for (_, dev, f) in &mut found {
        let hit = table.iter().find(|FstabEntry { spec, .. }| {
            f.uuid
                .as_ref()
                .is_some_and(|u| spec == &format!("UUID={u}"))
                || f.label
                    .as_ref()
                    .is_some_and(|l| spec == &format!("LABEL={l}"))
                || Path::new(spec) == dev.as_path()
        });
        if let Some(e) = hit {
            if e.point.starts_with('/') {
                f.mount = Some(e.point.clone());
                f.options = Some(e.options.clone()).filter(|o| o != "defaults");
            }
        }
    }
    drop(loops);

    let data = |f: &Found| f.kind == PartType::Linux && f.role != Some(Role::Extended);
    let rest = found
        .iter()
        .rposition(|(_, _, f)| data(f) && f.mount.is_some() && f.mount.as_deref() != Some("/"))
        .or_else(|| found.iter().rposition(|(_, _, f)| data(f)));
    // A logical partition taking the rest needs an extended one that does too.
    let rest_logical = rest.is_some_and(|i| found[i].2.role == Some(Role::Logical));
    let mut out = format!(
        "# Written by `aurum prepareclient` from {} ({} bytes).\n\
         # Every size is as found, except the last data partition, which takes the rest (`*`).\n\
         # Add a [match] section saying which machines this class is for.\n\
         description = \"layout of {}\"\n\n[[disk]]\nlabel = \"{}\"\n",
        disk.display(),
        disk_size,
        disk.display(),
        label.name()
    );
    let q = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    for (i, (_, _, f)) in found.iter().enumerate() {
        out += "\n[[disk.partition]]\n";
        let name_ok = !f.name.is_empty()
            && f.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        let name = if name_ok {
            f.name.clone()
        } else {
            format!("part{}", f.number)
        };
        out += &format!("name = {}\n", q(&name));
        if f.kind != PartType::Linux {
            out += &format!("type = \"{}\"\n", f.kind.name());
        }
        match f.role {
            Some(Role::Extended) => out += "role = \"extended\"\n",
            Some(Role::Logical) => out += "role = \"logical\"\n",
            _ => {}
        }
        if f.boot {
            out += "boot = true\n";
        }
        if Some(i) == rest || (rest_logical && f.role == Some(Role::Extended)) {
            out += "size = \"*\"\n";
        } else {
            out += &format!("size = \"{}\"\n", exact(f.size));
        }
        let fs = match (f.kind, f.fs.as_deref()) {
            (PartType::Raid | PartType::Lvm | PartType::BiosBoot, _) => None,
            (_, Some(fs @ ("ext2" | "ext3" | "ext4" | "xfs" | "vfat" | "btrfs" | "swap"))) => {
                Some(fs)
            }
            _ => None,
        };
        if let Some(fs) = fs {
            if f.kind != PartType::Swap {
                out += &format!("fs = \"{fs}\"\n");
            }
            if let Some(l) = &f.label {
                out += &format!("label = {}\n", q(l));
            }
            if fs != "swap" {
                if let Some(m) = &f.mount {
                    out += &format!("mount = {}\n", q(m));
                }
                if let Some(o) = &f.options {
                    out += &format!("mount-options = {}\n", q(o));
                }
            }
        }
    }
    Ok(out)
}
