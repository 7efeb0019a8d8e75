//! Applying the catalog's migrations (the schema itself is [`crate::format::catalog`]).
//!
//! The schema version lives in SQLite's `user_version`; each migration the catalog lacks is
//! applied in its own transaction. A catalog newer than this aurum is refused rather than
//! guessed at.

use rusqlite::Connection;

use crate::error::{invalid, Result};

use crate::format::catalog::MIGRATIONS;
pub use crate::format::catalog::SCHEMA_VERSION;

/// Brings the catalog up to [`SCHEMA_VERSION`].
pub fn migrate(conn: &mut Connection) -> Result<()> {
    let have: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if have > SCHEMA_VERSION {
        return Err(invalid(format!(
            "the catalog has schema version {have}, newer than this aurum understands ({SCHEMA_VERSION}); upgrade aurum"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(have as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as u32)?;
        tx.commit()?;
    }
    Ok(())
}
