//! Integration tests: the real `aurum` binary on real trees, filesystems, sshd and processes.
//!
//! One test binary (see STYLE.md), a module per area. Tests that need root or an external
//! tool say so; `./test.sh` (what CI runs) installs the tools and runs as root.

mod adopt;
mod book;
mod bootcount;
mod chain;
mod chroot;
mod common;
mod config;
mod conventions;
mod crash;
mod deb;
mod delta;
mod diskless;
mod embedded;
mod errors;
mod fidelity;
mod fleet;
mod fuzz;
mod grubenv;
mod health;
mod install;
mod layers;
mod network;
mod nodesafety;
mod overrides;
mod power;
mod published;
mod pxe;
mod qemu;
mod remote;
mod replicate;
mod repository;
mod serve;
mod si;
mod stage;
mod tarball;
mod tiers;
mod tls;
mod tokens;
mod trust;
mod update;
