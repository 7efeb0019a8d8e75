//! aurum: a golden-image manager for Linux clusters.
//!
//! The library holds everything the `aurum` binary does; the binary only parses the command
//! line, calls one function here, and prints the result. Modules, from the bottom up:
//!
//! - [`format`]: every byte layout on disk or on the wire (manifests, packs, indexes, agent
//!   frames). It depends on nothing else in aurum.
//! - [`sys`]: the few file-system calls we make relative to directory descriptors, so that very
//!   long paths work and no symlink can lead a write outside a target root.
//! - [`store`]: packs of zstd-compressed blobs, chunking, reading blobs back with verification.
//! - [`catalog`]: the SQLite catalog (images, revisions, tags, blob index, stat cache, events).
//! - [`publish`]: the files a repository publishes for static clients (`packs/list`, `refs/`,
//!   `templates/`), derived from the catalog, and the modes that keep them readable by a web
//!   server and the catalog private.
//! - [`repo`]: a repository: store + catalog + refs + lock, and revision references.
//! - [`capture`]: scanning a golden client (local or through `aurum agent` over ssh) into a
//!   revision.
//! - [`apply`]: materialising a revision onto a directory.
//! - [`chroot`]: editing a revision in a chroot into a new revision.
//! - [`delta`]: binary deltas of changed blobs against the versions a node holds.
//! - [`diff`], [`tarball`], [`verify`], [`gc`]: the remaining repository operations.
//! - [`facts`], [`template`], [`hooks`], [`install`]: laying out a bare node's disks from its
//!   class's partition template and installing a revision onto them.
//! - [`nodedb`], [`pxe`], [`bootkit`]: the node database, network boot configuration and the
//!   boot kit nodes install themselves from.

pub mod apply;
pub mod bootkit;
pub mod capture;
pub mod catalog;
pub mod chroot;
pub mod delta;
pub mod diff;
pub mod error;
pub mod facts;
pub mod format;
pub mod gc;
pub mod hooks;
pub mod install;
pub mod node;
pub mod nodedb;
pub mod progress;
pub mod publish;
pub mod pxe;
pub mod repo;
pub mod serve;
pub mod source;
pub mod store;
pub mod sys;
pub mod tarball;
pub mod template;
pub mod verify;

pub use error::{Error, Result};
