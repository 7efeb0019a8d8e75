//! Boot counting: a revision written onto a node's disk is on trial until a boot of it passes
//! its health checks, and a node whose new revision fails its boots or its checks goes back to
//! the revision before it by itself.
//!
//! aurum updates a node's root in place (one root filesystem, no A/B partitions), so the boot
//! loader cannot choose between revisions: what it chooses is a kernel. The counter has to be
//! the boot loader's own, since a revision that cannot boot never runs aurum to count; with
//! GRUB (BIOS and UEFI alike) it is in GRUB's environment block, the one file GRUB writes at
//! boot. The pieces:
//!
//! 1. Before an update on a node whose root has `/boot/grub/grub.cfg` ([`prepare`]), the kernel
//!    and initramfs it boots now (the fallback's, which the update may replace) are copied to
//!    `/boot/grub/aurum/`, and the kernel command line is kept.
//! 2. After the update committed ([`begin`]), `state.json` records the trial, `grubenv` gets
//!    `aurum_trial` and `aurum_tries=N`, and `/boot/grub/aurum.cfg` ([`grub_cfg`], sourced from
//!    `custom.cfg`, which Debian's and Fedora's generated `grub.cfg` read last) holds the
//!    counting and a menu entry `aurum-fallback`: the kept kernel with the kept command line
//!    and `aurum.fallback`. At each boot GRUB takes one from `aurum_tries` and saves it; when
//!    none is left it boots the fallback entry instead.
//! 3. Early at every boot `aurum boot` ([`boot`]) records the boot. On the fallback entry it
//!    puts the root back to the fallback revision from the node's own undo area (no network),
//!    ends the trial, and asks for a reboot into the restored root.
//! 4. `aurum health` on a trial boot ([`after_health`]) blesses the revision when the checks
//!    pass (it becomes last-known-good, the counter goes) or falls back at once when a
//!    required one fails.
//!
//! With systemd-boot (a node whose ESP, at `/efi`, `/boot/efi` or `/boot`, has
//! `loader/loader.conf`) the counter is the Boot Loader Specification's, in an entry's name
//! (`format::bootentry`): [`begin`] copies the new revision's kernel to the ESP, into a
//! fresh directory named for its content (`aurum/k-HASH/`), then writes the entry
//! `aurum-revision+N.conf` for it; the kept kernel (`aurum/fallback/`) gets the entry
//! `aurum-fallback.conf` (`aurum.fallback` on its command line), and `loader.conf`'s default
//! becomes `aurum-*`. A kernel an entry boots is never written over: a kill between the copy
//! and the entry leaves the entry before booting its own kernel ([`sd_point`]). systemd-boot
//! renames the entry at each boot (`+N-1-1`, ...); one at `+0` sorts after every other entry,
//! so the pattern picks the fallback entry. Blessing drops the counter (`aurum-revision.conf`), as `systemd-bless-boot`
//! would, and that entry stays the node's: the kernel systemd-boot boots must be on the ESP.
//!
//! Every outcome is recorded in `state.json` (`boot`) and reported to the server (action
//! `boot`, with a [`BootReport`]). The files in `/boot/grub` and on the ESP that aurum writes
//! are left alone by updates and captures (see `excludes`).

use std::fs;
use std::path::{Path, PathBuf};

use crate::apply::client::{self, Recovered, RollbackTo};
use crate::apply::health::{CheckStatus, HealthRecord};
use crate::apply::node::{Node, RevRef};
use crate::apply::source::RevisionSource;
use crate::apply::update::UpdateOptions;
use crate::error::{invalid, IoContext, Result};
use crate::excludes::Excludes;
use crate::format::bootentry::{self, Entry, EntryName};
use crate::format::grubenv::GrubEnv;
use crate::format::node::NodeState;
pub use crate::format::node::{BootOutcome, BootRecord, Bootloader, Trial};
use crate::format::report::{BootReport, NodeAction, NodeReport, Outcome};
use crate::progress::Progress;

/// GRUB's directory on a node's root.
pub const GRUB_DIR: &str = "boot/grub";
/// The kernel command line word of the fallback entry.
pub const FALLBACK_ARG: &str = "aurum.fallback";
/// Boots a revision is given when nothing says otherwise.
pub const DEFAULT_TRIES: u32 = 3;
/// The most boots GRUB's script counts down from (one digit: GRUB's script has no arithmetic).
pub const MAX_TRIES: u32 = 9;

const ENV: &str = "grubenv";
const CFG: &str = "aurum.cfg";
const CUSTOM: &str = "custom.cfg";
/// The kept kernel and initramfs, in GRUB's directory.
const KEPT: &str = "aurum";
/// The line of `custom.cfg` that reads aurum's.
const SOURCE_LINE: &str = "if [ -f ${prefix}/aurum.cfg ]; then source ${prefix}/aurum.cfg; fi";

/// Where a node's ESP may be mounted, relative to its root, in the order looked at.
const ESP_DIRS: &[&str] = &["efi", "boot/efi", "boot"];
/// aurum's entries on the ESP: the revision's (with the counter while on trial) and the
/// fallback's, and the pattern `loader.conf`'s `default` gets (it matches both; systemd-boot
/// takes the first match in its order, which puts `revision` before `fallback` and an entry
/// with no tries left after both).
const SD_ENTRY: &str = "aurum-revision";
const SD_FALLBACK: &str = "aurum-fallback";
const SD_DEFAULT: &str = "aurum-*";
/// The directory of the ESP's `aurum/` with the kept kernel of a trial; the revision's kernels
/// are in directories named for their content (`format::bootentry::kernel_dir`).
const SD_FALLBACK_DIR: &str = "fallback";

/// The ESP of `root` when the node boots with systemd-boot: the first of [`ESP_DIRS`] with
/// `loader/loader.conf` (`bootctl install` writes it).
fn esp(root: &Path) -> Option<PathBuf> {
    ESP_DIRS
        .iter()
        .map(|d| root.join(d))
        .find(|d| d.join("loader/loader.conf").is_file())
}

/// The boot loader of `root` that aurum counts boots with, if any: systemd-boot when the ESP
/// has its configuration, else GRUB when `/boot/grub/grub.cfg` exists.
pub fn bootloader(root: &Path) -> Option<Bootloader> {
    if esp(root).is_some() {
        return Some(Bootloader::SystemdBoot);
    }
    root.join(GRUB_DIR)
        .join("grub.cfg")
        .is_file()
        .then_some(Bootloader::Grub)
}

/// The name a boot loader goes by in messages.
fn loader_name(b: Bootloader) -> &'static str {
    match b {
        Bootloader::Grub => "GRUB",
        Bootloader::SystemdBoot => "systemd-boot",
    }
}

