//! Block devices for an install: the disk, its partitions (loop devices for an image file),
//! mounts, and the external tools (sgdisk, mkfs, blkid, losetup, mount) that act on them.
//!
//! Everything set up here is undone by a guard's `Drop`, in reverse order, whether the install
//! finishes or fails half way: a failed install must not leave loop devices attached or
//! filesystems mounted on the installer (or on the test machine).
//!
//! An image file gets one loop device per partition, each with `--offset` and `--sizelimit`,
//! rather than one loop device with partition scanning: partition scanning needs udev and a
//! kernel that allows it on loop devices, which containers and minimal initramfs lack.

use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{invalid, Error, IoContext, Result};

/// Runs a command; its stderr (or stdout) is the error when it fails.
pub fn run(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}").replace('"', "");
    log::info!("running {shown}");
    let out = cmd.output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            invalid(format!(
                "{}: not installed (it is needed here; install its package in the installer)",
                cmd.get_program().to_string_lossy()
            ))
        } else {
            Error::Os(e)
        }
    })?;
    if !out.status.success() {
        let mut msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if msg.is_empty() {
            msg = String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        return Err(Error::Tool(format!(
            "`{shown}` failed ({}): {msg}",
            out.status
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `prog` can be found on PATH.
pub fn have(prog: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
        .unwrap_or(false)
}

/// Size in bytes of a disk or an image file.
pub fn size_of(path: &Path) -> Result<u64> {
    let mut f = std::fs::File::open(path).at(path)?;
    f.seek(SeekFrom::End(0)).at(path)
}

/// Whether `path` is a block device (else a regular file holding a disk image).
pub fn is_block(path: &Path) -> Result<bool> {
    use std::os::unix::fs::FileTypeExt;
    Ok(std::fs::metadata(path)
        .at(path)?
        .file_type()
        .is_block_device())
}

/// A loop device attached to a byte range of a file; detached on drop.
pub struct Loop {
    pub dev: PathBuf,
}

impl Loop {
    /// Attaches `file[offset..offset+size]` (`size` 0: to the end).
    pub fn attach(file: &Path, offset: u64, size: u64) -> Result<Loop> {
        let mut c = Command::new("losetup");
        c.args(["--find", "--show", "--offset", &offset.to_string()]);
        if size > 0 {
            c.args(["--sizelimit", &size.to_string()]);
        }
        c.arg(file);
        let dev = run(&mut c)?.trim().to_string();
        if dev.is_empty() {
            return Err(invalid(format!(
                "losetup gave no device for {}",
                file.display()
            )));
        }
        Ok(Loop { dev: dev.into() })
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        if let Err(e) = run(Command::new("losetup").arg("--detach").arg(&self.dev)) {
            log::warn!("could not detach {}: {e}", self.dev.display());
        }
    }
}

/// A mounted filesystem; unmounted on drop.
pub struct Mount {
    pub at: PathBuf,
}

impl Mount {
    /// `mount [-t fstype] [-o options] dev at`.
    pub fn new(dev: &Path, at: &Path, fstype: Option<&str>, options: &str) -> Result<Mount> {
        std::fs::create_dir_all(at).at(at)?;
        let mut c = Command::new("mount");
        if let Some(t) = fstype {
            c.args(["-t", t]);
        }
        if !options.is_empty() {
            c.args(["-o", options]);
        }
        run(c.arg(dev).arg(at))?;
        Ok(Mount {
            at: at.to_path_buf(),
        })
    }

    /// Leaves the filesystem mounted (the guard is given up).
    pub fn keep(self) {
        std::mem::forget(self);
    }

    /// A bind mount of `src` at `at` (for /dev, /proc, /sys in a chroot).
    pub fn bind(src: &Path, at: &Path) -> Result<Mount> {
        run(Command::new("mount").arg("--bind").arg(src).arg(at))?;
        Ok(Mount {
            at: at.to_path_buf(),
        })
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        // A process left in the target (a hook's daemon) would make a plain umount fail;
        // detach lazily then, so the disk is at least released once it exits.
        if run(Command::new("umount").arg(&self.at)).is_err() {
            if let Err(e) = run(Command::new("umount").arg("--lazy").arg(&self.at)) {
                log::warn!("could not unmount {}: {e}", self.at.display());
            }
        }
    }
}

/// `blkid` values of a device: TYPE, UUID, LABEL, PARTUUID...
pub fn blkid(dev: &Path) -> Result<Vec<(String, String)>> {
    // -p probes the device itself rather than trusting blkid's cache; exit 2 means "nothing
    // found", which is an answer, not an error.
    let out = Command::new("blkid")
        .args(["-p", "-o", "export"])
        .arg(dev)
        .output()
        .map_err(|e| invalid(format!("blkid: {e} (install util-linux)")))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

/// One value of [`blkid`].
pub fn blkid_value(tags: &[(String, String)], key: &str) -> Option<String> {
    tags.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
}

/// The device node of partition `n` of a block device (`/dev/sda3`, `/dev/nvme0n1p3`).
pub fn partition_node(disk: &Path, n: u32) -> PathBuf {
    let s = disk.to_string_lossy();
    if s.ends_with(|c: char| c.is_ascii_digit()) {
        PathBuf::from(format!("{s}p{n}"))
    } else {
        PathBuf::from(format!("{s}{n}"))
    }
}

/// A disk being installed: a block device, or an image file with a loop device per partition.
pub struct Disk {
    pub path: PathBuf,
    pub size: u64,
    pub is_block: bool,
    /// Whole-file loop device of an image file (what grub-install is pointed at).
    pub whole: Option<Loop>,
    loops: Vec<Loop>,
}

impl Disk {
    pub fn open(path: &Path) -> Result<Disk> {
        Ok(Disk {
            path: path.to_path_buf(),
            size: size_of(path)?,
            is_block: is_block(path)?,
            whole: None,
            loops: Vec::new(),
        })
    }

    /// The block device holding partition `n` at `start..start+size` (after the table is
    /// written): the kernel's partition node, or a loop device over that byte range.
    pub fn partition(&mut self, n: u32, start: u64, size: u64) -> Result<PathBuf> {
        if self.is_block {
            let node = partition_node(&self.path, n);
            if !node.exists() {
                return Err(invalid(format!(
                    "{} did not appear after partitioning {}: is udev running? (try `udevadm settle`)",
                    node.display(),
                    self.path.display()
                )));
            }
            return Ok(node);
        }
        let l = Loop::attach(&self.path, start, size)?;
        let dev = l.dev.clone();
        self.loops.push(l);
        Ok(dev)
    }

    /// The device a bootloader is installed on.
    pub fn boot_device(&mut self) -> Result<PathBuf> {
        if self.is_block {
            return Ok(self.path.clone());
        }
        if self.whole.is_none() {
            self.whole = Some(Loop::attach(&self.path, 0, 0)?);
        }
        Ok(self.whole.as_ref().expect("set above").dev.clone())
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        while let Some(l) = self.loops.pop() {
            drop(l);
        }
    }
}
