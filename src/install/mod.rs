//! `aurum install`: a bare disk (or a disk image file) to a bootable node running a revision.
//!
//! The phases, in order, each reported through [`Reporter`] (the terminal, and with
//! `--report` also `aurum serve`: [`report::ServerReporter`]):
//!
//! 1. facts: the machine's hardware, with the sizes of the disks given;
//! 2. class: the one given, or the one the templates' `[match]` sections pick;
//! 3. plan: the class's template rendered for the real disk sizes (refused when it does not
//!    fit, before anything is written); the revision is resolved and its manifest fetched, and
//!    every tool the plan needs is looked for, also before anything is written;
//! 4. pre-install hooks;
//! 5. partition: a fresh GPT and protective MBR, written in one pass (see [`write_gpt`]), or
//!    an MBR with primary, extended and logical partitions (msdos label, [`write_msdos`]);
//!    disks marked untouched are skipped; then RAID arrays (mdadm) and LVM volumes (lvm2)
//!    when the template has them;
//! 6. mkfs: each filesystem with its own tool, with the template's label and options;
//! 7. transfer: the filesystems are mounted under a temporary directory and the revision is
//!    applied with the updateclient engine, which also writes the node state
//!    (`/var/lib/aurum-node/`) so `aurum updateclient` and `aurum rollback` work from the
//!    first boot; the overrides (global, group, node) are composed into the revision's
//!    manifest beforehand, so they are applied with it and recorded in the node state;
//! 8. /etc/fstab (by UUID) and /etc/hostname;
//! 9. post-install hooks, chrooted in the new root (the shipped bootloader hook among them);
//! 10. done, or failed: either way every mount, array, volume group and loop device is
//!     released by guards, in reverse order.

pub mod report;

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::apply::hooks::{self, HookEnv, Identity, Stage};
use crate::apply::node::Node;
use crate::apply::overrides;
use crate::apply::source::RevisionSource;
use crate::apply::update::{self, Overlay, UpdateOptions};
use crate::devices::{self, blkid, blkid_value, have, run, Disk, Mount};
use crate::error::{invalid, IoContext, Result};
use crate::excludes::Excludes;
use crate::facts::{DiskFact, Facts, Firmware};
use crate::format::manifest::Manifest;
use crate::format::report::{InstallPhase, NodeAction};
use crate::name::ClassName;
use crate::progress::Progress;
use crate::template::render::{DiskPlan, Plan, RaidPlan};
use crate::template::size::human;
use crate::template::{matching, render, Fs, FsSpec, Label, PartType, Role, Template};

/// A phase of an install, as reported.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "phase", content = "detail")]
pub enum Phase {
    Facts(String),
    Class(String),
    Plan(String),
    /// The revision resolved (`compute@3 1f2e3d4c`), before anything is written.
    Revision(String),
    Partition(String),
    Mkfs(String),
    Transfer {
        done: u64,
        total: u64,
    },
    Overrides(String),
    Hooks(String),
    Bootloader(String),
    Done(String),
    Failed(String),
}

impl Phase {
    /// The phase's name, as reported.
    pub fn name(&self) -> InstallPhase {
        match self {
            Phase::Facts(_) => InstallPhase::Facts,
            Phase::Class(_) => InstallPhase::Class,
            Phase::Plan(_) => InstallPhase::Plan,
            Phase::Revision(_) => InstallPhase::Revision,
            Phase::Partition(_) => InstallPhase::Partition,
            Phase::Mkfs(_) => InstallPhase::Mkfs,
            Phase::Transfer { .. } => InstallPhase::Transfer,
            Phase::Overrides(_) => InstallPhase::Overrides,
            Phase::Hooks(_) => InstallPhase::Hooks,
            Phase::Bootloader(_) => InstallPhase::Bootloader,
            Phase::Done(_) => InstallPhase::Done,
            Phase::Failed(_) => InstallPhase::Failed,
        }
    }
}

/// Receives the phases of an install.
pub trait Reporter: Sync {
    fn report(&self, phase: Phase);
}

/// What to install where.
pub struct InstallOptions {
    /// The disks (block devices or image files), in template order.
    pub disks: Vec<PathBuf>,
    /// The class, or `None` to pick it from the facts.
    pub class: Option<ClassName>,
    /// The revision: IMAGE, IMAGE@N, IMAGE:TAG or an id.
    pub image: String,
    pub hostname: Option<String>,
    /// The node's token for its reports, left at /var/lib/aurum-node/token.
    pub token: Option<String>,
    pub group: Option<String>,
    /// A hooks directory; `None`: the repository's `hooks` image, else the shipped hooks.
    pub hooks: Option<PathBuf>,
    pub dry_run: bool,
    /// Hardware facts of the machine (the disks' sizes are replaced by the real ones).
    pub facts: Facts,
    /// The templates to choose from (one, when the class is given).
    pub templates: Vec<Template>,
}