/// Where the kept kernel of a trial goes: GRUB's directory, or the ESP for systemd-boot
/// (which reads nothing else).
fn kept_dir(root: &Path, b: Bootloader) -> Result<PathBuf> {
    match b {
        Bootloader::Grub => Ok(root.join(GRUB_DIR).join(KEPT)),
        Bootloader::SystemdBoot => Ok(sd_esp(root)?.join(KEPT).join(SD_FALLBACK_DIR)),
    }
}

fn sd_esp(root: &Path) -> Result<PathBuf> {
    esp(root).ok_or_else(|| {
        invalid(format!(
            "{} has no ESP with loader/loader.conf at /efi, /boot/efi or /boot: mount the \
             node's ESP there (systemd-boot reads its entries from it)",
            root.display()
        ))
    })
}

/// Where systemd keeps `aurum-boot.service` enabled, relative to a node's root.
const BOOT_SERVICE_ENABLED: &str = "etc/systemd/system/sysinit.target.wants/aurum-boot.service";

/// The boots a revision gets on trial on `root`: `given`, else [`DEFAULT_TRIES`] when the
/// node runs `aurum boot` at startup (its unit is enabled), else 0. A trial on a node that
/// never runs `aurum boot` and `aurum health` would never be blessed, and after its tries
/// GRUB would boot the fallback entry (the old kernel) for good.
pub fn tries(root: &Path, given: Option<u32>) -> u32 {
    // The link, not its target: on a root mounted elsewhere it points into that root.
    let enabled = fs::symlink_metadata(root.join(BOOT_SERVICE_ENABLED)).is_ok();
    given.unwrap_or(if enabled { DEFAULT_TRIES } else { 0 })
}

/// A trial being prepared: what [`begin`] needs once the update committed.
pub struct Prepared {
    bootloader: Bootloader,
    fallback: RevRef,
    tries: u32,
    cmdline: String,
    initrd: bool,
}

/// The kernel command line the fallback entry boots with: the running kernel's on the node
/// itself, else (a root mounted elsewhere) the root's `/etc/kernel/cmdline` (systemd's
/// convention); GRUB's own words and aurum's are taken out.
fn cmdline(root: &Path) -> Result<String> {
    let file = if root == Path::new("/") {
        PathBuf::from("/proc/cmdline")
    } else {
        root.join("etc/kernel/cmdline")
    };
    let text = fs::read_to_string(&file).map_err(|e| {
        invalid(format!(
            "cannot read the kernel command line for the fallback boot entry from {} ({e}): \
             write it there, or update with --boot-tries 0 (no boot counting)",
            file.display()
        ))
    })?;
    Ok(text
        .split_whitespace()
        .filter(|w| {
            !w.starts_with("BOOT_IMAGE=") && !w.starts_with("initrd=") && *w != FALLBACK_ARG
        })
        .collect::<Vec<_>>()
        .join(" "))
}

/// The regular file at `rel` below `root` with its symlinks followed as the node follows
/// them, `root` being its `/`: an absolute target (`/boot/vmlinuz -> /boot/vmlinuz-6.1`) is
/// taken below `root`, never on the machine aurum runs on, and `..` stops at `root`. None
/// when there is no such file (or too many links).
fn follow(root: &Path, rel: &Path) -> Option<PathBuf> {
    use std::path::Component;
    fn parts(p: &Path) -> Vec<std::ffi::OsString> {
        p.components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_os_string()),
                Component::ParentDir => Some("..".into()),
                _ => None,
            })
            .collect()
    }
    let mut done: Vec<std::ffi::OsString> = Vec::new();
    let mut todo: std::collections::VecDeque<_> = parts(rel).into();
    let mut links = 0;
    while let Some(c) = todo.pop_front() {
        if c == ".." {
            done.pop();
            continue;
        }
        let here = root.join(done.iter().collect::<PathBuf>()).join(&c);
        let meta = fs::symlink_metadata(&here).ok()?;
        if !meta.file_type().is_symlink() {
            done.push(c);
            continue;
        }
        links += 1;
        if links > 40 {
            return None;
        }
        let target = fs::read_link(&here).ok()?;
        if target.is_absolute() {
            done.clear();
        }
        for t in parts(&target).into_iter().rev() {
            todo.push_front(t);
        }
    }
    let path = root.join(done.iter().collect::<PathBuf>());
    // No component of `path` is a symlink now.
    path.is_file().then_some(path)
}

/// The kernel and initramfs `root` boots: what `/boot/vmlinuz` (or `/vmlinuz`) points to,
/// else the newest `/boot/vmlinuz-*`; the initramfs of the same version. Symlinks are
/// followed within `root` ([`follow`]).
fn kernel(root: &Path) -> Result<(PathBuf, Option<PathBuf>)> {
    let boot = root.join("boot");
    let linked = ["boot/vmlinuz", "vmlinuz"]
        .iter()
        .find_map(|l| follow(root, Path::new(l)));
    let kernel = match linked {
        Some(k) => k,
        None => {
            let mut found: Vec<PathBuf> = fs::read_dir(&boot)
                .at(&boot)?
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("vmlinuz-"))
                .filter_map(|e| follow(root, &Path::new("boot").join(e.file_name())))
                .collect();
            found.sort_by(|a, b| version_cmp(&a.to_string_lossy(), &b.to_string_lossy()));
            found.pop().ok_or_else(|| {
                invalid(format!(
                    "{} holds no kernel (vmlinuz or vmlinuz-VERSION) for the fallback boot \
                     entry: update with --boot-tries 0 (no boot counting)",
                    boot.display()
                ))
            })?
        }
    };
    let name = kernel
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let version = name.strip_prefix("vmlinuz-");
    let mut candidates = Vec::new();
    if let Some(v) = version {
        candidates.push(format!("boot/initrd.img-{v}"));
        candidates.push(format!("boot/initramfs-{v}.img"));
    }
    candidates.push("boot/initrd.img".into());
    candidates.push("initrd.img".into());
    let initrd = candidates
        .iter()
        .find_map(|rel| follow(root, Path::new(rel)));
    Ok((kernel, initrd))
}

/// Orders version strings by their numbers (`vmlinuz-6.1.0-9` before `vmlinuz-6.1.0-10`).
fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let parts = |s: &str| -> Vec<(u64, String)> {
        s.split(|c: char| !c.is_ascii_alphanumeric())
            .map(|p| (p.parse().unwrap_or(0), p.to_string()))
            .collect()
    };
    parts(a).cmp(&parts(b))
}

/// Writes `data` to `path` durably, with `mode` when given.
fn durable_mode(path: &Path, data: &[u8], mode: Option<u32>) -> Result<()> {
    crate::sys::write_atomic(
        path,
        data,
        crate::sys::WriteOpts {
            durable: true,
            mode,
            ..Default::default()
        },
    )
}

fn durable(path: &Path, data: &[u8]) -> Result<()> {
    durable_mode(path, data, Some(0o644))
}

/// [`durable`] on the ESP, with no mode: vfat holds none, and a chmod there fails unless it
/// is mounted with `quiet` (the shipped classes mount it `umask=0077`).
fn on_esp(path: &Path, data: &[u8]) -> Result<()> {
    durable_mode(path, data, None)
}

