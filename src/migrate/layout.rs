//! SystemImager disk layouts (`autoinstallscript.conf`, `disks-layout.xml`) as aurum templates.
//!
//! Both files are the same XML under `<config>`: `<disk>` with `<part>`s, `<raid>` (SystemImager
//! 4 writes one element per array, 5 nests `<raid_disk>`s in one), `<lvm>` with `<lvm_group>`s
//! and `<lv>`s, `<fsinfo>` lines (filesystems and fstab) and `<bootloader>`. The conversion is
//! all or nothing: what a template cannot say is refused with the element, the attribute and
//! the reason, never dropped quietly, because a node installed from a half-converted layout
//! loses data or does not boot. What is dropped on purpose (fstab lines for pseudo filesystems,
//! which systemd mounts anyway; dump numbers; fixed UUIDs) is listed in [`Conversion::notes`].
//!
//! Disks are named by device in SystemImager (`/dev/sda`) and by order in aurum (the node's
//! disks as the kernel lists them), so each disk is placed by its name (`sdb` is the second),
//! and a disk the layout skips becomes `untouched = true`, which is what SystemImager did to it.

use std::fmt::Display;

use roxmltree::{Document, Node, NodeId};

use crate::devices::partition_node;
use crate::error::{invalid, Error, Result};
use crate::name::ClassName;
use crate::template::size::{parse_amount, MIB};
use crate::template::{Fs, Label, PartType, Role, Template};

/// A converted layout.
#[derive(Debug, serde::Serialize)]
pub struct Conversion {
    /// The template, TOML.
    pub text: String,
    /// What the conversion left out or changed on purpose, one line each.
    pub notes: Vec<String>,
}

/// What goes on a block device, from its `<fsinfo>`.
#[derive(Default)]
struct FsOut {
    fs: Option<Fs>,
    label: Option<String>,
    mkfs_options: Option<String>,
    mount: Option<String>,
    mount_options: Option<String>,
}

struct PartOut {
    dev: String,
    name: String,
    role: Role,
    size: String,
    kind: PartType,
    boot: bool,
    fs: FsOut,
}

struct DiskOut {
    dev: String,
    index: usize,
    label: Label,
    parts: Vec<PartOut>,
}

struct RaidOut {
    /// Its element, for refusals made once the whole file is read.
    at: NodeId,
    dev: String,
    name: String,
    level: u8,
    /// Member devices in order; the first `active` are active, the rest spares.
    members: Vec<String>,
    active: Option<usize>,
    spares: Option<usize>,
    chunk: Option<String>,
    layout: Option<String>,
    vg: Option<String>,
    fs: FsOut,
}

struct LvOut {
    name: String,
    size: String,
    fs: FsOut,
}

struct VgOut {
    name: String,
    lvs: Vec<LvOut>,
}

/// Where an fsinfo's `real_dev` points.
#[derive(Clone, Copy)]
enum Target {
    Part(usize, usize),
    Raid(usize),
    Lv(usize, usize),
}

struct Converter<'a> {
    origin: &'a str,
    doc: &'a Document<'a>,
    notes: Vec<String>,
    disks: Vec<DiskOut>,
    raids: Vec<RaidOut>,
    vgs: Vec<VgOut>,
    /// Parts naming their array or volume group (`raid_dev`, `lvm_group`): (element, device,
    /// name).
    part_raid: Vec<(NodeId, String, String)>,
    part_vg: Vec<(NodeId, String, String)>,
    firmware: Option<&'static str>,
    /// Devices whose fstab line had a dump number other than 0.
    dumped: Vec<String>,
}

/// Converts the layout `xml` (`origin` names it in messages) into a template of `class`.
pub fn convert(xml: &str, origin: &str, class: &ClassName) -> Result<Conversion> {
    let doc = Document::parse(xml).map_err(|e| {
        invalid(format!(
            "{origin}: not a SystemImager layout: the XML is broken: {e}"
        ))
    })?;
    let mut c = Converter {
        origin,
        doc: &doc,
        notes: Vec::new(),
        disks: Vec::new(),
        raids: Vec::new(),
        vgs: Vec::new(),
        part_raid: Vec::new(),
        part_vg: Vec::new(),
        firmware: None,
        dumped: Vec::new(),
    };
    let root = doc.root_element();
    if root.tag_name().name() != "config" {
        return Err(c.refuse(
            root,
            None,
            "the root element of a SystemImager layout is <config>",
        ));
    }
    let mut fsinfo = Vec::new();
    let mut bootloaders = Vec::new();
    for e in root.children().filter(Node::is_element) {
        match e.tag_name().name() {
            "disk" => c.disk(e)?,
            "raid" => c.raid_element(e)?,
            "lvm" => c.lvm(e)?,
            "fsinfo" => fsinfo.push(e),
            "bootloader" => bootloaders.push(e),
            "boel" => c.notes.push(
                "<boel> ignored: it told SystemImager's old installer how to name devices".into(),
            ),
            other => {
                return Err(c.refuse(
                    e,
                    None,
                    format!("<{other}> is not an element of a SystemImager layout aurum knows"),
                ))
            }
        }
    }
    if c.disks.is_empty() {
        return Err(c.refuse(root, None, "the layout has no <disk>"));
    }
    c.members()?;
    for e in fsinfo {
        c.fsinfo(e)?;
    }
    for e in bootloaders {
        c.bootloader(e)?;
    }
    if !c.dumped.is_empty() {
        let n = format!(
            "fstab dump numbers not kept (aurum writes 0): {}",
            c.dumped.join(", ")
        );
        c.notes.push(n);
    }
    let text = c.write();
    let t = Template::parse(class, &format!("{class}.toml"), &text).map_err(|e| {
        invalid(format!(
            "{origin}: the converted layout is not a valid template: {e}\n(the template was:\n{text})"
        ))
    })?;
    if crate::template::smallest_disk(&t).is_none() {
        return Err(invalid(format!(
            "{origin}: the converted layout fits no disk up to 1 PiB"
        )));
    }
    Ok(Conversion {
        text,
        notes: c.notes,
    })
}