/// What an install did.
#[derive(Debug, serde::Serialize)]
pub struct InstallReport {
    pub class: ClassName,
    pub revision: String,
    pub plan: Option<Plan>,
    /// `mount point -> UUID` of each filesystem made.
    pub filesystems: Vec<(String, String)>,
    pub bytes: u64,
    pub hooks: Vec<String>,
    pub overrides: Vec<String>,
    pub warnings: Vec<String>,
    pub seconds: f64,
    /// How long each step took, in order (a failed install reports none).
    pub times: Vec<StepTime>,
}

/// The timed steps of an install (coarser than [`Phase`]: what an administrator compares with
/// doing the same by hand).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// Facts, class, plan, revision and manifest, tools: everything before a byte is written.
    Plan,
    PreInstallHooks,
    /// The GPT (and RAID arrays, volume groups).
    Partition,
    Mkfs,
    /// Mounting the filesystems and applying the revision.
    Transfer,
    /// /etc/fstab and /etc/hostname.
    Configure,
    /// The post-install hooks, the bootloader among them.
    PostInstallHooks,
    /// Unmounting, stopping arrays, detaching loop devices.
    Release,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::Plan => "plan",
            Step::PreInstallHooks => "pre-install hooks",
            Step::Partition => "partition",
            Step::Mkfs => "mkfs",
            Step::Transfer => "transfer",
            Step::Configure => "configure",
            Step::PostInstallHooks => "post-install hooks",
            Step::Release => "release",
        }
    }
}

/// One step's time.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StepTime {
    pub step: Step,
    pub seconds: f64,
}

/// Times consecutive steps.
struct Laps(Instant);

impl Laps {
    /// The time since the last lap (or the start), as `step`'s.
    fn lap(&mut self, step: Step) -> StepTime {
        let now = Instant::now();
        let seconds = now.duration_since(self.0).as_secs_f64();
        self.0 = now;
        StepTime { step, seconds }
    }
}

/// Forwards the apply engine's byte progress as `Transfer` phases, about every 5 %.
struct TransferProgress<'a> {
    reporter: &'a dyn Reporter,
    total: AtomicU64,
    done: AtomicU64,
    shown: AtomicU64,
}

impl Progress for TransferProgress<'_> {
    fn phase(&self, _: &str, total: Option<u64>, bytes: bool) {
        if bytes {
            self.total.store(total.unwrap_or(0), Ordering::Relaxed);
            self.done.store(0, Ordering::Relaxed);
            self.shown.store(0, Ordering::Relaxed);
            self.reporter.report(Phase::Transfer {
                done: 0,
                total: total.unwrap_or(0),
            });
        }
    }

    fn advance(&self, n: u64) {
        let total = self.total.load(Ordering::Relaxed);
        if total == 0 {
            return;
        }
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        let step = (total / 20).max(1);
        let shown = self.shown.load(Ordering::Relaxed);
        if done >= shown + step
            && self
                .shown
                .compare_exchange(shown, done, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.reporter.report(Phase::Transfer { done, total });
        }
    }

    fn finish(&self) {}
}

/// A block device to format: what the template wants on it.
struct Target {
    dev: PathBuf,
    spec: FsSpec,
    what: String,
}

/// Software RAID arrays, stopped on drop.
#[derive(Default)]
struct Arrays(Vec<PathBuf>);

impl Drop for Arrays {
    fn drop(&mut self) {
        while let Some(md) = self.0.pop() {
            if let Err(e) = run(Command::new("mdadm").arg("--stop").arg(&md)) {
                log::warn!("could not stop {}: {e}", md.display());
            }
        }
    }
}

/// Active volume groups, deactivated on drop.
#[derive(Default)]
struct VolumeGroups(Vec<String>);

impl Drop for VolumeGroups {
    fn drop(&mut self) {
        while let Some(vg) = self.0.pop() {
            if let Err(e) = run(Command::new("vgchange").args(["-an", &vg])) {
                log::warn!("could not deactivate {vg}: {e}");
            }
        }
    }
}

/// Mounts, unmounted deepest (last made) first on drop.
#[derive(Default)]
struct Mounts(Vec<Mount>);

impl Drop for Mounts {
    fn drop(&mut self) {
        while let Some(m) = self.0.pop() {
            drop(m);
        }
    }
}

/// The mkfs command for `spec` on `dev`.
fn mkfs_command(fs: Fs, spec: &FsSpec, dev: &Path) -> Command {
    let m = fs.mkfs();
    let mut c = Command::new(m.program);
    c.args(m.force);
    if let Some(l) = &spec.label {
        c.args([m.label_flag, l]);
    }
    if let Some(o) = &spec.mkfs_options {
        c.args(shell_words::split(o).unwrap_or_else(|_| vec![o.clone()]));
    }
    c.arg(dev);
    c
}