/// The mode files get in `b`'s directories.
fn mode_for(b: Bootloader) -> Option<u32> {
    match b {
        Bootloader::Grub => Some(0o644),
        Bootloader::SystemdBoot => None,
    }
}

/// Copies the kernel and initramfs `root` boots ([`kernel`]) into `dir` as `vmlinuz` and
/// `initrd.img`; whether there was an initramfs.
fn copy_kernel(root: &Path, dir: &Path, mode: Option<u32>) -> Result<bool> {
    let (vmlinuz, initrd) = kernel(root)?;
    fs::create_dir_all(dir).at(dir)?;
    durable_mode(
        &dir.join("vmlinuz"),
        &fs::read(&vmlinuz).at(&vmlinuz)?,
        mode,
    )?;
    match &initrd {
        Some(i) => durable_mode(&dir.join("initrd.img"), &fs::read(i).at(i)?, mode)?,
        None => remove_if_there(&dir.join("initrd.img"))?,
    }
    Ok(initrd.is_some())
}

/// Before an update of `node` that puts a revision on trial for `tries` boots: keeps the
/// kernel and initramfs the node boots now for the fallback entry. `None` when there is no
/// trial to prepare: no boot counting asked (`tries` 0), a boot loader aurum does not count
/// with, or a node with no revision yet to fall back to. A node already on trial keeps the
/// fallback of that trial (the revision before it was never blessed).
pub fn prepare(node: &Node, tries: u32) -> Result<Option<Prepared>> {
    let Some(bl) = bootloader(&node.root).filter(|_| tries > 0) else {
        return Ok(None);
    };
    if tries > MAX_TRIES {
        return Err(invalid(format!(
            "--boot-tries {tries}: aurum counts up to {MAX_TRIES} boots (GRUB's script has \
             no arithmetic)"
        )));
    }
    let state = node.state()?;
    let Some(current) = state.current.clone() else {
        return Ok(None);
    };
    let kept = kept_dir(&node.root, bl)?;
    if let Some(t) = state.trial {
        return Ok(Some(Prepared {
            bootloader: bl,
            fallback: t.fallback,
            tries,
            cmdline: cmdline(&node.root)?,
            initrd: kept.join("initrd.img").is_file(),
        }));
    }
    let initrd = copy_kernel(&node.root, &kept, mode_for(bl))?;
    Ok(Some(Prepared {
        bootloader: bl,
        fallback: current,
        tries,
        cmdline: cmdline(&node.root)?,
        initrd,
    }))
}

/// aurum's part of GRUB's configuration (`/boot/grub/aurum.cfg`): while `aurum_trial` is set,
/// one boot is taken from `aurum_tries` and saved before the menu; with none left the default
/// entry becomes `aurum-fallback`, the kept kernel with `aurum.fallback` on its command line.
/// GRUB's script has no arithmetic, so the count goes down through a chain of string tests.
pub fn grub_cfg(fallback: &RevRef, cmdline: &str, initrd: bool) -> String {
    let mut s = String::from(
        "# Written by aurum: boot counting for a revision on trial (see `aurum node-status`).\n\
         # aurum rewrites this file; edits are lost.\n\
         if [ -s ${prefix}/grubenv ]; then\n  load_env --file ${prefix}/grubenv aurum_trial aurum_tries\nfi\n\
         if [ -n \"${aurum_trial}\" ]; then\n  if [ \"${aurum_tries}\" = 0 ]; then\n    set default=aurum-fallback\n",
    );
    for n in 1..=MAX_TRIES {
        s.push_str(&format!(
            "  elif [ \"${{aurum_tries}}\" = {n} ]; then\n    set aurum_tries={}\n    save_env --file ${{prefix}}/grubenv aurum_tries\n",
            n - 1
        ));
    }
    s.push_str("  else\n    set default=aurum-fallback\n  fi\nfi\n");
    // Menu titles are single-quoted: a quote in a revision name must not end them.
    let title = format!("aurum: fall back to {}", fallback.name()).replace('\'', "");
    s.push_str(&format!(
        "menuentry '{title}' --id aurum-fallback {{\n  linux ${{prefix}}/{KEPT}/vmlinuz {cmdline} {FALLBACK_ARG}\n"
    ));
    if initrd {
        s.push_str(&format!("  initrd ${{prefix}}/{KEPT}/initrd.img\n"));
    }
    s.push_str("}\n");
    s
}

fn env_path(root: &Path) -> PathBuf {
    root.join(GRUB_DIR).join(ENV)
}

fn read_env(root: &Path) -> Result<GrubEnv> {
    let p = env_path(root);
    match fs::read(&p) {
        Ok(b) => GrubEnv::decode(&b, &p.display().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(GrubEnv::new()),
        Err(e) => Err(e).at(&p),
    }
}

/// Makes `custom.cfg` read `aurum.cfg`: created when there is none, the line added to one
/// the image or an administrator wrote.
fn source_from_custom(grub: &Path) -> Result<()> {
    let p = grub.join(CUSTOM);
    let text = match fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).at(&p),
    };
    if text.lines().any(|l| l.trim() == SOURCE_LINE) {
        return Ok(());
    }
    let mut new = text;
    if !new.is_empty() && !new.ends_with('\n') {
        new.push('\n');
    }
    new.push_str(SOURCE_LINE);
    new.push('\n');
    durable(&p, new.as_bytes())
}

/// After the update that [`prepare`] prepared committed: puts the node's new revision on
/// trial. `None` when the update left the node on the fallback's tree (nothing to try).
pub fn begin(node: &Node, p: Prepared) -> Result<Option<Trial>> {
    let mut state = node.state()?;
    let Some(revision) = state.current.clone() else {
        return Ok(None);
    };
    if revision.same_tree(&p.fallback) {
        if state.trial.is_some() {
            end_trial(node, false)?;
            state = node.state()?;
            state.trial = None;
            node.save_state(&state)?;
        }
        return Ok(None);
    }
    let trial = Trial {
        revision: revision.clone(),
        fallback: p.fallback.clone(),
        tries: p.tries,
        bootloader: p.bootloader,
        started: crate::catalog::now(),
    };
    match p.bootloader {
        Bootloader::Grub => {
            let grub = node.root.join(GRUB_DIR);
            durable(
                &grub.join(CFG),
                grub_cfg(&p.fallback, &p.cmdline, p.initrd).as_bytes(),
            )?;
            source_from_custom(&grub)?;
            // The state first: a trial the state names and GRUB does not count ends at the
            // next boot as a trial boot would; a counter without a state trial is cleared by
            // `aurum boot`.
            state.trial = Some(trial.clone());
            node.save_state(&state)?;
            let mut env = read_env(&node.root)?;
            env.set("aurum_trial", &revision.name())?;
            env.set("aurum_tries", &p.tries.to_string())?;
            durable(&env_path(&node.root), env.encode())?;
        }
        Bootloader::SystemdBoot => {
            state.trial = Some(trial.clone());
            node.save_state(&state)?;
            sd_begin(node, &p, &revision)?;
        }
    }
    Ok(Some(trial))
}

