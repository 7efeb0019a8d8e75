//! aurum: a golden-image manager for Linux clusters.
//!
//! The library holds everything the `aurum` binary does; the binary only parses the command
//! line, calls one function here, and prints the result. The modules stand in layers, and a
//! module uses only its own layer and those below (`tests/it/layers.rs` checks it from the
//! `use` lines; book/src/design.md draws it):
//!
//! 1. base: [`error`], [`sys`] (file calls relative to directory descriptors, so no symlink
//!    leads a write outside a target root; the mount table; locking; atomic writes),
//!    [`progress`], [`excludes`] (the path patterns capture and update leave alone),
//!    [`devices`] (block devices and the tools that handle them), [`facts`] (a node's hardware),
//!    [`name`] (the syntax of names, and [`name::ClassName`], a hardware class), [`config`]
//!    (/etc/aurum/aurum.toml and node.toml, and where each setting came from), [`tls`] (whom
//!    an HTTPS client trusts), [`keyset`] (sets of 64-bit hashes in about 9 bytes a key).
//! 2. [`format`]: every byte layout on disk or on the wire. It uses only the base layer.
//! 3. [`store`]: packs of zstd-compressed blobs, chunking, reading blobs back with
//!    verification, and [`store::BlobSource`], how writers get blobs; [`trust`] (signing keys,
//!    and the one decision whether a revision's signatures make it trusted).
//! 4. [`repo`] (a repository: store + catalog + published files + lock; revision references;
//!    [`repo::publish`], [`repo::gc`], [`repo::verify`], [`repo::diff`], [`repo::delta`]) and
//!    [`catalog`] (the SQLite catalog: images, revisions, tags, blob index, stat cache,
//!    templates, and [`catalog::nodes`], the node database).
//! 5. [`capture`] (a golden client, local or over ssh, into a revision; [`capture::chroot`],
//!    editing a revision into a new one), [`tarball`] (import and export) and [`apply`] (a
//!    revision onto a directory: checkout, updateclient, rollback; a node's state, its
//!    sources, overrides and hooks).
//! 6. [`template`] (partition templates per hardware class), [`install`] (a bare node's disks
//!    from its template, then a revision onto them), [`netboot`] (PXE configuration and the
//!    boot kit), [`serve`] (the HTTP server nodes fetch from), [`fleet`] (node sets, and
//!    commands and copies on many nodes over ssh), [`migrate`] (SystemImager's layouts as
//!    templates, its image directories as revisions) and [`replicate`] (pull and push
//!    between repositories).
//! 7. the binary's `cli/`: one file per group of commands.

pub mod apply;
pub mod capture;
pub mod catalog;
pub mod config;
pub mod devices;
pub mod error;
pub mod excludes;
pub mod facts;
pub mod fleet;
pub mod format;
pub mod install;
pub mod keyset;
pub mod migrate;
pub mod name;
pub mod netboot;
pub mod progress;
pub mod proxy;
pub mod replicate;
pub mod repo;
pub mod serve;
pub mod store;
pub mod sys;
pub mod tarball;
pub mod template;
pub mod tls;
pub mod trust;

pub use error::{Error, Result};
