//! Remotes in the catalog: the repositories `aurum pull` copies from, by name, with how the
//! last pulls went, so that a pull that failed is never silent (`aurum remote list`).

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::{now, Catalog};
use crate::error::{invalid, Result};

/// A remote and what the last pulls from it did.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Remote {
    pub name: String,
    /// `http://…`, a directory, or `ssh://[user@]host/path`.
    pub url: String,
    /// Its images keep their names here (else they land as `NAME/IMAGE`).
    pub mirror: bool,
    pub created: i64,
    /// When a pull last finished (seconds since the epoch).
    pub last_success: Option<i64>,
    /// What the last failed pull said, and when; cleared by a successful pull.
    pub last_error: Option<String>,
    pub last_error_time: Option<i64>,
    /// When the remote last answered (a pull that failed later still learnt what it had).
    pub last_contact: Option<i64>,
    /// Revisions the remote had that this repository lacked, at the last contact (0 after a
    /// successful pull of every image).
    pub lag: Option<u64>,
}

fn row(r: &rusqlite::Row) -> rusqlite::Result<Remote> {
    Ok(Remote {
        name: r.get(0)?,
        url: r.get(1)?,
        mirror: r.get(2)?,
        created: r.get(3)?,
        last_success: r.get(4)?,
        last_error: r.get(5)?,
        last_error_time: r.get(6)?,
        last_contact: r.get(7)?,
        lag: r.get::<_, Option<i64>>(8)?.map(|n| n as u64),
    })
}

const COLUMNS: &str =
    "name, url, mirror, created, last_success, last_error, last_error_time, last_contact, lag";

impl Catalog {
    /// Records a new remote; refused when one of that name exists.
    pub fn add_remote(&mut self, name: &str, url: &str, mirror: bool) -> Result<()> {
        if self.remote(name)?.is_some() {
            return Err(invalid(format!(
                "there is already a remote `{name}`; `aurum remote remove {name}` first, or pick another name"
            )));
        }
        self.conn.execute(
            "INSERT INTO remotes(name, url, mirror, created) VALUES (?1, ?2, ?3, ?4)",
            params![name, url, mirror, now()],
        )?;
        self.event("remote", None, &format!("added remote {name} {url}"))
    }

    /// The remote called `name`.
    pub fn remote(&self, name: &str) -> Result<Option<Remote>> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM remotes WHERE name = ?1"),
                [name],
                row,
            )
            .optional()?)
    }

    /// Every remote, by name.
    pub fn remotes(&self) -> Result<Vec<Remote>> {
        let mut st = self
            .conn
            .prepare(&format!("SELECT {COLUMNS} FROM remotes ORDER BY name"))?;
        let rows = st.query_map([], row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Forgets a remote; false when there was none.
    pub fn remove_remote(&mut self, name: &str) -> Result<bool> {
        let n = self
            .conn
            .execute("DELETE FROM remotes WHERE name = ?1", [name])?;
        if n > 0 {
            self.event("remote", None, &format!("removed remote {name}"))?;
        }
        Ok(n > 0)
    }

    /// The remote answered and had `lag` revisions this repository lacked.
    pub fn remote_contacted(&mut self, name: &str, lag: u64) -> Result<()> {
        self.conn.execute(
            "UPDATE remotes SET last_contact = ?2, lag = ?3 WHERE name = ?1",
            params![name, now(), lag as i64],
        )?;
        Ok(())
    }

    /// A pull from the remote finished: its error is cleared, `lag` is what it still has
    /// that this repository lacks (images not asked for).
    pub fn remote_pulled(&mut self, name: &str, lag: u64) -> Result<()> {
        let t = now();
        self.conn.execute(
            "UPDATE remotes SET last_success = ?2, last_contact = ?2, lag = ?3,
             last_error = NULL, last_error_time = NULL WHERE name = ?1",
            params![name, t, lag as i64],
        )?;
        Ok(())
    }

    /// A pull from the remote failed with `error`.
    pub fn remote_failed(&mut self, name: &str, error: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE remotes SET last_error = ?2, last_error_time = ?3 WHERE name = ?1",
            params![name, error, now()],
        )?;
        self.event("pull", None, &format!("pull from {name} failed: {error}"))
    }
}