/// The entries of `esp`'s `loader/entries` that are aurum's revision entry (with or without
/// a counter), by file name.
fn sd_revision_entries(esp: &Path) -> Result<Vec<(String, EntryName)>> {
    let mut found: Vec<(String, EntryName)> = sd_entries(esp)?
        .into_iter()
        .filter(|(_, n)| n.name == SD_ENTRY)
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(found)
}

/// aurum's entries in `esp`'s `loader/entries` (file names that parse as one), unsorted.
fn sd_entries(esp: &Path) -> Result<Vec<(String, EntryName)>> {
    let dir = esp.join("loader/entries");
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).at(&dir),
    };
    let mut found = Vec::new();
    for e in rd {
        let file = e.at(&dir)?.file_name().to_string_lossy().into_owned();
        if let Some(n) = EntryName::parse(&file) {
            found.push((file, n));
        }
    }
    Ok(found)
}

fn remove_if_there(p: &Path) -> Result<()> {
    match fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).at(p),
    }
}

/// An entry booting `dir` (a directory under the ESP's `aurum/`).
fn sd_entry(title: String, dir: &str, initrd: bool, options: String) -> Entry {
    Entry {
        title,
        linux: format!("/{KEPT}/{dir}/vmlinuz"),
        initrd: initrd.then(|| format!("/{KEPT}/{dir}/initrd.img")),
        options,
    }
}

/// systemd-boot's part of [`begin`]: the fallback entry for the kept kernel, `loader.conf`'s
/// default, then the revision's kernel and its entry with the counter ([`sd_point`]): until
/// that entry is written the node boots as before.
fn sd_begin(node: &Node, p: &Prepared, revision: &RevRef) -> Result<()> {
    let esp = sd_esp(&node.root)?;
    let entries = esp.join("loader/entries");
    fs::create_dir_all(&entries).at(&entries)?;
    let fallback = sd_entry(
        format!("aurum: fall back to {}", p.fallback.name()),
        SD_FALLBACK_DIR,
        p.initrd,
        format!("{} {FALLBACK_ARG}", p.cmdline),
    );
    on_esp(
        &entries.join(EntryName::plain(SD_FALLBACK).file()),
        fallback.encode().as_bytes(),
    )?;
    let conf = esp.join("loader/loader.conf");
    let text = fs::read_to_string(&conf).at(&conf)?;
    let new = bootentry::set_default(&text, SD_DEFAULT);
    if new != text {
        on_esp(&conf, new.as_bytes())?;
    }
    sd_point(
        &node.root,
        &esp,
        &EntryName::counting(SD_ENTRY, p.tries),
        format!("aurum: {}", revision.name()),
        p.cmdline.clone(),
    )
}

/// The directories under the ESP's `aurum/` that an entry of `loader/entries` boots (any
/// entry's, so that a directory is never taken from under one).
fn sd_named_dirs(esp: &Path) -> Result<Vec<String>> {
    let dir = esp.join("loader/entries");
    let mut named = Vec::new();
    for (file, _) in sd_entries(esp)? {
        // An entry that cannot be read stops the cleanup: taken as naming nothing, the kernel
        // it boots would be removed.
        let path = dir.join(&file);
        let text = fs::read_to_string(&path).at(&path)?;
        if let Some(d) = Entry::decode(&text, &file)
            .ok()
            .and_then(|e| e.aurum_dir().map(String::from))
        {
            named.push(d);
        }
    }
    Ok(named)
}

/// Puts the kernel and initramfs `root` boots ([`kernel`]) on `esp` for aurum's revision
/// entry, in a directory of their own under `aurum/`, named for their content
/// ([`bootentry::kernel_dir`]), and durable before any entry names it: the files an entry
/// boots are never written over, so a kill at any moment leaves every entry booting the
/// kernel it was written for. A directory an entry names already holds that content and is
/// used as it is; one that none names is a leftover of a killed copy and is made again.
/// Returns the directory's name and whether there is an initramfs.
fn sd_install_kernel(root: &Path, esp: &Path) -> Result<(String, bool)> {
    let (vmlinuz, initrd) = kernel(root)?;
    let k = fs::read(&vmlinuz).at(&vmlinuz)?;
    let i = match &initrd {
        Some(p) => Some(fs::read(p).at(p)?),
        None => None,
    };
    let name = bootentry::kernel_dir(&k, i.as_deref());
    if sd_named_dirs(esp)?.contains(&name) {
        return Ok((name, i.is_some()));
    }
    let kept = esp.join(KEPT);
    let dir = kept.join(&name);
    remove_dir_if_there(&dir)?;
    fs::create_dir_all(&dir).at(&dir)?;
    on_esp(&dir.join("vmlinuz"), &k)?;
    if let Some(i) = &i {
        on_esp(&dir.join("initrd.img"), i)?;
    }
    crate::sys::sync_dir(&kept)?;
    Ok((name, i.is_some()))
}

fn remove_dir_if_there(p: &Path) -> Result<()> {
    match fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).at(p),
    }
}

/// Makes aurum's revision entry `name` boot the kernel `root` has now, in the order that
/// keeps every moment bootable: the kernel into a fresh directory ([`sd_install_kernel`]),
/// the entry written, the revision entries before it removed, then the directories under
/// `aurum/` no entry boots any more (the fallback's is the trial's, ended by [`sd_end`]).
fn sd_point(
    root: &Path,
    esp: &Path,
    name: &EntryName,
    title: String,
    options: String,
) -> Result<()> {
    let entries = esp.join("loader/entries");
    fs::create_dir_all(&entries).at(&entries)?;
    let old = sd_revision_entries(esp)?;
    let (dir, initrd) = sd_install_kernel(root, esp)?;
    let file = name.file();
    let entry = sd_entry(title, &dir, initrd, options);
    on_esp(&entries.join(&file), entry.encode().as_bytes())?;
    let mut removed = false;
    for (f, _) in old.iter().filter(|(f, _)| *f != file) {
        remove_if_there(&entries.join(f))?;
        removed = true;
    }
    if removed {
        crate::sys::sync_dir(&entries)?;
    }
    let named = sd_named_dirs(esp)?;
    let kept = esp.join(KEPT);
    let rd = match fs::read_dir(&kept) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).at(&kept),
    };
    for e in rd {
        let e = e.at(&kept)?;
        let d = e.file_name().to_string_lossy().into_owned();
        if d != SD_FALLBACK_DIR && !named.contains(&d) && e.path().is_dir() {
            remove_dir_if_there(&e.path())?;
        }
    }
    Ok(())
}

