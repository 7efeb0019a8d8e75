//! The QEMU node the boot tests start (pxe.rs, diskless.rs, bootcount.rs): one machine
//! (TCG, q35, 1 GiB, two CPUs, the serial console on stdout, powered off rather than
//! rebooted), OVMF's flash drives for a UEFI node, and the wait for it to power off with the
//! console's last lines when it does not. Each test adds its own disk, network and boot order.
//!
//! Only one guest runs at a time in a test run: callers hold [`crate::pxe::ONE_GUEST`].

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::pxe::{tail, OVMF_CODE};

/// The machine's arguments, after the program's name: a slow TCG guest has room with two CPUs
/// and 1 GiB; `-no-reboot` turns the guest's reboot into QEMU's exit, which the tests wait for.
pub(crate) fn machine() -> Vec<String> {
    [
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-M",
        "q35",
        "-m",
        "1024",
        "-smp",
        "2",
        "-nographic",
        "-no-reboot",
        "-nodefaults",
        "-serial",
        "stdio",
    ]
    .map(String::from)
    .to_vec()
}

/// OVMF's code (read-only) and the variable store `vars`, a copy the guest may write (its
/// boot entries survive from one boot to the next while the test keeps it).
pub(crate) fn pflash(vars: &Path) -> [String; 4] {
    [
        "-drive".into(),
        format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"),
        "-drive".into(),
        format!("if=pflash,format=raw,file={}", vars.display()),
    ]
}

/// Starts `cmd` (QEMU, or a wrapper that execs it) in a process group of its own, so that a
/// wrapper's QEMU goes with it, the serial console written to `log`. The caller chooses stderr.
pub(crate) fn spawn(cmd: &mut Command, log: &Path) -> Child {
    cmd.process_group(0)
        .stdin(Stdio::null())
        .stdout(fs::File::create(log).unwrap())
        .spawn()
        .expect("start qemu")
}

/// How long to wait for a guest to power off, and what to give up on sooner.
pub(crate) struct Wait {
    /// When the boot started (the time in the failure message counts from it).
    pub started: Instant,
    pub limit: Duration,
    /// How often the console is read.
    pub poll: Duration,
    /// How many of the console's last lines a failure shows.
    pub lines: usize,
}

impl Wait {
    /// Waits for `qemu` (started by [`spawn`]) to exit. Every poll `watch` reads the console
    /// so far and names the failure it shows, if any. On one, or past the limit, the guest's
    /// process group is killed and the answer is why, with the console's last lines.
    pub(crate) fn exit(
        &self,
        qemu: &mut Child,
        log: &Path,
        mut watch: impl FnMut(&str) -> Option<&'static str>,
    ) -> Result<ExitStatus, String> {
        loop {
            if let Some(s) = qemu.try_wait().unwrap() {
                return Ok(s);
            }
            let text = String::from_utf8_lossy(&fs::read(log).unwrap_or_default()).into_owned();
            let failed = watch(&text);
            if failed.is_some() || self.started.elapsed() > self.limit {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(qemu.id() as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                let _ = qemu.wait();
                return Err(format!(
                    "{} after {:.0} s; serial console (last {} lines):\n{}",
                    failed.unwrap_or("QEMU timed out"),
                    self.started.elapsed().as_secs_f64(),
                    self.lines,
                    tail(log, self.lines)
                ));
            }
            std::thread::sleep(self.poll);
        }
    }
}
