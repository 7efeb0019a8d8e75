//! `bootkit` subcommand group: build the kernel and initramfs nodes install from.

use std::path::PathBuf;

use aurum::netboot::bootkit::{self, KitOptions};
use clap::{Args, Subcommand};

use super::{human_bytes, print_json, Global};

/// The boot kit: the kernel and initramfs a node boots from the network to install itself.
#[derive(Args)]
pub struct BootkitArgs {
    #[command(subcommand)]
    command: BootkitCommand,
}

#[derive(Subcommand)]
enum BootkitCommand {
    Build(BuildArgs),
}

/// Build the boot kit: vmlinuz, initrd.img (cpio newc, gzip) and cmdline in a directory.
///
/// The initramfs carries busybox, aurum, sgdisk, mkfs.* and util-linux's blkid and mount with
/// the libraries they need, and the kernel modules for common NICs, disk controllers and
/// filesystems (dependencies resolved with modules.dep, loaded in order). Its /init gets an
/// address by DHCP, runs `aurum install --disk auto --report` with what the kernel command
/// line says (aurum.server=, aurum.node=, aurum.image=, aurum.class=, aurum.group=,
/// aurum.disk=, aurum.done=reboot|poweroff|shell), and reboots or powers off; on failure it
/// sends the log tail to the server and keeps a shell on the console. `aurum serve` serves
/// the kit in REPO/bootkit at /boot/kit/: build it there (-o REPO/bootkit).
#[derive(Args)]
struct BuildArgs {
    /// The kernel (e.g. /boot/vmlinuz-6.1.0-26-amd64, or one from an unpacked linux-image).
    #[arg(long, value_name = "VMLINUZ")]
    kernel: PathBuf,
    /// Where its modules are: a directory holding lib/modules/VERSION (`/`, or a linux-image
    /// package unpacked with dpkg -x), or that VERSION directory.
    #[arg(long, value_name = "DIR")]
    modules: PathBuf,
    /// Output directory.
    #[arg(short, long, value_name = "DIR")]
    output: PathBuf,
    /// Kernel modules to include (repeat); default: virtio, e1000(e), igb, ixgbe, tg3, bnx2,
    /// ahci, nvme, sd_mod, ext4, xfs, vfat with nls_cp437 and nls_ascii.
    #[arg(long = "module", value_name = "NAME")]
    modules_wanted: Vec<String>,
    /// The aurum binary to include (a static build is smallest:
    /// RUSTFLAGS="-C target-feature=+crt-static"). Default: this one.
    #[arg(long, value_name = "FILE")]
    aurum: Option<PathBuf>,
    /// busybox to include (busybox-static's is self-contained).
    #[arg(long, value_name = "FILE", default_value = "/bin/busybox")]
    busybox: PathBuf,
    /// Extra kernel arguments for every install, like "console=ttyS0,115200 aurum.done=poweroff".
    #[arg(long, value_name = "ARGS", default_value = "")]
    append: String,
    /// A public key the installer trusts (an OpenSSH line, or the absolute path of a file of
    /// them; repeatable): written into the kit's /etc/aurum/node.toml, so that the install
    /// refuses any revision none of them signed. See the book's Security chapter.
    #[arg(long, value_name = "KEY|FILE")]
    trusted_key: Vec<String>,
    /// For an https:// server with a private CA: the CA's certificate (PEM), copied into the
    /// kit (/etc/aurum/ca.pem, named by its node.toml's `ca`). The installer then trusts only
    /// certificates that CA signed and refuses any other before it asks the server for
    /// anything. Without it an https:// server needs a certificate from a public CA.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub fn exec(_: &Global, a: BootkitArgs) -> anyhow::Result<()> {
    let BootkitCommand::Build(a) = a.command;
    let o = KitOptions {
        kernel: a.kernel,
        modules: a.modules,
        out: a.output,
        aurum: match a.aurum {
            Some(p) => p,
            None => std::env::current_exe()?,
        },
        busybox: a.busybox,
        module_names: a.modules_wanted,
        append: a.append,
        trusted_keys: aurum::trust::key_lines(&a.trusted_key)?,
        ca: a.ca,
    };
    let r = bootkit::build(&o)?;
    if a.json {
        return print_json(&r);
    }
    println!(
        "built the boot kit in {}: kernel {}, initrd {} ({} entries), {} modules, tools: {}",
        o.out.display(),
        r.kernel_version,
        human_bytes(r.initrd_bytes),
        r.entries,
        r.modules.len(),
        r.tools.join(" ")
    );
    if !r.skipped.is_empty() {
        println!(
            "not modules in this kernel (built in or absent): {}",
            r.skipped.join(" ")
        );
    }
    if !r.missing_tools.is_empty() {
        println!(
            "not installed here, left out: {}",
            r.missing_tools.join(" ")
        );
    }
    Ok(())
}
