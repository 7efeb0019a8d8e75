//! Partition templates: one TOML file per hardware class, rendered for a node's real disks.
//!
//! A template says which partitions each disk gets (sizes in bytes, percent of the disk, with
//! `min`/`max`, and `*` for the rest), what filesystem each holds and where it is mounted, and
//! optionally software RAID1 arrays and LVM volume groups built on partitions. Its `[match]`
//! section says which machines the class is for (see [`matching`]).
//!
//! Parsing is strict (`deny_unknown_fields`, kebab-case keys) and every error names the file and
//! the line, because a template is usually edited minutes before nodes are installed from it.
//! [`Template::parse`] checks everything that does not depend on a disk size; [`render`] does
//! the rest.

pub mod matching;
pub mod prepare;

pub mod render;
pub mod size;
pub mod store;

use std::collections::HashSet;
use std::fmt;

use serde::Deserialize;
use toml::Spanned;

use crate::error::{invalid, Result};
use crate::name::ClassName;
use size::{Amount, Bytes};

pub use render::{render, smallest_disk, Plan};

/// A parsed, checked template.
#[derive(Clone, Debug)]
pub struct Template {
    /// The hardware class (the file's stem).
    pub class: ClassName,
    pub file: TemplateFile,
}

/// The TOML document.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TemplateFile {
    /// One line for `aurum template list`.
    #[serde(default)]
    pub description: String,
    #[serde(default, rename = "match")]
    pub matching: matching::Match,
    /// The disks, in the order the node lists them (by kernel name: sda before sdb).
    #[serde(rename = "disk")]
    pub disks: Vec<Disk>,
    #[serde(default)]
    pub raid: Vec<Spanned<Raid>>,
    #[serde(default)]
    pub lvm: Vec<Spanned<VolumeGroup>>,
}

/// One disk's partitions, in on-disk order.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Disk {
    #[serde(rename = "partition")]
    pub partitions: Vec<Spanned<Partition>>,
}

/// GPT partition types a template may ask for.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PartType {
    Efi,
    BiosBoot,
    #[default]
    Linux,
    Swap,
    Raid,
    Lvm,
}

impl PartType {
    /// The GPT partition type (the one `sgdisk -p` shows as ef00, ef02, 8300, 8200, fd00,
    /// 8e00).
    pub fn gpt_type(self) -> gpt::partition_types::Type {
        use gpt::partition_types as pt;
        match self {
            PartType::Efi => pt::EFI,
            PartType::BiosBoot => pt::BIOS,
            PartType::Linux => pt::LINUX_FS,
            PartType::Swap => pt::LINUX_SWAP,
            PartType::Raid => pt::LINUX_RAID,
            PartType::Lvm => pt::LINUX_LVM,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PartType::Efi => "efi",
            PartType::BiosBoot => "bios-boot",
            PartType::Linux => "linux",
            PartType::Swap => "swap",
            PartType::Raid => "raid",
            PartType::Lvm => "lvm",
        }
    }
}

/// Filesystems aurum can make.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fs {
    Ext4,
    Xfs,
    Vfat,
    Btrfs,
    Swap,
}

impl Fs {
    pub fn name(self) -> &'static str {
        match self {
            Fs::Ext4 => "ext4",
            Fs::Xfs => "xfs",
            Fs::Vfat => "vfat",
            Fs::Btrfs => "btrfs",
            Fs::Swap => "swap",
        }
    }

    /// How to make the filesystem: the one table of mkfs programs, their flags and packages.
    pub fn mkfs(self) -> &'static Mkfs {
        const fn m(
            program: &'static str,
            force: &'static [&'static str],
            label_flag: &'static str,
            max_label: usize,
            package: &'static str,
        ) -> Mkfs {
            Mkfs {
                program,
                force,
                label_flag,
                max_label,
                package,
            }
        }
        const EXT4: Mkfs = m("mkfs.ext4", &["-F", "-q"], "-L", 16, "e2fsprogs");
        const XFS: Mkfs = m("mkfs.xfs", &["-f", "-q"], "-L", 12, "xfsprogs");
        const VFAT: Mkfs = m("mkfs.vfat", &[], "-n", 11, "dosfstools");
        const BTRFS: Mkfs = m("mkfs.btrfs", &["-f", "-q"], "-L", 255, "btrfs-progs");
        const SWAP: Mkfs = m("mkswap", &["-f"], "-L", 15, "util-linux");
        match self {
            Fs::Ext4 => &EXT4,
            Fs::Xfs => &XFS,
            Fs::Vfat => &VFAT,
            Fs::Btrfs => &BTRFS,
            Fs::Swap => &SWAP,
        }
    }

    /// Longest label the filesystem stores.
    fn max_label(self) -> usize {
        self.mkfs().max_label
    }

    /// The fsck pass number for /etc/fstab.
    pub fn fsck_pass(self, mount: &str) -> u8 {
        match self {
            Fs::Ext4 | Fs::Vfat if mount == "/" => 1,
            Fs::Ext4 | Fs::Vfat => 2,
            _ => 0,
        }
    }
}

