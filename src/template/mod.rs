//! Partition templates: one TOML file per hardware class, rendered for a node's real disks.
//!
//! A template says which partitions each disk gets (sizes in bytes, percent of the disk, with
//! `min`/`max`, and `*` for the rest) in a GPT or an MBR (msdos label: primary, extended and
//! logical partitions), or that a disk is left untouched; what filesystem each partition holds
//! and where it is mounted; and optionally software RAID arrays (levels 0, 1, 4, 5, 6, 10) and
//! LVM volume groups built on partitions. Its `[match]`
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
    /// The partition table: `gpt` (the default) or `msdos` (an MBR, with primary, extended
    /// and logical partitions).
    #[serde(default)]
    pub label: Label,
    /// Leave this disk as it is: no table written, nothing made on it. It keeps its place in
    /// the order of disks, so the disks after it get their own layouts.
    #[serde(default)]
    pub untouched: bool,
    #[serde(rename = "partition", default)]
    pub partitions: Vec<Spanned<Partition>>,
}

/// A disk's partition table.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Label {
    #[default]
    Gpt,
    /// An MBR (DOS) table: at most four primary partitions, one of which may be an extended
    /// partition holding logical ones (numbered from 5); addresses end at 2 TiB.
    Msdos,
}

impl Label {
    pub fn name(self) -> &'static str {
        match self {
            Label::Gpt => "gpt",
            Label::Msdos => "msdos",
        }
    }
}

/// Where a partition of an msdos disk lives.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// One of the four entries of the MBR.
    #[default]
    Primary,
    /// The primary partition that holds the logical ones (which follow it in the list).
    Extended,
    /// A partition inside the extended one.
    Logical,
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
    /// The MBR partition id (`sfdisk` and `fdisk -l` show it): none for bios-boot, which an
    /// MBR disk does not need (GRUB lives in the gap after the MBR).
    pub fn mbr_id(self) -> Option<u8> {
        match self {
            PartType::Efi => Some(0xef),
            PartType::BiosBoot => None,
            PartType::Linux => Some(0x83),
            PartType::Swap => Some(0x82),
            PartType::Raid => Some(0xfd),
            PartType::Lvm => Some(0x8e),
        }
    }

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
    Ext2,
    Ext3,
    Ext4,
    Xfs,
    Vfat,
    Btrfs,
    Swap,
}