/// systemd-boot's end of a trial. Blessed: the counter is dropped from the entry's name, as
/// `systemd-bless-boot` does, and the entry stays the node's. Otherwise (fallen back, or
/// ended by a rollback or `mark-good`): the revision entry is written anew for the kernel the
/// root has now. Either way the fallback entry and its kernel go.
fn sd_end(node: &Node, blessed: bool) -> Result<()> {
    let Some(esp) = esp(&node.root) else {
        return Ok(());
    };
    let entries = esp.join("loader/entries");
    let found = sd_revision_entries(&esp)?;
    let counted = found.iter().any(|(_, n)| n.left.is_some());
    if blessed && counted {
        for (file, n) in &found {
            if n.left.is_some() {
                let to = entries.join(n.blessed().file());
                fs::rename(entries.join(file), &to).at(&to)?;
                crate::sys::sync_dir(&entries)?;
            }
        }
    } else if counted || blessed {
        // Not blessed: the entry goes back to the kernel the root has now. (Blessed with no
        // counting entry does not happen from a boot: `boot` finishes such a trial's
        // beginning instead of counting the boot. `mark-good` may: the administrator vouches
        // for the revision, and its entry must boot the revision's kernel.)
        let old = found
            .iter()
            .find_map(|(f, _)| Entry::decode(&fs::read_to_string(entries.join(f)).ok()?, f).ok());
        let options = match old {
            Some(e) => e.options,
            None => cmdline(&node.root)?,
        };
        let rev = node.state()?.current.map(|r| r.name()).unwrap_or_default();
        sd_point(
            &node.root,
            &esp,
            &EntryName::plain(SD_ENTRY),
            format!("aurum: {rev}"),
            options,
        )?;
    }
    remove_if_there(&entries.join(EntryName::plain(SD_FALLBACK).file()))?;
    let _ = fs::remove_dir_all(esp.join(KEPT).join(SD_FALLBACK_DIR));
    Ok(())
}

/// The boots left to the revision on trial, by the boot loader's counter.
fn tries_left(root: &Path, b: Bootloader) -> Result<Option<u32>> {
    Ok(match b {
        Bootloader::Grub => read_env(root)?
            .get("aurum_tries")
            .and_then(|v| v.parse().ok()),
        Bootloader::SystemdBoot => match esp(root) {
            Some(esp) => sd_revision_entries(&esp)?
                .into_iter()
                .find_map(|(_, n)| n.left),
            None => None,
        },
    })
}

/// Takes the counter out of the boot loader's files and aurum's fallback entry out of its
/// configuration, and frees the kept kernel; `blessed`: the revision on trial passed.
fn end_trial(node: &Node, blessed: bool) -> Result<()> {
    sd_end(node, blessed)?;
    let grub = node.root.join(GRUB_DIR);
    let mut env = read_env(&node.root)?;
    let a = env.unset("aurum_trial");
    let b = env.unset("aurum_tries");
    if a || b {
        durable(&env_path(&node.root), env.encode())?;
    }
    for f in [grub.join(CFG)] {
        match fs::remove_file(&f) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).at(&f),
        }
    }
    let _ = fs::remove_dir_all(grub.join(KEPT));
    Ok(())
}

/// After the root changed with no trial begun (an update without boot tries, a rollback): a
/// systemd-boot node that boots aurum's blessed entry gets the root's kernel copied to the
/// ESP again and the entry named for the revision, so it never boots a kernel whose modules
/// its root no longer has. GRUB reads the root's own kernel: nothing to do for it.
pub fn refresh(node: &Node) -> Result<()> {
    let Some(esp) = esp(&node.root) else {
        return Ok(());
    };
    let name = EntryName::plain(SD_ENTRY).file();
    let path = esp.join("loader/entries").join(&name);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).at(&path),
    };
    let state = node.state()?;
    if state.trial.is_some() {
        return Ok(());
    }
    let options = match Entry::decode(&text, &name) {
        Ok(e) => e.options,
        Err(_) => cmdline(&node.root)?,
    };
    let rev = state.current.map(|r| r.name()).unwrap_or_default();
    sd_point(
        &node.root,
        &esp,
        &EntryName::plain(SD_ENTRY),
        format!("aurum: {rev}"),
        options,
    )
}

/// Ends a trial without falling back (a rollback or `mark-good` chose the revision): the
/// counter and aurum's entry go, the state names no trial.
pub fn cancel(node: &Node) -> Result<()> {
    let mut state = node.state()?;
    if state.trial.take().is_none() {
        return Ok(());
    }
    node.save_state(&state)?;
    end_trial(node, false)
}

/// This boot: the kernel's command line and boot id (on the node, `/proc`'s).
pub struct ThisBoot {
    pub cmdline: String,
    pub boot_id: String,
}

impl ThisBoot {
    /// The running kernel's.
    pub fn running() -> Result<ThisBoot> {
        let read = |p: &str| fs::read_to_string(p).at(Path::new(p));
        Ok(ThisBoot {
            cmdline: read("/proc/cmdline")?,
            boot_id: read("/proc/sys/kernel/random/boot_id")?.trim().to_string(),
        })
    }

    fn fallback_entry(&self) -> bool {
        self.cmdline.split_whitespace().any(|w| w == FALLBACK_ARG)
    }

    /// The record of this boot, now, on a node whose state is `state` (the revision it runs):
    /// `outcome`, the revision on trial, and why.
    fn record(
        &self,
        state: &NodeState,
        outcome: BootOutcome,
        trial: Option<RevRef>,
        reason: String,
    ) -> BootRecord {
        BootRecord {
            time: crate::catalog::now(),
            boot_id: self.boot_id.clone(),
            revision: state.current.clone(),
            outcome,
            tries_left: None,
            trial,
            reason,
        }
    }
}

/// What [`boot`] and [`after_health`] work with: this boot, and what a fallback needs.
pub struct BootContext<'a> {
    pub this: ThisBoot,
    /// Where to report, and where a fallback fetches what the node lacks (a fallback from
    /// the undo area needs none).
    pub source: Option<&'a dyn RevisionSource>,
    /// The update excludes a fallback honours (node.toml's, as for `aurum rollback`).
    pub excludes: Excludes,
    pub progress: &'a dyn Progress,
}

/// What [`boot`] or [`after_health`] did.
#[derive(Debug, serde::Serialize)]
pub struct BootResult {
    pub record: BootRecord,
    /// The root was put back to the fallback revision: the running system is the revision
    /// that failed, and the node must reboot into the restored root.
    pub reboot: bool,
}

/// `aurum boot`, early at every boot: first brings a root a kill left between two revisions
/// to one ([`client::recover`]); records the boot; on the boot loader's fallback entry (the
/// revision on trial used up its boots) puts the root back to the fallback revision.
/// When that fails (no server for what the undo area lacks, a full disk), the boot is still
/// recorded and reported, as `booted` with the error as its reason, after the fallback entry
/// was still honoured if it can be; the root's journal is then still there (the caller's
/// sign that the root is between two revisions).
pub fn boot(node: &Node, cx: &BootContext) -> Result<BootResult> {
    match recover(node, cx) {
        Ok(recovered) => boot_on_one_revision(node, cx, recovered),
        Err(e) => boot_unrecovered(node, cx, &e),
    }
}