/// Every external program the install of `plan` runs, missing ones first in the error.
fn check_tools(plan: &Plan, any_file: bool) -> Result<()> {
    let mut need: Vec<&str> = vec!["blkid", "mount", "umount", "chroot"];
    if any_file {
        need.push("losetup");
    }
    if !plan.raids.is_empty() {
        need.push("mdadm");
    }
    if plan
        .disks
        .iter()
        .any(|d| d.label == Label::Msdos && !d.untouched)
    {
        need.push("sfdisk");
    }
    if !plan.volume_groups.is_empty() {
        need.extend(["pvcreate", "vgcreate", "lvcreate", "vgchange"]);
    }
    let specs = plan
        .disks
        .iter()
        .flat_map(|d| d.partitions.iter().map(|p| &p.fs))
        .chain(plan.raids.iter().map(|r| &r.fs))
        .chain(
            plan.volume_groups
                .iter()
                .flat_map(|g| g.volumes.iter().map(|v| &v.fs)),
        );
    for s in specs {
        if let Some(fs) = s.fs {
            need.push(fs.mkfs().program);
        }
    }
    let mut missing: Vec<&str> = Vec::new();
    for p in need {
        if !have(p) && !missing.contains(&p) {
            missing.push(p);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let pkg = |p: &str| match p {
        "mdadm" => "mdadm",
        "pvcreate" | "vgcreate" | "lvcreate" | "vgchange" => "lvm2",
        "chroot" => "coreutils",
        "sfdisk" => "fdisk",
        _ => Fs::ALL
            .into_iter()
            .map(Fs::mkfs)
            .find(|m| m.program == p)
            .map_or("util-linux", |m| m.package),
    };
    let mut pkgs: Vec<&str> = Vec::new();
    for p in missing.iter().map(|p| pkg(p)) {
        if !pkgs.contains(&p) {
            pkgs.push(p);
        }
    }
    Err(invalid(format!(
        "class {} needs {} on the installer, and they are not installed (packages: {}); nothing was written",
        plan.class,
        missing.join(", "),
        pkgs.join(", ")
    )))
}

/// Bytes wiped at each end of a disk before its new table is written: the old primary and
/// backup GPTs, an old MBR, and the MD (0.90, 1.0) and LVM signatures that sit near either end
/// and would otherwise be found again by the kernel or by blkid.
const WIPE: u64 = 1 << 20;

/// Opens `disk` for writing and zeroes [`WIPE`] bytes at each end; returns it and its size.
fn wipe_ends(disk: &Path) -> Result<(std::fs::File, u64)> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .at(disk)?;
    let size = crate::devices::size_of(disk)?;
    let zeros = vec![0u8; WIPE.min(size / 2) as usize];
    f.write_all_at(&zeros, 0).at(disk)?;
    f.write_all_at(&zeros, size - zeros.len() as u64).at(disk)?;
    Ok((f, size))
}

/// The GPT attribute bit "legacy BIOS bootable", what `boot = true` sets on a GPT disk.
const LEGACY_BIOS_BOOTABLE: u64 = 1 << 2;

/// Writes a fresh GPT with a protective MBR and the plan's partitions, in one pass with the
/// gpt crate. `sgdisk` did this before, twice (`--zap-all`, then the table): each run ends
/// with a `sync` and a one-second sleep, two of the four seconds of a small install.
fn write_gpt(disk: &Path, plan: &DiskPlan) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| {
        crate::Error::Tool(format!("writing the GPT of {}: {e}", disk.display()))
    };
    let (mut f, size) = wipe_ends(disk)?;
    let sectors = size / 512;
    let mbr =
        gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from(sectors - 1).unwrap_or(0xFFFF_FFFF));
    mbr.overwrite_lba0(&mut f).map_err(|e| err(&e))?;
    let mut g = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .change_partition_count(true)
        .create_from_device(f, None)
        .map_err(|e| err(&e))?;
    for p in &plan.partitions {
        let n = p.number;
        let name = p.name.clone().unwrap_or_else(|| format!("part{n}"));
        g.add_partition_at(
            &name,
            n,
            p.start / 512,
            (p.end - p.start) / 512,
            p.kind.gpt_type(),
            if p.boot { LEGACY_BIOS_BOOTABLE } else { 0 },
        )
        .map_err(|e| err(&e))?;
    }
    let f = g.write().map_err(|e| err(&e))?;
    f.sync_all().at(disk)
}

