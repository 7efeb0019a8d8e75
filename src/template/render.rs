//! Rendering: a template and the real disk sizes in, an exact partition plan out.
//!
//! Every partition starts and ends on a 1 MiB boundary (what every current partitioning tool
//! does, and what SSDs and 4K disks want). The first MiB holds the protective MBR and the
//! primary GPT; the backup GPT (header plus 128 entries: 33 sectors) lives in the last sectors,
//! so the usable end is the last MiB boundary before them. Sizes are settled first (exact sizes,
//! then percentages of the whole disk clamped to `min`/`max`), then `*` takes what is left
//! (clamped to its `max`, at least its `min`, 1 MiB by default); partitions are laid out in the
//! order the template lists them.
//!
//! An msdos (MBR) disk has no backup table at its end, but its addresses stop at 2 TiB (32-bit
//! sector numbers), so nothing is placed past that. Its primary partitions and its extended
//! partition are sized as above; the logical partitions are then sized inside the extended one
//! the same way (percentages still of the whole disk, as SystemImager reads them), each after
//! one MiB that holds its extended boot record, as `sfdisk` and `parted` align them.

use serde::Serialize;

use super::size::{human, Amount, MIB};
use super::{raid_size, Disk, FsSpec, Label, PartType, Role, Template};
use crate::error::{invalid, Result};
use crate::name::ClassName;

/// Sectors the backup GPT takes at the end of a disk (header + 128 entries of 128 bytes).
const BACKUP_GPT_BYTES: u64 = 33 * 512;
/// The end of what an MBR can address: 2^32 sectors of 512 bytes.
const MBR_LIMIT: u64 = (1 << 32) * 512;
/// LVM extent size (lvcreate's default); logical volumes are whole extents.
const EXTENT: u64 = 4 * MIB;

/// The rendered plan of a whole class.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub class: ClassName,
    pub disks: Vec<DiskPlan>,
    pub raids: Vec<RaidPlan>,
    pub volume_groups: Vec<VgPlan>,
}

/// One disk.
#[derive(Clone, Debug, Serialize)]
pub struct DiskPlan {
    pub label: Label,
    /// Left as it is: no table written (and no partitions planned).
    pub untouched: bool,
    pub size: u64,
    pub partitions: Vec<PartPlan>,
    /// Bytes left unpartitioned (a `*` with a `max`, or no `*` at all).
    pub free: u64,
}

/// One partition: `start..end` in bytes, MiB aligned.
#[derive(Clone, Debug, Serialize)]
pub struct PartPlan {
    pub number: u32,
    pub name: Option<String>,
    pub start: u64,
    pub end: u64,
    pub size: u64,
    #[serde(rename = "type")]
    pub kind: PartType,
    /// On an msdos disk: primary, extended or logical.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    pub boot: bool,
    pub rest: bool,
    #[serde(flatten)]
    pub fs: FsSpec,
}

/// A software RAID array.
#[derive(Clone, Debug, Serialize)]
pub struct RaidPlan {
    pub name: String,
    pub level: u8,
    /// `(disk index, partition number)` of each active member.
    pub members: Vec<(usize, u32)>,
    /// `(disk index, partition number)` of each spare.
    pub spares: Vec<(usize, u32)>,
    /// Chunk size in bytes, when the template sets one.
    pub chunk: Option<u64>,
    pub layout: Option<String>,
    /// What the level gives from its members (the array is a little smaller: mdadm keeps its
    /// superblock).
    pub size: u64,
    #[serde(flatten)]
    pub fs: FsSpec,
}

/// A volume group and its logical volumes.
#[derive(Clone, Debug, Serialize)]
pub struct VgPlan {
    pub name: String,
    pub devices: Vec<String>,
    pub size: u64,
    pub volumes: Vec<LvPlan>,
}

/// A logical volume.
#[derive(Clone, Debug, Serialize)]
pub struct LvPlan {
    pub name: String,
    pub size: u64,
    #[serde(flatten)]
    pub fs: FsSpec,
}

/// The first and (exclusive) last usable, aligned byte of a GPT disk of `size` bytes.
pub fn usable(size: u64) -> (u64, u64) {
    let end = size.saturating_sub(BACKUP_GPT_BYTES) / MIB * MIB;
    (MIB, end.max(MIB))
}