/// [`boot`] when [`recover`] failed with `e`: the trial that used up its boots (the fallback
/// entry, or a fallback a kill interrupted) still falls back when that works; else the boot
/// is recorded as `booted`, the error its reason.
fn boot_unrecovered(node: &Node, cx: &BootContext, e: &crate::Error) -> Result<BootResult> {
    let this = &cx.this;
    let state = node.state()?;
    let mut reason = format!("bringing the root to one revision failed: {e}");
    let trial = match (interrupted_fallback(&state), state.trial.clone()) {
        (Some(t), _) => Some(t),
        (None, Some(t)) if this.fallback_entry() => Some(t),
        _ => None,
    };
    if let Some(t) = trial {
        let why = format!(
            "{reason}; {} did not pass its trial: {} booted the fallback entry",
            t.revision.name(),
            loader_name(t.bootloader)
        );
        match fall_back(node, cx, &t, why) {
            Ok(result) => {
                report(cx.source, &result.record);
                return Ok(result);
            }
            Err(f) => {
                reason = format!(
                    "{reason}; falling back from {} failed too: {f}",
                    t.revision.name()
                )
            }
        }
    }
    let state = node.state()?;
    let trial = state.trial.clone().map(|t| t.revision);
    let record = this.record(&state, BootOutcome::Booted, trial, reason);
    save_record(node, &record)?;
    report(cx.source, &record);
    Ok(BootResult {
        record,
        reboot: false,
    })
}

/// [`boot`] on a root at one revision; `recovered`: what [`recover`] did to bring it there.
fn boot_on_one_revision(
    node: &Node,
    cx: &BootContext,
    recovered: Option<Recovered>,
) -> Result<BootResult> {
    let this = &cx.this;
    let state = node.state()?;
    if let Some(t) = interrupted_fallback(&state) {
        // The kernel this boot runs is the root's (GRUB), the kept one (the fallback entry),
        // or with systemd-boot maybe the trial's still: then the node reboots into its own.
        let reboot = t.bootloader == Bootloader::SystemdBoot && !this.fallback_entry();
        let result = finish_fallback(node, cx, &t, reboot)?;
        let result = noted(node, result, recovered.as_ref())?;
        report(cx.source, &result.record);
        return Ok(result);
    }
    let result = match state.trial.clone() {
        Some(t) if this.fallback_entry() => {
            let reason = format!(
                "{} did not pass its health checks in {} boot{}: {} booted the fallback entry",
                t.revision.name(),
                t.tries,
                if t.tries == 1 { "" } else { "s" },
                loader_name(t.bootloader)
            );
            fall_back(node, cx, &t, reason)?
        }
        Some(t)
            if t.bootloader == Bootloader::SystemdBoot
                && esp(&node.root).is_some()
                && tries_left(&node.root, t.bootloader)?.is_none() =>
        {
            // The trial's counting entry was never written (`begin` was killed before it):
            // this boot ran the entry before it, another kernel on the trial's root. It is not
            // the trial's boot, and a kernel that never booted must not be blessed: the
            // beginning is finished (the fallback entry, the counting entry for the root's
            // kernel) and the node reboots through that entry.
            let p = Prepared {
                bootloader: t.bootloader,
                fallback: t.fallback.clone(),
                tries: t.tries,
                cmdline: cmdline(&node.root)?,
                initrd: kept_dir(&node.root, t.bootloader)?
                    .join("initrd.img")
                    .is_file(),
            };
            sd_begin(node, &p, &t.revision)?;
            let reason = format!(
                "the trial of {} had no counting entry (its beginning was interrupted): \
                 written now; the trial starts at the next boot",
                t.revision.name()
            );
            let record = this.record(
                &state,
                BootOutcome::Booted,
                Some(t.revision.clone()),
                reason,
            );
            save_record(node, &record)?;
            BootResult {
                record,
                reboot: true,
            }
        }
        Some(t) => {
            let tries_left = tries_left(&node.root, t.bootloader)?;
            let record = BootRecord {
                tries_left,
                ..this.record(&state, BootOutcome::Trial, Some(t.revision), String::new())
            };
            save_record(node, &record)?;
            BootResult {
                record,
                reboot: false,
            }
        }
        None => {
            // A counter no trial explains (the state write of a trial that then failed, a
            // root restored from elsewhere) must not send a later boot to a stale entry.
            let stale_entry = match esp(&node.root) {
                Some(esp) => sd_revision_entries(&esp)?
                    .iter()
                    .any(|(_, n)| n.left.is_some()),
                None => false,
            };
            if read_env(&node.root)?.get("aurum_trial").is_some() || stale_entry {
                end_trial(node, false)?;
            }
            let record = this.record(&state, BootOutcome::Booted, None, String::new());
            save_record(node, &record)?;
            BootResult {
                record,
                reboot: false,
            }
        }
    };
    let result = noted(node, result, recovered.as_ref())?;
    report(cx.source, &result.record);
    Ok(result)
}

/// Whether `aurum health` may bring a root a kill left between two revisions to one (see
/// [`client::recover`]), which rewrites the root under whatever runs and reboots the node: only
/// as part of the boot. That is when `aurum boot` recorded this boot (the record has its boot
/// id), no health run of this boot was recorded yet, and the interrupted run's journal was
/// written before the boot was recorded (a kill before the boot, whose recovery in `aurum
/// boot` failed or did not run). An update killed on the running system, a later health run
/// (Slurm's every few minutes) and a node `aurum boot` does not run on leave the root to the
/// administrator.
pub fn health_may_recover(node: &Node, this: &ThisBoot) -> Result<bool> {
    let state = node.state()?;
    let Some(b) = &state.boot else {
        return Ok(false);
    };
    if b.boot_id != this.boot_id
        || state
            .health
            .as_ref()
            .is_some_and(|h| h.boot_id.as_deref() == Some(this.boot_id.as_str()))
    {
        return Ok(false);
    }
    let journal = node.dir.join("journal.json");
    let written = match fs::metadata(&journal) {
        Ok(m) => m.modified().at(&journal)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).at(&journal),
    };
    let written = written
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    // Seconds both: a journal of the same second as the record may be of after it.
    Ok(written < b.time)
}

/// [`client::recover`] with this boot's source, excludes and progress.
pub fn recover(node: &Node, cx: &BootContext) -> Result<Option<Recovered>> {
    client::recover(node, cx.source, cx.excludes.clone(), cx.progress)
}