/// The `sfdisk` script of an msdos plan: one line per partition, named by its number (`sfdisk`
/// reads the number from the name's last digits), so logical partitions get 5, 6, ... and
/// land inside the extended one.
fn sfdisk_script(disk: &Path, plan: &DiskPlan) -> String {
    let mut s = String::from("label: dos\nunit: sectors\n\n");
    for p in &plan.partitions {
        let id = match p.role {
            Some(Role::Extended) => 0x05,
            _ => p.kind.mbr_id().unwrap_or(0x83),
        };
        s += &format!(
            "{} : start={}, size={}, type={id:x}{}\n",
            devices::partition_node(disk, p.number).display(),
            p.start / 512,
            p.size / 512,
            if p.boot { ", bootable" } else { "" }
        );
    }
    s
}

/// Writes a fresh MBR (msdos label) with the plan's primary, extended and logical partitions
/// with `sfdisk` (util-linux), which writes the extended boot records of the logical ones.
fn write_msdos(disk: &Path, plan: &DiskPlan) -> Result<()> {
    let (f, _) = wipe_ends(disk)?;
    f.sync_all().at(disk)?;
    drop(f);
    let mut script = tempfile::NamedTempFile::new()?;
    script
        .write_all(sfdisk_script(disk, plan).as_bytes())
        .at(script.path())?;
    let input = std::fs::File::open(script.path()).at(script.path())?;
    run(Command::new("sfdisk")
        .args(["--quiet", "--wipe", "always", "--no-reread"])
        .arg(disk)
        .stdin(input))?;
    Ok(())
}

/// `UUID=... /scr ext4 noatime 0 2` lines for the filesystems made.
fn fstab(made: &[(FsSpec, String)]) -> String {
    let mut out = String::from(
        "# /etc/fstab: written by aurum install from the class's partition template.\n\
         # <file system>                           <mount point>  <type>  <options>  <dump>  <pass>\n",
    );
    let mut rows: Vec<&(FsSpec, String)> = made.iter().collect();
    rows.sort_by_key(|(s, _)| s.mount.clone().unwrap_or_else(|| "~".into()));
    for (spec, uuid) in rows {
        let Some(fs) = spec.fs else { continue };
        let (mount, opts, pass) = match fs {
            Fs::Swap => ("none".to_string(), "sw".to_string(), 0),
            _ => {
                let Some(m) = &spec.mount else { continue };
                (
                    m.clone(),
                    spec.mount_options
                        .clone()
                        .unwrap_or_else(|| "defaults".into()),
                    fs.fsck_pass(m),
                )
            }
        };
        out += &format!(
            "UUID={uuid:<36}  {mount:<13}  {:<6}  {opts}  0  {pass}\n",
            fs.name()
        );
    }
    out
}

fn write_file(root: &Path, rel: &str, text: &str) -> Result<()> {
    let p = root.join(rel);
    let dir = p.parent().expect("has a parent");
    std::fs::create_dir_all(dir).at(dir)?;
    let mut f = std::fs::File::create(&p).at(&p)?;
    f.write_all(text.as_bytes()).at(&p)?;
    f.sync_all().at(&p)
}

/// Leaves the installer's token on the node (`/var/lib/aurum-node/token`, 0600, which updates
/// never touch), for the node's reports to the server.
pub(crate) fn write_token(root: &Path, token: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = root.join(crate::apply::node::STATE_DIR);
    std::fs::create_dir_all(&dir).at(&dir)?;
    let p = dir.join(crate::apply::node::TOKEN_FILE);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&p)
        .at(&p)?;
    f.write_all(format!("{token}\n").as_bytes()).at(&p)?;
    f.sync_all().at(&p)
}

/// Installs a node. Every phase goes to `reporter`; a failure is reported before it returns.
pub fn install(
    source: &dyn RevisionSource,
    opts: InstallOptions,
    reporter: &dyn Reporter,
) -> Result<InstallReport> {
    let started = Instant::now();
    let r = install_inner(source, &opts, reporter, started);
    match &r {
        Ok(rep) => reporter.report(Phase::Done(format!(
            "{} on {} as class {} in {:.1} s",
            rep.revision,
            opts.disks
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            rep.class,
            rep.seconds
        ))),
        Err(e) => reporter.report(Phase::Failed(format!("{e:#}"))),
    }
    r
}

/// The machine's facts with the disks given, at their real sizes.
fn disk_facts(opts: &InstallOptions, reporter: &dyn Reporter) -> Result<Facts> {
    let mut facts = opts.facts.clone();
    facts.disks = opts
        .disks
        .iter()
        .map(|d| {
            Ok(DiskFact {
                name: d.display().to_string(),
                size: crate::devices::size_of(d)?,
                ..Default::default()
            })
        })
        .collect::<Result<_>>()?;
    reporter.report(Phase::Facts(format!(
        "{} disk(s): {}; firmware {:?}; {} CPUs; {} memory",
        facts.disks.len(),
        facts
            .disks
            .iter()
            .map(|d| format!("{} {}", d.name, human(d.size)))
            .collect::<Vec<_>>()
            .join(", "),
        facts.firmware,
        facts.cpus,
        human(facts.memory)
    )));
    Ok(facts)
}

