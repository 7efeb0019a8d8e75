//! Catalog schema and its migrations.
//!
//! Kept apart on purpose (as bupstash does): a migration is written once and never edited, and
//! the schema version lives in SQLite's `user_version`. A catalog newer than this aurum is
//! refused rather than guessed at.

use rusqlite::Connection;

use crate::error::{invalid, Result};

/// The schema version this aurum writes.
pub const SCHEMA_VERSION: u32 = 4;

const MIGRATIONS: &[&str] = &[
    // 0 -> 1: the first schema.
    r#"
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE packs (
        key INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        size INTEGER NOT NULL,
        blobs INTEGER NOT NULL,
        created INTEGER NOT NULL
    );
    CREATE TABLE blobs (
        id BLOB PRIMARY KEY,
        pack INTEGER NOT NULL REFERENCES packs(key),
        offset INTEGER NOT NULL,
        stored_len INTEGER NOT NULL,
        raw_len INTEGER NOT NULL,
        codec INTEGER NOT NULL,
        inner INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX blobs_pack ON blobs(pack);
    CREATE TABLE images (name TEXT PRIMARY KEY, created INTEGER NOT NULL);
    CREATE TABLE revisions (
        image TEXT NOT NULL REFERENCES images(name) ON UPDATE CASCADE ON DELETE CASCADE,
        number INTEGER NOT NULL,
        id TEXT NOT NULL,
        parent TEXT,
        created INTEGER NOT NULL,
        message TEXT NOT NULL,
        source TEXT NOT NULL,
        files INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        new_bytes INTEGER NOT NULL,
        PRIMARY KEY (image, number)
    );
    CREATE INDEX revisions_id ON revisions(id);
    CREATE TABLE tags (
        image TEXT NOT NULL,
        tag TEXT NOT NULL,
        number INTEGER NOT NULL,
        created INTEGER NOT NULL,
        PRIMARY KEY (image, tag),
        FOREIGN KEY (image, number) REFERENCES revisions(image, number)
            ON UPDATE CASCADE ON DELETE CASCADE
    );
    CREATE TABLE sources (key INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
    CREATE TABLE statcache (
        source INTEGER NOT NULL REFERENCES sources(key),
        path BLOB NOT NULL,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        ctime_ns INTEGER NOT NULL,
        ino INTEGER NOT NULL,
        content BLOB NOT NULL,
        PRIMARY KEY (source, path)
    ) WITHOUT ROWID;
    CREATE TABLE events (
        time INTEGER NOT NULL,
        kind TEXT NOT NULL,
        image TEXT,
        detail TEXT NOT NULL
    );
    "#,
    // 1 -> 2: what nodes report to `aurum serve`.
    r#"
    CREATE TABLE nodes (
        hostname TEXT PRIMARY KEY,
        image TEXT,
        revision TEXT,
        action TEXT NOT NULL,
        result TEXT NOT NULL,
        bytes INTEGER NOT NULL,
        seconds REAL NOT NULL,
        address TEXT,
        detail TEXT NOT NULL,
        reported INTEGER NOT NULL
    );
    CREATE TABLE node_reports (
        time INTEGER NOT NULL,
        hostname TEXT NOT NULL,
        image TEXT,
        revision TEXT,
        action TEXT NOT NULL,
        result TEXT NOT NULL,
        bytes INTEGER NOT NULL,
        seconds REAL NOT NULL,
        address TEXT,
        detail TEXT NOT NULL
    );
    "#,
    // 2 -> 3: partition templates, one row per saved version of a hardware class.
    r#"
    CREATE TABLE templates (
        class TEXT NOT NULL,
        version INTEGER NOT NULL,
        text TEXT NOT NULL,
        created INTEGER NOT NULL,
        note TEXT NOT NULL,
        PRIMARY KEY (class, version)
    );
    "#,
    // 3 -> 4: the node database (what PXE boots and installs) and the phases of installs.
    r#"
    CREATE TABLE inventory (
        name TEXT PRIMARY KEY,
        mac TEXT NOT NULL UNIQUE,
        ip TEXT UNIQUE,
        class TEXT,
        image TEXT,
        grp TEXT,
        bmc TEXT,
        boot TEXT NOT NULL,
        phase TEXT,
        phase_detail TEXT,
        phase_revision TEXT,
        phase_time INTEGER,
        created INTEGER NOT NULL
    );
    CREATE TABLE install_phases (
        time INTEGER NOT NULL,
        node TEXT NOT NULL,
        phase TEXT NOT NULL,
        detail TEXT NOT NULL,
        revision TEXT
    );
    "#,
];

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
