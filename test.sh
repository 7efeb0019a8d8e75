#!/usr/bin/env bash
# Runs aurum's whole test suite on a fresh Debian machine: installs what the tests need, then
# builds and runs every unit and integration test. CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")"

# Tools the tests drive for real. Installed only when missing.
need=()
want() { command -v "$1" >/dev/null 2>&1 || need+=("$2"); }
want mkfs.ext4 e2fsprogs
want mkfs.xfs xfsprogs
want mkfs.vfat dosfstools
want sgdisk gdisk
want sshd openssh-server
want ssh openssh-client
want ssh-keygen openssh-client
want rsync rsync
# nginx as www-data serving a repository's public/ (tests/it/published.rs).
want nginx nginx
want ps procps
want setfattr attr
want setfacl acl
want setcap libcap2-bin
want zstd zstd
# Import of archives from other tools (tests/it/tarball.rs): bsdtar writes them, and every
# compression import reads is made with its own tool.
want bsdtar libarchive-tools
want bzip2 bzip2
want xz xz-utils
want lz4 lz4
want getfattr attr
want mkfs.btrfs btrfs-progs
want python3 python3
want mkfifo coreutils
want mount mount
want setpriv util-linux
want losetup mount
want e2fsck e2fsprogs
want chattr e2fsprogs
want fallocate util-linux
want mkswap util-linux
want chroot coreutils
want busybox busybox-static
# msdos disks and software RAID (tests/it/si.rs, and the boot kit of the SystemImager layout's
# QEMU install, which runs sfdisk and mdadm in the guest).
want sfdisk fdisk
want mdadm mdadm
# Scratch Debian roots (tests/rig/debian-root): the .deb install test.
want debootstrap debootstrap
want dpkg-deb dpkg
# aurum exec folds output as clubak does (tests/it/fleet.rs compares the two).
want clubak clustershell
# Caches in front of aurum serve, as the book configures them (tests/it/tiers.rs).
want squid squid
# The status page test drives headless Chromium with Debian's selenium (tests/it/fleet.rs).
want chromium chromium
want chromedriver chromium-driver
[ -e /usr/lib/python3/dist-packages/selenium ] || need+=(python3-selenium)
# Conventions (tests/it/conventions.rs): the generated completions load in zsh and fish, and
# man renders every generated page.
want zsh zsh
want fish fish
want man man-db
want groff groff-base
# The PXE end-to-end test (tests/it/pxe.rs): dnsmasq checks the generated config, cpio and kmod
# build the boot kit, iPXE ROMs boot QEMU's NIC, OVMF is its UEFI firmware, ip and unshare make
# the network namespace of the dnsmasq route.
want dnsmasq dnsmasq-base
want dhcpd isc-dhcp-server
want cpio cpio
want depmod kmod
want ip iproute2
want unshare util-linux
want flock util-linux
# BMC control (tests/it/power.rs): OpenIPMI's ipmi_sim as the BMC, the real ipmitool, and
# openssl for the Redfish BMC's test certificates.
want ipmi_sim openipmi
want ipmitool ipmitool
want openssl openssl
# Slurm-aware rollouts (tests/rig/slurm, tests/it/fleet.rs): a real slurmctld and a slurmd per
# simulated node (auth/none: no munge), and Slurm's commands (scontrol, sbatch, srun, sacct).
want slurmctld slurmctld
want slurmd slurmd
want scontrol slurm-client
# The recursive chain in QEMU (tests/it/chain.rs): the boot kit strips aurum with binutils'
# strip; the installed roots are the kit's initramfs unpacked (gzip, cpio) with dnsmasq and
# the libraries ldd lists; the disks are read with debugfs.
want strip binutils
want gzip gzip
want ldd libc-bin
want debugfs e2fsprogs
[ -e /usr/lib/ipxe/qemu/efi-virtio.rom ] || need+=(ipxe-qemu)
[ -e /usr/share/OVMF/OVMF_CODE_4M.fd ] || need+=(ovmf)
# Diskless nodes on a network root (tests/it/diskless.rs): export --netroot runs mkfs.erofs.
want mkfs.erofs erofs-utils
# Boot counting (tests/it/grubenv.rs, tests/it/bootcount.rs): grub-editenv is the reference for
# aurum's environment block writer, grub-script-check checks aurum.cfg, grub-mkimage builds the
# QEMU node's GRUB for UEFI from grub-efi-amd64-bin's modules, mtools puts it on the ESP.
want grub-editenv grub-common
want grub-script-check grub-common
want grub-mkimage grub-common
[ -e /usr/lib/grub/x86_64-efi/linux.mod ] || need+=(grub-efi-amd64-bin)
want mcopy mtools
# The BIOS node of tests/it/bootcount.rs: GRUB for i386-pc, put into the MBR and the bios-boot
# partition by grub-bios-setup (grub-pc-bin), the root's loop device found with findmnt.
[ -e /usr/lib/grub/i386-pc/grub-bios-setup ] || need+=(grub-pc-bin)
want findmnt util-linux
# NFS roots (tests/it/diskless.rs): nfs-ganesha serves an exported revision with its VFS backend.
want ganesha.nfsd nfs-ganesha
compgen -G '/usr/lib/*/ganesha/libfsalvfs.so' >/dev/null || need+=(nfs-ganesha-vfs)
want mkswap util-linux
# tests/it/bootcount.rs kills `aurum health` at each write of state.json with strace's signal
# injection (-e inject=...:signal=KILL:when=N).
want strace strace
want sqlite3 sqlite3
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "test.sh: missing ${need[*]}; run as root (or install them) first" >&2
    exit 1
  fi
  echo "test.sh: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${need[@]}" | sort -u) >/dev/null