/// The class given, or the one the templates' `[match]` sections pick for `facts`.
fn choose_template(
    opts: &InstallOptions,
    facts: &Facts,
    reporter: &dyn Reporter,
) -> Result<Template> {
    let class = match &opts.class {
        Some(c) => c.clone(),
        None => {
            let (verdicts, chosen) = matching::choose(&opts.templates, facts);
            chosen.map_err(|e| {
                let why: Vec<String> = verdicts
                    .iter()
                    .map(|v| format!("{}: {}", v.class, v.reasons.join("; ")))
                    .collect();
                invalid(format!("{e}\n{}", why.join("\n")))
            })?
        }
    };
    let t = opts
        .templates
        .iter()
        .find(|t| t.class == class)
        .cloned()
        .ok_or_else(|| crate::Error::NotFound(format!("no template for class {class}")))?;
    reporter.report(Phase::Class(format!(
        "{class}{}",
        if opts.class.is_some() {
            " (given)"
        } else {
            " (matched)"
        }
    )));
    Ok(t)
}

/// The `mdadm --create` of one array: its level, members, spares, chunk and layout.
fn mdadm_create(r: &RaidPlan, md: &Path, members: &[PathBuf], spares: &[PathBuf]) -> Command {
    let mut c = Command::new("mdadm");
    c.args(["--create", "--run", "--metadata=1.2", "--homehost=any"]);
    c.arg(format!("--level={}", r.level));
    c.arg(format!("--raid-devices={}", members.len()));
    if !spares.is_empty() {
        c.arg(format!("--spare-devices={}", spares.len()));
    }
    if let Some(k) = r.chunk {
        c.arg(format!("--chunk={}", k / 1024));
    }
    if let Some(layout) = &r.layout {
        c.arg(format!("--layout={layout}"));
    }
    c.arg(format!("--name={}", r.name));
    c.arg(md).args(members).args(spares);
    c
}

/// Block devices made by partitioning, released on drop in field order: volume groups
/// first, then arrays, then the disks' loop devices.
struct Layout {
    vgs: VolumeGroups,
    arrays: Arrays,
    disks: Vec<Disk>,
    /// What gets a filesystem, in plan order.
    targets: Vec<Target>,
}

/// Writes the partition tables, builds RAID arrays and volume groups.
fn partition(
    paths: &[PathBuf],
    plan: &Plan,
    template: &Template,
    reporter: &dyn Reporter,
) -> Result<Layout> {
    let mut l = Layout {
        vgs: VolumeGroups::default(),
        arrays: Arrays::default(),
        disks: Vec::new(),
        targets: Vec::new(),
    };
    for (path, dp) in paths.iter().zip(&plan.disks) {
        if dp.untouched {
            reporter.report(Phase::Partition(format!(
                "{}: left untouched",
                path.display()
            )));
            l.disks.push(Disk::open(path)?);
            continue;
        }
        reporter.report(Phase::Partition(format!(
            "{}: {} with {} partitions",
            path.display(),
            match dp.label {
                Label::Gpt => "GPT",
                Label::Msdos => "MBR (msdos)",
            },
            dp.partitions.len()
        )));
        match dp.label {
            Label::Gpt => write_gpt(path, dp)?,
            Label::Msdos => write_msdos(path, dp)?,
        }
        let disk = Disk::open(path)?;
        if disk.is_block {
            // Let the kernel (and udev, when there is one) see the new partitions.
            run(Command::new("blockdev").arg("--rereadpt").arg(path))?;
            if have("udevadm") {
                let _ = run(Command::new("udevadm").arg("settle"));
            }
        }
        l.disks.push(disk);
    }
    let mut named: Vec<(String, PathBuf)> = Vec::new();
    for (disk, dp) in l.disks.iter_mut().zip(&plan.disks) {
        for p in &dp.partitions {
            if p.kind == PartType::BiosBoot || p.role == Some(Role::Extended) {
                continue;
            }
            let dev = disk.partition(p.number, p.start, p.size)?;
            if let Some(n) = &p.name {
                named.push((n.clone(), dev.clone()));
            }
            if p.fs.fs.is_some() {
                l.targets.push(Target {
                    dev,
                    spec: p.fs.clone(),
                    what: format!("{} #{}", disk.path.display(), p.number),
                });
            }
        }
    }
    let dev_of = |named: &[(String, PathBuf)], n: &str| -> PathBuf {
        named
            .iter()
            .find(|(m, _)| m == n)
            .map(|(_, d)| d.clone())
            .expect("checked at parse")
    };
    for r in &plan.raids {
        let md = PathBuf::from(format!("/dev/md/{}", r.name));
        let spec = template
            .file
            .raid
            .iter()
            .find(|x| x.get_ref().name == r.name)
            .expect("planned from these")
            .get_ref();
        let members: Vec<PathBuf> = spec.devices.iter().map(|n| dev_of(&named, n)).collect();
        let spares: Vec<PathBuf> = spec.spares.iter().map(|n| dev_of(&named, n)).collect();
        reporter.report(Phase::Partition(format!(
            "RAID{} {} over {} devices{}",
            r.level,
            md.display(),
            members.len(),
            if spares.is_empty() {
                String::new()
            } else {
                format!(" and {} spares", spares.len())
            }
        )));
        run(&mut mdadm_create(r, &md, &members, &spares))?;
        l.arrays.0.push(md.clone());
        named.push((r.name.clone(), md.clone()));
        if r.fs.fs.is_some() {
            l.targets.push(Target {
                dev: md,
                spec: r.fs.clone(),
                what: format!("RAID {}", r.name),
            });
        }
    }
    for g in &plan.volume_groups {
        let pvs: Vec<PathBuf> = g.devices.iter().map(|n| dev_of(&named, n)).collect();
        reporter.report(Phase::Partition(format!(
            "LVM volume group {} on {} devices",
            g.name,
            pvs.len()
        )));
        run(Command::new("pvcreate").arg("-ff").arg("-y").args(&pvs))?;
        run(Command::new("vgcreate").arg(&g.name).args(&pvs))?;
        l.vgs.0.push(g.name.clone());
        for v in &g.volumes {
            let size = format!("{}b", v.size);
            run(Command::new("lvcreate")
                .args(["-y", "-W", "y", "-n", &v.name, "-L", &size, &g.name]))?;
            if v.fs.fs.is_some() {
                l.targets.push(Target {
                    dev: PathBuf::from(format!("/dev/{}/{}", g.name, v.name)),
                    spec: v.fs.clone(),
                    what: format!("LV {}/{}", g.name, v.name),
                });
            }
        }
    }
    Ok(l)
}