/// The attributes `e` may have; any other is refused.
fn only(c: &Converter, e: Node, known: &[&str]) -> Result<()> {
    for a in e.attributes() {
        if !known.contains(&a.name()) {
            return Err(c.refuse(
                e,
                Some(a.name()),
                format!(
                    "aurum does not know this attribute of <{}> (it knows {})",
                    e.tag_name().name(),
                    known.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// A value meaning "nothing": absent, empty or `-`.
fn given<'a>(e: Node<'a, '_>, attr: &str) -> Option<&'a str> {
    e.attribute(attr)
        .map(str::trim)
        .filter(|v| !v.is_empty() && *v != "-")
}

/// The position of a disk among the node's disks, from its kernel name: `sda` 0, `sdb` 1,
/// `vdc` 2, `nvme1n1` 1, `cciss/c0d2` 2.
fn disk_index(dev: &str) -> Option<usize> {
    let name = dev.strip_prefix("/dev/")?;
    for prefix in ["sd", "vd", "hd", "xvd"] {
        if let Some(rest) = name.strip_prefix(prefix) {
            // sda..sdz, then sdaa..: bijective base 26.
            if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_lowercase()) {
                return None;
            }
            return rest
                .bytes()
                .try_fold(0usize, |n, b| Some(n * 26 + usize::from(b - b'a') + 1))
                .map(|n| n - 1);
        }
    }
    if let Some(rest) = name.strip_prefix("nvme") {
        let (n, ns) = rest.split_once('n')?;
        return (ns == "1").then(|| n.parse().ok()).flatten();
    }
    for prefix in ["cciss/c0d", "ida/c0d", "rd/c0d"] {
        if let Some(rest) = name.strip_prefix(prefix) {
            return rest.parse().ok();
        }
    }
    None
}

/// A size with the disk's unit, as a template writes it.
fn size_with_unit(value: &str, unit: &str) -> std::result::Result<String, String> {
    if value == "*" {
        return Ok("*".into());
    }
    let n: f64 = value
        .parse()
        .map_err(|_| format!("`{value}` is neither a number nor `*`"))?;
    let s = match unit {
        "%" | "percent" | "percentage" => format!("{value}%"),
        "s" => format!("{}B", (n * 512.0).round() as u64),
        "TB" | "TiB" | "GB" | "GiB" | "MB" | "MiB" | "kB" | "KiB" | "B" => format!("{value}{unit}"),
        other => {
            return Err(format!(
                "unit_of_measurement `{other}` is not one SystemImager writes"
            ))
        }
    };
    parse_amount(&s)?;
    Ok(s)
}

/// An LVM size as lvcreate reads it: a number with an optional k, m, g, t suffix (binary
/// units), megabytes without one; `*` for the rest of the group.
fn lvm_size(value: &str) -> std::result::Result<String, String> {
    let v = value.trim();
    if v == "*" || v.eq_ignore_ascii_case("100%FREE") {
        return Ok("*".into());
    }
    let (num, unit) = match v.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&v[..i], c.to_ascii_lowercase()),
        _ => (v, 'm'),
    };
    let unit = match unit {
        'k' => "KiB",
        'm' => "MiB",
        'g' => "GiB",
        't' => "TiB",
        other => {
            return Err(format!(
                "unit `{other}` is not one lvcreate reads (k, m, g, t)"
            ))
        }
    };
    let s = format!("{num}{unit}");
    parse_amount(&s)?;
    Ok(s)
}

impl Converter<'_> {
    /// The refusal of `e` (and its attribute `attr`): file, line, element, attribute, why.
    fn refuse(&self, e: Node, attr: Option<&str>, why: impl Display) -> Error {
        let pos = self.doc.text_pos_at(e.range().start);
        let what = match attr {
            Some(a) => format!(
                "<{} {a}=\"{}\">",
                e.tag_name().name(),
                e.attribute(a).unwrap_or_default()
            ),
            None => format!("<{}>", e.tag_name().name()),
        };
        invalid(format!(
            "{}:{}: {what}: {why}; nothing was converted",
            self.origin, pos.row
        ))
    }

    fn disk(&mut self, e: Node) -> Result<()> {
        only(self, e, &["dev", "label_type", "unit_of_measurement"])?;
        let dev = given(e, "dev")
            .ok_or_else(|| self.refuse(e, None, "a <disk> needs dev=\"/dev/sdX\""))?
            .to_string();
        let index = disk_index(&dev).ok_or_else(|| {
            self.refuse(
                e,
                Some("dev"),
                "aurum places disks by their order on the node (sda, sdb... or nvme0n1, nvme1n1...) and cannot tell where this one falls",
            )
        })?;
        if self.disks.iter().any(|d| d.index == index) {
            return Err(self.refuse(e, Some("dev"), "this disk is laid out twice"));
        }
        let label = match given(e, "label_type").unwrap_or("msdos") {
            "msdos" => Label::Msdos,
            "gpt" => Label::Gpt,
            "convert" => return Err(self.refuse(e, Some("label_type"), "converting a table in place keeps the old partitions' data; aurum writes a new table: say msdos or gpt")),
            "none" => return Err(self.refuse(e, Some("label_type"), "SystemImager keeps the partitions already on such a disk; aurum lays out every disk it touches: leave this <disk> out of the layout to keep the disk untouched")),
            _ => return Err(self.refuse(e, Some("label_type"), "the table is msdos or gpt")),
        };
        let unit = given(e, "unit_of_measurement").unwrap_or("MB").to_string();
        let mut disk = DiskOut {
            dev: dev.clone(),
            index,
            label,
            parts: Vec::new(),
        };
        for p in e.children().filter(Node::is_element) {
            if p.tag_name().name() != "part" {
                return Err(self.refuse(p, None, "a <disk> holds <part>s only"));
            }
            let part = self.part(p, &disk, &unit)?;
            disk.parts.push(part);
        }
        if disk.parts.is_empty() {
            return Err(self.refuse(
                e,
                None,
                "the disk has no <part>: leave it out to keep it untouched",
            ));
        }
        self.disks.push(disk);
        Ok(())
    }

    fn part(&mut self, p: Node, disk: &DiskOut, unit: &str) -> Result<PartOut> {
        only(
            self,
            p,
            &[
                "num",
                "size",
                "p_type",
                "id",
                "p_name",
                "flags",
                "raid_dev",
                "lvm_group",
            ],
        )?;
        let num: u32 = given(p, "num")
            .and_then(|n| n.parse().ok())
            .filter(|&n| n > 0)
            .ok_or_else(|| {
                self.refuse(p, Some("num"), "the partition number is a positive integer")
            })?;
        let dev = partition_node(std::path::Path::new(&disk.dev), num)
            .display()
            .to_string();
        if disk.parts.iter().any(|q| q.dev == dev) {
            return Err(self.refuse(p, Some("num"), "two partitions have this number"));
        }
        let size = size_with_unit(given(p, "size").unwrap_or_default(), unit)
            .map_err(|why| self.refuse(p, Some("size"), why))?;
        let role = match given(p, "p_type").unwrap_or("primary") {
            "primary" => Role::Primary,
            "extended" => Role::Extended,
            "logical" => Role::Logical,
            _ => {
                return Err(self.refuse(
                    p,
                    Some("p_type"),
                    "a partition is primary, extended or logical",
                ))
            }
        };
        if disk.label == Label::Gpt && role != Role::Primary {
            return Err(self.refuse(p, Some("p_type"), "a GPT disk has only primary partitions"));
        }
        let mut out = PartOut {
            name: String::new(),
            dev,
            role,
            size,
            kind: PartType::Linux,
            boot: false,
            fs: FsOut::default(),
        };
        out.name = match given(p, "p_name") {
            Some(n)
                if n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                    && !self.all_names().any(|m| m == n) =>
            {
                n.to_string()
            }
            _ => out.dev.rsplit('/').next().unwrap_or_default().to_string(),
        };
        self.flags(p, &mut out)?;
        self.part_id(p, &mut out)?;
        if let Some(md) = given(p, "raid_dev") {
            out.kind = PartType::Raid;
            self.part_raid
                .push((p.id(), out.dev.clone(), md.to_string()));
        }
        if let Some(vg) = given(p, "lvm_group") {
            out.kind = PartType::Lvm;
            self.part_vg.push((p.id(), out.dev.clone(), vg.to_string()));
        }
        Ok(out)
    }

    /// Every name given so far to a partition.
    fn all_names(&self) -> impl Iterator<Item = &str> {
        self.disks
            .iter()
            .flat_map(|d| d.parts.iter().map(|p| p.name.as_str()))
    }

    fn flags(&self, p: Node, out: &mut PartOut) -> Result<()> {
        for f in given(p, "flags")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
        {
            match f {
                "" | "-" => {}
                "boot" => out.boot = true,
                "raid" => out.kind = PartType::Raid,
                "lvm" => out.kind = PartType::Lvm,
                "swap" => out.kind = PartType::Swap,
                "esp" => out.kind = PartType::Efi,
                "bios_grub" => out.kind = PartType::BiosBoot,
                "lba" => {}
                other => {
                    return Err(self.refuse(
                        p,
                        Some("flags"),
                        format!("flag `{other}` has no equivalent in a template (aurum knows boot, raid, lvm, swap, esp, bios_grub and lba)"),
                    ))
                }
            }
        }
        Ok(())
    }

    /// `id`, the MBR partition id SystemImager set with sfdisk.
    fn part_id(&self, p: Node, out: &mut PartOut) -> Result<()> {
        let Some(id) = given(p, "id") else {
            return Ok(());
        };
        let hex = id.trim_start_matches("0x").to_ascii_lowercase();
        out.kind = match (hex.as_str(), out.role) {
            ("5" | "05" | "f" | "0f" | "85", Role::Extended) => return Ok(()),
            ("83", _) => PartType::Linux,
            ("82", _) => PartType::Swap,
            ("fd", _) => PartType::Raid,
            ("8e", _) => PartType::Lvm,
            ("ef", _) => PartType::Efi,
            _ => {
                return Err(self.refuse(
                    p,
                    Some("id"),
                    "aurum sets the ids 83 (linux), 82 (swap), fd (raid), 8e (lvm), ef (EFI) and 5 (extended) only",
                ))
            }
        };
        Ok(())
    }
}

/// The RAID level of `raid_level`, as mdadm numbers it.
fn raid_level(v: &str) -> Option<u8> {
    match v {
        "0" | "raid0" | "stripe" => Some(0),
        "1" | "raid1" | "mirror" => Some(1),
        "4" | "raid4" => Some(4),
        "5" | "raid5" => Some(5),
        "6" | "raid6" => Some(6),
        "10" | "raid10" => Some(10),
        _ => None,
    }
}

/// The array name in /dev/md/: `/dev/md0` -> `md0`, `/dev/md/root` -> `root`.
fn md_name(dev: &str) -> Option<String> {
    let n = dev
        .strip_prefix("/dev/md/")
        .or_else(|| dev.strip_prefix("/dev/"))?;
    (!n.is_empty()
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
    .then(|| n.to_string())
}

impl Converter<'_> {
    /// `<raid>`: one array (SystemImager 4), or a list of `<raid_disk>`s (5).
    fn raid_element(&mut self, e: Node) -> Result<()> {
        let inner: Vec<Node> = e.children().filter(Node::is_element).collect();
        if inner.is_empty() {
            return self.array(e);
        }
        only(self, e, &[])?;
        for r in inner {
            if r.tag_name().name() != "raid_disk" {
                return Err(self.refuse(r, None, "a <raid> list holds <raid_disk>s only"));
            }
            self.array(r)?;
        }
        Ok(())
    }

    fn array(&mut self, r: Node) -> Result<()> {
        only(
            self,
            r,
            &[
                "name",
                "raid_level",
                "raid_devices",
                "spare_devices",
                "rounding",
                "layout",
                "chunk_size",
                "lvm_group",
                "devices",
                "persistence",
            ],
        )?;
        let dev = given(r, "name").unwrap_or_default().to_string();
        let name = md_name(&dev).ok_or_else(|| {
            self.refuse(
                r,
                Some("name"),
                "an array is named /dev/mdN or /dev/md/NAME",
            )
        })?;
        let level = match given(r, "raid_level") {
            Some("linear") => return Err(self.refuse(r, Some("raid_level"), "aurum builds RAID 0, 1, 4, 5, 6 and 10, not linear arrays: use raid0 (striped) or lay the partitions out as an LVM volume group")),
            Some(v) => raid_level(v).ok_or_else(|| self.refuse(r, Some("raid_level"), "not a RAID level"))?,
            None => return Err(self.refuse(r, None, "an array needs raid_level")),
        };
        if given(r, "rounding").is_some() {
            return Err(self.refuse(
                r,
                Some("rounding"),
                "rounding is for linear arrays, which aurum does not build",
            ));
        }
        if given(r, "persistence").is_some_and(|v| v != "yes") {
            return Err(self.refuse(
                r,
                Some("persistence"),
                "aurum's arrays always have a superblock (mdadm metadata 1.2)",
            ));
        }
        let count = |attr: &str| -> Result<Option<usize>> {
            given(r, attr)
                .map(|v| {
                    v.parse()
                        .map_err(|_| self.refuse(r, Some(attr), "a number of devices"))
                })
                .transpose()
        };
        let chunk = given(r, "chunk_size")
            .map(|v| {
                let k = v.trim_end_matches(['K', 'k']);
                k.parse::<u64>()
                    .ok()
                    .filter(|k| k.is_power_of_two())
                    .map(|k| format!("{k}KiB"))
                    .ok_or_else(|| {
                        self.refuse(
                            r,
                            Some("chunk_size"),
                            "the chunk size is a power of 2 in KB",
                        )
                    })
            })
            .transpose()?;
        let members = given(r, "devices")
            .map(|v| v.split_whitespace().map(String::from).collect())
            .unwrap_or_default();
        self.raids.push(RaidOut {
            at: r.id(),
            dev,
            name,
            level,
            members,
            active: count("raid_devices")?,
            spares: count("spare_devices")?,
            chunk,
            layout: given(r, "layout").map(String::from),
            vg: given(r, "lvm_group").map(String::from),
            fs: FsOut::default(),
        });
        Ok(())
    }

    fn lvm(&mut self, e: Node) -> Result<()> {
        only(self, e, &["version"])?;
        if given(e, "version").is_some_and(|v| v != "2") {
            return Err(self.refuse(
                e,
                Some("version"),
                "aurum makes LVM2 volume groups (lvm2 no longer writes LVM1 metadata)",
            ));
        }
        for g in e.children().filter(Node::is_element) {
            if g.tag_name().name() != "lvm_group" {
                return Err(self.refuse(g, None, "<lvm> holds <lvm_group>s only"));
            }
            only(
                self,
                g,
                &["name", "max_log_vols", "max_phys_vols", "phys_extent_size"],
            )?;
            let name = given(g, "name")
                .ok_or_else(|| self.refuse(g, None, "a volume group needs a name"))?
                .to_string();
            for a in ["max_log_vols", "max_phys_vols"] {
                if given(g, a).is_some_and(|v| v != "0") {
                    self.notes.push(format!(
                        "volume group {name}: {a} ignored (LVM2 has no such limit)"
                    ));
                }
            }
            if let Some(pe) = given(g, "phys_extent_size") {
                let bytes = lvm_size(pe)
                    .ok()
                    .and_then(|s| crate::template::size::parse_bytes(&s).ok());
                if bytes != Some(4 * MIB) {
                    return Err(self.refuse(
                        g,
                        Some("phys_extent_size"),
                        "aurum makes volume groups with 4 MiB extents (lvcreate's default)",
                    ));
                }
            }
            let mut vg = VgOut {
                name,
                lvs: Vec::new(),
            };
            for lv in g.children().filter(Node::is_element) {
                if lv.tag_name().name() != "lv" {
                    return Err(self.refuse(lv, None, "<lvm_group> holds <lv>s only"));
                }
                only(self, lv, &["name", "size", "lv_options"])?;
                if given(lv, "lv_options").is_some() {
                    return Err(self.refuse(
                        lv,
                        Some("lv_options"),
                        "aurum makes plain linear logical volumes and takes no lvcreate options",
                    ));
                }
                vg.lvs.push(LvOut {
                    name: given(lv, "name")
                        .ok_or_else(|| self.refuse(lv, None, "a logical volume needs a name"))?
                        .to_string(),
                    size: lvm_size(given(lv, "size").unwrap_or_default())
                        .map_err(|why| self.refuse(lv, Some("size"), why))?,
                    fs: FsOut::default(),
                });
            }
            self.vgs.push(vg);
        }
        Ok(())
    }

    /// The refusal of the element `at` (and its attribute `attr`), once the file is read.
    fn refuse_id(&self, at: NodeId, attr: Option<&str>, why: impl Display) -> Error {
        let e = self.doc.get_node(at).expect("an id of this document");
        self.refuse(e, attr, why)
    }

    /// Ties partitions to their arrays and volume groups (from either side), and gives every
    /// member the partition type it needs.
    fn members(&mut self) -> Result<()> {
        for (at, dev, md) in self.part_raid.clone() {
            let Some(r) = self
                .raids
                .iter_mut()
                .find(|r| r.dev == md || md_name(&md) == Some(r.name.clone()))
            else {
                return Err(self.refuse_id(
                    at,
                    Some("raid_dev"),
                    "the layout has no <raid> of this name",
                ));
            };
            if !r.members.contains(&dev) {
                r.members.push(dev);
            }
        }
        for r in 0..self.raids.len() {
            let (at, members) = (self.raids[r].at, self.raids[r].members.clone());
            if members.is_empty() {
                return Err(self.refuse_id(at, Some("name"), "the array has no devices: list them in devices=, or name it in raid_dev= on its partitions"));
            }
            for m in members {
                let (d, p) = self.find_part(&m).ok_or_else(|| {
                    self.refuse_id(at, Some("devices"), format!("{m} is no partition of the layout (aurum builds arrays of partitions it makes, not of whole disks)"))
                })?;
                self.disks[d].parts[p].kind = PartType::Raid;
            }
            let raid = &self.raids[r];
            let n = raid.members.len();
            let spares = raid.spares.unwrap_or(0);
            let active = raid.active.unwrap_or(n.saturating_sub(spares));
            if active + spares != n {
                return Err(self.refuse_id(at, Some("raid_devices"), format!(
                    "raid_devices and spare_devices say {active} + {spares} devices, and the array has {n}"
                )));
            }
            self.raids[r].active = Some(active);
        }
        for (at, _, vg) in &self.part_vg {
            if !self.vgs.iter().any(|g| &g.name == vg) {
                return Err(self.refuse_id(
                    *at,
                    Some("lvm_group"),
                    "<lvm> has no <lvm_group> of this name",
                ));
            }
        }
        for r in &self.raids {
            if let Some(vg) = &r.vg {
                if !self.vgs.iter().any(|g| &g.name == vg) {
                    return Err(self.refuse_id(
                        r.at,
                        Some("lvm_group"),
                        "<lvm> has no <lvm_group> of this name",
                    ));
                }
            }
        }
        Ok(())
    }

    fn find_part(&self, dev: &str) -> Option<(usize, usize)> {
        self.disks
            .iter()
            .enumerate()
            .find_map(|(d, disk)| disk.parts.iter().position(|p| p.dev == dev).map(|p| (d, p)))
    }

    /// What a `real_dev` names: a partition, an array, or a logical volume.
    fn target(&self, dev: &str) -> Option<Target> {
        if let Some((d, p)) = self.find_part(dev) {
            return Some(Target::Part(d, p));
        }
        if let Some(r) = self
            .raids
            .iter()
            .position(|r| r.dev == dev || md_name(dev).is_some_and(|n| n == r.name))
        {
            return Some(Target::Raid(r));
        }
        for (g, vg) in self.vgs.iter().enumerate() {
            for (l, lv) in vg.lvs.iter().enumerate() {
                let mapper = format!(
                    "/dev/mapper/{}-{}",
                    vg.name.replace('-', "--"),
                    lv.name.replace('-', "--")
                );
                if dev == format!("/dev/{}/{}", vg.name, lv.name) || dev == mapper {
                    return Some(Target::Lv(g, l));
                }
            }
        }
        None
    }
}

/// fstab types that are no disk filesystem: systemd mounts them without an fstab line.
const PSEUDO: &[&str] = &[
    "proc",
    "sysfs",
    "devpts",
    "usbfs",
    "devfs",
    "securityfs",
    "debugfs",
    "configfs",
    "cgroup",
    "cgroup2",
    "binfmt_misc",
    "fusectl",
    "mqueue",
    "hugetlbfs",
    "efivarfs",
    "pstore",
    "tracefs",
    "rpc_pipefs",
];

/// `key = "value"` with TOML quoting.
fn kv(out: &mut String, key: &str, value: &str) {
    out.push_str(&format!("{key} = {}\n", toml::Value::String(value.into())));
}

fn write_fs(out: &mut String, fs: &FsOut, write_type: bool) {
    if let Some(f) = fs.fs.filter(|_| write_type) {
        kv(out, "fs", f.name());
    }
    for (k, v) in [
        ("label", &fs.label),
        ("mkfs-options", &fs.mkfs_options),
        ("mount", &fs.mount),
        ("mount-options", &fs.mount_options),
    ] {
        if let Some(v) = v {
            kv(out, k, v);
        }
    }
}

impl Converter<'_> {
    fn fsinfo(&mut self, e: Node) -> Result<()> {
        only(
            self,
            e,
            &[
                "line",
                "comment",
                "real_dev",
                "mount_dev",
                "mp",
                "fs",
                "mkfs_opts",
                "options",
                "dump",
                "pass",
                "format",
            ],
        )?;
        // A line with only a comment is a comment of the old fstab.
        let Some(real) = given(e, "real_dev") else {
            return Ok(());
        };
        let fs = given(e, "fs").unwrap_or_default();
        let mp = given(e, "mp").unwrap_or_default();
        if PSEUDO.contains(&fs) || (fs == "tmpfs" && mp == "/dev/shm") {
            self.notes.push(format!(
                "fstab line for {mp} ({fs}) dropped: systemd mounts it without one"
            ));
            return Ok(());
        }
        if !real.starts_with("/dev/") {
            return Err(self.refuse(e, Some("real_dev"), format!("aurum writes /etc/fstab from the template, which holds the filesystems it makes; {fs} at {mp} is none: mount it from a post-install hook or the image's own configuration")));
        }
        let noauto = given(e, "options").is_some_and(|o| o.split(',').any(|x| x == "noauto"));
        if noauto && self.target(real).is_none() {
            self.notes.push(format!(
                "fstab line for {real} at {mp} dropped: a device outside the layout mounted by hand (noauto), such as a floppy or CD drive; a post-install hook can add it to /etc/fstab"
            ));
            return Ok(());
        }
        if given(e, "format").is_some_and(|v| v.eq_ignore_ascii_case("no")) {
            return Err(self.refuse(e, Some("format"), "aurum makes every filesystem it mounts on a fresh install; keeping an old one is not in a template"));
        }
        let target = self.target(real).ok_or_else(|| {
            self.refuse(
                e,
                Some("real_dev"),
                "no partition, array or logical volume of the layout is this device",
            )
        })?;
        let fs = match fs {
            "msdos" | "fat" => return Err(self.refuse(
                e,
                Some("fs"),
                "aurum makes vfat (FAT with long names), not msdos: say fs=\"vfat\" if that serves",
            )),
            other => Fs::ALL
                .into_iter()
                .find(|f| f.name() == other)
                .ok_or_else(|| {
                    self.refuse(
                        e,
                        Some("fs"),
                        "aurum makes ext2, ext3, ext4, xfs, vfat, btrfs and swap",
                    )
                })?,
        };
        let mount = match fs {
            Fs::Swap => None,
            _ if mp.starts_with('/') => Some(mp.to_string()),
            _ => {
                return Err(self.refuse(
                    e,
                    Some("mp"),
                    "a filesystem's mount point is an absolute path",
                ))
            }
        };
        let mut out = FsOut {
            fs: Some(fs),
            mount,
            mkfs_options: given(e, "mkfs_opts").map(String::from),
            mount_options: given(e, "options")
                .filter(|o| !matches!(*o, "defaults" | "default") && fs != Fs::Swap)
                .map(String::from),
            label: None,
        };
        match given(e, "mount_dev") {
            Some(m) if m.starts_with("LABEL=") => out.label = Some(m["LABEL=".len()..].to_string()),
            Some(m) if m.starts_with("UUID=") => self.notes.push(format!(
                "{real}: {m} not kept: the new filesystem gets a new UUID, which /etc/fstab names"
            )),
            _ => {}
        }
        if given(e, "dump").is_some_and(|d| d != "0") {
            self.dumped.push(real.to_string());
        }
        let taken = |f: &FsOut| f.fs.is_some();
        let slot = match target {
            Target::Part(d, p) => {
                let part = &mut self.disks[d].parts[p];
                match (part.kind, fs) {
                    (PartType::Raid | PartType::Lvm, _) => return Err(self.refuse(e, Some("real_dev"), "this partition is a RAID member or an LVM physical volume, which holds no filesystem of its own")),
                    (PartType::Efi, f) if f != Fs::Vfat => return Err(self.refuse(e, Some("fs"), "an EFI system partition is vfat")),
                    (PartType::Linux, Fs::Swap) => part.kind = PartType::Swap,
                    (PartType::Swap, f) if f != Fs::Swap => return Err(self.refuse(e, Some("fs"), "the partition is flagged swap")),
                    _ => {}
                }
                if part.role == Role::Extended {
                    return Err(self.refuse(
                        e,
                        Some("real_dev"),
                        "the extended partition holds logical partitions, not a filesystem",
                    ));
                }
                &mut self.disks[d].parts[p].fs
            }
            Target::Raid(r) => &mut self.raids[r].fs,
            Target::Lv(g, l) => &mut self.vgs[g].lvs[l].fs,
        };
        if taken(slot) {
            return Err(self.refuse(e, Some("real_dev"), "a second <fsinfo> for the same device"));
        }
        *slot = out;
        Ok(())
    }

    fn bootloader(&mut self, e: Node) -> Result<()> {
        only(
            self,
            e,
            &["flavor", "install_type", "default_entry", "timeout"],
        )?;
        match given(e, "flavor") {
            Some("grub2") => {}
            Some("grub") => return Err(self.refuse(e, Some("flavor"), "aurum's bootloader hook installs GRUB 2 from the image; GRUB legacy (0.97) is not installed")),
            _ => return Err(self.refuse(e, Some("flavor"), "aurum's bootloader hook installs GRUB 2 only")),
        }
        let efi = match given(e, "install_type") {
            Some("legacy") => false,
            Some("efi") => true,
            _ => return Err(self.refuse(e, Some("install_type"), "legacy (BIOS) or efi")),
        };
        if given(e, "default_entry").is_some() || given(e, "timeout").is_some() {
            self.notes.push("bootloader default_entry and timeout not kept: GRUB's menu comes from the image's /etc/default/grub".into());
        }
        let targets: Vec<Node> = e.children().filter(Node::is_element).collect();
        for (i, t) in targets.iter().enumerate() {
            only(self, *t, &["dev", "path"])?;
            if t.tag_name().name() != "target" {
                return Err(self.refuse(*t, None, "<bootloader> holds <target>s only"));
            }
            if i > 0 {
                return Err(self.refuse(*t, None, "aurum's bootloader hook installs GRUB once, on the node's first disk (or its ESP)"));
            }
            let dev = given(*t, "dev").unwrap_or_default();
            if !efi && disk_index(dev) != Some(0) {
                return Err(self.refuse(*t, Some("dev"), "aurum's bootloader hook installs GRUB on the node's first disk (sda, vda, nvme0n1), not on a partition or another disk"));
            }
        }
        let first = self.disks.iter().find(|d| d.index == 0);
        if efi {
            let esp = self
                .disks
                .iter_mut()
                .flat_map(|d| d.parts.iter_mut())
                .find(|p| {
                    p.kind == PartType::Efi
                        || (p.fs.fs == Some(Fs::Vfat) && p.fs.mount.as_deref() == Some("/boot/efi"))
                });
            match esp {
                Some(p) if p.fs.mount.as_deref() == Some("/boot/efi") => p.kind = PartType::Efi,
                _ => return Err(self.refuse(e, Some("install_type"), "an EFI install needs an EFI system partition mounted at /boot/efi (flags esp, fs vfat), where aurum's bootloader hook puts GRUB")),
            }
        } else if first.is_some_and(|d| {
            d.label == Label::Gpt && !d.parts.iter().any(|p| p.kind == PartType::BiosBoot)
        }) {
            return Err(self.refuse(e, Some("install_type"), "GRUB on a GPT disk booted by BIOS needs a bios-boot partition (flags bios_grub) on the first disk"));
        }
        let fw = if efi { "uefi" } else { "bios" };
        if self.firmware.is_some_and(|f| f != fw) {
            return Err(self.refuse(
                e,
                Some("install_type"),
                "a second bootloader for other firmware: a template is for one kind of machine",
            ));
        }
        self.firmware = Some(fw);
        Ok(())
    }

    /// The template's text.
    fn write(&mut self) -> String {
        let mut out = format!(
            "# Converted by `aurum template import-si` from {}.\n",
            self.origin
        );
        self.disks.sort_by_key(|d| d.index);
        let last = self.disks.last().map_or(0, |d| d.index);
        let names: Vec<String> = (0..=last)
            .map(|i| match self.disks.iter().find(|d| d.index == i) {
                Some(d) => format!("disk {} = {}", i + 1, d.dev),
                None => format!("disk {} untouched", i + 1),
            })
            .collect();
        out += &format!("# {}\n", names.join(", "));
        for n in &self.notes {
            out += &format!("# note: {n}\n");
        }
        kv(
            &mut out,
            "description",
            &format!("SystemImager layout from {}", self.origin),
        );
        if let Some(fw) = self.firmware {
            out += "\n[match]\n";
            kv(&mut out, "firmware", fw);
        }
        for i in 0..=last {
            out += "\n[[disk]]\n";
            let Some(d) = self.disks.iter().find(|d| d.index == i) else {
                out += "untouched = true\n";
                continue;
            };
            kv(&mut out, "label", d.label.name());
            // Logical partitions right after the extended one, each list in file order.
            let mut parts: Vec<&PartOut> =
                d.parts.iter().filter(|p| p.role != Role::Logical).collect();
            if let Some(x) = parts.iter().position(|p| p.role == Role::Extended) {
                let logical: Vec<&PartOut> =
                    d.parts.iter().filter(|p| p.role == Role::Logical).collect();
                parts.splice(x + 1..x + 1, logical);
            }
            for p in parts {
                out += "\n[[disk.partition]]\n";
                kv(&mut out, "name", &p.name);
                if p.kind != PartType::Linux {
                    kv(&mut out, "type", p.kind.name());
                }
                if d.label == Label::Msdos && p.role != Role::Primary {
                    kv(
                        &mut out,
                        "role",
                        if p.role == Role::Extended {
                            "extended"
                        } else {
                            "logical"
                        },
                    );
                }
                kv(&mut out, "size", &p.size);
                if p.boot {
                    out += "boot = true\n";
                }
                write_fs(&mut out, &p.fs, p.kind != PartType::Swap);
            }
        }
        self.write_arrays(&mut out);
        out
    }

    fn write_arrays(&self, out: &mut String) {
        let name_of = |dev: &str| {
            self.find_part(dev)
                .map(|(d, p)| self.disks[d].parts[p].name.clone())
                .unwrap_or_else(|| dev.to_string())
        };
        let list = |v: Vec<String>| {
            toml::Value::Array(v.into_iter().map(toml::Value::String).collect()).to_string()
        };
        for r in &self.raids {
            let active = r.active.unwrap_or(r.members.len());
            out.push_str("\n[[raid]]\n");
            kv(out, "name", &r.name);
            out.push_str(&format!("level = {}\n", r.level));
            out.push_str(&format!(
                "devices = {}\n",
                list(r.members[..active].iter().map(|m| name_of(m)).collect())
            ));
            if active < r.members.len() {
                out.push_str(&format!(
                    "spares = {}\n",
                    list(r.members[active..].iter().map(|m| name_of(m)).collect())
                ));
            }
            if let Some(c) = &r.chunk {
                kv(out, "chunk", c);
            }
            if let Some(l) = &r.layout {
                kv(out, "layout", l);
            }
            write_fs(out, &r.fs, true);
        }
        for g in &self.vgs {
            let mut pvs: Vec<String> = self
                .part_vg
                .iter()
                .filter(|(_, _, vg)| vg == &g.name)
                .map(|(_, dev, _)| name_of(dev))
                .collect();
            pvs.extend(
                self.raids
                    .iter()
                    .filter(|r| r.vg.as_deref() == Some(&g.name))
                    .map(|r| r.name.clone()),
            );
            out.push_str("\n[[lvm]]\n");
            kv(out, "name", &g.name);
            out.push_str(&format!("devices = {}\n", list(pvs)));
            for lv in &g.lvs {
                out.push_str("\n[[lvm.volume]]\n");
                kv(out, "name", &lv.name);
                kv(out, "size", &lv.size);
                write_fs(out, &lv.fs, true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::render;

    /// A layout using most of the format: two msdos disks, an extended partition with logical
    /// ones, a RAID1 across the disks, LVM on a partition, fstab lines, GRUB for BIOS.
    const BASE: &str = r#"<config>
  <disk dev="/dev/sda" label_type="msdos" unit_of_measurement="MB">
    <part num="1" size="512" p_type="primary" p_name="-" flags="boot" />
    <part num="2" size="*" p_type="extended" p_name="-" flags="-" />
    <part num="5" size="4096" p_type="logical" p_name="-" flags="raid" />
    <part num="6" size="*" p_type="logical" p_name="-" flags="-" />
  </disk>
  <disk dev="/dev/sdb" label_type="msdos" unit_of_measurement="MB">
    <part num="1" size="4096" p_type="primary" p_name="-" flags="raid" />
    <part num="2" size="2048" p_type="primary" p_name="-" flags="lvm" lvm_group="vg0" />
    <part num="3" size="*" p_type="primary" p_name="-" flags="-" />
  </disk>
  <raid name="/dev/md0" raid_level="raid1" raid_devices="2" spare_devices="0" rounding="" layout="" chunk_size="" lvm_group="" devices="/dev/sda5 /dev/sdb1" />
  <lvm version="2">
    <lvm_group name="vg0" max_log_vols="0" max_phys_vols="0" phys_extent_size="4096K">
      <lv name="var" size="1G" lv_options="" />
      <lv name="log" size="*" />
    </lvm_group>
  </lvm>
  <fsinfo line="10" real_dev="/dev/md0" mount_dev="LABEL=root" mp="/" fs="ext3" options="errors=remount-ro" dump="1" pass="1" />
  <fsinfo line="20" real_dev="/dev/sda1" mp="/boot" fs="ext2" options="defaults" dump="1" pass="2" />
  <fsinfo line="30" real_dev="/dev/sda6" mp="/scratch" fs="xfs" mkfs_opts="-f" options="noatime" dump="0" pass="2" />
  <fsinfo line="40" real_dev="/dev/sdb3" mp="/data" fs="ext4" options="defaults" dump="0" pass="2" />
  <fsinfo line="50" real_dev="/dev/vg0/var" mp="/var" fs="ext4" options="defaults" dump="0" pass="2" />
  <fsinfo line="60" real_dev="/dev/mapper/vg0-log" mp="/var/log" fs="xfs" options="defaults" dump="0" pass="2" />
  <fsinfo line="70" real_dev="proc" mp="/proc" fs="proc" options="defaults" dump="0" pass="0" />
  <fsinfo line="80" real_dev="/dev/fd0" mp="/media/floppy" fs="auto" options="noauto,owner,kudzu" dump="0" pass="0" format="no" />
  <bootloader flavor="grub2" install_type="legacy" default_entry="0" timeout="5">
    <target dev="/dev/sda" />
  </bootloader>
  <boel devstyle="udev"/>
</config>"#;

    fn class() -> ClassName {
        ClassName::new("si").unwrap()
    }

    fn conv(xml: &str) -> Result<Conversion> {
        convert(xml, "layout.xml", &class())
    }

    fn plan(text: &str, sizes: &[u64]) -> render::Plan {
        let t = Template::parse(&class(), "si.toml", text).unwrap();
        render(&t, sizes).unwrap()
    }

    #[test]
    fn msdos_extended_logical_raid_lvm_fsinfo_and_bootloader_convert() {
        let c = conv(BASE).unwrap();
        let p = plan(&c.text, &[20 << 30, 20 << 30]);
        let a = &p.disks[0];
        assert_eq!(a.label, Label::Msdos);
        fn row(d: &render::DiskPlan) -> Vec<(u32, Option<Role>, PartType, Option<&str>)> {
            d.partitions
                .iter()
                .map(|q| (q.number, q.role, q.kind, q.fs.mount.as_deref()))
                .collect()
        }
        use PartType::*;
        assert_eq!(
            row(a),
            [
                (1, Some(Role::Primary), Linux, Some("/boot")),
                (2, Some(Role::Extended), Linux, None),
                (5, Some(Role::Logical), Raid, None),
                (6, Some(Role::Logical), Linux, Some("/scratch")),
            ]
        );
        assert!(a.partitions[0].boot);
        assert_eq!(a.partitions[0].size, 512_000_000u64.div_ceil(MIB) * MIB);
        assert_eq!(a.partitions[0].fs.fs, Some(Fs::Ext2));
        assert_eq!(a.partitions[3].fs.mount_options.as_deref(), Some("noatime"));
        assert_eq!(a.partitions[3].fs.mkfs_options.as_deref(), Some("-f"));
        assert_eq!(row(&p.disks[1])[1].2, Lvm);
        let r = &p.raids[0];
        assert_eq!(
            (r.name.as_str(), r.level, r.members.as_slice()),
            ("md0", 1, &[(0, 5), (1, 1)][..])
        );
        assert_eq!(
            (r.fs.fs, r.fs.label.as_deref()),
            (Some(Fs::Ext3), Some("root"))
        );
        assert_eq!(r.fs.mount_options.as_deref(), Some("errors=remount-ro"));
        let g = &p.volume_groups[0];
        assert_eq!(g.devices, ["sdb2"]);
        assert_eq!(g.volumes[0].size, 1 << 30);
        assert_eq!(g.volumes[1].fs.mount.as_deref(), Some("/var/log"));
        assert!(
            c.text.contains("[match]\nfirmware = \"bios\""),
            "{}",
            c.text
        );
        assert!(
            c.notes
                .iter()
                .any(|n| n.contains("/dev/fd0 at /media/floppy dropped")),
            "{:?}",
            c.notes
        );
        assert!(
            c.notes.iter().any(|n| n.contains("/proc (proc) dropped")),
            "{:?}",
            c.notes
        );
        assert!(
            c.notes.iter().any(|n| n.contains("dump numbers")),
            "{:?}",
            c.notes
        );
        assert!(
            c.notes.iter().any(|n| n.contains("<boel>")),
            "{:?}",
            c.notes
        );
    }

    #[test]
    fn units_percent_sectors_and_gigabytes() {
        let xml = |unit: &str, a: &str| {
            format!(
                r#"<config><disk dev="/dev/vda" label_type="gpt" unit_of_measurement="{unit}">
              <part num="1" size="{a}" p_type="primary" /><part num="2" size="*" p_type="primary" /></disk>
              <fsinfo real_dev="/dev/vda2" mp="/" fs="ext4" dump="0" pass="1" /></config>"#
            )
        };
        for (unit, a, want) in [
            ("%", "25", 25u64 << 30),
            ("percentage", "25", 25 << 30),
            ("s", "2048", MIB),
            ("GB", "2", 2_000_000_000u64.div_ceil(MIB) * MIB),
            ("GiB", "2", 2 << 30),
        ] {
            let c = conv(&xml(unit, a)).unwrap();
            let p = plan(&c.text, &[100 << 30]);
            assert_eq!(p.disks[0].partitions[0].size, want, "{unit}: {}", c.text);
            assert!(p.disks[0].partitions[1].rest);
        }
    }

    #[test]
    fn a_disk_the_layout_skips_is_left_untouched() {
        let xml = r#"<config><disk dev="/dev/sdc" label_type="gpt" unit_of_measurement="MB">
            <part num="1" size="*" p_type="primary" /></disk>
            <fsinfo real_dev="/dev/sdc1" mp="/" fs="ext4" dump="0" pass="1" /></config>"#;
        let c = conv(xml).unwrap();
        let p = plan(&c.text, &[1 << 30, 1 << 30, 10 << 30]);
        assert!(p.disks[0].untouched && p.disks[1].untouched && !p.disks[2].untouched);
        assert!(c
            .text
            .contains("disk 1 untouched, disk 2 untouched, disk 3 = /dev/sdc"));
    }

    #[test]
    fn raid_levels_spares_chunk_layout_and_nested_raid_disks() {
        let xml = r#"<config><disk dev="/dev/sda" label_type="gpt" unit_of_measurement="MB">
            <part num="1" size="1" p_type="primary" flags="bios_grub" />
            <part num="2" size="*" p_type="primary" flags="raid" /></disk>
            <disk dev="/dev/sdb" label_type="gpt" unit_of_measurement="MB"><part num="1" size="*" p_type="primary" raid_dev="/dev/md/data" /></disk>
            <disk dev="/dev/sdc" label_type="gpt" unit_of_measurement="MB"><part num="1" size="*" p_type="primary" raid_dev="/dev/md/data" /></disk>
            <disk dev="/dev/sdd" label_type="gpt" unit_of_measurement="MB"><part num="1" size="*" p_type="primary" raid_dev="/dev/md/data" /></disk>
            <raid><raid_disk name="/dev/md/data" raid_level="raid5" raid_devices="3" spare_devices="1" chunk_size="128" layout="left-asymmetric" devices="/dev/sda2" /></raid>
            <fsinfo real_dev="/dev/md/data" mp="/" fs="xfs" dump="0" pass="1" />
            <bootloader flavor="grub2" install_type="legacy"><target dev="/dev/sda" /></bootloader></config>"#;
        let c = conv(xml).unwrap();
        let p = plan(&c.text, &[10 << 30; 4]);
        let r = &p.raids[0];
        assert_eq!(r.level, 5);
        assert_eq!(r.members, [(0, 2), (1, 1), (2, 1)]);
        assert_eq!(r.spares, [(3, 1)]);
        assert_eq!(r.chunk, Some(128 << 10));
        assert_eq!(r.layout.as_deref(), Some("left-asymmetric"));
        assert_eq!(r.size, 2 * p.disks[0].partitions[1].size);
        assert_eq!(p.disks[0].partitions[0].kind, PartType::BiosBoot);
        for (level, n, want) in [
            ("0", 2, 0),
            ("stripe", 2, 0),
            ("mirror", 2, 1),
            ("raid6", 4, 6),
            ("10", 2, 10),
            ("raid4", 3, 4),
        ] {
            let disks: String = (0..n)
                .map(|i| format!(r#"<disk dev="/dev/sd{}" label_type="msdos" unit_of_measurement="MB"><part num="1" size="*" p_type="primary" flags="raid" /></disk>"#, (b'a' + i) as char))
                .collect();
            let devs: Vec<String> = (0..n)
                .map(|i| format!("/dev/sd{}1", (b'a' + i) as char))
                .collect();
            let x = format!(
                r#"<config>{disks}<raid name="/dev/md0" raid_level="{level}" devices="{}" /><fsinfo real_dev="/dev/md0" mp="/" fs="ext4" dump="0" pass="1" /></config>"#,
                devs.join(" ")
            );
            let c = conv(&x).unwrap_or_else(|e| panic!("{level}: {e}"));
            assert_eq!(
                plan(&c.text, &vec![1 << 30; n as usize]).raids[0].level,
                want
            );
        }
    }

    #[test]
    fn efi_bootloader_needs_and_marks_the_esp() {
        let xml = r#"<config><disk dev="/dev/nvme0n1" label_type="gpt" unit_of_measurement="MiB">
            <part num="1" size="512" p_type="primary" /><part num="2" size="*" p_type="primary" /></disk>
            <fsinfo real_dev="/dev/nvme0n1p1" mp="/boot/efi" fs="vfat" mkfs_opts="-F 32" dump="0" pass="2" />
            <fsinfo real_dev="/dev/nvme0n1p2" mp="/" fs="ext4" dump="0" pass="1" />
            <bootloader flavor="grub2" install_type="efi"><target dev="/dev/nvme0n1" path="/boot/efi" /></bootloader></config>"#;
        let c = conv(xml).unwrap();
        let p = plan(&c.text, &[10 << 30]);
        assert_eq!(p.disks[0].partitions[0].kind, PartType::Efi);
        assert!(c.text.contains("firmware = \"uefi\""));
        let e = conv(&xml.replace("/boot/efi\" fs", "/efi\" fs"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("<bootloader install_type=\"efi\">")
                && e.contains("EFI system partition mounted at /boot/efi"),
            "{e}"
        );
    }

    /// Every refusal names the file, the line, the element, the attribute and the reason.
    #[test]
    fn a_partition_naming_a_missing_array_or_volume_group_is_refused_at_its_line() {
        let x = BASE.replacen(
            r#"flags="raid" />"#,
            r#"flags="raid" raid_dev="/dev/md7" />"#,
            1,
        );
        let e = conv(&x).unwrap_err().to_string();
        assert!(
            e.starts_with(r#"layout.xml:5: <part raid_dev="/dev/md7">: the layout has no <raid>"#),
            "{e}"
        );
        let x = BASE.replace(r#"lvm_group="vg0" />"#, r#"lvm_group="vg1" />"#);
        let e = conv(&x).unwrap_err().to_string();
        assert!(
            e.starts_with(r#"layout.xml:10: <part lvm_group="vg1">: <lvm> has no"#),
            "{e}"
        );
        let x = BASE.replace(r#"devices="/dev/sda5 /dev/sdb1" "#, "");
        let e = conv(&x).unwrap_err().to_string();
        assert!(
            e.starts_with(r#"layout.xml:13: <raid name="/dev/md0">: the array has no devices"#),
            "{e}"
        );
    }

    /// Each case: BASE with `from` replaced by `to` is refused with every text of `want`.
    fn refused(cases: &[(&str, &str, &[&str])]) {
        for (from, to, want) in cases {
            assert!(BASE.contains(from), "case {to}: BASE lacks {from}");
            let e = conv(&BASE.replacen(from, to, 1)).unwrap_err().to_string();
            for w in *want {
                assert!(e.contains(w), "{to}: `{w}` not in: {e}");
            }
            assert!(e.starts_with("layout.xml"), "{e}");
        }
    }

    #[test]
    fn disks_and_partitions_a_template_cannot_say_are_refused_by_element_attribute_and_reason() {
        refused(&[
            (
                r#"<disk dev="/dev/sdb" label_type="msdos""#,
                r#"<disk label_type="msdos""#,
                &["<disk>", "needs dev="],
            ),
            (
                r#"<part num="3" size="*" p_type="primary" p_name="-" flags="-" />"#,
                r#"<part num="3" size="*" p_type="primary" /><partition />"#,
                &["<partition>", "holds <part>s only"],
            ),
            (
                "  <raid name=",
                r#"<disk dev="/dev/sdc" label_type="msdos" unit_of_measurement="MB"></disk><raid name="#,
                &["<disk>", "has no <part>"],
            ),
            (
                r#"num="3" size="*""#,
                r#"num="x" size="*""#,
                &[r#"<part num="x">"#, "positive integer"],
            ),
            (
                r#"num="3" size="*""#,
                r#"num="2" size="*""#,
                &[r#"<part num="2">"#, "two partitions have this number"],
            ),
            (
                r#"p_type="primary" p_name="-" flags="boot""#,
                r#"p_type="first" p_name="-" flags="boot""#,
                &[r#"<part p_type="first">"#, "primary, extended or logical"],
            ),
            (
                r#"flags="boot" />"#,
                r#"flags="esp" />"#,
                &[r#"<fsinfo fs="ext2">"#, "EFI system partition is vfat"],
            ),
            (
                r#"<part num="3" size="*" p_type="primary" p_name="-" flags="-" />"#,
                r#"<part num="3" size="*" p_type="primary" p_name="-" flags="swap" />"#,
                &[r#"<fsinfo fs="ext4">"#, "flagged swap"],
            ),
            (
                r#"real_dev="/dev/sdb3""#,
                r#"real_dev="/dev/sda2""#,
                &[
                    r#"<fsinfo real_dev="/dev/sda2">"#,
                    "the extended partition holds",
                ],
            ),
            (
                r#"label_type="msdos" unit_of_measurement="MB">
    <part num="1" size="512""#,
                r#"label_type="convert" unit_of_measurement="MB">
    <part num="1" size="512""#,
                &[
                    "layout.xml:2:",
                    r#"<disk label_type="convert">"#,
                    "writes a new table",
                ],
            ),
            (
                r#"<disk dev="/dev/sdb" label_type="msdos""#,
                r#"<disk dev="/dev/sdb" label_type="none""#,
                &[r#"<disk label_type="none">"#, "leave this <disk> out"],
            ),
            (
                r#"<disk dev="/dev/sdb""#,
                r#"<disk dev="/dev/disk/by-id/wwn-0x5000""#,
                &[
                    r#"<disk dev="/dev/disk/by-id/wwn-0x5000">"#,
                    "cannot tell where",
                ],
            ),
            (
                "<disk dev=\"/dev/sdb\"",
                "<disk dev=\"/dev/sda\"",
                &["laid out twice"],
            ),
            (
                r#"flags="boot" />"#,
                r#"flags="boot" cyl="3" />"#,
                &[r#"<part cyl="3">"#, "does not know this attribute"],
            ),
            (
                r#"flags="boot" />"#,
                r#"flags="boot,hidden" />"#,
                &[r#"<part flags="boot,hidden">"#, "flag `hidden`"],
            ),
            (
                r#"flags="boot" />"#,
                r#"flags="boot" id="7" />"#,
                &[r#"<part id="7">"#, "aurum sets the ids"],
            ),
            (
                r#"num="3" size="*""#,
                r#"num="3" size="lots""#,
                &[r#"<part size="lots">"#, "neither a number nor `*`"],
            ),
            (
                r#"num="3" size="*""#,
                r#"num="3" size="0""#,
                &[r#"<part size="0">"#, "zero"],
            ),
            (
                r#"unit_of_measurement="MB">
    <part num="1" size="4096""#,
                r#"unit_of_measurement="cyl">
    <part num="1" size="4096""#,
                &[r#"<part size="4096">"#, "unit_of_measurement `cyl`"],
            ),
        ]);
    }

    #[test]
    fn arrays_and_volume_groups_a_template_cannot_say_are_refused() {
        refused(&[
            (
                r#"name="/dev/md0""#,
                r#"name="md0""#,
                &[r#"<raid name="md0">"#, "/dev/mdN or /dev/md/NAME"],
            ),
            (
                r#"raid_level="raid1" "#,
                "",
                &["<raid>", "needs raid_level"],
            ),
            (
                r#"raid_level="raid1""#,
                r#"raid_level="raid7""#,
                &[r#"<raid raid_level="raid7">"#, "not a RAID level"],
            ),
            (
                r#"rounding="""#,
                r#"rounding="" persistence="no""#,
                &[r#"<raid persistence="no">"#, "superblock"],
            ),
            (
                r#"chunk_size="""#,
                r#"chunk_size="100""#,
                &[r#"<raid chunk_size="100">"#, "power of 2"],
            ),
            (
                r#"raid_devices="2""#,
                r#"raid_devices="two""#,
                &[r#"<raid raid_devices="two">"#, "a number of devices"],
            ),
            (
                "  <lvm version=",
                "<raid><bogus /></raid><lvm version=",
                &["<bogus>", "holds <raid_disk>s only"],
            ),
            (
                r#"<lvm_group name="vg0" "#,
                "<lvm_group ",
                &["<lvm_group>", "needs a name"],
            ),
            (
                r#"<lvm version="2">"#,
                r#"<lvm version="2"><lv name="x" size="1G" />"#,
                &["<lv>", "holds <lvm_group>s only"],
            ),
            (
                r#"<lv name="var" size="1G""#,
                r#"<lv size="1G""#,
                &["<lv>", "needs a name"],
            ),
            (
                r#"<lv name="var" size="1G""#,
                r#"<lv name="var" size="1Q""#,
                &[r#"<lv size="1Q">"#, "unit `q`"],
            ),
            (
                r#"<lv name="log" size="*" />"#,
                r#"<lv name="log" size="*" /><pv />"#,
                &["<pv>", "holds <lv>s only"],
            ),
            (
                r#"flavor="grub2""#,
                r#"flavor="rEFInd""#,
                &[r#"<bootloader flavor="rEFInd">"#, "GRUB 2 only"],
            ),
            (
                r#"install_type="legacy""#,
                r#"install_type="uefi""#,
                &[
                    r#"<bootloader install_type="uefi">"#,
                    "legacy (BIOS) or efi",
                ],
            ),
            (
                r#"<target dev="/dev/sda" />"#,
                r#"<device dev="/dev/sda" />"#,
                &["<device>", "holds <target>s only"],
            ),
            (
                r#"raid_level="raid1""#,
                r#"raid_level="linear""#,
                &[r#"<raid raid_level="linear">"#, "not linear arrays"],
            ),
            (
                r#"rounding="""#,
                r#"rounding="64""#,
                &[r#"<raid rounding="64">"#, "linear arrays"],
            ),
            (
                "/dev/sda5 /dev/sdb1",
                "/dev/sda5 /dev/sdc",
                &[
                    r#"<raid devices="/dev/sda5 /dev/sdc">"#,
                    "/dev/sdc is no partition",
                    "not of whole disks",
                ],
            ),
            (
                r#"raid_devices="2""#,
                r#"raid_devices="3""#,
                &[
                    r#"<raid raid_devices="3">"#,
                    "say 3 + 0 devices, and the array has 2",
                ],
            ),
            (
                r#"lvm_group="" devices"#,
                r#"lvm_group="vg9" devices"#,
                &[r#"<raid lvm_group="vg9">"#, "no <lvm_group> of this name"],
            ),
            (
                r#"<lvm version="2">"#,
                r#"<lvm version="1">"#,
                &[r#"<lvm version="1">"#, "LVM2"],
            ),
            (
                r#"phys_extent_size="4096K""#,
                r#"phys_extent_size="32M""#,
                &[r#"<lvm_group phys_extent_size="32M">"#, "4 MiB extents"],
            ),
            (
                r#"lv_options="""#,
                r#"lv_options="-i 2""#,
                &[r#"<lv lv_options="-i 2">"#, "no lvcreate options"],
            ),
        ]);
    }

    #[test]
    fn filesystems_and_bootloaders_a_template_cannot_say_are_refused() {
        refused(&[
            (
                r#"mp="/data" fs="ext4""#,
                r#"mp="/data" fs="reiserfs""#,
                &[r#"<fsinfo fs="reiserfs">"#, "aurum makes ext2, ext3"],
            ),
            (
                r#"mp="/data" fs="ext4""#,
                r#"mp="/data" fs="msdos""#,
                &[r#"<fsinfo fs="msdos">"#, "vfat"],
            ),
            (
                r#"mp="/data" fs="ext4""#,
                r#"mp="data" fs="ext4""#,
                &[r#"<fsinfo mp="data">"#, "absolute path"],
            ),
            (
                r#"options="defaults" dump="0" pass="2" />
  <fsinfo line="50""#,
                r#"options="defaults" dump="0" pass="2" format="no" />
  <fsinfo line="50""#,
                &[r#"<fsinfo format="no">"#, "makes every filesystem"],
            ),
            (
                r#"real_dev="proc" mp="/proc" fs="proc""#,
                r#"real_dev="nfs:/home" mp="/home" fs="nfs""#,
                &[r#"<fsinfo real_dev="nfs:/home">"#, "nfs at /home"],
            ),
            (
                r#"real_dev="/dev/sdb3""#,
                r#"real_dev="/dev/sdb9""#,
                &[
                    r#"<fsinfo real_dev="/dev/sdb9">"#,
                    "no partition, array or logical volume",
                ],
            ),
            (
                r#"real_dev="/dev/sdb3""#,
                r#"real_dev="/dev/sdb1""#,
                &[r#"<fsinfo real_dev="/dev/sdb1">"#, "RAID member"],
            ),
            (
                r#"real_dev="/dev/sdb3""#,
                r#"real_dev="/dev/sda1""#,
                &["a second <fsinfo> for the same device"],
            ),
            (
                r#"flavor="grub2""#,
                r#"flavor="grub""#,
                &[r#"<bootloader flavor="grub">"#, "GRUB legacy"],
            ),
            (
                r#"<target dev="/dev/sda" />"#,
                r#"<target dev="/dev/sdb" />"#,
                &[r#"<target dev="/dev/sdb">"#, "first disk"],
            ),
            (
                r#"<target dev="/dev/sda" />"#,
                r#"<target dev="/dev/sda" /><target dev="/dev/sdb" />"#,
                &["<target>", "installs GRUB once"],
            ),
            (
                r#"install_type="legacy""#,
                r#"install_type="efi""#,
                &[r#"<bootloader install_type="efi">"#, "EFI system partition"],
            ),
            (
                "<boel devstyle=\"udev\"/>",
                "<autoinstall/>",
                &["<autoinstall>", "not an element"],
            ),
            (
                r#"<part num="3" size="*" p_type="primary" p_name="-" flags="-" />"#,
                r#"<part num="3" size="100" p_type="primary" /><part num="4" size="100" p_type="primary" /><part num="7" size="*" p_type="primary" />"#,
                &["not a valid template", "more than four primary partitions"],
            ),
            (
                "<config>",
                "<layout>",
                &["not a SystemImager layout", "broken"],
            ),
        ]);
        let gpt = BASE.replace(r#"label_type="msdos""#, r#"label_type="gpt""#);
        let e = conv(&gpt).unwrap_err().to_string();
        assert!(
            e.contains(r#"<part p_type="extended">"#) && e.contains("only primary"),
            "{e}"
        );
        let no_grub = gpt
            .replace(r#"p_type="extended""#, r#"p_type="primary""#)
            .replace(r#"p_type="logical""#, r#"p_type="primary""#)
            .replacen(
                r#"size="*" p_type="primary""#,
                r#"size="100" p_type="primary""#,
                1,
            );
        let e = conv(&no_grub).unwrap_err().to_string();
        assert!(e.contains("bios-boot partition"), "{e}");
    }
}