impl Fs {
    /// Every filesystem, for tables that look one up by a property.
    pub const ALL: [Fs; 7] = [
        Fs::Ext2,
        Fs::Ext3,
        Fs::Ext4,
        Fs::Xfs,
        Fs::Vfat,
        Fs::Btrfs,
        Fs::Swap,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fs::Ext2 => "ext2",
            Fs::Ext3 => "ext3",
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
        const EXT2: Mkfs = m("mkfs.ext2", &["-F", "-q"], "-L", 16, "e2fsprogs");
        const EXT3: Mkfs = m("mkfs.ext3", &["-F", "-q"], "-L", 16, "e2fsprogs");
        const EXT4: Mkfs = m("mkfs.ext4", &["-F", "-q"], "-L", 16, "e2fsprogs");
        const XFS: Mkfs = m("mkfs.xfs", &["-f", "-q"], "-L", 12, "xfsprogs");
        const VFAT: Mkfs = m("mkfs.vfat", &[], "-n", 11, "dosfstools");
        const BTRFS: Mkfs = m("mkfs.btrfs", &["-f", "-q"], "-L", 255, "btrfs-progs");
        const SWAP: Mkfs = m("mkswap", &["-f"], "-L", 15, "util-linux");
        match self {
            Fs::Ext2 => &EXT2,
            Fs::Ext3 => &EXT3,
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
            Fs::Ext2 | Fs::Ext3 | Fs::Ext4 | Fs::Vfat if mount == "/" => 1,
            Fs::Ext2 | Fs::Ext3 | Fs::Ext4 | Fs::Vfat => 2,
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
    /// On an msdos disk: primary (the default), extended or logical.
    pub role: Option<Role>,
    /// The boot flag: the active partition of an MBR, the legacy-BIOS-bootable attribute on
    /// GPT (what old BIOSes and some boot loaders look for).
    #[serde(default)]
    pub boot: bool,
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
    /// The RAID level: 0, 1, 4, 5, 6 or 10.
    pub level: u8,
    /// Names of the member partitions (active ones).
    pub devices: Vec<String>,
    /// Names of spare partitions (mdadm --spare-devices).
    #[serde(default)]
    pub spares: Vec<String>,
    /// Chunk size of a striped level (mdadm --chunk; default mdadm's, 512KiB).
    pub chunk: Option<Bytes>,
    /// Parity layout of RAID 5 or 6 (mdadm --layout: left-symmetric, right-asymmetric...).
    pub layout: Option<String>,
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

/// The fewest active members of a RAID level aurum builds, or `None` for another level.
pub fn raid_min_devices(level: u8) -> Option<usize> {
    match level {
        0 | 1 | 10 => Some(2),
        4 | 5 => Some(3),
        6 => Some(4),
        _ => None,
    }
}

/// The usable size of a RAID array of `n` active members whose smallest is `smallest` bytes
/// (before mdadm's superblock and bitmap, a few MiB at most).
pub fn raid_size(level: u8, n: u64, smallest: u64) -> u64 {
    match level {
        0 => smallest * n,
        1 => smallest,
        4 | 5 => smallest * n.saturating_sub(1),
        6 => smallest * n.saturating_sub(2),
        // mdadm's default for RAID10 keeps two copies of each block (the near-2 layout).
        _ => smallest * n / 2,
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
        if disk.untouched {
            if !disk.partitions.is_empty() {
                return Err(invalid(format!(
                    "{}: disk {n} is `untouched` and has partitions: remove one or the other",
                    self.origin
                )));
            }
            return Ok(());
        }
        if disk.partitions.is_empty() {
            return Err(invalid(format!(
                "{}: disk {n} has no partitions (to leave it as it is, say untouched = true)",
                self.origin
            )));
        }
        // `*` and percentages count per space: the disk, and (msdos) the extended partition.
        let (mut rest, mut percent) = ([0, 0], [0.0, 0.0]);
        for p in &disk.partitions {
            let span = p.span();
            let p = p.get_ref();
            if let Some(name) = &p.name {
                if !self.names.insert(name.clone()) {
                    return Err(self.at(span, format!("partition name `{name}` is used twice")));
                }
            }
            let inner = usize::from(p.role == Some(Role::Logical));
            match p.size {
                Amount::Rest => rest[inner] += 1,
                Amount::Percent(v) => percent[inner] += v,
                Amount::Bytes(_) => {}
            }
            if rest[inner] > 1 {
                return Err(self.at(
                    span,
                    format!(
                        "disk {n} has two `*` {}: only one may take the rest",
                        if inner == 1 {
                            "logical partitions"
                        } else {
                            "partitions"
                        }
                    ),
                ));
            }
            self.partition(p, span)?;
        }
        for v in percent {
            if v > 100.0 {
                return Err(invalid(format!(
                    "{}: disk {n} asks for {v}% of the disk in all: at most 100% fits",
                    self.origin
                )));
            }
        }
        match disk.label {
            Label::Gpt => self.gpt_roles(n, disk),
            Label::Msdos => self.msdos_roles(n, disk),
        }
    }

    /// A GPT has only primary partitions, and no limit of four.
    fn gpt_roles(&self, n: usize, disk: &Disk) -> Result<()> {
        for p in &disk.partitions {
            if matches!(p.get_ref().role, Some(Role::Extended | Role::Logical)) {
                return Err(self.at(
                    p.span(),
                    format!("disk {n} is GPT, which has no extended or logical partitions: say label = \"msdos\" on the disk, or remove `role`"),
                ));
            }
        }
        Ok(())
    }

    /// An MBR: four primary entries at most, one of them may be the extended partition, and
    /// the logical partitions follow it in the list.
    fn msdos_roles(&self, n: usize, disk: &Disk) -> Result<()> {
        let (mut primary, mut extended) = (0, 0);
        let mut prev = Role::Primary;
        for p in &disk.partitions {
            let span = p.span();
            let q = p.get_ref();
            let role = q.role.unwrap_or_default();
            match role {
                Role::Primary => primary += 1,
                Role::Extended => extended += 1,
                Role::Logical if prev == Role::Primary => {
                    return Err(self.at(span, format!("disk {n}: a logical partition must follow the extended partition or another logical one")));
                }
                Role::Logical => {}
            }
            if extended > 1 {
                return Err(self.at(
                    span,
                    format!("disk {n} has two extended partitions: an MBR holds one"),
                ));
            }
            if primary + extended > 4 {
                return Err(self.at(span, format!("disk {n} has more than four primary partitions (the extended one counts): make some logical, or use label = \"gpt\"")));
            }
            if q.kind == PartType::BiosBoot {
                return Err(self.at(span, "an msdos disk needs no bios-boot partition (GRUB lives after the MBR): remove it".into()));
            }
            if role == Role::Extended
                && (q.kind != PartType::Linux || q.fs.is_some() || q.mount.is_some() || q.boot)
            {
                return Err(self.at(span, "the extended partition only holds logical partitions: no type, fs, mount or boot on it".into()));
            }
            prev = role;
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
        let Some(min) = raid_min_devices(r.level) else {
            return Err(self.at(
                span,
                format!(
                    "RAID level {} is not supported: aurum builds levels 0, 1, 4, 5, 6 and 10",
                    r.level
                ),
            ));
        };
        if r.devices.len() < min {
            return Err(self.at(
                span,
                format!("a RAID{} array needs at least {min} devices", r.level),
            ));
        }
        if r.level == 1 && r.chunk.is_some() {
            return Err(self.at(
                span,
                "a RAID1 mirror has no chunk size: remove `chunk`".into(),
            ));
        }
        if r.layout.is_some() && !matches!(r.level, 5 | 6 | 10) {
            return Err(self.at(
                span,
                format!("RAID{} has no parity layout: remove `layout`", r.level),
            ));
        }
        for dev in r.devices.iter().chain(&r.spares) {
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

    #[test]
    fn msdos_rules_raid_levels_and_untouched_disks_are_checked() {
        let one = |body: &str| {
            Template::parse(&ClassName::new("x").unwrap(), "x.toml", body)
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        let root = "[[disk.partition]]\nsize = \"*\"\nfs = \"ext4\"\nmount = \"/\"\n";
        let part = |extra: &str| format!("[[disk.partition]]\nsize = \"1GiB\"\n{extra}\n");
        let cases = [
            (format!("[[disk]]\nlabel = \"msdos\"\n{}{root}", part("role = \"logical\"")), "must follow the extended partition"),
            (format!("[[disk]]\n{}{root}", part("role = \"extended\"")), "is GPT, which has no extended"),
            (format!("[[disk]]\nlabel = \"msdos\"\n{}{}{root}", part("role = \"extended\""), part("role = \"extended\"")), "two extended partitions"),
            (format!("[[disk]]\nlabel = \"msdos\"\n{}{}{}{}{root}", part(""), part(""), part(""), part("")), "more than four primary"),
            (format!("[[disk]]\nlabel = \"msdos\"\n{}{root}", part("type = \"bios-boot\"")), "needs no bios-boot"),
            (format!("[[disk]]\nlabel = \"msdos\"\n{}{root}", part("role = \"extended\"\nfs = \"ext4\"")), "only holds logical partitions"),
            (format!("[[disk]]\n{root}[[disk]]\nuntouched = true\n{}", part("")), "is `untouched` and has partitions"),
            (format!("[[disk]]\n{root}[[disk]]\n"), "to leave it as it is, say untouched = true"),
            (format!("[[disk]]\n{}{}{root}[[raid]]\nname = \"r\"\nlevel = 3\ndevices = [\"a\", \"b\"]\n", part("name = \"a\"\ntype = \"raid\""), part("name = \"b\"\ntype = \"raid\"")), "RAID level 3 is not supported"),
            (format!("[[disk]]\n{}{}{root}[[raid]]\nname = \"r\"\nlevel = 5\ndevices = [\"a\", \"b\"]\n", part("name = \"a\"\ntype = \"raid\""), part("name = \"b\"\ntype = \"raid\"")), "RAID5 array needs at least 3 devices"),
            (format!("[[disk]]\n{}{}{root}[[raid]]\nname = \"r\"\nlevel = 1\nchunk = \"64KiB\"\ndevices = [\"a\", \"b\"]\n", part("name = \"a\"\ntype = \"raid\""), part("name = \"b\"\ntype = \"raid\"")), "no chunk size"),
        ];
        for (text, want) in cases {
            let e = one(&text).unwrap_err();
            assert!(e.contains(want), "{want}: {e}\n{text}");
        }
        let ok = format!(
            "[[disk]]\nlabel = \"msdos\"\n{}{}{}{}{root}",
            part("fs = \"ext2\"\nmount = \"/boot\"\nboot = true"),
            part("role = \"extended\""),
            part("role = \"logical\"\ntype = \"swap\""),
            part("role = \"logical\"\nfs = \"ext3\"\nmount = \"/var\"")
        );
        assert_eq!(one(&ok), Ok(()), "{ok}");
    }
}