/// The same for a disk with `label`: an MBR keeps nothing at the end, but stops at 2 TiB.
pub fn usable_for(label: Label, size: u64) -> (u64, u64) {
    match label {
        Label::Gpt => usable(size),
        Label::Msdos => (MIB, (size.min(MBR_LIMIT) / MIB * MIB).max(MIB)),
    }
}

fn align_up(b: u64, to: u64) -> u64 {
    b.div_ceil(to) * to
}

/// One size request, solved: sizes for every item, `None` for the `*` until the rest is known.
struct Sized {
    fixed: Vec<Option<u64>>,
    rest: Option<(usize, u64, Option<u64>)>,
}

fn settle(items: &[(Amount, Option<u64>, Option<u64>)], whole: u64, align: u64) -> Sized {
    let mut fixed = Vec::new();
    let mut rest = None;
    for (i, (amount, min, max)) in items.iter().enumerate() {
        let clamp = |v: u64| {
            let v = min.map_or(v, |m| v.max(m));
            max.map_or(v, |m| v.min(m))
        };
        match amount {
            Amount::Bytes(b) => fixed.push(Some(align_up(clamp(*b), align))),
            Amount::Percent(p) => {
                let v = (whole as f64 * p / 100.0) as u64 / align * align;
                let v = clamp(v);
                fixed.push(Some(align_up(v.max(align), align)));
            }
            Amount::Rest => {
                fixed.push(None);
                let min = align_up(min.unwrap_or(align).max(align), align);
                rest = Some((i, min, max.map(|m| m / align * align)));
            }
        }
    }
    Sized { fixed, rest }
}

/// Sizes `items` (amount, min, max) in `avail` bytes of a disk of `whole` bytes: each item's
/// size, or the shortfall when they do not fit.
fn fit(
    items: &[(Amount, Option<u64>, Option<u64>)],
    whole: u64,
    avail: u64,
) -> std::result::Result<Vec<u64>, u64> {
    let s = settle(items, whole, MIB);
    let fixed_sum: u64 = s.fixed.iter().flatten().sum();
    let need = fixed_sum + s.rest.map_or(0, |r| r.1);
    if need > avail {
        return Err(need);
    }
    let rest_size = s.rest.map(|(_, min, max)| {
        let v = (avail - fixed_sum).max(min);
        max.map_or(v, |m| v.min(m.max(min)))
    });
    Ok(s.fixed
        .iter()
        .map(|f| f.or(rest_size).expect("only the rest is unsized"))
        .collect())
}

/// One disk of `t` (`which` names it in messages) on a disk of `size` bytes.
fn render_disk(t: &Template, which: &str, disk: &Disk, size: u64) -> Result<DiskPlan> {
    if disk.untouched {
        return Ok(DiskPlan {
            label: disk.label,
            untouched: true,
            size,
            partitions: Vec::new(),
            free: 0,
        });
    }
    let parts: Vec<&super::Partition> = disk.partitions.iter().map(|p| p.get_ref()).collect();
    let amount = |p: &super::Partition| (p.size, p.min.map(|b| b.0), p.max.map(|b| b.0));
    let logical = |p: &super::Partition| p.role == Some(Role::Logical);
    let (start, end) = usable_for(disk.label, size);
    let top: Vec<_> = parts
        .iter()
        .filter(|p| !logical(p))
        .map(|p| amount(p))
        .collect();
    let tail = match disk.label {
        Label::Gpt => BACKUP_GPT_BYTES,
        Label::Msdos => 0,
    };
    let sizes = fit(&top, size, end - start).map_err(|need| {
        // The smallest disk holding this: the first MiB, the partitions, the backup GPT.
        let needs = start + need + tail;
        invalid(format!(
            "class {} needs {}, {which} is {} ({} short): give it a larger disk, make a partition smaller (or a percentage), or use another class",
            t.class,
            human(needs),
            human(size),
            human(needs.saturating_sub(size))
        ))
    })?;
    let mut out = Vec::new();
    let mut sizes = sizes.into_iter();
    let (mut at, mut number) = (start, 0u32);
    let mut i = 0;
    while i < parts.len() {
        let p = parts[i];
        let len = sizes.next().expect("one size per top-level partition");
        number += 1;
        out.push(part_plan(p, number, at, len, disk.label));
        at += len;
        i += 1;
        if p.role != Some(Role::Extended) {
            continue;
        }
        // The logical partitions that follow, each after a MiB for its boot record.
        let inner: Vec<_> = parts[i..]
            .iter()
            .take_while(|q| logical(q))
            .map(|q| amount(q))
            .collect();
        let n = inner.len() as u64;
        let lens = fit(&inner, size, len.saturating_sub(n * MIB)).map_err(|need| {
            invalid(format!(
                "class {}: the extended partition #{number} of {which} is {}, its logical partitions need {} with their boot records ({} short): make it larger (or `*`), or them smaller",
                t.class,
                human(len),
                human(need + n * MIB),
                human((need + n * MIB).saturating_sub(len))
            ))
        })?;
        let mut inside = at - len;
        for (k, l) in lens.into_iter().enumerate() {
            inside += MIB;
            out.push(part_plan(parts[i + k], 5 + k as u32, inside, l, disk.label));
            inside += l;
        }
        i += n as usize;
    }
    Ok(DiskPlan {
        label: disk.label,
        untouched: false,
        size,
        partitions: out,
        free: end - at,
    })
}

