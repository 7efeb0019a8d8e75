//! Partition templates in the catalog: every saved version of every hardware class.
//!
//! Versions are never overwritten, so `aurum template show CLASS` can list what a class looked
//! like before an edit, and a node installed months ago can be explained.

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::{now, Catalog};
use crate::error::Result;
use crate::name::ClassName;

/// One saved version of a class's template.
#[derive(Clone, Debug, Serialize)]
pub struct TemplateVersion {
    pub class: ClassName,
    pub version: u32,
    pub text: String,
    pub created: i64,
    /// Where it came from (`imported from compute.toml`, `edited`).
    pub note: String,
}

fn row(r: &rusqlite::Row) -> rusqlite::Result<TemplateVersion> {
    Ok(TemplateVersion {
        class: r.get(0)?,
        version: r.get(1)?,
        text: r.get(2)?,
        created: r.get(3)?,
        note: r.get(4)?,
    })
}

impl Catalog {
    /// The newest version of `class`, or version `version`.
    pub fn template(
        &self,
        class: &ClassName,
        version: Option<u32>,
    ) -> Result<Option<TemplateVersion>> {
        let sql = "SELECT class, version, text, created, note FROM templates WHERE class = ?1";
        Ok(match version {
            Some(v) => self
                .conn
                .query_row(&format!("{sql} AND version = ?2"), params![class, v], row)
                .optional()?,
            None => self
                .conn
                .query_row(
                    &format!("{sql} ORDER BY version DESC LIMIT 1"),
                    [class],
                    row,
                )
                .optional()?,
        })
    }

    /// Every version of `class`, oldest first.
    pub fn template_versions(&self, class: &ClassName) -> Result<Vec<TemplateVersion>> {
        let mut st = self.conn.prepare(
            "SELECT class, version, text, created, note FROM templates WHERE class = ?1 ORDER BY version",
        )?;
        let rows = st.query_map([class], row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Every version of every class, by class and version.
    pub fn all_template_versions(&self) -> Result<Vec<TemplateVersion>> {
        let mut st = self.conn.prepare(
            "SELECT class, version, text, created, note FROM templates ORDER BY class, version",
        )?;
        let rows = st.query_map([], row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The newest version of every class, by class name.
    pub fn templates(&self) -> Result<Vec<TemplateVersion>> {
        let mut st = self.conn.prepare(
            "SELECT class, version, text, created, note FROM templates t
             WHERE version = (SELECT MAX(version) FROM templates WHERE class = t.class)
             ORDER BY class",
        )?;
        let rows = st.query_map([], row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Saves `text` as the next version of `class`, unless it equals the newest version.
    /// Returns the version that holds `text` and whether it is new.
    pub fn add_template(
        &mut self,
        class: &ClassName,
        text: &str,
        note: &str,
    ) -> Result<(u32, bool)> {
        let tx = self.conn.transaction()?;
        let newest: Option<(u32, String)> = tx
            .query_row(
                "SELECT version, text FROM templates WHERE class = ?1 ORDER BY version DESC LIMIT 1",
                [class],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if let Some((v, t)) = &newest {
            if t == text {
                return Ok((*v, false));
            }
        }
        let v = newest.map_or(1, |(v, _)| v + 1);
        tx.execute(
            "INSERT INTO templates(class, version, text, created, note) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![class, v, text, now(), note],
        )?;
        tx.commit()?;
        Ok((v, true))
    }
}