/// A filesystem made: what the template asked for, where, and its UUID.
struct Made {
    spec: FsSpec,
    fs: Fs,
    dev: PathBuf,
    uuid: String,
}

/// Makes every filesystem of the layout.
fn make_filesystems(targets: &[Target], reporter: &dyn Reporter) -> Result<Vec<Made>> {
    let mut made = Vec::new();
    for t in targets {
        let fs = t.spec.fs.expect("targets have a filesystem");
        reporter.report(Phase::Mkfs(format!(
            "{} on {} ({}){}",
            fs,
            t.what,
            t.dev.display(),
            t.spec
                .mount
                .as_deref()
                .map(|m| format!(" for {m}"))
                .unwrap_or_default()
        )));
        run(&mut mkfs_command(fs, &t.spec, &t.dev))?;
        let uuid = blkid_value(&blkid(&t.dev)?, "UUID").ok_or_else(|| {
            crate::Error::Tool(format!(
                "blkid finds no UUID on {} after mkfs",
                t.dev.display()
            ))
        })?;
        made.push(Made {
            spec: t.spec.clone(),
            fs,
            dev: t.dev.clone(),
            uuid,
        });
    }
    Ok(made)
}

/// Mounts every filesystem with a mount point under `mnt`, parents first.
fn mount_all(made: &[Made], mnt: &Path) -> Result<Mounts> {
    let mut order: Vec<&Made> = made.iter().filter(|m| m.spec.mount.is_some()).collect();
    order.sort_by_key(|m| {
        let p = m.spec.mount.as_deref().expect("filtered");
        p.trim_end_matches('/').matches('/').count()
    });
    let mut mounts = Mounts::default();
    for m in order {
        let at = mnt.join(
            m.spec
                .mount
                .as_deref()
                .expect("filtered")
                .trim_start_matches('/'),
        );
        // vfat cannot hold owners or modes; `quiet` makes it accept the chown and chmod the
        // apply engine does instead of failing them.
        let o = if m.fs == Fs::Vfat { "quiet" } else { "" };
        mounts
            .0
            .push(Mount::new(&m.dev, &at, Some(m.fs.name()), o)?);
    }
    Ok(mounts)
}

/// Applies the revision (its overrides composed in) to the mounted root with the updateclient
/// engine, which also writes the node state, overrides included.
fn transfer(
    source: &dyn RevisionSource,
    target: &crate::apply::source::Target,
    manifest: &Manifest,
    overlay: Overlay,
    made: &[Made],
    mnt: &Path,
    reporter: &dyn Reporter,
) -> Result<(u64, Vec<String>)> {
    let in_manifest: HashSet<&[u8]> = manifest.entries.iter().map(|e| e.path.as_slice()).collect();
    let mut patterns: Vec<String> = vec!["lost+found/".into()];
    patterns.extend(
        crate::excludes::ALWAYS_EXCLUDED
            .iter()
            .map(|s| s.to_string()),
    );
    // Mount points (and their parents) the image lacks must not be "deleted" by the engine.
    for m in made.iter().filter_map(|m| m.spec.mount.as_deref()) {
        let mut p = m.trim_matches('/');
        while !p.is_empty() {
            if !in_manifest.contains(p.as_bytes()) {
                patterns.push(format!("/{p}"));
            }
            p = p.rsplit_once('/').map_or("", |(a, _)| a);
        }
    }
    apply_to_root(source, target, manifest, overlay, mnt, &patterns, reporter)
}