/// The program that makes one kind of filesystem, and what to tell it.
#[derive(Debug)]
pub struct Mkfs {
    pub program: &'static str,
    /// Flags that overwrite an old signature without asking and keep the output short.
    pub force: &'static [&'static str],
    /// The flag that sets the label.
    pub label_flag: &'static str,
    /// Longest label the filesystem stores.
    pub max_label: usize,
    /// The Debian package that has `program`.
    pub package: &'static str,
}

impl fmt::Display for Fs {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A partition.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Partition {
    /// How RAID arrays and volume groups refer to it; also the GPT partition name.
    pub name: Option<String>,
    #[serde(rename = "type", default)]
    pub kind: PartType,
    pub size: Amount,
    pub min: Option<Bytes>,
    pub max: Option<Bytes>,
    pub fs: Option<Fs>,
    pub label: Option<String>,
    pub mkfs_options: Option<String>,
    pub mount: Option<String>,
    pub mount_options: Option<String>,
}

/// A software RAID array (mdadm) over partitions of type `raid`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Raid {
    /// The array's name: `/dev/md/NAME`.
    pub name: String,
    /// The RAID level; aurum builds mirrors (1).
    pub level: u8,
    /// Names of the member partitions.
    pub devices: Vec<String>,
    pub fs: Option<Fs>,
    pub label: Option<String>,
    pub mkfs_options: Option<String>,
    pub mount: Option<String>,
    pub mount_options: Option<String>,
}

/// An LVM volume group over partitions of type `lvm` (or RAID arrays).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct VolumeGroup {
    pub name: String,
    /// Names of the physical volumes: partitions of type `lvm`, or RAID arrays.
    pub devices: Vec<String>,
    #[serde(rename = "volume")]
    pub volumes: Vec<Spanned<Volume>>,
}

/// A logical volume; sizes in percent are of the volume group.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Volume {
    pub name: String,
    pub size: Amount,
    pub min: Option<Bytes>,
    pub max: Option<Bytes>,
    pub fs: Option<Fs>,
    pub label: Option<String>,
    pub mkfs_options: Option<String>,
    pub mount: Option<String>,
    pub mount_options: Option<String>,
}

/// What goes on a block device: filesystem, label, mkfs options, mount point and options.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct FsSpec {
    pub fs: Option<Fs>,
    pub label: Option<String>,
    pub mkfs_options: Option<String>,
    pub mount: Option<String>,
    pub mount_options: Option<String>,
}

impl Partition {
    pub fn fs_spec(&self) -> FsSpec {
        FsSpec {
            fs: self
                .fs
                .or((self.kind == PartType::Swap).then_some(Fs::Swap)),
            label: self.label.clone(),
            mkfs_options: self.mkfs_options.clone(),
            mount: self.mount.clone(),
            mount_options: self.mount_options.clone(),
        }
    }
}

impl Raid {
    pub fn fs_spec(&self) -> FsSpec {
        FsSpec {
            fs: self.fs,
            label: self.label.clone(),
            mkfs_options: self.mkfs_options.clone(),
            mount: self.mount.clone(),
            mount_options: self.mount_options.clone(),
        }
    }
}

impl Volume {
    pub fn fs_spec(&self) -> FsSpec {
        FsSpec {
            fs: self.fs,
            label: self.label.clone(),
            mkfs_options: self.mkfs_options.clone(),
            mount: self.mount.clone(),
            mount_options: self.mount_options.clone(),
        }
    }
}