/// `result` after [`recover`] brought the root to one revision first: what it did goes in
/// front of the reason, and the node reboots, since the system running booted the root
/// between two revisions; for the same reason the boot is no trial boot (nothing is blessed
/// on it, the boot loader counts the next). When recover only finished an update that had
/// committed, the root was whole: the reason says so, nothing else changes.
fn noted(node: &Node, mut result: BootResult, recovered: Option<&Recovered>) -> Result<BootResult> {
    let Some(r) = recovered else {
        return Ok(result);
    };
    let record = &mut result.record;
    record.reason = if record.reason.is_empty() {
        r.describe()
    } else {
        format!("{}; {}", r.describe(), record.reason)
    };
    // An update killed after its commit left the root whole at its revision: the system
    // running booted that, and this boot counts as it would have.
    if !r.finished {
        if record.outcome == BootOutcome::Trial {
            record.outcome = BootOutcome::Booted;
        }
        result.reboot = true;
    }
    save_record(node, &result.record)?;
    Ok(result)
}

/// After `aurum health` on `node`: on a trial boot (the boot `aurum boot` recorded as one,
/// in this boot), blesses the revision when `health` is healthy, else falls back to the
/// fallback revision. `None` when this is no trial boot. `recovered`: what [`recover`] did
/// before the checks ran; then the system running booted a root between two revisions, and
/// the node is asked to reboot, nothing blessed nor sent back on this boot.
pub fn after_health(
    node: &Node,
    cx: &BootContext,
    health: &HealthRecord,
    recovered: Option<&Recovered>,
) -> Result<Option<BootResult>> {
    let this = &cx.this;
    let state = node.state()?;
    if let Some(t) = interrupted_fallback(&state) {
        // This system may be the revision that failed, its root put back under it.
        let result = finish_fallback(node, cx, &t, true)?;
        let result = noted(node, result, recovered)?;
        report(cx.source, &result.record);
        return Ok(Some(result));
    }
    if recovered.is_some_and(|r| !r.finished) {
        let trial = state.trial.clone().map(|t| t.revision);
        let record = this.record(&state, BootOutcome::Booted, trial, String::new());
        let result = BootResult {
            record,
            reboot: true,
        };
        let result = noted(node, result, recovered)?;
        report(cx.source, &result.record);
        return Ok(Some(result));
    }
    let (Some(t), Some(b)) = (state.trial.clone(), state.boot.clone()) else {
        return Ok(None);
    };
    let trial_boot = b.outcome == BootOutcome::Trial
        && b.boot_id == this.boot_id
        && b.trial.as_ref().is_some_and(|r| r.same_tree(&t.revision));
    if !trial_boot {
        return Ok(None);
    }
    let result = if health.healthy {
        end_trial(node, true)?;
        let mut state = node.state()?;
        state.trial = None;
        state.last_known_good = Some(t.revision.clone());
        let record = BootRecord {
            time: crate::catalog::now(),
            outcome: BootOutcome::Blessed,
            trial: Some(t.revision.clone()),
            ..b
        };
        state.boot = Some(record.clone());
        node.save_state(&state)?;
        BootResult {
            record,
            reboot: false,
        }
    } else {
        let failed: Vec<String> = health
            .checks
            .iter()
            .filter(|c| c.required && c.status != CheckStatus::Pass)
            .map(|c| {
                let last = c.output.lines().last().unwrap_or("").trim();
                let how = match (c.status, c.exit) {
                    (CheckStatus::Timeout, _) => "timed out".to_string(),
                    (CheckStatus::Error, _) => "could not run".to_string(),
                    (_, Some(code)) => format!("exit {code}"),
                    _ => "killed".to_string(),
                };
                match last.is_empty() {
                    true => format!("{} ({how})", c.name),
                    false => format!("{} ({how}: {last})", c.name),
                }
            })
            .collect();
        let reason = format!(
            "{} failed its health checks: {}",
            t.revision.name(),
            failed.join(", ")
        );
        fall_back(node, cx, &t, reason)?
    };
    report(cx.source, &result.record);
    Ok(Some(result))
}

/// The trial of `state` when it names a revision the root is no longer on. A fallback puts
/// the root back (the rollback records the fallback revision as `current`) before it ends the
/// trial, and an update during a trial commits before it begins the next: a kill between the
/// two leaves exactly this, and that trial must then end, never be counted nor blessed on a
/// root that is not its revision's.
fn interrupted_fallback(state: &NodeState) -> Option<Trial> {
    let t = state.trial.clone()?;
    let current = state.current.as_ref()?;
    (!current.same_tree(&t.revision)).then_some(t)
}

/// Ends trial `t`, whose revision the root is no longer on ([`interrupted_fallback`]): the
/// boot loader's counter and the fallback entry go (the systemd-boot entry is pointed at the
/// root's kernel) and the state names no trial. On the fallback revision (a fallback was
/// interrupted) it is recorded as a fallback, the fallback revision the last-known-good one
/// again, and `reboot` is passed on (the running kernel or system may be the failed
/// revision's); on another (an update was interrupted) as a plain boot.
fn finish_fallback(node: &Node, cx: &BootContext, t: &Trial, reboot: bool) -> Result<BootResult> {
    end_trial(node, false)?;
    let mut state = node.state()?;
    state.trial = None;
    let on_fallback = state
        .current
        .as_ref()
        .is_some_and(|c| c.same_tree(&t.fallback));
    let now_on = state.current.as_ref().map(|c| c.name()).unwrap_or_default();
    let (outcome, reason) = match on_fallback {
        true => {
            state.last_known_good = Some(t.fallback.clone());
            let reason = format!(
                "{} did not pass its trial: the fallback to {now_on} was interrupted after the \
                 root was put back, and is finished now",
                t.revision.name()
            );
            (BootOutcome::FellBack, reason)
        }
        false => (BootOutcome::Booted, String::new()),
    };
    let record = cx
        .this
        .record(&state, outcome, Some(t.revision.clone()), reason);
    state.boot = Some(record.clone());
    node.save_state(&state)?;
    // Off the fallback (an update was interrupted), systemd-boot booted the trial's kernel or
    // the fallback's, never the one the root has now (its entry was just pointed at it):
    // reboot into it. GRUB boots the root's own kernel.
    let kernel_not_the_roots = !on_fallback && t.bootloader == Bootloader::SystemdBoot;
    Ok(BootResult {
        record,
        reboot: (reboot && on_fallback) || kernel_not_the_roots,
    })
}

fn save_record(node: &Node, record: &BootRecord) -> Result<()> {
    let mut state = node.state()?;
    state.boot = Some(record.clone());
    node.save_state(&state)
}