/// Applies the revision (its overrides composed in: `manifest` and `overlay` from
/// [`overrides::for_node`]) to the empty root `root` with the updateclient engine, which also
/// writes the node state; paths matching `patterns` are left alone. Reports the transfer's
/// progress; returns the bytes fetched and the engine's warnings. An install's transfer, and
/// a diskless boot's (into a tmpfs).
pub(crate) fn apply_to_root(
    source: &dyn RevisionSource,
    target: &crate::apply::source::Target,
    manifest: &Manifest,
    overlay: Overlay,
    root: &Path,
    patterns: &[String],
    reporter: &dyn Reporter,
) -> Result<(u64, Vec<String>)> {
    let progress = TransferProgress {
        reporter,
        total: AtomicU64::new(0),
        done: AtomicU64::new(0),
        shown: AtomicU64::new(0),
    };
    let node = Node::open(root)?;
    let up = update::update(
        &node,
        target,
        manifest,
        Some(source),
        &UpdateOptions {
            action: NodeAction::Install,
            dry_run: false,
            no_delete: false,
            verify_local: false,
            excludes: Excludes::new(patterns)?,
            adopt: false,
            overlay: Some(overlay),
            before_writes: None,
            stage: None,
        },
        &progress,
    )?;
    let total = progress.total.load(Ordering::Relaxed);
    reporter.report(Phase::Transfer { done: total, total });
    Ok((up.bytes_fetched.max(total), up.warnings))
}

/// Runs the hooks of one stage, reporting each (the bootloader hook as its own phase).
struct HookRunner<'a> {
    dir: &'a Path,
    reporter: &'a dyn Reporter,
}

impl HookRunner<'_> {
    fn run(
        &self,
        stage: Stage,
        env: &HookEnv,
        chroot: Option<&Path>,
        report: &mut InstallReport,
    ) -> Result<()> {
        let chosen = hooks::select(self.dir, stage, &env.who)?;
        if stage == Stage::PostInstall && !chosen.iter().any(|h| h.what == "bootloader") {
            let w = "WARNING: no post-install hook named NN<class>.bootloader: no bootloader was installed".to_string();
            self.reporter.report(Phase::Bootloader(w.clone()));
            report.warnings.push(w);
        }
        for h in chosen {
            if h.what == "bootloader" {
                self.reporter.report(Phase::Bootloader(h.name.clone()));
            } else {
                self.reporter.report(Phase::Hooks(h.name.clone()));
            }
            let out = hooks::run(&h, env, chroot)?;
            for line in out.lines().filter(|l| l.contains("WARNING")) {
                report.warnings.push(format!("{}: {line}", h.name));
            }
            if !out.trim().is_empty() {
                self.reporter
                    .report(Phase::Hooks(format!("{}: {}", h.name, out.trim_end())));
            }
            report.hooks.push(h.name);
        }
        Ok(())
    }
}

