//! The catalog's schema (`aurum.db`, SQLite): one migration per version, in SQL.
//!
//! Kept apart on purpose (as bupstash does): a migration is written once and never edited; a
//! change to the schema is a new migration at the end and a bump of [`SCHEMA_VERSION`], which
//! SQLite keeps in `PRAGMA user_version`. `catalog::migrations` applies them; the tables are
//! the catalog's to query. `book/src/format.md` (Catalog) shows the schema as it stands.

/// The schema version this aurum writes.
pub const SCHEMA_VERSION: u32 = 11;

/// The migrations, in order: `MIGRATIONS[i]` takes a catalog from version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[
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
    // 4 -> 5: rollouts (a revision to a node set in waves) with each node's part and a log.
    r#"
    CREATE TABLE rollouts (
        id INTEGER PRIMARY KEY,
        image TEXT NOT NULL,
        number INTEGER NOT NULL,
        revision TEXT NOT NULL,
        nodeset TEXT NOT NULL,
        plan TEXT NOT NULL,
        state TEXT NOT NULL,
        request TEXT,
        wave INTEGER NOT NULL,
        reason TEXT NOT NULL,
        created INTEGER NOT NULL,
        updated INTEGER NOT NULL
    );
    CREATE TABLE rollout_nodes (
        rollout INTEGER NOT NULL REFERENCES rollouts(id) ON DELETE CASCADE,
        node TEXT NOT NULL,
        host TEXT NOT NULL,
        wave INTEGER NOT NULL,
        state TEXT NOT NULL,
        previous TEXT,
        detail TEXT NOT NULL,
        updated INTEGER NOT NULL,
        PRIMARY KEY (rollout, node)
    );
    CREATE TABLE rollout_events (
        rollout INTEGER NOT NULL REFERENCES rollouts(id) ON DELETE CASCADE,
        time INTEGER NOT NULL,
        node TEXT,
        event TEXT NOT NULL
    );
    "#,
    // 5 -> 6: remotes, the repositories `aurum pull` copies from, with how the last pulls went.
    r#"
    CREATE TABLE remotes (
        name TEXT PRIMARY KEY,
        url TEXT NOT NULL,
        mirror INTEGER NOT NULL,
        created INTEGER NOT NULL,
        last_success INTEGER,
        last_error TEXT,
        last_error_time INTEGER,
        last_contact INTEGER,
        lag INTEGER
    );
    "#,
    // 6 -> 7: how each node's BMC is reached (`bmc` has held its address since version 4). The
    // password is never stored: `bmc_password_file` names the file it is read from at use.
    r#"
    ALTER TABLE inventory ADD COLUMN bmc_protocol TEXT;
    ALTER TABLE inventory ADD COLUMN bmc_user TEXT;
    ALTER TABLE inventory ADD COLUMN bmc_password_file TEXT;
    ALTER TABLE inventory ADD COLUMN bmc_ca_file TEXT;
    "#,
    // 7 -> 8: what a node's boot came to (a `boot` report's `BootReport`, JSON), kept with the
    // report and as the node's latest.
    r#"
    ALTER TABLE nodes ADD COLUMN boot TEXT;
    ALTER TABLE node_reports ADD COLUMN boot TEXT;
    "#,
    // 8 -> 9: tokens for the writes to `aurum serve` (`format::token`): created ones by the
    // BLAKE3 hash of their text (never the text), the key node tokens are derived with, and
    // each node's token generation (bumped to revoke it).
    r#"
    CREATE TABLE tokens (
        name TEXT PRIMARY KEY,
        hash BLOB NOT NULL UNIQUE,
        node TEXT,
        created INTEGER NOT NULL,
        revoked INTEGER
    );
    CREATE TABLE token_key (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        key BLOB NOT NULL
    );
    CREATE TABLE node_token_generations (
        node TEXT PRIMARY KEY,
        generation INTEGER NOT NULL,
        revoked INTEGER NOT NULL
    );
    "#,
    // 9 -> 10: where each node's root lives: `disk` (installed, the default: NULL reads as it)
    // or `memory` (diskless: every boot lays its revision into a tmpfs).
    r#"
    ALTER TABLE inventory ADD COLUMN rootfs TEXT;
    "#,
    // 10 -> 11: the stat cache keeps each entry's xattrs (NULL: not recorded), and rows for
    // every kind of entry (`content` empty for all but files), so that a re-capture reads no
    // xattrs of an entry whose stat data, ctime included, is unchanged.
    r#"
    ALTER TABLE statcache ADD COLUMN xattrs BLOB;
    "#,
];

const _: () = assert!(MIGRATIONS.len() == SCHEMA_VERSION as usize);

#[cfg(test)]
mod tests {
    use super::*;

    /// Every migration applies on top of the ones before it, and the result has every table
    /// the catalog queries.
    #[test]
    fn migrations_build_the_schema() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        for (i, sql) in MIGRATIONS.iter().enumerate() {
            conn.execute_batch(sql)
                .unwrap_or_else(|e| panic!("migration {i} -> {}: {e}", i + 1));
        }
        let tables: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        for t in [
            "blobs",
            "events",
            "images",
            "install_phases",
            "inventory",
            "meta",
            "node_reports",
            "nodes",
            "packs",
            "remotes",
            "revisions",
            "sources",
            "statcache",
            "tags",
            "templates",
            "tokens",
        ] {
            assert!(
                tables.iter().any(|have| have == t),
                "no table {t}: {tables:?}"
            );
        }
    }
}