fn part_plan(p: &super::Partition, number: u32, start: u64, len: u64, label: Label) -> PartPlan {
    PartPlan {
        number,
        name: p.name.clone(),
        start,
        end: start + len,
        size: len,
        kind: p.kind,
        role: (label == Label::Msdos).then(|| p.role.unwrap_or_default()),
        boot: p.boot,
        rest: p.size == Amount::Rest,
        fs: p.fs_spec(),
    }
}

/// Renders `t` for disks of `sizes` bytes (one per `[[disk]]`).
pub fn render(t: &Template, sizes: &[u64]) -> Result<Plan> {
    let f = &t.file;
    // A disk left untouched at the end of the list need not be there.
    let needed = f
        .disks
        .iter()
        .rposition(|d| !d.untouched)
        .map_or(0, |i| i + 1);
    if sizes.len() < needed {
        return Err(invalid(format!(
            "class {} needs {} disks, the node has {}",
            t.class,
            needed,
            sizes.len()
        )));
    }
    let mut disks = Vec::new();
    for (d, disk) in f.disks.iter().enumerate() {
        let which = if f.disks.len() > 1 {
            format!("disk {}", d + 1)
        } else {
            "disk".into()
        };
        disks.push(render_disk(
            t,
            &which,
            disk,
            sizes.get(d).copied().unwrap_or(0),
        )?);
    }
    let find = |name: &str| -> Option<(usize, &PartPlan)> {
        disks.iter().enumerate().find_map(|(i, d)| {
            d.partitions
                .iter()
                .find(|p| p.name.as_deref() == Some(name))
                .map(|p| (i, p))
        })
    };
    let mut raids = Vec::new();
    for r in &f.raid {
        let r = r.get_ref();
        let members: Vec<(usize, &PartPlan)> = r
            .devices
            .iter()
            .map(|n| find(n).expect("checked at parse"))
            .collect();
        let smallest = members.iter().map(|(_, p)| p.size).min().unwrap_or(0);
        raids.push(RaidPlan {
            name: r.name.clone(),
            level: r.level,
            members: members.iter().map(|(d, p)| (*d, p.number)).collect(),
            spares: r
                .spares
                .iter()
                .map(|n| {
                    find(n)
                        .map(|(d, p)| (d, p.number))
                        .expect("checked at parse")
                })
                .collect(),
            chunk: r.chunk.map(|b| b.0),
            layout: r.layout.clone(),
            size: raid_size(r.level, members.len() as u64, smallest),
            fs: r.fs_spec(),
        });
    }
    let mut vgs = Vec::new();
    for g in &f.lvm {
        let g = g.get_ref();
        // Each physical volume keeps its first MiB for LVM's label and metadata.
        let size: u64 = g
            .devices
            .iter()
            .map(|n| {
                let raw = match raids.iter().find(|r| &r.name == n) {
                    Some(r) => r.size,
                    None => find(n).expect("checked at parse").1.size,
                };
                raw.saturating_sub(MIB) / EXTENT * EXTENT
            })
            .sum();
        let items: Vec<_> = g
            .volumes
            .iter()
            .map(|v| {
                let v = v.get_ref();
                (v.size, v.min.map(|b| b.0), v.max.map(|b| b.0))
            })
            .collect();
        let s = settle(&items, size, EXTENT);
        let fixed_sum: u64 = s.fixed.iter().flatten().sum();
        let need = fixed_sum + s.rest.map_or(0, |r| r.1);
        if need > size {
            return Err(invalid(format!(
                "class {}: volume group {} needs {}, its devices give {} ({} short): make a volume smaller or a device larger",
                t.class,
                g.name,
                human(need),
                human(size),
                human(need - size)
            )));
        }
        let rest_size = s.rest.map(|(_, min, max)| {
            let v = (size - fixed_sum).max(min);
            max.map_or(v, |m| v.min(m.max(min)))
        });
        let volumes = g
            .volumes
            .iter()
            .zip(&s.fixed)
            .map(|(v, fixed)| {
                let v = v.get_ref();
                LvPlan {
                    name: v.name.clone(),
                    size: fixed.or(rest_size).expect("only the rest is unsized"),
                    fs: v.fs_spec(),
                }
            })
            .collect();
        vgs.push(VgPlan {
            name: g.name.clone(),
            devices: g.devices.clone(),
            size,
            volumes,
        });
    }
    Ok(Plan {
        class: t.class.clone(),
        disks,
        raids,
        volume_groups: vgs,
    })
}

