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
want setfattr attr
want setfacl acl
want setcap libcap2-bin
want zstd zstd
want mkfs.btrfs btrfs-progs
want python3 python3
want mkfifo coreutils
want mount mount
want setpriv util-linux
want losetup mount
want e2fsck e2fsprogs
want mkswap util-linux
want chroot coreutils
want busybox busybox-static
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

if [ "$(id -u)" -ne 0 ]; then
  echo "test.sh: not root: tests that need root (devices, ownership, mounts, sshd) will skip" >&2
fi

cargo build --locked --all-targets
if [ "$(id -u)" -eq 0 ]; then
  # The benchmark harness's smoke mode: a tiny tree through every aurum command it times,
  # each result checked with rsync -c (the full bench is bench/run, not run in CI).
  bench/run --quick --aurum target/debug/aurum --cache "${TMPDIR:-/tmp}/aurum-bench-smoke"
fi
# --all-targets: the crate has no doctests, and its closing line should be the integration tests'.
cargo test --locked --all-targets -- --test-threads=2