/// 1-based line of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    let text = text.as_bytes();
    text.get(..at)
        .unwrap_or(text)
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// [`Template::check`] going through a file: the names and mount points seen so far, and the
/// partitions and arrays already used by an array or a volume group.
struct Checker<'a> {
    origin: &'a str,
    text: &'a str,
    file: &'a TemplateFile,
    names: HashSet<String>,
    mounts: HashSet<String>,
    used: HashSet<String>,
}

type Span = std::ops::Range<usize>;

impl Checker<'_> {
    /// The error `msg` at the line of `span`.
    fn at(&self, span: Span, msg: String) -> crate::error::Error {
        invalid(format!(
            "{}:{}: {msg}",
            self.origin,
            line_of(self.text, span.start)
        ))
    }

    /// A filesystem's mount point and label, wherever it lives.
    fn fs(&mut self, spec: &FsSpec, span: Span) -> Result<()> {
        if let Some(m) = &spec.mount {
            if !m.starts_with('/') || m.contains("//") || m.split('/').any(|c| c == "..") {
                return Err(self.at(
                    span,
                    format!("mount `{m}` must be an absolute path like /scr"),
                ));
            }
            match spec.fs {
                None => {
                    return Err(self.at(
                        span,
                        format!(
                        "mount `{m}` needs a filesystem: add fs = \"ext4\" (or xfs, vfat, btrfs)"
                    ),
                    ))
                }
                Some(Fs::Swap) => {
                    return Err(self.at(
                        span,
                        "a swap area has no mount point: remove `mount`".into(),
                    ))
                }
                _ => {}
            }
            if !self.mounts.insert(m.clone()) {
                return Err(self.at(span, format!("mount point {m} is used twice")));
            }
        }
        if let (Some(fs), Some(l)) = (spec.fs, &spec.label) {
            if l.len() > fs.max_label() {
                return Err(self.at(
                    span,
                    format!(
                        "label `{l}` is longer than {} allows ({} characters)",
                        fs,
                        fs.max_label()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Disk number `n` (1-based) and its partitions.
    fn disk(&mut self, n: usize, disk: &Disk) -> Result<()> {
        if disk.partitions.is_empty() {
            return Err(invalid(format!(
                "{}: disk {n} has no partitions",
                self.origin
            )));
        }
        let mut rest = 0;
        let mut percent = 0.0;
        for p in &disk.partitions {
            let span = p.span();
            let p = p.get_ref();
            if let Some(name) = &p.name {
                if !self.names.insert(name.clone()) {
                    return Err(self.at(span, format!("partition name `{name}` is used twice")));
                }
            }
            match p.size {
                Amount::Rest => rest += 1,
                Amount::Percent(v) => percent += v,
                Amount::Bytes(_) => {}
            }
            if rest > 1 {
                return Err(self.at(
                    span,
                    format!("disk {n} has two `*` partitions: only one may take the rest"),
                ));
            }
            self.partition(p, span)?;
        }
        if percent > 100.0 {
            return Err(invalid(format!(
                "{}: disk {n} asks for {percent}% of the disk in all: at most 100% fits",
                self.origin
            )));
        }
        Ok(())
    }

    /// One partition's own fields: its bounds, and what its type allows.
    fn partition(&mut self, p: &Partition, span: Span) -> Result<()> {
        if let (Some(a), Some(b)) = (p.min, p.max) {
            if a > b {
                return Err(self.at(span, "min is larger than max".into()));
            }
        }
        match p.kind {
            PartType::Raid | PartType::Lvm | PartType::BiosBoot => {
                if p.fs.is_some() || p.mount.is_some() {
                    return Err(self.at(
                        span,
                        format!(
                            "a {} partition holds no filesystem: put fs and mount on the {} instead",
                            p.kind.name(),
                            if p.kind == PartType::Raid { "[[raid]] array" } else if p.kind == PartType::Lvm { "[[lvm.volume]]" } else { "root partition" }
                        ),
                    ));
                }
                if p.kind != PartType::BiosBoot && p.name.is_none() {
                    return Err(self.at(
                        span,
                        format!(
                            "a {} partition needs a name for its array or volume group to refer to",
                            p.kind.name()
                        ),
                    ));
                }
            }
            PartType::Efi if p.fs.is_some_and(|f| f != Fs::Vfat) => {
                return Err(self.at(span, "an EFI system partition must be vfat".into()));
            }
            PartType::Swap if p.fs.is_some_and(|f| f != Fs::Swap) => {
                return Err(self.at(span, "a swap partition has fs = \"swap\" (or none)".into()));
            }
            _ => {}
        }
        if p.fs == Some(Fs::Swap) && p.kind != PartType::Swap {
            return Err(self.at(span, "fs = \"swap\" needs type = \"swap\"".into()));
        }
        self.fs(&p.fs_spec(), span)
    }

    /// The type of the partition named `n`.
    fn part_kind(&self, n: &str) -> Option<PartType> {
        self.file
            .disks
            .iter()
            .flat_map(|d| &d.partitions)
            .find(|p| p.get_ref().name.as_deref() == Some(n))
            .map(|p| p.get_ref().kind)
    }

    /// Notes `dev` as used by an array or a volume group (each may be used once).
    fn use_member(&mut self, dev: &str, span: Span) -> Result<()> {
        if !self.used.insert(dev.to_string()) {
            return Err(self.at(
                span,
                format!("`{dev}` is used by two arrays or volume groups"),
            ));
        }
        Ok(())
    }

    fn raid(&mut self, r: &Spanned<Raid>) -> Result<()> {
        let span = r.span();
        let r = r.get_ref();
        if r.level != 1 {
            return Err(self.at(
                span,
                format!(
                    "RAID level {} is not supported: aurum builds mirrors (level = 1)",
                    r.level
                ),
            ));
        }
        if r.devices.len() < 2 {
            return Err(self.at(span, "a RAID1 array needs at least two devices".into()));
        }
        for dev in &r.devices {
            if self.part_kind(dev) != Some(PartType::Raid) {
                return Err(self.at(
                    span,
                    format!("RAID member `{dev}` is not a partition of type \"raid\""),
                ));
            }
            self.use_member(dev, span.clone())?;
        }
        if !self.names.insert(r.name.clone()) {
            return Err(self.at(span, format!("name `{}` is used twice", r.name)));
        }
        self.fs(&r.fs_spec(), span)
    }

    fn volume_group(&mut self, vg: &Spanned<VolumeGroup>) -> Result<()> {
        let span = vg.span();
        let g = vg.get_ref();
        if g.devices.is_empty() {
            return Err(self.at(span, format!("volume group {} has no devices", g.name)));
        }
        for dev in &g.devices {
            let is_raid = self.file.raid.iter().any(|r| &r.get_ref().name == dev);
            if !is_raid && self.part_kind(dev) != Some(PartType::Lvm) {
                return Err(self.at(span, format!("volume group member `{dev}` is neither a partition of type \"lvm\" nor a RAID array")));
            }
            self.use_member(dev, span.clone())?;
        }
        let rests = g
            .volumes
            .iter()
            .filter(|v| v.get_ref().size == Amount::Rest)
            .count();
        if rests > 1 {
            return Err(self.at(span, format!("volume group {} has two `*` volumes", g.name)));
        }
        for v in &g.volumes {
            self.fs(&v.get_ref().fs_spec(), v.span())?;
        }
        Ok(())
    }

    /// Every RAID and LVM partition belongs to an array or a volume group.
    fn members_used(&self) -> Result<()> {
        for d in &self.file.disks {
            for p in &d.partitions {
                let q = p.get_ref();
                if !matches!(q.kind, PartType::Raid | PartType::Lvm) {
                    continue;
                }
                let n = q.name.as_deref().unwrap_or_default();
                if !self.used.contains(n) {
                    return Err(self.at(
                        d.partitions
                            .iter()
                            .find(|o| o.get_ref().name.as_deref() == Some(n))
                            .map(|o| o.span())
                            .unwrap_or(0..0),
                        format!(
                            "{} partition `{n}` belongs to no array or volume group",
                            q.kind.name()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Template {
    /// Parses and checks `text`; `origin` names the file in errors (`compute.toml`).
    pub fn parse(class: &ClassName, origin: &str, text: &str) -> Result<Template> {
        let file: TemplateFile = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start));
            let msg = e.message().trim_end();
            match line {
                Some(l) => invalid(format!("{origin}:{l}: {msg}")),
                None => invalid(format!("{origin}: {msg}")),
            }
        })?;
        let t = Template {
            class: class.clone(),
            file,
        };
        t.check(origin, text)?;
        Ok(t)
    }

    /// Everything that can be wrong without a disk size.
    fn check(&self, origin: &str, text: &str) -> Result<()> {
        let f = &self.file;
        if f.disks.is_empty() {
            return Err(invalid(format!(
                "{origin}: no [[disk]]: a template needs at least one disk with partitions"
            )));
        }
        let mut c = Checker {
            origin,
            text,
            file: f,
            names: HashSet::new(),
            mounts: HashSet::new(),
            used: HashSet::new(),
        };
        for (d, disk) in f.disks.iter().enumerate() {
            c.disk(d + 1, disk)?;
        }
        for r in &f.raid {
            c.raid(r)?;
        }
        for vg in &f.lvm {
            c.volume_group(vg)?;
        }
        c.members_used()?;
        if !c.mounts.contains("/") {
            return Err(invalid(format!(
                "{origin}: nothing is mounted at /: give one filesystem mount = \"/\""
            )));
        }
        Ok(())
    }

    /// Every filesystem the template makes, with where it lives (for messages).
    pub fn needs_tools(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if !self.file.raid.is_empty() {
            v.push("mdadm");
        }
        if !self.file.lvm.is_empty() {
            v.push("lvm");
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
description = "test"
[[disk]]
[[disk.partition]]
type = "efi"
size = "512MiB"
fs = "vfat"
mount = "/boot/efi"
[[disk.partition]]
size = "4GiB"
fs = "ext4"
mount = "/"
[[disk.partition]]
size = "*"
fs = "xfs"
mount = "/scr"
"#;

    #[test]
    fn parses_a_good_template() {
        let t = Template::parse(&ClassName::new("compute").unwrap(), "compute.toml", GOOD).unwrap();
        assert_eq!(t.file.disks[0].partitions.len(), 3);
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let bad = GOOD.replace("fs = \"xfs\"", "fss = \"xfs\"");
        let e = Template::parse(&ClassName::new("compute").unwrap(), "compute.toml", &bad)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("compute.toml:15:"), "{e}");
        assert!(e.contains("fss"), "{e}");
        let bad = GOOD.replace("\"4GiB\"", "\"4 gigs\"");
        let e = Template::parse(&ClassName::new("compute").unwrap(), "compute.toml", &bad)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("compute.toml:10:") && e.contains("unknown unit"),
            "{e}"
        );
        let bad = GOOD.replace("\"4GiB\"", "\"*\"");
        let e = Template::parse(&ClassName::new("compute").unwrap(), "compute.toml", &bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("two `*` partitions"), "{e}");
        let bad = GOOD.replace("mount = \"/\"", "mount = \"/scr\"");
        let e = Template::parse(&ClassName::new("compute").unwrap(), "compute.toml", &bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("used twice"), "{e}");
    }

    #[test]
    fn raid_and_lvm_errors_name_the_line_of_their_table() {
        let raid = include_str!("../../partition-templates/raid1.toml");
        let lvm = include_str!("../../partition-templates/lvm.toml");
        let cases = [
            (
                raid.replace("[\"scr-a\", \"scr-b\"]", "[\"scr-a\", \"root-b\"]"),
                "`root-b` is used by two arrays or volume groups",
            ),
            (
                raid.replace("[\"root-a\", \"root-b\"]", "[\"root-a\", \"esp-b\"]"),
                "RAID member `esp-b` is not a partition of type \"raid\"",
            ),
            (
                lvm.replace("devices = [\"pv0\"]", "devices = [\"esp\"]"),
                "volume group member `esp` is neither",
            ),
            (
                lvm.replace("fs = \"swap\"", "fs = \"swap\"\nmount = \"/swap\""),
                "a swap area has no mount point",
            ),
        ];
        for (text, want) in cases {
            let e = Template::parse(&ClassName::new("x").unwrap(), "x.toml", &text)
                .unwrap_err()
                .to_string();
            let table = if want.contains("root-b") {
                "[[raid]]\nname = \"scr\""
            } else if want.contains("esp-b") {
                "[[raid]]\nname = \"root\""
            } else if want.contains("swap") {
                "[[lvm.volume]]\nname = \"swap\""
            } else {
                "[[lvm]]"
            };
            let line = line_of(&text, text.find(table).unwrap());
            assert!(e.starts_with(&format!("x.toml:{line}: {want}")), "{e}");
        }
    }
}