/// The smallest disk (whole MiB) `t` renders on, every disk the same size, or `None` when no
/// disk up to 1 PiB is enough (a `*` with a huge `min`).
pub fn smallest_disk(t: &Template) -> Option<u64> {
    let n = t.file.disks.len();
    let fits = |mib: u64| render(t, &vec![mib * MIB; n]).is_ok();
    let (mut lo, mut hi) = (1u64, 1u64 << 30);
    if !fits(hi) {
        return None;
    }
    // Percentages make "fits" monotone only in practice, not in theory; a binary search for the
    // first fitting size is what an administrator asks for ("what is the smallest disk?").
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if fits(mid) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Some(lo * MIB)
}

impl Plan {
    /// The plan as a table for people.
    pub fn table(&self) -> String {
        let mut out = String::new();
        for (i, d) in self.disks.iter().enumerate() {
            if d.untouched {
                out += &format!("disk {}: left untouched, class {}\n", i + 1, self.class);
                continue;
            }
            out += &format!(
                "disk {} ({}, {} bytes{}), class {}\n",
                i + 1,
                human(d.size),
                d.size,
                match d.label {
                    Label::Gpt => "",
                    Label::Msdos => ", msdos",
                },
                self.class
            );
            out += &format!(
                "  {:>2} {:>12} {:>12} {:>10}  {:<9} {:<6} {:<12} {}\n",
                "#", "start MiB", "end MiB", "size", "type", "fs", "label", "mount"
            );
            for p in &d.partitions {
                out += &format!(
                    "  {:>2} {:>12} {:>12} {:>10}  {:<9} {:<6} {:<12} {}{}\n",
                    p.number,
                    p.start / MIB,
                    p.end / MIB,
                    human(p.size),
                    p.kind.name(),
                    p.fs.fs.map_or("-", |f| f.name()),
                    p.fs.label.as_deref().unwrap_or("-"),
                    p.fs.mount.as_deref().unwrap_or("-"),
                    [
                        (p.rest, "  (rest)"),
                        (p.role == Some(Role::Extended), "  (extended)"),
                        (p.role == Some(Role::Logical), "  (logical)"),
                        (p.boot, "  (boot)"),
                    ]
                    .iter()
                    .filter(|(on, _)| *on)
                    .map(|(_, s)| *s)
                    .collect::<String>()
                );
            }
            if d.free >= MIB {
                out += &format!("  unpartitioned at the end: {}\n", human(d.free));
            }
        }
        for r in &self.raids {
            out += &format!(
                "raid{} /dev/md/{} over {}{}: about {}, {} {}\n",
                r.level,
                r.name,
                r.members
                    .iter()
                    .map(|(d, n)| format!("disk {} #{n}", d + 1))
                    .collect::<Vec<_>>()
                    .join(", "),
                if r.spares.is_empty() {
                    String::new()
                } else {
                    format!(" (+{} spare)", r.spares.len())
                },
                human(r.size),
                r.fs.fs.map_or("-", |f| f.name()),
                r.fs.mount.as_deref().unwrap_or("")
            );
        }
        for g in &self.volume_groups {
            out += &format!(
                "volume group {} on {}: {}\n",
                g.name,
                g.devices.join(", "),
                human(g.size)
            );
            for v in &g.volumes {
                out += &format!(
                    "  lv {:<12} {:>10}  {:<6} {}\n",
                    v.name,
                    human(v.size),
                    v.fs.fs.map_or("-", |f| f.name()),
                    v.fs.mount.as_deref().unwrap_or("-")
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::size::GIB;
    use super::*;
    use proptest::prelude::*;

    fn compute() -> Template {
        Template::parse(
            &ClassName::new("compute").unwrap(),
            "compute.toml",
            include_str!("../../partition-templates/compute.toml"),
        )
        .unwrap()
    }

    #[test]
    fn seed_003_scr_takes_the_rest() {
        let t = compute();
        let a = render(&t, &[13 * GIB]).unwrap();
        let b = render(&t, &[22 * GIB]).unwrap();
        let (pa, pb) = (&a.disks[0].partitions, &b.disks[0].partitions);
        assert_eq!(pa.len(), pb.len());
        for (x, y) in pa.iter().zip(pb) {
            if x.fs.mount.as_deref() == Some("/scr") {
                assert_eq!(y.size - x.size, 9 * GIB);
            } else {
                assert_eq!((x.start, x.size), (y.start, y.size));
            }
        }
    }

    #[test]
    fn too_small_names_class_size_and_shortfall() {
        let e = render(&compute(), &[4 * GIB]).unwrap_err().to_string();
        assert!(e.starts_with("class compute needs "), "{e}");
        assert!(e.contains("disk is 4 GiB ("), "{e}");
        assert!(e.contains(" short)"), "{e}");
    }

    /// A random single-disk template: fixed, percent (with bounds) and one `*` partition.
    fn template_text(parts: &[(u8, u64, bool)], rest_at: usize, rest_max: Option<u64>) -> String {
        let mut s = String::from("[[disk]]\n");
        for (i, (kind, v, bounded)) in parts.iter().enumerate() {
            if i == rest_at {
                s += "[[disk.partition]]\nsize = \"*\"\nfs = \"ext4\"\nmount = \"/\"\n";
                if let Some(m) = rest_max {
                    s += &format!("max = \"{m}MiB\"\n");
                }
            }
            s += "[[disk.partition]]\n";
            match kind % 2 {
                0 => s += &format!("size = \"{v}MiB\"\n"),
                _ => {
                    s += &format!("size = \"{}%\"\n", v % 15 + 1);
                    if *bounded {
                        s += "min = \"100MiB\"\nmax = \"2GiB\"\n";
                    }
                }
            }
        }
        if rest_at >= parts.len() {
            s += "[[disk.partition]]\nsize = \"*\"\nfs = \"ext4\"\nmount = \"/\"\n";
        }
        s
    }

    proptest! {
        #[test]
        fn plans_are_aligned_disjoint_and_fit(
            parts in proptest::collection::vec((0u8..2, 1u64..4000, any::<bool>()), 0..5),
            rest_at in 0usize..6,
            rest_max in proptest::option::of(1u64..100_000),
            size_mib in 10u64..4_000_000,
            extra_mib in 100u64..100_000,
            odd in 0u64..(1 << 20),
        ) {
            let text = template_text(&parts, rest_at, rest_max);
            let t = Template::parse(&ClassName::new("p").unwrap(), "p.toml", &text).unwrap();
            let size = size_mib * MIB + odd;
            let Ok(plan) = render(&t, &[size]) else { return Ok(()) };
            let d = &plan.disks[0];
            let (first, last) = usable(size);
            let mut at = first;
            for p in &d.partitions {
                prop_assert_eq!(p.start % MIB, 0);
                prop_assert_eq!(p.end % MIB, 0);
                prop_assert!(p.start >= at, "overlap");
                prop_assert!(p.end > p.start);
                prop_assert_eq!(p.size, p.end - p.start);
                at = p.end;
            }
            prop_assert!(at <= last, "past the backup GPT");
            prop_assert!(at + 33 * 512 <= size);
            // A bigger disk: the same or a bigger `*`, never a failure.
            let bigger = render(&t, &[size + extra_mib * MIB]).unwrap();
            let rest = |pl: &Plan| pl.disks[0].partitions.iter().find(|p| p.rest).unwrap().size;
            prop_assert!(rest(&bigger) >= rest(&plan));
            if rest_max.is_none() && parts.iter().all(|p| p.0 % 2 == 0) {
                // Only fixed sizes besides: the rest takes every new MiB but at most one.
                prop_assert!(rest(&bigger) + MIB >= rest(&plan) + extra_mib * MIB);
            }
        }
    }

    const MSDOS: &str = r#"
[[disk]]
label = "msdos"
[[disk.partition]]
size = "512MiB"
fs = "ext2"
mount = "/boot"
boot = true
[[disk.partition]]
role = "extended"
size = "*"
[[disk.partition]]
name = "a"
role = "logical"
type = "raid"
size = "10%"
[[disk.partition]]
name = "b"
role = "logical"
type = "raid"
size = "10%"
[[disk.partition]]
role = "logical"
size = "*"
fs = "ext3"
mount = "/scr"
[[disk.partition]]
size = "1GiB"
type = "swap"
[[disk]]
untouched = true
[[raid]]
name = "root"
level = 1
devices = ["a", "b"]
fs = "ext4"
mount = "/"
"#;

    fn msdos() -> Template {
        Template::parse(&ClassName::new("m").unwrap(), "m.toml", MSDOS).unwrap()
    }

    #[test]
    fn msdos_logical_partitions_are_numbered_from_5_inside_the_extended_one() {
        // One size for two disks: the untouched disk at the end need not be there.
        let p = render(&msdos(), &[20 * GIB]).unwrap();
        let d = &p.disks[0];
        let n: Vec<(u32, Option<Role>)> = d.partitions.iter().map(|p| (p.number, p.role)).collect();
        use Role::*;
        assert_eq!(
            n,
            [
                (1, Some(Primary)),
                (2, Some(Extended)),
                (5, Some(Logical)),
                (6, Some(Logical)),
                (7, Some(Logical)),
                (3, Some(Primary))
            ]
        );
        let ext = &d.partitions[1];
        // Each logical partition sits a MiB after the previous one ends (its boot record),
        // inside the extended one, and the swap after the extended one.
        let mut at = ext.start;
        for l in &d.partitions[2..5] {
            assert_eq!(l.start, at + MIB);
            at = l.end;
        }
        assert_eq!(at, ext.end);
        assert_eq!(d.partitions[5].start, ext.end);
        assert_eq!(
            d.partitions[5].end,
            20 * GIB,
            "an MBR keeps nothing at the end"
        );
        assert_eq!(
            d.partitions[2].size,
            2 * GIB,
            "percentages are of the whole disk"
        );
        assert!(p.disks[1].untouched && p.disks[1].partitions.is_empty());
        assert_eq!(p.raids[0].size, 2 * GIB);
        // An MBR addresses 2 TiB: the rest of a 3 TiB disk stays free.
        let big = render(&msdos(), &[3 << 40]).unwrap();
        assert_eq!(big.disks[0].partitions[5].end, 2 << 40);
        assert_eq!(big.disks[0].free, 0);
    }

    #[test]
    fn a_too_small_extended_partition_names_itself() {
        let text = MSDOS.replacen(
            "role = \"extended\"\nsize = \"*\"",
            "role = \"extended\"\nsize = \"3GiB\"",
            1,
        );
        let t = Template::parse(&ClassName::new("m").unwrap(), "m.toml", &text).unwrap();
        let e = render(&t, &[20 * GIB]).unwrap_err().to_string();
        assert!(
            e.contains("the extended partition #2 of disk 1 is 3 GiB"),
            "{e}"
        );
    }

    #[test]
    fn raid_sizes_follow_the_level() {
        use super::super::raid_size;
        assert_eq!(raid_size(0, 3, GIB), 3 * GIB);
        assert_eq!(raid_size(1, 3, GIB), GIB);
        assert_eq!(raid_size(5, 4, GIB), 3 * GIB);
        assert_eq!(raid_size(6, 4, GIB), 2 * GIB);
        assert_eq!(raid_size(10, 4, GIB), 2 * GIB);
    }
}
