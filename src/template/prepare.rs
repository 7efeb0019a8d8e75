//! `prepareclient`: the golden client's disk layout, written as a partition template.
//!
//! The GPT is read with the `gpt` crate (no partitioning tool needed on the golden client);
//! each partition's filesystem, label and UUID come from `blkid`, and its mount point and
//! options from the system's mounts and /etc/fstab. For a disk image file (a golden client's
//! disk copied with dd, or a disk `aurum install` wrote) each partition is reached through a
//! loop device over its byte range, and the mount points come from the /etc/fstab found on the
//! image's root filesystem.
//!
//! Sizes are written exactly (in MiB when they are whole MiB) except the last data partition,
//! which becomes `*`, so the template fits the golden client's disk and grows with bigger ones.

use std::path::Path;

use super::size::exact;
use super::PartType;
use crate::devices::{blkid, blkid_value, is_block, partition_node, Loop, Mount};
use crate::error::{invalid, Result};
use crate::sys::{parse_fstab, FstabEntry};

/// One partition as found.
#[derive(Debug)]
struct Found {
    number: u32,
    name: String,
    kind: PartType,
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

/// Reads the layout of `disk` (a block device or an image file) and writes it as a template.
pub fn prepare(disk: &Path) -> Result<String> {
    let gd = gpt::GptConfig::new()
        .writable(false)
        .open(disk)
        .map_err(|e| {
            invalid(format!(
                "{}: no readable GPT ({e}); prepareclient reads GPT disks only",
                disk.display()
            ))
        })?;
    let lb: u64 = (*gd.logical_block_size()).into();
    let disk_size = crate::devices::size_of(disk)?;
    let block = is_block(disk)?;
    let mut found = Vec::new();
    let mut loops = Vec::new();
    for (&n, p) in gd.partitions().iter().filter(|(_, p)| p.is_used()) {
        let start = p.first_lba * lb;
        let size = (p.last_lba + 1 - p.first_lba) * lb;
        let dev = if block {
            partition_node(disk, n)
        } else {
            let l = Loop::attach(disk, start, size)?;
            let d = l.dev.clone();
            loops.push(l);
            d
        };
        let tags = blkid(&dev)?;
        found.push((
            start,
            dev,
            Found {
                number: n,
                name: p.name.clone(),
                kind: kind_of(&p.part_type_guid),
                size,
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

    let rest = found
        .iter()
        .rposition(|(_, _, f)| {
            f.kind == PartType::Linux && f.mount.is_some() && f.mount.as_deref() != Some("/")
        })
        .or_else(|| {
            found
                .iter()
                .rposition(|(_, _, f)| f.kind == PartType::Linux)
        });
    let mut out = format!(
        "# Written by `aurum prepareclient` from {} ({} bytes).\n\
         # Every size is as found, except the last data partition, which takes the rest (`*`).\n\
         # Add a [match] section saying which machines this class is for.\n\
         description = \"layout of {}\"\n\n[[disk]]\n",
        disk.display(),
        disk_size,
        disk.display()
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
        if Some(i) == rest {
            out += "size = \"*\"\n";
        } else {
            out += &format!("size = \"{}\"\n", exact(f.size));
        }
        let fs = match (f.kind, f.fs.as_deref()) {
            (PartType::Raid | PartType::Lvm | PartType::BiosBoot, _) => None,
            (_, Some(fs @ ("ext4" | "xfs" | "vfat" | "btrfs" | "swap"))) => Some(fs),
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
