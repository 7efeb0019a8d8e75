//! Network boot: what a bare node needs to install itself over the network.
//!
//! - [`pxe`]: DHCP/TFTP/iPXE configuration for the node database's nodes (dnsmasq, PXELINUX,
//!   GRUB and iPXE entries), written from the catalog.
//! - [`bootkit`]: the boot kit (kernel, initramfs with aurum inside) nodes boot to install.
//! - [`memory`]: diskless nodes, which boot their revision into a tmpfs from the kit.
//! - [`netroot`]: diskless nodes on a read-only image of their revision, with a tmpfs overlay.

pub mod bootkit;
pub mod memory;
pub mod netroot;
pub mod pxe;