fi
mkdir -p /run/sshd 2>/dev/null || true
# The package starts a squid on all interfaces; the tests start their own on 127.0.0.1.
if [ "$(id -u)" -eq 0 ]; then pkill -x squid 2>/dev/null || true; fi

# QEMU for the PXE test. qemu-utils from bookworm-backports may already be installed, and the
# bookworm qemu-system-x86 conflicts with it, so QEMU comes from backports (TCG only: no KVM
# is assumed). The backports suite is added on the archive the
# machine's own APT sources already use: never a hard-coded mirror host.
if ! command -v qemu-system-x86_64 >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ] \
    && grep -qs bookworm /etc/os-release; then
  if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
    archive=$(tests/rig/debian-archive || true)
    if [ -z "$archive" ]; then
      echo "test.sh: no APT source serves Debian bookworm here, so bookworm-backports (QEMU) cannot be added; add QEMU by hand" >&2
      exit 1
    fi
    echo "deb $archive bookworm-backports main" >/etc/apt/sources.list.d/aurum-backports.list
  fi
  echo "test.sh: installing QEMU from bookworm-backports"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  if ! apt-get install -y -qq --no-install-recommends -t bookworm-backports \
      qemu-system-x86 qemu-system-common qemu-system-data seabios >/dev/null; then
    echo "test.sh: could not install QEMU from bookworm-backports" >&2
    # Under CI a PXE test that cannot run is a failure, not a skip.
    if [ "${CI:-}" = true ]; then exit 1; fi
  fi
fi

# sushy-tools (PyPI) as the Redfish BMC of tests/it/power.rs, from the Python package index
# with pip; Debian's python3-pip first when pip is missing.
if ! command -v sushy-emulator >/dev/null 2>&1; then
  if ! python3 -m pip --version >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
  fi
  echo "test.sh: installing sushy-tools with pip"
  # Debian's python3 is externally managed (PEP 668): the test tool goes beside it anyway.
  python3 -m pip install --quiet sushy-tools 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages sushy-tools \
    || { echo "test.sh: could not install sushy-tools with pip" >&2; if [ "${CI:-}" = true ]; then exit 1; fi; }
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "test.sh: not root: tests that need root (devices, ownership, mounts, sshd) will skip" >&2
fi

cargo build --locked --all-targets
# The dependency tree (deny.toml): licenses, duplicate versions, wildcards and sources are
# checked from Cargo.lock alone; advisories need the RustSec database, a git repository on
# GitHub, fetched when it can be reached (or read from a copy already in ~/.cargo/advisory-dbs,
# cargo-deny's own place). A machine that has neither says so and skips advisories only.
command -v cargo-deny >/dev/null 2>&1 || cargo install --locked cargo-deny
cargo deny --locked check licenses bans sources
if timeout 30 git ls-remote https://github.com/rustsec/advisory-db HEAD >/dev/null 2>&1; then
  cargo deny --locked check advisories
elif ls -d "${CARGO_HOME:-$HOME/.cargo}"/advisory-dbs/*/.git >/dev/null 2>&1; then
  cargo deny --locked check --disable-fetch advisories
else
  echo "test.sh: the RustSec advisory database (github.com/rustsec/advisory-db) cannot be reached from here: advisories NOT checked (licenses, bans and sources were)" >&2
fi
# The Debian package test (tests/it/deb.rs) packages the release binary with cargo-deb.
cargo build --locked --release
command -v cargo-deb >/dev/null 2>&1 || cargo install --locked cargo-deb
if [ "$(id -u)" -eq 0 ]; then
  # The benchmark harness's smoke mode: a tiny tree through every aurum command it times,
  # each result checked with rsync -c (the full bench is bench/run, not run in CI).
  bench/run --quick --aurum target/debug/aurum --cache "${TMPDIR:-/tmp}/aurum-bench-smoke"
fi
# --all-targets: the crate has no doctests, and its closing line should be the integration tests'.
cargo test --locked --all-targets -- --test-threads=2