fn install_inner(
    source: &dyn RevisionSource,
    opts: &InstallOptions,
    reporter: &dyn Reporter,
    started: Instant,
) -> Result<InstallReport> {
    if opts.disks.is_empty() {
        return Err(invalid("give the disk to install with --disk DEV|FILE"));
    }
    // ---- everything that can fail before a byte is written ----
    let facts = disk_facts(opts, reporter)?;
    let template = choose_template(opts, &facts, reporter)?;
    let sizes: Vec<u64> = facts.disks.iter().map(|d| d.size).collect();
    let plan = render(&template, &sizes)?;
    reporter.report(Phase::Plan(plan.table()));
    let target = source.resolve(&opts.image)?;
    reporter.report(Phase::Revision(target.name()));
    let image_manifest = source.manifest(&target.id)?;
    // The overrides are composed into the tree before anything is written: the engine applies
    // image and overrides in one pass, and the node state records them, so updateclient and
    // rollback lay them again (see `overrides`).
    let follow = overrides::names(
        opts.group.as_deref(),
        opts.hostname.as_deref().unwrap_or(""),
    );
    let (manifest, overlay) = overrides::for_node(
        source,
        image_manifest,
        follow,
        &[],
        &[],
        overrides::Composing::Install,
    )?;
    let any_file = opts
        .disks
        .iter()
        .map(|d| devices::is_block(d))
        .collect::<Result<Vec<bool>>>()?
        .contains(&false);
    check_tools(&plan, any_file)?;
    let hostname = opts.hostname.clone().unwrap_or_default();
    let mut laps = Laps(started);
    let mut report = InstallReport {
        class: template.class.clone(),
        revision: target.name(),
        plan: Some(plan.clone()),
        filesystems: Vec::new(),
        bytes: 0,
        hooks: Vec::new(),
        overrides: Vec::new(),
        warnings: Vec::new(),
        seconds: 0.0,
        times: Vec::new(),
    };
    report.times.push(laps.lap(Step::Plan));
    if opts.dry_run {
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }

    // ---- hooks: the directory given, the repository's `hooks` image, or the shipped ones ----
    let hooks_tmp = tempfile::Builder::new().prefix("aurum-hooks.").tempdir()?;
    let hooks_dir = match &opts.hooks {
        Some(d) => d.clone(),
        None => {
            let dir = hooks_tmp.path().to_path_buf();
            match overrides::checkout(source, "hooks", &dir)? {
                Some(rev) => reporter.report(Phase::Hooks(format!("hooks from image {rev}"))),
                None => hooks::write_shipped(&dir)?,
            }
            dir
        }
    };
    // Not a TempDir: its drop would delete recursively, into a filesystem still mounted if
    // an unmount failed. It is removed (empty) at the end.
    let mnt = tempfile::Builder::new()
        .prefix("aurum-install.")
        .tempdir()?
        .keep();
    let mut env = HookEnv {
        who: Identity {
            image: target.image.clone().unwrap_or_default(),
            group: opts.group.clone(),
            hostname: hostname.clone(),
        },
        root: mnt.clone(),
        revision: target.id.hex(),
        server: source.describe(),
        class: Some(template.class.clone()),
        firmware: Some(match facts.firmware {
            Firmware::Uefi => "uefi",
            Firmware::Bios => "bios",
        }),
        disk: None,
    };
    let hooks = HookRunner {
        dir: &hooks_dir,
        reporter,
    };
    let result = (|| -> Result<()> {
        hooks.run(Stage::PreInstall, &env, None, &mut report)?;
        report.times.push(laps.lap(Step::PreInstallHooks));
        let mut layout = partition(&opts.disks, &plan, &template, reporter)?;
        report.times.push(laps.lap(Step::Partition));
        let made = make_filesystems(&layout.targets, reporter)?;
        report.times.push(laps.lap(Step::Mkfs));
        report.filesystems = made
            .iter()
            .map(|m| {
                let at = m.spec.mount.clone().unwrap_or_else(|| m.fs.name().into());
                (at, m.uuid.clone())
            })
            .collect();
        let mounts = mount_all(&made, &mnt)?;
        let laid: Vec<String> = overlay.layers.iter().map(|r| r.name()).collect();
        let (bytes, warnings) =
            transfer(source, &target, &manifest, overlay, &made, &mnt, reporter)?;
        report.bytes = bytes;
        report.warnings.extend(warnings);
        for rev in laid {
            reporter.report(Phase::Overrides(rev.clone()));
            report.overrides.push(rev);
        }
        report.times.push(laps.lap(Step::Transfer));
        let rows: Vec<(FsSpec, String)> = made
            .iter()
            .map(|m| (m.spec.clone(), m.uuid.clone()))
            .collect();
        write_file(&mnt, "etc/fstab", &fstab(&rows))?;
        if !hostname.is_empty() {
            write_file(&mnt, "etc/hostname", &format!("{hostname}\n"))?;
        }
        if let Some(token) = &opts.token {
            write_token(&mnt, token)?;
        }
        report.times.push(laps.lap(Step::Configure));
        // Post-install hooks run chrooted, with /dev, /proc and /sys bound in.
        let boot_dev = layout
            .disks
            .first_mut()
            .ok_or_else(|| invalid("no disk to install on: give at least one --disk"))?
            .boot_device()?;
        env.disk = Some(boot_dev.clone());
        env.root = "/".into();
        let mut binds = Mounts::default();
        for d in ["dev", "proc", "sys"] {
            if mnt.join(d).is_dir() {
                binds
                    .0
                    .push(Mount::bind(Path::new(&format!("/{d}")), &mnt.join(d))?);
            }
        }
        hooks.run(Stage::PostInstall, &env, Some(&mnt), &mut report)?;
        report.times.push(laps.lap(Step::PostInstallHooks));
        // Released in this order on error too (locals drop in reverse order of declaration).
        drop(binds);
        drop(mounts);
        drop(layout);
        report.times.push(laps.lap(Step::Release));
        Ok(())
    })();
    let _ = std::fs::remove_dir(&mnt);
    result?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// A reporter that keeps every phase (for tests).
#[derive(Default)]
pub struct Recorder(pub Mutex<Vec<Phase>>);

impl Reporter for Recorder {
    fn report(&self, p: Phase) {
        self.0.lock().expect("recorder lock").push(p);
    }
}