/// Puts the root of `node` back to the fallback of trial `t`, ends the trial and records why.
/// From the undo area when the trial's revision came in one update (no network), else from
/// the manifests the node kept and `source` for what it lacks.
fn fall_back(node: &Node, cx: &BootContext, t: &Trial, reason: String) -> Result<BootResult> {
    // The fallback revision is the last-known-good one before anything moves: a kill at any
    // later moment leaves it recorded (the rollback clears the trial before the record below).
    let mut state = node.state()?;
    if state.last_known_good.as_ref() != Some(&t.fallback) {
        state.last_known_good = Some(t.fallback.clone());
        node.save_state(&state)?;
    }
    let to = match &state.previous {
        Some(p) if p.same_tree(&t.fallback) => RollbackTo::Previous,
        _ => RollbackTo::LastKnownGood,
    };
    let opts = UpdateOptions {
        action: NodeAction::Rollback,
        dry_run: false,
        no_delete: false,
        verify_local: false,
        excludes: cx.excludes.clone(),
        adopt: false,
        overlay: None,
        before_writes: None,
        stage: None,
    };
    client::rollback(node, cx.source, to, opts, cx.progress).map_err(|e| {
        crate::Error::Tool(format!(
            "the node could not go back to {} after {reason}: {e}; it stays on the revision \
             on trial (run `aurum rollback --last-known-good` by hand)",
            t.fallback.name()
        ))
    })?;
    end_trial(node, false)?;
    let mut state = node.state()?;
    state.trial = None;
    state.last_known_good = Some(t.fallback.clone());
    let record = cx.this.record(
        &state,
        BootOutcome::FellBack,
        Some(t.revision.clone()),
        reason,
    );
    state.boot = Some(record.clone());
    node.save_state(&state)?;
    Ok(BootResult {
        record,
        reboot: true,
    })
}

/// Reboots this system: through systemd when it runs (`systemctl reboot`), else the `reboot`
/// command (busybox's or sysvinit's signals init).
pub fn reboot() -> Result<()> {
    let mut cmd = match Path::new("/run/systemd/system").is_dir() {
        true => {
            let mut c = std::process::Command::new("systemctl");
            c.arg("reboot");
            c
        }
        false => std::process::Command::new("reboot"),
    };
    let status = cmd
        .status()
        .map_err(|e| invalid(format!("cannot run reboot: {e}; reboot the node by hand")))?;
    if !status.success() {
        return Err(invalid(format!(
            "reboot failed ({status}); reboot the node by hand"
        )));
    }
    Ok(())
}

/// The report of a boot record, as the server keeps it.
pub fn boot_report(record: &BootRecord) -> NodeReport {
    let rev = record.revision.as_ref();
    NodeReport {
        hostname: client::hostname(),
        image: rev.and_then(|r| r.image.clone()),
        revision: rev.map(|r| r.id.clone()),
        action: NodeAction::Boot,
        result: match record.outcome {
            BootOutcome::FellBack => Outcome::Failed,
            _ => Outcome::Ok,
        },
        bytes: 0,
        seconds: 0.0,
        detail: match record.outcome {
            BootOutcome::FellBack => format!("fell back: {}", record.reason),
            o => o.as_str().to_string(),
        },
        boot: Some(BootReport {
            outcome: record.outcome,
            fell_back: record.outcome == BootOutcome::FellBack,
            booted: rev.map(|r| r.name()),
            trial: record.trial.as_ref().map(|r| r.name()),
            tries_left: record.tries_left,
            reason: record.reason.clone(),
        }),
    }
}

fn report(source: Option<&dyn RevisionSource>, record: &BootRecord) {
    if let Some(s) = source {
        if let Err(e) = s.report(&boot_report(record)) {
            log::info!("boot report not delivered: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kept_kernel_is_the_roots_even_through_an_absolute_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("boot")).unwrap();
        fs::create_dir_all(root.join("etc")).unwrap();
        // A target that exists on every machine aurum runs on: followed there, the kernel
        // kept would be the host's file.
        fs::write(root.join("etc/hostname"), "the root's kernel").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", root.join("boot/vmlinuz")).unwrap();
        fs::write(root.join("boot/vmlinuz-2.0"), "newest").unwrap();
        let (k, initrd) = kernel(root).unwrap();
        assert_eq!(fs::read_to_string(&k).unwrap(), "the root's kernel");
        assert_eq!(initrd, None);
        // `..` stops at the root; a relative link is followed from its directory.
        fs::remove_file(root.join("boot/vmlinuz")).unwrap();
        std::os::unix::fs::symlink("../../../../boot/vmlinuz-2.0", root.join("vmlinuz")).unwrap();
        fs::write(root.join("boot/initrd.img-2.0"), "initrd").unwrap();
        std::os::unix::fs::symlink("/boot/initrd.img-2.0", root.join("initrd.img")).unwrap();
        let (k, initrd) = kernel(root).unwrap();
        assert_eq!(k, root.join("boot/vmlinuz-2.0"));
        assert_eq!(initrd, Some(root.join("boot/initrd.img-2.0")));
        // No link at all: the newest version; a link that leaves nothing is not a kernel.
        fs::remove_file(root.join("vmlinuz")).unwrap();
        fs::write(root.join("boot/vmlinuz-10.0"), "newer").unwrap();
        std::os::unix::fs::symlink("/nowhere", root.join("boot/vmlinuz-11.0")).unwrap();
        assert_eq!(kernel(root).unwrap().0, root.join("boot/vmlinuz-10.0"));
    }

    fn rev(n: u32) -> RevRef {
        RevRef {
            image: Some("compute".into()),
            number: Some(n),
            id: format!("{n:02}").repeat(32),
            overrides: Vec::new(),
            tree: None,
        }
    }

    #[test]
    fn the_grub_script_counts_down_and_names_the_fallback() {
        let cfg = grub_cfg(&rev(7), "root=UUID=1234 ro quiet", true);
        assert!(cfg.contains("elif [ \"${aurum_tries}\" = 3 ]; then\n    set aurum_tries=2\n"));
        assert!(cfg
            .contains("menuentry 'aurum: fall back to compute@7 07070707' --id aurum-fallback {"));
        assert!(
            cfg.contains("linux ${prefix}/aurum/vmlinuz root=UUID=1234 ro quiet aurum.fallback\n")
        );
        assert!(cfg.contains("initrd ${prefix}/aurum/initrd.img"));
        assert!(!grub_cfg(&rev(7), "ro", false).contains("initrd"));
    }

    #[test]
    fn trials_are_given_by_default_only_where_aurum_boot_runs() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(tries(root.path(), None), 0);
        assert_eq!(tries(root.path(), Some(2)), 2);
        let wants = root.path().join(BOOT_SERVICE_ENABLED);
        fs::create_dir_all(wants.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink("/usr/lib/systemd/system/nowhere.service", &wants).unwrap();
        assert_eq!(tries(root.path(), None), DEFAULT_TRIES);
        assert_eq!(tries(root.path(), Some(0)), 0);
    }

    #[test]
    fn kernels_sort_by_version_numbers() {
        let mut v = vec![
            "vmlinuz-6.1.0-10-amd64",
            "vmlinuz-6.1.0-9-amd64",
            "vmlinuz-5.10.0-1",
        ];
        v.sort_by(|a, b| version_cmp(a, b));
        assert_eq!(
            v,
            [
                "vmlinuz-5.10.0-1",
                "vmlinuz-6.1.0-9-amd64",
                "vmlinuz-6.1.0-10-amd64"
            ]
        );
    }
}
